"""A catastrophic regular expression: one long C call that holds the GIL the whole time, so the
blocked thread's stack can only be read without taking the GIL."""
import re

import _e2e

PATTERN = re.compile(r"(a+)+$")


async def validate(text):
    return PATTERN.match(text) is not None  # EXPECT: blocking-call min_duration=0.2


async def main():
    ok = await validate("a" * 24 + "b")
    print("valid:", ok)


_e2e.run(main)
