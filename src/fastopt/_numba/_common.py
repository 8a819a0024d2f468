"""Shared by the Numba kernel families: jit options, threading, and the serial/parallel launch."""
import os

import numba
import numpy as np

# error_model="numpy": division by zero gives inf/nan instead of raising, and lets LLVM
# vectorize divisions. fastmath stays off: IEEE semantics, no reassociation, no FMA contraction.
JIT = dict(cache=True, nogil=True, error_model="numpy", fastmath=False)

# The workqueue layer starts no OpenMP runtime: Numba's OpenMP layer started before torch
# makes torch's own CPU kernels ~25x slower (bench/README.md). A user's explicit
# NUMBA_THREADING_LAYER still wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

# Below this many elements a step runs serially: launching the parallel kernel costs more.
PARALLEL_MIN = 1 << 16
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
        numba.set_num_threads(nthreads)
        parallel(nthreads, -(-n // nthreads), *views, *scalars)
    else:
        serial(0, n, *views, *scalars)


@numba.njit(inline="always", **JIT)
def max_nan(a, b):
    """np.maximum: NaN in either operand gives NaN."""
    return a if (a >= b or a != a) else b
