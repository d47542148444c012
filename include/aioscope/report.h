/* The findings model and the report of `aioscope run`.
 *
 * A finding is one bug aioscope saw (see ../shared/spec/findings.md for the contract). The agent
 * builds findings in the target process and streams each one as a JSON line to the CLI; the CLI
 * (or the agent itself, when used through aioscope.install() without the CLI) collects them in an
 * aioscope_report, which merges repeats at one site, and writes the JSON and text reports.
 *
 * Ownership: every char* and array inside these structs is owned by the struct that holds it and
 * is freed by aioscope_finding_clear() / aioscope_report_free(). Functions that take a finding to
 * add copy it; the caller keeps and clears its own. */
#ifndef AIOSCOPE_REPORT_H
#define AIOSCOPE_REPORT_H

#include <stddef.h>
#include <stdio.h>

#include "aioscope/json.h"

typedef enum {
    AIOSCOPE_SEV_INFO = 0,
    AIOSCOPE_SEV_WARNING = 1,
    AIOSCOPE_SEV_ERROR = 2,
} aioscope_severity;

/* "info" / "warning" / "error". */
const char *aioscope_severity_name(aioscope_severity sev);
/* Parses those names; returns 0 or AIOSCOPE_EINVAL. */
int aioscope_severity_parse(const char *name, aioscope_severity *out);

/* A source location. file is NULL when unknown; line 0 when unknown. */
typedef struct {
    char *file;     /* owned; absolute path when it names a file */
    int line;
    char *function; /* owned */
} aioscope_location;

/* One participant of a deadlock (and, generally, a task named by a finding). */
typedef struct {
    long long id;
    char *name;            /* owned */
    aioscope_location site;       /* where it is suspended */
    aioscope_location created_at; /* file NULL when unknown */
    char *waiting_on;      /* owned, human text: "Lock held by Task-3 (acquired at app.py:12)" */
} aioscope_participant;

typedef struct {
    char *kind;        /* owned: "blocking-call", "lost-exception", ... */
    aioscope_severity severity;
    char *message;     /* owned */
    aioscope_location site;
    aioscope_location created_at; /* created_at.file NULL when unknown */
    int has_task;
    long long task_id;
    char *task_name;   /* owned */
    aioscope_location *stack; /* owned array, outermost first */
    size_t nstack;
    long count;        /* >= 1 */
    double duration_s; /* total over merged repeats; 0 when the kind has no duration */
    double max_duration_s;
    aioscope_participant *tasks; /* owned array (deadlock) */
    size_t ntasks;
    char *detail;      /* owned, optional: exception text, resource type, ... */
    /* Event stream only (0 elsewhere): names one blocked period. The agent writes a provisional
     * `blocking-call` while the loop is still blocked (the program may never come back) and the
     * final one when the block ends, both with the same block id; the report counts them once. */
    long long block;
} aioscope_finding;

/* Zero a finding for filling in. */
void aioscope_finding_init(aioscope_finding *f);
/* Free everything the finding owns and zero it. Accepts NULL. */
void aioscope_finding_clear(aioscope_finding *f);
/* Deep copy; returns 0 or AIOSCOPE_ENOMEM (dst is left cleared on failure). */
int aioscope_finding_copy(aioscope_finding *dst, const aioscope_finding *src);
/* Location helpers: set copies the strings (NULL allowed). */
int aioscope_location_set(aioscope_location *loc, const char *file, int line, const char *function);
void aioscope_location_clear(aioscope_location *loc);
/* Append a frame to f->stack (copies the strings). */
int aioscope_finding_push_frame(aioscope_finding *f, const char *file, int line, const char *function);

typedef struct {
    char *python;      /* owned, e.g. "3.12.1"; NULL until known */
    char **argv;       /* owned */
    int argc;
    int exit_code;
    int agent_loaded;  /* 1 once the agent said hello */
    aioscope_finding *findings; /* owned array */
    size_t nfindings;
    size_t cap;
    void *blocks;      /* private: the blocked periods seen in the event stream */
} aioscope_report;

aioscope_report *aioscope_report_new(void);
/* Accepts NULL. */
void aioscope_report_free(aioscope_report *r);
int aioscope_report_set_python(aioscope_report *r, const char *version);
int aioscope_report_set_argv(aioscope_report *r, int argc, const char *const *argv);

/* Add a copy of f. A finding of the same kind at the same site (file, line) as one already in
 * the report is merged into it: counts and durations add up, the worst duration is kept, and for
 * `deadlock` and `pending-at-exit` the same task id is not counted twice. */
int aioscope_report_add_finding(aioscope_report *r, const aioscope_finding *f);

/* The highest severity in the report, or -1 when it has no findings. */
int aioscope_report_max_severity(const aioscope_report *r);
/* How many findings are at or above sev. */
size_t aioscope_report_count_at_least(const aioscope_report *r, aioscope_severity sev);

/* JSON (the contract in findings.md). Returns 0 or a negative code (AIOSCOPE_EIO on write error). */
int aioscope_report_write_json(const aioscope_report *r, FILE *out);
/* One finding as one JSON object (no newline) appended to b. */
void aioscope_finding_to_json(const aioscope_finding *f, aioscope_buf *b);

/* The agent's event stream: one JSON object per line, appended by the agent with one write()
 * per line to the file named by AIOSCOPE_EVENTS, read by the CLI when the program has ended.
 *   {"event":"hello","pid":N,"python":"3.12.1","argv":[...]}
 *   {"event":"finding", <the finding's fields as in the report>}
 * These append one whole line, newline included, to b. */
void aioscope_event_hello(aioscope_buf *b, long pid, const char *python, int argc, const char *const *argv);
void aioscope_event_finding(aioscope_buf *b, const aioscope_finding *f);

/* Parse a finding from a JSON object (as written by the functions above). */
int aioscope_finding_from_json(const aioscope_json *obj, aioscope_finding *out);
/* Parse a whole report as written by aioscope_report_write_json. */
int aioscope_report_from_json(const char *text, size_t len, aioscope_report **out);

/* Feed one line of the agent's event stream ({"event": "hello"|"finding"|..., ...}).
 * Unknown events are ignored; a malformed line returns AIOSCOPE_EPARSE and changes nothing. */
int aioscope_report_feed_event(aioscope_report *r, const char *line, size_t len);

/* The text report for people (rustc/ruff style). color: use ANSI colours.
 * Reads source files to show the offending line; a missing file just shows no source. */
typedef struct {
    int color;
    int show_stack; /* print the full stack under each finding */
} aioscope_text_options;
int aioscope_report_write_text(const aioscope_report *r, FILE *out, const aioscope_text_options *opt);

/* The report as one self-contained HTML page (no external resource; works offline): findings
 * grouped by kind, each collapsible, with source snippets read from the files and the stacks.
 * Every text from the report is HTML-escaped. opt may be NULL (defaults).
 * Returns 0 or AIOSCOPE_EIO / AIOSCOPE_ENOMEM. */
typedef struct {
    int context_lines; /* source lines shown around a site; -1: the default (2); at most 20 */
} aioscope_html_options;
int aioscope_report_write_html(const aioscope_report *r, FILE *out, const aioscope_html_options *opt);

/* A short hint on the usual fix for a kind; never NULL ("" when none). */
const char *aioscope_kind_hint(const char *kind);

#endif
