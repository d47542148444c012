# LOOPS: asyncio
# No false report: a periodic timer callback (not a task) sets the Event on its fifth tick.
import asyncio

import _dl


def tick(loop, ev, n):
    if n == 5:
        ev.set()
    else:
        loop.call_later(0.5, tick, loop, ev, n + 1)


async def main():
    loop = asyncio.get_running_loop()
    ev = asyncio.Event()
    loop.call_later(0.5, tick, loop, ev, 1)
    await ev.wait()
    print("ticked", flush=True)


_dl.run(main)
