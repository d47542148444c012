/* trace_locks.c: asyncio.Lock wait and hold spans for the --trace timeline.
 *
 * While tracing (and only then), asyncio.Lock.acquire and .release are replaced on the class by
 * C method descriptors, and every traced lock's `_waiters` deque by an instance of a C subclass
 * of deque (LockWaiters) whose append() and remove() note when a waiter starts and stops
 * waiting. Lock.acquire (3.8-3.13) waits in one way only:
 *
 *     fut = loop.create_future(); self._waiters.append(fut)
 *     try: await fut  finally: self._waiters.remove(fut)      (then `self._locked = True`)
 *
 * so the wait span runs from append(fut) to remove(fut), in the waiting task, and the lock is
 * acquired at remove() unless fut was cancelled ("acquired": false). An acquire that finds the
 * lock free takes it at its first step without touching _waiters: the acquire() hook sees that
 * (lock not locked, nobody waiting) and starts the hold at once. release() calls the original
 * and closes the hold. `async with lock`, Condition (which calls the lock's bound methods) and
 * subclasses all go through them.
 *
 * Why not wrap the coroutine acquire() returns (the first version did): the wrapper sat between
 * the task's coroutine and acquire's, so every resumption of a waiter entered the interpreter
 * afresh from C instead of the interpreter's inlined SEND, and cost an object per wait; on a
 * contended lock that was about half of what --trace cost (3.12, bench/workloads).
 *
 * Open holds are kept in a fixed table keyed by the lock's address (a program holds a handful
 * of locks at once); when it is full the extra holds are not drawn, nothing else changes. Open
 * waits are kept in a table keyed by the waiter future's address that grows with the number of
 * tasks waiting at once. Known imprecision: a waiter whose future got the lock but whose task was
 * cancelled before it ran (acquire() then raises instead of taking the lock) is drawn as
 * acquired; the hold it seems to open is replaced by the next holder's. */
#include "agent/trace.h"

#include <stdlib.h>
#include <string.h>

#if PY_VERSION_HEX < 0x03090000
#define PyObject_Vectorcall _PyObject_Vectorcall
#endif

/* Locks held at the same time that can have a hold span; a power of two (the index mask). */
#define ASC_HOLD_SLOTS 1024
/* Initial size of the table of open waits (a power of two); it doubles when half full. */
#define ASC_WAIT_SLOTS0 256

typedef struct {
    const void *lock; /* NULL: free */
    uint32_t track;
    int64_t start;
} asc_hold;

typedef struct {
    const void *fut;  /* NULL: free; the waiter future (identity only) */
    const void *lock; /* identity only */
    uint32_t track;
    int64_t start;
} asc_wait;

static struct {
    PyObject *orig_acquire, *orig_release;  /* owned: asyncio.Lock's own methods */
    PyObject *str_locked, *str_waiters;     /* owned, interned */
    PyTypeObject *deque_type;               /* owned: collections.deque */
    PyTypeObject *waiters_type;             /* owned: LockWaiters, our subclass of deque */
    PyObject *deque_append, *deque_remove;  /* owned: deque's own methods (method descriptors) */
    Py_ssize_t lock_offset;                 /* where LockWaiters keeps its lock's address */
    uint32_t name_wait, name_hold;
    asc_hold holds[ASC_HOLD_SLOTS]; /* open addressing, linear probing, backward-shift delete */
    asc_wait *waits;                /* owned; the same scheme, nwaits_cap slots */
    size_t nwaits, nwaits_cap;
} asc_tl;

/* Objects are 16-byte aligned: the low bits carry nothing. */
static size_t asc_ptr_hash(const void *p, size_t mask) {
    return ((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull >> 40 & mask;
}

/* ---- open holds, by lock -------------------------------------------------------------------- */

static void asc_hold_put(const void *lock, uint32_t track, int64_t start) {
    size_t i = asc_ptr_hash(lock, ASC_HOLD_SLOTS - 1);
    for (size_t n = 0; n < ASC_HOLD_SLOTS; n++, i = (i + 1) & (ASC_HOLD_SLOTS - 1)) {
        if (asc_tl.holds[i].lock == NULL || asc_tl.holds[i].lock == lock) {
            asc_tl.holds[i].lock = lock;
            asc_tl.holds[i].track = track;
            asc_tl.holds[i].start = start;
            return;
        }
    }
}

/* Removes lock's hold; 1 and its track and start when there was one. */
static int asc_hold_take(const void *lock, uint32_t *track, int64_t *start) {
    const size_t mask = ASC_HOLD_SLOTS - 1;
    size_t i = asc_ptr_hash(lock, mask);
    size_t n = 0;
    while (asc_tl.holds[i].lock != lock) {
        if (asc_tl.holds[i].lock == NULL || ++n == ASC_HOLD_SLOTS) return 0;
        i = (i + 1) & mask;
    }
    *track = asc_tl.holds[i].track;
    *start = asc_tl.holds[i].start;
    /* Backward-shift deletion: later entries of the probe run move up, so lookups never stop
     * early at the hole. */
    size_t j = i;
    for (;;) {
        asc_tl.holds[i].lock = NULL;
        for (;;) {
            j = (j + 1) & mask;
            if (asc_tl.holds[j].lock == NULL) return 1;
            size_t k = asc_ptr_hash(asc_tl.holds[j].lock, mask);
            /* Entry j may fill the hole at i unless its home lies cyclically in (i, j]. */
            if (i <= j ? (i < k && k <= j) : (i < k || k <= j)) continue;
            break;
        }
        asc_tl.holds[i] = asc_tl.holds[j];
        i = j;
    }
}

/* ---- open waits, by waiter future ----------------------------------------------------------- */

static void asc_wait_insert(asc_wait *table, size_t cap, const asc_wait *w) {
    size_t i = asc_ptr_hash(w->fut, cap - 1);
    while (table[i].fut != NULL && table[i].fut != w->fut) i = (i + 1) & (cap - 1);
    table[i] = *w;
}

/* Adds a wait; when the table cannot grow, the wait is not drawn. */
static void asc_wait_put(const asc_wait *w) {
    if ((asc_tl.nwaits + 1) * 2 > asc_tl.nwaits_cap) {
        size_t cap = asc_tl.nwaits_cap ? asc_tl.nwaits_cap * 2 : ASC_WAIT_SLOTS0;
        asc_wait *t = calloc(cap, sizeof *t);
        if (!t) return;
        for (size_t i = 0; i < asc_tl.nwaits_cap; i++)
            if (asc_tl.waits[i].fut) asc_wait_insert(t, cap, &asc_tl.waits[i]);
        free(asc_tl.waits);
        asc_tl.waits = t;
        asc_tl.nwaits_cap = cap;
    }
    asc_wait_insert(asc_tl.waits, asc_tl.nwaits_cap, w);
    asc_tl.nwaits++;
}

/* Removes fut's wait into *out; 0 when fut has none. */
static int asc_wait_take(const void *fut, asc_wait *out) {
    if (!asc_tl.nwaits) return 0;
    const size_t mask = asc_tl.nwaits_cap - 1;
    asc_wait *t = asc_tl.waits;
    size_t i = asc_ptr_hash(fut, mask);
    while (t[i].fut != fut) {
        if (t[i].fut == NULL) return 0;
        i = (i + 1) & mask;
    }
    *out = t[i];
    asc_tl.nwaits--;
    size_t j = i; /* backward-shift deletion, as asc_hold_take */
    for (;;) {
        t[i].fut = NULL;
        for (;;) {
            j = (j + 1) & mask;
            if (t[j].fut == NULL) return 1;
            size_t k = asc_ptr_hash(t[j].fut, mask);
            if (i <= j ? (i < k && k <= j) : (i < k || k <= j)) continue;
            break;
        }
        t[i] = t[j];
        i = j;
    }
}

/* ---- LockWaiters: the lock's _waiters deque, watched ---------------------------------------- */

static const void **asc_waiters_lock(PyObject *self) {
    return (const void **)((char *)self + asc_tl.lock_offset);
}

/* _waiters.append(fut): the current task starts waiting for the lock. */
static PyObject *asc_waiters_append(PyObject *self, PyObject *fut) {
    PyObject *args[2] = {self, fut};
    PyObject *r = PyObject_Vectorcall(asc_tl.deque_append, args, 2, NULL);
    if (!r || !asc_trace_active) return r;
    asc_wait w = {.fut = fut, .lock = *asc_waiters_lock(self), .start = asc_live_now_ns()};
    w.track = asc_trace_current_track();
    asc_wait_put(&w);
    return r;
}

/* _waiters.remove(fut): the wait is over; the lock is the waiter's unless fut was cancelled. */
static PyObject *asc_waiters_remove(PyObject *self, PyObject *fut) {
    PyObject *args[2] = {self, fut};
    PyObject *r = PyObject_Vectorcall(asc_tl.deque_remove, args, 2, NULL);
    asc_wait w;
    if (!asc_trace_active || !asc_wait_take(fut, &w)) return r;
    int64_t now = asc_live_now_ns();
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException(); /* remove() failed: keep its error as it was */
#else
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
#endif
    int acquired = asc_trace_future_cancelled(fut) == 0;
    asc_trace_put(ASC_EV_LOCK_WAIT, w.start, now - w.start, w.track, asc_tl.name_wait, 0,
                  (uint64_t)(uintptr_t)w.lock, acquired ? 0 : 1);
    if (acquired) asc_hold_put(w.lock, w.track, now);
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(et, ev, etb);
#endif
    return r;
}

/* A static base's dealloc (deque up to 3.12) does not drop the reference an instance of a heap
 * subtype holds on its type (subtype_dealloc would): done here. From 3.13 deque is a heap type
 * whose own dealloc drops it. */
static void asc_waiters_dealloc(PyObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    int decref_type = !(asc_tl.deque_type->tp_flags & Py_TPFLAGS_HEAPTYPE);
    asc_tl.deque_type->tp_dealloc(self);
    if (decref_type) Py_DECREF(tp);
}

/* The base's traverse, plus (as for the dealloc) the type when the base does not visit it. */
static int asc_waiters_traverse(PyObject *self, visitproc visit, void *arg) {
    if (!(asc_tl.deque_type->tp_flags & Py_TPFLAGS_HEAPTYPE)) Py_VISIT(Py_TYPE(self));
    return asc_tl.deque_type->tp_traverse(self, visit, arg);
}

static PyMethodDef asc_waiters_methods[] = {
    {"append", asc_waiters_append, METH_O, "deque.append, noting when a task starts waiting."},
    {"remove", asc_waiters_remove, METH_O, "deque.remove, noting when a task stops waiting."},
    {NULL, NULL, 0, NULL},
};

/* Gives a lock a LockWaiters as its _waiters (keeping any waiters already there), once. waiters
 * is the current value, borrowed. */
static void asc_lock_watch(PyObject *lock, PyObject *waiters) {
    if (waiters != Py_None && Py_TYPE(waiters) != asc_tl.deque_type) return; /* ours, or unknown */
    PyObject *w = PyObject_CallFunctionObjArgs((PyObject *)asc_tl.waiters_type,
                                               waiters == Py_None ? NULL : waiters, NULL);
    if (w) {
        *asc_waiters_lock(w) = lock;
        if (PyObject_SetAttr(lock, asc_tl.str_waiters, w) < 0) PyErr_Clear();
        Py_DECREF(w);
    }
    PyErr_Clear();
}

/* ---- Lock.acquire / Lock.release ------------------------------------------------------------ */

/* Lock.acquire(self) while tracing. When the lock is free (not locked, nobody waiting:
 * acquire()'s fast path, 3.8-3.13), the coroutine takes it at its first step, which `await`
 * (and `async with`) runs right away: the hold starts now. Otherwise the wait is seen by the
 * lock's LockWaiters. */
static PyObject *asc_lock_acquire(PyObject *lock, PyObject *unused) {
    PyObject *coro = PyObject_Vectorcall(asc_tl.orig_acquire, &lock, 1, NULL);
    if (!coro || !asc_trace_active) return coro;
    PyObject *waiters = PyObject_GetAttr(lock, asc_tl.str_waiters);
    PyObject *locked = waiters ? PyObject_GetAttr(lock, asc_tl.str_locked) : NULL;
    if (waiters && locked) {
        /* 3.10+ leaves _waiters None until the lock is first contended, and acquire()'s fast
         * path tests `_waiters is None` before scanning the deque: a lock never contended keeps
         * its None (this acquire waits only if the lock is taken now). */
        if (waiters != Py_None || locked == Py_True) asc_lock_watch(lock, waiters);
        if (locked == Py_False && (waiters == Py_None || PyObject_Size(waiters) == 0))
            asc_hold_put(lock, asc_trace_current_track(), asc_live_now_ns());
    }
    Py_XDECREF(locked);
    Py_XDECREF(waiters);
    PyErr_Clear();
    return coro;
}

/* Lock.release(self) while tracing: the hold span ends when the original release succeeds. */
static PyObject *asc_lock_release(PyObject *lock, PyObject *unused) {
    PyObject *r = PyObject_Vectorcall(asc_tl.orig_release, &lock, 1, NULL);
    if (!r || !asc_trace_active) return r;
    uint32_t track;
    int64_t start;
    if (asc_hold_take(lock, &track, &start))
        asc_trace_put(ASC_EV_LOCK_HOLD, start, asc_live_now_ns() - start, track, asc_tl.name_hold, 0,
                      (uint64_t)(uintptr_t)lock, 0);
    return r;
}

static PyMethodDef asc_lock_acquire_def = {"acquire", asc_lock_acquire, METH_NOARGS,
                                           "Lock.acquire(), with its wait and hold on aioscope's timeline."};
static PyMethodDef asc_lock_release_def = {"release", asc_lock_release, METH_NOARGS,
                                           "Lock.release(), with its hold on aioscope's timeline."};

/* A class of a module (new reference), or NULL with an exception set or not. */
static PyObject *asc_import_type(const char *module, const char *name) {
    PyObject *mod = PyImport_ImportModule(module);
    PyObject *type = mod ? PyObject_GetAttrString(mod, name) : NULL;
    Py_XDECREF(mod);
    if (type && !PyType_Check(type)) Py_CLEAR(type);
    return type;
}

/* LockWaiters: collections.deque plus, after the base's fields, the address of its lock. */
static int asc_waiters_type_init(void) {
    PyObject *deque = asc_import_type("collections", "deque");
    if (!deque) return -1;
    asc_tl.deque_type = (PyTypeObject *)deque;
    asc_tl.deque_append = PyObject_GetAttrString(deque, "append");
    asc_tl.deque_remove = PyObject_GetAttrString(deque, "remove");
    if (!asc_tl.deque_append || !asc_tl.deque_remove) return -1;
    if (asc_tl.deque_type->tp_itemsize != 0) return -1; /* no room after the fields then */
    asc_tl.lock_offset = asc_tl.deque_type->tp_basicsize;
    PyType_Slot slots[] = {
        {Py_tp_methods, asc_waiters_methods},
        {Py_tp_dealloc, (void *)asc_waiters_dealloc},
        {Py_tp_traverse, (void *)asc_waiters_traverse},
        {0, NULL},
    };
    PyType_Spec spec = {
        .name = "aioscope._agent.LockWaiters",
        .basicsize = (int)(asc_tl.lock_offset + sizeof(void *)),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
        .slots = slots,
    };
    PyObject *bases = PyTuple_Pack(1, deque);
    asc_tl.waiters_type = bases ? (PyTypeObject *)PyType_FromSpecWithBases(&spec, bases) : NULL;
    Py_XDECREF(bases);
    return asc_tl.waiters_type ? 0 : -1;
}

/* Replace asyncio.Lock's acquire/release on the class with our method descriptors. */
int asc_trace_locks_init(uint32_t name_wait, uint32_t name_hold) {
    asc_tl.name_wait = name_wait;
    asc_tl.name_hold = name_hold;
    asc_tl.str_locked = PyUnicode_InternFromString("_locked");
    asc_tl.str_waiters = PyUnicode_InternFromString("_waiters");
    if (!asc_tl.str_locked || !asc_tl.str_waiters) return -1;
    if (asc_waiters_type_init() < 0) return -1;
    PyObject *lock_type = asc_import_type("asyncio.locks", "Lock");
    if (!lock_type) return -1;
    asc_tl.orig_acquire = PyObject_GetAttrString(lock_type, "acquire");
    asc_tl.orig_release = PyObject_GetAttrString(lock_type, "release");
    PyObject *acq = asc_tl.orig_acquire ? PyDescr_NewMethod((PyTypeObject *)lock_type, &asc_lock_acquire_def) : NULL;
    PyObject *rel = asc_tl.orig_release ? PyDescr_NewMethod((PyTypeObject *)lock_type, &asc_lock_release_def) : NULL;
    int rc = acq && rel && PyObject_SetAttrString(lock_type, "acquire", acq) == 0 &&
                     PyObject_SetAttrString(lock_type, "release", rel) == 0
                 ? 0
                 : -1;
    Py_XDECREF(acq);
    Py_XDECREF(rel);
    Py_DECREF(lock_type);
    return rc;
}
