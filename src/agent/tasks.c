/* tasks.c: being written (see agent.h for what this unit does). */
#include "agent/agent.h"
int asc_tasks_init(PyObject *module) { return 0; }
int asc_tasks_on_loop_start(PyObject *loop) { return 0; }
int asc_tasks_on_exception_context(PyObject *loop, PyObject *context) { return 0; }
int asc_tasks_report_pending(PyObject *loop) { return 0; }
