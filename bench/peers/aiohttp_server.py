"""An aiohttp server under load: an aiohttp.web app on 127.0.0.1 (one JSON handler that awaits
a little work) and a bounded aiohttp client in the same loop doing SIZE GETs, at most 20 at a
time over keep-alive connections. Loopback only; nothing leaves the machine."""
import asyncio

from aiohttp import ClientSession, TCPConnector, web

import _harness

CONCURRENCY = 20


async def hello(request):
    await asyncio.sleep(0)
    return web.json_response({"path": request.path, "ok": True})


async def aiohttp_server(size):
    app = web.Application()
    app.router.add_get("/item/{n}", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    sem = asyncio.Semaphore(CONCURRENCY)
    try:
        async with ClientSession(connector=TCPConnector(limit=CONCURRENCY)) as session:
            async def one(i):
                async with sem:
                    async with session.get("http://127.0.0.1:%d/item/%d" % (port, i)) as r:
                        assert r.status == 200
                        await r.json()
            await asyncio.gather(*(one(i) for i in range(size)))
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    _harness.main(aiohttp_server, 2000)
