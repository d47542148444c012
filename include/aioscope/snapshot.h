/* A point-in-time picture of a Python process's threads and asyncio tasks.
 *
 * Both ways of looking at a running process fill this one model: reading its memory
 * (aioscope_target_snapshot in attach.h) and, later, asking its in-process agent. The CLI's
 * ps / pstree / dump print it as tables, trees or JSON, whichever filled it. A field that one
 * source cannot know is marked unknown (-1 or NULL) and the `has_*` flags say which columns the
 * source can provide, so that the printers can say "not available" rather than print zeros.
 *
 * Memory: the snapshot owns everything reachable from it (strings included); one call to
 * aioscope_snapshot_free releases it all. */
#ifndef AIOSCOPE_SNAPSHOT_H
#define AIOSCOPE_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "aioscope/json.h"

typedef struct {
    const char *file;     /* owned by the snapshot; "?" when unreadable */
    const char *function; /* qualified name when the interpreter records one */
    int line;             /* 0 when unknown */
} aioscope_snap_frame;

typedef enum {
    AIOSCOPE_LOOP_NONE = 0,  /* the thread runs no event loop (or we could not tell) */
    AIOSCOPE_LOOP_POLLING,   /* the loop waits in its selector: idle, responsive */
    AIOSCOPE_LOOP_RUNNING,   /* the loop is running a task step or callback right now */
} aioscope_loop_state;

typedef struct {
    uint64_t thread_id;        /* threading.get_ident() */
    uint64_t native_id;        /* the OS thread id (0 when the interpreter does not record it) */
    aioscope_snap_frame *frames; /* innermost first */
    size_t nframes;
    uint64_t loop;             /* address of the event loop this thread runs, 0 if none found */
    aioscope_loop_state loop_state;
    long running_task;         /* index into tasks of the task running on this thread, -1 none */
} aioscope_snap_thread;

typedef enum {
    AIOSCOPE_TASK_PENDING = 0, /* values of CPython's fut_state enum */
    AIOSCOPE_TASK_CANCELLED = 1,
    AIOSCOPE_TASK_FINISHED = 2,
} aioscope_task_state;

typedef struct {
    uint64_t id;               /* the task's address, which is id(task) in the target */
    const char *name;          /* owned; "Task-N" default names included */
    aioscope_task_state state;
    aioscope_snap_frame *coro; /* the coroutine chain, the task's own coroutine first */
    size_t ncoro;
    const char *awaiting;      /* what the innermost coroutine waits on ("Task", "Future",
                                  "_GatheringFuture", "sleep", ...); NULL when not waiting */
    uint64_t awaiting_id;      /* address of that future/task, 0 if none */
    uint64_t *awaited_by;      /* ids of the tasks waiting for this one (await, gather, TaskGroup) */
    size_t nawaited_by;
    long thread;               /* index into threads of the thread running it now, -1 if none */
    uint64_t loop;             /* address of the task's event loop */
    /* Known only to the agent (has_agent_fields): time spent running, steps taken, the task that
     * created it. */
    double busy_s;
    long steps;
    uint64_t spawned_by;
    double age_s;              /* agent: seconds since the task was created; -1 unknown */
    int cancelling;            /* agent: a cancellation is pending (cancel() not yet delivered, or
                                  cancelling() > 0 on 3.11+) */
    const char *exception;     /* agent: a finished task's exception that nothing retrieved
                                  ("ValueError: bad"), owned; NULL otherwise */
} aioscope_snap_task;

typedef struct aioscope_snapshot {
    int pid;
    uint32_t py_version_hex;
    const char *source;        /* "memory" (read without the agent), "agent", or "agent-memory" (the
                                  agent read its own memory: the program held the GIL) */
    int has_agent_fields;      /* busy_s / steps / spawned_by are meaningful */
    int frozen;                /* the target was stopped while it was read */
    aioscope_snap_thread *threads;
    size_t nthreads;
    aioscope_snap_task *tasks;
    size_t ntasks;
    size_t unreadable_tasks;   /* tasks found but skipped because their memory was inconsistent */
    void *arena;               /* owned string storage */
} aioscope_snapshot;

/* An empty snapshot (calloc'd); NULL on out of memory. */
aioscope_snapshot *aioscope_snapshot_new(void);
void aioscope_snapshot_free(aioscope_snapshot *s); /* accepts NULL */
/* Copy s into the snapshot's own storage; returns NULL on out of memory. Equal strings are
 * stored once (file names and function names repeat across thousands of tasks). */
const char *aioscope_snapshot_intern(aioscope_snapshot *snap, const char *s);
/* Copy s into the snapshot's storage without interning (unique strings such as task names);
 * NULL on out of memory. */
const char *aioscope_snapshot_strdup(aioscope_snapshot *snap, const char *s);
/* Index of the task with this id, or -1. Builds an index on first use (O(1) after). */
long aioscope_snapshot_find_task(aioscope_snapshot *snap, uint64_t id);
/* Call after reordering snap->tasks, so that the next lookup rebuilds the index. */
void aioscope_snapshot_reindex(aioscope_snapshot *snap);

/* The snapshot as one JSON object (the --json output of ps / pstree / dump, the agent's
 * "snapshot json" answer), appended to b; b->oom is set when memory ran out. */
void aioscope_snapshot_to_json(const aioscope_snapshot *s, aioscope_buf *b);
/* The same text, for printing: with out, whenever b has grown past a megabyte between two tasks
 * its text is written to out and b emptied (the JSON of 100 000 tasks is 45 MB); the rest of the
 * text is left in b for the caller to write. With out NULL, aioscope_snapshot_to_json. */
void aioscope_snapshot_write_json(const aioscope_snapshot *s, aioscope_buf *b, FILE *out);

#endif
