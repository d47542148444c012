/* fuzz_wire: the CLI's reader of the agent's binary snapshot form (aioscope_snapshot_from_binary)
 * on arbitrary bytes — an answer on the control socket is untrusted input.
 *
 * Besides "no crash, no leak, no read past the end" (the sanitizers check those), it checks what
 * the reader promises: on failure *out is NULL; on success the agent section lies inside the
 * input, every index in the snapshot is in range (running_task, thread), every string is
 * non-NULL where the model requires it, and the snapshot written back
 * (aioscope_snapshot_to_binary) reads again into the same snapshot, byte for byte in its --json
 * form. Inputs need the 8-byte magic to get anywhere: the seed corpus (corpus/wire/) has it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aioscope/snapshot_wire.h"

#define FUZZ_CHECK(cond)                                                                       \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "fuzz_wire: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

static void check(const aioscope_snapshot *s) {
    for (size_t i = 0; i < s->nthreads; i++) {
        const aioscope_snap_thread *th = &s->threads[i];
        FUZZ_CHECK(th->running_task >= -1 && th->running_task < (long)s->ntasks);
        for (size_t k = 0; k < th->nframes; k++) FUZZ_CHECK(th->frames[k].file && th->frames[k].function);
    }
    for (size_t i = 0; i < s->ntasks; i++) {
        const aioscope_snap_task *t = &s->tasks[i];
        FUZZ_CHECK(t->name != NULL);
        FUZZ_CHECK(t->thread >= -1 && t->thread < (long)s->nthreads);
        for (size_t k = 0; k < t->ncoro; k++) FUZZ_CHECK(t->coro[k].file && t->coro[k].function);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    aioscope_snapshot *s = (aioscope_snapshot *)1;
    size_t off, len;
    int rc = aioscope_snapshot_from_binary(data, size, &s, &off, &len);
    if (rc < 0) {
        FUZZ_CHECK(s == NULL);
        return 0;
    }
    FUZZ_CHECK(off + len <= size);
    check(s);
    aioscope_buf b, j1, j2;
    aioscope_buf_init(&b);
    aioscope_buf_init(&j1);
    aioscope_buf_init(&j2);
    aioscope_snapshot_to_binary(s, NULL, &b);
    if (!b.oom) {
        aioscope_snapshot *again = NULL;
        FUZZ_CHECK(aioscope_snapshot_from_binary(b.data, b.len, &again, NULL, NULL) == 0);
        FUZZ_CHECK(again->ntasks == s->ntasks && again->nthreads == s->nthreads);
        check(again);
        aioscope_snapshot_to_json(s, &j1);
        aioscope_snapshot_to_json(again, &j2);
        FUZZ_CHECK(j1.oom || j2.oom || (j1.len == j2.len && memcmp(j1.data, j2.data, j1.len) == 0));
        aioscope_snapshot_free(again);
    }
    aioscope_buf_free(&j1);
    aioscope_buf_free(&j2);
    aioscope_buf_free(&b);
    aioscope_snapshot_free(s);
    return 0;
}
