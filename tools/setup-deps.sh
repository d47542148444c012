#!/bin/sh
# Installs what aioscope's end-to-end tests and benchmarks need beyond the build itself:
#   - pytest and pytest-xdist for the `python3` on PATH (it drives tests/e2e/),
#   - uvloop for every pyenv CPython 3.8-3.13 that exists (the programs run on it too),
#   - meson and ninja when missing (the build).
# Idempotent and quiet: a package already importable is not asked for again, so a second run
# touches no registry. Prints one line per thing it installed and nothing else on success.
# Usage: tools/setup-deps.sh
set -eu

say() { printf 'setup-deps: %s\n' "$*"; }

# pip_ensure PYTHON MODULE PACKAGE: install PACKAGE for PYTHON unless MODULE already imports.
pip_ensure() {
    "$1" -c "import $2" >/dev/null 2>&1 && return 0
    if "$1" -m pip install --quiet --disable-pip-version-check "$3" >/dev/null 2>&1; then
        say "installed $3 for $1"
    else
        say "could not install $3 for $1 (tests needing it will be skipped)" >&2
    fi
}

host_py=$(command -v python3 || true)
if [ -z "$host_py" ]; then
    say "no python3 on PATH" >&2
    exit 1
fi
pip_ensure "$host_py" pytest pytest
pip_ensure "$host_py" xdist pytest-xdist
command -v meson >/dev/null 2>&1 || pip_ensure "$host_py" mesonbuild meson
command -v ninja >/dev/null 2>&1 || pip_ensure "$host_py" ninja ninja

# The same interpreters the build makes an agent for (tools/find-pythons.sh).
here=$(dirname "$0")
for py in $("$here/find-pythons.sh"); do
    pip_ensure "$py" uvloop uvloop
done
exit 0
