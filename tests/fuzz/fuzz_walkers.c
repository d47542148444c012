/* Fuzz target: the attach walkers (threads, frames, line tables, dicts, sets, tasks) over
 * arbitrary target memory.
 *
 * The input is an fp_image_header (version, _PyRuntime, a thread state and the type-object
 * addresses) followed by a memory image mapped at FP_IMAGE_BASE (tests/unit/attach/fakepy.h).
 * Every read outside the image fails like an unmapped page. Whatever the bytes, a snapshot and a
 * stack read must return (0 or a negative code) without crashing, hanging or leaking. Seeds:
 * corpus/walkers/, whole interpreter scenes of each version written by the unit test
 * attach_image_format_roundtrip_and_fuzz_seeds (AIOSCOPE_FUZZ_SEED_DIR=tests/fuzz/corpus/walkers). */
#include <stdint.h>
#include <string.h>

#include "aioscope/attach.h"
#include "attach/layouts.h"
#include "attach/target.h"
#include "fakepy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fp_image_header h;
    if (size < sizeof h) return 0;
    memcpy(&h, data, sizeof h);
    if (!asc_layout_find(h.version)) return 0;
    fp_image im = {data + sizeof h, size - sizeof h};
    aioscope_target *t;
    if (asc_target_open_mem(fp_image_read, &im, h.version, h.runtime, &h.types, &t) != 0) return 0;
    aioscope_snapshot *snap = NULL;
    if (aioscope_target_snapshot(t, &snap) == 0) aioscope_snapshot_free(snap);
    aioscope_frame frames[64];
    size_t n;
    aioscope_thread_stack(t, h.tstate, frames, 64, &n);
    aioscope_target_close(t);
    return 0;
}
