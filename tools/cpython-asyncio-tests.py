#!/usr/bin/env python3
"""Runs CPython's own asyncio test suite with and without aioscope and compares it test by test.

aioscope's agent must be transparent: a program run under `aioscope run` behaves as it does
without it. CPython's test_asyncio is the harshest program there is for that (it pokes at the
event loop's internals, task factories, exception handlers, signal handlers, forks and threads),
so for every interpreter this script runs

    PY -m test -v --junit-xml plain.xml TESTS                                   (plain)
    aioscope run --quiet --json report.json -- PY -m test -v --junit-xml agent.xml TESTS

and compares the per-test results of the two JUnit files (ok / skipped / failure / error, and
tests that ran in one and not in the other) plus regrtest's own verdict per test file (which
also says when a test file "altered the execution environment"). Every difference is printed;
the exit status is 1 when there is one, 2 when a run could not be done at all.

A test that inspects the very internals the agent has to touch may be listed in
KNOWN_DIFFERENCES below, with the reason; it is then reported as "known" and does not fail the
comparison. The list is empty: every difference seen so far was fixed in the agent instead.

Usage:
    tools/cpython-asyncio-tests.py                     # every supported interpreter, whole suite
    tools/cpython-asyncio-tests.py --python 3.12       # one interpreter (a version or a path)
    tools/cpython-asyncio-tests.py --subset ci         # the subset CI runs (a few minutes)
    tools/cpython-asyncio-tests.py --tests test_asyncio.test_locks test_asyncio.test_tasks
    tools/cpython-asyncio-tests.py --keep /tmp/out     # keep the logs, XML and reports

Environment: AIOSCOPE_BIN, the command under test (default <repo>/build/aioscope).
Runs one test suite at a time: the suite is timing-sensitive and the machines are small.
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BIN = os.environ.get("AIOSCOPE_BIN", os.path.join(REPO, "build", "aioscope"))
PYENV_ROOT = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
SUPPORTED_MINORS = (10, 11, 12, 13)

# The subset CI runs: the test files closest to what the agent hooks (running-loop notice, task
# factories, exception handlers, futures and tasks, locks, subprocesses, signals, threads,
# asyncio.run), chosen so that one interpreter takes a few minutes on a 2-core machine.
CI_SUBSET = [
    "test_asyncio.test_tasks",
    "test_asyncio.test_runners",
    "test_asyncio.test_base_events",
    "test_asyncio.test_futures",
    "test_asyncio.test_locks",
    "test_asyncio.test_queues",
    "test_asyncio.test_pep492",
    "test_asyncio.test_unix_events",
    "test_asyncio.test_threads",
    "test_asyncio.test_subprocess",   # child watchers, fork+exec, SIGCHLD
    "test_asyncio.test_taskgroups",   # 3.11+
    "test_asyncio.test_timeouts",     # 3.11+
    "test_asyncio.test_eager_task_factory",  # 3.12+
]

# (test id regex, reason). A test listed here differs under the agent for a reason explained in
# docs/robustness.md; it is shown as "known" and does not fail the run.
KNOWN_DIFFERENCES = []

RUN_TIMEOUT_S = 3600


def log(msg):
    print(msg, flush=True)


# ---- interpreters -------------------------------------------------------------------------------

def pyenv_python(minor):
    """The newest pyenv CPython 3.<minor>, or None."""
    best = None
    for d in glob.glob(os.path.join(PYENV_ROOT, "versions", "3.%d.*" % minor)):
        m = re.fullmatch(r"3\.%d\.(\d+)" % minor, os.path.basename(d))
        exe = os.path.join(d, "bin", "python3")
        if m and os.access(exe, os.X_OK) and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), exe)
    return best[1] if best else None


def resolve_python(spec):
    """"3.12" -> pyenv's newest 3.12; anything else is a path or a name on PATH."""
    m = re.fullmatch(r"3\.(\d+)", spec)
    if m:
        found = pyenv_python(int(m.group(1)))
        if not found:
            sys.exit("cpython-asyncio-tests: Python %s is not installed under %s" % (spec, PYENV_ROOT))
        return found
    found = shutil.which(spec) or (spec if os.access(spec, os.X_OK) else None)
    if not found:
        sys.exit("cpython-asyncio-tests: interpreter not found: %s" % spec)
    return found


def python_version(py):
    out = subprocess.run([py, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                         capture_output=True, text=True, check=True).stdout
    return out.strip()


def available_tests(py, names):
    """The names among `names` whose module exists in this interpreter's test package."""
    code = ("import importlib.util, sys\n"
            "for n in sys.argv[1:]:\n"
            "    if importlib.util.find_spec('test.' + n) is not None: print(n)\n")
    out = subprocess.run([py, "-c", code, *names], capture_output=True, text=True)
    return out.stdout.split()


# ---- running ------------------------------------------------------------------------------------

def test_env():
    """The same environment for both runs; nothing that changes asyncio's behaviour."""
    env = dict(os.environ)
    for key in ("PYTHONASYNCIODEBUG", "PYTHONPATH", "PYTHONDEVMODE", "PYTHONWARNINGS"):
        env.pop(key, None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_suite(argv, log_path, cwd):
    """Run argv in its own session with output to log_path; kill the session on timeout."""
    start = time.monotonic()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=test_env(), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = "timeout"
    return code, time.monotonic() - start


def parse_junit(path):
    """{test id: status} from regrtest's JUnit XML; status is ok, skipped, failure or error."""
    results = {}
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        name = case.get("name", "")
        cls = case.get("classname")
        test_id = "%s.%s" % (cls, name) if cls and not name.startswith(cls) else name
        status = "ok"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                status = child.tag
                break
        # A test with several failing subtests appears once per subtest: the worst one wins.
        order = ("ok", "skipped", "failure", "error")
        if test_id not in results or order.index(status) > order.index(results[test_id]):
            results[test_id] = status
    return results


_SUMMARY_BLOCK = re.compile(r"^(?:\d+|All \d+) tests? (failed|altered the execution environment|"
                            r"skipped|crashed|omitted|ran no tests|run no tests|failed again|"
                            r"had resource denied|skipped \(resource denied\))[^:\n]*:\n((?:[ \t]+\S.*\n)+)",
                            re.M)


def parse_verdicts(log_path):
    """regrtest's summary: {test file: verdict} for the files it lists as failed, altered the
    execution environment, skipped, ..., and its final result line."""
    text = open(log_path, errors="replace").read()
    verdicts = {}
    for m in _SUMMARY_BLOCK.finditer(text):
        for name in m.group(2).split():
            verdicts[name] = m.group(1).replace("altered the execution environment", "env changed")
    result = re.findall(r"^(?:== Tests result|Result): (.+?)(?: ==)?$", text, re.M)
    return verdicts, (result[-1].strip() if result else "no result line")


def known_reason(test_id):
    for pattern, reason in KNOWN_DIFFERENCES:
        if re.search(pattern, test_id):
            return reason
    return None


def compare_one(py, tests, aioscope, workdir):
    """Runs both suites for one interpreter; returns (real differences, known differences)."""
    version = python_version(py)
    tag = "py" + version
    os.makedirs(workdir, exist_ok=True)
    regr = [py, "-m", "test", "-v", "--timeout", "900"]
    runs = {}
    for mode in ("plain", "agent"):
        xml = os.path.join(workdir, "%s-%s.xml" % (tag, mode))
        logp = os.path.join(workdir, "%s-%s.log" % (tag, mode))
        if os.path.exists(xml):
            os.unlink(xml)
        argv = regr + ["--junit-xml", xml] + tests
        if mode == "agent":
            report = os.path.join(workdir, "%s-report.json" % tag)
            argv = [aioscope, "run", "--quiet", "--json", report, "--"] + argv
        cwd = tempfile.mkdtemp(prefix="asyncio-tests-", dir=workdir)
        log("%s %s: %s" % (tag, mode, " ".join(argv)))
        code, secs = run_suite(argv, logp, cwd)
        shutil.rmtree(cwd, ignore_errors=True)
        if os.path.exists(xml):
            results = parse_junit(xml)
        else:
            # regrtest writes the JUnit file at the end: a run that crashed or timed out has only
            # its -v log, which still tells every test that finished before.
            results = parse_verbose_log(logp)
            log("%s %s: no JUnit results (exit status %s after %.0f s), %d tests read from the "
                "log %s" % (tag, mode, code, secs, len(results), logp))
        verdicts, result = parse_verdicts(logp)
        counts = {s: sum(1 for v in results.values() if v == s)
                  for s in ("ok", "skipped", "failure", "error")}
        log("%s %s: %d tests in %.0f s, exit status %s, %s; regrtest: %s"
            % (tag, mode, len(results), secs, code,
               ", ".join("%d %s" % (n, s) for s, n in counts.items()), result))
        runs[mode] = (results, verdicts, code)
    if os.path.exists(os.path.join(workdir, "%s-report.json" % tag)):
        with open(os.path.join(workdir, "%s-report.json" % tag)) as f:
            report = json.load(f)
        if not report.get("python"):
            diffs_early = ["%s: the agent never loaded in the test run (its report has no "
                           "interpreter)" % tag]
            log(diffs_early[0])
            return diffs_early, []
        kinds = {}
        for finding in report.get("findings", []):
            kinds[finding["kind"]] = kinds.get(finding["kind"], 0) + 1
        log("%s agent: the report has %d findings (%s) - the suite provokes them on purpose"
            % (tag, len(report.get("findings", [])),
               ", ".join("%s %d" % kv for kv in sorted(kinds.items())) or "none"))
    else:
        log("%s agent: no JSON report was written" % tag)
        return ["%s: aioscope wrote no JSON report" % tag], []

    plain, agent = runs["plain"], runs["agent"]
    diffs, known = [], []

    def note(test_id, text):
        reason = known_reason(test_id)
        (known if reason else diffs).append("%s: %s%s" % (tag, text, " [known: %s]" % reason if reason else ""))

    for test_id in sorted(set(plain[0]) | set(agent[0])):
        a, b = plain[0].get(test_id, "not run"), agent[0].get(test_id, "not run")
        if a != b:
            note(test_id, "%s: %s without aioscope, %s with it" % (test_id, a, b))
    for name in sorted(set(plain[1]) | set(agent[1])):
        a, b = plain[1].get(name, "passed"), agent[1].get(name, "passed")
        if a != b:
            note(name, "regrtest says %s: %s without aioscope, %s with it" % (name, a, b))
    if plain[2] != agent[2]:
        note("exit-status", "regrtest exit status %s without aioscope, %s with it" % (plain[2], agent[2]))
    return diffs, known


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", action="append", default=[],
                    help="interpreter (3.12, or a path); repeat for several. "
                         "Default: pyenv's 3.10-3.13")
    ap.add_argument("--subset", choices=["all", "ci"], default="all",
                    help="all: the whole test_asyncio package; ci: the files CI runs")
    ap.add_argument("--tests", nargs="+", help="regrtest names, e.g. test_asyncio.test_locks")
    ap.add_argument("--aioscope", default=DEFAULT_BIN, help="the aioscope command (%(default)s)")
    ap.add_argument("--keep", metavar="DIR", help="keep logs, JUnit XML and reports in DIR")
    args = ap.parse_args()

    if not os.access(args.aioscope, os.X_OK):
        sys.exit("cpython-asyncio-tests: %s is not built (ninja -C build)" % args.aioscope)
    aioscope = os.path.abspath(args.aioscope)
    pythons = [resolve_python(p) for p in args.python]
    if not pythons:
        pythons = [p for p in map(pyenv_python, SUPPORTED_MINORS) if p]
    if not pythons:
        sys.exit("cpython-asyncio-tests: no interpreter found")

    workdir = args.keep or tempfile.mkdtemp(prefix="aioscope-asyncio-tests-")
    workdir = os.path.abspath(workdir)
    all_diffs, all_known = [], []
    for py in pythons:
        wanted = args.tests or (CI_SUBSET if args.subset == "ci" else ["test_asyncio"])
        tests = available_tests(py, wanted)
        if not tests:
            log("%s: none of %s exists here" % (py, " ".join(wanted)))
            all_diffs.append("%s: no tests to run" % py)
            continue
        diffs, known = compare_one(py, tests, aioscope, workdir)
        all_diffs += diffs
        all_known += known

    log("")
    for line in all_known:
        log("known difference: " + line)
    for line in all_diffs:
        log("DIFFERENCE: " + line)
    if args.keep:
        log("logs, JUnit XML and reports are in %s" % workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if all_diffs:
        # Per test file, so that a cause shared by hundreds of tests reads as one line.
        per_file = {}
        for line in all_diffs:
            m = re.match(r"(\S+): (?:test\.)?(test_asyncio\.\w+)", line)
            key = "%s %s" % (m.group(1), m.group(2)) if m else line.split(":")[0] + " (other)"
            per_file[key] = per_file.get(key, 0) + 1
        for key, n in sorted(per_file.items()):
            log("  %4d differences in %s" % (n, key))
        log("cpython-asyncio-tests: %d differences" % len(all_diffs))
        return 1
    log("cpython-asyncio-tests: the same results with and without aioscope (%d known differences)"
        % len(all_known))
    return 0


if __name__ == "__main__":
    sys.exit(main())
