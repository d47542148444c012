/* Unit tests of the agent's compact snapshot form (src/core/snapshot_wire.c): a round trip keeps
 * every field, and malformed or hostile answers are refused without crashing. */
#include "aioscope/error.h"
#include "aioscope/snapshot_wire.h"
#include "test.h"

/* A snapshot with two threads and three tasks exercising every field. */
static aioscope_snapshot *sample(void) {
    aioscope_snapshot *s = aioscope_snapshot_new();
    CHECK(s != NULL);
    s->pid = 4242;
    s->py_version_hex = 0x030C0100;
    s->source = aioscope_snapshot_intern(s, "agent");
    s->has_agent_fields = 1;
    s->unreadable_tasks = 2;
    s->nthreads = 2;
    s->threads = calloc(2, sizeof *s->threads);
    s->threads[0].thread_id = 140000000000001ULL;
    s->threads[0].native_id = 77;
    s->threads[0].loop_state = AIOSCOPE_LOOP_RUNNING;
    s->threads[0].running_task = 1;
    s->threads[0].nframes = 1;
    s->threads[0].frames = calloc(1, sizeof(aioscope_snap_frame));
    s->threads[0].frames[0] = (aioscope_snap_frame){aioscope_snapshot_intern(s, "/app/main.py"),
                                                     aioscope_snapshot_intern(s, "run"), 12};
    s->threads[1].thread_id = 5;
    s->threads[1].running_task = -1;
    s->ntasks = 3;
    s->tasks = calloc(3, sizeof *s->tasks);
    for (size_t i = 0; i < 3; i++) {
        aioscope_snap_task *t = &s->tasks[i];
        t->id = 0x7f0000001000ULL + i * 0x100;
        t->thread = i == 1 ? 0 : -1;
        t->busy_s = 0.25 * (double)i;
        t->steps = (long)(10 * i);
        t->age_s = i == 2 ? -1 : 1.5;
    }
    s->tasks[0].name = aioscope_snapshot_intern(s, "parent \"quoted\" \xc3\xa9");
    s->tasks[0].awaiting = aioscope_snapshot_intern(s, "gather");
    s->tasks[0].awaiting_id = 99;
    s->tasks[1].name = aioscope_snapshot_intern(s, "child");
    s->tasks[1].awaited_by = calloc(1, sizeof(uint64_t));
    s->tasks[1].awaited_by[0] = s->tasks[0].id;
    s->tasks[1].nawaited_by = 1;
    s->tasks[1].spawned_by = s->tasks[0].id;
    s->tasks[1].cancelling = 1;
    s->tasks[1].ncoro = 2;
    s->tasks[1].coro = calloc(2, sizeof(aioscope_snap_frame));
    s->tasks[1].coro[0] = (aioscope_snap_frame){aioscope_snapshot_intern(s, "/app/main.py"),
                                                 aioscope_snapshot_intern(s, "child"), 30};
    s->tasks[1].coro[1] = (aioscope_snap_frame){aioscope_snapshot_intern(s, "/usr/lib/asyncio/tasks.py"),
                                                 aioscope_snapshot_intern(s, "sleep"), 649};
    s->tasks[2].name = aioscope_snapshot_intern(s, "failed");
    s->tasks[2].state = AIOSCOPE_TASK_FINISHED;
    s->tasks[2].exception = aioscope_snapshot_intern(s, "ValueError: boom\nline two");
    return s;
}

static aioscope_snapshot *round_trip(const aioscope_snapshot *s, size_t *aoff, size_t *alen, const char *tail) {
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_snapshot_to_wire(s, &b);
    CHECK(!b.oom && b.len > 2);
    if (tail) { /* the agent appends its own section before the closing brace */
        b.len--;
        aioscope_buf_puts(&b, tail);
    }
    aioscope_snapshot *r = NULL;
    CHECK_EQ_INT(aioscope_snapshot_from_wire(b.data, b.len, &r, aoff, alen), 0);
    aioscope_buf_free(&b);
    return r;
}

TEST(wire_round_trip_keeps_every_field) {
    aioscope_snapshot *s = sample();
    size_t aoff, alen;
    aioscope_snapshot *r = round_trip(s, &aoff, &alen, ",\"agent\":{\"read_with\":\"gil\",\"loops\":[]}}");
    CHECK_EQ_INT(alen, strlen("{\"read_with\":\"gil\",\"loops\":[]}"));
    CHECK_EQ_INT(r->pid, 4242);
    CHECK_EQ_INT(r->py_version_hex, 0x030C0100);
    CHECK_EQ_STR(r->source, "agent");
    CHECK_EQ_INT(r->has_agent_fields, 1);
    CHECK_EQ_INT(r->unreadable_tasks, 2);
    CHECK_EQ_INT(r->nthreads, 2);
    CHECK(r->threads[0].thread_id == 140000000000001ULL && r->threads[0].native_id == 77);
    CHECK_EQ_INT(r->threads[0].loop_state, AIOSCOPE_LOOP_RUNNING);
    CHECK_EQ_INT(r->threads[0].running_task, 1);
    CHECK_EQ_INT(r->threads[0].nframes, 1);
    CHECK_EQ_STR(r->threads[0].frames[0].file, "/app/main.py");
    CHECK_EQ_INT(r->threads[0].frames[0].line, 12);
    CHECK_EQ_INT(r->threads[1].running_task, -1);
    CHECK_EQ_INT(r->ntasks, 3);
    for (size_t i = 0; i < 3; i++) {
        CHECK(r->tasks[i].id == s->tasks[i].id);
        CHECK_EQ_STR(r->tasks[i].name, s->tasks[i].name);
        CHECK_EQ_INT(r->tasks[i].state, s->tasks[i].state);
        CHECK_EQ_INT(r->tasks[i].thread, s->tasks[i].thread);
        CHECK(r->tasks[i].busy_s == s->tasks[i].busy_s);
        CHECK_EQ_INT(r->tasks[i].steps, s->tasks[i].steps);
        CHECK(r->tasks[i].age_s == s->tasks[i].age_s);
    }
    CHECK_EQ_STR(r->tasks[0].awaiting, "gather");
    CHECK(r->tasks[0].awaiting_id == 99);
    CHECK(r->tasks[1].awaiting == NULL);
    CHECK_EQ_INT(r->tasks[1].nawaited_by, 1);
    CHECK(r->tasks[1].awaited_by[0] == s->tasks[0].id && r->tasks[1].spawned_by == s->tasks[0].id);
    CHECK_EQ_INT(r->tasks[1].cancelling, 1);
    CHECK_EQ_INT(r->tasks[1].ncoro, 2);
    CHECK_EQ_STR(r->tasks[1].coro[1].function, "sleep");
    CHECK_EQ_INT(r->tasks[1].coro[1].line, 649);
    CHECK_EQ_STR(r->tasks[2].exception, "ValueError: boom\nline two");
    CHECK(r->tasks[0].exception == NULL);
    aioscope_snapshot_free(r);
    aioscope_snapshot_free(s);
}

TEST(wire_strings_are_sent_once) {
    aioscope_snapshot *s = sample();
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_snapshot_to_wire(s, &b);
    /* "/app/main.py" is in a thread's stack and a task's coroutine stack: one table entry. */
    const char *first = strstr(b.data, "/app/main.py");
    CHECK(first != NULL && strstr(first + 1, "/app/main.py") == NULL);
    aioscope_buf_free(&b);
    aioscope_snapshot_free(s);
}

static int parse(const char *text) {
    aioscope_snapshot *r = NULL;
    int rc = aioscope_snapshot_from_wire(text, strlen(text), &r, NULL, NULL);
    aioscope_snapshot_free(r);
    return rc;
}

TEST(wire_refuses_malformed_answers) {
    CHECK_EQ_INT(parse(""), AIOSCOPE_EPARSE);
    CHECK_EQ_INT(parse("{}"), AIOSCOPE_EPARSE);
    CHECK_EQ_INT(parse("{\"pid\":1}"), AIOSCOPE_EPARSE); /* no format */
    CHECK_EQ_INT(parse("{\"format\":\"other\"}"), AIOSCOPE_EPARSE);
    CHECK_EQ_INT(parse("{\"format\":\"aioscope-wire-1\",\"tasks\":[]}"), AIOSCOPE_EPARSE); /* no strings first */
    CHECK_EQ_INT(parse("{\"format\":\"aioscope-wire-1\",\"strings\":[\"a\"],\"tasks\":[[1,0,0,[],-1,0,[],-1,0,0,0,0,0"),
                 AIOSCOPE_EPARSE); /* cut */
    CHECK_EQ_INT(parse("{\"format\":\"aioscope-wire-1\",\"strings\":[\"a\\q\"]}"), AIOSCOPE_EPARSE);
    /* Deeply nested unknown member: bounded, refused. */
    char deep[400] = "{\"format\":\"aioscope-wire-1\",\"x\":";
    for (int i = 0; i < 100; i++) strcat(deep, "[");
    CHECK_EQ_INT(parse(deep), AIOSCOPE_EPARSE);
}

TEST(wire_out_of_range_indices_become_unknown) {
    const char *text = "{\"format\":\"aioscope-wire-1\",\"strings\":[\"t\"],"
                       "\"threads\":[[1,2,1,9,[]]],"
                       "\"tasks\":[[5,7,0,[3,4,10],8,0,[],3,-1,-1,0,-1,0,-1]],\"unknown\":{\"a\":[1,{\"b\":null}]}}";
    aioscope_snapshot *r = NULL;
    CHECK_EQ_INT(aioscope_snapshot_from_wire(text, strlen(text), &r, NULL, NULL), 0);
    CHECK_EQ_INT(r->threads[0].running_task, -1); /* task 9 does not exist */
    CHECK_EQ_STR(r->tasks[0].name, "?");          /* string 7 does not exist */
    CHECK_EQ_STR(r->tasks[0].coro[0].file, "?");
    CHECK(r->tasks[0].awaiting == NULL);
    CHECK_EQ_INT(r->tasks[0].thread, -1);
    CHECK_EQ_INT(r->tasks[0].steps, -1);
    aioscope_snapshot_free(r);
}
