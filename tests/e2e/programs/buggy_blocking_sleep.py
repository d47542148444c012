"""A request handler that calls time.sleep: the loop cannot poll for 0.4 s."""
import asyncio
import time

import _e2e


async def handle_request(n):
    print("handling", n)
    time.sleep(0.4)  # EXPECT: blocking-call min_duration=0.3
    return n * 2


async def main():
    results = await asyncio.gather(asyncio.sleep(0.05), handle_request(21))
    print("result", results[1])


_e2e.run(main)
