"""Argument checks shared by the Python-level backends (numba, numpy reference).

The Cython kernels do the common case in C (``_kernels/_elementwise.pxi``) and call these for the
rest, so the messages are the same; at 1e3 elements doing it all in Python would cost more than
the arithmetic.
"""
import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
FLOAT_TYPES = (np.float32, np.float64)


def check_float_array(name, a):
    """Raise TypeError unless ``a`` is a float32/float64 ndarray; return its dtype."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    return a.dtype


def check_kernel_array(name, a):
    """Raise TypeError unless ``a`` is an ndarray an element-wise kernel can update: float32 or
    float64 in either byte order (a storage detail: the values are the same), and not a
    ``np.matrix`` (whose ``*`` is a matrix product) nor a masked array (whose mask the compiled
    kernels could not honour)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if isinstance(a, (np.matrix, np.ma.MaskedArray)):
        raise TypeError(f"{name} must be a plain numpy.ndarray, got {type(a).__name__}")
    if a.dtype.type not in FLOAT_TYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")


def check_like(name, a, ref_name, ref):
    """Raise unless ``a`` is a kernel array (:func:`check_kernel_array`) with the shape and
    dtype of ``ref`` (the byte order may differ)."""
    check_kernel_array(name, a)
    if a.dtype.type is not ref.dtype.type:
        raise TypeError(f"{name} has dtype {a.dtype}, expected {ref.dtype} like {ref_name}")
    if a.shape != ref.shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {ref.shape} like {ref_name}")


def check_writeable(name, a):
    if not a.flags.writeable:
        raise ValueError(f"{name} is read-only; it is updated in place")


def check_step_arrays(arrays, names, nrequired):
    """Validate the arrays of one element-wise step, given in the kernels' order: the param
    (which sets the expected shape and dtype), the grad (the one array only read), then state.
    The first ``nrequired`` may not be None; None after them is optional state not in use.
    """
    for i in range(nrequired):
        if arrays[i] is None:
            raise TypeError(f"{names[i]} must be a numpy.ndarray, got NoneType")
    ref = arrays[0]
    check_kernel_array(names[0], ref)
    check_writeable(names[0], ref)
    for i in range(1, len(arrays)):
        if arrays[i] is not None:
            check_like(names[i], arrays[i], names[0], ref)
            if i != 1:
                check_writeable(names[i], arrays[i])
