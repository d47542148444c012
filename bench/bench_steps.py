#!/usr/bin/env python3
"""The cost of the live view's per-step measurement (src/agent/steps.c), isolated.

    python3 bench/bench_steps.py [--python PY] [--rounds 7]

Runs three workloads (spawn + gather of 30 000 tasks doing one sleep(0), a queue ping-pong of
30 000 round trips, 10 tasks contending for one Lock 3 000 times each) with the agent installed,
once as installed (every task step timed through the loop's call_soon) and once with the per-loop
call_soon removed at the start of main() (everything else of the agent unchanged), alternating,
and prints the ratio of the minimum CPU times. The budget of the whole agent is 1.05x; this part
should stay well inside it.
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AGENT = Path(os.environ.get("AIOSCOPE_HOME", REPO / "build" / "python"))

WORKLOAD = r'''
import asyncio, sys, time
sys.path.insert(0, sys.argv[1])
import aioscope
aioscope.install()

async def spawn():
    async def one():
        await asyncio.sleep(0)
    await asyncio.gather(*(asyncio.create_task(one()) for _ in range(30000)))

async def pingpong():
    a, b = asyncio.Queue(), asyncio.Queue()
    async def echo():
        for _ in range(30000):
            await b.put(await a.get())
    t = asyncio.create_task(echo())
    for i in range(30000):
        await a.put(i)
        await b.get()
    await t

async def lock():
    lk = asyncio.Lock()
    async def user():
        for _ in range(3000):
            async with lk:
                await asyncio.sleep(0)
    await asyncio.gather(*(asyncio.create_task(user()) for _ in range(10)))

async def main(which, measured):
    if not measured:
        asyncio.get_running_loop().__dict__.pop("call_soon", None)
    t0 = time.process_time()
    await {"spawn": spawn, "pingpong": pingpong, "lock": lock}[which]()
    print(time.process_time() - t0)

asyncio.run(main(sys.argv[2], sys.argv[3] == "1"))
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    print("%-10s %10s %10s %8s" % ("workload", "without", "with", "ratio"))
    for which in ("spawn", "pingpong", "lock"):
        times = {0: [], 1: []}
        for r in range(a.rounds):
            for measured in ((0, 1) if r % 2 == 0 else (1, 0)):
                out = subprocess.run([a.python, "-c", WORKLOAD, str(AGENT), which, str(measured)],
                                     capture_output=True, text=True, check=True).stdout
                times[measured].append(float(out.split()[-1]))
        t0, t1 = min(times[0]), min(times[1])
        print("%-10s %9.3fs %9.3fs %7.3fx" % (which, t0, t1, t1 / t0))


if __name__ == "__main__":
    main()
