"""Eight threads, each running its own event loop at the same time with its own tasks; one of
them blocks its loop once. Only that one is reported, at its line; the others' results are
untouched."""
import asyncio
import threading
import time

results = {}


async def worker(n):
    await asyncio.sleep(0.05)
    return n * n


async def thread_main(index):
    if index == 3:
        await asyncio.sleep(0.02)
        time.sleep(0.6)  # EXPECT: blocking-call min_duration=0.5
    values = await asyncio.gather(*(worker(n) for n in range(50)))
    queue = asyncio.Queue()
    for v in values:
        queue.put_nowait(v)
    total = 0
    while not queue.empty():
        total += await queue.get()
    results[index] = total


threads = [threading.Thread(target=asyncio.run, args=(thread_main(i),), name="loop-%d" % i)
           for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("results:", [results[i] for i in range(8)])
print("threads still alive:", sum(t.is_alive() for t in threads))
