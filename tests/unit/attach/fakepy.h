/* A fake CPython heap for the attach unit tests.
 *
 * Objects are laid out with the generated layout table of the chosen version in ordinary heap
 * blocks, each registered as a region. The fake memory backend (fp_read) serves reads only from
 * registered regions, so a test can cut a region short (truncated structures), point into
 * nowhere, or scribble over an object (corrupt structures), and the walkers must answer with an
 * error code. The same objects are also readable through the self backend (process_vm_readv on
 * our own pid), which is how the agent uses aioscope_thread_stack. */
#ifndef ASC_TEST_FAKEPY_H
#define ASC_TEST_FAKEPY_H

#include <stddef.h>
#include <stdint.h>

#include "attach/layouts.h"
#include "attach/target.h"

#define FP_MAX_REGIONS 4096

typedef struct {
    uint32_t version;
    int minor;
    const asc_layout *L;
    struct {
        uint8_t *base;
        size_t len;
    } regions[FP_MAX_REGIONS];
    size_t nregions;
    asc_types types;
    /* Fake type objects (their addresses are what asc_types holds). */
    uint8_t *type_objs[16];
    uint64_t reads;
    /* Arena mode (fp_init_arena): objects are bump-allocated in one caller-provided block, so
     * the whole heap can be saved as a relocation-free image (the fuzzer's seed inputs). */
    uint8_t *arena;
    size_t arena_cap, arena_used;
} fakepy;

/* The fuzzer's input format: this header, then the bytes of memory mapped at FP_IMAGE_BASE. */
#define FP_IMAGE_BASE 0x10000000ULL
typedef struct {
    uint32_t version;
    uint32_t reserved;
    uint64_t runtime; /* _PyRuntime */
    uint64_t tstate;  /* a thread state for aioscope_thread_stack */
    asc_types types;
} fp_image_header;

typedef struct {
    const uint8_t *data;
    size_t len;
} fp_image;

/* The asc_read_fn of an image mapped at FP_IMAGE_BASE (ctx: an fp_image). */
int fp_image_read(void *ctx, uint64_t addr, void *buf, size_t len);
/* Like fp_init, allocating from mem[0..cap) (which must be mapped at the address objects
 * should have). */
void fp_init_arena(fakepy *fp, uint32_t version, void *mem, size_t cap);

void fp_init(fakepy *fp, uint32_t version);
void fp_free(fakepy *fp);
/* A zeroed block of len bytes, registered; the address as the target sees it. */
uint64_t fp_alloc(fakepy *fp, size_t len);
/* Shrink a region (truncation): reads past base+len fail. */
void fp_truncate(fakepy *fp, uint64_t addr, size_t len);
/* Store a word / a 32-bit value / a byte at addr + off. */
void fp_put64(uint64_t addr, int32_t off, uint64_t v);
void fp_put32(uint64_t addr, int32_t off, uint32_t v);
void fp_put8(uint64_t addr, int32_t off, uint8_t v);
/* The asc_read_fn of the fake backend (ctx: the fakepy). */
int fp_read(void *ctx, uint64_t addr, void *buf, size_t len);

uint64_t fp_str(fakepy *fp, const char *s);
uint64_t fp_bytes(fakepy *fp, const void *data, size_t len);
uint64_t fp_long(fakepy *fp, int64_t v);
/* A code object whose line table maps byte offsets [0,4) to line first, [4,10) to first+2 and
 * [10,20) to first+5, in the version's line-table format. */
uint64_t fp_code(fakepy *fp, const char *file, const char *name, int first);
/* A frame running code at byte offset off, called by previous (0: none). */
uint64_t fp_frame(fakepy *fp, uint64_t code, int off, uint64_t previous);
/* A thread state whose innermost frame is frame. */
uint64_t fp_tstate(fakepy *fp, uint64_t frame);
/* A dict {keys[i]: vals[i]} with str keys (a combined table). */
uint64_t fp_dict(fakepy *fp, const char *const *keys, const uint64_t *vals, size_t n);
/* A set holding items (slot i = items[i]), table of `slots` slots (a power of two >= n). */
uint64_t fp_set(fakepy *fp, const uint64_t *items, size_t n, size_t slots);

/* A type object named name (tp_name), with instances' __dict__ at dictoffset (0: none). */
uint64_t fp_type(fakepy *fp, const char *name, int64_t dictoffset);
/* An instance of type with a __dict__ (at the type's dictoffset 16) holding dict. */
uint64_t fp_instance(fakepy *fp, uint64_t type, uint64_t dict);
uint64_t fp_weakref(fakepy *fp, uint64_t obj);
/* A coroutine suspended at byte offset off of code, awaiting `awaited` (0: nothing). */
uint64_t fp_coro(fakepy *fp, uint64_t code, int off, uint64_t awaited);
/* A task of task_type named name running coro, waiting on fut_waiter (0: none). */
uint64_t fp_task(fakepy *fp, uint64_t task_type, const char *name, uint64_t coro, uint64_t fut_waiter);
/* A whole interpreter: _PyRuntime -> one interpreter -> one thread (stack: thread_frame), and
 * sys.modules['_asyncio'] with `Task` = task_type and the all-tasks WeakSet holding tasks.
 * Returns the _PyRuntime address; *set_out is the set inside the WeakSet. */
uint64_t fp_runtime(fakepy *fp, uint64_t thread_frame, uint64_t task_type, const uint64_t *tasks,
                    size_t ntasks, uint64_t *set_out);

#endif
