/* trace.h: the parts of the --trace recorder (trace.c) that trace_locks.c uses.
 *
 * Everything here runs with the GIL held, like the rest of the agent. */
#ifndef AIOSCOPE_AGENT_TRACE_H
#define AIOSCOPE_AGENT_TRACE_H

#include "agent/agent.h"
#include "agent/clock.h" /* asc_clock_now(): the time of iterations and lock spans */

#include <stdint.h>

/* Track numbers (the trace's "tid"): loops 1..64, their blocked tracks 101..164, tasks from
 * 1000 on, in creation order. Perfetto sorts tracks by these numbers. */
#define ASC_TRACK_LOOP0 1
#define ASC_TRACK_BLOCKED0 101
#define ASC_TRACK_TASK0 1000
/* Task tracks go up by 2 from ASC_TRACK_TASK0: a task's lock spans are on the next number, a
 * track of their own, since a wait crosses the task's step slices without nesting in them. */
#define ASC_TRACK_STEP 2

/* trace_flags of a task: its first step ends a flow arrow; its name was read at a step (create_task
 * names a task after the factory made it, so the name seen at creation may be the default). */
#define ASC_TF_FLOW 1u
#define ASC_TF_NAMED 2u

/* A label with this bit is the N of a default task name "Task-N", not a name-table index. */
#define ASC_LABEL_NUM 0x80000000u

enum {
    ASC_EV_STEP = 1,   /* X on a task track: name = coroutine */
    ASC_EV_ITER,       /* X on a loop track */
    ASC_EV_TASK_NEW,   /* i on the task's track; aux = the spawner's track (0: none) */
    ASC_EV_FLOW_END,   /* f at the first step of a task that has a spawner */
    ASC_EV_TASK_DONE,  /* i on the task's track; flags: 1 cancelled */
    ASC_EV_BLOCKED,    /* X on a loop's blocked track; text = the finding */
    ASC_EV_FINDING,    /* i; text = the finding */
    ASC_EV_LOCK_WAIT,  /* async span on a task; aux = the lock's id; flags: 1 not acquired */
    ASC_EV_LOCK_HOLD,  /* async span on a task; aux = the lock's id */
};

/* Append one record to the ring (the oldest goes when it is full). */
void asc_trace_put(uint8_t type, int64_t ts, int64_t dur, uint32_t track, uint32_t name,
                   uint32_t label, uint64_t aux, uint8_t flags);
/* The track of the task running now on the calling thread's loop (0: none traced); through
 * step_t0 (when not NULL) the start of that task's current step when steps.c is timing it, else 0. */
uint32_t asc_trace_current_track(int64_t *step_t0);

/* A step of one of our tasks that steps.c is timing while tracing, as the lock hooks see it: the
 * task stepped (borrowed: steps.c holds it for the step), its record and the step's start. */
typedef struct {
    PyObject *task;
    asc_task_stats *st;
    int64_t t0;
} asc_trace_running;
/* steps.c, around such a step: begin notes it as the calling thread's running step (the one it
 * nests in, if any, saved into *outer); end gives *outer back and records the step
 * (asc_trace_step). The error state is kept as the step left it. */
void asc_trace_step_begin(asc_trace_running *outer, PyObject *task, asc_task_stats *st, int64_t t0);
void asc_trace_step_end(const asc_trace_running *outer, PyObject *task, asc_task_stats *st, int64_t t0,
                        int64_t t1);
/* 1 when a future was cancelled, 0 when not, -1 when unknown (read from a C future's state
 * when the layout table describes this interpreter, else by calling cancelled()). */
int asc_trace_future_cancelled(PyObject *fut);
/* Index of a name in the trace's name table (0, "?", when the table is full). */
uint32_t asc_trace_intern_c(const char *s);

/* trace_locks.c: watches asyncio.Lock's attribute stores while tracing. 0 or -1. */
int asc_trace_locks_init(uint32_t name_wait, uint32_t name_hold);
/* Records the wait that ended in the step just over without taking its lock, if any: at the
 * end of every traced step and before the file is written. */
void asc_trace_locks_flush(void);

#endif
