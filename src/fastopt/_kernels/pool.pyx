# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""fastopt's thread pool (fo_pool.h), one per process: every kernel module (the optimizer
steps, the layers, the roofline stream, in each of their builds) runs its jobs through
:c:func:`run` here (``from .pool cimport run``).

One pool, not one per module: a helper polls for the next job for a while after each one, so
with a pool per module a training loop's layer call followed by its optimizer step found the
step's helper asleep (a wake of 25-30 us) and, once woken, sharing its core with the layers'
helper still polling: on a 2-vCPU Intel VM, 2 threads, medians, alternated calls against the
same call repeated, Adam on 3e5 float32 elements 66 -> 142 us, softmax cross-entropy of
(1024, 1000) float32 199 -> 287 us (calls of one module alternated with each other: 71 and
204). With the one pool, bench/test_bench_spaced.py's Adam after a layer call, 2 threads,
two runs: 1e5 elements 70.5 ; 70.3 -> 39.1 ; 39.3 us (on 1 thread 65-70), 3e5 117.6 ; 116.5
-> 93.8 ; 98.1 us, 1e6 unchanged (310-314 ; 304-311).
"""
import numpy as np
cimport numpy as cnp

cnp.import_array()

cdef extern from "fo_pool.h":
    ctypedef void (*fo_chunk_fn)(void* ctx, Py_ssize_t chunk) noexcept nogil
    void fo_pool_run(fo_chunk_fn fn, void* ctx, Py_ssize_t nchunks, int nthreads) nogil
    double fo_now() nogil
    int fo_pool_openmp      # thread-local
    ctypedef struct FoPoolState "struct fo_pool_state":
        int helpers, serial_calls, backoff
        double wake_seconds, chunk_seconds
    FoPoolState fo_pool_state_now() nogil


cdef void run(chunk_fn fn, void* ctx, Py_ssize_t nchunks, int nthreads) noexcept nogil:
    """fn(ctx, c) for every c in [0, nchunks), on up to nthreads threads (the caller one of
    them); returns when every chunk has run."""
    fo_pool_run(<fo_chunk_fn>fn, ctx, nchunks, nthreads)


def pool_state():
    """The pool as it stands, for tests and diagnosis: helpers started, calls left to run on
    the caller alone and the next back-off's length, the estimated cost of waking the helpers
    and the last job's chunk time (seconds)."""
    s = fo_pool_state_now()
    return dict(helpers=s.helpers, serial_calls=s.serial_calls, backoff=s.backoff,
                wake_seconds=s.wake_seconds, chunk_seconds=s.chunk_seconds)


def use_openmp_team(bint on):
    """Run this thread's long parallel calls (~1M elements and more) on its OpenMP team
    (torch's, beside torch) instead of the pool: see fo_pool.h. Returns the previous
    setting; results do not depend on it."""
    global fo_pool_openmp
    cdef bint was = fo_pool_openmp
    fo_pool_openmp = on
    return was


ctypedef struct ChunkCount:
    int* counts
    double seconds


cdef void count_chunk(void* ctx, Py_ssize_t c) noexcept nogil:
    cdef ChunkCount* job = <ChunkCount*>ctx
    cdef double until = fo_now() + job.seconds
    job.counts[c] += 1      # a chunk is claimed once: no two threads write one entry
    while fo_now() < until:     # a chunk that lasts ``seconds``
        pass


def pool_chunk_counts(Py_ssize_t nchunks, int nthreads, double seconds=0.0):
    """How many times the pool ran each chunk of a job of ``nchunks`` on ``nthreads``
    threads (for its tests: once each, whoever claimed it), each chunk lasting ``seconds``."""
    counts = np.zeros(nchunks, np.intc)
    cdef ChunkCount job
    job.counts = <int*>cnp.PyArray_DATA(counts)
    job.seconds = seconds
    with nogil:
        fo_pool_run(count_chunk, &job, nchunks, nthreads)
    return counts
