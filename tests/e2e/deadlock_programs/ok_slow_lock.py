# No false report: a lock and a Condition held across slow but progressing awaits.
import asyncio

import _dl


async def slow_holder(lock):
    async with lock:
        for _ in range(5):
            await asyncio.sleep(0.5)


async def waiter(lock):
    await asyncio.sleep(0.1)
    async with lock:
        print("got the lock", flush=True)


async def consumer(cond, items):
    async with cond:
        await cond.wait_for(lambda: items)
        print("consumed", items.pop(), flush=True)


async def producer(cond, items):
    await asyncio.sleep(2.0)
    async with cond:
        items.append(1)
        cond.notify()


async def main():
    lock, cond, items = asyncio.Lock(), asyncio.Condition(), []
    await asyncio.gather(slow_holder(lock), waiter(lock), consumer(cond, items), producer(cond, items))


_dl.run(main)
