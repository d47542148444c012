"""Deep stacks: an await chain 400 coroutines deep that blocks at the bottom (reported at that
line, with a stack cut to its innermost frames), a task created 600 frames deep, and a
RecursionError inside a task that the program catches."""
import asyncio
import sys
import time

sys.setrecursionlimit(3000)


async def descend(depth):
    if depth == 0:
        time.sleep(0.6)  # EXPECT: blocking-call min_duration=0.5
        return 0
    return 1 + await descend(depth - 1)


def make_task_deep(depth):
    if depth == 0:
        return asyncio.ensure_future(asyncio.sleep(0, "made deep"))
    return make_task_deep(depth - 1)


async def runaway(n):
    return await runaway(n + 1)


async def main():
    print("await chain depth:", await descend(400))
    print("task made 600 frames deep:", await make_task_deep(600))
    try:
        await asyncio.create_task(runaway(0))
    except RecursionError:
        print("RecursionError caught")


asyncio.run(main())
