/* The report as one self-contained HTML page (`aioscope report FILE.json --html OUT`).
 *
 * The page is meant to be attached to a CI run or mailed around and opened anywhere, offline: it
 * has no external resource at all (style inline, no fonts, no images, no script from a URL, one
 * small inline script for the "expand all" buttons that the page also works without). Findings
 * are grouped by kind, the kinds with the worst severity first; each finding is a <details>
 * element (open for errors) with its site, the source lines around it read from the file, the
 * task and where it was created, the deadlock participants, and the full stack in a nested
 * <details> whose frames show their own source line.
 *
 * Everything that comes from the report (paths, messages, exception text, source lines) is
 * untrusted text: it is HTML-escaped, invalid UTF-8 becomes U+FFFD and control characters are
 * dropped, so a finding cannot inject markup into the page. A source file that is gone or
 * unreadable just shows no snippet, as in the text report. */
#include <stdlib.h>
#include <string.h>

#include "aioscope/error.h"
#include "aioscope/report.h"

/* Longest source line shown; longer lines are cut (a report is no place for minified code). */
#define MAX_SOURCE_LINE 240
/* Lines shown on each side of a site when the caller does not say. */
#define DEFAULT_CONTEXT 2
/* More context than this is a listing, not a snippet. */
#define MAX_CONTEXT 20

/* Length of the valid UTF-8 sequence at s (1-4), or 0 when s does not start one. n: bytes left. */
static size_t utf8_seq_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    size_t len;
    unsigned int min;
    if (c < 0x80) return 1;
    if ((c & 0xE0) == 0xC0) len = 2, min = 0x80;
    else if ((c & 0xF0) == 0xE0) len = 3, min = 0x800;
    else if ((c & 0xF8) == 0xF0) len = 4, min = 0x10000;
    else return 0;
    if (len > n) return 0;
    unsigned int cp = c & (0x7F >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    /* Overlong forms, surrogates and values past U+10FFFF are not valid UTF-8. */
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

/* Write s as HTML text (also safe inside a double-quoted attribute). NULL writes nothing. */
static void put_escaped(FILE *out, const char *s) {
    if (!s) return;
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    while (n > 0) {
        const char *entity = NULL;
        switch (*p) {
        case '&': entity = "&amp;"; break;
        case '<': entity = "&lt;"; break;
        case '>': entity = "&gt;"; break;
        case '"': entity = "&quot;"; break;
        case '\'': entity = "&#39;"; break;
        default: break;
        }
        size_t len = 1;
        if (entity) {
            fputs(entity, out);
        } else if (*p < 0x20 && *p != '\t' && *p != '\n') {
            /* Control characters are dropped: they have no business in a page. */
        } else if ((len = utf8_seq_len(p, n)) == 0) {
            fputs("\xEF\xBF\xBD", out); /* U+FFFD for one invalid byte */
            len = 1;
        } else {
            fwrite(p, 1, len, out);
        }
        p += len;
        n -= len;
    }
}

/* A kind name as part of an id or class: only [a-z0-9-] is kept, so it needs no escaping. */
static void put_ident(FILE *out, const char *s) {
    for (; s && *s; s++) {
        char c = *s;
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-') fputc(c, out);
        else if (c >= 'A' && c <= 'Z') fputc(c - 'A' + 'a', out);
        else fputc('-', out);
    }
}

static void put_location(FILE *out, const aioscope_location *loc) {
    fputs("<span class=\"loc\">", out);
    put_escaped(out, loc->file ? loc->file : "<unknown>");
    fprintf(out, ":%d</span> in <span class=\"fn\">", loc->line);
    put_escaped(out, loc->function ? loc->function : "<unknown>");
    fputs("</span>", out);
}

/* The source lines [line - context, line + context] of path as a table, the site line marked.
 * Writes nothing when the file cannot be read or has no such line. Only absolute paths are read:
 * a relative one would be resolved against wherever the report is rendered, not where it ran. */
static void put_snippet(FILE *out, const char *path, int line, int context) {
    if (!path || path[0] != '/' || line <= 0) return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    int first = line - context > 1 ? line - context : 1;
    int last = line + context;
    char buf[MAX_SOURCE_LINE + 1];
    int cur = 1, c, shown = 0;
    while (cur < first && (c = getc(f)) != EOF)
        if (c == '\n') cur++;
    while (cur <= last) {
        size_t n = 0;
        int got = 0;
        while ((c = getc(f)) != EOF && c != '\n') {
            got = 1;
            if (n < MAX_SOURCE_LINE) buf[n++] = (char)(c == '\t' ? ' ' : c);
        }
        if (c == EOF && !got) break;
        if (n && buf[n - 1] == '\r') n--; /* CRLF files */
        buf[n] = '\0';
        if (!shown) fputs("<table class=\"src\">", out);
        shown = 1;
        fprintf(out, "<tr%s><td class=\"ln\">%d</td><td><code>", cur == line ? " class=\"hit\"" : "", cur);
        put_escaped(out, buf);
        fputs("</code></td></tr>", out);
        cur++;
        if (c == EOF) break;
    }
    fclose(f);
    if (shown) fputs("</table>\n", out);
}

static const char page_head[] =
    "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<title>aioscope report</title>\n<style>\n"
    "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\n"
    "header{background:#1d2330;color:#fff;padding:14px 24px}\n"
    "header h1{margin:0 0 4px;font-size:20px}\n"
    "header .meta{opacity:.8;font-size:13px}\n"
    "main{padding:12px 24px 40px;max-width:1200px}\n"
    "code,.loc,.src{font-family:ui-monospace,'DejaVu Sans Mono',Menlo,Consolas,monospace;font-size:13px}\n"
    ".summary span{display:inline-block;margin-right:14px}\n"
    "h2{font-size:17px;margin:22px 0 8px;border-bottom:1px solid #d5d9e0;padding-bottom:4px}\n"
    "details.finding{background:#fff;border:1px solid #d5d9e0;border-left:5px solid #888;border-radius:4px;margin:8px 0;padding:6px 10px}\n"
    "details.finding.error{border-left-color:#c62828}\n"
    "details.finding.warning{border-left-color:#e69a00}\n"
    "details.finding.info{border-left-color:#1e78c2}\n"
    "summary{cursor:pointer}\n"
    ".sev{font-weight:bold;text-transform:uppercase;font-size:12px;margin-right:6px}\n"
    ".error .sev{color:#c62828}.warning .sev{color:#b37800}.info .sev{color:#1e78c2}\n"
    ".msg{font-weight:600}\n"
    ".where{color:#555;margin-left:8px}\n"
    "dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:8px 0}\n"
    "dt{color:#555}dd{margin:0}\n"
    "table.src{border-collapse:collapse;background:#f3f4f6;margin:6px 0;width:100%}\n"
    "table.src td{padding:0 8px;white-space:pre;vertical-align:top}\n"
    "table.src td.ln{color:#888;text-align:right;width:1%;user-select:none}\n"
    "table.src tr.hit{background:#fff3c4}\n"
    "table.tasks{border-collapse:collapse;margin:6px 0}\n"
    "table.tasks td,table.tasks th{border:1px solid #d5d9e0;padding:2px 8px;text-align:left}\n"
    "ol.stack{margin:4px 0;padding-left:28px}\n"
    ".hint{color:#2e6b30}\n"
    ".tools button{margin-right:6px}\n"
    "</style>\n</head>\n<body>\n";

/* The inline script behind the two buttons; the page works without it (every <details> opens
 * by hand). It touches only elements of this page. */
static const char page_script[] =
    "<script>\n"
    "function ascToggleAll(open){document.querySelectorAll('details').forEach(function(d){d.open=open;});}\n"
    "</script>\n";

/* Kinds in the report, each once, the worst severity first (then by name): what needs fixing
 * comes first, as in the text report. Returns a malloc'd array of borrowed names, or NULL. */
static const char **distinct_kinds(const aioscope_report *r, size_t *nout, int **worst_out) {
    const char **kinds = calloc(r->nfindings ? r->nfindings : 1, sizeof *kinds);
    int *worst = calloc(r->nfindings ? r->nfindings : 1, sizeof *worst);
    size_t n = 0;
    if (!kinds || !worst) {
        free(kinds);
        free(worst);
        return NULL;
    }
    for (size_t i = 0; i < r->nfindings; i++) {
        const char *k = r->findings[i].kind ? r->findings[i].kind : "unknown";
        size_t j = 0;
        while (j < n && strcmp(kinds[j], k) != 0) j++;
        if (j == n) kinds[n] = k, worst[n] = (int)r->findings[i].severity, n++;
        else if ((int)r->findings[i].severity > worst[j]) worst[j] = (int)r->findings[i].severity;
    }
    /* Insertion sort: a report has a handful of kinds. */
    for (size_t i = 1; i < n; i++) {
        for (size_t j = i; j > 0; j--) {
            int before = worst[j - 1] > worst[j] || (worst[j - 1] == worst[j] && strcmp(kinds[j - 1], kinds[j]) <= 0);
            if (before) break;
            const char *tk = kinds[j];
            kinds[j] = kinds[j - 1], kinds[j - 1] = tk;
            int tw = worst[j];
            worst[j] = worst[j - 1], worst[j - 1] = tw;
        }
    }
    *nout = n;
    *worst_out = worst;
    return kinds;
}

static void put_finding(FILE *out, const aioscope_finding *f, int context) {
    const char *sev = aioscope_severity_name(f->severity);
    fprintf(out, "<details class=\"finding %s\" data-kind=\"", sev);
    put_ident(out, f->kind);
    fprintf(out, "\"%s>\n<summary><span class=\"sev\">%s</span><span class=\"msg\">",
            f->severity == AIOSCOPE_SEV_ERROR ? " open" : "", sev);
    put_escaped(out, f->message ? f->message : "");
    fputs("</span>", out);
    if (f->count > 1) fprintf(out, " <span class=\"count\">(%ld times)</span>", f->count);
    fputs("<span class=\"where\">", out);
    put_location(out, &f->site);
    fputs("</span></summary>\n", out);

    put_snippet(out, f->site.file, f->site.line, context);
    fputs("<dl>", out);
    if (f->count > 1) {
        fprintf(out, "<dt>count</dt><dd>%ld</dd>", f->count);
    }
    if (f->duration_s > 0) {
        fprintf(out, "<dt>duration</dt><dd>%.3f s", f->duration_s);
        if (f->count > 1) fprintf(out, " in all, worst %.3f s", f->max_duration_s);
        fputs("</dd>", out);
    }
    if (f->detail) {
        fputs("<dt>detail</dt><dd><code>", out);
        put_escaped(out, f->detail);
        fputs("</code></dd>", out);
    }
    if (f->has_task) {
        fputs("<dt>task</dt><dd>", out);
        put_escaped(out, f->task_name ? f->task_name : "?");
        fprintf(out, " (id %lld)</dd>", f->task_id);
    }
    if (f->created_at.file) {
        fputs("<dt>created at</dt><dd>", out);
        put_location(out, &f->created_at);
        fputs("</dd>", out);
    }
    const char *hint = aioscope_kind_hint(f->kind);
    if (*hint) {
        fputs("<dt>help</dt><dd class=\"hint\">", out);
        put_escaped(out, hint);
        fputs("</dd>", out);
    }
    fputs("</dl>\n", out);
    if (f->created_at.file) put_snippet(out, f->created_at.file, f->created_at.line, 0);

    if (f->ntasks) {
        fputs("<table class=\"tasks\"><tr><th>task</th><th>waits at</th><th>on</th><th>created at</th></tr>\n", out);
        for (size_t i = 0; i < f->ntasks; i++) {
            const aioscope_participant *p = &f->tasks[i];
            fputs("<tr><td>", out);
            put_escaped(out, p->name ? p->name : "?");
            fputs("</td><td>", out);
            put_location(out, &p->site);
            fputs("</td><td>", out);
            put_escaped(out, p->waiting_on ? p->waiting_on : "");
            fputs("</td><td>", out);
            if (p->created_at.file) put_location(out, &p->created_at);
            fputs("</td></tr>\n", out);
        }
        fputs("</table>\n", out);
    }
    if (f->nstack) {
        fprintf(out, "<details class=\"stack\"><summary>stack (%zu frames, most recent call last)</summary>\n<ol class=\"stack\">\n",
                f->nstack);
        for (size_t i = 0; i < f->nstack; i++) {
            fputs("<li>", out);
            put_location(out, &f->stack[i]);
            put_snippet(out, f->stack[i].file, f->stack[i].line, 0);
            fputs("</li>\n", out);
        }
        fputs("</ol>\n</details>\n", out);
    }
    fputs("</details>\n", out);
}

int aioscope_report_write_html(const aioscope_report *r, FILE *out, const aioscope_html_options *opt) {
    int context = opt && opt->context_lines >= 0 ? opt->context_lines : DEFAULT_CONTEXT;
    if (context > MAX_CONTEXT) context = MAX_CONTEXT;
    size_t nkinds = 0;
    int *worst = NULL;
    const char **kinds = distinct_kinds(r, &nkinds, &worst);
    if (!kinds) return AIOSCOPE_ENOMEM;

    fputs(page_head, out);
    fputs("<header><h1>aioscope report</h1><div class=\"meta\">", out);
    if (r->argc > 0) {
        fputs("<code>", out);
        for (int i = 0; i < r->argc; i++) {
            if (i) fputc(' ', out);
            put_escaped(out, r->argv[i]);
        }
        fputs("</code> &middot; ", out);
    }
    fputs("Python ", out);
    put_escaped(out, r->python ? r->python : "?");
    if (r->exit_code >= 0) fprintf(out, " &middot; exit status %d", r->exit_code);
    fputs(" &middot; aioscope " AIOSCOPE_VERSION "</div></header>\n<main>\n", out);

    size_t counts[3] = {0, 0, 0};
    for (size_t i = 0; i < r->nfindings; i++)
        if ((int)r->findings[i].severity >= 0 && (int)r->findings[i].severity <= 2) counts[r->findings[i].severity]++;
    if (r->nfindings == 0) {
        fputs("<p class=\"summary\" id=\"summary\">No asyncio problems found.</p>\n", out);
    } else {
        fprintf(out,
                "<p class=\"summary\" id=\"summary\"><span><b>%zu</b> finding%s</span><span>%zu error%s</span>"
                "<span>%zu warning%s</span><span>%zu info</span></p>\n",
                r->nfindings, r->nfindings == 1 ? "" : "s", counts[AIOSCOPE_SEV_ERROR],
                counts[AIOSCOPE_SEV_ERROR] == 1 ? "" : "s", counts[AIOSCOPE_SEV_WARNING],
                counts[AIOSCOPE_SEV_WARNING] == 1 ? "" : "s", counts[AIOSCOPE_SEV_INFO]);
        fputs("<p class=\"tools\"><button type=\"button\" onclick=\"ascToggleAll(true)\">expand all</button>"
              "<button type=\"button\" onclick=\"ascToggleAll(false)\">collapse all</button></p>\n<nav><ul>\n", out);
        for (size_t k = 0; k < nkinds; k++) {
            size_t n = 0;
            for (size_t i = 0; i < r->nfindings; i++)
                if (strcmp(r->findings[i].kind ? r->findings[i].kind : "unknown", kinds[k]) == 0) n++;
            fputs("<li><a href=\"#kind-", out);
            put_ident(out, kinds[k]);
            fputs("\">", out);
            put_escaped(out, kinds[k]);
            fprintf(out, "</a> (%zu)</li>\n", n);
        }
        fputs("</ul></nav>\n", out);
    }
    for (size_t k = 0; k < nkinds; k++) {
        fputs("<section class=\"kind\" id=\"kind-", out);
        put_ident(out, kinds[k]);
        fputs("\"><h2>", out);
        put_escaped(out, kinds[k]);
        fputs("</h2>\n", out);
        /* Within a kind, errors first, as everywhere else. */
        for (int sev = AIOSCOPE_SEV_ERROR; sev >= AIOSCOPE_SEV_INFO; sev--)
            for (size_t i = 0; i < r->nfindings; i++) {
                const aioscope_finding *f = &r->findings[i];
                if ((int)f->severity == sev && strcmp(f->kind ? f->kind : "unknown", kinds[k]) == 0)
                    put_finding(out, f, context);
            }
        fputs("</section>\n", out);
    }
    fputs("</main>\n", out);
    fputs(page_script, out);
    fputs("</body>\n</html>\n", out);
    free(kinds);
    free(worst);
    return ferror(out) ? AIOSCOPE_EIO : 0;
}
