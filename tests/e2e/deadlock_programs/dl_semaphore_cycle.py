# A BoundedSemaphore's only slot is held by a task that waits for a lock held by a waiter of it.
import asyncio

import _dl


async def slot_holder(sem, lock):
    async with sem:
        await asyncio.sleep(0.05)
        async with lock:  # EXPECT: deadlock
            pass


async def lock_holder(sem, lock):
    async with lock:
        await asyncio.sleep(0.05)
        async with sem:  # EXPECT: deadlock
            pass


async def main():
    sem, lock = asyncio.BoundedSemaphore(1), asyncio.Lock()
    await _dl.guard(slot_holder(sem, lock), lock_holder(sem, lock))


_dl.run(main)
