/* loops.c: noticing every event loop that runs, and chaining its exception handler.
 *
 * Noticing loops. Every asyncio loop announces itself through asyncio.events._set_running_loop:
 * BaseEventLoop.run_forever calls it through the module attribute (events._set_running_loop), and
 * uvloop's Loop._run calls the function it read from asyncio._set_running_loop when uvloop was
 * imported. install() replaces both attributes with asc_loops_set_running_loop (before the program
 * imports uvloop, under `aioscope run`), which calls the original and then, for a loop that starts,
 * chains the exception handler of its type and arms its heartbeat; set_running_loop(None) at the
 * end of run_forever disarms it. Nothing runs per callback or per loop iteration.
 *
 * The first time a loop runs, tasks.c and trace.c are told (its task factory, its trace track).
 * What watches a running loop for `blocking-call` (the heartbeat, the watchdog thread, the poll
 * stamp) is in blocking.c, watchdog.c and poll_stamp.c; blocking.h is what they share with this
 * file. */
#include "agent/blocking.h"

#include <string.h>

/* ---- exception handler chaining ------------------------------------------------------------ */

/* The wrapper of call_exception_handler set on a loop type: self is the original (a function, or
 * a method descriptor for uvloop's Cython base), args are (loop, context). The agent sees the
 * context first, then the original runs as it would have: the program's own handler and its
 * output are unchanged, and whatever the original raises or returns is what the caller gets. */
/* The context the outermost wrapper on the stack is handling (borrowed, with the GIL): a
 * subclass's wrapped call_exception_handler that calls super() reaches the base's wrapper with
 * the same context, which must not be seen twice. */
static PyObject *asc_ceh_context;

static PyObject *asc_call_exception_handler(PyObject *orig, PyObject *args, PyObject *kwargs) {
    PyObject *outer = asc_ceh_context;
    if (asc_cfg.enabled && PyTuple_GET_SIZE(args) == 2 && !kwargs &&
        PyTuple_GET_ITEM(args, 1) != outer) {
        asc_saved_error saved;
        asc_save_error(&saved);
        if (asc_tasks_on_exception_context(PyTuple_GET_ITEM(args, 0), PyTuple_GET_ITEM(args, 1)) < 0)
            asc_drop_error("exception context");
        asc_restore_error(&saved);
        asc_ceh_context = PyTuple_GET_ITEM(args, 1);
    }
    PyObject *r = PyObject_Call(orig, args, kwargs);
    asc_ceh_context = outer;
    return r;
}

/* The first class of type's MRO whose own __dict__ holds name (borrowed), or NULL. */
static PyObject *asc_defining_class(PyObject *type, const char *name) {
    PyObject *mro = ((PyTypeObject *)type)->tp_mro; /* borrowed tuple */
    if (!mro || !PyTuple_Check(mro)) return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); i++) {
        PyObject *cls = PyTuple_GET_ITEM(mro, i);
        PyObject *dict = PyObject_GetAttrString(cls, "__dict__");
        int has = dict ? PyMapping_HasKeyString(dict, name) : 0;
        Py_XDECREF(dict);
        PyErr_Clear();
        if (has) return cls;
    }
    return NULL;
}

static PyMethodDef asc_ceh_def = {
    "call_exception_handler", (PyCFunction)(void (*)(void))asc_call_exception_handler,
    METH_VARARGS | METH_KEYWORDS, "call_exception_handler, seen by aioscope first."};

/* Wrap call_exception_handler where type(loop) gets it from, once: a type whose attribute already
 * is our wrapper (set on it or inherited from a base we wrapped) is left alone. The wrapper goes
 * on the class that defines the method (BaseEventLoop for asyncio's loops), so that whoever
 * replaces it there later (a test's mock.patch of BaseEventLoop.call_exception_handler) replaces
 * the wrapper and sees its replacement called, as without aioscope. A defining class that cannot
 * be changed (uvloop's C base) gets the wrapper on type(loop) instead; a type that cannot be
 * changed either keeps its handler unseen. */
static void asc_chain_exception_handler(PyObject *loop) {
    PyObject *type = (PyObject *)Py_TYPE(loop);
    PyObject *cur = PyObject_GetAttrString(type, "call_exception_handler");
    if (!cur) {
        PyErr_Clear();
        return;
    }
    /* An instancemethod read from its class gives back the function it wraps. */
    if (PyCFunction_Check(cur) &&
        PyCFunction_GET_FUNCTION(cur) == (PyCFunction)(void (*)(void))asc_call_exception_handler) {
        Py_DECREF(cur);
        return;
    }
    /* Only a method as a class defines it: something else put there by the program (a test's
     * MagicMock while it patches the class) is the program's to call and to inspect. */
    const char *tn = Py_TYPE(cur)->tp_name;
    size_t tl = strlen(tn);
    if (!PyFunction_Check(cur) && !PyObject_TypeCheck(cur, &PyMethodDescr_Type) &&
        !(tl >= 25 && strcmp(tn + tl - 25, "cython_function_or_method") == 0)) {
        Py_DECREF(cur);
        return;
    }
    PyObject *fn = PyCFunction_New(&asc_ceh_def, cur); /* holds cur */
    Py_DECREF(cur);
    PyObject *method = fn ? PyInstanceMethod_New(fn) : NULL; /* binds the loop as first argument */
    Py_XDECREF(fn);
    PyObject *owner = method ? asc_defining_class(type, "call_exception_handler") : NULL;
    if (method && (!owner || PyObject_SetAttrString(owner, "call_exception_handler", method) < 0)) {
        PyErr_Clear();
        if (owner != type && PyObject_SetAttrString(type, "call_exception_handler", method) < 0)
            PyErr_Clear();
    }
    PyErr_Clear();
    Py_XDECREF(method);
}

/* A loop started running in the calling thread. check_running: make sure it really runs. */
static void asc_loop_started(PyObject *loop, int check_running) {
    PyObject *r;
    /* _set_running_loop is also called by hand (tests, nest_asyncio-style code) for a loop that
     * is not running; such a loop has no beat to miss. */
    if (check_running) {
        r = PyObject_CallMethod(loop, "is_running", NULL);
        int running = r ? PyObject_IsTrue(r) : -1;
        Py_XDECREF(r);
        if (running <= 0) {
            PyErr_Clear();
            return;
        }
    }
    int seen = PySequence_Contains(asc_lp.seen_loops, loop);
    if (seen == 0) {
        r = PyObject_CallMethod(asc_lp.seen_loops, "add", "O", loop);
        Py_XDECREF(r);
        asc_drop_error("loop registry");
        asc_chain_exception_handler(loop);
        if (asc_tasks_on_loop_start(loop) < 0) asc_drop_error("tasks on loop start");
        if (asc_trace_on_loop_start(loop) < 0) asc_drop_error("trace on loop start");
    } else if (seen < 0) {
        asc_drop_error("loop registry");
    }

    asc_heartbeat_start(loop);
}

PyObject *asc_loops_set_running_loop(PyObject *self, PyObject *loop) {
    if (!asc_lp.orig_set_running_loop) {
        PyErr_SetString(PyExc_RuntimeError, "aioscope: the running-loop hook is not installed");
        return NULL;
    }
    if (loop == Py_None && asc_cfg.enabled) asc_loop_stopped();
    PyObject *r = PyObject_CallOneArg(asc_lp.orig_set_running_loop, loop);
    if (r && loop != Py_None && asc_cfg.enabled) asc_loop_started(loop, 1);
    return r;
}

/* uvloop imported before install() kept the original _set_running_loop (it reads
 * asyncio._set_running_loop once, at import), so its loops would go unnoticed; for that case
 * uvloop.Loop.run_forever (a Python class over the Cython base: its attributes can be set, and
 * the base's run_until_complete calls self.run_forever() through the attribute) is wrapped
 * instead. self is the original method descriptor, args (loop,). */
static PyObject *asc_uvloop_run_forever(PyObject *orig, PyObject *args, PyObject *kwargs) {
    int arm = asc_cfg.enabled && PyTuple_GET_SIZE(args) >= 1 && !asc_slot_of_this_thread();
    if (arm) {
        /* Not when another loop runs in this thread: run_forever is about to refuse anyway. */
        PyObject *running = PyObject_CallNoArgs(asc_lp.get_running_loop);
        arm = running == Py_None;
        Py_XDECREF(running);
        PyErr_Clear();
    }
    if (arm) asc_loop_started(PyTuple_GET_ITEM(args, 0), 0);
    PyObject *r = PyObject_Call(orig, args, kwargs);
    if (arm) {
        asc_saved_error saved;
        asc_save_error(&saved);
        asc_loop_stopped();
        asc_restore_error(&saved);
    }
    return r;
}

static PyMethodDef asc_uvloop_run_forever_def = {
    "run_forever", (PyCFunction)(void (*)(void))asc_uvloop_run_forever, METH_VARARGS | METH_KEYWORDS,
    "uvloop's run_forever, noticed by aioscope."};

/* When uvloop.loop is already imported, wrap uvloop.Loop.run_forever (see above). */
static void asc_hook_early_uvloop(void) {
    PyObject *modules = PyImport_GetModuleDict(); /* borrowed */
    if (!PyDict_GetItemString(modules, "uvloop.loop")) return;
    PyObject *uvloop = PyDict_GetItemString(modules, "uvloop"); /* borrowed */
    PyObject *cls = uvloop ? PyObject_GetAttrString(uvloop, "Loop") : NULL;
    PyObject *orig = cls ? PyObject_GetAttrString(cls, "run_forever") : NULL;
    PyObject *fn = orig ? PyCFunction_New(&asc_uvloop_run_forever_def, orig) : NULL;
    PyObject *method = fn ? PyInstanceMethod_New(fn) : NULL;
    if (!method || PyObject_SetAttrString(cls, "run_forever", method) < 0) PyErr_Clear();
    Py_XDECREF(method);
    Py_XDECREF(fn);
    Py_XDECREF(orig);
    Py_XDECREF(cls);
}

/* ---- init and exit ------------------------------------------------------------------------- */

/* Replace name in mod with our hook when it is the original function (a module that imported
 * asyncio's names keeps its own binding: asyncio re-exports events' names in the package). */
static int asc_hook_attr(PyObject *mod, const char *name, PyObject *hook) {
    PyObject *cur = PyObject_GetAttrString(mod, name);
    if (!cur) {
        PyErr_Clear();
        return 0;
    }
    int rc = 0;
    if (cur == asc_lp.orig_set_running_loop) rc = PyObject_SetAttrString(mod, name, hook);
    Py_DECREF(cur);
    return rc;
}

int asc_loops_init(PyObject *module) {
    int rc = -1;
    PyObject *asyncio = NULL, *events = NULL, *weakref = NULL, *hook = NULL;
    asyncio = PyImport_ImportModule("asyncio");
    events = asyncio ? PyImport_ImportModule("asyncio.events") : NULL;
    weakref = events ? PyImport_ImportModule("weakref") : NULL;
    if (!weakref) goto done;
    asc_lp.str_call_later = PyUnicode_InternFromString("call_later");
    asc_lp.str_add_reader = PyUnicode_InternFromString("add_reader");
    asc_lp.str_remove_reader = PyUnicode_InternFromString("remove_reader");
    asc_lp.str_cancel = PyUnicode_InternFromString("cancel");
    asc_lp.seen_loops = PyObject_CallMethod(weakref, "WeakSet", NULL);
    asc_lp.current_task = PyObject_GetAttrString(asyncio, "current_task");
    asc_lp.get_running_loop = PyObject_GetAttrString(events, "_get_running_loop");
    asc_lp.orig_set_running_loop = PyObject_GetAttrString(events, "_set_running_loop");
    hook = PyObject_GetAttrString(module, "_set_running_loop");
    if (!asc_lp.str_call_later || !asc_lp.str_add_reader || !asc_lp.str_remove_reader || !asc_lp.str_cancel || !asc_lp.seen_loops ||
        !asc_lp.current_task || !asc_lp.get_running_loop || !asc_lp.orig_set_running_loop || !hook || !asc_lp.period_s || !asc_lp.slow_period_s)
        goto done;
    /* asyncio.events._set_running_loop: BaseEventLoop.run_forever calls it through the module.
     * asyncio._set_running_loop: uvloop reads it at import. */
    if (asc_hook_attr(events, "_set_running_loop", hook) < 0 ||
        asc_hook_attr(asyncio, "_set_running_loop", hook) < 0)
        goto done;
    asc_hook_early_uvloop();
    /* The poll stamp's types; without them (an unusual asyncio) every loop relies on its beat. */
    PyObject *selmod = PyImport_ImportModule("selectors");
    PyObject *selev = selmod ? PyImport_ImportModule("asyncio.selector_events") : NULL;
    asc_lp.base_selector_type = selmod ? PyObject_GetAttrString(selmod, "BaseSelector") : NULL;
    asc_lp.selector_loop_type = selev ? PyObject_GetAttrString(selev, "BaseSelectorEventLoop") : NULL;
    Py_XDECREF(selev);
    Py_XDECREF(selmod);
    PyErr_Clear();
    asc_note_not_user_dirs(module);
    if (pthread_atfork(asc_atfork_prepare, asc_atfork_parent, asc_atfork_child) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "aioscope: pthread_atfork failed");
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(hook);
    Py_XDECREF(weakref);
    Py_XDECREF(events);
    Py_XDECREF(asyncio);
    return rc;
}

void asc_loops_at_exit(void) {
    asc_watchdog_stop();
    if (!asc_lp.seen_loops) return;
    PyObject *loops = PySequence_List(asc_lp.seen_loops);
    if (!loops) {
        asc_drop_error("at exit");
        return;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(loops); i++) {
        if (asc_tasks_report_pending(PyList_GET_ITEM(loops, i)) < 0) asc_drop_error("pending at exit");
    }
    Py_DECREF(loops);
}
