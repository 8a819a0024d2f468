/* Batch norm's floor: a (256, 4096) float32 batch (features as columns, 4 MB, cache-resident)
 * on one core, best of 200, ns/element: a stream (read x, write y), the float64 normalization
 * alone as fastopt's kernels do it, a float32 one, the float64 statistics pass, and a forward
 * (statistics, then normalization) in two sweeps, per panel of 512 columns (512 KB of x)
 * while it is in L2, and per panel copied as it is summed into a buffer of its own (512 KB,
 * contiguous: packed as BLAS packs its blocks) that the normalization then reads (the kernels
 * keep the two sweeps: in-process, panels gained nothing over them, their rows a power of two
 * bytes apart crowding into a few L2 sets, and the packed panels lost to them here), and in one
 * sweep, each four rows of the next panel's statistics beside the same rows of this panel's
 * normalization (Intel Xeon VM, four runs: 1.53-1.79x a stream, per panel 1.41-1.71x, two
 * sweeps 1.56-1.72x: no better than per panel). Then the
 * backward's floor the same way, against its own stream (read x and dy, write dx): the float64
 * gradient sums alone (sum dy, sum dy (x - mean), four rows at a time, as add_4grads), dx
 * alone in float64 (fo_dx_2rows_f), and both in two sweeps, as the kernels. Build and run
 * (README, "Speed on this machine"; -march=x86-64-v3 for the AVX2 build's loops):
 *   gcc -O3 -march=x86-64-v4 -mprefer-vector-width=512 -ffp-contract=off -fno-trapping-math \
 *       -I src/fastopt/_kernels -o /tmp/bn_floor bench/bn_floor.c && taskset -c 0 /tmp/bn_floor
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <stddef.h>
typedef long long ll;
typedef ptrdiff_t Py_ssize_t;
#include "fo_bn.h"      /* the kernels' loops */
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
#define N 256
#define C 4096
__attribute__((noinline)) void stream(const float *restrict x, float *restrict y, ll n) {
    for (ll i = 0; i < n; i++)
        y[i] = x[i] * 1.0001f;
}
/* columns [c0, c1) of every row; the panels below run both on one panel at a time */
__attribute__((noinline)) void apply64(const float *restrict x, float *restrict y,
                                       const double *restrict m, const double *restrict s,
                                       const double *restrict b, ll c0, ll c1) {
    for (ll r = 0; r < N; r += 2)          /* two rows at a time */
        fo_apply_2rows_f(x + r * C + c0, y + r * C + c0, C, m + c0, s + c0, b + c0, c1 - c0,
                         0);
}
__attribute__((noinline)) void apply32(const float *restrict x, float *restrict y,
                                       const float *restrict m, const float *restrict s,
                                       const float *restrict b) {
    for (ll r = 0; r < N; r += 4)
        for (ll c = 0; c < C; c++) {
            float mm = m[c], ss = s[c], bb = b[c];
            for (int k = 0; k < 4; k++)
                y[(r + k) * C + c] = (x[(r + k) * C + c] - mm) * ss + bb;
        }
}
/* rows r..r+3, columns [c0, c1) */
static inline void moments4(const float *restrict x, double *restrict s1, double *restrict s2,
                            const double *restrict k, ll r, ll c0, ll c1) {
    for (ll c = c0; c < c1; c++) {
        double kk = k[c], a = s1[c], q = s2[c];
        for (int j = 0; j < 4; j++) {
            double d = (double)x[(r + j) * C + c] - kk;
            a += d;
            q += d * d;
        }
        s1[c] = a;
        s2[c] = q;
    }
}
__attribute__((noinline)) void moments64(const float *restrict x, double *restrict s1,
                                         double *restrict s2, const double *restrict k, ll c0,
                                         ll c1) {
    for (ll r = 0; r < N; r += 4)
        moments4(x, s1, s2, k, r, c0, c1);
}
__attribute__((noinline)) void readsum(const float *restrict x, float *restrict acc) {
    for (ll r = 0; r < N; r++)
        for (ll c = 0; c < C; c++)
            acc[c] += x[r * C + c];
}
#define P 512
__attribute__((noinline)) void panels64(const float *restrict x, float *restrict y,
                                        double *restrict s1, double *restrict s2,
                                        const double *restrict k, const double *restrict s,
                                        const double *restrict b) {
    for (ll c0 = 0; c0 < C; c0 += P) {     /* both passes over a panel while it is in L2 */
        moments64(x, s1, s2, k, c0, c0 + P);
        apply64(x, y, s1, s, b, c0, c0 + P);
    }
}
/* one sweep: four rows of the next panel's moments (as moments64's) beside the same four rows
   of this panel's normalization, whose moments were taken while it came in (the first panel's
   alone, before) */
__attribute__((noinline)) void pipelined64(const float *restrict x, float *restrict y,
                                           double *restrict s1, double *restrict s2,
                                           const double *restrict k, const double *restrict s,
                                           const double *restrict b) {
    moments64(x, s1, s2, k, 0, P);
    for (ll c0 = 0; c0 < C; c0 += P) {
        ll n0 = c0 + P, n1 = n0 + P < C ? n0 + P : C;
        for (ll r = 0; r < N; r += 4) {
            moments4(x, s1, s2, k, r, n0, n1);
            fo_apply_2rows_f(x + r * C + c0, y + r * C + c0, C, s1 + c0, s + c0, b + c0, P, 0);
            fo_apply_2rows_f(x + (r + 2) * C + c0, y + (r + 2) * C + c0, C, s1 + c0, s + c0,
                             b + c0, P, 0);
        }
    }
}
/* the panel's moments as moments64's, its rows copied into buf (P values a row) on the way */
__attribute__((noinline)) void packed64(const float *restrict x, float *restrict y,
                                        double *restrict s1, double *restrict s2,
                                        const double *restrict k, const double *restrict s,
                                        const double *restrict b, float *restrict buf) {
    for (ll c0 = 0; c0 < C; c0 += P) {
        for (ll r = 0; r < N; r += 4)
            for (ll c = c0; c < c0 + P; c++) {
                double kk = k[c], a = s1[c], q = s2[c];
                for (int j = 0; j < 4; j++) {
                    float v = x[(r + j) * C + c];
                    buf[(r + j) * P + c - c0] = v;
                    double d = (double)v - kk;
                    a += d;
                    q += d * d;
                }
                s1[c] = a;
                s2[c] = q;
            }
        for (ll r = 0; r < N; r += 4)
            for (ll c = c0; c < c0 + P; c++) {
                double mm = s1[c], ss = s[c], bb = b[c];
                for (int j = 0; j < 4; j++)
                    y[(r + j) * C + c] =
                        (float)(((double)buf[(r + j) * P + c - c0] - mm) * ss + bb);
            }
    }
}
__attribute__((noinline)) void stream3(const float *restrict x, const float *restrict dy,
                                       float *restrict dx, ll n) {
    for (ll i = 0; i < n; i++)
        dx[i] = x[i] + dy[i];
}
__attribute__((noinline)) void gradsums64(const float *restrict dy, const float *restrict x,
                                          const double *restrict m, double *restrict db,
                                          double *restrict dgc) {
    for (ll r = 0; r < N; r += 4)
        for (ll c = 0; c < C; c++) {
            const float *d = dy + r * C + c, *v = x + r * C + c;
            double mm = m[c];
            db[c] += ((double)d[0] + d[C]) + ((double)d[2 * C] + d[3 * C]);
            dgc[c] += (d[0] * ((double)v[0] - mm) + d[C] * ((double)v[C] - mm))
                      + (d[2 * C] * ((double)v[2 * C] - mm) + d[3 * C] * ((double)v[3 * C] - mm));
        }
}
__attribute__((noinline)) void dx64(const float *restrict dy, const float *restrict x,
                                    float *restrict dx, const double *restrict m,
                                    const double *restrict a, const double *restrict b,
                                    const double *restrict d, ll cols) {
    for (ll r = 0; r < N; r += 2)
        fo_dx_2rows_f(dy + r * C, x + r * C, dx + r * C, C, m, a, b, d, cols, 0);
}
__attribute__((noinline)) void twopass64(const float *restrict x, float *restrict y,
                                         double *restrict s1, double *restrict s2,
                                         const double *restrict k, const double *restrict s,
                                         const double *restrict b) {
    moments64(x, s1, s2, k, 0, C);
    apply64(x, y, s1, s, b, 0, C);
}
int main() {
    float *x = aligned_alloc(64, 4 * N * C), *y = aligned_alloc(64, 4 * N * C),
          *acc = aligned_alloc(64, 4 * C), *buf = aligned_alloc(64, 4 * N * P);
    double *m = aligned_alloc(64, 8 * C), *s = aligned_alloc(64, 8 * C),
           *b = aligned_alloc(64, 8 * C), *s1 = aligned_alloc(64, 8 * C),
           *s2 = aligned_alloc(64, 8 * C);
    float *m32 = aligned_alloc(64, 4 * C), *sc32 = aligned_alloc(64, 4 * C),
          *b32 = aligned_alloc(64, 4 * C);
    for (ll i = 0; i < N * C; i++) {
        x[i] = (float)((i * 7919 % 1000) / 500.0 - 1);
        y[i] = 0;
    }
    for (int c = 0; c < C; c++) {
        m[c] = 0.01 * c;
        s[c] = 1.1;
        b[c] = 0.2;
        m32[c] = m[c];
        sc32[c] = s[c];
        b32[c] = b[c];
        s1[c] = s2[c] = 0;
        acc[c] = 0;
    }
    const char *names[] = {"stream (read x, write y)",
                           "apply float64 (as now)",
                           "apply float32",
                           "moments float64 (read x)",
                           "read x, float32 column sums",
                           "panels of 512 cols: moments+apply",
                           "moments then apply (2 sweeps)",
                           "packed panels of 512: moments+apply",
                           "one sweep: next panel's moments"};
    double best[9];
    for (int k = 0; k < 9; k++)
        best[k] = 1e9;
    for (int rep = 0; rep < 200; rep++)
        for (int k = 0; k < 9; k++) {
            double t = now();
            switch (k) {
            case 0:
                stream(x, y, (ll)N * C);
                break;
            case 1:
                apply64(x, y, m, s, b, 0, C);
                break;
            case 2:
                apply32(x, y, m32, sc32, b32);
                break;
            case 3:
                moments64(x, s1, s2, m, 0, C);
                break;
            case 4:
                readsum(x, acc);
                break;
            case 5:
                panels64(x, y, s1, s2, m, s, b);
                break;
            case 6:
                twopass64(x, y, s1, s2, m, s, b);
                break;
            case 7:
                packed64(x, y, s1, s2, m, s, b, buf);
                break;
            case 8:
                pipelined64(x, y, s1, s2, m, s, b);
                break;
            }
            t = now() - t;
            if (t < best[k])
                best[k] = t;
        }
    for (int k = 0; k < 9; k++)
        printf("%-32s %7.1f us  %.3f ns/el  %.2fx stream\n", names[k], best[k] * 1e6,
               best[k] * 1e9 / (N * C), best[k] / best[0]);
    float *dy = aligned_alloc(64, 4 * N * C), *dx = aligned_alloc(64, 4 * N * C);
    for (ll i = 0; i < N * C; i++)
        dy[i] = (float)((i * 104729 % 1000) / 700.0 - 0.7);
    const char *bnames[] = {"stream (read x, dy, write dx)", "grad sums float64 (read x, dy)",
                            "dx float64 (as now)", "grad sums then dx (2 sweeps)"};
    double bbest[4] = {1e9, 1e9, 1e9, 1e9};
    for (int rep = 0; rep < 200; rep++)
        for (int k = 0; k < 4; k++) {
            double t = now();
            if (k == 0)
                stream3(x, dy, dx, (ll)N * C);
            if (k == 1 || k == 3)
                gradsums64(dy, x, m, s1, s2);
            if (k == 2 || k == 3)
                dx64(dy, x, dx, m, s, b, s, C);
            t = now() - t;
            if (t < bbest[k])
                bbest[k] = t;
        }
    for (int k = 0; k < 4; k++)
        printf("%-32s %7.1f us  %.3f ns/el  %.2fx its stream\n", bnames[k], bbest[k] * 1e6,
               bbest[k] * 1e9 / (N * C), bbest[k] / bbest[0]);
    printf("%g %g %g %g\n", y[12345], s1[5], acc[7], dx[4321]);
}
