"""NumPy reference for the optimizer kernels: the definition of every update formula.

Written for clarity, not speed (as bottleneck's ``slow/``). Each function has the exact
signature of its Cython and Numba twins: arrays first (updated ones, then read-only ones), then
the hyper-parameters with the per-step scalars already folded by ``fastopt.ops`` in float64.
Optional state that is not in use is passed as ``None``. Arithmetic happens in the arrays' dtype
(Python floats are cast to it, NumPy's NEP 50 rule), in the same order as in the compiled
kernels, so every backend gives the same bits for these element-wise updates.

Second moments are ``decay * s + ((1 - decay) * g) * g``, grouped as torch's ``addcmul``
(``value * t1 * t2``): ``(1 - decay) * (g * g)`` would overflow for grads past the square root of
the dtype's largest number whose decayed square torch keeps finite. First moments (and
centered RMSprop's ``grad_avg``), written ``m += (1 - beta1) * (g - m)`` below, are torch's
``lerp_`` (:func:`_lerp`): for a weight ``1 - beta1`` of 0.5 or more it starts from the grad.
An update torch makes with ``param.addcdiv_(t1, t2, value=-lr)`` (Adagrad, RMSprop, Adam,
Adamax) is ``param - (lr * t1) / t2``, in that order: ``lr * (t1 / t2)`` differs where
``lr * t1`` overflows (torch: inf / inf = NaN) or underflows into the subnormals. NAdam
multiplies by a shared reciprocal of its denominator (one division per element), after its
coefficient as torch's addcdiv: ``param + (coef * t1) * r``. RAdam's folded step size is
fastopt's own.
"""
import math

import numpy as np

from .._validate import check_step_arrays


def _check(nrequired, **arrays):
    """Validate a step's arrays, given by name in the kernels' order (param, grad, state);
    the first ``nrequired`` may not be None."""
    check_step_arrays(tuple(arrays.values()), tuple(arrays), nrequired)


def _max_nan(a, b):
    """np.maximum (NaN in either gives NaN), except that a tie keeps ``a``, as the compiled
    kernels do: of -0.0 and +0.0, np.maximum returns its second operand."""
    return np.where((a >= b) | (a != a), a, b)


def _lerp(start, end, weight):
    """torch.lerp(start, end, weight) as torch's CPU kernel computes it: ``start + w * (end -
    start)`` for a weight below 0.5, else ``end - (end - start) * (1 - w)`` (so an infinite end
    gives NaN there, as torch's), ``w`` the weight in the data's dtype. Written as
    ``base + k * (end - start)`` with ``k = w - 1`` (exact) in the second case, as the kernels."""
    one = start.dtype.type(1.0)
    w = start.dtype.type(weight)
    if w < 0.5:
        return start + w * (end - start)
    return end + (w - one) * (end - start)


def ewa(avg, x, *, beta):
    """avg = beta * avg + (1 - beta) * x"""
    _check(2, avg=avg, x=x)
    avg[...] = beta * avg + (1.0 - beta) * x


def sgd(param, grad, momentum_buffer, *, lr, weight_decay, momentum, dampening, nesterov, maximize,
        first_step):
    """torch.optim.SGD for one array.

    g = -grad if maximize else grad;  g += weight_decay * param
    buf = g on the first step, else momentum * buf + (1 - dampening) * g  (only with a buffer)
    g = g + momentum * buf if nesterov else buf;  param -= lr * g
    """
    _check(2, param=param, grad=grad, momentum_buffer=momentum_buffer)
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    if momentum_buffer is not None:
        if first_step:
            momentum_buffer[...] = g
        else:
            momentum_buffer[...] = momentum * momentum_buffer + (1.0 - dampening) * g
        g = g + momentum * momentum_buffer if nesterov else momentum_buffer
    param[...] = param - lr * g


def momentum(param, grad, velocity, *, lr, beta):
    """The course's momentum: ``velocity = beta * velocity + (1 - beta) * grad``;
    ``param -= lr * velocity``."""
    _check(3, param=param, grad=grad, velocity=velocity)
    velocity[...] = beta * velocity + (1.0 - beta) * grad
    param[...] = param - lr * velocity


def rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, *, lr, alpha, eps, weight_decay,
            momentum, maximize, eps_inside_sqrt):
    """torch.optim.RMSprop for one array (``grad_avg`` given: centered; ``momentum_buffer``
    given: momentum).

    g = -grad if maximize else grad;  g += weight_decay * param
    square_avg = alpha * square_avg + (1 - alpha) * g * g
    grad_avg += (1 - alpha) * (g - grad_avg);  s = square_avg - grad_avg * grad_avg  (centered)
    avg = sqrt(s + eps) if eps_inside_sqrt else sqrt(s) + eps
    buf = momentum * buf + g / avg; param -= lr * buf   (momentum)   else   param -= (lr * g) / avg
    """
    _check(3, param=param, grad=grad, square_avg=square_avg, grad_avg=grad_avg,
           momentum_buffer=momentum_buffer)
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    square_avg[...] = alpha * square_avg + ((1.0 - alpha) * g) * g
    s = square_avg
    if grad_avg is not None:
        grad_avg[...] = _lerp(grad_avg, g, 1.0 - alpha)
        s = square_avg - grad_avg * grad_avg
    avg = np.sqrt(s + eps) if eps_inside_sqrt else np.sqrt(s) + eps
    if momentum_buffer is not None:
        momentum_buffer[...] = momentum * momentum_buffer + g / avg
        param[...] = param - lr * momentum_buffer
    else:
        param[...] = param - (lr * g) / avg


def adagrad(param, grad, state_sum, *, clr, eps, weight_decay, maximize):
    """torch.optim.Adagrad for one array; ``clr = lr / (1 + (step - 1) * lr_decay)``.

    g = -grad if maximize else grad;  g += weight_decay * param
    state_sum += g * g;  param -= (clr * g) / (sqrt(state_sum) + eps)
    """
    _check(3, param=param, grad=grad, state_sum=state_sum)
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    state_sum[...] = state_sum + g * g
    param[...] = param - (clr * g) / (np.sqrt(state_sum) + eps)


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay,
         step_size, bias_correction2, grad_scale, decoupled, maximize, eps_inside_sqrt):
    """torch.optim.Adam / AdamW for one array (``max_exp_avg_sq`` given: amsgrad).

    ``step_size = lr / (1 - beta1**t)``, ``bias_correction2 = 1 - beta2**t``; ``grad_scale``
    (a gradient clip's factor, in the data's precision) multiplies the grad unless it is 1.

    g = grad * grad_scale;  g = -g if maximize
    param *= 1 - lr * weight_decay  (decoupled, AdamW)   or   g += weight_decay * param  (Adam)
    exp_avg += (1 - beta1) * (g - exp_avg);  exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
    v = max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq)  (amsgrad)   else   v = exp_avg_sq
    denom = sqrt(v * (1 / bias_correction2) + eps) if eps_inside_sqrt
            else sqrt(v) * (1 / sqrt(bias_correction2)) + eps
    param -= (step_size * exp_avg) / denom
    """
    _check(4, param=param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq,
           max_exp_avg_sq=max_exp_avg_sq)
    g = grad * grad_scale if grad_scale != 1 else grad
    g = -g if maximize else g
    p = param      # written back once at the end: grad may be param itself (check_disjoint)
    if weight_decay != 0:
        if decoupled:
            p = param * (1.0 - lr * weight_decay)
        else:
            g = g + weight_decay * param
    exp_avg[...] = _lerp(exp_avg, g, 1.0 - beta1)
    exp_avg_sq[...] = beta2 * exp_avg_sq + ((1.0 - beta2) * g) * g
    v = exp_avg_sq
    if max_exp_avg_sq is not None:
        max_exp_avg_sq[...] = _max_nan(max_exp_avg_sq, exp_avg_sq)
        v = max_exp_avg_sq
    # the bias correction multiplies by its reciprocal (folded in float64): one division per
    # element instead of two, which is what keeps the kernels memory-bound (DeepSpeed does the
    # same); it differs from torch's `sqrt(v) / sqrt(bc2)` by at most an ulp of the denominator
    if eps_inside_sqrt:
        denom = np.sqrt(v * (1.0 / bias_correction2) + eps)
    else:
        denom = np.sqrt(v) * (1.0 / math.sqrt(bias_correction2)) + eps
    param[...] = p - (step_size * exp_avg) / denom



def adadelta(param, grad, square_avg, acc_delta, *, lr, rho, eps, weight_decay, maximize):
    """torch.optim.Adadelta for one array.

    g = -grad if maximize else grad;  g += weight_decay * param
    square_avg = rho * square_avg + (1 - rho) * g * g
    delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
    acc_delta = rho * acc_delta + (1 - rho) * delta * delta;  param -= lr * delta
    """
    _check(4, param=param, grad=grad, square_avg=square_avg, acc_delta=acc_delta)
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    square_avg[...] = rho * square_avg + ((1.0 - rho) * g) * g
    delta = np.sqrt(acc_delta + eps) / np.sqrt(square_avg + eps) * g
    acc_delta[...] = rho * acc_delta + ((1.0 - rho) * delta) * delta
    param[...] = param - lr * delta


def adamax(param, grad, exp_avg, exp_inf, *, beta1, beta2, eps, weight_decay, clr, maximize):
    """torch.optim.Adamax for one array; ``clr = lr / (1 - beta1**t)``.

    g = -grad if maximize else grad;  g += weight_decay * param
    exp_avg += (1 - beta1) * (g - exp_avg)
    exp_inf = max(beta2 * exp_inf, |g| + eps)   (NaN in either gives NaN, as torch.maximum)
    param -= (clr * exp_avg) / exp_inf
    """
    _check(4, param=param, grad=grad, exp_avg=exp_avg, exp_inf=exp_inf)
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    exp_avg[...] = _lerp(exp_avg, g, 1.0 - beta1)
    exp_inf[...] = _max_nan(beta2 * exp_inf, np.abs(g) + eps)
    param[...] = param - (clr * exp_avg) / exp_inf


def nadam(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay,
          bias_correction2, grad_coef, avg_coef, decoupled, maximize):
    """torch.optim.NAdam for one array. With ``mu_t = beta1 * (1 - 0.5 * 0.96**(t * psi))``
    and the running product ``P_t = mu_1 ... mu_t``, ``fastopt.ops.nadam_step_`` folds
    ``grad_coef = -lr * (1 - mu_t) / (1 - P_t)``, ``avg_coef = -lr * mu_{t+1} / (1 - P_t
    mu_{t+1})`` and ``bias_correction2 = 1 - beta2**t``.

    g = -grad if maximize else grad
    param *= 1 - lr * weight_decay  (decoupled)   or   g += weight_decay * param
    exp_avg += (1 - beta1) * (g - exp_avg);  exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) g g
    d = sqrt(exp_avg_sq * (1 / bias_correction2)) + eps;  r = 1 / d
    param += (grad_coef * g) * r;  param += (avg_coef * exp_avg) * r
    (where r overflows to inf: grad_coef * (g / d) and avg_coef * (exp_avg / d), as torch)
    """
    _check(4, param=param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    g = -grad if maximize else grad
    p = param      # written back once at the end: grad may be param itself (check_disjoint)
    if weight_decay != 0:
        if decoupled:
            p = param * (1.0 - lr * weight_decay)
        else:
            g = g + weight_decay * param
    exp_avg[...] = _lerp(exp_avg, g, 1.0 - beta1)
    exp_avg_sq[...] = beta2 * exp_avg_sq + ((1.0 - beta2) * g) * g
    # one division per element: the reciprocal of the denominator serves both terms, unless
    # it overflows (a denominator below 1/max, from a subnormal eps): 0 * inf would be NaN
    # where torch's addcdiv gives 0, so those elements divide, as torch does
    d = np.sqrt(exp_avg_sq * (1.0 / bias_correction2)) + eps
    r = 1.0 / d
    finite = np.isfinite(r)
    if finite.all():
        p = p + (grad_coef * g) * r
        param[...] = p + (avg_coef * exp_avg) * r
    else:
        p = p + np.where(finite, (grad_coef * g) * r, grad_coef * (g / d))
        param[...] = p + np.where(finite, (avg_coef * exp_avg) * r, avg_coef * (exp_avg / d))


def radam(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, step_size,
          adaptive_scale, rectified, decoupled, maximize):
    """torch.optim.RAdam for one array. ``fastopt.ops.radam_step_`` folds ``step_size =
    lr / (1 - beta1**t)`` and, when ``rho_t > 5`` (``rectified``), ``adaptive_scale =
    rect * sqrt(1 - beta2**t)``. As torch's ``(exp_avg / bc1 * lr) * (sqrt(bc2) / (sqrt(v) +
    eps)) * rect``, the step size multiplies exp_avg before the adaptive factor does: an
    overflowing product over an infinite ``v`` is inf * 0 = NaN, as torch's.

    g = -grad if maximize else grad
    param *= 1 - lr * weight_decay  (decoupled)   or   g += weight_decay * param
    exp_avg += (1 - beta1) * (g - exp_avg);  exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) g g
    param -= (step_size * exp_avg) * (adaptive_scale / (sqrt(exp_avg_sq) + eps))  (rectified)
    param -= step_size * exp_avg                                 (otherwise)
    """
    _check(4, param=param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    g = -grad if maximize else grad
    p = param      # written back once at the end: grad may be param itself (check_disjoint)
    if weight_decay != 0:
        if decoupled:
            p = param * (1.0 - lr * weight_decay)
        else:
            g = g + weight_decay * param
    exp_avg[...] = _lerp(exp_avg, g, 1.0 - beta1)
    exp_avg_sq[...] = beta2 * exp_avg_sq + ((1.0 - beta2) * g) * g
    if rectified:
        param[...] = p - (step_size * exp_avg) * (adaptive_scale / (np.sqrt(exp_avg_sq) + eps))
    else:
        param[...] = p - step_size * exp_avg


def lion(param, grad, exp_avg, *, lr, beta1, beta2, weight_decay, maximize):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") for one array,
    as ``optax.lion``: the sign of an interpolated momentum, decoupled weight decay.

    g = -grad if maximize else grad
    update = sign((1 - beta1) * g + beta1 * exp_avg) + weight_decay * param
    exp_avg = (1 - beta2) * g + beta2 * exp_avg
    param -= lr * update

    ``sign`` is NumPy's: 0 for a zero of either sign, NaN for NaN. As in optax the decay term is
    always added, so an infinite param becomes NaN even with ``weight_decay=0``.
    """
    _check(3, param=param, grad=grad, exp_avg=exp_avg)
    g = -grad if maximize else grad
    update = np.sign((1.0 - beta1) * g + beta1 * exp_avg) + weight_decay * param
    exp_avg[...] = (1.0 - beta2) * g + beta2 * exp_avg
    param[...] = param - lr * update
