"""Queue ping-pong: two tasks pass a token back and forth through two queues SIZE times."""
import asyncio

import _harness


async def pinger(out_q, in_q, n):
    for i in range(n):
        await out_q.put(i)
        assert await in_q.get() == i


async def ponger(in_q, out_q, n):
    for _ in range(n):
        await out_q.put(await in_q.get())


async def workload(size):
    a, b = asyncio.Queue(), asyncio.Queue()
    await asyncio.gather(pinger(a, b, size), ponger(a, b, size))


_harness.main(workload, 20000)
