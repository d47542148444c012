/* Unit tests of the wait-for graph: which tasks can never complete, and which cycles hold them. */
#include "aioscope/error.h"
#include "aioscope/waitgraph.h"
#include "test.h"

/* Build a graph of n nodes from kinds and (from, to) pairs, solve it and find its cycles. */
typedef struct {
    unsigned char blocked[16];
    int cycle[16];
    size_t ncycles;
} wg_result;

static wg_result run(size_t n, const aioscope_wait_kind *kinds, const size_t (*edges)[2], size_t nedges) {
    wg_result r;
    memset(&r, 0, sizeof r);
    aioscope_waitgraph *g = aioscope_waitgraph_new(n);
    CHECK(g != NULL);
    for (size_t i = 0; i < n; i++) CHECK_EQ_INT(aioscope_waitgraph_set_kind(g, i, kinds[i]), 0);
    for (size_t i = 0; i < nedges; i++) CHECK_EQ_INT(aioscope_waitgraph_add_edge(g, edges[i][0], edges[i][1]), 0);
    CHECK_EQ_INT(aioscope_waitgraph_solve(g, r.blocked), 0);
    CHECK_EQ_INT(aioscope_waitgraph_cycles(g, r.blocked, r.cycle, &r.ncycles), 0);
    aioscope_waitgraph_free(g);
    return r;
}

#define E AIOSCOPE_WAIT_EVERY
#define S AIOSCOPE_WAIT_SOME
#define F AIOSCOPE_WAIT_FREE

TEST(waitgraph_two_locks_in_opposite_order_are_a_cycle) {
    /* 0 holds A and wants B, held by 1, which wants A; 2 waits on the gather of 0 and 1. */
    aioscope_wait_kind k[] = {E, E, E};
    size_t e[][2] = {{0, 1}, {1, 0}, {2, 0}, {2, 1}};
    wg_result r = run(3, k, e, 4);
    CHECK(r.blocked[0] && r.blocked[1] && r.blocked[2]);
    CHECK_EQ_INT(r.ncycles, 1);
    CHECK(r.cycle[0] == 1 && r.cycle[1] == 1);
    CHECK_EQ_INT(r.cycle[2], 0); /* waits on the cycle from outside */
}

TEST(waitgraph_chain_to_a_free_task_is_not_blocked) {
    /* 0 -> 1 -> 2, and 2 is runnable: everyone gets through eventually. */
    aioscope_wait_kind k[] = {E, E, F};
    size_t e[][2] = {{0, 1}, {1, 2}};
    wg_result r = run(3, k, e, 2);
    CHECK(!r.blocked[0] && !r.blocked[1] && !r.blocked[2]);
    CHECK_EQ_INT(r.ncycles, 0);
}

TEST(waitgraph_gather_with_a_live_child_is_not_blocked) {
    /* 0 gathers 1 and 2 (EVERY: a failing child ends the gather); 1 awaits 0; 2 runs. */
    aioscope_wait_kind k[] = {E, E, F};
    size_t e[][2] = {{0, 1}, {0, 2}, {1, 0}};
    wg_result r = run(3, k, e, 3);
    CHECK(!r.blocked[0] && !r.blocked[1]);
    CHECK_EQ_INT(r.ncycles, 0);
}

TEST(waitgraph_wait_all_completed_is_blocked_by_one_blocked_child) {
    /* 0 needs both 1 and 2 (SOME); 1 awaits 0; 2 runs: 0 and 1 can never finish. */
    aioscope_wait_kind k[] = {S, E, F};
    size_t e[][2] = {{0, 1}, {0, 2}, {1, 0}};
    wg_result r = run(3, k, e, 3);
    CHECK(r.blocked[0] && r.blocked[1] && !r.blocked[2]);
    CHECK_EQ_INT(r.ncycles, 1);
    CHECK(r.cycle[0] == r.cycle[1] && r.cycle[0] != 0);
}

TEST(waitgraph_self_wait_is_a_cycle) {
    /* A task waiting for a lock it holds itself (asyncio.Lock is not reentrant). */
    aioscope_wait_kind k[] = {E, F};
    size_t e[][2] = {{0, 0}};
    wg_result r = run(2, k, e, 1);
    CHECK(r.blocked[0] && !r.blocked[1]);
    CHECK_EQ_INT(r.ncycles, 1);
    CHECK_EQ_INT(r.cycle[0], 1);
}

TEST(waitgraph_separate_cycles_get_separate_numbers) {
    aioscope_wait_kind k[] = {E, E, E, E, E};
    size_t e[][2] = {{0, 1}, {1, 0}, {2, 3}, {3, 4}, {4, 2}};
    wg_result r = run(5, k, e, 5);
    CHECK_EQ_INT(r.ncycles, 2);
    CHECK(r.cycle[0] == r.cycle[1] && r.cycle[2] == r.cycle[3] && r.cycle[3] == r.cycle[4]);
    CHECK(r.cycle[0] != r.cycle[2]);
}

TEST(waitgraph_node_without_targets_is_never_blocked) {
    aioscope_wait_kind k[] = {E, S};
    wg_result r = run(2, k, NULL, 0);
    CHECK(!r.blocked[0] && !r.blocked[1]);
}

TEST(waitgraph_rejects_out_of_range) {
    aioscope_waitgraph *g = aioscope_waitgraph_new(2);
    CHECK_EQ_INT(aioscope_waitgraph_add_edge(g, 0, 2), AIOSCOPE_EINVAL);
    CHECK_EQ_INT(aioscope_waitgraph_set_kind(g, 5, E), AIOSCOPE_EINVAL);
    CHECK_EQ_INT(aioscope_waitgraph_add_edge(g, 0, 1), 0);
    CHECK_EQ_INT(aioscope_waitgraph_add_edge(g, 0, 1), 0); /* kept once */
    aioscope_waitgraph_free(g);
    aioscope_waitgraph_free(NULL);
}

TEST(waitgraph_long_chain_into_a_cycle_does_not_recurse) {
    /* 100 000 tasks each waiting on the next, the last on the first: one cycle, no stack overflow. */
    size_t n = 100000;
    aioscope_waitgraph *g = aioscope_waitgraph_new(n);
    for (size_t i = 0; i < n; i++) {
        aioscope_waitgraph_set_kind(g, i, E);
        aioscope_waitgraph_add_edge(g, i, (i + 1) % n);
    }
    unsigned char *b = malloc(n);
    int *c = malloc(n * sizeof *c);
    size_t nc = 0;
    CHECK_EQ_INT(aioscope_waitgraph_solve(g, b), 0);
    CHECK_EQ_INT(aioscope_waitgraph_cycles(g, b, c, &nc), 0);
    CHECK_EQ_INT(nc, 1);
    CHECK(b[0] && b[n - 1] && c[0] == 1 && c[n - 1] == 1);
    free(b);
    free(c);
    aioscope_waitgraph_free(g);
}
