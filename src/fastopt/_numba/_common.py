"""Shared by the Numba kernel families: jit options, threading, and the serial/parallel launch."""
import ctypes
import os

import numba
import numpy as np

# error_model="numpy": division by zero gives inf/nan instead of raising, and lets LLVM
# vectorize divisions. fastmath stays off: IEEE semantics, no reassociation, no FMA contraction.
JIT = dict(cache=True, nogil=True, error_model="numpy", fastmath=False)

# The threading layer: OpenMP launches a parallel kernel in ~3 us here, the workqueue layer in
# ~70 us (slower than running serially below 1e6 elements). A user's explicit
# NUMBA_THREADING_LAYER still wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
_pool_started = [False]


def _start_pool():
    """Start Numba's thread pool (lazily: at the first parallel step), then undo the one
    global setting its OpenMP layer changes. It turns on nested parallelism
    (max-active-levels 255) in the process's libgomp, which torch shares (its bundled libgomp
    has the same soname): torch's intra-op regions then nest, oversubscribe the cores and run
    ~35x slower after a `torch.set_num_threads` call. Our kernels never nest, so one level is
    all they need; `python -m fastopt` measures both import orders."""
    from numba.np.ufunc import parallel
    parallel._launch_threads()
    if numba.threading_layer() == "omp":
        ctypes.CDLL("libgomp.so.1").omp_set_max_active_levels(1)
    _pool_started[0] = True


# Below this many elements a step runs serially: launching the parallel kernel costs more.
PARALLEL_MIN = 1 << 15
_num_threads = [numba.config.NUMBA_NUM_THREADS]
_EMPTY = {np.dtype(np.float32): np.empty(0, np.float32),
          np.dtype(np.float64): np.empty(0, np.float64)}


def set_num_threads(n):
    _num_threads[0] = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))


def get_num_threads():
    return _num_threads[0]


def launch(serial, parallel, views, *scalars):
    """Run a kernel over flat 1-D ``views`` (``None``, optional state not in use, becomes an
    empty array), serially or as one contiguous chunk per thread. ``scalars`` are already
    cast to the arrays' dtype, so arithmetic stays in that precision as in the reference."""
    empty = _EMPTY[views[0].dtype]
    views = [empty if v is None else v for v in views]
    n = views[0].size
    nthreads = _num_threads[0] if n >= PARALLEL_MIN else 1
    if nthreads > 1:
        if not _pool_started[0]:
            _start_pool()
        numba.set_num_threads(nthreads)
        parallel(nthreads, -(-n // nthreads), *views, *scalars)
    else:
        serial(*views, *scalars)


@numba.njit(inline="always", **JIT)
def max_nan(a, b):
    """np.maximum: NaN in either operand gives NaN."""
    return a if (a >= b or a != a) else b
