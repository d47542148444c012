#!/bin/sh
# Builds aioscope on a fresh machine: installs what the build and the tests need (Debian's
# compiler, gdb, ncurses, tmux, chromium; meson/ninja, pytest, uvloop per interpreter:
# tools/setup-deps.sh), then
# configures build/ once and builds it. The command lands at build/aioscope.
# Usage: tools/build.sh [extra meson setup options, used when build/ is configured first]
set -eu
cd "$(dirname "$0")/.."

# Debian packages: the compiler, gdb (layout generator), ncurses (`aioscope top`), and for the
# tests tmux (drives `top`) and chromium (loads the HTML report).
missing=""
command -v cc >/dev/null 2>&1 || missing="$missing gcc"
command -v gdb >/dev/null 2>&1 || missing="$missing gdb"
[ -f /usr/include/ncurses.h ] || missing="$missing libncurses-dev"
command -v tmux >/dev/null 2>&1 || missing="$missing tmux"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
        echo "build: needs these Debian packages: apt-get install$missing" >&2
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
