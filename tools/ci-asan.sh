#!/bin/sh
# The sanitizer part of CI: aioscope's C code with AddressSanitizer + UndefinedBehaviorSanitizer.
#
#   1. build-asan/ (gcc, -Db_sanitize=address,undefined): the core, the attach library, the CLI
#      and the C unit tests; runs the unit tests (leak checking on, any UBSan report fatal);
#   2. a subset of the end-to-end tests with that CLI on one interpreter, with the agent
#      of the ordinary build (build/python: the
#      agent is loaded by an interpreter that is not built with ASan, so it cannot be the
#      sanitized one; build-asan/e2e-home/ holds the CLI and a link to it), so every CLI run of
#      those tests is checked for memory errors and leaks;
#   3. every fuzz target of tests/fuzz/ for FUZZ_SECONDS each with clang's libFuzzer, from a
#      build-fuzz/ where everything is compiled with clang, ASan+UBSan and coverage; clang is
#      installed from Debian's packages when missing (as root). Without clang, the targets are
#      still built with gcc and replay their seed corpus.
#
# Usage: tools/ci-asan.sh [--only build|unit|e2e|fuzz] [--fuzz-seconds N] [--python PY]
#   The longer fuzzing run (documented in docs/robustness.md):
#       tools/ci-asan.sh --only fuzz --fuzz-seconds 3600
#   A target's corpus grows in build-fuzz/corpus-<target>/ between runs; crash inputs land in
#   build-fuzz/crashes/ and the script fails naming them.
# Needs build/ built first (tools/build.sh) for step 2 (AIOSCOPE_AGENT_BUILD=dir to use another).
set -eu
cd "$(dirname "$0")/.."
REPO=$(pwd)

only=""
fuzz_seconds=${FUZZ_SECONDS:-30}
e2e_python=""
while [ $# -gt 0 ]; do
    case "$1" in
    --only) only=$2; shift 2 ;;
    --fuzz-seconds) fuzz_seconds=$2; shift 2 ;;
    --python) e2e_python=$2; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "ci-asan: unknown argument $1" >&2; exit 2 ;;
    esac
done
want() { [ -z "$only" ] || [ "$only" = "$1" ]; }
say() { printf '== ci-asan: %s\n' "$*"; }

if command -v meson >/dev/null 2>&1; then MESON=meson; else MESON="python3 -m mesonbuild.mesonmain"; fi
if command -v ninja >/dev/null 2>&1; then NINJA=ninja; else NINJA="python3 -m ninja"; fi

# Every sanitizer report fails the run; stacks are symbolized.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

status=0

# ---- 1. the sanitized build ---------------------------------------------------------------------
if want build || want unit || want e2e; then
    if [ ! -f build-asan/build.ninja ]; then
        say "configuring build-asan (gcc, address+undefined)"
        # -Dfuzz=true: with gcc the fuzz targets get the replaying main (tests/fuzz/standalone_main.c).
        CC=${ASAN_CC:-gcc} $MESON setup build-asan -Db_sanitize=address,undefined -Db_lundef=false \
            -Dbuildtype=debug -Dfuzz=true >/dev/null
    fi
    # Only what the sanitizers can check here: the agent extension is loaded by interpreters that
    # are not built with ASan, so it is left out of this build (valgrind checks it, ci-valgrind.sh).
    fuzz_bins=$($NINJA -C build-asan -t targets all 2>/dev/null |
        sed -n 's|^\(tests/fuzz/fuzz_[a-z_0-9]*\): .*|\1|p' | sort -u)
    say "building the core, attach, the CLI, the unit tests and the fuzz replayers"
    $NINJA -C build-asan aioscope tests/unit/unit-tests $fuzz_bins >/dev/null
fi

# ---- 2. unit tests --------------------------------------------------------------------------------
if want unit; then
    say "C unit tests under ASan+UBSan"
    if build-asan/tests/unit/unit-tests; then :; else status=1; fi
    for bin in build-asan/tests/fuzz/fuzz_*; do
        [ -x "$bin" ] || continue
        name=$(basename "$bin")
        corpus=tests/fuzz/corpus/${name#fuzz_}
        [ -d "$corpus" ] || continue
        say "$name: replaying $corpus (gcc build, no fuzzing)"
        if "$bin" "$corpus"; then :; else status=1; fi
    done
fi

# ---- 3. end-to-end subset with the sanitized CLI ---------------------------------------------------
if want e2e; then
    agent_build=${AIOSCOPE_AGENT_BUILD:-build}
    if [ ! -d "$agent_build/python/aioscope" ]; then
        echo "ci-asan: $agent_build/ is not built (tools/build.sh): no agent for the end-to-end subset" >&2
        status=1
    else
        if [ -z "$e2e_python" ]; then
            e2e_python=$(tools/find-pythons.sh | grep -E '/3\.12\.[0-9]+/' | tail -n 1)
            [ -n "$e2e_python" ] || e2e_python=$(tools/find-pythons.sh | tail -n 1)
        fi
        say "end-to-end subset with build-asan/aioscope on $e2e_python"
        # The CLI paths: a buggy and a clean program of each kind on the stock loop, the CLI's own
        # tests, and the robustness scenarios (signals, fork, os._exit, KeyboardInterrupt...).
        # LSan reports a leak by a non-zero exit status, which those tests check.
        jobs=$(nproc 2>/dev/null || echo 2)
        # The CLI finds the agent next to itself (python/): a copy of the sanitized binary goes
        # beside a link to the ordinary build's agent package.
        home=build-asan/e2e-home
        rm -rf "$home"
        mkdir -p "$home"
        cp build-asan/aioscope "$home/aioscope"
        ln -s "$REPO/$agent_build/python" "$home/python"
        if AIOSCOPE_BIN="$REPO/$home/aioscope" \
            AIOSCOPE_E2E_PYTHONS="$e2e_python" ROBUSTNESS_TASKS=100000 \
            python3 -m pytest -q -n "$jobs" -p no:cacheprovider \
            -k "asyncio and not uvloop or robustness or cli" \
            tests/e2e/test_run_programs.py $(ls tests/e2e/test_run_cli.py tests/e2e/test_robustness.py 2>/dev/null); then
            :
        else
            status=1
        fi
    fi
fi

# ---- 4. fuzzing with libFuzzer --------------------------------------------------------------------
if want fuzz; then
    if ! command -v clang >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing clang (Debian's package) for libFuzzer"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang) >/dev/null 2>&1 || true
    fi
    if ! command -v clang >/dev/null 2>&1; then
        say "no clang: the fuzz targets only replayed their corpus (step 2); no fuzzing"
    else
        if [ ! -f build-fuzz/build.ninja ]; then
            say "configuring build-fuzz (clang, libFuzzer, address+undefined)"
            # fuzzer-no-link instruments the libraries under test for coverage; the targets link
            # libFuzzer themselves (tests/fuzz/meson.build).
            CC=clang $MESON setup build-fuzz -Dfuzz=true -Db_sanitize=address,undefined \
                -Db_lundef=false -Dc_args=-fsanitize=fuzzer-no-link >/dev/null
        fi
        targets=$($NINJA -C build-fuzz -t targets all 2>/dev/null |
            sed -n 's|^\(tests/fuzz/fuzz_[a-z_0-9]*\): .*|\1|p' | sort -u)
        if [ -z "$targets" ]; then
            echo "ci-asan: no fuzz targets in build-fuzz" >&2
            status=1
        else
            $NINJA -C build-fuzz $targets >/dev/null
        fi
        mkdir -p build-fuzz/crashes
        for t in $targets; do
            name=$(basename "$t")
            short=${name#fuzz_}
            work=build-fuzz/corpus-$name
            mkdir -p "$work"
            set -- "$work"
            [ -d "tests/fuzz/corpus/$short" ] && set -- "$@" "tests/fuzz/corpus/$short"
            dict=""
            [ -f "tests/fuzz/$short.dict" ] && dict="-dict=tests/fuzz/$short.dict"
            say "$name: fuzzing for $fuzz_seconds s"
            # -timeout: an input that takes 10 s is a hang; -rss_limit_mb: a blow-up is a bug.
            # The log is kept whole only when the target fails.
            log=build-fuzz/$name.log
            if "build-fuzz/$t" -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 \
                -print_final_stats=1 -artifact_prefix="build-fuzz/crashes/$name-" $dict "$@" \
                >"$log" 2>&1; then
                grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+.*DONE)' "$log" | tr '\n' ' '
                echo
            else
                status=1
                tail -n 60 "$log"
                echo "ci-asan: $name failed; inputs in build-fuzz/crashes/:" >&2
                ls build-fuzz/crashes/ | grep "^$name-" >&2 || true
            fi
        done
    fi
fi

if [ $status -eq 0 ]; then say "all passed"; else say "FAILED"; fi
exit $status
