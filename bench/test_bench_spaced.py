"""pytest-benchmark suite: Adam float32 steps spaced out as in a training loop.

    pytest bench/test_bench_spaced.py --benchmark-only --benchmark-group-by=group \
        --benchmark-columns=median,iqr,max

Each timed step follows 1 ms of other work (a sleep, in the untimed setup), as an optimizer
step follows a forward and backward pass, so the pool's helper threads have gone to sleep and
must be woken. Compare the thread counts within a group: more threads can lose here while
they win on back-to-back calls (bench/test_bench_optim.py). Benchmarks, not tests: nothing
here asserts a time.
"""
import os
import time

import pytest

import fastopt as fo
from fastopt import _backend, _contended

SIZES = [int(float(s)) for s in
         os.environ.get("FASTOPT_BENCH_SIZES", "1e5,1e6").split(",")]
THREADS = sorted({1, fo.get_num_threads()})
GAP = 1e-3          # seconds of "other work" before each step
ROUNDS = int(os.environ.get("FASTOPT_BENCH_ROUNDS", "100"))


@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n:.0e}")
@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"{t}T")
@pytest.mark.parametrize("backend", [b for b in fo.backends() if b != "numpy"])
def test_adam_after_other_work(benchmark, backend, threads, size):
    call = _contended._adam_call(size, backend)
    with _backend.use_num_threads(threads):
        call()                                  # warm-up: numba compiles, pages fault in
        benchmark.group = f"adam float32 {size:.0e}, {GAP * 1e3:g} ms of other work first"
        benchmark.pedantic(call, setup=lambda: time.sleep(GAP), rounds=ROUNDS, iterations=1)
