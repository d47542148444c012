"""Background tasks still pending when main() returns: asyncio.run cancels them silently."""
import asyncio

import _e2e


async def heartbeat():
    while True:
        await asyncio.sleep(0.01)


async def drain(queue):
    while True:
        await queue.get()


async def main():
    asyncio.create_task(heartbeat(), name="heartbeat")  # EXPECT: pending-at-exit@hb task=heartbeat; CREATED: pending-at-exit@hb
    queue = asyncio.Queue()
    asyncio.create_task(drain(queue), name="drain")  # EXPECT: pending-at-exit@dr task=drain; CREATED: pending-at-exit@dr
    await asyncio.sleep(0.05)
    print("main done")


_e2e.run(main)
