"""A program that replaces sys.excepthook, warnings.showwarning and sys.unraisablehook. Its hooks
keep being called exactly as without aioscope (for the never-awaited coroutine's warning, an
exception in __del__ and the final uncaught exception), and aioscope still reports the coroutine."""
import asyncio
import gc
import sys
import warnings


def my_showwarning(message, category, filename, lineno, file=None, line=None):
    print("my showwarning:", category.__name__, str(message).split(" was never")[0], flush=True)


def my_unraisablehook(unraisable):
    print("my unraisablehook:", type(unraisable.exc_value).__name__, unraisable.exc_value, flush=True)


def my_excepthook(etype, value, tb):
    print("my excepthook:", etype.__name__, value, flush=True)


warnings.showwarning = my_showwarning
sys.unraisablehook = my_unraisablehook
sys.excepthook = my_excepthook


class Noisy:
    def __del__(self):
        raise RuntimeError("raised in __del__")


async def refresh_cache():
    await asyncio.sleep(0)


async def main():
    refresh_cache()  # EXPECT: unawaited-coroutine
    gc.collect()
    Noisy()
    gc.collect()
    await asyncio.sleep(0.01)


asyncio.run(main())
raise SystemError("the program's own end")
