"""Locks and conditions, the deadlock detector's worst honest case: N items pass from producers
to consumers through an asyncio.Condition while workers take an asyncio.Lock and an
asyncio.Semaphore in turn, and 200 parked tasks wait for the whole run on a lock that a keeper
holds (stable waiters: every deadlock check walks their await chains and the holder's frames)."""
import asyncio

from _common import main

PRODUCERS = 10
CONSUMERS = 10
WORKERS = 20
PARKED = 200


async def producer(cond, items, count):
    for i in range(count):
        async with cond:
            items.append(i)
            cond.notify()
        await asyncio.sleep(0)


async def consumer(cond, items, count, done):
    for _ in range(count):
        async with cond:
            await cond.wait_for(lambda: items)
            items.pop()
        done[0] += 1


async def worker(lock, sem, counter, rounds):
    for _ in range(rounds):
        async with sem:
            async with lock:
                value = counter[0]
                await asyncio.sleep(0)
                counter[0] = value + 1


async def parked(lock):
    async with lock:
        pass


async def keeper(lock, release):
    async with lock:
        await release.wait()


async def lock_condition(n):
    cond, items, done = asyncio.Condition(), [], [0]
    lock, sem, counter = asyncio.Lock(), asyncio.Semaphore(4), [0]
    park_lock, release = asyncio.Lock(), asyncio.Event()
    keep = asyncio.ensure_future(keeper(park_lock, release))
    await asyncio.sleep(0)
    parkers = [asyncio.ensure_future(parked(park_lock)) for _ in range(PARKED)]
    per = n // (2 * PRODUCERS)
    rounds = n // (2 * WORKERS)
    await asyncio.gather(
        *(producer(cond, items, per) for _ in range(PRODUCERS)),
        *(consumer(cond, items, per * PRODUCERS // CONSUMERS, done) for _ in range(CONSUMERS)),
        *(worker(lock, sem, counter, rounds) for _ in range(WORKERS)))
    release.set()
    await asyncio.gather(keep, *parkers)
    assert done[0] == per * PRODUCERS and counter[0] == rounds * WORKERS


if __name__ == "__main__":
    main("lock and condition", lock_condition, 40_000)
