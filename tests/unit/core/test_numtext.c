/* Unit tests of src/core/numtext.c: each function's text is what its printf format prints, for
 * integers at their limits and for doubles of every magnitude, integral ones, halves and the
 * values next to a rounding boundary (where a formatter that does not use printf would go
 * wrong). */
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/numtext.h"
#include "test.h"

static uint64_t rnd(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

TEST(numtext_integers_are_printfs) {
    static const uint64_t u[] = {0, 1, 9, 10, 99, 100, 4294967295u, 4294967296u, 140737488355327u, UINT64_MAX};
    static const int64_t i[] = {0, 1, -1, -9, 10, -10, 2147483647, -2147483648LL, INT64_MAX, INT64_MIN};
    char tmp[24], want[32];
    for (size_t k = 0; k < sizeof u / sizeof *u; k++) {
        snprintf(want, sizeof want, "%" PRIu64, u[k]);
        CHECK_EQ_STR(asc_num_u64(u[k], tmp), want);
        snprintf(want, sizeof want, "%" PRIx64, u[k]);
        CHECK_EQ_STR(asc_num_hex(u[k], tmp), want);
    }
    for (size_t k = 0; k < sizeof i / sizeof *i; k++) {
        snprintf(want, sizeof want, "%" PRId64, i[k]);
        CHECK_EQ_STR(asc_num_i64(i[k], tmp), want);
    }
}

/* v through asc_num_g6 and asc_num_fixed against printf's %.6g, %.1f and %.4f. */
static void check_double(double v) {
    char got[ASC_NUM_TEXT_MAX], want[ASC_NUM_TEXT_MAX];
    asc_num_g6(got, v);
    snprintf(want, sizeof want, "%.6g", v);
    CHECK_EQ_STR(got, want);
    asc_num_fixed(got, v, 1);
    snprintf(want, sizeof want, "%.1f", v);
    CHECK_EQ_STR(got, want);
    asc_num_fixed(got, v, 4);
    snprintf(want, sizeof want, "%.4f", v);
    CHECK_EQ_STR(got, want);
}

TEST(numtext_doubles_are_printfs) {
    static const double fixed[] = {0.0, -0.0, 1.0, 0.5, 0.25, 0.05, 0.15, 12.25, 12.35, 0.00015, 0.00012345,
                                   1e-4, 9.99995e-5, 0.0001, 999999.5, 999999.4, 99999.95, 123456.5,
                                   1e6, 1e9, 1e15, 1e30, 1e300, DBL_MAX, DBL_MIN, 5e-324, -2.5, -1e-7,
                                   1.0 / 3, 2.0 / 3, 3600.0 - 1e-9, 0.1 + 0.2};
    for (size_t k = 0; k < sizeof fixed / sizeof *fixed; k++) check_double(fixed[k]);
    /* Random values over 30 decades, and the same values cut to a few decimals (ties and
     * near-ties of the roundings above). */
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    for (int n = 0; n < 200000; n++) {
        double u = (double)(rnd(&seed) >> 11) / 9007199254740992.0;
        double v = u * pow(10.0, (double)(int)(rnd(&seed) % 30) - 15);
        check_double(v);
        check_double(round(v * 1e4) / 1e4);
        check_double((double)(rnd(&seed) % 2000000) / 2 / pow(10.0, (double)(rnd(&seed) % 8)));
    }
}
