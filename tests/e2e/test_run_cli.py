"""The `aioscope run` command as a user drives it: bad input, --fail-on, --quiet, -m MODULE,
`-- COMMAND`, a console script in a venv, the program's surroundings left unchanged, signals,
sys.exit and uncaught exceptions still giving the report, and `aioscope.install()` without the CLI.
"""
import fcntl
import os
import shutil
import signal
import subprocess
import termios
import time
from pathlib import Path

import pytest

from conftest import (
    AIOSCOPE_BIN, PROGRAMS, REPO, Program, Result, aioscope_argv, assert_findings,
    assert_same_behaviour, assert_text_report, describe_findings, interpreter, program_env,
    programs, read_report, run_plain, run_process,
)

SLEEP = programs("buggy_blocking_sleep")[0]
CLEAN = programs("clean_cancel_reraise")[0]


def assert_usage_error(result, side_effect=None):
    """aioscope's own error: status 2, one line starting with "aioscope: ", nothing run."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aioscope: "), result.stderr
    assert result.stdout == ""
    if side_effect is not None:
        assert not side_effect.exists(), "the program ran although aioscope refused to start"


def run_cli(*args, env=None, cwd=None):
    code, out, err = run_process(aioscope_argv(*args), env=program_env("asyncio", env), cwd=cwd)
    return Result(code, out, err)


# ---- bad input -----------------------------------------------------------------------------------

@pytest.fixture
def touch_program(tmp_path):
    """A program whose only effect is creating a file: it must not exist after a refused run."""
    marker = tmp_path / "ran"
    script = tmp_path / "touch.py"
    script.write_text("open(%r, 'w').close()\n" % str(marker))
    return script, marker


@pytest.mark.parametrize("options", [
    ["--bogus"],
    ["--fail-on", "fatal"],
    ["--block-threshold", "soon"],
    ["--block-threshold", "-1"],
], ids=["unknown-option", "bad-fail-on", "bad-threshold", "negative-threshold"])
def test_bad_option_is_one_line_and_status_2(options, touch_program):
    script, marker = touch_program
    py = interpreter(12)
    assert_usage_error(run_cli("--python", py.path, *options, script), marker)


def test_nothing_to_run():
    assert_usage_error(run_cli("--python", interpreter(12).path))
    assert_usage_error(run_cli("--"))


def test_missing_script(tmp_path):
    assert_usage_error(run_cli("--python", interpreter(12).path, tmp_path / "nope.py"))


def test_interpreter_not_found(touch_program):
    script, marker = touch_program
    assert_usage_error(run_cli("--python", "/nonexistent/python3", script), marker)
    assert_usage_error(run_cli("--python", "python2.4-does-not-exist", script), marker)


def test_command_not_found(tmp_path):
    assert_usage_error(run_cli("--", "no-such-command-anywhere", "x"))


def test_unwritable_json_path(tmp_path, touch_program):
    script, marker = touch_program
    bad = tmp_path / "no-such-dir" / "report.json"
    assert_usage_error(run_cli("--python", interpreter(12).path, "--json", bad, script), marker)


@pytest.fixture(scope="session")
def build_for_312_only(tmp_path_factory):
    """A second build whose agent exists for Python 3.12 only."""
    meson = shutil.which("meson")
    ninja = shutil.which("ninja")
    if not meson or not ninja:
        pytest.skip("meson/ninja not found")
    py = interpreter(12)
    build = tmp_path_factory.mktemp("build312")
    for argv in ([meson, "setup", str(build), str(REPO), "-Dpythons=" + py.path],
                 [ninja, "-C", str(build)]):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.fail("building %s failed:\n%s%s" % (build, r.stdout[-3000:], r.stderr[-3000:]))
    return build


def test_agent_not_built_for_interpreter(build_for_312_only, touch_program):
    script, marker = touch_program
    other = interpreter(11)
    code, out, err = run_process([str(build_for_312_only / "aioscope"), "run", "--python",
                                  other.path, str(script)], env=program_env())
    result = Result(code, out, err)
    assert_usage_error(result, marker)
    assert "3.11" in err
    # ... while the interpreter it was built for runs.
    code, out, err = run_process([str(build_for_312_only / "aioscope"), "run", "--python",
                                  interpreter(12).path, str(script)], env=program_env())
    assert code == 0 and marker.exists(), err


# ---- options -------------------------------------------------------------------------------------

def test_fail_on_trips_at_or_above_the_finding_severity(run_aioscope):
    py = interpreter(12)
    first = run_aioscope(py, SLEEP.path)
    (finding,) = first.of_kind("blocking-call")
    severity = finding["severity"]
    levels = ["info", "warning", "error"]
    for level in levels[:levels.index(severity) + 1]:
        r = run_aioscope(py, SLEEP.path, options=["--fail-on", level])
        assert r.returncode == 3, (level, r.stderr[-2000:])
        assert r.stdout == first.stdout
    for level in levels[levels.index(severity) + 1:]:
        r = run_aioscope(py, SLEEP.path, options=["--fail-on", level])
        assert r.returncode == 0, (level, r.stderr[-2000:])


def test_fail_on_clean_program_keeps_exit_status(run_aioscope):
    r = run_aioscope(interpreter(12), CLEAN.path, options=["--fail-on", "info"])
    assert r.returncode == 0, r.stderr
    assert r.findings == []


def test_fail_on_overrides_the_program_status(run_aioscope):
    program = Program(PROGRAMS / "exit_status.py")
    r = run_aioscope(interpreter(12), program.path, "exit", options=["--fail-on", "info"])
    assert r.returncode == 3, r.stderr
    assert r.report["exit_code"] == 7


def test_quiet_prints_no_report_but_writes_json(run_aioscope):
    py = interpreter(12)
    plain = run_plain(py, SLEEP.path)
    r = run_aioscope(py, SLEEP.path, options=["--quiet"])
    assert r.stderr == plain.stderr
    assert r.stdout == plain.stdout
    assert_findings(r, SLEEP)


def test_text_report_without_json(run_aioscope):
    r = run_aioscope(interpreter(12), SLEEP.path, json=False)
    assert r.returncode == 0
    assert_text_report(r, SLEEP)


# ---- what runs -----------------------------------------------------------------------------------

def test_module_mode(python, run_aioscope):
    """aioscope run -m MODULE: the module is found the way python -m finds it."""
    plain_code, plain_out, plain_err = run_process(
        [python.path, "-m", SLEEP.name], env=program_env(), cwd=PROGRAMS)
    r = run_aioscope(python, "-m", SLEEP.name, cwd=PROGRAMS)
    assert (r.returncode, r.stdout) == (plain_code, plain_out)
    assert r.stderr.startswith(plain_err)
    assert_findings(r, SLEEP)
    assert_text_report(r, SLEEP)


def test_command_mode_interpreter_on_path(run_aioscope):
    """aioscope run -- python3.12 app.py: the interpreter is found on PATH."""
    py = interpreter(12)
    path = os.path.dirname(py.path) + os.pathsep + os.environ.get("PATH", "")
    r = run_aioscope(None, "--", "python3.12", SLEEP.path, "extra-arg", env={"PATH": path})
    assert r.returncode == 0, r.stderr
    assert r.report["python"] == py.version_str
    assert r.report["argv"][-2:] == [str(SLEEP.path), "extra-arg"]
    assert_findings(r, SLEEP)


def write_console_script(venv, module_dir, name, module, func):
    """What `pip install -e` leaves behind: a .pth pointing at the source folder and an entry
    point script in the venv's bin/."""
    site = next((venv / "lib").glob("python3.*")) / "site-packages"
    (site / "e2e_src.pth").write_text(str(module_dir) + "\n")
    script = venv / "bin" / name
    script.write_text(
        "#!%s\n"
        "# -*- coding: utf-8 -*-\n"
        "import re\n"
        "import sys\n"
        "from %s import %s\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
        "    sys.exit(%s())\n" % (venv / "bin" / "python", module, func, func))
    script.chmod(0o755)
    return script


def test_console_script_in_a_venv(tmp_path, run_aioscope):
    """aioscope run -- <venv>/bin/svc-run: a console script of a venv's Python."""
    py = interpreter(12)
    venv = tmp_path / "venv"
    subprocess.run([py.path, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(PROGRAMS / "console_app.py", src / "console_app.py")
    app = Program(src / "console_app.py")
    script = write_console_script(venv, src, "svc-run", "console_app", "main")

    code, out, err = run_process([str(script), "--flag"], env=program_env())
    r = run_aioscope(None, "--", script, "--flag")
    assert (r.returncode, r.stdout) == (code, out) == (5, "served\n"), r.stderr
    assert r.report["exit_code"] == 5
    assert_findings(r, app)
    assert_text_report(r, app)


def test_program_surroundings_unchanged(python, tmp_path, run_aioscope):
    """Arguments, working directory, environment, stdin, sys.path and sitecustomize are what the
    program would have had without aioscope, even with a PYTHONPATH of the user's own."""
    program = PROGRAMS / "program_io.py"
    own = tmp_path / "own"
    own.mkdir()
    (own / "sitecustomize.py").write_text("import sys\nsys.e2e_own_sitecustomize = True\n")
    env = {"E2E_VALUE": "héllo wörld", "PYTHONPATH": str(own), "E2E_EXIT": "4"}
    args = [program, "a b", "--port", "8080", ""]
    plain = run_plain(python, *args, env=env, cwd=tmp_path, input="line from stdin\n")
    r = run_aioscope(python, *args, env=env, cwd=tmp_path, input="line from stdin\n")
    assert "sitecustomize: %s" % (own / "sitecustomize.py") in plain.stdout
    assert_same_behaviour(plain, r)
    assert r.returncode == 4
    assert r.report["argv"] == [str(a) for a in args]
    assert r.findings == []


# ---- how the program ends ---------------------------------------------------------------------------

@pytest.mark.parametrize("how,status", [("ok", 0), ("exit", 7), ("raise", 1)])
def test_report_written_however_the_program_ends(how, status, python, run_aioscope):
    program = Program(PROGRAMS / "exit_status.py")
    plain = run_plain(python, program.path, how)
    r = run_aioscope(python, program.path, how)
    assert plain.returncode == status
    assert_same_behaviour(plain, r)
    assert r.report["exit_code"] == status
    assert_findings(r, program)
    assert_text_report(r, program)


def kill_session(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def take_stdin_as_terminal():
    """In the child, after setsid(): make stdin (a pseudo-terminal) the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def start_aioscope(python, json_path, *target, loop="asyncio", terminal=False):
    """Start `aioscope run` in a session of its own. With terminal, its stdin is a new
    pseudo-terminal that becomes the session's controlling terminal, so that a Ctrl-C typed there
    reaches the processes the way a real terminal's does (from the kernel, to the whole
    foreground process group)."""
    argv = aioscope_argv("--python", python.path, "--json", json_path, *target)
    stdin, master = subprocess.DEVNULL, None
    if terminal:
        master, stdin = os.openpty()
    proc = subprocess.Popen(argv, env=program_env(loop), text=True, start_new_session=True,
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=take_stdin_as_terminal if terminal else None)
    if terminal:
        os.close(stdin)
    proc.terminal = master
    return proc


def wait_for_line(proc, expected, timeout=30):
    """Read stdout until `expected` appears; the program prints it with flush=True."""
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip() == expected:
            return
        if not line and proc.poll() is not None:
            break
    kill_session(proc)
    pytest.fail("never printed %r (last line %r); stderr:\n%s" % (expected, line,
                                                                 proc.stderr.read()[-3000:]))


def interrupt(proc, how):
    """Stop a program that must still be running (else fail with what it printed)."""
    if proc.poll() is not None:
        out, err = proc.communicate()
        pytest.fail("ended by itself with status %s before the signal; stderr:\n%s"
                    % (proc.returncode, err[-3000:]))
    if how == "ctrl-c":
        os.write(proc.terminal, b"\x03")
    elif how == "sigint-group":
        os.killpg(proc.pid, signal.SIGINT)
    elif how == "sigterm-group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        assert how == "sigterm-aioscope"
        os.kill(proc.pid, signal.SIGTERM)


def finish(proc, timeout=30):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        out, err = proc.communicate()
        pytest.fail("did not end after the signal; stderr:\n" + err[-3000:])
    finally:
        if proc.terminal is not None:
            os.close(proc.terminal)
    return proc.returncode, out, err


@pytest.mark.parametrize("how,sig", [
    pytest.param("ctrl-c", signal.SIGINT, id="ctrl-c"),  # typed in the terminal
    # kill -INT -PGID / kill -TERM -PGID: one signal for every process of the group
    pytest.param("sigint-group", signal.SIGINT, id="sigint-group"),
    pytest.param("sigterm-group", signal.SIGTERM, id="sigterm-group"),
    # kill PID of aioscope, which passes it on
    pytest.param("sigterm-aioscope", signal.SIGTERM, id="sigterm-aioscope"),
])
def test_signal_still_gives_the_report(how, sig, python, tmp_path):
    """A service stopped by a signal: the status is 128+N, the JSON report is written and holds
    what was found before, and nothing more."""
    program = Program(PROGRAMS / "serve_forever.py")
    json_path = tmp_path / "report.json"
    proc = start_aioscope(python, json_path, program.path, terminal=(how == "ctrl-c"))
    wait_for_line(proc, "ready")
    time.sleep(0.2)
    interrupt(proc, how)
    code, out, err = finish(proc)
    assert code == 128 + sig, err[-3000:]
    result = Result(code, "ready\n" + out, err, read_report(json_path), json_path)
    assert result.report is not None, "no JSON report after %s:\n%s" % (how, err[-3000:])
    assert result.report["exit_code"] == 128 + sig
    assert_findings(result, program)


@pytest.mark.parametrize("how", ["sleep", "regex"])
def test_blocking_call_captured_while_still_blocked(how, python, loop, tmp_path):
    """The loop blocks and never returns; after a second the program is killed. The finding
    exists only if it was taken while the loop was blocked — with the GIL released (sleep) and
    with the GIL held by one long C call (regex)."""
    program = Program(PROGRAMS / "blocked_forever.py")
    program.skip_unless_runs_on(python, loop)
    line = program.line_of("EXPECT: blocking-call@" + how)
    json_path = tmp_path / "report.json"
    proc = start_aioscope(python, json_path, program.path, how, loop=loop)
    wait_for_line(proc, "blocking")
    time.sleep(1.0)
    interrupt(proc, "sigterm-aioscope")
    code, out, err = finish(proc)
    assert code == 128 + signal.SIGTERM, err[-3000:]
    report = read_report(json_path)
    assert report is not None, err[-3000:]
    hits = [f for f in report["findings"] if f["kind"] == "blocking-call"]
    assert [(Path(f["site"]["file"]).name, f["site"]["line"]) for f in hits] == \
        [(program.path.name, line)], describe_findings(report["findings"])
    assert hits[0]["duration_s"] >= 0.1


def test_program_dies_with_aioscope(python, tmp_path):
    """The program runs in a process group of its own; when aioscope itself is killed outright
    (kill -9, a CI runner's timeout), the program must not run on unseen."""
    proc = start_aioscope(python, tmp_path / "report.json", PROGRAMS / "serve_forever.py")
    wait_for_line(proc, "ready")
    kids = Path("/proc/%d/task/%d/children" % (proc.pid, proc.pid)).read_text().split()
    assert len(kids) == 1, kids
    child = int(kids[0])
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        # A zombie until its new parent reaps it: dead all the same.
        state = Path("/proc/%d/stat" % child).read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the program outlived aioscope")


def test_install_without_the_cli(python):
    """import aioscope; aioscope.install() with the build's python/ folder on PYTHONPATH: the
    text report comes out on stderr at exit."""
    program = Program(PROGRAMS / "install_api.py")
    agent_dir = AIOSCOPE_BIN.parent / "python"
    code, out, err = run_process([python.path, str(program.path)],
                                 env=program_env("asyncio", {"PYTHONPATH": str(agent_dir)}))
    assert (code, out) == (0, "done\n"), err
    assert_text_report(Result(code, out, err), program)


def test_tasks_look_the_same(python, loop, run_aioscope):
    """The agent's Task subclass is invisible: same size (its record index sits in padding of
    the C Task), type name, default names and asyncio.Task, whatever made the task."""
    program = PROGRAMS / "program_task_shape.py"
    plain = run_plain(python, program, loop=loop)
    r = run_aioscope(python, program, loop=loop)
    assert plain.returncode == 0, plain.stderr
    assert_same_behaviour(plain, r)
    assert r.findings == []
