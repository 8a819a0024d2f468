"""Functional in-place kernels: one optimizer step on one array, or on a list of arrays in one
call (``foreach_*``, one call into compiled code for a whole parameter group), on the active
backend.

Each function folds its per-step scalars once in float64 (bias corrections, the decayed
learning rate) and calls the backend kernel of the same name (``<name>_multi`` for lists),
which validates every array (shape and dtype of its ``param``; state arrays writeable) before it
writes anything. Arrays may be float32 or float64, of any shape and layout, including 0-d and
empty; a list may mix them. The results of ``foreach_*`` are bit-identical to calling the
single-array function on each array. They return None.

These are what the optimizer classes call, so each formula exists once per backend.

Every scalar is checked before the backend runs (a real number in torch.optim's range, else a
``TypeError``/``ValueError`` naming it), so a refused call writes nothing.
"""
import struct
from collections.abc import Sequence

import numpy as np

from . import _backend
from ._hyper import BETAS, NONNEG, STEP, UNIT, UNIT_OPEN, check_reals

Array = np.ndarray               # float32 or float64, any shape and layout
Arrays = Sequence[np.ndarray]    # a list or tuple of them

_F32 = struct.Struct("f")


def _to_f32(x):
    """x rounded to the nearest float32 (as a Python float); cheaper than a NumPy scalar."""
    return _F32.unpack(_F32.pack(x))[0]


# Scalar checks: the chained comparisons are the whole cost of a good call (a failing
# comparison, including NaN's and None's, hands over to check_reals for the named error).
_NOT_REAL = (TypeError, ValueError)    # None or a str (TypeError), an array (ValueError)


def _check_ewa(beta):
    try:
        if 0.0 <= beta <= 1.0:
            return
    except _NOT_REAL:
        pass
    check_reals(beta=(beta, UNIT))


def _check_sgd(lr, weight_decay, momentum, dampening):
    try:
        if lr >= 0.0 and weight_decay >= 0.0 and momentum >= 0.0 and dampening >= 0.0:
            return
    except _NOT_REAL:
        pass
    check_reals(lr=(lr, NONNEG), momentum=(momentum, NONNEG), dampening=(dampening, NONNEG),
                weight_decay=(weight_decay, NONNEG))


def _check_lr_beta(lr, beta, beta_bounds, eps=0.0, weight_decay=0.0, momentum=0.0,
                   beta_name="beta"):
    """Momentum, RMSprop, Adadelta (``beta_bounds``: [0, 1) or [0, 1])."""
    try:
        if (lr >= 0.0 and eps >= 0.0 and weight_decay >= 0.0 and momentum >= 0.0
                and 0.0 <= beta and (beta < 1.0 or beta_bounds is UNIT and beta == 1.0)):
            return
    except _NOT_REAL:
        pass
    check_reals(lr=(lr, NONNEG), **{beta_name: (beta, beta_bounds)}, eps=(eps, NONNEG),
                weight_decay=(weight_decay, NONNEG), momentum=(momentum, NONNEG))


def _check_adagrad(step, lr, lr_decay, weight_decay, eps):
    try:
        if step >= 1 and lr >= 0.0 and lr_decay >= 0.0 and weight_decay >= 0.0 and eps >= 0.0:
            return
    except _NOT_REAL:
        pass
    check_reals(step=(step, STEP), lr=(lr, NONNEG), lr_decay=(lr_decay, NONNEG),
                weight_decay=(weight_decay, NONNEG), eps=(eps, NONNEG))


def _check_adam_family(step, lr, betas, eps, weight_decay):
    """Check the scalars shared by the Adam family; return ``(beta1, beta2)``."""
    try:
        beta1, beta2 = betas
        if (step >= 1 and lr >= 0.0 and eps >= 0.0 and weight_decay >= 0.0
                and 0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            return beta1, beta2
    except _NOT_REAL:
        pass
    check_reals(step=(step, STEP), lr=(lr, NONNEG), betas=(betas, BETAS), eps=(eps, NONNEG),
                weight_decay=(weight_decay, NONNEG))
    return betas[0], betas[1]


def ewa_(avg: Array, x: Array, beta: float) -> None:
    """Fold ``x`` into the running average in place: ``avg = beta * avg + (1 - beta) * x``."""
    _check_ewa(beta)
    _backend.active.ewa(avg, x, beta=beta)


def foreach_ewa_(avgs: Arrays, xs: Arrays, beta: float) -> None:
    """:func:`ewa_` on every pair of ``avgs`` and ``xs``."""
    _check_ewa(beta)
    _backend.active.ewa_multi(avgs, xs, beta=beta)


def sgd_step_(param: Array, grad: Array, momentum_buffer: Array | None = None, *, lr: float,
              momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
              weight_decay: float = 0.0, maximize: bool = False, first_step: bool = False) -> None:
    """One step of torch.optim.SGD on ``param`` (and ``momentum_buffer`` when momentum is used).

    ``g = ±grad + weight_decay * param``; with a buffer: ``buf = g`` if ``first_step`` else
    ``momentum * buf + (1 - dampening) * g``, then ``g = g + momentum * buf`` (Nesterov) or
    ``g = buf``; finally ``param -= lr * g``. Pass ``momentum_buffer=None`` for plain SGD.
    """
    _check_sgd(lr, weight_decay, momentum, dampening)
    _backend.active.sgd(param, grad, momentum_buffer, lr=lr, weight_decay=weight_decay,
                        momentum=momentum, dampening=dampening, nesterov=nesterov,
                        maximize=maximize, first_step=first_step)


def foreach_sgd_step_(params: Arrays, grads: Arrays, momentum_buffers: Arrays | None = None, *,
                      lr: float, momentum: float = 0.0, dampening: float = 0.0,
                      nesterov: bool = False, weight_decay: float = 0.0, maximize: bool = False,
                      first_step: bool = False) -> None:
    """:func:`sgd_step_` on every array of ``params`` (``momentum_buffers``: a list or None)."""
    _check_sgd(lr, weight_decay, momentum, dampening)
    _backend.active.sgd_multi(params, grads, momentum_buffers, lr=lr, weight_decay=weight_decay,
                              momentum=momentum, dampening=dampening, nesterov=nesterov,
                              maximize=maximize, first_step=first_step)


def momentum_step_(param: Array, grad: Array, velocity: Array, *, lr: float,
                   beta: float = 0.9) -> None:
    """The course's momentum: ``velocity = beta * velocity + (1 - beta) * grad``;
    ``param -= lr * velocity`` (velocity starts at zero)."""
    _check_lr_beta(lr, beta, UNIT_OPEN)
    _backend.active.momentum(param, grad, velocity, lr=lr, beta=beta)


def foreach_momentum_step_(params: Arrays, grads: Arrays, velocities: Arrays, *, lr: float,
                           beta: float = 0.9) -> None:
    """:func:`momentum_step_` on every array of ``params``."""
    _check_lr_beta(lr, beta, UNIT_OPEN)
    _backend.active.momentum_multi(params, grads, velocities, lr=lr, beta=beta)


def rmsprop_step_(param: Array, grad: Array, square_avg: Array, *, lr: float = 0.01,
                  beta: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                  momentum_buffer: Array | None = None, momentum: float = 0.0,
                  grad_avg: Array | None = None, maximize: bool = False,
                  eps_inside_sqrt: bool = False) -> None:
    """One step of torch.optim.RMSprop (``alpha = beta``).

    ``s = beta * s + (1 - beta) * g**2``; centered (``grad_avg`` given):
    ``grad_avg += (1 - beta) * (g - grad_avg)``, ``s - grad_avg**2`` under the root;
    ``avg = sqrt(s) + eps`` (or ``sqrt(s + eps)``, the course form, with ``eps_inside_sqrt``);
    ``buf = momentum * buf + g / avg; param -= lr * buf`` when ``momentum_buffer`` is given,
    else ``param -= lr * g / avg``.
    """
    _check_lr_beta(lr, beta, UNIT_OPEN, eps, weight_decay, momentum)
    _backend.active.rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, lr=lr,
                            alpha=beta, eps=eps, weight_decay=weight_decay, momentum=momentum,
                            maximize=maximize, eps_inside_sqrt=eps_inside_sqrt)


def foreach_rmsprop_step_(params: Arrays, grads: Arrays, square_avgs: Arrays, *, lr: float = 0.01,
                          beta: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                          momentum_buffers: Arrays | None = None, momentum: float = 0.0,
                          grad_avgs: Arrays | None = None, maximize: bool = False,
                          eps_inside_sqrt: bool = False) -> None:
    """:func:`rmsprop_step_` on every array of ``params``."""
    _check_lr_beta(lr, beta, UNIT_OPEN, eps, weight_decay, momentum)
    _backend.active.rmsprop_multi(params, grads, square_avgs, grad_avgs, momentum_buffers,
                                  lr=lr, alpha=beta, eps=eps, weight_decay=weight_decay,
                                  momentum=momentum, maximize=maximize,
                                  eps_inside_sqrt=eps_inside_sqrt)


def adagrad_step_(param: Array, grad: Array, state_sum: Array, step: int, *, lr: float = 0.01,
                  lr_decay: float = 0.0, weight_decay: float = 0.0, eps: float = 1e-10,
                  maximize: bool = False) -> None:
    """One step of torch.optim.Adagrad; ``step`` counts from 1.

    ``clr = lr / (1 + (step - 1) * lr_decay)``; ``state_sum += g**2``;
    ``param -= clr * g / (sqrt(state_sum) + eps)``.
    """
    _check_adagrad(step, lr, lr_decay, weight_decay, eps)
    _backend.active.adagrad(param, grad, state_sum, clr=lr / (1.0 + (step - 1) * lr_decay),
                            eps=eps, weight_decay=weight_decay, maximize=maximize)


def foreach_adagrad_step_(params: Arrays, grads: Arrays, state_sums: Arrays, step: int, *,
                          lr: float = 0.01, lr_decay: float = 0.0, weight_decay: float = 0.0,
                          eps: float = 1e-10, maximize: bool = False) -> None:
    """:func:`adagrad_step_` on every array of ``params`` (one shared ``step``)."""
    _check_adagrad(step, lr, lr_decay, weight_decay, eps)
    _backend.active.adagrad_multi(params, grads, state_sums,
                                  clr=lr / (1.0 + (step - 1) * lr_decay), eps=eps,
                                  weight_decay=weight_decay, maximize=maximize)


def _adam_scalars(step, lr, betas, eps, weight_decay):
    """beta1, beta2 and the bias corrections folded in float64: ``step_size`` and
    ``bias_correction2``."""
    beta1, beta2 = _check_adam_family(step, lr, betas, eps, weight_decay)
    return beta1, beta2, lr / (1.0 - beta1 ** step), 1.0 - beta2 ** step


def adam_step_(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array, step: int, *,
               lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
               weight_decay: float = 0.0, max_exp_avg_sq: Array | None = None,
               maximize: bool = False, decoupled_weight_decay: bool = False,
               eps_inside_sqrt: bool = False) -> None:
    """One step of torch.optim.Adam (AdamW with ``decoupled_weight_decay``); ``step`` counts
    from 1; bias correction always on; amsgrad when ``max_exp_avg_sq`` is given.

    ``m += (1 - beta1) * (g - m)``; ``v = beta2 * v + (1 - beta2) * g**2``;
    ``param -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)``, or with
    ``eps_inside_sqrt`` (the course form) ``... * m / sqrt(v / (1 - beta2**t) + eps)``.
    Decoupled decay first shrinks ``param *= 1 - lr * weight_decay``; otherwise
    ``g = grad + weight_decay * param``.
    """
    beta1, beta2, step_size, bias_correction2 = _adam_scalars(step, lr, betas, eps,
                                                              weight_decay)
    _backend.active.adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr=lr, beta1=beta1,
                         beta2=beta2, eps=eps, weight_decay=weight_decay, step_size=step_size,
                         bias_correction2=bias_correction2, decoupled=decoupled_weight_decay,
                         maximize=maximize, eps_inside_sqrt=eps_inside_sqrt)


def foreach_adam_step_(params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_avg_sqs: Arrays,
                       step: int, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                       eps: float = 1e-8, weight_decay: float = 0.0,
                       max_exp_avg_sqs: Arrays | None = None, maximize: bool = False,
                       decoupled_weight_decay: bool = False,
                       eps_inside_sqrt: bool = False) -> None:
    """:func:`adam_step_` on every array of ``params`` (one shared ``step``)."""
    beta1, beta2, step_size, bias_correction2 = _adam_scalars(step, lr, betas, eps,
                                                              weight_decay)
    _backend.active.adam_multi(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr=lr,
                               beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                               step_size=step_size, bias_correction2=bias_correction2,
                               decoupled=decoupled_weight_decay, maximize=maximize,
                               eps_inside_sqrt=eps_inside_sqrt)


def adamw_step_(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array, step: int, *,
                lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                weight_decay: float = 1e-2, max_exp_avg_sq: Array | None = None,
                maximize: bool = False) -> None:
    """One step of torch.optim.AdamW: :func:`adam_step_` with decoupled weight decay."""
    adam_step_(param, grad, exp_avg, exp_avg_sq, step, lr=lr, betas=betas, eps=eps,
               weight_decay=weight_decay, max_exp_avg_sq=max_exp_avg_sq, maximize=maximize,
               decoupled_weight_decay=True)


def adadelta_step_(param: Array, grad: Array, square_avg: Array, acc_delta: Array, *,
                   lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0.0,
                   maximize: bool = False) -> None:
    """One step of torch.optim.Adadelta.

    ``square_avg = rho * square_avg + (1 - rho) * g**2``;
    ``delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g``;
    ``acc_delta = rho * acc_delta + (1 - rho) * delta**2``; ``param -= lr * delta``.
    """
    _check_lr_beta(lr, rho, UNIT, eps, weight_decay, beta_name="rho")
    _backend.active.adadelta(param, grad, square_avg, acc_delta, lr=lr, rho=rho, eps=eps,
                             weight_decay=weight_decay, maximize=maximize)


def foreach_adadelta_step_(params: Arrays, grads: Arrays, square_avgs: Arrays, acc_deltas: Arrays,
                           *, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                           weight_decay: float = 0.0, maximize: bool = False) -> None:
    """:func:`adadelta_step_` on every array of ``params``."""
    _check_lr_beta(lr, rho, UNIT, eps, weight_decay, beta_name="rho")
    _backend.active.adadelta_multi(params, grads, square_avgs, acc_deltas, lr=lr, rho=rho,
                                   eps=eps, weight_decay=weight_decay, maximize=maximize)


def _adamax_scalars(step, lr, betas, eps, weight_decay):
    """beta1, beta2 and the bias-corrected learning rate ``clr``, folded in float64."""
    beta1, beta2 = _check_adam_family(step, lr, betas, eps, weight_decay)
    return beta1, beta2, lr / (1.0 - beta1 ** step)


def adamax_step_(param: Array, grad: Array, exp_avg: Array, exp_inf: Array, step: int, *,
                 lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, maximize: bool = False) -> None:
    """One step of torch.optim.Adamax; ``step`` counts from 1.

    ``m += (1 - beta1) * (g - m)``; ``u = max(beta2 * u, |g| + eps)``;
    ``param -= lr / (1 - beta1**t) * m / u``.
    """
    beta1, beta2, clr = _adamax_scalars(step, lr, betas, eps, weight_decay)
    _backend.active.adamax(param, grad, exp_avg, exp_inf, beta1=beta1, beta2=beta2, eps=eps,
                           weight_decay=weight_decay, clr=clr, maximize=maximize)


def foreach_adamax_step_(params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_infs: Arrays,
                         step: int, *, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                         eps: float = 1e-8, weight_decay: float = 0.0,
                         maximize: bool = False) -> None:
    """:func:`adamax_step_` on every array of ``params`` (one shared ``step``)."""
    beta1, beta2, clr = _adamax_scalars(step, lr, betas, eps, weight_decay)
    _backend.active.adamax_multi(params, grads, exp_avgs, exp_infs, beta1=beta1, beta2=beta2,
                                 eps=eps, weight_decay=weight_decay, clr=clr, maximize=maximize)


def nadam_momentum(step: int, beta1: float, momentum_decay: float) -> float:
    """NAdam's momentum schedule ``mu_t = beta1 * (1 - 0.5 * 0.96**(t * momentum_decay))``."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))


def _nadam_scalars(step, mu_product, lr, betas, eps, weight_decay, momentum_decay):
    """The new ``mu_product`` and the kernel's scalars (beta1, beta2, bias_correction2,
    grad_coef, avg_coef), folded in float64."""
    beta1, beta2 = _check_adam_family(step, lr, betas, eps, weight_decay)
    try:
        ok = momentum_decay >= 0.0 and 0.0 <= mu_product <= 1.0
    except _NOT_REAL:
        ok = False
    if not ok:
        check_reals(momentum_decay=(momentum_decay, NONNEG), mu_product=(mu_product, UNIT))
    mu = nadam_momentum(step, beta1, momentum_decay)
    mu_next = nadam_momentum(step + 1, beta1, momentum_decay)
    # torch keeps mu_product as a float32 scalar tensor (whatever the parameters' dtype) and
    # multiplies in float32; doing the same keeps float64 trajectories equal to torch's (the
    # product of two float32 values is exact in float64, so rounding it once is float32's *)
    mu_product = _to_f32(_to_f32(mu_product) * _to_f32(mu))
    grad_coef = -lr * (1.0 - mu) / (1.0 - mu_product)
    avg_coef = -lr * mu_next / (1.0 - mu_product * mu_next)
    return mu_product, beta1, beta2, 1.0 - beta2 ** step, grad_coef, avg_coef


def nadam_step_(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array, step: int,
                mu_product: float, *, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                eps: float = 1e-8, weight_decay: float = 0.0, momentum_decay: float = 4e-3,
                decoupled_weight_decay: bool = False, maximize: bool = False) -> float:
    """One step of torch.optim.NAdam; ``step`` counts from 1 and ``mu_product`` is the product
    of the momentum schedule up to the previous step (1.0 before the first). Returns the new
    product, which the caller keeps (torch's ``mu_product`` state).

    ``mu_t = beta1 * (1 - 0.5 * 0.96**(t * momentum_decay))``, ``P = mu_product * mu_t``;
    ``m += (1 - beta1) * (g - m)``; ``v = beta2 * v + (1 - beta2) * g**2``;
    ``d = sqrt(v / (1 - beta2**t)) + eps``;
    ``param -= lr * (1 - mu_t) / (1 - P) * g / d + lr * mu_{t+1} / (1 - P * mu_{t+1}) * m / d``.
    """
    mu_product, beta1, beta2, bias_correction2, grad_coef, avg_coef = _nadam_scalars(
        step, mu_product, lr, betas, eps, weight_decay, momentum_decay)
    _backend.active.nadam(param, grad, exp_avg, exp_avg_sq, lr=lr, beta1=beta1, beta2=beta2,
                          eps=eps, weight_decay=weight_decay, bias_correction2=bias_correction2,
                          grad_coef=grad_coef, avg_coef=avg_coef,
                          decoupled=decoupled_weight_decay, maximize=maximize)
    return mu_product


def foreach_nadam_step_(params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_avg_sqs: Arrays,
                        step: int, mu_product: float, *, lr: float = 2e-3,
                        betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                        weight_decay: float = 0.0, momentum_decay: float = 4e-3,
                        decoupled_weight_decay: bool = False, maximize: bool = False) -> float:
    """:func:`nadam_step_` on every array of ``params`` (one shared ``step`` and product)."""
    mu_product, beta1, beta2, bias_correction2, grad_coef, avg_coef = _nadam_scalars(
        step, mu_product, lr, betas, eps, weight_decay, momentum_decay)
    _backend.active.nadam_multi(params, grads, exp_avgs, exp_avg_sqs, lr=lr, beta1=beta1,
                                beta2=beta2, eps=eps, weight_decay=weight_decay,
                                bias_correction2=bias_correction2, grad_coef=grad_coef,
                                avg_coef=avg_coef, decoupled=decoupled_weight_decay,
                                maximize=maximize)
    return mu_product


def _radam_scalars(step, lr, betas, eps, weight_decay):
    """beta1, beta2, the folded ``step_size`` and whether the step is ``rectified``."""
    beta1, beta2 = _check_adam_family(step, lr, betas, eps, weight_decay)
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2 ** step / bias_correction2
    rectified = rho_t > 5.0
    step_size = lr / bias_correction1
    if rectified:
        rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)) ** 0.5
        step_size = step_size * bias_correction2 ** 0.5 * rect
    return beta1, beta2, step_size, rectified


def radam_step_(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array, step: int, *,
                lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
                maximize: bool = False) -> None:
    """One step of torch.optim.RAdam; ``step`` counts from 1.

    ``rho_inf = 2 / (1 - beta2) - 1``, ``rho_t = rho_inf - 2 t beta2**t / (1 - beta2**t)``;
    while ``rho_t <= 5`` the step is SGD with momentum, ``param -= lr / (1 - beta1**t) * m``;
    after it ``param -= lr / (1 - beta1**t) * rect_t * sqrt(1 - beta2**t) * m / (sqrt(v) + eps)``
    with ``rect_t = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))``.
    """
    beta1, beta2, step_size, rectified = _radam_scalars(step, lr, betas, eps, weight_decay)
    _backend.active.radam(param, grad, exp_avg, exp_avg_sq, lr=lr, beta1=beta1, beta2=beta2,
                          eps=eps, weight_decay=weight_decay, step_size=step_size,
                          rectified=rectified, decoupled=decoupled_weight_decay,
                          maximize=maximize)


def foreach_radam_step_(params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_avg_sqs: Arrays,
                        step: int, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                        eps: float = 1e-8, weight_decay: float = 0.0,
                        decoupled_weight_decay: bool = False, maximize: bool = False) -> None:
    """:func:`radam_step_` on every array of ``params`` (one shared ``step``)."""
    beta1, beta2, step_size, rectified = _radam_scalars(step, lr, betas, eps, weight_decay)
    _backend.active.radam_multi(params, grads, exp_avgs, exp_avg_sqs, lr=lr, beta1=beta1,
                                beta2=beta2, eps=eps, weight_decay=weight_decay,
                                step_size=step_size, rectified=rectified,
                                decoupled=decoupled_weight_decay, maximize=maximize)


def _check_lion(lr, betas, weight_decay):
    """Check Lion's scalars; return ``(beta1, beta2)``."""
    try:
        beta1, beta2 = betas
        if lr >= 0.0 and weight_decay >= 0.0 and 0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0:
            return beta1, beta2
    except _NOT_REAL:
        pass
    check_reals(lr=(lr, NONNEG), betas=(betas, BETAS), weight_decay=(weight_decay, NONNEG))
    return betas[0], betas[1]


def lion_step_(param: Array, grad: Array, exp_avg: Array, *, lr: float = 1e-4,
               betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 1e-3,
               maximize: bool = False) -> None:
    """One step of Lion (Chen et al. 2023), as ``optax.lion`` (its defaults too).

    ``update = sign((1 - beta1) * g + beta1 * exp_avg) + weight_decay * param``;
    ``exp_avg = (1 - beta2) * g + beta2 * exp_avg``; ``param -= lr * update``, with
    ``g = -grad`` if ``maximize``. ``sign`` is 0 at zero and NaN at NaN; the decay term is
    always added (an infinite param becomes NaN, as in optax).
    """
    beta1, beta2 = _check_lion(lr, betas, weight_decay)
    _backend.active.lion(param, grad, exp_avg, lr=lr, beta1=beta1, beta2=beta2,
                         weight_decay=weight_decay, maximize=maximize)


def foreach_lion_step_(params: Arrays, grads: Arrays, exp_avgs: Arrays, *, lr: float = 1e-4,
                       betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 1e-3,
                       maximize: bool = False) -> None:
    """:func:`lion_step_` on every array of ``params``."""
    beta1, beta2 = _check_lion(lr, betas, weight_decay)
    _backend.active.lion_multi(params, grads, exp_avgs, lr=lr, beta1=beta1, beta2=beta2,
                               weight_decay=weight_decay, maximize=maximize)


__all__ = ["ewa_", "sgd_step_", "momentum_step_", "rmsprop_step_", "adagrad_step_",
           "adam_step_", "adamw_step_", "foreach_ewa_", "foreach_sgd_step_",
           "foreach_momentum_step_", "foreach_rmsprop_step_", "foreach_adagrad_step_",
           "foreach_adam_step_", "adadelta_step_", "adamax_step_", "nadam_step_",
           "radam_step_", "foreach_adadelta_step_", "foreach_adamax_step_",
           "foreach_nadam_step_", "foreach_radam_step_", "lion_step_", "foreach_lion_step_"]
