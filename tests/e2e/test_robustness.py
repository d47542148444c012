"""aioscope under pressure: each program of robustness_programs/ is a scenario that stresses the
agent (fork, threads with their own loops, signal handlers, os._exit, KeyboardInterrupt, deep
recursion, a million tasks, raising task factories and exception handlers, replaced hooks). On
every interpreter, through `aioscope run`:
  - the program's stdout, stderr and exit status are what they are without aioscope;
  - the report is still written and sane (the contract's fields, the right interpreter, the
    program's exit status) and holds exactly the findings the program's EXPECT marks name.
Two scenarios need a signal from outside (SIGINT, SIGTERM while the program runs) and have
their own tests below.
"""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (
    KINDS, SEVERITIES, Program, Result, aioscope_argv, assert_findings, program_env, run_process,
)

HERE = Path(__file__).resolve().parent
SCENARIOS = [Program(p) for p in sorted((HERE / "robustness_programs").glob("*.py"))]
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+|pid=\d+")

# The million tasks take a while on a small machine, more so under aioscope and on 3.10.
SLOW_TIMEOUT_S = 600

# The scenarios block their loop for 0.6 s where they mean to; a threshold of 0.25 s keeps a
# loaded CI machine (tests run in parallel) from turning a descheduled moment into a finding.
# The million tasks are about tasks, not blocking: on a loaded machine a loop iteration over a
# thousand ready callbacks can exceed any small threshold.
OPTIONS = {"many_tasks": ["--block-threshold", "5"]}
DEFAULT_OPTIONS = ["--block-threshold", "0.25"]


def exit_status(code):
    """A status as `aioscope run` reports it: 128+N for a program killed by signal N (subprocess
    gives -N for the plain run)."""
    return 128 - code if code < 0 else code


def assert_same_outcome(plain, traced):
    """The program's own output and status, unchanged by aioscope (object addresses aside); the
    text report, if any, comes after the program's stderr."""
    assert traced.stdout == plain.stdout, (
        "stdout changed under aioscope\n--- plain:\n%s\n--- aioscope:\n%s\n--- stderr:\n%s"
        % (plain.stdout[-2000:], traced.stdout[-2000:], traced.stderr[-3000:]))
    assert traced.returncode == exit_status(plain.returncode), (
        "exit status %s without aioscope, %s with it\nstderr:\n%s"
        % (exit_status(plain.returncode), traced.returncode, traced.stderr[-3000:]))
    assert _ADDRESS.sub("0x?", traced.stderr).startswith(_ADDRESS.sub("0x?", plain.stderr)), (
        "the program's stderr changed under aioscope\n--- plain:\n%s\n--- aioscope:\n%s"
        % (plain.stderr[-3000:], traced.stderr[-3000:]))


def assert_sane_report(report, python, returncode):
    assert report is not None, "no JSON report was written"
    assert report.get("python") == python.version_str, report.get("python")
    assert report.get("exit_code") == returncode
    for f in report["findings"]:
        assert f.get("kind") in KINDS, f
        assert f.get("severity") in SEVERITIES, f
        site = f.get("site") or {}
        assert os.path.isabs(site.get("file", "")) and site.get("line", 0) > 0, f
        assert isinstance(f.get("count"), int) and f["count"] >= 1, f


def timeout_for(program):
    return SLOW_TIMEOUT_S if program.name == "many_tasks" else 120


@pytest.mark.parametrize("program", SCENARIOS, ids=lambda p: p.name)
def test_scenario_is_unchanged_and_reported(program, python, run_aioscope, tmp_path):
    program.skip_unless_runs_on(python)
    plain = Result(*run_process([python.path, str(program.path)], env=program_env(), cwd=tmp_path,
                                timeout=timeout_for(program)))
    traced = run_aioscope(python, program.path, cwd=tmp_path, timeout=timeout_for(program),
                          options=OPTIONS.get(program.name, DEFAULT_OPTIONS))
    assert_same_outcome(plain, traced)
    assert_sane_report(traced.report, python, traced.returncode)
    assert_findings(traced, program)


# ---- signals from outside ----------------------------------------------------------------------

def start_and_wait_ready(argv, env, cwd):
    """Start argv in its own session and wait for the program's "ready" line; returns the
    process and the stdout read so far."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, text=True, start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    if first.strip() != "ready":
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail("the program did not get ready: %r\n%s\n%s" % (first, out, err))
    return proc, first


def finish(proc, first, timeout=60):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail("did not end after the signal:\n%s\n%s" % (out, err))
    return proc.returncode, first + out, err


def test_sigint_from_outside(python, tmp_path):
    """A SIGINT sent while the loop waits: asyncio.run turns it into KeyboardInterrupt, the task
    cleans up, and the process ends as on Ctrl-C; under aioscope the CLI forwards the signal and
    still writes the report."""
    program = HERE / "robustness_programs" / "keyboard_interrupt.py"
    results = []
    for traced in (False, True):
        report = tmp_path / "report.json"
        argv = [python.path, str(program), "wait"]
        if traced:
            argv = aioscope_argv("--python", python.path, "--json", report, program, "wait")
        proc, first = start_and_wait_ready(argv, program_env(), tmp_path)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGINT)
        results.append(finish(proc, first))
    (pcode, pout, perr), (tcode, tout, terr) = results
    assert tout == pout
    assert "helper cleaned up" in tout
    assert tcode == exit_status(pcode), terr
    assert "KeyboardInterrupt" in perr and "KeyboardInterrupt" in terr
    assert_sane_report(json.loads((tmp_path / "report.json").read_text()), python, tcode)


SIGTERM_PROGRAM = '''
import asyncio, signal

async def main():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    print("stopped gracefully")

asyncio.run(main())
'''


def test_sigterm_from_outside_reaches_the_loop_handler(python, tmp_path):
    """kill PID of `aioscope run`: the program's own SIGTERM handler runs, it ends with its own
    status (0), and the report is written."""
    program = tmp_path / "graceful.py"
    program.write_text(SIGTERM_PROGRAM)
    report = tmp_path / "report.json"
    proc, first = start_and_wait_ready(
        aioscope_argv("--python", python.path, "--json", report, program), program_env(), tmp_path)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    code, out, err = finish(proc, first)
    assert out == "ready\nstopped gracefully\n", err
    assert code == 0, err
    assert_sane_report(json.loads(report.read_text()), python, 0)
