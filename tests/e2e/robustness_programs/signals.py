"""Signal handlers of every kind while the loop runs: loop.add_signal_handler, signal.signal
(whose handler raises into the running coroutine), a SIGALRM timer interrupting a sleep, and the
wakeup fd the loop installed. The order of events must be exactly what it is without aioscope."""
import asyncio
import os
import signal


class Interrupted(Exception):
    pass


def on_usr2(signum, frame):
    raise Interrupted("SIGUSR2")


async def main():
    loop = asyncio.get_running_loop()
    got = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, lambda: (print("loop handler: SIGUSR1"), got.set()))
    os.kill(os.getpid(), signal.SIGUSR1)
    await asyncio.wait_for(got.wait(), 5)

    previous = signal.signal(signal.SIGUSR2, on_usr2)
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        # The handler runs at the next bytecode boundary of the main thread, here.
        for _ in range(1000):
            await asyncio.sleep(0)
    except Interrupted as exc:
        print("python handler raised into the coroutine:", exc)
    finally:
        signal.signal(signal.SIGUSR2, previous)

    alarms = []
    signal.signal(signal.SIGALRM, lambda s, f: alarms.append(s))
    signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
    while len(alarms) < 5:
        await asyncio.sleep(0.005)
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    print("alarms while the loop ran:", len(alarms))

    loop.remove_signal_handler(signal.SIGUSR1)
    print("wakeup fd restored after removal:", signal.set_wakeup_fd(-1) != -1)


asyncio.run(main())
print("SIGUSR1 back to default:", signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL)
