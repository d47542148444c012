"""The agent's API of the attach library, inside real interpreters: aioscope_thread_stack reads
a running thread's stack (3.8-3.13, Debian's static 3.11), through a test-only shared library
loaded with ctypes. The library is linked here from the static libraries next to AIOSCOPE_BIN."""
import json
import subprocess
from pathlib import Path

import pytest

from conftest import AIOSCOPE_BIN
from test_attach import IDS, PYTHONS, TARGETS, marker_line

SELF = TARGETS / "attach_self.py"


@pytest.fixture(scope="module")
def attach_so(tmp_path_factory):
    build = AIOSCOPE_BIN.parent
    libs = [build / "src" / "attach" / "libaioscope-attach.a", build / "src" / "core" / "libaioscope-core.a"]
    if not all(p.exists() for p in libs):
        pytest.skip("static libraries not found next to %s" % AIOSCOPE_BIN)
    d = tmp_path_factory.mktemp("so")
    # The libraries are built with -fvisibility=hidden: export the three calls through a shim.
    shim = d / "shim.c"
    shim.write_text(SHIM)
    so = d / "libaioscope_attach_test.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-I", str(REPO / "include"), "-o", str(so), str(shim),
                    *map(str, libs)], check=True)
    return so


REPO = Path(__file__).resolve().parents[2]
SHIM = """
#include "aioscope/attach.h"
#define EXPORT __attribute__((visibility("default")))
EXPORT int test_open_self(uint32_t v, uint64_t rt, aioscope_target **out) {
    return aioscope_target_open_self(v, rt, out);
}
EXPORT int test_thread_stack(aioscope_target *t, uint64_t ts, aioscope_frame *f, size_t max, size_t *n) {
    return aioscope_thread_stack(t, ts, f, max, n);
}
EXPORT void test_close(aioscope_target *t) { aioscope_target_close(t); }
"""


@pytest.mark.parametrize("interp", PYTHONS, ids=IDS)
def test_thread_stack_of_a_running_thread(interp, attach_so):
    r = subprocess.run([interp.path, str(SELF), str(attach_so), "200"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "done", r.stdout[-2000:]
    reads = [json.loads(l) for l in lines[:-2]]
    assert len(reads) == 200
    spin, call = marker_line(SELF, "MARK-SPIN"), marker_line(SELF, "MARK-CALL")
    good = 0
    for read in reads:
        assert read["rc"] <= 0
        if read["rc"] == 0:
            stack = read["stack"]
            # Innermost first: spin_here at its loop (the `while` or the `n += 1` line),
            # called by worker; then threading's frames.
            assert stack[0]["function"] == "spin_here" and stack[0]["line"] in (spin - 1, spin), stack[0]
            assert stack[1]["function"] == "worker" and stack[1]["line"] == call
            assert stack[0]["file"] == str(SELF)
            good += 1
    # Torn reads of a thread that runs right now may fail; nearly all must succeed.
    assert good >= 180, good
    assert json.loads(lines[-2])["dangling"] < 0
