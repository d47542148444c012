/* Memory backends: process_vm_readv on a pid (another process or our own), or a custom read
 * function. See mem.h for why even our own process is read through a system call. */
#include "attach/mem.h"

#include <errno.h>
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

void asc_mem_init_pid(asc_mem *m, int pid) {
    m->read = asc__pid_read;
    m->ctx = m;
    m->pid = pid;
    m->nreads = 0;
}

void asc_mem_init_custom(asc_mem *m, asc_read_fn read, void *ctx) {
    m->read = read;
    m->ctx = ctx;
    m->pid = 0;
    m->nreads = 0;
}

int asc_mem_read(asc_mem *m, uint64_t addr, void *buf, size_t len) {
    if (len == 0) return 0;
    if (addr < ASC_USER_MIN || addr >= ASC_USER_MAX || len > ASC_USER_MAX - addr)
        return AIOSCOPE_EFAULT;
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
