"""TCP echo over loopback: 10 clients, each sending N/10 lines through asyncio streams to an echo
server on 127.0.0.1 and reading each reply before sending the next."""
import asyncio

from _common import main

CLIENTS = 10


async def echo(reader, writer):
    while True:
        line = await reader.readline()
        if not line:
            break
        writer.write(line)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def client(port, rounds):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(rounds):
        writer.write(b"message %d\n" % i)
        await writer.drain()
        assert await reader.readline() == b"message %d\n" % i
    writer.close()
    await writer.wait_closed()


async def tcp_echo(n):
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        await asyncio.gather(*(client(port, n // CLIENTS) for _ in range(CLIENTS)))


if __name__ == "__main__":
    main("tcp echo", tcp_echo, 20_000)
