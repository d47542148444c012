/* Reading CPython objects out of target memory: type checks, str, bytes, int, dict, set,
 * list/tuple and instance attributes (internal).
 *
 * Every function validates what it reads (the object's type pointer against the built-in type
 * addresses in the target, sizes against the ASC_MAX_* bounds) and returns a negative
 * AIOSCOPE_E* code on anything inconsistent: AIOSCOPE_EFAULT for unreadable memory,
 * AIOSCOPE_EBADDATA for readable nonsense, AIOSCOPE_ENOENT for a key that is not there. */
#ifndef ASC_ATTACH_PYOBJ_H
#define ASC_ATTACH_PYOBJ_H

#include <stddef.h>
#include <stdint.h>

#include "attach/target.h"

/* ob_type of obj (PyObject: ob_refcnt at 0, ob_type at 8 in every supported version). */
int asc_obj_type(aioscope_target *t, uint64_t obj, uint64_t *type);
/* 0 when obj's type is `type` (or `type` is unknown, i.e. 0); AIOSCOPE_EBADDATA otherwise. */
int asc_obj_check(aioscope_target *t, uint64_t obj, uint64_t type);
/* tp_name of a type object; cached per walk; never NULL ("?" when unreadable). */
const char *asc_type_name(aioscope_target *t, uint64_t type);
/* tp_name of obj's type; never NULL. */
const char *asc_obj_type_name(aioscope_target *t, uint64_t obj);

/* A str as UTF-8 into out[0..cap), NUL-terminated, cut at cap-1 bytes (on a character
 * boundary). */
int asc_read_str(aioscope_target *t, uint64_t obj, char *out, size_t cap);
/* A bytes object's contents, at most max bytes; *out is malloc'd, the caller frees it. */
int asc_read_bytes(aioscope_target *t, uint64_t obj, uint8_t **out, size_t *len, size_t max);
/* An int that fits in int64_t. */
int asc_read_long(aioscope_target *t, uint64_t obj, int64_t *out);

/* dict[key] for a str key; AIOSCOPE_ENOENT when absent. */
int asc_dict_get(aioscope_target *t, uint64_t dict, const char *key, uint64_t *val);
/* Calls fn for every (key, value) of a dict; stops early when fn returns non-zero (and returns
 * that value). */
typedef int (*asc_kv_fn)(void *ctx, uint64_t key, uint64_t val);
int asc_dict_foreach(aioscope_target *t, uint64_t dict, asc_kv_fn fn, void *ctx);
/* Calls fn for every key of a set (entries are not validated: fn checks their type). */
typedef int (*asc_item_fn)(void *ctx, uint64_t item);
int asc_set_foreach(aioscope_target *t, uint64_t set, asc_item_fn fn, void *ctx);
/* The items of a list or tuple, at most max; *n is how many were written. */
int asc_seq_items(aioscope_target *t, uint64_t seq, uint64_t *out, size_t max, size_t *n);
/* obj.__dict__[name] for instances of Python classes and of C types with a dict slot. */
int asc_obj_getattr(aioscope_target *t, uint64_t obj, const char *name, uint64_t *val);

#endif
