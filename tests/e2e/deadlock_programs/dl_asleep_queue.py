# LOOPS: asyncio
# The producer died; the consumer waits on Queue.get() for ever.
import asyncio

import _dl


async def producer(q):
    await q.put(1)
    raise RuntimeError("producer crashed")


async def consumer(q):
    while True:
        item = await q.get()  # EXPECT: deadlock
        print("got", item, flush=True)


async def main():
    q = asyncio.Queue()
    prod = asyncio.ensure_future(producer(q))
    await _dl.guard(consumer(q))
    prod.exception()  # retrieved: this program is about the consumer


_dl.run(main)
