"""Runs one benchmark workload for bench/bench_peers.py: loop choice, the peer tool in effect,
and timing.

    python3 bench/peers/_harness.py bench/workloads/tcp_echo.py [--loop asyncio|uvloop] [--size N]

The workload file is the same one bench/bench_run.py runs (bench/workloads/*.py; the aiohttp
server, which has no twin there, is bench/peers/aiohttp_server.py): a module with
`async def <its file name>(size)`, imported here (its own `__main__` block does not run). The
harness turns on the peer named by BENCH_PEER (set by bench/bench_peers.py) *inside* the
program, the way a user of that tool would, runs the workload once and prints one line
`BENCH {"elapsed": seconds, "cpu": seconds}` with the wall and CPU time (all threads of the
process) of the workload alone (interpreter start-up, imports and the tools' own start-up are
outside it: they are paid once per process, not per unit of work).

Peers (BENCH_PEER):
  none         nothing (also used for plain, `aioscope run` and asyncio debug mode, which are
               turned on from outside: the command line and PYTHONASYNCIODEBUG)
  aiomonitor   aiomonitor.start_monitor(loop, hook_task_factory=True): its agent with task
               creation tracking, telnet and web UI on free ports of 127.0.0.1
  aiodebug     aiodebug.log_slow_callbacks.enable(0.05): slow-callback logging
  blockbuster  blockbuster_ctx(): blocking calls in the loop thread raise
"""
import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import socket
import sys
import time


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _peer_outside_loop(peer):
    """Peers that hook process-wide things before the loop runs."""
    if peer == "aiodebug":
        from aiodebug import log_slow_callbacks
        log_slow_callbacks.enable(0.05)
        yield
    elif peer == "blockbuster":
        from blockbuster import blockbuster_ctx
        with blockbuster_ctx():
            yield
    else:
        yield


async def _run(workload, size, peer):
    loop = asyncio.get_running_loop()
    monitor = None
    if peer == "aiomonitor":
        import aiomonitor
        monitor = aiomonitor.start_monitor(loop, hook_task_factory=True, port=_free_port(),
                                           console_port=_free_port(), webui_port=_free_port())
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        await workload(size)
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        if monitor is not None:
            monitor.close()


def load_workload(path):
    """The coroutine function `<file name>` of a workload file, imported as a module of that name
    with its folder first on sys.path (for its own helpers, such as workloads/_common.py)."""
    path = os.path.abspath(path)
    name = os.path.splitext(os.path.basename(path))[0]
    sys.path.insert(0, os.path.dirname(path))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    workload = getattr(module, name, None)
    if not asyncio.iscoroutinefunction(workload):
        sys.exit("_harness: %s has no `async def %s(size)`" % (path, name))
    return workload


def main(workload=None, default_size=None):
    ap = argparse.ArgumentParser()
    if workload is None:
        ap.add_argument("workload", help="a workload file, e.g. bench/workloads/tcp_echo.py")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument("--size", type=int, default=default_size)
    args = ap.parse_args()
    if workload is None:
        workload = load_workload(args.workload)
    if args.size is None:
        ap.error("--size is required")
    peer = os.environ.get("BENCH_PEER", "none")
    with _peer_outside_loop(peer):
        if args.loop == "uvloop":
            import uvloop
            loop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        try:
            elapsed, cpu = loop.run_until_complete(_run(workload, args.size, peer))
        finally:
            loop.close()
    print("BENCH " + json.dumps({"elapsed": elapsed, "cpu": cpu}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
