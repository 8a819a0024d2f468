"""fastopt.course against the course notebook's formulas, written out here in plain NumPy."""
import math

import numpy as np
import pytest

import fastopt as fo
from fastopt import course
from conftest import GRID_BACKENDS


def params_and_grads(dtype, seed=1):
    rng = np.random.default_rng(seed)
    shapes = {"W1": (3, 2), "b1": (3, 1), "W2": (1, 3), "b2": (1, 1)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    grads = {"d" + k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    return params, grads


def close(a, b, dtype):
    np.testing.assert_allclose(a, b, rtol=1e-12 if dtype == np.float64 else 1e-6, atol=0)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_gradient_descent(backend, dtype):
    params, grads = params_and_grads(dtype)
    expected = {k: v - 0.01 * grads["d" + k] for k, v in params.items()}
    with fo.use_backend(backend):
        out = course.update_parameters_with_gd(params, grads, 0.01)
    assert out is params
    for k in params:
        close(params[k], expected[k], dtype)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_momentum_two_steps(backend, dtype):
    params, grads = params_and_grads(dtype)
    v = course.initialize_velocity(params)
    assert sorted(v) == ["dW1", "dW2", "db1", "db2"]
    assert all(not v["d" + k].any() and v["d" + k].shape == params[k].shape for k in params)
    exp_p = {k: p.copy() for k, p in params.items()}
    exp_v = {k: np.zeros_like(p) for k, p in params.items()}
    with fo.use_backend(backend):
        for _ in range(2):
            params, v = course.update_parameters_with_momentum(params, grads, v, beta=0.9,
                                                               learning_rate=0.01)
            for k in exp_p:
                exp_v[k] = 0.9 * exp_v[k] + (1 - 0.9) * grads["d" + k]
                exp_p[k] = exp_p[k] - 0.01 * exp_v[k]
    for k in params:
        close(params[k], exp_p[k], dtype)
        close(v["d" + k], exp_v[k], dtype)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_adam_three_steps(backend, dtype):
    params, grads = params_and_grads(dtype)
    v, s = course.initialize_adam(params)
    exp_p = {k: p.astype(np.float64) for k, p in params.items()}
    exp_v = {k: np.zeros(p.shape) for k, p in params.items()}
    exp_s = {k: np.zeros(p.shape) for k, p in params.items()}
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    with fo.use_backend(backend):
        for t in range(1, 4):
            params, v, s = course.update_parameters_with_adam(params, grads, v, s, t, lr, b1,
                                                              b2, eps)
            for k in exp_p:
                g = grads["d" + k].astype(np.float64)
                exp_v[k] = b1 * exp_v[k] + (1 - b1) * g
                exp_s[k] = b2 * exp_s[k] + (1 - b2) * np.power(g, 2)
                v_corr = exp_v[k] / (1 - np.power(b1, t))
                s_corr = exp_s[k] / (1 - np.power(b2, t))
                exp_p[k] = exp_p[k] - lr * v_corr / (np.sqrt(s_corr) + eps)
    for k in params:
        close(params[k], exp_p[k], dtype)
        close(v["d" + k], exp_v[k], dtype)
        close(s["d" + k], exp_s[k], dtype)


@pytest.mark.parametrize("m,size,sizes", [(148, 64, [64, 64, 20]), (128, 64, [64, 64]),
                                          (10, 3, [3, 3, 3, 1])])
def test_random_mini_batches_reproduce_the_course_shuffle(m, size, sizes):
    X = np.arange(3 * m, dtype=float).reshape(3, m)
    Y = (np.arange(m) % 2).reshape(1, m)
    batches = course.random_mini_batches(X, Y, size, seed=7)
    np.random.seed(7)
    perm = list(np.random.permutation(m))
    assert [b[0].shape[1] for b in batches] == sizes
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches], axis=1), X[:, perm])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches], axis=1), Y[:, perm])


def test_learning_rate_decay_matches_the_course():
    assert course.update_lr(0.5, 2, 1) == pytest.approx(0.5 / 3)
    assert course.schedule_lr_decay(0.5, 100, 0.3, time_interval=100) == pytest.approx(0.5 / 1.3)
    assert course.schedule_lr_decay(0.5, 99, 0.3, time_interval=100) == 0.5
    assert course.schedule_lr_decay(0.5, 2500, 1) == pytest.approx(0.5 / (1 + math.floor(2.5)))
