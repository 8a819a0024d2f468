/* Batch norm's element-wise loops over two rows at a time (features as columns, rows a stride
 * C apart); included by layers.pyx. In C, in native vectors (below: left to GCC, these loops
 * were scalar without `restrict`, 4x slower, and with it loaded what they need twice). Each
 * per-feature float64 value is loaded once for two elements: loading
 * three per element bounded the one-row loop (L2 traffic of 24 bytes per element). Two rows,
 * not four: where the rows' stride is a multiple of 4 KB (C a power of two) and the arrays lie
 * at about the same offset within a page (equal-sized arrays allocated one after another lie
 * 16 bytes apart), each array's rows fall into one L1 set, and four rows of x, dy and dx are 12
 * lines competing for its 8 ways. One Zen 2 core, C harness, (256, 4096) float32: dx 1241-1308
 * us with four rows there, 584-620 with two (500-520 either way elsewhere, and at C = 4000);
 * the normalization 372-387 against 339-343 (321-334 either way elsewhere). The backward in
 * process, two threads, dy, x and dx at 0-32 bytes of each other: 699-935 -> 509-568 us
 * (475-530 either way 2 KB apart); the normalization with y 16-32 bytes above x 201-225 ->
 * 192-197, 2 KB apart 184-187 -> 190-194. The formulas are those of apply_row and dx_row in
 * layers.pyx, element by element: the same bits. */
#ifndef FO_BN_H
#define FO_BN_H
#include <string.h>

/* Sums over four rows a `stride` apart at once (batch norm's statistics with features as
 * rows), each row summed as layers.pyx's row_sum sums one: eight interleaved partial sums in
 * float64 (lane j takes the terms i with i % 8 == j, in order), then the fixed pairwise
 * combine. Same bits. Each partial sum is a chain of dependent additions, which a loop over
 * one row waits on; four rows run four times the chains side by side. The backward's gradient
 * sums too (on a Zen 2 VM they had gained nothing; on an Intel Xeon, AVX-512, float32, the
 * backward in-process, alternated, one thread: (1024, 4096) 5278-5384 -> 2796-3032 us, (4096,
 * 256) 839-873 -> 760-765; two threads 1379-1525 -> 1351-1385 and 424-484 -> 388-441). The
 * eight lanes are held in native vectors (FO_BN_W doubles each, 8 / FO_BN_W of them a row): a
 * wider vector type is split by GCC into spills and scalar moves through the stack, which made
 * the AVX2 build's forward with features as rows 2.2x slower than Numba's ((4096, 256)
 * float32, one thread, Zen 2: 1813 against 831 us). */
#if defined(__AVX512F__)
#define FO_BN_W 8
#elif defined(__AVX__)
#define FO_BN_W 4
#else
#define FO_BN_W 2
#endif
typedef double fo_wd __attribute__((vector_size(8 * FO_BN_W)));
/* the float64 values of p[0..FO_BN_W - 1] (floats widened by one vcvtps2pd from memory:
   __builtin_convertvector of a 4-float vector took two halves and a trip through the stack) */
#define FO_WIDEN(T, p) FO_WIDEN_##T(p)
#define FO_WIDEN_double(p) ({ fo_wd v_; memcpy(&v_, (p), sizeof v_); v_; })
#if defined(__AVX512F__)
#include <immintrin.h>
#define FO_WIDEN_float(p) ((fo_wd)_mm512_cvtps_pd(_mm256_loadu_ps(p)))
#elif defined(__AVX__)
#include <immintrin.h>
#define FO_WIDEN_float(p) ((fo_wd)_mm256_cvtps_pd(_mm_loadu_ps(p)))
#else
#include <emmintrin.h>
#define FO_WIDEN_float(p)                                                              \
    ((fo_wd)_mm_cvtps_pd(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i*)(p)))))
#endif

/* p[0..2 FO_BN_W - 1] = lo and hi (FO_BN_W float64 each) rounded to T, in one store: floats
   narrowed by one vcvtpd2ps each, their halves joined into one vector (FO_PACK2F); _NT: with
   non-temporal stores (p: a 64-byte line) */
#if defined(__AVX512F__)
#define FO_PACK2F(lo, hi)                                                              \
    _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(                      \
        _mm256_castps_pd(_mm512_cvtpd_ps((__m512d)(lo)))),                          \
        _mm256_castps_pd(_mm512_cvtpd_ps((__m512d)(hi))), 1))
#define FO_STOREU_PS _mm512_storeu_ps
#define FO_STREAM_PS _mm512_stream_ps
#define FO_STREAM_PD(p, v) _mm512_stream_pd((p), (__m512d)(v))
#elif defined(__AVX__)
#define FO_PACK2F(lo, hi)                                                              \
    _mm256_set_m128(_mm256_cvtpd_ps((__m256d)(hi)), _mm256_cvtpd_ps((__m256d)(lo)))
#define FO_STOREU_PS _mm256_storeu_ps
#define FO_STREAM_PS _mm256_stream_ps
#define FO_STREAM_PD(p, v) _mm256_stream_pd((p), (__m256d)(v))
#else
#define FO_PACK2F(lo, hi) _mm_movelh_ps(_mm_cvtpd_ps((__m128d)(lo)), _mm_cvtpd_ps((__m128d)(hi)))
#define FO_STOREU_PS _mm_storeu_ps
#define FO_STREAM_PS _mm_stream_ps
#define FO_STREAM_PD(p, v) _mm_stream_pd((p), (__m128d)(v))
#endif
#define FO_NARROW2(T, p, lo, hi) FO_NARROW2_##T(p, lo, hi)
#define FO_NARROW2_float(p, lo, hi) FO_STOREU_PS((p), FO_PACK2F(lo, hi))
#define FO_NARROW2_double(p, lo, hi)                                                   \
    do { fo_wd l_ = (lo), h_ = (hi); memcpy((p), &l_, sizeof l_);                    \
         memcpy((p) + FO_BN_W, &h_, sizeof h_); } while (0)
#define FO_NARROW2_NT(T, p, lo, hi) FO_NARROW2_NT_##T(p, lo, hi)
#define FO_NARROW2_NT_float(p, lo, hi) FO_STREAM_PS((p), FO_PACK2F(lo, hi))
#define FO_NARROW2_NT_double(p, lo, hi)                                                \
    do { FO_STREAM_PD((p), lo); FO_STREAM_PD((p) + FO_BN_W, hi); } while (0)

/* orders a thread's non-temporal stores before what it does next (a pool chunk's end) */
static inline void fo_bn_store_fence(void) { _mm_sfence(); }

/* y[c] = (x[c] - mean[c]) * scale[c] + beta[c], in float64 rounded once, for the row at x
   and the row C on (y likewise), two native vectors of float64 at a time: each per-feature
   vector loaded once for both rows, each vector of x widened by one conversion from memory,
   each row's results narrowed and stored as one vector. GCC's own vectorization loaded the
   per-feature values again for the second row and widened a vector of x in two halves. C
   harness, one Zen 2 core, float32: (256, 4096) in L3 350-353 -> 291-294 us (dx 540-542 ->
   471-477), (4096, 1024) from memory 2077-2116 -> 2026-2064 (stored by halves, 2086-2139);
   in process, one thread, (256, 4096): forward 645-659 -> 591-598 us, backward 1030-1041 ->
   863-916, inference 392-413 -> 334-343 (float64: level). ``stream``: the vectors are stored
   with non-temporal stores (y + C * r + c0 starts a line; the loop is unswitched on it). */
#define FO_STORE2(stream, T, p, lo, hi)                                                \
    do { if (stream) FO_NARROW2_NT(T, p, lo, hi); else FO_NARROW2(T, p, lo, hi); } while (0)
#define FO_APPLY_2ROWS(NAME, T)                                                        \
static void NAME(const T* restrict x, T* restrict y, Py_ssize_t C,                  \
                 const double* restrict mean, const double* restrict scale,          \
                 const double* restrict beta, Py_ssize_t n, int stream) {            \
    enum { W = FO_BN_W };                                                            \
    Py_ssize_t c = 0;                                                                \
    for (; c + 2 * W <= n; c += 2 * W) {                                             \
        fo_wd m0 = FO_WIDEN(double, mean + c), m1 = FO_WIDEN(double, mean + c + W);  \
        fo_wd s0 = FO_WIDEN(double, scale + c), s1 = FO_WIDEN(double, scale + c + W);\
        fo_wd b0 = FO_WIDEN(double, beta + c), b1 = FO_WIDEN(double, beta + c + W);  \
        for (int r = 0; r < 2; r++) {                                                \
            const T* xr = x + r * C + c;                                             \
            FO_STORE2(stream, T, y + r * C + c, (FO_WIDEN(T, xr) - m0) * s0 + b0,    \
                      (FO_WIDEN(T, xr + W) - m1) * s1 + b1);                         \
        }                                                                            \
    }                                                                                \
    for (; c < n; c++) {                                                             \
        double m = mean[c], s = scale[c], b = beta[c];                               \
        y[c] = (T)(((double)x[c] - m) * s + b);                                      \
        y[C + c] = (T)(((double)x[C + c] - m) * s + b);                              \
    }                                                                                \
}
FO_APPLY_2ROWS(fo_apply_2rows_f, float)
FO_APPLY_2ROWS(fo_apply_2rows_d, double)

/* dx = k_dy * dy - k_x * (x - mean) - k_0, likewise */
#define FO_DX_2ROWS(NAME, T)                                                           \
static void NAME(const T* restrict dy, const T* restrict x, T* restrict dx,          \
                 Py_ssize_t C, const double* restrict mean,                          \
                 const double* restrict k_dy, const double* restrict k_x,            \
                 const double* restrict k_0, Py_ssize_t n, int stream) {             \
    enum { W = FO_BN_W };                                                            \
    Py_ssize_t c = 0;                                                                \
    for (; c + 2 * W <= n; c += 2 * W) {                                             \
        fo_wd m0 = FO_WIDEN(double, mean + c), m1 = FO_WIDEN(double, mean + c + W);  \
        fo_wd a0 = FO_WIDEN(double, k_dy + c), a1 = FO_WIDEN(double, k_dy + c + W);  \
        fo_wd b0 = FO_WIDEN(double, k_x + c), b1 = FO_WIDEN(double, k_x + c + W);    \
        fo_wd d0 = FO_WIDEN(double, k_0 + c), d1 = FO_WIDEN(double, k_0 + c + W);    \
        for (int r = 0; r < 2; r++) {                                                \
            const T* dyr = dy + r * C + c;                                           \
            const T* xr = x + r * C + c;                                             \
            FO_STORE2(stream, T, dx + r * C + c,                                     \
                      a0 * FO_WIDEN(T, dyr) - b0 * (FO_WIDEN(T, xr) - m0) - d0,      \
                      a1 * FO_WIDEN(T, dyr + W) - b1 * (FO_WIDEN(T, xr + W) - m1) - d1); \
        }                                                                            \
    }                                                                                \
    for (; c < n; c++) {                                                             \
        double m = mean[c], a = k_dy[c], b = k_x[c], d = k_0[c];                     \
        for (int r = 0; r < 2; r++)                                                  \
            dx[r * C + c] = (T)(a * (double)dy[r * C + c]                            \
                                - b * ((double)x[r * C + c] - m) - d);               \
    }                                                                                \
}
FO_DX_2ROWS(fo_dx_2rows_f, float)
FO_DX_2ROWS(fo_dx_2rows_d, double)

/* out[r] = the sum over i < n of TERM1 (row r, element i) for rows r < 4 (TERMW: the terms of
   elements i..i+FO_BN_W-1, lanes i % 8 .. of the eight); y: a second array like x, or NULL */
#define FO_ROWS4(NAME, T, TERMW, TERM1)                                                \
static void NAME(const T* x, const T* y, const double* mean, Py_ssize_t stride,      \
                 Py_ssize_t n, double* out) {                                        \
    fo_wd acc[4][8 / FO_BN_W] = {{{0}}}, d;                                          \
    double lane[8];                                                                  \
    Py_ssize_t i, k, n8 = n - n % 8;                                                 \
    int r, h;                                                                        \
    (void)y, (void)mean, (void)d;                                                    \
    for (k = 0; k < n8; k += 8)                                                      \
        for (r = 0; r < 4; r++)                                                      \
            for (h = 0, i = k; h < 8 / FO_BN_W; h++, i += FO_BN_W)                   \
                acc[r][h] += TERMW;                                                  \
    for (r = 0; r < 4; r++) {                                                        \
        memcpy(lane, acc[r], sizeof lane);                                           \
        for (i = n8; i < n; i++)                                                     \
            lane[i - n8] += TERM1;                                                   \
        out[r] = ((lane[0] + lane[1]) + (lane[2] + lane[3]))                         \
                 + ((lane[4] + lane[5]) + (lane[6] + lane[7]));                      \
    }                                                                                \
}
#define FO_AT (x + r * stride + i)
#define FO_AT_Y (y + r * stride + i)
/* sum(x) */
FO_ROWS4(fo_rows4_sum_f, float, FO_WIDEN(float, FO_AT), (double)*FO_AT)
FO_ROWS4(fo_rows4_sum_d, double, FO_WIDEN(double, FO_AT), *FO_AT)
/* sum(x - mean[r]): a feature's sum about its first value (mean = that value) */
FO_ROWS4(fo_rows4_centred_f, float, FO_WIDEN(float, FO_AT) - mean[r], (double)*FO_AT - mean[r])
FO_ROWS4(fo_rows4_centred_d, double, FO_WIDEN(double, FO_AT) - mean[r], *FO_AT - mean[r])
/* sum((x - mean[r])^2) */
FO_ROWS4(fo_rows4_centred_sq_f, float, (d = FO_WIDEN(float, FO_AT) - mean[r], d * d),
         ((double)*FO_AT - mean[r]) * ((double)*FO_AT - mean[r]))
FO_ROWS4(fo_rows4_centred_sq_d, double, (d = FO_WIDEN(double, FO_AT) - mean[r], d * d),
         (*FO_AT - mean[r]) * (*FO_AT - mean[r]))
/* sum(y * (x - mean[r])): the gradient sum of dy = y */
FO_ROWS4(fo_rows4_products_f, float, FO_WIDEN(float, FO_AT_Y) * (FO_WIDEN(float, FO_AT) - mean[r]),
         (double)*FO_AT_Y * ((double)*FO_AT - mean[r]))
FO_ROWS4(fo_rows4_products_d, double,
         FO_WIDEN(double, FO_AT_Y) * (FO_WIDEN(double, FO_AT) - mean[r]),
         *FO_AT_Y * (*FO_AT - mean[r]))
#undef FO_AT
#undef FO_AT_Y

#endif /* FO_BN_H */
