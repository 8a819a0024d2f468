"""Learning-rate decay schedules: functions of the epoch number returning a float.

Each factory returns ``fn(epoch) -> lr``; ``LRScheduler(opt, fn)`` applies one to an optimizer.
"""
import math


def inverse_time_decay(lr0, decay_rate):
    """``lr0 / (1 + decay_rate * epoch)`` (the course's ``update_lr``)."""
    return lambda epoch: lr0 / (1.0 + decay_rate * epoch)


def exponential_decay(lr0, base=0.95):
    """``lr0 * base**epoch``."""
    return lambda epoch: lr0 * base ** epoch


def inverse_sqrt_decay(lr0, k=1.0):
    """``k * lr0 / sqrt(epoch)`` for ``epoch >= 1``."""
    def fn(epoch):
        if epoch < 1:
            raise ValueError(f"inverse_sqrt_decay needs epoch >= 1, got {epoch!r}")
        return k * lr0 / math.sqrt(epoch)
    return fn


def staircase(lr0, factor, every):
    """``lr0 * factor**(epoch // every)``: multiply by ``factor`` every ``every`` epochs."""
    if every < 1:
        raise ValueError(f"Invalid every: {every!r} (must be >= 1)")
    return lambda epoch: lr0 * factor ** (epoch // every)


class LRScheduler:
    """Set ``opt.lr = fn(epoch)`` on each ``step()``.

    ``step()`` without an argument advances the epoch counter, which starts at 0 (so the first
    call sets ``fn(0)``); ``step(epoch)`` sets that epoch.
    """

    def __init__(self, opt, fn):
        self.opt = opt
        self.fn = fn
        self.epoch = -1

    def step(self, epoch=None):
        self.epoch = self.epoch + 1 if epoch is None else epoch
        lr = self.fn(self.epoch)
        self.opt.lr = lr
        return lr

    def get_last_lr(self):
        return self.opt.lr


__all__ = ["inverse_time_decay", "exponential_decay", "inverse_sqrt_decay", "staircase",
           "LRScheduler"]
