#!/usr/bin/env python3
"""What each part of the agent costs: the same workload plain, under `aioscope run` with every
part on, and with one part (or several) switched off through AIOSCOPE_DEV_OFF, side by side.

    python3 bench/bench_parts.py                                   # 3.12, spawn+gather, 7 rounds
    python3 bench/bench_parts.py --python 3.13 --workload lock_contention --rounds 11 \\
        --off steps --off factory --off deadlock --off beat --off steps,factory,deadlock,beat

Parts (src/agent/agent.h, ASC_OFF_*): steps (busy time and steps for ps, steps.c), factory (the
tasks' records: creation sites, swallowed-cancel, and with them steps), inplace (a Task subclass
instead of the C Task patched in place), deadlock (the periodic check),
stamp (the poll stamp of loops with long steps), beat (the heartbeat: blocking-call, and with it
the deadlock check and the stamp), watchdog (the watchdog thread; the beat stays). Runs alternate
in order from round to round; the table gives the median CPU time of the workload (timed inside
the process, the agent's threads included) as a ratio to the plain run's. The machine is
shared: differences under ~2 % need more --rounds.

--idle-thread adds the plain run with one idle thread started first: once a process has a second
thread, glibc takes its thread-safe paths (cancellation points around every blocking system
call, locking in malloc), which costs a percent or two whatever the thread does. The agent's
watchdog thread makes every `aioscope run` such a process: that part of the cost is the floor.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKLOADS = REPO / "bench" / "workloads"


def interpreter(spec):
    if os.sep in spec:
        return spec
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() or \
        os.path.expanduser("~/.pyenv")
    found = sorted(Path(root, "versions").glob(spec + ".*"))
    if not found:
        sys.exit("bench_parts: no pyenv interpreter for %s" % spec)
    return str(found[-1] / "bin" / "python3")


IDLE_THREAD = "plain + idle thread"


def run_once(python, workload, aioscope, off, size):
    cmd = [python, str(WORKLOADS / (workload + ".py"))] + (["--size", str(size)] if size else [])
    env = dict(os.environ)
    env.pop("AIOSCOPE_DEV_OFF", None)
    env.pop("BENCH_IDLE_THREAD", None)
    if off == IDLE_THREAD:
        env["BENCH_IDLE_THREAD"] = "1"
    elif off is not None:
        cmd = [aioscope, "run", "--quiet", "--"] + cmd
        if off:
            env["AIOSCOPE_DEV_OFF"] = off
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not lines:
        sys.exit("bench_parts: %s failed:\n%s" % (" ".join(cmd), out.stderr[-2000:]))
    return json.loads(lines[-1])["cpu_seconds"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--python", default="3.12", help="a version (3.12) or an interpreter path")
    ap.add_argument("--workload", default="spawn_gather",
                    help="a file of bench/workloads without .py (spawn_gather)")
    ap.add_argument("--size", type=int, help="the workload's size (its default if not given)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--off", action="append", default=[],
                    help="parts to switch off in one configuration, comma-separated; repeatable "
                         "(default: each of steps, factory, deadlock, beat alone)")
    ap.add_argument("--idle-thread", action="store_true",
                    help="also run the workload plain with one idle thread started first: the "
                         "part of the cost that is the agent's threads merely existing")
    ap.add_argument("--aioscope", default=os.environ.get("AIOSCOPE_BIN", str(REPO / "build" / "aioscope")))
    args = ap.parse_args()
    if not (WORKLOADS / (args.workload + ".py")).exists():
        sys.exit("bench_parts: no workload %s in %s" % (args.workload, WORKLOADS))
    if not os.access(args.aioscope, os.X_OK):
        sys.exit("bench_parts: %s is not built (tools/build.sh)" % args.aioscope)
    python = interpreter(args.python)
    configs = [None] + ([IDLE_THREAD] if args.idle_thread else []) + [""] + \
        (args.off or ["steps", "factory", "deadlock", "beat"])
    times = {c: [] for c in configs}
    for r in range(args.rounds):
        for c in (configs if r % 2 == 0 else configs[::-1]):
            times[c].append(run_once(python, args.workload, args.aioscope, c, args.size))
        print("  round %d/%d done" % (r + 1, args.rounds), file=sys.stderr, flush=True)
    plain = statistics.median(times[None])
    print("%s, %s, median of %d rounds, CPU time" % (python, args.workload, args.rounds))
    print("%-40s %9s %8s" % ("configuration", "seconds", "ratio"))
    for c in configs:
        name = "plain" if c is None else c if c == IDLE_THREAD else \
            "aioscope, all on" if c == "" else "aioscope, off: " + c
        med = statistics.median(times[c])
        print("%-40s %9.3f %7.3fx" % (name, med, med / plain))


if __name__ == "__main__":
    main()
