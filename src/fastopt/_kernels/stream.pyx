# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The roofline: a streaming kernel with the memory traffic of an element-wise step and
trivial arithmetic, chunked and threaded exactly like the real kernels. Used only to measure.

``stream(a0, a1, a2, ...)`` reads every array once and writes every array but ``a1`` once
(the kernels' convention: ``a1`` is the grad), so its time on the arrays of a step is the time
that step would take if memory traffic were all it cost.
"""
include "_common.pxi"
include "_elementwise.pxi"


ctypedef struct stream_scalars:
    int k       # the number of arrays


cdef void stream_span(float** arrays, Py_ssize_t lo, Py_ssize_t hi,
                      const stream_scalars* s) noexcept nogil:
    """The element-wise driver's span signature."""
    cdef Py_ssize_t i
    cdef int k = s.k
    cdef float* a0 = arrays[0]
    cdef float* a1 = arrays[1]
    cdef float* a2 = arrays[2]
    cdef float* a3 = arrays[3]
    cdef float* a4 = arrays[4]
    if k == 2:
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


cdef Kernel STREAM = Kernel(5, 2, <span32>stream_span, NULL, 0)


def stream(*arrays):
    """Stream 2 to 5 contiguous arrays of one dtype (float32 or float64, same byte count)."""
    cdef Tensor t
    cdef stream_scalars s
    cdef int k = len(arrays), j
    if not 2 <= k <= 5:
        raise ValueError(f"stream takes 2 to 5 arrays, got {k}")
    cdef cnp.ndarray a
    for j in range(MAX_ARRAYS):
        t.ptr[j] = NULL
    for j in range(k):
        a = arrays[j]
        if not cnp.PyArray_IS_C_CONTIGUOUS(a) or a.nbytes != arrays[0].nbytes:
            raise ValueError("stream needs C-contiguous arrays of equal byte size")
        t.ptr[j] = cnp.PyArray_DATA(a)
    # float32 lanes over the bytes: the traffic, not the element type, is what is measured
    t.n = arrays[0].nbytes // sizeof(float)
    s.k = k
    with nogil:
        run(&STREAM, True, &t, 1, &s)
