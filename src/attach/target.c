/* Opening a target: our own process (for the agent) or another one (for the CLI), finding its
 * interpreter, version and anchors, and freezing it for a consistent read.
 *
 * Version detection: 3.11+ export Py_Version (PY_VERSION_HEX as a 4-byte constant). Older
 * versions do not, so we pick the layout from the libpython file name (or, for a static
 * executable, try 3.10, 3.9, 3.8 in turn) and confirm it by reading sys.hexversion from the
 * interpreter's sys dict: a wrong layout cannot produce a hexversion of its own minor version. */
#include "attach/target.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

#include "aioscope/error.h"
#include "attach/cache.h"
#include "attach/elfsym.h"
#include "attach/pyobj.h"

/* The symbols we need. _PyRuntime anchors everything; the type objects validate objects. */
enum {
    SYM_RUNTIME, SYM_VERSION, SYM_CODE, SYM_FRAME, SYM_CORO, SYM_GEN, SYM_UNICODE, SYM_LONG,
    SYM_DICT, SYM_SET, SYM_WEAKREF, SYM_LIST, SYM_TUPLE, SYM_BYTES, SYM_METHOD, SYM_TYPE, SYM_COUNT
};
static const char *const asc__sym_names[SYM_COUNT] = {
    "_PyRuntime", "Py_Version", "PyCode_Type", "PyFrame_Type", "PyCoro_Type", "PyGen_Type",
    "PyUnicode_Type", "PyLong_Type", "PyDict_Type", "PySet_Type", "_PyWeakref_RefType",
    "PyList_Type", "PyTuple_Type", "PyBytes_Type", "PyMethod_Type", "PyType_Type",
};

static void asc__set_types(aioscope_target *t, const uint64_t *a) {
    t->types.code = a[SYM_CODE];
    t->types.frame = a[SYM_FRAME];
    t->types.coro = a[SYM_CORO];
    t->types.gen = a[SYM_GEN];
    t->types.unicode = a[SYM_UNICODE];
    t->types.long_ = a[SYM_LONG];
    t->types.dict = a[SYM_DICT];
    t->types.set = a[SYM_SET];
    t->types.weakref = a[SYM_WEAKREF];
    t->types.list = a[SYM_LIST];
    t->types.tuple = a[SYM_TUPLE];
    t->types.bytes = a[SYM_BYTES];
    t->types.method = a[SYM_METHOD];
    t->types.type = a[SYM_TYPE];
}

static int asc__alloc(aioscope_target **out) {
    aioscope_target *t = calloc(1, sizeof *t);
    if (!t) return AIOSCOPE_ENOMEM;
    if (!(t->cache = asc_cache_new())) {
        free(t);
        return AIOSCOPE_ENOMEM;
    }
    *out = t;
    return 0;
}

static int asc__use_version(aioscope_target *t, uint32_t version) {
    t->L = asc_layout_find(version);
    if (!t->L) return AIOSCOPE_EUNSUPPORTED;
    t->version = version;
    t->minor = (version >> 16) & 0xff;
    return 0;
}

int aioscope_target_open_self(uint32_t py_version_hex, uint64_t pyruntime_addr, aioscope_target **out) {
    aioscope_target *t;
    if (!out || !pyruntime_addr) return AIOSCOPE_EINVAL;
    *out = NULL;
    int rc = asc__alloc(&t);
    if (rc < 0) return rc;
    if ((rc = asc__use_version(t, py_version_hex)) < 0) {
        aioscope_target_close(t);
        return rc;
    }
    t->self = 1;
    t->pid = getpid();
    t->runtime = pyruntime_addr;
    asc_mem_init_pid(&t->mem, t->pid);
    /* We run inside the interpreter: its type objects are visible to the dynamic linker. A
     * symbol it does not export leaves that check off (0), it does not fail the open. */
    uint64_t a[SYM_COUNT] = {0};
    for (int i = SYM_CODE; i < SYM_COUNT; i++) a[i] = (uint64_t)(uintptr_t)dlsym(RTLD_DEFAULT, asc__sym_names[i]);
    asc__set_types(t, a);
    snprintf(t->binary, sizeof t->binary, "self");
    *out = t;
    return 0;
}

int asc_target_open_mem(asc_read_fn read, void *ctx, uint32_t py_version_hex, uint64_t runtime,
                        const asc_types *types, aioscope_target **out) {
    aioscope_target *t;
    if (!out || !read) return AIOSCOPE_EINVAL;
    *out = NULL;
    int rc = asc__alloc(&t);
    if (rc < 0) return rc;
    if ((rc = asc__use_version(t, py_version_hex)) < 0) {
        aioscope_target_close(t);
        return rc;
    }
    asc_mem_init_custom(&t->mem, read, ctx);
    t->self = 1;
    t->runtime = runtime;
    if (types) t->types = *types;
    snprintf(t->binary, sizeof t->binary, "memory");
    *out = t;
    return 0;
}

/* sys.hexversion read with the current layout; AIOSCOPE_E* when the layout does not fit. */
static int asc__read_hexversion(aioscope_target *t, uint32_t *hex) {
    uint64_t interp, sysdict, val;
    int64_t v;
    int rc = asc_mem_read_objptr(&t->mem, t->runtime + (uint64_t)t->L->runtime_interpreters_head, &interp);
    if (rc < 0) return rc;
    if ((rc = asc_mem_read_objptr(&t->mem, interp + (uint64_t)t->L->interp_sysdict, &sysdict)) < 0) return rc;
    if ((rc = asc_dict_get(t, sysdict, "hexversion", &val)) < 0) return rc;
    if ((rc = asc_read_long(t, val, &v)) < 0) return rc;
    if (v < 0x03000000 || v > 0x04000000) return AIOSCOPE_EBADDATA;
    *hex = (uint32_t)v;
    return 0;
}

/* The open-time error for a failed read of the target, mapped to what the user must do. */
static int asc__probe_access(int pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d", pid);
    if (access(path, F_OK) != 0) return AIOSCOPE_ESRCH;
    return 0;
}

int aioscope_target_open_pid(int pid, aioscope_target **out) {
    aioscope_target *t = NULL;
    uint64_t a[SYM_COUNT];
    int minor_hint = 0, rc;
    if (!out || pid <= 0) return AIOSCOPE_EINVAL;
    *out = NULL;
    if ((rc = asc__probe_access(pid)) < 0) return rc;
    if ((rc = asc__alloc(&t)) < 0) return rc;
    t->pid = pid;
    asc_mem_init_pid(&t->mem, pid);
    rc = asc_elf_find_symbols(pid, asc__sym_names, a, SYM_COUNT, t->binary, sizeof t->binary, &minor_hint);
    if (rc < 0) goto fail;
    t->runtime = a[SYM_RUNTIME];
    asc__set_types(t, a);
    if (a[SYM_VERSION]) {
        uint32_t hex;
        if ((rc = asc_mem_read(&t->mem, a[SYM_VERSION], &hex, sizeof hex)) < 0) goto fail;
        if ((rc = asc__use_version(t, hex)) < 0) goto fail;
    } else {
        /* 3.8-3.10: confirm the candidate layout(s) through sys.hexversion. */
        int cands[3] = {10, 9, 8}, ncand = 3;
        if (minor_hint) cands[0] = minor_hint, ncand = 1;
        rc = AIOSCOPE_EUNSUPPORTED;
        for (int i = 0; i < ncand; i++) {
            uint32_t hex = 0;
            /* Any patch level past 3.10's layout change selects the table; the real one is read next. */
            if (asc__use_version(t, 0x030000f0u | (uint32_t)cands[i] << 16 | 0xff00u) < 0) continue;
            int r = asc__read_hexversion(t, &hex);
            if (r == AIOSCOPE_EPERM || r == AIOSCOPE_ESRCH) {
                rc = r;
                break;
            }
            if (r < 0 || ((hex >> 16) & 0xff) != (uint32_t)cands[i]) continue;
            rc = asc__use_version(t, hex);
            break;
        }
        if (rc < 0) goto fail;
    }
    *out = t;
    return 0;
fail:
    aioscope_target_close(t);
    return rc;
}

uint32_t aioscope_target_version(const aioscope_target *t) {
    return t ? t->version : 0;
}

const char *aioscope_target_binary(const aioscope_target *t) {
    return t ? t->binary : "";
}

uint64_t aioscope_target_reads(const aioscope_target *t) {
    return t ? t->mem.nreads : 0;
}

/* Freezing. We PTRACE_SEIZE + PTRACE_INTERRUPT every thread rather than send SIGSTOP: the
 * target sees no signal, and should aioscope die while the target is frozen, the kernel detaches
 * and the target resumes by itself. The seized thread ids are kept in a static table so that a
 * signal handler can detach them (aioscope_target_thaw_pid). */
#define ASC_MAX_SEIZED 4096
static volatile int asc__seized[ASC_MAX_SEIZED];
static volatile int asc__nseized;
static volatile int asc__seized_pid;

static int asc__is_seized(int tid) {
    for (int i = 0; i < asc__nseized; i++)
        if (asc__seized[i] == tid) return 1;
    return 0;
}

void aioscope_target_thaw_pid(int pid) {
    if (pid != asc__seized_pid) return;
    int saved = errno;
    for (int i = 0; i < asc__nseized; i++) ptrace(PTRACE_DETACH, asc__seized[i], NULL, NULL);
    asc__nseized = 0;
    asc__seized_pid = 0;
    errno = saved;
}

int aioscope_target_freeze(aioscope_target *t) {
    if (!t || t->self) return AIOSCOPE_EINVAL;
    if (t->frozen) return 0;
    if (asc__seized_pid) return AIOSCOPE_EINVAL; /* one frozen target at a time */
    asc__seized_pid = t->pid;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", t->pid);
    /* Threads may start while we seize the others: rescan until a pass finds no new thread
     * (bounded). */
    int rc = 0;
    for (int pass = 0; pass < 16; pass++) {
        DIR *d = opendir(path);
        if (!d) {
            rc = errno == ENOENT ? AIOSCOPE_ESRCH : AIOSCOPE_EPERM;
            break;
        }
        int fresh = 0;
        struct dirent *de;
        while ((de = readdir(d))) {
            int tid = atoi(de->d_name);
            if (tid <= 0 || asc__is_seized(tid)) continue;
            if (asc__nseized >= ASC_MAX_SEIZED) break;
            if (ptrace(PTRACE_SEIZE, tid, NULL, NULL) != 0) {
                if (errno == ESRCH) continue; /* the thread exited meanwhile */
                rc = errno == EPERM ? AIOSCOPE_EPERM : AIOSCOPE_EIO;
                break;
            }
            asc__seized[asc__nseized++] = tid;
            fresh = 1;
            if (ptrace(PTRACE_INTERRUPT, tid, NULL, NULL) == 0) {
                int status;
                /* Wait for the group-stop/interrupt stop of this thread. */
                while (waitpid(tid, &status, __WALL) < 0 && errno == EINTR) {
                }
            }
        }
        closedir(d);
        if (rc < 0 || !fresh) break;
    }
    if (rc < 0) {
        aioscope_target_thaw_pid(t->pid);
        return rc;
    }
    t->frozen = 1;
    return 0;
}

int aioscope_target_thaw(aioscope_target *t) {
    if (!t || !t->frozen) return 0;
    aioscope_target_thaw_pid(t->pid);
    t->frozen = 0;
    return 0;
}

void aioscope_target_close(aioscope_target *t) {
    if (!t) return;
    aioscope_target_thaw(t);
    asc_mem_cache_end(&t->mem);
    asc_cache_free(t->cache);
    free(t);
}
