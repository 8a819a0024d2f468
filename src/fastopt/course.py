"""The deep-learning course's optimizer functions, on fastopt's kernels.

Same names, arguments and return values as the course notebook ("Optimization Methods"), so a
notebook switches with one import::

    from fastopt.course import (update_parameters_with_gd, random_mini_batches,
                                initialize_velocity, update_parameters_with_momentum,
                                initialize_adam, update_parameters_with_adam,
                                update_lr, schedule_lr_decay)

Parameters are a dict ``W1, b1, ..., WL, bL``, grads ``dW1, db1, ...``, the velocity and
squared-gradient averages ``v``/``s`` are keyed ``dW1, db1, ...``; examples are columns. The
arrays are updated in place (one fused kernel call each) and also returned, as the callers
expect.
"""
import functools
import math
import operator
from collections.abc import Mapping

import numpy as np

from . import ops, schedules
from ._hyper import COUNT, EVERY, FINITE, NONNEG, STEP, UNIT_OPEN, check_real, check_reals
from ._validate import (as_examples, check_disjoint, check_kernel_array, check_step_arrays,
                        renamed)

# the course's parameters, grads and moment averages: arrays by name (W1, dW1, ...)
ArrayDict = dict[str, np.ndarray]


def _is_dict(d):
    """Whether ``d`` is a Mapping (a dict tested first: the ABC's check costs ~0.3 us)."""
    return type(d) is dict or isinstance(d, Mapping)


@functools.lru_cache(maxsize=64)
def _keys(nlayers):
    """(W1, b1, ..., WL, bL), their grads' and states' keys (dW1, db1, ...), and the names of
    a layer after the last (W{L+1}, b{L+1}), for L = ``nlayers`` (made once per L: formatting
    them took half of a course-sized step's time)."""
    names = tuple(f"{kind}{l}" for l in range(1, nlayers + 1) for kind in ("W", "b"))
    return names, tuple("d" + name for name in names), (f"W{nlayers + 1}", f"b{nlayers + 1}")


def _names(parameters):
    """W1, b1, ..., WL, bL in layer order, L = len(parameters) // 2 as the course counts them;
    TypeError unless ``parameters`` is a dict, KeyError naming a layer's array it lacks."""
    if not _is_dict(parameters):
        raise TypeError(f"parameters must be a dict of arrays, got {type(parameters).__name__}")
    nlayers = len(parameters) // 2
    names, _, (w_after, b_after) = _keys(nlayers)
    for there, missing in ((w_after, b_after), (b_after, w_after)):
        if there in parameters:             # a layer with one of its two arrays
            raise KeyError(f"parameters has no {missing!r} (parameters[{there!r}] is "
                           "there, without its pair)")
    for name in names:
        if name not in parameters:
            raise KeyError(f"parameters has no {name!r} ({nlayers} layers: W1, b1, ..., "
                           f"W{nlayers}, b{nlayers})")
    return names


def _update(kernel, parameters, grads, states, **scalars):
    """``kernel`` (a ``fastopt.ops.foreach_*`` step) over every layer's arrays in one call,
    which checks them all before it writes any: a call that raises changes nothing. Its
    message names a list item (``params[3]``); a refused call is checked again layer by layer
    (:func:`_layers`) to raise naming the dict key instead (``grads['db2'] has shape (2, 1),
    expected (1, 1) like parameters['b2']``). One call, not one per layer: checking each
    layer in Python first cost 4-5x the update (3 layers of Adam: 14-21 -> 79-88 us). A
    refused hyper-parameter is likewise checked again (:func:`_check_hyper`) to raise naming
    the course's argument (``learning_rate``, ``epsilon``) rather than the kernel's (``lr``,
    ``eps``). The kernel's lists are made list by list, from the keys made once (:func:`_keys`):
    made layer by layer with :func:`_layers` and transposed, a 3-layer SGD step took 6.9 us
    against 2.6 (NumPy's own update 5.9). When that fails, :func:`_layers` raises what it
    finds, naming the dict and the key."""
    try:
        for d in (grads, *states.values()):
            if not _is_dict(d):
                raise TypeError
        names = _names(parameters)
        keys = _keys(len(names) // 2)[1]
        lists = [[parameters[name] for name in names], [grads[key] for key in keys],
                 *[[d[key] for key in keys] for d in states.values()]]
    except (TypeError, KeyError):
        _layers(parameters, grads, **states)
        raise
    if not names:               # no kernel call to check the hyper-parameters
        _check_hyper(scalars)
        return
    try:
        kernel(*lists, **scalars)
    except (TypeError, ValueError):
        _layers(parameters, grads, check=True, **states)
        _check_hyper(scalars)
        raise


# the kernels' keywords -> the course's argument names (and the kernels' ranges)
_COURSE_HYPER = {"lr": ("learning_rate", NONNEG), "beta": ("beta", UNIT_OPEN),
                 "eps": ("epsilon", NONNEG)}


def _check_hyper(scalars):
    """The kernel's hyper-parameter checks on ``scalars`` (its keywords), raising under the
    course's names: ``learning_rate``, ``beta``, ``beta1``, ``beta2``, ``epsilon`` (``t`` is
    checked before the call, by :func:`_check_t`)."""
    checks = {}
    for key, value in scalars.items():
        if key == "betas":
            checks["beta1"], checks["beta2"] = (value[0], UNIT_OPEN), (value[1], UNIT_OPEN)
        elif key in _COURSE_HYPER:
            name, bounds = _COURSE_HYPER[key]
            checks[name] = (value, bounds)
    check_reals(**checks)


def _layers(parameters, grads, check=False, **states):
    """Every layer's arrays, ``[(param, grad, *state), ...]`` in layer order, for the dicts
    ``parameters``, ``grads`` and ``states`` (``v``, ``s``); KeyError naming a missing one.
    With ``check``, each layer's arrays are also checked as the kernels check them (plain
    float32/float64 ndarrays; the grad and state of the parameter's dtype and shape;
    parameter and state writeable; not overlapping, within a layer or across layers),
    raising naming the key.
    """
    dicts = {"parameters": parameters, "grads": grads, **states}
    for dict_name, d in dicts.items():
        if not _is_dict(d):
            raise TypeError(f"{dict_name} must be a dict of arrays, got {type(d).__name__}")
    names = _names(parameters)
    layers, labels = [], []
    for name in names:
        keys = [(dict_name, name if dict_name == "parameters" else "d" + name)
                for dict_name in dicts]
        arrays = []
        for dict_name, key in keys:
            try:
                arrays.append(dicts[dict_name][key])
            except KeyError:
                raise KeyError(f"{dict_name} has no {key!r} "
                               f"(for parameters[{name!r}])") from None
        if check:
            labels.append([f"{dict_name}[{key!r}]" for dict_name, key in keys])
            check_step_arrays(arrays, labels[-1], len(arrays))
        layers.append(arrays)
    if check:       # across layers too (a grad that is another layer's parameter)
        check_disjoint(layers, lambda i, j: labels[j][i])
    return layers


def _check_t(t):
    """Adam's step count ``t``, named as the course names it (the kernels call it step)."""
    check_real("t", t, STEP)


def update_parameters_with_gd(parameters: ArrayDict, grads: ArrayDict,
                              learning_rate: float) -> ArrayDict:
    """One step of gradient descent: ``W = W - learning_rate * dW`` for every layer.

    Parameters
    ----------
    parameters : dict of ndarray
        ``W1, b1, ..., WL, bL``, float arrays updated in place.
    grads : dict of ndarray
        ``dW1, db1, ...``, shaped like the parameters.
    learning_rate : float
        Step size, >= 0.

    Returns
    -------
    dict
        ``parameters``, updated in place.

    Raises
    ------
    KeyError
        A parameter, grad or state array missing (named).
    TypeError
        A parameter that is not a float32/float64 ndarray, or a grad or state array that is
        not an ndarray of its parameter's dtype (named).
    ValueError
        A grad or state array of another shape than its parameter, a read-only parameter or
        state array, or two arrays of a layer that overlap (named), or a hyper-parameter out
        of range.

    Every layer's arrays are checked before any is updated: a call that raises changes
    nothing.
    """
    _update(ops.foreach_sgd_step_, parameters, grads, {}, lr=learning_rate)
    return parameters


def random_mini_batches(X: np.ndarray, Y: np.ndarray, mini_batch_size: int = 64,
                        seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The course's shuffled mini-batches (examples are columns).

    Shuffled with ``np.random.seed(seed)`` and ``np.random.permutation(m)``, so a seed gives the
    course's batches; the last batch is smaller when ``mini_batch_size`` does not divide ``m``.

    Parameters
    ----------
    X : ndarray
        Inputs, shape ``(n_x, m)``.
    Y : ndarray
        Labels, shape ``(n_y, m)``.
    mini_batch_size : int, default 64
        Examples per batch.
    seed : int, default 0
        Seed of NumPy's global generator (set, as the course does).

    Returns
    -------
    list of tuple
        ``[(mini_batch_X, mini_batch_Y), ...]``.

    Raises
    ------
    TypeError
        ``mini_batch_size`` not an int, a ``seed`` NumPy cannot seed from, ``X`` or ``Y``
        None or a masked array (whose mask the batches would not keep: the masked values
        shuffled in as data).
    ValueError
        ``mini_batch_size`` < 1, ``X`` or ``Y`` ragged or not 2-D, ``Y`` with another number of
        examples (columns) than ``X``, or a ``seed`` out of [0, 2**32). Checked before the
        global generator is seeded.
    """
    X, Y = as_examples("X", X), as_examples("Y", Y)
    if (isinstance(mini_batch_size, bool)
            or not isinstance(mini_batch_size, (int, np.integer))):
        raise TypeError(f"mini_batch_size must be an int, got {type(mini_batch_size).__name__}")
    if mini_batch_size < 1:
        raise ValueError(f"Invalid mini_batch_size: {mini_batch_size!r} (must be >= 1)")
    # a Python int: the slices' bounds in a NumPy int8 or uint8 overflowed
    mini_batch_size = operator.index(mini_batch_size)
    for name, a in (("X", X), ("Y", Y)):
        if a.ndim != 2:
            raise ValueError(f"{name} must be 2-D (examples are columns), got shape {a.shape}")
    if Y.shape[1] != X.shape[1]:
        raise ValueError(f"X has {X.shape[1]} examples (columns) but Y has {Y.shape[1]}")
    try:
        np.random.seed(seed)
    except (TypeError, ValueError) as exc:      # (NumPy's message does not name the seed)
        raise renamed(exc, f"Invalid seed: {seed!r} ({exc})") from None
    m = X.shape[1]
    permutation = list(np.random.permutation(m))
    shuffled_X = X[:, permutation]
    shuffled_Y = Y[:, permutation].reshape((Y.shape[0], m))
    batches = []
    complete = math.floor(m / mini_batch_size)
    for k in range(complete):
        sl = slice(k * mini_batch_size, (k + 1) * mini_batch_size)
        batches.append((shuffled_X[:, sl], shuffled_Y[:, sl]))
    if m % mini_batch_size != 0:
        sl = slice(complete * mini_batch_size, m)
        batches.append((shuffled_X[:, sl], shuffled_Y[:, sl]))
    return batches


def initialize_velocity(parameters: ArrayDict) -> ArrayDict:
    """Zero velocities for momentum: ``v["dW1"], v["db1"], ...`` shaped like the parameters.

    Parameters
    ----------
    parameters : dict of ndarray
        ``W1, b1, ..., WL, bL``, the parameters (only their shapes and dtypes are read).

    Returns
    -------
    dict of ndarray
        ``v``, keyed ``"d" + name``.

    Raises
    ------
    TypeError
        ``parameters`` not a dict, or a parameter that is not a float32/float64 ndarray
        (named), which no update takes.
    KeyError
        A layer's ``W`` or ``b`` missing (named).
    """
    names = _names(parameters)
    for name in names:
        check_kernel_array(f"parameters[{name!r}]", parameters[name])
    return {"d" + name: np.zeros_like(parameters[name]) for name in names}


def update_parameters_with_momentum(parameters: ArrayDict, grads: ArrayDict, v: ArrayDict,
                                    beta: float, learning_rate: float
                                    ) -> tuple[ArrayDict, ArrayDict]:
    """One step of momentum for every layer.

    ``v = beta * v + (1 - beta) * dW``; ``W = W - learning_rate * v``.

    Parameters
    ----------
    parameters : dict of ndarray
        ``W1, b1, ..., WL, bL``, float arrays updated in place.
    grads : dict of ndarray
        ``dW1, db1, ...``, shaped like the parameters.
    v : dict of ndarray
        Velocities keyed ``dW1, db1, ...`` (updated in place).
    beta : float
        Momentum, in [0, 1).
    learning_rate : float
        Step size, >= 0.

    Returns
    -------
    tuple
        ``(parameters, v)``, both updated in place.

    Raises
    ------
    KeyError
        A parameter, grad or state array missing (named).
    TypeError
        A parameter that is not a float32/float64 ndarray, or a grad or state array that is
        not an ndarray of its parameter's dtype (named).
    ValueError
        A grad or state array of another shape than its parameter, a read-only parameter or
        state array, or two arrays of a layer that overlap (named), or a hyper-parameter out
        of range.

    Every layer's arrays are checked before any is updated: a call that raises changes
    nothing.
    """
    _update(ops.foreach_momentum_step_, parameters, grads, {"v": v}, lr=learning_rate,
            beta=beta)
    return parameters, v


def initialize_adam(parameters: ArrayDict) -> tuple[ArrayDict, ArrayDict]:
    """Zero moving averages for Adam.

    Parameters
    ----------
    parameters : dict of ndarray
        ``W1, b1, ..., WL, bL``, the parameters (only their shapes and dtypes are read).

    Returns
    -------
    tuple of dict
        ``(v, s)``, each keyed ``"dW1"``, ``"db1"``, ... with zeros shaped like the parameters.

    Raises
    ------
    TypeError
        ``parameters`` not a dict, or a parameter that is not a float32/float64 ndarray
        (named), which no update takes.
    KeyError
        A layer's ``W`` or ``b`` missing (named).
    """
    return initialize_velocity(parameters), initialize_velocity(parameters)


def update_parameters_with_adam(parameters: ArrayDict, grads: ArrayDict, v: ArrayDict,
                                s: ArrayDict, t: int, learning_rate: float = 0.01,
                                beta1: float = 0.9, beta2: float = 0.999,
                                epsilon: float = 1e-8
                                ) -> tuple[ArrayDict, ArrayDict, ArrayDict, ArrayDict, ArrayDict]:
    """One step of Adam with bias correction for every layer.

    With ``t`` the step count (from 1)::

        v = beta1 * v + (1 - beta1) * dW
        s = beta2 * s + (1 - beta2) * dW**2
        W = W - learning_rate * (v / (1 - beta1**t)) / (sqrt(s / (1 - beta2**t)) + epsilon)

    Parameters
    ----------
    parameters : dict of ndarray
        ``W1, b1, ..., WL, bL``, float arrays updated in place.
    grads : dict of ndarray
        ``dW1, db1, ...``, shaped like the parameters.
    v, s : dict of ndarray
        First and second moment averages keyed ``dW1, db1, ...`` (updated in place).
    t : int
        The step count, from 1.
    learning_rate : float, default 0.01
        Step size, >= 0.
    beta1, beta2 : float, default 0.9, 0.999
        Decay of ``v`` and ``s``, each in [0, 1).
    epsilon : float, default 1e-8
        Added to the denominator, >= 0.

    Returns
    -------
    tuple
        ``(parameters, v, s, v_corrected, s_corrected)``, as the course's notebook returns
        them: the first three updated in place, the bias-corrected moments
        ``v / (1 - beta1**t)`` and ``s / (1 - beta2**t)`` new dicts keyed ``dW1, db1, ...``.

    Raises
    ------
    KeyError
        A parameter, grad or state array missing (named).
    TypeError
        A parameter that is not a float32/float64 ndarray, or a grad or state array that is
        not an ndarray of its parameter's dtype (named).
    ValueError
        A grad or state array of another shape than its parameter, a read-only parameter or
        state array, or two arrays of a layer that overlap (named), or a hyper-parameter (``t``
        included) out of range.

    Every layer's arrays are checked before any is updated: a call that raises changes
    nothing.
    """
    _check_t(t)
    _update(ops.foreach_adam_step_, parameters, grads, {"v": v, "s": s}, step=t,
            lr=learning_rate, betas=(beta1, beta2), eps=epsilon)
    # the notebook's bias-corrected moments (its tests check them; its model() drops them),
    # with the corrections folded in Python floats, as the kernels fold them: a NumPy float64
    # (a t from np.arange, a NumPy beta) would turn float32 moments float64, and a float32
    # beta would fold in float32, and so would a float32 t (Python's float ** np.float32 is
    # a np.float32)
    correction1, correction2 = (1.0 - float(beta) ** float(t) for beta in (beta1, beta2))
    # over the layers only, and overflowing to inf or underflowing silently as the kernels
    # do: the update is done, nothing may raise now
    keys = ["d" + name for name in _names(parameters)]
    with np.errstate(over="ignore", under="ignore"):
        v_corrected = {key: v[key] / correction1 for key in keys}
        s_corrected = {key: s[key] / correction2 for key in keys}
    return parameters, v, s, v_corrected, s_corrected


def update_lr(learning_rate0: float, epoch_num: int, decay_rate: float) -> float:
    """Inverse-time decay: ``learning_rate0 / (1 + decay_rate * epoch_num)``.

    Parameters
    ----------
    learning_rate0 : float
        The learning rate at epoch 0, >= 0.
    epoch_num : int
        The epoch, >= 0.
    decay_rate : float
        Decay per epoch, >= 0.

    Returns
    -------
    float
        The decayed learning rate.

    Raises
    ------
    TypeError
        An argument that is not a real number (named).
    ValueError
        An argument < 0, or an infinite ``learning_rate0`` or ``decay_rate`` (NaN
        included; named).
    """
    check_reals(learning_rate0=(learning_rate0, FINITE), epoch_num=(epoch_num, COUNT),
                decay_rate=(decay_rate, FINITE))      # (under the course's names)
    return schedules._CoursesInverseTimeDecay(learning_rate0, decay_rate)(epoch_num)


def schedule_lr_decay(learning_rate0: float, epoch_num: int, decay_rate: float,
                      time_interval: int = 1000) -> float:
    """Inverse-time decay in steps, every ``time_interval`` epochs.

    ``learning_rate0 / (1 + decay_rate * floor(epoch_num / time_interval))``.

    Parameters
    ----------
    learning_rate0 : float
        The learning rate at epoch 0, >= 0.
    epoch_num : int
        The epoch, >= 0.
    decay_rate : float
        Decay per interval, >= 0.
    time_interval : int, default 1000
        Epochs per step of the decay, >= 1 and finite.

    Returns
    -------
    float
        The decayed learning rate.

    Raises
    ------
    TypeError
        An argument that is not a real number (named).
    ValueError
        An argument < 0, an infinite ``learning_rate0``, ``decay_rate`` or
        ``time_interval``, or ``time_interval`` < 1 (NaN included; named).
    """
    check_reals(learning_rate0=(learning_rate0, FINITE), epoch_num=(epoch_num, COUNT),
                decay_rate=(decay_rate, FINITE), time_interval=(time_interval, EVERY))
    # the inverse-time decay of the intervals completed
    try:
        intervals = float(np.floor(epoch_num / time_interval))
    except OverflowError:       # an int epoch_num past the float range: the limit
        intervals = math.inf
    return schedules._CoursesInverseTimeDecay(learning_rate0, decay_rate)(intervals)


__all__ = ["update_parameters_with_gd", "random_mini_batches", "initialize_velocity",
           "update_parameters_with_momentum", "initialize_adam", "update_parameters_with_adam",
           "update_lr", "schedule_lr_decay"]
