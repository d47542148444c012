# Two tasks await each other directly.
import asyncio

import _dl

tasks = {}


async def first():
    await asyncio.sleep(0.01)
    await tasks["second"]  # EXPECT: deadlock


async def second():
    await asyncio.sleep(0.01)
    await tasks["first"]  # EXPECT: deadlock


async def main():
    tasks["first"] = asyncio.ensure_future(first())
    tasks["second"] = asyncio.ensure_future(second())
    await _dl.guard(tasks["first"], tasks["second"], hard_exit=True)


_dl.run(main)
