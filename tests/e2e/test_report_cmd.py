"""`aioscope report FILE.json [--html OUT]`: a saved report shown again, as text or as a page.

What a user relies on:
  - the text of `aioscope report` is the text report `aioscope run` printed for the same run;
  - the HTML page is self-contained, loads in a real browser (headless Chromium) without a single
    console message, and shows every finding of the report with its message and site;
  - untrusted text in a report (messages, paths) cannot inject markup into the page;
  - unreadable or malformed files are one clear error line and exit status 2.
"""
import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import AIOSCOPE_BIN, PROGRAMS, interpreter, run_process

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Programs whose findings together cover most kinds (each gives one or more).
MIXED_PROGRAMS = ["buggy_blocking_sleep.py", "buggy_lost_exception.py", "buggy_unawaited.py",
                  "buggy_pending_at_exit.py"]


def report_cmd(*args, input=None):
    return run_process([str(AIOSCOPE_BIN), "report", *map(str, args)], input=input)


class _Findings(HTMLParser):
    """Collects the rendered findings of a page: data-kind and the text of each summary."""

    def __init__(self):
        super().__init__()
        self.findings = []  # [kind, summary text]
        self._in_summary = 0
        self._depth_finding = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "details" and "finding" in (a.get("class") or "").split():
            self.findings.append([a.get("data-kind"), ""])
        if tag == "summary" and self.findings:
            self._in_summary += 1

    def handle_endtag(self, tag):
        if tag == "summary" and self._in_summary:
            self._in_summary -= 1

    def handle_data(self, data):
        if self._in_summary and self.findings:
            self.findings[-1][1] += data


def chromium_load(page):
    """Load page in headless Chromium: (DOM after scripts ran, console messages)."""
    if not CHROMIUM:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()]
    # Offline: no proxy can be reached, and the page must not need one.
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(page.parent)})
    console = [l for l in proc.stderr.splitlines() if ":CONSOLE" in l]
    return proc.stdout, console


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """One real run per program (Python 3.11, plain asyncio), its JSON and the text it printed."""
    py = interpreter(11)
    out = tmp_path_factory.mktemp("runs")
    runs = []
    for name in MIXED_PROGRAMS:
        json_path = out / (name + ".json")
        code, _, err = run_process([str(AIOSCOPE_BIN), "run", "--python", py.path, "--json",
                                    str(json_path), str(PROGRAMS / name)],
                                   env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"})
        assert json_path.exists(), err
        runs.append((json_path, err))
    return runs


def test_report_text_is_what_run_printed(saved_run):
    for json_path, run_stderr in saved_run:
        code, out, err = report_cmd(json_path)
        assert code == 0, err
        assert out.strip(), "empty report for %s" % json_path
        # `run` prints its program's output, then a blank line and the report on stderr.
        assert run_stderr.rstrip().endswith(out.rstrip()), (
            "--- run printed:\n%s\n--- report printed:\n%s" % (run_stderr[-3000:], out))


def test_report_stack_option_lists_frames(saved_run):
    json_path, _ = saved_run[0]
    report = json.loads(json_path.read_text())
    code, out, _ = report_cmd("--stack", json_path)
    assert code == 0
    for f in report["findings"]:
        for frame in f.get("stack", []):
            assert "%s:%d in %s" % (frame["file"], frame["line"], frame["function"]) in out


def test_html_page_loads_in_chromium_and_shows_every_finding(saved_run, tmp_path):
    # One report with every finding of the runs: merge the saved findings into one file.
    merged = json.loads(saved_run[0][0].read_text())
    for json_path, _ in saved_run[1:]:
        merged["findings"] += json.loads(json_path.read_text())["findings"]
    assert len({f["kind"] for f in merged["findings"]}) >= 3, merged["findings"]
    src = tmp_path / "all.json"
    src.write_text(json.dumps(merged))
    page = tmp_path / "report.html"
    code, out, err = report_cmd(src, "--html", page)
    assert code == 0, err
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text), "external resource"
    assert "<link" not in text

    dom, console = chromium_load(page)
    assert console == [], "console messages:\n" + "\n".join(console)
    parser = _Findings()
    parser.feed(dom)
    shown = parser.findings
    assert len(shown) == len(merged["findings"]), shown
    for f in merged["findings"]:
        hits = [s for s in shown if s[0] == f["kind"] and f["message"] in s[1]
                and "%s:%d" % (f["site"]["file"], f["site"]["line"]) in s[1]]
        assert hits, "finding not shown: %s at %s" % (f["message"], f["site"])
    # The site's source line is in the page (read from the program's file).
    blocking = [f for f in merged["findings"] if f["kind"] == "blocking-call"]
    for f in blocking:
        line = Path(f["site"]["file"]).read_text().splitlines()[f["site"]["line"] - 1]
        assert html.escape(line.strip(), quote=True) in dom or html.escape(line.strip()) in dom


def test_html_escapes_hostile_text(tmp_path):
    evil = '<img src=x onerror="console.error(\'pwned\')">'
    report = {
        "aioscope": "0.1.0", "python": "3.12.1", "argv": ["app.py", evil], "exit_code": 1,
        "findings": [{
            "kind": "lost-exception", "severity": "error", "message": "Task died: " + evil,
            "site": {"file": "/nonexistent/" + evil + ".py", "line": 3, "function": evil},
            "stack": [{"file": "/nonexistent/x.py", "line": 1, "function": evil}],
            "count": 1, "detail": evil,
        }],
    }
    src = tmp_path / "evil.json"
    src.write_text(json.dumps(report))
    page = tmp_path / "evil.html"
    code, _, err = report_cmd(src, "--html", page)
    assert code == 0, err
    assert "<img" not in page.read_text()
    dom, console = chromium_load(page)
    assert console == [], console
    assert "<img" not in dom
    assert "pwned" in dom  # shown as text


def test_report_reads_stdin_and_fail_on(tmp_path, saved_run):
    json_path, _ = saved_run[0]
    text = json_path.read_text()
    code, out, _ = report_cmd("-", input=text)
    assert code == 0 and "error[blocking-call]" in out
    code, _, _ = report_cmd("--fail-on", "error", json_path)
    assert code == 1
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"aioscope": "0.1.0", "python": "3.12.1", "argv": [],
                                 "exit_code": 0, "findings": []}))
    code, out, _ = report_cmd("--fail-on", "info", empty)
    assert code == 0 and "no asyncio problems found" in out


@pytest.mark.parametrize("content,why", [
    (None, "No such file"),
    ("{not json", "not an aioscope JSON report"),
    ('{"findings": 3}', "not an aioscope JSON report"),
])
def test_bad_input_is_one_line_and_status_2(tmp_path, content, why):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    code, out, err = report_cmd(path)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and why in err, err
