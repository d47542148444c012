/* Python frames and coroutines in target memory: where each frame is (file, function, line)
 * and what a suspended coroutine awaits (internal). */
#ifndef ASC_ATTACH_FRAMES_H
#define ASC_ATTACH_FRAMES_H

#include <stdint.h>

#include "attach/cache.h"
#include "attach/target.h"

/* A frame's location. ci is borrowed from the walk cache (valid until the next cache reset). */
typedef struct {
    const struct asc_codeinfo *ci;
    int line; /* 0 when unknown */
} asc_loc;

/* Decode (and cache) the code object at addr. */
int asc_code_info(aioscope_target *t, uint64_t code, const struct asc_codeinfo **out);
/* The line of the instruction at byte offset addrq of the code, or 0 when it has none.
 * minor selects the line-table format (8-9 lnotab, 10 PEP 626, 11+ PEP 657). */
int asc_code_addr2line(const struct asc_codeinfo *ci, int minor, int64_t addrq);

/* The address of the innermost frame of a thread (PyFrameObject before 3.11,
 * _PyInterpreterFrame from 3.11), 0 when it runs no Python code. */
int asc_thread_top_frame(aioscope_target *t, uint64_t tstate, uint64_t *frame);
/* Decode one thread frame; *previous is the next-outer frame (0 at the bottom). *skip is set
 * for 3.12+ frames owned by the C stack (entry shims), which have no Python location. */
int asc_frame_decode(aioscope_target *t, uint64_t frame, asc_loc *loc, uint64_t *previous, int *skip);

/* A coroutine or generator object: where it is suspended and what it awaits (*awaited: the
 * object on top of its value stack while it is suspended in `await`/`yield from`, else 0).
 * AIOSCOPE_ENOENT when it has no frame any more (finished). */
int asc_coro_decode(aioscope_target *t, uint64_t coro, asc_loc *loc, uint64_t *awaited);

#endif
