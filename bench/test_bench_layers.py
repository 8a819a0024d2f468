"""pytest-benchmark suite for the layer kernels: batch norm (forward, backward, both) and the
softmax family at the shapes of the report, each backend against torch and the roofline."""
import numpy as np
import pytest

import fastopt as fo
from fastopt import _bench

CONTENDERS = fo.backends() + ["roofline", "torch"]
# every row in float32; the softmax family's also in float64 (its exp is a separate polynomial)
ROWS = [(name, shape, dtype) for name, shapes in _bench.LAYER_CASES.items()
        for shape in shapes
        for dtype in (["float32", "float64"] if name in ("softmax", "xent") else ["float32"])]


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("name,shape,dtype", ROWS,
                         ids=[f"{n}-{s[0]}x{s[1]}-{d}" for n, s, d in ROWS])
def test_layer(benchmark, name, shape, dtype, contender):
    _run(benchmark, name, shape, dtype, contender, 1.0)


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_softmax_of_spread_logits(benchmark, scale, contender):
    """float32 logits with a standard deviation of 30: most exps underflow (subnormal or 0),
    which the CPU computes on a slow path unless the exp avoids it."""
    _run(benchmark, "softmax", (4096, 1000), "float32", contender, scale)


def _run(benchmark, name, shape, dtype, contender, scale):
    fns = _bench.layer_contenders(name, shape, np.dtype(dtype), fo.backends(),
                                  peers=contender == "torch", scale=scale)
    if contender not in fns:
        pytest.skip(f"{contender} is not available for {name} here")
    benchmark.group = f"{name} {shape[0]}x{shape[1]} {dtype} x{scale:g}"
    fn = fns[contender]
    with fo.use_backend(getattr(fn, "backend", fo.get_backend())):
        fn()
        benchmark(fn)
