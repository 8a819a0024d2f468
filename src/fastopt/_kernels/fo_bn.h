/* Batch norm's element-wise loops over four rows at a time (features as columns, rows a stride
 * C apart); included by layers.pyx. In C for `restrict`: without it GCC needs more run-time
 * alias checks between the four output rows and the seven inputs than it will make, and left
 * these loops scalar (4x slower). Each per-feature float64 value is loaded once for four
 * elements: loading three per element bounded the one-row loop (L2 traffic of 24 bytes per
 * element). The formulas are those of apply_row and dx_row in layers.pyx, element by element. */
#ifndef FO_BN_H
#define FO_BN_H

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

#endif /* FO_BN_H */
