/* frames.c: being written (see agent.h for what this unit does). */
#include "agent/agent.h"
int asc_frames_init(PyObject *module) { return 0; }
int asc_is_user_file(PyObject *filename) { return 1; }
int asc_fill_from_current_stack(aioscope_finding *f) { return 0; }
int asc_fill_from_traceback(aioscope_finding *f, PyObject *tb) { return 0; }
int asc_fill_from_coro(aioscope_finding *f, PyObject *coro) { return 0; }
void asc_capture_creation_site(asc_codeloc *out) { out->code = NULL; out->lasti = 0; }
void asc_codeloc_clear(asc_codeloc *loc) { Py_CLEAR(loc->code); }
int asc_codeloc_to_location(const asc_codeloc *loc, aioscope_location *out) { return 0; }
