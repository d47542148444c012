"""The target of bench_ps.py: N tasks waiting (an Event, a sleep, a gather: three shapes), plus a
watcher that measures how long the loop is held up (the largest lateness of a 1 ms timer).

Prints "ready" when the tasks are in place. Each line on stdin asks for the largest lateness
since the previous line (printed in ms); stdin closed ends it."""
import asyncio
import sys
import time

N = int(sys.argv[1])


async def on_event(ev):
    await ev.wait()


async def sleeping():
    await asyncio.sleep(3600)


async def gathering(ev):
    await asyncio.gather(on_event(ev), on_event(ev))


async def main():
    loop = asyncio.get_running_loop()
    ev = asyncio.Event()
    # N tasks in all: a gathering task brings two children of its own.
    tasks, total, i = [], 0, 0
    while total < N:
        kind = i % 3 if N - total >= 3 else 1
        coro = on_event(ev) if kind == 0 else sleeping() if kind == 1 else gathering(ev)
        tasks.append(asyncio.create_task(coro))
        total += 3 if kind == 2 else 1
        i += 1
    worst = [0.0]

    async def watch():
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.001)
            worst[0] = max(worst[0], time.monotonic() - t - 0.001)

    watcher = asyncio.create_task(watch())
    for _ in range(3):
        await asyncio.sleep(0.01)
    worst[0] = 0.0
    print("ready", flush=True)
    done = loop.create_future()

    def on_stdin():
        line = sys.stdin.readline()
        if not line:
            if not done.done():
                done.set_result(None)
            return
        print("%.3f" % (worst[0] * 1e3), flush=True)
        worst[0] = 0.0

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    await done
    loop.remove_reader(sys.stdin.fileno())
    watcher.cancel()
    ev.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


asyncio.run(main())
