"""A subprocess started through asyncio whose transport is never closed."""
# LOOPS: asyncio
import asyncio
import gc

import _e2e


async def run_tool():
    loop = asyncio.get_running_loop()
    transport, _ = await loop.subprocess_exec(asyncio.SubprocessProtocol, "true")  # EXPECT: resource-leak
    while transport.get_returncode() is None:
        await asyncio.sleep(0.01)
    return transport.get_returncode()


async def main():
    print("tool exited with", await run_tool())
    await asyncio.sleep(0.01)
    gc.collect()


_e2e.run(main)
