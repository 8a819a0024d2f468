"""pytest-benchmark suite for fastopt.torch: one Adam step on torch tensors by
fastopt.torch.Adam, torch.optim.Adam(fused=True) and DeepSpeedCPUAdam (each where installed;
absent ones skip), float32 and bfloat16, one tensor of 1e3-1e7 elements or the 200 x 4096 and
1000 x 64 parameter lists. Benchmarks, not tests: nothing here asserts a time.

    pytest bench/test_bench_torch.py --benchmark-only --benchmark-group-by=group
"""
import os

import pytest

from fastopt import _bench

pytest.importorskip("torch")

# FASTOPT_BENCH_SIZES=1e3,1e5 narrows the sweep (CI's smoke run uses it)
SIZES = [int(float(s)) for s in
         os.environ.get("FASTOPT_BENCH_SIZES", "1e3,1e4,1e5,1e6,1e7").split(",")]
SPECS = SIZES + ["200x4096", "1000x64"]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s if isinstance(s, str) else f"{s:.0e}")
@pytest.mark.parametrize("dtype", _bench.TORCH_DTYPES)
@pytest.mark.parametrize("contender", _bench.TORCH_RACERS)
def test_torch_adam_step(benchmark, spec, dtype, contender):
    fns = _bench.torch_contenders(_bench.torch_shapes(spec), dtype, only=contender)
    if contender not in fns:
        pytest.skip(f"{contender} is not available here")
    benchmark.group = f"torch adam {spec} {dtype}"
    benchmark(fns[contender])
