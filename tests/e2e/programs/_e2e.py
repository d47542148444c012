"""Shared by the e2e programs: the event loop the harness asked for.

The harness sets E2E_LOOP to "asyncio" or "uvloop"; the programs stay runnable by hand with
neither (plain asyncio then)."""
import asyncio
import os


def use_uvloop():
    return os.environ.get("E2E_LOOP") == "uvloop"


def run(main):
    """asyncio.run(main()) on the chosen loop (uvloop.run goes through asyncio.Runner on 3.11+)."""
    if use_uvloop():
        import uvloop
        return uvloop.run(main())
    return asyncio.run(main())


def new_loop():
    """A new event loop of the chosen kind, for programs that drive loops by hand."""
    if use_uvloop():
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()
