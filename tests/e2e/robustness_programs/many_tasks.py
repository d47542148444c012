"""1 000 000 short-lived tasks (ROBUSTNESS_TASKS changes the number), gathered 1 000 at a time
(so that no loop iteration runs long enough to be a blocked loop), each with a done-callback:
nothing to report, the same result, and memory that stays bounded."""
import asyncio
import os
import resource

TOTAL = int(os.environ.get("ROBUSTNESS_TASKS", "1000000"))
BATCH = 1000


async def square(n):
    return n * n


async def main():
    done = 0
    total = 0

    def count(task):
        nonlocal done
        done += 1

    for start in range(0, TOTAL, BATCH):
        tasks = [asyncio.ensure_future(square(n)) for n in range(start, min(start + BATCH, TOTAL))]
        for t in tasks:
            t.add_done_callback(count)
        total += sum(await asyncio.gather(*tasks))
    await asyncio.sleep(0)
    print("tasks:", TOTAL, "done callbacks:", done, "sum of squares:", total)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("peak memory under 1 GB:", rss_mb < 1024)


asyncio.run(main())
