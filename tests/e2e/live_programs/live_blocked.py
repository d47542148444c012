"""A program whose event loop gets blocked, for the live view while the loop is stuck.

argv[1] "sleep": the loop thread sits in time.sleep() (the GIL is free);
argv[1] "regex": it runs a catastrophic regular expression (the C matcher keeps the GIL).
It prints "ready" right before it blocks; the block lasts longer than any test.
"""
import asyncio
import re
import sys
import time


async def bystander():
    await asyncio.sleep(1000)


def hog():
    if sys.argv[1] == "sleep":
        time.sleep(600)  # BLOCKS-HERE-sleep
    else:
        re.match(r"(a+)+$", "a" * 40 + "b")  # BLOCKS-HERE-regex


async def blocker():
    await asyncio.sleep(0)
    print("ready", flush=True)
    hog()


async def main():
    asyncio.create_task(bystander(), name="bystander")
    await asyncio.create_task(blocker(), name="blocker")


asyncio.run(main())
