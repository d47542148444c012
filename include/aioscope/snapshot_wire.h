/* The forms of a snapshot that the agent sends on its control socket (src/core/snapshot_wire.c
 * describes both layouts).
 *
 * The compact JSON form ("snapshot" request) is positional, with a string table: about five
 * times smaller than aioscope_snapshot_to_json, and still readable with any JSON tool. The binary
 * form ("snapshot binary", what the CLI asks for) has the same content in fixed-width fields, so
 * that neither side converts numbers to or from text: it is what lets `aioscope ps` answer for
 * 100 000 tasks within its budget. The snapshot model itself lives in the attach library
 * (src/attach/snapshot.c): link both. */
#ifndef AIOSCOPE_SNAPSHOT_WIRE_H
#define AIOSCOPE_SNAPSHOT_WIRE_H

#include <stddef.h>

#include "aioscope/json.h"
#include "aioscope/snapshot.h"

/* Append the snapshot's compact JSON form (one JSON object) to b. */
void aioscope_snapshot_to_wire(const aioscope_snapshot *s, aioscope_buf *b);

/* The first bytes of the binary form: an answer starting with them is a snapshot, one starting
 * with '{' an error (control.h). */
#define AIOSCOPE_WIRE_BINARY_MAGIC "ASCWIRE2"

/* Append the snapshot's binary form to b, ending with agent_json (the agent's own section, a
 * JSON object; NULL for none). b->oom is set when memory ran out. */
void aioscope_snapshot_to_binary(const aioscope_snapshot *s, const char *agent_json, aioscope_buf *b);

/* Read a binary form back from data[0..len) (untrusted: every count and index is checked). When
 * agent_off is given, the span of the agent section is returned there ({0, 0} when empty), for
 * the caller to parse. Returns 0 (caller frees *out with aioscope_snapshot_free),
 * AIOSCOPE_EPARSE (not this format, or malformed) or AIOSCOPE_ENOMEM. */
int aioscope_snapshot_from_binary(const void *data, size_t len, aioscope_snapshot **out, size_t *agent_off,
                                  size_t *agent_len);

#endif
