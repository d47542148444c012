"""The same blocking line hit three times is one finding with count 3; a second site is its own
finding; a short sleep under the threshold is no finding at all."""
import asyncio
import time

import _e2e


def read_config():
    time.sleep(0.2)  # EXPECT: blocking-call@config count=3 min_duration=0.15


def flush_log():
    time.sleep(0.3)  # EXPECT: blocking-call@flush count=1 min_duration=0.2


async def main():
    for _ in range(3):
        read_config()
        await asyncio.sleep(0.02)
    flush_log()
    await asyncio.sleep(0)  # the short sleeps below are steps of their own, not part of this block
    for _ in range(5):
        time.sleep(0.05)  # under the 100 ms threshold: not a finding
        await asyncio.sleep(0)
    print("done")


_e2e.run(main)
