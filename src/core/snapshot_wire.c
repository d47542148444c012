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

/* The reader works on the text directly rather than on a parsed JSON tree: a tree of a 100 000
 * task answer has millions of nodes, and building it cost more than everything else `ps` does.
 * It accepts exactly the layout above (keys in the writer's order where it matters: "strings"
 * before "threads" and "tasks"), skips keys it does not know, and bounds everything. */

typedef struct {
    const char *p, *end;
    int err; /* set once the input is malformed: every later read fails */
    char *sbuf; /* scratch for decoded strings */
    size_t scap;
} asc_rd;

/* Nesting depth of a value skipped without being understood. */
#define ASC_RD_MAX_DEPTH 64

static void asc_ws(asc_rd *r) {
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\n' || *r->p == '\r' || *r->p == '\t')) r->p++;
}

static int asc_peek(asc_rd *r) {
    asc_ws(r);
    return !r->err && r->p < r->end ? (unsigned char)*r->p : -1;
}

static int asc_eat(asc_rd *r, char c) {
    if (asc_peek(r) != (unsigned char)c) {
        r->err = 1;
        return 0;
    }
    r->p++;
    return 1;
}

/* After an item of an array or object: 1 when another follows (a comma was eaten), 0 at the
 * closing bracket (eaten), -1 on malformed input. */
static int asc_next(asc_rd *r, char close) {
    int c = asc_peek(r);
    r->p += c >= 0;
    if (c == ',') return 1;
    if (c == (unsigned char)close) return 0;
    r->err = 1;
    return -1;
}

/* Is the array about to be read empty? Eats '[' and, when empty, ']'. */
static int asc_array_empty(asc_rd *r) {
    if (!asc_eat(r, '[')) return 1;
    if (asc_peek(r) == ']') {
        r->p++;
        return 1;
    }
    return 0;
}

/* A number. Integers (the ids, indices, lines, counts) without strtod; others through it. */
static double asc_number(asc_rd *r) {
    asc_ws(r);
    const char *q = r->p;
    int neg = q < r->end && *q == '-';
    q += neg;
    uint64_t v = 0;
    int digits = 0;
    while (q < r->end && *q >= '0' && *q <= '9' && digits < 19) v = v * 10 + (uint64_t)(*q++ - '0'), digits++;
    if (digits && (q == r->end || (*q != '.' && *q != 'e' && *q != 'E' && !(*q >= '0' && *q <= '9')))) {
        r->p = q;
        return neg ? -(double)v : (double)v;
    }
    char tmp[40];
    size_t n = 0;
    while (r->p + n < r->end && n + 1 < sizeof tmp && strchr("+-0123456789.eE", r->p[n])) {
        tmp[n] = r->p[n];
        n++;
    }
    tmp[n] = '\0';
    char *endp;
    double d = n ? strtod(tmp, &endp) : 0;
    if (!n || endp != tmp + n) {
        r->err = 1;
        return 0;
    }
    r->p += n;
    return d;
}

static int asc_utf8(char *o, unsigned cp) {
    if (cp < 0x80) return o[0] = (char)cp, 1;
    if (cp < 0x800) return o[0] = (char)(0xc0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3f)), 2;
    if (cp < 0x10000)
        return o[0] = (char)(0xe0 | cp >> 12), o[1] = (char)(0x80 | ((cp >> 6) & 0x3f)),
               o[2] = (char)(0x80 | (cp & 0x3f)), 3;
    return o[0] = (char)(0xf0 | cp >> 18), o[1] = (char)(0x80 | ((cp >> 12) & 0x3f)),
           o[2] = (char)(0x80 | ((cp >> 6) & 0x3f)), o[3] = (char)(0x80 | (cp & 0x3f)), 4;
}

static int asc_hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* A string, decoded into r->sbuf (valid until the next string; NUL-terminated). NULL on error. */
static const char *asc_string(asc_rd *r) {
    if (!asc_eat(r, '"')) return NULL;
    size_t n = 0;
    for (;;) {
        if (n + 8 >= r->scap) {
            size_t cap = r->scap ? r->scap * 2 : 256;
            char *b = realloc(r->sbuf, cap);
            if (!b) {
                r->err = 1;
                return NULL;
            }
            r->sbuf = b;
            r->scap = cap;
        }
        if (r->p >= r->end) break;
        char c = *r->p++;
        if (c == '"') {
            r->sbuf[n] = '\0';
            return r->sbuf;
        }
        if ((unsigned char)c < 0x20) break;
        if (c != '\\') {
            r->sbuf[n++] = c;
            continue;
        }
        if (r->p >= r->end) break;
        c = *r->p++;
        switch (c) {
        case '"': case '\\': case '/': r->sbuf[n++] = c; break;
        case 'b': r->sbuf[n++] = '\b'; break;
        case 'f': r->sbuf[n++] = '\f'; break;
        case 'n': r->sbuf[n++] = '\n'; break;
        case 'r': r->sbuf[n++] = '\r'; break;
        case 't': r->sbuf[n++] = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (r->end - r->p < 4 || asc_hex4(r->p, &cp) < 0) goto bad;
            r->p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && r->end - r->p >= 6 && r->p[0] == '\\' && r->p[1] == 'u' &&
                asc_hex4(r->p + 2, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                r->p += 6;
            } else if (cp == 0 || (cp >= 0xd800 && cp < 0xe000)) {
                cp = 0xfffd; /* NUL or a lone surrogate: the replacement character */
            }
            n += (size_t)asc_utf8(r->sbuf + n, cp);
            break;
        }
        default: goto bad;
        }
    }
bad:
    r->err = 1;
    return NULL;
}

static int asc_bool(asc_rd *r) {
    int c = asc_peek(r);
    if (c == 't' && r->end - r->p >= 4 && memcmp(r->p, "true", 4) == 0) return r->p += 4, 1;
    if (c == 'f' && r->end - r->p >= 5 && memcmp(r->p, "false", 5) == 0) return r->p += 5, 0;
    r->err = 1;
    return 0;
}

/* Skip any value (for keys this reader does not know). */
static void asc_skip(asc_rd *r, int depth) {
    int c = asc_peek(r);
    if (depth > ASC_RD_MAX_DEPTH) {
        r->err = 1;
    } else if (c == '"') {
        (void)asc_string(r);
    } else if (c == '[' || c == '{') {
        char close = c == '[' ? ']' : '}';
        r->p++;
        if (asc_peek(r) == (unsigned char)close) {
            r->p++;
            return;
        }
        do {
            if (close == '}') {
                (void)asc_string(r);
                asc_eat(r, ':');
            }
            asc_skip(r, depth + 1);
        } while (!r->err && asc_next(r, close) == 1);
    } else if (c == 't' || c == 'f') {
        (void)asc_bool(r);
    } else if (c == 'n' && r->end - r->p >= 4 && memcmp(r->p, "null", 4) == 0) {
        r->p += 4;
    } else {
        (void)asc_number(r);
    }
}

typedef struct {
    const char **v; /* interned into the snapshot */
    size_t n, cap;
} asc_strings;

static uint64_t asc_rd_u64(asc_rd *r) {
    double v = asc_number(r);
    return v >= 0 && v <= 9007199254740992.0 ? (uint64_t)v : 0; /* ids: exact below 2^53 */
}

static long asc_rd_index(asc_rd *r, size_t n) {
    double v = asc_number(r);
    return v >= 0 && v < (double)n ? (long)v : -1;
}

static const char *asc_rd_str(asc_rd *r, const asc_strings *st, const char *dflt) {
    long i = asc_rd_index(r, st->n);
    return i >= 0 ? st->v[i] : dflt;
}

static double asc_rd_seconds(asc_rd *r) {
    double v = asc_number(r);
    return v >= 0 && v < 1e12 ? v : -1;
}

/* [file, function, line, file, function, line, ...] */
static int asc_rd_frames(asc_rd *r, const asc_strings *st, aioscope_snap_frame **out, size_t *n) {
    *out = NULL;
    *n = 0;
    if (asc_array_empty(r)) return 0;
    size_t cap = 0;
    aioscope_snap_frame *f = NULL;
    do {
        if (*n == cap) {
            if (cap >= ASC_WIRE_MAX_FRAMES) {
                r->err = 1;
                break;
            }
            cap = cap ? cap * 2 : 4;
            aioscope_snap_frame *nf = realloc(f, cap * sizeof *nf);
            if (!nf) {
                free(f);
                return AIOSCOPE_ENOMEM;
            }
            f = nf;
        }
        aioscope_snap_frame *fr = &f[(*n)++];
        fr->file = asc_rd_str(r, st, "?");
        asc_eat(r, ',');
        fr->function = asc_rd_str(r, st, "?");
        asc_eat(r, ',');
        double line = asc_number(r);
        fr->line = line >= 0 && line < 1e9 ? (int)line : 0;
    } while (!r->err && asc_next(r, ']') == 1);
    *out = f;
    return 0;
}

static int asc_rd_strings(asc_rd *r, aioscope_snapshot *s, asc_strings *st) {
    if (asc_array_empty(r)) return 0;
    do {
        const char *v = asc_string(r);
        if (!v) break;
        if (st->n == st->cap) {
            size_t cap = st->cap ? st->cap * 2 : 256;
            const char **nv = realloc(st->v, cap * sizeof *nv);
            if (!nv) return AIOSCOPE_ENOMEM;
            st->v = nv;
            st->cap = cap;
        }
        if (!(st->v[st->n++] = aioscope_snapshot_intern(s, v))) return AIOSCOPE_ENOMEM;
    } while (!r->err && asc_next(r, ']') == 1);
    return 0;
}

/* Grow an array of n items of size sz to hold one more. */
static void *asc_grow(void *v, size_t n, size_t *cap, size_t sz) {
    if (n < *cap) return v;
    size_t c = *cap ? *cap * 2 : 64;
    void *nv = realloc(v, c * sz);
    if (nv) *cap = c;
    return nv;
}

static int asc_rd_tasks(asc_rd *r, aioscope_snapshot *s, const asc_strings *st) {
    size_t cap = 0;
    if (asc_array_empty(r)) return 0;
    do {
        aioscope_snap_task *nt = asc_grow(s->tasks, s->ntasks, &cap, sizeof *nt);
        if (!nt) return AIOSCOPE_ENOMEM;
        s->tasks = nt;
        aioscope_snap_task *k = &s->tasks[s->ntasks++];
        memset(k, 0, sizeof *k);
        asc_eat(r, '[');
        k->id = asc_rd_u64(r);
        asc_eat(r, ',');
        k->name = asc_rd_str(r, st, "?");
        asc_eat(r, ',');
        double state = asc_number(r);
        k->state = state == 1 ? AIOSCOPE_TASK_CANCELLED : state == 2 ? AIOSCOPE_TASK_FINISHED : AIOSCOPE_TASK_PENDING;
        asc_eat(r, ',');
        if (asc_rd_frames(r, st, &k->coro, &k->ncoro) < 0) return AIOSCOPE_ENOMEM;
        asc_eat(r, ',');
        k->awaiting = asc_rd_str(r, st, NULL);
        asc_eat(r, ',');
        k->awaiting_id = asc_rd_u64(r);
        asc_eat(r, ',');
        if (!asc_array_empty(r)) {
            size_t bcap = 0;
            do {
                uint64_t *nb = asc_grow(k->awaited_by, k->nawaited_by, &bcap, sizeof *nb);
                if (!nb) return AIOSCOPE_ENOMEM;
                k->awaited_by = nb;
                uint64_t id = asc_rd_u64(r);
                if (id) k->awaited_by[k->nawaited_by++] = id;
            } while (!r->err && k->nawaited_by < 1000000 && asc_next(r, ']') == 1);
        }
        asc_eat(r, ',');
        double th = asc_number(r);
        k->thread = th >= 0 && th < (double)s->nthreads ? (long)th : -1;
        asc_eat(r, ',');
        k->busy_s = asc_rd_seconds(r);
        asc_eat(r, ',');
        double steps = asc_number(r);
        k->steps = steps >= 0 && steps < 9e15 ? (long)steps : -1;
        asc_eat(r, ',');
        k->spawned_by = asc_rd_u64(r);
        asc_eat(r, ',');
        k->age_s = asc_rd_seconds(r);
        asc_eat(r, ',');
        k->cancelling = asc_number(r) == 1;
        asc_eat(r, ',');
        k->exception = asc_rd_str(r, st, NULL);
        asc_eat(r, ']');
    } while (!r->err && asc_next(r, ']') == 1);
    return 0;
}

/* Threads come before tasks: their running_task indices are checked once the tasks are in. */
static int asc_rd_threads(asc_rd *r, aioscope_snapshot *s, const asc_strings *st) {
    size_t cap = 0;
    if (asc_array_empty(r)) return 0;
    do {
        aioscope_snap_thread *nt = asc_grow(s->threads, s->nthreads, &cap, sizeof *nt);
        if (!nt) return AIOSCOPE_ENOMEM;
        s->threads = nt;
        aioscope_snap_thread *th = &s->threads[s->nthreads++];
        memset(th, 0, sizeof *th);
        asc_eat(r, '[');
        th->thread_id = asc_rd_u64(r);
        asc_eat(r, ',');
        th->native_id = asc_rd_u64(r);
        asc_eat(r, ',');
        double ls = asc_number(r);
        th->loop_state = ls == 1 ? AIOSCOPE_LOOP_POLLING : ls == 2 ? AIOSCOPE_LOOP_RUNNING : AIOSCOPE_LOOP_NONE;
        asc_eat(r, ',');
        double rt = asc_number(r);
        th->running_task = rt >= 0 && rt < 1e15 ? (long)rt : -1;
        asc_eat(r, ',');
        if (asc_rd_frames(r, st, &th->frames, &th->nframes) < 0) return AIOSCOPE_ENOMEM;
        asc_eat(r, ']');
    } while (!r->err && asc_next(r, ']') == 1);
    return 0;
}

int aioscope_snapshot_from_wire(const char *text, size_t len, aioscope_snapshot **out, size_t *agent_off,
                                size_t *agent_len) {
    *out = NULL;
    if (agent_off) *agent_off = *agent_len = 0;
    asc_rd r = {text, text + len, 0, NULL, 0};
    asc_strings st = {0};
    aioscope_snapshot *s = aioscope_snapshot_new();
    if (!s) return AIOSCOPE_ENOMEM;
    int rc = 0, have_format = 0, have_strings = 0;
    if (!asc_eat(&r, '{')) goto bad;
    if (asc_peek(&r) == '}') goto bad;
    do {
        const char *key = asc_string(&r);
        if (!key || !asc_eat(&r, ':')) goto bad;
        char k[32];
        snprintf(k, sizeof k, "%s", key);
        if (strcmp(k, "format") == 0) {
            const char *f = asc_string(&r);
            have_format = f && strcmp(f, "aioscope-wire-1") == 0;
            if (!have_format) goto bad;
        } else if (strcmp(k, "pid") == 0) {
            double pid = asc_number(&r);
            s->pid = pid > 0 && pid < 1e9 ? (int)pid : 0;
        } else if (strcmp(k, "python") == 0) {
            const char *py = asc_string(&r);
            unsigned maj = 0, min = 0, mic = 0;
            if (py && sscanf(py, "%u.%u.%u", &maj, &min, &mic) >= 2)
                s->py_version_hex = (maj & 0xff) << 24 | (min & 0xff) << 16 | (mic & 0xff) << 8;
        } else if (strcmp(k, "source") == 0) {
            const char *src = asc_string(&r);
            if (src && !(s->source = aioscope_snapshot_intern(s, src))) goto oom;
        } else if (strcmp(k, "frozen") == 0) {
            s->frozen = asc_bool(&r);
        } else if (strcmp(k, "agent_fields") == 0) {
            s->has_agent_fields = asc_bool(&r);
        } else if (strcmp(k, "unreadable_tasks") == 0) {
            double ur = asc_number(&r);
            s->unreadable_tasks = ur > 0 && ur < 1e12 ? (size_t)ur : 0;
        } else if (strcmp(k, "strings") == 0) {
            if ((rc = asc_rd_strings(&r, s, &st)) < 0) goto fail;
            have_strings = 1;
        } else if (strcmp(k, "threads") == 0 && have_strings && !s->tasks) {
            if ((rc = asc_rd_threads(&r, s, &st)) < 0) goto fail;
        } else if (strcmp(k, "tasks") == 0 && have_strings) {
            if ((rc = asc_rd_tasks(&r, s, &st)) < 0) goto fail;
        } else if (strcmp(k, "threads") == 0 || strcmp(k, "tasks") == 0) {
            goto bad; /* out of the writer's order: the string table must come first */
        } else {
            asc_ws(&r);
            const char *start = r.p;
            asc_skip(&r, 0);
            if (strcmp(k, "agent") == 0 && agent_off) {
                *agent_off = (size_t)(start - text);
                *agent_len = (size_t)(r.p - start);
            }
        }
    } while (!r.err && asc_next(&r, '}') == 1);
    if (r.err || !have_format) goto bad;
    for (size_t i = 0; i < s->nthreads; i++)
        if (s->threads[i].running_task >= (long)s->ntasks) s->threads[i].running_task = -1;
    free(st.v);
    free(r.sbuf);
    *out = s;
    return 0;
oom:
    rc = AIOSCOPE_ENOMEM;
    goto fail;
bad:
    rc = AIOSCOPE_EPARSE;
fail:
    free(st.v);
    free(r.sbuf);
    aioscope_snapshot_free(s);
    return rc;
}
