"""Numba optimizer kernels, mirroring fastopt/_kernels/optim.pyx.

Each kernel has three parts:
- ``_<name>_span(arrays..., k, flags...)``: the serial loop over whole 1-D arrays; ``k`` holds the
  per-call scalars already cast to the arrays' dtype, so arithmetic stays in that precision;
- ``_<name>_parallel(nchunks, chunk, arrays..., k, flags...)``: one contiguous chunk per thread;
- ``<name>(...)``: the backend-level function with the reference's signature, which validates,
  folds the scalars in float64 (as the Cython kernels do in C) and launches.
Optional state not in use arrives as an empty array.
"""
import math

import numba
import numpy as np
from numba import prange

from .._layout import via_contiguous
from ._common import JIT, launch, max_nan, step_views


# ----------------------------------------------------------------------------------- ewa
@numba.njit(**JIT)
def _ewa_span(avg, x, k):
    b, c = k[0], k[1]
    for i in range(avg.size):
        avg[i] = b * avg[i] + c * x[i]


@numba.njit(parallel=True, **JIT)
def _ewa_parallel(nchunks, chunk, avg, x, k):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, avg.size)
        _ewa_span(avg[lo:hi], x[lo:hi], k)


def ewa(avg, x, *, beta):
    arrays = (avg, x)
    views = step_views(arrays, ("avg", "x"), 2)
    if views is None:
        return via_contiguous(ewa, arrays, beta=beta)
    launch(_ewa_span, _ewa_parallel, views, np.array((beta, 1.0 - beta), avg.dtype))


# ----------------------------------------------------------------------------------- sgd
@numba.njit(**JIT)
def _sgd_span(p, g, buf, k, has_wd, nesterov, maximize, first_step):
    lr, wd, mom, keep = k[0], k[1], k[2], k[3]
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
def _sgd_parallel(nchunks, chunk, p, g, buf, k, *flags):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _sgd_span(p[lo:hi], g[lo:hi], buf[lo:hi], k, *flags)


def sgd(param, grad, momentum_buffer, *, lr, weight_decay, momentum, dampening, nesterov, maximize,
        first_step):
    arrays = (param, grad, momentum_buffer)
    views = step_views(arrays, ("param", "grad", "momentum_buffer"), 2)
    if views is None:
        return via_contiguous(sgd, arrays, lr=lr, weight_decay=weight_decay, momentum=momentum,
                              dampening=dampening, nesterov=nesterov, maximize=maximize,
                              first_step=first_step)
    k = np.array((lr, weight_decay, momentum, 1.0 - dampening), param.dtype)
    launch(_sgd_span, _sgd_parallel, views, k, weight_decay != 0, bool(nesterov),
           bool(maximize), bool(first_step))


# ------------------------------------------------------------------------------ momentum
@numba.njit(**JIT)
def _momentum_span(p, g, vel, k):
    lr, b, c = k[0], k[1], k[2]
    for i in range(p.size):
        vel[i] = b * vel[i] + c * g[i]
        p[i] = p[i] - lr * vel[i]


@numba.njit(parallel=True, **JIT)
def _momentum_parallel(nchunks, chunk, p, g, vel, k):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _momentum_span(p[lo:hi], g[lo:hi], vel[lo:hi], k)


def momentum(param, grad, velocity, *, lr, beta):
    arrays = (param, grad, velocity)
    views = step_views(arrays, ("param", "grad", "velocity"), 3)
    if views is None:
        return via_contiguous(momentum, arrays, lr=lr, beta=beta)
    launch(_momentum_span, _momentum_parallel, views,
           np.array((lr, beta, 1.0 - beta), param.dtype))


# ------------------------------------------------------------------------------- rmsprop
@numba.njit(**JIT)
def _rmsprop_span(p, g, sq, gavg, buf, k, has_wd, maximize, eps_inside_sqrt):
    lr, a, c, eps, wd, mom = k[0], k[1], k[2], k[3], k[4], k[5]
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
def _rmsprop_parallel(nchunks, chunk, p, g, sq, gavg, buf, k, *flags):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _rmsprop_span(p[lo:hi], g[lo:hi], sq[lo:hi], gavg[lo:hi], buf[lo:hi], k, *flags)


def rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, *, lr, alpha, eps, weight_decay,
            momentum, maximize, eps_inside_sqrt):
    arrays = (param, grad, square_avg, grad_avg, momentum_buffer)
    views = step_views(arrays, ("param", "grad", "square_avg", "grad_avg", "momentum_buffer"), 3)
    if views is None:
        return via_contiguous(rmsprop, arrays, lr=lr, alpha=alpha, eps=eps,
                              weight_decay=weight_decay, momentum=momentum, maximize=maximize,
                              eps_inside_sqrt=eps_inside_sqrt)
    k = np.array((lr, alpha, 1.0 - alpha, eps, weight_decay, momentum), param.dtype)
    launch(_rmsprop_span, _rmsprop_parallel, views, k, weight_decay != 0, bool(maximize),
           bool(eps_inside_sqrt))


# ------------------------------------------------------------------------------- adagrad
@numba.njit(**JIT)
def _adagrad_span(p, g, ssum, k, has_wd, maximize):
    clr, eps, wd = k[0], k[1], k[2]
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        if has_wd:
            gi = gi + wd * p[i]
        ssum[i] = ssum[i] + gi * gi
        p[i] = p[i] - clr * (gi / (np.sqrt(ssum[i]) + eps))


@numba.njit(parallel=True, **JIT)
def _adagrad_parallel(nchunks, chunk, p, g, ssum, k, *flags):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _adagrad_span(p[lo:hi], g[lo:hi], ssum[lo:hi], k, *flags)


def adagrad(param, grad, state_sum, *, clr, eps, weight_decay, maximize):
    arrays = (param, grad, state_sum)
    views = step_views(arrays, ("param", "grad", "state_sum"), 3)
    if views is None:
        return via_contiguous(adagrad, arrays, clr=clr, eps=eps, weight_decay=weight_decay,
                              maximize=maximize)
    launch(_adagrad_span, _adagrad_parallel, views,
           np.array((clr, eps, weight_decay), param.dtype), weight_decay != 0, bool(maximize))


# ---------------------------------------------------------------------------------- adam
@numba.njit(inline="always", **JIT)
def _adam_elem(i, p, g, m, v, vmax, c1, b2, c2, eps, step, inv_bc2, inv_bc2_sqrt, wd, decay,
               coupled, maximize, amsgrad, eps_inside_sqrt):
    gi = -g[i] if maximize else g[i]
    pi = p[i] * decay               # decay is exactly 1 unless AdamW-style decay is on
    if coupled:
        gi = gi + wd * pi
    m[i] = m[i] + c1 * (gi - m[i])
    v[i] = b2 * v[i] + c2 * (gi * gi)
    vi = v[i]
    if amsgrad:
        vmax[i] = max_nan(vmax[i], vi)
        vi = vmax[i]
    if eps_inside_sqrt:
        denom = np.sqrt(vi * inv_bc2 + eps)
    else:
        denom = np.sqrt(vi) * inv_bc2_sqrt + eps
    p[i] = pi - step * (m[i] / denom)


@numba.njit(**JIT)
def _adam_span(p, g, m, v, vmax, k, coupled, maximize, eps_inside_sqrt):
    # Scalars are read once (as far as LLVM knows, k may alias the state). Every branch left
    # in the loop is a select without side effects, which LLVM vectorizes; amsgrad and the eps
    # form are literal constants per loop, or LLVM would compute both square roots.
    c1, b2, c2, eps, step, inv_bc2, inv_bc2_sqrt, wd, decay = (k[0], k[1], k[2], k[3], k[4],
                                                              k[5], k[6], k[7], k[8])
    if vmax.size == 0 and not eps_inside_sqrt:
        for i in range(p.size):
            _adam_elem(i, p, g, m, v, vmax, c1, b2, c2, eps, step, inv_bc2, inv_bc2_sqrt, wd,
                       decay, coupled, maximize, False, False)
    elif vmax.size == 0:
        for i in range(p.size):
            _adam_elem(i, p, g, m, v, vmax, c1, b2, c2, eps, step, inv_bc2, inv_bc2_sqrt, wd,
                       decay, coupled, maximize, False, True)
    elif not eps_inside_sqrt:
        for i in range(p.size):
            _adam_elem(i, p, g, m, v, vmax, c1, b2, c2, eps, step, inv_bc2, inv_bc2_sqrt, wd,
                       decay, coupled, maximize, True, False)
    else:
        for i in range(p.size):
            _adam_elem(i, p, g, m, v, vmax, c1, b2, c2, eps, step, inv_bc2, inv_bc2_sqrt, wd,
                       decay, coupled, maximize, True, True)


@numba.njit(parallel=True, **JIT)
def _adam_parallel(nchunks, chunk, p, g, m, v, vmax, k, *flags):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _adam_span(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], vmax[lo:hi], k, *flags)


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay,
         step_size, bias_correction2, decoupled, maximize, eps_inside_sqrt):
    arrays = (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)
    views = step_views(arrays, ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), 4)
    if views is None:
        return via_contiguous(adam, arrays, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                              weight_decay=weight_decay, step_size=step_size,
                              bias_correction2=bias_correction2, decoupled=decoupled,
                              maximize=maximize, eps_inside_sqrt=eps_inside_sqrt)
    shrink = weight_decay != 0 and decoupled
    k = np.array((1.0 - beta1, beta2, 1.0 - beta2, eps, step_size, 1.0 / bias_correction2,
                  1.0 / math.sqrt(bias_correction2), weight_decay,
                  1.0 - lr * weight_decay if shrink else 1.0), param.dtype)
    launch(_adam_span, _adam_parallel, views, k, weight_decay != 0 and not decoupled,
           bool(maximize), bool(eps_inside_sqrt))


# ------------------------------------------------------------------------------ adadelta
@numba.njit(**JIT)
def _adadelta_span(p, g, sq, acc, k, has_wd, maximize):
    lr, rho, c, eps, wd = k[0], k[1], k[2], k[3], k[4]
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        if has_wd:
            gi = gi + wd * p[i]
        sq[i] = rho * sq[i] + c * (gi * gi)
        delta = np.sqrt(acc[i] + eps) / np.sqrt(sq[i] + eps) * gi
        acc[i] = rho * acc[i] + c * (delta * delta)
        p[i] = p[i] - lr * delta


@numba.njit(parallel=True, **JIT)
def _adadelta_parallel(nchunks, chunk, p, g, sq, acc, k, *flags):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _adadelta_span(p[lo:hi], g[lo:hi], sq[lo:hi], acc[lo:hi], k, *flags)


def adadelta(param, grad, square_avg, acc_delta, *, lr, rho, eps, weight_decay, maximize):
    arrays = (param, grad, square_avg, acc_delta)
    views = step_views(arrays, ("param", "grad", "square_avg", "acc_delta"), 4)
    if views is None:
        return via_contiguous(adadelta, arrays, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                              maximize=maximize)
    k = np.array((lr, rho, 1.0 - rho, eps, weight_decay), param.dtype)
    launch(_adadelta_span, _adadelta_parallel, views, k, weight_decay != 0, bool(maximize))


# -------------------------------------------------------------------------------- adamax
@numba.njit(**JIT)
def _adamax_span(p, g, m, u, k, has_wd, maximize):
    c1, b2, eps, wd, clr = k[0], k[1], k[2], k[3], k[4]
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        if has_wd:
            gi = gi + wd * p[i]
        m[i] = m[i] + c1 * (gi - m[i])
        u[i] = max_nan(b2 * u[i], np.abs(gi) + eps)
        p[i] = p[i] - clr * (m[i] / u[i])


@numba.njit(parallel=True, **JIT)
def _adamax_parallel(nchunks, chunk, p, g, m, u, k, *flags):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _adamax_span(p[lo:hi], g[lo:hi], m[lo:hi], u[lo:hi], k, *flags)


def adamax(param, grad, exp_avg, exp_inf, *, beta1, beta2, eps, weight_decay, clr, maximize):
    arrays = (param, grad, exp_avg, exp_inf)
    views = step_views(arrays, ("param", "grad", "exp_avg", "exp_inf"), 4)
    if views is None:
        return via_contiguous(adamax, arrays, beta1=beta1, beta2=beta2, eps=eps,
                              weight_decay=weight_decay, clr=clr, maximize=maximize)
    k = np.array((1.0 - beta1, beta2, eps, weight_decay, clr), param.dtype)
    launch(_adamax_span, _adamax_parallel, views, k, weight_decay != 0, bool(maximize))


# --------------------------------------------------------------------------------- nadam
@numba.njit(**JIT)
def _nadam_span(p, g, m, v, k, coupled, maximize):
    c1, b2, c2, eps, wd, inv_bc2, cg, cm, decay = (k[0], k[1], k[2], k[3], k[4], k[5], k[6],
                                                   k[7], k[8])
    one = k[9]
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        pi = p[i] * decay           # decay is exactly 1 unless decoupled decay is on
        if coupled:
            gi = gi + wd * pi
        m[i] = m[i] + c1 * (gi - m[i])
        v[i] = b2 * v[i] + c2 * (gi * gi)
        r = one / (np.sqrt(v[i] * inv_bc2) + eps)
        pi = pi + cg * (gi * r)
        p[i] = pi + cm * (m[i] * r)


@numba.njit(parallel=True, **JIT)
def _nadam_parallel(nchunks, chunk, p, g, m, v, k, *flags):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _nadam_span(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], k, *flags)


def nadam(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay,
          bias_correction2, grad_coef, avg_coef, decoupled, maximize):
    arrays = (param, grad, exp_avg, exp_avg_sq)
    views = step_views(arrays, ("param", "grad", "exp_avg", "exp_avg_sq"), 4)
    if views is None:
        return via_contiguous(nadam, arrays, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                              weight_decay=weight_decay, bias_correction2=bias_correction2,
                              grad_coef=grad_coef, avg_coef=avg_coef, decoupled=decoupled,
                              maximize=maximize)
    shrink = weight_decay != 0 and decoupled
    k = np.array((1.0 - beta1, beta2, 1.0 - beta2, eps, weight_decay, 1.0 / bias_correction2,
                  grad_coef, avg_coef, 1.0 - lr * weight_decay if shrink else 1.0, 1.0),
                 param.dtype)
    launch(_nadam_span, _nadam_parallel, views, k, weight_decay != 0 and not decoupled,
           bool(maximize))


# --------------------------------------------------------------------------------- radam
@numba.njit(**JIT)
def _radam_span(p, g, m, v, k, coupled, rectified, maximize):
    c1, b2, c2, eps, wd, step, decay = k[0], k[1], k[2], k[3], k[4], k[5], k[6]
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        pi = p[i] * decay           # decay is exactly 1 unless decoupled decay is on
        if coupled:
            gi = gi + wd * pi
        m[i] = m[i] + c1 * (gi - m[i])
        v[i] = b2 * v[i] + c2 * (gi * gi)
        if rectified:
            p[i] = pi - step * (m[i] / (np.sqrt(v[i]) + eps))
        else:
            p[i] = pi - step * m[i]


@numba.njit(parallel=True, **JIT)
def _radam_parallel(nchunks, chunk, p, g, m, v, k, *flags):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _radam_span(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], k, *flags)


def radam(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, step_size,
          rectified, decoupled, maximize):
    arrays = (param, grad, exp_avg, exp_avg_sq)
    views = step_views(arrays, ("param", "grad", "exp_avg", "exp_avg_sq"), 4)
    if views is None:
        return via_contiguous(radam, arrays, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                              weight_decay=weight_decay, step_size=step_size, rectified=rectified,
                              decoupled=decoupled, maximize=maximize)
    shrink = weight_decay != 0 and decoupled
    k = np.array((1.0 - beta1, beta2, 1.0 - beta2, eps, weight_decay, step_size,
                  1.0 - lr * weight_decay if shrink else 1.0), param.dtype)
    launch(_radam_span, _radam_parallel, views, k, weight_decay != 0 and not decoupled,
           bool(rectified), bool(maximize))


# ---------------------------------------------------------------------------------- lion
@numba.njit(**JIT)
def _lion_span(p, g, m, k, maximize):
    lr, c1, b1, c2, b2, wd = k[0], k[1], k[2], k[3], k[4], k[5]
    one, zero = k[6], k[7]
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        c = c1 * gi + b1 * m[i]
        sign = one if c > 0 else (-one if c < 0 else zero)
        if c != c:
            sign = c                # NaN stays NaN, as np.sign
        m[i] = c2 * gi + b2 * m[i]
        p[i] = p[i] - lr * (sign + wd * p[i])


@numba.njit(parallel=True, **JIT)
def _lion_parallel(nchunks, chunk, p, g, m, k, *flags):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _lion_span(p[lo:hi], g[lo:hi], m[lo:hi], k, *flags)


def lion(param, grad, exp_avg, *, lr, beta1, beta2, weight_decay, maximize):
    arrays = (param, grad, exp_avg)
    views = step_views(arrays, ("param", "grad", "exp_avg"), 3)
    if views is None:
        return via_contiguous(lion, arrays, lr=lr, beta1=beta1, beta2=beta2,
                              weight_decay=weight_decay, maximize=maximize)
    k = np.array((lr, 1.0 - beta1, beta1, 1.0 - beta2, beta2, weight_decay, 1.0, 0.0),
                 param.dtype)
    launch(_lion_span, _lion_parallel, views, k, bool(maximize))

