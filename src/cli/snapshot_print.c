/* Printing a snapshot: the `ps` table and --json, the `pstree` await tree and the `dump` of
 * every thread and task. Whoever filled the snapshot (memory reader or agent), the output is the
 * same; the columns only the agent knows are shown when the snapshot has them and named as
 * unavailable otherwise.
 *
 * The table and the JSON have one line or object per task, 100 000 of them for a big program:
 * they are built in a buffer without printf (whose format parsing cost more than everything else
 * `ps` does; numbers through src/core/numtext.h) and written out a megabyte at a time. The JSON
 * is the snapshot model's own (aioscope_snapshot_write_json, src/attach/snapshot.c). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "aioscope/json.h"
#include "cli/snapshot_cli.h"
#include "core/numtext.h"

/* Tree recursion bound: await trees deeper than this are cut with a marker. */
#define ASC_MAX_TREE_DEPTH 256

static const char *asc__basename(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static const char *asc__state(aioscope_task_state s) {
    return s == AIOSCOPE_TASK_PENDING ? "pending" : s == AIOSCOPE_TASK_CANCELLED ? "cancelled" : "finished";
}

void asc_snap_print_header(const aioscope_snapshot *s, FILE *out) {
    fprintf(out, "Process %d, Python %u.%u.%u, %zu thread%s, %zu task%s (read from %s%s)\n", s->pid,
            s->py_version_hex >> 24, (s->py_version_hex >> 16) & 0xff, (s->py_version_hex >> 8) & 0xff,
            s->nthreads, s->nthreads == 1 ? "" : "s", s->ntasks, s->ntasks == 1 ? "" : "s",
            strcmp(s->source, "agent") == 0         ? "the agent"
            : strcmp(s->source, "agent-memory") == 0 ? "memory by the agent: the program holds the GIL"
                                                     : "memory, no agent",
            s->frozen ? ", process frozen while read" : "");
    if (!s->has_agent_fields && strcmp(s->source, "agent-memory") == 0)
        fprintf(out, "Busy time, steps and spawned-by are unavailable while the program holds the GIL "
                     "(a long call that does not release it: see the stack in `aioscope dump`)\n");
    else if (!s->has_agent_fields)
        fprintf(out, "Unavailable without the agent: busy time, steps, spawned-by (run the program "
                     "under `aioscope run` for them)\n");
    if (s->unreadable_tasks)
        fprintf(out, "Note: %zu task(s) changed while being read and were skipped (use --freeze)\n",
                s->unreadable_tasks);
}

/* ---- building text without printf ------------------------------------------------------------ */

/* Append s to buf (capacity cap, *len bytes counted so far) the way snprintf(buf + *len,
 * cap - *len, "%s", s) followed by *len += strlen(s) would: cut to what fits, always
 * NUL-terminated, *len counting what would have been written. */
static void asc__cat(char *buf, size_t cap, size_t *len, const char *s) {
    size_t n = strlen(s);
    if (*len + 1 < cap) {
        size_t room = cap - 1 - *len, k = n < room ? n : room;
        memcpy(buf + *len, s, k);
        buf[*len + k] = '\0';
    }
    *len += n;
}

static void asc__put(aioscope_buf *b, const char *s) { aioscope_buf_append(b, s, strlen(s)); }

/* printf's "%-Ns" (left) or "%Ns": s, padded with spaces to at least width. */
static void asc__put_pad(aioscope_buf *b, const char *s, size_t width, int left) {
    static const char spaces[] = "                                                ";
    size_t n = strlen(s), pad = n < width ? width - n : 0;
    if (!left) aioscope_buf_append(b, spaces, pad < sizeof spaces - 1 ? pad : sizeof spaces - 1);
    aioscope_buf_append(b, s, n);
    if (left) aioscope_buf_append(b, spaces, pad < sizeof spaces - 1 ? pad : sizeof spaces - 1);
}

/* Write b to out and free it. */
static void asc__flush(aioscope_buf *b, FILE *out) {
    if (b->len) fwrite(b->data, 1, b->len, out);
    aioscope_buf_free(b);
}

/* Past this much text, the table's row loop writes its buffer out and starts it again: one
 * large write at a time, and no buffer the size of the whole table. */
#define ASC_FLUSH_AT (1u << 20)

static void asc__flush_some(aioscope_buf *b, FILE *out) {
    if (b->len < ASC_FLUSH_AT || b->oom) return;
    fwrite(b->data, 1, b->len, out);
    b->len = 0;
}

/* "outer > inner" function names of a coroutine chain, cut to width. */
static void asc__chain(const aioscope_snap_task *tk, char *buf, size_t cap) {
    size_t len = 0;
    buf[0] = 0;
    for (size_t i = 0; i < tk->ncoro && len + 1 < cap; i++) {
        if (i) asc__cat(buf, cap, &len, " > ");
        asc__cat(buf, cap, &len, tk->coro[i].function);
    }
    if (len >= cap - 1 && cap > 4) strcpy(buf + cap - 4, "...");
    if (!buf[0]) snprintf(buf, cap, "-");
}

static void asc__awaiting(aioscope_snapshot *s, const aioscope_snap_task *tk, char *buf, size_t cap) {
    size_t len = 0;
    buf[0] = 0;
    if (!tk->awaiting) {
        asc__cat(buf, cap, &len, "-");
        return;
    }
    long idx = tk->awaiting_id ? aioscope_snapshot_find_task(s, tk->awaiting_id) : -1;
    if (idx >= 0) asc__cat(buf, cap, &len, "Task ");
    asc__cat(buf, cap, &len, idx >= 0 ? s->tasks[idx].name : tk->awaiting);
}

static void asc__awaited_by(aioscope_snapshot *s, const aioscope_snap_task *tk, char *buf, size_t cap) {
    size_t len = 0;
    buf[0] = 0;
    for (size_t i = 0; i < tk->nawaited_by && len + 1 < cap; i++) {
        long idx = aioscope_snapshot_find_task(s, tk->awaited_by[i]);
        if (i) asc__cat(buf, cap, &len, ", ");
        asc__cat(buf, cap, &len, idx >= 0 ? s->tasks[idx].name : "?");
    }
    if (!buf[0]) snprintf(buf, cap, "-");
}

/* The state a person asks about: a pending task is running, waiting on something, ready to run
 * or being cancelled; a finished one failed when its exception was never retrieved. */
static const char *asc__live_state(const aioscope_snap_task *tk) {
    if (tk->state == AIOSCOPE_TASK_CANCELLED) return "cancelled";
    if (tk->state == AIOSCOPE_TASK_FINISHED) return tk->exception ? "failed" : "finished";
    if (tk->thread >= 0) return "running";
    if (tk->cancelling) return "cancelling";
    return tk->awaiting ? "waiting" : "ready";
}

/* The program's own line where the task is suspended: the innermost frame of its coroutine chain
 * outside the standard library and site-packages ("file.py:12"), else the innermost frame. */
static void asc__where(const aioscope_snap_task *tk, char *buf, size_t cap) {
    const aioscope_snap_frame *f = NULL;
    for (size_t k = tk->ncoro; k-- > 0 && !f;) {
        const char *p = tk->coro[k].file;
        if (!strstr(p, "/lib/python") && !strstr(p, "-packages/") && p[0] != '<') f = &tk->coro[k];
    }
    if (!f && tk->ncoro) f = &tk->coro[tk->ncoro - 1];
    size_t len = 0;
    char tmp[24];
    buf[0] = 0;
    if (!f) {
        asc__cat(buf, cap, &len, "-");
        return;
    }
    asc__cat(buf, cap, &len, asc__basename(f->file));
    asc__cat(buf, cap, &len, ":");
    asc__cat(buf, cap, &len, asc_num_i64(f->line, tmp));
}

void asc_snap_print_table(aioscope_snapshot *s, FILE *out) {
    asc_snap_print_header(s, out);
    int agent = s->has_agent_fields;
    fprintf(out, "%-8s %-14s %-20s %-10s %-40s %-20s %-24s", "TID", "TASK ID", "NAME", "STATE",
            "COROUTINE STACK (outer > inner)", "WHERE", "AWAITING");
    /* Agent-only columns (snapshot.h: has_agent_fields): how long it has existed, how long it ran,
     * how many steps, and which task created it. */
    if (agent) fprintf(out, " %8s %9s %7s %-16s", "AGE s", "BUSY s", "STEPS", "SPAWNED BY");
    fprintf(out, " %s\n", "AWAITED BY");
    /* The rows: the equivalent of
     *   "%-8s 0x%-12llx %-20s %-10s %-40s %-20s %-24s" [" %8s %9s %7s %-16s"] " %s\n"
     * with the fields cut as the widths of their buffers say. */
    char chain[256], awaiting[128], by[256], tmp[24], where[64];
    aioscope_buf b;
    aioscope_buf_init(&b);
    for (size_t i = 0; i < s->ntasks && !b.oom; i++) {
        aioscope_snap_task *tk = &s->tasks[i];
        asc__chain(tk, chain, 41);
        asc__awaiting(s, tk, awaiting, 25);
        asc__awaited_by(s, tk, by, sizeof by);
        asc__where(tk, where, 21);
        if (tk->thread >= 0) {
            const aioscope_snap_thread *th = &s->threads[tk->thread];
            asc__put_pad(&b, asc_num_u64(th->native_id ? th->native_id : th->thread_id, tmp), 8, 1);
        } else {
            asc__put_pad(&b, "-", 8, 1);
        }
        asc__put(&b, " 0x");
        asc__put_pad(&b, asc_num_hex(tk->id, tmp), 12, 1);
        asc__put(&b, " ");
        asc__put_pad(&b, tk->name, 20, 1);
        asc__put(&b, " ");
        asc__put_pad(&b, asc__live_state(tk), 10, 1);
        asc__put(&b, " ");
        asc__put_pad(&b, chain, 40, 1);
        asc__put(&b, " ");
        asc__put_pad(&b, where, 20, 1);
        asc__put(&b, " ");
        asc__put_pad(&b, tk->exception ? tk->exception : awaiting, 24, 1);
        if (agent) {
            char age[ASC_NUM_TEXT_MAX] = "-", busy[ASC_NUM_TEXT_MAX] = "-", steps[24], spawner[64] = "-";
            const char *nsteps = tk->steps >= 0 ? asc_num_i64(tk->steps, steps) : "-";
            if (tk->age_s >= 0) asc_num_fixed(age, tk->age_s, 1);
            if (tk->busy_s >= 0) asc_num_fixed(busy, tk->busy_s, 4);
            if (tk->spawned_by) {
                long p = aioscope_snapshot_find_task(s, tk->spawned_by);
                size_t len = 0;
                spawner[0] = '\0';
                if (p < 0) asc__cat(spawner, sizeof spawner, &len, "0x");
                asc__cat(spawner, sizeof spawner, &len, p >= 0 ? s->tasks[p].name : asc_num_hex(tk->spawned_by, tmp));
            }
            asc__put(&b, " ");
            asc__put_pad(&b, age, 8, 0);
            asc__put(&b, " ");
            asc__put_pad(&b, busy, 9, 0);
            asc__put(&b, " ");
            asc__put_pad(&b, nsteps, 7, 0);
            asc__put(&b, " ");
            asc__put_pad(&b, spawner, 16, 1);
        }
        asc__put(&b, " ");
        asc__put(&b, by);
        asc__put(&b, "\n");
        asc__flush_some(&b, out);
    }
    if (b.oom) fprintf(out, "(out of memory: the table is cut)\n");
    asc__flush(&b, out);
}

int asc_snap_print_json(const aioscope_snapshot *s, FILE *out) {
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_snapshot_write_json(s, &b, out);
    aioscope_buf_append(&b, "\n", 1);
    if (b.oom) {
        aioscope_buf_free(&b);
        fprintf(stderr, "aioscope: out of memory\n");
        return ASC_EXIT_SNAP_UNREADABLE;
    }
    asc__flush(&b, out);
    return 0;
}

/* Who awaits whom, as (awaiter id, awaited task) pairs sorted by awaiter id and then by the
 * order of the tasks and of their awaited_by lists: the children of a task are one run of it,
 * found by binary search, in the order a scan of every task's awaited_by would meet them. Built
 * once, so that printing the tree is not a scan of every task per task (quadratic: 100 000 tasks
 * would take minutes). */
typedef struct {
    uint64_t parent;
    size_t child, seq;
} asc__edge;

typedef struct {
    asc__edge *v;
    size_t n;
} asc__kids;

static int asc__edge_cmp(const void *a, const void *b) {
    const asc__edge *x = a, *y = b;
    if (x->parent != y->parent) return x->parent < y->parent ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int asc__kids_build(const aioscope_snapshot *s, asc__kids *k) {
    k->n = 0;
    for (size_t i = 0; i < s->ntasks; i++) k->n += s->tasks[i].nawaited_by;
    k->v = malloc((k->n ? k->n : 1) * sizeof *k->v);
    if (!k->v) return -1;
    size_t e = 0;
    for (size_t i = 0; i < s->ntasks; i++)
        for (size_t j = 0; j < s->tasks[i].nawaited_by; j++, e++)
            k->v[e] = (asc__edge){s->tasks[i].awaited_by[j], i, e};
    qsort(k->v, k->n, sizeof *k->v, asc__edge_cmp);
    return 0;
}

/* The run of edges whose awaiter is id: [*first, *first + count). */
static size_t asc__kids_of(const asc__kids *k, uint64_t id, size_t *first) {
    size_t lo = 0, hi = k->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (k->v[mid].parent < id) lo = mid + 1;
        else hi = mid;
    }
    size_t end = lo;
    while (end < k->n && k->v[end].parent == id) end++;
    *first = lo;
    return end - lo;
}

static void asc__tree_task(aioscope_snapshot *s, const asc__kids *kids, size_t i, const char *prefix, int last,
                           int depth, unsigned char *seen, FILE *out) {
    aioscope_snap_task *tk = &s->tasks[i];
    char awaiting[128];
    fprintf(out, "%s%s%s [%s]", prefix, depth ? (last ? "└── " : "├── ") : "", tk->name, asc__state(tk->state));
    /* The coroutine chain, outer to inner, each with where it is suspended. */
    for (size_t k = 0; k < tk->ncoro; k++) {
        const aioscope_snap_frame *f = &tk->coro[k];
        fprintf(out, "%s%s (%s:%d)", k ? " > " : " ", f->function, asc__basename(f->file), f->line);
    }
    asc__awaiting(s, tk, awaiting, sizeof awaiting);
    if (tk->awaiting) fprintf(out, " awaiting %s", awaiting);
    if (tk->thread >= 0) fprintf(out, " [running]");
    if (seen[i]) {
        fprintf(out, " (cycle: waits on itself through the tasks above)\n");
        return;
    }
    fputc('\n', out);
    if (depth >= ASC_MAX_TREE_DEPTH) {
        fprintf(out, "%s    ...\n", prefix);
        return;
    }
    seen[i] = 1;
    char sub[4 * ASC_MAX_TREE_DEPTH + 8];
    snprintf(sub, sizeof sub, "%s%s", prefix, depth ? (last ? "    " : "│   ") : "");
    /* Children: the tasks this one awaits (those listing it in awaited_by). */
    size_t first, nchild = asc__kids_of(kids, tk->id, &first);
    for (size_t c = 0; c < nchild; c++)
        asc__tree_task(s, kids, kids->v[first + c].child, sub, c + 1 == nchild, depth + 1, seen, out);
    seen[i] = 0;
}

void asc_snap_print_tree(aioscope_snapshot *s, FILE *out) {
    asc_snap_print_header(s, out);
    unsigned char *seen = calloc(s->ntasks ? s->ntasks : 1, 1);
    unsigned char *printed = calloc(s->ntasks ? s->ntasks : 1, 1);
    asc__kids kids = {NULL, 0};
    if (!seen || !printed || asc__kids_build(s, &kids) < 0) {
        free(seen);
        free(printed);
        free(kids.v);
        return;
    }
    /* Roots: tasks nobody awaits. Tasks left over afterwards wait on each other in a cycle. */
    for (size_t i = 0; i < s->ntasks; i++)
        if (!s->tasks[i].nawaited_by) {
            asc__tree_task(s, &kids, i, "", 1, 0, seen, out);
            printed[i] = 1;
        }
    for (size_t i = 0; i < s->ntasks; i++) {
        int reachable = 0;
        for (size_t j = 0; j < s->tasks[i].nawaited_by && !reachable; j++) {
            long p = aioscope_snapshot_find_task(s, s->tasks[i].awaited_by[j]);
            reachable = p < 0; /* awaited by a task we could not read: print it as a root */
        }
        if (!reachable) continue;
        asc__tree_task(s, &kids, i, "", 1, 0, seen, out);
    }
    int cycle_header = 0;
    for (size_t i = 0; i < s->ntasks; i++) {
        /* A task is in (or below) a cycle when no chain of awaiters ends at a root. */
        size_t cur = i, steps = 0;
        int rooted = 0;
        while (steps++ <= s->ntasks) {
            const aioscope_snap_task *tk = &s->tasks[cur];
            if (!tk->nawaited_by) { rooted = 1; break; }
            long p = aioscope_snapshot_find_task(s, tk->awaited_by[0]);
            if (p < 0) { rooted = 1; break; }
            cur = (size_t)p;
        }
        if (rooted) continue;
        if (!cycle_header) {
            fprintf(out, "Tasks awaiting each other in a cycle (deadlock):\n");
            cycle_header = 1;
        }
        asc__tree_task(s, &kids, i, "  ", 1, 0, seen, out);
        break; /* one entry point prints the whole cycle */
    }
    free(seen);
    free(printed);
    free(kids.v);
}

void asc_snap_print_dump(aioscope_snapshot *s, FILE *out) {
    asc_snap_print_header(s, out);
    for (size_t i = 0; i < s->nthreads; i++) {
        const aioscope_snap_thread *th = &s->threads[i];
        fprintf(out, "\nThread %llu", (unsigned long long)th->thread_id);
        if (th->native_id) fprintf(out, " (tid %llu)", (unsigned long long)th->native_id);
        if (th->loop_state == AIOSCOPE_LOOP_POLLING) fprintf(out, ", event loop idle (polling)");
        else if (th->loop_state == AIOSCOPE_LOOP_RUNNING && th->running_task >= 0)
            fprintf(out, ", event loop busy running task %s", s->tasks[th->running_task].name);
        else if (th->loop_state == AIOSCOPE_LOOP_RUNNING)
            fprintf(out, ", event loop busy (not polling: a callback is running)");
        fprintf(out, ":\n");
        if (!th->nframes) fprintf(out, "    (no Python frames)\n");
        for (size_t k = 0; k < th->nframes; k++)
            fprintf(out, "    %s (%s:%d)\n", th->frames[k].function, th->frames[k].file, th->frames[k].line);
    }
    fprintf(out, "\nTasks (%zu):\n", s->ntasks);
    char awaiting[128], by[256];
    for (size_t i = 0; i < s->ntasks; i++) {
        aioscope_snap_task *tk = &s->tasks[i];
        asc__awaiting(s, tk, awaiting, sizeof awaiting);
        asc__awaited_by(s, tk, by, sizeof by);
        fprintf(out, "\n  %s (id 0x%llx) %s", tk->name, (unsigned long long)tk->id, asc__state(tk->state));
        if (tk->thread >= 0) fprintf(out, ", running on thread %llu", (unsigned long long)s->threads[tk->thread].thread_id);
        if (tk->awaiting) fprintf(out, ", awaiting %s", awaiting);
        if (tk->nawaited_by) fprintf(out, ", awaited by %s", by);
        fputc('\n', out);
        for (size_t k = tk->ncoro; k-- > 0;)
            fprintf(out, "      %s (%s:%d)\n", tk->coro[k].function, tk->coro[k].file, tk->coro[k].line);
    }
}
