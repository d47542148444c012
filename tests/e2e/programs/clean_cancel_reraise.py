"""Cancellation handled correctly: cleanup in except/finally, then re-raise; the canceller awaits
the task and sees CancelledError. No findings."""
import asyncio

import _e2e


async def worker(log):
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        log.append("cleanup")
        raise
    finally:
        log.append("finally")


async def main():
    log = []
    task = asyncio.create_task(worker(log), name="worker")
    await asyncio.sleep(0.02)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        log.append("cancelled")
    print(log, task.cancelled())


_e2e.run(main)
