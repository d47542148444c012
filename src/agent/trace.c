/* trace.c: the timeline of `aioscope run --trace FILE`, in the Chrome trace-event JSON format.
 *
 * What is recorded (docs/trace.md has the file's structure):
 *   - a track per task, each step of the task a slice named by its coroutine's qualified name;
 *   - task creation (an instant on the new task's track and a flow arrow from the step of the
 *     task that created it to the new task's first step) and completion (an instant);
 *   - a track per event loop with each loop iteration as a slice (from one epoll poll to the
 *     next, or one BaseEventLoop._run_once call on other selectors);
 *   - a "blocked" track per loop with each blocked period reported as a blocking-call finding,
 *     its stack and site in the slice's args;
 *   - every finding as an instant event with the finding's JSON in its args;
 *   - asyncio.Lock wait and hold spans, as async slices of the task that waited and held.
 *
 * Cost. Nothing is installed unless AIOSCOPE_TRACE names a file: asc_trace_active stays 0 and
 * the hooks in steps.c and module.c test it and return. While tracing, the task steps come from
 * steps.c, which already times every step for the live view: recording one is a store into the
 * ring, and whether it ended the task is read from the C task's state field (the attach
 * library's layout table, as livesnap.c reads tasks). Loop iterations are timed at
 * select.epoll.poll (a C method descriptor in the type's dict), or by one put in place of
 * _run_once in the class that defines it (never in the loop's instance __dict__, which would
 * slow all of the loop's own attribute accesses); locks are seen by trace_locks.c. uvloop has
 * no Python-level _run_once, no Python-level selector and no Python-level steps, so under
 * uvloop the trace has findings, blocked periods and lock spans, but no per-step slices,
 * creation arrows or iterations.
 *
 * Memory is bounded: events go into one ring of fixed-size records (ASC_TRACE_DEFAULT_LIMIT, or
 * AIOSCOPE_TRACE_LIMIT from --trace-limit) that overwrites the oldest, so a long run keeps its
 * end, which is what explains how it ended. Names (coroutine names, task names) are interned in
 * a table of at most ASC_TRACE_MAX_NAMES strings; tasks with the default name "Task-N" keep
 * only N. Findings carry their JSON as an owned string, freed when the ring overwrites them.
 *
 * The file is written at exit (module.c's atexit callback, which also runs after an uncaught
 * exception or KeyboardInterrupt), and on SIGTERM when the program has no handler of its own:
 * the handler writes the trace, then lets SIGTERM kill the process as it would have. A write
 * goes to FILE.tmp first and is renamed over FILE, so a reader never sees half a trace. */
#include "agent/trace.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "aioscope/json.h"
#include "attach/layouts.h"


/* Events kept by default: 32 bytes each, so 16 MB of ring and a file of roughly 50-80 MB,
 * which Perfetto opens comfortably; --trace-limit changes it. */
#define ASC_TRACE_DEFAULT_LIMIT 500000
/* Smallest and largest accepted limits: below a few hundred events a trace shows nothing
 * useful; above 50 million the ring alone would take 1.6 GB. */
#define ASC_TRACE_MIN_LIMIT 100
#define ASC_TRACE_MAX_LIMIT 50000000
/* Distinct names kept; a program generating names without bound (a task name per request)
 * shows the later ones as "?" rather than growing memory. */
#define ASC_TRACE_MAX_NAMES 65536
/* Loops with a track of their own; more loops than this share the last one. */
#define ASC_TRACE_MAX_LOOPS 64

/* One record of the ring: 32 bytes, so that two fill a cache line and none straddles two. The
 * ring is written at every step, iteration and lock span into memory far larger than the
 * caches, and what that costs goes with the bytes written: the 48-byte records before cost
 * about 2.5 % of lock contention's CPU time on 3.11 (the stores skipped: 1.101x -> 1.074x).
 * So the time is relative to the trace's start, in 56 bits (+-417 days) beside the type and
 * flags, and the task's label shares a word with the spawner's track, never needed beside a
 * lock's address or a finding's text. */
typedef struct {
    uint64_t ts_type; /* (ns since t0, signed) << 8 | flags << 4 | type */
    int64_t dur;      /* ns, spans only */
    union {
        uint64_t aux;   /* lock events: the lock's address */
        uint64_t label; /* task events: label << 32 | the spawner's track (ASC_EV_TASK_NEW) */
        char *text;     /* ASC_EV_BLOCKED, ASC_EV_FINDING: owned JSON for args, or NULL */
    } u;
    uint32_t track;
    uint32_t name; /* name-table index of the slice's name (0: "?") */
} asc_tev;

_Static_assert(sizeof(asc_tev) == 32, "a ring record is 32 bytes");

/* The records of a task, which carry its label; the records with text. */
#define ASC_EV_LABELLED (1u << ASC_EV_STEP | 1u << ASC_EV_TASK_NEW | 1u << ASC_EV_FLOW_END | 1u << ASC_EV_TASK_DONE)
#define ASC_EV_TEXT (1u << ASC_EV_BLOCKED | 1u << ASC_EV_FINDING)

int asc_trace_active;

static struct {
    char *path;               /* owned: AIOSCOPE_TRACE */
    asc_tev *ring;            /* owned, limit records */
    size_t limit;
    uint64_t written;         /* records ever written; the ring holds the last min(written, limit) */
    size_t next;              /* written % limit, kept as it goes: no division per record */
    int64_t t0;               /* ns: the trace's time zero */
    long pid;
    uint32_t next_task_track;
    /* Names: name_index maps str -> int; names[i] is the UTF-8 copy (owned); 0 is "?". */
    PyObject *name_index;     /* owned dict */
    char **names;
    uint32_t nnames;
    uint32_t name_iteration, name_blocked, name_lock_wait, name_lock_hold;
    /* Loops with a track: identity only (borrowed; a stale pointer is only compared). */
    struct {
        PyObject *loop;
        unsigned long thread;
        PyObject *epoll;    /* owned: its selector's epoll object when timed at its polls */
        int64_t iter_start; /* ns: the start of its current iteration (epoll), 0: none */
    } loops[ASC_TRACE_MAX_LOOPS];
    PyTypeObject *epoll_type;           /* owned: select.epoll once its poll() is ours */
    PyObject *orig_set_running_loop;    /* owned: asyncio.events._set_running_loop before ours */
    int nloops;
    PyObject *str_done, *str_cancelled, *str_get_name, *str_get_coro, *str_qualname, *str_run_once;
    PyTypeObject *done_type;  /* borrowed: the task type done_meth was looked up on */
    PyObject *done_meth;      /* owned: done_type.done, called unbound for every step */
    /* Direct reads of a C task's state, coroutine and name (the attach library's layout table
     * for this interpreter, as livesnap.c reads them), instead of a method call per step: NULL
     * when the table does not describe this version or the first task read disagreed with its
     * methods. c_task_type is _asyncio.Task (owned); fast_type the last type seen to be a
     * subclass of it (borrowed, compared only). */
    const asc_layout *layout;
    PyTypeObject *c_task_type;
    PyTypeObject *c_future_type; /* owned: _asyncio.Future, or NULL */
    PyTypeObject *fast_type;
    int layout_checked;
    /* The last coroutine __qualname__ interned (owned, so that its address is not reused) and
     * its index: consecutive tasks mostly run the same coroutine function. */
    PyObject *last_qual;
    uint32_t last_qual_index;
    PyObject *current_task;   /* owned: asyncio.current_task */
    PyObject *current_tasks;  /* owned: the {loop: task} dict current_task() reads, or NULL */
    PyObject *eager_tasks;    /* owned: 3.12+'s set of tasks running their eager first step */
    int step_known;           /* the running task may be taken from steps.c (no eager step unseen) */
    int dumped;
} asc_tr;

/* ---- the ring ------------------------------------------------------------------------------- */

/* The slot of the next record, freeing the text of the record it overwrites. Only once the ring
 * has wrapped: before that the slot was never written, and looking at it would fetch its cache
 * line from memory for nothing. Every step writes one or two records, so the index wraps by
 * comparison rather than a 64-bit division. */
static inline asc_tev *asc_trace_slot(void) {
    asc_tev *e = &asc_tr.ring[asc_tr.next];
    /* The oldest record goes (the ring starts zeroed: type 0, no text). */
    if (asc_tr.written >= asc_tr.limit && (ASC_EV_TEXT >> (e->ts_type & 0xF) & 1) && e->u.text)
        free(e->u.text);
    if (++asc_tr.next == asc_tr.limit) asc_tr.next = 0;
    asc_tr.written++;
    return e;
}

/* A record, its text NULL. aux: the lock's address, or the spawner's track. */
static inline asc_tev asc_trace_record(uint8_t type, int64_t ts, int64_t dur, uint32_t track,
                                       uint32_t name, uint32_t label, uint64_t aux, uint8_t flags) {
    if (ASC_EV_LABELLED >> type & 1) aux = (uint64_t)label << 32 | (uint32_t)aux;
    return (asc_tev){.ts_type = (uint64_t)(ts - asc_tr.t0) << 8 | (uint64_t)(flags & 0xF) << 4 | (type & 0xF),
                     .dur = dur,
                     .u.aux = aux,
                     .track = track,
                     .name = name};
}

/* Appends one record and returns it, for the records that get a text (findings, blocked
 * periods: a few). */
static inline asc_tev *asc_trace_append(uint8_t type, int64_t ts, int64_t dur, uint32_t track,
                                        uint32_t name, uint32_t label, uint64_t aux, uint8_t flags) {
    asc_tev *e = asc_trace_slot();
    *e = asc_trace_record(type, ts, dur, track, name, label, aux, flags);
    return e;
}

/* A record as the writer reads it. */
typedef struct {
    int64_t ts; /* ns since t0 */
    int64_t dur;
    const char *text;
    uint64_t aux;
    uint32_t track, name, label;
    uint8_t type, flags;
} asc_tev_view;

static asc_tev_view asc_tev_read(const asc_tev *e) {
    asc_tev_view v = {.ts = (int64_t)e->ts_type >> 8, /* an arithmetic shift: the sign stays */
                      .dur = e->dur,
                      .track = e->track,
                      .name = e->name,
                      .type = (uint8_t)(e->ts_type & 0xF),
                      .flags = (uint8_t)(e->ts_type >> 4 & 0xF)};
    if (ASC_EV_TEXT >> v.type & 1) {
        v.text = e->u.text;
    } else if (ASC_EV_LABELLED >> v.type & 1) {
        v.label = (uint32_t)(e->u.label >> 32);
        v.aux = (uint32_t)e->u.label;
    } else {
        v.aux = e->u.aux;
    }
    return v;
}

/* Appends one record (steps, iterations, lock spans: the hot path). Non-temporal stores, which
 * would write the record without first reading its line into the cache, made 3.11 lock
 * contention with --trace 16 % slower (32-byte records fill half a line at a time). */
void asc_trace_put(uint8_t type, int64_t ts, int64_t dur, uint32_t track, uint32_t name,
                   uint32_t label, uint64_t aux, uint8_t flags) {
    *asc_trace_slot() = asc_trace_record(type, ts, dur, track, name, label, aux, flags);
}

/* ---- names ---------------------------------------------------------------------------------- */

/* The index of a str in the name table, adding it when there is room; 0 ("?") otherwise. */
static uint32_t asc_trace_intern(PyObject *s) {
    if (!s || !PyUnicode_Check(s)) return 0;
    PyObject *idx = PyDict_GetItemWithError(asc_tr.name_index, s); /* borrowed */
    if (idx) return (uint32_t)PyLong_AsUnsignedLong(idx);
    if (PyErr_Occurred() || asc_tr.nnames >= ASC_TRACE_MAX_NAMES) {
        PyErr_Clear();
        return 0;
    }
    const char *utf8 = PyUnicode_AsUTF8(s);
    char *copy = utf8 ? strdup(utf8) : NULL;
    PyObject *n = copy ? PyLong_FromUnsignedLong(asc_tr.nnames) : NULL;
    if (!n || PyDict_SetItem(asc_tr.name_index, s, n) < 0) {
        Py_XDECREF(n);
        free(copy);
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(n);
    asc_tr.names[asc_tr.nnames] = copy;
    return asc_tr.nnames++;
}

uint32_t asc_trace_intern_c(const char *s) {
    PyObject *o = PyUnicode_FromString(s);
    uint32_t i = asc_trace_intern(o);
    Py_XDECREF(o);
    PyErr_Clear();
    return i;
}

/* ---- tasks ---------------------------------------------------------------------------------- */

/* 1 when the task's fields can be read at the layout's offsets: a C task (or subclass) on an
 * interpreter the table describes, once the first check passed. */
static inline int asc_trace_c_task(PyObject *task) {
    if (!asc_tr.layout) return 0;
    PyTypeObject *tp = Py_TYPE(task);
    if (tp == asc_tr.fast_type) return 1;
    if (!PyType_IsSubtype(tp, asc_tr.c_task_type)) return 0;
    asc_tr.fast_type = tp;
    return 1;
}

static inline PyObject *asc_trace_field(PyObject *task, int32_t off) /* borrowed */ {
    return *(PyObject **)((char *)task + off);
}

int asc_trace_future_cancelled(PyObject *fut) {
    if (asc_tr.layout && asc_tr.c_future_type && PyObject_TypeCheck(fut, asc_tr.c_future_type))
        return *(int *)((char *)fut + asc_tr.layout->future_state) == 1;
    PyObject *c = PyObject_CallMethodObjArgs(fut, asc_tr.str_cancelled, NULL);
    int r = c == Py_True ? 1 : c == Py_False ? 0 : -1;
    Py_XDECREF(c);
    PyErr_Clear();
    return r;
}

/* The task's state: 0 pending, 1 cancelled, 2 finished (_asyncio's fut_state values, which
 * the layout table's readers use too); -1 when unknown. */
static int asc_trace_task_state(PyObject *task) {
    if (asc_trace_c_task(task)) {
        int state = *(int *)((char *)task + asc_tr.layout->task_state);
        return state >= 0 && state <= 2 ? state : -1;
    }
    /* Another task type: task.done(), the method looked up once per type rather than per step;
     * done() is cheap and, unlike exception(), changes nothing. */
    if (Py_TYPE(task) != asc_tr.done_type) {
        PyObject *m = PyObject_GetAttr((PyObject *)Py_TYPE(task), asc_tr.str_done);
        Py_XSETREF(asc_tr.done_meth, m);
        asc_tr.done_type = m ? Py_TYPE(task) : NULL;
    }
    PyObject *done = asc_tr.done_meth ? PyObject_Vectorcall(asc_tr.done_meth, &task, 1, NULL) : NULL;
    int state = done == Py_False ? 0 : -1;
    if (done == Py_True) {
        PyObject *c = PyObject_CallMethodObjArgs(task, asc_tr.str_cancelled, NULL);
        state = c == Py_True ? 1 : 2;
        Py_XDECREF(c);
    }
    Py_XDECREF(done);
    PyErr_Clear();
    return state;
}

/* The label of a task name: "Task-N" (or the N that 3.12+ keeps for a default name until
 * get_name() formats it) is only N; any other name is interned. */
static uint32_t asc_trace_label_of(PyObject *name) {
    if (name && PyLong_CheckExact(name)) {
        unsigned long num = PyLong_AsUnsignedLong(name);
        if (!PyErr_Occurred() && num < ASC_LABEL_NUM) return ASC_LABEL_NUM | (uint32_t)num;
        PyErr_Clear();
        return 0;
    }
    const char *n = name && PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
    char *end = NULL;
    unsigned long num = n && strncmp(n, "Task-", 5) == 0 ? strtoul(n + 5, &end, 10) : 0;
    if (end && *end == '\0' && end != n + 5 && num < ASC_LABEL_NUM) return ASC_LABEL_NUM | (uint32_t)num;
    PyErr_Clear();
    return asc_trace_intern(name);
}

/* The task's label from its name, read from the task's field when it can be: get_name() would
 * format (and keep) a "Task-N" string per task on 3.12+. */
static void asc_trace_read_name(PyObject *task, asc_task_stats *st) {
    if (asc_trace_c_task(task)) {
        st->trace_label = asc_trace_label_of(asc_trace_field(task, asc_tr.layout->task_name));
        return;
    }
    PyObject *name = PyObject_CallMethodObjArgs(task, asc_tr.str_get_name, NULL);
    st->trace_label = asc_trace_label_of(name);
    Py_XDECREF(name);
    PyErr_Clear();
}

/* The name-table index of a coroutine's __qualname__. */
static uint32_t asc_trace_coro_name(PyObject *coro) {
    PyObject *qual = coro && coro != Py_None ? PyObject_GetAttr(coro, asc_tr.str_qualname) : NULL;
    if (!qual) {
        PyErr_Clear();
        return 0;
    }
    if (qual != asc_tr.last_qual) {
        uint32_t i = asc_trace_intern(qual);
        Py_XSETREF(asc_tr.last_qual, qual); /* the reference moves */
        asc_tr.last_qual_index = i;
    } else {
        Py_DECREF(qual);
    }
    return asc_tr.last_qual_index;
}

/* The first C task seen is read both ways, through the layout and through its methods; if they
 * disagree (an interpreter whose layout is not the table's), the methods are used from then on. */
static void asc_trace_check_layout(PyObject *task) {
    asc_tr.layout_checked = 1;
    if (!asc_trace_c_task(task)) {
        asc_tr.layout_checked = 0; /* not a C task: check at the next one */
        return;
    }
    PyObject *coro = PyObject_CallMethodObjArgs(task, asc_tr.str_get_coro, NULL);
    PyObject *done = PyObject_CallMethodObjArgs(task, asc_tr.str_done, NULL);
    PyObject *name = asc_trace_field(task, asc_tr.layout->task_name);
    int state = *(int *)((char *)task + asc_tr.layout->task_state);
    int ok = coro && coro == asc_trace_field(task, asc_tr.layout->task_coro) && done &&
             (done == Py_True) == (state != 0) && state >= 0 && state <= 2 && name &&
             (PyLong_CheckExact(name) || PyUnicode_Check(name));
    Py_XDECREF(coro);
    Py_XDECREF(done);
    PyErr_Clear();
    if (!ok) asc_tr.layout = NULL;
}

/* Gives a task its track, its coroutine's name and its label, the first time it is seen. */
static void asc_trace_adopt(PyObject *task, asc_task_stats *st) {
    st->trace_track = asc_tr.next_task_track;
    asc_tr.next_task_track += ASC_TRACK_STEP;
    if (!asc_tr.layout_checked && asc_tr.layout) asc_trace_check_layout(task);
    /* The name is read at the task's first step (see ASC_TF_NAMED), once it is final. */
    if (asc_trace_c_task(task)) {
        st->trace_name = asc_trace_coro_name(asc_trace_field(task, asc_tr.layout->task_coro));
        return;
    }
    PyObject *coro = PyObject_CallMethodObjArgs(task, asc_tr.str_get_coro, NULL);
    st->trace_name = asc_trace_coro_name(coro);
    Py_XDECREF(coro);
    PyErr_Clear();
}

void asc_trace_task_created(PyObject *task, asc_task_stats *st, PyObject *spawner) {
    if (!asc_trace_active || !st || st->trace_track) return;
    asc_trace_adopt(task, st);
    asc_task_stats *sp = spawner ? asc_tasks_stats(spawner) : NULL;
    /* A spawner not seen yet (the main task, whose first step ran before its loop was hooked)
     * gets its track now, so that the arrow has a start. */
    if (sp && !sp->trace_track) asc_trace_adopt(spawner, sp);
    uint32_t from = sp ? sp->trace_track : 0;
    if (from) st->trace_flags |= ASC_TF_FLOW;
    asc_trace_put(ASC_EV_TASK_NEW, asc_clock_now(), 0, st->trace_track, st->trace_name,
                  st->trace_label, from, 0);
}

/* Records a step of one of our tasks (steps.c). The common case (a C task seen before) calls
 * nothing of Python's, so the caller's error state is only set aside around the rest: a new
 * task's adoption and name, or done() asked of another task type. */
void asc_trace_step(PyObject *task, asc_task_stats *st, int64_t t0, int64_t t1) {
    if (!asc_trace_active || !st) return;
    int slow = !st->trace_track || !(st->trace_flags & ASC_TF_NAMED) || !asc_trace_c_task(task);
    PyObject *et = NULL, *ev = NULL, *etb = NULL;
    if (slow) PyErr_Fetch(&et, &ev, &etb);
    if (!st->trace_track) asc_trace_adopt(task, st); /* created before the trace could see it */
    if (!(st->trace_flags & ASC_TF_NAMED)) {
        st->trace_flags |= ASC_TF_NAMED;
        asc_trace_read_name(task, st);
    }
    if (st->trace_flags & ASC_TF_FLOW) {
        st->trace_flags &= ~ASC_TF_FLOW;
        asc_trace_put(ASC_EV_FLOW_END, t0, 0, st->trace_track, st->trace_name, st->trace_label, 0, 0);
    }
    asc_trace_put(ASC_EV_STEP, t0, t1 - t0, st->trace_track, st->trace_name, st->trace_label, 0, 0);
    /* Did this step end the task? */
    int state = asc_trace_task_state(task);
    if (state > 0)
        asc_trace_put(ASC_EV_TASK_DONE, t1, 0, st->trace_track, st->trace_name, st->trace_label, 0,
                      state == 1 ? 1 : 0);
    asc_trace_locks_flush(); /* a lock wait that ended in this step without the lock */
    if (slow) PyErr_Restore(et, ev, etb);
}

/* What the calling thread runs now: the loop asyncio says runs in it (events._set_running_loop,
 * below; borrowed, NULL when none), and the step of one of our tasks that steps.c is timing
 * (asc_trace_step_begin; task borrowed, kept alive by steps.c for the step). One thread-local
 * struct, so that a hook finds all of it with one look-up of the thread's block. */
static __thread struct {
    PyObject *loop;
    asc_trace_running step;
} asc_th;

void asc_trace_step_begin(asc_trace_running *outer, PyObject *task, asc_task_stats *st, int64_t t0) {
    *outer = asc_th.step;
    asc_th.step = (asc_trace_running){.task = task, .st = st, .t0 = t0};
}

void asc_trace_step_end(const asc_trace_running *outer, PyObject *task, asc_task_stats *st, int64_t t0,
                        int64_t t1) {
    asc_th.step = *outer;
    asc_trace_step(task, st, t0, t1);
}

/* ---- loops ---------------------------------------------------------------------------------- */

/* The track of a loop (registering it), or of the loop last seen in the calling thread. */
static uint32_t asc_trace_loop_track(PyObject *loop, unsigned long thread) {
    for (int i = 0; i < asc_tr.nloops; i++) {
        if (loop ? asc_tr.loops[i].loop == loop : asc_tr.loops[i].thread == thread) {
            if (loop) asc_tr.loops[i].thread = thread;
            return ASC_TRACK_LOOP0 + (uint32_t)i;
        }
    }
    if (!loop) return 0;
    int i = asc_tr.nloops < ASC_TRACE_MAX_LOOPS ? asc_tr.nloops++ : ASC_TRACE_MAX_LOOPS - 1;
    asc_tr.loops[i].loop = loop;
    asc_tr.loops[i].thread = thread;
    return ASC_TRACK_LOOP0 + (uint32_t)i;
}

/* Iterations of selector loops on epoll (asyncio's default on Linux), from one poll for I/O
 * to the next. A loop polls once per iteration (BaseEventLoop._run_once calls
 * selector.select(), which calls its select.epoll object's poll()), so a slice runs from the
 * start of one iteration's wait for I/O to the next one's: the wait, the events and the ready
 * callbacks it ran, and the next iteration's timer bookkeeping before its own poll. The last
 * iteration of a run ends when asyncio says the loop stopped running. poll() is replaced in
 * the type's dict by a C method descriptor calling the original's C function (asc_epoll_poll):
 * a C-to-C call per iteration. Timing _run_once itself (the fallback below) calls a Python function from C,
 * which enters the interpreter afresh every iteration: about 600 more instructions per
 * iteration and a second clock reading.
 *
 * The slot of the loop whose selector uses this epoll object, or -1. */
static int asc_trace_epoll_slot(PyObject *ep) {
    for (int i = 0; i < asc_tr.nloops; i++)
        if (asc_tr.loops[i].epoll == ep) return i;
    return -1;
}

/* An iteration of the loop in slot i starts now (0: none starts, the loop stopped); the one
 * before ends. */
static void asc_trace_iteration_mark(int i, int64_t now) {
    int64_t t0 = asc_tr.loops[i].iter_start;
    if (t0) asc_trace_put(ASC_EV_ITER, t0, now > t0 ? now - t0 : 0, ASC_TRACK_LOOP0 + (uint32_t)i,
                          asc_tr.name_iteration, 0, 0, 0);
    asc_tr.loops[i].iter_start = now;
}

/* select.epoll.poll(self, ...), in the type's dict: a method descriptor of the original's kind
 * (METH_FASTCALL | METH_KEYWORDS, its PyMethodDef copied, so name, signature and doc are the
 * original's) whose function calls the original's C function directly, as steps.c does for
 * Context.run: a C call less per poll than calling the original descriptor (--trace, 3.11,
 * callgrind: about 80 instructions per poll). */
typedef PyObject *(*asc_fastcall_kw)(PyObject *, PyObject *const *, Py_ssize_t, PyObject *);
static asc_fastcall_kw asc_epoll_poll_orig;
static PyMethodDef asc_epoll_poll_def;

static PyObject *asc_epoll_poll(PyObject *ep, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    if (asc_trace_active) {
        int i = asc_trace_epoll_slot(ep);
        if (i >= 0) asc_trace_iteration_mark(i, asc_clock_now());
    }
    return asc_epoll_poll_orig(ep, args, nargs, kwnames);
}

/* The loop's selector's epoll object (new reference) when the loop is a selector loop on
 * select.epoll whose poll() is (now) ours; NULL otherwise, without an exception. */
static PyObject *asc_trace_loop_epoll(PyObject *loop) {
    PyObject *sel = PyObject_GetAttrString(loop, "_selector");
    PyObject *ep = sel ? PyObject_GetAttrString(sel, "_selector") : NULL;
    Py_XDECREF(sel);
    PyErr_Clear();
    PyTypeObject *tp = ep ? Py_TYPE(ep) : NULL;
    if (!tp || strcmp(tp->tp_name, "select.epoll") != 0) goto no;
    if (asc_tr.epoll_type == tp) return ep;
    if (asc_tr.epoll_type) goto no; /* another epoll type? not ours to guess */
    /* poll, a method descriptor taking METH_FASTCALL | METH_KEYWORDS (3.8-3.13); the dict of a
     * built-in type is written directly (setattr is refused on most of them) and the type told,
     * which drops every cached lookup. */
    PyObject *dict = asc_type_dict(tp);
    PyObject *cur = dict ? PyDict_GetItemString(dict, "poll") : NULL; /* borrowed */
    if (!cur || Py_TYPE(cur) != &PyMethodDescr_Type) goto no;
    const PyMethodDef *def = ((PyMethodDescrObject *)cur)->d_method;
    if (def->ml_flags != (METH_FASTCALL | METH_KEYWORDS)) goto no;
    asc_epoll_poll_orig = (asc_fastcall_kw)(void (*)(void))def->ml_meth;
    asc_epoll_poll_def = *def;
    asc_epoll_poll_def.ml_meth = (PyCFunction)(void (*)(void))asc_epoll_poll;
    PyObject *hook = PyDescr_NewMethod(tp, &asc_epoll_poll_def);
    int rc = hook ? PyDict_SetItemString(dict, "poll", hook) : -1;
    Py_XDECREF(hook);
    if (rc < 0) goto no;
    PyType_Modified(tp);
    Py_INCREF(tp);
    asc_tr.epoll_type = tp;
    return ep;
no:
    Py_XDECREF(ep);
    PyErr_Clear();
    return NULL;
}

/* events._set_running_loop(loop), asyncio's notice that a loop starts (loop) or stops (None)
 * running in this thread: after the original, the running loop is noted, and a loop that
 * stops ends its last iteration. */
static PyObject *asc_set_running_loop_call(PyObject *unused, PyObject *loop) {
    PyObject *r = PyObject_Vectorcall(asc_tr.orig_set_running_loop, &loop, 1, NULL);
    if (!r || !asc_trace_active) return r;
    if (loop == Py_None) {
        for (int i = 0; asc_th.loop && i < asc_tr.nloops; i++)
            if (asc_tr.loops[i].loop == asc_th.loop && asc_tr.loops[i].iter_start) {
                asc_trace_iteration_mark(i, asc_clock_now());
                asc_tr.loops[i].iter_start = 0;
            }
        asc_th.loop = NULL;
    } else {
        asc_th.loop = loop;
    }
    return r;
}

static PyMethodDef asc_set_running_loop_def = {"_set_running_loop", asc_set_running_loop_call, METH_O,
                                               "asyncio's _set_running_loop, noted by aioscope --trace."};

/* Replaces asyncio.events._set_running_loop (which base_events looks up at every call) by ours. */
static void asc_trace_hook_running_loop(void) {
    PyObject *events = PyImport_ImportModule("asyncio.events");
    PyObject *orig = events ? PyObject_GetAttrString(events, "_set_running_loop") : NULL;
    PyObject *hook = orig ? PyCFunction_New(&asc_set_running_loop_def, NULL) : NULL;
    if (hook && PyObject_SetAttrString(events, "_set_running_loop", hook) == 0)
        asc_tr.orig_set_running_loop = orig; /* the reference moves */
    else
        Py_XDECREF(orig);
    Py_XDECREF(hook);
    Py_XDECREF(events);
    PyErr_Clear(); /* without it: lock spans ask current_task(), iterations end at the next poll */
}

/* _run_once, timed: for loops not on epoll. The class's function (BaseEventLoop._run_once, or a
 * subclass's own) is replaced in that class's dict by a method descriptor (method_hook.c) whose
 * call is this: no bound method per iteration.
 *
 * Why the class and not the loop: an attribute put in the loop's instance __dict__ (the first
 * version did that) materialises the dict of an object whose attributes CPython 3.11+ otherwise
 * keeps as inline values, and every `self._ready`, `self._check_closed()`, `loop.call_soon()` of
 * the loop's own Python code then takes the slower dict path: measured with callgrind on 3.12,
 * that cost more than the rest of the trace (about 10 000 instructions per queue round trip). */
/* args: (loop,). */
static PyObject *asc_run_once_call(PyObject *self, PyObject *const *args, size_t nargsf,
                                   PyObject *kwnames) {
    PyObject *orig = asc_method_hook_orig(self);
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames || !asc_trace_active)
        return PyObject_Vectorcall(orig, args, nargsf, kwnames); /* the function's own answer */
    PyObject *loop = args[0];
    uint32_t track = asc_trace_loop_track(loop, PyThread_get_thread_ident());
    if (asc_tr.loops[track - ASC_TRACK_LOOP0].epoll) /* timed at its polls (a class shared with */
        return PyObject_Vectorcall(orig, args, nargsf, kwnames); /* a loop on another selector) */
    Py_INCREF(loop); /* identity only below, but kept alive across the call */
    int64_t t0 = asc_clock_now();
    PyObject *r = PyObject_Vectorcall(orig, args, nargsf, kwnames);
    if (asc_trace_active) {
        int64_t t1 = asc_clock_now();
        asc_trace_put(ASC_EV_ITER, t0, t1 > t0 ? t1 - t0 : 0, track, asc_tr.name_iteration, 0, 0, 0);
    }
    Py_DECREF(loop);
    return r;
}

/* A loop starts (its first run): its track, and its iterations timed: at its epoll object's
 * polls, or else by its class's _run_once (once per class). Loops whose _run_once is not a
 * Python function defined in a class (uvloop) are not timed. */
int asc_trace_on_loop_start(PyObject *loop) {
    if (!asc_trace_active) return 0;
    uint32_t track = asc_trace_loop_track(loop, PyThread_get_thread_ident());
    PyObject *ep = asc_trace_loop_epoll(loop);
    if (ep) {
        int i = (int)(track - ASC_TRACK_LOOP0);
        /* An epoll object another loop had (a slot reused past ASC_TRACE_MAX_LOOPS) goes. */
        for (int j = 0; j < asc_tr.nloops; j++)
            if (j != i && asc_tr.loops[j].epoll == ep) Py_CLEAR(asc_tr.loops[j].epoll);
        Py_XSETREF(asc_tr.loops[i].epoll, ep); /* owned: its address is never another's */
        asc_tr.loops[i].iter_start = 0;
        return 0;
    }
    /* The class in the loop's MRO that defines _run_once. */
    PyObject *mro = Py_TYPE(loop)->tp_mro;
    PyObject *owner = NULL, *cur = NULL; /* borrowed */
    for (Py_ssize_t i = 0; mro && PyTuple_Check(mro) && i < PyTuple_GET_SIZE(mro); i++) {
        PyObject *cls = PyTuple_GET_ITEM(mro, i);
        PyObject *dict = PyType_Check(cls) ? ((PyTypeObject *)cls)->tp_dict : NULL;
        cur = dict ? PyDict_GetItemWithError(dict, asc_tr.str_run_once) : NULL;
        if (cur) {
            owner = cls;
            break;
        }
        if (PyErr_Occurred()) return -1;
    }
    /* Not found, ours already, or something else than a function (the program's own hook, or
     * a C loop): left alone. A static type's dict (3.12+: not tp_dict) never has a function. */
    if (!owner || !PyFunction_Check(cur) || !(((PyTypeObject *)owner)->tp_flags & Py_TPFLAGS_HEAPTYPE))
        return 0;
    PyObject *ro = asc_method_hook_new(cur, asc_run_once_call);
    if (!ro) return -1;
    int rc = PyObject_SetAttr(owner, asc_tr.str_run_once, ro);
    Py_DECREF(ro);
    return rc;
}

/* ---- findings ------------------------------------------------------------------------------- */

void asc_trace_finding(const aioscope_finding *f) {
    if (!asc_trace_active || !f) return;
    int64_t now = asc_monotonic_ns();
    uint32_t track = asc_trace_loop_track(NULL, PyThread_get_thread_ident());
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_finding_to_json(f, &b);
    if (b.oom || !b.data) {
        aioscope_buf_free(&b);
        return;
    }
    if (f->kind && strcmp(f->kind, "blocking-call") == 0 && f->duration_s > 0) {
        /* The period ended now (the late heartbeat ran) and lasted duration_s. */
        int64_t dur = (int64_t)(f->duration_s * 1e9);
        char *copy = strdup(b.data);
        if (copy) {
            uint32_t btrack = track ? track - ASC_TRACK_LOOP0 + ASC_TRACK_BLOCKED0 : ASC_TRACK_BLOCKED0;
            asc_trace_append(ASC_EV_BLOCKED, now - dur, dur, btrack, asc_tr.name_blocked, 0, 0, 0)->u.text = copy;
        }
    }
    uint32_t name = asc_trace_intern_c(f->kind ? f->kind : "finding");
    asc_trace_append(ASC_EV_FINDING, now, 0, track, name, 0, 0, 0)->u.text = b.data; /* ownership moves */
}

/* ---- asyncio.Lock: wait and hold ------------------------------------------------------------ */

/* The task running now on the calling thread's loop (borrowed; NULL when none). */
static PyObject *asc_trace_current_task(asc_task_stats **st) {
    /* Inside a step of one of our tasks (steps.c said so), the running task is the one stepped:
     * asyncio enters it as current inside the step and leaves it at the step's end, and a loop
     * nested in the step (nest_asyncio) runs its steps through steps.c too, which restores the
     * outer one after each. The one exception is the first step of a 3.12+ eager task, run inside
     * create_task() without a Context.run of its own: while one runs, asyncio's set of eager
     * tasks is not empty, and the running task is looked up. */
    if (asc_th.step.st && asc_tr.step_known && (!asc_tr.eager_tasks || PySet_GET_SIZE(asc_tr.eager_tasks) == 0)) {
        *st = asc_th.step.st;
        return asc_th.step.task;
    }
    PyObject *t;
    /* While a loop runs in this thread, asyncio.current_task() is current_tasks[loop]: read
     * directly, that is a dict lookup instead of a call that first finds the running loop. */
    if (asc_th.loop && asc_tr.current_tasks) {
        t = PyDict_GetItemWithError(asc_tr.current_tasks, asc_th.loop); /* borrowed */
    } else {
        t = asc_tr.current_task ? PyObject_Vectorcall(asc_tr.current_task, NULL, 0, NULL) : NULL;
        Py_XDECREF(t); /* asyncio keeps the running task in its table: borrowed from there */
    }
    if (PyErr_Occurred()) PyErr_Clear();
    *st = t && t != Py_None ? asc_tasks_stats(t) : NULL;
    return *st ? t : NULL;
}

/* The track of the task running now on the calling thread's loop (0: none traced); *step_t0 (when
 * not NULL) the start of its current step when steps.c is timing one of this task, else 0. */
uint32_t asc_trace_current_track(int64_t *step_t0) {
    asc_task_stats *st;
    PyObject *t = asc_trace_current_task(&st);
    if (step_t0) *step_t0 = st && st == asc_th.step.st ? asc_th.step.t0 : 0;
    if (!st) return 0;
    if (!st->trace_track || !(st->trace_flags & ASC_TF_NAMED)) {
        Py_INCREF(t);
        if (!st->trace_track) asc_trace_adopt(t, st);
        if (!(st->trace_flags & ASC_TF_NAMED)) { /* running: its name is final */
            st->trace_flags |= ASC_TF_NAMED;
            asc_trace_read_name(t, st);
        }
        Py_DECREF(t);
        if (PyErr_Occurred()) PyErr_Clear();
    }
    return st->trace_track;
}

/* ---- writing the file ----------------------------------------------------------------------- */

typedef struct {
    uint32_t label, name;
    uint8_t seen, locks;
} asc_track_info;

static void asc_put_ts(FILE *out, const char *key, int64_t ns) {
    /* Microseconds with nanosecond digits: the unit of the format. */
    if (ns < 0) ns = 0;
    fprintf(out, ",\"%s\":%lld.%03d", key, (long long)(ns / 1000), (int)(ns % 1000));
}

static void asc_put_str(FILE *out, const char *s) {
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_buf_json_string(&b, s);
    if (!b.oom && b.data) fwrite(b.data, 1, b.len, out);
    else fputs("\"?\"", out);
    aioscope_buf_free(&b);
}

static const char *asc_name(uint32_t i) { return i < asc_tr.nnames && asc_tr.names[i] ? asc_tr.names[i] : "?"; }

/* "Task-7" or the task's own name. */
static void asc_put_label(FILE *out, uint32_t label) {
    if (label & ASC_LABEL_NUM) fprintf(out, "\"Task-%u\"", label & ~ASC_LABEL_NUM);
    else asc_put_str(out, asc_name(label));
}

static void asc_put_head(FILE *out, const char *ph, int *first) {
    fputs(*first ? "\n{" : ",\n{", out);
    *first = 0;
    fprintf(out, "\"ph\":\"%s\",\"pid\":%ld", ph, asc_tr.pid);
}

static int asc_trace_write(const char *path) {
    size_t tmplen = strlen(path) + 16;
    char *tmp = malloc(tmplen);
    if (!tmp) return -1;
    snprintf(tmp, tmplen, "%s.tmp", path);
    FILE *out = fopen(tmp, "w");
    if (!out) {
        fprintf(stderr, "aioscope: cannot write the trace to %s: %s\n", tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    static char iobuf[1 << 16];
    setvbuf(out, iobuf, _IOFBF, sizeof iobuf);

    size_t ntracks = (asc_tr.next_task_track - ASC_TRACK_TASK0) / ASC_TRACK_STEP + 1;
    asc_track_info *tracks = calloc(ntracks, sizeof *tracks);
    int loop_seen[ASC_TRACE_MAX_LOOPS] = {0}, blocked_seen[ASC_TRACE_MAX_LOOPS] = {0};
    uint64_t kept = asc_tr.written < asc_tr.limit ? asc_tr.written : asc_tr.limit;
    uint64_t start = asc_tr.written - kept;
    int first = 1;

    /* First pass: each task track's final label (its name as read at its steps), so that the
     * creation instant, recorded before the name was final, shows it too. */
    for (uint64_t k = start; tracks && k < asc_tr.written; k++) {
        asc_tev_view ev = asc_tev_read(&asc_tr.ring[k % asc_tr.limit]);
        const asc_tev_view *e = &ev;
        size_t i = (e->track - ASC_TRACK_TASK0) / ASC_TRACK_STEP;
        if (e->track >= ASC_TRACK_TASK0 && i < ntracks && e->type != ASC_EV_LOCK_WAIT &&
            e->type != ASC_EV_LOCK_HOLD && e->label) {
            tracks[i].label = e->label;
            tracks[i].name = e->name;
        }
    }
    fputs("{\"traceEvents\":[", out);
    for (uint64_t k = start; k < asc_tr.written; k++) {
        asc_tev_view ev = asc_tev_read(&asc_tr.ring[k % asc_tr.limit]);
        const asc_tev_view *e = &ev;
        int64_t ts = e->ts;
        asc_track_info *ti = NULL;
        if (e->track >= ASC_TRACK_TASK0 && tracks) {
            size_t i = (e->track - ASC_TRACK_TASK0) / ASC_TRACK_STEP;
            if (i < ntracks) ti = &tracks[i];
        }
        switch (e->type) {
        case ASC_EV_STEP:
        case ASC_EV_ITER:
        case ASC_EV_BLOCKED:
            asc_put_head(out, "X", &first);
            fprintf(out, ",\"tid\":%u,\"cat\":\"%s\",\"name\":", e->track,
                    e->type == ASC_EV_STEP ? "step" : e->type == ASC_EV_ITER ? "loop" : "blocked");
            asc_put_str(out, asc_name(e->name));
            asc_put_ts(out, "ts", ts);
            asc_put_ts(out, "dur", e->dur);
            if (e->text) fprintf(out, ",\"args\":%s", e->text);
            fputc('}', out);
            if (e->type == ASC_EV_ITER && e->track - ASC_TRACK_LOOP0 < ASC_TRACE_MAX_LOOPS)
                loop_seen[e->track - ASC_TRACK_LOOP0] = 1;
            if (e->type == ASC_EV_BLOCKED && e->track - ASC_TRACK_BLOCKED0 < ASC_TRACE_MAX_LOOPS)
                blocked_seen[e->track - ASC_TRACK_BLOCKED0] = 1;
            break;
        case ASC_EV_TASK_NEW:
            asc_put_head(out, "i", &first);
            fprintf(out, ",\"tid\":%u,\"s\":\"t\",\"cat\":\"task\",\"name\":\"task created\"", e->track);
            asc_put_ts(out, "ts", ts);
            fputs(",\"args\":{\"task\":", out);
            asc_put_label(out, ti && ti->label ? ti->label : e->label);
            fputs(",\"coro\":", out);
            asc_put_str(out, asc_name(e->name));
            if (e->aux) fprintf(out, ",\"spawned_by_track\":%llu", (unsigned long long)e->aux);
            fputs("}}", out);
            if (e->aux) {
                asc_put_head(out, "s", &first);
                fprintf(out, ",\"tid\":%llu,\"cat\":\"spawn\",\"name\":\"spawn\",\"id\":%u",
                        (unsigned long long)e->aux, e->track);
                asc_put_ts(out, "ts", ts);
                fputc('}', out);
            }
            break;
        case ASC_EV_FLOW_END:
            asc_put_head(out, "f", &first);
            fprintf(out, ",\"tid\":%u,\"cat\":\"spawn\",\"name\":\"spawn\",\"id\":%u,\"bp\":\"e\"", e->track,
                    e->track);
            asc_put_ts(out, "ts", ts);
            fputc('}', out);
            break;
        case ASC_EV_TASK_DONE:
            asc_put_head(out, "i", &first);
            fprintf(out, ",\"tid\":%u,\"s\":\"t\",\"cat\":\"task\",\"name\":\"%s\"", e->track,
                    e->flags & 1 ? "task cancelled" : "task done");
            asc_put_ts(out, "ts", ts);
            fputc('}', out);
            break;
        case ASC_EV_FINDING:
            asc_put_head(out, "i", &first);
            fprintf(out, ",\"tid\":%u,\"s\":\"p\",\"cat\":\"finding\",\"name\":", e->track);
            asc_put_str(out, asc_name(e->name));
            asc_put_ts(out, "ts", ts);
            if (e->text) fprintf(out, ",\"args\":%s", e->text);
            fputc('}', out);
            break;
        case ASC_EV_LOCK_WAIT:
        case ASC_EV_LOCK_HOLD:
            if (!e->track) break; /* outside any traced task: no track to put it on */
            asc_put_head(out, "X", &first);
            fprintf(out, ",\"tid\":%u,\"cat\":\"lock\",\"name\":", e->track + 1);
            asc_put_str(out, asc_name(e->name));
            asc_put_ts(out, "ts", ts);
            asc_put_ts(out, "dur", e->dur);
            fprintf(out, ",\"args\":{\"lock\":\"0x%llx\"%s}}", (unsigned long long)e->aux,
                    e->flags & 1 ? ",\"acquired\":false" : "");
            if (ti) ti->locks = 1;
            break;
        default: break;
        }
        if (ti && e->type != ASC_EV_LOCK_WAIT && e->type != ASC_EV_LOCK_HOLD) {
            ti->seen = 1;
            if (!ti->label) ti->label = e->label, ti->name = e->name;
        }
    }

    /* Metadata: the process and every track's name; loops first, then tasks in creation order. */
    asc_put_head(out, "M", &first);
    fputs(",\"name\":\"process_name\",\"args\":{\"name\":\"aioscope trace\"}}", out);
    for (int i = 0; i < ASC_TRACE_MAX_LOOPS; i++) {
        if (i >= asc_tr.nloops && !loop_seen[i] && !blocked_seen[i]) continue;
        asc_put_head(out, "M", &first);
        fprintf(out, ",\"tid\":%d,\"name\":\"thread_name\",\"args\":{\"name\":\"event loop %d\"}}",
                ASC_TRACK_LOOP0 + i, i + 1);
        asc_put_head(out, "M", &first);
        fprintf(out, ",\"tid\":%d,\"name\":\"thread_name\",\"args\":{\"name\":\"event loop %d: blocked\"}}",
                ASC_TRACK_BLOCKED0 + i, i + 1);
    }
    for (size_t i = 0; tracks && i < ntracks; i++) {
        if (!tracks[i].seen && !tracks[i].locks) continue;
        uint32_t tid = ASC_TRACK_TASK0 + (uint32_t)i * ASC_TRACK_STEP;
        for (int lk = 0; lk < (tracks[i].locks ? 2 : 1); lk++) {
            asc_put_head(out, "M", &first);
            fprintf(out, ",\"tid\":%u,\"name\":\"thread_name\",\"args\":{\"name\":", tid + lk);
            aioscope_buf b;
            aioscope_buf_init(&b);
            if (tracks[i].label & ASC_LABEL_NUM) aioscope_buf_printf(&b, "Task-%u", tracks[i].label & ~ASC_LABEL_NUM);
            else aioscope_buf_puts(&b, asc_name(tracks[i].label));
            aioscope_buf_printf(&b, " (%s)%s", asc_name(tracks[i].name), lk ? " locks" : "");
            asc_put_str(out, b.data ? b.data : "?");
            aioscope_buf_free(&b);
            fputs("}}", out);
        }
    }
    fprintf(out,
            "\n],\"displayTimeUnit\":\"ms\",\"otherData\":{\"aioscope\":\"%s\",\"events_recorded\":%llu,"
            "\"events_kept\":%llu,\"events_dropped\":%llu,\"limit\":%zu}}\n",
            AIOSCOPE_VERSION, (unsigned long long)asc_tr.written, (unsigned long long)kept,
            (unsigned long long)(asc_tr.written - kept), asc_tr.limit);
    free(tracks);
    int rc = ferror(out) ? -1 : 0;
    if (fclose(out) != 0) rc = -1;
    if (rc == 0 && rename(tmp, path) != 0) rc = -1;
    if (rc < 0) {
        fprintf(stderr, "aioscope: cannot write the trace to %s: %s\n", path, strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    return rc;
}

void asc_trace_at_exit(void) {
    /* A forked child inherits the ring; only the process that started tracing writes the file. */
    if (!asc_trace_active || asc_tr.dumped || (long)getpid() != asc_tr.pid) return;
    asc_tr.dumped = 1;
    asc_trace_locks_flush();
    (void)asc_trace_write(asc_tr.path);
}

/* The SIGTERM handler (a Python-level handler, so it runs in the main thread with the GIL):
 * write the trace, then die of SIGTERM as the program would have without us. */
static PyObject *asc_trace_on_sigterm(PyObject *self, PyObject *args) {
    asc_trace_at_exit();
    signal(SIGTERM, SIG_DFL);
    kill(getpid(), SIGTERM);
    Py_RETURN_NONE;
}

static PyMethodDef asc_sigterm_def = {"_aioscope_trace_sigterm", asc_trace_on_sigterm, METH_VARARGS,
                                      "aioscope: writes the trace, then lets SIGTERM end the program."};

/* SIGTERM ends a Python program without atexit; when the program has no handler of its own we
 * put one that writes the trace first. A program that sets its own later replaces ours (and
 * usually exits normally, through atexit). */
static void asc_trace_hook_sigterm(void) {
    PyObject *signal_mod = PyImport_ImportModule("signal");
    PyObject *cur = signal_mod ? PyObject_CallMethod(signal_mod, "getsignal", "i", SIGTERM) : NULL;
    PyObject *dfl = signal_mod ? PyObject_GetAttrString(signal_mod, "SIG_DFL") : NULL;
    if (cur && dfl && PyObject_RichCompareBool(cur, dfl, Py_EQ) == 1) {
        PyObject *h = PyCFunction_New(&asc_sigterm_def, NULL);
        PyObject *r = h ? PyObject_CallMethod(signal_mod, "signal", "iO", SIGTERM, h) : NULL;
        Py_XDECREF(r);
        Py_XDECREF(h);
    }
    Py_XDECREF(cur);
    Py_XDECREF(dfl);
    Py_XDECREF(signal_mod);
    PyErr_Clear(); /* not in the main thread, or no signal module: no SIGTERM dump */
}

/* ---- init ----------------------------------------------------------------------------------- */

/* The ring, zeroed, never freed (it lives as long as the process). Anonymous memory asked for
 * transparent huge pages: the ring is written front to back once, and with 4 KB pages that is
 * a page fault (and its accounting in the kernel) every 85 records; with 2 MB pages, one per
 * 43 690. The kernel still zeroes the pages as they are first touched, so a short run costs no
 * more memory than it writes (to within one huge page). */
static asc_tev *asc_trace_ring_alloc(size_t limit) {
    size_t bytes = limit * sizeof(asc_tev);
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, bytes, MADV_HUGEPAGE); /* a hint: without THP the ring works the same */
#endif
    return p;
}

int asc_trace_init(PyObject *module) {
    const char *path = getenv("AIOSCOPE_TRACE");
    if (!path || !*path || asc_trace_active) return 0;
    size_t limit = ASC_TRACE_DEFAULT_LIMIT;
    const char *ls = getenv("AIOSCOPE_TRACE_LIMIT");
    if (ls && *ls) {
        char *end = NULL;
        unsigned long long v = strtoull(ls, &end, 10);
        if (end != ls && *end == '\0' && v >= ASC_TRACE_MIN_LIMIT && v <= ASC_TRACE_MAX_LIMIT) limit = (size_t)v;
    }
    asc_tr.path = strdup(path);
    asc_tr.ring = asc_trace_ring_alloc(limit);
    asc_tr.names = calloc(ASC_TRACE_MAX_NAMES, sizeof *asc_tr.names);
    asc_tr.name_index = PyDict_New();
    if (!asc_tr.path || !asc_tr.ring || !asc_tr.names || !asc_tr.name_index) {
        PyErr_NoMemory();
        return -1;
    }
    asc_tr.limit = limit;
    asc_tr.t0 = asc_monotonic_ns();
    asc_tr.pid = (long)getpid();
    asc_tr.next_task_track = ASC_TRACK_TASK0;
    asc_tr.names[0] = strdup("?");
    asc_tr.nnames = 1;
#define ASC_INTERN(field, s) \
    if (!(asc_tr.field = PyUnicode_InternFromString(s))) return -1;
    ASC_INTERN(str_done, "done");
    ASC_INTERN(str_cancelled, "cancelled");
    ASC_INTERN(str_get_name, "get_name");
    ASC_INTERN(str_get_coro, "get_coro");
    ASC_INTERN(str_qualname, "__qualname__");
    ASC_INTERN(str_run_once, "_run_once");
#undef ASC_INTERN
    asc_tr.name_iteration = asc_trace_intern_c("loop iteration");
    asc_tr.name_blocked = asc_trace_intern_c("blocked");
    asc_tr.name_lock_wait = asc_trace_intern_c("lock wait");
    asc_tr.name_lock_hold = asc_trace_intern_c("lock held");
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    asc_tr.current_task = asyncio ? PyObject_GetAttrString(asyncio, "current_task") : NULL;
    /* Direct field reads only on the C Task, whose layout the table describes (asyncio.Task is
     * the Python one when _asyncio failed to import). */
    PyObject *task_type = asyncio ? PyObject_GetAttrString(asyncio, "Task") : NULL;
    if (task_type && PyType_Check(task_type) && strcmp(((PyTypeObject *)task_type)->tp_name, "_asyncio.Task") == 0) {
        asc_tr.c_task_type = (PyTypeObject *)task_type;
        asc_tr.layout = asc_layout_find(PY_VERSION_HEX);
    } else {
        Py_XDECREF(task_type);
    }
    PyObject *future_type = asyncio ? PyObject_GetAttrString(asyncio, "Future") : NULL;
    if (future_type && PyType_Check(future_type) &&
        strcmp(((PyTypeObject *)future_type)->tp_name, "_asyncio.Future") == 0)
        asc_tr.c_future_type = (PyTypeObject *)future_type;
    else
        Py_XDECREF(future_type);
    PyErr_Clear();
    Py_XDECREF(asyncio);
    if (!asc_tr.current_task) return -1;
    /* asyncio.tasks._current_tasks: _asyncio's own dict when the C module is there (3.8-3.13),
     * the pure-Python one otherwise, in step with current_task() either way. */
    PyObject *tasks_mod = PyImport_ImportModule("asyncio.tasks");
    PyObject *cur_tasks = tasks_mod ? PyObject_GetAttrString(tasks_mod, "_current_tasks") : NULL;
    if (cur_tasks && PyDict_CheckExact(cur_tasks)) asc_tr.current_tasks = cur_tasks;
    else Py_XDECREF(cur_tasks);
    /* 3.12+: asyncio.tasks._eager_tasks (_asyncio's own set), not empty exactly while an eager
     * task runs its first step inside create_task(). Not a set where one is expected: the
     * running task is looked up at every lock hook (asc_trace_current_task). */
    PyObject *eager = tasks_mod ? PyObject_GetAttrString(tasks_mod, "_eager_tasks") : NULL;
    if (eager && PyAnySet_CheckExact(eager)) asc_tr.eager_tasks = eager;
    else Py_XDECREF(eager);
    asc_tr.step_known = PY_VERSION_HEX < 0x030C0000 || asc_tr.eager_tasks != NULL; /* no eager tasks before 3.12 */
    Py_XDECREF(tasks_mod);
    PyErr_Clear(); /* without it: current_task() at every lock wait */
    if (asc_trace_locks_init(asc_tr.name_lock_wait, asc_tr.name_lock_hold) < 0)
        PyErr_Clear(); /* no lock spans; the rest still works */
    asc_trace_hook_running_loop();
    asc_trace_hook_sigterm();
    asc_trace_active = 1;
    return 0;
}
