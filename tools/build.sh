#!/bin/sh
# Builds aioscope on a fresh machine: installs what the build and the tests need (Debian's
# compiler and gdb, meson/ninja, pytest, uvloop per interpreter: tools/setup-deps.sh), then
# configures build/ once and builds it. The command lands at build/aioscope.
# Usage: tools/build.sh [extra meson setup options, used when build/ is configured first]
set -eu
cd "$(dirname "$0")/.."

if ! command -v cc >/dev/null 2>&1 || ! command -v gdb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq >/dev/null && apt-get install -y -qq gcc gdb >/dev/null
    else
        echo "build: needs a C compiler and gdb (apt-get install gcc gdb)" >&2
    fi
fi
tools/setup-deps.sh

if command -v meson >/dev/null 2>&1; then
    MESON=meson
else
    MESON="python3 -m mesonbuild.mesonmain"
fi
if [ ! -f build/build.ninja ]; then
    $MESON setup build "$@" >/dev/null
fi
if command -v ninja >/dev/null 2>&1; then
    ninja -C build >/dev/null
else
    python3 -m ninja -C build >/dev/null
fi
echo "build: build/aioscope is ready"
