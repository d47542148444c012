"""A program with its own task factory and exception handler: aioscope must chain both (the
program's output shows they still run) and still report the lost exception."""
import asyncio

import _e2e

created = []


def counting_factory(loop, coro, **kwargs):
    task = asyncio.Task(coro, loop=loop, **kwargs)
    created.append(task.get_name())
    return task


def handler(loop, context):
    print("handler saw:", context["message"])


async def explode():
    await asyncio.sleep(0)
    raise OSError("disk full")  # EXPECT: lost-exception


async def main():
    loop = asyncio.get_running_loop()
    loop.set_task_factory(counting_factory)
    loop.set_exception_handler(handler)
    asyncio.ensure_future(explode())  # CREATED: lost-exception
    await asyncio.sleep(0.05)
    print("tasks made through the factory:", len(created))


_e2e.run(main)
