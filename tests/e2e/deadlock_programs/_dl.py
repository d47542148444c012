"""Shared by the deadlock programs: the event loop the harness asked for (E2E_LOOP), and a guard
that ends a deadlocked program by itself (a timeout, which must not hide the deadlock)."""
import asyncio
import os

GUARD_S = 3.0


def run(main):
    if os.environ.get("E2E_LOOP") == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
        try:
            return loop.run_until_complete(main())
        finally:
            loop.close()
    return asyncio.run(main())


async def guard(*aws, hard_exit=False):
    """Wait for aws for GUARD_S seconds at most, then cancel what is left. Tasks that await each
    other cannot be cancelled (asyncio would recurse from one to the other without end): with
    hard_exit the program ends there, with os._exit(0)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    done, pending = await asyncio.wait(tasks, timeout=GUARD_S)
    print("guard: %d of %d still pending" % (len(pending), len(tasks)), flush=True)
    if hard_exit:
        os._exit(0)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
