/* The max of a row with NaN propagation on whole vectors; included by layers.pyx. */
#ifndef FO_ROW_MAX_H
#define FO_ROW_MAX_H
#include "fo_vexp.h"

/* max of a row with NaN propagation, written with GCC vector extensions: plain compares
   and bitwise selects on whole vectors (GCC does not vectorize a NaN-aware max loop by
   itself). Max is exact, so the lane order does not change the result. */
#define FO_ROW_MAX(NAME, T, IT)                                                      \
static T NAME(const T* z, Py_ssize_t k) {                                           \
    enum { LANES = FO_VBYTES / sizeof(T), ACC = 4 };  /* 4 chains hide the latency */ \
    typedef T vt __attribute__((vector_size(FO_VBYTES)));                            \
    typedef IT vi __attribute__((vector_size(FO_VBYTES)));                           \
    vt acc[ACC], v; vi nan = {0}, m;                                                 \
    T best = z[0]; int any_nan = z[0] != z[0];                                       \
    Py_ssize_t i = 0, j, a;                                                          \
    /* rows shorter than a vector take the scalar loop alone: setting up and reducing \
       the accumulators' lanes cost (10,) float32 rows 3x the scalar loop on AVX-512 */ \
    if (k >= LANES) {                                                                \
        for (a = 0; a < ACC; a++)                                                    \
            for (j = 0; j < LANES; j++) acc[a][j] = z[0];                            \
        for (; i + ACC * LANES <= k; i += ACC * LANES) {                             \
            for (a = 0; a < ACC; a++) {                                              \
                memcpy(&v, z + i + a * LANES, sizeof v);                             \
                m = v > acc[a];                                                      \
                acc[a] = (vt)(((vi)v & m) | ((vi)acc[a] & ~m));                      \
                nan |= v != v;                                                       \
            }                                                                        \
        }                                                                            \
        for (; i + LANES <= k; i += LANES) {  /* then whole vectors into the first */ \
            memcpy(&v, z + i, sizeof v);                                             \
            m = v > acc[0];                                                          \
            acc[0] = (vt)(((vi)v & m) | ((vi)acc[0] & ~m));                          \
            nan |= v != v;                                                           \
        }                                                                            \
        for (a = 1; a < ACC; a++) {           /* the chains merged lane by lane */    \
            m = acc[a] > acc[0];                                                     \
            acc[0] = (vt)(((vi)acc[a] & m) | ((vi)acc[0] & ~m));                     \
        }                                                                            \
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
FO_ROW_MAX(fo_row_max_f, float, int)
FO_ROW_MAX(fo_row_max_d, double, long long)

#endif /* FO_ROW_MAX_H */
