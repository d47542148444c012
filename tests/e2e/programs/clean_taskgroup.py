"""A TaskGroup in which one child fails: the group cancels the others and raises an
ExceptionGroup that the program handles. No findings."""
# REQUIRES: python>=3.11
import asyncio

import _e2e


async def fetch(n, log):
    try:
        await asyncio.sleep(0.01 * n)
        if n == 2:
            raise ValueError("item %d is bad" % n)
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        log.append("fetch %d cancelled" % n)
        raise


async def main():
    log = []
    try:
        async with asyncio.TaskGroup() as tg:
            for n in range(1, 5):
                tg.create_task(fetch(n, log), name="fetch-%d" % n)
    except* ValueError as group:
        log.append("caught: %s" % group.exceptions[0])
    async with asyncio.TaskGroup() as tg:
        ok = [tg.create_task(asyncio.sleep(0.01, result=n)) for n in range(3)]
    log.append("results: %s" % [t.result() for t in ok])
    print("\n".join(sorted(log)))


_e2e.run(main)
