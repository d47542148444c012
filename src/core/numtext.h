/* Decimal text of numbers without printf, for the writers that print one row or object per task
 * (100 000 of them for a big program), where parsing a printf format per field cost more than
 * everything else `ps` does. Each function's text is exactly what the printf format it names
 * prints; the C unit tests compare them with printf (tests/unit/core/test_numtext.c).
 *
 * Internal to aioscope (core library), shared by the snapshot's JSON writer (src/attach/snapshot.c)
 * and the CLI's table (src/cli/snapshot_print.c). */
#ifndef ASC_CORE_NUMTEXT_H
#define ASC_CORE_NUMTEXT_H

#include <stdint.h>

/* Room for any of the texts below, terminating NUL included. */
#define ASC_NUM_TEXT_MAX 32

/* printf("%llu", v): the digits are written at the end of tmp (at least 24 bytes),
 * NUL-terminated; returns where they start. */
char *asc_num_u64(uint64_t v, char *tmp);
/* printf("%lld", v), the same way. */
char *asc_num_i64(int64_t v, char *tmp);
/* printf("%llx", v), the same way. */
char *asc_num_hex(uint64_t v, char *tmp);
/* printf("%.1f", v) (decimals 1) or printf("%.4f", v) (decimals 4) into out (ASC_NUM_TEXT_MAX
 * bytes). */
void asc_num_fixed(char *out, double v, int decimals);
/* printf("%.6g", v) into out (ASC_NUM_TEXT_MAX bytes), for a finite v. */
void asc_num_g6(char *out, double v);

#endif
