"""Exponentially weighted averages, with the course's bias correction."""
import copy
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import ops
from ._hyper import UNIT_OPEN, check_flag, check_real
from ._validate import (FLOAT_TYPES, as_array, as_count, check_plain, check_state_keys,
                        check_unmasked, npz_item)


def _check_beta(beta: float) -> float:
    """``beta`` as a Python float, once it is a real number in [0, 1) (else TypeError or
    ValueError naming it): a NumPy float32 or float64 beta would otherwise set the precision
    of the arithmetic (float32 bias corrections; float32 averages turned float64)."""
    check_real("beta", beta, UNIT_OPEN)
    return float(beta)


def _real_array(x: ArrayLike) -> np.ndarray:
    """``x`` as an ndarray, once it is one of real numbers (else TypeError naming it)."""
    check_unmasked("x", x)
    x = as_array("x", x)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"x must be an array of real numbers, got dtype {x.dtype}")
    return x


def _average_dtype(x: np.ndarray) -> np.dtype:
    """float32 for float32 samples (in either byte order: the values are float32), else
    float64."""
    return np.dtype(x.dtype.type if x.dtype.type in FLOAT_TYPES else np.float64)


def ewa_series(x: ArrayLike, beta: float, bias_correction: bool = False) -> np.ndarray:
    """Exponentially weighted running average of a 1-D series.

    ``v_t = beta * v_{t-1} + (1 - beta) * x_t`` with ``v_0 = 0``, divided by ``1 - beta**t``
    when ``bias_correction``.

    Parameters
    ----------
    x : array_like
        The 1-D series.
    beta : float
        Weight of the past, in [0, 1).
    bias_correction : bool, default False
        Divide by ``1 - beta**t`` (the course's correction of the start).

    Returns
    -------
    ndarray
        ``v_1 .. v_n``: float32 for float32 input, else float64. In float32, ``beta`` and
        ``1 - beta`` are rounded to float32 apart and each step's update is a few float32
        ulps of ``v``, as in torch's ``mul_``/``add_`` form: with ``beta`` near 1 a long
        series drifts off its value (``beta`` 0.999999, a series of ones: 1.0033 after 1e6
        steps with the correction, 0.971 after 1e7); pass float64 for such a ``beta``.

    Raises
    ------
    TypeError
        ``beta`` not a real number, ``bias_correction`` not True or False, or ``x`` not an
        array of real numbers (strings, objects, complex numbers) or a masked array.
    ValueError
        ``beta`` outside [0, 1), or ``x`` ragged or not 1-D.
    """
    beta = _check_beta(beta)
    check_flag("bias_correction", bias_correction)
    x = _real_array(x)
    if x.ndim != 1:
        raise ValueError(f"x must be 1-D, got shape {x.shape}")
    dtype = _average_dtype(x)
    out = np.empty(x.shape, dtype)
    v = dtype.type(0.0)
    with np.errstate(all="ignore"):     # inf and NaN propagate silently, as in the kernels
        for t, xt in enumerate(x.astype(dtype, copy=False), start=1):
            v = beta * v + (1.0 - beta) * xt
            out[t - 1] = v / (1.0 - beta ** t) if bias_correction else v
    return out


_MAX_COUNT = 2 ** 53     # the largest count (as the optimizers' step counts: exact as a float)


def _count(name, t, avg, avg_name):
    """The count ``t`` (named ``name``) as an int, checked against the raw average ``avg``:
    0 exactly when there is none (an update makes both: a 0 beside an average had corrected
    it to inf, a count before any sample the first one), at most _MAX_COUNT (10**400 had
    raised an unnamed OverflowError in the correction, after update() folded in its sample)."""
    t = as_count(name, t)
    if t > _MAX_COUNT:
        raise ValueError(f"Invalid {name}: {t} (must be <= 2**53)")
    if (t == 0) != (avg is None):
        raise ValueError(f"{name} is {t} but {avg_name} is "
                         f"{'None' if avg is None else 'an array'}: an average has a "
                         "count of 0 exactly when it has no samples")
    return t


class EWA:
    """Running exponentially weighted average of arrays of a fixed shape.

    Each :meth:`update` folds in ``x``: ``avg = beta * avg + (1 - beta) * x``
    (:func:`fastopt.ops.ewa_`), starting from zero; :attr:`value` divides by ``1 - beta**t``
    when ``bias_correction``. :meth:`state_dict` and :meth:`load_state_dict` save and
    restore it for a checkpoint (``beta``, ``bias_correction``, ``t`` and the raw average,
    as plain values and a NumPy array).

    Parameters
    ----------
    beta : float
        Weight of the past, in [0, 1).
    bias_correction : bool, default True
        Correct the start's bias in :attr:`value`.

    Raises
    ------
    TypeError
        ``beta`` not a real number, or ``bias_correction`` not True or False.
    ValueError
        ``beta`` outside [0, 1).

    Examples
    --------
    >>> import fastopt as fo
    >>> avg = fo.EWA(beta=0.5)
    >>> avg.update([2.0, 4.0])
    array([2., 4.])
    >>> avg.update([4.0, 8.0])                      # (0.25 * 2 + 0.5 * 4) / 0.75
    array([3.33333333, 6.66666667])
    """

    def __init__(self, beta: float, bias_correction: bool = True) -> None:
        self.beta = _check_beta(beta)
        check_flag("bias_correction", bias_correction)
        self.bias_correction = bias_correction
        self.t = 0
        self._avg: np.ndarray | None = None

    def update(self, x: ArrayLike) -> np.ndarray:
        """Fold in ``x`` and return the current average (:attr:`value`).

        Parameters
        ----------
        x : array_like
            The new sample; its shape is fixed by the first call (its dtype too: float32 stays
            float32, anything else is float64).

        Returns
        -------
        ndarray
            The current average, bias-corrected if asked (a new array).

        Raises
        ------
        TypeError
            ``x`` not an array of real numbers (strings, objects, complex numbers), or a
            masked array; ``beta`` or ``bias_correction`` set since construction to what the
            constructor refuses, or ``t`` to what is not an int (named).
        ValueError
            ``x`` ragged or of another shape than the first sample, ``beta`` set outside
            [0, 1), ``t`` set below 0, past 2**53, to 0 after samples or to more before
            any, or an update past a count of 2**53.

        A call that raises changes nothing (a refused first sample fixes no shape); Ctrl-C
        raised as the compiled kernel returns keeps the sample and counts it.
        """
        # everything is checked and converted before the average is allocated or touched: a
        # refused update (even the first) changes nothing
        beta, bias_correction = self._checked()
        if self.t == _MAX_COUNT:
            raise ValueError("t is 2**53, the largest count: this average counts no further")
        x = _real_array(x)
        if self._avg is None:
            avg = np.zeros(x.shape, _average_dtype(x))
        elif x.shape != self._avg.shape:
            raise ValueError(f"x has shape {x.shape}, expected {self._avg.shape} "
                             "(fixed by the first update)")
        else:
            avg = self._avg
        if x.dtype != avg.dtype:    # past float32's range inf, below it 0: silently
            with np.errstate(over="ignore", under="ignore"):
                x = x.astype(avg.dtype)
        # the result's array too (a MemoryError once x was folded in left it counted, and a
        # retry folded it in twice)
        result = np.empty_like(avg)
        ops._calls.returned = False
        try:
            ops.ewa_(avg, x, beta)
        except BaseException as exc:
            # Ctrl-C (or what a signal handler raised) as the kernel returned (it runs without
            # the GIL, where no Python handler runs): the sample is in, so is its count (a bias
            # correction a step off, else)
            if ops._interrupted_kernel(exc):
                self._avg = avg
                self.t += 1
            raise
        self._avg = avg
        self.t += 1
        return self._current(avg, beta, bias_correction, result)

    def __copy__(self) -> "EWA":
        # the average is updated in place: a copy sharing it would fold its samples into ours
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        if self._avg is not None:
            new._avg = self._avg.copy()
        return new

    def state_dict(self) -> dict[str, Any]:
        """The average's state for a checkpoint: ``{"beta", "bias_correction", "t", "avg"}``,
        ``avg`` the raw average, not bias-corrected (a copy: later updates leave the dict as
        it is; None before the first update).

        Returns
        -------
        dict
            ``beta`` and ``bias_correction`` as the average holds them, the count and a copy
            of the average, which survive pickle and ``np.savez`` (a None ``avg`` as
            ``np.savez``'s object array, read back with ``allow_pickle=True``).
        """
        return {"beta": copy.deepcopy(self.beta),
                "bias_correction": copy.deepcopy(self.bias_correction),
                "t": copy.deepcopy(self.t),
                "avg": None if self._avg is None else self._avg.copy()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next updates are those of the average it was
        taken from, bit for bit.

        Everything is checked before anything changes; a refused state dict changes nothing.
        The average is copied (later updates leave the loaded dict as it is), and its shape
        and dtype are the state dict's. ``beta`` or ``bias_correction`` missing from it stay
        this average's own (as an optimizer's hyper-parameters missing from a saved group).

        Parameters
        ----------
        state_dict : dict
            ``{"t": int >= 0, "avg": float32 or float64 array or None}`` and optionally
            ``"beta"`` and ``"bias_correction"``, as :meth:`state_dict` returns; numbers and
            flags may be 0-d arrays (``np.savez`` gives every entry back as an array).

        Raises
        ------
        TypeError
            ``state_dict`` not a dict, or an entry of the wrong type or dtype (named).
        ValueError
            A missing or unknown key, a negative ``t``, a ``t`` of 0 with an average or of
            more without one, or a ``beta`` outside [0, 1) (NaN included).
        """
        check_state_keys("EWA", state_dict, ("t", "avg"), ("beta", "bias_correction", "t", "avg"))
        beta, bias_correction = self.beta, self.bias_correction
        if "beta" in state_dict:
            beta = npz_item(state_dict["beta"])
            check_real("state_dict['beta']", beta, UNIT_OPEN)
            beta = float(beta)      # (a NumPy beta folds as its Python float)
        if "bias_correction" in state_dict:
            bias_correction = npz_item(state_dict["bias_correction"])
            check_flag("state_dict['bias_correction']", bias_correction)
            bias_correction = bool(bias_correction)
        avg = state_dict["avg"]
        if npz_item(avg) is None:
            avg = None
        else:
            if not isinstance(avg, np.ndarray):
                raise TypeError(f"state_dict['avg'] must be a numpy.ndarray or None, got "
                                f"{type(avg).__name__}")
            check_plain("state_dict['avg']", avg)
            if avg.dtype.type not in FLOAT_TYPES:
                raise TypeError(f"state_dict['avg'] has dtype {avg.dtype}, expected float32 "
                                "or float64 (an average's dtype)")
            # a copy of our own, native and contiguous, which updates change in place
            avg = np.array(avg, dtype=avg.dtype.newbyteorder("="), order="C")
        t = _count("state_dict['t']", state_dict["t"], avg, "state_dict['avg']")
        self.beta, self.bias_correction, self.t, self._avg = beta, bias_correction, t, avg

    @property
    def value(self) -> np.ndarray | None:
        """The current average, bias-corrected if asked (None before the first update)."""
        return None if self._avg is None else self._current(self._avg, *self._checked())

    def _checked(self) -> tuple[float, bool]:
        """``beta`` and ``bias_correction`` checked as the constructor checks them, and the
        count ``t`` as :meth:`load_state_dict` does (any may have been set since, as an
        optimizer's hyper-parameters and step counts may): beta a Python float, t an int."""
        beta = self.beta
        if not (type(beta) is float and 0.0 <= beta < 1.0):    # (the common case: no ABC)
            beta = _check_beta(beta)
        if self.bias_correction is not True and self.bias_correction is not False:
            check_flag("bias_correction", self.bias_correction)
        t = self.t
        # (the common case without a call; anything else is _count's to accept or refuse)
        if not (type(t) is int and (0 < t <= _MAX_COUNT and self._avg is not None
                                    or t == 0 and self._avg is None)):
            self.t = _count("t", t, self._avg, "the average")
        return beta, bool(self.bias_correction)

    def _current(self, avg: np.ndarray, beta: float, bias_correction: bool,
                 out: np.ndarray | None = None) -> np.ndarray:
        """The average, corrected if asked, into ``out`` (a new array if None: a 0-d average
        stays an array)."""
        out = np.empty_like(avg) if out is None else out
        if bias_correction:
            # overflowing to inf or underflowing silently, as the kernels: update() has
            # already folded x in
            with np.errstate(over="ignore", under="ignore"):
                return np.divide(avg, 1.0 - beta ** self.t, out=out)
        np.copyto(out, avg)
        return out


__all__ = ["ewa_series", "EWA"]
