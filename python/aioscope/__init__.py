"""aioscope: a debugger for asyncio programs.

This package is the thin Python face of aioscope's in-process agent, the C extension
``aioscope._agent``. ``aioscope run app.py`` installs it before the program's own code; a program
can also install it itself::

    import aioscope
    aioscope.install()            # report on stderr at exit
    aioscope.install(json="report.json")

Importing the package changes nothing; ``install()`` turns the agent on and is idempotent.
"""

import os as _os

__all__ = ["install", "snapshot", "print_tasks"]


def install(json=None, block_threshold=None):
    """Turn the aioscope agent on for this process (a second call only updates what it names).

    json: also write the JSON report (the format of ``aioscope run --json``) to this path at exit.
    block_threshold: seconds the event loop may go without polling before a ``blocking-call``
        finding (default 0.1, or AIOSCOPE_BLOCK_THRESHOLD).
    """
    from . import _agent

    if json is not None:
        json = _os.fspath(json)
    if block_threshold is not None:
        block_threshold = float(block_threshold)
    _agent.install(json, block_threshold)


def snapshot():
    """Every thread and asyncio task of this process, as plain dicts (what ``aioscope ps --json``
    prints): names, states, coroutine stacks, what each task awaits, busy time and steps."""
    from . import _agent

    return _agent.snapshot()


def print_tasks(file=None):
    """Print the ``aioscope ps`` table of this process's tasks to file (default sys.stdout)."""
    from . import _agent

    _agent.print_tasks(file)
