/* clock.c: the agent's fast CLOCK_MONOTONIC.
 *
 * clock_gettime(CLOCK_MONOTONIC) through the vDSO takes ~17 ns here, the CPU's cycle counter
 * ~8 ns, and the agent reads the time twice per task step (steps.c) and, under --trace, about
 * seven times per contended lock round trip. So when the kernel itself keeps time with the
 * counter (x86-64 clocksource "tsc": invariant and synchronised across CPUs; AArch64's
 * architected counter, fixed frequency) the time is the counter's reading converted to
 * CLOCK_MONOTONIC nanoseconds from an anchor (a pair of readings) renewed once it is a
 * millisecond old, at a rate measured over everything since the first pair (so it only gets more
 * exact): within a microsecond of clock_gettime, which the rest of the agent and the trace's
 * other events use. Until the first ASC_CLOCK_BASELINE_NS have gone by, and without a usable
 * counter, it is clock_gettime. Used with the GIL (the anchor is plain data). */
#include "agent/clock.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#define ASC_CLOCK_BASELINE_NS 10000000LL
#define ASC_CLOCK_REANCHOR_NS 1000000.0

asc_clock_state asc_clock;

void asc_clock_init(void) {
#if defined(__x86_64__)
    char buf[32] = "";
    FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");
    if (f) {
        if (!fgets(buf, sizeof buf, f)) buf[0] = '\0';
        fclose(f);
    }
    if (strcmp(buf, "tsc\n") != 0) return;
#elif !defined(__aarch64__)
    return;
#endif
    asc_clock.ns0 = asc_clock.ns_a = asc_monotonic_ns();
    asc_clock.k0 = asc_clock.k_a = asc_ticks();
    asc_clock.usable = 1;
}

int64_t asc_clock_anchor(void) {
    int64_t ns = asc_monotonic_ns();
    if (!asc_clock.usable) return ns;
    uint64_t k = asc_ticks();
    if (k > asc_clock.k0 && ns - asc_clock.ns0 >= ASC_CLOCK_BASELINE_NS) {
        double r = (double)(ns - asc_clock.ns0) / (double)(k - asc_clock.k0);
        if (!(r > 0.0 && r < 100.0)) { /* not a clock we understand: clock_gettime from now on */
            asc_clock.usable = 0;
            asc_clock.ns_per_tick = 0.0;
            return ns;
        }
        asc_clock.ns_per_tick = r;
        asc_clock.span = (uint64_t)(ASC_CLOCK_REANCHOR_NS / r);
    }
    asc_clock.ns_a = ns;
    asc_clock.k_a = k;
    return ns;
}
