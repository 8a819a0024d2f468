"""Batch normalization and the softmax family: every backend against the NumPy reference over
dtypes, shapes, axes and memory layouts; the reference's gradients against finite differences;
torch parity where installed; edge cases and errors."""
import contextlib
import copy
import itertools
import math
import pickle
import re
import warnings

import numpy as np
import pytest

import fastopt as fo
from conftest import (AVAILABLE, COMPILED, GRID_BACKENDS, LAYOUTS, OwnArithmetic, cython_builds,
                      needs_torch, relayout, tolerance, torch, use_cython_build)


def close(a, b, dtype, scale=1.0):
    """float64 to 1e-12 of the data's scale; float32 to a few ulps of it. Reductions are summed
    in float64 in a different order than NumPy's pairwise sums, hence the scale-relative atol."""
    if np.dtype(dtype) == np.float64:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * scale)
    else:
        np.testing.assert_allclose(a, b, rtol=4e-6, atol=4e-6 * scale)


def layout(a, how):
    if how == "C":
        return np.ascontiguousarray(a)
    if how == "F":
        return np.asfortranarray(a)
    out = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)[..., ::2]     # strided
    out[...] = a
    return out


BN_SHAPES = [(2, 2), (2, 7), (33, 5), (256, 300), (1031, 3)]
# the tests that hold the Numba backend to the Cython one's bits: in the run on the Cython backend
# (every CI run sets one backend; without FASTOPT_BACKEND the first is Cython's)
cython_against_numba = pytest.mark.skipif(
    GRID_BACKENDS[0] != "cython" or "numba" not in AVAILABLE,
    reason="in the Cython backend's run, with the Numba backend installed")


@pytest.mark.parametrize("how", ["C", "F", "strided"])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_matches_reference(backend, shape, axis, how, dtype):
    rng = np.random.default_rng(0)
    x = layout((rng.standard_normal(shape) * 2 + 3).astype(dtype), how)
    nf = shape[1 - axis]
    gamma = rng.standard_normal(nf).astype(dtype)
    beta = rng.standard_normal(nf).astype(dtype)
    dy = layout(rng.standard_normal(shape).astype(dtype), how)
    with fo.use_backend("numpy"):
        y_ref, c_ref = fo.batchnorm_forward(x, gamma, beta, axis=axis)
        grads_ref = fo.batchnorm_backward(dy, c_ref)
        inf_ref = fo.batchnorm_inference(x, gamma, beta, gamma * 0 + 0.5, gamma * 0 + 2.0, axis)
    with fo.use_backend(backend):
        y, cache = fo.batchnorm_forward(x, gamma, beta, axis=axis)
        grads = fo.batchnorm_backward(dy, cache)
        inf = fo.batchnorm_inference(x, gamma, beta, gamma * 0 + 0.5, gamma * 0 + 2.0, axis)
    assert y.shape == x.shape and y.dtype == x.dtype
    close(y, y_ref, dtype, 10)
    close(inf, inf_ref, dtype, 10)
    for a, b in zip(grads, grads_ref):
        assert a.dtype == x.dtype
        close(a, b, dtype, 10 * shape[axis])


@pytest.mark.parametrize("how", LAYOUTS)
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape", [(4, 4), (5, 3), (3, 17)], ids=str)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_gives_the_reference_result_in_every_layout(backend, shape, axis, how, dtype):
    """Every input (x, gamma, beta, running stats, dy, out) in every layout gives the result
    of the reference on C-ordered copies. Regression: x = A.T (the course's column layout)
    was taken for C-ordered, giving wrong y, dx, dgamma, dbeta and inference, and a
    broadcast error when not square."""
    rng = np.random.default_rng(12)
    nf = shape[1 - axis]
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta, rmean = (rng.standard_normal((nf, 1)).astype(dtype) for _ in range(3))
    rvar = (rng.random((nf, 1)) + 0.5).astype(dtype)
    with fo.use_backend("numpy"):
        y_ref, cache = fo.batchnorm_forward(x, gamma, beta, axis=axis)
        grads_ref = fo.batchnorm_backward(dy, cache)
        inf_ref = fo.batchnorm_inference(x, gamma, beta, rmean, rvar, axis=axis)
    other = LAYOUTS[(LAYOUTS.index(how) + 1) % len(LAYOUTS)]
    for lay_x, lay_dy in ((how, how), (how, other), (other, how)):
        x_l, dy_l = relayout(x, lay_x), relayout(dy, lay_dy)
        params = [relayout(a, how) for a in (gamma, beta, rmean, rvar)]
        with fo.use_backend(backend):
            y, cache = fo.batchnorm_forward(x_l, *params[:2], axis=axis)
            grads = fo.batchnorm_backward(dy_l, cache)
            inf = fo.batchnorm_inference(x_l, *params, axis=axis)
            out = relayout(np.zeros(shape, dtype), lay_dy)
            assert fo.batchnorm_forward(x_l, *params[:2], axis=axis, out=out)[0] is out
            np.testing.assert_array_equal(out, y)
            out = relayout(np.zeros(shape, dtype), lay_x)
            assert fo.batchnorm_backward(dy_l, cache, out=out)[0] is out
            np.testing.assert_array_equal(out, grads[0])
        close(y, y_ref, dtype, 10)
        close(inf, inf_ref, dtype, 10)
        for a, b in zip(grads, grads_ref):
            close(a, b, dtype, 10 * shape[axis])


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_is_stable_for_data_with_a_large_mean(backend, dtype):
    rng = np.random.default_rng(1)
    x64 = 1e4 + rng.standard_normal((500, 4))
    x = x64.astype(dtype)
    exact = (x.astype(np.float64) - x.astype(np.float64).mean(0)) / x.astype(np.float64).std(0)
    with fo.use_backend(backend):
        y, _ = fo.batchnorm_forward(x, np.ones(4, dtype), np.zeros(4, dtype), eps=0.0)
    np.testing.assert_allclose(y, exact, atol=1e-5 if dtype == np.float32 else 1e-11)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("shape", [(1000, 2), (5000, 3), (100, 3000), (130, 7)])
def test_batchnorm_variance_of_a_small_spread_about_a_large_mean(backend, shape):
    """float64 -1e6 + 1e-3 randn (mean / std 1e9), over several blocks of rows, several row
    chunks, and a short batch whose statistics are split by columns: the variance within
    1e-10 of the definition's (math.fsum about the mean; the reference's two passes: up to
    1.2e-11, the compiled backends' merges up to 2e-14). They had merged their blocks through
    the difference of two means, each rounded to an ulp of 1e6: 2.6e-9 - 1.3e-7."""
    x = -1e6 + 1e-3 * np.random.default_rng(3).standard_normal(shape)
    exact = []
    for col in x.T:
        m = math.fsum(col) / len(col)
        exact.append(math.fsum((col - m) ** 2) / len(col))
    before = fo.get_num_threads()
    with fo.use_backend(backend):
        try:
            for threads in (1, 2):
                fo.set_num_threads(threads)
                _, cache = fo.batchnorm_forward(x, np.ones(shape[1]), np.zeros(shape[1]))
                np.testing.assert_allclose(cache.var, exact, rtol=1e-10, atol=0)
        finally:
            fo.set_num_threads(before)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value", [0.1, 0.7, 1e14 / 3, -2.5e-300])
def test_batchnorm_of_a_constant_feature_is_beta(backend, axis, dtype, value):
    """A constant feature's mean is the constant, its variance 0 and y = beta (eps = 0: y
    NaN, 0 / 0), for any batch size and thread count: float64 x.mean() is not exact (0.1 over
    37 rows), and the normalization had blown its error up (1e14 / 3: |y| ~ 1; eps = 0: y =
    -1) on the NumPy reference, and with features as rows on the compiled backends too."""
    before = fo.get_num_threads()
    with fo.use_backend(backend):
        try:
            for n in (2, 37, 1000, 4099):
                x = np.full((n, 3) if axis == 0 else (3, n), value, dtype)
                gamma, beta = np.array([1, 2, 3], dtype), np.array([0.5, 0, -1], dtype)
                for threads in (1, 2):
                    fo.set_num_threads(threads)
                    y, cache = fo.batchnorm_forward(x, gamma, beta, axis=axis)
                    np.testing.assert_array_equal(cache.mean, np.float64(dtype(value)))
                    np.testing.assert_array_equal(cache.var, 0.0)
                    np.testing.assert_array_equal(
                        y, np.broadcast_to(beta[None] if axis == 0 else beta[:, None], x.shape))
                    y, _ = fo.batchnorm_forward(x, gamma, beta, axis=axis, eps=0.0)
                    assert np.isnan(y).all()
        finally:
            fo.set_num_threads(before)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_of_an_infinite_scale_is_infinite_not_nan(backend):
    """Where gamma * inv_std overflows (gamma 1e306 with eps 1e-5; or eps = 0 and a float64
    spread of ~1e-306, whose variance underflows to 0), y = (x - mean) * inf: -inf below the
    mean, +inf above it, NaN only at it, on every backend. The correction for the error of
    the rounded mean was added as mean_error * inf, an infinite bias, which made every x on
    the other side of the mean NaN (92 of the 192 values with gamma 1e306 on every backend;
    with the tiny spread, on whichever backend's mean rounded inexactly, q70, q72), and no
    NumPy warning."""
    rng = np.random.default_rng(0)
    cases = [(1 + 1e-3 * rng.standard_normal((64, 3)), 1e306, 1e-5),
             (rng.standard_normal((9, 4)) * np.finfo(np.float64).tiny * 64, 1.0, 0.0)]
    for x, gamma, eps in cases:
        n = x.shape[1]
        with fo.use_backend(backend), warnings.catch_warnings():
            warnings.simplefilter("error")      # (numba's had warned of the overflow)
            y, cache = fo.batchnorm_forward(x, np.full(n, gamma), np.zeros(n), eps=eps)
        expected = np.where(x < cache.mean, -np.inf, np.where(x > cache.mean, np.inf, np.nan))
        np.testing.assert_array_equal(y, expected)


def _bn_loss(x, gamma, beta, w, axis):
    with fo.use_backend("numpy"):
        y, _ = fo.batchnorm_forward(x, gamma, beta, axis=axis)
    return float((y * w).sum())


@pytest.mark.parametrize("axis", [0, 1])
def test_reference_batchnorm_gradients_match_finite_differences(axis):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 4))
    nf = x.shape[1 - axis]
    gamma, beta = rng.standard_normal(nf), rng.standard_normal(nf)
    w = rng.standard_normal(x.shape)          # dL/dy for L = sum(y * w)
    with fo.use_backend("numpy"):
        _, cache = fo.batchnorm_forward(x, gamma, beta, axis=axis)
        dx, dgamma, dbeta = fo.batchnorm_backward(w, cache)
    h = 1e-6
    for arr, grad in ((x, dx), (gamma, dgamma), (beta, dbeta)):
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + h
            up = _bn_loss(x, gamma, beta, w, axis)
            arr[idx] = old - h
            down = _bn_loss(x, gamma, beta, w, axis)
            arr[idx] = old
            num[idx] = (up - down) / (2 * h)
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


@needs_torch
@pytest.mark.parametrize("momentum", [0.1, None])       # None: a cumulative average
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_matches_torch_autograd_and_running_stats(backend, momentum):
    rng = np.random.default_rng(3)
    layer_t = torch.nn.BatchNorm1d(5, momentum=momentum, eps=1e-5).double()
    with fo.use_backend(backend):
        layer = fo.BatchNorm(5, axis=0, momentum=momentum, eps=1e-5, dtype=np.float64)
        for _ in range(4):
            x = rng.standard_normal((16, 5)) * 3 + 1
            dy = rng.standard_normal((16, 5))
            xt = torch.tensor(x, requires_grad=True)
            yt = layer_t(xt)
            yt.backward(torch.tensor(dy))
            y = layer.forward(x)
            dx = layer.backward(dy)
            np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(layer.dgamma, layer_t.weight.grad.numpy(), rtol=1e-10)
            np.testing.assert_allclose(layer.dbeta, layer_t.bias.grad.numpy(), rtol=1e-10)
            layer_t.weight.grad = layer_t.bias.grad = None
        np.testing.assert_allclose(layer.running_mean, layer_t.running_mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(layer.running_var, layer_t.running_var.numpy(), rtol=1e-12)
        assert layer.num_batches_tracked == int(layer_t.num_batches_tracked) == 4
        layer_t.eval()
        x = rng.standard_normal((3, 5))
        np.testing.assert_allclose(layer.forward(x, training=False),
                                   layer_t(torch.tensor(x)).detach().numpy(), rtol=1e-12)


def test_batchnorm_course_layout_is_the_transpose():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((9, 4))
    g, b = rng.standard_normal(4), rng.standard_normal(4)
    y0, _ = fo.batchnorm_forward(x, g, b, axis=0)
    y1, _ = fo.batchnorm_forward(np.ascontiguousarray(x.T), g.reshape(4, 1), b.reshape(4, 1),
                                 axis=1)
    np.testing.assert_allclose(y1, y0.T, rtol=1e-13, atol=1e-14)


def _bn_exact(x, gamma, beta, dy, axis, eps=1e-5):
    """Batch norm's y, dx, dgamma, dbeta over ``axis`` of an x of any rank, in float64 NumPy
    with keepdims (an independent computation: not through the 2-D form)."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    g = np.expand_dims(gamma.astype(np.float64).reshape(np.delete(x.shape, axis)), axis)
    b = np.expand_dims(beta.astype(np.float64).reshape(np.delete(x.shape, axis)), axis)
    n = x.shape[axis]
    mean = x.mean(axis, keepdims=True)
    inv_std = 1 / np.sqrt(((x - mean) ** 2).mean(axis, keepdims=True) + eps)
    xhat = (x - mean) * inv_std
    dbeta, dgamma = dy.sum(axis, keepdims=True), (dy * xhat).sum(axis, keepdims=True)
    dx = g * inv_std / n * (n * dy - dbeta - xhat * dgamma)
    return xhat * g + b, dx, dgamma.squeeze(axis), dbeta.squeeze(axis)


@pytest.mark.parametrize("how", ["C", "F", "strided"])
@pytest.mark.parametrize("shape, axis", [((5, 3, 4), 0), ((5, 3, 4), 1), ((5, 3, 4), -1),
                                         ((4, 2, 3, 2), 2), ((2, 3, 1, 6), 3), ((7,), 0)],
                         ids=str)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_of_other_ranks_normalizes_over_the_batch_axis(backend, shape, axis, how,
                                                                  dtype):
    """API.md: gamma and beta have the shape of x with the batch axis removed, for an x of any
    rank (these were refused as not 2-D). Forward, backward and inference against float64
    NumPy over that axis, with y and dx shaped like x, the grads like gamma; gamma given with
    the batch axis kept as 1 and flat too; out= C-ordered (written in place) and strided."""
    rng = np.random.default_rng(1)
    k = axis % len(shape)
    features = shape[:k] + shape[k + 1:]
    x = layout((rng.standard_normal(shape) * 2 + 3).astype(dtype), how)
    dy = layout(rng.standard_normal(shape).astype(dtype), how)
    gamma = np.asarray(rng.standard_normal(features) + 1, dtype)
    beta = np.asarray(rng.standard_normal(features), dtype)
    y_exact, dx_exact, dgamma_exact, dbeta_exact = _bn_exact(x, gamma, beta, dy, k)
    with fo.use_backend(backend):
        y, cache = fo.batchnorm_forward(x, gamma, beta, axis=axis)
        dx, dgamma, dbeta = fo.batchnorm_backward(dy, pickle.loads(pickle.dumps(cache)))
        assert y.shape == dx.shape == shape and dgamma.shape == dbeta.shape == features
        close(y, y_exact, dtype, 10)
        close(dx, dx_exact, dtype, 10 * shape[k])
        close(dgamma, dgamma_exact, dtype, 10 * shape[k])
        close(dbeta, dbeta_exact, dtype, 10 * shape[k])
        kept = shape[:k] + (1,) + shape[k + 1:]
        for out in (np.empty(shape, dtype), layout(np.empty(shape, dtype), "strided")):
            y2, _ = fo.batchnorm_forward(x, gamma.reshape(kept), beta.reshape(-1), axis, out=out)
            assert y2 is out
            np.testing.assert_array_equal(out, y)
            dx2, _, _ = fo.batchnorm_backward(dy, cache, out=np.empty_like(out))
            np.testing.assert_array_equal(dx2, dx)
        mean, var = (np.asarray(rng.standard_normal(features), dtype),
                     np.asarray(rng.random(features) + 0.5, dtype))
        inf = fo.batchnorm_inference(x, gamma, beta, mean.reshape(kept), var, axis)
    pad = lambda a: np.expand_dims(a.astype(np.float64), k)        # noqa: E731
    close(inf, (x - pad(mean)) / np.sqrt(pad(var) + 1e-5) * pad(gamma) + pad(beta), dtype, 10)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_layer_takes_other_ranks(backend):
    """BatchNorm with num_features the positions along x's other axes: its running statistics
    and grads as the functions'; an x of the wrong positions is named by the layer."""
    rng = np.random.default_rng(2)
    x, dy = rng.standard_normal((2, 6, 8, 3)), rng.standard_normal((2, 6, 8, 3))
    layer = fo.BatchNorm(2 * 6 * 8, axis=-1, dtype=np.float64)
    with fo.use_backend(backend):
        y = layer(x)
        dx = layer.backward(dy)
        y_exact, dx_exact, dgamma_exact, _ = _bn_exact(x, layer.gamma, layer.beta, dy, 3)
        close(y, y_exact, np.float64, 10)
        close(dx, dx_exact, np.float64, 30)
        close(layer.dgamma, dgamma_exact.reshape(-1), np.float64, 30)
        close(layer.running_var, 0.9 + 0.1 * x.var(-1, ddof=1).reshape(-1), np.float64)
        with pytest.raises(ValueError, match=r"x has shape \(2, 6, 8\): 12 features"):
            layer(x[..., 0], training=False)
        wide = fo.BatchNorm(2 * 6 * 3, axis=2, dtype=np.float64)    # any axis of x's
        y_exact = _bn_exact(x, wide.gamma, wide.beta, dy, 2)[0]
        close(wide(x), y_exact, np.float64, 10)
        with pytest.raises(TypeError, match="num_features must be an int"):
            fo.BatchNorm(np.timedelta64(3, "s"))
        # the layer's arrays in x's shape without the batch axis, and messages in it
        layer.running_mean = layer.running_mean.reshape(2, 6, 8).copy()
        layer(x)
        layer.running_var = np.ones(95)
        with pytest.raises(ValueError, match=re.escape("running_var has shape (95,), expected "
                                                       "(2, 6, 8) (x's shape (2, 6, 8, 3) "
                                                       "without the batch axis 3)")):
            layer(x)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_of_other_ranks_with_out_sharing_gamma(backend):
    """out= in gamma's memory, with a middle batch axis or a reversed out (y computed apart,
    then copied): the cache kept a view of the caller's gamma, which writing y overwrote, and
    dx came out 21.6 off (probe K). gamma is copied first, as the 2-D path copies it."""
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 3, 2))
    g0 = rng.standard_normal((4, 2)) + 1
    for axis, out_of in ((1, lambda buf: buf.reshape(4, 3, 2)),
                         (0, lambda buf: buf.reshape(3, 4, 2)[::-1].transpose(1, 0, 2))):
        k_shape = (4, 2) if axis == 1 else (3, 2)
        gamma_exact = g0 if axis == 1 else g0[:3]
        _, dx_exact, _, _ = _bn_exact(x, gamma_exact, gamma_exact * 0, dy, axis)
        buf = np.zeros(x.size)
        gamma = buf[:gamma_exact.size].reshape(k_shape)
        gamma[...] = gamma_exact
        with fo.use_backend(backend):
            _, cache = fo.batchnorm_forward(x, gamma, np.zeros(k_shape), axis, out=out_of(buf))
            dx, _, _ = fo.batchnorm_backward(dy, cache)
        close(dx, dx_exact, np.float64, 100)


def test_batchnorm_errors_name_the_argument():
    x = np.ones((4, 3))
    g = np.ones(3)
    with pytest.raises(ValueError, match="batch of 1"):
        fo.batchnorm_forward(np.ones((1, 3)), g, g)
    with pytest.raises(ValueError, match="gamma"):
        fo.batchnorm_forward(x, np.ones(4), g)
    with pytest.raises(TypeError, match="beta"):
        fo.batchnorm_forward(x, g, g.astype(np.float32))
    with pytest.raises(TypeError, match="x"):
        fo.batchnorm_forward(np.ones((4, 3), int), g, g)
    with pytest.raises(ValueError, match=re.escape("gamma has shape (3,), expected (3, 2)")):
        fo.batchnorm_forward(np.ones((4, 3, 2)), g, np.ones((3, 2)))
    with pytest.raises(ValueError, match="batch of 1 along axis 2"):
        fo.batchnorm_forward(np.ones((4, 3, 1)), g, g, axis=2)
    with pytest.raises(ValueError, match="Invalid axis: 3"):
        fo.batchnorm_forward(np.ones((4, 3, 2)), g, g, axis=3)
    with pytest.raises(ValueError, match="x is 0-d"):
        fo.batchnorm_inference(np.array(1.0), g, g, g, g)
    with pytest.raises(ValueError, match="running_var"):
        fo.batchnorm_inference(x, g, g, g, np.ones(2))
    _, cache = fo.batchnorm_forward(x + np.arange(4)[:, None], g, g)
    with pytest.raises(ValueError, match="dy"):
        fo.batchnorm_backward(np.ones((3, 4)), cache)


def test_batchnorm_out_argument_is_written():
    x = np.random.default_rng(5).standard_normal((8, 3))
    out = np.empty_like(x)
    y, _ = fo.batchnorm_forward(x, np.ones(3), np.zeros(3), out=out)
    assert y is out


# --------------------------------------------------------------------------------- softmax
# (3, 20011): rows longer than fo_row.h's FO_LONG_ROW_BYTES, which prefetch otherwise;
# (9, 64), (6, 48): rows of whole 64-byte vectors, which layers.pyx takes as long rows
SM_CASES = [((7,), -1), ((1,), 0), ((5, 1000), -1), ((5, 1000), 0), ((3, 4, 5), 1),
            ((3, 4, 300), 0), ((2, 3, 4), -1), ((10, 0), 0), ((3, 20011), -1), ((9, 64), -1),
            ((6, 48), -1)]


@pytest.mark.parametrize("how", ["C", "F", "strided"])
@pytest.mark.parametrize("shape,axis", SM_CASES, ids=str)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_softmax_family_matches_reference(backend, shape, axis, how, dtype):
    rng = np.random.default_rng(6)
    z = layout((rng.standard_normal(shape) * 4).astype(dtype), how) if shape[-1] else \
        np.zeros(shape, dtype)
    with fo.use_backend("numpy"):
        ref = (fo.softmax(z, axis), fo.log_softmax(z, axis))
    with fo.use_backend(backend):
        got = (fo.softmax(z, axis), fo.log_softmax(z, axis))
    for a, b in zip(got, ref):
        assert a.shape == z.shape and a.dtype == z.dtype
        close(a, b, dtype, 10)
    if z.size:
        np.testing.assert_allclose(got[0].sum(axis=axis), 1, rtol=1e-5)


@pytest.mark.parametrize("shape,axis", [((6, 10), -1), ((10, 6), 0), ((2, 5, 3), 1)], ids=str)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_softmax_cross_entropy_matches_reference(backend, shape, axis, dtype):
    rng = np.random.default_rng(7)
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    k = shape[axis]
    labels = rng.integers(0, k, size=tuple(np.delete(shape, axis)))
    probs = rng.random(shape).astype(dtype)
    probs /= probs.sum(axis=axis, keepdims=True)
    onehot = (np.arange(k).reshape([-1 if a == axis % len(shape) else 1
                                    for a in range(len(shape))])
              == np.expand_dims(labels, axis)).astype(dtype)
    for lab in (labels, probs, onehot):
        with fo.use_backend("numpy"):
            loss_ref, d_ref = fo.softmax_cross_entropy(z, lab, axis)
        with fo.use_backend(backend):
            loss, d = fo.softmax_cross_entropy(z, lab, axis)
        close(d, d_ref, dtype, 1.0 / np.prod(shape))
        assert loss == pytest.approx(loss_ref, rel=1e-12 if dtype == np.float64 else 1e-6)
    loss_int, _ = fo.softmax_cross_entropy(z, labels, axis)
    loss_hot, _ = fo.softmax_cross_entropy(z, onehot, axis)
    assert loss_int == pytest.approx(loss_hot, rel=1e-6)


def test_softmax_matches_the_course_example():
    np.testing.assert_allclose(fo.softmax(np.array([5.0, 2.0, -1.0, 3.0])),
                               [0.842, 0.042, 0.002, 0.114], atol=5e-4)


def test_reference_cross_entropy_gradient_matches_finite_differences():
    rng = np.random.default_rng(8)
    z = rng.standard_normal((4, 6))
    labels = rng.integers(0, 6, size=4)
    with fo.use_backend("numpy"):
        _, d = fo.softmax_cross_entropy(z, labels)
        h = 1e-6
        num = np.zeros_like(z)
        for idx in np.ndindex(z.shape):
            zp, zm = z.copy(), z.copy()
            zp[idx] += h
            zm[idx] -= h
            num[idx] = (fo.softmax_cross_entropy(zp, labels)[0]
                        - fo.softmax_cross_entropy(zm, labels)[0]) / (2 * h)
    np.testing.assert_allclose(d, num, rtol=1e-6, atol=1e-9)


@needs_torch
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_cross_entropy_matches_torch_autograd(backend):
    rng = np.random.default_rng(9)
    z = rng.standard_normal((8, 5)) * 2
    labels = rng.integers(0, 5, size=8)
    zt = torch.tensor(z, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(labels))
    lt.backward()
    with fo.use_backend(backend):
        loss, d = fo.softmax_cross_entropy(z, labels)
        logp = fo.log_softmax(z)
    assert loss == pytest.approx(lt.item(), rel=1e-12)
    np.testing.assert_allclose(d, zt.grad.numpy(), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(logp, torch.log_softmax(torch.tensor(z), -1).numpy(),
                               rtol=1e-12)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_softmax_edge_cases(backend, dtype):
    z = np.array([[1e4, -1e4, 0.0],
                  [-np.inf, -np.inf, 2.0],
                  [np.nan, 1.0, 2.0],
                  [-1e4, -1e4, -1e4]], dtype)
    with fo.use_backend(backend):
        p = fo.softmax(z)
        lp = fo.log_softmax(z)
        loss, d = fo.softmax_cross_entropy(z[[0, 1, 3]], np.array([0, 2, 1]))
    np.testing.assert_allclose(p[0], [1, 0, 0])
    np.testing.assert_allclose(p[1], [0, 0, 1])
    assert np.isnan(p[2]).all() and np.isfinite(p[[0, 1, 3]]).all()     # NaN stays in its row
    np.testing.assert_allclose(p[3], 1 / 3, rtol=1e-6)
    assert lp[1, 0] == -np.inf and lp[1, 2] == 0 and np.isfinite(lp[0]).all()
    assert np.isfinite(loss) and np.isfinite(d).all()


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_softmax_nan_and_inf_anywhere_in_a_long_row(backend, dtype):
    """A NaN or +inf in the vector body or the tail of a row's max and sums: that row is NaN
    (+inf - +inf), as in the reference; -inf entries are probabilities of 0."""
    rng = np.random.default_rng(12)
    z = rng.standard_normal((9, 203)).astype(dtype)
    for row, col in enumerate([0, 5, 100, 200, 202]):
        z[row, col] = np.nan if row % 2 == 0 else np.inf
    z[5, 1::7] = -np.inf
    labels = np.arange(9)
    with fo.use_backend("numpy"), np.errstate(invalid="ignore"):
        want = [fo.softmax(z), fo.log_softmax(z), *fo.softmax_cross_entropy(z[5:], labels[5:])]
    with fo.use_backend(backend), np.errstate(invalid="ignore"):
        got = [fo.softmax(z), fo.log_softmax(z), *fo.softmax_cross_entropy(z[5:], labels[5:])]
    assert np.isnan(got[0][:5]).all() and np.isfinite(got[0][5:]).all()
    assert (got[0][5, 1::7] == 0).all() and (got[1][5, 1::7] == -np.inf).all()
    for a, b in zip(got, want):
        close(a, b, dtype, 10)


@pytest.mark.parametrize("k", [1003, 20011])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_softmax_row_gives_the_bits_it_gives_alone(backend, k, dtype):
    """Each row of a stack gives the bits of the same row alone, on 1 and 2 threads: the Cython
    kernels take a row's max in the previous row's exp loop, except for a chunk's first row
    (and a lone row), whose max pass is its own. Each row's max sits elsewhere: first, last
    (the scalar tail), in the last whole vector, in the middle; NaN and +inf rows; a row of
    -inf and one with -0 and +0 as its max. And the reference's results."""
    rng = np.random.default_rng(43)
    z = (rng.standard_normal((24, k)) * 3).astype(dtype)
    for r, col in enumerate([0, k - 1, k - 9, k // 2, 7, k - 2]):
        z[r, col] = 40
    z[6, 100], z[7, k - 1], z[8, 3] = np.nan, np.inf, np.nan
    z[9] = -np.inf
    z[10] = -np.abs(z[10])
    z[10, 5], z[10, k - 1] = -0.0, 0.0
    labels = rng.integers(0, k, 24)
    probs = rng.random(z.shape).astype(dtype)
    probs /= probs.sum(axis=1, keepdims=True)
    with fo.use_backend("numpy"), np.errstate(invalid="ignore"):
        ref = [fo.softmax(z), fo.log_softmax(z), fo.softmax_cross_entropy(z, labels)[1],
               fo.softmax_cross_entropy(z, probs)[1]]
    with fo.use_backend(backend), np.errstate(invalid="ignore"):
        got = [fo.softmax(z), fo.log_softmax(z), fo.softmax_cross_entropy(z, labels)[1],
               fo.softmax_cross_entropy(z, probs)[1]]
    for a, b, scale in zip(got, ref, (1, 10, 1 / 24, 1 / 24)):
        close(a, b, dtype, scale)
    with fo.use_backend(backend), np.errstate(invalid="ignore"):
        for threads in (1, 2):
            fo.set_num_threads(threads)
            try:
                p, lp = fo.softmax(z), fo.log_softmax(z)
                for r in range(len(z)):
                    assert fo.softmax(z[r:r + 1]).tobytes() == p[r:r + 1].tobytes()
                    assert fo.log_softmax(z[r:r + 1]).tobytes() == lp[r:r + 1].tobytes()
                # cross-entropy's gradient (divided by the batch size): the rows rolled by one
                _, d = fo.softmax_cross_entropy(z, labels)
                _, d_rolled = fo.softmax_cross_entropy(np.roll(z, 1, 0), np.roll(labels, 1))
                assert np.roll(d, 1, 0).tobytes() == d_rolled.tobytes()
            finally:
                fo.set_num_threads(2)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_exp_over_its_whole_range(backend, dtype, axis):
    """Rows [0, t] with t from beyond underflow to 0: probabilities exp(t) / (1 + exp(t)) down
    through the subnormals to exactly 0, against the reference (and against the exact value
    where it is a normal number), in vector bodies and tails alike."""
    lo = -110 if np.dtype(dtype) == np.float32 else -760
    t = np.concatenate([np.linspace(lo, 0, 997), [-np.inf, -0.0, 1e-30]]).astype(dtype)
    z = np.stack([np.zeros_like(t), t], axis=1)
    zz = z if axis == -1 else np.ascontiguousarray(z.T)
    with fo.use_backend(backend):
        p = fo.softmax(zz, axis=axis)
    with fo.use_backend("numpy"):
        want = fo.softmax(zz, axis=axis)
    tiny = np.finfo(dtype).tiny
    np.testing.assert_allclose(p, want, rtol=4e-7 if dtype == np.float32 else 1e-15, atol=tiny)
    p1 = p[:, 1] if axis == -1 else p[1]
    exact = np.exp(t.astype(np.longdouble)) / (1 + np.exp(t.astype(np.longdouble)))
    normal = exact > tiny
    np.testing.assert_allclose(p1[normal], exact[normal].astype(dtype),
                               rtol=4e-7 if dtype == np.float32 else 1e-15)
    assert p1[t == -np.inf] == 0 and (p1[~normal] <= 2 * tiny).all()


def test_cross_entropy_errors():
    z = np.zeros((3, 4))
    with pytest.raises(ValueError, match="out of range"):
        fo.softmax_cross_entropy(z, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="out of range"):
        fo.softmax_cross_entropy(z, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match="labels has shape"):
        fo.softmax_cross_entropy(z, np.array([0, 1]))
    with pytest.raises(TypeError, match="logits must have dtype float16, float32 or float64 "
                       r"\(or an integer or bool dtype, taken as float64\), got complex128"):
        fo.softmax_cross_entropy(np.zeros((3, 4), np.complex128), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match=r"z must have dtype float16, .*got <U1"):
        fo.softmax(np.array(["a"]))
    with pytest.raises(TypeError, match="z must have dtype float16, float32 or float64"):
        fo.softmax(np.zeros(4, np.longdouble))
    with pytest.raises(ValueError, match="axis"):
        fo.softmax(z, axis=2)
    with pytest.raises(ValueError, match="axis"):
        fo.softmax(np.array(1.0), axis=1)
    with pytest.raises(ValueError, match="logits"):
        fo.softmax_cross_entropy(np.array(1.0), 0)
    with pytest.raises(ValueError, match=r"out of range: logits have no classes, got values "
                                         r"in \[0, 0\]"):     # (had said "classes are 0..-1")
        fo.softmax_cross_entropy(np.zeros((3, 0)), np.zeros(3, int))


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_cross_entropy_of_certain_predictions_is_plus_zero_without_warnings(backend):
    """A loss of exactly zero is +0.0, as torch's (-sum / m had made it -0.0); float64
    probabilities past float32's range beside float32 logits are inf there, silently (the cast
    had warned: an error under -W error)."""
    with fo.use_backend(backend), warnings.catch_warnings():
        warnings.simplefilter("error")
        for z in (np.zeros((3, 1)), np.array([[0.0, -np.inf]])):
            loss, _ = fo.softmax_cross_entropy(z, np.zeros(len(z), int))
            assert loss == 0 and math.copysign(1, loss) == 1
        loss, d = fo.softmax_cross_entropy(np.zeros((1, 2), np.float32), np.array([[1e39, 0]]))
        assert loss == np.inf and d[0, 0] == -np.inf


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_cross_entropy_ignores_masked_logits_under_zero_targets(backend, dtype):
    """A -inf logit (a masked class) under a probability target of 0 adds nothing, as the
    docstring says: the loss of the other classes alone, finite (torch's cross_entropy gives
    NaN there, from 0 * -inf), and a gradient of 0 at the masked class."""
    z = np.array([[0.0, -np.inf, 1.0], [2.0, 0.5, -np.inf]], dtype)
    y = np.array([[0.5, 0.0, 0.5], [0.25, 0.75, 0.0]], dtype)
    live = [[0, 2], [0, 1]]
    expected = -np.mean([sum(y[i, j] * (z[i, j] - np.logaddexp.reduce(z[i, live[i]]))
                             for j in live[i]) for i in range(2)])
    with fo.use_backend(backend):
        loss, d = fo.softmax_cross_entropy(z, y)
    np.testing.assert_allclose(loss, expected, rtol=1e-6 if dtype == np.float32 else 1e-14)
    assert d[0, 1] == 0 and d[1, 2] == 0 and np.isfinite(d).all()


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_float16_softmax_family_is_float32_rounded_once(backend):
    """float16 logits (refused before) are computed in float32 and the results rounded to
    float16, as torch's CPU softmax of half tensors: the same bits as the float32 call
    rounded, and as torch where installed; out= must then be float16 (any layout, any byte
    order), and a refused out writes nothing."""
    rng = np.random.default_rng(3)
    z = (rng.standard_normal((6, 9)) * 4).astype(np.float16)
    labels = rng.integers(0, 9, 6)
    with fo.use_backend(backend):
        for axis in (-1, 0):
            for f in (fo.softmax, fo.log_softmax):
                y = f(z, axis=axis)
                assert y.dtype == np.float16
                np.testing.assert_array_equal(y, f(z.astype(np.float32), axis=axis)
                                              .astype(np.float16))
                out = np.zeros((9, 6), np.dtype(np.float16).newbyteorder()).T
                assert f(z, axis=axis, out=out) is out
                np.testing.assert_array_equal(out, y)
        loss, d = fo.softmax_cross_entropy(z, labels)
        loss32, d32 = fo.softmax_cross_entropy(z.astype(np.float32), labels)
        assert d.dtype == np.float16 and loss == loss32
        np.testing.assert_array_equal(d, d32.astype(np.float16))
        wrong = np.zeros(z.shape, np.float32)
        with pytest.raises(TypeError, match="out has dtype float32, expected float16"):
            fo.softmax(z, out=wrong)
        assert not wrong.any()
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(fo.softmax(z), torch.softmax(torch.from_numpy(z), -1).numpy())


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_float16_log_softmax_past_float16s_range_is_minus_inf_without_a_warning(backend):
    """A float16 log-probability below -65504 rounds to -inf (as torch's), with no NumPy
    "overflow in cast" warning, and under np.errstate(all="raise") no FloatingPointError
    (which came after out= was written)."""
    z = np.array([[0.0, -60000.0, 6000.0]], np.float16)
    with fo.use_backend(backend), np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        out = np.zeros((1, 3), np.float16)
        assert fo.log_softmax(z, out=out) is out
    np.testing.assert_array_equal(out, [[-6000.0, -np.inf, 0.0]])


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_results_below_the_dtypes_range_are_zero_without_an_error(backend):
    """A float16 probability below 6e-8 (two logits ~17 apart) rounds to 0, and a float64
    probability label below float32's range to 0 in float32 logits' dtype: under
    np.errstate(all="raise") no FloatingPointError (which came after out= was written) and
    the same results as without it."""
    z = np.array([[0.0, -20.0, 5.0], [1.0, 2.0, -30.0]], np.float16)
    labels = np.array([2, 0])
    probabilities = np.array([[1e-60, 1.0, 0.0], [0.5, 0.5, 1e-50]])
    calls = [lambda out: fo.softmax(z, out=out), lambda out: fo.log_softmax(z, out=out),
             lambda out: fo.softmax_cross_entropy(z, labels, out=out)[0],
             lambda out: fo.softmax_cross_entropy(z.astype(np.float32), probabilities)[0]]
    with fo.use_backend(backend):
        for call in calls:
            expected_out = np.zeros(z.shape, np.float16)
            expected = call(expected_out)
            out = np.zeros(z.shape, np.float16)
            with np.errstate(all="raise"), warnings.catch_warnings():
                warnings.simplefilter("error")
                got = call(out)
            assert np.asarray(got).tobytes() == np.asarray(expected).tobytes()
            assert out.tobytes() == expected_out.tobytes()
        assert fo.softmax(z)[0, 1] == 0


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_softmax_takes_what_numpy_ufuncs_take(backend):
    """Lists and integer arrays are float64 (as np.exp makes them); a 0-d z is one class of
    one example (probability 1, log-probability 0, as torch); empty arrays give empty
    results and a zero loss."""
    with fo.use_backend(backend):
        np.testing.assert_allclose(fo.softmax([5, 2, -1, 3]),
                                   fo.softmax(np.array([5.0, 2.0, -1.0, 3.0])))
        assert fo.softmax(np.array([[5], [2]]), axis=0).dtype == np.float64
        loss, d = fo.softmax_cross_entropy([[1, 2, 3]], [2])
        assert d.dtype == np.float64
        assert np.isclose(loss, -np.log(np.exp(3) / np.exp([1, 2, 3]).sum()))
        for axis in (-1, 0):
            p, lp = fo.softmax(np.array(3.5), axis=axis), fo.log_softmax(np.float32(-2), axis=axis)
            assert p.shape == () and p == 1
            assert lp.shape == () and lp == 0 and lp.dtype == np.float32
        assert np.isnan(fo.softmax(np.array(np.nan)))
        for shape in [(0, 3), (3, 0), (0,)]:
            assert fo.softmax(np.zeros(shape)).shape == shape
            assert fo.log_softmax(np.zeros(shape), axis=0).shape == shape
        loss, d = fo.softmax_cross_entropy(np.zeros((0, 4)), np.zeros(0, int))
        assert np.isnan(loss) and d.shape == (0, 4)      # a mean over no examples, as torch
        loss, d = fo.softmax_cross_entropy(np.zeros((3, 0)), np.zeros((3, 0)))
        assert loss == 0 and d.shape == (3, 0)


@pytest.mark.parametrize("backend", COMPILED)
def test_layers_are_bit_identical_for_any_thread_count(backend):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((300, 257)).astype(np.float32)
    z = rng.standard_normal((257, 300)).astype(np.float32)
    labels = rng.integers(0, 257, 300)
    results = []
    for threads in (1, 2):
        fo.set_num_threads(threads)
        try:
            with fo.use_backend(backend):
                y0, c0 = fo.batchnorm_forward(x, np.ones(257, np.float32),
                                              np.zeros(257, np.float32))
                y1, c1 = fo.batchnorm_forward(x, np.ones(300, np.float32),
                                              np.zeros(300, np.float32), axis=1)
                g0 = fo.batchnorm_backward(x, c0)
                g1 = fo.batchnorm_backward(x, c1)
                s = fo.softmax(z, axis=0)
                loss, d = fo.softmax_cross_entropy(z, labels, axis=0)
        finally:
            fo.set_num_threads(2)
        results.append([a.tobytes() for a in (y0, y1, *g0, *g1, s, d)] + [loss])
    assert all(r == results[0] for r in results[1:])


@pytest.mark.parametrize("how", ["C", "F"])
def test_batchnorm_backward_out_argument(how):
    rng = np.random.default_rng(11)
    x = layout(rng.standard_normal((8, 3)), how)
    dy = layout(rng.standard_normal((8, 3)), how)
    _, cache = fo.batchnorm_forward(x, np.ones(3), np.zeros(3))
    expected = fo.batchnorm_backward(dy, cache)
    out = layout(np.empty((8, 3)), how)
    dx, dg, db = fo.batchnorm_backward(dy, cache, out=out)
    assert dx is out
    np.testing.assert_array_equal(dx, expected[0])
    np.testing.assert_array_equal(dg, expected[1])


@pytest.mark.skipif(len(cython_builds()) < 2 or "cython" not in GRID_BACKENDS,
                    reason="needs the portable and the AVX-512 builds of the kernels")
@pytest.mark.parametrize("shape", [(37, 1000), (1000, 37)])
def test_avx512_layer_build_is_bit_identical_to_the_portable_build(shape, dtype, monkeypatch):
    """Each build installed as the cython backend in turn (see
    test_kernels.test_avx512_build_is_bit_identical_to_the_portable_build)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape) * 30
    x[::5] *= 10     # exps with subnormal results in float64 too (the builds' exps differ)
    x = x.astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    labels = rng.integers(0, shape[1], shape[0])           # classes on the last axis
    labels_t = rng.integers(0, shape[0], shape[1])         # classes on axis 0
    results = []
    for namespace in cython_builds():
        use_cython_build(monkeypatch, namespace)
        with fo.use_backend("cython"):
            out = []
            for axis in (0, 1):
                gamma, beta = (np.linspace(0.5, 2, shape[1 - axis], dtype=dtype),
                               np.linspace(-1, 1, shape[1 - axis], dtype=dtype))
                y, cache = fo.batchnorm_forward(x, gamma, beta, axis=axis)
                out += [y, *fo.batchnorm_backward(dy, cache)]
            for axis in (-1, 0):
                out += [fo.softmax(x, axis=axis), fo.log_softmax(x, axis=axis),
                        *fo.softmax_cross_entropy(x, labels if axis == -1 else labels_t,
                                                  axis=axis)]
        results.append([np.asarray(a).tobytes() for a in out])
    assert all(r == results[0] for r in results[1:])


# ------------------------------------------------------------------- layouts, errors, aliasing
def _class_axis_shapes():
    """(shape, axis) for the softmax family: classes last, first, in the middle; wide, tall."""
    return [((5, 7), -1), ((5, 7), 0), ((3, 4, 5), 1), ((2, 17), 0), ((17, 2), -1)]


@pytest.mark.parametrize("how", LAYOUTS)
@pytest.mark.parametrize("shape,axis", _class_axis_shapes(), ids=str)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_softmax_family_gives_the_reference_result_in_every_layout(backend, shape, axis, how,
                                                                   dtype):
    """z, logits, integer labels, probability labels and out in every layout (byte-swapped
    and unaligned included) give the reference's result on C-ordered copies."""
    rng = np.random.default_rng(13)
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    labels = rng.integers(0, shape[axis], size=tuple(np.delete(shape, axis)))
    probs = rng.random(shape).astype(dtype)
    with fo.use_backend("numpy"):
        ref = [fo.softmax(z, axis), fo.log_softmax(z, axis),
               *fo.softmax_cross_entropy(z, labels, axis),
               *fo.softmax_cross_entropy(z, probs, axis)]
    with fo.use_backend(backend):
        zl = relayout(z, how)
        got = [fo.softmax(zl, axis), fo.log_softmax(zl, axis),
               *fo.softmax_cross_entropy(zl, relayout(labels, how), axis),
               *fo.softmax_cross_entropy(zl, relayout(probs, how), axis)]
        out = relayout(np.zeros(shape, dtype), how)
        assert fo.softmax(z, axis, out=out) is out
        np.testing.assert_array_equal(out, fo.softmax(z, axis))
    m = z.size // shape[axis]
    for a, b, scale in zip(got, ref, (1, 10, None, 1 / m, None, 1 / m)):
        if scale is None:                                   # the losses
            assert a == pytest.approx(b, rel=1e-12 if dtype == np.float64 else 1e-6)
        else:
            assert a.dtype == np.dtype(dtype) and a.dtype.isnative
            close(a, b, dtype, scale)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_softmax_family_over_axis_0_of_blocks_larger_than_the_caches(backend):
    """A (classes, m) block of 8 MB or more over axis 0: the Cython kernels' sweeps fetch rows
    ahead there, and cross-entropy with class indices reads each example's logit at its label
    only. Two slabs, columns in several blocks (and a partial one), every label of some class
    0 and of the last class: the reference's results."""
    rng = np.random.default_rng(41)
    dtype = np.float32
    z = (rng.standard_normal((2, 1000, 1100)) * 3).astype(dtype)    # 2 slabs of 4.4 MB each
    z = np.concatenate([z, z[:, :, :1000]], axis=2)                 # ... now 8.4 MB each
    labels = rng.integers(0, 1000, size=(2, 2100))
    labels[0, :300], labels[1, 300:600] = 0, 999
    probs = rng.random(z.shape).astype(dtype)
    probs /= probs.sum(axis=1, keepdims=True)
    with fo.use_backend("numpy"):
        ref = [fo.softmax(z, 1), fo.log_softmax(z, 1), *fo.softmax_cross_entropy(z, labels, 1),
               *fo.softmax_cross_entropy(z, probs, 1)]
    with fo.use_backend(backend):
        got = [fo.softmax(z, 1), fo.log_softmax(z, 1), *fo.softmax_cross_entropy(z, labels, 1),
               *fo.softmax_cross_entropy(z, probs, 1)]
    m = z.size // 1000
    for a, b, scale in zip(got, ref, (1, 10, None, 1 / m, None, 1 / m)):
        if scale is None:
            assert a == pytest.approx(b, rel=1e-6)
        else:
            close(a, b, dtype, scale)


def _read_only(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_layers_take_read_only_inputs(backend, axis, dtype):
    """Regression: the Cython kernels refused read-only inputs ("buffer source array is
    read-only"); inputs are only read, so they give the same result as writeable ones."""
    rng = np.random.default_rng(14)
    x = rng.standard_normal((6, 9)).astype(dtype)
    dy = rng.standard_normal((6, 9)).astype(dtype)
    nf = x.shape[1 - axis]
    gamma, beta, rmean = (rng.standard_normal(nf).astype(dtype) for _ in range(3))
    rvar = (rng.random(nf) + 0.5).astype(dtype)
    labels = rng.integers(0, x.shape[axis], x.shape[1 - axis])
    probs = rng.random(x.shape).astype(dtype)

    def run(a):
        y, cache = fo.batchnorm_forward(a(x), a(gamma), a(beta), axis=axis)
        return [y, *fo.batchnorm_backward(a(dy), cache),
                fo.batchnorm_inference(a(x), a(gamma), a(beta), a(rmean), a(rvar), axis=axis),
                fo.softmax(a(x), axis), fo.log_softmax(a(x), axis),
                *fo.softmax_cross_entropy(a(x), a(labels), axis),
                *fo.softmax_cross_entropy(a(x), a(probs), axis)]

    with fo.use_backend(backend):
        expected, got = run(np.array), run(_read_only)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_out_may_be_an_input(backend, dtype):
    """An input that shares memory with out is read before out is written: log_softmax(z,
    out=z) and the fused cross-entropy in place, and a forward in place whose cache still
    holds the original x for backward. (Compiled backends wrote exp(z - max) into out, then
    read z from it.)"""
    rng = np.random.default_rng(15)
    z = (rng.standard_normal((4, 9)) * 3).astype(dtype)
    labels = rng.integers(0, 9, 4)
    x, dy = (rng.standard_normal((7, 3)).astype(dtype) for _ in range(2))
    g, b = np.ones(3, dtype), np.zeros(3, dtype)
    with fo.use_backend(backend):
        for log in (False, True):
            f = fo.log_softmax if log else fo.softmax
            expected, inplace = f(z), z.copy()
            assert f(inplace, out=inplace) is inplace
            np.testing.assert_array_equal(inplace, expected)
            inplace = z.copy()
            assert f(inplace[::-1], out=inplace) is inplace
            np.testing.assert_array_equal(inplace, expected[::-1])
        loss, expected = fo.softmax_cross_entropy(z, labels)
        inplace = z.copy()
        loss2, d2 = fo.softmax_cross_entropy(inplace, labels, out=inplace)
        assert d2 is inplace and loss2 == loss
        np.testing.assert_array_equal(inplace, expected)
        y, cache = fo.batchnorm_forward(x, g, b)
        grads = fo.batchnorm_backward(dy, cache)
        inplace = x.copy()
        y2, cache2 = fo.batchnorm_forward(inplace, g, b, out=inplace)
        assert y2 is inplace
        np.testing.assert_array_equal(y2, y)
        dy2 = dy.copy()
        got = fo.batchnorm_backward(dy2, cache2, out=dy2)
        assert got[0] is dy2
        for a, e in zip(got, grads):
            np.testing.assert_array_equal(a, e)
        # the course's (features, m) layout, Fortran-ordered: the in-place forward's copy of
        # x is read in the order x is (Fortran-contiguous: as is; a Fortran-like view that is
        # not contiguous: in C order), so the kernels sum in the same order (1-2 ulp apart in
        # float64 otherwise: q70 for the first, review q72 for the others)
        base = rng.standard_normal((18, 140)).astype(dtype)
        gf, bf = rng.standard_normal(9).astype(dtype), rng.standard_normal(9).astype(dtype)
        dyf = np.asfortranarray(rng.standard_normal((9, 70)).astype(dtype))
        for make in (lambda: np.asfortranarray(base[:9, :70]),
                     lambda: np.asfortranarray(base[:, :70])[::2],
                     lambda: np.asfortranarray(base[8::-1, :70])[::-1]):
            y, cache = fo.batchnorm_forward(make(), gf, bf, axis=1)
            inplace = make()
            y2, cache2 = fo.batchnorm_forward(inplace, gf, bf, axis=1, out=inplace)
            np.testing.assert_array_equal(y2, y)
            for a, e in zip(fo.batchnorm_backward(dyf, cache2),
                            fo.batchnorm_backward(dyf, cache)):
                np.testing.assert_array_equal(a, e)


def _bad_arguments():
    """(call, argument name, exception) for every array argument of the layer functions: not
    an array, a np.matrix, a wrong dtype, a wrong shape."""
    x, g = np.ones((4, 3)), np.ones(3)
    x[0] = 2
    _, cache = fo.batchnorm_forward(x, g, g)
    z, lab = np.zeros((3, 4)), np.array([0, 1, 2])
    fwd = fo.batchnorm_forward
    inf = fo.batchnorm_inference
    cases = []
    for bad, exc in ((None, TypeError), ("1", TypeError), (np.matrix(x), TypeError),
                     (x.astype(np.float32), TypeError), (x.astype(int), TypeError),
                     (np.ones((4, 4)), ValueError), (np.ones(12), ValueError)):
        cases += [(lambda bad=bad: fwd(bad, g, g), "x", exc),
                  (lambda bad=bad: inf(bad, g, g, g, g), "x", exc),
                  (lambda bad=bad: fo.batchnorm_backward(bad, cache), "dy", exc)]
        if bad is not None and not isinstance(bad, np.matrix):     # out=None: the default
            cases += [(lambda bad=bad: fo.batchnorm_backward(x, cache, out=bad), "out", exc),
                      (lambda bad=bad: fwd(x, g, g, out=bad), "out", exc)]
    for bad, exc in ((None, TypeError), ([1.0, 1, 1], TypeError), (np.matrix(g), TypeError),
                     (g.astype(np.float32), TypeError), (np.ones(4), ValueError),
                     (np.ones((3, 3)), ValueError), (np.ones((1, 3, 1)), ValueError)):
        cases += [(lambda bad=bad: fwd(x, bad, g), "gamma", exc),
                  (lambda bad=bad: fwd(x, g, bad), "beta", exc),
                  (lambda bad=bad: inf(x, g, g, bad, g), "running_mean", exc),
                  (lambda bad=bad: inf(x, g, g, g, bad), "running_var", exc)]
    for bad, exc in ((None, TypeError), ("1", TypeError), (np.matrix(z), TypeError),
                     ([None, 1.0], TypeError), (z.astype(np.longdouble), TypeError),
                     ([[1.0, 2.0], [3.0]], ValueError)):
        cases += [(lambda bad=bad: fo.softmax(bad), "z", exc),
                  (lambda bad=bad: fo.log_softmax(bad), "z", exc),
                  (lambda bad=bad: fo.softmax_cross_entropy(bad, lab), "logits", exc)]
    for bad, exc in ((None, TypeError), ("1", TypeError), (np.array([0, 1, None]), TypeError),
                     (np.array([True, False, True]), TypeError), (np.zeros(3), TypeError),
                     (np.array([0, 1]), ValueError), (np.zeros((3, 5)), ValueError),
                     ([[0, 1], [2]], ValueError)):
        cases.append((lambda bad=bad: fo.softmax_cross_entropy(z, bad), "labels", exc))
    for bad, exc in ((None, TypeError), (1.5, TypeError), (2, ValueError)):
        cases += [(lambda bad=bad: fwd(x, g, g, axis=bad), "axis", exc),
                  (lambda bad=bad: fo.softmax(z, axis=bad), "axis", exc),
                  (lambda bad=bad: fo.softmax_cross_entropy(z, lab, axis=bad), "axis", exc)]
    for bad, exc in ((None, TypeError), ("1e-5", TypeError), (-1.0, ValueError),
                     (np.nan, ValueError)):
        cases += [(lambda bad=bad: fwd(x, g, g, eps=bad), "eps", exc),
                  (lambda bad=bad: inf(x, g, g, g, g, eps=bad), "eps", exc)]
    for bad, exc in ((np.zeros((3, 4), np.float32), TypeError), (np.zeros(12), ValueError),
                     (z.copy().T, ValueError), ([0.0] * 12, TypeError)):
        cases += [(lambda bad=bad: fo.softmax(z, out=bad), "out", exc),
                  (lambda bad=bad: fo.softmax_cross_entropy(z, lab, out=bad), "out", exc)]
    return cases


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")       # np.matrix
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_bad_layer_arguments_raise_naming_them_and_change_nothing(backend):
    """Not an array (None, a string, a list where an ndarray is needed), a matrix or a wrong
    dtype is a TypeError, a wrong shape or value a ValueError, each naming the argument, on
    every backend; a refused call leaves out and the layer's state as they were. (A ragged
    list for z, logits or labels raised NumPy's 'inhomogeneous shape' error, naming none.)"""
    with fo.use_backend(backend):
        for call, name, exc in _bad_arguments():
            with pytest.raises(exc, match=rf"\b{name}\b"):
                call()
        out = np.full((3, 4), 7.0)
        with pytest.raises(ValueError, match="out of range"):
            fo.softmax_cross_entropy(np.zeros((3, 4)), np.array([0, 1, 4]), out=out)
        assert (out == 7).all()
        layer = fo.BatchNorm(3, dtype=np.float64)
        layer.forward(np.arange(12.0).reshape(4, 3))
        state = [a.copy() for a in (layer.running_mean, layer.running_var, layer.gamma)]
        for bad in (np.ones((1, 3)), np.ones((4, 3), np.float32), None):
            with pytest.raises((TypeError, ValueError)):
                layer.forward(bad)
        for a, b in zip((layer.running_mean, layer.running_var, layer.gamma), state):
            np.testing.assert_array_equal(a, b)
        # (an int axis is x's to bound, checked at forward: axis 2 is an x of 3+ dimensions')
        for kw, exc in (({"axis": 1.5}, TypeError), ({"axis": None}, TypeError),
                        ({"momentum": "0.1"}, TypeError), ({"momentum": 2}, ValueError),
                        ({"eps": "0"}, TypeError), ({"num_features": 2.0}, TypeError)):
            args = {"num_features": 3, **kw}
            with pytest.raises(exc, match=list(kw)[0]):
                fo.BatchNorm(**args)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_batchnorm_momentum_set_later_is_checked_at_forward_and_changes_nothing(backend):
    """As the optimizers check a hyper-parameter set into a group at their next step (and as
    the layer's eps and axis set later are checked): a momentum set after construction was
    used as it was (1.5, -0.1, NaN, True and the str "0.5" updated the running statistics,
    NaN made them NaN), or raised float()'s unnamed error (an array, a complex, an int past
    the float range). Expected: the constructor's error naming momentum, with the running
    statistics, num_batches_tracked and the cache backward uses as they were; in inference,
    where momentum is not used, nothing is refused."""
    x = np.random.default_rng(23).standard_normal((6, 3))
    with fo.use_backend(backend):
        for bad, exc in ((1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError),
                         ("0.5", TypeError), (True, TypeError), (np.array([0.1]), TypeError),
                         (0.1j, TypeError), (10**400, ValueError)):
            layer = fo.BatchNorm(3, dtype=np.float64)
            layer.forward(x)
            cache, count = layer._cache, layer.num_batches_tracked
            stats = [layer.running_mean.copy(), layer.running_var.copy()]
            layer.momentum = bad
            with pytest.raises(exc, match=r"^Invalid momentum: "):
                layer.forward(x + 1.0)
            assert layer._cache is cache and layer.num_batches_tracked == count, bad
            for a, b in zip((layer.running_mean, layer.running_var), stats):
                assert a.tobytes() == b.tobytes(), bad
            layer.forward(x, training=False)
        layer = fo.BatchNorm(3, dtype=np.float64)
        layer.momentum = np.float32(0.5)
        layer.forward(x)
        layer.momentum = None
        layer.forward(x)


def test_a_batchnorm_axis_set_later_out_of_range_is_named_not_x(backend):
    """An axis of 5 set after construction raised "x has shape (5, 3): 5 features along axis
    0, expected 3" (read as 5 % 2 = 1), blaming a valid x; an axis of 2 gave the right error.
    Expected: the functions' error naming the axis, in training and inference, with the layer
    unchanged."""
    x = np.zeros((5, 3), np.float32)
    with fo.use_backend(backend):
        for bad in (5, 2, -3, 7):
            layer = fo.BatchNorm(3)
            layer.axis = bad
            for training in (True, False):
                with pytest.raises(ValueError, match=rf"Invalid axis: {bad}"):
                    layer.forward(x, training=training)
            assert layer.num_batches_tracked == 0 and not layer.running_mean.any()


# ---------------------------------------------------- batch norm's blocks of rows, threads, exp
# (1100, 300): several pool chunks of several blocks of rows; (3000, 3): a tall panel;
# (5, 40000): one short block of wide rows; (130, 1000): three blocks, the last of two rows;
# odd feature counts around the vectors
BLOCK_SHAPES = [(1100, 300), (3000, 3), (5, 40000), (130, 1000), (257, 33), (9, 7)]


def _large_mean_case(shape, dtype, seed):
    """x (mean 300, spread 2: large against its spread), dy, gamma, beta and the reference's
    (y, cache, grads) for them."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + 300).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma = rng.standard_normal(shape[1]).astype(dtype)
    beta = rng.standard_normal(shape[1]).astype(dtype)
    with fo.use_backend("numpy"):
        y_ref, c_ref = fo.batchnorm_forward(x, gamma, beta)
        return x, dy, gamma, beta, (y_ref, c_ref, fo.batchnorm_backward(dy, c_ref))


def _assert_bn_like(ref, y, cache, grads):
    """Batch norm's forward and backward agree with the reference's two passes."""
    y_ref, c_ref, g_ref = ref
    np.testing.assert_allclose(cache.mean, c_ref.mean, rtol=1e-13)
    np.testing.assert_allclose(cache.inv_std, c_ref.inv_std, rtol=1e-10)
    close(y, y_ref, y.dtype, 10)
    for a, b in zip(grads, g_ref):
        close(a, b, y.dtype, 10 * y.shape[0])


@pytest.mark.parametrize("shape", BLOCK_SHAPES, ids=str)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_blocks_of_rows_give_the_reference_result(backend, shape, dtype):
    """Features as columns (axis 0): statistics taken per block of rows and merged over blocks
    and pool chunks (four-row loops with their single-row tails) agree with the reference's
    two passes over all rows, also for data whose mean is large against its spread, and
    whatever the layout of x; the course's layout (the transpose, axis 1) gives the same
    bits."""
    x, dy, gamma, beta, ref = _large_mean_case(shape, dtype, seed=20)
    with fo.use_backend(backend):
        for how in ("C", "strided"):
            y, cache = fo.batchnorm_forward(layout(x, how), gamma, beta)
            _assert_bn_like(ref, y, cache, fo.batchnorm_backward(layout(dy, how), cache))
        y_t, cache_t = fo.batchnorm_forward(x.T, gamma, beta, axis=1)
        np.testing.assert_array_equal(cache_t.mean, cache.mean)
        np.testing.assert_array_equal(y_t, y.T)


def _at_line_offset(a, offset):
    """A C-ordered copy of ``a`` whose data starts ``offset`` bytes past a 64-byte line."""
    buf = np.empty(a.nbytes + 128, np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@contextlib.contextmanager
def _streamed(stream):
    """Cython's batch norm streaming every y and dx it may (or as it would)."""
    if not stream:
        yield
        return
    from fastopt._kernels import _layers
    old = _layers._set_stream_min_bytes(0)
    try:
        yield
    finally:
        _layers._set_stream_min_bytes(old)


@pytest.mark.parametrize("shape", [(9, 48), (130, 1040)], ids=str)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_gives_the_same_bits_wherever_its_arrays_start_in_a_line(backend, shape,
                                                                           dtype):
    """Features as columns, rows a whole number of 64-byte lines long (float32 and float64):
    the element-wise loops split each row where the output's lines start and read float64
    copies of the per-feature values aligned there, so y, dx and inference give the same bits
    for every offset of out (and of x and dy) within a line, and the reference's result."""
    x, dy, gamma, beta, ref = _large_mean_case(shape, dtype, seed=21)
    rmean, rvar = ref[1].mean.astype(dtype), (ref[1].inv_std ** -2).astype(dtype)
    with fo.use_backend("numpy"):
        inf_ref = fo.batchnorm_inference(x, gamma, beta, rmean, rvar)
    itemsize = np.dtype(dtype).itemsize
    # Cython: again with y and dx streamed past the caches (done from the last-level cache's
    # size on): the same bits
    streamed = [False, True] if backend == "cython" else [False]
    with fo.use_backend(backend):
        first = None
        for offset, stream in itertools.product(range(0, 64, itemsize), streamed):
            xo, dyo = _at_line_offset(x, (64 - offset) % 64), _at_line_offset(dy, offset)
            outs = [_at_line_offset(np.zeros(shape, dtype), offset) for _ in range(3)]
            with _streamed(stream):
                y, cache = fo.batchnorm_forward(xo, gamma, beta, out=outs[0])
                grads = fo.batchnorm_backward(dyo, cache, out=outs[1])
                inf = fo.batchnorm_inference(xo, gamma, beta, rmean, rvar, out=outs[2])
            assert y is outs[0] and grads[0] is outs[1] and inf is outs[2]
            got = [y, *grads, inf]
            if first is None:
                first = [a.copy() for a in got]
                _assert_bn_like(ref, y, cache, grads)
                close(inf, inf_ref, dtype, 10)
            for a, b in zip(got, first):
                np.testing.assert_array_equal(a, b, err_msg=f"offset {offset}, stream {stream}")


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_statistics_that_overflow_are_the_references(backend):
    """float64 data so spread that the squared deviations overflow: the variance is inf, as
    the reference's (inv_std 0, y = beta), not the NaN of inf - inf (Cython takes such a
    block of rows again in two passes)."""
    x = np.random.default_rng(25).standard_normal((130, 5)) * 1e200
    g, b = np.ones(5), np.full(5, 0.5)
    with fo.use_backend("numpy"), np.errstate(over="ignore"):
        y_ref, c_ref = fo.batchnorm_forward(x, g, b)
    with fo.use_backend(backend), np.errstate(over="ignore"):
        y, cache = fo.batchnorm_forward(x, g, b)
    assert (c_ref.inv_std == 0).all() and (y_ref == 0.5).all()
    np.testing.assert_array_equal(cache.inv_std, c_ref.inv_std)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(cache.mean, c_ref.mean, rtol=1e-13)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_variance_of_float64_data_with_a_large_mean_is_exact(backend, axis):
    """float64 features whose mean is 1e15 or 1e10 times their spread: the squares were taken
    about the mean rounded at the data's magnitude, whose rounding (up to 0.06 at 1e15) they
    held squared: variances 7.5e-4 (the reference, Cython with features as rows) to 1.2e-3
    (Numba with the batch on axis 0) off, while Cython's axis 0 was exact. The oracle: exact
    rational arithmetic."""
    from fractions import Fraction
    rng = np.random.default_rng(31)
    x = np.stack([1e15 + rng.standard_normal(200), 1e10 + 1e-3 * rng.standard_normal(200),
                  -3e12 + rng.standard_normal(200), rng.standard_normal(200)], axis=1)
    exact = []
    for column in x.T:
        values = [Fraction(v) for v in column]
        mean = sum(values) / len(values)
        exact.append(float(sum((v - mean) ** 2 for v in values) / len(values)))
    g, b = np.ones(4), np.zeros(4)
    with fo.use_backend(backend):
        _, cache = fo.batchnorm_forward(x if axis == 0 else x.T.copy(), g, b, axis=axis)
    np.testing.assert_allclose(cache.var, exact, rtol=4e-16, atol=0)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_of_float64_data_with_a_large_mean_centres_x_at_the_exact_mean(backend, axis):
    """y, dx, dgamma and dbeta of float64 features whose mean is 1e15, 1e10 and 3e12 times their
    spread: x - mean was taken about the mean rounded to float64, so y lost what that rounding
    moved it by (1e10 + 1e-3 randn: y 2e-4 off; 1e15 + randn: y 2e-2); now each to ~1e-16 of its scale, on every backend. The oracle: the mean and the
    centred sums in exact rational arithmetic."""
    from fractions import Fraction
    rng = np.random.default_rng(32)
    n = 300
    x = np.stack([1e15 + rng.standard_normal(n), 1e10 + 1e-3 * rng.standard_normal(n),
                  -3e12 + rng.standard_normal(n), 5 + rng.standard_normal(n)], axis=1)
    dy = rng.standard_normal(x.shape)
    g, b = rng.standard_normal(4) + 1, rng.standard_normal(4)
    y_exact, dx_exact = np.empty_like(x), np.empty_like(x)
    dgamma_exact, dbeta_exact = np.empty(4), np.empty(4)
    for c in range(4):
        values = [Fraction(v) for v in x[:, c]]
        mean = sum(values) / n
        centred = [v - mean for v in values]
        inv_std = 1 / np.sqrt(float(sum(d * d for d in centred) / n) + 1e-5)
        xhat = np.array([float(d) for d in centred]) * inv_std
        y_exact[:, c] = xhat * g[c] + b[c]
        dbeta_exact[c] = float(sum(Fraction(v) for v in dy[:, c]))
        dgamma_exact[c] = float(sum(Fraction(v) * d for v, d in zip(dy[:, c], centred))) * inv_std
        dx_exact[:, c] = (g[c] * inv_std / n
                          * (n * dy[:, c] - dbeta_exact[c] - xhat * dgamma_exact[c]))
    with fo.use_backend(backend):
        if axis == 0:
            y, cache = fo.batchnorm_forward(x, g, b)
            dx, dgamma, dbeta = fo.batchnorm_backward(dy, cache)
        else:
            y, cache = fo.batchnorm_forward(x.T.copy(), g, b, axis=1)
            dx, dgamma, dbeta = fo.batchnorm_backward(dy.T.copy(), cache)
            y, dx = y.T, dx.T
    scale = lambda a: np.abs(a).max(axis=0)        # noqa: E731
    assert (np.abs(y - y_exact) <= 1e-15 * scale(y_exact)).all()
    assert (np.abs(dx - dx_exact) <= 1e-13 * scale(dx_exact)).all()
    np.testing.assert_allclose(dgamma, dgamma_exact, rtol=1e-13)
    np.testing.assert_allclose(dbeta, dbeta_exact, rtol=1e-13)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_variances_with_a_square_past_the_range_on_the_way(backend, axis):
    """float64 features whose variance is finite though a square on the way to it overflows:
    one 0 and 63 values of 1e153 (squared, the 64-row block's sum of x minus its first row
    overflows) and 64 zeros then a value just past sqrt(max) (squared, the difference of the
    two blocks' means overflows; times 64 / 65 it would not). Cython took them for a variance
    of 0 (y about 1e155) and inf (y = beta)."""
    x = np.zeros((65, 3))
    x[1:64, 0] = 1e153
    x[64, 1] = np.sqrt(np.finfo(np.float64).max) * 1.002
    x[:, 2] = np.arange(65)
    x = x if axis == 0 else x.T.copy()
    g, b = np.ones(3), np.zeros(3)
    with fo.use_backend("numpy"):
        y_ref, c_ref = fo.batchnorm_forward(x, g, b, axis=axis)
    with fo.use_backend(backend):
        y, cache = fo.batchnorm_forward(x, g, b, axis=axis)
    assert np.isfinite(c_ref.var).all() and list(c_ref.var > 1e300) == [True, True, False]
    np.testing.assert_allclose(cache.var, c_ref.var, rtol=1e-13)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [4, 300])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_means_whose_sums_overflow_are_the_references(backend, axis, n):
    """float64 features whose sum overflows (a constant 1e308; 2e306, which overflows in a
    batch of 300 only; half the batch at the largest float): the mean is the reference's
    x.sum() / N, inf, so the variance is inf and y NaN there, and the running variance inf.
    Cython's shifted sums (x minus the block's first row) kept a finite mean, a variance of
    0 and y = beta; Numba merged the blocks' infinite means into a NaN variance."""
    big = np.finfo(np.float64).max
    x = np.stack([np.full(n, 1e308), np.full(n, 2e306),
                  np.r_[np.full(n // 2, big), np.zeros(n - n // 2)],
                  np.arange(n, dtype=np.float64)], axis=1)
    x = x if axis == 0 else x.T.copy()
    g, b = np.linspace(0.5, 2, 4), np.linspace(-1, 1, 4)
    results = {}
    for name in ("numpy", backend):
        layer = fo.BatchNorm(4, axis=axis, dtype=np.float64)
        with fo.use_backend(name), np.errstate(all="ignore"):
            y, cache = fo.batchnorm_forward(x, g, b, axis=axis)
            layer.forward(x)
        results[name] = y, cache.mean, cache.var, layer.running_var
    y_ref, mean_ref, var_ref, rv_ref = results["numpy"]
    assert np.isinf(mean_ref[[0, 2]]).all() and np.isinf(var_ref[[0, 2]]).all()
    y, mean, var, rv = results[backend]
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)      # (NaN where the reference's)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-13)
    np.testing.assert_allclose(var, var_ref, rtol=1e-12)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-12)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_blocks_of_rows_keep_nan_and_inf_in_their_feature(backend, dtype):
    """NaN and +-inf in the first, a middle and the last block of rows: y and dx are NaN in
    that feature only, and the mean is the reference's (NaN, +inf, -inf). Regression (Numba,
    then Cython's chan_merge): merging the blocks' means pairwise made the mean of a column
    with +inf NaN (inf + (finite - inf) * w)."""
    x = np.random.default_rng(24).standard_normal((1100, 300)).astype(dtype)
    x[700, 3], x[5, 10], x[1099, 299] = np.nan, np.inf, -np.inf
    g, b = np.ones(300, dtype), np.zeros(300, dtype)
    with np.errstate(invalid="ignore"), fo.use_backend(backend):
        y, cache = fo.batchnorm_forward(x, g, b)
        dx = fo.batchnorm_backward(x, cache)[0]
    bad = [3, 10, 299]
    for a in (y, dx):
        assert np.isnan(a[:, bad]).all() and np.isfinite(np.delete(a, bad, axis=1)).all()
    np.testing.assert_array_equal(cache.mean[bad], [np.nan, np.inf, -np.inf])


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_features_as_rows_give_the_bits_of_each_feature_alone(backend, dtype):
    """Features as rows (axis 1): each feature's y, mean and variance are the bits it gets
    normalized alone, whichever features share its call. The Cython backend sums four
    features' statistics side by side (rows up to 8192 values long), each as one row alone
    (fo_bn.h); 9 features give groups of four and a single one, 8193 values the one-row path."""
    rng = np.random.default_rng(31)
    for n in (7, 8, 33, 1000, 8193):
        x = (rng.standard_normal((9, n)) * 10 + 1000).astype(dtype)
        x[5, n // 2] = np.nan
        g, b = np.linspace(0.5, 2, 9, dtype=dtype), np.linspace(-1, 1, 9, dtype=dtype)
        with np.errstate(invalid="ignore"), fo.use_backend(backend):
            y, cache = fo.batchnorm_forward(x, g, b, axis=1)
            for i in range(9):
                yi, ci = fo.batchnorm_forward(x[i:i + 1], g[i:i + 1], b[i:i + 1], axis=1)
                np.testing.assert_array_equal(y[i:i + 1], yi, err_msg=f"{n} values, feature {i}")
                np.testing.assert_array_equal(cache.mean[i:i + 1], ci.mean)
                np.testing.assert_array_equal(cache.var[i:i + 1], ci.var)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_features_as_columns_give_the_bits_of_a_wider_batch(backend, dtype):
    """Features as columns (axis 0): each feature's y, statistics and gradients are the bits
    it gets in a batch with 16 more features. The Cython backend sums the rows of a batch
    whose rows lie a multiple of 4 KiB apart (here 1024 features) four at a time, and of
    others eight at a time (grad_sums_rows); both add the same terms in the same order."""
    rng = np.random.default_rng(32)
    for n in (8, 20, 64, 130):
        wide = (rng.standard_normal((n, 1040)) * 10 + 100).astype(dtype)
        dy = rng.standard_normal(wide.shape).astype(dtype)
        g, b = np.linspace(0.5, 2, 1040, dtype=dtype), np.linspace(-1, 1, 1040, dtype=dtype)
        with fo.use_backend(backend):
            results = []
            for width in (1040, 1024):      # (the same row chunks: rows_per_chunk)
                y, cache = fo.batchnorm_forward(wide[:, :width], g[:width], b[:width])
                dx, dg, db = fo.batchnorm_backward(np.ascontiguousarray(dy[:, :width]), cache)
                results.append((y, cache.mean, cache.var, dx, dg, db))
        for got, want in zip(results[1], results[0]):
            np.testing.assert_array_equal(got, want[..., :1024], err_msg=f"{n} rows")


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_with_nan_and_inf_gives_the_reference_result(backend, dtype):
    """NaN and +-inf in three blocks of rows: y and the gradients are the reference's (a
    block holding one is taken in two passes on the Cython backend)."""
    shape = (1100, 300)
    rng = np.random.default_rng(21)
    x = rng.standard_normal(shape).astype(dtype)
    x[700, 3], x[5, 10], x[1099, 299] = np.nan, np.inf, -np.inf
    dy = rng.standard_normal(shape).astype(dtype)
    g, b = np.ones(shape[1], dtype), np.zeros(shape[1], dtype)
    with fo.use_backend("numpy"):
        y_ref, c_ref = fo.batchnorm_forward(x, g, b)
        g_ref = fo.batchnorm_backward(dy, c_ref)
    with np.errstate(invalid="ignore"), fo.use_backend(backend):
        y, cache = fo.batchnorm_forward(x, g, b)
        grads = fo.batchnorm_backward(dy, cache)
    bad = [3, 10, 299]
    assert np.isnan(y[:, bad]).all() and np.isfinite(np.delete(y, bad, axis=1)).all()
    close(y, y_ref, dtype, 10)
    for a, r in zip(grads, g_ref):
        close(a, r, dtype, 10 * shape[0])


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batchnorm_of_a_short_batch_gives_the_reference_result(backend, dtype):
    """96 rows, two chunks of rows: on 3 threads Cython splits the statistics and gradient
    sums by columns instead (chunks of 672), on 1 and 2 by rows. A large mean, NaN and +-inf
    in columns at and beside column chunk edges, a constant column: the reference's
    statistics, y and gradients, and the same bits either way and wherever the outputs start
    in a line (a column whose one-pass sums are not finite is taken again alone)."""
    shape = (96, 4000)
    x, dy, gamma, beta, _ = _large_mean_case(shape, dtype, seed=26)
    bad = [0, 671, 672, 1344, 3999]
    x[5, 0], x[90, 671], x[40, 672], x[0, 1344], x[95, 3999] = (
        np.nan, np.inf, -np.inf, np.inf, np.nan)
    x[:, 2000] = 7
    with fo.use_backend("numpy"), np.errstate(invalid="ignore"):
        y_ref, c_ref = fo.batchnorm_forward(x, gamma, beta)
        g_ref = fo.batchnorm_backward(dy, c_ref)
    results = []
    try:
        for threads, offset in [(1, 0), (2, 16), (3, 48), (3, 32)]:
            fo.set_num_threads(threads)
            outs = [_at_line_offset(np.zeros(shape, dtype), offset) for _ in range(2)]
            with fo.use_backend(backend), np.errstate(invalid="ignore"):
                y, cache = fo.batchnorm_forward(x, gamma, beta, out=outs[0])
                grads = fo.batchnorm_backward(dy, cache, out=outs[1])
            results.append([a.tobytes() for a in (y, cache.mean, cache.inv_std, *grads)])
    finally:
        fo.set_num_threads(2)
    assert all(r == results[0] for r in results[1:])
    np.testing.assert_array_equal(cache.mean[bad], c_ref.mean[bad])   # NaN, inf, -inf
    for a in (y, grads[0]):
        assert np.isnan(a[:, bad]).all() and np.isfinite(np.delete(a, bad, axis=1)).all()
    good = np.delete(np.arange(shape[1]), bad)
    np.testing.assert_allclose(cache.mean[good], c_ref.mean[good], rtol=1e-13)
    np.testing.assert_allclose(cache.inv_std[good], c_ref.inv_std[good], rtol=1e-10)
    close(y[:, good], y_ref[:, good], dtype, 10)
    close(grads[0][:, good], g_ref[0][:, good], dtype, 10 * shape[0])
    for a, r in zip(grads[1:], g_ref[1:]):
        close(a[good], r[good], dtype, 10 * shape[0])


@pytest.mark.parametrize("backend", COMPILED)
def test_batchnorm_of_no_features_over_a_long_batch_runs_no_kernel(backend, monkeypatch):
    """x of shape (2**44, 0) (no elements, no memory): the numba kernels looped over its rows
    (2**40 took ~11 minutes). Now none is called."""
    if backend == "numba":
        from fastopt._numba import layers

        def failing(*args):
            raise AssertionError("a kernel ran over an x without elements")
        for name in ("chunked", "_stats_cols", "_backward_cols"):
            monkeypatch.setattr(layers, name, failing)
    g, b = np.ones(0, np.float32), np.zeros(0, np.float32)
    x = np.zeros((2**44, 0), np.float32)
    with fo.use_backend(backend):
        for x, axis in ((x, 0), (x.T, 1)):
            y, cache = fo.batchnorm_forward(x, g, b, axis=axis)
            dx, dg, db = fo.batchnorm_backward(y, cache)
            yi = fo.batchnorm_inference(x, g, b, b, g, axis=axis)
            assert y.shape == dx.shape == yi.shape == x.shape and dg.shape == db.shape == (0,)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_layers_are_bit_identical_for_1_to_3_threads_over_several_chunks(backend, dt):
    """Shapes split into several pool chunks (the axis-0 statistics merge five chunks of four
    blocks of rows; the softmax rows make six chunks; the Numba kernels chunk by the thread
    count)."""
    rng = np.random.default_rng(22)
    x = rng.standard_normal((1100, 300)).astype(dt) * 3 + 1
    dy = rng.standard_normal((1100, 300)).astype(dt)
    labels = rng.integers(0, 300, 1100)
    results = []
    try:
        for threads in (1, 2, 3):
            fo.set_num_threads(threads)
            with fo.use_backend(backend):
                out = []
                for axis, xa, dya in ((0, x, dy), (1, x.T, dy.T)):
                    f = xa.shape[1 - axis]
                    y, cache = fo.batchnorm_forward(xa, np.ones(f, dt), np.zeros(f, dt),
                                                    axis=axis)
                    out += [y, *fo.batchnorm_backward(dya, cache)]
                out += [fo.softmax(x), fo.log_softmax(x), fo.softmax(x, axis=0),
                        *fo.softmax_cross_entropy(x, labels),
                        *fo.softmax_cross_entropy(x.T, labels, axis=0)]
            results.append([np.asarray(a).tobytes() for a in out])
    finally:
        fo.set_num_threads(2)
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_softmax_over_a_middle_axis_in_blocks_of_any_width(backend, dt):
    """The strided layout's blocks of examples (layers.pyx, COLUMN_BLOCK): 256 wide, whole
    (k, inner) blocks (one per thread at least), or 1024 wide when 256 columns of the k rows
    overflow the cache anyway (with a tail of 6 here): the reference's results, the same bits
    for 1 to 3 threads."""
    rng = np.random.default_rng(23)
    cases = [((600, 1030), 0), ((3, 40, 1000), 1), ((40, 1000), 0), ((2, 300, 1300), 1)]
    try:
        for shape, axis in cases:
            z = (rng.standard_normal(shape) * 4).astype(dt)
            labels = rng.integers(0, shape[axis], shape[:axis] + shape[axis + 1:])
            with fo.use_backend("numpy"):
                ref = [fo.softmax(z, axis), fo.log_softmax(z, axis),
                       *fo.softmax_cross_entropy(z, labels, axis)]
            results = []
            for threads in (1, 2, 3):
                fo.set_num_threads(threads)
                with fo.use_backend(backend):
                    got = [fo.softmax(z, axis), fo.log_softmax(z, axis),
                           *fo.softmax_cross_entropy(z, labels, axis)]
                results.append([np.asarray(a).tobytes() for a in got])
            assert results[0] == results[1] == results[2], shape
            for a, b in zip(got[:2] + got[3:], ref[:2] + ref[3:]):
                close(a, b, dt, 10)
            assert got[2] == pytest.approx(ref[2], rel=1e-12 if dt == np.float64 else 1e-6)
    finally:
        fo.set_num_threads(2)


@cython_against_numba
@pytest.mark.parametrize("axis", [-1, 0])
def test_numba_softmax_has_the_same_exp_as_cython(axis, dtype):
    """The Numba kernels compute fo_vexp.h's exp in the same operations (and sum a row in the
    same order): the same bits over the exp's whole range, subnormal results included, and
    around every (k + 1/2) ln2, where n = round(x / ln2) depends on rounding x / ln2 once (an
    FMA) or twice."""
    lo, hi = (-104, 89) if dtype == np.float32 else (-746, 710)
    z = np.stack([np.linspace(lo, hi, 2001), np.linspace(lo / 2, 0, 2001)]).astype(dtype)
    z = z if axis == -1 else np.ascontiguousarray(z.T)
    z[0, 0] = hi        # the row max: the others are exp of z - hi over the whole range
    k = np.arange(-150 if dtype == np.float32 else -1075, 0)
    mid = ((k + 0.5) * np.log(2)).astype(dtype)
    near = np.concatenate([[0], mid, np.nextafter(mid, 0), np.nextafter(mid, -np.inf)])
    near = near.astype(dtype)
    near = near[None, :] if axis == -1 else near[:, None]    # max 0: exp of each x itself
    out = {}
    for backend in ("cython", "numba"):
        with fo.use_backend(backend):
            out[backend] = [fo.softmax(a, axis=axis).tobytes() for a in (z, near)]
            out[backend] += [fo.log_softmax(z, axis=axis).tobytes()]
    assert out["cython"] == out["numba"]


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_cross_entropy_gradient_is_rounded_in_the_logits_dtype(backend, axis, dtype):
    """dlogits = (softmax(z) - target) * (1 / m) in the logits' dtype, each operation rounded
    to it (as the reference and the Cython kernels compute it): from the backend's own softmax,
    NumPy's arithmetic in that dtype gives the same bits. The Numba kernels took float32's 1
    (and with it the targets of the strided layout) as float64: their gradients were computed
    in float64 and rounded once, 1 ulp from the others' in about one entry in five."""
    rng = np.random.default_rng(31)
    m, k = 300, 13
    z = (rng.standard_normal((m, k)) * 3).astype(dtype)
    labels = rng.integers(0, k, m)
    probs = rng.random((m, k)).astype(dtype)
    probs /= probs.sum(axis=1, keepdims=True)
    onehot = np.eye(k, dtype=dtype)[labels]
    inv_m = dtype(1.0 / m)
    if axis == 0:
        z, probs, onehot = (np.ascontiguousarray(a.T) for a in (z, probs, onehot))
    with fo.use_backend(backend):
        p = fo.softmax(z, axis=axis)
        for lab, target in ((labels, onehot), (probs, probs)):
            _, d = fo.softmax_cross_entropy(z, lab, axis=axis)
            assert d.tobytes() == ((p - target) * inv_m).tobytes()


@cython_against_numba
def test_numba_cross_entropy_sums_probability_rows_as_cython():
    """A contiguous row's loss term, sum(target * log_softmax), is eight interleaved float64
    partial sums in both compiled backends (the Numba kernel summed it in one chain:
    float64 losses differed from Cython's in the last bits)."""
    rng = np.random.default_rng(32)
    z = rng.standard_normal((17, 5000)) * 3 + 5
    probs = rng.random(z.shape)
    probs /= probs.sum(axis=1, keepdims=True)
    losses = []
    for backend in ("cython", "numba"):
        with fo.use_backend(backend):
            losses.append(fo.softmax_cross_entropy(z, probs)[0])
    assert losses[0] == losses[1]


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_cross_entropy_takes_integer_and_bool_one_hot_labels_as_their_float_values(backend,
                                                                                    dtype):
    """Labels shaped like the logits are one-hot/probabilities whatever their dtype (an
    integer or bool array as its float values in the logits' dtype: np.eye(k, dtype=int)[y],
    sklearn's LabelBinarizer), bit for bit as the float labels; labels with one axis fewer are
    class indices, integers only."""
    rng = np.random.default_rng(11)
    z = (rng.standard_normal((6, 4)) * 2).astype(dtype)
    y = np.array([0, 3, 1, 2, 3, 0])
    counts = rng.integers(0, 3, (6, 4))
    with fo.use_backend(backend):
        for axis, zz, yy, cc in ((-1, z, np.eye(4)[y], counts), (0, z.T, np.eye(4)[y].T, counts.T)):
            loss_f, d_f = fo.softmax_cross_entropy(zz, yy.astype(dtype), axis)
            loss_i, d_i = fo.softmax_cross_entropy(zz, y, axis)
            assert loss_i == pytest.approx(loss_f, rel=1e-6)
            for dt in (np.int64, np.int32, np.int8, np.uint8, np.uint64, bool):
                loss, d = fo.softmax_cross_entropy(zz, yy.astype(dt), axis)
                assert loss == loss_f and d.dtype == zz.dtype
                assert d.tobytes() == d_f.tobytes()
            loss_c, d_c = fo.softmax_cross_entropy(zz, cc, axis)          # not one-hot: counts
            ref = fo.softmax_cross_entropy(zz, cc.astype(dtype), axis)
            assert loss_c == ref[0] and d_c.tobytes() == ref[1].tobytes()
        lab = np.eye(4, dtype=np.int64)[y]
        before = lab.copy()
        out = np.full(z.shape, 7, dtype)
        fo.softmax_cross_entropy(z, lab, out=out)
        np.testing.assert_array_equal(lab, before)                        # only read
        assert out.tobytes() == fo.softmax_cross_entropy(z, lab.astype(dtype))[1].tobytes()
        # one axis fewer: class indices, which must be integers
        for bad in (y.astype(bool), y.astype(dtype)):
            out = np.full(z.shape, 7, dtype)
            with pytest.raises(TypeError, match=r"labels .*class indices.*integer dtype, got"):
                fo.softmax_cross_entropy(z, bad, out=out)
            assert (out == 7).all()
        for bad in (np.zeros((6, 4), np.complex128), np.full((6, 4), "a")):
            with pytest.raises(TypeError, match="labels"):
                fo.softmax_cross_entropy(z, bad)
        with pytest.raises(ValueError, match=r"labels has shape \(6, 3\)"):
            fo.softmax_cross_entropy(z, np.eye(3, dtype=int)[y % 3])


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_batch_norm_cache_pickles_with_every_protocol(protocol):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    dy = rng.standard_normal((6, 3)).astype(np.float32)
    _, cache = fo.batchnorm_forward(x, np.ones(3, np.float32), np.zeros(3, np.float32))
    copy = pickle.loads(pickle.dumps(cache, protocol))
    np.testing.assert_array_equal(copy.var, cache.var)
    for a, b in zip(fo.batchnorm_backward(dy, copy), fo.batchnorm_backward(dy, cache)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("field, value", [
    ("mean", np.zeros(2)), ("inv_std", np.ones(1)), ("gamma", np.ones(2, np.float32)),
    ("x", np.zeros((2, 3), np.float32)), ("shape", (60, 3)), ("axis", 7), ("axis", False),
    ("mean", [0.0, 0.0, 0.0]),
    ("gamma", np.ones(3)), ("mean", np.zeros(3, np.float32)), ("inv_std", np.ones(3, np.float32)),
    ("x", np.zeros((6, 3), ">f4")), ("x", np.zeros((6, 3), np.float32, order="F")),
    ("gamma", np.ones(6, np.float32)[::2]), ("mean", np.zeros(6)[::2]),
    ("param_shapes", ((4,), (3,))), ("param_shapes", ((3,), (2, 2))),
    ("param_shapes", ((3,),)), ("param_shapes", None), ("shape", None), ("shape", np.array([6, 3])),
    ("mean_error", np.zeros(2)), ("mean_error", np.zeros(3, np.float32)), ("mean_error", None),
    ("nd", ((6, 3, 1), 2)), ("nd", ((6, 3, 1), 3)), ("nd", ((2, 3, 3), 0)), ("nd", ((18,), 0)),
    ("nd", [(6, 3, 1), 0])])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_batch_norm_cache_whose_arrays_do_not_fit_is_refused(backend, field, value):
    """A cache unpickled from elsewhere or built by hand reached the kernels unchecked: a short
    mean was read past its end. The kernels index by x's shape and the feature count. Arrays of
    another dtype (a float64 gamma with float32 x, a float32 mean, a byte-swapped x) or not
    C-contiguous: the Cython kernels raised their own unnamed 'Buffer dtype mismatch' or 'not
    C-contiguous', the NumPy and Numba ones computed with them. param_shapes that do not hold
    the feature count (or are not two shapes) raised NumPy's unnamed reshape or unpacking error
    after dx had been written into out."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    dy = rng.standard_normal((6, 3)).astype(np.float32)
    _, cache = fo.batchnorm_forward(x, np.ones(3, np.float32), np.zeros(3, np.float32))
    fields = {k: getattr(cache, k) for k in cache.__slots__}
    bad = fo.layers.BatchNormCache(**{**fields, field: value})
    out = np.full_like(dy, 7)
    with fo.use_backend(backend):
        with pytest.raises((ValueError, TypeError), match="cache is not as batchnorm_forward"):
            fo.batchnorm_backward(dy, bad, out=out)
        assert (out == 7).all()
        if field == "mean_error" and isinstance(value, np.ndarray):     # named in the message
            named = f"mean_error (has dtype float32|{re.escape(str(value.shape))})"
            with pytest.raises(ValueError if value.shape != (3,) else TypeError, match=named):
                fo.batchnorm_backward(dy, bad)
        fo.batchnorm_backward(dy, fo.layers.BatchNormCache(**fields))     # a faithful copy works


@pytest.mark.parametrize("shape", [(4,), (4, 1), (1, 4)])
def test_batch_norm_grads_take_the_shape_of_gamma_and_beta(shape):
    """The course keeps gamma as (C, 1): its dgamma must be (C, 1) too (a flat (C,) grad
    broadcast gamma - lr * dgamma to (C, C) silently). The values are those of flat ones."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 6))          # the course's layout: features x examples
    dy = rng.standard_normal((4, 6))
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    _, cache = fo.batchnorm_forward(x, gamma.reshape(shape), beta.reshape(shape), axis=1)
    dx, dgamma, dbeta = fo.batchnorm_backward(dy, cache)
    _, flat_cache = fo.batchnorm_forward(x, gamma, beta, axis=1)
    dx_flat, dgamma_flat, dbeta_flat = fo.batchnorm_backward(dy, flat_cache)
    assert dgamma.shape == dbeta.shape == shape
    assert dx.tobytes() == dx_flat.tobytes()
    assert dgamma.ravel().tobytes() == dgamma_flat.tobytes()
    assert dbeta.ravel().tobytes() == dbeta_flat.tobytes()


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batch_variance_far_below_eps_is_not_lost_to_cancellation(backend, dtype):
    """The variance (cache.var, the running_var update) was taken back from inv_std as
    1 / inv_std**2 - eps, which cancels where the variance is small next to eps: a constant
    feature came out -2.5e-19 with eps=1e-3 (torch: 0), a variance of 2.3e-13 8e-7 relative
    off (13 float32 ulps). Expected: NumPy's own variance of the data (8 rows of values a few
    bits long: the sums are exact)."""
    rng = np.random.default_rng(13)
    x = np.empty((8, 4))
    x[:, 0] = 0.75                                    # a constant (dead) feature
    x[:, 1] = 2.0 + rng.integers(-3, 4, 8) * 2.0 ** -22     # variance 2.3e-13
    x[:, 2] = rng.standard_normal(8) * 1e-4
    x[:, 3] = rng.standard_normal(8)
    x = x.astype(dtype)
    biased = x.astype(np.float64).var(axis=0)
    with fo.use_backend(backend):
        for axis, xa in ((0, x), (1, np.ascontiguousarray(x.T))):
            _, cache = fo.batchnorm_forward(xa, np.ones(4, dtype), np.zeros(4, dtype), axis,
                                            eps=1e-3)
            # as the kernels summed it (float64, two passes)
            np.testing.assert_allclose(cache.var, biased, **tolerance(np.float64))
            layer = fo.BatchNorm(4, axis=axis, momentum=None, eps=1e-3, dtype=dtype)
            layer.forward(xa)
            np.testing.assert_allclose(layer.running_var, (biased * 8 / 7).astype(dtype),
                                       **tolerance(dtype))
            assert layer.running_var[0] == 0


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batch_norm_layer_takes_training_as_true_or_false_only(backend):
    """forward(x, training=...) took its flag by truth: training="False" (or a 1-element
    array, None) trained, updating the running statistics, where every other option of
    fastopt is True or False (np.bool_ too) and torch's train(mode) refuses a non-bool."""
    x = np.random.default_rng(13).standard_normal((5, 3)).astype(np.float32)
    with fo.use_backend(backend):
        layer = fo.BatchNorm(3)
        np.testing.assert_array_equal(layer(x, np.False_), layer(x, False))
        assert layer.num_batches_tracked == 0
        layer(x, np.True_)
        stats = layer.running_mean.copy(), layer.running_var.copy()
        for bad in ("False", None, 0, 1, np.array([False])):
            with pytest.raises(TypeError, match="Invalid training: .*must be True or False"):
                layer.forward(x, bad)
            with pytest.raises(TypeError, match="Invalid training"):
                layer(x, training=bad)
        assert layer.num_batches_tracked == 1
        np.testing.assert_array_equal(layer.running_mean, stats[0])
        np.testing.assert_array_equal(layer.running_var, stats[1])


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batch_norm_layer_errors_name_x_and_a_failed_forward_changes_nothing(backend):
    """A BatchNorm layer's x of the wrong dtype or feature count was reported as the layer's
    gamma (which the caller never passed); a read-only running statistic failed after the
    running mean and the batch count had changed, with NumPy's unnamed message."""
    rng = np.random.default_rng(12)
    with fo.use_backend(backend):
        layer = fo.BatchNorm(3, momentum=None)           # float32
        layer.forward(rng.standard_normal((5, 3)).astype(np.float32))
        cache = layer._cache
        for training in (True, False):
            with pytest.raises(TypeError, match=r"^x has dtype float64, expected float32"):
                layer.forward(rng.standard_normal((5, 3)), training)
            with pytest.raises(ValueError, match=r"^x has shape \(5, 4\)"):
                layer.forward(rng.standard_normal((5, 4)).astype(np.float32), training)
        layer.running_var = layer.running_var.copy()
        layer.running_var.flags.writeable = False
        mean = layer.running_mean.copy()
        with pytest.raises(ValueError, match="running_var"):
            layer.forward(rng.standard_normal((5, 3)).astype(np.float32))
        np.testing.assert_array_equal(layer.running_mean, mean)
        assert layer.num_batches_tracked == 1 and layer._cache is cache


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batch_norm_layer_with_a_replaced_gamma_names_gamma_not_x(backend):
    """A float32 layer's gamma replaced by a float64 array (or one of another size), x right:
    the message blamed x ("x has dtype float32, expected float64 (the layer's dtype)"), taking
    the odd gamma for the layer's."""
    x = np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)
    with fo.use_backend(backend):
        for gamma, error, match in ((np.ones(4), TypeError, r"^gamma has dtype float64"),
                                    (np.ones(5, np.float32), ValueError,
                                     r"^gamma has shape \(5,\)")):
            for training in (True, False):
                layer = fo.BatchNorm(4)
                layer.gamma = gamma
                with pytest.raises(error, match=match):
                    layer.forward(x, training)
                assert layer.num_batches_tracked == 0


def test_batch_norm_messages_name_the_callers_batch_axis():
    """A Fortran-ordered x is normalized as its transpose: the message named that batch axis
    (0) where the caller gave 1."""
    x = np.asfortranarray(np.ones((3, 5)))
    for call in (lambda: fo.batchnorm_forward(x, np.ones(5), np.ones(3), axis=1),
                 lambda: fo.batchnorm_inference(x, np.ones(3), np.ones(3), np.ones(5),
                                                np.ones(3), axis=1)):
        with pytest.raises(ValueError, match=r"expected \(3,\) .*batch axis 1\)"):
            call()


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")       # np.matrix
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_out_must_be_a_plain_ndarray_as_the_inputs(backend):
    """out=np.matrix (which stays 2-D when the kernels' 3-D view is taken) or a masked array
    (whose mask the kernels cannot honour) raised each backend's own unnamed error (Cython's
    buffer dimensions, Numba's IndexError/NumbaTypeError) or was written around the mask."""
    z = np.arange(6.0).reshape(2, 3)
    calls = (lambda o: fo.softmax(z, out=o), lambda o: fo.log_softmax(z, out=o),
             lambda o: fo.softmax_cross_entropy(z, np.array([0, 2]), out=o),
             lambda o: fo.batchnorm_forward(z, np.ones(3), np.zeros(3), out=o))
    with fo.use_backend(backend):
        for call in calls:
            for out in (np.matrix(np.full((2, 3), 7.0)),
                        np.ma.array(np.full((2, 3), 7.0), mask=[[1, 0, 0], [0, 0, 0]]),
                        np.full((2, 3), 7.0).view(OwnArithmetic)):
                with pytest.raises(TypeError, match="^out must be a plain numpy.ndarray"):
                    call(out)
                assert (np.asarray(out) == 7).all()
        # an input of arithmetic of its own: the reference had computed with it
        own = z.view(OwnArithmetic)
        for call in (lambda: fo.softmax(own), lambda: fo.log_softmax(own),
                     lambda: fo.softmax_cross_entropy(own, np.array([0, 2])),
                     lambda: fo.batchnorm_forward(own, np.ones(3), np.zeros(3))):
            with pytest.raises(TypeError, match="must be a plain numpy.ndarray, got Own"):
                call()


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("axis", [0, 1])
def test_batch_norm_of_an_ndarray_subclass_backpropagates(backend, axis, tmp_path):
    """An x of an ndarray subclass (a np.memmap: a slice of np.load(..., mmap_mode="r") is
    one) went through batchnorm_forward, but batchnorm_backward (and BatchNorm.backward)
    refused its cache: 'cache is not as batchnorm_forward made it: x, gamma, mean and inv_std
    must be ndarrays'. The results are those of the plain array."""
    class Sub(np.ndarray):
        pass

    rng = np.random.default_rng(4)
    data = rng.standard_normal((6, 4)).astype(np.float32)
    mm = np.memmap(tmp_path / "x.dat", dtype=np.float32, mode="w+", shape=(6, 4))
    mm[...] = data
    dy = rng.standard_normal((6, 4)).astype(np.float32)
    with fo.use_backend(backend):
        for x, d in ((mm, dy), (mm[1:5], dy[1:5]), (mm.T, dy.T), (data.view(Sub), dy)):
            n_features = x.shape[1 - axis]
            gamma = rng.standard_normal(n_features).astype(np.float32)
            beta = rng.standard_normal(n_features).astype(np.float32)
            y0, c0 = fo.batchnorm_forward(np.array(x), gamma, beta, axis=axis)
            want = fo.batchnorm_backward(d, c0)
            y, cache = fo.batchnorm_forward(x, gamma.view(Sub), beta, axis=axis)
            got = fo.batchnorm_backward(d.view(Sub), cache)
            np.testing.assert_array_equal(y, y0)
            for a, w in zip(got, want):
                np.testing.assert_array_equal(a, w)
            layer = fo.BatchNorm(n_features, axis=axis)
            layer.gamma[...], layer.beta[...] = gamma, beta
            np.testing.assert_array_equal(layer.forward(x), y0)
            np.testing.assert_array_equal(layer.backward(d), want[0])
            np.testing.assert_array_equal(layer.dgamma, want[1])


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("kind", ["zero stride", "windows"])
def test_out_whose_elements_share_memory_is_refused(backend, kind):
    """An out= whose elements share memory (a zero stride, or as_strided windows one element
    apart) was taken: each address kept the last value written and that view came back as the
    result (softmax of [0, 1, 2] as [0.67, 0.67, 0.67]). torch refuses such an out=, and the
    ops refuse it for the arrays they update: ValueError naming out, nothing written."""
    from numpy.lib.stride_tricks import as_strided
    z = np.arange(6.0).reshape(2, 3)
    x = np.arange(12.0).reshape(4, 3) ** 2
    _, cache = fo.batchnorm_forward(x, np.ones(3), np.zeros(3))
    calls = ((z, lambda o: fo.softmax(z, out=o)), (z, lambda o: fo.log_softmax(z, out=o)),
             (z, lambda o: fo.softmax_cross_entropy(z, np.array([0, 2]), out=o)),
             (x, lambda o: fo.batchnorm_forward(x, np.ones(3), np.zeros(3), out=o)),
             (x, lambda o: fo.batchnorm_backward(np.ones_like(x), cache, out=o)),
             (x, lambda o: fo.batchnorm_inference(x, np.ones(3), np.zeros(3), np.zeros(3),
                                                  np.ones(3), out=o)))
    with fo.use_backend(backend):
        for a, call in calls:
            buf = np.full(a.size, 7.0)
            step = 0 if kind == "zero stride" else buf.itemsize
            out = as_strided(buf, shape=a.shape, strides=(step, step))
            with pytest.raises(ValueError, match="^out has elements that share memory"):
                call(out)
            assert (buf == 7).all()


@needs_torch
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batch_norm_layer_takes_nan_inf_and_overflow_without_warnings(backend):
    """The layer's Python arithmetic warned where the kernels give IEEE results silently: an
    inf feature ("invalid value in subtract", from cache.var), a float32 variance past
    float32's range ("overflow in cast"), momentum 0 times an inf mean, a running_var of 0
    with eps=0 in eval. Under -W error (or np.errstate(all="raise")) training raised after
    running_mean had changed (running_var, num_batches_tracked not). Expected: torch's values
    (NaN/inf where its statistics are), no warning."""
    x = np.array([[np.nan, np.inf, 1e20, 1.0], [1.0, 2.0, -1e20, 2.0], [2.0, 3.0, 1e20, 4.0]])
    with warnings.catch_warnings(), np.errstate(all="raise"), fo.use_backend(backend):
        warnings.simplefilter("error")
        for dtype, tdt in ((np.float64, torch.float64), (np.float32, torch.float32)):
            for momentum in (0.1, 0.0, None):
                xd = x.astype(dtype)
                xd[:, 2] *= 1e185 if dtype == np.float64 else 1   # var past the dtype's max
                layer = fo.BatchNorm(4, momentum=momentum, dtype=dtype)
                layer.forward(xd)
                layer_t = torch.nn.BatchNorm1d(4, momentum=momentum).to(tdt)
                layer_t(torch.tensor(xd))
                rtol = tolerance(dtype)["rtol"]
                np.testing.assert_allclose(layer.running_mean, layer_t.running_mean.numpy(),
                                           rtol=rtol)
                # (torch's float32 variance of feature 2 is inf, fastopt's float64 one is not:
                # times momentum 0 that is NaN in torch, nothing in fastopt)
                cols = [0, 1, 3] if momentum == 0 else [0, 1, 2, 3]
                np.testing.assert_allclose(layer.running_var[cols],
                                           layer_t.running_var.numpy()[cols], rtol=rtol)
                assert layer.num_batches_tracked == 1
                layer.backward(np.full_like(xd, np.finfo(dtype).max))     # dbeta overflows
                assert np.isinf(layer.dbeta[3])
        layer = fo.BatchNorm(2, momentum=1.0, eps=0.0, dtype=np.float64)
        layer.forward(np.array([[1.0, 2.0], [1.0, 3.0]]))                  # a constant feature
        assert layer.running_var[0] == 0
        y = layer.forward(np.array([[1.0, 2.0], [2.0, 3.0]]), training=False)
        assert np.isnan(y[0, 0]) and y[1, 0] == np.inf                    # 0 * inf, 1 * inf


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batch_norm_training_checks_the_running_statistics_as_inference_does(backend):
    """Training checked only that running_mean/running_var were writeable (None failed with an
    AttributeError): a running_var of 4 values for 3 features raised NumPy's unnamed broadcast
    error after running_mean had changed, an int64 or float64 one (a float32 layer) took the
    update cast (int64: truncated to [1, 0, 0]), where inference raised naming it. Expected: the
    same errors as inference, nothing changed; (C, 1) and byte-swapped statistics, which
    inference takes, are updated in place."""
    rng = np.random.default_rng(14)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    bad = [("running_var", np.ones(4, np.float32), ValueError),
           ("running_mean", np.zeros(2, np.float32), ValueError),
           ("running_var", np.ones(3, np.int64), TypeError),
           ("running_var", np.ones(3, np.float64), TypeError),
           ("running_var", None, TypeError), ("running_mean", [0.0, 0.0, 0.0], TypeError)]
    with fo.use_backend(backend):
        good = fo.BatchNorm(3)
        good.forward(x)
        for name, value, exc in bad:
            layer = fo.BatchNorm(3)
            setattr(layer, name, value)
            saved = None if value is None else np.array(value, copy=True)
            for training in (False, True):
                with pytest.raises(exc, match=f"^{name} "):
                    layer.forward(x, training)
            assert layer.num_batches_tracked == 0 and layer._cache is None
            other = layer.running_mean if name == "running_var" else layer.running_var
            assert (other == (0 if name == "running_var" else 1)).all()
            assert value is None or np.array_equal(value, saved)
        for make in (lambda a: a.reshape(3, 1).copy(), lambda a: a.astype(">f4")):
            layer = fo.BatchNorm(3)
            layer.running_mean, layer.running_var = make(layer.running_mean), \
                make(layer.running_var)
            layer.forward(x)
            np.testing.assert_array_equal(layer.running_mean.ravel(), good.running_mean)
            np.testing.assert_array_equal(layer.running_var.ravel(), good.running_var)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batch_norm_backward_checks_dgamma_and_dbeta_before_writing_either(backend):
    """backward wrote dgamma, then failed on a dbeta of 2 values for 3 features (NumPy's
    unnamed broadcast error), on None ('does not support item assignment') or a read-only one;
    an int64 dgamma took the grads truncated. Expected: TypeError/ValueError naming the
    array, dgamma and dbeta as they were; (C, 1) grads, as the course's, are written."""
    rng = np.random.default_rng(15)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    dy = rng.standard_normal((6, 3)).astype(np.float32)
    read_only = np.zeros(3, np.float32)
    read_only.flags.writeable = False
    bad = [("dbeta", np.zeros(2, np.float32), ValueError), ("dbeta", None, TypeError),
           ("dbeta", read_only, ValueError), ("dgamma", np.zeros(3, np.int64), TypeError),
           ("dgamma", np.zeros(3, np.float64), TypeError)]
    with fo.use_backend(backend):
        good = fo.BatchNorm(3)
        good.forward(x)
        good.backward(dy)
        for name, value, exc in bad:
            layer = fo.BatchNorm(3)
            layer.forward(x)
            setattr(layer, name, value)
            other = "dbeta" if name == "dgamma" else "dgamma"
            with pytest.raises(exc, match=f"^{name} "):
                layer.backward(dy)
            assert (getattr(layer, other) == 0).all()
            assert value is None or (value == 0).all()
        layer = fo.BatchNorm(3)
        layer.forward(x)
        layer.dgamma, layer.dbeta = np.zeros((3, 1), np.float32), np.zeros((3, 1), np.float32)
        layer.backward(dy)
        np.testing.assert_array_equal(layer.dgamma.ravel(), good.dgamma)
        np.testing.assert_array_equal(layer.dbeta.ravel(), good.dbeta)


def test_calling_a_batch_norm_layer_runs_its_subclass_forward():
    """``BatchNorm.__call__ = forward`` bound the base class's forward: a subclass overriding
    forward (as one overrides a torch module's) still ran BatchNorm.forward on layer(x)."""
    class Scaled(fo.BatchNorm):
        def forward(self, x, training=True):
            return 2 * super().forward(x, training)

    x = np.random.default_rng(16).standard_normal((5, 3))
    layer, plain = Scaled(3, dtype=np.float64), fo.BatchNorm(3, dtype=np.float64)
    np.testing.assert_array_equal(layer(x), 2 * plain(x))
    np.testing.assert_array_equal(layer(x, False), 2 * plain(x, False))
    np.testing.assert_array_equal(layer(x, training=False), 2 * plain(x, training=False))


@needs_torch
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batch_norm_float64_running_var_is_torchs_where_the_variance_is_small_next_to_eps(
        backend):
    """cache.var (the running_var update) was taken back from inv_std as 1 / inv_std**2 - eps,
    summed again from x only below eps * 2**-20: a float64 feature of std 1e-5 (variance 1e-10,
    eps 1e-5) came out 3.8e-11 relative off torch's running_var, std 1e-4 1.8e-13. Expected:
    torch.nn.BatchNorm1d's float64 running statistics to float64's tolerance (the kernels now
    hand back the variance they summed)."""
    rng = np.random.default_rng(17)
    stds = np.array([1e-2, 1e-3, 1e-4, 1e-5, 3e-6, 1e-6])
    with fo.use_backend(backend):
        for axis in (0, 1):
            layer = fo.BatchNorm(6, axis=axis, momentum=0.5, dtype=np.float64)
            layer_t = torch.nn.BatchNorm1d(6, momentum=0.5).double()
            for _ in range(3):
                x = rng.standard_normal((64, 6)) * stds + 1.0
                layer_t(torch.tensor(x))
                _, cache = fo.batchnorm_forward(x if axis == 0 else x.T, layer.gamma,
                                                layer.beta, axis)
                np.testing.assert_allclose(cache.var, x.var(axis=0), **tolerance(np.float64))
                layer.forward(x if axis == 0 else np.ascontiguousarray(x.T))
            np.testing.assert_allclose(layer.running_var, layer_t.running_var.numpy(),
                                       **tolerance(np.float64))
            np.testing.assert_allclose(layer.running_mean, layer_t.running_mean.numpy(),
                                       **tolerance(np.float64))


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_training_batch_of_one_is_refused_naming_x_and_its_batch_axis(backend):
    """'batch norm in training needs more than 1 example per feature, got a batch of 1' named
    neither the argument nor the axis (a (1, 5) x with axis=0; a Fortran-ordered (5, 1) x with
    axis=1, normalized as its transpose)."""
    with fo.use_backend(backend):
        for x, axis in ((np.ones((1, 5)), 0), (np.asfortranarray(np.ones((5, 1))), 1),
                        (np.ones((5, 0)), 1)):
            n, shape = x.shape[axis], re.escape(str(x.shape))
            with pytest.raises(ValueError, match=rf"^x has shape {shape}, a batch of {n} "
                                                 rf"along axis {axis}: "):
                fo.batchnorm_forward(x, np.ones(5), np.zeros(5), axis)
            layer = fo.BatchNorm(5, axis=axis, dtype=np.float64)
            with pytest.raises(ValueError, match=rf"^x has shape {shape}, a batch of {n} "):
                layer.forward(x)
            assert layer.num_batches_tracked == 0 and (layer.running_var == 1).all()


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batch_norm_numpy_scalar_momentum_gives_the_python_floats_running_statistics(backend,
                                                                                     dtype):
    """BatchNorm(momentum=np.float64(0.1)) folded (1 - m) * running_mean in float64 where the
    Python float 0.1 leaves it in the statistics' dtype: 33 of 50 float32 running means came
    out other bits than with momentum=0.1. Expected: the same number, the same bits."""
    rng = np.random.default_rng(18)
    x = (rng.standard_normal((16, 50)) * 3 + 1).astype(dtype)
    with fo.use_backend(backend):
        stats = []
        for momentum in (0.1, np.float64(0.1)):
            layer = fo.BatchNorm(50, momentum=momentum, dtype=dtype)
            layer.running_mean[...] = np.linspace(-3, 3, 50)
            layer.running_var[...] = np.linspace(0.3, 3, 50)
            for _ in range(3):
                layer.forward(x)
            stats.append((layer.running_mean, layer.running_var))
    for a, b in zip(*stats):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_layer_eps_and_momentum_take_a_0d_array_as_the_number_it_holds(backend):
    """A 0-d real array is a real number wherever fastopt takes one (the optimizers, ops, the
    course, schedules): batchnorm_forward/inference and BatchNorm refused eps=np.array(1e-3)
    and momentum=np.array(0.1) as 'not a real number'. Expected: the Python float's bits; a
    negative or NaN one refused as such, an array of another shape by name."""
    rng = np.random.default_rng(19)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    g, b = np.full(3, 1.5, np.float32), np.full(3, 0.5, np.float32)
    rv = np.linspace(0.5, 2, 3).astype(np.float32)

    def run(eps, momentum):
        y, _ = fo.batchnorm_forward(x, g, b, eps=eps)
        layer = fo.BatchNorm(3, momentum=momentum, eps=eps)
        layer.forward(x)
        return (y, fo.batchnorm_inference(x, g, b, g, rv, eps=eps), layer.running_mean,
                layer.running_var, layer.forward(x, training=False))

    with fo.use_backend(backend):
        for a, b_ in zip(run(1e-3, 0.1), run(np.array(1e-3), np.array(0.1))):
            np.testing.assert_array_equal(a, b_)
        for name, bad, exc, why in (("eps", np.array(-1e-3), ValueError, "must be >= 0"),
                                    ("eps", np.array([1e-3]), TypeError, "shape (1,)"),
                                    ("momentum", np.array(np.nan), ValueError, "in [0, 1]"),
                                    ("momentum", np.array([0.1]), TypeError, "shape (1,)")):
            calls = [lambda: fo.BatchNorm(3, **{name: bad})]
            if name == "eps":
                calls += [lambda: fo.batchnorm_forward(x, g, b, eps=bad),
                          lambda: fo.batchnorm_inference(x, g, b, g, rv, eps=bad)]
            for call in calls:
                with pytest.raises(exc, match=rf"\b{name}\b.*{re.escape(why)}"):
                    call()


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batch_norm_copies_do_not_share_what_forward_and_backward_update(backend):
    """copy.copy(layer) shared running_mean, running_var, dgamma and dbeta, which forward and
    backward change in place, but not num_batches_tracked: training the copy changed the
    original's running statistics (and with momentum=None weighted them by the original's own
    count). Expected, as for EWA: each goes on from the state at the copy on its own, as a
    layer trained on its own batches."""
    rng = np.random.default_rng(20)
    a, b, c = (rng.standard_normal((6, 3)) for _ in range(3))
    with fo.use_backend(backend):
        def trained(*batches):
            layer = fo.BatchNorm(3, momentum=None, dtype=np.float64)
            for x in batches:
                layer.forward(x)
                layer.backward(x)
            return layer
        for make in (copy.copy, copy.deepcopy, lambda layer: pickle.loads(pickle.dumps(layer, 2)),
                     lambda layer: pickle.loads(pickle.dumps(layer, 5))):
            original = trained(a)
            twin = make(original)
            twin.forward(b)
            twin.backward(b)
            original.forward(c)
            original.backward(c)
            for layer, expected in ((twin, trained(a, b)), (original, trained(a, c))):
                for name in ("running_mean", "running_var", "dgamma", "dbeta"):
                    np.testing.assert_array_equal(getattr(layer, name),
                                                  getattr(expected, name), err_msg=name)


def test_a_pickle_or_deep_copy_of_a_batch_norm_layer_holds_no_batch():
    """The layer keeps its last training batch for backward; a pickle and a deep copy held
    it too (a checkpoint of a layer over a 4 MB batch was 4 MB, not ~1 KB, with the
    training data in it). They hold the parameters, statistics and grads; the layer itself
    still backpropagates, and the copy asks for a forward first."""
    layer = fo.BatchNorm(8)
    fresh = len(pickle.dumps(layer))
    x = np.random.default_rng(3).standard_normal((131072, 8)).astype(np.float32)
    layer.forward(x)
    for twin in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert len(pickle.dumps(twin)) < fresh + 1000
        with pytest.raises(RuntimeError, match="forward in training mode first"):
            twin.backward(x)
        np.testing.assert_array_equal(twin.running_var, layer.running_var)
    assert len(pickle.dumps(layer)) < fresh + 1000
    assert layer.backward(x).shape == x.shape


def _npz_round_trip(sd, path, allow_pickle=False):
    """``sd`` through ``np.savez`` and ``np.load``, each entry an array, as a checkpoint."""
    np.savez(path, **{k: np.asarray(v) for k, v in sd.items()})
    with np.load(path, allow_pickle=allow_pickle) as f:
        return {k: f[k] for k in f.files}


BN_STATE_ARRAYS = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean",
                   "running_var": "running_var"}


def _bn_state(layer):
    """The layer's state as bytes and numbers, to compare before and after."""
    return ({name: getattr(layer, name).tobytes() for name in BN_STATE_ARRAYS.values()},
            layer.num_batches_tracked, layer.momentum, layer.eps)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batch_norm_layer_state_dict_resumes_bit_for_bit_through_pickle_and_npz(backend, dt,
                                                                                 tmp_path):
    """BatchNorm had no state_dict: a checkpoint of arrays and numbers (the optimizer's
    state_dict, np.savez) had to copy its running statistics and count by hand. The state
    dict has torch.nn.BatchNorm1d's keys (weight and bias are gamma and beta) and the
    hyper-parameters, as copies (later steps leave a held dict as it is, and a loaded one);
    a fresh layer loads it in place (its optimizer, made before, steps the loaded gamma),
    through pickle or np.savez, and goes on bit for bit."""
    rng = np.random.default_rng(11)
    xs = [(rng.standard_normal((6, 5)) * 2 + 1).astype(dt) for _ in range(6)]
    with fo.use_backend(backend):
        for momentum in (0.1, None):
            def made(momentum=momentum, eps=1e-3):
                layer = fo.BatchNorm(5, momentum=momentum, eps=eps, dtype=dt)
                return layer, fo.SGD(layer.params, lr=0.1, momentum=0.9)

            def train(layer, opt, x):
                y = layer.forward(x)
                dx = layer.backward(np.sin(y))
                opt.step(layer.grads)
                return y, dx
            layer, opt = made()
            for x in xs[:3]:
                train(layer, opt, x)
            sd, osd = layer.state_dict(), opt.state_dict()
            assert sorted(sd) == sorted([*BN_STATE_ARRAYS, "num_batches_tracked", "momentum",
                                         "eps"])
            assert (sd["num_batches_tracked"], sd["momentum"], sd["eps"]) == (3, momentum, 1e-3)
            assert type(sd["num_batches_tracked"]) is int and type(sd["eps"]) is float
            for key, name in BN_STATE_ARRAYS.items():
                assert sd[key].dtype == dt and sd[key].tobytes() == getattr(layer, name).tobytes()
            held = copy.deepcopy(sd)
            twins = []
            for loaded in (pickle.loads(pickle.dumps(sd)),
                           # (np.savez stores a None momentum as a pickled object array)
                           _npz_round_trip(sd, tmp_path / "bn.npz",
                                           allow_pickle=momentum is None)):
                twin, twin_opt = made(momentum=0.5, eps=1e-5)
                gamma = twin.gamma
                twin.load_state_dict(loaded)
                twin_opt.load_state_dict(osd)
                assert twin.gamma is gamma      # in place: the optimizer's parameter
                assert _bn_state(twin) == _bn_state(layer)
                twins.append((twin, twin_opt, loaded, copy.deepcopy(loaded)))
            for x in xs[3:]:
                want = train(layer, opt, x)
                for twin, twin_opt, _, _ in twins:
                    got = train(twin, twin_opt, x)
                    assert [a.tobytes() for a in got] == [a.tobytes() for a in want]
            for twin, _, loaded, before in twins:
                assert _bn_state(twin) == _bn_state(layer)
                assert (twin.forward(xs[0], training=False).tobytes()
                        == layer.forward(xs[0], training=False).tobytes())
                for key in BN_STATE_ARRAYS:     # the loaded dict is not the layer's state
                    assert loaded[key].tobytes() == before[key].tobytes(), key
            for key in BN_STATE_ARRAYS:         # nor the held one
                assert sd[key].tobytes() == held[key].tobytes(), key
            assert sd["num_batches_tracked"] == 3


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batch_norm_layer_load_state_dict_refuses_bad_entries_by_name_and_changes_nothing(
        backend):
    """Each bad entry is an error naming it, raised before anything changes (gamma, checked
    first, is not written when a later entry is refused); float arrays of another dtype are
    cast, as torch's load_state_dict casts; a load leaves no batch for backward."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    with fo.use_backend(backend):
        layer = fo.BatchNorm(3)
        layer.forward(x)
        good = {**layer.state_dict(), "weight": np.float32([2.0, 3.0, 4.0])}
        layer.forward(x + 1)
        before, cache = _bn_state(layer), layer._cache
        bad = [
            ([], TypeError, "state_dict must be a dict"),
            ({k: v for k, v in good.items() if k != "running_var"}, ValueError,
             "no 'running_var'"),
            ({k: v for k, v in good.items() if k != "num_batches_tracked"}, ValueError,
             "no 'num_batches_tracked'"),
            ({**good, "gamma": good["weight"]}, ValueError, "the key 'gamma'"),
            ({**good, "running_var": np.ones(4, np.float32)}, ValueError,
             r"state_dict\['running_var'\] has shape \(4,\), expected \(3,\)"),
            ({**good, "bias": np.zeros((3, 1), np.float32)}, ValueError,
             r"state_dict\['bias'\] has shape"),
            ({**good, "running_mean": np.zeros(3, np.int64)}, TypeError,
             r"state_dict\['running_mean'\] has dtype int64"),
            ({**good, "running_mean": [0.0, 0.0, 0.0]}, TypeError,
             r"state_dict\['running_mean'\] must be a numpy.ndarray"),
            ({**good, "bias": np.ma.masked_array(np.zeros(3, np.float32))}, TypeError,
             r"state_dict\['bias'\] must be a plain"),
            ({**good, "num_batches_tracked": -1}, ValueError,
             r"Invalid state_dict\['num_batches_tracked'\]: -1"),
            ({**good, "num_batches_tracked": 2.5}, TypeError,
             r"state_dict\['num_batches_tracked'\] must be an int"),
            ({**good, "num_batches_tracked": True}, TypeError,
             r"state_dict\['num_batches_tracked'\] must be an int"),
            ({**good, "momentum": float("nan")}, ValueError,
             r"Invalid state_dict\['momentum'\]: nan"),
            ({**good, "momentum": 1.5}, ValueError, r"Invalid state_dict\['momentum'\]"),
            ({**good, "momentum": "0.1"}, TypeError, r"Invalid state_dict\['momentum'\]"),
            ({**good, "eps": -1.0}, ValueError, r"Invalid state_dict\['eps'\]"),
            ({**good, "eps": float("nan")}, ValueError, r"Invalid state_dict\['eps'\]"),
        ]
        for sd, exc, match in bad:
            with pytest.raises(exc, match=match):
                layer.load_state_dict(sd)
            assert _bn_state(layer) == before and layer._cache is cache, match
        layer.running_mean.flags.writeable = False
        with pytest.raises(ValueError, match="the layer's running_mean is read-only"):
            layer.load_state_dict(good)
        assert _bn_state(layer) == before and layer._cache is cache
        layer.running_mean = layer.running_mean.copy()
        # a layer array the user replaced by an int array or a list: named, not truncated
        saved = layer.running_mean
        for replaced in (saved.astype(np.int64), saved.tolist()):
            layer.running_mean = replaced
            with pytest.raises(TypeError, match="the layer's running_mean is (ndarray of "
                               "dtype int64|list), not a float array"):
                layer.load_state_dict(good)
            layer.running_mean = saved
            assert _bn_state(layer) == before and layer._cache is cache
        layer.backward(x)                       # (the refused loads left the batch)
        # float64 arrays and 0-d array numbers (np.savez's) load cast, as torch's
        wide = {**good, **{k: good[k].astype(np.float64) for k in BN_STATE_ARRAYS},
                "num_batches_tracked": np.array(7), "momentum": np.array(0.25)}
        layer.load_state_dict(wide)
        assert layer.gamma.dtype == np.float32 and layer.gamma.tolist() == [2.0, 3.0, 4.0]
        assert (layer.num_batches_tracked, layer.momentum) == (7, 0.25)
        assert type(layer.num_batches_tracked) is int and type(layer.momentum) is float
        with pytest.raises(RuntimeError, match="forward in training mode first"):
            layer.backward(x)


@needs_torch
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_batch_norm_layer_state_dict_has_torch_batchnorm1d_keys_both_ways(backend):
    """The state dict's array and counter entries are torch.nn.BatchNorm1d's, with its
    values; a torch layer's state dict (tensors as arrays) loads into a fresh layer, and ours
    (its torch keys, as tensors) into a fresh torch layer, and both go on alike."""
    rng = np.random.default_rng(13)
    xs = [rng.standard_normal((8, 5)) * 3 + 1 for _ in range(4)]
    layer_t = torch.nn.BatchNorm1d(5, momentum=0.2).double()
    with fo.use_backend(backend), torch.no_grad():
        layer = fo.BatchNorm(5, momentum=0.2, dtype=np.float64)
        for x in xs[:3]:
            layer.forward(x)
            layer_t(torch.tensor(x))
        ours = layer.state_dict()
        theirs = {k: v.detach().numpy().copy() for k, v in layer_t.state_dict().items()}
        assert set(ours) - set(theirs) == {"momentum", "eps"} and set(theirs) <= set(ours)
        for key, value in theirs.items():
            assert np.shape(ours[key]) == value.shape, key
            np.testing.assert_allclose(ours[key], value, rtol=1e-12, err_msg=key)
        fresh = fo.BatchNorm(5, momentum=0.2, dtype=np.float64)
        fresh.load_state_dict(theirs)           # no momentum or eps: the layer's own
        for key, name in BN_STATE_ARRAYS.items():
            assert getattr(fresh, name).tobytes() == theirs[key].tobytes(), key
        assert fresh.num_batches_tracked == 3 and (fresh.momentum, fresh.eps) == (0.2, 1e-5)
        fresh_t = torch.nn.BatchNorm1d(5, momentum=0.2).double()
        fresh_t.load_state_dict({k: torch.tensor(ours[k]) for k in theirs})
        assert int(fresh_t.num_batches_tracked) == 3
        assert fresh_t.running_var.numpy().tobytes() == layer.running_var.tobytes()
        for a, b in ((layer, fresh_t), (fresh, layer_t)):
            a.forward(xs[3])
            b(torch.tensor(xs[3]))
            np.testing.assert_allclose(a.running_mean, b.running_mean.numpy(), rtol=1e-12)
            np.testing.assert_allclose(a.running_var, b.running_var.numpy(), rtol=1e-12)


INDEX_AXES = [np.array(1), np.int64(1), np.uint8(1), np.array(-1, np.int32), np.intp(-1)]
NOT_AXES = [True, np.True_, np.array(True), 1.0, np.float64(1.0), np.array(1.0),
            np.array([1]), np.array([[1]]), "1", None]


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_axis_takes_what_operator_index_takes(backend):
    """NumPy takes any ``operator.index`` integer for an int axis: a NumPy integer or a 0-d
    integer array (``np.sum(x, axis=np.array(1))``). The layers took Python and NumPy ints
    only (a 0-d array was ``TypeError: axis must be an int``): now each takes what NumPy
    takes, with the int's result, and still refuses bools, floats and arrays that are not 0-d
    integers with the TypeError naming axis."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((4, 3))
    labels = rng.integers(0, 3, 4)
    gamma, beta, mean, var = (rng.random(3) + 0.5 for _ in range(4))
    calls = {
        "softmax": lambda axis: fo.softmax(x, axis=axis),
        "log_softmax": lambda axis: fo.log_softmax(x, axis=axis),
        "softmax_cross_entropy": lambda axis: fo.softmax_cross_entropy(x, labels, axis=axis),
        "batchnorm_forward": lambda axis: fo.batchnorm_forward(x.T, gamma, beta, axis=axis)[0],
        "batchnorm_inference": lambda axis: fo.batchnorm_inference(x.T, gamma, beta, mean, var,
                                                                   axis=axis),
        "BatchNorm": lambda axis: fo.BatchNorm(3, axis=axis, dtype=np.float64).forward(x.T)}
    with fo.use_backend(backend):
        for name, call in calls.items():
            want = call(1)
            for axis in INDEX_AXES:
                got = call(axis)
                if name == "softmax_cross_entropy":
                    assert got[0] == want[0], (name, axis)
                    got, want_ = got[1], want[1]
                else:
                    want_ = want
                np.testing.assert_array_equal(got, want_, err_msg=f"{name} axis={axis!r}")
            for axis in NOT_AXES:
                with pytest.raises(TypeError, match="axis must be an int"):
                    call(axis)
        layer = fo.BatchNorm(3, axis=np.array(1), dtype=np.float64)
        assert type(layer.axis) is int and layer.axis == 1
