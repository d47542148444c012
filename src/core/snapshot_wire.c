/* The compact form of a snapshot that the agent sends on its control socket (snapshot_wire.h).
 *
 * The JSON of aioscope_snapshot_to_json names every field of every task and repeats every file
 * name in every frame: about 430 bytes a task, 43 MB for 100 000 tasks, which takes longer to
 * write, send and parse than the snapshot takes to collect. This form is still JSON (so it can be
 * read with any tool while debugging) but positional, with every string once in a table:
 *
 *   {"format":"aioscope-wire-1","pid":N,"python":"3.12.1","source":"agent","frozen":false,
 *    "agent_fields":true,"unreadable_tasks":0,"strings":["...",...],
 *    "threads":[[thread_id,native_id,loop_state,running_task,[file,function,line,...]],...],
 *    "tasks":[[id,name,state,[file,function,line,...],awaiting,awaiting_id,[awaited_by...],
 *              thread,busy_s,steps,spawned_by,age_s,cancelling,exception],...]}
 *
 * Strings are indices into "strings" (-1 for none); running_task and thread are indices into
 * tasks and threads (-1 for none); states are the enums' values. The writer and the reader are
 * in this one file so that they cannot drift apart. The reader takes untrusted input: every
 * index is checked and every count bounded. */
#include "aioscope/snapshot_wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aioscope/error.h"

/* A frame list longer than this in an answer is cut (writers bound theirs far lower). */
#define ASC_WIRE_MAX_FRAMES 4096

/* ---- writer ------------------------------------------------------------------------------- */

/* String pointer -> table index. The snapshot interns its strings, so equal strings are one
 * pointer and a pointer-keyed table finds repeats without comparing bytes. */
typedef struct {
    const char **keys;
    long *vals;
    size_t cap, n;
    const char **order; /* the table in index order */
} asc_strtab;

static size_t asc_ptr_hash(const char *p, size_t cap) {
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x & (cap - 1);
}

static int asc_strtab_grow(asc_strtab *t) {
    size_t cap = t->cap ? t->cap * 2 : 1024;
    const char **keys = calloc(cap, sizeof *keys);
    long *vals = calloc(cap, sizeof *vals);
    const char **order = realloc(t->order, cap * sizeof *order);
    if (!keys || !vals || !order) {
        free(keys);
        free(vals);
        if (order) t->order = order;
        return -1;
    }
    t->order = order;
    for (size_t i = 0; i < t->cap; i++) {
        if (!t->keys[i]) continue;
        size_t j = asc_ptr_hash(t->keys[i], cap);
        while (keys[j]) j = (j + 1) & (cap - 1);
        keys[j] = t->keys[i];
        vals[j] = t->vals[i];
    }
    free(t->keys);
    free(t->vals);
    t->keys = keys;
    t->vals = vals;
    t->cap = cap;
    return 0;
}

/* The index of s (added when new), -1 for NULL or out of memory. */
static long asc_strtab_index(asc_strtab *t, const char *s) {
    if (!s) return -1;
    if (2 * (t->n + 1) > t->cap && asc_strtab_grow(t) < 0) return -1;
    size_t j = asc_ptr_hash(s, t->cap);
    while (t->keys[j]) {
        if (t->keys[j] == s) return t->vals[j];
        j = (j + 1) & (t->cap - 1);
    }
    t->keys[j] = s;
    t->vals[j] = (long)t->n;
    t->order[t->n] = s;
    return (long)t->n++;
}

static void asc_strtab_free(asc_strtab *t) {
    free(t->keys);
    free(t->vals);
    free(t->order);
}

/* Integers without printf: a snapshot of 100 000 tasks writes about two million of them. */
static void asc_put_u64(aioscope_buf *b, uint64_t v) {
    char tmp[24];
    int n = 0;
    do {
        tmp[sizeof tmp - 1 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    aioscope_buf_append(b, tmp + sizeof tmp - n, (size_t)n);
}

static void asc_put_i64(aioscope_buf *b, int64_t v) {
    if (v < 0) {
        aioscope_buf_append(b, "-", 1);
        asc_put_u64(b, (uint64_t)(-(v + 1)) + 1);
    } else {
        asc_put_u64(b, (uint64_t)v);
    }
}

static void asc_put_frames(aioscope_buf *b, asc_strtab *t, const aioscope_snap_frame *f, size_t n) {
    aioscope_buf_append(b, "[", 1);
    for (size_t i = 0; i < n; i++) {
        if (i) aioscope_buf_append(b, ",", 1);
        asc_put_i64(b, asc_strtab_index(t, f[i].file));
        aioscope_buf_append(b, ",", 1);
        asc_put_i64(b, asc_strtab_index(t, f[i].function));
        aioscope_buf_append(b, ",", 1);
        asc_put_i64(b, f[i].line);
    }
    aioscope_buf_append(b, "]", 1);
}

/* A double that may be "unknown" (negative): -1 then. */
static void asc_put_seconds(aioscope_buf *b, double v) {
    if (!(v >= 0)) {
        aioscope_buf_append(b, "-1", 2);
        return;
    }
    aioscope_buf_json_number(b, v);
}

void aioscope_snapshot_to_wire(const aioscope_snapshot *s, aioscope_buf *b) {
    asc_strtab t = {0};
    aioscope_buf body;
    aioscope_buf_init(&body);
    /* Threads and tasks first, into their own buffer: the string table they fill goes before
     * them in the output. */
    aioscope_buf_puts(&body, ",\"threads\":[");
    for (size_t i = 0; i < s->nthreads; i++) {
        const aioscope_snap_thread *th = &s->threads[i];
        aioscope_buf_append(&body, i ? ",[" : "[", i ? 2 : 1);
        asc_put_u64(&body, th->thread_id);
        aioscope_buf_append(&body, ",", 1);
        asc_put_u64(&body, th->native_id);
        aioscope_buf_append(&body, ",", 1);
        asc_put_i64(&body, (int64_t)th->loop_state);
        aioscope_buf_append(&body, ",", 1);
        asc_put_i64(&body, th->running_task);
        aioscope_buf_append(&body, ",", 1);
        asc_put_frames(&body, &t, th->frames, th->nframes);
        aioscope_buf_append(&body, "]", 1);
    }
    aioscope_buf_puts(&body, "],\"tasks\":[");
    for (size_t i = 0; i < s->ntasks; i++) {
        const aioscope_snap_task *k = &s->tasks[i];
        aioscope_buf_append(&body, i ? ",[" : "[", i ? 2 : 1);
        asc_put_u64(&body, k->id);
        aioscope_buf_append(&body, ",", 1);
        asc_put_i64(&body, asc_strtab_index(&t, k->name));
        aioscope_buf_append(&body, ",", 1);
        asc_put_i64(&body, (int64_t)k->state);
        aioscope_buf_append(&body, ",", 1);
        asc_put_frames(&body, &t, k->coro, k->ncoro);
        aioscope_buf_append(&body, ",", 1);
        asc_put_i64(&body, asc_strtab_index(&t, k->awaiting));
        aioscope_buf_append(&body, ",", 1);
        asc_put_u64(&body, k->awaiting_id);
        aioscope_buf_append(&body, ",[", 2);
        for (size_t j = 0; j < k->nawaited_by; j++) {
            if (j) aioscope_buf_append(&body, ",", 1);
            asc_put_u64(&body, k->awaited_by[j]);
        }
        aioscope_buf_append(&body, "],", 2);
        asc_put_i64(&body, k->thread);
        aioscope_buf_append(&body, ",", 1);
        asc_put_seconds(&body, k->busy_s);
        aioscope_buf_append(&body, ",", 1);
        asc_put_i64(&body, k->steps);
        aioscope_buf_append(&body, ",", 1);
        asc_put_u64(&body, k->spawned_by);
        aioscope_buf_append(&body, ",", 1);
        asc_put_seconds(&body, k->age_s);
        aioscope_buf_append(&body, k->cancelling ? ",1," : ",0,", 3);
        asc_put_i64(&body, asc_strtab_index(&t, k->exception));
        aioscope_buf_append(&body, "]", 1);
    }
    aioscope_buf_puts(&body, "]");

    aioscope_buf_printf(b, "{\"format\":\"aioscope-wire-1\",\"pid\":%d,\"python\":\"%u.%u.%u\",\"source\":",
                        s->pid, s->py_version_hex >> 24, (s->py_version_hex >> 16) & 0xff,
                        (s->py_version_hex >> 8) & 0xff);
    aioscope_buf_json_string(b, s->source);
    aioscope_buf_printf(b, ",\"frozen\":%s,\"agent_fields\":%s,\"unreadable_tasks\":%zu,\"strings\":[",
                        s->frozen ? "true" : "false", s->has_agent_fields ? "true" : "false",
                        s->unreadable_tasks);
    for (size_t i = 0; i < t.n; i++) {
        if (i) aioscope_buf_append(b, ",", 1);
        aioscope_buf_json_string(b, t.order[i]);
    }
    aioscope_buf_append(b, "]", 1);
    if (body.oom) b->oom = 1;
    else aioscope_buf_append(b, body.data, body.len);
    aioscope_buf_append(b, "}", 1);
    aioscope_buf_free(&body);
    asc_strtab_free(&t);
}

/* ---- reader --------------------------------------------------------------------------------- */

typedef struct {
    const char **v; /* interned into the snapshot */
    size_t n;
} asc_strings;

static int asc_num_ok(const aioscope_json *v) { return v && v->type == AIOSCOPE_JSON_NUMBER; }

/* An unsigned id: a non-negative integer below 2^53 (what a double keeps exact). */
static uint64_t asc_u64(const aioscope_json *v) {
    if (!asc_num_ok(v) || !(v->number >= 0) || v->number > 9007199254740992.0) return 0;
    return (uint64_t)v->number;
}

static long asc_index(const aioscope_json *v, size_t n) {
    if (!asc_num_ok(v) || !(v->number >= 0) || v->number >= (double)n) return -1;
    return (long)v->number;
}

static const char *asc_str(const asc_strings *st, const aioscope_json *v, const char *dflt) {
    long i = asc_index(v, st->n);
    return i >= 0 ? st->v[i] : dflt;
}

static int asc_frames_from(const asc_strings *st, const aioscope_json *arr, aioscope_snap_frame **out,
                           size_t *n) {
    *out = NULL;
    *n = 0;
    if (!arr || arr->type != AIOSCOPE_JSON_ARRAY || arr->len < 3) return 0;
    size_t cnt = arr->len / 3;
    if (cnt > ASC_WIRE_MAX_FRAMES) cnt = ASC_WIRE_MAX_FRAMES;
    aioscope_snap_frame *f = calloc(cnt, sizeof *f);
    if (!f) return AIOSCOPE_ENOMEM;
    for (size_t i = 0; i < cnt; i++) {
        f[i].file = asc_str(st, &arr->items[3 * i], "?");
        f[i].function = asc_str(st, &arr->items[3 * i + 1], "?");
        double line = asc_num_ok(&arr->items[3 * i + 2]) ? arr->items[3 * i + 2].number : 0;
        f[i].line = line >= 0 && line < 1e9 ? (int)line : 0;
    }
    *out = f;
    *n = cnt;
    return 0;
}

/* The i-th item of an array, or NULL. */
static const aioscope_json *asc_at(const aioscope_json *arr, size_t i) {
    return arr && arr->type == AIOSCOPE_JSON_ARRAY && i < arr->len ? &arr->items[i] : NULL;
}

static double asc_seconds(const aioscope_json *v) {
    return asc_num_ok(v) && v->number >= 0 && v->number < 1e12 ? v->number : -1;
}

int aioscope_snapshot_from_wire(const aioscope_json *root, aioscope_snapshot **out) {
    *out = NULL;
    const char *format = aioscope_json_get_string(root, "format");
    const aioscope_json *strings = aioscope_json_get(root, "strings");
    const aioscope_json *threads = aioscope_json_get(root, "threads");
    const aioscope_json *tasks = aioscope_json_get(root, "tasks");
    if (!format || strcmp(format, "aioscope-wire-1") != 0 || !strings ||
        strings->type != AIOSCOPE_JSON_ARRAY || !threads || threads->type != AIOSCOPE_JSON_ARRAY ||
        !tasks || tasks->type != AIOSCOPE_JSON_ARRAY)
        return AIOSCOPE_EPARSE;
    aioscope_snapshot *s = aioscope_snapshot_new();
    asc_strings st = {0};
    if (!s) return AIOSCOPE_ENOMEM;
    st.v = calloc(strings->len ? strings->len : 1, sizeof *st.v);
    if (!st.v) goto oom;
    for (size_t i = 0; i < strings->len; i++) {
        const aioscope_json *v = &strings->items[i];
        st.v[i] = aioscope_snapshot_intern(s, v->type == AIOSCOPE_JSON_STRING ? v->string : "?");
        if (!st.v[i]) goto oom;
    }
    st.n = strings->len;

    double pid = aioscope_json_get_number(root, "pid", 0);
    s->pid = pid > 0 && pid < 1e9 ? (int)pid : 0;
    unsigned maj = 0, min = 0, mic = 0;
    const char *py = aioscope_json_get_string(root, "python");
    if (py && sscanf(py, "%u.%u.%u", &maj, &min, &mic) >= 2)
        s->py_version_hex = (maj & 0xff) << 24 | (min & 0xff) << 16 | (mic & 0xff) << 8;
    const char *src = aioscope_json_get_string(root, "source");
    s->source = aioscope_snapshot_intern(s, src ? src : "agent");
    if (!s->source) goto oom;
    const aioscope_json *fz = aioscope_json_get(root, "frozen");
    s->frozen = fz && fz->type == AIOSCOPE_JSON_BOOL && fz->boolean;
    const aioscope_json *af = aioscope_json_get(root, "agent_fields");
    s->has_agent_fields = af && af->type == AIOSCOPE_JSON_BOOL && af->boolean;
    double ur = aioscope_json_get_number(root, "unreadable_tasks", 0);
    s->unreadable_tasks = ur > 0 && ur < 1e12 ? (size_t)ur : 0;

    s->threads = calloc(threads->len ? threads->len : 1, sizeof *s->threads);
    s->tasks = calloc(tasks->len ? tasks->len : 1, sizeof *s->tasks);
    if (!s->threads || !s->tasks) goto oom;
    for (size_t i = 0; i < tasks->len; i++) {
        const aioscope_json *o = &tasks->items[i];
        if (o->type != AIOSCOPE_JSON_ARRAY || o->len < 14) goto bad;
        aioscope_snap_task *k = &s->tasks[s->ntasks++];
        k->id = asc_u64(asc_at(o, 0));
        k->name = asc_str(&st, asc_at(o, 1), "?");
        double state = asc_num_ok(asc_at(o, 2)) ? asc_at(o, 2)->number : 0;
        k->state = state == 1 ? AIOSCOPE_TASK_CANCELLED : state == 2 ? AIOSCOPE_TASK_FINISHED : AIOSCOPE_TASK_PENDING;
        if (asc_frames_from(&st, asc_at(o, 3), &k->coro, &k->ncoro) < 0) goto oom;
        k->awaiting = asc_str(&st, asc_at(o, 4), NULL);
        k->awaiting_id = asc_u64(asc_at(o, 5));
        const aioscope_json *by = asc_at(o, 6);
        if (by && by->type == AIOSCOPE_JSON_ARRAY && by->len) {
            k->awaited_by = calloc(by->len, sizeof *k->awaited_by);
            if (!k->awaited_by) goto oom;
            for (size_t j = 0; j < by->len; j++) {
                uint64_t id = asc_u64(&by->items[j]);
                if (id) k->awaited_by[k->nawaited_by++] = id;
            }
        }
        k->thread = asc_index(asc_at(o, 7), threads->len);
        k->busy_s = asc_seconds(asc_at(o, 8));
        double steps = asc_num_ok(asc_at(o, 9)) ? asc_at(o, 9)->number : -1;
        k->steps = steps >= 0 && steps < 9e15 ? (long)steps : -1;
        k->spawned_by = asc_u64(asc_at(o, 10));
        k->age_s = asc_seconds(asc_at(o, 11));
        k->cancelling = asc_num_ok(asc_at(o, 12)) && asc_at(o, 12)->number == 1;
        k->exception = asc_str(&st, asc_at(o, 13), NULL);
    }
    for (size_t i = 0; i < threads->len; i++) {
        const aioscope_json *o = &threads->items[i];
        if (o->type != AIOSCOPE_JSON_ARRAY || o->len < 5) goto bad;
        aioscope_snap_thread *th = &s->threads[s->nthreads++];
        th->thread_id = asc_u64(asc_at(o, 0));
        th->native_id = asc_u64(asc_at(o, 1));
        double ls = asc_num_ok(asc_at(o, 2)) ? asc_at(o, 2)->number : 0;
        th->loop_state = ls == 1 ? AIOSCOPE_LOOP_POLLING : ls == 2 ? AIOSCOPE_LOOP_RUNNING : AIOSCOPE_LOOP_NONE;
        th->running_task = asc_index(asc_at(o, 3), s->ntasks);
        if (asc_frames_from(&st, asc_at(o, 4), &th->frames, &th->nframes) < 0) goto oom;
    }
    free(st.v);
    *out = s;
    return 0;
bad:
    free(st.v);
    aioscope_snapshot_free(s);
    return AIOSCOPE_EPARSE;
oom:
    free(st.v);
    aioscope_snapshot_free(s);
    return AIOSCOPE_ENOMEM;
}
