"""A small asyncio order service with six classic bugs, for trying aioscope on.

    aioscope run examples/demo_service.py

It takes five orders, checks stock with a little inventory server over TCP, charges a card,
sends receipts, and shuts down by itself after about two seconds. Every order seems to go
through; nothing crashes; and yet:

1. blocking-call        charge_card() calls a synchronous "payment SDK" (time.sleep): the whole
                        event loop stops for 0.3 s per order, so every other order waits too.
2. unawaited-coroutine  handle_order() calls audit_log(...) without await: the coroutine is
                        created and dropped, and the audit log never gets the line.
3. lost-exception       send_receipt() is started fire-and-forget and fails for an order without
                        an e-mail address; nobody ever looks at the task, so the error is lost.
4. swallowed-cancel     flush_metrics() catches CancelledError to "flush one last time" and then
                        returns normally: the service believes it cancelled it, it did not
                        (reported on Python 3.11+, where asyncio can tell the difference).
5. pending-at-exit      the cache warmer is started and never stopped: it is still running when
                        main() returns, and asyncio.run() kills it silently.
6. resource-leak        check_stock() opens a connection to the inventory server and never
                        closes it; the transport is garbage-collected open.

Each bug is marked `# BUG n` below. Without aioscope the program prints its orders and exits 0;
under `aioscope run` the same output is followed by a report that points at each of these lines.
"""
import asyncio
import gc
import time

STOCK = {"apple": 5, "pear": 0, "plum": 3}
ORDERS = [
    {"id": 1, "item": "apple", "email": "ann@example.com"},
    {"id": 2, "item": "plum", "email": "bob@example.com"},
    {"id": 3, "item": "pear", "email": "cy@example.com"},
    {"id": 4, "item": "apple", "email": None},
    {"id": 5, "item": "plum", "email": "dee@example.com"},
]


async def inventory_server(reader, writer):
    """The inventory service: answers one stock query per connection, then hangs up."""
    item = (await reader.readline()).decode().strip()
    writer.write(b"%d\n" % STOCK.get(item, 0))
    await writer.drain()
    writer.close()


async def check_stock(port, item):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # BUG 6: never closed
    writer.write(item.encode() + b"\n")
    return int(await reader.readline())


def charge_card(order):
    time.sleep(0.3)  # BUG 1: a synchronous payment SDK call on the event loop
    return "paid"


async def audit_log(event, order):
    await asyncio.sleep(0)
    print("audit:", event, order["id"])


async def send_receipt(order):
    await asyncio.sleep(0.05)
    if not order["email"]:
        raise ValueError("order %d has no e-mail address" % order["id"])  # BUG 3 (raised here)
    return "sent"


async def handle_order(port, order):
    audit_log("received", order)  # BUG 2: missing await
    if await check_stock(port, order["item"]) == 0:
        return "order %d: %s is out of stock" % (order["id"], order["item"])
    status = charge_card(order)
    asyncio.create_task(send_receipt(order))  # BUG 3: fire-and-forget, nobody checks it
    return "order %d: %s %s" % (order["id"], order["item"], status)


async def flush_metrics():
    flushed = 0
    try:
        while True:
            await asyncio.sleep(0.1)  # BUG 4: cancelled while waiting here ...
            flushed += 1
    except asyncio.CancelledError:  # BUG 4: ... caught, "flushed one last time", not re-raised
        pass
    return flushed


async def warm_cache():
    while True:
        await asyncio.sleep(0.2)


async def main():
    server = await asyncio.start_server(inventory_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    metrics = asyncio.create_task(flush_metrics(), name="metrics")
    asyncio.create_task(warm_cache(), name="cache-warmer")  # BUG 5: never stopped

    for line in await asyncio.gather(*(handle_order(port, order) for order in ORDERS)):
        print(line)
    await asyncio.sleep(0.5)  # let the receipts go out
    gc.collect()  # periodic housekeeping: the leaked connections are collected here

    metrics.cancel()
    await metrics
    server.close()
    print("shutting down")


if __name__ == "__main__":
    asyncio.run(main())
