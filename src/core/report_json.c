/* The report as JSON: the contract of ../shared/spec/findings.md, both directions.
 *
 * Writing: the whole report (`aioscope run --json FILE`), one finding, and the lines of the
 * agent's event stream. Reading: the same shapes back, for the CLI that collects the agent's
 * events and for `aioscope report FILE.json`. The reader accepts what the writer writes and
 * ignores fields it does not know, so reports stay readable as fields are added. */
#include <stdlib.h>
#include <string.h>

#include "aioscope/error.h"
#include "aioscope/json.h"
#include "aioscope/report.h"

static void write_location(aioscope_buf *b, const aioscope_location *loc) {
    aioscope_buf_puts(b, "{\"file\":");
    aioscope_buf_json_string(b, loc->file ? loc->file : "<unknown>");
    aioscope_buf_printf(b, ",\"line\":%d,\"function\":", loc->line);
    aioscope_buf_json_string(b, loc->function ? loc->function : "<unknown>");
    aioscope_buf_puts(b, "}");
}

static void write_finding_fields(aioscope_buf *b, const aioscope_finding *f) {
    aioscope_buf_puts(b, "\"kind\":");
    aioscope_buf_json_string(b, f->kind);
    aioscope_buf_puts(b, ",\"severity\":");
    aioscope_buf_json_string(b, aioscope_severity_name(f->severity));
    aioscope_buf_puts(b, ",\"message\":");
    aioscope_buf_json_string(b, f->message ? f->message : "");
    aioscope_buf_puts(b, ",\"site\":");
    write_location(b, &f->site);
    if (f->created_at.file) {
        aioscope_buf_puts(b, ",\"created_at\":");
        write_location(b, &f->created_at);
    }
    if (f->has_task) {
        aioscope_buf_printf(b, ",\"task\":{\"id\":%lld,\"name\":", f->task_id);
        aioscope_buf_json_string(b, f->task_name);
        aioscope_buf_puts(b, "}");
    }
    aioscope_buf_puts(b, ",\"stack\":[");
    for (size_t i = 0; i < f->nstack; i++) {
        if (i) aioscope_buf_puts(b, ",");
        write_location(b, &f->stack[i]);
    }
    aioscope_buf_printf(b, "],\"count\":%ld", f->count > 0 ? f->count : 1);
    if (f->duration_s > 0) {
        aioscope_buf_puts(b, ",\"duration_s\":");
        aioscope_buf_json_number(b, f->duration_s);
        aioscope_buf_puts(b, ",\"max_duration_s\":");
        aioscope_buf_json_number(b, f->max_duration_s > 0 ? f->max_duration_s : f->duration_s);
    }
    if (f->detail) {
        aioscope_buf_puts(b, ",\"detail\":");
        aioscope_buf_json_string(b, f->detail);
    }
    if (f->block) aioscope_buf_printf(b, ",\"block\":%lld", f->block);
    aioscope_buf_puts(b, ",\"tasks\":[");
    for (size_t i = 0; i < f->ntasks; i++) {
        const aioscope_participant *p = &f->tasks[i];
        if (i) aioscope_buf_puts(b, ",");
        aioscope_buf_printf(b, "{\"id\":%lld,\"name\":", p->id);
        aioscope_buf_json_string(b, p->name);
        if (p->site.file) {
            aioscope_buf_puts(b, ",\"site\":");
            write_location(b, &p->site);
        }
        if (p->created_at.file) {
            aioscope_buf_puts(b, ",\"created_at\":");
            write_location(b, &p->created_at);
        }
        if (p->waiting_on) {
            aioscope_buf_puts(b, ",\"waiting_on\":");
            aioscope_buf_json_string(b, p->waiting_on);
        }
        aioscope_buf_puts(b, "}");
    }
    aioscope_buf_puts(b, "]");
}

void aioscope_finding_to_json(const aioscope_finding *f, aioscope_buf *b) {
    aioscope_buf_puts(b, "{");
    write_finding_fields(b, f);
    aioscope_buf_puts(b, "}");
}

void aioscope_event_hello(aioscope_buf *b, long pid, const char *python, int argc, const char *const *argv) {
    aioscope_buf_printf(b, "{\"event\":\"hello\",\"pid\":%ld,\"python\":", pid);
    aioscope_buf_json_string(b, python);
    aioscope_buf_puts(b, ",\"argv\":[");
    for (int i = 0; i < argc; i++) {
        if (i) aioscope_buf_puts(b, ",");
        aioscope_buf_json_string(b, argv[i]);
    }
    aioscope_buf_puts(b, "]}\n");
}

void aioscope_event_finding(aioscope_buf *b, const aioscope_finding *f) {
    aioscope_buf_puts(b, "{\"event\":\"finding\",");
    write_finding_fields(b, f);
    aioscope_buf_puts(b, "}\n");
}

int aioscope_report_write_json(const aioscope_report *r, FILE *out) {
    aioscope_buf b;
    aioscope_buf_init(&b);
    aioscope_buf_puts(&b, "{\n  \"aioscope\": ");
    aioscope_buf_json_string(&b, AIOSCOPE_VERSION);
    aioscope_buf_puts(&b, ",\n  \"python\": ");
    aioscope_buf_json_string(&b, r->python);
    aioscope_buf_puts(&b, ",\n  \"argv\": [");
    for (int i = 0; i < r->argc; i++) {
        if (i) aioscope_buf_puts(&b, ", ");
        aioscope_buf_json_string(&b, r->argv[i]);
    }
    aioscope_buf_printf(&b, "],\n  \"exit_code\": %d,\n  \"findings\": [", r->exit_code);
    for (size_t i = 0; i < r->nfindings; i++) {
        aioscope_buf_puts(&b, i ? ",\n    " : "\n    ");
        aioscope_finding_to_json(&r->findings[i], &b);
    }
    aioscope_buf_puts(&b, r->nfindings ? "\n  ]\n}\n" : "]\n}\n");
    int rc = 0;
    if (b.oom) rc = AIOSCOPE_ENOMEM;
    else if (fwrite(b.data, 1, b.len, out) != b.len || fflush(out) != 0) rc = AIOSCOPE_EIO;
    aioscope_buf_free(&b);
    return rc;
}

/* ---- reading ---------------------------------------------------------------------------- */

static int read_location(const aioscope_json *v, aioscope_location *out) {
    if (!v || v->type != AIOSCOPE_JSON_OBJECT) return 0; /* absent: leave unknown */
    double line = aioscope_json_get_number(v, "line", 0);
    if (line < 0 || line > 1e9) line = 0;
    return aioscope_location_set(out, aioscope_json_get_string(v, "file"), (int)line,
                                 aioscope_json_get_string(v, "function"));
}

/* A number field as an integer in [lo, hi]; dflt when absent, not a number, not finite or out of
 * range. (Converting a double outside the target type's range is undefined behaviour, and these
 * come from untrusted text.) */
static long long get_integer(const aioscope_json *obj, const char *key, long long dflt, double lo, double hi) {
    double v = aioscope_json_get_number(obj, key, (double)dflt);
    if (!(v >= lo && v <= hi)) return dflt;
    return (long long)v;
}

static char *dup_field(const aioscope_json *obj, const char *key, int *err) {
    const char *s = aioscope_json_get_string(obj, key);
    if (!s) return NULL;
    char *d = strdup(s);
    if (!d) *err = AIOSCOPE_ENOMEM;
    return d;
}

int aioscope_finding_from_json(const aioscope_json *obj, aioscope_finding *out) {
    int err = 0;
    aioscope_finding_init(out);
    if (!obj || obj->type != AIOSCOPE_JSON_OBJECT || !aioscope_json_get_string(obj, "kind"))
        return AIOSCOPE_EPARSE;
    out->kind = dup_field(obj, "kind", &err);
    out->message = dup_field(obj, "message", &err);
    out->detail = dup_field(obj, "detail", &err);
    const char *sev = aioscope_json_get_string(obj, "severity");
    if (!sev || aioscope_severity_parse(sev, &out->severity) < 0) out->severity = AIOSCOPE_SEV_WARNING;
    double count = aioscope_json_get_number(obj, "count", 1);
    out->count = count >= 1 && count < 1e15 ? (long)count : 1;
    out->duration_s = aioscope_json_get_number(obj, "duration_s", 0);
    out->max_duration_s = aioscope_json_get_number(obj, "max_duration_s", out->duration_s);
    /* Ids are below 2^53 (the agent keeps them so), so the double holds them exactly. */
    double block = aioscope_json_get_number(obj, "block", 0);
    out->block = block > 0 && block < 9007199254740992.0 ? (long long)block : 0;
    if (!err) err = read_location(aioscope_json_get(obj, "site"), &out->site);
    if (!err) err = read_location(aioscope_json_get(obj, "created_at"), &out->created_at);
    const aioscope_json *task = aioscope_json_get(obj, "task");
    if (!err && task && task->type == AIOSCOPE_JSON_OBJECT) {
        out->has_task = 1;
        out->task_id = get_integer(task, "id", 0, -9.2e18, 9.2e18);
        out->task_name = dup_field(task, "name", &err);
    }
    const aioscope_json *stack = aioscope_json_get(obj, "stack");
    if (!err && stack && stack->type == AIOSCOPE_JSON_ARRAY && stack->len) {
        out->stack = calloc(stack->len, sizeof *out->stack);
        if (!out->stack) err = AIOSCOPE_ENOMEM;
        for (size_t i = 0; !err && i < stack->len; i++, out->nstack++)
            err = read_location(&stack->items[i], &out->stack[i]);
    }
    const aioscope_json *tasks = aioscope_json_get(obj, "tasks");
    if (!err && tasks && tasks->type == AIOSCOPE_JSON_ARRAY && tasks->len) {
        out->tasks = calloc(tasks->len, sizeof *out->tasks);
        if (!out->tasks) err = AIOSCOPE_ENOMEM;
        for (size_t i = 0; !err && i < tasks->len; i++, out->ntasks++) {
            const aioscope_json *t = &tasks->items[i];
            aioscope_participant *p = &out->tasks[i];
            p->id = get_integer(t, "id", 0, -9.2e18, 9.2e18);
            p->name = dup_field(t, "name", &err);
            p->waiting_on = dup_field(t, "waiting_on", &err);
            if (!err) err = read_location(aioscope_json_get(t, "site"), &p->site);
            if (!err) err = read_location(aioscope_json_get(t, "created_at"), &p->created_at);
        }
    }
    if (err) aioscope_finding_clear(out);
    return err;
}

static int read_argv(aioscope_report *r, const aioscope_json *argv) {
    if (!argv || argv->type != AIOSCOPE_JSON_ARRAY) return 0;
    const char **v = calloc(argv->len + 1, sizeof *v);
    if (!v) return AIOSCOPE_ENOMEM;
    for (size_t i = 0; i < argv->len; i++)
        v[i] = argv->items[i].type == AIOSCOPE_JSON_STRING ? argv->items[i].string : "";
    int rc = aioscope_report_set_argv(r, (int)argv->len, v);
    free(v);
    return rc;
}

int aioscope_report_from_json(const char *text, size_t len, aioscope_report **out) {
    aioscope_json *root = NULL;
    *out = NULL;
    int rc = aioscope_json_parse(text, len, &root);
    if (rc < 0) return rc;
    const aioscope_json *findings = aioscope_json_get(root, "findings");
    if (!findings || findings->type != AIOSCOPE_JSON_ARRAY) {
        aioscope_json_free(root);
        return AIOSCOPE_EPARSE;
    }
    aioscope_report *r = aioscope_report_new();
    if (!r) {
        aioscope_json_free(root);
        return AIOSCOPE_ENOMEM;
    }
    r->exit_code = (int)get_integer(root, "exit_code", -1, -2147483648.0, 2147483647.0);
    rc = aioscope_report_set_python(r, aioscope_json_get_string(root, "python"));
    if (rc == 0) rc = read_argv(r, aioscope_json_get(root, "argv"));
    for (size_t i = 0; rc == 0 && i < findings->len; i++) {
        aioscope_finding f;
        rc = aioscope_finding_from_json(&findings->items[i], &f);
        if (rc == 0) {
            /* Keep saved entries as they are: they were merged when the report was written. */
            if (r->nfindings == r->cap) {
                size_t ncap = r->cap ? r->cap * 2 : 8;
                aioscope_finding *nf = realloc(r->findings, ncap * sizeof *nf);
                if (!nf) rc = AIOSCOPE_ENOMEM;
                else r->findings = nf, r->cap = ncap;
            }
            if (rc == 0) r->findings[r->nfindings++] = f;
            else aioscope_finding_clear(&f);
        }
    }
    aioscope_json_free(root);
    if (rc < 0) {
        aioscope_report_free(r);
        return rc;
    }
    r->agent_loaded = 1;
    *out = r;
    return 0;
}

/* The blocked periods seen so far: a later finding of the same period replaces the duration the
 * earlier one added instead of counting the period again. */
typedef struct {
    long long block;
    size_t finding; /* index into r->findings */
    double duration_s;
} block_seen;

typedef struct {
    size_t n, cap;
    block_seen items[];
} block_table;

static int add_block_finding(aioscope_report *r, const aioscope_finding *f) {
    block_table *t = r->blocks;
    for (size_t i = 0; t && i < t->n; i++) {
        block_seen *b = &t->items[i];
        if (b->block != f->block || b->finding >= r->nfindings) continue;
        aioscope_finding *g = &r->findings[b->finding];
        /* The final word on a period knows more (its task, the exact duration) than the
         * provisional one written while the loop was still blocked. */
        if (g->count == 1 && f->message) {
            char *m = strdup(f->message);
            if (m) free(g->message), g->message = m;
        }
        if (!g->has_task && f->has_task) {
            char *name = f->task_name ? strdup(f->task_name) : NULL;
            g->has_task = 1;
            g->task_id = f->task_id;
            free(g->task_name);
            g->task_name = name;
            if (f->created_at.file && !g->created_at.file)
                (void)aioscope_location_set(&g->created_at, f->created_at.file, f->created_at.line,
                                            f->created_at.function);
        }
        g->duration_s += f->duration_s - b->duration_s;
        if (f->duration_s > g->max_duration_s) g->max_duration_s = f->duration_s;
        b->duration_s = f->duration_s;
        return 0;
    }
    int rc = aioscope_report_add_finding(r, f);
    if (rc < 0) return rc;
    size_t idx = r->nfindings;
    for (size_t i = 0; i < r->nfindings; i++) {
        const aioscope_finding *g = &r->findings[i];
        if (g->kind && strcmp(g->kind, f->kind) == 0 && g->site.line == f->site.line &&
            ((!g->site.file && !f->site.file) || (g->site.file && f->site.file && strcmp(g->site.file, f->site.file) == 0))) {
            idx = i;
            break;
        }
    }
    if (idx == r->nfindings) return 0;
    if (!t || t->n == t->cap) {
        size_t ncap = t ? t->cap * 2 : 16;
        block_table *nt = realloc(t, sizeof *nt + ncap * sizeof nt->items[0]);
        if (!nt) return AIOSCOPE_ENOMEM;
        if (!t) nt->n = 0;
        nt->cap = ncap;
        r->blocks = t = nt;
    }
    t->items[t->n++] = (block_seen){f->block, idx, f->duration_s};
    return 0;
}

int aioscope_report_feed_event(aioscope_report *r, const char *line, size_t len) {
    aioscope_json *ev = NULL;
    int rc = aioscope_json_parse(line, len, &ev);
    if (rc < 0) return rc;
    const char *kind = aioscope_json_get_string(ev, "event");
    if (!kind) {
        rc = AIOSCOPE_EPARSE;
    } else if (strcmp(kind, "hello") == 0) {
        /* Only the first process to say hello names the report; forked children say it too. */
        if (!r->agent_loaded) {
            rc = aioscope_report_set_python(r, aioscope_json_get_string(ev, "python"));
            if (rc == 0) rc = read_argv(r, aioscope_json_get(ev, "argv"));
        }
        r->agent_loaded = 1;
    } else if (strcmp(kind, "finding") == 0) {
        aioscope_finding f;
        rc = aioscope_finding_from_json(ev, &f);
        if (rc == 0) {
            rc = f.block ? add_block_finding(r, &f) : aioscope_report_add_finding(r, &f);
            aioscope_finding_clear(&f);
        }
    }
    aioscope_json_free(ev);
    return rc;
}
