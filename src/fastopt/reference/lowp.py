"""16-bit floating-point formats: the definition of how fastopt widens and rounds them.

bfloat16 has no NumPy dtype: its values travel as their bit patterns (``uint16``; ``int16``
views are accepted), the top half of a float32. float16 is NumPy's own ``float16``.
Widening to float32 is exact; narrowing rounds to nearest, ties to even, overflows to
infinity and keeps subnormals, as torch's conversions do, so a parameter written back from its
float32 master copy has the bits ``master.to(torch.bfloat16)`` (or ``float16``) would give.
"""
import numpy as np

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
    """float16 values of float32 values: IEEE round to nearest even (NumPy's conversion)."""
    return np.asarray(x, dtype=np.float32).astype(np.float16)


def store_rounded_(dst, x, bfloat16):
    """Write float32 ``x`` into the 16-bit array ``dst`` rounded to nearest even:
    bfloat16 bit patterns (``dst`` uint16/int16) if ``bfloat16``, else float16."""
    if bfloat16:
        _bits(dst)[...] = float32_to_bfloat16(x)
    else:
        dst[...] = float32_to_float16(x)


def widen(src, bfloat16):
    """float32 values of a 16-bit array (bfloat16 bit patterns if ``bfloat16``, else
    float16): a new array."""
    return bfloat16_to_float32(src) if bfloat16 else np.asarray(src, np.float32)
