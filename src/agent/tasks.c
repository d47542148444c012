/* Task-level findings: `lost-exception`, `destroyed-pending`, `swallowed-cancel`,
 * `pending-at-exit`, and the hooks on asyncio's C Task that keep what they need.
 *
 * The C Task (_asyncio.Task) is patched in place (asc_patch_task_type): its __init__, dealloc and
 * cancel() are ours, calling its own, so every task any loop makes (asyncio's, uvloop's, a
 * program's own factory's) is ours and stays exactly an asyncio.Task. What we keep per task
 * (asc_task_extra: the creation site, the cancellation state, the live view's counters) is a
 * record in the pool below, whose index the task holds in padding of the C Task (tasks.h). Where
 * no layout names that padding, a C subclass 8 bytes larger is made instead, asyncio's loops
 * make it because asyncio.tasks.Task is replaced by it, other loops through a task factory
 * (task_factory.c). __init__ notes the creation site (a walk to the first user frame); nothing
 * else happens per task: the findings come from the rare paths.
 *   - lost-exception / destroyed-pending: the Task's own finalizer reports them to the loop's
 *     exception handler; loops.c hands us every context (asc_tasks_on_exception_context) and we
 *     add the creation site we kept.
 *   - swallowed-cancel: cancel() records where the task was suspended and adds a done callback,
 *     so only cancelled tasks pay. The task must then end cancelled or by raising; ending
 *     normally with cancelling() > 0 (3.11+) means the CancelledError was caught and dropped.
 *     asyncio.timeout(), wait_for() and TaskGroup call uncancel(), which brings cancelling()
 *     back to 0: no report for them. Below 3.11 there is no cancelling(): any normal end after
 *     a cancel() that took effect is reported (best effort). A task that swallows and keeps
 *     running is caught when it is cancelled again, or when the main coroutine returns.
 *   - pending-at-exit: asyncio.runners._cancel_all_tasks (called by asyncio.run and Runner
 *     right after the main coroutine returned, before they cancel the leftovers) is wrapped, and
 *     module.c calls asc_tasks_report_pending at exit for loops still alive.
 * The chaining with a program's own factory (and the factory the subclass needs) are in
 * task_factory.c; tasks.h is what the two files share. */
#include "agent/tasks.h"
#include "attach/layouts.h"

#include <frameobject.h>
#include <stdint.h>
#include <string.h>

enum {
    ASC_TF_CANCEL_WATCHED = 1,    /* cancel() took effect; how the task ends is watched */
    ASC_TF_END_BY_STEP = 8,       /* ... at the end of its steps (asc_tasks_after_step), not by a
                                   * done callback */
    ASC_TF_REPORTED_SWALLOW = 2,  /* swallowed-cancel already reported */
    ASC_TF_REPORTED_PENDING = 4,  /* pending-at-exit already reported */
    ASC_TF_UNREGISTERED = 16,     /* finished in its eager first step (3.12+): in no registry */
};

asc_tasks_state asc_t;
int asc_tasks_nwatched; /* tasks with ASC_TF_END_BY_STEP: steps.c looks only when there are some */

static PyObject *asc_on_cancel_done(PyObject *unused, PyObject *task);

/* The loop a task took (a new reference; NULL when unknown): its field in place where the layout
 * is known (checked against _loop on the first task asked), else the attribute. */
static PyObject *asc_task_loop(PyObject *task)
{
    if (asc_t.loop_offset >= 0 && !asc_t.loop_checked) {
        PyObject *loop = PyObject_GetAttr(task, asc_t.loop_attr_str);
        if (loop != *(PyObject **)((char *)task + asc_t.loop_offset)) asc_t.loop_offset = -1;
        Py_XDECREF(loop);
        PyErr_Clear();
        asc_t.loop_checked = 1;
    }
    if (asc_t.loop_offset >= 0) {
        PyObject *loop = *(PyObject **)((char *)task + asc_t.loop_offset);
        Py_XINCREF(loop);
        return loop;
    }
    PyObject *loop = PyObject_GetAttr(task, asc_t.loop_attr_str);
    if (loop == NULL)
        PyErr_Clear();
    return loop;
}

/* 1 when steps.c sees the end of every step of loop's tasks: it times the steps of asyncio's own
 * loops (Context.run); uvloop runs its callbacks from C. */
static int asc_loop_steps_seen(PyObject *loop)
{
    if (loop == NULL || !asc_steps_observed() || asc_t.base_loop_type == NULL)
        return 0;
    int r = PyObject_IsInstance(loop, asc_t.base_loop_type) == 1;
    PyErr_Clear();
    return r;
}

/* 1 when the end of task will be seen at the end of one of its steps. */
static int asc_end_seen_by_steps(PyObject *task)
{
    if (!asc_steps_observed())
        return 0;
    PyObject *loop = asc_task_loop(task);
    int r = asc_loop_steps_seen(loop);
    Py_XDECREF(loop);
    return r;
}

void asc_tasks_after_step(PyObject *task)
{
    asc_task_extra *x = asc_extra(task);
    if (x == NULL || !(x->flags & ASC_TF_END_BY_STEP))
        return;
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyObject *done = PyObject_CallMethod(task, "done", NULL);
    int is_done = done ? PyObject_IsTrue(done) : -1;
    Py_XDECREF(done);
    if (is_done == 1) {
        x->flags &= ~ASC_TF_END_BY_STEP;
        asc_tasks_nwatched--;
        PyObject *r = asc_on_cancel_done(NULL, task);
        Py_XDECREF(r);
    }
    PyErr_Clear();
    PyErr_Restore(et, ev, etb);
}

/* Unpack x->cancel_state into borrowed references (code NULL when unknown). */
static void asc_cancel_state_get(asc_task_extra *x, asc_codeloc *site, PyObject **waiter)
{
    PyObject *t = x->cancel_state;
    if (t == NULL || !PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3)
        return;
    PyObject *code = PyTuple_GET_ITEM(t, 0);
    site->code = code == Py_None ? NULL : code;
    site->lasti = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 1));
    if (waiter)
        *waiter = PyTuple_GET_ITEM(t, 2);
}

asc_task_stats *asc_tasks_stats(PyObject *task)
{
    asc_task_extra *x = asc_extra(task);
    return x ? &x->stats : NULL;
}

/* ---- the pool of records (asc_task_extra) ---------------------------------------------------
 * Fixed-size records carved from chunks and handed out and taken back through a free list of
 * indices, with the GIL (tasks are created and destroyed with it): a few instructions each way,
 * where malloc/free would cost ~40 ns a task. Chunks are kept for the life of the process (in
 * asc_t.chunks, so that leak checkers see them reachable) and their records reused, as pymalloc
 * keeps its arenas. */
static uint32_t asc_pool_free; /* the first free record's index; 0: none */
static Py_ssize_t asc_pool_live;         /* records in use */
static Py_ssize_t asc_pool_unregistered; /* ... of tasks in none of asyncio's registries */
uint64_t *asc_pool_waiting;              /* a bit per record (agent.h) */
Py_ssize_t asc_task_waiter_off = -1;     /* the C Task's _fut_waiter, where the bits are kept */
Py_ssize_t asc_task_index_off = -1;      /* asc_t.extra_offset, for asc_tasks_note_wait */
static Py_ssize_t asc_task_state_off = -1; /* the C Task's future state (0: pending) */

/* A fresh, zeroed record for task, and its index through *index; NULL when out of memory. */
static asc_task_extra *asc_record_new(PyObject *task, uint32_t *index)
{
    if (asc_pool_free == 0) {
        uint32_t n = asc_t.nrecords;
        if (n > UINT32_MAX - ASC_POOL_CHUNK)
            return NULL;
        size_t c = n >> ASC_POOL_SHIFT;
        asc_task_extra **chunks = realloc(asc_t.chunks, (c + 1) * sizeof *chunks);
        if (chunks == NULL)
            return NULL;
        asc_t.chunks = chunks;
        size_t words = ASC_POOL_CHUNK / 64;
        uint64_t *bits = realloc(asc_pool_waiting, (c + 1) * words * sizeof *bits);
        if (bits == NULL)
            return NULL;
        asc_pool_waiting = bits;
        memset(bits + c * words, 0, words * sizeof *bits);
        /* Not zeroed here: asc_record_new zeroes each record as it hands it out. */
        asc_task_extra *chunk = malloc(ASC_POOL_CHUNK * sizeof *chunk);
        if (chunk == NULL)
            return NULL;
        chunks[c] = chunk;
        asc_t.nrecords = n + ASC_POOL_CHUNK;
        /* Index 0 (the first chunk's first record) stays unused: it means "none". */
        for (uint32_t i = n == 0 ? 1 : n; i < n + ASC_POOL_CHUNK; i++) {
            chunk[i - n].next_free = i + 1 < n + ASC_POOL_CHUNK ? i + 1 : 0;
        }
        asc_pool_free = n == 0 ? 1 : n;
    }
    uint32_t i = asc_pool_free;
    asc_task_extra *x = &asc_t.chunks[i >> ASC_POOL_SHIFT][i & (ASC_POOL_CHUNK - 1)];
    asc_pool_free = x->next_free;
    memset(x, 0, sizeof *x);
    x->owner = task;
    *index = i;
    asc_pool_live++;
    return x;
}

static void asc_record_free(asc_task_extra *x, uint32_t index)
{
    asc_pool_waiting[index >> 6] &= ~((uint64_t)1 << (index & 63));
    asc_pool_live--;
    if (x->flags & ASC_TF_UNREGISTERED)
        asc_pool_unregistered--;
    x->owner = NULL;
    x->next_free = asc_pool_free;
    asc_pool_free = index;
}

/* ---- __init__ and dealloc (of the C Task patched in place, or of the subclass) -------------- */
/* The base's dealloc runs the finalizer, which may report the task to the exception handler
 * (and so to us): it must still see our fields. So we run the finalizer first ourselves (the
 * base then sees it done: PyObject_CallFinalizerFromDealloc runs tp_finalize once), clear our
 * fields, then let the base free the object. Like CPython's subtype_dealloc, we drop the
 * reference an instance holds on its heap type only when the base type is static (3.8-3.11):
 * from 3.12 the base is a heap type whose own dealloc drops it.
 * A pending task collected with its coroutine as cyclic garbage is not finalized here but by the
 * collector, which runs the finalizers in the order of its lists: when the coroutine comes first
 * it is closed first, and asyncio's "Task was destroyed but it is pending!" shows `coro=<...
 * done ...>` rather than `running at`. That order follows where automatic collections happened to
 * fall (a collection while the task is still reachable and its coroutine is not moves the
 * coroutine behind the task), i.e. the count of allocations, which any code in the process
 * shifts (an empty sitecustomize.py flips it in tests/e2e/programs/buggy_destroyed_pending.py
 * with uvloop on 3.13.0); the subclass changes nothing in it. */
static void asc_task_dealloc(PyObject *self)
{
    if (PyObject_CallFinalizerFromDealloc(self) < 0)
        return; /* resurrected */
    PyTypeObject *tp = Py_TYPE(self);
    /* Patched in place, this is the C Task's own dealloc, which drops no type reference below
     * 3.12 (subtype_dealloc does, for a program's subclasses). */
    int decref_type = !asc_t.in_place && (tp->tp_flags & Py_TPFLAGS_HEAPTYPE) &&
                      !(asc_t.base->tp_flags & Py_TPFLAGS_HEAPTYPE);
    asc_task_extra *x = asc_extra(self);
    if (x) {
        /* Untracked while we clear, as subtype_dealloc does, so a collection cannot see the
         * object at refcount 0; the base dealloc expects it tracked again. */
        PyObject_GC_UnTrack(self);
        uint32_t *slot = (uint32_t *)((char *)self + asc_t.extra_offset);
        uint32_t index = *slot;
        *slot = 0;
        if (x->flags & ASC_TF_END_BY_STEP)
            asc_tasks_nwatched--;
        asc_codeloc_clear(&x->created);
        Py_CLEAR(x->cancel_state);
        asc_record_free(x, index);
        PyObject_GC_Track(self);
    }
    asc_t.base_dealloc(self);
    if (decref_type)
        Py_DECREF(tp);
}

/* Task.__init__: the C Task's own, then where the task was created (the innermost user frame:
 * create_task, ensure_future and a task factory add only asyncio's frames or none) and its
 * creation time and spawner for the live view. Every C Task comes here when patched in place;
 * with the subclass, tasks come from asyncio's BaseEventLoop.create_task, which calls
 * asyncio.tasks.Task (the subclass, task_factory.c), and from our task factory on other loops. */
static int asc_task_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    if (asc_t.base_init(self, args, kwds) < 0)
        return -1;
    asc_task_extra *x = asc_extra(self);
    if (x == NULL) {
        uint32_t *slot = (uint32_t *)((char *)self + asc_t.extra_offset);
        if (*slot != 0)
            return 0; /* something else wrote where the index goes: leave the task alone */
        x = asc_record_new(self, slot);
        if (x == NULL)
            return 0; /* no memory: a task like any other, without what we keep */
    }
    asc_codeloc_clear(&x->created); /* __init__ called again */
    asc_capture_creation_site(&x->created);
    if (asc_task_waiter_off >= 0) {
        /* 3.12's eager tasks ran their first step inside __init__: suspended on a future, or
         * finished, and then in none of asyncio's registries (asc_tasks_each_waiting). */
        asc_tasks_note_wait(self);
        if (*(int *)((char *)self + asc_task_state_off) != 0 && !(x->flags & ASC_TF_UNREGISTERED)) {
            x->flags |= ASC_TF_UNREGISTERED;
            asc_pool_unregistered++;
        }
    }
    PyObject *loop = asc_task_loop(self);
    if (loop) asc_steps_task_created(self, loop);
    Py_XDECREF(loop);
    return 0;
}

static int asc_report_swallowed(PyObject *task, asc_task_extra *x, const char *how);

/* 1 when the task's cancellation was taken back by uncancel() (asyncio.timeout, wait_for,
 * TaskGroup), 0 when it still counts, -1 on error. Always 0 below 3.11. */
static int asc_cancel_withdrawn(PyObject *task)
{
    if (!asc_t.has_cancelling)
        return 0;
    PyObject *n = PyObject_CallMethod(task, "cancelling", NULL);
    if (n == NULL)
        return -1;
    long v = PyLong_AsLong(n);
    Py_DECREF(n);
    return v == 0;
}

/* Has the task run since cancel()? It then awaits another future than the one cancel() cancelled
 * (a loop that swallows re-suspends at the same line, so the line alone cannot tell), or, when
 * it awaited none, it is suspended somewhere else. */
static int asc_ran_since_cancel(PyObject *task, asc_task_extra *x)
{
    PyObject *waiter = PyObject_GetAttrString(task, "_fut_waiter");
    if (waiter == NULL) {
        PyErr_Clear();
        return 0;
    }
    int ran;
    asc_codeloc then = {NULL, 0};
    PyObject *then_waiter = NULL;
    asc_cancel_state_get(x, &then, &then_waiter);
    if (then_waiter && then_waiter != Py_None) {
        ran = waiter != then_waiter;
    } else {
        PyObject *coro = PyObject_CallMethod(task, "get_coro", NULL);
        asc_codeloc now = {NULL, 0};
        if (coro)
            asc_capture_coro_site(coro, &now);
        Py_XDECREF(coro);
        PyErr_Clear();
        ran = now.code != then.code || now.lasti != then.lasti;
        asc_codeloc_clear(&now);
    }
    Py_DECREF(waiter);
    return ran;
}

/* A cancelled task that is still pending and has run since: it caught the CancelledError and
 * went on. Reported once, unless uncancel() withdrew the cancellation. */
static void asc_check_kept_running(PyObject *task, asc_task_extra *x)
{
    if (!(x->flags & ASC_TF_CANCEL_WATCHED) || (x->flags & ASC_TF_REPORTED_SWALLOW))
        return;
    PyObject *done = PyObject_CallMethod(task, "done", NULL);
    int is_done = done ? PyObject_IsTrue(done) : -1;
    Py_XDECREF(done);
    if (is_done != 0) {
        PyErr_Clear();
        return;
    }
    int withdrawn = asc_cancel_withdrawn(task);
    if (withdrawn == 0 && asc_ran_since_cancel(task, x))
        asc_report_swallowed(task, x, "kept running");
    PyErr_Clear();
}

/* 1 when cancel() is called from asyncio's TaskGroup or timeout (which wait_for uses from
 * 3.12): they take their cancellation back with uncancel() on purpose, and 3.12.1's TaskGroup
 * does not always (a child failing while __aexit__ waits leaves cancelling() at 1 though the
 * parent handles the ExceptionGroup), so their cancellations are not watched at all. */
static int asc_cancel_from_asyncio_scope(void)
{
    PyFrameObject *f = PyEval_GetFrame(); /* borrowed; cancel() is the rare path */
    if (f == NULL)
        return 0;
    PyCodeObject *code = PyFrame_GetCode(f);
    const char *file = PyUnicode_Check(code->co_filename) ? PyUnicode_AsUTF8(code->co_filename) : NULL;
    int scope = 0;
    if (file) {
        size_t n = strlen(file);
        static const char *const ends[] = {"/asyncio/taskgroups.py", "/asyncio/timeouts.py"};
        for (size_t i = 0; i < 2; i++) {
            size_t m = strlen(ends[i]);
            if (n >= m && strcmp(file + n - m, ends[i]) == 0)
                scope = 1;
        }
    }
    Py_DECREF(code);
    PyErr_Clear();
    return scope;
}

static PyObject *asc_task_cancel(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    asc_task_extra *x = asc_extra(self); /* NULL: a task without our fields */
    /* A second cancel() of a task that swallowed the first and kept running. */
    if (x && asc_cfg.enabled && (x->flags & ASC_TF_CANCEL_WATCHED))
        asc_check_kept_running(self, x);

    /* Call the base cancel with self prepended. cancel() takes one argument (msg), so 8 slots
     * are plenty; more is an error the base would raise anyway. */
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *stack[8];
    if (1 + nargs + nkw > (Py_ssize_t)(sizeof stack / sizeof stack[0])) {
        PyErr_SetString(PyExc_TypeError, "cancel() takes at most 1 argument");
        return NULL;
    }
    stack[0] = self;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++)
        stack[1 + i] = args[i];
    PyObject *r = PyObject_Vectorcall(asc_t.base_cancel, stack, 1 + nargs, kwnames);
    if (r != Py_True || x == NULL || !asc_cfg.enabled || (x->flags & ASC_TF_CANCEL_WATCHED) ||
        asc_cancel_from_asyncio_scope())
        return r;

    /* The cancellation took effect: note where the task is now and check how it ends. */
    x->flags |= ASC_TF_CANCEL_WATCHED;
    PyObject *coro = PyObject_CallMethod(self, "get_coro", NULL);
    asc_codeloc site = {NULL, 0};
    if (coro) {
        asc_capture_coro_site(coro, &site);
        Py_DECREF(coro);
    }
    /* The waiter by a strong reference, so that a new future at the same address cannot pass
     * for it; dropped when the task ends (the done callback). */
    PyObject *waiter = PyObject_GetAttrString(self, "_fut_waiter");
    PyErr_Clear();
    Py_XSETREF(x->cancel_state, Py_BuildValue("(OiO)", site.code ? site.code : Py_None, site.lasti,
                                              waiter ? waiter : Py_None));
    Py_XDECREF(waiter);
    asc_codeloc_clear(&site);
    /* How it ends: seen at the end of its last step where steps are observed, else by a done
     * callback (which the task's repr then lists: asyncio's loops never show it). */
    if (asc_end_seen_by_steps(self)) {
        x->flags |= ASC_TF_END_BY_STEP;
        asc_tasks_nwatched++;
    } else {
        PyObject *ok = PyObject_CallMethod(self, "add_done_callback", "O", asc_t.on_cancel_done);
        Py_XDECREF(ok);
    }
    PyErr_Clear(); /* the program's cancel() must behave as before, whatever happened here */
    return r;
}

/* Done callback of a cancelled task: did it end cancelled, by raising, or normally? */
static PyObject *asc_on_cancel_done(PyObject *unused, PyObject *task)
{
    asc_task_extra *x = asc_extra(task);
    if (x && x->cancel_state) { /* the task is over: let go of the waiter, keep the site */
        asc_codeloc site = {NULL, 0};
        asc_cancel_state_get(x, &site, NULL);
        Py_XSETREF(x->cancel_state, Py_BuildValue("(OiO)", site.code ? site.code : Py_None, site.lasti, Py_None));
        PyErr_Clear();
    }
    if (x == NULL || !asc_cfg.enabled || (x->flags & ASC_TF_REPORTED_SWALLOW))
        Py_RETURN_NONE;
    PyObject *cancelled = PyObject_CallMethod(task, "cancelled", NULL);
    int is_cancelled = cancelled ? PyObject_IsTrue(cancelled) : -1;
    Py_XDECREF(cancelled);
    if (is_cancelled != 0)
        goto out;
    /* `_exception` reads the exception without marking it retrieved (exception() would, and
     * so silence "Task exception was never retrieved"). */
    PyObject *exc = PyObject_GetAttrString(task, "_exception");
    int raised = exc && exc != Py_None;
    Py_XDECREF(exc);
    if (exc == NULL || raised)
        goto out;
    if (asc_cancel_withdrawn(task) == 0)
        asc_report_swallowed(task, x, "finished normally");
out:
    PyErr_Clear();
    Py_RETURN_NONE;
}

#if PY_VERSION_HEX >= 0x030D0000
/* 3.13.0's BaseEventLoop.create_task calls task.set_name(name) after a task factory even when
 * name is None, which would rename every task to "None" under our factory (without a factory
 * the task keeps its default "Task-N"). So set_name(None) is a no-op on our tasks. */
static PyObject *asc_task_set_name(PyObject *self, PyObject *value)
{
    if (value == Py_None)
        Py_RETURN_NONE;
    return PyObject_CallFunctionObjArgs(asc_t.base_set_name, self, value, NULL);
}
#endif

static PyMethodDef asc_task_methods[] = {
#if PY_VERSION_HEX >= 0x030D0000
    {"set_name", asc_task_set_name, METH_O, "Task.set_name(); None keeps the default name."},
#endif
    {"cancel", (PyCFunction)(void (*)(void))asc_task_cancel, METH_FASTCALL | METH_KEYWORDS,
     "Task.cancel(), watched by aioscope for swallowed cancellations."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef asc_on_cancel_done_def = {
    "_aioscope_on_cancel_done", asc_on_cancel_done, METH_O, "aioscope: checks how a cancelled task ended."};

/* ---- findings ---------------------------------------------------------------------------------- */
/* task id, name and creation site (when the task is ours) into f. */
static void asc_fill_task(aioscope_finding *f, PyObject *task)
{
    f->has_task = 1;
    f->task_id = (long long)(uintptr_t)task;
    PyObject *name = PyObject_CallMethod(task, "get_name", NULL);
    const char *s = name && PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
    if (s)
        f->task_name = strdup(s);
    Py_XDECREF(name);
    asc_task_extra *x = asc_extra(task);
    if (x && x->created.code) {
        (void)asc_codeloc_to_location(&x->created, &f->created_at);
    } else if (x == NULL) { /* made by the program's own factory: the attribute, if any */
        PyObject *t = PyObject_GetAttrString(task, ASC_CREATED_ATTR);
        if (t && PyTuple_Check(t) && PyTuple_GET_SIZE(t) == 2) {
            asc_codeloc loc = {PyTuple_GET_ITEM(t, 0), (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 1))};
            (void)asc_codeloc_to_location(&loc, &f->created_at);
        }
        Py_XDECREF(t);
    }
    PyErr_Clear();
}

static char *asc_task_label(const aioscope_finding *f, char *buf, size_t n)
{
    snprintf(buf, n, "%s", f->task_name ? f->task_name : "a task");
    return buf;
}

static void asc_set_message(aioscope_finding *f, const char *fmt, const char *arg)
{
    char buf[512];
    snprintf(buf, sizeof buf, fmt, arg);
    f->message = strdup(buf);
}

/* The site of a task finding whose site is "where the task was created": the creation site when
 * we have it; otherwise where the task is suspended now (the finding's stack says so). */
static void asc_site_from_creation_or_coro(aioscope_finding *f, PyObject *task)
{
    PyObject *coro = PyObject_CallMethod(task, "get_coro", NULL);
    if (coro && coro != Py_None)
        (void)asc_fill_from_coro(f, coro);
    Py_XDECREF(coro);
    PyErr_Clear();
    if (f->created_at.file) {
        aioscope_location_clear(&f->site);
        (void)aioscope_location_set(&f->site, f->created_at.file, f->created_at.line, f->created_at.function);
    }
}

static int asc_report_swallowed(PyObject *task, asc_task_extra *x, const char *how)
{
    x->flags |= ASC_TF_REPORTED_SWALLOW;
    aioscope_finding f;
    aioscope_finding_init(&f);
    f.kind = strdup("swallowed-cancel");
    f.severity = AIOSCOPE_SEV_WARNING;
    asc_fill_task(&f, task);
    char label[256], msg[400];
    snprintf(msg, sizeof msg, "%s was cancelled but %s: the CancelledError was caught and not re-raised",
             asc_task_label(&f, label, sizeof label), how);
    f.message = strdup(msg);
    asc_codeloc cancel_site = {NULL, 0};
    asc_cancel_state_get(x, &cancel_site, NULL);
    if (cancel_site.code && asc_codeloc_to_location(&cancel_site, &f.site) == 0)
        (void)aioscope_finding_push_frame(&f, f.site.file, f.site.line, f.site.function);
    else
        asc_site_from_creation_or_coro(&f, task);
    PyErr_Clear();
    asc_emit(&f);
    return 1;
}

/* "ValueError: msg" (or just the type name when the message is empty); malloc'ed. */
static char *asc_exception_text(PyObject *exc)
{
    PyObject *tname = PyObject_GetAttrString((PyObject *)Py_TYPE(exc), "__name__");
    PyObject *str = PyObject_Str(exc);
    const char *t = tname && PyUnicode_Check(tname) ? PyUnicode_AsUTF8(tname) : "exception";
    const char *m = str ? PyUnicode_AsUTF8(str) : NULL;
    size_t len = strlen(t ? t : "") + (m ? strlen(m) : 0) + 3;
    char *out = malloc(len);
    if (out)
        snprintf(out, len, (m && *m) ? "%s: %s" : "%s", t ? t : "exception", m ? m : "");
    Py_XDECREF(tname);
    Py_XDECREF(str);
    PyErr_Clear();
    return out;
}

static int asc_report_lost_exception(PyObject *task, PyObject *exc)
{
    aioscope_finding f;
    aioscope_finding_init(&f);
    f.kind = strdup("lost-exception");
    f.severity = AIOSCOPE_SEV_ERROR;
    asc_fill_task(&f, task);
    f.detail = asc_exception_text(exc);
    char label[256], msg[600];
    snprintf(msg, sizeof msg, "exception in %s was never retrieved: %s", asc_task_label(&f, label, sizeof label),
             f.detail ? f.detail : "?");
    f.message = strdup(msg);
    PyObject *tb = PyException_GetTraceback(exc);
    if (tb && tb != Py_None)
        (void)asc_fill_from_traceback(&f, tb);
    Py_XDECREF(tb);
    PyErr_Clear();
    if (f.site.file == NULL) /* set_exception() without a raise: no traceback */
        asc_site_from_creation_or_coro(&f, task);
    asc_emit(&f);
    return 1;
}

static int asc_report_destroyed_pending(PyObject *task)
{
    aioscope_finding f;
    aioscope_finding_init(&f);
    f.kind = strdup("destroyed-pending");
    f.severity = AIOSCOPE_SEV_ERROR;
    asc_fill_task(&f, task);
    char label[256];
    asc_set_message(&f, "%s was destroyed while still pending (nothing kept a reference to it)",
                    asc_task_label(&f, label, sizeof label));
    asc_site_from_creation_or_coro(&f, task);
    asc_emit(&f);
    return 1;
}

int asc_tasks_on_exception_context(PyObject *loop, PyObject *context)
{
    if (!asc_cfg.enabled || !PyDict_Check(context))
        return 0;
    PyObject *msg = PyDict_GetItemString(context, "message"); /* borrowed */
    const char *m = msg && PyUnicode_Check(msg) ? PyUnicode_AsUTF8(msg) : NULL;
    int rc = 0;
    if (m == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *task = PyDict_GetItemString(context, "task");
    PyObject *fut = PyDict_GetItemString(context, "future");
    PyObject *exc = PyDict_GetItemString(context, "exception");
    size_t ml = strlen(m);
    static const char lost_suffix[] = "exception was never retrieved";
    if (fut && exc && ml >= sizeof lost_suffix - 1 && strcmp(m + ml - (sizeof lost_suffix - 1), lost_suffix) == 0 &&
        PyObject_TypeCheck(fut, asc_t.base) && PyExceptionInstance_Check(exc))
        rc = asc_report_lost_exception(fut, exc);
    else if (task && strcmp(m, "Task was destroyed but it is pending!") == 0 &&
             PyObject_TypeCheck(task, asc_t.base))
        rc = asc_report_destroyed_pending(task);
    PyErr_Clear();
    return rc;
}

/* The coroutine of a task runs aioscope's own code: not the program's task. */
static int asc_task_is_ours(PyObject *task)
{
    PyObject *coro = PyObject_CallMethod(task, "get_coro", NULL);
    PyObject *code = coro ? PyObject_GetAttrString(coro, "cr_code") : NULL;
    int ours = code && asc_code_is_aioscope(code);
    Py_XDECREF(code);
    Py_XDECREF(coro);
    PyErr_Clear();
    return ours;
}

int asc_tasks_report_pending(PyObject *loop)
{
    if (!asc_cfg.enabled || asc_t.base == NULL)
        return 0;
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    PyObject *tasks = asyncio ? PyObject_CallMethod(asyncio, "all_tasks", "O", loop) : NULL;
    PyObject *list = tasks ? PySequence_List(tasks) : NULL;
    Py_XDECREF(tasks);
    Py_XDECREF(asyncio);
    if (list == NULL) {
        PyErr_Clear();
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        PyObject *task = PyList_GET_ITEM(list, i);
        PyObject *done = PyObject_CallMethod(task, "done", NULL);
        int is_done = done ? PyObject_IsTrue(done) : 1;
        Py_XDECREF(done);
        if (is_done || asc_task_is_ours(task))
            continue;
        asc_task_extra *x = asc_extra(task);
        if (x) {
            asc_check_kept_running(task, x);
            if (x->flags & ASC_TF_REPORTED_PENDING)
                continue;
            x->flags |= ASC_TF_REPORTED_PENDING;
        }
        aioscope_finding f;
        aioscope_finding_init(&f);
        f.kind = strdup("pending-at-exit");
        f.severity = AIOSCOPE_SEV_WARNING;
        asc_fill_task(&f, task);
        char label[256];
        asc_set_message(&f, "%s was still pending when the main coroutine returned",
                        asc_task_label(&f, label, sizeof label));
        asc_site_from_creation_or_coro(&f, task);
        if (f.site.file)
            asc_emit(&f);
        else
            aioscope_finding_clear(&f);
    }
    Py_DECREF(list);
    PyErr_Clear();
    return 0;
}

/* 1 when asyncio.run() / Runner.close() cancels the leftovers because the main coroutine raised
 * (KeyboardInterrupt from Ctrl-C included) rather than returned: the exception being handled
 * then came out of loop.run_until_complete, which the runner called (uvloop's C
 * run_until_complete leaves no frame: the runner's own `run` frame shows it). The contract's
 * `pending-at-exit` is about a main coroutine that returned; after a crash asyncio cancels what
 * is left as part of it. */
static int asc_main_raised(void)
{
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *exc = PyErr_GetHandledException();
#else
    PyObject *type, *exc, *etb;
    PyErr_GetExcInfo(&type, &exc, &etb);
    Py_XDECREF(type);
    Py_XDECREF(etb);
#endif
    if (exc == NULL || exc == Py_None || !PyExceptionInstance_Check(exc)) {
        Py_XDECREF(exc);
        return 0;
    }
    int found = 0;
    PyObject *tb = PyException_GetTraceback(exc);
    /* Bounded: the runner's frames are the outermost ones, a few entries into the chain. */
    for (int i = 0; tb != NULL && tb != Py_None && i < 64 && !found; i++) {
        PyObject *frame = PyObject_GetAttrString(tb, "tb_frame");
        PyObject *code = frame ? PyObject_GetAttrString(frame, "f_code") : NULL;
        PyObject *name = code ? PyObject_GetAttrString(code, "co_name") : NULL;
        PyObject *file = code ? PyObject_GetAttrString(code, "co_filename") : NULL;
        const char *n = name && PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
        const char *f = file && PyUnicode_Check(file) ? PyUnicode_AsUTF8(file) : NULL;
        size_t fl = f ? strlen(f) : 0;
        if (n && strcmp(n, "run_until_complete") == 0)
            found = 1;
        else if (n && f && strcmp(n, "run") == 0 &&
                 ((fl >= 18 && strcmp(f + fl - 18, "asyncio/runners.py") == 0) ||
                  (fl >= 18 && strcmp(f + fl - 18, "uvloop/__init__.py") == 0)))
            found = 1;
        Py_XDECREF(file);
        Py_XDECREF(name);
        Py_XDECREF(code);
        Py_XDECREF(frame);
        PyObject *next = PyObject_GetAttrString(tb, "tb_next");
        Py_DECREF(tb);
        tb = next;
    }
    Py_XDECREF(tb);
    Py_DECREF(exc);
    PyErr_Clear();
    return found;
}

/* asyncio.runners._cancel_all_tasks(loop), wrapped: asyncio.run() and Runner.close() call it as
 * soon as the main coroutine is over, before cancelling what is left — the moment the
 * leftovers are `pending-at-exit` (when the main coroutine returned; see asc_main_raised). */
static PyObject *asc_cancel_all_tasks(PyObject *unused, PyObject *loop)
{
    if (!asc_main_raised())
        asc_tasks_report_pending(loop);
    return PyObject_CallFunctionObjArgs(asc_t.orig_cancel_all, loop, NULL);
}

static PyMethodDef asc_cancel_all_def = {"_cancel_all_tasks", asc_cancel_all_tasks, METH_O,
                                         "asyncio.runners._cancel_all_tasks, seen by aioscope first."};

static PyObject *asc_uv_cancel_all_tasks(PyObject *unused, PyObject *loop)
{
    if (!asc_main_raised())
        asc_tasks_report_pending(loop);
    return PyObject_CallFunctionObjArgs(asc_t.uv_cancel_all, loop, NULL);
}

PyMethodDef asc_uv_cancel_all_def = {"_cancel_all_tasks", asc_uv_cancel_all_tasks, METH_O,
                                            "uvloop._cancel_all_tasks, seen by aioscope first."};

/* The subclass, where the C Task cannot be patched in place (no layout gives a place for the
 * record's index: the subclass adds `added` bytes for it). */
static int asc_make_subclass(Py_ssize_t added)
{
    PyObject *base = (PyObject *)asc_t.base;
    PyType_Slot slots[] = {
        {Py_tp_dealloc, (void *)asc_task_dealloc},
        {Py_tp_init, (void *)asc_task_init},
        {Py_tp_methods, asc_task_methods},
        {0, NULL},
    };
    /* Named _asyncio.Task so that the program sees the same repr, type name and
     * "Task exception was never retrieved" message (built from the type's name) as without
     * aioscope. Py_TPFLAGS_HAVE_GC is inherited from the base with its traverse and clear. */
    PyType_Spec spec = {
        .name = "_asyncio.Task",
        .basicsize = (int)(asc_t.base->tp_basicsize + added),
        .itemsize = 0,
        .flags = Py_TPFLAGS_DEFAULT,
        .slots = slots,
    };
    PyObject *bases = PyTuple_Pack(1, base);
    asc_t.type = bases ? (PyTypeObject *)PyType_FromSpecWithBases(&spec, bases) : NULL;
    Py_XDECREF(bases);
    return asc_t.type ? 0 : -1;
}

/* The C Task patched in place: its tp_init and tp_dealloc become ours (calling its own), its
 * __init__ slot wrapper (what a program's subclass reaches through super().__init__) calls ours,
 * and its dict's cancel is ours. Tasks then stay exactly asyncio.Task: a subclass, as before,
 * made every Python-level method call on a task (done(), result(), cancelled(): gather's done
 * callback makes several per task) miss the interpreter's specialisation for C methods, which
 * checks the exact type, and cost spawn + gather of 100 000 tasks ~3 % on 3.12 and 3.13.
 * Nothing caches these slots: type_call reads tp_init at every call (unless the type has a
 * tp_vectorcall, then we do not patch), and a subclass made later inherits ours. 0 when done. */
static int asc_patch_task_type(void)
{
    PyTypeObject *tp = asc_t.base;
#if PY_VERSION_HEX >= 0x03090000
    if (tp->tp_vectorcall != NULL)
        return -1;
#endif
    PyObject *dict = asc_type_dict(tp);
    PyObject *init = dict ? PyDict_GetItemString(dict, "__init__") : NULL; /* borrowed */
    PyMethodDef *cancel_def = NULL;
    for (PyMethodDef *m = asc_task_methods; m->ml_name; m++)
        if (strcmp(m->ml_name, "cancel") == 0)
            cancel_def = m;
    if (init == NULL || Py_TYPE(init) != &PyWrapperDescr_Type ||
        ((PyWrapperDescrObject *)init)->d_wrapped != (void *)asc_t.base_init || cancel_def == NULL) {
        PyErr_Clear();
        return -1;
    }
    /* The original's docstring (and so its __text_signature__), for help() and inspect. */
    if (Py_TYPE(asc_t.base_cancel) == &PyMethodDescr_Type)
        cancel_def->ml_doc = ((PyMethodDescrObject *)asc_t.base_cancel)->d_method->ml_doc;
    PyObject *cancel = PyDescr_NewMethod(tp, cancel_def);
    if (cancel == NULL || PyDict_SetItemString(dict, "cancel", cancel) < 0) {
        Py_XDECREF(cancel);
        PyErr_Clear();
        return -1;
    }
    Py_DECREF(cancel);
    ((PyWrapperDescrObject *)init)->d_wrapped = (void *)asc_task_init;
    tp->tp_init = asc_task_init;
    tp->tp_dealloc = asc_task_dealloc;
    PyType_Modified(tp);
    return 0;
}

/* ---- init ---------------------------------------------------------------------------------------- */
int asc_tasks_init(PyObject *module)
{
    PyObject *aio = PyImport_ImportModule("_asyncio");
    if (aio == NULL)
        return -1;
    PyObject *base = PyObject_GetAttrString(aio, "Task");
    Py_DECREF(aio);
    if (base == NULL)
        return -1;
    if (!PyType_Check(base)) {
        Py_DECREF(base);
        PyErr_SetString(PyExc_TypeError, "_asyncio.Task is not a type");
        return -1;
    }
    asc_t.base = (PyTypeObject *)base; /* owned for the life of the process */
    /* Where a task keeps its record's index: four bytes of padding in the C Task when the
     * generated layout names them and describes this Task (same size), else after the base. */
    const asc_layout *L = asc_layout_find(PY_VERSION_HEX);
    Py_ssize_t added = 8;
    asc_t.extra_offset = asc_t.base->tp_basicsize;
    if (L && L->task_spare4 >= 0 && L->sizeof_task == asc_t.base->tp_basicsize &&
        strcmp(asc_t.base->tp_name, "_asyncio.Task") == 0) {
        asc_t.extra_offset = L->task_spare4;
        added = 0;
    }
    asc_t.loop_offset = added == 0 && L->task_loop >= 0 ? L->task_loop : -1;
    asc_t.base_dealloc = asc_t.base->tp_dealloc;
    asc_t.base_init = asc_t.base->tp_init;
    asc_t.base_cancel = PyObject_GetAttrString(base, "cancel");
    asc_t.has_cancelling = PyObject_HasAttrString(base, "cancelling");
    asc_t.base_set_name = PyObject_GetAttrString(base, "set_name");
    asc_t.loop_attr_str = PyUnicode_InternFromString("_loop");
    PyObject *base_events = PyImport_ImportModule("asyncio.base_events");
    asc_t.base_loop_type = base_events ? PyObject_GetAttrString(base_events, "BaseEventLoop") : NULL;
    Py_XDECREF(base_events);
    PyErr_Clear(); /* without it, cancelled tasks are watched by a done callback */
    if (asc_t.base_cancel == NULL || asc_t.base_set_name == NULL || asc_t.loop_attr_str == NULL)
        return -1;

    if (added == 0 && !(asc_cfg.dev_off & (ASC_OFF_FACTORY | ASC_OFF_INPLACE)) && asc_patch_task_type() == 0) {
        Py_INCREF(base);
        asc_t.type = asc_t.base;
        asc_t.in_place = 1;
        if (L->task_fut_waiter >= 0 && L->task_state >= 0) {
            asc_task_waiter_off = L->task_fut_waiter;
            asc_task_index_off = asc_t.extra_offset;
            asc_task_state_off = L->task_state;
        }
    } else {
        if (asc_make_subclass(added) < 0)
            return -1;
    }

    if (asc_task_factory_init() < 0)
        return -1;
    asc_t.on_cancel_done = PyCFunction_New(&asc_on_cancel_done_def, NULL);
    if (!asc_t.on_cancel_done)
        return -1;

    PyObject *runners = PyImport_ImportModule("asyncio.runners");
    if (runners == NULL)
        return -1;
    asc_t.orig_cancel_all = PyObject_GetAttrString(runners, "_cancel_all_tasks");
    if (asc_t.orig_cancel_all) {
        PyObject *wrapper = PyCFunction_New(&asc_cancel_all_def, NULL);
        if (wrapper == NULL || PyObject_SetAttrString(runners, "_cancel_all_tasks", wrapper) < 0) {
            Py_XDECREF(wrapper);
            Py_DECREF(runners);
            return -1;
        }
        Py_DECREF(wrapper);
    }
    PyErr_Clear(); /* an asyncio without _cancel_all_tasks: exit-time reporting still works */
    Py_DECREF(runners);
    return 0;
}

int asc_tasks_each_waiting(PyObject *loop, Py_ssize_t registered,
                           int (*fn)(PyObject *task, void *arg), void *arg, int *rc)
{
    /* Every task asyncio registered has a record (the records not registered are the eagerly
     * finished ones), and every step of loop's tasks is seen. */
    if (asc_task_waiter_off < 0 || registered != asc_pool_live - asc_pool_unregistered ||
        !asc_loop_steps_seen(loop))
        return 0;
    *rc = 0;
    size_t words = asc_t.nrecords / 64;
    for (size_t w = 0; w < words; w++) {
        for (uint64_t bits = asc_pool_waiting[w]; bits; bits &= bits - 1) {
            uint32_t i = (uint32_t)(w * 64 + (size_t)__builtin_ctzll(bits));
            PyObject *task = asc_t.chunks[i >> ASC_POOL_SHIFT][i & (ASC_POOL_CHUNK - 1)].owner;
            if (task == NULL)
                continue;
            Py_INCREF(task);
            int r = fn(task, arg);
            Py_DECREF(task);
            if (r < 0) {
                *rc = r;
                return 1;
            }
        }
    }
    return 1;
}

/* For deadlock.c: where a task was created (nothing when the task is not ours). */
int asc_tasks_created_at(PyObject *task, aioscope_location *out)
{
    asc_task_extra *x = asc_extra(task);
    if (x == NULL || x->created.code == NULL)
        return 0;
    return asc_codeloc_to_location(&x->created, out);
}
