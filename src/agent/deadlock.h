/* deadlock.h: what the parts of the deadlock detector share (deadlock.c reads a loop and decides;
 * deadlock_report.c tells what wakes a loop and writes the findings). Private to the agent. */
#ifndef AIOSCOPE_AGENT_DEADLOCK_H
#define AIOSCOPE_AGENT_DEADLOCK_H

#include "agent/agent.h"

#include <frameobject.h>
#include <stdint.h>

#include "aioscope/waitgraph.h"

/* Await chains deeper than this are cut (the innermost frames then are not seen; the task counts
 * as free). */
#define ASC_DL_MAX_CHAIN 64

/* What a task waits on, from its innermost frame or its _fut_waiter. */
typedef enum {
    W_RUNNABLE = 0, W_MOVING, W_LOCK, W_SEM, W_COND, W_EVENT, W_QGET, W_QPUT, W_QJOIN, W_SLEEP,
    W_SERVE, W_WAIT, W_WAIT_FOR, W_TASKGROUP, W_TASK, W_GATHER, W_FUTURE,
} asc_wait;

/* One task of the snapshot. Owned references unless said otherwise. */
typedef struct {
    PyObject *task;    /* borrowed from the snapshot's task list */
    PyObject *waiter;  /* _fut_waiter, NULL when runnable */
    PyObject *chain[ASC_DL_MAX_CHAIN]; /* coroutine-likes, outermost first */
    int nchain;
    int chain_walked;  /* the chain was read in this check (it may be empty) */
    int stable;        /* same waiter as at the previous check */
    asc_wait wait;
    PyObject *prim;    /* the Lock/Semaphore/Condition/Event/Queue/TaskGroup/inner task, or NULL */
    int64_t since_ns;  /* waiting on this waiter since */
} asc_dl_task;

/* A hold: task `t` holds `prim` (a Lock, or a Semaphore) through an `async with ctx` whose
 * __aexit__ sits on the stack of chain[depth]. ctx is the Condition when the lock is one's. */
typedef struct {
    int t, depth;
    PyObject *prim, *ctx; /* borrowed from the task's coroutine (alive during the check) */
} asc_dl_hold;

/* A snapshot of one loop's tasks, and the wait-for graph built from it. */
typedef struct {
    PyObject *loop;
    PyObject *tasks;     /* owned list */
    asc_dl_task *t;      /* owned, n */
    Py_ssize_t n;
    PyObject *index;     /* owned dict: task -> its index */
    asc_dl_hold *holds;  /* owned */
    int nholds, capholds;
    unsigned char *blocked;
    int *cycle;
    size_t ncycles;
    aioscope_waitgraph *g;
    int64_t now;
} asc_dl_snap;

/* What the check compares against, looked up once asyncio is there; set with the GIL. */
typedef struct {
    int ready;
    double after_s;
    int exit_on_deadlock;
    PyObject *all_tasks, *task_type, *gathering_type, *lock_type, *cond_type, *sem_type;
    PyObject *registries[3]; /* asyncio.tasks._all_tasks (3.8-3.11), _scheduled_tasks, _eager_tasks */
    PyObject *code_lock_acquire, *code_sem_acquire, *code_cond_wait, *code_event_wait;
    PyObject *code_qget, *code_qput, *code_qjoin, *code_sleep, *code_serve, *code_wait;
    PyObject *code_wait_for, *code_tg_aexit, *code_tg_aexit2;
    PyObject *aexit_func;      /* asyncio.locks._ContextManagerMixin.__aexit__ */
    PyObject *release_waiter;  /* asyncio.tasks._release_waiter: wait_for/wait timeouts */
    PyObject *on_timeout;      /* asyncio.timeouts.Timeout._on_timeout (3.11+), or NULL */
    PyObject *dis_get_instructions;
    PyObject *str_fut_waiter, *str_done; /* interned attribute names of the per-task reads */
    PyObject *str_loop;
    /* The attach library's layout of this interpreter's C Task, for reading a task's _loop and
     * _fut_waiter in place; NULL when absent or when the first task read disagreed with its
     * attributes. fields_checked: that comparison was made. */
    const struct asc_layout *layout;
    int fields_checked;
} asc_dl_state;
extern asc_dl_state asc_dl;

/* deadlock.c: helpers shared with deadlock_report.c. */
PyObject *asc_dl_attr(PyObject *o, const char *name);     /* new ref or NULL, never raises */
PyObject *asc_dl_frame_of(PyObject *c);                   /* a coroutine's frame, new ref */
int asc_dl_done(PyObject *fut);                           /* 1 when done (or unreadable) */
void asc_dl_walk_chain(asc_dl_task *t);                   /* read the await chain, once */

/* deadlock_report.c */
/* 1 when every task of the snapshot waits and nothing but a timeout can ever wake one. */
int asc_dl_loop_asleep(asc_dl_snap *s);
/* The id of a task (asyncio's number in "Task-N", else its address) and its name into name. */
long long asc_dl_task_id(PyObject *task, char *name, size_t nname);
/* What task i waits on, as human text (malloc'd). */
char *asc_dl_describe(asc_dl_snap *s, int i);
/* Sort a cycle's members by id, then along its edges (a waits on b waits on ...). */
void asc_dl_order_cycle(asc_dl_snap *s, int *members, int n);
/* Build, print at once on stderr and emit one deadlock finding over members; under
 * AIOSCOPE_ON_DEADLOCK=exit, end the process. */
void asc_dl_report(asc_dl_snap *s, const int *members, int n, const char *message);
/* The key naming a deadlock of `kind` among members: where they are suspended (new ref). */
PyObject *asc_dl_key(asc_dl_snap *s, const char *kind, const int *members, int n);
/* Emit the stuck-task finding of task i (waiting since its since_ns). */
void asc_dl_report_stuck(asc_dl_snap *s, int i, int64_t now);

#endif
