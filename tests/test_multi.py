"""Multi-tensor kernels (fo.ops.foreach_*) and the ParameterArena: one call per group gives the
same bits as one call per array, for mixed sizes, dtypes and layouts, on every backend."""
import pickle

import numpy as np
import pytest

import fastopt as fo
from conftest import COMPILED, GRID_BACKENDS, assert_close
from kernel_specs import make_group, run_group

ops = fo.ops

# name -> (state arrays with initial values, single step, multi step)
CASES = {
    "ewa": ({}, lambda p, g, s, t: ops.ewa_(p, g, 0.9),
            lambda p, g, s, t: ops.foreach_ewa_(p, g, 0.9)),
    "sgd_nesterov_wd": (
        {"buf": 0.0},
        lambda p, g, s, t: ops.sgd_step_(p, g, s["buf"], lr=0.1, momentum=0.9, nesterov=True,
                                         weight_decay=0.01, first_step=t == 1),
        lambda p, g, s, t: ops.foreach_sgd_step_(p, g, s["buf"], lr=0.1, momentum=0.9,
                                                 nesterov=True, weight_decay=0.01,
                                                 first_step=t == 1)),
    "sgd_plain_maximize": (
        {}, lambda p, g, s, t: ops.sgd_step_(p, g, lr=0.1, maximize=True),
        lambda p, g, s, t: ops.foreach_sgd_step_(p, g, lr=0.1, maximize=True)),
    "momentum": ({"v": 0.0}, lambda p, g, s, t: ops.momentum_step_(p, g, s["v"], lr=0.1),
                 lambda p, g, s, t: ops.foreach_momentum_step_(p, g, s["v"], lr=0.1)),
    "rmsprop_centered_momentum": (
        {"sq": 0.0, "ga": 0.0, "buf": 0.0},
        lambda p, g, s, t: ops.rmsprop_step_(p, g, s["sq"], lr=0.01, grad_avg=s["ga"],
                                             momentum_buffer=s["buf"], momentum=0.5),
        lambda p, g, s, t: ops.foreach_rmsprop_step_(p, g, s["sq"], lr=0.01,
                                                     grad_avgs=s["ga"],
                                                     momentum_buffers=s["buf"],
                                                     momentum=0.5)),
    "adagrad": ({"sum": 0.1}, lambda p, g, s, t: ops.adagrad_step_(p, g, s["sum"], t, lr=0.1,
                                                                    lr_decay=0.01),
                lambda p, g, s, t: ops.foreach_adagrad_step_(p, g, s["sum"], t, lr=0.1,
                                                             lr_decay=0.01)),
    "adam_amsgrad_wd": (
        {"m": 0.0, "v": 0.0, "vmax": 0.0},
        lambda p, g, s, t: ops.adam_step_(p, g, s["m"], s["v"], t, lr=0.01, weight_decay=0.1,
                                          max_exp_avg_sq=s["vmax"]),
        lambda p, g, s, t: ops.foreach_adam_step_(p, g, s["m"], s["v"], t, lr=0.01,
                                                  weight_decay=0.1, max_exp_avg_sqs=s["vmax"])),
    "adamw": (
        {"m": 0.0, "v": 0.0},
        lambda p, g, s, t: ops.adam_step_(p, g, s["m"], s["v"], t, lr=0.01, weight_decay=0.1,
                                          decoupled_weight_decay=True),
        lambda p, g, s, t: ops.foreach_adam_step_(p, g, s["m"], s["v"], t, lr=0.01,
                                                  weight_decay=0.1,
                                                  decoupled_weight_decay=True)),
}


def group(case, steps=4):
    """A random mixed group (kernel_specs.GROUP) with the case's state."""
    return make_group(CASES[case][0], steps=steps)


def run_single(case, backend, params, state, grads):
    run_group(CASES[case][1], backend, params, state, grads, multi=False)


def run_multi(case, backend, params, state, grads):
    run_group(CASES[case][2], backend, params, state, grads, multi=True)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_one_call_per_group_is_bit_identical_to_one_call_per_array(backend, case):
    p1, s1, grads = group(case)
    p2, s2, _ = group(case)
    run_single(case, backend, p1, s1, grads)
    run_multi(case, backend, p2, s2, grads)
    for a, b in zip(p1 + sum(s1.values(), []), p2 + sum(s2.values(), [])):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_multi_matches_the_reference(backend, case):
    if backend == "numpy":
        pytest.skip("the reference is the expected value")
    p1, s1, grads = group(case)
    p2, s2, _ = group(case)
    run_single(case, "numpy", p1, s1, grads)
    run_multi(case, backend, p2, s2, grads)
    for a, b in zip(p1 + sum(s1.values(), []), p2 + sum(s2.values(), [])):
        assert_close(b, a, a.dtype)


@pytest.mark.parametrize("backend", COMPILED)
def test_multi_is_bit_identical_for_any_thread_count(backend):
    results = []
    for threads in (1, 2):
        params, state, grads = group("adam_amsgrad_wd")
        fo.set_num_threads(threads)
        try:
            run_multi("adam_amsgrad_wd", backend, params, state, grads)
        finally:
            fo.set_num_threads(2)
        results.append([a.tobytes() for a in params + sum(state.values(), [])])
    assert results[0] == results[1]


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_bad_tensor_anywhere_changes_nothing(backend):
    params, state, grads = group("adam_amsgrad_wd", steps=1)
    state["v"][4] = np.zeros((2, 2))                 # wrong shape, late in the list
    before = [a.copy() for a in params + sum(state.values(), [])]
    with fo.use_backend(backend), pytest.raises(ValueError, match=r"exp_avg_sqs\[4\]"):
        ops.foreach_adam_step_(params, grads[0], state["m"], state["v"], 1,
                               max_exp_avg_sqs=state["vmax"])
    for a, b in zip(params + sum(state.values(), []), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_lists_of_different_lengths_are_refused(backend):
    ps = [np.zeros(3), np.zeros(4)]
    with fo.use_backend(backend), pytest.raises(ValueError, match="grads"):
        ops.foreach_sgd_step_(ps, [np.zeros(3)], lr=0.1)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_grad_of_the_wrong_dtype_is_a_type_error_naming_it(backend):
    ps = [np.zeros(3, np.float32), np.zeros(4, np.float32)]
    gs = [np.zeros(3, np.float32), np.zeros(4, np.float64)]
    with fo.use_backend(backend), pytest.raises(TypeError, match=r"grads\[1\]"):
        ops.foreach_momentum_step_(ps, gs, [np.zeros(3, np.float32), np.zeros(4, np.float32)],
                                   lr=0.1)


# ------------------------------------------------------------------------ optimizers
OPTIMIZERS = [(fo.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
              (fo.SGD, dict(lr=0.1)),
              (fo.Momentum, dict(lr=0.1, beta=0.8)),
              (fo.RMSprop, dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.01)),
              (fo.Adagrad, dict(lr=0.1, initial_accumulator_value=0.1)),
              (fo.Adam, dict(lr=0.01, amsgrad=True)),
              (fo.AdamW, dict(lr=0.01))]
SHAPES = [(3, 4), (5,), (), (0,), (129,)]


def _grads(rng, dtype):
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


@pytest.mark.parametrize("opt_cls,kwargs", OPTIMIZERS,
                         ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(OPTIMIZERS)])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_arena_optimizer_matches_separate_arrays_bit_for_bit(backend, opt_cls, kwargs, dtype):
    rng = np.random.default_rng(0)
    inits = _grads(rng, dtype)
    arena = fo.ParameterArena(dtype, capacity=1000)
    views = [arena.add(f"p{k}", s, init=x) for k, (s, x) in enumerate(zip(SHAPES, inits))]
    separate = [x.copy() for x in inits]
    with fo.use_backend(backend):
        o_arena = opt_cls(arena.params, **kwargs)
        o_sep = opt_cls(separate, **kwargs)
        for _ in range(5):
            gs = _grads(rng, dtype)
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
            np.testing.assert_array_equal(sd_a["state"][i][key], value)
    # the flat path really ran: the state lives in one buffer per key
    first = o_arena.state[0]
    for key, value in first.items():
        if isinstance(value, np.ndarray) and value.size:
            assert value.base is not None and o_arena.state[1][key].base is value.base


def test_arena_state_dict_resumes_exactly():
    rng = np.random.default_rng(1)
    arena = fo.ParameterArena(np.float64)
    for k, s in enumerate(SHAPES):
        arena.add(f"w{k}", s, init=rng.standard_normal(s))
    opt = fo.Adam(arena.params, lr=0.01)
    grads = [_grads(rng, np.float64) for _ in range(6)]

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
