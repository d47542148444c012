/* Reading CPython objects out of target memory (see pyobj.h).
 *
 * Layout facts not covered by the generated tables are stated where they are used, with the
 * CPython header they come from. */
#include "attach/pyobj.h"

#include <stdlib.h>
#include <string.h>

#include "aioscope/error.h"
#include "attach/cache.h"

/* PyObject { Py_ssize_t ob_refcnt; PyTypeObject *ob_type; } in every version 3.8-3.13
 * (Include/object.h; 3.13's free-threaded build differs and is not supported). */
#define ASC_OB_TYPE 8

/* tp_flags bits (Include/object.h): 3.11+ Py_TPFLAGS_MANAGED_DICT, 3.13 Py_TPFLAGS_INLINE_VALUES. */
#define ASC_TPFLAGS_INLINE_VALUES (1UL << 2)
#define ASC_TPFLAGS_MANAGED_DICT (1UL << 4)
/* The managed dict pointer sits 3 words before the object (3.11-3.13, MANAGED_DICT_OFFSET), the
 * 3.11 values pointer 4 words before (_PyObject_ValuesPointer). */
#define ASC_MANAGED_DICT_OFFSET 24
#define ASC_MANAGED_VALUES_OFFSET_311 32

int asc_obj_type(aioscope_target *t, uint64_t obj, uint64_t *type) {
    if (!asc_mem_plausible_obj(obj)) return AIOSCOPE_EBADDATA;
    return asc_mem_read_objptr(&t->mem, obj + ASC_OB_TYPE, type);
}

int asc_obj_check(aioscope_target *t, uint64_t obj, uint64_t type) {
    uint64_t actual;
    int rc = asc_obj_type(t, obj, &actual);
    if (rc < 0) return rc;
    return (type == 0 || actual == type) ? 0 : AIOSCOPE_EBADDATA;
}

/* A NUL-terminated C string of at most cap-1 bytes at addr. Reads up to the page end in one
 * call (a string may sit right before an unmapped page); when a backend refuses that range,
 * falls back to one byte at a time. */
static int asc__read_cstr(aioscope_target *t, uint64_t addr, char *out, size_t cap) {
    size_t got = 0;
    int bytewise = 0;
    while (got + 1 < cap) {
        uint64_t a = addr + got;
        size_t chunk = bytewise ? 1 : 4096 - (size_t)(a & 4095);
        if (chunk > cap - 1 - got) chunk = cap - 1 - got;
        int rc = asc_mem_read(&t->mem, a, out + got, chunk);
        if (rc < 0) {
            if (bytewise || chunk == 1) return rc;
            bytewise = 1;
            continue;
        }
        if (memchr(out + got, 0, chunk)) return 0;
        got += chunk;
    }
    out[cap - 1] = 0;
    return 0;
}

const char *asc_type_name(aioscope_target *t, uint64_t type) {
    struct asc_cache *c = t->cache;
    for (size_t i = 0; i < c->ntypes; i++)
        if (c->types[i].addr == type) return c->types[i].name;
    size_t slot = c->ntypes < ASC_TYPE_CACHE ? c->ntypes++ : (c->evict++ % ASC_TYPE_CACHE);
    char *name = c->types[slot].name;
    uint64_t name_ptr;
    c->types[slot].addr = type;
    if (asc_mem_read_u64(&t->mem, type + (uint64_t)t->L->type_name, &name_ptr) < 0 ||
        asc__read_cstr(t, name_ptr, name, sizeof c->types[slot].name) < 0)
        strcpy(name, "?");
    return name;
}

const char *asc_obj_type_name(aioscope_target *t, uint64_t obj) {
    uint64_t type;
    if (asc_obj_type(t, obj, &type) < 0) return "?";
    return asc_type_name(t, type);
}

/* Append code point cp as UTF-8 if it fits; returns the new length or (size_t)-1 when full. */
static size_t asc__put_utf8(char *out, size_t len, size_t cap, uint32_t cp) {
    char tmp[4];
    size_t n;
    if (cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000)) cp = 0xfffd; /* lone surrogates */
    if (cp < 0x80) tmp[0] = (char)cp, n = 1;
    else if (cp < 0x800) tmp[0] = (char)(0xc0 | cp >> 6), tmp[1] = (char)(0x80 | (cp & 63)), n = 2;
    else if (cp < 0x10000)
        tmp[0] = (char)(0xe0 | cp >> 12), tmp[1] = (char)(0x80 | ((cp >> 6) & 63)),
        tmp[2] = (char)(0x80 | (cp & 63)), n = 3;
    else
        tmp[0] = (char)(0xf0 | cp >> 18), tmp[1] = (char)(0x80 | ((cp >> 12) & 63)),
        tmp[2] = (char)(0x80 | ((cp >> 6) & 63)), tmp[3] = (char)(0x80 | (cp & 63)), n = 4;
    if (len + n + 1 > cap) return (size_t)-1;
    memcpy(out + len, tmp, n);
    return len + n;
}

int asc_read_str(aioscope_target *t, uint64_t obj, char *out, size_t cap) {
    const asc_layout *L = t->L;
    if (cap == 0) return AIOSCOPE_EINVAL;
    out[0] = 0;
    int rc = asc_obj_check(t, obj, t->types.unicode);
    if (rc < 0) return rc;
    /* One read for the header and, for short strings, the characters too; a second read when
     * the string is longer or the speculative read crossed into an unmapped page. */
    uint8_t buf[256];
    size_t hdr = (size_t)L->sizeof_compact;
    if (hdr > 128) return AIOSCOPE_EBADDATA;
    size_t want = sizeof buf;
    size_t to_page_end = 4096 - (size_t)(obj & 4095);
    if (want > to_page_end && to_page_end >= hdr) want = to_page_end;
    if (asc_mem_read(&t->mem, obj, buf, want) < 0) {
        /* The speculative length ran past the end of readable memory: read the header only. */
        want = hdr;
        if ((rc = asc_mem_read(&t->mem, obj, buf, want)) < 0) return rc;
    }
    int64_t length;
    uint32_t state;
    memcpy(&length, buf + L->ascii_length, sizeof length);
    memcpy(&state, buf + L->ascii_state, sizeof state);
    /* PyASCIIObject.state bit-fields (Include/cpython/unicodeobject.h, 3.8-3.13):
     * interned:2, kind:3, compact:1, ascii:1, then ready (<=3.11) / statically_allocated. */
    unsigned kind = (state >> 2) & 7, compact = (state >> 5) & 1, ascii = (state >> 6) & 1;
    if (!compact || (kind != 1 && kind != 2 && kind != 4) || (ascii && kind != 1))
        return AIOSCOPE_EBADDATA; /* legacy (non-compact) strings do not name code or tasks */
    if (length < 0 || length > (int64_t)1 << 40) return AIOSCOPE_EBADDATA;
    size_t nchars = (size_t)length > ASC_MAX_STR ? ASC_MAX_STR : (size_t)length;
    size_t data_off = ascii ? (size_t)L->sizeof_ascii : hdr;
    size_t nbytes = nchars * kind;
    uint8_t *data, *heap = NULL;
    if (data_off + nbytes <= want) {
        data = buf + data_off;
    } else {
        heap = malloc(nbytes ? nbytes : 1);
        if (!heap) return AIOSCOPE_ENOMEM;
        if ((rc = asc_mem_read(&t->mem, obj + data_off, heap, nbytes)) < 0) {
            free(heap);
            return rc;
        }
        data = heap;
    }
    size_t len = 0;
    for (size_t i = 0; i < nchars; i++) {
        uint32_t cp;
        if (kind == 1) cp = data[i];
        else if (kind == 2) { uint16_t v; memcpy(&v, data + 2 * i, 2); cp = v; }
        else memcpy(&cp, data + 4 * i, 4);
        size_t next = asc__put_utf8(out, len, cap, cp);
        if (next == (size_t)-1) break;
        len = next;
    }
    out[len] = 0;
    free(heap);
    return 0;
}

int asc_read_bytes(aioscope_target *t, uint64_t obj, uint8_t **out, size_t *len, size_t max) {
    *out = NULL;
    *len = 0;
    int rc = asc_obj_check(t, obj, t->types.bytes);
    if (rc < 0) return rc;
    int64_t size;
    if ((rc = asc_mem_read(&t->mem, obj + (uint64_t)t->L->var_size, &size, sizeof size)) < 0)
        return rc;
    if (size < 0 || (uint64_t)size > max) return AIOSCOPE_EBADDATA;
    uint8_t *data = malloc((size_t)size + 1);
    if (!data) return AIOSCOPE_ENOMEM;
    if ((rc = asc_mem_read(&t->mem, obj + (uint64_t)t->L->bytes_sval, data, (size_t)size)) < 0) {
        free(data);
        return rc;
    }
    *out = data;
    *len = (size_t)size;
    return 0;
}

int asc_read_long(aioscope_target *t, uint64_t obj, int64_t *out) {
    const asc_layout *L = t->L;
    int rc = asc_obj_check(t, obj, t->types.long_);
    if (rc < 0) return rc;
    int64_t size_or_tag;
    uint32_t digits[3] = {0, 0, 0};
    if ((rc = asc_mem_read(&t->mem, obj + (uint64_t)L->long_size, &size_or_tag, 8)) < 0) return rc;
    int64_t ndigits, sign;
    if (t->minor >= 12) {
        /* 3.12+ lv_tag: digit count << 3 | sign bits (0 positive, 1 zero, 2 negative). */
        ndigits = (int64_t)((uint64_t)size_or_tag >> 3);
        sign = 1 - (size_or_tag & 3);
    } else {
        /* <= 3.11 ob_size: the digit count, negative for negative numbers. */
        ndigits = size_or_tag < 0 ? -size_or_tag : size_or_tag;
        sign = size_or_tag < 0 ? -1 : size_or_tag > 0;
    }
    if (ndigits > 2) return AIOSCOPE_EBADDATA; /* 30-bit digits: 2 hold any id we print */
    if (ndigits && (rc = asc_mem_read(&t->mem, obj + (uint64_t)L->long_digit, digits,
                                      (size_t)ndigits * 4)) < 0)
        return rc;
    int64_t v = (int64_t)(digits[0] & 0x3fffffff) | ((int64_t)(digits[1] & 0x3fffffff) << 30);
    *out = sign * v;
    return 0;
}

/* The entries of a dict's keys object: where they are, how many, how big each is. */
typedef struct {
    uint64_t entries;
    int64_t nentries;
    size_t esize;   /* 24: {hash, key, value}; 16: {key, value} (3.11+ unicode keys) */
    size_t key_off; /* offset of the key inside an entry */
} asc__dk;

static int asc__dict_keys(aioscope_target *t, uint64_t keys, asc__dk *dk) {
    const asc_layout *L = t->L;
    uint8_t hdr[64];
    if (L->keys_indices <= 0 || (size_t)L->keys_indices > sizeof hdr) return AIOSCOPE_EBADDATA;
    int rc = asc_mem_read(&t->mem, keys, hdr, (size_t)L->keys_indices);
    if (rc < 0) return rc;
    memcpy(&dk->nentries, hdr + L->keys_nentries, 8);
    if (dk->nentries < 0 || dk->nentries > ASC_MAX_DICT_ENTRIES) return AIOSCOPE_EBADDATA;
    uint64_t index_bytes;
    if (t->minor <= 10) {
        /* 3.8-3.10 (Objects/dict-common.h): dk_size slots, each index 1/2/4/8 bytes wide
         * depending on dk_size; entries follow the indices. */
        int64_t size;
        memcpy(&size, hdr + L->keys_size, 8);
        if (size <= 0 || size > ((int64_t)ASC_MAX_DICT_ENTRIES << 1) || (size & (size - 1)))
            return AIOSCOPE_EBADDATA;
        size_t ix = size <= 0xff ? 1 : size <= 0xffff ? 2 : 4;
        index_bytes = (uint64_t)size * ix;
        dk->esize = (size_t)L->sizeof_dict_key_entry;
        dk->key_off = 8;
    } else {
        /* 3.11+ (Include/internal/pycore_dict.h): 1 << dk_log2_index_bytes bytes of indices;
         * dk_kind 0 (general) entries hold a hash, unicode/split ones do not. */
        uint8_t log2_index = hdr[L->keys_log2_index_bytes], kind = hdr[L->keys_kind];
        if (log2_index > 32 || kind > 2) return AIOSCOPE_EBADDATA;
        index_bytes = 1ULL << log2_index;
        dk->esize = kind == 0 ? (size_t)L->sizeof_dict_key_entry : (size_t)L->sizeof_dict_unicode_entry;
        dk->key_off = kind == 0 ? 8 : 0;
    }
    dk->entries = keys + (uint64_t)L->keys_indices + index_bytes;
    return 0;
}

/* Iterate a keys object with an optional split-values array (values != 0). */
static int asc__keys_foreach(aioscope_target *t, uint64_t keys, uint64_t values, asc_kv_fn fn,
                             void *ctx) {
    asc__dk dk;
    int rc = asc__dict_keys(t, keys, &dk);
    if (rc < 0) return rc;
    if (dk.nentries == 0) return 0;
    size_t total = (size_t)dk.nentries * dk.esize;
    uint8_t *ents = malloc(total);
    uint64_t *vals = NULL;
    if (!ents) return AIOSCOPE_ENOMEM;
    if ((rc = asc_mem_read(&t->mem, dk.entries, ents, total)) < 0) goto out;
    if (values) {
        vals = malloc((size_t)dk.nentries * 8);
        if (!vals) { rc = AIOSCOPE_ENOMEM; goto out; }
        uint64_t at = values + (uint64_t)(t->L->dictvalues_values > 0 ? t->L->dictvalues_values : 0);
        if ((rc = asc_mem_read(&t->mem, at, vals, (size_t)dk.nentries * 8)) < 0) goto out;
    }
    for (int64_t i = 0; i < dk.nentries; i++) {
        uint64_t key, val;
        memcpy(&key, ents + (size_t)i * dk.esize + dk.key_off, 8);
        if (values) val = vals[i];
        else memcpy(&val, ents + (size_t)i * dk.esize + dk.key_off + 8, 8);
        if (!key || !val) continue; /* deleted entry, or a split slot with no value */
        if ((rc = fn(ctx, key, val)) != 0) goto out;
    }
    rc = 0;
out:
    free(ents);
    free(vals);
    return rc;
}

int asc_dict_foreach(aioscope_target *t, uint64_t dict, asc_kv_fn fn, void *ctx) {
    int rc = asc_obj_check(t, dict, t->types.dict);
    if (rc < 0) return rc;
    uint64_t keys, values;
    if ((rc = asc_mem_read_objptr(&t->mem, dict + (uint64_t)t->L->dict_keys, &keys)) < 0) return rc;
    if ((rc = asc_mem_read_u64(&t->mem, dict + (uint64_t)t->L->dict_values, &values)) < 0) return rc;
    if (values && !asc_mem_plausible_obj(values)) return AIOSCOPE_EBADDATA;
    return asc__keys_foreach(t, keys, values, fn, ctx);
}

typedef struct {
    aioscope_target *t;
    const char *key;
    uint64_t val;
    int found;
} asc__lookup;

static int asc__lookup_cb(void *ctx, uint64_t key, uint64_t val) {
    asc__lookup *lk = ctx;
    char name[128];
    if (asc_read_str(lk->t, key, name, sizeof name) < 0) return 0;
    if (strcmp(name, lk->key) != 0) return 0;
    lk->val = val;
    lk->found = 1;
    return 1;
}

int asc_dict_get(aioscope_target *t, uint64_t dict, const char *key, uint64_t *val) {
    asc__lookup lk = {t, key, 0, 0};
    int rc = asc_dict_foreach(t, dict, asc__lookup_cb, &lk);
    if (rc < 0) return rc;
    if (!lk.found) return AIOSCOPE_ENOENT;
    *val = lk.val;
    return 0;
}

int asc_set_foreach(aioscope_target *t, uint64_t set, asc_item_fn fn, void *ctx) {
    const asc_layout *L = t->L;
    int rc = asc_obj_check(t, set, t->types.set);
    if (rc < 0) return rc;
    int64_t mask;
    uint64_t table;
    if ((rc = asc_mem_read(&t->mem, set + (uint64_t)L->set_mask, &mask, 8)) < 0) return rc;
    if ((rc = asc_mem_read_objptr(&t->mem, set + (uint64_t)L->set_table, &table)) < 0) return rc;
    /* mask + 1 is the table's slot count, a power of two (Objects/setobject.c). */
    if (mask < 0 || (uint64_t)mask >= ASC_MAX_SET_SLOTS || ((mask + 1) & mask))
        return AIOSCOPE_EBADDATA;
    size_t slots = (size_t)mask + 1, esize = (size_t)L->sizeof_setentry; /* {key, hash} */
    enum { CHUNK = 4096 };
    uint8_t *buf = malloc(CHUNK * esize);
    if (!buf) return AIOSCOPE_ENOMEM;
    for (size_t at = 0; at < slots; at += CHUNK) {
        size_t n = slots - at < CHUNK ? slots - at : CHUNK;
        if ((rc = asc_mem_read(&t->mem, table + at * esize, buf, n * esize)) < 0) break;
        for (size_t i = 0; i < n; i++) {
            uint64_t key;
            memcpy(&key, buf + i * esize, 8);
            if (!asc_mem_plausible_obj(key)) continue; /* empty slot */
            if ((rc = fn(ctx, key)) != 0) goto out;
        }
    }
out:
    free(buf);
    return rc < 0 ? rc : 0;
}

int asc_seq_items(aioscope_target *t, uint64_t seq, uint64_t *out, size_t max, size_t *n) {
    uint64_t type;
    int rc = asc_obj_type(t, seq, &type);
    *n = 0;
    if (rc < 0) return rc;
    int64_t size;
    if ((rc = asc_mem_read(&t->mem, seq + (uint64_t)t->L->var_size, &size, 8)) < 0) return rc;
    if (size < 0 || size > (int64_t)1 << 24) return AIOSCOPE_EBADDATA;
    size_t count = (size_t)size < max ? (size_t)size : max;
    uint64_t items;
    if (t->types.list && type == t->types.list) {
        if (count == 0) return 0;
        if ((rc = asc_mem_read_objptr(&t->mem, seq + (uint64_t)t->L->list_items, &items)) < 0)
            return rc;
    } else if (t->types.tuple && type == t->types.tuple) {
        items = seq + (uint64_t)t->L->tuple_items; /* tuples hold their items inline */
    } else {
        return AIOSCOPE_EBADDATA;
    }
    if (count && (rc = asc_mem_read(&t->mem, items, out, count * 8)) < 0) return rc;
    *n = count;
    return 0;
}

/* Index of str key `name` in a keys object (split/cached keys of managed dicts). */
typedef struct {
    aioscope_target *t;
    const char *name;
    int64_t index, at;
} asc__index;

static int asc__index_cb(void *ctx, uint64_t key, uint64_t val) {
    (void)val;
    asc__index *ix = ctx;
    char s[128];
    ix->at++;
    if (asc_read_str(ix->t, key, s, sizeof s) == 0 && strcmp(s, ix->name) == 0) {
        ix->index = ix->at - 1;
        return 1;
    }
    return 0;
}

/* Look name up in a type's shared keys with an instance's values array. */
static int asc__values_get(aioscope_target *t, uint64_t type, uint64_t values, const char *name,
                           uint64_t *val) {
    uint64_t keys;
    int rc = asc_mem_read_objptr(&t->mem, type + (uint64_t)t->L->heaptype_cached_keys, &keys);
    if (rc < 0) return rc;
    asc__dk dk;
    if ((rc = asc__dict_keys(t, keys, &dk)) < 0) return rc;
    /* Count every entry, present or not, so the index matches the values array: walk the raw
     * entries rather than asc__keys_foreach, which skips empty ones. */
    asc__index ix = {t, name, -1, 0};
    for (int64_t i = 0; i < dk.nentries; i++) {
        uint64_t key;
        ix.at = i;
        if ((rc = asc_mem_read_u64(&t->mem, dk.entries + (uint64_t)i * dk.esize + dk.key_off, &key)) < 0)
            return rc;
        if (key && asc__index_cb(&ix, key, 0)) break;
    }
    if (ix.index < 0) return AIOSCOPE_ENOENT;
    uint64_t at = values + (uint64_t)(t->L->dictvalues_values > 0 ? t->L->dictvalues_values : 0);
    if ((rc = asc_mem_read_u64(&t->mem, at + (uint64_t)ix.index * 8, val)) < 0) return rc;
    return *val ? 0 : AIOSCOPE_ENOENT;
}

int asc_obj_getattr(aioscope_target *t, uint64_t obj, const char *name, uint64_t *val) {
    const asc_layout *L = t->L;
    uint64_t type, flags, dict = 0;
    int64_t dictoffset;
    int rc = asc_obj_type(t, obj, &type);
    if (rc < 0) return rc;
    if ((rc = asc_mem_read_u64(&t->mem, type + (uint64_t)L->type_flags, &flags)) < 0) return rc;
    if ((rc = asc_mem_read(&t->mem, type + (uint64_t)L->type_dictoffset, &dictoffset, 8)) < 0)
        return rc;
    if (t->minor >= 11 && (flags & ASC_TPFLAGS_MANAGED_DICT)) {
        uint64_t word;
        if ((rc = asc_mem_read_u64(&t->mem, obj - ASC_MANAGED_DICT_OFFSET, &word)) < 0) return rc;
        if (t->minor == 12 && (word & 1))
            /* 3.12 PyDictOrValues: a values pointer stored minus one, so the low bit tags it
             * (_PyDictOrValues_GetValues in Include/internal/pycore_object.h adds 1 back). */
            return asc__values_get(t, type, word + 1, name, val);
        if (word) {
            dict = word;
        } else if (t->minor == 11) {
            uint64_t values;
            if ((rc = asc_mem_read_u64(&t->mem, obj - ASC_MANAGED_VALUES_OFFSET_311, &values)) < 0)
                return rc;
            if (!values) return AIOSCOPE_ENOENT;
            return asc__values_get(t, type, values, name, val);
        } else if (t->minor >= 13 && (flags & ASC_TPFLAGS_INLINE_VALUES)) {
            /* 3.13: the values live inline after the object, at tp_basicsize; their `valid`
             * byte (PyDictValues: capacity, size, embedded, valid) says whether to use them. */
            int64_t basicsize;
            uint8_t hdr[4];
            if ((rc = asc_mem_read(&t->mem, type + (uint64_t)L->type_basicsize, &basicsize, 8)) < 0)
                return rc;
            if (basicsize <= 0 || basicsize > 4096) return AIOSCOPE_EBADDATA;
            uint64_t values = obj + (uint64_t)basicsize;
            if ((rc = asc_mem_read(&t->mem, values, hdr, sizeof hdr)) < 0) return rc;
            if (!hdr[3]) return AIOSCOPE_ENOENT;
            return asc__values_get(t, type, values, name, val);
        } else {
            return AIOSCOPE_ENOENT;
        }
    } else if (dictoffset > 0 && dictoffset < 4096) {
        if ((rc = asc_mem_read_u64(&t->mem, obj + (uint64_t)dictoffset, &dict)) < 0) return rc;
    } else {
        return AIOSCOPE_ENOENT;
    }
    if (!dict) return AIOSCOPE_ENOENT;
    return asc_dict_get(t, dict, name, val);
}
