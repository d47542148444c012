/* The snapshot model (include/aioscope/snapshot.h): storage, string interning, the task index
 * and the JSON form that `ps|pstree|dump --json` print. */
#include "aioscope/snapshot.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "aioscope/json.h"
#include "core/numtext.h"

/* String storage: an open-addressing set of owned strings (interned: file and function names
 * repeat across every task), and an id -> task index map built on demand. */
typedef struct {
    char **strs;
    size_t cap, count;
    uint64_t *ids;
    long *idx;
    size_t id_cap, id_count; /* id_count: tasks indexed so far */
    struct asc__chunk *chunks; /* bump-allocated unique strings */
} asc__arena;

/* 64 KiB blocks of string storage; a longer string gets a block of its own. */
#define ASC_CHUNK_SIZE 65536
struct asc__chunk {
    struct asc__chunk *next;
    size_t used, cap;
    char data[];
};

aioscope_snapshot *aioscope_snapshot_new(void) {
    aioscope_snapshot *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    if (!(s->arena = calloc(1, sizeof(asc__arena)))) {
        free(s);
        return NULL;
    }
    s->source = "memory";
    return s;
}

void aioscope_snapshot_free(aioscope_snapshot *s) {
    if (!s) return;
    for (size_t i = 0; i < s->nthreads; i++) free(s->threads[i].frames);
    for (size_t i = 0; i < s->ntasks; i++) {
        free(s->tasks[i].coro);
        free(s->tasks[i].awaited_by);
    }
    free(s->threads);
    free(s->tasks);
    asc__arena *a = s->arena;
    if (a) {
        for (size_t i = 0; i < a->cap; i++) free(a->strs[i]);
        free(a->strs);
        free(a->ids);
        free(a->idx);
        while (a->chunks) {
            struct asc__chunk *next = a->chunks->next;
            free(a->chunks);
            a->chunks = next;
        }
        free(a);
    }
    free(s);
}

static uint64_t asc__hash(const char *s) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

const char *aioscope_snapshot_intern(aioscope_snapshot *snap, const char *s) {
    asc__arena *a = snap->arena;
    if (!s) s = "?";
    if ((a->count + 1) * 2 > a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 256;
        char **fresh = calloc(cap, sizeof *fresh);
        if (!fresh) return NULL;
        for (size_t i = 0; i < a->cap; i++) {
            if (!a->strs[i]) continue;
            size_t j = asc__hash(a->strs[i]) & (cap - 1);
            while (fresh[j]) j = (j + 1) & (cap - 1);
            fresh[j] = a->strs[i];
        }
        free(a->strs);
        a->strs = fresh;
        a->cap = cap;
    }
    size_t j = asc__hash(s) & (a->cap - 1);
    for (; a->strs[j]; j = (j + 1) & (a->cap - 1))
        if (strcmp(a->strs[j], s) == 0) return a->strs[j];
    if (!(a->strs[j] = strdup(s))) return NULL;
    a->count++;
    return a->strs[j];
}

const char *aioscope_snapshot_strdup(aioscope_snapshot *snap, const char *s) {
    asc__arena *a = snap->arena;
    size_t n = strlen(s) + 1;
    struct asc__chunk *c = a->chunks;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > ASC_CHUNK_SIZE ? n : ASC_CHUNK_SIZE;
        if (!(c = malloc(sizeof *c + cap))) return NULL;
        c->used = 0;
        c->cap = cap;
        c->next = a->chunks;
        a->chunks = c;
    }
    char *p = c->data + c->used;
    memcpy(p, s, n);
    c->used += n;
    return p;
}

static size_t asc__id_slot(uint64_t id, size_t cap) {
    return (size_t)(((id >> 4) * 0x9E3779B97F4A7C15ULL) >> 17) & (cap - 1);
}

long aioscope_snapshot_find_task(aioscope_snapshot *snap, uint64_t id) {
    asc__arena *a = snap->arena;
    if (a->id_count != snap->ntasks) {
        /* (Re)build the index: tasks were added since the last lookup. */
        size_t cap = 16;
        while (cap < snap->ntasks * 2) cap *= 2;
        uint64_t *ids = calloc(cap, sizeof *ids);
        long *idx = calloc(cap, sizeof *idx);
        if (!ids || !idx) {
            free(ids);
            free(idx);
            for (size_t i = 0; i < snap->ntasks; i++)
                if (snap->tasks[i].id == id) return (long)i;
            return -1;
        }
        for (size_t i = 0; i < snap->ntasks; i++) {
            size_t j = asc__id_slot(snap->tasks[i].id, cap);
            while (ids[j] && ids[j] != snap->tasks[i].id) j = (j + 1) & (cap - 1);
            ids[j] = snap->tasks[i].id;
            idx[j] = (long)i;
        }
        free(a->ids);
        free(a->idx);
        a->ids = ids;
        a->idx = idx;
        a->id_cap = cap;
        a->id_count = snap->ntasks;
    }
    if (!id || !a->id_cap) return -1;
    for (size_t j = asc__id_slot(id, a->id_cap); a->ids[j]; j = (j + 1) & (a->id_cap - 1))
        if (a->ids[j] == id) return a->idx[j];
    return -1;
}

void aioscope_snapshot_reindex(aioscope_snapshot *snap) {
    asc__arena *a = snap->arena;
    a->id_count = (size_t)-1;
}

/* ---- the JSON form ------------------------------------------------------------------------------
 * What `ps|pstree|dump --json` print and the agent's "snapshot json" answer: one object per
 * thread and per task, 100 000 tasks for a big program (45 MB of text). It is built without
 * printf, whose format parsing was most of `ps --json`'s time: literal pieces are appended as
 * they are, numbers go through src/core/numtext.h (printf's text exactly, without printf). */

static void asc__put(aioscope_buf *b, const char *s) { aioscope_buf_append(b, s, strlen(s)); }

static void asc__put_u64(aioscope_buf *b, uint64_t v) {
    char tmp[24];
    asc__put(b, asc_num_u64(v, tmp));
}

static void asc__put_i64(aioscope_buf *b, int64_t v) {
    char tmp[24];
    asc__put(b, asc_num_i64(v, tmp));
}

/* A JSON string, or null for NULL. Printable ASCII without quotes or backslashes (nearly every
 * name and file) is copied as is; anything else goes through the core's escaping. */
static void asc__json_str(aioscope_buf *b, const char *s) {
    if (!s) {
        aioscope_buf_append(b, "null", 4);
        return;
    }
    const unsigned char *p = (const unsigned char *)s;
    while (*p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\') p++;
    if (*p) {
        aioscope_buf_json_string(b, s);
        return;
    }
    aioscope_buf_append(b, "\"", 1);
    aioscope_buf_append(b, s, (size_t)(p - (const unsigned char *)s));
    aioscope_buf_append(b, "\"", 1);
}

/* The text of aioscope_buf_json_number: null when not finite, "%lld" when integral, else
 * "%.6g". The range test comes first: converting a double outside long long's range is
 * undefined. */
static void asc__json_num(aioscope_buf *b, double v) {
    char tmp[ASC_NUM_TEXT_MAX];
    if (!isfinite(v)) {
        aioscope_buf_append(b, "null", 4);
    } else if (fabs(v) < 1e15 && v == (double)(long long)v) {
        asc__put_i64(b, (long long)v);
    } else {
        asc_num_g6(tmp, v);
        asc__put(b, tmp);
    }
}

/* An id, or null for 0 (no such object). */
static void asc__json_id(aioscope_buf *b, uint64_t id) {
    if (id) asc__put_u64(b, id);
    else aioscope_buf_append(b, "null", 4);
}

static void asc__json_frames(aioscope_buf *b, const aioscope_snap_frame *f, size_t n) {
    asc__put(b, "[");
    for (size_t i = 0; i < n; i++) {
        asc__put(b, i ? ",{\"file\":" : "{\"file\":");
        asc__json_str(b, f[i].file);
        asc__put(b, ",\"function\":");
        asc__json_str(b, f[i].function);
        asc__put(b, ",\"line\":");
        asc__put_i64(b, f[i].line);
        asc__put(b, "}");
    }
    asc__put(b, "]");
}

static const char *asc__state_name(aioscope_task_state s) {
    switch (s) {
    case AIOSCOPE_TASK_PENDING: return "pending";
    case AIOSCOPE_TASK_CANCELLED: return "cancelled";
    case AIOSCOPE_TASK_FINISHED: return "finished";
    }
    return "unknown";
}

static const char *asc__loop_state_name(aioscope_loop_state s) {
    switch (s) {
    case AIOSCOPE_LOOP_NONE: return NULL;
    case AIOSCOPE_LOOP_POLLING: return "polling";
    case AIOSCOPE_LOOP_RUNNING: return "running";
    }
    return NULL;
}

/* Past this much text, aioscope_snapshot_write_json writes b out and starts it again: one large
 * write at a time, and no buffer the size of the whole output. */
#define ASC_JSON_FLUSH_AT (1u << 20)

/* JSON has no 64-bit integers that every reader keeps exact; ids go out as decimal numbers
 * since they fit in a double's 53-bit mantissa, which user-space addresses (< 2^47) do. */
void aioscope_snapshot_write_json(const aioscope_snapshot *s, aioscope_buf *b, FILE *out) {
    char tmp[24];
    asc__put(b, "{\"pid\":");
    asc__put_i64(b, s->pid);
    asc__put(b, ",\"python\":\"");
    asc__put(b, asc_num_u64(s->py_version_hex >> 24, tmp));
    asc__put(b, ".");
    asc__put(b, asc_num_u64((s->py_version_hex >> 16) & 0xff, tmp));
    asc__put(b, ".");
    asc__put(b, asc_num_u64((s->py_version_hex >> 8) & 0xff, tmp));
    asc__put(b, "\",\"source\":");
    asc__json_str(b, s->source);
    asc__put(b, s->frozen ? ",\"frozen\":true,\"unavailable\":" : ",\"frozen\":false,\"unavailable\":");
    asc__put(b, s->has_agent_fields ? "[]" : "[\"busy_s\",\"steps\",\"spawned_by\"]");
    asc__put(b, ",\"threads\":[");
    for (size_t i = 0; i < s->nthreads; i++) {
        const aioscope_snap_thread *th = &s->threads[i];
        asc__put(b, i ? ",{\"thread_id\":" : "{\"thread_id\":");
        asc__put_u64(b, th->thread_id);
        asc__put(b, ",\"native_id\":");
        asc__put_u64(b, th->native_id);
        asc__put(b, ",\"loop_state\":");
        asc__json_str(b, asc__loop_state_name(th->loop_state));
        asc__put(b, ",\"running_task\":");
        if (th->running_task >= 0 && (size_t)th->running_task < s->ntasks)
            asc__put_u64(b, s->tasks[th->running_task].id);
        else
            asc__put(b, "null");
        asc__put(b, ",\"stack\":");
        asc__json_frames(b, th->frames, th->nframes);
        asc__put(b, "}");
    }
    asc__put(b, "],\"tasks\":[");
    for (size_t i = 0; i < s->ntasks && !b->oom; i++) {
        const aioscope_snap_task *tk = &s->tasks[i];
        asc__put(b, i ? ",{\"id\":" : "{\"id\":");
        asc__put_u64(b, tk->id);
        asc__put(b, ",\"name\":");
        asc__json_str(b, tk->name);
        asc__put(b, ",\"state\":\"");
        asc__put(b, asc__state_name(tk->state));
        asc__put(b, "\",\"coroutine_stack\":");
        asc__json_frames(b, tk->coro, tk->ncoro);
        asc__put(b, ",\"awaiting\":");
        asc__json_str(b, tk->awaiting);
        asc__put(b, ",\"awaiting_id\":");
        asc__json_id(b, tk->awaiting_id);
        asc__put(b, ",\"awaited_by\":[");
        for (size_t k = 0; k < tk->nawaited_by; k++) {
            if (k) asc__put(b, ",");
            asc__put_u64(b, tk->awaited_by[k]);
        }
        asc__put(b, "],\"thread_id\":");
        if (tk->thread >= 0 && (size_t)tk->thread < s->nthreads) asc__put_u64(b, s->threads[tk->thread].thread_id);
        else asc__put(b, "null");
        if (s->has_agent_fields) {
            asc__put(b, ",\"busy_s\":");
            asc__json_num(b, tk->busy_s);
            asc__put(b, ",\"steps\":");
            asc__put_i64(b, tk->steps);
            asc__put(b, ",\"spawned_by\":");
            asc__json_id(b, tk->spawned_by);
            asc__put(b, ",\"age_s\":");
            if (tk->age_s >= 0) asc__json_num(b, tk->age_s);
            else asc__put(b, "null");
            asc__put(b, tk->cancelling ? ",\"cancelling\":true,\"exception\":" : ",\"cancelling\":false,\"exception\":");
            asc__json_str(b, tk->exception);
        }
        asc__put(b, "}");
        if (out && b->len >= ASC_JSON_FLUSH_AT && !b->oom) {
            fwrite(b->data, 1, b->len, out);
            b->len = 0;
        }
    }
    asc__put(b, "],\"unreadable_tasks\":");
    asc__put_u64(b, s->unreadable_tasks);
    asc__put(b, "}");
}

void aioscope_snapshot_to_json(const aioscope_snapshot *s, aioscope_buf *b) { aioscope_snapshot_write_json(s, b, NULL); }
