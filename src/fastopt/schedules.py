"""Learning-rate decay schedules: functions of the epoch number returning a float.

Each factory returns ``fn(epoch) -> lr``; ``LRScheduler(opt, fn)`` applies one to an optimizer.
The functions returned are small module-level objects (not closures), so they, and a scheduler
using them, pickle and deepcopy with the optimizer (a checkpoint), and show their arguments.
"""
import math
import numbers
import sys
from collections.abc import Callable
from typing import Protocol

import numpy as np

from ._hyper import COUNT, EVERY, FINITE, Count, check_real

Schedule = Callable[[int], float]     # epoch -> learning rate


class HasLR(Protocol):
    """What :class:`LRScheduler` drives: an object whose ``lr`` can be set (every fastopt
    optimizer, :class:`fastopt.distributed.ShardedOptimizer`), or a torch optimizer
    (:class:`HasParamGroups`)."""

    @property
    def lr(self) -> float | list[float]:
        """The learning rate (a list if the param groups differ); setting it sets every
        group's."""

    @lr.setter
    def lr(self, value: float) -> None: ...


class HasParamGroups(Protocol):
    """A torch optimizer (``fastopt.torch``'s or ``torch.optim``'s), as :class:`LRScheduler`
    drives it: every group's ``"lr"`` set."""

    param_groups: list[dict]


def _torch_groups(opt):
    """``opt``'s param groups when the scheduler sets them (a torch optimizer, which has no
    ``lr``), else None (``opt.lr`` is set)."""
    return None if hasattr(opt, "lr") else opt.param_groups



def _python(x):
    """A checked real number as a Python int or float (a NumPy scalar or 0-d array's
    ``item()``): Python's arithmetic, not NumPy's (which warns on overflow)."""
    return x.item() if isinstance(x, (np.ndarray, np.generic)) else x


def _power(base, n):
    """``base ** n`` as a float (``base`` a float >= 0, ``n`` an int or a float >= 0, inf
    included), without raising: inf past the float range, 0.0 below it. (Python's float ``**``
    raises OverflowError for a result past the range or an int ``n`` past it.)"""
    try:
        return base ** n
    except OverflowError:
        return math.inf if base > 1.0 else 1.0 if base == 1.0 else 0.0


def _scaled_power(lr0, base, n):
    """``lr0 * base**n`` (``lr0`` and ``base`` floats >= 0, ``n`` as :func:`_power` takes it):
    0.0 for ``lr0`` 0 (whose power's inf was an overflow, not NaN). Where the power alone
    leaves the range of normal floats but the product need not (``lr0`` 1e-300, ``base``
    1e10, ``n`` 40: 1e100), the power is taken in three parts multiplied into ``lr0`` one by
    one: a finite nonzero product is within 2**2098 of ``lr0``, so each part (a third of
    that at most) and each partial product (between ``lr0`` and the product) is within the
    range (q66). An int ``n`` past the float range keeps its limit."""
    if not lr0:
        return 0.0
    power = _power(base, n)
    # (a subnormal power has lost digits: 0.1**323.5 reads 4.9e-324 for 3.2e-324; q67)
    if sys.float_info.min <= power < math.inf or base == 0.0 or n == math.inf:
        return lr0 * power
    try:            # (whole parts of a whole n: exact for a power of two)
        third = n // 3 if n == int(n) else n / 3
    except OverflowError:
        return lr0 * power
    for part in (third, third, n - 2 * third):
        lr0 *= _power(base, part)
    return lr0


class _Schedule:
    """A schedule's arguments, kept as attributes: pickled and copied by value, compared and
    shown by them (``exponential_decay(lr0=0.1, base=0.5)``). Each is checked (a real number
    in its range, else TypeError/ValueError naming it) and kept as a Python float, except
    ``every``, so that NumPy scalars do not set the precision of the arithmetic (a float32
    ``lr0`` would compute in float32). They are finite (an infinite ``lr0`` or factor made
    NaNs: ``inf * 0.0`` once a power underflowed). ``__call__`` returns a Python float for
    any epoch >= 0 without raising or warning: the formula's value, inf past the float range
    and 0.0 below it, the limit for an epoch of inf or an int past the float range; the epoch
    is made a Python number first, so NumPy's overflow warnings do not arise."""

    _name = ""
    _fields: tuple[str, ...] = ()
    _epochs = COUNT         # the epochs the formula takes (checked, named, by __call__)

    def __init__(self, *args) -> None:
        for field, value in zip(self._fields, args):
            setattr(self, field, value)

    def __setattr__(self, name, value) -> None:
        # checked when set later too (``fn.decay_rate = -3`` had made negative rates, as
        # ``fn.lr0 = nan`` NaN ones): as an optimizer's hyper-parameters and EWA's beta
        if name in self._fields:
            check_real(name, value, EVERY if name == "every" else FINITE)
            value = _python(value)
            if name != "every":
                value = float(value)
        object.__setattr__(self, name, value)

    def __setstate__(self, state) -> None:
        # (an unpickled or copied schedule's arguments are checked as set ones: one
        # pickled by an older version after a bad set had loaded and made negative rates)
        for name, value in state.items():
            setattr(self, name, value)

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{self._name}({args})"

    def __eq__(self, other) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields)

    def __hash__(self) -> int:
        return hash((type(self), tuple(getattr(self, f) for f in self._fields)))

    def __call__(self, epoch: int) -> float:
        check_real("epoch", epoch, self._epochs)
        return float(self._lr(_python(epoch)))

    def _lr(self, epoch):
        """The schedule's formula, for a checked epoch."""
        raise NotImplementedError


class _InverseTimeDecay(_Schedule):
    """``lr0 / (1 + decay_rate * epoch)``: what :func:`inverse_time_decay` returns."""

    _name, _fields = "inverse_time_decay", ("lr0", "decay_rate")

    def _lr(self, epoch):
        if not self.decay_rate:
            return self.lr0             # (0 * inf is NaN at epoch inf)
        try:
            denominator = 1.0 + self.decay_rate * epoch
        except OverflowError:           # an int epoch past the float range: the limit
            return 0.0
        if denominator == math.inf and epoch != math.inf:
            # decay_rate * epoch past the float range, the quotient perhaps not (0.1 / (10 *
            # 1e308) is 1e-310; q66): the 1 is below its rounding there
            return self.lr0 / self.decay_rate / epoch
        return self._divided(self.lr0, denominator)

    @staticmethod
    def _divided(lr0, denominator):
        """``lr0 / denominator`` in this schedule's order (the course's subclass has its own)."""
        return lr0 / denominator


class _CoursesInverseTimeDecay(_InverseTimeDecay):
    """The course's ``update_lr``, in its order, ``1 / (1 + decay_rate * epoch) * lr0``: the
    rates the course prints show that order's rounding (0.020000000000000004 where
    ``lr0 / (...)`` gives 0.02)."""

    @staticmethod
    def _divided(lr0, denominator):
        return 1.0 / denominator * lr0


class _ExponentialDecay(_Schedule):
    """``lr0 * base**epoch``: what :func:`exponential_decay` returns."""

    _name, _fields = "exponential_decay", ("lr0", "base")

    def _lr(self, epoch):
        return _scaled_power(self.lr0, self.base, epoch)


class _InverseSqrtDecay(_Schedule):
    """``k * lr0 / sqrt(epoch)`` for epoch >= 1: what :func:`inverse_sqrt_decay` returns."""

    _name, _fields = "inverse_sqrt_decay", ("lr0", "k")
    # (checked against COUNT, a negative epoch was refused as 'must be >= 0', and 0.5 passed
    # to the formula's own check)
    _epochs = Count((1.0, None, False))     # [1, inf], any int

    def __call__(self, epoch: int) -> float:
        try:
            return super().__call__(epoch)
        except ValueError as exc:
            if not 0 <= epoch < 1:
                raise
            # LRScheduler's count starts at 0: say how to drive this schedule with it
            raise ValueError(f"{exc}: {self!r} has no value below epoch 1, where "
                             "LRScheduler.step() starts counting (at 0): step it with "
                             "step(epoch) from 1, or wrap it, lambda e: fn(e + 1)") from None

    def _lr(self, epoch):
        if epoch == math.inf:
            return 0.0                  # the limit (k * lr0 / inf, which is NaN for inf / inf)
        try:
            root = math.sqrt(epoch)
        except OverflowError:           # an int epoch past the float range: the limit
            return 0.0
        scaled = self.k * self.lr0
        # (k * lr0 past the float range, the quotient perhaps not: 1e300 * 1e10 / 1e10; q66)
        return scaled / root if scaled != math.inf else self.k * (self.lr0 / root)


class _Staircase(_Schedule):
    """``lr0 * factor**(epoch // every)``: what :func:`staircase` returns."""

    _name, _fields = "staircase", ("lr0", "factor", "every")

    def _lr(self, epoch):
        try:        # (inf // every is NaN)
            stairs = epoch // self.every if epoch != math.inf else math.inf
        except OverflowError:           # an int epoch past the float range: the limit
            stairs = math.inf
        return _scaled_power(self.lr0, self.factor, stairs)


def inverse_time_decay(lr0: float, decay_rate: float) -> Schedule:
    """``lr0 / (1 + decay_rate * epoch)`` (the course's ``update_lr``, which
    :func:`fastopt.course.update_lr` computes in the course's order).

    Parameters
    ----------
    lr0 : float
        The learning rate at epoch 0, >= 0.
    decay_rate : float
        Decay per epoch, >= 0.

    Returns
    -------
    callable
        ``fn(epoch) -> float`` (picklable; its repr shows the arguments).

    Raises
    ------
    TypeError
        An argument that is not a real number (named).
    ValueError
        An argument < 0 or infinite (NaN included; named).

    The returned function raises ``TypeError``/``ValueError`` for an epoch that is not a real
    number >= 0.
    """
    return _InverseTimeDecay(lr0, decay_rate)


def exponential_decay(lr0: float, base: float = 0.95) -> Schedule:
    """``lr0 * base**epoch``.

    Parameters
    ----------
    lr0 : float
        The learning rate at epoch 0, >= 0.
    base : float, default 0.95
        Factor per epoch, >= 0.

    Returns
    -------
    callable
        ``fn(epoch) -> float`` (picklable; its repr shows the arguments).

    Raises
    ------
    TypeError
        An argument that is not a real number (named).
    ValueError
        An argument < 0 or infinite (NaN included; named).

    The returned function raises ``TypeError``/``ValueError`` for an epoch that is not a real
    number >= 0.
    """
    return _ExponentialDecay(lr0, base)


def inverse_sqrt_decay(lr0: float, k: float = 1.0) -> Schedule:
    """``k * lr0 / sqrt(epoch)``, for ``epoch >= 1``.

    The formula has no value at epoch 0, where :class:`LRScheduler`'s count starts: drive it
    with ``step(epoch)`` from 1, or wrap it (``lambda e: fn(e + 1)``).

    Parameters
    ----------
    lr0 : float
        The learning rate at epoch 1 (times ``k``), >= 0.
    k : float, default 1.0
        Scale, >= 0.

    Returns
    -------
    callable
        ``fn(epoch) -> float`` (picklable; its repr shows the arguments).

    Raises
    ------
    TypeError
        An argument that is not a real number (named).
    ValueError
        An argument < 0 or infinite (NaN included; named).

    The returned function raises ``TypeError``/``ValueError`` for an epoch that is not a real
    number >= 1.
    """
    return _InverseSqrtDecay(lr0, k)


def staircase(lr0: float, factor: float, every: int) -> Schedule:
    """``lr0 * factor**(epoch // every)``: multiply by ``factor`` every ``every`` epochs.

    Parameters
    ----------
    lr0 : float
        The learning rate at epoch 0, >= 0.
    factor : float
        Factor applied every ``every`` epochs, >= 0.
    every : int
        Epochs per stair, >= 1.

    Returns
    -------
    callable
        ``fn(epoch) -> float`` (picklable; its repr shows the arguments).

    Raises
    ------
    TypeError
        An argument that is not a real number (named).
    ValueError
        An argument < 0 or infinite, or ``every < 1`` (NaN included; named).

    The returned function raises ``TypeError``/``ValueError`` for an epoch that is not a real
    number >= 0.
    """
    return _Staircase(lr0, factor, every)


def _set_torch_lrs(groups, lr):
    """Set every group's lr to ``lr``, a tensor lr filled in place (as torch's schedulers set
    them), or none: where a later group's lr refuses it (``fill_`` on a leaf that requires
    grad or a view of one, an inference tensor), the groups set before it are set back before
    the error is raised. Refused first: an integer tensor lr, which would hold the value
    truncated (0.5 as 0, the scheduler's step returning 0.5), and an inference tensor outside
    inference mode, whose ``fill_`` raises after writing."""
    for i, group in enumerate(groups):
        value = group["lr"]
        if not hasattr(value, "fill_"):
            continue
        if not value.is_floating_point():
            raise TypeError(f"param group {i}'s lr is a tensor of {value.dtype}, which would "
                            "hold a scheduled lr truncated: make it a floating-point tensor")
        if value.is_inference() and not sys.modules["torch"].is_inference_mode_enabled():
            raise RuntimeError(f"param group {i}'s lr is an inference tensor (made under "
                               "torch.inference_mode()), which torch does not let be updated "
                               "in place outside inference mode: make it outside")
    done = []       # (group, the lr it had: a copy of a tensor's value), before it is set
    try:
        for i, group in enumerate(groups):
            value = group["lr"]
            if hasattr(value, "fill_"):
                done.append((group, value.detach().clone()))
                try:
                    value.fill_(lr)
                except RuntimeError as exc:     # (a leaf that requires grad, or a view of one)
                    raise RuntimeError(f"param group {i}'s lr tensor cannot be set in place: "
                                       f"{exc}") from exc
            else:
                done.append((group, value))
                group["lr"] = lr
    except BaseException:
        # (an interrupt may come between a fill_ and the next line: each is set back if it
        # changed, NaN for NaN; one whose fill_ raised did not, and would refuse a copy_ too)
        for group, before in reversed(done):
            value = group["lr"]
            if not hasattr(value, "fill_"):
                group["lr"] = before
            elif not bool(((value == before) | (value.isnan() & before.isnan())).all()):
                value.copy_(before)
        raise


class LRScheduler:
    """Set ``opt.lr = fn(epoch)`` on each :meth:`step`.

    ``step()`` without an argument advances the epoch counter, which starts at 0 (so the first
    call sets ``fn(0)``); ``step(epoch)`` sets that epoch. Call it at the start of each epoch, so
    that epoch e trains with ``fn(e)`` (a torch scheduler sets epoch 0's lr when it is made, and
    is stepped at the end of each epoch). Every param group gets the same lr (``opt.lr``); for
    groups with lrs of their own, set each ``group["lr"]``. A step that raises (in ``fn`` or in
    the optimizer's ``lr`` setter) leaves the epoch and the learning rate as they were. A
    scheduler whose ``fn`` is one of this module's schedules pickles (with its optimizer), and
    :meth:`state_dict` holds its epoch for a checkpoint (as torch's schedulers).

    Parameters
    ----------
    opt : Optimizer
        Any object with an ``lr`` attribute (every fastopt optimizer; setting it sets every
        group's), or with torch's ``param_groups`` (a ``fastopt.torch`` or ``torch.optim``
        optimizer: every group's ``"lr"`` is set, a tensor lr filled in place, as torch's
        schedulers do).
    fn : callable
        ``fn(epoch) -> lr``, e.g. one of this module's schedules.

    Raises
    ------
    TypeError
        ``opt`` without an ``lr`` or ``param_groups``, or ``fn`` not callable.

    Examples
    --------
    >>> import numpy as np, fastopt as fo
    >>> opt = fo.SGD([np.zeros(3)], lr=0.1)
    >>> from fastopt.schedules import LRScheduler, exponential_decay
    >>> sched = LRScheduler(opt, exponential_decay(0.1, base=0.5))
    >>> sched.step(), sched.step()
    (0.1, 0.05)
    """

    def __init__(self, opt: HasLR | HasParamGroups, fn: Schedule) -> None:
        if not (hasattr(opt, "lr") or hasattr(opt, "param_groups")):
            raise TypeError(f"opt must be an optimizer (with an lr to set, or torch's "
                            f"param_groups), got {type(opt).__name__}")
        if not callable(fn):
            raise TypeError(f"fn must be callable (epoch -> lr), got {type(fn).__name__}")
        self.opt = opt
        self.fn = fn
        self.epoch = -1

    def step(self, epoch: float | None = None) -> float:
        """Advance to the next epoch (or to ``epoch``) and set the optimizer's lr.

        Parameters
        ----------
        epoch : int or float, optional
            The epoch to set (any number ``fn`` takes); by default the one after the last.

        Returns
        -------
        float
            The learning rate set.

        A call that raises (in ``fn``, in the optimizer's ``lr`` setter, or on a torch
        optimizer's tensor lr that cannot take the value: an integer one, or one that refuses
        ``fill_``) changes nothing: the epoch is set only once the learning rate is.
        """
        epoch = self.epoch + 1 if epoch is None else epoch
        if isinstance(epoch, numbers.Real) and math.isnan(epoch):
            raise ValueError("epoch is NaN")
        lr = self.fn(epoch)
        groups = _torch_groups(self.opt)
        if groups is None:
            self.opt.lr = lr
        else:       # a torch optimizer's groups, as torch's schedulers set them, once the lr
            check_real("lr", lr)    # is one fastopt's setter takes (torch's would step a NaN)
            _set_torch_lrs(groups, lr)
        self.epoch = _python(epoch)     # a plain number, as load_state_dict takes it back
        return lr

    def state_dict(self) -> dict:
        """``{"epoch": the last epoch set}`` (-1 before the first step), for a checkpoint beside
        the optimizer's own (which holds the lr)."""
        return {"epoch": self.epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume from :meth:`state_dict`: the next ``step()`` sets the epoch after the saved
        one. The optimizer's lr is left alone (its own state dict restores it).

        Parameters
        ----------
        state_dict : dict
            ``{"epoch": number}``, as :meth:`state_dict` returns: any epoch :meth:`step` set
            (a float or negative one too, if ``fn`` took it; as torch's schedulers, which keep
            ``last_epoch`` as given).

        Raises
        ------
        TypeError
            ``state_dict`` is not a dict, or its epoch is not a real number.
        ValueError
            No ``"epoch"`` in it, or it is NaN.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict (from state_dict()), got "
                            f"{type(state_dict).__name__}")
        if "epoch" not in state_dict:
            raise ValueError("state_dict has no 'epoch' (make it with LRScheduler.state_dict())")
        epoch = state_dict["epoch"]
        if isinstance(epoch, np.ndarray) and epoch.ndim == 0:     # (as step() takes it)
            epoch = epoch[()]
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Real):
            raise TypeError(f"state_dict['epoch'] must be a number (an epoch step() set), got "
                            f"{type(epoch).__name__}")
        if epoch != epoch:
            raise ValueError("state_dict['epoch'] is NaN (no step() sets it)")
        self.epoch = _python(epoch)

    def get_last_lr(self) -> float | list[float]:
        """The optimizer's current learning rate (a list if its groups differ)."""
        groups = _torch_groups(self.opt)
        if groups is None:
            return self.opt.lr
        lrs = [float(group["lr"]) for group in groups]
        return lrs[0] if len(set(lrs)) == 1 else lrs


__all__ = ["inverse_time_decay", "exponential_decay", "inverse_sqrt_decay", "staircase",
           "LRScheduler", "HasLR", "HasParamGroups"]
