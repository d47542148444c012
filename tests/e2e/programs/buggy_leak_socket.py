"""A plain socket opened in a coroutine and dropped without close()."""
import gc
import socket

import _e2e


async def probe(port):
    sock = socket.create_connection(("127.0.0.1", port))  # EXPECT: resource-leak
    return sock.getsockname()[0]


async def main():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    print("probe from", await probe(listener.getsockname()[1]))
    gc.collect()
    listener.close()


_e2e.run(main)
