/* `aioscope top PID`: a live, refreshing view of a running program's asyncio tasks.
 *
 * Every refresh asks the program's agent for a snapshot (agent_client.c) and shows its loops —
 * each with how late its heartbeat is (the loop's lag) and, when the lag passes the agent's
 * blocking threshold, the stack of the thread that blocks it — and one row per task: state,
 * busy time, share of the last interval spent running it, steps, age, the program's own line
 * where it is suspended, and what it waits on. Sortable by busy time, steps, age or name.
 *
 * top needs the agent: busy time and steps exist only inside the program. A process without it
 * gets one line saying how to start it with the agent.
 *
 * Keys: b busy, s steps, a age, n name (sort), space refresh now, q quit.
 * Exit status: 0 after q (or when the process ends); 2 bad arguments; 3 no such process;
 * 4 not allowed; 7 the process has no aioscope agent; 6 the agent's answers could not be read. */
#include <curses.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "aioscope/error.h"
#include "cli/agent_client.h"
#include "cli/commands.h"
#include "cli/snapshot_cli.h"

#define ASC_EXIT_TOP_NOAGENT 7
/* Frames of the blocking stack shown; the innermost ones say where the loop is stuck. */
#define ASC_TOP_STACK_LINES 10

static const char top_usage[] =
    "usage: aioscope top PID [--interval SECONDS] [--sort busy|steps|age|name]\n"
    "\n"
    "A live view of a running program's asyncio tasks, refreshed every interval (default 1 s):\n"
    "each loop's lag and, when a loop is blocked, the blocking stack; one row per task with its\n"
    "state, busy time, share of the last interval, steps, age, where it is suspended and what it\n"
    "awaits. The program must run the aioscope agent (`aioscope run` or aioscope.install()).\n"
    "\n"
    "keys: b/s/a/n sort by busy time, steps, age, name; space refresh; q quit\n"
    "\n"
    "exit status: 0 after q or when the process ends; 2 bad arguments; 3 no such process;\n"
    "4 not allowed to ask it; 7 the process has no aioscope agent; 6 unreadable answers.\n";

typedef enum { ASC_SORT_BUSY, ASC_SORT_STEPS, ASC_SORT_AGE, ASC_SORT_NAME } asc_sort_key;

/* A task's busy time at the previous refresh, to show the share of the last interval. */
typedef struct {
    uint64_t id;
    double busy_s;
} asc_prev;

typedef struct {
    aioscope_snapshot *snap;
    asc_agent_info info;
    double *share;   /* per task: share of the interval it ran (0..1), -1 unknown */
    size_t *order;   /* task indices in display order */
    asc_prev *prev;  /* sorted by id */
    size_t nprev;
    double prev_time;
    asc_sort_key sort;
} asc_top;

static double asc_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int asc_prev_cmp(const void *a, const void *b) {
    uint64_t x = ((const asc_prev *)a)->id, y = ((const asc_prev *)b)->id;
    return x < y ? -1 : x > y;
}

/* qsort has no context argument: the comparison reads the view being sorted from here. */
static const asc_top *asc_sorting;

static int asc_order_cmp(const void *a, const void *b) {
    const aioscope_snap_task *x = &asc_sorting->snap->tasks[*(const size_t *)a];
    const aioscope_snap_task *y = &asc_sorting->snap->tasks[*(const size_t *)b];
    switch (asc_sorting->sort) {
    case ASC_SORT_BUSY:
        if (x->busy_s != y->busy_s) return x->busy_s < y->busy_s ? 1 : -1;
        break;
    case ASC_SORT_STEPS:
        if (x->steps != y->steps) return x->steps < y->steps ? 1 : -1;
        break;
    case ASC_SORT_AGE:
        if (x->age_s != y->age_s) return x->age_s < y->age_s ? 1 : -1;
        break;
    case ASC_SORT_NAME:
        break;
    }
    return strcmp(x->name, y->name);
}

/* The state a person wants to see, from the snapshot's facts. */
static const char *asc_task_state(const aioscope_snap_task *t) {
    if (t->state == AIOSCOPE_TASK_CANCELLED) return "cancelled";
    if (t->state == AIOSCOPE_TASK_FINISHED) return t->exception ? "failed" : "done";
    if (t->thread >= 0) return "running";
    if (t->cancelling) return "cancelling";
    return t->awaiting ? "waiting" : "ready";
}

/* The innermost frame of the program's own code (not the standard library, not site-packages). */
static const aioscope_snap_frame *asc_user_frame(const aioscope_snap_frame *f, size_t n, int innermost_first) {
    for (size_t k = 0; k < n; k++) {
        const aioscope_snap_frame *fr = &f[innermost_first ? k : n - 1 - k];
        if (!strstr(fr->file, "/lib/python") && !strstr(fr->file, "-packages/") && fr->file[0] != '<')
            return fr;
    }
    return n ? &f[innermost_first ? 0 : n - 1] : NULL;
}

static const char *asc_base(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* Take a new snapshot and work out the shares; 0 or a negative AIOSCOPE_E* code. */
static int asc_top_refresh(asc_top *v, int pid) {
    aioscope_snapshot *snap = NULL;
    asc_agent_info info;
    int rc = asc_agent_snapshot(pid, &snap, &info);
    if (rc < 0) return rc;
    double now = asc_mono();
    double *share = calloc(snap->ntasks ? snap->ntasks : 1, sizeof *share);
    size_t *order = calloc(snap->ntasks ? snap->ntasks : 1, sizeof *order);
    asc_prev *prev = calloc(snap->ntasks ? snap->ntasks : 1, sizeof *prev);
    if (!share || !order || !prev) {
        free(share);
        free(order);
        free(prev);
        aioscope_snapshot_free(snap);
        return AIOSCOPE_ENOMEM;
    }
    double dt = now - v->prev_time;
    for (size_t i = 0; i < snap->ntasks; i++) {
        const aioscope_snap_task *t = &snap->tasks[i];
        order[i] = i;
        share[i] = -1;
        prev[i].id = t->id;
        prev[i].busy_s = t->busy_s;
        asc_prev key = {.id = t->id};
        const asc_prev *p = v->prev ? bsearch(&key, v->prev, v->nprev, sizeof key, asc_prev_cmp) : NULL;
        if (p && t->busy_s >= 0 && p->busy_s >= 0 && dt > 0) share[i] = (t->busy_s - p->busy_s) / dt;
    }
    qsort(prev, snap->ntasks, sizeof *prev, asc_prev_cmp);
    aioscope_snapshot_free(v->snap);
    free(v->share);
    free(v->order);
    free(v->prev);
    v->snap = snap;
    v->info = info;
    v->share = share;
    v->order = order;
    v->prev = prev;
    v->nprev = snap->ntasks;
    v->prev_time = now;
    asc_sorting = v;
    qsort(v->order, snap->ntasks, sizeof *v->order, asc_order_cmp);
    return 0;
}

static const char *asc_sort_name(asc_sort_key k) {
    return k == ASC_SORT_BUSY ? "busy" : k == ASC_SORT_STEPS ? "steps" : k == ASC_SORT_AGE ? "age" : "name";
}

/* One screen line, cut at the right edge: curses would wrap a longer one onto the next row. */
static void asc_line(int y, int x, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void asc_line(int y, int x, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (COLS > x) mvaddnstr(y, x, buf, COLS - x);
}

static void asc_top_draw(const asc_top *v, int pid, double interval) {
    const aioscope_snapshot *s = v->snap;
    erase();
    int rows = LINES, y = 0;
    asc_line(y++, 0, "aioscope top - pid %d, Python %u.%u.%u, %zu tasks, every %.1fs, sorted by %s", pid,
             s->py_version_hex >> 24, (s->py_version_hex >> 16) & 0xff, (s->py_version_hex >> 8) & 0xff,
             s->ntasks, interval, asc_sort_name(v->sort));
    if (strcmp(v->info.read_with, "memory") == 0) {
        attron(A_BOLD);
        asc_line(y++, 0, "The program holds the GIL: read from memory (no busy time or steps this time)");
        attroff(A_BOLD);
    }
    /* One line per loop thread; the blocking stack when it is late past the threshold. */
    for (size_t i = 0; i < s->nthreads && y < rows - 3; i++) {
        const aioscope_snap_thread *th = &s->threads[i];
        if (th->loop_state == AIOSCOPE_LOOP_NONE) continue;
        double lag = -1;
        for (int k = 0; k < v->info.nloops; k++)
            if (v->info.loops[k].thread_id == th->thread_id) lag = v->info.loops[k].lag_s;
        int blocked = lag >= 0 && v->info.block_threshold_s > 0 && lag > v->info.block_threshold_s;
        if (blocked) attron(A_REVERSE);
        asc_line(y++, 0, "loop on thread %llu: %s, lag %s%.1f ms%s",
                 (unsigned long long)(th->native_id ? th->native_id : th->thread_id),
                 th->loop_state == AIOSCOPE_LOOP_POLLING ? "idle (polling)" : "running",
                 lag < 0 ? "? " : "", lag < 0 ? 0.0 : lag * 1e3, blocked ? "  BLOCKED" : "");
        if (blocked) attroff(A_REVERSE);
        if (blocked) {
            asc_line(y++, 2, "blocking stack (innermost first):");
            for (size_t k = 0; k < th->nframes && k < ASC_TOP_STACK_LINES && y < rows - 3; k++)
                asc_line(y++, 4, "%s (%s:%d)", th->frames[k].function, th->frames[k].file, th->frames[k].line);
        }
    }
    y++;
    attron(A_BOLD);
    asc_line(y++, 0, "%-22s %-10s %9s %6s %8s %8s  %-34s %s", "NAME", "STATE", "BUSY s", "CPU%", "STEPS", "AGE s",
             "WHERE", "AWAITING");
    attroff(A_BOLD);
    for (size_t r = 0; r < s->ntasks && y < rows - 1; r++) {
        size_t i = v->order[r];
        const aioscope_snap_task *t = &s->tasks[i];
        char busy[16] = "-", share[16] = "-", steps[24] = "-", age[16] = "-", where[64] = "-";
        if (t->busy_s >= 0) snprintf(busy, sizeof busy, "%.3f", t->busy_s);
        if (v->share[i] >= 0) snprintf(share, sizeof share, "%.1f", v->share[i] * 100);
        if (t->steps >= 0) snprintf(steps, sizeof steps, "%ld", t->steps);
        if (t->age_s >= 0) snprintf(age, sizeof age, "%.1f", t->age_s);
        const aioscope_snap_frame *f = asc_user_frame(t->coro, t->ncoro, 0);
        if (f) snprintf(where, sizeof where, "%s:%d %s", asc_base(f->file), f->line, f->function);
        asc_line(y++, 0, "%-22.22s %-10s %9s %6s %8s %8s  %-34.34s %.*s", t->name, asc_task_state(t), busy, share,
                 steps, age, where, 200, t->exception ? t->exception : t->awaiting ? t->awaiting : "-");
    }
    attron(A_REVERSE);
    asc_line(rows - 1, 0, " b busy  s steps  a age  n name  space refresh  q quit ");
    attroff(A_REVERSE);
    refresh();
}

/* One line for a failed refresh, and the exit status it means. */
static int asc_top_error(int rc, int pid) {
    if (rc == AIOSCOPE_ENOAGENT) {
        if (kill(pid, 0) < 0 && errno == ESRCH) {
            asc_cli_error("no process with pid %d", pid);
            return ASC_EXIT_SNAP_NOPROC;
        }
        asc_cli_error("process %d has no aioscope agent: start it with `aioscope run` (or call "
                      "aioscope.install() in it); `aioscope ps %d` reads it without the agent", pid, pid);
        return ASC_EXIT_TOP_NOAGENT;
    }
    if (rc == AIOSCOPE_EPERM) {
        asc_cli_error("not allowed to ask process %d: only the user running it may", pid);
        return ASC_EXIT_SNAP_PERM;
    }
    asc_cli_error("cannot read process %d's agent: %s", pid, aioscope_strerror(rc));
    return ASC_EXIT_SNAP_UNREADABLE;
}

int asc_cmd_top(int argc, char **argv) {
    int pid = 0;
    double interval = 1.0;
    asc_top v;
    memset(&v, 0, sizeof v);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(top_usage, stdout);
            return 0;
        } else if (strcmp(a, "--interval") == 0 && i + 1 < argc) {
            char *end;
            interval = strtod(argv[++i], &end);
            if (*end || !(interval >= 0.05) || interval > 3600) {
                asc_cli_error("top: --interval wants seconds between 0.05 and 3600, not '%s'", argv[i]);
                return ASC_EXIT_USAGE;
            }
        } else if (strcmp(a, "--sort") == 0 && i + 1 < argc) {
            const char *k = argv[++i];
            if (strcmp(k, "busy") == 0) v.sort = ASC_SORT_BUSY;
            else if (strcmp(k, "steps") == 0) v.sort = ASC_SORT_STEPS;
            else if (strcmp(k, "age") == 0) v.sort = ASC_SORT_AGE;
            else if (strcmp(k, "name") == 0) v.sort = ASC_SORT_NAME;
            else {
                asc_cli_error("top: --sort takes busy, steps, age or name, not '%s'", k);
                return ASC_EXIT_USAGE;
            }
        } else if (a[0] != '-' && !pid) {
            char *end;
            long p = strtol(a, &end, 10);
            if (*end || p <= 0 || p > 0x3fffffff) {
                asc_cli_error("top: '%s' is not a process id", a);
                return ASC_EXIT_USAGE;
            }
            pid = (int)p;
        } else {
            asc_cli_error("top: unexpected argument '%s' (see `aioscope top --help`)", a);
            return ASC_EXIT_USAGE;
        }
    }
    if (!pid) {
        asc_cli_error("top: which process? (usage: aioscope top PID)");
        return ASC_EXIT_USAGE;
    }
    /* The first snapshot before the screen is taken over, so that an error is a plain line. */
    v.prev_time = asc_mono();
    int rc = asc_top_refresh(&v, pid);
    if (rc < 0) return asc_top_error(rc, pid);
    if (!isatty(STDOUT_FILENO) || !isatty(STDIN_FILENO)) {
        asc_cli_error("top: needs a terminal (use `aioscope ps %d` in scripts)", pid);
        aioscope_snapshot_free(v.snap);
        free(v.share);
        free(v.order);
        free(v.prev);
        return ASC_EXIT_USAGE;
    }
    initscr();
    cbreak();
    noecho();
    curs_set(0);
    keypad(stdscr, TRUE);
    int status = 0, ended = 0;
    double next = asc_mono() + interval;
    asc_top_draw(&v, pid, interval);
    for (;;) {
        int wait_ms = (int)((next - asc_mono()) * 1000);
        timeout(wait_ms > 0 ? wait_ms : 0);
        int ch = getch();
        int redraw = 0;
        if (ch == 'q' || ch == 'Q') break;
        if (ch == 'b') v.sort = ASC_SORT_BUSY, redraw = 1;
        if (ch == 's') v.sort = ASC_SORT_STEPS, redraw = 1;
        if (ch == 'a') v.sort = ASC_SORT_AGE, redraw = 1;
        if (ch == 'n') v.sort = ASC_SORT_NAME, redraw = 1;
        if (ch == ' ' || ch == ERR || asc_mono() >= next) {
            rc = asc_top_refresh(&v, pid);
            next = asc_mono() + interval;
            if (rc < 0) {
                if (kill(pid, 0) < 0 && errno == ESRCH) ended = 1;
                else status = 1;
                break;
            }
            redraw = 1;
        }
        if (redraw) {
            asc_sorting = &v;
            qsort(v.order, v.snap->ntasks, sizeof *v.order, asc_order_cmp);
            asc_top_draw(&v, pid, interval);
        }
    }
    endwin();
    if (ended) printf("aioscope top: process %d ended\n", pid);
    else if (status) status = asc_top_error(rc, pid);
    aioscope_snapshot_free(v.snap);
    free(v.share);
    free(v.order);
    free(v.prev);
    return status;
}
