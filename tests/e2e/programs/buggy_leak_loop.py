"""An event loop created for a side job and never closed."""
# LOOPS: asyncio
import asyncio
import gc


async def compute():
    await asyncio.sleep(0)
    return 42


def side_job():
    loop = asyncio.new_event_loop()  # EXPECT: resource-leak
    return loop.run_until_complete(compute())


print("side job:", side_job())
gc.collect()
print("done")
