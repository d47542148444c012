"""What a program can see of its tasks must not change under aioscope: their size, type name,
default names, asyncio.Task itself, and isinstance against it, for tasks from create_task,
ensure_future, a direct Task(...) and a program's own task factory. Nor the loop's instance
attributes (a key more there slows every attribute read of the loop's own methods)."""
import asyncio
import sys

import _e2e


async def work():
    await asyncio.sleep(0)


async def main():
    loop = asyncio.get_running_loop()
    tasks = [asyncio.create_task(work()), asyncio.ensure_future(work()),
             asyncio.create_task(work(), name="named"), asyncio.Task(work())]
    loop.set_task_factory(lambda lp, coro, **kw: asyncio.Task(coro, loop=lp, **kw))
    tasks.append(asyncio.create_task(work()))
    loop.set_task_factory(None)
    tasks.append(asyncio.create_task(work()))
    for t in tasks:
        print(type(t).__name__, type(t).__module__, sys.getsizeof(t), t.get_name(),
              isinstance(t, asyncio.Task), asyncio.isfuture(t))
    print("asyncio.Task", asyncio.Task.__module__, asyncio.Task.__name__,
          asyncio.Task.__basicsize__, loop.get_task_factory())
    if hasattr(loop, "__dict__"):
        print("loop attributes", sorted(vars(loop)))
    # A cancelled task's repr lists its done callbacks: aioscope adds none on asyncio's loops
    # (under uvloop it watches how the task ends with one).
    victim = asyncio.create_task(asyncio.sleep(10))
    await asyncio.sleep(0)
    victim.cancel()
    if type(loop).__module__.startswith("asyncio"):
        print(repr(victim).replace(hex(id(victim)), "ID"))
    tasks.append(victim)
    await asyncio.gather(*tasks, return_exceptions=True)


_e2e.run(main)
