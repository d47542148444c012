/* Unit tests of the snapshot's JSON form (aioscope_snapshot_to_json and
 * aioscope_snapshot_write_json, src/attach/snapshot.c): the exact text that `ps|pstree|dump
 * --json` print and the agent's "snapshot json" answer, for a memory snapshot and an agent one —
 * escaping, UTF-8 and invalid bytes, empty and unknown fields, non-finite and huge numbers — and
 * the same text when it is written out in pieces. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aioscope/snapshot.h"
#include "test.h"

static char *json_of(const aioscope_snapshot *s) {
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_snapshot_to_json(s, &b);
    CHECK(!b.oom && b.len > 0);
    CHECK_EQ_INT(strlen(b.data), b.len);
    return b.data; /* caller frees */
}

static aioscope_snap_frame *frames(size_t n) {
    aioscope_snap_frame *f = calloc(n, sizeof *f);
    CHECK(f != NULL);
    return f;
}

TEST(snapshot_json_empty) {
    aioscope_snapshot *s = aioscope_snapshot_new();
    CHECK(s != NULL);
    char *text = json_of(s);
    CHECK_EQ_STR(text, "{\"pid\":0,\"python\":\"0.0.0\",\"source\":\"memory\",\"frozen\":false,"
                       "\"unavailable\":[\"busy_s\",\"steps\",\"spawned_by\"],\"threads\":[],\"tasks\":[],"
                       "\"unreadable_tasks\":0}");
    free(text);
    aioscope_snapshot_free(s);
}

/* Read from memory: no agent fields (named as unavailable), two threads (one running a task),
 * tasks whose strings need every kind of escaping, and ids and indices that lead nowhere. */
TEST(snapshot_json_memory) {
    aioscope_snapshot *s = aioscope_snapshot_new();
    CHECK(s != NULL);
    s->pid = 4321;
    s->py_version_hex = 0x030D01F0;
    s->frozen = 1;
    s->unreadable_tasks = 2;
    s->nthreads = 2;
    s->threads = calloc(2, sizeof *s->threads);
    s->threads[0] = (aioscope_snap_thread){.thread_id = 140001, .native_id = 77, .loop_state = AIOSCOPE_LOOP_POLLING,
                                           .running_task = -1, .frames = frames(2), .nframes = 2};
    s->threads[0].frames[0] = (aioscope_snap_frame){"/app/main.py", "main", 12};
    s->threads[0].frames[1] = (aioscope_snap_frame){"/usr/lib/python3.13/asyncio/runners.py", "Runner.run", 118};
    s->threads[1] = (aioscope_snap_thread){.thread_id = 140002, .loop_state = AIOSCOPE_LOOP_RUNNING, .running_task = 1};
    s->ntasks = 3;
    s->tasks = calloc(3, sizeof *s->tasks);
    aioscope_snap_task *t = s->tasks;
    t[0] = (aioscope_snap_task){.id = 0x7f0000001000, .name = "worker-1", .state = AIOSCOPE_TASK_PENDING,
                                .coro = frames(1), .ncoro = 1, .awaiting = "sleep", .awaiting_id = 0x7f0000002000,
                                .awaited_by = calloc(2, sizeof(uint64_t)), .nawaited_by = 2, .thread = -1};
    t[0].coro[0] = (aioscope_snap_frame){"/app/w\xc3\xb6rk.py", "work", 0};
    t[0].awaited_by[0] = 0x7f0000002000;
    t[0].awaited_by[1] = 12345;
    /* Quote, backslash, tab, newline, a control character and DEL. */
    t[1] = (aioscope_snap_task){.id = 0x7f0000002000, .name = "q\"b\\t\tn\nc\x01" "d\x7f" "e",
                                .state = AIOSCOPE_TASK_CANCELLED, .thread = 1};
    /* UTF-8 as is, an invalid byte as U+FFFD; a frame with no function; a thread index out of
     * range. */
    t[2] = (aioscope_snap_task){.id = 0x7f0000003000, .name = "caf\xc3\xa9 \xe2\x9c\x93 \xff", .state = AIOSCOPE_TASK_FINISHED,
                                .coro = frames(1), .ncoro = 1, .thread = 5};
    t[2].coro[0] = (aioscope_snap_frame){"?", NULL, -1};
    char *text = json_of(s);
    CHECK_EQ_STR(text,
                 "{\"pid\":4321,\"python\":\"3.13.1\",\"source\":\"memory\",\"frozen\":true,"
                 "\"unavailable\":[\"busy_s\",\"steps\",\"spawned_by\"],\"threads\":["
                 "{\"thread_id\":140001,\"native_id\":77,\"loop_state\":\"polling\",\"running_task\":null,\"stack\":["
                 "{\"file\":\"/app/main.py\",\"function\":\"main\",\"line\":12},"
                 "{\"file\":\"/usr/lib/python3.13/asyncio/runners.py\",\"function\":\"Runner.run\",\"line\":118}]},"
                 "{\"thread_id\":140002,\"native_id\":0,\"loop_state\":\"running\",\"running_task\":139637976735744,"
                 "\"stack\":[]}],\"tasks\":["
                 "{\"id\":139637976731648,\"name\":\"worker-1\",\"state\":\"pending\",\"coroutine_stack\":["
                 "{\"file\":\"/app/w\xc3\xb6rk.py\",\"function\":\"work\",\"line\":0}],\"awaiting\":\"sleep\","
                 "\"awaiting_id\":139637976735744,\"awaited_by\":[139637976735744,12345],\"thread_id\":null},"
                 "{\"id\":139637976735744,\"name\":\"q\\\"b\\\\t\\tn\\nc\\u0001d\\u007fe\",\"state\":\"cancelled\","
                 "\"coroutine_stack\":[],\"awaiting\":null,\"awaiting_id\":null,\"awaited_by\":[],\"thread_id\":140002},"
                 "{\"id\":139637976739840,\"name\":\"caf\xc3\xa9 \xe2\x9c\x93 \xef\xbf\xbd\",\"state\":\"finished\","
                 "\"coroutine_stack\":[{\"file\":\"?\",\"function\":null,\"line\":-1}],\"awaiting\":null,"
                 "\"awaiting_id\":null,\"awaited_by\":[],\"thread_id\":null}],"
                 "\"unreadable_tasks\":2}");
    free(text);
    aioscope_snapshot_free(s);
}

/* From the agent: its fields are written, unknown ones as null; doubles as integers when
 * integral, else with 6 significant digits; NaN and infinities as null (JSON has neither). */
TEST(snapshot_json_agent_fields) {
    static const struct {
        double busy, age;
        const char *text;
    } cases[] = {
        {NAN, -1, "\"busy_s\":null,\"steps\":-1,\"spawned_by\":null,\"age_s\":null,\"cancelling\":true,"
                  "\"exception\":\"ValueError: \\\"x\\\"\\n\"}"},
        {INFINITY, 0, "\"busy_s\":null,\"steps\":0,\"spawned_by\":7,\"age_s\":0,\"cancelling\":false,\"exception\":null}"},
        {-INFINITY, 1e15, "\"busy_s\":null,\"steps\":1,\"spawned_by\":7,\"age_s\":1e+15,\"cancelling\":false,"
                          "\"exception\":null}"},
        {1e300, 999999.5, "\"busy_s\":1e+300,\"steps\":2,\"spawned_by\":7,\"age_s\":1e+06,\"cancelling\":false,"
                          "\"exception\":null}"},
        {123456789.0, 1.23456789, "\"busy_s\":123456789,\"steps\":3,\"spawned_by\":7,\"age_s\":1.23457,"
                                  "\"cancelling\":false,\"exception\":null}"},
        {0.00012345, 1.2345e-5, "\"busy_s\":0.00012345,\"steps\":4,\"spawned_by\":7,\"age_s\":1.2345e-05,"
                                "\"cancelling\":false,\"exception\":null}"},
        {-2.5, 0.1 + 0.2, "\"busy_s\":-2.5,\"steps\":5,\"spawned_by\":7,\"age_s\":0.3,\"cancelling\":false,"
                          "\"exception\":null}"},
        {-1e20, 12.25, "\"busy_s\":-1e+20,\"steps\":6,\"spawned_by\":7,\"age_s\":12.25,\"cancelling\":false,"
                       "\"exception\":null}"},
    };
    size_t n = sizeof cases / sizeof *cases;
    aioscope_snapshot *s = aioscope_snapshot_new();
    CHECK(s != NULL);
    s->source = "agent";
    s->has_agent_fields = 1;
    s->ntasks = n;
    s->tasks = calloc(n, sizeof *s->tasks);
    for (size_t i = 0; i < n; i++)
        s->tasks[i] = (aioscope_snap_task){.id = 1000 + i, .name = "", .thread = -1, .busy_s = cases[i].busy,
                                           .age_s = cases[i].age, .steps = (long)i - 1, .spawned_by = i ? 7 : 0,
                                           .cancelling = !i, .exception = i ? NULL : "ValueError: \"x\"\n"};
    char *text = json_of(s);
    const char *head = "{\"pid\":0,\"python\":\"0.0.0\",\"source\":\"agent\",\"frozen\":false,\"unavailable\":[],"
                       "\"threads\":[],\"tasks\":[";
    CHECK(strncmp(text, head, strlen(head)) == 0);
    const char *p = text + strlen(head);
    for (size_t i = 0; i < n; i++) {
        char want[512];
        snprintf(want, sizeof want,
                 "%s{\"id\":%zu,\"name\":\"\",\"state\":\"pending\",\"coroutine_stack\":[],\"awaiting\":null,"
                 "\"awaiting_id\":null,\"awaited_by\":[],\"thread_id\":null,%s",
                 i ? "," : "", 1000 + i, cases[i].text);
        CHECK_EQ_STR((strncmp(p, want, strlen(want)) == 0 ? want : p), want);
        p += strlen(want);
    }
    CHECK_EQ_STR(p, "],\"unreadable_tasks\":0}");
    free(text);
    aioscope_snapshot_free(s);
}

/* Written to a file in pieces (45 MB for 100 000 tasks is never held at once), the text is the
 * same as in one buffer. */
TEST(snapshot_json_written_in_pieces) {
    aioscope_snapshot *s = aioscope_snapshot_new();
    CHECK(s != NULL);
    s->source = "agent";
    s->has_agent_fields = 1;
    s->ntasks = 20000;
    s->tasks = calloc(s->ntasks, sizeof *s->tasks);
    for (size_t i = 0; i < s->ntasks; i++) {
        char name[64];
        snprintf(name, sizeof name, "task \"%zu\" of a long-running service", i);
        s->tasks[i] = (aioscope_snap_task){.id = 0x7f0000000000ULL + 0x40 * i, .name = aioscope_snapshot_strdup(s, name),
                                           .thread = -1, .busy_s = (double)i / 7, .age_s = (double)i / 3, .steps = (long)i};
    }
    char *whole = json_of(s);
    CHECK(strlen(whole) > 3u << 20);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    CHECK(f != NULL);
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_snapshot_write_json(s, &b, f);
    fflush(f);
    CHECK(len > 0 && b.len < 2u << 20); /* pieces went out; what is left is the caller's */
    fwrite(b.data, 1, b.len, f);
    fclose(f);
    CHECK_EQ_INT(len, strlen(whole));
    CHECK(memcmp(text, whole, len) == 0);
    aioscope_buf_free(&b);
    free(text);
    free(whole);
    aioscope_snapshot_free(s);
}
