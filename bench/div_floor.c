/* The divider floor of the Adam family at 1e5 elements (arrays in L2): the float32 Adam loop on
 * one core, best of several sweeps, ns/element, with its division (a) as the kernels do it,
 * vdivps; (b) emulated in float64 on the FMA units: 1/d from a 14-bit estimate (vrcp14pd) and
 * two Newton steps, q = n * (1/d) within 2^-51.9 of n/d, rounded once to float32 (correct: a
 * float32 quotient lies at least 2^-49 from a midpoint of the float32 grid); (c) in float32 by
 * Markstein's sequence (the estimate, two Newton steps, then q + (n - d q) / d); (d) replaced by
 * a multiply, the loop's time without the divider's second job (the square root stays). (b)
 * and (c) check their updates against (a) bit for bit. The square root and the division share
 * the divider; (b) and (c) take the division off it and onto the FMA units, which the rest of
 * the loop already keeps busy. Argument: n (default 100000). Build and run:
 *   gcc -O3 -march=x86-64-v4 -mprefer-vector-width=256 -ffp-contract=off -fno-trapping-math \
 *       -fno-math-errno -o /tmp/div_floor bench/div_floor.c -lm && taskset -c 0 /tmp/div_floor
 */
#include <immintrin.h>
#include <math.h>
#include "adam_race.h"
static inline __m256 div_hw(__m256 n, __m256 d) { return _mm256_div_ps(n, d); }
static inline __m256 div_f64(__m256 n, __m256 d) {
    __m512d nd = _mm512_cvtps_pd(n), dd = _mm512_cvtps_pd(d), one = _mm512_set1_pd(1.0);
    __m512d y = _mm512_rcp14_pd(dd);
    __m512d e = _mm512_fnmadd_pd(dd, y, one);
    y = _mm512_fmadd_pd(y, e, y);
    e = _mm512_fnmadd_pd(dd, y, one);
    y = _mm512_fmadd_pd(y, e, y);
    return _mm512_cvtpd_ps(_mm512_mul_pd(nd, y));
}
static inline __m256 div_markstein(__m256 n, __m256 d) {
    __m256 one = _mm256_set1_ps(1.0f), y = _mm256_rcp14_ps(d);
    __m256 e = _mm256_fnmadd_ps(d, y, one);
    y = _mm256_fmadd_ps(y, e, y);
    e = _mm256_fnmadd_ps(d, y, one);
    y = _mm256_fmadd_ps(y, e, y);
    __m256 q = _mm256_mul_ps(n, y);
    return _mm256_fmadd_ps(_mm256_fnmadd_ps(d, q, n), y, q);
}
static inline __m256 div_none(__m256 n, __m256 d) { return _mm256_mul_ps(n, d); }
/* a 0, infinite or NaN denominator (never with eps > 0 and finite v) would take the divider in
 * (b) and (c) */
#define LOOP(NAME, DIV)                                                                        \
    __attribute__((noinline)) void NAME(float *restrict p, const float *restrict g,          \
                                        float *restrict m, float *restrict v, ll n) {        \
        ADAM_SCALARS                                                                           \
        for (ll i = 0; i + 8 <= n; i += 8)                                                     \
            ADAM(i, _mm256_sqrt_ps, DIV)                                                       \
    }
LOOP(adam_hw, div_hw)
LOOP(adam_f64, div_f64)
LOOP(adam_markstein, div_markstein)
LOOP(adam_none, div_none)
int main(int argc, char **argv) {
    ll n = argc > 1 ? atoll(argv[1]) : 100000;
    n -= n % 8;
    race("Adam", 4, (loop_fn[4]){adam_hw, adam_f64, adam_markstein, adam_none},
         (const char *[4]){"(a) vdivps, as the kernels", "(b) float64 Newton",
                           "(c) float32 Markstein", "(d) no division"}, 2, n);
}
