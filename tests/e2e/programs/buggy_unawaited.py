"""Coroutines created and never awaited: one dropped at once (an expression statement), one kept
in a variable for a while and then dropped."""
import asyncio

import _e2e


async def log_event(name):
    await asyncio.sleep(0)
    print("event", name)


async def refresh_cache():
    await asyncio.sleep(0)


def schedule_refresh():
    refresh = refresh_cache()  # EXPECT: unawaited-coroutine@kept
    print("refresh scheduled:", type(refresh).__name__)


async def main():
    log_event("started")  # EXPECT: unawaited-coroutine@dropped
    schedule_refresh()
    await asyncio.sleep(0.01)
    print("done")


_e2e.run(main)
