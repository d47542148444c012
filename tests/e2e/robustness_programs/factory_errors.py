"""A task factory that raises for some coroutines, an exception handler that raises, and a
callback that raises into it: the program sees its own exceptions exactly as without aioscope,
and asyncio logs the handler's failure the way it always does."""
import asyncio


class FactoryRefused(Exception):
    pass


def picky_factory(loop, coro, **kwargs):
    if coro.__qualname__.startswith("refused"):
        coro.close()
        raise FactoryRefused(coro.__qualname__)
    return asyncio.Task(coro, loop=loop, **kwargs)


async def refused_job():
    return "never runs"


async def accepted_job():
    await asyncio.sleep(0)
    return "accepted"


def failing_handler(loop, context):
    print("handler called for:", context["message"])
    raise ValueError("the handler itself fails")


def broken_callback():
    raise ZeroDivisionError("in a callback")


async def main():
    loop = asyncio.get_running_loop()
    loop.set_task_factory(picky_factory)
    try:
        loop.create_task(refused_job())
    except FactoryRefused as exc:
        print("create_task raised:", type(exc).__name__, exc)
    try:
        asyncio.ensure_future(refused_job())
    except FactoryRefused as exc:
        print("ensure_future raised:", type(exc).__name__, exc)
    print("accepted task:", await loop.create_task(accepted_job()))
    print("factory still the program's:", loop.get_task_factory() is picky_factory)

    loop.set_exception_handler(failing_handler)
    loop.call_soon(broken_callback)
    await asyncio.sleep(0.01)
    print("handler still the program's:", loop.get_exception_handler() is failing_handler)
    loop.set_exception_handler(None)
    loop.set_task_factory(None)


asyncio.run(main())
