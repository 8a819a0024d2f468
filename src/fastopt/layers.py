"""Batch normalization and the softmax family, on the active backend.

The functions validate their inputs, bring them to the layout the kernels read (C-contiguous,
aligned, native byte order: C- and Fortran-ordered arrays are used without a copy, other
layouts are copied once), allocate the outputs (or write into ``out=``) and call the backend
kernels (``fastopt.reference.layers`` defines them). Inputs are only read, so read-only arrays
are fine; an input that shares memory with ``out`` is copied first.
"""
import numbers

import numpy as np

from . import _backend
from ._validate import FLOAT_DTYPES, check_kernel_array


def _float_array(name, a):
    """``a`` checked as the element-wise kernels check their arrays (a float32/float64
    ndarray, not a matrix nor a masked array: TypeError naming ``name``), in native byte
    order (a byte-swapped array is converted)."""
    check_kernel_array(name, a)
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def _kernel_input(a, dtype=None):
    """``a`` as the kernels read it: C-contiguous and aligned (``a`` itself when it is)."""
    return np.require(a, dtype, ["C", "A"])


def _out(out, shape, dtype):
    """``out`` checked to be a writeable ndarray of ``shape`` and ``dtype`` (any layout or byte
    order), or a new array when it is None."""
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype.newbyteorder("=") != dtype:
        raise TypeError(f"out has dtype {out.dtype}, expected {dtype}")
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, expected {shape}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    return out


def _kernel_output(y, transposed=False):
    """(array a kernel writes, whether it is scratch) for the output ``y`` (seen transposed
    when ``transposed``): that view of y itself when it is C-contiguous, aligned and native,
    else a scratch array for :func:`_write_back` to copy into y."""
    yc = y.T if transposed else y
    if yc.flags.c_contiguous and yc.flags.aligned and yc.dtype.isnative:
        return yc, False
    return np.empty(yc.shape, yc.dtype.newbyteorder("=")), True


def _write_back(y, yc, scratch, transposed=False):
    if scratch:
        y[...] = yc.T if transposed else yc


def _unshared(out, a):
    """``a``, or a copy of it when it may share memory with ``out`` (the kernels read their
    inputs while writing the output)."""
    if out is not None and a is not None and np.may_share_memory(out, a):
        return a.copy()
    return a


def _check_axis(axis):
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    return int(axis)


def _check_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    if not eps >= 0:
        raise ValueError(f"Invalid eps: {eps!r} (must be >= 0)")


# ------------------------------------------------------------------------------ batch norm
def _bn_layout(x, axis, out):
    """(C-contiguous 2-D array, its batch axis, whether it is ``x.T``) for ``x`` with batch
    axis ``axis``. A Fortran-ordered x (e.g. the transpose of a C array) is used as its
    transpose, without a copy; x is copied when it may share memory with ``out``."""
    x = _unshared(out, _float_array("x", x))
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (batch axis plus features), got shape {x.shape}; "
                         "reshape other ranks so that one axis holds the features")
    axis = _check_axis(axis)
    if axis not in (0, 1, -1, -2):
        raise ValueError(f"Invalid axis: {axis!r} (0 or 1 for a 2-D x)")
    axis %= 2
    if x.flags.f_contiguous and not x.flags.c_contiguous:
        return _kernel_input(x.T), 1 - axis, True
    return _kernel_input(x), axis, False


def _features(name, a, x, axis, out=None):
    n_features = x.shape[1 - axis]
    a = _unshared(out, _float_array(name, a))
    if a.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {a.dtype}, expected {x.dtype} like x")
    if a.size != n_features or a.ndim > 2 or (a.ndim == 2 and 1 not in a.shape):
        raise ValueError(f"{name} has shape {a.shape}, expected ({n_features},) "
                         f"(one value per feature of x with batch axis {axis})")
    return _kernel_input(a.reshape(-1))


class BatchNormCache:
    """What :func:`batchnorm_backward` needs: x (not x-hat: backward re-reads x, which costs
    the same memory traffic as reading a cached x-hat and saves writing one), gamma, and the
    per-feature mean and inverse standard deviation (float64)."""
    __slots__ = ("x", "axis", "gamma", "mean", "inv_std", "var", "transposed", "shape")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


def batchnorm_forward(x, gamma, beta, axis=0, eps=1e-5, out=None):
    """Training-mode batch normalization of a 2-D ``x``; returns ``(y, cache)``.

    ``axis`` is the batch axis reduced over: 0 for ``(N, C)`` rows-are-examples, 1 for the
    course's ``(n_features, m)``. ``gamma`` and ``beta`` hold one value per feature (shape
    ``(C,)``, or ``(C, 1)``/``(1, C)``). With the biased batch variance,
    ``y = (x - mean) / sqrt(var + eps) * gamma + beta``; statistics accumulate in float64 in
    two passes (mean, then centred squares), so data with a large mean stays accurate.
    A batch of 1 raises ValueError. ``out`` (same shape and dtype as x) avoids allocating y.
    """
    xc, ax, transposed = _bn_layout(x, axis, out)
    if xc.shape[ax] < 2:
        raise ValueError(f"batch norm in training needs more than 1 example per feature, "
                         f"got a batch of {xc.shape[ax]}")
    g = _features("gamma", gamma, xc, ax, out)
    b = _features("beta", beta, xc, ax, out)
    _check_eps(eps)
    shape = xc.T.shape if transposed else xc.shape
    y = _out(out, shape, xc.dtype)
    yc, scratch = _kernel_output(y, transposed)
    n_features = xc.shape[1 - ax]
    mean, inv_std = np.empty(n_features), np.empty(n_features)
    kern = _backend.active
    kern.batchnorm_stats(xc, ax, eps, mean, inv_std)
    kern.batchnorm_apply(xc, ax, g, b, mean, inv_std, yc)
    _write_back(y, yc, scratch, transposed)
    cache = BatchNormCache(x=xc, axis=ax, gamma=g, mean=mean, inv_std=inv_std,
                           var=1.0 / inv_std ** 2 - eps, transposed=transposed, shape=shape)
    return y, cache


def batchnorm_backward(dy, cache, out=None):
    """Gradients of :func:`batchnorm_forward`: ``(dx, dgamma, dbeta)``.

    ``dbeta = sum(dy)``, ``dgamma = sum(dy * xhat)``,
    ``dx = gamma * inv_std / N * (N * dy - dbeta - xhat * dgamma)`` (N the batch size);
    dgamma and dbeta have gamma's flat shape ``(C,)``. ``out`` (shaped like x) receives dx,
    sparing a fresh allocation (whose pages fault in on first write) every step.
    """
    if not isinstance(cache, BatchNormCache):
        raise TypeError("cache must be the second value returned by batchnorm_forward")
    dy = _unshared(out, _float_array("dy", dy))
    if dy.dtype != cache.x.dtype:
        raise TypeError(f"dy has dtype {dy.dtype}, expected {cache.x.dtype} like x")
    if dy.shape != cache.shape:
        raise ValueError(f"dy has shape {dy.shape}, expected {cache.shape} like x")
    xc, ax, gamma = _unshared(out, cache.x), cache.axis, _unshared(out, cache.gamma)
    dyc = _kernel_input(dy.T if cache.transposed else dy)
    dx = _out(out, cache.shape, xc.dtype)
    dxc, scratch = _kernel_output(dx, cache.transposed)
    n_features = xc.shape[1 - ax]
    dgamma, dbeta = np.empty(n_features), np.empty(n_features)
    _backend.active.batchnorm_backward(dyc, xc, ax, gamma, cache.mean, cache.inv_std,
                                       dxc, dgamma, dbeta)
    _write_back(dx, dxc, scratch, cache.transposed)
    return dx, dgamma.astype(xc.dtype), dbeta.astype(xc.dtype)


def batchnorm_inference(x, gamma, beta, running_mean, running_var, axis=0, eps=1e-5,
                        out=None):
    """Inference-mode batch normalization with running statistics:
    ``y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta``."""
    xc, ax, transposed = _bn_layout(x, axis, out)
    g = _features("gamma", gamma, xc, ax, out)
    b = _features("beta", beta, xc, ax, out)
    rm = _features("running_mean", running_mean, xc, ax).astype(np.float64)
    rv = _features("running_var", running_var, xc, ax).astype(np.float64)
    _check_eps(eps)
    y = _out(out, xc.T.shape if transposed else xc.shape, xc.dtype)
    yc, scratch = _kernel_output(y, transposed)
    _backend.active.batchnorm_apply(xc, ax, g, b, rm, 1.0 / np.sqrt(rv + eps), yc)
    _write_back(y, yc, scratch, transposed)
    return y


class BatchNorm:
    """A batch-norm layer with learnable ``gamma``/``beta`` and running statistics updated
    as torch.nn.BatchNorm1d: ``r = (1 - momentum) * r + momentum * batch_stat``, the unbiased
    batch variance going into ``running_var`` (the biased one normalizes).

    ``forward(x, training=True)`` returns y; ``backward(dy)`` returns dx and sets ``dgamma``
    and ``dbeta`` (shaped like gamma), ready for an optimizer over ``[gamma, beta]``.
    """

    def __init__(self, num_features, axis=0, momentum=0.1, eps=1e-5, dtype=np.float32):
        dtype = np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral):
            raise TypeError(f"num_features must be an int, got {type(num_features).__name__}")
        if num_features < 1:
            raise ValueError(f"Invalid num_features: {num_features!r}")
        if _check_axis(axis) not in (0, 1, -1, -2):
            raise ValueError(f"Invalid axis: {axis!r} (0 or 1 for a 2-D x)")
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
            raise TypeError(f"momentum must be a real number, got {type(momentum).__name__}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"Invalid momentum: {momentum!r} (must be in [0, 1])")
        _check_eps(eps)
        self.axis, self.momentum, self.eps = axis, momentum, eps
        self.gamma = np.ones(num_features, dtype)
        self.beta = np.zeros(num_features, dtype)
        self.running_mean = np.zeros(num_features, dtype)
        self.running_var = np.ones(num_features, dtype)
        self.dgamma = np.zeros(num_features, dtype)
        self.dbeta = np.zeros(num_features, dtype)
        self._cache = None

    def forward(self, x, training=True):
        if not training:
            return batchnorm_inference(x, self.gamma, self.beta, self.running_mean,
                                       self.running_var, self.axis, self.eps)
        y, cache = batchnorm_forward(x, self.gamma, self.beta, self.axis, self.eps)
        n = cache.x.shape[cache.axis]
        m = self.momentum
        self.running_mean[...] = (1 - m) * self.running_mean + m * cache.mean
        self.running_var[...] = (1 - m) * self.running_var + m * (cache.var * n / (n - 1))
        self._cache = cache
        return y

    __call__ = forward

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError("backward needs a forward in training mode first")
        dx, self.dgamma[...], self.dbeta[...] = batchnorm_backward(dy, self._cache)
        return dx

    @property
    def params(self):
        return {"gamma": self.gamma, "beta": self.beta}

    @property
    def grads(self):
        return {"dgamma": self.dgamma, "dbeta": self.dbeta}


# --------------------------------------------------------------------------------- softmax
def _as_float_array(name, z):
    """``z`` as a native float32/float64 ndarray: array-likes and integer or boolean arrays
    become float64, as NumPy's ufuncs do; other dtypes raise TypeError naming ``name``."""
    if not isinstance(z, np.ndarray):
        given, z = z, np.asarray(z)
        if z.dtype.kind not in "iubf":
            raise TypeError(f"{name} must be an array of numbers, got {type(given).__name__}")
    if z.dtype.kind in "iub" and not isinstance(z, (np.matrix, np.ma.MaskedArray)):
        z = z.astype(np.float64)
    return _float_array(name, z)


def _softmax_layout(z, axis, name="z"):
    """(3-D view (outer, k, inner) of z in the kernels' layout, normalized axis) of the float
    array ``z``. A 0-d z is one class of one example (axis -1 or 0), as in torch."""
    axis = _check_axis(axis)
    if not -max(z.ndim, 1) <= axis < max(z.ndim, 1):
        raise ValueError(f"Invalid axis: {axis!r} for {name} of shape {z.shape}")
    zc = _kernel_input(z)
    if z.ndim == 0:
        return zc.reshape(1, 1, 1), 0
    axis %= z.ndim
    outer = int(np.prod(zc.shape[:axis]))
    inner = int(np.prod(zc.shape[axis + 1:]))
    return zc.reshape(outer, zc.shape[axis], inner), axis


def _softmax(z, axis, out, log):
    z = _unshared(out, _as_float_array("z", z))
    z3, _ = _softmax_layout(z, axis)
    y = _out(out, z.shape, z.dtype)
    yc, scratch = _kernel_output(y)
    _backend.active.softmax(z3, yc.reshape(z3.shape), log)
    _write_back(y, yc, scratch)
    return y


def softmax(z, axis=-1, out=None):
    """Numerically stable softmax along ``axis``: ``exp(z - max) / sum(exp(z - max))``.
    ``axis=0`` serves the course's ``(classes, m)`` layout. NaN in a row stays in that row.
    ``z`` is a float32/float64 array (lists and integer arrays are taken as float64);
    ``out`` (shaped like z, same dtype) receives the result."""
    return _softmax(z, axis, out, False)


def log_softmax(z, axis=-1, out=None):
    """``z - max - log(sum(exp(z - max)))`` along ``axis``."""
    return _softmax(z, axis, out, True)


def softmax_cross_entropy(logits, labels, axis=-1, out=None):
    """Mean cross-entropy of ``softmax(logits)`` against ``labels`` and its gradient:
    ``(loss, dlogits)`` with ``dlogits = (softmax(logits) - onehot) / m``, m the number of
    examples (every position but ``axis``).

    ``labels`` is either integer class indices shaped like ``logits`` without ``axis``, or a
    one-hot/probability array shaped like ``logits``. Out-of-range labels raise ValueError.
    ``out`` receives dlogits.
    """
    logits = _unshared(out, _as_float_array("logits", logits))
    if logits.ndim == 0:
        raise ValueError("logits must have at least 1 dimension (the classes)")
    z3, axis = _softmax_layout(logits, axis, "logits")
    k = z3.shape[1]
    if labels is None or isinstance(labels, (np.matrix, np.ma.MaskedArray)):
        raise TypeError(f"labels must be an array of class indices or probabilities, got "
                        f"{type(labels).__name__}")
    labels = _unshared(out, np.asarray(labels))
    if labels.dtype.kind not in "iuf":
        raise TypeError(f"labels must have an integer (class indices) or float "
                        f"(probabilities) dtype, got {labels.dtype}")
    ints = targets = None
    if labels.shape == logits.shape and labels.dtype.kind == "f":
        targets = _kernel_input(labels, logits.dtype).reshape(z3.shape)
    else:
        expected = logits.shape[:axis] + logits.shape[axis + 1:]
        if labels.shape != expected:
            raise ValueError(f"labels has shape {labels.shape}, expected {expected} (class "
                             f"indices) or {logits.shape} (one-hot/probabilities)")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"integer labels must have an integer dtype, got {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(f"labels out of range: classes are 0..{k - 1}, got values in "
                             f"[{labels.min()}, {labels.max()}]")
        ints = _kernel_input(labels, np.int64).reshape(z3.shape[0], z3.shape[2])
    d = _out(out, logits.shape, logits.dtype)
    dc, scratch = _kernel_output(d)
    loss = _backend.active.softmax_cross_entropy(z3, ints, targets, dc.reshape(z3.shape))
    _write_back(d, dc, scratch)
    return loss, d


__all__ = ["batchnorm_forward", "batchnorm_backward", "batchnorm_inference", "BatchNorm",
           "softmax", "log_softmax", "softmax_cross_entropy"]
