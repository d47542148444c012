"""Blocking work moved off the loop: asyncio.to_thread, run_in_executor with the default and a
dedicated thread pool, and a process pool. The loop itself never blocks. No findings."""
import asyncio
import concurrent.futures
import sys
import time

import _e2e


def blocking_io(seconds):
    time.sleep(seconds)
    return seconds


def cpu_work(n):
    return sum(i * i for i in range(n))


async def main():
    loop = asyncio.get_running_loop()
    results = [await loop.run_in_executor(None, blocking_io, 0.3)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results += await asyncio.gather(*(loop.run_in_executor(pool, blocking_io, 0.2)
                                          for _ in range(3)))
    if sys.version_info >= (3, 9):
        results.append(await asyncio.to_thread(blocking_io, 0.3))
    with concurrent.futures.ProcessPoolExecutor(max_workers=2) as pool:
        results.append(await loop.run_in_executor(pool, cpu_work, 300000))
    print(results[0], results[1:4], results[-1])


if __name__ == "__main__":
    _e2e.run(main)
