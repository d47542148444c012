/* fuzz_events: the core's readers of the agent's event stream and of saved reports, on arbitrary
 * bytes, and the writers that follow them.
 *
 * The CLI reads the event stream the program's process wrote (a program can write anything into
 * that file, or die in the middle of a line), and saved reports come from disk; both are untrusted.
 * One input is used twice:
 *   1. as an event stream: split into lines, each fed to aioscope_report_feed_event, as
 *      `aioscope run` does (a malformed line must be refused and change nothing);
 *   2. as a whole saved report, through aioscope_report_from_json.
 * Every report that results is then written as JSON (aioscope_report_write_json), which must read
 * back with aioscope_report_from_json into the same number of findings, and whose second writing
 * equals the third (the writer normalizes numbers once; see fuzz_json.c). Each finding is also
 * written as an event line, which must feed back into a fresh report as one finding. The text
 * report is written to /dev/null, with and without colour and stacks. A broken promise aborts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aioscope/error.h"
#include "aioscope/json.h"
#include "aioscope/report.h"

#define FUZZ_CHECK(cond)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "fuzz_events: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* The one file a fuzzed report may name for the text writer to read source lines from (it is
 * created at start-up). Other names get a prefix that exists nowhere: a report naming /dev/zero
 * or a FIFO would make the text writer read without end, which tests the file system, not us. */
#define FIXTURE_SOURCE "/tmp/aioscope-fuzz-source.py"

static FILE *devnull;

static void setup_once(void) {
    if (devnull) return;
    devnull = fopen("/dev/null", "w");
    FUZZ_CHECK(devnull != NULL);
    FILE *src = fopen(FIXTURE_SOURCE, "w");
    if (src) {
        fputs("import asyncio\n\tasync def main():\r\n    time.sleep(1)  # a long line"
              "................................................................................"
              "................................................................................"
              "................................................................................\n"
              "\n\xff\xfe invalid utf-8\n",
              src);
        fclose(src);
    }
}

/* Writes r as JSON into a malloc'd buffer (*len bytes, NUL-terminated). */
static char *report_to_json(const aioscope_report *r, size_t *len) {
    char *text = NULL;
    FILE *mem = open_memstream(&text, len);
    FUZZ_CHECK(mem != NULL);
    int rc = aioscope_report_write_json(r, mem);
    fclose(mem);
    FUZZ_CHECK(rc == 0);
    FUZZ_CHECK(text != NULL);
    return text;
}

static void confine_location(aioscope_location *loc) {
    if (!loc->file || strcmp(loc->file, FIXTURE_SOURCE) == 0) return;
    size_t n = strlen(loc->file) + sizeof "/nonexistent-aioscope-fuzz";
    char *p = malloc(n);
    FUZZ_CHECK(p != NULL);
    snprintf(p, n, "/nonexistent-aioscope-fuzz%s", loc->file);
    free(loc->file);
    loc->file = p;
}

static void write_text_reports(aioscope_report *r) {
    for (size_t i = 0; i < r->nfindings; i++) {
        aioscope_finding *f = &r->findings[i];
        confine_location(&f->site);
        confine_location(&f->created_at);
        for (size_t j = 0; j < f->nstack; j++) confine_location(&f->stack[j]);
        for (size_t j = 0; j < f->ntasks; j++) {
            confine_location(&f->tasks[j].site);
            confine_location(&f->tasks[j].created_at);
        }
    }
    aioscope_text_options plain = {.color = 0, .show_stack = 0};
    aioscope_text_options rich = {.color = 1, .show_stack = 1};
    FUZZ_CHECK(aioscope_report_write_text(r, devnull, &plain) == 0);
    FUZZ_CHECK(aioscope_report_write_text(r, devnull, &rich) == 0);
}

/* The checks every report gets (see the top of the file). Frees r. */
static void check_report(aioscope_report *r) {
    (void)aioscope_report_max_severity(r);
    (void)aioscope_report_count_at_least(r, AIOSCOPE_SEV_WARNING);
    for (size_t i = 0; i < r->nfindings; i++) {
        const aioscope_finding *f = &r->findings[i];
        FUZZ_CHECK(f->kind != NULL);
        FUZZ_CHECK(f->severity >= AIOSCOPE_SEV_INFO && f->severity <= AIOSCOPE_SEV_ERROR);
        (void)aioscope_kind_hint(f->kind);

        /* A finding copies, and goes through the event stream unchanged in number. */
        aioscope_finding copy;
        FUZZ_CHECK(aioscope_finding_copy(&copy, f) == 0);
        aioscope_buf line;
        aioscope_buf_init(&line);
        aioscope_event_finding(&line, &copy);
        aioscope_finding_clear(&copy);
        FUZZ_CHECK(!line.oom && line.len > 0 && line.data[line.len - 1] == '\n');
        aioscope_report *one = aioscope_report_new();
        FUZZ_CHECK(one != NULL);
        int rc = aioscope_report_feed_event(one, line.data, line.len);
        if (rc != 0) fprintf(stderr, "fuzz_events: an event line we wrote is refused: %s", line.data);
        FUZZ_CHECK(rc == 0 && one->nfindings == 1);
        aioscope_report_free(one);
        aioscope_buf_free(&line);
    }

    size_t len1, len2, len3;
    char *text1 = report_to_json(r, &len1);
    aioscope_report *r2 = NULL;
    int rc = aioscope_report_from_json(text1, len1, &r2);
    if (rc != 0) fprintf(stderr, "fuzz_events: a report we wrote is refused (%s):\n%s", aioscope_strerror(rc), text1);
    FUZZ_CHECK(rc == 0 && r2 != NULL);
    FUZZ_CHECK(r2->nfindings == r->nfindings);
    char *text2 = report_to_json(r2, &len2);
    aioscope_report *r3 = NULL;
    FUZZ_CHECK(aioscope_report_from_json(text2, len2, &r3) == 0);
    FUZZ_CHECK(r3->nfindings == r->nfindings);
    char *text3 = report_to_json(r3, &len3);
    if (len2 != len3 || memcmp(text2, text3, len2) != 0)
        fprintf(stderr, "fuzz_events: writing a report is not stable:\n%s\n%s\n", text2, text3);
    FUZZ_CHECK(len2 == len3 && memcmp(text2, text3, len2) == 0);

    write_text_reports(r);
    free(text1);
    free(text2);
    free(text3);
    aioscope_report_free(r3);
    aioscope_report_free(r2);
    aioscope_report_free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    setup_once();
    const char *text = (const char *)data;

    /* 1. An event stream. A refused line must leave the report as it was. */
    aioscope_report *r = aioscope_report_new();
    FUZZ_CHECK(r != NULL);
    size_t start = 0;
    while (start < size) {
        const char *nl = memchr(text + start, '\n', size - start);
        size_t end = nl ? (size_t)(nl - text) + 1 : size;
        size_t before = r->nfindings;
        int loaded_before = r->agent_loaded;
        int rc = aioscope_report_feed_event(r, text + start, end - start);
        if (rc != 0) {
            FUZZ_CHECK(rc == AIOSCOPE_EPARSE || rc == AIOSCOPE_ENOMEM);
            FUZZ_CHECK(r->nfindings == before && r->agent_loaded == loaded_before);
        }
        FUZZ_CHECK(r->nfindings >= before && r->nfindings <= before + 1);
        start = end;
    }
    check_report(r);

    /* 2. A saved report. */
    aioscope_report *saved = (aioscope_report *)1;
    int rc = aioscope_report_from_json(text, size, &saved);
    if (rc == 0) {
        FUZZ_CHECK(saved != NULL);
        check_report(saved);
    } else {
        FUZZ_CHECK(rc < 0 && saved == NULL);
    }
    return 0;
}
