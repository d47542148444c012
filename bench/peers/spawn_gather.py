"""Task spawn + gather: SIZE tasks created at once, each awaiting sleep(0) twice, gathered."""
import asyncio

import _harness


async def leaf(i):
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return i


async def workload(size):
    results = await asyncio.gather(*(leaf(i) for i in range(size)))
    assert len(results) == size


_harness.main(workload, 20000)
