/* Batch norm's element-wise loops over four rows at a time (features as columns, rows a stride
 * C apart); included by layers.pyx. In C for `restrict`: without it GCC needs more run-time
 * alias checks between the four output rows and the seven inputs than it will make, and left
 * these loops scalar (4x slower). Each per-feature float64 value is loaded once for four
 * elements: loading three per element bounded the one-row loop (L2 traffic of 24 bytes per
 * element). The formulas are those of apply_row and dx_row in layers.pyx, element by element. */
#ifndef FO_BN_H
#define FO_BN_H
#include <string.h>

#define FO_APPLY_4ROWS(NAME, T)                                                        \
static void NAME(const T* restrict x, T* restrict y, Py_ssize_t C,                  \
                 const double* restrict mean, const double* restrict scale,          \
                 const double* restrict beta, Py_ssize_t n) {                        \
    for (Py_ssize_t c = 0; c < n; c++) {                                             \
        double m = mean[c], s = scale[c], b = beta[c];                               \
        y[c] = (T)(((double)x[c] - m) * s + b);                                      \
        y[C + c] = (T)(((double)x[C + c] - m) * s + b);                              \
        y[2 * C + c] = (T)(((double)x[2 * C + c] - m) * s + b);                      \
        y[3 * C + c] = (T)(((double)x[3 * C + c] - m) * s + b);                      \
    }                                                                                \
}
FO_APPLY_4ROWS(fo_apply_4rows_f, float)
FO_APPLY_4ROWS(fo_apply_4rows_d, double)

/* dx = k_dy * dy - k_x * (x - mean) - k_0 */
#define FO_DX_4ROWS(NAME, T)                                                           \
static void NAME(const T* restrict dy, const T* restrict x, T* restrict dx,          \
                 Py_ssize_t C, const double* restrict mean,                          \
                 const double* restrict k_dy, const double* restrict k_x,            \
                 const double* restrict k_0, Py_ssize_t n) {                         \
    for (Py_ssize_t c = 0; c < n; c++) {                                             \
        double m = mean[c], a = k_dy[c], b = k_x[c], d = k_0[c];                     \
        for (int r = 0; r < 4; r++)                                                  \
            dx[r * C + c] = (T)(a * (double)dy[r * C + c]                            \
                                - b * ((double)x[r * C + c] - m) - d);               \
    }                                                                                \
}
FO_DX_4ROWS(fo_dx_4rows_f, float)
FO_DX_4ROWS(fo_dx_4rows_d, double)

/* Sums over four rows a `stride` apart at once (batch norm's statistics with features as
 * rows), each row summed as layers.pyx's row_sum sums one: eight interleaved partial sums in
 * float64 (lane j takes the terms i with i % 8 == j, in order), then the fixed pairwise
 * combine. Same bits. Each partial sum is a chain of dependent additions, which a loop over
 * one row waits on; four rows run four times the chains side by side. (The gradient sums
 * gained nothing so: their rows come from memory and each term costs more.) */
typedef double fo_w8d __attribute__((vector_size(64)));
typedef float fo_w8f __attribute__((vector_size(32)));
/* the float64 values of p[0..7] (macros: a function returning a 512-bit vector would warn
   about its ABI in the AVX2 build) */
#define FO_WIDEN8(T, p)                                                                \
    ({ T##_w8 v_; memcpy(&v_, (p), sizeof v_); __builtin_convertvector(v_, fo_w8d); })
typedef fo_w8f float_w8;
typedef fo_w8d double_w8;

/* out[r] = the sum over i < n of TERM1 (row r, element i) for rows r < 4 (TERM8: the terms of
   elements i..i+7) */
#define FO_ROWS4(NAME, T, TERM8, TERM1)                                                \
static void NAME(const T* x, const double* mean, Py_ssize_t stride, Py_ssize_t n,   \
                 double* out) {                                                      \
    fo_w8d acc[4] = {{0}}, d;                                                        \
    Py_ssize_t i, n8 = n - n % 8;                                                    \
    int r;                                                                           \
    (void)mean, (void)d;                                                             \
    for (i = 0; i < n8; i += 8)                                                      \
        for (r = 0; r < 4; r++)                                                      \
            acc[r] += TERM8;                                                         \
    for (; i < n; i++)                                                               \
        for (r = 0; r < 4; r++)                                                      \
            acc[r][i - n8] += TERM1;                                                 \
    for (r = 0; r < 4; r++)                                                          \
        out[r] = ((acc[r][0] + acc[r][1]) + (acc[r][2] + acc[r][3]))                 \
                 + ((acc[r][4] + acc[r][5]) + (acc[r][6] + acc[r][7]));              \
}
#define FO_AT (x + r * stride + i)
/* sum(x) */
FO_ROWS4(fo_rows4_sum_f, float, FO_WIDEN8(float, FO_AT), (double)*FO_AT)
FO_ROWS4(fo_rows4_sum_d, double, FO_WIDEN8(double, FO_AT), *FO_AT)
/* sum((x - mean[r])^2) */
FO_ROWS4(fo_rows4_centred_sq_f, float, (d = FO_WIDEN8(float, FO_AT) - mean[r], d * d),
         ((double)*FO_AT - mean[r]) * ((double)*FO_AT - mean[r]))
FO_ROWS4(fo_rows4_centred_sq_d, double, (d = FO_WIDEN8(double, FO_AT) - mean[r], d * d),
         (*FO_AT - mean[r]) * (*FO_AT - mean[r]))
#undef FO_AT

#endif /* FO_BN_H */
