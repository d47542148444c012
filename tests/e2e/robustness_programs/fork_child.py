"""os.fork() three ways: after a loop ran (the watchdog thread exists), while another thread runs
a loop (the watchdog may hold its mutex at that moment), and twenty times in a row from inside a
running coroutine. Every child must get a working agent: the first child's blocking call is
reported from the child, and no child hangs or crashes."""
import asyncio
import os
import threading
import time


async def short():
    await asyncio.sleep(0.01)
    return 1


async def child_main():
    await asyncio.sleep(0.01)
    time.sleep(0.6)  # EXPECT: blocking-call min_duration=0.5
    await asyncio.sleep(0.01)


def wait_child(pid):
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status >> 8


asyncio.run(short())

# 1. After a loop ran: the child runs its own loop, which blocks once.
pid = os.fork()
if pid == 0:
    asyncio.run(child_main())
    print("child 1 ran its loop", flush=True)
    os._exit(0)
print("child 1 exit status:", wait_child(pid))

# 2. While a thread runs a loop with a heartbeat every few milliseconds.
stop = threading.Event()


async def spinning():
    while not stop.is_set():
        await asyncio.sleep(0.001)


def os_threads():
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("Threads:")).split()[1])


threads_before = os_threads()
thread = threading.Thread(target=asyncio.run, args=(spinning(),))
thread.start()
time.sleep(0.05)
statuses = []
for i in range(5):
    pid = os.fork()
    if pid == 0:
        # Only this thread exists here; the loop of the other thread is gone with it.
        result = asyncio.run(short())
        os._exit(10 + result)
    statuses.append(wait_child(pid))
stop.set()
thread.join()
# join() returns a moment before the thread is gone from /proc, where 3.12's os.fork() counts
# threads for its DeprecationWarning: wait for it, so that the next fork never races with it.
for _ in range(200):
    if os_threads() <= threads_before:
        break
    time.sleep(0.01)
print("children forked beside a running loop:", statuses)


# 3. From inside a running coroutine, many times: the child leaves at once with os._exit.
async def forker():
    codes = []
    for i in range(20):
        pid = os.fork()
        if pid == 0:
            os._exit(i % 7)
        codes.append(wait_child(pid))
        await asyncio.sleep(0)
    return codes


print("children forked from a coroutine:", asyncio.run(forker()))
