/* clock.h: the agent's clocks. The fast CLOCK_MONOTONIC (clock.c), for what is timed on hot
 * paths: task steps (steps.c) and, under --trace, loop iterations and lock spans (trace.c,
 * trace_locks.c); and the kernel's, for everything else. Private to the agent. */
#ifndef AIOSCOPE_AGENT_CLOCK_H
#define AIOSCOPE_AGENT_CLOCK_H

#include <stdint.h>
#include <time.h>

/* CLOCK_MONOTONIC in nanoseconds, from the kernel: for what is not on a hot path (the heartbeat,
 * the watchdog thread, the deadlock check, the live view). */
static inline int64_t asc_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#if defined(__x86_64__)
#include <x86intrin.h>
static inline uint64_t asc_ticks(void) { return __rdtsc(); }
#elif defined(__aarch64__)
static inline uint64_t asc_ticks(void) {
    uint64_t v;
    __asm__ volatile("mrs %0, cntvct_el0" : "=r"(v));
    return v;
}
#else
static inline uint64_t asc_ticks(void) { return 0; }
#endif

typedef struct {
    int usable;         /* the counter may be used (asc_clock_init) */
    int64_t ns0;        /* the first pair of readings: the rate's baseline */
    uint64_t k0;
    int64_t ns_a;       /* the anchor: the last pair read */
    uint64_t k_a;
    double ns_per_tick; /* 0 until measured (and when the counter is not usable) */
    uint64_t span;      /* ticks after the anchor that a conversion is trusted for */
} asc_clock_state;
extern asc_clock_state asc_clock;

/* Once, at install(): is the counter usable here? */
void asc_clock_init(void);
/* clock_gettime(CLOCK_MONOTONIC), and a new anchor (and rate) when the counter is usable. */
int64_t asc_clock_anchor(void);

/* CLOCK_MONOTONIC in nanoseconds of a counter reading k taken a moment ago. */
static inline int64_t asc_clock_of(uint64_t k) {
    if (asc_clock.ns_per_tick > 0.0) {
        uint64_t d = k - asc_clock.k_a; /* a reading behind the anchor: huge, renews */
        if (d < asc_clock.span) return asc_clock.ns_a + (int64_t)((double)d * asc_clock.ns_per_tick);
    }
    return asc_clock_anchor();
}

/* CLOCK_MONOTONIC in nanoseconds, from the counter when it is usable. */
static inline int64_t asc_clock_now(void) { return asc_clock_of(asc_ticks()); }

#endif
