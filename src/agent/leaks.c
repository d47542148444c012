/* `resource-leak`: transports, StreamWriters, sockets, subprocess transports and event loops
 * garbage-collected without being closed, with the line that opened them.
 *
 * CPython already notices these: their finalizers warn "unclosed transport ...", "unclosed event
 * loop ...", "unclosed <socket.socket ...>", "unclosed <StreamWriter ...>" (3.11+) with
 * ResourceWarning. The default filters ignore ResourceWarning, so such a warning normally stops
 * in the filter check and never reaches Python code we could hook, and changing warnings.filters
 * would be seen by the program. So we wrap the finalizers themselves, at class level: the
 * __del__ of asyncio's transports, BaseEventLoop and StreamWriter (3.11+) becomes a C function
 * that makes the same "still open" test the original makes before it warns, reports the leak if
 * so, then calls the original (with the original's default arguments, such as _warn=warnings.warn
 * bound at class creation), which warns and closes exactly as before. socket.socket (a Python
 * subclass of _socket.socket, whose C finalizer warns) gets a __del__ that reports when the fd is
 * still open, then calls _socket.socket.__del__, which warns and closes the fd as it always did.
 * What the program shows (nothing by default, the warnings under -W default or -X dev) is what
 * it showed without us. This costs one C call per finalization of those objects, nothing else.
 *
 * uvloop's transports are C objects whose deallocator warns "unclosed resource ..."; there is no
 * finalizer to wrap. warnings._showwarnmsg is replaced by a C function that forwards every
 * warning to the original unchanged and reports the "unclosed ..." warnings that did not come
 * from a finalizer wrapped here: those are seen only when the program's own filters show
 * ResourceWarning (-W default, -X dev, a filter of its own).
 *
 * Nothing records where a transport was opened, so we capture a creation site (code object +
 * offset, see frames.c) in the __init__ of the classes concerned: asyncio's transports, event
 * loops, StreamWriter and socket.socket. That runs on connection setup only. Objects with an
 * instance __dict__ keep it as an attribute (it survives until __del__, also in a collected
 * cycle); sockets have __slots__, so theirs go in a table keyed by id() and emptied by a weak
 * reference callback. Event loops get no attribute either: every method of the loop reads its
 * attributes, and each more key in a loop's instance dict costs the loop's own attribute reads
 * (3.11 queue ping-pong: three more keys, 0.5 % more instructions). Theirs go in a table keyed
 * by id(), with a weak reference but no callback: a loop collected in a cycle has its weak
 * references cleared before its __del__ warns, so the entry must outlive them. Each loop's
 * __init__ overwrites the entry at its address, which makes an entry whose reference is dead
 * the site of the loop being finalized there; entries of loops long gone are swept when the
 * table grows. uvloop's transports are C objects with neither: where they were opened is
 * unknown (the site is then where the collection happened). */
#include "agent/agent.h"

#include <string.h>

#define ASC_SITE_ATTR "_aioscope_opened_at"

static struct {
    PyObject *orig_show;       /* warnings._showwarnmsg as it was */
    PyObject *sock_fileno;     /* _socket.socket.fileno (not a subclass's override) */
    PyObject *warnings;        /* the warnings module */
    PyObject *socket_type;     /* socket.socket */
    PyObject *socket_sites;    /* dict: id(sock) -> (weakref, code, lasti) */
    PyObject *loop_type;       /* asyncio.base_events.BaseEventLoop */
    PyObject *loop_sites;      /* dict: id(loop) -> (weakref without callback, (code, lasti)) */
    Py_ssize_t loop_sweep_at;  /* sweep dead entries when loop_sites grows past this */
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

/* Drop the entries of loops that are gone (their weak reference is dead). */
static void asc_sweep_loop_sites(void)
{
    PyObject *dead = PyList_New(0);
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (dead && PyDict_Next(asc_lk.loop_sites, &pos, &k, &v)) {
        PyObject *target = asc_weakref_target(PyTuple_GET_ITEM(v, 0));
        Py_XDECREF(target);
        if (target == NULL && PyList_Append(dead, k) < 0)
            break;
    }
    for (Py_ssize_t i = 0; dead && i < PyList_GET_SIZE(dead); i++)
        (void)PyDict_DelItem(asc_lk.loop_sites, PyList_GET_ITEM(dead, i));
    Py_XDECREF(dead);
    PyErr_Clear();
    asc_lk.loop_sweep_at = 2 * PyDict_GET_SIZE(asc_lk.loop_sites) + 64;
}

static void asc_remember_loop_site(PyObject *loop, PyObject *site)
{
    PyObject *key = PyLong_FromVoidPtr(loop);
    if (key == NULL)
        return;
    if (site == NULL || site == Py_None) {
        /* No site: nor may a stale entry at this address speak for this loop. */
        if (PyDict_DelItem(asc_lk.loop_sites, key) < 0)
            PyErr_Clear();
        Py_DECREF(key);
        return;
    }
    PyObject *wref = PyWeakref_NewRef(loop, NULL);
    PyObject *entry = wref ? PyTuple_Pack(2, wref, site) : NULL;
    if (entry && PyDict_SetItem(asc_lk.loop_sites, key, entry) == 0 &&
        PyDict_GET_SIZE(asc_lk.loop_sites) > asc_lk.loop_sweep_at)
        asc_sweep_loop_sites();
    Py_XDECREF(entry);
    Py_XDECREF(wref);
    Py_DECREF(key);
}

static int asc_is_loop(PyObject *obj)
{
    return asc_lk.loop_type && asc_lk.loop_sites && PyObject_IsInstance(obj, asc_lk.loop_type) == 1;
}

static void asc_remember_site(PyObject *self)
{
    PyObject *site = asc_site_tuple();
    if (asc_is_loop(self)) {
        asc_remember_loop_site(self, site);
        Py_XDECREF(site);
        PyErr_Clear();
        return;
    }
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
    int loop = asc_is_loop(obj);
    if (loop || PyObject_IsInstance(obj, asc_lk.socket_type) == 1) {
        PyObject *key = PyLong_FromVoidPtr(obj);
        PyObject *table = loop ? asc_lk.loop_sites : asc_lk.socket_sites;
        PyObject *entry = key ? PyDict_GetItemWithError(table, key) : NULL; /* borrowed */
        if (entry && loop) {
            /* Ours when it still refers to obj, or when its reference is dead: obj is being
             * finalized (collected in a cycle) and its __init__ wrote this entry last. */
            PyObject *target = asc_weakref_target(PyTuple_GET_ITEM(entry, 0));
            Py_XDECREF(target); /* compared only */
            if (target != obj && target != NULL)
                entry = NULL;
        }
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

/* __init__ wrapper: self is the original __init__ function. An event loop also gets its task
 * factory here, not only when it starts running: tasks a program creates on a loop before
 * running it (loop.create_task(...); loop.run_forever()) then remember their creation site too. */
static PyObject *asc_init_wrapper(PyObject *orig, PyObject *args, PyObject *kwargs)
{
    PyObject *r = PyObject_Call(orig, args, kwargs);
    if (r && asc_cfg.enabled && PyTuple_GET_SIZE(args) > 0) {
        PyObject *self = PyTuple_GET_ITEM(args, 0);
        asc_remember_site(self);
        if (asc_lk.loop_type && PyObject_IsInstance(self, asc_lk.loop_type) == 1)
            (void)asc_tasks_on_loop_start(self);
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

/* ---- reporting a leak ------------------------------------------------------------------------ */
static const char asc_kind_transport[] = "transport", asc_kind_loop[] = "event loop",
                  asc_kind_writer[] = "StreamWriter", asc_kind_socket[] = "socket";

/* Emit the finding for a leaked resource: kind is one of asc_kind_*, detail what the warning
 * says after "unclosed ", owner the object (its opening site is looked up) or NULL. */
static void asc_report_leak(const char *kind, const char *detail, PyObject *owner)
{
    PyObject *site = asc_recalled_site(owner);
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
    f.detail = strdup(detail);
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

/* ---- the wrapped finalizers -------------------------------------------------------------------- */
/* How a finalizer decides that its object is still open, as the original __del__ does it. */
enum {
    ASC_DEL_SOCK_ATTR,   /* _SelectorTransport: self._sock is not None */
    ASC_DEL_PIPE_ATTR,   /* _UnixRead/WritePipeTransport: self._pipe is not None */
    ASC_DEL_NOT_CLOSED,  /* BaseSubprocessTransport, _SSLProtocolTransport: not self._closed */
    ASC_DEL_LOOP,        /* BaseEventLoop: not self.is_closed() */
    ASC_DEL_WRITER,      /* StreamWriter: not self._transport.is_closing(), loop not closed */
    ASC_DEL_SOCKET,      /* socket.socket: the fd is not -1 */
};

/* > 0 while this thread runs an original finalizer from our wrapper: the warning it gives is
 * already reported, the _showwarnmsg hook leaves it alone. */
static _Thread_local int asc_in_wrapped_del;

/* 1 when the object is still open by the finalizer's own test, 0 when not or unknown. */
static int asc_still_open(int how, PyObject *self)
{
    int open = 0;
    PyObject *v = NULL, *r = NULL;
    switch (how) {
    case ASC_DEL_SOCK_ATTR:
    case ASC_DEL_PIPE_ATTR:
        v = PyObject_GetAttrString(self, how == ASC_DEL_SOCK_ATTR ? "_sock" : "_pipe");
        open = v != NULL && v != Py_None;
        break;
    case ASC_DEL_NOT_CLOSED:
        v = PyObject_GetAttrString(self, "_closed");
        open = v != NULL && PyObject_Not(v) == 1;
        break;
    case ASC_DEL_LOOP:
        r = PyObject_CallMethod(self, "is_closed", NULL);
        open = r != NULL && PyObject_Not(r) == 1;
        break;
    case ASC_DEL_WRITER:
        v = PyObject_GetAttrString(self, "_transport");
        r = v ? PyObject_CallMethod(v, "is_closing", NULL) : NULL;
        if (r != NULL && PyObject_Not(r) == 1) {
            Py_CLEAR(v);
            Py_CLEAR(r);
            /* With its loop closed the writer warns "loop is closed", not about itself. */
            v = PyObject_GetAttrString(self, "_loop");
            r = v ? PyObject_CallMethod(v, "is_closed", NULL) : NULL;
            open = r != NULL && PyObject_Not(r) == 1;
        }
        break;
    case ASC_DEL_SOCKET:
        r = PyObject_CallFunctionObjArgs(asc_lk.sock_fileno, self, NULL);
        open = r != NULL && PyLong_Check(r) && PyLong_AsLong(r) != -1;
        break;
    }
    Py_XDECREF(v);
    Py_XDECREF(r);
    PyErr_Clear();
    return open;
}

/* Report self as left open: kind as in asc_kind_*, the detail being the text the original warns
 * with after "unclosed ". Keeps any exception set. */
static void asc_report_open(const char *kind, PyObject *self)
{
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyObject *repr = PyObject_Repr(self);
    const char *rs = repr ? PyUnicode_AsUTF8(repr) : NULL;
    PyObject *detail = NULL;
    if (rs && (kind == asc_kind_transport || kind == asc_kind_loop))
        detail = PyUnicode_FromFormat("%s %s", kind, rs);
    else if (rs)
        detail = PyUnicode_FromString(rs);
    const char *d = detail ? PyUnicode_AsUTF8(detail) : NULL;
    if (d)
        asc_report_leak(kind, d, self);
    Py_XDECREF(detail);
    Py_XDECREF(repr);
    PyErr_Clear();
    PyErr_Restore(et, ev, etb);
}

/* data: (original __del__, how, kind as in asc_kind_*, with the address in an int). */
static PyObject *asc_del_wrapper(PyObject *data, PyObject *args, PyObject *kwargs)
{
    PyObject *orig = PyTuple_GET_ITEM(data, 0);
    PyObject *self = PyTuple_GET_SIZE(args) > 0 ? PyTuple_GET_ITEM(args, 0) : NULL;
    int how = (int)PyLong_AsLong(PyTuple_GET_ITEM(data, 1));
    const char *kind = (const char *)PyLong_AsVoidPtr(PyTuple_GET_ITEM(data, 2));
    int open = 0;
    if (asc_cfg.enabled && self) {
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        open = asc_still_open(how, self);
        PyErr_Restore(et, ev, etb);
    }
    /* Each finalizer forms its text before it closes, but StreamWriter's closes itself first:
     * the detail is the repr at the moment the original warns. */
    if (open && how != ASC_DEL_WRITER)
        asc_report_open(kind, self);
    asc_in_wrapped_del++;
    PyObject *r = PyObject_Call(orig, args, kwargs);
    asc_in_wrapped_del--;
    if (open && how == ASC_DEL_WRITER)
        asc_report_open(kind, self);
    if (r == NULL) {
        /* What the interpreter does when a __del__ raises (-W error::ResourceWarning), naming
         * the original as it did without us: "Exception ignored in: <function ...__del__ ...>". */
        PyErr_WriteUnraisable(orig);
        r = Py_None;
        Py_INCREF(r);
    }
    return r;
}

static PyMethodDef asc_del_wrapper_def = {"__del__", (PyCFunction)(void (*)(void))asc_del_wrapper,
                                          METH_VARARGS | METH_KEYWORDS,
                                          "aioscope notes a resource left open, then the original __del__."};

/* Put the wrapper on the class of module.cls that defines __del__ (itself or a base), around
 * orig; for socket.socket, which defines none, around _socket.socket.__del__. Classes missing
 * on this version or platform (StreamWriter has no __del__ below 3.11) are skipped. */
static int asc_wrap_del(const char *module_name, const char *cls_name, int how, const char *kind)
{
    PyObject *mod = PyImport_ImportModule(module_name);
    PyObject *cls = mod ? PyObject_GetAttrString(mod, cls_name) : NULL;
    Py_XDECREF(mod);
    int rc = 0;
    if (cls && PyType_Check(cls)) {
        PyObject *mro = ((PyTypeObject *)cls)->tp_mro;
        PyObject *owner = NULL, *orig = NULL; /* borrowed */
        for (Py_ssize_t i = 0; mro && i < PyTuple_GET_SIZE(mro) && orig == NULL; i++) {
            owner = PyTuple_GET_ITEM(mro, i);
            orig = PyDict_GetItemString(((PyTypeObject *)owner)->tp_dict, "__del__");
        }
        int ok = orig && (how == ASC_DEL_SOCKET ? owner != cls : PyFunction_Check(orig));
        if (ok && how == ASC_DEL_SOCKET)
            owner = cls; /* a __del__ of its own, calling the C finalizer of _socket.socket */
        if (ok && (((PyTypeObject *)owner)->tp_flags & Py_TPFLAGS_HEAPTYPE)) {
            PyObject *kp = PyLong_FromVoidPtr((void *)kind);
            PyObject *data = kp ? Py_BuildValue("(OiO)", orig, how, kp) : NULL;
            PyObject *fn = data ? PyCFunction_New(&asc_del_wrapper_def, data) : NULL;
            PyObject *meth = fn ? PyInstanceMethod_New(fn) : NULL;
            rc = meth ? PyObject_SetAttrString(owner, "__del__", meth) : -1;
            Py_XDECREF(meth);
            Py_XDECREF(fn);
            Py_XDECREF(data);
            Py_XDECREF(kp);
        }
    }
    Py_XDECREF(cls);
    if (rc == 0)
        PyErr_Clear();
    return rc;
}

/* ---- uvloop: the warnings the program shows ----------------------------------------------------- */
/* What kind of resource an "unclosed ..." text names (one of the asc_kind_* strings, compared
 * by address), or NULL when it is not one of ours. */
static const char *asc_resource_kind(const char *text)
{
    if (strncmp(text, "unclosed transport ", 19) == 0)
        return asc_kind_transport;
    if (strncmp(text, "unclosed event loop ", 20) == 0)
        return asc_kind_loop;
    if (strncmp(text, "unclosed resource <", 19) == 0) /* uvloop's handles */
        return asc_kind_transport;
    return NULL;
}

/* The replacement of warnings._showwarnmsg(msg): the original shows everything it showed; an
 * "unclosed ..." ResourceWarning that no wrapped finalizer gave (uvloop's) is reported first. */
static PyObject *asc_showwarnmsg(PyObject *unused, PyObject *msg)
{
    if (asc_cfg.enabled && asc_in_wrapped_del == 0) {
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        PyObject *category = PyObject_GetAttrString(msg, "category");
        if (category && PyType_Check(category) &&
            PyType_IsSubtype((PyTypeObject *)category, (PyTypeObject *)PyExc_ResourceWarning)) {
            PyObject *message = PyObject_GetAttrString(msg, "message");
            PyObject *text = message ? PyObject_Str(message) : NULL;
            PyObject *source = PyObject_GetAttrString(msg, "source");
            const char *t = text ? PyUnicode_AsUTF8(text) : NULL;
            const char *kind = t ? asc_resource_kind(t) : NULL;
            if (kind)
                asc_report_leak(kind, t + 9, source != Py_None ? source : NULL); /* after "unclosed " */
            Py_XDECREF(message);
            Py_XDECREF(text);
            Py_XDECREF(source);
        }
        Py_XDECREF(category);
        PyErr_Clear();
        PyErr_Restore(et, ev, etb);
    }
    return PyObject_CallFunctionObjArgs(asc_lk.orig_show, msg, NULL);
}

static PyMethodDef asc_showwarnmsg_def = {"_showwarnmsg", asc_showwarnmsg, METH_O,
                                          "aioscope: notes uvloop's unclosed resources, then shows warnings as before."};

/* ---- init --------------------------------------------------------------------------------------- */
int asc_leaks_init(PyObject *module)
{
    asc_lk.warnings = PyImport_ImportModule("warnings");
    PyObject *socket = PyImport_ImportModule("socket");
    PyObject *csocket = PyImport_ImportModule("_socket");
    PyObject *ctype = csocket ? PyObject_GetAttrString(csocket, "socket") : NULL;
    Py_XDECREF(csocket);
    if (asc_lk.warnings == NULL || socket == NULL || ctype == NULL) {
        Py_XDECREF(socket);
        Py_XDECREF(ctype);
        return -1;
    }
    asc_lk.socket_type = PyObject_GetAttrString(socket, "socket");
    asc_lk.sock_fileno = PyObject_GetAttrString(ctype, "fileno");
    Py_DECREF(socket);
    Py_DECREF(ctype);
    PyObject *base_events = PyImport_ImportModule("asyncio.base_events");
    asc_lk.loop_type = base_events ? PyObject_GetAttrString(base_events, "BaseEventLoop") : NULL;
    Py_XDECREF(base_events);
    if (asc_lk.loop_type == NULL)
        return -1;
    asc_lk.socket_sites = PyDict_New();
    asc_lk.loop_sites = PyDict_New();
    asc_lk.loop_sweep_at = 64;
    asc_lk.orig_show = PyObject_GetAttrString(asc_lk.warnings, "_showwarnmsg");
    if (!asc_lk.socket_type || !asc_lk.sock_fileno || !asc_lk.socket_sites || !asc_lk.orig_show)
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

    static const struct {
        const char *module, *cls;
        int how;
        const char *kind;
    } dels[] = {
        {"asyncio.selector_events", "_SelectorTransport", ASC_DEL_SOCK_ATTR, asc_kind_transport},
        {"asyncio.base_subprocess", "BaseSubprocessTransport", ASC_DEL_NOT_CLOSED, asc_kind_transport},
        {"asyncio.unix_events", "_UnixReadPipeTransport", ASC_DEL_PIPE_ATTR, asc_kind_transport},
        {"asyncio.unix_events", "_UnixWritePipeTransport", ASC_DEL_PIPE_ATTR, asc_kind_transport},
        {"asyncio.sslproto", "_SSLProtocolTransport", ASC_DEL_NOT_CLOSED, asc_kind_transport},
        {"asyncio.base_events", "BaseEventLoop", ASC_DEL_LOOP, asc_kind_loop},
        {"asyncio.streams", "StreamWriter", ASC_DEL_WRITER, asc_kind_writer},
        {"socket", "socket", ASC_DEL_SOCKET, asc_kind_socket},
    };
    for (size_t i = 0; i < sizeof dels / sizeof dels[0]; i++)
        if (asc_wrap_del(dels[i].module, dels[i].cls, dels[i].how, dels[i].kind) < 0)
            return -1;

    PyObject *fn = PyCFunction_New(&asc_showwarnmsg_def, NULL);
    int rc = fn ? PyObject_SetAttrString(asc_lk.warnings, "_showwarnmsg", fn) : -1;
    Py_XDECREF(fn);
    return rc;
}
