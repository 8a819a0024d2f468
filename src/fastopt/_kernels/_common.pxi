# Shared by every kernel family (textually included): thread control, build facts and the
# layout test of the element-wise driver (_elementwise.pxi, which holds the argument checks).
cimport numpy as cnp

cnp.import_array()

ctypedef fused floating:
    float
    double

cdef extern from "fo_common.h":
    int fo_max_threads() nogil
    const char* FASTOPT_BUILD_FLAGS
    int fo_cpu_has_avx512()
    int fo_cpu_prefers_512bit_steps()
    int fo_cpu_wants_software_prefetch()
    int fastopt_get_num_threads() nogil
    void fastopt_set_num_threads(int n) nogil

BUILD_FLAGS = FASTOPT_BUILD_FLAGS.decode()


def cpu_has_avx512():
    """True if this CPU (and OS) run x86-64-v4 code: the *_avx512 variants may be used."""
    return bool(fo_cpu_has_avx512())


def cpu_prefers_512bit_steps():
    """True if the optimizer steps' 512-bit build (optim_avx512_zmm) is the faster one here
    (fo_common.h says on which CPUs)."""
    return bool(fo_cpu_prefers_512bit_steps())

from .. import _validate

# Below this many elements a step runs on one thread: handing chunks to a helper costs more than
# it saves (measured with `python -m fastopt`; see bench/README.md).
cdef Py_ssize_t PARALLEL_MIN = 1 << 15

fastopt_set_num_threads(fo_max_threads())


def set_num_threads(int n):
    """Threads used by this backend's kernels (results do not depend on it)."""
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    fastopt_set_num_threads(n)


def get_num_threads():
    return fastopt_get_num_threads()


cdef inline int threads_for(Py_ssize_t n) noexcept nogil:
    return fastopt_get_num_threads() if n >= PARALLEL_MIN else 1


cdef inline bint flat_ok(cnp.ndarray a, bint want_f) noexcept:
    """True if ``a`` can be walked as one flat run in the common memory order of the step."""
    if a is None:
        return True
    if not cnp.PyArray_ISBEHAVED_RO(a):
        return False
    return cnp.PyArray_IS_F_CONTIGUOUS(a) if want_f else cnp.PyArray_IS_C_CONTIGUOUS(a)


def first_readonly(arrays):
    """The index of the first array of ``arrays`` (a list of ndarrays, or of a list subclass:
    a param group's params) that is not writeable, or -1: the arena path's per-step check of
    its parameters, in C (a Python loop over a thousand ``a.flags.writeable`` costs more than
    the step)."""
    cdef Py_ssize_t k
    if not isinstance(arrays, list):
        raise TypeError(f"arrays must be a list, got {type(arrays).__name__}")
    cdef list lst = <list>arrays
    for k in range(len(lst)):
        if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray?>lst[k]):
            return k
    return -1


def first_unlike(arrays, likes):
    """The index of the first array of ``arrays`` (a list of ndarrays) that is not writeable,
    or not of the dtype (either byte order) and shape of the ndarray at its index in
    ``likes`` (a list as long), or -1: an optimizer's per-step check of its state arrays
    against their parameters, in C (NumPy's shape tuples, one per array, cost a multi-group
    step over 1000 arrays ~150 us)."""
    cdef Py_ssize_t k
    cdef int d
    cdef cnp.ndarray a, b
    if not isinstance(arrays, list) or not isinstance(likes, list):
        raise TypeError("arrays and likes must be lists")
    cdef list lst = <list>arrays, ref = <list>likes
    if len(lst) != len(ref):
        raise ValueError(f"{len(lst)} arrays against {len(ref)} likes")
    for k in range(len(lst)):
        a, b = <cnp.ndarray?>lst[k], <cnp.ndarray?>ref[k]
        if (not cnp.PyArray_ISWRITEABLE(a) or cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(b)
                or cnp.PyArray_NDIM(a) != cnp.PyArray_NDIM(b)):
            return k
        for d in range(cnp.PyArray_NDIM(a)):
            if cnp.PyArray_DIMS(a)[d] != cnp.PyArray_DIMS(b)[d]:
                return k
    return -1
