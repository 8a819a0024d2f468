"""Adadelta, Adamax, NAdam and RAdam: their kernels on every backend against the NumPy
reference (25 steps, so RAdam runs both sides of its rho_t switch), multi-tensor calls and the
arena, NaN/Inf and thread counts; the optimizers against torch.optim (trajectories, NaN/Inf,
state dicts, ours and torch's), and the hyper-parameter checks."""
import functools
import pickle

import numpy as np
import pytest

import fastopt as fo
from conftest import COMPILED, GRID_BACKENDS, assert_close, needs_torch, torch
from kernel_specs import make_group, random_run, run_group, run_steps

SHAPES = [(3, 4), (5,), (), (0,), (17,)]
VARIANTS = [
    ("Adadelta", {}),
    ("Adadelta", dict(lr=0.5, rho=0.95, eps=1e-4, weight_decay=0.1, maximize=True)),
    ("Adamax", {}),
    ("Adamax", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, maximize=True)),
    ("NAdam", {}),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, momentum_decay=0.01)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("RAdam", {}),
    ("RAdam", dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1)),
    ("RAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(VARIANTS)]
STEPS = 25          # RAdam switches to the rectified step at t = 6 with the default betas


def _grads(rng, dtype=np.float64):
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _to_numpy_state_dict(sd):
    """A torch state dict with its tensors turned into NumPy arrays, as a user would save it."""
    state = {i: {k: (v.detach().numpy().copy() if hasattr(v, "numpy") else v)
                 for k, v in s.items()} for i, s in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


@needs_torch
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_trajectory_matches_torch(backend, name, kwargs):
    rng = np.random.default_rng(0)
    params = _grads(rng)
    ours = [p.copy() for p in params]
    theirs = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    with fo.use_backend(backend):
        opt = getattr(fo, name)(ours, **kwargs)
        ref = getattr(torch.optim, name)(theirs, **kwargs)
        for _ in range(STEPS):
            grads = _grads(rng)
            opt.step(grads)
            for t, g in zip(theirs, grads):
                t.grad = torch.from_numpy(g.copy())
            ref.step()
    for a, b in zip(ours, theirs):
        # float64 throughout: the only differences are the last-bit roundings of a few
        # reordered scalar products (the folded step sizes), amplified by 25 steps
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert sorted(opt.state[0]) == sorted(ref.state_dict()["state"][0])


@needs_torch
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
def test_a_torch_state_dict_loads_and_continues_in_step(name, kwargs):
    rng = np.random.default_rng(1)
    params = _grads(rng)
    theirs = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    ref = getattr(torch.optim, name)(theirs, **kwargs)
    for _ in range(8):
        for t, g in zip(theirs, _grads(rng)):
            t.grad = torch.from_numpy(g)
        ref.step()
    ours = [t.detach().numpy().copy() for t in theirs]
    opt = getattr(fo, name)(ours, **kwargs)
    opt.load_state_dict(_to_numpy_state_dict(ref.state_dict()))
    for _ in range(8):
        grads = _grads(rng)
        opt.step(grads)
        for t, g in zip(theirs, grads):
            t.grad = torch.from_numpy(g.copy())
        ref.step()
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_resuming_from_a_pickled_state_dict_is_exact(backend, name, kwargs, dtype):
    rng = np.random.default_rng(2)
    grads = [_grads(rng, dtype) for _ in range(12)]
    start = _grads(rng, dtype)
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


BAD = [
    ("Adadelta", dict(lr=-1.0), "lr"), ("Adadelta", dict(rho=1.5), "rho"),
    ("Adadelta", dict(eps=-1e-6), "eps"), ("Adadelta", dict(weight_decay=-0.1), "weight_decay"),
    ("Adamax", dict(betas=(1.0, 0.9)), "beta1"), ("Adamax", dict(betas=(0.9, -0.1)), "beta2"),
    ("NAdam", dict(momentum_decay=-1.0), "momentum_decay"), ("NAdam", dict(lr=-0.1), "lr"),
    ("RAdam", dict(eps=-1.0), "eps"), ("RAdam", dict(betas=(0.9, 1.0)), "beta2"),
]


@pytest.mark.parametrize("name,kwargs,word", BAD, ids=[f"{n}-{w}" for n, _, w in BAD])
def test_bad_hyper_parameters_raise_with_name_and_value(name, kwargs, word):
    value = next(iter(kwargs.values()))
    with pytest.raises(ValueError, match=word) as info:
        getattr(fo, name)([np.zeros(3)], **kwargs)
    shown = value if not isinstance(value, tuple) else value[0 if "1" in word else 1]
    assert repr(shown) in str(info.value)


def test_radam_takes_the_unrectified_step_first():
    """While rho_t <= 5 (the first 5 steps with the default betas) RAdam is SGD with
    bias-corrected momentum: with a constant grad g the first step moves by exactly lr * g."""
    p = np.array([1.0, -2.0])
    fo.RAdam([p], lr=0.1).step([np.array([0.5, 0.25])])
    np.testing.assert_allclose(p, [1.0 - 0.05, -2.0 - 0.025], rtol=1e-15)


# =========================================================================== the kernels
# The equivalence grid: each kernel, on every backend, against the NumPy reference run on
# contiguous arrays, over dtypes, sizes (0-d, empty, odd, above the parallel threshold) and
# layouts, for 25 steps with fresh grads each step.
ops = fo.ops

STATE_KEYS = {"adadelta": ("square_avg", "acc_delta"), "adamax": ("exp_avg", "exp_inf"),
              "nadam": ("exp_avg", "exp_avg_sq"), "radam": ("exp_avg", "exp_avg_sq")}
# case -> (kernel, keyword arguments of fo.ops.<kernel>_step_)
KERNEL_CASES = {
    "adadelta": ("adadelta", {}),
    "adadelta_wd_maximize": ("adadelta", dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1,
                                              maximize=True)),
    "adamax": ("adamax", dict(lr=0.01)),
    "adamax_wd_maximize": ("adamax", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6,
                                          weight_decay=0.1, maximize=True)),
    "nadam_wd": ("nadam", dict(lr=0.01, weight_decay=0.1, momentum_decay=0.01)),
    "nadam_decoupled_maximize": ("nadam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1,
                                               decoupled_weight_decay=True, maximize=True)),
    "radam_wd": ("radam", dict(lr=0.01, weight_decay=0.1)),
    "radam_decoupled_maximize": ("radam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1,
                                               decoupled_weight_decay=True, maximize=True)),
}
KERNEL_SHAPES = [(), (0,), (7,), (1031,), (70001,), (33, 31)]
LAYOUTS = ["contiguous", "strided", "transposed", "mixed"]
KERNEL_STEPS = 25


def call_kernel(case, p, g, state, t, multi=False):
    """One step of the case's fo.ops kernel (``foreach_`` form with lists when ``multi``);
    ``state`` holds the state arrays (lists) by torch's key and NAdam's ``mu_product`` (1.0
    until the first step)."""
    kernel, kwargs = KERNEL_CASES[case]
    fn = getattr(ops, f"{'foreach_' if multi else ''}{kernel}_step_")
    arrays = [state[k] for k in STATE_KEYS[kernel]]
    if kernel == "adadelta":
        fn(p, g, *arrays, **kwargs)
    elif kernel == "nadam":
        state["mu_product"] = fn(p, g, *arrays, t, state.get("mu_product", 1.0), **kwargs)
    else:
        fn(p, g, *arrays, t, **kwargs)


kernel_inputs = functools.partial(random_run, steps=KERNEL_STEPS)


def run_kernel(case, backend, p0, grads, layout, threads=None):
    """The case ``len(grads)`` times on ``backend``: :func:`kernel_specs.run_steps`."""
    init = dict.fromkeys(STATE_KEYS[KERNEL_CASES[case][0]], 0.0)
    return run_steps(functools.partial(call_kernel, case), init, backend, p0, grads, layout,
                     threads)


@functools.lru_cache(maxsize=None)
def expected_run(case, shape, dtype):
    """The reference's result on contiguous arrays (computed once per case, shape, dtype)."""
    p0, grads = kernel_inputs(shape, dtype)
    return run_kernel(case, "numpy", p0, grads, "contiguous")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=str)
@pytest.mark.parametrize("case", KERNEL_CASES)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_kernel_matches_the_reference_over_25_steps(backend, case, shape, layout, dtype):
    if backend == "numpy" and layout == "contiguous":
        pytest.skip("the reference on contiguous arrays is the expected value itself")
    p0, grads = kernel_inputs(shape, dtype)
    expected_p, expected_state = expected_run(case, shape, dtype)
    p, state = run_kernel(case, backend, p0, grads, layout)
    assert p.dtype == dtype and p.shape == p0.shape
    assert_close(p, expected_p, dtype, f"param of {case}")
    for k in state:
        assert state[k].dtype == dtype
        assert_close(state[k], expected_state[k], dtype, f"state {k} of {case}")


@pytest.mark.parametrize("layout", ["contiguous", "mixed"])
@pytest.mark.parametrize("case", KERNEL_CASES)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_kernel_gives_the_reference_bits(backend, case, layout, dtype):
    """Element-wise kernels do the reference's operations in its order and precision (no
    FMA contraction, no fast-math, scalars folded in float64 then cast), so they agree to
    the bit, serially (1031) and in parallel (70001)."""
    for shape in [(1031,), (70001,)]:
        p0, grads = kernel_inputs(shape, dtype)
        expected_p, expected_state = expected_run(case, shape, dtype)
        p, state = run_kernel(case, backend, p0, grads, layout)
        assert p.tobytes() == expected_p.tobytes()
        for k in state:
            assert state[k].tobytes() == expected_state[k].tobytes(), k


@pytest.mark.parametrize("case", [c for c, (k, _) in KERNEL_CASES.items() if k == "radam"])
def test_the_radam_cases_run_both_sides_of_the_switch(case):
    """rho_t (torch's formula) is <= 5 on the first step and > 5 on the last one, so the grid
    holds both the un-rectified and the rectified update to the reference."""
    beta2 = KERNEL_CASES[case][1].get("betas", (0.9, 0.999))[1]
    rho_inf = 2 / (1 - beta2) - 1
    rho = [rho_inf - 2 * t * beta2 ** t / (1 - beta2 ** t) for t in (1, KERNEL_STEPS)]
    assert rho[0] <= 5 < rho[1]


@pytest.mark.parametrize("case", KERNEL_CASES)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_kernel_nan_and_inf_propagate_as_in_the_reference(backend, case, dtype):
    p0, grads = kernel_inputs((64,), dtype)
    p0[3], p0[5] = np.nan, np.inf
    grads[0][7], grads[9][9], grads[19][11], grads[12][13] = np.nan, np.inf, -np.inf, np.nan
    expected_p, expected_state = run_kernel(case, "numpy", p0, grads, "contiguous")
    p, state = run_kernel(case, backend, p0, grads, "contiguous")
    np.testing.assert_array_equal(p, expected_p)   # NaN positions must match too
    for k in state:
        np.testing.assert_array_equal(state[k], expected_state[k], err_msg=k)
    # a NaN grad poisons its element from then on, and only its element
    assert np.isnan(p[3]) and np.isnan(p[7]) and np.isnan(p[13])
    assert np.isfinite(p[0]) and np.isfinite(p[8])


def test_adamax_infinity_norm_keeps_nan():
    """exp_inf = max(beta2 * exp_inf, |g| + eps) with torch.maximum's NaN rule: a NaN on
    either side gives NaN (a plain max would drop it on one side)."""
    for backend in GRID_BACKENDS:
        with fo.use_backend(backend):
            p = np.zeros(3)
            m, u = np.zeros(3), np.array([np.nan, 1.0, 1.0])
            ops.adamax_step_(p, np.array([0.5, np.nan, 0.5]), m, u, 1, lr=0.1, betas=(0.9, 0.5))
            assert np.isnan(u[0]) and np.isnan(u[1]), backend
            assert u[2] == 0.5 + 1e-8, backend      # max(0.5 * 1.0, 0.5 + eps)


@pytest.mark.parametrize("case", KERNEL_CASES)
@pytest.mark.parametrize("backend", COMPILED)
def test_kernel_is_bit_identical_for_any_thread_count(backend, case, dtype):
    p0, grads = kernel_inputs((100003,), dtype)
    p1, s1 = run_kernel(case, backend, p0, grads, "contiguous", threads=1)
    p2, s2 = run_kernel(case, backend, p0, grads, "contiguous", threads=2)
    assert p1.tobytes() == p2.tobytes()
    assert all(s1[k].tobytes() == s2[k].tobytes() for k in s1)


# ------------------------------------------------------------------- multi-tensor calls
def group(case, steps=KERNEL_STEPS):
    """A random mixed group (kernel_specs.GROUP) with the case's state, zeros."""
    return make_group(dict.fromkeys(STATE_KEYS[KERNEL_CASES[case][0]], 0.0), seed=3,
                      steps=steps)


def run_in_group(case, backend, params, state, grads, multi):
    """Step the group with one foreach call per step (``multi``) or one call per array."""
    return run_group(functools.partial(call_kernel, case, multi=multi), backend, params, state,
                     grads, multi)


@pytest.mark.parametrize("case", KERNEL_CASES)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_one_call_per_group_gives_the_bits_of_one_call_per_array(backend, case):
    single = run_in_group(case, backend, *group(case), multi=False)
    multi = run_in_group(case, backend, *group(case), multi=True)
    for a, b in zip(single, multi):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("case", KERNEL_CASES)
@pytest.mark.parametrize("backend", [b for b in GRID_BACKENDS if b != "numpy"])
def test_one_call_per_group_matches_the_reference(backend, case):
    expected = run_in_group(case, "numpy", *group(case), multi=False)
    actual = run_in_group(case, backend, *group(case), multi=True)
    for a, b in zip(actual, expected):
        assert_close(a, b, b.dtype)


@pytest.mark.parametrize("backend", COMPILED)
def test_one_call_per_group_is_bit_identical_for_any_thread_count(backend):
    results = []
    for threads in (1, 2):
        fo.set_num_threads(threads)
        try:
            arrays = run_in_group("radam_wd", backend, *group("radam_wd"), multi=True)
        finally:
            fo.set_num_threads(2)
        results.append([a.tobytes() for a in arrays])
    assert results[0] == results[1]


@pytest.mark.parametrize("kernel", STATE_KEYS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_bad_array_anywhere_in_a_group_changes_nothing(backend, kernel):
    case = next(c for c, (k, _) in KERNEL_CASES.items() if k == kernel)
    params, state, grads = group(case, steps=1)
    key = STATE_KEYS[kernel][1]
    state[key][4] = np.zeros((2, 2))                 # wrong shape, late in the list
    before = [a.copy() for a in params + sum(state.values(), [])]
    with fo.use_backend(backend), pytest.raises(ValueError, match=rf"{key}s\[4\]"):
        call_kernel(case, params, grads[0], dict(state, mu_product=1.0), 1, multi=True)
    for a, b in zip(params + sum(state.values(), []), before):
        np.testing.assert_array_equal(a, b)


# ======================================================================= the optimizers
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


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_trajectory_follows_torchs_formulas(backend, name, kwargs):
    rng = np.random.default_rng(7)
    start = _grads(rng)
    grad_steps = [_grads(rng) for _ in range(STEPS)]
    ours = [p.copy() for p in start]
    with fo.use_backend(backend):
        opt = getattr(fo, name)(ours, **kwargs)
        for grads in grad_steps:
            opt.step(grads)
    for a, b in zip(ours, torch_formula(name, kwargs, start, grad_steps)):
        # float64; the kernels fold the step sizes into fewer roundings than torch: ulps
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@needs_torch
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
def test_the_transcription_of_torchs_formulas_is_torch(name, kwargs):
    rng = np.random.default_rng(8)
    start = _grads(rng)
    grad_steps = [_grads(rng) for _ in range(STEPS)]
    theirs = [torch.tensor(p.copy(), requires_grad=True) for p in start]
    ref = getattr(torch.optim, name)(theirs, **kwargs)
    for grads in grad_steps:
        for t, g in zip(theirs, grads):
            t.grad = torch.from_numpy(g.copy())
        ref.step()
    for a, b in zip(torch_formula(name, kwargs, start, grad_steps), theirs):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-14, atol=1e-16)


@needs_torch
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_nan_and_inf_grads_go_where_torchs_go(backend, name, kwargs):
    rng = np.random.default_rng(9)
    start = [rng.standard_normal(40)]
    grad_steps = [[rng.standard_normal(40)] for _ in range(STEPS)]
    grad_steps[0][0][3], grad_steps[4][0][5] = np.nan, np.inf
    grad_steps[9][0][7], grad_steps[15][0][9] = -np.inf, np.nan
    ours = [start[0].copy()]
    theirs = [torch.tensor(start[0].copy(), requires_grad=True)]
    with fo.use_backend(backend):
        opt = getattr(fo, name)(ours, **kwargs)
        ref = getattr(torch.optim, name)(theirs, **kwargs)
        for grads in grad_steps:
            opt.step(grads)
            theirs[0].grad = torch.from_numpy(grads[0].copy())
            ref.step()
    expected = theirs[0].detach().numpy()
    np.testing.assert_array_equal(np.isnan(ours[0]), np.isnan(expected))
    np.testing.assert_allclose(ours[0], expected, rtol=1e-12, atol=1e-14, equal_nan=True)
    for key, value in ref.state[theirs[0]].items():
        if key not in ("step", "mu_product"):
            np.testing.assert_array_equal(np.isnan(opt.state[0][key]), np.isnan(value.numpy()),
                                          err_msg=key)


@needs_torch
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
def test_our_state_dict_loads_into_torch_and_continues_in_step(name, kwargs):
    rng = np.random.default_rng(10)
    ours = _grads(rng)
    opt = getattr(fo, name)(ours, **kwargs)
    for _ in range(8):
        opt.step(_grads(rng))
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
    for _ in range(8):
        grads = _grads(rng)
        opt.step(grads)
        for t, g in zip(theirs, grads):
            t.grad = torch.from_numpy(g.copy())
        ref.step()
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
def test_state_dict_survives_npz_and_resumes_exactly(name, kwargs, tmp_path):
    rng = np.random.default_rng(11)
    start = _grads(rng, np.float32)
    grad_steps = [_grads(rng, np.float32) for _ in range(12)]
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


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_an_arena_steps_in_one_call_with_the_bits_of_separate_arrays(backend, name, kwargs,
                                                                      dtype):
    rng = np.random.default_rng(12)
    inits = _grads(rng, dtype)
    arena = fo.ParameterArena(dtype, capacity=1000)
    views = [arena.add(f"p{k}", s, init=x) for k, (s, x) in enumerate(zip(SHAPES, inits))]
    separate = [x.copy() for x in inits]
    with fo.use_backend(backend):
        o_arena = getattr(fo, name)(arena.params, **kwargs)
        o_sep = getattr(fo, name)(separate, **kwargs)
        for _ in range(STEPS):
            gs = _grads(rng, dtype)
            for k, g in enumerate(gs):
                arena.grads[f"dp{k}"] = g
            o_arena.step(arena.grads)
            o_sep.step(gs)
    for a, b in zip(views, separate):
        assert a.tobytes() == b.tobytes()
    sd_a, sd_s = o_arena.state_dict(), o_sep.state_dict()
    for i in sd_s["state"]:
        assert sd_a["state"][i].keys() == sd_s["state"][i].keys()
        for key, value in sd_s["state"][i].items():
            np.testing.assert_array_equal(sd_a["state"][i][key], value, err_msg=key)


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
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


@pytest.mark.parametrize("name", ["Adadelta", "Adamax", "NAdam", "RAdam"])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_bad_grad_changes_nothing(backend, name):
    rng = np.random.default_rng(15)
    params = [rng.standard_normal((3, 4)), rng.standard_normal(5), rng.standard_normal(2)]
    with fo.use_backend(backend):
        opt = getattr(fo, name)(params)
        for _ in range(3):
            opt.step([rng.standard_normal(p.shape) for p in params])
        before = [p.copy() for p in params]
        state_before = pickle.dumps(opt.state_dict())
        for bad, exc in [(np.zeros(3), ValueError), (np.zeros(2, np.float32), TypeError)]:
            with pytest.raises(exc, match="parameter 2"):
                opt.step([np.ones((3, 4)), np.ones(5), bad])
    for p, b in zip(params, before):
        assert p.tobytes() == b.tobytes()
    assert pickle.dumps(opt.state_dict()) == state_before


MORE_BAD = [
    ("Adadelta", dict(rho=-0.1), "rho"), ("Adadelta", dict(rho=float("nan")), "rho"),
    ("Adadelta", dict(lr=float("nan")), "lr"),
    ("Adamax", dict(lr=-2e-3), "lr"), ("Adamax", dict(eps=-1.0), "eps"),
    ("Adamax", dict(weight_decay=-0.5), "weight_decay"), ("Adamax", dict(betas=(0.9,)), "betas"),
    ("NAdam", dict(eps=-1e-8), "eps"), ("NAdam", dict(weight_decay=-1.0), "weight_decay"),
    ("NAdam", dict(betas=(-0.1, 0.9)), "beta1"), ("NAdam", dict(betas=(0.9, 1.5)), "beta2"),
    ("RAdam", dict(lr=-1e-3), "lr"), ("RAdam", dict(weight_decay=-1e-2), "weight_decay"),
    ("RAdam", dict(betas=(1.0, 0.999)), "beta1"),
]


@pytest.mark.parametrize("name,kwargs,word", MORE_BAD,
                         ids=[f"{n}-{w}-{i}" for i, (n, _, w) in enumerate(MORE_BAD)])
def test_more_bad_hyper_parameters_raise_naming_them(name, kwargs, word):
    with pytest.raises(ValueError, match=word):
        getattr(fo, name)([np.zeros(3)], **kwargs)


@pytest.mark.parametrize("name,kwargs", [
    ("Adadelta", dict(rho=0.0)), ("Adadelta", dict(rho=1.0, lr=0.0)),
    ("Adamax", dict(betas=(0.0, 0.0), eps=0.0)), ("NAdam", dict(momentum_decay=0.0)),
    ("RAdam", dict(betas=(0.0, 0.0)))])
def test_the_edges_torch_accepts_are_accepted(name, kwargs):
    p = np.ones(3)
    getattr(fo, name)([p], **kwargs).step([np.full(3, 0.5)])
    assert not np.isnan(p).any()
