/* Per-walk caches: code objects (open addressing on their address) and type names (a small
 * round-robin table). See cache.h for why they are cleared at the start of every walk. */
#include "attach/cache.h"

#include <stdlib.h>

#include "aioscope/error.h"
#include "attach/target.h"

/* A bound on the code cache, so that a target full of garbage code pointers cannot make us grow
 * without limit. Entries are never evicted during a walk (callers hold pointers to them); past
 * the bound, new code objects are refused with AIOSCOPE_ELIMIT. */
#define ASC_MAX_CACHED_CODES (1 << 20)

struct asc_cache *asc_cache_new(void) {
    return calloc(1, sizeof(struct asc_cache));
}

void asc_codeinfo_free(struct asc_codeinfo *ci) {
    if (!ci) return;
    free(ci->file);
    free(ci->name);
    free(ci->linetable);
    free(ci);
}

void asc_cache_clear(struct asc_cache *c) {
    if (!c) return;
    for (size_t i = 0; i < c->code_cap; i++) {
        asc_codeinfo_free(c->codes[i]);
        c->codes[i] = NULL;
    }
    c->ncodes = 0;
    c->ntypes = 0;
    c->evict = 0;
}

void asc_cache_free(struct asc_cache *c) {
    if (!c) return;
    asc_cache_clear(c);
    free(c->codes);
    free(c);
}

static size_t asc__slot(uint64_t addr, size_t cap) {
    /* Objects are 16-byte aligned; mix the high bits down (Fibonacci hashing). */
    return (size_t)(((addr >> 4) * 0x9E3779B97F4A7C15ULL) >> 20) & (cap - 1);
}

struct asc_codeinfo *asc_cache_code_find(struct asc_cache *c, uint64_t addr) {
    if (!c->code_cap) return NULL;
    for (size_t i = asc__slot(addr, c->code_cap), probes = 0; probes < c->code_cap;
         i = (i + 1) & (c->code_cap - 1), probes++) {
        if (!c->codes[i]) return NULL;
        if (c->codes[i]->addr == addr) return c->codes[i];
    }
    return NULL;
}

static int asc__grow(struct asc_cache *c) {
    size_t cap = c->code_cap ? c->code_cap * 2 : 256;
    struct asc_codeinfo **fresh = calloc(cap, sizeof *fresh);
    if (!fresh) return AIOSCOPE_ENOMEM;
    for (size_t i = 0; i < c->code_cap; i++) {
        struct asc_codeinfo *ci = c->codes[i];
        if (!ci) continue;
        size_t j = asc__slot(ci->addr, cap);
        while (fresh[j]) j = (j + 1) & (cap - 1);
        fresh[j] = ci;
    }
    free(c->codes);
    c->codes = fresh;
    c->code_cap = cap;
    return 0;
}

int asc_cache_code_add(struct asc_cache *c, struct asc_codeinfo *ci) {
    if (c->ncodes >= ASC_MAX_CACHED_CODES) {
        asc_codeinfo_free(ci);
        return AIOSCOPE_ELIMIT;
    }
    /* Keep the load factor under 1/2 so probes stay short. */
    if ((c->ncodes + 1) * 2 > c->code_cap && asc__grow(c) < 0) {
        asc_codeinfo_free(ci);
        return AIOSCOPE_ENOMEM;
    }
    size_t i = asc__slot(ci->addr, c->code_cap);
    while (c->codes[i]) i = (i + 1) & (c->code_cap - 1);
    c->codes[i] = ci;
    c->ncodes++;
    return 0;
}

void asc_cache_reset(aioscope_target *t) {
    asc_cache_clear(t->cache);
}
