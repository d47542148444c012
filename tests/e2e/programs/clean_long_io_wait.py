"""Long waits that are not blocking: a read that waits 0.6 s for its peer, a long sleep, a future
resolved by a timer. The loop is idle, not blocked. No findings."""
import asyncio
import socket

import _e2e


async def main():
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    loop.call_later(0.6, theirs.send, b"late reply")
    print("received:", (await loop.sock_recv(ours, 100)).decode())
    ours.close()
    theirs.close()
    await asyncio.sleep(0.4)
    fut = loop.create_future()
    loop.call_later(0.3, fut.set_result, "timer fired")
    print(await fut)


_e2e.run(main)
