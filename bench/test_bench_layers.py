"""pytest-benchmark suite for the layer kernels: batch norm (forward, backward, both) and the
softmax family at the shapes of the report, each backend against torch and the roofline."""
import numpy as np
import pytest

import fastopt as fo
from fastopt import _bench

CONTENDERS = fo.backends() + ["roofline", "torch"]
ROWS = [(name, shape) for name, (shapes, _) in _bench.LAYER_CASES.items() for shape in shapes]


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("name,shape", ROWS, ids=[f"{n}-{s[0]}x{s[1]}" for n, s in ROWS])
def test_layer(benchmark, name, shape, contender):
    fns = _bench.layer_contenders(name, shape, np.dtype(np.float32), fo.backends(),
                                  peers=contender == "torch")
    if contender not in fns:
        pytest.skip(f"{contender} is not available for {name} here")
    benchmark.group = f"{name} {shape[0]}x{shape[1]} float32"
    fn = fns[contender]
    with fo.use_backend(getattr(fn, "backend", fo.get_backend())):
        fn()
        benchmark(fn)
