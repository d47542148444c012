"""A fire-and-forget task that fails: nothing ever retrieves its exception."""
import asyncio

import _e2e


async def sync_inventory(store):
    await asyncio.sleep(0.01)
    raise ValueError("store %s: bad SKU" % store)  # EXPECT: lost-exception task=sync-inventory


async def main():
    asyncio.create_task(sync_inventory(7), name="sync-inventory")  # CREATED: lost-exception
    await asyncio.sleep(0.1)
    print("main done")


_e2e.run(main)
