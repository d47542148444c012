/* agent_client.c: the CLI side of the agent's control socket (see agent_client.h).
 *
 * The socket is looked for where the agent puts it: in $XDG_RUNTIME_DIR/aioscope first, then in
 * /tmp/aioscope-<uid> (the agent falls back to it when it has no usable XDG_RUNTIME_DIR, and a
 * shell may have one when the program did not, or the reverse). Both directories must pass the
 * same ownership checks the agent applies, so a socket planted by another user is never asked.
 * The answer is untrusted input: it is bounded in size, parsed by the strict JSON reader, and
 * every field is checked before it enters the snapshot. */
#include "cli/agent_client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "aioscope/control.h"
#include "aioscope/error.h"

/* A snapshot of 100 000 tasks is about 60 MB of JSON; more than this is not an answer we want to
 * hold in memory. */
#define ASC_MAX_ANSWER (512u << 20)
/* The agent answers within its GIL wait (100 ms) plus the collection; a program that is being
 * torn down may never answer. */
#define ASC_ANSWER_TIMEOUT_S 10
/* A coroutine chain or stack longer than this in an answer is cut (the agent bounds them lower). */
#define ASC_MAX_FRAMES 4096

static int asc_connect(const char *path) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return AIOSCOPE_EIO;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if (n >= sizeof a.sun_path) {
        close(fd);
        return AIOSCOPE_EINVAL;
    }
    memcpy(a.sun_path, path, n + 1);
    struct timeval tv = {.tv_sec = ASC_ANSWER_TIMEOUT_S};
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        int e = errno;
        close(fd);
        /* No file, or a file nobody listens on (a process that died without removing it). */
        if (e == ENOENT || e == ECONNREFUSED || e == ENOTSOCK) return AIOSCOPE_ENOAGENT;
        if (e == EACCES || e == EPERM) return AIOSCOPE_EPERM;
        return AIOSCOPE_EIO;
    }
    return fd;
}

int asc_agent_request(int pid, const char *request, char **text, size_t *len) {
    *text = NULL;
    *len = 0;
    char path[AIOSCOPE_CONTROL_PATH_MAX];
    int fd = AIOSCOPE_ENOAGENT;
    int perm = 0;
    for (int xdg = 1; xdg >= 0 && fd < 0; xdg--) {
        int rc = aioscope_control_path(xdg, 0, pid, path, sizeof path);
        if (rc == AIOSCOPE_EPERM) perm = 1; /* a directory that is not private: not trusted */
        if (rc < 0) continue;
        fd = asc_connect(path);
        if (fd == AIOSCOPE_EPERM) perm = 1;
    }
    if (fd < 0) return perm ? AIOSCOPE_EPERM : AIOSCOPE_ENOAGENT;

    size_t rlen = strlen(request);
    if (send(fd, request, rlen, MSG_NOSIGNAL) != (ssize_t)rlen || send(fd, "\n", 1, MSG_NOSIGNAL) != 1) {
        close(fd);
        return AIOSCOPE_EIO;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        close(fd);
        return AIOSCOPE_ENOMEM;
    }
    int rc = 0;
    for (;;) {
        if (n + 1 == cap) {
            if (cap >= ASC_MAX_ANSWER) {
                rc = AIOSCOPE_EPROTO;
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                rc = AIOSCOPE_ENOMEM;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t r = recv(fd, buf + n, cap - n - 1, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = AIOSCOPE_EIO; /* includes the timeout */
            break;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    if (rc == 0 && n == 0) rc = AIOSCOPE_EPROTO; /* closed without a word */
    if (rc < 0) {
        free(buf);
        return rc;
    }
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return 0;
}

/* ---- JSON back into the snapshot model ------------------------------------------------------- */

/* A JSON number that is an id (a non-negative integer below 2^53); 0 when absent or not one. */
static uint64_t asc_id(const aioscope_json *v) {
    if (!v || v->type != AIOSCOPE_JSON_NUMBER || !(v->number >= 0) || v->number > 9007199254740992.0)
        return 0;
    return (uint64_t)v->number;
}

static const char *asc_string(aioscope_snapshot *s, const aioscope_json *obj, const char *key,
                              const char *dflt) {
    const char *v = aioscope_json_get_string(obj, key);
    if (!v && !dflt) return NULL;
    return aioscope_snapshot_intern(s, v ? v : dflt);
}

static int asc_frames(aioscope_snapshot *s, const aioscope_json *arr, aioscope_snap_frame **out,
                      size_t *n) {
    *out = NULL;
    *n = 0;
    if (!arr || arr->type != AIOSCOPE_JSON_ARRAY || arr->len == 0) return 0;
    size_t cnt = arr->len < ASC_MAX_FRAMES ? arr->len : ASC_MAX_FRAMES;
    aioscope_snap_frame *f = calloc(cnt, sizeof *f);
    if (!f) return AIOSCOPE_ENOMEM;
    for (size_t i = 0; i < cnt; i++) {
        const aioscope_json *fr = &arr->items[i];
        f[i].file = asc_string(s, fr, "file", "?");
        f[i].function = asc_string(s, fr, "function", "?");
        double line = aioscope_json_get_number(fr, "line", 0);
        f[i].line = line >= 0 && line < 1e9 ? (int)line : 0;
    }
    *out = f;
    *n = cnt;
    return 0;
}

static int asc_state(const char *s) {
    if (s && strcmp(s, "cancelled") == 0) return AIOSCOPE_TASK_CANCELLED;
    if (s && strcmp(s, "finished") == 0) return AIOSCOPE_TASK_FINISHED;
    return AIOSCOPE_TASK_PENDING;
}

int asc_snapshot_from_json(const aioscope_json *root, aioscope_snapshot **out) {
    *out = NULL;
    if (!root || root->type != AIOSCOPE_JSON_OBJECT) return AIOSCOPE_EPARSE;
    const aioscope_json *threads = aioscope_json_get(root, "threads");
    const aioscope_json *tasks = aioscope_json_get(root, "tasks");
    if (!threads || threads->type != AIOSCOPE_JSON_ARRAY || !tasks || tasks->type != AIOSCOPE_JSON_ARRAY)
        return AIOSCOPE_EPARSE;
    aioscope_snapshot *s = aioscope_snapshot_new();
    if (!s) return AIOSCOPE_ENOMEM;
    int rc = AIOSCOPE_ENOMEM;
    double pid = aioscope_json_get_number(root, "pid", 0);
    s->pid = pid > 0 && pid < 1e9 ? (int)pid : 0;
    unsigned maj = 0, min = 0, mic = 0;
    const char *py = aioscope_json_get_string(root, "python");
    if (py && sscanf(py, "%u.%u.%u", &maj, &min, &mic) >= 2)
        s->py_version_hex = (maj & 0xff) << 24 | (min & 0xff) << 16 | (mic & 0xff) << 8;
    s->source = asc_string(s, root, "source", "agent");
    const aioscope_json *fz = aioscope_json_get(root, "frozen");
    s->frozen = fz && fz->type == AIOSCOPE_JSON_BOOL && fz->boolean;
    const aioscope_json *un = aioscope_json_get(root, "unavailable");
    s->has_agent_fields = un && un->type == AIOSCOPE_JSON_ARRAY && un->len == 0;
    double ur = aioscope_json_get_number(root, "unreadable_tasks", 0);
    s->unreadable_tasks = ur > 0 && ur < 1e12 ? (size_t)ur : 0;
    if (!s->source) goto err;

    s->threads = calloc(threads->len ? threads->len : 1, sizeof *s->threads);
    s->tasks = calloc(tasks->len ? tasks->len : 1, sizeof *s->tasks);
    if (!s->threads || !s->tasks) goto err;
    for (size_t i = 0; i < tasks->len; i++) {
        const aioscope_json *o = &tasks->items[i];
        aioscope_snap_task *t = &s->tasks[s->ntasks];
        t->id = asc_id(aioscope_json_get(o, "id"));
        t->name = asc_string(s, o, "name", "?");
        t->state = asc_state(aioscope_json_get_string(o, "state"));
        t->thread = -1;
        if (asc_frames(s, aioscope_json_get(o, "coroutine_stack"), &t->coro, &t->ncoro) < 0) goto err;
        t->awaiting = asc_string(s, o, "awaiting", NULL);
        t->awaiting_id = asc_id(aioscope_json_get(o, "awaiting_id"));
        const aioscope_json *by = aioscope_json_get(o, "awaited_by");
        if (by && by->type == AIOSCOPE_JSON_ARRAY && by->len) {
            t->awaited_by = calloc(by->len, sizeof *t->awaited_by);
            if (!t->awaited_by) goto err;
            for (size_t k = 0; k < by->len; k++) {
                uint64_t id = asc_id(&by->items[k]);
                if (id) t->awaited_by[t->nawaited_by++] = id;
            }
        }
        t->busy_s = aioscope_json_get_number(o, "busy_s", -1);
        double steps = aioscope_json_get_number(o, "steps", -1);
        t->steps = steps >= 0 && steps < 9e15 ? (long)steps : -1;
        t->spawned_by = asc_id(aioscope_json_get(o, "spawned_by"));
        t->age_s = aioscope_json_get_number(o, "age_s", -1);
        const aioscope_json *c = aioscope_json_get(o, "cancelling");
        t->cancelling = c && c->type == AIOSCOPE_JSON_BOOL && c->boolean;
        t->exception = asc_string(s, o, "exception", NULL);
        /* thread_id is resolved below, once every thread is in. */
        s->ntasks++;
        if (!t->name) goto err;
    }
    for (size_t i = 0; i < threads->len; i++) {
        const aioscope_json *o = &threads->items[i];
        aioscope_snap_thread *th = &s->threads[s->nthreads++];
        th->thread_id = asc_id(aioscope_json_get(o, "thread_id"));
        th->native_id = asc_id(aioscope_json_get(o, "native_id"));
        const char *ls = aioscope_json_get_string(o, "loop_state");
        th->loop_state = !ls ? AIOSCOPE_LOOP_NONE
                       : strcmp(ls, "polling") == 0 ? AIOSCOPE_LOOP_POLLING
                       : strcmp(ls, "running") == 0 ? AIOSCOPE_LOOP_RUNNING
                                                    : AIOSCOPE_LOOP_NONE;
        uint64_t rt = asc_id(aioscope_json_get(o, "running_task"));
        th->running_task = rt ? aioscope_snapshot_find_task(s, rt) : -1;
        if (asc_frames(s, aioscope_json_get(o, "stack"), &th->frames, &th->nframes) < 0) goto err;
    }
    for (size_t i = 0; i < s->ntasks; i++) {
        uint64_t tid = asc_id(aioscope_json_get(&tasks->items[i], "thread_id"));
        for (size_t k = 0; tid && k < s->nthreads; k++)
            if (s->threads[k].thread_id == tid) s->tasks[i].thread = (long)k;
    }
    *out = s;
    return 0;
err:
    aioscope_snapshot_free(s);
    return rc;
}

int asc_agent_snapshot(int pid, aioscope_snapshot **out, asc_agent_info *info) {
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc = asc_agent_request(pid, "snapshot", &text, &len);
    if (rc < 0) return rc;
    aioscope_json *root = NULL;
    rc = aioscope_json_parse(text, len, &root);
    free(text);
    if (rc < 0) return rc == AIOSCOPE_ENOMEM ? rc : AIOSCOPE_EPROTO;
    const char *err = aioscope_json_get_string(root, "error");
    if (err) {
        rc = strcmp(err, "EPERM") == 0 ? AIOSCOPE_EPERM
           : strcmp(err, "EUNSUPPORTED") == 0 ? AIOSCOPE_EUNSUPPORTED
                                            : AIOSCOPE_EIO;
        aioscope_json_free(root);
        return rc;
    }
    rc = asc_snapshot_from_json(root, out);
    if (rc == AIOSCOPE_EPARSE) rc = AIOSCOPE_EPROTO;
    if (rc == 0 && info) {
        const aioscope_json *a = aioscope_json_get(root, "agent");
        const char *how = aioscope_json_get_string(a, "read_with");
        snprintf(info->read_with, sizeof info->read_with, "%s", how ? how : "?");
        info->collect_ms = aioscope_json_get_number(a, "collect_ms", -1);
        info->block_threshold_s = aioscope_json_get_number(a, "block_threshold_s", -1);
        info->nloops = 0;
        const aioscope_json *loops = aioscope_json_get(a, "loops");
        for (size_t i = 0; loops && loops->type == AIOSCOPE_JSON_ARRAY && i < loops->len &&
                           info->nloops < (int)(sizeof info->loops / sizeof info->loops[0]);
             i++) {
            info->loops[info->nloops].thread_id = asc_id(aioscope_json_get(&loops->items[i], "thread_id"));
            info->loops[info->nloops].lag_s = aioscope_json_get_number(&loops->items[i], "lag_s", -1);
            info->nloops++;
        }
    }
    aioscope_json_free(root);
    return rc;
}
