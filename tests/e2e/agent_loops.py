"""Checks of the agent's loop instrumentation and blocking detector through aioscope.install().

Run: pytest tests/e2e/agent_loops.py  (AIOSCOPE_BUILD, default <repo>/build, holds python/aioscope).
Each check runs a small program on every installed interpreter 3.8-3.13 with the agent installed by
the program itself (no CLI), reads the JSON report it writes with install(json=...), and asserts
what a user would see: the finding's kind, its site line, its task, and that the program's own
output and exit status are unchanged. These are the cases the CLI-driven suite does not cover:
forked children, uvloop imported before install(), the heartbeat staying invisible, install()
called twice, SIGINT.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("AIOSCOPE_BUILD", REPO / "build"))
PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"


def _pythons():
    found = []
    for minor in range(8, 14):
        versions = sorted(PYENV.glob("3.%d.*" % minor))
        if versions and (versions[-1] / "bin" / "python3").exists():
            found.append(str(versions[-1] / "bin" / "python3"))
    return found


PYTHONS = _pythons()


def _has_uvloop(interp):
    return subprocess.run([interp, "-c", "import uvloop"], capture_output=True).returncode == 0


def run(interp, tmp_path, source, *, sig=None, timeout=60):
    """Run source with the agent installed at its top; returns (proc, report dict or None)."""
    report = tmp_path / "report.json"
    prog = tmp_path / "prog.py"
    header = "import aioscope\naioscope.install(json=%r)\n" % str(report)
    prog.write_text(header + textwrap.dedent(source))
    env = dict(os.environ, PYTHONPATH=str(BUILD / "python"))
    env.pop("AIOSCOPE_EVENTS", None)
    proc = subprocess.Popen([interp, str(prog)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    if sig is not None:
        # The program prints "ready" once it is where the signal should reach it.
        line = proc.stdout.readline()
        assert line.strip() == "ready", line
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    proc.stdout_text, proc.stderr_text = out, err
    data = json.loads(report.read_text()) if report.exists() else None
    return proc, data


def line_of(tmp_path, marker):
    """The line number (in the file as run, header included) of the line containing marker."""
    for n, text in enumerate((tmp_path / "prog.py").read_text().splitlines(), 1):
        if marker in text:
            return n
    raise AssertionError(marker)


def findings(data, kind):
    return [f for f in data["findings"] if f["kind"] == kind]


@pytest.fixture(params=PYTHONS, ids=lambda p: "py" + p.split("/versions/")[1][:4].rstrip("."))
def interp(request):
    return request.param


def test_block_in_forked_child_is_reported_by_the_child(interp, tmp_path):
    # A child forked outside any loop runs a loop of its own: its watchdog is a new thread that
    # reads the child's memory. (A child forked inside a running loop cannot go on using that loop
    # from 3.12 on: asyncio itself clears the running loop in the child.)
    proc, data = run(interp, tmp_path, """
        import asyncio, os, time, sys
        async def block(seconds):
            time.sleep(seconds)
            await asyncio.sleep(0)
        pid = os.fork()
        if pid == 0:
            asyncio.run(block(0.3))  # CHILD
            sys.exit(0)
        os.waitpid(pid, 0)
        async def parent():
            time.sleep(0.2)  # PARENT
        asyncio.run(parent())
    """)
    assert proc.returncode == 0, proc.stderr_text
    # Only the parent writes the JSON report, with its own block only.
    blocks = findings(data, "blocking-call")
    assert [f["site"]["line"] for f in blocks] == [line_of(tmp_path, "# PARENT")]
    # The child printed its own report (a forked child prints only when it has findings), whose
    # block is the sleep the child ran, read from the child's own memory.
    child_report = proc.stderr_text.split("aioscope: 1 finding")[0]
    assert "prog.py:%d in block" % line_of(tmp_path, "time.sleep(seconds)") in child_report
    assert "# PARENT" not in child_report


def test_uvloop_imported_before_install(interp, tmp_path):
    if not _has_uvloop(interp):
        pytest.skip("no uvloop for this interpreter")
    report = tmp_path / "report.json"
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""
        import uvloop, asyncio, time
        import aioscope
        aioscope.install(json=%r)
        async def main():
            time.sleep(0.25)  # BLOCK
        loop = uvloop.new_event_loop()
        loop.run_until_complete(main())
        loop.close()
    """ % str(report)))
    env = dict(os.environ, PYTHONPATH=str(BUILD / "python"))
    subprocess.run([interp, str(prog)], env=env, capture_output=True, check=True, timeout=60)
    data = json.loads(report.read_text())
    blocks = findings(data, "blocking-call")
    assert [f["site"]["line"] for f in blocks] == [line_of(tmp_path, "# BLOCK")]
    assert blocks[0]["task"]["name"] == "Task-1"


def test_heartbeat_is_invisible_and_stopped_loop_is_not_blocked(interp, tmp_path):
    proc, data = run(interp, tmp_path, """
        import asyncio, time
        async def probe():
            loop = asyncio.get_running_loop()
            tasks = asyncio.all_tasks()
            assert tasks == {asyncio.current_task()}, tasks
            return len(tasks)
        loop = asyncio.new_event_loop()
        print(loop.run_until_complete(probe()))
        time.sleep(0.3)  # the loop is not running: not a block
        print(loop.run_until_complete(probe()))
        loop.close()
    """)
    assert proc.returncode == 0, proc.stderr_text
    assert proc.stdout_text == "1\n1\n"
    assert findings(data, "blocking-call") == []


def test_install_twice_and_threshold_argument(interp, tmp_path):
    proc, data = run(interp, tmp_path, """
        import asyncio, time, aioscope
        aioscope.install(block_threshold=0.5)  # the second call only changes the threshold
        async def main():
            time.sleep(0.2)  # under 0.5 s: not reported
            await asyncio.sleep(0)
            time.sleep(0.7)  # LONG
        asyncio.run(main())
    """)
    assert proc.returncode == 0, proc.stderr_text
    blocks = findings(data, "blocking-call")
    assert [f["site"]["line"] for f in blocks] == [line_of(tmp_path, "# LONG")]
    assert 0.55 <= blocks[0]["duration_s"] <= 1.5


def test_sigint_still_reports(interp, tmp_path):
    proc, data = run(interp, tmp_path, """
        import asyncio, time
        async def main():
            time.sleep(0.2)  # BLOCK
            print("ready", flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
    """, sig=signal.SIGINT)
    assert proc.returncode != 0  # KeyboardInterrupt, as without the agent
    assert "KeyboardInterrupt" in proc.stderr_text
    blocks = findings(data, "blocking-call")
    assert [f["site"]["line"] for f in blocks] == [line_of(tmp_path, "# BLOCK")]


def test_exception_handler_chained(interp, tmp_path):
    proc, data = run(interp, tmp_path, """
        import asyncio, gc
        seen = []
        async def boom():
            raise ValueError("x")
        async def main():
            asyncio.get_running_loop().set_exception_handler(lambda l, c: seen.append(c["message"]))
            asyncio.ensure_future(boom())
            await asyncio.sleep(0.01)
            gc.collect()
            await asyncio.sleep(0)
            print(seen)
        asyncio.run(main())
    """)
    assert proc.returncode == 0, proc.stderr_text
    assert proc.stdout_text == "['Task exception was never retrieved']\n"
    assert len(findings(data, "lost-exception")) == 1
