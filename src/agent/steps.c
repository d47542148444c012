/* steps.c: per-task busy time, step count, age and spawner, for `aioscope ps` and `top`.
 *
 * Every callback an asyncio loop runs is a Handle, run by BaseEventLoop._run_once through
 * Handle._run, which calls self._context.run(self._callback, *self._args). A task's step is such
 * a callback: the first step and every bare `yield` (sleep(0), cancellation) schedule a
 * TaskStepMethWrapper, and a task waiting on a future is woken by the future's done-callback
 * (TaskWakeupMethWrapper on 3.8/3.9, a builtin method named task_wakeup from 3.10). So at
 * install() the `run` method of contextvars.Context (a C method of a built-in type) is replaced
 * in the type's dict by another C method descriptor of the same kind, whose function calls the
 * original's C function directly. When the callable it is asked to run is a step of one of our
 * tasks it times that call (two reads of clock.c's fast clock: the CPU's cycle counter) and adds
 * it to the task's counters; anything else goes straight through.
 * Handle._run itself stays the Python function it is, so tracebacks, stacks and profilers see
 * exactly what they saw; no object is allocated per step: the cost is one C function call per
 * Context.run, plus two clock reads per task step. (A descriptor of our own type, as before,
 * cost a bound-method object and a vectorcall layer per callback. Wrapping the Python Handle._run instead
 * costs several times more: a C layer between two Python functions stops the interpreter from
 * inlining the call, and every callback then enters the evaluation loop afresh.)
 *
 * The counters live in the task's record (asc_task_stats, tasks.c); a task
 * created by the program's own task factory has none and shows as "not measured". The factory
 * notes a task's creation time and the task that was running on its loop then (its spawner)
 * through asc_steps_task_created.
 *
 * Not covered: uvloop (C handles), pure-Python tasks (asyncio.tasks._PyTask), and the first
 * step of 3.12's eager tasks (run inside Task.__init__). */
#include "agent/agent.h"
#include "agent/clock.h"
#include "agent/trace.h" /* asc_trace_step_begin/end */

#include <stdio.h>
#include <string.h>
#include <time.h>

/* ---- the step clock ---------------------------------------------------------------------------
 * Two clock reads per task step are most of what timing steps costs: they are clock.c's
 * (the CPU's cycle counter converted to CLOCK_MONOTONIC where the kernel keeps time with it,
 * ~8 ns a read, else clock_gettime, ~18 ns). */

static struct {
    PyTypeObject *step_wrapper_type;   /* _asyncio's TaskStepMethWrapper, once seen */
    PyTypeObject *wakeup_wrapper_type; /* TaskWakeupMethWrapper (3.8/3.9), once seen */
    const PyMethodDef *wakeup_def;     /* the PyMethodDef of task_wakeup (3.10+), once seen */
    PyObject *current_tasks;           /* owned: asyncio.tasks._current_tasks {loop: task} */
} asc_st;

/* ---- recognising a task's step callback ------------------------------------------------------ */

/* The task a callable given to Context.run steps, borrowed, or NULL when it is not a task step. The wrapper
 * types are private to _asyncio, so they are recognised by name the first time and by pointer
 * after. Their layout ({PyObject_HEAD; TaskObj *task; ...}) is the same on 3.8-3.13; the size
 * check guards the read. */
static PyObject *asc_task_of_callback(PyObject *cb) {
    PyTypeObject *tp = Py_TYPE(cb);
    if (tp == asc_st.step_wrapper_type || tp == asc_st.wakeup_wrapper_type)
        return *(PyObject **)((char *)cb + sizeof(PyObject));
    if (PyCFunction_Check(cb)) {
        PyCFunctionObject *f = (PyCFunctionObject *)cb;
        if (f->m_ml == asc_st.wakeup_def) return f->m_self;
        if (!asc_st.wakeup_def && f->m_self && strcmp(f->m_ml->ml_name, "task_wakeup") == 0 &&
            asc_tasks_stats(f->m_self)) {
            asc_st.wakeup_def = f->m_ml;
            return f->m_self;
        }
        return NULL;
    }
    /* Every other callable, once the wrapper types are known: nothing to compare. */
#if PY_VERSION_HEX >= 0x030A0000
    if (asc_st.step_wrapper_type) return NULL; /* 3.10+ wakes tasks with task_wakeup (above) */
#else
    if (asc_st.step_wrapper_type && asc_st.wakeup_wrapper_type) return NULL;
#endif
    if (tp->tp_basicsize < (Py_ssize_t)(sizeof(PyObject) + sizeof(PyObject *))) return NULL;
    /* 3.12+ makes them heap types named "_asyncio.TaskStepMethWrapper": compare the last part. */
    const char *dot = strrchr(tp->tp_name, '.');
    const char *short_name = dot ? dot + 1 : tp->tp_name;
    if (!asc_st.step_wrapper_type && strcmp(short_name, "TaskStepMethWrapper") == 0) {
        asc_st.step_wrapper_type = tp;
        return *(PyObject **)((char *)cb + sizeof(PyObject));
    }
#if PY_VERSION_HEX < 0x030A0000
    if (!asc_st.wakeup_wrapper_type && strcmp(short_name, "TaskWakeupMethWrapper") == 0) {
        asc_st.wakeup_wrapper_type = tp;
        return *(PyObject **)((char *)cb + sizeof(PyObject));
    }
#endif
    return NULL;
}

/* ---- the class-level Context.run ----------------------------------------------------------- */

/* Context.run's own C function (METH_FASTCALL | METH_KEYWORDS), called directly by ours. */
typedef PyObject *(*asc_fastcall_kw)(PyObject *, PyObject *const *, Py_ssize_t, PyObject *);
static asc_fastcall_kw asc_context_run_orig;

/* A task step, timed into the task's counters. The step may end the task and drop the last
 * other reference to it: the task is kept alive until the counters are updated. */
static PyObject *asc_run_step(PyObject *ctx, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames, PyObject *task, asc_task_stats *st) {
    Py_INCREF(task);
    double ns_per_tick = asc_clock.ns_per_tick;
    /* --trace (trace.c): the lock hooks take the running task and its step's start from here. */
    int traced = asc_trace_active;
    asc_trace_running outer;
    if (ns_per_tick > 0.0) { /* two counter readings; CLOCK_MONOTONIC only where needed */
        uint64_t k0 = asc_ticks();
        int64_t t0 = 0;
        if (traced) {
            t0 = asc_clock_of(k0);
            asc_trace_step_begin(&outer, task, st, t0);
        }
        PyObject *r = asc_context_run_orig(ctx, args, nargs, kwnames);
        uint64_t k1 = asc_ticks();
        if (k1 > k0) st->busy_ns += (int64_t)((double)(k1 - k0) * ns_per_tick);
        st->steps++;
        if (st->created_ns == 0) st->created_ns = asc_clock_of(k0); /* first seen at its first step */
        if (traced) {
            int64_t t1 = asc_clock_of(k1);
            asc_trace_step_end(&outer, task, st, t0, t1 > t0 ? t1 : t0);
        }
        asc_tasks_note_wait(task); /* for the deadlock check */
        if (asc_tasks_nwatched > 0) asc_tasks_after_step(task); /* a cancelled task's end */
        Py_DECREF(task);
        return r;
    }
    int64_t t0 = asc_clock_now();
    if (st->created_ns == 0) st->created_ns = t0;
    if (traced) asc_trace_step_begin(&outer, task, st, t0);
    PyObject *r = asc_context_run_orig(ctx, args, nargs, kwnames);
    int64_t t1 = asc_clock_now();
    if (t1 > t0) st->busy_ns += t1 - t0;
    st->steps++;
    if (traced) asc_trace_step_end(&outer, task, st, t0, t1 > t0 ? t1 : t0);
    asc_tasks_note_wait(task);
    if (asc_tasks_nwatched > 0) asc_tasks_after_step(task);
    Py_DECREF(task);
    return r;
}

/* Context.run(callable, *args) as a method of contextvars.Context: the same kind of method
 * descriptor as the original, so the interpreter calls it as it called the original (no bound
 * object and no layer between, where its specialisations apply), and ours calls the original's
 * C function directly. */
static PyObject *asc_context_run(PyObject *ctx, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames) {
    if (nargs >= 1 && asc_cfg.enabled) {
        PyObject *task = asc_task_of_callback(args[0]);
        asc_task_stats *st = task ? asc_tasks_stats(task) : NULL;
        if (st) return asc_run_step(ctx, args, nargs, kwnames, task, st);
    }
    return asc_context_run_orig(ctx, args, nargs, kwnames);
}

static PyMethodDef asc_context_run_def = {
    "run", (PyCFunction)(void (*)(void))asc_context_run, METH_FASTCALL | METH_KEYWORDS,
    "run($self, callable, /, *args, **kwargs)\n--\n\n"
    "Run callable(*args, **kwargs) in the context (aioscope times asyncio task steps here)."};

int asc_steps_observed(void) {
    return asc_context_run_orig != NULL && asc_cfg.enabled && !(asc_cfg.dev_off & ASC_OFF_STEPS);
}

/* ---- creation -------------------------------------------------------------------------------- */

void asc_steps_task_created(PyObject *task, PyObject *loop) {
    asc_task_stats *st = asc_tasks_stats(task);
    if (!st || (asc_cfg.dev_off & ASC_OFF_STEPS)) return;
    st->created_ns = asc_clock_now();
    PyObject *cur = NULL;
    if (asc_st.current_tasks && PyDict_CheckExact(asc_st.current_tasks)) {
        cur = PyDict_GetItemWithError(asc_st.current_tasks, loop); /* borrowed */
        if (cur) st->spawned_by = (uintptr_t)cur;
        else PyErr_Clear();
    }
    if (asc_trace_active) asc_trace_task_created(task, st, cur);
}

/* ---- init ------------------------------------------------------------------------------------ */

int asc_steps_init(PyObject *module) {
    (void)module;
    PyObject *tasks = PyImport_ImportModule("asyncio.tasks");
    if (!tasks) return -1;
    asc_st.current_tasks = PyObject_GetAttrString(tasks, "_current_tasks");
    Py_DECREF(tasks);
    if (!asc_st.current_tasks) PyErr_Clear(); /* no spawner information, nothing worse */
    if (asc_cfg.dev_off & ASC_OFF_STEPS) return 0;
    /* Context.run, a method descriptor; anything else there (someone else's) is left alone:
     * no busy time, nothing worse. */
    PyObject *dict = asc_type_dict(&PyContext_Type);
    PyObject *cur = dict ? PyDict_GetItemString(dict, "run") : NULL; /* borrowed */
    if (!cur || Py_TYPE(cur) != &PyMethodDescr_Type) return 0;
    PyMethodDef *def = ((PyMethodDescrObject *)cur)->d_method;
    if (def->ml_flags != (METH_FASTCALL | METH_KEYWORDS)) return 0;
    asc_context_run_orig = (asc_fastcall_kw)(void (*)(void))def->ml_meth;
    PyObject *run = PyDescr_NewMethod(&PyContext_Type, &asc_context_run_def);
    if (!run) return -1;
    /* A built-in type refuses setattr; its dict is written directly and the type told, which
     * drops every cached lookup of its attributes. */
    int rc = PyDict_SetItemString(dict, "run", run);
    Py_DECREF(run);
    PyType_Modified(&PyContext_Type);
    return rc;
}
