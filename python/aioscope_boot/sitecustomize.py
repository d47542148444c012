# The bootstrap of `aioscope run`: loaded by the program's interpreter before the program's own
# code because `aioscope run` puts this folder first on PYTHONPATH.
#
# It loads the aioscope agent from AIOSCOPE_HOME without adding anything to sys.path, then puts
# everything back the way the program would have had it: this folder leaves sys.path, PYTHONPATH
# and the AIOSCOPE_* variables leave os.environ, and the program's own sitecustomize (if any) runs.
# When the agent cannot run in this interpreter it reports one "fatal" event, which makes
# `aioscope run` print one line and exit with status 2, and the program does not start.
#
# Kept to syntax every Python 2.7+ parses, so that an unsupported interpreter gets a clear line
# rather than a SyntaxError.
import os
import sys


def _aioscope_fatal(message):
    events = os.environ.get("AIOSCOPE_EVENTS")
    line = '{"event":"fatal","message":%s}\n' % _aioscope_json_str(message)
    if events:
        fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, line.encode("utf-8"))
        os.close(fd)
    else:
        sys.stderr.write("aioscope: %s\n" % message)
    os._exit(2)


def _aioscope_json_str(s):
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _aioscope_restore_environment(here):
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    orig = os.environ.get("AIOSCOPE_ORIG_PYTHONPATH")
    if orig is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = orig


def _aioscope_forget_config():
    # Only what `aioscope run` set: the user's own AIOSCOPE_* variables stay.
    ours = os.environ.pop("AIOSCOPE_CLI_VARS", "")
    for key in ours.split(","):
        if key:
            os.environ.pop(key, None)


def _aioscope_boot():
    here = os.path.dirname(os.path.abspath(__file__))
    home = os.environ.get("AIOSCOPE_HOME") or os.path.dirname(here)
    _aioscope_restore_environment(here)

    if sys.version_info < (3, 8):
        _aioscope_fatal(
            "Python %d.%d is not supported (aioscope supports CPython 3.8 to 3.13): %s"
            % (sys.version_info[0], sys.version_info[1], sys.executable)
        )
    if sys.implementation.name != "cpython":
        _aioscope_fatal("only CPython is supported, not %s (%s)" % (sys.implementation.name, sys.executable))

    import importlib.util

    init = os.path.join(home, "aioscope", "__init__.py")
    spec = importlib.util.spec_from_file_location(
        "aioscope", init, submodule_search_locations=[os.path.join(home, "aioscope")]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["aioscope"] = module
    try:
        spec.loader.exec_module(module)
        from aioscope import _agent  # noqa: F401  (fails here when not built for this Python)
    except ImportError as exc:
        del sys.modules["aioscope"]
        import glob

        built = sorted(
            set(
                os.path.basename(p).split(".")[1].split("-")[1]
                for p in glob.glob(os.path.join(home, "aioscope", "_agent.cpython-*.so"))
            )
        )
        built = ", ".join("%s.%s" % (b[0], b[1:]) for b in built) or "none"
        _aioscope_fatal(
            "the agent is not built for Python %d.%d (%s); built for: %s. "
            "Rebuild with this interpreter: meson configure build -Dpythons=%s  (%s)"
            % (sys.version_info[0], sys.version_info[1], sys.executable, built, sys.executable, exc)
        )
    # install() reads its configuration (AIOSCOPE_EVENTS, AIOSCOPE_BLOCK_THRESHOLD, ...) from the
    # environment; then the variables go, so the program and its children see what they would
    # have seen without aioscope.
    module.install()
    _aioscope_forget_config()

    # The program's own sitecustomize, which ours shadowed, runs as it would have.
    # Ours must be back in sys.modules when there is none: site.py's `import sitecustomize` is
    # still running it, and the import machinery looks the name up when it returns.
    ours = sys.modules.pop("sitecustomize")
    try:
        import sitecustomize  # noqa: F401
    except ImportError as exc:
        sys.modules["sitecustomize"] = ours
        if getattr(exc, "name", None) != "sitecustomize":
            raise


try:
    _aioscope_boot()
except SystemExit:
    raise
except BaseException as exc:  # noqa: B902 - a broken agent must stop the run, never go unnoticed
    _aioscope_fatal("the agent failed to start: %s: %s" % (type(exc).__name__, exc))
