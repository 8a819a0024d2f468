# The process's one thread pool (pool.pyx, fo_pool.h), as the kernel modules call it.
ctypedef void (*chunk_fn)(void* ctx, Py_ssize_t chunk) noexcept nogil

cdef void run(chunk_fn fn, void* ctx, Py_ssize_t nchunks, int nthreads) noexcept nogil
