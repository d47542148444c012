/* livethreads.c: the threads of the agent's in-process snapshot (see livesnap.c): every thread's
 * Python stack, its OS thread id, which loop it runs, whether that loop is polling or running,
 * and which task it runs now. With the GIL held, like everything in livesnap.c. */
#include "agent/agent.h"

#include <stdlib.h>
#include <string.h>

#include "agent/livesnap.h"

#if PY_VERSION_HEX < 0x030B0000
#include <frameobject.h>
#endif

/* Thread stacks deeper than this keep their innermost frames. */
#define ASC_MAX_THREAD_FRAMES 256

static int asc_ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}



int asc_live_read_threads(aioscope_snapshot *snap) {
    PyObject *frames = _PyThread_CurrentFrames(); /* {thread id: innermost frame} */
    if (!frames) return -1;
    Py_ssize_t n = PyDict_GET_SIZE(frames);
    snap->threads = calloc(n ? (size_t)n : 1, sizeof *snap->threads);
    if (!snap->threads) {
        Py_DECREF(frames);
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *frame;
    while (PyDict_Next(frames, &pos, &key, &frame)) {
        aioscope_snap_thread *th = &snap->threads[snap->nthreads++];
        th->thread_id = PyLong_AsUnsignedLongLong(key);
        th->running_task = -1;
        aioscope_snap_frame tmp[ASC_MAX_THREAD_FRAMES];
        size_t k = 0;
        PyObject *f = frame;
        Py_INCREF(f);
        while (f && k < ASC_MAX_THREAD_FRAMES) {
            asc_live_frame_info(snap, f, &tmp[k++]);
            PyObject *back = (PyObject *)PyFrame_GetBack((PyFrameObject *)f);
            Py_DECREF(f);
            f = back;
        }
        Py_XDECREF(f);
        th->frames = malloc((k ? k : 1) * sizeof *th->frames);
        if (th->frames) {
            memcpy(th->frames, tmp, k * sizeof *th->frames);
            th->nframes = k;
        }
    }
    Py_DECREF(frames);
    PyErr_Clear();
    /* The OS thread ids: threading keeps them on its Thread objects (3.8+). */
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *active = threading ? PyObject_GetAttrString(threading, "_active") : NULL;
    if (active && PyDict_Check(active)) {
        for (size_t i = 0; i < snap->nthreads; i++) {
            PyObject *k = PyLong_FromUnsignedLongLong(snap->threads[i].thread_id);
            PyObject *t = k ? PyDict_GetItemWithError(active, k) : NULL; /* borrowed */
            PyObject *nid = t ? PyObject_GetAttrString(t, "native_id") : NULL;
            if (nid && PyLong_Check(nid)) snap->threads[i].native_id = PyLong_AsUnsignedLongLong(nid);
            Py_XDECREF(nid);
            Py_XDECREF(k);
            PyErr_Clear();
        }
    }
    Py_XDECREF(active);
    Py_XDECREF(threading);
    PyErr_Clear();
    return 0;
}

static long asc_thread_index(aioscope_snapshot *snap, uint64_t thread_id) {
    for (size_t i = 0; i < snap->nthreads; i++)
        if (snap->threads[i].thread_id == thread_id) return (long)i;
    return -1;
}

/* Which thread runs each loop (loop._thread_id, set while it runs), which task it is running now
 * (_current_tasks), and whether it is polling (its innermost frame is the selector's select). */
void asc_live_place_loops(aioscope_snapshot *snap, PyObject *current_tasks) {
    PyObject *seen = PyDict_New();
    if (!seen) {
        PyErr_Clear();
        return;
    }
    for (size_t i = 0; i < snap->ntasks; i++) {
        aioscope_snap_task *t = &snap->tasks[i];
        if (!t->loop) continue;
        /* The loop object itself: the task holds it, and the GIL keeps both alive here. */
        PyObject *loop = (PyObject *)(uintptr_t)t->loop;
        if (!loop) continue;
        PyObject *idx = PyDict_GetItemWithError(seen, loop);
        long th = -1;
        if (idx) {
            th = PyLong_AsLong(idx);
        } else {
            PyObject *tid = PyObject_GetAttrString(loop, "_thread_id"); /* BaseEventLoop, while running */
            if (!tid) PyErr_Clear();
            if (tid && PyLong_Check(tid)) th = asc_thread_index(snap, PyLong_AsUnsignedLongLong(tid));
            Py_XDECREF(tid);
            PyObject *v = PyLong_FromLong(th);
            if (v) PyDict_SetItem(seen, loop, v);
            Py_XDECREF(v);
            if (th >= 0) {
                aioscope_snap_thread *thr = &snap->threads[th];
                thr->loop = t->loop;
                PyObject *cur = current_tasks && PyDict_Check(current_tasks)
                                    ? PyDict_GetItemWithError(current_tasks, loop)
                                    : NULL;
                if (cur) thr->running_task = aioscope_snapshot_find_task(snap, (uint64_t)(uintptr_t)cur);
                /* "select" or, with 3.11's qualified names, "EpollSelector.select". */
                int polling = thr->nframes > 0 && asc_ends_with(thr->frames[0].function, "select") &&
                              asc_ends_with(thr->frames[0].file, "selectors.py");
                thr->loop_state = polling ? AIOSCOPE_LOOP_POLLING : AIOSCOPE_LOOP_RUNNING;
            }
        }
        PyErr_Clear();
        t->thread = (th >= 0 && snap->threads[th].running_task == (long)i) ? th : -1;
    }
    Py_DECREF(seen);
    PyErr_Clear();
}

