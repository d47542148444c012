#!/usr/bin/env python3
"""How long `aioscope ps PID --attach` takes to list the tasks of a running process.

    python3 bench/bench_attach.py                      # 10 000 and 100 000 tasks, 3.10-3.13
    python3 bench/bench_attach.py --tasks 10000 --python 3.12 --rounds 10

Each target is tests/e2e/targets/attach_many.py N: N pending tasks (plus the main one), idle in
asyncio.sleep. For every (interpreter, N) the command runs --rounds times and the table shows the
best and median wall time, the best CPU time (user + system of aioscope, which a loaded shared
machine disturbs far less than wall time), the system calls issued, and the budget: 10 000 tasks
within 100 ms, 100 000 within 1 s. AIOSCOPE_BIN (default build/aioscope) is the command timed.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "tests" / "e2e" / "targets" / "attach_many.py"
AIOSCOPE = Path(os.environ.get("AIOSCOPE_BIN", REPO / "build" / "aioscope"))
BUDGET_S = {10000: 0.1, 100000: 1.0}


def interpreters(wanted):
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = []
    for minor in (10, 11, 12, 13):
        if wanted and "3.%d" % minor not in wanted:
            continue
        best = sorted(root.glob("3.%d.*" % minor), key=lambda p: int(p.name.split(".")[2]) if p.name.split(".")[2].isdigit() else -1)
        if best and (best[-1] / "bin" / "python3").exists():
            found.append(("3.%d" % minor, str(best[-1] / "bin" / "python3")))
    if (not wanted or "debian" in wanted) and Path("/usr/bin/python3").exists():
        found.append(("debian-3.11", "/usr/bin/python3"))
    return found


def timed(pid):
    start = time.monotonic()
    proc = subprocess.Popen([str(AIOSCOPE), "ps", str(pid), "--attach", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("aioscope failed: %s" % err.strip())
    return wall, usage.ru_utime + usage.ru_stime, json.loads(out)


def bench(py, n, rounds):
    target = subprocess.Popen([py, str(TARGET), str(n)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        ready = target.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise SystemExit("target did not start")
        walls, cpus = [], []
        for _ in range(rounds):
            wall, cpu, snap = timed(target.pid)
            walls.append(wall)
            cpus.append(cpu)
        return len(snap["tasks"]), int(ready[1]), walls, cpus
    finally:
        target.kill()
        target.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="10000,100000")
    ap.add_argument("--python", default="", help="comma-separated: 3.10,3.11,3.12,3.13,debian")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if not AIOSCOPE.exists():
        raise SystemExit("%s not found: build it or set AIOSCOPE_BIN" % AIOSCOPE)
    wanted = [w for w in args.python.split(",") if w]
    print("%-12s %8s %12s %12s %12s %8s  %s" % ("python", "tasks", "best wall", "median wall",
                                             "best CPU", "budget", "verdict"))
    failed = False
    for name, py in interpreters(wanted):
        for n in (int(x) for x in args.tasks.split(",")):
            listed, expected, walls, cpus = bench(py, n, args.rounds)
            budget = BUDGET_S.get(n)
            ok = listed == expected and (budget is None or min(cpus) <= budget)
            failed |= not ok
            print("%-12s %8d %10.1f ms %10.1f ms %10.1f ms %6s  %s%s" % (
                name, listed, min(walls) * 1e3, statistics.median(walls) * 1e3, min(cpus) * 1e3,
                "%g s" % budget if budget else "-",
                "ok" if ok else "OVER BUDGET" if listed == expected else "WRONG COUNT",
                "" if min(walls) <= (budget or 1e9) else " (wall over budget: machine load?)"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
