"""`aioscope run --trace FILE`: the timeline, in the Chrome trace-event JSON format.

What a user relies on (docs/trace.md):
  - the file is valid JSON with the documented structure: traceEvents of known phases, every
    track named, otherData with the event counts;
  - a track per task, whose step slices (named by the coroutine) never overlap;
  - creation arrows go from a step of the spawning task to the first step of the new one;
  - blocked periods agree with the blocking-call findings of the same run (count, duration,
    site), and every finding is an instant event;
  - asyncio.Lock waits and holds are spans on the task's lock track;
  - memory is bounded by --trace-limit and the end of the run is kept; SIGTERM still writes it;
  - without --trace nothing of this is installed.
"""
import json
import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import (AIOSCOPE_BIN, PROGRAMS, aioscope_argv, program_env, run_process,
                      same_file)

TRACE_PROGRAMS = Path(__file__).resolve().parent / "trace_programs"
PHASES = {"X", "i", "s", "f", "M"}
TASK_TID0 = 1000  # task tracks are even numbers from 1000; a task's lock track is the next odd one


def run_traced(run_aioscope, python, program, tmp_path, *options, loop="asyncio"):
    trace = tmp_path / "trace.json"
    result = run_aioscope(python, program, options=["--trace", str(trace), *options], loop=loop)
    assert trace.exists(), "no trace written\nstderr:\n" + result.stderr[-3000:]
    data = json.loads(trace.read_text())  # valid JSON or the test fails here
    return result, data


def check_structure(data):
    """The documented structure; returns the events."""
    assert set(data) >= {"traceEvents", "displayTimeUnit", "otherData"}
    other = data["otherData"]
    assert other["events_kept"] <= other["limit"]
    assert other["events_recorded"] == other["events_kept"] + other["events_dropped"]
    events = data["traceEvents"]
    pid = events[0]["pid"]
    named = set()
    used = set()
    for e in events:
        assert e["ph"] in PHASES, e
        assert e["pid"] == pid, e
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name"), e
            if e["name"] == "thread_name":
                assert isinstance(e["args"]["name"], str) and e["args"]["name"], e
                named.add(e["tid"])
            continue
        assert isinstance(e["tid"], int) and isinstance(e["name"], str), e
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
        used.add(e["tid"])
        if e["ph"] == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0, e
            assert e["cat"] in ("step", "loop", "blocked", "lock"), e
        if e["ph"] == "i":
            assert e["s"] in ("t", "p") and e["cat"] in ("task", "finding"), e
        if e["ph"] in ("s", "f"):
            assert e["cat"] == "spawn" and isinstance(e["id"], int), e
    # Every track with a slice or instant of a task or loop has a name.
    missing = {t for t in used if t != 0} - named
    assert not missing, "tracks without thread_name: %s" % sorted(missing)
    return events


def steps_by_task(events):
    by = defaultdict(list)
    for e in events:
        if e["ph"] == "X" and e["cat"] == "step":
            by[e["tid"]].append(e)
    return by


def test_trace_structure_tasks_and_steps(run_aioscope, python, tmp_path):
    program = TRACE_PROGRAMS / "spawn_tree.py"
    result, data = run_traced(run_aioscope, python, program, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done" in result.stdout
    events = check_structure(data)
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}

    steps = steps_by_task(events)
    # One track per task: the workers and helpers by their names, with their coroutine.
    for i in range(4):
        assert any(n == "worker-%d (worker)" % i for n in names.values()), names
        assert any(n == "helper-%d (helper)" % i for n in names.values()), names
    # Step slices are named by the task's coroutine and never overlap on one track.
    for tid, slices in steps.items():
        assert tid >= TASK_TID0 and tid % 2 == 0
        assert {s["name"] for s in slices} == {names[tid].split(" (")[1].rstrip(")")}, names[tid]
        slices.sort(key=lambda s: s["ts"])
        for a, b in zip(slices, slices[1:]):
            assert a["ts"] + a["dur"] <= b["ts"], "overlapping steps on %s: %s %s" % (names[tid], a, b)
    helper_tids = [t for t, n in names.items() if n.startswith("helper-")]
    for t in helper_tids:
        assert len(steps[t]) == 4  # three sleep(0) then the return

    # Creation and completion instants; one arrow per spawned task, from a step of its spawner
    # to its own first step.
    created = [e for e in events if e["ph"] == "i" and e["name"] == "task created"]
    done = [e for e in events if e["ph"] == "i" and e["name"] == "task done"]
    assert {e["tid"] for e in created} >= set(helper_tids)
    assert {e["tid"] for e in done} >= set(helper_tids)
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    for t in helper_tids:
        s, f = starts[t], ends[t]
        assert f["tid"] == t and f["bp"] == "e"
        assert f["ts"] == min(x["ts"] for x in steps[t])  # at the first step
        spawner = s["tid"]
        assert names[spawner].startswith("worker-"), names[spawner]
        assert any(x["ts"] <= s["ts"] <= x["ts"] + x["dur"] for x in steps[spawner]), \
            "arrow does not start inside a step of its spawner"
        assert s["ts"] <= f["ts"]

    # Loop iterations on the loop's track, which is named.
    iters = [e for e in events if e["ph"] == "X" and e["cat"] == "loop"]
    assert iters and all(names[e["tid"]].startswith("event loop") for e in iters)


def test_lock_wait_and_hold_spans(run_aioscope, python, tmp_path):
    result, data = run_traced(run_aioscope, python, TRACE_PROGRAMS / "spawn_tree.py", tmp_path)
    events = check_structure(data)
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    locks = [e for e in events if e["ph"] == "X" and e["cat"] == "lock"]
    holds = [e for e in locks if e["name"] == "lock held"]
    waits = [e for e in locks if e["name"] == "lock wait"]
    # Four holds; a wait for each acquire that found the lock taken (an uncontended acquire
    # takes it at once and has no wait): at least the three workers that queued up.
    assert len(holds) == 4 and 3 <= len(waits) <= 4, locks
    for e in locks:
        assert e["tid"] % 2 == 1 and names[e["tid"]].endswith(" locks"), names.get(e["tid"])
        assert names[e["tid"]].startswith("worker-")
    # Each hold lasts the 5 ms sleep; the holds of one lock never overlap.
    holds.sort(key=lambda e: e["ts"])
    assert all(h["dur"] >= 4000 for h in holds), holds
    for a, b in zip(holds, holds[1:]):
        assert a["ts"] + a["dur"] <= b["ts"] + 1, (a, b)
    # Somebody waited while another held it: a wait at least ~one hold long.
    assert max(w["dur"] for w in waits) >= 4000, waits
    # A task's wait ends where its hold starts.
    for w in waits:
        h = [h for h in holds if h["tid"] == w["tid"]]
        assert len(h) == 1 and abs(w["ts"] + w["dur"] - h[0]["ts"]) < 1.0, (w, h)
    # The task runs when it takes the lock and when it releases it: a hold starts and ends
    # inside (or at an edge of) one of the task's steps, on the track just below its locks.
    steps = defaultdict(list)
    for e in events:
        if e["ph"] == "X" and e["cat"] == "step":
            steps[e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
    for h in holds:
        for t in (h["ts"], h["ts"] + h["dur"]):
            assert any(a - 0.01 <= t <= b + 0.01 for a, b in steps[h["tid"] - 1]), (h, t)


@pytest.mark.parametrize("name", ["buggy_blocking_merged.py", "buggy_blocking_sleep.py"])
def test_blocked_periods_agree_with_findings(run_aioscope, python, tmp_path, name):
    program = PROGRAMS / name
    result, data = run_traced(run_aioscope, python, program, tmp_path)
    events = check_structure(data)
    blocked = [e for e in events if e["ph"] == "X" and e["cat"] == "blocked"]
    findings = result.of_kind("blocking-call")
    assert findings, result.stderr[-3000:]
    assert len(blocked) == sum(f["count"] for f in findings)
    for f in findings:
        mine = [b for b in blocked if b["args"]["site"]["line"] == f["site"]["line"]
                and same_file(b["args"]["site"]["file"], f["site"]["file"])]
        assert len(mine) == f["count"], (f, mine)
        # Durations agree (the slice is in µs, the report in s).
        assert abs(sum(b["dur"] for b in mine) / 1e6 - f["duration_s"]) < 0.002, (f, mine)
        for b in mine:
            assert b["args"]["stack"], b  # the blocking stack is in the args
            assert b["args"]["stack"][-1]["line"] == f["site"]["line"] or any(
                fr["line"] == f["site"]["line"] for fr in b["args"]["stack"])
    # Every finding of the report is an instant of its kind.
    instants = [e for e in events if e["ph"] == "i" and e["cat"] == "finding"]
    for f in result.findings:
        n = sum(1 for e in instants if e["name"] == f["kind"]
                and e["args"]["site"]["line"] == f["site"]["line"])
        assert n == f["count"], (f, n)


def test_limit_bounds_the_trace_and_keeps_the_end(run_aioscope, python, tmp_path):
    program = TRACE_PROGRAMS / "many_steps.py"
    result, data = run_traced(run_aioscope, python, program, tmp_path, "--trace-limit", "200")
    events = check_structure(data)
    other = data["otherData"]
    assert other["limit"] == 200 and other["events_kept"] == 200
    assert other["events_dropped"] > 2000  # 20 x 200 steps were recorded
    # The end of the run is there: the final blocked period and its finding.
    assert [e for e in events if e["ph"] == "X" and e["cat"] == "blocked"]
    assert [e for e in events if e["ph"] == "i" and e["cat"] == "finding"]
    # And what is kept is the latest: no kept step is older than any dropped one could be.
    full_result, full = run_traced(run_aioscope, python, program, tmp_path / "..")
    assert full["otherData"]["events_dropped"] == 0
    assert len(events) < len(full["traceEvents"])


def test_bad_trace_options(tmp_path):
    for opts, why in ((["--trace-limit", "10"], "--trace-limit"),
                      (["--trace-limit", "x"], "--trace-limit"),
                      (["--trace", str(tmp_path / "no" / "such" / "dir.json")], "cannot write the trace")):
        code, out, err = run_process(aioscope_argv(*opts, str(TRACE_PROGRAMS / "untouched.py")))
        assert code == 2 and why in err, err
        assert "run_once_hooked" not in out  # the program never started


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_still_writes_the_trace(python, tmp_path, sig):
    trace = tmp_path / "trace.json"
    proc = subprocess.Popen(aioscope_argv("--python", python.path, "--quiet", "--trace", str(trace),
                                          str(TRACE_PROGRAMS / "until_sigterm.py")),
                            env=program_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)  # to `aioscope run`, which passes it on to the program
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # The program still ends as it would have: killed by SIGTERM, or KeyboardInterrupt.
    assert proc.returncode == 128 + sig
    events = check_structure(json.loads(trace.read_text()))
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert "ticker (ticker)" in names
    assert not list(tmp_path.glob("*.tmp"))


# What the trace's hooks change: BaseEventLoop._run_once (a function) in the class, never the
# loop's instance __dict__ (materialising it slows every attribute of the loop); asyncio.Lock's
# __setattr__ and a contended lock's _waiters deque.
RUN_ONCE_PROBE = """
import asyncio, sys
sys.path.insert(0, %r)
import _e2e

async def hold(lock):
    async with lock:
        await asyncio.sleep(0)

async def main():
    import select
    print("epoll_poll", type(vars(select.epoll)["poll"]).__name__)
    print("class_run_once", type(vars(asyncio.BaseEventLoop)["_run_once"]).__name__)
    print("instance_run_once", "_run_once" in vars(asyncio.get_running_loop()))
    print("lock_setattr", "__setattr__" in vars(asyncio.Lock))
    lock = asyncio.Lock()
    await asyncio.gather(hold(lock), hold(lock))
    print("waiters", type(lock._waiters).__name__)

_e2e.run(main)
""" % str(PROGRAMS)


def test_nothing_installed_without_trace(run_aioscope, python, tmp_path):
    r = run_aioscope(python, TRACE_PROGRAMS / "untouched.py")
    assert r.returncode == 0, r.stderr
    assert "run_once_hooked False" in r.stdout
    assert "lock_acquire_is_function True" in r.stdout
    assert not list(tmp_path.glob("*trace*"))
    probe = tmp_path / "run_once_probe.py"
    probe.write_text(RUN_ONCE_PROBE)
    r = run_aioscope(python, probe)
    assert r.returncode == 0, r.stderr
    assert "class_run_once function" in r.stdout and "instance_run_once False" in r.stdout
    assert "epoll_poll method_descriptor" in r.stdout
    assert "lock_setattr False" in r.stdout and "waiters deque" in r.stdout
    r, data = run_traced(run_aioscope, python, TRACE_PROGRAMS / "untouched.py", tmp_path)
    # Lock's methods stay the Python functions they are: the lock spans come from its
    # attribute stores (a C __setattr__ in the class) and its _waiters deque.
    assert "lock_acquire_is_function True" in r.stdout
    assert "run_once_hooked False" in r.stdout  # the loop's own __dict__ is left alone
    assert "lock ok" in r.stdout
    r, data = run_traced(run_aioscope, python, probe, tmp_path)
    assert r.returncode == 0, r.stderr
    # An epoll loop (the default here) is timed at its polls: _run_once stays the function, and
    # poll is a method descriptor like the original (ours, calling its C function), so that the
    # iterations test_loop_iterations_per_selector sees on epoll loops come from there.
    assert "epoll_poll method_descriptor" in r.stdout
    assert "class_run_once function" in r.stdout and "instance_run_once False" in r.stdout
    assert "lock_setattr True" in r.stdout and "waiters LockWaiters" in r.stdout


# Loop iterations on both kinds of selector loop: epoll (timed at its polls) and poll (timed by
# _run_once), each run twice with the program busy in between: that gap belongs to no
# iteration, and every step lies inside an iteration of its loop.
ITERATIONS = """
import asyncio, selectors, sys, time
sys.path.insert(0, %r)
import _e2e

async def work():
    for _ in range(20):
        await asyncio.sleep(0)

async def main():
    await work()

for sel in (selectors.EpollSelector, selectors.PollSelector):
    loop = asyncio.SelectorEventLoop(sel())
    loop.run_until_complete(work())
    time.sleep(0.2)  # not the loop's: no iteration may cover it
    loop.run_until_complete(work())
    loop.close()
_e2e.run(main)
print("iterations done")
""" % str(PROGRAMS)


def test_loop_iterations_per_selector(run_aioscope, python, tmp_path):
    program = tmp_path / "iterations.py"
    program.write_text(ITERATIONS)
    result, data = run_traced(run_aioscope, python, program, tmp_path)
    assert result.returncode == 0 and "iterations done" in result.stdout, result.stderr[-3000:]
    events = check_structure(data)
    iters = defaultdict(list)
    for e in events:
        if e["ph"] == "X" and e["cat"] == "loop":
            iters[e["tid"]].append(e)
    assert len(iters) >= 2, iters.keys()  # the epoll loop and the poll loop at least
    for tid, slices in iters.items():
        slices.sort(key=lambda e: e["ts"])
        assert len(slices) >= 20, (tid, len(slices))
        assert max(e["dur"] for e in slices) < 150000, (tid, max(slices, key=lambda e: e["dur"]))
        for a, b in zip(slices, slices[1:]):
            assert a["ts"] + a["dur"] <= b["ts"] + 0.01, (a, b)
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for v in iters.values() for e in v)
    for st in (e for e in events if e["ph"] == "X" and e["cat"] == "step"):
        assert any(a - 0.01 <= st["ts"] and st["ts"] + st["dur"] <= b + 0.01 for a, b in spans), st


# Lock spans the previous version got wrong or never saw: a waiter whose future was given the
# lock but whose task was cancelled before it ran (it never holds the lock), a subclass of
# asyncio.Lock defined by the program, and acquire + release within one step.
LOCK_EDGES = """
import asyncio, sys
sys.path.insert(0, %r)
import _e2e

class MyLock(asyncio.Lock):
    pass

async def holder(lock, tasks):
    await lock.acquire()
    await asyncio.sleep(0.01)
    lock.release()        # gives the lock to the waiter's future...
    tasks["waiter"].cancel()  # ...whose task is cancelled before it runs

async def waiter(lock):
    async with lock:
        print("waiter got the lock")  # never

async def sub_user(lock):
    async with lock:
        await asyncio.sleep(0.002)

async def main():
    lock, tasks = asyncio.Lock(), {}
    h = asyncio.create_task(holder(lock, tasks), name="holder")
    await asyncio.sleep(0)
    tasks["waiter"] = asyncio.create_task(waiter(lock), name="waiter")
    await asyncio.gather(h, tasks["waiter"], return_exceptions=True)
    async with lock:  # free: taken and released within this step
        pass
    sub = MyLock()
    await asyncio.gather(*(asyncio.create_task(sub_user(sub), name="sub-%%d" %% i) for i in range(2)))
    print("edges done")

_e2e.run(main)
""" % str(PROGRAMS)


def test_lock_edge_cases(run_aioscope, python, tmp_path):
    program = tmp_path / "lock_edges.py"
    program.write_text(LOCK_EDGES)
    result, data = run_traced(run_aioscope, python, program, tmp_path)
    assert result.returncode == 0 and "edges done" in result.stdout, result.stderr[-3000:]
    assert "waiter got the lock" not in result.stdout
    events = check_structure(data)
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    locks = defaultdict(list)
    for e in events:
        if e["ph"] == "X" and e["cat"] == "lock":
            locks[names[e["tid"]].split(" (")[0]].append(e)
    # The cancelled waiter waited, did not get the lock, and never held it.
    assert [(e["name"], e["args"].get("acquired", True)) for e in locks["waiter"]] == \
        [("lock wait", False)], locks["waiter"]
    # The holder held it ~10 ms; the main task took it once without waiting.
    assert [e["name"] for e in locks["holder"]] == ["lock held"], locks["holder"]
    assert locks["holder"][0]["dur"] >= 9000
    main = [t for t in locks if t not in ("holder", "waiter") and not t.startswith("sub-")]
    assert len(main) == 1 and [e["name"] for e in locks[main[0]]] == ["lock held"], dict(locks)
    # The subclass: two holds, one wait that ends where its task's hold starts.
    sub = locks["sub-0"] + locks["sub-1"]
    assert sorted(e["name"] for e in sub) == ["lock held", "lock held", "lock wait"], sub
    wait = [e for e in sub if e["name"] == "lock wait"][0]
    hold = [e for e in sub if e["name"] == "lock held" and e["tid"] == wait["tid"]][0]
    assert "acquired" not in wait["args"] and abs(wait["ts"] + wait["dur"] - hold["ts"]) < 0.01


def test_uvloop_trace_is_valid(run_aioscope, python, tmp_path, loop):
    """Under uvloop there are no per-step slices (docs/trace.md), but the file is complete."""
    result, data = run_traced(run_aioscope, python, PROGRAMS / "buggy_blocking_sleep.py",
                              tmp_path, loop=loop)
    events = check_structure(data)
    assert [e for e in events if e["ph"] == "X" and e["cat"] == "blocked"]


# 3.12+'s eager tasks run their first step inside create_task(), within the creating task's
# step: a lock taken or waited for there is the eager task's, never the creating task's. (That
# first step runs inside Task.__init__, before the agent knows the task: its hold of `free` is
# drawn for nobody; the child's later wait for `lock` and hold of it are its own.)
EAGER = """
import asyncio, sys
sys.path.insert(0, %r)
import _e2e

async def child(lock, free):
    async with free:       # taken in the eager first step
        await asyncio.sleep(0.002)
    async with lock:       # waited for, while main holds it
        pass

async def main():
    lock, free = asyncio.Lock(), asyncio.Lock()
    asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
    async with lock:
        t = asyncio.create_task(child(lock, free))
        await asyncio.sleep(0.01)
    await t
    print("eager done")

_e2e.run(main)
""" % str(PROGRAMS)


def test_lock_spans_of_eager_tasks(run_aioscope, python, tmp_path):
    if python.version[:2] < (3, 12):
        pytest.skip("eager tasks are 3.12+")
    program = tmp_path / "eager.py"
    program.write_text(EAGER)
    result, data = run_traced(run_aioscope, python, program, tmp_path)
    assert result.returncode == 0 and "eager done" in result.stdout, result.stderr[-3000:]
    events = check_structure(data)
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    locks = [(names[e["tid"]], e["name"]) for e in events if e["ph"] == "X" and e["cat"] == "lock"]
    # main's own hold of `lock`, ~10 ms; the child's wait for it, then its hold (its track is
    # named "None (child)" on 3.13.0, whose create_task renames a factory's task to str(None)).
    assert [n for t, n in locks if t == "Task-1 (main) locks"] == ["lock held"], locks
    assert sorted(n for t, n in locks if t.endswith(" (child) locks")) == ["lock held", "lock wait"], locks
    assert len(locks) == 3, locks
