# LOOPS: asyncio
# No false report: executor work in flight (the default executor, then an idle pool and a sleep).
import asyncio
import time

import _dl


async def main():
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, time.sleep, 2.0)
    print("done", flush=True)


_dl.run(main)
