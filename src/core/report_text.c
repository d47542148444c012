/* The report for people, in the style of rustc / ruff diagnostics.
 *
 *   error[blocking-call]: event loop blocked for 0.352 s
 *     --> /abs/app.py:12 in slow_sync_client
 *      |
 *   12 |     time.sleep(0.35)
 *      |
 *      = task: Task-2, created at /abs/app.py:30 in main
 *      = help: use the async equivalent ...
 *
 * The source line is read from the file when it can be; a file that is gone or unreadable just
 * shows no source. Colour (ANSI) only when asked, which the callers do only for a TTY. */
#include <stdlib.h>
#include <string.h>

#include "aioscope/error.h"
#include "aioscope/report.h"

#define C_RESET "\033[0m"
#define C_BOLD "\033[1m"
#define C_RED "\033[1;31m"
#define C_YELLOW "\033[1;33m"
#define C_CYAN "\033[1;36m"
#define C_BLUE "\033[1;34m"

/* Longest source line shown; longer lines are cut, since a report is no place for minified code. */
#define MAX_SOURCE_LINE 240

/* Reads line `lineno` (1-based) of `path` into buf without its newline; 0 or -1. */
static int read_source_line(const char *path, int lineno, char *buf, size_t size) {
    if (!path || lineno <= 0 || path[0] != '/') return -1;
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int cur = 1, c;
    size_t n = 0;
    while (cur < lineno && (c = getc(f)) != EOF)
        if (c == '\n') cur++;
    if (cur != lineno) {
        fclose(f);
        return -1;
    }
    while ((c = getc(f)) != EOF && c != '\n') {
        if (n + 1 < size) buf[n++] = (char)(c == '\t' ? ' ' : c);
    }
    fclose(f);
    buf[n] = '\0';
    /* Strip a trailing \r of CRLF files. */
    if (n && buf[n - 1] == '\r') buf[--n] = '\0';
    return 0;
}

static const char *sev_color(aioscope_severity s) {
    return s == AIOSCOPE_SEV_ERROR ? C_RED : s == AIOSCOPE_SEV_WARNING ? C_YELLOW : C_CYAN;
}

static void print_loc(FILE *out, const aioscope_location *loc) {
    fprintf(out, "%s:%d in %s", loc->file ? loc->file : "<unknown>", loc->line,
            loc->function ? loc->function : "<unknown>");
}

static void print_finding(FILE *out, const aioscope_finding *f, const aioscope_text_options *o) {
    int color = o && o->color;
    const char *c = color ? sev_color(f->severity) : "";
    const char *bold = color ? C_BOLD : "";
    const char *blue = color ? C_BLUE : "";
    const char *reset = color ? C_RESET : "";

    fprintf(out, "%s%s[%s]%s%s: %s", c, aioscope_severity_name(f->severity), f->kind, reset, bold,
            f->message ? f->message : "");
    if (f->count > 1) {
        fprintf(out, " (%ld times", f->count);
        if (f->duration_s > 0) fprintf(out, ", %.3f s in all, worst %.3f s", f->duration_s, f->max_duration_s);
        fprintf(out, ")");
    }
    fprintf(out, "%s\n", reset);

    char lineno[16];
    int width = snprintf(lineno, sizeof lineno, "%d", f->site.line > 0 ? f->site.line : 0);
    fprintf(out, "%*s%s-->%s ", width, "", blue, reset);
    print_loc(out, &f->site);
    fputc('\n', out);

    char src[MAX_SOURCE_LINE + 1];
    if (read_source_line(f->site.file, f->site.line, src, sizeof src) == 0) {
        fprintf(out, "%*s %s|%s\n", width, "", blue, reset);
        fprintf(out, "%s%s |%s %s\n", blue, lineno, reset, src);
        fprintf(out, "%*s %s|%s\n", width, "", blue, reset);
    }
    if (f->detail) fprintf(out, "%*s %s=%s %s\n", width, "", blue, reset, f->detail);
    if (f->has_task || f->created_at.file) {
        fprintf(out, "%*s %s=%s ", width, "", blue, reset);
        if (f->has_task) fprintf(out, "task: %s", f->task_name ? f->task_name : "?");
        if (f->created_at.file) {
            fprintf(out, "%screated at ", f->has_task ? ", " : "");
            print_loc(out, &f->created_at);
        }
        fputc('\n', out);
    }
    for (size_t i = 0; i < f->ntasks && strcmp(f->kind, "deadlock") == 0; i++) {
        const aioscope_participant *p = &f->tasks[i];
        fprintf(out, "%*s %s=%s %s waits at ", width, "", blue, reset, p->name ? p->name : "?");
        print_loc(out, &p->site);
        if (p->waiting_on) fprintf(out, " on %s", p->waiting_on);
        fputc('\n', out);
    }
    if (o && o->show_stack && f->nstack) {
        fprintf(out, "%*s %s=%s stack (most recent call last):\n", width, "", blue, reset);
        for (size_t i = 0; i < f->nstack; i++) {
            fprintf(out, "%*s     ", width, "");
            print_loc(out, &f->stack[i]);
            fputc('\n', out);
        }
    }
    const char *hint = aioscope_kind_hint(f->kind);
    if (*hint) fprintf(out, "%*s %s= help:%s %s\n", width, "", blue, reset, hint);
    fputc('\n', out);
}

int aioscope_report_write_text(const aioscope_report *r, FILE *out, const aioscope_text_options *opt) {
    size_t counts[3] = {0, 0, 0};
    /* Errors first, then warnings, then information: what needs fixing comes first. */
    for (int sev = AIOSCOPE_SEV_ERROR; sev >= AIOSCOPE_SEV_INFO; sev--) {
        for (size_t i = 0; i < r->nfindings; i++) {
            if ((int)r->findings[i].severity != sev) continue;
            print_finding(out, &r->findings[i], opt);
            counts[sev]++;
        }
    }
    int color = opt && opt->color;
    const char *bold = color ? C_BOLD : "", *reset = color ? C_RESET : "";
    if (r->nfindings == 0) {
        fprintf(out, "%saioscope:%s no asyncio problems found\n", bold, reset);
    } else {
        fprintf(out, "%saioscope:%s %zu finding%s (%zu error%s, %zu warning%s, %zu info)\n", bold, reset,
                r->nfindings, r->nfindings == 1 ? "" : "s", counts[AIOSCOPE_SEV_ERROR],
                counts[AIOSCOPE_SEV_ERROR] == 1 ? "" : "s", counts[AIOSCOPE_SEV_WARNING],
                counts[AIOSCOPE_SEV_WARNING] == 1 ? "" : "s", counts[AIOSCOPE_SEV_INFO]);
    }
    return ferror(out) ? AIOSCOPE_EIO : 0;
}
