"""Several loops one after another, each driven a different way: asyncio.run (or uvloop.run),
run_until_complete on a loop made by hand, then run_forever. Each has its own bug."""
import asyncio
import time

import _e2e


async def audit(name):
    await asyncio.sleep(0)
    print("audit", name)


async def first():
    audit("first")  # EXPECT: unawaited-coroutine
    await asyncio.sleep(0.01)


async def second():
    time.sleep(0.3)  # EXPECT: blocking-call@second count=2 min_duration=0.2


async def fail_later():
    await asyncio.sleep(0.01)
    raise KeyError("third")  # EXPECT: lost-exception


def third_main(loop):
    loop.create_task(fail_later())  # CREATED: lost-exception
    loop.call_later(0.05, loop.stop)


_e2e.run(first)

loop = _e2e.new_loop()
loop.run_until_complete(second())
loop.close()

loop = _e2e.new_loop()
third_main(loop)
loop.run_forever()
loop.close()

_e2e.run(second)  # a fourth loop hits the same site again: merged
print("done")
