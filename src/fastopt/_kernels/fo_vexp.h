/* Native-width GCC vector types and the branch-free vector exp of the softmax family (< 1 ulp),
 * with exp(z - m) over a row; included by layers.pyx. */
#ifndef FO_VEXP_H
#define FO_VEXP_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "fo_prefetch.h"
/* one native vector: a wider one is split by GCC into scalar code with spills */
#if defined(__AVX512F__)
#define FO_VBYTES 64
#elif defined(__AVX__)
#define FO_VBYTES 32
#else
#define FO_VBYTES 16
#endif
typedef float fo_vf __attribute__((vector_size(FO_VBYTES)));
typedef int fo_vfi __attribute__((vector_size(FO_VBYTES)));
typedef double fo_vd __attribute__((vector_size(FO_VBYTES)));
typedef long long fo_vdi __attribute__((vector_size(FO_VBYTES)));
typedef unsigned fo_vfu __attribute__((vector_size(FO_VBYTES)));
typedef unsigned long long fo_vdu __attribute__((vector_size(FO_VBYTES)));
/* explicit fused multiply-adds inside exp's own polynomial (the kernels' formulas are
   built with -ffp-contract=off; this is a function of its own, not a formula) */
#if defined(__AVX512F__)
#include <immintrin.h>
#define FO_HAS_FMA 1
#define FO_FMAF(a, b, c) ((fo_vf)_mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(c)))
#define FO_FMAD(a, b, c) ((fo_vd)_mm512_fmadd_pd((__m512d)(a), (__m512d)(b), (__m512d)(c)))
#elif defined(__FMA__)
#include <immintrin.h>
#define FO_HAS_FMA 1
#define FO_FMAF(a, b, c) ((fo_vf)_mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c)))
#define FO_FMAD(a, b, c) ((fo_vd)_mm256_fmadd_pd((__m256d)(a), (__m256d)(b), (__m256d)(c)))
#else
#define FO_FMAF(a, b, c) ((a) * (b) + (c))
#define FO_FMAD(a, b, c) ((a) * (b) + (c))
#endif
/* FO_MAX*(a, b) = a > b ? a : b and FO_MIN*(a, b) = a < b ? a : b, so a NaN in b comes
   through (what x86's max/min instructions do with their second operand) */
#if defined(__AVX512F__)
#define FO_MAXF(a, b) ((fo_vf)_mm512_max_ps((__m512)(a), (__m512)(b)))
#define FO_MINF(a, b) ((fo_vf)_mm512_min_ps((__m512)(a), (__m512)(b)))
#define FO_MAXD(a, b) ((fo_vd)_mm512_max_pd((__m512d)(a), (__m512d)(b)))
#define FO_MIND(a, b) ((fo_vd)_mm512_min_pd((__m512d)(a), (__m512d)(b)))
#elif defined(__AVX__)
#include <immintrin.h>
#define FO_MAXF(a, b) ((fo_vf)_mm256_max_ps((__m256)(a), (__m256)(b)))
#define FO_MINF(a, b) ((fo_vf)_mm256_min_ps((__m256)(a), (__m256)(b)))
#define FO_MAXD(a, b) ((fo_vd)_mm256_max_pd((__m256d)(a), (__m256d)(b)))
#define FO_MIND(a, b) ((fo_vd)_mm256_min_pd((__m256d)(a), (__m256d)(b)))
#elif defined(__SSE2__)
#include <emmintrin.h>
#define FO_MAXF(a, b) ((fo_vf)_mm_max_ps((__m128)(a), (__m128)(b)))
#define FO_MINF(a, b) ((fo_vf)_mm_min_ps((__m128)(a), (__m128)(b)))
#define FO_MAXD(a, b) ((fo_vd)_mm_max_pd((__m128d)(a), (__m128d)(b)))
#define FO_MIND(a, b) ((fo_vd)_mm_min_pd((__m128d)(a), (__m128d)(b)))
#else
#define FO_SELECT(T, IT, m, a, b) ((T)(((IT)(a) & (m)) | ((IT)(b) & ~(m))))
#define FO_MAXF(a, b) FO_SELECT(fo_vf, fo_vfi, (a) > (b), a, b)
#define FO_MINF(a, b) FO_SELECT(fo_vf, fo_vfi, (a) < (b), a, b)
#define FO_MAXD(a, b) FO_SELECT(fo_vd, fo_vdi, (a) > (b), a, b)
#define FO_MIND(a, b) FO_SELECT(fo_vd, fo_vdi, (a) < (b), a, b)
#endif

/* float -> int32 rounded to nearest even (the default rounding mode), and whether any lane
   of an integer mask is set */
#if defined(__AVX512F__)
#define FO_CVTF_RNE(v) ((fo_vfi)_mm512_cvtps_epi32((__m512)(v)))
#define FO_ANYI(m) (_mm512_test_epi64_mask((__m512i)(m), (__m512i)(m)) != 0)
#elif defined(__AVX__)
#define FO_CVTF_RNE(v) ((fo_vfi)_mm256_cvtps_epi32((__m256)(v)))
#define FO_ANYI(m) (!_mm256_testz_si256((__m256i)(m), (__m256i)(m)))
#elif defined(__SSE2__)
#define FO_CVTF_RNE(v) ((fo_vfi)_mm_cvtps_epi32((__m128)(v)))
#define FO_ANYI(m) (_mm_movemask_epi8((__m128i)(m)) != 0)
#endif

/* exp on whole vectors, branch-free but for rare vectors (below): n = round(x/ln2) (one
   rounding: an FMA into 1.5 * 2^23 or 2^52, whose low bits are then n), x = n*ln2 + r by
   Cody-Waite, exp(r) by a polynomial on |r| <= ln2/2 (Sleef's coefficients), then 2^n: one
   multiply when every lane's result is a normal number, else (the edge functions) a clamp
   (NaN passes) and two exact halves so that subnormal results round once. A row's loop is
   bound by the exp's chain of dependent operations, not by its arithmetic, so the
   polynomial's terms above r^2 are summed in Estrin's form (pairs, then powers of r^2: fewer
   dependent steps) and its last two steps in Horner's (all in Estrin's form cost up to 0.03
   ulp more: max errors of 1.003 and 1.02 ulp). Max error < 1 ulp against long double expl
   (bench/exp_accuracy.c: 0.988 ulp over every float32 input, 0.981 over 10^8 float64 ones).
   glibc's vector exp falls back to a scalar call per lane when any lane underflows: softmax
   of confident logits (spread beyond 88) ran 10x slower. */
/* exp(r) - 1, r = x - n ln2 (Cody-Waite), n = t - 1.5 * 2^23 = round(x/ln2) */
static inline fo_vf fo_vexpf_less1(fo_vf x, fo_vf t) {
    const fo_vf o = {0};
    fo_vf n = t - 0x1.8p23f;
    fo_vf r = FO_FMAF(n, o - 0.693145751953125f, x);
    r = FO_FMAF(n, o - 1.428606765330187045e-06f, r);
    fo_vf r2 = r * r;
    fo_vf u = FO_FMAF(FO_FMAF(o + 0.000198527617612853646278381f, r,
                              o + 0.00139304355252534151077271f), r2,
                      FO_FMAF(o + 0.00833336077630519866943359f, r,
                              o + 0.0416664853692054748535156f));
    u = FO_FMAF(FO_FMAF(u, r, o + 0.166666671633720397949219f), r, o + 0.5f);
    return FO_FMAF(r2, u, r);
}
/* u = exp(r) */
static inline fo_vf fo_vexpf_reduced(fo_vf x, fo_vf t) {
    return 1.0f + fo_vexpf_less1(x, t);
}
/* t = x/ln2 rounded into 1.5 * 2^23, whose low bits are then n = round(x/ln2) */
static inline fo_vf fo_vexpf_shifted(fo_vf x) {
    const fo_vf o = {0};
    return FO_FMAF(x, o + 1.44269504088896341f, o + 0x1.8p23f);
}
/* exp of the vectors with a lane out of fo_vexpf's fast range: clamped (beyond: inf and 0;
   NaN kept), results of 2^-125 and less made as described below */
static inline fo_vf fo_vexpf_edge(fo_vf x) {
    const fo_vf o = {0};
    x = FO_MINF(o + 89.0f, FO_MAXF(o - 104.0f, x));
    fo_vf t = fo_vexpf_shifted(x), u = fo_vexpf_reduced(x, t);
    fo_vfi ni = (fo_vfi)t - (fo_vfi)(o + 0x1.8p23f);
#ifdef FO_CVTF_RNE
    fo_vfi tiny = t - 0x1.8p23f < -125.0f;     /* n < -125 (false for NaN: the multiply) */
    if (FO_ANYI(tiny)) {
        /* results below 2^-125 (subnormal, or 0): a multiply that underflows takes a slow
           path in the CPU (a vector with such a lane ran 2.3x slower here), so these lanes
           are made from bits instead. round(u * 2^(n + 149)) (< 2^24) read as a float's
           bits is u * 2^n rounded to the subnormal grid, as the multiply rounds it; the
           other lanes take the multiply with n >= -125. */
        fo_vfi nt = (ni & tiny) | (-126 & ~tiny), nn = (ni & ~tiny) | (-125 & tiny);
        fo_vfi k = FO_CVTF_RNE(u * (fo_vf)((nt + 149 + 127) << 23));
        fo_vfi h = nn >> 1;
        fo_vf big = (u * (fo_vf)((h + 127) << 23)) * (fo_vf)((nn - h + 127) << 23);
        return (fo_vf)((k & tiny) | ((fo_vfi)big & ~tiny));
    }
#endif
    fo_vfi h = ni >> 1;
    fo_vf s1 = (fo_vf)((h + 127) << 23), s2 = (fo_vf)((ni - h + 127) << 23);
    return (u * s1) * s2;
}
/* The fast path: every lane's n in [-125, 127], so that 2^n is a normal float and one
   multiply scales. x is then within [-87, 88.4], where the edge's clamp changes nothing, so
   both paths give the same bits (checked over every float32 input and 2e8 float64 ones). The
   test reads n off t's bits (NaN, infinities and |x| >= 2^21 fall outside) beside the chain
   of dependent operations, which the clamp lengthened. Softmax of (512, 1000) float32
   logits (spread 3, one thread, in-process against the previous build) took 11-13% less
   time, its cross-entropy 15-20%; logits spread 30 (most exps underflow) as before. The edge
   is inlined: called, it cost those rows 24%. */
#if defined(__AVX512F__)
/* AVX-512: vscalefps multiplies by 2^n with one rounding, to inf above and to the subnormal
   grid (or 0) below, so after the edge's clamp every vector takes one branch-free path: the
   same bits as the two paths below (every float32 input; 2e8 float64 ones) in a quarter less
   time (C loop, one Zen 4 core: 0.29 -> 0.21 ns/element, float64 0.84 -> 0.68) */
static inline fo_vf fo_vexpf_within(fo_vf x) {     /* x in [-104, 89], or NaN */
    fo_vf t = fo_vexpf_shifted(x);
    return (fo_vf)_mm512_scalef_ps((__m512)fo_vexpf_reduced(x, t), (__m512)(t - 0x1.8p23f));
}
static inline fo_vf fo_vexpf(fo_vf x) {
    const fo_vf o = {0};
    return fo_vexpf_within(FO_MINF(o + 89.0f, FO_MAXF(o - 104.0f, x)));
}
#else
/* n = round(x/ln2) from t's low bits, and the lanes outside the fast path's n in [-125, 127] */
static inline fo_vfi fo_vexpf_n(fo_vf t) {
    const fo_vf o = {0};
    return (fo_vfi)t - (fo_vfi)(o + 0x1.8p23f);
}
static inline fo_vfi fo_vexpf_far(fo_vfi ni) {
    return (fo_vfu)ni + 125u > 252u;
}
/* the fast path, every lane's n in [-125, 127]: exp(x) = (1 + q) 2^n */
static inline fo_vf fo_vexpf_near(fo_vf x, fo_vf t, fo_vfi ni) {
    fo_vf s = (fo_vf)((ni + 127) << 23);
#ifdef FO_HAS_FMA
    /* (1 + q) 2^n as one FMA, q 2^n + 2^n, rounded once: the result is normal here, where a
       product by a power of two rounds as its other factor, so these are the bits of the
       multiply below (every float32 input; 2e8 float64 ones), one operation less in the chain
       of dependent ones that bounds the loop (C loop, one Zen 2 core, exp alone: 0.53 -> 0.47
       ns/element; softmax (4096, 1000) float32 in-process, one thread, alternated: 3.59-3.66
       -> 3.52-3.55 ms, log-softmax 3.80-3.82 -> 3.58-3.66). Without a fused multiply-add
       q 2^n could round (subnormal) before the sum. */
    return FO_FMAF(fo_vexpf_less1(x, t), s, s);
#else
    return fo_vexpf_reduced(x, t) * s;
#endif
}
#endif

/* the same for float64: n in [-1021, 1023] on the fast path */
static inline fo_vd fo_vexp_less1(fo_vd x, fo_vd t) {
    const fo_vd o = {0};
    fo_vd n = t - 0x1.8p52;
    fo_vd r = FO_FMAD(n, o - .69314718055966295651160180568695068359375, x);
    r = FO_FMAD(n, o - .28235290563031577122588448175013436025525412068e-12, r);
    fo_vd r2 = r * r, r4 = r2 * r2;
    fo_vd a0 = FO_FMAD(o + 0.00833333333331652721664984, r, o + 0.0416666666666665047591422);
    fo_vd a1 = FO_FMAD(o + 0.000198412698960509205564975, r, o + 0.00138888888889774492207962);
    fo_vd a2 = FO_FMAD(o + 2.75572362911928827629423e-06, r, o + 2.4801587159235472998791e-05);
    fo_vd a3 = FO_FMAD(o + 2.51112930892876518610661e-08, r, o + 2.75573911234900471893338e-07);
    fo_vd u = FO_FMAD(o + 2.08860621107283687536341e-09, r4 * r4,
                      FO_FMAD(FO_FMAD(a3, r2, a2), r4, FO_FMAD(a1, r2, a0)));
    u = FO_FMAD(FO_FMAD(u, r, o + 0.166666666666666851703837), r, o + 0.5);
    return FO_FMAD(r2, u, r);
}
static inline fo_vd fo_vexp_reduced(fo_vd x, fo_vd t) {
    return 1.0 + fo_vexp_less1(x, t);
}
static inline fo_vd fo_vexp_shifted(fo_vd x) {
    const fo_vd o = {0};
    return FO_FMAD(x, o + 1.442695040888963407359924681001892137, o + 0x1.8p52);
}
static inline fo_vd fo_vexp_edge(fo_vd x) {
    const fo_vd o = {0};
    x = FO_MIND(o + 710.0, FO_MAXD(o - 746.0, x));
    fo_vd t = fo_vexp_shifted(x), u = fo_vexp_reduced(x, t);
    /* n as an integer: t's low bits (AVX2 has no vector float64 -> int64 conversion) */
    fo_vdi ni = (fo_vdi)t - (fo_vdi)(o + 0x1.8p52);
#ifdef FO_ANYI
    fo_vdi maybe = t - 0x1.8p52 < -1021.0;       /* n < -1021 (false for NaN) */
    if (FO_ANYI(maybe)) {
        /* as fo_vexpf: results below 2^-1022 (subnormal, or 0) from bits. With n <= -1022,
           v = u * 2^(n + 1074) < 1.5 * 2^52 is exact; below 2^52 the result is subnormal and
           its bits are v rounded to an integer (by adding 2^52); the other lanes multiply,
           n >= -1022 (u * 2^-1022 >= 2^-1022 there) */
        fo_vdi nt = (ni & maybe) | (-1022 & ~maybe);
        fo_vd v = u * (fo_vd)((nt + 1074 + 1023) << 52);
        fo_vdi tiny = maybe & (v < 0x1p52);
        fo_vdi k = (fo_vdi)(v + 0x1p52) - (fo_vdi)(o + 0x1p52);
        fo_vdi nn = (ni & ~tiny) | (-1021 & tiny), h = nn >> 1;
        fo_vd big = (u * (fo_vd)((h + 1023) << 52)) * (fo_vd)((nn - h + 1023) << 52);
        return (fo_vd)((k & tiny) | ((fo_vdi)big & ~tiny));
    }
#endif
    fo_vdi h = ni >> 1;
    fo_vd s1 = (fo_vd)((h + 1023) << 52), s2 = (fo_vd)((ni - h + 1023) << 52);
    return (u * s1) * s2;
}
#if defined(__AVX512F__)
static inline fo_vd fo_vexp_within(fo_vd x) {      /* x in [-746, 710], or NaN */
    fo_vd t = fo_vexp_shifted(x);
    return (fo_vd)_mm512_scalef_pd((__m512d)fo_vexp_reduced(x, t), (__m512d)(t - 0x1.8p52));
}
static inline fo_vd fo_vexp(fo_vd x) {
    const fo_vd o = {0};
    return fo_vexp_within(FO_MIND(o + 710.0, FO_MAXD(o - 746.0, x)));
}
#else
/* as fo_vexpf's, n in [-1021, 1023] on the fast path */
static inline fo_vdi fo_vexp_n(fo_vd t) {
    const fo_vd o = {0};
    return (fo_vdi)t - (fo_vdi)(o + 0x1.8p52);
}
static inline fo_vdi fo_vexp_far(fo_vdi ni) {
    return (fo_vdu)ni + 1021u > 2044u;
}
static inline fo_vd fo_vexp_near(fo_vd x, fo_vd t, fo_vdi ni) {
    fo_vd s = (fo_vd)((ni + 1023) << 52);
#ifdef FO_HAS_FMA
    return FO_FMAD(fo_vexp_less1(x, t), s, s);
#else
    return fo_vexp_reduced(x, t) * s;
#endif
}
#endif

/* P (fo_vexpf or fo_vexp) from its parts: the fast path where every lane's n allows it, else
   the edge; and P##2, P of two vectors *a and *b in place with one range test for both. The
   loop is bound by the chain of dependent operations and how many of them the CPU can hold in
   flight, and the test's four operations per vector were a fifth of them. The same bits: each
   vector's exp is P's (fo_exp_sum_f and _d, old loop against new: every float32 input, 2e8
   float64 ones). A Zen 2 VM: bench/exp_floor.c's fo_exp_sum_f 0.555 -> 0.521 ns/element
   (rows in cache), 0.593 -> 0.578 (streamed); softmax (4096, 1000) float32 in-process,
   alternated, one thread 3.26-3.32 -> 3.02-3.06 ms, two 1.65-1.66 -> 1.54-1.55, log-softmax
   3-4% less, cross-entropy level. AVX-512's P (above) has no test: P##2 is two calls. */
#if !defined(__AVX512F__) && defined(FO_ANYI)
#define FO_VEXP_FROM_PARTS(P, VT, VIT)                                                 \
static inline VT P(VT x) {                                                           \
    VT t = P##_shifted(x);                                                           \
    VIT ni = P##_n(t);                                                               \
    if (!FO_ANYI(P##_far(ni)))                                                       \
        return P##_near(x, t, ni);                                                   \
    return P##_edge(x);                                                              \
}                                                                                    \
static inline void P##2(VT* a, VT* b) {                                              \
    VT ta = P##_shifted(*a), tb = P##_shifted(*b);                                   \
    VIT na = P##_n(ta), nb = P##_n(tb);                                              \
    if (!FO_ANYI(P##_far(na) | P##_far(nb))) {                                       \
        *a = P##_near(*a, ta, na);                                                   \
        *b = P##_near(*b, tb, nb);                                                   \
        return;                                                                      \
    }                                                                                \
    *a = P(*a);                                                                      \
    *b = P(*b);                                                                      \
}
#else
#if defined(__AVX512F__)
#define FO_VEXP_ONE(P, VT)                 /* defined above */
#else
#define FO_VEXP_ONE(P, VT) static inline VT P(VT x) { return P##_edge(x); }
#endif
#define FO_VEXP_FROM_PARTS(P, VT, VIT)                                                 \
FO_VEXP_ONE(P, VT)                                                                   \
static inline void P##2(VT* a, VT* b) {                                              \
    *a = P(*a);                                                                      \
    *b = P(*b);                                                                      \
}
#endif
FO_VEXP_FROM_PARTS(fo_vexpf, fo_vf, fo_vfi)
FO_VEXP_FROM_PARTS(fo_vexp, fo_vd, fo_vdi)

/* exp(x) for x <= 0 or NaN: the softmax family's z - max(z), the only exps the kernels take.
   With AVX-512, fo_vexpf without its upper clamp, which changes nothing there (NaN passes
   either way): the same bits, one instruction less a vector (bench/exp_floor.c, rows of
   1000 float32 in cache, one core of an Intel Xeon: 0.230 -> 0.217 ns/element). */
#if defined(__AVX512F__)
static inline fo_vf fo_vexpf_nonpos(fo_vf x) {
    const fo_vf o = {0};
    return fo_vexpf_within(FO_MAXF(o - 104.0f, x));
}
static inline fo_vd fo_vexp_nonpos(fo_vd x) {
    const fo_vd o = {0};
    return fo_vexp_within(FO_MAXD(o - 746.0, x));
}
FO_VEXP_FROM_PARTS(fo_vexpf_nonpos, fo_vf, fo_vfi)     /* the pairs, fo_vexpf_nonpos2 */
FO_VEXP_FROM_PARTS(fo_vexp_nonpos, fo_vd, fo_vdi)
#else
#define fo_vexpf_nonpos fo_vexpf
#define fo_vexp_nonpos fo_vexp
#define fo_vexpf_nonpos2 fo_vexpf2
#define fo_vexp_nonpos2 fo_vexp2
#endif

/* e[i] = exp(z[i] - m[i * m_step]) for i < n (m_step 0: one shift for all), each z[i] at
   most its m (or NaN) */
#define FO_EXP_SHIFTED(NAME, T, VT, VEXP)                                             \
static void NAME(const T* z, const T* m, int m_step, T* e, Py_ssize_t n) {          \
    enum { LANES = FO_VBYTES / sizeof(T) };                                          \
    VT v, s;                                                                         \
    Py_ssize_t i = 0, j;                                                             \
    for (j = 0; j < LANES; j++) s[j] = m[0];                                         \
    for (; i + LANES <= n; i += LANES) {                                             \
        memcpy(&v, z + i, sizeof v);                                                 \
        if (m_step) memcpy(&s, m + i, sizeof s);                                     \
        v = VEXP(v - s);                                                             \
        memcpy(e + i, &v, sizeof v);                                                 \
    }                                                                                \
    if (i < n) {                                                                     \
        for (j = 0; j < LANES; j++)                                                  \
            v[j] = i + j < n ? z[i + j] - m[(i + j) * m_step] : 0;                   \
        v = VEXP(v);                                                                 \
        for (j = 0; i + j < n; j++) e[i + j] = v[j];                                 \
    }                                                                                \
}
FO_EXP_SHIFTED(fo_exp_shifted_f, float, fo_vf, fo_vexpf_nonpos)
FO_EXP_SHIFTED(fo_exp_shifted_d, double, fo_vd, fo_vexp_nonpos)

#endif /* FO_VEXP_H */
