# LOOPS: asyncio
# No false report: the program waits for SIGTERM, whose handler (signal.signal, not the loop's
# add_signal_handler) sets the Event; another process sends the signal later (no thread here).
import asyncio
import os
import signal
import subprocess

import _dl


async def main():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signal.signal(signal.SIGTERM, lambda *_: loop.call_soon_threadsafe(stop.set))
    killer = subprocess.Popen(["sh", "-c", "sleep 2; kill -TERM %d" % os.getpid()])
    await stop.wait()
    killer.wait()
    print("stopped", flush=True)


_dl.run(main)
