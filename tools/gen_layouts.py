#!/usr/bin/env python3
"""Generate src/attach/layouts_gen.c: per-version CPython struct offsets for the attach walkers.

The offsets are not typed by hand. For every interpreter given on the command line this script
runs gdb in batch mode on the interpreter's shared libpython (which carries DWARF debug info in
the pyenv builds) and on its `_asyncio` extension module, and asks gdb to evaluate
`(long)&((TYPE *)0)->MEMBER` or `sizeof(TYPE)` for each field listed in FIELDS below. When a
field has several candidate spellings (CPython renamed many members between 3.8 and 3.13) the
first one gdb accepts wins, and the generated table says which one it was. A field no candidate
matches is written as -1, meaning "this version has no such member"; the walkers check that.

Usage (what produced the committed file):
    python3 tools/gen_layouts.py $(pyenv root)/versions/{3.8.18,3.9.18,3.10.13,3.11.7,3.12.1,3.13.0}/bin/python3 \
        > src/attach/layouts_gen.c

The same file runs inside gdb (`gdb -batch -x tools/gen_layouts.py`) to do the evaluation; the
two halves talk through the environment variable ASC_GEN_QUERIES and stdout lines prefixed
"ASCGEN ".
"""
import json
import os
import subprocess
import sys

# (field name in asc_layout, kind, [candidate expressions]).
# kind "off": offset of TYPE->MEMBER; kind "size": sizeof(TYPE); kind "const": the value of an
# enum constant (from the DWARF enumeration types); kind "hole4": the offset of the first four
# bytes, 4-aligned, that no member of TYPE covers (alignment padding between or after members).
FIELDS_LIBPYTHON = [
    ("runtime_interpreters_head", "off", ["_PyRuntimeState:interpreters.head"]),
    ("interp_next", "off", ["PyInterpreterState:next"]),
    ("interp_threads_head", "off", ["PyInterpreterState:threads.head", "PyInterpreterState:tstate_head"]),
    ("interp_modules", "off", ["PyInterpreterState:imports.modules", "PyInterpreterState:modules"]),
    ("interp_sysdict", "off", ["PyInterpreterState:sysdict"]),
    ("tstate_next", "off", ["PyThreadState:next"]),
    ("tstate_interp", "off", ["PyThreadState:interp"]),
    ("tstate_frame", "off", ["PyThreadState:current_frame", "PyThreadState:frame"]),
    ("tstate_cframe", "off", ["PyThreadState:cframe"]),
    ("cframe_current_frame", "off", ["_PyCFrame:current_frame"]),
    ("tstate_thread_id", "off", ["PyThreadState:thread_id"]),
    ("tstate_native_thread_id", "off", ["PyThreadState:native_thread_id"]),
    ("frame_back", "off", ["PyFrameObject:f_back"]),
    ("frame_code", "off", ["PyFrameObject:f_code"]),
    ("frame_lasti", "off", ["PyFrameObject:f_lasti"]),
    ("frame_valuestack", "off", ["PyFrameObject:f_valuestack"]),
    ("frame_stacktop", "off", ["PyFrameObject:f_stacktop"]),
    ("frame_stackdepth", "off", ["PyFrameObject:f_stackdepth"]),
    ("iframe_code", "off", ["_PyInterpreterFrame:f_executable", "_PyInterpreterFrame:f_code"]),
    ("iframe_previous", "off", ["_PyInterpreterFrame:previous"]),
    ("iframe_instr", "off", ["_PyInterpreterFrame:instr_ptr", "_PyInterpreterFrame:prev_instr"]),
    ("iframe_stacktop", "off", ["_PyInterpreterFrame:stacktop"]),
    ("iframe_owner", "off", ["_PyInterpreterFrame:owner"]),
    ("iframe_localsplus", "off", ["_PyInterpreterFrame:localsplus"]),
    ("code_firstlineno", "off", ["PyCodeObject:co_firstlineno"]),
    ("code_filename", "off", ["PyCodeObject:co_filename"]),
    ("code_name", "off", ["PyCodeObject:co_name"]),
    ("code_qualname", "off", ["PyCodeObject:co_qualname"]),
    ("code_linetable", "off", ["PyCodeObject:co_linetable", "PyCodeObject:co_lnotab"]),
    ("code_code", "off", ["PyCodeObject:co_code"]),
    ("code_code_adaptive", "off", ["PyCodeObject:co_code_adaptive"]),
    ("coro_frame", "off", ["PyCoroObject:cr_frame"]),
    ("coro_iframe", "off", ["PyCoroObject:cr_iframe"]),
    ("coro_frame_state", "off", ["PyCoroObject:cr_frame_state"]),
    ("coro_qualname", "off", ["PyCoroObject:cr_qualname"]),
    ("gen_iframe", "off", ["PyGenObject:gi_iframe"]),
    ("gen_frame", "off", ["PyGenObject:gi_frame"]),
    ("gen_frame_state", "off", ["PyGenObject:gi_frame_state"]),
    ("gen_qualname", "off", ["PyGenObject:gi_qualname"]),
    ("wr_object", "off", ["PyWeakReference:wr_object"]),
    ("set_used", "off", ["PySetObject:used"]),
    ("set_mask", "off", ["PySetObject:mask"]),
    ("set_table", "off", ["PySetObject:table"]),
    ("sizeof_setentry", "size", ["setentry"]),
    ("dict_used", "off", ["PyDictObject:ma_used"]),
    ("dict_keys", "off", ["PyDictObject:ma_keys"]),
    ("dict_values", "off", ["PyDictObject:ma_values"]),
    ("keys_size", "off", ["PyDictKeysObject:dk_size"]),
    ("keys_log2_size", "off", ["PyDictKeysObject:dk_log2_size"]),
    ("keys_log2_index_bytes", "off", ["PyDictKeysObject:dk_log2_index_bytes"]),
    ("keys_kind", "off", ["PyDictKeysObject:dk_kind"]),
    ("keys_nentries", "off", ["PyDictKeysObject:dk_nentries"]),
    ("keys_indices", "off", ["PyDictKeysObject:dk_indices"]),
    ("sizeof_dict_key_entry", "size", ["PyDictKeyEntry"]),
    ("sizeof_dict_unicode_entry", "size", ["PyDictUnicodeEntry"]),
    ("dictvalues_values", "off", ["struct _dictvalues:values"]),
    ("ascii_length", "off", ["PyASCIIObject:length"]),
    ("ascii_state", "off", ["PyASCIIObject:state"]),
    ("sizeof_ascii", "size", ["PyASCIIObject"]),
    ("sizeof_compact", "size", ["PyCompactUnicodeObject"]),
    ("bytes_sval", "off", ["PyBytesObject:ob_sval"]),
    ("type_name", "off", ["PyTypeObject:tp_name"]),
    ("type_flags", "off", ["PyTypeObject:tp_flags"]),
    ("type_basicsize", "off", ["PyTypeObject:tp_basicsize"]),
    ("type_dictoffset", "off", ["PyTypeObject:tp_dictoffset"]),
    ("heaptype_cached_keys", "off", ["PyHeapTypeObject:ht_cached_keys"]),
    ("long_digit", "off", ["PyLongObject:long_value.ob_digit", "PyLongObject:ob_digit"]),
    ("long_size", "off", ["PyLongObject:long_value.lv_tag", "PyLongObject:ob_base.ob_size"]),
    ("var_size", "off", ["PyVarObject:ob_size"]),
    ("tuple_items", "off", ["PyTupleObject:ob_item"]),
    ("list_items", "off", ["PyListObject:ob_item"]),
    ("module_dict", "off", ["PyModuleObject:md_dict"]),
    ("method_func", "off", ["PyMethodObject:im_func"]),
    ("method_self", "off", ["PyMethodObject:im_self"]),
    # _PyInterpreterFrame.owner and generator frame states (Include/internal/pycore_frame.h).
    ("frame_owned_by_cstack", "const", ["FRAME_OWNED_BY_CSTACK"]),
    ("frame_state_suspended", "const", ["FRAME_SUSPENDED"]),
    ("frame_state_suspended_yield_from", "const", ["FRAME_SUSPENDED_YIELD_FROM"]),
    ("frame_state_completed", "const", ["FRAME_COMPLETED"]),
]

# Opcode numbers are #defines, which DWARF does not keep: they are read from the interpreter's
# own installed Include/opcode.h (`#define NAME value`).
OPCODES = [
    ("op_yield_from", "YIELD_FROM"),
    ("op_resume", "RESUME"),
    ("op_resume_quick", "RESUME_QUICK"),
    ("op_instrumented_resume", "INSTRUMENTED_RESUME"),
]

# The C structs of the _asyncio extension (Modules/_asynciomodule.c): not in any installed header.
FIELDS_ASYNCIO = [
    ("task_loop", "off", ["TaskObj:task_loop"]),
    ("task_state", "off", ["TaskObj:task_state"]),
    ("task_callback0", "off", ["TaskObj:task_callback0"]),
    ("task_callbacks", "off", ["TaskObj:task_callbacks"]),
    ("task_fut_waiter", "off", ["TaskObj:task_fut_waiter"]),
    ("task_coro", "off", ["TaskObj:task_coro"]),
    ("task_name", "off", ["TaskObj:task_name"]),
    ("future_loop", "off", ["FutureObj:fut_loop"]),
    ("future_state", "off", ["FutureObj:fut_state"]),
    ("future_callback0", "off", ["FutureObj:fut_callback0"]),
    ("future_callbacks", "off", ["FutureObj:fut_callbacks"]),
    ("future_dict", "off", ["FutureObj:dict"]),
    ("futureiter_future", "off", ["futureiterobject:future"]),
    # Four bytes of padding in every C Task: the agent keeps the index of its per-task record
    # there instead of making each task 8 bytes larger (src/agent/tasks.c).
    ("task_spare4", "hole4", ["TaskObj"]),
    ("sizeof_task", "size", ["TaskObj"]),
]


def gdb_hole4(gdb, typename):
    """Inside gdb: offset of the first 4-aligned 4 bytes of TYPE no member covers, or None."""
    t = gdb.lookup_type(typename).strip_typedefs()
    used = bytearray(t.sizeof)
    for f in t.fields():
        if f.bitsize:  # a bit-field: the bytes its bits touch
            first, last = f.bitpos // 8, (f.bitpos + f.bitsize - 1) // 8
        else:
            first, last = f.bitpos // 8, f.bitpos // 8 + f.type.sizeof - 1
        for i in range(first, last + 1):
            used[i] = 1
    for off in range(0, t.sizeof - 3, 4):
        if not any(used[off:off + 4]):
            return off
    return None


def gdb_half():
    """Inside gdb: evaluate each query, print one JSON line."""
    import gdb  # noqa: F401  (only exists inside gdb)
    queries = json.loads(os.environ["ASC_GEN_QUERIES"])
    out = {}
    for name, kind, cands in queries:
        for cand in cands:
            if kind == "hole4":
                try:
                    off = gdb_hole4(gdb, cand)
                except gdb.error:
                    continue
                if off is not None:
                    out[name] = [off, "padding in " + cand]
                    break
                continue
            if kind == "off":
                typ, member = cand.split(":")
                expr = "(long)&((%s *)0)->%s" % (typ, member)
            elif kind == "const":
                expr = "(long)%s" % cand
            else:
                expr = "(long)sizeof(%s)" % cand
            try:
                out[name] = [int(gdb.parse_and_eval(expr)), cand]
                break
            except gdb.error:
                continue
    print("ASCGEN " + json.dumps(out))


def run_gdb(binary, fields):
    env = dict(os.environ, ASC_GEN_QUERIES=json.dumps(fields))
    proc = subprocess.run(["gdb", "-batch", "-nx", "-x", os.path.abspath(__file__), binary],
                          env=env, capture_output=True, text=True, check=True)
    for line in proc.stdout.splitlines():
        if line.startswith("ASCGEN "):
            return json.loads(line[len("ASCGEN "):])
    raise SystemExit("gdb gave no answer for %s:\n%s" % (binary, proc.stderr))


def describe(python):
    """Version, libpython path and _asyncio path of an interpreter."""
    code = ("import sys, sysconfig, _asyncio, os;"
            "print(sys.version_info[0], sys.version_info[1], sys.version.split()[0]);"
            "print(os.path.join(sysconfig.get_config_var('LIBDIR'), sysconfig.get_config_var('INSTSONAME')));"
            "print(_asyncio.__file__);"
            "print(os.path.join(sysconfig.get_paths()['include'], 'opcode.h'))")
    lines = subprocess.run([python, "-c", code], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    major, minor, full = lines[0].split()
    return int(major), int(minor), full, lines[1], lines[2], lines[3]


def read_opcodes(header):
    """The OPCODES values #defined in an opcode.h."""
    defines = {}
    with open(header) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "#define" and parts[2].isdigit():
                defines[parts[1]] = int(parts[2])
    return {field: [defines[name], "opcode.h:" + name] for field, name in OPCODES if name in defines}


def main(pythons):
    rows = []
    for py in pythons:
        major, minor, full, libpython, asyncio_so, opcode_h = describe(py)
        got = run_gdb(libpython, FIELDS_LIBPYTHON)
        got.update(run_gdb(asyncio_so, FIELDS_ASYNCIO))
        got.update(read_opcodes(opcode_h))
        rows.append((major, minor, full, libpython, asyncio_so, opcode_h, got))
    rows.sort()
    w = sys.stdout.write
    w("/* GENERATED by tools/gen_layouts.py — do not edit by hand; rerun the generator.\n *\n")
    w(" * CPython struct offsets (x86-64, bytes) for the attach walkers, one entry per minor\n")
    w(" * version, read by gdb from the DWARF debug info of these binaries:\n")
    for major, minor, full, lib, aso, oph, _ in rows:
        w(" *   %s: %s\n *   %*s  %s\n *   %*s  %s\n" % (full, lib, len(full), "", aso, len(full), "", oph))
    w(" * Each value's comment names what gdb resolved (TYPE:MEMBER, sizeof TYPE, or an enum\n")
    w(" * constant) or the opcode.h #define it was read from. ASC_ABSENT means the version has\n")
    w(" * no such member or constant. */\n")
    w('#include <stddef.h>\n\n#include "attach/layouts.h"\n\n')
    w("const asc_layout asc_layouts[] = {\n")
    for major, minor, full, lib, aso, oph, got in rows:
        w("    {\n")
        w("        .version = 0x%02x%02x0000, /* generated from %s */\n" % (major, minor, full))
        for name, kind, _ in FIELDS_LIBPYTHON + FIELDS_ASYNCIO + [(f, "op", None) for f, _ in OPCODES]:
            if name in got:
                val, src = got[name]
                what = "sizeof " + src if kind == "size" else src
                w("        .%s = %d, /* %s */\n" % (name, val, what))
            else:
                w("        .%s = ASC_ABSENT,\n" % name)
        w("    },\n")
    w("};\n")
    w("const size_t asc_layouts_count = sizeof asc_layouts / sizeof asc_layouts[0];\n")


if __name__ == "__main__":
    try:
        import gdb  # noqa: F401
        gdb_half()
    except ImportError:
        if len(sys.argv) < 2:
            raise SystemExit(__doc__)
        main(sys.argv[1:])
