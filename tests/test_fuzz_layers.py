"""Property tests for the layers: batch norm (forward, backward, inference, fo.BatchNorm) and
the softmax family (softmax, log_softmax, softmax_cross_entropy with class indices or
probabilities), on every backend against the NumPy reference.

Hypothesis draws the layer, the shape (sizes around the vector widths and the kernels' block
sizes, 1, empty, wide and tall), the dtype, the memory layout of every input (C, F, the
transpose of a C array, strided, negative strides, unaligned, byte-swapped; each read-only or
not) and the values (normal data at several scales and offsets, with NaN, +-Inf, huge,
subnormal and signed zeros mixed in). The reference runs on C-ordered native copies; every
backend must give its result within the tolerances below, with NaN and Inf in the same places,
and refuse what it refuses with the same exception type. A second property: the compiled
backends give the same bits for 1 and 2 threads.

Tolerances are those of test_layers.py: float64 1e-12 (4504 ulps), float32 4e-6 (34 ulps),
relative to ``|reference| + scale``, where ``scale`` is the sum of the magnitudes of the terms
that make up each output (computed in float64 from the inputs, see ``batchnorm_scales`` and
the comments at each check): a sum of n float64 terms taken in a different order differs by
at most about n * 2**-53 of the sum of their magnitudes (n <= 2049 here, so within 4504 ulps),
and a float32 output is computed in float64 and rounded once (1 ulp) or, in the softmax
family, from a few float32 operations and an exp within 1 ulp (a few ulps). Results in the
subnormal range carry an absolute error of a few subnormal steps, hence an absolute floor of
the smallest normal.

Values whose result depends on the summation order are not drawn, since the reference does not
define one: eps > 0 (a zero variance times 1/sqrt(0) is inf * 0), float64 "huge" is 1e100 in
batch norm (squares summed over the batch cannot overflow), a huge or infinite dy does not go
with a huge x (huge values cancel in the mean in the summation order, leaving it known to an ulp
of them: dy * (x - mean) is then not defined, and x - mean being 0 or not decides between NaN
and inf), and Inf goes into data, not into probability labels (inf * a log-probability that
rounds to 0 or not).

Cost (this shared 2-core machine, one backend): 310 examples, 14-16 s of CPU (about 45 s wall
while the machine was loaded), derandomized by the "ci" profile in conftest.py.
"""
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastopt as fo  # noqa: E402
from conftest import COMPILED, GRID_BACKENDS, LAYOUTS, relayout  # noqa: E402

TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 4e-6}
# 1; around the 4/8/16-lane vectors, the 64-row blocks and the 256-column blocks; larger odd
SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129, 255, 256, 257]
LONG = [300, 1031, 2049]
MAX_ELEMENTS = 20000
SPECIALS = ["nan", "inf", "-inf", "huge", "-huge", "subnormal", "tiny", "0", "-0"]
FUZZ = settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow,
                                                         HealthCheck.data_too_large])

dtypes = st.sampled_from([np.dtype(np.float32), np.dtype(np.float64)])
dims = st.sampled_from(SIZES + LONG)


def special(name, dtype, huge):
    fi = np.finfo(dtype)
    return {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": huge, "-huge": -huge,
            "subnormal": fi.smallest_subnormal * 3, "tiny": fi.tiny, "0": 0.0,
            "-0": -0.0}[name]


@st.composite
def arrays(draw, shape, dtype, specials=True, huge=None, kind="normal"):
    """Values of ``shape`` made by a drawn seed (normal at a drawn scale and offset, or
    uniform in [0, 1) for ``kind="uniform"``), with up to 3 special values at drawn places."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    if kind == "uniform":
        a = rng.random(shape)
    else:
        scale = draw(st.sampled_from([1.0, 1e-3, 30.0, 1e4]))
        offset = draw(st.sampled_from([0.0, 3.0, -1e4]))
        a = rng.standard_normal(shape) * scale + offset
    a = np.asarray(a, dtype)
    if specials and a.size:
        huge = np.finfo(dtype).max if huge is None else huge
        for _ in range(draw(st.integers(0, 3))):
            name = draw(st.sampled_from(specials if specials is not True else SPECIALS))
            a.flat[draw(st.integers(0, a.size - 1))] = special(name, dtype, huge)
    return a


@st.composite
def laid_out(draw, a):
    """``a`` in a drawn memory layout, read-only or not."""
    out = relayout(a, draw(st.sampled_from(LAYOUTS)))
    if draw(st.booleans()):
        out.flags.writeable = False
    return out


def native(a):
    """A C-ordered, native, writeable copy: what the reference is run on."""
    a = np.asarray(a)
    return np.array(a, dtype=a.dtype.newbyteorder("="), order="C")


def outcome(fn):
    """fn()'s results as a list of float64 arrays, or the type of the exception it raises."""
    try:
        res = fn()
    except (ValueError, TypeError) as exc:
        return type(exc)
    return [np.asarray(r) for r in (res if isinstance(res, (tuple, list)) else [res])]


def assert_layer_close(got, ref, dtype, scale, what):
    """got == ref within TOL * (|ref| + scale) (+ the smallest normal), NaN and +-Inf in the
    same places, got in the data's dtype."""
    assert got.shape == ref.shape, what
    assert got.dtype == dtype and got.dtype.isnative, f"{what}: dtype {got.dtype}"
    g, r = got.astype(np.float64), ref.astype(np.float64)
    nan = np.isnan(r)
    assert (np.isnan(g) == nan).all(), f"{what}: NaN in other places\n{g}\n{r}"
    inf = np.isinf(r)
    assert (g[inf] == r[inf]).all(), f"{what}: Inf in other places\n{g}\n{r}"
    fin = ~(nan | inf)
    scale = np.broadcast_to(np.asarray(scale, np.float64), r.shape)
    scale = np.where(np.isfinite(scale), scale, 0)
    bound = TOL[dtype] * (np.abs(r) + scale) + np.finfo(dtype).tiny
    err = np.abs(g - r)
    bad = fin & ~(err <= bound)
    assert not bad.any(), (f"{what}: {bad.sum()} of {r.size} off; worst at "
                           f"{np.unravel_index(np.argmax(np.where(bad, err / bound, 0)), r.shape)}"
                           f"\ngot {g[bad][:5]}\nref {r[bad][:5]}\nbound {bound[bad][:5]}")


def compare(backend, run, reference_inputs, inputs, check, out=None):
    """Run ``run(*inputs)`` on ``backend`` (with ``out=out`` when it is not None) and
    ``run(*reference_inputs)`` on the reference; the same exception type, or results that
    pass ``check(got, ref)``."""
    with fo.use_backend("numpy"):
        ref = outcome(lambda: run(*reference_inputs))
    kw = {} if out is None else {"out": out}
    with fo.use_backend(backend):
        got = outcome(lambda: run(*inputs, **kw))
    if isinstance(ref, type) or isinstance(got, type):
        assert got == ref, f"{backend}: {got} where the reference gives {ref}"
        return
    if out is not None:     # results written into out have out's byte order
        got = [native(g) for g in got]
    check(got, ref)


@st.composite
def outs(draw, shape, dtype):
    """None, or an out= array for a result of ``shape`` in a drawn layout (writeable)."""
    if draw(st.booleans()):
        return None
    return relayout(np.full(shape, 7, dtype), draw(st.sampled_from(LAYOUTS)))


# ------------------------------------------------------------------------------ batch norm
@st.composite
def batchnorm_cases(draw, training=True):
    dtype = draw(dtypes)
    shape = draw(st.tuples(dims, dims).filter(lambda s: s[0] * s[1] <= MAX_ELEMENTS))
    if draw(st.integers(0, 9)) == 0:            # the edges: an empty batch or no features
        shape = draw(st.sampled_from([(0, shape[1]), (shape[0], 0), (1, shape[1])]))
    axis = draw(st.sampled_from([0, 1, -1]))
    nf = shape[1 - axis % 2]
    huge = 1e100 if dtype == np.float64 else None
    x = draw(arrays(shape, dtype, huge=huge))
    # (huge values in x cancel in the mean in an order-dependent way, leaving it known to an
    # ulp of them: dy * (x - mean) is then not defined where dy is huge or infinite, x - mean
    # 0 or not deciding between NaN and inf)
    huge_x = (np.abs(x) == (huge or np.finfo(dtype).max)).any()
    dy = draw(arrays(shape, dtype, huge=huge, specials=[
        n for n in SPECIALS if "inf" not in n and "huge" not in n] if huge_x else True))
    gamma = draw(arrays((nf,), dtype, specials=False))
    beta = draw(arrays((nf,), dtype, specials=False))
    if draw(st.booleans()):                      # the course's (n, 1) columns, or (1, n)
        gamma, beta = (a.reshape((nf, 1) if axis % 2 else (1, nf)) for a in (gamma, beta))
    rmean = draw(arrays((nf,), dtype, specials=False))
    rvar = draw(arrays((nf,), dtype, specials=False, kind="uniform"))
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.5]))
    arrs = dict(x=x, dy=dy, gamma=gamma, beta=beta, rmean=rmean, rvar=rvar)
    laid = {k: draw(laid_out(a)) for k, a in arrs.items()}
    return dtype, axis, eps, arrs, laid


def _stats(x, axis, eps):
    """Per-feature float64 (mean, inv_std, max |x|, max |x - mean|), shaped to broadcast
    against x; from the data in float64 (only to size tolerances)."""
    x64 = x.astype(np.float64)
    with np.errstate(all="ignore"):
        mean = x64.mean(axis=axis, keepdims=True)
        centred = np.abs(x64 - mean)
        inv_std = 1 / np.sqrt((centred ** 2).mean(axis=axis, keepdims=True) + eps)
        return (mean, inv_std, np.abs(x64).max(axis=axis, keepdims=True, initial=0),
                centred.max(axis=axis, keepdims=True, initial=0))


def _features(a, axis, x):
    """A per-feature array as a float64 column/row broadcasting against x."""
    return np.expand_dims(np.asarray(a, np.float64).reshape(-1), axis)


def batchnorm_scales(x, dy, gamma, beta, axis, eps):
    """Sums of the magnitudes of the terms of y, dx, dgamma, dbeta (see the module doc):
    y = (x - mean) * gamma * inv_std + beta, with the mean's own error proportional to
    max |x|; dbeta = sum dy; dgamma = inv_std * sum dy * (x - mean);
    dx = gamma * inv_std * (dy - dbeta / n - (x - mean) * inv_std**2 * dgamma / n)."""
    n = x.shape[axis]
    mean, inv_std, xmax, cmax = _stats(x, axis, eps)
    g, b = np.abs(_features(gamma, axis, x)), np.abs(_features(beta, axis, x))
    with np.errstate(all="ignore"):
        s = g * inv_std
        y = s * (xmax + np.abs(mean)) + b
        ady = np.abs(dy.astype(np.float64))
        db = ady.sum(axis=axis, keepdims=True)
        dg = inv_std * (ady * (np.abs(x.astype(np.float64)) + np.abs(mean))).sum(
            axis=axis, keepdims=True)
        dx = s * (ady.max(axis=axis, keepdims=True, initial=0) + db / max(n, 1)
                  + cmax * inv_std * dg / max(n, 1))
    return y, dx, dg, db


def check_batchnorm(got, ref, dtype, scales, what):
    for g, r, s, name in zip(got, ref, scales, ("y", "dx", "dgamma", "dbeta")):
        assert_layer_close(g, r, dtype, s.reshape(-1) if g.ndim == 1 else s, f"{what} {name}")


@FUZZ
@given(case=batchnorm_cases(), data=st.data())
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_forward_backward(backend, case, data):
    """Forward then backward; out (when drawn) receives y, then dx."""
    dtype, axis, eps, arrs, laid = case
    out = data.draw(outs(arrs["x"].shape, dtype))

    def run(x, dy, gamma, beta, out=None):
        y, cache = fo.batchnorm_forward(x, gamma, beta, axis=axis, eps=eps, out=out)
        return (y.copy(), *fo.batchnorm_backward(dy, cache, out=out))

    names = ("x", "dy", "gamma", "beta")
    ax = axis % 2
    scales = batchnorm_scales(*(arrs[k] for k in names), ax, eps)
    compare(backend, run, [native(arrs[k]) for k in names], [laid[k] for k in names],
            lambda got, ref: check_batchnorm(got, ref, dtype, scales, backend),
            out=out)


@FUZZ
@given(case=batchnorm_cases(), data=st.data())
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_inference(backend, case, data):
    dtype, axis, eps, arrs, laid = case
    names = ("x", "gamma", "beta", "rmean", "rvar")
    out = data.draw(outs(arrs["x"].shape, dtype))

    def run(x, gamma, beta, rmean, rvar, out=None):
        return fo.batchnorm_inference(x, gamma, beta, rmean, rvar, axis=axis, eps=eps, out=out)

    ax = axis % 2
    x = arrs["x"]
    with np.errstate(all="ignore"):
        s = (np.abs(_features(arrs["gamma"], ax, x))
             / np.sqrt(_features(arrs["rvar"], ax, x) + eps))
        scale = (s * (np.abs(x.astype(np.float64)) + np.abs(_features(arrs["rmean"], ax, x)))
                 + np.abs(_features(arrs["beta"], ax, x)))
    compare(backend, run, [native(arrs[k]) for k in names], [laid[k] for k in names],
            lambda got, ref: assert_layer_close(got[0], ref[0], dtype, scale, backend), out)


@FUZZ
@given(case=batchnorm_cases(), momentum=st.sampled_from([0.1, 0.0, 1.0, 0.37]))
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_layer(backend, case, momentum):
    """fo.BatchNorm: a training step (y, dx, dgamma, dbeta, running statistics) then
    inference with the updated statistics."""
    dtype, axis, eps, arrs, laid = case
    nf = arrs["gamma"].size

    def run(x, dy, gamma, beta):
        layer = fo.BatchNorm(nf, axis=axis, momentum=momentum, eps=eps, dtype=dtype)
        layer.gamma[...], layer.beta[...] = gamma.reshape(-1), beta.reshape(-1)
        y = layer.forward(x)
        dx = layer.backward(dy)
        return (y, dx, layer.dgamma, layer.dbeta, layer.running_mean, layer.running_var,
                layer.forward(x, training=False))

    names = ("x", "dy", "gamma", "beta")
    ax = axis % 2
    x = arrs["x"]
    scales = batchnorm_scales(*(arrs[k] for k in names), ax, eps)
    n = x.shape[ax]
    mean, inv_std, xmax, cmax = (v.reshape(-1) for v in _stats(x, ax, eps))
    with np.errstate(all="ignore"):
        rm_scale = momentum * (xmax + np.abs(mean))
        rv_scale = momentum * n / max(n - 1, 1) * ((xmax + np.abs(mean)) * cmax + eps)

    def check(got, ref):
        check_batchnorm(got[:4], ref[:4], dtype, scales, backend)
        assert_layer_close(got[4], ref[4], dtype, rm_scale, f"{backend} running_mean")
        assert_layer_close(got[5], ref[5], dtype, rv_scale, f"{backend} running_var")
        # inference through the updated running statistics: their differences (within the
        # tolerance just checked) pass through the same formula, so compare to its scale
        with np.errstate(all="ignore"):
            s = np.abs(_features(arrs["gamma"], ax, x)) / np.sqrt(
                _features(ref[5], ax, x) + eps)
            scale = (s * (np.abs(x.astype(np.float64)) + np.abs(_features(ref[4], ax, x))
                          + _features(rm_scale + rv_scale, ax, x))
                     + np.abs(_features(arrs["beta"], ax, x)))
        assert_layer_close(got[6], ref[6], dtype, scale, f"{backend} inference")

    compare(backend, run, [native(arrs[k]) for k in names], [laid[k] for k in names], check)


# --------------------------------------------------------------------------------- softmax
@st.composite
def softmax_cases(draw, labels=None):
    """(dtype, axis, z, laid-out z, labels, laid-out labels): z of rank 0 to 3 (with 0 and
    wide/tall sizes), labels None, class indices or probabilities."""
    dtype = draw(dtypes)
    ndim = draw(st.integers(1 if labels else 0, 3))
    shape = draw(st.lists(dims, min_size=ndim, max_size=ndim).filter(
        lambda s: np.prod(s, dtype=np.int64) <= MAX_ELEMENTS))
    if shape and draw(st.integers(0, 9)) == 0:
        shape[draw(st.integers(0, len(shape) - 1))] = 0
    shape = tuple(shape)
    axis = draw(st.integers(-max(ndim, 1), max(ndim, 1) - 1))
    z = draw(arrays(shape, dtype))
    lab = None
    if labels == "int":
        k = shape[axis] if shape else 1
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
        lab = rng.integers(0, max(k, 1), size=shape[:axis % ndim] + shape[axis % ndim + 1:])
        lab = lab.astype(draw(st.sampled_from([np.int64, np.int32, np.uint8]))
                         if k <= 255 else np.int64)
    elif labels == "prob":
        lab = draw(arrays(shape, dtype, specials=["nan", "0", "subnormal"], kind="uniform"))
        if draw(st.booleans()) and lab.size:    # one-hot
            with np.errstate(invalid="ignore"):
                lab = (lab == lab.max(axis=axis, keepdims=True)).astype(dtype)
    return (dtype, axis, z, draw(laid_out(z)), lab,
            None if lab is None else draw(laid_out(lab)))


@FUZZ
@given(case=softmax_cases(), log=st.booleans(), data=st.data())
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_softmax(backend, case, log, data):
    dtype, axis, z, zl, _, _ = case
    out = data.draw(outs(z.shape, dtype))
    f = fo.log_softmax if log else fo.softmax
    # softmax = exp(z - max) * (1 / sum): a few correctly rounded factors, relative error
    # only. log_softmax = (z - max) - log(sum): each of the k terms of the sum (<= 1, the
    # largest 1) is within an ulp, so log(sum) is within about k ulps of 1, absolute (k <=
    # 2049 here): scale 1
    scale = 1.0 if log else 0.0
    compare(backend, lambda a, out=None: f(a, axis, out=out), [native(z)], [zl],
            lambda got, ref: assert_layer_close(got[0], ref[0], dtype, scale, backend), out)


def check_cross_entropy(got, ref, dtype, m, labels, backend):
    loss, ref_loss = float(got[0]), float(ref[0])
    # nonnegative terms (nonnegative labels times -log-probabilities): relative error, and
    # an absolute 1e-12 for a loss near 0 (log(sum exp) carries ~k ulps of 1 absolute)
    assert loss == pytest.approx(ref_loss, rel=TOL[dtype] if dtype == np.float64 else 1e-6,
                                 abs=1e-12, nan_ok=True), backend
    t = 1.0 if labels.dtype.kind in "iu" else np.nanmax(np.abs(labels), initial=0.0)
    # dlogits = (p - t) / m: terms of magnitude (1 + t) / m
    assert_layer_close(got[1], ref[1], dtype, (1 + t) / m, f"{backend} dlogits")


@FUZZ
@given(case=softmax_cases(labels="int") | softmax_cases(labels="prob"), data=st.data())
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_softmax_cross_entropy(backend, case, data):
    dtype, axis, z, zl, lab, lab_l = case
    m = max(z.size // max(z.shape[axis], 1), 1)
    out = data.draw(outs(z.shape, dtype))
    compare(backend, lambda a, b, out=None: fo.softmax_cross_entropy(a, b, axis, out=out),
            [native(z), native(lab)], [zl, lab_l],
            lambda got, ref: check_cross_entropy(got, ref, dtype, m, lab, backend), out)


# ------------------------------------------------------------------------------- threads
@st.composite
def big_cases(draw):
    """Shapes above the compiled backends' parallel threshold (2**15 elements)."""
    dtype = draw(dtypes)
    shape = draw(st.tuples(st.sampled_from([64, 65, 129, 257, 300]),
                           st.sampled_from([129, 257, 300, 1031])).filter(
        lambda s: s[0] * s[1] >= 1 << 15))
    if draw(st.booleans()):
        shape = shape[::-1]
    x = draw(arrays(shape, dtype))
    return dtype, x, draw(arrays(shape, dtype)), draw(st.integers(0, 2 ** 32 - 1))


@settings(max_examples=10)
@given(case=big_cases())
@pytest.mark.parametrize("backend", COMPILED)
def test_layers_are_bit_identical_for_1_and_2_threads(backend, case):
    dtype, x, dy, seed = case
    rng = np.random.default_rng(seed)

    def everything():
        out = []
        for axis in (0, 1):
            nf = x.shape[1 - axis]
            y, cache = fo.batchnorm_forward(x, np.ones(nf, dtype), np.zeros(nf, dtype),
                                            axis=axis)
            out += [y, *fo.batchnorm_backward(dy, cache)]
        for axis in (0, 1):
            labels = rng.integers(0, x.shape[axis], x.shape[1 - axis])
            out += [fo.softmax(x, axis), fo.log_softmax(x, axis),
                    *fo.softmax_cross_entropy(x, labels, axis),
                    *fo.softmax_cross_entropy(x, np.abs(dy), axis)]
        return [np.asarray(a).tobytes() for a in out]

    threads = fo.get_num_threads()
    results = []
    try:
        with fo.use_backend(backend):
            for n in (1, 2):
                fo.set_num_threads(n)
                rng = np.random.default_rng(seed)
                results.append(everything())
    finally:
        fo.set_num_threads(threads)
    assert results[0] == results[1]
