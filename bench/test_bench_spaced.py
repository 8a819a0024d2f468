"""pytest-benchmark suite: Adam float32 steps spaced out as in a training loop.

    pytest bench/test_bench_spaced.py --benchmark-only --benchmark-group-by=group \
        --benchmark-columns=median,iqr,max

Each timed step follows 1 ms of other work (a sleep, in the untimed setup), as an optimizer
step follows a forward and backward pass, so the pool's helper threads have gone to sleep and
must be woken; or it follows a layer call (softmax cross-entropy of (1024, 1000) float32 on
the same backend), as a step follows a NumPy model's loss, which finds the pool's helper
polling (one pool for the layers and the steps: fastopt/_kernels/pool.pyx). Compare the
thread counts within a group: more threads can lose here while they win on back-to-back calls
(bench/test_bench_optim.py). Benchmarks, not tests: nothing here asserts a time.
"""
import os
import time

import numpy as np
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
    call = _contended._adam_call(size)
    with _backend.use_backend(backend), _backend.use_num_threads(threads):
        call()                                  # warm-up: numba compiles, pages fault in
        benchmark.group = f"adam float32 {size:.0e}, {GAP * 1e3:g} ms of other work first"
        benchmark.pedantic(call, setup=lambda: time.sleep(GAP), rounds=ROUNDS, iterations=1)


@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n:.0e}")
@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"{t}T")
@pytest.mark.parametrize("backend", [b for b in fo.backends() if b != "numpy"])
def test_adam_after_a_layer_call(benchmark, backend, threads, size):
    call = _contended._adam_call(size)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1024, 1000)).astype(np.float32)
    labels = rng.integers(0, 1000, 1024)
    grad = np.empty_like(logits)

    def loss():
        fo.layers.softmax_cross_entropy(logits, labels, out=grad)

    with _backend.use_backend(backend), _backend.use_num_threads(threads):
        call()
        loss()
        benchmark.group = f"adam float32 {size:.0e}, after a softmax cross-entropy call"
        benchmark.pedantic(call, setup=loss, rounds=ROUNDS, iterations=1)
