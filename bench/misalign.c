/* What an array's offset from a cache line costs a step whose arrays sit in L3. NumPy places an
 * array 16 bytes past a 64-byte line, or 0, 32 or 48 past one when it comes from the heap (which
 * glibc uses for arrays up to 32 MB once a large temporary was freed), so the four arrays of an
 * Adam step may start at four different offsets; the kernels start their vector loop where the
 * param starts a line, which puts the others on lines only where they share its offset. Float32
 * Adam (the kernels' loop: sqrt, division, no FMA; from the param's first line) and the
 * roofline stream (read p, g, m, v, write p, m, v; from the arrays' first element) on one core,
 * median of 31 rounds of 10 steps, ns/element, on four layouts (byte offsets of p, g, m, v
 * within a page):
 *   (a) all on lines;
 *   (b) 2832 1056 3376 1600: 16, 32, 48 and 0 past a line, as NumPy's heap placed four 4 MB
 *       arrays in a row;
 *   (c) p, m and v 16 past a line, g 32 (state placed like the param, the grad not);
 *   (d) all 16 past a line.
 * Build and run:
 *   gcc -O3 -march=x86-64-v4 -mprefer-vector-width=512 -ffp-contract=off -fno-trapping-math \
 *       -fno-math-errno -o /tmp/misalign bench/misalign.c -lm && taskset -c 0 /tmp/misalign
 * Measured on the AMD EPYC (Zen 5) VM, 2026-12-04, n = 1e6 (16 MB of arrays), two runs:
 *   Adam   (a) 0.144 0.145  (b) 0.252 0.260  (c) 0.150 0.152  (d) 0.140 0.141
 *   stream (a) 0.136 0.137  (b) 0.231 0.232  (c) 0.245 0.259  (d) 0.250 0.249
 * and at 1e5 (arrays in L2) all between 0.129 and 0.150. A 512-bit load or store that splits
 * two lines costs little from L1 and L2 and nearly doubles a step streamed from L3. Arrays that
 * start lines together cost nothing, one array off them little where the loop reads it once a
 * vector, as here; GCC reloads an operand from memory in some loops (the kernels' Adam loop
 * reads the grad twice a vector: with only the grad off, fastopt.optim.Adam took 205-218 us
 * against 176-192 at 1e6 on one thread, alternated in one process).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
typedef long long ll;
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
typedef struct { float c1, b2, c2, eps, step, ibs; } S;
static inline float lerp(float s, float e, float k) { return (k <= 0 ? e : s) + k * (e - s); }
/* the kernels' plain Adam loop (optim.pyx adam_elem) */
static inline __attribute__((always_inline)) void adam(float* p, const float* g, float* m,
                                                      float* v, ll n, const S* s) {
    float c1 = s->c1, b2 = s->b2, c2 = s->c2, eps = s->eps, step = s->step, ibs = s->ibs;
    for (ll i = 0; i < n; i++) {
        float gi = g[i], mi = lerp(m[i], gi, c1), vi = b2 * v[i] + (c2 * gi) * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] - (step * mi) / (sqrtf(vi) * ibs + eps);
    }
}
/* from the param's first line on, as the kernels' driver */
__attribute__((noinline)) void adam_peeled(float* p, const float* g, float* m, float* v, ll n,
                                          const S* s) {
    ll h = ((64 - (size_t)p % 64) % 64) / 4;
    if (h > n) h = n;
    adam(p, g, m, v, h, s);
    adam(p + h, g + h, m + h, v + h, n - h, s);
}
__attribute__((noinline)) void stream(float* p, const float* g, float* m, float* v, ll n) {
    for (ll i = 0; i < n; i++) {
        p[i] += g[i];
        m[i] += g[i];
        v[i] += g[i];
    }
}
static int cmp(const void* x, const void* y) {
    double a = *(const double*)x, b = *(const double*)y;
    return a < b ? -1 : a > b;
}
#define NL 4
#define R 31
int main(int argc, char** argv) {
    ll n = argc > 1 ? atoll(argv[1]) : 1000000;
    static const int offs[NL][4] = {{0, 0, 0, 0}, {2832, 1056, 3376, 1600},
                                    {2832, 1056, 784, 1808}, {2832, 1040, 784, 1808}};
    static const char* names[NL] = {"(a) on lines", "(b) NumPy's heap", "(c) grad off",
                                    "(d) all 16 past"};
    float* a[NL][4];
    S sc = {0.1f, 0.999f, 0.001f, 1e-8f, 1e-3f, 1.0f};
    static double t[NL][2][R];
    for (int l = 0; l < NL; l++)
        for (int k = 0; k < 4; k++) {
            char* b = aligned_alloc(4096, n * 4 + 8192);
            a[l][k] = (float*)(b + offs[l][k]);
            for (ll i = 0; i < n; i++)
                a[l][k][i] = k < 2 ? (float)rand() / RAND_MAX - 0.5f : 0;
        }
    for (int r = 0; r < R; r++)
        for (int l = 0; l < NL; l++)
            for (int w = 0; w < 2; w++) {
                float** A = a[l];
                double t0 = 0;
                for (int k = 0; k < 13; k++) {
                    if (k == 3) t0 = now();
                    if (w) stream(A[0], A[1], A[2], A[3], n);
                    else adam_peeled(A[0], A[1], A[2], A[3], n, &sc);
                }
                t[l][w][r] = (now() - t0) / 10 / n * 1e9;
            }
    for (int l = 0; l < NL; l++) {
        qsort(t[l][0], R, sizeof(double), cmp);
        qsort(t[l][1], R, sizeof(double), cmp);
        printf("n=%lld %-20s offsets %4d %4d %4d %4d: adam %.3f  stream %.3f ns/element\n", n,
               names[l], offs[l][0], offs[l][1], offs[l][2], offs[l][3], t[l][0][R / 2],
               t[l][1][R / 2]);
    }
    return 0;
}
