/* watchdog.c: the watchdog thread of `blocking-call` and its GIL worker.
 *
 * One watchdog pthread (not a Python thread: it never takes the GIL) wakes every few
 * milliseconds; when a running loop's beat is overdue by more than the threshold (or a stamped
 * selector loop has been out of its poll that long), the loop thread is stuck in one callback
 * *now*, and the watchdog reads that thread's Python stack right away with the attach library,
 * through process_vm_readv on our own memory, which works while the loop thread holds the GIL (a
 * catastrophic regex) or not (time.sleep), and writes a provisional finding at once. What needs
 * the GIL it hands to a second pthread, the GIL worker: noting which task the loop is running
 * and, if the attach library could not read the stack, reading it with the C API (asc_probe),
 * and stamping a selector loop's polls (poll_stamp.c). The late beat then turns what was
 * captured into the finding (blocking.c). Both threads are stopped around a fork and started
 * again in the parent, and afresh in a child that goes on running its loop. */
#include "agent/blocking.h"

#include <dlfcn.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

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
    return asc_monotonic_ns() > mark && atomic_load(&s->due_ns) == mark;
}

/* Read a thread's Python stack with the C API (the GIL held): the fallback when the attach
 * library cannot read this interpreter. Innermost first, like aioscope_thread_stack. */
static size_t asc_stack_with_gil(PyThreadState *ts, aioscope_frame *out, size_t max) {
    size_t n = 0;
    PyFrameObject *f = PyThreadState_GetFrame(ts); /* new reference */
    while (f && n < max) {
        PyCodeObject *code = PyFrame_GetCode(f); /* new reference */
        const char *file = PyUnicode_AsUTF8(code->co_filename);
        const char *func = PyUnicode_AsUTF8(code->co_name);
        PyErr_Clear();
        aioscope_frame *fr = &out[n++];
        snprintf(fr->file, sizeof fr->file, "%s", file ? file : "?");
        snprintf(fr->function, sizeof fr->function, "%s", func ? func : "?");
        fr->line = PyFrame_GetLineNumber(f);
        Py_DECREF(code);
        PyFrameObject *back = PyFrame_GetBack(f); /* new reference */
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

static void *asc_watchdog_main(void *arg) {
    pthread_mutex_lock(&asc_lp.mutex);
    while (!asc_lp.stop) {
        int64_t wake = asc_monotonic_ns() + asc_lp.period_ns;
        struct timespec ts = {.tv_sec = wake / 1000000000, .tv_nsec = wake % 1000000000};
        pthread_cond_timedwait(&asc_lp.cond, &asc_lp.mutex, &ts);
        if (asc_lp.stop) break;
        int64_t now = asc_monotonic_ns();
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

/* Start the watchdog if this process has none (first loop, or first loop after a fork). Signals
 * are blocked in it, so that SIGINT and friends keep interrupting the main thread's system calls
 * as they would without the agent. */
void asc_watchdog_ensure(void) {
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

void asc_watchdog_stop(void) {
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
void asc_atfork_prepare(void) { pthread_mutex_lock(&asc_lp.mutex); }
void asc_atfork_parent(void) { pthread_mutex_unlock(&asc_lp.mutex); }
void asc_atfork_child(void) {
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

int asc_loops_before_fork(void) {
    if (asc_lp.thread_pid != (long)getpid()) return 0;
    asc_watchdog_stop();
    return 1;
}

void asc_loops_after_fork_parent(int stopped) {
    if (stopped) asc_watchdog_ensure();
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
void asc_note_not_user_dirs(PyObject *module) {
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
