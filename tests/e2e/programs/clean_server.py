"""A TCP echo server and clients that close every connection properly, on both sides, and a
server that is closed before the loop ends. No findings."""
import asyncio

import _e2e


async def echo(reader, writer):
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(line.upper())
            await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


async def client(port, n):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        replies = []
        for i in range(3):
            writer.write(b"client %d message %d\n" % (n, i))
            await writer.drain()
            replies.append((await reader.readline()).decode().strip())
        return replies
    finally:
        writer.close()
        await writer.wait_closed()


async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        for replies in await asyncio.gather(*(client(port, n) for n in range(5))):
            print(replies)
    await server.wait_closed()


_e2e.run(main)
