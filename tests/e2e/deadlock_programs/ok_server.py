# LOOPS: asyncio
# No false report: a server waits for clients (its listening socket can deliver at any time).
import asyncio

import _dl


async def handle(reader, writer):
    writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        try:
            await asyncio.wait_for(server.serve_forever(), _dl.GUARD_S)
        except asyncio.TimeoutError:
            print("served", flush=True)


_dl.run(main)
