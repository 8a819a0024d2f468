# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Cython layer kernels: batch normalization and the softmax family. Signatures and formulas:
fastopt/reference/layers.py.

Work is split over features, fixed blocks of rows (batch norm with features as columns) or
examples (softmax), and every sum is taken in one fixed order (eight interleaved float64
partial sums then a fixed pairwise combine along a row; per-block partial sums combined in
block order across rows), so results are bit-identical for any thread count. exp is computed on
whole vectors by fo_vexpf/fo_vexp below (< 1 ulp, branch-free).
"""
from cython.parallel cimport prange
from libc.math cimport log, sqrt
from libc.stdlib cimport free, malloc

import numpy as np

include "_common.pxi"

cdef extern from "fo_vexp.h":
    void fo_exp_shifted_f(const float* z, const float* m, int m_step, float* e,
                          Py_ssize_t n) nogil
    void fo_exp_shifted_d(const double* z, const double* m, int m_step, double* e,
                          Py_ssize_t n) nogil


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
    cdef double acc[8]
    cdef Py_ssize_t i, j, n8 = n - n % 8
    for j in range(8):
        acc[j] = 0
    for i in range(0, n8, 8):
        for j in range(8):
            acc[j] += x[i + j]
    for i in range(n8, n):
        acc[i - n8] += x[i]
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
# reliably; it did not vectorize the same loops written on memoryviews inside prange bodies).
cdef enum:
    ROW_BLOCK = 64       # rows per partial sum when each feature is a column (axis 0)


# The axis-0 sums take four rows (a stride C apart) per sweep of the partial sums: a quarter
# of the loads and stores of the accumulators, which bound these loops. Rows are always
# grouped the same way (fours from the start of each fixed block, then single rows).
cdef void add_row(const floating* x, double* acc, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(n):
        acc[c] += x[c]


cdef void add_4rows(const floating* x, Py_ssize_t C, double* acc, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(n):
        acc[c] += (<double>x[c] + x[C + c]) + (<double>x[2 * C + c] + x[3 * C + c])


cdef void add_centred_sq(const floating* x, const double* mean, double* acc,
                         Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t c
    cdef double d
    for c in range(n):
        d = x[c] - mean[c]
        acc[c] += d * d


cdef void add_4centred_sq(const floating* x, Py_ssize_t C, const double* mean, double* acc,
                          Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t c
    cdef double d0, d1, d2, d3
    for c in range(n):
        d0 = x[c] - mean[c]
        d1 = x[C + c] - mean[c]
        d2 = x[2 * C + c] - mean[c]
        d3 = x[3 * C + c] - mean[c]
        acc[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)


cdef void add_grads(const floating* dy, const floating* x, const double* mean, double* db,
                    double* dgc, Py_ssize_t n) noexcept nogil:
    """db += dy, dgc += dy * (x - mean): dgamma = inv_std * sum(dy * (x - mean))."""
    cdef Py_ssize_t c
    for c in range(n):
        db[c] += dy[c]
        dgc[c] += dy[c] * (x[c] - mean[c])


cdef void add_4grads(const floating* dy, const floating* x, Py_ssize_t C, const double* mean,
                     double* db, double* dgc, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(n):
        db[c] += (<double>dy[c] + dy[C + c]) + (<double>dy[2 * C + c] + dy[3 * C + c])
        dgc[c] += ((dy[c] * (x[c] - mean[c]) + dy[C + c] * (x[C + c] - mean[c]))
                   + (dy[2 * C + c] * (x[2 * C + c] - mean[c])
                      + dy[3 * C + c] * (x[3 * C + c] - mean[c])))


cdef void apply_row(const floating* x, floating* y, const double* mean, const double* scale,
                    const double* beta, Py_ssize_t n) noexcept nogil:
    """One example (axis 0): per-feature shift and scale, in float64, rounded once."""
    cdef Py_ssize_t c
    for c in range(n):
        y[c] = <floating>((x[c] - mean[c]) * scale[c] + beta[c])


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
                     double gamma, double inv_std, double db, double dg,
                     Py_ssize_t n) noexcept nogil:
    """One feature (axis 1): dx_row with scalars (its coefficients are locals of the calling
    thread here)."""
    cdef Py_ssize_t i
    cdef double k_dy, k_x, k_0
    dx_coefficients(gamma, inv_std, db, dg, n, &k_dy, &k_x, &k_0)
    for i in range(n):
        dx[i] = <floating>(k_dy * dy[i] - k_x * (x[i] - mean) - k_0)


cdef inline void dx_coefficients(double gamma, double inv_std, double db, double dg, double cnt,
                                 double* k_dy, double* k_x, double* k_0) noexcept nogil:
    """(gamma * inv_std / N) * (N * dy - db - xhat * dg) with xhat = (x - mean) * inv_std,
    distributed over its three terms."""
    cdef double coef = gamma * inv_std / cnt
    k_dy[0] = gamma * inv_std
    k_x[0] = coef * inv_std * dg
    k_0[0] = coef * db


cdef void row_grad_sums(const floating* dy, const floating* x, Py_ssize_t n, double mean,
                        double* db, double* dgc) noexcept nogil:
    """db = sum(dy), dgc = sum(dy * (x - mean)) over one row, eight interleaved float64 sums
    each (a function of its own: its accumulators are private to the calling thread)."""
    cdef double acc_b[8]
    cdef double acc_g[8]
    cdef Py_ssize_t i, j, n8 = n - n % 8
    for j in range(8):
        acc_b[j] = 0
        acc_g[j] = 0
    for i in range(0, n8, 8):
        for j in range(8):
            acc_b[j] += dy[i + j]
            acc_g[j] += dy[i + j] * (x[i + j] - mean)
    for i in range(n8, n):
        acc_b[i - n8] += dy[i]
        acc_g[i - n8] += dy[i] * (x[i] - mean)
    db[0] = sum8(acc_b)
    dgc[0] = sum8(acc_g)


def batchnorm_stats(const floating[:, ::1] x, int axis, double eps, double[::1] mean,
                    double[::1] inv_std):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], n, c, f, blk, nb, end
    cdef int nt = threads_for(N * C)
    cdef const floating* xp = &x[0, 0] if N * C else NULL
    cdef double* mp = &mean[0]
    cdef double* sp = &inv_std[0]
    if axis == 1:                      # each feature a contiguous row of length C
        for f in prange(N, schedule="static", num_threads=nt, nogil=True):
            mp[f] = row_sum(xp + f * C, C) / C
            sp[f] = 1.0 / sqrt(row_centred_sq(xp + f * C, C, mp[f]) / C + eps)
        return
    # rows streamed whole (contiguous, prefetch-friendly) into per-block partial sums; the
    # blocks are a fixed partition of the rows, combined in block order, so the result does
    # not depend on the thread count
    nb = (N + ROW_BLOCK - 1) // ROW_BLOCK
    part_arr = np.zeros((nb, C))
    cdef double[:, ::1] part = part_arr
    cdef double* pp = &part[0, 0]
    for blk in prange(nb, schedule="static", num_threads=nt, nogil=True):
        n = blk * ROW_BLOCK
        end = min(n + ROW_BLOCK, N)
        while n + 4 <= end:
            add_4rows(xp + n * C, C, pp + blk * C, C)
            n = n + 4
        while n < end:
            add_row(xp + n * C, pp + blk * C, C)
            n = n + 1
    combine_blocks(pp, nb, C, mp, N)
    part_arr[...] = 0
    for blk in prange(nb, schedule="static", num_threads=nt, nogil=True):
        n = blk * ROW_BLOCK
        end = min(n + ROW_BLOCK, N)
        while n + 4 <= end:
            add_4centred_sq(xp + n * C, C, mp, pp + blk * C, C)
            n = n + 4
        while n < end:
            add_centred_sq(xp + n * C, mp, pp + blk * C, C)
            n = n + 1
    combine_blocks(pp, nb, C, sp, N)
    for c in range(C):
        sp[c] = 1.0 / sqrt(sp[c] + eps)


cdef void combine_blocks(const double* part, Py_ssize_t nb, Py_ssize_t C, double* out,
                         Py_ssize_t N) noexcept nogil:
    """out[c] = (sum over the blocks, in block order, of part[b, c]) / N."""
    cdef Py_ssize_t b, c
    for c in range(C):
        out[c] = part[c]
    for b in range(1, nb):
        for c in range(C):
            out[c] += part[b * C + c]
    for c in range(C):
        out[c] = out[c] / N


def batchnorm_apply(const floating[:, ::1] x, int axis, const floating[::1] gamma,
                    const floating[::1] beta, const double[::1] mean,
                    const double[::1] inv_std, floating[:, ::1] y):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], n, f
    cdef Py_ssize_t F = N if axis == 1 else C
    cdef int nt = threads_for(N * C)
    if N * C == 0:
        return
    scale_arr, beta_arr = np.empty(F), np.asarray(beta, dtype=np.float64)
    cdef double[::1] scale = scale_arr
    cdef const double[::1] b64 = beta_arr
    for f in range(F):
        scale[f] = gamma[f] * inv_std[f]
    cdef const floating* xp = &x[0, 0]
    cdef floating* yp = &y[0, 0]
    cdef const double* mp = &mean[0]
    cdef double* cp = &scale[0]
    cdef const double* bp = &b64[0]
    # in float64, rounded once: a float32 mean of data around 1e4 would cost 4 digits
    if axis == 1:
        for f in prange(N, schedule="static", num_threads=nt, nogil=True):
            apply_feature(xp + f * C, yp + f * C, mp[f], cp[f], bp[f], C)
        return
    # whole rows, streamed in order (column blocks of a wide x start every row segment on
    # a cold page: 20% slower than keeping the per-feature arrays in L2)
    for n in prange(N, schedule="static", num_threads=nt, nogil=True):
        apply_row(xp + n * C, yp + n * C, mp, cp, bp, C)


def batchnorm_backward(const floating[:, ::1] dy, const floating[:, ::1] x, int axis,
                       const floating[::1] gamma, const double[::1] mean,
                       const double[::1] inv_std, floating[:, ::1] dx,
                       double[::1] dgamma, double[::1] dbeta):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], n, c, f, blk, nb, end
    cdef int nt = threads_for(N * C)
    if N * C == 0:
        return
    cdef const floating* dyp = &dy[0, 0]
    cdef const floating* xp = &x[0, 0]
    cdef floating* dxp = &dx[0, 0]
    cdef const double* mp = &mean[0]
    cdef const double* sp = &inv_std[0]
    cdef double* gp = &dgamma[0]
    cdef double* bp = &dbeta[0]
    if axis == 1:                      # features are rows: reduce along each row
        for f in prange(N, schedule="static", num_threads=nt, nogil=True):
            row_grad_sums(dyp + f * C, xp + f * C, C, mp[f], bp + f, gp + f)
            gp[f] = gp[f] * sp[f]
            dx_feature(dyp + f * C, xp + f * C, dxp + f * C, mp[f], gamma[f], sp[f], bp[f],
                       gp[f], C)
        return
    nb = (N + ROW_BLOCK - 1) // ROW_BLOCK
    part_arr = np.zeros((2, nb, C))
    cdef double[:, :, ::1] part = part_arr
    cdef double* pb = &part[0, 0, 0]
    cdef double* pg = &part[1, 0, 0]
    for blk in prange(nb, schedule="static", num_threads=nt, nogil=True):
        n = blk * ROW_BLOCK
        end = min(n + ROW_BLOCK, N)
        while n + 4 <= end:
            add_4grads(dyp + n * C, xp + n * C, C, mp, pb + blk * C, pg + blk * C, C)
            n = n + 4
        while n < end:
            add_grads(dyp + n * C, xp + n * C, mp, pb + blk * C, pg + blk * C, C)
            n = n + 1
    combine_blocks(pb, nb, C, bp, 1)
    combine_blocks(pg, nb, C, gp, 1)
    coef_arr = np.empty((3, C))
    cdef double[:, ::1] coef = coef_arr
    for c in range(C):
        gp[c] = gp[c] * sp[c]
        dx_coefficients(gamma[c], sp[c], bp[c], gp[c], N, &coef[0, c], &coef[1, c],
                        &coef[2, c])
    cdef double* kd = &coef[0, 0]
    cdef double* kx = &coef[1, 0]
    cdef double* k0 = &coef[2, 0]
    for n in prange(N, schedule="static", num_threads=nt, nogil=True):
        dx_row(dyp + n * C, xp + n * C, dxp + n * C, mp, kd, kx, k0, C)


# --------------------------------------------------------------------------------- softmax
# A "row" is one example's k logits, contiguous (the normalized axis is last). In the strided
# layout (outer, k, inner) each example is a column of a (k, inner) block; those are handled a
# block of columns at a time so that the inner loops run along memory and vectorize.
cdef extern from "fo_row_max.h":
    float fo_row_max_f(const float* z, Py_ssize_t k) nogil
    double fo_row_max_d(const double* z, Py_ssize_t k) nogil


cdef inline floating row_max(const floating* z, Py_ssize_t k) noexcept nogil:
    """max(z), NaN if z holds one."""
    if floating is float:
        return fo_row_max_f(z, k)
    else:
        return fo_row_max_d(z, k)


cdef void row_stats(const floating* z, floating* e, Py_ssize_t k, floating* mx,
                    double* s) noexcept nogil:
    """mx = max(z) (NaN wins), e = exp(z - mx), s = sum(e) in float64."""
    cdef floating m = row_max(z, k)
    exp_shifted(z, &m, 0, e, k)
    mx[0] = m
    s[0] = row_sum(e, k)


cdef void column_stats(const floating* z, floating* e, Py_ssize_t k, Py_ssize_t inner,
                       Py_ssize_t i0, Py_ssize_t i1, floating* mx, double* s) noexcept nogil:
    """row_stats for columns i0..i1-1 of a (k, inner) block (sums run down each column)."""
    cdef Py_ssize_t r, i
    for i in range(i0, i1):
        mx[i - i0] = z[i]
        s[i - i0] = 0
    for r in range(1, k):
        for i in range(i0, i1):
            mx[i - i0] = max_nan(mx[i - i0], z[r * inner + i])
    for r in range(k):
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
    (c from normalizer)."""
    if log_:
        return (z - mx) - <floating>c
    return e * <floating>c


cdef inline double xent(floating z, floating* d, floating mx, double inv_s, double log_s,
                        floating t, floating inv_m) noexcept nogil:
    """Turn d (holding exp(z - mx)) into the gradient (p - t) / m; return t * log_softmax."""
    d[0] = (d[0] * <floating>inv_s - t) * inv_m
    if t != 0:
        return t * ((z - mx) - <floating>log_s)
    return 0.0


cdef void softmax_row(const floating* z, floating* out, Py_ssize_t k, bint log_) noexcept nogil:
    cdef floating mx, d
    cdef double s
    cdef Py_ssize_t r
    row_stats(z, out, k, &mx, &s)
    if log_:
        d = logarithm(s, mx)
        for r in range(k):
            out[r] = (z[r] - mx) - d
    else:
        d = <floating>(1.0 / s)
        for r in range(k):
            out[r] = out[r] * d


cdef void scale_row(floating* d, floating rs, floating inv_m, Py_ssize_t k) noexcept nogil:
    """d = (d * rs) * inv_m: the gradient (p - 0) / m of every class but the label's."""
    cdef Py_ssize_t r
    for r in range(k):
        d[r] = (d[r] * rs) * inv_m


cdef void target_row(floating* d, const floating* t, floating rs, floating inv_m,
                     Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t r
    for r in range(k):
        d[r] = (d[r] * rs - t[r]) * inv_m


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


cdef double xent_row(const floating* z, floating* d, Py_ssize_t k, long long label,
                     const floating* target, floating inv_m) noexcept nogil:
    """One example: d = (softmax(z) - target) / m; returns sum(target * log_softmax(z)).
    ``target`` NULL means the one-hot of ``label``: then only the label's entry differs from
    p / m, and the loss term is that entry's log-probability."""
    cdef floating mx, rs, ls, p_label
    cdef double s
    row_stats(z, d, k, &mx, &s)
    rs = <floating>(1.0 / s)
    ls = logarithm(s, mx)
    if target != NULL:
        target_row(d, target, rs, inv_m, k)
        return target_loss(z, target, mx, ls, k)
    p_label = d[label] * rs
    scale_row(d, rs, inv_m, k)
    d[label] = (p_label - 1) * inv_m
    return (z[label] - mx) - ls


cdef enum:
    COLUMN_BLOCK = 256   # columns per task in the strided layout


def softmax(const floating[:, :, ::1] z, floating[:, :, ::1] out, bint log):
    cdef Py_ssize_t outer = z.shape[0], k = z.shape[1], inner = z.shape[2]
    cdef Py_ssize_t o, r, i, t, i0, i1, nblk
    cdef int nt = threads_for(outer * k * inner)
    cdef floating* mx
    cdef double* s
    cdef int failed = 0
    if k == 0 or outer * inner == 0:
        return
    if inner == 1:
        for o in prange(outer, schedule="static", num_threads=nt, nogil=True):
            softmax_row(&z[o, 0, 0], &out[o, 0, 0], k, log)
        return
    nblk = (inner + COLUMN_BLOCK - 1) // COLUMN_BLOCK
    for t in prange(outer * nblk, schedule="static", num_threads=nt, nogil=True):
        mx = <floating*>malloc(COLUMN_BLOCK * sizeof(floating))
        s = <double*>malloc(COLUMN_BLOCK * sizeof(double))
        if mx != NULL and s != NULL:
            o = t // nblk
            i0 = (t % nblk) * COLUMN_BLOCK
            i1 = min(i0 + COLUMN_BLOCK, inner)
            column_stats(&z[o, 0, 0], &out[o, 0, 0], k, inner, i0, i1, mx, s)
            for i in range(i1 - i0):
                s[i] = normalizer(s[i], log)
            for r in range(k):
                for i in range(i0, i1):
                    out[o, r, i] = finish(z[o, r, i], out[o, r, i], mx[i - i0], s[i - i0],
                                          log)
        else:
            failed += 1
        free(mx)
        free(s)
    if failed:
        raise MemoryError("softmax: no memory for the per-block column statistics")


def softmax_cross_entropy(const floating[:, :, ::1] z, labels, targets,
                          floating[:, :, ::1] dz):
    """Fused: per example one pass for the max, one that writes exp(z - max) into dz and sums
    it, and one that turns dz into the gradient while collecting the loss term. Loss terms are
    kept per example and summed in example order, so the loss does not depend on threads."""
    cdef Py_ssize_t outer = z.shape[0], k = z.shape[1], inner = z.shape[2]
    cdef Py_ssize_t m = outer * inner, o, r, i, t, i0, i1, nblk
    cdef int nt = threads_for(outer * k * inner)
    cdef floating inv_m
    cdef floating tv
    cdef floating* mx
    cdef double* s
    cdef double* ls
    cdef int failed = 0
    cdef bint by_index = labels is not None
    cdef const long long[:, ::1] lab
    cdef const floating[:, :, ::1] tgt
    if m == 0 or k == 0:
        return 0.0
    inv_m = <floating>(1.0 / m)
    terms_arr = np.zeros(m)
    cdef double[::1] terms = terms_arr
    if by_index:
        lab = labels
    else:
        tgt = targets
    if inner == 1:
        for o in prange(outer, schedule="static", num_threads=nt, nogil=True):
            terms[o] = xent_row(&z[o, 0, 0], &dz[o, 0, 0], k, lab[o, 0] if by_index else -1,
                                <const floating*>NULL if by_index else &tgt[o, 0, 0],
                                inv_m)
    else:
        nblk = (inner + COLUMN_BLOCK - 1) // COLUMN_BLOCK
        for t in prange(outer * nblk, schedule="static", num_threads=nt, nogil=True):
            mx = <floating*>malloc(COLUMN_BLOCK * sizeof(floating))
            s = <double*>malloc(COLUMN_BLOCK * sizeof(double))
            ls = <double*>malloc(COLUMN_BLOCK * sizeof(double))
            if mx != NULL and s != NULL and ls != NULL:
                o = t // nblk
                i0 = (t % nblk) * COLUMN_BLOCK
                i1 = min(i0 + COLUMN_BLOCK, inner)
                column_stats(&z[o, 0, 0], &dz[o, 0, 0], k, inner, i0, i1, mx, s)
                for i in range(i1 - i0):
                    ls[i] = normalizer(s[i], True)
                    s[i] = normalizer(s[i], False)
                for r in range(k):
                    for i in range(i0, i1):
                        tv = (1 if lab[o, i] == r else 0) if by_index else tgt[o, r, i]
                        terms[o * inner + i] += xent(z[o, r, i], &dz[o, r, i], mx[i - i0],
                                                     s[i - i0], ls[i - i0], tv, inv_m)
            else:
                failed += 1
            free(mx)
            free(s)
            free(ls)
        if failed:
            raise MemoryError("softmax_cross_entropy: no memory for the column statistics")
    return -row_sum(&terms[0], m) / m
