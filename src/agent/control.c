/* control.c: the agent's control socket, which `aioscope ps|pstree|dump|top PID` ask.
 *
 * install() starts one pthread (not a Python thread: it runs without the GIL) that listens on
 * <dir>/<pid>.sock (include/aioscope/control.h: a private directory, mode 0700, checked). Each
 * connection is one request line and one JSON answer; the peer's uid (SO_PEERCRED) must be ours,
 * anyone else gets an error and nothing else. Nothing a client says can change the program.
 *
 * Answering needs the program's tasks. The fast way is to take the GIL and read them with the C
 * API (livesnap.c): no system calls, consistent state. But the GIL may be held for a long time by
 * the loop thread (a long C call that does not release it) — exactly when someone wants to look.
 * So the GIL is taken by a second pthread, the GIL worker, and the server waits for it at most
 * ASC_GIL_WAIT_MS; when that expires, the answer is read without the GIL from our own memory by
 * the attach library (the same reader `aioscope ps --attach` uses on another process), which
 * still shows every thread's stack (the blocking one included) and the tasks. The worker keeps
 * waiting for the GIL in the background and throws its late result away; while it waits, later
 * requests go straight to the memory reader.
 *
 * The answer is written after the GIL is released: the program's loop is held up only for the
 * collection itself. Exit: an atexit callback (Python's, registered at start, so it runs before
 * the interpreter finalizes) stops the server and removes the socket. After fork, the child starts
 * a server of its own for its own pid. */
#include "agent/agent.h"
#include "agent/clock.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "agent/livesnap.h"
#include "aioscope/attach.h"
#include "aioscope/control.h"
#include "aioscope/error.h"
#include "aioscope/json.h"
#include "aioscope/snapshot_wire.h"

#if PY_VERSION_HEX < 0x030D0000
#define Py_IsFinalizing _Py_IsFinalizing /* public from 3.13 */
#endif

/* How long a request waits for the GIL before reading memory instead. A loop thread running
 * Python code gives the GIL up within the switch interval (5 ms by default), but on a loaded
 * machine the threads involved may wait far longer for a CPU; a thread in a long C call that
 * holds the GIL does not give it up at all, and then this is the delay before the answer. */
#define ASC_GIL_WAIT_MS 250
/* Loops reported with their lag; the agent watches at most 64 (blocking.h). */
#define ASC_MAX_LAGS 64
/* A request line longer than this is not one of ours. */
#define ASC_REQUEST_MAX 64
/* A client that does not send its request, or does not read the answer, within this is dropped
 * so that it cannot keep the server from answering others. */
#define ASC_IO_TIMEOUT_S 2

/* The answer's forms: the request line says which (control.h). */
typedef enum {
    ASC_FORM_WIRE,   /* "snapshot": the compact JSON form (snapshot_wire.h) */
    ASC_FORM_JSON,   /* "snapshot json": aioscope_snapshot_to_json's form */
    ASC_FORM_BINARY, /* "snapshot binary": the binary form, what the CLI asks for */
} asc_form;

/* The GIL job: QUEUED by the server, WAITING while the worker waits for the GIL, COLLECTING once
 * it has it (from then on the answer comes from it, however long the collection takes), DONE. */
typedef enum { ASC_JOB_IDLE, ASC_JOB_QUEUED, ASC_JOB_WAITING, ASC_JOB_COLLECTING, ASC_JOB_DONE } asc_job_state;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int started;           /* server and worker threads exist in this process */
    long pid;              /* the process they were started in (fork changes it) */
    int stop;
    int listen_fd;
    int wake[2];           /* a pipe: written to stop the server's poll */
    char path[AIOSCOPE_CONTROL_PATH_MAX];
    pthread_t server, worker;

    /* The GIL job, under mu. */
    asc_job_state job;
    asc_form job_form;     /* the form the answer is written in */
    int abandoned;         /* the server stopped waiting for the current job */
    aioscope_buf result;   /* the worker's JSON (owned by the job until taken) */

    aioscope_target *self_target; /* the memory reader, opened on first need */
    int self_tried;
} asc_ctl = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .cv = PTHREAD_COND_INITIALIZER,
    .listen_fd = -1,
    .wake = {-1, -1},
};

/* ---- answers ------------------------------------------------------------------------------ */

static void asc_error_json(aioscope_buf *b, int err, const char *message) {
    aioscope_buf_puts(b, "{\"error\":");
    aioscope_buf_json_string(b, aioscope_err_name(err));
    aioscope_buf_puts(b, ",\"message\":");
    aioscope_buf_json_string(b, message);
    aioscope_buf_puts(b, "}");
}

/* The agent-only section: one JSON object. */
static void asc_agent_json(aioscope_buf *b, const char *how, double collect_ms, double collect_cpu_ms) {
    aioscope_buf_puts(b, "{\"read_with\":");
    aioscope_buf_json_string(b, how);
    aioscope_buf_puts(b, ",\"collect_ms\":");
    aioscope_buf_json_number(b, collect_ms);
    /* The collection's own CPU time: on a loaded machine the wall time above also counts the
     * time the thread waited for a CPU. */
    aioscope_buf_puts(b, ",\"collect_cpu_ms\":");
    aioscope_buf_json_number(b, collect_cpu_ms);
    aioscope_buf_printf(b, ",\"block_threshold_s\":");
    aioscope_buf_json_number(b, asc_cfg.block_threshold_s);
    asc_loop_lag lags[ASC_MAX_LAGS];
    int n = asc_loops_lags(lags, ASC_MAX_LAGS);
    aioscope_buf_puts(b, ",\"loops\":[");
    for (int i = 0; i < n; i++) {
        aioscope_buf_printf(b, "%s{\"thread_id\":%llu,\"lag_s\":", i ? "," : "",
                            (unsigned long long)lags[i].thread_id);
        aioscope_buf_json_number(b, lags[i].lag_s);
        aioscope_buf_puts(b, "}");
    }
    aioscope_buf_puts(b, "]}");
}

/* With the GIL: collect, then (without it) the caller writes JSON. */
static double asc_thread_cpu_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static aioscope_snapshot *asc_collect_with_gil(double *ms, double *cpu_ms) {
    int64_t t0 = asc_monotonic_ns();
    double c0 = asc_thread_cpu_ms();
    aioscope_snapshot *snap = NULL;
    if (asc_live_collect(&snap) < 0) {
        PyErr_Clear();
        snap = NULL;
    }
    *ms = (double)(asc_monotonic_ns() - t0) / 1e6;
    *cpu_ms = asc_thread_cpu_ms() - c0;
    return snap;
}

/* The snapshot in the requested form, with the agent section (a member "agent" of the JSON
 * forms' object; the binary form's last field). */
static void asc_write_snapshot(aioscope_buf *b, const aioscope_snapshot *snap, asc_form form,
                               const char *how, double ms, double cpu_ms) {
    aioscope_buf agent;
    aioscope_buf_init(&agent);
    asc_agent_json(&agent, how, ms, cpu_ms);
    if (agent.oom) {
        b->oom = 1;
    } else if (form == ASC_FORM_BINARY) {
        aioscope_snapshot_to_binary(snap, agent.data, b);
    } else {
        if (form == ASC_FORM_JSON) aioscope_snapshot_to_json(snap, b);
        else aioscope_snapshot_to_wire(snap, b);
        if (b->len > 0 && b->data[b->len - 1] == '}') {
            b->len--; /* reopen the object: the snapshot writers end with its closing brace */
            aioscope_buf_puts(b, ",\"agent\":");
            aioscope_buf_append(b, agent.data, agent.len);
            aioscope_buf_puts(b, "}");
        }
    }
    aioscope_buf_free(&agent);
}

/* The GIL worker: waits for a job, takes the GIL, collects, releases the GIL, writes JSON. */
static void *asc_worker_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&asc_ctl.mu);
    for (;;) {
        while (!asc_ctl.stop && asc_ctl.job != ASC_JOB_QUEUED) pthread_cond_wait(&asc_ctl.cv, &asc_ctl.mu);
        if (asc_ctl.stop) break;
        asc_ctl.job = ASC_JOB_WAITING;
        asc_form form = asc_ctl.job_form;
        pthread_mutex_unlock(&asc_ctl.mu);

        aioscope_snapshot *snap = NULL;
        double ms = 0, cpu_ms = 0;
        /* No mutex is held while waiting for the GIL: a finalizing interpreter may end this
         * thread inside PyGILState_Ensure, as it ends daemon threads. */
        if (!Py_IsFinalizing()) {
            PyGILState_STATE g = PyGILState_Ensure();
            pthread_mutex_lock(&asc_ctl.mu);
            int go = !asc_ctl.stop && !asc_ctl.abandoned;
            if (go) asc_ctl.job = ASC_JOB_COLLECTING;
            pthread_cond_broadcast(&asc_ctl.cv);
            pthread_mutex_unlock(&asc_ctl.mu);
            if (go && asc_cfg.enabled) snap = asc_collect_with_gil(&ms, &cpu_ms);
            PyGILState_Release(g);
        }
        aioscope_buf b;
        aioscope_buf_init(&b);
        if (snap) {
            asc_write_snapshot(&b, snap, form, "gil", ms, cpu_ms);
        } else {
            asc_error_json(&b, AIOSCOPE_EIO, "the agent could not read its tasks");
        }

        pthread_mutex_lock(&asc_ctl.mu);
        if (asc_ctl.abandoned) {
            aioscope_buf_free(&b); /* the server answered from memory already */
            asc_ctl.abandoned = 0;
            asc_ctl.job = ASC_JOB_IDLE;
        } else {
            asc_ctl.result = b;
            asc_ctl.job = ASC_JOB_DONE;
        }
        pthread_cond_broadcast(&asc_ctl.cv);
        /* Freed once the answer is on its way: for 100 000 tasks this takes 10 ms or more. */
        pthread_mutex_unlock(&asc_ctl.mu);
        aioscope_snapshot_free(snap);
        pthread_mutex_lock(&asc_ctl.mu);
    }
    pthread_mutex_unlock(&asc_ctl.mu);
    return NULL;
}

/* Without the GIL: read our own memory. */
static void asc_answer_from_memory(aioscope_buf *b, asc_form form) {
    if (!asc_ctl.self_tried) {
        asc_ctl.self_tried = 1;
        /* _PyRuntime is exported by libpython or the executable (3.8+). */
        void *rt = dlsym(RTLD_DEFAULT, "_PyRuntime");
        if (rt) (void)aioscope_target_open_self(PY_VERSION_HEX, (uint64_t)(uintptr_t)rt, &asc_ctl.self_target);
    }
    if (!asc_ctl.self_target) {
        asc_error_json(b, AIOSCOPE_EUNSUPPORTED,
                       "the program holds the GIL and its memory cannot be read on this Python");
        return;
    }
    int64_t t0 = asc_monotonic_ns();
    double c0 = asc_thread_cpu_ms();
    aioscope_snapshot *snap = NULL;
    int rc = aioscope_target_snapshot(asc_ctl.self_target, &snap);
    double ms = (double)(asc_monotonic_ns() - t0) / 1e6, cpu_ms = asc_thread_cpu_ms() - c0;
    if (rc < 0 || !snap) {
        asc_error_json(b, rc < 0 ? rc : AIOSCOPE_EIO, "reading the program's memory failed");
        return;
    }
    snap->source = "agent-memory"; /* read by the agent, but from memory: see snapshot_print.c */
    snap->has_agent_fields = 0; /* busy time and steps live behind the GIL */
    asc_write_snapshot(b, snap, form, "memory", ms, cpu_ms);
    aioscope_snapshot_free(snap);
}

static void asc_add_ms(struct timespec *t, long ms) {
    t->tv_nsec += ms * 1000000L;
    t->tv_sec += t->tv_nsec / 1000000000L;
    t->tv_nsec %= 1000000000L;
}

static void asc_answer_snapshot(aioscope_buf *b, asc_form form) {
    pthread_mutex_lock(&asc_ctl.mu);
    if (asc_ctl.job != ASC_JOB_IDLE) {
        /* A worker is still waiting for the GIL from an earlier request: the GIL is busy. */
        pthread_mutex_unlock(&asc_ctl.mu);
        asc_answer_from_memory(b, form);
        return;
    }
    asc_ctl.job = ASC_JOB_QUEUED;
    asc_ctl.job_form = form;
    asc_ctl.abandoned = 0;
    pthread_cond_broadcast(&asc_ctl.cv);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    asc_add_ms(&deadline, ASC_GIL_WAIT_MS);
    /* Until the worker has the GIL, wait at most ASC_GIL_WAIT_MS; once it has it, until it is
     * done (the collection is bounded by the number of tasks). */
    while (asc_ctl.job != ASC_JOB_DONE && !asc_ctl.stop) {
        if (asc_ctl.job == ASC_JOB_COLLECTING) {
            pthread_cond_wait(&asc_ctl.cv, &asc_ctl.mu);
            continue;
        }
        if (pthread_cond_timedwait(&asc_ctl.cv, &asc_ctl.mu, &deadline) == ETIMEDOUT &&
            asc_ctl.job != ASC_JOB_COLLECTING && asc_ctl.job != ASC_JOB_DONE)
            break;
    }
    if (asc_ctl.job == ASC_JOB_DONE) {
        *b = asc_ctl.result;
        aioscope_buf_init(&asc_ctl.result);
        asc_ctl.job = ASC_JOB_IDLE;
        pthread_mutex_unlock(&asc_ctl.mu);
        return;
    }
    if (asc_ctl.job == ASC_JOB_QUEUED) asc_ctl.job = ASC_JOB_IDLE; /* worker never picked it up */
    else asc_ctl.abandoned = 1;
    pthread_mutex_unlock(&asc_ctl.mu);
    asc_answer_from_memory(b, form);
}

/* ---- the server ----------------------------------------------------------------------------- */

static int asc_write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* One request line (without the newline) into buf; 0 or -1. */
static int asc_read_request(int fd, char *buf, size_t cap) {
    size_t n = 0;
    while (n + 1 < cap) {
        ssize_t r = recv(fd, buf + n, 1, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        if (buf[n] == '\n') break;
        n++;
    }
    buf[n] = '\0';
    return 0;
}

static void asc_serve_one(int fd) {
    struct timeval tv = {.tv_sec = ASC_IO_TIMEOUT_S};
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    aioscope_buf b;
    aioscope_buf_init(&b);
    struct ucred cred;
    socklen_t len = sizeof cred;
    char req[ASC_REQUEST_MAX];
    /* The request line is read before anything else, even from a peer that will be refused:
     * closing a Unix socket with unread data resets the connection, and the peer would see a
     * reset instead of the refusal. It is at most ASC_REQUEST_MAX bytes, under the timeout. */
    int have_req = asc_read_request(fd, req, sizeof req) == 0;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.uid != geteuid()) {
        /* The directory's mode already keeps others out; this holds even if it did not. */
        asc_error_json(&b, AIOSCOPE_EPERM, "only the user running the program may look inside it");
    } else if (!have_req) {
        asc_error_json(&b, AIOSCOPE_EPROTO, "no request line");
    } else if (strcmp(req, "snapshot") == 0) {
        asc_answer_snapshot(&b, ASC_FORM_WIRE);
    } else if (strcmp(req, "snapshot json") == 0) {
        asc_answer_snapshot(&b, ASC_FORM_JSON);
    } else if (strcmp(req, "snapshot binary") == 0) {
        asc_answer_snapshot(&b, ASC_FORM_BINARY);
    } else if (strcmp(req, "ping") == 0) {
        aioscope_buf_printf(&b, "{\"pid\":%ld,\"python\":\"%d.%d.%d\",\"agent\":\"%s\"}",
                            (long)getpid(), PY_MAJOR_VERSION, PY_MINOR_VERSION, PY_MICRO_VERSION,
                            AIOSCOPE_VERSION);
    } else {
        asc_error_json(&b, AIOSCOPE_EPROTO, "unknown request");
    }
    if (!b.oom) {
        /* JSON answers end with a newline; the binary form's length is its own. */
        if (b.len < 8 || memcmp(b.data, AIOSCOPE_WIRE_BINARY_MAGIC, 8) != 0) aioscope_buf_puts(&b, "\n");
        (void)asc_write_all(fd, b.data, b.len);
    }
    aioscope_buf_free(&b);
}

static void *asc_server_main(void *arg) {
    (void)arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = asc_ctl.listen_fd, .events = POLLIN},
                              {.fd = asc_ctl.wake[0], .events = POLLIN}};
        int r = poll(p, 2, -1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 || (p[1].revents & POLLIN)) break;
        pthread_mutex_lock(&asc_ctl.mu);
        int stop = asc_ctl.stop;
        pthread_mutex_unlock(&asc_ctl.mu);
        if (stop) break;
        if (!(p[0].revents & POLLIN)) continue;
        int fd = accept4(asc_ctl.listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) continue;
        asc_serve_one(fd);
        close(fd);
    }
    return NULL;
}

/* Block every signal in our threads: the program's handlers must run in its own threads (CPython
 * runs Python signal handlers only in the main thread, but a C-level handler or sigwait user
 * would be surprised to see our threads take them). */
static int asc_spawn(pthread_t *t, void *(*fn)(void *)) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(t, NULL, fn, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

/* Sockets of processes that no longer exist (killed, or ended by os._exit, before removing theirs)
 * are removed, so the directory does not fill up; a pid that exists is left alone, whoever it is. */
static void asc_remove_stale_sockets(const char *sock_path) {
    char dir[AIOSCOPE_CONTROL_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", sock_path);
    char *slash = strrchr(dir, '/');
    if (!slash) return;
    *slash = '\0';
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    /* Bound: a directory of ours with more entries than this is not swept further. */
    for (int i = 0; i < 4096 && (e = readdir(d)); i++) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (pid <= 0 || strcmp(end, ".sock") != 0) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char p[AIOSCOPE_CONTROL_PATH_MAX + 256]; /* dir + a d_name of at most 255 bytes */
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        (void)unlink(p);
    }
    closedir(d);
}

/* Bind the socket; returns the descriptor or -1. A socket file left by an earlier process with our
 * pid (a crash leaves it) is replaced. */
static int asc_listen(void) {
    int rc = aioscope_control_path(1, 1, (int)getpid(), asc_ctl.path, sizeof asc_ctl.path);
    if (rc < 0) rc = aioscope_control_path(0, 1, (int)getpid(), asc_ctl.path, sizeof asc_ctl.path);
    if (rc < 0) return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    memcpy(a.sun_path, asc_ctl.path, strlen(asc_ctl.path) + 1); /* length checked by control_path */
    (void)unlink(asc_ctl.path);
    asc_remove_stale_sockets(asc_ctl.path);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || chmod(asc_ctl.path, 0600) < 0 ||
        listen(fd, 16) < 0) {
        close(fd);
        asc_ctl.path[0] = '\0';
        return -1;
    }
    return fd;
}

static void asc_start_threads(void) {
    asc_ctl.stop = 0;
    asc_ctl.job = ASC_JOB_IDLE;
    asc_ctl.abandoned = 0;
    aioscope_buf_free(&asc_ctl.result); /* zeroes it; frees what a run before a fork pause left */
    asc_ctl.listen_fd = asc_listen();
    if (asc_ctl.listen_fd < 0) return; /* no live view: the program runs as before */
    if (pipe2(asc_ctl.wake, O_CLOEXEC) < 0) goto fail;
    if (asc_spawn(&asc_ctl.worker, asc_worker_main) != 0) goto fail;
    if (asc_spawn(&asc_ctl.server, asc_server_main) != 0) {
        pthread_mutex_lock(&asc_ctl.mu);
        asc_ctl.stop = 1;
        pthread_cond_broadcast(&asc_ctl.cv);
        pthread_mutex_unlock(&asc_ctl.mu);
        pthread_join(asc_ctl.worker, NULL);
        goto fail;
    }
    asc_ctl.started = 1;
    asc_ctl.pid = (long)getpid();
    return;
fail:
    close(asc_ctl.listen_fd);
    asc_ctl.listen_fd = -1;
    if (asc_ctl.path[0]) unlink(asc_ctl.path);
    asc_ctl.path[0] = '\0';
    for (int i = 0; i < 2; i++)
        if (asc_ctl.wake[i] >= 0) close(asc_ctl.wake[i]), asc_ctl.wake[i] = -1;
}

/* atexit (Python's): stop answering before the interpreter goes away. */
static PyObject *asc_control_at_exit(PyObject *self, PyObject *unused) {
    asc_control_stop();
    Py_RETURN_NONE;
}

static PyMethodDef asc_at_exit_def = {"_control_at_exit", asc_control_at_exit, METH_NOARGS, NULL};

void asc_control_start(void) {
    if (asc_ctl.started) return;
    asc_start_threads();
    if (!asc_ctl.started) return;
    PyObject *fn = PyCFunction_New(&asc_at_exit_def, NULL);
    PyObject *atexit = fn ? PyImport_ImportModule("atexit") : NULL;
    PyObject *r = atexit ? PyObject_CallMethod(atexit, "register", "O", fn) : NULL;
    Py_XDECREF(r);
    Py_XDECREF(atexit);
    Py_XDECREF(fn);
    PyErr_Clear();
}

void asc_control_stop(void) {
    if (!asc_ctl.started || asc_ctl.pid != (long)getpid()) return;
    pthread_mutex_lock(&asc_ctl.mu);
    asc_ctl.stop = 1;
    pthread_cond_broadcast(&asc_ctl.cv);
    pthread_mutex_unlock(&asc_ctl.mu);
    ssize_t w = write(asc_ctl.wake[1], "x", 1);
    (void)w;
    /* The server may be waiting for the worker (at most ASC_GIL_WAIT_MS) or writing to a slow
     * client (at most ASC_IO_TIMEOUT_S), and the worker may be waiting for the GIL, which our
     * caller holds: both are joined with the GIL released, so that the socket is gone and no
     * thread of ours touches the interpreter when we return. */
    Py_BEGIN_ALLOW_THREADS
    pthread_join(asc_ctl.server, NULL);
    pthread_join(asc_ctl.worker, NULL);
    Py_END_ALLOW_THREADS
    close(asc_ctl.listen_fd);
    asc_ctl.listen_fd = -1;
    if (asc_ctl.path[0]) unlink(asc_ctl.path);
    asc_ctl.path[0] = '\0';
    asc_ctl.started = 0;
}

/* Around a fork on 3.12+ (see asc_loops_before_fork): the threads stop and the socket goes; the
 * parent listens again at once, under the same path. */
int asc_control_before_fork(void) {
    if (!asc_ctl.started || asc_ctl.pid != (long)getpid()) return 0;
    asc_control_stop();
    return 1;
}

void asc_control_after_fork_parent(int stopped) {
    if (stopped) asc_start_threads();
}

void asc_control_after_fork_child(void) {
    /* Only the forking thread exists in the child: the parent's server and worker are gone, and
     * their descriptors and socket path belong to the parent. */
    if (!asc_ctl.started) return;
    asc_ctl.started = 0;
    if (asc_ctl.listen_fd >= 0) close(asc_ctl.listen_fd);
    for (int i = 0; i < 2; i++)
        if (asc_ctl.wake[i] >= 0) close(asc_ctl.wake[i]), asc_ctl.wake[i] = -1;
    asc_ctl.listen_fd = -1;
    asc_ctl.path[0] = '\0';
    pthread_mutex_init(&asc_ctl.mu, NULL);
    pthread_cond_init(&asc_ctl.cv, NULL);
    asc_ctl.self_target = NULL; /* opened for the parent's threads; reopened on need */
    asc_ctl.self_tried = 0;
    asc_start_threads();
}
