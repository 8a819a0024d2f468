"""pytest-benchmark suite for the optimizer kernels: kernel x contender x dtype x size.

    pytest bench --benchmark-only --benchmark-group-by=group --benchmark-columns=min,median,iqr

Each group is one (kernel, dtype, size) row with its contenders side by side: every backend,
the roofline (a streaming kernel moving the same bytes) and torch.optim peers where installed.
Benchmarks, not tests: nothing here asserts a time.
"""
import os

import numpy as np
import pytest

import fastopt as fo
from fastopt import _bench

# FASTOPT_BENCH_SIZES=1e3,1e5 narrows the sweep (CI's smoke run uses it)
SIZES = [int(float(s)) for s in
         os.environ.get("FASTOPT_BENCH_SIZES", "1e3,1e4,1e5,1e6,1e7").split(",")]
CONTENDERS = fo.backends() + ["roofline", *_bench.PEERS]


@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n:.0e}")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("kernel", list(_bench.CASES))
def test_step(benchmark, kernel, dtype, size, contender):
    case = _bench.CASES[kernel]
    fns = _bench.contenders(case, size, np.dtype(dtype), fo.backends(), only=contender)
    if contender not in fns:
        pytest.skip(f"{contender} is not available for {kernel} here")
    benchmark.group = f"{kernel} {dtype} {size:.0e}"
    benchmark.extra_info["bytes"] = size * np.dtype(dtype).itemsize * sum(case.n_streams())
    fn = fns[contender]
    with fo.use_backend(getattr(fn, "backend", fo.get_backend())):
        fn()                  # warm-up: numba compiles, pages fault in
        benchmark(fn)
