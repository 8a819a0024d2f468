"""Functional in-place kernels: one optimizer step on one array, or on a list of arrays in one
call (``foreach_*``, one call into compiled code for a whole parameter group), on the active
backend.

Each function folds its per-step scalars once in float64 (bias corrections, the decayed
learning rate) and calls the backend kernel of the same name (``<name>_multi`` for lists),
which validates every array (shape and dtype of its ``param``; state arrays writeable) before it
writes anything. Arrays may be float32 or float64, of any shape and layout, including 0-d and
empty; a list may mix them. An updated array (not the grad) needs every element at its own
address: one with a zero stride or overlapping ``as_strided`` windows raises ValueError. The
results of ``foreach_*`` are bit-identical to calling the single-array function on each
array. They return None, but for NAdam's, which return the new ``mu_product`` (the next call
takes it).

These are what the optimizer classes call, so each formula exists once per backend.

Every scalar is checked before any array is written (a real number in torch.optim's range,
else a ``TypeError``/``ValueError`` naming it; an option is True or False, Python's or
NumPy's, else a ``TypeError`` naming it), so a refused call writes nothing.
"""
import inspect
import struct
from collections.abc import Sequence

import numpy as np

from . import _backend
from ._hyper import (BETAS, NONNEG, STEP, UNIT, UNIT_OPEN, as_real, check_betas, check_flag,
                     check_reals)
from ._multi import _REFUSED, _calls, _each_part, _interrupted_kernel, _kernel_began  # noqa: F401

Array = np.ndarray               # float32 or float64, any shape and layout
Arrays = Sequence[np.ndarray]    # a list or tuple of them

_F32 = struct.Struct("f")


def _to_f32(x):
    """x rounded to the nearest float32 (as a Python float); cheaper than a NumPy scalar."""
    return _F32.unpack(_F32.pack(x))[0]


# Scalar checks: the chained comparisons are the whole cost of a good call (a failing
# comparison, including NaN's and None's, hands over to check_reals for the named error).
# None or a str (TypeError), an array (ValueError), an int step past the float range where it
# is folded (OverflowError)
_NOT_REAL = (TypeError, ValueError, OverflowError)

# What the comparisons let through (a size-1 array, a NumPy complex, a bool; an option that is
# not True or False) is refused where it costs nothing: where a scalar is folded here, by the
# type test that replaces float() (``x if type(x) is float else as_real(...)``: as_real raises
# TypeError for a non-real, caught above), and where a scalar or option goes to the backend as
# it is, by the backend, which takes a Python float, True or False as it is and refuses
# anything else (fastopt._hyper.as_real/as_flag; in C for the compiled kernels). That
# TypeError names the kernel's argument; each function catches it and _refuse raises the
# error naming its own (the backend refuses before it touches an array).
_SIGNATURES = {}    # fastopt.ops function -> its (reals, betas, flags) arguments


def _refuse(fn, args):
    """After the backend raised an error in ``fn`` (a fastopt.ops function; ``args`` its
    locals): raise the error the thorough checks raise for the first argument of ``fn`` that
    is not a real number a float holds (annotated float or int), a pair of them (tuple) or
    True/False (bool), naming it; return when all are (the error was about an array: the
    caller re-raises it)."""
    spec = _SIGNATURES.get(fn)
    if spec is None:
        reals, betas, flags = [], [], []
        for name, p in inspect.signature(fn).parameters.items():
            if p.annotation in (float, int):
                reals.append(name)
            elif p.annotation is bool:
                flags.append(name)
            elif "tuple" in str(p.annotation):
                betas.append(name)
        spec = _SIGNATURES[fn] = reals, betas, flags
    reals, betas, flags = spec
    try:
        for name in reals:
            as_real(name, args[name])       # (its type, and within the float range)
        for name in betas:
            check_betas(name, args[name])
        for name in flags:
            check_flag(name, args[name])
    except (TypeError, ValueError) as exc:
        raise exc from None


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


def _refuse_momentum_without_buffer(momentum, name, hint):
    """ValueError naming ``name``, for a (checked) ``momentum`` other than 0 that came without
    its buffer(s): the kernels apply momentum only with a buffer, so the step was silently
    the one without momentum (torch's functional form makes the buffer then). The callers
    test for that case themselves (a call here cost the smallest steps ~20%). A momentum
    that is no real number (True: bool passes the callers' ``>= 0``) is the TypeError it is
    with a buffer."""
    check_reals(momentum=(momentum, NONNEG))
    raise ValueError(f"momentum={momentum!r} needs {name} (got None): without one the "
                     f"momentum would be ignored; pass {hint}, or momentum=0")


def _check_lr_beta(lr, beta, beta_bounds, eps=0.0, weight_decay=0.0, momentum=0.0,
                   beta_name="beta"):
    """Momentum, RMSprop, Adadelta (``beta_bounds``: [0, 1), [0, 1] or, RMSprop's alpha as
    torch bounds it, [0, inf])."""
    try:
        if (lr >= 0.0 and eps >= 0.0 and weight_decay >= 0.0 and momentum >= 0.0
                and 0.0 <= beta and (beta < 1.0 or beta_bounds is NONNEG
                                     or beta_bounds is UNIT and beta == 1.0)):
            return
    except _NOT_REAL:
        pass
    check_reals(lr=(lr, NONNEG), **{beta_name: (beta, beta_bounds)}, eps=(eps, NONNEG),
                weight_decay=(weight_decay, NONNEG), momentum=(momentum, NONNEG))


def _adagrad_clr(step, lr, lr_decay, weight_decay, eps):
    """Check Adagrad's scalars; return the decayed learning rate ``clr``, folded in float64
    (the step as in :func:`_adam_scalars`)."""
    if type(step) is not int and type(step) is not float:     # (fastopt.torch's: float)
        step = as_real("step", step)
    try:
        if step >= 1 and lr >= 0.0 and lr_decay >= 0.0 and weight_decay >= 0.0 and eps >= 0.0:
            return ((lr if type(lr) is float else as_real("lr", lr))
                    / (1.0 + (step - 1) * (lr_decay if type(lr_decay) is float
                                           else as_real("lr_decay", lr_decay))))
    except _NOT_REAL:
        pass
    check_reals(step=(step, STEP), lr=(lr, NONNEG), lr_decay=(lr_decay, NONNEG),
                weight_decay=(weight_decay, NONNEG), eps=(eps, NONNEG))
    # (as_real: an int past the float range, which the checks take, is a ValueError naming it)
    return as_real("lr", lr) / (1.0 + (as_real("step", step) - 1)
                                * as_real("lr_decay", lr_decay))


def _adam_scalars(step, lr, betas, eps, weight_decay):
    """Check the scalars the Adam family shares; return beta1, beta2 and the bias corrections
    folded in float64: ``step_size = lr / (1 - beta1**step)`` and
    ``bias_correction2 = 1 - beta2**step`` (as Python floats: NumPy float32 scalars would
    fold in float32). A step that is not an int is taken as a Python float (as_real, which
    refuses a bool: True passed ``step >= 1`` as a count of 1), so that a NumPy float32 or
    float16 step does not fold them in its precision either."""
    if type(step) is not int and type(step) is not float:     # (fastopt.torch's: float)
        step = as_real("step", step)
    try:
        # (a set unpacks too, in no set order: it goes to check_reals, which refuses it)
        beta1, beta2 = betas if type(betas) is tuple or type(betas) is list else ()
        if (step >= 1 and lr >= 0.0 and eps >= 0.0 and weight_decay >= 0.0
                and 0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            if type(beta1) is not float:
                beta1 = as_real("beta1", beta1)
            if type(beta2) is not float:
                beta2 = as_real("beta2", beta2)
            return (beta1, beta2, (lr if type(lr) is float else as_real("lr", lr))
                    / (1.0 - beta1 ** step), 1.0 - beta2 ** step)
    except _NOT_REAL:
        pass
    check_reals(step=(step, STEP), lr=(lr, NONNEG), betas=(betas, BETAS), eps=(eps, NONNEG),
                weight_decay=(weight_decay, NONNEG))
    # (as_real: an int past the float range, which the checks take, is a ValueError naming it)
    beta1, beta2, step = float(betas[0]), float(betas[1]), as_real("step", step)
    return beta1, beta2, as_real("lr", lr) / (1.0 - beta1 ** step), 1.0 - beta2 ** step


def ewa_(avg: Array, x: Array, beta: float) -> None:
    """Fold ``x`` into a running average in place.

    ``avg = beta * avg + (1 - beta) * x``, in ``avg``'s dtype.

    Parameters
    ----------
    avg : ndarray
        The running average, float32 or float64, any shape and layout; updated in place.
    x : ndarray
        The new sample, of ``avg``'s shape and dtype; only read.
    beta : float
        Weight of the old average, in [0, 1].

    Returns
    -------
    None

    Raises
    ------
    TypeError, ValueError
        As :func:`sgd_step_`, naming ``avg``, ``x`` or ``beta``; nothing is written then.
    """
    _check_ewa(beta)
    kernel = _backend.active.ewa
    try:
        kernel(avg, x, beta=beta)
        _calls.returned = True      # (see _kernel_began)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(ewa_, locals())
        raise


def foreach_ewa_(avgs: Arrays, xs: Arrays, beta: float) -> None:
    """:func:`ewa_` on every pair of ``avgs`` and ``xs``, in one call into the backend.

    Parameters
    ----------
    avgs, xs : list or tuple of ndarray
        The running averages (updated in place) and the new samples, pairwise of one shape and
        dtype.
    beta : float
        Weight of the old averages, in [0, 1].

    Returns
    -------
    None

    Raises
    ------
    TypeError, ValueError
        As the single-array function, naming the list and index (``grads[3]``); also a list
        argument that is not a list or tuple, or lists of different lengths. Overlap is checked
        across the whole call (grads may share memory with each other). A call that raises
        writes nothing.
    """
    _check_ewa(beta)
    kernel = _backend.active.ewa_multi
    try:
        kernel(avgs, xs, beta=beta)
        _calls.returned = True      # (see _kernel_began)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(foreach_ewa_, locals())
        raise


def sgd_step_(param: Array, grad: Array, momentum_buffer: Array | None = None, *, lr: float,
              momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
              weight_decay: float = 0.0, maximize: bool = False, first_step: bool = False) -> None:
    """One step of torch.optim.SGD on ``param``, in place.

    With ``g = -grad`` if ``maximize`` else ``grad``::

        g = g + weight_decay * param
        buf = g                                          (first step)
        buf = momentum * buf + (1 - dampening) * g       (later steps)
        g = g + momentum * buf if nesterov else buf      (only with a buffer)
        param = param - lr * g

    Parameters
    ----------
    param : ndarray
        The parameter, float32 or float64, any shape and layout; updated in place.
    grad : ndarray
        Its gradient, of ``param``'s shape and dtype; only read (it may be ``param`` itself).
    momentum_buffer : ndarray or None, optional
        torch's ``momentum_buffer`` state (updated in place); None for plain SGD (then
        ``momentum`` must be 0).
    lr : float
        Learning rate, >= 0.
    momentum : float, default 0.0
        Momentum factor, >= 0.
    dampening : float, default 0.0
        Dampening of the momentum, >= 0.
    nesterov : bool, default False
        Use Nesterov momentum.
    weight_decay : float, default 0.0
        L2 penalty, >= 0.
    maximize : bool, default False
        Ascend the objective instead of descending.
    first_step : bool, default False
        This is the buffer's first step: it starts as ``g`` (torch's rule).

    Returns
    -------
    None

    Raises
    ------
    TypeError
        An array that is not a plain float32/float64 ``numpy.ndarray`` or not of ``param``'s
        dtype, or a scalar that is not a real number (each named).
    ValueError
        An array not of ``param``'s shape, a read-only array that is updated, two arrays that
        share memory (but a grad that is its param's very elements, ``grad is param`` or
        ``param[:]``; views that share no element, such as a matrix's column blocks, are
        apart), or a scalar out of range (each named). A call that raises writes nothing.
    """
    _check_sgd(lr, weight_decay, momentum, dampening)
    if momentum_buffer is None and momentum != 0:
        _refuse_momentum_without_buffer(
            momentum, "a momentum_buffer",
            "one (np.empty_like(param) with first_step=True on its first step)")
    try:
        _backend.active.sgd(param, grad, momentum_buffer, lr=lr, weight_decay=weight_decay,
                            momentum=momentum, dampening=dampening, nesterov=nesterov,
                            maximize=maximize, first_step=first_step)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(sgd_step_, locals())
        raise


def foreach_sgd_step_(params: Arrays, grads: Arrays, momentum_buffers: Arrays | None = None, *,
                      lr: float, momentum: float = 0.0, dampening: float = 0.0,
                      nesterov: bool = False, weight_decay: float = 0.0, maximize: bool = False,
                      first_step: bool = False) -> None:
    """:func:`sgd_step_` on every array of ``params``: one call into the backend for a whole
    list, bit-identical to calling :func:`sgd_step_` on each array.

    Parameters
    ----------
    params, grads : list or tuple of ndarray
        The parameters (updated in place) and their gradients, pairwise of one shape and dtype;
        arrays of different shapes and dtypes may be mixed.
    momentum_buffers : list or tuple of ndarray, or None, optional
        One buffer per parameter, or None for plain SGD; a None buffer (the whole list or an
        entry) only with ``momentum`` 0.
    lr, momentum, dampening, nesterov, weight_decay, maximize, first_step
        As in :func:`sgd_step_`; shared by every array.

    Returns
    -------
    None

    Raises
    ------
    TypeError, ValueError
        As the single-array function, naming the list and index (``grads[3]``); also a list
        argument that is not a list or tuple, or lists of different lengths. Overlap is checked
        across the whole call (grads may share memory with each other). A call that raises
        writes nothing.
    """
    _check_sgd(lr, weight_decay, momentum, dampening)
    if momentum_buffers is None and momentum != 0:
        _refuse_momentum_without_buffer(
            momentum, "momentum_buffers",
            "one buffer per parameter (np.empty_like(param) with first_step=True on their "
            "first step)")
    kernel = _backend.active.sgd_multi
    try:
        kernel(params, grads, momentum_buffers, lr=lr, weight_decay=weight_decay,
               momentum=momentum, dampening=dampening, nesterov=nesterov, maximize=maximize,
               first_step=first_step)
        _calls.returned = True      # (see _kernel_began)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(foreach_sgd_step_, locals())
        raise


def momentum_step_(param: Array, grad: Array, velocity: Array, *, lr: float,
                   beta: float = 0.9) -> None:
    """One step of the course's momentum on ``param``, in place.

    ``velocity = beta * velocity + (1 - beta) * grad``; ``param = param - lr * velocity``
    (the velocity starts at zero).

    Parameters
    ----------
    param : ndarray
        The parameter, float32 or float64, any shape and layout; updated in place.
    grad : ndarray
        Its gradient, of ``param``'s shape and dtype; only read (it may be ``param`` itself).
    velocity : ndarray
        The velocity (updated in place).
    lr : float
        Learning rate, >= 0.
    beta : float, default 0.9
        Momentum, in [0, 1).

    Returns
    -------
    None

    Raises
    ------
    TypeError
        An array that is not a plain float32/float64 ``numpy.ndarray`` or not of ``param``'s
        dtype, or a scalar that is not a real number (each named).
    ValueError
        An array not of ``param``'s shape, a read-only array that is updated, two arrays that
        share memory (but a grad that is its param's very elements, ``grad is param`` or
        ``param[:]``; views that share no element, such as a matrix's column blocks, are
        apart), or a scalar out of range (each named). A call that raises writes nothing.
    """
    _check_lr_beta(lr, beta, UNIT_OPEN)
    try:
        _backend.active.momentum(param, grad, velocity, lr=lr, beta=beta)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(momentum_step_, locals())
        raise


def foreach_momentum_step_(params: Arrays, grads: Arrays, velocities: Arrays, *, lr: float,
                           beta: float = 0.9) -> None:
    """:func:`momentum_step_` on every array of ``params``: one call into the backend for a whole
    list, bit-identical to calling :func:`momentum_step_` on each array.

    Parameters
    ----------
    params, grads : list or tuple of ndarray
        The parameters (updated in place) and their gradients, pairwise of one shape and dtype;
        arrays of different shapes and dtypes may be mixed.
    velocities : list or tuple of ndarray
        One velocity per parameter.
    lr, beta
        As in :func:`momentum_step_`; shared by every array.

    Returns
    -------
    None

    Raises
    ------
    TypeError, ValueError
        As the single-array function, naming the list and index (``grads[3]``); also a list
        argument that is not a list or tuple, or lists of different lengths. Overlap is checked
        across the whole call (grads may share memory with each other). A call that raises
        writes nothing.
    """
    _check_lr_beta(lr, beta, UNIT_OPEN)
    kernel = _backend.active.momentum_multi
    try:
        kernel(params, grads, velocities, lr=lr, beta=beta)
        _calls.returned = True      # (see _kernel_began)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(foreach_momentum_step_, locals())
        raise


def rmsprop_step_(param: Array, grad: Array, square_avg: Array, *, lr: float = 0.01,
                  beta: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                  momentum_buffer: Array | None = None, momentum: float = 0.0,
                  grad_avg: Array | None = None, maximize: bool = False,
                  eps_inside_sqrt: bool = False) -> None:
    """One step of torch.optim.RMSprop on ``param``, in place (``alpha`` is ``beta``).

    With ``g = -grad`` if ``maximize`` else ``grad``, ``g = g + weight_decay * param``::

        square_avg = beta * square_avg + (1 - beta) * g * g
        grad_avg = grad_avg + (1 - beta) * (g - grad_avg)       (centered)
        s = square_avg - grad_avg * grad_avg if centered else square_avg
        avg = sqrt(s) + eps               (or sqrt(s + eps) with eps_inside_sqrt)
        buf = momentum * buf + g / avg; param = param - lr * buf   (with a buffer)
        param = param - (lr * g) / avg                             (without)

    Parameters
    ----------
    param : ndarray
        The parameter, float32 or float64, any shape and layout; updated in place.
    grad : ndarray
        Its gradient, of ``param``'s shape and dtype; only read (it may be ``param`` itself).
    square_avg : ndarray
        torch's ``square_avg`` state (updated in place).
    lr : float, default 0.01
        Learning rate, >= 0.
    beta : float, default 0.99
        Smoothing constant (torch's ``alpha``), >= 0 as torch bounds it (from 1 on, the
        average stops following the grads).
    eps : float, default 1e-8
        Added to the denominator, >= 0.
    weight_decay : float, default 0.0
        L2 penalty, >= 0.
    momentum_buffer : ndarray or None, optional
        torch's ``momentum_buffer`` (updated in place), or None without momentum.
    momentum : float, default 0.0
        Momentum factor, >= 0 (used with ``momentum_buffer``; 0 without one).
    grad_avg : ndarray or None, optional
        torch's ``grad_avg`` for the centered variant (updated in place), or None.
    maximize : bool, default False
        Ascend the objective instead of descending.
    eps_inside_sqrt : bool, default False
        The denominator ``sqrt(s + eps)`` (eps inside the root, as TensorFlow's RMSProp)
        instead of torch's ``sqrt(s) + eps`` (the default, as the course's lecture slide).

    Returns
    -------
    None

    Raises
    ------
    TypeError
        An array that is not a plain float32/float64 ``numpy.ndarray`` or not of ``param``'s
        dtype, or a scalar that is not a real number (each named).
    ValueError
        An array not of ``param``'s shape, a read-only array that is updated, two arrays that
        share memory (but a grad that is its param's very elements, ``grad is param`` or
        ``param[:]``; views that share no element, such as a matrix's column blocks, are
        apart), or a scalar out of range (each named). A call that raises writes nothing.
    """
    _check_lr_beta(lr, beta, NONNEG, eps, weight_decay, momentum)
    if momentum_buffer is None and momentum != 0:
        _refuse_momentum_without_buffer(momentum, "a momentum_buffer",
                                        "one (np.zeros_like(param), as torch starts it)")
    try:
        _backend.active.rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, lr=lr,
                                alpha=beta, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                maximize=maximize, eps_inside_sqrt=eps_inside_sqrt)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(rmsprop_step_, locals())
        raise


def foreach_rmsprop_step_(params: Arrays, grads: Arrays, square_avgs: Arrays, *, lr: float = 0.01,
                          beta: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                          momentum_buffers: Arrays | None = None, momentum: float = 0.0,
                          grad_avgs: Arrays | None = None, maximize: bool = False,
                          eps_inside_sqrt: bool = False) -> None:
    """:func:`rmsprop_step_` on every array of ``params``: one call into the backend for a whole
    list, bit-identical to calling :func:`rmsprop_step_` on each array.

    Parameters
    ----------
    params, grads : list or tuple of ndarray
        The parameters (updated in place) and their gradients, pairwise of one shape and dtype;
        arrays of different shapes and dtypes may be mixed.
    square_avgs : list or tuple of ndarray
        One ``square_avg`` per parameter.
    momentum_buffers, grad_avgs : list or tuple of ndarray, or None, optional
        One buffer (one average) per parameter, or None when not in use; a None momentum
        buffer (the whole list or an entry) only with ``momentum`` 0.
    lr, beta, eps, weight_decay, momentum, maximize, eps_inside_sqrt
        As in :func:`rmsprop_step_`; shared by every array.

    Returns
    -------
    None

    Raises
    ------
    TypeError, ValueError
        As the single-array function, naming the list and index (``grads[3]``); also a list
        argument that is not a list or tuple, or lists of different lengths. Overlap is checked
        across the whole call (grads may share memory with each other). A call that raises
        writes nothing.
    """
    _check_lr_beta(lr, beta, NONNEG, eps, weight_decay, momentum)
    if momentum_buffers is None and momentum != 0:
        _refuse_momentum_without_buffer(momentum, "momentum_buffers",
                                        "one buffer per parameter (zeros, as torch starts them)")
    kernel = _backend.active.rmsprop_multi
    try:
        kernel(params, grads, square_avgs, grad_avgs, momentum_buffers, lr=lr, alpha=beta, eps=eps,
               weight_decay=weight_decay, momentum=momentum, maximize=maximize,
               eps_inside_sqrt=eps_inside_sqrt)
        _calls.returned = True      # (see _kernel_began)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(foreach_rmsprop_step_, locals())
        raise


def adagrad_step_(param: Array, grad: Array, state_sum: Array, step: int, *, lr: float = 0.01,
                  lr_decay: float = 0.0, weight_decay: float = 0.0, eps: float = 1e-10,
                  maximize: bool = False) -> None:
    """One step of torch.optim.Adagrad on ``param``, in place.

    With ``g = -grad`` if ``maximize`` else ``grad``, ``g = g + weight_decay * param``::

        clr = lr / (1 + (step - 1) * lr_decay)
        state_sum = state_sum + g * g
        param = param - clr * g / (sqrt(state_sum) + eps)

    Parameters
    ----------
    param : ndarray
        The parameter, float32 or float64, any shape and layout; updated in place.
    grad : ndarray
        Its gradient, of ``param``'s shape and dtype; only read (it may be ``param`` itself).
    state_sum : ndarray
        torch's ``sum`` state (updated in place).
    step : int
        This step's number, counting from 1.
    lr : float, default 0.01
        Learning rate, >= 0.
    lr_decay : float, default 0.0
        Learning-rate decay, >= 0.
    weight_decay : float, default 0.0
        L2 penalty, >= 0.
    eps : float, default 1e-10
        Added to the denominator, >= 0.
    maximize : bool, default False
        Ascend the objective instead of descending.

    Returns
    -------
    None

    Raises
    ------
    TypeError
        An array that is not a plain float32/float64 ``numpy.ndarray`` or not of ``param``'s
        dtype, or a scalar that is not a real number (each named).
    ValueError
        An array not of ``param``'s shape, a read-only array that is updated, two arrays that
        share memory (but a grad that is its param's very elements, ``grad is param`` or
        ``param[:]``; views that share no element, such as a matrix's column blocks, are
        apart), or a scalar out of range (each named). A call that raises writes nothing.
    """
    try:
        _backend.active.adagrad(param, grad, state_sum,
                                clr=_adagrad_clr(step, lr, lr_decay, weight_decay, eps), eps=eps,
                                weight_decay=weight_decay, maximize=maximize)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(adagrad_step_, locals())
        raise


def foreach_adagrad_step_(params: Arrays, grads: Arrays, state_sums: Arrays, step: int, *,
                          lr: float = 0.01, lr_decay: float = 0.0, weight_decay: float = 0.0,
                          eps: float = 1e-10, maximize: bool = False) -> None:
    """:func:`adagrad_step_` on every array of ``params``: one call into the backend for a whole
    list, bit-identical to calling :func:`adagrad_step_` on each array.

    Parameters
    ----------
    params, grads : list or tuple of ndarray
        The parameters (updated in place) and their gradients, pairwise of one shape and dtype;
        arrays of different shapes and dtypes may be mixed.
    state_sums : list or tuple of ndarray
        One ``state_sum`` per parameter.
    step, lr, lr_decay, weight_decay, eps, maximize
        As in :func:`adagrad_step_`; shared by every array.

    Returns
    -------
    None

    Raises
    ------
    TypeError, ValueError
        As the single-array function, naming the list and index (``grads[3]``); also a list
        argument that is not a list or tuple, or lists of different lengths. Overlap is checked
        across the whole call (grads may share memory with each other). A call that raises
        writes nothing.
    """
    # (before ``kernel`` is bound: no call between the binding and the kernel's call)
    clr = _adagrad_clr(step, lr, lr_decay, weight_decay, eps)
    kernel = _backend.active.adagrad_multi
    try:
        kernel(params, grads, state_sums, clr=clr, eps=eps, weight_decay=weight_decay,
               maximize=maximize)
        _calls.returned = True      # (see _kernel_began)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(foreach_adagrad_step_, locals())
        raise


def adam_step_(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array, step: int, *,
               lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
               weight_decay: float = 0.0, max_exp_avg_sq: Array | None = None,
               maximize: bool = False, decoupled_weight_decay: bool = False,
               eps_inside_sqrt: bool = False) -> None:
    """One step of torch.optim.Adam on ``param``, in place (AdamW with
    ``decoupled_weight_decay``; amsgrad when ``max_exp_avg_sq`` is given).

    With ``g = -grad`` if ``maximize`` else ``grad`` and bias correction always on::

        param = param * (1 - lr * weight_decay)      (decoupled decay)
        g = g + weight_decay * param                 (otherwise)
        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v); v = vmax                (amsgrad)
        param = param - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    or, with ``eps_inside_sqrt``, ``... * m / sqrt(v / (1 - beta2**t) + eps)``. The default,
    eps after the root, is also the course notebook's form.

    Parameters
    ----------
    param : ndarray
        The parameter, float32 or float64, any shape and layout; updated in place.
    grad : ndarray
        Its gradient, of ``param``'s shape and dtype; only read (it may be ``param`` itself).
    exp_avg, exp_avg_sq : ndarray
        torch's ``exp_avg`` (m) and ``exp_avg_sq`` (v) states (updated in place).
    step : int
        This step's number ``t``, counting from 1.
    lr : float, default 1e-3
        Learning rate, >= 0.
    betas : tuple of float, default (0.9, 0.999)
        ``(beta1, beta2)``, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, >= 0.
    weight_decay : float, default 0.0
        Weight decay, >= 0: an L2 penalty, or decoupled (AdamW) with ``decoupled_weight_decay``.
    max_exp_avg_sq : ndarray or None, optional
        torch's ``max_exp_avg_sq`` (amsgrad; updated in place), or None.
    maximize : bool, default False
        Ascend the objective instead of descending.
    decoupled_weight_decay : bool, default False
        Decay the parameter directly (AdamW) instead of adding an L2 term to the gradient.
    eps_inside_sqrt : bool, default False
        The denominator ``sqrt(v_hat + eps)`` instead of torch's ``sqrt(v_hat) + eps``
        (the course notebook's code adds epsilon after the root, as the default does).

    Returns
    -------
    None

    Raises
    ------
    TypeError
        An array that is not a plain float32/float64 ``numpy.ndarray`` or not of ``param``'s
        dtype, or a scalar that is not a real number (each named).
    ValueError
        An array not of ``param``'s shape, a read-only array that is updated, two arrays that
        share memory (but a grad that is its param's very elements, ``grad is param`` or
        ``param[:]``; views that share no element, such as a matrix's column blocks, are
        apart), or a scalar out of range (each named). A call that raises writes nothing.
    """
    beta1, beta2, step_size, bias_correction2 = _adam_scalars(step, lr, betas, eps,
                                                              weight_decay)
    try:
        _backend.active.adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr=lr, beta1=beta1,
                             beta2=beta2, eps=eps, weight_decay=weight_decay, step_size=step_size,
                             bias_correction2=bias_correction2, grad_scale=1.0,
                             decoupled=decoupled_weight_decay, maximize=maximize,
                             eps_inside_sqrt=eps_inside_sqrt)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(adam_step_, locals())
        raise


def foreach_adam_step_(params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_avg_sqs: Arrays,
                       step: int, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                       eps: float = 1e-8, weight_decay: float = 0.0,
                       max_exp_avg_sqs: Arrays | None = None, maximize: bool = False,
                       decoupled_weight_decay: bool = False,
                       eps_inside_sqrt: bool = False) -> None:
    """:func:`adam_step_` on every array of ``params``: one call into the backend for a whole
    list, bit-identical to calling :func:`adam_step_` on each array.

    Parameters
    ----------
    params, grads : list or tuple of ndarray
        The parameters (updated in place) and their gradients, pairwise of one shape and dtype;
        arrays of different shapes and dtypes may be mixed.
    exp_avgs, exp_avg_sqs : list or tuple of ndarray
        One ``exp_avg`` and one ``exp_avg_sq`` per parameter.
    max_exp_avg_sqs : list or tuple of ndarray, or None, optional
        One ``max_exp_avg_sq`` per parameter (amsgrad), or None.
    step, lr, betas, eps, weight_decay, maximize, decoupled_weight_decay, eps_inside_sqrt
        As in :func:`adam_step_`; shared by every array.

    Returns
    -------
    None

    Raises
    ------
    TypeError, ValueError
        As the single-array function, naming the list and index (``grads[3]``); also a list
        argument that is not a list or tuple, or lists of different lengths. Overlap is checked
        across the whole call (grads may share memory with each other). A call that raises
        writes nothing.
    """
    beta1, beta2, step_size, bias_correction2 = _adam_scalars(step, lr, betas, eps,
                                                              weight_decay)
    kernel = _backend.active.adam_multi
    try:
        kernel(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr=lr, beta1=beta1,
               beta2=beta2, eps=eps, weight_decay=weight_decay, step_size=step_size,
               bias_correction2=bias_correction2, grad_scale=1.0, decoupled=decoupled_weight_decay,
               maximize=maximize, eps_inside_sqrt=eps_inside_sqrt)
        _calls.returned = True      # (see _kernel_began)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(foreach_adam_step_, locals())
        raise


def adamw_step_(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array, step: int, *,
                lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                weight_decay: float = 1e-2, max_exp_avg_sq: Array | None = None,
                maximize: bool = False) -> None:
    """One step of torch.optim.AdamW: :func:`adam_step_` with decoupled weight decay.

    ``param = param * (1 - lr * weight_decay)``, then the Adam step without an L2 term.

    Parameters
    ----------
    param : ndarray
        The parameter, float32 or float64, any shape and layout; updated in place.
    grad : ndarray
        Its gradient, of ``param``'s shape and dtype; only read (it may be ``param`` itself).
    exp_avg, exp_avg_sq : ndarray
        torch's ``exp_avg`` and ``exp_avg_sq`` states (updated in place).
    step : int
        This step's number ``t``, counting from 1.
    lr : float, default 1e-3
        Learning rate, >= 0.
    betas : tuple of float, default (0.9, 0.999)
        ``(beta1, beta2)``, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, >= 0.
    weight_decay : float, default 1e-2
        Decoupled weight decay, >= 0.
    max_exp_avg_sq : ndarray or None, optional
        torch's ``max_exp_avg_sq`` (amsgrad; updated in place), or None.
    maximize : bool, default False
        Ascend the objective instead of descending.

    Returns
    -------
    None

    Raises
    ------
    TypeError
        An array that is not a plain float32/float64 ``numpy.ndarray`` or not of ``param``'s
        dtype, or a scalar that is not a real number (each named).
    ValueError
        An array not of ``param``'s shape, a read-only array that is updated, two arrays that
        share memory (but a grad that is its param's very elements, ``grad is param`` or
        ``param[:]``; views that share no element, such as a matrix's column blocks, are
        apart), or a scalar out of range (each named). A call that raises writes nothing.
    """
    adam_step_(param, grad, exp_avg, exp_avg_sq, step, lr=lr, betas=betas, eps=eps,
               weight_decay=weight_decay, max_exp_avg_sq=max_exp_avg_sq, maximize=maximize,
               decoupled_weight_decay=True)


def adadelta_step_(param: Array, grad: Array, square_avg: Array, acc_delta: Array, *,
                   lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0.0,
                   maximize: bool = False) -> None:
    """One step of torch.optim.Adadelta on ``param``, in place.

    With ``g = -grad`` if ``maximize`` else ``grad``, ``g = g + weight_decay * param``::

        square_avg = rho * square_avg + (1 - rho) * g * g
        delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
        acc_delta = rho * acc_delta + (1 - rho) * delta * delta
        param = param - lr * delta

    Parameters
    ----------
    param : ndarray
        The parameter, float32 or float64, any shape and layout; updated in place.
    grad : ndarray
        Its gradient, of ``param``'s shape and dtype; only read (it may be ``param`` itself).
    square_avg, acc_delta : ndarray
        torch's ``square_avg`` and ``acc_delta`` states (updated in place).
    lr : float, default 1.0
        Learning rate, >= 0.
    rho : float, default 0.9
        Smoothing constant, in [0, 1].
    eps : float, default 1e-6
        Added inside both square roots, >= 0.
    weight_decay : float, default 0.0
        L2 penalty, >= 0.
    maximize : bool, default False
        Ascend the objective instead of descending.

    Returns
    -------
    None

    Raises
    ------
    TypeError
        An array that is not a plain float32/float64 ``numpy.ndarray`` or not of ``param``'s
        dtype, or a scalar that is not a real number (each named).
    ValueError
        An array not of ``param``'s shape, a read-only array that is updated, two arrays that
        share memory (but a grad that is its param's very elements, ``grad is param`` or
        ``param[:]``; views that share no element, such as a matrix's column blocks, are
        apart), or a scalar out of range (each named). A call that raises writes nothing.
    """
    _check_lr_beta(lr, rho, UNIT, eps, weight_decay, beta_name="rho")
    try:
        _backend.active.adadelta(param, grad, square_avg, acc_delta, lr=lr, rho=rho, eps=eps,
                                 weight_decay=weight_decay, maximize=maximize)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(adadelta_step_, locals())
        raise


def foreach_adadelta_step_(params: Arrays, grads: Arrays, square_avgs: Arrays, acc_deltas: Arrays,
                           *, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                           weight_decay: float = 0.0, maximize: bool = False) -> None:
    """:func:`adadelta_step_` on every array of ``params``: one call into the backend for a whole
    list, bit-identical to calling :func:`adadelta_step_` on each array.

    Parameters
    ----------
    params, grads : list or tuple of ndarray
        The parameters (updated in place) and their gradients, pairwise of one shape and dtype;
        arrays of different shapes and dtypes may be mixed.
    square_avgs, acc_deltas : list or tuple of ndarray
        One ``square_avg`` and one ``acc_delta`` per parameter.
    lr, rho, eps, weight_decay, maximize
        As in :func:`adadelta_step_`; shared by every array.

    Returns
    -------
    None

    Raises
    ------
    TypeError, ValueError
        As the single-array function, naming the list and index (``grads[3]``); also a list
        argument that is not a list or tuple, or lists of different lengths. Overlap is checked
        across the whole call (grads may share memory with each other). A call that raises
        writes nothing.
    """
    _check_lr_beta(lr, rho, UNIT, eps, weight_decay, beta_name="rho")
    kernel = _backend.active.adadelta_multi
    try:
        kernel(params, grads, square_avgs, acc_deltas, lr=lr, rho=rho, eps=eps,
               weight_decay=weight_decay, maximize=maximize)
        _calls.returned = True      # (see _kernel_began)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(foreach_adadelta_step_, locals())
        raise


def _adamax_scalars(step, lr, betas, eps, weight_decay):
    """beta1, beta2 and the bias-corrected learning rate ``clr`` (Adam's step size), folded
    in float64."""
    return _adam_scalars(step, lr, betas, eps, weight_decay)[:3]


def adamax_step_(param: Array, grad: Array, exp_avg: Array, exp_inf: Array, step: int, *,
                 lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, maximize: bool = False) -> None:
    """One step of torch.optim.Adamax on ``param``, in place.

    With ``g = -grad`` if ``maximize`` else ``grad``, ``g = g + weight_decay * param``::

        m = m + (1 - beta1) * (g - m)
        u = max(beta2 * u, |g| + eps)
        param = param - lr / (1 - beta1**t) * m / u

    Parameters
    ----------
    param : ndarray
        The parameter, float32 or float64, any shape and layout; updated in place.
    grad : ndarray
        Its gradient, of ``param``'s shape and dtype; only read (it may be ``param`` itself).
    exp_avg, exp_inf : ndarray
        torch's ``exp_avg`` (m) and ``exp_inf`` (u) states (updated in place).
    step : int
        This step's number ``t``, counting from 1.
    lr : float, default 2e-3
        Learning rate, >= 0.
    betas : tuple of float, default (0.9, 0.999)
        ``(beta1, beta2)``, each in [0, 1).
    eps : float, default 1e-8
        Added to ``|g|``, >= 0.
    weight_decay : float, default 0.0
        L2 penalty, >= 0.
    maximize : bool, default False
        Ascend the objective instead of descending.

    Returns
    -------
    None

    Raises
    ------
    TypeError
        An array that is not a plain float32/float64 ``numpy.ndarray`` or not of ``param``'s
        dtype, or a scalar that is not a real number (each named).
    ValueError
        An array not of ``param``'s shape, a read-only array that is updated, two arrays that
        share memory (but a grad that is its param's very elements, ``grad is param`` or
        ``param[:]``; views that share no element, such as a matrix's column blocks, are
        apart), or a scalar out of range (each named). A call that raises writes nothing.
    """
    beta1, beta2, clr = _adamax_scalars(step, lr, betas, eps, weight_decay)
    try:
        _backend.active.adamax(param, grad, exp_avg, exp_inf, beta1=beta1, beta2=beta2, eps=eps,
                               weight_decay=weight_decay, clr=clr, maximize=maximize)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(adamax_step_, locals())
        raise


def foreach_adamax_step_(params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_infs: Arrays,
                         step: int, *, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                         eps: float = 1e-8, weight_decay: float = 0.0,
                         maximize: bool = False) -> None:
    """:func:`adamax_step_` on every array of ``params``: one call into the backend for a whole
    list, bit-identical to calling :func:`adamax_step_` on each array.

    Parameters
    ----------
    params, grads : list or tuple of ndarray
        The parameters (updated in place) and their gradients, pairwise of one shape and dtype;
        arrays of different shapes and dtypes may be mixed.
    exp_avgs, exp_infs : list or tuple of ndarray
        One ``exp_avg`` and one ``exp_inf`` per parameter.
    step, lr, betas, eps, weight_decay, maximize
        As in :func:`adamax_step_`; shared by every array.

    Returns
    -------
    None

    Raises
    ------
    TypeError, ValueError
        As the single-array function, naming the list and index (``grads[3]``); also a list
        argument that is not a list or tuple, or lists of different lengths. Overlap is checked
        across the whole call (grads may share memory with each other). A call that raises
        writes nothing.
    """
    beta1, beta2, clr = _adamax_scalars(step, lr, betas, eps, weight_decay)
    kernel = _backend.active.adamax_multi
    try:
        kernel(params, grads, exp_avgs, exp_infs, beta1=beta1, beta2=beta2, eps=eps,
               weight_decay=weight_decay, clr=clr, maximize=maximize)
        _calls.returned = True      # (see _kernel_began)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(foreach_adamax_step_, locals())
        raise


def nadam_momentum(step: int, beta1: float, momentum_decay: float) -> float:
    """NAdam's momentum schedule at step ``t``: ``beta1 * (1 - 0.5 * 0.96**(t * momentum_decay))``.

    Parameters
    ----------
    step : int
        The step ``t``, counting from 1.
    beta1 : float
        NAdam's first beta, in [0, 1).
    momentum_decay : float
        torch's ``momentum_decay``, >= 0.

    Returns
    -------
    float
        ``mu_t``, folded in float64 (a Python float, whatever NumPy scalars it is given).

    Raises
    ------
    TypeError
        An argument that is not a real number (named).
    ValueError
        An argument out of its range, NaN included, or past the float range (named).
    """
    check_reals(step=(step, STEP), beta1=(beta1, UNIT_OPEN),
                momentum_decay=(momentum_decay, NONNEG))
    return _nadam_momentum(as_real("step", step), as_real("beta1", beta1),
                           as_real("momentum_decay", momentum_decay))


def _nadam_momentum(step, beta1, momentum_decay):
    """:func:`nadam_momentum` of checked scalars, Python floats (``step`` may be an int)."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))


def _nadam_scalars(step, mu_product, lr, betas, eps, weight_decay, momentum_decay,
                   single=True):
    """The new ``mu_product`` and the kernel's scalars (beta1, beta2, bias_correction2,
    grad_coef, avg_coef), folded in float64. ``single``: ``mu_product`` is a float32 value,
    multiplied in float32 (torch's float32 tensor); False: a float64 one, multiplied in
    float64 (torch's under ``torch.set_default_dtype(torch.float64)``)."""
    if type(step) is not int and type(step) is not float:      # (as _adam_scalars)
        step = as_real("step", step)
    beta1, beta2, _, bias_correction2 = _adam_scalars(step, lr, betas, eps, weight_decay)
    try:
        ok = momentum_decay >= 0.0 and 0.0 <= mu_product <= 1.0
        if ok:
            if type(momentum_decay) is not float:
                momentum_decay = as_real("momentum_decay", momentum_decay)
            if type(mu_product) is not float:
                mu_product = as_real("mu_product", mu_product)
    except _NOT_REAL:
        ok = False
    if not ok:
        check_reals(step=(step, STEP), momentum_decay=(momentum_decay, NONNEG),
                    mu_product=(mu_product, UNIT))
        momentum_decay = as_real("momentum_decay", momentum_decay)     # (as in _adam_scalars)
        mu_product = float(mu_product)
    lr = float(lr)      # folded in float64 (a real number: _adam_scalars checked it)
    mu = _nadam_momentum(step, beta1, momentum_decay)
    mu_next = _nadam_momentum(step + 1, beta1, momentum_decay)
    # torch keeps mu_product as a float32 scalar tensor (whatever the parameters' dtype) and
    # multiplies in float32; doing the same keeps float64 trajectories equal to torch's (the
    # product of two float32 values is exact in float64, so rounding it once is float32's *)
    mu_product = _to_f32(_to_f32(mu_product) * _to_f32(mu)) if single else mu_product * mu
    grad_coef = -lr * (1.0 - mu) / (1.0 - mu_product)
    avg_coef = -lr * mu_next / (1.0 - mu_product * mu_next)
    return mu_product, beta1, beta2, bias_correction2, grad_coef, avg_coef


def nadam_step_(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array, step: int,
                mu_product: float, *, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                eps: float = 1e-8, weight_decay: float = 0.0, momentum_decay: float = 4e-3,
                decoupled_weight_decay: bool = False, maximize: bool = False) -> float:
    """One step of torch.optim.NAdam on ``param``, in place; returns the new ``mu_product``.

    With ``g = -grad`` if ``maximize`` else ``grad`` (decay as in :func:`adam_step_`)::

        mu_t = beta1 * (1 - 0.5 * 0.96**(t * momentum_decay));  P = mu_product * mu_t
        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        d = sqrt(v / (1 - beta2**t)) + eps
        param = param - lr * (1 - mu_t) / (1 - P) * g / d
                      - lr * mu_{t+1} / (1 - P * mu_{t+1}) * m / d

    Parameters
    ----------
    param : ndarray
        The parameter, float32 or float64, any shape and layout; updated in place.
    grad : ndarray
        Its gradient, of ``param``'s shape and dtype; only read (it may be ``param`` itself).
    exp_avg, exp_avg_sq : ndarray
        torch's ``exp_avg`` and ``exp_avg_sq`` states (updated in place).
    step : int
        This step's number ``t``, counting from 1.
    mu_product : float
        The product of the momentum schedule up to the previous step (1.0 before the first):
        torch's ``mu_product`` state, which the caller keeps.
    lr : float, default 2e-3
        Learning rate, >= 0.
    betas : tuple of float, default (0.9, 0.999)
        ``(beta1, beta2)``, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, >= 0.
    weight_decay : float, default 0.0
        Weight decay, >= 0 (an L2 penalty, or decoupled with ``decoupled_weight_decay``).
    momentum_decay : float, default 4e-3
        torch's ``momentum_decay``, >= 0.
    decoupled_weight_decay : bool, default False
        Decay the parameter directly (as AdamW) instead of adding an L2 term.
    maximize : bool, default False
        Ascend the objective instead of descending.

    Returns
    -------
    float
        The new ``mu_product`` (``mu_product * mu_t``, rounded as torch's float32 state), for the
        next call.

    Raises
    ------
    TypeError
        An array that is not a plain float32/float64 ``numpy.ndarray`` or not of ``param``'s
        dtype, or a scalar that is not a real number (each named).
    ValueError
        An array not of ``param``'s shape, a read-only array that is updated, two arrays that
        share memory (but a grad that is its param's very elements, ``grad is param`` or
        ``param[:]``; views that share no element, such as a matrix's column blocks, are
        apart), or a scalar out of range (each named). A call that raises writes nothing.
    """
    mu_product, beta1, beta2, bias_correction2, grad_coef, avg_coef = _nadam_scalars(
        step, mu_product, lr, betas, eps, weight_decay, momentum_decay)
    try:
        _backend.active.nadam(param, grad, exp_avg, exp_avg_sq, lr=lr, beta1=beta1, beta2=beta2,
                              eps=eps, weight_decay=weight_decay,
                              bias_correction2=bias_correction2, grad_coef=grad_coef,
                              avg_coef=avg_coef,
                              decoupled=decoupled_weight_decay, maximize=maximize)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(nadam_step_, locals())
        raise
    return mu_product


def foreach_nadam_step_(params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_avg_sqs: Arrays,
                        step: int, mu_product: float, *, lr: float = 2e-3,
                        betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                        weight_decay: float = 0.0, momentum_decay: float = 4e-3,
                        decoupled_weight_decay: bool = False, maximize: bool = False) -> float:
    """:func:`nadam_step_` on every array of ``params``: one call into the backend for a whole
    list, bit-identical to calling :func:`nadam_step_` on each array.

    Parameters
    ----------
    params, grads : list or tuple of ndarray
        The parameters (updated in place) and their gradients, pairwise of one shape and dtype;
        arrays of different shapes and dtypes may be mixed.
    exp_avgs, exp_avg_sqs : list or tuple of ndarray
        One ``exp_avg`` and one ``exp_avg_sq`` per parameter.
    step, mu_product, lr, betas, eps, weight_decay, momentum_decay
        As in :func:`nadam_step_`; shared by every array.
    decoupled_weight_decay, maximize : bool
        As in :func:`nadam_step_`.

    Returns
    -------
    float
        The new ``mu_product`` (``mu_product * mu_t``, rounded as torch's float32 state), for the
        next call.

    Raises
    ------
    TypeError, ValueError
        As the single-array function, naming the list and index (``grads[3]``); also a list
        argument that is not a list or tuple, or lists of different lengths. Overlap is checked
        across the whole call (grads may share memory with each other). A call that raises
        writes nothing.
    """
    mu_product, beta1, beta2, bias_correction2, grad_coef, avg_coef = _nadam_scalars(
        step, mu_product, lr, betas, eps, weight_decay, momentum_decay)
    kernel = _backend.active.nadam_multi
    try:
        kernel(params, grads, exp_avgs, exp_avg_sqs, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
               weight_decay=weight_decay, bias_correction2=bias_correction2, grad_coef=grad_coef,
               avg_coef=avg_coef, decoupled=decoupled_weight_decay, maximize=maximize)
        _calls.returned = True      # (see _kernel_began)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(foreach_nadam_step_, locals())
        raise
    return mu_product


def _radam_scalars(step, lr, betas, eps, weight_decay):
    """beta1, beta2, ``step_size = lr / (1 - beta1**t)``, ``adaptive_scale = r_t *
    sqrt(1 - beta2**t)`` (1 when not rectified) and whether the step is ``rectified``."""
    if type(step) is not int and type(step) is not float:      # (as _adam_scalars)
        step = as_real("step", step)
    beta1, beta2, step_size, bias_correction2 = _adam_scalars(step, lr, betas, eps,
                                                              weight_decay)
    rect = _radam_rect(step, beta2, bias_correction2)
    if rect is not None:
        return beta1, beta2, step_size, bias_correction2 ** 0.5 * rect, True
    return beta1, beta2, step_size, 1.0, False


def _radam_rect(step, beta2, bias_correction2):
    """RAdam's rectification term ``r_t``, None where ``rho_t <= 5`` (not rectified), in
    torch's order of operations: on floats, or on torch's tensors (fastopt.torch, for a
    tensor beta2, which torch folds in its dtype)."""
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2 ** step / bias_correction2
    if not rho_t > 5.0:
        return None
    return ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
            / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)) ** 0.5


def radam_step_(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array, step: int, *,
                lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
                maximize: bool = False) -> None:
    """One step of torch.optim.RAdam on ``param``, in place.

    With ``g = -grad`` if ``maximize`` else ``grad`` (decay as in :func:`adam_step_`), ``m`` and
    ``v`` updated as in Adam::

        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 t beta2**t / (1 - beta2**t)
        param = param - lr / (1 - beta1**t) * m                          (rho_t <= 5)
        param = param - lr / (1 - beta1**t) * r_t * sqrt(1 - beta2**t) * m / (sqrt(v) + eps)
        r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))

    Parameters
    ----------
    param : ndarray
        The parameter, float32 or float64, any shape and layout; updated in place.
    grad : ndarray
        Its gradient, of ``param``'s shape and dtype; only read (it may be ``param`` itself).
    exp_avg, exp_avg_sq : ndarray
        torch's ``exp_avg`` and ``exp_avg_sq`` states (updated in place).
    step : int
        This step's number ``t``, counting from 1.
    lr : float, default 1e-3
        Learning rate, >= 0.
    betas : tuple of float, default (0.9, 0.999)
        ``(beta1, beta2)``, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, >= 0.
    weight_decay : float, default 0.0
        Weight decay, >= 0 (an L2 penalty, or decoupled with ``decoupled_weight_decay``).
    decoupled_weight_decay : bool, default False
        Decay the parameter directly (as AdamW) instead of adding an L2 term.
    maximize : bool, default False
        Ascend the objective instead of descending.

    Returns
    -------
    None

    Raises
    ------
    TypeError
        An array that is not a plain float32/float64 ``numpy.ndarray`` or not of ``param``'s
        dtype, or a scalar that is not a real number (each named).
    ValueError
        An array not of ``param``'s shape, a read-only array that is updated, two arrays that
        share memory (but a grad that is its param's very elements, ``grad is param`` or
        ``param[:]``; views that share no element, such as a matrix's column blocks, are
        apart), or a scalar out of range (each named). A call that raises writes nothing.
    """
    beta1, beta2, step_size, adaptive_scale, rectified = _radam_scalars(step, lr, betas, eps,
                                                                        weight_decay)
    try:
        _backend.active.radam(param, grad, exp_avg, exp_avg_sq, lr=lr, beta1=beta1, beta2=beta2,
                              eps=eps, weight_decay=weight_decay, step_size=step_size,
                              adaptive_scale=adaptive_scale, rectified=rectified,
                              decoupled=decoupled_weight_decay, maximize=maximize)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(radam_step_, locals())
        raise


def foreach_radam_step_(params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_avg_sqs: Arrays,
                        step: int, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                        eps: float = 1e-8, weight_decay: float = 0.0,
                        decoupled_weight_decay: bool = False, maximize: bool = False) -> None:
    """:func:`radam_step_` on every array of ``params``: one call into the backend for a whole
    list, bit-identical to calling :func:`radam_step_` on each array.

    Parameters
    ----------
    params, grads : list or tuple of ndarray
        The parameters (updated in place) and their gradients, pairwise of one shape and dtype;
        arrays of different shapes and dtypes may be mixed.
    exp_avgs, exp_avg_sqs : list or tuple of ndarray
        One ``exp_avg`` and one ``exp_avg_sq`` per parameter.
    step, lr, betas, eps, weight_decay, decoupled_weight_decay, maximize
        As in :func:`radam_step_`; shared by every array.

    Returns
    -------
    None

    Raises
    ------
    TypeError, ValueError
        As the single-array function, naming the list and index (``grads[3]``); also a list
        argument that is not a list or tuple, or lists of different lengths. Overlap is checked
        across the whole call (grads may share memory with each other). A call that raises
        writes nothing.
    """
    beta1, beta2, step_size, adaptive_scale, rectified = _radam_scalars(step, lr, betas, eps,
                                                                        weight_decay)
    kernel = _backend.active.radam_multi
    try:
        kernel(params, grads, exp_avgs, exp_avg_sqs, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
               weight_decay=weight_decay, step_size=step_size, adaptive_scale=adaptive_scale,
               rectified=rectified, decoupled=decoupled_weight_decay, maximize=maximize)
        _calls.returned = True      # (see _kernel_began)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(foreach_radam_step_, locals())
        raise


def _check_lion(lr, betas, weight_decay):
    """Check Lion's scalars; return ``(beta1, beta2)``."""
    try:
        beta1, beta2 = betas if type(betas) is tuple or type(betas) is list else ()
        if lr >= 0.0 and weight_decay >= 0.0 and 0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0:
            return beta1, beta2
    except _NOT_REAL:
        pass
    check_reals(lr=(lr, NONNEG), betas=(betas, BETAS), weight_decay=(weight_decay, NONNEG))
    return betas[0], betas[1]


def lion_step_(param: Array, grad: Array, exp_avg: Array, *, lr: float = 1e-4,
               betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 1e-3,
               maximize: bool = False) -> None:
    """One step of Lion (Chen et al. 2023) on ``param``, in place, as ``optax.lion``.

    With ``g = -grad`` if ``maximize`` else ``grad``::

        update = sign((1 - beta1) * g + beta1 * exp_avg) + weight_decay * param
        exp_avg = (1 - beta2) * g + beta2 * exp_avg
        param = param - lr * update

    ``sign`` is 0 at zero and NaN at NaN; the decay term is always added (an infinite parameter
    becomes NaN, as in optax).

    Parameters
    ----------
    param : ndarray
        The parameter, float32 or float64, any shape and layout; updated in place.
    grad : ndarray
        Its gradient, of ``param``'s shape and dtype; only read (it may be ``param`` itself).
    exp_avg : ndarray
        The momentum (optax's ``mu``; updated in place).
    lr : float, default 1e-4
        Learning rate, >= 0.
    betas : tuple of float, default (0.9, 0.99)
        ``(beta1, beta2)``, each in [0, 1): the interpolation inside the sign, and the
        momentum's decay.
    weight_decay : float, default 1e-3
        Decoupled weight decay, >= 0.
    maximize : bool, default False
        Ascend the objective instead of descending.

    Returns
    -------
    None

    Raises
    ------
    TypeError
        An array that is not a plain float32/float64 ``numpy.ndarray`` or not of ``param``'s
        dtype, or a scalar that is not a real number (each named).
    ValueError
        An array not of ``param``'s shape, a read-only array that is updated, two arrays that
        share memory (but a grad that is its param's very elements, ``grad is param`` or
        ``param[:]``; views that share no element, such as a matrix's column blocks, are
        apart), or a scalar out of range (each named). A call that raises writes nothing.
    """
    beta1, beta2 = _check_lion(lr, betas, weight_decay)
    try:
        _backend.active.lion(param, grad, exp_avg, lr=lr, beta1=beta1, beta2=beta2,
                             weight_decay=weight_decay, maximize=maximize)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(lion_step_, locals())
        raise


def foreach_lion_step_(params: Arrays, grads: Arrays, exp_avgs: Arrays, *, lr: float = 1e-4,
                       betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 1e-3,
                       maximize: bool = False) -> None:
    """:func:`lion_step_` on every array of ``params``: one call into the backend for a whole
    list, bit-identical to calling :func:`lion_step_` on each array.

    Parameters
    ----------
    params, grads : list or tuple of ndarray
        The parameters (updated in place) and their gradients, pairwise of one shape and dtype;
        arrays of different shapes and dtypes may be mixed.
    exp_avgs : list or tuple of ndarray
        One ``exp_avg`` per parameter.
    lr, betas, weight_decay, maximize
        As in :func:`lion_step_`; shared by every array.

    Returns
    -------
    None

    Raises
    ------
    TypeError, ValueError
        As the single-array function, naming the list and index (``grads[3]``); also a list
        argument that is not a list or tuple, or lists of different lengths. Overlap is checked
        across the whole call (grads may share memory with each other). A call that raises
        writes nothing.
    """
    beta1, beta2 = _check_lion(lr, betas, weight_decay)
    kernel = _backend.active.lion_multi
    try:
        kernel(params, grads, exp_avgs, lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay,
               maximize=maximize)
        _calls.returned = True      # (see _kernel_began)
    except _REFUSED:       # a scalar or option the backend refused: named here
        _refuse(foreach_lion_step_, locals())
        raise


__all__ = ["ewa_", "sgd_step_", "momentum_step_", "rmsprop_step_", "adagrad_step_",
           "adam_step_", "adamw_step_", "foreach_ewa_", "foreach_sgd_step_",
           "foreach_momentum_step_", "foreach_rmsprop_step_", "foreach_adagrad_step_",
           "foreach_adam_step_", "adadelta_step_", "adamax_step_", "nadam_step_",
           "radam_step_", "foreach_adadelta_step_", "foreach_adamax_step_",
           "foreach_nadam_step_", "foreach_radam_step_", "lion_step_", "foreach_lion_step_",
           "nadam_momentum"]
