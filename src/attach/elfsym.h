/* Finding a CPython interpreter's symbols in another process (internal).
 *
 * The interpreter is either a shared libpython (pyenv, most distributions) or linked into the
 * executable (Debian's /usr/bin/python3.11, stripped but still exporting the C API in .dynsym).
 * We list the process's file mappings in /proc/PID/maps, read the ELF symbol tables of the
 * candidate files (.symtab when present, else .dynsym) and add each file's load bias. */
#ifndef ASC_ATTACH_ELFSYM_H
#define ASC_ATTACH_ELFSYM_H

#include <stddef.h>
#include <stdint.h>

/* Look up names[0..n) in the interpreter of process pid: the first mapped file that defines
 * names[0] (the anchor, e.g. "_PyRuntime") wins; addrs[i] is 0 for names it does not define.
 * binary receives that file's path; minor_hint the minor version parsed from a
 * "libpython3.X" file name, or 0. Returns 0, AIOSCOPE_ESRCH, AIOSCOPE_EPERM,
 * AIOSCOPE_EUNSUPPORTED (a libpython without the anchor: Python 2, 3.6, ...) or AIOSCOPE_ENOTPY
 * (no mapped file defines the anchor). */
int asc_elf_find_symbols(int pid, const char *const *names, uint64_t *addrs, size_t n,
                         char *binary, size_t binary_cap, int *minor_hint);

#endif
