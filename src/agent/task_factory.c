/* task_factory.c: the chaining with a program's own task factory, and, where tasks.c makes a Task
 * subclass (no layout for the C Task patched in place), how loops come to make its tasks.
 *
 * With the C Task patched in place (tasks.c) every loop's tasks are ours and no factory is
 * needed. With the subclass: asyncio's BaseEventLoop.create_task, without a factory, calls
 * asyncio.tasks.Task, and at init that name is given the subclass, so asyncio's loops (and every
 * subclass that keeps their create_task) make our tasks with no factory at all; other loops
 * (uvloop's create_task calls asyncio.Task, bound when uvloop is imported; a loop class with its
 * own create_task) get our task factory; it names a task as create_task would without a factory,
 * so that default task numbers stay as in a plain run (asc_create_task_name).
 * A program's own task factory is respected: loop.set_task_factory/get_task_factory are
 * wrapped (on the loop's class, or the instance) so that the program sees its own factory (or
 * None); its factory is chained: its tasks get the creation site of the create_task call, and
 * tasks that are not ours keep it in a task attribute. The wrappers (and our factory where
 * needed) go on a loop when it is created (asyncio's loops through leaks.c's
 * BaseEventLoop.__init__ hook, uvloop's from the second loop on) or at the latest when it starts
 * running (loops.c). */
#include "agent/tasks.h"

#include <frameobject.h>
#include <string.h>

/* ---- the task factory ------------------------------------------------------------------------ */
/* ("loop", *kwnames) -- or ("loop", *kwnames, "name") when with_name -- as a new reference, from
 * a one-entry cache per shape keyed by the kwnames tuple. */
static PyObject *asc_kwnames_with_loop(PyObject *kwnames, int with_name)
{
    static PyObject *cached_key[2], *cached_names[2]; /* owned; key NULL stands for "no kwnames" */
    static int cached_valid[2];
    with_name = with_name ? 1 : 0;
    if (cached_valid[with_name] && cached_key[with_name] == kwnames) {
        Py_INCREF(cached_names[with_name]);
        return cached_names[with_name];
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *names = PyTuple_New(1 + nkw + with_name);
    PyObject *loop_s = names ? PyUnicode_InternFromString("loop") : NULL;
    PyObject *name_s = loop_s && with_name ? PyUnicode_InternFromString("name") : NULL;
    if (loop_s == NULL || (with_name && name_s == NULL)) {
        Py_XDECREF(loop_s);
        Py_XDECREF(names);
        return NULL;
    }
    PyTuple_SET_ITEM(names, 0, loop_s);
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        Py_INCREF(k);
        PyTuple_SET_ITEM(names, 1 + i, k);
    }
    if (with_name)
        PyTuple_SET_ITEM(names, 1 + nkw, name_s);
    Py_XINCREF(kwnames);
    Py_XSETREF(cached_key[with_name], kwnames);
    Py_INCREF(names);
    Py_XSETREF(cached_names[with_name], names);
    cached_valid[with_name] = 1;
    return names;
}

/* The name given to asyncio's BaseEventLoop.create_task when it is the one calling the factory,
 * as a new reference; NULL (no error) when it is someone else, or the name is None, or the
 * factory is passed the name already.
 * create_task (3.8 to 3.13.0) calls a task factory without the name and names the task
 * afterwards (set_name), while without a factory it passes name= to Task(). Task() without a
 * name takes the next default number ("Task-N", a counter of the _asyncio module), so under
 * our factory a named task would use up a number and every later unnamed task would be named
 * differently than in a plain run. The name is read from create_task's own frame (the factory
 * is a C function: the current frame is its caller's) and passed to Task(), which then leaves
 * the counter alone, as without a factory. uvloop's create_task (Cython, no frame) passes no
 * name to Task() even without a factory, so its tasks are left as they are. */
static PyObject *asc_create_task_name(PyObject *kwnames)
{
    if (asc_t.create_task_code == NULL)
        return NULL;
    for (Py_ssize_t i = 0, n = kwnames ? PyTuple_GET_SIZE(kwnames) : 0; i < n; i++)
        if (PyUnicode_Check(PyTuple_GET_ITEM(kwnames, i)) &&
            PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, i), "name") == 0)
            return NULL;
#if PY_VERSION_HEX >= 0x030B0000
    /* Straight from the interpreter's frame: PyEval_GetFrame would make a frame object for
     * create_task's frame on every task (and 3.11's PyFrame_GetLocals a dict). */
    PyObject *name = asc_caller_fast_local(asc_t.create_task_code, asc_t.name_index);
    Py_XINCREF(name);
#else
    PyFrameObject *f = PyEval_GetFrame(); /* borrowed */
    if (f == NULL)
        return NULL;
    PyCodeObject *code = PyFrame_GetCode(f);
    Py_DECREF(code); /* only compared: the frame keeps it alive */
    if ((PyObject *)code != asc_t.create_task_code)
        return NULL;
    PyObject *name = NULL;
    if (asc_t.name_index >= 0 && asc_t.name_index < code->co_nlocals) {
        name = f->f_localsplus[asc_t.name_index];
        Py_XINCREF(name);
    }
#endif
    if (name == NULL)
        PyErr_Clear();
    if (name == Py_None)
        Py_CLEAR(name);
    return name;
}

/* factory(loop, coro, **kwargs) -> our Task(coro, loop=loop, **kwargs), with its creation site. */
static PyObject *asc_task_factory(PyObject *unused, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "task factory takes (loop, coro)");
        return NULL;
    }
    /* (coro, loop, kwargs..., [name]): create_task passes at most name, context and
     * eager_start. */
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *stack[8];
    if (3 + nkw > (Py_ssize_t)(sizeof stack / sizeof stack[0])) {
        PyErr_SetString(PyExc_TypeError, "too many arguments for a task");
        return NULL;
    }
    PyObject *name = asc_create_task_name(kwnames);
    /* Task(coro, loop=loop, <kwargs>[, name=name]): kwnames becomes ("loop", *kwnames[, "name"]).
     * A call site passes the same kwnames tuple every time (create_task's `context=`), so the
     * combined tuple is cached for the last one seen: no allocation per task. */
    PyObject *names = asc_kwnames_with_loop(kwnames, name != NULL);
    if (names == NULL) {
        Py_XDECREF(name);
        return NULL;
    }
    stack[0] = args[1];
    stack[1] = args[0];
    for (Py_ssize_t i = 0; i < nkw; i++)
        stack[2 + i] = args[2 + i];
    if (name)
        stack[2 + nkw] = name;
    /* The subclass's __init__ (tasks.c) notes the creation site, time and spawner. */
    PyObject *task = PyObject_Vectorcall((PyObject *)asc_t.type, stack, 1, names);
    Py_DECREF(names);
    Py_XDECREF(name);
    return task;
}

static PyMethodDef asc_factory_def = {
    "_aioscope_task_factory", (PyCFunction)(void (*)(void))asc_task_factory,
    METH_FASTCALL | METH_KEYWORDS, "aioscope's task factory: tasks that remember where they were created."};

/* A program's task factory, chained: the creation site is captured before the program's factory
 * runs, whose own frame would otherwise be the innermost user frame, and goes into the task's
 * record when the task is ours (a C Task, patched in place), else into an attribute of the task
 * (Task instances take attributes). self is the program's factory. Only programs with their own
 * factory pay for this. */
static PyObject *asc_chain_factory(PyObject *user, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames)
{
    asc_codeloc site;
    asc_capture_creation_site(&site);
    PyObject *task = PyObject_Vectorcall(user, args, (size_t)nargs, kwnames);
    asc_task_extra *x = task ? asc_extra(task) : NULL;
    if (x && site.code) {
        /* One of our tasks, made inside the program's factory: its __init__ saw the factory's
         * frame; the task was created where create_task was called. */
        asc_codeloc_clear(&x->created);
        x->created = site;
        return task;
    }
    if (task && site.code && x == NULL) {
        PyObject *t = Py_BuildValue("(Oi)", site.code, site.lasti);
        if (t == NULL || PyObject_SetAttrString(task, ASC_CREATED_ATTR, t) < 0)
            PyErr_Clear();
        Py_XDECREF(t);
    }
    asc_codeloc_clear(&site);
    return task;
}

static PyMethodDef asc_chain_factory_def = {
    "_aioscope_chained_task_factory", (PyCFunction)(void (*)(void))asc_chain_factory,
    METH_FASTCALL | METH_KEYWORDS, "The program's task factory, with aioscope noting where tasks are created."};

static int asc_is_chain(PyObject *f)
{
    return f && PyCFunction_Check(f) && ((PyCFunctionObject *)f)->m_ml == &asc_chain_factory_def;
}

/* 1 when the loop creates its tasks with asyncio's BaseEventLoop.create_task, which calls
 * asyncio.tasks.Task when it has no factory: with the subclass in its place (asc_t.task_replaced)
 * such a loop needs no factory of ours. Other loops (uvloop's, a loop class with its own
 * create_task) get our factory. */
static int asc_loop_makes_our_tasks(PyObject *loop)
{
    if (asc_t.in_place)
        return 1; /* every C Task is ours: any loop that makes them (uvloop's too) */
    if (!asc_t.task_replaced || asc_t.base_create_task == NULL)
        return 0;
    PyObject *meth = _PyType_Lookup(Py_TYPE(loop), asc_t.create_task_str); /* borrowed */
    return meth == asc_t.base_create_task;
}

/* What to hand the loop's own set_task_factory for what the program asked for. New ref. */
static PyObject *asc_factory_for(PyObject *loop, PyObject *requested)
{
    if (requested == Py_None) {
        PyObject *f = asc_loop_makes_our_tasks(loop) ? Py_None : asc_t.factory;
        Py_INCREF(f);
        return f;
    }
    if (!PyCallable_Check(requested)) { /* let the loop raise its own TypeError */
        Py_INCREF(requested);
        return requested;
    }
    return PyCFunction_New(&asc_chain_factory_def, requested);
}

/* ---- set_task_factory / get_task_factory as the program sees them ----------------------------
 * On the loop's class when it is a Python class (asyncio's loops, uvloop.Loop): a key more in
 * every loop's instance dict would cost each of the loop's own attribute reads (3.11 queue
 * ping-pong: 0.5 % more instructions for three keys). On the instance otherwise. */

static PyObject *asc_cls_set_task_factory(PyObject *orig, PyObject *const *args, Py_ssize_t nargs);
static PyObject *asc_cls_get_task_factory(PyObject *orig, PyObject *const *args, Py_ssize_t nargs);
static PyMethodDef asc_cls_set_def = {"set_task_factory", (PyCFunction)(void (*)(void))asc_cls_set_task_factory,
                                      METH_FASTCALL, "Set the loop's task factory (aioscope chains it)."};
static PyMethodDef asc_cls_get_def = {"get_task_factory", (PyCFunction)(void (*)(void))asc_cls_get_task_factory,
                                      METH_FASTCALL, "The loop's task factory, as the program set it."};

static int asc_is_cls_wrapper(PyObject *f)
{
    return f && PyCFunction_Check(f) &&
           (((PyCFunctionObject *)f)->m_ml == &asc_cls_set_def || ((PyCFunctionObject *)f)->m_ml == &asc_cls_get_def);
}

/* The loop class's own set_task_factory or get_task_factory (name), past our class-level
 * wrapper; a new reference. */
static PyObject *asc_factory_method(PyObject *loop, const char *name)
{
    PyObject *m = PyObject_GetAttrString((PyObject *)Py_TYPE(loop), name);
    if (asc_is_cls_wrapper(m)) { /* an instancemethod read from the class gives its function */
        PyObject *orig = ((PyCFunctionObject *)m)->m_self;
        Py_INCREF(orig);
        Py_DECREF(m);
        return orig;
    }
    return m;
}

/* loop.set_task_factory(f) as the program sees it: its factory is chained (None puts ours
 * back). */
static PyObject *asc_set_task_factory_of(PyObject *loop, PyObject *factory)
{
    PyObject *meth = asc_factory_method(loop, "set_task_factory");
    PyObject *f = meth ? asc_factory_for(loop, factory) : NULL;
    PyObject *r = f ? PyObject_CallFunctionObjArgs(meth, loop, f, NULL) : NULL;
    Py_XDECREF(f);
    Py_XDECREF(meth);
    return r;
}

/* loop.get_task_factory() as the program sees it: its own factory, or None. */
static PyObject *asc_get_task_factory_of(PyObject *loop)
{
    PyObject *meth = asc_factory_method(loop, "get_task_factory");
    PyObject *f = meth ? PyObject_CallFunctionObjArgs(meth, loop, NULL) : NULL;
    Py_XDECREF(meth);
    if (f == asc_t.factory) {
        Py_DECREF(f);
        Py_RETURN_NONE;
    }
    if (asc_is_chain(f)) {
        PyObject *user = ((PyCFunctionObject *)f)->m_self;
        Py_INCREF(user);
        Py_DECREF(f);
        return user;
    }
    return f;
}

/* The class-level wrappers: orig is the class's own method, args[0] the loop. A call of another
 * shape goes to the original, which raises what it would. */
static PyObject *asc_cls_set_task_factory(PyObject *orig, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2)
        return PyObject_Vectorcall(orig, args, (size_t)nargs, NULL);
    return asc_set_task_factory_of(args[0], args[1]);
}

static PyObject *asc_cls_get_task_factory(PyObject *orig, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1)
        return PyObject_Vectorcall(orig, args, (size_t)nargs, NULL);
    return asc_get_task_factory_of(args[0]);
}

/* The per-instance wrappers: self is a weak reference to the loop, so that the wrapper does not
 * keep the loop alive. */
static PyObject *asc_loop_set_task_factory(PyObject *wref, PyObject *factory)
{
    PyObject *loop = asc_weakref_target(wref);
    if (loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "event loop is gone");
        return NULL;
    }
    PyObject *r = asc_set_task_factory_of(loop, factory);
    Py_DECREF(loop);
    return r;
}

static PyObject *asc_loop_get_task_factory(PyObject *wref, PyObject *unused)
{
    PyObject *loop = asc_weakref_target(wref);
    if (loop == NULL)
        Py_RETURN_NONE;
    PyObject *r = asc_get_task_factory_of(loop);
    Py_DECREF(loop);
    return r;
}

static PyMethodDef asc_set_factory_def = {"set_task_factory", asc_loop_set_task_factory, METH_O,
                                          "Set the loop's task factory (aioscope chains it)."};
static PyMethodDef asc_get_factory_def = {"get_task_factory", asc_loop_get_task_factory, METH_NOARGS,
                                          "The loop's task factory, as the program set it."};

static int asc_install_factory(PyObject *loop);

/* 1 when the loop's set_task_factory is one of our wrappers (asc_install_factory ran on it or
 * on another loop of its class). */
static int asc_is_wrapped(PyObject *loop)
{
    PyObject *set = PyObject_GetAttr(loop, asc_t.set_factory_str);
    int wrapped = set && ((PyCFunction_Check(set) && ((PyCFunctionObject *)set)->m_ml == &asc_set_factory_def) ||
                          (PyMethod_Check(set) && asc_is_cls_wrapper(PyMethod_GET_FUNCTION(set))));
    Py_XDECREF(set);
    PyErr_Clear();
    return wrapped;
}

/* Put the class-level wrappers on tp, a Python class; 1 when it has them (now or before). */
static int asc_wrap_loop_class(PyTypeObject *tp)
{
    if (!(tp->tp_flags & Py_TPFLAGS_HEAPTYPE))
        return 0;
#ifdef Py_TPFLAGS_IMMUTABLETYPE
    if (tp->tp_flags & Py_TPFLAGS_IMMUTABLETYPE)
        return 0;
#endif
    static const char *const names[2] = {"set_task_factory", "get_task_factory"};
    PyMethodDef *defs[2] = {&asc_cls_set_def, &asc_cls_get_def};
    PyObject *meths[2] = {NULL, NULL};
    int ok = 1;
    for (int i = 0; i < 2 && ok; i++) {
        PyObject *orig = PyObject_GetAttrString((PyObject *)tp, names[i]);
        PyObject *fn = orig && !asc_is_cls_wrapper(orig) ? PyCFunction_New(defs[i], orig) : NULL;
        meths[i] = fn ? PyInstanceMethod_New(fn) : NULL;
        if (orig && asc_is_cls_wrapper(orig) && i == 0) { /* a base class has them already */
            Py_DECREF(orig);
            PyErr_Clear();
            return 1;
        }
        ok = meths[i] != NULL;
        Py_XDECREF(fn);
        Py_XDECREF(orig);
    }
    for (int i = 0; i < 2 && ok; i++)
        ok = PyObject_SetAttrString((PyObject *)tp, names[i], meths[i]) == 0;
    Py_XDECREF(meths[0]);
    Py_XDECREF(meths[1]);
    PyErr_Clear();
    return ok;
}

/* Put the per-instance wrappers on loop; 1 when done. */
static int asc_wrap_loop_instance(PyObject *loop)
{
    PyObject *wref = PyWeakref_NewRef(loop, NULL);
    PyObject *set = wref ? PyCFunction_New(&asc_set_factory_def, wref) : NULL;
    PyObject *get = wref ? PyCFunction_New(&asc_get_factory_def, wref) : NULL;
    int wrapped = set && get && PyObject_SetAttrString(loop, "set_task_factory", set) == 0 &&
                  PyObject_SetAttrString(loop, "get_task_factory", get) == 0;
    Py_XDECREF(set);
    Py_XDECREF(get);
    Py_XDECREF(wref);
    PyErr_Clear();
    return wrapped;
}

/* __init__ of a loop class that is not asyncio's (uvloop.Loop): the original, then our factory,
 * so tasks created before the loop runs get it. self is the original __init__. */
static PyObject *asc_loop_init_wrapper(PyObject *orig, PyObject *args, PyObject *kwargs)
{
    PyObject *r = PyObject_Call(orig, args, kwargs);
    if (r && asc_cfg.enabled && PyTuple_GET_SIZE(args) > 0)
        (void)asc_install_factory(PyTuple_GET_ITEM(args, 0));
    return r;
}

static PyMethodDef asc_loop_init_def = {"__init__", (PyCFunction)(void (*)(void))asc_loop_init_wrapper,
                                        METH_VARARGS | METH_KEYWORDS, "The loop's __init__, then aioscope's task factory."};

/* The first time a loop of a new Python class runs (uvloop.Loop is a Python subclass of its C
 * loop; asyncio's own loops are handled at creation by leaks.c's BaseEventLoop.__init__ hook),
 * wrap the class's __init__. And uvloop.run() below 3.11 has its own copy of
 * _cancel_all_tasks: wrap it as we wrap asyncio's. Both only once per class/module. */
static void asc_hook_loop_class(PyObject *loop)
{
    PyTypeObject *tp = Py_TYPE(loop);
    if ((tp->tp_flags & Py_TPFLAGS_HEAPTYPE) && PyDict_GetItemString(tp->tp_dict, "_aioscope_init_wrapped") == NULL) {
        PyObject *orig = PyObject_GetAttrString((PyObject *)tp, "__init__");
        PyObject *fn = orig ? PyCFunction_New(&asc_loop_init_def, orig) : NULL;
        PyObject *meth = fn ? PyInstanceMethod_New(fn) : NULL;
        if (meth && PyObject_SetAttrString((PyObject *)tp, "__init__", meth) == 0)
            (void)PyObject_SetAttrString((PyObject *)tp, "_aioscope_init_wrapped", Py_True);
        Py_XDECREF(meth);
        Py_XDECREF(fn);
        Py_XDECREF(orig);
    }
    PyErr_Clear();
    PyObject *uv_name = PyUnicode_FromString("uvloop");
    PyObject *uvloop = uv_name ? PyImport_GetModule(uv_name) : NULL; /* only when imported */
    Py_XDECREF(uv_name);
    if (uvloop && asc_t.uv_cancel_all == NULL) {
        asc_t.uv_cancel_all = PyObject_GetAttrString(uvloop, "_cancel_all_tasks");
        PyObject *wrapper = asc_t.uv_cancel_all ? PyCFunction_New(&asc_uv_cancel_all_def, NULL) : NULL;
        if (wrapper)
            (void)PyObject_SetAttrString(uvloop, "_cancel_all_tasks", wrapper);
        Py_XDECREF(wrapper);
    }
    Py_XDECREF(uvloop);
    PyErr_Clear();
}

int asc_tasks_on_loop_start(PyObject *loop)
{
    if (asc_t.type == NULL)
        return 0;
    asc_hook_loop_class(loop);
    return asc_install_factory(loop);
}

static int asc_install_factory(PyObject *loop)
{
    if (asc_cfg.dev_off & ASC_OFF_FACTORY)
        return 0;
    /* The factory the loop really has (past our wrappers). */
    PyObject *get = asc_factory_method(loop, "get_task_factory");
    PyObject *current = get ? PyObject_CallOneArg(get, loop) : NULL;
    Py_XDECREF(get);
    if (current == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (current == asc_t.factory || asc_is_chain(current)) {
        Py_DECREF(current);
        return 0; /* this loop has ours already (it ran before) */
    }
    /* Wrappers of set/get_task_factory, so that the program keeps seeing (and setting) its own
     * factory. A loop that takes neither keeps its factory unchanged when it has one; without
     * one it gets ours, which a later set_task_factory() of the program then replaces. */
    int wrapped = asc_is_wrapped(loop) || asc_wrap_loop_class(Py_TYPE(loop)) ||
                  asc_wrap_loop_instance(loop);
    if (wrapped || current == Py_None) {
        PyObject *f = asc_factory_for(loop, current);
        PyObject *meth = asc_factory_method(loop, "set_task_factory");
        PyObject *r = f && meth ? PyObject_CallFunctionObjArgs(meth, loop, f, NULL) : NULL;
        Py_XDECREF(r);
        Py_XDECREF(meth);
        Py_XDECREF(f);
    }
    Py_DECREF(current);
    PyErr_Clear();
    return 0;
}

int asc_task_factory_init(void)
{
    asc_t.factory = PyCFunction_New(&asc_factory_def, NULL);
    asc_t.create_task_str = PyUnicode_InternFromString("create_task");
    asc_t.set_factory_str = PyUnicode_InternFromString("set_task_factory");
    if (!asc_t.factory || !asc_t.create_task_str || !asc_t.set_factory_str)
        return -1;

    /* For asc_create_task_name: create_task's code and where its `name` is. Without them a named
     * task only uses up a default number (as before). */
    asc_t.name_index = -1;
    asc_t.name_str = PyUnicode_InternFromString("name");
    PyObject *be = asc_t.name_str ? PyImport_ImportModule("asyncio.base_events") : NULL;
    PyObject *cls = be ? PyObject_GetAttrString(be, "BaseEventLoop") : NULL;
    PyObject *fn = cls ? PyObject_GetAttrString(cls, "create_task") : NULL;
    if (fn && PyFunction_Check(fn)) {
        Py_INCREF(fn);
        asc_t.base_create_task = fn;
    }
    PyObject *code = fn ? PyObject_GetAttrString(fn, "__code__") : NULL;
    if (code && PyCode_Check(code)) {
        /* co_varnames (a new reference from 3.11, where it is computed) indexes the fast
         * locals as long as the function has no cell variables, which shift them. */
        PyObject *varnames = PyObject_GetAttrString(code, "co_varnames");
        PyObject *cells = PyObject_GetAttrString(code, "co_cellvars");
        for (Py_ssize_t i = 0; varnames && PyTuple_Check(varnames) && i < PyTuple_GET_SIZE(varnames); i++)
            if (PyUnicode_Check(PyTuple_GET_ITEM(varnames, i)) &&
                PyUnicode_Compare(PyTuple_GET_ITEM(varnames, i), asc_t.name_str) == 0)
                asc_t.name_index = i;
        int plain = cells && PyTuple_Check(cells) && PyTuple_GET_SIZE(cells) == 0;
        Py_XDECREF(varnames);
        Py_XDECREF(cells);
        PyErr_Clear();
        if (plain && asc_t.name_index >= 0 && asc_t.name_index < ((PyCodeObject *)code)->co_nlocals)
        {
            asc_t.create_task_code = code;
            code = NULL;
        }
    }
    Py_XDECREF(code);
    Py_XDECREF(fn);
    Py_XDECREF(cls);
    Py_XDECREF(be);
    PyErr_Clear();

    /* asyncio's create_task without a factory calls asyncio.tasks.Task(coro, loop=, name=,
     * context=): with our subclass there, asyncio's loops make our tasks with no factory call
     * (a factory costs a Python-level call with keywords and a set_name per task: ~2 % of a
     * task-spawning program). Only the tasks module's name is replaced: asyncio.Task stays the
     * C Task, which every task still is an instance of. */
    if (!(asc_cfg.dev_off & ASC_OFF_FACTORY) && !asc_t.in_place) {
        PyObject *tasks_mod = PyImport_ImportModule("asyncio.tasks");
        PyObject *cur = tasks_mod ? PyObject_GetAttrString(tasks_mod, "Task") : NULL;
        if (cur == (PyObject *)asc_t.base &&
            PyObject_SetAttrString(tasks_mod, "Task", (PyObject *)asc_t.type) == 0)
            asc_t.task_replaced = 1;
        Py_XDECREF(cur);
        Py_XDECREF(tasks_mod);
        PyErr_Clear();
    }
    return 0;
}
