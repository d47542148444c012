/* Unit tests of the CLI's snapshot printers (src/cli/snapshot_print.c), which build their text
 * without printf: a `ps` row must be what its printf format would print. (--json is the model's
 * own writer, tested in tests/unit/attach/test_snapshot_json.c.) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aioscope/snapshot.h"
#include "cli/snapshot_cli.h"
#include "test.h"

static uint64_t rnd(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* n tasks with every kind of field value: known and unknown numbers, doubles of every size,
 * strings that need escaping, UTF-8 and invalid bytes, links, a running task. */
static aioscope_snapshot *varied(size_t n, int agent) {
    static const char *const names[] = {"plain", "quote \" and \\ back", "tab\tnew\nline", "caf\xc3\xa9",
                                        "bad \xff byte", "ctl \x01 \x7f", ""};
    aioscope_snapshot *s = aioscope_snapshot_new();
    CHECK(s != NULL);
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    s->pid = 321;
    s->py_version_hex = 0x030D0000;
    s->source = agent ? "agent" : "memory";
    s->has_agent_fields = agent;
    s->unreadable_tasks = 3;
    s->nthreads = 1;
    s->threads = calloc(1, sizeof *s->threads);
    s->threads[0] = (aioscope_snap_thread){.thread_id = 140001, .native_id = 99, .loop_state = AIOSCOPE_LOOP_RUNNING,
                                           .running_task = 1};
    s->threads[0].frames = calloc(1, sizeof(aioscope_snap_frame));
    s->threads[0].frames[0] = (aioscope_snap_frame){"/app/main.py", "main", 7};
    s->threads[0].nframes = 1;
    s->ntasks = n;
    s->tasks = calloc(n, sizeof *s->tasks);
    for (size_t i = 0; i < n; i++) {
        aioscope_snap_task *t = &s->tasks[i];
        uint64_t r = rnd(&seed);
        char name[64];
        snprintf(name, sizeof name, "%s-%zu", names[i % 7], i);
        t->id = 0x7f0000000000ULL + 0x40 * i;
        t->name = aioscope_snapshot_strdup(s, name);
        t->state = (aioscope_task_state)(r % 3);
        t->thread = i == 1 ? 0 : -1;
        t->awaiting = i % 4 == 0 ? NULL : i % 4 == 1 ? "sleep (1.500 s left)" : i % 4 == 2 ? names[i % 7] : "Task";
        t->awaiting_id = i % 4 == 3 && i > 0 ? s->tasks[i - 1].id : r % 5 == 0 ? 0 : r >> 20;
        if (i % 5 == 1) {
            t->awaited_by = calloc(2, sizeof(uint64_t));
            t->awaited_by[0] = s->tasks[0].id;
            t->awaited_by[1] = 12345;
            t->nawaited_by = 2;
        }
        t->ncoro = i % 3;
        t->coro = t->ncoro ? calloc(t->ncoro, sizeof(aioscope_snap_frame)) : NULL;
        for (size_t k = 0; k < t->ncoro; k++)
            t->coro[k] = (aioscope_snap_frame){k ? "/usr/lib/python3.13/asyncio/tasks.py" : "/app/w\xc3\xb6rk.py",
                                               k ? "sleep" : names[i % 7], (int)(r % 2000) - 3};
        /* Doubles over many magnitudes, integral ones, halves, unknowns. */
        double mag = pow(10.0, (double)(int)(r % 15) - 8);
        double u = (double)(rnd(&seed) >> 11) / 9007199254740992.0;
        t->busy_s = i % 11 == 0 ? -1 : i % 13 == 0 ? (double)(r % 1000) : i % 17 == 0 ? 0.5 * (double)(r % 999) : u * mag;
        t->age_s = i % 7 == 0 ? -1 : i % 9 == 0 ? (double)(r % 100) / 20 : u * mag * 1000;
        t->steps = i % 11 == 0 ? -1 : (long)(r % 100000);
        t->spawned_by = i % 6 == 0 ? 0 : i % 6 == 1 ? 777 : s->tasks[0].id;
        t->cancelling = (int)(r & 1);
        t->exception = t->state == AIOSCOPE_TASK_FINISHED && (r & 2) ? "ValueError: \"x\"\n" : NULL;
    }
    return s;
}

/* A row of the table is what printf made of it with the format the table documents. */
TEST(print_table_row_is_printfs) {
    aioscope_snapshot *s = varied(3, 1);
    aioscope_snap_task *t = &s->tasks[2];
    t->name = "worker";
    t->state = AIOSCOPE_TASK_PENDING;
    t->thread = -1;
    t->cancelling = 0;
    t->awaiting = "Event";
    t->awaiting_id = 1;
    t->age_s = 12.25;  /* a tie: printf's %.1f rounds the binary value, 12.2 */
    t->busy_s = 0.00012345;
    t->steps = 42;
    t->spawned_by = s->tasks[0].id;
    CHECK_EQ_INT(t->ncoro, 2);
    t->coro[0].function = "run";
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    asc_snap_print_table(s, f);
    fclose(f);
    char want[512];
    /* The WHERE column has the line of the program's own frame. */
    char where[64];
    snprintf(where, sizeof where, "w\xc3\xb6rk.py:%d", t->coro[0].line);
    snprintf(want, sizeof want, "%-8s 0x%-12llx %-20s %-10s %-40s %-20s %-24s %8s %9s %7s %-16s %s\n", "-",
             (unsigned long long)t->id, "worker", "waiting", "run > sleep", where, "Event", "12.2", "0.0001",
             "42", s->tasks[0].name, "-");
    CHECK(strstr(text, want) != NULL);
    free(text);
    aioscope_snapshot_free(s);
}

/* The await tree: children in task order under every task that awaits them (a task awaited by
 * two is shown under both), and a cycle cut where it closes. */
TEST(print_tree_children_in_order) {
    aioscope_snapshot *s = aioscope_snapshot_new();
    CHECK(s != NULL);
    s->source = "agent";
    s->has_agent_fields = 1;
    s->ntasks = 6;
    s->tasks = calloc(6, sizeof *s->tasks);
    static const char *const names[] = {"D", "A", "C", "B", "X", "Y"};
    for (size_t i = 0; i < 6; i++) {
        s->tasks[i].id = 100 + i;
        s->tasks[i].name = names[i];
        s->tasks[i].thread = -1;
    }
    /* A (101) awaits C (102) and B (103), listed in that task order; D (100) is awaited by B and C. */
    uint64_t *d = calloc(2, sizeof *d), *c = calloc(1, sizeof *c), *b = calloc(1, sizeof *b);
    d[0] = 103, d[1] = 102, c[0] = 101, b[0] = 101;
    s->tasks[0].awaited_by = d, s->tasks[0].nawaited_by = 2;
    s->tasks[2].awaited_by = c, s->tasks[2].nawaited_by = 1;
    s->tasks[3].awaited_by = b, s->tasks[3].nawaited_by = 1;
    /* X and Y await each other. */
    uint64_t *x = calloc(1, sizeof *x), *y = calloc(1, sizeof *y);
    x[0] = 105, y[0] = 104;
    s->tasks[4].awaited_by = x, s->tasks[4].nawaited_by = 1;
    s->tasks[5].awaited_by = y, s->tasks[5].nawaited_by = 1;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    asc_snap_print_tree(s, f);
    fclose(f);
    const char *want = "A [pending]\n"
                       "├── C [pending]\n"
                       "│   └── D [pending]\n"
                       "└── B [pending]\n"
                       "    └── D [pending]\n"
                       "Tasks awaiting each other in a cycle (deadlock):\n"
                       "  X [pending]\n"
                       "  └── Y [pending]\n"
                       "      └── X [pending] (cycle: waits on itself through the tasks above)\n";
    const char *body = strstr(text, "A [pending]");
    CHECK(body != NULL);
    CHECK_EQ_STR(body, want);
    free(text);
    aioscope_snapshot_free(s);
}
