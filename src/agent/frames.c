/* The program's own frames: classifying files, turning stacks into sites, cheap creation sites.
 *
 * Every finding names a `site`: the innermost frame that belongs to the program's own code. This
 * unit decides what "own code" is (not the standard library, not site-packages/dist-packages,
 * not aioscope itself, not "<frozen ...>"), caching the answer per filename object, and turns the
 * three kinds of stacks the agent meets (the current thread's, a traceback, a coroutine chain)
 * into aioscope_finding sites and stacks.
 *
 * asc_capture_creation_site() runs for every task the program creates, so it must cost a few
 * pointer hops. On 3.11+ the public ways to walk the stack (PyEval_GetFrame, PyFrame_GetBack)
 * materialise a frame object per frame; instead we read the interpreter's own frame chain
 * (_PyInterpreterFrame) through a mirror of its leading fields, per version below. The mirror is
 * checked once at init against sys._getframe(); if the two walks disagree we use the public API
 * for the rest of the process. Before 3.11 frames are real objects already and the walk just
 * follows f_back. */
#include "agent/agent.h"

#include <frameobject.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


/* A walk never follows more frames than this: deep recursion would otherwise make a task's
 * creation cost proportional to the stack depth. Past it, no site is recorded. */
#define ASC_MAX_WALK 256

/* ---- the interpreter frame mirror (3.11+) ---------------------------------------------------
 * Leading fields of struct _PyInterpreterFrame, copied from the interpreter's
 * Include/internal/pycore_frame.h of each release (pyenv installs it as
 * include/python3.X/internal/pycore_frame.h); the offsets agree with
 * /work/shared/research/cpython-layouts/offs_3.1X.txt (read from DWARF). Only the fields we read
 * are named; the walk stops at the field `owner`. */
#if PY_VERSION_HEX >= 0x030B0000
/* A code unit is 2 bytes (opcode, oparg) in 3.11-3.13; 3.13 moved _Py_CODEUNIT and
 * _PyCode_CODE() to internal headers, so we use our own names for both: the bytecode starts at
 * PyCodeObject.co_code_adaptive (cpython/code.h). */
typedef uint16_t asc_codeunit;
#define ASC_CODE_FIRST(co) ((asc_codeunit *)((PyCodeObject *)(co))->co_code_adaptive)
#endif

#if PY_VERSION_HEX >= 0x030D0000
/* 3.13: f_executable@0 (a code object, or None for some C-stack frames), previous@8,
 * instr_ptr@56 points at the instruction executing now, owner@70. */
typedef struct asc_iframe {
    PyObject *f_executable;
    struct asc_iframe *previous;
    PyObject *f_funcobj, *f_globals, *f_builtins, *f_locals;
    PyFrameObject *frame_obj;
    asc_codeunit *instr_ptr;
    int stacktop;
    uint16_t return_offset;
    char owner;
    PyObject *localsplus[1]; /* @72: arguments and locals, then cells, then the value stack */
} asc_iframe;
#define ASC_IFRAME_CODE(f) ((f)->f_executable)
#define ASC_IFRAME_INSTR(f) ((f)->instr_ptr)
#elif PY_VERSION_HEX >= 0x030C0000
/* 3.12: f_code@0, previous@8, prev_instr@56 (the code unit before the next instruction),
 * owner@70. */
typedef struct asc_iframe {
    PyCodeObject *f_code;
    struct asc_iframe *previous;
    PyObject *f_funcobj, *f_globals, *f_builtins, *f_locals;
    PyFrameObject *frame_obj;
    asc_codeunit *prev_instr;
    int stacktop;
    uint16_t return_offset;
    char owner;
    PyObject *localsplus[1]; /* @72: arguments and locals, then cells, then the value stack */
} asc_iframe;
#define ASC_IFRAME_CODE(f) ((PyObject *)(f)->f_code)
#define ASC_IFRAME_INSTR(f) ((f)->prev_instr)
#elif PY_VERSION_HEX >= 0x030B0000
/* 3.11: f_func@0, f_code@32, previous@48, prev_instr@56, is_entry@68, owner@69. */
typedef struct asc_iframe {
    PyObject *f_func, *f_globals, *f_builtins, *f_locals;
    PyCodeObject *f_code;
    PyFrameObject *frame_obj;
    struct asc_iframe *previous;
    asc_codeunit *prev_instr;
    int stacktop;
    bool is_entry;
    char owner;
    PyObject *localsplus[1]; /* @72 */
} asc_iframe;
#define ASC_IFRAME_CODE(f) ((PyObject *)(f)->f_code)
#define ASC_IFRAME_INSTR(f) ((f)->prev_instr)
#endif

#if PY_VERSION_HEX >= 0x030B0000
_Static_assert(offsetof(asc_iframe, localsplus) == 72, "localsplus of _PyInterpreterFrame at 72");
/* enum _frameowner in pycore_frame.h: FRAME_OWNED_BY_GENERATOR = 1 in 3.11-3.13;
 * FRAME_OWNED_BY_CSTACK = 3 in 3.12-3.13 marks the interpreter's entry shim, not Python code. */
#define ASC_OWNED_BY_GENERATOR 1
#define ASC_OWNED_BY_CSTACK 3

static asc_iframe *asc_current_iframe(void)
{
    PyThreadState *ts = PyThreadState_Get();
#if PY_VERSION_HEX >= 0x030D0000
    return (asc_iframe *)ts->current_frame; /* cpython/pystate.h, 3.13 */
#else
    return ts->cframe ? (asc_iframe *)ts->cframe->current_frame : NULL; /* 3.11, 3.12 */
#endif
}

PyObject *asc_caller_fast_local(PyObject *code, Py_ssize_t index)
{
    asc_iframe *f = asc_current_iframe();
    if (f == NULL || ASC_IFRAME_CODE(f) != code || f->owner == ASC_OWNED_BY_CSTACK || index < 0 ||
        index >= ((PyCodeObject *)code)->co_nlocals)
        return NULL;
    return f->localsplus[index];
}

/* The code object and byte offset of a frame, or NULL for frames that are not (yet) Python
 * code: the entry shim, and frames still in their prologue — the same rule as CPython's
 * _PyFrame_IsIncomplete(), which PyFrame_GetBack() also uses to skip them. */
static PyObject *asc_iframe_code(asc_iframe *f, int *lasti)
{
    PyObject *code = ASC_IFRAME_CODE(f);
    if (f->owner == ASC_OWNED_BY_CSTACK || code == NULL || !PyCode_Check(code))
        return NULL;
    asc_codeunit *first = ASC_CODE_FIRST(code);
    asc_codeunit *instr = ASC_IFRAME_INSTR(f);
    if (f->owner != ASC_OWNED_BY_GENERATOR &&
        instr < first + ((PyCodeObject *)code)->_co_firsttraceable)
        return NULL;
    *lasti = (int)(instr - first) * (int)sizeof(asc_codeunit);
    return code;
}
#endif

/* ---- state ------------------------------------------------------------------------------- */
enum { ASC_FILE_LIB = 0, ASC_FILE_USER = 1, ASC_FILE_ASYNCIO = 2, ASC_FILE_SELF = 3 };

static struct {
    PyObject *kind_by_filename; /* dict: filename str -> small int (ASC_FILE_*) */
    PyObject *stdlib_dirs;      /* list of str, each ending with "/" */
    PyObject *asyncio_dirs;     /* asyncio's dir (skipped by creation sites) */
    PyObject *self_dirs;        /* aioscope's own dirs (skipped everywhere) */
    PyObject *cwd;              /* str, to make relative filenames absolute */
    int raw_walk_ok;            /* 1: the _PyInterpreterFrame mirror agreed with sys._getframe */
} asc_fr;

static int asc_starts_with_any(PyObject *s, PyObject *prefixes)
{
    Py_ssize_t n = PyList_GET_SIZE(prefixes);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t r = PyUnicode_Tailmatch(s, PyList_GET_ITEM(prefixes, i), 0, PY_SSIZE_T_MAX, -1);
        if (r != 0)
            return (int)r; /* 1, or -1 with an error */
    }
    return 0;
}

/* In front of the dict, a small direct-mapped cache keyed by the filename object's address: a
 * task's creation walks a few frames, and this makes each one a pointer compare. Entries hold a
 * strong reference, so an address cannot be reused by another string while cached. */
#define ASC_KIND_CACHE_SIZE 64 /* a power of two; programs have few hot files */
static struct {
    PyObject *filename; /* owned */
    int kind;
} asc_kind_cache[ASC_KIND_CACHE_SIZE];

static int asc_classify_slow(PyObject *filename);

static int asc_classify(PyObject *filename)
{
    size_t slot = ((uintptr_t)filename >> 4) & (ASC_KIND_CACHE_SIZE - 1);
    if (asc_kind_cache[slot].filename == filename)
        return asc_kind_cache[slot].kind;
    int kind = asc_classify_slow(filename);
    if (kind >= 0) {
        Py_INCREF(filename);
        Py_XSETREF(asc_kind_cache[slot].filename, filename);
        asc_kind_cache[slot].kind = kind;
    }
    return kind;
}

static int asc_classify_slow(PyObject *filename)
{
    if (!PyUnicode_Check(filename))
        return ASC_FILE_LIB;
    PyObject *cached = PyDict_GetItemWithError(asc_fr.kind_by_filename, filename); /* borrowed */
    if (cached)
        return (int)PyLong_AsLong(cached);
    if (PyErr_Occurred())
        return -1;
    int kind;
    const char *s = PyUnicode_AsUTF8(filename);
    if (s == NULL)
        return -1;
    int in_self = asc_starts_with_any(filename, asc_fr.self_dirs);
    int in_async = asc_starts_with_any(filename, asc_fr.asyncio_dirs);
    int in_std = asc_starts_with_any(filename, asc_fr.stdlib_dirs);
    if (in_self < 0 || in_async < 0 || in_std < 0)
        return -1;
    if (in_self)
        kind = ASC_FILE_SELF;
    else if (in_async)
        kind = ASC_FILE_ASYNCIO;
    else if (strncmp(s, "<frozen ", 8) == 0)
        kind = ASC_FILE_LIB;
    else if (strstr(s, "/site-packages/") || strstr(s, "/dist-packages/"))
        kind = ASC_FILE_LIB;
    else if (in_std)
        kind = ASC_FILE_LIB;
    else
        kind = ASC_FILE_USER;
    PyObject *v = PyLong_FromLong(kind);
    if (v == NULL || PyDict_SetItem(asc_fr.kind_by_filename, filename, v) < 0) {
        Py_XDECREF(v);
        return -1;
    }
    Py_DECREF(v);
    return kind;
}

int asc_is_user_file(PyObject *filename)
{
    int k = asc_classify(filename);
    if (k < 0) {
        PyErr_Clear();
        return 0;
    }
    return k == ASC_FILE_USER;
}

static PyObject *asc_code_filename(PyObject *code)
{
    return ((PyCodeObject *)code)->co_filename; /* borrowed */
}

/* ---- walking the current thread's frames --------------------------------------------------- */
/* Calls visit(code, lasti, arg) for each frame of the calling thread, innermost first, until it
 * returns nonzero (which is then returned). code is borrowed; lasti is in bytes. */
typedef int (*asc_frame_visit)(PyObject *code, int lasti, void *arg);

static int asc_walk_public(asc_frame_visit visit, void *arg)
{
    PyFrameObject *f = PyEval_GetFrame(); /* borrowed */
    Py_XINCREF(f);
    int r = 0;
    for (int depth = 0; f && depth < ASC_MAX_WALK && r == 0; depth++) {
#if PY_VERSION_HEX >= 0x030B0000
        PyCodeObject *code = PyFrame_GetCode(f);
        r = visit((PyObject *)code, PyFrame_GetLasti(f), arg);
        Py_DECREF(code);
#elif PY_VERSION_HEX >= 0x030A0000
        r = visit((PyObject *)f->f_code, f->f_lasti * (int)sizeof(_Py_CODEUNIT), arg); /* 3.10: units */
#else
        r = visit((PyObject *)f->f_code, f->f_lasti, arg); /* 3.8, 3.9: bytes */
#endif
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    Py_XDECREF(f);
    return r;
}

static int asc_walk(asc_frame_visit visit, void *arg)
{
#if PY_VERSION_HEX >= 0x030B0000
    if (asc_fr.raw_walk_ok) {
        asc_iframe *f = asc_current_iframe();
        int r = 0;
        for (int depth = 0; f && depth < ASC_MAX_WALK && r == 0; depth++, f = f->previous) {
            int lasti;
            PyObject *code = asc_iframe_code(f, &lasti);
            if (code)
                r = visit(code, lasti, arg);
        }
        return r;
    }
    return asc_walk_public(visit, arg);
#else
    /* Before 3.11 PyEval_GetFrame returns the existing frame objects: already cheap. */
    PyFrameObject *f = PyEval_GetFrame();
    int r = 0;
    for (int depth = 0; f && depth < ASC_MAX_WALK && r == 0; depth++, f = f->f_back) {
#if PY_VERSION_HEX >= 0x030A0000
        r = visit((PyObject *)f->f_code, f->f_lasti * (int)sizeof(_Py_CODEUNIT), arg);
#else
        r = visit((PyObject *)f->f_code, f->f_lasti, arg);
#endif
    }
    return r;
#endif
}

/* ---- creation sites ------------------------------------------------------------------------ */
typedef struct {
    PyObject *user_code;     /* borrowed */
    int user_lasti;
    PyObject *fallback_code; /* borrowed: innermost frame outside asyncio/aioscope */
    int fallback_lasti;
} asc_capture_state;

static int asc_capture_visit(PyObject *code, int lasti, void *arg)
{
    asc_capture_state *st = arg;
    int kind = asc_classify(asc_code_filename(code));
    if (kind < 0) {
        PyErr_Clear();
        return 0;
    }
    if (kind == ASC_FILE_USER) {
        st->user_code = code;
        st->user_lasti = lasti;
        return 1;
    }
    if (kind == ASC_FILE_LIB && st->fallback_code == NULL) {
        st->fallback_code = code;
        st->fallback_lasti = lasti;
    }
    return 0;
}

void asc_capture_creation_site(asc_codeloc *out)
{
    asc_capture_state st = {NULL, 0, NULL, 0};
    asc_walk(asc_capture_visit, &st);
    PyObject *code = st.user_code ? st.user_code : st.fallback_code;
    out->lasti = st.user_code ? st.user_lasti : st.fallback_lasti;
    Py_XINCREF(code);
    out->code = code;
}

void asc_codeloc_clear(asc_codeloc *loc)
{
    if (loc)
        Py_CLEAR(loc->code);
}

/* An absolute path for a code filename (relative ones are joined to the start-up directory,
 * like tracebacks would resolve them); "<...>" names are kept. Returns a new str or NULL. */
static PyObject *asc_abs_filename(PyObject *filename)
{
    if (!PyUnicode_Check(filename) || PyUnicode_GET_LENGTH(filename) == 0)
        return PyUnicode_FromString("<unknown>");
    Py_UCS4 c = PyUnicode_READ_CHAR(filename, 0);
    if (c == '/' || c == '<' || asc_fr.cwd == NULL) {
        Py_INCREF(filename);
        return filename;
    }
    return PyUnicode_FromFormat("%U/%U", asc_fr.cwd, filename);
}

/* Fill a location from a code object and a line (function = qualified name where it exists). */
static int asc_location_from_code(PyObject *code, int line, aioscope_location *out)
{
    PyCodeObject *co = (PyCodeObject *)code;
    PyObject *file = asc_abs_filename(co->co_filename);
    if (file == NULL)
        return -1;
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *func = co->co_qualname;
#else
    PyObject *func = co->co_name;
#endif
    const char *fs = PyUnicode_AsUTF8(file);
    const char *fn = PyUnicode_Check(func) ? PyUnicode_AsUTF8(func) : "?";
    int rc = (fs && fn) ? aioscope_location_set(out, fs, line, fn) : -1;
    Py_DECREF(file);
    if (rc != 0) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return -1;
    }
    return 0;
}

int asc_codeloc_to_location(const asc_codeloc *loc, aioscope_location *out)
{
    if (loc->code == NULL)
        return 0;
    return asc_location_from_code(loc->code, PyCode_Addr2Line((PyCodeObject *)loc->code, loc->lasti), out);
}

/* ---- stacks into findings ------------------------------------------------------------------ */
/* Frames collected innermost first, then written to the finding outermost first. */
typedef struct {
    PyObject *codes; /* list of code objects */
    PyObject *lines; /* list of int */
} asc_frame_list;

static int asc_frame_list_init(asc_frame_list *fl)
{
    fl->codes = PyList_New(0);
    fl->lines = PyList_New(0);
    return (fl->codes && fl->lines) ? 0 : -1;
}

static void asc_frame_list_clear(asc_frame_list *fl)
{
    Py_CLEAR(fl->codes);
    Py_CLEAR(fl->lines);
}

static int asc_frame_list_add(asc_frame_list *fl, PyObject *code, int line)
{
    PyObject *l = PyLong_FromLong(line);
    int rc = (l && PyList_Append(fl->codes, code) == 0 && PyList_Append(fl->lines, l) == 0) ? 0 : -1;
    Py_XDECREF(l);
    return rc;
}

/* Write fl (innermost first) as f->stack (outermost first) and set f->site to the innermost
 * user frame, or the innermost frame when none is the user's. Frames of aioscope itself are
 * left out of the stack. */
static int asc_frame_list_to_finding(asc_frame_list *fl, aioscope_finding *f)
{
    Py_ssize_t n = PyList_GET_SIZE(fl->codes);
    Py_ssize_t site = -1, first_kept = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *code = PyList_GET_ITEM(fl->codes, i);
        int kind = asc_classify(asc_code_filename(code));
        if (kind < 0)
            return -1;
        if (kind == ASC_FILE_SELF)
            continue;
        if (first_kept < 0)
            first_kept = i;
        if (kind == ASC_FILE_USER && site < 0)
            site = i;
    }
    if (site < 0)
        site = first_kept;
    for (Py_ssize_t i = n - 1; i >= 0; i--) {
        PyObject *code = PyList_GET_ITEM(fl->codes, i);
        if (asc_classify(asc_code_filename(code)) == ASC_FILE_SELF)
            continue;
        int line = (int)PyLong_AsLong(PyList_GET_ITEM(fl->lines, i));
        aioscope_location loc = {0};
        if (asc_location_from_code(code, line, &loc) < 0)
            return -1;
        int rc = aioscope_finding_push_frame(f, loc.file, loc.line, loc.function);
        if (rc == 0 && i == site) {
            aioscope_location_clear(&f->site);
            f->site = loc; /* moves the strings */
        } else {
            aioscope_location_clear(&loc);
        }
        if (rc != 0) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return 0;
}

static int asc_collect_visit(PyObject *code, int lasti, void *arg)
{
    return asc_frame_list_add(arg, code, PyCode_Addr2Line((PyCodeObject *)code, lasti)) < 0 ? -1 : 0;
}

int asc_fill_from_current_stack(aioscope_finding *f)
{
    asc_frame_list fl;
    int rc = -1;
    if (asc_frame_list_init(&fl) == 0 && asc_walk_public(asc_collect_visit, &fl) == 0)
        rc = asc_frame_list_to_finding(&fl, f);
    asc_frame_list_clear(&fl);
    return rc;
}

int asc_fill_from_traceback(aioscope_finding *f, PyObject *tb)
{
    asc_frame_list fl;
    if (asc_frame_list_init(&fl) < 0)
        goto err;
    /* A traceback runs outermost first; collect, then reverse to innermost first. */
    Py_XINCREF(tb);
    for (int depth = 0; tb && tb != Py_None && depth < ASC_MAX_WALK; depth++) {
        PyObject *frame = PyObject_GetAttrString(tb, "tb_frame");
        PyObject *lineno = PyObject_GetAttrString(tb, "tb_lineno");
        PyObject *code = frame ? PyObject_GetAttrString(frame, "f_code") : NULL;
        int ok = code && lineno && PyCode_Check(code) &&
                 asc_frame_list_add(&fl, code, (int)PyLong_AsLong(lineno)) == 0;
        Py_XDECREF(frame);
        Py_XDECREF(lineno);
        Py_XDECREF(code);
        PyObject *next = ok ? PyObject_GetAttrString(tb, "tb_next") : NULL;
        Py_DECREF(tb);
        tb = next;
        if (!ok || next == NULL)
            goto err;
    }
    Py_XDECREF(tb);
    if (PyList_Reverse(fl.codes) < 0 || PyList_Reverse(fl.lines) < 0)
        goto err;
    int rc = asc_frame_list_to_finding(&fl, f);
    asc_frame_list_clear(&fl);
    return rc;
err:
    asc_frame_list_clear(&fl);
    return -1;
}

/* The object a coroutine, generator or async generator awaits, or NULL (new reference). */
static PyObject *asc_awaited(PyObject *coro)
{
    static const char *const attrs[] = {"cr_await", "gi_yieldfrom", "ag_await"};
    for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++) {
        PyObject *v = PyObject_GetAttrString(coro, attrs[i]);
        if (v == NULL) {
            PyErr_Clear();
            continue;
        }
        if (v != Py_None)
            return v;
        Py_DECREF(v);
        return NULL;
    }
    return NULL;
}

static PyObject *asc_coro_frame(PyObject *coro)
{
    static const char *const attrs[] = {"cr_frame", "gi_frame", "ag_frame"};
    for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++) {
        PyObject *v = PyObject_GetAttrString(coro, attrs[i]);
        if (v == NULL) {
            PyErr_Clear();
            continue;
        }
        if (v != Py_None)
            return v;
        Py_DECREF(v);
        return NULL;
    }
    return NULL;
}

/* Frames of a coroutine chain, innermost (the deepest awaited coroutine) first. */
static int asc_collect_coro(PyObject *coro, asc_frame_list *fl)
{
    PyObject *chain = PyList_New(0);
    if (chain == NULL)
        return -1;
    Py_INCREF(coro);
    for (int depth = 0; coro && depth < ASC_MAX_WALK; depth++) {
        PyObject *frame = asc_coro_frame(coro);
        if (frame && PyFrame_Check(frame)) {
            PyCodeObject *code = PyFrame_GetCode((PyFrameObject *)frame);
            int rc = PyList_Append(chain, (PyObject *)code);
            PyObject *l = rc == 0 ? PyLong_FromLong(PyFrame_GetLineNumber((PyFrameObject *)frame)) : NULL;
            rc = l ? PyList_Append(chain, l) : -1;
            Py_XDECREF(l);
            Py_DECREF(code);
            if (rc < 0) {
                Py_DECREF(frame);
                Py_DECREF(coro);
                Py_DECREF(chain);
                return -1;
            }
        }
        Py_XDECREF(frame);
        PyObject *next = asc_awaited(coro);
        Py_DECREF(coro);
        coro = next;
    }
    Py_XDECREF(coro);
    for (Py_ssize_t i = PyList_GET_SIZE(chain) - 2; i >= 0; i -= 2) {
        PyObject *code = PyList_GET_ITEM(chain, i);
        int line = (int)PyLong_AsLong(PyList_GET_ITEM(chain, i + 1));
        if (asc_frame_list_add(fl, code, line) < 0) {
            Py_DECREF(chain);
            return -1;
        }
    }
    Py_DECREF(chain);
    return 0;
}

int asc_fill_from_coro(aioscope_finding *f, PyObject *coro)
{
    asc_frame_list fl;
    int rc = -1;
    if (asc_frame_list_init(&fl) == 0 && asc_collect_coro(coro, &fl) == 0)
        rc = asc_frame_list_to_finding(&fl, f);
    asc_frame_list_clear(&fl);
    return rc;
}

/* The byte offset of a frame object's last instruction (3.10 counts code units). */
static int asc_frame_lasti(PyFrameObject *f)
{
#if PY_VERSION_HEX >= 0x030B0000
    return PyFrame_GetLasti(f);
#elif PY_VERSION_HEX >= 0x030A0000
    return f->f_lasti * (int)sizeof(_Py_CODEUNIT);
#else
    return f->f_lasti;
#endif
}

void asc_capture_coro_site(PyObject *coro, asc_codeloc *out)
{
    out->code = NULL;
    out->lasti = 0;
    Py_XINCREF(coro);
    for (int depth = 0; coro && depth < ASC_MAX_WALK; depth++) {
        PyObject *frame = asc_coro_frame(coro);
        if (frame && PyFrame_Check(frame)) {
            PyCodeObject *code = PyFrame_GetCode((PyFrameObject *)frame);
            /* Deeper user frames win: the innermost is where the coroutine waits. */
            if (asc_is_user_file(code->co_filename) || out->code == NULL) {
                Py_XSETREF(out->code, (PyObject *)code);
                out->lasti = asc_frame_lasti((PyFrameObject *)frame);
            } else {
                Py_DECREF(code);
            }
        }
        Py_XDECREF(frame);
        PyObject *next = asc_awaited(coro);
        Py_DECREF(coro);
        coro = next;
    }
    Py_XDECREF(coro);
    PyErr_Clear();
}

int asc_code_is_aioscope(PyObject *code)
{
    if (code == NULL || !PyCode_Check(code))
        return 0;
    int k = asc_classify(asc_code_filename(code));
    if (k < 0) {
        PyErr_Clear();
        return 0;
    }
    return k == ASC_FILE_SELF;
}

/* ---- init ---------------------------------------------------------------------------------- */
/* Append dir + "/" to list, and its realpath form when that differs (pyenv and Debian paths may
 * reach the same files through symlinks). */
static int asc_add_dir(PyObject *list, const char *dir)
{
    char buf[PATH_MAX];
    const char *forms[2] = {dir, realpath(dir, buf)};
    for (int i = 0; i < 2; i++) {
        if (forms[i] == NULL || (i == 1 && strcmp(forms[0], forms[1]) == 0))
            continue;
        PyObject *s = PyUnicode_FromFormat("%s/", forms[i]);
        if (s == NULL || PyList_Append(list, s) < 0) {
            Py_XDECREF(s);
            return -1;
        }
        Py_DECREF(s);
    }
    return 0;
}

/* Add the directory of a package (its __init__ file's directory); with_boot also adds the
 * sibling "<dir>_boot" (aioscope's bootstrap package sits next to aioscope). */
static int asc_add_module_dir(PyObject *list, const char *module_name, int with_boot)
{
    PyObject *m = PyImport_ImportModule(module_name);
    if (m == NULL)
        return -1;
    PyObject *file = PyObject_GetAttrString(m, "__file__");
    Py_DECREF(m);
    if (file == NULL)
        return -1;
    const char *s = PyUnicode_Check(file) ? PyUnicode_AsUTF8(file) : NULL;
    int rc = -1;
    if (s) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", s);
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = '\0';
        rc = asc_add_dir(list, dir);
        if (rc == 0 && with_boot) {
            char boot[PATH_MAX + 16];
            snprintf(boot, sizeof boot, "%s_boot", dir);
            rc = asc_add_dir(list, boot);
        }
    }
    Py_DECREF(file);
    return rc;
}

#if PY_VERSION_HEX >= 0x030B0000
/* Check the raw frame walk against sys._getframe(): same code objects and lines, in order. */
typedef struct {
    PyObject *frame; /* owned: the next frame object expected */
    int mismatch;
    int seen;
} asc_verify_state;

static int asc_verify_visit(PyObject *code, int lasti, void *arg)
{
    asc_verify_state *st = arg;
    if (st->frame == NULL || st->frame == Py_None) {
        st->mismatch = 1;
        return 1;
    }
    PyObject *fcode = PyObject_GetAttrString(st->frame, "f_code");
    PyObject *fline = PyObject_GetAttrString(st->frame, "f_lineno");
    PyObject *back = PyObject_GetAttrString(st->frame, "f_back");
    if (!fcode || !fline || !back || fcode != code ||
        PyLong_AsLong(fline) != PyCode_Addr2Line((PyCodeObject *)code, lasti))
        st->mismatch = 1;
    Py_XDECREF(fcode);
    Py_XDECREF(fline);
    Py_SETREF(st->frame, back);
    PyErr_Clear();
    st->seen++;
    return st->mismatch;
}
#endif

static void asc_verify_raw_walk(void)
{
#if PY_VERSION_HEX >= 0x030B0000
    asc_fr.raw_walk_ok = 1;
    PyObject *sys = PyImport_ImportModule("sys");
    asc_verify_state st = {NULL, 0, 0};
    st.frame = sys ? PyObject_CallMethod(sys, "_getframe", NULL) : NULL;
    Py_XDECREF(sys);
    if (st.frame == NULL) {
        PyErr_Clear();
        asc_fr.raw_walk_ok = 0;
        return;
    }
    asc_walk(asc_verify_visit, &st);
    if (st.mismatch || st.seen == 0 || (st.frame && st.frame != Py_None))
        asc_fr.raw_walk_ok = 0;
    Py_XDECREF(st.frame);
    PyErr_Clear();
#else
    asc_fr.raw_walk_ok = 1;
#endif
}

int asc_frames_init(PyObject *module)
{
    PyObject *sysconfig = NULL, *paths = NULL;
    asc_fr.kind_by_filename = PyDict_New();
    asc_fr.stdlib_dirs = PyList_New(0);
    asc_fr.asyncio_dirs = PyList_New(0);
    asc_fr.self_dirs = PyList_New(0);
    if (!asc_fr.kind_by_filename || !asc_fr.stdlib_dirs || !asc_fr.asyncio_dirs || !asc_fr.self_dirs)
        goto err;
    sysconfig = PyImport_ImportModule("sysconfig");
    paths = sysconfig ? PyObject_CallMethod(sysconfig, "get_paths", NULL) : NULL;
    if (paths == NULL)
        goto err;
    static const char *const keys[] = {"stdlib", "platstdlib"};
    for (size_t i = 0; i < 2; i++) {
        PyObject *p = PyDict_GetItemString(paths, keys[i]); /* borrowed */
        const char *s = p && PyUnicode_Check(p) ? PyUnicode_AsUTF8(p) : NULL;
        if (s && asc_add_dir(asc_fr.stdlib_dirs, s) < 0)
            goto err;
    }
    if (asc_add_module_dir(asc_fr.asyncio_dirs, "asyncio", 0) < 0 ||
        asc_add_module_dir(asc_fr.self_dirs, "aioscope", 1) < 0)
        goto err;
    /* uvloop's Python parts and the stdlib modules asyncio leans on for task creation
     * (contextvars, functools) stay LIB: a creation site skips them only as a fallback. */
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd))
        asc_fr.cwd = PyUnicode_FromString(cwd);
    Py_DECREF(paths);
    Py_DECREF(sysconfig);
    asc_verify_raw_walk();
    /* For tests: 1 when creation sites come from the raw interpreter-frame walk (3.11+) or the
     * frame objects (before 3.11); 0 when the public-API fallback is in use. */
    if (module && PyModule_AddIntConstant(module, "_raw_frame_walk", asc_fr.raw_walk_ok) < 0)
        PyErr_Clear();
    return 0;
err:
    Py_XDECREF(paths);
    Py_XDECREF(sysconfig);
    return -1;
}
