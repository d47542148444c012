"""KeyboardInterrupt raised inside a task: asyncio.run cancels the rest and re-raises it, the
traceback is printed and the process ends the way CPython ends on Ctrl-C. With the argument
"wait", the program instead prints "ready" and waits for a real SIGINT from outside."""
import asyncio
import sys


async def helper():
    try:
        await asyncio.sleep(30)
    finally:
        print("helper cleaned up", flush=True)


async def main():
    task = asyncio.create_task(helper())
    await asyncio.sleep(0.01)
    if len(sys.argv) > 1 and sys.argv[1] == "wait":
        print("ready", flush=True)
        await task
    raise KeyboardInterrupt


asyncio.run(main())
