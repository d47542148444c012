/* Choosing the layout table entry for a target's interpreter version. */
#include "attach/layouts.h"

const asc_layout *asc_layout_find(uint32_t py_version_hex) {
    uint32_t minor = py_version_hex & 0xffff0000u;
    for (size_t i = 0; i < asc_layouts_count; i++) {
        if (asc_layouts[i].version != minor) continue;
        /* 3.10.0 .. 3.10.5 (before bpo-45390's backport in 3.10.6) very likely share 3.9's
         * Task layout; we have no such interpreter to generate a table from, so refuse rather
         * than print garbage. */
        if (minor == 0x030a0000u && ((py_version_hex >> 8) & 0xff) < 6) return NULL;
        return &asc_layouts[i];
    }
    return NULL;
}
