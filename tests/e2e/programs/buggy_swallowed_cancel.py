"""A worker that catches CancelledError and returns normally: whoever cancelled it believes it was
cancelled, but it was not."""
# REQUIRES: python>=3.11
import asyncio

import _e2e


async def worker():
    try:
        await asyncio.sleep(10)  # EXPECT: swallowed-cancel@w task=poller
    except asyncio.CancelledError:  # EXPECT: swallowed-cancel@w
        print("worker: cancelled, ignoring it")
    return "finished"


async def main():
    task = asyncio.create_task(worker(), name="poller")  # CREATED: swallowed-cancel@w
    await asyncio.sleep(0.02)
    task.cancel()
    print("worker returned:", await task)


_e2e.run(main)
