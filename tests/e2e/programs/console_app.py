"""The module behind a console script (`svc-run`, written into a venv by the test the way pip
writes entry points): main() is the entry point."""
import asyncio
import time


async def serve():
    time.sleep(0.2)  # EXPECT: blocking-call
    print("served", flush=True)


def main():
    asyncio.run(serve())
    return 5
