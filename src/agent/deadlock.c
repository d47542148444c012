/* deadlock.c: `deadlock` and `stuck-task`, found while the program runs.
 *
 * The check runs in the loop thread, with the GIL, from the loop's heartbeat (blocking.c), at most
 * every ASC_DL_PERIOD_NS and less often when a check is costly (the period is stretched so that
 * checking stays under ~1% of the loop's time). Nothing is hooked on the program's hot paths:
 * everything is read from the tasks as they sit suspended.
 *
 * A snapshot of the loop: its tasks (asyncio.all_tasks(loop)); per task its _fut_waiter (the future it is
 * suspended on; None when it is runnable) and its await chain (coroutine -> cr_await -> ...).
 * The innermost frame of the chain says what the task waits on: its code object is compared
 * with those of Lock.acquire, Semaphore.acquire, Condition.wait, Event.wait, Queue.get/put,
 * asyncio.wait's _wait, wait_for, TaskGroup.__aexit__, sleep; `self` in that frame is the lock,
 * event or queue. A _fut_waiter that is a Task or a gather's future is an await on other tasks.
 *
 * Who holds a lock. asyncio.Lock records no owner. But `async with lock:` keeps the bound method
 * lock.__aexit__ on the value stack of the frame for as long as the block runs (CPython pushes it
 * at BEFORE_ASYNC_WITH and calls it when the block ends), and the type's tp_traverse of a
 * suspended coroutine (3.11+) or frame (3.10) visits that stack. So a task holds a lock when a
 * coroutine of its chain has lock.__aexit__ on its stack — minus the one pushed by an `async
 * with` still waiting in acquire() (the method is pushed before __aenter__ runs), minus the one
 * whose lock a Condition.wait() released. The same works for Semaphore and Condition (whose
 * lock is held). A lock taken with a bare `await lock.acquire()` has no such mark: its holder is
 * unknown, and a task waiting for it is never part of a reported cycle (no false report; the
 * everything-asleep check below still sees it). The line where the holder acquired the lock is
 * the BEFORE_ASYNC_WITH in the holder's frame whose context expression is that lock.
 *
 * Cycles. Tasks become nodes of a wait-for graph (aioscope/waitgraph.h): a lock waiter waits on
 * the holders (released when any one releases), `await task` on that task, gather and TaskGroup
 * on their pending children (a failing child ends them, so they are blocked only while every
 * pending child is), asyncio.wait(ALL_COMPLETED) on every pending future (blocked as soon as one
 * is), wait_for on its inner task. Anything else (an Event, a Queue, a plain Future) may be
 * completed by someone, so that task is free. The tasks the graph says can never complete, and
 * the cycles holding them, are a deadlock whatever the rest of the program does — timeouts aside.
 *
 * Everything asleep. Every task of the loop waits on a future, and nothing can complete one: no
 * callback in loop._ready, no timer in loop._scheduled except the heartbeat and timeouts that
 * would only cancel waiters (wait_for's and asyncio.wait's _release_waiter, asyncio.timeout's
 * Timeout._on_timeout), no file descriptor registered with the selector except the loop's own
 * self-pipe, no signal handler, and no other Python thread except idle executor workers (a
 * thread may call call_soon_threadsafe). Only a selector loop's internals can be read this way;
 * under uvloop only the cycles are found.
 *
 * Certainty over speed: a task whose _fut_waiter changed since the previous check is free (it is
 * making progress), and a deadlock is reported once it has been seen for AIOSCOPE_DEADLOCK_AFTER
 * seconds (default 1) of checks, added up across interruptions (a timeout that breaks it and a
 * retry that re-forms it). A deadlock is named by where its tasks are suspended, so the same one
 * formed again is never reported twice.
 *
 * Cost: a task's classification is kept while it stays on the same waiter (it has not run), at
 * most ASC_DL_CLASSIFY_MAX tasks are classified per check, and holders are read only when a task
 * waits on a lock. About 2.5 ms per check with 10 000 idle tasks, 0.5 ms with a few hundred.
 * Which tasks wait is known without touching the others where the agent sees every step
 * (asyncio's own loops: asc_tasks_each_waiting); elsewhere the registries are walked.
 *
 * stuck-task (info): a task that waited on the same future for AIOSCOPE_STUCK_AFTER seconds while
 * its loop kept running, unless it sleeps, serves, or waits on other tasks (they are what is
 * slow, and they are reported themselves).
 *
 * AIOSCOPE_ON_DEADLOCK=exit: after a deadlock is reported (the event stream, and stderr at once
 * because the program may never end), the process ends with status 4 (deadlock_report.c);
 * `aioscope run --on-deadlock exit` then exits with 4 as well. */
#include "agent/deadlock.h"
#include "agent/clock.h"
#include "attach/layouts.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How often the check runs at most; with the default AIOSCOPE_DEADLOCK_AFTER of 1 s this keeps a
 * deadlock's report within about 1.25 s of its forming. */
#define ASC_DL_PERIOD_NS 200000000LL
/* The period is stretched to this many times the last check's cost (<= 1% of the loop's time). */
#define ASC_DL_COST_FACTOR 100
/* A loop with more pending tasks than this is not checked: the snapshot would cost too much. */
#define ASC_DL_MAX_TASKS 10000
/* Nor is any loop while the process has more live tasks than this (asyncio's registries, all
 * loops together, counted without walking them): finding out that a loop has too many waiting
 * tasks would itself cost a walk over every task, ~5 ms per 100 000 tasks at each check, a
 * percent or two of a program that spawns that many (bench/workloads/spawn_gather.py). */
#define ASC_DL_MAX_LIVE 50000
/* Tasks whose wait is read and classified (their await chain walked) per check at most; the
 * classification is kept while the task stays on the same waiter, so a loop with many long
 * waits pays for each once, spread over checks. */
#define ASC_DL_CLASSIFY_MAX 1000
/* Loops checked at the same time (each needs its own thread); more run unchecked. */
#define ASC_DL_MAX_LOOPS 64
/* A candidate deadlock not seen for this long is forgotten (its seen-time starts again). */
#define ASC_DL_FORGET_NS 60000000000LL

typedef struct {
    PyObject *loop_ref; /* owned weakref, NULL when the slot is free */
    int64_t next_ns;    /* the next check is due */
    int64_t period_ns;  /* the current period between checks (stretched when checks cost) */
    PyObject *seen;     /* owned dict: id(task) -> (weakref(waiter), since_ns, stuck reported,
                         * what it waits on (asc_wait, -1: not classified yet), its primitive) */
    PyObject *candidates; /* owned dict: key -> [seconds seen, last seen ns] */
    PyObject *reported; /* owned set of keys */
} asc_dl_slot;

asc_dl_state asc_dl;
static asc_dl_slot asc_dl_slots[ASC_DL_MAX_LOOPS];

/* getattr that never leaves an exception: NULL when missing. New reference. */
PyObject *asc_dl_attr(PyObject *o, const char *name) {
    if (!o) return NULL;
    PyObject *v = PyObject_GetAttrString(o, name);
    if (!v) PyErr_Clear();
    return v;
}

/* The __code__ of module.qualname (a dotted path inside the module), or NULL. */
static PyObject *asc_dl_lookup(const char *module, const char *path, int want_code) {
    PyObject *obj = PyImport_ImportModule(module);
    if (!obj) {
        PyErr_Clear();
        return NULL;
    }
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *part = strtok(buf, "."); part && obj; part = strtok(NULL, ".")) {
        PyObject *next = asc_dl_attr(obj, part);
        Py_DECREF(obj);
        obj = next;
    }
    if (obj && want_code) {
        PyObject *code = asc_dl_attr(obj, "__code__");
        Py_DECREF(obj);
        obj = code;
    }
    return obj;
}

/* ---- the snapshot ---------------------------------------------------------------------------- */

/* The frame of a coroutine-like (coroutine, generator, async generator), new ref, or NULL. */
PyObject *asc_dl_frame_of(PyObject *c) {
    const char *name = PyCoro_CheckExact(c) ? "cr_frame" : PyGen_Check(c) ? "gi_frame"
                     : PyAsyncGen_CheckExact(c) ? "ag_frame" : NULL;
    if (!name) return NULL;
    PyObject *f = asc_dl_attr(c, name);
    if (f == Py_None) Py_CLEAR(f);
    return f;
}

/* What a coroutine-like awaits (cr_await, gi_yieldfrom, ag_await), new ref, or NULL. */
static PyObject *asc_dl_awaited(PyObject *c) {
    const char *name = PyCoro_CheckExact(c) ? "cr_await" : PyGen_Check(c) ? "gi_yieldfrom"
                     : PyAsyncGen_CheckExact(c) ? "ag_await" : NULL;
    if (!name) return NULL;
    PyObject *a = asc_dl_attr(c, name);
    if (a == Py_None) Py_CLEAR(a);
    return a;
}

/* The code object of a coroutine-like's frame (borrowed through the frame), or NULL. */
static PyObject *asc_dl_code_of(PyObject *c) {
    PyObject *f = asc_dl_frame_of(c);
    if (!f) return NULL;
    PyObject *code = (PyObject *)PyFrame_GetCode((PyFrameObject *)f);
    Py_DECREF(f);
    Py_XDECREF(code); /* the coroutine keeps its code alive */
    return code;
}

/* A local of a coroutine-like's frame, new ref, or NULL. Only called on asyncio's own frames
 * and the frames of holders, never on a running frame. */
static PyObject *asc_dl_local(PyObject *c, const char *name) {
    PyObject *f = asc_dl_frame_of(c);
    PyObject *locals = asc_dl_attr(f, "f_locals");
    Py_XDECREF(f);
    if (!locals) return NULL;
    PyObject *v = PyMapping_GetItemString(locals, name);
    if (!v) PyErr_Clear();
    Py_DECREF(locals);
    return v;
}

static void asc_dl_task_clear(asc_dl_task *t) {
    Py_CLEAR(t->waiter);
    for (int i = 0; i < t->nchain; i++) Py_CLEAR(t->chain[i]);
    t->nchain = 0;
    Py_CLEAR(t->prim);
}

/* Follow the await chain from the task's coroutine (once per check: a stable task whose
 * classification is known from an earlier check needs it only for holders and reports). */
void asc_dl_walk_chain(asc_dl_task *t) {
    if (t->nchain > 0 || t->chain_walked) return;
    t->chain_walked = 1;
    PyObject *c = PyObject_CallMethod(t->task, "get_coro", NULL);
    if (!c) PyErr_Clear();
    while (c && t->nchain < ASC_DL_MAX_CHAIN) {
        if (!PyCoro_CheckExact(c) && !PyGen_Check(c) && !PyAsyncGen_CheckExact(c)) break;
        t->chain[t->nchain++] = c;
        c = asc_dl_awaited(c);
    }
    Py_XDECREF(c);
}

/* Classify what a stable waiting task waits on, from its innermost frame, else its waiter. */
static void asc_dl_classify(asc_dl_task *t) {
    t->wait = W_FUTURE;
    PyObject *inner = t->nchain > 0 ? t->chain[t->nchain - 1] : NULL;
    PyObject *code = inner ? asc_dl_code_of(inner) : NULL;
    struct {
        PyObject *code;
        asc_wait wait;
        const char *local;
    } map[] = {
        {asc_dl.code_lock_acquire, W_LOCK, "self"}, {asc_dl.code_sem_acquire, W_SEM, "self"},
        {asc_dl.code_cond_wait, W_COND, "self"},    {asc_dl.code_event_wait, W_EVENT, "self"},
        {asc_dl.code_qget, W_QGET, "self"},         {asc_dl.code_qput, W_QPUT, "self"},
        {asc_dl.code_qjoin, W_QJOIN, "self"},       {asc_dl.code_sleep, W_SLEEP, NULL},
        {asc_dl.code_serve, W_SERVE, NULL},         {asc_dl.code_wait, W_WAIT, "fs"},
        {asc_dl.code_wait_for, W_WAIT_FOR, "fut"},  {asc_dl.code_tg_aexit, W_TASKGROUP, "self"},
        {asc_dl.code_tg_aexit2, W_TASKGROUP, "self"},
    };
    for (size_t i = 0; code && i < sizeof map / sizeof map[0]; i++) {
        if (!map[i].code || map[i].code != code) continue;
        t->wait = map[i].wait;
        if (map[i].local) t->prim = asc_dl_local(inner, map[i].local);
        return;
    }
    if (PyObject_TypeCheck(t->waiter, (PyTypeObject *)asc_dl.task_type)) {
        t->wait = W_TASK;
    } else if (asc_dl.gathering_type &&
               PyObject_TypeCheck(t->waiter, (PyTypeObject *)asc_dl.gathering_type)) {
        t->wait = W_GATHER;
    }
}

/* tp_traverse visitor: collects the bound __aexit__ methods of asyncio's lock mixin. */
typedef struct {
    PyObject *found[16]; /* borrowed; more nested `async with` blocks in one frame are not seen */
    int n;
} asc_dl_exits;

static int asc_dl_visit_exit(PyObject *o, void *arg) {
    asc_dl_exits *e = arg;
    if (o && PyMethod_Check(o) && PyMethod_GET_FUNCTION(o) == asc_dl.aexit_func && e->n < 16)
        e->found[e->n++] = PyMethod_GET_SELF(o);
    return 0;
}

/* The holds of one task: every lock-like whose __aexit__ is on a stack of its chain. */
static int asc_dl_collect_holds(asc_dl_task *t, int ti, asc_dl_hold **holds, int *nholds, int *cap) {
    asc_dl_walk_chain(t);
    for (int d = 0; d < t->nchain; d++) {
        asc_dl_exits e = {.n = 0};
#if PY_VERSION_HEX >= 0x030B0000
        /* 3.11+: the frame lives inside the coroutine, whose traverse visits its value stack. */
        PyObject *holder = t->chain[d];
        Py_INCREF(holder);
#else
        /* 3.10: the frame object's traverse visits its value stack. */
        PyObject *holder = asc_dl_frame_of(t->chain[d]);
        if (!holder) continue;
#endif
        traverseproc trav = Py_TYPE(holder)->tp_traverse;
        if (trav) (void)trav(holder, asc_dl_visit_exit, &e);
        Py_DECREF(holder);
        for (int k = 0; k < e.n; k++) {
            PyObject *ctx = e.found[k], *prim = ctx;
            if (PyObject_TypeCheck(ctx, (PyTypeObject *)asc_dl.cond_type)) {
                PyObject *lock = asc_dl_attr(ctx, "_lock");
                if (!lock) continue;
                prim = lock;
                Py_DECREF(lock); /* the Condition keeps its lock alive */
            }
            if (*nholds == *cap) {
                int ncap = *cap ? *cap * 2 : 16;
                asc_dl_hold *p = realloc(*holds, (size_t)ncap * sizeof *p);
                if (!p) return -1;
                *holds = p;
                *cap = ncap;
            }
            (*holds)[(*nholds)++] = (asc_dl_hold){.t = ti, .depth = d, .prim = prim, .ctx = ctx};
        }
    }
    return 0;
}

/* Drop the hold an `async with` pushed before its acquire() finished, and the one a
 * Condition.wait() released: the innermost hold of that lock by that task. */
static void asc_dl_drop_hold(asc_dl_hold *holds, int nholds, int ti, PyObject *prim) {
    for (int i = nholds - 1; i >= 0; i--) {
        if (holds[i].t == ti && holds[i].prim == prim) {
            holds[i].t = -1;
            return;
        }
    }
}

/* ---- reading one loop ------------------------------------------------------------------------ */

static void asc_dl_snap_clear(asc_dl_snap *s) {
    for (Py_ssize_t i = 0; s->t && i < s->n; i++) asc_dl_task_clear(&s->t[i]);
    free(s->t);
    free(s->holds);
    free(s->blocked);
    free(s->cycle);
    aioscope_waitgraph_free(s->g);
    Py_XDECREF(s->tasks);
    Py_XDECREF(s->index);
    memset(s, 0, sizeof *s);
}

/* The index of a task of the snapshot, or -1. */
static int asc_dl_index_of(asc_dl_snap *s, PyObject *obj) {
    if (!obj) return -1;
    PyObject *v = PyDict_GetItemWithError(s->index, obj); /* borrowed */
    if (!v) {
        PyErr_Clear();
        return -1;
    }
    return (int)PyLong_AsLong(v);
}

/* 1 when fut is done (or unreadable: treated as moving). */
int asc_dl_done(PyObject *fut) {
    PyObject *r = PyObject_CallMethodObjArgs(fut, asc_dl.str_done, NULL);
    int done = r ? PyObject_IsTrue(r) : 1;
    Py_XDECREF(r);
    if (done < 0) done = 1;
    PyErr_Clear();
    return done;
}

/* An edge from task `from` to the future f: to its task node, through a gather to the gather's
 * pending children (the gather ends when they all have, or at the first failure: it is blocked
 * exactly when they all are, which an EVERY node expresses when its other targets are added
 * alongside), or else to the free node. */
static int asc_dl_edge_to(asc_dl_snap *s, int from, PyObject *f, int flatten_gather) {
    int to = asc_dl_index_of(s, f);
    if (to < 0 && flatten_gather && asc_dl.gathering_type &&
        PyObject_TypeCheck(f, (PyTypeObject *)asc_dl.gathering_type)) {
        PyObject *children = asc_dl_attr(f, "_children");
        PyObject *it = children ? PyObject_GetIter(children) : NULL;
        Py_XDECREF(children);
        PyObject *c;
        int n = 0;
        while (it && (c = PyIter_Next(it))) {
            if (!asc_dl_done(c)) n += asc_dl_edge_to(s, from, c, 1);
            Py_DECREF(c);
        }
        Py_XDECREF(it);
        PyErr_Clear();
        if (n > 0) return n;
    }
    (void)aioscope_waitgraph_add_edge(s->g, (size_t)from, to >= 0 ? (size_t)to : (size_t)s->n);
    return 1;
}

/* Edges of one task to the tasks in `fs` (any iterable of futures): pending ones only; a pending
 * future that is no task of this loop goes to the free node. Returns how many were pending. */
static int asc_dl_edges_to(asc_dl_snap *s, int from, PyObject *fs, int flatten_gather) {
    PyObject *it = fs ? PyObject_GetIter(fs) : NULL;
    if (!it) {
        PyErr_Clear();
        return 0;
    }
    int pending = 0;
    PyObject *f;
    while ((f = PyIter_Next(it))) {
        if (!asc_dl_done(f)) pending += asc_dl_edge_to(s, from, f, flatten_gather);
        Py_DECREF(f);
    }
    PyErr_Clear();
    Py_DECREF(it);
    return pending;
}

/* The graph node of one task. */
static void asc_dl_node(asc_dl_snap *s, int i) {
    asc_dl_task *t = &s->t[i];
    aioscope_wait_kind kind = AIOSCOPE_WAIT_EVERY;
    int targets = 0;
    switch (t->wait) {
    case W_LOCK:
    case W_SEM: {
        PyObject *v = asc_dl_attr(t->prim, t->wait == W_LOCK ? "_locked" : "_value");
        long value = v && PyLong_Check(v) ? PyLong_AsLong(v) : 1;
        int taken = v && (t->wait == W_LOCK ? PyObject_IsTrue(v) == 1 : value <= 0);
        Py_XDECREF(v);
        PyErr_Clear();
        if (!taken) break; /* released: the waiter is being woken */
        int nheld = 0;
        for (int h = 0; h < s->nholds; h++) {
            if (s->holds[h].t < 0 || s->holds[h].prim != t->prim) continue;
            (void)aioscope_waitgraph_add_edge(s->g, (size_t)i, (size_t)s->holds[h].t);
            targets++;
            nheld++;
        }
        /* A BoundedSemaphore knows its size: when some units are not held through `async with`
         * (a bare acquire()), their holders are unknown and might release one. */
        PyObject *bound = t->wait == W_SEM ? asc_dl_attr(t->prim, "_bound_value") : NULL;
        if (bound && PyLong_Check(bound) && PyLong_AsLong(bound) - (value > 0 ? value : 0) != nheld)
            targets = 0;
        Py_XDECREF(bound);
        PyErr_Clear();
        break;
    }
    case W_TASK: {
        int to = asc_dl_index_of(s, t->waiter);
        if (to >= 0) {
            (void)aioscope_waitgraph_add_edge(s->g, (size_t)i, (size_t)to);
            targets++;
        }
        break;
    }
    case W_GATHER: {
        PyObject *children = asc_dl_attr(t->waiter, "_children");
        targets = asc_dl_edges_to(s, i, children, 1);
        Py_XDECREF(children);
        break;
    }
    case W_TASKGROUP: {
        PyObject *children = asc_dl_attr(t->prim, "_tasks");
        targets = asc_dl_edges_to(s, i, children, 1);
        Py_XDECREF(children);
        break;
    }
    case W_WAIT: {
        /* ALL_COMPLETED needs every future; the others end at the first done (or failed) one. */
        asc_dl_walk_chain(t);
        PyObject *inner = t->nchain > 0 ? t->chain[t->nchain - 1] : NULL;
        PyObject *when = inner ? asc_dl_local(inner, "return_when") : NULL;
        if (when && PyUnicode_Check(when) && PyUnicode_CompareWithASCIIString(when, "ALL_COMPLETED") == 0)
            kind = AIOSCOPE_WAIT_SOME;
        Py_XDECREF(when);
        targets = asc_dl_edges_to(s, i, t->prim, kind == AIOSCOPE_WAIT_EVERY);
        break;
    }
    case W_WAIT_FOR:
        if (t->prim && !asc_dl_done(t->prim)) targets = asc_dl_edge_to(s, i, t->prim, 1);
        break;
    default: break;
    }
    (void)aioscope_waitgraph_set_kind(s->g, (size_t)i, targets > 0 ? kind : AIOSCOPE_WAIT_FREE);
}

/* ---- the check -------------------------------------------------------------------------------- */

/* The object a weak reference points to (borrowed), or NULL when it died. */
static PyObject *asc_dl_weak_target(PyObject *ref) {
    PyObject *o = asc_weakref_target(ref);
    Py_XDECREF(o); /* borrowed: the caller only compares it with a live object */
    return o;
}

/* What the per-loop `seen` cache keeps of a task's primitive (a new reference): a weak reference
 * when the object takes one (locks, events, queues, futures, tasks), else the object, or None.
 * The cache of a loop lives until that loop's next check, which for a loop that stopped may be
 * never: a strong reference to a future or task there kept its exception, the exception's
 * traceback and every frame and local on it alive (test_asyncio's test_handshake_timeout saw its
 * SSLContext outlive a timed-out connection, on 3.10, through wait_for's inner task). */
static PyObject *asc_dl_prim_ref(PyObject *prim) {
    if (!prim) Py_RETURN_NONE;
    PyObject *ref = PyWeakref_NewRef(prim, NULL);
    if (ref) return ref;
    PyErr_Clear();
    Py_INCREF(prim);
    return prim;
}

/* The primitive a cache entry names: 1 with *out a new reference (NULL for None), 0 when it was
 * a weak reference whose object is gone. */
static int asc_dl_prim_get(PyObject *stored, PyObject **out) {
    *out = NULL;
    if (stored == Py_None) return 1;
    if (!PyWeakref_CheckRef(stored)) {
        Py_INCREF(stored);
        *out = stored;
        return 1;
    }
    *out = asc_weakref_target(stored);
    return *out != NULL;
}

typedef struct {
    PyObject *loop, *list;
    int too_many; /* more than ASC_DL_MAX_TASKS wait: the walk stopped */
} asc_dl_collecting;

/* A task field at a layout offset (borrowed; NULL when empty). */
static PyObject *asc_dl_field(PyObject *task, int32_t off) {
    return *(PyObject **)((char *)task + off);
}

/* 1 when task's _loop and _fut_waiter can be read in place: a C task, and the layout agreed
 * with the attributes on the first one (if not, attributes from then on). */
static int asc_dl_direct(PyObject *task) {
    if (!asc_dl.layout || !PyObject_TypeCheck(task, (PyTypeObject *)asc_dl.task_type)) return 0;
    if (!asc_dl.fields_checked) {
        asc_dl.fields_checked = 1;
        PyObject *tl = PyObject_GetAttr(task, asc_dl.str_loop);
        PyObject *w = PyObject_GetAttr(task, asc_dl.str_fut_waiter);
        PyObject *fw = asc_dl_field(task, asc_dl.layout->task_fut_waiter);
        int ok = tl && w && tl == asc_dl_field(task, asc_dl.layout->task_loop) && w == (fw ? fw : Py_None);
        Py_XDECREF(tl);
        Py_XDECREF(w);
        PyErr_Clear();
        if (!ok) asc_dl.layout = NULL;
    }
    return asc_dl.layout != NULL;
}

static int asc_dl_collect_one(PyObject *task, void *arg) {
    asc_dl_collecting *c = arg;
    if (PyList_GET_SIZE(c->list) > ASC_DL_MAX_TASKS) {
        c->too_many = 1; /* stops the walk (no error set): this loop is not checked now */
        return -1;
    }
    /* In place for C tasks: the attributes cost ~100 ns a task, most of a check of a program
     * with 100 000 tasks. */
    if (asc_dl_direct(task)) {
        if (asc_dl_field(task, asc_dl.layout->task_loop) != c->loop) return 0;
        PyObject *w = asc_dl_field(task, asc_dl.layout->task_fut_waiter);
        return w && w != Py_None ? PyList_Append(c->list, task) : 0;
    }
    PyObject *tl = PyObject_GetAttr(task, asc_dl.str_loop);
    PyObject *w = tl == c->loop ? PyObject_GetAttr(task, asc_dl.str_fut_waiter) : NULL;
    int rc = w && w != Py_None ? PyList_Append(c->list, task) : 0;
    Py_XDECREF(w);
    Py_XDECREF(tl);
    if (rc == 0) PyErr_Clear(); /* an unreadable task is left out */
    return rc;
}

/* Append to list the tasks of one registry (asyncio's WeakSet of tasks, or 3.12's set of eager
 * tasks) that belong to loop and wait on a future. Runnable and finished tasks (no _fut_waiter)
 * are left out here: they are free, and a busy program has many. Iterating the registry in C,
 * through the WeakSet's .data, reads no Python code: asyncio.all_tasks (a set comprehension
 * calling a Python helper per task) cost ~300 ns a task. Returns 1 when more than
 * ASC_DL_MAX_TASKS wait (the walk stops there), 0, or -1 with an error set. */
static int asc_dl_collect(PyObject *registry, PyObject *loop, PyObject *list) {
    asc_dl_collecting c = {loop, list, 0};
    int rc = asc_registry_each(registry, asc_dl_collect_one, &c);
    return c.too_many ? 1 : rc;
}

/* The tasks alive in the process by asyncio's registries (WeakSets through their .data, and
 * 3.12's set of eager tasks), counted without walking them; -1 when one cannot be counted. */
static Py_ssize_t asc_dl_live_count(void) {
    Py_ssize_t total = 0;
    for (int i = 0; i < 3; i++) {
        PyObject *reg = asc_dl.registries[i];
        if (!reg) continue;
        PyObject *data = PyAnySet_Check(reg) ? (Py_INCREF(reg), reg)
                                             : PyObject_GetAttrString(reg, "data");
        Py_ssize_t n = data && PyAnySet_Check(data) ? PySet_GET_SIZE(data) : -1;
        Py_XDECREF(data);
        if (n < 0) {
            PyErr_Clear();
            return -1;
        }
        total += n;
    }
    return total;
}

/* The tasks of loop that wait on a future, as a new list; NULL when there are too many to
 * check (no error set) or on failure (an error set). */
static PyObject *asc_dl_waiting_tasks(PyObject *loop) {
    Py_ssize_t live = asc_dl_live_count();
    if (live > ASC_DL_MAX_LIVE) return NULL;
    PyObject *list = PyList_New(0);
    if (!list) return NULL;
    /* Where the agent sees every step of the loop's tasks, it knows which tasks were left waiting
     * on a future (a bit per task, steps.c): only those are read, where walking the registries
     * touches every task (a busy program's are mostly runnable or just made: 20 000 tasks of
     * spawn+gather cost 4 ms a check, ~2 % of the program). The fields agreed with the
     * attributes on a first task (asc_dl_direct) before the bits are trusted. */
    if (live >= 0 && asc_dl.layout && asc_dl.fields_checked) {
        asc_dl_collecting c = {loop, list, 0};
        int rc = 0;
        if (asc_tasks_each_waiting(loop, live, asc_dl_collect_one, &c, &rc)) {
            if (rc == 0 && !c.too_many) return list;
            Py_DECREF(list);
            return NULL;
        }
    }
    int found = 0;
    for (int i = 0; i < 3; i++) {
        PyObject *reg = asc_dl.registries[i];
        if (!reg) continue;
        found = 1;
        if (asc_dl_collect(reg, loop, list) != 0) {
            Py_DECREF(list);
            return NULL;
        }
    }
    if (found) return list;
    /* No registry where we expect one: asyncio's own answer, then the same filter. */
    Py_DECREF(list);
    PyObject *all = PyObject_CallOneArg(asc_dl.all_tasks, loop);
    list = all ? PyList_New(0) : NULL;
    if (list && asc_dl_collect(all, loop, list) != 0) Py_CLEAR(list);
    Py_XDECREF(all);
    return list;
}

/* Read the loop's tasks into s: waiters, which are stable since the previous check, and for
 * the stable ones their chain and what they wait on. Updates slot->seen. Returns 0, or -1 when
 * the loop cannot be checked now. */
static int asc_dl_take(asc_dl_snap *s, asc_dl_slot *slot) {
    s->tasks = asc_dl_waiting_tasks(s->loop);
    if (!s->tasks) return -1;
    s->n = PyList_GET_SIZE(s->tasks);
    if (s->n > ASC_DL_MAX_TASKS) return -1;
    s->t = calloc((size_t)s->n + 1, sizeof *s->t);
    s->index = PyDict_New();
    PyObject *seen = PyDict_New();
    if (!s->t || !s->index || !seen) {
        Py_XDECREF(seen);
        return -1;
    }
    int any_lock_wait = 0, classified = 0;
    for (Py_ssize_t i = 0; i < s->n; i++) {
        asc_dl_task *t = &s->t[i];
        t->task = PyList_GET_ITEM(s->tasks, i);
        t->waiter = PyObject_GetAttr(t->task, asc_dl.str_fut_waiter);
        if (!t->waiter) PyErr_Clear();
        if (t->waiter == Py_None || (t->waiter && asc_dl_done(t->waiter))) Py_CLEAR(t->waiter);
        /* Runnable, or being woken: free, and so is whoever waits on it. It stays out of the
         * index, which sends such waits to the free node; in a busy program (100 000 tasks just
         * spawned) that saves most of the check. */
        if (!t->waiter) continue;
        PyObject *idx = PyLong_FromSsize_t(i);
        if (!idx || PyDict_SetItem(s->index, t->task, idx) < 0) {
            Py_XDECREF(idx);
            Py_DECREF(seen);
            return -1;
        }
        Py_DECREF(idx);
        /* Stable: the same waiter object as at the previous check, so the task ran no step in
         * between (each step that suspends again does so on a new future). The waiter is kept
         * as a weak reference: an id could be reused by the next future at the same address. */
        PyObject *key = PyLong_FromVoidPtr(t->task);
        PyObject *old = key ? PyDict_GetItemWithError(slot->seen, key) : NULL; /* borrowed */
        PyErr_Clear();
        PyObject *val = NULL;
        if (old && PyTuple_Check(old) && PyTuple_GET_SIZE(old) == 5 &&
            PyWeakref_CheckRef(PyTuple_GET_ITEM(old, 0)) &&
            asc_dl_weak_target(PyTuple_GET_ITEM(old, 0)) == t->waiter) {
            t->stable = 1;
            t->since_ns = PyLong_AsLongLong(PyTuple_GET_ITEM(old, 1));
            long wait = PyLong_AsLong(PyTuple_GET_ITEM(old, 3));
            PyObject *prim = NULL;
            /* A primitive that is gone (its weak reference died): classify again. */
            if (wait >= 0 && !asc_dl_prim_get(PyTuple_GET_ITEM(old, 4), &prim)) wait = -1;
            if (wait >= 0) {
                /* Classified at an earlier check: the task has not run since, so its chain
                 * and what it waits on are the same. */
                t->wait = (asc_wait)wait;
                t->prim = prim;
                Py_INCREF(old);
                val = old;
            } else if (classified >= ASC_DL_CLASSIFY_MAX) {
                /* Over this check's budget: classified at a later check; free until then. */
                Py_INCREF(old);
                val = old;
            } else {
                classified++;
                asc_dl_walk_chain(t);
                asc_dl_classify(t);
                val = Py_BuildValue("(OLOiN)", PyTuple_GET_ITEM(old, 0), (long long)t->since_ns,
                                    PyTuple_GET_ITEM(old, 2), (int)t->wait, asc_dl_prim_ref(t->prim));
            }
        } else {
            /* First seen on this waiter: (weakref(waiter), since, stuck reported, wait, prim),
             * the wait -1 until classified at the next check, if still the same. */
            t->since_ns = s->now;
            PyObject *wref = PyWeakref_NewRef(t->waiter, NULL);
            val = wref ? Py_BuildValue("(NLiiO)", wref, (long long)s->now, 0, -1, Py_None) : NULL;
        }
        if (key && val) (void)PyDict_SetItem(seen, key, val);
        Py_XDECREF(key);
        Py_XDECREF(val);
        PyErr_Clear();
        if (t->stable && (t->wait == W_LOCK || t->wait == W_SEM)) any_lock_wait = 1;
    }
    Py_SETREF(slot->seen, seen);
    /* Holders matter only to a waiter of a lock; a holder that is not stable is moving and so
     * free whatever it holds. */
    for (Py_ssize_t i = 0; any_lock_wait && i < s->n; i++)
        if (s->t[i].stable && asc_dl_collect_holds(&s->t[i], (int)i, &s->holds, &s->nholds, &s->capholds) < 0)
            return -1;
    for (Py_ssize_t i = 0; any_lock_wait && i < s->n; i++) {
        asc_dl_task *t = &s->t[i];
        if (!t->stable || !t->prim) continue;
        if (t->wait == W_LOCK || t->wait == W_SEM) {
            asc_dl_drop_hold(s->holds, s->nholds, (int)i, t->prim);
        } else if (t->wait == W_COND) {
            PyObject *lock = asc_dl_attr(t->prim, "_lock");
            if (lock) asc_dl_drop_hold(s->holds, s->nholds, (int)i, lock);
            Py_XDECREF(lock);
        }
    }
    return 0;
}

/* Count a candidate deadlock as seen now; 1 when it has been seen long enough and was not
 * reported yet (it is then marked reported). Seen-time adds up over checks, so a deadlock that a
 * timeout breaks now and then (and the program re-forms) still gets reported. */
static int asc_dl_due(asc_dl_slot *slot, PyObject *key, PyObject *candidates_now, int64_t now, int64_t period,
                      int64_t formed) {
    if (!key) return 0;
    if (PySet_Contains(slot->reported, key) == 1) return 0;
    PyObject *old = PyDict_GetItemWithError(slot->candidates, key); /* borrowed */
    double seen_s = 0;
    if (old && PyList_Check(old) && PyList_GET_SIZE(old) == 2) {
        seen_s = PyFloat_AsDouble(PyList_GET_ITEM(old, 0));
        int64_t last = PyLong_AsLongLong(PyList_GET_ITEM(old, 1));
        /* Consecutive sightings add the time between them; after a gap, only this check. */
        int64_t gap = now - last;
        seen_s += gap <= 2 * period + ASC_DL_PERIOD_NS ? (double)gap / 1e9 : 0.0;
    } else {
        /* First sighting: its tasks have not moved since `formed` (the first check that saw
         * their current waits), which counts — but at least one more check must confirm it. */
        double stalled = (double)(now - formed) / 1e9, cap = asc_dl.after_s - (double)period / 1e9;
        seen_s = stalled < cap ? stalled : cap > 0 ? cap : 0;
    }
    PyErr_Clear();
    PyObject *val = Py_BuildValue("[dL]", seen_s, (long long)now);
    if (val) (void)PyDict_SetItem(candidates_now, key, val);
    Py_XDECREF(val);
    PyErr_Clear();
    if (seen_s + 1e-9 < asc_dl.after_s) return 0;
    (void)PySet_Add(slot->reported, key);
    PyErr_Clear();
    return 1;
}

/* The latest moment one of the members started its current wait (as first seen). */
static int64_t asc_dl_formed(asc_dl_snap *s, const int *members, int n) {
    int64_t formed = 0;
    for (int k = 0; k < n; k++)
        if (s->t[members[k]].since_ns > formed) formed = s->t[members[k]].since_ns;
    return formed;
}

static void asc_dl_check(asc_dl_slot *slot, PyObject *loop, int64_t now, int64_t period) {
    asc_dl_snap s;
    memset(&s, 0, sizeof s);
    s.loop = loop;
    s.now = now;
    int *members = NULL;
    PyObject *candidates_now = NULL;
    if (asc_dl_take(&s, slot) < 0) goto done;
    size_t n1 = (size_t)s.n + 1; /* the tasks, then one free node for what is no task of ours */
    s.g = aioscope_waitgraph_new(n1);
    s.blocked = calloc(n1, 1);
    s.cycle = calloc(n1, sizeof *s.cycle);
    members = malloc(n1 * sizeof *members);
    candidates_now = PyDict_New();
    if (!s.g || !s.blocked || !s.cycle || !members || !candidates_now) goto done;
    for (Py_ssize_t i = 0; i < s.n; i++)
        if (s.t[i].stable) asc_dl_node(&s, (int)i);
    if (aioscope_waitgraph_solve(s.g, s.blocked) < 0 ||
        aioscope_waitgraph_cycles(s.g, s.blocked, s.cycle, &s.ncycles) < 0)
        goto done;

    /* Cycles: each is a deadlock now, whatever else runs. */
    for (size_t c = 1; c <= s.ncycles; c++) {
        int n = 0;
        for (Py_ssize_t i = 0; i < s.n; i++)
            if (s.cycle[i] == (int)c) members[n++] = (int)i;
        PyObject *key = asc_dl_key(&s, "cycle", members, n);
        if (asc_dl_due(slot, key, candidates_now, now, period, asc_dl_formed(&s, members, n))) {
            asc_dl_order_cycle(&s, members, n);
            char msg[256];
            if (n == 1)
                snprintf(msg, sizeof msg, "a task waits on itself (a lock it already holds) and can never go on");
            else
                snprintf(msg, sizeof msg, "%d tasks wait on each other in a cycle and can never go on", n);
            asc_dl_report(&s, members, n, msg);
        }
        Py_XDECREF(key);
    }

    /* Everything asleep: the waiting tasks the cycles do not explain, waits on other tasks
     * last (the leaves are where the bug is). */
    if (asc_dl_loop_asleep(&s)) {
        int n = 0;
        for (int pass = 0; pass < 2; pass++)
            for (Py_ssize_t i = 0; i < s.n; i++) {
                asc_wait w = s.t[i].wait;
                int on_tasks = w == W_TASK || w == W_GATHER || w == W_WAIT || w == W_WAIT_FOR || w == W_TASKGROUP;
                if (!s.blocked[i] && on_tasks == pass) members[n++] = (int)i;
            }
        PyObject *key = n > 0 ? asc_dl_key(&s, "asleep", members, n) : NULL;
        if (asc_dl_due(slot, key, candidates_now, now, period, asc_dl_formed(&s, members, n))) {
            char msg[320];
            snprintf(msg, sizeof msg,
                     "every task of the event loop is waiting and nothing can wake %s (no ready "
                     "callback, no timer but timeouts, no I/O, no thread): %d task%s wait%s forever",
                     n == 1 ? "it" : "them", n, n == 1 ? "" : "s", n == 1 ? "s" : "");
            asc_dl_report(&s, members, n, msg);
        }
        Py_XDECREF(key);
        for (Py_ssize_t i = 0; i < s.n; i++) s.blocked[i] = 1; /* none of them is merely stuck */
    }

    /* stuck-task: long waits on something other than tasks, sleeps and servers. */
    for (Py_ssize_t i = 0; i < s.n; i++) {
        asc_dl_task *t = &s.t[i];
        if (!t->stable || t->wait == W_RUNNABLE || s.blocked[i] ||
            (double)(now - t->since_ns) / 1e9 < asc_cfg.stuck_after_s)
            continue;
        asc_wait w = t->wait;
        if (w == W_SLEEP || w == W_SERVE || w == W_TASK || w == W_GATHER || w == W_WAIT ||
            w == W_WAIT_FOR || w == W_TASKGROUP)
            continue;
        PyObject *key = PyLong_FromVoidPtr(t->task);
        PyObject *old = key ? PyDict_GetItemWithError(slot->seen, key) : NULL; /* borrowed */
        if (old && PyTuple_Check(old) && PyTuple_GET_SIZE(old) == 5 &&
            PyLong_AsLongLong(PyTuple_GET_ITEM(old, 2)) == 0) {
            asc_dl_walk_chain(t);
            PyObject *val = Py_BuildValue("(OLiOO)", PyTuple_GET_ITEM(old, 0), (long long)t->since_ns, 1,
                                          PyTuple_GET_ITEM(old, 3), PyTuple_GET_ITEM(old, 4));
            if (val) (void)PyDict_SetItem(slot->seen, key, val);
            Py_XDECREF(val);
            asc_dl_report_stuck(&s, (int)i, now);
        }
        Py_XDECREF(key);
        PyErr_Clear();
    }

done:
    /* Candidates not seen now are kept for a while (a timeout may have broken the deadlock for
     * a moment), then forgotten. */
    if (candidates_now) {
        PyObject *k, *v;
        Py_ssize_t pos = 0;
        while (PyDict_Next(slot->candidates, &pos, &k, &v)) {
            if (PyDict_Contains(candidates_now, k) == 1 || !PyList_Check(v)) continue;
            if (now - PyLong_AsLongLong(PyList_GET_ITEM(v, 1)) < ASC_DL_FORGET_NS)
                (void)PyDict_SetItem(candidates_now, k, v);
        }
        Py_SETREF(slot->candidates, candidates_now);
    }
    PyErr_Clear();
    free(members);
    asc_dl_snap_clear(&s);
}

/* ---- per loop state, the heartbeat entry, init -------------------------------------------------- */

/* The loop a slot's weakref points to (borrowed, may be NULL when dead). */
static PyObject *asc_dl_slot_loop(asc_dl_slot *slot) {
    return slot->loop_ref ? asc_dl_weak_target(slot->loop_ref) : NULL;
}

static asc_dl_slot *asc_dl_slot_for(PyObject *loop) {
    asc_dl_slot *free_slot = NULL;
    for (int i = 0; i < ASC_DL_MAX_LOOPS; i++) {
        asc_dl_slot *slot = &asc_dl_slots[i];
        PyObject *l = asc_dl_slot_loop(slot);
        if (l == loop) return slot;
        if (!l && !free_slot) free_slot = slot;
    }
    if (!free_slot) return NULL;
    asc_dl_slot *slot = free_slot;
    Py_CLEAR(slot->loop_ref);
    Py_CLEAR(slot->seen);
    Py_CLEAR(slot->candidates);
    Py_CLEAR(slot->reported);
    slot->loop_ref = PyWeakref_NewRef(loop, NULL);
    slot->seen = PyDict_New();
    slot->candidates = PyDict_New();
    slot->reported = PySet_New(NULL);
    slot->next_ns = 0;
    slot->period_ns = 0;
    if (!slot->loop_ref || !slot->seen || !slot->candidates || !slot->reported) {
        PyErr_Clear();
        Py_CLEAR(slot->loop_ref);
        return NULL;
    }
    return slot;
}

/* Look up what the check compares against, once asyncio is there (the first heartbeat). */
static int asc_dl_prepare(void) {
    asc_dl.str_fut_waiter = PyUnicode_InternFromString("_fut_waiter");
    asc_dl.str_done = PyUnicode_InternFromString("done");
    asc_dl.all_tasks = asc_dl_lookup("asyncio", "all_tasks", 0);
    /* The registries asyncio.all_tasks reads: _all_tasks (a WeakSet, 3.8-3.11; a function from
     * 3.12), _scheduled_tasks (WeakSet) and _eager_tasks (set), 3.12+. */
    static const char *const regs[] = {"_all_tasks", "_scheduled_tasks", "_eager_tasks"};
    for (int i = 0; i < 3; i++) {
        PyObject *r = asc_dl_lookup("asyncio.tasks", regs[i], 0);
        if (r && PyCallable_Check(r)) Py_CLEAR(r);
        asc_dl.registries[i] = r;
    }
    asc_dl.task_type = asc_dl_lookup("asyncio", "Task", 0);
    asc_dl.str_loop = PyUnicode_InternFromString("_loop");
    /* The layout describes the C Task (and its subclasses, the agent's among them). */
    if (asc_dl.task_type && PyType_Check(asc_dl.task_type) &&
        strcmp(((PyTypeObject *)asc_dl.task_type)->tp_name, "_asyncio.Task") == 0) {
        const asc_layout *L = asc_layout_find(PY_VERSION_HEX);
        if (L && L->task_loop >= 0 && L->task_fut_waiter >= 0) asc_dl.layout = L;
    }
    asc_dl.gathering_type = asc_dl_lookup("asyncio.tasks", "_GatheringFuture", 0);
    asc_dl.lock_type = asc_dl_lookup("asyncio", "Lock", 0);
    asc_dl.cond_type = asc_dl_lookup("asyncio", "Condition", 0);
    asc_dl.sem_type = asc_dl_lookup("asyncio", "Semaphore", 0);
    asc_dl.code_lock_acquire = asc_dl_lookup("asyncio.locks", "Lock.acquire", 1);
    asc_dl.code_sem_acquire = asc_dl_lookup("asyncio.locks", "Semaphore.acquire", 1);
    asc_dl.code_cond_wait = asc_dl_lookup("asyncio.locks", "Condition.wait", 1);
    asc_dl.code_event_wait = asc_dl_lookup("asyncio.locks", "Event.wait", 1);
    asc_dl.code_qget = asc_dl_lookup("asyncio.queues", "Queue.get", 1);
    asc_dl.code_qput = asc_dl_lookup("asyncio.queues", "Queue.put", 1);
    asc_dl.code_qjoin = asc_dl_lookup("asyncio.queues", "Queue.join", 1);
    asc_dl.code_sleep = asc_dl_lookup("asyncio.tasks", "sleep", 1);
    asc_dl.code_serve = asc_dl_lookup("asyncio.base_events", "Server.serve_forever", 1);
    asc_dl.code_wait = asc_dl_lookup("asyncio.tasks", "_wait", 1);
    asc_dl.code_wait_for = asc_dl_lookup("asyncio.tasks", "wait_for", 1);
    /* 3.11+; 3.13 waits in TaskGroup._aexit, called by __aexit__. */
    asc_dl.code_tg_aexit = asc_dl_lookup("asyncio.taskgroups", "TaskGroup.__aexit__", 1);
    asc_dl.code_tg_aexit2 = asc_dl_lookup("asyncio.taskgroups", "TaskGroup._aexit", 1);
    asc_dl.aexit_func = asc_dl_lookup("asyncio.locks", "_ContextManagerMixin.__aexit__", 0);
    asc_dl.release_waiter = asc_dl_lookup("asyncio.tasks", "_release_waiter", 0);
    asc_dl.on_timeout = asc_dl_lookup("asyncio.timeouts", "Timeout._on_timeout", 0);
    PyErr_Clear();
    /* Without these the check cannot say anything for sure. */
    return asc_dl.str_fut_waiter && asc_dl.str_done && asc_dl.str_loop && asc_dl.all_tasks && asc_dl.task_type && asc_dl.lock_type && asc_dl.cond_type &&
                   asc_dl.aexit_func ? 0 : -1;
}

void asc_deadlock_on_heartbeat(PyObject *loop) {
    if (asc_cfg.dev_off & ASC_OFF_DEADLOCK) return;
    if (asc_dl.ready <= 0 || !asc_cfg.enabled) {
        if (asc_dl.ready != 0 || !asc_cfg.enabled) return;
        asc_dl.ready = asc_dl_prepare() == 0 ? 1 : -1;
        if (asc_dl.ready < 0) return;
    }
    int64_t now = asc_monotonic_ns();
    asc_dl_slot *slot = asc_dl_slot_for(loop);
    if (!slot || now < slot->next_ns) return;
    /* The beat runs between the program's callbacks; keep any exception state it may see. */
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    asc_dl_check(slot, loop, now, slot->period_ns ? slot->period_ns : ASC_DL_PERIOD_NS);
    int64_t cost = asc_monotonic_ns() - now, period = ASC_DL_PERIOD_NS;
    if (cost * ASC_DL_COST_FACTOR > period) period = cost * ASC_DL_COST_FACTOR;
    slot->period_ns = period;
    slot->next_ns = now + period;
    PyErr_Clear();
    PyErr_Restore(et, ev, tb);
}

int asc_deadlock_init(PyObject *module) {
    (void)module;
    const char *after = getenv("AIOSCOPE_DEADLOCK_AFTER");
    asc_dl.after_s = 1.0;
    if (after && *after) {
        char *end = NULL;
        double v = strtod(after, &end);
        if (end != after && *end == '\0' && v >= 0.0 && v <= 1e6) asc_dl.after_s = v;
    }
    const char *on = getenv("AIOSCOPE_ON_DEADLOCK");
    asc_dl.exit_on_deadlock = on && strcmp(on, "exit") == 0;
    return 0;
}
