"""The optimizer classes: their structure (params as dicts, lists, groups; grads by name
or position), torch.optim's signatures, formulas and trajectories (against torch, or
torch's code transcribed where torch is absent; Lion against optax), state as the truth,
and state dicts (layout, pickle, npz, to torch and back). Expected values are computed
by hand, by torch or optax, or by formulas written out here, never by fastopt."""
import contextlib
import copy
import inspect
import os
import pathlib
import pickle
import re
import signal
import subprocess
import sys
import time
import types
from fractions import Fraction

import numpy as np
import pytest

import fastopt as fo
from conftest import (COMPILED, GRID_BACKENDS, SIGINT_SOON, needs_torch, optim_db_params,
                      sweep_interrupts, torch)
from kernel_specs import same_bits
from optim_specs import (CONFIGS, CONFIG_IDS, VARIANTS, VARIANT_IDS, VARIANT_STEPS, course_params,
                         opt_snapshot, random_arrays, two_grads, two_params)


# ----------------------------------------------------------------------------- structure
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_course_dict_with_d_prefixed_grads_and_extra_keys(backend):
    params = course_params()
    before = {k: v.copy() for k, v in params.items()}
    grads = {"d" + k: np.ones_like(v) for k, v in params.items()}
    grads["dA1"] = np.zeros(3)                      # the course's caches ride along: ignored
    with fo.use_backend(backend):
        fo.SGD(params, lr=0.1).step(grads)
    for k in params:
        np.testing.assert_array_equal(params[k], before[k] - 0.1)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_parameters_named_by_other_keys_than_str_take_grads_by_those_keys(backend):
    """A params dict keyed by ints or tuples (not names): a grads dict with an extra key,
    or missing a grad, raised 'can only concatenate str (not "int") to str' (the look-up of
    the course's 'd' + name) or an AttributeError (str methods on the keys). Such a key is
    matched as it is; a missing grad is the ValueError naming it."""
    for keys in ([0, 1], [("layer", 0), ("layer", 1)]):
        params = dict(zip(keys, [np.ones(3), np.ones(2)]))
        with fo.use_backend(backend):
            opt = fo.SGD(params, lr=0.5)
            opt.step({keys[0]: np.ones(3), keys[1]: np.ones(2), "dA1": np.zeros(4)})
            np.testing.assert_array_equal(params[keys[0]], 0.5)
            with pytest.raises(ValueError, match=re.escape(f"no entry for parameter {keys[1]!r}")):
                opt.step({keys[0]: np.ones(3)})
        np.testing.assert_array_equal(params[keys[0]], 0.5)     # the refused step wrote nothing


def test_a_grads_dict_gives_no_parameter_another_parameters_grad():
    """Grads are matched by name or "d" + name: with parameters named 'W' and 'dW',
    step({"dW": g}) gave g to both (W fell back to the key "dW", which is dW's own), and one
    name in two groups took one grad for both. Now W's missing grad is the ValueError naming
    it, with nothing written, and a name already in another group is refused where the group
    is made (a refused add_param_group adds nothing)."""
    w, dw = np.ones(3), np.ones(3)
    opt = fo.SGD({"W": w, "dW": dw}, lr=0.5)
    with pytest.raises(ValueError, match=r"no entry for parameter 'W' \(expected key 'W'; "
                                         r"'dW' is another parameter's name, so grads\['dW'\] "
                                         r"is that parameter's grad\)"):
        opt.step({"dW": np.ones(3)})
    np.testing.assert_array_equal(w, 1.0)
    np.testing.assert_array_equal(dw, 1.0)
    opt.step({"W": np.ones(3), "dW": np.full(3, 2.0)})      # each its own, by name
    np.testing.assert_array_equal(w, 0.5)
    np.testing.assert_array_equal(dw, 0.0)
    with pytest.raises(ValueError, match=r"parameter name 'W' is in two param groups"):
        fo.SGD([{"params": {"W": np.ones(3)}}, {"params": {"W": np.ones(2)}}], lr=0.1)
    opt = fo.SGD({"W": np.ones(3), "b": np.ones(1)}, lr=0.1)
    with pytest.raises(ValueError, match=r"parameter name 'b' is in two param groups"):
        opt.add_param_group({"params": {"b": np.ones(2)}})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": {"W2": np.ones(2), 7: np.ones(2)}})
    opt.step({"dW": np.ones(3), "db": np.ones(1), "dW2": np.ones(2), 7: np.ones(2)})


def test_grads_by_name_and_by_position_give_the_same_result():
    a, b = course_params(), course_params()
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


def test_lr_read_as_a_list_sets_back_one_per_group():
    opt = fo.SGD([{"params": [np.ones(2)]}, {"params": [np.ones(2)], "lr": 0.01}], lr=0.1)
    saved = opt.lr
    opt.lr = 0.5                    # a warm-up, say
    assert opt.lr == 0.5
    opt.lr = saved
    assert opt.lr == [0.1, 0.01]
    opt.lr = (0.3, 0.2)
    assert [g["lr"] for g in opt.param_groups] == [0.3, 0.2]
    # a wrong length or a bad entry changes no group's lr, and names what is wrong
    for bad, error, words in (([0.1], ValueError, "1 learning rates for 2 param groups"),
                              ([0.1, -1.0], ValueError, "lr[1] (param group 1)"),
                              ([None, 0.1], TypeError, "lr[0] (param group 0)")):
        with pytest.raises(error, match=re.escape(words)):
            opt.lr = bad
        assert [g["lr"] for g in opt.param_groups] == [0.3, 0.2]


@pytest.mark.parametrize("name,kwargs,edits", [
    ("Adam", dict(lr=0.01), [("lr", 0.05), ("betas", (0.8, 0.99)), ("amsgrad", True)]),
    ("SGD", dict(lr=0.1, momentum=0.9), [("lr", 0.3), ("nesterov", True), ("momentum", 0.5)]),
    ("RMSprop", dict(lr=0.01), [("centered", True), ("alpha", 0.9), ("momentum", 0.5)]),
])
def test_one_group_sees_every_change_between_steps(name, kwargs, edits):
    """One group stepped with a list of grads takes a short path once its plan is made; the
    same optimizer stepped with a tuple takes the general one. Group edits, state arrays and
    step counts assigned between steps must reach both alike (the same bits)."""
    rng = np.random.default_rng(5)
    shapes = [(3, 4), (5,), (2, 1)]
    start = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(12)]
    out = []
    for as_list in (True, False):
        params = [a.copy() for a in start]
        opt = getattr(fo, name)(params, **kwargs)
        edit = iter(edits)
        for t, g in enumerate(grads):
            opt.step(list(g) if as_list else tuple(g))
            if t % 3 == 1:
                key, value = next(edit, (None, None))
                if key is not None:
                    opt.param_groups[0][key] = value
            if t == 6:      # a state array assigned, and a count (as torch stores it)
                key = next(k for k, v in opt.state[0].items() if isinstance(v, np.ndarray)
                           and v.ndim)
                opt.state[0][key] = opt.state[0][key] * 0.5
                if "step" in opt.state[1]:
                    opt.state[1]["step"] = np.float32(opt.state[1]["step"] + 3)
        out.append([p.tobytes() for p in params])
    assert out[0] == out[1]


def test_in_place_update_reaches_views_and_non_contiguous_params():
    base = np.ones((6, 4))
    view = base[::2, 1:3]
    opt = fo.Momentum([view], lr=1.0, beta=0.5)
    opt.step([np.ones_like(view)])
    np.testing.assert_allclose(base[::2, 1:3], 0.5)
    np.testing.assert_allclose(base[1::2], 1.0)
    assert np.shares_memory(opt.param_groups[0]["params"][0], base)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_grads_missing_for_some_params_skip_them_and_keep_the_rest_in_step(backend):
    rng = np.random.default_rng(3)
    ps = [rng.standard_normal(6) for _ in range(3)]
    before = [p.copy() for p in ps]
    singles = [p.copy() for p in ps]
    with fo.use_backend(backend):
        opt = fo.Adam(ps, lr=0.1)
        ref = [fo.Adam([p], lr=0.1) for p in singles]
        schedule = [[0, 1, 2], [0, 1, 2], [0, 2], [0, 1, 2]]   # param 1 sits out step 3
        for live in schedule:
            gs = [rng.standard_normal(6) for _ in ps]
            opt.step([g if k in live else None for k, g in enumerate(gs)])
            for k in live:
                ref[k].step([gs[k]])
    for a, b in zip(ps, singles):
        assert a.tobytes() == b.tobytes()
    assert opt.state[1]["step"] == 3 and opt.state[0]["step"] == 4
    assert not np.array_equal(ps[1], before[1])


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_parameter_without_a_grad_sits_the_step_out(backend, name, kwargs):
    """As torch: its state (step, NAdam's mu_product) does not advance, so it later steps
    as an optimizer of its own would."""
    rng = np.random.default_rng(13)
    a0, b0 = rng.standard_normal((3, 2)), rng.standard_normal(4)
    ga = [rng.standard_normal((3, 2)) for _ in range(9)]
    gb = [rng.standard_normal(4) for _ in range(9)]
    a, b = a0.copy(), b0.copy()
    a_alone, b_alone = a0.copy(), b0.copy()
    with fo.use_backend(backend):
        opt = getattr(fo, name)([a, b], **kwargs)
        opt_a = getattr(fo, name)([a_alone], **kwargs)
        opt_b = getattr(fo, name)([b_alone], **kwargs)
        for t in range(9):
            skip_b = t in (0, 1, 4)
            opt.step([ga[t], None if skip_b else gb[t]])
            opt_a.step([ga[t]])
            if not skip_b:
                opt_b.step([gb[t]])
    assert a.tobytes() == a_alone.tobytes() and b.tobytes() == b_alone.tobytes()
    assert opt.state[1]["step"] == 6


@pytest.mark.parametrize("name", ["Adadelta", "Adamax", "NAdam", "RAdam"])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_course_dicts_and_param_groups(backend, name):
    rng = np.random.default_rng(14)
    params = {"W1": rng.standard_normal((4, 3)), "b1": np.zeros((4, 1)),
              "W2": rng.standard_normal((1, 4)), "b2": np.zeros((1, 1))}
    as_list = [v.copy() for v in params.values()]
    grouped = [v.copy() for v in params.values()]
    with fo.use_backend(backend):
        opt = getattr(fo, name)(params, lr=0.05)
        opt_list = getattr(fo, name)(as_list, lr=0.05)
        opt_groups = getattr(fo, name)([{"params": grouped[:2]},
                                        {"params": grouped[2:], "lr": 0.01}], lr=0.05)
        for _ in range(7):
            grads = {"d" + k: rng.standard_normal(v.shape) for k, v in params.items()}
            opt.step(grads)
            opt_list.step(list(grads.values()))
            opt_groups.step(list(grads.values()))
        assert opt.lr == 0.05 and opt_groups.lr == [0.05, 0.01]
    for (k, v), w in zip(params.items(), as_list):
        assert v.tobytes() == w.tobytes(), k
    assert grouped[0].tobytes() == as_list[0].tobytes()      # same lr: same trajectory
    assert not np.array_equal(grouped[2], as_list[2])        # smaller lr: elsewhere


# ---------------------------------------------------------- torch's signatures and rules
# the signatures of /work/shared/API.md (RMSprop and Adagrad also take torch's maximize, as a
# keyword; RMSprop takes beta= as the course's name for alpha). An argument is positional only
# where torch's positional argument there is the same (see the test after)
API = {
    "SGD": "(params, lr=0.001, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, "
           "maximize=False)",
    "Momentum": "(params, lr, beta=0.9)",
    "RMSprop": "(params, lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0.0, momentum=0.0, "
               "centered=False, *, eps_inside_sqrt=False, maximize=False, beta=None)",
    "Adagrad": "(params, lr=0.01, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, "
               "eps=1e-10, *, maximize=False)",
    "Adam": "(params, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, amsgrad=False, "
            "maximize=False, decoupled_weight_decay=False, eps_inside_sqrt=False)",
    "AdamW": "(params, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01, "
             "amsgrad=False, maximize=False)",
    "Adadelta": "(params, lr=1.0, rho=0.9, eps=1e-06, weight_decay=0.0, *, maximize=False)",
    "Adamax": "(params, lr=0.002, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, *, "
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


# a value of the type torch's positional arguments take
TORCH_POSITIONAL = {"weight_decay": 1e-4, "nesterov": True, "foreach": True, "capturable": True,
                    "maximize": True, "differentiable": True}


@needs_torch
@pytest.mark.parametrize("name", sorted(set(API) - {"Momentum"}))
def test_torchs_positional_arguments_mean_the_same_or_raise(name):
    """Code written for torch.optim passes some arguments by position: each means here what
    it means there, or raises. fo.Adadelta and fo.Adamax took torch's fifth positional
    argument, foreach (an implementation switch), as maximize, and fo.RMSprop its eighth,
    capturable, as eps_inside_sqrt: ``Adadelta(params, 1.0, 0.9, 1e-6, 0.0, True)`` ascended.
    (fo.SGD's nesterov and weight_decay are torch's the other way round: each refuses the
    other's type.)"""
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    theirs = [p for p in inspect.signature(getattr(torch.optim, name)).parameters.values()
              if p.kind is positional][1:]
    ours = [p.name for p in inspect.signature(getattr(fo, name)).parameters.values()
            if p.kind is positional][1:]
    for k, p in enumerate(theirs):
        if k < len(ours) and ours[k] == p.name:
            continue
        args = [q.default for q in theirs[:k]] + [TORCH_POSITIONAL[p.name]]
        with pytest.raises(TypeError):
            getattr(fo, name)([np.ones(3)], *args)


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
def test_rmsprop_beta_set_on_a_group_is_its_alpha(backend):
    """The course's name assigned to a group after it was made was kept as an unknown key and
    ignored (the steps went on with the old alpha, and state_dict() saved both): it is the
    group's alpha as it is assigned, as in the constructor and add_param_group (so a state
    dict taken before the next step, or a later alpha, or a load, see one value); one out of
    its range is refused there, by name, changing nothing."""
    with fo.use_backend(backend):
        a, b = np.ones(3), np.ones(3)
        by_beta, by_alpha = fo.RMSprop([a], lr=0.01, beta=0.5), fo.RMSprop([b], lr=0.01, beta=0.5)
        by_beta.step([np.ones(3)])
        by_alpha.step([np.ones(3)])
        by_beta.param_groups[0]["beta"] = 0.1
        by_alpha.param_groups[0]["alpha"] = 0.1
        group = by_beta.param_groups[0]
        assert group["alpha"] == group["beta"] == 0.1 and "beta" not in group
        assert "beta" not in by_beta.state_dict()["param_groups"][0]
        by_beta.step([np.full(3, 2.0)])
        by_alpha.step([np.full(3, 2.0)])
        assert a.tobytes() == b.tobytes()
        with pytest.raises(ValueError, match=re.escape("Invalid beta: 1.5 (must be in [0, 1))")):
            group["beta"] = 1.5
        assert group["alpha"] == 0.1
        group["beta"] = 0.3
        group["alpha"] = 0.2                    # (the later one holds)
        assert group["alpha"] == 0.2
        # update() and |= check it before they set anything, and take one of the two
        for bad, error in (({"lr": 0.5, "beta": 1.5}, ValueError),
                           ({"lr": 0.5, "alpha": 0.4, "beta": 0.4}, TypeError)):
            with pytest.raises(error, match="beta"):
                group.update(bad)
            with pytest.raises(error, match="beta"):
                group |= bad
            assert group["lr"] == 0.01 and group["alpha"] == 0.2
        group.update(beta=0.25)
        assert group["alpha"] == 0.25 and "beta" not in group
    # a beta in defaults does not override an alpha given to add_param_group
    opt = fo.RMSprop([np.ones(3)], lr=0.01)
    opt.defaults["beta"] = 0.7
    opt.add_param_group({"params": [np.ones(2)], "alpha": 0.25})
    assert opt.param_groups[1]["alpha"] == 0.25
    # nor one kept through a copy and a pickle, or pickled before groups took beta so (whose
    # beta set by hand beside alpha its steps did not use: dropped)
    old = copy.deepcopy(by_beta)
    del old.param_groups[0].__dict__["aliases"]
    dict.__setitem__(old.param_groups[0], "beta", 0.9)
    for copied in (copy.deepcopy(by_beta), pickle.loads(pickle.dumps(by_beta)),
                   pickle.loads(pickle.dumps(old))):
        assert "beta" not in copied.param_groups[0]
        alpha = copied.param_groups[0]["alpha"]
        copied.param_groups[0]["beta"] = 0.4
        assert copied.param_groups[0]["alpha"] == 0.4 != alpha
        assert "beta" not in copied.param_groups[0]


def test_rmsprop_beta_is_in_the_unit_interval_as_every_beta():
    """API.md: a beta outside [0, 1) raises ValueError at construction, with the value; the
    course's beta, RMSprop's alias for alpha, was taken in torch's range for alpha (>= 0:
    beta=1.5 made an optimizer whose square_avg grows without bound). alpha keeps torch's
    range, and nothing is added by a group that is refused."""
    for beta in (1.0, 1.5, -0.1, float("inf")):
        message = f"Invalid beta: {beta} (must be in [0, 1))"
        with pytest.raises(ValueError, match=re.escape(message)):
            fo.RMSprop([np.ones(3)], beta=beta)
    opt = fo.RMSprop([np.ones(3)], alpha=1.5)                  # torch.optim.RMSprop takes it
    assert opt.param_groups[0]["alpha"] == 1.5
    with pytest.raises(ValueError, match=re.escape("Invalid beta: 1.0 (must be in [0, 1))")):
        opt.add_param_group({"params": [np.ones(2)], "beta": 1.0})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [np.ones(2)], "alpha": 1.0})
    assert opt.param_groups[1]["alpha"] == 1.0
    # a state dict's beta (saved before the rename) too (probe L: 1.5 loaded as alpha)
    sd = fo.RMSprop([np.ones(3)], alpha=0.5).state_dict()
    sd["param_groups"][0]["beta"] = 1.5
    del sd["param_groups"][0]["alpha"]
    target = fo.RMSprop([np.ones(3)], alpha=0.25)
    with pytest.raises(ValueError, match=re.escape("Invalid beta: 1.5 (must be in [0, 1))")):
        target.load_state_dict(sd)
    assert target.param_groups[0]["alpha"] == 0.25


def test_rmsprop_state_dict_of_a_beta_set_by_hand_resumes_the_same_run():
    """A beta set into a group after construction went into state_dict() beside alpha, and
    loading it overrode the saved alpha, which the steps had used: the resumed run stepped
    with another alpha (probe L). Such a beta is the group's alpha from the next step now
    (probe q9), so that only alpha is saved, and the resumed run steps as the original."""
    p, q = np.ones(3), np.ones(3)
    opt = fo.RMSprop([p], lr=0.1, alpha=0.5)
    opt.param_groups[0]["beta"] = 0.1
    opt.step([np.full(3, 0.5)])
    resumed = fo.RMSprop([q], lr=0.1)
    q[...] = p
    resumed.load_state_dict(opt.state_dict())
    assert resumed.param_groups[0]["alpha"] == opt.param_groups[0]["alpha"] == 0.1
    for g in (np.full(3, 0.25), np.full(3, -1.0)):
        opt.step([g])
        resumed.step([g])
    np.testing.assert_array_equal(q, p)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_rmsprop_param_group_takes_beta_as_alpha(backend):
    """A param group's beta (the course's name for alpha) was kept as an unknown key and
    ignored: the group stepped with the default alpha 0.99. It is now the group's alpha;
    both in one group is the constructor's TypeError, and nothing is added."""
    p, q = np.ones(3), np.ones(2)
    with fo.use_backend(backend):
        opt = fo.RMSprop([{"params": [p], "beta": 0.5}], lr=0.01)
        opt.add_param_group({"params": [q], "beta": 0.25})
        assert [(g["alpha"], "beta" in g) for g in opt.param_groups] == [(0.5, False),
                                                                          (0.25, False)]
        opt.step([np.full(3, 2.0), np.full(2, 2.0)])
    # square_avg = (1 - alpha) * g**2, p -= lr * g / (sqrt(square_avg) + eps)
    np.testing.assert_allclose(p, 1 - 0.01 * 2 / (np.sqrt(0.5 * 4) + 1e-8), rtol=1e-15)
    np.testing.assert_allclose(q, 1 - 0.01 * 2 / (np.sqrt(0.75 * 4) + 1e-8), rtol=1e-15)
    with pytest.raises(TypeError, match="alpha or its alias beta, not both"):
        opt.add_param_group({"params": [np.ones(4)], "beta": 0.5, "alpha": 0.5})
    assert len(opt.param_groups) == 2


def test_rmsprop_refuses_alpha_and_beta_whatever_alpha_is():
    """alpha given beside its alias beta is refused even at alpha's default value (0.99 had
    passed as if not given, and beta silently replaced it); either alone is taken, and the
    default is a plain float in the groups."""
    p = np.ones(3)
    for alpha in (0.99, 0.5):
        with pytest.raises(TypeError, match="alpha or its alias beta, not both"):
            fo.RMSprop([p], alpha=alpha, beta=0.9)
    assert fo.RMSprop([p], alpha=0.99).defaults["alpha"] == 0.99
    assert fo.RMSprop([p], beta=0.9).defaults["alpha"] == 0.9
    default = fo.RMSprop([p]).defaults["alpha"]
    assert type(default) is float and default == 0.99


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_adam_decoupled_weight_decay_is_adamw(backend):
    with fo.use_backend(backend):
        a, b = two_params(), two_params()
        opt_a = fo.Adam(a, lr=0.1, weight_decay=0.1, decoupled_weight_decay=True)
        opt_b = fo.AdamW(b, lr=0.1, weight_decay=0.1)
        assert opt_b.param_groups[0]["decoupled_weight_decay"] is True
        for seed in range(3):
            opt_a.step(two_grads(seed))
            opt_b.step(two_grads(seed))
    assert [p.tobytes() for p in a] == [p.tobytes() for p in b]


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


def test_radam_takes_the_unrectified_step_first():
    """While rho_t <= 5 (the first 5 steps with the default betas) RAdam is SGD with
    bias-corrected momentum: with a constant grad g the first step moves by exactly lr * g."""
    p = np.array([1.0, -2.0])
    fo.RAdam([p], lr=0.1).step([np.array([0.5, 0.25])])
    np.testing.assert_allclose(p, [1.0 - 0.05, -2.0 - 0.025], rtol=1e-15)


# -------------------------------------------------------------------- state is the truth
@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("arena", [False, True], ids=["arrays", "arena"])
def test_arrays_assigned_into_state_are_the_state_from_then_on(backend, name, kwargs, arena):
    """opt.state[i][key] = new: later steps update ``new`` in place (they kept updating the
    old array through a cached list, or the arena's flat copy)."""
    def make():
        if not arena:
            return two_params(), None
        ar = fo.ParameterArena(np.float64, 64)
        ar.add("W", (3, 2), init=two_params()[0])
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
                    for k, g in zip(("W", "b"), two_grads(seed)):
                        ar.grads[k] = g
                opt.step(ar1.grads)
                ref.step(ar2.grads)
            else:
                opt.step([g.astype(p.dtype) for g, p in zip(two_grads(seed), ours)])
                ref.step([g.astype(p.dtype) for g, p in zip(two_grads(seed), twin)])

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


# --------------------------------------------------------------------------- state dicts
def test_state_dict_has_torch_layout_and_survives_npz():
    params = course_params()
    opt = fo.Adam(params, lr=0.1, amsgrad=True)
    for _ in range(3):
        opt.step({k: np.ones_like(v) for k, v in params.items()})
    sd = opt.state_dict()
    assert sorted(sd) == ["param_groups", "state"]
    assert sd["param_groups"][0]["params"] == [0, 1, 2, 3]
    assert sorted(sd["state"][0]) == ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"]
    assert sd["state"][0]["step"] == 3
    # flatten into an npz and back, as a user saving a checkpoint would, the groups too (each
    # entry comes back an array: the params' ids, the flags 0-d bools; the ids and flags were
    # refused)
    flat = {f"{i}/{k}": np.asarray(v) for i, s in sd["state"].items() for k, v in s.items()}
    flat.update({f"group/{k}": np.asarray(v) for k, v in sd["param_groups"][0].items()})
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"fo_sd_{os.getpid()}.npz")
    np.savez(path, **flat)
    loaded = np.load(path)
    state, group = {}, {}
    for key in loaded.files:
        i, name = key.split("/")
        if i == "group":
            group[name] = loaded[key]
        else:
            state.setdefault(int(i), {})[name] = loaded[key]
    os.remove(path)
    twin = {k: v.copy() for k, v in params.items()}
    opt2 = fo.Adam(twin, lr=0.5, amsgrad=False)
    opt2.load_state_dict({"state": state, "param_groups": [group]})
    assert opt2.param_groups[0]["amsgrad"] is True and opt2.param_groups[0]["lr"] == 0.1
    grads = {k: np.full_like(v, 0.3) for k, v in params.items()}
    opt.step(grads)
    opt2.step(grads)
    for k in params:
        assert params[k].tobytes() == twin[k].tobytes()


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


def test_an_optimizer_over_plain_arrays_survives_pickle():
    params = two_params()
    opt = fo.NAdam(params)
    opt.step(two_grads())
    params2, opt2 = pickle.loads(pickle.dumps((params, opt)))
    assert opt2.param_groups[0]["params"][1] is params2[1]
    for seed in (1, 2):
        opt.step(two_grads(seed))
        opt2.step(two_grads(seed))
    assert [p.tobytes() for p in params] == [p.tobytes() for p in params2]



@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_shallow_copy_shares_the_state_and_leaves_the_trajectory_alone(backend):
    """copy.copy is torch.optim's: another handle on the same state. It was made through
    __getstate__/__setstate__, whose rebinding of the shared states' step counts to the
    copy's own made the original's ``state`` and ``state_dict()`` stop counting, and after any
    state change (here another optimizer's load_state_dict) its bias correction restart
    from the count at the copy."""
    import copy
    with fo.use_backend(backend):
        runs = []
        for shallow in (False, True):
            params = two_params()
            opt = fo.Adam(params, lr=0.1)
            for seed in (1, 2):
                opt.step(two_grads(seed))
            twin = copy.copy(opt) if shallow else None
            for seed in (3, 4):
                opt.step(two_grads(seed))
            assert opt.state[0]["step"] == 4 and opt.state_dict()["state"][1]["step"] == 4
            fo.Adam(two_params()).load_state_dict(opt.state_dict())    # any state change
            opt.step(two_grads(5))
            runs.append([p.tobytes() for p in params])
            if shallow:
                assert twin.state is opt.state and twin.param_groups is opt.param_groups
                twin.step(two_grads(6))          # the twin steps the same state
                assert opt.state[1]["step"] == twin.state[1]["step"] == 6
        assert runs[0] == runs[1]

@pytest.mark.parametrize("change", ["add_param_group", "load_state_dict", "state"])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_shallow_copy_stays_a_handle_on_the_optimizer_when_it_changes(backend, change):
    """copy.copy(opt) is another handle on the same optimizer, whichever of the two changes
    it. The copy had its own parameter count, state dict object and flat indices: after
    ``opt.add_param_group`` the twin refused the grads of every parameter ('expected 1'),
    and after ``opt.load_state_dict`` or ``opt.state = ...`` it stepped the state from
    before."""
    import copy
    a, b = np.ones(2), np.full(3, 2.0)
    with fo.use_backend(backend):
        opt = fo.SGD([a], lr=0.5, momentum=0.5)
        opt.step([np.ones(2)])                  # a: 0.5, its buffer 1
        twin = copy.copy(opt)
        grads = [np.ones(2)]
        if change == "add_param_group":
            opt.add_param_group({"params": [b]})
            grads.append(np.ones(3))
        elif change == "load_state_dict":
            opt.load_state_dict({"state": {0: {"momentum_buffer": np.full(2, 3.0)}},
                                 "param_groups": [dict(opt.param_groups[0], params=[0])]})
        else:
            opt.state = {0: {"momentum_buffer": np.full(2, 3.0)}}
        twin.step(grads)
        assert twin.state is opt.state
    if change == "add_param_group":
        assert a.tolist() == [-0.25, -0.25]             # buffer 0.5 * 1 + 1
        assert b.tolist() == [1.5, 1.5, 1.5]            # buffer 1 (its first step)
    else:
        assert a.tolist() == [-0.75, -0.75]             # buffer 0.5 * 3 + 1


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
        assert sorted(opt2.state.get(0, {})) == sorted(opt.state.get(0, {}))   # (SGD-0: none)
        both(opt2, back)


def step_torch(ref, tensors, grad_steps, opt=None):
    """Step the torch optimizer ``ref`` over ``tensors`` on each list of ``grad_steps``, and
    the fastopt optimizer ``opt`` (if given) on the same grads first."""
    for grads in grad_steps:
        if opt is not None:
            opt.step(grads)
        for t, g in zip(tensors, grads):
            t.grad = torch.from_numpy(g.copy())
        ref.step()


def _to_numpy_state_dict(sd):
    """A torch state dict with its tensors turned into NumPy arrays, as a user would save it."""
    state = {i: {k: (v.detach().numpy().copy() if hasattr(v, "numpy") else v)
                 for k, v in s.items()} for i, s in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


@needs_torch
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=VARIANT_IDS)
def test_a_torch_state_dict_loads_and_continues_in_step(name, kwargs):
    rng = np.random.default_rng(1)
    params = random_arrays(rng)
    theirs = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    ref = getattr(torch.optim, name)(theirs, **kwargs)
    step_torch(ref, theirs, [random_arrays(rng) for _ in range(8)])
    ours = [t.detach().numpy().copy() for t in theirs]
    opt = getattr(fo, name)(ours, **kwargs)
    opt.load_state_dict(_to_numpy_state_dict(ref.state_dict()))
    step_torch(ref, theirs, [random_arrays(rng) for _ in range(8)], opt)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_resuming_from_a_pickled_state_dict_is_exact(backend, name, kwargs, dtype):
    rng = np.random.default_rng(2)
    grads = [random_arrays(rng, dtype) for _ in range(12)]
    start = random_arrays(rng, dtype)
    with fo.use_backend(backend):
        straight = [p.copy() for p in start]
        opt = getattr(fo, name)(straight, **kwargs)
        for g in grads:
            opt.step(g)

        first = [p.copy() for p in start]
        opt1 = getattr(fo, name)(first, **kwargs)
        for g in grads[:6]:
            opt1.step(g)
        saved = pickle.loads(pickle.dumps((opt1.state_dict(), first)))
        resumed_params = saved[1]
        opt2 = getattr(fo, name)(resumed_params, **kwargs)
        opt2.load_state_dict(saved[0])
        for g in grads[6:]:
            opt2.step(g)
    for a, b in zip(resumed_params, straight):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_plain_sgd_checks_and_plans_its_group_once(backend, monkeypatch):
    """SGD without momentum keeps an empty state per parameter: a whole one, since all its
    state is optional. It had been taken for none (a state reset), so every step checked and
    planned the group again (22 us of Python a step at 1e5 elements, around a 6 us kernel
    call). Now the first step makes the (empty) states, the second the plan with them, and
    the steps after it take that plan. The result is the formula's."""
    rng = np.random.default_rng(4)
    p = rng.standard_normal(1000).astype(np.float32)
    grads = [rng.standard_normal(1000).astype(np.float32) for _ in range(5)]
    expected = p.copy()
    with fo.use_backend(backend):
        opt = fo.SGD([p], lr=0.1)
        opt.step([grads[0]])
        opt.step([grads[1]])
        checks = []
        check = fo.SGD._check
        monkeypatch.setattr(fo.SGD, "_check",
                            lambda self, group: (checks.append(group), check(self, group))[1])
        for g in grads[2:]:
            opt.step([g])
    assert checks == []
    for g in grads:
        expected -= np.float32(0.1) * g
    np.testing.assert_array_equal(p, expected)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_parameters_by_name_step_with_a_dict_in_one_call(backend, monkeypatch):
    """A lone group of parameters given by name, stepped with the course's dict of grads
    ("d" + name, caches riding along), takes the one-call path a list takes: the grads
    matched by name, no pass through the general path's checks and splits (Adam over six
    small arrays, a step 14.7 -> 5.3 us); the same bits as a list-given optimizer."""
    rng = np.random.default_rng(5)
    params = {"W1": rng.standard_normal((4, 3)), "b1": np.zeros((4, 1)),
              "W2": rng.standard_normal((1, 4)), "b2": np.zeros((1, 1))}
    twins = [p.copy() for p in params.values()]
    steps = [{"d" + k: rng.standard_normal(p.shape) for k, p in params.items()}
             for _ in range(4)]
    with fo.use_backend(backend):
        opt, twin = fo.Adam(params, lr=0.1), fo.Adam(twins, lr=0.1)
        for grads in steps[:2]:
            opt.step(dict(grads, dA1=np.ones(3)))
            twin.step(list(grads.values()))
        general = []
        checked = fo.Adam._checked_plans
        monkeypatch.setattr(fo.Adam, "_checked_plans",
                            lambda self: (general.append(1), checked(self))[1])
        for grads in steps[2:]:
            opt.step(dict(grads, dA1=np.ones(3)))
        monkeypatch.undo()
        for grads in steps[2:]:
            twin.step(list(grads.values()))
    assert general == []
    for a, b in zip(params.values(), twins):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("how", ["list", "dict", "arena"])
def test_another_optimizers_group_put_in_param_groups_is_refused_by_every_path(how):
    """``opt1.param_groups[0] = opt2.param_groups[0]``: step refuses a group it does not hold
    (_sync_groups) and changes nothing. The one-call paths for a list of grads and a dict by
    name had taken the other group's checked plan for their own and stepped opt2's
    parameters with opt1's state and step count (review of the dict path); an arena's grads
    too."""
    def model(seed):
        rng = np.random.default_rng(seed)
        if how == "arena":
            arena = fo.ParameterArena(np.float64)
            arena.add("W1", (3, 4), rng.standard_normal((3, 4)))
            return arena.params, arena.grads
        params = {"W1": rng.standard_normal((3, 4)), "b1": rng.standard_normal((3, 1))}
        if how == "list":
            params = list(params.values())
        return params, None

    (p1, g1), (p2, g2) = model(0), model(1)
    opt1, opt2 = fo.Adam(p1, lr=0.1), fo.Adam(p2, lr=0.1)

    def grads_of(params, arena_grads):
        if arena_grads is not None:
            arena_grads["W1"][...] = 1.0
            return arena_grads
        if isinstance(params, dict):
            return {"d" + k: np.ones_like(v) for k, v in params.items()}
        return [np.ones_like(v) for v in params]

    for _ in range(2):
        opt1.step(grads_of(p1, g1))
        opt2.step(grads_of(p2, g2))
    values = list(p2.values()) if isinstance(p2, dict) else p2
    before = [v.copy() for v in values]
    opt1.param_groups[0] = opt2.param_groups[0]
    with pytest.raises(ValueError, match="not a group this optimizer holds"):
        opt1.step(grads_of(p2, g2))
    for a, b in zip(values, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=VARIANT_IDS)
def test_a_step_count_reset_to_zero_survives_the_state_dict(name, kwargs):
    """``state["step"] = 0`` (accepted, as torch accepts it) is saved by state_dict() and
    loaded back, as torch's load_state_dict loads it: load_state_dict had refused step 0 for
    every optimizer but Adagrad, so an optimizer's own state dict failed to load."""
    rng = np.random.default_rng(3)
    grads = [random_arrays(rng, np.float64) for _ in range(4)]
    params = random_arrays(rng, np.float64)
    opt = getattr(fo, name)(params, **kwargs)
    opt.step(grads[0])
    if "step" not in opt.state[0]:
        pytest.skip(f"{name} keeps no step count")
    for i in opt.state:
        opt.state[i]["step"] = 0
    saved, copies = opt.state_dict(), [p.copy() for p in params]
    assert all(s["step"] == 0 for s in saved["state"].values())
    resumed = getattr(fo, name)(copies, **kwargs)
    resumed.load_state_dict(saved)
    for g in grads[1:]:
        opt.step(g)
        resumed.step(g)
    for a, b in zip(copies, params):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("groups", [1, 2])
def test_a_step_count_at_2_to_the_53_steps_no_further(groups):
    """A count of 2**53, the largest a state may hold, had been stepped to 2**53 + 1, after
    which the optimizer's own state dict no longer loaded; it is refused at the step, before
    any group steps, and a count past it is shown as given (1e+300, not 301 digits)."""
    rng = np.random.default_rng(4)
    params = [rng.standard_normal(3) for _ in range(groups)]
    opt = fo.Adam([{"params": [p]} for p in params], lr=0.1)
    grads = [np.ones(3)] * groups
    opt.step(grads)
    opt.state[groups - 1]["step"] = 2 ** 53          # the last group's
    saved = opt.state_dict()

    def values():       # (the assigned count may come back as a view of the group's counts)
        return [p.tobytes() for p in params] + [
            (i, key, np.asarray(v, np.float64).tobytes())
            for i, state in sorted(opt.state.items()) for key, v in sorted(state.items())]

    before = values()
    with pytest.raises(ValueError, match=r"Invalid step count 9007199254740992: 2\*\*53 is"):
        opt.step(grads)
    assert values() == before
    opt.load_state_dict(saved)                      # (its own state dict loads)
    opt.state[0]["step"] = 1e300
    with pytest.raises(ValueError, match=re.escape(
            "Invalid state[0]['step']: 1e+300 (must be a whole number from 0 to 2**53 = "
            "9007199254740992)")):
        opt.step(grads)


@needs_torch
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=VARIANT_IDS)
def test_our_state_dict_loads_into_torch_and_continues_in_step(name, kwargs):
    rng = np.random.default_rng(10)
    ours = random_arrays(rng)
    opt = getattr(fo, name)(ours, **kwargs)
    for _ in range(8):
        opt.step(random_arrays(rng))
    sd = opt.state_dict()
    theirs = [torch.tensor(p.copy(), requires_grad=True) for p in ours]
    ref = getattr(torch.optim, name)(theirs, **kwargs)
    # step and mu_product go as numbers: torch's load_state_dict casts a 0-d float tensor to
    # the parameter's dtype (mu_product to float64 here, off torch's own float32 trajectory)
    # but turns a number into its float32 scalar tensor
    scalars = opt.scalar_keys()
    ref.load_state_dict({"state": {i: {k: v.item() if k in scalars else torch.from_numpy(v)
                                       for k, v in s.items()}
                                   for i, s in sd["state"].items()},
                         "param_groups": sd["param_groups"]})
    step_torch(ref, theirs, [random_arrays(rng) for _ in range(8)], opt)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=VARIANT_IDS)
def test_state_dict_survives_npz_and_resumes_exactly(name, kwargs, tmp_path):
    rng = np.random.default_rng(11)
    start = random_arrays(rng, np.float32)
    grad_steps = [random_arrays(rng, np.float32) for _ in range(12)]
    straight = [p.copy() for p in start]
    opt = getattr(fo, name)(straight, **kwargs)
    for g in grad_steps:
        opt.step(g)
    first = [p.copy() for p in start]
    opt1 = getattr(fo, name)(first, **kwargs)
    for g in grad_steps[:7]:
        opt1.step(g)
    sd = opt1.state_dict()
    assert sorted(sd["state"][0]) == sorted(
        {"Adadelta": ["square_avg", "acc_delta"], "Adamax": ["exp_avg", "exp_inf"],
         "NAdam": ["exp_avg", "exp_avg_sq", "mu_product"],
         "RAdam": ["exp_avg", "exp_avg_sq"]}[name] + ["step"])
    # a checkpoint as a user would write it: every entry (steps, mu_product too) an array
    flat = {f"{i}/{k}": np.asarray(v) for i, s in sd["state"].items() for k, v in s.items()}
    np.savez(tmp_path / "ckpt.npz", **flat)
    state = {}
    with np.load(tmp_path / "ckpt.npz") as loaded:
        for key in loaded.files:
            i, k = key.split("/")
            state.setdefault(int(i), {})[k] = loaded[key]
    opt2 = getattr(fo, name)(first, **kwargs)
    opt2.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    for g in grad_steps[7:]:
        opt2.step(g)
    for a, b in zip(first, straight):
        assert a.tobytes() == b.tobytes()


# ------------------------------------------ Adadelta, Adamax, NAdam, RAdam against torch
@needs_torch
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_trajectory_matches_torch(backend, name, kwargs):
    rng = np.random.default_rng(0)
    params = random_arrays(rng)
    ours = [p.copy() for p in params]
    theirs = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    with fo.use_backend(backend):
        opt = getattr(fo, name)(ours, **kwargs)
        ref = getattr(torch.optim, name)(theirs, **kwargs)
        step_torch(ref, theirs, [random_arrays(rng) for _ in range(VARIANT_STEPS)], opt)
    for a, b in zip(ours, theirs):
        # float64 throughout: the only differences are the last-bit roundings of a few
        # reordered scalar products (the folded step sizes), amplified by 25 steps
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert sorted(opt.state[0]) == sorted(ref.state_dict()["state"][0])


def _lerp(a, b, w):
    """torch.lerp's two-branch formula (exact at both ends)."""
    return a + w * (b - a) if w < 0.5 else b - (b - a) * (1 - w)


def torch_formula(name, kwargs, params, grad_steps):
    """torch.optim's single-tensor code (torch 2.x: adadelta.py, adamax.py, nadam.py,
    radam.py), transcribed line by line in NumPy float64 so that the optimizers are held to
    torch's formulas even where torch is not installed. NAdam's ``mu_product`` is a float32
    scalar tensor in torch, multiplied in float32."""
    kw = dict(dict(Adadelta=dict(lr=1.0, rho=0.9, eps=1e-6), Adamax=dict(lr=2e-3, eps=1e-8),
                   NAdam=dict(lr=2e-3, eps=1e-8, momentum_decay=4e-3),
                   RAdam=dict(lr=1e-3, eps=1e-8))[name], **kwargs)
    lr, eps, wd = kw["lr"], kw["eps"], kw.get("weight_decay", 0.0)
    beta1, beta2 = kw.get("betas", (0.9, 0.999))
    params = [p.copy() for p in params]
    st = [[np.zeros_like(p), np.zeros_like(p), np.float32(1.0)] for p in params]
    for t, grads in enumerate(grad_steps, start=1):
        for i, (p, grad) in enumerate(zip(params, grads)):
            a, b, mu_product = st[i]
            g = -grad if kw.get("maximize") else grad
            if name == "Adadelta":
                rho = kw["rho"]
                if wd != 0:
                    g = g + wd * p
                a = a * rho + (1 - rho) * g * g
                delta = np.sqrt(b + eps) / np.sqrt(a + eps) * g
                b = b * rho + (1 - rho) * delta * delta
                p += -lr * delta
            elif name == "Adamax":
                if wd != 0:
                    g = g + wd * p
                a = _lerp(a, g, 1 - beta1)
                b = np.maximum(b * beta2, np.abs(g) + eps)
                p += -(lr / (1 - beta1 ** t)) * (a / b)
            else:
                if wd != 0 and kw.get("decoupled_weight_decay"):
                    p *= 1 - lr * wd
                elif wd != 0:
                    g = g + wd * p
                a = _lerp(a, g, 1 - beta1)
                b = b * beta2 + (1 - beta2) * g * g
                bc2 = 1 - beta2 ** t
                if name == "NAdam":
                    md = kw["momentum_decay"]
                    mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * md))
                    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * md))
                    mu_product = np.float32(mu_product * np.float32(mu))
                    denom = np.sqrt(b / bc2) + eps
                    p += (-lr * (1.0 - mu) / (1.0 - float(mu_product))) * (g / denom)
                    p += (-lr * mu_next / (1.0 - float(mu_product) * mu_next)) * (a / denom)
                else:
                    rho_inf = 2 / (1 - beta2) - 1
                    rho_t = rho_inf - 2 * t * beta2 ** t / bc2
                    corrected = a / (1 - beta1 ** t)
                    if rho_t > 5.0:
                        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf
                                / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
                        p -= corrected * lr * (bc2 ** 0.5 / (np.sqrt(b) + eps)) * rect
                    else:
                        p -= corrected * lr
            st[i] = [a, b, mu_product]
    return params


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_trajectory_follows_torchs_formulas(backend, name, kwargs):
    rng = np.random.default_rng(7)
    start = random_arrays(rng)
    grad_steps = [random_arrays(rng) for _ in range(VARIANT_STEPS)]
    ours = [p.copy() for p in start]
    with fo.use_backend(backend):
        opt = getattr(fo, name)(ours, **kwargs)
        for grads in grad_steps:
            opt.step(grads)
    for a, b in zip(ours, torch_formula(name, kwargs, start, grad_steps)):
        # float64; the kernels fold the step sizes into fewer roundings than torch: ulps
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@needs_torch
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=VARIANT_IDS)
def test_the_transcription_of_torchs_formulas_is_torch(name, kwargs):
    rng = np.random.default_rng(8)
    start = random_arrays(rng)
    grad_steps = [random_arrays(rng) for _ in range(VARIANT_STEPS)]
    theirs = [torch.tensor(p.copy(), requires_grad=True) for p in start]
    ref = getattr(torch.optim, name)(theirs, **kwargs)
    step_torch(ref, theirs, grad_steps)
    for a, b in zip(torch_formula(name, kwargs, start, grad_steps), theirs):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-14, atol=1e-16)


@needs_torch
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_nan_and_inf_grads_go_where_torchs_go(backend, name, kwargs):
    rng = np.random.default_rng(9)
    start = [rng.standard_normal(40)]
    grad_steps = [[rng.standard_normal(40)] for _ in range(VARIANT_STEPS)]
    grad_steps[0][0][3], grad_steps[4][0][5] = np.nan, np.inf
    grad_steps[9][0][7], grad_steps[15][0][9] = -np.inf, np.nan
    ours = [start[0].copy()]
    theirs = [torch.tensor(start[0].copy(), requires_grad=True)]
    with fo.use_backend(backend):
        opt = getattr(fo, name)(ours, **kwargs)
        ref = getattr(torch.optim, name)(theirs, **kwargs)
        step_torch(ref, theirs, grad_steps, opt)
    expected = theirs[0].detach().numpy()
    np.testing.assert_array_equal(np.isnan(ours[0]), np.isnan(expected))
    np.testing.assert_allclose(ours[0], expected, rtol=1e-12, atol=1e-14, equal_nan=True)
    for key, value in ref.state[theirs[0]].items():
        if key not in ("step", "mu_product"):
            np.testing.assert_array_equal(np.isnan(opt.state[0][key]), np.isnan(value.numpy()),
                                          err_msg=key)


# -------------------------------------------------------------------- Lion against optax
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
def test_lion_follows_optax_for_twenty_steps(backend, dtype):
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
def test_lion_defaults_are_optax_and_maximize_ascends(backend):
    rng = np.random.default_rng(1)
    p0, g = rng.standard_normal(9), rng.standard_normal(9)
    expected, _ = optax_lion_chain([p0], [[-g]], lr=1e-4, b1=0.9, b2=0.99, weight_decay=1e-3)
    p = p0.copy()
    with fo.use_backend(backend):
        fo.Lion([p], maximize=True).step([g])
    np.testing.assert_array_equal(p, expected[0])


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_lion_nan_and_inf_follow_optax(backend):
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
@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_lion_signs_of_zeros_and_tiny_values_match_the_reference(backend, dtype, weight_decay):
    """np.sign gives +0 for either zero, and the zero's sign reaches the param: -0 - lr * (+0
    + 0 * -0) is -0, -0 - lr * (-0 + 0 * -0) would be +0. Subnormal and tiny momenta keep their
    sign; NaN stays NaN. Bit for bit, twelve elements each side of the vector loop's tail."""
    tiny = np.finfo(dtype).smallest_subnormal
    p = np.array([-0.0, 0.0, -0.0, 0.0, 1.0, -1.0, -0.0, 0.0, 2.0, -0.0, 3.0, -0.0], dtype)
    g = np.array([0.0, -0.0, -0.0, 0.0, tiny, -tiny, 1e-30, -1e-30, np.nan, tiny, -0.0, 0.0],
                 dtype)
    m = np.array([-0.0, 0.0, -0.0, -0.0, 0.0, -0.0, tiny, -tiny, 0.0, -tiny, 0.0, np.nan], dtype)
    p, g, m = (np.concatenate([a] * 3) for a in (p, g, m))    # 36: vectors and a tail
    got, expected = [p.copy(), m.copy()], [p.copy(), m.copy()]
    for arrays, name in ((got, backend), (expected, "numpy")):
        with fo.use_backend(name):
            fo.ops.lion_step_(arrays[0], g, arrays[1], lr=0.1, weight_decay=weight_decay)
    for a, b in zip(got, expected):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_lion_resumes_exactly_from_a_pickled_state_dict(backend, dtype):
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


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("name", ["SGD", "Adam", "Adagrad", "NAdam", "Momentum"])
def test_a_param_group_without_parameters_steps_nothing(backend, name):
    """torch.optim takes ``add_param_group({"params": []})`` (and an empty group among others)
    and its step skips it; here it made the step raise IndexError (the group's plan took the
    first state of none). The other groups step as usual: SGD's first step by hand, and for
    the rest the first-step size Adam's bias correction gives (lr * g / (|g| + eps))."""
    lr, g = 0.1, np.full(3, 2.0)
    first = {"SGD": 1 - lr * 2.0, "Momentum": 1 - lr * 0.1 * 2.0, "NAdam": None,
             "Adam": 1 - lr * 2.0 / (2.0 + 1e-8), "Adagrad": 1 - lr * 2.0 / (2.0 + 1e-10)}
    with fo.use_backend(backend):
        w = np.ones(3)
        opt = getattr(fo, name)([w], lr=lr)
        opt.add_param_group({"params": []})
        opt.step([g])
        if first[name] is not None:
            np.testing.assert_allclose(w, first[name], rtol=1e-12)
        opt.step([g])
        v = np.ones(3)
        opt = getattr(fo, name)([{"params": []}, {"params": [v]}], lr=lr)
        opt.step([g])
        assert opt.state_dict()["param_groups"][0]["params"] == []
        named = getattr(fo, name)({"W1": np.ones(3)}, lr=lr)
        named.add_param_group({"params": {}})
        named.step({"dW1": g})
    assert (w < 1).all() and (v < 1).all() and list(opt.state) == [0]


def test_a_state_dict_is_a_snapshot_of_the_param_groups_too():
    """state_dict() copies the state arrays, and the groups' entries too: a saved dict edited
    (a checkpoint converter renaming ``param_names``) leaves the optimizer as it was, and a
    group edited in place after the save (a ``betas`` list) leaves the saved dict; loading
    copies the saved values in the same way. Before, the lists were shared: renaming a saved
    name broke the optimizer's next step."""
    w = np.ones(3)
    opt = fo.Adam({"W1": w}, lr=0.1, betas=(0.9, 0.999))
    opt.param_groups[0]["betas"] = [0.9, 0.999]        # a list put there by the user
    sd = opt.state_dict()
    sd["param_groups"][0]["param_names"][0] = "renamed"
    opt.param_groups[0]["betas"][0] = 0.5
    assert opt.param_groups[0]["param_names"] == ["W1"]
    assert sd["param_groups"][0]["betas"] == [0.9, 0.999]
    opt.step({"dW1": np.ones(3)})                      # still finds its parameter by name
    np.testing.assert_allclose(w, 1 - 0.1 / (1 + 1e-8), rtol=1e-12)
    other = fo.Adam([np.ones(2)], lr=0.1)
    sd = other.state_dict()
    sd["param_groups"][0]["betas"] = np.array([0.8, 0.9])
    other.load_state_dict(sd)
    sd["param_groups"][0]["betas"][0] = 0.1
    assert other.param_groups[0]["betas"][0] == 0.8


def test_load_state_dict_keeps_a_saved_groups_own_entries_as_torch_does():
    """torch.optim's load_state_dict takes the saved groups whole (a scheduler's
    ``initial_lr``, a user's ``name``); only the hyper-parameters were taken here, the
    other entries dropped (a resumed scheduler then lacked ``initial_lr``)."""
    opt = fo.Adam([{"params": [np.ones(3)], "name": "encoder"}], lr=0.1)
    sd = opt.state_dict()
    sd["param_groups"][0].update(initial_lr=0.1, name="decoder", tags=["a"],
                                 mask=np.array([1.0, 0.0]))
    opt.load_state_dict(sd)
    group = opt.param_groups[0]
    assert (group["initial_lr"], group["name"], group["tags"]) == (0.1, "decoder", ["a"])
    assert type(group["mask"]) is np.ndarray and group["mask"].tolist() == [1.0, 0.0]
    sd["param_groups"][0]["tags"].append("b")       # (copied: the state dict stays apart)
    assert group["tags"] == ["a"]
    if torch is not None:
        t = torch.optim.Adam([{"params": [torch.ones(3)], "name": "encoder"}], lr=0.1)
        t.load_state_dict({"state": {}, "param_groups": [
            {**sd["param_groups"][0], "tags": ["a"]}]})
        assert (t.param_groups[0]["initial_lr"], t.param_groups[0]["name"]) == (0.1, "decoder")


# ------------------------------------------- torch's own optimizer test inputs (optim_db)
OPTIM_DB_NAMES = ["SGD", "RMSprop", "Adagrad", "Adam", "AdamW", "Adadelta", "Adamax", "NAdam",
                  "RAdam"]
# optim_db inputs the NumPy optimizers do not take, by option (none of torch 2.13's CPU inputs
# sets the flags; its "tensor lr" inputs do): torch's GPU and autograd options, and a tensor lr
NOT_TAKEN = {
    "fused": "torch's own fused kernel", "capturable": "CUDA graph capture",
    "differentiable": "autograd through the step", "foreach": "torch's multi-tensor path",
}
# a 0-d, an empty, a 3-d, an F-ordered and a strided (non-contiguous) parameter
DB_SHAPES = [(3, 4), (5,), (), (0,), (17,), (2, 3, 2)]


def _not_taken(kwargs):
    return ([f"{k}=True: {v}" for k, v in NOT_TAKEN.items() if kwargs.get(k)]
            + [f"{k} is a tensor" for k, v in kwargs.items() if torch.is_tensor(v)])


def _db_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    ps = [np.asarray(rng.standard_normal(s)).astype(dtype) for s in DB_SHAPES]
    ps.append(np.asfortranarray(rng.standard_normal((4, 3)).astype(dtype)))
    ps.append(rng.standard_normal((4, 6)).astype(dtype)[:, ::2])
    return ps


def _norm_ulps(actual, expected):
    """max |actual - expected| in units of the spacing of max |expected| (norm-wise ulps: an
    element that crosses zero is held to the scale of the parameters, not to its own)."""
    a = np.concatenate([np.asarray(x, np.float64).ravel() for x in actual])
    b = np.concatenate([np.asarray(x).ravel() for x in expected])
    if b.size == 0:
        return 0.0
    return float(np.abs(a - b.astype(np.float64)).max() / np.spacing(np.abs(b).max()))


def _torch_step(ref, tensors, grads):
    for t, g in zip(tensors, grads):
        t.grad = torch.from_numpy(np.array(g, order="C"))
    ref.step()


def _db_state_to_torch(sd):
    """fastopt's state dict as torch saves its own: tensors, step a float32 0-d tensor, NAdam's
    mu_product a float32 0-d tensor (torch multiplies it in float32)."""
    state = {i: {k: torch.tensor(float(v)) if k == "step"
                 else torch.tensor(float(v), dtype=torch.float32) if k == "mu_product"
                 else torch.from_numpy(np.array(v)) for k, v in s.items()}
             for i, s in sd["state"].items()}
    return {"state": state, "param_groups": copy.deepcopy(sd["param_groups"])}


def _db_state_to_numpy(sd):
    return {"state": {i: {k: v.detach().numpy().copy() for k, v in s.items()}
                      for i, s in sd["state"].items()},
            "param_groups": copy.deepcopy(sd["param_groups"])}


@pytest.mark.parametrize("name,kwargs", optim_db_params(OPTIM_DB_NAMES, _not_taken))
def test_optim_db_trajectories_and_state_dicts_match_torch(backend, name, kwargs, dtype):
    """Every CPU input of torch's optim_db for the nine torch optimizers: 25 steps (10 on the
    numba and NumPy backends, whose element-wise steps are bit-identical to the Cython ones:
    test_backends.py) of random grads over parameters of odd shapes and layouts, against
    torch.optim(foreach=False) in the same dtype, then each side's state dict loaded into the
    other and 5 more steps. Norm-wise within 4 ulps: the one by-design difference is torch's
    fused a + b*c in its CPU kernels (README, Special values), a cancellation of which leaves an
    element near zero its own rounding error; recomputed in float64 from the same state, a step
    differs from torch's only by those roundings (and by torch's float32 sqrt, not always
    correctly rounded: up to 1 ulp below)."""
    steps = 25 if backend == "cython" else 10
    rng = np.random.default_rng(1)
    ours = _db_params(dtype)
    theirs = [torch.tensor(np.array(p), requires_grad=True) for p in ours]
    opt = getattr(fo, name)(ours, **copy.deepcopy(kwargs))
    ref = getattr(torch.optim, name)(theirs, foreach=False, **copy.deepcopy(kwargs))

    def both(opt, ours, ref, theirs, n):
        for _ in range(n):
            g = [rng.standard_normal(p.shape).astype(dtype) for p in ours]
            opt.step(g)
            _torch_step(ref, theirs, g)
        return _norm_ulps(ours, [t.detach().numpy() for t in theirs])

    assert both(opt, ours, ref, theirs, steps) <= 4
    sd, rsd = opt.state_dict(), ref.state_dict()
    assert sorted(sd["state"]) == sorted(rsd["state"])     # (SGD without momentum: none)
    for i, entry in rsd["state"].items():
        assert sorted(sd["state"][i]) == sorted(entry)
        for key in opt.scalar_keys():
            assert float(sd["state"][i][key]) == pytest.approx(float(entry[key]), rel=1e-6)
    for key in next(iter(rsd["state"].values()), ()):     # each state key over all parameters
        if key not in opt.scalar_keys():
            # each step may round once apart (torch's fused a + b*c), and a decaying average
            # forgets that; Adadelta's acc_delta feeds its own increment (delta grows with
            # sqrt(acc_delta)) and carries it at a rate near 1, a random walk: float64 on
            # AVX-512 torch 4, 9, 10 ulps after 10, 25, 40 steps (on ATEN_CPU_CAPABILITY=default,
            # no FMA, within 8)
            bound = max(8, steps / 2) if key == "acc_delta" else 8
            assert _norm_ulps([s[key] for s in sd["state"].values()],
                              [s[key].numpy() for s in rsd["state"].values()]) <= bound, key
    # torch -> fastopt: a fresh optimizer over torch's parameters continues torch's run
    resumed = [t.detach().numpy().copy() for t in theirs]
    opt2 = getattr(fo, name)(resumed, **copy.deepcopy(kwargs))
    opt2.load_state_dict(_db_state_to_numpy(rsd))
    # fastopt -> torch: a fresh torch optimizer over our parameters continues ours
    theirs2 = [torch.tensor(np.array(p), requires_grad=True) for p in ours]
    ref2 = getattr(torch.optim, name)(theirs2, foreach=False, **copy.deepcopy(kwargs))
    ref2.load_state_dict(_db_state_to_torch(sd))
    for s in ref2.state.values():        # load_state_dict casts it to the parameter's dtype;
        if "mu_product" in s:            # torch's own runs keep it in float32
            s["mu_product"] = s["mu_product"].float()
    for _ in range(5):
        g = [rng.standard_normal(p.shape).astype(dtype) for p in ours]
        opt2.step(g)
        _torch_step(ref, theirs, g)
        opt.step(g)
        _torch_step(ref2, theirs2, g)
    assert _norm_ulps(resumed, [t.detach().numpy() for t in theirs]) <= 4
    assert _norm_ulps(ours, [t.detach().numpy() for t in theirs2]) <= 4


# per optimizer: two param groups with different options, and hyper-parameters at the edges of
# their ranges (betas (0, 0), momentum 0, eps 0, lr 0). Adagrad's second group gives its own
# initial_accumulator_value, which torch ignores (every "sum" starts at the constructor's value).
EDGE_GROUPS = {
    "SGD": ({"lr": 0.1}, [dict(momentum=0.9, nesterov=True),
                          dict(lr=0.01, weight_decay=0.1, maximize=True)]),
    "RMSprop": ({}, [dict(centered=True, momentum=0.5), dict(lr=0.1, alpha=0.9, weight_decay=0.1)]),
    "Adagrad": ({"initial_accumulator_value": 0.2},
                [dict(lr_decay=0.1), dict(lr=0.1, eps=1e-3, weight_decay=0.1, maximize=True,
                                          initial_accumulator_value=3.0)]),
    "Adam": ({}, [dict(amsgrad=True), dict(lr=0.01, betas=(0.5, 0.6), weight_decay=0.1,
                                           maximize=True)]),
    "AdamW": ({}, [dict(amsgrad=True, weight_decay=0.5), dict(lr=0.01, betas=(0.5, 0.6),
                                                               maximize=True)]),
    "Adadelta": ({}, [dict(rho=0.5), dict(lr=0.1, weight_decay=0.1, maximize=True)]),
    "Adamax": ({}, [dict(betas=(0.5, 0.6)), dict(lr=0.1, weight_decay=0.1, maximize=True)]),
    "NAdam": ({}, [dict(momentum_decay=0.01), dict(lr=0.01, weight_decay=0.1,
                                                    decoupled_weight_decay=True, maximize=True)]),
    "RAdam": ({}, [dict(betas=(0.5, 0.6)), dict(lr=0.01, weight_decay=0.1,
                                                 decoupled_weight_decay=True, maximize=True)]),
}
EDGES = [("SGD", dict(lr=0.0, momentum=0.9)), ("SGD", dict(lr=0.1, momentum=0.9, dampening=1.0)),
         ("RMSprop", dict(eps=0.0, alpha=0.0)), ("RMSprop", dict(lr=0.0, centered=True)),
         ("Adagrad", dict(eps=0.0, lr_decay=1.0)), ("Adam", dict(betas=(0.0, 0.0), amsgrad=True)),
         ("Adam", dict(eps=0.0, lr=0.0)), ("AdamW", dict(betas=(0.0, 0.0), eps=0.0)),
         ("Adadelta", dict(rho=0.0, eps=0.0)), ("Adamax", dict(betas=(0.0, 0.0), eps=0.0)),
         ("NAdam", dict(betas=(0.0, 0.0), momentum_decay=0.0)), ("NAdam", dict(eps=0.0, lr=0.0)),
         ("RAdam", dict(betas=(0.0, 0.0), eps=0.0)), ("RAdam", dict(betas=(0.9, 0.0))),
         # alpha 1 (torch bounds it by alpha >= 0 only): centered RMSprop's lerp weight
         # 1 - alpha is 0, and grad_avg stays 0 (the compiled kernels took grad_avg = grad)
         ("RMSprop", dict(alpha=1.0, centered=True, momentum=0.5))]


@needs_torch
@pytest.mark.parametrize("name,defaults,groups", [(n, *EDGE_GROUPS[n]) for n in EDGE_GROUPS]
                         + [(n, kw, None) for n, kw in EDGES],
                         ids=[f"{n}-groups" for n in EDGE_GROUPS]
                         + [f"{n}-edge{i}" for i, (n, _) in enumerate(EDGES)])
def test_groups_lr_schedules_and_range_edges_match_torch(backend, name, defaults, groups, dtype):
    """Per-group options, the lr set on every group before each step (as a scheduler does:
    0.05 * 0.7**t, times the group's number), and hyper-parameters at their range edges, for
    12 steps against torch.optim(foreach=False), norm-wise within 4 ulps."""
    rng = np.random.default_rng(2)
    ours = _db_params(dtype)
    theirs = [torch.tensor(np.array(p), requires_grad=True) for p in ours]
    if groups is None:
        mine, their_groups = ours, theirs
    else:
        mine = [dict(params=ours[:3], **groups[0]), dict(params=ours[3:], **groups[1])]
        their_groups = [dict(params=theirs[:3], **groups[0]),
                        dict(params=theirs[3:], **groups[1])]
    opt = getattr(fo, name)(mine, **defaults)
    ref = getattr(torch.optim, name)(their_groups, foreach=False, **defaults)
    for t in range(12):
        if groups is not None:
            for o in (opt, ref):
                for gi, group in enumerate(o.param_groups):
                    group["lr"] = 0.05 * 0.7 ** t * (gi + 1)
        g = [rng.standard_normal(p.shape).astype(dtype) for p in ours]
        opt.step(g)
        _torch_step(ref, theirs, g)
    assert _norm_ulps(ours, [t.detach().numpy() for t in theirs]) <= 4


def test_adagrad_sum_starts_at_the_constructors_value_in_every_group_as_torch():
    """torch.optim.Adagrad fills each ``sum`` from the constructor's initial_accumulator_value,
    a group's own value (at construction or in add_param_group) notwithstanding; so do
    fo.Adagrad and fastopt.torch.Adagrad. One step with grad 1 from sum 0.25: sum 1.25 and
    p = 1 - 0.1 / (sqrt(1.25) + 1e-10)."""
    a, b = np.ones(2), np.ones(3)
    opt = fo.Adagrad([{"params": [a], "initial_accumulator_value": 0.5}], lr=0.1,
                     initial_accumulator_value=0.25)
    opt.add_param_group({"params": [b], "initial_accumulator_value": 0.7})
    np.testing.assert_array_equal(opt.state[0]["sum"], 0.25)     # made at construction
    opt.step([np.ones(2), np.ones(3)])
    for k, p in enumerate((a, b)):
        np.testing.assert_array_equal(opt.state[k]["sum"], 1.25)
        np.testing.assert_array_equal(p, 1 - 0.1 / (np.sqrt(1.25) + 1e-10))


# Steps a parameter until SIGINT, sent by `kill` after a random delay; then checks that the
# step count moved with the parameter (both or neither), trial after trial; prints the misses.
_CTRL_C_TRIALS = SIGINT_SOON + r"""
import numpy as np
import fastopt as fo
name, n, trials = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
misses = []
sizes = (n, 3, n, 17)       # (several arrays: the numba backend steps a list array by array)
for trial in range(trials):
    params = [rng.standard_normal(size).astype(np.float32) for size in sizes]
    grads = [rng.standard_normal(size).astype(np.float32) for size in sizes]
    opt = getattr(fo, name)(params, lr=1e-3)
    opt.step(grads)

    def saved():
        return [(p.copy(), int(opt.state[i]["step"]), float(opt.state[i].get("mu_product", 1.0)))
                for i, p in enumerate(params)]
    before = saved()
    try:
        killer, late = interrupt_soon(), 0
        while True:
            before = saved()        # (one assignment: an interrupt in it leaves the last one)
            opt.step(grads)
            killer, late = again_if_lost(killer, late)
    except KeyboardInterrupt:
        pass
    for i, (param, count, mu) in enumerate(before):
        stepped = not np.array_equal(param, params[i])
        if stepped and name == "NAdam":     # the product the step makes
            mu = fo.ops._nadam_scalars(count + 1, mu, 1e-3, (0.9, 0.999), 1e-8, 0.0, 4e-3)[0]
        state = opt.state[i]
        if int(state["step"]) != count + stepped or float(state.get("mu_product", 1.0)) != mu:
            misses.append((trial, i, stepped, int(state["step"]) - count))
print(misses)
"""


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("name", ["Adam", "NAdam"])
def test_ctrl_c_keeps_the_count_with_the_parameters(backend, name):
    """Real Ctrl-C (SIGINT) at random moments of a loop of steps, small enough (1000 elements)
    that most land in the Python around the kernel: each leaves the count (and NAdam's
    mu_product) where the parameter is, stepped or not. Before the kernel was told from after
    it, 56 of 300 stepped the count alone and 8 the parameter alone; before that, 90 of 300
    the parameter alone. On CPython 3.10, which checks for signals as each call returns, 1-2
    in 60 came once the kernel's caller had returned, and stepped the parameter alone. Four
    arrays: on CPython 3.13 the numba backend's loop over them could be left at its jump
    back (cpython#130279), the arrays before stepped and none counted."""
    env = dict(os.environ, FASTOPT_BACKEND=backend)
    out = subprocess.run([sys.executable, "-c", _CTRL_C_TRIALS, name, "1000", "60"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def _loops_left_at_their_jump_back(path):
    """The lines of the loops in ``path``'s try statements that catch an interrupt or have a
    finally (in the handlers and else of one with a finally too), and in its with statements,
    whose jump back no exception-table entry covers (so an exception raised there skips the
    except, the finally or the ``__exit__``)."""
    import ast
    import dis
    import types
    source = path.read_text()
    guarded = []
    trys = (ast.Try, getattr(ast, "TryStar", ast.Try))
    for node in ast.walk(ast.parse(source)):
        names = {getattr(n, "id", getattr(n, "attr", None))
                 for h in getattr(node, "handlers", ()) if h.type is not None
                 for n in ast.walk(h.type)}
        if isinstance(node, ast.With) or isinstance(node, trys) and (
                node.finalbody or names & {"BaseException", "KeyboardInterrupt"}
                or any(h.type is None for h in node.handlers)):
            guarded.append(node.body)
        if isinstance(node, trys) and node.finalbody:   # (what the finally follows too)
            guarded += [h.body for h in node.handlers] + [node.orelse] * bool(node.orelse)
    guarded = [(body[0].lineno, body[-1].end_lineno) for body in guarded]
    codes, found = [compile(source, str(path), "exec")], []
    while codes:
        code = codes.pop()
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
        if code.co_name == "<genexpr>":      # (its own frame: raised through the caller's call)
            continue
        bytecode = dis.Bytecode(code)
        lines = {i.offset: i.positions.lineno for i in bytecode}
        for i in bytecode:
            if i.opname == "JUMP_BACKWARD" and not any(
                    e.start <= i.offset < e.end for e in bytecode.exception_entries):
                line = lines[i.argval]      # the loop's first line
                if any(first <= line <= last for first, last in guarded):
                    found.append(f"{path.name}:{line} in {code.co_qualname}")
    return found


@pytest.mark.skipif(sys.version_info < (3, 13), reason="CPython 3.13 runs signal handlers at a "
                    "loop's jump back itself, earlier versions at the jump's target")
def test_no_loop_leaves_its_try_or_with_at_its_jump_back():
    """CPython 3.13 leaves the jump back of some loops (``while <condition>``, a ``for`` whose
    body ends in an ``if``, a comprehension with an ``if``) out of the exception-table range of
    the try or with around them (cpython#130279), and runs signal handlers there: Ctrl-C there
    skipped the except, the finally or the ``__exit__``. The numba backend's list step left
    the arrays before it stepped and none counted, fastopt.torch's zero_grad left its lock
    held. None in fastopt's modules, but the benchmark's and the CLI's, which Ctrl-C ends."""
    root = pathlib.Path(fo.__file__).parent
    found = [line for path in sorted(root.rglob("*.py"))
             if path.name not in ("_bench.py", "__main__.py", "_contended.py", "_coexist.py",
                                  "_bench_mpi.py")
             for line in _loops_left_at_their_jump_back(path)]
    assert not found, found


class _GradSubclass(np.ndarray):
    """An ndarray subclass, which the kernels check in Python."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # (a GC'd
@pytest.mark.parametrize("backend", COMPILED)                    # generator's close: ignored)
@pytest.mark.parametrize("case", ["list, first step", "list, later step", "arena",
                                  "other layouts, Adagrad", "a grad subclass, a Fraction lr"])
def test_an_interrupt_at_any_point_of_a_step_leaves_it_taken_or_not(backend, case):
    """KeyboardInterrupt raised at each point of a step of one group where a signal handler
    runs (conftest.raising_at): the optimizer is then as before the step or as after it, and
    the next step is the uninterrupted run's. On the numba backend a list's arrays were
    stepped one by one in Python: interrupted between two, the ones after it were left
    unstepped, and every count advanced; interrupted as the contiguous copies of a strided
    or Fortran-ordered parameter were written back, some were and some not. Adagrad's
    decayed lr was computed after its kernel was named: interrupted there, the step was
    counted and nothing stepped (on every backend). A Cython list step runs the tensors of
    other layouts after the flat ones, and their kernels call into Python for a scalar that
    is no float (a Fraction) or an ndarray subclass: interrupted there, they were left
    unstepped (and counted), or the flat ones stepped and not counted."""
    def make():
        rng = np.random.default_rng(3)
        shapes = [(3, 2), (4,), (5,)]
        if case == "a grad subclass, a Fraction lr":
            params = [rng.standard_normal((3, 2)).astype(np.float32),
                      rng.standard_normal(8).astype(np.float32)[::2]]
            opt = fo.Adam(params, lr=Fraction(1, 100))
            grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params]
                     for _ in range(3)]
            grads = [[g[0], g[1].view(_GradSubclass)] for g in grads]
            opt.step(grads[2])
            return params, opt, grads
        if case == "other layouts, Adagrad":
            params = [rng.standard_normal((3, 2)).astype(np.float32),
                      rng.standard_normal(8).astype(np.float32)[::2],
                      np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32))]
            opt = fo.Adagrad(params, lr=0.01)
            grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params]
                     for _ in range(3)]
            opt.step(grads[2])
            return params, opt, grads
        if case == "arena":
            arena = fo.ParameterArena(np.float32, 64)
            for i, shape in enumerate(shapes):
                arena.add(f"w{i}", shape, init=rng.standard_normal(shape))
            params = list(arena.params.values())
            opt = fo.Adam(arena.params, lr=0.01)
        else:
            params = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
            opt = fo.Adam(params, lr=0.01)
        grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params]
                 for _ in range(3)]
        if case == "arena":
            grads = [dict(zip(arena.params, g)) for g in grads]
        if case != "list, first step":
            opt.step(grads[2])
        return params, opt, grads

    def snapshot(params, opt):
        return [p.copy() for p in params] + [
            (i, key, np.array(value, copy=True)) for i, state in sorted(opt.state.items())
            for key, value in sorted(state.items())]

    def same(a, b):
        return len(a) == len(b) and all(
            (x[:2] == y[:2] and np.array_equal(x[2], y[2])) if isinstance(x, tuple)
            else np.array_equal(x, y) for x, y in zip(a, b))

    with fo.use_backend(backend):
        params, opt, grads = make()
        before = snapshot(params, opt)
        opt.step(grads[0])
        after = snapshot(params, opt)
        opt.step(grads[1])
        then = snapshot(params, opt)
        def check(made, k):
            params, opt, grads = made
            now = snapshot(params, opt)
            assert same(now, after) or same(now, before), k
            if same(now, before):
                opt.step(grads[0])
            opt.step(grads[1])
            assert same(snapshot(params, opt), then), k

        assert sweep_interrupts(make, lambda made: made[1].step(made[2][0]), check) > 50


def _on_lines_plus_one(n, rng):
    """A float32 array of ``n`` elements starting 4 bytes past a 64-byte line (a head of 15
    elements before the first line start, which numba's launch steps in a call of its own)."""
    buf = np.empty(n + 16, np.float32)
    off = (-buf.ctypes.data) % 64 // 4 + 1
    a = buf[off:off + n]
    a[...] = rng.standard_normal(n)
    return a


@pytest.mark.skipif("numba" not in GRID_BACKENDS, reason="the numba backend's launch")
@pytest.mark.parametrize("where", ["at each point a later array's launch calls out",
                                   "as a line head's call returns",
                                   "as a line head's call returns, a Python handler",
                                   "once the head stepped, before the rest's call",
                                   "in Numba's dispatch of the rest's call"])
def test_an_interrupt_in_a_numba_step_leaves_each_parameter_whole_and_counted(where,
                                                                              monkeypatch):
    """The numba backend steps a list an array at a time, an array of 64 Ki elements or more
    in two calls where Numba compiles for AVX-512 (its elements before the first 64-byte
    line, then the rest). Ctrl-C raised in a later array's launch before its kernel was
    called was taken for a step not begun: the arrays before it stepped, their counts not
    (the threads probe, 1 in 100 real SIGINTs); raised as the head's call returned, or
    after, it left the array torn (4-12 elements stepped). Now each array is stepped whole
    or not at all, and a step that stepped any is counted (with the others, as README says
    of the list loops). Simulated by raising KeyboardInterrupt from what launch calls; as
    the head's call returns, by a real SIGINT sent from inside that compiled call, to
    Python's own handler or to one written in Python (a timeout's, whose frame follows
    launch's: taken for Numba compiling the call, it left the array torn; q65); and in
    Numba's dispatch of the rest's parallel call (loading or compiling it, ~8 ms at a
    process's first large step), which wrote nothing of the rest, the head stepped and the
    count not advanced (q68)."""
    from fastopt._numba import _common, optim as numba_optim
    if not where.startswith("at each point") and _common.ALIGN_MIN is None:
        pytest.skip("Numba does not compile for AVX-512 here: no line head")
    rng = np.random.default_rng(6)
    sizes = (300_001, 3, 200_003)
    values = [_on_lines_plus_one(n, rng) for n in sizes]
    grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]

    def fresh():
        params = [_on_lines_plus_one(n, rng) for n in sizes]
        for p, v in zip(params, values):
            p[...] = v
        opt = fo.Adam(params, lr=0.1)
        opt.step(grads)
        return params, opt

    def interrupt_at(point, calls):
        def interrupt(*args):
            calls[0] += 1
            if calls[0] == point:
                raise KeyboardInterrupt
        return interrupt
    def handler_in_python(signum, frame):
        raise KeyboardInterrupt

    # Python's SIGINT handler, which a job a shell starts in the background goes without
    # (SIGINT ignored, as CI's runs are)
    previous = signal.signal(signal.SIGINT, handler_in_python if where.endswith("handler")
                             else signal.default_int_handler)
    with fo.use_backend("numba"), contextlib.ExitStack() as restore:
        restore.callback(signal.signal, signal.SIGINT, previous)
        twin, ref = fresh()
        ref.step(grads)
        for point in range(1, 6):
            params, opt = fresh()
            before = [p.copy() for p in params]
            calls = [0]
            if where.startswith("at each point"):
                clock = interrupt_at(point, calls)      # launch's one call out at this size
                monkeypatch.setattr(_common, "time", type("Clock", (), {
                    "perf_counter": staticmethod(lambda: clock() or time.perf_counter())}))
            elif where.startswith("as a line head"):
                import ctypes

                import numba
                libc = ctypes.CDLL(None)
                send = libc["raise"]
                send.argtypes, send.restype = [ctypes.c_int], ctypes.c_int
                sigint = int(signal.SIGINT)

                @numba.njit
                def head_then_sigint(p, g, m, v, vmax, packed):
                    numba_optim._adam_span(p, g, m, v, vmax, packed)
                    if p.size < 64:         # the head: raised in launch as the call returns
                        send(sigint)
                monkeypatch.setattr(fo._backend.active, "adam_multi", _common.list_form(
                    numba_optim.adam, head_then_sigint, numba_optim._adam_parallel,
                    numba_optim._pack_adam))
                if point > 1:
                    monkeypatch.undo()
            elif where.startswith("in Numba's dispatch"):
                def dispatch(*args):    # (raising in a frame of Numba's, as its dispatcher)
                    calls[0] += 1
                    if calls[0] == point:
                        raise KeyboardInterrupt
                    return numba_optim._adam_parallel(*args)
                in_numba = types.FunctionType(
                    dispatch.__code__, {"__name__": "numba.core.dispatcher",
                                        "__builtins__": __builtins__, "numba_optim": numba_optim,
                                        "KeyboardInterrupt": KeyboardInterrupt},
                    "dispatch", None, dispatch.__closure__)
                monkeypatch.setattr(_common, "STEP_PARALLEL_COLD_BYTES", 0)
                monkeypatch.setattr(_common, "get_num_threads", lambda: 2)
                monkeypatch.setattr(fo._backend.active, "adam_multi", _common.list_form(
                    numba_optim.adam, numba_optim._adam_span, in_numba,
                    numba_optim._pack_adam))
            else:       # the parallel call's set-up, at any size
                monkeypatch.setattr(_common, "STEP_PARALLEL_COLD_BYTES", 0)
                monkeypatch.setattr(_common, "get_num_threads", lambda: 2)
                interrupt, threads_now = interrupt_at(point, calls), _common._get_threads
                monkeypatch.setattr(_common, "_get_threads",
                                    lambda: interrupt() or threads_now())
            try:
                opt.step(grads)
                interrupted = False
            except KeyboardInterrupt:
                interrupted = True
            finally:
                monkeypatch.undo()
            stepped = [not same_bits(p, b) for p, b in zip(params, before)]
            for p, b, t, k in zip(params, before, twin, stepped):
                assert same_bits(p, t if k else b), (point, stepped)
            counts = {int(opt.state[i]["step"]) for i in range(len(sizes))}
            assert counts == {1 + any(stepped)}, (point, stepped)
            if not interrupted:
                assert all(stepped) and point > 1
                break


def _assert_same_state(opt, ref, ours, theirs):
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
    got, want = opt.state_dict()["state"], ref.state_dict()["state"]
    assert got.keys() == want.keys()
    for i in want:
        assert got[i].keys() == want[i].keys()
        for key in want[i]:
            np.testing.assert_array_equal(got[i][key], want[i][key], err_msg=key)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("name", ["Adam", "NAdam", "SGD"])
@pytest.mark.parametrize("when", ["as the kernel returns", "before the kernel"])
@pytest.mark.parametrize("signal_raises", [KeyboardInterrupt, TimeoutError])
def test_an_interrupt_keeps_the_count_with_the_state(backend, name, when, signal_raises,
                                                     monkeypatch):
    """Ctrl-C during a step is raised as the compiled kernel returns (it runs without the GIL,
    where no Python signal handler runs), its writes done: the step count, NAdam's mu_product
    and a first step's new state are stored with them (they were dropped, as for a refused
    call: the parameters and moments one step past ``state['step']``, every later bias
    correction one step off). Raised before the kernel was called, it changes nothing (it was
    taken for a stepped call: the count one step past the parameters). Simulated here: the
    backend's kernel runs, then raises KeyboardInterrupt; or the first thing the fastopt.ops
    function calls raises it. A signal handler may raise another exception (a timeout's
    TimeoutError): the same (the step count had been kept only for a KeyboardInterrupt)."""
    kernel = {"Adam": "adam_multi", "NAdam": "nadam_multi", "SGD": "sgd_multi"}[name]
    kwargs = {"SGD": {"momentum": 0.9}}.get(name, {})
    rng = np.random.default_rng(4)
    with fo.use_backend(backend):
        real, called = getattr(fo._backend.active, kernel), []

        def interrupted(params, *args, **kwargs):
            real(params, *args, **kwargs)
            called.extend(params)
            raise signal_raises

        def interrupt(*args, **kwargs):
            raise signal_raises

        # the kernel, or what the fastopt.ops function calls first
        where, patch, interrupt_with = (
            (fo._backend.active, kernel, interrupted) if when == "as the kernel returns"
            else (fo.ops, "_check_sgd" if name == "SGD" else "_adam_scalars", interrupt))

        ours, theirs = ([np.arange(5.0), np.ones((2, 3)), np.full(4, 2.0)] for _ in range(2))
        opt = getattr(fo, name)(ours, lr=0.1, **kwargs)
        ref = getattr(fo, name)(theirs, lr=0.1, **kwargs)
        # a first step; then two phases, the third parameter's first step beside the others'
        # second (two kernel calls: the interrupted first stops the step); then one
        for parts in ([1, 1, 0], [1, 1, 1], [1, 1, 1]):
            grads = [rng.standard_normal(p.shape) if x else None for x, p in zip(parts, ours)]
            called.clear()
            monkeypatch.setattr(where, patch, interrupt_with)
            with pytest.raises(signal_raises):
                opt.step(grads)
            monkeypatch.undo()
            if called:      # what the kernel stepped
                ref.step([g if any(p is q for q in called) else None
                          for g, p in zip(grads, ours)])
            _assert_same_state(opt, ref, ours, theirs)
        opt.step(grads)
        ref.step(grads)
        _assert_same_state(opt, ref, ours, theirs)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_state_is_laid_out_as_its_parameter_and_a_transposed_one_steps_without_copies(
        backend, config):
    """State was made in C order whatever the parameter's layout: beside a Fortran-ordered
    parameter (a transposed weight) the compiled kernels copied the parameter and its grad
    at every step (8 MB a step for 1000 x 1000 float32). State now keeps a Fortran-ordered
    parameter's order, made at the first step or loaded, a C-ordered grad beside it is the
    one array copied, and the results are those of C order."""
    import tracemalloc
    name, kwargs = config
    rng = np.random.default_rng(7)
    base = rng.standard_normal((300, 200)).astype(np.float32)
    grads = [rng.standard_normal(base.shape).astype(np.float32) for _ in range(3)]
    layouts = {"C": lambda a: a.copy(), "F": np.asfortranarray,
               # a transposed weight beside its grad from a matmul: the grad alone is copied
               "F, C grad": np.asfortranarray}
    with fo.use_backend(backend):
        results = {}
        for layout, make in layouts.items():
            p = make(base)
            opt = getattr(fo, name)([p], **kwargs)
            grad_of = (lambda g: g.copy()) if layout == "F, C grad" else make
            for g in grads[:2]:
                opt.step([grad_of(g)])
            for key, value in opt.state.get(0, {}).items():
                if isinstance(value, np.ndarray) and value.shape == p.shape:
                    assert value.strides == p.strides, (layout, key)
            loaded = getattr(fo, name)([make(base)], **kwargs)
            loaded.load_state_dict(opt.state_dict())
            for key, value in loaded.state.get(0, {}).items():
                if isinstance(value, np.ndarray) and value.shape == p.shape:
                    assert value.strides == p.strides, (layout, key, "loaded")
            g = grad_of(grads[2])
            if backend != "numpy":          # (the reference computes with temporaries)
                tracemalloc.start()
                opt.step([g])
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                # (with the grad in the other order, that grad's copy: the param and its
                # state had been copied, and written back)
                copies = 1 if layout == "F, C grad" else 0
                assert peak < base.nbytes * (copies + 0.25), (layout, peak)
            else:
                opt.step([g])
            results[layout] = np.ascontiguousarray(p)
        assert all(same_bits(r, results["C"]) for r in results.values())
