"""A target holding N pending tasks (argv[1]) for the attach benchmark and the scale test.

Each task is suspended in asyncio.sleep; prints "ready" once they all exist, then waits until
stdin closes."""
import asyncio
import sys


async def idle():
    await asyncio.sleep(3600)


async def main(n):
    tasks = [asyncio.create_task(idle()) for _ in range(n)]
    await asyncio.sleep(0)
    print("ready %d" % len(asyncio.all_tasks()), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for t in tasks:
        t.cancel()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
