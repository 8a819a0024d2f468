/* Square roots off the divider, for the dividing optimizer steps in float32.
 *
 * In cache, Adam, RMSprop, Adagrad and the rest of the family wait on the one unit that runs
 * both vsqrtps and vdivps (bench/divider.c) while the FMA units idle. fo_sqrt_fma takes a root
 * there instead, with the same bits as vsqrtps for every float32 input when rounding to
 * nearest (the default; see fo_round_to_nearest), with or without FTZ and DAZ: an estimate of
 * 1/sqrt(x) by integer arithmetic on x's bits (0x5f375a86 - bits / 2, within 3.5%), three
 * coupled Newton steps for the root s and its half-reciprocal h, then s + (x - s*s) * h, the
 * residual exact by an FMA.
 * Every operation is exact integer arithmetic or a correctly rounded IEEE one, so the result
 * is the same on every CPU, and bench/sqrt_floor.c checks it against vsqrtps over all 2^32
 * inputs. (vrsqrt14ps's estimate would save seven operations, but only its error bound is
 * architectural: a check on one CPU would not hold for another.) vfixupimmps gives 0, inf, NaN
 * and negative x the hardware's results; a vector holding a positive x below 2^-102, where the
 * residual underflows, takes vsqrtps for those lanes.
 *
 * The loops below take part of their roots there and the rest on the divider, in the share
 * that ran fastest on an Intel Xeon (model 167) core in cache (bench/sqrt_floor.c, one core,
 * 1e5, ns/element: Adam 0.34-0.36 with vsqrtps, one root in three 0.30-0.32, one in two 0.35;
 * Adagrad 0.34, one in two 0.26, one in three 0.29; not tuned on the other CPUs this build
 * serves; on Zen 4, where it ran slowest of the three builds, the 512-bit one serves). Each
 * is the span's loop for float32 without options, operation for operation and operand for
 * operand (optim.pyx; no contraction; fo_add, fo_mul), so the bits are the span's. Each takes
 * every element of its span, the last vector masked, so that an element's NaN comes from the
 * same code wherever a span starts or ends, and returns the count it took; in a rounding mode
 * other than to nearest it takes none (fo_round_to_nearest), leaving the span to its own loop.
 *
 * Built only into optim_avx512 (FO_ROOT_ON_FMA, with AVX-512VL and 256-bit vectors: CPUs with
 * AVX-512 but AMD Zen 4 and later, fo_common.h); elsewhere the loops take nothing. */
#ifndef FO_ROOT_H
#define FO_ROOT_H
#include <stddef.h>

#if defined(FO_ROOT_ON_FMA) && defined(__AVX512VL__)
#include <immintrin.h>
#include <string.h>

/* a + b and a * b computed with a as the first source. Where both are NaN, x86 returns the
 * first source's, and GCC, free to swap the operands of its commutative vector + and *, swapped
 * them in some inlined copies of a loop and not in others: which NaN came out then hung on
 * where a span started (its address, the thread count). Pinned, an element's NaN is the same
 * wherever it falls (the compiler's own loops and NumPy's do not promise even that; which
 * payload survives is not in the contract). */
static inline __m256 fo_add(__m256 a, __m256 b) {
    __m256 r;
    __asm__("vaddps %2, %1, %0" : "=v"(r) : "v"(a), "v"(b));
    return r;
}
static inline __m256 fo_mul(__m256 a, __m256 b) {
    __m256 r;
    __asm__("vmulps %2, %1, %0" : "=v"(r) : "v"(a), "v"(b));
    return r;
}

/* the emulated root rounds as vsqrtps only in round-to-nearest (MXCSR's rounding control 0,
 * NumPy's and C's default); a thread set to another mode keeps vsqrtps: the loops take nothing */
static inline int fo_round_to_nearest(void) { return (_mm_getcsr() & 0x6000) == 0; }

/* the lanes `keep` of a vector at a (all 8 but in a span's last vector, where the lanes past
 * its end load 1, which no step below turns into a division by zero or an invalid operation) */
#define FO_ALL 0xFF
static inline __m256 fo_load(const float *a, __mmask8 keep) {
    return keep == FO_ALL ? _mm256_loadu_ps(a) : _mm256_mask_loadu_ps(_mm256_set1_ps(1), keep, a);
}
static inline void fo_store(float *a, __m256 x, __mmask8 keep) {
    if (keep == FO_ALL)
        _mm256_storeu_ps(a, x);
    else
        _mm256_mask_storeu_ps(a, keep, x);
}

static inline __m256 fo_sqrt_fma(__m256 x) {
    const __m256 half = _mm256_set1_ps(0.5f);
    /* NaN, inf and negative x are rooted as the largest float (the fixup below gives their
     * results), so the steps raise no invalid operation; the fixup raises it where vsqrtps
     * does (imm8 0x70: SNaN, -inf, negative). The clamp is on the bits: vminps would raise it
     * for a quiet NaN too. */
    __m256 xf = _mm256_castsi256_ps(
        _mm256_min_epu32(_mm256_castps_si256(x), _mm256_set1_epi32(0x7f7fffff)));
    __m256 y = _mm256_castsi256_ps(_mm256_sub_epi32(
        _mm256_set1_epi32(0x5f375a86), _mm256_srli_epi32(_mm256_castps_si256(xf), 1)));
    __m256 s = _mm256_mul_ps(xf, y), h = _mm256_mul_ps(half, y), r;
    for (int k = 0; k < 3; k++) {       /* relative error 3.5e-2 -> 1.9e-3 -> 5e-6 -> 1 ulp */
        r = _mm256_fnmadd_ps(s, h, half);
        s = _mm256_fmadd_ps(s, r, s);
        h = _mm256_fmadd_ps(h, r, h);
    }
    s = _mm256_fmadd_ps(_mm256_fnmadd_ps(s, s, xf), h, s);
    /* by class of x: QNaN, SNaN -> x quieted; 0 -> x; 1 -> s; -inf, negative -> the default
     * NaN; +inf -> +inf; positive -> s */
    s = _mm256_fixupimm_ps(s, x, _mm256_set1_epi32(0x03530122), 0x70);
    __m256i below = _mm256_sub_epi32(_mm256_castps_si256(x), _mm256_set1_epi32(1));
    __mmask8 tiny = _mm256_cmplt_epu32_mask(below, _mm256_set1_epi32(0x0C7FFFFF));
    if (__builtin_expect(tiny != 0, 0))
        s = _mm256_mask_sqrt_ps(s, tiny, x);
    return s;
}

static inline __m256 fo_root8(__m256 x, int on_fma) {
    return on_fma ? fo_sqrt_fma(x) : _mm256_sqrt_ps(x);
}

/* The Adam family's scalars as vectors: the moments' (c1 = lerp_coef(1 - beta1), lerp starting
 * from g when from_end), AdamW's decay of p (shrink), and each update's own */
typedef struct {
    __m256 c1, b2, c2, eps, decay, step, inv_bc2_sqrt, inv_bc2, grad_coef, avg_coef, scale;
} fo_adam_consts;
enum { FO_ADAM, FO_NADAM, FO_RADAM };

/* eight elements from i of adam_elem, nadam_elem or radam_elem (rectified) without options */
static inline __attribute__((always_inline)) void fo_adam8(
        const fo_adam_consts *k, float *p, const float *g, float *m, float *v, ptrdiff_t i,
        __mmask8 keep, int kind, int from_end, int shrink, int on_fma) {
    __m256 gi = fo_load(g + i, keep), mo = fo_load(m + i, keep), pi = fo_load(p + i, keep);
    if (shrink)
        pi = fo_mul(pi, k->decay);
    __m256 mi = fo_add(from_end ? gi : mo, fo_mul(k->c1, _mm256_sub_ps(gi, mo)));
    __m256 vi = fo_add(fo_mul(k->b2, fo_load(v + i, keep)), fo_mul(fo_mul(k->c2, gi), gi));
    fo_store(m + i, mi, keep);
    fo_store(v + i, vi, keep);
    if (kind == FO_ADAM) {
        __m256 d = fo_add(fo_mul(fo_root8(vi, on_fma), k->inv_bc2_sqrt), k->eps);
        pi = _mm256_sub_ps(pi, _mm256_div_ps(fo_mul(k->step, mi), d));
    } else if (kind == FO_NADAM) {
        __m256 d = fo_add(fo_root8(fo_mul(vi, k->inv_bc2), on_fma), k->eps);
        __m256 r = _mm256_div_ps(_mm256_set1_ps(1.0f), d);
        pi = fo_add(pi, fo_mul(fo_mul(k->grad_coef, gi), r));
        pi = fo_add(pi, fo_mul(fo_mul(k->avg_coef, mi), r));
    } else {
        __m256 d = fo_add(fo_root8(vi, on_fma), k->eps);
        pi = _mm256_sub_ps(pi, fo_mul(fo_mul(k->step, mi), _mm256_div_ps(k->scale, d)));
    }
    fo_store(p + i, pi, keep);
}

static inline __attribute__((always_inline)) ptrdiff_t fo_adam_loop(
        const fo_adam_consts *k, float *p, const float *g, float *m, float *v, ptrdiff_t n,
        int kind, int from_end, int shrink) {
    ptrdiff_t i = 0;
    for (; i + 24 <= n; i += 24) {      /* one root in three */
        fo_adam8(k, p, g, m, v, i, FO_ALL, kind, from_end, shrink, 0);
        fo_adam8(k, p, g, m, v, i + 8, FO_ALL, kind, from_end, shrink, 1);
        fo_adam8(k, p, g, m, v, i + 16, FO_ALL, kind, from_end, shrink, 0);
    }
    for (; i + 8 <= n; i += 8)
        fo_adam8(k, p, g, m, v, i, FO_ALL, kind, from_end, shrink, 0);
    if (i < n)
        fo_adam8(k, p, g, m, v, i, (__mmask8)((1u << (n - i)) - 1), kind, from_end, shrink, 0);
    return n;
}

/* each combination of lerp's start and AdamW's decay a loop of its own, as in adam_sweep */
static ptrdiff_t fo_adam_family(const fo_adam_consts *k, float *p, const float *g, float *m,
                                float *v, ptrdiff_t n, int kind, int from_end, int shrink) {
    if (!fo_round_to_nearest())
        return 0;
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
        float *p, const float *g, float *sq, ptrdiff_t i, __mmask8 keep, __m256 lr,
        __m256 decay, __m256 c, __m256 eps, int sum, int on_fma) {
    __m256 gi = fo_load(g + i, keep), so = fo_load(sq + i, keep);
    __m256 si = sum ? fo_add(so, fo_mul(gi, gi))
                    : fo_add(fo_mul(decay, so), fo_mul(fo_mul(c, gi), gi));
    fo_store(sq + i, si, keep);
    __m256 d = fo_add(fo_root8(si, on_fma), eps);
    fo_store(p + i, _mm256_sub_ps(fo_load(p + i, keep), _mm256_div_ps(fo_mul(lr, gi), d)), keep);
}

static inline __attribute__((always_inline)) ptrdiff_t fo_squares_loop(
        float *p, const float *g, float *sq, ptrdiff_t n, float lr, float decay, float c,
        float eps, int sum) {
    const __m256 vlr = _mm256_set1_ps(lr), vdecay = _mm256_set1_ps(decay),
                 vc = _mm256_set1_ps(c), veps = _mm256_set1_ps(eps);
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {      /* one root in two */
        fo_squares8(p, g, sq, i, FO_ALL, vlr, vdecay, vc, veps, sum, 0);
        fo_squares8(p, g, sq, i + 8, FO_ALL, vlr, vdecay, vc, veps, sum, 1);
    }
    for (; i + 8 <= n; i += 8)
        fo_squares8(p, g, sq, i, FO_ALL, vlr, vdecay, vc, veps, sum, 0);
    if (i < n)
        fo_squares8(p, g, sq, i, (__mmask8)((1u << (n - i)) - 1), vlr, vdecay, vc, veps, sum, 0);
    return n;
}

/* rmsprop_span (decay = alpha, c = 1 - alpha) or, with sum, adagrad_span, without options */
static ptrdiff_t fo_squares_f32(float *p, const float *g, float *sq, ptrdiff_t n, float lr,
                                float decay, float c, float eps, int sum) {
    if (!fo_round_to_nearest())
        return 0;
    return sum ? fo_squares_loop(p, g, sq, n, lr, decay, c, eps, 1)
               : fo_squares_loop(p, g, sq, n, lr, decay, c, eps, 0);
}

/* eight elements from i of adadelta_span without options: sq = rho * sq + (c * g) * g,
 * delta = sqrt(acc + eps) / sqrt(sq + eps) * g, acc = rho * acc + (c * delta) * delta,
 * p = p - lr * delta; fma: which of the two roots the FMA units take (bit 0: acc's) */
static inline __attribute__((always_inline)) void fo_adadelta8(
        float *p, const float *g, float *sq, float *acc, ptrdiff_t i, __mmask8 keep,
        __m256 lr, __m256 rho, __m256 c, __m256 eps, int fma) {
    __m256 gi = fo_load(g + i, keep), ai = fo_load(acc + i, keep);
    __m256 si = fo_add(fo_mul(rho, fo_load(sq + i, keep)), fo_mul(fo_mul(c, gi), gi));
    fo_store(sq + i, si, keep);
    __m256 delta = fo_mul(_mm256_div_ps(fo_root8(fo_add(ai, eps), fma & 1),
                                        fo_root8(fo_add(si, eps), fma & 2)), gi);
    fo_store(acc + i, fo_add(fo_mul(rho, ai), fo_mul(fo_mul(c, delta), delta)), keep);
    fo_store(p + i, _mm256_sub_ps(fo_load(p + i, keep), fo_mul(lr, delta)), keep);
}

static ptrdiff_t fo_adadelta_f32(float *p, const float *g, float *sq, float *acc, ptrdiff_t n,
                                 float lr, float rho, float c, float eps) {
    const __m256 vlr = _mm256_set1_ps(lr), vrho = _mm256_set1_ps(rho), vc = _mm256_set1_ps(c),
                 veps = _mm256_set1_ps(eps);
    ptrdiff_t i = 0;
    if (!fo_round_to_nearest())
        return 0;
    for (; i + 24 <= n; i += 24) {      /* two roots in six */
        fo_adadelta8(p, g, sq, acc, i, FO_ALL, vlr, vrho, vc, veps, 1);
        fo_adadelta8(p, g, sq, acc, i + 8, FO_ALL, vlr, vrho, vc, veps, 2);
        fo_adadelta8(p, g, sq, acc, i + 16, FO_ALL, vlr, vrho, vc, veps, 0);
    }
    for (; i + 8 <= n; i += 8)
        fo_adadelta8(p, g, sq, acc, i, FO_ALL, vlr, vrho, vc, veps, 0);
    if (i < n)
        fo_adadelta8(p, g, sq, acc, i, (__mmask8)((1u << (n - i)) - 1), vlr, vrho, vc, veps, 0);
    return n;
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
