# LOOPS: asyncio
# No false report: a long sleep, and a task waiting on an Event the sleeper sets afterwards.
import asyncio

import _dl


async def sleeper(ev):
    await asyncio.sleep(2.5)
    ev.set()


async def main():
    ev = asyncio.Event()
    t = asyncio.ensure_future(sleeper(ev))
    await ev.wait()
    await t
    print("woke", flush=True)


_dl.run(main)
