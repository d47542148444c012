"""Lock contention: 10 tasks take one asyncio.Lock SIZE times in all, yielding while holding it."""
import asyncio

import _harness

WORKERS = 10


async def worker(lock, n, counter):
    for _ in range(n):
        async with lock:
            counter[0] += 1
            await asyncio.sleep(0)


async def workload(size):
    lock, counter = asyncio.Lock(), [0]
    per = size // WORKERS
    await asyncio.gather(*(worker(lock, per, counter) for _ in range(WORKERS)))
    assert counter[0] == per * WORKERS


_harness.main(workload, 20000)
