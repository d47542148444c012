/* tasks.h: what tasks.c (the Task subclass and the task-level findings) and task_factory.c (the
 * task factory that makes the subclass's tasks, chained with a program's own factory) share.
 * Private to the agent. */
#ifndef AIOSCOPE_AGENT_TASKS_H
#define AIOSCOPE_AGENT_TASKS_H

#include "agent/agent.h"

#if PY_VERSION_HEX < 0x03090000
#define PyObject_Vectorcall _PyObject_Vectorcall
#endif

/* The fields the subclass adds after the base Task object. */
typedef struct {
    asc_codeloc created; /* where the task was created */
    /* Only for a task whose cancel() took effect (so it costs 8 bytes, not 24, per task):
     * (code or None, lasti, waiter): where it was suspended then, and what it awaited (its
     * _fut_waiter; replaced by None when the task ends). Owned. */
    PyObject *cancel_state;
    int flags;
    asc_task_stats stats; /* busy time, steps, age, spawner: written by steps.c (live view) */
} asc_task_extra;

/* What both look up once at init (asc_tasks_init), with the GIL. */
typedef struct {
    PyTypeObject *base;       /* _asyncio.Task (borrowed from the module, kept alive by it) */
    PyTypeObject *type;       /* our subclass (owned) */
    Py_ssize_t extra_offset;  /* base->tp_basicsize: where asc_task_extra starts */
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
} asc_tasks_state;
extern asc_tasks_state asc_t;

/* The fields of a task of the subclass; NULL for any other object. */
static inline asc_task_extra *asc_extra(PyObject *task)
{
    if (asc_t.type == NULL || !PyObject_TypeCheck(task, asc_t.type))
        return NULL;
    return (asc_task_extra *)((char *)task + asc_t.extra_offset);
}

/* The attribute holding the creation site of a task made by a program's own factory. */
#define ASC_CREATED_ATTR "_aioscope_created_at"

/* tasks.c: the wrapper of uvloop._cancel_all_tasks, put in place by task_factory.c. */
extern PyMethodDef asc_uv_cancel_all_def;

/* task_factory.c, from asc_tasks_init: our factory (asc_t.factory) and what it needs to name
 * tasks as create_task would (asc_t.create_task_code, asc_t.name_index). */
int asc_task_factory_init(void);

#endif
