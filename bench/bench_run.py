#!/usr/bin/env python3
"""The overhead of `aioscope run` on asyncio workloads, against the same workload without it,
with asyncio's own debug mode (PYTHONASYNCIODEBUG=1) beside it for scale; and the agent's memory
per live task.

    python3 bench/bench_run.py [--pythons 3.11,3.12,3.13] [--quick] [--rounds N] [--loop uvloop]
    python3 bench/bench_run.py --run-opts=--trace=/tmp/t.json --no-memory   # what --trace costs

Each workload (bench/workloads/*.py) times itself inside the program (interpreter start-up and
loop creation are not measured) and runs --reps times in one process, reporting its best run, in
CPU time of the whole process (the default: the agent's threads count, a busy machine barely
does) and in wall-clock time; the other clock's ratio is printed beside the judged one.
For every interpreter the driver runs each workload plain and under `aioscope run` (every finding
enabled, as by default) in alternating order, --rounds times. The judged ratio is the median of
the rounds' paired ratios (each round's aioscope run over the plain run right beside it): the
machine drifts by several per cent from minute to minute (a plain run's time moved 13 % between
two runs of this command a quarter of an hour apart), which a pair shares and a median of all
plain runs against a median of all aioscope runs does not; that ratio of medians is printed
beside it ("medians"), with the spread of the pairs. Debug mode
runs in the first round only (it is 10-20x slower), with one repetition, and is compared with the
plain runs' first repetitions. Memory: bench/workloads/live_tasks.py keeps 100 000 tasks suspended
at once and reports the growth of resident memory per task; the agent's share is the difference.

The budget (the issue's): at most 1.05x per workload on 3.11-3.13, at most 128 bytes per live task.
--run-opts passes more options to `aioscope run` (one string, split like a shell would), for
example --run-opts=--trace=/tmp/t.json measures the timeline recorder (budget: 1.15x, issue #6);
--workloads picks some of the workloads, --no-memory skips the memory measurement.
Prints a table as it goes and a markdown table at the end; --save FILE writes every raw figure
as JSON. A full run needs about 7 minutes of CPU (it took 25 minutes of wall time on 2 cores that
other work kept at a load average of 15); --quick (sizes / 10, 3 rounds) took 1.6 minutes there:
good for a look, too coarse for the 1.05 verdict.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKLOADS = HERE / "workloads"

# (script, size for a full run); --quick divides the sizes by QUICK_DIVISOR.
TIMED = [
    ("spawn_gather.py", 100_000),
    ("queue_pingpong.py", 50_000),
    ("lock_contention.py", 50_000),
    ("lock_condition.py", 40_000),  # the deadlock detector's worst honest case
    ("tcp_echo.py", 20_000),
]
QUICK_DIVISOR = 10
LIVE_TASKS = 100_000
RATIO_BUDGET = 1.05
TRACE_RATIO_BUDGET = 1.15  # `aioscope run --trace` (issue #6)
BYTES_PER_TASK_BUDGET = 128


def find_python(spec):
    """A path, or a version such as 3.12 (the newest pyenv 3.12.x)."""
    if os.sep in spec:
        return spec
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = sorted((d for d in root.glob(spec + ".*") if d.name.count(".") == 2
                    and d.name.split(".")[2].isdigit()),
                   key=lambda d: int(d.name.split(".")[2]))
    if not found:
        sys.exit("bench: Python %s not found under %s" % (spec, root))
    return str(found[-1] / "bin" / "python3")


def run_json(argv, env):
    """Run one workload process; return its JSON line (the last line of stdout)."""
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        sys.exit("bench: %s failed with status %d:\n%s" % (" ".join(argv), proc.returncode,
                                                          proc.stderr[-3000:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Runner:
    def __init__(self, aioscope, loop, run_opts=()):
        self.aioscope = aioscope
        self.run_opts = list(run_opts)
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE")}
        self.env["BENCH_LOOP"] = loop

    def run(self, mode, python, script, *args):
        argv = [python, str(WORKLOADS / script), *map(str, args)]
        env = self.env
        if mode == "aioscope":
            argv = [self.aioscope, "run", "--quiet", *self.run_opts, "--python", python, *argv[1:]]
        elif mode == "debug":
            env = dict(env, PYTHONASYNCIODEBUG="1")
        return run_json(argv, env)


def bench_timed(runner, python, args, log):
    """{workload: {"plain": [...], "aioscope": [...], "debug": [...], "plain_first": [...],
    "plain_alt": [...], "aioscope_alt": [...]}}: times on the chosen clock, and (_alt) on the
    other one, which costs nothing more to collect and tells whether load on the machine
    disturbed the wall-clock figures."""
    results = {}
    for round_no in range(args.rounds):
        # Alternate the order so that a drift of the machine weighs on both sides alike.
        order = ["plain", "aioscope"] if round_no % 2 == 0 else ["aioscope", "plain"]
        for script, size in args.timed:
            size = size // QUICK_DIVISOR if args.quick else size
            r = results.setdefault(script, {"plain": [], "aioscope": [], "debug": [],
                                            "plain_first": [], "plain_alt": [],
                                            "aioscope_alt": [], "name": None})
            for mode in order:
                out = runner.run(mode, python, script, "--reps", args.reps, "--size", size)
                r["name"] = out["workload"]
                r[mode].append(out[args.clock_key])
                r[mode + "_alt"].append(out[args.alt_clock_key])
                if mode == "plain":
                    r["plain_first"].append(out[args.clock_key.replace("seconds", "runs")][0])
            if round_no == 0 and not args.no_debug:
                out = runner.run("debug", python, script, "--reps", 1, "--size", size)
                r["debug"].append(out[args.clock_key])
            log("  round %d/%d %-18s plain %.3fs  aioscope %.3fs%s" % (
                round_no + 1, args.rounds, r["name"], r["plain"][-1], r["aioscope"][-1],
                "  debug %.3fs" % r["debug"][-1] if round_no == 0 and r["debug"] else ""))
    return results


def bench_memory(runner, python, args):
    n = LIVE_TASKS // QUICK_DIVISOR if args.quick else LIVE_TASKS
    plain, agent, plain_size, agent_size = [], [], None, None
    for _ in range(1 if args.quick else 3):
        p = runner.run("plain", python, "live_tasks.py", n)
        a = runner.run("aioscope", python, "live_tasks.py", n)
        plain.append(p["bytes_per_task"])
        agent.append(a["bytes_per_task"])
        plain_size, agent_size = p["task_sizeof"], a["task_sizeof"]
    return {"tasks": n, "plain_bytes": statistics.median(plain),
            "aioscope_bytes": statistics.median(agent),
            "agent_bytes": statistics.median(agent) - statistics.median(plain),
            "plain_sizeof": plain_size, "aioscope_sizeof": agent_size}


def summarize(version, results, timed):
    rows = []
    for script, _ in timed:
        r = results[script]
        plain = statistics.median(r["plain"])
        agent = statistics.median(r["aioscope"])
        pairs = [a / p for p, a in zip(r["plain"], r["aioscope"])]
        row = {"python": version, "workload": r["name"], "plain_s": plain, "aioscope_s": agent,
               "ratio": statistics.median(pairs), "medians_ratio": agent / plain,
               "pairs_min": min(pairs), "pairs_max": max(pairs),
               "debug_s": None, "debug_ratio": None,
               "alt_ratio": statistics.median(r["aioscope_alt"]) / statistics.median(r["plain_alt"])}
        if r["debug"]:
            row["debug_s"] = statistics.median(r["debug"])
            row["debug_ratio"] = row["debug_s"] / statistics.median(r["plain_first"])
        rows.append(row)
    return rows


def verdict(ok):
    return "ok" if ok else "OVER"


def print_table(rows, memories, clock, alt_clock, budget=RATIO_BUDGET, file=sys.stdout):
    print("%s time (the %s-time ratio beside it for comparison)" % (clock, alt_clock), file=file)
    print("ratio: the median of the rounds' paired ratios; medians: median aioscope / median plain;"
          " pairs: the lowest and highest paired ratio", file=file)
    head = "%-8s %-18s %9s %11s %7s %8s %13s %9s %9s %10s  %s" % (
        "python", "workload", "plain s", "aioscope s", "ratio", "medians", "pairs",
        alt_clock + " ratio", "debug s", "debug x", "<=%.2f" % budget)
    print(head, file=file)
    print("-" * len(head), file=file)
    for r in rows:
        print("%-8s %-18s %9.3f %11.3f %7.3f %8.3f %13s %9.3f %9s %10s  %s" % (
            r["python"], r["workload"], r["plain_s"], r["aioscope_s"], r["ratio"],
            r["medians_ratio"], "%.2f-%.2f" % (r["pairs_min"], r["pairs_max"]), r["alt_ratio"],
            "%.3f" % r["debug_s"] if r["debug_s"] else "-",
            "%.1f" % r["debug_ratio"] if r["debug_ratio"] else "-",
            verdict(r["ratio"] <= budget)), file=file)
    print(file=file)
    for version, m in memories.items():
        print("%-8s memory per live task (%d tasks): %.0f B plain, %.0f B with aioscope -> agent "
              "%.0f B (<= %d: %s); sys.getsizeof(task) %d -> %d" % (
                  version, m["tasks"], m["plain_bytes"], m["aioscope_bytes"], m["agent_bytes"],
                  BYTES_PER_TASK_BUDGET, verdict(m["agent_bytes"] <= BYTES_PER_TASK_BUDGET),
                  m["plain_sizeof"], m["aioscope_sizeof"]), file=file)


def print_markdown(rows, memories, clock):
    print("%s time, median of the runs, each the best of its repetitions; ratio: median of the "
          "paired ratios:" % clock)
    print()
    print("| Python | workload | plain (s) | `aioscope run` (s) | ratio | asyncio debug mode |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print("| %s | %s | %.3f | %.3f | %.3fx | %s |" % (
            r["python"], r["workload"], r["plain_s"], r["aioscope_s"], r["ratio"],
            "%.1fx" % r["debug_ratio"] if r["debug_ratio"] else "-"))
    if not memories:
        return
    print()
    print("| Python | memory per live task, plain | with aioscope | agent's share |")
    print("|---|---:|---:|---:|")
    for version, m in memories.items():
        print("| %s | %.0f B | %.0f B | %.0f B |" % (version, m["plain_bytes"],
                                                    m["aioscope_bytes"], m["agent_bytes"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pythons", default="3.11,3.12,3.13",
                        help="comma-separated versions (3.12) or interpreter paths")
    parser.add_argument("--aioscope", default=os.environ.get("AIOSCOPE_BIN",
                                                             str(REPO / "build" / "aioscope")))
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    parser.add_argument("--rounds", type=int, help="plain/aioscope runs per workload (5; quick 3)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions inside each process")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--no-debug", action="store_true", help="skip asyncio debug mode")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="compare the process's CPU time (default: all its threads, the "
                             "agent's watchdog included; other load on the machine disturbs it "
                             "far less) or wall-clock time")
    parser.add_argument("--run-opts", default="", metavar="OPTIONS",
                        help="more options for `aioscope run`, one string split as a shell would "
                             "(e.g. --run-opts=--trace=/tmp/t.json: the trace's cost)")
    parser.add_argument("--budget", type=float,
                        help="the ratio judged ok (default 1.05; 1.15 with --trace in --run-opts)")
    parser.add_argument("--workloads", help="comma-separated scripts or names (spawn_gather,...): "
                        "only these (default: all)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory per live task")
    parser.add_argument("--save", help="write every raw figure to this JSON file")
    args = parser.parse_args()
    args.run_opts = shlex.split(args.run_opts)
    if args.budget is None:
        tracing = any(o == "--trace" or o.startswith("--trace=") for o in args.run_opts)
        args.budget = TRACE_RATIO_BUDGET if tracing else RATIO_BUDGET
    args.timed = TIMED
    if args.workloads:
        wanted = {w.strip().removesuffix(".py") for w in args.workloads.split(",") if w.strip()}
        args.timed = [(s, n) for s, n in TIMED if s[:-3] in wanted]
        unknown = wanted - {s[:-3] for s, _ in TIMED}
        if unknown:
            sys.exit("bench: unknown workload(s) %s (%s)" % (", ".join(sorted(unknown)),
                                                             ", ".join(s[:-3] for s, _ in TIMED)))
    args.clock_key = "seconds" if args.clock == "wall" else "cpu_seconds"
    args.alt_clock_key = "cpu_seconds" if args.clock == "wall" else "seconds"
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    if not os.access(args.aioscope, os.X_OK):
        sys.exit("bench: %s not found: build it (meson setup build && ninja -C build) or pass "
                 "--aioscope" % args.aioscope)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    runner = Runner(args.aioscope, args.loop, args.run_opts)
    started = time.monotonic()
    rows, memories, raw = [], {}, {}
    for spec in args.pythons.split(","):
        python = find_python(spec.strip())
        version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        log("python %s (%s), loop %s, %s time; aioscope run --quiet %s" % (
            version, python, args.loop, args.clock, shlex.join(args.run_opts)))
        results = bench_timed(runner, python, args, log)
        if not args.no_memory:
            memories[version] = bench_memory(runner, python, args)
        rows += summarize(version, results, args.timed)
        raw[version] = {"timed": results, "memory": memories.get(version)}
    log("done in %.0f s" % (time.monotonic() - started))
    print()
    if args.run_opts:
        print("aioscope run --quiet %s" % shlex.join(args.run_opts))
    print_table(rows, memories, args.clock, "cpu" if args.clock == "wall" else "wall", args.budget)
    print()
    print_markdown(rows, memories, args.clock)
    if args.save:
        Path(args.save).write_text(json.dumps({"args": vars(args), "rows": rows, "raw": raw},
                                              indent=2))


if __name__ == "__main__":
    main()
