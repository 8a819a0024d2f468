/* The softmax family's floor: fastopt's float32 exp-and-sum of rows of k logits
 * (fo_exp_sum_f, from fo_row.h, with the next row's max), the exp alone, the eight ordered
 * float64 partial sums alone, and an exp pass then a sum pass, on one core, best of several
 * sweeps, ns/element. Arguments: k (default 1000) and the number of rows (4096: streamed;
 * 64: in L1/L2). Build and run
 * (-march=x86-64-v3 for the AVX2 build's loops, on a CPU without AVX-512):
 *   gcc -O3 -march=x86-64-v4 -ffp-contract=off -fno-trapping-math -fno-math-errno \
 *       -I src/fastopt/_kernels -o /tmp/exp_floor bench/exp_floor.c -lm \
 *       && taskset -c 0 /tmp/exp_floor 1000 64
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <stddef.h>
typedef ptrdiff_t Py_ssize_t;
#include "fo_row.h"
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
__attribute__((noinline)) double sum_only(const float *e,
                                          Py_ssize_t n) { /* the 8-lane chain alone */
    FO_SUMS;        /* (fo_row.h: eight float64 lanes in native vectors) */
    for (Py_ssize_t i = 0; i + 8 <= n; i += 8)
        FO_SUMS_LOAD(f, e + i);
    double a = 0;
    for (int j = 0; j < 8; j++)
        a += FO_SUMS_LANE(j);
    return a;
}
__attribute__((noinline)) void exp_only(const float *z, float m, float *e, Py_ssize_t n) {
    enum { LANES = FO_VBYTES / 4 };
    fo_vf s;
    for (int j = 0; j < LANES; j++)
        s[j] = m;
    for (Py_ssize_t i = 0; i + LANES <= n; i += LANES) {
        if (!(i % 16))
            fo_prefetch_at(z + n, i * 4);
        fo_vf v;
        memcpy(&v, z + i, sizeof v);
        v = fo_vexpf(v - s);
        memcpy(e + i, &v, sizeof v);
    }
}
int main(int argc, char **argv) {
    int k = argc > 1 ? atoi(argv[1]) : 1000, rows = argc > 2 ? atoi(argv[2]) : 4096;
    float *z = aligned_alloc(64, 4L * k * rows), *e = aligned_alloc(64, 4L * k * rows);
    for (long i = 0; i < (long)k * rows; i++)
        z[i] = (float)((i * 7919 % 2000) / 500.0 - 2);
    double best[4] = {1e9, 1e9, 1e9, 1e9}, sink = 0;
    float ymax;
    for (int rep = 0; rep < 30 * 4096 / rows; rep++) {
        for (int w = 0; w < 4; w++) {
            double t = now();
            for (int r = 0; r < rows; r++) {
                const float *zr = z + (long)r * k;
                float *er = e + (long)r * k;
                if (w == 0)
                    sink += fo_exp_sum_f(zr, 2.0f, er, k, zr + k, r + 1 < rows ? zr + k : zr,
                                         &ymax, FO_FINISH_NONE, NULL, NULL, 0, 0);
                else if (w == 1)
                    exp_only(zr, 2.0f, er, k);
                else if (w == 2)
                    sink += sum_only(er, k);
                else {
                    exp_only(zr, 2.0f, er, k);
                    sink += sum_only(er, k);
                }
            }
            t = now() - t;
            if (t < best[w])
                best[w] = t;
        }
    }
    const char *nm[] = {"exp and sum (fo_exp_sum_f)", "exp only, stored", "8-lane float64 sum only",
                        "exp pass, then sum pass (row)"};
    for (int w = 0; w < 4; w++)
        printf("%-28s %.3f ns/el\n", nm[w], best[w] * 1e9 / ((double)k * rows));
    printf("%g\n", sink);
}
