/* Per-walk caches of the attach walkers (internal).
 *
 * 100 000 tasks share a few dozen code objects and types, so decoding each code object (names,
 * file, line table) and each type name once per walk is what makes a snapshot fast. The caches
 * key on addresses, which stay meaningful only while objects cannot be freed and reused: they
 * are cleared at the start of every snapshot and every self-target stack read. */
#ifndef ASC_ATTACH_CACHE_H
#define ASC_ATTACH_CACHE_H

#include <stddef.h>
#include <stdint.h>

/* What the walkers need from one code object. */
struct asc_codeinfo {
    uint64_t addr;
    char *file;           /* owned */
    char *name;           /* owned; co_qualname when the version has it, else co_name */
    int firstlineno;
    int has_qualname;
    uint8_t *linetable;   /* owned; lnotab (3.8-3.9), PEP 626 (3.10) or PEP 657 table (3.11+) */
    size_t linetable_len;
    uint64_t code_start;  /* address of the first bytecode unit */
    size_t code_len;      /* bytes of bytecode (3.8-3.10; 0 when unknown) */
    /* file and name as interned in the snapshot being filled (snap_owner), so that 100 000
     * frames of one code object do not hash the same strings 100 000 times. */
    const void *snap_owner;
    /* The last line lookup: thousands of tasks are suspended at the same instruction. */
    int64_t last_addrq;
    int last_line;
    const char *snap_file, *snap_name;
};

#define ASC_TYPE_CACHE 64

struct asc_cache {
    struct {
        uint64_t addr;
        char name[96];
    } types[ASC_TYPE_CACHE];
    size_t ntypes, evict;
    struct asc_codeinfo **codes; /* open addressing on addr, code_cap slots (power of two) */
    size_t code_cap, ncodes;
};

struct asc_cache *asc_cache_new(void);
void asc_cache_free(struct asc_cache *c); /* accepts NULL */
void asc_cache_clear(struct asc_cache *c);
/* The cached entry for addr or NULL. */
struct asc_codeinfo *asc_cache_code_find(struct asc_cache *c, uint64_t addr);
/* Takes ownership of ci; returns 0, AIOSCOPE_ENOMEM or AIOSCOPE_ELIMIT (ci is freed then). */
int asc_cache_code_add(struct asc_cache *c, struct asc_codeinfo *ci);
void asc_codeinfo_free(struct asc_codeinfo *ci);

#endif
