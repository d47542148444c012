"""Quick checks of the agent's task-level findings, unawaited coroutines and leaks, through
aioscope.install(json=...) (no CLI): the cases the contract spells out that the e2e programs do
not all cover — swallowed cancellations of every shape, and the clean shapes that must stay
silent.

    AIOSCOPE_BUILD=build python3 -m pytest -q tests/e2e/agent_tasks_check.py

Each program marks the line a finding must point at with `# SITE: kind`; every finding must be
marked and every mark found (kind and line), so a missing and an extra finding both fail.
"""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("AIOSCOPE_BUILD", REPO / "build"))
PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"


def interpreters():
    found = []
    for minor in (8, 9, 10, 11, 12, 13):
        for d in sorted(PYENV.glob("3.%d.*" % minor)):
            if (d / "bin" / "python3").exists():
                found.append(pytest.param(str(d / "bin" / "python3"), id="py3.%d" % minor))
                break
    return found


PROGRAMS = {
    "swallowed_shapes": """
        import asyncio, sys

        async def swallow_base():
            try:
                await asyncio.sleep(10)  # SITE: swallowed-cancel
            except BaseException:
                pass

        async def reraise_finally(log):
            try:
                await asyncio.sleep(10)
            finally:
                await asyncio.sleep(0.01)
                log.append("cleaned")

        async def quick():
            return 1

        async def with_wait_for():
            try:
                await asyncio.wait_for(asyncio.sleep(10), 0.01)
            except asyncio.TimeoutError:
                return "wait_for ok"

        async def with_timeout():
            if sys.version_info >= (3, 11):
                try:
                    async with asyncio.timeout(0.01):
                        await asyncio.sleep(10)
                except TimeoutError:
                    return "timeout ok"

        async def keeps_running():
            n = 0
            while n < 2:
                try:
                    await asyncio.sleep(0.02)  # SITE: swallowed-cancel
                except asyncio.CancelledError:
                    n += 1
            return n

        async def swallowed_at_exit():
            try:
                await asyncio.sleep(10)  # SITE: swallowed-cancel
            except asyncio.CancelledError:
                return "late"

        async def main():
            log = []
            a = asyncio.create_task(swallow_base())
            b = asyncio.create_task(reraise_finally(log))
            c = asyncio.create_task(quick())
            await asyncio.sleep(0.01)
            a.cancel(); b.cancel(); c.cancel()
            await asyncio.gather(a, b, c, return_exceptions=True)
            print(await with_wait_for(), await with_timeout(), log)
            k = asyncio.create_task(keeps_running())  # SITE: pending-at-exit
            e = asyncio.create_task(swallowed_at_exit())  # SITE: pending-at-exit
            await asyncio.sleep(0.01)
            k.cancel()
            await asyncio.sleep(0.05)

        asyncio.run(main())
    """,
    "lost_destroyed_unawaited": """
        import asyncio, gc

        async def boom():
            await asyncio.sleep(0)
            raise ValueError("boom here")  # SITE: lost-exception

        async def waiter(fut):
            await fut

        async def log_event():
            pass

        def keep_for_later():
            c = log_event()  # SITE: unawaited-coroutine
            return None

        async def main():
            loop = asyncio.get_running_loop()
            t = asyncio.create_task(boom())
            loop.create_task(waiter(loop.create_future()))  # SITE: destroyed-pending
            log_event()  # SITE: unawaited-coroutine
            keep_for_later()
            await asyncio.sleep(0.05)
            del t
            gc.collect()

        asyncio.run(main())
    """,
    "leaks": """
        import asyncio, gc, socket

        async def serve(reader, writer):
            writer.write(b"hi\\n")
            await writer.drain()
            writer.close()

        async def main():
            server = await asyncio.start_server(serve, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # SITE: resource-leak
            await reader.readline()
            del reader, writer
            gc.collect()
            s = socket.socket()  # SITE: resource-leak
            del s
            server.close()
            await server.wait_closed()

        asyncio.run(main())
        loop = asyncio.new_event_loop()  # SITE: resource-leak
        del loop
        gc.collect()
    """,
    "clean": """
        import asyncio, sys

        async def child(n):
            try:
                await asyncio.sleep(0.01 * n)
            except asyncio.CancelledError:
                await asyncio.sleep(0)
                raise

        async def main():
            tasks = [asyncio.create_task(child(n)) for n in range(5)]
            tasks[-1].cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await asyncio.wait_for(child(100), 0.01)
            except asyncio.TimeoutError:
                pass
            if sys.version_info >= (3, 11):
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(child(1))
            reader, writer = await asyncio.open_connection(*server_addr)
            writer.close()
            await writer.wait_closed()

        async def serve(reader, writer):
            writer.close()

        async def run():
            global server_addr
            server = await asyncio.start_server(serve, "127.0.0.1", 0)
            server_addr = server.sockets[0].getsockname()[:2]
            async with server:
                await main()

        asyncio.run(run())
    """,
}


def expected_sites(source):
    marks = []
    for lineno, line in enumerate(source.splitlines(), 1):
        m = re.search(r"# SITE: ([a-z-]+)", line)
        if m:
            marks.append((m.group(1), lineno))
    return sorted(marks)


@pytest.mark.parametrize("interp", interpreters())
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_findings_at_marked_lines(interp, name, tmp_path):
    source = textwrap.dedent(PROGRAMS[name]).lstrip()
    prog = tmp_path / (name + ".py")
    prog.write_text(source)
    report = tmp_path / "report.json"
    boot = "import aioscope, runpy; aioscope.install(json=%r); runpy.run_path(%r, run_name='__main__')" % (
        str(report), str(prog))
    env = dict(os.environ, PYTHONPATH=str(BUILD / "python"))
    env.pop("AIOSCOPE_EVENTS", None)
    proc = subprocess.run([interp, "-c", boot], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(report.read_text())["findings"]
    mine = {"unawaited-coroutine", "lost-exception", "destroyed-pending", "swallowed-cancel",
            "pending-at-exit", "resource-leak"}
    # Repeats at one site merge into one finding (a leaked connection may warn for its
    # StreamWriter and its transport): compare the set of (kind, line).
    got = sorted({(f["kind"], f["site"]["line"]) for f in found
                  if f["kind"] in mine and f["site"]["file"] == str(prog)})
    assert got == expected_sites(source), proc.stderr
    for f in found:
        if f["kind"] in ("lost-exception", "destroyed-pending", "pending-at-exit"):
            assert f.get("created_at", {}).get("file") == str(prog), f


@pytest.mark.parametrize("interp", interpreters())
def test_creation_sites_use_the_raw_frame_walk(interp, tmp_path):
    """The _PyInterpreterFrame mirror (3.11+) agreed with sys._getframe() at install, so task
    creation does not fall back to materialising frame objects."""
    env = dict(os.environ, PYTHONPATH=str(BUILD / "python"))
    env.pop("AIOSCOPE_EVENTS", None)
    out = subprocess.run([interp, "-c", "import aioscope; aioscope.install(); from aioscope import _agent;"
                          "print(_agent._raw_frame_walk)"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == "1", out.stderr
