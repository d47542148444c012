"""A client connection that is never closed: the StreamWriter and its transport are garbage-
collected open. The server side closes its end properly."""
# LOOPS: asyncio
import asyncio
import gc

import _e2e


async def serve(reader, writer):
    writer.write(b"hello\n")
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def fetch_greeting(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # EXPECT: resource-leak
    return (await reader.readline()).decode().strip()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print("greeting:", await fetch_greeting(port))
    await asyncio.sleep(0.05)
    gc.collect()
    server.close()
    await server.wait_closed()
    print("done")


_e2e.run(main)
