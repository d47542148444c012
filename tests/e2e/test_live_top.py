"""`aioscope top PID` driven in tmux: the screen is read with capture-pane, keys sent with
send-keys. The program under it is started with the ready handshake of test_live_agent.py; the
screen itself can only be polled (bounded by a deadline)."""
import os
import shutil
import subprocess
import time
import uuid

import pytest

from conftest import AIOSCOPE_BIN
from test_live_agent import LiveProgram

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
DEADLINE_S = 30


class Tmux:
    def __init__(self, command):
        self.name = "aioscope-top-" + uuid.uuid4().hex[:8]
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "220", "-y", "50", command],
                       check=True)

    def screen(self):
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True,
                              text=True).stdout

    def wait_for(self, predicate, what):
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.1)
        raise AssertionError("top never showed %s; screen:\n%s" % (what, self.screen()))

    def keys(self, *keys):
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def close(self):
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def task_rows(screen):
    lines = screen.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("NAME "))
    return [line.split()[0] for line in lines[start + 1:] if line.strip() and not line.startswith(" b busy")]


def test_top_sorts_and_quits(python, tmp_path):
    prog = LiveProgram(python.path, "live_tree.py")
    status = tmp_path / "status"
    tmux = Tmux("%s top %d --interval 0.2; echo EXIT=$? > %s; sleep 60" % (AIOSCOPE_BIN, prog.pid, status))
    try:
        screen = tmux.wait_for(lambda s: "sorted by busy" in s and "sleeper" in s, "the task list")
        assert "aioscope top - pid %d" % prog.pid in screen
        assert "loop on thread" in screen and "idle (polling)" in screen
        # busy ran 50 steps with real work in each: first by busy time and by steps.
        assert task_rows(screen)[0] == "busy", screen
        tmux.keys("s")
        screen = tmux.wait_for(lambda s: "sorted by steps" in s, "the steps order")
        assert task_rows(screen)[0] == "busy", screen
        tmux.keys("n")
        screen = tmux.wait_for(lambda s: "sorted by name" in s, "the name order")
        rows = task_rows(screen)
        assert rows == sorted(rows), rows
        tmux.keys("q")
        deadline = time.monotonic() + DEADLINE_S
        # The shell creates the file before it writes to it: wait for the line, not the file.
        while not (status.exists() and status.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status.read_text().strip() == "EXIT=0"
    finally:
        tmux.close()
        prog.close()


def test_top_shows_blocking_stack(python, tmp_path):
    prog = LiveProgram(python.path, "live_blocked.py", "sleep")
    tmux = Tmux("%s top %d --interval 0.2; sleep 60" % (AIOSCOPE_BIN, prog.pid))
    try:
        screen = tmux.wait_for(lambda s: "BLOCKED" in s and "hog (" in s, "the blocked loop")
        assert "blocking stack (innermost first):" in screen
        assert "blocker" in screen and "running" in screen
    finally:
        tmux.close()
        prog.kill()


def test_top_needs_a_terminal(python):
    prog = LiveProgram(python.path, "live_tree.py")
    try:
        r = subprocess.run([str(AIOSCOPE_BIN), "top", str(prog.pid)], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=DEADLINE_S)
        assert r.returncode == 2 and "needs a terminal" in r.stderr
    finally:
        prog.close()


def test_top_bad_arguments():
    for args in (["top"], ["top", "abc"], ["top", "1", "--sort", "cpu"], ["top", "1", "--interval", "0"]):
        r = subprocess.run([str(AIOSCOPE_BIN), *args], capture_output=True, text=True)
        assert r.returncode == 2, args
    r = subprocess.run([str(AIOSCOPE_BIN), "top", str(2 ** 22 + 4321)], capture_output=True, text=True)
    assert r.returncode == 3 and "no process" in r.stderr
