#!/bin/sh
# Runs every test: the C unit tests (core and attach), then the end-to-end tests, which drive
# build/aioscope against real programs on every interpreter the agent was built for.
# Usage: tools/test.sh [pytest options, e.g. -k blocking]
set -eu
cd "$(dirname "$0")/.."
status=0
echo "== C unit tests"
build/tests/unit/unit-tests || status=1
echo "== end-to-end tests"
jobs=$(nproc 2>/dev/null || echo 2)
python3 -m pytest -q -n "$jobs" tests/e2e "$@" || status=1
exit $status
