"""Learning-rate decay schedules: functions of the epoch number returning a float.

Each factory returns ``fn(epoch) -> lr``; ``LRScheduler(opt, fn)`` applies one to an optimizer.
The functions returned are small module-level objects (not closures), so they, and a scheduler
using them, pickle and deepcopy with the optimizer (a checkpoint), and show their arguments.
"""
import math
from collections.abc import Callable
from typing import Protocol

from ._hyper import NONNEG, check_real

Schedule = Callable[[int], float]     # epoch -> learning rate


class HasLR(Protocol):
    """What :class:`LRScheduler` drives: an object whose ``lr`` can be set (every fastopt
    optimizer, :class:`fastopt.distributed.ShardedOptimizer`)."""

    @property
    def lr(self) -> float | list[float]: ...

    @lr.setter
    def lr(self, value: float) -> None: ...


_EVERY = (1.0, None, False)     # staircase's epochs per stair


class _Schedule:
    """A schedule's arguments, kept as attributes: pickled and copied by value, compared and
    shown by them (``exponential_decay(lr0=0.1, base=0.5)``). Each is checked (a real number
    in its range, else TypeError/ValueError naming it) and kept as a Python float, except
    ``every``, so that NumPy scalars do not set the precision of the arithmetic (a float32
    ``lr0`` would compute in float32); ``__call__`` returns a Python float, whatever the
    epoch's type."""

    _name = ""
    _fields: tuple[str, ...] = ()

    def __init__(self, *args) -> None:
        for field, value in zip(self._fields, args):
            check_real(field, value, _EVERY if field == "every" else NONNEG)
            setattr(self, field, value if field == "every" else float(value))

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
        check_real("epoch", epoch, NONNEG)
        return float(self._lr(epoch))

    def _lr(self, epoch):
        """The schedule's formula, for a checked epoch."""
        raise NotImplementedError


class _InverseTimeDecay(_Schedule):
    """``lr0 / (1 + decay_rate * epoch)``: what :func:`inverse_time_decay` returns."""

    _name, _fields = "inverse_time_decay", ("lr0", "decay_rate")

    def _lr(self, epoch):
        return self.lr0 / (1.0 + self.decay_rate * epoch)


class _ExponentialDecay(_Schedule):
    """``lr0 * base**epoch``: what :func:`exponential_decay` returns."""

    _name, _fields = "exponential_decay", ("lr0", "base")

    def _lr(self, epoch):
        return self.lr0 * self.base ** epoch


class _InverseSqrtDecay(_Schedule):
    """``k * lr0 / sqrt(epoch)`` for epoch >= 1: what :func:`inverse_sqrt_decay` returns."""

    _name, _fields = "inverse_sqrt_decay", ("lr0", "k")

    def _lr(self, epoch):
        if not epoch >= 1:
            raise ValueError(f"inverse_sqrt_decay needs epoch >= 1, got {epoch!r}")
        return self.k * self.lr0 / math.sqrt(epoch)


class _Staircase(_Schedule):
    """``lr0 * factor**(epoch // every)``: what :func:`staircase` returns."""

    _name, _fields = "staircase", ("lr0", "factor", "every")

    def _lr(self, epoch):
        return self.lr0 * self.factor ** (epoch // self.every)


def inverse_time_decay(lr0: float, decay_rate: float) -> Schedule:
    """``lr0 / (1 + decay_rate * epoch)`` (the course's ``update_lr``).

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
        An argument < 0 (NaN included; named).

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
        An argument < 0 (NaN included; named).

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
        An argument < 0 (NaN included; named).

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
        An argument < 0 or ``every < 1`` (NaN included; named).

    The returned function raises ``TypeError``/``ValueError`` for an epoch that is not a real
    number >= 0.
    """
    return _Staircase(lr0, factor, every)


class LRScheduler:
    """Set ``opt.lr = fn(epoch)`` on each :meth:`step`.

    ``step()`` without an argument advances the epoch counter, which starts at 0 (so the first
    call sets ``fn(0)``, as ``torch.optim.lr_scheduler`` counts epochs from 0); ``step(epoch)``
    sets that epoch. A step that raises (in ``fn`` or in the optimizer's ``lr`` setter) leaves
    the epoch and the learning rate as they were. A scheduler whose ``fn`` is one of this
    module's schedules pickles (with its optimizer).

    Parameters
    ----------
    opt : Optimizer
        Any object with an ``lr`` attribute (every fastopt optimizer; setting it sets every
        group's).
    fn : callable
        ``fn(epoch) -> lr``, e.g. one of this module's schedules.

    Raises
    ------
    TypeError
        ``opt`` without an ``lr``, or ``fn`` not callable.

    Examples
    --------
    >>> import numpy as np, fastopt as fo
    >>> opt = fo.SGD([np.zeros(3)], lr=0.1)
    >>> sched = LRScheduler(opt, exponential_decay(0.1, base=0.5))
    >>> sched.step(), sched.step()
    (0.1, 0.05)
    """

    def __init__(self, opt: HasLR, fn: Schedule) -> None:
        if not hasattr(opt, "lr"):
            raise TypeError(f"opt must have an lr to set (an optimizer), got {type(opt).__name__}")
        if not callable(fn):
            raise TypeError(f"fn must be callable (epoch -> lr), got {type(fn).__name__}")
        self.opt = opt
        self.fn = fn
        self.epoch = -1

    def step(self, epoch: int | None = None) -> float:
        """Advance to the next epoch (or to ``epoch``) and set the optimizer's lr.

        Parameters
        ----------
        epoch : int, optional
            The epoch to set; by default the one after the last.

        Returns
        -------
        float
            The learning rate set.

        A call that raises (in ``fn`` or in the optimizer's ``lr`` setter) changes nothing:
        the epoch is set only once the learning rate is.
        """
        epoch = self.epoch + 1 if epoch is None else epoch
        lr = self.fn(epoch)
        self.opt.lr = lr
        self.epoch = epoch
        return lr

    def get_last_lr(self) -> float | list[float]:
        """The optimizer's current learning rate (a list if its groups differ)."""
        return self.opt.lr


__all__ = ["inverse_time_decay", "exponential_decay", "inverse_sqrt_decay", "staircase",
           "LRScheduler"]
