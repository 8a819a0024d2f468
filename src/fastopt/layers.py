"""Batch normalization and the softmax family, on the active backend.

The functions validate their inputs, bring them to the layout the kernels read (C-contiguous,
aligned, native byte order: batch norm uses C- and Fortran-ordered arrays without a copy, the
softmax family C-ordered ones along any axis; other layouts are copied once), allocate the
outputs (or write into ``out=``) and call the backend kernels (``fastopt.reference.layers``
defines them). Inputs are only read, so read-only arrays
are fine; an input that shares memory with ``out`` is copied first.
"""
import copy
import math
import numbers
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _backend
from ._hyper import UNIT, check_flag, check_real
from ._validate import (FLOAT_DTYPES, FLOAT_TYPES, as_array, as_count, check_kernel_array,
                        check_plain, check_state_keys, check_writeable, has_own_arithmetic,
                        npz_item)
from ._validate import check_axis as _check_axis

_MaybeArray = TypeVar("_MaybeArray", bound=np.ndarray | None)


def _float_array(name: str, a: Any) -> np.ndarray:
    """``a`` checked as the element-wise kernels check their arrays (a float32/float64
    ndarray of no arithmetic of its own: TypeError naming ``name``), in native byte
    order (a byte-swapped array is converted)."""
    check_kernel_array(name, a)
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def _kernel_input(a: np.ndarray, dtype: DTypeLike | None = None) -> np.ndarray:
    """``a`` as the kernels read it: C-contiguous and aligned (``a`` itself when it is)."""
    flags = a.flags
    if flags.c_contiguous and flags.aligned and (dtype is None or a.dtype == dtype):
        return a                  # (np.require takes ~2 us to find that out)
    return np.require(a, dtype, ["C", "A"])


def _out(out: np.ndarray | None, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """``out`` checked to be a writeable ndarray of ``shape`` and ``dtype`` (any layout or byte
    order) with every element at its own address, or a new array when it is None."""
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    check_plain("out", out)     # as inputs: a matrix stays 2-D
    if out.dtype.newbyteorder("=") != dtype:
        raise TypeError(f"out has dtype {out.dtype}, expected {dtype}")
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, expected {shape}")
    # read-only, or with elements that share memory (a zero stride, overlapping as_strided
    # windows: it took the last value written to each address), it is refused, as torch's
    # out= and the ops for the arrays they update
    check_writeable("out", out)
    return out


def _kernel_output(y, transposed=False, dtype=None):
    """(array a kernel writes, whether it is scratch) for the output ``y`` (seen transposed
    when ``transposed``), computed in ``dtype`` (default: y's): that view of y itself when it
    is C-contiguous, aligned, native and of that dtype, else a scratch array for
    :func:`_write_back` to copy (and round) into y."""
    yc = y.T if transposed else y
    dtype = yc.dtype.newbyteorder("=") if dtype is None else dtype
    if yc.flags.c_contiguous and yc.flags.aligned and yc.dtype == dtype:
        return yc, False
    return np.empty(yc.shape, dtype), True


def _write_back(y, yc, scratch, transposed=False):
    if scratch:
        # rounding to a narrower y (float16's softmax family, computed in float32) may
        # overflow to -inf or underflow to 0 (a probability below 6e-8, a log-probability
        # below -65504), which is the result (torch's too), not an error
        with np.errstate(over="ignore", under="ignore"):
            y[...] = yc.T if transposed else yc


def _unshared(out: np.ndarray | None, a: _MaybeArray, order: str = "C") -> _MaybeArray:
    """``a``, or a copy of it in ``order`` when it may share memory with ``out`` (the kernels
    read their inputs while writing the output)."""
    if out is not None and a is not None and np.may_share_memory(out, a):
        return a.copy(order=order)
    return a


def _check_eps(eps):
    """``eps`` as a Python float, once it is a real number >= 0 (a 0-d array too, as
    everywhere a hyper-parameter is taken), else TypeError or ValueError naming it."""
    if type(eps) is float and eps >= 0:     # the common case, without the ABC check
        return eps
    check_real("eps", eps)
    return float(eps)


def _check_momentum(momentum):
    """A batch-norm ``momentum`` as a Python float, once it is a real number in [0, 1] (a 0-d
    array too), or None (a cumulative average); else TypeError or ValueError naming it."""
    if momentum is None or type(momentum) is float and 0.0 <= momentum <= 1.0:
        return momentum             # the common case, without the ABC check
    check_real("momentum", momentum, UNIT)
    return float(momentum)


# ------------------------------------------------------------------------------ batch norm
def _bn_layout(x, axis, out):
    """(C-contiguous 2-D array, its batch axis, whether it is ``x.T``) for ``x`` with batch
    axis ``axis``. A Fortran-ordered x (e.g. the transpose of a C array) is used as its
    transpose, without a copy; x is copied when it may share memory with ``out``."""
    x = _float_array("x", x)
    flags = x.flags
    # a Fortran-ordered x copied for out= stays so, taken as its transpose as x itself is:
    # the kernels sum the two layouts in other orders (q70, q72)
    x = _unshared(out, x, "F" if flags.f_contiguous and not flags.c_contiguous else "C")
    axis = _check_axis(axis)
    if axis not in (0, 1, -1, -2):
        raise ValueError(f"Invalid axis: {axis!r} (0 or 1 for a 2-D x)")
    axis %= 2
    flags = x.flags
    if flags.f_contiguous and not flags.c_contiguous:
        return _kernel_input(x.T), 1 - axis, True
    return _kernel_input(x), axis, False


def _features(name, a, x, axis, transposed, out=None):
    """``a`` (gamma, beta, a running statistic) as a 1-D array of one value per feature of the
    kernels' ``x`` (batch axis ``axis``; ``transposed``: the caller's x is ``x.T``, whose
    batch axis the messages name)."""
    n_features = x.shape[1 - axis]
    if type(a) is np.ndarray and a.dtype is x.dtype and a.shape == (n_features,):
        # the usual one, a plain contiguous 1-D array of x's dtype: taken in a third of the
        # checks' time (1.8 -> 0.6 us here; a batch norm takes two to four)
        flags = a.flags
        if flags.c_contiguous and flags.aligned and (out is None
                                                     or not np.may_share_memory(out, a)):
            return a
    a = _unshared(out, _float_array(name, a))
    if a.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {a.dtype}, expected {x.dtype} like x")
    if a.size != n_features or a.ndim > 2 or (a.ndim == 2 and 1 not in a.shape):
        raise ValueError(f"{name} has shape {a.shape}, expected ({n_features},) "
                         f"(one value per feature of x with batch axis "
                         f"{1 - axis if transposed else axis})")
    return _kernel_input(a.reshape(-1))


# ------------------------------------------------ batch norm of x of other ranks than 2
# An x of 1 or 3+ dimensions with batch axis k is normalized as the 2-D array of its batch
# against the other axes flattened in C order (so gamma, shaped like x without axis k, is the
# features' values in order): x.reshape(-1, m) when k is the last axis (batch axis 1), else
# moveaxis(x, k, 0).reshape(m, -1) (batch axis 0). Both are views of a C-ordered x when k is
# the first or last axis; any other x is copied once, and the result copied back into y.
def _nd_input(x, axis, out):
    """(``x`` checked, copied when it may share memory with ``out``; its batch axis as an
    index in [0, x.ndim)) for an x of any rank but 2."""
    x = _unshared(out, _float_array("x", x))
    axis = _check_axis(axis)
    if x.ndim == 0:
        raise ValueError("x is 0-d: batch norm needs a batch axis")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"Invalid axis: {axis!r} for x of shape {x.shape}")
    return x, axis % x.ndim


def _nd_2d_shape(shape, k):
    """The shape of the 2-D form of an x of ``shape`` with batch axis ``k``."""
    m, n_features = shape[k], math.prod(shape[:k] + shape[k + 1:])
    return (n_features, m) if k == len(shape) - 1 else (m, n_features)


def _nd_2d_axis(shape, k):
    """The batch axis of that 2-D form."""
    return 1 if k == len(shape) - 1 else 0


def _nd_to_2d(a, k):
    """The 2-D array the kernels read for ``a`` (shaped like x) with batch axis ``k``: a view
    when one exists, else a copy."""
    shape = _nd_2d_shape(a.shape, k)
    return a.reshape(shape) if k == a.ndim - 1 else np.moveaxis(a, k, 0).reshape(shape)


def _nd_output(out, shape, k, dtype):
    """(the result ``y`` of ``shape``: ``out`` checked, or a new array; the 2-D form the
    kernels write: a view of y where one exists, else None, the kernels' own array then
    copied into y by :func:`_nd_copy_back`)."""
    y = _out(out, shape, dtype)
    return y, (_nd_to_2d(y, k) if y.flags.c_contiguous and k in (0, y.ndim - 1) else None)


def _nd_copy_back(y, y2, written, k):
    """Copy ``written``, the 2-D form the kernels wrote, into ``y`` (batch axis ``k``), unless
    it is ``y2``, y's own view."""
    if y2 is None:
        shape = y.shape
        if k == len(shape) - 1:
            y[...] = written.reshape(shape)
        else:
            y[...] = np.moveaxis(written.reshape((shape[k],) + shape[:k] + shape[k + 1:]), 0, k)


def _nd_features(name, a, shape, k, out=None):
    """``a`` (gamma, beta, a running statistic) for x of ``shape`` with batch axis ``k`` as the
    kernels read it, one value per feature: of x's shape without axis k, or with it of
    length 1, or flat (a copy when it may share memory with ``out``: the cache keeps gamma)."""
    a = _unshared(out, _float_array(name, a))
    features = shape[:k] + shape[k + 1:]
    n = math.prod(features)
    if a.shape not in (features, shape[:k] + (1,) + shape[k + 1:], (n,)):
        raise ValueError(f"{name} has shape {a.shape}, expected {features} (x's shape "
                         f"{shape} without the batch axis {k})")
    return a.reshape(n)


def _plain(a: np.ndarray) -> np.ndarray:
    """``a`` as a base-class ndarray (a view of it when it is of a subclass, e.g. a memmap)."""
    return a if type(a) is np.ndarray else a.view(np.ndarray)


def _is_shape_of(s, n):
    """Whether ``s`` is a shape (a tuple of ints >= 0) of ``n`` elements."""
    return (type(s) is tuple and math.prod(s) == n
            and all([type(d) is int and d >= 0 for d in s]))


class BatchNormCache:
    """What :func:`batchnorm_backward` needs from a forward pass.

    It holds x (not x-hat: backward re-reads x, which costs the same memory traffic as reading a
    cached x-hat and saves writing one), gamma, and the per-feature mean, its rounding error
    ``mean_error`` (the mean less the exact one: x is centred about the exact mean), inverse
    standard deviation and biased variance ``batch_var`` (float64; :attr:`var` gives a copy).
    Made by :func:`batchnorm_forward` only.

    Parameters
    ----------
    x, axis, gamma, mean, mean_error, inv_std, eps, transposed, shape, param_shapes, batch_var,
    nd
        The attributes (``x`` as the kernels read it, ``shape`` the caller's 2-D x,
        ``param_shapes`` those of the caller's gamma and beta, which the grads take; ``nd``:
        None, or (shape, batch axis) of an x of another rank than 2, whose 2-D form the rest
        describes).
    """
    __slots__ = ("x", "axis", "gamma", "mean", "mean_error", "inv_std", "eps", "transposed",
                 "shape", "param_shapes", "batch_var", "nd")

    def __init__(self, x: np.ndarray, axis: int, gamma: np.ndarray, mean: np.ndarray,
                 mean_error: np.ndarray, inv_std: np.ndarray, eps: float, transposed: bool,
                 shape: tuple[int, ...], param_shapes: tuple[tuple[int, ...], tuple[int, ...]],
                 batch_var: np.ndarray, nd: tuple[tuple[int, ...], int] | None = None) -> None:
        self.x, self.axis, self.gamma, self.mean = x, axis, gamma, mean
        self.mean_error = mean_error
        self.inv_std, self.eps, self.transposed, self.shape = inv_std, eps, transposed, shape
        self.param_shapes, self.batch_var, self.nd = param_shapes, batch_var, nd

    def __reduce__(self):      # every pickle protocol (slots alone need protocol 2)
        return BatchNormCache, tuple(getattr(self, k) for k in self.__slots__)

    def _check(self) -> None:
        """Raise unless the arrays fit together as batchnorm_forward made them: the kernels
        read x by its shape and gamma, mean and inv_std by feature, without bounds checks (a
        cache built by hand or unpickled from elsewhere with a short mean read past its end)."""
        x, axis, gamma, mean, inv_std = self.x, self.axis, self.gamma, self.mean, self.inv_std
        mean_error = self.mean_error
        if not (type(x) is type(gamma) is type(mean) is type(mean_error) is type(inv_std)
                is np.ndarray):
            raise TypeError("cache is not as batchnorm_forward made it: x, gamma, mean, "
                            "mean_error and inv_std must be ndarrays")
        shape, ps = x.shape, self.param_shapes
        # (param_shapes are the grads' shapes: a reshape to them failed after dx was written)
        if (len(shape) != 2 or type(axis) is not int or axis not in (0, 1)
                or not (gamma.shape == mean.shape == mean_error.shape == inv_std.shape
                        == (shape[1 - axis],))
                or type(self.shape) is not tuple
                or self.shape != (shape[::-1] if self.transposed else shape)
                or type(ps) is not tuple or len(ps) != 2
                or not (_is_shape_of(ps[0], shape[1 - axis])
                        and _is_shape_of(ps[1], shape[1 - axis]))):
            raise ValueError(
                f"cache is not as batchnorm_forward made it: x {x.shape} (axis {axis}, caller's "
                f"shape {self.shape}), gamma {self.gamma.shape}, mean {self.mean.shape}, "
                f"mean_error {mean_error.shape}, inv_std {self.inv_std.shape}, param_shapes "
                f"{ps}")
        nd = self.nd
        if nd is not None and not (
                type(nd) is tuple and len(nd) == 2 and type(nd[1]) is int
                and _is_shape_of(nd[0], x.size) and len(nd[0]) != 2 and 0 <= nd[1] < len(nd[0])
                and self.shape == _nd_2d_shape(*nd)
                and (1 - axis if self.transposed else axis) == _nd_2d_axis(*nd)):
            raise ValueError(f"cache is not as batchnorm_forward made it: x {x.shape}, caller's "
                             f"shape and batch axis {nd}")
        # the kernels' buffers too: x and gamma of one native float dtype, mean and inv_std
        # float64, each C-contiguous and aligned (the Cython kernels raised their own unnamed
        # 'Buffer dtype mismatch', the others computed with what they were given)
        for name, a, dtypes in (("x", x, FLOAT_DTYPES), ("gamma", gamma, (x.dtype,)),
                                ("mean", mean, FLOAT_DTYPES[1:]),
                                ("mean_error", mean_error, FLOAT_DTYPES[1:]),
                                ("inv_std", inv_std, FLOAT_DTYPES[1:])):
            if a.dtype not in dtypes:
                raise TypeError(f"cache is not as batchnorm_forward made it: {name} has dtype "
                                f"{a.dtype}, expected {' or '.join(map(str, dtypes))}")
            if not (a.flags.c_contiguous and a.flags.aligned):
                raise ValueError(f"cache is not as batchnorm_forward made it: {name} is not "
                                 "C-contiguous and aligned")

    @property
    def var(self) -> np.ndarray:
        """The biased batch variance per feature (float64), as the normalization used it (a
        copy of :attr:`batch_var`, which the kernels summed: taken back from inv_std as
        ``1 / inv_std**2 - eps`` it cancelled where it is small next to eps)."""
        return self.batch_var.copy()


def batchnorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, axis: int = 0,
                      eps: float = 1e-5, out: np.ndarray | None = None
                      ) -> tuple[np.ndarray, BatchNormCache]:
    """Training-mode batch normalization of ``x`` over its batch axis.

    With the biased batch variance, per feature (each position along the other axes)::

        y = (x - mean) / sqrt(var + eps) * gamma + beta

    Statistics accumulate in float64 about each feature's first value, so that data with a
    large mean stays accurate and a constant feature has its mean exactly, a variance of 0
    and y = beta (the reference: the mean, then the centred squares; the compiled backends
    with features as columns: sums over blocks of rows, merged in order). The variance, y and
    the gradients are about the exact mean, whatever its magnitude: ``x - mean`` is taken with
    the mean rounded to float64 and the rounding's error added back per feature, so float64
    data whose mean is 1e10 times its spread keeps y to ~1e-16 (torch's: ~1e-3).

    Parameters
    ----------
    x : ndarray
        A float32 or float64 array, usually 2-D; of another rank, it is normalized as the 2-D
        array of its batch axis against the others flattened (a view of a C-ordered x whose
        batch axis is its first or last, else a copy).
    gamma, beta : ndarray
        Scale and shift, one value per feature, of ``x``'s dtype: shaped like ``x`` without
        the batch axis (``(C,)`` for a 2-D x, which also takes ``(C, 1)`` or ``(1, C)``), or
        with it of length 1, or flat.
    axis : int, default 0
        The batch axis reduced over: 0 for ``(N, C)`` rows-are-examples, 1 (or -1) for the
        course's ``(n_features, m)``; any axis of an x of other ranks.
    eps : float, default 1e-5
        Added to the variance, >= 0.
    out : ndarray, optional
        Receives ``y`` (shaped like ``x``, same dtype), sparing an allocation. It may be ``x``
        itself or overlap it: ``x`` is then copied first (the cache keeps the copy).

    Returns
    -------
    y : ndarray
        The normalized ``x``, of its shape and dtype.
    cache : BatchNormCache
        What :func:`batchnorm_backward` needs. It refers to ``x`` itself (no copy) when x is C-
        or Fortran-ordered, aligned and native, and so to ``gamma``: writing into either
        before the backward (an optimizer step on gamma between a layer's forward and
        backward) changes the gradients (torch's autograd raises for that; fastopt cannot
        tell).

    Raises
    ------
    TypeError
        A non-float ``x``, or ``gamma``/``beta``/``out`` of another dtype (named).
    ValueError
        ``x`` 0-d or with a batch of 0 or 1 (named), ``gamma``/``beta`` with the wrong
        number of features, a bad ``axis`` or ``eps``, or ``out`` of the wrong shape,
        read-only or with elements that share memory (a zero stride).
    """
    if isinstance(x, np.ndarray) and x.ndim != 2:
        return _batchnorm_forward_nd(x, gamma, beta, axis, eps, out)
    xc, ax, transposed = _bn_layout(x, axis, out)
    if xc.shape[ax] < 2:
        raise ValueError(f"x has shape {np.shape(x)}, a batch of {xc.shape[ax]} along axis "
                         f"{1 - ax if transposed else ax}: batch norm in training needs more "
                         f"than 1 example per feature")
    g = _features("gamma", gamma, xc, ax, transposed, out)
    b = _features("beta", beta, xc, ax, transposed, out)
    eps = _check_eps(eps)
    shape = xc.T.shape if transposed else xc.shape
    y = _out(out, shape, xc.dtype)
    yc, scratch = _kernel_output(y, transposed)
    n_features = xc.shape[1 - ax]
    mean, mean_error, inv_std, var = (np.empty(n_features) for _ in range(4))
    _backend.active.batchnorm_forward(xc, ax, g, b, eps, mean, mean_error, inv_std, var, yc)
    _write_back(y, yc, scratch, transposed)
    # plain ndarray views of x and gamma: the cache refuses other types (a hand-made cache),
    # and an x of an ndarray subclass (a slice of np.load(..., mmap_mode="r") is a memmap)
    # made a cache that batchnorm_backward then refused
    cache = BatchNormCache(_plain(xc), ax, _plain(g), mean, mean_error, inv_std, eps,
                           transposed, shape, (np.shape(gamma), np.shape(beta)), var)
    return y, cache


def batchnorm_backward(dy: np.ndarray, cache: BatchNormCache, out: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`batchnorm_forward`.

    With ``xhat = (x - mean) * inv_std`` and ``N`` the batch size::

        dbeta = sum(dy)
        dgamma = sum(dy * xhat)
        dx = gamma * inv_std / N * (N * dy - dbeta - xhat * dgamma)

    (sums over the batch axis).

    Parameters
    ----------
    dy : ndarray
        Gradient of the loss with respect to ``y``, shaped like ``x``, of its dtype.
    cache : BatchNormCache
        The second value returned by :func:`batchnorm_forward`.
    out : ndarray, optional
        Receives ``dx`` (shaped like ``x``), sparing a fresh allocation (whose pages fault in on
        first write) every step; one that shares memory with ``dy`` (``out=dy``) takes a copy
        of ``dy`` instead.

    Returns
    -------
    dx : ndarray
        Shaped like ``x``.
    dgamma, dbeta : ndarray
        Shaped like the forward's gamma and beta (``(C,)``, or the course's ``(C, 1)``, as
        given), in ``x``'s dtype.

    Raises
    ------
    TypeError
        ``cache`` not from :func:`batchnorm_forward`, or ``dy`` of another dtype than ``x``.
    ValueError
        ``dy`` of another shape than ``x``, ``out`` of the wrong shape, or a ``cache`` whose
        arrays do not fit together (built by hand, or changed).
    """
    if not isinstance(cache, BatchNormCache):
        raise TypeError("cache must be the second value returned by batchnorm_forward")
    cache._check()
    if cache.nd is not None:
        return _batchnorm_backward_nd(dy, cache, out)
    return _batchnorm_backward_2d(dy, cache, out)


def _batchnorm_backward_2d(dy, cache, out):
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
    _backend.active.batchnorm_backward(dyc, xc, ax, gamma, cache.mean, cache.mean_error,
                                       cache.inv_std, dxc, dgamma, dbeta)
    _write_back(dx, dxc, scratch, cache.transposed)
    gamma_shape, beta_shape = cache.param_shapes
    with np.errstate(all="ignore"):     # float64 sums past float32's range: inf, no warning
        return (dx, dgamma.astype(xc.dtype).reshape(gamma_shape),
                dbeta.astype(xc.dtype).reshape(beta_shape))


def batchnorm_inference(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                        running_mean: np.ndarray, running_var: np.ndarray, axis: int = 0,
                        eps: float = 1e-5, out: np.ndarray | None = None) -> np.ndarray:
    """Inference-mode batch normalization with running statistics.

    ``y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta``, per feature. The
    running mean is taken as stored, an array of x's dtype: unlike the training forward's
    batch mean, whose rounding error is added back, its rounding stays in ``x -
    running_mean``, so data whose mean is far larger than its spread keeps y only to about the
    mean's ulp over the spread, absolute (float64 data of mean 1e6 and spread 1e-3: ~1e-7; the
    backends' running means may differ by that ulp, and their y by that much).

    Parameters
    ----------
    x : ndarray
        A float32 or float64 array, usually 2-D (other ranks: as :func:`batchnorm_forward`).
    gamma, beta : ndarray
        Scale and shift, one value per feature, of ``x``'s dtype (shapes as
        :func:`batchnorm_forward` takes them).
    axis : int, default 0
        The batch axis reduced over: 0 for ``(N, C)`` rows-are-examples, 1 (or -1) for the
        course's ``(n_features, m)``.
    running_mean, running_var : ndarray
        The running statistics, one value per feature (shaped as gamma may be).
    eps : float, default 1e-5
        Added to the variance, >= 0.
    out : ndarray, optional
        Receives ``y`` (shaped like ``x``, same dtype).

    Returns
    -------
    ndarray
        ``y``, of ``x``'s shape and dtype.

    Raises
    ------
    TypeError, ValueError
        As :func:`batchnorm_forward` (a batch of 1 is fine here).
    """
    if isinstance(x, np.ndarray) and x.ndim != 2:
        return _batchnorm_inference_nd(x, gamma, beta, running_mean, running_var, axis, eps,
                                       out)
    xc, ax, transposed = _bn_layout(x, axis, out)
    g = _features("gamma", gamma, xc, ax, transposed, out)
    b = _features("beta", beta, xc, ax, transposed, out)
    rm = _features("running_mean", running_mean, xc, ax, transposed, out)
    rv = _features("running_var", running_var, xc, ax, transposed, out)
    eps = _check_eps(eps)
    y = _out(out, xc.T.shape if transposed else xc.shape, xc.dtype)
    yc, scratch = _kernel_output(y, transposed)
    _backend.active.batchnorm_inference(xc, ax, g, b, rm, rv, eps, yc)
    _write_back(y, yc, scratch, transposed)
    return y


def _batchnorm_forward_nd(x, gamma, beta, axis, eps, out):
    """:func:`batchnorm_forward` of an ``x`` of another rank than 2, through its 2-D form."""
    x, k = _nd_input(x, axis, out)
    shape = x.shape
    if shape[k] < 2:
        raise ValueError(f"x has shape {shape}, a batch of {shape[k]} along axis {k}: batch "
                         "norm in training needs more than 1 example per feature")
    g = _nd_features("gamma", gamma, shape, k, out)
    b = _nd_features("beta", beta, shape, k, out)
    y, y2 = _nd_output(out, shape, k, x.dtype)
    written, cache = batchnorm_forward(_nd_to_2d(x, k), g, b, _nd_2d_axis(shape, k), eps, y2)
    _nd_copy_back(y, y2, written, k)
    cache.param_shapes, cache.nd = (np.shape(gamma), np.shape(beta)), (shape, k)
    return y, cache


def _batchnorm_backward_nd(dy, cache, out):
    """:func:`batchnorm_backward` for a cache of an x of another rank than 2."""
    shape, k = cache.nd
    dy = _unshared(out, _float_array("dy", dy))
    if dy.shape != shape:
        raise ValueError(f"dy has shape {dy.shape}, expected {shape} like x")
    dx, dx2 = _nd_output(out, shape, k, cache.x.dtype)
    written, dgamma, dbeta = _batchnorm_backward_2d(_nd_to_2d(dy, k), cache, dx2)
    _nd_copy_back(dx, dx2, written, k)
    return dx, dgamma, dbeta


def _batchnorm_inference_nd(x, gamma, beta, running_mean, running_var, axis, eps, out):
    """:func:`batchnorm_inference` of an ``x`` of another rank than 2, through its 2-D form."""
    x, k = _nd_input(x, axis, out)
    shape = x.shape
    features = [_nd_features(name, a, shape, k, out) for name, a in (
        ("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
        ("running_var", running_var))]
    y, y2 = _nd_output(out, shape, k, x.dtype)
    written = batchnorm_inference(_nd_to_2d(x, k), *features, _nd_2d_axis(shape, k), eps, y2)
    _nd_copy_back(y, y2, written, k)
    return y


def _layer_features(name, a, cache):
    """``a`` (a layer's running statistic or grad) as the kernels read it, one value per
    feature of the x of ``cache`` (its shapes and messages those of the caller's x)."""
    if cache.nd is not None:
        a = _nd_features(name, a, *cache.nd)
    return _features(name, a, cache.x, cache.axis, cache.transposed)


class BatchNorm:
    """A batch-norm layer with learnable ``gamma``/``beta`` and running statistics.

    ``forward(x)`` (training) normalizes with the batch's mean and biased variance, and updates
    the running statistics as torch.nn.BatchNorm1d does, with the batch's unbiased variance
    (``N`` examples)::

        running_mean = (1 - momentum) * running_mean + momentum * batch_mean
        running_var = (1 - momentum) * running_var + momentum * batch_var * N / (N - 1)

    With ``momentum=None`` the weight is ``1 / num_batches_tracked``, this batch counted: the
    running statistics are then the plain average of all the batches', as with torch's
    ``momentum=None``. ``forward(x, training=False)`` normalizes with the running statistics
    and changes nothing. ``backward(dy)`` backpropagates through the last training-mode
    forward, returns dx and sets ``dgamma`` and ``dbeta`` (shaped like gamma), ready for an
    optimizer over ``layer.params``. The layer starts as torch's: gamma 1, beta 0,
    running_mean 0, running_var 1. A pickle or deep copy of it holds its parameters,
    statistics and grads, not the last batch: the copy's backward needs a forward of its own.

    :meth:`state_dict` and :meth:`load_state_dict` save and restore it for a checkpoint, with
    torch.nn.BatchNorm1d's keys: ``"weight"`` is ``gamma``, ``"bias"`` is ``beta``, then
    ``"running_mean"``, ``"running_var"`` and ``"num_batches_tracked"``; and ``"momentum"``
    and ``"eps"``, which torch keeps out of its state dict (a torch BatchNorm1d's, its tensors
    as arrays, loads as it is).

    Parameters
    ----------
    num_features : int
        Number of features ``C``, >= 1.
    axis : int, default 0
        The batch axis of ``x``: 0 for ``(N, C)``, 1 for the course's ``(C, m)`` (any axis of
        an x of other ranks, as the functions take it).
    momentum : float or None, default 0.1
        Weight of the batch statistics in the running ones, in [0, 1]; None: a cumulative
        average (``1 / num_batches_tracked``), as torch.
    eps : float, default 1e-5
        Added to the variance, >= 0.
    dtype : float32 or float64, default float32
        Dtype of the parameters, statistics and grads.

    Raises
    ------
    TypeError
        A non-float ``dtype``, a non-int ``num_features`` or a non-real ``momentum``.
    ValueError
        ``num_features < 1``, ``momentum`` outside [0, 1] or a bad ``eps`` (an ``axis`` out of
        x's range: at forward).
    """

    # declared for type checkers, which take the numbers ABC checks below for unreachable
    axis: int
    momentum: float | None
    num_batches_tracked: int
    eps: float
    gamma: np.ndarray
    beta: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray
    dgamma: np.ndarray
    dbeta: np.ndarray

    def __init__(self, num_features: int, axis: int = 0, momentum: float = 0.1,
                 eps: float = 1e-5, dtype: DTypeLike = np.float32) -> None:
        dtype = np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        if (isinstance(num_features, (bool, np.timedelta64))     # (a NumPy signedinteger)
                or not isinstance(num_features, numbers.Integral)):
            raise TypeError(f"num_features must be an int, got {type(num_features).__name__}")
        if num_features < 1:
            raise ValueError(f"Invalid num_features: {num_features!r}")
        # an int (a 0-d array given would stay mutable); its range is x's, checked at forward
        axis = _check_axis(axis)
        _check_momentum(momentum)
        _check_eps(eps)
        self.axis, self.momentum, self.eps = axis, momentum, eps
        self.gamma = np.ones(num_features, dtype)
        self.beta = np.zeros(num_features, dtype)
        self.running_mean = np.zeros(num_features, dtype)
        self.running_var = np.ones(num_features, dtype)
        self.dgamma = np.zeros(num_features, dtype)
        self.dbeta = np.zeros(num_features, dtype)
        self.num_batches_tracked = 0     # training forwards so far (torch's counter)
        self._cache: BatchNormCache | None = None

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        """Normalize a batch; in training, also update the running statistics.

        Parameters
        ----------
        x : ndarray
            A 2-D float array with ``num_features`` features along the non-batch axis (or of
            another rank with ``num_features`` positions along its other axes, normalized as
            :func:`batchnorm_forward` does).
        training : bool, default True
            Batch statistics (and remember what :meth:`backward` needs); False: the running ones.

        Returns
        -------
        ndarray
            ``y``, shaped like ``x``.

        Raises
        ------
        TypeError, ValueError
            ``training`` not True or False (NumPy's bools are fine); as
            :func:`batchnorm_forward` (:func:`batchnorm_inference` when not training), an ``x``
            of another dtype or number of features than the layer's named as such; in
            training too, a ``running_mean`` or ``running_var`` that is not one value per
            feature of ``x``'s dtype, or is read-only, and a ``momentum`` set since
            construction that the constructor refuses. A call that raises changes nothing.
        """
        if training is not True and training is not False:
            check_flag("training", training)    # (taken by its truth, "False" trained)
        try:
            if not training:
                return batchnorm_inference(x, self.gamma, self.beta, self.running_mean,
                                           self.running_var, self.axis, self.eps)
            # (set after construction, it is checked here as the optimizers check a
            # hyper-parameter set into a group: it was used as it was, a str "0.5" included)
            m = _check_momentum(self.momentum)
            y, cache = batchnorm_forward(x, self.gamma, self.beta, self.axis, self.eps)
            # the running statistics checked as inference checks them, before anything changes
            # (one of the wrong size raised NumPy's unnamed broadcast error after running_mean
            # had changed; an int64 one took the update truncated)
            stats = [_layer_features(name, getattr(self, name), cache)
                     for name in ("running_mean", "running_var")]
            for name in ("running_mean", "running_var"):
                if not getattr(self, name).flags.writeable:
                    raise ValueError(f"{name} is read-only; training updates it in place")
        except (TypeError, ValueError):
            self._check_x(x)
            raise
        n = cache.x.shape[cache.axis]
        # a Python float: a NumPy float64 momentum took (1 - m) * running_mean to float64,
        # where a Python float leaves it in the statistics' dtype (other bits in float32)
        if m is None:
            m = 1.0 / (self.num_batches_tracked + 1)
        # both computed before either is written, with IEEE results and no NumPy warnings (an
        # inf mean times momentum 0, a variance past float32's range): under -W error a warning
        # raised with running_mean already changed
        rm, rv = self.running_mean, self.running_var        # (C,), or (C, 1) / (1, C)
        with np.errstate(all="ignore"):
            mean = ((1 - m) * stats[0] + m * cache.mean).astype(rm.dtype).reshape(rm.shape)
            var = ((1 - m) * stats[1]
                   + m * (cache.batch_var * n / (n - 1))).astype(rv.dtype).reshape(rv.shape)
        rm[...] = mean
        rv[...] = var
        self.num_batches_tracked += 1
        self._cache = cache
        return y

    def _check_x(self, x):
        """Raise naming ``x`` when its dtype or feature count is not the layer's (the functions
        would name the layer's gamma, which the caller never passed). The layer's are those
        its gamma, beta and running statistics agree on: where they do not (a gamma replaced
        by one of another dtype or size), the functions' messages name the odd one out."""
        if not isinstance(x, np.ndarray) or x.dtype.type not in FLOAT_TYPES or x.ndim == 0:
            return                      # the functions' own messages name x
        own = [a for a in (self.gamma, self.beta, self.running_mean, self.running_var)
               if isinstance(a, np.ndarray)]
        if len(own) < 4 or len({(a.dtype.type, a.size) for a in own}) != 1:
            return
        if x.dtype.type is not self.gamma.dtype.type:       # (either byte order)
            raise TypeError(f"x has dtype {x.dtype}, expected {self.gamma.dtype} (the "
                            "layer's dtype)")
        axis = _check_axis(self.axis)
        # out of range (set after construction): the functions' own message names the axis
        # (axis 5 had been read as 1, and a valid x's shape blamed)
        if not -x.ndim <= axis < x.ndim:
            return
        axis %= x.ndim
        features = x.shape[:axis] + x.shape[axis + 1:]
        if math.prod(features) != self.gamma.size:
            where = f"along axis {1 - axis}" if x.ndim == 2 else f"in shape {features}"
            raise ValueError(f"x has shape {x.shape}: {math.prod(features)} features {where}, "
                             f"expected {self.gamma.size} (the layer's num_features; batch "
                             f"axis {axis})")

    def __copy__(self) -> "BatchNorm":
        # the arrays forward and backward update in place are the copy's own, as its count is
        # (shared, training the copy changed the original's running statistics, and with
        # momentum=None weighted them by the original's num_batches_tracked); gamma and beta,
        # which an optimizer updates, stay shared as in any shallow copy
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        for name in ("running_mean", "running_var", "dgamma", "dbeta"):
            setattr(new, name, getattr(self, name).copy())
        return new

    def __getstate__(self) -> dict[str, Any]:
        # without the last training batch that backward would use (x and its statistics): a
        # pickle or deep copy of the layer is its parameters, statistics and grads, as a torch
        # module's state is (it held the whole batch: a checkpoint 100 MB instead of 3 KB,
        # with training data in it)
        return {**self.__dict__, "_cache": None}

    def __call__(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        # through self.forward, so that a subclass's forward is what layer(x) runs (as torch's
        # module(x)); ``__call__ = forward`` bound BatchNorm.forward itself
        return self.forward(x, training)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Backpropagate through the last training-mode :meth:`forward`.

        Sets ``dgamma`` and ``dbeta`` in place (so an optimizer over :attr:`params` sees them).

        Parameters
        ----------
        dy : ndarray
            Gradient of the loss with respect to the last ``y``.

        Returns
        -------
        ndarray
            ``dx``, shaped like ``x``.

        Raises
        ------
        RuntimeError
            No training-mode forward yet.
        TypeError, ValueError
            ``dy`` as :func:`batchnorm_backward`; a ``dgamma`` or ``dbeta`` that is not one
            value per feature of ``x``'s dtype, or is read-only. A call that raises changes
            nothing.
        """
        cache = self._cache
        if cache is None:
            raise RuntimeError("backward needs a forward in training mode first")
        dx, dgamma, dbeta = batchnorm_backward(dy, cache)
        # both checked before either is written (a dbeta of the wrong size raised NumPy's
        # unnamed broadcast error with dgamma already written; an int64 dgamma truncated)
        for name in ("dgamma", "dbeta"):
            _layer_features(name, getattr(self, name), cache)
            if not getattr(self, name).flags.writeable:
                raise ValueError(f"{name} is read-only; backward writes it in place")
        self.dgamma[...] = dgamma.reshape(self.dgamma.shape)
        self.dbeta[...] = dbeta.reshape(self.dbeta.shape)
        return dx

    # state dict key -> attribute: torch.nn.BatchNorm1d's keys (its weight and bias are gamma
    # and beta), then the counter and the hyper-parameters
    _STATE_ARRAYS = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean",
                     "running_var": "running_var"}
    _REQUIRED_KEYS = (*_STATE_ARRAYS, "num_batches_tracked")
    _STATE_KEYS = (*_REQUIRED_KEYS, "momentum", "eps")

    def state_dict(self) -> dict[str, Any]:
        """The layer's state for a checkpoint, with torch.nn.BatchNorm1d's keys: ``"weight"``
        (``gamma``), ``"bias"`` (``beta``), ``"running_mean"``, ``"running_var"``,
        ``"num_batches_tracked"``; and the hyper-parameters ``"momentum"`` and ``"eps"``. The
        arrays are copies: later steps and forwards leave the dict as it is.

        Returns
        -------
        dict
            Copies of the arrays, the count, and ``momentum`` and ``eps`` as the layer holds
            them, which survive pickle and ``np.savez`` (a None ``momentum`` as ``np.savez``'s
            object array, read back with ``allow_pickle=True``). ``dgamma``, ``dbeta`` and the
            last batch are not in it (nor ``axis`` and ``num_features``, the layer's make, as
            torch's). Into a torch.nn.BatchNorm1d: ``bn.load_state_dict({k: torch.as_tensor(v)
            for k, v in sd.items() if k not in ("momentum", "eps")})`` (torch keeps those two
            as attributes, and its strict load refuses other keys).
        """
        sd: dict[str, Any] = {key: getattr(self, name).copy()
                              for key, name in self._STATE_ARRAYS.items()}
        sd["num_batches_tracked"] = copy.deepcopy(self.num_batches_tracked)
        sd["momentum"] = copy.deepcopy(self.momentum)
        sd["eps"] = copy.deepcopy(self.eps)
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` (or a torch.nn.BatchNorm1d's, tensors as arrays).

        The arrays are copied into the layer's own ``gamma``, ``beta``, ``running_mean`` and
        ``running_var`` (in place, as torch's: an optimizer over :attr:`params` keeps
        stepping them), floating-point ones cast to their dtype as torch's; the next forwards
        are those of the layer the dict was taken from, bit for bit. ``momentum`` or ``eps``
        missing from it (torch's) stay the layer's own, as an optimizer's hyper-parameters
        missing from a saved group. Everything is checked before anything changes; a refused
        state dict changes nothing. A loaded layer's backward needs a forward first (torch's
        raises for weights changed in place since the forward).

        Parameters
        ----------
        state_dict : dict
            ``"weight"``, ``"bias"``, ``"running_mean"``, ``"running_var"`` (float arrays
            shaped as the layer's gamma, beta and statistics), ``"num_batches_tracked"`` (an
            int >= 0) and optionally ``"momentum"`` (in [0, 1], or None) and ``"eps"``
            (>= 0), as :meth:`state_dict` returns; numbers may be 0-d arrays (``np.savez``
            gives every entry back as an array).

        Raises
        ------
        TypeError
            ``state_dict`` not a dict, or an entry of the wrong type or a non-float dtype
            (named).
        ValueError
            A missing or unknown key, an array of another shape than the layer's (or a
            layer's array that is read-only), a negative ``num_batches_tracked``, or a
            ``momentum`` or ``eps`` out of range (NaN included).
        """
        check_state_keys("BatchNorm", state_dict, self._REQUIRED_KEYS, self._STATE_KEYS)
        copies = []
        for key, name in self._STATE_ARRAYS.items():
            where, value, mine = f"state_dict[{key!r}]", state_dict[key], getattr(self, name)
            if not isinstance(mine, np.ndarray) or mine.dtype.kind != "f":
                # (one set to an int array truncated the loaded values; to a list, raised
                # AttributeError naming nothing)
                raise TypeError(f"the layer's {name} is {type(mine).__name__}"
                                + (f" of dtype {mine.dtype}" if isinstance(mine, np.ndarray)
                                   else "") + ", not a float array to load into")
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{where} must be a numpy.ndarray, got {type(value).__name__}")
            check_plain(where, value)
            if value.dtype.kind != "f":
                raise TypeError(f"{where} has dtype {value.dtype}, expected a float dtype "
                                f"(cast to the layer's {name}'s {mine.dtype})")
            if value.shape != mine.shape:
                raise ValueError(f"{where} has shape {value.shape}, expected {mine.shape} "
                                 f"like the layer's {name}")
            check_writeable(f"the layer's {name}", mine)
            # cast now, into a copy: past float32's range inf, silently, as torch's copy_
            with np.errstate(over="ignore", under="ignore"):
                copies.append((mine, value.astype(mine.dtype)))
        count = as_count("state_dict['num_batches_tracked']", state_dict["num_batches_tracked"])
        momentum, eps = self.momentum, self.eps
        if "momentum" in state_dict:
            momentum = npz_item(state_dict["momentum"])
            if momentum is not None:
                check_real("state_dict['momentum']", momentum, UNIT)
                momentum = float(momentum)
        if "eps" in state_dict:
            eps = npz_item(state_dict["eps"])
            check_real("state_dict['eps']", eps)
            eps = float(eps)
        for mine, value in copies:
            np.copyto(mine, value)
        self.num_batches_tracked, self.momentum, self.eps = count, momentum, eps
        self._cache = None      # (its x was normalized with the gamma and statistics replaced)

    @property
    def params(self) -> dict[str, np.ndarray]:
        """``{"gamma": gamma, "beta": beta}``, the arrays an optimizer updates."""
        return {"gamma": self.gamma, "beta": self.beta}

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """``{"dgamma": dgamma, "dbeta": dbeta}``, updated by :meth:`backward`."""
        return {"dgamma": self.dgamma, "dbeta": self.dbeta}


# --------------------------------------------------------------------------------- softmax
def _as_float_array(name: str, z: Any) -> tuple[np.ndarray, np.dtype]:
    """(``z`` as a native float32/float64 ndarray, the dtype of the results): array-likes and
    integer or boolean arrays become float64, as NumPy's ufuncs do; float16 is computed in
    float32 and its results rounded once to float16 (as torch's CPU half softmax over the
    last dim; its half log_softmax over the last dim and softmax over another dim differ); other
    dtypes raise TypeError naming ``name``."""
    if not isinstance(z, np.ndarray):
        given, z = z, as_array(name, z)
        if z.dtype.kind not in "iubf":
            raise TypeError(f"{name} must be an array of numbers, got {type(given).__name__}")
    kind = z.dtype.kind
    if kind not in "iubf":      # (complex, strings, objects, dates: the error lists all taken)
        raise TypeError(f"{name} must have dtype float16, float32 or float64 (or an integer "
                        f"or bool dtype, taken as float64), got {z.dtype}")
    if kind in "iub" and not has_own_arithmetic(z):
        z = z.astype(np.float64)
    elif kind == "f" and z.dtype.itemsize not in (4, 8):
        if z.dtype.itemsize > 8:
            raise TypeError(f"{name} must have dtype float16, float32 or float64, got "
                            f"{z.dtype} (the kernels compute in float32 and float64)")
        if not has_own_arithmetic(z):
            return z.astype(np.float32), np.dtype(np.float16)
    z = _float_array(name, z)
    return z, z.dtype


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
    outer = math.prod(zc.shape[:axis])        # (np.prod of a tuple costs ~6 us: a call on
    inner = math.prod(zc.shape[axis + 1:])    # (10, 64) took twice NumPy's own softmax)
    return zc.reshape(outer, zc.shape[axis], inner), axis


def _softmax(z, axis, out, log):
    z, dtype = _as_float_array("z", z)
    z = _unshared(out, z)
    z3, _ = _softmax_layout(z, axis)
    y = _out(out, z.shape, dtype)
    yc, scratch = _kernel_output(y, dtype=z.dtype)
    _backend.active.softmax(z3, yc.reshape(z3.shape), log)
    _write_back(y, yc, scratch)
    return y


def softmax(z: ArrayLike, axis: int = -1, out: np.ndarray | None = None) -> np.ndarray:
    """Numerically stable softmax along ``axis``.

    ``y = exp(z - max(z)) / sum(exp(z - max(z)))``. NaN in a row stays in that row.

    Parameters
    ----------
    z : array_like
        A float array (float16 is computed in float32 and the result rounded to float16, as
        torch's CPU half softmax over the last dim; lists and integer arrays are taken as
        float64);
        0-d is one class.
    axis : int, default -1
        The classes' axis; ``axis=0`` serves the course's ``(classes, m)`` layout.
    out : ndarray, optional
        Receives the result (shaped like ``z``, same dtype).

    Returns
    -------
    ndarray
        Of ``z``'s shape and float dtype.

    Raises
    ------
    TypeError
        ``z`` not numeric, or ``out`` of another dtype.
    ValueError
        ``axis`` out of range, a ragged list ``z``, or ``out`` of the wrong shape, read-only
        or with elements that share memory (a zero stride).
    """
    return _softmax(z, axis, out, False)


def log_softmax(z: ArrayLike, axis: int = -1, out: np.ndarray | None = None) -> np.ndarray:
    """Log of :func:`softmax` along ``axis``, computed stably.

    ``y = z - max(z) - log(sum(exp(z - max(z))))``.

    Parameters
    ----------
    z : array_like
        As in :func:`softmax`.
    axis : int, default -1
        The classes' axis.
    out : ndarray, optional
        Receives the result (shaped like ``z``, same dtype).

    Returns
    -------
    ndarray
        Of ``z``'s shape and float dtype.

    Raises
    ------
    TypeError, ValueError
        As :func:`softmax`.
    """
    return _softmax(z, axis, out, True)


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike, axis: int = -1,
                          out: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of ``softmax(logits)`` against ``labels``, and its gradient.

    ``loss = -mean(sum(onehot * log_softmax(logits)))`` and
    ``dlogits = (softmax(logits) - onehot) / m``, with ``m`` the number of examples (every
    position but ``axis``).

    Parameters
    ----------
    logits : array_like
        Float scores, at least 1-D (float16 as in :func:`softmax`; lists and integer arrays
        are taken as float64).
    labels : array_like
        Integer class indices shaped like ``logits`` without ``axis``, or one-hot/probability
        rows shaped like ``logits`` (of any real dtype: integer or bool one-hot labels are
        taken as their float values in the logits' dtype).
    axis : int, default -1
        The classes' axis.
    out : ndarray, optional
        Receives ``dlogits`` (shaped like ``logits``, same dtype).

    Returns
    -------
    loss : float
        The mean cross-entropy: NaN for no examples (a mean of nothing, as torch and
        ``np.mean`` give), 0 for examples of no classes with probability targets. A class
        whose target is 0 adds nothing, also where its logit is -inf (masked logits): a
        finite loss where torch's ``cross_entropy`` gives NaN (its 0 * -inf).
    dlogits : ndarray
        ``(softmax(logits) - labels) / m``: the loss's gradient with respect to ``logits``
        when each example's probabilities sum to 1 (one-hot rows, label smoothing, mixup).
        For rows that do not (e.g. ``[0.2, 0.2, 0.2]``), the loss's gradient is
        ``(softmax(logits) * sum(labels) - labels) / m``, which torch's autograd of
        ``cross_entropy`` gives and this does not: normalize such targets first.

    Raises
    ------
    TypeError
        Non-numeric ``logits`` or ``labels`` of an unusable dtype.
    ValueError
        0-d or ragged ``logits``, ragged ``labels`` or of the wrong shape, or class
        indices out of range.
    """
    logits, dtype = _as_float_array("logits", logits)
    logits = _unshared(out, logits)
    if logits.ndim == 0:
        raise ValueError("logits must have at least 1 dimension (the classes)")
    z3, axis = _softmax_layout(logits, axis, "logits")
    k = z3.shape[1]
    if labels is None or has_own_arithmetic(labels):
        raise TypeError(f"labels must be an array of class indices or probabilities, got "
                        f"{type(labels).__name__}")
    labels = _unshared(out, as_array("labels", labels))
    if labels.dtype.kind not in "biuf":
        raise TypeError(f"labels must have an integer (class indices or one-hot), bool "
                        f"(one-hot) or float (probabilities) dtype, got {labels.dtype}")
    ints = targets = None
    if labels.shape == logits.shape:
        # one-hot/probabilities whatever the dtype: integers and bools as their float values
        # in the logits' dtype (np.eye(k, dtype=int)[y], sklearn's LabelBinarizer); float64
        # ones past float32's range are inf or 0 there, without a warning (as the kernels'
        # results)
        with np.errstate(over="ignore", under="ignore"):
            targets = _kernel_input(labels, logits.dtype).reshape(z3.shape)
    else:
        expected = logits.shape[:axis] + logits.shape[axis + 1:]
        if labels.shape != expected:
            raise ValueError(f"labels has shape {labels.shape}, expected {expected} (class "
                             f"indices) or {logits.shape} (one-hot/probabilities)")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels of shape {labels.shape} (logits' without axis) are class "
                            f"indices and must have an integer dtype, got {labels.dtype} "
                            f"(one-hot/probabilities have the logits' shape {logits.shape})")
        if labels.size and (labels.min() < 0 or labels.max() >= k):
            classes = f"classes are 0..{k - 1}" if k else "logits have no classes"
            raise ValueError(f"labels out of range: {classes}, got values in "
                             f"[{labels.min()}, {labels.max()}]")
        ints = _kernel_input(labels, np.int64).reshape(z3.shape[0], z3.shape[2])
    d = _out(out, logits.shape, dtype)
    dc, scratch = _kernel_output(d, dtype=logits.dtype)
    loss = _backend.active.softmax_cross_entropy(z3, ints, targets, dc.reshape(z3.shape))
    _write_back(d, dc, scratch)
    return loss, d


__all__ = ["batchnorm_forward", "batchnorm_backward", "batchnorm_inference", "BatchNorm",
           "BatchNormCache", "softmax", "log_softmax", "softmax_cross_entropy"]
