# Two workers take two locks in opposite orders and retry after a timeout (0.8 s, shorter than
# --deadlock-after): the deadlock forms again and again. Timeouts must not hide it, and it is
# one finding, reported once.
import asyncio

import _dl


async def worker(first, second, name):
    for attempt in range(3):
        async with first:
            await asyncio.sleep(0.05)
            try:
                await asyncio.wait_for(second.acquire(), 0.8)  # EXPECT: deadlock
            except asyncio.TimeoutError:
                print("%s: attempt %d timed out" % (name, attempt), flush=True)
                continue
            second.release()
            return
        await asyncio.sleep(0.01)


async def main():
    a, b = asyncio.Lock(), asyncio.Lock()
    await _dl.guard(worker(a, b, "ab"), worker(b, a, "ba"))


_dl.run(main)
