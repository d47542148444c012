/* A tiny unit-test harness: TEST(name) { ... } registers a test; test_main.c runs each one in a
 * forked child with a timeout, so one crash or hang fails one test and the rest still run.
 * CHECK* macros report the failing expression and line, and fail the test (the child exits 1). */
#ifndef AIOSCOPE_TEST_H
#define AIOSCOPE_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*test_fn)(void);
void test_register(const char *name, const char *file, test_fn fn);

#define TEST(name)                                                                   \
    static void test_##name(void);                                                   \
    __attribute__((constructor)) static void test_register_##name(void) {            \
        test_register(#name, __FILE__, test_##name);                                 \
    }                                                                                \
    static void test_##name(void)

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                  \
    do {                                                                                    \
        long long va_ = (long long)(a), vb_ = (long long)(b);                               \
        if (va_ != vb_) {                                                                   \
            fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__,   \
                    #a, #b, va_, vb_);                                                      \
            exit(1);                                                                        \
        }                                                                                   \
    } while (0)

#define CHECK_EQ_STR(a, b)                                                                  \
    do {                                                                                    \
        const char *sa_ = (a), *sb_ = (b);                                                  \
        if (!sa_ || !sb_ || strcmp(sa_, sb_) != 0) {                                        \
            fprintf(stderr, "%s:%d: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__,         \
                    __LINE__, #a, #b, sa_ ? sa_ : "(null)", sb_ ? sb_ : "(null)");          \
            exit(1);                                                                        \
        }                                                                                   \
    } while (0)

#endif
