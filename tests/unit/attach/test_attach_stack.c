/* aioscope_thread_stack on fake interpreters of every supported version: through the self
 * backend (process_vm_readv on our own pid, as the agent uses it) and the fake-memory backend;
 * correct files, functions and lines for every line-table format; garbage, cyclic and
 * truncated structures give an error code, never a crash or a hang. */
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "aioscope/attach.h"
#include "aioscope/error.h"
#include "attach/frames.h"
#include "attach/target.h"
#include "fakepy.h"
#include "test.h"

static const uint32_t versions[] = {0x030812f0, 0x030912f0, 0x030a0df0, 0x030b07f0, 0x030c01f0, 0x030d00f0};
#define NVERSIONS (sizeof versions / sizeof versions[0])

/* main (line 10+5) -> handler (line 20+2) -> helper (line 30): innermost first. */
static uint64_t build_stack(fakepy *fp, uint64_t *frames) {
    uint64_t c1 = fp_code(fp, "/app/main.py", "main", 10);
    uint64_t c2 = fp_code(fp, "/app/handler.py", "Handler.handle", 20);
    uint64_t c3 = fp_code(fp, "/app/util.py", "helper", 30);
    frames[0] = fp_frame(fp, c1, 12, 0);
    frames[1] = fp_frame(fp, c2, 6, frames[0]);
    frames[2] = fp_frame(fp, c3, 0, frames[1]);
    return fp_tstate(fp, frames[2]);
}

static void check_stack(const aioscope_frame *f, size_t n) {
    CHECK_EQ_INT(n, 3);
    CHECK_EQ_STR(f[0].file, "/app/util.py");
    CHECK_EQ_STR(f[0].function, "helper");
    CHECK_EQ_INT(f[0].line, 30);
    CHECK_EQ_STR(f[1].file, "/app/handler.py");
    CHECK_EQ_STR(f[1].function, "Handler.handle");
    CHECK_EQ_INT(f[1].line, 22);
    CHECK_EQ_STR(f[2].function, "main");
    CHECK_EQ_INT(f[2].line, 15);
}

TEST(attach_self_stack_every_version) {
    for (size_t v = 0; v < NVERSIONS; v++) {
        fakepy fp;
        uint64_t frames[3];
        fp_init(&fp, versions[v]);
        uint64_t ts = build_stack(&fp, frames);
        aioscope_target *t;
        CHECK_EQ_INT(aioscope_target_open_self(versions[v], 0x1000, &t), 0);
        /* The unit-test binary has no Python: no type objects to check against, so the walk
         * relies on the layout alone here. */
        aioscope_frame out[8];
        size_t n = 0;
        CHECK_EQ_INT(aioscope_thread_stack(t, ts, out, 8, &n), 0);
        check_stack(out, n);
        aioscope_target_close(t);
        fp_free(&fp);
    }
}

TEST(attach_fake_stack_every_version_with_type_checks) {
    for (size_t v = 0; v < NVERSIONS; v++) {
        fakepy fp;
        uint64_t frames[3];
        fp_init(&fp, versions[v]);
        uint64_t ts = build_stack(&fp, frames);
        aioscope_target *t;
        CHECK_EQ_INT(asc_target_open_mem(fp_read, &fp, versions[v], 0x1000, &fp.types, &t), 0);
        aioscope_frame out[8];
        size_t n = 0;
        CHECK_EQ_INT(aioscope_thread_stack(t, ts, out, 8, &n), 0);
        check_stack(out, n);
        /* A code object of the wrong type is refused. */
        uint64_t bogus = fp_str(&fp, "not code");
        fp_put64(frames[1], fp.minor <= 10 ? fp.L->frame_code : fp.L->iframe_code, bogus);
        if (fp.minor < 13) {
            CHECK_EQ_INT(aioscope_thread_stack(t, ts, out, 8, &n), AIOSCOPE_EBADDATA);
        } else {
            /* 3.13 frames may run non-code executables (f_executable): skipped, not fatal. */
            CHECK_EQ_INT(aioscope_thread_stack(t, ts, out, 8, &n), 0);
            CHECK_EQ_INT(n, 2);
            CHECK_EQ_STR(out[1].function, "main");
        }
        aioscope_target_close(t);
        fp_free(&fp);
    }
}

TEST(attach_stack_cut_at_max) {
    fakepy fp;
    uint64_t frames[3];
    fp_init(&fp, 0x030c01f0);
    uint64_t ts = build_stack(&fp, frames);
    aioscope_target *t;
    CHECK_EQ_INT(aioscope_target_open_self(0x030c01f0, 0x1000, &t), 0);
    aioscope_frame out[2];
    size_t n = 0;
    CHECK_EQ_INT(aioscope_thread_stack(t, ts, out, 2, &n), 0);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_STR(out[0].function, "helper");
    CHECK_EQ_INT(aioscope_thread_stack(t, ts, NULL, 4, &n), AIOSCOPE_EINVAL);
    aioscope_target_close(t);
    fp_free(&fp);
}

TEST(attach_stack_cycle_is_bounded) {
    for (size_t v = 0; v < NVERSIONS; v++) {
        fakepy fp;
        uint64_t frames[3];
        fp_init(&fp, versions[v]);
        uint64_t ts = build_stack(&fp, frames);
        /* The outermost frame points back at the innermost one: an endless chain. */
        fp_put64(frames[0], fp.minor <= 10 ? fp.L->frame_back : fp.L->iframe_previous, frames[2]);
        aioscope_target *t;
        CHECK_EQ_INT(aioscope_target_open_self(versions[v], 0x1000, &t), 0);
        static aioscope_frame out[4096];
        size_t n = 0;
        CHECK_EQ_INT(aioscope_thread_stack(t, ts, out, 4096, &n), AIOSCOPE_ELIMIT);
        CHECK_EQ_INT(aioscope_thread_stack(t, ts, out, 7, &n), 0);
        CHECK_EQ_INT(n, 7);
        aioscope_target_close(t);
        fp_free(&fp);
    }
}

TEST(attach_stack_dangling_pointers_self_backend) {
    /* Pointers into unmapped memory must give EFAULT through process_vm_readv, not SIGSEGV. */
    void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(page != MAP_FAILED);
    munmap(page, 4096);
    uint64_t gone = (uint64_t)(uintptr_t)page;
    for (size_t v = 0; v < NVERSIONS; v++) {
        fakepy fp;
        uint64_t frames[3];
        fp_init(&fp, versions[v]);
        uint64_t ts = build_stack(&fp, frames);
        aioscope_target *t;
        aioscope_frame out[8];
        size_t n;
        CHECK_EQ_INT(aioscope_target_open_self(versions[v], 0x1000, &t), 0);
        CHECK_EQ_INT(aioscope_thread_stack(t, gone, out, 8, &n), AIOSCOPE_EFAULT);
        fp_put64(frames[1], fp.minor <= 10 ? fp.L->frame_back : fp.L->iframe_previous, gone + 64);
        CHECK_EQ_INT(aioscope_thread_stack(t, ts, out, 8, &n), AIOSCOPE_EFAULT);
        /* Misaligned and kernel-half pointers are refused before any read. */
        CHECK(aioscope_thread_stack(t, 0xffff800000001000ULL, out, 8, &n) < 0);
        CHECK(aioscope_thread_stack(t, ts + 3, out, 8, &n) < 0);
        aioscope_target_close(t);
        fp_free(&fp);
    }
}

TEST(attach_stack_truncated_objects_fake_backend) {
    for (size_t v = 0; v < NVERSIONS; v++) {
        fakepy fp;
        uint64_t frames[3];
        fp_init(&fp, versions[v]);
        uint64_t ts = build_stack(&fp, frames);
        aioscope_target *t;
        aioscope_frame out[8];
        size_t n;
        CHECK_EQ_INT(asc_target_open_mem(fp_read, &fp, versions[v], 0x1000, &fp.types, &t), 0);
        /* Each frame cut to 8 bytes in turn: the read of its header fails. */
        for (int i = 0; i < 3; i++) {
            fp_truncate(&fp, frames[i], 8);
            CHECK_EQ_INT(aioscope_thread_stack(t, ts, out, 8, &n), AIOSCOPE_EFAULT);
            fp_truncate(&fp, frames[i], 256);
        }
        CHECK_EQ_INT(aioscope_thread_stack(t, ts, out, 8, &n), 0);
        aioscope_target_close(t);
        fp_free(&fp);
    }
}

TEST(attach_stack_random_corruption_never_crashes) {
    /* Scribble random words over every frame and code object; any outcome but a crash or a
     * hang is acceptable, and the walk must stay within its frame bound. */
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    for (size_t v = 0; v < NVERSIONS; v++) {
        for (int round = 0; round < 200; round++) {
            fakepy fp;
            uint64_t frames[3];
            fp_init(&fp, versions[v]);
            uint64_t ts = build_stack(&fp, frames);
            for (int k = 0; k < 4; k++) {
                seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
                size_t r = (size_t)(seed % fp.nregions);
                size_t off = (size_t)((seed >> 32) % (fp.regions[r].len - 8));
                uint64_t junk = (seed & 1) ? seed : (uint64_t)(uintptr_t)fp.regions[(r + 1) % fp.nregions].base;
                memcpy(fp.regions[r].base + off, &junk, 8);
            }
            aioscope_target *t;
            aioscope_frame out[64];
            size_t n = 0;
            CHECK_EQ_INT(asc_target_open_mem(fp_read, &fp, versions[v], 0x1000, &fp.types, &t), 0);
            int rc = aioscope_thread_stack(t, ts, out, 64, &n);
            CHECK(rc <= 0 && n <= 64);
            aioscope_target_close(t);
            fp_free(&fp);
        }
    }
}

TEST(attach_line_tables_every_format) {
    for (size_t v = 0; v < NVERSIONS; v++) {
        fakepy fp;
        fp_init(&fp, versions[v]);
        uint64_t code = fp_code(&fp, "/f.py", "f", 100);
        aioscope_target *t;
        CHECK_EQ_INT(asc_target_open_mem(fp_read, &fp, versions[v], 0x1000, &fp.types, &t), 0);
        const struct asc_codeinfo *ci;
        CHECK_EQ_INT(asc_code_info(t, code, &ci), 0);
        CHECK_EQ_INT(asc_code_addr2line(ci, fp.minor, 0), 100);
        CHECK_EQ_INT(asc_code_addr2line(ci, fp.minor, 2), 100);
        CHECK_EQ_INT(asc_code_addr2line(ci, fp.minor, 4), 102);
        CHECK_EQ_INT(asc_code_addr2line(ci, fp.minor, 8), 102);
        CHECK_EQ_INT(asc_code_addr2line(ci, fp.minor, 10), 105);
        CHECK_EQ_INT(asc_code_addr2line(ci, fp.minor, 18), 105);
        CHECK_EQ_INT(asc_code_addr2line(ci, fp.minor, -1), 100); /* not started: the def line */
        aioscope_target_close(t);
        fp_free(&fp);
    }
}
