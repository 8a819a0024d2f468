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



@pytest.mark.parametrize("contender", fo.backends() + ["torch"])
@pytest.mark.parametrize("name", ["softmax", "xent"])
def test_softmax_family_in_the_course_layout(benchmark, name, contender):
    """Classes by examples, (1000, 4096) float32 over axis 0: the course's layout (its examples
    are columns, their rows a power of two bytes apart). torch: its softmax over dim 0 (its
    cross-entropy computes no gradient in the call, so it is not timed here)."""
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((1000, 4096)) * 3).astype(np.float32)
    labels = rng.integers(0, 1000, 4096)
    out = np.empty_like(z)
    if contender == "torch":
        torch = pytest.importorskip("torch")
        if name != "softmax":
            pytest.skip("torch's cross-entropy call computes no gradient")
        zt = torch.from_numpy(z)
        fn, backend = (lambda: torch.softmax(zt, 0)), fo.get_backend()
    else:
        fn = ((lambda: fo.softmax(z, axis=0, out=out)) if name == "softmax" else
              (lambda: fo.softmax_cross_entropy(z, labels, axis=0, out=out)))
        backend = contender
    benchmark.group = f"{name} course layout 1000x4096 float32"
    with fo.use_backend(backend):
        fn()
        benchmark(fn)
