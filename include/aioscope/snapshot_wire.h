/* The compact JSON form of a snapshot, as the agent sends it on its control socket
 * (src/core/snapshot_wire.c describes the layout). Positional and with a string table, it is
 * about five times smaller than aioscope_snapshot_to_json and quicker to write and to read,
 * which is what lets `aioscope ps` answer for 100 000 tasks. The snapshot model itself lives in
 * the attach library (src/attach/snapshot.c): link both. */
#ifndef AIOSCOPE_SNAPSHOT_WIRE_H
#define AIOSCOPE_SNAPSHOT_WIRE_H

#include <stddef.h>

#include "aioscope/json.h"
#include "aioscope/snapshot.h"

/* Append the snapshot's compact form (one JSON object) to b. */
void aioscope_snapshot_to_wire(const aioscope_snapshot *s, aioscope_buf *b);

/* Read a compact form back from its text (text[0..len), not necessarily NUL-terminated). When
 * agent_off is given, the span of the "agent" member's value (control.h) is returned there
 * ({0, 0} when absent), for the caller to parse. Returns 0 (caller frees *out with
 * aioscope_snapshot_free), AIOSCOPE_EPARSE (not this format, or malformed) or AIOSCOPE_ENOMEM. */
int aioscope_snapshot_from_wire(const char *text, size_t len, aioscope_snapshot **out, size_t *agent_off,
                                size_t *agent_len);

#endif
