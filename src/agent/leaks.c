/* leaks.c: being written (see agent.h for what this unit does). */
#include "agent/agent.h"
int asc_leaks_init(PyObject *module) { return 0; }
