/* poll_stamp.c: the poll stamp of selector loops (`blocking-call`).
 *
 * asyncio's selector loops call self._selector.select(timeout) once per iteration, and only
 * there wait for I/O: the exact moment the loop "gets back to polling". The beat alone cannot
 * split periods on these loops: asyncio runs callbacks that were ready before the timers that
 * fell due, so two 60 ms steps separated by `await asyncio.sleep(0)` run before the late beat and
 * would read as one 120 ms block. The stamp is a callable put in front of the selector's select
 * (an instance attribute); it closes a blocked period when the loop comes back to poll and counts
 * polls, and the watchdog does the timing. It is kept to a vectorcall, two relaxed stores and an
 * increment, but an extra call layer per iteration still costs iteration-heavy programs several
 *  per cent, so a loop only gets it once its beat has been late by a quarter of the threshold (it runs
 * long steps; asc_stamp_with_gil): programs whose steps are all short never pay for it. */
#include "agent/blocking.h"

#include <stddef.h>

typedef struct {
    PyObject_HEAD
    PyObject *orig; /* owned: the selector's bound select method */
    int index;      /* the slot of the loop's current run */
    uint64_t gen;   /* that slot's gen at the start of the run */
    vectorcallfunc vectorcall;
} asc_poll_hook;


static PyObject *asc_poll_hook_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                          PyObject *kwnames) {
    asc_poll_hook *ph = (asc_poll_hook *)self;
    asc_loop_slot *s = &asc_lp.slots[ph->index];
    if (!s->used || s->gen != ph->gen || !s->running || !s->poll_hooked)
        return PyObject_Vectorcall(ph->orig, args, nargsf, kwnames); /* a run we do not watch */
    if (atomic_load_explicit(&s->block_flag, memory_order_relaxed)) asc_close_flagged_block(s);
    atomic_store_explicit(&s->in_poll, 1, memory_order_relaxed);
    PyObject *r = PyObject_Vectorcall(ph->orig, args, nargsf, kwnames);
    /* The count first, published by the release store: the watchdog must never see "not
     * polling" with the old count. */
    atomic_fetch_add_explicit(&s->polls, 1, memory_order_relaxed);
    atomic_store_explicit(&s->in_poll, 0, memory_order_release);
    return r;
}

static int asc_poll_hook_traverse(PyObject *self, visitproc visit, void *arg) {
    Py_VISIT(((asc_poll_hook *)self)->orig);
    return 0;
}

/* The selector holds the hook in its __dict__ and the hook holds the selector's bound method: a
 * cycle, so the hook takes part in garbage collection. */
static int asc_poll_hook_clear(PyObject *self) {
    Py_CLEAR(((asc_poll_hook *)self)->orig);
    return 0;
}

static void asc_poll_hook_dealloc(PyObject *self) {
    PyObject_GC_UnTrack(self);
    asc_poll_hook_clear(self);
    Py_TYPE(self)->tp_free(self);
}

PyTypeObject asc_poll_hook_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aioscope._agent.PollStamp",
    .tp_basicsize = sizeof(asc_poll_hook),
    .tp_dealloc = asc_poll_hook_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(asc_poll_hook, vectorcall),
    .tp_traverse = asc_poll_hook_traverse,
    .tp_clear = asc_poll_hook_clear,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "aioscope's stamp around an asyncio selector's select() (blocking detector).",
};

/* Re-aim the poll stamp already on an asyncio selector loop at the run in slot index, or (install)
 * put one there; returns 1 when the loop's polls are stamped. Only loops of asyncio's BaseSelectorEventLoop with
 * a selectors.BaseSelector: they poll through _selector.select every iteration. Anything unusual
 * (a select already replaced by someone else) leaves the loop to the beat alone. Runs Python code
 * (an ABC's isinstance): never with the watchdog mutex held. */
int asc_hook_poll(asc_loop_slot *s, int index, PyObject *loop, int install) {
    if (!asc_lp.selector_loop_type || !asc_lp.base_selector_type) return 0;
    int ok = PyObject_IsInstance(loop, asc_lp.selector_loop_type);
    PyObject *sel = ok > 0 ? PyObject_GetAttrString(loop, "_selector") : NULL;
    ok = sel ? PyObject_IsInstance(sel, asc_lp.base_selector_type) : 0;
    /* sel.select as the loop finds it: our stamp (an instance attribute, not a descriptor), or
     * the class's method bound. Never sel.__dict__: asking for it would turn the selector's
     * inline attribute values into a real dict (3.11+), and every attribute the loop reads
     * from it in every select() would then be a dict lookup. */
    PyObject *cur = ok > 0 ? PyObject_GetAttrString(sel, "select") : NULL;
    asc_poll_hook *ph = NULL;
    if (cur && Py_TYPE(cur) == &asc_poll_hook_type) {
        ph = (asc_poll_hook *)cur;
        cur = NULL;
    } else if (cur && install && PyMethod_Check(cur) && PyMethod_GET_SELF(cur) == sel) {
        ph = PyObject_GC_New(asc_poll_hook, &asc_poll_hook_type);
        if (ph) {
            ph->orig = cur;
            cur = NULL;
            ph->index = 0;
            ph->gen = 0; /* no slot has gen 0: a run that is not watched */
            ph->vectorcall = asc_poll_hook_vectorcall;
            PyObject_GC_Track((PyObject *)ph);
            if (PyObject_SetAttrString(sel, "select", (PyObject *)ph) < 0) Py_CLEAR(ph);
        }
    }
    Py_XDECREF(cur);
    int hooked = 0;
    if (ph) {
        ph->index = index;
        ph->gen = s->gen;
        hooked = 1;
        Py_DECREF(ph);
    }
    Py_XDECREF(sel);
    asc_drop_error("poll stamp");
    return hooked;
}

/* A stamped loop closes the period the watchdog flagged (with the GIL, in the loop thread): at its
 * next poll, or when it stops. */
void asc_close_flagged_block(asc_loop_slot *s) {
    int64_t mark = 0, since = 0;
    int valid = 0;
    pthread_mutex_lock(&asc_lp.mutex);
    if (atomic_load(&s->block_flag)) {
        valid = s->block_mark == atomic_load(&s->polls);
        mark = s->block_mark;
        since = s->block_since;
        atomic_store(&s->block_flag, 0);
    }
    pthread_mutex_unlock(&asc_lp.mutex);
    if (valid && asc_cfg.enabled) asc_report_block(s, mark, asc_monotonic_ns() - since);
}

/* Stamp the polls of a selector loop whose current period has run for a quarter of the
 * threshold (with the GIL, from the GIL worker, while the loop thread is paused inside its long
 * step). The period under way becomes the stamped loop's first one, timed from the stamp; from
 * the next poll on, periods are split exactly. */
void asc_stamp_with_gil(int i, int64_t due) {
    if (asc_cfg.dev_off & ASC_OFF_STAMP) return;
    PyGILState_STATE g = PyGILState_Ensure();
    asc_loop_slot *s = &asc_lp.slots[i];
    if (asc_lp.stop || !asc_cfg.enabled || !s->used || !s->running || s->poll_hooked ||
        atomic_load(&s->due_ns) != due) {
        if (!asc_lp.stop && s->used) s->stamp_tried = 0; /* the period ended: maybe next time */
        PyGILState_Release(g);
        return;
    }
    asc_saved_error saved;
    asc_save_error(&saved);
    int hooked = asc_hook_poll(s, i, s->loop, 1);
    asc_restore_error(&saved);
    if (hooked) {
        pthread_mutex_lock(&asc_lp.mutex);
        atomic_store(&s->in_poll, 0);
        atomic_store(&s->polls, 1);
        atomic_store(&s->block_flag, 0);
        s->wd_polls = 1;
        /* The period is timed from now, not from the late beat's due time: the loop may have
         * polled in between (before the stamp was there to count it), and two short steps
         * around that poll are not one block. A block that is already going on is timed from
         * here, a lower bound; the watchdog asks for the stamp early (a quarter of the
         * threshold) so that little of it is lost. */
        s->wd_since = asc_monotonic_ns();
        /* What the watchdog already read for this period now belongs to mark 1. */
        if (s->captured_due == due) s->captured_due = 1;
        if (s->probe_due == due) s->probe_due = 1;
        if (s->task_due == due) s->task_due = 1;
        s->poll_hooked = 1;
        /* Taking the GIL may have waited for the whole blocking call (a regex holding it): the
         * loop thread, paused right after it, polls as soon as we let go, before the watchdog's
         * next look. So a period already over the threshold is flagged now. */
        int64_t now = asc_monotonic_ns();
        if (now - due > asc_lp.threshold_ns) {
            s->block_mark = 1;
            s->block_since = due;
            atomic_store(&s->block_flag, 1);
            s->probe_due = 1;
        }
        pthread_mutex_unlock(&asc_lp.mutex);
        if (asc_lp.debug) fprintf(stderr, "aioscope: polls of loop %d stamped after %.3f s\n", i, (double)(now - due) / 1e9);
        /* The loop thread is inside the period's step: the running task is the one to name. */
        asc_save_error(&saved);
        asc_note_task(s, 1);
        asc_restore_error(&saved);
    }
    PyGILState_Release(g);
}
