# LOOPS: asyncio
# A task awaits a Future that nothing else references: nobody can ever complete it.
import asyncio

import _dl


async def wait_for_reply():
    reply = asyncio.get_running_loop().create_future()
    return await reply  # EXPECT: deadlock


async def main():
    await _dl.guard(wait_for_reply())


_dl.run(main)
