"""Runs tasks until SIGTERM ends it (the trace must still be written)."""
import asyncio
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "programs"))
import _e2e  # noqa: E402


async def ticker():
    while True:
        await asyncio.sleep(0.005)


async def main():
    asyncio.create_task(ticker(), name="ticker")
    await asyncio.sleep(0.1)
    print("ready", flush=True)
    await asyncio.Event().wait()


_e2e.run(main)
