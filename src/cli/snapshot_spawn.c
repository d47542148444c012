/* `aioscope pstree PID --spawn`: the spawn tree — which task created which — from the agent's
 * spawned_by (snapshot.h). A task whose spawner has ended (or was never a task: created from
 * plain code before the loop ran) is a root. Spawning cannot form a cycle (a task exists before
 * what it spawns), but ids come from another process's answer, so a cycle is still detected and
 * marked rather than followed forever. */
#include <stdlib.h>
#include <string.h>

#include "cli/snapshot_cli.h"

/* Spawn trees deeper than this are cut with a marker. */
#define ASC_MAX_SPAWN_DEPTH 256

static const char *asc_base(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* children[first[i] .. first[i+1]) are the indices of the tasks task i spawned. */
typedef struct {
    size_t *first, *children;
} asc_spawn_index;

static void asc_spawn_task(aioscope_snapshot *s, const asc_spawn_index *ix, size_t i, const char *prefix,
                           int last, int depth, unsigned char *on_path, FILE *out) {
    const aioscope_snap_task *t = &s->tasks[i];
    fprintf(out, "%s%s%s", prefix, depth ? (last ? "└── " : "├── ") : "", t->name);
    if (t->ncoro) {
        const aioscope_snap_frame *f = &t->coro[0];
        fprintf(out, " (%s at %s:%d)", f->function, asc_base(f->file), f->line);
    }
    if (t->state != AIOSCOPE_TASK_PENDING) fprintf(out, " [%s]", t->state == AIOSCOPE_TASK_CANCELLED ? "cancelled" : "finished");
    if (on_path[i]) {
        fprintf(out, " (cycle)\n");
        return;
    }
    fputc('\n', out);
    if (depth >= ASC_MAX_SPAWN_DEPTH) {
        fprintf(out, "%s    ...\n", prefix);
        return;
    }
    on_path[i] = 1;
    char sub[4 * ASC_MAX_SPAWN_DEPTH + 8];
    snprintf(sub, sizeof sub, "%s%s", prefix, depth ? (last ? "    " : "│   ") : "");
    for (size_t k = ix->first[i]; k < ix->first[i + 1]; k++)
        asc_spawn_task(s, ix, ix->children[k], sub, k + 1 == ix->first[i + 1], depth + 1, on_path, out);
    on_path[i] = 0;
}

void asc_snap_print_spawn_tree(aioscope_snapshot *s, FILE *out) {
    asc_snap_print_header(s, out);
    if (!s->has_agent_fields) {
        fprintf(out, "The spawn tree needs the agent (who created each task is known only inside the "
                     "program).\n");
        return;
    }
    size_t n = s->ntasks;
    long *parent = malloc((n ? n : 1) * sizeof *parent);
    asc_spawn_index ix = {calloc(n + 1, sizeof(size_t)), malloc((n ? n : 1) * sizeof(size_t))};
    unsigned char *on_path = calloc(n ? n : 1, 1);
    if (!parent || !ix.first || !ix.children || !on_path) goto out;
    /* Counting sort of the tasks by spawner: children in snapshot order under each parent. */
    for (size_t i = 0; i < n; i++) {
        parent[i] = s->tasks[i].spawned_by ? aioscope_snapshot_find_task(s, s->tasks[i].spawned_by) : -1;
        if (parent[i] == (long)i) parent[i] = -1;
        if (parent[i] >= 0) ix.first[parent[i] + 1]++;
    }
    for (size_t i = 0; i < n; i++) ix.first[i + 1] += ix.first[i];
    size_t *fill = calloc(n ? n : 1, sizeof *fill);
    if (!fill) goto out;
    for (size_t i = 0; i < n; i++)
        if (parent[i] >= 0) ix.children[ix.first[parent[i]] + fill[parent[i]]++] = i;
    free(fill);
    for (size_t i = 0; i < n; i++)
        if (parent[i] < 0) asc_spawn_task(s, &ix, i, "", 1, 0, on_path, out);
    /* Tasks on a cycle of spawned_by links (only from an inconsistent answer) reach no root:
     * each is printed from itself, marked where the cycle closes. */
    for (size_t i = 0; i < n; i++) {
        size_t cur = i, hops = 0;
        while (parent[cur] >= 0 && hops++ <= n) cur = (size_t)parent[cur];
        if (parent[cur] >= 0) asc_spawn_task(s, &ix, i, "", 1, 0, on_path, out);
    }
out:
    free(parent);
    free(ix.first);
    free(ix.children);
    free(on_path);
}
