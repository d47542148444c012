"""Shared by the workloads: run one workload several times in this process and print one JSON
line with the best time, so that interpreter start-up and first-run warm-up are not measured.

A workload is `async def workload(size)`; the driver (bench/bench_run.py) passes --reps and
--size, and reads the line {"workload": NAME, "seconds": BEST, "runs": [...], "cpu_seconds": BEST,
"cpu_runs": [...]} (wall-clock time, and the CPU time of the whole process over the same span:
the latter includes the agent's own threads and suffers less from other load on the machine)."""
import argparse
import asyncio
import json
import os
import sys
import time


def main(name, workload, default_size):
    if os.environ.get("BENCH_IDLE_THREAD"):
        # bench_parts.py --idle-thread: a second thread that only waits, as the agent's do.
        import threading
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--size", type=int, default=default_size)
    args = parser.parse_args()
    runs, cpu_runs = [], []
    for _ in range(args.reps):
        wall, cpu = run_once(workload, args.size)
        runs.append(wall)
        cpu_runs.append(cpu)
    print(json.dumps({"workload": name, "size": args.size, "seconds": min(runs), "runs": runs,
                      "cpu_seconds": min(cpu_runs), "cpu_runs": cpu_runs,
                      "python": "%d.%d.%d" % sys.version_info[:3]}))


def run_once(workload, size):
    """One fresh event loop per run (asyncio.run), timed inside the loop: the loop's creation
    and teardown are not the workload."""
    elapsed = []

    async def timed():
        start, start_cpu = time.perf_counter(), time.process_time()
        await workload(size)
        elapsed.append((time.perf_counter() - start, time.process_time() - start_cpu))

    if os.environ.get("BENCH_LOOP") == "uvloop":
        import uvloop
        uvloop.run(timed())
    else:
        asyncio.run(timed())
    return elapsed[0]
