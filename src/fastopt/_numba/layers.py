"""Numba layer kernels, mirroring fastopt/_kernels/layers.pyx: the same signatures, the same
split of work (over features or rows, never inside a reduction), fixed summation orders (eight
interleaved float64 partial sums per contiguous row; when features are columns, per-block
results over fixed blocks of 64 rows taken four rows at a time, combined in block order, as
the Cython kernels' blocks) and the same exp."""
import math

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._common import JIT, chunked, max_nan, read_only, threads_now, use_threads

_PAR = dict(JIT, parallel=True)


@numba.njit(inline="always", **JIT)
def _sum8(acc):
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


def _lanes8_loop(context, builder, acc_ty, acc, start, stop, term):
    """IR of ``acc[j] += term(i)`` over i = start, start + 8, ... < stop: ``term(i)`` the
    eight float64 terms from element i on, added on whole vectors in the order of i."""
    lanes_ty = ir.VectorType(ir.DoubleType(), 8)
    acc_vec = builder.bitcast(context.make_array(acc_ty)(context, builder, acc).data,
                              lanes_ty.as_pointer())
    lanes = cgutils.alloca_once_value(builder, builder.load(acc_vec, align=8))
    with cgutils.for_range_slice(builder, start, stop, ir.Constant(start.type, 8)) as (i, _):
        builder.store(builder.fadd(builder.load(lanes), term(i)), lanes)
    builder.store(builder.load(lanes), acc_vec, align=8)


def _load8(context, builder, ty, arr, i):
    """Elements i..i+7 of a 1-D C-contiguous array as eight float64 lanes."""
    data = context.make_array(ty)(context, builder, arr).data
    v = builder.load(builder.bitcast(builder.gep(data, [i]),
                                     ir.VectorType(context.get_data_type(ty.dtype), 8)
                                     .as_pointer()), align=ty.dtype.bitwidth // 8)
    return v if ty.dtype == types.float64 else builder.fpext(v, ir.VectorType(ir.DoubleType(), 8))


def _splat8(builder, value):
    vec = ir.Constant(ir.VectorType(ir.DoubleType(), 8), ir.Undefined)
    for j in range(8):
        vec = builder.insert_element(vec, value, ir.Constant(ir.IntType(32), j))
    return vec


def _is_row(t):
    return (isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C"
            and t.dtype in (types.float32, types.float64))


def _is_acc(t):
    return isinstance(t, types.Array) and t.dtype == types.float64


# The sums of a contiguous row take eight float64 terms at a time on whole vectors, lane j
# summing the terms of i % 8 == j in order (``stop - start`` a multiple of 8; acc: 8 float64).
# Written as scalar code, the eight partial sums are eight chains of dependent adds that LLVM
# does not vectorize without fast-math: 0.36 against 0.12 ns per float32 element of a row in
# L1; and centred squares stored to scratch first and then added took 1 ns per element
# against 0.13 ((4096, 256) float32, one thread).
@intrinsic
def _add_lanes8(typingctx, acc, x, start, stop):
    """acc[j] += x[i] in float64 for start <= i < stop with i % 8 == j."""
    if not (_is_acc(acc) and _is_row(x)):
        return None

    def codegen(context, builder, sig, args):
        _lanes8_loop(context, builder, sig.args[0], args[0], args[2], args[3],
                     lambda i: _load8(context, builder, sig.args[1], args[1], i))
        return context.get_dummy_value()
    return types.none(acc, x, types.intp, types.intp), codegen


@intrinsic
def _add_centred8(typingctx, acc, x, shift, start, stop):
    """acc[j] += x[i] - shift in float64, as _add_lanes8."""
    if not (_is_acc(acc) and _is_row(x)):
        return None

    def codegen(context, builder, sig, args):
        sh = _splat8(builder, context.cast(builder, args[2], sig.args[2], types.float64))
        _lanes8_loop(context, builder, sig.args[0], args[0], args[3], args[4],
                     lambda i: builder.fsub(_load8(context, builder, sig.args[1], args[1], i),
                                            sh))
        return context.get_dummy_value()
    return types.none(acc, x, shift, types.intp, types.intp), codegen


@intrinsic
def _add_products8(typingctx, acc, a, a_shift, x, x_shift, start, stop):
    """acc[j] += (a[i] - a_shift) * (x[i] - x_shift) in float64, as _add_lanes8 (a shift of
    0.0 leaves every value, -0.0 and NaN included, as it is)."""
    if not (_is_acc(acc) and _is_row(a) and _is_row(x)):
        return None

    def codegen(context, builder, sig, args):
        def shift(k):
            return _splat8(builder, context.cast(builder, args[k], sig.args[k], types.float64))

        a_sh, x_sh = shift(2), shift(4)

        def term(i):
            return builder.fmul(
                builder.fsub(_load8(context, builder, sig.args[1], args[1], i), a_sh),
                builder.fsub(_load8(context, builder, sig.args[3], args[3], i), x_sh))
        _lanes8_loop(context, builder, sig.args[0], args[0], args[5], args[6], term)
        return context.get_dummy_value()
    return types.none(acc, a, a_shift, x, x_shift, types.intp, types.intp), codegen


# Scratch arrays (the eight partial sums, a 1-element cast) are allocated once per group of
# _GROUP rows, not per row: an allocation per row of 256 made batch norm 2x slower.
_GROUP = 16


def _groups(rows):
    return (rows + _GROUP - 1) // _GROUP


@numba.njit(inline="always", **JIT)
def _row_sum(x, acc):
    """sum(x) in float64, eight interleaved partial sums (acc: 8 float64 of scratch)."""
    acc[:] = 0.0
    n8 = x.size - x.size % 8
    _add_lanes8(acc, x, 0, n8)
    for i in range(n8, x.size):
        acc[i - n8] += x[i]
    return _sum8(acc)


@numba.njit(**JIT)
def _row_centred(x, mean, acc):
    """sum(x - mean) in float64, summed as _row_sum sums."""
    acc[:] = 0.0
    n8 = x.size - x.size % 8
    _add_centred8(acc, x, mean, 0, n8)
    for i in range(n8, x.size):
        acc[i - n8] += x[i] - mean
    return _sum8(acc)


@numba.njit(**JIT)
def _row_centred_sq(x, mean, acc):
    """sum((x - mean)^2) in float64, summed as _row_sum sums."""
    acc[:] = 0.0
    n8 = x.size - x.size % 8
    _add_products8(acc, x, mean, x, mean, 0, n8)
    for i in range(n8, x.size):
        d = x[i] - mean
        acc[i - n8] += d * d
    return _sum8(acc)


@numba.njit(**JIT)
def _row_products(dy, x, mean, acc):
    """sum(dy * (x - mean)) in float64, summed as _row_sum sums."""
    acc[:] = 0.0
    n8 = x.size - x.size % 8
    _add_products8(acc, dy, 0.0, x, mean, 0, n8)
    for i in range(n8, x.size):
        acc[i - n8] += dy[i] * (x[i] - mean)
    return _sum8(acc)


# ------------------------------------------------------------------------------ batch norm
_ROW_BLOCK = 64     # rows per partial sum when each feature is a column (as the Cython kernels)
_f64 = np.float64


# With features as columns, the sums take four rows (a stride C apart) per sweep of the
# per-feature arrays, as the Cython kernels do: a quarter of their loads and stores, which
# bound these loops. Rows are grouped the same way for any thread count: fours from the start
# of each fixed block, then single rows. The element-wise loops (apply, dx) take two rows at a
# time, as fo_bn.h's: four rows of x, dy and dx at about the same offset within a page, with C
# a power of two, crowd one L1 set (backward, (256, 4096) float32, two threads, dy, x and dx
# 0-32 bytes apart: 920-1157 us with four rows, 443-514 with the arrays spread apart). With
# features as rows, apply takes four features per parallel iteration (_quads).
@numba.njit(**JIT)
def _quads(rows):
    return (rows + 3) // 4


@numba.njit(**JIT)
def _pairs(rows):
    return (rows + 1) // 2


@numba.njit(**JIT)
def _combine_blocks(part, out, n):
    """out[c] = (sum over the blocks, in block order, of part[b, c]) / n."""
    # element by element: an array assigned to a slice compiles Numba's shape-mismatch message
    # (~2.7 s at every cold start)
    for c in range(part.shape[1]):
        out[c] = part[0, c]
    for b in range(1, part.shape[0]):
        for c in range(part.shape[1]):
            out[c] += part[b, c]
    for c in range(part.shape[1]):
        out[c] = out[c] / n


# The axis-0 statistics sweep x once: each block of _ROW_BLOCK rows gets its sum and its sum
# of squared deviations from its own mean (the second pass reads the block from cache); then
# mean = sum of the sums / N and M2 = sum of (M2_b + n_b * (mean_b - mean)^2), in block order:
# sums of non-negative terms, as accurate as two passes over all rows. The sums are of x less
# the column's first row (``shift``), so that mean_b - mean is the difference of two small
# numbers: of the means themselves, each rounded to an ulp of its magnitude, it had spoiled the
# variance where the spread is small beside the mean (float64 -1e6 + 1e-3 randn, (1000, 2):
# 6.9e-9 from the definition, the reference's 1.9e-13). (Chan's pairwise merge of the means
# turned a column's inf into NaN: inf + (finite - inf) * w.) Summing x, then its squared
# deviations, over all rows took a second sweep through memory (statistics at (4096, 1024)
# float32, 1 thread, with the four-row loops: 2.6 -> 1.7 ms). Smaller blocks that fit in L2
# were slower: the per-block work on the (C,) arrays outweighed the cache hits.
@numba.njit(**_PAR)
def _block_moments(x, shift, part):
    """part[b, 0] = the sum of x - shift, part[b, 1] the sum of squared deviations from the
    block's mean (part[b, 2]) of each column over block b's rows (two passes over the block,
    the second from cache)."""
    N, C = x.shape
    for blk in prange(part.shape[0]):
        r0 = blk * _ROW_BLOCK
        r1 = min(r0 + _ROW_BLOCK, N)
        total, m2, mean = part[blk, 0], part[blk, 1], part[blk, 2]
        total[:] = 0.0
        m2[:] = 0.0
        for n in range(r0, r1, 4):
            if n + 4 <= r1:
                for c in range(C):
                    k = shift[c]
                    total[c] += (((x[n, c] - k) + (x[n + 1, c] - k))
                                 + ((x[n + 2, c] - k) + (x[n + 3, c] - k)))
            else:
                for r in range(n, r1):
                    for c in range(C):
                        total[c] += x[r, c] - shift[c]
        for c in range(C):
            mean[c] = shift[c] + total[c] / (r1 - r0)
        for n in range(r0, r1, 4):
            if n + 4 <= r1:
                for c in range(C):
                    m = mean[c]
                    d0, d1 = x[n, c] - m, x[n + 1, c] - m
                    d2, d3 = x[n + 2, c] - m, x[n + 3, c] - m
                    m2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
            else:
                for r in range(n, r1):
                    for c in range(C):
                        d = x[r, c] - mean[c]
                        m2[c] += d * d


# x is centred about the exact mean (the reference's batchnorm_stats): mean_error, what rounding
# the mean to float64 moved it by, is added back per feature (these three, as the reference's)
@numba.njit(inline="always", **JIT)
def _exact_bias(beta, scale, mean_error):
    return beta + mean_error * scale if mean_error != 0 and math.isfinite(scale) else beta


@numba.njit(inline="always", **JIT)
def _exact_centred_sum(dgc, db, mean_error):
    return dgc + mean_error * db if mean_error != 0 and math.isfinite(db) else dgc


@numba.njit(inline="always", **JIT)
def _exact_k0(k_0, k_x, mean_error):
    return k_0 + k_x * mean_error if mean_error != 0 and math.isfinite(k_x) else k_0


@numba.njit(**JIT)
def _merge_moments(part, shift, x, eps, mean, mean_error, inv_std, var):
    """The blocks' moments combined in block order: mean, the biased variance and
    1 / sqrt(variance + eps). A column whose mean is not finite (a float64 sum that
    overflowed, NaN, inf) is taken again by the definition: the reference's variance of a
    column of 1e308 is inf (x - inf is -inf), where merging the blocks' infinite means gave
    NaN (inf - inf)."""
    N = x.shape[0]
    for c in range(mean.size):      # (not mean[:] = part[0, 0]: see _combine_blocks)
        mean[c] = part[0, 0, c]
    for b in range(1, part.shape[0]):
        for c in range(mean.size):
            mean[c] += part[b, 0, c]
    for c in range(mean.size):
        mean[c] = mean[c] / N       # about the shift, until below
    var[:] = 0.0
    for b in range(part.shape[0]):
        nb = min(_ROW_BLOCK, N - b * _ROW_BLOCK)
        for c in range(mean.size):
            # the block's squares were taken about its mean rounded at the data's magnitude
            # (part[b, 2]): less what that rounding adds, they are about its exact mean
            shifted = part[b, 0, c] / nb
            offset = (part[b, 2, c] - shift[c]) - shifted
            d = shifted - mean[c]
            m2 = part[b, 1, c]
            if math.isfinite(m2):
                m2 = max(m2 - nb * (offset * offset), 0.0)
            var[c] += m2 + nb * (d * d)
    for c in range(mean.size):
        shifted = mean[c]
        mean[c] = shift[c] + shifted
        mean_error[c] = (mean[c] - shift[c]) - shifted
        var[c] = var[c] / N
        if not math.isfinite(mean[c] * N):
            mean_error[c] = 0.0
            s = 0.0
            for r in range(N):
                s += x[r, c]
            mean[c] = s / N
            s = 0.0
            for r in range(N):
                d = x[r, c] - mean[c]
                s += d * d
            var[c] = s / N
        inv_std[c] = 1.0 / math.sqrt(var[c] + eps)


def _stats_cols(x, eps, mean, mean_error, inv_std, var):          # each feature a column
    N, C = x.shape
    part = np.empty(((N + _ROW_BLOCK - 1) // _ROW_BLOCK, 3, C))
    shift = x[0].astype(np.float64)
    chunked(_block_moments, part.shape[0], x, shift, part)
    _merge_moments(part, shift, x, eps, mean, mean_error, inv_std, var)


@numba.njit(**_PAR)
def _forward_rows(x, eps, gamma, beta, mean, mean_error, inv_std, var, y):
    """Each feature a contiguous row: its statistics, then its y, in one visit (the row stays
    in cache between the three passes)."""
    F, C = x.shape
    for g in prange((F + _GROUP - 1) // _GROUP):
        acc = np.empty(8)
        for f in range(g * _GROUP, min(g * _GROUP + _GROUP, F)):
            # the mean about the feature's first value, and the variance less the square of
            # what rounding moved the mean by, as the reference's batchnorm_stats
            first = _f64(x[f, 0])
            shifted = _row_centred(x[f], first, acc) / C
            m = first + shifted
            offset = (m - first) - shifted
            if not math.isfinite(m * C):
                m = _row_sum(x[f], acc) / C
                offset = 0.0
            v = _row_centred_sq(x[f], m, acc) / C
            if math.isfinite(v):    # (an infinite one stays so: its offset may be too)
                v = max(v - offset * offset, 0.0)
            s = 1.0 / math.sqrt(v + eps)
            mean[f] = m
            mean_error[f] = offset
            inv_std[f] = s
            var[f] = v
            scale = gamma[f] * s
            bias = _exact_bias(beta[f], scale, offset)
            for c in range(C):
                y[f, c] = (x[f, c] - m) * scale + bias


@numba.njit(**_PAR)
def _apply(x, axis, beta, mean, scale, y):
    """y = (x - mean) * scale + beta per feature; prange over quads of features (axis 1)
    or pairs of rows (axis 0)."""
    N, C = x.shape
    if axis == 1:
        for q in prange(_quads(N)):
            for f in range(4 * q, min(4 * q + 4, N)):
                for c in range(C):
                    y[f, c] = (x[f, c] - mean[f]) * scale[f] + beta[f]
    else:
        for q in prange(_pairs(N)):
            n = 2 * q
            if n + 2 <= N:
                for c in range(C):
                    m, s, b = mean[c], scale[c], beta[c]
                    y[n, c] = (x[n, c] - m) * s + b
                    y[n + 1, c] = (x[n + 1, c] - m) * s + b
            else:
                for c in range(C):
                    y[n, c] = (x[n, c] - mean[c]) * scale[c] + beta[c]


@numba.njit(**JIT)
def _exact_biases(beta, scale, mean_error):
    """_exact_bias of each feature (axis 0's apply reads them as its beta)."""
    out = np.empty(beta.size)
    for c in range(beta.size):
        out[c] = _exact_bias(beta[c], scale[c], mean_error[c])
    return out


def batchnorm_forward(x, axis, gamma, beta, eps, mean, mean_error, inv_std, var, y):
    if x.size == 0:     # (an empty x: the loops over its other axis had run, 2^40 rows)
        return
    with use_threads(x.size):
        x = read_only(x)
        g64, b64 = gamma.astype(np.float64), beta.astype(np.float64)
        if axis == 1:
            chunked(_forward_rows, _groups(x.shape[0]), x, eps, g64, b64, mean, mean_error,
                    inv_std, var, y)
        else:
            _stats_cols(x, eps, mean, mean_error, inv_std, var)
            with np.errstate(over="ignore", invalid="ignore"):   # (inf and NaN: IEEE's)
                scale = g64 * inv_std
            chunked(_apply, _pairs(x.shape[0]), x, axis, _exact_biases(b64, scale, mean_error),
                    mean, scale, y)


@numba.njit(**JIT)
def _inv_std(running_var, eps):
    """1 / sqrt(running_var + eps) in float64, per feature (NaN and inf without a warning)."""
    out = np.empty(running_var.size)
    for i in range(running_var.size):
        out[i] = 1.0 / np.sqrt(np.float64(running_var[i]) + eps)
    return out


def batchnorm_inference(x, axis, gamma, beta, running_mean, running_var, eps, y):
    if x.size == 0:     # (an empty x: the loops over its other axis had run, 2^40 rows)
        return
    # in float64 (mean, scale and beta are float64), rounded once when stored into y
    with use_threads(x.size):
        chunked(_apply, (_pairs if axis == 0 else _quads)(x.shape[0]), read_only(x), axis,
                beta.astype(np.float64), running_mean.astype(np.float64),
                gamma.astype(np.float64) * _inv_std(running_var, eps), y)


@numba.njit(inline="always", **JIT)
def _dx_coefficients(gamma, inv_std, db, dg, cnt, mean_error):
    """(k_dy, k_x, k_0) of dx = k_dy * dy - k_x * (x - mean) - k_0, about the exact mean."""
    coef = gamma * inv_std / cnt
    k_x = coef * inv_std * dg
    return gamma * inv_std, k_x, _exact_k0(coef * db, k_x, mean_error)


@numba.njit(**_PAR)
def _backward_rows(dy, x, gamma, mean, mean_error, inv_std, dx, dgamma, dbeta):
    F, C = x.shape
    for g in prange((F + _GROUP - 1) // _GROUP):
        acc = np.empty(8)
        for f in range(g * _GROUP, min(g * _GROUP + _GROUP, F)):
            db = _row_sum(dy[f], acc)
            dg = _exact_centred_sum(_row_products(dy[f], x[f], mean[f], acc), db,
                                    mean_error[f]) * inv_std[f]
            dbeta[f] = db
            dgamma[f] = dg
            k_dy, k_x, k_0 = _dx_coefficients(gamma[f], inv_std[f], db, dg, float(C),
                                              mean_error[f])
            for i in range(C):
                dx[f, i] = k_dy * dy[f, i] - k_x * (x[f, i] - mean[f]) - k_0


@numba.njit(**_PAR)
def _block_grad_sums(dy, x, mean, part_b, part_g):
    N, C = x.shape
    for blk in prange(part_b.shape[0]):
        end = min(blk * _ROW_BLOCK + _ROW_BLOCK, N)
        for n in range(blk * _ROW_BLOCK, end, 4):
            if n + 4 <= end:
                for c in range(C):
                    m = mean[c]
                    part_b[blk, c] += ((_f64(dy[n, c]) + dy[n + 1, c])
                                       + (_f64(dy[n + 2, c]) + dy[n + 3, c]))
                    part_g[blk, c] += ((dy[n, c] * (x[n, c] - m)
                                        + dy[n + 1, c] * (x[n + 1, c] - m))
                                       + (dy[n + 2, c] * (x[n + 2, c] - m)
                                          + dy[n + 3, c] * (x[n + 3, c] - m)))
            else:
                for r in range(n, end):
                    for c in range(C):
                        part_b[blk, c] += dy[r, c]
                        part_g[blk, c] += dy[r, c] * (x[r, c] - mean[c])


@numba.njit(**_PAR)
def _dx_cols(dy, x, gamma, mean, mean_error, inv_std, dx, dgamma, dbeta):
    N, C = x.shape
    k_dy, k_x, k_0 = np.empty(C), np.empty(C), np.empty(C)
    for c in range(C):
        dgamma[c] = _exact_centred_sum(dgamma[c], dbeta[c], mean_error[c]) * inv_std[c]
        k_dy[c], k_x[c], k_0[c] = _dx_coefficients(gamma[c], inv_std[c], dbeta[c], dgamma[c],
                                                   float(N), mean_error[c])
    for q in prange(_pairs(N)):
        n = 2 * q
        if n + 2 <= N:
            for c in range(C):
                m, a, b, k = mean[c], k_dy[c], k_x[c], k_0[c]
                dx[n, c] = a * dy[n, c] - b * (x[n, c] - m) - k
                dx[n + 1, c] = a * dy[n + 1, c] - b * (x[n + 1, c] - m) - k
        else:
            for c in range(C):
                dx[n, c] = k_dy[c] * dy[n, c] - k_x[c] * (x[n, c] - mean[c]) - k_0[c]


def _backward_cols(dy, x, gamma, mean, mean_error, inv_std, dx, dgamma, dbeta):
    N, C = x.shape
    part = np.zeros((2, (N + _ROW_BLOCK - 1) // _ROW_BLOCK, C))
    chunked(_block_grad_sums, part.shape[1], dy, x, mean, part[0], part[1])
    _combine_blocks(part[0], dbeta, 1)
    _combine_blocks(part[1], dgamma, 1)
    chunked(_dx_cols, _pairs(N), dy, x, gamma, mean, mean_error, inv_std, dx, dgamma, dbeta)


def batchnorm_backward(dy, x, axis, gamma, mean, mean_error, inv_std, dx, dgamma, dbeta):
    if x.size == 0:     # (an empty x: the loops over its other axis had run, 2^40 rows)
        return
    with use_threads(x.size):
        dy, x, gamma = read_only(dy), read_only(x), read_only(gamma)
        if axis == 1:
            chunked(_backward_rows, _groups(x.shape[0]), dy, x, gamma, mean, mean_error, inv_std,
                    dx, dgamma, dbeta)
        else:
            _backward_cols(dy, x, gamma, mean, mean_error, inv_std, dx, dgamma, dbeta)


# --------------------------------------------------------------------------------- softmax
# exp as fo_vexp.h computes it, written in LLVM IR (np.exp is a libm call per element: the
# softmax family ran 7x slower than the Cython kernels): clamp (NaN passes),
# n = round(x/ln2) by one FMA, x = n*ln2 + r by Cody-Waite, Sleef's polynomial on |r| <= ln2/2
# with fused multiply-adds (Estrin's form, then Horner's), then 2^n in two exact halves so that
# subnormal results round once. The same operations in the same order as the C version (whose
# single multiply for normal results gives the same bits as the halves): the same bits, < 1 ulp.
_F, _D = np.float32, np.float64
_EXPF = (_F(-104.0), _F(89.0), _F(1.44269504088896341), _F(12582912.0),   # 0x1.8p23
         _F(-0.693145751953125), _F(-1.428606765330187045e-06),
         (_F(0.000198527617612853646278381), _F(0.00139304355252534151077271),
          _F(0.00833336077630519866943359), _F(0.0416664853692054748535156),
          _F(0.166666671633720397949219), _F(0.5)))
_EXPD = (_D(-746.0), _D(710.0), _D(1.442695040888963407359924681001892137),
         _D(6755399441055744.0),                                          # 0x1.8p52
         _D(-.69314718055966295651160180568695068359375),
         _D(-.28235290563031577122588448175013436025525412068e-12),
         (_D(2.08860621107283687536341e-09), _D(2.51112930892876518610661e-08),
          _D(2.75573911234900471893338e-07), _D(2.75572362911928827629423e-06),
          _D(2.4801587159235472998791e-05), _D(0.000198412698960509205564975),
          _D(0.00138888888889774492207962), _D(0.00833333333331652721664984),
          _D(0.0416666666666665047591422), _D(0.166666666666666851703837), _D(0.5)))


def _target_has_avx512():
    """Whether Numba compiles with AVX-512F: the features its JIT targets are
    NUMBA_CPU_FEATURES when set, else the host's (numba.core.codegen)."""
    features = numba.config.CPU_FEATURES
    if features is None:
        from numba.core.codegen import get_host_cpu_features
        features = get_host_cpu_features()
    return "+avx512f" in features.split(",")


_SCALEF = _target_has_avx512()


def _exp_ir(builder, x, nonpos=False):
    """IR of exp(x), x a float32 or float64 value or a vector of them (each lane as a value),
    as fo_vexp.h computes it. ``nonpos``: x <= 0 or NaN, where the clamp above changes nothing
    and is left out. With AVX-512, 512-bit vectors scale by 2^n with vscalefps/pd, one
    rounding, as the Cython kernels' AVX-512 build: the same bits as the two halves."""
    ft = x.type
    lanes = ft.count if isinstance(ft, ir.VectorType) else 0
    wide = (ft.element if lanes else ft) == ir.DoubleType()
    bits = 64 if wide else 32
    lo, hi, log2e, shift, ln2_hi, ln2_lo, poly = _EXPD if wide else _EXPF
    it = ir.VectorType(ir.IntType(bits), lanes) if lanes else ir.IntType(bits)

    def k(value, ty=ft):            # a constant of type ty (in each lane of a vector)
        elem = ty.element if lanes else ty
        c = ir.Constant(elem, int(value) if isinstance(elem, ir.IntType) else float(value))
        return ir.Constant(ty, [c] * lanes) if lanes else c

    def fma(a, b, c):
        name = "llvm.fma." + (f"v{lanes}" if lanes else "") + f"f{bits}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ft, [ft] * 3), name)
        return builder.call(fn, [a, b, c])

    x = builder.select(builder.fcmp_ordered("<", x, k(lo)), k(lo), x)    # NaN passes
    if not nonpos:
        x = builder.select(builder.fcmp_ordered(">", x, k(hi)), k(hi), x)
    t = fma(x, k(log2e), k(shift))
    n = builder.fsub(t, k(shift))                   # round(x / ln2), rounded once
    r = fma(n, k(ln2_lo), fma(n, k(ln2_hi), x))
    r2 = builder.fmul(r, r)
    c = [k(v) for v in poly]
    if wide:     # the polynomial in Estrin's form above r^2, then Horner's, as fo_vexp.h
        r4 = builder.fmul(r2, r2)
        a0, a1 = fma(c[7], r, c[8]), fma(c[5], r, c[6])
        a2, a3 = fma(c[3], r, c[4]), fma(c[1], r, c[2])
        u = fma(c[0], builder.fmul(r4, r4), fma(fma(a3, r2, a2), r4, fma(a1, r2, a0)))
        u = fma(fma(u, r, c[9]), r, c[10])
    else:
        u = fma(fma(c[0], r, c[1]), r2, fma(c[2], r, c[3]))
        u = fma(fma(u, r, c[4]), r, c[5])
    u = builder.fadd(k(1), fma(r2, u, r))
    if _SCALEF and lanes * bits == 512:
        mask = ir.IntType(lanes)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ft, [ft, ft, ft, mask, ir.IntType(32)]),
            f"llvm.x86.avx512.mask.scalef.{'pd' if wide else 'ps'}.512")
        return builder.call(fn, [u, n, u, ir.Constant(mask, -1), ir.Constant(ir.IntType(32), 4)])
    # 2^n in two exact halves (n from t's low bits: AVX2 has no vector float64 -> int64
    # conversion), so that a subnormal result rounds once
    bias, mant = (1023, 52) if wide else (127, 23)
    ni = builder.sub(builder.bitcast(t, it), builder.bitcast(k(shift), it))
    h = builder.ashr(ni, k(1, it))
    s1 = builder.bitcast(builder.shl(builder.add(h, k(bias, it)), k(mant, it)), ft)
    s2 = builder.bitcast(builder.shl(builder.add(builder.sub(ni, h), k(bias, it)),
                                     k(mant, it)), ft)
    return builder.fmul(builder.fmul(u, s1), s2)


@intrinsic
def _exp(typingctx, x):
    """exp(x) of a float32 or float64 scalar in jitted code."""
    if x not in (types.float32, types.float64):
        return None

    def codegen(context, builder, sig, args):
        return _exp_ir(builder, args[0])
    return x(x), codegen


# A row's exps (and a block's column by column, in the course's layout) run on vectors of 64 bytes
# written out in IR, as the Cython kernels' AVX-512 loops: LLVM's own vectorization of the scalar
# _exp (in the 256-bit vectors it prefers on these CPUs) took more work per element. One thread, an
# Intel Xeon, rows of 1000 in L1, their max and exps: float32 0.50 -> 0.39 ns/element (0.45 with
# the two halves, as without AVX-512), float64 1.16 -> 0.78; softmax (4096, 1000) float32 on two
# threads 1.75-1.81 -> 1.25-1.26 ms, cross-entropy 1.77-1.79 -> 1.29-1.33 (alternated processes);
# over axis 0 of (1000, 4096), softmax 2.60-2.72 -> 2.27-2.48 ms, cross-entropy 2.94-3.13 ->
# 2.66-2.82. The same bits (every float32 x <= 0, 1e8 float64 ones, against the scalar _exp).
@intrinsic
def _exp_shifted(typingctx, z, m, e, stop):
    """e[i] = exp(z[i] - m) for i < stop (a multiple of 64 bytes of elements), on whole
    vectors, m a scalar or an array of one shift per element (m[i]); every z[i] at most its
    shift, or NaN (the softmax family's z - max(z))."""
    if not (_is_row(z) and _is_row(e) and e.dtype == z.dtype
            and (m == z.dtype or _is_row(m) and m.dtype == z.dtype)):
        return None

    def codegen(context, builder, sig, args):
        ty = sig.args[0]
        bits = ty.dtype.bitwidth
        vt = ir.VectorType(context.get_data_type(ty.dtype), 512 // bits)

        def at(k, i):           # array argument k's vector from element i on
            data = context.make_array(sig.args[k])(context, builder, args[k]).data
            return builder.bitcast(builder.gep(data, [i]), vt.as_pointer())

        each = isinstance(sig.args[1], types.Array)
        if not each:
            splat = ir.Constant(vt, ir.Undefined)
            for j in range(vt.count):
                splat = builder.insert_element(splat, args[1], ir.Constant(ir.IntType(32), j))
        stop = args[3]
        with cgutils.for_range_slice(builder, ir.Constant(stop.type, 0), stop,
                                     ir.Constant(stop.type, vt.count)) as (i, _):
            shift = builder.load(at(1, i), align=bits // 8) if each else splat
            d = builder.fsub(builder.load(at(0, i), align=bits // 8), shift)
            builder.store(_exp_ir(builder, d, nonpos=True), at(2, i), align=bits // 8)
        return context.get_dummy_value()
    return types.none(z, m, e, types.intp), codegen


def _shift_at(m, i):
    """m[i] if m is an array (one shift per element), else m (one for all)."""
    raise NotImplementedError("only callable from jitted code")


@overload(_shift_at, inline="always")
def _shift_at_overload(m, i):
    if isinstance(m, types.Array):
        return lambda m, i: m[i]
    return lambda m, i: m


@numba.njit(inline="always", **JIT)
def _exps(z, m, e):
    """e = exp(z - m), m a scalar or an array like z (_shift_at), every z[i] at most its
    shift or NaN: whole vectors, then the rest."""
    n = z.size - z.size % (64 // z.itemsize)
    _exp_shifted(z, m, e, n)
    for i in range(n, z.size):
        e[i] = _exp(z[i] - _shift_at(m, i))


@intrinsic
def _maximum(typingctx, a, b):
    """max(a, b), NaN if either is (llvm.maximum; -0 < +0)."""
    def codegen(context, builder, sig, args):
        t = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maximum", [t], ir.FunctionType(t, [t] * 2))
        return builder.call(fn, args)
    return a(a, b), codegen


@numba.njit(inline="always", **JIT)
def _row_max(z):
    """max(z), NaN if z holds one: LLVM vectorizes a reduction of llvm.maximum, not one of
    max_nan's compare and select (4x slower: the row's max took as long as its exp)."""
    m = z[0]
    for i in range(1, z.size):
        m = _maximum(m, z[i])
    return m


# A row of _SHORT_ROW values or more takes one loop, as the Cython kernels' (fo_row.h): its
# exps, their eight partial sums (from the exps stored _SUM_LAG elements before), the next row's
# max and the previous row's finish, two 64-byte vectors at a time, written out in IR. The same
# bits: the same exp, the sums in the same order, the same finish. A pass each (max, exps, sum,
# finish) had taken 2.9-3.2x the Cython kernels' time; now, 2 threads, float32, an Intel Xeon:
# (256, 32000) softmax 3.77-3.89 -> 1.84-1.92 ms (Cython 1.38-1.42), (4096, 1000) 1.30-1.36 ->
# 0.93-0.98 (Cython 0.65-0.66); cross-entropy and log-softmax alike. The next row's max is a
# compare and select, which passes over NaN lanes (a NaN in the row makes its exps NaN, and with
# them every result): llvm.maximum's NaN handling, five dependent operations a vector, had
# taken rows of 1000 in L1 0.44 against 0.34 ns/element.
_FINISH_NONE, _FINISH_SCALE, _FINISH_LOG, _FINISH_SCALE2 = range(4)
_SUM_LAG = 64


def _finish_ir(builder, kind, o, z, a, b):
    """IR of a finish (scalars or vectors): out * a, (z - a) - b or (out * a) * b."""
    if kind == _FINISH_LOG:
        return builder.fsub(builder.fsub(z, a), b)
    if kind == _FINISH_SCALE2:
        return builder.fmul(builder.fmul(o, a), b)
    return builder.fmul(o, a)


def _row_pass_of(kind):
    """The row pass intrinsic whose finish is ``kind``."""
    @intrinsic
    def row_pass(typingctx, z, m, e, stop, acc, y, y_max, pz, pout, a, b):
        """For i < stop (a multiple of 64 bytes of elements), on whole vectors: e[i] =
        exp(z[i] - m), acc[i % 8] += e[i] in float64 in the order of i for i < stop -
        _SUM_LAG, y_max[0] = max(y_max[0], y[i]) but NaN y[i], and pout[i] = the finish
        (_finish_ir) of pout[i], pz[i]."""
        if not (all(_is_row(t) and t.dtype == z.dtype for t in (z, e, y, y_max, pz, pout))
                and _is_acc(acc) and m == z.dtype and a == z.dtype and b == z.dtype):
            return None

        def codegen(context, builder, sig, args):
            ty = sig.args[0]
            bits = ty.dtype.bitwidth
            vt = ir.VectorType(context.get_data_type(ty.dtype), 512 // bits)
            i32 = ir.IntType(32)

            def at(k, i):           # array argument k's vector from element i on
                data = context.make_array(sig.args[k])(context, builder, args[k]).data
                return builder.bitcast(builder.gep(data, [i]), vt.as_pointer())

            def splat(value):
                vec = ir.Constant(vt, ir.Undefined)
                for j in range(vt.count):
                    vec = builder.insert_element(vec, value, ir.Constant(i32, j))
                return vec

            lanes8 = ir.VectorType(ir.DoubleType(), 8)
            acc_ptr = builder.bitcast(context.make_array(sig.args[4])(context, builder,
                                                                      args[4]).data,
                                      lanes8.as_pointer())
            sums = cgutils.alloca_once_value(builder, builder.load(acc_ptr, align=8))
            y_max_ptr = context.make_array(sig.args[6])(context, builder, args[6]).data
            best = cgutils.alloca_once_value(builder, splat(builder.load(y_max_ptr)))
            shift, av, bv = splat(args[1]), splat(args[9]), splat(args[10])
            align = bits // 8
            stop = args[3]
            lag = ir.Constant(stop.type, _SUM_LAG)

            def vectors(i, count):          # the vectors from element i on
                at_each = [builder.add(i, ir.Constant(stop.type, v * vt.count))
                           for v in range(count)]
                for iv in at_each:
                    d = builder.fsub(builder.load(at(0, iv), align=align), shift)
                    builder.store(_exp_ir(builder, d, nonpos=True), at(2, iv), align=align)
                with cgutils.if_likely(builder, builder.icmp_signed(">=", i, lag)):
                    total = builder.load(sums)
                    for j in range(0, count * vt.count, 8):
                        total = builder.fadd(total, _load8(
                            context, builder, sig.args[2], args[2],
                            builder.add(builder.sub(i, lag), ir.Constant(stop.type, j))))
                    builder.store(total, sums)
                for iv in at_each:
                    yv, cur = builder.load(at(5, iv), align=align), builder.load(best)
                    builder.store(builder.select(builder.fcmp_ordered(">", yv, cur), yv, cur),
                                  best)
                    if kind != _FINISH_NONE:
                        o = builder.load(at(8, iv), align=align)
                        zz = builder.load(at(7, iv), align=align)
                        builder.store(_finish_ir(builder, kind, o, zz, av, bv), at(8, iv),
                                      align=align)

            pair = ir.Constant(stop.type, 2 * vt.count)
            pairs = builder.sub(stop, builder.srem(stop, pair))
            with cgutils.for_range_slice(builder, ir.Constant(stop.type, 0), pairs,
                                         pair) as (i, _):
                vectors(i, 2)
            with cgutils.for_range_slice(builder, pairs, stop,
                                         ir.Constant(stop.type, vt.count)) as (i, _):
                vectors(i, 1)
            builder.store(builder.load(sums), acc_ptr, align=8)
            vec = builder.load(best)
            value = builder.extract_element(vec, ir.Constant(i32, 0))
            for j in range(1, vt.count):
                lane = builder.extract_element(vec, ir.Constant(i32, j))
                value = builder.select(builder.fcmp_ordered(">", lane, value), lane, value)
            builder.store(value, y_max_ptr)
            return context.get_dummy_value()
        sig = types.none(z, m, e, types.intp, acc, y, y_max, pz, pout, a, b)
        return sig, codegen
    return row_pass


_ROW_PASS = tuple(_row_pass_of(kind) for kind in range(4))
_row_pass_none, _row_pass_scale, _row_pass_log, _row_pass_scale2 = _ROW_PASS


@numba.njit(inline="always", **JIT)
def _finish_op(kind, o, z, a, b):
    """A finish of one element (as _finish_ir)."""
    if kind == _FINISH_LOG:
        return (z - a) - b
    if kind == _FINISH_SCALE2:
        return (o * a) * b
    return o * a


@numba.njit(inline="always", **JIT)
def _finish_row(kind, z, out, a, b):
    if kind == _FINISH_NONE:
        return
    for i in range(z.size):
        out[i] = _finish_op(kind, out[i], z[i], a, b)


@numba.njit(**JIT)
def _row_pass(z, m, e, acc, y, y_max, kind, pz, pout, a, b, part):
    """e = exp(z - m), returning sum(e) (summed as _row_sum sums); meanwhile y_max[0] =
    max(y) of another row as long (the next one, or z itself; NaN only if y[0] or one past
    y's whole vectors is, else the max of its numbers, as the Cython kernels'
    fo_row_max_numbers), and the previous row (pz, pout) finished (_finish_row of ``kind``).
    The exps of the last partial vector on a whole one (``part``: 64 bytes of scratch), as
    the Cython kernels': one at a time they had cost rows of 1000 float32 an eighth more
    time."""
    n = z.size - z.size % part.size
    acc[:] = 0.0
    y_max[0] = y[0]
    if kind == _FINISH_SCALE:
        _row_pass_scale(z, m, e, n, acc, y, y_max, pz, pout, a, b)
    elif kind == _FINISH_LOG:
        _row_pass_log(z, m, e, n, acc, y, y_max, pz, pout, a, b)
    elif kind == _FINISH_SCALE2:
        _row_pass_scale2(z, m, e, n, acc, y, y_max, pz, pout, a, b)
    else:
        _row_pass_none(z, m, e, n, acc, y, y_max, pz, pout, a, b)
    if n < z.size:
        zero = z.dtype.type(0)
        for i in range(n, n + part.size):
            part[i - n] = z[i] - m if i < z.size else zero
        _exp_shifted(part, zero, part, part.size)    # (z - m) - 0 is z - m, -0 and NaN too
    for i in range(n, z.size):
        e[i] = part[i - n]
        y_max[0] = _maximum(y_max[0], y[i])
        if kind != _FINISH_NONE:
            pout[i] = _finish_op(kind, pout[i], pz[i], a, b)
    n8 = z.size - z.size % 8
    _add_lanes8(acc, e, max(n - _SUM_LAG, 0), n8)
    for i in range(n8, z.size):
        acc[i - n8] += e[i]
    return _sum8(acc)


@numba.njit(**JIT)
def _long_rows(z, out, o0, o1, kind, labels, by_index, targets, inv_m, one, terms, cast, acc):
    """The softmax family over long rows o0..o1-1 (_long_row), as the Cython
    kernels' long_rows: each row's _row_pass, which takes the next row's max and finishes the
    previous row (``kind``), the last row finished after. Cross-entropy (_FINISH_SCALE2) by
    class index: the gradient at each row's label and the loss terms; with probabilities,
    each row finished at once (_xent_row)."""
    y_max, part = np.empty(1, z.dtype), np.empty(64 // z.itemsize, z.dtype)
    a = b = p_label = z.dtype.type(0)
    m = _row_max(z[o0])
    pending = _FINISH_NONE
    for o in range(o0, o1):
        prev = max(o - 1, o0)
        s = _row_pass(z[o], m, out[o], acc, z[min(o + 1, o1 - 1)], y_max, pending, z[prev],
                      out[prev], a, b, part)
        if by_index and o > o0:             # the previous row's label entry, now it is scaled
            out[o - 1, labels[o - 1, 0]] = (p_label - one) * inv_m
        if kind == _FINISH_LOG:
            a, b = m, _normalizer(s, True, cast)
        elif kind == _FINISH_SCALE:
            a = _normalizer(s, False, cast)
        elif by_index:                      # as _xent_row: p at the label before the scaling
            a, b = _normalizer(s, False, cast), inv_m
            label = labels[o, 0]
            p_label = out[o, label] * a
            terms[o] = (z[o, label] - m) - _normalizer(s, True, cast)
        else:
            _xent_row(z[o], 0, targets[o], False, out[o], inv_m, one, cast, acc, terms, o, m, s)
        pending = kind if by_index or kind != _FINISH_SCALE2 else _FINISH_NONE
        m = y_max[0]
    _finish_row(pending, z[o1 - 1], out[o1 - 1], a, b)
    if by_index:
        out[o1 - 1, labels[o1 - 1, 0]] = (p_label - one) * inv_m




# Rows shorter than _SHORT_ROW take their exps a group of rows at a time, in one vector loop
# over the group with each element's row max beside it (as the Cython kernels' short rows): a
# row of a few values is otherwise a partial vector, which LLVM leaves to the scalar exp. The
# same bits: the same exp of the same differences, summed per row as _row_sum sums. One thread,
# float32, 400k logits, alternating processes: softmax of rows of 2, 10, 33, 64 values 9.7-11.0
# -> 6.3-7.1, 2.4-3.7 -> 1.8-2.5, 1.2 -> 0.8-1.2, 1.0 -> 0.75 ms; cross-entropy alike. The
# differences had been copied to a scratch array and the exps back from it, 16 rows a group:
# ns per element, one thread, float32, (8192 or 4096, k), softmax / cross-entropy, this Intel
# VM, three alternated rounds: k = 16 3.06-3.07 / 4.95-5.04 -> 1.94-2.20 / 3.90-4.25, 100
# 1.60-1.64 / 1.99-2.12 -> 0.78-0.84 / 1.18-1.21 (Cython 0.67-0.69 / 0.73-0.75); the long rows
# of 32 and 64 values, only the larger groups, 1.54-1.61 -> 1.25-1.38 and 0.95-0.98 ->
# 0.76-0.82 (softmax; Cython 0.72-0.73 and 0.46-0.47). The helpers a short row calls
# (_row_max, _row_sum, _finish_row, _xent_row) are inlined: a call a row, its array arguments
# built for each, had cost rows of 2 and 10 values (400k logits) 6.5-7.0 / 21.0-21.5 and 2.62-2.63
# / 5.61-5.65 ns per element, softmax / cross-entropy, one thread; inlined 5.0-5.4 / 8.5-8.8 and
# 2.4 / 3.0 (Cython 3.7 / 7.7 and 1.5 / 2.2); the same bits.
_SHORT_ROW, _WHOLE_ROW = 128, 32


# Rows of the classes-last layout are taken _GROUP at a time, or as many as make
# _GROUP_VALUES values where rows are shorter: each group allocates its scratch arrays, which
# for groups of 16 short rows was a good part of their time (above).
_GROUP_VALUES = 4096


@numba.njit(inline="always", **JIT)
def _rows_per_group(k):
    return max(_GROUP, _GROUP_VALUES // max(k, 1))


def _row_groups(z):
    """The groups of the (outer, k, 1) z's rows."""
    return -(-z.shape[0] // _rows_per_group(z.shape[1]))


@numba.njit(inline="always", **JIT)
def _long_row(k, itemsize):
    """Whether rows of k values take _long_rows: _SHORT_ROW values or more, or from
    _WHOLE_ROW on a whole number of 64-byte vectors, with no partial vector to pay
    (layers.pyx's long_row)."""
    return k >= _SHORT_ROW or (k >= _WHOLE_ROW and k * itemsize % 64 == 0)


@numba.njit(**JIT)
def _group_stats(z, e, o0, o1, acc):
    """Rows o0..o1-1 of z, short ones (_long_row): their max (_row_max) and exp sum (as
    _row_sum sums), as arrays mx and s (row o's at o - o0), and e[o] = exp(z[o] - mx), in one
    vector loop over the group with each element's row max beside it (rows_stats)."""
    k = z.shape[1]
    n = (o1 - o0) * k
    mx, s, shift = np.empty(o1 - o0, z.dtype), np.empty(o1 - o0), np.empty(n, z.dtype)
    for o in range(o0, o1):
        m = _row_max(z[o])
        mx[o - o0] = m
        shift[(o - o0) * k:(o - o0 + 1) * k] = m
    _exps(z[o0:o1].reshape(n), shift, e[o0:o1].reshape(n))
    for o in range(o0, o1):
        s[o - o0] = _row_sum(e[o], acc)
    return mx, s


# The strided layout's loops (examples as columns, the course's (classes, m)) run along a row's
# 1-D slice [i0, i1), each its own loop: indexed as z[r, i] with the block's offset, with the
# exp and the float64 sum in one loop, LLVM had kept them scalar. (1000, 4096) float32 over
# axis 0, one thread, in-process: softmax 20.1 -> 8.7-9.2 ms, cross-entropy 17-19 -> 11.7-11.9
# (Cython: 6.0-6.3 and 7.4-8.3); the same bits as before and as Cython's.
@numba.njit(**JIT)
def _column_stats(z, e, i0, i1, mx, s):
    k = z.shape[0]
    for i in range(i0, i1):
        mx[i - i0] = z[0, i]
        s[i - i0] = 0.0
    n = i1 - i0
    for r in range(1, k):
        zr = z[r, i0:i1]
        for j in range(n):
            mx[j] = max_nan(mx[j], zr[j])
    for r in range(k):
        zr, er = z[r, i0:i1], e[r, i0:i1]
        _exps(zr, mx[:n], er)
        for j in range(n):
            s[j] += er[j]


@numba.njit(inline="always", **JIT)
def _normalizer(s, log_, cast):
    """log(s) or 1 / s of a row's sum, rounded to the data's dtype: ``cast`` is a 1-element
    scratch array of that dtype (storing into it rounds a float64 as a C cast does)."""
    cast[0] = math.log(s) if log_ else 1.0 / s
    return cast[0]


@numba.njit(inline="always", **JIT)
def _finish(z, e, mx, c, log_):
    """softmax = e * (1 / s), or log-softmax = z - mx - log(s) (c from _normalizer), as
    _finish_op computes them."""
    if log_:
        return _finish_op(_FINISH_LOG, e, z, mx, c)
    return _finish_op(_FINISH_SCALE, e, z, c, c)


@numba.njit(**_PAR)
def _softmax_rows(z, out, log_):
    """Classes last: z is (outer, k), each example a contiguous row (so the loops vectorize)."""
    outer, k = z.shape
    rows = _rows_per_group(k)
    for g in prange((outer + rows - 1) // rows):
        cast = np.empty(1, z.dtype)
        acc = np.empty(8)
        o0, o1 = g * rows, min(g * rows + rows, outer)
        if _long_row(k, z.itemsize):
            _long_rows(z, out, o0, o1, _FINISH_LOG if log_ else _FINISH_SCALE, _NO_LABELS,
                       False, z, cast[0], cast[0], acc, cast, acc)    # (no loss terms)
            continue
        mxs, sums = _group_stats(z, out, o0, o1, acc)
        for o in range(o0, o1):
            mx, s = mxs[o - o0], sums[o - o0]
            c = _normalizer(s, log_, cast)
            for r in range(k):
                out[o, r] = _finish(z[o, r], out[o, r], mx, c, log_)


# examples per block of the strided layout, as the Cython kernels (layers.pyx, COLUMN_BLOCK)
_COLUMN_BLOCK, _PANEL_COLUMNS, _PANEL_CACHE_BYTES = 256, 1024, 1 << 20


def _column_blocks(z):
    """(width, blocks): the examples per block of the strided layout (outer, k, inner) z,
    whole (k, inner) blocks when there is one per thread, 1024 when 256 columns of the k rows
    overflow the cache anyway, else 256 (layers.pyx's column_width); and the blocks of z."""
    outer, k, inner = z.shape
    if inner <= _PANEL_COLUMNS and outer >= threads_now():
        width = inner
    elif inner > _PANEL_COLUMNS and 2 * k * _COLUMN_BLOCK * z.itemsize > _PANEL_CACHE_BYTES:
        width = _PANEL_COLUMNS
    else:
        width = _COLUMN_BLOCK
    return width, outer * -(-inner // width)


@numba.njit(**_PAR)
def _softmax(z, out, log_, width):
    outer, k, inner = z.shape
    nblk = (inner + width - 1) // width
    for t in prange(outer * nblk):
        cast = np.empty(1, z.dtype)
        mx = np.empty(width, z.dtype)
        s = np.empty(width)
        o = t // nblk
        i0 = (t % nblk) * width
        i1 = min(i0 + width, inner)
        _column_stats(z[o], out[o], i0, i1, mx, s)
        c = np.empty(width, z.dtype)
        for i in range(i1 - i0):
            c[i] = _normalizer(s[i], log_, cast)
        for r in range(k):
            zr, outr = z[o, r, i0:i1], out[o, r, i0:i1]
            for j in range(i1 - i0):
                outr[j] = _finish(zr[j], outr[j], mx[j], c[j], log_)


def softmax(z, out, log):
    if z.shape[1] == 0 or z.shape[0] * z.shape[2] == 0:
        return
    with use_threads(z.size):
        z = read_only(z)
        if z.shape[2] == 1:
            chunked(_softmax_rows, _row_groups(z), z[:, :, 0], out[:, :, 0], bool(log))
        else:
            width, blocks = _column_blocks(z)
            chunked(_softmax, blocks, z, out, bool(log), width)


@numba.njit(inline="always", **JIT)
def _xent(z, d, mx, inv_s, log_s, t, inv_m):
    """d holds exp(z - mx): make it the gradient (p - t) / m; return t * log_softmax
    (inv_s, log_s: the row's 1 / s and log(s) in the data's dtype)."""
    return _xent_grad(d, inv_s, t, inv_m), _xent_term(z, mx, log_s, t)


@numba.njit(inline="always", **JIT)
def _xent_grad(e, inv_s, t, inv_m):
    """(p - t) / m, p = e / s (e = exp(z - mx), inv_s = 1 / s)."""
    return (e * inv_s - t) * inv_m


@numba.njit(inline="always", **JIT)
def _xent_term(z, mx, log_s, t):
    """t * log_softmax(z), 0 where t is 0 (whatever z is)."""
    if t != 0:
        return t * ((z - mx) - log_s)
    return 0.0


@numba.njit(**_PAR)
def _xent_rows(z, labels, targets, by_index, dz, inv_m, one, terms):
    """Classes last: z is (outer, k), each example a contiguous row."""
    outer, k = z.shape
    rows = _rows_per_group(k)
    for g in prange((outer + rows - 1) // rows):
        cast = np.empty(1, z.dtype)
        acc = np.empty(8)
        o0, o1 = g * rows, min(g * rows + rows, outer)
        if _long_row(k, z.itemsize):
            _long_rows(z, dz, o0, o1, _FINISH_SCALE2, labels, by_index, targets, inv_m, one,
                       terms, cast, acc)
            continue
        mxs, sums = _group_stats(z, dz, o0, o1, acc)
        for o in range(o0, o1):
            mx, s = mxs[o - o0], sums[o - o0]
            _xent_row(z[o], labels[o, 0] if by_index else 0, targets[o], by_index, dz[o], inv_m,
                      one, cast, acc, terms, o, mx, s)


@numba.njit(inline="always", **JIT)
def _xent_row(z, label, target, by_index, d, inv_m, one, cast, acc, terms, o, mx, s):
    """One example from its stats (d holds exp(z - mx), s its sum): d = (softmax(z) - target)
    / m; terms[o] = sum(target * log_softmax(z)) (target: the one-hot of ``label`` when
    ``by_index``; summed as _row_sum sums, as the Cython kernel: acc is 8 float64 of
    scratch)."""
    inv_s, log_s = _normalizer(s, False, cast), _normalizer(s, True, cast)
    if by_index:        # only the label's entry differs from p / m (as the Cython kernel)
        p_label = d[label] * inv_s
        _finish_row(_FINISH_SCALE2, z, d, inv_s, inv_m)     # (p - 0) / m but at the label
        d[label] = (p_label - one) * inv_m
        terms[o] = (z[label] - mx) - log_s
        return
    for r in range(z.size):
        d[r] = _xent_grad(d[r], inv_s, target[r], inv_m)
    acc[:] = 0.0
    for r in range(z.size):
        if target[r] != 0:
            acc[r % 8] += target[r] * ((z[r] - mx) - log_s)
    terms[o] = _sum8(acc)


@numba.njit(**_PAR)
def _xent_kernel(z, labels, targets, by_index, dz, inv_m, one, terms, width):
    outer, k, inner = z.shape
    zero = one - one
    nblk = (inner + width - 1) // width
    for tk in prange(outer * nblk):
        cast = np.empty(1, z.dtype)
        mx = np.empty(width, z.dtype)
        s = np.empty(width)
        o = tk // nblk
        i0 = (tk % nblk) * width
        i1 = min(i0 + width, inner)
        _column_stats(z[o], dz[o], i0, i1, mx, s)
        inv_s, log_s = np.empty(width, z.dtype), np.empty(width, z.dtype)
        for i in range(i1 - i0):
            inv_s[i], log_s[i] = _normalizer(s[i], False, cast), _normalizer(s[i], True, cast)
        sums = terms[o * inner + i0:o * inner + i1]
        if by_index:    # the loss needs z at the label only (as the Cython kernel)
            lab = labels[o, i0:i1]
            for r in range(k):
                dr = dz[o, r, i0:i1]
                for j in range(i1 - i0):
                    dr[j] = _xent_grad(dr[j], inv_s[j], one if lab[j] == r else zero, inv_m)
            for j in range(i1 - i0):
                sums[j] += _xent_term(z[o, lab[j], i0 + j], mx[j], log_s[j], one)
            continue
        for r in range(k):
            zr, dr, tr = z[o, r, i0:i1], dz[o, r, i0:i1], targets[o, r, i0:i1]
            for j in range(i1 - i0):
                g, term = _xent(zr[j], dr[j], mx[j], inv_s[j], log_s[j], tr[j], inv_m)
                dr[j] = g
                sums[j] += term


_NO_LABELS = read_only(np.zeros((1, 1), np.int64))


def softmax_cross_entropy(z, labels, targets, dz):
    m = z.shape[0] * z.shape[2]
    if m == 0 or z.shape[1] == 0:   # a mean over no examples is NaN (as torch's); no classes: 0
        return math.nan if m == 0 else 0.0
    with use_threads(z.size):
        terms = np.zeros(m)
        by_index = labels is not None
        z = read_only(z)
        labels = read_only(labels) if by_index else _NO_LABELS
        targets = z if by_index else read_only(targets)
        # 1 / m and 1 in the data's dtype (a 1 made in the kernels, as inv_m - inv_m + 1, was
        # float64 for float32 data: Numba types float32 + int as float64, and so computed the
        # gradient's label entries, and the strided layout's targets, in float64)
        inv_m, one = z.dtype.type(1.0 / m), z.dtype.type(1)
        if z.shape[2] == 1:
            chunked(_xent_rows, _row_groups(z), z[:, :, 0], labels, targets[:, :, 0],
                    by_index, dz[:, :, 0], inv_m, one, terms)
        else:
            width, blocks = _column_blocks(z)
            chunked(_xent_kernel, blocks, z, labels, targets, by_index, dz, inv_m, one, terms,
                    width)
        return (0.0 - _row_sum(terms, np.empty(8))) / m     # (a zero loss is +0.0, as torch's)
