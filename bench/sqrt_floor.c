/* The square root off the divider: the dividing kernels in cache wait on the one unit that
 * runs both vsqrtps and vdivps (bench/divider.c). A float32 root can be had bit for bit on the
 * FMA units instead: the kernels' own fo_sqrt_fma (src/fastopt/_kernels/fo_root.h: an integer
 * estimate of 1/sqrt(x), three coupled Newton steps, a correction by the exact residual
 * x - s*s; vfixupimmps for 0, inf, NaN and negative x; vsqrtps for a vector holding a positive
 * x below 2^-102). This program first checks it against vsqrtps over all 2^32 float32 bit
 * patterns (NaN payloads included), with and without flush-to-zero and denormals-are-zero
 * (about 5 s each): as every step is exact integer arithmetic or a correctly rounded IEEE
 * operation, a pass here holds on every CPU. Then it times, on one
 * core, best of several sweeps, ns/element at 1e5 elements (arrays in L2): Adam's loop (as
 * bench/div_floor.c's) and Adagrad's with the root by vsqrtps, on the FMA units in every
 * vector, in one vector of two, in one of three, and the loop with neither root nor
 * division (its floor without the divider; not the same bits). The vdivps stays in every
 * variant (bench/div_floor.c times it emulated). Build and run:
 *   gcc -O3 -march=x86-64-v4 -mprefer-vector-width=256 -ffp-contract=off -fno-trapping-math \
 *       -fno-math-errno -DFO_ROOT_ON_FMA -I src/fastopt/_kernels -o /tmp/sqrt_floor \
 *       bench/sqrt_floor.c && taskset -c 0 /tmp/sqrt_floor
 */
#include <immintrin.h>
#include <stdint.h>
#include "adam_race.h"
#include "fo_root.h"
static inline __m256 sqrt_hw(__m256 x) { return _mm256_sqrt_ps(x); }
static inline __m256 sqrt_fma(__m256 x) { return fo_sqrt_fma(x); }
static inline __m256 none(__m256 x) { return x; }
static inline __m256 div_hw(__m256 n, __m256 d) { return _mm256_div_ps(n, d); }
static inline __m256 div_none(__m256 n, __m256 d) { return _mm256_mul_ps(n, d); }
/* Adagrad's element i.. i+7 (optim.pyx's adagrad_span, no options; Adam's is adam_race.h's) */
#define ADAGRAD(I, ROOT, DIV)                                                                  \
    {                                                                                          \
        __m256 gi = _mm256_loadu_ps(g + I);                                                   \
        __m256 si = _mm256_add_ps(_mm256_loadu_ps(m + I), _mm256_mul_ps(gi, gi));             \
        _mm256_storeu_ps(m + I, si);                                                          \
        __m256 d = _mm256_add_ps(ROOT(si), eps);                                              \
        _mm256_storeu_ps(p + I, _mm256_sub_ps(_mm256_loadu_ps(p + I),                         \
                                              DIV(_mm256_mul_ps(step, gi), d)));              \
    }
/* a loop of six vectors an iteration, each with its own root */
#define LOOP6(NAME, ELEM, R0, R1, R2, R3, R4, R5, DIV)                                         \
    __attribute__((noinline)) void NAME(float *restrict p, const float *restrict g,          \
                                        float *restrict m, float *restrict v, ll n) {        \
        ADAM_SCALARS                                                                           \
        (void)c1, (void)b2, (void)c2, (void)ibs, (void)v;                                     \
        for (ll i = 0; i + 48 <= n; i += 48) {                                                 \
            ELEM(i, R0, DIV) ELEM(i + 8, R1, DIV) ELEM(i + 16, R2, DIV)                        \
            ELEM(i + 24, R3, DIV) ELEM(i + 32, R4, DIV) ELEM(i + 40, R5, DIV)                  \
        }                                                                                      \
    }
#define HW sqrt_hw
#define FMA sqrt_fma
LOOP6(adam_hw, ADAM, HW, HW, HW, HW, HW, HW, div_hw)
LOOP6(adam_all, ADAM, FMA, FMA, FMA, FMA, FMA, FMA, div_hw)
LOOP6(adam_two, ADAM, HW, FMA, HW, FMA, HW, FMA, div_hw)
LOOP6(adam_three, ADAM, HW, FMA, HW, HW, FMA, HW, div_hw)
LOOP6(adam_none, ADAM, none, none, none, none, none, none, div_none)
LOOP6(adagrad_hw, ADAGRAD, HW, HW, HW, HW, HW, HW, div_hw)
LOOP6(adagrad_all, ADAGRAD, FMA, FMA, FMA, FMA, FMA, FMA, div_hw)
LOOP6(adagrad_two, ADAGRAD, HW, FMA, HW, FMA, HW, FMA, div_hw)
LOOP6(adagrad_three, ADAGRAD, HW, FMA, HW, HW, FMA, HW, div_hw)
LOOP6(adagrad_none, ADAGRAD, none, none, none, none, none, none, div_none)
static const char *const labels[5] = {
    "root by vsqrtps", "root on FMA units, every vector", "root on FMA units, 1 of 2 vectors",
    "root on FMA units, 1 of 3 vectors", "neither root nor division"};
int main(int argc, char **argv) {
    uint64_t differ = 0;
    unsigned csr = _mm_getcsr();
    /* to nearest, with neither, either or both of FTZ (0x8000) and DAZ (0x0040): a library
     * built with -ffast-math sets both in the process that loads it */
    for (unsigned flush = 0; flush < 4; flush++) {
        _mm_setcsr(csr | (flush & 1 ? 0x8000 : 0) | (flush & 2 ? 0x0040 : 0));
        for (uint64_t b = 0; b <= 0xFFFFFFFFull; b += 8) {
            uint32_t bits[8], got[8], want[8];
            for (int k = 0; k < 8; k++)
                bits[k] = (uint32_t)(b + k);
            __m256 x, e, h;
            memcpy(&x, bits, 32);
            e = sqrt_fma(x);
            h = _mm256_sqrt_ps(x);
            memcpy(got, &e, 32);
            memcpy(want, &h, 32);
            for (int k = 0; k < 8; k++)
                differ += got[k] != want[k];
        }
    }
    _mm_setcsr(csr);
    printf("root on the FMA units against vsqrtps, all 2^32 float32 inputs, with and without "
           "FTZ and DAZ: %llu differ\n", (unsigned long long)differ);
    ll n = argc > 1 ? atoll(argv[1]) : 100000;
    n -= n % 48;
    race("Adam", 5, (loop_fn[5]){adam_hw, adam_all, adam_two, adam_three, adam_none}, labels,
         3, n);
    race("Adagrad", 5, (loop_fn[5]){adagrad_hw, adagrad_all, adagrad_two, adagrad_three,
                                    adagrad_none}, labels, 3, n);
    return differ != 0;
}
