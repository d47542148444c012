"""Queue ping-pong: two tasks pass a token back and forth through two asyncio.Queues N times."""
import asyncio

from _common import main


async def player(inbox, outbox, rounds):
    for _ in range(rounds):
        token = await inbox.get()
        await outbox.put(token + 1)


async def queue_pingpong(n):
    ping, pong = asyncio.Queue(), asyncio.Queue()
    other = asyncio.create_task(player(ping, pong, n))
    token = 0
    for _ in range(n):
        await ping.put(token)
        token = await pong.get()
    await other
    assert token == n


if __name__ == "__main__":
    main("queue ping-pong", queue_pingpong, 50_000)
