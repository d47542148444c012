"""`deadlock` and `stuck-task`: found while the program runs, on every interpreter.

The programs live in deadlock_programs/ and mark with `# EXPECT: deadlock` the lines where the
tasks of a deadlock are suspended (every participant's site is one of them; the finding's own site
is the first participant's); `# HOLDS: x` marks where a task acquired lock x. Each deadlocked
program ends by itself through a timeout (which must not hide the deadlock); the ok_* programs
wait in every legitimate way and must get no report."""
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (RUN_TIMEOUT_S, Program, Result, aioscope_argv, assert_findings,
                      describe_findings, program_env, read_report, same_file)

HERE = Path(__file__).resolve().parent / "deadlock_programs"
CYCLES = [Program(p) for p in sorted(HERE.glob("dl_*cycle.py"))] + [Program(HERE / "dl_lock_order.py")]
ASLEEP = [Program(p) for p in sorted(HERE.glob("dl_asleep_*.py"))] + [Program(HERE / "dl_orphan_future.py")]
CLEAN = [Program(p) for p in sorted(HERE.glob("ok_*.py"))]


def needs_310(python):
    if python.version[:2] < (3, 10):
        pytest.skip("the deadlock detector is required on 3.10+")


def deadlocks(result):
    return result.of_kind("deadlock")


def check_deadlock(result, program):
    """One deadlock finding, at an EXPECT line, whose participants are each suspended at one."""
    found = deadlocks(result)
    context = "findings:\n%s\nstderr:\n%s" % (describe_findings(result.findings), result.stderr[-3000:])
    assert len(found) == 1, context
    f = found[0]
    expected = [e for e in program.expected if e.kind == "deadlock"][0].lines
    assert same_file(f["site"]["file"], program.path) and f["site"]["line"] in expected, context
    assert f["severity"] == "error"
    for p in f["tasks"]:
        if same_file(p["site"]["file"], program.path):
            assert p["site"]["line"] in expected, "participant %s at an unexpected line\n%s" % (p, context)
        assert p["waiting_on"], context
    # Printed at once on stderr (the program may never end), not only in the report at exit.
    assert "aioscope: deadlock: " in result.stderr
    return f


@pytest.mark.parametrize("program", CYCLES, ids=lambda p: p.name)
def test_cycle_is_reported_with_every_task(run_aioscope, python, loop, program):
    needs_310(python)
    program.skip_unless_runs_on(python, loop)
    result = run_aioscope(python, program.path, cwd=HERE, loop=loop)
    f = check_deadlock(result, program)
    assert "cycle" in f["message"]
    # Every task of the cycle is listed, each at its own line.
    lines = {p["site"]["line"] for p in f["tasks"]}
    assert len(f["tasks"]) == 2 and len(lines) == 2, f
    assert "guard: " in result.stdout  # the program went on and ended by its timeout


def test_lock_order_names_holders_and_acquiring_lines(run_aioscope, python):
    needs_310(python)
    program = Program(HERE / "dl_lock_order.py")
    result = run_aioscope(python, program.path, cwd=HERE)
    f = check_deadlock(result, program)
    by_name = {p["name"]: p for p in f["tasks"]}
    a_line, b_line = program.line_of("# HOLDS: a"), program.line_of("# HOLDS: b")
    waits = sorted(p["waiting_on"] for p in by_name.values())
    # worker_a waits for b, held by worker_b since the HOLDS: b line, and the other way round.
    assert any(re.search(r"Lock held by Task-\d+ \(acquired at dl_lock_order.py:%d\)" % b_line, w) for w in waits), waits
    assert any(re.search(r"Lock held by Task-\d+ \(acquired at dl_lock_order.py:%d\)" % a_line, w) for w in waits), waits
    # Each names the other as the holder.
    for name, p in by_name.items():
        other = [n for n in by_name if n != name][0]
        assert "held by %s " % other in p["waiting_on"], f
    # The creation site of the tasks (the gather in _dl.guard) is known.
    assert all(p.get("created_at") for p in f["tasks"]), f


@pytest.mark.parametrize("program", ASLEEP, ids=lambda p: p.name)
def test_everything_asleep_is_reported_despite_timeouts(run_aioscope, python, program):
    needs_310(python)
    program.skip_unless_runs_on(python)
    result = run_aioscope(python, program.path, cwd=HERE)
    f = check_deadlock(result, program)
    assert "nothing can wake" in f["message"]
    first = f["tasks"][0]["waiting_on"]
    expected = {"dl_asleep_event": "Event.wait()", "dl_asleep_queue": "Queue.get() on an empty queue",
                "dl_orphan_future": "a Future that nothing else references"}[program.name]
    assert expected in first, f
    assert not result.of_kind("stuck-task"), describe_findings(result.findings)


@pytest.mark.parametrize("program", CLEAN, ids=lambda p: p.name)
def test_no_false_report(run_aioscope, python, program):
    needs_310(python)
    program.skip_unless_runs_on(python)
    result = run_aioscope(python, program.path, cwd=HERE, options=["--deadlock-after", "0.5"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert not deadlocks(result), describe_findings(result.findings) + "\n" + result.stderr[-3000:]
    assert "aioscope: deadlock" not in result.stderr
    assert result.stdout.strip(), "the program did not get to its end"


def test_stuck_task_is_info_and_no_deadlock(run_aioscope, python):
    needs_310(python)
    program = Program(HERE / "dl_stuck_task.py")
    result = run_aioscope(python, program.path, cwd=HERE, options=["--stuck-after", "1"])
    assert_findings(result, program)
    f = result.of_kind("stuck-task")[0]
    assert f["severity"] == "info" and f["duration_s"] >= 1.0, f
    assert "Event.wait()" in f["message"], f


def test_long_waits_are_not_stuck_below_the_threshold(run_aioscope, python):
    needs_310(python)
    result = run_aioscope(python, HERE / "dl_stuck_task.py", cwd=HERE)  # default: 30 s
    assert not result.findings, describe_findings(result.findings)


def test_on_deadlock_exit_ends_the_program_within_the_latency(python, tmp_path):
    """--on-deadlock exit: the deadlock is printed on stderr within 1.5 s of forming (the time
    the line arrives, read as it comes), the program ends at once and aioscope exits with 4."""
    needs_310(python)
    program = Program(HERE / "dl_lock_order.py")
    json_path = tmp_path / "report.json"
    argv = aioscope_argv("--python", python.path, "--json", json_path, "--on-deadlock", "exit", program.path)
    proc = subprocess.Popen(argv, cwd=HERE, env=program_env(), text=True, start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        reported = None
        err_lines = []
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            err_lines.append(line)
            if reported is None and line.startswith("aioscope: deadlock: "):
                reported = time.monotonic()
        out = proc.stdout.read()
        code = proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = "".join(err_lines)
    assert code == 4, err[-3000:]
    assert "guard: " not in out  # ended before its own timeout
    assert "--on-deadlock exit" in err
    result = Result(code, out, err, read_report(json_path), json_path)
    check_deadlock(result, program)
    formed = float(re.search(r"formed (\d+\.\d+)", out).group(1))
    assert reported is not None, err[-3000:]
    assert reported - formed < 1.5, "reported %.2f s after the deadlock formed" % (reported - formed)


def test_deadlock_after_rejects_bad_values(run_aioscope, python):
    result = run_aioscope(python, HERE / "dl_lock_order.py", options=["--deadlock-after", "soon"], json=False)
    assert result.returncode == 2 and "--deadlock-after" in result.stderr
    result = run_aioscope(python, HERE / "dl_lock_order.py", options=["--on-deadlock", "panic"], json=False)
    assert result.returncode == 2 and "--on-deadlock" in result.stderr


def test_deadlock_broken_by_timeouts_is_found_once(run_aioscope, python):
    """Each round of the deadlock lasts 0.8 s, less than --deadlock-after (1 s), before a timeout
    breaks it and the workers retry into it again: the time adds up, and it is one finding."""
    needs_310(python)
    program = Program(HERE / "dl_retry.py")
    result = run_aioscope(python, program.path, cwd=HERE)
    f = check_deadlock(result, program)
    assert f["count"] == 1, describe_findings(result.findings)
    assert result.stderr.count("aioscope: deadlock: ") == 1, result.stderr[-3000:]
    assert result.stdout.count("timed out") == 6  # the program itself went on unchanged


def test_task_waiting_for_a_lock_it_holds(run_aioscope, python, loop):
    """asyncio.Lock is not reentrant: one task, waiting for itself, is a cycle of one."""
    needs_310(python)
    program = Program(HERE / "dl_self_lock.py")
    program.skip_unless_runs_on(python, loop)
    result = run_aioscope(python, program.path, cwd=HERE, loop=loop)
    f = check_deadlock(result, program)
    assert len(f["tasks"]) == 1, f
    p = f["tasks"][0]
    assert "held by %s (acquired at dl_self_lock.py:%d)" % (p["name"], program.line_of("# HOLDS: lock")) \
        in p["waiting_on"], f
