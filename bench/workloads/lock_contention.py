"""Lock contention: 50 tasks take one asyncio.Lock in turn, yielding while they hold it, N
acquisitions in all."""
import asyncio

from _common import main

WORKERS = 50


async def worker(lock, counter, rounds):
    for _ in range(rounds):
        async with lock:
            value = counter[0]
            await asyncio.sleep(0)
            counter[0] = value + 1


async def lock_contention(n):
    lock, counter = asyncio.Lock(), [0]
    rounds = n // WORKERS
    await asyncio.gather(*(worker(lock, counter, rounds) for _ in range(WORKERS)))
    assert counter[0] == rounds * WORKERS


if __name__ == "__main__":
    main("lock contention", lock_contention, 50_000)
