"""Timeouts that cancel on purpose: wait_for, asyncio.timeout / timeout_at (3.11+), shield, and
a cancellation caught and re-raised inside the timed-out code. No findings: these uncancel by
design, so they are no swallowed cancellation."""
import asyncio
import sys

import _e2e


async def slow(seconds, log):
    try:
        await asyncio.sleep(seconds)
        return "finished"
    except asyncio.CancelledError:
        log.append("slow cancelled")
        raise


async def main():
    log = []
    try:
        await asyncio.wait_for(slow(5, log), timeout=0.02)
    except asyncio.TimeoutError:
        log.append("wait_for timed out")
    log.append(await asyncio.wait_for(slow(0.01, log), timeout=5))
    if sys.version_info >= (3, 11):
        try:
            async with asyncio.timeout(0.02):
                await slow(5, log)
        except TimeoutError:
            log.append("timeout() timed out")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + 0.02):
                await slow(5, log)
        except TimeoutError:
            log.append("timeout_at() timed out")
        async with asyncio.timeout(5):
            log.append(await slow(0.01, log))
    inner = asyncio.ensure_future(slow(0.05, log))
    try:
        await asyncio.wait_for(asyncio.shield(inner), timeout=0.01)
    except asyncio.TimeoutError:
        log.append("shield timed out")
    log.append(await inner)
    print("\n".join(log))


_e2e.run(main)
