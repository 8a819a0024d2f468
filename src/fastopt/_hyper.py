"""Hyper-parameter checks shared by :mod:`fastopt.ops` and the optimizer classes.

A hyper-parameter is a real number: a Python or NumPy int or float, or a 0-d array of one (what
NumPy code hands around as a scalar). Anything else (None, a str, a bool -- ``lr=True`` is a
bug, not a learning rate of 1 --, a complex number, an array of another shape or dtype) is a
``TypeError`` naming it and what it got. Out of its range (NaN is out of every range) it is a
``ValueError`` naming it and showing the value. Options (``maximize``, ``nesterov``, ...) are
``True``/``False``. The ranges are torch.optim's.

``fastopt.ops`` tests the common case with a few chained comparisons and calls these only when
they fail, to raise the error with the argument's name (so its calls stay cheap); what the
comparisons let through (a size-1 array, a NumPy complex, a bool, an option that is not
True/False) the backends refuse through :func:`as_real` and :func:`as_flag`, and
``fastopt.ops`` names it.
"""
import decimal
import math
import numbers
from collections.abc import Mapping, Set

import numpy as np

NONNEG = (0.0, None, False)     # [0, inf]
FINITE = (0.0, math.inf, True)  # [0, inf)
UNIT_OPEN = (0.0, 1.0, True)    # [0, 1)
UNIT = (0.0, 1.0, False)        # [0, 1]
STEP = (1.0, None, False)       # step counts start at 1
BETAS = None                    # a pair in [0, 1), see check_betas


class Count(tuple):
    """The bounds of a count of epochs (``Count(NONNEG)``): an int past the float range is
    taken, its arithmetic being exact (``epoch // every``) or having a limit there."""


COUNT = Count(NONNEG)           # an epoch: [0, inf], any int
EVERY = Count((1.0, math.inf, True))  # epochs per stair or interval: [1, inf), any int


def check_real(name, value, bounds=NONNEG):
    """Raise unless ``value`` is a real number in ``bounds`` = (lo, hi or None, hi open) and,
    unless ``bounds`` is a :class:`Count`, within the float range (it ends up a float: an int
    past the range passed the bounds and was refused by a kernel at the first step, under
    the kernel's name)."""
    check_real_type(name, value)
    lo, hi, hi_open = bounds
    ok = value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        if hi is None:
            bound = f">= {lo:g}"
        else:
            bound = f"in [{lo:g}, {hi:g}{')' if hi_open else ']'}"
        if name == "step":
            bound += ", the step count starts at 1"
        raise ValueError(f"Invalid {name}: {_shown(value)} (must be {bound})")
    if type(value) is not float and not isinstance(bounds, Count):
        _to_float(name, value)


def _to_float(name, value):
    """``float(value)``; ValueError naming ``name`` for a value past the float range (an int
    or a Fraction, which float() raised OverflowError for, naming nothing)."""
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"Invalid {name}: {_shown(value)} (must be within the float "
                         "range)") from None


def _shown(value):
    """``repr(value)``, but an int of more than 70 bits as a float's ``g`` would show it,
    ``1e+400`` (its repr spelt every digit, and raised ValueError naming nothing past
    sys.get_int_max_str_digits())."""
    if isinstance(value, int) and value.bit_length() > 70:
        return format(_SIX_DIGITS.create_decimal(value).normalize(_SIX_DIGITS), "g")
    return repr(value)


# (a float's "g": six significant digits; any int's exponent)
_SIX_DIGITS = decimal.Context(prec=6, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


def check_real_type(name, value):
    """Raise TypeError unless ``value`` is a real number (its range unchecked)."""
    if isinstance(value, np.ndarray):
        if value.shape != () or value.dtype.kind not in "iuf":
            got = (f"an array of shape {value.shape}" if value.shape != ()
                   else f"a 0-d array of dtype {value.dtype}")
            raise TypeError(f"Invalid {name}: {value!r} (must be a real number, got {got})")
    elif (isinstance(value, (bool, np.timedelta64))     # (np.bool_ is not a Real; NumPy's
          or not isinstance(value, numbers.Real)):      # timedelta64 is a signedinteger)
        raise TypeError(f"Invalid {name}: {value!r} (must be a real number, "
                        f"got {type(value).__name__})")


def check_betas(name, value):
    """Raise unless ``value`` is a pair of real numbers in [0, 1)."""
    check_pair(name, value)
    check_real(f"beta1 ({name}[0])", value[0], UNIT_OPEN)
    check_real(f"beta2 ({name}[1])", value[1], UNIT_OPEN)


def check_pair(name, value):
    """Raise unless ``value`` is a sequence of two items (which are not checked)."""
    # (a set or a dict has a length, but no order: a set raised "'set' object is not
    # subscriptable", naming nothing)
    if (isinstance(value, (str, bytes, Set, Mapping)) or not hasattr(value, "__len__")
            or isinstance(value, np.ndarray) and value.ndim != 1):
        unordered = ": a set has no order" if isinstance(value, Set) else ""
        raise TypeError(f"Invalid {name}: {value!r} (must be a pair of real numbers"
                        f"{unordered})")
    if len(value) != 2:
        raise ValueError(f"Invalid {name}: {value!r} (must be a pair of real numbers)")


def check_flag(name, value):
    """Raise TypeError unless ``value`` is True or False (Python or NumPy)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Invalid {name}: {value!r} (must be True or False)")


def check_reals(**checks):
    """``check_reals(lr=(lr, NONNEG), ...)``: :func:`check_real` on each, in order; a
    ``(betas, BETAS)`` entry is checked by :func:`check_betas`."""
    for name, (value, bounds) in checks.items():
        if bounds is BETAS:
            check_betas(name, value)
        else:
            check_real(name, value, bounds)


# The kernels' side: every backend takes a scalar that is a Python float, and an option that is
# True or False, as it is (the common case, tested first where it costs nothing: in C for the
# compiled kernels); anything else goes through these, which refuse what check_real and
# check_flag refuse (a size-1 array, a complex, a bool as a scalar; a str or an array as an
# option) with their messages, under the kernel's name for the argument. fastopt.ops catches
# that TypeError and raises its own, naming its argument (ops._refuse).

# NumPy's real scalar types and int: real numbers, taken without check_real_type's
# isinstance(value, numbers.Real), an ABC check that costs ~0.5 us
_PLAIN_REALS = frozenset([int] + [np.dtype(c).type for c in
                                  np.typecodes["AllInteger"] + np.typecodes["Float"]])


def as_real(name, value):
    """``value`` as a Python float if it is a real number (check_real_type), else TypeError;
    ValueError for one past the float range (an int or a Fraction, which float() raised
    OverflowError for, naming nothing)."""
    if not (isinstance(value, float) or type(value) in _PLAIN_REALS):
        check_real_type(name, value)
    return _to_float(name, value)


def as_flag(name, value):
    """``value`` as a Python bool if it is True or False (check_flag), else TypeError."""
    check_flag(name, value)
    return bool(value)

