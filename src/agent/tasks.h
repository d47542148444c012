/* tasks.h: what tasks.c (the hooks on the C Task, or the Task subclass, and the task-level
 * findings) and task_factory.c (the chaining with a program's own task factory, and the factory
 * that makes the subclass's tasks where there is a subclass) share.
 * Private to the agent. */
#ifndef AIOSCOPE_AGENT_TASKS_H
#define AIOSCOPE_AGENT_TASKS_H

#include "agent/agent.h"

/* What the agent keeps per task: a record in tasks.c's pool, not in the task
 * object. The collector walks task objects, and CPython's allocator rounds sizes up to 16
 * bytes: 80 more bytes per task made a program creating 100 000 tasks 4 % slower (3.13), and
 * even 8 more bytes (176 -> 192 per task) made the collector 6 % slower. So a task holds only
 * the record's index, in four bytes of alignment padding of the C Task (the attach library's
 * generated layout, task_spare4), and the record names its task back (owner), which makes a
 * stale or foreign index harmless. */
typedef struct {
    PyObject *owner;    /* the task (identity only); NULL: the record is free */
    uint32_t next_free; /* a free record: the index of the next free one (0: none) */
    int flags;
    asc_codeloc created; /* where the task was created */
    /* Only for a task whose cancel() took effect (so it costs 8 bytes, not 24, per task):
     * (code or None, lasti, waiter): where it was suspended then, and what it awaited (its
     * _fut_waiter; replaced by None when the task ends). Owned. */
    PyObject *cancel_state;
    asc_task_stats stats; /* busy time, steps, age, spawner: written by steps.c (live view) */
} asc_task_extra;

/* The pool: records in chunks of ASC_POOL_CHUNK; index i is chunks[i / CHUNK][i % CHUNK]; index
 * 0 is never handed out. */
#define ASC_POOL_SHIFT 9
#define ASC_POOL_CHUNK (1u << ASC_POOL_SHIFT)

/* What both look up once at init (asc_tasks_init), with the GIL. */
typedef struct {
    PyTypeObject *base;       /* _asyncio.Task (borrowed from the module, kept alive by it) */
    PyTypeObject *type;       /* the type whose tasks have records (owned): base itself when it
                               * is patched in place (in_place), else our subclass */
    int in_place;             /* base's tp_init, tp_dealloc and cancel are ours (tasks.c) */
    initproc base_init;       /* base's own tp_init */
    Py_ssize_t extra_offset;  /* where a task keeps its record's index (a uint32_t): padding in
                               * the base Task, or 4 of 8 bytes the subclass adds without a layout */
    asc_task_extra **chunks;  /* the pool's chunks (tasks.c) */
    uint32_t nrecords;        /* records carved so far, index 0 included */
    destructor base_dealloc;
    PyObject *base_cancel;    /* Task.cancel, a method descriptor */
    PyObject *base_set_name;  /* Task.set_name */
    PyObject *factory;        /* our task factory (a builtin function) */
    PyObject *on_cancel_done; /* done callback added to cancelled tasks */
    PyObject *orig_cancel_all;  /* asyncio.runners._cancel_all_tasks */
    PyObject *uv_cancel_all;    /* uvloop._cancel_all_tasks (uvloop.run below 3.11) */
    int has_cancelling;       /* Task.cancelling() exists (3.11+) */
    PyObject *create_task_code; /* asyncio's BaseEventLoop.create_task.__code__ (owned) */
    PyObject *name_str;         /* "name", interned (owned) */
    Py_ssize_t name_index;      /* the index of `name` in create_task's locals */
    PyObject *loop_attr_str;    /* "_loop", interned (owned) */
    Py_ssize_t loop_offset;     /* a C task's loop field (the layout's task_loop), or -1 */
    int loop_checked;           /* loop_offset was compared with _loop on a first task */
    PyObject *create_task_str, *set_factory_str; /* "create_task", "set_task_factory" (owned) */
    PyObject *base_create_task; /* asyncio's BaseEventLoop.create_task, a function (owned) */
    int task_replaced;          /* asyncio.tasks.Task is our subclass (not when in_place) */
    PyObject *base_loop_type;   /* asyncio.base_events.BaseEventLoop (owned), or NULL */
} asc_tasks_state;
extern asc_tasks_state asc_t;

/* The fields of a task of ours; NULL for any other object (and for a task whose __init__ did not
 * come through ours, or found no memory for them). */
static inline asc_task_extra *asc_extra(PyObject *task)
{
    if (asc_t.type == NULL || !PyObject_TypeCheck(task, asc_t.type))
        return NULL;
    uint32_t i = *(uint32_t *)((char *)task + asc_t.extra_offset);
    if (i == 0 || i >= asc_t.nrecords)
        return NULL;
    asc_task_extra *x = &asc_t.chunks[i >> ASC_POOL_SHIFT][i & (ASC_POOL_CHUNK - 1)];
    return x->owner == task ? x : NULL;
}

/* The attribute holding the creation site of a task made by a program's own factory. */
#define ASC_CREATED_ATTR "_aioscope_created_at"

/* tasks.c: the wrapper of uvloop._cancel_all_tasks, put in place by task_factory.c. */
extern PyMethodDef asc_uv_cancel_all_def;

/* task_factory.c, from asc_tasks_init: our factory (asc_t.factory) and what it needs to name
 * tasks as create_task would (asc_t.create_task_code, asc_t.name_index). */
int asc_task_factory_init(void);

#endif
