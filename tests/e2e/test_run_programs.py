"""`aioscope run` on every program of programs/, on every interpreter and loop.

A buggy_*.py program must get exactly the findings its EXPECT/CREATED marks name (kind, site line,
created_at line, task name, count), each shown in the text report as `--> file:line`; a clean_*.py
program must get none. Either way the program's stdout, stderr and exit status are what they are
without aioscope.
"""
import os

import pytest

from conftest import (
    DEBIAN_PYTHON, SEVERITIES, KINDS, Interpreter, _version_of, assert_findings,
    assert_same_behaviour, assert_text_report, describe_findings, programs, run_plain,
)

BUGGY = programs("buggy_")
CLEAN = programs("clean_")


def check_report_shape(result, python, argv):
    """The fields of the contract, with their types, for every finding."""
    report = result.report
    assert report is not None, "no JSON report:\n" + result.stderr[-3000:]
    assert isinstance(report.get("aioscope"), str) and report["aioscope"]
    assert report.get("python") == python.version_str
    assert report.get("argv") == [str(a) for a in argv]
    assert report.get("exit_code") == result.returncode
    for f in report["findings"]:
        assert f.get("kind") in KINDS, f
        assert f.get("severity") in SEVERITIES, f
        assert isinstance(f.get("message"), str) and f["message"], f
        site = f.get("site")
        assert isinstance(site, dict) and os.path.isabs(site.get("file", "")), f
        assert isinstance(site.get("line"), int) and site["line"] > 0, f
        assert isinstance(site.get("function"), str), f
        assert isinstance(f.get("count"), int) and f["count"] >= 1, f
        for frame in f.get("stack") or []:
            assert set(frame) >= {"file", "line", "function"}, f
        if f["kind"] == "blocking-call":
            assert isinstance(f.get("duration_s"), (int, float)) and f["duration_s"] > 0, f


@pytest.mark.parametrize("program", BUGGY, ids=lambda p: p.name)
def test_buggy_program_reports_its_findings(program, python, loop, run_aioscope):
    program.skip_unless_runs_on(python, loop)
    plain = run_plain(python, program.path, loop=loop)
    traced = run_aioscope(python, program.path, loop=loop)
    assert_same_behaviour(plain, traced)
    check_report_shape(traced, python, [program.path])
    assert_findings(traced, program)
    assert_text_report(traced, program)


@pytest.mark.parametrize("program", CLEAN, ids=lambda p: p.name)
def test_clean_program_has_no_findings(program, python, loop, run_aioscope):
    program.skip_unless_runs_on(python, loop)
    plain = run_plain(python, program.path, loop=loop)
    traced = run_aioscope(python, program.path, loop=loop)
    assert_same_behaviour(plain, traced)
    check_report_shape(traced, python, [program.path])
    assert traced.findings == [], "a clean program got findings:\n%s\nstderr:\n%s" % (
        describe_findings(traced.findings), traced.stderr[-3000:])


def test_lost_exception_carries_the_traceback(python, run_aioscope):
    program = programs("buggy_lost_exception")[0]
    traced = run_aioscope(python, program.path)
    (f,) = traced.of_kind("lost-exception")
    stack = f.get("stack") or []
    assert stack, "lost-exception without a stack: %s" % f
    innermost = stack[-1]
    assert innermost["line"] == f["site"]["line"] and innermost["function"] == "sync_inventory"
    assert "ValueError" in f["message"] or "bad SKU" in f["message"], f["message"]


def test_block_threshold_option(python, run_aioscope):
    """--block-threshold moves the line: at 0.25 s only the 0.3 s sleep is a finding; at 20 ms the
    50 ms sleeps are one too."""
    program = programs("buggy_blocking_merged")[0]
    config = program.line_of("EXPECT: blocking-call@config")
    flush = program.line_of("EXPECT: blocking-call@flush")
    short = program.line_of("time.sleep(0.05)")

    high = run_aioscope(python, program.path, options=["--block-threshold", "0.25"])
    assert sorted(f["site"]["line"] for f in high.of_kind("blocking-call")) == [flush], \
        describe_findings(high.findings)

    low = run_aioscope(python, program.path, options=["--block-threshold", "0.02"])
    by_line = {f["site"]["line"]: f for f in low.of_kind("blocking-call")}
    assert set(by_line) == {config, flush, short}, describe_findings(low.findings)
    assert by_line[short]["count"] == 5


@pytest.mark.parametrize("name", ["buggy_blocking_sleep", "buggy_lost_exception",
                                  "clean_server", "clean_executors"])
def test_debian_python(name, run_aioscope):
    """Debian's own /usr/bin/python3 (stripped, statically linked libpython) works too."""
    if not DEBIAN_PYTHON.exists():
        pytest.skip("no /usr/bin/python3")
    python = Interpreter(str(DEBIAN_PYTHON), _version_of(str(DEBIAN_PYTHON)))
    program = programs(name)[0]
    program.skip_unless_runs_on(python)
    plain = run_plain(python, program.path)
    traced = run_aioscope(python, program.path)
    assert_same_behaviour(plain, traced)
    check_report_shape(traced, python, [program.path])
    assert_findings(traced, program)
