/* Reading a CPython interpreter's state out of process memory, without its cooperation.
 *
 * A target is either another process (aioscope_target_open_pid: `aioscope ps|pstree|dump`
 * without an agent, or with --attach) or the current process (aioscope_target_open_self: the
 * agent's watchdog thread reads the event-loop thread's Python stack while that thread holds
 * the GIL). Both read memory through process_vm_readv, so a dangling or torn pointer yields a
 * negative AIOSCOPE_E* code, never a crash; every walk is bounded. Supported interpreters:
 * CPython 3.8 to 3.13 on x86-64 Linux. This header does not need Python.h.
 *
 * A target keeps per-walk caches: use it from one thread at a time (one target per thread, or
 * a lock). Documented in docs/attach.md. */
#ifndef AIOSCOPE_ATTACH_H
#define AIOSCOPE_ATTACH_H

#include <stddef.h>
#include <stdint.h>

#include "aioscope/snapshot.h"

typedef struct aioscope_target aioscope_target;

/* Open the current process for GIL-free reads. py_version_hex is PY_VERSION_HEX of the running
 * interpreter, pyruntime_addr the address of _PyRuntime (the agent finds it with dlsym).
 * Returns 0, AIOSCOPE_EUNSUPPORTED, AIOSCOPE_EINVAL or AIOSCOPE_ENOMEM. */
int aioscope_target_open_self(uint32_t py_version_hex, uint64_t pyruntime_addr, aioscope_target **out);

/* Open another process: finds its interpreter (libpython or a static executable), its version
 * and _PyRuntime. Returns 0 or AIOSCOPE_ESRCH (no such process), AIOSCOPE_EPERM (ptrace
 * permission missing), AIOSCOPE_ENOTPY (no CPython in it), AIOSCOPE_EUNSUPPORTED (a CPython this
 * build cannot read), AIOSCOPE_ENOMEM. */
int aioscope_target_open_pid(int pid, aioscope_target **out);

void aioscope_target_close(aioscope_target *t); /* accepts NULL; resumes a frozen target */

/* PY_VERSION_HEX of the target's interpreter. */
uint32_t aioscope_target_version(const aioscope_target *t);
/* The interpreter binary the target was found in (libpython .so or the executable). */
const char *aioscope_target_binary(const aioscope_target *t);

/* Stop the target (SIGSTOP, waiting until every thread has stopped) for a consistent read, and
 * resume it (SIGCONT). aioscope_target_thaw is idempotent and safe to call from a signal handler
 * path through aioscope_target_thaw_pid. Not available on self targets (AIOSCOPE_EINVAL). */
int aioscope_target_freeze(aioscope_target *t);
int aioscope_target_thaw(aioscope_target *t);
/* Async-signal-safe resume of a pid frozen by aioscope_target_freeze (for SIGINT handlers). */
void aioscope_target_thaw_pid(int pid);

typedef struct {
    char file[512];
    char function[256];
    int line; /* 0 when unknown */
} aioscope_frame;

/* The Python stack of the thread whose PyThreadState is at tstate_addr, innermost first, at most
 * max frames; bounded, never crashes on torn/garbage memory (returns a negative code instead).
 * On success *n is the number of frames written (a stack deeper than max is cut, not an error). */
int aioscope_thread_stack(aioscope_target *t, uint64_t tstate_addr, aioscope_frame *out, size_t max,
                          size_t *n);

/* Take a snapshot of every thread's stack and every asyncio task (see snapshot.h); the caller
 * frees *out with aioscope_snapshot_free. Torn reads are retried a few times; the result then
 * holds whatever was consistent (tasks that could not be read are counted in
 * snapshot->unreadable_tasks). */
int aioscope_target_snapshot(aioscope_target *t, aioscope_snapshot **out);

/* Statistics of the last snapshot: system calls issued (for benchmarks). */
uint64_t aioscope_target_reads(const aioscope_target *t);

#endif
