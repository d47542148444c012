"""A small task tree for the trace tests: main spawns named workers, each spawns a helper;
workers contend for one asyncio.Lock (one waits while another holds it) and step several
times. Ends with a blocking call so that the end of the run has a blocked period."""
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "programs"))
import _e2e  # noqa: E402


async def helper(n):
    for _ in range(3):
        await asyncio.sleep(0)
    return n


async def worker(i, lock):
    child = asyncio.create_task(helper(i), name="helper-%d" % i)
    async with lock:
        await asyncio.sleep(0.005)
    await child


async def main():
    lock = asyncio.Lock()
    await asyncio.gather(*(asyncio.create_task(worker(i, lock), name="worker-%d" % i)
                           for i in range(4)))
    await asyncio.sleep(0.01)
    time.sleep(0.25)  # the last thing the program does: a blocked loop
    print("done")


_e2e.run(main)
