/* The max of a row with NaN propagation on whole vectors; included by layers.pyx. */
#ifndef FO_ROW_MAX_H
#define FO_ROW_MAX_H
#include "fo_vexp.h"

/* max of a row with NaN propagation (NANS 1), written with GCC vector extensions: the
   max instruction, whose a > b ? a : b keeps the running max where v is NaN, and a mask of
   the NaN lanes (GCC does not vectorize a NaN-aware max loop by itself). Max is exact, so
   the lane order does not change the result. With NANS 0 the vectors' NaNs are not looked
   for: NaN only if the row has one, else the max of the row's numbers, for a caller whose
   results a NaN in the row makes NaN anyway (the softmax rows' exp sums: tracking the
   NaN lanes took a third of the max pass: a C harness, rows of 1000 float32 in L1, one
   core of an Intel Xeon, 0.063 ns/element with the compares and selects of the first
   version, 0.056 with the max instruction, 0.036 without the NaNs). */
#define FO_ROW_MAX(NAME, T, IT, MAX, NANS)                                           \
static T NAME(const T* z, Py_ssize_t k) {                                           \
    enum { LANES = FO_VBYTES / sizeof(T), ACC = 4 };  /* 4 chains hide the latency */ \
    typedef T vt __attribute__((vector_size(FO_VBYTES)));                            \
    typedef IT vi __attribute__((vector_size(FO_VBYTES)));                           \
    vt acc[ACC], v, first = {0}; vi nan = {0};                                       \
    T best = z[0]; int any_nan = z[0] != z[0];                                       \
    Py_ssize_t i = 0, j, a;                                                          \
    /* rows shorter than a vector take the scalar loop alone: setting up and reducing \
       the accumulators' lanes cost (10,) float32 rows 3x the scalar loop on AVX-512 */ \
    if (k >= LANES) {                                                                \
        for (j = 0; j < LANES; j++) first[j] = z[0];                                 \
        for (a = 0; a < ACC; a++) acc[a] = first;                                    \
        for (; i + ACC * LANES <= k; i += ACC * LANES) {                             \
            for (a = 0; a < ACC; a++) {                                              \
                memcpy(&v, z + i + a * LANES, sizeof v);                             \
                acc[a] = MAX(v, acc[a]);                                             \
                if (NANS) nan |= v != v;                                             \
            }                                                                        \
        }                                                                            \
        for (; i + LANES <= k; i += LANES) {  /* then whole vectors into the first */ \
            memcpy(&v, z + i, sizeof v);                                             \
            acc[0] = MAX(v, acc[0]);                                                 \
            if (NANS) nan |= v != v;                                                 \
        }                                                                            \
        for (a = 1; a < ACC; a++)             /* the chains merged lane by lane */    \
            acc[0] = MAX(acc[a], acc[0]);                                            \
        for (j = 0; j < LANES; j++) {                                                \
            if (acc[0][j] > best) best = acc[0][j];                                  \
            any_nan |= nan[j] != 0;                                                  \
        }                                                                            \
    }                                                                                \
    for (; i < k; i++) {                                                             \
        if (z[i] > best) best = z[i];                                                \
        any_nan |= z[i] != z[i];                                                     \
    }                                                                                \
    return any_nan ? (T)NAN : best;                                                  \
}
FO_ROW_MAX(fo_row_max_f, float, int, FO_MAXF, 1)
FO_ROW_MAX(fo_row_max_d, double, long long, FO_MAXD, 1)
FO_ROW_MAX(fo_row_max_numbers_f, float, int, FO_MAXF, 0)
FO_ROW_MAX(fo_row_max_numbers_d, double, long long, FO_MAXD, 0)

#endif /* FO_ROW_MAX_H */
