/* coros.c: being written (see agent.h for what this unit does). */
#include "agent/agent.h"
int asc_coros_init(PyObject *module) { return 0; }
