# REQUIRES: python>=3.12
# LOOPS: asyncio
# Eager tasks (3.12's eager_task_factory) run their first step inside create_task: here both
# tasks block in that first step and never run another, so the deadlock must be seen from what
# their creation left (no later step tells). The holder awaits the task it made, which waits for
# the lock the holder holds. (uvloop's create_task does not take asyncio.eager_task_factory on
# 3.13: TypeError, eager_start.)
import asyncio

import _dl


async def waiter(lock):
    async with lock:  # EXPECT: deadlock
        pass


async def holder(lock):
    async with lock:  # HOLDS: lock
        task = asyncio.create_task(waiter(lock))
        await task  # EXPECT: deadlock


async def main():
    asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
    lock = asyncio.Lock()
    await _dl.guard(holder(lock))


_dl.run(main)
