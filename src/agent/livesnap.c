/* livesnap.c: a snapshot of the running program's threads and tasks, taken from inside it.
 *
 * With the GIL held, the interpreter's state is consistent, so the agent reads it through the C
 * API rather than through memory: every thread's Python stack (sys._current_frames), every
 * asyncio task (the registry asyncio keeps: _all_tasks on 3.8-3.11, _scheduled_tasks and
 * _eager_tasks on 3.12/3.13), each task's coroutine chain down to what it waits on, who awaits
 * whom (a task, a gather, a TaskGroup, asyncio.wait), and the agent's own counters (busy time,
 * steps, age, spawner: steps.c). The result is the one snapshot model of include/aioscope/
 * snapshot.h, which the control socket (control.c) sends as JSON and snapshot() / print_tasks()
 * give to the program itself. The threads' part is in livethreads.c.
 *
 * Speed matters here, because the program's loop waits while we hold the GIL: a C Task's fields
 * (state, coroutine, the future it waits on, its loop) are read directly at the offsets of the
 * attach library's generated layout tables, strings are interned once per snapshot, and Python
 * attributes are used only where nothing cheaper is sound (frame lines, sleep deadlines). Every
 * walk is bounded. Every function here runs with the GIL held. */
#include "agent/agent.h"
#include "agent/clock.h"

#include <stdlib.h>
#include <string.h>

#include "agent/livesnap.h"
#include "aioscope/snapshot.h"
#include "attach/layouts.h"

#if PY_VERSION_HEX < 0x030B0000
#include <frameobject.h>
#endif

/* A coroutine chain deeper than this is cut (the innermost frames are the interesting ones only
 * for the "awaiting" classification, which uses the last frame read). */
#define ASC_MAX_CORO_DEPTH 64
/* A gather / wait / TaskGroup with more children than this links only the first ones. */
#define ASC_MAX_CHILDREN 4096

static struct {
    int ready;
    const asc_layout *layout;  /* NULL: read tasks through attributes */
    PyTypeObject *task_type;   /* _asyncio.Task (borrowed: asyncio keeps it) */
    PyTypeObject *future_type; /* _asyncio.Future (borrowed) */
    PyObject *tasks_mod;       /* owned: asyncio.tasks */
    PyObject *current_tasks;   /* owned: {loop: task} */
    PyObject *aexit_func;      /* owned: asyncio.locks._ContextManagerMixin.__aexit__ (or NULL) */
    PyObject *cond_type;       /* owned: asyncio.Condition (or NULL) */
    int op_async_with;         /* opcode.opmap["BEFORE_ASYNC_WITH"], -1 when unknown */
    PyTypeObject *name_type;   /* the task type last checked for its own get_name (per collection) */
    int name_plain;            /* ... and whether it is the C Task's (then the field is read) */
    PyObject *s_get_name, *s_cr_frame, *s_cr_await, *s_gi_frame, *s_gi_yieldfrom, *s_ag_await,
        *s_f_locals, *s_children, *s_when, *s_tasks, *s_fs, *s_self, *s_exception,
        *s_log_traceback, *s_cancelling, *s_must_cancel, *s_h;
} asc_ls;

static int asc_ls_init(void) {
    if (asc_ls.ready) return 0;
#define ASC_INTERN(field, text)                                                                  \
    if (!(asc_ls.field = PyUnicode_InternFromString(text))) return -1;
    ASC_INTERN(s_get_name, "get_name")
    ASC_INTERN(s_cr_frame, "cr_frame")
    ASC_INTERN(s_cr_await, "cr_await")
    ASC_INTERN(s_gi_frame, "gi_frame")
    ASC_INTERN(s_gi_yieldfrom, "gi_yieldfrom")
    ASC_INTERN(s_ag_await, "ag_await")
    ASC_INTERN(s_f_locals, "f_locals")
    ASC_INTERN(s_children, "_children")
    ASC_INTERN(s_when, "_when")
    ASC_INTERN(s_tasks, "_tasks")
    ASC_INTERN(s_fs, "fs")
    ASC_INTERN(s_self, "self")
    ASC_INTERN(s_exception, "_exception")
    ASC_INTERN(s_log_traceback, "_log_traceback")
    ASC_INTERN(s_cancelling, "cancelling")
    ASC_INTERN(s_must_cancel, "_must_cancel")
    ASC_INTERN(s_h, "h")
#undef ASC_INTERN
    asc_ls.tasks_mod = PyImport_ImportModule("asyncio.tasks");
    if (!asc_ls.tasks_mod) return -1;
    /* asyncio.Task, not asyncio.tasks.Task, which is the agent's subclass (task_factory.c). */
    PyObject *aio = PyImport_ImportModule("asyncio");
    PyObject *t = aio ? PyObject_GetAttrString(aio, "Task") : NULL;
    Py_XDECREF(aio);
    if (!t) return -1;
    /* Direct field reads are sound only on the C Task (and subclasses), whose layout the tables
     * describe; asyncio.Task is the C one unless _asyncio failed to import. */
    if (PyType_Check(t) && strcmp(((PyTypeObject *)t)->tp_name, "_asyncio.Task") == 0) {
        asc_ls.task_type = (PyTypeObject *)t;
        asc_ls.layout = asc_layout_find(PY_VERSION_HEX);
    }
    Py_DECREF(t);
    PyObject *fut = PyImport_ImportModule("asyncio.futures");
    PyObject *ft = fut ? PyObject_GetAttrString(fut, "Future") : NULL;
    if (ft && PyType_Check(ft) && strcmp(((PyTypeObject *)ft)->tp_name, "_asyncio.Future") == 0)
        asc_ls.future_type = (PyTypeObject *)ft;
    Py_XDECREF(ft);
    Py_XDECREF(fut);
    PyErr_Clear();
    /* Lock holders (below): what `async with lock:` leaves on a holder's stack. */
    PyObject *locks = PyImport_ImportModule("asyncio.locks");
    PyObject *mixin = locks ? PyObject_GetAttrString(locks, "_ContextManagerMixin") : NULL;
    asc_ls.aexit_func = mixin ? PyObject_GetAttrString(mixin, "__aexit__") : NULL;
    asc_ls.cond_type = locks ? PyObject_GetAttrString(locks, "Condition") : NULL;
    Py_XDECREF(mixin);
    Py_XDECREF(locks);
    PyErr_Clear();
    asc_ls.current_tasks = PyObject_GetAttrString(asc_ls.tasks_mod, "_current_tasks");
    if (!asc_ls.current_tasks) PyErr_Clear();
    /* The opcode that starts an `async with` (numbers change between versions): frames of code
     * without it cannot hold a lock that way (asc_note_holds). */
    asc_ls.op_async_with = -1;
    PyObject *opcode = PyImport_ImportModule("opcode");
    PyObject *opmap = opcode ? PyObject_GetAttrString(opcode, "opmap") : NULL;
    PyObject *op = opmap && PyDict_Check(opmap) ? PyDict_GetItemString(opmap, "BEFORE_ASYNC_WITH") : NULL;
    if (op && PyLong_Check(op)) {
        long v = PyLong_AsLong(op);
        asc_ls.op_async_with = v >= 0 && v < 256 ? (int)v : -1;
    }
    Py_XDECREF(opmap);
    Py_XDECREF(opcode);
    PyErr_Clear();
    asc_ls.ready = 1;
    return 0;
}

/* ---- reading one object ------------------------------------------------------------------- */

/* A task field at a layout offset (borrowed; NULL when empty), or through an attribute when the
 * object is not a C task (new reference dropped at once: the task keeps the value alive). */
static PyObject *asc_task_field(PyObject *task, int32_t off) {
    if (off < 0) return NULL;
    return *(PyObject **)((char *)task + off);
}

static int asc_is_c_task(PyObject *obj) {
    return asc_ls.layout && asc_ls.task_type && PyObject_TypeCheck(obj, asc_ls.task_type);
}

/* UTF-8 of a str (cached in the object by CPython), interned into the snapshot. */
const char *asc_live_str(aioscope_snapshot *snap, PyObject *s, const char *dflt) {
    const char *u = s && PyUnicode_Check(s) ? PyUnicode_AsUTF8(s) : NULL;
    if (!u) {
        PyErr_Clear();
        u = dflt;
    }
    return aioscope_snapshot_intern(snap, u);
}

/* file / function / line of a frame object. */
void asc_live_frame_info(aioscope_snapshot *snap, PyObject *frame, aioscope_snap_frame *out) {
    PyCodeObject *code = PyFrame_GetCode((PyFrameObject *)frame); /* new reference */
    out->file = asc_live_str(snap, code->co_filename, "?");
#if PY_VERSION_HEX >= 0x030B0000
    out->function = asc_live_str(snap, code->co_qualname, "?");
#else
    out->function = asc_live_str(snap, code->co_name, "?");
#endif
    out->line = PyFrame_GetLineNumber((PyFrameObject *)frame);
    Py_DECREF(code);
}

/* ---- code objects ----------------------------------------------------------------------------
 * 100 000 tasks run a handful of coroutine functions. What a frame needs from its code object
 * (file and function as snapshot strings, whether the code has an `async with`, the line of an
 * instruction) is worked out once per code object and collection, in a table keyed by the code
 * object's address. The table holds a reference to each code object so that no address in it can
 * be reused for another object while the collection lasts; it is emptied at the end. */

typedef struct {
    PyObject *code;      /* owned */
    const char *file, *function;
    const void *instr;   /* the instruction whose line was looked up last, and that line */
    int line;
    int has_async_with;  /* 1 also when we could not tell */
} asc_code_entry;

static struct {
    asc_code_entry *v;
    size_t cap, n;
    int active; /* a collection is under way and the table may be used */
} asc_codes;

static size_t asc_code_slot(const PyObject *code, size_t cap) {
    uint64_t x = (uint64_t)(uintptr_t)code >> 4;
    return (size_t)((x * 0x9E3779B97F4A7C15ULL) >> 20) & (cap - 1);
}

/* Does the bytecode contain BEFORE_ASYNC_WITH? Instructions are 2-byte units from 3.6 on; in
 * 3.11+ PyCode_GetCode gives the unspecialised bytes, whose inline caches are zeros. */
static int asc_code_has_async_with(PyCodeObject *co) {
    if (asc_ls.op_async_with < 0) return 1;
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *bytes = PyCode_GetCode(co); /* new reference */
#else
    PyObject *bytes = co->co_code;
    Py_XINCREF(bytes);
#endif
    if (!bytes || !PyBytes_Check(bytes)) {
        Py_XDECREF(bytes);
        PyErr_Clear();
        return 1;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(bytes);
    Py_ssize_t n = PyBytes_GET_SIZE(bytes);
    int found = 0;
    for (Py_ssize_t i = 0; i + 1 < n && !found; i += 2) found = p[i] == asc_ls.op_async_with;
    Py_DECREF(bytes);
    return found;
}

static int asc_codes_grow(void) {
    size_t cap = asc_codes.cap ? asc_codes.cap * 2 : 64;
    asc_code_entry *v = calloc(cap, sizeof *v);
    if (!v) return -1;
    for (size_t i = 0; i < asc_codes.cap; i++) {
        if (!asc_codes.v[i].code) continue;
        size_t j = asc_code_slot(asc_codes.v[i].code, cap);
        while (v[j].code) j = (j + 1) & (cap - 1);
        v[j] = asc_codes.v[i];
    }
    free(asc_codes.v);
    asc_codes.v = v;
    asc_codes.cap = cap;
    return 0;
}

/* The entry of a code object (borrowed, must be a code object), made on first use; NULL outside
 * a collection or when out of memory (the caller then works it out itself). */
static asc_code_entry *asc_code_lookup(aioscope_snapshot *snap, PyObject *code) {
    if (!asc_codes.active) return NULL;
    if (2 * (asc_codes.n + 1) > asc_codes.cap && asc_codes_grow() < 0) return NULL;
    size_t j = asc_code_slot(code, asc_codes.cap);
    for (; asc_codes.v[j].code; j = (j + 1) & (asc_codes.cap - 1))
        if (asc_codes.v[j].code == code) return &asc_codes.v[j];
    asc_code_entry *e = &asc_codes.v[j];
    PyCodeObject *co = (PyCodeObject *)code;
    e->file = asc_live_str(snap, co->co_filename, "?");
#if PY_VERSION_HEX >= 0x030B0000
    e->function = asc_live_str(snap, co->co_qualname, "?");
#else
    e->function = asc_live_str(snap, co->co_name, "?");
#endif
    if (!e->file || !e->function) return NULL; /* out of memory: the slot stays free */
    e->has_async_with = asc_code_has_async_with(co);
    e->instr = NULL;
    e->line = 0;
    Py_INCREF(code);
    e->code = code;
    asc_codes.n++;
    return e;
}

static void asc_codes_begin(void) {
    asc_codes.active = 1;
}

static void asc_codes_end(void) {
    for (size_t i = 0; i < asc_codes.cap; i++) Py_XDECREF(asc_codes.v[i].code);
    free(asc_codes.v);
    asc_codes.v = NULL;
    asc_codes.cap = asc_codes.n = 0;
    asc_codes.active = 0;
}

/* file / function / line of a frame object, through the code table; *maybe_holds: whether its
 * code could hold a lock with `async with`. */
static void asc_frame_info_cached(aioscope_snapshot *snap, PyObject *frame, aioscope_snap_frame *out,
                                  int *maybe_holds) {
    PyCodeObject *code = PyFrame_GetCode((PyFrameObject *)frame); /* new reference */
    asc_code_entry *e = asc_code_lookup(snap, (PyObject *)code);
    Py_DECREF(code); /* the frame, and the table, keep it */
    if (!e) {
        asc_live_frame_info(snap, frame, out);
        *maybe_holds = 1;
        return;
    }
    out->file = e->file;
    out->function = e->function;
    out->line = PyFrame_GetLineNumber((PyFrameObject *)frame);
    *maybe_holds = e->has_async_with;
}

/* Attribute or NULL, never an exception. */
static PyObject *asc_getattr(PyObject *obj, PyObject *name) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v) PyErr_Clear();
    return v;
}

/* A local variable of a frame (new reference) or NULL; used only for the few asyncio frames
 * whose locals say what they wait on (self of Lock.acquire, h of sleep). Reading f_locals would
 * build a dict per frame, so the variable is read in place where the C API allows it. */
static PyObject *asc_frame_local(PyObject *frame, PyObject *name) {
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *v = PyFrame_GetVar((PyFrameObject *)frame, name);
    if (!v) PyErr_Clear();
    return v;
#elif PY_VERSION_HEX < 0x030B0000
    /* 3.8-3.10: the fast locals are in f_localsplus, named by co_varnames; a variable captured by
     * a closure is a cell there. */
    PyFrameObject *f = (PyFrameObject *)frame;
    PyCodeObject *co = f->f_code;
    Py_ssize_t n = PyTuple_GET_SIZE(co->co_varnames);
    for (Py_ssize_t i = 0; i < n && i < co->co_nlocals; i++) {
        PyObject *vn = PyTuple_GET_ITEM(co->co_varnames, i);
        if (vn != name && PyUnicode_Compare(vn, name) != 0) continue;
        PyObject *v = f->f_localsplus[i];
        if (v && PyCell_Check(v)) v = PyCell_GET(v);
        Py_XINCREF(v);
        return v;
    }
    PyErr_Clear();
    return NULL;
#else
    /* 3.11 has no public way to read one variable: f_locals it is. */
    PyObject *locals = asc_getattr(frame, asc_ls.s_f_locals);
    if (!locals) return NULL;
    PyObject *v = PyObject_GetItem(locals, name);
    Py_DECREF(locals);
    if (!v) PyErr_Clear();
    return v;
#endif
}

/* A local variable of a suspended coroutine or generator (new reference) or NULL. From 3.11 it
 * is read in the interpreter frame inside the object (no frame object made: see asc_iframe_info),
 * by its index in co_localsplusnames; a cell or free variable holds a cell, which is opened. */
static PyObject *asc_coro_local(PyObject *gen, PyObject *name) {
#if PY_VERSION_HEX >= 0x030B0000
    const asc_layout *L = asc_ls.layout;
    if (L && L->coro_iframe >= 0 && L->coro_frame_state >= 0 && L->iframe_code >= 0 && L->iframe_localsplus >= 0) {
        if (*(int8_t *)((char *)gen + L->coro_frame_state) >= 1) return NULL; /* no frame */
        char *iframe = (char *)gen + L->coro_iframe;
        PyObject *code = *(PyObject **)(iframe + L->iframe_code);
        if (!code || !PyCode_Check(code)) return NULL;
        PyCodeObject *co = (PyCodeObject *)code;
        Py_ssize_t n = PyTuple_GET_SIZE(co->co_localsplusnames);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *vn = PyTuple_GET_ITEM(co->co_localsplusnames, i);
            if (vn != name && PyUnicode_Compare(vn, name) != 0) continue;
            PyObject *v = ((PyObject **)(iframe + L->iframe_localsplus))[i];
            unsigned char kind = (unsigned char)PyBytes_AS_STRING(co->co_localspluskinds)[i];
            if (v && (kind & (0x40 | 0x80)) && PyCell_Check(v)) v = PyCell_GET(v); /* CO_FAST_CELL/FREE */
            Py_XINCREF(v);
            return v;
        }
        PyErr_Clear();
        return NULL;
    }
#endif
    PyObject *frame = asc_getattr(gen, PyCoro_CheckExact(gen) ? asc_ls.s_cr_frame : asc_ls.s_gi_frame);
    PyObject *v = frame && frame != Py_None ? asc_frame_local(frame, name) : NULL;
    Py_XDECREF(frame);
    return v;
}

/* ---- awaited-by links --------------------------------------------------------------------- */

typedef struct {
    uint64_t child, parent;
} asc_link;

typedef struct {
    asc_link *v;
    size_t n, cap;
} asc_links;

static void asc_link_add(asc_links *l, PyObject *child, PyObject *parent) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        asc_link *v = realloc(l->v, cap * sizeof *v);
        if (!v) return; /* out of memory: this link is lost, the snapshot is still sound */
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n].child = (uint64_t)(uintptr_t)child;
    l->v[l->n].parent = (uint64_t)(uintptr_t)parent;
    l->n++;
}

/* Every future in an iterable (a gather's children, wait()'s set, a TaskGroup's tasks) is awaited
 * by parent. */
static void asc_link_all(asc_links *l, PyObject *iterable, PyObject *parent) {
    if (!iterable) return;
    PyObject *it = PyObject_GetIter(iterable);
    if (!it) {
        PyErr_Clear();
        return;
    }
    PyObject *item;
    for (int i = 0; i < ASC_MAX_CHILDREN && (item = PyIter_Next(it)); i++) {
        asc_link_add(l, item, parent);
        Py_DECREF(item);
    }
    Py_DECREF(it);
    PyErr_Clear();
}

/* ---- what a task waits on -------------------------------------------------------------------- */

static int asc_ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* The type name of a frame's `self` (Lock, Event, Queue, ...), or dflt. */
static const char *asc_self_type(PyObject *gen, char *buf, size_t cap, const char *dflt,
                                 uint64_t *id) {
    PyObject *self = asc_coro_local(gen, asc_ls.s_self);
    if (!self) return dflt;
    snprintf(buf, cap, "%s", Py_TYPE(self)->tp_name);
    *id = (uint64_t)(uintptr_t)self;
    Py_DECREF(self);
    return buf;
}

/* Fill t->awaiting / awaiting_id from the future the task waits on (waiter, borrowed, may be
 * NULL) and the innermost coroutine of its chain (inner, borrowed, may be NULL); add the
 * links from what it waits on back to the task. */
static void asc_classify_wait(aioscope_snapshot *snap, asc_links *links, PyObject *task,
                              aioscope_snap_task *t, PyObject *waiter, PyObject *inner,
                              const aioscope_snap_frame *inner_info) {
    char buf[160];
    const char *what = NULL;
    uint64_t id = waiter ? (uint64_t)(uintptr_t)waiter : 0;
    const char *fn = inner_info ? inner_info->function : "";
    const char *file = inner_info ? inner_info->file : "";
    int in_asyncio = strstr(file, "/asyncio/") != NULL;

    if (waiter && asc_ls.task_type && PyObject_TypeCheck(waiter, asc_ls.task_type)) {
        what = "task";
        asc_link_add(links, waiter, task);
    } else if (waiter && strcmp(Py_TYPE(waiter)->tp_name, "_GatheringFuture") == 0) {
        what = "gather";
        PyObject *children = asc_getattr(waiter, asc_ls.s_children);
        asc_link_all(links, children, task);
        Py_XDECREF(children);
    } else if (in_asyncio && inner) {
        if (asc_ends_with(file, "tasks.py") && strcmp(fn, "sleep") == 0) {
            /* sleep() keeps its TimerHandle in the local `h`; its deadline is in loop time,
             * which is time.monotonic() for asyncio's loops, the clock we read too. */
            PyObject *handle = asc_coro_local(inner, asc_ls.s_h);
            PyObject *when = handle ? asc_getattr(handle, asc_ls.s_when) : NULL;
            double w = when ? PyFloat_AsDouble(when) : -1.0;
            if (w == -1.0) PyErr_Clear();
            Py_XDECREF(when);
            Py_XDECREF(handle);
            if (w > 0) {
                double left = w - (double)asc_monotonic_ns() / 1e9;
                snprintf(buf, sizeof buf, "sleep (%.3f s left)", left > 0 ? left : 0.0);
                what = buf;
            } else {
                what = "sleep";
            }
        } else if (asc_ends_with(file, "locks.py")) {
            what = asc_self_type(inner, buf, sizeof buf, "lock", &id);
        } else if (asc_ends_with(file, "queues.py")) {
            char tn[96];
            uint64_t qid = 0;
            const char *q = asc_self_type(inner, tn, sizeof tn, "Queue", &qid);
            const char *method = strrchr(fn, '.'); /* co_qualname "Queue.get" on 3.11+ */
            snprintf(buf, sizeof buf, "%s.%s", q, method ? method + 1 : fn);
            what = buf;
            if (qid) id = qid;
        } else if (asc_ends_with(file, "streams.py")) {
            what = strstr(fn, "drain") ? "socket write" : "socket read";
        } else if (asc_ends_with(file, "selector_events.py") ||
                   asc_ends_with(file, "proactor_events.py") ||
                   asc_ends_with(file, "base_events.py")) {
            if (strstr(fn, "sock_recv") || strstr(fn, "sock_accept")) what = "socket read";
            else if (strstr(fn, "sock_send") || strstr(fn, "sock_connect")) what = "socket write";
            else if (strstr(fn, "executor")) what = "executor job";
        } else if (asc_ends_with(file, "threads.py")) {
            what = "executor job"; /* asyncio.to_thread */
        } else if (asc_ends_with(file, "taskgroups.py")) {
            what = "TaskGroup";
            PyObject *self = asc_coro_local(inner, asc_ls.s_self);
            PyObject *children = self ? asc_getattr(self, asc_ls.s_tasks) : NULL;
            asc_link_all(links, children, task);
            Py_XDECREF(children);
            Py_XDECREF(self);
        } else if (asc_ends_with(file, "tasks.py") &&
                   (strcmp(fn, "wait") == 0 || strcmp(fn, "_wait") == 0)) {
            what = "wait";
            PyObject *fs = asc_coro_local(inner, asc_ls.s_fs);
            asc_link_all(links, fs, task);
            Py_XDECREF(fs);
        } else if (asc_ends_with(file, "tasks.py") && strstr(fn, "wait_for")) {
            what = "wait_for";
        }
    }
    if (!what && waiter) {
        /* A future made by run_in_executor (wrap_future) got _chain_future's _call_check_cancel
         * as its first done-callback, before the waiting task's own. */
        PyObject *cb0 = asc_ls.layout && asc_ls.future_type && PyObject_TypeCheck(waiter, asc_ls.future_type)
                            ? asc_task_field(waiter, asc_ls.layout->future_callback0)
                            : NULL;
        if (cb0 && PyFunction_Check(cb0) &&
            PyUnicode_CompareWithASCIIString(((PyFunctionObject *)cb0)->func_name, "_call_check_cancel") == 0)
            what = "executor job";
        else
            what = Py_TYPE(waiter)->tp_name;
    }
    /* "sleep (N s left)" differs for every task: copied, not interned. */
    t->awaiting = !what                                        ? NULL
                : what == buf && strncmp(buf, "sleep (", 7) == 0 ? aioscope_snapshot_strdup(snap, what)
                                                               : aioscope_snapshot_intern(snap, what);
    t->awaiting_id = what ? id : 0;
}

/* ---- one task ------------------------------------------------------------------------------ */

#if PY_VERSION_HEX >= 0x030B0000
/* From 3.11 a suspended coroutine's frame lives inside the coroutine object (an interpreter frame)
 * and cr_frame would allocate a frame object for it, once per coroutine, kept for its life: a
 * snapshot of 100 000 tasks would leave 100 000 new GC-tracked objects behind in the program and
 * a long collection after it. So the code object and the line are read from the interpreter frame
 * in place, at the offsets of the attach library's generated layouts; the frame state says whether
 * the frame is still there. Returns 1 with *out filled, 0 when the coroutine has no frame, -1 when
 * the layout does not describe this version (the caller then uses cr_frame). */
static int asc_iframe_info(aioscope_snapshot *snap, PyObject *gen, aioscope_snap_frame *out, int *maybe_holds) {
    const asc_layout *L = asc_ls.layout;
    if (!L || L->coro_iframe < 0 || L->coro_frame_state < 0 || L->iframe_code < 0 || L->iframe_instr < 0)
        return -1;
    /* Coroutines and generators share _PyGenObject_HEAD: one set of offsets serves both. */
    int8_t state = *(int8_t *)((char *)gen + L->coro_frame_state);
    if (state >= 1) return 0; /* FRAME_COMPLETED (1) or FRAME_CLEARED (4): no frame any more */
    void *iframe = (char *)gen + L->coro_iframe;
    /* f_code (f_executable on 3.13: a code object for a Python frame), borrowed: the frame keeps
     * it; and the instruction pointer, which with the code determines the line. */
    PyObject *code = *(PyObject **)((char *)iframe + L->iframe_code);
    const void *instr = *(void **)((char *)iframe + L->iframe_instr);
    if (!code || !PyCode_Check(code)) return 0;
    asc_code_entry *e = asc_code_lookup(snap, code);
    int line;
    if (e && e->instr == instr && instr) {
        line = e->line; /* thousands of tasks wait at the same instruction */
    } else {
#if PY_VERSION_HEX >= 0x030C0000
        line = PyUnstable_InterpreterFrame_GetLine(iframe);
#else
        PyCodeObject *co = (PyCodeObject *)code;
        /* 3.11's prev_instr: the last instruction run; its byte offset is what Addr2Line takes. */
        line = PyCode_Addr2Line(co, (int)((const char *)instr - (char *)co->co_code_adaptive));
#endif
        if (e) {
            e->instr = instr;
            e->line = line;
        }
    }
    if (e) {
        out->file = e->file;
        out->function = e->function;
        *maybe_holds = e->has_async_with;
    } else {
        out->file = asc_live_str(snap, ((PyCodeObject *)code)->co_filename, "?");
        out->function = asc_live_str(snap, ((PyCodeObject *)code)->co_qualname, "?");
        *maybe_holds = 1;
    }
    out->line = line > 0 ? line : 0;
    return 1;
}
#endif

/* ---- lock holders ----------------------------------------------------------------------------
 * asyncio.Lock records no owner. But `async with lock:` keeps the bound method lock.__aexit__ on
 * the value stack of the holder's frame while the block runs, and the tp_traverse of a suspended
 * coroutine (3.11+) or of a frame (before) visits that stack: a task holds a lock when one of the
 * coroutines of its chain has it there (the deadlock detector, deadlock.c, reads holders the same
 * way). An `async with` still waiting in acquire() has pushed it too; that one is dropped when
 * the holders are matched with the waiters (asc_apply_holds). A bare `await lock.acquire()`
 * leaves no mark: its holder is not shown. */

typedef struct {
    PyObject *found[16]; /* borrowed; more nested `async with` blocks in one frame are not seen */
    int n;
} asc_exits;

static int asc_visit_exit(PyObject *o, void *arg) {
    asc_exits *e = arg;
    if (o && PyMethod_Check(o) && PyMethod_GET_FUNCTION(o) == asc_ls.aexit_func && e->n < 16)
        e->found[e->n++] = PyMethod_GET_SELF(o);
    return 0;
}

/* Note every lock a suspended coroutine (or generator) of a task's chain holds, as a link
 * {child: the lock (a Condition's own lock), parent: the task}. */
static void asc_note_holds(asc_links *holds, PyObject *task, PyObject *gen) {
    if (!asc_ls.aexit_func) return;
    PyObject *holder;
#if PY_VERSION_HEX >= 0x030B0000
    const asc_layout *L = asc_ls.layout;
    /* Only a suspended frame has a meaningful value stack (never the running one). */
    if (!L || L->coro_frame_state < 0 || *(int8_t *)((char *)gen + L->coro_frame_state) >= 0) return;
    holder = gen;
    Py_INCREF(holder);
#else
    holder = asc_getattr(gen, PyCoro_CheckExact(gen) ? asc_ls.s_cr_frame : asc_ls.s_gi_frame);
    if (!holder || holder == Py_None) {
        Py_XDECREF(holder);
        return;
    }
#endif
    asc_exits e = {.n = 0};
    traverseproc trav = Py_TYPE(holder)->tp_traverse;
    if (trav) (void)trav(holder, asc_visit_exit, &e);
    Py_DECREF(holder);
    for (int k = 0; k < e.n; k++) {
        PyObject *prim = e.found[k];
        if (asc_ls.cond_type && PyObject_TypeCheck(prim, (PyTypeObject *)asc_ls.cond_type)) {
            PyObject *lock = PyObject_GetAttrString(prim, "_lock");
            if (!lock) {
                PyErr_Clear();
                continue;
            }
            prim = lock;
            Py_DECREF(lock); /* the Condition keeps its lock alive */
        }
        asc_link_add(holds, prim, task);
    }
}

/* The coroutine chain of a task, outermost (the task's own coroutine) first. Returns the
 * innermost coroutine or generator that has a frame (new reference) or NULL. */
static PyObject *asc_read_coro_chain(aioscope_snapshot *snap, PyObject *coro, PyObject *task,
                                     aioscope_snap_task *t, asc_links *holds) {
    aioscope_snap_frame tmp[ASC_MAX_CORO_DEPTH];
    size_t n = 0;
    PyObject *inner = NULL;
    PyObject *obj = coro;
    Py_XINCREF(obj);
    while (obj && n < ASC_MAX_CORO_DEPTH) {
        int is_coro = PyCoro_CheckExact(obj);
        if (!is_coro && !PyGen_Check(obj))
            break; /* a future's iterator, an async generator's asend, a foreign awaitable */
        int got = -1, maybe_holds = 1;
#if PY_VERSION_HEX >= 0x030B0000
        if (is_coro || PyGen_CheckExact(obj)) got = asc_iframe_info(snap, obj, &tmp[n], &maybe_holds);
#endif
        if (got < 0) {
            /* Before 3.11 the frame is a real object already: reading it allocates nothing. */
            PyObject *frame = asc_getattr(obj, is_coro ? asc_ls.s_cr_frame : asc_ls.s_gi_frame);
            got = frame && frame != Py_None;
            if (got) asc_frame_info_cached(snap, frame, &tmp[n], &maybe_holds);
            Py_XDECREF(frame);
        }
        if (!got) break;
        n++;
        /* Visiting a frame's objects is the dearest part of reading a task: skipped for code
         * without an `async with`, which cannot hold a lock the way asc_note_holds looks for. */
        if (maybe_holds) asc_note_holds(holds, task, obj);
        PyObject *next = asc_getattr(obj, is_coro ? asc_ls.s_cr_await : asc_ls.s_gi_yieldfrom);
        Py_XSETREF(inner, obj); /* takes our reference to obj */
        obj = next == Py_None ? NULL : next;
        if (next == Py_None) Py_DECREF(next);
    }
    Py_XDECREF(obj);
    if (n) {
        t->coro = malloc(n * sizeof *t->coro);
        if (t->coro) {
            memcpy(t->coro, tmp, n * sizeof *t->coro);
            t->ncoro = n;
        }
    }
    return inner;
}

/* Does this task type use the C Task's get_name? Then the name is read from the task's field. */
static int asc_plain_get_name(PyTypeObject *tp) {
    if (tp == asc_ls.name_type) return asc_ls.name_plain;
    PyObject *mine = PyObject_GetAttr((PyObject *)tp, asc_ls.s_get_name);
    PyObject *base = PyObject_GetAttr((PyObject *)asc_ls.task_type, asc_ls.s_get_name);
    asc_ls.name_plain = mine && mine == base;
    asc_ls.name_type = tp;
    Py_XDECREF(mine);
    Py_XDECREF(base);
    PyErr_Clear();
    return asc_ls.name_plain;
}

/* The task's name, copied into the snapshot (not interned: every task has its own). A C task's
 * name field holds the str get_name() returns once it has been made (3.12+ makes "Task-N" on
 * first use, and get_name() stores it); otherwise get_name() is called. */
static const char *asc_task_name(aioscope_snapshot *snap, PyObject *task) {
    PyObject *name = NULL;
    if (asc_is_c_task(task) && asc_ls.layout->task_name >= 0 && asc_plain_get_name(Py_TYPE(task))) {
        PyObject *field = asc_task_field(task, asc_ls.layout->task_name);
        if (field && PyUnicode_CheckExact(field)) {
            Py_INCREF(field);
            name = field;
        }
    }
    if (!name) name = PyObject_CallMethodObjArgs(task, asc_ls.s_get_name, NULL);
    const char *u = name && PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
    if (!u) {
        PyErr_Clear();
        u = "?";
    }
    const char *copy = aioscope_snapshot_strdup(snap, u);
    Py_XDECREF(name);
    return copy ? copy : "?";
}

/* Read one task into t. now_ns: the snapshot's clock. */
static void asc_read_task(aioscope_snapshot *snap, asc_links *links, asc_links *holds, PyObject *task,
                          aioscope_snap_task *t, int64_t now_ns) {
    memset(t, 0, sizeof *t);
    t->id = (uint64_t)(uintptr_t)task;
    t->thread = -1;
    t->age_s = -1.0;
    t->steps = -1;
    t->busy_s = -1.0;
    PyObject *coro = NULL, *waiter = NULL, *loop = NULL;
    int state = 0;
    if (asc_is_c_task(task)) {
        state = *(int *)((char *)task + asc_ls.layout->task_state);
        coro = asc_task_field(task, asc_ls.layout->task_coro);
        waiter = asc_task_field(task, asc_ls.layout->task_fut_waiter);
        loop = asc_task_field(task, asc_ls.layout->task_loop);
    }
    t->state = state == 1 ? AIOSCOPE_TASK_CANCELLED
             : state == 2 ? AIOSCOPE_TASK_FINISHED
                          : AIOSCOPE_TASK_PENDING;
    t->loop = (uint64_t)(uintptr_t)loop;

    t->name = asc_task_name(snap, task);

    if (t->state == AIOSCOPE_TASK_PENDING) {
        PyObject *inner = asc_read_coro_chain(snap, coro, task, t, holds);
        asc_classify_wait(snap, links, task, t, waiter, inner,
                          t->ncoro ? &t->coro[t->ncoro - 1] : NULL);
        Py_XDECREF(inner);
        /* cancelling() counts pending cancellations on 3.11+; _must_cancel is a cancel() not yet
         * delivered (every version). */
        PyObject *mc = asc_getattr(task, asc_ls.s_must_cancel);
        t->cancelling = mc == Py_True;
        Py_XDECREF(mc);
#if PY_VERSION_HEX >= 0x030B0000
        if (!t->cancelling) {
            PyObject *n = PyObject_CallMethodObjArgs(task, asc_ls.s_cancelling, NULL);
            t->cancelling = n && PyLong_Check(n) && PyLong_AsLong(n) > 0;
            Py_XDECREF(n);
            PyErr_Clear();
        }
#endif
    } else if (t->state == AIOSCOPE_TASK_FINISHED) {
        /* An exception nothing retrieved yet: _log_traceback stays true until someone calls
         * exception() or result(). Reading _exception does not count as retrieving it. */
        PyObject *lt = asc_getattr(task, asc_ls.s_log_traceback);
        if (lt == Py_True) {
            PyObject *exc = asc_getattr(task, asc_ls.s_exception);
            if (exc && exc != Py_None) {
                PyObject *msg = PyObject_Str(exc);
                const char *m = msg ? PyUnicode_AsUTF8(msg) : NULL;
                char buf[512];
                snprintf(buf, sizeof buf, "%s%s%s", Py_TYPE(exc)->tp_name, m && *m ? ": " : "",
                         m ? m : "");
                t->exception = aioscope_snapshot_intern(snap, buf);
                Py_XDECREF(msg);
                PyErr_Clear();
            }
            Py_XDECREF(exc);
        }
        Py_XDECREF(lt);
    }

    /* created_ns stays 0 for a task whose steps never went through our call_soon (a uvloop
     * loop, a loop class with a C call_soon): its counters are unknown, not zero. */
    asc_task_stats *st = asc_tasks_stats(task);
    if (st && st->created_ns) {
        t->busy_s = (double)st->busy_ns / 1e9;
        t->steps = st->steps;
        t->spawned_by = st->spawned_by;
        t->age_s = (double)(now_ns - st->created_ns) / 1e9;
    }
    PyErr_Clear();
}

/* ---- the task registry ----------------------------------------------------------------------- */

int asc_registry_each(PyObject *registry, int (*fn)(PyObject *task, void *arg), void *arg) {
    if (!registry) return 0;
    /* A WeakSet keeps weak references in .data; iterating .data directly avoids the WeakSet's
     * Python-level iterator (and its _IterationGuard). */
    PyObject *data = PyObject_GetAttrString(registry, "data");
    if (!data) PyErr_Clear();
    PyObject *it = PyObject_GetIter(data ? data : registry);
    Py_XDECREF(data);
    if (!it) return -1;
    PyObject *item;
    while ((item = PyIter_Next(it))) {
        PyObject *obj = item; /* new reference */
        if (PyWeakref_Check(item)) {
#if PY_VERSION_HEX >= 0x030D0000
            if (PyWeakref_GetRef(item, &obj) <= 0) obj = NULL; /* dead (or an error: skipped) */
#else
            obj = PyWeakref_GetObject(item); /* borrowed; Py_None once dead */
            if (obj == Py_None) obj = NULL;
            Py_XINCREF(obj);
#endif
            Py_DECREF(item);
            PyErr_Clear();
            if (!obj) continue;
        }
        int rc = fn(obj, arg);
        Py_DECREF(obj);
        if (rc < 0) {
            Py_DECREF(it);
            return -1;
        }
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

static int asc_append_task(PyObject *task, void *list) { return PyList_Append((PyObject *)list, task); }

static PyObject *asc_all_tasks(void) {
    PyObject *list = PyList_New(0);
    if (!list) return NULL;
    static const char *const names[] = {"_all_tasks", "_scheduled_tasks", "_eager_tasks"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        PyObject *reg = PyObject_GetAttrString(asc_ls.tasks_mod, names[i]);
        if (!reg) {
            PyErr_Clear();
            continue;
        }
        /* _all_tasks is a function on 3.12+ (asyncio.all_tasks' helper): only sets count. */
        int rc = PyCallable_Check(reg) ? 0 : asc_registry_each(reg, asc_append_task, list);
        Py_DECREF(reg);
        if (rc < 0) {
            Py_DECREF(list);
            return NULL;
        }
    }
    return list;
}

/* Pause the cyclic GC; returns 1 when it was on. */
static int asc_gc_pause(void) {
#if PY_VERSION_HEX >= 0x030A0000
    return PyGC_Disable();
#else
    PyObject *gc = PyImport_ImportModule("gc");
    PyObject *on = gc ? PyObject_CallMethod(gc, "isenabled", NULL) : NULL;
    int was = on == Py_True;
    Py_XDECREF(on);
    if (was) {
        PyObject *r = PyObject_CallMethod(gc, "disable", NULL);
        Py_XDECREF(r);
    }
    Py_XDECREF(gc);
    PyErr_Clear();
    return was;
#endif
}

static void asc_gc_resume(void) {
#if PY_VERSION_HEX >= 0x030A0000
    (void)PyGC_Enable();
#else
    PyObject *gc = PyImport_ImportModule("gc");
    PyObject *r = gc ? PyObject_CallMethod(gc, "enable", NULL) : NULL;
    Py_XDECREF(r);
    Py_XDECREF(gc);
    PyErr_Clear();
#endif
}

/* ---- the snapshot ------------------------------------------------------------------------- */

/* Resolve the collected links into each task's awaited_by list. */
static void asc_apply_links(aioscope_snapshot *snap, const asc_links *l) {
    for (size_t i = 0; i < l->n; i++) {
        long c = aioscope_snapshot_find_task(snap, l->v[i].child);
        if (c < 0) continue; /* a plain future, not a task */
        aioscope_snap_task *t = &snap->tasks[c];
        uint64_t *v = realloc(t->awaited_by, (t->nawaited_by + 1) * sizeof *v);
        if (!v) continue;
        v[t->nawaited_by++] = l->v[i].parent;
        t->awaited_by = v;
    }
}

/* A task waiting for a Lock or Semaphore (awaiting_id: the lock) is told who holds it: the tasks
 * with a hold on it, minus the waiter's own innermost one (its `async with` pushed __aexit__
 * before acquire() returned). */
static void asc_apply_holds(aioscope_snapshot *snap, asc_links *h) {
    for (size_t i = 0; i < snap->ntasks; i++) {
        aioscope_snap_task *t = &snap->tasks[i];
        if (!t->awaiting || !t->awaiting_id ||
            (strncmp(t->awaiting, "Lock", 4) != 0 && strstr(t->awaiting, "Semaphore") == NULL))
            continue;
        for (size_t k = h->n; k-- > 0;) {
            if (h->v[k].child == t->awaiting_id && h->v[k].parent == t->id) {
                h->v[k].child = 0; /* its own pending `async with` */
                break;
            }
        }
    }
    for (size_t i = 0; i < snap->ntasks; i++) {
        aioscope_snap_task *t = &snap->tasks[i];
        if (!t->awaiting || !t->awaiting_id ||
            (strncmp(t->awaiting, "Lock", 4) != 0 && strstr(t->awaiting, "Semaphore") == NULL))
            continue;
        char buf[256];
        int len = snprintf(buf, sizeof buf, "%s held by ", t->awaiting), holders = 0;
        for (size_t k = 0; k < h->n && len > 0 && (size_t)len < sizeof buf - 1; k++) {
            if (h->v[k].child != t->awaiting_id || h->v[k].parent == t->id) continue;
            long hi = aioscope_snapshot_find_task(snap, h->v[k].parent);
            if (hi < 0) continue;
            len += snprintf(buf + len, sizeof buf - (size_t)len, "%s%s", holders++ ? ", " : "",
                            snap->tasks[hi].name);
        }
        if (holders) {
            const char *s = aioscope_snapshot_intern(snap, buf);
            if (s) t->awaiting = s;
        }
    }
}

int asc_live_collect(aioscope_snapshot **out) {
    *out = NULL;
    if (asc_ls_init() < 0) return -1;
    aioscope_snapshot *snap = aioscope_snapshot_new();
    if (!snap) {
        PyErr_NoMemory();
        return -1;
    }
    snap->pid = (int)getpid();
    snap->py_version_hex = PY_VERSION_HEX;
    snap->source = "agent";
    snap->has_agent_fields = 1;
    asc_links links = {0}, holds = {0};
    PyObject *tasks = NULL;
    if (asc_live_read_threads(snap) < 0) goto err;
    tasks = asc_all_tasks();
    if (!tasks) goto err;
    Py_ssize_t n = PyList_GET_SIZE(tasks);
    snap->tasks = calloc(n ? (size_t)n : 1, sizeof *snap->tasks);
    if (!snap->tasks) {
        PyErr_NoMemory();
        goto err;
    }
    int64_t now = asc_monotonic_ns();
    /* Reading coroutines creates frame objects; with many live tasks, the collections those
     * allocations would trigger cost more than the reading itself. Nothing we allocate here is
     * cyclic garbage, so the collector is paused and put back as it was. */
    int gc_was_on = asc_gc_pause();
    int own_codes = !asc_codes.active; /* not when re-entered from code a getattr ran */
    if (own_codes) asc_codes_begin();
    asc_ls.name_type = NULL; /* types seen by an earlier collection may be gone */
    for (Py_ssize_t i = 0; i < n; i++) {
        asc_read_task(snap, &links, &holds, PyList_GET_ITEM(tasks, i), &snap->tasks[i], now);
        snap->ntasks++;
    }
    if (own_codes) asc_codes_end();
    if (gc_was_on) asc_gc_resume();
    asc_apply_links(snap, &links);
    asc_apply_holds(snap, &holds);
    asc_live_place_loops(snap, asc_ls.current_tasks);
    free(links.v);
    free(holds.v);
    Py_DECREF(tasks);
    *out = snap;
    return 0;
err:
    free(links.v);
    free(holds.v);
    Py_XDECREF(tasks);
    aioscope_snapshot_free(snap);
    return -1;
}
