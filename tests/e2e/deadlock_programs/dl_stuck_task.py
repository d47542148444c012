# LOOPS: asyncio
# One task waits on an Event nobody sets while another keeps the loop busy: stuck, not deadlocked.
import asyncio

import _dl


async def waiter(ev):
    await ev.wait()  # EXPECT: stuck-task


async def ticker():
    for _ in range(50):
        await asyncio.sleep(0.05)


async def main():
    ev = asyncio.Event()
    w = asyncio.ensure_future(waiter(ev))
    await ticker()
    w.cancel()
    await asyncio.gather(w, return_exceptions=True)


_dl.run(main)
