/* Square roots off the divider, for the dividing optimizer steps in float32.
 *
 * In cache, Adam, RMSprop and Adagrad wait on the one unit that runs both vsqrtps and vdivps
 * (bench/divider.c) while the FMA units idle. fo_sqrt_fma takes a root there instead, with
 * the same bits as vsqrtps for every float32 input (bench/sqrt_floor.c checks all 2^32): a
 * 14-bit estimate of 1/sqrt(x), one coupled Newton step for the root s and its half-reciprocal
 * h, then s + (x - s*s) * h, the residual exact by an FMA. vfixupimmps gives 0, inf, NaN and
 * negative x the hardware's results; a vector holding a positive x below 2^-102, where the
 * residual underflows, takes vsqrtps. The loops below take part of their roots there and the
 * rest on the divider, in the share that ran fastest on an Intel Xeon (model 167) core, in
 * cache (bench/sqrt_floor.c, ns/element: Adam one vector in three, 0.33-0.34 -> 0.29-0.30;
 * Adagrad two in three, 0.34-0.35 -> 0.22). Each loop is the span's loop for float32 without
 * options, operation for operation (optim.pyx; no contraction), so the bits are the span's; it
 * steps whole vectors of 8 and returns how many elements it took, the span's loop doing the
 * rest.
 *
 * Built only into optim_avx512 (FO_ROOT_ON_FMA, with AVX-512VL and 256-bit vectors: CPUs whose
 * divider is not 512 bits wide, fo_common.h); elsewhere the loops take nothing. */
#ifndef FO_ROOT_H
#define FO_ROOT_H
#include <stddef.h>

#if defined(FO_ROOT_ON_FMA) && defined(__AVX512VL__)
#include <immintrin.h>

static inline __m256 fo_sqrt_fma(__m256 x) {
    const __m256 half = _mm256_set1_ps(0.5f);
    __m256 y = _mm256_rsqrt14_ps(x);
    __m256 s = _mm256_mul_ps(x, y), h = _mm256_mul_ps(half, y);
    __m256 r = _mm256_fnmadd_ps(s, h, half);
    s = _mm256_fmadd_ps(s, r, s);
    h = _mm256_fmadd_ps(h, r, h);
    s = _mm256_fmadd_ps(_mm256_fnmadd_ps(s, s, x), h, s);
    /* by class of x: QNaN, SNaN -> x quieted; 0 -> x; 1 -> s; -inf, negative -> the default
     * NaN; +inf -> +inf; positive -> s */
    s = _mm256_fixupimm_ps(s, x, _mm256_set1_epi32(0x03530122), 0);
    __m256i below = _mm256_sub_epi32(_mm256_castps_si256(x), _mm256_set1_epi32(1));
    __mmask8 tiny = _mm256_cmplt_epu32_mask(below, _mm256_set1_epi32(0x0C7FFFFF));
    if (__builtin_expect(tiny != 0, 0))
        s = _mm256_mask_sqrt_ps(s, tiny, x);
    return s;
}

static inline __m256 fo_sqrt_hw(__m256 x) { return _mm256_sqrt_ps(x); }

/* eight elements from i of each loop; ROOT is fo_sqrt_hw or fo_sqrt_fma */
#define FO_ADAM8(i, ROOT)                                                                      \
    {                                                                                          \
        __m256 gi = _mm256_loadu_ps(g + i), mo = _mm256_loadu_ps(m + i);                      \
        __m256 pi = _mm256_loadu_ps(p + i);                                                   \
        if (shrink)                                                                            \
            pi = _mm256_mul_ps(pi, vdecay);                                                   \
        __m256 mi = _mm256_add_ps(from_end ? gi : mo, _mm256_mul_ps(vc1, _mm256_sub_ps(gi, mo))); \
        __m256 vi = _mm256_add_ps(_mm256_mul_ps(vb2, _mm256_loadu_ps(v + i)),                 \
                                  _mm256_mul_ps(_mm256_mul_ps(vc2, gi), gi));                \
        _mm256_storeu_ps(m + i, mi);                                                          \
        _mm256_storeu_ps(v + i, vi);                                                          \
        __m256 d = _mm256_add_ps(_mm256_mul_ps(ROOT(vi), vibs), veps);                        \
        _mm256_storeu_ps(p + i, _mm256_sub_ps(pi, _mm256_div_ps(_mm256_mul_ps(vstep, mi), d))); \
    }
#define FO_SQUARES8(i, ROOT)                                                                   \
    {                                                                                          \
        __m256 gi = _mm256_loadu_ps(g + i), so = _mm256_loadu_ps(sq + i);                     \
        __m256 si = sum ? _mm256_add_ps(so, _mm256_mul_ps(gi, gi))                           \
                        : _mm256_add_ps(_mm256_mul_ps(vdecay, so),                            \
                                        _mm256_mul_ps(_mm256_mul_ps(vc, gi), gi));           \
        _mm256_storeu_ps(sq + i, si);                                                         \
        __m256 d = _mm256_add_ps(ROOT(si), veps);                                             \
        _mm256_storeu_ps(p + i, _mm256_sub_ps(_mm256_loadu_ps(p + i),                         \
                                              _mm256_div_ps(_mm256_mul_ps(vlr, gi), d)));     \
    }

static inline ptrdiff_t fo_adam_loop(float *restrict p, const float *restrict g,
                                     float *restrict m, float *restrict v, ptrdiff_t n,
                                     float c1, float b2, float c2, float eps, float step,
                                     float inv_bc2_sqrt, float decay, int from_end, int shrink) {
    const __m256 vc1 = _mm256_set1_ps(c1), vb2 = _mm256_set1_ps(b2), vc2 = _mm256_set1_ps(c2),
                 veps = _mm256_set1_ps(eps), vstep = _mm256_set1_ps(step),
                 vibs = _mm256_set1_ps(inv_bc2_sqrt), vdecay = _mm256_set1_ps(decay);
    ptrdiff_t i = 0;
    for (; i + 24 <= n; i += 24) {      /* Adam's FMA units are busier: one root in three */
        FO_ADAM8(i, fo_sqrt_hw)
        FO_ADAM8(i + 8, fo_sqrt_fma)
        FO_ADAM8(i + 16, fo_sqrt_hw)
    }
    for (; i + 8 <= n; i += 8)
        FO_ADAM8(i, fo_sqrt_hw)
    return i;
}

/* adam_elem without options (shrink: AdamW's decay); lerp's start is g when from_end */
static ptrdiff_t fo_adam_f32(float *p, const float *g, float *m, float *v, ptrdiff_t n,
                             float c1, int from_end, float b2, float c2, float eps, float step,
                             float inv_bc2_sqrt, float decay, int shrink) {
    /* each combination of the two options a loop of its own, as in adam_sweep */
#define FO_ADAM_LOOP(E, S) fo_adam_loop(p, g, m, v, n, c1, b2, c2, eps, step, inv_bc2_sqrt, decay, E, S)
    return from_end ? (shrink ? FO_ADAM_LOOP(1, 1) : FO_ADAM_LOOP(1, 0))
                    : (shrink ? FO_ADAM_LOOP(0, 1) : FO_ADAM_LOOP(0, 0));
#undef FO_ADAM_LOOP
}

static inline ptrdiff_t fo_squares_loop(float *restrict p, const float *restrict g,
                                        float *restrict sq, ptrdiff_t n, float lr, float decay,
                                        float c, float eps, int sum) {
    const __m256 vlr = _mm256_set1_ps(lr), vdecay = _mm256_set1_ps(decay),
                 vc = _mm256_set1_ps(c), veps = _mm256_set1_ps(eps);
    ptrdiff_t i = 0;
    for (; i + 24 <= n; i += 24) {      /* two roots in three */
        FO_SQUARES8(i, fo_sqrt_fma)
        FO_SQUARES8(i + 8, fo_sqrt_hw)
        FO_SQUARES8(i + 16, fo_sqrt_fma)
    }
    for (; i + 8 <= n; i += 8)
        FO_SQUARES8(i, fo_sqrt_hw)
    return i;
}

/* the steps on a running sum of squares, then p = p - (lr * g) / (sqrt(sq) + eps): RMSprop's
 * sq = alpha * sq + ((1 - alpha) * g) * g (decay = alpha, c = 1 - alpha), or with sum
 * Adagrad's sq = sq + g * g */
static ptrdiff_t fo_squares_f32(float *p, const float *g, float *sq, ptrdiff_t n, float lr,
                                float decay, float c, float eps, int sum) {
    return sum ? fo_squares_loop(p, g, sq, n, lr, decay, c, eps, 1)
               : fo_squares_loop(p, g, sq, n, lr, decay, c, eps, 0);
}
#undef FO_ADAM8
#undef FO_SQUARES8
#define FO_ROOT_LOOPS 1

#else
static ptrdiff_t fo_adam_f32(float *p, const float *g, float *m, float *v, ptrdiff_t n,
                             float c1, int from_end, float b2, float c2, float eps, float step,
                             float inv_bc2_sqrt, float decay, int shrink) {
    return 0;
}
static ptrdiff_t fo_squares_f32(float *p, const float *g, float *sq, ptrdiff_t n, float lr,
                                float decay, float c, float eps, int sum) {
    return 0;
}
#define FO_ROOT_LOOPS 0
#endif

#endif /* FO_ROOT_H */
