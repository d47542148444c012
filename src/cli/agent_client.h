/* agent_client.h: asking a program's in-process agent for a snapshot over its control socket
 * (include/aioscope/control.h), for `aioscope ps|pstree|dump|top PID`. */
#ifndef ASC_CLI_AGENT_CLIENT_H
#define ASC_CLI_AGENT_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "aioscope/json.h"
#include "aioscope/snapshot.h"

/* What the agent says about how it answered (the "agent" object of its reply). */
typedef struct {
    char read_with[16];       /* "gil": consistent read; "memory": the GIL was busy */
    double collect_ms;        /* how long the program was held up (with the GIL) or read */
    double block_threshold_s; /* the agent's blocking threshold */
    struct {
        uint64_t thread_id;
        double lag_s;         /* how late the loop's heartbeat was when the answer was made */
    } loops[64];              /* the agent watches at most 64 loops */
    int nloops;
} asc_agent_info;

/* Send one request line to pid's agent and read the whole answer (NUL-terminated; caller frees
 * *text). Returns 0, AIOSCOPE_ENOAGENT (no socket, or nobody listening on it), AIOSCOPE_EPERM
 * (we may not connect), AIOSCOPE_EIO, AIOSCOPE_EPROTO (answer too large or cut), AIOSCOPE_ENOMEM. */
int asc_agent_request(int pid, const char *request, char **text, size_t *len);

/* The snapshot from pid's agent. Returns 0 (caller frees *out with aioscope_snapshot_free),
 * the codes of asc_agent_request, AIOSCOPE_EPERM when the agent refused us, or AIOSCOPE_EPROTO
 * for an answer that is not a snapshot. info may be NULL. */
int asc_agent_snapshot(int pid, aioscope_snapshot **out, asc_agent_info *info);

#endif
