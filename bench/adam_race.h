/* The in-cache race of bench/div_floor.c and bench/sqrt_floor.c: loops over Adam's arrays
 * (p, g, m, v; n floats each, g fixed, p, m and v each loop's own), each loop's sweeps in a
 * row so that its arrays stay in cache, best of several, printed in ns/element; the updates of
 * the loops between the first and `last_same` are checked against the first's bit for bit. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
typedef long long ll;
typedef void (*loop_fn)(float *, const float *, float *, float *, ll);
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
static void race(const char *kernel, int count, const loop_fn *fn, const char *const *labels,
                 int last_same, ll n) {
    int reps = (int)(2e8 / (n + 1000));
    float *g = aligned_alloc(64, 4 * n), *p[8], *m[8], *v[8];
    double best[8];
    srand(1);
    for (ll i = 0; i < n; i++)
        g[i] = (rand() / (float)RAND_MAX - 0.5f) * 1e-2f;
    for (int k = 0; k < count; k++) {
        p[k] = aligned_alloc(64, 4 * n);
        m[k] = calloc(n, 4);
        v[k] = calloc(n, 4);
        for (ll i = 0; i < n; i++)
            p[k][i] = (float)((i * 7919 % 1000) / 1000.0);
        best[k] = 1e9;
    }
    for (int round = 0; round < 10; round++)
        for (int k = 0; k < count; k++)
            for (int r = 0; r < reps / 10; r++) {
                double t = now();
                fn[k](p[k], g, m[k], v[k], n);
                t = now() - t;
                if (t < best[k])
                    best[k] = t;
            }
    for (int k = 0; k < count; k++)
        printf("%-8s %-34s %.3f ns/element%s\n", kernel, labels[k], best[k] * 1e9 / n,
               k == 0 || k > last_same ? ""
               : memcmp(p[k], p[0], 4 * n) ? "  (NOT the same bits as the first)"
                                            : "  (the same bits as the first)");
}
