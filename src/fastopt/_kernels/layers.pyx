# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Cython layer kernels: batch normalization and the softmax family. Signatures and formulas:
fastopt/reference/layers.py.

Work runs on fastopt's thread pool (fo_pool.h), split over features, fixed chunks of rows
(batch norm with features as columns) or examples (softmax). Every sum is taken in one fixed
order (eight interleaved float64 partial sums then a fixed pairwise combine along a row;
per-block statistics merged in block order, then in chunk order, across rows), and chunks
depend on the shape alone, so results are bit-identical for any thread count. exp is computed
on whole vectors by fo_vexpf/fo_vexp (fo_vexp.h: < 1 ulp; branch-free with AVX-512, else one
branch per vector).
"""
from libc.math cimport isfinite, log, sqrt
from libc.string cimport memset

import numpy as np

from .. import _cpu

include "_common.pxi"

cdef extern from "fo_vexp.h":
    void fo_exp_shifted_f(const float* z, const float* m, int m_step, float* e,
                          Py_ssize_t n) nogil
    void fo_exp_shifted_d(const double* z, const double* m, int m_step, double* e,
                          Py_ssize_t n) nogil
    void fo_prefetch_at(const void* base, size_t offset) nogil
    void fo_prefetchw_at(const void* base, size_t offset) nogil


cdef inline void exp_shifted(const floating* z, const floating* m, int m_step, floating* e,
                             Py_ssize_t n) noexcept nogil:
    """e[i] = exp(z[i] - m[i * m_step]) for i < n, whole vectors at a time."""
    if floating is float:
        fo_exp_shifted_f(z, m, m_step, e, n)
    else:
        fo_exp_shifted_d(z, m, m_step, e, n)


cdef inline floating logarithm(double x, floating like) noexcept nogil:
    """log(x) taken in float64 and rounded to the type of ``like`` (as the reference)."""
    return <floating>log(x)


cdef inline floating max_nan(floating a, floating b) noexcept nogil:
    return a if (a >= b) | (a != a) else b


cdef inline double sum8(double* acc) noexcept nogil:
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


cdef inline double row_sum(const floating* x, Py_ssize_t n) noexcept nogil:
    """sum(x) in float64, eight interleaved partial sums (vectorizable, fixed order)."""
    return row_centred(x, n, 0.0)     # (x - 0.0 is x, every x: GCC drops the subtraction)


cdef inline double row_centred(const floating* x, Py_ssize_t n, double mean) noexcept nogil:
    """sum(x - mean) in float64, eight interleaved partial sums (vectorizable, fixed order)."""
    cdef double acc[8]
    cdef Py_ssize_t i, j, n8 = n - n % 8
    for j in range(8):
        acc[j] = 0
    for i in range(0, n8, 8):
        for j in range(8):
            acc[j] += x[i + j] - mean
    for i in range(n8, n):
        acc[i - n8] += x[i] - mean
    return sum8(acc)


cdef inline double row_centred_sq(const floating* x, Py_ssize_t n, double mean) noexcept nogil:
    cdef double acc[8]
    cdef double d
    cdef Py_ssize_t i, j, n8 = n - n % 8
    for j in range(8):
        acc[j] = 0
    for i in range(0, n8, 8):
        for j in range(8):
            d = x[i + j] - mean
            acc[j] += d * d
    for i in range(n8, n):
        d = x[i] - mean
        acc[i - n8] += d * d
    return sum8(acc)


# ------------------------------------------------------------------------------ batch norm
# The loops over elements live in small functions over raw pointers (GCC vectorizes those
# reliably; it did not vectorize the same loops written on memoryviews inside parallel loops).
cdef enum:
    # rows per block of the axis-0 statistics: each block's moments are taken in one pass and
    # merged in order; fixed, so that results depend on the shape alone
    ROW_BLOCK = 64
    FINISH_COLUMNS = 1024      # axis 0: columns per chunk of the sums' finish
    # axis 1: features four at a time up to this many values each (four float64 rows: 256 KB)
    FOUR_FEATURES_MAX = 8192


# The axis-0 sums take four rows (a stride C apart) per sweep of the partial sums: a quarter
# of the loads and stores of the accumulators, which bound these loops. Rows are always
# grouped the same way (fours from the start of each fixed block, then single rows).
cdef void add_shifted(const floating* x, const double* k, double* s1, double* s2,
                      Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t c
    cdef double d
    for c in range(n):
        d = x[c] - k[c]
        s1[c] += d
        s2[c] += d * d


cdef inline void shifted4(const floating* x, Py_ssize_t C, double k, double* a,
                          double* q) noexcept nogil:
    """a += sum(x - k), q += sum((x - k)^2) over x[0], x[C], x[2C], x[3C], in pairs."""
    cdef double d0 = x[0] - k, d1 = x[C] - k, d2 = x[2 * C] - k, d3 = x[3 * C] - k
    a[0] = a[0] + ((d0 + d1) + (d2 + d3))
    q[0] = q[0] + ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3))


# The column sums take rows four at a time (shifted4, grads4), and eight where there are: the
# second four added right after the first with the sums kept in registers, the same additions
# in the same order, so that the sums are loaded and stored once per eight rows of x, not per
# four (the (4096,) float64 sums of a (256, 4096) batch do not stay in L1 beside its rows).
# The same bits (both builds, 12 shapes, both axes, 1 and 2 threads). Float32, alternated
# processes, three pairs, us: the (256, 4096) forward on one thread 578-606 -> 545-561, on two
# 302-315 -> 297-307; its backward and (4096, 1024) level (measured on an Intel VM; where rows
# lie a multiple of 4 KiB apart, the gradient sums now take four: grad_sums_rows).
cdef void add_4shifted(const floating* x, Py_ssize_t C, const double* k, double* s1,
                       double* s2, Py_ssize_t n, bint eight) noexcept nogil:
    """shifted4 per column c < n of rows 0-3 of x (rows C apart), then (``eight``) of 4-7."""
    cdef Py_ssize_t c
    cdef double a, q
    for c in range(n):
        a, q = s1[c], s2[c]
        shifted4(x + c, C, k[c], &a, &q)
        if eight:
            shifted4(x + 4 * C + c, C, k[c], &a, &q)
        s1[c], s2[c] = a, q


cdef void add_grads(const floating* dy, const floating* x, const double* mean, double* db,
                    double* dgc, Py_ssize_t n) noexcept nogil:
    """db += dy, dgc += dy * (x - mean): dgamma = inv_std * sum(dy * (x - mean))."""
    cdef Py_ssize_t c
    for c in range(n):
        db[c] += dy[c]
        dgc[c] += dy[c] * (x[c] - mean[c])


cdef inline void grads4(const floating* dy, const floating* x, Py_ssize_t C, double m,
                        double* b, double* g) noexcept nogil:
    """b += sum(dy), g += sum(dy * (x - m)) over rows 0-3 (C apart), in pairs."""
    b[0] = b[0] + ((<double>dy[0] + dy[C]) + (<double>dy[2 * C] + dy[3 * C]))
    g[0] = g[0] + ((dy[0] * (x[0] - m) + dy[C] * (x[C] - m))
                   + (dy[2 * C] * (x[2 * C] - m) + dy[3 * C] * (x[3 * C] - m)))


cdef void add_4grads(const floating* dy, const floating* x, Py_ssize_t C, const double* mean,
                     double* db, double* dgc, Py_ssize_t n, bint eight) noexcept nogil:
    """grads4 per column c < n of rows 0-3, then (``eight``) of rows 4-7."""
    cdef Py_ssize_t c
    cdef double b, g
    for c in range(n):
        b, g = db[c], dgc[c]
        grads4(dy + c, x + c, C, mean[c], &b, &g)
        if eight:
            grads4(dy + 4 * C + c, x + 4 * C + c, C, mean[c], &b, &g)
        db[c], dgc[c] = b, g


cdef void apply_row(const floating* x, floating* y, const double* mean, const double* scale,
                    const double* beta, Py_ssize_t n) noexcept nogil:
    """One example (axis 0): per-feature shift and scale, in float64, rounded once."""
    cdef Py_ssize_t c
    for c in range(n):
        y[c] = <floating>((x[c] - mean[c]) * scale[c] + beta[c])


cdef extern from "fo_bn.h":
    void fo_rows4_sum_f(const float* x, const float* y, const double* mean, Py_ssize_t stride,
                        Py_ssize_t n, double* out) nogil
    void fo_rows4_sum_d(const double* x, const double* y, const double* mean,
                        Py_ssize_t stride, Py_ssize_t n, double* out) nogil
    void fo_rows4_centred_f(const float* x, const float* y, const double* mean,
                            Py_ssize_t stride, Py_ssize_t n, double* out) nogil
    void fo_rows4_centred_d(const double* x, const double* y, const double* mean,
                            Py_ssize_t stride, Py_ssize_t n, double* out) nogil
    void fo_rows4_centred_sq_f(const float* x, const float* y, const double* mean,
                               Py_ssize_t stride, Py_ssize_t n, double* out) nogil
    void fo_rows4_centred_sq_d(const double* x, const double* y, const double* mean,
                               Py_ssize_t stride, Py_ssize_t n, double* out) nogil
    void fo_rows4_products_f(const float* x, const float* y, const double* mean,
                             Py_ssize_t stride, Py_ssize_t n, double* out) nogil
    void fo_rows4_products_d(const double* x, const double* y, const double* mean,
                             Py_ssize_t stride, Py_ssize_t n, double* out) nogil
    void fo_apply_2rows_f(const float* x, float* y, Py_ssize_t C, const double* mean,
                          const double* scale, const double* beta, Py_ssize_t n,
                          bint stream) nogil
    void fo_apply_2rows_d(const double* x, double* y, Py_ssize_t C, const double* mean,
                          const double* scale, const double* beta, Py_ssize_t n,
                          bint stream) nogil
    void fo_dx_2rows_f(const float* dy, const float* x, float* dx, Py_ssize_t C,
                       const double* mean, const double* k_dy, const double* k_x,
                       const double* k_0, Py_ssize_t n, bint stream) nogil
    void fo_dx_2rows_d(const double* dy, const double* x, double* dx, Py_ssize_t C,
                       const double* mean, const double* k_dy, const double* k_x,
                       const double* k_0, Py_ssize_t n, bint stream) nogil
    void fo_bn_store_fence() nogil


cdef void apply_feature(const floating* x, floating* y, double mean, double scale, double beta,
                        Py_ssize_t n) noexcept nogil:
    """One feature (axis 1): the same with scalars."""
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = <floating>((x[i] - mean) * scale + beta)


cdef void dx_row(const floating* dy, const floating* x, floating* dx, const double* mean,
                 const double* k_dy, const double* k_x, const double* k_0,
                 Py_ssize_t n) noexcept nogil:
    """dx = k_dy * dy - k_x * (x - mean) - k_0 (coefficients from dx_coefficients)."""
    cdef Py_ssize_t c
    for c in range(n):
        dx[c] = <floating>(k_dy[c] * dy[c] - k_x[c] * (x[c] - mean[c]) - k_0[c])


cdef void dx_feature(const floating* dy, const floating* x, floating* dx, double mean,
                     double mean_error, double gamma, double inv_std, double db, double dg,
                     Py_ssize_t n) noexcept nogil:
    """One feature (axis 1): dx_row with scalars (its coefficients are locals of the calling
    thread here)."""
    cdef Py_ssize_t i
    cdef double k_dy, k_x, k_0
    dx_coefficients(gamma, inv_std, db, dg, n, mean_error, &k_dy, &k_x, &k_0)
    for i in range(n):
        dx[i] = <floating>(k_dy * dy[i] - k_x * (x[i] - mean) - k_0)


cdef inline void dx_coefficients(double gamma, double inv_std, double db, double dg, double cnt,
                                 double mean_error, double* k_dy, double* k_x,
                                 double* k_0) noexcept nogil:
    """(gamma * inv_std / N) * (N * dy - db - xhat * dg) with xhat = (x - exact mean) *
    inv_std, distributed over its three terms (x - exact mean = x - mean + mean_error)."""
    cdef double coef = gamma * inv_std / cnt
    k_dy[0] = gamma * inv_std
    k_x[0] = coef * inv_std * dg
    k_0[0] = exact_k0(coef * db, k_x[0], mean_error)


# x is centred about the exact mean (the reference's batchnorm_stats): mean_error, what rounding
# the mean to float64 moved it by, is added back per feature (these three, as the reference's)
cdef inline double exact_bias(double beta, double scale, double mean_error) noexcept nogil:
    return beta + mean_error * scale if mean_error != 0 and isfinite(scale) else beta


cdef inline double exact_centred_sum(double dgc, double db, double mean_error) noexcept nogil:
    return dgc + mean_error * db if mean_error != 0 and isfinite(db) else dgc


cdef inline double exact_k0(double k_0, double k_x, double mean_error) noexcept nogil:
    return k_0 + k_x * mean_error if mean_error != 0 and isfinite(k_x) else k_0


cdef inline double row_products(const floating* dy, const floating* x, Py_ssize_t n,
                                double mean) noexcept nogil:
    """sum(dy * (x - mean)) over one row, summed as row_sum sums."""
    cdef double acc[8]
    cdef Py_ssize_t i, j, n8 = n - n % 8
    for j in range(8):
        acc[j] = 0
    for i in range(0, n8, 8):
        for j in range(8):
            acc[j] += dy[i + j] * (x[i + j] - mean)
    for i in range(n8, n):
        acc[i - n8] += dy[i] * (x[i] - mean)
    return sum8(acc)


cdef void row_grad_sums(const floating* dy, const floating* x, Py_ssize_t n, double mean,
                        double* db, double* dgc) noexcept nogil:
    """db = sum(dy), dgc = sum(dy * (x - mean)) over one row, in two loops over the row (in
    cache): GCC left the loop taking both sums at once scalar, 2x slower."""
    db[0] = row_sum(dy, n)
    dgc[0] = row_products(dy, x, n, mean)


cdef void chan_merge(double* mean_a, double* m2_a, double na, const double* mean_b,
                     const double* m2_b, double nb, Py_ssize_t C) noexcept nogil:
    """(mean_a, m2_a) of na rows, merged with (mean_b, m2_b) of the nb rows after them: the
    mean and sum of squared deviations of all na + nb rows (Chan, Golub and LeVeque's pairwise
    update; m2 stays a sum of non-negative terms, so it keeps the two-pass accuracy). Where a
    mean is infinite or NaN the means are combined as sums, so that the column's mean is the
    reference's (sum / N: +inf stays +inf; the update's inf + (finite - inf) * w would be NaN)."""
    cdef Py_ssize_t c
    cdef double d, q, w = nb / (na + nb), wm = na * nb / (na + nb)
    for c in range(C):
        d = mean_b[c] - mean_a[c]
        if isfinite(d):
            mean_a[c] = mean_a[c] + d * w
        else:
            mean_a[c] = (mean_a[c] * na + mean_b[c] * nb) / (na + nb)
        q = d * d * wm
        if not isfinite(q) and isfinite(d):
            # d * d overflowed where d * d * wm need not (wm < 1: a block of one row, d just
            # past sqrt(max)): taken as (d * wm) * d, which overflows only with the product
            q = d * wm * d
        m2_a[c] = (m2_a[c] + m2_b[c]) + q


cdef void block_moments(const floating* x, Py_ssize_t C, Py_ssize_t W, Py_ssize_t r0,
                        Py_ssize_t r1, double* mean, double* m2, double* k) noexcept nogil:
    """mean and sum of squared deviations of rows r0..r1-1 of x (rows C apart; the W
    columns from x on), per column, in one pass: the sums of d = x - k and d * d, k the
    block's first row, give mean = k + sum(d) / n and
    m2 = sum(d * d) - sum(d)^2 / n. A large mean cancels in x - k as in a second pass over
    x - mean, and since k is one of the n rows, (mean - k)^2 <= m2, so sum(d)^2 / n <= n m2:
    the subtraction costs at most a factor n + 1 in m2's relative error (~n (n + 1) ulps,
    5e-13 for 64 rows, against ~n ulps for two passes). A column whose sums, or sum(d)^2,
    are not finite (NaN, inf, overflow: float64 data around 1e153 squares sum(d) past the
    range where m2 stays in it) is taken again in two passes, which give the reference's
    NaN, inf and finite results; that column alone, so that a column's result does not
    depend on which columns are taken with it (the pool's chunks split the columns of a
    short batch). One pass instead of two took 15-22% less time for the statistics of
    (4096, 1024) and (256, 4096) float32 here (one thread, a C harness of both loops).

    The mean is given about the column's first row, x[c] (mean - x[c], from k - x[c] +
    sum(d) / n): the blocks' merges take the difference of two means, which the means
    themselves, rounded to an ulp of their magnitude, had spoiled where the data's spread is
    small beside it (float64 -1e6 + 1e-3 randn, (1000, 2): the variance 5.6e-9 from the
    definition, the reference's 1.9e-13)."""
    cdef Py_ssize_t c
    cdef double inv = 1.0 / (r1 - r0)
    cdef bint finite = True
    for c in range(W):
        k[c] = x[r0 * C + c]
    shifted_sums(x, C, W, r0, r1, k, mean, m2)
    for c in range(W):      # & and no branch: both loops vectorize (scalar: 6-8% of a forward)
        finite &= isfinite(mean[c] * mean[c]) & isfinite(m2[c])
    if finite:
        for c in range(W):
            moments_from_sums(mean + c, m2 + c, k[c] - x[c], inv)
        return
    for c in range(W):
        if isfinite(mean[c] * mean[c]) and isfinite(m2[c]):
            moments_from_sums(mean + c, m2 + c, k[c] - x[c], inv)
        else:
            column_moments_two_pass(x + c, C, r0, r1, mean + c, m2 + c)
            mean[c] = mean[c] - x[c]


cdef inline void moments_from_sums(double* mean, double* m2, double k,
                                   double inv) noexcept nogil:
    """block_moments' mean and m2 from the sums in ``mean`` and ``m2`` (``inv``: 1 / n)."""
    cdef double t = mean[0]
    mean[0] = k + t * inv
    m2[0] = max(m2[0] - t * t * inv, 0.0)     # rounding may leave -tiny for a constant


cdef void column_moments_two_pass(const floating* x, Py_ssize_t C, Py_ssize_t r0,
                                  Py_ssize_t r1, double* mean, double* m2) noexcept nogil:
    """block_moments of one column (rows C apart) by the definition: the mean, then the
    squared deviations from it."""
    cdef Py_ssize_t r
    cdef double s = 0, d
    for r in range(r0, r1):
        s += x[r * C]
    mean[0] = s / (r1 - r0)
    s = 0
    for r in range(r0, r1):
        d = x[r * C] - mean[0]
        s += d * d
    m2[0] = s


cdef void shifted_sums(const floating* x, Py_ssize_t C, Py_ssize_t W, Py_ssize_t r0,
                       Py_ssize_t r1, const double* k, double* s1, double* s2) noexcept nogil:
    """s1 = sum(x - k), s2 = sum((x - k)^2) over rows r0..r1-1, per column (W of them)."""
    cdef Py_ssize_t n = r0, c
    for c in range(W):
        s1[c] = 0
        s2[c] = 0
    while n + 8 <= r1:
        add_4shifted(x + n * C, C, k, s1, s2, W, True)
        n = n + 8
    while n + 4 <= r1:
        add_4shifted(x + n * C, C, k, s1, s2, W, False)
        n = n + 4
    while n < r1:
        add_shifted(x + n * C, k, s1, s2, W)
        n = n + 1


# Work runs on fastopt's thread pool (fo_pool.h, pool.pyx): the calling thread takes part, and
# helpers claim chunks only while they are running, so a call never waits for a descheduled
# thread. Chunks are fixed by the shape alone and partial results are combined in chunk order,
# so the results do not depend on the thread count.
from .pool cimport chunk_fn as fo_chunk_fn, run as fo_pool_run

# Pool chunks of about CHUNK_ELEMENTS elements (0.1-0.3 ms of work here): several per thread,
# so that a helper that starts late still takes a share, and short, so that a helper preempted
# in the middle of one (other processes on the cores) holds the call up only briefly.
cdef enum:
    CHUNK_ELEMENTS = 1 << 16
    SPLIT_CHUNKS = 4           # chunks per thread at least, for a job the pool splits
    MIN_ROWS = 64              # rows per chunk of the axis-0 statistics, at least
    MAX_CHUNKS = 64            # and chunks per sweep, at most


ctypedef struct BNJob:
    bint is32
    const void* x
    const void* dy
    void* y                    # y (forward, apply) or dx (backward)
    Py_ssize_t N, C            # x is (N, C), C-contiguous
    Py_ssize_t per_chunk       # features (axis 1) or rows (axis 0) per chunk
    double eps
    const double* gamma        # per-feature parameters and coefficients, float64
    const double* beta
    double* mean
    double* mean_error         # the mean less the exact one (training forward, backward)
    double* inv_std
    double* var                # the biased variance (training forward)
    double* part               # per-chunk partial results (axis 0)
    double* dgamma
    double* dbeta
    const double* k_dy         # dx coefficients (axis 0 backward)
    const double* k_x
    const double* k_0
    Py_ssize_t c0              # axis 0: the element-wise loops split each row here
    bint stream                # axis 0: columns [c0, C) of y stored past the caches
    Py_ssize_t stat_rows       # axis 0: rows per chunk of the statistics (gradient sums)
    Py_ssize_t nc              # and their chunks
    double* mean_out           # axis 0 forward: the caller's mean (j.mean: a line_array)


cdef inline Py_ssize_t chunk_end(const BNJob* job, Py_ssize_t chunk,
                                 Py_ssize_t total) noexcept nogil:
    return min((chunk + 1) * job.per_chunk, total)


cdef inline void rows4_sum(const floating* x, Py_ssize_t C, const double* shift,
                           double* out) noexcept nogil:
    """row_sum of the four rows of C values from x (fo_bn.h), or with ``shift`` their
    row_centred, each about its own shift."""
    if floating is float:
        if shift == NULL:
            fo_rows4_sum_f(x, NULL, NULL, C, C, out)
        else:
            fo_rows4_centred_f(x, NULL, shift, C, C, out)
    else:
        if shift == NULL:
            fo_rows4_sum_d(x, NULL, NULL, C, C, out)
        else:
            fo_rows4_centred_d(x, NULL, shift, C, C, out)


cdef inline void rows4_centred_sq(const floating* x, Py_ssize_t C, const double* mean,
                                  double* out) noexcept nogil:
    """row_centred_sq of the four rows of C values from x, each about its own mean."""
    if floating is float:
        fo_rows4_centred_sq_f(x, NULL, mean, C, C, out)
    else:
        fo_rows4_centred_sq_d(x, NULL, mean, C, C, out)


cdef inline void rows4_products(const floating* dy, const floating* x, Py_ssize_t C,
                                const double* mean, double* out) noexcept nogil:
    """row_products of the four rows of C values from dy and x, each about its own mean."""
    if floating is float:
        fo_rows4_products_f(x, dy, mean, C, C, out)
    else:
        fo_rows4_products_d(x, dy, mean, C, C, out)


cdef void features_forward(const floating* x, floating* y, Py_ssize_t C, double eps,
                           const double* gamma, const double* beta, double* mean,
                           double* mean_error, double* inv_std, double* var,
                           bint four) noexcept nogil:
    """One feature (axis 1, a contiguous row of C values), or ``four`` of them (rows C apart,
    their sums taken side by side: fo_bn.h): statistics, then y, while the rows are in cache
    (a row longer than the cache is streamed three times: the old passes)."""
    cdef double first[4]
    cdef double m[4]
    cdef double v[4]
    cdef double offset[4]
    cdef double s, shifted
    cdef int r, R = 4 if four else 1
    # the mean about the feature's first value, with the reference (batchnorm_stats: exact
    # for a constant feature); where it times C is not finite, sum(x) / C, as the reference.
    # The squares about the rounded mean hold the square of what rounding moved it by
    # (offset): taken off the variance, as the reference
    for r in range(R):
        first[r] = x[r * C]
    if four:
        rows4_sum(x, C, first, m)
    else:
        m[0] = row_centred(x, C, first[0])
    for r in range(R):
        shifted = m[r] / C
        m[r] = first[r] + shifted
        offset[r] = (m[r] - first[r]) - shifted
        if not isfinite(m[r] * C):
            m[r] = row_sum(x + r * C, C) / C
            offset[r] = 0.0
    if four:
        rows4_centred_sq(x, C, m, v)
    else:
        v[0] = row_centred_sq(x, C, m[0])
    for r in range(R):
        v[r] = v[r] / C
        if isfinite(v[r]):      # (an infinite one stays so: its offset may be too)
            v[r] = max(v[r] - offset[r] * offset[r], 0.0)
        s = 1.0 / sqrt(v[r] + eps)
        mean[r] = m[r]
        mean_error[r] = offset[r]
        inv_std[r] = s
        var[r] = v[r]
        apply_feature(x + r * C, y + r * C, m[r], gamma[r] * s,
                      exact_bias(beta[r], gamma[r] * s, offset[r]), C)


cdef inline bint four_features(const BNJob* j, Py_ssize_t f, Py_ssize_t end) noexcept nogil:
    """Whether features f..f+3 (axis 1) are taken together: four are left, and their rows fit
    in L2."""
    return f + 4 <= end and j.C <= FOUR_FEATURES_MAX


cdef void bn_rows_forward(void* ctx, Py_ssize_t chunk) noexcept nogil:
    cdef BNJob* j = <BNJob*>ctx
    cdef Py_ssize_t f = chunk * j.per_chunk, end = chunk_end(j, chunk, j.N)
    cdef bint four
    while f < end:
        four = four_features(j, f, end)
        if j.is32:
            features_forward(<const float*>j.x + f * j.C, <float*>j.y + f * j.C, j.C, j.eps,
                             j.gamma + f, j.beta + f, j.mean + f, j.mean_error + f,
                             j.inv_std + f, j.var + f, four)
        else:
            features_forward(<const double*>j.x + f * j.C, <double*>j.y + f * j.C, j.C,
                             j.eps, j.gamma + f, j.beta + f, j.mean + f, j.mean_error + f,
                             j.inv_std + f, j.var + f, four)
        f = f + (4 if four else 1)


cdef void bn_rows_apply(void* ctx, Py_ssize_t chunk) noexcept nogil:
    cdef BNJob* j = <BNJob*>ctx
    cdef Py_ssize_t f
    for f in range(chunk * j.per_chunk, chunk_end(j, chunk, j.N)):
        if j.is32:
            apply_feature(<const float*>j.x + f * j.C, <float*>j.y + f * j.C, j.mean[f],
                          j.gamma[f] * j.inv_std[f], j.beta[f], j.C)
        else:
            apply_feature(<const double*>j.x + f * j.C, <double*>j.y + f * j.C, j.mean[f],
                          j.gamma[f] * j.inv_std[f], j.beta[f], j.C)


cdef void features_backward(const floating* dy, const floating* x, floating* dx, Py_ssize_t C,
                            const double* gamma, const double* mean, const double* mean_error,
                            const double* inv_std, double* dgamma, double* dbeta,
                            bint four) noexcept nogil:
    """One feature (axis 1), or ``four`` of them (rows C apart, their sums taken side by side:
    fo_bn.h): both gradient sums, then dx, while the rows are in cache."""
    cdef double db[4]
    cdef double dgc[4]
    cdef int r, R = 4 if four else 1
    if four:
        rows4_sum(dy, C, NULL, db)
        rows4_products(dy, x, C, mean, dgc)
    else:
        row_grad_sums(dy, x, C, mean[0], db, dgc)
    for r in range(R):
        dbeta[r] = db[r]
        dgamma[r] = exact_centred_sum(dgc[r], db[r], mean_error[r]) * inv_std[r]
        dx_feature(dy + r * C, x + r * C, dx + r * C, mean[r], mean_error[r], gamma[r],
                   inv_std[r], db[r], dgamma[r], C)


cdef void bn_rows_backward(void* ctx, Py_ssize_t chunk) noexcept nogil:
    cdef BNJob* j = <BNJob*>ctx
    cdef Py_ssize_t f = chunk * j.per_chunk, end = chunk_end(j, chunk, j.N), o
    cdef bint four
    while f < end:
        four = four_features(j, f, end)
        o = f * j.C
        if j.is32:
            features_backward(<const float*>j.dy + o, <const float*>j.x + o, <float*>j.y + o,
                              j.C, j.gamma + f, j.mean + f, j.mean_error + f, j.inv_std + f,
                              j.dgamma + f, j.dbeta + f, four)
        else:
            features_backward(<const double*>j.dy + o, <const double*>j.x + o,
                              <double*>j.y + o, j.C, j.gamma + f, j.mean + f,
                              j.mean_error + f, j.inv_std + f, j.dgamma + f, j.dbeta + f,
                              four)
        f = f + (4 if four else 1)


cdef void chunk_moments(const BNJob* j, Py_ssize_t chunk, Py_ssize_t lo,
                        Py_ssize_t hi) noexcept nogil:
    """Axis 0: the mean and squared deviations of row chunk ``chunk``'s columns [lo, hi), a
    block of ROW_BLOCK rows at a time, merged in block order into part[chunk] (mean, m2, then
    the block's mean, m2 and shift)."""
    cdef Py_ssize_t C = j.C, r0 = chunk * j.stat_rows, r1 = min(r0 + j.stat_rows, j.N)
    cdef double* mean = j.part + 5 * C * chunk + lo
    cdef double* m2 = mean + C
    cdef double* bmean = m2 + C
    cdef double* bm2 = bmean + C
    cdef double* shift = bm2 + C
    cdef Py_ssize_t b = r0, e
    while b < r1:
        e = min(b + ROW_BLOCK, r1)
        if j.is32:
            block_moments(<const float*>j.x + lo, C, hi - lo, b, e,
                          mean if b == r0 else bmean, m2 if b == r0 else bm2, shift)
        else:
            block_moments(<const double*>j.x + lo, C, hi - lo, b, e,
                          mean if b == r0 else bmean, m2 if b == r0 else bm2, shift)
        if b > r0:
            chan_merge(mean, m2, b - r0, bmean, bm2, e - b, hi - lo)
        b = e


cdef void finish_moments(const BNJob* j, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Axis 0, columns [lo, hi): the row chunks' moments merged in chunk order, then the mean,
    variance, inv_std and the normalization's scale (j.gamma: gamma, then gamma * inv_std)."""
    cdef Py_ssize_t C = j.C, N = j.N, k, c
    cdef double* part = j.part
    # the job's arrays in locals: read through j, they might alias j (the loops stayed scalar)
    cdef double* mean_out = j.mean_out
    cdef double* mean = j.mean
    cdef double* var = j.var
    cdef double* inv_std = j.inv_std
    cdef double* scale = <double*>j.gamma
    cdef double* bias = <double*>j.beta
    cdef double* mean_error = j.mean_error
    cdef double eps = j.eps, first, shifted
    for k in range(1, j.nc):
        chan_merge(part + lo, part + C + lo, k * j.stat_rows, part + 5 * C * k + lo,
                   part + 5 * C * k + C + lo, min(j.stat_rows, N - k * j.stat_rows), hi - lo)
    for c in range(lo, hi):
        # the merged mean is about the column's first row (block_moments): shifted back, with
        # what rounding moved it by (the merged m2 is about the exact mean already); the
        # reference's mean is x.sum() / N: where that sum overflows (a float64 column of
        # 1e308) the shifted sums kept a finite mean, a variance of 0 and y = beta, where the
        # reference's mean and variance are inf (y NaN); such a column (or one with NaN or
        # inf) is taken again by the definition
        first = (<const float*>j.x)[c] if j.is32 else (<const double*>j.x)[c]
        shifted = part[c]
        part[c] = shifted + first
        mean_error[c] = (part[c] - first) - shifted
        if not isfinite(part[c] * N):
            mean_error[c] = 0.0
            if j.is32:
                column_moments_two_pass(<const float*>j.x + c, C, 0, N, part + c, part + C + c)
            else:
                column_moments_two_pass(<const double*>j.x + c, C, 0, N, part + c,
                                        part + C + c)
    for c in range(lo, hi):
        mean_out[c] = part[c]
        mean[c] = part[c]
    for c in range(lo, hi):
        var[c] = part[C + c] / N
        inv_std[c] = 1.0 / sqrt(var[c] + eps)
        scale[c] = scale[c] * inv_std[c]
        bias[c] = exact_bias(bias[c], scale[c], mean_error[c])


# Axis 0's element-wise loops (y = ..., dx = ...) take each row in two spans, columns [0, c0)
# and [c0, C), c0 the first column where every output row starts a 64-byte line
# (line_column), and read the per-feature float64 arrays from copies whose element c0 starts
# one too (line_array). NumPy's arrays lie 16 or 32 bytes past a line, so otherwise each
# 512-bit store split two lines, and so did the float64 loads. Same results, element by
# element. A C harness of the apply loop, (256, 4096) float32, one thread on this Intel VM:
# 1.30x a stream as NumPy lays the arrays out, 1.10x with the stores and the float64 arrays
# line-aligned, 1.08x with everything aligned (1.27x aligning the loads of x instead).
cdef Py_ssize_t line_column(const void* y, Py_ssize_t C, Py_ssize_t itemsize) noexcept nogil:
    """The first column of (N, C) ``y`` at which every row starts a 64-byte line, or 0 when
    its rows lie at different offsets from one (or y is not even aligned to its items)."""
    cdef size_t skip = (64 - <size_t>y % 64) % 64
    if (C * itemsize) % 64 or skip % itemsize or <Py_ssize_t>(skip // itemsize) >= C:
        return 0
    return <Py_ssize_t>(skip // itemsize)


# Axis 0's y and dx leave through non-temporal stores (past the caches, without the read for
# ownership a cached store makes) where the pass moves at least the last-level cache's size:
# what it writes is then evicted before anyone reads it anyway. Same bits. One Zen 4 core, a C
# harness of the apply loop, float32, ns per element, cached / non-temporal stores: (4096, 1024)
# 0.44 / 0.34, (2048, 1024) 0.29 / 0.21 (in L3 beside its input in-process: 8 MiB each, where
# the stores cost instead), (256, 4096) in L2/L3 0.20 / 0.21. In-process, (4096, 1024), two
# threads, medians of five alternated processes: inference 848 -> 733 us, backward 2285 ->
# 2060; one thread 1921 -> 1517 and 4599 -> 4074. Not beside a cold per-feature array
# (column panels over all rows, 64-256 columns wide: 0.60-0.74 against 0.47 whole rows).
cdef Py_ssize_t STREAM_MIN_BYTES = _cpu.last_level_cache_bytes() or (32 << 20)


def _set_stream_min_bytes(Py_ssize_t n):
    """For tests: pass bytes from which y and dx are streamed (0: always); returns the old."""
    global STREAM_MIN_BYTES
    old, STREAM_MIN_BYTES = STREAM_MIN_BYTES, n
    return old


cdef bint stream_stores(const void* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t c0,
                        Py_ssize_t itemsize, int arrays) noexcept nogil:
    """Whether the element-wise pass writing (N, C) ``y`` (``arrays`` arrays of its size
    moved in all) streams its stores: its pass is that large, and every row's span from c0
    starts a line."""
    return (arrays * N * C * itemsize >= STREAM_MIN_BYTES and (C * itemsize) % 64 == 0
            and (<size_t>y + c0 * itemsize) % 64 == 0)


cdef inline Py_ssize_t line_room(Py_ssize_t F) noexcept nogil:
    """Doubles a scratch holds per line_array of F values (8 more: where it starts)."""
    return F + 8


cdef double* line_array(double* room, Py_ssize_t k, Py_ssize_t F, Py_ssize_t c0) noexcept nogil:
    """The k-th array of F values in ``room`` (line_room(F) doubles each), placed so that its
    element c0 starts a 64-byte line."""
    cdef double* a = room + k * line_room(F)
    return a + ((64 - <size_t>(a + c0) % 64) % 64) // 8


cdef inline void apply_span(const floating* x, floating* y, const BNJob* j, bint two,
                            Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """y for columns [lo, hi) of the two rows (or the one row) at x."""
    cdef bint stream = j.stream and lo == j.c0
    if not two:
        apply_row(x + lo, y + lo, j.mean + lo, j.gamma + lo, j.beta + lo, hi - lo)
    elif floating is float:
        fo_apply_2rows_f(x + lo, y + lo, j.C, j.mean + lo, j.gamma + lo, j.beta + lo, hi - lo,
                         stream)
    else:
        fo_apply_2rows_d(x + lo, y + lo, j.C, j.mean + lo, j.gamma + lo, j.beta + lo, hi - lo,
                         stream)


cdef void bn_cols_apply(void* ctx, Py_ssize_t chunk) noexcept nogil:
    """Axis 0: y for this chunk's rows, two at a time, each in its two spans; j.gamma holds
    gamma * inv_std."""
    cdef BNJob* j = <BNJob*>ctx
    cdef Py_ssize_t C = j.C, n = chunk * j.per_chunk, end = chunk_end(j, chunk, j.N), o
    cdef bint two
    while n < end:
        two, o = n + 2 <= end, n * C
        if j.is32:
            apply_span(<const float*>j.x + o, <float*>j.y + o, j, two, 0, j.c0)
            apply_span(<const float*>j.x + o, <float*>j.y + o, j, two, j.c0, C)
        else:
            apply_span(<const double*>j.x + o, <double*>j.y + o, j, two, 0, j.c0)
            apply_span(<const double*>j.x + o, <double*>j.y + o, j, two, j.c0, C)
        n = n + (2 if two else 1)
    if j.stream:
        fo_bn_store_fence()


# A short batch (fewer row chunks than threads: rows_per_chunk takes at least MIN_ROWS rows) has
# its statistics (gradient sums) split over the columns instead: each column chunk takes every
# row chunk in turn, merges them and finishes its columns, so the threads share the work and
# every column's arithmetic is the one of the split by rows (the same bits). Taller batches
# keep the split by rows: a column chunk of a tall x would start every row's strip on another
# page.
cdef Py_ssize_t column_chunks(BNJob* job) noexcept nogil:
    """Set job.per_chunk to the columns of a chunk (about CHUNK_ELEMENTS elements, whole
    64-byte lines of float32) and return the number of chunks."""
    job.per_chunk = max(16, (CHUNK_ELEMENTS // job.N) // 16 * 16)
    return (job.C + job.per_chunk - 1) // job.per_chunk


cdef void grad_sums_rows(const floating* dy, const floating* x, Py_ssize_t C, Py_ssize_t W,
                         Py_ssize_t r0, Py_ssize_t r1, const double* mean, double* db,
                         double* dgc) noexcept nogil:
    """db += dy, dgc += dy * (x - mean) over rows r0..r1-1 (rows C apart; W columns).

    Rows a multiple of 4 KiB apart (power-of-two feature counts) take four at a time only:
    their lines fall into one L1 set, and eight rows of dy and x are 16 lines for its 8 ways
    where the two arrays lie at one offset in their pages (as fresh NumPy arrays do). Same
    additions in the same order, so the same bits. Zen 4, (256, 4096) float32 backward,
    medians of alternated processes, eight / four: one thread 962 / 664 us, two 569 / 344; at
    places 1 KiB apart within the noise (760 / 698); (4096, 1024) two threads 3515 / 2783.
    The forward's statistics (eight rows of x alone: 8 lines) were not measurably faster so."""
    cdef Py_ssize_t n = r0
    cdef bint eight = (C * sizeof(floating)) % 4096 != 0
    while eight and n + 8 <= r1:
        add_4grads(dy + n * C, x + n * C, C, mean, db, dgc, W, True)
        n = n + 8
    while n + 4 <= r1:
        add_4grads(dy + n * C, x + n * C, C, mean, db, dgc, W, False)
        n = n + 4
    while n < r1:
        add_grads(dy + n * C, x + n * C, mean, db, dgc, W)
        n = n + 1


cdef void chunk_grad_sums(const BNJob* j, Py_ssize_t chunk, Py_ssize_t lo,
                          Py_ssize_t hi) noexcept nogil:
    """Axis 0: sum(dy) and sum(dy * (x - mean)) over row chunk ``chunk``, columns [lo, hi),
    into part[chunk] (zeros before)."""
    cdef Py_ssize_t C = j.C, r0 = chunk * j.stat_rows, r1 = min(r0 + j.stat_rows, j.N)
    cdef double* db = j.part + 2 * C * chunk + lo
    if j.is32:
        grad_sums_rows(<const float*>j.dy + lo, <const float*>j.x + lo, C, hi - lo, r0, r1,
                       j.mean + lo, db, db + C)
    else:
        grad_sums_rows(<const double*>j.dy + lo, <const double*>j.x + lo, C, hi - lo, r0, r1,
                       j.mean + lo, db, db + C)


cdef void finish_grad_sums(const BNJob* j, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Axis 0, columns [lo, hi): the row chunks' sums added in chunk order, then dbeta, dgamma
    and dx's coefficients."""
    cdef Py_ssize_t C = j.C, k, c
    cdef double* pp = j.part
    for k in range(1, j.nc):
        for c in range(lo, hi):
            pp[c] += pp[2 * C * k + c]
            pp[C + c] += pp[2 * C * k + C + c]
    for c in range(lo, hi):
        j.dbeta[c] = pp[c]
        j.dgamma[c] = exact_centred_sum(pp[C + c], pp[c], j.mean_error[c]) * j.inv_std[c]
        dx_coefficients(j.gamma[c], j.inv_std[c], j.dbeta[c], j.dgamma[c], j.N,
                        j.mean_error[c], <double*>j.k_dy + c, <double*>j.k_x + c,
                        <double*>j.k_0 + c)


cdef inline void dx_span(const floating* dy, const floating* x, floating* dx, const BNJob* j,
                         bint two, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """dx for columns [lo, hi) of the two rows (or the one row) at dy, x."""
    cdef bint stream = j.stream and lo == j.c0
    if not two:
        dx_row(dy + lo, x + lo, dx + lo, j.mean + lo, j.k_dy + lo, j.k_x + lo, j.k_0 + lo,
               hi - lo)
    elif floating is float:
        fo_dx_2rows_f(dy + lo, x + lo, dx + lo, j.C, j.mean + lo, j.k_dy + lo, j.k_x + lo,
                      j.k_0 + lo, hi - lo, stream)
    else:
        fo_dx_2rows_d(dy + lo, x + lo, dx + lo, j.C, j.mean + lo, j.k_dy + lo, j.k_x + lo,
                      j.k_0 + lo, hi - lo, stream)


cdef void bn_cols_dx(void* ctx, Py_ssize_t chunk) noexcept nogil:
    """Axis 0: dx for this chunk's rows, two at a time, each in its two spans."""
    cdef BNJob* j = <BNJob*>ctx
    cdef Py_ssize_t C = j.C, n = chunk * j.per_chunk, end = chunk_end(j, chunk, j.N), o
    cdef bint two
    while n < end:
        two, o = n + 2 <= end, n * C
        if j.is32:
            dx_span(<const float*>j.dy + o, <const float*>j.x + o, <float*>j.y + o, j, two,
                    0, j.c0)
            dx_span(<const float*>j.dy + o, <const float*>j.x + o, <float*>j.y + o, j, two,
                    j.c0, C)
        else:
            dx_span(<const double*>j.dy + o, <const double*>j.x + o, <double*>j.y + o, j,
                    two, 0, j.c0)
            dx_span(<const double*>j.dy + o, <const double*>j.x + o, <double*>j.y + o, j,
                    two, j.c0, C)
        n = n + (2 if two else 1)
    if j.stream:
        fo_bn_store_fence()


# The axis-0 sums of either direction: the forward's moments (j.dy is NULL) or the
# backward's gradient sums, by row chunks then finished, or by column chunks (column_chunks).
cdef inline void chunk_sums(const BNJob* j, Py_ssize_t chunk, Py_ssize_t lo,
                            Py_ssize_t hi) noexcept nogil:
    if j.dy == NULL:
        chunk_moments(j, chunk, lo, hi)
    else:
        chunk_grad_sums(j, chunk, lo, hi)


cdef inline void finish_sums(const BNJob* j, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    if j.dy == NULL:
        finish_moments(j, lo, hi)
    else:
        finish_grad_sums(j, lo, hi)


cdef void bn_cols_row_chunk(void* ctx, Py_ssize_t chunk) noexcept nogil:
    """Axis 0: one row chunk's sums, every column."""
    cdef BNJob* j = <BNJob*>ctx
    chunk_sums(j, chunk, 0, j.C)


cdef void bn_cols_column_chunk(void* ctx, Py_ssize_t k) noexcept nogil:
    """Axis 0, a short batch's column chunk k: every row chunk's sums, then finished."""
    cdef BNJob* j = <BNJob*>ctx
    cdef Py_ssize_t lo = k * j.per_chunk, hi = min(lo + j.per_chunk, j.C), chunk
    for chunk in range(j.nc):
        chunk_sums(j, chunk, lo, hi)
    finish_sums(j, lo, hi)


cdef void bn_cols_finish(void* ctx, Py_ssize_t k) noexcept nogil:
    """Axis 0: finish the sums of column chunk k (FINISH_COLUMNS columns)."""
    cdef BNJob* j = <BNJob*>ctx
    finish_sums(j, k * FINISH_COLUMNS, min((k + 1) * FINISH_COLUMNS, j.C))


cdef void run_sums(BNJob* job) noexcept nogil:
    """The axis-0 sums of the job, finished: split by columns if there are fewer row chunks
    than threads, else by rows, then finished by column chunks (each column's merge, square
    root and division; on the caller alone they kept the other thread idle: (256, 4096)
    float32 forward, two threads, its statistics 171-180 -> 157-161 us)."""
    cdef int nt = threads_for(job.N * job.C)
    if job.nc < nt:
        fo_pool_run(bn_cols_column_chunk, <void*>job, column_chunks(job), nt)
    else:
        run_chunks(bn_cols_row_chunk, job, job.N)
        fo_pool_run(bn_cols_finish, <void*>job, (job.C + FINISH_COLUMNS - 1) // FINISH_COLUMNS,
                    nt)


cdef void run_chunks(fo_chunk_fn fn, BNJob* job, Py_ssize_t total) noexcept nogil:
    """fn over ceil(total / job.per_chunk) chunks, on the pool when the job is large."""
    cdef Py_ssize_t n = (total + job.per_chunk - 1) // job.per_chunk
    fo_pool_run(fn, <void*>job, n, threads_for(job.N * job.C))


cdef Py_ssize_t items_per_chunk(Py_ssize_t items, Py_ssize_t size, int nt) noexcept nogil:
    """Whole items (the softmax rows' examples, batch norm's features as rows) of ``size``
    elements per pool chunk: about CHUNK_ELEMENTS elements, or fewer to give each of ``nt``
    threads SPLIT_CHUNKS chunks (in chunks of CHUNK_ELEMENTS a (64, 1000) softmax or a
    (128, 256) batch norm with features as rows was one chunk, which one thread ran alone:
    the latter's forward, 2 threads, 17-18 -> 14-15 us; batch norm's axis-0 sweeps split so
    measured 10-30% slower at (256, 128) and (128, 1024), and keep their chunks)."""
    return max(1, min(CHUNK_ELEMENTS // max(size, 1),
                      (items + SPLIT_CHUNKS * nt - 1) // (SPLIT_CHUNKS * nt)))


cdef Py_ssize_t rows_per_chunk(Py_ssize_t N, Py_ssize_t C, Py_ssize_t block) noexcept nogil:
    """Axis 0: whole blocks per chunk, at least CHUNK_ELEMENTS elements and MIN_ROWS
    rows (each chunk leaves 2-5 float64 arrays of C partial results: a fraction of its own
    size), at most MAX_CHUNKS chunks."""
    cdef Py_ssize_t blocks = (N + block - 1) // block
    cdef Py_ssize_t rows = max(CHUNK_ELEMENTS // max(C, 1), MIN_ROWS)
    cdef Py_ssize_t per = max((rows + block - 1) // block, (blocks + MAX_CHUNKS - 1) // MAX_CHUNKS)
    return max(per, 1) * block


cdef const double* widen(const floating* a, double* dst, Py_ssize_t n) noexcept:
    """dst = a in float64 (the per-feature parameters the loops read); returns dst."""
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] = a[i]
    return dst


def batchnorm_forward(const floating[:, ::1] x, int axis, const floating[::1] gamma,
                      const floating[::1] beta, double eps, double[::1] mean,
                      double[::1] mean_error, double[::1] inv_std, double[::1] var,
                      floating[:, ::1] y):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], nc = 0
    if N * C == 0:
        return
    cdef BNJob job
    memset(&job, 0, sizeof(job))
    job.is32 = floating is float
    job.x = &x[0, 0]
    job.y = &y[0, 0]
    job.N = N
    job.C = C
    job.eps = eps
    job.mean = &mean[0]
    job.mean_error = &mean_error[0]
    job.inv_std = &inv_std[0]
    job.var = &var[0]
    if axis == 0:
        job.per_chunk = rows_per_chunk(N, C, ROW_BLOCK)
        nc = (N + job.per_chunk - 1) // job.per_chunk
    cdef Py_ssize_t F = C if axis == 0 else N     # features
    # float64: gamma, beta and axis 0's copy of the mean (line_arrays), then axis 0's moments
    scratch = np.empty(3 * line_room(F) + 5 * F * nc)
    cdef double* w = <double*>cnp.PyArray_DATA(scratch)
    if axis == 0:
        job.c0 = line_column(job.y, C, sizeof(floating))
        job.stream = stream_stores(job.y, N, C, job.c0, sizeof(floating), 2)
    cdef double* scale = line_array(w, 0, F, job.c0)
    job.gamma = widen(&gamma[0], scale, F)
    job.beta = widen(&beta[0], line_array(w, 1, F, job.c0), F)
    if axis == 1:                      # each feature a contiguous row: one visit per feature
        job.per_chunk = items_per_chunk(N, C, threads_for(N * C))
        with nogil:
            run_chunks(bn_rows_forward, &job, N)
        return
    job.mean_out, job.mean = job.mean, line_array(w, 2, F, job.c0)
    job.part = w + 3 * line_room(F)
    job.stat_rows, job.nc = job.per_chunk, nc
    with nogil:
        run_sums(&job)
        job.per_chunk = max(1, CHUNK_ELEMENTS // C)
        run_chunks(bn_cols_apply, &job, N)


def batchnorm_inference(const floating[:, ::1] x, int axis, const floating[::1] gamma,
                        const floating[::1] beta, const floating[::1] running_mean,
                        const floating[::1] running_var, double eps, floating[:, ::1] y):
    """Inference: the forward's normalization with the running statistics, widened to
    float64, and ``inv_std = 1 / sqrt(running_var + eps)`` folded here per feature (in
    Python it took four small ufuncs and an errstate, more than the kernel at course sizes)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], c
    if N * C == 0:
        return
    cdef Py_ssize_t F = C if axis == 0 else N     # features
    # float64: gamma (axis 0: gamma * inv_std), beta, the mean and inv_std (line_arrays)
    scratch = np.empty(4 * line_room(F))
    cdef double* w = <double*>cnp.PyArray_DATA(scratch)
    cdef BNJob job
    memset(&job, 0, sizeof(job))
    job.is32 = floating is float
    job.x = &x[0, 0]
    job.y = &y[0, 0]
    job.N = N
    job.C = C
    if axis == 0:
        job.c0 = line_column(job.y, C, sizeof(floating))
        job.stream = stream_stores(job.y, N, C, job.c0, sizeof(floating), 2)
    cdef double* scale = line_array(w, 0, F, job.c0)
    job.gamma = widen(&gamma[0], scale, F)
    job.beta = widen(&beta[0], line_array(w, 1, F, job.c0), F)
    # in float64, rounded once: a float32 mean of data around 1e4 would cost 4 digits
    job.mean = line_array(w, 2, F, job.c0)
    widen(&running_mean[0], job.mean, F)
    job.inv_std = line_array(w, 3, F, job.c0)
    for c in range(F):
        job.inv_std[c] = 1.0 / sqrt(<double>running_var[c] + eps)
    if axis == 1:
        job.per_chunk = items_per_chunk(N, C, threads_for(N * C))
        with nogil:
            run_chunks(bn_rows_apply, &job, N)
        return
    # whole rows, streamed in order (column blocks of a wide x start every row segment on
    # a cold page: 20% slower than keeping the per-feature arrays in L2)
    for c in range(C):
        scale[c] = scale[c] * job.inv_std[c]
    job.per_chunk = max(1, CHUNK_ELEMENTS // C)
    with nogil:
        run_chunks(bn_cols_apply, &job, N)


def batchnorm_backward(const floating[:, ::1] dy, const floating[:, ::1] x, int axis,
                       const floating[::1] gamma, const double[::1] mean,
                       const double[::1] mean_error, const double[::1] inv_std,
                       floating[:, ::1] dx, double[::1] dgamma, double[::1] dbeta):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], c, nc = 0
    cdef double* pp
    if N * C == 0:
        return
    cdef BNJob job
    memset(&job, 0, sizeof(job))
    job.is32 = floating is float
    job.x = &x[0, 0]
    job.dy = &dy[0, 0]
    job.y = &dx[0, 0]
    job.N = N
    job.C = C
    if axis == 0:
        job.per_chunk = rows_per_chunk(N, C, 4)
        nc = (N + job.per_chunk - 1) // job.per_chunk
    # float64 scratch: gamma, and axis 0's per-chunk sums, then its dx coefficients and copy
    # of the mean (line_arrays)
    scratch = np.zeros(C * (1 + 2 * nc) + 4 * line_room(C)) if axis == 0 else np.empty(N)
    pp = <double*>cnp.PyArray_DATA(scratch)
    job.gamma = widen(&gamma[0], pp, C if axis == 0 else N)
    job.mean = <double*>&mean[0]
    job.mean_error = <double*>&mean_error[0]
    job.inv_std = <double*>&inv_std[0]
    if axis == 1:                      # features are rows: sums and dx in one visit each
        job.dgamma = &dgamma[0]
        job.dbeta = &dbeta[0]
        job.per_chunk = items_per_chunk(N, C, threads_for(N * C))
        with nogil:
            run_chunks(bn_rows_backward, &job, N)
        return
    # features are columns: the sums need every row before dx can start, so two sweeps (a
    # column panel over all rows would fit in L2 only for a few dozen rows: with rows a power
    # of two bytes apart its lines share a handful of cache sets)
    job.part = pp + C
    cdef double* room = job.part + 2 * C * nc
    job.c0 = line_column(job.y, C, sizeof(floating))
    job.stream = stream_stores(job.y, N, C, job.c0, sizeof(floating), 3)
    job.k_dy = line_array(room, 0, C, job.c0)
    job.k_x = line_array(room, 1, C, job.c0)
    job.k_0 = line_array(room, 2, C, job.c0)
    job.mean = line_array(room, 3, C, job.c0)
    for c in range(C):
        job.mean[c] = mean[c]
    job.dgamma = &dgamma[0]
    job.dbeta = &dbeta[0]
    job.stat_rows, job.nc = job.per_chunk, nc
    with nogil:
        run_sums(&job)
        job.per_chunk = max(1, CHUNK_ELEMENTS // C)
        run_chunks(bn_cols_dx, &job, N)


# --------------------------------------------------------------------------------- softmax
# A "row" is one example's k logits, contiguous (the normalized axis is last). In the strided
# layout (outer, k, inner) each example is a column of a (k, inner) block; those are handled a
# block of columns at a time so that the inner loops run along memory and vectorize.
cdef extern from "fo_row.h":
    float fo_row_max_f(const float* z, Py_ssize_t k) nogil
    double fo_row_max_d(const double* z, Py_ssize_t k) nogil
    float fo_row_max_numbers_f(const float* z, Py_ssize_t k) nogil
    double fo_row_max_numbers_d(const double* z, Py_ssize_t k) nogil
    enum:
        FO_FINISH_NONE
        FO_FINISH_SCALE
        FO_FINISH_LOG
        FO_FINISH_SCALE2
    double fo_exp_sum_f(const float* z, float m, float* e, Py_ssize_t n, const float* next,
                        const float* y, float* y_max, int kind, const float* pz, float* pout,
                        float a, float b) nogil
    double fo_exp_sum_d(const double* z, double m, double* e, Py_ssize_t n, const double* next,
                        const double* y, double* y_max, int kind, const double* pz,
                        double* pout, double a, double b) nogil
    void fo_finish_row_f(int kind, const float* z, float* out, Py_ssize_t n, float a,
                         float b) nogil
    void fo_finish_row_d(int kind, const double* z, double* out, Py_ssize_t n, double a,
                         double b) nogil
    float fo_finish_one_f(int kind, float o, float z, float a, float b) nogil
    double fo_finish_one_d(int kind, double o, double z, double a, double b) nogil


cdef inline floating row_max(const floating* z, Py_ssize_t k) noexcept nogil:
    """max(z), NaN if z holds one."""
    if floating is float:
        return fo_row_max_f(z, k)
    else:
        return fo_row_max_d(z, k)


cdef inline floating row_max_numbers(const floating* z, Py_ssize_t k) noexcept nogil:
    """max(z), NaN if z[0] is, else the max of z's numbers (fo_row.h: for the exp sums, which a
    NaN in z makes NaN anyway, an exp of NaN, and with them every result of the row)."""
    if floating is float:
        return fo_row_max_numbers_f(z, k)
    else:
        return fo_row_max_numbers_d(z, k)


cdef double row_stats(const floating* z, floating* e, Py_ssize_t k, floating mx,
                      const floating* y, floating* y_max, int kind, const floating* pz,
                      floating* pout, floating a, floating b) noexcept nogil:
    """e = exp(z - mx) (mx = row_max_numbers(z)); returns sum(e) in float64 (summed as row_sum
    sums). Meanwhile y_max = row_max_numbers(y) of the next row y = z + k (or of z itself, the
    last row of a chunk), whose lines then arrive from memory beside the exps (a max pass of
    its own had waited for them), the previous row (pz, pout) is finished (finish_row(kind,
    pz, pout, k, a, b): a pass of its own had cost log-softmax's (256, 32000) a fifth of its
    time), and the row after z's is prefetched."""
    if floating is float:
        return fo_exp_sum_f(z, mx, e, k, z + k, y, y_max, kind, pz, pout, a, b)
    else:
        return fo_exp_sum_d(z, mx, e, k, z + k, y, y_max, kind, pz, pout, a, b)


cdef inline void finish_row(int kind, const floating* z, floating* out, Py_ssize_t k,
                            floating a, floating b) noexcept nogil:
    """The rest of a row's softmax, out holding exp(z - max) (fo_row.h): kind FO_FINISH_SCALE
    out * a (a = 1 / s), FO_FINISH_LOG (z - a) - b (a = max, b = log(s)), FO_FINISH_SCALE2
    (out * a) * b (a = 1 / s, b = 1 / m), FO_FINISH_NONE nothing."""
    if floating is float:
        fo_finish_row_f(kind, z, out, k, a, b)
    else:
        fo_finish_row_d(kind, z, out, k, a, b)


# Rows shorter than SHORT_ROW take their exps a block of rows at a time, in one vector sweep
# over the block with each element's row max beside it: row_stats pays a partial vector and
# its set-up per row, which is most of the work of a row of a few values ((4096, 10) float32
# softmax had taken 10 ns per element, NumPy's speed). The same bits: the exps are the same
# vector exp of the same differences, and row_sum sums each row as the exp pass does. In-process
# A/B, float32, one thread: softmax of (52428, 10) 3.5 -> 1.5 ms, cross-entropy 4.2 -> 2.2 ms;
# (8192, 64) and (4128, 127) 22% less time; at 128-256 values the gain fell to 0-10%. Rows of
# WHOLE_ROW values or more that are a whole number of 64-byte vectors have no partial vector to
# pay, and take long_rows (this Intel VM, one thread, ns per element, softmax / cross-entropy,
# blocks of rows -> long_rows: float32 k = 32 1.10 / 1.38 -> 0.77-0.81 / 1.14-1.20, 64
# 0.72-0.84 / 0.85-0.95 -> 0.52-0.54 / 0.78-0.83, 96 0.64 / 0.74 -> 0.47 / 0.60, 112 0.61-0.66 /
# 0.68-0.77 -> 0.43-0.45 / 0.56-0.57; float64 48 1.10-1.13 / 1.31 -> 0.93-0.94 / 1.16-1.17, 80
# 0.99-1.01 / 1.16-1.19 -> 0.77 / 0.97, 96 1.03 / 1.15 -> 0.85 / 1.00; other lengths, 100 and
# 127 among them, ran as fast or slower in long_rows).
cdef enum:
    SHORT_ROW = 128
    WHOLE_ROW = 32
    SHORT_BLOCK = 1024     # elements per block of short rows


cdef inline bint long_row(Py_ssize_t k, Py_ssize_t itemsize) noexcept nogil:
    """Whether rows of k values take long_rows (above), else blocks of rows (rows_stats)."""
    return k >= SHORT_ROW or (k >= WHOLE_ROW and k * itemsize % 64 == 0)


cdef inline Py_ssize_t rows_per_block(Py_ssize_t k, Py_ssize_t left) noexcept nogil:
    """How many of the ``left`` short rows of length k the next block of rows_stats takes."""
    return min(left, SHORT_BLOCK // k)


cdef void long_rows(const floating* z, floating* out, Py_ssize_t k, Py_ssize_t nrows, int kind,
                    const long long* labels, const floating* targets, double* terms,
                    floating inv_m) noexcept nogil:
    """The softmax family over a chunk's ``nrows`` contiguous long rows (long_row):
    each row's exps (row_stats, which takes the next row's max), then its finish of ``kind``,
    run in the next row's exp loop (the last row's after it). Cross-entropy (kind
    FO_FINISH_SCALE2) with class indices: the gradient's entry at each row's label and the
    loss terms; with probabilities (targets): each row finished at once (xent_finish)."""
    cdef floating m = row_max_numbers(z, k), m_next, a = 0, b = 0, p_label = 0
    cdef int pending = FO_FINISH_NONE
    cdef double s
    cdef Py_ssize_t r, last = nrows - 1
    cdef const floating* zr
    cdef floating* outr
    for r in range(nrows):
        zr = z + r * k
        outr = out + r * k
        s = row_stats(zr, outr, k, m, z + min(r + 1, last) * k, &m_next, pending,
                      zr - k if r else zr, outr - k if r else outr, a, b)
        if labels != NULL and r:         # the previous row's label entry, now it is scaled
            outr[labels[r - 1] - k] = (p_label - <floating>1) * inv_m
        if kind == FO_FINISH_LOG:
            a, b = m, logarithm(s, m)
        elif kind == FO_FINISH_SCALE:
            a = <floating>(1.0 / s)
        elif labels != NULL:            # as xent_finish: p at the label before the scaling
            a, b = <floating>(1.0 / s), inv_m
            p_label = outr[labels[r]] * a
            terms[r] = (zr[labels[r]] - m) - logarithm(s, m)
        else:
            terms[r] = xent_finish(zr, outr, k, m, s, -1, targets + r * k, inv_m)
        pending = kind if labels != NULL or targets == NULL else FO_FINISH_NONE
        m = m_next
    finish_row(pending, z + last * k, out + last * k, k, a, b)
    if labels != NULL:
        out[last * k + labels[last]] = (p_label - <floating>1) * inv_m


cdef void rows_stats(const floating* z, floating* e, Py_ssize_t k, Py_ssize_t nrows,
                     floating* mx, double* s) noexcept nogil:
    """mx = max(z), e = exp(z - mx) and s = sum(e) (summed as row_sum sums) of ``nrows``
    contiguous short rows (rows_per_block of them)."""
    cdef floating shift[SHORT_BLOCK]
    cdef Py_ssize_t r, i
    for r in range(nrows):
        mx[r] = row_max(z + r * k, k)
        for i in range(k):
            shift[r * k + i] = mx[r]
    exp_shifted(z, shift, 1, e, nrows * k)
    for r in range(nrows):
        s[r] = row_sum(e + r * k, k)


# The strided layout's sweeps run down a block's rows, which lie inner apart (the course's
# (classes, m): 16 KB for m = 4096 float32), too far apart for the hardware's prefetchers. Where
# the block is larger than the caches hold, each sweep fetches the lines of the row AHEAD rows
# on (for writing, where it writes). One thread, Zen 2, float32 over axis 0: (1000, 4096)
# softmax 6.5-6.9 -> 5.4-5.5 ms, log-softmax 6.8-7.1 -> 5.8-6.0, (4000, 1024) softmax 11.4-12.7
# -> 8.9-9.5. Smaller blocks fetch nothing ahead: (1000, 1000) and (100, 4096), from L3 and
# L2, had lost 5-16% with the prefetches. Nor do blocks whose rows are runs of AHEAD_MAX_RUN
# bytes or more, or the whole rows (column_width), which the hardware's prefetchers follow: this
# Intel VM, float32 over axis 0, medians of 7 (us, softmax), one thread (1000, 4096) 3813 ->
# 3018, (4000, 1024) 3092 -> 2347; two threads 1925 -> 1585 and 2104 -> 1986.
cdef enum:
    AHEAD = 16
    AHEAD_MIN_BYTES = 8 << 20
    AHEAD_MAX_RUN = 4096


cdef inline void prefetch_ahead(const floating* block, Py_ssize_t r, Py_ssize_t k,
                                Py_ssize_t inner, Py_ssize_t nbytes, bint write) noexcept nogil:
    """Fetch the first nbytes of row r + AHEAD of a (k, inner) block, if it has one, the
    block is AHEAD_MIN_BYTES or more and its rows are runs of fewer than AHEAD_MAX_RUN bytes
    (above)."""
    cdef Py_ssize_t b
    if (r + AHEAD >= k or k * inner * <Py_ssize_t>sizeof(floating) < AHEAD_MIN_BYTES
            or nbytes >= AHEAD_MAX_RUN or nbytes == inner * <Py_ssize_t>sizeof(floating)):
        return
    for b in range(0, nbytes, 64):
        if write:
            fo_prefetchw_at(block + (r + AHEAD) * inner, b)
        else:
            fo_prefetch_at(block + (r + AHEAD) * inner, b)


cdef void column_stats(const floating* z, floating* e, Py_ssize_t k, Py_ssize_t inner,
                       Py_ssize_t i0, Py_ssize_t i1, floating* mx, double* s) noexcept nogil:
    """row_stats for columns i0..i1-1 of a (k, inner) block (sums run down each column)."""
    cdef Py_ssize_t r, i
    for i in range(i0, i1):
        mx[i - i0] = z[i]
        s[i - i0] = 0
    for r in range(1, k):
        prefetch_ahead(z + i0, r, k, inner, (i1 - i0) * sizeof(floating), 0)
        for i in range(i0, i1):
            mx[i - i0] = max_nan(mx[i - i0], z[r * inner + i])
    for r in range(k):
        prefetch_ahead(z + i0, r, k, inner, (i1 - i0) * sizeof(floating), 0)
        prefetch_ahead(e + i0, r, k, inner, (i1 - i0) * sizeof(floating), 1)
        exp_shifted(z + r * inner + i0, mx, 1, e + r * inner + i0, i1 - i0)
        for i in range(i0, i1):
            s[i - i0] += e[r * inner + i]


cdef inline double normalizer(double s, bint log_) noexcept nogil:
    """What finish needs of a row's sum s = sum(exp(z - mx)): log(s), or 1 / s (softmax
    multiplies by the reciprocal, as torch does: one division per row, not per element)."""
    return log(s) if log_ else 1.0 / s


cdef inline floating finish(floating z, floating e, floating mx, double c,
                            bint log_) noexcept nogil:
    """softmax = e * (1 / s), or log-softmax = z - mx - log(s), in the data's dtype
    (c from normalizer): fo_row.h's finish of one element."""
    cdef floating cc = <floating>c
    if floating is float:
        if log_:
            return fo_finish_one_f(FO_FINISH_LOG, e, z, mx, cc)
        return fo_finish_one_f(FO_FINISH_SCALE, e, z, cc, cc)
    else:
        if log_:
            return fo_finish_one_d(FO_FINISH_LOG, e, z, mx, cc)
        return fo_finish_one_d(FO_FINISH_SCALE, e, z, cc, cc)


cdef inline double xent(floating z, floating* d, floating mx, double inv_s, double log_s,
                        floating t, floating inv_m) noexcept nogil:
    """Turn d (holding exp(z - mx)) into the gradient (p - t) / m; return t * log_softmax."""
    d[0] = xent_grad(d[0], inv_s, t, inv_m)
    return xent_term(z, mx, log_s, t)


cdef inline floating xent_grad(floating e, double inv_s, floating t,
                               floating inv_m) noexcept nogil:
    """(p - t) / m, p = e / s (e = exp(z - mx), inv_s = 1 / s)."""
    return (e * <floating>inv_s - t) * inv_m


cdef inline double xent_term(floating z, floating mx, double log_s, floating t) noexcept nogil:
    """t * log_softmax(z), 0 where t is 0 (whatever z is)."""
    if t != 0:
        return t * ((z - mx) - <floating>log_s)
    return 0.0


cdef void softmax_rows(const floating* z, floating* out, Py_ssize_t k, Py_ssize_t nrows,
                       bint log_) noexcept nogil:
    """Softmax of a chunk's ``nrows`` contiguous rows (short ones rows_per_block at a time)."""
    cdef floating mx[SHORT_BLOCK]
    cdef double s[SHORT_BLOCK]
    cdef Py_ssize_t o = 0, n, r
    if long_row(k, sizeof(floating)):
        long_rows(z, out, k, nrows, FO_FINISH_LOG if log_ else FO_FINISH_SCALE, NULL, NULL,
                  NULL, 0)
        return
    while o < nrows:
        n = rows_per_block(k, nrows - o)
        rows_stats(z + o * k, out + o * k, k, n, mx, s)
        for r in range(n):
            softmax_finish(z + (o + r) * k, out + (o + r) * k, k, mx[r], s[r], log_)
        o += n


cdef void softmax_finish(const floating* z, floating* out, Py_ssize_t k, floating mx, double s,
                         bint log_) noexcept nogil:
    """One row from its stats: out holds exp(z - mx), s its sum."""
    if log_:
        finish_row(FO_FINISH_LOG, z, out, k, mx, logarithm(s, mx))
    else:
        finish_row(FO_FINISH_SCALE, z, out, k, <floating>(1.0 / s), 0)


cdef void target_row(floating* d, const floating* t, floating rs, floating inv_m,
                     Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t r
    for r in range(k):
        d[r] = xent_grad(d[r], rs, t[r], inv_m)


cdef double target_loss(const floating* z, const floating* t, floating mx, floating ls,
                        Py_ssize_t k) noexcept nogil:
    """sum(t * log_softmax(z)) over the classes with t != 0 (float64, eight partial sums)."""
    cdef double acc[8]
    cdef Py_ssize_t r, j
    for j in range(8):
        acc[j] = 0
    for r in range(k):
        acc[r % 8] += t[r] * ((z[r] - mx) - ls) if t[r] != 0 else 0
    return sum8(acc)


cdef double xent_finish(const floating* z, floating* d, Py_ssize_t k, floating mx, double s,
                        long long label, const floating* target, floating inv_m) noexcept nogil:
    """One example from its stats (d holds exp(z - mx), s its sum): d = (softmax(z) - target)
    / m; returns sum(target * log_softmax(z)). ``target`` NULL means the one-hot of ``label``:
    then only the label's entry differs from p / m, and the loss term is that entry's
    log-probability."""
    cdef floating rs, ls, p_label
    rs = <floating>(1.0 / s)
    ls = logarithm(s, mx)
    if target != NULL:
        target_row(d, target, rs, inv_m, k)
        return target_loss(z, target, mx, ls, k)
    p_label = d[label] * rs
    finish_row(FO_FINISH_SCALE2, z, d, k, rs, inv_m)    # (p - 0) / m but at the label
    d[label] = (p_label - <floating>1) * inv_m     # (a bare 1 is Cython's 1.0: float64)
    return (z[label] - mx) - ls


# The strided layout's blocks of examples (columns): results do not depend on their width,
# each example's sums running down its own column. COLUMN_BLOCK columns, unless the (k, inner)
# block can be taken whole (inner <= PANEL_COLUMNS, a block for each thread at least): then each
# sweep streams it end to end, where rows of 1 KB with gaps between them, crowding into a few L2
# sets when inner is a power of two, ran from memory; or unless COLUMN_BLOCK columns of the k
# rows, z and out, overflow PANEL_CACHE_BYTES anyway: then longer runs of each row pay.
# float32 over axis 0, one thread, this Intel VM, medians of 9 (us; COLUMN_BLOCK -> the new
# width): (300, 1024) 182 -> 145, (1000, 1024) 1050 -> 641, (4000, 1024) 4360 -> 3144,
# (1000, 4096) 4387 -> 3772 (1024 columns), float64 (1000, 1024) 1954 -> 1332; (100, 4096) with
# 1024 columns would lose 4-11% (float64 432 -> 480: 1.6 MB of blocks), and keeps COLUMN_BLOCK.
# On 2 threads, whole blocks left one thread idle, and halves ran as slow as COLUMN_BLOCK.
cdef enum:
    COLUMN_BLOCK = 256   # columns per chunk in the strided layout
    PANEL_COLUMNS = 1024
    PANEL_CACHE_BYTES = 1 << 20


cdef void softmax_columns(const floating* z, floating* out, Py_ssize_t k, Py_ssize_t inner,
                          Py_ssize_t i0, Py_ssize_t i1, bint log_) noexcept nogil:
    """Softmax of the examples i0..i1-1 (columns) of one (k, inner) block."""
    cdef floating mx[PANEL_COLUMNS]
    cdef double s[PANEL_COLUMNS]
    cdef Py_ssize_t r, i
    column_stats(z, out, k, inner, i0, i1, mx, s)
    for i in range(i1 - i0):
        s[i] = normalizer(s[i], log_)
    for r in range(k):
        prefetch_ahead(out + i0, r, k, inner, (i1 - i0) * sizeof(floating), 1)
        for i in range(i0, i1):
            out[r * inner + i] = finish(z[r * inner + i], out[r * inner + i], mx[i - i0],
                                        s[i - i0], log_)


cdef void xent_columns(const floating* z, floating* dz, Py_ssize_t k, Py_ssize_t inner,
                       Py_ssize_t i0, Py_ssize_t i1, const long long* labels,
                       const floating* targets, floating inv_m, double* terms) noexcept nogil:
    """softmax_cross_entropy of the examples i0..i1-1 (columns) of one (k, inner) block:
    class indices ``labels`` (one per column) or probabilities ``targets`` (shaped like z)."""
    cdef floating mx[PANEL_COLUMNS]
    cdef double s[PANEL_COLUMNS]
    cdef double ls[PANEL_COLUMNS]
    cdef Py_ssize_t r, i
    column_stats(z, dz, k, inner, i0, i1, mx, s)
    for i in range(i1 - i0):
        ls[i] = normalizer(s[i], True)
        s[i] = normalizer(s[i], False)
    # The loss needs z at the label only, so the gradient's sweep does not read z (it had,
    # for every class). Float32 over axis 0, one thread, Zen 2: (1000, 4096) 8.6-8.9 -> 6.0-6.1
    # ms (7.8-7.9 with the prefetches alone), (100, 4096) 0.67-0.68 -> 0.50.
    if labels != NULL:
        for r in range(k):
            prefetch_ahead(dz + i0, r, k, inner, (i1 - i0) * sizeof(floating), 1)
            for i in range(i0, i1):
                dz[r * inner + i] = xent_grad(dz[r * inner + i], s[i - i0],
                                              1 if labels[i] == r else 0, inv_m)
        for i in range(i0, i1):
            terms[i] += xent_term(z[labels[i] * inner + i], mx[i - i0], ls[i - i0], 1)
        return
    for r in range(k):
        prefetch_ahead(z + i0, r, k, inner, (i1 - i0) * sizeof(floating), 0)
        prefetch_ahead(dz + i0, r, k, inner, (i1 - i0) * sizeof(floating), 1)
        prefetch_ahead(targets + i0, r, k, inner, (i1 - i0) * sizeof(floating), 0)
        for i in range(i0, i1):
            terms[i] += xent(z[r * inner + i], &dz[r * inner + i], mx[i - i0], s[i - i0],
                             ls[i - i0], targets[r * inner + i], inv_m)


ctypedef struct SMJob:
    bint is32
    bint log_
    const void* z
    void* out
    Py_ssize_t outer, k, inner, nblk
    Py_ssize_t width           # examples per block of columns (inner > 1: column_width)
    Py_ssize_t per_chunk       # rows per chunk (inner == 1)
    const long long* labels    # softmax_cross_entropy: class indices (outer, inner) or NULL,
    const void* targets        # then probabilities shaped like z
    double inv_m
    double* terms              # each example's loss term


cdef inline Py_ssize_t column_width(const SMJob* j, int nt) noexcept nogil:
    """The examples per block of the strided layout (COLUMN_BLOCK's comment)."""
    cdef Py_ssize_t itemsize = sizeof(float) if j.is32 else sizeof(double)
    if j.inner <= PANEL_COLUMNS and j.outer >= nt:
        return j.inner
    if j.inner > PANEL_COLUMNS and 2 * j.k * COLUMN_BLOCK * itemsize > PANEL_CACHE_BYTES:
        return PANEL_COLUMNS
    return COLUMN_BLOCK


cdef void sm_rows(void* ctx, Py_ssize_t chunk) noexcept nogil:
    cdef SMJob* j = <SMJob*>ctx
    cdef Py_ssize_t o = chunk * j.per_chunk, n = min(j.per_chunk, j.outer - o)
    if j.is32:
        softmax_rows(<const float*>j.z + o * j.k, <float*>j.out + o * j.k, j.k, n, j.log_)
    else:
        softmax_rows(<const double*>j.z + o * j.k, <double*>j.out + o * j.k, j.k, n, j.log_)


cdef void sm_columns(void* ctx, Py_ssize_t t) noexcept nogil:
    cdef SMJob* j = <SMJob*>ctx
    cdef Py_ssize_t o = t // j.nblk, i0 = (t % j.nblk) * j.width
    cdef Py_ssize_t i1 = min(i0 + j.width, j.inner), off = o * j.k * j.inner
    if j.is32:
        softmax_columns(<const float*>j.z + off, <float*>j.out + off, j.k, j.inner, i0, i1,
                        j.log_)
    else:
        softmax_columns(<const double*>j.z + off, <double*>j.out + off, j.k, j.inner, i0, i1,
                        j.log_)


cdef void xent_rows(void* ctx, Py_ssize_t chunk) noexcept nogil:
    cdef SMJob* j = <SMJob*>ctx
    cdef Py_ssize_t o = chunk * j.per_chunk, n = min(j.per_chunk, j.outer - o)
    if j.is32:
        xent_chunk(j, <const float*>j.z, <float*>j.out, <const float*>j.targets, o, n,
                   <float>j.inv_m)
    else:
        xent_chunk(j, <const double*>j.z, <double*>j.out, <const double*>j.targets, o, n,
                   j.inv_m)


cdef void xent_chunk(SMJob* j, const floating* z, floating* out, const floating* targets,
                     Py_ssize_t o0, Py_ssize_t nrows, floating inv_m) noexcept nogil:
    """softmax_cross_entropy of a chunk's rows o0..o0+nrows-1 (short ones rows_per_block at a
    time)."""
    cdef floating mx[SHORT_BLOCK]
    cdef double s[SHORT_BLOCK]
    cdef Py_ssize_t o = o0, end = o0 + nrows, n, r, off
    if long_row(j.k, sizeof(floating)):
        long_rows(z + o0 * j.k, out + o0 * j.k, j.k, nrows, FO_FINISH_SCALE2,
                  j.labels + o0 if j.labels != NULL else NULL,
                  targets_at(targets, j.labels, o0 * j.k), j.terms + o0, inv_m)
        return
    while o < end:
        n = rows_per_block(j.k, end - o)
        rows_stats(z + o * j.k, out + o * j.k, j.k, n, mx, s)
        for r in range(n):
            off = (o + r) * j.k
            j.terms[o + r] = xent_finish(z + off, out + off, j.k, mx[r], s[r],
                                         j.labels[o + r] if j.labels != NULL else -1,
                                         targets_at(targets, j.labels, off), inv_m)
        o += n


cdef inline const floating* targets_at(const floating* targets, const long long* labels,
                                       Py_ssize_t offset) noexcept nogil:
    """The probabilities from ``offset`` on, or NULL when the labels are class indices."""
    return targets + offset if labels == NULL else NULL


cdef void xent_cols(void* ctx, Py_ssize_t t) noexcept nogil:
    cdef SMJob* j = <SMJob*>ctx
    cdef Py_ssize_t o = t // j.nblk, i0 = (t % j.nblk) * j.width
    cdef Py_ssize_t i1 = min(i0 + j.width, j.inner), off = o * j.k * j.inner
    cdef const long long* lab = j.labels + o * j.inner if j.labels != NULL else NULL
    if j.is32:
        xent_columns(<const float*>j.z + off, <float*>j.out + off, j.k, j.inner, i0, i1, lab,
                     targets_at(<const float*>j.targets, j.labels, off), <float>j.inv_m,
                     j.terms + o * j.inner)
    else:
        xent_columns(<const double*>j.z + off, <double*>j.out + off, j.k, j.inner, i0, i1,
                     lab, targets_at(<const double*>j.targets, j.labels, off), j.inv_m,
                     j.terms + o * j.inner)


# The softmax family's calls go parallel from SOFTMAX_PARALLEL_MIN elements (a row costs
# exps: ~0.35 ns/element, so 8192 elements are ~3 us of work, past the pool's ~1 us), in at
# least SPLIT_CHUNKS chunks per thread (items_per_chunk). float32, 2 threads, this Intel VM,
# medians of calls back to back through fastopt.layers.softmax: (64, 1000) 25.8 -> 15.3 us,
# (32, 1000) 15.3 -> 10.2, (16, 1000) 9.3 -> 8.0, (100, 100) 9.8 -> 7.8 (torch.softmax 17.8,
# 10.1, 6.0, 5.4).
cdef enum:
    SOFTMAX_PARALLEL_MIN = 1 << 13


# A chunk's first row takes its max in a pass of its own, the others in the previous row's exp
# loop (row_stats), so a chunk takes LONG_ROWS_PER_CHUNK rows where CHUNK_ELEMENTS holds fewer
# (if each thread still gets SPLIT_CHUNKS chunks), not one or two: (256, 32000) float32 softmax,
# 2 threads, alternated processes, medians of three, 1.38 -> 1.31x the roofline, cross-entropy
# 1.42 -> 1.36.
cdef enum:
    LONG_ROWS_PER_CHUNK = 8


cdef void run_softmax(fo_chunk_fn rows, fo_chunk_fn columns, SMJob* job) noexcept nogil:
    """rows over chunks of whole examples (inner == 1: items_per_chunk), else columns over
    blocks of column_width examples."""
    cdef Py_ssize_t n = job.outer * job.k * job.inner
    cdef int nt = fastopt_get_num_threads() if n >= SOFTMAX_PARALLEL_MIN else 1
    if job.inner == 1:
        job.per_chunk = max(items_per_chunk(job.outer, job.k, nt),
                            min(LONG_ROWS_PER_CHUNK,
                                (job.outer + SPLIT_CHUNKS * nt - 1) // (SPLIT_CHUNKS * nt)))
        fo_pool_run(rows, <void*>job, (job.outer + job.per_chunk - 1) // job.per_chunk, nt)
    else:
        job.width = column_width(job, nt)
        job.nblk = (job.inner + job.width - 1) // job.width
        fo_pool_run(columns, <void*>job, job.outer * job.nblk, nt)


cdef SMJob softmax_job(const floating* z, floating* out, Py_ssize_t outer, Py_ssize_t k,
                       Py_ssize_t inner) noexcept nogil:
    cdef SMJob job
    memset(&job, 0, sizeof(job))
    job.is32 = floating is float
    job.z = z
    job.out = out
    job.outer = outer
    job.k = k
    job.inner = inner
    return job


def softmax(const floating[:, :, ::1] z, floating[:, :, ::1] out, bint log):
    cdef Py_ssize_t outer = z.shape[0], k = z.shape[1], inner = z.shape[2]
    if k == 0 or outer * inner == 0:
        return
    cdef SMJob job = softmax_job(&z[0, 0, 0], &out[0, 0, 0], outer, k, inner)
    job.log_ = log
    with nogil:
        run_softmax(sm_rows, sm_columns, &job)


def softmax_cross_entropy(const floating[:, :, ::1] z, labels, targets,
                          floating[:, :, ::1] dz):
    """Fused: per example one pass for the max, one that writes exp(z - max) into dz and sums
    it, and one that turns dz into the gradient while collecting the loss term. Loss terms are
    kept per example and summed in example order, so the loss does not depend on threads."""
    cdef Py_ssize_t outer = z.shape[0], k = z.shape[1], inner = z.shape[2]
    cdef Py_ssize_t m = outer * inner
    cdef const long long[:, ::1] lab
    cdef const floating[:, :, ::1] tgt
    if m == 0 or k == 0:    # a mean over no examples is NaN (as torch's); no classes sum to 0
        return float("nan") if m == 0 else 0.0
    terms_arr = np.zeros(m)
    cdef double[::1] terms = terms_arr
    cdef SMJob job = softmax_job(&z[0, 0, 0], &dz[0, 0, 0], outer, k, inner)
    job.inv_m = <floating>(1.0 / m)
    job.terms = &terms[0]
    if labels is not None:
        lab = labels
        job.labels = &lab[0, 0]
    else:
        tgt = targets
        job.targets = &tgt[0, 0, 0]
    with nogil:
        run_softmax(xent_rows, xent_cols, &job)
    return (0.0 - row_sum(&terms[0], m)) / m     # (a zero loss is +0.0, as torch's)
