"""pytest-benchmark suite: Adam float32 calls while a busy process holds one core.

    pytest bench/test_bench_contended.py --benchmark-only --benchmark-group-by=group \
        --benchmark-columns=median,iqr,max

The NumPy reference and fastopt's compiled backends on one thread and on every thread, per
size, beside a busy loop pinned to one CPU (``fastopt._contended``). A pool that waits for a
thread the scheduler is not running shows in the max and the tail, not in the median.
Benchmarks, not tests: nothing here asserts a time.
"""
import os

import pytest

import fastopt as fo
from fastopt import _backend, _contended

SIZES = [int(float(s)) for s in
         os.environ.get("FASTOPT_BENCH_SIZES", "1e3,1e5,1e6").split(",")]
THREADS = sorted({1, fo.get_num_threads()})


@pytest.fixture(scope="module")
def busy():
    with _contended.busy_core() as cpu:
        if cpu is None:
            pytest.skip("one CPU: nothing to contend with")
        yield cpu


@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n:.0e}")
@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"{t}T")
@pytest.mark.parametrize("backend", fo.backends())
def test_adam_beside_a_busy_core(benchmark, busy, backend, threads, size):
    if backend == "numpy" and threads != 1:
        pytest.skip("the reference runs on one thread")
    call = _contended._adam_call(size)
    with _backend.use_backend(backend), _backend.use_num_threads(threads):
        call()                                  # warm-up: numba compiles, pages fault in
        benchmark.group = f"adam float32 {size:.0e}, one core busy"
        benchmark(call)
