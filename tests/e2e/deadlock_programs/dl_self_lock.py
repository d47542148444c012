# asyncio.Lock is not reentrant: a task that takes the lock it holds waits for itself.
import asyncio

import _dl


async def update(lock):
    async with lock:  # HOLDS: lock
        await refresh(lock)


async def refresh(lock):
    async with lock:  # EXPECT: deadlock
        pass


async def main():
    await _dl.guard(update(asyncio.Lock()))


_dl.run(main)
