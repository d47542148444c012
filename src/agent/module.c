/* module.c: the agent's module, install(), its configuration, the findings sink and exit handling.
 *
 * aioscope._agent is imported by aioscope.install() (python/aioscope/__init__.py), either from the
 * sitecustomize that `aioscope run` puts on PYTHONPATH or by a program itself. Importing it has no
 * effect on the program; install() turns the agent on: it reads the configuration the CLI passes
 * in the environment, opens the event stream, says hello, runs every part's init (which installs
 * that part's hooks) and registers the exit handling. install() is idempotent.
 *
 * Two modes, chosen by the environment:
 *   - under `aioscope run` (AIOSCOPE_EVENTS=path), every finding is appended at once to the event
 *     stream as one JSON line, written with a single write() on an O_APPEND descriptor, so that a
 *     crash or os._exit() loses nothing and a forked child's lines never interleave with ours;
 *   - without it, findings are collected in an aioscope_report (which merges repeats) and printed
 *     on stderr at exit, plus written as JSON when install(json=path) asked for it.
 *
 * Exit: an atexit callback (registered at install, so it runs after the program's own atexit
 * callbacks) reports the tasks still pending on every loop that ran, stops the watchdog thread and
 * writes the report. atexit runs on a normal end, after an uncaught exception (KeyboardInterrupt
 * from SIGINT included) and after sys.exit(). Fork: the child keeps a working agent (watchdog.c
 * re-creates the watchdog thread there) and starts with an empty report of its own. */
#include "agent/agent.h"
#include "agent/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aioscope/json.h"

asc_config asc_cfg = {
    .block_threshold_s = 0.1,
    .stuck_after_s = 30.0,
    .enabled = 0,
};

/* The agent is a process-wide singleton (see agent.h), hence one static struct. Every field is
 * used with the GIL held. */
static struct {
    int events_fd;            /* AIOSCOPE_EVENTS, or -1 without the CLI */
    aioscope_report *report;  /* owned; every finding, merged (kept in both modes, for json=) */
    char *json_path;          /* owned; install(json=...) */
    char *python_version;     /* owned, "3.12.1" */
    long install_pid;         /* getpid() at install; a forked child differs */
    int exit_done;            /* the at-exit report was written */
    PyObject *module;         /* borrowed: lives as long as the interpreter (held by sys.modules) */
} asc_mod = {.events_fd = -1};

/* ---- the event stream ---------------------------------------------------------------------- */

/* Append one whole line to the event stream. One write() per line: with O_APPEND the kernel
 * places it atomically at the end of the file, so lines from a forked child never interleave
 * with ours. A short write (a full disk) is not retried: a torn line would corrupt the stream
 * more than a lost one; the CLI skips a malformed last line. */
void asc_events_write(const aioscope_buf *b) {
    if (asc_mod.events_fd < 0 || b->oom || b->len == 0) return;
    ssize_t n;
    do {
        n = write(asc_mod.events_fd, b->data, b->len);
    } while (n < 0 && errno == EINTR);
}

void asc_emit(aioscope_finding *f) {
    if (asc_mod.events_fd >= 0) {
        aioscope_buf b;
        aioscope_buf_init(&b);
        aioscope_event_finding(&b, f);
        asc_events_write(&b);
        aioscope_buf_free(&b);
    }
    /* The in-memory report is kept under the CLI too: install(json=...) may ask for the JSON,
     * and merging keeps it small (one entry per kind and site). */
    if (asc_mod.report) (void)aioscope_report_add_finding(asc_mod.report, f);
    if (asc_trace_active) asc_trace_finding(f); /* --trace: an instant on the timeline */
    aioscope_finding_clear(f);
}

/* ---- configuration ------------------------------------------------------------------------- */

/* A positive finite number of seconds from the environment; dflt when unset or malformed (the
 * CLI validates --block-threshold, so a bad value here means someone set it by hand). */
static double asc_env_seconds(const char *name, double dflt) {
    const char *s = getenv(name);
    if (!s || !*s) return dflt;
    char *end = NULL;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || !(v > 0.0) || v > 1e6) return dflt;
    return v;
}

/* "3.12.1" out of Py_GetVersion()'s "3.12.1 (main, Jan ...) [GCC ...]". */
static char *asc_python_version(void) {
    const char *v = Py_GetVersion();
    size_t n = strcspn(v, " ");
    return strndup(v, n);
}

/* sys.argv as UTF-8 strings, for the hello event and the report. Returns the count, or -1 with
 * an exception set; the caller frees with asc_free_argv. */
static int asc_get_argv(char ***out) {
    *out = NULL;
    PyObject *argv = PySys_GetObject("argv"); /* borrowed; may be missing when embedded */
    if (!argv || !PyList_Check(argv)) return 0;
    Py_ssize_t n = PyList_GET_SIZE(argv);
    char **v = calloc((size_t)n + 1, sizeof *v);
    if (!v) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(argv, i);
        const char *s = PyUnicode_Check(item) ? PyUnicode_AsUTF8(item) : NULL;
        if (!s) PyErr_Clear(); /* an unencodable argument is shown as empty */
        v[i] = strdup(s ? s : "");
    }
    *out = v;
    return (int)n;
}

static void asc_free_argv(char **argv, int argc) {
    if (!argv) return;
    for (int i = 0; i < argc; i++) free(argv[i]);
    free(argv);
}

/* ---- exit ----------------------------------------------------------------------------------- */

/* Call a no-argument method of a sys attribute (sys.stdout.flush()), ignoring every error: the
 * program may have closed or replaced its streams. */
static void asc_flush_std(const char *name) {
    PyObject *stream = PySys_GetObject(name); /* borrowed */
    if (stream && stream != Py_None) {
        PyObject *r = PyObject_CallMethod(stream, "flush", NULL);
        Py_XDECREF(r);
    }
    PyErr_Clear();
}

/* The exit status, as far as it is known inside an atexit callback: the interpreter sets
 * sys.last_value (sys.last_exc on 3.12+) when it printed an uncaught exception, which makes the
 * status 1 (130 after KeyboardInterrupt, which CPython turns back into SIGINT). The argument of
 * sys.exit() is not visible from here, so it counts as 0; the CLI knows the real status. */
static int asc_guess_exit_code(void) {
    PyObject *last = PySys_GetObject("last_value"); /* borrowed */
    if (!last || last == Py_None) return 0;
    if (PyErr_GivenExceptionMatches(last, PyExc_KeyboardInterrupt)) return 130;
    if (PyErr_GivenExceptionMatches(last, PyExc_SystemExit)) return 0;
    return 1;
}

/* Write the collected report: text on stderr without the CLI (colour only on a terminal), JSON
 * when install(json=...) asked for it. A forked child prints only when it has findings, so a
 * pool of workers does not repeat "no findings" once per worker. */
static void asc_write_report(void) {
    aioscope_report *r = asc_mod.report;
    if (!r) return;
    r->exit_code = asc_guess_exit_code();
    int is_child = (long)getpid() != asc_mod.install_pid;
    if (asc_mod.events_fd < 0 && (!is_child || r->nfindings > 0)) {
        asc_flush_std("stdout");
        asc_flush_std("stderr");
        aioscope_text_options opt = {.color = isatty(STDERR_FILENO), .show_stack = 0};
        (void)aioscope_report_write_text(r, stderr, &opt);
        fflush(stderr);
    }
    if (asc_mod.json_path && !is_child) {
        FILE *out = fopen(asc_mod.json_path, "w");
        if (out) {
            (void)aioscope_report_write_json(r, out);
            fclose(out);
        } else {
            fprintf(stderr, "aioscope: cannot write %s: %s\n", asc_mod.json_path, strerror(errno));
        }
    }
}

/* atexit callback: the end of the program as the agent sees it. Runs once. */
static PyObject *asc_at_exit(PyObject *self, PyObject *unused) {
    if (asc_mod.exit_done || !asc_cfg.enabled) Py_RETURN_NONE;
    asc_mod.exit_done = 1;
    /* Loops first (pending tasks, watchdog stopped), then a collection so that tasks, transports
     * and loops that are only garbage now are finalized while the agent still reports (after
     * atexit the interpreter collects too, but the report is written by then). Their finalizers
     * would run during shutdown anyway; here they just run a moment earlier. */
    asc_loops_at_exit();
    PyObject *gc = PyImport_ImportModule("gc");
    if (gc) {
        PyObject *r = PyObject_CallMethod(gc, "collect", NULL);
        Py_XDECREF(r);
        Py_DECREF(gc);
    }
    PyErr_Clear();
    asc_write_report();
    asc_trace_at_exit(); /* --trace: after every finding is in it */
    Py_RETURN_NONE;
}

/* os.register_at_fork(before=..., after_in_parent=...), registered on 3.12+ only: from 3.12 on,
 * os.fork() warns (DeprecationWarning, shown for a fork in __main__) when the process has more
 * than one OS thread, which it counts in /proc/self/stat in the parent after the fork (3.12:
 * before the after_in_parent hooks; 3.13: after them). The agent's own threads (the watchdog,
 * the control socket's server and worker) must not make a single-threaded program's fork warn,
 * so they are stopped just before the fork and started again by a pending call, which the
 * interpreter runs once os.fork() has returned; the child starts its own (after_in_child).
 * The flags accumulate, so that a second fork before the pending call ran loses nothing. */
static struct {
    int loops, control;
} asc_fork_paused;

static PyObject *asc_before_fork(PyObject *self, PyObject *unused) {
    if (!asc_cfg.enabled) Py_RETURN_NONE;
    asc_fork_paused.loops |= asc_loops_before_fork();
    asc_fork_paused.control |= asc_control_before_fork();
    Py_RETURN_NONE;
}

static int asc_fork_resume(void *unused) {
    int loops = asc_fork_paused.loops, control = asc_fork_paused.control;
    asc_fork_paused.loops = asc_fork_paused.control = 0;
    asc_loops_after_fork_parent(loops);
    asc_control_after_fork_parent(control);
    return 0;
}

static PyObject *asc_after_fork_parent(PyObject *self, PyObject *unused) {
    if ((asc_fork_paused.loops || asc_fork_paused.control) && Py_AddPendingCall(asc_fork_resume, NULL) < 0)
        (void)asc_fork_resume(NULL); /* the queue is full: start them now, even if 3.13 then warns */
    Py_RETURN_NONE;
}

/* os.register_at_fork(after_in_child=...): the child starts with an empty report of its own, so
 * that its exit does not repeat the parent's findings. The C side of fork safety (the watchdog
 * thread and its mutex) is in watchdog.c, in a pthread_atfork handler. */
static PyObject *asc_after_fork_child(PyObject *self, PyObject *unused) {
    if (!asc_cfg.enabled) Py_RETURN_NONE;
    aioscope_report *fresh = aioscope_report_new();
    if (fresh && asc_mod.report) {
        (void)aioscope_report_set_python(fresh, asc_mod.report->python);
        (void)aioscope_report_set_argv(fresh, asc_mod.report->argc,
                                       (const char *const *)asc_mod.report->argv);
    }
    aioscope_report_free(asc_mod.report);
    asc_mod.report = fresh;
    asc_mod.exit_done = 0;
    asc_fork_paused.loops = asc_fork_paused.control = 0; /* the child restarts its own */
    asc_loops_after_fork_child();
    asc_control_after_fork_child();
    Py_RETURN_NONE;
}

/* Register a module function with atexit.register / os.register_at_fork. */
static int asc_register_exit_hooks(PyObject *module) {
    int rc = -1;
    PyObject *atexit = NULL, *os = NULL, *fn = NULL, *r = NULL;
    atexit = PyImport_ImportModule("atexit");
    if (!atexit) goto done;
    fn = PyObject_GetAttrString(module, "_at_exit");
    if (!fn) goto done;
    r = PyObject_CallMethod(atexit, "register", "O", fn);
    if (!r) goto done;
    Py_CLEAR(r);
    Py_CLEAR(fn);
    os = PyImport_ImportModule("os");
    if (!os) goto done;
    fn = PyObject_GetAttrString(module, "_after_fork_child");
    if (!fn) goto done;
    PyObject *kw = Py_BuildValue("{s:O}", "after_in_child", fn);
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *before = kw ? PyObject_GetAttrString(module, "_before_fork") : NULL;
    PyObject *parent = before ? PyObject_GetAttrString(module, "_after_fork_parent") : NULL;
    if (!parent || PyDict_SetItemString(kw, "before", before) < 0 ||
        PyDict_SetItemString(kw, "after_in_parent", parent) < 0)
        Py_CLEAR(kw);
    Py_XDECREF(before);
    Py_XDECREF(parent);
#endif
    PyObject *reg = kw ? PyObject_GetAttrString(os, "register_at_fork") : NULL;
    PyObject *args = reg ? PyTuple_New(0) : NULL;
    r = args ? PyObject_Call(reg, args, kw) : NULL;
    Py_XDECREF(args);
    Py_XDECREF(reg);
    Py_XDECREF(kw);
    if (!r) goto done;
    rc = 0;
done:
    Py_XDECREF(r);
    Py_XDECREF(fn);
    Py_XDECREF(os);
    Py_XDECREF(atexit);
    return rc;
}

/* ---- install() ------------------------------------------------------------------------------ */

/* Open the event stream and send hello. O_CLOEXEC: a program the target execs (a subprocess)
 * gets its own agent, through the environment, with its own descriptor. */
static int asc_open_events(const char *path, int argc, char **argv) {
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        PyErr_Format(PyExc_OSError, "aioscope: cannot open the event stream %s: %s", path,
                     strerror(errno));
        return -1;
    }
    asc_mod.events_fd = fd;
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_event_hello(&b, (long)getpid(), asc_mod.python_version, argc,
                         (const char *const *)argv);
    asc_events_write(&b);
    aioscope_buf_free(&b);
    return 0;
}

/* Apply install()'s arguments: json (a path or None) and block_threshold (seconds or None). */
static int asc_apply_args(PyObject *json, PyObject *threshold) {
    if (threshold && threshold != Py_None) {
        double v = PyFloat_AsDouble(threshold);
        if (v == -1.0 && PyErr_Occurred()) return -1;
        if (!(v > 0.0) || v > 1e6) {
            PyErr_SetString(PyExc_ValueError, "block_threshold must be a positive number of seconds");
            return -1;
        }
        asc_cfg.block_threshold_s = v;
        asc_loops_set_threshold(v);
    }
    if (json && json != Py_None) {
        PyObject *bytes = NULL;
        if (!PyUnicode_FSConverter(json, &bytes)) return -1;
        char *p = strdup(PyBytes_AS_STRING(bytes));
        Py_DECREF(bytes);
        if (!p) {
            PyErr_NoMemory();
            return -1;
        }
        free(asc_mod.json_path);
        asc_mod.json_path = p;
    }
    return 0;
}

/* "steps,deadlock" -> ASC_OFF_* bits; unknown names are ignored (a developer's knob). */
static int asc_env_parts(const char *name) {
    static const struct { const char *name; int bit; } parts[] = {
        {"steps", ASC_OFF_STEPS},       {"factory", ASC_OFF_FACTORY}, {"deadlock", ASC_OFF_DEADLOCK},
        {"stamp", ASC_OFF_STAMP},       {"beat", ASC_OFF_BEAT},         {"watchdog", ASC_OFF_WATCHDOG},
        {"inplace", ASC_OFF_INPLACE},
    };
    const char *s = getenv(name);
    int bits = 0;
    while (s && *s) {
        size_t n = strcspn(s, ",");
        for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
            if (strlen(parts[i].name) == n && strncmp(parts[i].name, s, n) == 0) bits |= parts[i].bit;
        s += n + (s[n] == ',');
    }
    return bits;
}

static PyObject *asc_install(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"json", "block_threshold", NULL};
    PyObject *json = Py_None, *threshold = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO:install", kwlist, &json, &threshold))
        return NULL;
    if (asc_cfg.enabled) {
        /* Idempotent: a second call (the program's own, after `aioscope run` installed the agent)
         * only updates what it names. */
        if (asc_apply_args(json, threshold) < 0) return NULL;
        Py_RETURN_NONE;
    }

    char **argv = NULL;
    int argc = 0;
    asc_cfg.block_threshold_s = asc_env_seconds("AIOSCOPE_BLOCK_THRESHOLD", 0.1);
    asc_cfg.stuck_after_s = asc_env_seconds("AIOSCOPE_STUCK_AFTER", 30.0);
    asc_loops_set_threshold(asc_cfg.block_threshold_s);
    asc_cfg.dev_off = asc_env_parts("AIOSCOPE_DEV_OFF");
    if (asc_apply_args(json, threshold) < 0) return NULL;

    asc_mod.python_version = asc_python_version();
    asc_mod.report = aioscope_report_new();
    if (!asc_mod.python_version || !asc_mod.report) {
        PyErr_NoMemory();
        goto err;
    }
    argc = asc_get_argv(&argv);
    if (argc < 0) goto err;
    (void)aioscope_report_set_python(asc_mod.report, asc_mod.python_version);
    (void)aioscope_report_set_argv(asc_mod.report, argc, (const char *const *)argv);
    asc_mod.report->agent_loaded = 1;
    asc_mod.install_pid = (long)getpid();

    const char *events = getenv("AIOSCOPE_EVENTS");
    if (events && *events && asc_open_events(events, argc, argv) < 0) goto err;
    asc_free_argv(argv, argc);
    argv = NULL;

    /* The parts' hooks go in only now: importing _agent must not change anything. enabled is set
     * first because the hooks check it. */
    asc_cfg.enabled = 1;
    asc_clock_init(); /* clock.c: the step clock, before anything is timed */
    if (asc_frames_init(module) < 0 || asc_loops_init(module) < 0 || asc_tasks_init(module) < 0 ||
        asc_coros_init(module) < 0 || asc_leaks_init(module) < 0 || asc_steps_init(module) < 0 ||
        asc_livepy_init(module) < 0 || asc_deadlock_init(module) < 0)
        goto err;
    if (asc_trace_init(module) < 0) goto err; /* --trace (AIOSCOPE_TRACE): off unless asked */
    if (asc_register_exit_hooks(module) < 0) goto err;
    asc_control_start(); /* the live view (`aioscope ps PID`): after the exit hooks, so it stops first */
    Py_RETURN_NONE;

err:
    /* A half-installed agent stays off: hooks already in place check asc_cfg.enabled. */
    asc_cfg.enabled = 0;
    asc_free_argv(argv, argc);
    return NULL;
}

/* ---- the module ----------------------------------------------------------------------------- */

static PyMethodDef asc_methods[] = {
    {"install", (PyCFunction)(void (*)(void))asc_install, METH_VARARGS | METH_KEYWORDS,
     "install(json=None, block_threshold=None): turn the agent on (idempotent)."},
    {"_at_exit", asc_at_exit, METH_NOARGS, "The agent's atexit callback (internal)."},
    {"_after_fork_child", asc_after_fork_child, METH_NOARGS, "After os.fork() in the child (internal)."},
    {"_before_fork", asc_before_fork, METH_NOARGS, "Before os.fork(), 3.12+ (internal)."},
    {"_after_fork_parent", asc_after_fork_parent, METH_NOARGS, "After os.fork() in the parent, 3.12+ (internal)."},
    {"snapshot", asc_live_snapshot_py, METH_NOARGS, "snapshot(): every thread and task, as dicts."},
    {"print_tasks", (PyCFunction)(void (*)(void))asc_live_print_tasks_py, METH_VARARGS | METH_KEYWORDS,
     "print_tasks(file=None): one line per task, like `aioscope ps`."},
    {"_snapshot_json", asc_live_snapshot_json_py, METH_NOARGS, "snapshot() as JSON text (internal)."},
    {"_set_running_loop", asc_loops_set_running_loop, METH_O,
     "Replaces asyncio.events._set_running_loop: notices every loop that starts running (internal)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef asc_moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "aioscope._agent",
    .m_doc = "The aioscope in-process agent. Use aioscope.install().",
    .m_size = -1, /* process-wide singleton state: see agent.h */
    .m_methods = asc_methods,
};

/* -fvisibility=hidden is the project default; 3.8's PyMODINIT_FUNC does not undo it. */
__attribute__((visibility("default"))) PyMODINIT_FUNC PyInit__agent(void) {
    PyObject *m = PyModule_Create(&asc_moduledef);
    if (!m) return NULL;
    if (asc_loops_module_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    asc_mod.module = m;
    return m;
}
