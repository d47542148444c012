/* The object readers of src/attach/pyobj.c on fake objects of every version: str (ASCII and
 * UCS-2/4 to UTF-8, cut at the buffer), int, dict lookups (combined tables of each version's
 * index width), sets, and instance attributes through every dict layout CPython uses — a
 * __dict__ slot (3.8-3.13), 3.11's managed dict / values pointers, 3.12's tagged values and
 * 3.13's inline values — with corrupt variants refused. */
#include <stdint.h>
#include <string.h>

#include "aioscope/error.h"
#include "attach/pyobj.h"
#include "attach/target.h"
#include "fakepy.h"
#include "test.h"

static const uint32_t versions[] = {0x030812f0, 0x030912f0, 0x030a0df0, 0x030b07f0, 0x030c01f0, 0x030d00f0};
#define NVERSIONS (sizeof versions / sizeof versions[0])

static aioscope_target *open_fake(fakepy *fp) {
    aioscope_target *t;
    CHECK_EQ_INT(asc_target_open_mem(fp_read, fp, fp->version, 0x1000, &fp->types, &t), 0);
    return t;
}

TEST(attach_read_str_kinds_and_cuts) {
    fakepy fp;
    fp_init(&fp, 0x030c01f0);
    aioscope_target *t = open_fake(&fp);
    char out[16];
    uint64_t s = fp_str(&fp, "hello");
    CHECK_EQ_INT(asc_read_str(t, s, out, sizeof out), 0);
    CHECK_EQ_STR(out, "hello");
    /* A UCS-2 string (kind 2, compact, not ASCII): "é€" as UTF-8. */
    uint64_t u = fp_alloc(&fp, 128);
    fp_put64(u, 8, fp.types.unicode);
    fp_put64(u, fp.L->ascii_length, 2);
    fp_put32(u, fp.L->ascii_state, (2u << 2) | (1u << 5));
    fp_put32(u, fp.L->sizeof_compact, 0x20ac00e9); /* U+00E9, U+20AC */
    CHECK_EQ_INT(asc_read_str(t, u, out, sizeof out), 0);
    CHECK_EQ_STR(out, "\xc3\xa9\xe2\x82\xac");
    /* Cut on a character boundary when the buffer is short. */
    CHECK_EQ_INT(asc_read_str(t, u, out, 4), 0);
    CHECK_EQ_STR(out, "\xc3\xa9");
    /* Not a str; an absurd length; a legacy (non-compact) string. */
    CHECK_EQ_INT(asc_read_str(t, fp_long(&fp, 3), out, sizeof out), AIOSCOPE_EBADDATA);
    fp_put64(u, fp.L->ascii_length, (uint64_t)-5);
    CHECK_EQ_INT(asc_read_str(t, u, out, sizeof out), AIOSCOPE_EBADDATA);
    fp_put64(u, fp.L->ascii_length, 2);
    fp_put32(u, fp.L->ascii_state, 2u << 2);
    CHECK_EQ_INT(asc_read_str(t, u, out, sizeof out), AIOSCOPE_EBADDATA);
    aioscope_target_close(t);
    fp_free(&fp);
}

TEST(attach_read_long_every_version) {
    for (size_t v = 0; v < NVERSIONS; v++) {
        fakepy fp;
        fp_init(&fp, versions[v]);
        aioscope_target *t = open_fake(&fp);
        int64_t x = -1;
        CHECK_EQ_INT(asc_read_long(t, fp_long(&fp, 42), &x), 0);
        CHECK_EQ_INT(x, 42);
        CHECK_EQ_INT(asc_read_long(t, fp_long(&fp, 0), &x), 0);
        CHECK_EQ_INT(x, 0);
        CHECK_EQ_INT(asc_read_long(t, fp_str(&fp, "42"), &x), AIOSCOPE_EBADDATA);
        aioscope_target_close(t);
        fp_free(&fp);
    }
}

TEST(attach_dict_get_every_version_and_size) {
    for (size_t v = 0; v < NVERSIONS; v++) {
        fakepy fp;
        fp_init(&fp, versions[v]);
        aioscope_target *t = open_fake(&fp);
        /* 300 entries: 3.8-3.10 tables of 1024 slots use 2-byte indices. */
        static char names[300][16];
        const char *keys[300];
        uint64_t vals[300];
        for (int i = 0; i < 300; i++) {
            snprintf(names[i], sizeof names[i], "key%d", i);
            keys[i] = names[i];
            vals[i] = fp_long(&fp, i);
        }
        uint64_t d = fp_dict(&fp, keys, vals, 300);
        uint64_t got;
        int64_t x;
        CHECK_EQ_INT(asc_dict_get(t, d, "key299", &got), 0);
        CHECK_EQ_INT(asc_read_long(t, got, &x), 0);
        CHECK_EQ_INT(x, 299);
        CHECK_EQ_INT(asc_dict_get(t, d, "nokey", &got), AIOSCOPE_ENOENT);
        /* A corrupt entry count is refused before anything is allocated. */
        uint64_t keys_obj;
        memcpy(&keys_obj, (void *)(uintptr_t)(d + (uint64_t)fp.L->dict_keys), 8);
        fp_put64(keys_obj, fp.L->keys_nentries, (uint64_t)1 << 40);
        CHECK_EQ_INT(asc_dict_get(t, d, "key1", &got), AIOSCOPE_EBADDATA);
        /* Not a dict. */
        CHECK_EQ_INT(asc_dict_get(t, fp_str(&fp, "x"), "key1", &got), AIOSCOPE_EBADDATA);
        aioscope_target_close(t);
        fp_free(&fp);
    }
}

static int count_cb(void *ctx, uint64_t item) {
    (void)item;
    (*(int *)ctx)++;
    return 0;
}

TEST(attach_set_foreach_bounds) {
    fakepy fp;
    fp_init(&fp, 0x030b07f0);
    aioscope_target *t = open_fake(&fp);
    uint64_t items[5];
    for (int i = 0; i < 5; i++) items[i] = fp_long(&fp, i);
    uint64_t s = fp_set(&fp, items, 5, 8);
    int n = 0;
    CHECK_EQ_INT(asc_set_foreach(t, s, count_cb, &n), 0);
    CHECK_EQ_INT(n, 5);
    fp_put64(s, fp.L->set_mask, 6); /* not a power of two minus one */
    CHECK_EQ_INT(asc_set_foreach(t, s, count_cb, &n), AIOSCOPE_EBADDATA);
    fp_put64(s, fp.L->set_mask, 1023); /* more slots than the table holds: a failed read */
    CHECK_EQ_INT(asc_set_foreach(t, s, count_cb, &n), AIOSCOPE_EFAULT);
    aioscope_target_close(t);
    fp_free(&fp);
}

/* A type's shared (cached) keys: a unicode-kind keys object listing names. */
static uint64_t cached_keys(fakepy *fp, const char *const *names, size_t n) {
    const asc_layout *L = fp->L;
    uint64_t k = fp_alloc(fp, (size_t)L->keys_indices + 8 + n * 16);
    fp_put8(k, L->keys_log2_size, 3);
    fp_put8(k, L->keys_log2_index_bytes, 3); /* 8 one-byte indices */
    fp_put8(k, L->keys_kind, 2);             /* DICT_KEYS_SPLIT: {key, value} entries */
    fp_put64(k, L->keys_nentries, n);
    uint64_t ents = k + (uint64_t)L->keys_indices + 8;
    for (size_t i = 0; i < n; i++) fp_put64(ents, (int32_t)(i * 16), fp_str(fp, names[i]));
    return k;
}

TEST(attach_getattr_every_dict_layout) {
    static const char *const names[] = {"_remove", "data", "_pending"};
    for (size_t v = 0; v < NVERSIONS; v++) {
        fakepy fp;
        fp_init(&fp, versions[v]);
        const asc_layout *L = fp.L;
        aioscope_target *t = open_fake(&fp);
        uint64_t want = fp_str(&fp, "the data"), got = 0;
        char out[32];
        /* A __dict__ slot at tp_dictoffset, in every version. */
        const char *dk[] = {"data"};
        uint64_t dv[] = {want};
        uint64_t o = fp_instance(&fp, fp_type(&fp, "WeakSet", 16), fp_dict(&fp, dk, dv, 1));
        CHECK_EQ_INT(asc_obj_getattr(t, o, "data", &got), 0);
        CHECK_EQ_INT(got, want);
        CHECK_EQ_INT(asc_obj_getattr(t, o, "other", &got), AIOSCOPE_ENOENT);
        if (fp.minor >= 11) {
            /* Managed dicts: the values live outside any dict object, keys are the type's. */
            uint64_t type = fp_type(&fp, "WeakSet", 0);
            fp_put64(type, L->type_flags, (1u << 4) | (fp.minor >= 13 ? (1u << 2) : 0));
            fp_put64(type, L->heaptype_cached_keys, cached_keys(&fp, names, 3));
            fp_put64(type, L->type_basicsize, 32);
            uint64_t obj = fp_alloc(&fp, 128);
            fp_put64(obj, 8, type);
            uint64_t values = fp.minor >= 13 ? obj + 32 : fp_alloc(&fp, 64);
            int32_t vo = L->dictvalues_values > 0 ? L->dictvalues_values : 0;
            fp_put64(values, vo + 8, want); /* index 1: "data" */
            if (fp.minor == 11) {
                fp_put64(obj, -32, values);   /* _PyObject_ValuesPointer */
            } else if (fp.minor == 12) {
                fp_put64(obj, -24, values - 1); /* PyDictOrValues, tagged */
            } else {
                fp_put8(values, 3, 1);          /* PyDictValues.valid */
            }
            CHECK_EQ_INT(asc_obj_getattr(t, obj, "data", &got), 0);
            CHECK_EQ_INT(got, want);
            CHECK_EQ_INT(asc_read_str(t, got, out, sizeof out), 0);
            CHECK_EQ_STR(out, "the data");
            CHECK_EQ_INT(asc_obj_getattr(t, obj, "absent", &got), AIOSCOPE_ENOENT);
            if (fp.minor >= 13) {
                /* Values marked invalid (the dict was materialised): refused, not misread. */
                fp_put8(values, 3, 0);
                CHECK_EQ_INT(asc_obj_getattr(t, obj, "data", &got), AIOSCOPE_ENOENT);
                fp_put8(values, 3, 1);
            }
            /* The type's keys pointer torn into garbage: an error. */
            fp_put64(type, L->heaptype_cached_keys, 0x10);
            CHECK(asc_obj_getattr(t, obj, "data", &got) < 0);
        }
        aioscope_target_close(t);
        fp_free(&fp);
    }
}
