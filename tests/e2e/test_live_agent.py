"""`aioscope ps|pstree|dump PID` answered by the program's agent, on every interpreter.

Each test starts a program of live_programs/ under `aioscope run`, waits for its "ready" line
(after a JSON line with its own view of its tasks), asks aioscope about it and compares. Nothing
sleeps to synchronise. The socket, its directory and the refusal of other users are tested too.
"""
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import AIOSCOPE_BIN, INTERPRETERS

LIVE = Path(__file__).resolve().parent / "live_programs"
TIMEOUT_S = 60


class LiveProgram:
    """A program under `aioscope run`, ready when it said so; closed by closing its stdin."""

    def __init__(self, python, script, *args, run_opts=()):
        self.proc = subprocess.Popen(
            [str(AIOSCOPE_BIN), "run", *run_opts, "--python", python, str(LIVE / script), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        self.side = None
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("program ended before it was ready: %s" % self.proc.stderr.read())
            if line.startswith("{"):
                self.side = json.loads(line)
            if line.strip() == "ready":
                break
        self.pid = self.side["pid"] if self.side else self._python_pid()

    def _python_pid(self):
        # `aioscope run` forks the interpreter: its only child.
        kids = Path("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)).read_text().split()
        assert len(kids) == 1, kids
        return int(kids[0])

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def aioscope(*args, **kw):
    return subprocess.run([str(AIOSCOPE_BIN), *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT_S, **kw)


@pytest.fixture
def tree(python):
    prog = LiveProgram(python.path, "live_tree.py")
    yield prog
    prog.close()


def tree_name(line):
    """The task name on a line of a tree drawing."""
    return next(tok for tok in line.split() if tok not in ("│", "├──", "└──"))


def by_name(snap):
    return {t["name"]: t for t in snap["tasks"]}


def test_ps_json_from_agent(tree):
    r = aioscope("ps", tree.pid, "--json")
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    assert snap["source"] == "agent" and snap["pid"] == tree.pid
    assert snap["unavailable"] == []
    tasks = by_name(snap)
    ids = tree.side["tasks"]
    for name, tid in ids.items():
        assert tasks[name]["id"] == tid, name
    # What each task waits on.
    assert tasks["sleeper"]["awaiting"].startswith("sleep (")
    assert tasks["child-1"]["awaiting"] == "Event"
    assert tasks["parent"]["awaiting"] == "gather"
    assert tasks["busy"]["awaiting"].endswith("Queue.get")
    assert tasks["locked"]["awaiting"] == "Lock held by holder"
    assert tasks["reading"]["awaiting"] == "socket read"
    assert tasks["executor"]["awaiting"] == "executor job"
    assert tasks["waiting-for"]["awaiting"] == "wait"
    assert tasks["waited"]["awaited_by"] == [ids["waiting-for"]]
    if "group-owner" in ids:  # 3.11+
        assert tasks["group-owner"]["awaiting"] == "TaskGroup"
        assert tasks["group-child"]["awaited_by"] == [ids["group-owner"]]
    assert tasks["failing"]["state"] == "finished"
    assert tasks["failing"]["exception"] == "ValueError: boom"
    # Who awaits whom, and who spawned whom.
    assert tasks["child-1"]["awaited_by"] == [ids["parent"]]
    assert tasks["child-2"]["awaited_by"] == [ids["parent"]]
    assert tasks["spawned"]["spawned_by"] == ids["spawner"]
    assert tasks["child-1"]["spawned_by"] == ids["parent"]
    # The agent's counters: busy ran its steps (plus its first and the Queue wait).
    busy = tasks["busy"]
    assert busy["steps"] >= tree.side["busy_steps"], busy
    assert busy["busy_s"] > 0 and busy["age_s"] > 0
    assert tasks["sleeper"]["steps"] >= 1
    assert busy["busy_s"] > tasks["sleeper"]["busy_s"]
    # The coroutine stack ends at the program's own line.
    assert tasks["sleeper"]["coroutine_stack"][0]["function"].endswith("sleeper")
    assert tasks["sleeper"]["coroutine_stack"][0]["file"].endswith("live_tree.py")


def test_ps_table(tree):
    r = aioscope("ps", tree.pid)
    assert r.returncode == 0, r.stderr
    assert "(read from the agent)" in r.stdout
    header = r.stdout.splitlines()[1]
    for col in ("STATE", "WHERE", "AWAITING", "AGE s", "BUSY s", "STEPS", "SPAWNED BY"):
        assert col in header
    rows = {line.split()[2]: line for line in r.stdout.splitlines()[2:]}
    assert set(tree.side["tasks"]) <= set(rows)
    assert " waiting " in rows["sleeper"] and "live_tree.py:" in rows["sleeper"]
    assert " failed " in rows["failing"] and "ValueError: boom" in rows["failing"]
    assert rows["spawned"].split()[-2] == "spawner"  # SPAWNED BY, then AWAITED BY ("-")


def test_pstree_and_dump(tree):
    r = aioscope("pstree", tree.pid)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("parent "))
    assert {lines[i + 1].split()[1], lines[i + 2].split()[1]} == {"child-1", "child-2"}
    r = aioscope("pstree", tree.pid, "--spawn")
    assert r.returncode == 0, r.stderr
    rows = [(len(line) - len(line.lstrip("│├└─ ")), tree_name(line)) for line in r.stdout.splitlines()[1:]]
    i = next(k for k, (_, name) in enumerate(rows) if name == "spawner")
    assert rows[i + 1][1] == "spawned" and rows[i + 1][0] > rows[i][0], r.stdout  # its only child
    i = next(k for k, (_, name) in enumerate(rows) if name == "parent")
    assert {rows[i + 1][1], rows[i + 2][1]} == {"child-1", "child-2"}, r.stdout
    assert rows[i + 1][0] > rows[i][0] and rows[i + 2][0] > rows[i][0]
    r = aioscope("dump", tree.pid)
    assert r.returncode == 0, r.stderr
    assert "run_forever" in r.stdout  # the loop thread's stack
    for name in tree.side["tasks"]:
        assert "\n  %s (id 0x%x)" % (name, tree.side["tasks"][name]) in r.stdout


def test_task_name_in_logging(python):
    prog = LiveProgram(python.path, "live_tree.py")
    prog.close()
    err = prog.proc.stderr.read()
    # %(taskName)s works below 3.12 too while the agent is installed.
    assert "sleeper|hello from a task" in err, err


def test_snapshot_api_in_process(python, tmp_path):
    script = tmp_path / "inproc.py"
    script.write_text(
        "import asyncio, io, json, aioscope\n"
        "async def waiter(ev):\n"
        "    await ev.wait()\n"
        "async def main():\n"
        "    ev = asyncio.Event()\n"
        "    t = asyncio.create_task(waiter(ev), name='w1')\n"
        "    await asyncio.sleep(0)\n"
        "    s = aioscope.snapshot()\n"
        "    out = io.StringIO()\n"
        "    aioscope.print_tasks(file=out)\n"
        "    print(json.dumps({'snap': s, 'text': out.getvalue()}))\n"
        "    ev.set()\n"
        "    await t\n"
        "asyncio.run(main())\n")
    r = subprocess.run([str(AIOSCOPE_BIN), "run", "--python", python.path, str(script)],
                       capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout.splitlines()[-1])
    tasks = by_name(data["snap"])
    assert tasks["w1"]["awaiting"] == "Event"
    assert tasks["w1"]["coroutine_stack"][0]["function"].endswith("waiter")
    assert any(t["thread_id"] for t in data["snap"]["tasks"])  # main is running
    assert " w1 " in data["text"] and " running " in data["text"]


def test_dump_signal(python):
    prog = LiveProgram(python.path, "live_tree.py", run_opts=("--dump-signal", "USR1"))
    try:
        os.kill(prog.pid, signal.SIGUSR1)
        seen = ""
        deadline = time.monotonic() + TIMEOUT_S
        wanted = ["\n  %s (id 0x%x)" % (n, i) for n, i in prog.side["tasks"].items()]
        while not all(w in seen for w in wanted) and time.monotonic() < deadline:
            line = prog.proc.stderr.readline()
            assert line, "stderr closed before the dump: %s" % seen
            seen += line
        assert "run_forever" in seen
        # The program went on: it still answers.
        assert aioscope("ps", prog.pid).returncode == 0
    finally:
        prog.close()
    assert prog.proc.returncode == 0


def test_bad_dump_signal():
    r = aioscope("run", "--dump-signal", "INT", "--", "true")
    assert r.returncode == 2 and "--dump-signal" in r.stderr


@pytest.mark.parametrize("mode", ["sleep", "regex"])
def test_blocked_loop(python, mode):
    """A loop blocked in time.sleep (GIL free) or in a regex (GIL held): ps still answers, shows
    the blocking task as running and dump shows the blocking line."""
    prog = LiveProgram(python.path, "live_blocked.py", mode)
    try:
        line = next(n for n, text in enumerate((LIVE / "live_blocked.py").read_text().splitlines(), 1)
                    if text.rstrip().endswith("# BLOCKS-HERE-" + mode))
        # The program says "ready" just before it blocks: until the regex has started, the GIL
        # is still free now and then, and the agent may answer fully. Once it runs, every answer
        # must come from memory; a few tries cover the moments before.
        deadline = time.monotonic() + 10
        while True:
            t0 = time.monotonic()
            r = aioscope("ps", prog.pid, "--json")
            assert time.monotonic() - t0 < 5
            assert r.returncode == 0, r.stderr
            snap = json.loads(r.stdout)
            if mode == "sleep" or snap["source"] == "agent-memory" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        tasks = by_name(snap)
        assert tasks["blocker"]["thread_id"], tasks["blocker"]
        assert "bystander" in tasks
        # The GIL is free in time.sleep: a full answer; the regex keeps it: read from memory.
        assert snap["source"] == ("agent" if mode == "sleep" else "agent-memory")
        r = aioscope("dump", prog.pid)
        assert r.returncode == 0, r.stderr
        assert "hog (%s:%d)" % (LIVE / "live_blocked.py", line) in r.stdout, r.stdout
    finally:
        prog.kill()


def _sock_dir():
    rt = os.environ.get("XDG_RUNTIME_DIR")
    if rt and os.path.isdir(os.path.join(rt, "aioscope")):
        return os.path.join(rt, "aioscope")
    return "/tmp/aioscope-%d" % os.geteuid()


def test_socket_is_private(tree):
    d = _sock_dir()
    st = os.lstat(d)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    sock = os.path.join(d, "%d.sock" % tree.pid)
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    tree.close()
    assert not os.path.exists(sock)  # removed at exit


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_other_user_refused(tree):
    """Another uid is refused by the agent itself (SO_PEERCRED), even when it gets past the
    directory's permissions (here: given CAP_DAC_OVERRIDE), and cannot get past them otherwise."""
    sock = os.path.join(_sock_dir(), "%d.sock" % tree.pid)
    client = ("import socket,sys\n"
              "s=socket.socket(socket.AF_UNIX)\n"
              "try:\n"
              "    s.connect(sys.argv[1])\n"
              "except OSError as e:\n"
              "    print('connect-failed', e.errno); sys.exit(0)\n"
              "s.sendall(b'snapshot\\n'); d=b''\n"
              "while True:\n"
              "    c=s.recv(65536)\n"
              "    if not c: break\n"
              "    d+=c\n"
              "print(d.decode())\n")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    # /usr/bin/python3: an interpreter another user may run (pyenv's live under /root).
    r = subprocess.run(nobody + ["/usr/bin/python3", "-c", client, sock], capture_output=True, text=True,
                       timeout=TIMEOUT_S)
    assert r.stdout.startswith("connect-failed 13"), (r.stdout, r.stderr)  # EACCES: the 0700 dir
    caps = ["--inh-caps=+dac_override,+dac_read_search", "--ambient-caps=+dac_override,+dac_read_search"]
    r = subprocess.run(nobody + caps + ["/usr/bin/python3", "-c", client, sock], capture_output=True,
                       text=True, timeout=TIMEOUT_S)
    answer = json.loads(r.stdout)
    assert answer["error"] == "EPERM", answer
    assert "tasks" not in answer


def test_no_agent(python):
    """A Python process without the agent: ps reads its memory instead; top says what to do."""
    proc = subprocess.Popen([python.path, "-c", "import time; print('ready', flush=True); time.sleep(600)"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        r = aioscope("ps", proc.pid)
        assert r.returncode == 0, r.stderr
        assert "memory, no agent" in r.stdout
        r = aioscope("top", proc.pid)
        assert r.returncode == 7
        assert r.stderr.count("\n") == 1 and "has no aioscope agent" in r.stderr
    finally:
        proc.kill()
        proc.wait()
