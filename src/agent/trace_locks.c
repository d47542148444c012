/* trace_locks.c: asyncio.Lock wait and hold spans for the --trace timeline.
 *
 * While tracing (and only then), asyncio.Lock.acquire and .release are replaced on the class by
 * C method descriptors. acquire() calls the original and hands back its coroutine wrapped in a
 * small awaitable that notices when the coroutine ends: the wait span runs from the call to
 * that moment, and when the lock was acquired a hold starts. release() calls the original and
 * closes the hold. `async with lock`, Condition (which calls the lock's bound methods) and
 * subclasses all go through them. A wait that ends by cancellation is recorded with
 * "acquired": false.
 *
 * Open holds are kept in a fixed table keyed by the lock's address (a program holds a handful
 * of locks at once); when it is full the extra holds are not drawn, nothing else changes. The
 * wrapper is needed only when the lock is taken or awaited by others (an uncontended acquire
 * takes it at once, and gets a hold but no wait); wrappers come from a free list. */
#include "agent/trace.h"

#include <string.h>

#if PY_VERSION_HEX < 0x03090000
#define PyObject_Vectorcall _PyObject_Vectorcall
#endif

/* Locks held at the same time that can have a hold span; a power of two (the index mask). */
#define ASC_HOLD_SLOTS 1024
/* Wrappers kept for reuse: a loop rarely has more acquisitions in flight. */
#define ASC_LOCKWAIT_FREELIST 64

typedef struct {
    const void *lock; /* NULL: free */
    uint32_t track;
    int64_t start;
} asc_hold;

static struct {
    PyObject *orig_acquire, *orig_release; /* owned: asyncio.Lock's own methods */
    PyObject *str_locked, *str_waiters;     /* owned, interned */
    uint32_t name_wait, name_hold;
    asc_hold holds[ASC_HOLD_SLOTS]; /* open addressing, linear probing, backward-shift delete */
    PyObject *freelist[ASC_LOCKWAIT_FREELIST];
    int nfree;
} asc_tl;

static size_t asc_hold_home(const void *lock) {
    /* Objects are 16-byte aligned: the low bits carry nothing. */
    return ((uintptr_t)lock >> 4) * 0x9E3779B97F4A7C15ull >> 54 & (ASC_HOLD_SLOTS - 1);
}

static void asc_hold_put(const void *lock, uint32_t track, int64_t start) {
    size_t i = asc_hold_home(lock);
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
    size_t i = asc_hold_home(lock);
    size_t n = 0;
    while (asc_tl.holds[i].lock != lock) {
        if (asc_tl.holds[i].lock == NULL || ++n == ASC_HOLD_SLOTS) return 0;
        i = (i + 1) & (ASC_HOLD_SLOTS - 1);
    }
    *track = asc_tl.holds[i].track;
    *start = asc_tl.holds[i].start;
    /* Backward-shift deletion: later entries of the probe run move up, so lookups never stop
     * early at the hole. */
    size_t j = i;
    for (;;) {
        asc_tl.holds[i].lock = NULL;
        for (;;) {
            j = (j + 1) & (ASC_HOLD_SLOTS - 1);
            if (asc_tl.holds[j].lock == NULL) return 1;
            size_t k = asc_hold_home(asc_tl.holds[j].lock);
            /* Entry j may fill the hole at i unless its home lies cyclically in (i, j]. */
            if (i <= j ? (i < k && k <= j) : (i < k || k <= j)) continue;
            break;
        }
        asc_tl.holds[i] = asc_tl.holds[j];
        i = j;
    }
}

/* What Lock.acquire() returns while tracing: the original coroutine, wrapped so that its end
 * (the lock acquired, or the wait given up) is seen. It forwards the coroutine protocol that
 * `await` uses on a non-coroutine awaitable: __await__ gives itself, the interpreter drives it
 * with tp_iternext, send(), throw() and close(). */
typedef struct {
    PyObject_HEAD
    PyObject *coro;  /* owned: Lock.acquire's own coroutine */
    PyObject *it;    /* owned: coro.__await__(), made on first use */
    PyObject *lock;  /* owned */
    uint32_t track;
    int64_t t0;
    int finished;
} asc_lockwait;

static PyTypeObject asc_lockwait_type;

/* The wait ended: r is the coroutine's result (NULL with StopIteration or another exception
 * set). Records the wait span, and the start of the hold when the lock was acquired. */
static void asc_lockwait_end(asc_lockwait *w, int acquired) {
    if (w->finished || !asc_trace_active) return;
    w->finished = 1;
    int64_t now = asc_live_now_ns();
    uint64_t id = (uint64_t)(uintptr_t)w->lock;
    asc_trace_put(ASC_EV_LOCK_WAIT, w->t0, now - w->t0, w->track, asc_tl.name_wait, 0, id,
                  acquired ? 0 : 1);
    if (!acquired) return;
    asc_hold_put(w->lock, w->track, now);
}

/* After the wrapped iterator returned r: a value means still waiting; NULL means it finished
 * (StopIteration: acquired) or raised (not acquired). The error is left as it was. */
static PyObject *asc_lockwait_after(asc_lockwait *w, PyObject *r) {
    if (r) return r;
    int acquired = !PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_StopIteration);
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
    asc_lockwait_end(w, acquired);
    PyErr_SetRaisedException(exc);
#else
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    asc_lockwait_end(w, acquired);
    PyErr_Restore(t, v, tb);
#endif
    return NULL;
}

static int asc_lockwait_ready(asc_lockwait *w) {
    if (w->it) return 0;
    PyAsyncMethods *am = Py_TYPE(w->coro)->tp_as_async;
    w->it = am && am->am_await ? am->am_await(w->coro) : PyObject_GetIter(w->coro);
    return w->it ? 0 : -1;
}

static PyObject *asc_lockwait_iternext(PyObject *self) {
    asc_lockwait *w = (asc_lockwait *)self;
    if (asc_lockwait_ready(w) < 0) return NULL;
    return asc_lockwait_after(w, Py_TYPE(w->it)->tp_iternext(w->it));
}

static PyObject *asc_lockwait_send(PyObject *self, PyObject *value) {
    asc_lockwait *w = (asc_lockwait *)self;
    if (asc_lockwait_ready(w) < 0) return NULL;
    PyObject *r = value == Py_None ? Py_TYPE(w->it)->tp_iternext(w->it)
                                   : PyObject_CallMethod(w->it, "send", "O", value);
    return asc_lockwait_after(w, r);
}

static PyObject *asc_lockwait_throw(PyObject *self, PyObject *args) {
    asc_lockwait *w = (asc_lockwait *)self;
    if (asc_lockwait_ready(w) < 0) return NULL;
    PyObject *meth = PyObject_GetAttrString(w->it, "throw");
    PyObject *r = meth ? PyObject_Call(meth, args, NULL) : NULL;
    Py_XDECREF(meth);
    return asc_lockwait_after(w, r);
}

static PyObject *asc_lockwait_close(PyObject *self, PyObject *unused) {
    asc_lockwait *w = (asc_lockwait *)self;
    if (!w->it) return PyObject_CallMethod(w->coro, "close", NULL);
    return PyObject_CallMethod(w->it, "close", NULL);
}

static PyObject *asc_lockwait_await(PyObject *self) {
    Py_INCREF(self);
    return self;
}

static void asc_lockwait_dealloc(PyObject *self) {
    asc_lockwait *w = (asc_lockwait *)self;
    PyObject_GC_UnTrack(self);
    Py_CLEAR(w->coro);
    Py_CLEAR(w->it);
    Py_CLEAR(w->lock);
    if (asc_tl.nfree < ASC_LOCKWAIT_FREELIST) {
        asc_tl.freelist[asc_tl.nfree++] = self;
        return;
    }
    PyObject_GC_Del(self);
}

static int asc_lockwait_traverse(PyObject *self, visitproc visit, void *arg) {
    asc_lockwait *w = (asc_lockwait *)self;
    Py_VISIT(w->coro);
    Py_VISIT(w->it);
    Py_VISIT(w->lock);
    return 0;
}

static PyMethodDef asc_lockwait_methods[] = {
    {"send", asc_lockwait_send, METH_O, NULL},
    {"throw", asc_lockwait_throw, METH_VARARGS, NULL},
    {"close", asc_lockwait_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods asc_lockwait_async = {.am_await = asc_lockwait_await};

static PyTypeObject asc_lockwait_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aioscope._agent.LockAcquire",
    .tp_basicsize = sizeof(asc_lockwait),
    .tp_dealloc = asc_lockwait_dealloc,
    .tp_as_async = &asc_lockwait_async,
    .tp_traverse = asc_lockwait_traverse,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = asc_lockwait_iternext,
    .tp_methods = asc_lockwait_methods,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
};

/* 1 when Lock.acquire() will take the lock without waiting: not locked and nobody waiting
 * (asyncio.locks.Lock.acquire's fast path, 3.8-3.13). Anything unexpected answers 0 (the
 * wrapper then sees the outcome for itself). */
static int asc_lock_is_free(PyObject *lock) {
    PyObject *locked = PyObject_GetAttr(lock, asc_tl.str_locked);
    PyObject *waiters = locked == Py_False ? PyObject_GetAttr(lock, asc_tl.str_waiters) : NULL;
    int free_ = locked == Py_False && waiters &&
                (waiters == Py_None || (PyObject_Size(waiters) == 0));
    Py_XDECREF(locked);
    Py_XDECREF(waiters);
    PyErr_Clear();
    return free_;
}

/* Lock.acquire(self) while tracing. */
static PyObject *asc_lock_acquire(PyObject *lock, PyObject *unused) {
    int64_t t0 = asc_live_now_ns();
    PyObject *coro = PyObject_Vectorcall(asc_tl.orig_acquire, &lock, 1, NULL);
    if (!coro || !asc_trace_active) return coro;
    if (asc_lock_is_free(lock)) {
        /* Uncontended: the coroutine takes the lock at its first step, which `await` (and
         * `async with`) runs right away. No wait to draw, so no wrapper: the hold starts now. */
        asc_hold_put(lock, asc_trace_current_track(), t0);
        return coro;
    }
    asc_lockwait *w;
    if (asc_tl.nfree > 0) {
        w = (asc_lockwait *)asc_tl.freelist[--asc_tl.nfree];
        (void)PyObject_INIT(w, &asc_lockwait_type);
    } else {
        w = PyObject_GC_New(asc_lockwait, &asc_lockwait_type);
    }
    if (!w) {
        PyErr_Clear();
        return coro; /* untraced, but the program runs on */
    }
    w->coro = coro;
    w->it = NULL;
    Py_INCREF(lock);
    w->lock = lock;
    w->track = asc_trace_current_track();
    w->t0 = t0;
    w->finished = 0;
    PyObject_GC_Track((PyObject *)w);
    return (PyObject *)w;
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
    PyErr_Clear();
    return r;
}

static PyMethodDef asc_lock_acquire_def = {"acquire", asc_lock_acquire, METH_NOARGS,
                                           "Lock.acquire(), with its wait and hold on aioscope's timeline."};
static PyMethodDef asc_lock_release_def = {"release", asc_lock_release, METH_NOARGS,
                                           "Lock.release(), with its hold on aioscope's timeline."};

/* Replace asyncio.Lock's acquire/release on the class with our method descriptors. */
int asc_trace_locks_init(uint32_t name_wait, uint32_t name_hold) {
    asc_tl.name_wait = name_wait;
    asc_tl.str_locked = PyUnicode_InternFromString("_locked");
    asc_tl.str_waiters = PyUnicode_InternFromString("_waiters");
    if (!asc_tl.str_locked || !asc_tl.str_waiters) return -1;
    asc_tl.name_hold = name_hold;
    if (PyType_Ready(&asc_lockwait_type) < 0) return -1;
    PyObject *locks = PyImport_ImportModule("asyncio.locks");
    PyObject *lock_type = locks ? PyObject_GetAttrString(locks, "Lock") : NULL;
    Py_XDECREF(locks);
    if (!lock_type || !PyType_Check(lock_type)) {
        Py_XDECREF(lock_type);
        return -1;
    }
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

