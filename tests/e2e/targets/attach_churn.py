"""A target whose tasks and frames change all the time, for torn-read tests of --attach.

Tasks are created, run a few steps and finish continuously (about a thousand alive at any
moment), with names that change; a second thread churns recursion depth. Prints "ready" once
the churn is going, then waits until stdin closes."""
import asyncio
import sys
import threading


def deep(n):
    return 0 if n == 0 else 1 + deep(n - 1)


def recurse_forever():
    i = 0
    while True:
        deep(i % 200)
        i += 1


async def short(i):
    for _ in range(i % 5):
        await asyncio.sleep(0)
    asyncio.current_task().set_name("renamed-%d" % i)
    await asyncio.sleep(0)


async def main():
    threading.Thread(target=recurse_forever, daemon=True).start()
    loop = asyncio.get_running_loop()
    stop = loop.run_in_executor(None, sys.stdin.read)
    i = 0
    while not stop.done():
        for _ in range(200):
            asyncio.create_task(short(i), name="churn-%d" % i)
            i += 1
        if i == 2000:
            print("ready", flush=True)
        await asyncio.sleep(0)


if __name__ == "__main__":
    asyncio.run(main())
