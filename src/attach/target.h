/* The attach library's view of a target process, shared by its walkers (internal).
 *
 * A target bundles the memory backend, the layout table of the target's CPython version, the
 * addresses that anchor every walk (_PyRuntime, the built-in type objects used to validate each
 * object we read) and a per-walk cache of code objects and type names. */
#ifndef ASC_ATTACH_TARGET_H
#define ASC_ATTACH_TARGET_H

#include <stdint.h>

#include "aioscope/attach.h"
#include "attach/layouts.h"
#include "attach/mem.h"

/* Built-in types whose addresses validate objects ("is this really a code object?"). A zero
 * address means unknown: the check is then skipped and only plausibility checks remain. */
typedef struct {
    uint64_t code, frame, coro, gen, unicode, long_, dict, set, weakref, list, tuple, bytes, method, type;
} asc_types;

/* Bounds on every walk. A live process may be in the middle of changing a structure, and a
 * garbage pointer may make a list cyclic; these caps turn that into AIOSCOPE_ELIMIT. */
#define ASC_MAX_FRAMES 1024        /* Python's default recursion limit is 1000 */
#define ASC_MAX_THREADS 4096
#define ASC_MAX_INTERPRETERS 64
#define ASC_MAX_CORO_CHAIN 256
#define ASC_MAX_STR 4096           /* longer strings are cut: names and paths, not data */
#define ASC_MAX_LINETABLE (1 << 20)
#define ASC_MAX_DICT_ENTRIES (1 << 20)
#define ASC_MAX_SET_SLOTS (1u << 26) /* 64 M slots: 1 GiB of set table, far beyond real use */

typedef struct asc_codeinfo asc_codeinfo;
typedef struct asc_cache asc_cache;

struct aioscope_target {
    asc_mem mem;
    const asc_layout *L;
    uint32_t version;   /* PY_VERSION_HEX */
    uint32_t minor;     /* 8 .. 13 */
    int pid;
    int self;           /* reading our own process (no freeze) */
    int frozen;
    uint64_t runtime;   /* &_PyRuntime */
    asc_types types;
    char binary[512];   /* where the interpreter was found */
    asc_cache *cache;   /* owned; code objects and type names seen during the current walk */
    /* asyncio, found when a snapshot is taken */
    uint64_t task_type, future_type;
};

/* A target read through a caller-provided backend (the unit tests' fake memory, the fuzzer):
 * the given version's layout, _PyRuntime at runtime, type addresses from *types (NULL: none).
 * Behaves as a self target for caching (reset before every stack read). */
int asc_target_open_mem(asc_read_fn read, void *ctx, uint32_t py_version_hex, uint64_t runtime,
                        const asc_types *types, aioscope_target **out);

/* Walk caches are only valid while the target's objects cannot be freed and reused: during one
 * snapshot, or for a frozen target. Self targets reset the cache before every stack read. */
void asc_cache_reset(aioscope_target *t);

#endif
