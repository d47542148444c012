#!/bin/sh
# Lists the interpreters to build the agent for, one path a line: every pyenv CPython 3.8-3.13
# (the newest patch release of each minor). Debian's /usr/bin/python3.11 shares the 3.11 ABI and
# extension suffix, so the agent built for pyenv's 3.11 serves it too.
root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
for minor in 8 9 10 11 12 13; do
    best=$(ls -d "$root"/versions/3.$minor.* 2>/dev/null | grep -E '/3\.[0-9]+\.[0-9]+$' | sort -V | tail -n 1)
    [ -n "$best" ] && [ -x "$best/bin/python3" ] && echo "$best/bin/python3"
done
exit 0
