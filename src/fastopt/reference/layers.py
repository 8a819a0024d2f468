"""NumPy reference for the layer kernels: batch normalization and the softmax family.

Kernel-level signatures, shared with the Cython and Numba twins. ``fastopt.layers`` brings the
input to a canonical C-contiguous layout (no copy for C- or Fortran-ordered arrays) and
allocates the outputs:

- batch norm works on a 2-D ``x`` with ``axis`` the batch axis (0: rows are examples, each
  feature a column; 1: each feature a row, the course's ``(n_features, m)``); statistics are
  float64 arrays with one entry per feature;
- softmax works on a 3-D view ``(outer, k, inner)`` and normalizes over ``k``.
Statistics and sums are accumulated in float64 (two passes: mean, then centered squares), the
element-wise parts run in the data's dtype from them.
"""
import math

import numpy as np


# ------------------------------------------------------------------------------ batch norm
def batchnorm_stats(x, axis, eps, mean, mean_error, inv_std, var):
    """``mean = x.mean(axis)``, the biased variance ``var = mean((x - mean)**2)`` and
    ``inv_std = 1 / sqrt(var + eps)``, accumulated in float64 (written into the float64
    outputs; var for the running statistics, which cannot take it back from inv_std where it
    is small next to eps).

    The mean is taken about each feature's first value x0, as ``x0 + mean(x - x0)``: exact
    for a constant feature (its variance 0, y = beta), where ``x.mean()`` is off by an ulp or
    so (float64 0.1 over 37 rows), which the normalization then blows up (eps=0: y = -1,
    not NaN; 1e14 / 3: |y| ~ 1). Where that mean times the batch size is not finite (NaN,
    inf, a sum past the float range) the mean is ``x.mean()``, as the sums overflow.

    ``mean_error`` is what rounding ``x0 + mean(x - x0)`` to float64 moved the mean by
    (``mean`` less the exact one; exact itself: both sides lie close together where it
    matters, and 0 where the mean is ``x.mean()``). The variance is the one about the exact
    mean, and the normalization and the gradients centre x there too (:func:`exact_bias`,
    :func:`exact_centred_sum`): x - mean is exact in float64 where the mean is many orders
    above the spread, and the mean's rounding is then what y and dx would lose (float64
    1e10 + 1e-3 randn: y 2e-4 off, not 1e-16)."""
    x64 = x.astype(np.float64)
    first = np.take(x64, [0], axis=axis)
    x0 = np.squeeze(first, axis)
    shifted = (x64 - first).mean(axis=axis)
    mean[...] = x0 + shifted
    mean_error[...] = (mean - x0) - shifted
    overflow = ~np.isfinite(mean * x.shape[axis])
    if overflow.any():      # (those features only: a pass over x less, most calls)
        mean[overflow] = x64.mean(axis=axis)[overflow]
        mean_error[overflow] = 0.0
    # the squares about the rounded mean hold the square of its error too: taken off
    var[...] = batch_variance(x64, axis, mean)
    finite = np.isfinite(var)       # (an infinite one stays so: its error may be too)
    var[finite] = np.maximum(var[finite] - mean_error[finite] ** 2, 0.0)
    inv_std[...] = 1.0 / np.sqrt(var + eps)


def batch_variance(x, axis, mean):
    """The biased variance ``mean((x - mean)**2)`` along ``axis`` in float64, by two passes
    (``mean``: x's float64 mean along it)."""
    centred = np.asarray(x, np.float64) - np.expand_dims(mean, axis)
    return (centred * centred).mean(axis=axis)


def exact_bias(beta, scale, mean_error):
    """``beta + mean_error * scale``: the bias that makes ``(x - mean) * scale + bias`` the
    normalization about the exact mean (x - exact = x - mean + mean_error); beta itself
    where the error is 0 or the scale is not finite (gamma * inv_std past the float range,
    or eps = 0 with a variance of 0: x - mean gives the infinities, NaN only where x is the
    mean, however the backend's mean rounded; an infinite bias had made every x on one side
    of the mean NaN, q70, q72)."""
    with np.errstate(all="ignore"):
        return np.where((mean_error != 0) & np.isfinite(scale), beta + mean_error * scale,
                        beta)


def exact_centred_sum(dgc, db, mean_error):
    """``sum(dy * (x - exact mean))`` from ``dgc = sum(dy * (x - mean))`` and ``db = sum(dy)``:
    ``dgc + mean_error * db`` (dgc itself where the error is 0 or db is not finite)."""
    with np.errstate(all="ignore"):
        return np.where((mean_error != 0) & np.isfinite(db), dgc + mean_error * db, dgc)


def exact_k0(k_0, k_x, mean_error):
    """dx's constant term about the exact mean: ``k_0 + k_x * mean_error`` (dx = k_dy * dy -
    k_x * (x - mean + mean_error) - k_0); k_0 itself where the error is 0 or k_x not finite."""
    with np.errstate(all="ignore"):
        return np.where((mean_error != 0) & np.isfinite(k_x), k_0 + k_x * mean_error, k_0)


def batchnorm_apply(x, axis, gamma, beta, mean, inv_std, y, mean_error=None):
    """``y = (x - mean) * (gamma * inv_std) + beta`` per feature, computed in float64 and
    rounded once to x's dtype (so a large mean costs no precision in float32), about the exact
    mean when ``mean_error`` is given (:func:`exact_bias`). Training forward and inference
    both end here."""
    scale = gamma.astype(np.float64) * inv_std
    bias = beta.astype(np.float64)
    if mean_error is not None:
        bias = exact_bias(bias, scale, mean_error)
    y[...] = ((x.astype(np.float64) - np.expand_dims(mean, axis)) * np.expand_dims(scale, axis)
              + np.expand_dims(bias, axis))


def batchnorm_inference(x, axis, gamma, beta, running_mean, running_var, eps, y):
    """Inference: :func:`batchnorm_apply` with the running statistics (x's dtype), widened
    to float64, and ``inv_std = 1 / sqrt(running_var + eps)``."""
    inv_std = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    batchnorm_apply(x, axis, gamma, beta, running_mean.astype(np.float64), inv_std, y)


def batchnorm_forward(x, axis, gamma, beta, eps, mean, mean_error, inv_std, var, y):
    """Training forward: :func:`batchnorm_stats` into ``mean``, ``mean_error``, ``inv_std``
    and ``var``, then :func:`batchnorm_apply` with them into ``y``."""
    batchnorm_stats(x, axis, eps, mean, mean_error, inv_std, var)
    batchnorm_apply(x, axis, gamma, beta, mean, inv_std, y, mean_error)


def batchnorm_backward(dy, x, axis, gamma, mean, mean_error, inv_std, dx, dgamma, dbeta):
    """Gradients of :func:`batchnorm_apply` after :func:`batchnorm_stats`, ``n`` the batch size,
    about the exact mean (``mean - mean_error``):

    dbeta = sum(dy);  dgamma = inv_std * sum(dy * (x - exact mean))  (float64 sums)
    dx = (gamma * inv_std / n) * (n * dy - dbeta - xhat * dgamma), xhat = (x - exact) * inv_std,
    computed as ``k_dy * dy - k_x * (x - mean) - k_0`` with the per-feature coefficients
    ``k_dy = gamma * inv_std``, ``k_x = gamma * inv_std / n * inv_std * dgamma`` and
    ``k_0 = gamma * inv_std / n * dbeta``, then ``k_0 + k_x * mean_error``
    (:func:`exact_centred_sum`, :func:`exact_k0`).
    """
    n = x.shape[axis]
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    centred = x64 - np.expand_dims(mean, axis)
    db = dy64.sum(axis=axis)
    dg = exact_centred_sum((dy64 * centred).sum(axis=axis), db, mean_error) * inv_std
    dbeta[...] = db
    dgamma[...] = dg
    g64 = gamma.astype(np.float64)
    coef = g64 * inv_std / n
    k_x = coef * inv_std * dg
    k_dy, k_x, k_0 = (np.expand_dims(k, axis) for k in (
        g64 * inv_std, k_x, exact_k0(coef * db, k_x, mean_error)))
    dx[...] = k_dy * dy64 - k_x * centred - k_0


# --------------------------------------------------------------------------------- softmax
def softmax(z, out, log):
    """Softmax (or log-softmax when ``log``) of the 3-D ``z`` over its middle axis:
    ``e = exp(z - max)``; ``out = e * (1 / sum(e))`` (one division per row, as torch) or
    ``z - max - log(sum(e))``, the sum in float64, ``1 / sum`` and ``log(sum)`` rounded once to
    the data's dtype. A row whose max
    is -inf (all -inf) gives NaN, as exp(-inf - -inf) does."""
    if z.size == 0:
        return
    zmax = z.max(axis=1, keepdims=True)
    shifted = z - zmax
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True, dtype=np.float64)
    if log:
        out[...] = shifted - np.log(s).astype(z.dtype)
    else:
        out[...] = e * (1.0 / s).astype(z.dtype)


def softmax_cross_entropy(z, labels, targets, dz):
    """Fused softmax cross-entropy on the 3-D ``z`` (classes on the middle axis) with either
    integer ``labels`` (shape ``(outer, inner)``) or probability ``targets`` (shape of z); the
    other is None. Writes ``dz = (softmax(z) - target) * (1 / m)`` (``m = outer * inner``
    examples) and returns the mean loss ``-sum(target * log_softmax(z)) / m`` (float64 sum;
    zero targets contribute nothing, even where log_softmax is -inf)."""
    m = z.shape[0] * z.shape[2]
    if z.size == 0:         # a mean over no examples is NaN (as torch's); no classes sum to 0
        return math.nan if m == 0 else 0.0
    p = np.empty_like(z)
    logp = np.empty_like(z)
    softmax(z, p, log=False)
    softmax(z, logp, log=True)
    if labels is not None:
        target = np.zeros_like(z)
        np.put_along_axis(target, labels[:, None, :], 1, axis=1)
        terms = np.take_along_axis(logp, labels[:, None, :], axis=1)
    else:
        target = targets
        with np.errstate(invalid="ignore"):
            terms = np.where(target != 0, target * logp, 0)
    dz[...] = (p - target) * (1.0 / m)
    return float((0.0 - terms.astype(np.float64).sum()) / m)    # (a zero loss is +0.0, as torch's)
