"""Mini-batch iteration over paired arrays."""
import operator
from collections.abc import Iterator

import numpy as np
from numpy.typing import ArrayLike

from ._hyper import check_flag
from ._validate import as_examples, check_axis, renamed


def minibatches(X: ArrayLike, Y: ArrayLike, batch_size: int = 64, axis: int = 0,
                shuffle: bool = True, seed: int | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield the mini-batches of one epoch over paired arrays.

    Examples lie along ``axis`` of both arrays; they are shuffled in sync, and the last batch is
    smaller when ``batch_size`` does not divide the number of examples.

    Parameters
    ----------
    X, Y : array_like
        Inputs and targets with the same number of examples along ``axis`` (a 1-D ``Y``
        has them along its only axis, whatever ``axis`` is for ``X``).
    batch_size : int, default 64
        Examples per batch, >= 1.
    axis : int, default 0
        The examples' axis; ``axis=-1`` for the course's column layout.
    shuffle : bool, default True
        Shuffle the examples (the same permutation for ``X`` and ``Y``).
    seed : int or numpy.random.Generator, optional
        Seed of the shuffle (``numpy.random.default_rng``), for a repeatable order.

    Returns
    -------
    iterator of tuple
        ``(X_t, Y_t)``, one batch of each (copies).

    Raises
    ------
    TypeError
        A ``batch_size`` or an ``axis`` that is not an int, a ``shuffle`` that is not True
        or False, a ``seed`` that is a bool or that numpy cannot seed from, or an ``X`` or
        ``Y`` that is None, masked (its mask would be dropped) or an array-like that refuses
        conversion (a torch tensor that requires grad).
    ValueError
        A ``batch_size`` below 1, a ragged or 0-d ``X`` or ``Y``, an ``axis`` that ``X`` (or
        a ``Y`` of 2 or more dimensions) does not have, ``X`` and ``Y`` with different
        numbers of examples, or a negative ``seed``.

    Everything is checked (and the order drawn) when it is called, not at the first ``next``.
    """
    X, Y = as_examples("X", X), as_examples("Y", Y)
    # (TypeError for a float, as for a float axis and as the course's random_mini_batches)
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"Invalid batch_size: {batch_size!r} (must be a positive int)")
    # a Python int: the batches' bounds in a NumPy int8 or uint8 wrapped past 127 or 255
    # (np.uint8(100) over 300 examples gave batches of 100, 100 and 0)
    batch_size = operator.index(batch_size)
    axis = check_axis(axis)
    check_flag("shuffle", shuffle)
    for name, a in (("X", X), ("Y", Y)):
        if a.ndim == 0:
            raise ValueError(f"{name} must have at least 1 dimension (the examples'), got a "
                             "0-d array")
    if not -X.ndim <= axis < X.ndim:
        raise ValueError(f"Invalid axis {axis} for X of shape {X.shape}")
    m = X.shape[axis]
    # a 1-D Y has one axis: its examples lie along it whatever X's axis is (the course's
    # (n_x, m) inputs with 1-D labels, axis=1 or -1); otherwise Y's axis is X's
    if Y.ndim == 1:
        y_axis = 0
    elif -Y.ndim <= axis < Y.ndim:
        y_axis = axis % Y.ndim
    else:
        raise ValueError(f"Invalid axis {axis} for Y of shape {Y.shape} (the examples lie "
                         "along the same axis of X and Y, or along a 1-D Y)")
    if Y.shape[y_axis] != m:
        raise ValueError(f"X has {m} examples along axis {axis} but Y has {Y.shape[y_axis]}")
    # (numpy seeds from a bool as from 0 or 1: refused, as every bool argument but shuffle)
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"Invalid seed: {seed!r} (a bool; give an int, a numpy Generator "
                        "or None)")
    try:        # (checked without shuffle too, as the docstring says every argument is)
        rng = np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise renamed(exc, f"Invalid seed: {seed!r} ({exc})") from None
    order = rng.permutation(m) if shuffle else np.arange(m)
    return _batches(X, Y, order, batch_size, axis, y_axis)


def _batches(X, Y, order, batch_size, axis, y_axis):
    """:func:`minibatches`' batches, once it has checked its arguments (a generator's body
    runs only at the first ``next``: the checks would have waited for it)."""
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield np.take(X, idx, axis=axis), np.take(Y, idx, axis=y_axis)


__all__ = ["minibatches"]
