/* The in-cache race of bench/div_floor.c and bench/sqrt_floor.c: loops over Adam's arrays
 * (p, g, m, v; n floats each, g fixed, p, m and v each loop's own), each loop's sweeps in a
 * row so that its arrays stay in cache, best of several, printed in ns/element; the updates of
 * the loops between the first and `last_same` are checked against the first's bit for bit. */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
typedef long long ll;
typedef void (*loop_fn)(float *, const float *, float *, float *, ll);
/* Adam's scalars, and its element i.. i+7 as the kernels compute it (optim.pyx adam_elem, no
 * options), with the root ROOT and the division DIV given */
#define ADAM_SCALARS                                                                           \
    const __m256 c1 = _mm256_set1_ps(0.1f), b2 = _mm256_set1_ps(0.999f),                      \
                 c2 = _mm256_set1_ps(0.001f), eps = _mm256_set1_ps(1e-8f),                    \
                 step = _mm256_set1_ps(1e-3f), ibs = _mm256_set1_ps(1.3f);
#define ADAM(I, ROOT, DIV)                                                                     \
    {                                                                                          \
        __m256 gi = _mm256_loadu_ps(g + I), mo = _mm256_loadu_ps(m + I);                      \
        __m256 mi = _mm256_add_ps(mo, _mm256_mul_ps(c1, _mm256_sub_ps(gi, mo)));              \
        __m256 vi = _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v + I)),                  \
                                  _mm256_mul_ps(_mm256_mul_ps(c2, gi), gi));                 \
        _mm256_storeu_ps(m + I, mi);                                                          \
        _mm256_storeu_ps(v + I, vi);                                                          \
        __m256 d = _mm256_add_ps(_mm256_mul_ps(ROOT(vi), ibs), eps);                          \
        _mm256_storeu_ps(p + I, _mm256_sub_ps(_mm256_loadu_ps(p + I),                         \
                                              DIV(_mm256_mul_ps(step, mi), d)));              \
    }
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
