/* `resource-leak`: transports, StreamWriters, sockets, subprocess transports and event loops
 * garbage-collected without being closed, with the line that opened them.
 *
 * CPython already notices these: their finalizers warn "unclosed transport ...", "unclosed event
 * loop ...", "unclosed <socket.socket ...>", "unclosed <StreamWriter ...>" (3.11.x+) with
 * ResourceWarning, and uvloop's handles warn "unclosed resource ...". The default filters ignore
 * ResourceWarning, so such a warning normally stops in the filter check and is never shown. We
 * put an "always" filter for ResourceWarning first in warnings.filters, so every such warning
 * reaches warnings._showwarnmsg, which we replace by a C function: it records the finding, then
 * applies the program's own filters (every filter but ours, in order, as warnings.py does) and
 * forwards to the original only what the program would have shown — with "default", "module"
 * and "once" still shown once — so the program's visible output stays the same.
 *
 * Nothing records where a transport was opened, so we capture a creation site (code object +
 * offset, see frames.c) in the __init__ of the classes concerned: asyncio's transports, event
 * loops, StreamWriter and socket.socket. That runs on connection setup only. Objects with an
 * instance __dict__ keep it as an attribute (it survives until __del__, also in a collected
 * cycle); sockets have __slots__, so theirs go in a table keyed by id() and emptied by a weak
 * reference callback. uvloop's transports are C objects with neither: their leaks are reported,
 * but where they were opened is unknown (the site is then where the collection happened). */
#include "agent/agent.h"

#include <frameobject.h>
#include <string.h>

#define ASC_SITE_ATTR "_aioscope_opened_at"

static struct {
    PyObject *orig_show;       /* warnings._showwarnmsg as it was */
    PyObject *our_filter;      /* the filter tuple we put first in warnings.filters */
    PyObject *warnings;        /* the warnings module */
    PyObject *socket_type;     /* socket.socket */
    PyObject *socket_sites;    /* dict: id(sock) -> (weakref, code, lasti) */
    PyObject *shown_once;      /* set: keys of warnings already shown for "default"/"once"/"module" */
    PyObject *loop_type;       /* asyncio.base_events.BaseEventLoop */
} asc_lk;

/* ---- recording where resources are opened ----------------------------------------------------- */
static PyObject *asc_site_tuple(void)
{
    asc_codeloc loc;
    asc_capture_creation_site(&loc);
    if (loc.code == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *t = Py_BuildValue("(Oi)", loc.code, loc.lasti);
    asc_codeloc_clear(&loc);
    return t;
}

static PyObject *asc_forget_socket(PyObject *key, PyObject *wref)
{
    if (PyDict_DelItem(asc_lk.socket_sites, key) < 0)
        PyErr_Clear();
    Py_RETURN_NONE;
}

static PyMethodDef asc_forget_socket_def = {"_aioscope_forget_socket", asc_forget_socket, METH_O,
                                            "aioscope: a socket is gone."};

static void asc_remember_site(PyObject *self)
{
    PyObject *site = asc_site_tuple();
    if (site == NULL || site == Py_None) {
        Py_XDECREF(site);
        PyErr_Clear();
        return;
    }
    if (PyObject_IsInstance(self, asc_lk.socket_type) == 1) {
        PyObject *key = PyLong_FromVoidPtr(self);
        PyObject *cb = key ? PyCFunction_New(&asc_forget_socket_def, key) : NULL;
        PyObject *wref = cb ? PyWeakref_NewRef(self, cb) : NULL;
        PyObject *entry = wref ? PyTuple_Pack(2, wref, site) : NULL;
        if (entry)
            (void)PyDict_SetItem(asc_lk.socket_sites, key, entry);
        Py_XDECREF(entry);
        Py_XDECREF(wref);
        Py_XDECREF(cb);
        Py_XDECREF(key);
    } else {
        (void)PyObject_SetAttrString(self, ASC_SITE_ATTR, site);
    }
    Py_DECREF(site);
    PyErr_Clear();
}

/* The site recorded for obj, as (code, lasti), or NULL (new reference, never raises). */
static PyObject *asc_recalled_site(PyObject *obj)
{
    if (obj == NULL || obj == Py_None)
        return NULL;
    PyObject *site = NULL;
    if (PyObject_IsInstance(obj, asc_lk.socket_type) == 1) {
        PyObject *key = PyLong_FromVoidPtr(obj);
        PyObject *entry = key ? PyDict_GetItemWithError(asc_lk.socket_sites, key) : NULL; /* borrowed */
        if (entry) {
            site = PyTuple_GET_ITEM(entry, 1);
            Py_INCREF(site);
        }
        Py_XDECREF(key);
    } else {
        site = PyObject_GetAttrString(obj, ASC_SITE_ATTR);
    }
    PyErr_Clear();
    return site;
}

/* Put our filter back in front when the program's own filter changes (simplefilter("ignore"),
 * resetwarnings(), ...) pushed it down or removed it; run when a loop is created, so a program
 * that sets its filters at start-up still has its leaks seen. What the program itself shows is
 * still decided by its filters (asc_program_action skips ours). */
static void asc_keep_filter_first(void)
{
    PyObject *filters = PyObject_GetAttrString(asc_lk.warnings, "filters");
    if (filters && PyList_Check(filters) && asc_lk.our_filter &&
        (PyList_GET_SIZE(filters) == 0 || PyList_GET_ITEM(filters, 0) != asc_lk.our_filter)) {
        for (Py_ssize_t i = PyList_GET_SIZE(filters) - 1; i >= 0; i--)
            if (PyList_GET_ITEM(filters, i) == asc_lk.our_filter)
                (void)PySequence_DelItem(filters, i);
        if (PyList_Insert(filters, 0, asc_lk.our_filter) == 0) {
            PyObject *r = PyObject_CallMethod(asc_lk.warnings, "_filters_mutated", NULL);
            Py_XDECREF(r);
        }
    }
    Py_XDECREF(filters);
    PyErr_Clear();
}

/* __init__ wrapper: self is the original __init__ function. An event loop also gets its task
 * factory here, not only when it starts running: tasks a program creates on a loop before
 * running it (loop.create_task(...); loop.run_forever()) then remember their creation site too. */
static PyObject *asc_init_wrapper(PyObject *orig, PyObject *args, PyObject *kwargs)
{
    PyObject *r = PyObject_Call(orig, args, kwargs);
    if (r && asc_cfg.enabled && PyTuple_GET_SIZE(args) > 0) {
        PyObject *self = PyTuple_GET_ITEM(args, 0);
        asc_remember_site(self);
        if (asc_lk.loop_type && PyObject_IsInstance(self, asc_lk.loop_type) == 1) {
            (void)asc_tasks_on_loop_start(self);
            asc_keep_filter_first();
        }
        if (asc_lk.loop_type && PyObject_IsInstance(self, asc_lk.loop_type) == 1)
            (void)asc_steps_on_loop_start(self); /* the live view: the main task's steps count too */
        PyErr_Clear();
    }
    return r;
}

static PyMethodDef asc_init_wrapper_def = {"__init__", (PyCFunction)(void (*)(void))asc_init_wrapper,
                                           METH_VARARGS | METH_KEYWORDS,
                                           "The original __init__, then aioscope notes where the object was opened."};

/* Replace module.cls.__init__ by the wrapper (an instancemethod, so it binds like a function).
 * Classes missing on this version or platform are skipped. */
static int asc_wrap_init(const char *module_name, const char *cls_name)
{
    PyObject *mod = PyImport_ImportModule(module_name);
    PyObject *cls = mod ? PyObject_GetAttrString(mod, cls_name) : NULL;
    Py_XDECREF(mod);
    PyObject *dict = cls && PyType_Check(cls) ? ((PyTypeObject *)cls)->tp_dict : NULL;
    PyObject *orig = dict ? PyDict_GetItemString(dict, "__init__") : NULL; /* borrowed */
    int rc = 0;
    if (orig && PyFunction_Check(orig)) {
        PyObject *fn = PyCFunction_New(&asc_init_wrapper_def, orig);
        PyObject *meth = fn ? PyInstanceMethod_New(fn) : NULL;
        rc = meth ? PyObject_SetAttrString(cls, "__init__", meth) : -1;
        Py_XDECREF(meth);
        Py_XDECREF(fn);
    }
    Py_XDECREF(cls);
    if (rc == 0)
        PyErr_Clear();
    return rc;
}

/* ---- turning a warning into a finding -------------------------------------------------------------- */
static const char asc_kind_transport[] = "transport", asc_kind_loop[] = "event loop",
                  asc_kind_writer[] = "StreamWriter", asc_kind_socket[] = "socket";

/* What kind of resource an "unclosed ..." text names (one of the asc_kind_* strings, compared
 * by address), or NULL when it is not one of ours. */
static const char *asc_resource_kind(const char *text, PyObject *source)
{
    if (source && source != Py_None && PyObject_IsInstance(source, asc_lk.socket_type) == 1)
        return asc_kind_socket;
    PyErr_Clear();
    if (strncmp(text, "unclosed transport ", 19) == 0)
        return asc_kind_transport;
    if (strncmp(text, "unclosed event loop ", 20) == 0)
        return asc_kind_loop;
    if (strncmp(text, "unclosed <StreamWriter", 22) == 0)
        return asc_kind_writer;
    if (strncmp(text, "unclosed <socket.socket", 23) == 0 || strncmp(text, "unclosed <ssl.SSLSocket", 23) == 0)
        return asc_kind_socket;
    if (strncmp(text, "unclosed resource <", 19) == 0) /* uvloop's handles */
        return asc_kind_transport;
    return NULL;
}

/* StreamWriter.__del__ warns without source=: the writer is `self` in the frame that warns. */
static PyObject *asc_self_of_warning_frame(void)
{
    PyFrameObject *f = PyEval_GetFrame(); /* borrowed */
    if (f == NULL)
        return NULL;
    PyObject *locals = PyObject_GetAttrString((PyObject *)f, "f_locals");
    PyObject *self = locals ? PyMapping_GetItemString(locals, "self") : NULL;
    Py_XDECREF(locals);
    PyErr_Clear();
    return self;
}

static void asc_report_leak(PyObject *msg, const char *text, PyObject *source)
{
    const char *kind = asc_resource_kind(text, source);
    if (kind == NULL)
        return;
    PyObject *owner = NULL;
    if (source && source != Py_None) {
        owner = source;
        Py_INCREF(owner);
    } else if (kind == asc_kind_writer) {
        owner = asc_self_of_warning_frame();
    }
    PyObject *site = asc_recalled_site(owner);
    Py_XDECREF(owner);
    if (site == NULL && kind == asc_kind_socket) {
        /* A socket whose opening we did not see. The usual one is a leaked transport's socket
         * collected in the same cycle as the transport (the weak reference that keeps its site
         * is cleared before finalizers run): the transport is reported, with its site. */
        return;
    }

    aioscope_finding f;
    aioscope_finding_init(&f);
    f.kind = strdup("resource-leak");
    f.severity = AIOSCOPE_SEV_WARNING;
    f.detail = strdup(text + 9); /* after "unclosed " */
    char m[256];
    if (site && PyTuple_Check(site) && PyTuple_GET_SIZE(site) == 2) {
        asc_codeloc loc = {PyTuple_GET_ITEM(site, 0), (int)PyLong_AsLong(PyTuple_GET_ITEM(site, 1))};
        if (asc_codeloc_to_location(&loc, &f.site) == 0 && f.site.file) {
            (void)aioscope_location_set(&f.created_at, f.site.file, f.site.line, f.site.function);
            (void)aioscope_finding_push_frame(&f, f.site.file, f.site.line, f.site.function);
        }
        snprintf(m, sizeof m, "%s garbage-collected without being closed", kind);
    } else {
        /* Where it was opened is unknown (uvloop, or opened before install()). */
        (void)asc_fill_from_current_stack(&f);
        snprintf(m, sizeof m, "%s garbage-collected without being closed (where it was opened is unknown)", kind);
    }
    Py_XDECREF(site);
    PyErr_Clear();
    f.message = strdup(m);
    if (f.site.file)
        asc_emit(&f);
    else
        aioscope_finding_clear(&f);
}

/* ---- the program's own filters ------------------------------------------------------------------ */
/* The action the program's filters (all but ours) give this warning, as warnings.py decides
 * it: the first filter whose message regex, category, module regex and line match. The module
 * is derived from the filename, as warnings does when it has no module name. New reference. */
static PyObject *asc_program_action(PyObject *text, PyObject *category, PyObject *filename, PyObject *lineno)
{
    PyObject *filters = PyObject_GetAttrString(asc_lk.warnings, "filters");
    PyObject *module = NULL;
    if (filename && PyUnicode_Check(filename)) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(filename);
        PyObject *suffix = PyUnicode_FromString(".py");
        int py = suffix && n >= 3 && PyUnicode_Tailmatch(filename, suffix, 0, n, 1) == 1;
        Py_XDECREF(suffix);
        module = py ? PyUnicode_Substring(filename, 0, n - 3) : (Py_INCREF(filename), filename);
    }
    long line = lineno ? PyLong_AsLong(lineno) : 0;
    PyObject *action = NULL;
    for (Py_ssize_t i = 0; filters && PyList_Check(filters) && i < PyList_GET_SIZE(filters); i++) {
        PyObject *flt = PyList_GET_ITEM(filters, i);
        if (flt == asc_lk.our_filter || !PyTuple_Check(flt) || PyTuple_GET_SIZE(flt) != 5)
            continue;
        PyObject *act = PyTuple_GET_ITEM(flt, 0), *msg_re = PyTuple_GET_ITEM(flt, 1);
        PyObject *cat = PyTuple_GET_ITEM(flt, 2), *mod_re = PyTuple_GET_ITEM(flt, 3);
        long ln = PyLong_AsLong(PyTuple_GET_ITEM(flt, 4));
        int ok = PyType_Check(cat) && PyObject_IsSubclass(category, cat) == 1;
        if (ok && msg_re != Py_None) {
            PyObject *m = PyObject_CallMethod(msg_re, "match", "O", text);
            ok = m && m != Py_None;
            Py_XDECREF(m);
        }
        if (ok && mod_re != Py_None && module) {
            PyObject *m = PyObject_CallMethod(mod_re, "match", "O", module);
            ok = m && m != Py_None;
            Py_XDECREF(m);
        }
        if (ok && ln != 0 && ln != line)
            ok = 0;
        PyErr_Clear();
        if (ok) {
            action = act;
            Py_INCREF(action);
            break;
        }
    }
    Py_XDECREF(filters);
    Py_XDECREF(module);
    if (action == NULL)
        action = PyObject_GetAttrString(asc_lk.warnings, "defaultaction");
    PyErr_Clear();
    return action;
}

/* 1 when the program would show this warning now ("default"/"module"/"once" only the first
 * time for their key), 0 when not, 2 for "error". */
static int asc_program_would_show(PyObject *msg, PyObject *text, PyObject *category)
{
    PyObject *filename = PyObject_GetAttrString(msg, "filename");
    PyObject *lineno = PyObject_GetAttrString(msg, "lineno");
    PyErr_Clear();
    PyObject *action = asc_program_action(text, category, filename, lineno);
    const char *a = action && PyUnicode_Check(action) ? PyUnicode_AsUTF8(action) : "default";
    int show = 1;
    PyObject *key = NULL;
    if (a == NULL || strcmp(a, "ignore") == 0)
        show = 0;
    else if (strcmp(a, "error") == 0)
        show = 2;
    else if (strcmp(a, "once") == 0)
        key = Py_BuildValue("(sOO)", "once", text, category);
    else if (strcmp(a, "module") == 0)
        key = Py_BuildValue("(sOOO)", "module", text, category, filename ? filename : Py_None);
    else if (strcmp(a, "default") == 0)
        key = Py_BuildValue("(sOOOO)", "default", text, category, filename ? filename : Py_None,
                            lineno ? lineno : Py_None);
    if (key) {
        int seen = PySet_Contains(asc_lk.shown_once, key);
        if (seen == 1)
            show = 0;
        else if (seen == 0)
            (void)PySet_Add(asc_lk.shown_once, key);
        Py_DECREF(key);
    }
    Py_XDECREF(action);
    Py_XDECREF(filename);
    Py_XDECREF(lineno);
    PyErr_Clear();
    return show;
}

/* The replacement of warnings._showwarnmsg(msg). */
static PyObject *asc_showwarnmsg(PyObject *unused, PyObject *msg)
{
    PyObject *category = PyObject_GetAttrString(msg, "category");
    if (category == NULL || !PyType_Check(category) ||
        !PyType_IsSubtype((PyTypeObject *)category, (PyTypeObject *)PyExc_ResourceWarning)) {
        Py_XDECREF(category);
        PyErr_Clear();
        return PyObject_CallFunctionObjArgs(asc_lk.orig_show, msg, NULL);
    }
    PyObject *message = PyObject_GetAttrString(msg, "message");
    PyObject *text = message ? PyObject_Str(message) : NULL;
    PyObject *source = PyObject_GetAttrString(msg, "source");
    PyErr_Clear();
    const char *t = text ? PyUnicode_AsUTF8(text) : NULL;
    if (t && asc_cfg.enabled)
        asc_report_leak(msg, t, source);
    PyErr_Clear();
    int show = text ? asc_program_would_show(msg, text, category) : 1;
    PyObject *r = NULL;
    if (show == 1) {
        r = PyObject_CallFunctionObjArgs(asc_lk.orig_show, msg, NULL);
    } else if (show == 2 && message) {
        PyErr_SetObject(category, message); /* what the program's "error" filter would do */
    } else {
        r = Py_None;
        Py_INCREF(r);
    }
    Py_XDECREF(category);
    Py_XDECREF(message);
    Py_XDECREF(text);
    Py_XDECREF(source);
    return r;
}

static PyMethodDef asc_showwarnmsg_def = {"_showwarnmsg", asc_showwarnmsg, METH_O,
                                          "aioscope: notes unclosed resources, then shows warnings as before."};

/* ---- init --------------------------------------------------------------------------------------- */
int asc_leaks_init(PyObject *module)
{
    asc_lk.warnings = PyImport_ImportModule("warnings");
    PyObject *socket = PyImport_ImportModule("socket");
    if (asc_lk.warnings == NULL || socket == NULL) {
        Py_XDECREF(socket);
        return -1;
    }
    asc_lk.socket_type = PyObject_GetAttrString(socket, "socket");
    Py_DECREF(socket);
    PyObject *base_events = PyImport_ImportModule("asyncio.base_events");
    asc_lk.loop_type = base_events ? PyObject_GetAttrString(base_events, "BaseEventLoop") : NULL;
    Py_XDECREF(base_events);
    if (asc_lk.loop_type == NULL)
        return -1;
    asc_lk.socket_sites = PyDict_New();
    asc_lk.shown_once = PySet_New(NULL);
    asc_lk.orig_show = PyObject_GetAttrString(asc_lk.warnings, "_showwarnmsg");
    if (!asc_lk.socket_type || !asc_lk.socket_sites || !asc_lk.shown_once || !asc_lk.orig_show)
        return -1;

    static const char *const classes[][2] = {
        {"asyncio.selector_events", "_SelectorTransport"},
        {"asyncio.base_subprocess", "BaseSubprocessTransport"},
        {"asyncio.unix_events", "_UnixReadPipeTransport"},
        {"asyncio.unix_events", "_UnixWritePipeTransport"},
        {"asyncio.sslproto", "_SSLProtocolTransport"},
        {"asyncio.base_events", "BaseEventLoop"},
        {"asyncio.streams", "StreamWriter"},
        {"socket", "socket"},
    };
    for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++)
        if (asc_wrap_init(classes[i][0], classes[i][1]) < 0)
            return -1;

    /* Our filter first: every ResourceWarning reaches _showwarnmsg (see the top of the file). */
    PyObject *fw = PyObject_GetAttrString(asc_lk.warnings, "filterwarnings");
    PyObject *fargs = Py_BuildValue("(s)", "always");
    PyObject *fkw = Py_BuildValue("{s:O}", "category", PyExc_ResourceWarning);
    PyObject *r = fw && fargs && fkw ? PyObject_Call(fw, fargs, fkw) : NULL;
    Py_XDECREF(fw);
    Py_XDECREF(fargs);
    Py_XDECREF(fkw);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    PyObject *filters = PyObject_GetAttrString(asc_lk.warnings, "filters");
    if (filters && PyList_Check(filters) && PyList_GET_SIZE(filters) > 0) {
        asc_lk.our_filter = PyList_GET_ITEM(filters, 0);
        Py_INCREF(asc_lk.our_filter);
    }
    Py_XDECREF(filters);
    PyObject *fn = PyCFunction_New(&asc_showwarnmsg_def, NULL);
    int rc = fn ? PyObject_SetAttrString(asc_lk.warnings, "_showwarnmsg", fn) : -1;
    Py_XDECREF(fn);
    return rc;
}
