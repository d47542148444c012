"""A CPU-bound loop run right on the event loop for 0.4 s."""
import time

import _e2e


def checksum(deadline):
    total = 0
    while time.perf_counter() < deadline:  # EXPECT: blocking-call@spin min_duration=0.3
        total = (total * 31 + 7) % 1000003  # EXPECT: blocking-call@spin
    return total >= 0


async def main():
    ok = checksum(time.perf_counter() + 0.4)
    print("checksum ok:", ok)


_e2e.run(main)
