"""A program with a known set of tasks, for `aioscope ps|pstree|dump|top PID` on the agent.

Run under `aioscope run`. When every task is where the test expects it, it prints one JSON line
(its own view: pid and each task's id(), plus the number of steps "busy" took) and then "ready";
it ends when its stdin is closed. The test compares what aioscope reports with that view; it
never sleeps to synchronise.
"""
import asyncio
import json
import logging
import os
import sys
import threading

BUSY_STEPS = 50


async def sleeper():
    logging.getLogger("live").warning("hello from a task")
    await asyncio.sleep(1000)


async def child(ev):
    await ev.wait()


async def parent(ev):
    await asyncio.gather(asyncio.create_task(child(ev), name="child-1"),
                         asyncio.create_task(child(ev), name="child-2"))


async def busy(q, started):
    for _ in range(BUSY_STEPS):
        sum(range(20000))  # a little CPU in every step, so that busy time is measurable
        await asyncio.sleep(0)
    started.set_result(None)
    await q.get()


async def spawner(tasks):
    tasks["spawned"] = asyncio.create_task(asyncio.sleep(1000), name="spawned")
    await asyncio.sleep(1000)


async def holder(lock, held):
    async with lock:
        held.set_result(None)
        await asyncio.sleep(1000)


async def locked(lock):
    async with lock:
        pass


async def failing():
    raise ValueError("boom")


async def reading(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.read(100)  # the server never writes
    finally:
        writer.close()


async def in_executor(gate):
    await asyncio.get_running_loop().run_in_executor(None, gate.wait)


async def waiting_for(tasks):
    tasks["waited"] = asyncio.create_task(asyncio.sleep(1000), name="waited")
    await asyncio.wait([tasks["waited"]])


async def group_owner(tasks):
    async with asyncio.TaskGroup() as tg:
        tasks["group-child"] = tg.create_task(asyncio.sleep(1000), name="group-child")


async def main():
    logging.basicConfig(format="%(taskName)s|%(message)s")
    loop = asyncio.get_running_loop()
    ev, q, lock = asyncio.Event(), asyncio.Queue(), asyncio.Lock()
    started, held = loop.create_future(), loop.create_future()
    tasks = {}
    tasks["sleeper"] = asyncio.create_task(sleeper(), name="sleeper")
    tasks["parent"] = asyncio.create_task(parent(ev), name="parent")
    tasks["busy"] = asyncio.create_task(busy(q, started), name="busy")
    tasks["spawner"] = asyncio.create_task(spawner(tasks), name="spawner")
    tasks["holder"] = asyncio.create_task(holder(lock, held), name="holder")
    await held
    tasks["locked"] = asyncio.create_task(locked(lock), name="locked")
    tasks["failing"] = asyncio.create_task(failing(), name="failing")
    accepted = []
    server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
    tasks["reading"] = asyncio.create_task(reading(server.sockets[0].getsockname()[1]), name="reading")
    gate = threading.Event()
    tasks["executor"] = asyncio.create_task(in_executor(gate), name="executor")
    tasks["waiting-for"] = asyncio.create_task(waiting_for(tasks), name="waiting-for")
    if sys.version_info >= (3, 11):
        tasks["group-owner"] = asyncio.create_task(group_owner(tasks), name="group-owner")
    await started
    # Let every task reach its waiting point (each needs at most a few loop iterations).
    for _ in range(10):
        await asyncio.sleep(0)
    for t in asyncio.all_tasks():
        if t.get_name().startswith("child-"):
            tasks[t.get_name()] = t
    side = {"pid": os.getpid(), "tasks": {n: id(t) for n, t in tasks.items()},
            "main": id(asyncio.current_task()), "busy_steps": BUSY_STEPS}
    print(json.dumps(side), flush=True)
    print("ready", flush=True)
    # Wait for the test to close our stdin, without a thread: a reader on the pipe.
    done = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: done.done() or done.set_result(None))
    await done
    loop.remove_reader(sys.stdin.fileno())
    gate.set()
    server.close()
    for w in accepted:
        w.close()
    for t in tasks.values():
        t.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)


asyncio.run(main())
