"""The harness of the end-to-end tests: real asyncio programs run through `aioscope run`.

What it gives the tests:
  - `python`: every installed interpreter (pyenv 3.8-3.13, newest patch of each; 3.10-3.13 are
    required, the others join when present), as a parameter; `loop`: "asyncio" or "uvloop".
  - `run_aioscope(...)` / `run_plain(...)`: run a program with or without aioscope, always under a
    timeout and in a session of its own (so a hang kills the whole tree), and return what a user
    sees: exit status, stdout, stderr and the parsed --json report.
  - `Program`: a program of tests/e2e/programs/ with the marks written in its comments:
        # REQUIRES: python>=3.11          run it only on these interpreters
        # LOOPS: asyncio                  run it only on these loops (default: asyncio uvloop)
        # EXPECT: KIND[@LABEL] [task=NAME] [count=N] [min_duration=S]
                                          a finding of KIND whose site is this line
        # CREATED: KIND[@LABEL]           ... and whose created_at is this line
    Marks with the same KIND@LABEL (no label counts as one label) are one finding: several
    EXPECT lines are alternatives (where the contract allows either), the CREATED line applies to
    it. A program with several findings of one kind labels them. So no test ever hard-codes a
    line number.

Environment: AIOSCOPE_BIN (default <repo>/build/aioscope) is the command under test;
AIOSCOPE_E2E_PYTHONS (paths separated by ':') replaces the interpreter discovery.
"""
import json
import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = Path(__file__).resolve().parent / "programs"
AIOSCOPE_BIN = Path(os.environ.get("AIOSCOPE_BIN", REPO / "build" / "aioscope"))
DEBIAN_PYTHON = Path("/usr/bin/python3")

KINDS = {
    "unawaited-coroutine", "blocking-call", "lost-exception", "destroyed-pending",
    "swallowed-cancel", "pending-at-exit", "resource-leak", "deadlock", "stuck-task",
}
SEVERITIES = ("info", "warning", "error")

# Every program finishes by itself in a couple of seconds; this only guards against hangs.
RUN_TIMEOUT_S = 60


# ---- interpreters ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interpreter:
    path: str
    version: tuple  # (major, minor, micro)

    @property
    def id(self):
        return "py%d.%d" % self.version[:2]

    @property
    def version_str(self):
        return "%d.%d.%d" % self.version


def _version_of(path):
    try:
        out = subprocess.run([path, "-c", "import sys; print(*sys.version_info[:3])"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return tuple(int(x) for x in out.split())


def _pyenv_root():
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    return Path.home() / ".pyenv"


def discover_interpreters():
    """The newest pyenv CPython of each minor 3.8-3.13, as tools/find-pythons.sh lists them."""
    if os.environ.get("AIOSCOPE_E2E_PYTHONS"):
        paths = [p for p in os.environ["AIOSCOPE_E2E_PYTHONS"].split(":") if p]
    else:
        paths = []
        versions = _pyenv_root() / "versions"
        for minor in range(8, 14):
            found = []
            for d in versions.glob("3.%d.*" % minor):
                m = re.fullmatch(r"3\.%d\.(\d+)" % minor, d.name)
                if m and (d / "bin" / "python3").exists():
                    found.append((int(m.group(1)), d / "bin" / "python3"))
            if found:
                paths.append(str(max(found)[1]))
    result = []
    for p in paths:
        v = _version_of(p)
        if v:
            result.append(Interpreter(p, v))
    return result


INTERPRETERS = discover_interpreters()
LOOPS = ("asyncio", "uvloop")


def interpreter(minor):
    """The interpreter 3.<minor>, or a skip when it is not installed."""
    for i in INTERPRETERS:
        if i.version[:2] == (3, minor):
            return i
    pytest.skip("Python 3.%d is not installed" % minor)


_uvloop_cache = {}


def has_uvloop(py):
    if py.path not in _uvloop_cache:
        r = subprocess.run([py.path, "-c", "import uvloop"], capture_output=True, timeout=30)
        _uvloop_cache[py.path] = r.returncode == 0
    return _uvloop_cache[py.path]


def pytest_generate_tests(metafunc):
    if "python" in metafunc.fixturenames:
        metafunc.parametrize("python", INTERPRETERS, ids=[i.id for i in INTERPRETERS])
    if "loop" in metafunc.fixturenames:
        metafunc.parametrize("loop", LOOPS, indirect=True)


@pytest.fixture
def loop(request, python):
    name = request.param
    if name == "uvloop" and not has_uvloop(python):
        pytest.skip("uvloop is not installed for %s (run tools/setup-deps.sh)" % python.id)
    return name


@pytest.fixture(scope="session", autouse=True)
def _aioscope_built():
    if not AIOSCOPE_BIN.exists():
        pytest.fail("%s does not exist: build it (meson setup build && ninja -C build) or set "
                    "AIOSCOPE_BIN" % AIOSCOPE_BIN)


# ---- programs and their marks ------------------------------------------------------------------

_MARK = re.compile(r"#\s*(EXPECT|CREATED|REQUIRES|LOOPS):")
_KIND = re.compile(r"([a-z-]+)(?:@(\w+))?$")


@dataclass
class Expected:
    kind: str
    label: str
    lines: list = field(default_factory=list)          # site: any of these
    created_lines: list = field(default_factory=list)  # created_at: any of these
    attrs: dict = field(default_factory=dict)          # task=, count=, min_duration=

    def describe(self, program):
        return "%s at %s:%s" % (self.kind, program.path.name, "|".join(map(str, self.lines)))


class Program:
    def __init__(self, path):
        self.path = Path(path).resolve()
        self.name = self.path.stem
        self.requires = None  # (major, minor) or None
        self.loops = list(LOOPS)
        groups = {}
        for lineno, text in enumerate(self.path.read_text().splitlines(), start=1):
            m = _MARK.search(text)
            if not m:
                continue
            # Several marks may share a line: "# EXPECT: x task=t; CREATED: x".
            for part in text[m.start():].lstrip("# ").split(";"):
                tag, _, rest = part.strip().partition(":")
                self._add_mark(groups, lineno, tag.strip(), rest.strip())
        for exp in groups.values():
            assert exp.lines, "%s: CREATED mark without EXPECT for %s@%s" % (
                self.path, exp.kind, exp.label)
        self.expected = list(groups.values())

    def _add_mark(self, groups, lineno, tag, rest):
        where = "%s:%d" % (self.path, lineno)
        if tag == "REQUIRES":
            v = re.fullmatch(r"python>=(\d+)\.(\d+)", rest)
            assert v, where + ": bad REQUIRES mark"
            self.requires = (int(v.group(1)), int(v.group(2)))
            return
        if tag == "LOOPS":
            self.loops = rest.split()
            return
        assert tag in ("EXPECT", "CREATED"), where + ": unknown mark " + tag
        words = rest.split()
        k = _KIND.match(words[0]) if words else None
        assert k and k.group(1) in KINDS, "%s: bad mark %r" % (where, rest)
        kind, label = k.group(1), k.group(2) or ""
        exp = groups.setdefault((kind, label), Expected(kind, label))
        if tag == "CREATED":
            exp.created_lines.append(lineno)
            return
        exp.lines.append(lineno)
        for w in words[1:]:
            name, _, value = w.partition("=")
            assert name in ("task", "count", "min_duration"), \
                "%s: unknown attribute %r" % (where, name)
            exp.attrs[name] = value

    def line_of(self, marker):
        """The line number of the (single) line containing marker, e.g. "# EXPECT: x@y"."""
        lines = [n for n, t in enumerate(self.path.read_text().splitlines(), 1) if marker in t]
        assert len(lines) == 1, "%s: %r appears on lines %s" % (self.path, marker, lines)
        return lines[0]

    def skip_unless_runs_on(self, python, loop="asyncio"):
        if self.requires and python.version[:2] < self.requires:
            pytest.skip("%s needs Python >= %d.%d" % ((self.name,) + self.requires))
        if loop not in self.loops:
            pytest.skip("%s runs only on %s" % (self.name, " ".join(self.loops)))

    def __repr__(self):
        return self.name


def programs(prefix):
    return [Program(p) for p in sorted(PROGRAMS.glob(prefix + "*.py"))]


# ---- running ------------------------------------------------------------------------------------

@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    report: dict = None  # the --json report, when one was asked for and written
    json_path: Path = None

    @property
    def findings(self):
        assert self.report is not None, "no JSON report was written.\nstderr:\n" + self.stderr
        return self.report["findings"]

    def of_kind(self, kind):
        return [f for f in self.findings if f["kind"] == kind]


def program_env(loop="asyncio", extra=None):
    # The harness's own AIOSCOPE_* settings (AIOSCOPE_BIN) are not the program's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOSCOPE")}
    # The programs choose their loop from this (see programs/_e2e.py); it is not aioscope's.
    env["E2E_LOOP"] = loop
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONPATH", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    return env


def run_process(argv, *, env=None, cwd=None, input=None, timeout=RUN_TIMEOUT_S):
    """Run argv in a session of its own; on timeout kill the whole session and fail."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, text=True, start_new_session=True,
                            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        pytest.fail("timed out after %ss: %s\nstdout:\n%s\nstderr:\n%s"
                    % (timeout, " ".join(map(str, argv)), out, err))
    return proc.returncode, out, err


def aioscope_argv(*args):
    return [str(AIOSCOPE_BIN), "run", *map(str, args)]


def read_report(path):
    if not path.exists():
        return None
    text = path.read_text()
    try:
        return json.loads(text)
    except ValueError as e:
        pytest.fail("%s is not JSON (%s):\n%s" % (path, e, text[:2000]))


@pytest.fixture
def run_aioscope(tmp_path):
    """run_aioscope(python, *target, options=[...], loop=..., env=..., cwd=..., input=...,
    json=True): `aioscope run --python PY [--json FILE] OPTIONS TARGET...`."""
    counter = [0]

    def run(python, *target, options=(), loop="asyncio", env=None, cwd=None, input=None,
            json=True, timeout=RUN_TIMEOUT_S):
        counter[0] += 1
        json_path = tmp_path / ("report-%d.json" % counter[0])
        opts = []
        if python is not None:
            opts += ["--python", python.path]
        if json:
            opts += ["--json", str(json_path)]
        argv = aioscope_argv(*opts, *options, *target)
        code, out, err = run_process(argv, env=program_env(loop, env), cwd=cwd, input=input,
                                     timeout=timeout)
        return Result(code, out, err, read_report(json_path) if json else None, json_path)

    return run


def run_plain(python, *target, loop="asyncio", env=None, cwd=None, input=None):
    """The same program without aioscope: what its output and exit status must stay."""
    code, out, err = run_process([python.path, *map(str, target)], env=program_env(loop, env),
                                 cwd=cwd, input=input)
    return Result(code, out, err)


# ---- assertions -------------------------------------------------------------------------------

def same_file(a, b):
    return os.path.realpath(str(a)) == os.path.realpath(str(b))


def describe_findings(findings):
    if not findings:
        return "  (no findings)"
    rows = []
    for f in findings:
        site = f.get("site") or {}
        created = f.get("created_at") or {}
        row = "  %s at %s:%s" % (f.get("kind"), site.get("file"), site.get("line"))
        if created:
            row += " created at %s:%s" % (Path(str(created.get("file"))).name, created.get("line"))
        if f.get("task"):
            row += " task=%s" % f["task"].get("name")
        row += " count=%s" % f.get("count")
        rows.append(row)
    return "\n".join(rows)


def finding_matches(f, program, exp):
    site = f.get("site") or {}
    return (f.get("kind") == exp.kind and same_file(site.get("file", ""), program.path)
            and site.get("line") in exp.lines)


def assert_findings(result, program, *, exact=True):
    """Every EXPECT of the program is reported once, at its line, with its attributes; with
    exact, nothing else is reported. Returns {(kind, label): finding}."""
    findings = result.findings
    context = "findings:\n%s\nstderr:\n%s" % (describe_findings(findings), result.stderr[-3000:])
    matched = {}
    for exp in program.expected:
        hits = [f for f in findings if finding_matches(f, program, exp)]
        assert hits, "expected %s\n%s" % (exp.describe(program), context)
        assert len(hits) == 1, "%s reported %d times, not merged\n%s" % (
            exp.describe(program), len(hits), context)
        f = hits[0]
        if exp.created_lines:
            created = f.get("created_at") or {}
            assert same_file(created.get("file", ""), program.path) and \
                created.get("line") in exp.created_lines, \
                "%s: created_at should be line %s\n%s" % (
                    exp.describe(program), exp.created_lines, context)
        if "task" in exp.attrs:
            assert (f.get("task") or {}).get("name") == exp.attrs["task"], \
                "%s: task name should be %r\n%s" % (exp.describe(program), exp.attrs["task"],
                                                     context)
        if "count" in exp.attrs:
            assert f.get("count") == int(exp.attrs["count"]), \
                "%s: count should be %s\n%s" % (exp.describe(program), exp.attrs["count"],
                                                 context)
        if "min_duration" in exp.attrs:
            assert f.get("duration_s", 0) >= float(exp.attrs["min_duration"]), \
                "%s: duration_s should be >= %s\n%s" % (
                    exp.describe(program), exp.attrs["min_duration"], context)
        matched[(exp.kind, exp.label)] = f
    if exact:
        extra = [f for f in findings if not any(f is m for m in matched.values())]
        assert not extra, "unexpected findings:\n%s\nall %s" % (describe_findings(extra), context)
    return matched


def assert_text_report(result, program):
    """The text report on stderr names each expected finding with `--> file:line`."""
    for exp in program.expected:
        assert re.search(r"\b(error|warning|info)\[%s\]" % re.escape(exp.kind), result.stderr), \
            "no %s line in the text report:\n%s" % (exp.kind, result.stderr[-3000:])
        where = ["--> %s:%d" % (program.path, line) for line in exp.lines]
        assert any(w in result.stderr for w in where), \
            "none of %s in the text report:\n%s" % (where, result.stderr[-3000:])


_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


def assert_same_behaviour(plain, traced):
    """aioscope must not change what the program does: same stdout, same exit status, and the
    program's own stderr comes first, unchanged but for object addresses, before the report."""
    assert traced.stdout == plain.stdout
    assert traced.returncode == plain.returncode, traced.stderr[-3000:]
    assert _ADDRESS.sub("0x?", traced.stderr).startswith(_ADDRESS.sub("0x?", plain.stderr)), (
        "the program's stderr changed under aioscope\n--- plain:\n%s\n--- aioscope:\n%s"
        % (plain.stderr[-2000:], traced.stderr[-3000:]))
