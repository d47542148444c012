"""Worker threads that wake the loop the right way: call_soon_threadsafe setting an
asyncio.Event, run_coroutine_threadsafe, and a threading.Event waited for in a thread.
No findings."""
import asyncio
import threading
import time

import _e2e


def producer(loop, event, results):
    time.sleep(0.2)
    results.append("produced")
    loop.call_soon_threadsafe(event.set)


async def add(a, b):
    await asyncio.sleep(0.01)
    return a + b


def remote_caller(loop, results):
    future = asyncio.run_coroutine_threadsafe(add(2, 3), loop)
    results.append("threadsafe sum %d" % future.result(timeout=5))


async def main():
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    results = []
    threads = [threading.Thread(target=producer, args=(loop, event, results)),
               threading.Thread(target=remote_caller, args=(loop, results))]
    for t in threads:
        t.start()
    await event.wait()
    ready = threading.Event()
    threading.Timer(0.2, ready.set).start()
    await loop.run_in_executor(None, ready.wait)
    for t in threads:
        await loop.run_in_executor(None, t.join)
    print(sorted(results), ready.is_set())


_e2e.run(main)
