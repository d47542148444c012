/* Snapshots (threads and asyncio tasks) of fake interpreters of every supported version through
 * the fake-memory backend: tasks found through sys.modules['_asyncio'], names, coroutine chains
 * with lines, the await tree; cyclic awaits, self-awaiting coroutines, corrupt and truncated
 * structures give errors or skipped tasks, never a crash or a hang. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "aioscope/attach.h"
#include "aioscope/error.h"
#include "attach/target.h"
#include "fakepy.h"
#include "test.h"

static const uint32_t versions[] = {0x030812f0, 0x030912f0, 0x030a0df0, 0x030b07f0, 0x030c01f0, 0x030d00f0};
#define NVERSIONS (sizeof versions / sizeof versions[0])

typedef struct {
    uint64_t runtime, set, task_type, a, b, c, coro_c2;
} scene;

/* "main" awaits task "worker-1"; "chain" runs a coroutine awaiting another coroutine. */
static void build_scene(fakepy *fp, scene *s) {
    uint64_t code_main = fp_code(fp, "/app/a.py", "main", 10);
    uint64_t code_w = fp_code(fp, "/app/a.py", "worker", 20);
    s->task_type = fp_type(fp, "_asyncio.Task", 0);
    s->b = fp_task(fp, s->task_type, "worker-1", fp_coro(fp, code_w, 6, 0), 0);
    s->a = fp_task(fp, s->task_type, "main", fp_coro(fp, code_main, 12, s->b), s->b);
    s->coro_c2 = fp_coro(fp, code_w, 12, 0);
    s->c = fp_task(fp, s->task_type, "chain", fp_coro(fp, code_main, 0, s->coro_c2), 0);
    uint64_t tasks[] = {s->a, s->b, s->c};
    s->runtime = fp_runtime(fp, fp_frame(fp, code_main, 6, 0), s->task_type, tasks, 3, &s->set);
}

static aioscope_target *open_fake(fakepy *fp, uint32_t version, uint64_t runtime) {
    aioscope_target *t;
    CHECK_EQ_INT(asc_target_open_mem(fp_read, fp, version, runtime, &fp->types, &t), 0);
    return t;
}

TEST(attach_snapshot_tasks_every_version) {
    for (size_t v = 0; v < NVERSIONS; v++) {
        fakepy fp;
        scene s;
        fp_init(&fp, versions[v]);
        build_scene(&fp, &s);
        aioscope_target *t = open_fake(&fp, versions[v], s.runtime);
        aioscope_snapshot *snap;
        CHECK_EQ_INT(aioscope_target_snapshot(t, &snap), 0);
        CHECK_EQ_INT(snap->nthreads, 1);
        CHECK_EQ_INT(snap->threads[0].nframes, 1);
        CHECK_EQ_STR(snap->threads[0].frames[0].function, "main");
        CHECK_EQ_INT(snap->threads[0].frames[0].line, 12);
        CHECK_EQ_INT(snap->ntasks, 3);
        CHECK_EQ_INT(snap->unreadable_tasks, 0);
        /* Sorted by name. */
        aioscope_snap_task *chain = &snap->tasks[0], *main = &snap->tasks[1], *worker = &snap->tasks[2];
        CHECK_EQ_STR(chain->name, "chain");
        CHECK_EQ_STR(main->name, "main");
        CHECK_EQ_STR(worker->name, "worker-1");
        CHECK_EQ_INT(worker->id, s.b);
        /* main is suspended at offset 12 (line 15), awaiting the task worker-1. */
        CHECK_EQ_INT(main->ncoro, 1);
        CHECK_EQ_INT(main->coro[0].line, 15);
        CHECK_EQ_STR(main->awaiting, "Task");
        CHECK_EQ_INT(main->awaiting_id, s.b);
        CHECK_EQ_INT(worker->nawaited_by, 1);
        CHECK_EQ_INT(worker->awaited_by[0], s.a);
        CHECK_EQ_INT(main->nawaited_by, 0);
        CHECK(worker->awaiting == NULL);
        /* chain: main (not started: line 10) awaiting worker at offset 12 (line 25). */
        CHECK_EQ_INT(chain->ncoro, 2);
        CHECK_EQ_STR(chain->coro[0].function, "main");
        CHECK_EQ_STR(chain->coro[1].function, "worker");
        CHECK_EQ_INT(chain->coro[1].line, 25);
        CHECK_EQ_INT(aioscope_snapshot_find_task(snap, s.c), 0);
        CHECK_EQ_INT(aioscope_snapshot_find_task(snap, 12345), -1);
        /* The JSON form names the columns the memory reader cannot know. */
        aioscope_buf b;
        aioscope_buf_init(&b);
        aioscope_snapshot_to_json(snap, &b);
        CHECK(b.data && strstr(b.data, "\"unavailable\":[\"busy_s\",\"steps\",\"spawned_by\"]"));
        CHECK(strstr(b.data, "\"name\":\"worker-1\""));
        aioscope_buf_free(&b);
        aioscope_snapshot_free(snap);
        aioscope_target_close(t);
        fp_free(&fp);
    }
}

TEST(attach_snapshot_cyclic_awaits) {
    for (size_t v = 0; v < NVERSIONS; v++) {
        fakepy fp;
        scene s;
        fp_init(&fp, versions[v]);
        build_scene(&fp, &s);
        /* worker-1 now waits on main: a deadlock cycle in the await graph. */
        fp_put64(s.b, fp.L->task_fut_waiter, s.a);
        /* chain's inner coroutine awaits itself: an endless coroutine chain. */
        uint64_t self_awaiting = fp_coro(&fp, fp_code(&fp, "/app/b.py", "loop", 1), 6, 0);
        if (fp.minor <= 10) {
            uint64_t f, slot = fp_alloc(&fp, 16), co_code;
            memcpy(&f, (void *)(uintptr_t)(self_awaiting + (uint64_t)fp.L->coro_frame), 8);
            uint64_t code;
            memcpy(&code, (void *)(uintptr_t)(f + (uint64_t)fp.L->frame_code), 8);
            memcpy(&co_code, (void *)(uintptr_t)(code + (uint64_t)fp.L->code_code), 8);
            fp_put8(co_code + (uint64_t)fp.L->bytes_sval, 8, 72);
            fp_put64(slot, 0, self_awaiting);
            if (fp.minor == 10) {
                fp_put64(f, fp.L->frame_valuestack, slot);
                fp_put32(f, fp.L->frame_stackdepth, 1);
            } else {
                fp_put64(f, fp.L->frame_stacktop, slot + 8);
            }
        } else {
            uint64_t f = self_awaiting + (uint64_t)fp.L->coro_iframe, ip;
            memcpy(&ip, (void *)(uintptr_t)(f + (uint64_t)fp.L->iframe_instr), 8);
            fp_put8(ip, 2, 151);
            fp_put8(ip, 3, 2);
            fp_put8(self_awaiting, fp.L->coro_frame_state, (uint8_t)-1);
            fp_put32(f, fp.L->iframe_stacktop, 1);
            fp_put64(f, fp.L->iframe_localsplus, self_awaiting);
        }
        fp_put64(s.c, fp.L->task_coro, self_awaiting);
        aioscope_target *t = open_fake(&fp, versions[v], s.runtime);
        aioscope_snapshot *snap;
        CHECK_EQ_INT(aioscope_target_snapshot(t, &snap), 0);
        /* The self-awaiting task is dropped and counted; the cycle is reported both ways. */
        CHECK_EQ_INT(snap->ntasks, 2);
        CHECK_EQ_INT(snap->unreadable_tasks, 1);
        CHECK_EQ_INT(snap->tasks[0].nawaited_by, 1);
        CHECK_EQ_INT(snap->tasks[0].awaited_by[0], s.b);
        CHECK_EQ_INT(snap->tasks[1].nawaited_by, 1);
        CHECK_EQ_INT(snap->tasks[1].awaited_by[0], s.a);
        aioscope_snapshot_free(snap);
        aioscope_target_close(t);
        fp_free(&fp);
    }
}

TEST(attach_snapshot_truncated_and_corrupt_structures) {
    for (size_t v = 0; v < NVERSIONS; v++) {
        fakepy fp;
        scene s;
        fp_init(&fp, versions[v]);
        build_scene(&fp, &s);
        aioscope_target *t = open_fake(&fp, versions[v], s.runtime);
        aioscope_snapshot *snap;
        /* A task cut short: skipped (its type cannot be read), the others listed. */
        fp_truncate(&fp, s.c, 8);
        CHECK_EQ_INT(aioscope_target_snapshot(t, &snap), 0);
        CHECK_EQ_INT(snap->ntasks, 2);
        aioscope_snapshot_free(snap);
        fp_truncate(&fp, s.c, 256);
        /* A task whose name is garbage: listed as "?". */
        fp_put64(s.b, fp.L->task_name, s.a);
        CHECK_EQ_INT(aioscope_target_snapshot(t, &snap), 0);
        CHECK_EQ_INT(snap->ntasks, 3);
        CHECK_EQ_STR(snap->tasks[0].name, "?");
        aioscope_snapshot_free(snap);
        /* An impossible task state: the task is dropped and counted. */
        fp_put32(s.a, fp.L->task_state, 77);
        CHECK_EQ_INT(aioscope_target_snapshot(t, &snap), 0);
        CHECK_EQ_INT(snap->ntasks, 2);
        CHECK_EQ_INT(snap->unreadable_tasks, 1);
        aioscope_snapshot_free(snap);
        /* A set whose mask claims 2^40 slots: refused, not walked. */
        fp_put64(s.set, fp.L->set_mask, (1ULL << 40) - 1);
        CHECK(aioscope_target_snapshot(t, &snap) < 0);
        /* A set whose table is cut short: the read fails, the snapshot says so. */
        fp_put64(s.set, fp.L->set_mask, 1023);
        CHECK(aioscope_target_snapshot(t, &snap) < 0);
        /* A thread list that loops back on itself: bounded. */
        fp_put64(s.set, fp.L->set_mask, 7);
        uint64_t interp, ts;
        memcpy(&interp, (void *)(uintptr_t)(s.runtime + (uint64_t)fp.L->runtime_interpreters_head), 8);
        memcpy(&ts, (void *)(uintptr_t)(interp + (uint64_t)fp.L->interp_threads_head), 8);
        fp_put64(ts, fp.L->tstate_next, ts);
        CHECK_EQ_INT(aioscope_target_snapshot(t, &snap), AIOSCOPE_EAGAIN);
        aioscope_target_close(t);
        fp_free(&fp);
    }
}

TEST(attach_snapshot_random_corruption_never_crashes) {
    uint64_t seed = 0x243f6a8885a308d3ULL;
    for (size_t v = 0; v < NVERSIONS; v++) {
        for (int round = 0; round < 150; round++) {
            fakepy fp;
            scene s;
            fp_init(&fp, versions[v]);
            build_scene(&fp, &s);
            for (int k = 0; k < 6; k++) {
                seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
                size_t r = (size_t)(seed % fp.nregions);
                size_t off = (size_t)((seed >> 24) % (fp.regions[r].len - 8));
                /* Either random bits or a pointer to another object (the nastier case). */
                uint64_t junk = (seed & 1) ? seed >> 3 : (uint64_t)(uintptr_t)fp.regions[(r * 7 + 3) % fp.nregions].base + 32;
                memcpy(fp.regions[r].base + off, &junk, 8);
            }
            aioscope_target *t = open_fake(&fp, versions[v], s.runtime);
            aioscope_snapshot *snap = NULL;
            int rc = aioscope_target_snapshot(t, &snap);
            CHECK(rc <= 0);
            CHECK((rc == 0) == (snap != NULL));
            if (snap) CHECK(snap->ntasks <= 3);
            aioscope_snapshot_free(snap);
            aioscope_target_close(t);
            fp_free(&fp);
        }
    }
}

/* The fuzzer's input format (fp_image_header + a memory image mapped at FP_IMAGE_BASE) read
 * back through its backend finds the scene's tasks; with AIOSCOPE_FUZZ_SEED_DIR set, the images
 * are also written there as seed inputs for tests/fuzz/fuzz_walkers. */
TEST(attach_image_format_roundtrip_and_fuzz_seeds) {
    size_t cap = 1 << 20;
    void *mem = mmap((void *)(uintptr_t)FP_IMAGE_BASE, cap, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    CHECK(mem == (void *)(uintptr_t)FP_IMAGE_BASE);
    const char *dir = getenv("AIOSCOPE_FUZZ_SEED_DIR");
    for (size_t v = 0; v < NVERSIONS; v++) {
        fakepy fp;
        scene s;
        fp_init_arena(&fp, versions[v], mem, cap);
        build_scene(&fp, &s);
        fp_image_header h;
        memset(&h, 0, sizeof h);
        h.version = versions[v];
        h.runtime = s.runtime;
        h.types = fp.types;
        uint64_t interp;
        memcpy(&interp, (void *)(uintptr_t)(s.runtime + (uint64_t)fp.L->runtime_interpreters_head), 8);
        memcpy(&h.tstate, (void *)(uintptr_t)(interp + (uint64_t)fp.L->interp_threads_head), 8);
        size_t len = sizeof h + fp.arena_used;
        uint8_t *img = malloc(len);
        CHECK(img != NULL);
        memcpy(img, &h, sizeof h);
        memcpy(img + sizeof h, mem, fp.arena_used);
        memset(mem, 0xa5, fp.arena_used); /* prove every read comes from the image */
        fp_image im = {img + sizeof h, fp.arena_used};
        aioscope_target *t;
        CHECK_EQ_INT(asc_target_open_mem(fp_image_read, &im, h.version, h.runtime, &h.types, &t), 0);
        aioscope_snapshot *snap;
        CHECK_EQ_INT(aioscope_target_snapshot(t, &snap), 0);
        CHECK_EQ_INT(snap->ntasks, 3);
        CHECK_EQ_STR(snap->tasks[2].name, "worker-1");
        aioscope_frame frames[4];
        size_t n;
        CHECK_EQ_INT(aioscope_thread_stack(t, h.tstate, frames, 4, &n), 0);
        CHECK_EQ_INT(n, 1);
        CHECK_EQ_INT(frames[0].line, 12);
        aioscope_snapshot_free(snap);
        aioscope_target_close(t);
        if (dir) {
            char path[512];
            snprintf(path, sizeof path, "%s/scene-3.%d.bin", dir, fp.minor);
            FILE *f = fopen(path, "wb");
            CHECK(f != NULL);
            CHECK(fwrite(img, 1, len, f) == len);
            fclose(f);
        }
        free(img);
    }
    munmap(mem, cap);
}
