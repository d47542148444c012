"""asyncio.Runner (3.11+) running two coroutines in one loop, each with a bug."""
# REQUIRES: python>=3.11
import asyncio
import time

import _e2e


async def warm_up():
    time.sleep(0.3)  # EXPECT: blocking-call min_duration=0.2


async def start_workers():
    asyncio.create_task(asyncio.sleep(30), name="forgotten")  # EXPECT: pending-at-exit task=forgotten; CREATED: pending-at-exit
    await asyncio.sleep(0.01)


def loop_factory():
    return _e2e.new_loop()


with asyncio.Runner(loop_factory=loop_factory) as runner:
    runner.run(warm_up())
    runner.run(start_workers())
print("done")
