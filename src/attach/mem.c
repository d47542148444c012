/* Memory backends: process_vm_readv on a pid (another process or our own), or a custom read
 * function. See mem.h for why even our own process is read through a system call. */
#include "attach/mem.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "aioscope/error.h"

/* x86-64 and aarch64 Linux user space ends below 2^47 (4-level paging) or 2^56 (5-level);
 * anything in the top bits is a torn or garbage pointer. The first page is never mapped. */
#define ASC_USER_MIN 4096ULL
#define ASC_USER_MAX (1ULL << 56)

static int asc__pid_read(void *ctx, uint64_t addr, void *buf, size_t len) {
    asc_mem *m = ctx;
    struct iovec local = {buf, len};
    struct iovec remote = {(void *)(uintptr_t)addr, len};
    ssize_t got = process_vm_readv(m->pid, &local, 1, &remote, 1, 0);
    if (got == (ssize_t)len) return 0;
    if (got >= 0) return AIOSCOPE_EFAULT; /* a partial read: the range ends in an unmapped page */
    switch (errno) {
    case ESRCH: return AIOSCOPE_ESRCH;
    case EPERM:
    case EACCES: return AIOSCOPE_EPERM;
    case ENOMEM: return AIOSCOPE_ENOMEM;
    default: return AIOSCOPE_EFAULT; /* EFAULT, EINVAL: the remote range is not readable */
    }
}

/* 16 384 slots of 4 KiB (64 MiB at most), each allocated when first used: a small snapshot
 * touches a few hundred pages. */
#define ASC_CACHE_SLOTS 16384
/* Reads longer than this go straight to the backend (set tables, long strings). */
#define ASC_CACHE_MAX_READ (4 * ASC_PAGE_SIZE)

struct asc_page {
    uint64_t page; /* page address + 1; 0 marks an empty slot */
    uint8_t data[ASC_PAGE_SIZE];
};

void asc_mem_init_pid(asc_mem *m, int pid) {
    memset(m, 0, sizeof *m);
    m->read = asc__pid_read;
    m->ctx = m;
    m->pid = pid;
}

void asc_mem_init_custom(asc_mem *m, asc_read_fn read, void *ctx) {
    memset(m, 0, sizeof *m);
    m->read = read;
    m->ctx = ctx;
}

int asc_mem_cache_begin(asc_mem *m) {
    if (m->cache) {
        /* Keep the pages' memory, forget their contents. */
        for (size_t i = 0; i < m->cache_slots; i++)
            if (m->cache[i]) m->cache[i]->page = 0;
        return 0;
    }
    m->cache = calloc(ASC_CACHE_SLOTS, sizeof *m->cache);
    if (!m->cache) return AIOSCOPE_ENOMEM;
    m->cache_slots = ASC_CACHE_SLOTS;
    return 0;
}

void asc_mem_cache_end(asc_mem *m) {
    for (size_t i = 0; i < m->cache_slots; i++) free(m->cache[i]);
    free(m->cache);
    m->cache = NULL;
    m->cache_slots = 0;
}

/* Serve [addr, addr+len) from cached pages, filling misses with whole-page reads. A page that
 * cannot be read whole (the backend refuses it) makes the caller fall back to a direct read. */
static int asc__cached_read(asc_mem *m, uint64_t addr, uint8_t *buf, size_t len) {
    while (len) {
        uint64_t page = addr & ~(uint64_t)(ASC_PAGE_SIZE - 1);
        size_t off = (size_t)(addr - page), n = ASC_PAGE_SIZE - off;
        if (n > len) n = len;
        /* cache_slots is a power of two */
        asc_page **slot = &m->cache[(page / ASC_PAGE_SIZE * 0x9E3779B97F4A7C15ULL >> 40) & (m->cache_slots - 1)];
        if (!*slot) {
            if (!(*slot = malloc(sizeof **slot))) return -1;
            (*slot)->page = 0;
        }
        if ((*slot)->page != page + 1) {
            m->nreads++;
            if (m->read(m->ctx, page, (*slot)->data, ASC_PAGE_SIZE) < 0) {
                (*slot)->page = 0;
                return -1;
            }
            (*slot)->page = page + 1;
        }
        memcpy(buf, (*slot)->data + off, n);
        buf += n;
        addr += n;
        len -= n;
    }
    return 0;
}

int asc_mem_read(asc_mem *m, uint64_t addr, void *buf, size_t len) {
    if (len == 0) return 0;
    if (addr < ASC_USER_MIN || addr >= ASC_USER_MAX || len > ASC_USER_MAX - addr)
        return AIOSCOPE_EFAULT;
    if (m->cache && len <= ASC_CACHE_MAX_READ && asc__cached_read(m, addr, buf, len) == 0) return 0;
    m->nreads++;
    return m->read(m->ctx, addr, buf, len);
}

int asc_mem_read_u64(asc_mem *m, uint64_t addr, uint64_t *out) {
    return asc_mem_read(m, addr, out, sizeof *out);
}

int asc_mem_read_i32(asc_mem *m, uint64_t addr, int32_t *out) {
    return asc_mem_read(m, addr, out, sizeof *out);
}

int asc_mem_plausible_obj(uint64_t addr) {
    /* CPython allocates objects with at least 8-byte alignment (pymalloc: 16). */
    return addr >= ASC_USER_MIN && addr < ASC_USER_MAX && (addr & 7) == 0;
}

int asc_mem_read_objptr(asc_mem *m, uint64_t addr, uint64_t *out) {
    int rc = asc_mem_read_u64(m, addr, out);
    if (rc < 0) return rc;
    return asc_mem_plausible_obj(*out) ? 0 : AIOSCOPE_EBADDATA;
}
