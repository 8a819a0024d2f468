# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The roofline: a streaming kernel with the memory traffic of an element-wise step and
trivial arithmetic, chunked and threaded exactly like the real kernels. Used only to measure.

``stream(a0, a1, a2, ...)`` reads every array once and writes every array but ``a1`` once
(the kernels' convention: ``a1`` is the grad), so its time on the arrays of a step is the time
that step would take if memory traffic were all it cost. ``stream_to(out, a, ...)`` is the
layers' roofline: it reads its inputs and writes ``out`` without reading it, as a layer writes
its result into a separate array (each line written costs the cache a read for ownership, which
an in-place update does not pay: 324 against 218 us for 8 MB moved, one core of an Intel Xeon).
"""
import numpy as np

include "_common.pxi"
include "_elementwise.pxi"


ctypedef struct stream_scalars:
    int k       # the number of arrays
    bint fresh  # arrays[0] is written without being read (stream_to)


cdef void stream_span(floating** arrays, Py_ssize_t lo, Py_ssize_t hi,
                      const stream_scalars* s) noexcept nogil:
    """The element-wise driver's span signature."""
    cdef Py_ssize_t i
    cdef int k = s.k
    cdef floating* a0 = arrays[0]
    cdef floating* a1 = arrays[1]
    cdef floating* a2 = arrays[2]
    cdef floating* a3 = arrays[3]
    cdef floating* a4 = arrays[4]
    cdef floating one = 1
    if s.fresh:
        if k == 2:
            for i in range(lo, hi):
                a0[i] = a1[i] + one
        else:
            for i in range(lo, hi):
                a0[i] = a1[i] + a2[i]
    elif k == 2:
        for i in range(lo, hi):
            a0[i] = a0[i] + a1[i]
    elif k == 3:
        for i in range(lo, hi):
            a0[i] = a0[i] + a1[i]
            a2[i] = a2[i] + a1[i]
    elif k == 4:
        for i in range(lo, hi):
            a0[i] = a0[i] + a1[i]
            a2[i] = a2[i] + a1[i]
            a3[i] = a3[i] + a1[i]
    else:
        for i in range(lo, hi):
            a0[i] = a0[i] + a1[i]
            a2[i] = a2[i] + a1[i]
            a3[i] = a3[i] + a1[i]
            a4[i] = a4[i] + a1[i]


cdef Kernel STREAM = Kernel(5, 2, <span32>stream_span[float], <span64>stream_span[double], 0, NULL)


def stream(*arrays):
    """Stream 2 to 5 contiguous arrays of one dtype (float32 or float64) and size."""
    if not 2 <= len(arrays) <= 5:
        raise ValueError(f"stream takes 2 to 5 arrays, got {len(arrays)}")
    _stream(arrays, False)


def stream_to(out, *inputs):
    """Write ``out`` from 1 or 2 inputs, reading them and not ``out`` (contiguous arrays of one
    dtype, float32 or float64, and size)."""
    if not 1 <= len(inputs) <= 2:
        raise ValueError(f"stream_to takes 1 or 2 inputs, got {len(inputs)}")
    _stream((out,) + inputs, True)


cdef _stream(tuple arrays, bint fresh):
    cdef Tensor t
    cdef stream_scalars s
    cdef int k = len(arrays), j
    cdef cnp.ndarray a
    cdef bint is32
    for j in range(MAX_ARRAYS):
        t.ptr[j] = NULL
    first = arrays[0]
    if first.dtype not in (np.float32, np.float64):
        raise TypeError(f"stream takes float32 or float64 arrays, got {first.dtype}")
    for j in range(k):
        a = arrays[j]
        if (not cnp.PyArray_IS_C_CONTIGUOUS(a) or a.dtype != first.dtype
                or a.size != first.size):
            raise ValueError("stream needs C-contiguous arrays of one dtype and size")
        t.ptr[j] = cnp.PyArray_DATA(a)
    # in elements of the arrays' own type, as the kernels count them: the driver picks threads
    # and chunks by elements (float32 lanes over float64 bytes had run a float64 step of 2e4
    # elements on two threads while the step itself ran on one)
    t.n = first.size
    s.k, s.fresh, is32 = k, fresh, first.dtype == np.float32
    with nogil:
        run(&STREAM, is32, &t, 1, &s)
