"""The public API around the kernels: backends, optimizer structures and errors, state dicts,
schedules, exponentially weighted averages and mini-batches. Expected values are computed by
hand or by formulas written out here, never by fastopt."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import fastopt as fo
from conftest import AVAILABLE, GRID_BACKENDS, needs_torch, torch


# ----------------------------------------------------------------------------- backends
def test_backends_are_listed_fastest_first_and_numpy_is_always_there():
    assert AVAILABLE[-1] == "numpy"
    assert AVAILABLE == [b for b in ("cython", "numba", "numpy") if b in AVAILABLE]


def test_use_backend_restores_the_previous_one_even_after_an_error():
    before = fo.get_backend()
    with pytest.raises(ZeroDivisionError):
        with fo.use_backend("numpy"):
            assert fo.get_backend() == "numpy"
            1 / 0
    assert fo.get_backend() == before


def test_unknown_backend_is_a_runtime_error_saying_why():
    with pytest.raises(RuntimeError, match="unknown backend"):
        fo.set_backend("fortran")


def test_environment_variable_picks_the_default_backend():
    env = dict(os.environ, FASTOPT_BACKEND="numpy")
    out = subprocess.run([sys.executable, "-c", "import fastopt; print(fastopt.get_backend())"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "numpy"


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_thread_count_must_be_a_positive_int(bad):
    with pytest.raises(ValueError):
        fo.set_num_threads(bad)


def test_thread_count_round_trips():
    n = fo.get_num_threads()
    fo.set_num_threads(1)
    assert fo.get_num_threads() == 1
    fo.set_num_threads(n)


# --------------------------------------------------------------------- optimizer structure
def _course_params(dtype=np.float64):
    rng = np.random.default_rng(0)
    return {"W1": rng.standard_normal((5, 2)).astype(dtype), "b1": np.zeros((5, 1), dtype),
            "W2": rng.standard_normal((1, 5)).astype(dtype), "b2": np.zeros((1, 1), dtype)}


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_course_dict_with_d_prefixed_grads_and_extra_keys(backend):
    params = _course_params()
    before = {k: v.copy() for k, v in params.items()}
    grads = {"d" + k: np.ones_like(v) for k, v in params.items()}
    grads["dA1"] = np.zeros(3)                      # the course's caches ride along: ignored
    with fo.use_backend(backend):
        fo.SGD(params, lr=0.1).step(grads)
    for k in params:
        np.testing.assert_array_equal(params[k], before[k] - 0.1)


def test_grads_by_name_and_by_position_give_the_same_result():
    a, b = _course_params(), _course_params()
    grads = {k: np.full_like(v, 0.5) for k, v in a.items()}
    fo.Adam(a, lr=0.1).step(grads)
    fo.Adam(list(b.values()), lr=0.1).step(list(grads.values()))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_param_groups_override_defaults_and_are_editable_between_steps():
    w, b = np.ones(3), np.ones(2)
    opt = fo.SGD([{"params": [w]}, {"params": [b], "lr": 0.5}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert opt.param_groups[0]["params"][0] is w
    opt.step([np.ones(3), np.ones(2)])
    np.testing.assert_allclose(w, 0.9)
    np.testing.assert_allclose(b, 0.5)
    opt.param_groups[1]["lr"] = 0.25
    opt.step([np.ones(3), np.ones(2)])
    np.testing.assert_allclose(b, 0.25)
    assert opt.lr == [0.1, 0.25]
    opt.lr = 0.01
    assert opt.lr == 0.01 and all(g["lr"] == 0.01 for g in opt.param_groups)


def test_in_place_update_reaches_views_and_non_contiguous_params():
    base = np.ones((6, 4))
    view = base[::2, 1:3]
    opt = fo.Momentum([view], lr=1.0, beta=0.5)
    opt.step([np.ones_like(view)])
    np.testing.assert_allclose(base[::2, 1:3], 0.5)
    np.testing.assert_allclose(base[1::2], 1.0)
    assert np.shares_memory(opt.param_groups[0]["params"][0], base)


ERRORS = [
    (lambda p: {"dW1": np.zeros((2, 5)), "db1": p["b1"], "dW2": p["W2"], "db2": p["b2"]},
     ValueError, "'W1'"),
    (lambda p: {"dW1": p["W1"].astype(np.float32), "db1": p["b1"], "dW2": p["W2"],
                "db2": p["b2"]}, TypeError, "'W1'"),
    (lambda p: {"dW1": p["W1"], "db1": p["b1"], "dW2": p["W2"]}, ValueError, "'b2'"),
    (lambda p: {"dW1": p["W1"], "db1": [0.0] * 5, "dW2": p["W2"], "db2": p["b2"]},
     TypeError, "'b1'"),
    (lambda p: [p["W1"], p["b1"], p["W2"], p["b2"]], ValueError, "by name"),  # dict: by name
    (lambda p: 3.0, TypeError, "grads"),
]


@pytest.mark.parametrize("make,exc,word", ERRORS,
                         ids=["shape", "dtype", "missing", "not-array", "sequence", "type"])
@pytest.mark.parametrize("cls", [fo.SGD, fo.Adam, fo.RMSprop, fo.Adagrad, fo.NAdam])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_bad_grad_raises_naming_the_parameter_and_changes_nothing(backend, cls, make, exc,
                                                                     word):
    params = _course_params()
    with fo.use_backend(backend):
        opt = cls(params, lr=0.1) if cls is not fo.SGD else cls(params, lr=0.1, momentum=0.9)
        good = {"d" + k: np.ones_like(v) for k, v in params.items()}
        opt.step(good)                               # state exists, cached path in use
        before = {k: v.copy() for k, v in params.items()}
        state_before = pickle.dumps(opt.state_dict())
        with pytest.raises(exc, match=word):
            opt.step(make(params))
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])
    assert pickle.dumps(opt.state_dict()) == state_before


def test_a_failed_first_step_creates_no_state():
    params = _course_params()
    opt = fo.Adam(params)
    with pytest.raises(ValueError):
        opt.step({"dW1": params["W1"], "db1": params["b1"], "dW2": params["W2"],
                  "db2": np.zeros(7)})
    assert opt.state == {}


def test_read_only_parameters_are_refused_at_construction():
    w = np.ones(3)
    w.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fo.Adam([w])


@pytest.mark.parametrize("make,word", [
    (lambda p: fo.SGD(p, lr=-0.1), "lr"),
    (lambda p: fo.SGD(p, lr=0.1, momentum=-0.5), "momentum"),
    (lambda p: fo.SGD(p, lr=0.1, nesterov=True), "nesterov"),
    (lambda p: fo.Adam(p, eps=-1e-8), "eps"),
    (lambda p: fo.Adam(p, betas=(1.0, 0.999)), "beta1"),
    (lambda p: fo.AdamW(p, weight_decay=-0.01), "weight_decay"),
    (lambda p: fo.RMSprop(p, beta=1.2), "alpha"),
    (lambda p: fo.Momentum(p, lr=0.1, beta=-0.1), "beta"),
    (lambda p: fo.Adagrad(p, lr_decay=-1.0), "lr_decay"),
])
def test_bad_hyper_parameters_are_value_errors_with_the_value(make, word):
    with pytest.raises(ValueError, match=word):
        make([np.zeros(2)])


@pytest.mark.parametrize("bad", [np.arange(3), [np.ones(2), "x"], np.ones(3)])
def test_bad_params_are_type_errors(bad):
    with pytest.raises(TypeError):
        fo.SGD(bad, lr=0.1)


def test_empty_params_are_refused():
    with pytest.raises(ValueError, match="empty"):
        fo.SGD([], lr=0.1)


# --------------------------------------------------------------------------- state dicts
def test_state_dict_has_torch_layout_and_survives_npz():
    params = _course_params()
    opt = fo.Adam(params, lr=0.1, amsgrad=True)
    for _ in range(3):
        opt.step({k: np.ones_like(v) for k, v in params.items()})
    sd = opt.state_dict()
    assert sorted(sd) == ["param_groups", "state"]
    assert sd["param_groups"][0]["params"] == [0, 1, 2, 3]
    assert sorted(sd["state"][0]) == ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"]
    assert sd["state"][0]["step"] == 3
    # flatten into an npz and back, as a user saving a checkpoint would
    flat = {f"{i}/{k}": np.asarray(v) for i, s in sd["state"].items() for k, v in s.items()}
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"fo_sd_{os.getpid()}.npz")
    np.savez(path, **flat)
    loaded = np.load(path)
    state = {}
    for key in loaded.files:
        i, name = key.split("/")
        state.setdefault(int(i), {})[name] = loaded[key]
    os.remove(path)
    twin = {k: v.copy() for k, v in params.items()}
    opt2 = fo.Adam(twin, lr=0.1, amsgrad=True)
    opt2.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    grads = {k: np.full_like(v, 0.3) for k, v in params.items()}
    opt.step(grads)
    opt2.step(grads)
    for k in params:
        assert params[k].tobytes() == twin[k].tobytes()


def test_load_state_dict_refuses_a_mismatch_and_changes_nothing():
    opt = fo.Adam([np.ones(3)])
    opt.step([np.ones(3)])
    bad = opt.state_dict()
    bad["state"][0]["exp_avg"] = np.zeros(4)
    before = pickle.dumps(opt.state_dict())
    with pytest.raises(ValueError, match="exp_avg"):
        opt.load_state_dict(bad)
    assert pickle.dumps(opt.state_dict()) == before


@needs_torch
@pytest.mark.parametrize("name,kwargs", [
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True)),
    ("AdamW", dict(lr=0.01, betas=(0.8, 0.95))),
])
def test_torch_state_dict_loads_and_trajectories_agree(name, kwargs):
    rng = np.random.default_rng(5)
    shapes = [(4, 3), (3,), ()]
    theirs = [torch.tensor(rng.standard_normal(s), requires_grad=True) for s in shapes]
    ref = getattr(torch.optim, name)(theirs, **kwargs)

    def torch_step(grads):
        for t, g in zip(theirs, grads):
            t.grad = torch.from_numpy(g.copy())
        ref.step()

    for _ in range(5):
        torch_step([rng.standard_normal(s) for s in shapes])
    ours = [t.detach().numpy().copy() for t in theirs]
    sd = ref.state_dict()
    state = {i: {k: (v.numpy().copy() if hasattr(v, "numpy") else v) for k, v in s.items()}
             for i, s in sd["state"].items()}
    opt = getattr(fo, name)(ours, **kwargs)
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    for _ in range(20):
        grads = [rng.standard_normal(s) for s in shapes]
        opt.step(grads)
        torch_step(grads)
    for a, t in zip(ours, theirs):
        # float64; the kernels fold a few scalars differently (e.g. 1/sqrt(bc2)): ulps
        np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- schedules
def test_inverse_time_decay_matches_the_course():
    fn = fo.schedules.inverse_time_decay(0.2, decay_rate=1.0)
    np.testing.assert_allclose([fn(e) for e in (1, 2, 3, 4)], [0.1, 0.2 / 3, 0.05, 0.04])


def test_other_schedules():
    assert fo.schedules.exponential_decay(1.0, 0.5)(3) == 0.125
    assert fo.schedules.inverse_sqrt_decay(0.3, k=2.0)(4) == pytest.approx(0.3)
    assert fo.schedules.staircase(1.0, 0.1, every=10)(25) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        fo.schedules.inverse_sqrt_decay(0.3)(0)


def test_lr_scheduler_counts_epochs_from_zero_and_sets_every_group():
    opt = fo.SGD([{"params": [np.ones(2)]}, {"params": [np.ones(2)], "lr": 9.0}], lr=1.0)
    sched = fo.schedules.LRScheduler(opt, fo.schedules.inverse_time_decay(1.0, 1.0))
    assert sched.step() == 1.0 and opt.lr == 1.0
    assert sched.step() == 0.5 and all(g["lr"] == 0.5 for g in opt.param_groups)
    sched.step(epoch=3)
    assert opt.lr == 0.25


# ------------------------------------------------------------------------------------ EWA
def test_ewa_series_matches_the_course_beta_098_example():
    theta = np.array([10.0, 20.0, 30.0])
    v = fo.ewa_series(theta, 0.98)
    np.testing.assert_allclose(v[1], 0.0196 * 10.0 + 0.02 * 20.0)
    corrected = fo.ewa_series(theta, 0.98, bias_correction=True)
    np.testing.assert_allclose(corrected[1], (0.0196 * 10.0 + 0.02 * 20.0) / 0.0396)
    np.testing.assert_allclose(corrected[0], 10.0)           # 0.02 * 10 / 0.02


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_ewa_object_tracks_the_corrected_average(backend):
    with fo.use_backend(backend):
        avg = fo.EWA(beta=0.9)
        assert avg.value is None and avg.t == 0
        out = avg.update(np.full((2, 2), 4.0))
        np.testing.assert_allclose(out, 4.0)                 # bias correction undoes the 0
        avg.update(np.full((2, 2), 2.0))
        v2 = 0.9 * 0.1 * 4.0 + 0.1 * 2.0
        np.testing.assert_allclose(avg.value, v2 / (1 - 0.81))
        assert avg.t == 2
        with pytest.raises(ValueError, match="shape"):
            avg.update(np.zeros(3))


# ----------------------------------------------------------------------------- minibatches
def test_minibatches_148_by_64_in_the_course_column_layout():
    X = np.arange(2 * 148).reshape(2, 148)
    Y = np.arange(148).reshape(1, 148)
    batches = list(fo.minibatches(X, Y, batch_size=64, axis=-1, seed=1))
    assert [b[0].shape[1] for b in batches] == [64, 64, 20]
    seen = np.concatenate([b[1][0] for b in batches])
    assert sorted(seen) == list(range(148)) and not np.array_equal(seen, np.arange(148))
    for xb, yb in batches:                                   # shuffled in sync
        np.testing.assert_array_equal(xb[1] - 148, yb[0])


def test_minibatches_rows_same_seed_same_batches_and_no_shuffle():
    X, Y = np.arange(10)[:, None] * 1.0, np.arange(10)
    a = [y.tolist() for _, y in fo.minibatches(X, Y, batch_size=4, seed=3)]
    b = [y.tolist() for _, y in fo.minibatches(X, Y, batch_size=4, seed=3)]
    assert a == b
    plain = [y.tolist() for _, y in fo.minibatches(X, Y, batch_size=4, shuffle=False)]
    assert plain == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError):
        list(fo.minibatches(X, Y, batch_size=0))
    with pytest.raises(ValueError):
        list(fo.minibatches(X, Y[:5]))


@pytest.mark.parametrize("call", [
    lambda a: fo.ops.adam_step_(a, a.copy(), a * 0, a * 0, 0),
    lambda a: fo.ops.adamax_step_(a, a.copy(), a * 0, a * 0, 0),
    lambda a: fo.ops.radam_step_(a, a.copy(), a * 0, a * 0, -1),
    lambda a: fo.ops.nadam_step_(a, a.copy(), a * 0, a * 0, 0, 1.0),
    lambda a: fo.ops.adagrad_step_(a, a.copy(), a * 0, 0),
    lambda a: fo.ops.foreach_adam_step_([a], [a.copy()], [a * 0], [a * 0], 0),
])
def test_step_counts_start_at_one(call):
    a = np.ones(3)
    with pytest.raises(ValueError, match="step"):
        call(a)
    np.testing.assert_array_equal(a, 1.0)
