/* waitgraph.c: the wait-for graph of tasks and its deadlock analysis (see aioscope/waitgraph.h).
 *
 * solve() is the greatest fixpoint of "blocked", found from the other side: every node that
 * could be blocked (EVERY or SOME with targets) starts blocked; a node that turns out free frees
 * every EVERY node waiting on it, and the last of a SOME node's blocked targets to turn free frees
 * that node. A worklist over reverse edges makes it linear in nodes plus edges.
 *
 * cycles() is Tarjan's strongly-connected-components algorithm over the blocked nodes and the
 * edges between them, written with an explicit stack: the graph comes from a program's tasks and
 * may be deep, which a recursive version would turn into a C stack overflow. */
#include "aioscope/waitgraph.h"

#include <stdlib.h>
#include <string.h>

#include "aioscope/error.h"

typedef struct {
    size_t *to; /* owned */
    size_t n, cap;
    aioscope_wait_kind kind;
} asc_wg_node;

struct aioscope_waitgraph {
    asc_wg_node *nodes; /* owned, nnodes */
    size_t nnodes;
};

aioscope_waitgraph *aioscope_waitgraph_new(size_t nnodes) {
    aioscope_waitgraph *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->nodes = calloc(nnodes ? nnodes : 1, sizeof *g->nodes);
    if (!g->nodes) {
        free(g);
        return NULL;
    }
    g->nnodes = nnodes;
    return g;
}

void aioscope_waitgraph_free(aioscope_waitgraph *g) {
    if (!g) return;
    for (size_t i = 0; i < g->nnodes; i++) free(g->nodes[i].to);
    free(g->nodes);
    free(g);
}

int aioscope_waitgraph_set_kind(aioscope_waitgraph *g, size_t node, aioscope_wait_kind kind) {
    if (!g || node >= g->nnodes) return AIOSCOPE_EINVAL;
    if (kind != AIOSCOPE_WAIT_FREE && kind != AIOSCOPE_WAIT_EVERY && kind != AIOSCOPE_WAIT_SOME)
        return AIOSCOPE_EINVAL;
    g->nodes[node].kind = kind;
    return 0;
}

int aioscope_waitgraph_add_edge(aioscope_waitgraph *g, size_t from, size_t to) {
    if (!g || from >= g->nnodes || to >= g->nnodes) return AIOSCOPE_EINVAL;
    asc_wg_node *n = &g->nodes[from];
    /* A task waits on a handful of others; the linear duplicate check stays cheap. */
    for (size_t i = 0; i < n->n; i++)
        if (n->to[i] == to) return 0;
    if (n->n == n->cap) {
        size_t cap = n->cap ? n->cap * 2 : 4;
        size_t *p = realloc(n->to, cap * sizeof *p);
        if (!p) return AIOSCOPE_ENOMEM;
        n->to = p;
        n->cap = cap;
    }
    n->to[n->n++] = to;
    return 0;
}

int aioscope_waitgraph_solve(const aioscope_waitgraph *g, unsigned char *blocked) {
    if (!g || !blocked) return AIOSCOPE_EINVAL;
    size_t n = g->nnodes, nedges = 0;
    for (size_t i = 0; i < n; i++) nedges += g->nodes[i].n;
    /* Reverse edges in compressed form: preds of v are rev[first[v] .. first[v+1]). */
    size_t *first = calloc(n + 1, sizeof *first);
    size_t *rev = malloc((nedges ? nedges : 1) * sizeof *rev);
    size_t *fill = calloc(n + 1, sizeof *fill);
    size_t *blocked_targets = calloc(n ? n : 1, sizeof *blocked_targets); /* SOME nodes */
    size_t *work = malloc((n ? n : 1) * sizeof *work);
    int rc = AIOSCOPE_ENOMEM;
    if (!first || !rev || !fill || !blocked_targets || !work) goto done;
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < g->nodes[i].n; k++) first[g->nodes[i].to[k] + 1]++;
    for (size_t v = 0; v < n; v++) first[v + 1] += first[v];
    memcpy(fill, first, (n + 1) * sizeof *fill);
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < g->nodes[i].n; k++) rev[fill[g->nodes[i].to[k]]++] = i;

    /* Start from "everything that could be blocked is"; the free nodes seed the worklist. */
    size_t nwork = 0;
    for (size_t i = 0; i < n; i++) {
        const asc_wg_node *nd = &g->nodes[i];
        blocked[i] = nd->kind != AIOSCOPE_WAIT_FREE && nd->n > 0;
        if (!blocked[i]) work[nwork++] = i;
    }
    /* A SOME node counts the targets not yet known to be free; every free node, the initial
     * ones included, passes through the worklist once and decrements it. */
    for (size_t i = 0; i < n; i++) blocked_targets[i] = g->nodes[i].n;
    /* Each node enters the worklist once, when it turns free, so n slots suffice. */
    while (nwork > 0) {
        size_t v = work[--nwork];
        for (size_t k = first[v]; k < first[v + 1]; k++) {
            size_t u = rev[k];
            if (!blocked[u]) continue;
            if (g->nodes[u].kind == AIOSCOPE_WAIT_SOME && --blocked_targets[u] > 0) continue;
            blocked[u] = 0;
            work[nwork++] = u;
        }
    }
    rc = 0;
done:
    free(first);
    free(rev);
    free(fill);
    free(blocked_targets);
    free(work);
    return rc;
}

int aioscope_waitgraph_cycles(const aioscope_waitgraph *g, const unsigned char *blocked, int *cycle,
                              size_t *ncycles) {
    if (!g || !blocked || !cycle || !ncycles) return AIOSCOPE_EINVAL;
    size_t n = g->nnodes;
    *ncycles = 0;
    memset(cycle, 0, (n ? n : 1) * sizeof *cycle);
    /* Tarjan's state: index (0 = unvisited, else visit order + 1), lowlink, the component stack
     * and the explicit call stack of (node, next edge). Each holds at most n entries. */
    size_t *index = calloc(n ? n : 1, sizeof *index);
    size_t *low = calloc(n ? n : 1, sizeof *low);
    unsigned char *on_stack = calloc(n ? n : 1, 1);
    size_t *stack = malloc((n ? n : 1) * sizeof *stack);
    size_t *call_node = malloc((n ? n : 1) * sizeof *call_node);
    size_t *call_edge = malloc((n ? n : 1) * sizeof *call_edge);
    int rc = AIOSCOPE_ENOMEM;
    if (!index || !low || !on_stack || !stack || !call_node || !call_edge) goto done;
    size_t counter = 0, sp = 0;
    for (size_t root = 0; root < n; root++) {
        if (!blocked[root] || index[root]) continue;
        size_t depth = 0;
        call_node[depth] = root;
        call_edge[depth] = 0;
        depth++;
        index[root] = low[root] = ++counter;
        stack[sp++] = root;
        on_stack[root] = 1;
        while (depth > 0) {
            size_t v = call_node[depth - 1];
            const asc_wg_node *nd = &g->nodes[v];
            if (call_edge[depth - 1] < nd->n) {
                size_t w = nd->to[call_edge[depth - 1]++];
                if (!blocked[w]) continue;
                if (!index[w]) {
                    index[w] = low[w] = ++counter;
                    stack[sp++] = w;
                    on_stack[w] = 1;
                    call_node[depth] = w;
                    call_edge[depth] = 0;
                    depth++;
                } else if (on_stack[w] && index[w] < low[v]) {
                    low[v] = index[w];
                }
                continue;
            }
            /* v is finished: pass its lowlink up, and pop a component when v is its root. */
            depth--;
            if (depth > 0) {
                size_t parent = call_node[depth - 1];
                if (low[v] < low[parent]) low[parent] = low[v];
            }
            if (low[v] != index[v]) continue;
            /* v is on the component stack; the component is v and everything above it. */
            size_t top = sp;
            while (top > 0 && stack[top - 1] != v) top--;
            size_t size = sp - top + 1;
            /* A component is a cycle when it has two nodes or more, or one that waits on itself. */
            int self_loop = 0;
            for (size_t k = 0; k < nd->n; k++)
                if (nd->to[k] == v) self_loop = 1;
            int is_cycle = size > 1 || self_loop;
            if (is_cycle) (*ncycles)++;
            size_t w;
            do {
                w = stack[--sp];
                on_stack[w] = 0;
                if (is_cycle) cycle[w] = (int)*ncycles;
            } while (w != v);
        }
    }
    rc = 0;
done:
    free(index);
    free(low);
    free(on_stack);
    free(stack);
    free(call_node);
    free(call_edge);
    return rc;
}
