"""A blocking socket read on the loop thread: the peer answers only after 0.4 s."""
import socket
import threading
import time

import _e2e


def slow_peer(sock):
    time.sleep(0.4)
    sock.sendall(b"pong")
    sock.close()


async def ask(sock):
    sock.sendall(b"ping")
    return sock.recv(4)  # EXPECT: blocking-call min_duration=0.3


async def main():
    ours, theirs = socket.socketpair()
    peer = threading.Thread(target=slow_peer, args=(theirs,))
    peer.start()
    print("answer:", (await ask(ours)).decode())
    peer.join()
    ours.close()


_e2e.run(main)
