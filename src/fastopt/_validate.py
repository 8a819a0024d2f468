"""Argument checks shared by the Python-level backends (numba, numpy reference).

The Cython kernels do the same checks in C (``_kernels/_common.pxi``) with the same messages,
because at 1e3 elements these checks would otherwise cost more than the arithmetic.
"""
import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_float_array(name, a):
    """Raise TypeError unless ``a`` is a float32/float64 ndarray; return its dtype."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    return a.dtype


def check_like(name, a, ref_name, ref):
    """Raise unless ``a`` is an ndarray with the shape and dtype of ``ref``."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {a.dtype}, expected {ref.dtype} like {ref_name}")
    if a.shape != ref.shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {ref.shape} like {ref_name}")


def check_writeable(name, a):
    if not a.flags.writeable:
        raise ValueError(f"{name} is read-only; it is updated in place")


def check_step_arrays(written, read):
    """Validate the arrays of one element-wise step.

    ``written`` and ``read`` are sequences of ``(name, array or None)``; the first written array
    (the parameter) sets the expected shape and dtype. ``None`` entries are optional state that
    is not in use and are skipped.
    """
    ref_name, ref = written[0]
    check_float_array(ref_name, ref)
    for name, a in written:
        if a is None:
            continue
        check_like(name, a, ref_name, ref)
        check_writeable(name, a)
    for name, a in read:
        if a is not None:
            check_like(name, a, ref_name, ref)
