"""pytest-benchmark suite for whole parameter groups: one Adam step over many arrays.

Groups: 200 x 4096, 1000 x 64, a 3-layer MLP, a small CNN; contenders: a ParameterArena, a
list (multi-tensor kernel), one fo.ops call per array, the NumPy reference, torch foreach and
fused (where installed; fused also over one flat tensor of every parameter, the arena's layout),
and the roofline (one stream over the same bytes).
"""
import numpy as np
import pytest

from fastopt import _bench

CONTENDERS = ["arena", "list", "per-array", "numpy", "roofline", "torch-foreach", "torch-fused",
               "torch-flat"]


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("group", list(_bench.GROUPS))
def test_group_step(benchmark, group, contender):
    fns = _bench.group_contenders(_bench.GROUPS[group], np.dtype(np.float32),
                                  peers=contender.startswith("torch"))
    if contender not in fns:
        pytest.skip(f"{contender} is not available here")
    benchmark.group = f"adam group {group} float32"
    fns[contender]()
    benchmark(fns[contender])
