"""Prints what the program can see of its surroundings, so that a test can compare it with and
without aioscope: arguments, working directory, environment, stdin, sys.path, the sitecustomize
it got."""
import asyncio
import os
import sys

import _e2e


async def main():
    print("argv:", sys.argv[1:])
    print("cwd:", os.getcwd())
    print("E2E_VALUE:", os.environ.get("E2E_VALUE"))
    print("PYTHONPATH:", os.environ.get("PYTHONPATH"))
    print("AIOSCOPE_ vars:", sorted(k for k in os.environ if k.startswith("AIOSCOPE")))
    print("stdin:", sys.stdin.read().strip())
    print("sys.path:", sys.path)
    print("sitecustomize:", getattr(sys.modules.get("sitecustomize"), "__file__", None))
    print("warnings filters:", len(__import__("warnings").filters))
    await asyncio.sleep(0)
    sys.exit(int(os.environ.get("E2E_EXIT", "0")))


_e2e.run(main)
