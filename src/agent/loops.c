/* loops.c: noticing every event loop that runs, chaining its exception handler, and
 * `blocking-call` through a heartbeat and a watchdog thread.
 *
 * Noticing loops. Every asyncio loop announces itself through asyncio.events._set_running_loop:
 * BaseEventLoop.run_forever calls it through the module attribute (events._set_running_loop), and
 * uvloop's Loop._run calls the function it read from asyncio._set_running_loop when uvloop was
 * imported. install() replaces both attributes with asc_loops_set_running_loop (before the program
 * imports uvloop, under `aioscope run`), which calls the original and then, for a loop that starts,
 * chains the exception handler of its type and arms its heartbeat; set_running_loop(None) at the
 * end of run_forever disarms it. Nothing runs per callback or per loop iteration.
 *
 * blocking-call. A running loop has a heartbeat: a TimerHandle (loop.call_later) whose callback is
 * an instance of asc_heartbeat_type. Each beat stores the time the next beat is due in the loop's
 * slot (an atomic) and re-arms itself. One watchdog pthread (not a Python thread: it never takes
 * the GIL) wakes every few milliseconds; when a running loop's beat is overdue by more than the
 * threshold, the loop thread is stuck in one callback *now*, and the watchdog reads that thread's
 * Python stack right away with the attach library, through process_vm_readv on our own memory,
 * which works while the loop thread holds the GIL (a catastrophic regex) or not (time.sleep). It
 * then takes the GIL (asc_probe) to note which task the loop is running and, if the attach library
 * could not read the stack, to read it with the C API. When the late beat finally runs, it turns
 * what was captured into one finding for that blocked period; the core report merges per site.
 *
 * A loop whose run_forever returned is disarmed (its pending beat cancelled), so a stopped loop
 * is never reported and a restarted one starts a fresh period. The beat is a timer, not a task:
 * it does not keep run_until_complete running, and asc_loops_is_heartbeat tells it apart from the
 * program's callbacks. */
#include "agent/agent.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "aioscope/attach.h"

#if PY_VERSION_HEX < 0x030B0000
#include <frameobject.h> /* before 3.11 Python.h lacks PyFrame_GetBack (3.8: the frame's fields) */
#endif

/* Loops that can be *running at the same time* (each needs its own thread). More than this is
 * very unusual; the extra loops run unwatched rather than costing a dynamic structure that the
 * watchdog would have to read without the GIL. */
#define ASC_MAX_LOOPS 64
/* Frames kept for one blocked period: deeper stacks keep their innermost frames, which hold the
 * site. */
#define ASC_STACK_MAX 128

typedef struct {
    /* Written with the GIL held and the watchdog mutex taken; read by the watchdog under the
     * mutex. running is 1 between a loop's start and stop. */
    int running;
    uintptr_t tstate; /* the loop thread's PyThreadState, valid while running */
    pthread_t thread; /* the loop thread, to know it again in a forked child */
    /* When the next beat is due (CLOCK_MONOTONIC ns). Stored by each beat without the mutex. */
    _Atomic int64_t due_ns;
    /* Selector loops (asc_hook_poll): the loop thread is inside selector.select() (in_poll), and
     * how many polls it has left (polls: the mark of a stamped loop's period). Stored around every
     * poll without the mutex. block_flag: the watchdog saw the current period blocked; the loop
     * closes it at its next poll. */
    int poll_hooked;
    int stamp_tried;   /* the watchdog tried to stamp this run's polls (asc_stamp_with_gil) */
    _Atomic int in_poll;
    _Atomic int64_t polls;
    _Atomic int block_flag;
    /* The watchdog's view of a stamped loop, under the mutex: the polls count it last saw out of
     * the poll and since when (the period's start, late by at most one watchdog period), and the
     * flagged period. */
    int64_t wd_polls, wd_since;
    int64_t block_mark, block_since;

    /* With the GIL only. */
    int used;
    uint64_t gen;      /* bumped at every start: beats armed by an earlier start do nothing */
    PyObject *loop;    /* borrowed: a running loop is kept alive by whoever runs it */
    PyObject *handle;  /* owned: the armed TimerHandle */
    int64_t task_due;  /* the period the task below was seen in (0: none) */
    long long task_id;
    char *task_name;   /* owned */
    aioscope_location task_created; /* owned strings: where that task was created, if known */

    /* Under the watchdog mutex: the stack of the blocked period named captured_due, innermost
     * first. A period is named by its mark (asc_slot_late): when the loop last left its poll, or
     * when its late beat was due. */
    /* Set in a forked child: the loop this thread was running is not watched until it beats
     * again, since the child may never go back to it (multiprocessing's workers run their own
     * code and exit) and would read as blocked for good. */
    int fork_paused;
    int64_t captured_due;
    int64_t announced_due; /* the period already written to the event stream as provisional */
    int64_t probe_due; /* the period the watchdog learnt (or is learning) the task of */
    aioscope_frame *frames; /* owned, ASC_STACK_MAX entries, allocated with the slot */
    size_t nframes;
} asc_loop_slot;

/* stdlib, platstdlib, purelib, platlib and aioscope's own folder, each also as its realpath. */
#define ASC_NOT_USER_DIRS 16

static struct {
    asc_loop_slot slots[ASC_MAX_LOOPS];
    pthread_mutex_t mutex;
    pthread_cond_t cond;   /* wakes the watchdog early to stop */
    pthread_t thread;
    /* The GIL worker: takes the GIL for what the watchdog needs it for (stamping a loop's polls,
     * learning the running task), so that the watchdog itself never waits for the GIL and keeps
     * reading and announcing a block that holds it (a long C call). Requests are one slot each,
     * under the mutex; -1 when none. */
    pthread_t gil_thread;
    pthread_cond_t gil_cond;
    int pend_stamp, pend_probe;
    int64_t pend_stamp_due, pend_probe_due;
    long thread_pid;       /* the process the thread runs in (0: none); differs after fork */
    int stop;
    int64_t threshold_ns;
    int64_t period_ns;     /* heartbeat and watchdog period */
    aioscope_target *target; /* our own memory, for GIL-free stack reads; NULL when unsupported */
    long target_pid;       /* the process target was opened in */
    int debug;             /* AIOSCOPE_DEBUG: say how each blocked stack was read */
    aioscope_frame scratch[ASC_STACK_MAX];   /* the watchdog's read buffer, under the mutex */
    aioscope_frame probe_buf[ASC_STACK_MAX]; /* asc_probe's, with the GIL */

    /* With the GIL. */
    PyObject *orig_set_running_loop; /* owned */
    PyObject *seen_loops;            /* owned weakref.WeakSet: every loop that ever ran */
    PyObject *current_task;          /* owned: asyncio.current_task */
    PyObject *get_running_loop;      /* owned: asyncio.events._get_running_loop */
    PyObject *selector_loop_type;    /* owned: asyncio.selector_events.BaseSelectorEventLoop */
    PyObject *base_selector_type;    /* owned: selectors.BaseSelector */
    PyObject *str_call_later;        /* owned, interned */
    PyObject *str_cancel;
    PyObject *period_s;              /* owned float: the period for call_later */
    PyObject *slow_period_s;         /* owned float: the same for poll-stamped loops */
    int64_t slow_period_ns;
    /* Directories whose files are not the program's own (the standard library, site-packages,
     * aioscope), as C strings ending in '/', for the watchdog, which classifies frames without
     * the GIL. Set once at init. */
    char *not_user_dirs[ASC_NOT_USER_DIRS];
    int n_not_user_dirs;
} asc_lp = {
    .mutex = PTHREAD_MUTEX_INITIALIZER,
    .threshold_ns = 100000000,
    .period_ns = 10000000,
    .pend_stamp = -1,
    .pend_probe = -1,
};

/* The C API moved between the supported versions; these keep the code below version-free. */
#if PY_VERSION_HEX < 0x03090000
static PyObject *PyObject_CallOneArg(PyObject *fn, PyObject *arg) {
    return PyObject_CallFunctionObjArgs(fn, arg, NULL);
}
static PyObject *PyObject_CallNoArgs(PyObject *fn) { return PyObject_CallFunctionObjArgs(fn, NULL); }
#endif
/* The exception being handled, if any, put aside while the agent runs Python code in the middle of
 * the program's (PyErr_Fetch is deprecated from 3.12 on). */
typedef struct {
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc;
#else
    PyObject *type, *value, *tb;
#endif
} asc_saved_error;

static void asc_save_error(asc_saved_error *e) {
#if PY_VERSION_HEX >= 0x030C0000
    e->exc = PyErr_GetRaisedException();
#else
    PyErr_Fetch(&e->type, &e->value, &e->tb);
#endif
}

static void asc_restore_error(asc_saved_error *e) {
    PyErr_Clear();
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(e->exc);
#else
    PyErr_Restore(e->type, e->value, e->tb);
#endif
}

static int64_t asc_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Errors inside the agent must never reach the program: they are dropped, and shown only when
 * AIOSCOPE_DEBUG is set (for us). */
static void asc_drop_error(const char *where) {
    if (!PyErr_Occurred()) return;
    if (getenv("AIOSCOPE_DEBUG")) {
        fprintf(stderr, "aioscope: internal error in %s:\n", where);
        PyErr_Print();
    }
    PyErr_Clear();
}

void asc_loops_set_threshold(double seconds) {
    /* The beat period is a tenth of the threshold, between 1 and 10 ms: the reported duration is
     * measured from when the beat was due, so it can be short by up to one period; 10 ms keeps an
     * idle loop's extra wake-ups at 100 a second (a few microseconds each). */
    double period = seconds / 10.0;
    if (period > 0.010) period = 0.010;
    if (period < 0.001) period = 0.001;
    asc_lp.threshold_ns = (int64_t)(seconds * 1e9);
    asc_lp.period_ns = (int64_t)(period * 1e9);
    /* A loop whose polls are stamped (asc_hook_poll) does not need its beat to see blocks; its
     * beat only drives the deadlock check and the live view's lag, so it beats every 50 ms: ten
     * times fewer wake-ups of an idle loop. */
    double slow = period > 0.05 ? period : 0.05;
    asc_lp.slow_period_ns = (int64_t)(slow * 1e9);
    PyObject *p = PyFloat_FromDouble(period);
    PyObject *ps = PyFloat_FromDouble(slow);
    if (p && ps) {
        Py_XSETREF(asc_lp.period_s, p);
        Py_XSETREF(asc_lp.slow_period_s, ps);
    } else {
        Py_XDECREF(p);
        Py_XDECREF(ps);
        PyErr_Clear();
    }
}

/* ---- the heartbeat --------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    int index;    /* slot */
    uint64_t gen; /* the slot's gen when armed */
} asc_heartbeat;

static PyObject *asc_heartbeat_call(PyObject *self, PyObject *args, PyObject *kwargs);

static void asc_heartbeat_dealloc(PyObject *self) { Py_TYPE(self)->tp_free(self); }

static PyObject *asc_heartbeat_repr(PyObject *self) {
    return PyUnicode_FromString("<aioscope heartbeat>");
}

static PyTypeObject asc_heartbeat_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aioscope._agent.Heartbeat",
    .tp_basicsize = sizeof(asc_heartbeat),
    .tp_dealloc = asc_heartbeat_dealloc,
    .tp_repr = asc_heartbeat_repr,
    .tp_call = asc_heartbeat_call,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The event-loop heartbeat of aioscope's blocking detector (a timer callback).",
};

int asc_loops_is_heartbeat(PyObject *callback) {
    return callback && Py_TYPE(callback) == &asc_heartbeat_type;
}

/* The slot's beat period. */
static int64_t asc_beat_ns(const asc_loop_slot *s) {
    return s->poll_hooked ? asc_lp.slow_period_ns : asc_lp.period_ns;
}

/* Arm the slot's next beat: loop.call_later(period, heartbeat). */
static int asc_arm(asc_loop_slot *s, PyObject *hb) {
    PyObject *period = s->poll_hooked ? asc_lp.slow_period_s : asc_lp.period_s;
    PyObject *h = PyObject_CallMethodObjArgs(s->loop, asc_lp.str_call_later, period, hb, NULL);
    if (!h) return -1;
    Py_XSETREF(s->handle, h);
    return 0;
}

/* The watchdog's measure (under the mutex) of how long the slot's loop has gone without getting
 * back to polling, and the mark that names this period. A stamped selector loop is out of its poll
 * since the watchdog first saw its current polls count (0 while it is in select()); any other loop
 * (uvloop) is judged by its beat, which is late by about as long as the loop has been stuck. Both
 * are short by at most one period. */
static int64_t asc_slot_late(asc_loop_slot *s, int64_t now, int64_t *mark) {
    if (!s->poll_hooked) {
        *mark = atomic_load(&s->due_ns);
        return now - *mark;
    }
    *mark = -1;
    if (atomic_load_explicit(&s->in_poll, memory_order_acquire)) {
        s->wd_polls = -1;
        return 0;
    }
    int64_t p = atomic_load_explicit(&s->polls, memory_order_relaxed);
    if (p != s->wd_polls) {
        s->wd_polls = p;
        s->wd_since = now;
        return 0;
    }
    *mark = p;
    return now - s->wd_since;
}

/* 1 while the period named mark is still the slot's current, unfinished one. */
static int asc_slot_in_period(asc_loop_slot *s, int64_t mark) {
    if (s->poll_hooked)
        return !atomic_load_explicit(&s->in_poll, memory_order_acquire) &&
               atomic_load_explicit(&s->polls, memory_order_relaxed) == mark;
    return asc_now_ns() > mark && atomic_load(&s->due_ns) == mark;
}

static void asc_report_block(asc_loop_slot *s, int64_t due, int64_t late_ns);
static long long asc_block_id(const asc_loop_slot *s, int64_t mark);

/* A stamped loop closes the period the watchdog flagged (with the GIL, in the loop thread): at its
 * next poll, or when it stops. */
static void asc_close_flagged_block(asc_loop_slot *s) {
    int64_t mark = 0, since = 0;
    int valid = 0;
    pthread_mutex_lock(&asc_lp.mutex);
    if (atomic_load(&s->block_flag)) {
        valid = s->block_mark == atomic_load(&s->polls);
        mark = s->block_mark;
        since = s->block_since;
        atomic_store(&s->block_flag, 0);
    }
    pthread_mutex_unlock(&asc_lp.mutex);
    if (valid && asc_cfg.enabled) asc_report_block(s, mark, asc_now_ns() - since);
}

/* The task the loop runs right now: its id (the object's address, as tasks.c reports it), name
 * and creation site (tasks.c keeps it for the tasks it made). */
static void asc_note_task(asc_loop_slot *s, int64_t due) {
    PyObject *task = PyObject_CallOneArg(asc_lp.current_task, s->loop);
    if (!task) {
        PyErr_Clear();
        return;
    }
    if (task != Py_None) {
        PyObject *name = PyObject_CallMethod(task, "get_name", NULL);
        const char *n = name && PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
        PyErr_Clear();
        free(s->task_name);
        s->task_name = n ? strdup(n) : NULL;
        s->task_id = (long long)(uintptr_t)task;
        s->task_due = due;
        Py_XDECREF(name);
        aioscope_location_clear(&s->task_created);
        if (asc_tasks_created_at(task, &s->task_created) < 0) PyErr_Clear();
    }
    Py_DECREF(task);
}

/* Read a thread's Python stack with the C API (the GIL held): the fallback when the attach
 * library cannot read this interpreter. Innermost first, like aioscope_thread_stack. */
static size_t asc_stack_with_gil(PyThreadState *ts, aioscope_frame *out, size_t max) {
    size_t n = 0;
#if PY_VERSION_HEX >= 0x03090000
    PyFrameObject *f = PyThreadState_GetFrame(ts); /* new reference */
#else
    PyFrameObject *f = ts->frame;
    Py_XINCREF(f);
#endif
    while (f && n < max) {
#if PY_VERSION_HEX >= 0x03090000
        PyCodeObject *code = PyFrame_GetCode(f); /* new reference */
#else
        PyCodeObject *code = f->f_code;
        Py_INCREF(code);
#endif
        const char *file = PyUnicode_AsUTF8(code->co_filename);
        const char *func = PyUnicode_AsUTF8(code->co_name);
        PyErr_Clear();
        aioscope_frame *fr = &out[n++];
        snprintf(fr->file, sizeof fr->file, "%s", file ? file : "?");
        snprintf(fr->function, sizeof fr->function, "%s", func ? func : "?");
        fr->line = PyFrame_GetLineNumber(f);
        Py_DECREF(code);
#if PY_VERSION_HEX >= 0x03090000
        PyFrameObject *back = PyFrame_GetBack(f); /* new reference */
#else
        PyFrameObject *back = f->f_back;
        Py_XINCREF(back);
#endif
        Py_DECREF(f);
        f = back;
    }
    Py_XDECREF(f);
    return n;
}

/* What the GIL-free read cannot tell, learnt with the GIL: the task the blocked loop is running
 * and, when the attach library could not read the stack, the stack through the C API. Called by
 * the watchdog thread, holding neither the GIL nor the mutex. Taking the GIL is what makes this
 * work in every case: when the loop thread waits in a call that released the GIL (time.sleep) the
 * GIL comes at once and the thread is still in that call; when the loop thread holds the GIL (a
 * regex, a hot loop), our request makes it drop the GIL at its next eval-breaker check, which is
 * right after the C call returns or inside the hot loop, still inside the task's step and at the
 * blocking line. (A pending call would not do: before 3.13 one queued from a non-Python thread
 * only runs at the main thread's next GIL switch, after the loop got back to polling.) The
 * watchdog may wait here for as long as such a C call lasts; it watches nothing else meanwhile,
 * which only matters with several loops blocked at once. */
static void asc_probe(int i, int64_t due) {
    PyGILState_STATE g = PyGILState_Ensure();
    asc_loop_slot *s = &asc_lp.slots[i];
    /* The loop may have stopped, or got back to polling, while we waited. */
    if (asc_lp.stop || !asc_cfg.enabled || !s->used || !s->running || !asc_slot_in_period(s, due))
        goto out;
    asc_saved_error saved;
    asc_save_error(&saved);
    asc_note_task(s, due);
    pthread_mutex_lock(&asc_lp.mutex);
    int need_stack = s->captured_due != due;
    pthread_mutex_unlock(&asc_lp.mutex);
    if (need_stack) {
        /* probe_buf is used with the GIL only; the copy into the slot is under the mutex. */
        size_t n = asc_stack_with_gil((PyThreadState *)s->tstate, asc_lp.probe_buf, ASC_STACK_MAX);
        pthread_mutex_lock(&asc_lp.mutex);
        if (n > 0 && s->captured_due != due) {
            if (asc_lp.debug)
                fprintf(stderr, "aioscope: stack read with the GIL: %s:%d\n",
                        asc_lp.probe_buf[0].file, asc_lp.probe_buf[0].line);
            memcpy(s->frames, asc_lp.probe_buf, n * sizeof *s->frames);
            s->nframes = n;
            s->captured_due = due;
        }
        pthread_mutex_unlock(&asc_lp.mutex);
    }
    asc_restore_error(&saved);
out:
    PyGILState_Release(g);
}

/* "app.py" as the absolute path the report needs (3.8 keeps the script's name as typed). */
static void asc_set_location(aioscope_location *loc, const aioscope_frame *fr) {
    char path[4096];
    const char *file = fr->file;
    if (file[0] != '/' && file[0] != '<' && getcwd(path, sizeof path - 1)) {
        size_t len = strlen(path);
        snprintf(path + len, sizeof path - len, "/%s", file);
        file = path;
    }
    (void)aioscope_location_set(loc, file, fr->line, fr->function);
}

static int asc_frame_is_user(const aioscope_frame *fr) {
    PyObject *name = PyUnicode_DecodeFSDefault(fr->file);
    if (!name) {
        PyErr_Clear();
        return 0;
    }
    int user = asc_is_user_file(name);
    Py_DECREF(name);
    if (user < 0) PyErr_Clear();
    return user > 0;
}

/* A `blocking-call` finding for one blocked period from its captured stack (innermost first):
 * the site is the innermost frame is_user accepts (the innermost of all when none does), the
 * stack outermost first. note is appended to the message ("" for none). */
static void asc_block_finding(aioscope_finding *f, const aioscope_frame *frames, size_t n,
                              int64_t late_ns, const char *note,
                              int (*is_user)(const aioscope_frame *)) {
    aioscope_finding_init(f);
    double secs = (double)late_ns / 1e9;
    char msg[128];
    snprintf(msg, sizeof msg, "event loop blocked for %.3f s%s", secs, note);
    f->kind = strdup("blocking-call");
    f->message = strdup(msg);
    f->severity = AIOSCOPE_SEV_ERROR;
    f->duration_s = secs;
    f->max_duration_s = secs;
    size_t site = 0;
    for (size_t k = 0; k < n; k++) {
        if (is_user(&frames[k])) {
            site = k;
            break;
        }
    }
    asc_set_location(&f->site, &frames[site]);
    for (size_t k = n; k-- > 0;) {
        aioscope_location loc = {0};
        asc_set_location(&loc, &frames[k]);
        (void)aioscope_finding_push_frame(f, loc.file, loc.line, loc.function);
        aioscope_location_clear(&loc);
    }
}

/* The late beat of a blocked period: one `blocking-call` finding from what the watchdog (or the
 * probe) captured for it. Without a capture there is no site to show, so no finding: that
 * only happens when the period ended within one watchdog period of the threshold. */
static void asc_report_block(asc_loop_slot *s, int64_t due, int64_t late_ns) {
    aioscope_frame *frames = NULL;
    size_t n = 0;
    pthread_mutex_lock(&asc_lp.mutex);
    if (s->captured_due == due && s->nframes > 0) {
        frames = malloc(s->nframes * sizeof *frames);
        if (frames) {
            n = s->nframes;
            memcpy(frames, s->frames, n * sizeof *frames);
        }
    }
    pthread_mutex_unlock(&asc_lp.mutex);
    if (!frames) return;

    aioscope_finding f;
    asc_block_finding(&f, frames, n, late_ns, "", asc_frame_is_user);
    if (s->task_due == due) {
        f.has_task = 1;
        f.task_id = s->task_id;
        f.task_name = s->task_name ? strdup(s->task_name) : NULL;
        if (s->task_created.file)
            (void)aioscope_location_set(&f.created_at, s->task_created.file, s->task_created.line,
                                        s->task_created.function);
    }
    f.block = asc_block_id(s, due);
    free(frames);
    asc_emit(&f);
}

/* A beat: runs in the loop thread, as a timer callback. */
static PyObject *asc_heartbeat_call(PyObject *self, PyObject *args, PyObject *kwargs) {
    asc_heartbeat *hb = (asc_heartbeat *)self;
    asc_loop_slot *s = &asc_lp.slots[hb->index];
    if (!s->used || s->gen != hb->gen || !s->running) Py_RETURN_NONE; /* a stale beat */
    int64_t now = asc_now_ns();
    /* Move the period on first, so the watchdog cannot take this beat's own stack for the
     * blocked one. */
    int64_t due = atomic_exchange(&s->due_ns, now + asc_beat_ns(s));
    if (s->fork_paused) {
        /* A forked child came back to its loop: watch it again, from now on. */
        pthread_mutex_lock(&asc_lp.mutex);
        s->fork_paused = 0;
        s->wd_polls = -2; /* the watchdog starts this loop's period afresh */
        atomic_store(&s->block_flag, 0);
        pthread_mutex_unlock(&asc_lp.mutex);
        due = now;
    }
    /* A selector loop's blocks are measured at its poll (asc_poll_hook_call), not here. */
    if (asc_cfg.enabled && !s->poll_hooked && now - due > asc_lp.threshold_ns)
        asc_report_block(s, due, now - due);
    if (asc_arm(s, self) < 0) asc_drop_error("heartbeat");
    if (asc_cfg.enabled) asc_deadlock_on_heartbeat(s->loop); /* deadlock.c: every ~0.2 s */
    Py_RETURN_NONE;
}

/* ---- the watchdog thread ------------------------------------------------------------------- */

/* Open our own memory for GIL-free stack reads, once per process: the target reads by pid
 * (process_vm_readv), so a forked child must open its own or it would read its parent's stacks.
 * _PyRuntime is exported by libpython and by a static python executable (its dynamic symbol
 * table lists it for extensions); without it the watchdog relies on asc_probe's C-API read. */
static void asc_open_target(void) {
    long pid = (long)getpid();
    if (asc_lp.target_pid == pid) return;
    aioscope_target_close(asc_lp.target);
    asc_lp.target = NULL;
    asc_lp.target_pid = pid;
    asc_lp.debug = getenv("AIOSCOPE_DEBUG") != NULL;
    void *runtime = dlsym(RTLD_DEFAULT, "_PyRuntime");
    aioscope_target *t = NULL;
    if (runtime &&
        aioscope_target_open_self((uint32_t)PY_VERSION_HEX, (uint64_t)(uintptr_t)runtime, &t) == 0)
        asc_lp.target = t;
    if (asc_lp.debug && !asc_lp.target)
        fprintf(stderr, "aioscope: no GIL-free stack reads here (_PyRuntime %s)\n",
                runtime ? "found" : "not exported");
}

/* Read the blocked loop thread's stack into the slot, under the mutex, without the GIL. The read
 * goes into scratch and is kept only if the period is still going on afterwards: a read that
 * raced with the end of the block may show the poll or the beat rather than the blocking code. */
static void asc_capture(asc_loop_slot *s, int64_t due) {
    size_t n = 0;
    if (asc_lp.target &&
        aioscope_thread_stack(asc_lp.target, (uint64_t)s->tstate, asc_lp.scratch, ASC_STACK_MAX,
                              &n) == 0 &&
        n > 0 && asc_slot_in_period(s, due)) {
        memcpy(s->frames, asc_lp.scratch, n * sizeof *s->frames);
        s->nframes = n;
        s->captured_due = due;
        if (asc_lp.debug)
            fprintf(stderr, "aioscope: watchdog read %zu frames without the GIL: %s:%d\n", n,
                    asc_lp.scratch[0].file, asc_lp.scratch[0].line);
    }
}

/* The program's own file, judged without the GIL by the folders noted at init ("<frozen ...>",
 * "<string>" and the like are not). */
static int asc_path_is_user_nogil(const aioscope_frame *fr) {
    const char *file = fr->file;
    if (!file[0] || file[0] == '<') return 0;
    for (int i = 0; i < asc_lp.n_not_user_dirs; i++)
        if (strncmp(file, asc_lp.not_user_dirs[i], strlen(asc_lp.not_user_dirs[i])) == 0) return 0;
    return 1;
}

/* The id of a blocked period in the event stream, the same for its provisional and its final
 * finding: the process, the loop's slot, its run and the period's mark mixed, below 2^53 so that a JSON
 * number carries it exactly. */
static long long asc_block_id(const asc_loop_slot *s, int64_t mark) {
    uint64_t h = (uint64_t)getpid() * 0x9E3779B97F4A7C15ull;
    h ^= (uint64_t)(s - asc_lp.slots) << 40;
    /* A slot serves loop after loop, and a stamped loop's marks start again at 1: the run's
     * generation keeps the periods of different runs apart. */
    h ^= (s->gen + 1) * 0x94D049BB133111EBull;
    h ^= (uint64_t)mark * 0xBF58476D1CE4E5B9ull;
    h &= (1ull << 53) - 1;
    return (long long)(h ? h : 1);
}

/* Write a provisional `blocking-call` for the period the watchdog just captured, while the loop
 * is still blocked: a program that never comes back (killed, hung for good) still gets its
 * finding. The loop's own report of the period when it ends carries the same block id, and the
 * CLI counts the two as one. Watchdog thread, mutex held, no GIL: only C and write(). */
static void asc_announce_block(asc_loop_slot *s, int64_t due, int64_t late_ns) {
    if (s->nframes == 0) return;
    aioscope_finding f;
    asc_block_finding(&f, s->frames, s->nframes, late_ns, " (still blocked when last seen)",
                      asc_path_is_user_nogil);
    f.block = asc_block_id(s, due);
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_event_finding(&b, &f);
    asc_events_write(&b);
    aioscope_buf_free(&b);
    aioscope_finding_clear(&f);
}

static void asc_stamp_with_gil(int i, int64_t due);

static void *asc_watchdog_main(void *arg) {
    pthread_mutex_lock(&asc_lp.mutex);
    while (!asc_lp.stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t wake = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + asc_lp.period_ns;
        ts.tv_sec = wake / 1000000000;
        ts.tv_nsec = wake % 1000000000;
        pthread_cond_timedwait(&asc_lp.cond, &asc_lp.mutex, &ts);
        if (asc_lp.stop) break;
        int64_t now = asc_now_ns();
        int probe = -1, stamp = -1;
        int64_t probe_due = 0, stamp_due = 0;
        for (int i = 0; i < ASC_MAX_LOOPS; i++) {
            asc_loop_slot *s = &asc_lp.slots[i];
            if (!s->running || s->fork_paused) continue;
            int64_t due;
            int64_t late = asc_slot_late(s, now, &due);
            if (!s->poll_hooked && !s->stamp_tried && late > asc_lp.threshold_ns / 4 && stamp < 0) {
                /* Read the stack first, without the GIL: taking the GIL may wait for as long as a
                 * C call holding it lasts, and this may already be the blocking step. */
                asc_capture(s, due);
                s->stamp_tried = 1;
                stamp = i;
                stamp_due = due;
            }
            if (late <= asc_lp.threshold_ns) continue;
            if (s->poll_hooked && !atomic_load(&s->block_flag)) {
                            s->block_mark = due;
                s->block_since = s->wd_since;
                atomic_store(&s->block_flag, 1);
            }
            /* A failed read (the thread moved under us) is retried at the next wake-up. */
            if (s->captured_due != due) asc_capture(s, due);
            if (s->captured_due == due && s->announced_due != due) {
                s->announced_due = due;
                asc_announce_block(s, due, late);
            }
            if (s->probe_due != due && probe < 0) {
                s->probe_due = due;
                probe = i;
                probe_due = due;
            }
        }
        /* Hand what needs the GIL to the GIL worker; a request while it is still busy with the
         * previous one is dropped (that period then just lacks its task or its stamp). */
        if (stamp >= 0 && asc_lp.pend_stamp < 0) {
            asc_lp.pend_stamp = stamp;
            asc_lp.pend_stamp_due = stamp_due;
        }
        if (probe >= 0 && asc_lp.pend_probe < 0) {
            asc_lp.pend_probe = probe;
            asc_lp.pend_probe_due = probe_due;
        }
        if (stamp >= 0 || probe >= 0) pthread_cond_signal(&asc_lp.gil_cond);
    }
    pthread_mutex_unlock(&asc_lp.mutex);
    return NULL;
}

static int asc_hook_poll(asc_loop_slot *s, int index, PyObject *loop, int install);

static void *asc_gil_worker_main(void *arg) {
    pthread_mutex_lock(&asc_lp.mutex);
    for (;;) {
        while (!asc_lp.stop && asc_lp.pend_stamp < 0 && asc_lp.pend_probe < 0)
            pthread_cond_wait(&asc_lp.gil_cond, &asc_lp.mutex);
        if (asc_lp.stop) break;
        int stamp = asc_lp.pend_stamp, probe = asc_lp.pend_probe;
        int64_t stamp_due = asc_lp.pend_stamp_due, probe_due = asc_lp.pend_probe_due;
        asc_lp.pend_stamp = asc_lp.pend_probe = -1;
        /* Never wait for the GIL with the mutex held: the loop thread takes the mutex with the
         * GIL held (loop start and stop). */
        pthread_mutex_unlock(&asc_lp.mutex);
        if (stamp >= 0) asc_stamp_with_gil(stamp, stamp_due);
        if (probe >= 0) asc_probe(probe, probe_due);
        pthread_mutex_lock(&asc_lp.mutex);
    }
    pthread_mutex_unlock(&asc_lp.mutex);
    return NULL;
}

/* Stamp the polls of a selector loop whose current period has run for a quarter of the
 * threshold (with the GIL, from the GIL worker, while the loop thread is paused inside its long
 * step). The period under way becomes the stamped loop's first one, timed from the stamp; from
 * the next poll on, periods are split exactly. */
static void asc_stamp_with_gil(int i, int64_t due) {
    if (asc_cfg.dev_off & ASC_OFF_STAMP) return;
    PyGILState_STATE g = PyGILState_Ensure();
    asc_loop_slot *s = &asc_lp.slots[i];
    if (asc_lp.stop || !asc_cfg.enabled || !s->used || !s->running || s->poll_hooked ||
        atomic_load(&s->due_ns) != due) {
        if (!asc_lp.stop && s->used) s->stamp_tried = 0; /* the period ended: maybe next time */
        PyGILState_Release(g);
        return;
    }
    asc_saved_error saved;
    asc_save_error(&saved);
    int hooked = asc_hook_poll(s, i, s->loop, 1);
    asc_restore_error(&saved);
    if (hooked) {
        pthread_mutex_lock(&asc_lp.mutex);
        atomic_store(&s->in_poll, 0);
        atomic_store(&s->polls, 1);
        atomic_store(&s->block_flag, 0);
        s->wd_polls = 1;
        /* The period is timed from now, not from the late beat's due time: the loop may have
         * polled in between (before the stamp was there to count it), and two short steps
         * around that poll are not one block. A block that is already going on is timed from
         * here, a lower bound; the watchdog asks for the stamp early (a quarter of the
         * threshold) so that little of it is lost. */
        s->wd_since = asc_now_ns();
        /* What the watchdog already read for this period now belongs to mark 1. */
        if (s->captured_due == due) s->captured_due = 1;
        if (s->probe_due == due) s->probe_due = 1;
        if (s->task_due == due) s->task_due = 1;
        s->poll_hooked = 1;
        /* Taking the GIL may have waited for the whole blocking call (a regex holding it): the
         * loop thread, paused right after it, polls as soon as we let go, before the watchdog's
         * next look. So a period already over the threshold is flagged now. */
        int64_t now = asc_now_ns();
        if (now - due > asc_lp.threshold_ns) {
            s->block_mark = 1;
            s->block_since = due;
            atomic_store(&s->block_flag, 1);
            s->probe_due = 1;
        }
        pthread_mutex_unlock(&asc_lp.mutex);
        if (asc_lp.debug) fprintf(stderr, "aioscope: polls of loop %d stamped after %.3f s\n", i, (double)(now - due) / 1e9);
        /* The loop thread is inside the period's step: the running task is the one to name. */
        asc_save_error(&saved);
        asc_note_task(s, 1);
        asc_restore_error(&saved);
    }
    PyGILState_Release(g);
}

/* Start the watchdog if this process has none (first loop, or first loop after a fork). Signals
 * are blocked in it, so that SIGINT and friends keep interrupting the main thread's system calls
 * as they would without the agent. */
static void asc_watchdog_ensure(void) {
    long pid = (long)getpid();
    if (asc_lp.thread_pid == pid) return;
    asc_open_target();
    static int cond_ready;
    if (!cond_ready) {
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&asc_lp.cond, &ca);
        pthread_condattr_destroy(&ca);
        pthread_cond_init(&asc_lp.gil_cond, NULL);
        cond_ready = 1;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    asc_lp.stop = 0;
    asc_lp.pend_stamp = asc_lp.pend_probe = -1;
    if (pthread_create(&asc_lp.gil_thread, NULL, asc_gil_worker_main, NULL) == 0) {
        if (pthread_create(&asc_lp.thread, NULL, asc_watchdog_main, NULL) == 0) {
            asc_lp.thread_pid = pid;
        } else {
            pthread_mutex_lock(&asc_lp.mutex);
            asc_lp.stop = 1;
            pthread_cond_signal(&asc_lp.gil_cond);
            pthread_mutex_unlock(&asc_lp.mutex);
            pthread_join(asc_lp.gil_thread, NULL);
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void asc_watchdog_stop(void) {
    if (asc_lp.thread_pid != (long)getpid()) return;
    pthread_mutex_lock(&asc_lp.mutex);
    asc_lp.stop = 1;
    pthread_cond_signal(&asc_lp.cond);
    pthread_cond_signal(&asc_lp.gil_cond);
    pthread_mutex_unlock(&asc_lp.mutex);
    /* The GIL worker may be waiting for the GIL (asc_probe): join without it. */
    Py_BEGIN_ALLOW_THREADS
    pthread_join(asc_lp.thread, NULL);
    pthread_join(asc_lp.gil_thread, NULL);
    Py_END_ALLOW_THREADS
    asc_lp.thread_pid = 0;
}

/* fork(): the child has no watchdog thread and the mutex may have been held by it. The prepare
 * handler takes the mutex so that the child inherits it in a known state (the watchdog holds it
 * only for a few microseconds at a time, never while waiting for the GIL). */
static void asc_atfork_prepare(void) { pthread_mutex_lock(&asc_lp.mutex); }
static void asc_atfork_parent(void) { pthread_mutex_unlock(&asc_lp.mutex); }
static void asc_atfork_child(void) {
    pthread_mutex_unlock(&asc_lp.mutex);
    asc_lp.thread_pid = 0; /* re-created at the next loop start or beat */
    asc_lp.pend_stamp = asc_lp.pend_probe = -1;
    /* Only the thread that forked exists in the child: loops of other threads will never beat
     * again, and their thread states are gone. asc_loops_after_fork_child frees their slots. */
    for (int i = 0; i < ASC_MAX_LOOPS; i++) {
        asc_loop_slot *s = &asc_lp.slots[i];
        if (s->running && !pthread_equal(s->thread, pthread_self())) s->running = 0;
        else if (s->running) s->fork_paused = 1;
    }
}

/* For the live view (control.c, any thread, no GIL): how late each running loop's heartbeat is
 * now. A loop that runs a long callback is late by about as long as the callback has run. */
int asc_loops_lags(asc_loop_lag *out, int max) {
    int n = 0;
    int64_t now = asc_now_ns();
    pthread_mutex_lock(&asc_lp.mutex);
    for (int i = 0; i < ASC_MAX_LOOPS && n < max; i++) {
        asc_loop_slot *s = &asc_lp.slots[i];
        if (!s->running) continue;
        int64_t late = now - atomic_load(&s->due_ns);
        out[n].thread_id = (uint64_t)s->thread; /* pthread_self() is threading.get_ident() */
        out[n].lag_s = late > 0 ? (double)late / 1e9 : 0.0;
        n++;
    }
    pthread_mutex_unlock(&asc_lp.mutex);
    return n;
}

/* ---- loops starting and stopping ------------------------------------------------------------ */

/* The slot of the loop running in the calling thread, or NULL. */
static asc_loop_slot *asc_slot_of_this_thread(void) {
    uintptr_t ts = (uintptr_t)PyThreadState_Get();
    for (int i = 0; i < ASC_MAX_LOOPS; i++) {
        asc_loop_slot *s = &asc_lp.slots[i];
        if (s->used && s->running && s->tstate == ts) return s;
    }
    return NULL;
}

/* set_running_loop(None): the loop of this thread stopped. Its armed beat is cancelled, so a loop
 * that runs again later starts a fresh period instead of reporting the time it was stopped. */
static void asc_loop_stopped(void) {
    asc_loop_slot *s = asc_slot_of_this_thread();
    if (!s) return;
    /* The loop may stop right after a block (asyncio.run(main()) whose main() ends with the
     * blocking call): no poll or late beat follows, so the period is closed here. */
    int64_t now = asc_now_ns();
    if (s->poll_hooked) {
        asc_close_flagged_block(s);
    } else {
        int64_t due = atomic_exchange(&s->due_ns, now + asc_lp.period_ns);
        if (now - due > asc_lp.threshold_ns) asc_report_block(s, due, now - due);
    }
    pthread_mutex_lock(&asc_lp.mutex);
    s->running = 0;
    s->tstate = 0;
    pthread_mutex_unlock(&asc_lp.mutex);
    s->used = 0;
    s->loop = NULL;
    PyObject *h = s->handle;
    s->handle = NULL;
    if (h) {
        PyObject *r = PyObject_CallMethodObjArgs(h, asc_lp.str_cancel, NULL);
        Py_XDECREF(r);
        Py_DECREF(h);
        asc_drop_error("loop stop");
    }
}

/* ---- the poll stamp of selector loops ------------------------------------------------------- */

/* asyncio's selector loops call self._selector.select(timeout) once per iteration, and only
 * there wait for I/O: the exact moment the loop "gets back to polling". The beat alone cannot
 * split periods on these loops: asyncio runs callbacks that were ready before the timers that
 * fell due, so two 60 ms steps separated by `await asyncio.sleep(0)` run before the late beat and
 * would read as one 120 ms block. The stamp is a callable put in front of the selector's select
 * (an instance attribute); it closes a blocked period when the loop comes back to poll and counts
 * polls, and the watchdog does the timing. It is kept to a vectorcall, two relaxed stores and an
 * increment, but an extra call layer per iteration still costs iteration-heavy programs several
 *  per cent, so a loop only gets it once its beat has been late by a quarter of the threshold (it runs
 * long steps; asc_stamp_with_gil): programs whose steps are all short never pay for it. */
typedef struct {
    PyObject_HEAD
    PyObject *orig; /* owned: the selector's bound select method */
    int index;      /* the slot of the loop's current run */
    uint64_t gen;   /* that slot's gen at the start of the run */
    vectorcallfunc vectorcall;
} asc_poll_hook;

#if PY_VERSION_HEX < 0x03090000
#define PyObject_Vectorcall _PyObject_Vectorcall
#define Py_TPFLAGS_HAVE_VECTORCALL _Py_TPFLAGS_HAVE_VECTORCALL
#endif

static PyObject *asc_poll_hook_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                          PyObject *kwnames) {
    asc_poll_hook *ph = (asc_poll_hook *)self;
    asc_loop_slot *s = &asc_lp.slots[ph->index];
    if (!s->used || s->gen != ph->gen || !s->running || !s->poll_hooked)
        return PyObject_Vectorcall(ph->orig, args, nargsf, kwnames); /* a run we do not watch */
    if (atomic_load_explicit(&s->block_flag, memory_order_relaxed)) asc_close_flagged_block(s);
    atomic_store_explicit(&s->in_poll, 1, memory_order_relaxed);
    PyObject *r = PyObject_Vectorcall(ph->orig, args, nargsf, kwnames);
    /* The count first, published by the release store: the watchdog must never see "not
     * polling" with the old count. */
    atomic_fetch_add_explicit(&s->polls, 1, memory_order_relaxed);
    atomic_store_explicit(&s->in_poll, 0, memory_order_release);
    return r;
}

static int asc_poll_hook_traverse(PyObject *self, visitproc visit, void *arg) {
    Py_VISIT(((asc_poll_hook *)self)->orig);
    return 0;
}

/* The selector holds the hook in its __dict__ and the hook holds the selector's bound method: a
 * cycle, so the hook takes part in garbage collection. */
static int asc_poll_hook_clear(PyObject *self) {
    Py_CLEAR(((asc_poll_hook *)self)->orig);
    return 0;
}

static void asc_poll_hook_dealloc(PyObject *self) {
    PyObject_GC_UnTrack(self);
    asc_poll_hook_clear(self);
    Py_TYPE(self)->tp_free(self);
}

static PyTypeObject asc_poll_hook_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aioscope._agent.PollStamp",
    .tp_basicsize = sizeof(asc_poll_hook),
    .tp_dealloc = asc_poll_hook_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(asc_poll_hook, vectorcall),
    .tp_traverse = asc_poll_hook_traverse,
    .tp_clear = asc_poll_hook_clear,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "aioscope's stamp around an asyncio selector's select() (blocking detector).",
};

/* Re-aim the poll stamp already on an asyncio selector loop at the run in slot index, or (install)
 * put one there; returns 1 when the loop's polls are stamped. Only loops of asyncio's BaseSelectorEventLoop with
 * a selectors.BaseSelector: they poll through _selector.select every iteration. Anything unusual
 * (a select already replaced by someone else) leaves the loop to the beat alone. Runs Python code
 * (an ABC's isinstance): never with the watchdog mutex held. */
static int asc_hook_poll(asc_loop_slot *s, int index, PyObject *loop, int install) {
    if (!asc_lp.selector_loop_type || !asc_lp.base_selector_type) return 0;
    int ok = PyObject_IsInstance(loop, asc_lp.selector_loop_type);
    PyObject *sel = ok > 0 ? PyObject_GetAttrString(loop, "_selector") : NULL;
    ok = sel ? PyObject_IsInstance(sel, asc_lp.base_selector_type) : 0;
    /* sel.select as the loop finds it: our stamp (an instance attribute, not a descriptor), or
     * the class's method bound. Never sel.__dict__: asking for it would turn the selector's
     * inline attribute values into a real dict (3.11+), and every attribute the loop reads
     * from it in every select() would then be a dict lookup. */
    PyObject *cur = ok > 0 ? PyObject_GetAttrString(sel, "select") : NULL;
    asc_poll_hook *ph = NULL;
    if (cur && Py_TYPE(cur) == &asc_poll_hook_type) {
        ph = (asc_poll_hook *)cur;
        cur = NULL;
    } else if (cur && install && PyMethod_Check(cur) && PyMethod_GET_SELF(cur) == sel) {
        ph = PyObject_GC_New(asc_poll_hook, &asc_poll_hook_type);
        if (ph) {
            ph->orig = cur;
            cur = NULL;
            ph->index = 0;
            ph->gen = 0; /* no slot has gen 0: a run that is not watched */
            ph->vectorcall = asc_poll_hook_vectorcall;
            PyObject_GC_Track((PyObject *)ph);
            if (PyObject_SetAttrString(sel, "select", (PyObject *)ph) < 0) Py_CLEAR(ph);
        }
    }
    Py_XDECREF(cur);
    int hooked = 0;
    if (ph) {
        ph->index = index;
        ph->gen = s->gen;
        hooked = 1;
        Py_DECREF(ph);
    }
    Py_XDECREF(sel);
    asc_drop_error("poll stamp");
    return hooked;
}

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

/* 1 when loop.time() is asyncio's or uvloop's own clock, 0 when the loop's class (or a base that
 * is not asyncio's or uvloop's) defines its own time(): a virtual clock, such as CPython's
 * test_utils.TestLoop, whose run loop hands every timer's deadline to the test and advances time
 * itself. The heartbeat, a timer, would be one the test never expected (and on a virtual clock a
 * late beat means nothing), so such a loop gets none: blocking-call is not checked on it. */
static int asc_loop_has_real_clock(PyObject *loop) {
    PyObject *mro = Py_TYPE(loop)->tp_mro; /* borrowed tuple */
    if (!mro || !PyTuple_Check(mro)) return 1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); i++) {
        PyObject *cls = PyTuple_GET_ITEM(mro, i);
        PyObject *dict = PyObject_GetAttrString(cls, "__dict__");
        int defines = dict ? PyMapping_HasKeyString(dict, "time") : 0;
        Py_XDECREF(dict);
        PyErr_Clear();
        if (!defines) continue;
        PyObject *mod = PyObject_GetAttrString(cls, "__module__");
        const char *name = mod && PyUnicode_Check(mod) ? PyUnicode_AsUTF8(mod) : NULL;
        int real = name && (strcmp(name, "asyncio") == 0 || strncmp(name, "asyncio.", 8) == 0 ||
                            strcmp(name, "uvloop") == 0 || strncmp(name, "uvloop.", 7) == 0);
        Py_XDECREF(mod);
        PyErr_Clear();
        return real;
    }
    return 1;
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

    if (asc_slot_of_this_thread()) asc_loop_stopped(); /* a start without a stop: re-arm */
    if (!asc_loop_has_real_clock(loop) || (asc_cfg.dev_off & ASC_OFF_BEAT)) return;
    asc_loop_slot *s = NULL;
    int index = -1;
    for (int i = 0; i < ASC_MAX_LOOPS && !s; i++) {
        if (!asc_lp.slots[i].used) {
            s = &asc_lp.slots[i];
            index = i;
        }
    }
    if (!s) return; /* more than ASC_MAX_LOOPS loops running at once: this one is not watched */
    if (!s->frames) {
        s->frames = malloc(ASC_STACK_MAX * sizeof *s->frames);
        if (!s->frames) return;
    }
    asc_heartbeat *hb = PyObject_New(asc_heartbeat, &asc_heartbeat_type);
    if (!hb) {
        asc_drop_error("heartbeat");
        return;
    }
    s->used = 1;
    s->gen++;
    s->loop = loop;
    s->task_due = 0;
    hb->index = index;
    hb->gen = s->gen;
    /* A stamp left on the selector by an earlier run is re-aimed at once; a loop without one
     * gets it only when it shows long steps. Before the first beat is armed: the beat's period
     * depends on it. Not under the mutex: asc_hook_poll runs Python code. */
    int hooked = asc_hook_poll(s, index, loop, 0);
    pthread_mutex_lock(&asc_lp.mutex);
    s->poll_hooked = hooked;
    s->stamp_tried = hooked;
    pthread_mutex_unlock(&asc_lp.mutex);
    if (asc_arm(s, (PyObject *)hb) < 0) {
        asc_drop_error("heartbeat");
        s->used = 0;
        s->loop = NULL;
        Py_DECREF(hb);
        return;
    }
    Py_DECREF(hb); /* the TimerHandle holds it */
    pthread_mutex_lock(&asc_lp.mutex);
    atomic_store(&s->in_poll, 0);
    atomic_store(&s->polls, 1);
    atomic_store(&s->block_flag, 0);
    s->wd_polls = -1;
    atomic_store(&s->due_ns, asc_now_ns() + asc_beat_ns(s));
    s->captured_due = 0;
    s->probe_due = 0;
    s->nframes = 0;
    s->tstate = (uintptr_t)PyThreadState_Get();
    s->thread = pthread_self();
    s->running = 1;
    pthread_mutex_unlock(&asc_lp.mutex);
    if (!(asc_cfg.dev_off & ASC_OFF_WATCHDOG)) asc_watchdog_ensure();
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

int asc_loops_module_init(PyObject *module) {
    if (PyType_Ready(&asc_heartbeat_type) < 0 || PyType_Ready(&asc_poll_hook_type) < 0) return -1;
    return 0;
}

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

/* Add dir (a str) and its realpath, each ending in '/', to the watchdog's not-user folders. */
static void asc_add_not_user_dir(PyObject *dir) {
    const char *d = dir && PyUnicode_Check(dir) ? PyUnicode_AsUTF8(dir) : NULL;
    if (!d || !*d) {
        PyErr_Clear();
        return;
    }
    char real[PATH_MAX];
    const char *forms[2] = {d, realpath(d, real)};
    for (int i = 0; i < 2 && asc_lp.n_not_user_dirs < ASC_NOT_USER_DIRS; i++) {
        if (!forms[i] || (i == 1 && strcmp(forms[0], forms[1]) == 0)) continue;
        size_t n = strlen(forms[i]);
        char *copy = malloc(n + 2);
        if (!copy) return;
        memcpy(copy, forms[i], n);
        if (n == 0 || copy[n - 1] != '/') copy[n++] = '/';
        copy[n] = '\0';
        asc_lp.not_user_dirs[asc_lp.n_not_user_dirs++] = copy;
    }
}

/* The same folders frames.c treats as not the program's own, as C strings the watchdog can use
 * without the GIL (asc_announce_block). */
static void asc_note_not_user_dirs(PyObject *module) {
    if (asc_lp.n_not_user_dirs) return;
    PyObject *sysconfig = PyImport_ImportModule("sysconfig");
    PyObject *paths = sysconfig ? PyObject_CallMethod(sysconfig, "get_paths", NULL) : NULL;
    static const char *const keys[] = {"stdlib", "platstdlib", "purelib", "platlib"};
    for (size_t i = 0; paths && PyDict_Check(paths) && i < sizeof keys / sizeof keys[0]; i++)
        asc_add_not_user_dir(PyDict_GetItemString(paths, keys[i]));
    PyObject *file = PyObject_GetAttrString(module, "__file__");
    PyObject *os_path = file ? PyImport_ImportModule("os.path") : NULL;
    PyObject *dir = os_path ? PyObject_CallMethod(os_path, "dirname", "O", file) : NULL;
    asc_add_not_user_dir(dir);
    Py_XDECREF(dir);
    Py_XDECREF(os_path);
    Py_XDECREF(file);
    Py_XDECREF(paths);
    Py_XDECREF(sysconfig);
    PyErr_Clear();
}

int asc_loops_init(PyObject *module) {
    int rc = -1;
    PyObject *asyncio = NULL, *events = NULL, *weakref = NULL, *hook = NULL;
    asyncio = PyImport_ImportModule("asyncio");
    events = asyncio ? PyImport_ImportModule("asyncio.events") : NULL;
    weakref = events ? PyImport_ImportModule("weakref") : NULL;
    if (!weakref) goto done;
    asc_lp.str_call_later = PyUnicode_InternFromString("call_later");
    asc_lp.str_cancel = PyUnicode_InternFromString("cancel");
    asc_lp.seen_loops = PyObject_CallMethod(weakref, "WeakSet", NULL);
    asc_lp.current_task = PyObject_GetAttrString(asyncio, "current_task");
    asc_lp.get_running_loop = PyObject_GetAttrString(events, "_get_running_loop");
    asc_lp.orig_set_running_loop = PyObject_GetAttrString(events, "_set_running_loop");
    hook = PyObject_GetAttrString(module, "_set_running_loop");
    if (!asc_lp.str_call_later || !asc_lp.str_cancel || !asc_lp.seen_loops ||
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

int asc_loops_before_fork(void) {
    if (asc_lp.thread_pid != (long)getpid()) return 0;
    asc_watchdog_stop();
    return 1;
}

void asc_loops_after_fork_parent(int stopped) {
    if (stopped) asc_watchdog_ensure();
}

void asc_loops_after_fork_child(void) {
    int any = 0;
    for (int i = 0; i < ASC_MAX_LOOPS; i++) {
        asc_loop_slot *s = &asc_lp.slots[i];
        if (!s->used) continue;
        if (s->running) {
            any = 1; /* the forking thread's own loop keeps running in the child */
            continue;
        }
        /* A loop of a thread that does not exist here: its TimerHandle belongs to a loop nobody
         * will run; drop our reference without touching the loop. */
        s->used = 0;
        s->loop = NULL;
        Py_CLEAR(s->handle);
    }
    if (asc_lp.debug) fprintf(stderr, "aioscope: forked child %ld: %d loop(s) kept\n", (long)getpid(), any);
    if (any) asc_watchdog_ensure();
}
