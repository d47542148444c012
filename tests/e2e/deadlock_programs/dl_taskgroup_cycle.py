# REQUIRES: python>=3.11
# A TaskGroup's child awaits the task that owns the group.
import asyncio

import _dl

tasks = {}


async def child():
    await asyncio.sleep(0.01)
    await tasks["owner"]  # EXPECT: deadlock


async def owner():
    async with asyncio.TaskGroup() as tg:  # EXPECT: deadlock
        tg.create_task(child())


async def main():
    tasks["owner"] = asyncio.ensure_future(owner())
    await _dl.guard(tasks["owner"], hard_exit=True)


_dl.run(main)
