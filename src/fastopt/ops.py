"""Functional in-place kernels: one optimizer step on one array, on the active backend.

Each function folds its per-step scalars once in float64 (bias corrections, the decayed
learning rate) and calls the backend kernel of the same name, which validates the arrays
(shape and dtype of ``param``; state arrays writeable) before it writes anything. Arrays may
be float32 or float64, of any shape and layout, including 0-d and empty. They return None.

These are what the optimizer classes call, so each formula exists once per backend.
"""

from . import _backend


def ewa_(avg, x, beta):
    """Fold ``x`` into the running average in place: ``avg = beta * avg + (1 - beta) * x``."""
    _backend.active.ewa(avg, x, beta)


def sgd_step_(param, grad, momentum_buffer=None, *, lr, momentum=0.0, dampening=0.0,
              nesterov=False, weight_decay=0.0, maximize=False, first_step=False):
    """One step of torch.optim.SGD on ``param`` (and ``momentum_buffer`` when momentum is used).

    ``g = ±grad + weight_decay * param``; with a buffer: ``buf = g`` if ``first_step`` else
    ``momentum * buf + (1 - dampening) * g``, then ``g = g + momentum * buf`` (Nesterov) or
    ``g = buf``; finally ``param -= lr * g``. Pass ``momentum_buffer=None`` for plain SGD.
    """
    _backend.active.sgd(param, grad, momentum_buffer, lr, weight_decay, momentum, dampening,
                        nesterov, maximize, first_step)


def momentum_step_(param, grad, velocity, *, lr, beta=0.9):
    """The course's momentum: ``velocity = beta * velocity + (1 - beta) * grad``;
    ``param -= lr * velocity`` (velocity starts at zero)."""
    _backend.active.momentum(param, grad, velocity, lr, beta)


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


def adagrad_step_(param, grad, state_sum, step, *, lr=0.01, lr_decay=0.0, weight_decay=0.0,
                  eps=1e-10, maximize=False):
    """One step of torch.optim.Adagrad; ``step`` counts from 1.

    ``clr = lr / (1 + (step - 1) * lr_decay)``; ``state_sum += g**2``;
    ``param -= clr * g / (sqrt(state_sum) + eps)``.
    """
    clr = lr / (1.0 + (step - 1) * lr_decay)
    _backend.active.adagrad(param, grad, state_sum, clr, eps, weight_decay, maximize)


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
    beta1, beta2 = betas
    _backend.active.adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2,
                         eps, weight_decay, lr / (1.0 - beta1 ** step), 1.0 - beta2 ** step,
                         decoupled_weight_decay, maximize, eps_inside_sqrt)


def adamw_step_(param, grad, exp_avg, exp_avg_sq, step, *, lr=1e-3, betas=(0.9, 0.999),
                eps=1e-8, weight_decay=1e-2, max_exp_avg_sq=None, maximize=False):
    """One step of torch.optim.AdamW: :func:`adam_step_` with decoupled weight decay."""
    beta1, beta2 = betas
    _backend.active.adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2,
                         eps, weight_decay, lr / (1.0 - beta1 ** step), 1.0 - beta2 ** step,
                         True, maximize, False)


__all__ = ["ewa_", "sgd_step_", "momentum_step_", "rmsprop_step_", "adagrad_step_",
           "adam_step_", "adamw_step_"]
