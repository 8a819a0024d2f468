# Shared by every kernel family (textually included): argument checks in C, thread control and
# the contiguous-or-fallback decision. The messages match fastopt/_validate.py word for word.
cimport numpy as cnp
from libc.string cimport memcmp

cnp.import_array()

ctypedef fused floating:
    float
    double

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fo_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int fo_max_threads(void) { return 1; }
    #endif
    """
    int fo_max_threads() nogil

cdef extern from *:
    """
    #ifndef FASTOPT_BUILD_FLAGS
    #define FASTOPT_BUILD_FLAGS "unknown"
    #endif
    """
    const char* FASTOPT_BUILD_FLAGS

BUILD_FLAGS = FASTOPT_BUILD_FLAGS.decode()

cdef extern from *:
    """
    static int fo_cpu_has_avx512(void) {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")
            && __builtin_cpu_supports("avx512cd");
    #else
        return 0;
    #endif
    }
    """
    int fo_cpu_has_avx512()


def cpu_has_avx512():
    """True if this CPU (and OS) run x86-64-v4 code: the *_avx512 variants may be used."""
    return bool(fo_cpu_has_avx512())

from .. import _validate

# Below this many elements a step runs on one thread: waking the team costs more than it saves
# (measured with `python -m fastopt`; see bench/README.md).
cdef Py_ssize_t PARALLEL_MIN = 1 << 15
cdef int _num_threads = fo_max_threads()


def set_num_threads(int n):
    """Threads used by this backend's kernels (results do not depend on it)."""
    global _num_threads
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    _num_threads = n


def get_num_threads():
    return _num_threads


cdef inline int threads_for(Py_ssize_t n) noexcept nogil:
    return _num_threads if n >= PARALLEL_MIN else 1


cdef inline Py_ssize_t chunk_for(Py_ssize_t n, int nthreads) noexcept nogil:
    """Elements per thread, rounded up to a whole 64-byte line of doubles."""
    return ((n + nthreads - 1) // nthreads + 7) & ~(<Py_ssize_t>7)


cdef inline int check_param(str name, cnp.ndarray a) except -1:
    cdef int t = cnp.PyArray_TYPE(a)
    if t != cnp.NPY_FLOAT and t != cnp.NPY_DOUBLE:
        _validate.check_float_array(name, a)   # raises with the standard message
    if not cnp.PyArray_ISWRITEABLE(a):
        _validate.check_writeable(name, a)
    return 0


cdef inline int check_like(str name, cnp.ndarray a, str ref_name, cnp.ndarray ref,
                           bint written) except -1:
    """Same dtype and shape as ``ref`` (and writeable if ``written``); ``None`` passes."""
    if a is None:
        return 0
    cdef int nd = cnp.PyArray_NDIM(ref)
    if (cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(ref) or cnp.PyArray_NDIM(a) != nd
            or memcmp(cnp.PyArray_DIMS(a), cnp.PyArray_DIMS(ref), nd * sizeof(cnp.npy_intp))):
        _validate.check_like(name, a, ref_name, ref)
    if written and not cnp.PyArray_ISWRITEABLE(a):
        _validate.check_writeable(name, a)
    return 0


cdef inline bint flat_ok(cnp.ndarray a, bint want_f) noexcept:
    """True if ``a`` can be walked as one flat run in the common memory order of the step."""
    if a is None:
        return True
    if not cnp.PyArray_ISBEHAVED_RO(a):
        return False
    return cnp.PyArray_IS_F_CONTIGUOUS(a) if want_f else cnp.PyArray_IS_C_CONTIGUOUS(a)


cdef inline bint all_flat(cnp.ndarray a0, cnp.ndarray a1, cnp.ndarray a2=None,
                          cnp.ndarray a3=None, cnp.ndarray a4=None) noexcept:
    """All arrays contiguous in the same order (element i of each is at offset i)."""
    cdef bint want_f = not cnp.PyArray_IS_C_CONTIGUOUS(a0)
    return (flat_ok(a0, want_f) and flat_ok(a1, want_f) and flat_ok(a2, want_f)
            and flat_ok(a3, want_f) and flat_ok(a4, want_f))


cdef inline void* data(cnp.ndarray a) noexcept:
    return NULL if a is None else cnp.PyArray_DATA(a)
