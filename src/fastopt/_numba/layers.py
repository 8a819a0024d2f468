"""Numba layer kernels, mirroring fastopt/_kernels/layers.pyx: the same signatures, the same
split of work (over features or rows, never inside a reduction) and the same fixed summation
orders (eight interleaved float64 partial sums per contiguous row; per-block partial sums over
fixed blocks of 64 rows, combined in block order, when features are columns)."""
import math

import numba
import numpy as np
from numba import prange

from ._common import JIT, max_nan, use_threads

_PAR = dict(JIT, parallel=True)


@numba.njit(inline="always", **JIT)
def _sum8(acc):
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


@numba.njit(**JIT)
def _row_sum(x):
    acc = np.zeros(8)
    n8 = x.size - x.size % 8
    for i in range(0, n8, 8):
        for j in range(8):
            acc[j] += x[i + j]
    for i in range(n8, x.size):
        acc[i - n8] += x[i]
    return _sum8(acc)


@numba.njit(**JIT)
def _row_centred_sq(x, mean):
    acc = np.zeros(8)
    n8 = x.size - x.size % 8
    for i in range(0, n8, 8):
        for j in range(8):
            d = x[i + j] - mean
            acc[j] += d * d
    for i in range(n8, x.size):
        d = x[i] - mean
        acc[i - n8] += d * d
    return _sum8(acc)


# ------------------------------------------------------------------------------ batch norm
@numba.njit(**_PAR)
def _stats_rows(x, eps, mean, inv_std):          # each feature a contiguous row
    for f in prange(x.shape[0]):
        mean[f] = _row_sum(x[f]) / x.shape[1]
        inv_std[f] = 1.0 / math.sqrt(_row_centred_sq(x[f], mean[f]) / x.shape[1] + eps)


_ROW_BLOCK = 64     # rows per partial sum when each feature is a column (as the Cython kernels)


@numba.njit(**JIT)
def _combine_blocks(part, out, n):
    """out[c] = (sum over the blocks, in block order, of part[b, c]) / n."""
    out[:] = part[0]
    for b in range(1, part.shape[0]):
        for c in range(part.shape[1]):
            out[c] += part[b, c]
    for c in range(part.shape[1]):
        out[c] = out[c] / n


@numba.njit(**_PAR)
def _block_sums(x, mean, part):
    """part[b] = sum over block b's rows of x (mean None) or of (x - mean)^2: whole rows
    streamed in order, blocks split over threads."""
    N, C = x.shape
    for blk in prange(part.shape[0]):
        for n in range(blk * _ROW_BLOCK, min(blk * _ROW_BLOCK + _ROW_BLOCK, N)):
            if mean is None:
                for c in range(C):
                    part[blk, c] += x[n, c]
            else:
                for c in range(C):
                    d = x[n, c] - mean[c]
                    part[blk, c] += d * d


def _stats_cols(x, eps, mean, inv_std):          # each feature a column
    N, C = x.shape
    part = np.zeros(((N + _ROW_BLOCK - 1) // _ROW_BLOCK, C))
    _block_sums(x, None, part)
    _combine_blocks(part, mean, N)
    part[...] = 0
    _block_sums(x, mean, part)
    _combine_blocks(part, inv_std, N)
    inv_std[...] = 1.0 / np.sqrt(inv_std + eps)


def batchnorm_stats(x, axis, eps, mean, inv_std):
    use_threads(x.size)
    (_stats_rows if axis == 1 else _stats_cols)(x, eps, mean, inv_std)


@numba.njit(**_PAR)
def _apply(x, axis, beta, mean, scale, y):
    N, C = x.shape
    if axis == 1:
        for f in prange(N):
            for c in range(C):
                y[f, c] = (x[f, c] - mean[f]) * scale[f] + beta[f]
    else:
        for n in prange(N):
            for c in range(C):
                y[n, c] = (x[n, c] - mean[c]) * scale[c] + beta[c]


def batchnorm_apply(x, axis, gamma, beta, mean, inv_std, y):
    # in float64 (mean, scale and beta are float64), rounded once when stored into y
    use_threads(x.size)
    _apply(x, axis, beta.astype(np.float64), mean, gamma.astype(np.float64) * inv_std, y)


@numba.njit(inline="always", **JIT)
def _dx_coefficients(gamma, inv_std, db, dg, cnt):
    """(k_dy, k_x, k_0) of dx = k_dy * dy - k_x * (x - mean) - k_0."""
    coef = gamma * inv_std / cnt
    return gamma * inv_std, coef * inv_std * dg, coef * db


@numba.njit(**_PAR)
def _backward_rows(dy, x, gamma, mean, inv_std, dx, dgamma, dbeta):
    F, C = x.shape
    for f in prange(F):
        acc_b = np.zeros(8)
        acc_g = np.zeros(8)
        n8 = C - C % 8
        for i in range(0, n8, 8):
            for j in range(8):
                acc_b[j] += dy[f, i + j]
                acc_g[j] += dy[f, i + j] * (x[f, i + j] - mean[f])
        for i in range(n8, C):
            acc_b[i - n8] += dy[f, i]
            acc_g[i - n8] += dy[f, i] * (x[f, i] - mean[f])
        db = _sum8(acc_b)
        dg = _sum8(acc_g) * inv_std[f]
        dbeta[f] = db
        dgamma[f] = dg
        k_dy, k_x, k_0 = _dx_coefficients(gamma[f], inv_std[f], db, dg, float(C))
        for i in range(C):
            dx[f, i] = k_dy * dy[f, i] - k_x * (x[f, i] - mean[f]) - k_0


@numba.njit(**_PAR)
def _block_grad_sums(dy, x, mean, part_b, part_g):
    N, C = x.shape
    for blk in prange(part_b.shape[0]):
        for n in range(blk * _ROW_BLOCK, min(blk * _ROW_BLOCK + _ROW_BLOCK, N)):
            for c in range(C):
                part_b[blk, c] += dy[n, c]
                part_g[blk, c] += dy[n, c] * (x[n, c] - mean[c])


@numba.njit(**_PAR)
def _dx_cols(dy, x, gamma, mean, inv_std, dx, dgamma, dbeta):
    N, C = x.shape
    k_dy, k_x, k_0 = np.empty(C), np.empty(C), np.empty(C)
    for c in range(C):
        dgamma[c] *= inv_std[c]
        k_dy[c], k_x[c], k_0[c] = _dx_coefficients(gamma[c], inv_std[c], dbeta[c], dgamma[c],
                                                   float(N))
    for n in prange(N):
        for c in range(C):
            dx[n, c] = k_dy[c] * dy[n, c] - k_x[c] * (x[n, c] - mean[c]) - k_0[c]


def _backward_cols(dy, x, gamma, mean, inv_std, dx, dgamma, dbeta):
    N, C = x.shape
    part = np.zeros((2, (N + _ROW_BLOCK - 1) // _ROW_BLOCK, C))
    _block_grad_sums(dy, x, mean, part[0], part[1])
    _combine_blocks(part[0], dbeta, 1)
    _combine_blocks(part[1], dgamma, 1)
    _dx_cols(dy, x, gamma, mean, inv_std, dx, dgamma, dbeta)


def batchnorm_backward(dy, x, axis, gamma, mean, inv_std, dx, dgamma, dbeta):
    use_threads(x.size)
    (_backward_rows if axis == 1 else _backward_cols)(dy, x, gamma, mean, inv_std, dx, dgamma,
                                                      dbeta)


# --------------------------------------------------------------------------------- softmax
@numba.njit(**JIT)
def _row_stats(z, e):
    m = z[0]
    for i in range(1, z.size):
        m = max_nan(m, z[i])
    for i in range(z.size):
        e[i] = np.exp(z[i] - m)
    return m, _row_sum(e)


@numba.njit(**JIT)
def _column_stats(z, e, i0, i1, mx, s):
    k = z.shape[0]
    for i in range(i0, i1):
        mx[i - i0] = z[0, i]
        s[i - i0] = 0.0
    for r in range(1, k):
        for i in range(i0, i1):
            mx[i - i0] = max_nan(mx[i - i0], z[r, i])
    for r in range(k):
        for i in range(i0, i1):
            e[r, i] = np.exp(z[r, i] - mx[i - i0])
            s[i - i0] += e[r, i]


@numba.njit(inline="always", **JIT)
def _normalizer(s, log_, cast):
    """log(s) or 1 / s of a row's sum, rounded to the data's dtype: ``cast`` is a 1-element
    scratch array of that dtype (storing into it rounds a float64 as a C cast does)."""
    cast[0] = math.log(s) if log_ else 1.0 / s
    return cast[0]


@numba.njit(inline="always", **JIT)
def _finish(z, e, mx, c, log_):
    """softmax = e * (1 / s), or log-softmax = z - mx - log(s) (c from _normalizer)."""
    if log_:
        return (z - mx) - c
    return e * c


@numba.njit(**_PAR)
def _softmax(z, out, log_):
    outer, k, inner = z.shape
    if inner == 1:
        for o in prange(outer):
            cast = np.empty(1, z.dtype)
            mx, s = _row_stats(z[o, :, 0], out[o, :, 0])
            c = _normalizer(s, log_, cast)
            for r in range(k):
                out[o, r, 0] = _finish(z[o, r, 0], out[o, r, 0], mx, c, log_)
        return
    nblk = (inner + 255) // 256
    for t in prange(outer * nblk):
        cast = np.empty(1, z.dtype)
        mx = np.empty(256, z.dtype)
        s = np.empty(256)
        o = t // nblk
        i0 = (t % nblk) * 256
        i1 = min(i0 + 256, inner)
        _column_stats(z[o], out[o], i0, i1, mx, s)
        c = np.empty(256, z.dtype)
        for i in range(i1 - i0):
            c[i] = _normalizer(s[i], log_, cast)
        for r in range(k):
            for i in range(i0, i1):
                out[o, r, i] = _finish(z[o, r, i], out[o, r, i], mx[i - i0], c[i - i0], log_)


def softmax(z, out, log):
    if z.shape[1] == 0 or z.shape[0] * z.shape[2] == 0:
        return
    use_threads(z.size)
    _softmax(z, out, bool(log))


@numba.njit(inline="always", **JIT)
def _xent(z, d, mx, inv_s, log_s, t, inv_m):
    """d holds exp(z - mx): make it the gradient (p - t) / m; return t * log_softmax
    (inv_s, log_s: the row's 1 / s and log(s) in the data's dtype)."""
    g = (d * inv_s - t) * inv_m
    if t != 0:
        return g, t * ((z - mx) - log_s)
    return g, 0.0


@numba.njit(**_PAR)
def _xent_kernel(z, labels, targets, by_index, dz, inv_m, terms):
    outer, k, inner = z.shape
    zero = inv_m - inv_m
    one = zero + 1
    if inner == 1:
        for o in prange(outer):
            cast = np.empty(1, z.dtype)
            mx, s = _row_stats(z[o, :, 0], dz[o, :, 0])
            inv_s, log_s = _normalizer(s, False, cast), _normalizer(s, True, cast)
            acc = 0.0
            for r in range(k):
                t = (one if labels[o, 0] == r else zero) if by_index else targets[o, r, 0]
                g, term = _xent(z[o, r, 0], dz[o, r, 0], mx, inv_s, log_s, t, inv_m)
                dz[o, r, 0] = g
                acc += term
            terms[o] = acc
        return
    nblk = (inner + 255) // 256
    for tk in prange(outer * nblk):
        cast = np.empty(1, z.dtype)
        mx = np.empty(256, z.dtype)
        s = np.empty(256)
        o = tk // nblk
        i0 = (tk % nblk) * 256
        i1 = min(i0 + 256, inner)
        _column_stats(z[o], dz[o], i0, i1, mx, s)
        inv_s, log_s = np.empty(256, z.dtype), np.empty(256, z.dtype)
        for i in range(i1 - i0):
            inv_s[i], log_s[i] = _normalizer(s[i], False, cast), _normalizer(s[i], True, cast)
        for r in range(k):
            for i in range(i0, i1):
                t = (one if labels[o, i] == r else zero) if by_index else targets[o, r, i]
                g, term = _xent(z[o, r, i], dz[o, r, i], mx[i - i0], inv_s[i - i0],
                                log_s[i - i0], t, inv_m)
                dz[o, r, i] = g
                terms[o * inner + i] += term


_NO_LABELS = np.zeros((1, 1), np.int64)


def softmax_cross_entropy(z, labels, targets, dz):
    m = z.shape[0] * z.shape[2]
    if m == 0 or z.shape[1] == 0:
        return 0.0
    use_threads(z.size)
    terms = np.zeros(m)
    by_index = labels is not None
    _xent_kernel(z, labels if by_index else _NO_LABELS, z if by_index else targets, by_index,
                 dz, z.dtype.type(1.0 / m), terms)
    return -_row_sum(terms) / m

