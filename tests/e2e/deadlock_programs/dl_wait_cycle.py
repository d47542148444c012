# A task waits (asyncio.wait, FIRST_COMPLETED) on a child that awaits the task itself.
import asyncio

import _dl

tasks = {}


async def child():
    await asyncio.sleep(0.01)
    await tasks["parent"]  # EXPECT: deadlock


async def parent():
    tasks["child"] = asyncio.ensure_future(child())
    await asyncio.wait([tasks["child"]], return_when=asyncio.FIRST_COMPLETED)  # EXPECT: deadlock


async def main():
    tasks["parent"] = asyncio.ensure_future(parent())
    await _dl.guard(tasks["parent"], hard_exit=True)


_dl.run(main)
