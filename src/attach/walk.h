/* Filling a snapshot from target memory: threads (walk.c) and asyncio tasks (tasks.c)
 * (internal). */
#ifndef ASC_ATTACH_WALK_H
#define ASC_ATTACH_WALK_H

#include "aioscope/snapshot.h"
#include "attach/frames.h"
#include "attach/target.h"

/* Append a snapshot frame for loc (strings interned into snap). */
int asc_snap_frame_set(aioscope_snapshot *snap, aioscope_snap_frame *f, const asc_loc *loc);
/* Every thread of every interpreter with its stack. */
int asc_walk_threads(aioscope_target *t, aioscope_snapshot *snap);
/* Every asyncio task, its coroutine chain, what it awaits and who awaits it; links tasks to the
 * threads running them (asc_walk_threads first). */
int asc_walk_tasks(aioscope_target *t, aioscope_snapshot *snap);

#endif
