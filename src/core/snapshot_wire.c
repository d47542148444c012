/* The forms of a snapshot that the agent sends on its control socket (snapshot_wire.h).
 *
 * The JSON of aioscope_snapshot_to_json names every field of every task and repeats every file
 * name in every frame: about 430 bytes a task, 43 MB for 100 000 tasks, which takes longer to
 * write, send and parse than the snapshot takes to collect. Two smaller forms share one string
 * table (every string once, frames and names as indices into it):
 *
 * The compact JSON form, for tools that want to read the answer with a JSON library:
 *
 *   {"format":"aioscope-wire-1","pid":N,"python":"3.12.1","source":"agent","frozen":false,
 *    "agent_fields":true,"unreadable_tasks":0,"strings":["...",...],
 *    "threads":[[thread_id,native_id,loop_state,running_task,[file,function,line,...]],...],
 *    "tasks":[[id,name,state,[file,function,line,...],awaiting,awaiting_id,[awaited_by...],
 *              thread,busy_s,steps,spawned_by,age_s,cancelling,exception],...]}
 *
 * Strings are indices into "strings" (-1 for none); running_task and thread are indices into
 * tasks and threads (-1 for none); states are the enums' values.
 *
 * The binary form (below), which the CLI reads: the same fields in fixed-width little-endian
 * slots. Its writer and its reader are in this one file so that they cannot drift apart. The
 * reader takes untrusted input: every index is checked and every count bounded. */
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

/* ---- the binary form ------------------------------------------------------------------------
 *
 * What `aioscope ps|pstree|dump|top` ask for ("snapshot binary"). Even positional, JSON costs a
 * decimal conversion per number on both sides (printf of doubles, strtod), about 1 us a task each
 * way; this form is fixed-width little-endian integers and IEEE doubles, written and read with
 * shifts. Layout (every count and index checked by the reader):
 *
 *   "ASCWIRE2"                                        8-byte magic
 *   i32 pid, u32 py_version_hex, u32 flags (1 frozen, 2 agent fields), u64 unreadable_tasks,
 *   i32 source                                        (a string index, -1 none)
 *   u32 nstrings, then per string: u32 len, len bytes, a NUL  (no NUL inside)
 *   u32 nthreads, then per thread: u64 thread_id, u64 native_id, u32 loop_state,
 *       i32 running_task, u32 nframes, nframes x (i32 file, i32 function, i32 line)
 *   u32 ntasks, then per task: u64 id, i32 name, u32 state, i32 awaiting, u64 awaiting_id,
 *       i32 thread, f64 busy_s, i64 steps, u64 spawned_by, f64 age_s, u32 cancelling,
 *       i32 exception, u32 ncoro, u32 nawaited_by, ncoro frames, nawaited_by x u64
 *   u32 agent_len, agent_len bytes                   the agent's own section, a JSON object
 *
 * Strings are indices into the table (-1 for none), as in the JSON form. */

#define ASC_BIN_MAGIC "ASCWIRE2"
#define ASC_BIN_FRAME 12      /* bytes of one frame */
#define ASC_BIN_THREAD 28     /* bytes of a thread before its frames */
#define ASC_BIN_TASK 80       /* bytes of a task before its frames and awaited_by */
/* Bounds on what a reader accepts, far above anything the agent sends. */
#define ASC_BIN_MAX_AWAITED 1000000
#define ASC_BIN_MAX_STRING (16u << 20)

/* The writer fills a plain growing byte array; one task's bytes are reserved at once, so the
 * stores below need no per-field checks. */
typedef struct {
    unsigned char *p;
    size_t len, cap;
    int oom;
} asc_bw;

static unsigned char *asc_bw_reserve(asc_bw *w, size_t n) {
    if (w->oom) return NULL;
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < w->len + n) cap *= 2;
        unsigned char *p = realloc(w->p, cap);
        if (!p) {
            w->oom = 1;
            return NULL;
        }
        w->p = p;
        w->cap = cap;
    }
    unsigned char *at = w->p + w->len;
    w->len += n;
    return at;
}

static unsigned char *asc_st32(unsigned char *o, uint32_t v) {
    o[0] = (unsigned char)v;
    o[1] = (unsigned char)(v >> 8);
    o[2] = (unsigned char)(v >> 16);
    o[3] = (unsigned char)(v >> 24);
    return o + 4;
}

static unsigned char *asc_st64(unsigned char *o, uint64_t v) {
    asc_st32(o, (uint32_t)v);
    return asc_st32(o + 4, (uint32_t)(v >> 32));
}

static unsigned char *asc_stf64(unsigned char *o, double d) {
    uint64_t v;
    memcpy(&v, &d, sizeof v);
    return asc_st64(o, v);
}

static unsigned char *asc_st_frames(unsigned char *o, asc_strtab *t, const aioscope_snap_frame *f, size_t n) {
    for (size_t i = 0; i < n; i++) {
        o = asc_st32(o, (uint32_t)asc_strtab_index(t, f[i].file));
        o = asc_st32(o, (uint32_t)asc_strtab_index(t, f[i].function));
        o = asc_st32(o, (uint32_t)f[i].line);
    }
    return o;
}

void aioscope_snapshot_to_binary(const aioscope_snapshot *s, const char *agent_json, aioscope_buf *b) {
    asc_strtab t = {0};
    asc_bw body = {0}, head = {0};
    unsigned char *o;
    long source = asc_strtab_index(&t, s->source);
    /* Threads and tasks first: the string table they fill goes before them. */
    if ((o = asc_bw_reserve(&body, 4))) asc_st32(o, (uint32_t)s->nthreads);
    for (size_t i = 0; i < s->nthreads; i++) {
        const aioscope_snap_thread *th = &s->threads[i];
        if (!(o = asc_bw_reserve(&body, ASC_BIN_THREAD + ASC_BIN_FRAME * th->nframes))) break;
        o = asc_st64(o, th->thread_id);
        o = asc_st64(o, th->native_id);
        o = asc_st32(o, (uint32_t)th->loop_state);
        o = asc_st32(o, (uint32_t)th->running_task);
        o = asc_st32(o, (uint32_t)th->nframes);
        asc_st_frames(o, &t, th->frames, th->nframes);
    }
    if ((o = asc_bw_reserve(&body, 4))) asc_st32(o, (uint32_t)s->ntasks);
    for (size_t i = 0; i < s->ntasks; i++) {
        const aioscope_snap_task *k = &s->tasks[i];
        if (!(o = asc_bw_reserve(&body, ASC_BIN_TASK + ASC_BIN_FRAME * k->ncoro + 8 * k->nawaited_by))) break;
        o = asc_st64(o, k->id);
        o = asc_st32(o, (uint32_t)asc_strtab_index(&t, k->name));
        o = asc_st32(o, (uint32_t)k->state);
        o = asc_st32(o, (uint32_t)asc_strtab_index(&t, k->awaiting));
        o = asc_st64(o, k->awaiting_id);
        o = asc_st32(o, (uint32_t)k->thread);
        o = asc_stf64(o, k->busy_s);
        o = asc_st64(o, (uint64_t)(int64_t)k->steps);
        o = asc_st64(o, k->spawned_by);
        o = asc_stf64(o, k->age_s);
        o = asc_st32(o, (uint32_t)(k->cancelling != 0));
        o = asc_st32(o, (uint32_t)asc_strtab_index(&t, k->exception));
        o = asc_st32(o, (uint32_t)k->ncoro);
        o = asc_st32(o, (uint32_t)k->nawaited_by);
        o = asc_st_frames(o, &t, k->coro, k->ncoro);
        for (size_t j = 0; j < k->nawaited_by; j++) o = asc_st64(o, k->awaited_by[j]);
    }
    size_t alen = agent_json ? strlen(agent_json) : 0;
    if ((o = asc_bw_reserve(&body, 4 + alen))) {
        o = asc_st32(o, (uint32_t)alen);
        if (alen) memcpy(o, agent_json, alen);
    }

    if ((o = asc_bw_reserve(&head, 8 + 4 + 4 + 4 + 8 + 4 + 4))) {
        memcpy(o, ASC_BIN_MAGIC, 8);
        o = asc_st32(o + 8, (uint32_t)s->pid);
        o = asc_st32(o, s->py_version_hex);
        o = asc_st32(o, (s->frozen ? 1u : 0u) | (s->has_agent_fields ? 2u : 0u));
        o = asc_st64(o, (uint64_t)s->unreadable_tasks);
        o = asc_st32(o, (uint32_t)source);
        asc_st32(o, (uint32_t)t.n);
    }
    for (size_t i = 0; i < t.n; i++) {
        size_t n = strlen(t.order[i]);
        if (!(o = asc_bw_reserve(&head, 4 + n + 1))) break;
        o = asc_st32(o, (uint32_t)n);
        memcpy(o, t.order[i], n + 1);
    }
    /* A string table that could not grow (out of memory) gave -1 indices: the answer would be
     * wrong, not just short, so it is not sent. */
    if (head.oom || body.oom || t.n > (size_t)INT32_MAX) {
        b->oom = 1;
    } else {
        aioscope_buf_append(b, (const char *)head.p, head.len);
        aioscope_buf_append(b, (const char *)body.p, body.len);
    }
    free(head.p);
    free(body.p);
    asc_strtab_free(&t);
}

/* The reader: untrusted bytes. Every read checks what is left (a short read sets err and yields
 * zeros), and every count is checked against the bytes left before anything is allocated for it,
 * so a lying count cannot make us allocate more than the answer's own size. */
typedef struct {
    const unsigned char *p, *end;
    int err;
} asc_br;

static int asc_br_need(asc_br *r, size_t n) {
    if (r->err || (size_t)(r->end - r->p) < n) {
        r->err = 1;
        return 0;
    }
    return 1;
}

static uint32_t asc_ld32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t asc_ld64(const unsigned char *p) { return asc_ld32(p) | (uint64_t)asc_ld32(p + 4) << 32; }

static uint32_t asc_br32(asc_br *r) {
    if (!asc_br_need(r, 4)) return 0;
    uint32_t v = asc_ld32(r->p);
    r->p += 4;
    return v;
}

/* A count of items of at least `each` bytes: 0 (and err) when the rest cannot hold them. */
static size_t asc_br_count(asc_br *r, size_t each) {
    uint32_t n = asc_br32(r);
    if (r->err || (uint64_t)n * each > (uint64_t)(r->end - r->p)) {
        r->err = 1;
        return 0;
    }
    return n;
}

typedef struct {
    const char **v;
    size_t n;
} asc_bstrings;

static const char *asc_bstr(const asc_bstrings *st, uint32_t i, const char *dflt) {
    return i < st->n ? st->v[i] : dflt;
}

static double asc_bseconds(uint64_t bits) {
    double v;
    memcpy(&v, &bits, sizeof v);
    return v >= 0 && v < 1e12 ? v : -1; /* also NaN */
}

/* n frames at q (already checked to be there) into a fresh array; 0 or AIOSCOPE_ENOMEM. */
static int asc_br_frames(const unsigned char *q, size_t n, const asc_bstrings *st, aioscope_snap_frame **out) {
    *out = NULL;
    if (!n) return 0;
    aioscope_snap_frame *f = malloc(n * sizeof *f);
    if (!f) return AIOSCOPE_ENOMEM;
    for (size_t i = 0; i < n; i++, q += ASC_BIN_FRAME) {
        f[i].file = asc_bstr(st, asc_ld32(q), "?");
        f[i].function = asc_bstr(st, asc_ld32(q + 4), "?");
        uint32_t line = asc_ld32(q + 8);
        f[i].line = line < 1000000000u ? (int)line : 0;
    }
    *out = f;
    return 0;
}

int aioscope_snapshot_from_binary(const void *data, size_t len, aioscope_snapshot **out, size_t *agent_off,
                                  size_t *agent_len) {
    *out = NULL;
    if (agent_off) *agent_off = *agent_len = 0;
    asc_br r = {data, (const unsigned char *)data + len, 0};
    asc_bstrings st = {0};
    int rc = AIOSCOPE_EPARSE;
    if (len < 8 || memcmp(data, ASC_BIN_MAGIC, 8) != 0) return AIOSCOPE_EPARSE;
    r.p += 8;
    aioscope_snapshot *s = aioscope_snapshot_new();
    if (!s) return AIOSCOPE_ENOMEM;
    if (!asc_br_need(&r, 28)) goto fail;
    uint32_t pid = asc_ld32(r.p), flags = asc_ld32(r.p + 8);
    s->pid = pid < 1000000000u ? (int)pid : 0;
    s->py_version_hex = asc_ld32(r.p + 4);
    s->frozen = (flags & 1) != 0;
    s->has_agent_fields = (flags & 2) != 0;
    uint64_t ur = asc_ld64(r.p + 12);
    s->unreadable_tasks = ur < 1000000000000ULL ? (size_t)ur : 0;
    uint32_t source = asc_ld32(r.p + 20);
    r.p += 24;

    st.n = asc_br_count(&r, 5);
    if (r.err) goto fail;
    if (st.n && !(st.v = malloc(st.n * sizeof *st.v))) goto oom;
    for (size_t i = 0; i < st.n; i++) {
        uint32_t n = asc_br32(&r);
        /* The NUL after the bytes lets the string be copied in place; one inside would cut it. */
        if (n > ASC_BIN_MAX_STRING || !asc_br_need(&r, (size_t)n + 1) || r.p[n] != '\0' ||
            memchr(r.p, '\0', n) != NULL)
            goto fail;
        if (!(st.v[i] = aioscope_snapshot_strdup(s, (const char *)r.p))) goto oom;
        r.p += n + 1;
    }
    if (source < st.n) s->source = st.v[source];

    size_t nthreads = asc_br_count(&r, ASC_BIN_THREAD);
    if (r.err) goto fail;
    if (nthreads && !(s->threads = calloc(nthreads, sizeof *s->threads))) goto oom;
    for (size_t i = 0; i < nthreads; i++) {
        if (!asc_br_need(&r, ASC_BIN_THREAD)) goto fail;
        aioscope_snap_thread *th = &s->threads[s->nthreads++];
        th->thread_id = asc_ld64(r.p);
        th->native_id = asc_ld64(r.p + 8);
        uint32_t ls = asc_ld32(r.p + 16);
        th->loop_state = ls == 1 ? AIOSCOPE_LOOP_POLLING : ls == 2 ? AIOSCOPE_LOOP_RUNNING : AIOSCOPE_LOOP_NONE;
        th->running_task = (long)(int32_t)asc_ld32(r.p + 20); /* checked once the tasks are in */
        uint32_t nf = asc_ld32(r.p + 24);
        r.p += ASC_BIN_THREAD;
        if (nf > ASC_WIRE_MAX_FRAMES || !asc_br_need(&r, (size_t)nf * ASC_BIN_FRAME)) goto fail;
        if (asc_br_frames(r.p, nf, &st, &th->frames) < 0) goto oom;
        th->nframes = nf;
        r.p += (size_t)nf * ASC_BIN_FRAME;
    }

    size_t ntasks = asc_br_count(&r, ASC_BIN_TASK);
    if (r.err) goto fail;
    if (ntasks && !(s->tasks = calloc(ntasks, sizeof *s->tasks))) goto oom;
    for (size_t i = 0; i < ntasks; i++) {
        if (!asc_br_need(&r, ASC_BIN_TASK)) goto fail;
        aioscope_snap_task *k = &s->tasks[s->ntasks++];
        const unsigned char *q = r.p;
        k->id = asc_ld64(q);
        k->name = asc_bstr(&st, asc_ld32(q + 8), "?");
        uint32_t state = asc_ld32(q + 12);
        k->state = state == 1 ? AIOSCOPE_TASK_CANCELLED : state == 2 ? AIOSCOPE_TASK_FINISHED : AIOSCOPE_TASK_PENDING;
        k->awaiting = asc_bstr(&st, asc_ld32(q + 16), NULL);
        k->awaiting_id = asc_ld64(q + 20);
        uint32_t th = asc_ld32(q + 28);
        k->thread = th < s->nthreads ? (long)th : -1;
        k->busy_s = asc_bseconds(asc_ld64(q + 32));
        int64_t steps = (int64_t)asc_ld64(q + 40);
        k->steps = steps >= 0 && steps < 9000000000000000LL ? (long)steps : -1;
        k->spawned_by = asc_ld64(q + 48);
        k->age_s = asc_bseconds(asc_ld64(q + 56));
        k->cancelling = asc_ld32(q + 64) == 1;
        k->exception = asc_bstr(&st, asc_ld32(q + 68), NULL);
        uint32_t nc = asc_ld32(q + 72), na = asc_ld32(q + 76);
        r.p += ASC_BIN_TASK;
        /* Both counts bounded before multiplying, so the sum cannot overflow. */
        if (nc > ASC_WIRE_MAX_FRAMES || na > ASC_BIN_MAX_AWAITED ||
            !asc_br_need(&r, (size_t)nc * ASC_BIN_FRAME + (size_t)na * 8))
            goto fail;
        if (asc_br_frames(r.p, nc, &st, &k->coro) < 0) goto oom;
        k->ncoro = nc;
        r.p += (size_t)nc * ASC_BIN_FRAME;
        if (na) {
            if (!(k->awaited_by = malloc(na * sizeof *k->awaited_by))) goto oom;
            for (uint32_t j = 0; j < na; j++, r.p += 8) {
                uint64_t id = asc_ld64(r.p);
                if (id) k->awaited_by[k->nawaited_by++] = id;
            }
        }
    }
    for (size_t i = 0; i < s->nthreads; i++)
        if (s->threads[i].running_task < 0 || s->threads[i].running_task >= (long)s->ntasks)
            s->threads[i].running_task = -1;

    uint32_t alen = asc_br32(&r);
    if (!asc_br_need(&r, alen)) goto fail;
    if (agent_off) {
        *agent_off = (size_t)(r.p - (const unsigned char *)data);
        *agent_len = alen;
    }
    r.p += alen;
    if (r.p != r.end) goto fail; /* trailing bytes: not what the writer makes */
    free(st.v);
    *out = s;
    return 0;
oom:
    rc = AIOSCOPE_ENOMEM;
fail:
    free(st.v);
    aioscope_snapshot_free(s);
    return rc;
}
