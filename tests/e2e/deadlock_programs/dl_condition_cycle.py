# A task waits for a Condition's lock held by a task that waits for a lock the first one holds.
import asyncio

import _dl


async def notifier(cond, lock):
    async with lock:
        await asyncio.sleep(0.05)
        async with cond:  # EXPECT: deadlock
            cond.notify_all()


async def waiter(cond, lock):
    async with cond:
        await asyncio.sleep(0.05)
        async with lock:  # EXPECT: deadlock
            pass


async def main():
    cond, lock = asyncio.Condition(), asyncio.Lock()
    await _dl.guard(notifier(cond, lock), waiter(cond, lock))


_dl.run(main)
