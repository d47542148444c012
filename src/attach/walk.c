/* Snapshots of a target: the thread walk, and aioscope_target_snapshot which retries a walk
 * torn by the running target.
 *
 * _PyRuntime.interpreters.head -> PyInterpreterState.next (each interpreter)
 *   -> threads.head / tstate_head -> PyThreadState.next (each thread) -> its frame chain. */
#include "attach/walk.h"

#include <stdlib.h>
#include <string.h>

#include "aioscope/attach.h"
#include "aioscope/error.h"
#include "attach/cache.h"
#include "attach/pyobj.h"

/* A torn read (the target changed a structure while we read it) shows up as EFAULT/EBADDATA;
 * the walk is then retried from the top, a few times, before giving up. */
#define ASC_SNAPSHOT_ATTEMPTS 5

int asc_snap_frame_set(aioscope_snapshot *snap, aioscope_snap_frame *f, const asc_loc *loc) {
    struct asc_codeinfo *ci = (struct asc_codeinfo *)loc->ci;
    f->line = loc->line;
    if (ci && ci->snap_owner == snap) {
        f->file = ci->snap_file;
        f->function = ci->snap_name;
        return 0;
    }
    f->file = aioscope_snapshot_intern(snap, ci ? ci->file : "?");
    f->function = aioscope_snapshot_intern(snap, ci ? ci->name : "?");
    if (!f->file || !f->function) return AIOSCOPE_ENOMEM;
    if (ci) {
        ci->snap_owner = snap;
        ci->snap_file = f->file;
        ci->snap_name = f->function;
    }
    return 0;
}

/* The stack of one thread into th (innermost first). */
static int asc__thread_frames(aioscope_target *t, aioscope_snapshot *snap, uint64_t tstate,
                              aioscope_snap_thread *th) {
    uint64_t frame;
    int rc = asc_thread_top_frame(t, tstate, &frame);
    if (rc < 0) return rc;
    size_t cap = 0;
    for (size_t depth = 0; frame; depth++) {
        if (depth >= ASC_MAX_FRAMES) return AIOSCOPE_ELIMIT;
        asc_loc loc;
        uint64_t previous;
        int skip;
        if ((rc = asc_frame_decode(t, frame, &loc, &previous, &skip)) < 0) return rc;
        frame = previous;
        if (skip) continue;
        if (th->nframes == cap) {
            cap = cap ? cap * 2 : 16;
            aioscope_snap_frame *f = realloc(th->frames, cap * sizeof *f);
            if (!f) return AIOSCOPE_ENOMEM;
            th->frames = f;
        }
        if ((rc = asc_snap_frame_set(snap, &th->frames[th->nframes++], &loc)) < 0) return rc;
    }
    return 0;
}

#define ASC_THREAD_ATTEMPTS 3

/* The marker frame ending a stack that changed while it was read. */
static int asc__mark_cut(aioscope_snapshot *snap, aioscope_snap_thread *th) {
    aioscope_snap_frame *f = realloc(th->frames, (th->nframes + 1) * sizeof *f);
    if (!f) return AIOSCOPE_ENOMEM;
    th->frames = f;
    f[th->nframes].file = aioscope_snapshot_intern(snap, "?");
    f[th->nframes].function = aioscope_snapshot_intern(snap, "(stack changed while it was read)");
    f[th->nframes].line = 0;
    if (!f[th->nframes].file || !f[th->nframes].function) return AIOSCOPE_ENOMEM;
    th->nframes++;
    return 0;
}

int asc_walk_threads(aioscope_target *t, aioscope_snapshot *snap) {
    const asc_layout *L = t->L;
    uint64_t interp;
    int rc = asc_mem_read_u64(&t->mem, t->runtime + (uint64_t)L->runtime_interpreters_head, &interp);
    if (rc < 0) return rc;
    size_t cap = 0;
    for (int ni = 0; interp; ni++) {
        if (ni >= ASC_MAX_INTERPRETERS) return AIOSCOPE_ELIMIT;
        if (!asc_mem_plausible_obj(interp)) return AIOSCOPE_EBADDATA;
        uint64_t tstate;
        if ((rc = asc_mem_read_u64(&t->mem, interp + (uint64_t)L->interp_threads_head, &tstate)) < 0)
            return rc;
        for (int nt = 0; tstate; nt++) {
            if (nt >= ASC_MAX_THREADS) return AIOSCOPE_ELIMIT;
            if (!asc_mem_plausible_obj(tstate)) return AIOSCOPE_EBADDATA;
            if (snap->nthreads == cap) {
                cap = cap ? cap * 2 : 8;
                aioscope_snap_thread *th = realloc(snap->threads, cap * sizeof *th);
                if (!th) return AIOSCOPE_ENOMEM;
                snap->threads = th;
            }
            aioscope_snap_thread *th = &snap->threads[snap->nthreads++];
            memset(th, 0, sizeof *th);
            th->running_task = -1;
            if ((rc = asc_mem_read_u64(&t->mem, tstate + (uint64_t)L->tstate_thread_id, &th->thread_id)) < 0)
                return rc;
            if (L->tstate_native_thread_id >= 0 &&
                (rc = asc_mem_read_u64(&t->mem, tstate + (uint64_t)L->tstate_native_thread_id,
                                       &th->native_id)) < 0)
                return rc;
            /* A thread that keeps calling and returning tears its frame chain under us: retry
             * it alone a few times, then keep what was read and mark the stack as cut, rather
             * than failing the whole snapshot. */
            for (int attempt = 0;; attempt++) {
                th->nframes = 0;
                rc = asc__thread_frames(t, snap, tstate, th);
                if (rc == 0 || rc == AIOSCOPE_ENOMEM || rc == AIOSCOPE_EPERM || rc == AIOSCOPE_ESRCH)
                    break;
                if (attempt == ASC_THREAD_ATTEMPTS - 1) {
                    if ((rc = asc__mark_cut(snap, th)) < 0) return rc;
                    break;
                }
                asc_mem_cache_begin(&t->mem); /* re-read the pages that tore */
            }
            if (rc < 0) return rc;
            if ((rc = asc_mem_read_u64(&t->mem, tstate + (uint64_t)L->tstate_next, &tstate)) < 0)
                return rc;
        }
        if ((rc = asc_mem_read_u64(&t->mem, interp + (uint64_t)L->interp_next, &interp)) < 0) return rc;
    }
    return 0;
}

static int asc__retryable(int rc) {
    return rc == AIOSCOPE_EFAULT || rc == AIOSCOPE_EBADDATA || rc == AIOSCOPE_ELIMIT ||
           rc == AIOSCOPE_ENOENT;
}

int aioscope_target_snapshot(aioscope_target *t, aioscope_snapshot **out) {
    if (!t || !out) return AIOSCOPE_EINVAL;
    *out = NULL;
    int rc = AIOSCOPE_EAGAIN;
    t->mem.nreads = 0;
    for (int attempt = 0; attempt < ASC_SNAPSHOT_ATTEMPTS; attempt++) {
        /* An emptied page cache per attempt: a retry must not see the pages that tore. Without
         * memory for it the walk still works, one system call per read. */
        (void)asc_mem_cache_begin(&t->mem);
        aioscope_snapshot *snap = aioscope_snapshot_new();
        if (!snap) {
            rc = AIOSCOPE_ENOMEM;
            break;
        }
        snap->pid = t->pid;
        snap->py_version_hex = t->version;
        snap->frozen = t->frozen;
        asc_cache_reset(t);
        rc = asc_walk_threads(t, snap);
        if (rc == 0) rc = asc_walk_tasks(t, snap);
        if (rc == 0) {
            *out = snap;
            break;
        }
        aioscope_snapshot_free(snap);
        if (!asc__retryable(rc) || t->frozen) break; /* a frozen target will not change */
        rc = AIOSCOPE_EAGAIN;
    }
    asc_mem_cache_end(&t->mem);
    return rc;
}
