"""Lion against optax's published formula (optax.lion = scale_by_lion, add_decayed_weights,
scale_by_learning_rate), computed here independently of fastopt: hand-worked values, and a
trajectory of optax's chain written out in NumPy, on every backend. (The registry tests hold
every backend to the reference for every option and layout.)"""
import pickle

import numpy as np
import pytest

import fastopt as fo
from conftest import GRID_BACKENDS


def optax_lion_chain(params, grads_per_step, lr, b1, b2, weight_decay):
    """optax.lion's update, transformation by transformation (optax/_src/transform.py and
    alias.py): the sign of the interpolated momentum; then ``updates + weight_decay * params``;
    then ``updates * -lr``; ``apply_updates`` adds them. Python floats meet the arrays' dtype
    as JAX's weakly typed scalars do."""
    params = [p.copy() for p in params]
    mu = [np.zeros_like(p) for p in params]
    for grads in grads_per_step:
        updates = [np.sign((1.0 - b1) * g + b1 * m) for g, m in zip(grads, mu)]
        mu = [(1 - b2) * g + b2 * m for g, m in zip(grads, mu)]            # update_moment
        updates = [u + weight_decay * p for u, p in zip(updates, params)]  # decayed weights
        updates = [u * -lr for u in updates]                               # learning rate
        params = [p + u for p, u in zip(params, updates)]                  # apply_updates
    return params, mu


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_one_step_by_hand(backend):
    # c = 0.1 g + 0.9 m = [0.05, 0.065, -0.18, 0.3, 0]; sign = [1, 1, -1, 1, 0]
    p = np.array([1.0, -2.0, 0.5, 0.0, 2.0])
    g = np.array([0.5, -0.25, 0.0, 3.0, 0.0])
    m = np.array([0.0, 0.1, -0.2, 0.0, 0.0])
    with fo.use_backend(backend):
        fo.ops.lion_step_(p, g, m, lr=0.1, betas=(0.9, 0.99), weight_decay=0.01)
    # p - 0.1 * (sign + 0.01 p);  m = 0.01 g + 0.99 m
    np.testing.assert_allclose(p, [0.899, -2.098, 0.5995, -0.1, 1.998], rtol=1e-15, atol=0)
    np.testing.assert_allclose(m, [0.005, 0.0965, -0.198, 0.03, 0.0], rtol=1e-15, atol=1e-18)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_the_optimizer_follows_optax_for_twenty_steps(backend, dtype):
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (7,), ()]
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(20)]
    hyper = dict(lr=0.03, b1=0.8, b2=0.95, weight_decay=0.1)
    expected, mu = optax_lion_chain(start, grads, **hyper)
    params = [p.copy() for p in start]
    with fo.use_backend(backend):
        opt = fo.Lion(params, lr=0.03, betas=(0.8, 0.95), weight_decay=0.1)
        for gs in grads:
            opt.step(gs)
    for p, e, i in zip(params, expected, range(3)):
        assert p.dtype == dtype
        np.testing.assert_array_equal(p, e)         # the same IEEE operations in order
        np.testing.assert_array_equal(opt.state[i]["exp_avg"], mu[i])


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_defaults_are_optax_and_maximize_ascends(backend):
    rng = np.random.default_rng(1)
    p0, g = rng.standard_normal(9), rng.standard_normal(9)
    expected, _ = optax_lion_chain([p0], [[-g]], lr=1e-4, b1=0.9, b2=0.99, weight_decay=1e-3)
    p = p0.copy()
    with fo.use_backend(backend):
        fo.Lion([p], maximize=True).step([g])
    np.testing.assert_array_equal(p, expected[0])


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_nan_and_inf_follow_optax(backend):
    p = np.array([1.0, np.inf, 1.0, 1.0])
    g = np.array([np.nan, 1.0, np.inf, 0.0])
    expected, mu = optax_lion_chain([p], [[g]], lr=0.1, b1=0.9, b2=0.99, weight_decay=0.0)
    m = np.zeros(4)
    with fo.use_backend(backend):
        fo.ops.lion_step_(p, g, m, lr=0.1, weight_decay=0.0)
    np.testing.assert_array_equal(p, expected[0])    # NaN, NaN (inf * 0), 0.9, 1.0
    np.testing.assert_array_equal(m, mu[0])
    assert np.isnan(p[:2]).all() and p[3] == 1.0


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_resuming_from_a_pickled_state_dict_is_exact(backend, dtype):
    rng = np.random.default_rng(2)
    start = [rng.standard_normal(s).astype(dtype) for s in [(4, 3), (5,)]]
    grads = [[rng.standard_normal(p.shape).astype(dtype) for p in start] for _ in range(8)]
    with fo.use_backend(backend):
        straight = [p.copy() for p in start]
        opt = fo.Lion(straight, lr=0.01)
        for gs in grads:
            opt.step(gs)
        first = [p.copy() for p in start]
        opt1 = fo.Lion(first, lr=0.01)
        for gs in grads[:4]:
            opt1.step(gs)
        state, params = pickle.loads(pickle.dumps((opt1.state_dict(), first)))
        opt2 = fo.Lion(params, lr=0.01)
        opt2.load_state_dict(state)
        for gs in grads[4:]:
            opt2.step(gs)
    for a, b in zip(params, straight):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("kwargs,word", [(dict(lr=-1.0), "lr"), (dict(betas=(1.0, 0.9)), "beta1"),
                                         (dict(betas=(0.9, -0.1)), "beta2"),
                                         (dict(weight_decay=-1e-3), "weight_decay")])
def test_bad_hyper_parameters_raise_naming_them(kwargs, word):
    p, m = np.zeros(3), np.zeros(3)
    with pytest.raises(ValueError, match=word):
        fo.Lion([p], **kwargs)
    with pytest.raises(ValueError, match=word):
        fo.ops.lion_step_(p, np.ones(3), m, **kwargs)
    assert not p.any() and not m.any()
