/* agent_client.c: the CLI side of the agent's control socket (see agent_client.h).
 *
 * The socket is looked for where the agent puts it: in $XDG_RUNTIME_DIR/aioscope first, then in
 * /tmp/aioscope-<uid> (the agent falls back to it when it has no usable XDG_RUNTIME_DIR, and a
 * shell may have one when the program did not, or the reverse). Both directories must pass the
 * same ownership checks the agent applies, so a socket planted by another user is never asked.
 * The answer is untrusted input: it is bounded in size, read by the binary form's checking
 * reader (snapshot_wire.c) or, for errors and the agent's own section, the strict JSON reader, and
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
#include "aioscope/snapshot_wire.h"

/* A snapshot of 100 000 tasks is about 60 MB of JSON (about 10 MB in the binary form); more than
 * this is not an answer we want to hold in memory. */
#define ASC_MAX_ANSWER (512u << 20)
/* The agent answers within its GIL wait (100 ms) plus the collection; a program that is being
 * torn down may never answer. */
#define ASC_ANSWER_TIMEOUT_S 10

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

/* A JSON number that is an id (a non-negative integer below 2^53); 0 when absent or not one. */
static uint64_t asc_id(const aioscope_json *v) {
    if (!v || v->type != AIOSCOPE_JSON_NUMBER || !(v->number >= 0) || v->number > 9007199254740992.0)
        return 0;
    return (uint64_t)v->number;
}

int asc_agent_snapshot(int pid, aioscope_snapshot **out, asc_agent_info *info) {
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc = asc_agent_request(pid, "snapshot binary", &text, &len);
    if (rc < 0) return rc;
    /* An error answer is a small JSON object; a snapshot is in the binary form. */
    if (text[0] == '{') {
        aioscope_json *root = NULL;
        rc = aioscope_json_parse(text, len, &root);
        const char *err = rc == 0 ? aioscope_json_get_string(root, "error") : NULL;
        rc = !err                                ? AIOSCOPE_EPROTO
           : strcmp(err, "EPERM") == 0        ? AIOSCOPE_EPERM
           : strcmp(err, "EUNSUPPORTED") == 0 ? AIOSCOPE_EUNSUPPORTED
                                              : AIOSCOPE_EIO;
        aioscope_json_free(root);
        free(text);
        return rc;
    }
    size_t aoff = 0, alen = 0;
    rc = aioscope_snapshot_from_binary(text, len, out, &aoff, &alen);
    if (rc == AIOSCOPE_EPARSE) rc = AIOSCOPE_EPROTO;
    aioscope_json *root = NULL;
    if (rc == 0 && info && alen && aioscope_json_parse(text + aoff, alen, &root) == 0) {
        const aioscope_json *a = root;
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
    } else if (rc == 0 && info) {
        memset(info, 0, sizeof *info);
        info->collect_ms = info->block_threshold_s = -1;
    }
    free(text);
    aioscope_json_free(root);
    return rc;
}
