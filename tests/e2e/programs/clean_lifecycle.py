"""Tasks and coroutines handled with care: failures retrieved through gather(return_exceptions=True),
asyncio.wait and result(); a coroutine kept in a variable and awaited later; a background task
cancelled and awaited before main() returns; a subprocess waited for; a loop closed. No findings."""
import asyncio
import sys

import _e2e


async def job(n):
    await asyncio.sleep(0.01)
    if n % 2:
        raise ValueError("job %d failed" % n)
    return n


async def ticker(log):
    while True:
        await asyncio.sleep(0.01)
        log.append("tick")


async def main():
    results = await asyncio.gather(*(job(n) for n in range(4)), return_exceptions=True)
    print([type(r).__name__ for r in results])
    done, _ = await asyncio.wait([asyncio.ensure_future(job(n)) for n in range(2)])
    print(sorted(repr(t.exception()) for t in done))
    later = job(4)
    print("later:", await later)
    log = []
    background = asyncio.create_task(ticker(log))
    await asyncio.sleep(0.05)
    background.cancel()
    try:
        await background
    except asyncio.CancelledError:
        print("ticker stopped:", bool(log))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "print('child ok')",
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    print(out.decode().strip(), proc.returncode)


_e2e.run(main)

side = _e2e.new_loop()
print("side loop:", side.run_until_complete(job(2)))
side.close()
