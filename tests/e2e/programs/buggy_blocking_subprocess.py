"""subprocess.run inside a coroutine: the loop waits for a child process."""
import subprocess

import _e2e


async def deploy():
    subprocess.run(["sleep", "0.4"], check=True)  # EXPECT: blocking-call min_duration=0.3
    print("deployed")


_e2e.run(deploy)
