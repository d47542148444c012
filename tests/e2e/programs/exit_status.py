"""Ends in the way argv[1] says, after one blocking call: "exit" is sys.exit(7), "raise" an
uncaught exception, "ok" a normal return."""
import sys
import time

import _e2e


async def main():
    time.sleep(0.2)  # EXPECT: blocking-call
    print("about to", sys.argv[1], flush=True)
    if sys.argv[1] == "exit":
        sys.exit(7)
    if sys.argv[1] == "raise":
        raise LookupError("no such order")


_e2e.run(main)
