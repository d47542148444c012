/* blocking.h: what the parts of the `blocking-call` detector share (blocking.c: the heartbeat and
 * the findings; watchdog.c: the watchdog thread and its GIL worker; poll_stamp.c: the poll stamp of
 * selector loops) with loops.c, which notices the loops they watch. Private to the agent.
 *
 * The state is one struct for all of them: the loop slots, which the watchdog reads without the
 * GIL under the mutex, and what the parts look up once with the GIL (loops.c's running-loop hook
 * and loop registry included). */
#ifndef AIOSCOPE_AGENT_BLOCKING_H
#define AIOSCOPE_AGENT_BLOCKING_H

#include "agent/agent.h"
#include "agent/clock.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "aioscope/attach.h"

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
    PyObject *handle;  /* owned: the armed TimerHandle (a loop without add_reader) */
    int beat_fd;       /* the beat's timerfd, registered with loop.add_reader; -1: none */
    int64_t beat_fd_period; /* its interval (ns) */
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

typedef struct {
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
    PyObject *str_add_reader, *str_remove_reader; /* owned, interned */
    PyObject *str_cancel;
    PyObject *period_s;              /* owned float: the period for call_later */
    PyObject *slow_period_s;         /* owned float: the same for poll-stamped loops */
    int64_t slow_period_ns;
    /* Directories whose files are not the program's own (the standard library, site-packages,
     * aioscope), as C strings ending in '/', for the watchdog, which classifies frames without
     * the GIL. Set once at init. */
    char *not_user_dirs[ASC_NOT_USER_DIRS];
    int n_not_user_dirs;
} asc_loops_state;
extern asc_loops_state asc_lp;

/* The exception being handled, if any, put aside while the agent runs Python code in the middle of
 * the program's (PyErr_Fetch is deprecated from 3.12 on). */
typedef struct {
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc;
#else
    PyObject *type, *value, *tb;
#endif
} asc_saved_error;

static inline void asc_save_error(asc_saved_error *e) {
#if PY_VERSION_HEX >= 0x030C0000
    e->exc = PyErr_GetRaisedException();
#else
    PyErr_Fetch(&e->type, &e->value, &e->tb);
#endif
}

static inline void asc_restore_error(asc_saved_error *e) {
    PyErr_Clear();
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(e->exc);
#else
    PyErr_Restore(e->type, e->value, e->tb);
#endif
}

/* Errors inside the agent must never reach the program: they are dropped, and shown only when
 * AIOSCOPE_DEBUG is set (for us). */
static inline void asc_drop_error(const char *where) {
    if (!PyErr_Occurred()) return;
    if (getenv("AIOSCOPE_DEBUG")) {
        fprintf(stderr, "aioscope: internal error in %s:\n", where);
        PyErr_Print();
    }
    PyErr_Clear();
}

/* ---- blocking.c: the heartbeat and the findings ------------------------------------------- */
/* A loop started running in the calling thread (loops.c, after its first-start hooks): give it a
 * slot and arm its heartbeat; a run without a slot (a virtual clock, too many loops) goes
 * unwatched. */
void asc_heartbeat_start(PyObject *loop);
/* The slot of the loop running in the calling thread, or NULL. */
asc_loop_slot *asc_slot_of_this_thread(void);
/* The loop of this thread stopped: close its period, cancel its beat, free its slot. */
void asc_loop_stopped(void);
/* Note the task the slot's loop runs now, for the blocked period due (with the GIL). */
void asc_note_task(asc_loop_slot *s, int64_t due);
/* A `blocking-call` finding from a captured stack (innermost first); the watchdog's provisional
 * one and the loop's own (asc_report_block) share it, and the block id. */
void asc_block_finding(aioscope_finding *f, const aioscope_frame *frames, size_t n,
                       int64_t late_ns, const char *note,
                       int (*is_user)(const aioscope_frame *));
void asc_report_block(asc_loop_slot *s, int64_t due, int64_t late_ns);
long long asc_block_id(const asc_loop_slot *s, int64_t mark);

/* ---- watchdog.c: the watchdog thread and the GIL worker -------------------------------------- */
void asc_watchdog_ensure(void); /* start both threads unless this process has them */
void asc_watchdog_stop(void);   /* stop and join them (drops the GIL while joining) */
/* pthread_atfork handlers: the mutex across fork(), the slots in the child. */
void asc_atfork_prepare(void);
void asc_atfork_parent(void);
void asc_atfork_child(void);
/* At init: the folders the watchdog treats as not the program's own, without the GIL. */
void asc_note_not_user_dirs(PyObject *module);

/* ---- poll_stamp.c: the poll stamp of selector loops ----------------------------------------- */
extern PyTypeObject asc_poll_hook_type;
/* Re-aim the stamp on loop at the run in slot index, or (install) put one there; 1 when stamped. */
int asc_hook_poll(asc_loop_slot *s, int index, PyObject *loop, int install);
/* Report the period the watchdog flagged on a stamped loop (loop thread, with the GIL). */
void asc_close_flagged_block(asc_loop_slot *s);
/* The GIL worker's stamping of slot i's polls while its period due is long. */
void asc_stamp_with_gil(int i, int64_t due);

#endif
