/* Unit tests of the HTML report: everything from the report is escaped (a finding cannot inject
 * markup), source snippets come from the files with the site line marked, findings are grouped
 * by kind (worst first) and collapsible, stacks are in <details>, and the page names nothing
 * outside itself. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aioscope/error.h"
#include "aioscope/report.h"
#include "test.h"

/* Renders r to a string (malloc'd, NUL-terminated). */
static char *render(const aioscope_report *r, int context) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    CHECK(f != NULL);
    aioscope_html_options opt = {.context_lines = context};
    CHECK_EQ_INT(aioscope_report_write_html(r, f, &opt), 0);
    CHECK(fclose(f) == 0);
    return text;
}

static size_t count_of(const char *hay, const char *needle) {
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle)) n++;
    return n;
}

/* A source file of 9 lines "line 1" .. "line 9" with markup on line 5; returns its path. */
static void make_source(char *path, size_t size) {
    snprintf(path, size, "/tmp/asc-html-src-%d.py", (int)getpid());
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    for (int i = 1; i <= 9; i++) {
        if (i == 5) fputs("    time.sleep(1)  # <b>blocks</b> & \"waits\"\n", f);
        else fprintf(f, "line %d\n", i);
    }
    fclose(f);
}

static void add(aioscope_report *r, const char *kind, aioscope_severity sev, const char *msg,
                const char *file, int line) {
    aioscope_finding f;
    aioscope_finding_init(&f);
    f.kind = strdup(kind);
    f.severity = sev;
    f.message = strdup(msg);
    aioscope_location_set(&f.site, file, line, "handler");
    aioscope_finding_push_frame(&f, file, 1, "<module>");
    aioscope_finding_push_frame(&f, file, line, "handler");
    CHECK_EQ_INT(aioscope_report_add_finding(r, &f), 0);
    aioscope_finding_clear(&f);
}

TEST(html_escapes_every_text_from_the_report) {
    aioscope_report *r = aioscope_report_new();
    const char *argv[] = {"app.py", "<script>alert(1)</script>"};
    aioscope_report_set_argv(r, 2, argv);
    aioscope_report_set_python(r, "3.12.1");
    add(r, "lost-exception", AIOSCOPE_SEV_ERROR, "Task <x> died: ValueError('a&b')", "/nonexistent/<evil>.py", 3);
    r->findings[0].detail = strdup("ValueError: \"quoted\" 'single'");
    char *html = render(r, -1);
    CHECK(strstr(html, "<script>alert") == NULL);
    CHECK(strstr(html, "&lt;script&gt;alert(1)&lt;/script&gt;") != NULL);
    CHECK(strstr(html, "Task &lt;x&gt; died: ValueError(&#39;a&amp;b&#39;)") != NULL);
    CHECK(strstr(html, "/nonexistent/&lt;evil&gt;.py:3") != NULL);
    CHECK(strstr(html, "&quot;quoted&quot;") != NULL);
    /* The one script is our own inline one; nothing is loaded from elsewhere. */
    CHECK_EQ_INT(count_of(html, "<script"), 1);
    CHECK(strstr(html, "src=") == NULL);
    CHECK(strstr(html, "http:") == NULL && strstr(html, "https:") == NULL);
    CHECK(strstr(html, "<link") == NULL);
    free(html);
    aioscope_report_free(r);
}

TEST(html_replaces_invalid_utf8_and_drops_control_characters) {
    aioscope_report *r = aioscope_report_new();
    add(r, "blocking-call", AIOSCOPE_SEV_ERROR, "bad \xff byte, \xc3\xa9 kept, bell\a gone, \xed\xa0\x80 surrogate",
        "/nonexistent/a.py", 1);
    char *html = render(r, -1);
    CHECK(strstr(html, "bad \xEF\xBF\xBD byte") != NULL);
    CHECK(strstr(html, "\xc3\xa9 kept") != NULL);
    CHECK(strstr(html, "bell gone") != NULL);
    CHECK(strstr(html, "\xed\xa0\x80") == NULL);
    free(html);
    aioscope_report_free(r);
}

TEST(html_shows_the_source_around_the_site_with_the_line_marked) {
    char src[256];
    make_source(src, sizeof src);
    aioscope_report *r = aioscope_report_new();
    add(r, "blocking-call", AIOSCOPE_SEV_ERROR, "event loop blocked for 1.000 s", src, 5);
    char *html = render(r, 2);
    unlink(src);
    /* Lines 3..7 in the snippet, 5 marked and escaped; 2 and 8 outside it. */
    CHECK(strstr(html, "<tr class=\"hit\"><td class=\"ln\">5</td><td><code>    time.sleep(1)  # &lt;b&gt;blocks&lt;/b&gt; &amp; &quot;waits&quot;</code>") != NULL);
    CHECK(strstr(html, "<td class=\"ln\">3</td><td><code>line 3</code>") != NULL);
    CHECK(strstr(html, "<td class=\"ln\">7</td><td><code>line 7</code>") != NULL);
    CHECK(strstr(html, "<td class=\"ln\">2</td><td><code>line 2</code>") == NULL);
    CHECK(strstr(html, "<td class=\"ln\">8</td><td><code>line 8</code>") == NULL);
    /* The stack is collapsible and each frame shows its own line. */
    CHECK(strstr(html, "<details class=\"stack\"><summary>stack (2 frames") != NULL);
    CHECK(strstr(html, "<td class=\"ln\">1</td><td><code>line 1</code>") != NULL);
    free(html);
    aioscope_report_free(r);
}

TEST(html_snippet_at_the_start_and_end_of_a_file_stays_in_bounds) {
    char src[256];
    make_source(src, sizeof src);
    aioscope_report *r = aioscope_report_new();
    add(r, "blocking-call", AIOSCOPE_SEV_ERROR, "first", src, 1);
    add(r, "blocking-call", AIOSCOPE_SEV_ERROR, "last", src, 9);
    add(r, "blocking-call", AIOSCOPE_SEV_ERROR, "past the end", src, 40);
    char *html = render(r, 3);
    unlink(src);
    CHECK(strstr(html, "<td class=\"ln\">0</td>") == NULL);
    CHECK(strstr(html, "<td class=\"ln\">10</td>") == NULL);
    CHECK(strstr(html, "<tr class=\"hit\"><td class=\"ln\">9</td>") != NULL);
    CHECK(strstr(html, "<td class=\"ln\">40</td>") == NULL);
    free(html);
    aioscope_report_free(r);
}

TEST(html_groups_findings_by_kind_worst_first_and_errors_open) {
    aioscope_report *r = aioscope_report_new();
    add(r, "stuck-task", AIOSCOPE_SEV_INFO, "stuck", "/nonexistent/a.py", 1);
    add(r, "pending-at-exit", AIOSCOPE_SEV_WARNING, "pending one", "/nonexistent/a.py", 2);
    add(r, "blocking-call", AIOSCOPE_SEV_ERROR, "blocked", "/nonexistent/a.py", 3);
    add(r, "pending-at-exit", AIOSCOPE_SEV_WARNING, "pending two", "/nonexistent/a.py", 4);
    char *html = render(r, -1);
    const char *b = strstr(html, "<section class=\"kind\" id=\"kind-blocking-call\">");
    const char *p = strstr(html, "<section class=\"kind\" id=\"kind-pending-at-exit\">");
    const char *s = strstr(html, "<section class=\"kind\" id=\"kind-stuck-task\">");
    CHECK(b && p && s && b < p && p < s);
    /* Both pending findings are in their kind's section, before the next section. */
    const char *one = strstr(html, "pending one"), *two = strstr(html, "pending two");
    CHECK(one && two && one > p && two > p && one < s && two < s);
    CHECK_EQ_INT(count_of(html, "<details class=\"finding "), 4);
    CHECK_EQ_INT(count_of(html, "<details class=\"finding error\" data-kind=\"blocking-call\" open>"), 1);
    CHECK_EQ_INT(count_of(html, "<details class=\"finding warning\" data-kind=\"pending-at-exit\">"), 2);
    CHECK(strstr(html, "<b>4</b> findings</span><span>1 error</span><span>2 warnings</span><span>1 info</span>") != NULL);
    CHECK(strstr(html, "<a href=\"#kind-pending-at-exit\">pending-at-exit</a> (2)") != NULL);
    free(html);
    aioscope_report_free(r);
}

TEST(html_of_an_empty_report_says_so) {
    aioscope_report *r = aioscope_report_new();
    char *html = render(r, -1);
    CHECK(strstr(html, "No asyncio problems found.") != NULL);
    CHECK(strstr(html, "<details") == NULL);
    CHECK(strstr(html, "</html>") != NULL);
    free(html);
    aioscope_report_free(r);
}

TEST(html_lists_deadlock_participants) {
    aioscope_report *r = aioscope_report_new();
    aioscope_finding f;
    aioscope_finding_init(&f);
    f.kind = strdup("deadlock");
    f.severity = AIOSCOPE_SEV_ERROR;
    f.message = strdup("2 tasks wait on each other");
    aioscope_location_set(&f.site, "/nonexistent/d.py", 7, "a");
    f.tasks = calloc(2, sizeof *f.tasks);
    f.ntasks = 2;
    f.tasks[0].id = 1;
    f.tasks[0].name = strdup("Task-A");
    f.tasks[0].waiting_on = strdup("Lock held by Task-B");
    aioscope_location_set(&f.tasks[0].site, "/nonexistent/d.py", 7, "a");
    f.tasks[1].id = 2;
    f.tasks[1].name = strdup("Task-B");
    f.tasks[1].waiting_on = strdup("Lock held by Task-A");
    aioscope_location_set(&f.tasks[1].site, "/nonexistent/d.py", 12, "b");
    CHECK_EQ_INT(aioscope_report_add_finding(r, &f), 0);
    aioscope_finding_clear(&f);
    char *html = render(r, -1);
    CHECK(strstr(html, "<td>Task-A</td>") != NULL);
    CHECK(strstr(html, "<td>Lock held by Task-A</td>") != NULL);
    CHECK(strstr(html, "/nonexistent/d.py:12</span> in <span class=\"fn\">b</span>") != NULL);
    free(html);
    aioscope_report_free(r);
}
