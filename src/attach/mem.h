/* Reading memory that is not ours to trust.
 *
 * Every walker in src/attach reads through an asc_mem: a read function plus its context. Three
 * backends exist: another process (process_vm_readv on its pid), our own process (the same call on
 * our own pid, so that a torn or dangling pointer yields an error instead of SIGSEGV — the agent's
 * watchdog reads the event-loop thread's stack while that thread runs), and, in the unit tests,
 * a fake in-memory image. Whatever the backend, a read either fills the whole buffer and returns
 * 0, or returns a negative AIOSCOPE_E* code; walkers never dereference target addresses. */
#ifndef ASC_ATTACH_MEM_H
#define ASC_ATTACH_MEM_H

#include <stddef.h>
#include <stdint.h>

/* Fill buf[0..len) from addr, all or nothing; 0 or a negative AIOSCOPE_E* code. */
typedef int (*asc_read_fn)(void *ctx, uint64_t addr, void *buf, size_t len);

/* A page cache for one walk: a snapshot of 100 000 tasks issues millions of small reads of
 * objects that sit next to each other, so reading whole pages once cuts the system calls by an
 * order of magnitude. Off by default: the agent's stack reads must see fresh memory. */
#define ASC_PAGE_SIZE 4096

typedef struct asc_page asc_page;

typedef struct asc_mem {
    asc_read_fn read;
    void *ctx;       /* borrowed; the backend's state */
    int pid;         /* the process read by the pid backends; 0 for the fake one */
    uint64_t nreads; /* reads issued to the backend, for benchmarks and tests */
    asc_page **cache; /* owned; NULL when caching is off */
    size_t cache_slots;
} asc_mem;

/* The process_vm_readv backend on pid (which may be our own pid). Never fails by itself: errors
 * (no such process, no permission) surface on the first read. */
void asc_mem_init_pid(asc_mem *m, int pid);

/* A caller-provided backend (the unit tests' fake memory). */
void asc_mem_init_custom(asc_mem *m, asc_read_fn read, void *ctx);

/* Turn the page cache on, or empty it when it is on; turn it off (releasing its memory).
 * Returns 0 or AIOSCOPE_ENOMEM (caching stays off). */
int asc_mem_cache_begin(asc_mem *m);
void asc_mem_cache_end(asc_mem *m);

/* Addresses that cannot hold a user-space object on x86-64 / aarch64 Linux (NULL page, kernel
 * half, misaligned object pointers) are refused before any system call. */
int asc_mem_read(asc_mem *m, uint64_t addr, void *buf, size_t len);
int asc_mem_read_u64(asc_mem *m, uint64_t addr, uint64_t *out);
int asc_mem_read_i32(asc_mem *m, uint64_t addr, int32_t *out);
/* A pointer to a Python object: must be non-NULL, 8-byte aligned and in user space. */
int asc_mem_read_objptr(asc_mem *m, uint64_t addr, uint64_t *out);
/* True when addr can be the address of a Python object. */
int asc_mem_plausible_obj(uint64_t addr);

#endif
