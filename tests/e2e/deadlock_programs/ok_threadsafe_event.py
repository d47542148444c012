# LOOPS: asyncio
# No false report: an Event is set from a thread through call_soon_threadsafe.
import asyncio
import threading
import time

import _dl


def set_later(loop, ev):
    time.sleep(2.0)
    loop.call_soon_threadsafe(ev.set)


async def main():
    ev = asyncio.Event()
    threading.Thread(target=set_later, args=(asyncio.get_running_loop(), ev)).start()
    await ev.wait()
    print("set", flush=True)


_dl.run(main)
