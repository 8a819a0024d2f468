"""16-bit floating-point formats: the definition of how fastopt widens and rounds them.

bfloat16 has no NumPy dtype: its values travel as their bit patterns (``uint16``; ``int16``
views are accepted), the top half of a float32. float16 is NumPy's own ``float16``.
Widening to float32 is exact; narrowing rounds to nearest, ties to even, overflows to
infinity and keeps subnormals, as torch's conversions do, so a parameter written back from its
float32 master copy has the bits ``master.to(torch.bfloat16)`` (or ``float16``) would give.

The 16-bit kernels (``fastopt._registry.HALF_KERNELS``: ``adam_half``, ``sgd_half``, ... made
here by :func:`_half_form` from the float32 kernels) step a float32 master copy from the
widened 16-bit grad and write it back rounded, in one sweep; the compiled backends give these
bits with integer arithmetic.
"""
import numpy as np

from .. import _registry
from .._validate import check_own_arrays, check_writeable
from . import optim

BFLOAT16_NAN = np.uint16(0x7FC0)    # every NaN becomes this quiet NaN (as torch's scalar path)


def _bits(a):
    if a.dtype not in (np.uint16, np.int16):
        raise TypeError(f"bfloat16 bits must be a uint16 or int16 array, got {a.dtype}")
    return a.view(np.uint16)


def bfloat16_to_float32(bits):
    """The float32 values of bfloat16 bit patterns (exact: the bits become the top half)."""
    wide = _bits(np.asarray(bits)).astype(np.uint32)
    wide <<= np.uint32(16)          # in place: a 0-d array stays an array
    return wide.view(np.float32)


def float32_to_bfloat16(x):
    """bfloat16 bit patterns (``uint16``) of float32 values, rounded to nearest even.

    Adding ``0x7FFF`` plus the lowest kept bit to the float32 bits and dropping the low 16
    rounds the magnitude to nearest with ties to even (a carry into the exponent is the
    correct round-up, up to infinity); NaN becomes ``0x7FC0`` as in torch's scalar conversion
    (its vectorized one may keep other NaN bits).
    """
    x = np.asarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    lsb = (u >> np.uint32(16)) & np.uint32(1)
    out = ((u + np.uint32(0x7FFF) + lsb) >> np.uint32(16)).astype(np.uint16)
    return np.where(np.isnan(x), BFLOAT16_NAN, out)


def float32_to_float16(x):
    """float16 values of float32 values: IEEE round to nearest even (NumPy's conversion, which
    overflows to infinity and keeps subnormals); NaN becomes its sign with ``0x7E00``, as in
    torch's conversion (NumPy's may keep other NaN bits)."""
    x = np.asarray(x, dtype=np.float32)
    out = x.astype(np.float16)
    sign = (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16) & np.uint16(0x8000)
    return np.where(np.isnan(x), (sign | np.uint16(0x7E00)).view(np.float16), out)


def float16_to_float32(half):
    """The float32 values of float16 values (exact; a NaN keeps its sign and payload, quiet or
    not, as the compiled kernels' integer widening does)."""
    bits = np.asarray(half).view(np.uint16).astype(np.uint32)
    wide = np.asarray(half).astype(np.float32)
    nan_bits = (((bits & np.uint32(0x8000)) << np.uint32(16)) | np.uint32(0x7F800000)
                | ((bits & np.uint32(0x3FF)) << np.uint32(13)))
    return np.where(np.isnan(wide), nan_bits.view(np.float32), wide)


def store_rounded_(dst, x, bfloat16):
    """Write float32 ``x`` into the 16-bit array ``dst`` rounded to nearest even:
    bfloat16 bit patterns (``dst`` uint16/int16) if ``bfloat16``, else float16 (``dst``
    float16, or its bits as uint16/int16)."""
    if bfloat16:
        _bits(dst)[...] = float32_to_bfloat16(x)
    else:       # the float16 bits: a NaN's too (assigning values could change them)
        dst.view(np.uint16)[...] = float32_to_float16(x).view(np.uint16)


def widen(src, bfloat16):
    """float32 values of a 16-bit array (bfloat16 bit patterns if ``bfloat16``, else float16;
    ``uint16``/``int16`` bits of either are accepted): a new array."""
    if bfloat16:
        return bfloat16_to_float32(src)
    src = np.asarray(src)
    return float16_to_float32(src.view(np.float16) if src.dtype != np.float16 else src)


_HALF_DTYPES = (np.dtype(np.uint16), np.dtype(np.int16))


def check_half_arrays(arrays, names, nrequired):
    """Validate the arrays of one 16-bit step, in the kernels' order: the param and the grad
    (``uint16``/``int16`` bit patterns), then the float32 master copy and state, one shape;
    the first ``nrequired`` may not be None. Raises TypeError/ValueError naming the array."""
    for i, (a, name) in enumerate(zip(arrays, names)):
        if a is None:
            if i < nrequired:
                raise TypeError(f"{name} must be a numpy.ndarray, got NoneType")
            continue
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
        want = _HALF_DTYPES if i < 2 else (np.dtype(np.float32),)
        if a.dtype.newbyteorder("=") not in want:      # either byte order, as float kernels
            raise TypeError(f"{name} must have dtype {' or '.join(map(str, want))} (16-bit "
                            f"{'bit patterns' if i < 2 else 'parameters keep float32 state'})"
                            f", got {a.dtype}")
        if a.shape != arrays[0].shape:
            raise ValueError(f"{name} has shape {a.shape}, expected {arrays[0].shape} like "
                             f"{names[0]}")
        if i != 1:
            check_writeable(name, a)
    check_own_arrays(arrays, names)


def with_signature(kernel, impl):
    """``impl(arrays, **keywords)`` as a function named and called as the registry's
    ``kernel`` (its arrays positional or by name, its scalars and options keyword-only, all
    required), so Python's own call checks refuse a wrong call as a written-out one's."""
    arrays = ", ".join(kernel.arrays)
    # (``kernel`` bound last, and the module's name: fastopt._multi._kernel_began)
    namespace = {"impl": impl, "__name__": impl.__module__}
    exec(f"def {kernel.name}({arrays}, *, {', '.join(kernel.keywords)}):\n"      # noqa: S102
         f"    kernel = impl\n"
         f"    return kernel(({arrays},), {', '.join(f'{k}={k}' for k in kernel.keywords)})\n",
         namespace)
    fn = namespace[kernel.name]
    fn.__module__, fn.__doc__ = impl.__module__, impl.__doc__
    return fn


def _native(a):
    """``a``, or a copy of it in native byte order (16-bit bits are read through views)."""
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def _half_form(kernel):
    """The reference of the 16-bit form ``kernel`` (a :meth:`fastopt._registry.Kernel.halved`):
    g = widen(grad) (float32), times ``grad_scale`` in float32 unless it is 1; the float32
    kernel (:mod:`fastopt.reference.optim`, ``kernel.base``) steps ``master`` with g (its own
    ``grad_scale``, if it has one, is then 1); param = round(master) (:func:`store_rounded_`).
    ``param`` itself is only written."""
    base = getattr(optim, kernel.base)
    own_scale = {"grad_scale": 1.0} if "grad_scale" in _registry.get(kernel.base).scalars else {}

    def half(arrays, *, bfloat16, grad_scale, **scalars):
        check_half_arrays(arrays, kernel.arrays, kernel.nrequired)
        param, grad, master, *state = arrays
        g = widen(_native(grad), bfloat16)
        if grad_scale != 1:
            np.multiply(g, np.float32(grad_scale), out=g)    # (a new array: 0-d stays one)
        base(master, g, *state, **scalars, **own_scale)
        if param.dtype.isnative:
            store_rounded_(param, master, bfloat16)
        else:                       # the bits are written through a view: round natively
            native = _native(param)
            store_rounded_(native, master, bfloat16)
            param[...] = native

    half.__doc__ = (f"``{kernel.base}`` on a 16-bit parameter (bfloat16 bits if ``bfloat16``, "
                    "else float16, both as ``uint16``) with a float32 master copy and float32 "
                    "state: see :func:`fastopt.reference.lowp._half_form`.")
    return with_signature(kernel, half)


for _kernel in _registry.HALF_KERNELS:
    globals()[_kernel.name] = _half_form(_kernel)
del _kernel
