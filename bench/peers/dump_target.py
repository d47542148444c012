"""The process bench_peers.py dumps: an asyncio program with 200 tasks named worker-N waiting in
a chain of coroutines, plus one busy task, running until killed. Prints "ready" once they run."""
import asyncio
import sys


async def leaf(i):
    await asyncio.sleep(3600)


async def worker(i):
    await leaf(i)


async def busy():
    while True:
        sum(range(1000))
        await asyncio.sleep(0.001)


async def main():
    tasks = [asyncio.create_task(worker(i), name="worker-%d" % i) for i in range(200)]
    tasks.append(asyncio.create_task(busy(), name="busy"))
    await asyncio.sleep(0.2)
    print("ready", flush=True)
    await asyncio.gather(*tasks)


asyncio.run(main())
