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
#include <string.h>

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

static inline __m256 fo_root8(__m256 x, int on_fma) {
    return on_fma ? fo_sqrt_fma(x) : _mm256_sqrt_ps(x);
}

/* The Adam family's scalars as vectors: the moments' (c1 = lerp's weight, its start g when
 * from_end), AdamW's decay of p (shrink), and each update's own */
typedef struct {
    __m256 c1, b2, c2, eps, decay, step, inv_bc2_sqrt, inv_bc2, grad_coef, avg_coef, scale;
} fo_adam_consts;
enum { FO_ADAM, FO_NADAM, FO_RADAM };

/* eight elements from i of adam_elem, nadam_elem or radam_elem (rectified) without options */
static inline __attribute__((always_inline)) void fo_adam8(
        const fo_adam_consts *k, float *restrict p, const float *restrict g, float *restrict m,
        float *restrict v, ptrdiff_t i, int kind, int from_end, int shrink, int on_fma) {
    __m256 gi = _mm256_loadu_ps(g + i), mo = _mm256_loadu_ps(m + i), pi = _mm256_loadu_ps(p + i);
    if (shrink)
        pi = _mm256_mul_ps(pi, k->decay);
    __m256 mi = _mm256_add_ps(from_end ? gi : mo, _mm256_mul_ps(k->c1, _mm256_sub_ps(gi, mo)));
    __m256 vi = _mm256_add_ps(_mm256_mul_ps(k->b2, _mm256_loadu_ps(v + i)),
                              _mm256_mul_ps(_mm256_mul_ps(k->c2, gi), gi));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    if (kind == FO_ADAM) {
        __m256 d = _mm256_add_ps(_mm256_mul_ps(fo_root8(vi, on_fma), k->inv_bc2_sqrt), k->eps);
        pi = _mm256_sub_ps(pi, _mm256_div_ps(_mm256_mul_ps(k->step, mi), d));
    } else if (kind == FO_NADAM) {
        __m256 d = _mm256_add_ps(fo_root8(_mm256_mul_ps(vi, k->inv_bc2), on_fma), k->eps);
        __m256 r = _mm256_div_ps(_mm256_set1_ps(1.0f), d);
        pi = _mm256_add_ps(pi, _mm256_mul_ps(_mm256_mul_ps(k->grad_coef, gi), r));
        pi = _mm256_add_ps(pi, _mm256_mul_ps(_mm256_mul_ps(k->avg_coef, mi), r));
    } else {
        __m256 d = _mm256_add_ps(fo_root8(vi, on_fma), k->eps);
        pi = _mm256_sub_ps(pi, _mm256_mul_ps(_mm256_mul_ps(k->step, mi),
                                             _mm256_div_ps(k->scale, d)));
    }
    _mm256_storeu_ps(p + i, pi);
}

static inline __attribute__((always_inline)) ptrdiff_t fo_adam_loop(
        const fo_adam_consts *k, float *p, const float *g, float *m, float *v, ptrdiff_t n,
        int kind, int from_end, int shrink) {
    ptrdiff_t i = 0;
    for (; i + 24 <= n; i += 24) {      /* the FMA units are busier here: one root in three */
        fo_adam8(k, p, g, m, v, i, kind, from_end, shrink, 0);
        fo_adam8(k, p, g, m, v, i + 8, kind, from_end, shrink, 1);
        fo_adam8(k, p, g, m, v, i + 16, kind, from_end, shrink, 0);
    }
    for (; i + 8 <= n; i += 8)
        fo_adam8(k, p, g, m, v, i, kind, from_end, shrink, 0);
    return i;
}

/* each combination of lerp's start and AdamW's decay a loop of its own, as in adam_sweep */
static ptrdiff_t fo_adam_family(const fo_adam_consts *k, float *p, const float *g, float *m,
                                float *v, ptrdiff_t n, int kind, int from_end, int shrink) {
#define FO_LOOP(KIND) (from_end ? (shrink ? fo_adam_loop(k, p, g, m, v, n, KIND, 1, 1)        \
                                          : fo_adam_loop(k, p, g, m, v, n, KIND, 1, 0))       \
                                : (shrink ? fo_adam_loop(k, p, g, m, v, n, KIND, 0, 1)        \
                                          : fo_adam_loop(k, p, g, m, v, n, KIND, 0, 0)))
    return kind == FO_ADAM ? FO_LOOP(FO_ADAM) : kind == FO_NADAM ? FO_LOOP(FO_NADAM)
                                                                  : FO_LOOP(FO_RADAM);
#undef FO_LOOP
}

static fo_adam_consts fo_adam_scalars(float c1, float b2, float c2, float eps, float decay) {
    fo_adam_consts k;
    memset(&k, 0, sizeof k);
    k.c1 = _mm256_set1_ps(c1);
    k.b2 = _mm256_set1_ps(b2);
    k.c2 = _mm256_set1_ps(c2);
    k.eps = _mm256_set1_ps(eps);
    k.decay = _mm256_set1_ps(decay);
    return k;
}

/* adam_elem without options: p = p - (step * m) / (sqrt(v) * inv_bc2_sqrt + eps) */
static ptrdiff_t fo_adam_f32(float *p, const float *g, float *m, float *v, ptrdiff_t n,
                             float c1, int from_end, float b2, float c2, float eps, float decay,
                             int shrink, float step, float inv_bc2_sqrt) {
    fo_adam_consts k = fo_adam_scalars(c1, b2, c2, eps, decay);
    k.step = _mm256_set1_ps(step);
    k.inv_bc2_sqrt = _mm256_set1_ps(inv_bc2_sqrt);
    return fo_adam_family(&k, p, g, m, v, n, FO_ADAM, from_end, shrink);
}

/* nadam_elem without options: r = 1 / (sqrt(v * inv_bc2) + eps), p = p + (cg * g) * r, then
 * p = p + (cm * m) * r */
static ptrdiff_t fo_nadam_f32(float *p, const float *g, float *m, float *v, ptrdiff_t n,
                              float c1, int from_end, float b2, float c2, float eps, float decay,
                              int shrink, float inv_bc2, float grad_coef, float avg_coef) {
    fo_adam_consts k = fo_adam_scalars(c1, b2, c2, eps, decay);
    k.inv_bc2 = _mm256_set1_ps(inv_bc2);
    k.grad_coef = _mm256_set1_ps(grad_coef);
    k.avg_coef = _mm256_set1_ps(avg_coef);
    return fo_adam_family(&k, p, g, m, v, n, FO_NADAM, from_end, shrink);
}

/* radam_elem rectified, without options: p = p - (step * m) * (scale / (sqrt(v) + eps)) */
static ptrdiff_t fo_radam_f32(float *p, const float *g, float *m, float *v, ptrdiff_t n,
                              float c1, int from_end, float b2, float c2, float eps, float step,
                              float scale) {
    fo_adam_consts k = fo_adam_scalars(c1, b2, c2, eps, 1.0f);
    k.step = _mm256_set1_ps(step);
    k.scale = _mm256_set1_ps(scale);
    return fo_adam_family(&k, p, g, m, v, n, FO_RADAM, from_end, 0);
}

/* eight elements from i of the running sums of squares: RMSprop's sq = decay * sq + (c * g) *
 * g, or (sum) Adagrad's sq = sq + g * g; then p = p - (lr * g) / (sqrt(sq) + eps) */
static inline __attribute__((always_inline)) void fo_squares8(
        float *restrict p, const float *restrict g, float *restrict sq, ptrdiff_t i, __m256 lr,
        __m256 decay, __m256 c, __m256 eps, int sum, int on_fma) {
    __m256 gi = _mm256_loadu_ps(g + i), so = _mm256_loadu_ps(sq + i);
    __m256 si = sum ? _mm256_add_ps(so, _mm256_mul_ps(gi, gi))
                    : _mm256_add_ps(_mm256_mul_ps(decay, so),
                                    _mm256_mul_ps(_mm256_mul_ps(c, gi), gi));
    _mm256_storeu_ps(sq + i, si);
    __m256 d = _mm256_add_ps(fo_root8(si, on_fma), eps);
    _mm256_storeu_ps(p + i, _mm256_sub_ps(_mm256_loadu_ps(p + i),
                                          _mm256_div_ps(_mm256_mul_ps(lr, gi), d)));
}

static inline __attribute__((always_inline)) ptrdiff_t fo_squares_loop(
        float *p, const float *g, float *sq, ptrdiff_t n, float lr, float decay, float c,
        float eps, int sum) {
    const __m256 vlr = _mm256_set1_ps(lr), vdecay = _mm256_set1_ps(decay),
                 vc = _mm256_set1_ps(c), veps = _mm256_set1_ps(eps);
    ptrdiff_t i = 0;
    for (; i + 24 <= n; i += 24) {      /* two roots in three */
        fo_squares8(p, g, sq, i, vlr, vdecay, vc, veps, sum, 1);
        fo_squares8(p, g, sq, i + 8, vlr, vdecay, vc, veps, sum, 0);
        fo_squares8(p, g, sq, i + 16, vlr, vdecay, vc, veps, sum, 1);
    }
    for (; i + 8 <= n; i += 8)
        fo_squares8(p, g, sq, i, vlr, vdecay, vc, veps, sum, 0);
    return i;
}

/* rmsprop_span (decay = alpha, c = 1 - alpha) or, with sum, adagrad_span, without options */
static ptrdiff_t fo_squares_f32(float *p, const float *g, float *sq, ptrdiff_t n, float lr,
                                float decay, float c, float eps, int sum) {
    return sum ? fo_squares_loop(p, g, sq, n, lr, decay, c, eps, 1)
               : fo_squares_loop(p, g, sq, n, lr, decay, c, eps, 0);
}

/* eight elements from i of adadelta_span without options: sq = rho * sq + (c * g) * g,
 * delta = sqrt(acc + eps) / sqrt(sq + eps) * g, acc = rho * acc + (c * delta) * delta,
 * p = p - lr * delta; fma: which of the two roots the FMA units take (bit 0: acc's) */
static inline __attribute__((always_inline)) void fo_adadelta8(
        float *restrict p, const float *restrict g, float *restrict sq, float *restrict acc,
        ptrdiff_t i, __m256 lr, __m256 rho, __m256 c, __m256 eps, int fma) {
    __m256 gi = _mm256_loadu_ps(g + i), ai = _mm256_loadu_ps(acc + i);
    __m256 si = _mm256_add_ps(_mm256_mul_ps(rho, _mm256_loadu_ps(sq + i)),
                              _mm256_mul_ps(_mm256_mul_ps(c, gi), gi));
    _mm256_storeu_ps(sq + i, si);
    __m256 delta = _mm256_mul_ps(_mm256_div_ps(fo_root8(_mm256_add_ps(ai, eps), fma & 1),
                                               fo_root8(_mm256_add_ps(si, eps), fma & 2)), gi);
    _mm256_storeu_ps(acc + i, _mm256_add_ps(_mm256_mul_ps(rho, ai),
                                            _mm256_mul_ps(_mm256_mul_ps(c, delta), delta)));
    _mm256_storeu_ps(p + i, _mm256_sub_ps(_mm256_loadu_ps(p + i), _mm256_mul_ps(lr, delta)));
}

static ptrdiff_t fo_adadelta_f32(float *p, const float *g, float *sq, float *acc, ptrdiff_t n,
                                 float lr, float rho, float c, float eps) {
    const __m256 vlr = _mm256_set1_ps(lr), vrho = _mm256_set1_ps(rho), vc = _mm256_set1_ps(c),
                 veps = _mm256_set1_ps(eps);
    ptrdiff_t i = 0;
    for (; i + 24 <= n; i += 24) {      /* three roots in six */
        fo_adadelta8(p, g, sq, acc, i, vlr, vrho, vc, veps, 1);
        fo_adadelta8(p, g, sq, acc, i + 8, vlr, vrho, vc, veps, 2);
        fo_adadelta8(p, g, sq, acc, i + 16, vlr, vrho, vc, veps, 1);
    }
    for (; i + 8 <= n; i += 8)
        fo_adadelta8(p, g, sq, acc, i, vlr, vrho, vc, veps, 0);
    return i;
}
#define FO_ROOT_LOOPS 1

#else
/* (no such loops in this build: FO_ROOT_LOOPS 0 keeps the calls out) */
static ptrdiff_t fo_adam_f32(float *p, const float *g, float *m, float *v, ptrdiff_t n,
                             float c1, int from_end, float b2, float c2, float eps, float decay,
                             int shrink, float step, float inv_bc2_sqrt) { return 0; }
static ptrdiff_t fo_nadam_f32(float *p, const float *g, float *m, float *v, ptrdiff_t n,
                              float c1, int from_end, float b2, float c2, float eps, float decay,
                              int shrink, float inv_bc2, float grad_coef, float avg_coef) {
    return 0;
}
static ptrdiff_t fo_radam_f32(float *p, const float *g, float *m, float *v, ptrdiff_t n,
                              float c1, int from_end, float b2, float c2, float eps, float step,
                              float scale) { return 0; }
static ptrdiff_t fo_squares_f32(float *p, const float *g, float *sq, ptrdiff_t n, float lr,
                                float decay, float c, float eps, int sum) { return 0; }
static ptrdiff_t fo_adadelta_f32(float *p, const float *g, float *sq, float *acc, ptrdiff_t n,
                                 float lr, float rho, float c, float eps) { return 0; }
#define FO_ROOT_LOOPS 0
#endif

#endif /* FO_ROOT_H */
