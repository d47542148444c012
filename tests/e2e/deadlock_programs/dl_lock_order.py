# Two tasks take two locks in opposite orders: each holds one and waits for the other.
import asyncio
import time

import _dl


async def worker_a(a, b, ready):
    async with a:  # HOLDS: a
        ready.append(1)
        await asyncio.sleep(0.05)
        async with b:  # EXPECT: deadlock
            pass


async def worker_b(a, b, ready):
    async with b:  # HOLDS: b
        await asyncio.sleep(0.05)
        print("formed %.6f" % time.monotonic(), flush=True)
        async with a:  # EXPECT: deadlock
            pass


async def main():
    a, b = asyncio.Lock(), asyncio.Lock()
    ready = []
    await _dl.guard(worker_a(a, b, ready), worker_b(a, b, ready))


_dl.run(main)
