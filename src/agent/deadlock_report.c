/* deadlock_report.c: what can wake an event loop, and what a deadlock finding says.
 *
 * The "everything asleep" half of the deadlock detector reads a selector loop's internals: its
 * ready queue, its timers (the heartbeat and timeouts that would only cancel a waiter do not
 * count), its selector's registered descriptors and signal handlers, and the program's other
 * threads. The findings half turns a set of deadlocked tasks into a `deadlock` finding: for each
 * task where it is suspended, where it was created and what it waits on, in words ("asyncio.Lock
 * held by Task-3 (acquired at app.py:12)"), printed at once on stderr and sent to the sink;
 * likewise the `stuck-task` finding. A deadlock is named (for "reported once") by where its tasks
 * are suspended. See deadlock.c for the method. */
#include "agent/deadlock.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Participants named in the text printed at once on stderr; the finding keeps them all. */
#define ASC_DL_PRINT_MAX 20
/* Exit status of the program under AIOSCOPE_ON_DEADLOCK=exit (the CLI's is 4 as well). */
#define ASC_DL_EXIT_STATUS 4

/* ---- everything asleep ------------------------------------------------------------------------ */

/* 1 when a handle (loop._ready or loop._scheduled) can wake nobody: cancelled, the heartbeat,
 * or (timers only) a timeout that would only cancel its waiter. */
static int asc_dl_handle_is_inert(PyObject *h, int is_timer) {
    PyObject *cancelled = asc_dl_attr(h, "_cancelled");
    int c = cancelled && PyObject_IsTrue(cancelled) == 1;
    Py_XDECREF(cancelled);
    if (c) return 1;
    PyObject *cb = asc_dl_attr(h, "_callback");
    int inert = 0;
    if (cb && asc_loops_is_heartbeat(cb)) inert = 1;
    else if (cb && is_timer && asc_dl.release_waiter && cb == asc_dl.release_waiter) inert = 1;
    else if (cb && is_timer && asc_dl.on_timeout && PyMethod_Check(cb) &&
             PyMethod_GET_FUNCTION(cb) == asc_dl.on_timeout)
        inert = 1;
    Py_XDECREF(cb);
    PyErr_Clear();
    return inert;
}

/* 1 when every handle of a sequence attribute of the loop is inert; 0 otherwise or unreadable. */
static int asc_dl_all_inert(PyObject *loop, const char *attr, int is_timer) {
    PyObject *seq = asc_dl_attr(loop, attr);
    PyObject *it = seq ? PyObject_GetIter(seq) : NULL;
    Py_XDECREF(seq);
    if (!it) {
        PyErr_Clear();
        return 0;
    }
    int ok = 1;
    PyObject *h;
    while (ok && (h = PyIter_Next(it))) {
        ok = asc_dl_handle_is_inert(h, is_timer);
        Py_DECREF(h);
    }
    if (PyErr_Occurred()) ok = 0;
    PyErr_Clear();
    Py_DECREF(it);
    return ok;
}

/* 1 when no file descriptor but the loop's self-pipe (and the agent's heartbeat) is registered,
 * and no signal handler. */
static int asc_dl_no_fds(PyObject *loop) {
    PyObject *handlers = asc_dl_attr(loop, "_signal_handlers");
    Py_ssize_t nh = handlers && PyDict_Check(handlers) ? PyDict_Size(handlers) : 0;
    Py_XDECREF(handlers);
    if (nh > 0) return 0;
    PyObject *sel = asc_dl_attr(loop, "_selector");
    PyObject *map = sel ? PyObject_CallMethod(sel, "get_map", NULL) : NULL;
    Py_XDECREF(sel);
    PyObject *ssock = asc_dl_attr(loop, "_ssock");
    PyObject *sfd = ssock ? PyObject_CallMethod(ssock, "fileno", NULL) : NULL;
    Py_XDECREF(ssock);
    long self_fd = sfd ? PyLong_AsLong(sfd) : -1;
    Py_XDECREF(sfd);
    PyObject *keys = map ? PyMapping_Keys(map) : NULL; /* the registered fds */
    Py_XDECREF(map);
    long beat_fd = asc_loops_beat_fd(loop); /* the agent's heartbeat wakes nothing */
    int ok = keys != NULL;
    for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(keys); i++) {
        long fd = PyLong_AsLong(PyList_GET_ITEM(keys, i));
        if (fd != self_fd && fd != beat_fd) ok = 0;
    }
    Py_XDECREF(keys);
    PyErr_Clear();
    return ok;
}

/* 1 when no Python-level signal handler (signal.signal) could wake the loop: every signal has
 * the default disposition, is ignored, or has the handler that only interrupts or cancels the
 * main task (signal.default_int_handler, asyncio.Runner's SIGINT handler). A program waiting for
 * SIGTERM through signal.signal is waiting for something real. */
static int asc_dl_no_signal_handlers(void) {
    PyObject *signal = PyImport_ImportModule("signal");
    PyObject *sigs = signal ? PyObject_CallMethod(signal, "valid_signals", NULL) : NULL;
    PyObject *dflt_int = signal ? asc_dl_attr(signal, "default_int_handler") : NULL;
    PyObject *it = sigs ? PyObject_GetIter(sigs) : NULL;
    int ok = it != NULL;
    PyObject *sig;
    while (ok && (sig = PyIter_Next(it))) {
        PyObject *h = PyObject_CallMethod(signal, "getsignal", "O", sig);
        if (h && PyCallable_Check(h) && h != dflt_int) {
            /* asyncio.Runner._on_sigint (3.11+; installed through functools.partial): cancels
             * the main task, a timeout of sorts. */
            PyObject *inner = asc_dl_attr(h, "func"); /* a partial's function */
            PyObject *m = inner ? inner : h;
            PyObject *fn = PyMethod_Check(m) ? PyMethod_GET_FUNCTION(m) : NULL;
            PyObject *name = fn ? asc_dl_attr(fn, "__qualname__") : NULL;
            ok = name && PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, "Runner._on_sigint") == 0;
            Py_XDECREF(name);
            Py_XDECREF(inner);
        }
        Py_XDECREF(h);
        Py_DECREF(sig);
    }
    if (PyErr_Occurred()) ok = 0;
    PyErr_Clear();
    Py_XDECREF(it);
    Py_XDECREF(dflt_int);
    Py_XDECREF(sigs);
    Py_XDECREF(signal);
    return ok;
}

/* 1 when no other Python thread can call into the loop: every other live thread is an idle
 * worker of a concurrent.futures.ThreadPoolExecutor (its innermost frame is _worker, blocked in
 * work_queue.get(), and the queue is empty). Anything else might call call_soon_threadsafe. */
static int asc_dl_no_threads(void) {
    PyObject *mods = PyImport_GetModuleDict(); /* borrowed */
    PyObject *th = PyDict_GetItemString(mods, "threading"); /* borrowed */
    if (!th) return 1; /* threading never imported: no thread was started through it */
    PyObject *threads = PyObject_CallMethod(th, "enumerate", NULL);
    PyObject *me = PyObject_CallMethod(th, "current_thread", NULL);
    PyObject *cf = PyDict_GetItemString(mods, "concurrent.futures.thread"); /* borrowed */
    PyObject *worker = cf ? asc_dl_attr(cf, "_worker") : NULL;
    PyObject *frames = NULL;
    int ok = threads && me && PyList_Check(threads);
    for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(threads); i++) {
        PyObject *t = PyList_GET_ITEM(threads, i);
        if (t == me) continue;
        PyObject *alive = PyObject_CallMethod(t, "is_alive", NULL);
        int is_alive = !alive || PyObject_IsTrue(alive) != 0;
        Py_XDECREF(alive);
        if (!is_alive) continue;
        ok = 0;
        PyObject *target = worker ? asc_dl_attr(t, "_target") : NULL;
        if (target && target == worker) {
            if (!frames) {
                PyObject *cur = PySys_GetObject("_current_frames"); /* borrowed */
                frames = cur ? PyObject_CallObject(cur, NULL) : NULL;
            }
            PyObject *ident = asc_dl_attr(t, "ident");
            PyObject *f = frames && ident ? PyDict_GetItemWithError(frames, ident) : NULL;
            PyObject *code = f ? (PyObject *)PyFrame_GetCode((PyFrameObject *)f) : NULL;
            PyObject *wcode = asc_dl_attr(worker, "__code__");
            PyObject *args = asc_dl_attr(t, "_args");
            PyObject *q = args && PyTuple_Check(args) && PyTuple_GET_SIZE(args) > 1 ? PyTuple_GET_ITEM(args, 1) : NULL;
            PyObject *empty = q ? PyObject_CallMethod(q, "empty", NULL) : NULL;
            ok = code && code == wcode && empty && PyObject_IsTrue(empty) == 1;
            Py_XDECREF(empty);
            Py_XDECREF(args);
            Py_XDECREF(wcode);
            Py_XDECREF(code);
            Py_XDECREF(ident);
        }
        Py_XDECREF(target);
    }
    Py_XDECREF(frames);
    Py_XDECREF(worker);
    Py_XDECREF(me);
    Py_XDECREF(threads);
    PyErr_Clear();
    return ok;
}

/* 1 when every task of the snapshot waits and nothing but a timeout can ever wake one. */
int asc_dl_loop_asleep(asc_dl_snap *s) {
    if (s->n == 0) return 0;
    for (Py_ssize_t i = 0; i < s->n; i++)
        if (!s->t[i].stable || s->t[i].wait == W_RUNNABLE) return 0; /* moving, or not read yet */
    /* Only a selector loop shows its ready queue, timers and selector (not uvloop). */
    return asc_dl_all_inert(s->loop, "_ready", 0) && asc_dl_all_inert(s->loop, "_scheduled", 1) &&
           asc_dl_no_fds(s->loop) && asc_dl_no_signal_handlers() && asc_dl_no_threads();
}

/* ---- findings --------------------------------------------------------------------------------- */

long long asc_dl_task_id(PyObject *task, char *name, size_t nname) {
    PyObject *n = PyObject_CallMethod(task, "get_name", NULL);
    const char *s = n && PyUnicode_Check(n) ? PyUnicode_AsUTF8(n) : NULL;
    PyErr_Clear();
    snprintf(name, nname, "%s", s ? s : "Task");
    Py_XDECREF(n);
    /* The same ids as blocking.c: the number of asyncio's default name, else the address. */
    if (strncmp(name, "Task-", 5) == 0 && name[5] >= '0' && name[5] <= '9') return atoll(name + 5);
    return (long long)(uintptr_t)task;
}

/* "file:line" of a location, with the file's last component only (for human text). */
static void asc_dl_short_loc(const aioscope_location *l, char *buf, size_t n) {
    const char *f = l->file ? strrchr(l->file, '/') : NULL;
    snprintf(buf, n, "%s:%d", f ? f + 1 : l->file ? l->file : "?", l->line);
}

/* The instruction offset of the `async with` that took prim in a holder's frame: the
 * BEFORE_ASYNC_WITH before the frame's current instruction whose context expression (a local,
 * a global, or one attribute of either) is ctx; else the last BEFORE_ASYNC_WITH before it;
 * else the current instruction. */
static int asc_dl_acquire_offset(PyObject *coro, PyObject *ctx, PyObject **code_out) {
    *code_out = NULL;
    PyObject *f = asc_dl_frame_of(coro);
    if (!f) return -1;
    PyObject *code = (PyObject *)PyFrame_GetCode((PyFrameObject *)f);
    /* f_lasti is in bytes on every version, as dis offsets are. */
    PyObject *lasti_obj = asc_dl_attr(f, "f_lasti");
    int lasti = lasti_obj ? (int)PyLong_AsLong(lasti_obj) : -1;
    Py_XDECREF(lasti_obj);
    PyObject *locals = asc_dl_attr(f, "f_locals");
    PyObject *globals = asc_dl_attr(f, "f_globals");
    Py_DECREF(f);
    /* dis is imported on the first report, not at start: an import takes milliseconds, which a
     * low --block-threshold would see. */
    if (!asc_dl.dis_get_instructions) {
        PyObject *dis = PyImport_ImportModule("dis");
        asc_dl.dis_get_instructions = dis ? asc_dl_attr(dis, "get_instructions") : NULL;
        Py_XDECREF(dis);
        PyErr_Clear();
    }
    PyObject *instrs = asc_dl.dis_get_instructions
                           ? PyObject_CallOneArg(asc_dl.dis_get_instructions, code) : NULL;
    PyObject *it = instrs ? PyObject_GetIter(instrs) : NULL;
    int best = -1, last = -1;
    PyObject *prev[2] = {NULL, NULL}; /* the two instructions before the current one */
    PyObject *ins;
    while (it && (ins = PyIter_Next(it))) {
        PyObject *off = asc_dl_attr(ins, "offset"), *op = asc_dl_attr(ins, "opname");
        int o = off ? (int)PyLong_AsLong(off) : -1;
        Py_XDECREF(off);
        if (o >= lasti || !op) {
            Py_XDECREF(op);
            Py_DECREF(ins);
            break;
        }
        if (PyUnicode_CompareWithASCIIString(op, "BEFORE_ASYNC_WITH") == 0) {
            last = o;
            /* Evaluate the context expression: LOAD_x name, or LOAD_x name; LOAD_ATTR name. */
            PyObject *val = NULL;
            PyObject *last_op = prev[1] ? asc_dl_attr(prev[1], "opname") : NULL;
            int with_attr = last_op && PyUnicode_Check(last_op) &&
                            PyUnicode_CompareWithASCIIString(last_op, "LOAD_ATTR") == 0;
            Py_XDECREF(last_op);
            for (int k = with_attr ? 0 : 1; k < 2 && prev[k]; k++) {
                PyObject *pop = asc_dl_attr(prev[k], "opname"), *arg = asc_dl_attr(prev[k], "argval");
                const char *ops = pop && PyUnicode_Check(pop) ? PyUnicode_AsUTF8(pop) : "";
                PyObject *next = NULL;
                if (arg && PyUnicode_Check(arg)) {
                    if (!val && strncmp(ops, "LOAD_FAST", 9) == 0 && locals) next = PyObject_GetItem(locals, arg);
                    else if (!val && (strcmp(ops, "LOAD_DEREF") == 0 || strcmp(ops, "LOAD_NAME") == 0) && locals)
                        next = PyObject_GetItem(locals, arg);
                    else if (!val && strcmp(ops, "LOAD_GLOBAL") == 0 && globals) next = PyObject_GetItem(globals, arg);
                    else if (val && strcmp(ops, "LOAD_ATTR") == 0) {
                        /* Only the instance dict: a property would run the program's code. */
                        PyObject *d = asc_dl_attr(val, "__dict__");
                        next = d && PyDict_Check(d) ? PyDict_GetItemWithError(d, arg) : NULL;
                        Py_XINCREF(next);
                        Py_XDECREF(d);
                    }
                }
                PyErr_Clear();
                Py_XDECREF(pop);
                Py_XDECREF(arg);
                Py_XSETREF(val, next);
                if (!val) break;
            }
            if (val == ctx) best = o;
            Py_XDECREF(val);
        }
        Py_DECREF(op);
        Py_XSETREF(prev[0], prev[1]);
        prev[1] = ins;
    }
    Py_XDECREF(prev[0]);
    Py_XDECREF(prev[1]);
    Py_XDECREF(it);
    Py_XDECREF(instrs);
    Py_XDECREF(locals);
    Py_XDECREF(globals);
    PyErr_Clear();
    *code_out = code; /* owned */
    return best >= 0 ? best : last >= 0 ? last : lasti;
}

/* Text for who holds prim: "Task-3 (acquired at app.py:12), Task-4 (...)"; malloc'd. */
static char *asc_dl_holders_text(asc_dl_snap *s, PyObject *prim) {
    size_t cap = 256, len = 0;
    char *out = malloc(cap);
    if (!out) return NULL;
    out[0] = '\0';
    for (int h = 0; h < s->nholds; h++) {
        asc_dl_hold *hd = &s->holds[h];
        if (hd->t < 0 || hd->prim != prim) continue;
        char name[128], where[300] = "";
        (void)asc_dl_task_id(s->t[hd->t].task, name, sizeof name);
        asc_codeloc cl = {NULL, 0};
        cl.lasti = asc_dl_acquire_offset(s->t[hd->t].chain[hd->depth], hd->ctx, &cl.code);
        aioscope_location loc = {0};
        if (cl.code && cl.lasti >= 0 && asc_codeloc_to_location(&cl, &loc) == 0 && loc.file) {
            char sl[256];
            asc_dl_short_loc(&loc, sl, sizeof sl);
            snprintf(where, sizeof where, " (acquired at %s)", sl);
        }
        PyErr_Clear();
        aioscope_location_clear(&loc);
        asc_codeloc_clear(&cl);
        size_t need = len + strlen(name) + strlen(where) + 3;
        if (need > cap) {
            char *p = realloc(out, need * 2);
            if (!p) break;
            out = p;
            cap = need * 2;
        }
        len += (size_t)snprintf(out + len, cap - len, "%s%s%s", len ? ", " : "", name, where);
    }
    return out;
}

/* Names of the tasks among the futures in fs: "Task-3, Task-4"; malloc'd. */
static char *asc_dl_names_of(PyObject *fs) {
    char buf[512] = "";
    size_t len = 0;
    PyObject *it = fs ? PyObject_GetIter(fs) : NULL;
    PyObject *f;
    while (it && (f = PyIter_Next(it))) {
        char name[128] = "a future";
        if (PyObject_TypeCheck(f, (PyTypeObject *)asc_dl.task_type)) (void)asc_dl_task_id(f, name, sizeof name);
        if (!asc_dl_done(f) && len < sizeof buf - 1)
            len += (size_t)snprintf(buf + len, sizeof buf - len, "%s%s", len ? ", " : "", name);
        Py_DECREF(f);
        if (len >= sizeof buf - 1) break;
    }
    Py_XDECREF(it);
    PyErr_Clear();
    return strdup(buf);
}

/* 1 when nothing but the waiting task (its coroutines and frames) refers to the future. */
static int asc_dl_future_orphan(asc_dl_task *t) {
    asc_dl_walk_chain(t);
    PyObject *gc = PyImport_ImportModule("gc");
    PyObject *refs = gc ? PyObject_CallMethod(gc, "get_referrers", "O", t->waiter) : NULL;
    Py_XDECREF(gc);
    int orphan = refs && PyList_Check(refs);
    for (Py_ssize_t i = 0; orphan && i < PyList_GET_SIZE(refs); i++) {
        PyObject *r = PyList_GET_ITEM(refs, i);
        if (r == t->task) continue;
        int ours = 0;
        for (int d = 0; d < t->nchain && !ours; d++) {
            PyObject *fr = asc_dl_frame_of(t->chain[d]);
            ours = r == t->chain[d] || (fr && r == fr);
            Py_XDECREF(fr);
        }
        /* The awaiting iterator (FutureIter) of `await fut` holds it too. */
        if (!ours && strstr(Py_TYPE(r)->tp_name, "FutureIter")) ours = 1;
        if (!ours) orphan = 0;
    }
    Py_XDECREF(refs);
    PyErr_Clear();
    return orphan;
}

static const char *asc_dl_tname(PyObject *o) { return o ? Py_TYPE(o)->tp_name : "?"; }

/* What task i waits on, as human text; malloc'd. */
char *asc_dl_describe(asc_dl_snap *s, int i) {
    asc_dl_task *t = &s->t[i];
    char buf[1024];
    char *list = NULL;
    switch (t->wait) {
    case W_LOCK:
    case W_SEM:
        list = asc_dl_holders_text(s, t->prim);
        snprintf(buf, sizeof buf, "asyncio.%s %s%s", asc_dl_tname(t->prim),
                 list && *list ? "held by " : "whose holder is unknown (acquired without `async with`)",
                 list ? list : "");
        break;
    case W_COND: snprintf(buf, sizeof buf, "asyncio.Condition.wait() (no notify can come)"); break;
    case W_EVENT: snprintf(buf, sizeof buf, "asyncio.Event.wait() (the Event is never set)"); break;
    case W_QGET: snprintf(buf, sizeof buf, "%s.get() on an empty queue (no producer left)", asc_dl_tname(t->prim)); break;
    case W_QPUT: snprintf(buf, sizeof buf, "%s.put() on a full queue (no consumer left)", asc_dl_tname(t->prim)); break;
    case W_QJOIN: snprintf(buf, sizeof buf, "%s.join() (unfinished items)", asc_dl_tname(t->prim)); break;
    case W_SLEEP: snprintf(buf, sizeof buf, "asyncio.sleep()"); break;
    case W_SERVE: snprintf(buf, sizeof buf, "Server.serve_forever()"); break;
    case W_TASK: {
        char name[128];
        (void)asc_dl_task_id(t->waiter, name, sizeof name);
        snprintf(buf, sizeof buf, "%s (awaited directly)", name);
        break;
    }
    case W_GATHER: {
        PyObject *ch = asc_dl_attr(t->waiter, "_children");
        list = asc_dl_names_of(ch);
        Py_XDECREF(ch);
        snprintf(buf, sizeof buf, "gather() of %s", list ? list : "?");
        break;
    }
    case W_TASKGROUP: {
        PyObject *ch = asc_dl_attr(t->prim, "_tasks");
        list = asc_dl_names_of(ch);
        Py_XDECREF(ch);
        snprintf(buf, sizeof buf, "TaskGroup children %s", list ? list : "?");
        break;
    }
    case W_WAIT:
        list = asc_dl_names_of(t->prim);
        snprintf(buf, sizeof buf, "asyncio.wait() on %s", list ? list : "?");
        break;
    case W_WAIT_FOR: {
        char name[128] = "a future";
        if (t->prim && PyObject_TypeCheck(t->prim, (PyTypeObject *)asc_dl.task_type)) {
            (void)asc_dl_task_id(t->prim, name, sizeof name);
        } else if (t->prim && asc_dl.gathering_type &&
                   PyObject_TypeCheck(t->prim, (PyTypeObject *)asc_dl.gathering_type)) {
            PyObject *ch = asc_dl_attr(t->prim, "_children");
            list = asc_dl_names_of(ch);
            Py_XDECREF(ch);
            snprintf(name, sizeof name, "gather() of %s", list ? list : "?");
        }
        snprintf(buf, sizeof buf, "wait_for() on %s", name);
        break;
    }
    default:
        snprintf(buf, sizeof buf, "%s", asc_dl_future_orphan(t) ? "a Future that nothing else references"
                                                                   : "a Future that nothing completes");
        break;
    }
    free(list);
    return strdup(buf);
}

/* 1 when path is a file of the program's own code (not the standard library, ...). */
static int asc_dl_is_user_path(const char *path) {
    if (!path) return 0;
    PyObject *u = PyUnicode_DecodeFSDefault(path);
    int user = u ? asc_is_user_file(u) : 0;
    Py_XDECREF(u);
    PyErr_Clear();
    return user == 1;
}

/* Flush the program's own streams, so that our lines on stderr come after what it printed. */
static void asc_dl_flush_std(void) {
    const char *names[] = {"stdout", "stderr"};
    for (int i = 0; i < 2; i++) {
        PyObject *s = PySys_GetObject(names[i]); /* borrowed */
        if (s && s != Py_None) {
            PyObject *r = PyObject_CallMethod(s, "flush", NULL);
            Py_XDECREF(r);
        }
        PyErr_Clear();
    }
}

/* Build, print and emit one deadlock finding over the tasks in members (n of them). */
void asc_dl_report(asc_dl_snap *s, const int *members, int n, const char *message) {
    aioscope_finding f;
    aioscope_finding_init(&f);
    f.kind = strdup("deadlock");
    f.severity = AIOSCOPE_SEV_ERROR;
    f.message = strdup(message);
    f.count = 1;
    f.tasks = calloc((size_t)n, sizeof *f.tasks);
    if (!f.kind || !f.message || !f.tasks) {
        aioscope_finding_clear(&f);
        return;
    }
    f.ntasks = (size_t)n;
    for (int k = 0; k < n; k++) {
        asc_dl_task *t = &s->t[members[k]];
        aioscope_participant *p = &f.tasks[k];
        char name[128];
        p->id = asc_dl_task_id(t->task, name, sizeof name);
        p->name = strdup(name);
        p->waiting_on = asc_dl_describe(s, members[k]);
        aioscope_finding where;
        aioscope_finding_init(&where);
        asc_dl_walk_chain(t);
        if (t->nchain > 0 && asc_fill_from_coro(&where, t->chain[0]) < 0) PyErr_Clear();
        if (asc_tasks_created_at(t->task, &p->created_at) < 0) PyErr_Clear();
        /* A task with none of the program's frames (wait_for(event.wait()) below 3.12 runs
         * event.wait() as a task of its own) is shown where the program created it. */
        if (p->created_at.file && !asc_dl_is_user_path(where.site.file))
            (void)aioscope_location_set(&where.site, p->created_at.file, p->created_at.line,
                                        p->created_at.function);
        (void)aioscope_location_set(&p->site, where.site.file, where.site.line, where.site.function);
        if (k == 0) {
            /* The finding's own site, stack and task are the first participant's. */
            f.site = where.site;
            memset(&where.site, 0, sizeof where.site);
            f.stack = where.stack;
            f.nstack = where.nstack;
            where.stack = NULL;
            where.nstack = 0;
            f.has_task = 1;
            f.task_id = p->id;
            f.task_name = strdup(name);
            (void)aioscope_location_set(&f.created_at, p->created_at.file, p->created_at.line,
                                        p->created_at.function);
        }
        aioscope_finding_clear(&where);
    }
    /* At once on stderr: the program may never end, and then there is no report at exit. */
    asc_dl_flush_std();
    fprintf(stderr, "aioscope: deadlock: %s\n", message);
    for (size_t k = 0; k < f.ntasks && k < ASC_DL_PRINT_MAX; k++) {
        aioscope_participant *p = &f.tasks[k];
        char sl[256];
        asc_dl_short_loc(&p->site, sl, sizeof sl);
        fprintf(stderr, "  %s at %s in %s: waits on %s\n", p->name ? p->name : "?", sl,
                p->site.function ? p->site.function : "?", p->waiting_on ? p->waiting_on : "?");
    }
    if (f.ntasks > ASC_DL_PRINT_MAX) fprintf(stderr, "  ... and %zu more\n", f.ntasks - ASC_DL_PRINT_MAX);
    fflush(stderr);
    asc_emit(&f);
    if (asc_dl.exit_on_deadlock) {
        fprintf(stderr, "aioscope: ending the program on deadlock (--on-deadlock exit)\n");
        fflush(stderr);
        _exit(ASC_DL_EXIT_STATUS);
    }
}

/* Sort members by task id (creation order for asyncio's default names), for a stable report. */
static void asc_dl_sort_by_id(asc_dl_snap *s, int *members, int n) {
    char name[128];
    for (int a = 1; a < n; a++) /* insertion sort: a cycle has a few tasks */
        for (int b = a; b > 0 && asc_dl_task_id(s->t[members[b]].task, name, sizeof name) <
                                     asc_dl_task_id(s->t[members[b - 1]].task, name, sizeof name); b--) {
            int tmp = members[b];
            members[b] = members[b - 1];
            members[b - 1] = tmp;
        }
}

/* Order a cycle's members along its edges, starting from the first: a waits on b waits on ... */
void asc_dl_order_cycle(asc_dl_snap *s, int *members, int n) {
    asc_dl_sort_by_id(s, members, n);
    for (int k = 0; k + 1 < n; k++) {
        asc_dl_task *t = &s->t[members[k]];
        /* The next member is one that members[k] waits on: recompute from the description's
         * source, the holds and the waiter. */
        for (int j = k + 1; j < n; j++) {
            asc_dl_task *u = &s->t[members[j]];
            int waits = t->waiter == u->task || t->prim == u->task;
            for (int h = 0; !waits && h < s->nholds; h++)
                waits = s->holds[h].t == members[j] && t->prim && s->holds[h].prim == t->prim;
            if (waits) {
                int tmp = members[k + 1];
                members[k + 1] = members[j];
                members[j] = tmp;
                break;
            }
        }
    }
}

/* ---- naming a deadlock ------------------------------------------------------------------------ */

/* qsort order of addresses. */
static int asc_dl_cmp_ptr(const void *a, const void *b) {
    uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
    return x < y ? -1 : x > y;
}

/* Where a task is suspended, as one number: the code object and instruction of its innermost
 * frame of the program's own code (else of its innermost frame). */
static uintptr_t asc_dl_site_id(asc_dl_task *t) {
    asc_dl_walk_chain(t);
    uintptr_t fallback = (uintptr_t)t->task;
    for (int d = t->nchain - 1; d >= 0; d--) {
        PyObject *f = asc_dl_frame_of(t->chain[d]);
        if (!f) continue;
        PyCodeObject *code = PyFrame_GetCode((PyFrameObject *)f);
        PyObject *lasti = asc_dl_attr(f, "f_lasti");
        uintptr_t id = (uintptr_t)code * 31u + (uintptr_t)(lasti ? PyLong_AsLong(lasti) : 0);
        int user = asc_is_user_file(code->co_filename);
        Py_XDECREF(lasti);
        Py_DECREF(code);
        Py_DECREF(f);
        PyErr_Clear();
        if (d == t->nchain - 1) fallback = id;
        if (user == 1) return id;
    }
    return fallback;
}

/* The key naming a deadlock: its kind and where its tasks are suspended, sorted. The same
 * deadlock formed again (by the same tasks, or by new ones at the same places, as when a timeout
 * breaks it and the program retries) is the same finding, reported once. New reference. */
PyObject *asc_dl_key(asc_dl_snap *s, const char *kind, const int *members, int n) {
    uintptr_t *ptrs = malloc(((size_t)n + 1) * sizeof *ptrs);
    char *buf = malloc((size_t)n * 20 + 32);
    PyObject *key = NULL;
    if (ptrs && buf) {
        for (int k = 0; k < n; k++) ptrs[k] = asc_dl_site_id(&s->t[members[k]]);
        qsort(ptrs, (size_t)n, sizeof *ptrs, asc_dl_cmp_ptr);
        size_t len = (size_t)sprintf(buf, "%s", kind);
        for (int k = 0; k < n; k++) len += (size_t)sprintf(buf + len, ":%lx", (unsigned long)ptrs[k]);
        key = PyUnicode_FromString(buf);
    }
    free(ptrs);
    free(buf);
    return key;
}

/* Emit one stuck-task finding for task i, waiting since t->since_ns. */
void asc_dl_report_stuck(asc_dl_snap *s, int i, int64_t now) {
    asc_dl_task *t = &s->t[i];
    aioscope_finding f;
    aioscope_finding_init(&f);
    char name[128], msg[1200];
    char *what = asc_dl_describe(s, i);
    f.kind = strdup("stuck-task");
    f.severity = AIOSCOPE_SEV_INFO;
    f.has_task = 1;
    f.task_id = asc_dl_task_id(t->task, name, sizeof name);
    f.task_name = strdup(name);
    f.count = 1;
    f.duration_s = f.max_duration_s = (double)(now - t->since_ns) / 1e9;
    snprintf(msg, sizeof msg, "%s made no progress for %.1f s: it waits on %s", name,
             f.duration_s, what ? what : "?");
    f.message = strdup(msg);
    free(what);
    if (t->nchain > 0 && asc_fill_from_coro(&f, t->chain[0]) < 0) PyErr_Clear();
    if (asc_tasks_created_at(t->task, &f.created_at) < 0) PyErr_Clear();
    if (f.created_at.file && !asc_dl_is_user_path(f.site.file))
        (void)aioscope_location_set(&f.site, f.created_at.file, f.created_at.line, f.created_at.function);
    asc_emit(&f);
}
