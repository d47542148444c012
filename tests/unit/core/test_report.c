/* Unit tests of the findings model: merging at one site, the JSON round trip of the contract,
 * the event stream, and the text report. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aioscope/error.h"
#include "aioscope/report.h"
#include "test.h"

static void make_blocking(aioscope_finding *f, int line, double dur) {
    aioscope_finding_init(f);
    f->kind = strdup("blocking-call");
    f->severity = AIOSCOPE_SEV_ERROR;
    f->message = strdup("event loop blocked");
    aioscope_location_set(&f->site, "/abs/app.py", line, "handler");
    f->duration_s = dur;
    f->has_task = 1;
    f->task_id = 7;
    f->task_name = strdup("Task-2");
    aioscope_finding_push_frame(f, "/abs/app.py", 30, "main");
    aioscope_finding_push_frame(f, "/abs/app.py", line, "handler");
}

TEST(report_merges_same_site_with_count_total_and_worst) {
    aioscope_report *r = aioscope_report_new();
    aioscope_finding f;
    make_blocking(&f, 12, 0.2);
    CHECK_EQ_INT(aioscope_report_add_finding(r, &f), 0);
    aioscope_finding_clear(&f);
    make_blocking(&f, 12, 0.5);
    CHECK_EQ_INT(aioscope_report_add_finding(r, &f), 0);
    aioscope_finding_clear(&f);
    make_blocking(&f, 13, 0.1); /* another line: another finding */
    CHECK_EQ_INT(aioscope_report_add_finding(r, &f), 0);
    aioscope_finding_clear(&f);
    CHECK_EQ_INT(r->nfindings, 2);
    CHECK_EQ_INT(r->findings[0].count, 2);
    CHECK(r->findings[0].duration_s > 0.69 && r->findings[0].duration_s < 0.71);
    CHECK(r->findings[0].max_duration_s == 0.5);
    CHECK_EQ_INT(aioscope_report_max_severity(r), AIOSCOPE_SEV_ERROR);
    CHECK_EQ_INT(aioscope_report_count_at_least(r, AIOSCOPE_SEV_WARNING), 2);
    aioscope_report_free(r);
}

TEST(report_counts_one_task_once_for_per_task_kinds) {
    aioscope_report *r = aioscope_report_new();
    for (int i = 0; i < 3; i++) {
        aioscope_finding f;
        aioscope_finding_init(&f);
        f.kind = strdup("pending-at-exit");
        f.severity = AIOSCOPE_SEV_WARNING;
        aioscope_location_set(&f.site, "/abs/app.py", 5, "main");
        f.has_task = 1;
        f.task_id = i == 2 ? 2 : 1; /* task 1 twice (seen at main's return and at exit), task 2 */
        CHECK_EQ_INT(aioscope_report_add_finding(r, &f), 0);
        aioscope_finding_clear(&f);
    }
    CHECK_EQ_INT(r->nfindings, 1);
    CHECK_EQ_INT(r->findings[0].count, 2);
    CHECK_EQ_INT(r->findings[0].ntasks, 2);
    aioscope_report_free(r);
}

TEST(report_json_round_trip_keeps_the_contract_fields) {
    aioscope_report *r = aioscope_report_new();
    const char *argv[] = {"app.py", "--port", "8080"};
    aioscope_report_set_argv(r, 3, argv);
    aioscope_report_set_python(r, "3.12.1");
    r->exit_code = 0;
    aioscope_finding f;
    make_blocking(&f, 12, 0.352);
    aioscope_location_set(&f.created_at, "/abs/app.py", 30, "main");
    aioscope_report_add_finding(r, &f);
    aioscope_finding_clear(&f);

    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    CHECK_EQ_INT(aioscope_report_write_json(r, mem), 0);
    fclose(mem);
    CHECK(strstr(text, "\"kind\":\"blocking-call\""));
    CHECK(strstr(text, "\"site\":{\"file\":\"/abs/app.py\",\"line\":12,\"function\":\"handler\"}"));
    CHECK(strstr(text, "\"task\":{\"id\":7,\"name\":\"Task-2\"}"));
    CHECK(strstr(text, "\"duration_s\":0.352"));

    aioscope_report *back = NULL;
    CHECK_EQ_INT(aioscope_report_from_json(text, len, &back), 0);
    CHECK_EQ_STR(back->python, "3.12.1");
    CHECK_EQ_INT(back->argc, 3);
    CHECK_EQ_STR(back->argv[2], "8080");
    CHECK_EQ_INT(back->nfindings, 1);
    aioscope_finding *g = &back->findings[0];
    CHECK_EQ_STR(g->kind, "blocking-call");
    CHECK_EQ_INT(g->severity, AIOSCOPE_SEV_ERROR);
    CHECK_EQ_INT(g->site.line, 12);
    CHECK_EQ_STR(g->created_at.function, "main");
    CHECK_EQ_INT(g->nstack, 2);
    CHECK_EQ_INT(g->task_id, 7);
    free(text);
    aioscope_report_free(r);
    aioscope_report_free(back);
}

TEST(report_feeds_events_and_skips_garbage) {
    aioscope_report *r = aioscope_report_new();
    aioscope_buf b;
    aioscope_buf_init(&b);
    const char *argv[] = {"app.py"};
    aioscope_event_hello(&b, 42, "3.11.7", 1, argv);
    CHECK_EQ_INT(aioscope_report_feed_event(r, b.data, b.len), 0);
    CHECK(r->agent_loaded);
    CHECK_EQ_STR(r->python, "3.11.7");
    b.len = 0;
    aioscope_finding f;
    make_blocking(&f, 9, 0.3);
    aioscope_event_finding(&b, &f);
    aioscope_finding_clear(&f);
    CHECK(b.data[b.len - 1] == '\n');
    CHECK_EQ_INT(aioscope_report_feed_event(r, b.data, b.len), 0);
    /* A line cut short by a crash, and a line that is not ours. */
    CHECK_EQ_INT(aioscope_report_feed_event(r, b.data, b.len / 2), AIOSCOPE_EPARSE);
    CHECK_EQ_INT(aioscope_report_feed_event(r, "[1,2]", 5), AIOSCOPE_EPARSE);
    CHECK_EQ_INT(r->nfindings, 1);
    CHECK_EQ_INT(r->findings[0].site.line, 9);
    aioscope_buf_free(&b);
    aioscope_report_free(r);
}

TEST(report_text_shows_site_source_task_and_hint) {
    char path[] = "/tmp/aioscope-test-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    FILE *src = fdopen(fd, "w");
    fputs("import time\n\ndef handler():\n    time.sleep(0.35)\n", src);
    fclose(src);

    aioscope_report *r = aioscope_report_new();
    aioscope_finding f;
    make_blocking(&f, 4, 0.35);
    aioscope_location_set(&f.site, path, 4, "handler");
    aioscope_location_set(&f.created_at, path, 30, "main");
    aioscope_report_add_finding(r, &f);
    aioscope_finding_clear(&f);

    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    aioscope_text_options opt = {0, 0};
    CHECK_EQ_INT(aioscope_report_write_text(r, mem, &opt), 0);
    fclose(mem);
    char expect[256];
    snprintf(expect, sizeof expect, "--> %s:4 in handler", path);
    CHECK(strstr(text, "error[blocking-call]: event loop blocked"));
    CHECK(strstr(text, expect));
    CHECK(strstr(text, "4 |     time.sleep(0.35)"));
    CHECK(strstr(text, "task: Task-2, created at"));
    CHECK(strstr(text, "help: use the async equivalent"));
    CHECK(strstr(text, "1 finding (1 error, 0 warnings, 0 info)"));
    CHECK(!strstr(text, "\033[")); /* no colour unless asked */
    unlink(path);
    free(text);
    aioscope_report_free(r);
}

TEST(severity_names_round_trip) {
    aioscope_severity s;
    CHECK_EQ_INT(aioscope_severity_parse("warning", &s), 0);
    CHECK_EQ_INT(s, AIOSCOPE_SEV_WARNING);
    CHECK_EQ_INT(aioscope_severity_parse("fatal", &s), AIOSCOPE_EINVAL);
    CHECK_EQ_STR(aioscope_severity_name(AIOSCOPE_SEV_INFO), "info");
    CHECK_EQ_STR(aioscope_strerror(AIOSCOPE_ENOMEM), "out of memory");
    CHECK_EQ_STR(aioscope_err_name(AIOSCOPE_EPARSE), "EPARSE");
    CHECK_EQ_STR(aioscope_strerror(-999), "unknown error");
}

TEST(report_counts_a_blocked_period_once_provisional_then_final) {
    aioscope_report *r = aioscope_report_new();
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_finding f;
    /* While blocked: 0.1 s so far. Then the final word on the same period: 0.4 s. */
    make_blocking(&f, 12, 0.1);
    f.block = 77;
    aioscope_event_finding(&b, &f);
    CHECK(strstr(b.data, "\"block\":77"));
    CHECK_EQ_INT(aioscope_report_feed_event(r, b.data, b.len), 0);
    b.len = 0;
    f.duration_s = 0.4;
    aioscope_event_finding(&b, &f);
    CHECK_EQ_INT(aioscope_report_feed_event(r, b.data, b.len), 0);
    /* Another period at the same line counts. */
    b.len = 0;
    f.block = 78;
    f.duration_s = 0.2;
    aioscope_event_finding(&b, &f);
    CHECK_EQ_INT(aioscope_report_feed_event(r, b.data, b.len), 0);
    aioscope_finding_clear(&f);
    CHECK_EQ_INT(r->nfindings, 1);
    CHECK_EQ_INT(r->findings[0].count, 2);
    CHECK(r->findings[0].duration_s > 0.599 && r->findings[0].duration_s < 0.601);
    CHECK(r->findings[0].max_duration_s == 0.4);
    CHECK_EQ_INT(r->findings[0].block, 0); /* not part of the report */
    aioscope_buf_free(&b);
    aioscope_report_free(r);
}
