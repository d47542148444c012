# LOOPS: asyncio
# No false report: a task waits for a subprocess (its pipe and its exit can deliver).
import asyncio
import sys

import _dl


async def main():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(2); print('child done')",
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    print(out.decode().strip(), flush=True)


_dl.run(main)
