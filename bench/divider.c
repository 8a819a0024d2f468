/* The divider's pace, which bounds the optimizer kernels with a square root and a division per
 * element (Adam, AdamW, RMSprop, Adagrad, Adadelta, NAdam, RAdam) while their arrays are in
 * cache: on one core, best of 20 sweeps, ns per instruction of the build's vector width
 * (256 bits with -march=x86-64-v3, 512 with x86-64-v4), for eight independent chains of
 * vdivps, of vsqrtps, of a vdivps and a vsqrtps side by side (one element's pair), and of FMAs
 * for scale; then the pair per float32 element: the least time per element such a kernel can
 * take there, whatever its loads and stores. Build and run:
 *   gcc -O2 -march=x86-64-v3 -o /tmp/divider bench/divider.c && taskset -c 0 /tmp/divider
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define DIV _mm512_div_ps
#define SQRT _mm512_sqrt_ps
#define FMA _mm512_fmadd_ps
#define SET1 _mm512_set1_ps
#else
typedef __m256 vec;
#define LANES 8
#define DIV _mm256_div_ps
#define SQRT _mm256_sqrt_ps
#define FMA _mm256_fmadd_ps
#define SET1 _mm256_set1_ps
#endif
#define ROUNDS 1000000L
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
/* ns per instruction of eight chains, each instruction depending on the last of its chain */
#define TIME(best, BODY)                                                               \
    do {                                                                               \
        vec a[8], d = SET1(1.0000001f);                                                \
        (void)d;                                                                       \
        for (int k = 0; k < 8; k++)                                                    \
            a[k] = SET1(1.5f + k);                                                     \
        best = 1e9;                                                                    \
        for (int rep = 0; rep < 20; rep++) {                                           \
            double t = now();                                                          \
            for (long i = 0; i < ROUNDS; i++) {                                        \
                BODY;                                                                  \
                __asm__ volatile("" : "+x"(a[0]), "+x"(a[1]), "+x"(a[2]), "+x"(a[3]),  \
                                 "+x"(a[4]), "+x"(a[5]), "+x"(a[6]), "+x"(a[7]));       \
            }                                                                          \
            t = (now() - t) / (8.0 * ROUNDS) * 1e9;                                    \
            if (t < best)                                                              \
                best = t;                                                              \
        }                                                                              \
    } while (0)
int main(void) {
    double div, sqrt, pair, fma;
    TIME(div, for (int k = 0; k < 8; k++) a[k] = DIV(a[k], d));
    TIME(sqrt, for (int k = 0; k < 8; k++) a[k] = SQRT(a[k]));
    /* four divisions and four roots: pair = the time of one of each */
    TIME(pair, for (int k = 0; k < 4; k++) { a[k] = DIV(a[k], d); a[k + 4] = SQRT(a[k + 4]); });
    pair *= 2;
    TIME(fma, for (int k = 0; k < 8; k++) a[k] = FMA(a[k], d, d));
    printf("%d-bit vectors, ns per instruction: vdivps %.3f, vsqrtps %.3f, fma (latency-bound) "
           "%.3f\n", 32 * LANES, div, sqrt, fma);
    printf("a vdivps and a vsqrtps: %.3f ns, %.3f ns per float32 element\n", pair,
           pair / LANES);
    return 0;
}
