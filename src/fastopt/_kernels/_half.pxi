# The 16-bit forms of the element-wise kernels (fastopt._registry.HALF_KERNELS; textually
# included at the end of _elementwise.pxi, whose driver calls half_range for them). Their
# param and grad are uint16 arrays (bfloat16 bit patterns or float16; int16 views are
# accepted), their master copy and state float32, all of one shape. A block at a time, the
# grad is widened into a float32 buffer on the stack, the kernel's float32 span steps the
# master and the state, and the master is rounded into the param. The block stays in L1
# between the three loops, so memory sees one sweep, as a fused loop's; each loop vectorizes
# on its own. Adam's span also has a 16-bit loop of its own (Kernel.f16, optim.pyx), which
# widens and rounds element by element beside the step. The entry points are generated into
# _glue.pxi.
from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memcpy

cdef enum:
    HALF_BFLOAT16 = 1    # Kernel.half: the format of a 16-bit form's param and grad
    HALF_FLOAT16 = 2
    HALF_BLOCK = 512     # elements per block: 2 KiB of float32 grad

ctypedef struct HalfScalars:    # what a 16-bit form's entry point hands the driver
    const void* base            # the float32 kernel's struct of scalars
    double grad_scale           # multiplies the widened grad (1: not at all)


cdef void half_range(const Kernel* kern, void** a, Py_ssize_t lo, Py_ssize_t hi,
                     const void* s) noexcept nogil:
    """Elements [lo, hi) of a 16-bit form: ``a`` = (param, grad, master, state...)."""
    cdef const HalfScalars* h = <const HalfScalars*>s
    cdef uint16_t* p16 = <uint16_t*>a[0]
    cdef const uint16_t* g16 = <const uint16_t*>a[1]
    cdef float* master = <float*>a[2]
    cdef float g[HALF_BLOCK]
    cdef float* b[MAX_ARRAYS]      # the float32 span's arrays: master, g, state
    cdef bint bfloat16 = kern.half == HALF_BFLOAT16
    cdef Py_ssize_t start, n
    cdef int i
    if kern.f16 != NULL and kern.f16(a, lo, hi, s, bfloat16):
        return
    b[1] = g
    start = lo
    while start < hi:
        n = min(<Py_ssize_t>HALF_BLOCK, hi - start)
        widen_block(g16 + start, g, n, bfloat16, h.grad_scale)
        b[0] = master + start
        for i in range(3, kern.narrays):
            b[i - 1] = NULL if a[i] == NULL else <float*>a[i] + start
        kern.f32(b, 0, n, h.base)
        narrow_block(master + start, p16 + start, n, bfloat16)
        start += n


# The conversions of fastopt/reference/lowp.py in integer arithmetic (memcpy moves the bits
# between float and uint32; GCC turns it into a register move), written as selects so that
# the block loops vectorize.
cdef inline float bits_to_float(uint32_t u) noexcept nogil:
    cdef float f
    memcpy(&f, &u, 4)
    return f


cdef inline uint32_t float_to_bits(float f) noexcept nogil:
    cdef uint32_t u
    memcpy(&u, &f, 4)
    return u


cdef inline float bfloat16_to_float(uint16_t x) noexcept nogil:
    return bits_to_float((<uint32_t>x) << 16)


cdef inline uint16_t float_to_bfloat16(float x) noexcept nogil:
    """Round to nearest, ties to even; NaN becomes 0x7FC0."""
    cdef uint32_t u = float_to_bits(x)
    return (0x7FC0 if (u & 0x7FFFFFFF) > 0x7F800000
            else <uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16))


cdef inline float float16_to_float(uint16_t x) noexcept nogil:
    """Exact widening: rebias the exponent; a subnormal is its 10-bit integer times 2**-24
    (exact in float32); infinity and NaN keep sign and payload."""
    cdef uint32_t u = x, sign = (u & 0x8000) << 16
    cdef uint32_t e = (u >> 10) & 0x1F, mant = u & 0x3FF
    cdef uint32_t normal = sign | ((e + 112) << 23) | (mant << 13)
    cdef uint32_t special = sign | 0x7F800000 | (mant << 13)
    cdef uint32_t sub = sign | float_to_bits(<float><int>mant * <float>5.9604644775390625e-08)
    return bits_to_float(special if e == 0x1F else (normal if e != 0 else sub))


cdef inline uint16_t float_to_float16(float x) noexcept nogil:
    """Round to nearest, ties to even (from halfway above 65504 up: infinity; subnormals
    kept); NaN becomes its sign with 0x7E00. A subnormal is rounded by a float32 addition of
    0.5 (whose spacing, 2**-24, is the float16 subnormals'), in the default rounding mode."""
    cdef uint32_t u = float_to_bits(x), a = u & 0x7FFFFFFF, sign = (u >> 16) & 0x8000
    cdef uint32_t normal = (a - 0x37FFF001 + ((a >> 13) & 1)) >> 13     # rebias, round off 13
    cdef uint32_t sub = float_to_bits(bits_to_float(a) + <float>0.5) - 0x3F000000
    cdef uint32_t h = sub if a < 0x38800000 else normal
    h = 0x7C00 if a >= 0x477FF000 else h
    h = 0x7E00 if a > 0x7F800000 else h
    return <uint16_t>(sign | h)


cdef void widen_block(const uint16_t* x, float* out, Py_ssize_t n, bint bfloat16,
                      double grad_scale) noexcept nogil:
    """``out[:n]`` = the float32 values of ``x[:n]``, times ``grad_scale`` (in float32)."""
    cdef float scale = <float>grad_scale
    cdef Py_ssize_t i
    if bfloat16:
        for i in range(n):
            out[i] = bfloat16_to_float(x[i])
    else:
        for i in range(n):
            out[i] = float16_to_float(x[i])
    if grad_scale != 1:
        for i in range(n):
            out[i] = out[i] * scale


cdef void narrow_block(const float* x, uint16_t* out, Py_ssize_t n,
                       bint bfloat16) noexcept nogil:
    """``out[:n]`` = ``x[:n]`` rounded to nearest even."""
    cdef Py_ssize_t i
    if bfloat16:
        for i in range(n):
            out[i] = float_to_bfloat16(x[i])
    else:
        for i in range(n):
            out[i] = float_to_float16(x[i])
