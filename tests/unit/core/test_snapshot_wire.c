/* Unit tests of the agent's snapshot forms (src/core/snapshot_wire.c): a round trip through the
 * binary form keeps every field, malformed or hostile binary answers are refused without crashing,
 * and the compact JSON form is JSON with every string once. */
#include "aioscope/error.h"
#include "aioscope/json.h"
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

static aioscope_snapshot *round_trip(const aioscope_snapshot *s, size_t *aoff, size_t *alen, const char *agent) {
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_snapshot_to_binary(s, agent, &b);
    CHECK(!b.oom && b.len > 8);
    aioscope_snapshot *r = NULL;
    CHECK_EQ_INT(aioscope_snapshot_from_binary(b.data, b.len, &r, aoff, alen), 0);
    if (agent) CHECK(*alen == strlen(agent) && memcmp(b.data + *aoff, agent, *alen) == 0);
    aioscope_buf_free(&b);
    return r;
}

TEST(wire_round_trip_keeps_every_field) {
    aioscope_snapshot *s = sample();
    size_t aoff, alen;
    aioscope_snapshot *r = round_trip(s, &aoff, &alen, "{\"read_with\":\"gil\",\"loops\":[]}");
    CHECK_EQ_INT(r->pid, 4242);
    CHECK_EQ_INT(r->py_version_hex, 0x030C0100);
    CHECK_EQ_STR(r->source, "agent");
    CHECK_EQ_INT(r->has_agent_fields, 1);
    CHECK_EQ_INT(r->frozen, 0);
    CHECK_EQ_INT(r->unreadable_tasks, 2);
    CHECK_EQ_INT(r->nthreads, 2);
    CHECK(r->threads[0].thread_id == 140000000000001ULL && r->threads[0].native_id == 77);
    CHECK_EQ_INT(r->threads[0].loop_state, AIOSCOPE_LOOP_RUNNING);
    CHECK_EQ_INT(r->threads[0].running_task, 1);
    CHECK_EQ_INT(r->threads[0].nframes, 1);
    CHECK_EQ_STR(r->threads[0].frames[0].file, "/app/main.py");
    CHECK_EQ_STR(r->threads[0].frames[0].function, "run");
    CHECK_EQ_INT(r->threads[0].frames[0].line, 12);
    CHECK_EQ_INT(r->threads[1].running_task, -1);
    CHECK_EQ_INT(r->threads[1].nframes, 0);
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
    /* The --json text of what was read is the --json text of what was sent. */
    aioscope_buf a, c;
    aioscope_buf_init(&a);
    aioscope_buf_init(&c);
    aioscope_snapshot_to_json(s, &a);
    aioscope_snapshot_to_json(r, &c);
    CHECK_EQ_STR(c.data, a.data);
    aioscope_buf_free(&a);
    aioscope_buf_free(&c);
    aioscope_snapshot_free(r);
    aioscope_snapshot_free(s);
}

TEST(wire_binary_strings_are_sent_once) {
    aioscope_snapshot *s = sample();
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_snapshot_to_binary(s, NULL, &b);
    /* "/app/main.py" is in a thread's stack and a task's coroutine stack: one table entry. */
    const char *first = memmem(b.data, b.len, "/app/main.py", 12);
    CHECK(first != NULL && memmem(first + 1, b.len - (size_t)(first + 1 - b.data), "/app/main.py", 12) == NULL);
    aioscope_buf_free(&b);
    aioscope_snapshot_free(s);
}

TEST(wire_compact_json_is_json_with_strings_once) {
    aioscope_snapshot *s = sample();
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_snapshot_to_wire(s, &b);
    const char *first = strstr(b.data, "/app/main.py");
    CHECK(first != NULL && strstr(first + 1, "/app/main.py") == NULL);
    aioscope_json *root = NULL;
    CHECK_EQ_INT(aioscope_json_parse(b.data, b.len, &root), 0);
    CHECK_EQ_STR(aioscope_json_get_string(root, "format"), "aioscope-wire-1");
    const aioscope_json *tasks = aioscope_json_get(root, "tasks");
    CHECK(tasks && tasks->type == AIOSCOPE_JSON_ARRAY && tasks->len == 3);
    aioscope_json_free(root);
    aioscope_buf_free(&b);
    aioscope_snapshot_free(s);
}

static int parse_bin(const void *data, size_t len) {
    aioscope_snapshot *r = (aioscope_snapshot *)1;
    int rc = aioscope_snapshot_from_binary(data, len, &r, NULL, NULL);
    if (rc < 0) CHECK(r == NULL);
    aioscope_snapshot_free(r);
    return rc;
}

static void put32(char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (char)(v >> (8 * i));
}

TEST(wire_refuses_malformed_answers) {
    CHECK_EQ_INT(parse_bin("", 0), AIOSCOPE_EPARSE);
    CHECK_EQ_INT(parse_bin("{\"error\":\"EPERM\"}", 17), AIOSCOPE_EPARSE);
    CHECK_EQ_INT(parse_bin("ASCWIRE2", 8), AIOSCOPE_EPARSE); /* header cut */
    aioscope_snapshot *s = sample();
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_snapshot_to_binary(s, "{}", &b);
    CHECK(!b.oom);
    /* Every cut of a good answer is refused (the agent section's length says where it ends). */
    for (size_t n = 0; n < b.len; n++) CHECK_EQ_INT(parse_bin(b.data, n), AIOSCOPE_EPARSE);
    CHECK_EQ_INT(parse_bin(b.data, b.len), 0);
    /* Trailing bytes too. */
    char *longer = malloc(b.len + 1);
    memcpy(longer, b.data, b.len);
    longer[b.len] = 'x';
    CHECK_EQ_INT(parse_bin(longer, b.len + 1), AIOSCOPE_EPARSE);
    free(longer);
    /* A string count far beyond the answer's size: refused before anything is allocated. */
    char *bad = malloc(b.len);
    memcpy(bad, b.data, b.len);
    put32(bad + 32, 0xffffffffu);
    CHECK_EQ_INT(parse_bin(bad, b.len), AIOSCOPE_EPARSE);
    /* A string whose terminating NUL is missing: string 0 is the source, "agent", after the
     * 36-byte header and its 4-byte length. */
    memcpy(bad, b.data, b.len);
    CHECK(memcmp(bad + 40, "agent", 6) == 0);
    bad[45] = 'z';
    CHECK_EQ_INT(parse_bin(bad, b.len), AIOSCOPE_EPARSE);
    free(bad);
    aioscope_buf_free(&b);
    aioscope_snapshot_free(s);
}

/* Flip every byte of a good answer in turn: whatever is read must be sound (indices in range,
 * strings present), and nothing may crash (the sanitizer build checks the memory). */
TEST(wire_survives_every_corrupted_byte) {
    aioscope_snapshot *s = sample();
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_snapshot_to_binary(s, "{\"read_with\":\"gil\"}", &b);
    char *bad = malloc(b.len);
    for (size_t i = 0; i < b.len; i++) {
        for (int v = 0; v < 3; v++) {
            memcpy(bad, b.data, b.len);
            bad[i] = (char)(v == 0 ? 0xff : v == 1 ? 0x00 : bad[i] ^ 0x80);
            aioscope_snapshot *r = NULL;
            if (aioscope_snapshot_from_binary(bad, b.len, &r, NULL, NULL) != 0) continue;
            for (size_t t = 0; t < r->nthreads; t++)
                CHECK(r->threads[t].running_task >= -1 && r->threads[t].running_task < (long)r->ntasks);
            for (size_t t = 0; t < r->ntasks; t++) {
                CHECK(r->tasks[t].name != NULL);
                CHECK(r->tasks[t].thread >= -1 && r->tasks[t].thread < (long)r->nthreads);
                for (size_t k = 0; k < r->tasks[t].ncoro; k++)
                    CHECK(r->tasks[t].coro[k].file && r->tasks[t].coro[k].function);
            }
            aioscope_snapshot_free(r);
        }
    }
    free(bad);
    aioscope_buf_free(&b);
    aioscope_snapshot_free(s);
}

TEST(wire_out_of_range_indices_become_unknown) {
    aioscope_snapshot *s = sample();
    /* Indices past the tables (a thread's running task, a task's thread, a string). */
    s->threads[0].running_task = 9;
    s->tasks[1].thread = 7;
    s->tasks[1].steps = -5;
    s->tasks[1].busy_s = 0.0 / 0.0;
    size_t aoff, alen;
    aioscope_snapshot *r = round_trip(s, &aoff, &alen, NULL);
    CHECK_EQ_INT(alen, 0);
    CHECK_EQ_INT(r->threads[0].running_task, -1);
    CHECK_EQ_INT(r->tasks[1].thread, -1);
    CHECK_EQ_INT(r->tasks[1].steps, -1);
    CHECK(r->tasks[1].busy_s == -1);
    aioscope_snapshot_free(r);
    aioscope_snapshot_free(s);
}
