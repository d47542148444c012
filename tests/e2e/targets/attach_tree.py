"""A target for `aioscope ps|pstree|dump --attach`: a process holding known asyncio tasks.

Main thread, one event loop:
    main ── awaits task "supervisor" ── gathers tasks "gw1", "gw2"
         ── task "waiter" awaits task "leaf" directly
         ── task "grouper" runs a TaskGroup with "tg1", "tg2" (3.11+)
Thread "blocked-loop": its own event loop, blocked in time.sleep() inside the task "blocker".
Thread "sleeper": a plain thread in time.sleep().

When everything is in place it prints one JSON line (the side channel: the tasks as the
program's own asyncio.all_tasks() sees them, the thread idents) and then "ready". It then waits
until stdin closes and exits.
"""
import asyncio
import json
import sys
import threading
import time

HAS_TASKGROUP = sys.version_info >= (3, 11)
started = None
never = None
blocked_info = {}
blocked_ready = threading.Event()


def block_forever():
    time.sleep(3600)  # MARK-BLOCK


async def blocker_main():
    asyncio.current_task().set_name("blocker")
    blocked_info["thread"] = threading.get_ident()
    blocked_info["tasks"] = sorted(t.get_name() for t in asyncio.all_tasks())
    blocked_ready.set()
    block_forever()  # MARK-BLOCK-CALL


def blocked_loop_thread():
    asyncio.run(blocker_main())


def sleeper():
    while True:
        time.sleep(3600)  # MARK-SLEEPER


async def worker():
    started.release()
    await never.wait()  # MARK-WORKER


async def supervisor(a, b):
    await asyncio.gather(a, b)  # MARK-GATHER


async def waiter(other):
    await other  # MARK-WAITER


async def grouper():
    async with asyncio.TaskGroup() as tg:
        tg.create_task(worker(), name="tg1")
        tg.create_task(worker(), name="tg2")
    # MARK-GROUP-END


async def main():
    global started, never
    started = asyncio.Semaphore(0)
    never = asyncio.Event()
    asyncio.current_task().set_name("main")
    expected_workers = 3
    gw1 = asyncio.create_task(worker(), name="gw1")
    gw2 = asyncio.create_task(worker(), name="gw2")
    sup = asyncio.create_task(supervisor(gw1, gw2), name="supervisor")
    leaf = asyncio.create_task(worker(), name="leaf")
    asyncio.create_task(waiter(leaf), name="waiter")
    if HAS_TASKGROUP:
        asyncio.create_task(grouper(), name="grouper")
        expected_workers += 2
    for _ in range(expected_workers):
        await started.acquire()
    # Let the supervisor, waiter and grouper reach their awaits too.
    for _ in range(5):
        await asyncio.sleep(0)
    threading.Thread(target=sleeper, name="sleeper", daemon=True).start()
    threading.Thread(target=blocked_loop_thread, name="blocked-loop", daemon=True).start()
    await asyncio.get_running_loop().run_in_executor(None, blocked_ready.wait)
    # Until the blocked thread is really inside time.sleep(), report nothing.
    while sys._current_frames()[blocked_info["thread"]].f_code.co_name != "block_forever":
        await asyncio.sleep(0.001)
    tasks = {}
    for t in asyncio.all_tasks():
        tasks[t.get_name()] = {"id": id(t), "done": t.done()}
    for name in blocked_info["tasks"]:
        tasks[name] = {"id": None, "done": False}
    side = {
        "pid": __import__("os").getpid(),
        "version": list(sys.version_info[:3]),
        "tasks": tasks,
        "main_thread": threading.main_thread().ident,
        "blocked_thread": blocked_info["thread"],
        "threads": sorted(t.ident for t in threading.enumerate()),
        "has_taskgroup": HAS_TASKGROUP,
    }
    main_ident = threading.main_thread().ident

    def report_when_idle():
        # From a worker thread: once the main loop waits in its selector, report and wait for
        # stdin to close. (The test compares "polling" for this loop, so it must be idle.)
        while sys._current_frames()[main_ident].f_code.co_name != "select":
            time.sleep(0.001)
        print(json.dumps(side), flush=True)
        print("ready", flush=True)
        sys.stdin.read()

    await asyncio.get_running_loop().run_in_executor(None, report_when_idle)
    return


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception:
        pass
