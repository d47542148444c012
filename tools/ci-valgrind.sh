#!/bin/sh
# The agent under valgrind: one scenario that goes through most of the agent's code (its task
# factory chained with the program's, a lost exception, a never-awaited coroutine, a blocked loop
# read by the watchdog thread from our own memory, a second thread with its own loop, a leaked
# socket, tasks still pending at exit, the at-exit report) runs as
#
#     aioscope run --json R -- valgrind --error-exitcode=99 ... PYTHON scenario.py
#
# and must end with no valgrind error (invalid reads/writes, uses of uninitialised values,
# invalid frees: exit status 99 otherwise), no memory the agent allocated definitely lost (a loss
# record with a frame in _agent.*.so), the program's own output, and a report with its findings.
# CPython's own known noise is in tools/valgrind-python.supp; PYTHONMALLOC=malloc makes every
# object allocation visible to valgrind. Takes about 30 s.
#
# Usage: tools/ci-valgrind.sh [PYTHON]   (default: pyenv's 3.12; needs build/ built: tools/build.sh)
set -eu
cd "$(dirname "$0")/.."
REPO=$(pwd)

if ! command -v valgrind >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind) >/dev/null 2>&1 || true
    fi
    command -v valgrind >/dev/null 2>&1 || { echo "ci-valgrind: valgrind is not installed" >&2; exit 1; }
fi

python=${1:-$(tools/find-pythons.sh | grep -E '/3\.12\.[0-9]+/' | tail -n 1)}
[ -n "$python" ] || python=$(tools/find-pythons.sh | tail -n 1)
aioscope=${AIOSCOPE_BIN:-$REPO/build/aioscope}
[ -x "$aioscope" ] || { echo "ci-valgrind: $aioscope is not built (tools/build.sh)" >&2; exit 1; }

work=$(mktemp -d /tmp/aioscope-valgrind-XXXXXX)
trap 'rm -rf "$work"' EXIT

cat >"$work/scenario.py" <<'EOF'
import asyncio
import socket
import threading
import time

made = []


def counting_factory(loop, coro, **kwargs):
    task = asyncio.Task(coro, loop=loop, **kwargs)
    made.append(task)
    return task


async def explode():
    await asyncio.sleep(0)
    raise ValueError("lost")                      # lost-exception


async def refresh():
    await asyncio.sleep(0)


async def forever():
    await asyncio.sleep(3600)


async def worker_loop():
    await asyncio.gather(*(asyncio.sleep(0.001) for _ in range(50)))


async def main():
    loop = asyncio.get_running_loop()
    loop.set_task_factory(counting_factory)
    loop.create_task(explode())
    refresh()                                     # unawaited-coroutine
    sock = socket.socket()                        # resource-leak (never closed)
    del sock
    thread = threading.Thread(target=asyncio.run, args=(worker_loop(),))
    thread.start()
    thread.join()
    await asyncio.sleep(0.1)
    time.sleep(2.5)                               # blocking-call (threshold 1 s)
    await asyncio.sleep(0.1)
    await asyncio.gather(*(asyncio.sleep(0.001) for _ in range(200)))
    asyncio.ensure_future(forever())              # pending at exit (cancelled by asyncio.run)
    await asyncio.sleep(0)
    print("tasks made through the program's factory:", len(made))


asyncio.run(main())
print("done")
EOF

echo "== ci-valgrind: $python under valgrind with the agent"
set +e
PYTHONMALLOC=malloc "$aioscope" run --quiet --block-threshold 1 --json "$work/report.json" -- \
    valgrind -q --error-exitcode=99 --suppressions="$REPO/tools/valgrind-python.supp" \
    --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=none \
    --num-callers=40 --log-file="$work/valgrind.log" \
    "$python" "$work/scenario.py" >"$work/stdout" 2>"$work/stderr"
code=$?
set -e

status=0
if [ $code -ne 0 ]; then
    echo "ci-valgrind: exit status $code (99: valgrind found errors)" >&2
    status=1
fi
if [ -s "$work/valgrind.log" ] && grep -q 'Invalid \|uninitialised\|Mismatched free\|Syscall param' "$work/valgrind.log"; then
    echo "ci-valgrind: valgrind reported errors" >&2
    status=1
fi
# Definitely-lost blocks allocated through the agent: the loss records that name its library.
agent_leaks=$(awk '/definitely lost in loss record/ {rec = $0; keep = 0; next}
                   rec != "" && /_agent\.cpython/ {keep = 1}
                   rec != "" && /^==[0-9]+== *$/ {if (keep) print rec; rec = ""}
                   END {if (rec != "" && keep) print rec}' "$work/valgrind.log")
if [ -n "$agent_leaks" ]; then
    echo "ci-valgrind: memory allocated by the agent is definitely lost:" >&2
    echo "$agent_leaks" >&2
    status=1
fi
if [ "$(cat "$work/stdout")" != "$(printf 'tasks made through the program%ss factory: 202\ndone' "'")" ]; then
    echo "ci-valgrind: the program's output changed:" >&2
    cat "$work/stdout" >&2
    status=1
fi
python3 - "$work/report.json" <<'EOF' || status=1
import json, sys
report = json.load(open(sys.argv[1]))
kinds = sorted({f["kind"] for f in report["findings"]})
need = {"lost-exception", "unawaited-coroutine", "blocking-call"}
print("ci-valgrind: report of %s: %s" % (report.get("python"), ", ".join(kinds) or "no findings"))
missing = need - set(kinds)
if missing:
    sys.exit("ci-valgrind: the report lacks %s: the agent did not work under valgrind" % ", ".join(sorted(missing)))
EOF
if [ $status -ne 0 ]; then
    echo "--- program stderr:" >&2
    tail -n 40 "$work/stderr" >&2
    echo "--- valgrind log:" >&2
    head -n 200 "$work/valgrind.log" >&2
    echo "== ci-valgrind: FAILED"
    exit 1
fi
echo "== ci-valgrind: no valgrind errors, no agent leaks"
