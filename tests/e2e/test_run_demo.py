"""The demo of examples/: under `aioscope run` it hits the six bugs its docstring lists, each at
a line marked `# BUG n`, and its own output and exit status stay what they are without aioscope."""
from conftest import (
    REPO, assert_same_behaviour, describe_findings, run_plain, same_file,
)

DEMO = REPO / "examples" / "demo_service.py"
BUGS = {
    1: "blocking-call",
    2: "unawaited-coroutine",
    3: "lost-exception",
    4: "swallowed-cancel",
    5: "pending-at-exit",
    6: "resource-leak",
}


def bug_lines(n):
    return [i for i, text in enumerate(DEMO.read_text().splitlines(), 1) if "# BUG %d" % n in text]


def test_demo_hits_every_bug(python, run_aioscope):
    plain = run_plain(python, DEMO)
    traced = run_aioscope(python, DEMO)
    assert_same_behaviour(plain, traced)
    assert traced.returncode == 0 and "shutting down" in traced.stdout
    findings = traced.findings
    context = describe_findings(findings) + "\nstderr:\n" + traced.stderr[-3000:]
    for n, kind in BUGS.items():
        hits = [f for f in findings if f["kind"] == kind]
        if kind == "swallowed-cancel" and python.version < (3, 11) and not hits:
            continue  # required from 3.11 on only: before it asyncio cannot tell uncancel apart
        assert len(hits) == 1, "BUG %d: expected one %s\n%s" % (n, kind, context)
        site = hits[0]["site"]
        assert same_file(site["file"], DEMO) and site["line"] in bug_lines(n), \
            "BUG %d: %s at line %s, not at %s\n%s" % (n, kind, site["line"], bug_lines(n), context)
    assert len(findings) in (len(BUGS), len(BUGS) - 1), context
    lost = next(f for f in findings if f["kind"] == "lost-exception")
    assert lost["created_at"]["line"] in bug_lines(3)
    assert next(f for f in findings if f["kind"] == "pending-at-exit")["task"]["name"] == \
        "cache-warmer"
