/* livepy.c: the live view from inside the program — aioscope.snapshot(), aioscope.print_tasks(),
 * %(taskName)s in logging formats, and the opt-in dump signal.
 *
 * snapshot() returns the same model `aioscope ps --json PID` prints, as plain dicts and lists
 * (it goes through the JSON form so that both can never disagree). print_tasks() prints the
 * `aioscope ps` table with the CLI's own printer (src/cli/snapshot_print.c, built into the agent
 * too). The dump signal (`aioscope run --dump-signal USR1`, AIOSCOPE_DUMP_SIGNAL in the
 * environment) installs a Python-level handler that writes `aioscope dump`'s text on stderr —
 * every thread's stack and every task's coroutine stack — like Go's SIGQUIT dump, and the program
 * goes on.
 *
 * taskName: Python 3.12 added LogRecord.taskName (the name of the current asyncio task). Below
 * 3.12 install() chains a LogRecord factory that sets it, so that a logging format using
 * %(taskName)s works on every supported version while the agent is installed. The factory costs
 * one dict lookup (the running loop's current task) per log record. */
#include "agent/agent.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/livesnap.h"
#include "aioscope/json.h"
#include "cli/snapshot_cli.h"

/* The snapshot's JSON as a Python str, or NULL with an exception. */
static PyObject *asc_snapshot_json_str(void) {
    aioscope_snapshot *snap = NULL;
    if (asc_live_collect(&snap) < 0) return NULL;
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_snapshot_to_json(snap, &b);
    aioscope_snapshot_free(snap);
    PyObject *s = b.oom ? PyErr_NoMemory() : PyUnicode_DecodeUTF8(b.data, (Py_ssize_t)b.len, "replace");
    aioscope_buf_free(&b);
    return s;
}

PyObject *asc_live_snapshot_json_py(PyObject *self, PyObject *unused) { return asc_snapshot_json_str(); }

PyObject *asc_live_snapshot_py(PyObject *self, PyObject *unused) {
    PyObject *text = asc_snapshot_json_str();
    if (!text) return NULL;
    PyObject *json = PyImport_ImportModule("json");
    PyObject *r = json ? PyObject_CallMethod(json, "loads", "O", text) : NULL;
    Py_XDECREF(json);
    Py_DECREF(text);
    return r;
}

/* Print one of the CLI's views of a fresh snapshot into a Python file object (sys.stdout when
 * file is None or NULL). */
static PyObject *asc_print_view(PyObject *file, void (*view)(aioscope_snapshot *, FILE *)) {
    aioscope_snapshot *snap = NULL;
    if (asc_live_collect(&snap) < 0) return NULL;
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    if (!mem) {
        aioscope_snapshot_free(snap);
        return PyErr_NoMemory();
    }
    view(snap, mem);
    fclose(mem);
    aioscope_snapshot_free(snap);
    PyObject *out = file && file != Py_None ? file : PySys_GetObject("stdout"); /* borrowed */
    PyObject *r = NULL;
    if (out && out != Py_None) r = PyObject_CallMethod(out, "write", "s#", text, (Py_ssize_t)len);
    else {
        Py_INCREF(Py_None);
        r = Py_None;
    }
    free(text);
    if (!r) return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

PyObject *asc_live_print_tasks_py(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"file", NULL};
    PyObject *file = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:print_tasks", kwlist, &file)) return NULL;
    return asc_print_view(file, asc_snap_print_table);
}

/* ---- the dump signal ------------------------------------------------------------------------ */

/* The Python-level handler: runs in the main thread between bytecodes, with the GIL, so the
 * snapshot is consistent. The text goes to sys.stderr (the program's, as it would see it). */
static PyObject *asc_dump_handler(PyObject *self, PyObject *args) {
    PyObject *err = PySys_GetObject("stderr"); /* borrowed */
    PyObject *r = asc_print_view(err, asc_snap_print_dump);
    if (!r) {
        PyErr_Clear(); /* a dump that failed must not raise into the program */
        Py_RETURN_NONE;
    }
    Py_DECREF(r);
    if (err && err != Py_None) {
        PyObject *f = PyObject_CallMethod(err, "flush", NULL);
        Py_XDECREF(f);
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

static PyMethodDef asc_dump_def = {"_dump_signal_handler", asc_dump_handler, METH_VARARGS, NULL};

/* "USR1", "SIGUSR1", "usr2" or a number -> a signal number; 0 when not one we allow. Only signals
 * whose default action is to end the program and that programs rarely use are accepted: taking
 * SIGINT or SIGTERM would change how the program stops. */
static int asc_parse_dump_signal(const char *s) {
    if (strncasecmp(s, "SIG", 3) == 0) s += 3;
    if (strcasecmp(s, "USR1") == 0) return SIGUSR1;
    if (strcasecmp(s, "USR2") == 0) return SIGUSR2;
    if (strcasecmp(s, "QUIT") == 0) return SIGQUIT;
    if (strcasecmp(s, "PWR") == 0) return SIGPWR;
    return 0;
}

static int asc_install_dump_signal(void) {
    const char *name = getenv("AIOSCOPE_DUMP_SIGNAL");
    if (!name || !*name) return 0;
    int sig = asc_parse_dump_signal(name);
    if (!sig) {
        PyErr_Format(PyExc_ValueError, "aioscope: unsupported dump signal '%s' (USR1, USR2, QUIT or PWR)", name);
        return -1;
    }
    PyObject *handler = PyCFunction_New(&asc_dump_def, NULL);
    PyObject *signal_mod = handler ? PyImport_ImportModule("signal") : NULL;
    PyObject *r = signal_mod ? PyObject_CallMethod(signal_mod, "signal", "iO", sig, handler) : NULL;
    Py_XDECREF(r);
    Py_XDECREF(signal_mod);
    Py_XDECREF(handler);
    return r ? 0 : -1;
}

/* ---- taskName in log records (below 3.12) ----------------------------------------------------- */

#if PY_VERSION_HEX < 0x030C0000
static struct {
    PyObject *orig_factory;  /* owned: the factory we chain */
    PyObject *current_tasks; /* owned: asyncio.tasks._current_tasks */
    PyObject *get_running_loop; /* owned: asyncio.events._get_running_loop (None outside a loop) */
    PyObject *s_task_name, *s_get_name;
} asc_lr;

/* The LogRecord factory: the chained factory's record, plus record.taskName (None outside a task,
 * as on 3.12). */
static PyObject *asc_record_factory(PyObject *self, PyObject *args, PyObject *kwargs) {
    PyObject *rec = PyObject_Call(asc_lr.orig_factory, args, kwargs);
    if (!rec) return NULL;
    PyObject *name = NULL;
    PyObject *loop = PyObject_CallObject(asc_lr.get_running_loop, NULL);
    if (loop && loop != Py_None && PyDict_Check(asc_lr.current_tasks)) {
        PyObject *task = PyDict_GetItemWithError(asc_lr.current_tasks, loop); /* borrowed */
        if (task) name = PyObject_CallMethodObjArgs(task, asc_lr.s_get_name, NULL);
    }
    Py_XDECREF(loop);
    PyErr_Clear();
    if (PyObject_SetAttr(rec, asc_lr.s_task_name, name ? name : Py_None) < 0) PyErr_Clear();
    Py_XDECREF(name);
    return rec;
}

static PyMethodDef asc_record_factory_def = {"aioscope_log_record_factory",
                                             (PyCFunction)(void (*)(void))asc_record_factory,
                                             METH_VARARGS | METH_KEYWORDS, NULL};

static int asc_install_task_name(void) {
    if (asc_lr.orig_factory) return 0;
    int rc = -1;
    PyObject *logging = PyImport_ImportModule("logging");
    PyObject *tasks = logging ? PyImport_ImportModule("asyncio.tasks") : NULL;
    PyObject *events = tasks ? PyImport_ImportModule("asyncio.events") : NULL;
    PyObject *fn = NULL;
    if (!events) goto done;
    asc_lr.s_task_name = PyUnicode_InternFromString("taskName");
    asc_lr.s_get_name = PyUnicode_InternFromString("get_name");
    asc_lr.current_tasks = PyObject_GetAttrString(tasks, "_current_tasks");
    asc_lr.get_running_loop = PyObject_GetAttrString(events, "_get_running_loop");
    asc_lr.orig_factory = PyObject_CallMethod(logging, "getLogRecordFactory", NULL);
    if (!asc_lr.s_task_name || !asc_lr.s_get_name || !asc_lr.current_tasks ||
        !asc_lr.get_running_loop || !asc_lr.orig_factory)
        goto done;
    fn = PyCFunction_New(&asc_record_factory_def, NULL);
    PyObject *r = fn ? PyObject_CallMethod(logging, "setLogRecordFactory", "O", fn) : NULL;
    Py_XDECREF(r);
    rc = r ? 0 : -1;
done:
    Py_XDECREF(fn);
    Py_XDECREF(events);
    Py_XDECREF(tasks);
    Py_XDECREF(logging);
    return rc;
}
#endif

int asc_livepy_init(PyObject *module) {
#if PY_VERSION_HEX < 0x030C0000
    if (asc_install_task_name() < 0) return -1;
#endif
    return asc_install_dump_signal();
}
