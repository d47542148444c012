"""A service that runs until a signal stops it (not run by the generic program tests: it never
ends by itself). One bug happens before it prints "ready"."""
import asyncio

import _e2e


async def audit(what):
    await asyncio.sleep(0)


async def main():
    audit("startup")  # EXPECT: unawaited-coroutine
    print("ready", flush=True)
    await asyncio.Event().wait()


_e2e.run(main)
