"""Learning-rate decay schedules: functions of the epoch number returning a float.

Each factory returns ``fn(epoch) -> lr``; ``LRScheduler(opt, fn)`` applies one to an optimizer.
"""
import math
from collections.abc import Callable
from typing import Protocol

Schedule = Callable[[int], float]     # epoch -> learning rate


class HasLR(Protocol):
    """What :class:`LRScheduler` drives: an object whose ``lr`` can be set (every fastopt
    optimizer, :class:`fastopt.distributed.ShardedOptimizer`)."""

    @property
    def lr(self) -> float | list[float]: ...

    @lr.setter
    def lr(self, value: float) -> None: ...


def inverse_time_decay(lr0: float, decay_rate: float) -> Schedule:
    """``lr0 / (1 + decay_rate * epoch)`` (the course's ``update_lr``).

    Parameters
    ----------
    lr0 : float
        The learning rate at epoch 0.
    decay_rate : float
        Decay per epoch.

    Returns
    -------
    callable
        ``fn(epoch) -> float``.
    """
    return lambda epoch: lr0 / (1.0 + decay_rate * epoch)


def exponential_decay(lr0: float, base: float = 0.95) -> Schedule:
    """``lr0 * base**epoch``.

    Parameters
    ----------
    lr0 : float
        The learning rate at epoch 0.
    base : float, default 0.95
        Factor per epoch.

    Returns
    -------
    callable
        ``fn(epoch) -> float``.
    """
    return lambda epoch: lr0 * base ** epoch


def inverse_sqrt_decay(lr0: float, k: float = 1.0) -> Schedule:
    """``k * lr0 / sqrt(epoch)``, for ``epoch >= 1``.

    Parameters
    ----------
    lr0 : float
        The learning rate at epoch 1 (times ``k``).
    k : float, default 1.0
        Scale.

    Returns
    -------
    callable
        ``fn(epoch) -> float``.

    The returned function raises ``ValueError`` for ``epoch < 1``.
    """
    def fn(epoch: int) -> float:
        if epoch < 1:
            raise ValueError(f"inverse_sqrt_decay needs epoch >= 1, got {epoch!r}")
        return k * lr0 / math.sqrt(epoch)
    return fn


def staircase(lr0: float, factor: float, every: int) -> Schedule:
    """``lr0 * factor**(epoch // every)``: multiply by ``factor`` every ``every`` epochs.

    Parameters
    ----------
    lr0 : float
        The learning rate at epoch 0.
    factor : float
        Factor applied every ``every`` epochs.
    every : int
        Epochs per stair, >= 1.

    Returns
    -------
    callable
        ``fn(epoch) -> float``.

    Raises
    ------
    ValueError
        ``every < 1``.
    """
    if every < 1:
        raise ValueError(f"Invalid every: {every!r} (must be >= 1)")
    return lambda epoch: lr0 * factor ** (epoch // every)


class LRScheduler:
    """Set ``opt.lr = fn(epoch)`` on each :meth:`step`.

    ``step()`` without an argument advances the epoch counter, which starts at 0 (so the first
    call sets ``fn(0)``); ``step(epoch)`` sets that epoch.

    Parameters
    ----------
    opt : Optimizer
        Any object with an ``lr`` attribute (every fastopt optimizer; setting it sets every
        group's).
    fn : callable
        ``fn(epoch) -> lr``, e.g. one of this module's schedules.

    Examples
    --------
    >>> import numpy as np, fastopt as fo
    >>> opt = fo.SGD([np.zeros(3)], lr=0.1)
    >>> sched = LRScheduler(opt, exponential_decay(0.1, base=0.5))
    >>> sched.step(), sched.step()
    (0.1, 0.05)
    """

    def __init__(self, opt: HasLR, fn: Schedule) -> None:
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
        """
        self.epoch = self.epoch + 1 if epoch is None else epoch
        lr = self.fn(self.epoch)
        self.opt.lr = lr
        return lr

    def get_last_lr(self) -> float | list[float]:
        """The optimizer's current learning rate (a list if its groups differ)."""
        return self.opt.lr


__all__ = ["inverse_time_decay", "exponential_decay", "inverse_sqrt_decay", "staircase",
           "LRScheduler"]
