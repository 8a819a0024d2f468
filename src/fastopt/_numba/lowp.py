"""Numba 16-bit kernels (fastopt._registry.HALF_KERNELS), mirroring fastopt/_kernels/_half.pxi
and optim.pyx's conversions: the widening and rounding of fastopt/reference/lowp.py in integer
arithmetic, the float32 step of the master copy shared with the Adam kernel (``adam_elem``)."""
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from .._layout import via_contiguous
from ..reference.lowp import check_half_arrays
from ._common import JIT, launch, scalars
from .optim import adam_consts, adam_elem

_NAMES = ("param", "grad", "master", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
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


@numba.njit(inline="always", **JIT)
def _half_to_float(h, bfloat16):
    u = np.uint32(h)
    if bfloat16:
        return _bits_to_float(u << np.uint32(16))
    sign = (u & np.uint32(0x8000)) << np.uint32(16)
    e = (u >> np.uint32(10)) & np.uint32(0x1F)
    mant = u & np.uint32(0x3FF)
    if e == np.uint32(0x1F):
        return _bits_to_float(sign | np.uint32(0x7F800000) | (mant << np.uint32(13)))
    if e != np.uint32(0):
        return _bits_to_float(sign | ((e + np.uint32(112)) << np.uint32(23))
                              | (mant << np.uint32(13)))
    sub = np.float32(mant) * np.float32(5.9604644775390625e-08)     # mant * 2**-24, exact
    return _bits_to_float(sign | _float_to_bits(sub))


@numba.njit(inline="always", **JIT)
def _float_to_half(x, bfloat16):
    u = _float_to_bits(x)
    a = u & np.uint32(0x7FFFFFFF)
    if bfloat16:
        if a > np.uint32(0x7F800000):
            return np.uint16(0x7FC0)
        return np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
                         >> np.uint32(16))
    sign = np.uint32((u >> np.uint32(16)) & np.uint32(0x8000))
    if a > np.uint32(0x7F800000):
        return np.uint16(sign | np.uint32(0x7E00))
    if a >= np.uint32(0x477FF000):          # from halfway above 65504 up: infinity
        return np.uint16(sign | np.uint32(0x7C00))
    if a >= np.uint32(0x38800000):          # a float16 normal: rebias, round off 13 bits
        h = (a - np.uint32(0x38000000)) >> np.uint32(13)
        rem = a & np.uint32(0x1FFF)
        if rem > np.uint32(0x1000) or (rem == np.uint32(0x1000) and (h & np.uint32(1))):
            h += np.uint32(1)
        return np.uint16(sign | h)
    if a <= np.uint32(0x33000000):          # at most half the smallest subnormal: zero
        return np.uint16(sign)
    shift = np.uint32(126) - (a >> np.uint32(23))
    mant = (a & np.uint32(0x7FFFFF)) | np.uint32(0x800000)
    h = mant >> shift
    rem = mant & ((np.uint32(1) << shift) - np.uint32(1))
    half = np.uint32(1) << (shift - np.uint32(1))
    if rem > half or (rem == half and (h & np.uint32(1))):
        h += np.uint32(1)
    return np.uint16(sign | h)


_ADAM_HALF, _pack_adam_half = scalars("adam_half")


@numba.njit(inline="always", **JIT)
def _adam_half_loop(p16, g16, p, m, v, vmax, s, amsgrad, eps_inside_sqrt):
    # amsgrad and the eps form are literal constants per loop, as in _adam_loop
    k = adam_consts(s, p)
    scale = np.float32(s.grad_scale)
    scaled = s.grad_scale != 1
    maximize, bfloat16 = s.maximize, s.bfloat16
    for i in range(p.size):
        gi = _half_to_float(g16[i], bfloat16)
        gi = gi * scale if scaled else gi
        gi = -gi if maximize else gi
        adam_elem(i, gi, p, m, v, vmax, k, amsgrad, eps_inside_sqrt)
        p16[i] = _float_to_half(p[i], bfloat16)


@numba.njit(**JIT)
def _adam_half_span(p16, g16, p, m, v, vmax, packed):
    s = _ADAM_HALF(*packed)
    if vmax.size == 0 and not s.eps_inside_sqrt:
        _adam_half_loop(p16, g16, p, m, v, vmax, s, amsgrad=False, eps_inside_sqrt=False)
    elif vmax.size == 0:
        _adam_half_loop(p16, g16, p, m, v, vmax, s, amsgrad=False, eps_inside_sqrt=True)
    elif not s.eps_inside_sqrt:
        _adam_half_loop(p16, g16, p, m, v, vmax, s, amsgrad=True, eps_inside_sqrt=False)
    else:
        _adam_half_loop(p16, g16, p, m, v, vmax, s, amsgrad=True, eps_inside_sqrt=True)


@numba.njit(parallel=True, **JIT)
def _adam_half_parallel(nchunks, chunk, p16, g16, p, m, v, vmax, packed):
    for c in prange(nchunks):
        lo, hi = c * chunk, min((c + 1) * chunk, p.size)
        _adam_half_span(p16[lo:hi], g16[lo:hi], p[lo:hi], m[lo:hi], v[lo:hi],
                        vmax[lo:hi], packed)


def adam_half(param, grad, master, exp_avg, exp_avg_sq, max_exp_avg_sq, *, lr, beta1, beta2,
              eps, weight_decay, step_size, bias_correction2, grad_scale, decoupled, maximize,
              eps_inside_sqrt, bfloat16):
    arrays = (param, grad, master, exp_avg, exp_avg_sq, max_exp_avg_sq)
    check_half_arrays(arrays, _NAMES, 5)
    packed = _pack_adam_half(lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                             weight_decay=weight_decay, step_size=step_size,
                             bias_correction2=bias_correction2, grad_scale=grad_scale,
                             decoupled=decoupled, maximize=maximize,
                             eps_inside_sqrt=eps_inside_sqrt, bfloat16=bfloat16)
    if not all(a is None or (type(a) is np.ndarray and a.flags.c_contiguous and a.flags.aligned
                             and a.dtype.isnative) for a in arrays):
        return via_contiguous(adam_half, arrays, **_ADAM_HALF(*packed)._asdict())
    views = [a.reshape(-1).view(np.uint16) if i < 2 else
             (_EMPTY32 if a is None else a.reshape(-1)) for i, a in enumerate(arrays)]
    launch(_adam_half_span, _adam_half_parallel, views, packed)
