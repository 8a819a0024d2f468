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
"""
from . import _backend


def ewa_(avg, x, beta):
    """Fold ``x`` into the running average in place: ``avg = beta * avg + (1 - beta) * x``."""
    _backend.active.ewa(avg, x, beta)


def foreach_ewa_(avgs, xs, beta):
    """:func:`ewa_` on every pair of ``avgs`` and ``xs``."""
    _backend.active.ewa_multi(avgs, xs, beta)


def sgd_step_(param, grad, momentum_buffer=None, *, lr, momentum=0.0, dampening=0.0,
              nesterov=False, weight_decay=0.0, maximize=False, first_step=False):
    """One step of torch.optim.SGD on ``param`` (and ``momentum_buffer`` when momentum is used).

    ``g = ±grad + weight_decay * param``; with a buffer: ``buf = g`` if ``first_step`` else
    ``momentum * buf + (1 - dampening) * g``, then ``g = g + momentum * buf`` (Nesterov) or
    ``g = buf``; finally ``param -= lr * g``. Pass ``momentum_buffer=None`` for plain SGD.
    """
    _backend.active.sgd(param, grad, momentum_buffer, lr, weight_decay, momentum, dampening,
                        nesterov, maximize, first_step)


def foreach_sgd_step_(params, grads, momentum_buffers=None, *, lr, momentum=0.0,
                      dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False,
                      first_step=False):
    """:func:`sgd_step_` on every array of ``params`` (``momentum_buffers``: a list or None)."""
    _backend.active.sgd_multi(params, grads, momentum_buffers, lr, weight_decay, momentum,
                              dampening, nesterov, maximize, first_step)


def momentum_step_(param, grad, velocity, *, lr, beta=0.9):
    """The course's momentum: ``velocity = beta * velocity + (1 - beta) * grad``;
    ``param -= lr * velocity`` (velocity starts at zero)."""
    _backend.active.momentum(param, grad, velocity, lr, beta)


def foreach_momentum_step_(params, grads, velocities, *, lr, beta=0.9):
    """:func:`momentum_step_` on every array of ``params``."""
    _backend.active.momentum_multi(params, grads, velocities, lr, beta)


def rmsprop_step_(param, grad, square_avg, *, lr=0.01, beta=0.99, eps=1e-8, weight_decay=0.0,
                  momentum_buffer=None, momentum=0.0, grad_avg=None, maximize=False,
                  eps_inside_sqrt=False):
    """One step of torch.optim.RMSprop (``alpha = beta``).

    ``s = beta * s + (1 - beta) * g**2``; centered (``grad_avg`` given):
    ``grad_avg += (1 - beta) * (g - grad_avg)``, ``s - grad_avg**2`` under the root;
    ``avg = sqrt(s) + eps`` (or ``sqrt(s + eps)``, the course form, with ``eps_inside_sqrt``);
    ``buf = momentum * buf + g / avg; param -= lr * buf`` when ``momentum_buffer`` is given,
    else ``param -= lr * g / avg``.
    """
    _backend.active.rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, lr, beta, eps,
                            weight_decay, momentum, maximize, eps_inside_sqrt)


def foreach_rmsprop_step_(params, grads, square_avgs, *, lr=0.01, beta=0.99, eps=1e-8,
                          weight_decay=0.0, momentum_buffers=None, momentum=0.0,
                          grad_avgs=None, maximize=False, eps_inside_sqrt=False):
    """:func:`rmsprop_step_` on every array of ``params``."""
    _backend.active.rmsprop_multi(params, grads, square_avgs, grad_avgs, momentum_buffers, lr,
                                  beta, eps, weight_decay, momentum, maximize, eps_inside_sqrt)


def adagrad_step_(param, grad, state_sum, step, *, lr=0.01, lr_decay=0.0, weight_decay=0.0,
                  eps=1e-10, maximize=False):
    """One step of torch.optim.Adagrad; ``step`` counts from 1.

    ``clr = lr / (1 + (step - 1) * lr_decay)``; ``state_sum += g**2``;
    ``param -= clr * g / (sqrt(state_sum) + eps)``.
    """
    _backend.active.adagrad(param, grad, state_sum, lr / (1.0 + (step - 1) * lr_decay), eps,
                            weight_decay, maximize)


def foreach_adagrad_step_(params, grads, state_sums, step, *, lr=0.01, lr_decay=0.0,
                          weight_decay=0.0, eps=1e-10, maximize=False):
    """:func:`adagrad_step_` on every array of ``params`` (one shared ``step``)."""
    _backend.active.adagrad_multi(params, grads, state_sums,
                                  lr / (1.0 + (step - 1) * lr_decay), eps, weight_decay,
                                  maximize)


def _adam_scalars(step, lr, betas, eps, weight_decay, decoupled, maximize, eps_inside_sqrt):
    """The backend kernel's scalars: bias corrections folded in float64."""
    beta1, beta2 = betas
    return (lr, beta1, beta2, eps, weight_decay, lr / (1.0 - beta1 ** step),
            1.0 - beta2 ** step, decoupled, maximize, eps_inside_sqrt)


def adam_step_(param, grad, exp_avg, exp_avg_sq, step, *, lr=1e-3, betas=(0.9, 0.999),
               eps=1e-8, weight_decay=0.0, max_exp_avg_sq=None, maximize=False,
               decoupled_weight_decay=False, eps_inside_sqrt=False):
    """One step of torch.optim.Adam (AdamW with ``decoupled_weight_decay``); ``step`` counts
    from 1; bias correction always on; amsgrad when ``max_exp_avg_sq`` is given.

    ``m += (1 - beta1) * (g - m)``; ``v = beta2 * v + (1 - beta2) * g**2``;
    ``param -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)``, or with
    ``eps_inside_sqrt`` (the course form) ``... * m / sqrt(v / (1 - beta2**t) + eps)``.
    Decoupled decay first shrinks ``param *= 1 - lr * weight_decay``; otherwise
    ``g = grad + weight_decay * param``.
    """
    _backend.active.adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq,
                         *_adam_scalars(step, lr, betas, eps, weight_decay,
                                        decoupled_weight_decay, maximize, eps_inside_sqrt))


def foreach_adam_step_(params, grads, exp_avgs, exp_avg_sqs, step, *, lr=1e-3,
                       betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, max_exp_avg_sqs=None,
                       maximize=False, decoupled_weight_decay=False, eps_inside_sqrt=False):
    """:func:`adam_step_` on every array of ``params`` (one shared ``step``)."""
    _backend.active.adam_multi(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                               *_adam_scalars(step, lr, betas, eps, weight_decay,
                                              decoupled_weight_decay, maximize,
                                              eps_inside_sqrt))


def adamw_step_(param, grad, exp_avg, exp_avg_sq, step, *, lr=1e-3, betas=(0.9, 0.999),
                eps=1e-8, weight_decay=1e-2, max_exp_avg_sq=None, maximize=False):
    """One step of torch.optim.AdamW: :func:`adam_step_` with decoupled weight decay."""
    adam_step_(param, grad, exp_avg, exp_avg_sq, step, lr=lr, betas=betas, eps=eps,
               weight_decay=weight_decay, max_exp_avg_sq=max_exp_avg_sq, maximize=maximize,
               decoupled_weight_decay=True)


__all__ = ["ewa_", "sgd_step_", "momentum_step_", "rmsprop_step_", "adagrad_step_",
           "adam_step_", "adamw_step_", "foreach_ewa_", "foreach_sgd_step_",
           "foreach_momentum_step_", "foreach_rmsprop_step_", "foreach_adagrad_step_",
           "foreach_adam_step_"]
