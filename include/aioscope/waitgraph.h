/* The wait-for graph of asyncio tasks and the search for deadlocks in it.
 *
 * The agent's deadlock detector (src/agent/deadlock.c) turns a snapshot of one event loop into
 * this graph: a node per task, an edge from a task to every task it waits on (the holder of the
 * lock it wants, the task it awaits, the children of the gather, TaskGroup or asyncio.wait it sits
 * in). How a node depends on its targets is its kind:
 *
 *   FREE   the node can move on by itself: it is runnable, or it waits on something the detector
 *          cannot see through (an Event, a Queue, a plain Future), which someone may complete.
 *   EVERY  the node is released when any one target completes (a lock with several holders; a
 *          gather, whose first failing child ends it): blocked only while every target is blocked.
 *   SOME   the node needs every target to complete (asyncio.wait(ALL_COMPLETED)): blocked as soon
 *          as one target is blocked.
 *
 * aioscope_waitgraph_solve() computes the nodes that can never complete, whatever the FREE nodes
 * do: the greatest set B such that every EVERY node of B has all its targets in B and every SOME
 * node of B has a target in B. A node with no targets is never blocked. Such a set only exists
 * through a cycle, so aioscope_waitgraph_cycles() then names the cycles (strongly connected
 * components of blocked nodes, or a node waiting on itself) that hold it; the other blocked nodes
 * wait on a cycle from outside.
 *
 * No Python here, so the logic is testable in C (tests/unit/core/test_waitgraph.c). */
#ifndef AIOSCOPE_WAITGRAPH_H
#define AIOSCOPE_WAITGRAPH_H

#include <stddef.h>

typedef enum {
    AIOSCOPE_WAIT_FREE = 0,
    AIOSCOPE_WAIT_EVERY = 1,
    AIOSCOPE_WAIT_SOME = 2,
} aioscope_wait_kind;

typedef struct aioscope_waitgraph aioscope_waitgraph;

/* A graph of nnodes nodes, all FREE, without edges; NULL when out of memory. Free with
 * aioscope_waitgraph_free (accepts NULL). */
aioscope_waitgraph *aioscope_waitgraph_new(size_t nnodes);
void aioscope_waitgraph_free(aioscope_waitgraph *g);

/* Return 0, or AIOSCOPE_EINVAL for a node out of range, AIOSCOPE_ENOMEM. Duplicate edges are
 * kept once. */
int aioscope_waitgraph_set_kind(aioscope_waitgraph *g, size_t node, aioscope_wait_kind kind);
int aioscope_waitgraph_add_edge(aioscope_waitgraph *g, size_t from, size_t to);

/* blocked (nnodes entries) receives 1 for every node that can never complete, else 0. */
int aioscope_waitgraph_solve(const aioscope_waitgraph *g, unsigned char *blocked);

/* Given the result of solve: cycle (nnodes entries) receives, for each blocked node that lies on
 * a cycle of blocked nodes, the cycle's number (1, 2, ...), else 0; *ncycles the count. Two
 * nodes share a number when each waits, through blocked nodes, on the other. */
int aioscope_waitgraph_cycles(const aioscope_waitgraph *g, const unsigned char *blocked, int *cycle,
                              size_t *ncycles);

#endif
