"""The equivalence grid: every fo.ops kernel on every backend against the NumPy reference,
over dtypes, sizes (0-d, empty, odd, above the parallel threshold) and memory layouts, for
several steps with fresh grads each step."""
import numpy as np
import pytest

import fastopt as fo
from conftest import COMPILED, GRID_BACKENDS, assert_close, kernel_builds
from kernel_specs import random_run, run_steps

ops = fo.ops

# name -> (state arrays with their initial value, one step(param, grad, state, t))
CASES = {
    "ewa": ({}, lambda p, g, s, t: ops.ewa_(p, g, 0.9)),
    "sgd": ({}, lambda p, g, s, t: ops.sgd_step_(p, g, lr=0.1)),
    "sgd_wd_maximize": ({}, lambda p, g, s, t: ops.sgd_step_(p, g, lr=0.1, weight_decay=0.1,
                                                             maximize=True)),
    "sgd_momentum_dampening": ({"buf": 0.0}, lambda p, g, s, t: ops.sgd_step_(
        p, g, s["buf"], lr=0.1, momentum=0.9, dampening=0.25, weight_decay=0.01,
        first_step=t == 1)),
    "sgd_nesterov": ({"buf": 0.0}, lambda p, g, s, t: ops.sgd_step_(
        p, g, s["buf"], lr=0.1, momentum=0.8, nesterov=True, first_step=t == 1)),
    "momentum": ({"v": 0.0}, lambda p, g, s, t: ops.momentum_step_(p, g, s["v"], lr=0.1,
                                                                    beta=0.9)),
    "rmsprop": ({"sq": 0.0}, lambda p, g, s, t: ops.rmsprop_step_(p, g, s["sq"], lr=0.01)),
    "rmsprop_centered_momentum_wd": (
        {"sq": 0.0, "ga": 0.0, "buf": 0.0},
        lambda p, g, s, t: ops.rmsprop_step_(p, g, s["sq"], lr=0.01, beta=0.9, eps=1e-6,
                                             weight_decay=0.1, momentum_buffer=s["buf"],
                                             momentum=0.5, grad_avg=s["ga"], maximize=True)),
    "rmsprop_eps_inside": ({"sq": 0.0}, lambda p, g, s, t: ops.rmsprop_step_(
        p, g, s["sq"], lr=0.01, eps=1e-4, eps_inside_sqrt=True)),
    "adagrad": ({"sum": 0.1}, lambda p, g, s, t: ops.adagrad_step_(
        p, g, s["sum"], t, lr=0.1, lr_decay=0.01, weight_decay=0.05)),
    "adam": ({"m": 0.0, "v": 0.0}, lambda p, g, s, t: ops.adam_step_(p, g, s["m"], s["v"], t,
                                                                      lr=0.01)),
    "adam_amsgrad_wd_maximize": (
        {"m": 0.0, "v": 0.0, "vmax": 0.0},
        lambda p, g, s, t: ops.adam_step_(p, g, s["m"], s["v"], t, lr=0.01, betas=(0.8, 0.99),
                                          weight_decay=0.1, max_exp_avg_sq=s["vmax"],
                                          maximize=True)),
    "adam_eps_inside": ({"m": 0.0, "v": 0.0}, lambda p, g, s, t: ops.adam_step_(
        p, g, s["m"], s["v"], t, lr=0.01, eps=1e-6, eps_inside_sqrt=True)),
    "adamw": ({"m": 0.0, "v": 0.0}, lambda p, g, s, t: ops.adamw_step_(
        p, g, s["m"], s["v"], t, lr=0.01, weight_decay=0.1)),
    "adadelta": ({"sq": 0.0, "acc": 0.0}, lambda p, g, s, t: ops.adadelta_step_(
        p, g, s["sq"], s["acc"], lr=0.5, rho=0.8, weight_decay=0.1, maximize=True)),
    "adamax": ({"m": 0.0, "u": 0.0}, lambda p, g, s, t: ops.adamax_step_(
        p, g, s["m"], s["u"], t, lr=0.01, weight_decay=0.1)),
    "nadam_decoupled": ({"m": 0.0, "v": 0.0}, lambda p, g, s, t: ops.nadam_step_(
        p, g, s["m"], s["v"], t, 0.9 ** (t - 1), lr=0.01, weight_decay=0.1,
        decoupled_weight_decay=True)),
    "radam": ({"m": 0.0, "v": 0.0}, lambda p, g, s, t: ops.radam_step_(
        p, g, s["m"], s["v"], t, lr=0.01, weight_decay=0.1, maximize=True)),
}
SHAPES = [(), (0,), (1,), (7,), (1031,), (70001,), (33, 31)]
LAYOUTS = ["contiguous", "strided", "transposed", "mixed"]
STEPS = 7


def run(case, backend, p0, grads, layout, threads=None):
    """The case's step ``len(grads)`` times on ``backend``: :func:`kernel_specs.run_steps`."""
    init, step = CASES[case]
    return run_steps(step, init, backend, p0, grads, layout, threads)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_matches_reference(backend, case, shape, layout, dtype):
    if backend == "numpy" and layout == "contiguous":
        pytest.skip("the reference on contiguous arrays is the expected value itself")
    p0, grads = random_run(shape, dtype, steps=STEPS)
    expected_p, expected_state = run(case, "numpy", p0, grads, "contiguous")
    p, state = run(case, backend, p0, grads, layout)
    assert p.dtype == dtype and p.shape == p0.shape
    assert_close(p, expected_p, dtype, f"param of {case}")
    for k in state:
        assert_close(state[k], expected_state[k], dtype, f"state {k} of {case}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_nan_and_inf_propagate_as_in_reference(backend, case, dtype):
    p0, grads = random_run((64,), dtype, steps=3)
    p0[3], p0[5] = np.nan, np.inf
    grads[0][7], grads[1][9], grads[2][11] = np.nan, np.inf, -np.inf
    expected_p, expected_state = run(case, "numpy", p0, grads, "contiguous")
    p, state = run(case, backend, p0, grads, "contiguous")
    np.testing.assert_array_equal(p, expected_p)   # NaN positions must match too
    for k in state:
        np.testing.assert_array_equal(state[k], expected_state[k])
    assert np.isnan(p[3]) and np.isfinite(p[0])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", COMPILED)
def test_bit_identical_for_any_thread_count(backend, case, dtype):
    p0, grads = random_run((300007,), dtype, steps=3)
    p1, s1 = run(case, backend, p0, grads, "contiguous", threads=1)
    p2, s2 = run(case, backend, p0, grads, "contiguous", threads=2)
    assert p1.tobytes() == p2.tobytes()
    assert all(s1[k].tobytes() == s2[k].tobytes() for k in s1)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_updates_the_callers_array_and_its_views(backend, dtype):
    base = np.ones((10, 6), dtype)
    param = base[::2, 1:5]                # a non-contiguous view the caller holds
    other_view = base[::2]
    m, v = np.zeros_like(param), np.zeros_like(param)
    with fo.use_backend(backend):
        ops.adam_step_(param, np.ones_like(param), m, v, 1, lr=0.5)
    assert np.shares_memory(param, base)
    assert np.all(other_view[:, 1:5] < 1) and np.all(other_view[:, 0] == 1)
    assert np.all(base[1::2] == 1)        # rows outside the view untouched


def read_only(a):
    a.flags.writeable = False
    return a


BAD = [
    ("grad shape", lambda p: dict(grad=np.zeros(5, p.dtype)), ValueError, "grad"),
    ("grad dtype", lambda p: dict(grad=np.zeros(p.shape, np.float16)), TypeError, "grad"),
    ("grad not an array", lambda p: dict(grad=[0.0] * 4), TypeError, "grad"),
    ("state shape", lambda p: dict(exp_avg_sq=np.zeros(3, p.dtype)), ValueError, "exp_avg_sq"),
    ("state dtype", lambda p: dict(exp_avg=np.zeros(p.shape, np.float64 if p.dtype ==
                                                     np.float32 else np.float32)),
     TypeError, "exp_avg"),
    ("read-only state", lambda p: dict(exp_avg=read_only(np.zeros(p.shape, p.dtype))),
     ValueError, "exp_avg"),
]


@pytest.mark.parametrize("what,bad,exc,name", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_bad_arrays_raise_naming_the_argument_and_change_nothing(backend, dtype, what, bad,
                                                                 exc, name):
    param = np.arange(4, dtype=dtype)
    args = dict(grad=np.ones(4, dtype), exp_avg=np.zeros(4, dtype),
                exp_avg_sq=np.zeros(4, dtype))
    args.update(bad(param))
    before = {k: np.array(v, copy=True) for k, v in args.items()}
    with fo.use_backend(backend), pytest.raises(exc, match=name):
        ops.adam_step_(param, args["grad"], args["exp_avg"], args["exp_avg_sq"], 1, lr=0.1)
    np.testing.assert_array_equal(param, np.arange(4, dtype=dtype))
    for k, v in args.items():
        np.testing.assert_array_equal(np.asarray(v), before[k])


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_non_float_param_is_a_type_error(backend):
    with fo.use_backend(backend), pytest.raises(TypeError, match="param"):
        ops.sgd_step_(np.arange(4), np.arange(4), lr=0.1)


@pytest.mark.skipif(len(kernel_builds("optim")) < 2 or "cython" not in GRID_BACKENDS,
                    reason="needs both the portable and the AVX-512 build of the kernels")
@pytest.mark.parametrize("case", ["sgd_momentum_dampening", "rmsprop_centered_momentum_wd",
                                  "adagrad", "adam_amsgrad_wd_maximize", "adam_eps_inside",
                                  "momentum", "ewa", "adadelta", "adamax", "nadam_decoupled",
                                  "radam"])
def test_avx512_build_is_bit_identical_to_the_portable_build(case, dtype, monkeypatch):
    import fastopt._kernels as cy
    p0, grads = random_run((100003,), dtype, steps=3)
    results = []
    for module in kernel_builds("optim"):
        for name in ("adagrad", "adam", "ewa", "momentum", "rmsprop", "sgd", "adadelta",
                     "adamax", "nadam", "radam"):
            monkeypatch.setattr(cy, name, getattr(module, name))
        p, state = run(case, "cython", p0, grads, "contiguous")
        results.append((p.tobytes(), {k: s.tobytes() for k, s in state.items()}))
    assert results[0] == results[1]


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_running_max_keeps_its_zero_on_a_tie(backend, dtype):
    """amsgrad's max_exp_avg_sq and Adamax's exp_inf keep the running value when the new one
    equals it: max(-0.0, +0.0) is -0.0 on every backend (np.maximum gave +0.0 in the reference,
    the compiled kernels -0.0)."""
    z = np.zeros(3, dtype)
    vmax = np.full(3, -0.0, dtype)
    u = np.full(3, -0.0, dtype)
    with fo.use_backend(backend):
        ops.adam_step_(z.copy(), z, z.copy(), z.copy(), 1, max_exp_avg_sq=vmax)
        ops.adamax_step_(z.copy(), z, z.copy(), u, 1, betas=(0.9, 1e-300), eps=0.0)
    assert np.signbit(vmax).all() and np.signbit(u).all()
