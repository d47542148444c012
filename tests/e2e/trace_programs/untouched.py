"""Prints what aioscope's trace hooks would change, so a test can see they are absent without
--trace: the loop's instance attributes and asyncio.Lock's methods."""
import asyncio
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "programs"))
import _e2e  # noqa: E402


async def main():
    loop = asyncio.get_running_loop()
    d = getattr(loop, "__dict__", {})
    print("run_once_hooked", "_run_once" in d)
    print("lock_acquire_is_function", type(asyncio.Lock.acquire).__name__ == "function")
    lock = asyncio.Lock()
    async with lock:
        pass
    print("lock ok")


_e2e.run(main)
