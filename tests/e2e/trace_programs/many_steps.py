"""Many task steps (far more than a small --trace-limit), then a blocking call at the very end:
with a bounded trace, the end must still be there."""
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "programs"))
import _e2e  # noqa: E402


async def spin(n):
    for _ in range(n):
        await asyncio.sleep(0)


async def main():
    await asyncio.gather(*(spin(200) for _ in range(20)))
    time.sleep(0.2)
    print("done")


_e2e.run(main)
