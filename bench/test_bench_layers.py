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
    are columns, their rows a power of two bytes apart). torch: its softmax over dim 0 into a
    reused output, as fastopt's (its cross-entropy computes no gradient in the call, so it is
    not timed here)."""
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((1000, 4096)) * 3).astype(np.float32)
    labels = rng.integers(0, 1000, 4096)
    out = np.empty_like(z)
    if contender == "torch":
        torch = pytest.importorskip("torch")
        if name != "softmax":
            pytest.skip("torch's cross-entropy call computes no gradient")
        zt, outt = torch.from_numpy(z), torch.from_numpy(out)
        fn, backend = (lambda: torch.softmax(zt, 0, out=outt)), fo.get_backend()
    else:
        fn = ((lambda: fo.softmax(z, axis=0, out=out)) if name == "softmax" else
              (lambda: fo.softmax_cross_entropy(z, labels, axis=0, out=out)))
        backend = contender
    benchmark.group = f"{name} course layout 1000x4096 float32"
    with fo.use_backend(backend):
        fn()
        benchmark(fn)


@pytest.mark.parametrize("contender", fo.backends() + ["numpy as written", "torch"])
@pytest.mark.parametrize("shape", [(32, 64), (256, 128), (4096, 1024)],
                         ids=["32x64", "256x128", "4096x1024"])
def test_batchnorm_inference(benchmark, shape, contender):
    """Inference with running statistics, float32, (examples, features): fastopt's backends,
    the NumPy expression a user writes and torch's batch_norm(training=False). At course
    sizes the Python around the kernel is most of the time."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    g, b, mean = (rng.standard_normal(shape[1]).astype(np.float32) for _ in range(3))
    var = rng.random(shape[1]).astype(np.float32) + 0.5
    backend = contender
    if contender == "torch":
        torch = pytest.importorskip("torch")
        xt, gt, bt, mt, vt = map(torch.from_numpy, (x, g, b, mean, var))
        fn, backend = (lambda: torch.nn.functional.batch_norm(xt, mt, vt, gt, bt, False)), None
    elif contender == "numpy as written":
        fn, backend = (lambda: (x - mean) / np.sqrt(var + 1e-5) * g + b), None
    else:
        fn = lambda: fo.batchnorm_inference(x, g, b, mean, var)  # noqa: E731
    benchmark.group = f"batchnorm_inference {shape[0]}x{shape[1]} float32"
    with fo.use_backend(backend or fo.get_backend()):
        fn()
        benchmark(fn)


def _at_page_offset(shape, dtype, offset):
    """An array of ``shape`` whose data starts ``offset`` bytes into a 4 KB page."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buffer = np.empty(nbytes + 8192, np.uint8)
    start = (offset - buffer.ctypes.data) % 4096
    return buffer[start:start + nbytes].view(dtype).reshape(shape)


@pytest.mark.parametrize("contender", fo.backends())
@pytest.mark.parametrize("offsets", [(16, 32, 48), (0, 1024, 2048)], ids=["near", "apart"])
def test_batchnorm_backward_by_where_its_arrays_lie(benchmark, offsets, contender):
    """Backward of (256, 4096) float32 with x, dy and dx starting at the given offsets in a
    page. "near" is where NumPy often puts equal-sized arrays allocated one after another (16
    bytes apart); with C a power of two, each array's rows then share one L1 set. "apart" is
    the same call with the arrays 1 KB apart."""
    rng = np.random.default_rng(0)
    x, dy, dx = (_at_page_offset((256, 4096), np.float32, o) for o in offsets)
    x[...] = rng.standard_normal(x.shape)
    dy[...] = rng.standard_normal(dy.shape)
    gamma, beta = np.ones(4096, np.float32), np.zeros(4096, np.float32)
    with fo.use_backend(contender):
        _, cache = fo.batchnorm_forward(x, gamma, beta)
        fn = lambda: fo.batchnorm_backward(dy, cache, out=dx)    # noqa: E731
        benchmark.group = f"batch norm backward 256x4096 float32, arrays {offsets} in a page"
        fn()
        benchmark(fn)
