/* Decimal text of numbers without printf (numtext.h): integers digit by digit, doubles from one
 * multiplication and a rounding, with printf itself (strfromd) kept for the cases where that
 * could differ from printf's text.
 *
 * Why doubles can be done this way: printf rounds the exact binary value to the nearest decimal;
 * here the digits come from rounding v * 10^p in double arithmetic, which has one rounding error
 * far below 1e-6 while the product is below 1e9. So the result is printf's unless the product
 * lies within 1e-6 of a half (or of a power of ten that changes %g's exponent): those, and values
 * out of range, go through strfromd, which formats exactly as printf does. */
#include "core/numtext.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

char *asc_num_u64(uint64_t v, char *tmp) {
    char *p = tmp + 23;
    *p = '\0';
    do *--p = (char)('0' + v % 10);
    while (v /= 10);
    return p;
}

char *asc_num_i64(int64_t v, char *tmp) {
    if (v >= 0) return asc_num_u64((uint64_t)v, tmp);
    /* -(v + 1) + 1: the magnitude of INT64_MIN does not fit in an int64_t. */
    char *p = asc_num_u64((uint64_t)(-(v + 1)) + 1, tmp);
    *--p = '-';
    return p;
}

char *asc_num_hex(uint64_t v, char *tmp) {
    char *p = tmp + 23;
    *p = '\0';
    do *--p = "0123456789abcdef"[v & 15];
    while (v >>= 4);
    return p;
}

static const double asc_pow10[] = {1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9};

/* m (below 10^18) as digits with `decimals` of them after a point; with strip, trailing zeros
 * of the fraction (and a point left alone) are dropped, as %g does. */
static void asc_num_decimal(char *out, uint64_t m, int decimals, int strip) {
    char digits[24];
    char *d = asc_num_u64(m, digits);
    size_t nd = strlen(d);
    size_t whole = nd > (size_t)decimals ? nd - (size_t)decimals : 0, o = 0;
    if (whole) memcpy(out, d, whole), o = whole;
    else out[o++] = '0';
    if (decimals > 0) {
        size_t start = o;
        out[o++] = '.';
        for (size_t z = nd; z < (size_t)decimals; z++) out[o++] = '0';
        memcpy(out + o, d + whole, nd - whole);
        o += nd - whole;
        if (strip) {
            while (out[o - 1] == '0') o--;
            if (o - 1 == start) o--;
        }
    }
    out[o] = '\0';
}

/* The nearest integer to x (0 <= x < 1e9), or -1 when x is too near a half to be sure. */
static int64_t asc_num_round(double x) {
    double fl = floor(x), frac = x - fl;
    if (fabs(frac - 0.5) < 1e-6) return -1;
    return (int64_t)fl + (frac > 0.5);
}

void asc_num_fixed(char *out, double v, int decimals) {
    /* Negative values, -0.0 among them (printf writes its sign), are left to strfromd. */
    double x = v >= 0 && !signbit(v) ? v * asc_pow10[decimals] : -1;
    int64_t m = x >= 0 && x < 1e9 ? asc_num_round(x) : -1;
    if (m >= 0) asc_num_decimal(out, (uint64_t)m, decimals, 0);
    else strfromd(out, ASC_NUM_TEXT_MAX, decimals == 1 ? "%.1f" : "%.4f", v);
}

/* %g with 6 significant digits prints the fixed form when the rounded value's exponent X is in
 * [-4, 6): 6 - 1 - X decimals, trailing zeros dropped. */
void asc_num_g6(char *out, double v) {
    if (v > 0 && v >= 1e-4 && v < 1e6) {
        int x10 = 5; /* X, found by scaling v into [1e5, 1e6) */
        while (x10 > -4 && v * asc_pow10[5 - x10] < 1e5) x10--;
        double x = v * asc_pow10[5 - x10];
        int64_t m = x >= 1e5 + 1e-6 && x < 1e6 - 1e-6 ? asc_num_round(x) : -1;
        if (m == 1000000) { /* rounded up to the next power of ten: one decimal fewer */
            m = 100000;
            x10++;
        }
        if (m >= 0 && x10 >= -4 && x10 < 6) {
            asc_num_decimal(out, (uint64_t)m, 5 - x10, 1);
            return;
        }
    }
    strfromd(out, ASC_NUM_TEXT_MAX, "%.6g", v);
}
