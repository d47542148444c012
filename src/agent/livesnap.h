/* livesnap.h: the agent's in-process snapshot (livesnap.c), used by control.c and the module's
 * snapshot() / print_tasks(). Needs the GIL. */
#ifndef AIOSCOPE_AGENT_LIVESNAP_H
#define AIOSCOPE_AGENT_LIVESNAP_H

#include "aioscope/snapshot.h"

/* Take a snapshot of every thread and task of this process, with the GIL held. Returns 0 (the
 * caller frees *out with aioscope_snapshot_free) or -1 with a Python exception set. */
int asc_live_collect(aioscope_snapshot **out);

#endif
