"""Many short synchronous steps: 60 CPU steps of 15 ms each (0.9 s of work in all), then ten
60 ms waits back to back, yielding to the loop between steps; the loop polls between every two
steps. No single step reaches the 100 ms threshold, even if two next to each other would. No
findings."""
import asyncio
import time

import _e2e


def step(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def crunch(name, steps):
    for _ in range(steps):
        step(0.015)
        await asyncio.sleep(0)
    return name


async def main():
    done = await asyncio.gather(crunch("a", 30), crunch("b", 30))
    for _ in range(10):
        time.sleep(0.02)
        await asyncio.sleep(0.001)
    for _ in range(10):
        time.sleep(0.06)
        await asyncio.sleep(0)
    print("done", done)


_e2e.run(main)
