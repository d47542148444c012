"""Task spawn + gather: create N tasks that each yield once, then gather them all."""
import asyncio

from _common import main


async def leaf(i):
    await asyncio.sleep(0)
    return i


async def spawn_gather(n):
    tasks = [asyncio.create_task(leaf(i)) for i in range(n)]
    results = await asyncio.gather(*tasks)
    assert len(results) == n


if __name__ == "__main__":
    main("spawn+gather", spawn_gather, 100_000)
