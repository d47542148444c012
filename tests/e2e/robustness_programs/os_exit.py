"""os._exit() from inside a coroutine, right after the loop blocked: no atexit handler runs, yet
the finding already streamed is in the report and the exit status is the program's."""
import asyncio
import os
import time


async def main():
    await asyncio.sleep(0.01)
    time.sleep(0.6)  # EXPECT: blocking-call min_duration=0.5
    await asyncio.sleep(0.05)  # the late heartbeat runs here and reports the block
    print("leaving with os._exit(3)", flush=True)
    os._exit(3)


asyncio.run(main())
print("never printed")
