/* Frames, code objects, line tables and coroutines in target memory.
 *
 * CPython changed all of these between 3.8 and 3.13: frames became _PyInterpreterFrame in 3.11
 * (embedded in coroutines, chained through `previous`, with C-stack-owned shim frames from
 * 3.12), line tables changed format twice (lnotab, PEP 626, PEP 657), and the way to tell what a
 * suspended coroutine awaits changed three times. Each branch below names the version it
 * handles and the CPython function it mirrors. */
#include "attach/frames.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aioscope/error.h"
#include "attach/pyobj.h"

/* Opcode numbers (YIELD_FROM 3.8-3.10; RESUME, 3.11's RESUME_QUICK and 3.12's INSTRUMENTED_RESUME),
 * the C-stack frame owner (3.12+) and the generator frame states (3.11+) come from the generated
 * layout table (L->op_*, L->frame_*), read from each interpreter's opcode.h and DWARF. */

static int asc__max_field(const int32_t *offs, size_t n) {
    int m = 0;
    for (size_t i = 0; i < n; i++)
        if (offs[i] > m) m = offs[i];
    return m;
}

int asc_code_info(aioscope_target *t, uint64_t code, const struct asc_codeinfo **out) {
    const asc_layout *L = t->L;
    struct asc_codeinfo *ci = asc_cache_code_find(t->cache, code);
    if (ci) {
        *out = ci;
        return 0;
    }
    int rc = asc_obj_check(t, code, t->types.code);
    if (rc < 0) return rc;
    const int32_t fields[] = {L->code_firstlineno, L->code_filename, L->code_name,
                              L->code_qualname,    L->code_linetable, L->code_code, L->var_size};
    size_t hdr_len = (size_t)asc__max_field(fields, sizeof fields / sizeof fields[0]) + 8;
    uint8_t hdr[256];
    if (hdr_len > sizeof hdr) return AIOSCOPE_EBADDATA;
    if ((rc = asc_mem_read(&t->mem, code, hdr, hdr_len)) < 0) return rc;
    uint64_t filename, name, linetable;
    int32_t firstlineno;
    memcpy(&firstlineno, hdr + L->code_firstlineno, 4);
    memcpy(&filename, hdr + L->code_filename, 8);
    memcpy(&name, hdr + (L->code_qualname >= 0 ? L->code_qualname : L->code_name), 8);
    memcpy(&linetable, hdr + L->code_linetable, 8);
    ci = calloc(1, sizeof *ci);
    char buf[ASC_MAX_STR];
    if (!ci) return AIOSCOPE_ENOMEM;
    ci->addr = code;
    ci->last_line = -1; /* no memo yet */
    ci->firstlineno = firstlineno;
    ci->has_qualname = L->code_qualname >= 0;
    if ((rc = asc_read_str(t, filename, buf, sizeof buf)) < 0) goto fail;
    if (!(ci->file = strdup(buf))) goto nomem;
    if ((rc = asc_read_str(t, name, buf, sizeof buf)) < 0) goto fail;
    if (!(ci->name = strdup(buf))) goto nomem;
    if ((rc = asc_read_bytes(t, linetable, &ci->linetable, &ci->linetable_len, ASC_MAX_LINETABLE)) < 0)
        goto fail;
    if (t->minor <= 10) {
        /* co_code is a bytes object holding the bytecode. */
        uint64_t co_code;
        int64_t size;
        memcpy(&co_code, hdr + L->code_code, 8);
        if ((rc = asc_obj_check(t, co_code, t->types.bytes)) < 0) goto fail;
        if ((rc = asc_mem_read(&t->mem, co_code + (uint64_t)L->var_size, &size, 8)) < 0) goto fail;
        if (size < 0 || size > (1 << 26)) { rc = AIOSCOPE_EBADDATA; goto fail; }
        ci->code_start = co_code + (uint64_t)L->bytes_sval;
        ci->code_len = (size_t)size;
    } else {
        /* 3.11+: the code object is a var-object whose ob_size counts 2-byte code units, stored
         * inline from co_code_adaptive. */
        int64_t units;
        memcpy(&units, hdr + L->var_size, 8);
        if (units < 0 || units > (1 << 25)) { rc = AIOSCOPE_EBADDATA; goto fail; }
        ci->code_start = code + (uint64_t)L->code_code_adaptive;
        ci->code_len = (size_t)units * 2;
    }
    if ((rc = asc_cache_code_add(t->cache, ci)) < 0) return rc; /* frees ci */
    *out = ci;
    return 0;
nomem:
    rc = AIOSCOPE_ENOMEM;
fail:
    asc_codeinfo_free(ci);
    return rc;
}

/* Signed varint of the 3.11+ location table: 6 bits per byte, 0x40 continues, low bit sign
 * (Objects/codeobject.c scan_varint / scan_signed_varint). */
static int64_t asc__svarint(const uint8_t *p, size_t len, size_t *at) {
    uint64_t val = 0;
    unsigned shift = 0;
    while (*at < len && shift < 60) {
        uint8_t b = p[(*at)++];
        val |= (uint64_t)(b & 63) << shift;
        shift += 6;
        if (!(b & 64)) break;
    }
    return (val & 1) ? -(int64_t)(val >> 1) : (int64_t)(val >> 1);
}

static int asc__addr2line(const struct asc_codeinfo *ci, int minor, int64_t addrq);

int asc_code_addr2line(const struct asc_codeinfo *ci, int minor, int64_t addrq) {
    struct asc_codeinfo *mut = (struct asc_codeinfo *)ci; /* the memo is not part of its value */
    if (ci->last_line >= 0 && ci->last_addrq == addrq && addrq >= 0) return ci->last_line;
    int line = asc__addr2line(ci, minor, addrq);
    mut->last_addrq = addrq;
    mut->last_line = line;
    return line;
}

static int asc__addr2line(const struct asc_codeinfo *ci, int minor, int64_t addrq) {
    const uint8_t *lt = ci->linetable;
    size_t len = ci->linetable_len;
    int64_t line = ci->firstlineno;
    if (addrq < 0) return ci->firstlineno > 0 ? ci->firstlineno : 0;
    if (minor <= 9) {
        /* co_lnotab: (address increment, signed line increment) byte pairs
         * (Objects/codeobject.c PyCode_Addr2Line, 3.8/3.9). */
        int64_t addr = 0;
        for (size_t i = 0; i + 1 < len; i += 2) {
            addr += lt[i];
            if (addr > addrq) break;
            line += (int8_t)lt[i + 1];
        }
        return line > 0 && line < (1 << 30) ? (int)line : 0;
    }
    if (minor == 10) {
        /* PEP 626 table: (byte length, signed line delta) pairs, delta -128 = no line
         * (Objects/lnotab_notes.txt of 3.10). */
        int64_t start, end = 0;
        for (size_t i = 0; i + 1 < len; i += 2) {
            int8_t ldelta = (int8_t)lt[i + 1];
            start = end;
            end = start + lt[i];
            int cur = -1;
            if (ldelta != -128) {
                line += ldelta;
                cur = (int)line;
            }
            if (start <= addrq && addrq < end) return cur > 0 ? cur : 0;
        }
        return 0;
    }
    /* PEP 657 location table (Objects/locations.md): each entry starts with a byte with bit 7
     * set; bits 3-6 the kind, bits 0-2 the length in code units minus one. Kind 15: no
     * location; 14 (long) and 13 (no column): a signed varint line delta follows; 10-12: line
     * delta kind-10; 0-9: same line. */
    int64_t addr = 0;
    size_t i = 0;
    while (i < len) {
        uint8_t b = lt[i];
        if (!(b & 0x80)) {
            i++; /* not an entry start: resynchronise */
            continue;
        }
        unsigned kind = (b >> 3) & 15;
        int64_t end = addr + ((b & 7) + 1) * 2;
        size_t at = i + 1;
        if (kind == 13 || kind == 14) line += asc__svarint(lt, len, &at);
        else if (kind >= 10 && kind <= 12) line += kind - 10;
        if (addr <= addrq && addrq < end) return kind == 15 || line <= 0 || line >= (1 << 30) ? 0 : (int)line;
        addr = end;
        for (i++; i < len && !(lt[i] & 0x80); i++) {
        }
    }
    return 0;
}

int asc_thread_top_frame(aioscope_target *t, uint64_t tstate, uint64_t *frame) {
    const asc_layout *L = t->L;
    *frame = 0;
    if (!asc_mem_plausible_obj(tstate)) return AIOSCOPE_EBADDATA;
    if (t->minor == 11 || t->minor == 12) {
        /* tstate->cframe->current_frame (the _PyCFrame of the innermost C-level eval). */
        uint64_t cframe;
        int rc = asc_mem_read_u64(&t->mem, tstate + (uint64_t)L->tstate_cframe, &cframe);
        if (rc < 0) return rc;
        if (!cframe) return 0;
        if (!asc_mem_plausible_obj(cframe)) return AIOSCOPE_EBADDATA;
        return asc_mem_read_u64(&t->mem, cframe + (uint64_t)L->cframe_current_frame, frame);
    }
    /* 3.8-3.10 tstate->frame, 3.13 tstate->current_frame. */
    return asc_mem_read_u64(&t->mem, tstate + (uint64_t)L->tstate_frame, frame);
}

/* Location of an old-style frame object (3.8-3.10) and its f_back. */
static int asc__old_frame(aioscope_target *t, uint64_t frame, asc_loc *loc, uint64_t *back,
                          int32_t *lasti_out) {
    const asc_layout *L = t->L;
    int rc = asc_obj_check(t, frame, t->types.frame);
    if (rc < 0) return rc;
    uint8_t hdr[128];
    size_t hdr_len = (size_t)(L->frame_lasti > L->frame_code ? L->frame_lasti : L->frame_code) + 8;
    if (hdr_len > sizeof hdr) return AIOSCOPE_EBADDATA;
    if ((rc = asc_mem_read(&t->mem, frame, hdr, hdr_len)) < 0) return rc;
    uint64_t code;
    int32_t lasti;
    memcpy(back, hdr + L->frame_back, 8);
    memcpy(&code, hdr + L->frame_code, 8);
    memcpy(&lasti, hdr + L->frame_lasti, 4);
    if ((rc = asc_code_info(t, code, &loc->ci)) < 0) return rc;
    /* f_lasti counts bytes in 3.8/3.9 and code units in 3.10 (-1: not started). */
    int64_t addrq = lasti < 0 ? -1 : (t->minor == 10 ? (int64_t)lasti * 2 : lasti);
    loc->line = asc_code_addr2line(loc->ci, (int)t->minor, addrq);
    if (lasti_out) *lasti_out = lasti;
    return 0;
}

/* Location of a _PyInterpreterFrame (3.11+); *instr is the address of its current/last
 * instruction. */
static int asc__iframe(aioscope_target *t, uint64_t frame, asc_loc *loc, uint64_t *previous,
                       int *skip, uint64_t *instr) {
    const asc_layout *L = t->L;
    uint8_t hdr[96];
    size_t hdr_len = (size_t)L->iframe_owner + 1;
    if (hdr_len > sizeof hdr || (size_t)L->iframe_instr + 8 > sizeof hdr) return AIOSCOPE_EBADDATA;
    if (!asc_mem_plausible_obj(frame)) return AIOSCOPE_EBADDATA;
    int rc = asc_mem_read(&t->mem, frame, hdr, hdr_len);
    if (rc < 0) return rc;
    uint64_t code, ip;
    memcpy(previous, hdr + L->iframe_previous, 8);
    memcpy(&code, hdr + L->iframe_code, 8);
    memcpy(&ip, hdr + L->iframe_instr, 8);
    *skip = 0;
    if (L->frame_owned_by_cstack >= 0 && hdr[L->iframe_owner] == L->frame_owned_by_cstack) {
        *skip = 1; /* an entry shim frame of the C stack: no Python code of its own */
        return 0;
    }
    if ((rc = asc_code_info(t, code, &loc->ci)) < 0) {
        /* 3.13's f_executable may hold a non-code object for frames we cannot show. */
        if (rc == AIOSCOPE_EBADDATA && t->minor >= 13 && asc_mem_plausible_obj(code)) *skip = 1;
        return *skip ? 0 : rc;
    }
    int64_t addrq = (int64_t)(ip - loc->ci->code_start);
    if (ip < loc->ci->code_start || (loc->ci->code_len && (uint64_t)addrq > loc->ci->code_len))
        addrq = -1; /* torn or not started (3.11/3.12 prev_instr sits one unit before code) */
    loc->line = asc_code_addr2line(loc->ci, (int)t->minor, addrq);
    if (instr) *instr = ip;
    return 0;
}

int asc_frame_decode(aioscope_target *t, uint64_t frame, asc_loc *loc, uint64_t *previous, int *skip) {
    loc->ci = NULL;
    loc->line = 0;
    *previous = 0;
    *skip = 0;
    if (t->minor <= 10) return asc__old_frame(t, frame, loc, previous, NULL);
    return asc__iframe(t, frame, loc, previous, skip, NULL);
}

int aioscope_thread_stack(aioscope_target *t, uint64_t tstate_addr, aioscope_frame *out, size_t max,
                          size_t *n) {
    if (!t || !n || (max && !out)) return AIOSCOPE_EINVAL;
    *n = 0;
    if (t->self) asc_cache_reset(t); /* objects of a running process may be freed and reused */
    uint64_t frame;
    int rc = asc_thread_top_frame(t, tstate_addr, &frame);
    if (rc < 0) return rc;
    for (size_t depth = 0; frame && *n < max; depth++) {
        if (depth >= ASC_MAX_FRAMES) return AIOSCOPE_ELIMIT; /* a cycle, or torn links */
        asc_loc loc;
        uint64_t previous;
        int skip;
        if ((rc = asc_frame_decode(t, frame, &loc, &previous, &skip)) < 0) return rc;
        if (!skip) {
            aioscope_frame *f = &out[(*n)++];
            snprintf(f->file, sizeof f->file, "%s", loc.ci->file);
            snprintf(f->function, sizeof f->function, "%s", loc.ci->name);
            f->line = loc.line;
        }
        frame = previous;
    }
    return 0;
}

int asc_coro_decode(aioscope_target *t, uint64_t coro, asc_loc *loc, uint64_t *awaited) {
    const asc_layout *L = t->L;
    uint64_t type;
    int rc = asc_obj_type(t, coro, &type);
    loc->ci = NULL;
    loc->line = 0;
    *awaited = 0;
    if (rc < 0) return rc;
    int is_gen = t->types.gen && type == t->types.gen;
    if (t->types.coro && type != t->types.coro && !is_gen) return AIOSCOPE_EBADDATA;
    if (t->minor <= 10) {
        uint64_t frame, back;
        int32_t lasti;
        int32_t frame_off = is_gen ? L->gen_frame : L->coro_frame;
        if ((rc = asc_mem_read_u64(&t->mem, coro + (uint64_t)frame_off, &frame)) < 0) return rc;
        if (!frame) return AIOSCOPE_ENOENT; /* finished: the frame was released */
        if ((rc = asc__old_frame(t, frame, loc, &back, &lasti)) < 0) return rc;
        if (lasti < 0) return 0; /* created, never started */
        /* _PyGen_yf (Objects/genobject.c): suspended in YIELD_FROM when the next instruction is
         * YIELD_FROM; the awaited object is then on top of the value stack. */
        uint64_t next = loc->ci->code_start + (t->minor == 10 ? ((uint64_t)lasti + 1) * 2 : (uint64_t)lasti + 2);
        uint8_t op;
        if ((rc = asc_mem_read(&t->mem, next, &op, 1)) < 0) return rc;
        if (op != L->op_yield_from) return 0;
        uint64_t top;
        if (t->minor == 10) {
            uint64_t valuestack;
            int32_t depth;
            if ((rc = asc_mem_read_u64(&t->mem, frame + (uint64_t)L->frame_valuestack, &valuestack)) < 0 ||
                (rc = asc_mem_read_i32(&t->mem, frame + (uint64_t)L->frame_stackdepth, &depth)) < 0)
                return rc;
            if (depth <= 0 || depth > 1 << 20) return 0;
            top = valuestack + (uint64_t)(depth - 1) * 8;
        } else {
            uint64_t stacktop;
            if ((rc = asc_mem_read_u64(&t->mem, frame + (uint64_t)L->frame_stacktop, &stacktop)) < 0)
                return rc;
            if (!stacktop) return 0;
            top = stacktop - 8;
        }
        if ((rc = asc_mem_read_u64(&t->mem, top, awaited)) < 0) return rc;
        if (!asc_mem_plausible_obj(*awaited)) *awaited = 0;
        return 0;
    }
    /* 3.11+: the frame is embedded in the coroutine object. */
    int8_t state;
    int32_t state_off = is_gen ? L->gen_frame_state : L->coro_frame_state;
    uint64_t frame = coro + (uint64_t)(is_gen ? L->gen_iframe : L->coro_iframe);
    if ((rc = asc_mem_read(&t->mem, coro + (uint64_t)state_off, &state, 1)) < 0) return rc;
    if (state >= L->frame_state_completed) return AIOSCOPE_ENOENT;
    uint64_t previous, ip;
    int skip;
    if ((rc = asc__iframe(t, frame, loc, &previous, &skip, &ip)) < 0) return rc;
    if (skip) return AIOSCOPE_EBADDATA;
    int yielding;
    if (L->frame_state_suspended_yield_from != ASC_ABSENT) {
        yielding = state == L->frame_state_suspended_yield_from; /* 3.13 */
    } else {
        /* _PyGen_yf (3.11, 3.12): suspended and the next instruction is RESUME with oparg >= 2
         * (resuming after a yield-from/await). */
        uint8_t next[2];
        yielding = 0;
        if (state == L->frame_state_suspended && asc_mem_read(&t->mem, ip + 2, next, 2) == 0) {
            int op = next[0];
            int resume = op == L->op_resume || op == L->op_resume_quick || op == L->op_instrumented_resume;
            yielding = resume && next[1] >= 2;
        }
    }
    if (!yielding) return 0;
    int32_t stacktop;
    if ((rc = asc_mem_read_i32(&t->mem, frame + (uint64_t)L->iframe_stacktop, &stacktop)) < 0) return rc;
    if (stacktop <= 0 || stacktop > 1 << 20) return 0;
    if ((rc = asc_mem_read_u64(&t->mem, frame + (uint64_t)L->iframe_localsplus + (uint64_t)(stacktop - 1) * 8,
                               awaited)) < 0)
        return rc;
    if (!asc_mem_plausible_obj(*awaited)) *awaited = 0;
    return 0;
}
