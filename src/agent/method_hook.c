/* method_hook.c: a C callable put in a class's dict in place of one of its methods, calling the
 * original around a hook of ours. trace.c puts one over BaseEventLoop._run_once (loop
 * iterations, --trace only). (A C method such as contextvars.Context.run needs none: steps.c
 * puts a plain C method descriptor of its own there, which calls the original's C function.)
 *
 * It is flagged Py_TPFLAGS_METHOD_DESCRIPTOR, so `obj.method(...)` (and the interpreter's
 * specialised method-call forms) call it unbound with the instance first, as they call a function
 * or a C method descriptor: no bound method is created per call. Read from an instance it binds
 * like a function; anything else asked of it (__name__, __qualname__, __doc__, its repr) is the
 * original's answer, so introspection sees what it saw. Class-level, never on an instance: an
 * instance attribute would turn the inline attribute values of CPython 3.11+ into a dict and slow
 * every other attribute access of that object. */
#include "agent/agent.h"

#include <stddef.h>


typedef struct {
    PyObject_HEAD
    PyObject *orig; /* owned: the method replaced, called with the instance first */
    vectorcallfunc vectorcall;
} asc_method_hook;

static PyObject *asc_method_hook_descr_get(PyObject *self, PyObject *obj, PyObject *type) {
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(self);
        return self;
    }
    return PyMethod_New(self, obj);
}

static PyObject *asc_method_hook_getattro(PyObject *self, PyObject *name) {
    PyObject *r = PyObject_GenericGetAttr(self, name);
    if (r || !PyErr_ExceptionMatches(PyExc_AttributeError)) return r;
    PyErr_Clear();
    return PyObject_GetAttr(((asc_method_hook *)self)->orig, name);
}

static int asc_method_hook_traverse(PyObject *self, visitproc visit, void *arg) {
    Py_VISIT(((asc_method_hook *)self)->orig);
    return 0;
}

static int asc_method_hook_clear(PyObject *self) {
    Py_CLEAR(((asc_method_hook *)self)->orig);
    return 0;
}

static void asc_method_hook_dealloc(PyObject *self) {
    PyObject_GC_UnTrack(self);
    asc_method_hook_clear(self);
    PyObject_GC_Del(self);
}

static PyObject *asc_method_hook_repr(PyObject *self) {
    PyObject *orig = ((asc_method_hook *)self)->orig;
    if (!orig) return PyUnicode_FromString("<aioscope method hook>");
    return PyObject_Repr(orig);
}

static PyTypeObject asc_method_hook_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aioscope._agent.MethodHook",
    .tp_basicsize = sizeof(asc_method_hook),
    .tp_dealloc = asc_method_hook_dealloc,
    .tp_repr = asc_method_hook_repr,
    .tp_call = PyVectorcall_Call,
    .tp_getattro = asc_method_hook_getattro,
    .tp_traverse = asc_method_hook_traverse,
    .tp_clear = asc_method_hook_clear,
    .tp_descr_get = asc_method_hook_descr_get,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
                Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_vectorcall_offset = offsetof(asc_method_hook, vectorcall),
};

PyObject *asc_method_hook_new(PyObject *orig, vectorcallfunc call) {
    if (!(asc_method_hook_type.tp_flags & Py_TPFLAGS_READY) && PyType_Ready(&asc_method_hook_type) < 0)
        return NULL;
    asc_method_hook *h = PyObject_GC_New(asc_method_hook, &asc_method_hook_type);
    if (!h) return NULL;
    Py_INCREF(orig);
    h->orig = orig;
    h->vectorcall = call;
    PyObject_GC_Track((PyObject *)h);
    return (PyObject *)h;
}

PyObject *asc_method_hook_orig(PyObject *self) { return ((asc_method_hook *)self)->orig; }
