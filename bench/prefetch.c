/* Does software prefetching take Adam below its roofline where its arrays sit in L3 or memory?
 * A step computes about as fast as L3 streams, and the hardware prefetchers may not run far
 * enough ahead of a loop this busy. Adam's loop on 2 threads (OpenMP, static halves), in plain
 * C on restrict pointers: (a) as the kernels' loop; (b) the same, a prefetch of each array's
 * line `dist` elements ahead issued every 16 elements (one 64-byte line of float32); (c) as the
 * kernels' driver runs it from 2 MiB an array (_elementwise.pxi, run_span_ahead): spans of 128
 * elements, each after a prefetch of its lines `dist` elements on, then the loop of (a) called
 * on the span; and the roofline stream (read p, g, m, v, write p, m, v, as
 * fastopt._kernels.stream before it prefetched too). Median of 40 rounds, each the mean of 20
 * back-to-back steps after an untimed one. Arguments: n (default 1000000), dist (default 512),
 * span (default 128). Build and run:
 *   gcc -O3 -march=x86-64-v4 -mprefer-vector-width=512 -ffp-contract=off -fno-trapping-math \
 *       -fno-math-errno -fopenmp -o /tmp/prefetch bench/prefetch.c -lm
 *   for n in 100000 1000000 10000000; do OMP_WAIT_POLICY=active /tmp/prefetch $n 512; done
 * Measured on the AMD EPYC (Zen 5) VM, 2026-12-04, two runs, (a) / (b) / stream in us:
 *   1e5: 7.6 / 8.5 / 5.6 and 7.5 / 8.3 / 5.6 (arrays in L2: the prefetches only cost)
 *   1e6: 93.9 / 84.0 / 90.5 and 88.9 / 80.5 / 86.3 (10% less)
 *   1e7: 2972 / 2937 / 2987 and 3027 / 3013 / 3019 (bound by DRAM: level)
 * Prefetches issued in bursts (a whole block of 1024 or 4096 elements ahead before the block)
 * took 108-114 us at 1e6 against 79-80. Moved into the kernels (optim.pyx's plain Adam loop in
 * blocks of 16 elements on restrict pointers, one prefetch per array per block, 512 ahead),
 * alternated in one process against the unchanged loop: 1e6, 2 threads 81.9 against 86.2 us
 * (another pair 90.6 against 107, spread 30%), one thread 145 against 141; 1e5, 2 threads 8.94
 * against 8.55. GCC's own -fprefetch-loop-arrays on the whole build: Adam 1e6, 2 threads, 96.4
 * against 96.1 us, RMSprop 68.2 against 67.7, and 1e4 1.88 against 1.65. So the kernels kept
 * their plain loops then: 5% at one size range, on two threads only, within that VM's noise.
 * On the Intel Xeon VM (2026-12-05, L3 reported as 480 MiB), (a) / (b) / (c) / stream in us:
 *   1e5: 21.2 / 22.2 / 22.4 / 12.2 (span 512: 22.3 / 24.0 / 26.5 / 12.7)
 *   1e6: 309 / 306 / 301 / 303 (span 512: 317 / 312 / 379 / 308)
 *   3e6: 906-925 / 895 / 876-883 / 877-896
 *   1e7: 4445-4612 / 3395-3448 / 3426-3461 / 3587-3655 (25% less; dist 1024: 3602, 2048: 3724)
 *   3e7: 19075-19481 / 17434 / 16777 / 16836-17417
 * so from 2 MiB an array the driver runs (c), whose spans cost no more than (b)'s blocks and
 * need no change to any kernel's loop; below, the plain loops. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
/* Adam's element as the kernels compute it (optim.pyx adam_elem, no options) */
#define ADAM_ELEM(i)                                                                      \
    {                                                                                     \
        float gi = g[i], mi = m[i] + 0.1f * (gi - m[i]);                                  \
        float vi = 0.999f * v[i] + (0.001f * gi) * gi;                                    \
        m[i] = mi;                                                                        \
        v[i] = vi;                                                                        \
        p[i] = p[i] - (1e-3f * mi) / (sqrtf(vi) * 1.3f + 1e-8f);                          \
    }
static void adam(float *restrict p, const float *restrict g, float *restrict m,
                 float *restrict v, long lo, long hi) {
    for (long i = lo; i < hi; i++)
        ADAM_ELEM(i)
}
static void adam_prefetch(float *restrict p, const float *restrict g, float *restrict m,
                          float *restrict v, long lo, long hi, long dist) {
    long i = lo;
    for (; i + 16 <= hi; i += 16) {
        __builtin_prefetch(p + i + dist, 1, 3);   /* past the end: a prefetch does not fault */
        __builtin_prefetch(g + i + dist, 0, 3);
        __builtin_prefetch(m + i + dist, 1, 3);
        __builtin_prefetch(v + i + dist, 1, 3);
        for (long j = i; j < i + 16; j++)
            ADAM_ELEM(j)
    }
    for (; i < hi; i++)
        ADAM_ELEM(i)
}
/* (c): spans of `span` elements, each after a prefetch of its lines `dist` elements on */
__attribute__((noinline)) static void adam_noinline(float *restrict p, const float *restrict g,
                                                    float *restrict m, float *restrict v,
                                                    long lo, long hi) {
    adam(p, g, m, v, lo, hi);
}
static void adam_spans(float *restrict p, const float *restrict g, float *restrict m,
                       float *restrict v, long lo, long hi, long dist, long span) {
    for (long b = lo; b < hi; b += span) {
        long e = b + span < hi ? b + span : hi;
        for (long o = b + dist; o < e + dist; o += 16) {
            __builtin_prefetch(p + o, 1, 3);
            __builtin_prefetch(g + o, 0, 3);
            __builtin_prefetch(m + o, 1, 3);
            __builtin_prefetch(v + o, 1, 3);
        }
        adam_noinline(p, g, m, v, b, e);
    }
}
static void stream(float *restrict p, const float *restrict g, float *restrict m,
                   float *restrict v, long lo, long hi) {
    for (long i = lo; i < hi; i++) {
        float gi = g[i];
        p[i] += gi;
        m[i] += gi;
        v[i] += gi;
    }
}
static void step(int which, float **a, long n, long dist, long span) {
#pragma omp parallel num_threads(2)
    {
        int t = omp_get_thread_num();
        long lo = t ? n / 2 : 0, hi = t ? n : n / 2;
        if (which == 0)
            adam(a[0], a[1], a[2], a[3], lo, hi);
        else if (which == 1)
            adam_prefetch(a[0], a[1], a[2], a[3], lo, hi, dist);
        else if (which == 2)
            adam_spans(a[0], a[1], a[2], a[3], lo, hi, dist, span);
        else
            stream(a[0], a[1], a[2], a[3], lo, hi);
    }
}
static int by_value(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000000, dist = argc > 2 ? atol(argv[2]) : 512;
    long span = argc > 3 ? atol(argv[3]) : 128;
    const char *names[4] = {"(a) Adam", "(b) Adam, prefetch", "(c) spans, prefetch", "stream"};
    float *a[4];
    for (int k = 0; k < 4; k++) {
        a[k] = aligned_alloc(64, (4 * n + 63) / 64 * 64);
        for (long i = 0; i < n; i++)
            a[k][i] = 0.5f;
    }
    enum { ROUNDS = 40, REPS = 20 };
    double t[4][ROUNDS];
    for (int r = 0; r < ROUNDS; r++)             /* the four alternate: the VM drifts */
        for (int k = 0; k < 4; k++) {
            step(k, a, n, dist, span);
            double t0 = now();
            for (int i = 0; i < REPS; i++)
                step(k, a, n, dist, span);
            t[k][r] = (now() - t0) / REPS * 1e6;
        }
    for (int k = 0; k < 4; k++) {
        qsort(t[k], ROUNDS, sizeof t[k][0], by_value);
        printf("n=%ld %-20s %8.1f us (quartiles %.1f, %.1f)\n", n, names[k], t[k][ROUNDS / 2],
               t[k][ROUNDS / 4], t[k][3 * ROUNDS / 4]);
    }
}
