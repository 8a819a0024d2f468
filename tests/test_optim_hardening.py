"""Issue 12, optimizer classes and fastopt.ops: hyper-parameters checked (type and range, named)
before anything is written, atomic steps across groups, torch's signatures and names. Every
test runs on each backend of the grid; each is a few milliseconds."""
import inspect
import math
import pickle

import numpy as np
import pytest

import fastopt as fo
from conftest import GRID_BACKENDS

# every optimizer, with options that bring in all of its state
CONFIGS = [
    ("SGD", dict(lr=0.1)), ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Momentum", dict(lr=0.1)),
    ("RMSprop", dict(lr=0.01)), ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01)), ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)), ("AdamW", dict(lr=0.01)),
    ("Adadelta", dict()), ("Adamax", dict()), ("NAdam", dict()), ("RAdam", dict()),
]
CONFIG_IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)]

# (value, exception) refused for a real hyper-parameter with a lower bound of 0
BAD_REALS = [(None, TypeError), ("0.1", TypeError), ([0.1], TypeError), (math.nan, ValueError),
             (-1.0, ValueError)]


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, 2)), rng.standard_normal(4).astype(np.float32)]


def _grads(seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, 2)), rng.standard_normal(4).astype(np.float32)]


def _snapshot(opt, params):
    return [p.tobytes() for p in params], pickle.dumps(opt.state_dict()["state"])


def _hyper_cases(opt):
    """(key, value, exception) for each hyper-parameter of ``opt``'s group: bad types and
    values out of range."""
    cases = []
    for key, value in opt.param_groups[0].items():
        if key in ("params", "param_names"):
            continue
        if isinstance(value, bool):
            cases += [(key, None, TypeError), (key, "yes", TypeError)]
        elif isinstance(value, tuple):
            cases += [(key, None, TypeError), (key, (1.0, 0.999), ValueError),
                      (key, (0.9, 1.0), ValueError), (key, (0.9,), ValueError),
                      (key, (0.9, "0.9"), TypeError)]
        else:
            cases += [(key,) + bad for bad in BAD_REALS]
            if key in ("alpha", "beta", "rho"):
                cases.append((key, 1.5, ValueError))
    return cases


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=CONFIG_IDS)
def test_bad_hyper_parameters_at_construction_are_named(name, kwargs):
    opt = getattr(fo, name)(_params(), **kwargs)
    for key, value, exc in _hyper_cases(opt):
        kw = dict(kwargs, **{key: value})
        if name == "AdamW" and key == "decoupled_weight_decay":
            continue                    # not an argument of AdamW (always True)
        with pytest.raises(exc, match=key.split("_")[0] if key == "betas" else key):
            getattr(fo, name)(_params(), **kw)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=CONFIG_IDS)
def test_a_hyper_parameter_set_later_is_checked_at_step_and_nothing_changes(backend, name,
                                                                          kwargs):
    """param_groups[0][key] = bad, before the first step and after a few: TypeError or
    ValueError naming it, and no parameter or state array changes (numba turned lr=None into
    NaN parameters; the numpy backend updated state before raising; betas=(1, .999) was a
    ZeroDivisionError)."""
    with fo.use_backend(backend):
        for warm in (0, 2):
            params = _params()
            opt = getattr(fo, name)(params, **kwargs)
            for _ in range(warm):
                opt.step(_grads())
            group = opt.param_groups[0]
            for key, value, exc in _hyper_cases(opt):
                good = group[key]
                group[key] = value
                before = _snapshot(opt, params)
                with pytest.raises(exc, match="beta" if key == "betas" else key):
                    opt.step(_grads())
                assert _snapshot(opt, params) == before, (key, value)
                group[key] = good
            opt.step(_grads())          # and it steps again once fixed
            assert all(np.isfinite(p).all() for p in params)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_bad_later_group_leaves_earlier_groups_unstepped(backend):
    a, b = np.ones(3), np.ones(2)
    with fo.use_backend(backend):
        opt = fo.Adam([{"params": [a]}, {"params": [b]}], lr=0.1)
        opt.step([np.ones(3), np.ones(2)])
        opt.param_groups[1]["betas"] = (1.0, 0.999)
        before = _snapshot(opt, [a, b])
        with pytest.raises(ValueError, match="beta1"):
            opt.step([np.ones(3), np.ones(2)])
        assert _snapshot(opt, [a, b]) == before
        opt.param_groups[1]["lr"] = None
        with pytest.raises(TypeError, match="lr"):
            opt.step([np.ones(3), np.ones(2)])
        assert _snapshot(opt, [a, b]) == before


# ---------------------------------------------------------------------------- fastopt.ops
def _ops_calls():
    """(name, call(arrays, **overrides), [(argument, bad value, exception)])."""
    def arrays_call(fn, n_state, *positional, **defaults):
        def call(arrays, **over):
            fn(arrays[0], arrays[1], *arrays[2:2 + n_state], *positional, **{**defaults, **over})
        return call

    def multi_call(fn, n_state, *positional, **defaults):
        def call(arrays, **over):
            fn([arrays[0]], [arrays[1]], *[[a] for a in arrays[2:2 + n_state]], *positional,
               **{**defaults, **over})
        return call

    reals = lambda *names: [(n,) + bad for n in names for bad in BAD_REALS]  # noqa: E731
    unit = lambda name, top: [(name, top, ValueError), (name, 1.5, ValueError)]  # noqa: E731
    betas = [("betas", None, TypeError), ("betas", (1.0, 0.9), ValueError),
             ("betas", (0.9, 1.0), ValueError), ("betas", (0.9,), ValueError),
             ("betas", "ab", TypeError)]
    steps = [("step", None, TypeError), ("step", 0, ValueError), ("step", "1", TypeError)]
    adam_like = reals("lr", "eps", "weight_decay") + betas + steps
    o = fo.ops
    return [
        ("ewa_", lambda a, **k: o.ewa_(a[0], a[1], **{"beta": 0.9, **k}),
         [("beta", v, e) for v, e in BAD_REALS] + [("beta", 1.5, ValueError)]),
        ("foreach_ewa_", lambda a, **k: o.foreach_ewa_([a[0]], [a[1]], **{"beta": 0.9, **k}),
         [("beta", None, TypeError), ("beta", -0.5, ValueError)]),
        ("sgd_step_", arrays_call(o.sgd_step_, 1, lr=0.1, momentum=0.9),
         reals("lr", "momentum", "dampening", "weight_decay")),
        ("foreach_sgd_step_", multi_call(o.foreach_sgd_step_, 1, lr=0.1, momentum=0.9),
         reals("lr", "momentum")),
        ("momentum_step_", arrays_call(o.momentum_step_, 1, lr=0.1),
         reals("lr", "beta") + unit("beta", 1.0)),
        ("rmsprop_step_", arrays_call(o.rmsprop_step_, 1, lr=0.1),
         reals("lr", "beta", "eps", "weight_decay", "momentum") + unit("beta", 1.0)),
        ("foreach_rmsprop_step_", multi_call(o.foreach_rmsprop_step_, 1, lr=0.1),
         reals("lr", "beta")),
        ("adagrad_step_", arrays_call(o.adagrad_step_, 1, step=2),
         reals("lr", "lr_decay", "eps", "weight_decay") + steps),
        ("adam_step_", arrays_call(o.adam_step_, 2, step=2), adam_like),
        ("foreach_adam_step_", multi_call(o.foreach_adam_step_, 2, step=2), adam_like),
        ("adamw_step_", arrays_call(o.adamw_step_, 2, step=2), adam_like),
        ("adadelta_step_", arrays_call(o.adadelta_step_, 2),
         reals("lr", "rho", "eps", "weight_decay") + [("rho", 1.5, ValueError)]),
        ("adamax_step_", arrays_call(o.adamax_step_, 2, step=2), adam_like),
        ("nadam_step_", arrays_call(o.nadam_step_, 2, step=2, mu_product=0.9),
         adam_like + reals("momentum_decay", "mu_product") + [("mu_product", 1.5, ValueError)]),
        ("radam_step_", arrays_call(o.radam_step_, 2, step=2), adam_like),
        ("foreach_radam_step_", multi_call(o.foreach_radam_step_, 2, step=2), adam_like),
    ]


OPS = _ops_calls()


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("name,call,bad", OPS, ids=[c[0] for c in OPS])
def test_ops_refuse_bad_scalars_by_name_and_write_nothing(backend, name, call, bad):
    """Checked before the backend runs: the numpy backend wrote the state arrays before
    raising; numba took lr=None as NaN."""
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(5) for _ in range(4)]
    arrays[2:] = [np.abs(a) for a in arrays[2:]]
    with fo.use_backend(backend):
        call([a.copy() for a in arrays])        # the good call runs
        for key, value, exc in bad:
            work = [a.copy() for a in arrays]
            with pytest.raises(exc, match="beta" if key == "betas" else key):
                call(work, **{key: value})
            for w, a in zip(work, arrays):
                assert w.tobytes() == a.tobytes(), (name, key, value)


# ----------------------------------------------------------------------------- torch parity
# the signatures of /work/shared/API.md (RMSprop and Adagrad also take torch's maximize, as a
# keyword; RMSprop takes beta= as the course's name for alpha)
API = {
    "SGD": "(params, lr=0.001, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, "
           "maximize=False)",
    "Momentum": "(params, lr, beta=0.9)",
    "RMSprop": "(params, lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0.0, momentum=0.0, "
               "centered=False, eps_inside_sqrt=False, *, maximize=False, beta=None)",
    "Adagrad": "(params, lr=0.01, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, "
               "eps=1e-10, *, maximize=False)",
    "Adam": "(params, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, amsgrad=False, "
            "maximize=False, decoupled_weight_decay=False, eps_inside_sqrt=False)",
    "AdamW": "(params, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01, "
             "amsgrad=False, maximize=False)",
    "Adadelta": "(params, lr=1.0, rho=0.9, eps=1e-06, weight_decay=0.0, maximize=False)",
    "Adamax": "(params, lr=0.002, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, "
              "maximize=False)",
    "NAdam": "(params, lr=0.002, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, "
             "momentum_decay=0.004, decoupled_weight_decay=False, maximize=False)",
    "RAdam": "(params, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, "
             "decoupled_weight_decay=False, maximize=False)",
}


@pytest.mark.parametrize("name", sorted(API))
def test_signatures_are_the_api_contract(name):
    # names, kinds and defaults; the type hints are not part of this string
    sig = inspect.signature(getattr(fo, name))
    bare = sig.replace(parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
                       return_annotation=sig.empty)
    assert str(bare) == API[name]


def test_sgd_default_lr_is_torchs():
    p = np.ones(3)
    opt = fo.SGD([p])
    assert opt.param_groups[0]["lr"] == 1e-3
    opt.step([np.ones(3)])
    np.testing.assert_array_equal(p, np.ones(3) - 1e-3)


def test_rmsprop_groups_and_state_dicts_say_alpha_and_beta_is_an_alias():
    by_alpha = fo.RMSprop([np.ones(3)], alpha=0.9)
    by_beta = fo.RMSprop([np.ones(3)], beta=0.9)
    for opt in (by_alpha, by_beta):
        assert opt.param_groups[0]["alpha"] == 0.9 and "beta" not in opt.param_groups[0]
        assert opt.state_dict()["param_groups"][0]["alpha"] == 0.9
    with pytest.raises(TypeError, match="alpha"):
        fo.RMSprop([np.ones(3)], alpha=0.8, beta=0.9)
    # a state dict saved before the rename (key "beta") still loads
    sd = by_alpha.state_dict()
    sd["param_groups"][0]["beta"] = sd["param_groups"][0].pop("alpha")
    sd["param_groups"][0]["beta"] = 0.5
    by_beta.load_state_dict(sd)
    assert by_beta.param_groups[0]["alpha"] == 0.5


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_adam_decoupled_weight_decay_is_adamw(backend):
    with fo.use_backend(backend):
        a, b = _params(), _params()
        opt_a = fo.Adam(a, lr=0.1, weight_decay=0.1, decoupled_weight_decay=True)
        opt_b = fo.AdamW(b, lr=0.1, weight_decay=0.1)
        assert opt_b.param_groups[0]["decoupled_weight_decay"] is True
        for seed in range(3):
            opt_a.step(_grads(seed))
            opt_b.step(_grads(seed))
    assert [p.tobytes() for p in a] == [p.tobytes() for p in b]


# ------------------------------------------------------------------- SGD's first step (5)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_sgd_a_refused_first_step_leaves_no_momentum_buffer(backend):
    """The buffer was an np.empty left in the state (4.7e-310 ...), used by the next step."""
    p = np.ones(4)
    with fo.use_backend(backend):
        opt = fo.SGD([p], lr=0.1, momentum=0.9)
        opt.param_groups[0]["lr"] = None
        with pytest.raises(TypeError, match="lr"):
            opt.step([np.ones(4)])
        assert dict(opt.state) in ({}, {0: {}})
        opt.param_groups[0]["lr"] = 0.1
        opt.step([np.full(4, 0.5)])
    np.testing.assert_array_equal(opt.state[0]["momentum_buffer"], np.full(4, 0.5))
    np.testing.assert_array_equal(p, np.full(4, 1.0 - 0.1 * 0.5))


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("order", ["first-missing", "second-missing"])
def test_sgd_momentum_first_step_is_per_parameter(backend, order):
    """torch: a parameter's buffer starts as its grad on *its* first step. Was a KeyError
    (one order) or a reset of the other parameter's buffer (the other)."""
    lr, mu = 0.1, 0.9
    g = np.full(3, 0.5)
    a, b = np.ones(3), np.ones(3)
    with fo.use_backend(backend):
        opt = fo.SGD([a, b], lr=lr, momentum=mu)
        opt.step([None, g] if order == "first-missing" else [g, None])
        opt.step([g, g])
        opt.step([g, g])
    # the parameter that stepped three times: buffers g, (1 + mu) g, (1 + mu + mu^2) g
    three = 1.0 - lr * 0.5 * (1 + (1 + mu) + (1 + mu + mu * mu))
    two = 1.0 - lr * 0.5 * (1 + (1 + mu))
    full, late = (b, a) if order == "first-missing" else (a, b)
    np.testing.assert_allclose(full, three, rtol=1e-15)
    np.testing.assert_allclose(late, two, rtol=1e-15)


# ------------------------------------------------------------------ state is the truth (7)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("arena", [False, True], ids=["arrays", "arena"])
def test_arrays_assigned_into_state_are_the_state_from_then_on(backend, name, kwargs, arena):
    """opt.state[i][key] = new: later steps update ``new`` in place (they kept updating the
    old array through a cached list, or the arena's flat copy)."""
    def make():
        if not arena:
            return _params(), None
        ar = fo.ParameterArena(np.float64, 64)
        ar.add("W", (3, 2), init=_params()[0])
        ar.add("b", (4,), init=np.arange(4))
        return ar.params, ar

    with fo.use_backend(backend):
        (ours, ar1), (twin, ar2) = make(), make()
        opt, ref = getattr(fo, name)(ours, **kwargs), getattr(fo, name)(twin, **kwargs)
        if arena:
            ours, twin = list(ours.values()), list(twin.values())

        def step_both(seed):
            if arena:
                for ar in (ar1, ar2):
                    for k, g in zip(("W", "b"), _grads(seed)):
                        ar.grads[k] = g
                opt.step(ar1.grads)
                ref.step(ar2.grads)
            else:
                opt.step([g.astype(p.dtype) for g, p in zip(_grads(seed), ours)])
                ref.step([g.astype(p.dtype) for g, p in zip(_grads(seed), twin)])

        step_both(0)
        step_both(1)
        new = {}
        for i, s in opt.state.items():
            for key, value in list(s.items()):
                if isinstance(value, np.ndarray) and key not in ("step", "mu_product"):
                    new[i, key] = s[key] = value.copy()
        for seed in range(2, 5):
            step_both(seed)
    for (i, key), a in new.items():
        assert opt.state[i][key] is a
        assert a.tobytes() == ref.state[i][key].tobytes(), (i, key)
    assert [p.tobytes() for p in ours] == [p.tobytes() for p in twin]


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_bad_array_assigned_into_state_is_refused_by_name_and_changes_nothing(backend):
    params = _params()
    with fo.use_backend(backend):
        opt = fo.Adam(params, lr=0.1)
        opt.step(_grads())
        before = _snapshot(opt, params)
        for bad, exc in [(np.zeros(5, np.float32), ValueError), (np.zeros(4), TypeError),
                         ([0.0] * 4, TypeError)]:
            opt.state[1]["exp_avg"] = bad
            with pytest.raises(exc, match=r"state\[1\].*exp_avg"):
                opt.step(_grads())
            assert [p.tobytes() for p in params] == before[0]
        del opt.state[1]["exp_avg"]
        with pytest.raises(ValueError, match="exp_avg"):
            opt.step(_grads())
        opt.state[1] = {"step": 0, "exp_avg": np.zeros(4, np.float32),
                        "exp_avg_sq": np.zeros(4, np.float32)}
        opt.step(_grads())              # a fresh state dict restarts that parameter
    assert opt.state[1]["step"] == 1 and opt.state[0]["step"] == 2


@pytest.mark.parametrize("arena", [False, True], ids=["arrays", "arena"])
def test_step_is_a_read_only_0d_array_and_assigning_it_sets_the_count(backend, arena):
    """``step`` is a 0-d int64 view of the group's counter (so one NumPy operation advances
    every parameter's): an assigned number or array sets the count and the kernel uses it
    (bias correction at step 4, against a twin stepped four times); writing into the view is
    refused rather than silently desynchronising the group."""
    with fo.use_backend(backend):
        ar, opt = _arena_setup("Adam", dict(lr=0.1))
        ar2, twin = _arena_setup("Adam", dict(lr=0.1))
        views = list(ar.params.values())
        if not arena:               # the same parameters as a list: the multi-tensor path
            opt = fo.Adam(views, lr=0.1)

        def step(seed):
            if arena:
                _arena_steps(ar, opt, [seed])
            else:
                opt.step([g.astype(np.float32) for g in _grads(seed)])
        step(0)
        _arena_steps(ar2, twin, [0, 1, 2])
        s = opt.state[1]
        assert s["step"].shape == () and s["step"].dtype == np.int64 and s["step"] == 1
        with pytest.raises(ValueError, match="read-only"):
            s["step"][()] = 7
        ar.flat_params[...] = ar2.flat_params        # the twin's parameters and moments
        for i in opt.state:
            for key in ("exp_avg", "exp_avg_sq"):
                opt.state[i][key][...] = twin.state[i][key]
            opt.state[i]["step"] = np.array(3.0, np.float32)     # as torch saves it
        step(3)
        _arena_steps(ar2, twin, [3])
        assert ar.flat_params.tobytes() == ar2.flat_params.tobytes()
        assert s["step"] == 4 and s["step"].dtype == np.int64


def test_one_step_advances_every_count_of_an_arena_group_at_once(backend):
    """The arena path writes no per-parameter step: the counts are views of one array."""
    with fo.use_backend(backend):
        ar = fo.ParameterArena(np.float64, 1000)
        for k in range(50):
            ar.add(f"W{k}", (2, 3), init=k)
        opt = fo.NAdam(ar.params)
        kept = opt.state
        for _ in range(3):
            opt.step(ar.grads)
        assert {int(s["step"]) for s in kept.values()} == {3} and len(kept) == 50
        assert len({float(s["mu_product"]) for s in kept.values()}) == 1


# ------------------------------------------------------------------- load_state_dict (11)
def _corruptions():
    """(description, change to a state dict of Adam over two parameters, exception)."""
    def drop(sd):
        del sd["state"][0]["exp_avg"]

    def rename(sd):
        sd["state"][0]["exp_avg2"] = sd["state"][0].pop("exp_avg")

    def step(value):
        return lambda sd: sd["state"][0].__setitem__("step", value)

    def array(value):
        return lambda sd: sd["state"][1].__setitem__("exp_avg_sq", value)

    return [
        ("missing exp_avg", drop, ValueError), ("renamed exp_avg", rename, ValueError),
        ("negative step", step(-1), ValueError), ("step 0", step(0), ValueError),
        ("NaN step", step(math.nan), ValueError), ("fractional step", step(1.5), ValueError),
        ("step None", step(None), TypeError), ("step str", step("2"), TypeError),
        ("wrong shape", array(np.zeros(5)), ValueError),
        ("integer array", array(np.zeros(4, np.int64)), TypeError),
        ("list", array([0.0] * 4), TypeError),
        ("unknown parameter", lambda sd: sd["state"].__setitem__(7, {}), ValueError),
        ("state not a dict", lambda sd: sd["state"].__setitem__(1, [1]), TypeError),
        ("extra group", lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])),
         ValueError),
        ("too many params", lambda sd: sd["param_groups"][0]["params"].append(2), ValueError),
        ("a parameter twice", lambda sd: sd["param_groups"][0].__setitem__("params", [0, 0]),
         ValueError),
        ("bad betas", lambda sd: sd["param_groups"][0].__setitem__("betas", (1.0, 0.9)),
         ValueError),
        ("lr None", lambda sd: sd["param_groups"][0].__setitem__("lr", None), TypeError),
        ("no state key", lambda sd: sd.pop("state"), ValueError),
    ]


@pytest.mark.parametrize("what,change,exc", _corruptions(), ids=[c[0] for c in _corruptions()])
def test_load_state_dict_refuses_what_would_break_a_step_and_changes_nothing(what, change,
                                                                           exc):
    params = _params()
    opt = fo.Adam(params, lr=0.1)
    opt.step(_grads())
    sd = opt.state_dict()
    opt.step(_grads(2))
    before = _snapshot(opt, params)
    change(sd)
    with pytest.raises(exc):
        opt.load_state_dict(sd)
    assert _snapshot(opt, params) == before
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["betas"] == (0.9, 0.999)


def test_load_state_dict_takes_torchs_scalars_and_casts_float_arrays():
    """torch saves step and mu_product as 0-d tensors (0-d arrays once converted), and state
    in the tensor's dtype (cast to the parameter's, as torch does)."""
    p = np.ones(3, np.float32)
    opt = fo.NAdam([p])
    opt.load_state_dict({"state": {0: {"step": np.array(3.0, np.float32),
                                       "mu_product": np.array(0.5, np.float32),
                                       "exp_avg": np.zeros(3), "exp_avg_sq": np.zeros(3)}},
                         "param_groups": [dict(opt.state_dict()["param_groups"][0])]})
    s = opt.state[0]
    assert s["step"] == 3 and s["step"].dtype == np.int64 and s["step"].shape == ()
    assert s["mu_product"] == 0.5 and s["mu_product"].dtype == np.float32
    assert s["exp_avg"].dtype == np.float32


# ------------------------------------------------------------- arena: copies, read-only (10)
def _arena_setup(name, kwargs, dtype=np.float32):
    ar = fo.ParameterArena(dtype, 64)
    ar.add("W", (3, 2), init=_params()[0])
    ar.add("b", (4,), init=np.arange(4))
    return ar, getattr(fo, name)(ar.params, **kwargs)


def _arena_steps(ar, opt, seeds):
    for seed in seeds:
        for key, g in zip(("dW", "db"), _grads(seed)):
            ar.grads[key] = g
        opt.step(ar.grads)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=CONFIG_IDS)
def test_an_arena_and_its_optimizer_survive_pickle_and_deepcopy(backend, name, kwargs):
    """Was KeyError: 'W' (the grad dict's __setitem__ ran before the views existed). The copy's
    parameters are views of the copy's arena (one kernel call still), and it resumes on the
    uninterrupted trajectory bit for bit."""
    import copy
    with fo.use_backend(backend):
        ar, opt = _arena_setup(name, kwargs)
        _arena_steps(ar, opt, range(3))
        copies = [pickle.loads(pickle.dumps((ar, opt))), copy.deepcopy((ar, opt))]
        _arena_steps(ar, opt, range(3, 6))
        for ar2, opt2 in copies:
            assert opt2.param_groups[0]["params"][0] is ar2.params["W"]
            assert np.shares_memory(ar2.params["W"], ar2.flat_params)
            _arena_steps(ar2, opt2, range(3, 6))
            assert ar2.flat_params.tobytes() == ar.flat_params.tobytes()
            assert pickle.dumps(opt2.state_dict()) == pickle.dumps(opt.state_dict())


def test_an_optimizer_over_plain_arrays_survives_pickle():
    params = _params()
    opt = fo.NAdam(params)
    opt.step(_grads())
    params2, opt2 = pickle.loads(pickle.dumps((params, opt)))
    assert opt2.param_groups[0]["params"][1] is params2[1]
    for seed in (1, 2):
        opt.step(_grads(seed))
        opt2.step(_grads(seed))
    assert [p.tobytes() for p in params] == [p.tobytes() for p in params2]


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("by_name", [True, False], ids=["dict", "list"])
def test_the_arena_path_refuses_a_parameter_made_read_only(backend, by_name):
    """It stepped the flat buffer, writing through the read-only view."""
    with fo.use_backend(backend):
        ar = fo.ParameterArena(np.float32, 64)
        ar.add("W", (3, 2), init=1.0)
        ar.add("b", (4,), init=1.0)
        opt = fo.Adam(ar.params if by_name else list(ar.params.values()), lr=0.1)
        _arena_steps(ar, opt, [0])
        ar.params["b"].flags.writeable = False
        before = _snapshot(opt, [ar.flat_params])
        with pytest.raises(ValueError, match="read-only"):
            _arena_steps(ar, opt, [1])
        assert _snapshot(opt, [ar.flat_params]) == before


# ------------------------------------------------------- state dicts through torch and back
TORCH_CONFIGS = [(n, k) for n, k in CONFIGS if n != "Momentum"] + [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("Adagrad", dict(lr=0.1, initial_accumulator_value=0.1, weight_decay=0.1)),
    ("NAdam", dict(weight_decay=0.1, decoupled_weight_decay=True)),
    ("RAdam", dict(weight_decay=0.1, decoupled_weight_decay=True)),
]


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("name,kwargs", TORCH_CONFIGS,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(TORCH_CONFIGS)])
def test_state_dict_round_trip_through_torch(backend, name, kwargs):
    """fastopt -> torch.optim -> fastopt: each side loads the other's state dict (arrays <->
    tensors) and both step on to the same values."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    shapes = [(4, 3), (3,), ()]

    def grads():
        return [rng.standard_normal(s) for s in shapes]

    def to_torch(sd):
        state = {}
        for i, s in sd["state"].items():
            state[i] = {k: torch.tensor(float(v)) if k == "step"
                        else torch.tensor(v, dtype=torch.float32) if k == "mu_product"
                        else torch.from_numpy(v.copy()) for k, v in s.items()}
        return {"state": state, "param_groups": [dict(g) for g in sd["param_groups"]]}

    def to_numpy(sd):
        state = {i: {k: v.numpy().copy() for k, v in s.items()} for i, s in sd["state"].items()}
        return {"state": state, "param_groups": [dict(g) for g in sd["param_groups"]]}

    def close(ours, theirs):
        for a, t in zip(ours, theirs):
            # float64; the kernels fold a few scalars differently (1/sqrt(bc2), ...): ulps
            np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-12, atol=1e-14)

    with fo.use_backend(backend):
        ours = [rng.standard_normal(s) for s in shapes]
        opt = getattr(fo, name)(ours, **kwargs)
        for _ in range(3):
            opt.step(grads())
        theirs = [torch.tensor(p.copy(), requires_grad=True) for p in ours]
        ref = getattr(torch.optim, name)(theirs, **kwargs)
        ref.load_state_dict(to_torch(opt.state_dict()))
        for s in ref.state.values():
            if "mu_product" in s:   # load_state_dict casts it to the parameter's dtype; a
                s["mu_product"] = s["mu_product"].float()   # torch run keeps it in float32

        def both(opt, ours):
            for _ in range(3):
                g = grads()
                opt.step(g)
                for t, gi in zip(theirs, g):
                    t.grad = torch.from_numpy(gi.copy())
                ref.step()
            close(ours, theirs)

        both(opt, ours)
        back = [t.detach().numpy().copy() for t in theirs]
        opt2 = getattr(fo, name)(back, **kwargs)
        opt2.load_state_dict(to_numpy(ref.state_dict()))
        assert sorted(opt2.state[0]) == sorted(opt.state[0])
        both(opt2, back)
