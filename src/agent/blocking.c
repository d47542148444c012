/* blocking.c: `blocking-call`, the heartbeat of a running loop and the finding of a blocked period.
 *
 * blocking-call. A running loop has a heartbeat: a timerfd registered with loop.add_reader (or,
 * on a loop without add_reader, a TimerHandle from loop.call_later) whose callback is an instance
 * of asc_heartbeat_type; it runs when the loop gets back to polling after the timer expired. Each
 * beat stores the time the next beat is due in the loop's slot (an atomic) and re-arms itself. One watchdog pthread (not a Python thread: it never takes
 * the GIL) wakes every few milliseconds; when a running loop's beat is overdue by more than the
 * threshold, the loop thread is stuck in one callback *now*, and the watchdog reads that thread's
 * Python stack right away with the attach library, through process_vm_readv on our own memory,
 * which works while the loop thread holds the GIL (a catastrophic regex) or not (time.sleep). It
 * then takes the GIL (asc_probe) to note which task the loop is running and, if the attach library
 * could not read the stack, to read it with the C API. When the late beat finally runs, it turns
 * what was captured into one finding for that blocked period; the core report merges per site.
 *
 * A loop whose run_forever returned is disarmed (its timerfd unregistered and closed, or its
 * pending beat cancelled), so a stopped loop is never reported and a restarted one starts a
 * fresh period. The beat is not a task:
 * it does not keep run_until_complete running, and asc_loops_is_heartbeat tells it apart from the
 * program's callbacks.
 *
 * This file holds the beat (arming it when a loop starts, disarming it when it stops), the
 * findings of blocked periods, the live view's lag and the slots after a fork. The watchdog
 * thread and its GIL worker are in watchdog.c, the poll stamp of selector loops in poll_stamp.c;
 * blocking.h is what they share. */
#include "agent/blocking.h"

#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>

asc_loops_state asc_lp = {
    .mutex = PTHREAD_MUTEX_INITIALIZER,
    .threshold_ns = 100000000,
    .period_ns = 10000000,
    .pend_stamp = -1,
    .pend_probe = -1,
};

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

/* The beat's clock: a timerfd with the beat's period, read by the loop's own poll through
 * loop.add_reader, so the beat runs when the loop gets back to polling, as a timer's callback
 * would. A TimerHandle would sit in the loop's _scheduled heap, which _run_once then examines at
 * every iteration: one idle timer made queue ping-pong 4 % slower on 3.11 (no timer at all is
 * the common case of such benchmarks). Loops without add_reader get loop.call_later. */
static void asc_beat_fd_set(asc_loop_slot *s, int64_t period) {
    struct itimerspec it;
    it.it_interval.tv_sec = period / 1000000000;
    it.it_interval.tv_nsec = period % 1000000000;
    it.it_value = it.it_interval;
    if (timerfd_settime(s->beat_fd, 0, &it, NULL) == 0) s->beat_fd_period = period;
}

/* Arm the slot's next beat: the timerfd's next expiry (the first time: register it with the
 * loop), or loop.call_later(period, heartbeat). */
static int asc_arm(asc_loop_slot *s, PyObject *hb) {
    int64_t period_ns = asc_beat_ns(s);
    if (s->beat_fd >= 0) {
        uint64_t expirations;
        ssize_t n = read(s->beat_fd, &expirations, sizeof expirations); /* readable no more */
        (void)n;
        if (period_ns != s->beat_fd_period) asc_beat_fd_set(s, period_ns);
        return 0;
    }
    if (s->beat_fd == -1 && !s->handle) {
        int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        PyObject *pyfd = fd >= 0 ? PyLong_FromLong(fd) : NULL;
        PyObject *r = pyfd ? PyObject_CallMethodObjArgs(s->loop, asc_lp.str_add_reader, pyfd, hb, NULL) : NULL;
        Py_XDECREF(pyfd);
        if (r) {
            Py_DECREF(r);
            s->beat_fd = fd;
            asc_beat_fd_set(s, period_ns);
            return 0;
        }
        PyErr_Clear(); /* no add_reader (a loop that is not selector-based): a timer */
        if (fd >= 0) close(fd);
        s->beat_fd = -2;
    }
    PyObject *period = s->poll_hooked ? asc_lp.slow_period_s : asc_lp.period_s;
    PyObject *h = PyObject_CallMethodObjArgs(s->loop, asc_lp.str_call_later, period, hb, NULL);
    if (!h) return -1;
    Py_XSETREF(s->handle, h);
    return 0;
}

/* Stop the slot's beat: its timerfd unregistered and closed, or its TimerHandle cancelled. */
static void asc_disarm(asc_loop_slot *s, PyObject *loop) {
    if (s->beat_fd >= 0) {
        PyObject *pyfd = PyLong_FromLong(s->beat_fd);
        PyObject *r = pyfd && loop ? PyObject_CallMethodObjArgs(loop, asc_lp.str_remove_reader, pyfd, NULL) : NULL;
        Py_XDECREF(r);
        Py_XDECREF(pyfd);
        close(s->beat_fd);
        asc_drop_error("loop stop");
    }
    s->beat_fd = -1;
    PyObject *h = s->handle;
    s->handle = NULL;
    if (h) {
        PyObject *r = PyObject_CallMethodObjArgs(h, asc_lp.str_cancel, NULL);
        Py_XDECREF(r);
        Py_DECREF(h);
        asc_drop_error("loop stop");
    }
}

int asc_loops_beat_fd(PyObject *loop) {
    for (int i = 0; i < ASC_MAX_LOOPS; i++) {
        asc_loop_slot *s = &asc_lp.slots[i];
        if (s->used && s->loop == loop && s->beat_fd >= 0) return s->beat_fd;
    }
    return -1;
}

/* The task the loop runs right now: its id (the object's address, as tasks.c reports it), name
 * and creation site (tasks.c keeps it for the tasks it made). */
void asc_note_task(asc_loop_slot *s, int64_t due) {
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
void asc_block_finding(aioscope_finding *f, const aioscope_frame *frames, size_t n,
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
void asc_report_block(asc_loop_slot *s, int64_t due, int64_t late_ns) {
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

/* The id of a blocked period in the event stream, the same for its provisional and its final
 * finding: the process, the loop's slot, its run and the period's mark mixed, below 2^53 so that a JSON
 * number carries it exactly. */
long long asc_block_id(const asc_loop_slot *s, int64_t mark) {
    uint64_t h = (uint64_t)getpid() * 0x9E3779B97F4A7C15ull;
    h ^= (uint64_t)(s - asc_lp.slots) << 40;
    /* A slot serves loop after loop, and a stamped loop's marks start again at 1: the run's
     * generation keeps the periods of different runs apart. */
    h ^= (s->gen + 1) * 0x94D049BB133111EBull;
    h ^= (uint64_t)mark * 0xBF58476D1CE4E5B9ull;
    h &= (1ull << 53) - 1;
    return (long long)(h ? h : 1);
}

/* A beat: runs in the loop thread, as a timer callback. */
static PyObject *asc_heartbeat_call(PyObject *self, PyObject *args, PyObject *kwargs) {
    asc_heartbeat *hb = (asc_heartbeat *)self;
    asc_loop_slot *s = &asc_lp.slots[hb->index];
    if (!s->used || s->gen != hb->gen || !s->running) Py_RETURN_NONE; /* a stale beat */
    int64_t now = asc_monotonic_ns();
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

/* For the live view (control.c, any thread, no GIL): how late each running loop's heartbeat is
 * now. A loop that runs a long callback is late by about as long as the callback has run. */
int asc_loops_lags(asc_loop_lag *out, int max) {
    int n = 0;
    int64_t now = asc_monotonic_ns();
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
asc_loop_slot *asc_slot_of_this_thread(void) {
    uintptr_t ts = (uintptr_t)PyThreadState_Get();
    for (int i = 0; i < ASC_MAX_LOOPS; i++) {
        asc_loop_slot *s = &asc_lp.slots[i];
        if (s->used && s->running && s->tstate == ts) return s;
    }
    return NULL;
}

/* set_running_loop(None): the loop of this thread stopped. Its armed beat is cancelled, so a loop
 * that runs again later starts a fresh period instead of reporting the time it was stopped. */
void asc_loop_stopped(void) {
    asc_loop_slot *s = asc_slot_of_this_thread();
    if (!s) return;
    /* The loop may stop right after a block (asyncio.run(main()) whose main() ends with the
     * blocking call): no poll or late beat follows, so the period is closed here. */
    int64_t now = asc_monotonic_ns();
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
    PyObject *loop = s->loop;
    s->used = 0;
    s->loop = NULL;
    asc_disarm(s, loop);
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

/* The loop started in the calling thread (loops.c): its slot and its first beat. */
void asc_heartbeat_start(PyObject *loop) {
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
    s->beat_fd = -1;
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
    atomic_store(&s->due_ns, asc_monotonic_ns() + asc_beat_ns(s));
    s->captured_due = 0;
    s->probe_due = 0;
    s->nframes = 0;
    s->tstate = (uintptr_t)PyThreadState_Get();
    s->thread = pthread_self();
    s->running = 1;
    pthread_mutex_unlock(&asc_lp.mutex);
    if (!(asc_cfg.dev_off & ASC_OFF_WATCHDOG)) asc_watchdog_ensure();
}

int asc_loops_module_init(PyObject *module) {
    if (PyType_Ready(&asc_heartbeat_type) < 0 || PyType_Ready(&asc_poll_hook_type) < 0) return -1;
    return 0;
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
        if (s->beat_fd >= 0) close(s->beat_fd); /* the parent's registration stays its own */
        s->beat_fd = -1;
    }
    if (asc_lp.debug) fprintf(stderr, "aioscope: forked child %ld: %d loop(s) kept\n", (long)getpid(), any);
    if (any) asc_watchdog_ensure();
}
