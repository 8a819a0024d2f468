"""ParameterArena: parameters and grads as views of one buffer each; an optimizer over
an arena steps it in one kernel call with the bits of separate arrays, resumes from state
dicts, survives pickle and deepcopy, and refuses what the arena cannot hold."""
import decimal
import numbers
import os
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastopt as fo
from conftest import GRID_BACKENDS
from optim_specs import (CONFIGS, CONFIG_IDS, PARAM_SHAPES, VARIANTS, VARIANT_STEPS, opt_snapshot,
                         random_arrays, two_grads, two_params)


# the older optimizers with options that bring in their state, and the newer family's variants
OPTIMIZERS = [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)), ("SGD", dict(lr=0.1)),
              ("Momentum", dict(lr=0.1, beta=0.8)),
              ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.01)),
              ("Adagrad", dict(lr=0.1, initial_accumulator_value=0.1)),
              ("Adam", dict(lr=0.01, amsgrad=True)), ("AdamW", dict(lr=0.01))] + VARIANTS


@pytest.mark.parametrize("name,kwargs", OPTIMIZERS,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPTIMIZERS)])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_an_arena_steps_in_one_call_with_the_bits_of_separate_arrays(backend, name, kwargs,
                                                                      dtype):
    rng = np.random.default_rng(0)
    inits = random_arrays(rng, dtype)
    arena = fo.ParameterArena(dtype, capacity=1000)
    views = [arena.add(f"p{k}", s, init=x) for k, (s, x) in enumerate(zip(PARAM_SHAPES, inits))]
    separate = [x.copy() for x in inits]
    with fo.use_backend(backend):
        o_arena = getattr(fo, name)(arena.params, **kwargs)
        o_sep = getattr(fo, name)(separate, **kwargs)
        for _ in range(VARIANT_STEPS):
            gs = random_arrays(rng, dtype)
            for k, g in enumerate(gs):
                arena.grads[f"dp{k}"] = g          # assignment fills the arena's view
            o_arena.step(arena.grads)
            o_sep.step(gs)
    for a, b in zip(views, separate):
        assert a.tobytes() == b.tobytes()
    sd_a, sd_s = o_arena.state_dict(), o_sep.state_dict()
    assert sd_a["state"].keys() == sd_s["state"].keys()
    for i in sd_s["state"]:
        assert sd_a["state"][i].keys() == sd_s["state"][i].keys()
        for key, value in sd_s["state"][i].items():
            np.testing.assert_array_equal(sd_a["state"][i][key], value, err_msg=key)
    # the flat path really ran: the state lives in one buffer per key
    for key, value in o_arena.state[0].items():
        if isinstance(value, np.ndarray) and value.size:
            assert value.base is not None and o_arena.state[1][key].base is value.base


@pytest.mark.parametrize("name,kwargs", OPTIMIZERS,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPTIMIZERS)])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_an_arena_stepped_with_separate_grads_first_then_its_own_keeps_its_state(backend, name,
                                                                                kwargs):
    """State made on the list path (grads that are not the arena's views: SGD's momentum
    buffer, RMSprop's grad_avg and buffer, AMSGrad's max) lay outside the flat buffers the
    arena path's plan had made without it: the next step with ``arena.grads`` took it for
    missing (SGD: a first step again, buf = g; RMSprop: buffers of zeros)."""
    rng = np.random.default_rng(6)
    inits = random_arrays(rng)
    arena = fo.ParameterArena(np.float64, capacity=1000)
    views = [arena.add(f"p{k}", s, init=x) for k, (s, x) in enumerate(zip(PARAM_SHAPES, inits))]
    separate = [x.copy() for x in inits]
    with fo.use_backend(backend):
        o_arena = getattr(fo, name)(views, **kwargs)
        o_sep = getattr(fo, name)(separate, **kwargs)
        for own in (False, True, True, False, True):
            gs = random_arrays(rng)
            if own:
                for k, g in enumerate(gs):
                    arena.grads[f"p{k}"] = g
                o_arena.step(arena.grads)
            else:
                o_arena.step(gs)
            o_sep.step(gs)
    assert [v.tobytes() for v in views] == [a.tobytes() for a in separate]


def test_arena_state_dict_resumes_exactly():
    rng = np.random.default_rng(1)
    arena = fo.ParameterArena(np.float64)
    for k, s in enumerate(PARAM_SHAPES):
        arena.add(f"w{k}", s, init=rng.standard_normal(s))
    opt = fo.Adam(arena.params, lr=0.01)
    grads = [random_arrays(rng, np.float64) for _ in range(6)]

    def feed(gs):
        for k, g in enumerate(gs):
            arena.grads[f"w{k}"] = g

    for gs in grads[:3]:
        feed(gs)
        opt.step(arena.grads)
    saved_params = arena.flat_params.copy()
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    for gs in grads[3:]:
        feed(gs)
        opt.step(arena.grads)
    uninterrupted = arena.flat_params.copy()

    arena.flat_params[...] = saved_params
    resumed = fo.Adam(arena.params, lr=0.01)
    resumed.load_state_dict(saved)
    for gs in grads[3:]:
        feed(gs)
        resumed.step(arena.grads)
    assert arena.flat_params.tobytes() == uninterrupted.tobytes()


def test_arena_params_work_in_groups_and_lists():
    rng = np.random.default_rng(2)
    arena = fo.ParameterArena(np.float32)
    ws = [arena.add(f"w{k}", (8,), init=rng.standard_normal(8)) for k in range(4)]
    copies = [w.copy() for w in ws]
    opt = fo.SGD([{"params": ws[:2]}, {"params": ws[2:], "lr": 0.5}], lr=0.1, momentum=0.9)
    ref = fo.SGD([{"params": copies[:2]}, {"params": copies[2:], "lr": 0.5}], lr=0.1,
                 momentum=0.9)
    for _ in range(3):
        gs = [rng.standard_normal(8).astype(np.float32) for _ in ws]
        arena.flat_grads[...] = np.concatenate(gs)
        opt.step(list(arena.grads.values()))
        ref.step(gs)
    for a, b in zip(ws, copies):
        assert a.tobytes() == b.tobytes()


def test_arena_refuses_what_it_cannot_hold():
    arena = fo.ParameterArena(np.float32, capacity=10)
    arena.add("a", (2, 3))
    with pytest.raises(ValueError, match="'b'"):
        arena.add("b", (5,))
    with pytest.raises(ValueError, match="'a'"):
        arena.add("a", (1,))
    with pytest.raises(TypeError):
        fo.ParameterArena(np.int32)
    with pytest.raises(TypeError):
        del arena.grads["a"]
    with pytest.raises(KeyError):
        arena.grads["nope"] = 1.0


def test_arena_capacity_refuses_a_bool_naming_it():
    """True is an int to Python: it reached np.zeros, whose error did not name capacity."""
    for bad in (True, False, 2.0, -1):
        with pytest.raises(ValueError, match=r"Invalid capacity: "):
            fo.ParameterArena(np.float32, capacity=bad)
    assert fo.ParameterArena(np.float32, capacity=np.int16(3)).add("a", 3).shape == (3,)
    # more than NumPy can allocate: its "array is too big" did not name capacity
    with pytest.raises(ValueError, match=r"capacity 4611686018427387904: .*too big"):
        fo.ParameterArena(np.float32, capacity=2 ** 62)
    # more than the machine can reserve (128 TiB): NumPy's MemoryError subclass, remade with
    # the message, had raised TypeError (its constructor takes a shape and a dtype)
    with pytest.raises(MemoryError, match=r"capacity 35184372088832: "):
        fo.ParameterArena(np.float32, capacity=2 ** 45)


def test_arena_refuses_a_name_whose_grad_key_another_parameter_has():
    """grads are keyed by name or 'd' + name: adding 'dW' beside 'W' silently turned
    grads['dW'] from W's grad into dW's (an assignment meant for W then filled dW, and W
    stepped on a stale grad); 'W' after 'dW' hid W's 'd' key the same way."""
    arena = fo.ParameterArena(np.float32, capacity=10)
    arena.add("W", 2)
    arena.add("dd", 1)
    for name, key in (("dW", "dW"), ("d", "dd")):
        with pytest.raises(ValueError, match=f"grads\\[{key!r}\\] would name both"):
            arena.add(name, 2)
    assert list(arena.params) == ["W", "dd"] and arena.size == 3
    assert arena.grads["dW"] is arena.grads["W"]
    arena.add("ddW", 1)                                  # no parameter 'dW': no clash
    other = fo.ParameterArena(np.float32, capacity=10)
    other.add("dW", 2)
    with pytest.raises(ValueError, match="parameter 'W' beside 'dW'"):
        other.add("W", 2)


def test_span_of_takes_any_sequence_or_the_params_dict():
    """span_of(arena.params) raised KeyError: 0, span_of(an ndarray) numpy's 'truth value of
    an array ... is ambiguous', dict values and iterators a TypeError ('not subscriptable')."""
    arena = fo.ParameterArena(np.float32, capacity=10)
    W, b = arena.add("W", (2, 3)), arena.add("b", 2)
    for params in (arena.params, arena.params.values(), iter([W, b]), (W, b)):
        span = fo.ParameterArena.span_of(params)
        assert span is not None and span.offsets == [0, 6, 8] and span.first == 0
    assert fo.ParameterArena.span_of(W) is None                 # its rows tile nothing
    assert fo.ParameterArena.span_of(np.zeros((3, 2), np.float32)) is None
    assert fo.ParameterArena.span_of({}) is None


def _arena_setup(name, kwargs, dtype=np.float32):
    ar = fo.ParameterArena(dtype, 64)
    ar.add("W", (3, 2), init=two_params()[0])
    ar.add("b", (4,), init=np.arange(4))
    return ar, getattr(fo, name)(ar.params, **kwargs)


def _arena_steps(ar, opt, seeds):
    for seed in seeds:
        for key, g in zip(("dW", "db"), two_grads(seed)):
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
        before = opt_snapshot(opt, [ar.flat_params])
        with pytest.raises(ValueError, match="read-only"):
            _arena_steps(ar, opt, [1])
        assert opt_snapshot(opt, [ar.flat_params]) == before


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("name,kwargs,key", [
    ("Adam", {}, "exp_avg"),
    ("Adam", {"amsgrad": True}, "max_exp_avg_sq"),      # (switched on after the first step)
    ("SGD", {"momentum": 0.9}, "momentum_buffer"),      # (made by the first step's call)
    ("RMSprop", {"momentum": 0.9, "centered": True}, "grad_avg")],
    ids=["exp_avg", "max_exp_avg_sq", "momentum_buffer", "grad_avg"])
def test_the_arena_path_refuses_a_state_array_made_read_only(backend, groups, name, kwargs,
                                                             key):
    """As the list path does, whatever the number of groups: one group's arena path stepped
    the flat state buffer, writing through the read-only view (two groups refused it), and
    then state the kernel call itself made (two groups too: the review)."""
    with fo.use_backend(backend):
        ar = fo.ParameterArena(np.float32, 64)
        ar.add("W", (3, 2), init=1.0)
        ar.add("b", (4,), init=1.0)
        views = list(ar.params.values())
        params = [{"params": [v]} for v in views] if groups == 2 else views
        later = kwargs.get("amsgrad")
        opt = getattr(fo, name)(params, lr=0.1, **({} if later else kwargs))
        _arena_steps(ar, opt, [0])
        for group in opt.param_groups:
            group.update(kwargs)
        _arena_steps(ar, opt, [1])
        opt.state[1][key].flags.writeable = False
        before = opt_snapshot(opt, [ar.flat_params])
        with pytest.raises(ValueError, match=rf"state\[1\]\['{key}'\] is read-only"):
            _arena_steps(ar, opt, [2])
        assert opt_snapshot(opt, [ar.flat_params]) == before


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("name,kwargs,key", [
    ("SGD", {"momentum": 0.9}, "momentum_buffer"),
    ("RMSprop", {"momentum": 0.9}, "square_avg"),
    ("Adam", {"amsgrad": True}, "exp_avg")], ids=["SGD", "RMSprop", "Adam-amsgrad-later"])
def test_state_held_after_a_step_that_made_state_stays_the_state(backend, name, kwargs, key):
    """A step whose kernel call made state (a momentum buffer at the first step, amsgrad's
    maximum once switched on) remakes the arena path's plan from the old one: remade from
    nothing, it moved every state array of the group into new buffers, and an array the caller
    held stopped being the state (a reset written into it was lost: the review)."""
    with fo.use_backend(backend):
        ar = fo.ParameterArena(np.float32, 64)
        ar.add("W", (3, 2), init=1.0)
        ar.add("b", (4,), init=1.0)
        later = "amsgrad" in kwargs
        opt = getattr(fo, name)(ar.params, lr=0.1, **({} if later else kwargs))
        _arena_steps(ar, opt, [0])
        if later:
            opt.param_groups[0].update(kwargs)
            _arena_steps(ar, opt, [1])
        held = opt.state[1][key]
        _arena_steps(ar, opt, [2])
        held[...] = 0.0
        assert opt.state[1][key] is held and not opt.state[1][key].any()
        _arena_steps(ar, opt, [3])
        assert opt.state[1][key] is held


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("groups", [1, 2])
def test_state_held_after_a_step_an_arena_parameter_sat_out_stays_the_state(backend, groups):
    """A step given a list of grads with a None for one of an arena group's parameters runs
    the group in parts; its plan was then dropped, and the next one, made without it, moved
    every state array of the group into new buffers (the review)."""
    with fo.use_backend(backend):
        ar = fo.ParameterArena(np.float32, 64)
        ar.add("W", (3, 2), init=1.0)
        ar.add("b", (4,), init=1.0)
        views = list(ar.params.values())
        opt = fo.Adam(views if groups == 1 else [{"params": [v]} for v in views], lr=0.1)
        _arena_steps(ar, opt, [0, 1])
        held = opt.state[1]["exp_avg"]
        opt.step([np.ones((3, 2), np.float32), None])      # b sits it out
        _arena_steps(ar, opt, [2])
        held[...] = 0.0
        assert opt.state[1]["exp_avg"] is held
        _arena_steps(ar, opt, [3])
        assert opt.state[1]["exp_avg"] is held


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
                opt.step([g.astype(np.float32) for g in two_grads(seed)])
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


def test_arena_grad_of_the_wrong_shape_names_the_key_and_writes_nothing():
    arena = fo.ParameterArena(np.float64)
    arena.add("W", (3, 2))
    arena.grads["dW"] = np.ones((3, 2))
    for bad in (np.zeros((2, 3)), np.zeros(6), np.zeros((3, 1)), 0.0):
        with pytest.raises(ValueError, match=r"grads\['dW'\] has shape .* expected \(3, 2\)"):
            arena.grads["dW"] = bad
    with pytest.raises(TypeError, match=r"grads\['W'\] must hold real numbers"):
        arena.grads["W"] = np.full((3, 2), "x")
    assert (arena.grads["W"] == 1).all()
    with pytest.raises(KeyError, match="'dW2'.* no such parameter"):
        arena.grads["dW2"] = np.ones((3, 2))


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_list_of_arena_views_steps_with_the_arenas_grads_whatever_its_state(backend):
    """An optimizer over a list of an arena's views (not by name) takes ``arena.grads``: its
    group steps the stretch with the arena's grad views. Once a step had left a parameter out
    (phases differ: no one call over the stretch) the same call was refused ("grads is a dict
    but params were not given by name"); it now gives each parameter its grad view on the
    multi-tensor path, with the bits of separate arrays."""
    rng = np.random.default_rng(4)
    arena = fo.ParameterArena(np.float64, capacity=100)
    views = [arena.add(f"w{k}", s, init=rng.standard_normal(s)) for k, s in
             enumerate([(3,), (2, 2)])]
    separate = [v.copy() for v in views]
    with fo.use_backend(backend):
        opt, ref = fo.Adam(views, lr=0.1), fo.Adam(separate, lr=0.1)
        for sits_out in (None, 1, None, 0, None):
            gs = [rng.standard_normal(v.shape) for v in views]
            for k, g in enumerate(gs):
                arena.grads[f"w{k}"] = g
            if sits_out is None:
                opt.step(arena.grads)
            else:
                opt.step([None if k == sits_out else g for k, g in enumerate(gs)])
                gs[sits_out] = None
            ref.step(gs)
    assert [v.tobytes() for v in views] == [a.tobytes() for a in separate]


@pytest.mark.parametrize("how", ["item", "slice", "group"])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_parameter_replaced_in_its_groups_list_is_the_one_stepped(backend, how):
    """``opt.param_groups[0]["params"][1] = b`` (torch's groups hold the arrays themselves)
    makes ``b`` the parameter the optimizer steps. For a group of arena views, whose plan
    had kept the arena stretch, a step with ``arena.grads`` after the replacement went on
    moving the arena's view, and never ``b``."""
    arena = fo.ParameterArena(np.float64, capacity=64)
    w = arena.add("w", (2, 2), init=1.0)
    arena.add("v", (3,), init=2.0)
    arena.grads["w"] = np.ones((2, 2))
    arena.grads["v"] = np.ones(3)
    b = np.full(3, 5.0)
    with fo.use_backend(backend):
        opt = fo.SGD(arena.params, lr=0.5)
        opt.step(arena.grads)                   # w, v: 1 - 0.5, 2 - 0.5
        if how == "item":
            opt.param_groups[0]["params"][1] = b
        elif how == "slice":
            opt.param_groups[0]["params"][1:] = [b]
        else:
            opt.param_groups[0]["params"] = [w, b]
        assert opt.param_groups[0]["params"][1] is b
        arena.grads["v"] = np.full(3, 2.0)
        opt.step(arena.grads)                   # b takes the grad named 'v'
    assert w.tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert b.tolist() == [4.0, 4.0, 4.0]                  # 5 - 0.5 * 2
    assert arena.params["v"].tolist() == [1.5, 1.5, 1.5]  # left where the first step put it


def test_the_arenas_grads_may_hold_more_than_one_optimizer_steps():
    arena = fo.ParameterArena(np.float32)
    w = arena.add("w", (4,), init=np.ones(4))
    b = arena.add("b", (2,), init=np.ones(2))
    opt_w = fo.SGD({"w": w}, lr=0.5)
    arena.grads["dw"] = np.ones(4, np.float32)
    arena.grads["db"] = np.ones(2, np.float32)
    opt_w.step(arena.grads)                              # "b" belongs to another optimizer
    np.testing.assert_array_equal(w, 0.5)
    np.testing.assert_array_equal(b, 1.0)


def _arena_layout(arena):
    return (arena.size, [(k, v.shape) for k, v in arena.params.items()], dict(arena.grads),
            arena.flat_params.copy(), arena._param_buf.copy(), arena._grad_buf.copy())


def _same_layout(a, b):
    assert a[0] == b[0] and a[1] == b[1] and a[2].keys() == b[2].keys()
    for x, y in zip(a[3:], b[3:]):
        assert x.tobytes() == y.tobytes()


def test_arena_add_refuses_a_bad_shape_naming_it_and_changes_nothing():
    """Negative dimensions are a ValueError (as np.zeros((2, -1))), non-int ones a TypeError,
    each naming the shape; the arena is left as it was, so later parameters do not overlap."""
    arena = fo.ParameterArena(np.float32, 100)
    a = arena.add("a", (4,), init=1.0)
    before = _arena_layout(arena)
    for bad in ((2, -1), -3, (-1,), (3, -2, 4), (-2, -2), np.int64(-1), [np.int8(-5), 2]):
        with pytest.raises(ValueError, match=r"shape .*'x'.*negative"):
            arena.add("x", bad)
        _same_layout(_arena_layout(arena), before)
    for bad in ((2, 1.5), (None,), "3", (True, 2), 2.0, None):
        with pytest.raises(TypeError, match=r"shape .*'x'"):
            arena.add("x", bad)
        _same_layout(_arena_layout(arena), before)
    # empty, but with a dimension NumPy cannot hold: its error ("Maximum allowed dimension
    # exceeded") did not name the parameter
    for bad in ((2 ** 63, 0), (2 ** 62, 2 ** 62, 0)):
        with pytest.raises(ValueError, match=r"shape .*'x'"):
            arena.add("x", bad)
        _same_layout(_arena_layout(arena), before)
    assert "x" not in arena.params and arena.size == 4
    w = arena.add("w", 3)
    assert w.shape == (3,) and arena.size == 7 and not np.shares_memory(w, a)
    assert arena.add("e", (2, 0)).shape == (2, 0) and arena.size == 7
    assert arena.add("n", np.int64(2)).shape == (2,)
    assert arena.add("t", [np.int32(2), 1]).shape == (2, 1)


def test_arena_add_whose_init_fails_leaves_the_space_zero():
    """A refused init (one that NumPy cannot convert, part way through) names the parameter and
    leaves nothing behind: the next parameter in that space starts at zero."""
    arena = fo.ParameterArena(np.float64, 10)
    with pytest.raises(OverflowError, match="'y'"):
        arena.add("y", (3,), init=np.array([1.0, 10 ** 400, 2.0], dtype=object))
    with pytest.raises(TypeError, match="'y'"):
        arena.add("y", (3,), init=np.array([1.0, "x", 2.0], dtype=object))
    with pytest.raises(ValueError, match="'y'"):
        arena.add("y", (3,), init=np.ones(2))
    assert arena.size == 0 and not arena.params
    np.testing.assert_array_equal(arena.add("y", 3), 0.0)
    assert not arena._param_buf.any()


# ------------------------------------------------- the grad dict: every way in copies in
def _two_param_arena():
    ar = fo.ParameterArena(np.float64, 20)
    w = ar.add("W", (2, 3), init=1.0)
    ar.add("b", 2, init=1.0)
    return ar, w


def _stray_free(ar):
    """Every entry of the grad dict is still the arena's own view, under the parameter's name."""
    assert list(dict.keys(ar.grads)) == list(ar.params)
    for name, g in dict.items(ar.grads):
        assert np.shares_memory(g, ar.flat_grads) and g.shape == ar.params[name].shape


@pytest.mark.parametrize("how", ["ior", "update", "update-kwargs", "update-pairs"])
def test_grads_ior_and_update_copy_into_the_arena(how):
    """Was: ``arena.grads |= {...}`` (dict's own merge) stored a stray non-view entry, so later
    assignments went to it and the optimizer stepped stale arena grads."""
    ar, w = _two_param_arena()
    opt = fo.SGD(ar.params, lr=1.0)
    new = {"dW": np.full((2, 3), 5.0), "b": np.full(2, 4.0)}
    g = ar.grads
    if how == "ior":
        g |= new
    elif how == "update":
        g.update(new)
    elif how == "update-kwargs":
        g.update(dW=new["dW"], b=new["b"])
    else:
        g.update(list(new.items()))
    assert g is ar.grads
    _stray_free(ar)
    np.testing.assert_array_equal(ar.flat_grads, [5.0] * 6 + [4.0] * 2)
    ar.grads["dW"] = np.full((2, 3), 2.0)
    opt.step(ar.grads)
    np.testing.assert_array_equal(w, -1.0)
    with pytest.raises(ValueError, match=r"grads\['dW'\] has shape"):
        ar.grads |= {"dW": np.zeros(7)}
    with pytest.raises(KeyError, match="'dX'"):
        ar.grads |= {"dX": np.zeros(7)}
    _stray_free(ar)


def test_grads_setdefault_returns_the_view_and_adds_nothing():
    ar, _ = _two_param_arena()
    ar.grads["W"] = np.full((2, 3), 3.0)
    assert ar.grads.setdefault("dW", np.zeros((2, 3))) is ar.grads["W"]
    np.testing.assert_array_equal(ar.grads["W"], 3.0)
    with pytest.raises(KeyError, match="'dX'"):
        ar.grads.setdefault("dX", np.zeros(3))
    for remove in (lambda g: g.pop("W"), lambda g: g.popitem(), lambda g: g.clear(),
                   lambda g: g.__delitem__("W")):
        with pytest.raises(TypeError, match="cannot be removed"):
            remove(ar.grads)
    _stray_free(ar)


def test_a_refused_grad_assignment_or_update_writes_nothing():
    """Was: a value whose conversion failed part way left the grad half written, and an update
    wrote the keys before the bad one."""
    ar, _ = _two_param_arena()
    ar.grads["W"] = np.ones((2, 3))
    ar.grads["b"] = np.ones(2)
    before = ar.flat_grads.copy()
    for bad, error in ((np.array([[1.5, 2.5, 3.5], [4.5, 10 ** 400, 6.5]], dtype=object),
                        OverflowError),
                       (np.array([[1.5, 2.5, 3.5], [4.5, "x", 6.5]], dtype=object), TypeError)):
        with pytest.raises(error, match=r"grads\['dW'\]"):
            ar.grads["dW"] = bad
        np.testing.assert_array_equal(ar.flat_grads, before)
    for refused in ({"dW": np.full((2, 3), 7.0), "db": np.array([1.0, 10 ** 400], dtype=object)},
                    {"dW": np.full((2, 3), 7.0), "db": np.array([1.0, "x"], dtype=object)},
                    {"dW": np.full((2, 3), 7.0), "db": np.zeros(3)},
                    {"dW": np.full((2, 3), 7.0), "dX": np.zeros(2)}):
        for merge in (ar.grads.update, ar.grads.__ior__):
            with pytest.raises((ValueError, KeyError, OverflowError, TypeError)):
                merge(refused)
            np.testing.assert_array_equal(ar.flat_grads, before)
    # a view made read-only by hand: named, and nothing written (NumPy's unnamed
    # 'assignment destination is read-only' came after the entries before it were written)
    for views, flat, names in ((ar.grads, ar.flat_grads, ("dW", "db")),
                               (ar.params, ar.flat_params, ("W", "b"))):
        views[names[1]].flags.writeable = False
        before = flat.copy()
        for assign in (lambda: views.update({names[0]: np.full((2, 3), 7.0),
                                             names[1]: np.ones(2)}),
                       lambda: views.__ior__({names[0]: np.full((2, 3), 7.0),
                                              names[1]: np.ones(2)}),
                       lambda: views.__setitem__(names[1], np.ones(2))):
            with pytest.raises(ValueError, match=rf"\['{names[1]}'\] is read-only"):
                assign()
            np.testing.assert_array_equal(flat, before)
        views[names[1]].flags.writeable = True
    _stray_free(ar)


def test_grads_update_from_the_arenas_own_views_in_swapped_order():
    ar = fo.ParameterArena(np.float64, 8)
    ar.add("u", 4)
    ar.add("v", 4)
    ar.grads["u"] = np.full(4, 1.0)
    ar.grads["v"] = np.full(4, 2.0)
    ar.grads.update({"u": ar.grads["v"], "v": ar.grads["u"]})
    np.testing.assert_array_equal(ar.flat_grads, [2.0] * 4 + [1.0] * 4)


def test_grads_contains_and_get_know_the_d_name():
    ar, _ = _two_param_arena()
    for key in ("W", "dW", "b", "db"):
        assert key in ar.grads
        assert ar.grads.get(key) is ar.grads[key]
    for key in ("X", "dX", "d", "", 3):
        assert key not in ar.grads
        assert ar.grads.get(key) is None and ar.grads.get(key, "no") == "no"


def test_grads_copy_deepcopy_and_pickle():
    """Was KeyError: 'W' (the copy was rebuilt through __setitem__ on an empty dict). A deep
    copy or pickle of the grads is the copied arena's (views of its grad buffer, as a copied
    arena's own grads); a shallow copy holds the same views."""
    import copy
    ar, _ = _two_param_arena()
    ar.grads["W"] = np.arange(6.0).reshape(2, 3)
    shallow = copy.copy(ar.grads)
    assert type(shallow) is type(ar.grads) and shallow is not ar.grads
    assert all(shallow[k] is v for k, v in ar.grads.items())
    shallow["dW"] = np.full((2, 3), 9.0)                # the same views: writes the arena
    np.testing.assert_array_equal(ar.grads["W"], 9.0)
    ar.grads["W"] = np.arange(6.0).reshape(2, 3)
    for g2 in (copy.deepcopy(ar.grads), pickle.loads(pickle.dumps(ar.grads))):
        assert type(g2) is type(ar.grads) and list(g2) == ["W", "b"]
        np.testing.assert_array_equal(g2["dW"], ar.grads["W"])
        assert not np.shares_memory(g2["W"], ar.flat_grads)
        g2["dW"] = np.zeros((2, 3))                     # still copies into its own views
        assert g2["W"].base is g2["b"].base
        np.testing.assert_array_equal(ar.grads["W"], np.arange(6.0).reshape(2, 3))
    for ar2, g2 in (copy.deepcopy((ar, ar.grads)), pickle.loads(pickle.dumps((ar, ar.grads))),
                    copy.deepcopy({"g": ar.grads, "a": ar}).values()):
        if isinstance(ar2, dict):
            ar2, g2 = g2, ar2
        assert g2 is ar2.grads
        assert np.shares_memory(g2["W"], ar2.flat_grads)
        g2["dW"] = np.full((2, 3), 4.0)
        opt = fo.SGD(ar2.params, lr=1.0)
        opt.step(g2)
        np.testing.assert_array_equal(ar2.params["W"], -3.0)


def test_assigning_a_parameter_copies_into_the_arena():
    """Was: ``arena.params["W"] = x`` (the course's way to set initial values) replaced the view
    with x, so the arena's buffer, ``flat_params``, the flat path and a pickle of the arena kept
    the old values (and a new shape broke unpickling); ``del``/``pop`` left a layout that
    pickling rebuilt wrong. Assignment copies into the view, as the grads' does."""
    import copy
    ar = fo.ParameterArena(np.float64, 20)
    W = ar.add("W", (2, 3))
    b = ar.add("b", 2)
    ar.params["W"] = np.arange(6.0).reshape(2, 3)
    ar.params |= {"b": [1.0, 2.0]}
    assert ar.params["W"] is W and ar.params["b"] is b
    np.testing.assert_array_equal(ar.flat_params, [0, 1, 2, 3, 4, 5, 1, 2])
    before = ar.flat_params.copy()
    for key, value, error, match in (
            ("W", np.zeros((3, 2)), ValueError, r"params\['W'\] has shape"),
            ("X", np.zeros(2), KeyError, "'X'.* no such parameter")):
        with pytest.raises(error, match=match):
            ar.params[key] = value
        with pytest.raises(error, match=match):            # b is not written either
            ar.params.update({"b": np.zeros(2), key: value})
    for remove in (lambda d: d.pop("W"), lambda d: d.popitem(), lambda d: d.clear(),
                   lambda d: d.__delitem__("W")):
        with pytest.raises(TypeError, match="cannot be removed"):
            remove(ar.params)
    assert ar.params.setdefault("W", np.ones((2, 3))) is W
    assert list(dict.items(ar.params)) == [("W", W), ("b", b)]
    np.testing.assert_array_equal(ar.flat_params, before)
    opt = fo.SGD(ar.params, lr=1.0)
    ar.grads["W"] = np.ones((2, 3))
    opt.step(ar.grads)
    assert opt._plans[0].span is not None                # still the flat path
    for ar2 in (pickle.loads(pickle.dumps(ar)), copy.deepcopy(ar)):
        assert ar2.flat_params.tobytes() == ar.flat_params.tobytes()
        assert ar2.params["W"].base is ar2.params["b"].base
        ar2.params["b"] = np.zeros(2)
        np.testing.assert_array_equal(ar2.flat_params[6:], 0)
    np.testing.assert_array_equal(b, [1, 2])


def test_a_grad_under_both_its_name_and_d_name_is_refused():
    """``{**arena.grads, "dW": new}`` holds W's grad twice, under 'W' (the arena's view) and
    'dW' (the new one): step used the first and silently ignored the new grad."""
    ar, w = _two_param_arena()
    opt = fo.SGD(ar.params, lr=1.0)
    for grads in ({**ar.grads, "dW": np.full((2, 3), 5.0)},
                  {"W": np.ones((2, 3)), "dW": np.full((2, 3), 5.0), "b": np.ones(2)}):
        with pytest.raises(ValueError, match="grads has both 'W' and 'dW' for parameter 'W'"):
            opt.step(grads)
    np.testing.assert_array_equal(w, 1.0)
    same = np.ones((2, 3))                  # the same array under both keys: no doubt
    opt.step({"W": same, "dW": same, "b": np.ones(2)})
    np.testing.assert_array_equal(w, 0.0)
    both = fo.SGD({"W": np.zeros(2), "dW": np.zeros(2)}, lr=1.0)    # 'dW' is a parameter
    both.step({"W": np.ones(2), "dW": np.full(2, 2.0)})
    np.testing.assert_array_equal(both.param_groups[0]["params"][1], -2.0)


def test_size_is_read_only():
    """``arena.size = 0`` was accepted, and the next ``add`` handed out the memory of the
    parameters already there (two parameters sharing their elements)."""
    ar = fo.ParameterArena(np.float32, 20)
    w = ar.add("W", 4, init=1.0)
    with pytest.raises(AttributeError):
        ar.size = 0
    assert ar.size == 4
    assert not np.shares_memory(ar.add("V", 4), w)


def test_complex_values_are_refused_naming_the_key_and_change_nothing():
    """NumPy's cast into the arena's float dtype dropped their imaginary parts (a
    ComplexWarning, an error only under -W error): params, grads and an add's init."""
    arena = fo.ParameterArena(np.float32, 16)
    arena.add("W", (2,), init=[1.0, 2.0])
    arena.grads["W"] = [3.0, 4.0]
    z = np.array([1 + 2j, 3 + 0j])
    with pytest.raises(TypeError, match=r"^grads\['dW'\]: complex"):
        arena.grads["dW"] = z
    with pytest.raises(TypeError, match=r"^params\['W'\]: complex"):
        arena.params["W"] = z
    with pytest.raises(TypeError, match=r"^grads\['W'\]: complex"):
        arena.grads.update(W=[1j, 0])
    with pytest.raises(TypeError, match=r"^init for 'X': complex"):
        arena.add("X", (2,), init=z)
    assert arena.params["W"].tolist() == [1.0, 2.0] and arena.grads["W"].tolist() == [3.0, 4.0]
    assert arena.size == 2 and "X" not in arena.params


def test_a_ragged_value_is_a_value_error_naming_the_key_and_changes_nothing():
    """The complex check, made first, raised NumPy's 'inhomogeneous shape' ValueError for a
    ragged list, naming neither the key nor the parameter."""
    arena = fo.ParameterArena(np.float64, 16)
    arena.add("W", (2, 2), init=1.0)
    ragged = [[1.0, 2.0], [3.0]]
    for assign, label in ((lambda: arena.params.__setitem__("W", ragged), r"params\['W'\]"),
                          (lambda: arena.grads.__setitem__("dW", ragged), r"grads\['dW'\]"),
                          (lambda: arena.grads.update(W=ragged), r"grads\['W'\]"),
                          (lambda: arena.add("X", (2, 2), init=ragged), "init for 'X'")):
        with pytest.raises(ValueError, match=rf"^{label} must be a rectangular array"):
            assign()
    assert arena.params["W"].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert not arena.grads["W"].any() and arena.size == 4 and "X" not in arena.params


def test_a_masked_value_is_refused_naming_the_key_and_changes_nothing():
    """The cast into the arena copied a masked array's data, the masked values included, its
    mask dropped silently (EWA, minibatches and the kernels refuse masked arrays for that):
    params, grads and an add's init."""
    arena = fo.ParameterArena(np.float64, 16)
    arena.add("W", (2,), init=1.0)
    masked = np.ma.masked_array([5.0, 6.0], mask=[False, True])
    for assign, label in ((lambda: arena.params.__setitem__("W", masked), r"params\['W'\]"),
                          (lambda: arena.grads.__setitem__("dW", masked), r"grads\['dW'\]"),
                          (lambda: arena.grads.update(W=masked), r"grads\['W'\]"),
                          (lambda: arena.add("X", (2,), init=masked), "init for 'X'")):
        with pytest.raises(TypeError, match=rf"^{label} must not be a masked array"):
            assign()
    assert arena.params["W"].tolist() == [1.0, 1.0] and not arena.grads["W"].any()
    assert arena.size == 2 and "X" not in arena.params


def test_arena_params_and_grads_keep_their_arena_alive():
    """Was: the dicts held their arena weakly, so a model built in a function that returned
    ``arena.params`` and ``arena.grads`` (as a torch model's parameters()) lost its arena on
    return: optimizers silently stepped the views as separate arrays (not the one-call path),
    ShardedOptimizer refused them ("put the model's parameters on a ParameterArena"), and an
    unpickled ``arena.params`` was views of an arena already gone. The dicts now keep it;
    views alone still do not (NumPy views keep the buffer), and the arena goes with the last
    dict that held it (no cycle left for the garbage collector)."""
    import gc
    import weakref

    def build():
        ar = fo.ParameterArena(np.float64, 20)
        ar.add("W", (2, 3), init=np.arange(6.0).reshape(2, 3))
        ar.add("b", 2)
        return ar

    gc.disable()            # every lifetime below is by reference count, not by the collector
    try:
        def model():
            ar = build()
            return ar.params, ar.grads

        params, grads = model()
        span = fo.ParameterArena.span_of(params)
        assert span is not None and span.arena.grads is grads
        opt = fo.SGD(params, lr=1.0)
        grads["dW"] = np.ones((2, 3))
        opt.step(grads)
        assert opt._plans[0].span is not None                  # the one-call path
        np.testing.assert_array_equal(params["W"], np.arange(6.0).reshape(2, 3) - 1)
        alive = weakref.ref(span.arena)
        W = params["W"]
        del span, opt, params
        assert alive() is not None                             # grads still hold it
        # the params dict it held weakly is gone: made again, the same names over the same
        # views (it was None: pickling grads, or an optimizer over them, raised AttributeError)
        assert list(alive().params) == ["W", "b"] and alive().params["W"] is W
        copied = pickle.loads(pickle.dumps(grads))
        np.testing.assert_array_equal(copied["dW"], np.ones((2, 3)))
        assert "2 params" in repr(alive())
        remade = alive().params
        del W, copied, grads
        # the dict made again keeps it, as the first did
        assert alive() is not None and fo.ParameterArena.span_of(remade) is not None
        del remade
        assert alive() is None                                 # gone with the last dict

        saved = pickle.loads(pickle.dumps(build().params))
        assert fo.ParameterArena.span_of(saved) is not None
        np.testing.assert_array_equal(saved["W"], np.arange(6.0).reshape(2, 3))

        ar = build()
        alive = weakref.ref(ar)
        del ar
        assert alive() is None                                 # nothing held: gone at once
        views = list(build().params.values())                  # views only: the arena goes
        assert fo.ParameterArena.span_of(views) is None
        with pytest.raises(TypeError, match=r"arena\.params cannot be replaced"):
            build().params = {}
    finally:
        gc.enable()


def _past_line(a):
    return a.__array_interface__["data"][0] % 64


def _state_arrays(params, configs):
    """(optimizer, index, param, its state arrays of the param's shape) for each optimizer
    ``cls(params, **kwargs)`` of ``configs`` after a step with grads of ones, and for a copy
    that loaded its state dict."""
    grads = [np.ones_like(p) for p in params]
    for cls, kwargs in configs:
        opt = cls(params, **kwargs)
        opt.step(grads)
        restored = cls(params, **kwargs)
        restored.load_state_dict(opt.state_dict())
        for o in (opt, restored):
            for i, p in enumerate(params):
                yield o, i, p, [a for a in o.state[i].values()
                                if isinstance(a, np.ndarray) and a.shape == p.shape]


def test_state_and_grads_lie_as_far_past_a_cache_line_as_their_params():
    """Arrays the optimizers and the arena allocate (state, the arena's grads and flat state,
    loaded state) lie as far past a 64-byte line as their parameter, so a step's arrays start
    whole lines together (fastopt._layout.like_lines; NumPy alone put them 0-48 bytes apart,
    which split each vector load and store of the others)."""
    def placed(skip):                         # (2, 5) float32 ``skip`` bytes past a line
        buf = np.zeros(40 + 128, np.uint8)
        start = -buf.__array_interface__["data"][0] % 64 + skip
        return buf[start:start + 40].view(np.float32).reshape(2, 5)
    params = [placed(skip) for skip in (0, 16, 32, 48)]
    configs = ((fo.Adam, dict(amsgrad=True)), (fo.NAdam, {}), (fo.RMSprop, {}),
               (fo.Adagrad, dict(initial_accumulator_value=0.5)),
               (fo.SGD, dict(lr=0.1, momentum=0.9)))
    for opt, i, p, arrays in _state_arrays(params, configs):
        assert all(_past_line(a) == _past_line(p) for a in arrays), (type(opt).__name__, i)
        if isinstance(opt, fo.Adagrad):       # (the initial value, then a grad of ones)
            assert (opt.state[i]["sum"] == 1.5).all()
    arena = fo.ParameterArena(np.float32, capacity=1000)
    for k in range(3):
        arena.add(f"w{k}", (7, 3))
    opt = fo.Adam(arena.params)
    opt.step(arena.grads)
    assert _past_line(arena.flat_grads) == _past_line(arena.flat_params)
    for i, p in enumerate(arena.params.values()):
        assert _past_line(opt.state[i]["exp_avg"]) == _past_line(p)


def _page_offset(a):
    return a.__array_interface__["data"][0] % 4096


def test_large_state_and_grads_take_their_own_place_in_the_page():
    """Large arrays the optimizers and the arena allocate lie a multiple of 512 bytes past
    their parameter's place within a 4 KiB page, each state key at its own (fastopt._layout
    .like_lines): at NumPy's places, a load from an array 64-256 bytes below a written one in
    the page waits on that array's stores (4K aliasing), which made a step up to 1.4x slower."""
    n = 20_000                                # 80 kB of float32: past _layout.SPREAD_MIN
    def placed(offset):                       # (n,) float32 ``offset`` bytes into a page
        buf = np.zeros(4 * n + 8192, np.uint8)
        start = -buf.__array_interface__["data"][0] % 4096 + offset
        return buf[start:start + 4 * n].view(np.float32)
    params = [placed(off) for off in (16, 1040, 4000, 3968)]
    configs = ((fo.Adam, dict(amsgrad=True)), (fo.NAdam, {}),
               (fo.RMSprop, dict(momentum=0.9, centered=True)), (fo.Adadelta, {}),
               (fo.SGD, dict(lr=0.1, momentum=0.9)))
    for opt, i, p, arrays in _state_arrays(params, configs):
        spots = [(_page_offset(a) - _page_offset(p)) % 4096 for a in arrays]
        assert spots and all(d % 512 == 0 and d for d in spots), (type(opt).__name__, spots)
        assert len(set(spots)) == len(spots), (type(opt).__name__, spots)
    arena = fo.ParameterArena(np.float32, capacity=1 << 16)
    for k in range(3):
        arena.add(f"w{k}", (100, 70))
    opt = fo.Adam(arena.params)
    opt.step(arena.grads)
    base = _page_offset(arena.flat_params)
    assert (_page_offset(arena.flat_grads) - base) % 4096 == 512
    spots = {(_page_offset(opt.state[0][key]) - _page_offset(arena.params["w0"])) % 4096
             for key in ("exp_avg", "exp_avg_sq")}
    assert len(spots) == 2 and all(d % 512 == 0 and d not in (0, 512) for d in spots), spots


def test_a_new_arena_takes_address_space_not_memory():
    """The default capacity (2**24 elements) is reserved, not touched: its zero grad buffer,
    filled, had taken 64 MiB (float32) at once, 128 MiB float64. Four of each here, in a
    process of their own: 768 MiB if touched."""
    code = ("import resource, numpy as np, fastopt as fo; "
            "rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; before = rss(); "
            "arenas = [fo.ParameterArena(d) for d in (np.float32, np.float64) * 4]; "
            "grown = (rss() - before) / 1024; assert grown < 32, f'{grown:.0f} MiB'; "
            "assert not arenas[0]._grad_buf.any() and not arenas[1]._grad_buf.any()")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_threads_adding_to_one_arena_get_stretches_of_their_own():
    """Two threads adding at once: add reads the free offset, copies ``init`` (NumPy casts a
    large float64 init with the GIL released) and only then takes the stretch, so without
    the arena's lock both had taken one offset (two parameters sharing memory)."""
    n = 1 << 18
    init = np.ones(n)
    for _ in range(5):
        arena = fo.ParameterArena(np.float32, 16 * n)
        barrier = threading.Barrier(2)

        def worker(t, arena=arena, barrier=barrier):
            barrier.wait()
            for k in range(8):
                arena.add(f"t{t}_{k}", n, init=init * (t + 1))
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        views = list(arena.params.items())
        assert arena.size == sum(v.size for _, v in views) == 16 * n
        for name, v in views:
            assert (v == (1 if name.startswith("t0") else 2)).all(), name


def test_an_interrupted_add_leaves_its_space_zero():
    """Ctrl-C while add copies ``init``: the values copied so far are zeroed again (a later
    add without init is zeros, as documented)."""
    class Interrupt:                   # a number (to the arena's check) that Ctrl-C hits
        def __float__(self):
            raise KeyboardInterrupt
    numbers.Real.register(Interrupt)
    arena = fo.ParameterArena(np.float32, 10)
    with pytest.raises(KeyboardInterrupt):
        arena.add("W", 4, init=np.array([5.0, 6.0, 7.0, Interrupt()], dtype=object))
    assert arena.size == 0 and "W" not in arena.params
    np.testing.assert_array_equal(arena.add("b", 4), np.zeros(4, np.float32))


def test_the_optimizer_zero_grad_zeroes_its_arena_grads():
    """opt.zero_grad() zeroes the grads an arena keeps for the optimizer's parameters (grads
    accumulated with += between steps, as in torch), and only theirs."""
    arena = fo.ParameterArena(np.float32, 10)
    w = arena.add("w", 2)
    other = arena.add("other", 3)
    opt = fo.SGD([{"params": [w], "lr": 1.0}], lr=1.0)
    arena.grads["dother"][...] = 7.0
    for _ in range(2):
        for _ in range(2):
            arena.grads["dw"] += 1.0
        opt.step([arena.grads["w"]])
        opt.zero_grad()
    np.testing.assert_array_equal(w, [-4, -4])
    np.testing.assert_array_equal(arena.grads["w"], [0, 0])
    np.testing.assert_array_equal(arena.grads["other"], [7, 7, 7])
    opt = fo.Adam(arena.params)                  # a whole arena: its stretch
    arena.grads["dw"][...] = 1.0
    opt.zero_grad(set_to_none=False)
    assert not arena.flat_grads.any()
    fo.SGD([np.ones(3)], lr=0.1).zero_grad()     # plain arrays: nothing to do


def test_grads_update_refuses_one_grad_under_both_names():
    """grads.update({"W": ..., "dW": ...}) names one grad twice: refused before anything is
    written, as step refuses such a dict."""
    arena = fo.ParameterArena(np.float32, 10)
    arena.add("W", 2)
    arena.add("b", 1)
    b, one, five = np.full(1, 3.0), np.ones(2), np.full(2, 5.0)
    for given in ({"b": b, "W": one, "dW": five}, {"b": b, "dW": five, "W": one}):
        with pytest.raises(ValueError, match="both 'W' and 'dW'|both 'dW' and 'W'"):
            arena.grads.update(given)
        with pytest.raises(ValueError, match="both"):
            arena.grads |= given
        assert not arena.flat_grads.any()


def test_arena_errors_name_what_is_wrong():
    """A float32 of the other byte order is float32 (the arena's buffers are native); None
    assigned to a parameter is a TypeError naming it; an init or a value beyond int range
    names the parameter too (OverflowError)."""
    arena = fo.ParameterArena(np.dtype(">f4"), 10)
    assert arena.dtype == np.float32 and arena.flat_params.dtype.isnative
    assert fo.ParameterArena(">f8", 1).dtype == np.float64
    with pytest.raises(TypeError, match="float32 or float64"):
        fo.ParameterArena(">i4")
    arena.add("b", 2)
    with pytest.raises(TypeError, match=r"params\['b'\].*None"):
        arena.params["b"] = None
    with pytest.raises(TypeError, match=r"grads\['db'\].*None"):
        arena.grads["db"] = None
    with pytest.raises(OverflowError, match=r"params\['b'\]"):
        arena.params["b"] = [10 ** 400, 1]
    with pytest.raises(OverflowError, match="init for 'c'"):
        arena.add("c", 2, init=[10 ** 400, 1])
    assert arena.size == 2 and not arena.flat_params.any()


def test_arena_refuses_values_that_are_not_numbers():
    """None inside a list, an object array of None, strings: NumPy's cast into the arena's
    float dtype would make them NaN or the numbers they spell, and the next step would train
    on them; refused naming the entry, nothing written."""
    arena = fo.ParameterArena(np.float32, 10)
    arena.add("b", 3)
    for value in ([None, None, None], np.array([None, 1, 2], dtype=object), "nan",
                  ["1", "2", "2.5"]):
        for target, key in ((arena.params, "b"), (arena.grads, "db")):
            with pytest.raises(TypeError, match=rf"\['{key}'\].*real numbers"):
                target[key] = value
            with pytest.raises(TypeError, match=rf"\['{key}'\].*real numbers"):
                target.update({key: value})
        with pytest.raises(TypeError, match="init for 'c'.*real numbers"):
            arena.add("c", 3, init=value)
    assert arena.size == 3 and not arena.flat_params.any() and not arena.flat_grads.any()
    arena.params["b"] = [True, 2, np.float64(2.5)]        # bools, ints, floats: numbers
    np.testing.assert_array_equal(arena.params["b"], [1, 2, 2.5])
    arena.params["b"] = np.array([np.True_, decimal.Decimal("1.5"), 3], dtype=object)
    np.testing.assert_array_equal(arena.params["b"], [1, 1.5, 3])


def test_state_read_from_an_arena_optimizer_stays_its_state_after_add_param_group():
    """add_param_group makes every group's plan again from its old one: an arena group's flat
    state is kept, so an array read from opt.state is still the one stepped (it had been
    copied into new buffers, the array read left behind)."""
    arena = fo.ParameterArena(np.float32, 100)
    arena.add("W", 3)
    arena.add("c", 2)
    arena.grads["W"][...] = 1.0
    opt = fo.Adam([arena.params["W"]])
    opt.step(arena.grads)
    held = opt.state[0]["exp_avg"]
    opt.add_param_group({"params": [arena.params["c"]]})
    opt.step(arena.grads)
    assert held is opt.state[0]["exp_avg"]
    np.testing.assert_allclose(held, 0.19, rtol=1e-6)       # 0.1, then 0.9 * 0.1 + 0.1


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_state_loaded_into_an_arena_optimizer_stays_its_state(backend):
    """load_state_dict puts an arena group's state into one flat buffer per key, which its
    next step keeps: an array read from opt.state after the load is the one stepped (it had
    been copied into new buffers at that step and left behind, a reset through it lost),
    with the bits of an optimizer that never saved."""
    def model():
        arena = fo.ParameterArena(np.float32, 100)
        arena.add("W", (2, 3), init=1.0)
        arena.add("b", 2, init=1.0)
        arena.add("c", 5, init=-1.0)
        arena.flat_grads[...] = np.linspace(-1, 1, arena.size)
        return arena
    with fo.use_backend(backend):
        a, b = model(), model()
        ref = fo.Adam(list(a.params.values()), lr=0.1)
        ref.step(a.grads)
        opt = fo.Adam(list(b.params.values()), lr=0.1)
        b.flat_params[...] = a.flat_params      # a checkpoint: parameters and state
        opt.load_state_dict(ref.state_dict())
        held = [opt.state[i]["exp_avg"] for i in range(3)]
        for o, arena in ((ref, a), (opt, b)):
            o.step(arena.grads)
        assert all(h is opt.state[i]["exp_avg"] for i, h in enumerate(held))
        np.testing.assert_array_equal(b.flat_params, a.flat_params)
        held[1][...] = 0                        # a reset through the array read
        ref.state[1]["exp_avg"][...] = 0
        for o, arena in ((ref, a), (opt, b)):
            o.step(arena.grads)
        np.testing.assert_array_equal(b.flat_params, a.flat_params)
        # the group's params list changed after the load: its loaded buffer is not kept
        opt.load_state_dict(ref.state_dict())
        for o, arena in ((ref, a), (opt, b)):
            o.param_groups[0]["params"] = list(arena.params.values())[:2]
            o.step([arena.grads["W"], arena.grads["b"]])
        np.testing.assert_array_equal(b.flat_params, a.flat_params)


def test_state_of_an_unpickled_arena_optimizer_stays_its_state():
    """An arena and its optimizer unpickled together: the copy's arena groups have their
    state in flat buffers at once (NumPy had pickled each view as an array of its own, which
    the first step then moved, leaving arrays read from the copy's opt.state behind); the
    copy steps as the original."""
    arena = fo.ParameterArena(np.float64, 50)
    arena.add("W", (3, 4), init=0.5)
    arena.add("b", 4, init=-0.5)
    arena.flat_grads[...] = np.linspace(-2, 2, arena.size)
    opt = fo.NAdam(arena.params, lr=0.1)
    opt.step(arena.grads)
    arena2, opt2 = pickle.loads(pickle.dumps((arena, opt)))
    held = [opt2.state[i][key] for i in range(2) for key in ("exp_avg", "exp_avg_sq")]
    for o, ar in ((opt, arena), (opt2, arena2)):
        o.step(ar.grads)
    assert all(h is opt2.state[i][key] for h, (i, key) in
               zip(held, [(i, key) for i in range(2) for key in ("exp_avg", "exp_avg_sq")]))
    np.testing.assert_array_equal(arena2.flat_params, arena.flat_params)
    np.testing.assert_array_equal(held[0], opt.state[0]["exp_avg"])


@pytest.mark.parametrize("add_group", [False, True])
def test_states_swapped_by_hand_on_an_arena_step_as_on_plain_arrays(add_group):
    """Two parameters' states swapped (opt.state[0], opt.state[1] = s1, s0, as torch allows),
    then a step (after add_param_group or not): each parameter steps with the state now its
    own, as on plain arrays. The group's flat buffer had been kept because every state was
    still a view of it, not checking each at its own parameter's place."""
    def run(on_arena):
        if on_arena:
            arena = fo.ParameterArena(np.float64, 100)
            params = [arena.add("a", 3, init=1.0), arena.add("b", 3, init=1.0)]
            extra = arena.add("c", 1)
            arena.grads["a"], arena.grads["b"] = np.full(3, 1.0), np.full(3, -3.0)
            grads = [arena.grads["a"], arena.grads["b"]]
        else:
            params, extra = [np.ones(3), np.ones(3)], np.zeros(1)
            grads = [np.full(3, 1.0), np.full(3, -3.0)]
        opt = fo.Adam(params, lr=0.1)
        opt.step(grads)
        opt.state[0], opt.state[1] = opt.state[1], opt.state[0]
        if add_group:
            opt.add_param_group({"params": [extra]})
            grads = grads + [np.zeros(1)]
        opt.step(grads)
        return [p.copy() for p in params] + [opt.state[i]["exp_avg"].copy() for i in range(2)]
    for got, want in zip(run(True), run(False)):
        np.testing.assert_array_equal(got, want)


def test_unpickling_moves_only_arena_state():
    """Unpickling puts only arena groups' state into flat buffers: a plain-array optimizer's
    state stays the arrays unpickled (an array pickled with it is its state), and an arena
    group with an empty 2-D parameter keeps its loaded buffer too."""
    params = [np.ones(3), np.ones((2, 2))]
    opt = fo.Adam(params)
    opt.step([np.ones(3), np.ones((2, 2))])
    held, copy = pickle.loads(pickle.dumps((opt.state[1]["exp_avg"], opt)))
    assert held is copy.state[1]["exp_avg"]
    arena = fo.ParameterArena(np.float32, 20)
    arena.add("w", 3, init=1.0)
    arena.add("e", (0, 2))
    arena.add("b", 2, init=1.0)
    arena.flat_grads[...] = 1.0
    ref = fo.Adam(list(arena.params.values()))
    ref.step(arena.grads)
    opt = fo.Adam(list(arena.params.values()))
    opt.load_state_dict(ref.state_dict())
    held = [opt.state[i]["exp_avg"] for i in range(3)]
    opt.step(arena.grads)
    assert all(h is opt.state[i]["exp_avg"] for i, h in enumerate(held))
