/* The snapshot model (include/aioscope/snapshot.h): storage, string interning, the task index
 * and the JSON form that `ps|pstree|dump --json` print. */
#include "aioscope/snapshot.h"

#include <stdlib.h>
#include <string.h>

#include "aioscope/json.h"

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

static void asc__frames_json(aioscope_buf *b, const aioscope_snap_frame *f, size_t n) {
    aioscope_buf_puts(b, "[");
    for (size_t i = 0; i < n; i++) {
        aioscope_buf_puts(b, i ? ",{\"file\":" : "{\"file\":");
        aioscope_buf_json_string(b, f[i].file);
        aioscope_buf_puts(b, ",\"function\":");
        aioscope_buf_json_string(b, f[i].function);
        aioscope_buf_printf(b, ",\"line\":%d}", f[i].line);
    }
    aioscope_buf_puts(b, "]");
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

/* JSON has no 64-bit integers that every reader keeps exact; ids go out as decimal numbers
 * only when they fit in a double's 53-bit mantissa, which user-space addresses (< 2^47) do. */
void aioscope_snapshot_to_json(const aioscope_snapshot *s, aioscope_buf *b) {
    aioscope_buf_printf(b, "{\"pid\":%d,\"python\":\"%u.%u.%u\",\"source\":", s->pid,
                        s->py_version_hex >> 24, (s->py_version_hex >> 16) & 0xff,
                        (s->py_version_hex >> 8) & 0xff);
    aioscope_buf_json_string(b, s->source);
    aioscope_buf_printf(b, ",\"frozen\":%s,\"unavailable\":", s->frozen ? "true" : "false");
    aioscope_buf_puts(b, s->has_agent_fields ? "[]" : "[\"busy_s\",\"steps\",\"spawned_by\"]");
    aioscope_buf_puts(b, ",\"threads\":[");
    for (size_t i = 0; i < s->nthreads; i++) {
        const aioscope_snap_thread *th = &s->threads[i];
        aioscope_buf_printf(b, "%s{\"thread_id\":%llu,\"native_id\":%llu,\"loop_state\":", i ? "," : "",
                            (unsigned long long)th->thread_id, (unsigned long long)th->native_id);
        aioscope_buf_json_string(b, asc__loop_state_name(th->loop_state));
        aioscope_buf_puts(b, ",\"running_task\":");
        if (th->running_task >= 0 && (size_t)th->running_task < s->ntasks)
            aioscope_buf_printf(b, "%llu", (unsigned long long)s->tasks[th->running_task].id);
        else
            aioscope_buf_puts(b, "null");
        aioscope_buf_puts(b, ",\"stack\":");
        asc__frames_json(b, th->frames, th->nframes);
        aioscope_buf_puts(b, "}");
    }
    aioscope_buf_puts(b, "],\"tasks\":[");
    for (size_t i = 0; i < s->ntasks; i++) {
        const aioscope_snap_task *tk = &s->tasks[i];
        aioscope_buf_printf(b, "%s{\"id\":%llu,\"name\":", i ? "," : "", (unsigned long long)tk->id);
        aioscope_buf_json_string(b, tk->name);
        aioscope_buf_puts(b, ",\"state\":");
        aioscope_buf_json_string(b, asc__state_name(tk->state));
        aioscope_buf_puts(b, ",\"coroutine_stack\":");
        asc__frames_json(b, tk->coro, tk->ncoro);
        aioscope_buf_puts(b, ",\"awaiting\":");
        aioscope_buf_json_string(b, tk->awaiting);
        aioscope_buf_puts(b, ",\"awaiting_id\":");
        if (tk->awaiting_id) aioscope_buf_printf(b, "%llu", (unsigned long long)tk->awaiting_id);
        else aioscope_buf_puts(b, "null");
        aioscope_buf_puts(b, ",\"awaited_by\":[");
        for (size_t k = 0; k < tk->nawaited_by; k++)
            aioscope_buf_printf(b, "%s%llu", k ? "," : "", (unsigned long long)tk->awaited_by[k]);
        aioscope_buf_puts(b, "],\"thread_id\":");
        if (tk->thread >= 0 && (size_t)tk->thread < s->nthreads)
            aioscope_buf_printf(b, "%llu", (unsigned long long)s->threads[tk->thread].thread_id);
        else
            aioscope_buf_puts(b, "null");
        if (s->has_agent_fields) {
            aioscope_buf_puts(b, ",\"busy_s\":");
            aioscope_buf_json_number(b, tk->busy_s);
            aioscope_buf_printf(b, ",\"steps\":%ld,\"spawned_by\":", tk->steps);
            if (tk->spawned_by) aioscope_buf_printf(b, "%llu", (unsigned long long)tk->spawned_by);
            else aioscope_buf_puts(b, "null");
            aioscope_buf_puts(b, ",\"age_s\":");
            if (tk->age_s >= 0) aioscope_buf_json_number(b, tk->age_s);
            else aioscope_buf_puts(b, "null");
            aioscope_buf_printf(b, ",\"cancelling\":%s,\"exception\":", tk->cancelling ? "true" : "false");
            aioscope_buf_json_string(b, tk->exception);
        }
        aioscope_buf_puts(b, "}");
    }
    aioscope_buf_printf(b, "],\"unreadable_tasks\":%zu}", s->unreadable_tasks);
}
