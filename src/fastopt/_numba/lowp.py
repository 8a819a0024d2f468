"""Numba 16-bit kernels (fastopt._registry.HALF_KERNELS), mirroring fastopt/_kernels/_half.pxi:
the widening and rounding of fastopt/reference/lowp.py in integer arithmetic, and the float32
kernels' spans (fastopt/_numba/optim.py) stepping the master copy a block at a time."""
import types as types_module

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload

from .. import _registry
from .._hyper import as_flag, as_real
from .._layout import fortran_only, via_contiguous
from ..reference.lowp import check_half_arrays, with_signature
from . import optim
from ._common import JIT, launch, scalars

_EMPTY32 = np.empty(0, np.float32)


@intrinsic
def _bits_to_float(typingctx, u):
    """The float32 whose bits are the uint32 ``u``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@intrinsic
def _float_to_bits(typingctx, x):
    """The bits of the float32 ``x`` as a uint32."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


# The conversions of fastopt/_kernels/_half.pxi, as selects so that the block loops vectorize.
@numba.njit(inline="always", **JIT)
def _float16_to_float(h):
    """Exact widening: rebias the exponent; a subnormal is its 10-bit integer times 2**-24
    (exact in float32); infinity and NaN keep sign and payload."""
    u = np.uint32(h)
    sign = (u & np.uint32(0x8000)) << np.uint32(16)
    e = (u >> np.uint32(10)) & np.uint32(0x1F)
    mant = u & np.uint32(0x3FF)
    normal = sign | ((e + np.uint32(112)) << np.uint32(23)) | (mant << np.uint32(13))
    special = sign | np.uint32(0x7F800000) | (mant << np.uint32(13))
    sub = sign | _float_to_bits(np.float32(np.int32(mant)) * np.float32(5.9604644775390625e-08))
    bits = special if e == np.uint32(0x1F) else (normal if e != np.uint32(0) else sub)
    return _bits_to_float(np.uint32(bits))


@numba.njit(inline="always", **JIT)
def _float_to_bfloat16(x):
    """Round to nearest, ties to even; NaN becomes 0x7FC0."""
    u = _float_to_bits(x)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return np.uint16(0x7FC0 if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) else rounded)


@numba.njit(inline="always", **JIT)
def _float_to_float16(x):
    """Round to nearest, ties to even (from halfway above 65504 up: infinity; subnormals kept);
    NaN becomes its sign with 0x7E00. A subnormal is rounded by a float32 addition of 0.5
    (whose spacing, 2**-24, is the float16 subnormals'), in the default rounding mode."""
    # every intermediate cast back to uint32: Numba widens uint32 arithmetic to 64 bits, and
    # the loop then ran 4x slower
    U = np.uint32
    u = _float_to_bits(x)
    a = U(u & U(0x7FFFFFFF))
    sign = U(U(u >> U(16)) & U(0x8000))
    normal = U(U(U(a - U(0x37FFF001)) + U(U(a >> U(13)) & U(1))) >> U(13))   # rebias, round
    sub = U(_float_to_bits(_bits_to_float(a) + np.float32(0.5)) - U(0x3F000000))
    h = sub if a < U(0x38800000) else normal
    h = U(0x7C00) if a >= U(0x477FF000) else h
    h = U(0x7E00) if a > U(0x7F800000) else h
    return np.uint16(sign | h)


# ------------------------------------------------------------------ the 16-bit forms
# Every 16-bit form runs its float32 kernel's span, a block at a time: widen the block's grad
# into a float32 buffer (times the grad scale), step the master and state of the block with
# the span, round the master into the param. The block stays in cache between the three
# loops, so memory sees one sweep, and the formula stays the float32 kernel's.
_BLOCK = 512


@numba.njit(inline="always", **JIT)
def _widen_block(g16, out, bfloat16, scale):
    if bfloat16:
        for i in range(g16.size):
            out[i] = _bits_to_float(np.uint32(g16[i]) << np.uint32(16))
    else:
        for i in range(g16.size):
            out[i] = _float16_to_float(g16[i])
    if scale != 1:
        f = np.float32(scale)
        for i in range(g16.size):
            out[i] = out[i] * f


@numba.njit(inline="always", **JIT)
def _narrow_block(x, p16, bfloat16):
    if bfloat16:
        for i in range(x.size):
            p16[i] = _float_to_bfloat16(x[i])
    else:
        for i in range(x.size):
            p16[i] = _float_to_float16(x[i])


def _span_args(master, g, state, lo, hi, packed):
    """``(master, g, state[0][lo:hi], ..., packed)``: the float32 span's arguments for a
    block (jitted code only)."""
    raise NotImplementedError


# by the number of state arrays
_SLICERS = {
    1: lambda master, g, state, lo, hi, packed: (master, g, state[0][lo:hi], packed),
    2: lambda master, g, state, lo, hi, packed: (master, g, state[0][lo:hi], state[1][lo:hi],
                                                 packed),
    3: lambda master, g, state, lo, hi, packed: (master, g, state[0][lo:hi], state[1][lo:hi],
                                                 state[2][lo:hi], packed),
}


@overload(_span_args)
def _span_args_impl(master, g, state, lo, hi, packed):
    return _SLICERS[len(state)]


# Templates of a 16-bit form's loops: _specialize copies them per kernel with _base_span (the
# float32 kernel's span) and _half_range bound. Globals, not closure variables or arguments:
# Numba's on-disk cache keys a closure by a pickle of its cells, which for a jitted function
# holds a per-process id (never a cache hit), and globals are frozen into the compiled code,
# as every kernel's helpers are.
def _half_range_template(p16, g16, master, state, lo, hi, scalars):
    """Elements [lo, hi), a block at a time. ``scalars``: the float32 kernel's packed scalars,
    then ``bfloat16`` and ``grad_scale`` (one flat tuple: a parallel loop passes it on)."""
    packed, bfloat16, scale = scalars[:-2], scalars[-2], scalars[-1]
    buf = np.empty(_BLOCK, np.float32)
    for start in range(lo, hi, _BLOCK):
        stop = min(start + _BLOCK, hi)
        g = buf[:stop - start]
        _widen_block(g16[start:stop], g, bfloat16, scale)
        _base_span(*_span_args(master[start:stop], g, state, start, stop, packed))  # noqa: F821
        _narrow_block(master[start:stop], p16[start:stop], bfloat16)


def _half_span_template(p16, g16, master, state, scalars):
    """The serial step (``_common.launch``'s). ``lo`` is a typed 0, not the literal (a type of
    its own): the parallel loop's compilation of ``_half_range`` serves this one too."""
    _half_range(p16, g16, master, state, np.intp(0), master.size, scalars)  # noqa: F821


def _half_parallel_template(nchunks, chunk, p16, g16, master, state, scalars):
    for c in prange(nchunks):
        _half_range(p16, g16, master, state, c * chunk,  # noqa: F821
                    min((c + 1) * chunk, master.size), scalars)


def _specialize(template, name, parallel=False, **bound):
    """A jitted copy of ``template`` named ``name`` whose globals also hold ``bound``."""
    fn = types_module.FunctionType(template.__code__, dict(globals(), **bound), name)
    fn.__qualname__ = name
    return numba.njit(parallel=parallel, **JIT)(fn)


def _half_form(entry):
    """This backend's function of the 16-bit form ``entry``: as
    fastopt.reference.lowp's, through fastopt._numba.optim's span of ``entry.base``."""
    base = _registry.get(entry.base)
    _, pack = scalars(entry.base)
    own_scale = {"grad_scale": 1.0} if "grad_scale" in base.scalars else {}
    half_range = _specialize(_half_range_template, f"_{entry.name}_range",
                             _base_span=getattr(optim, f"_{base.name}_span"))
    span = _specialize(_half_span_template, f"_{entry.name}_span", _half_range=half_range)
    parallel = _specialize(_half_parallel_template, f"_{entry.name}_parallel", parallel=True,
                           _half_range=half_range)

    def half(arrays, *, bfloat16, grad_scale, **scalars_):
        """As fastopt.reference.lowp's: see fastopt/_numba/lowp.py."""
        # as the other backends check them, and first, as they do (bool() and float() had
        # taken None and "no" as flags, True and "2" as scales)
        options = (as_flag("bfloat16", bfloat16), as_real("grad_scale", grad_scale))
        check_half_arrays(arrays, entry.arrays, entry.nrequired)
        packed = pack(**scalars_, **own_scale)
        # one flat run in the param's order, C or Fortran (a transposed weight), as
        # via_contiguous copies them (a Fortran-ordered one had been copied again, forever)
        order = "F" if fortran_only(arrays[0]) else "C"
        if not all(a is None or (type(a) is np.ndarray and a.flags.aligned and a.dtype.isnative
                                 and (a.flags.f_contiguous if order == "F"
                                      else a.flags.c_contiguous)) for a in arrays):
            kernel = via_contiguous     # (bound last: fastopt._multi._kernel_began)
            return kernel(fn, arrays, bfloat16=bfloat16, grad_scale=grad_scale, **scalars_)
        views = [a.reshape(-1, order=order).view(np.uint16) for a in arrays[:2]] + [
            arrays[2].reshape(-1, order=order),
            tuple(_EMPTY32 if a is None else a.reshape(-1, order=order) for a in arrays[3:])]
        # param and grad (2 bytes an element each) hold as many bytes as the float32 master
        nbytes = 2 * views[2].nbytes + sum([a.nbytes for a in views[3]])
        packed += options
        kernel = launch
        kernel(span, parallel, views, packed, nbytes)

    fn = with_signature(entry, half)      # (the name via_contiguous calls back)
    return fn


for _kernel in _registry.HALF_KERNELS:
    globals()[_kernel.name] = _half_form(_kernel)
del _kernel
