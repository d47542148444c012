"""Uses the agent without the CLI: import aioscope; aioscope.install() at the top."""
import asyncio
import time

import aioscope

aioscope.install()


async def main():
    time.sleep(0.2)  # EXPECT: blocking-call
    print("done")


asyncio.run(main())
