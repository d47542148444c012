"""An event loop running in a worker thread (not the main thread) blocks and loses an exception;
the main thread meanwhile runs no loop at all."""
import asyncio
import threading
import time

import _e2e


async def poll_sensor():
    await asyncio.sleep(0.01)
    raise RuntimeError("sensor offline")  # EXPECT: lost-exception task=sensor


async def background_main():
    asyncio.get_running_loop().create_task(poll_sensor(), name="sensor")  # CREATED: lost-exception
    await asyncio.sleep(0.05)
    time.sleep(0.3)  # EXPECT: blocking-call min_duration=0.2
    await asyncio.sleep(0.01)


def worker():
    loop = _e2e.new_loop()
    try:
        loop.run_until_complete(background_main())
    finally:
        loop.close()
    print("worker done")


thread = threading.Thread(target=worker, name="io-thread")
thread.start()
thread.join()
print("main done")
