"""TCP echo over loopback: an asyncio streams server on 127.0.0.1 and 20 clients doing SIZE
round trips of 64 bytes in all."""
import asyncio

import _harness

CLIENTS = 20
PAYLOAD = b"x" * 63 + b"\n"


async def handle(reader, writer):
    while True:
        line = await reader.readline()
        if not line:
            break
        writer.write(line)
        await writer.drain()
    writer.close()


async def client(port, n):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(n):
        writer.write(PAYLOAD)
        assert await reader.readline() == PAYLOAD
    writer.close()
    await writer.wait_closed()


async def workload(size):
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        await asyncio.gather(*(client(port, size // CLIENTS) for _ in range(CLIENTS)))


_harness.main(workload, 10000)
