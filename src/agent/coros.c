/* `unawaited-coroutine`: coroutines created and never awaited or scheduled.
 *
 * When a coroutine that never started is finalized, CPython calls
 * warnings._warn_unawaited_coroutine(coro), looking the function up on the warnings module at
 * that moment (Objects/genobject.c, _PyErr_WarnUnawaitedCoroutine). We put a C function there
 * that records the finding and then calls the original, so the RuntimeWarning prints exactly
 * as before (the original warns with stacklevel=2, which is still the program's frame: a C
 * function adds no Python frame). Nothing runs on the normal path.
 *
 * The site is the call that created the coroutine, recovered without origin tracking (which
 * costs 1.09-1.19x): the frame running when the last reference goes is where it was dropped.
 * For an expression statement (`log_event(...)`) that is the creating line itself; for a
 * coroutine kept in a variable it is later in the same function. So we search the bytecode of
 * each user frame on the stack, innermost first, for the last load of a name equal to the
 * coroutine's __name__ (LOAD_GLOBAL/LOAD_NAME/LOAD_ATTR/LOAD_METHOD/LOAD_FAST/LOAD_DEREF...) at
 * or before the frame's current instruction; that load starts the creating call. When the frame
 * that held the coroutine has already finished (a local of a coroutine that returned), the
 * current task's coroutine is searched the same way, then the functions and methods of the
 * module the innermost user frame runs in (a coroutine kept in a local of a plain function
 * that has returned); failing all that, the innermost user frame, and last the coroutine's own
 * `async def` line. Opcode numbers come from dis.opmap at
 * init, never from a table of ours. */
#include "agent/agent.h"

#include <frameobject.h>
#include <string.h>

/* Bytecode instructions are 2 bytes (opcode, oparg) from 3.6 on; EXTENDED_ARG prefixes carry
 * the high bits of larger opargs. */
#define ASC_INSTR_SIZE 2

/* Bounds of the searches (all on the rare path, but a finalizer must not walk forever): frames
 * of the current stack, awaited coroutines of the current task, and levels of code nested in a
 * function (def in def in def...). */
#define ASC_MAX_FRAMES 256
#define ASC_MAX_AWAIT_CHAIN 64
#define ASC_MAX_NESTED_CODE 4

/* How an opcode's oparg names something. */
enum {
    ASC_ARG_NONE = 0,
    ASC_ARG_NAMES,          /* co_names[arg] */
    ASC_ARG_NAMES_SHIFT1,   /* co_names[arg >> 1] (LOAD_GLOBAL 3.11+, LOAD_ATTR 3.12+) */
    ASC_ARG_NAMES_SHIFT2,   /* co_names[arg >> 2] (LOAD_SUPER_ATTR 3.12+) */
    ASC_ARG_LOCAL,          /* a fast local: localsplusnames (3.11+) / co_varnames */
    ASC_ARG_LOCAL_PAIR,     /* two fast locals, arg >> 4 and arg & 15 (LOAD_FAST_LOAD_FAST 3.13) */
    ASC_ARG_DEREF,          /* a cell or free variable: localsplusnames (3.11+) / cell+free */
    ASC_ARG_EXTENDED,       /* EXTENDED_ARG */
};

static struct {
    unsigned char arg_kind[256]; /* per opcode, from dis.opmap */
    PyObject *orig_warn;         /* warnings._warn_unawaited_coroutine as it was */
} asc_co;

/* ---- searching bytecode ---------------------------------------------------------------------- */
/* The name tuple an oparg indexes for a local or deref access, and the index into it. */
static PyObject *asc_local_name(PyCodeObject *co, int kind, int arg)
{
#if PY_VERSION_HEX >= 0x030B0000
    (void)kind;
    PyObject *names = co->co_localsplusnames; /* cpython/code.h, 3.11+: one index space */
    if (arg >= 0 && arg < PyTuple_GET_SIZE(names))
        return PyTuple_GET_ITEM(names, arg);
    return NULL;
#else
    if (kind == ASC_ARG_LOCAL) {
        if (arg >= 0 && arg < PyTuple_GET_SIZE(co->co_varnames))
            return PyTuple_GET_ITEM(co->co_varnames, arg);
        return NULL;
    }
    /* LOAD_DEREF before 3.11 indexes cell variables, then free variables. */
    Py_ssize_t ncell = PyTuple_GET_SIZE(co->co_cellvars);
    if (arg >= 0 && arg < ncell)
        return PyTuple_GET_ITEM(co->co_cellvars, arg);
    if (arg >= ncell && arg - ncell < PyTuple_GET_SIZE(co->co_freevars))
        return PyTuple_GET_ITEM(co->co_freevars, arg - ncell);
    return NULL;
#endif
}

static int asc_name_is(PyObject *candidate, PyObject *name)
{
    return candidate && PyUnicode_Check(candidate) && PyUnicode_Compare(candidate, name) == 0;
}

/* The line of the last instruction at or before byte offset `upto` (-1: the whole code) that
 * loads `name`, considering only instructions of line `only_line` when it is > 0; 0 when there
 * is none. With name NULL, appends every name loaded (within the same bounds) to `collect`. */
static int asc_scan_loads(PyCodeObject *co, PyObject *name, int upto, int only_line, PyObject *collect)
{
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *bytes = PyCode_GetCode(co); /* deoptimised; inline caches read as opcode 0 */
#else
    PyObject *bytes = co->co_code;
    Py_XINCREF(bytes);
#endif
    if (bytes == NULL || !PyBytes_Check(bytes)) {
        Py_XDECREF(bytes);
        PyErr_Clear();
        return 0;
    }
    const unsigned char *code = (const unsigned char *)PyBytes_AS_STRING(bytes);
    Py_ssize_t n = PyBytes_GET_SIZE(bytes);
    int found = -1;
    unsigned int ext = 0;
    for (Py_ssize_t off = 0; off + 1 < n; off += ASC_INSTR_SIZE) {
        if (upto >= 0 && off > upto)
            break;
        int op = code[off];
        int arg = (int)(ext | code[off + 1]);
        int kind = asc_co.arg_kind[op];
        ext = kind == ASC_ARG_EXTENDED ? (unsigned int)arg << 8 : 0;
        PyObject *a = NULL, *b = NULL;
        switch (kind) {
        case ASC_ARG_NAMES:
        case ASC_ARG_NAMES_SHIFT1:
        case ASC_ARG_NAMES_SHIFT2: {
            int idx = kind == ASC_ARG_NAMES ? arg : kind == ASC_ARG_NAMES_SHIFT1 ? arg >> 1 : arg >> 2;
            if (idx < PyTuple_GET_SIZE(co->co_names))
                a = PyTuple_GET_ITEM(co->co_names, idx);
            break;
        }
        case ASC_ARG_LOCAL:
        case ASC_ARG_DEREF:
            a = asc_local_name(co, kind, arg);
            break;
        case ASC_ARG_LOCAL_PAIR:
            a = asc_local_name(co, ASC_ARG_LOCAL, arg >> 4);
            b = asc_local_name(co, ASC_ARG_LOCAL, arg & 15);
            break;
        default:
            break;
        }
        if (a == NULL && b == NULL)
            continue;
        if (only_line > 0 && PyCode_Addr2Line(co, (int)off) != only_line)
            continue;
        if (name == NULL) {
            if (a && PyList_Append(collect, a) < 0)
                PyErr_Clear();
            if (b && PyList_Append(collect, b) < 0)
                PyErr_Clear();
        } else if (asc_name_is(a, name) || asc_name_is(b, name)) {
            found = (int)off;
        }
    }
    Py_DECREF(bytes);
    return found < 0 ? 0 : PyCode_Addr2Line(co, found);
}

static int asc_find_load_line(PyCodeObject *co, PyObject *name, int upto)
{
    return asc_scan_loads(co, name, upto, 0, NULL);
}

/* ---- where the coroutine was created ------------------------------------------------------------ */
static int asc_frame_lasti(PyFrameObject *f)
{
#if PY_VERSION_HEX >= 0x030B0000
    return PyFrame_GetLasti(f);
#elif PY_VERSION_HEX >= 0x030A0000
    return f->f_lasti * ASC_INSTR_SIZE; /* 3.10 counts instructions */
#else
    return f->f_lasti;
#endif
}

/* Search the user frames of the current stack; on a match set *code_out (new ref) and *line. */
static int asc_search_stack(PyObject *name, PyCodeObject **code_out, int *line)
{
    PyFrameObject *f = PyEval_GetFrame();
    Py_XINCREF(f);
    for (int depth = 0; f && depth < ASC_MAX_FRAMES; depth++) {
        PyCodeObject *co = PyFrame_GetCode(f);
        if (asc_is_user_file(co->co_filename)) {
            int l = asc_find_load_line(co, name, asc_frame_lasti(f));
            if (l > 0) {
                *code_out = co;
                *line = l;
                Py_DECREF(f);
                return 1;
            }
        }
        Py_DECREF(co);
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    Py_XDECREF(f);
    return 0;
}

/* Search the code of the current task's coroutine chain (their frames may be gone). */
static int asc_search_current_task(PyObject *name, PyCodeObject **code_out, int *line)
{
    PyObject *aio = PyImport_ImportModule("asyncio");
    PyObject *task = aio ? PyObject_CallMethod(aio, "current_task", NULL) : NULL;
    Py_XDECREF(aio);
    PyObject *coro = task && task != Py_None ? PyObject_CallMethod(task, "get_coro", NULL) : NULL;
    Py_XDECREF(task);
    PyErr_Clear();
    for (int depth = 0; coro && coro != Py_None && depth < ASC_MAX_AWAIT_CHAIN; depth++) {
        PyObject *code = PyObject_GetAttrString(coro, "cr_code");
        if (code && PyCode_Check(code) && asc_is_user_file(((PyCodeObject *)code)->co_filename)) {
            int l = asc_find_load_line((PyCodeObject *)code, name, -1);
            if (l > 0) {
                *code_out = (PyCodeObject *)code;
                *line = l;
                Py_DECREF(coro);
                return 1;
            }
        }
        Py_XDECREF(code);
        PyObject *next = PyObject_GetAttrString(coro, "cr_await");
        Py_DECREF(coro);
        coro = next;
    }
    Py_XDECREF(coro);
    PyErr_Clear();
    return 0;
}

/* Search a code object and the code nested in it (functions, lambdas, comprehensions defined
 * inside), whole; depth-bounded. */
static int asc_search_code_tree(PyCodeObject *co, PyObject *name, int depth, PyCodeObject **code_out, int *line)
{
    if (!asc_is_user_file(co->co_filename))
        return 0;
    int l = asc_find_load_line(co, name, -1);
    if (l > 0) {
        Py_INCREF(co);
        *code_out = co;
        *line = l;
        return 1;
    }
    if (depth >= ASC_MAX_NESTED_CODE)
        return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(co->co_consts); i++) {
        PyObject *c = PyTuple_GET_ITEM(co->co_consts, i);
        if (PyCode_Check(c) && asc_search_code_tree((PyCodeObject *)c, name, depth + 1, code_out, line))
            return 1;
    }
    return 0;
}

/* callee_names: when not NULL, only functions whose __name__ is in it are searched. */
static int asc_search_callable(PyObject *obj, PyObject *name, PyObject *callee_names, PyCodeObject **code_out,
                               int *line)
{
    PyObject *func = obj;
    if (PyObject_TypeCheck(obj, &PyStaticMethod_Type) || PyObject_TypeCheck(obj, &PyClassMethod_Type)) {
        func = PyObject_GetAttrString(obj, "__func__");
        if (func == NULL) {
            PyErr_Clear();
            return 0;
        }
        Py_DECREF(func); /* still referenced by obj */
    }
    if (!PyFunction_Check(func))
        return 0;
    if (callee_names) {
        PyObject *fname = ((PyCodeObject *)PyFunction_GET_CODE(func))->co_name;
        if (PySequence_Contains(callee_names, fname) != 1) {
            PyErr_Clear();
            return 0;
        }
    }
    return asc_search_code_tree((PyCodeObject *)PyFunction_GET_CODE(func), name, 0, code_out, line);
}

/* The coroutine was kept in a local of a function that has returned since (its frame is gone,
 * and the caller's line shows only the call of that function): search the functions and
 * methods of the module the innermost user frame runs in. */
static int asc_search_module(PyObject *name, PyObject *callee_names, PyCodeObject **code_out, int *line)
{
    PyFrameObject *f = PyEval_GetFrame();
    Py_XINCREF(f);
    for (int depth = 0; f && depth < ASC_MAX_FRAMES; depth++) {
        PyCodeObject *co = PyFrame_GetCode(f);
        int user = asc_is_user_file(co->co_filename);
        Py_DECREF(co);
        if (user)
            break;
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    if (f == NULL)
        return 0;
    PyObject *globals = PyObject_GetAttrString((PyObject *)f, "f_globals");
    Py_DECREF(f);
    if (globals == NULL || !PyDict_Check(globals)) {
        Py_XDECREF(globals);
        PyErr_Clear();
        return 0;
    }
    PyObject *values = PyDict_Values(globals);
    Py_DECREF(globals);
    int found = 0;
    for (Py_ssize_t i = 0; values && i < PyList_GET_SIZE(values) && !found; i++) {
        PyObject *v = PyList_GET_ITEM(values, i);
        if (PyType_Check(v)) {
            PyObject *d = ((PyTypeObject *)v)->tp_dict;
            PyObject *key, *member;
            Py_ssize_t pos = 0;
            while (!found && d && PyDict_Next(d, &pos, &key, &member))
                found = asc_search_callable(member, name, callee_names, code_out, line);
        } else {
            found = asc_search_callable(v, name, callee_names, code_out, line);
        }
    }
    Py_XDECREF(values);
    PyErr_Clear();
    return found;
}

/* The innermost user frame's current line first: either it creates the coroutine itself (an
 * expression statement: `log_event(...)`), or it calls a function that created it and has just
 * returned, dropping it with its locals — then that function (looked up by the names the line
 * loads, among the module's functions and methods) holds the creating call. Earlier lines of
 * the same frame come after this (asc_search_stack), as they may hold another call of the same
 * coroutine function. */
static int asc_search_current_line(PyObject *name, PyCodeObject **code_out, int *line)
{
    PyFrameObject *f = PyEval_GetFrame();
    Py_XINCREF(f);
    PyCodeObject *co = NULL;
    for (int depth = 0; f && depth < ASC_MAX_FRAMES; depth++) {
        co = PyFrame_GetCode(f);
        if (asc_is_user_file(co->co_filename))
            break;
        Py_CLEAR(co);
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    if (f == NULL || co == NULL) {
        Py_XDECREF(f);
        return 0;
    }
    int lasti = asc_frame_lasti(f);
    int cur = PyFrame_GetLineNumber(f);
    Py_DECREF(f);
    int found = 0;
    int l = asc_scan_loads(co, name, lasti, cur, NULL);
    if (l > 0) {
        *code_out = co;
        *line = l;
        return 1;
    }
    PyObject *callees = PyList_New(0);
    if (callees) {
        asc_scan_loads(co, NULL, lasti, cur, callees);
        if (PyList_GET_SIZE(callees) > 0)
            found = asc_search_module(name, callees, code_out, line);
        Py_DECREF(callees);
    }
    Py_DECREF(co);
    PyErr_Clear();
    return found;
}

static int asc_set_site_from_code(aioscope_location *loc, PyCodeObject *co, int line)
{
    /* A codeloc wants a byte offset; building the location directly from the line is simpler:
     * the function name and file come from the code object. */
    asc_codeloc tmp = {(PyObject *)co, 0};
    aioscope_location l = {0};
    if (asc_codeloc_to_location(&tmp, &l) < 0)
        return -1;
    l.line = line;
    aioscope_location_clear(loc);
    *loc = l;
    return 0;
}

static int asc_site_is_user(const aioscope_location *site)
{
    PyObject *file = site->file ? PyUnicode_DecodeFSDefault(site->file) : NULL;
    int user = file && asc_is_user_file(file);
    Py_XDECREF(file);
    PyErr_Clear();
    return user;
}

static void asc_report_unawaited(PyObject *coro)
{
    PyObject *code = PyObject_GetAttrString(coro, "cr_code");
    PyObject *qualname = PyObject_GetAttrString(coro, "__qualname__");
    if (code == NULL || !PyCode_Check(code) || qualname == NULL || !PyUnicode_Check(qualname)) {
        Py_XDECREF(code);
        Py_XDECREF(qualname);
        PyErr_Clear();
        return;
    }
    PyObject *name = ((PyCodeObject *)code)->co_name; /* what the creating call names */
    aioscope_finding f;
    aioscope_finding_init(&f);
    f.kind = strdup("unawaited-coroutine");
    f.severity = AIOSCOPE_SEV_ERROR;
    const char *qn = PyUnicode_AsUTF8(qualname);
    char msg[512];
    snprintf(msg, sizeof msg, "coroutine %s() was created but never awaited", qn ? qn : "?");
    f.message = strdup(msg);
    snprintf(msg, sizeof msg, "coroutine '%s' was never awaited", qn ? qn : "?");
    f.detail = strdup(msg);
    (void)asc_fill_from_current_stack(&f); /* stack, and the innermost user frame as a first site */
    PyErr_Clear();

    PyCodeObject *found = NULL;
    int line = 0;
    if (asc_search_current_line(name, &found, &line) || asc_search_stack(name, &found, &line) ||
        asc_search_current_task(name, &found, &line) || asc_search_module(name, NULL, &found, &line)) {
        (void)asc_set_site_from_code(&f.site, found, line);
        Py_DECREF(found);
    } else if (!asc_site_is_user(&f.site)) {
        /* No frame of the program at all (dropped at shutdown, or by a library): the best we
         * know is the coroutine function itself. */
        (void)asc_set_site_from_code(&f.site, (PyCodeObject *)code, ((PyCodeObject *)code)->co_firstlineno);
    }
    PyErr_Clear();
    if (f.site.file)
        (void)aioscope_location_set(&f.created_at, f.site.file, f.site.line, f.site.function);
    Py_DECREF(code);
    Py_DECREF(qualname);
    if (f.site.file)
        asc_emit(&f);
    else
        aioscope_finding_clear(&f);
}

/* The replacement of warnings._warn_unawaited_coroutine(coro). */
static PyObject *asc_warn_unawaited(PyObject *unused, PyObject *coro)
{
    if (asc_cfg.enabled) {
        /* We run inside the coroutine's finalizer: keep any pending exception state intact. */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        asc_report_unawaited(coro);
        PyErr_Restore(type, value, tb);
    }
    return PyObject_CallFunctionObjArgs(asc_co.orig_warn, coro, NULL);
}

static PyMethodDef asc_warn_def = {"_warn_unawaited_coroutine", asc_warn_unawaited, METH_O,
                                   "aioscope: records the never-awaited coroutine, then warns as before."};

/* ---- init ------------------------------------------------------------------------------------------ */
static int asc_map_opcode(PyObject *opmap, const char *opname, int kind)
{
    PyObject *v = PyDict_GetItemString(opmap, opname); /* borrowed; absent on some versions */
    if (v == NULL)
        return 0;
    long op = PyLong_AsLong(v);
    if (op < 0 || op > 255) { /* pseudo-instructions (3.12+ LOAD_METHOD) never reach bytecode */
        PyErr_Clear();
        return 0;
    }
    asc_co.arg_kind[op] = (unsigned char)kind;
    return 0;
}

int asc_coros_init(PyObject *module)
{
    PyObject *dis = PyImport_ImportModule("dis");
    PyObject *opmap = dis ? PyObject_GetAttrString(dis, "opmap") : NULL;
    Py_XDECREF(dis);
    if (opmap == NULL)
        return -1;
#if PY_VERSION_HEX >= 0x030B0000
    const int global_kind = ASC_ARG_NAMES_SHIFT1; /* low bit: push NULL first */
#else
    const int global_kind = ASC_ARG_NAMES;
#endif
#if PY_VERSION_HEX >= 0x030C0000
    const int attr_kind = ASC_ARG_NAMES_SHIFT1; /* low bit: method load */
#else
    const int attr_kind = ASC_ARG_NAMES;
#endif
    asc_map_opcode(opmap, "EXTENDED_ARG", ASC_ARG_EXTENDED);
    asc_map_opcode(opmap, "LOAD_GLOBAL", global_kind);
    asc_map_opcode(opmap, "LOAD_NAME", ASC_ARG_NAMES);
    asc_map_opcode(opmap, "LOAD_ATTR", attr_kind);
    asc_map_opcode(opmap, "LOAD_METHOD", ASC_ARG_NAMES);
    asc_map_opcode(opmap, "LOAD_SUPER_ATTR", ASC_ARG_NAMES_SHIFT2);
    asc_map_opcode(opmap, "LOAD_FAST", ASC_ARG_LOCAL);
    asc_map_opcode(opmap, "LOAD_FAST_CHECK", ASC_ARG_LOCAL);
    asc_map_opcode(opmap, "LOAD_FAST_AND_CLEAR", ASC_ARG_LOCAL);
    asc_map_opcode(opmap, "LOAD_FAST_LOAD_FAST", ASC_ARG_LOCAL_PAIR);
    asc_map_opcode(opmap, "LOAD_DEREF", ASC_ARG_DEREF);
    asc_map_opcode(opmap, "LOAD_CLASSDEREF", ASC_ARG_DEREF);
    Py_DECREF(opmap);
    PyErr_Clear();

    PyObject *warnings = PyImport_ImportModule("warnings");
    if (warnings == NULL)
        return -1;
    asc_co.orig_warn = PyObject_GetAttrString(warnings, "_warn_unawaited_coroutine");
    if (asc_co.orig_warn == NULL) {
        Py_DECREF(warnings);
        return -1;
    }
    PyObject *fn = PyCFunction_New(&asc_warn_def, NULL);
    int rc = fn ? PyObject_SetAttrString(warnings, "_warn_unawaited_coroutine", fn) : -1;
    Py_XDECREF(fn);
    Py_DECREF(warnings);
    return rc;
}
