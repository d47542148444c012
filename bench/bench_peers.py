#!/usr/bin/env python3
"""aioscope against the tools a user would pick instead, on the same asyncio workloads.

    python3 bench/bench_peers.py                 # everything: 3.10-3.13, 5 rounds
    python3 bench/bench_peers.py --python 3.12 --rounds 3 --workloads spawn_gather,tcp_echo
    python3 bench/bench_peers.py --markdown bench/peers.md --json out.json

Workloads: task spawn + gather, queue ping-pong, lock contention, a TCP echo over loopback
(bench/workloads/*.py, the same files bench_run.py runs, at the sizes of WORKLOAD_SIZES), and an
aiohttp server under load from a bounded client on 127.0.0.1 (bench/peers/aiohttp_server.py).
Each runs through bench/peers/_harness.py, which switches the peer tool on inside the program
and times only the workload's own work.

Modes, each on the same workload, interpreter and loop:
  plain           python3 workload.py
  aioscope        aioscope run --quiet ...                       (every detector on)
  aioscope-trace  aioscope run --quiet --trace FILE ...          (plus the timeline)
  asyncio-debug   PYTHONASYNCIODEBUG=1 python3 workload.py
  aiomonitor      aiomonitor's agent (start_monitor with its task factory)
  aiodebug        aiodebug's slow-callback logging
  blockbuster     blockbuster's blocking-call detector
A mode whose tool is not installed for an interpreter (or a --trace the CLI does not have yet)
is shown as "-". Install the peers with `python3 bench/bench_peers.py --install` (pip, from
bench/requirements.txt, for each interpreter).

What is compared is the CPU time of the workload (all threads of the process: aioscope's
watchdog thread counts), which a busy shared machine disturbs much less than wall time;
--clock wall compares wall time instead. Runs alternate: every round runs every mode once per workload, in an order rotated each round,
so slow drifts of a shared machine spread over all modes. The table shows the median time of
plain and, for every other mode, the median of the rounds' paired ratios: each round's run of the
mode over the same round's plain run, which ran seconds apart (the statistic bench_run.py
judges; the machine drifts by several per cent from minute to minute, which a pair shares).

Then `aioscope dump PID --attach` and `aioscope ps PID --attach` against `py-spy dump --pid PID`
on one target process running without any agent (bench/peers/dump_target.py: an asyncio program
with 200 tasks): the median wall time of one dump, whether it succeeded, and whether it shows
the suspended tasks (py-spy shows thread stacks only).

--check fails (exit 1) when `aioscope run` costs more than 1.05x or `--trace` more than 1.15x on
any workload (the budgets of docs/trace.md).
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS = HERE / "peers"
WORKLOAD_DIR = HERE / "workloads"
HARNESS = PEERS / "_harness.py"
AIOSCOPE = Path(os.environ.get("AIOSCOPE_BIN", REPO / "build" / "aioscope"))
PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"

WORKLOADS = ["spawn_gather", "queue_pingpong", "lock_contention", "tcp_echo", "aiohttp_server"]
# Default size of each workload (--size overrides), and where its file is.
WORKLOAD_SIZES = {"spawn_gather": 20000, "queue_pingpong": 20000, "lock_contention": 20000,
                  "tcp_echo": 10000, "aiohttp_server": 2000}
WORKLOAD_FILES = {w: WORKLOAD_DIR / (w + ".py") for w in WORKLOADS if w != "aiohttp_server"}
WORKLOAD_FILES["aiohttp_server"] = PEERS / "aiohttp_server.py"
MODES = ["plain", "aioscope", "aioscope-trace", "asyncio-debug", "aiomonitor", "aiodebug",
         "blockbuster"]
# What a mode needs importable in the interpreter (besides the workload's own needs).
MODE_NEEDS = {"aiomonitor": "aiomonitor", "aiodebug": "aiodebug", "blockbuster": "blockbuster"}
WORKLOAD_NEEDS = {"aiohttp_server": "aiohttp"}
# One run never takes this long; a hang is killed and counted as a failure.
RUN_TIMEOUT_S = 300


def find_pythons(wanted):
    """{'3.12': path} for pyenv's newest 3.10-3.13 (or the ones asked for)."""
    found = {}
    for minor in range(10, 14):
        best = None
        for d in PYENV.glob("3.%d.*" % minor):
            m = re.fullmatch(r"3\.%d\.(\d+)" % minor, d.name)
            if m and (d / "bin" / "python3").exists():
                if best is None or int(m.group(1)) > best[0]:
                    best = (int(m.group(1)), d / "bin" / "python3")
        if best:
            found["3.%d" % minor] = str(best[1])
    if wanted:
        out = {}
        for w in wanted:
            if w in found:
                out[w] = found[w]
            elif os.path.exists(w):
                v = subprocess.run([w, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                   capture_output=True, text=True).stdout.strip()
                out[v] = w
            else:
                sys.exit("bench_peers: no Python %s" % w)
        return out
    return found


def importable(py, module, cache={}):
    key = (py, module)
    if key not in cache:
        cache[key] = subprocess.run([py, "-c", "import " + module], capture_output=True).returncode == 0
    return cache[key]


def aioscope_has(option, cache={}):
    if option not in cache:
        if not AIOSCOPE.exists():
            cache[option] = False
        else:
            r = subprocess.run([str(AIOSCOPE)] + option.split()[:-1] + ["--help"],
                               capture_output=True, text=True)
            cache[option] = r.returncode == 0 and option.split()[-1] in r.stdout
    return cache[option]


def mode_available(mode, py):
    if mode in MODE_NEEDS:
        return importable(py, MODE_NEEDS[mode])
    if mode == "aioscope":
        return AIOSCOPE.exists()
    if mode == "aioscope-trace":
        return aioscope_has("run --trace")
    return True


def command(mode, py, workload, loop, size, tmp):
    args = [str(HARNESS), str(WORKLOAD_FILES[workload]), "--loop", loop,
            "--size", str(size or WORKLOAD_SIZES[workload])]
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    env["BENCH_PEER"] = "none"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if mode == "plain":
        return [py] + args, env
    if mode == "aioscope":
        return [str(AIOSCOPE), "run", "--quiet", "--python", py] + args, env
    if mode == "aioscope-trace":
        trace = os.path.join(tmp, "trace.json")
        return [str(AIOSCOPE), "run", "--quiet", "--trace", trace, "--python", py] + args, env
    if mode == "asyncio-debug":
        env["PYTHONASYNCIODEBUG"] = "1"
        return [py] + args, env
    env["BENCH_PEER"] = mode
    return [py] + args, env


def run_once(mode, py, workload, loop, size, tmp, clock="cpu"):
    argv, env = command(mode, py, workload, loop, size, tmp)
    try:
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                           cwd=tmp)
    except subprocess.TimeoutExpired:
        return None, "timeout"
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("BENCH "):
            return json.loads(line[6:])["elapsed" if clock == "wall" else "cpu"], None
    return None, "exit %d: %s" % (p.returncode, (p.stderr.strip().splitlines() or ["?"])[-1][:200])


def bench_overhead(pythons, workloads, modes, loop, rounds, sizes, verbose, clock):
    """{(pyver, workload, mode): {round: seconds}} plus errors."""
    times, errors = {}, {}
    with tempfile.TemporaryDirectory(prefix="aioscope-bench-") as tmp:
        for r in range(rounds):
            for ver, py in pythons.items():
                for w in workloads:
                    if w in WORKLOAD_NEEDS and not importable(py, WORKLOAD_NEEDS[w]):
                        continue
                    if loop == "uvloop" and not importable(py, "uvloop"):
                        continue
                    avail = [m for m in modes if mode_available(m, py)]
                    # Rotate the order every round: no mode always runs right after another.
                    k = r % len(avail)
                    for m in avail[k:] + avail[:k]:
                        t, err = run_once(m, py, w, loop, sizes.get(w), tmp, clock)
                        key = (ver, w, m)
                        if t is None:
                            errors[key] = err
                        else:
                            times.setdefault(key, {})[r] = t
                        if verbose:
                            print("  round %d %s %-16s %-15s %s" % (r + 1, ver, w, m,
                                  "%.3f s" % t if t is not None else err), file=sys.stderr)
    return times, errors


def fmt_ratio(x):
    return "%.2fx" % x


def paired_ratio(times, ver, w, m):
    """The median over rounds of mode m's time over plain's in the same round, or None."""
    plain, t = times.get((ver, w, "plain"), {}), times.get((ver, w, m), {})
    pairs = [t[r] / plain[r] for r in t if r in plain and plain[r] > 0]
    return statistics.median(pairs) if pairs else None


def overhead_table(pythons, workloads, modes, times, errors):
    """Rows of strings: python, workload, plain median, then a ratio per mode."""
    header = ["python", "workload", "plain"] + [m for m in modes if m != "plain"]
    rows = []
    for ver in pythons:
        for w in workloads:
            plain = times.get((ver, w, "plain"))
            if not plain:
                continue
            base = statistics.median(plain.values())
            row = [ver, w, "%.0f ms" % (base * 1000)]
            for m in modes:
                if m == "plain":
                    continue
                ratio = paired_ratio(times, ver, w, m)
                if ratio is not None:
                    row.append(fmt_ratio(ratio))
                elif (ver, w, m) in errors:
                    row.append("fail")
                else:
                    row.append("-")
            rows.append(row)
    return header, rows


def print_text_table(header, rows, out=sys.stdout):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line, file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in rows:
        print("  ".join(str(x).rjust(w) if i >= 2 else str(x).ljust(w)
                        for i, (x, w) in enumerate(zip(row, widths))), file=out)


def markdown_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for row in rows:
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


# ---- dump: aioscope dump vs py-spy dump -------------------------------------------------------

def bench_dump(py, rounds, verbose):
    """[(tool, median seconds or None, ok count, runs, note, shows the tasks)] against one target
    process."""
    tools = []
    # --attach: the target runs without the agent (as it would for py-spy), so aioscope reads
    # its memory from outside.
    if aioscope_has("dump --attach"):
        tools.append(("aioscope dump --attach",
                      lambda pid: [str(AIOSCOPE), "dump", str(pid), "--attach"]))
    if aioscope_has("ps --attach"):
        tools.append(("aioscope ps --attach", lambda pid: [str(AIOSCOPE), "ps", str(pid), "--attach"]))
    pyspy = shutil.which("py-spy") or str(Path(py).parent / "py-spy")
    if os.path.exists(pyspy):
        tools.append(("py-spy dump", lambda pid: [pyspy, "dump", "--pid", str(pid)]))
    if not tools:
        return []
    target = subprocess.Popen([py, str(PEERS / "dump_target.py")], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    results = []
    try:
        assert target.stdout.readline().strip() == "ready"
        samples = {name: [] for name, _ in tools}
        oks = {name: 0 for name, _ in tools}
        notes = {name: "" for name, _ in tools}
        shows_tasks = {name: False for name, _ in tools}
        for r in range(rounds):
            k = r % len(tools)
            for name, argv in tools[k:] + tools[:k]:
                t0 = time.perf_counter()
                p = subprocess.run(argv(target.pid), capture_output=True, text=True, timeout=120)
                dt = time.perf_counter() - t0
                # Success: the dump names the target's code; "tasks" when it also shows the
                # suspended tasks (py-spy shows thread stacks only, where no worker runs).
                ok = p.returncode == 0 and "dump_target" in p.stdout
                if ok:
                    oks[name] += 1
                    samples[name].append(dt)
                    shows_tasks[name] = shows_tasks[name] or "worker-17" in p.stdout
                else:
                    notes[name] = (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1][:80]
                if verbose:
                    print("  dump round %d %-22s %.3f s %s" % (r + 1, name, dt, "ok" if ok else "FAIL"),
                          file=sys.stderr)
        for name, _ in tools:
            med = statistics.median(samples[name]) if samples[name] else None
            results.append((name, med, oks[name], rounds, notes[name], shows_tasks[name]))
    finally:
        os.killpg(target.pid, signal.SIGKILL)
        target.wait()
    return results


def install(pythons):
    req = HERE / "requirements.txt"
    for ver, py in pythons.items():
        print("bench_peers: installing %s for Python %s" % (req.name, ver), file=sys.stderr)
        subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "-r", str(req)], check=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", action="append", default=[],
                    help="3.X or a path; repeatable (default: pyenv 3.10-3.13)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument("--size", action="append", default=[], metavar="WORKLOAD=N",
                    help="override a workload's size")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="what is compared: CPU time of the process (all threads; default, steadier "
                         "on a shared machine) or wall time")
    ap.add_argument("--no-dump", action="store_true", help="skip the dump comparison")
    ap.add_argument("--markdown", metavar="FILE", help="also write the markdown tables to FILE")
    ap.add_argument("--json", metavar="FILE", help="also write every sample as JSON to FILE")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if aioscope > 1.05x or aioscope-trace > 1.15x anywhere")
    ap.add_argument("--install", action="store_true", help="pip-install bench/requirements.txt first")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every run on stderr")
    args = ap.parse_args()

    pythons = find_pythons(args.python)
    if not pythons:
        sys.exit("bench_peers: no interpreter found")
    if args.install:
        install(pythons)
    workloads = [w for w in args.workloads.split(",") if w]
    modes = [m for m in args.modes.split(",") if m]
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit("bench_peers: unknown workload %s (%s)" % (w, ", ".join(WORKLOADS)))
    for m in modes:
        if m not in MODES:
            sys.exit("bench_peers: unknown mode %s (%s)" % (m, ", ".join(MODES)))
    if "plain" not in modes:
        modes.insert(0, "plain")
    sizes = {}
    for s in args.size:
        w, _, n = s.partition("=")
        sizes[w] = int(n)

    print("aioscope %s; %d alternating rounds; loop %s; %s time; %d CPUs; load %.2f" % (
        AIOSCOPE, args.rounds, args.loop, args.clock, os.cpu_count() or 0, os.getloadavg()[0]))
    times, errors = bench_overhead(pythons, workloads, modes, args.loop, args.rounds, sizes,
                                   args.verbose, args.clock)
    header, rows = overhead_table(pythons, workloads, modes, times, errors)
    print()
    print("median %s time of plain; other columns: median of the rounds' ratios to plain" % args.clock)
    print_text_table(header, rows)
    for key, err in sorted(errors.items()):
        print("  failed: python %s %s %s: %s" % (key + (err,)))
    md = ["### Overhead (%s time; %d alternating rounds; median of each round's ratio to plain)"
          % (args.clock, args.rounds), "",
          markdown_table(header, rows)]

    dump = []
    if not args.no_dump:
        py = pythons.get("3.12") or next(iter(pythons.values()))
        dump = bench_dump(py, max(args.rounds, 3), args.verbose)
        if dump:
            dh = ["tool", "median per dump", "succeeded", "shows the 200 tasks"]
            drows = [[n, "%.0f ms" % (m * 1000) if m is not None else "-", "%d/%d" % (ok, runs)
                      + (" (%s)" % note if note and ok < runs else ""), "yes" if tasks else "no"]
                     for n, m, ok, runs, note, tasks in dump]
            print()
            print("dumping one asyncio process (200 tasks), Python %s" % py)
            print_text_table(dh, drows)
            md += ["", "### Dumping a running process (median wall time)", "", markdown_table(dh, drows)]
    print()
    print("\n".join(md))
    if args.markdown:
        Path(args.markdown).write_text("\n".join(md) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "times": [{"python": k[0], "workload": k[1], "mode": k[2],
                       "samples": [v[r] for r in sorted(v)], "rounds": sorted(v)}
                      for k, v in sorted(times.items())],
            "errors": [{"python": k[0], "workload": k[1], "mode": k[2], "error": v}
                       for k, v in sorted(errors.items())],
            "dump": [{"tool": n, "median_s": m, "ok": ok, "runs": runs, "shows_tasks": t}
                     for n, m, ok, runs, _, t in dump],
        }, indent=1))
    if args.check:
        bad = []
        for ver in pythons:
            for w in workloads:
                for m, budget in (("aioscope", 1.05), ("aioscope-trace", 1.15)):
                    ratio = paired_ratio(times, ver, w, m)
                    if ratio is not None and ratio > budget:
                        bad.append("%s %s %s %.2fx > %.2fx" % (ver, w, m, ratio, budget))
        if bad:
            print("over budget:\n  " + "\n  ".join(bad))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
