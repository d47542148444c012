# LOOPS: asyncio
# No false report: a task reads a socket that a thread writes to later.
import asyncio
import socket
import threading
import time

import _dl


def write_later(sock):
    time.sleep(2.0)
    sock.sendall(b"hello\n")


async def main():
    a, b = socket.socketpair()
    threading.Thread(target=write_later, args=(b,)).start()
    reader, writer = await asyncio.open_connection(sock=a)
    print((await reader.readline()).decode().strip(), flush=True)
    writer.close()
    b.close()


_dl.run(main)
