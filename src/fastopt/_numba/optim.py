"""Numba optimizer kernels, mirroring fastopt/_kernels/optim.pyx.

Each kernel is a serial ``*_span(lo, hi, arrays..., scalars...)`` loop, a ``*_parallel`` driver
running one contiguous chunk per thread, and the backend-level function with the reference's
signature that validates, folds the scalars in float64 and casts them to the data's dtype.
"""
import math

import numba
import numpy as np
from numba import prange

from .._layout import flat_views, via_contiguous
from .._validate import check_step_arrays
from ._common import JIT, launch, max_nan


# ----------------------------------------------------------------------------------- ewa
@numba.njit(**JIT)
def _ewa_span(avg, x, b, c):
    for i in range(avg.size):
        avg[i] = b * avg[i] + c * x[i]


@numba.njit(parallel=True, **JIT)
def _ewa_parallel(nchunks, chunk, avg, x, *s):
    for k in prange(nchunks):
        lo, hi = k * chunk, min((k + 1) * chunk, avg.size)
        _ewa_span(avg[lo:hi], x[lo:hi], *s)


def ewa(avg, x, beta):
    check_step_arrays([("avg", avg)], [("x", x)])
    views = flat_views((avg, x))
    if views is None:
        return via_contiguous(ewa, (avg, x), beta)
    t = avg.dtype.type
    launch(_ewa_span, _ewa_parallel, views, t(beta), t(1.0 - beta))


# ----------------------------------------------------------------------------------- sgd
@numba.njit(**JIT)
def _sgd_span(p, g, buf, lr, wd, mom, keep, has_wd, nesterov, maximize, first_step):
    has_buf = buf.size > 0
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        if has_wd:
            gi = gi + wd * p[i]
        if has_buf:
            buf[i] = gi if first_step else mom * buf[i] + keep * gi
            gi = gi + mom * buf[i] if nesterov else buf[i]
        p[i] = p[i] - lr * gi


@numba.njit(parallel=True, **JIT)
def _sgd_parallel(nchunks, chunk, p, g, buf, *s):
    for k in prange(nchunks):
        lo, hi = k * chunk, min((k + 1) * chunk, p.size)
        _sgd_span(p[lo:hi], g[lo:hi], buf[lo:hi], *s)


def sgd(param, grad, momentum_buffer, lr, weight_decay, momentum, dampening, nesterov,
        maximize, first_step):
    check_step_arrays([("param", param), ("momentum_buffer", momentum_buffer)], [("grad", grad)])
    arrays = (param, grad, momentum_buffer)
    views = flat_views(arrays)
    if views is None:
        return via_contiguous(sgd, arrays, lr, weight_decay, momentum, dampening, nesterov,
                              maximize, first_step)
    t = param.dtype.type
    launch(_sgd_span, _sgd_parallel, views, t(lr), t(weight_decay), t(momentum),
           t(1.0 - dampening), weight_decay != 0, bool(nesterov), bool(maximize),
           bool(first_step))


# ------------------------------------------------------------------------------ momentum
@numba.njit(**JIT)
def _momentum_span(p, g, vel, lr, b, c):
    for i in range(p.size):
        vel[i] = b * vel[i] + c * g[i]
        p[i] = p[i] - lr * vel[i]


@numba.njit(parallel=True, **JIT)
def _momentum_parallel(nchunks, chunk, p, g, vel, *s):
    for k in prange(nchunks):
        lo, hi = k * chunk, min((k + 1) * chunk, p.size)
        _momentum_span(p[lo:hi], g[lo:hi], vel[lo:hi], *s)


def momentum(param, grad, velocity, lr, beta):
    check_step_arrays([("param", param), ("velocity", velocity)], [("grad", grad)])
    if velocity is None:
        raise TypeError("velocity must be a numpy.ndarray, got NoneType")
    arrays = (param, grad, velocity)
    views = flat_views(arrays)
    if views is None:
        return via_contiguous(momentum, arrays, lr, beta)
    t = param.dtype.type
    launch(_momentum_span, _momentum_parallel, views, t(lr), t(beta), t(1.0 - beta))


# ------------------------------------------------------------------------------- rmsprop
@numba.njit(**JIT)
def _rmsprop_span(p, g, sq, gavg, buf, lr, a, c, eps, wd, mom, has_wd, maximize,
                  eps_inside_sqrt):
    centered = gavg.size > 0
    has_buf = buf.size > 0
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        if has_wd:
            gi = gi + wd * p[i]
        sq[i] = a * sq[i] + c * (gi * gi)
        s = sq[i]
        if centered:
            gavg[i] = gavg[i] + c * (gi - gavg[i])
            s = sq[i] - gavg[i] * gavg[i]
        avg = np.sqrt(s + eps) if eps_inside_sqrt else np.sqrt(s) + eps
        if has_buf:
            buf[i] = mom * buf[i] + gi / avg
            p[i] = p[i] - lr * buf[i]
        else:
            p[i] = p[i] - lr * (gi / avg)


@numba.njit(parallel=True, **JIT)
def _rmsprop_parallel(nchunks, chunk, p, g, sq, gavg, buf, *s):
    for k in prange(nchunks):
        lo, hi = k * chunk, min((k + 1) * chunk, p.size)
        _rmsprop_span(p[lo:hi], g[lo:hi], sq[lo:hi], gavg[lo:hi], buf[lo:hi], *s)


def rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha, eps, weight_decay,
            momentum, maximize, eps_inside_sqrt):
    check_step_arrays([("param", param), ("square_avg", square_avg), ("grad_avg", grad_avg),
                       ("momentum_buffer", momentum_buffer)], [("grad", grad)])
    if square_avg is None:
        raise TypeError("square_avg must be a numpy.ndarray, got NoneType")
    arrays = (param, grad, square_avg, grad_avg, momentum_buffer)
    views = flat_views(arrays)
    if views is None:
        return via_contiguous(rmsprop, arrays, lr, alpha, eps, weight_decay, momentum, maximize,
                              eps_inside_sqrt)
    t = param.dtype.type
    launch(_rmsprop_span, _rmsprop_parallel, views, t(lr), t(alpha), t(1.0 - alpha), t(eps),
           t(weight_decay), t(momentum), weight_decay != 0, bool(maximize),
           bool(eps_inside_sqrt))


# ------------------------------------------------------------------------------- adagrad
@numba.njit(**JIT)
def _adagrad_span(p, g, ssum, clr, eps, wd, has_wd, maximize):
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        if has_wd:
            gi = gi + wd * p[i]
        ssum[i] = ssum[i] + gi * gi
        p[i] = p[i] - clr * (gi / (np.sqrt(ssum[i]) + eps))


@numba.njit(parallel=True, **JIT)
def _adagrad_parallel(nchunks, chunk, p, g, ssum, *s):
    for k in prange(nchunks):
        lo, hi = k * chunk, min((k + 1) * chunk, p.size)
        _adagrad_span(p[lo:hi], g[lo:hi], ssum[lo:hi], *s)


def adagrad(param, grad, state_sum, clr, eps, weight_decay, maximize):
    check_step_arrays([("param", param), ("state_sum", state_sum)], [("grad", grad)])
    if state_sum is None:
        raise TypeError("state_sum must be a numpy.ndarray, got NoneType")
    arrays = (param, grad, state_sum)
    views = flat_views(arrays)
    if views is None:
        return via_contiguous(adagrad, arrays, clr, eps, weight_decay, maximize)
    t = param.dtype.type
    launch(_adagrad_span, _adagrad_parallel, views, t(clr), t(eps), t(weight_decay),
           weight_decay != 0, bool(maximize))


# ---------------------------------------------------------------------------------- adam
@numba.njit(**JIT)
def _adam_span(p, g, m, v, vmax, c1, b2, c2, eps, step, bc2, bc2_sqrt, wd, decay,
               coupled, shrink, maximize, eps_inside_sqrt):
    amsgrad = vmax.size > 0
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        if shrink:
            p[i] = p[i] * decay
        if coupled:
            gi = gi + wd * p[i]
        m[i] = m[i] + c1 * (gi - m[i])
        v[i] = b2 * v[i] + c2 * (gi * gi)
        vi = v[i]
        if amsgrad:
            vmax[i] = max_nan(vmax[i], vi)
            vi = vmax[i]
        if eps_inside_sqrt:
            denom = np.sqrt(vi / bc2 + eps)
        else:
            denom = np.sqrt(vi) / bc2_sqrt + eps
        p[i] = p[i] - step * (m[i] / denom)


@numba.njit(parallel=True, **JIT)
def _adam_parallel(nchunks, chunk, p, g, m, v, vmax, *s):
    for k in prange(nchunks):
        lo, hi = k * chunk, min((k + 1) * chunk, p.size)
        _adam_span(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], vmax[lo:hi], *s)


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, eps, weight_decay,
         step_size, bias_correction2, decoupled, maximize, eps_inside_sqrt):
    check_step_arrays([("param", param), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq),
                       ("max_exp_avg_sq", max_exp_avg_sq)], [("grad", grad)])
    if exp_avg is None or exp_avg_sq is None:
        raise TypeError("exp_avg and exp_avg_sq must be numpy.ndarray, got NoneType")
    arrays = (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)
    views = flat_views(arrays)
    if views is None:
        return via_contiguous(adam, arrays, lr, beta1, beta2, eps, weight_decay, step_size,
                              bias_correction2, decoupled, maximize, eps_inside_sqrt)
    t = param.dtype.type
    has_wd = weight_decay != 0
    launch(_adam_span, _adam_parallel, views, t(1.0 - beta1), t(beta2), t(1.0 - beta2), t(eps),
           t(step_size), t(bias_correction2), t(np.sqrt(bias_correction2)), t(weight_decay),
           t(1.0 - lr * weight_decay), has_wd and not decoupled, has_wd and bool(decoupled),
           bool(maximize), bool(eps_inside_sqrt))
