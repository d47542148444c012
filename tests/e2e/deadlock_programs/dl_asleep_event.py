# LOOPS: asyncio
# Every task waits on an Event that nobody can set any more; a timeout must not hide it. Below
# 3.12 wait_for runs the coroutine in a task of its own, and main, waiting on it, is listed too.
import asyncio

import _dl


async def wait_for_go(go):
    await go.wait()  # EXPECT: deadlock


async def main():
    go = asyncio.Event()
    try:
        await asyncio.wait_for(wait_for_go(go), _dl.GUARD_S)  # EXPECT: deadlock
    except asyncio.TimeoutError:
        print("timed out", flush=True)


_dl.run(main)
