/* steps.c: per-task busy time, step count, age and spawner, for `aioscope ps` and `top`.
 *
 * Every step of a C Task (3.8-3.13) is scheduled through the loop's call_soon, looked up as a
 * method on the loop each time: the first step and every bare `yield` (sleep(0), cancellation)
 * schedule a TaskStepMethWrapper, and a task waiting on a future is woken by the future's
 * done-callback, which the future schedules with call_soon as well (TaskWakeupMethWrapper on
 * 3.8/3.9, a builtin method named task_wakeup from 3.10). So the first time a loop of a class
 * starts, the class that defines its call_soon gets a C method descriptor in place of that
 * function (asc_call_soon below; class-level, so the loops' instance dicts and the interpreter's
 * specialisations are untouched). It passes every call through to the function unchanged, except
 * that a task's step callback is wrapped in an asc_step object which, when the loop runs it,
 * times the step (two vDSO clock reads) and adds it to the task's counters. The cost is one extra
 * C call per call_soon and one small allocation (from a free list) plus two clock reads per task
 * step; nothing else for callbacks that are not task steps.
 *
 * The counters live in the task itself (asc_task_stats in the Task subclass of tasks.c); a task
 * created by the program's own task factory has none and shows as "not measured". The first time
 * a task schedules a step (in Task.__init__) its creation time and the task that was running on
 * the loop at that moment (its spawner) are noted.
 *
 * Not covered: uvloop (a C call_soon), pure-Python tasks
 * (asyncio.tasks._PyTask), and the first step of 3.12's eager tasks (run inside __init__). */
#include "agent/agent.h"

#include <string.h>
#include <time.h>

#if PY_VERSION_HEX < 0x03090000
#define PyObject_Vectorcall _PyObject_Vectorcall
#define ASC_TPFLAGS_VECTORCALL _Py_TPFLAGS_HAVE_VECTORCALL /* provisional name in 3.8 */
#else
#define ASC_TPFLAGS_VECTORCALL Py_TPFLAGS_HAVE_VECTORCALL
#endif

/* A call_soon call has a callback, its positional arguments and context=: more than this many
 * arguments is not a task step (those pass one argument at most), so it goes through unwrapped. */
#define ASC_MAX_CALL_ARGS 8
/* Free asc_step objects kept for reuse: one loop iteration rarely schedules more task steps. */
#define ASC_STEP_FREELIST 256

int64_t asc_live_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static struct {
    PyTypeObject *step_wrapper_type;   /* _asyncio's TaskStepMethWrapper, once seen */
    PyTypeObject *wakeup_wrapper_type; /* TaskWakeupMethWrapper (3.8/3.9), once seen */
    const PyMethodDef *wakeup_def;     /* the PyMethodDef of task_wakeup (3.10+), once seen */
    PyObject *current_tasks;           /* owned: asyncio.tasks._current_tasks {loop: task} */
    PyObject *str_call_soon;           /* owned, interned */
    PyObject *freelist[ASC_STEP_FREELIST];
    int nfree;
} asc_st;

/* ---- the step wrapper: what the loop runs instead of the task's callback --------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *callback; /* owned: the task's own step/wakeup callback */
    PyObject *task;     /* owned */
    vectorcallfunc vectorcall;
} asc_step;

static PyTypeObject asc_step_type;

static PyObject *asc_step_run(asc_step *self, PyObject *const *args, size_t nargsf,
                              PyObject *kwnames) {
    /* The callback may end the task and drop the last other reference to it: keep both alive
     * until the counters are updated. */
    PyObject *task = self->task;
    Py_INCREF(task);
    int64_t t0 = asc_live_now_ns();
    PyObject *r = PyObject_Vectorcall(self->callback, args, nargsf, kwnames);
    int64_t t1 = asc_live_now_ns();
    asc_task_stats *st = asc_tasks_stats(task);
    if (st) {
        st->busy_ns += t1 - t0;
        st->steps++;
        if (asc_trace_active) asc_trace_step(task, st, t0, t1); /* --trace (trace.c) */
    }
    Py_DECREF(task);
    return r;
}

static PyObject *asc_step_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                     PyObject *kwnames) {
    return asc_step_run((asc_step *)self, args, nargsf, kwnames);
}

/* The wrapper takes part in the garbage collector: a task's exception holds a traceback whose
 * frames hold the Handle that holds this wrapper, which holds the task (a cycle through every
 * failed or cancelled step); a wrapper the collector could not see through would keep that
 * cycle, the task and everything its frames reference, alive for ever. */
static int asc_step_traverse(PyObject *self, visitproc visit, void *arg) {
    asc_step *s = (asc_step *)self;
    Py_VISIT(s->callback);
    Py_VISIT(s->task);
    return 0;
}

static int asc_step_clear(PyObject *self) {
    asc_step *s = (asc_step *)self;
    Py_CLEAR(s->callback);
    Py_CLEAR(s->task);
    return 0;
}

static void asc_step_dealloc(PyObject *self) {
    PyObject_GC_UnTrack(self);
    (void)asc_step_clear(self);
    if (asc_st.nfree < ASC_STEP_FREELIST) {
        asc_st.freelist[asc_st.nfree++] = self; /* untracked; tracked again when reused */
        return;
    }
    PyObject_GC_Del(self);
}

/* Handle.__repr__ and the loop's exception handler show the callback: show the task's own. */
static PyObject *asc_step_repr(PyObject *self) { return PyObject_Repr(((asc_step *)self)->callback); }

/* Anything else asked of the wrapper (__self__, __name__, ...) is the task callback's answer. */
static PyObject *asc_step_getattro(PyObject *self, PyObject *name) {
    return PyObject_GetAttr(((asc_step *)self)->callback, name);
}

static PyTypeObject asc_step_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aioscope._agent.TaskStep",
    .tp_basicsize = sizeof(asc_step),
    .tp_dealloc = asc_step_dealloc,
    .tp_repr = asc_step_repr,
    .tp_call = PyVectorcall_Call,
    .tp_getattro = asc_step_getattro,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | ASC_TPFLAGS_VECTORCALL,
    .tp_traverse = asc_step_traverse,
    .tp_clear = asc_step_clear,
    .tp_vectorcall_offset = offsetof(asc_step, vectorcall),
};

static PyObject *asc_step_new(PyObject *callback, PyObject *task) {
    asc_step *s;
    if (asc_st.nfree > 0) {
        s = (asc_step *)asc_st.freelist[--asc_st.nfree];
        (void)PyObject_INIT(s, &asc_step_type);
    } else {
        s = PyObject_GC_New(asc_step, &asc_step_type);
        if (!s) return NULL;
    }
    Py_INCREF(callback);
    Py_INCREF(task);
    s->callback = callback;
    s->task = task;
    s->vectorcall = asc_step_vectorcall;
    PyObject_GC_Track(s);
    return (PyObject *)s;
}

/* ---- recognising a task's step callback ------------------------------------------------------ */

/* The task a call_soon callback steps, borrowed, or NULL when it is not a task step. The wrapper
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
    if (tp->tp_basicsize < (Py_ssize_t)(sizeof(PyObject) + sizeof(PyObject *))) return NULL;
    /* 3.12+ makes them heap types named "_asyncio.TaskStepMethWrapper": compare the last part. */
    const char *dot = strrchr(tp->tp_name, '.');
    const char *short_name = dot ? dot + 1 : tp->tp_name;
    if (!asc_st.step_wrapper_type && strcmp(short_name, "TaskStepMethWrapper") == 0) {
        asc_st.step_wrapper_type = tp;
        return *(PyObject **)((char *)cb + sizeof(PyObject));
    }
    if (!asc_st.wakeup_wrapper_type && strcmp(short_name, "TaskWakeupMethWrapper") == 0) {
        asc_st.wakeup_wrapper_type = tp;
        return *(PyObject **)((char *)cb + sizeof(PyObject));
    }
    return NULL;
}

/* ---- the class-level call_soon ---------------------------------------------------------------- */

/* A method descriptor put in the dict of the loop class that defines call_soon (asyncio's
 * BaseEventLoop, or a subclass's override), in place of the function, once per class. It is
 * flagged Py_TPFLAGS_METHOD_DESCRIPTOR, so method lookups (the C Future's call_soon, and the
 * interpreter's specialised LOAD_ATTR method forms) call it unbound with the loop first, as they
 * call the function: no bound method is created, and the loops' instance dicts stay as asyncio
 * made them. (Measured, not fully explained: the same wrapping done from an instance attribute
 * cost 1.2-1.3x on queue ping-pong, this costs a few percent; a plain Python bound method put in
 * loop.__dict__ alone costs nothing measurable, so the instance dict is not the whole story.)
 * A program that sets its own loop.call_soon on an instance keeps it (instance attributes win
 * over the class's). */
typedef struct {
    PyObject_HEAD
    PyObject *orig; /* owned: the class's call_soon function, called with the loop first */
    vectorcallfunc vectorcall;
} asc_call_soon;

static PyTypeObject asc_call_soon_type;

/* A task scheduled for the first time: note when, and which task spawned it. The spawner is the
 * task running now only when this is the first step scheduled by Task.__init__ (a step callback,
 * no step run yet); a task first seen later (created before the loop ran, so before its call_soon
 * was ours) is woken by whichever task completed what it waited on, which did not spawn it. */
static void asc_note_first_schedule(PyObject *loop, PyObject *callback, asc_task_stats *st) {
    st->created_ns = asc_live_now_ns();
    if (st->steps != 0 || Py_TYPE(callback) != asc_st.step_wrapper_type) return;
    if (asc_st.current_tasks && PyDict_CheckExact(asc_st.current_tasks)) {
        PyObject *cur = PyDict_GetItemWithError(asc_st.current_tasks, loop); /* borrowed */
        if (cur) st->spawned_by = (uintptr_t)cur;
        else PyErr_Clear();
    }
}

/* args: (loop, callback, *args), kwnames: context= at most. */
static PyObject *asc_call_soon_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                          PyObject *kwnames) {
    PyObject *orig = ((asc_call_soon *)self)->orig;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *task = nargs >= 2 && nargs + nkw <= 1 + ASC_MAX_CALL_ARGS && asc_cfg.enabled
                         ? asc_task_of_callback(args[1])
                         : NULL;
    asc_task_stats *st = task ? asc_tasks_stats(task) : NULL;
    if (!st) /* not a task step of ours: straight through, the arguments untouched */
        return PyObject_Vectorcall(orig, args, nargsf, kwnames);
    PyObject *loop = args[0];
    if (st->created_ns == 0) {
        asc_note_first_schedule(loop, args[1], st);
        if (asc_trace_active) asc_trace_task_created(task, st, (PyObject *)st->spawned_by);
    }
    PyObject *stack[1 + ASC_MAX_CALL_ARGS];
    memcpy(stack, args, (size_t)(nargs + nkw) * sizeof(PyObject *));
    PyObject *wrapped = asc_step_new(args[1], task);
    if (wrapped) stack[1] = wrapped;
    else PyErr_Clear(); /* out of memory: schedule the step unmeasured */
    PyObject *r = PyObject_Vectorcall(orig, stack, (size_t)nargs, kwnames);
    Py_XDECREF(wrapped);
    return r;
}

/* loop.call_soon: bound like a function (the interpreter's method calls never get here). */
static PyObject *asc_call_soon_descr_get(PyObject *self, PyObject *obj, PyObject *type) {
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(self);
        return self;
    }
    return PyMethod_New(self, obj);
}

/* __name__, __doc__, __wrapped__-style questions: the function's answers. */
static PyObject *asc_call_soon_getattro(PyObject *self, PyObject *name) {
    PyObject *r = PyObject_GenericGetAttr(self, name);
    if (r || !PyErr_ExceptionMatches(PyExc_AttributeError)) return r;
    PyErr_Clear();
    return PyObject_GetAttr(((asc_call_soon *)self)->orig, name);
}

static int asc_call_soon_traverse(PyObject *self, visitproc visit, void *arg) {
    Py_VISIT(((asc_call_soon *)self)->orig);
    return 0;
}

static int asc_call_soon_clear(PyObject *self) {
    Py_CLEAR(((asc_call_soon *)self)->orig);
    return 0;
}

static void asc_call_soon_dealloc(PyObject *self) {
    PyObject_GC_UnTrack(self);
    asc_call_soon_clear(self);
    PyObject_GC_Del(self);
}

static PyObject *asc_call_soon_repr(PyObject *self) {
    PyObject *orig = ((asc_call_soon *)self)->orig;
    if (!orig) return PyUnicode_FromString("<call_soon>");
    return PyObject_Repr(orig);
}

static PyTypeObject asc_call_soon_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aioscope._agent.CallSoon",
    .tp_basicsize = sizeof(asc_call_soon),
    .tp_dealloc = asc_call_soon_dealloc,
    .tp_repr = asc_call_soon_repr,
    .tp_call = PyVectorcall_Call,
    .tp_getattro = asc_call_soon_getattro,
    .tp_traverse = asc_call_soon_traverse,
    .tp_clear = asc_call_soon_clear,
    .tp_descr_get = asc_call_soon_descr_get,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | ASC_TPFLAGS_VECTORCALL |
                Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_vectorcall_offset = offsetof(asc_call_soon, vectorcall),
};

/* ---- init ------------------------------------------------------------------------------------ */

int asc_steps_init(PyObject *module) {
    if (PyType_Ready(&asc_step_type) < 0 || PyType_Ready(&asc_call_soon_type) < 0) return -1;
    asc_st.str_call_soon = PyUnicode_InternFromString("call_soon");
    if (!asc_st.str_call_soon) return -1;
    PyObject *tasks = PyImport_ImportModule("asyncio.tasks");
    if (!tasks) return -1;
    asc_st.current_tasks = PyObject_GetAttrString(tasks, "_current_tasks");
    Py_DECREF(tasks);
    if (!asc_st.current_tasks) PyErr_Clear(); /* no spawner information, nothing worse */
    return 0;
}

int asc_steps_on_loop_start(PyObject *loop) {
    /* The class that defines the loop's call_soon, and what it holds there. */
    PyTypeObject *tp = Py_TYPE(loop);
    PyObject *mro = tp->tp_mro;
    if (!mro || !PyTuple_Check(mro)) return 0;
    PyObject *owner = NULL, *cur = NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro) && !cur; i++) {
        PyObject *dict = ((PyTypeObject *)PyTuple_GET_ITEM(mro, i))->tp_dict;
        cur = dict ? PyDict_GetItemWithError(dict, asc_st.str_call_soon) : NULL; /* borrowed */
        if (!cur && PyErr_Occurred()) return -1;
        if (cur) owner = PyTuple_GET_ITEM(mro, i);
    }
    if (!cur || Py_TYPE(cur) == &asc_call_soon_type) return 0; /* none, or ours already */
    /* A C call_soon (uvloop, an extension loop) or anything unusual: not ours to wrap. Static
     * types (no asyncio loop is one) cannot take attributes. */
    if (!PyFunction_Check(cur) || !(((PyTypeObject *)owner)->tp_flags & Py_TPFLAGS_HEAPTYPE))
        return 0;
    asc_call_soon *cs = PyObject_GC_New(asc_call_soon, &asc_call_soon_type);
    if (!cs) return -1;
    Py_INCREF(cur);
    cs->orig = cur;
    cs->vectorcall = asc_call_soon_vectorcall;
    PyObject_GC_Track((PyObject *)cs);
    int rc = PyObject_SetAttr(owner, asc_st.str_call_soon, (PyObject *)cs);
    Py_DECREF(cs);
    return rc;
}
