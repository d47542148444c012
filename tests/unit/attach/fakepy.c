/* The fake CPython heap of the attach unit tests (see fakepy.h). */
#include "fakepy.h"

#include <stdlib.h>
#include <string.h>

#include "aioscope/error.h"

enum { FT_CODE, FT_FRAME, FT_CORO, FT_GEN, FT_UNICODE, FT_LONG, FT_DICT, FT_SET, FT_WEAKREF, FT_LIST,
       FT_TUPLE, FT_BYTES, FT_METHOD, FT_TYPE, FT_COUNT };

static void fp_init_types(fakepy *fp);

void fp_init(fakepy *fp, uint32_t version) {
    memset(fp, 0, sizeof *fp);
    fp->version = version;
    fp->minor = (int)((version >> 16) & 0xff);
    fp->L = asc_layout_find(version);
    fp_init_types(fp);
}

void fp_init_arena(fakepy *fp, uint32_t version, void *mem, size_t cap) {
    memset(fp, 0, sizeof *fp);
    fp->arena = mem;
    fp->arena_cap = cap;
    fp->version = version;
    fp->minor = (int)((version >> 16) & 0xff);
    fp->L = asc_layout_find(version);
    fp_init_types(fp);
}

int fp_image_read(void *ctx, uint64_t addr, void *buf, size_t len) {
    const fp_image *im = ctx;
    if (addr < FP_IMAGE_BASE || addr - FP_IMAGE_BASE > im->len || len > im->len - (addr - FP_IMAGE_BASE))
        return AIOSCOPE_EFAULT;
    memcpy(buf, im->data + (addr - FP_IMAGE_BASE), len);
    return 0;
}

static void fp_init_types(fakepy *fp) {
    uint64_t *slots[FT_COUNT] = {&fp->types.code, &fp->types.frame, &fp->types.coro, &fp->types.gen,
                                 &fp->types.unicode, &fp->types.long_, &fp->types.dict, &fp->types.set,
                                 &fp->types.weakref, &fp->types.list, &fp->types.tuple, &fp->types.bytes,
                                 &fp->types.method, &fp->types.type};
    for (int i = 0; i < FT_COUNT; i++) *slots[i] = fp_alloc(fp, 512);
}


void fp_free(fakepy *fp) {
    for (size_t i = 0; i < fp->nregions && !fp->arena; i++) free(fp->regions[i].base);
    fp->nregions = 0;
}

uint64_t fp_alloc(fakepy *fp, size_t len) {
    if (fp->nregions >= FP_MAX_REGIONS) abort();
    if (fp->arena) {
        size_t need = (len + 48 + 15) & ~(size_t)15;
        if (need > fp->arena_cap - fp->arena_used) abort();
        uint8_t *a = fp->arena + fp->arena_used;
        fp->arena_used += need;
        memset(a, 0, need);
        fp->regions[fp->nregions].base = a;
        fp->regions[fp->nregions].len = len + 48;
        fp->nregions++;
        return (uint64_t)(uintptr_t)(a + 32);
    }
    /* 16 spare bytes before the object: 3.11+ managed-dict words live at negative offsets. */
    uint8_t *p = aligned_alloc(16, (len + 16 + 32 + 15) & ~(size_t)15);
    if (!p) abort();
    memset(p, 0, len + 48);
    fp->regions[fp->nregions].base = p;
    fp->regions[fp->nregions].len = len + 48;
    fp->nregions++;
    return (uint64_t)(uintptr_t)(p + 32);
}

void fp_truncate(fakepy *fp, uint64_t addr, size_t len) {
    for (size_t i = 0; i < fp->nregions; i++)
        if ((uint64_t)(uintptr_t)fp->regions[i].base + 32 == addr) fp->regions[i].len = 32 + len;
}

void fp_put64(uint64_t addr, int32_t off, uint64_t v) { memcpy((void *)(uintptr_t)(addr + (uint64_t)(int64_t)off), &v, 8); }
void fp_put32(uint64_t addr, int32_t off, uint32_t v) { memcpy((void *)(uintptr_t)(addr + (uint64_t)(int64_t)off), &v, 4); }
void fp_put8(uint64_t addr, int32_t off, uint8_t v) { memcpy((void *)(uintptr_t)(addr + (uint64_t)(int64_t)off), &v, 1); }

int fp_read(void *ctx, uint64_t addr, void *buf, size_t len) {
    fakepy *fp = ctx;
    fp->reads++;
    for (size_t i = 0; i < fp->nregions; i++) {
        uint64_t b = (uint64_t)(uintptr_t)fp->regions[i].base;
        if (addr >= b && addr - b <= fp->regions[i].len && len <= fp->regions[i].len - (addr - b)) {
            memcpy(buf, (void *)(uintptr_t)addr, len);
            return 0;
        }
    }
    return AIOSCOPE_EFAULT;
}

static void fp_settype(uint64_t obj, uint64_t type) {
    fp_put64(obj, 0, 1);    /* ob_refcnt */
    fp_put64(obj, 8, type); /* ob_type */
}

uint64_t fp_str(fakepy *fp, const char *s) {
    size_t n = strlen(s);
    uint64_t o = fp_alloc(fp, (size_t)fp->L->sizeof_compact + n + 1);
    fp_settype(o, fp->types.unicode);
    fp_put64(o, fp->L->ascii_length, n);
    /* kind 1 (<< 2), compact (<< 5), ascii (<< 6), ready (<< 7, ignored by 3.12+) */
    fp_put32(o, fp->L->ascii_state, (1u << 2) | (1u << 5) | (1u << 6) | (1u << 7));
    memcpy((void *)(uintptr_t)(o + (uint64_t)fp->L->sizeof_ascii), s, n + 1);
    return o;
}

uint64_t fp_bytes(fakepy *fp, const void *data, size_t len) {
    uint64_t o = fp_alloc(fp, (size_t)fp->L->bytes_sval + len + 1);
    fp_settype(o, fp->types.bytes);
    fp_put64(o, fp->L->var_size, len);
    memcpy((void *)(uintptr_t)(o + (uint64_t)fp->L->bytes_sval), data, len);
    return o;
}

uint64_t fp_long(fakepy *fp, int64_t v) {
    uint64_t o = fp_alloc(fp, 64);
    fp_settype(o, fp->types.long_);
    if (fp->minor >= 12) fp_put64(o, fp->L->long_size, v ? (1u << 3) : 1);
    else fp_put64(o, fp->L->long_size, v ? 1 : 0);
    fp_put32(o, fp->L->long_digit, (uint32_t)v);
    return o;
}

uint64_t fp_code(fakepy *fp, const char *file, const char *name, int first) {
    const asc_layout *L = fp->L;
    /* [0,4) -> first, [4,10) -> first+2, [10,20) -> first+5 (byte offsets). */
    static const uint8_t lnotab[] = {4, 2, 6, 3};             /* (addr incr, line incr) */
    static const uint8_t pep626[] = {4, 0, 6, 2, 10, 3};      /* (length, line delta) */
    static const uint8_t pep657[] = {0x80 | 13 << 3 | 1, 0,   /* no-column entries: 2 units, +0 */
                                     0x80 | 13 << 3 | 2, 4,   /* 3 units, +2 (zigzag 4) */
                                     0x80 | 13 << 3 | 4, 6};  /* 5 units, +3 */
    const uint8_t *lt = fp->minor <= 9 ? lnotab : fp->minor == 10 ? pep626 : pep657;
    size_t ltlen = fp->minor <= 9 ? sizeof lnotab : fp->minor == 10 ? sizeof pep626 : sizeof pep657;
    size_t units = 10;
    size_t size = (size_t)(L->code_code_adaptive > 0 ? L->code_code_adaptive : 200) + units * 2 + 8;
    uint64_t o = fp_alloc(fp, size < 256 ? 256 : size);
    fp_settype(o, fp->types.code);
    fp_put32(o, L->code_firstlineno, (uint32_t)first);
    fp_put64(o, L->code_filename, fp_str(fp, file));
    fp_put64(o, L->code_name, fp_str(fp, name));
    if (L->code_qualname >= 0) fp_put64(o, L->code_qualname, fp_str(fp, name));
    fp_put64(o, L->code_linetable, fp_bytes(fp, lt, ltlen));
    if (fp->minor <= 10) {
        uint8_t code[20] = {0};
        fp_put64(o, L->code_code, fp_bytes(fp, code, sizeof code));
    } else {
        fp_put64(o, L->var_size, units);
    }
    return o;
}

uint64_t fp_frame(fakepy *fp, uint64_t code, int off, uint64_t previous) {
    const asc_layout *L = fp->L;
    uint64_t f = fp_alloc(fp, 256);
    if (fp->minor <= 10) {
        fp_settype(f, fp->types.frame);
        fp_put64(f, L->frame_back, previous);
        fp_put64(f, L->frame_code, code);
        fp_put32(f, L->frame_lasti, (uint32_t)(fp->minor == 10 ? off / 2 : off));
    } else {
        fp_put64(f, L->iframe_code, code);
        fp_put64(f, L->iframe_previous, previous);
        fp_put64(f, L->iframe_instr, code + (uint64_t)L->code_code_adaptive + (uint64_t)off);
    }
    return f;
}

uint64_t fp_tstate(fakepy *fp, uint64_t frame) {
    const asc_layout *L = fp->L;
    uint64_t ts = fp_alloc(fp, 1024);
    if (fp->minor == 11 || fp->minor == 12) {
        uint64_t cframe = fp_alloc(fp, 64);
        fp_put64(ts, L->tstate_cframe, cframe);
        fp_put64(cframe, L->cframe_current_frame, frame);
    } else {
        fp_put64(ts, L->tstate_frame, frame);
    }
    return ts;
}

uint64_t fp_dict(fakepy *fp, const char *const *keys, const uint64_t *vals, size_t n) {
    const asc_layout *L = fp->L;
    size_t size = 8;
    while (size < n * 2) size *= 2;
    size_t esize = (size_t)L->sizeof_dict_key_entry; /* a general (combined, hashed) table */
    /* Index width as CPython picks it: 1 byte up to 0xff slots, 2 up to 0xffff. */
    size_t ix = size <= 0xff ? 1 : 2;
    uint64_t k = fp_alloc(fp, (size_t)L->keys_indices + size * ix + n * esize);
    if (fp->minor <= 10) {
        fp_put64(k, L->keys_size, size);
    } else {
        int log2 = 0;
        while ((1u << log2) < size) log2++;
        fp_put8(k, L->keys_log2_size, (uint8_t)log2);
        fp_put8(k, L->keys_log2_index_bytes, (uint8_t)(log2 + (ix == 2)));
        fp_put8(k, L->keys_kind, 0); /* DICT_KEYS_GENERAL */
    }
    fp_put64(k, L->keys_nentries, n);
    uint64_t ents = k + (uint64_t)L->keys_indices + size * ix;
    for (size_t i = 0; i < n; i++) {
        fp_put64(ents, (int32_t)(i * esize + 8), fp_str(fp, keys[i]));
        fp_put64(ents, (int32_t)(i * esize + 16), vals[i]);
    }
    uint64_t d = fp_alloc(fp, 64);
    fp_settype(d, fp->types.dict);
    fp_put64(d, L->dict_used, n);
    fp_put64(d, L->dict_keys, k);
    return d;
}

uint64_t fp_set(fakepy *fp, const uint64_t *items, size_t n, size_t slots) {
    const asc_layout *L = fp->L;
    uint64_t table = fp_alloc(fp, slots * (size_t)L->sizeof_setentry);
    for (size_t i = 0; i < n && i < slots; i++) fp_put64(table, (int32_t)(i * (size_t)L->sizeof_setentry), items[i]);
    uint64_t s = fp_alloc(fp, 256);
    fp_settype(s, fp->types.set);
    fp_put64(s, L->set_used, n);
    fp_put64(s, L->set_mask, slots - 1);
    fp_put64(s, L->set_table, table);
    return s;
}

uint64_t fp_type(fakepy *fp, const char *name, int64_t dictoffset) {
    uint64_t t = fp_alloc(fp, 1024);
    size_t n = strlen(name);
    uint64_t str = fp_alloc(fp, n + 1);
    memcpy((void *)(uintptr_t)str, name, n + 1);
    fp_settype(t, fp->types.type);
    fp_put64(t, fp->L->type_name, str);
    fp_put64(t, fp->L->type_dictoffset, (uint64_t)dictoffset);
    return t;
}

uint64_t fp_instance(fakepy *fp, uint64_t type, uint64_t dict) {
    uint64_t o = fp_alloc(fp, 64);
    fp_settype(o, type);
    fp_put64(o, 16, dict);
    return o;
}

uint64_t fp_weakref(fakepy *fp, uint64_t obj) {
    uint64_t w = fp_alloc(fp, 64);
    fp_settype(w, fp->types.weakref);
    fp_put64(w, fp->L->wr_object, obj);
    return w;
}

uint64_t fp_coro(fakepy *fp, uint64_t code, int off, uint64_t awaited) {
    const asc_layout *L = fp->L;
    uint64_t c = fp_alloc(fp, 512);
    uint64_t slot = fp_alloc(fp, 16); /* a one-item value stack for the awaited object */
    fp_put64(slot, 0, awaited);
    fp_settype(c, fp->types.coro);
    uint64_t code_start;
    if (fp->minor <= 10) {
        uint64_t co_code;
        memcpy(&co_code, (void *)(uintptr_t)(code + (uint64_t)L->code_code), 8);
        code_start = co_code + (uint64_t)L->bytes_sval;
        uint64_t f = fp_frame(fp, code, off, 0);
        fp_put64(c, L->coro_frame, f);
        if (awaited) {
            /* _PyGen_yf: YIELD_FROM (72) after the last instruction, awaited on the stack top. */
            fp_put8(code_start, off + 2, 72);
            if (fp->minor == 10) {
                fp_put64(f, L->frame_valuestack, slot);
                fp_put32(f, L->frame_stackdepth, 1);
            } else {
                fp_put64(f, L->frame_stacktop, slot + 8);
            }
        }
        return c;
    }
    code_start = code + (uint64_t)L->code_code_adaptive;
    uint64_t f = c + (uint64_t)L->coro_iframe;
    fp_put64(f, L->iframe_code, code);
    fp_put64(f, L->iframe_instr, code_start + (uint64_t)off);
    fp_put8(c, L->coro_frame_state, (uint8_t)-1); /* suspended (3.13: in yield-from) */
    if (awaited) {
        if (fp->minor < 13) {
            fp_put8(code_start, off + 2, 151); /* RESUME with oparg 2: after an await */
            fp_put8(code_start, off + 3, 2);
        }
        fp_put32(f, L->iframe_stacktop, 1);
        fp_put64(f, L->iframe_localsplus, awaited);
    } else if (fp->minor >= 13) {
        fp_put8(c, L->coro_frame_state, (uint8_t)-2); /* FRAME_SUSPENDED */
    }
    return c;
}

uint64_t fp_task(fakepy *fp, uint64_t task_type, const char *name, uint64_t coro, uint64_t fut_waiter) {
    const asc_layout *L = fp->L;
    uint64_t t = fp_alloc(fp, 256);
    fp_settype(t, task_type);
    fp_put32(t, L->task_state, 0);
    fp_put64(t, L->task_coro, coro);
    fp_put64(t, L->task_name, fp_str(fp, name));
    fp_put64(t, L->task_fut_waiter, fut_waiter);
    return t;
}

uint64_t fp_runtime(fakepy *fp, uint64_t thread_frame, uint64_t task_type, const uint64_t *tasks,
                    size_t ntasks, uint64_t *set_out) {
    const asc_layout *L = fp->L;
    uint64_t refs[64];
    size_t slots = 8;
    while (slots < ntasks * 2) slots *= 2;
    for (size_t i = 0; i < ntasks && i < 64; i++) refs[i] = fp_weakref(fp, tasks[i]);
    uint64_t set = fp_set(fp, refs, ntasks < 64 ? ntasks : 64, slots);
    const char *wk[] = {"data"};
    uint64_t wv[] = {set};
    uint64_t weakset = fp_instance(fp, fp_type(fp, "WeakSet", 16), fp_dict(fp, wk, wv, 1));
    const char *ak[] = {"Task", fp->minor <= 11 ? "_all_tasks" : "_scheduled_tasks"};
    uint64_t av[] = {task_type, weakset};
    uint64_t module = fp_alloc(fp, 64);
    fp_put64(module, L->module_dict, fp_dict(fp, ak, av, 2));
    const char *mk[] = {"sys", "_asyncio"};
    uint64_t mv[] = {fp_str(fp, "not a module"), module};
    uint64_t interp = fp_alloc(fp, (size_t)L->interp_modules + 64);
    fp_put64(interp, L->interp_modules, fp_dict(fp, mk, mv, 2));
    fp_put64(interp, L->interp_threads_head, fp_tstate(fp, thread_frame));
    uint64_t runtime = fp_alloc(fp, (size_t)L->runtime_interpreters_head + 64);
    fp_put64(runtime, L->runtime_interpreters_head, interp);
    if (set_out) *set_out = set;
    return runtime;
}
