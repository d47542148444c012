/* livesnap.h: the agent's in-process snapshot (livesnap.c), used by control.c and the module's
 * snapshot() / print_tasks(). Needs the GIL. */
#ifndef AIOSCOPE_AGENT_LIVESNAP_H
#define AIOSCOPE_AGENT_LIVESNAP_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "aioscope/snapshot.h"

/* Take a snapshot of every thread and task of this process, with the GIL held. Returns 0 (the
 * caller frees *out with aioscope_snapshot_free) or -1 with a Python exception set. */
int asc_live_collect(aioscope_snapshot **out);

/* Shared by livesnap.c and livethreads.c. */
/* UTF-8 of a str, interned into the snapshot ("dflt" when it is not a str). */
const char *asc_live_str(aioscope_snapshot *snap, PyObject *s, const char *dflt);
/* file / function / line of a frame object. */
void asc_live_frame_info(aioscope_snapshot *snap, PyObject *frame, aioscope_snap_frame *out);
/* Every thread with a Python frame, into snap->threads; 0 or -1 with an exception. */
int asc_live_read_threads(aioscope_snapshot *snap);
/* After the tasks are in: which thread runs each task's loop, its state, its running task
 * (current_tasks: asyncio's {loop: task} dict, borrowed, may be NULL). */
void asc_live_place_loops(aioscope_snapshot *snap, PyObject *current_tasks);

#endif
