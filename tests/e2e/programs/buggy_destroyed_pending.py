"""A task waiting on a future that nobody else references: once the last reference goes, the
garbage collector destroys the task while it is still pending."""
import asyncio
import gc

import _e2e

# Only the explicit collection below may run: whether an automatic one falls between create_task
# and the task's first step depends on how many objects the process allocated (any sitecustomize
# changes it), and it decides whether asyncio's own "Task was destroyed" message says "running
# at" or "done" — output the test compares with a plain run.
gc.disable()

async def wait_for_reply(reply):
    return await reply


async def start_request(loop):
    reply = loop.create_future()
    loop.create_task(wait_for_reply(reply), name="request-1")  # EXPECT: destroyed-pending task=request-1; CREATED: destroyed-pending


async def main():
    await start_request(asyncio.get_running_loop())
    await asyncio.sleep(0.01)
    gc.collect()
    await asyncio.sleep(0.01)
    print("main done")


_e2e.run(main)
