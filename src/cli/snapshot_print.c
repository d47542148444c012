/* Printing a snapshot: the `ps` table, the `pstree` await tree and the `dump` of every thread
 * and task. Whoever filled the snapshot (memory reader or agent), the output is the same; the
 * columns only the agent knows are shown when the snapshot has them and named as unavailable
 * otherwise. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli/snapshot_cli.h"

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

/* "outer > inner" function names of a coroutine chain, cut to width. */
static void asc__chain(const aioscope_snap_task *tk, char *buf, size_t cap) {
    size_t len = 0;
    buf[0] = 0;
    for (size_t i = 0; i < tk->ncoro && len + 1 < cap; i++) {
        int n = snprintf(buf + len, cap - len, "%s%s", i ? " > " : "", tk->coro[i].function);
        if (n < 0) break;
        len += (size_t)n;
    }
    if (len >= cap - 1 && cap > 4) strcpy(buf + cap - 4, "...");
    if (!buf[0]) snprintf(buf, cap, "-");
}

static void asc__awaiting(aioscope_snapshot *s, const aioscope_snap_task *tk, char *buf, size_t cap) {
    if (!tk->awaiting) {
        snprintf(buf, cap, "-");
        return;
    }
    long idx = tk->awaiting_id ? aioscope_snapshot_find_task(s, tk->awaiting_id) : -1;
    if (idx >= 0) snprintf(buf, cap, "Task %s", s->tasks[idx].name);
    else snprintf(buf, cap, "%s", tk->awaiting);
}

static void asc__awaited_by(aioscope_snapshot *s, const aioscope_snap_task *tk, char *buf, size_t cap) {
    size_t len = 0;
    buf[0] = 0;
    for (size_t i = 0; i < tk->nawaited_by && len + 1 < cap; i++) {
        long idx = aioscope_snapshot_find_task(s, tk->awaited_by[i]);
        int n = snprintf(buf + len, cap - len, "%s%s", i ? ", " : "", idx >= 0 ? s->tasks[idx].name : "?");
        if (n < 0) break;
        len += (size_t)n;
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
    if (f) snprintf(buf, cap, "%s:%d", asc__basename(f->file), f->line);
    else snprintf(buf, cap, "-");
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
    char chain[256], awaiting[128], by[256], tid[24], where[64];
    for (size_t i = 0; i < s->ntasks; i++) {
        aioscope_snap_task *tk = &s->tasks[i];
        asc__chain(tk, chain, 41);
        asc__awaiting(s, tk, awaiting, 25);
        asc__awaited_by(s, tk, by, sizeof by);
        asc__where(tk, where, 21);
        if (tk->thread >= 0) {
            const aioscope_snap_thread *th = &s->threads[tk->thread];
            snprintf(tid, sizeof tid, "%llu", (unsigned long long)(th->native_id ? th->native_id : th->thread_id));
        } else {
            snprintf(tid, sizeof tid, "-");
        }
        fprintf(out, "%-8s 0x%-12llx %-20s %-10s %-40s %-20s %-24s", tid, (unsigned long long)tk->id, tk->name,
                asc__live_state(tk), chain, where, tk->exception ? tk->exception : awaiting);
        if (agent) {
            char age[24] = "-", busy[24] = "-", steps[24] = "-", spawner[64] = "-";
            if (tk->age_s >= 0) snprintf(age, sizeof age, "%.1f", tk->age_s);
            if (tk->busy_s >= 0) snprintf(busy, sizeof busy, "%.4f", tk->busy_s);
            if (tk->steps >= 0) snprintf(steps, sizeof steps, "%ld", tk->steps);
            if (tk->spawned_by) {
                long p = aioscope_snapshot_find_task(s, tk->spawned_by);
                if (p >= 0) snprintf(spawner, sizeof spawner, "%s", s->tasks[p].name);
                else snprintf(spawner, sizeof spawner, "0x%llx", (unsigned long long)tk->spawned_by);
            }
            fprintf(out, " %8s %9s %7s %-16s", age, busy, steps, spawner);
        }
        fprintf(out, " %s\n", by);
    }
}

static void asc__tree_task(aioscope_snapshot *s, size_t i, const char *prefix, int last, int depth,
                           unsigned char *seen, FILE *out) {
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
    size_t nchild = 0, done = 0;
    for (size_t k = 0; k < s->ntasks; k++)
        for (size_t j = 0; j < s->tasks[k].nawaited_by; j++)
            if (s->tasks[k].awaited_by[j] == tk->id) nchild++;
    for (size_t k = 0; k < s->ntasks; k++)
        for (size_t j = 0; j < s->tasks[k].nawaited_by; j++)
            if (s->tasks[k].awaited_by[j] == tk->id) {
                done++;
                asc__tree_task(s, k, sub, done == nchild, depth + 1, seen, out);
            }
    seen[i] = 0;
}

void asc_snap_print_tree(aioscope_snapshot *s, FILE *out) {
    asc_snap_print_header(s, out);
    unsigned char *seen = calloc(s->ntasks ? s->ntasks : 1, 1);
    unsigned char *printed = calloc(s->ntasks ? s->ntasks : 1, 1);
    if (!seen || !printed) {
        free(seen);
        free(printed);
        return;
    }
    /* Roots: tasks nobody awaits. Tasks left over afterwards wait on each other in a cycle. */
    for (size_t i = 0; i < s->ntasks; i++)
        if (!s->tasks[i].nawaited_by) {
            asc__tree_task(s, i, "", 1, 0, seen, out);
            printed[i] = 1;
        }
    for (size_t i = 0; i < s->ntasks; i++) {
        int reachable = 0;
        for (size_t j = 0; j < s->tasks[i].nawaited_by && !reachable; j++) {
            long p = aioscope_snapshot_find_task(s, s->tasks[i].awaited_by[j]);
            reachable = p < 0; /* awaited by a task we could not read: print it as a root */
        }
        if (!reachable) continue;
        asc__tree_task(s, i, "", 1, 0, seen, out);
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
        asc__tree_task(s, i, "  ", 1, 0, seen, out);
        break; /* one entry point prints the whole cycle */
    }
    free(seen);
    free(printed);
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
