/* The findings model: building findings, and collecting them in a report that merges repeats.
 *
 * A program that blocks its loop at one line a thousand times should get one finding with
 * count 1000, not a thousand findings; so the report keys findings by (kind, site file, site
 * line) and merges a new finding into an existing one with the same key. For kinds that name a
 * task per finding (pending-at-exit, destroyed-pending, deadlock) the same task is not counted
 * twice, because the agent may see it from two paths (at main()'s return and at exit). */
#include "aioscope/report.h"

#include <stdlib.h>
#include <string.h>

#include "aioscope/error.h"

static const char *const severity_names[] = {"info", "warning", "error"};

const char *aioscope_severity_name(aioscope_severity sev) {
    if ((int)sev < 0 || sev > AIOSCOPE_SEV_ERROR) return "info";
    return severity_names[sev];
}

int aioscope_severity_parse(const char *name, aioscope_severity *out) {
    for (int i = 0; i <= AIOSCOPE_SEV_ERROR; i++) {
        if (name && strcmp(name, severity_names[i]) == 0) {
            *out = (aioscope_severity)i;
            return 0;
        }
    }
    return AIOSCOPE_EINVAL;
}

/* strdup that accepts NULL; sets *err on allocation failure. */
static char *dup_or_null(const char *s, int *err) {
    if (!s) return NULL;
    char *d = strdup(s);
    if (!d) *err = AIOSCOPE_ENOMEM;
    return d;
}

void aioscope_location_clear(aioscope_location *loc) {
    if (!loc) return;
    free(loc->file);
    free(loc->function);
    memset(loc, 0, sizeof *loc);
}

int aioscope_location_set(aioscope_location *loc, const char *file, int line, const char *function) {
    int err = 0;
    char *f = dup_or_null(file, &err);
    char *fn = dup_or_null(function, &err);
    if (err) {
        free(f);
        free(fn);
        return err;
    }
    aioscope_location_clear(loc);
    loc->file = f;
    loc->line = line;
    loc->function = fn;
    return 0;
}

static int location_copy(aioscope_location *dst, const aioscope_location *src) {
    memset(dst, 0, sizeof *dst);
    return aioscope_location_set(dst, src->file, src->line, src->function);
}

static void participant_clear(aioscope_participant *p) {
    free(p->name);
    free(p->waiting_on);
    aioscope_location_clear(&p->site);
    aioscope_location_clear(&p->created_at);
    memset(p, 0, sizeof *p);
}

void aioscope_finding_init(aioscope_finding *f) {
    memset(f, 0, sizeof *f);
    f->count = 1;
}

void aioscope_finding_clear(aioscope_finding *f) {
    if (!f) return;
    free(f->kind);
    free(f->message);
    free(f->task_name);
    free(f->detail);
    aioscope_location_clear(&f->site);
    aioscope_location_clear(&f->created_at);
    for (size_t i = 0; i < f->nstack; i++) aioscope_location_clear(&f->stack[i]);
    free(f->stack);
    for (size_t i = 0; i < f->ntasks; i++) participant_clear(&f->tasks[i]);
    free(f->tasks);
    memset(f, 0, sizeof *f);
}

int aioscope_finding_push_frame(aioscope_finding *f, const char *file, int line, const char *function) {
    aioscope_location *st = realloc(f->stack, (f->nstack + 1) * sizeof *st);
    if (!st) return AIOSCOPE_ENOMEM;
    f->stack = st;
    memset(&st[f->nstack], 0, sizeof *st);
    int rc = aioscope_location_set(&st[f->nstack], file, line, function);
    if (rc < 0) return rc;
    f->nstack++;
    return 0;
}

static int participant_copy(aioscope_participant *dst, const aioscope_participant *src) {
    int err = 0;
    memset(dst, 0, sizeof *dst);
    dst->id = src->id;
    dst->name = dup_or_null(src->name, &err);
    dst->waiting_on = dup_or_null(src->waiting_on, &err);
    if (!err) err = location_copy(&dst->site, &src->site);
    if (!err) err = location_copy(&dst->created_at, &src->created_at);
    if (err) participant_clear(dst);
    return err;
}

int aioscope_finding_copy(aioscope_finding *dst, const aioscope_finding *src) {
    int err = 0;
    aioscope_finding_init(dst);
    dst->severity = src->severity;
    dst->has_task = src->has_task;
    dst->task_id = src->task_id;
    dst->count = src->count;
    dst->duration_s = src->duration_s;
    dst->max_duration_s = src->max_duration_s;
    dst->block = src->block;
    dst->kind = dup_or_null(src->kind, &err);
    dst->message = dup_or_null(src->message, &err);
    dst->task_name = dup_or_null(src->task_name, &err);
    dst->detail = dup_or_null(src->detail, &err);
    if (!err) err = location_copy(&dst->site, &src->site);
    if (!err) err = location_copy(&dst->created_at, &src->created_at);
    if (!err && src->nstack) {
        dst->stack = calloc(src->nstack, sizeof *dst->stack);
        if (!dst->stack) err = AIOSCOPE_ENOMEM;
        for (size_t i = 0; !err && i < src->nstack; i++, dst->nstack++)
            err = location_copy(&dst->stack[i], &src->stack[i]);
    }
    if (!err && src->ntasks) {
        dst->tasks = calloc(src->ntasks, sizeof *dst->tasks);
        if (!dst->tasks) err = AIOSCOPE_ENOMEM;
        for (size_t i = 0; !err && i < src->ntasks; i++, dst->ntasks++)
            err = participant_copy(&dst->tasks[i], &src->tasks[i]);
    }
    if (err) aioscope_finding_clear(dst);
    return err;
}

aioscope_report *aioscope_report_new(void) {
    aioscope_report *r = calloc(1, sizeof *r);
    if (r) r->exit_code = -1;
    return r;
}

void aioscope_report_free(aioscope_report *r) {
    if (!r) return;
    free(r->python);
    for (int i = 0; i < r->argc; i++) free(r->argv[i]);
    free(r->argv);
    for (size_t i = 0; i < r->nfindings; i++) aioscope_finding_clear(&r->findings[i]);
    free(r->findings);
    free(r->blocks);
    free(r);
}

int aioscope_report_set_python(aioscope_report *r, const char *version) {
    int err = 0;
    char *v = dup_or_null(version, &err);
    if (err) return err;
    free(r->python);
    r->python = v;
    return 0;
}

int aioscope_report_set_argv(aioscope_report *r, int argc, const char *const *argv) {
    char **v = calloc((size_t)(argc > 0 ? argc : 1), sizeof *v);
    if (!v) return AIOSCOPE_ENOMEM;
    for (int i = 0; i < argc; i++) {
        v[i] = strdup(argv[i] ? argv[i] : "");
        if (!v[i]) {
            while (i-- > 0) free(v[i]);
            free(v);
            return AIOSCOPE_ENOMEM;
        }
    }
    for (int i = 0; i < r->argc; i++) free(r->argv[i]);
    free(r->argv);
    r->argv = v;
    r->argc = argc;
    return 0;
}

static int same_str(const char *a, const char *b) {
    if (!a || !b) return a == b;
    return strcmp(a, b) == 0;
}

/* Kinds whose every finding names one task that must be counted once. */
static int kind_is_per_task(const char *kind) {
    return same_str(kind, "pending-at-exit") || same_str(kind, "destroyed-pending") ||
           same_str(kind, "deadlock") || same_str(kind, "stuck-task") ||
           same_str(kind, "swallowed-cancel");
}

static int finding_names_task(const aioscope_finding *f, long long id) {
    if (f->has_task && f->task_id == id) return 1;
    for (size_t i = 0; i < f->ntasks; i++)
        if (f->tasks[i].id == id) return 1;
    return 0;
}

/* Record the finding's own task in its `tasks` list, so that later repeats can be recognised. */
static int remember_task(aioscope_finding *f, long long id, const char *name) {
    aioscope_participant *t = realloc(f->tasks, (f->ntasks + 1) * sizeof *t);
    if (!t) return AIOSCOPE_ENOMEM;
    f->tasks = t;
    memset(&t[f->ntasks], 0, sizeof *t);
    t[f->ntasks].id = id;
    if (name && !(t[f->ntasks].name = strdup(name))) return AIOSCOPE_ENOMEM;
    f->ntasks++;
    return 0;
}

/* Merge src into dst (same kind and site). Returns 0 or AIOSCOPE_ENOMEM. */
static int merge_into(aioscope_finding *dst, const aioscope_finding *src) {
    int is_deadlock = same_str(src->kind, "deadlock");
    if (is_deadlock && dst->ntasks == src->ntasks) {
        /* The same cycle reported again (e.g. live and at exit): keep one. */
        int same = 1;
        for (size_t i = 0; i < src->ntasks && same; i++) same = finding_names_task(dst, src->tasks[i].id);
        if (same) return 0;
    }
    if (!is_deadlock && kind_is_per_task(src->kind) && src->has_task) {
        if (finding_names_task(dst, src->task_id)) return 0; /* the same task seen twice */
        int rc = remember_task(dst, src->task_id, src->task_name);
        if (rc < 0) return rc;
    }
    dst->count += src->count > 0 ? src->count : 1;
    dst->duration_s += src->duration_s;
    double worst = src->max_duration_s > src->duration_s ? src->max_duration_s : src->duration_s;
    if (worst > dst->max_duration_s) dst->max_duration_s = worst;
    return 0;
}

int aioscope_report_add_finding(aioscope_report *r, const aioscope_finding *f) {
    if (!r || !f || !f->kind) return AIOSCOPE_EINVAL;
    for (size_t i = 0; i < r->nfindings; i++) {
        aioscope_finding *g = &r->findings[i];
        if (same_str(g->kind, f->kind) && same_str(g->site.file, f->site.file) && g->site.line == f->site.line)
            return merge_into(g, f);
    }
    if (r->nfindings == r->cap) {
        size_t ncap = r->cap ? r->cap * 2 : 8;
        aioscope_finding *nf = realloc(r->findings, ncap * sizeof *nf);
        if (!nf) return AIOSCOPE_ENOMEM;
        r->findings = nf;
        r->cap = ncap;
    }
    int rc = aioscope_finding_copy(&r->findings[r->nfindings], f);
    if (rc < 0) return rc;
    aioscope_finding *n = &r->findings[r->nfindings];
    n->block = 0; /* an event-stream id, not part of the report */
    if (n->count < 1) n->count = 1;
    if (n->max_duration_s < n->duration_s) n->max_duration_s = n->duration_s;
    r->nfindings++;
    if (!same_str(n->kind, "deadlock") && kind_is_per_task(n->kind) && n->has_task && n->ntasks == 0)
        return remember_task(n, n->task_id, n->task_name);
    return 0;
}

int aioscope_report_max_severity(const aioscope_report *r) {
    int max = -1;
    for (size_t i = 0; r && i < r->nfindings; i++)
        if ((int)r->findings[i].severity > max) max = (int)r->findings[i].severity;
    return max;
}

size_t aioscope_report_count_at_least(const aioscope_report *r, aioscope_severity sev) {
    size_t n = 0;
    for (size_t i = 0; r && i < r->nfindings; i++)
        if (r->findings[i].severity >= sev) n++;
    return n;
}

const char *aioscope_kind_hint(const char *kind) {
    static const struct {
        const char *kind, *hint;
    } hints[] = {
        {"unawaited-coroutine", "add `await` before the call, or schedule it with asyncio.create_task() and keep a reference"},
        {"blocking-call", "use the async equivalent (asyncio.sleep, an async client), or move the work off the loop with `await asyncio.to_thread(...)` / loop.run_in_executor()"},
        {"lost-exception", "await the task, or add a done-callback that retrieves task.exception(); a TaskGroup does both"},
        {"destroyed-pending", "keep a reference to the task (e.g. in a set, discarded in a done-callback) until it finishes"},
        {"swallowed-cancel", "re-raise asyncio.CancelledError after cleanup (`except CancelledError: ...; raise`), or call task.uncancel() if suppressing is intended"},
        {"pending-at-exit", "await or cancel the task before main() returns (a TaskGroup does this for you)"},
        {"resource-leak", "close it explicitly (`writer.close(); await writer.wait_closed()`, `transport.close()`), or use `async with`"},
        {"deadlock", "acquire locks in one global order, and never await a task that awaits you; add a timeout to find the culprit"},
        {"stuck-task", "check what the task awaits: it made no progress for a long time"},
    };
    for (size_t i = 0; kind && i < sizeof hints / sizeof hints[0]; i++)
        if (strcmp(hints[i].kind, kind) == 0) return hints[i].hint;
    return "";
}
