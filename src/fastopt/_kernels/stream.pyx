# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The roofline: a streaming kernel with the memory traffic of an element-wise step and
trivial arithmetic, chunked and threaded exactly like the real kernels. Used only to measure.

``stream(a0, a1, a2, ...)`` reads every array once and writes every array but ``a1`` once
(the kernels' convention: ``a1`` is the grad), so its time on the arrays of a step is the time
that step would take if memory traffic were all it cost.
"""
from cython.parallel cimport prange

include "_common.pxi"


cdef void stream_span(float** arrays, int k, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t i
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


def stream(*arrays):
    """Stream 2 to 5 contiguous arrays of one dtype (float32 or float64, same byte count)."""
    cdef float* ptrs[5]
    cdef int k = len(arrays), j, nt, c
    cdef Py_ssize_t n, lo, chunk
    if not 2 <= k <= 5:
        raise ValueError(f"stream takes 2 to 5 arrays, got {k}")
    cdef cnp.ndarray a
    for j in range(5):
        ptrs[j] = NULL
    for j in range(k):
        a = arrays[j]
        if not cnp.PyArray_IS_C_CONTIGUOUS(a) or a.nbytes != arrays[0].nbytes:
            raise ValueError("stream needs C-contiguous arrays of equal byte size")
        ptrs[j] = <float*>cnp.PyArray_DATA(a)
    # float32 lanes over the bytes: the traffic, not the element type, is what is measured
    n = arrays[0].nbytes // sizeof(float)
    nt = threads_for(cnp.PyArray_SIZE(<cnp.ndarray>arrays[0]))
    chunk = chunk_for(n, nt)
    if nt == 1:   # as the kernels: no OpenMP region for one thread
        stream_span(ptrs, k, 0, n)
        return
    with nogil:
        for c in prange(nt, schedule="static", num_threads=nt):
            lo = c * chunk
            if lo < n:
                stream_span(ptrs, k, lo, min(lo + chunk, n))
