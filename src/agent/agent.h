/* The in-process agent: internal interface between its parts.
 *
 * The agent is the CPython extension aioscope._agent. It is the only part of aioscope that
 * includes Python.h. Its parts, one file each:
 *   module.c    module init, install(), configuration, the findings sink, exit handling
 *   loops.c     noticing every event loop that starts running, per-loop hooks (exception handler
 *               chaining)
 *   blocking.c  `blocking-call`: the heartbeat of every running loop and its findings, with
 *               watchdog.c (the watchdog thread and its GIL worker) and poll_stamp.c (the poll
 *               stamp of selector loops); blocking.h is what they share with loops.c
 *   tasks.c     the Task subclass with its creation site: `lost-exception`, `destroyed-pending`,
 *               `swallowed-cancel`, `pending-at-exit`
 *   task_factory.c  the task factory making the subclass's tasks, chained with a program's own;
 *               tasks.h is what it shares with tasks.c
 *   coros.c     `unawaited-coroutine` through warnings._warn_unawaited_coroutine
 *   leaks.c     `resource-leak`
 *   frames.c    the program's own frames: classifying files, sites, stacks, cheap creation sites
 *   deadlock.c  `deadlock` and `stuck-task` (deadlock_report.c writes them; deadlock.h)
 *   steps.c     busy time and steps of each task, for the live view (clock.c: the fast clock)
 *   livesnap.c, livethreads.c, livepy.c, control.c  the live view: snapshots, the control socket
 *   trace.c     --trace (trace_locks.c: lock spans; trace.h)
 *   method_hook.c  the class-level method descriptor trace.c hooks _run_once with
 *
 * The agent is a process-wide singleton (it hooks process-wide things: warnings, the running-loop
 * setter, at-exit), so its state is one static struct rather than per-module state;
 * subinterpreters are not supported. Every function here is called with the GIL held unless it
 * says otherwise. Functions return 0 or -1 with a Python exception set, like the C API. */
#ifndef AIOSCOPE_AGENT_H
#define AIOSCOPE_AGENT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h> /* before 3.11 Python.h lacks PyFrame_GetBack (3.8: the frame's fields) */

/* The C API the agent uses that 3.8 does not have under these names (3.9 added them): one set of
 * stand-ins here, so that the code everywhere else is version-free. */
#if PY_VERSION_HEX < 0x03090000
#define PyObject_Vectorcall _PyObject_Vectorcall
#define Py_TPFLAGS_HAVE_VECTORCALL _Py_TPFLAGS_HAVE_VECTORCALL /* provisional name in 3.8 */
static inline PyObject *PyObject_CallOneArg(PyObject *fn, PyObject *arg) {
    return PyObject_CallFunctionObjArgs(fn, arg, NULL);
}
static inline PyObject *PyObject_CallNoArgs(PyObject *fn) { return PyObject_CallFunctionObjArgs(fn, NULL); }
static inline PyCodeObject *PyFrame_GetCode(PyFrameObject *f) { /* new reference */
    Py_INCREF(f->f_code);
    return f->f_code;
}
static inline PyFrameObject *PyFrame_GetBack(PyFrameObject *f) { /* new reference */
    Py_XINCREF(f->f_back);
    return f->f_back;
}
static inline PyFrameObject *PyThreadState_GetFrame(PyThreadState *ts) { /* new reference */
    Py_XINCREF(ts->frame);
    return ts->frame;
}
#endif

#include "aioscope/report.h"

/* ---- configuration (module.c) ------------------------------------------------------------ */
typedef struct {
    double block_threshold_s; /* AIOSCOPE_BLOCK_THRESHOLD, default 0.1 */
    double stuck_after_s;     /* AIOSCOPE_STUCK_AFTER, default 30 (deadlock issue) */
    int enabled;              /* 0 until install() ran */
    int dev_off;              /* AIOSCOPE_DEV_OFF: parts switched off, to measure their cost */
} asc_config;
/* Parts a developer can switch off (AIOSCOPE_DEV_OFF=steps,factory,... ; DEVELOPERS.md) to see
 * what each costs in bench/. Never set by the CLI. */
enum {
    ASC_OFF_STEPS = 1,    /* steps.c: busy time and steps */
    ASC_OFF_FACTORY = 2,  /* tasks.c, task_factory.c: tasks' records (creation sites, swallowed-cancel) */
    ASC_OFF_DEADLOCK = 4, /* deadlock.c: the periodic check */
    ASC_OFF_STAMP = 8,    /* poll_stamp.c: the poll stamp */
    ASC_OFF_BEAT = 16,    /* blocking.c: the heartbeat (and with it blocking-call) */
    ASC_OFF_WATCHDOG = 32, /* watchdog.c: the watchdog thread (the beat stays) */
    ASC_OFF_INPLACE = 64, /* tasks.c: the C Task patched in place; off: the subclass instead */
};
extern asc_config asc_cfg;

/* ---- the findings sink (module.c) -------------------------------------------------------- */
/* Hand a finding to the sink: under `aioscope run` it is appended to the event stream at once
 * (so a crash loses nothing); with plain install() it is kept for the report at exit.
 * Takes ownership of the finding's contents (f is cleared). Never raises. */
void asc_emit(aioscope_finding *f);
/* Append ready event lines to the event stream (nothing without the CLI). Needs no GIL: the
 * watchdog thread announces a blocked period with it while the loop thread holds the GIL. */
void asc_events_write(const aioscope_buf *b);

/* ---- frames and sites (frames.c) --------------------------------------------------------- */
/* 1 when filename belongs to the program's own code: not the standard library, not
 * site-packages/dist-packages, not aioscope, not "<frozen ...>". Cached per filename object. */
int asc_is_user_file(PyObject *filename);

#if PY_VERSION_HEX >= 0x030B0000
/* The local variable at index (of co_varnames; a code without cell or free variables) of the
 * Python function running now, borrowed, when its code is `code`; NULL otherwise. Reads the
 * interpreter's frame as it is: no frame object is made. */
PyObject *asc_caller_fast_local(PyObject *code, Py_ssize_t index);
#endif

/* Fill f->stack (outermost first) and f->site (the innermost user frame; the innermost frame of
 * all when no frame is the user's) from the calling thread's current Python stack. */
int asc_fill_from_current_stack(aioscope_finding *f);
/* The same from a traceback object (the innermost user frame of the traceback is the site). */
int asc_fill_from_traceback(aioscope_finding *f, PyObject *tb);
/* The same from a coroutine chain (task.get_stack() order): where a suspended task waits. */
int asc_fill_from_coro(aioscope_finding *f, PyObject *coro);

/* A code location kept cheaply (a strong ref to the code object and an instruction offset in
 * bytes); turned into file/line/function only when a finding needs it. */
typedef struct {
    PyObject *code; /* owned, or NULL */
    int lasti;      /* byte offset of the instruction, as PyCode_Addr2Line takes */
} asc_codeloc;
/* The innermost user frame of the calling thread, skipping asyncio/aioscope frames; a few
 * pointer hops, no allocation in the common case. Leaves out->code NULL when none. */
void asc_capture_creation_site(asc_codeloc *out);
void asc_codeloc_clear(asc_codeloc *loc);
int asc_codeloc_to_location(const asc_codeloc *loc, aioscope_location *out);
/* The innermost user frame of a coroutine chain (where a suspended task waits; the outermost
 * frame when none is the user's); out->code NULL when the chain has no frame. Never raises. */
void asc_capture_coro_site(PyObject *coro, asc_codeloc *out);
/* 1 when code (a code object) belongs to aioscope itself. */
int asc_code_is_aioscope(PyObject *code);

/* ---- parts: init and hooks ----------------------------------------------------------------- */
int asc_frames_init(PyObject *module);
int asc_loops_init(PyObject *module);  /* hooks the running-loop setter */
int asc_tasks_init(PyObject *module);
int asc_coros_init(PyObject *module);
int asc_leaks_init(PyObject *module);

/* ---- deadlocks (deadlock.c) ---------------------------------------------------------------- */
/* install(): reads AIOSCOPE_DEADLOCK_AFTER and AIOSCOPE_ON_DEADLOCK; installs no hook. */
int asc_deadlock_init(PyObject *module);
/* Called by blocking.c from every heartbeat of a running loop, in the loop's thread: runs the
 * `deadlock` / `stuck-task` check when it is due (every ~0.2 s). Never raises; under
 * AIOSCOPE_ON_DEADLOCK=exit it ends the process (status 4) after reporting a deadlock. */
void asc_deadlock_on_heartbeat(PyObject *loop);
/* tasks.c: where a task of the agent's subclass was created, into out (left empty when it is
 * not known). Returns 0, or -1 with an exception set. */
int asc_tasks_created_at(PyObject *task, aioscope_location *out);

/* Called by loops.c when a loop starts running in the calling thread (first time for that
 * loop): task_factory.c installs its task factory (chaining any user factory). */
int asc_tasks_on_loop_start(PyObject *loop);
/* Called by loops.c for every exception-handler context before the original handler runs;
 * returns 1 when the context was turned into a finding (the original handler still runs). */
int asc_tasks_on_exception_context(PyObject *loop, PyObject *context);
/* ---- loops (loops.c, blocking.c, watchdog.c): used by module.c and the deadlock detector -- */
/* At import of _agent: readies the heartbeat type; installs no hook. */
int asc_loops_module_init(PyObject *module);
/* The blocking threshold in seconds (install()); sets the heartbeat period from it. */
void asc_loops_set_threshold(double seconds);
/* The replacement of asyncio.events._set_running_loop (METH_O function of the module). */
PyObject *asc_loops_set_running_loop(PyObject *self, PyObject *loop);
/* 1 when callback (a Handle's callback) is the agent's heartbeat: not the program's work. */
int asc_loops_is_heartbeat(PyObject *callback);
/* At exit: stops the watchdog thread and calls asc_tasks_report_pending for every loop that
 * ran and is still alive. */
void asc_loops_at_exit(void);
/* In a forked child, with the GIL (os.register_at_fork): forget loops of threads that do not
 * exist in the child. */
void asc_loops_after_fork_child(void);
/* os.register_at_fork(before=...) / (after_in_parent=...), 3.12+: the watchdog thread is stopped
 * (and joined) around a fork and started again in the parent, so that CPython's "this process is
 * multi-threaded" DeprecationWarning does not count it. before returns 1 when it stopped one. */
int asc_loops_before_fork(void);
void asc_loops_after_fork_parent(int stopped);

/* blocking.c: the file descriptor of loop's heartbeat (a timerfd it polls), or -1: the deadlock
 * check does not count it as something that can wake the loop. */
int asc_loops_beat_fd(PyObject *loop);

/* At exit and when asyncio.run()'s main coroutine returns: `pending-at-exit`. */
int asc_tasks_report_pending(PyObject *loop);

/* ---- the live view: `aioscope ps/pstree/dump/top` (steps.c, livesnap.c, control.c) --------- */
/* Per-task counters kept in the Task subclass (tasks.c embeds one per task, zeroed at creation);
 * written by steps.c with the GIL, read by livesnap.c with the GIL. */
typedef struct {
    int64_t created_ns; /* CLOCK_MONOTONIC when the factory made it (or at its first step); 0: not yet */
    int64_t busy_ns;    /* time spent running its steps */
    long steps;         /* steps run */
    uintptr_t spawned_by; /* id() of the task running on the loop when it was created; 0: none */
    uint32_t trace_track, trace_name, trace_label, trace_flags; /* trace.c's, 0 until traced */
} asc_task_stats;
/* tasks.c: the counters of a task of the agent's subclass; NULL for any other object. */
asc_task_stats *asc_tasks_stats(PyObject *task);
/* tasks.c: which tasks were suspended on a future (their _fut_waiter set) when their last step
 * ended: bit i for the task of record i, kept by steps.c at the end of every step it sees and by
 * tasks.c at creation (3.12's eager first step) and destruction. The deadlock check reads it to
 * find a loop's waiting tasks without touching the others (asc_tasks_each_waiting). Where the
 * field's offset is unknown (asc_task_waiter_off < 0) nothing is kept. */
extern uint64_t *asc_pool_waiting;
extern Py_ssize_t asc_task_waiter_off, asc_task_index_off;
static inline void asc_tasks_note_wait(PyObject *task) {
    if (asc_task_waiter_off < 0) return;
    PyObject *w = *(PyObject **)((char *)task + asc_task_waiter_off);
    uint32_t i = *(uint32_t *)((char *)task + asc_task_index_off); /* the task's record */
    uint64_t bit = (uint64_t)1 << (i & 63), *word = &asc_pool_waiting[i >> 6];
    if (w != NULL && w != Py_None) *word |= bit;
    else *word &= ~bit;
}
/* tasks.c: fn(task, arg) for every task of ours whose bit is set, in record order; stops at the
 * first fn < 0 (put in *rc). Returns 0 when the bits cannot list every task of loop that waits on
 * a future: its steps are not seen (uvloop, AIOSCOPE_DEV_OFF=steps), or some of the `registered`
 * tasks asyncio's registries hold have no record (created before install(), pure-Python tasks):
 * the caller then walks the registries. 1 when it walked. */
int asc_tasks_each_waiting(PyObject *loop, Py_ssize_t registered,
                           int (*fn)(PyObject *task, void *arg), void *arg, int *rc);
/* livesnap.c: fn(task, arg) for every task of one of asyncio's task registries (a WeakSet of
 * tasks, or 3.12's set of eager tasks), iterated in C; stops at the first fn < 0 (returned). Runs
 * no Python code of its own. */
int asc_registry_each(PyObject *registry, int (*fn)(PyObject *task, void *arg), void *arg);
/* method_hook.c: a C method descriptor standing in a class's dict for the method orig, which
 * `call` (a vectorcall: args[0] the instance) is expected to call through asc_method_hook_orig.
 * New reference, or NULL with an error set. */
PyObject *asc_method_hook_new(PyObject *orig, vectorcallfunc call);
PyObject *asc_method_hook_orig(PyObject *self); /* borrowed */
/* The dict of a type, borrowed: from 3.12 a static built-in type's dict lives in the
 * interpreter's state, which PyType_GetDict returns. (steps.c and trace.c write hooks there.) */
static inline PyObject *asc_type_dict(PyTypeObject *tp) {
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *d = PyType_GetDict(tp);
    Py_XDECREF(d); /* the type keeps it alive */
    return d;
#else
    return tp->tp_dict;
#endif
}
/* The object a weak reference points to (a new reference), or NULL without an error when it is
 * gone. PyWeakref_GetObject is deprecated from 3.13, where PyWeakref_GetRef replaces it. */
static inline PyObject *asc_weakref_target(PyObject *wref) {
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *obj = NULL;
    if (PyWeakref_GetRef(wref, &obj) < 0) PyErr_Clear();
    return obj;
#else
    PyObject *obj = PyWeakref_GetObject(wref); /* borrowed */
    if (obj == NULL || obj == Py_None) {
        PyErr_Clear();
        return NULL;
    }
    Py_INCREF(obj);
    return obj;
#endif
}
/* steps.c: puts the step-measuring Context.run in place (install()); notes a task of ours just
 * created on loop (task_factory.c's factory): its creation time and spawner. */
int asc_steps_init(PyObject *module);
/* 1 when task steps on asyncio's loops are observed (Context.run is ours). */
int asc_steps_observed(void);
/* tasks.c: how many cancelled tasks wait for asc_tasks_after_step to see them end, which steps.c
 * calls after each step of a task while there are some. */
extern int asc_tasks_nwatched;
void asc_tasks_after_step(PyObject *task);
void asc_steps_task_created(PyObject *task, PyObject *loop);
/* control.c: starts the control socket's thread (install()); stops it (at exit); after fork in
 * the child, starts a fresh one for the child's pid. Never raise: the live view is optional. */
void asc_control_start(void);
void asc_control_stop(void);
void asc_control_after_fork_child(void);
/* The same as asc_loops_before_fork / _after_fork_parent for the control socket's threads. */
int asc_control_before_fork(void);
void asc_control_after_fork_parent(int stopped);
/* blocking.c (small addition for the live view): the heartbeat lag of every running loop, by the
 * thread that runs it; returns how many were written (at most max). Any thread, no GIL. */
typedef struct {
    uint64_t thread_id; /* threading.get_ident() of the loop's thread */
    double lag_s;       /* how late its heartbeat is now (0: on time) */
} asc_loop_lag;
int asc_loops_lags(asc_loop_lag *out, int max);
/* livepy.c: the module functions snapshot() / print_tasks() / _snapshot_json(). */
PyObject *asc_live_snapshot_py(PyObject *self, PyObject *unused);
PyObject *asc_live_print_tasks_py(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *asc_live_snapshot_json_py(PyObject *self, PyObject *unused);
/* livepy.c, at install(): %(taskName)s in logging formats below 3.12 and the opt-in dump signal
 * (AIOSCOPE_DUMP_SIGNAL=USR1). */
int asc_livepy_init(PyObject *module);

/* ---- the timeline of `aioscope run --trace FILE` (trace.c) -------------------------------- */
/* 1 while recording (AIOSCOPE_TRACE set at install()); every hook below returns at once when 0. */
extern int asc_trace_active;
int asc_trace_init(PyObject *module);
/* loops.c, per loop start: the loop's track and its iterations. */
int asc_trace_on_loop_start(PyObject *loop);
/* steps.c: a task scheduled its first step (spawner: the task running then, or NULL), and a
 * task's step ran from t0 to t1 (ns). module.c: every finding emitted; at exit: write the file. */
void asc_trace_task_created(PyObject *task, asc_task_stats *st, PyObject *spawner);
void asc_trace_step(PyObject *task, asc_task_stats *st, int64_t t0, int64_t t1);
void asc_trace_finding(const aioscope_finding *f);
void asc_trace_at_exit(void);

#endif
