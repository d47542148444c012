/* trace_locks.c: asyncio.Lock wait and hold spans for the --trace timeline.
 *
 * Lock.acquire and Lock.release (3.8-3.13) mark every change of the lock's state with one
 * attribute store, and wait in one way only:
 *
 *     acquire:  free (not _locked, nobody waiting)?  self._locked = True
 *               else: fut = loop.create_future(); self._waiters.append(fut)
 *                     try: await fut  finally: self._waiters.remove(fut)
 *                     (CancelledError: raise)   self._locked = True
 *     release:  self._locked = False; wake the first waiter
 *
 * So while tracing (and only then) asyncio.Lock gets a C __setattr__ (tp_setattro, installed
 * through the class's dict so that subclasses have it too) that notes `_locked = True` (a hold
 * starts, in the task running now) and `_locked = False` (it ends), and swaps the deque that
 * acquire() stores in `_waiters` on first contention for an instance of LockWaiters, a C
 * subclass of deque whose append() and remove() note when a waiter starts and stops waiting.
 * A wait that ended with its future not cancelled is kept pending until the same step sets
 * `_locked = True` (acquired: the wait's end is the hold's start) or ends without it (the task
 * was cancelled after its future got the lock: not acquired). `async with lock`, Condition
 * (which calls the lock's methods) and subclasses all go through these stores.
 *
 * Why attribute stores and not acquire/release (the previous version replaced both methods on
 * the class by C method descriptors calling the Python originals): a Python function called
 * from C is entered afresh instead of through the interpreter's inlined call, twice per
 * acquisition, and the acquire hook had to read _locked and _waiters again to see the fast
 * path; a store through tp_setattro costs one C call (the store loses its specialisation on
 * this one class). Before that, the coroutine acquire() returns was wrapped, which cost about
 * half of what --trace cost on a contended lock (3.12, bench/workloads).
 *
 * Open holds are kept in a fixed table keyed by the lock's address (a program holds a handful
 * of locks at once); when it is full the extra holds are not drawn, nothing else changes. Open
 * waits are kept in a table keyed by the waiter future's address that grows with the number of
 * tasks waiting at once. Locks created before the agent was installed (none under `aioscope
 * run`, which installs it before the program starts) that were contended before have a plain
 * deque and no wait spans; their holds are drawn. */
#include "agent/trace.h"

#include <stdlib.h>
#include <string.h>


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
    PyObject *str_locked, *str_waiters;     /* owned, interned */
    PyTypeObject *deque_type;               /* owned: collections.deque */
    PyTypeObject *waiters_type;             /* owned: LockWaiters, our subclass of deque */
    PyCFunction deque_append, deque_remove; /* deque's own METH_O C functions, called directly */
    Py_ssize_t lock_offset;                 /* where LockWaiters keeps its lock's address */
    uint32_t name_wait, name_hold;
    /* The __setattr__ and __delattr__ slot wrappers put in Lock's dict: object's, with our
     * function (see asc_lock_setattro_install). They live as long as the process. */
    struct wrapperbase setattr_base, delattr_base;
    asc_hold holds[ASC_HOLD_SLOTS]; /* open addressing, linear probing, backward-shift delete */
    asc_wait *waits;                /* owned; the same scheme, nwaits_cap slots */
    size_t nwaits, nwaits_cap;
    int npending; /* threads with a pending wait (below): most steps need not look */
} asc_tl;

/* The last wait that ended in this thread with its future not cancelled, until its task sets
 * _locked (acquired) or its step ends (not): fut NULL when none; end is when it ended. Per
 * thread: loops in two threads may switch between a wait's end and its _locked store. */
static __thread struct {
    asc_wait w;
    int64_t end;
} asc_pending;

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

/* ---- the end of a wait ---------------------------------------------------------------------- */

static void asc_wait_record(const asc_wait *w, int64_t end, int acquired) {
    asc_trace_put(ASC_EV_LOCK_WAIT, w->start, end > w->start ? end - w->start : 0, w->track, asc_tl.name_wait, 0,
                  (uint64_t)(uintptr_t)w->lock, acquired ? 0 : 1);
}

/* The pending wait did not get its lock: its task was cancelled after the future was given the
 * lock, or raised before storing _locked. Called at the end of every traced step (trace.c), at
 * the next wait's end or hold's start, and before the file is written. */
void asc_trace_locks_flush(void) {
    if (!asc_tl.npending || !asc_pending.w.fut) return;
    asc_wait_record(&asc_pending.w, asc_pending.end, 0);
    asc_pending.w.fut = NULL;
    asc_tl.npending--;
}

/* ---- LockWaiters: the lock's _waiters deque, watched ---------------------------------------- */

static const void **asc_waiters_lock(PyObject *self) {
    return (const void **)((char *)self + asc_tl.lock_offset);
}

/* _waiters.append(fut): the current task starts waiting for the lock. */
static PyObject *asc_waiters_append(PyObject *self, PyObject *fut) {
    PyObject *r = asc_tl.deque_append(self, fut);
    if (!r || !asc_trace_active) return r;
    asc_wait w = {.fut = fut, .lock = *asc_waiters_lock(self), .start = asc_clock_now()};
    w.track = asc_trace_current_track(NULL);
    asc_wait_put(&w);
    return r;
}

/* _waiters.remove(fut): the wait is over. Cancelled future: not acquired. Otherwise the lock is
 * the waiter's if its task goes on to store _locked = True in this step (asc_lock_set_locked).
 *
 * The wait ends when its task wakes up: `await fut` in acquire() resumes only at the start of a
 * step, and the remove() in its `finally` is the first thing that step runs. So when steps.c is
 * timing that step of the waiting task, the wait ends at the step's start, read by steps.c
 * already, with no clock reading here. */
static PyObject *asc_waiters_remove(PyObject *self, PyObject *fut) {
    PyObject *r = asc_tl.deque_remove(self, fut);
    asc_wait w;
    if (!asc_trace_active || !asc_wait_take(fut, &w)) return r;
    int64_t now;
    if (asc_trace_current_track(&now) != w.track || now < w.start) now = asc_clock_now();
    asc_trace_locks_flush();
    if (!r) { /* remove() failed: its error stays as it was; the wait is over all the same */
        asc_wait_record(&w, now, 0);
        return r;
    }
    if (asc_trace_future_cancelled(fut) == 0) {
        asc_pending.w = w; /* none pending here: flushed above */
        asc_pending.end = now;
        asc_tl.npending++;
    } else {
        asc_wait_record(&w, now, 0);
    }
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

/* ---- Lock's attribute stores ---------------------------------------------------------------- */

/* 1 when name is the attribute s (interned): identifiers in code are interned, so a pointer
 * comparison; a name built at run time (setattr(lock, "_loc" + "ked", ...)) is compared. */
static inline int asc_is_name(PyObject *name, PyObject *s) {
    if (name == s) return 1;
    return PyUnicode_Check(name) && !PyUnicode_CHECK_INTERNED(name) && PyUnicode_Compare(name, s) == 0;
}

/* lock._locked = value, stored. True: a hold starts, in the task running now; when that task's
 * wait just ended (the pending wait) the wait was acquired and the hold starts where it ended.
 * False: the hold, if one is open, ends now. */
static void asc_lock_set_locked(PyObject *lock, PyObject *value) {
    if (value == Py_True) {
        if (asc_tl.npending && asc_pending.w.fut && asc_pending.w.lock == lock) {
            asc_wait_record(&asc_pending.w, asc_pending.end, 1);
            asc_hold_put(lock, asc_pending.w.track, asc_pending.end);
            asc_pending.w.fut = NULL;
            asc_tl.npending--;
            return;
        }
        asc_trace_locks_flush();
        asc_hold_put(lock, asc_trace_current_track(NULL), asc_clock_now());
    } else if (value == Py_False) {
        uint32_t track;
        int64_t start;
        if (asc_hold_take(lock, &track, &start)) {
            int64_t now = asc_clock_now();
            asc_trace_put(ASC_EV_LOCK_HOLD, start, now > start ? now - start : 0, track, asc_tl.name_hold,
                          0, (uint64_t)(uintptr_t)lock, 0);
        }
    }
}

/* lock._waiters = a deque (acquire() on the lock's first contention; 3.8-3.13 start with None):
 * a LockWaiters with the same items is stored instead. NULL (no exception) when it cannot be
 * made: the deque is stored as it is, the lock has no wait spans. */
static PyObject *asc_lock_watched_waiters(PyObject *lock, PyObject *deque) {
    PyObject *w = PyObject_CallFunctionObjArgs((PyObject *)asc_tl.waiters_type, deque, NULL);
    if (!w) {
        PyErr_Clear();
        return NULL;
    }
    *asc_waiters_lock(w) = lock;
    return w;
}

/* Lock's tp_setattro while tracing: the generic store, noting _locked and _waiters. */
static int asc_lock_setattro(PyObject *self, PyObject *name, PyObject *value) {
    if (!value || !asc_trace_active) return PyObject_GenericSetAttr(self, name, value);
    if (asc_is_name(name, asc_tl.str_locked)) {
        int rc = PyObject_GenericSetAttr(self, name, value);
        if (rc == 0) asc_lock_set_locked(self, value);
        return rc;
    }
    if (Py_TYPE(value) == asc_tl.deque_type && asc_is_name(name, asc_tl.str_waiters)) {
        PyObject *w = asc_lock_watched_waiters(self, value);
        int rc = PyObject_GenericSetAttr(self, name, w ? w : value);
        Py_XDECREF(w);
        return rc;
    }
    return PyObject_GenericSetAttr(self, name, value);
}

/* Gives asyncio.Lock our tp_setattro the way a class statement would give it a __setattr__:
 * Lock's dict gets a __setattr__ and a __delattr__ slot wrapper (copies of object's, whose
 * wrapped function is ours), and the type machinery then puts that function itself in the slot
 * of Lock and of every subclass, present or future (a slot written directly would be replaced
 * by object's in a subclass made later). Both names are needed: they share the slot, and
 * different functions behind them would give the slow generic dispatch. 0, or -1 (an exception
 * set or not) with Lock as it was. */
static int asc_lock_setattro_install(PyObject *lock_type) {
    PyObject *os = PyObject_GetAttrString((PyObject *)&PyBaseObject_Type, "__setattr__");
    PyObject *od = os ? PyObject_GetAttrString((PyObject *)&PyBaseObject_Type, "__delattr__") : NULL;
    int ok = od && Py_TYPE(os) == &PyWrapperDescr_Type && Py_TYPE(od) == &PyWrapperDescr_Type;
    if (ok) {
        asc_tl.setattr_base = *((PyWrapperDescrObject *)os)->d_base;
        asc_tl.delattr_base = *((PyWrapperDescrObject *)od)->d_base;
    }
    Py_XDECREF(os);
    Py_XDECREF(od);
    if (!ok) return -1;
    PyTypeObject *tp = (PyTypeObject *)lock_type;
    PyObject *ds = PyDescr_NewWrapper(tp, &asc_tl.setattr_base, (void *)asc_lock_setattro);
    PyObject *dd = ds ? PyDescr_NewWrapper(tp, &asc_tl.delattr_base, (void *)asc_lock_setattro) : NULL;
    int rc = dd && PyObject_SetAttrString(lock_type, "__setattr__", ds) == 0 &&
                     PyObject_SetAttrString(lock_type, "__delattr__", dd) == 0 &&
                     tp->tp_setattro == asc_lock_setattro
                 ? 0
                 : -1;
    Py_XDECREF(ds);
    Py_XDECREF(dd);
    if (rc < 0) { /* the slot is not ours after all: back to object's */
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        if (PyObject_DelAttrString(lock_type, "__setattr__") < 0) PyErr_Clear();
        if (PyObject_DelAttrString(lock_type, "__delattr__") < 0) PyErr_Clear();
        PyErr_Restore(et, ev, etb);
    }
    return rc;
}

/* ---- init ----------------------------------------------------------------------------------- */

/* A class of a module (new reference), or NULL with an exception set or not. */
static PyObject *asc_import_type(const char *module, const char *name) {
    PyObject *mod = PyImport_ImportModule(module);
    PyObject *type = mod ? PyObject_GetAttrString(mod, name) : NULL;
    Py_XDECREF(mod);
    if (type && !PyType_Check(type)) Py_CLEAR(type);
    return type;
}

/* deque's C function for one of its METH_O methods (append, remove), which LockWaiters' own
 * methods call directly rather than through the method descriptor; NULL (an exception set or
 * not) when the method is not such a descriptor. */
static PyCFunction asc_deque_method(PyObject *deque, const char *name) {
    PyObject *dict = asc_type_dict((PyTypeObject *)deque);
    PyObject *m = dict ? PyDict_GetItemString(dict, name) : NULL; /* borrowed */
    if (!m || Py_TYPE(m) != &PyMethodDescr_Type) return NULL;
    PyMethodDef *def = ((PyMethodDescrObject *)m)->d_method;
    return def->ml_flags == METH_O ? def->ml_meth : NULL;
}

/* LockWaiters: collections.deque plus, after the base's fields, the address of its lock. */
static int asc_waiters_type_init(void) {
    PyObject *deque = asc_import_type("collections", "deque");
    if (!deque) return -1;
    asc_tl.deque_type = (PyTypeObject *)deque;
    asc_tl.deque_append = asc_deque_method(deque, "append");
    asc_tl.deque_remove = asc_deque_method(deque, "remove");
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

/* Watch asyncio.Lock's attribute stores (see the top of the file). 0 or -1. */
int asc_trace_locks_init(uint32_t name_wait, uint32_t name_hold) {
    asc_tl.name_wait = name_wait;
    asc_tl.name_hold = name_hold;
    asc_tl.str_locked = PyUnicode_InternFromString("_locked");
    asc_tl.str_waiters = PyUnicode_InternFromString("_waiters");
    if (!asc_tl.str_locked || !asc_tl.str_waiters) return -1;
    if (asc_waiters_type_init() < 0) return -1;
    PyObject *lock_type = asc_import_type("asyncio.locks", "Lock");
    if (!lock_type) return -1;
    int rc = asc_lock_setattro_install(lock_type);
    Py_DECREF(lock_type);
    return rc;
}
