/* The agent's control socket: where it is and what is said on it.
 *
 * A process running the agent listens on a Unix stream socket named <pid>.sock in a directory
 * private to its user: $XDG_RUNTIME_DIR/aioscope when XDG_RUNTIME_DIR names a directory of ours,
 * else /tmp/aioscope-<uid>. The directory must be a real directory (not a symlink) owned by the
 * effective uid with no access for group or others (mode 0700); the agent also checks the peer's
 * uid (SO_PEERCRED) and answers only its own user.
 *
 * The protocol is read-only: the client sends one request line and reads one answer until the
 * agent closes the connection. Requests:
 *   "snapshot\n"         the snapshot model (snapshot.h) in its compact JSON form (snapshot_wire.h),
 *                        plus an "agent" object: how it was read ("gil" or "memory"), collect_ms
 *                        and collect_cpu_ms, the blocking threshold, and per loop its heartbeat lag
 *   "snapshot json\n"    the same in aioscope_snapshot_to_json's form (for other tools)
 *   "snapshot binary\n"  the same content in the binary form (aioscope_snapshot_to_binary in
 *                        snapshot_wire.h; src/core/snapshot_wire.c describes the layout): it starts
 *                        with AIOSCOPE_WIRE_BINARY_MAGIC, ends with the "agent" object as its last
 *                        field, and is not followed by a newline. This is what the CLI asks for.
 *   "ping\n"             {"pid": N, "python": "3.12.1", "agent": "0.1.0"}
 * The JSON answers end with a newline. An error, to any request, is one JSON object
 * {"error": "ENAME", "message": "..."} (a binary answer is told from it by its first bytes).
 * Nothing in the protocol changes the program. */
#ifndef AIOSCOPE_CONTROL_H
#define AIOSCOPE_CONTROL_H

#include <stddef.h>

/* sun_path is 108 bytes on Linux: a longer socket path cannot be bound. */
#define AIOSCOPE_CONTROL_PATH_MAX 108

/* The control directory, preferring $XDG_RUNTIME_DIR (xdg=1) or the /tmp fallback (xdg=0).
 * With create, a missing directory is made with mode 0700. Returns 0, AIOSCOPE_ENOENT (xdg=1 and
 * no usable XDG_RUNTIME_DIR, or missing and not created), AIOSCOPE_EPERM (exists but is not a
 * private directory of ours: a symlink, another owner, group/other access) or AIOSCOPE_EINVAL
 * (path too long). */
int aioscope_control_dir(int xdg, int create, char *out, size_t cap);

/* The socket path of pid in the directory chosen as above. */
int aioscope_control_path(int xdg, int create, int pid, char *out, size_t cap);

#endif
