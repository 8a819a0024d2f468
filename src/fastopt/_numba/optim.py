"""Numba optimizer kernels, mirroring fastopt/_kernels/optim.pyx.

Each kernel has three parts:
- ``_<name>_span(arrays..., packed)``: the serial loop over whole 1-D arrays. ``packed`` holds
  the kernel's scalars and options (``fastopt._registry``), which the loop names again
  (``s = _NAME(*packed)``, then ``s.lr``, as the Cython kernels' struct) and casts to the
  arrays' dtype after folding in float64, so arithmetic stays in that precision;
- ``_<name>_parallel(nchunks, chunk, arrays..., packed)``: the arrays in ``nchunks`` chunks;
- ``<name>(...)``: the backend-level function with the reference's signature, which validates
  and launches.
Optional state not in use arrives as an empty array. ``<name>_multi``, the list form, is made
from these parts at the end of the module (``_common.list_form``).
"""
import math

import numba
import numpy as np
from numba import prange

from .. import _registry
from ._common import JIT, lerp, lerp_coef, list_form, max_nan, run_step, scalars, step_views


# ----------------------------------------------------------------------------------- ewa
_EWA, _pack_ewa = scalars("ewa")


@numba.njit(**JIT)
def _ewa_span(avg, x, packed):
    s = _EWA(*packed)
    f = avg.dtype.type
    b = f(s.beta)
    c = f(1.0 - s.beta)
    for i in range(avg.size):
        avg[i] = b * avg[i] + c * x[i]


@numba.njit(parallel=True, **JIT)
def _ewa_parallel(nchunks, chunk, avg, x, packed):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, avg.size)
        _ewa_span(avg[lo:hi], x[lo:hi], packed)


def ewa(avg, x, *, beta):
    arrays = (avg, x)
    views = step_views(arrays, ("avg", "x"), 2)
    packed = _pack_ewa(beta=beta)
    kernel = run_step     # (bound last: fastopt._multi._kernel_began)
    kernel(ewa, arrays, views, _ewa_span, _ewa_parallel, packed, _EWA)


# ----------------------------------------------------------------------------------- sgd
_SGD, _pack_sgd = scalars("sgd")


@numba.njit(**JIT)
def _sgd_span(p, g, buf, packed):
    s = _SGD(*packed)
    f = p.dtype.type
    lr = f(s.lr)
    wd = f(s.weight_decay)
    mom = f(s.momentum)
    keep = f(1.0 - s.dampening)
    has_wd = s.weight_decay != 0
    nesterov, maximize, first_step = s.nesterov, s.maximize, s.first_step
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
def _sgd_parallel(nchunks, chunk, p, g, buf, packed):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _sgd_span(p[lo:hi], g[lo:hi], buf[lo:hi], packed)


def sgd(param, grad, momentum_buffer, *, lr, weight_decay, momentum, dampening, nesterov, maximize,
        first_step):
    arrays = (param, grad, momentum_buffer)
    views = step_views(arrays, ("param", "grad", "momentum_buffer"), 2)
    packed = _pack_sgd(lr=lr, weight_decay=weight_decay, momentum=momentum, dampening=dampening,
                       nesterov=nesterov, maximize=maximize, first_step=first_step)
    kernel = run_step     # (bound last: fastopt._multi._kernel_began)
    kernel(sgd, arrays, views, _sgd_span, _sgd_parallel, packed, _SGD)


# ------------------------------------------------------------------------------ momentum
_MOMENTUM, _pack_momentum = scalars("momentum")


@numba.njit(**JIT)
def _momentum_span(p, g, vel, packed):
    s = _MOMENTUM(*packed)
    f = p.dtype.type
    lr = f(s.lr)
    b = f(s.beta)
    c = f(1.0 - s.beta)
    for i in range(p.size):
        vel[i] = b * vel[i] + c * g[i]
        p[i] = p[i] - lr * vel[i]


@numba.njit(parallel=True, **JIT)
def _momentum_parallel(nchunks, chunk, p, g, vel, packed):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _momentum_span(p[lo:hi], g[lo:hi], vel[lo:hi], packed)


def momentum(param, grad, velocity, *, lr, beta):
    arrays = (param, grad, velocity)
    views = step_views(arrays, ("param", "grad", "velocity"), 3)
    packed = _pack_momentum(lr=lr, beta=beta)
    kernel = run_step     # (bound last: fastopt._multi._kernel_began)
    kernel(momentum, arrays, views, _momentum_span, _momentum_parallel, packed, _MOMENTUM)


# ------------------------------------------------------------------------------- rmsprop
_RMSPROP, _pack_rmsprop = scalars("rmsprop")


@numba.njit(**JIT)
def _rmsprop_span(p, g, sq, gavg, buf, packed):
    s = _RMSPROP(*packed)
    f = p.dtype.type
    lr = f(s.lr)
    a = f(s.alpha)
    c = f(1.0 - s.alpha)
    kc = lerp_coef(c, f(1.0))
    # alpha >= 1 (torch takes any alpha >= 0) makes the weight c <= 0, outside lerp's (0, 1]:
    # its lerp starts from grad_avg (c < 0.5) though kc <= 0 would make lerp() start from g
    from_end = c >= 0.5
    eps = f(s.eps)
    wd = f(s.weight_decay)
    mom = f(s.momentum)
    has_wd = s.weight_decay != 0
    maximize, eps_inside_sqrt = s.maximize, s.eps_inside_sqrt
    centered = gavg.size > 0
    has_buf = buf.size > 0
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        if has_wd:
            gi = gi + wd * p[i]
        sq[i] = a * sq[i] + (c * gi) * gi
        sqi = sq[i]
        if centered:
            gavg[i] = (gi if from_end else gavg[i]) + kc * (gi - gavg[i])
            sqi = sq[i] - gavg[i] * gavg[i]
        avg = np.sqrt(sqi + eps) if eps_inside_sqrt else np.sqrt(sqi) + eps
        if has_buf:
            buf[i] = mom * buf[i] + gi / avg
            p[i] = p[i] - lr * buf[i]
        else:
            p[i] = p[i] - (lr * gi) / avg


@numba.njit(parallel=True, **JIT)
def _rmsprop_parallel(nchunks, chunk, p, g, sq, gavg, buf, packed):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _rmsprop_span(p[lo:hi], g[lo:hi], sq[lo:hi], gavg[lo:hi], buf[lo:hi], packed)


def rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, *, lr, alpha, eps, weight_decay,
            momentum, maximize, eps_inside_sqrt):
    arrays = (param, grad, square_avg, grad_avg, momentum_buffer)
    views = step_views(arrays, ("param", "grad", "square_avg", "grad_avg", "momentum_buffer"), 3)
    packed = _pack_rmsprop(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                           momentum=momentum, maximize=maximize, eps_inside_sqrt=eps_inside_sqrt)
    kernel = run_step     # (bound last: fastopt._multi._kernel_began)
    kernel(rmsprop, arrays, views, _rmsprop_span, _rmsprop_parallel, packed, _RMSPROP)


# ------------------------------------------------------------------------------- adagrad
_ADAGRAD, _pack_adagrad = scalars("adagrad")


@numba.njit(**JIT)
def _adagrad_span(p, g, ssum, packed):
    s = _ADAGRAD(*packed)
    f = p.dtype.type
    clr = f(s.clr)
    eps = f(s.eps)
    wd = f(s.weight_decay)
    has_wd = s.weight_decay != 0
    maximize = s.maximize
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        if has_wd:
            gi = gi + wd * p[i]
        ssum[i] = ssum[i] + gi * gi
        p[i] = p[i] - (clr * gi) / (np.sqrt(ssum[i]) + eps)


@numba.njit(parallel=True, **JIT)
def _adagrad_parallel(nchunks, chunk, p, g, ssum, packed):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _adagrad_span(p[lo:hi], g[lo:hi], ssum[lo:hi], packed)


def adagrad(param, grad, state_sum, *, clr, eps, weight_decay, maximize):
    arrays = (param, grad, state_sum)
    views = step_views(arrays, ("param", "grad", "state_sum"), 3)
    packed = _pack_adagrad(clr=clr, eps=eps, weight_decay=weight_decay, maximize=maximize)
    kernel = run_step     # (bound last: fastopt._multi._kernel_began)
    kernel(adagrad, arrays, views, _adagrad_span, _adagrad_parallel, packed, _ADAGRAD)


# ---------------------------------------------------------------------------------- adam
_ADAM, _pack_adam = scalars("adam")


@numba.njit(inline="always", **JIT)
def adam_consts(s, p):
    """Adam's scalars ``s`` folded in float64 and cast to ``p``'s dtype, as adam_span does:
    what :func:`adam_elem` takes."""
    f = p.dtype.type
    # decay is exactly 1 unless AdamW-style decay is on
    decay = f(1.0 - s.lr * s.weight_decay) if s.weight_decay != 0 and s.decoupled else f(1.0)
    return (lerp_coef(f(1.0 - s.beta1), f(1.0)), f(s.beta2), f(1.0 - s.beta2), f(s.eps),
            f(s.step_size), f(1.0 / s.bias_correction2), f(1.0 / math.sqrt(s.bias_correction2)),
            f(s.weight_decay), decay, s.weight_decay != 0 and not s.decoupled)


@numba.njit(inline="always", **JIT)
def adam_elem(i, gi, p, m, v, vmax, k, amsgrad, eps_inside_sqrt):
    """Element ``i`` of an Adam step with grad ``gi`` (scaled and negated already)."""
    c1, b2, c2, eps, step, inv_bc2, inv_bc2_sqrt, wd, decay, coupled = k
    pi = p[i] * decay
    if coupled:
        gi = gi + wd * pi
    # the new moments stay in locals: read back after the stores (which LLVM must assume may
    # alias), they cost a load and a store-to-load wait per element
    mi = lerp(m[i], gi, c1)
    vi = b2 * v[i] + (c2 * gi) * gi
    m[i] = mi
    v[i] = vi
    if amsgrad:
        vi = max_nan(vmax[i], vi)
        vmax[i] = vi
    if eps_inside_sqrt:
        denom = np.sqrt(vi * inv_bc2 + eps)
    else:
        denom = np.sqrt(vi) * inv_bc2_sqrt + eps
    p[i] = pi - (step * mi) / denom


@numba.njit(inline="always", **JIT)
def _adam_loop(p, g, m, v, vmax, s, amsgrad, eps_inside_sqrt, plain=False):
    # The caller passes amsgrad, the eps form and ``plain`` as literal constants (or LLVM
    # would compute both square roots); every branch left in the loop is a select without
    # side effects, which LLVM vectorizes. ``plain``: no grad scale, maximize or coupled
    # weight decay, whose selects LLVM keeps in the loop, tested per vector (Adam float32,
    # 1e5, one thread: 0.274 -> 0.218 ns/element, the Cython loop's speed).
    k = adam_consts(s, p)
    if plain:
        for i in range(p.size):
            adam_elem(i, g[i], p, m, v, vmax, k, False, False)
        return
    scale = p.dtype.type(s.grad_scale)
    scaled = s.grad_scale != 1
    maximize = s.maximize
    for i in range(p.size):
        gi = g[i] * scale if scaled else g[i]
        gi = -gi if maximize else gi
        adam_elem(i, gi, p, m, v, vmax, k, amsgrad, eps_inside_sqrt)


@numba.njit(**JIT)
def _adam_span(p, g, m, v, vmax, packed):
    s = _ADAM(*packed)
    coupled = s.weight_decay != 0 and not s.decoupled
    if (vmax.size == 0 and not s.eps_inside_sqrt and s.grad_scale == 1 and not s.maximize
            and not coupled):
        _adam_loop(p, g, m, v, vmax, s, amsgrad=False, eps_inside_sqrt=False, plain=True)
    elif vmax.size == 0 and not s.eps_inside_sqrt:
        _adam_loop(p, g, m, v, vmax, s, amsgrad=False, eps_inside_sqrt=False)
    elif vmax.size == 0:
        _adam_loop(p, g, m, v, vmax, s, amsgrad=False, eps_inside_sqrt=True)
    elif not s.eps_inside_sqrt:
        _adam_loop(p, g, m, v, vmax, s, amsgrad=True, eps_inside_sqrt=False)
    else:
        _adam_loop(p, g, m, v, vmax, s, amsgrad=True, eps_inside_sqrt=True)


@numba.njit(parallel=True, **JIT)
def _adam_parallel(nchunks, chunk, p, g, m, v, vmax, packed):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _adam_span(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], vmax[lo:hi], packed)


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay,
         step_size, bias_correction2, grad_scale, decoupled, maximize, eps_inside_sqrt):
    arrays = (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)
    views = step_views(arrays, ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), 4)
    packed = _pack_adam(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                        step_size=step_size, bias_correction2=bias_correction2,
                        grad_scale=grad_scale, decoupled=decoupled, maximize=maximize,
                        eps_inside_sqrt=eps_inside_sqrt)
    kernel = run_step     # (bound last: fastopt._multi._kernel_began)
    kernel(adam, arrays, views, _adam_span, _adam_parallel, packed, _ADAM)


# ------------------------------------------------------------------------------ adadelta
_ADADELTA, _pack_adadelta = scalars("adadelta")


@numba.njit(**JIT)
def _adadelta_span(p, g, sq, acc, packed):
    s = _ADADELTA(*packed)
    f = p.dtype.type
    lr = f(s.lr)
    rho = f(s.rho)
    c = f(1.0 - s.rho)
    eps = f(s.eps)
    wd = f(s.weight_decay)
    has_wd = s.weight_decay != 0
    maximize = s.maximize
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        if has_wd:
            gi = gi + wd * p[i]
        sq[i] = rho * sq[i] + (c * gi) * gi
        delta = np.sqrt(acc[i] + eps) / np.sqrt(sq[i] + eps) * gi
        acc[i] = rho * acc[i] + (c * delta) * delta
        p[i] = p[i] - lr * delta


@numba.njit(parallel=True, **JIT)
def _adadelta_parallel(nchunks, chunk, p, g, sq, acc, packed):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _adadelta_span(p[lo:hi], g[lo:hi], sq[lo:hi], acc[lo:hi], packed)


def adadelta(param, grad, square_avg, acc_delta, *, lr, rho, eps, weight_decay, maximize):
    arrays = (param, grad, square_avg, acc_delta)
    views = step_views(arrays, ("param", "grad", "square_avg", "acc_delta"), 4)
    packed = _pack_adadelta(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
    kernel = run_step     # (bound last: fastopt._multi._kernel_began)
    kernel(adadelta, arrays, views, _adadelta_span, _adadelta_parallel, packed, _ADADELTA)


# -------------------------------------------------------------------------------- adamax
_ADAMAX, _pack_adamax = scalars("adamax")


@numba.njit(**JIT)
def _adamax_span(p, g, m, u, packed):
    s = _ADAMAX(*packed)
    f = p.dtype.type
    c1 = lerp_coef(f(1.0 - s.beta1), f(1.0))
    b2 = f(s.beta2)
    eps = f(s.eps)
    wd = f(s.weight_decay)
    clr = f(s.clr)
    has_wd = s.weight_decay != 0
    maximize = s.maximize
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        pi = p[i]
        if has_wd:
            gi = gi + wd * pi
        mi = lerp(m[i], gi, c1)     # (in locals: see adam_elem)
        ui = max_nan(b2 * u[i], np.abs(gi) + eps)
        m[i] = mi
        u[i] = ui
        p[i] = pi - (clr * mi) / ui


@numba.njit(parallel=True, **JIT)
def _adamax_parallel(nchunks, chunk, p, g, m, u, packed):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _adamax_span(p[lo:hi], g[lo:hi], m[lo:hi], u[lo:hi], packed)


def adamax(param, grad, exp_avg, exp_inf, *, beta1, beta2, eps, weight_decay, clr, maximize):
    arrays = (param, grad, exp_avg, exp_inf)
    views = step_views(arrays, ("param", "grad", "exp_avg", "exp_inf"), 4)
    packed = _pack_adamax(beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, clr=clr,
                          maximize=maximize)
    kernel = run_step     # (bound last: fastopt._multi._kernel_began)
    kernel(adamax, arrays, views, _adamax_span, _adamax_parallel, packed, _ADAMAX)


# --------------------------------------------------------------------------------- nadam
_NADAM, _pack_nadam = scalars("nadam")


@numba.njit(**JIT)
def _nadam_span(p, g, m, v, packed):
    s = _NADAM(*packed)
    f = p.dtype.type
    c1 = lerp_coef(f(1.0 - s.beta1), f(1.0))
    b2 = f(s.beta2)
    c2 = f(1.0 - s.beta2)
    eps = f(s.eps)
    wd = f(s.weight_decay)
    inv_bc2 = f(1.0 / s.bias_correction2)
    cg = f(s.grad_coef)
    cm = f(s.avg_coef)
    # decay is exactly 1 unless decoupled decay is on
    decay = f(1.0 - s.lr * s.weight_decay) if s.weight_decay != 0 and s.decoupled else f(1.0)
    one = f(1.0)
    coupled = s.weight_decay != 0 and not s.decoupled
    maximize = s.maximize
    # 1 / d (d >= eps) can overflow only for an eps below 2 / max (see the Cython kernel)
    tiny_eps = not (s.eps * np.finfo(p.dtype).max >= 2)
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        pi = p[i] * decay
        if coupled:
            gi = gi + wd * pi
        mi = lerp(m[i], gi, c1)     # (in locals: see adam_elem)
        vi = b2 * v[i] + (c2 * gi) * gi
        m[i] = mi
        v[i] = vi
        d = np.sqrt(vi * inv_bc2) + eps
        r = one / d
        if tiny_eps and r - r != 0:     # as the Cython kernel's nadam_elem
            pi = pi + cg * (gi / d)
            p[i] = pi + cm * (mi / d)
        else:
            pi = pi + (cg * gi) * r
            p[i] = pi + (cm * mi) * r


@numba.njit(parallel=True, **JIT)
def _nadam_parallel(nchunks, chunk, p, g, m, v, packed):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _nadam_span(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], packed)


def nadam(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay,
          bias_correction2, grad_coef, avg_coef, decoupled, maximize):
    arrays = (param, grad, exp_avg, exp_avg_sq)
    views = step_views(arrays, ("param", "grad", "exp_avg", "exp_avg_sq"), 4)
    packed = _pack_nadam(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                         bias_correction2=bias_correction2, grad_coef=grad_coef,
                         avg_coef=avg_coef, decoupled=decoupled, maximize=maximize)
    kernel = run_step     # (bound last: fastopt._multi._kernel_began)
    kernel(nadam, arrays, views, _nadam_span, _nadam_parallel, packed, _NADAM)


# --------------------------------------------------------------------------------- radam
_RADAM, _pack_radam = scalars("radam")


@numba.njit(**JIT)
def _radam_span(p, g, m, v, packed):
    s = _RADAM(*packed)
    f = p.dtype.type
    c1 = lerp_coef(f(1.0 - s.beta1), f(1.0))
    b2 = f(s.beta2)
    c2 = f(1.0 - s.beta2)
    eps = f(s.eps)
    wd = f(s.weight_decay)
    step = f(s.step_size)
    scale = f(s.adaptive_scale)
    # decay is exactly 1 unless decoupled decay is on
    decay = f(1.0 - s.lr * s.weight_decay) if s.weight_decay != 0 and s.decoupled else f(1.0)
    coupled = s.weight_decay != 0 and not s.decoupled
    rectified, maximize = s.rectified, s.maximize
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        pi = p[i] * decay
        if coupled:
            gi = gi + wd * pi
        mi = lerp(m[i], gi, c1)     # (in locals: see adam_elem)
        vi = b2 * v[i] + (c2 * gi) * gi
        m[i] = mi
        v[i] = vi
        if rectified:
            p[i] = pi - (step * mi) * (scale / (np.sqrt(vi) + eps))
        else:
            p[i] = pi - step * mi


@numba.njit(parallel=True, **JIT)
def _radam_parallel(nchunks, chunk, p, g, m, v, packed):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _radam_span(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], packed)


def radam(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, step_size,
          adaptive_scale, rectified, decoupled, maximize):
    arrays = (param, grad, exp_avg, exp_avg_sq)
    views = step_views(arrays, ("param", "grad", "exp_avg", "exp_avg_sq"), 4)
    packed = _pack_radam(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                         step_size=step_size, adaptive_scale=adaptive_scale,
                         rectified=rectified, decoupled=decoupled, maximize=maximize)
    kernel = run_step     # (bound last: fastopt._multi._kernel_began)
    kernel(radam, arrays, views, _radam_span, _radam_parallel, packed, _RADAM)


# ---------------------------------------------------------------------------------- lion
_LION, _pack_lion = scalars("lion")


@numba.njit(**JIT)
def _lion_span(p, g, m, packed):
    s = _LION(*packed)
    f = p.dtype.type
    lr = f(s.lr)
    c1 = f(1.0 - s.beta1)
    b1 = f(s.beta1)
    c2 = f(1.0 - s.beta2)
    b2 = f(s.beta2)
    wd = f(s.weight_decay)
    one = f(1.0)
    zero = f(0.0)
    maximize = s.maximize
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        c = c1 * gi + b1 * m[i]
        sign = one if c > 0 else (-one if c < 0 else zero)
        if c != c:
            sign = c                # NaN stays NaN, as np.sign
        m[i] = c2 * gi + b2 * m[i]
        p[i] = p[i] - lr * (sign + wd * p[i])


@numba.njit(parallel=True, **JIT)
def _lion_parallel(nchunks, chunk, p, g, m, packed):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _lion_span(p[lo:hi], g[lo:hi], m[lo:hi], packed)


def lion(param, grad, exp_avg, *, lr, beta1, beta2, weight_decay, maximize):
    arrays = (param, grad, exp_avg)
    views = step_views(arrays, ("param", "grad", "exp_avg"), 3)
    packed = _pack_lion(lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay,
                        maximize=maximize)
    kernel = run_step     # (bound last: fastopt._multi._kernel_began)
    kernel(lion, arrays, views, _lion_span, _lion_parallel, packed, _LION)


# ---------------------------------------------------------------------------- list forms
# <name>_multi for every kernel above, from its parts as this module names them
for _kernel in _registry.KERNELS:
    globals()[_kernel.multi] = list_form(*(globals()[part.format(_kernel.name)] for part in (
        "{}", "_{}_span", "_{}_parallel", "_pack_{}")))
del _kernel
