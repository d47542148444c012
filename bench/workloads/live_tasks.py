"""Memory per live task: N tasks all suspended on one asyncio.Event at once. Prints the growth of
the process's resident memory divided by N (C allocations included, which tracemalloc would not
see) and sys.getsizeof of one task; the driver compares the two with and without the agent."""
import asyncio
import gc
import json
import os
import sys


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def waiter(event):
    await event.wait()


async def live_tasks(n):
    event = asyncio.Event()
    gc.collect()
    before = rss_bytes()
    tasks = [asyncio.create_task(waiter(event)) for _ in range(n)]
    await asyncio.sleep(0)  # every task runs up to event.wait()
    gc.collect()
    after = rss_bytes()
    task_size = sys.getsizeof(tasks[0])
    event.set()
    await asyncio.gather(*tasks)
    return (after - before) / n, task_size


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    per_task, task_size = asyncio.run(live_tasks(n))
    print(json.dumps({"workload": "live tasks memory", "size": n, "bytes_per_task": per_task,
                      "task_sizeof": task_size, "python": "%d.%d.%d" % sys.version_info[:3]}))


if __name__ == "__main__":
    main()
