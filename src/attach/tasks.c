/* asyncio tasks in target memory: where they are registered, their coroutine chains, what they
 * await and who awaits them (the await tree), and which thread runs which task now.
 *
 * Where the tasks are (Modules/_asynciomodule.c; all reached through
 * sys.modules['_asyncio'].__dict__, which works for stripped interpreters too):
 *   3.8-3.11  `_all_tasks`        a weakref.WeakSet of every task
 *   3.12-3.13 `_scheduled_tasks`  a WeakSet of tasks created the usual way, and
 *             `_eager_tasks`      a set of eager tasks still running their first step
 *   every version `_current_tasks` a dict {event loop: the task it is running right now}
 * A WeakSet keeps its weak references in the set `self.data`.
 *
 * The await tree is reconstructed (CPython records it only from 3.14): task A awaits task B
 * when A's fut_waiter is B; when A's fut_waiter is a gather future, A awaits each of its
 * `_children`; a task created by a TaskGroup has the group's bound `_on_task_done` among its
 * done-callbacks, and the group's `_parent_task` awaits it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aioscope/error.h"
#include "attach/pyobj.h"
#include "attach/walk.h"

/* A bound on the number of tasks: 16 M, far beyond what fits the 1 s budget, so a garbage set
 * cannot make us allocate without limit. */
#define ASC_MAX_TASKS (1u << 24)
#define ASC_MAX_CHILDREN 65536
#define ASC_MAX_CALLBACKS 64
#define ASC_MAX_LOOPS 256

typedef struct {
    aioscope_target *t;
    aioscope_snapshot *snap;
    uint64_t task_type;
    uint64_t agent_task_type; /* the agent's Task subclass, once seen (0: not yet) */
    uint64_t *addrs; /* task addresses found */
    size_t n, cap;
    int strong;      /* set entries are tasks (eager set) rather than weak references */
} asc__collect;

static int asc__collect_cb(void *ctx, uint64_t item) {
    asc__collect *c = ctx;
    uint64_t task = item;
    if (!c->strong) {
        /* A weak reference: its referent at wr_object (None once dead: fails the type check). */
        if (asc_obj_check(c->t, item, c->t->types.weakref) < 0) return 0;
        if (asc_mem_read_u64(&c->t->mem, item + (uint64_t)c->t->L->wr_object, &task) < 0) return 0;
    }
    uint64_t type;
    if (asc_obj_type(c->t, task, &type) < 0) return 0; /* a dead reference, a dummy slot, torn */
    if (type != c->task_type && type != c->agent_task_type) {
        /* Under `aioscope run` tasks are the agent's C subclass of Task, which keeps the name
         * "_asyncio.Task" (src/agent/tasks.c); known by that name once, by address after. */
        const char *name = c->agent_task_type ? NULL : asc_obj_type_name(c->t, task);
        if (!name || strcmp(name, "_asyncio.Task") != 0) return 0;
        c->agent_task_type = type;
    }
    if (c->n == c->cap) {
        if (c->cap >= ASC_MAX_TASKS) return AIOSCOPE_ELIMIT;
        size_t cap = c->cap ? c->cap * 2 : 64;
        uint64_t *a = realloc(c->addrs, cap * sizeof *a);
        if (!a) return AIOSCOPE_ENOMEM;
        c->addrs = a;
        c->cap = cap;
    }
    c->addrs[c->n++] = task;
    return 0;
}

static int asc__collect_weakset(asc__collect *c, uint64_t weakset) {
    uint64_t data;
    int rc = asc_obj_getattr(c->t, weakset, "data", &data);
    if (rc < 0) return rc;
    c->strong = 0;
    return asc_set_foreach(c->t, data, asc__collect_cb, c);
}

static int asc__cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The short name shown for an awaited object's type: "_asyncio.Future" -> "Future". */
static const char *asc__short_type(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot ? dot + 1 : name;
}

static int asc__add_awaiter(aioscope_snap_task *child, uint64_t parent) {
    for (size_t i = 0; i < child->nawaited_by; i++)
        if (child->awaited_by[i] == parent) return 0;
    uint64_t *a = realloc(child->awaited_by, (child->nawaited_by + 1) * sizeof *a);
    if (!a) return AIOSCOPE_ENOMEM;
    a[child->nawaited_by++] = parent;
    child->awaited_by = a;
    return 0;
}

/* Name of a task: a str, or (3.12+, default names) an int N meaning "Task-N". */
static int asc__task_name(aioscope_target *t, uint64_t name_obj, char *out, size_t cap) {
    int64_t n;
    if (asc_read_str(t, name_obj, out, cap) == 0) return 0;
    if (asc_read_long(t, name_obj, &n) == 0) {
        snprintf(out, cap, "Task-%lld", (long long)n);
        return 0;
    }
    return AIOSCOPE_EBADDATA;
}

/* One task's own fields and coroutine chain. */
static int asc__read_task(aioscope_target *t, aioscope_snapshot *snap, uint64_t addr,
                          aioscope_snap_task *tk, uint64_t *fut_waiter) {
    const asc_layout *L = t->L;
    uint8_t buf[256];
    size_t len = (size_t)L->task_name + 8;
    if (len > sizeof buf) return AIOSCOPE_EBADDATA;
    int rc = asc_mem_read(&t->mem, addr, buf, len);
    if (rc < 0) return rc;
    int32_t state;
    uint64_t coro, name_obj;
    memcpy(&state, buf + L->task_state, 4);
    memcpy(fut_waiter, buf + L->task_fut_waiter, 8);
    memcpy(&coro, buf + L->task_coro, 8);
    memcpy(&name_obj, buf + L->task_name, 8);
    memcpy(&tk->loop, buf + L->task_loop, 8);
    if (state < 0 || state > 2) return AIOSCOPE_EBADDATA;
    tk->id = addr;
    tk->state = (aioscope_task_state)state;
    tk->thread = -1;
    tk->steps = -1;
    tk->busy_s = -1;
    tk->age_s = -1;
    char name[256];
    if (asc__task_name(t, name_obj, name, sizeof name) < 0) snprintf(name, sizeof name, "?");
    if (!(tk->name = aioscope_snapshot_strdup(snap, name))) return AIOSCOPE_ENOMEM;
    /* The coroutine chain: the task's coroutine, the coroutine it awaits, and so on, until an
     * object that is not a coroutine (a future, usually) or a coroutine that is not awaiting. */
    size_t cap = 0;
    uint64_t cur = coro, awaited = 0;
    for (size_t depth = 0; cur && tk->state == AIOSCOPE_TASK_PENDING; depth++) {
        if (depth >= ASC_MAX_CORO_CHAIN) return AIOSCOPE_ELIMIT;
        uint64_t type;
        if (asc_obj_type(t, cur, &type) < 0) break;
        if (type != t->types.coro && type != t->types.gen) {
            awaited = cur;
            break;
        }
        asc_loc loc;
        uint64_t next;
        rc = asc_coro_decode(t, cur, &loc, &next);
        if (rc == AIOSCOPE_ENOENT) break; /* finished coroutine */
        if (rc < 0) return rc;
        if (tk->ncoro == cap) {
            cap = cap ? cap * 2 : 4;
            aioscope_snap_frame *f = realloc(tk->coro, cap * sizeof *f);
            if (!f) return AIOSCOPE_ENOMEM;
            tk->coro = f;
        }
        if ((rc = asc_snap_frame_set(snap, &tk->coro[tk->ncoro++], &loc)) < 0) return rc;
        cur = next;
    }
    if (awaited) {
        const char *tn = asc_obj_type_name(t, awaited);
        if (strcmp(tn, "_asyncio.FutureIter") == 0 || strcmp(tn, "FutureIter") == 0) {
            /* `await fut` suspends in fut.__await__()'s iterator; show the future itself
             * (futureiterobject.future). */
            uint64_t fut;
            if (asc_mem_read_objptr(&t->mem, awaited + (uint64_t)L->futureiter_future, &fut) == 0) {
                awaited = fut;
                tn = asc_obj_type_name(t, fut);
            }
        }
        if (!(tk->awaiting = aioscope_snapshot_intern(snap, asc__short_type(tn)))) return AIOSCOPE_ENOMEM;
        tk->awaiting_id = awaited;
    }
    if (*fut_waiter && !asc_mem_plausible_obj(*fut_waiter)) *fut_waiter = 0;
    if (*fut_waiter && !tk->awaiting_id) {
        tk->awaiting_id = *fut_waiter;
        tk->awaiting = aioscope_snapshot_intern(snap, asc__short_type(asc_obj_type_name(t, *fut_waiter)));
        if (!tk->awaiting) return AIOSCOPE_ENOMEM;
    }
    return 0;
}

/* TaskGroup children: the task's done-callbacks hold the group's bound _on_task_done. */
static int asc__taskgroup_parent(aioscope_target *t, uint64_t task, uint64_t *parent) {
    const asc_layout *L = t->L;
    uint64_t cbs[ASC_MAX_CALLBACKS + 1];
    size_t n = 0;
    *parent = 0;
    if (asc_mem_read_u64(&t->mem, task + (uint64_t)L->task_callback0, &cbs[0]) == 0 && cbs[0]) n = 1;
    uint64_t list;
    if (asc_mem_read_u64(&t->mem, task + (uint64_t)L->task_callbacks, &list) == 0 && list) {
        /* fut_callbacks: a list of (callback, context) tuples. */
        uint64_t items[ASC_MAX_CALLBACKS];
        size_t m = 0;
        if (asc_seq_items(t, list, items, ASC_MAX_CALLBACKS, &m) == 0)
            for (size_t i = 0; i < m; i++) {
                uint64_t pair[2];
                size_t k;
                if (asc_seq_items(t, items[i], pair, 2, &k) == 0 && k >= 1) cbs[n++] = pair[0];
            }
    }
    for (size_t i = 0; i < n; i++) {
        if (asc_obj_check(t, cbs[i], t->types.method) < 0 || !t->types.method) continue;
        uint64_t self_obj;
        if (asc_mem_read_objptr(&t->mem, cbs[i] + (uint64_t)L->method_self, &self_obj) < 0) continue;
        if (strcmp(asc_obj_type_name(t, self_obj), "TaskGroup") != 0) continue;
        if (asc_obj_getattr(t, self_obj, "_parent_task", parent) == 0) return 0;
    }
    return 0;
}

/* The innermost frames of a loop thread tell whether the loop is waiting in its selector. */
static aioscope_loop_state asc__loop_state(const aioscope_snap_thread *th) {
    for (size_t i = 0; i < th->nframes && i < 3; i++) {
        const char *f = th->frames[i].file, *fn = th->frames[i].function;
        size_t fl = strlen(f);
        if (fl >= 12 && strcmp(f + fl - 12, "selectors.py") == 0 && strstr(fn, "select")) return AIOSCOPE_LOOP_POLLING;
        if (strstr(fn, "_run_once") && i == 0) return AIOSCOPE_LOOP_POLLING; /* in the C select call */
    }
    return AIOSCOPE_LOOP_RUNNING;
}

typedef struct {
    aioscope_target *t;
    aioscope_snapshot *snap;
    uint64_t loops[ASC_MAX_LOOPS];
    uint64_t loop_tid[ASC_MAX_LOOPS];
    size_t nloops;
} asc__loops;

static long asc__thread_of_loop(asc__loops *ls, uint64_t loop) {
    for (size_t i = 0; i < ls->nloops; i++) {
        if (ls->loops[i] != loop) continue;
        for (size_t k = 0; k < ls->snap->nthreads; k++)
            if (ls->snap->threads[k].thread_id == ls->loop_tid[i]) return (long)k;
        return -1;
    }
    if (ls->nloops >= ASC_MAX_LOOPS) return -1;
    /* BaseEventLoop._thread_id: set by run_forever() to the ident of the thread running it. */
    uint64_t tid_obj;
    int64_t tid = 0;
    if (asc_obj_getattr(ls->t, loop, "_thread_id", &tid_obj) == 0 && asc_read_long(ls->t, tid_obj, &tid) < 0)
        tid = 0;
    ls->loops[ls->nloops] = loop;
    ls->loop_tid[ls->nloops++] = (uint64_t)tid;
    return asc__thread_of_loop(ls, loop);
}

static int asc__current_cb(void *ctx, uint64_t loop, uint64_t task) {
    asc__loops *ls = ctx;
    long ti = aioscope_snapshot_find_task(ls->snap, task);
    long th = asc__thread_of_loop(ls, loop);
    if (ti >= 0 && th >= 0) {
        ls->snap->tasks[ti].thread = th;
        ls->snap->threads[th].running_task = ti;
    }
    return 0;
}

/* Compare names so that digit runs compare as numbers ("Task-2" < "Task-10"). */
static int asc__cmp_natural(const char *a, const char *b) {
    while (*a && *b) {
        if (*a >= '0' && *a <= '9' && *b >= '0' && *b <= '9') {
            while (*a == '0') a++;
            while (*b == '0') b++;
            size_t na = 0, nb = 0;
            while (a[na] >= '0' && a[na] <= '9') na++;
            while (b[nb] >= '0' && b[nb] <= '9') nb++;
            if (na != nb) return na < nb ? -1 : 1; /* more digits: a larger number */
            int c = memcmp(a, b, na);
            if (c) return c;
            a += na, b += nb;
            continue;
        }
        if (*a != *b) return (unsigned char)*a - (unsigned char)*b;
        a++, b++;
    }
    return (unsigned char)*a - (unsigned char)*b;
}

static int asc__cmp_task(const void *pa, const void *pb) {
    const aioscope_snap_task *a = pa, *b = pb;
    int c = asc__cmp_natural(a->name, b->name);
    return c ? c : (a->id < b->id ? -1 : a->id > b->id);
}

int asc_walk_tasks(aioscope_target *t, aioscope_snapshot *snap) {
    const asc_layout *L = t->L;
    uint64_t interp, modules, mod, mdict, obj;
    int rc = asc_mem_read_objptr(&t->mem, t->runtime + (uint64_t)L->runtime_interpreters_head, &interp);
    if (rc < 0) return rc;
    if ((rc = asc_mem_read_objptr(&t->mem, interp + (uint64_t)L->interp_modules, &modules)) < 0) return rc;
    rc = asc_dict_get(t, modules, "_asyncio", &mod);
    if (rc == AIOSCOPE_ENOENT) return 0; /* asyncio never imported: no tasks */
    if (rc < 0) return rc;
    if ((rc = asc_mem_read_objptr(&t->mem, mod + (uint64_t)L->module_dict, &mdict)) < 0) return rc;
    asc__collect c = {0};
    c.t = t;
    c.snap = snap;
    if ((rc = asc_dict_get(t, mdict, "Task", &c.task_type)) < 0) return rc;
    t->task_type = c.task_type;
    if (t->minor <= 11) {
        if ((rc = asc_dict_get(t, mdict, "_all_tasks", &obj)) < 0) goto out;
        if ((rc = asc__collect_weakset(&c, obj)) < 0) goto out;
    } else {
        if ((rc = asc_dict_get(t, mdict, "_scheduled_tasks", &obj)) < 0) goto out;
        if ((rc = asc__collect_weakset(&c, obj)) < 0) goto out;
        if (asc_dict_get(t, mdict, "_eager_tasks", &obj) == 0) {
            c.strong = 1;
            if ((rc = asc_set_foreach(t, obj, asc__collect_cb, &c)) < 0) goto out;
        }
    }
    /* A task can be in both sets for an instant; keep one entry each. */
    if (c.n > 1) qsort(c.addrs, c.n, sizeof *c.addrs, asc__cmp_u64);
    size_t uniq = 0;
    for (size_t i = 0; i < c.n; i++)
        if (!uniq || c.addrs[uniq - 1] != c.addrs[i]) c.addrs[uniq++] = c.addrs[i];
    snap->tasks = calloc(uniq ? uniq : 1, sizeof *snap->tasks);
    uint64_t *waiters = calloc(uniq ? uniq : 1, sizeof *waiters);
    if (!snap->tasks || !waiters) {
        free(waiters);
        rc = AIOSCOPE_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < uniq; i++) {
        aioscope_snap_task *tk = &snap->tasks[snap->ntasks];
        rc = asc__read_task(t, snap, c.addrs[i], tk, &waiters[snap->ntasks]);
        if (rc == AIOSCOPE_ENOMEM) break;
        if (rc < 0) {
            /* This task changed under us (or is garbage): drop it, keep the others. */
            free(tk->coro);
            memset(tk, 0, sizeof *tk);
            snap->unreadable_tasks++;
            rc = 0;
            continue;
        }
        snap->ntasks++;
    }
    if (rc < 0) {
        free(waiters);
        goto out;
    }
    /* The await tree. */
    for (size_t i = 0; i < snap->ntasks && rc == 0; i++) {
        aioscope_snap_task *tk = &snap->tasks[i];
        uint64_t w = waiters[i];
        long child = w ? aioscope_snapshot_find_task(snap, w) : -1;
        if (child >= 0) {
            rc = asc__add_awaiter(&snap->tasks[child], tk->id);
        } else if (w && strcmp(asc_obj_type_name(t, w), "_GatheringFuture") == 0) {
            uint64_t list, kids[256];
            size_t nk = 0;
            if (asc_obj_getattr(t, w, "_children", &list) == 0 && asc_seq_items(t, list, kids, 256, &nk) == 0)
                for (size_t k = 0; k < nk && rc == 0; k++) {
                    long ki = aioscope_snapshot_find_task(snap, kids[k]);
                    if (ki >= 0) rc = asc__add_awaiter(&snap->tasks[ki], tk->id);
                }
        }
        uint64_t parent;
        if (rc == 0 && asc__taskgroup_parent(t, tk->id, &parent) == 0 && parent &&
            aioscope_snapshot_find_task(snap, parent) >= 0)
            rc = asc__add_awaiter(tk, parent);
    }
    free(waiters);
    if (rc < 0) goto out;
    /* Which task runs on which thread, and the state of each loop thread. */
    asc__loops *ls = calloc(1, sizeof *ls);
    if (!ls) {
        rc = AIOSCOPE_ENOMEM;
        goto out;
    }
    ls->t = t;
    ls->snap = snap;
    if (asc_dict_get(t, mdict, "_current_tasks", &obj) == 0) asc_dict_foreach(t, obj, asc__current_cb, ls);
    for (size_t i = 0; i < snap->ntasks; i++) {
        long th = snap->tasks[i].loop ? asc__thread_of_loop(ls, snap->tasks[i].loop) : -1;
        if (th >= 0 && !snap->threads[th].loop) {
            snap->threads[th].loop = snap->tasks[i].loop;
            snap->threads[th].loop_state =
                snap->threads[th].running_task >= 0 ? AIOSCOPE_LOOP_RUNNING : asc__loop_state(&snap->threads[th]);
        }
    }
    free(ls);
    /* Present tasks in name order (Task-2 before Task-10); the id index is rebuilt on lookup,
     * running_task indexes are remapped. */
    uint64_t *running = calloc(snap->nthreads ? snap->nthreads : 1, sizeof *running);
    if (!running) {
        rc = AIOSCOPE_ENOMEM;
        goto out;
    }
    for (size_t k = 0; k < snap->nthreads; k++)
        running[k] = snap->threads[k].running_task >= 0 ? snap->tasks[snap->threads[k].running_task].id : 0;
    if (snap->ntasks > 1) qsort(snap->tasks, snap->ntasks, sizeof *snap->tasks, asc__cmp_task);
    aioscope_snapshot_reindex(snap);
    for (size_t k = 0; k < snap->nthreads; k++)
        snap->threads[k].running_task = running[k] ? aioscope_snapshot_find_task(snap, running[k]) : -1;
    free(running);
out:
    free(c.addrs);
    return rc;
}
