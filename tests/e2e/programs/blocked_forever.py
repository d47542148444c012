"""A loop that blocks and never comes back (not run by the generic program tests): the finding
can only exist if it was captured while the loop was still blocked. argv[1] chooses how:
"sleep" (time.sleep, the GIL released) or "regex" (one C call holding the GIL)."""
import re
import sys
import time

import _e2e


async def main():
    print("blocking", flush=True)
    if sys.argv[1] == "sleep":
        time.sleep(120)  # EXPECT: blocking-call@sleep
    else:
        re.match(r"(a+)+$", "a" * 60 + "b")  # EXPECT: blocking-call@regex


_e2e.run(main)
