"""fastopt.torch: the torch.optim subclasses stepped by fastopt's kernels.

torch's own optimizer test inputs (``optim_db``, every CPU input of the nine optimizers) on the
active backend: 25-step trajectories and state dicts against torch.optim (``foreach=False``) in
float32 and float64. Then the torch.optim behaviour a training loop relies on: schedulers,
closures, zero_grad, add_param_group, state-dict exchange with torch.optim both ways,
checkpoint/resume, frozen parameters and None grads, hooks, autograd's version counter, and
the errors. bfloat16/float16 parameters: their float32 master copy against torch.optim on
float32 copies, the parameter bits against torch's rounding of the master. The whole file
skips without torch; the optim_db grid also needs ``expecttest`` (torch's test-suite
dependency, in the ``test`` extra).
"""
import copy
import fractions
import inspect
import io
import math
import operator
import os
import pickle
import subprocess
import sys
import threading
import warnings
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastopt.torch as ft  # noqa: E402
from conftest import GRID_BACKENDS, WatchedLock, held_at, optim_db_params  # noqa: E402
from fastopt import ops  # noqa: E402
from fastopt.reference import lowp  # noqa: E402

NAMES = ft.__all__
STEPS = 25      # RAdam switches to its rectified step at t = 6 with the default betas
SHAPES = [(3, 4), (5,), (), (0,), (17,), (2, 3, 2)]
DTYPES = [torch.float32, torch.float64]
HALVES = [torch.bfloat16, torch.float16]
COMPLEX = [torch.complex64, torch.complex128]   # stepped as torch.optim does: on view_as_real

# optim_db inputs fastopt.torch cannot honour, by option: none of torch 2.13's CPU inputs sets
# them, but a newer torch's might
UNHONOURED = {
    "fused": "torch's own fused kernel (and its GradScaler protocol)",
    "capturable": "CUDA/XPU graph capture",
    "differentiable": "autograd through the step",
}


def _params(dtype, seed=0):
    """Shapes with a 0-d, an empty and a transposed (non-contiguous) parameter."""
    gen = torch.Generator().manual_seed(seed)
    wide = dtype if dtype in DTYPES + COMPLEX else torch.float32
    ps = [torch.randn(s, generator=gen, dtype=wide).to(dtype) for s in SHAPES]
    ps.append(torch.randn(4, 3, generator=gen, dtype=wide).to(dtype).t())
    return ps


def _pair(name, kwargs, dtype=torch.float64, seed=0, extra=0):
    """The same parameters under fastopt.torch and under torch.optim (single-tensor);
    ``extra`` more of shape (3,) after _params'."""
    init = _params(dtype, seed)
    gen = torch.Generator().manual_seed(seed + 100)
    init += [torch.randn(3, generator=gen, dtype=dtype) for _ in range(extra)]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    theirs = [torch.nn.Parameter(t.clone()) for t in init]
    return (ours, getattr(ft, name)(ours, **copy.deepcopy(kwargs)),
            theirs, getattr(torch.optim, name)(theirs, foreach=False, **copy.deepcopy(kwargs)))


def _set_grads(gen, *param_lists):
    """The same random grads on each list (a None entry in the first list: no grad)."""
    for ps in zip(*param_lists):
        g = torch.randn(ps[0].shape, generator=gen, dtype=ps[0].dtype)
        for p in ps:
            p.grad = g.clone()


def _flat(t):
    """``t``'s values as a flat float64 tensor (a complex one's real and imaginary parts)."""
    t = t.detach()
    return (torch.view_as_real(t.resolve_conj()) if t.is_complex() else t).reshape(-1).double()


def _ulps(actual, expected):
    """max |actual - expected| in units of the spacing of max |expected| (norm-wise ulps;
    complex tensors: of their real and imaginary parts, in their real dtype)."""
    a = torch.cat([_flat(t) for t in actual])
    b = torch.cat([_flat(t) for t in expected])
    if b.numel() == 0:
        return 0.0
    dtype = expected[0].dtype.to_real()
    scale = np.spacing(np.array(b.abs().max().item(), dtype=str(dtype).split(".")[1]))
    return (a - b).abs().max().item() / float(scale)


def assert_trajectories_close(ours, theirs, opt, ref, param_ulps=4, state_ulps=8):
    """Parameters within ``param_ulps`` and each state key (over all parameters) within
    ``state_ulps`` of the largest value; the same state keys, tensor dtypes and groups."""
    assert _ulps(ours, theirs) <= param_ulps
    sd, rsd = opt.state_dict(), ref.state_dict()
    assert sd["state"].keys() == rsd["state"].keys()
    for i, entry in rsd["state"].items():
        assert sd["state"][i].keys() == entry.keys()
        for key, value in entry.items():
            assert sd["state"][i][key].dtype == value.dtype, key
            assert sd["state"][i][key].shape == value.shape, key
    for key in next(iter(rsd["state"].values()), ()):
        worst = _ulps([s[key] for s in sd["state"].values()],
                      [s[key] for s in rsd["state"].values()])
        assert worst <= state_ulps, (key, worst)
    strip = lambda g: {k: v for k, v in g.items()  # noqa: E731
                       if k not in ("foreach", "max_grad_norm")}
    assert [strip(g) for g in sd["param_groups"]] == [strip(g) for g in rsd["param_groups"]]


def step_both_and_compare(name, kwargs, dtype, steps):
    """``steps`` steps of fastopt.torch's and torch.optim's ``name`` on the same grads, then
    :func:`assert_trajectories_close`."""
    ours, opt, theirs, ref = _pair(name, kwargs, dtype)
    continue_both_and_compare(torch.Generator().manual_seed(1), ours, opt, theirs, ref, steps)


def continue_both_and_compare(gen, ours, opt, theirs, ref, steps):
    """``steps`` more steps of ``opt`` (over ``ours``) and ``ref`` (over ``theirs``) on the
    same grads from ``gen``, then :func:`assert_trajectories_close`."""
    for _ in range(steps):
        _set_grads(gen, ours, theirs)
        opt.step()
        ref.step()
    assert_trajectories_close(ours, theirs, opt, ref)


# ----------------------------------------------------------------------- torch's optim_db
@pytest.mark.parametrize("name,kwargs", optim_db_params(
    NAMES, lambda kw: [f"{k}=True: {UNHONOURED[k]}" for k in UNHONOURED if kw.get(k)]))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_optim_db_trajectories_match_torch(name, kwargs, dtype):
    # the active backend only: CI runs the suite once per backend (about 2 s per backend)
    step_both_and_compare(name, kwargs, dtype, STEPS)


# ------------------------------------------------------------------ the training loop
VARIANTS = [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)), ("RMSprop", dict(centered=True)),
            ("Adagrad", dict(lr_decay=0.1)), ("Adam", dict(amsgrad=True)), ("AdamW", {}),
            ("Adadelta", {}), ("Adamax", {}), ("NAdam", dict(momentum_decay=0.01)),
            ("RAdam", dict(weight_decay=0.1))]


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_backends_agree_with_torch(name, kwargs, backend):
    """Every backend (the grid above runs on the active one)."""
    step_both_and_compare(name, kwargs, torch.float32, 8)


BIG_STEP = [("Adagrad", dict(lr=1.0, lr_decay=1.0)), ("Adam", dict(betas=(1 - 1e-8, 1 - 1e-8))),
            ("AdamW", dict(betas=(1 - 1e-8, 1 - 1e-8))), ("Adamax", dict(betas=(1 - 1e-8, 0.9))),
            ("NAdam", dict(betas=(1 - 1e-8, 1 - 1e-8), momentum_decay=1e-7)),
            ("RAdam", dict(betas=(1 - 1e-8, 1 - 1e-8)))]


@pytest.mark.parametrize("name,kwargs", BIG_STEP, ids=[v[0] for v in BIG_STEP])
def test_step_counts_past_2_to_the_24_are_the_ones_torch_stores_and_uses(name, kwargs, backend):
    """torch's float32 step count + 1 rounds past 2**24 (2**24 stays, 2**24 + 2 goes to
    2**24 + 4), and its step uses the rounded count: fastopt stored it rounded but used the
    exact sum (updates 1e-9 to 6e-8 apart, relatively). One parameter, two with one count,
    two with two counts (the kernel calls by count). The backend fixture sets the backend."""
    rng = np.random.default_rng(9)
    for counts in ([2.0 ** 24], [2.0 ** 24 + 2] * 2, [2.0 ** 24, 2.0 ** 24 + 2]):
        start = [rng.standard_normal(3) for _ in counts]
        grads = [rng.standard_normal(3) for _ in counts]
        results = []
        for make in (lambda ps: getattr(torch.optim, name)(ps, foreach=False, **kwargs),
                     lambda ps: getattr(ft, name)(ps, **kwargs)):
            ps = [torch.nn.Parameter(torch.tensor(v)) for v in start]
            opt = make(ps)
            for p, g in zip(ps, grads):
                p.grad = torch.tensor(g)
            opt.step()
            with torch.no_grad():
                for p, c in zip(ps, counts):
                    opt.state[p]["step"].fill_(c)
                    p.zero_()           # (the params are then minus the updates)
            opt.step()
            results.append(([p.detach().numpy().copy() for p in ps],
                            [float(opt.state[p]["step"]) for p in ps]))
        (want, want_counts), (got, got_counts) = results
        assert got_counts == want_counts, counts
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-14, atol=0, err_msg=str(counts))


TRUTHY_FLAGS = [("SGD", dict(lr=0.1, momentum=0.9, nesterov=1, maximize=1)),
                ("RMSprop", dict(centered=1, momentum=0.5, maximize=np.bool_(True))),
                ("Adagrad", dict(maximize=1)), ("Adam", dict(amsgrad=1, maximize=1)),
                ("AdamW", dict(amsgrad=np.int64(1), maximize=0)), ("Adamax", dict(maximize=1)),
                ("NAdam", dict(decoupled_weight_decay=1, weight_decay=0.1, maximize=1)),
                ("RAdam", dict(decoupled_weight_decay=1, weight_decay=0.1, maximize=1))]


@pytest.mark.parametrize("name,kwargs", TRUTHY_FLAGS, ids=[v[0] for v in TRUTHY_FLAGS])
def test_flags_are_taken_by_their_truth_as_torch_takes_them(name, kwargs):
    """torch.optim reads its flags with ``if maximize:``, so 1 or np.bool_ work as True
    (fastopt.ops, for NumPy users, wants True or False)."""
    step_both_and_compare(name, kwargs, torch.float32, 4)


# bools torch.optim's step computes with as its numbers (False is 0, True is 1), every optimizer
# and real hyper-parameter: a "no decay" group's weight_decay=False, Python's and NumPy's
BOOLS_TORCH_STEPS = [
    ("SGD", dict(lr=True)), ("SGD", dict(lr=0.1, weight_decay=False, momentum=False)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=True, weight_decay=np.True_)),
    ("SGD", dict(lr=0.1, momentum=np.True_, dampening=0.5)),
    ("SGD", dict(lr=0.1, momentum=0.5, dampening=np.False_, nesterov=True)),
    ("RMSprop", dict(lr=False, alpha=np.True_, eps=True, weight_decay=np.False_)),
    ("RMSprop", dict(alpha=False, momentum=True, weight_decay=np.True_)),
    ("RMSprop", dict(momentum=np.False_, centered=True)),
    ("Adagrad", dict(lr=np.True_, lr_decay=True, weight_decay=False, eps=np.True_,
                     initial_accumulator_value=True)),
    ("Adagrad", dict(lr=True, lr_decay=np.False_, weight_decay=np.True_,
                     initial_accumulator_value=np.False_)),
    ("Adam", dict(lr=True, eps=np.True_, weight_decay=False)),
    ("Adam", dict(lr=np.True_, weight_decay=np.True_, amsgrad=True)),
    ("AdamW", dict(lr=True, weight_decay=True, eps=False)),
    ("AdamW", dict(lr=np.False_, weight_decay=np.True_)),
    ("Adadelta", dict(lr=True, rho=np.False_, eps=np.True_, weight_decay=False)),
    ("Adadelta", dict(lr=False, rho=True, weight_decay=np.True_)),
    ("Adamax", dict(lr=True, betas=(False, 0.999), eps=np.True_, weight_decay=np.True_)),
    ("Adamax", dict(lr=np.True_, betas=(np.False_, np.False_), weight_decay=False)),
    ("NAdam", dict(lr=True, betas=(np.False_, 0.999), momentum_decay=True, weight_decay=False)),
    ("NAdam", dict(eps=True, momentum_decay=np.False_, weight_decay=np.True_)),
    ("NAdam", dict(weight_decay=True, decoupled_weight_decay=True, betas=(0.9, False))),
    ("RAdam", dict(lr=np.True_, betas=(False, 0.999), eps=np.False_, weight_decay=np.True_)),
    ("RAdam", dict(lr=True, weight_decay=True, decoupled_weight_decay=True))]
# and those it cannot compute with (an alpha of Python's True, NumPy's True negated)
BOOLS_TORCH_REFUSES = [("SGD", dict(lr=0.1, weight_decay=True)), ("SGD", dict(lr=np.True_)),
                       ("SGD", dict(lr=0.1, momentum=True, nesterov=True)),
                       ("Adam", dict(weight_decay=True)), ("RMSprop", dict(lr=np.True_)),
                       ("NAdam", dict(lr=np.True_, momentum_decay=torch.tensor(0.01)))]


@pytest.mark.parametrize("name,kwargs", BOOLS_TORCH_STEPS,
                         ids=[v[0] for v in BOOLS_TORCH_STEPS])
def test_bool_hyper_parameters_step_as_torchs(name, kwargs):
    """torch's step takes False and True as 0 and 1. fastopt.torch's kernels refused bools:
    its constructor raised for some (Adam's lr=True, NAdam's momentum_decay=False), its first
    step for most, also after the groups before had stepped (a "no decay" group of
    weight_decay=False after another)."""
    step_both_and_compare(name, kwargs, torch.float64, 6)


@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_a_no_decay_group_of_weight_decay_false_steps_as_torchs(name):
    """The usual "no decay" group (biases, norms) written with False, after a decaying group:
    its step raised TypeError once the first group had stepped."""
    results = []
    for lib in (ft, torch.optim):
        a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
        opt = getattr(lib, name)([{"params": [a]}, {"params": [b], "weight_decay": False}],
                                 lr=0.1, weight_decay=0.01)
        for _ in range(3):
            a.grad, b.grad = torch.full((3,), 0.5), torch.full((2,), -0.5)
            opt.step()
        results.append([a.detach().clone(), b.detach().clone()])
    assert _ulps(*results) <= 4


@pytest.mark.parametrize("name,kwargs", BOOLS_TORCH_REFUSES,
                         ids=[v[0] for v in BOOLS_TORCH_REFUSES])
def test_bool_hyper_parameters_torch_cannot_compute_with_raise_naming_them(name, kwargs):
    """Where torch's step does not compute with a bool (Python's True as an ``alpha``: a
    coupled ``weight_decay=True``, SGD's Nesterov ``momentum=True``; NumPy's True as an lr it
    negates), fastopt.torch raises too, naming it, at construction and when set on a group
    later, changing nothing (stepped as 1, they had trained silently)."""
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    p.grad = torch.full_like(p, 0.5)
    with pytest.raises((TypeError, RuntimeError)):
        getattr(torch.optim, name)([p], foreach=False, **kwargs).step()
    key = next(k for k, v in kwargs.items() if isinstance(v, (bool, np.bool_)))
    with pytest.raises(TypeError, match=rf"Invalid {key}: .*torch.optim's step refuses it"):
        getattr(ft, name)([p], **kwargs)
    ok = {k: (1.0 if k == key else v) for k, v in kwargs.items()}
    opt = getattr(ft, name)([p], **ok)
    opt.step()
    before, state = p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}
    opt.param_groups[0][key] = kwargs[key]
    with pytest.raises(TypeError, match=rf"Invalid {key}: "):
        opt.step()
    assert torch.equal(p.detach(), before) and set(opt.state[p]) == set(state)
    assert all(torch.equal(opt.state[p][k], v) for k, v in state.items())


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_scheduler_sets_the_lr_each_step(name, kwargs):
    ours, opt, theirs, ref = _pair(name, kwargs)
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.3) for o in (opt, ref)]
    gen = torch.Generator().manual_seed(2)
    for _ in range(7):
        _set_grads(gen, ours, theirs)
        opt.step()
        ref.step()
        for s in scheds:
            s.step()
    assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"] != opt.defaults["lr"]
    assert_trajectories_close(ours, theirs, opt, ref)


def test_a_tensor_lr_and_a_lambda_scheduler():
    ours, opt, theirs, ref = _pair("Adam", dict(lr=torch.tensor(0.01)), torch.float32)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda epoch: 0.5 ** epoch)
              for o in (opt, ref)]
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        _set_grads(gen, ours, theirs)
        opt.step()
        ref.step()
        for s in scheds:
            s.step()
    assert_trajectories_close(ours, theirs, opt, ref)


BETAS = ["Adam", "AdamW", "Adamax", "NAdam", "RAdam"]


@pytest.mark.parametrize("name", BETAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("which", ["betas", "betas-and-lr", "beta1", "lr-shape-1"])
def test_tensor_betas_and_lr_step_as_torchs(name, dtype, which):
    """torch 2.13 takes one-element tensors for betas (Adam and AdamW: both or neither,
    else ValueError) and lr: fastopt.torch takes them as torch does and steps torch's
    trajectory. The tensors have the parameters' dtype (float32 tensors of float64
    parameters: test_a_float32_tensor_hyper_parameter_of_float64_params_folds_as_torchs)."""
    t = lambda x, shape=(): torch.tensor(x, dtype=dtype).reshape(shape)  # noqa: E731
    kwargs = {"betas": dict(betas=(t(0.8), t(0.99))),
              "betas-and-lr": dict(betas=(t(0.8), t(0.99)), lr=t(0.01)),
              "beta1": dict(betas=(t(0.8), 0.99)),
              "lr-shape-1": dict(betas=(t(0.8), t(0.99)), lr=t(0.01, (1,)))}[which]
    if which == "beta1" and name in ("Adam", "AdamW"):
        for lib in (torch.optim, ft):
            with pytest.raises(ValueError, match="betas must be either both floats or both"):
                getattr(lib, name)([torch.nn.Parameter(torch.ones(2))], **kwargs)
        return
    step_both_and_compare(name, kwargs, dtype, 8)


@pytest.mark.parametrize("name,kwargs", [
    ("Adam", {}), ("Adam", dict(weight_decay=0.1)), ("AdamW", {}), ("Adamax", {}),
    ("NAdam", {}), ("NAdam", dict(weight_decay=0.1, decoupled_weight_decay=True)),
    ("RAdam", dict(weight_decay=0.1, decoupled_weight_decay=True)),
    ("AdamW", dict(weight_decay=torch.tensor(0.1), lr=1e-2)),
    ("NAdam", dict(momentum_decay=torch.tensor(4e-3), lr=1e-2)),
    ("NAdam", dict(momentum_decay=torch.tensor(0.01), lr=1e-2)),
    ("NAdam", dict(betas=(torch.tensor(0.8), 0.99), lr=1e-2)),
    ("Adamax", dict(betas=(torch.tensor(0.8), 0.99), lr=1e-2)),
    ("Adam", dict(betas=(torch.tensor(0.8), torch.tensor(0.99)), lr=1e-2)),
    ("AdamW", dict(betas=(torch.tensor(0.8), torch.tensor(0.99)), amsgrad=True)),
    ("NAdam", dict(betas=(0.8, torch.tensor(0.99)))),
    ("RAdam", dict(betas=(torch.tensor(0.8), torch.tensor(0.99)), lr=1e-2)),
    ("RAdam", dict(betas=(torch.tensor(0.8), 0.99), lr=1e-2)),
    ("Adagrad", dict(lr_decay=0.1)), ("Adagrad", dict(lr_decay=torch.tensor(0.1), lr=0.1)),
    ("SGD", dict(momentum=0.9, dampening=torch.tensor(0.1), lr=0.1)),
    # NumPy float32 scalars (from a config): torch's step computes with them in NumPy's
    # arithmetic, which rounds to float32 as a float32 tensor's does
    ("SGD", dict(lr=np.float32(0.1), momentum=np.float32(0.9), dampening=np.float32(0.1),
                 weight_decay=np.float32(0.1))),
    ("Adamax", dict(lr=np.float32(0.01), betas=(np.float32(0.9), np.float32(0.999)))),
    ("NAdam", dict(lr=np.float32(0.01), betas=(np.float32(0.9), np.float32(0.999)))),
    ("RAdam", dict(lr=np.float32(0.01), betas=(np.float32(0.9), np.float32(0.999)))),
    # a beta1 below 0.5, whose lerp weight 1 - beta1 torch rounds to float32
    ("Adamax", dict(betas=(torch.tensor(0.1), 0.999))),
    ("NAdam", dict(betas=(np.float32(0.1), np.float32(0.999)))),
    ("RAdam", dict(betas=(torch.tensor(0.2), torch.tensor(0.999))))],
    ids=lambda v: v if isinstance(v, str) else "-".join(v))
def test_a_float32_tensor_hyper_parameter_of_float64_params_folds_as_torchs(name, kwargs):
    """torch.tensor(0.01) is float32: torch's step folds a tensor lr (Adam's and Adamax's
    ``lr / bias_correction1``, Adagrad's ``lr / (1 + (step - 1) * lr_decay)``, NAdam's
    coefficients, a decoupled ``1 - lr * weight_decay``), beta1, beta2 (the bias corrections,
    RAdam's rectification), momentum_decay (NAdam's momentum, which multiplies
    ``mu_product``) or dampening (``1 - dampening``) in the
    tensor's dtype, so float64 parameters take float32-rounded scalars. fastopt folded the
    tensor's value in float64: a float64 trajectory was millions of ulps from torch's (a
    decoupled decay's, ~1e9), and NAdam's float32 mu_product an ulp off. So did the weight
    ``1 - beta1`` of the first moment's lerp for a beta1 below 0.5 (~1e8 ulps)."""
    ours, opt, theirs, ref = _pair(name, {"lr": torch.tensor(0.01), **kwargs}, torch.float64)
    continue_both_and_compare(torch.Generator().manual_seed(1), ours, opt, theirs, ref, 8)
    for p, q in zip(ours, theirs):
        if "mu_product" in ref.state[q]:        # float32 multiplications: torch's bits
            assert opt.state[p]["mu_product"].item() == ref.state[q]["mu_product"].item()


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_a_numpy_float32_beta1_set_later_weighs_adams_lerp_as_torchs(name):
    """torch's Adam casts a tensor beta1 to the parameters' dtype, not a NumPy one (its
    constructor takes neither, but a group's betas set later): ``1 - np.float32(0.1)`` is a
    float32 lerp weight there too."""
    ours, opt, theirs, ref = _pair(name, {}, torch.float64)
    for o in (opt, ref):
        o.param_groups[0]["betas"] = (np.float32(0.1), np.float32(0.999))
    continue_both_and_compare(torch.Generator().manual_seed(1), ours, opt, theirs, ref, 8)


@pytest.mark.parametrize("name", BETAS)
@pytest.mark.parametrize("index", [0, 1], ids=["beta1", "beta2"])
def test_a_tensor_beta_of_shape_1_steps_or_raises_as_torchs(name, index):
    """A one-element beta tensor that is not 0-d: torch's Adam and AdamW squeeze it; the
    step of the others refuses some whatever the parameters (Adamax's beta1, NAdam's two,
    RAdam's beta2: in its arithmetic, after counting the step). fastopt.torch raises the
    same error type where torch's step does (at construction, as for the other values its
    step refuses, or at the step for a beta set later, before anything changes), and steps
    torch's trajectory where it does not."""
    def betas(shape):
        b = [torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.99, dtype=torch.float64)]
        b[index] = b[index].reshape(shape)
        return tuple(b)

    gen = torch.Generator().manual_seed(4)
    # (not 0-d: a shape-(1,) beta of torch's Adamax and RAdam that they step in place into a
    # 0-d tensor is a shape error)
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(3, 4), (5,), (17,)]]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    theirs = [torch.nn.Parameter(t.clone()) for t in init]
    ref = getattr(torch.optim, name)(theirs, betas=betas(1), foreach=False)
    try:
        _set_grads(gen, ours, theirs)
        ref.step()
    except (TypeError, RuntimeError) as error:
        match = rf"betas\[{index}\] is a tensor of shape \(1,\)"
        with pytest.raises(type(error), match=match):
            getattr(ft, name)(ours, betas=betas(1))
        opt = getattr(ft, name)(ours, betas=betas(()))
        opt.param_groups[0]["betas"] = betas(1)
        before = [p.detach().clone() for p in ours]
        with pytest.raises(type(error), match=match):
            opt.step()
        assert all(torch.equal(p, q) for p, q in zip(ours, before)) and not opt.state
        return
    opt = getattr(ft, name)(ours, betas=betas(1))
    opt.step()
    continue_both_and_compare(gen, ours, opt, theirs, ref, 7)


# the float hyper-parameters (but lr and betas, above) of the nine classes, with values that
# make the step use them (SGD's dampening needs momentum; RMSprop's momentum, set later, a
# buffer made at the first step)
TENSOR_HYPER = [
    ("SGD", "momentum", 0.9, dict(lr=0.1)), ("SGD", "dampening", 0.3, dict(lr=0.1, momentum=0.9)),
    ("SGD", "weight_decay", 0.1, dict(lr=0.1, momentum=0.9)),
    ("RMSprop", "alpha", 0.9, {}), ("RMSprop", "eps", 1e-3, {}),
    ("RMSprop", "weight_decay", 0.1, {}),
    ("RMSprop", "momentum", 0.5, dict(centered=True, momentum=0.1)),
    ("Adagrad", "lr_decay", 0.1, {}), ("Adagrad", "weight_decay", 0.1, {}),
    ("Adagrad", "initial_accumulator_value", 0.2, {}), ("Adagrad", "eps", 1e-3, {}),
    ("Adam", "eps", 1e-3, {}), ("Adam", "weight_decay", 0.1, {}),
    ("Adam", "weight_decay", 0.1, dict(decoupled_weight_decay=True)),
    ("AdamW", "eps", 1e-3, {}), ("AdamW", "weight_decay", 0.1, {}),
    ("Adadelta", "rho", 0.8, {}), ("Adadelta", "eps", 1e-3, {}),
    ("Adadelta", "weight_decay", 0.1, {}), ("Adamax", "eps", 1e-3, {}),
    ("Adamax", "weight_decay", 0.1, {}), ("NAdam", "eps", 1e-3, {}),
    ("NAdam", "weight_decay", 0.1, {}), ("NAdam", "momentum_decay", 0.01, {}),
    ("NAdam", "weight_decay", 0.1, dict(decoupled_weight_decay=True)),
    ("RAdam", "eps", 1e-3, {}), ("RAdam", "weight_decay", 0.1, {}),
    ("RAdam", "weight_decay", 0.1, dict(decoupled_weight_decay=True))]
TENSOR_IDS = [f"{n}-{k}" + ("-decoupled" if "decoupled_weight_decay" in kw else "")
              for n, k, _, kw in TENSOR_HYPER]


@pytest.mark.parametrize("name,key,value,kwargs", TENSOR_HYPER, ids=TENSOR_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("when", ["constructed", "set-later"])
def test_0d_tensor_hyper_parameters_step_as_torchs(name, key, value, kwargs, dtype, when):
    """torch 2.13's constructors and steps take a 0-d tensor for every float hyper-parameter:
    so does fastopt.torch, given at construction or set on the group between steps, stepping
    torch's trajectory (the tensors have the parameters' dtype: torch does some of its
    arithmetic on them in their dtype, such as SGD's ``1 - dampening``)."""
    t = torch.tensor(value, dtype=dtype)
    if when == "constructed":
        step_both_and_compare(name, {**kwargs, key: t}, dtype, 6)
        return
    ours, opt, theirs, ref = _pair(name, kwargs, dtype)
    gen = torch.Generator().manual_seed(1)
    for i in range(6):
        _set_grads(gen, ours, theirs)
        opt.step()
        ref.step()
        if i == 1:
            for o in (opt, ref):
                o.param_groups[0][key] = t.clone()
    assert_trajectories_close(ours, theirs, opt, ref)


@pytest.mark.parametrize("name", NAMES)
def test_an_lr_tensor_of_two_elements_set_later_is_refused_by_name(name):
    """An lr set on the group as a tensor of two elements: torch's step refuses it (a
    TypeError where it passes the lr as a number, as most do); fastopt.torch's raises a
    TypeError naming lr, where tensor.item()'s RuntimeError named nothing (q64), and
    changes nothing."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = getattr(ft, name)([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    opt.param_groups[0]["lr"] = torch.tensor([0.1, 0.1])
    before, state = p.detach().clone(), copy.deepcopy(opt.state[p])
    with pytest.raises(TypeError, match=r"Invalid lr: a tensor of shape \(2,\)"):
        opt.step()
    assert torch.equal(p.detach(), before)
    assert all(torch.equal(state[k], opt.state[p][k]) for k in state)


@pytest.mark.parametrize("name,key,value,kwargs", TENSOR_HYPER, ids=TENSOR_IDS)
def test_a_hyper_parameter_tensor_of_shape_1_steps_or_raises_as_torchs(name, key, value, kwargs):
    """A one-element hyper-parameter tensor that is not 0-d: torch's step refuses those it
    passes as numbers (``alpha=weight_decay``, ``value=1 - alpha``: TypeError) where it uses
    them, and steps the others (broadcast). fastopt.torch raises the same error type where
    torch's step does (at construction, or at the step for one set later, before anything
    changes), and steps torch's trajectory where it does not. (Not with a 0-d parameter:
    torch's in-place arithmetic on it cannot take the broadcast shape (1,), a RuntimeError
    fastopt.torch does not reproduce.)"""
    for v in (value, 0.0):
        t = torch.tensor([v], dtype=torch.float64)
        gen = torch.Generator().manual_seed(4)
        init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(3, 4), (5,)]]
        ours = [torch.nn.Parameter(x.clone()) for x in init]
        theirs = [torch.nn.Parameter(x.clone()) for x in init]
        grads = []
        try:
            ref = getattr(torch.optim, name)(theirs, **{**kwargs, key: t}, foreach=False)
            for _ in range(2):      # (SGD's dampening: from the second step)
                _set_grads(gen, theirs)
                grads.append([p.grad.clone() for p in theirs])
                ref.step()
        except (TypeError, RuntimeError) as error:
            if key == "initial_accumulator_value":      # torch's constructor's full_like
                with pytest.raises(TypeError):
                    getattr(ft, name)(ours, **{**kwargs, key: t})
                continue
            match = rf"{key} is a tensor of shape \(1,\)"
            with pytest.raises(type(error), match=match):
                getattr(ft, name)(ours, **{**kwargs, key: t})
            opt = getattr(ft, name)(ours, **kwargs)
            opt.param_groups[0][key] = t
            for p, g in zip(ours, grads[0]):
                p.grad = g
            before = [p.detach().clone() for p in ours]
            with pytest.raises(type(error), match=match):
                opt.step()
            assert all(torch.equal(p, q) for p, q in zip(ours, before))
            assert all(s["step"] == 0 for s in opt.state.values())  # (Adagrad's, made at once)
            continue
        opt = getattr(ft, name)(ours, **{**kwargs, key: t})
        for gs in grads:
            for p, g in zip(ours, gs):
                p.grad = g
            opt.step()
        continue_both_and_compare(gen, ours, opt, theirs, ref, 5)


@pytest.mark.parametrize("name", NAMES)
def test_0d_tensor_hyper_parameters_survive_state_dicts_with_torch(name):
    """Every float hyper-parameter a 0-d tensor: torch.optim steps, fastopt.torch takes over
    from its state dict, then torch.optim from fastopt's (through torch.save): torch's
    uninterrupted trajectory, and the tensors are in the groups as torch keeps them."""
    kwargs = {key: torch.tensor(value) for n, key, value, kw in TENSOR_HYPER
              if n == name and not kw}
    kwargs.update(next((kw for n, _, _, kw in TENSOR_HYPER if n == name and kw
                        and "decoupled_weight_decay" not in kw), {}))

    def tensors_kept(opt):
        assert all(isinstance(opt.param_groups[0][k], torch.Tensor) for k in kwargs
                   if isinstance(kwargs[k], torch.Tensor))
    _torch_fastopt_torch_handoffs(name, kwargs, 3, tensors_kept)


def test_closure_is_called_with_grad_enabled_and_its_loss_returned():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2).double()
    twin = copy.deepcopy(model)
    x = torch.randn(8, 4, dtype=torch.float64)
    opt, ref = ft.Adam(model.parameters(), lr=0.1), torch.optim.Adam(twin.parameters(), lr=0.1)
    for _ in range(5):
        losses = []
        for m, o in ((model, opt), (twin, ref)):
            def closure(m=m, o=o):
                assert torch.is_grad_enabled()
                o.zero_grad()
                loss = m(x).pow(2).mean()
                loss.backward()
                return loss
            with torch.no_grad():
                losses.append(o.step(closure))
        np.testing.assert_allclose(losses[0].item(), losses[1].item(), rtol=1e-12)
    assert_trajectories_close(list(model.parameters()), list(twin.parameters()), opt, ref)


def test_steps_run_on_the_openmp_team_and_restore_the_setting(monkeypatch):
    """The kernels of a step run on torch's OpenMP team (fo_pool.h says why); the thread's
    setting is put back after the step, also when a kernel raises."""
    from fastopt import _backend
    setting, calls, seen = [False], [], []

    def team(on):
        calls.append(on)
        was, setting[0] = setting[0], on
        return was

    kernel = _backend.active.adam_multi

    def recording_kernel(*args, **kwargs):
        seen.append(setting[0])
        return kernel(*args, **kwargs)

    monkeypatch.setattr(_backend.active, "use_openmp_team", team)
    monkeypatch.setattr(_backend.active, "adam_multi", recording_kernel)
    p = torch.zeros(10, requires_grad=True)
    p.grad = torch.ones(10)
    opt = ft.Adam([p])
    opt.step()
    assert seen == [True] and calls == [True, False] and setting == [False]

    def failing_kernel(*args, **kwargs):
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(_backend.active, "adam_multi", failing_kernel)
    with pytest.raises(RuntimeError, match="kernel failed"):
        opt.step()
    assert setting == [False]


def test_zero_grad_and_none_grads():
    ours, opt, theirs, ref = _pair("Adam", dict(weight_decay=0.1))
    gen = torch.Generator().manual_seed(4)
    _set_grads(gen, ours, theirs)
    opt.step()
    ref.step()
    opt.zero_grad()                         # torch's default: set_to_none
    assert all(p.grad is None for p in ours)
    before = [p.detach().clone() for p in ours]
    opt.step()                              # no grads: nothing steps, no count advances
    assert all(torch.equal(a, b) for a, b in zip(ours, before))
    assert opt.state[ours[0]]["step"].item() == 1
    _set_grads(gen, ours, theirs)
    opt.zero_grad(set_to_none=False)
    ref.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in ours)
    opt.step()                              # zero grads step (weight decay moves them)
    ref.step()
    assert opt.state[ours[0]]["step"].item() == 2
    assert_trajectories_close(ours, theirs, opt, ref)


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_frozen_parameters_and_grads_that_come_and_go(name, kwargs):
    """Some parameters never get a grad (frozen), some skip steps: per-parameter step
    counts then differ within a group, as in torch."""
    ours, opt, theirs, ref = _pair(name, kwargs)
    for p in (ours[0], theirs[0]):
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(5)
    for k in range(9):
        _set_grads(gen, ours, theirs)
        for ps in (ours, theirs):
            ps[0].grad = None
            if k % 3 == 1:
                ps[1].grad = None
            if k < 2:
                ps[4].grad = None
        opt.step()
        ref.step()
    assert_trajectories_close(ours, theirs, opt, ref)


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_add_param_group(name, kwargs):
    ours, opt, theirs, ref = _pair(name, kwargs)
    extra = _params(torch.float64, seed=9)[:2]
    mine = [torch.nn.Parameter(t.clone()) for t in extra]
    yours = [torch.nn.Parameter(t.clone()) for t in extra]
    gen = torch.Generator().manual_seed(6)
    for k in range(8):
        if k == 3:
            opt.add_param_group({"params": mine, "lr": 0.05})
            ref.add_param_group({"params": yours, "lr": 0.05})
        _set_grads(gen, ours + (mine if k >= 3 else []), theirs + (yours if k >= 3 else []))
        opt.step()
        ref.step()
    assert_trajectories_close(ours + mine, theirs + yours, opt, ref)


@pytest.mark.parametrize("name,decoupled", [("AdamW", False), ("Adam", True), ("AdamW", True),
                                            ("NAdam", True), ("RAdam", True)])
def test_decoupled_weight_decay_set_on_a_group_is_read_at_each_step(name, decoupled):
    """torch's Adam-family steps read each group's decoupled_weight_decay (AdamW's groups have
    it True, and one set to False by hand decays coupled there): fastopt.torch.AdamW decayed
    decoupled whatever its group said."""
    ours, opt, theirs, ref = _pair(name, dict(lr=0.05, weight_decay=0.5))
    gen = torch.Generator().manual_seed(8)
    for k in range(6):
        if k == 2:
            for o in (opt, ref):
                o.param_groups[0]["decoupled_weight_decay"] = decoupled
        _set_grads(gen, ours, theirs)
        opt.step()
        ref.step()
    assert_trajectories_close(ours, theirs, opt, ref)


def test_a_step_inside_torch_compile_is_the_eager_step(backend):
    """torch.compile of a training step that calls opt.step(): the step runs as it is (a graph
    break). Dynamo traced its Python, per parameter (recompile-limit warnings within 4 steps
    of a 3-layer MLP), and on the numba backend failed in Numba's dispatcher (an
    AssertionError at every call, where a step was Numba's first call of its kernel)."""
    import logging
    torch._dynamo.reset()
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                                    torch.nn.Linear(16, 16), torch.nn.Tanh(),
                                    torch.nn.Linear(16, 3))
        opt = ft.Adam(model.parameters(), lr=0.01)

        def train_step(x, y):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss
        step = torch.compile(train_step, backend="eager") if compiled else train_step
        records = []
        handler = logging.Handler()
        handler.emit = lambda record: records.append(record.getMessage())
        logging.getLogger("torch._dynamo").addHandler(handler)
        try:
            gen = torch.Generator().manual_seed(1)
            for _ in range(4):
                step(torch.randn(4, 8, generator=gen), torch.randint(0, 3, (4,), generator=gen))
        finally:
            logging.getLogger("torch._dynamo").removeHandler(handler)
        assert not [r for r in records if "recompile" in r]
        runs.append([p.detach().clone() for p in model.parameters()])
    torch._dynamo.reset()
    assert all(_same_bits(a, b) for a, b in zip(*runs))


def test_importing_fastopt_torch_does_not_import_torch_compile():
    """The step's torch.compile guard made at import (torch.compiler.disable) imported
    torch._dynamo, ~830 more modules, for every user of fastopt.torch."""
    import subprocess
    code = ("import sys, torch; import fastopt.torch; "
            "sys.exit('torch._dynamo' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(ft.__file__)), os.environ.get("PYTHONPATH", "")]))
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=300).returncode == 0


def _save_load(state_dict):
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_state_dicts_move_between_torch_and_fastopt(name, kwargs):
    """torch.optim steps 4 times, fastopt.torch takes over from its state dict for 4, then a
    new torch.optim from fastopt's state dict for 4 more (through torch.save each time): the
    trajectory is torch's uninterrupted one. (float32: torch's load_state_dict casts NAdam's
    mu_product to the parameters' dtype, so torch itself leaves its float64 trajectory after
    a reload; fastopt keeps multiplying it in float32.)"""
    _torch_fastopt_torch_handoffs(name, kwargs, 4)


def _torch_fastopt_torch_handoffs(name, kwargs, steps, check=None, dtype=torch.float32):
    """torch.optim steps ``steps`` times, fastopt.torch takes over from its state dict for as
    many, then a new torch.optim from fastopt's (through torch.save each time; ``check`` sees
    each new optimizer): asserts the trajectory is torch's uninterrupted one."""
    params = [torch.nn.Parameter(t) for t in _params(dtype)]
    gen = torch.Generator().manual_seed(7)
    opt = getattr(torch.optim, name)(params, foreach=False, **kwargs)
    for cls in (ft, torch.optim, None):
        for _ in range(steps):
            _set_grads(gen, params)
            opt.step()
        if cls is not None:
            params = [torch.nn.Parameter(p.detach().clone()) for p in params]
            state = _save_load(opt.state_dict())
            opt = getattr(cls, name)(params, **kwargs)
            opt.load_state_dict(state)
            if check is not None:
                check(opt)
    straight = [torch.nn.Parameter(t) for t in _params(dtype)]
    ref = getattr(torch.optim, name)(straight, foreach=False, **kwargs)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3 * steps):
        _set_grads(gen, straight)
        ref.step()
    assert_trajectories_close(params, straight, opt, ref)


def test_16bit_adagrad_makes_masters_at_construction_for_parameters_that_step():
    """Adagrad's state is made at construction (as torch's): with it the master of a 16-bit
    parameter that requires grad (see the test below), but not of a frozen one, whose master
    would never step (the review: a frozen bf16 backbone's state and checkpoint doubled)."""
    trained, frozen = (torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16), requires_grad=r)
                       for r in (True, False))
    opt = ft.Adagrad([trained, frozen])
    assert opt.state[trained]["master_param"].dtype == torch.float32
    assert set(opt.state[frozen]) == {"step", "sum"}


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")  # (one process)
@pytest.mark.parametrize("made", ["fresh", "before_the_cast", "loaded_from_torch"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", HALVES, ids=["bf16", "f16"])
def test_16bit_resume_through_torch_distributed_checkpoint_is_bit_identical(name, dtype, made,
                                                                           tmp_path):
    """torch.distributed.checkpoint loads a checkpoint into the keys of the state dict that
    get_state_dict() takes of a fresh optimizer, faking a step to make the state where there
    is none. The checkpoint's masters were not loaded, and the resumed run drifted (1e-3 on a
    small model: the distributed probe and a review), where the optimizer had state without
    masters: Adagrad, whose state torch makes at construction (before its first step, or
    built before ``model.to(dtype)``), and any class after a load of torch.optim's state."""
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    def run(model, opt, seeds):
        for seed in seeds:
            x = torch.randn(4, 6, generator=torch.Generator().manual_seed(seed)).to(dtype)
            model(x).float().pow(2).mean().backward()
            opt.step()
            opt.zero_grad()

    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 3)
        if made != "before_the_cast":
            model.to(dtype)
        opt = getattr(ft, name)(model.parameters(), lr=0.01)
        if made == "before_the_cast":
            model.to(dtype)
        elif made == "loaded_from_torch":   # one step of torch.optim on a copy of the model
            other = copy.deepcopy(model)
            theirs = getattr(torch.optim, name)(other.parameters(), lr=0.01, foreach=False)
            run(other, theirs, [9])
            opt.load_state_dict(theirs.state_dict())
        return model, opt

    model, opt = make()
    run(model, opt, range(6))
    first, first_opt = make()
    run(first, first_opt, range(3))
    dcp.save(dict(zip("mo", get_state_dict(first, first_opt))), checkpoint_id=tmp_path)
    resumed, resumed_opt = make()
    state = dict(zip("mo", get_state_dict(resumed, resumed_opt)))
    dcp.load(state, checkpoint_id=tmp_path)
    set_state_dict(resumed, resumed_opt, model_state_dict=state["m"],
                   optim_state_dict=state["o"])
    run(resumed, resumed_opt, range(3, 6))
    for ours, theirs in zip(resumed.parameters(), model.parameters()):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("sit_outs", [0, 2])
@pytest.mark.parametrize("how", ["loaded_from_torch", "unfrozen"])
def test_the_master_state_dict_gives_changes_nothing_in_the_optimizer(how, sit_outs):
    """state_dict() gives a master to a 16-bit parameter with state but none (see above),
    made from the parameter, in a copy of its entry. Made in the optimizer's state (the
    first version), it changed the next steps: a parameter that sat out a step had its version
    counter recorded, and a write the counter does not see (``p.data.copy_``), made after
    state_dict() or after steps it sat out since, was undone, where without the state_dict()
    call the step made the master from the written parameter (two reviews)."""
    def run(call_state_dict):
        torch.manual_seed(0)
        a, b = (torch.nn.Parameter(torch.randn(4).bfloat16()) for _ in range(2))
        if how == "loaded_from_torch":
            twins = [torch.nn.Parameter(p.detach().clone()) for p in (a, b)]
            theirs = torch.optim.Adam(twins, lr=0.01, foreach=False)
            for q in twins:
                q.grad = torch.ones_like(q)
            theirs.step()
            opt = ft.Adam([a, b], lr=0.01)
            opt.load_state_dict(theirs.state_dict())
        else:           # Adagrad's state is made at construction, a frozen one's without master
            b.requires_grad_(False)
            opt = ft.Adagrad([a, b], lr=0.1)
        a.grad = torch.ones_like(a)
        opt.step()                      # b sits it out
        b.requires_grad_(True)
        if call_state_dict:
            assert "master_param" in opt.state_dict()["state"][1]
            assert "master_param" not in opt.state[b]
        for _ in range(sit_outs):
            a.grad = torch.ones_like(a)
            opt.step()
        b.data.copy_(torch.full_like(b, 3.0))
        a.grad, b.grad = None, torch.zeros_like(b)
        opt.step()
        return b.detach().clone()
    assert torch.equal(run(True), run(False))
    assert torch.equal(run(False), torch.full((4,), 3.0, dtype=torch.bfloat16))


def test_the_masters_state_dict_gives_follow_torchs_numbering_past_a_post_hook():
    """A state-dict post-hook that leaves a group out: each missing master goes to the entry
    of its own parameter by torch's numbering (paired with the groups by position, an entry
    had received another parameter's master: the review)."""
    first, second = (torch.nn.Parameter(torch.full((k,), float(k))) for k in (2, 3))
    opt = ft.Adagrad([{"params": [first]}, {"params": [second]}])
    for p in (first, second):
        p.data = p.data.bfloat16()

    def drop_the_first_group(optimizer, state_dict):
        state_dict["param_groups"] = state_dict["param_groups"][1:]
        del state_dict["state"][0]
    opt.register_state_dict_post_hook(drop_the_first_group)
    state = opt.state_dict()["state"]
    assert list(state) == [1] and torch.equal(state[1]["master_param"], torch.full((3,), 3.0))


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
@pytest.mark.parametrize("dtype", DTYPES + HALVES + COMPLEX,
                         ids=["f32", "f64", "bf16", "f16", "c64", "c128"])
def test_checkpoint_and_resume_is_bit_identical(name, kwargs, dtype):
    init = _params(dtype)
    straight = [torch.nn.Parameter(t.clone()) for t in init]
    opt = getattr(ft, name)(straight, **kwargs)
    gen = torch.Generator().manual_seed(8)
    grads = [[torch.randn(t.shape, generator=gen).to(dtype) for t in init] for _ in range(10)]
    for gs in grads:
        for p, g in zip(straight, gs):
            p.grad = g.clone()
        opt.step()
    first = [torch.nn.Parameter(t.clone()) for t in init]
    opt1 = getattr(ft, name)(first, **kwargs)
    for gs in grads[:5]:
        for p, g in zip(first, gs):
            p.grad = g.clone()
        opt1.step()
    saved_params, saved_state = _save_load(([p.detach() for p in first], opt1.state_dict()))
    resumed = [torch.nn.Parameter(t) for t in saved_params]
    opt2 = getattr(ft, name)(resumed, **kwargs)
    opt2.load_state_dict(saved_state)
    for gs in grads[5:]:
        for p, g in zip(resumed, gs):
            p.grad = g.clone()
        opt2.step()
    for a, b in zip(resumed, straight):
        assert torch.equal(a.detach().reshape(-1).view(torch.uint8),
                           b.detach().reshape(-1).view(torch.uint8))
    for a, b in zip(opt2.state_dict()["state"].values(), opt.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in b)


# ------------------------------------------------------------------ fused gradient clip
def _torch_clip_coef(norm, max_norm, dtype):
    """clip_grad_norm_'s factor for the norm ``norm`` of grads of ``dtype``, by torch's own
    arithmetic on a norm tensor of that dtype (the documented factor)."""
    total_norm = torch.tensor(norm, dtype=torch.float64).to(dtype.to_real())
    return torch.clamp(max_norm / (total_norm + 1e-6), max=1.0).item()


def _clip_then_step(name, kwargs, dtype, steps=10):
    """fastopt.torch with ``max_grad_norm=2.0`` on a group (a second group without), beside
    the same optimizer unclipped fed grads scaled by hand (``g.mul_(factor)``, the documented
    factor of the reported norm) and torch.optim after ``clip_grad_norm_``. The grads' scale
    varies so some steps clip and some not. Returns all three and torch's norms."""
    init = _params(dtype)
    ours, plain, theirs = ([torch.nn.Parameter(t.clone()) for t in init] for _ in range(3))
    opt = getattr(ft, name)([{"params": ours[:4]}, {"params": ours[4:], "max_grad_norm": None}],
                            max_grad_norm=2.0, **kwargs)
    unclipped = getattr(ft, name)(plain, **kwargs)
    ref = getattr(torch.optim, name)([{"params": theirs[:4]}, {"params": theirs[4:]}],
                                     foreach=False, **kwargs)
    gen = torch.Generator().manual_seed(14)
    norms = []
    for k in range(steps):
        for a, b, c in zip(ours, plain, theirs):
            a.grad = torch.randn(a.shape, generator=gen, dtype=dtype) * (0.1 + k % 3)
            b.grad, c.grad = a.grad.clone(), a.grad.clone()
        original = [a.grad.clone() for a in ours]
        norms.append(torch.nn.utils.clip_grad_norm_(theirs[:4], 2.0).item())
        opt.step()
        assert opt.grad_norms[1] is None
        factor = _torch_clip_coef(opt.grad_norms[0], 2.0, dtype)
        for b in plain[:4]:
            b.grad.mul_(factor)
        unclipped.step()
        ref.step()
        for a, b, g in zip(ours, plain, original):    # Adam scales inside its kernel
            assert torch.equal(a.grad, g if name in ("Adam", "AdamW") else b.grad)
    return ours, opt, plain, unclipped, theirs, ref, norms


def _same_bits(a, b):
    return torch.equal(a.detach().reshape(-1).view(torch.uint8),
                       b.detach().reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("dtype", DTYPES + COMPLEX, ids=["f32", "f64", "c64", "c128"])
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_max_grad_norm_is_clip_grad_norm_then_step(name, kwargs, dtype):
    """``max_grad_norm`` per group: clip_grad_norm_'s norm, and the bits of the unclipped
    step on grads multiplied by the factor (parameters and state), hence torch.optim's
    trajectory after clip_grad_norm_ within the step's own tolerance (assert_trajectories_close,
    as for optim_db).

    Complex grads: clip_grad_norm_'s norm of their values (of their real views), then the
    step on view_as_real of everything, as torch.optim's.

    The norm's tolerance: torch sums the squares of each grad (at most 12 elements here) in
    the dtype, then those of the 4 norms, while ours sums in float64; a recursive sum of k
    positive terms is within (k - 1) u of the exact one (u = eps / 2), each square, square
    root and norm adds u: under (11 + 3 + 2 * 4 + 2) u = 12 eps, so rtol = 16 eps."""
    ours, opt, plain, unclipped, theirs, ref, norms = _clip_then_step(name, kwargs, dtype)
    # (complex grads: twice the squares, their real and imaginary parts, (23 + 3 + 8 + 2) u)
    rtol = (24 if dtype.is_complex else 16) * torch.finfo(dtype).eps
    np.testing.assert_allclose(opt.grad_norms[0], norms[-1], rtol=rtol)
    assert 0 < sum(n > 2.0 for n in norms) < len(norms)
    assert all(_same_bits(a, b) for a, b in zip(ours, plain))
    for a, b in zip(opt.state_dict()["state"].values(),
                    unclipped.state_dict()["state"].values()):
        assert all(_same_bits(a[key], b[key]) for key in b)
    assert_trajectories_close(ours, theirs, opt, ref)


@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_max_grad_norm_is_bit_identical_on_every_backend(name, backend):
    """The clipped step on each backend (the grid above runs on the active one) against the
    NumPy reference's, bit for bit: the norm is computed alike on all of them, the kernels
    scale alike."""
    import fastopt
    kwargs = dict(VARIANTS)[name]
    with fastopt.use_backend("numpy"):
        expected = _clip_then_step(name, kwargs, torch.float32, steps=4)
    with fastopt.use_backend(backend):
        got = _clip_then_step(name, kwargs, torch.float32, steps=4)
    assert all(_same_bits(a, b) for a, b in zip(got[0], expected[0]))
    for a, b in zip(got[1].state_dict()["state"].values(),
                    expected[1].state_dict()["state"].values()):
        assert all(_same_bits(a[key], b[key]) for key in b)


@pytest.mark.parametrize("views", [False, True], ids=["", "views"])
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_a_grad_shared_by_parameters_is_clipped_once_per_parameter_as_clip_grad_norm_(
        name, kwargs, views):
    """clip_grad_norm_ multiplies a grad listed for several parameters (``a.grad = b.grad =
    g``) once per parameter: Adam's and AdamW's kernels, which scale the grads themselves,
    scaled it once (an update 2x torch's here), as the 16-bit kernels still would (refused,
    below); the optimizers that scale in place matched already."""
    ours, opt, theirs, ref = _pair(name, kwargs, dtype=torch.float32, extra=4)
    opt.param_groups[0]["max_grad_norm"] = 0.1
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        _set_grads(gen, ours, theirs)
        for ps in (ours, theirs):
            if views:       # overlapping views of one buffer: their middle element shared
                buffer = torch.randn(5, generator=torch.Generator().manual_seed(4))
                ps[-4].grad, ps[-3].grad = buffer[:3], buffer[2:]
            else:
                ps[-1].grad = ps[-2].grad
        torch.nn.utils.clip_grad_norm_(theirs, 0.1)
        opt.step()
        ref.step()
    assert_trajectories_close(ours, theirs, opt, ref)


@pytest.mark.parametrize("name,dtypes", [
    ("Adam", (torch.bfloat16,) * 3), ("SGD", (torch.float16,) * 3),
    ("Adam", (torch.float32, torch.float32, torch.bfloat16))])
def test_a_16bit_grad_shared_by_parameters_in_a_group_that_clips_raises_naming_them(
        name, dtypes):
    """The 16-bit kernels scale a grad as they widen it, once per parameter, where
    clip_grad_norm_ scales a shared one once per parameter listing it: refused before any
    group steps (Adam's kernel scales every grad of its group: so also a float32 grad shared
    beside a bfloat16 parameter)."""
    before = [torch.full((3,), k + 1.0, dtype=dtype) for k, dtype in enumerate(dtypes)]
    ps = [torch.nn.Parameter(t.clone()) for t in before]
    first = torch.nn.Parameter(torch.ones(2))
    opt = getattr(ft, name)([{"params": [first]}, {"params": ps}], lr=0.1, max_grad_norm=0.1)
    first.grad = torch.ones(2)
    ps[2].grad = torch.full((3,), 5.0, dtype=dtypes[2])
    ps[0].grad = ps[1].grad = torch.full((3,), 5.0, dtype=dtypes[0])
    with pytest.raises(ValueError, match="the grads of parameters 0 and 1 of param group 1 "
                                         "share memory, in a group that clips"):
        opt.step()
    assert torch.equal(first, torch.ones(2)) and not opt.state
    assert all(torch.equal(p, t) for p, t in zip(ps, before))
    assert torch.equal(ps[0].grad, torch.full((3,), 5.0, dtype=dtypes[0]))


@pytest.mark.parametrize("case", ["bf16 views", "conj", "across groups", "param of another"])
def test_shared_grads_a_clip_cannot_scale_as_clip_grad_norm_raise_naming_them(case):
    """Overlapping 16-bit views (their kernels scale once), a negative or conjugate view
    listed twice (the kernels read a copy per parameter: each scaled once), a grad another
    group lists too: refused before any group steps, where they stepped with a factor once
    (an update ~100x torch's). So is a grad that is another group's parameter, which
    clip_grad_norm_ would scale in place through it (Adam's kernel scales the grads it
    reads: the parameter was left unscaled; the other optimizers scaled it only after the
    groups before had stepped, an order torch's clip-then-step has not)."""
    dtype = {"bf16 views": torch.bfloat16, "conj": torch.complex64}.get(case, torch.float32)
    first = torch.nn.Parameter(torch.ones(2))
    a, b = (torch.nn.Parameter(torch.ones(3, dtype=dtype)) for _ in range(2))
    groups = ([{"params": [first, a]}, {"params": [b], "max_grad_norm": None}]
              if case in ("across groups", "param of another")
              else [{"params": [first]}, {"params": [a, b]}])
    opt = ft.SGD(groups, lr=0.1, max_grad_norm=0.1)
    first.grad = torch.ones(2)
    if case == "bf16 views":
        buffer = torch.full((4,), 5.0, dtype=dtype)
        a.grad, b.grad = buffer[:3], buffer[1:]
    elif case == "conj":
        a.grad = b.grad = torch.full((3,), 5 + 5j, dtype=dtype).conj()
    elif case == "param of another":
        a.grad = b.detach()
    else:
        a.grad = b.grad = torch.full((3,), 5.0)
    where = ("grad of parameter 1 of param group 0 shares"
             if case in ("across groups", "param of another")
             else "grads of parameters 0 and 1 of param group 1 share")
    with pytest.raises(ValueError, match=f"the {where} memory"):
        opt.step()
    assert torch.equal(first, torch.ones(2)) and not opt.state
    assert torch.equal(a, torch.ones(3, dtype=dtype)) and torch.equal(b, a)


@pytest.mark.parametrize("start", [4, 6], ids=["inside it", "running past its end"])
def test_a_clipped_grad_over_part_of_another_groups_parameter_is_refused(start):
    """A grad that is memory of another group's parameter from past that parameter's start
    had been let through: the memory check's clusters are in address order, and only one
    starting with this group's grad was looked at (review q14)."""
    buffer = torch.ones(12)
    p0, p1 = torch.nn.Parameter(buffer[:8]), torch.nn.Parameter(torch.ones(4))
    opt = ft.SGD([{"params": [p0], "max_grad_norm": None}, {"params": [p1]}], lr=0.1,
                 max_grad_norm=0.1)
    p0.grad, p1.grad = torch.ones(8), buffer[start:start + 4]
    with pytest.raises(ValueError, match="grad of parameter 0 of param group 1 shares memory"):
        opt.step()
    assert torch.equal(p1, torch.ones(4)) and torch.equal(p0, torch.ones(8)) and not opt.state


@pytest.mark.parametrize("interleaved", [False, True], ids=["", "interleaved"])
def test_bucketed_16bit_grads_of_a_group_that_clips_step(interleaved):
    """Grads that are views of one buffer (DDP's buckets) without shared elements: not
    refused as shared, in 16-bit too, nor across groups; interleaved ones (``buf[0::2]``,
    ``buf[1::2]``: their memory bounds meet) were."""
    ps = [torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16)) for _ in range(3)]
    opt = ft.Adam(ps, lr=0.1, max_grad_norm=0.1)
    bucket = torch.full((9,), 5.0, dtype=torch.bfloat16)
    for k, p in enumerate(ps):
        p.grad = bucket[k::3] if interleaved else bucket[3 * k:3 * k + 3]
    opt.step()
    assert all(not torch.equal(p, torch.ones(3, dtype=torch.bfloat16)) for p in ps)
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = ft.SGD([{"params": [a]}, {"params": [b]}], lr=0.1, max_grad_norm=0.1)
    bucket = torch.full((6,), 5.0)
    a.grad, b.grad = (bucket[0::2], bucket[1::2]) if interleaved else (bucket[:3], bucket[3:])
    opt.step()
    assert not torch.equal(a, torch.ones(3)) and torch.equal(a, b)


def test_a_shared_grad_refusal_names_the_grads_refused():
    """A group with a shared float32 grad (scaled in place) and a shared bfloat16 one
    (refused): the message named the pair first in memory, the float32 one."""
    ps = [torch.nn.Parameter(torch.ones(3, dtype=dtype))
          for dtype in (torch.float32,) * 2 + (torch.bfloat16,) * 2]
    opt = ft.SGD(ps, lr=0.1, max_grad_norm=0.1)
    memory = torch.full((8,), 5.0)          # (the refused pair after the other in memory)
    ps[0].grad = ps[1].grad = memory[:3]
    ps[2].grad = ps[3].grad = memory[4:].view(torch.bfloat16)[:3]
    with pytest.raises(ValueError, match="the grads of parameters 2 and 3 of param group 0 "
                                         "share memory"):
        opt.step()


def test_max_grad_norm_checks_and_survives_torch_state_dicts():
    p = torch.nn.Parameter(torch.randn(3))
    for bad in (0.0, -1.0, float("nan"), 10 ** 400):
        with pytest.raises(ValueError, match="max_grad_norm"):
            ft.Adam([p], max_grad_norm=bad)
    for bad in (True, np.bool_(True), "1", [1.0]):       # (had been ValueErrors)
        with pytest.raises(TypeError, match="max_grad_norm"):
            ft.Adam([p], max_grad_norm=bad)
    for good in (2, np.float32(0.5), fractions.Fraction(1, 3), float("inf")):
        ft.Adam([p], max_grad_norm=good)
    opt = ft.Adam([p], max_grad_norm=1.0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))],
                             "max_grad_norm": -2.0})
    opt.load_state_dict(torch.optim.Adam([p]).state_dict())    # torch's: no clip setting
    assert opt.param_groups[0]["max_grad_norm"] == 1.0
    torch.optim.Adam([p]).load_state_dict(opt.state_dict())    # torch ignores the key
    p.grad = torch.full((3,), 10.0)
    opt.step()
    np.testing.assert_allclose(opt.grad_norms[0], 300 ** 0.5, rtol=1e-6)
    assert torch.equal(p.grad, torch.full((3,), 10.0))     # Adam scales inside its kernel


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
@pytest.mark.parametrize("name", NAMES)
def test_a_torch_optim_distributed_checkpoint_loads_into_an_optimizer_that_does_not_clip(
        name, tmp_path):
    """torch.distributed.checkpoint loads into the state dict of the optimizer it restores,
    and requires each of its keys in the checkpoint: every group held ``max_grad_norm`` (None
    where it did not clip), which a torch.optim checkpoint lacks ("Missing key in checkpoint
    state_dict: optim.param_groups.0.max_grad_norm"). A group holds it where it clips only."""
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                         set_optimizer_state_dict,
                                                         set_state_dict)
    extra = dict(momentum=0.9) if name == "SGD" else {}

    def trained(lib, x):
        model = torch.nn.Linear(4, 2, dtype=torch.float64)
        with torch.no_grad():
            for k, p in enumerate(model.parameters()):
                p.copy_(torch.linspace(-1, 1, p.numel(), dtype=torch.float64).view(p.shape) + k)
        opt = getattr(lib, name)(model.parameters(), lr=0.01, **extra)
        model(torch.full((3, 4), x, dtype=torch.float64)).sum().backward()
        opt.step()
        return model, opt

    model, opt = trained(torch.optim, 1.0)
    dcp.save(dict(zip(("model", "optim"), get_state_dict(model, opt))), checkpoint_id=tmp_path)
    for flat in (False, True):
        mine, ours = trained(ft, 2.0)      # (a state the load must replace)
        assert all(set(g) == set(r)
                   for g, r in zip(ours.param_groups, opt.param_groups))
        loaded = dict(zip(("model", "optim"), get_state_dict(mine, ours)))
        dcp.load(loaded, checkpoint_id=tmp_path)
        set_state_dict(mine, ours, model_state_dict=loaded["model"],
                       optim_state_dict=loaded["optim"])
        if flat:
            options = StateDictOptions(flatten_optimizer_state_dict=True)
            set_optimizer_state_dict(mine, ours, get_state_dict(model, opt, options=options)[1],
                                     options=options)
        for p, q in zip(mine.parameters(), model.parameters()):
            for key, value in opt.state[q].items():
                assert torch.equal(ours.state[p][key], value), key


@pytest.mark.parametrize("name", ["SGD", "Adam"])
@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), "1.0", True, 10 ** 400],
                         ids=["negative", "zero", "nan", "str", "bool", "past-float"])
@pytest.mark.parametrize("groups", [1, 2])
def test_an_invalid_max_grad_norm_set_on_a_group_raises_at_the_step(name, bad, groups):
    """A group's ``max_grad_norm`` set after construction is checked by the step as by the
    constructor (a negative one flipped the grads, a string was taken as its number; an int
    past the float range raised OverflowError from the factor, after the groups before had
    stepped), before any group has stepped."""
    ps = [torch.nn.Parameter(torch.ones(3)) for _ in range(groups)]
    opt = getattr(ft, name)([{"params": [p]} for p in ps], lr=0.1)
    for p in ps:
        p.grad = torch.full((3,), 2.0)
    opt.param_groups[-1]["max_grad_norm"] = bad
    error = TypeError if isinstance(bad, (str, bool)) else ValueError
    for _ in range(2):
        with pytest.raises(error, match="Invalid max_grad_norm"):
            opt.step()
        assert all(torch.equal(p, torch.ones(3)) for p in ps) and not opt.state
        assert all(torch.equal(p.grad, torch.full((3,), 2.0)) for p in ps)


def test_grad_norms_survive_pickle_and_copies():
    """torch's __getstate__ keeps defaults, state and param groups only: a pickled or copied
    optimizer had no ``grad_norms`` (AttributeError) until its next step."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = ft.SGD([p], lr=0.1, max_grad_norm=1.0)
    fresh = pickle.loads(pickle.dumps(opt))
    assert fresh.grad_norms == [None]
    p.grad = torch.full((3,), 10.0)
    opt.step()
    for other in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt), copy.copy(opt)):
        assert other.grad_norms == opt.grad_norms and other.grad_norms is not opt.grad_norms


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_pickled_and_deep_copied_optimizers_step_on_apart_as_the_original(name, kwargs, dtype,
                                                                          backend):
    """As torch.optim's: pickle (protocols 2 and 5) and deepcopy of (params, optimizer) after
    a few steps, with two param groups, give an optimizer over the copied parameters that
    shares no tensor memory with the original and, stepped first, gives the original's
    next steps bit for bit (16-bit parameters: their master copies too)."""
    def grads(params, seed):
        gen = torch.Generator().manual_seed(seed)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)

    params = _params(dtype)
    opt = getattr(ft, name)([{"params": params[:3]}, {"params": params[3:], "lr": 0.003}],
                            **kwargs)
    for seed in range(3):
        grads(params, seed)
        opt.step()
    copies = [pickle.loads(pickle.dumps((params, opt), 2)),
              pickle.loads(pickle.dumps((params, opt), 5)), copy.deepcopy((params, opt))]
    def memory(params, opt):
        tensors = [*params, *(t for s in opt.state.values() for t in s.values())]
        return {t.untyped_storage().data_ptr() for t in tensors if t.numel()}

    mine = memory(params, opt)
    for params2, opt2 in copies:
        assert all(map(operator.is_, (p for g in opt2.param_groups for p in g["params"]),
                       params2))
        assert not mine & memory(params2, opt2)
        for seed in range(3, 5):
            grads(params2, seed)
            opt2.step()
    for seed in range(3, 5):
        grads(params, seed)
        opt.step()
    expected = opt.state_dict()["state"]
    for params2, opt2 in copies:
        assert all(torch.equal(a, b) for a, b in zip(params2, params))
        got = opt2.state_dict()["state"]
        assert all(torch.equal(got[i][k], v) for i in expected for k, v in expected[i].items())


# ---------------------------------------------------- bfloat16 and float16 parameters
@pytest.mark.parametrize("bad", [float("inf"), float("nan")], ids=["inf", "nan"])
@pytest.mark.parametrize("name", ["SGD", "RMSprop", "Adam"])
def test_max_grad_norm_of_non_finite_grads_warns_nothing(name, bad):
    """An infinite or NaN grad: the clip's NaNs are torch's, without NumPy's RuntimeWarning
    (an error under ``-W error``)."""
    results = []
    for lib in (ft, torch.optim):
        p, q = torch.nn.Parameter(torch.arange(4.0)), torch.nn.Parameter(torch.ones(3))
        extra = dict(max_grad_norm=1.0) if lib is ft else dict(foreach=False)
        opt = getattr(lib, name)([p, q], lr=0.1, **extra)
        p.grad, q.grad = torch.tensor([1.0, bad, 2.0, 3.0]), torch.ones(3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            if lib is torch.optim:
                torch.nn.utils.clip_grad_norm_([p, q], 1.0)
            opt.step()
        results.append([t.detach().clone() for t in (p, q)])
    assert all(torch.equal(a, b) or torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
               for a, b in zip(*results))


@pytest.mark.parametrize("dtypes", [(torch.float32,), (torch.float64,),
                                    (torch.float32, torch.float64)], ids=["f32", "f64", "mixed"])
def test_max_grad_norm_factor_is_torchs_bit_for_bit(dtypes):
    """Where our norm rounded to the grads' dtype is torch's norm (float64 when a grad is
    float64; 300 random groups of grads, some clipped, some not), the clipped step is
    clip_grad_norm_'s and torch's step bit for bit: torch's factor is
    ``(norm + 1e-6).reciprocal() * max_norm`` in that dtype, clamped to 1 (the float64
    quotient rounded to float32 is an ulp off in some cases: grads [30, 40] with max_norm 5
    gave 0.1 for torch's 0.099999994). SGD with lr 1 from 0 makes the params the clipped
    grads; Adam scales inside its kernel, against Adam on torch's clipped grads."""
    gen = torch.Generator().manual_seed(50)
    agreed = clipped = 0
    for case in range(300):
        sizes = torch.randint(1, 40, (int(torch.randint(1, 5, (1,), generator=gen)),),
                              generator=gen).tolist()
        kinds = [dtypes[k % len(dtypes)] for k in range(len(sizes))]
        scale = float(torch.rand((), generator=gen, dtype=torch.float64)) * 8
        grads = [torch.randn(n, generator=gen, dtype=torch.float64).mul(scale).to(dt)
                 for n, dt in zip(sizes, kinds)]
        max_norm = float(torch.rand((), generator=gen, dtype=torch.float64)) * 20 + 1e-3
        if case == 0:   # the probe's case
            grads, max_norm = [torch.tensor([30.0, 40.0], dtype=dtypes[0])], 5.0
        ours, theirs, adam, plain = ([torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
                                     for _ in range(4))
        for ps in (ours, theirs, adam, plain):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
        total = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
        for p, q in zip(plain, theirs):
            p.grad = q.grad.clone()
        opt = ft.SGD(ours, lr=1.0, max_grad_norm=max_norm)
        opt.step()
        torch.optim.SGD(theirs, lr=1.0, foreach=False).step()
        ft.Adam(adam, lr=0.1, max_grad_norm=max_norm).step()
        ft.Adam(plain, lr=0.1).step()
        norm = opt.grad_norms[0]
        if torch.tensor(norm, dtype=torch.float64).to(total.dtype).item() != total.item():
            continue
        agreed += 1
        clipped += total.item() + 1e-6 > max_norm
        assert all(_same_bits(a, b) for a, b in zip(ours, theirs)), case
        assert all(_same_bits(a.grad, b.grad) for a, b in zip(ours, theirs)), case
        assert all(_same_bits(a, b) for a, b in zip(adam, plain)), case
    # (a mixed group's norm is torch's float64 norm of its float32 grads' float32 norms,
    # which agrees with ours less often)
    assert agreed >= (40 if len(dtypes) > 1 else 150) and agreed // 4 <= clipped < agreed


def test_grad_norms_of_a_group_without_grads_and_of_added_groups():
    """A clipping group whose grads are all None reports clip_grad_norm_'s norm of no grads
    (0.0), a group that does not clip None; ``grad_norms`` keeps an entry per param group
    after add_param_group."""
    p, q = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))
    opt = ft.SGD([{"params": [p]}, {"params": [q], "max_grad_norm": None}], lr=0.1,
                 max_grad_norm=1.0)
    assert opt.grad_norms == [None, None]
    opt.step()
    expected = torch.nn.utils.clip_grad_norm_([p], 1.0).item()
    assert opt.grad_norms == [expected, None] and expected == 0.0
    opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))]})
    assert opt.grad_norms == [expected, None, None]
    opt.param_groups[2]["params"][0].grad = torch.full((2,), 3.0)
    opt.step()
    assert opt.grad_norms[0] == 0.0 and opt.grad_norms[1] is None
    assert opt.grad_norms[2] == pytest.approx(18 ** 0.5)


def test_16bit_rounding_is_torchs():
    """The reference rounding (fastopt.reference.lowp) gives torch's bits: ties, overflow,
    subnormals, infinities and NaN among random values."""
    gen = np.random.default_rng(12)
    u = gen.integers(0, 1 << 32, 20000, dtype=np.uint64).astype(np.uint32)
    u[:4000] = (u[:4000] & 0xFFFF0000) | 0x8000                # bfloat16 ties
    u[4000:6000] = (u[4000:6000] & 0xFFFFE000) | 0x1000        # float16 ties
    x = u.view(np.float32)
    x[6000:6010] = [np.inf, -np.inf, np.nan, -0.0, 65520.0, 65519.0, 3.4e38, 1e-40, -1e-45, 0]
    t = torch.from_numpy(x)
    ok = ~np.isnan(x)
    # NaN: the reference writes torch's scalar 0x7FC0; torch's vectorized path keeps other
    # NaN bits, so NaN is only required to stay NaN
    bf16 = t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    ours = lowp.float32_to_bfloat16(x)
    np.testing.assert_array_equal(ours[ok], bf16[ok])
    assert (ours[~ok] == 0x7FC0).all() and np.isnan(lowp.bfloat16_to_float32(bf16[~ok])).all()
    f16 = t.to(torch.float16).numpy()
    np.testing.assert_array_equal(lowp.float32_to_float16(x)[ok].view(np.uint16),
                                  f16[ok].view(np.uint16))
    assert np.isnan(lowp.float32_to_float16(x)[~ok]).all()


@pytest.mark.parametrize("dtype", HALVES, ids=["bf16", "f16"])
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_16bit_params_step_a_float32_master(name, kwargs, dtype):
    """A 16-bit parameter (beside a float32 and a float64 one in its group) steps a float32
    master copy with float32 state: the master follows torch.optim on float32 copies fed the
    same (widened) grads, and the parameter holds the master rounded to nearest even."""
    init = _params(torch.float32)
    mixed = [t.to(dtype) for t in init[:-2]] + [init[-2], init[-1].double()]
    ours = [torch.nn.Parameter(t.clone()) for t in mixed]
    ref = [torch.nn.Parameter(t.float() if t.dtype == dtype else t.clone()) for t in mixed]
    opt = getattr(ft, name)(ours, **kwargs)
    theirs = getattr(torch.optim, name)(ref, foreach=False, **kwargs)
    gen = torch.Generator().manual_seed(13)
    for _ in range(STEPS):
        for a, b in zip(ours, ref):
            a.grad = torch.randn(a.shape, generator=gen).to(a.dtype)
            b.grad = a.grad.to(b.dtype)
        opt.step()
        theirs.step()
    half = [p for p in ours if p.dtype == dtype]
    masters = [opt.state[p]["master_param"] for p in half]
    assert all(m.dtype == torch.float32 for m in masters)
    assert _ulps(masters, ref[:len(half)]) <= 4
    assert _ulps(ours[len(half):], ref[len(half):]) <= 4
    for p, m in zip(half, masters):
        assert torch.equal(p.detach().view(torch.int16), m.to(dtype).view(torch.int16))
    sd, rsd = opt.state_dict()["state"], theirs.state_dict()["state"]
    for i, entry in rsd.items():
        assert set(sd[i]) == set(entry) | ({"master_param"} if i < len(half) else set())
        for key, value in entry.items():
            assert sd[i][key].dtype == value.dtype, key
    for key in next(iter(rsd.values()), ()):
        assert _ulps([sd[i][key] for i in range(len(half))],
                     [rsd[i][key] for i in range(len(half))]) <= 8, key


def _bits(t):
    """A 16-bit tensor's bit patterns as uint16 (no copy)."""
    return t.detach().view(torch.int16).numpy().view(np.uint16)


def _same_floats(a, b):
    """Equal bits, NaN where the other has NaN (whose payload may follow operand order)."""
    a, b = a.detach().numpy(), b.detach().numpy()
    nan = np.isnan(a)
    return (a.shape == b.shape and np.array_equal(nan, np.isnan(b))
            and np.array_equal(a.view(np.uint32)[~nan], b.view(np.uint32)[~nan]))


@pytest.mark.parametrize("clip", [None, 0.5], ids=["", "clip"])
@pytest.mark.parametrize("dtype", HALVES, ids=["bf16", "f16"])
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_16bit_steps_are_the_float32_step_of_the_master(name, kwargs, dtype, clip):
    """The one-sweep 16-bit step has the bits of the unfused path that defines it: the same
    optimizer on float32 parameters (the 16-bit ones widened) fed the 16-bit grads widened
    (fastopt.reference.lowp) gives the master and the state bit for bit, and the parameter
    is the master rounded. 0-d, empty, odd-sized and transposed parameters; NaN and infinite
    grads in one step; the clip (16-bit grads scaled as they are widened); the 16-bit
    optimizer resumed from its state dict midway."""
    bfloat16 = dtype == torch.bfloat16
    init = [t.to(dtype) for t in _params(torch.float32)]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    wide = [torch.nn.Parameter(t.float()) for t in init]
    opt = getattr(ft, name)(ours, max_grad_norm=clip, **kwargs)
    ref = getattr(ft, name)(wide, max_grad_norm=clip, **kwargs)
    gen = torch.Generator().manual_seed(21)
    for step in range(6):
        for a, b in zip(ours, wide):
            a.grad = torch.randn(a.shape, generator=gen).to(dtype)
            if step == 4 and a.numel() > 2:
                a.grad.view(-1)[:2] = torch.tensor([float("nan"), float("-inf")])
            b.grad = torch.from_numpy(lowp.widen(_bits(a.grad), bfloat16))
        opt.step()
        ref.step()
        for a, b in zip(ours, wide):
            state, expected = opt.state[a], ref.state[b]
            assert set(state) == set(expected) | {"master_param"}
            master = state["master_param"]
            assert master.dtype == torch.float32 and _same_floats(master, b), step
            assert np.array_equal(_bits(a), lowp.float32_to_bfloat16(master.numpy())
                                  if bfloat16 else lowp.float32_to_float16(
                                      master.numpy()).view(np.uint16))
            for key, value in expected.items():
                assert state[key].dtype == value.dtype and _same_floats(state[key], value), key
        np.testing.assert_array_equal(np.array(opt.grad_norms, float),
                                      np.array(ref.grad_norms, float))
        if step == 2:       # resume from the state dict, master copies included
            saved = opt.state_dict()
            opt = getattr(ft, name)(ours, max_grad_norm=clip, **kwargs)
            opt.load_state_dict(saved)


def test_16bit_state_dicts_move_between_torch_and_fastopt():
    """torch.optim keeps 16-bit state for 16-bit parameters: it widens on loading here (the
    master copy starting from the parameter); fastopt's float32 state, master included,
    loads into torch.optim (which narrows it) and into fastopt again unchanged."""
    p = torch.nn.Parameter(torch.randn(6).to(torch.bfloat16))
    ref = torch.optim.Adam([p], foreach=False)
    p.grad = torch.randn(6).to(torch.bfloat16)
    ref.step()
    q = torch.nn.Parameter(p.detach().clone())
    opt = ft.Adam([q])
    opt.load_state_dict(ref.state_dict())
    assert opt.state[q]["exp_avg"].dtype == torch.float32
    torch.testing.assert_close(opt.state[q]["exp_avg"], ref.state[p]["exp_avg"].float(),
                               rtol=0, atol=0)
    q.grad = p.grad.clone()
    opt.step()
    assert torch.equal(opt.state[q]["master_param"].to(torch.bfloat16), q.detach())
    sd = opt.state_dict()
    again = ft.Adam([torch.nn.Parameter(q.detach().clone())])
    again.load_state_dict(sd)
    state = next(iter(again.state.values()))
    assert all(torch.equal(state[k], sd["state"][0][k]) and state[k].dtype == torch.float32
               for k in sd["state"][0])
    back = torch.optim.Adam([torch.nn.Parameter(q.detach().clone())], foreach=False)
    back.load_state_dict(sd)
    assert next(iter(back.state.values()))["exp_avg"].dtype == torch.bfloat16


def test_16bit_sgd_resumes_torch_momentum():
    """SGD's momentum buffer from a torch.optim state dict (16-bit, widened on loading) goes
    on as torch's would: it is not taken for a new buffer (which starts as the grad) because
    the master copy had to be made."""
    p = torch.nn.Parameter(torch.randn(6).to(torch.bfloat16))
    first = torch.optim.SGD([p], lr=0.1, momentum=0.9, foreach=False)
    p.grad = torch.randn(6).to(torch.bfloat16)
    first.step()
    q = torch.nn.Parameter(p.detach().clone())
    opt = ft.SGD([q], lr=0.1, momentum=0.9)
    opt.load_state_dict(first.state_dict())
    r = torch.nn.Parameter(q.detach().float())     # torch.optim on the float32 master
    ref = torch.optim.SGD([r], lr=0.1, momentum=0.9, foreach=False)
    ref.state[r]["momentum_buffer"] = opt.state[q]["momentum_buffer"].clone()
    q.grad = torch.randn(6).to(torch.bfloat16)
    r.grad = q.grad.float()
    opt.step()
    ref.step()
    assert _ulps([opt.state[q]["momentum_buffer"]], [ref.state[r]["momentum_buffer"]]) <= 1
    assert _ulps([opt.state[q]["master_param"]], [r]) <= 1


@pytest.mark.parametrize("how", ["reset", "loaded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_sgd_momentum_buffer_of_none_starts_from_the_grad(dtype, how):
    """torch's SGD takes a ``momentum_buffer`` of None as no buffer yet (``state.get``): the
    next step starts it from the grad. Set so to reset the momentum, or loaded from a state
    dict of torch <= 2.0, whose SGD stored None buffers when its momentum was 0."""
    results = []
    for lib in (ft, torch.optim):
        p = torch.nn.Parameter(torch.arange(4.0, dtype=dtype))
        opt = lib.SGD([p], lr=0.5, momentum=0.5)
        for k in range(4):
            p.grad = torch.full((4,), k + 1.0, dtype=dtype)
            if k == 2 and how == "reset":
                opt.state[p]["momentum_buffer"] = None
            if k == 2 and how == "loaded":
                saved = opt.state_dict()
                saved["state"] = {0: {"momentum_buffer": None}}
                opt.load_state_dict(saved)
            opt.step()
        results.append((p.detach().clone(), opt.state[p]["momentum_buffer"].to(dtype)))
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_load_state_dict_hooks_run_as_in_torch(dtype):
    """load_state_dict's hooks as torch.optim runs them: the pre-hooks first, each given the
    optimizer and a shallow copy of the dict (a returned dict is what is loaded, re-cast
    included: its NAdam ``mu_product`` and 16-bit state had been read from the caller's),
    the post-hooks last, given the optimizer (their edits of opt.state had been overwritten by
    the re-cast). The hooks stay registered, and the load's values are torch.optim's."""
    calls = []

    def pre(opt, state_dict):
        calls.append(("pre", opt, state_dict))
        state_dict = copy.deepcopy(state_dict)
        for s in state_dict["state"].values():
            s["exp_avg"].zero_()
            s["mu_product"] = torch.tensor(0.5)
        return state_dict

    def post(opt):
        calls.append(("post", opt))
        for s in opt.state.values():
            s["exp_avg_sq"] = torch.full_like(s["exp_avg_sq"], 2.0)

    results = []
    for lib in (ft, torch.optim):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(4).to(dtype))
        opt = lib.NAdam([p], lr=0.1)
        p.grad = torch.ones_like(p)
        opt.step()
        state_dict = copy.deepcopy(opt.state_dict())
        opt.register_load_state_dict_pre_hook(pre)
        opt.register_load_state_dict_post_hook(post)
        for _ in range(2):
            calls.clear()
            opt.load_state_dict(state_dict)
            assert [c[0] for c in calls] == ["pre", "post"]
            assert calls[0][1] is opt and calls[1][1] is opt
            assert calls[0][2] == state_dict and calls[0][2] is not state_dict
        s = opt.state[p]
        assert s["mu_product"].item() == 0.5
        assert torch.equal(s["exp_avg"], torch.zeros_like(s["exp_avg"]))
        assert torch.equal(s["exp_avg_sq"], torch.full_like(s["exp_avg_sq"], 2.0))
        results.append((p, opt))
    p, opt = results[0]
    assert opt.state[p]["exp_avg"].dtype == torch.float32     # 16-bit: widened, as before
    p.grad = torch.ones_like(p)
    opt.step()      # and it steps


@pytest.mark.parametrize("dtype", HALVES, ids=["bf16", "f16"])
def test_adagrad_16bit_sum_starts_at_the_initial_value(dtype):
    """Adagrad's float32 ``sum`` of a 16-bit parameter starts at initial_accumulator_value
    itself, whether the parameter came to the constructor (torch's __init__ makes it in the
    parameter's dtype: it had been widened from the 16-bit rounding) or to add_param_group;
    both then step as the float32 parameter does."""
    a, b = (torch.nn.Parameter(torch.ones(3, dtype=dtype)) for _ in range(2))
    w = torch.nn.Parameter(torch.ones(3))
    ctor = ft.Adagrad([a], lr=0.1, initial_accumulator_value=0.1)
    added = ft.Adagrad([torch.nn.Parameter(torch.ones(1))], lr=0.1, initial_accumulator_value=0.1)
    added.add_param_group({"params": [b]})
    ref = ft.Adagrad([w], lr=0.1, initial_accumulator_value=0.1)
    assert ctor.state[a]["sum"].dtype == torch.float32
    assert torch.equal(ctor.state[a]["sum"], torch.full((3,), 0.1))
    for _ in range(3):
        for p in (a, b, w):
            p.grad = torch.full_like(p, 0.5)
        for opt in (ctor, added, ref):
            opt.step()
    for p, opt in ((a, ctor), (b, added)):
        assert _same_floats(opt.state[p]["master_param"], w.detach())
        assert _same_floats(opt.state[p]["sum"], ref.state[w]["sum"])


def _no_grad(method, *args):
    with torch.no_grad():
        method(*args)


def _load_into_module(p, new):
    module = torch.nn.Module()
    module.register_parameter("w", p)
    module.load_state_dict({"w": new})


# Writes to a parameter between steps (``new``: the values, in the parameter's dtype), which
# a 16-bit parameter's master copy must follow (torch's version counter, or a new storage
# or geometry, tells them apart from the step's own)
WRITES = {
    "copy_ under no_grad": lambda p, new: _no_grad(p.copy_, new),
    "clamp_ under no_grad": lambda p, new: _no_grad(p.clamp_, -0.25, 0.25),
    "module load_state_dict": _load_into_module,
    ".data reassigned": lambda p, new: setattr(p, "data", new.clone()),
    "set_": lambda p, new: _no_grad(p.set_, new.clone()),
    ".data transposed (same storage)": lambda p, new: setattr(p, "data", p.data.t()),
}


@pytest.mark.parametrize("frozen", [False, True], ids=["", "frozen"])
@pytest.mark.parametrize("write", WRITES)
@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", {})],
                         ids=["SGD", "Adam"])
def test_16bit_masters_follow_writes_to_the_parameter(name, kwargs, write, frozen):
    """A 16-bit parameter written between steps (a model's load_state_dict, a clamp, a new
    ``.data``): its master copy is re-seeded from the parameter, so the next step starts
    from the written value, bit for bit as the float32 step of it (not from the stale
    master, which would undo the write). ``frozen``: the parameter has no grad around the
    write (steps that leave it alone, plans rebuilt), and steps again after."""
    gen = torch.Generator().manual_seed(30)
    init = [torch.randn(3, 3, generator=gen), torch.randn(4, generator=gen)]
    ours = [torch.nn.Parameter(t.to(torch.bfloat16)) for t in init]
    wide = [torch.nn.Parameter(p.detach().float()) for p in ours]
    opt = getattr(ft, name)(ours, **kwargs)
    ref = getattr(ft, name)(wide, **kwargs)     # float32: steps in place, sees every write

    def step(with_first=True):
        for a, b in zip(ours, wide):
            a.grad = (torch.randn(a.shape, generator=gen).to(torch.bfloat16)
                      if with_first or a is not ours[0] else None)
            b.grad = None if a.grad is None else a.grad.float()
        opt.step()
        ref.step()

    for _ in range(3):
        step()
    if frozen:
        step(with_first=False)
    new = torch.randn(3, 3, generator=gen).to(torch.bfloat16)
    before = wide[0].detach().clone()       # the master (the float32 run's parameter)
    WRITES[write](ours[0], new)
    WRITES[write](wide[0], new.float())     # (for the same geometry) then the same values:
    # the master is re-seeded where the parameter is no longer its rounding, and only there
    written = ours[0].detach() != before.to(torch.bfloat16)
    _no_grad(wide[0].copy_, torch.where(written, ours[0].detach().float(), before))
    if frozen:
        step(with_first=False)
        step(with_first=False)
    step()
    for a, b in zip(ours, wide):
        master = opt.state[a]["master_param"]
        assert _same_floats(master, b.detach())
        assert torch.equal(master.to(torch.bfloat16), a.detach())
        for key, value in ref.state[b].items():
            assert _same_floats(opt.state[a][key], value), key


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_16bit_masters_follow_a_write_to_some_elements_and_keep_the_others(dtype):
    """A write to some elements of a 16-bit parameter (weight clipping: a clamp under
    no_grad after each step) re-seeded the whole master from the 16-bit values, dropping the
    float32 remainders of the elements it left alone: after 200 SGD steps, each clamping
    the first of three elements, the other two were 0.609 where the float32 run rounded
    gives 0.801 (the 16-bit probe). Each element follows the float32 run with the same
    clamp, rounded."""
    p = torch.nn.Parameter(torch.tensor([0.5, 1.0, 1.0]).to(dtype))
    wide = torch.nn.Parameter(p.detach().float())
    opt, ref = ft.SGD([p], lr=1e-3), torch.optim.SGD([wide], lr=1e-3, foreach=False)
    g = torch.tensor([-1.0, 1.0, 1.0])
    for _ in range(200):
        p.grad, wide.grad = g.to(dtype), g.clone()
        opt.step()
        ref.step()
        for t in (p, wide):
            _no_grad(t[:1].clamp_, None, 0.5)
    assert torch.equal(p.detach(), wide.detach().to(dtype))
    assert torch.equal(opt.state[p]["master_param"][1:], wide.detach()[1:])
    # by the bits: +0.0 written over a master of -0.0 is a write (it had been kept, and the
    # next step wrote -0.0 back)
    q = torch.nn.Parameter(torch.tensor([-0.0, 1.0]).to(dtype))
    opt = ft.SGD([q], lr=1.0)
    q.grad = torch.zeros(2, dtype=dtype)
    opt.step()
    _no_grad(q.zero_)
    opt.step()
    assert q.detach().float().tolist() == [0.0, 0.0]
    assert torch.equal(q.detach().view(torch.int16), torch.zeros(2, dtype=torch.int16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", ["Adam", "SGD", "Adagrad"])
def test_16bit_transposed_parameters_step_alike_on_every_backend(name, dtype):
    """A 16-bit parameter in Fortran order (a transposed weight), with its grad from autograd
    in either order: the numba backend's 16-bit path took only C-ordered arrays and, once the
    copies were made in the param's order, copied them again forever (RecursionError, the
    step count advanced). Every backend steps it to the same bits."""
    import fastopt as fo
    kwargs = dict(lr=0.1, momentum=0.9) if name == "SGD" else dict(lr=0.1)
    results = {}
    for backend in GRID_BACKENDS + ["numpy"]:
        gen = torch.Generator().manual_seed(7)
        w = torch.nn.Parameter(torch.randn(5, 3, generator=gen).t().to(dtype))
        opt = getattr(ft, name)([w], **kwargs)
        with fo.use_backend(backend):
            for transposed_grad in (False, True, False):
                g = torch.randn(5, 3, generator=gen).to(dtype)
                w.grad = g.t() if transposed_grad else g.t().contiguous()
                opt.step()
        results[backend] = w.detach().view(torch.int16).clone()
    assert all(torch.equal(r, results["numpy"]) for r in results.values())


def _bf16_adam_after_3_steps(lr):
    """A bfloat16 parameter and the fastopt.torch Adam that stepped it 3 times (seeded)."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(8).to(torch.bfloat16))
    opt = ft.Adam([p], lr=lr)
    for _ in range(3):
        p.grad = torch.randn(8).to(torch.bfloat16)
        opt.step()
    return p, opt


def test_16bit_masters_loaded_from_torch_state_dicts_follow_the_parameter():
    """fastopt -> torch.optim (which keeps ``master_param`` in its state without stepping it)
    -> fastopt: the stale master is re-seeded from the parameter by the next step (not at
    the load, before which the parameter may not hold its value yet), so that step goes on
    from where torch.optim left the parameter. A master the parameter is the
    rounding of (fastopt's own checkpoint) is kept, with its extra bits."""
    p, first = _bf16_adam_after_3_steps(lr=0.1)
    checkpoint, at_checkpoint = copy.deepcopy(first.state_dict()), p.detach().clone()
    kept = checkpoint["state"][0]["master_param"]
    assert not torch.equal(kept, at_checkpoint.float())     # it holds more than the param
    theirs = torch.optim.Adam([p], lr=0.1, foreach=False)
    theirs.load_state_dict(first.state_dict())
    for _ in range(20):
        p.grad = torch.ones(8).to(torch.bfloat16)
        theirs.step()
    again = ft.Adam([p], lr=0.1)
    again.load_state_dict(theirs.state_dict())
    assert again.state[p]["master_param"].dtype == torch.float32
    before = p.detach().float()
    p.grad = torch.zeros(8).to(torch.bfloat16)      # a step from the momentum alone
    again.step()
    master = again.state[p]["master_param"]
    assert (master - before).abs().max().item() <= 0.1 * 1.01
    assert (p.detach().float() - before).abs().max().item() <= 0.1 * 1.01
    _no_grad(p.copy_, at_checkpoint)
    resumed = ft.Adam([p], lr=0.1)
    resumed.load_state_dict(checkpoint)
    assert torch.equal(resumed.state[p]["master_param"], kept)


@pytest.mark.parametrize("planned", [True, False], ids=["after-a-step", "fresh-plan"])
def test_16bit_master_assigned_none_is_made_anew_and_a_bad_one_is_refused_by_name(planned):
    """``state['master_param']`` set to None is made anew from the parameter, as a missing one
    (torch.optim ignores the key); one that is not a dense CPU tensor, or requires grad, is
    refused by name, as the other state tensors are, before anything changes. (None, or a
    str, raised AttributeError "'NoneType' object has no attribute 'dtype'" after a step;
    a str was re-seeded instead on a fresh plan; a meta or sparse master raised torch's or
    NumPy's errors naming nothing, or called a sparse tensor expanded.)"""
    def make():
        p = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
        opt = ft.Adam([p], lr=0.1)
        p.grad = torch.ones(3, dtype=torch.bfloat16)
        opt.step()
        if not planned:
            opt.load_state_dict(opt.state_dict())       # the next step plans anew
        return p, opt
    p, opt = make()
    master = torch.nn.Parameter(p.detach().float())    # the master made anew, in plain torch
    theirs = torch.optim.Adam([master], lr=0.1)
    theirs.load_state_dict(copy.deepcopy(opt.state_dict()))     # (float32 state, as ours)
    opt.state[p]["master_param"] = None
    master.grad = p.grad.float()
    opt.step()
    theirs.step()
    assert torch.equal(p.detach(), master.detach().to(torch.bfloat16))
    assert opt.state[p]["master_param"].dtype == torch.float32
    for bad, error, match in [(lambda w: "x", TypeError, "is of type str, expected a tensor"),
                              (lambda w: w.to("meta"), RuntimeError, "dense CPU"),
                              (lambda w: w.to_sparse(), RuntimeError, "dense CPU"),
                              (lambda w: w.requires_grad_(), RuntimeError, "requires grad")]:
        p, opt = make()
        before = (p.detach().clone(), copy.deepcopy(opt.state_dict()["state"]))
        # (a master the parameter is the rounding of: a fresh plan would re-seed another)
        opt.state[p]["master_param"] = bad(p.detach().float())
        with pytest.raises(error, match=r"state\['master_param'\] of parameter 0 .*" + match):
            opt.step()
        assert torch.equal(p.detach(), before[0])
        assert all(torch.equal(opt.state[p][k], v) for k, v in before[1][0].items()
                   if k != "master_param")


def _bf16_model(seed, dtype):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(),
                               torch.nn.Linear(3, 2)).to(dtype)


def _train(model, opt, xs):
    for x in xs:
        opt.zero_grad()
        model(x).float().pow(2).sum().backward()
        opt.step()


@pytest.mark.parametrize("dtype", HALVES, ids=["bf16", "f16"])
@pytest.mark.parametrize("order", ["model first", "optimizer first"])
@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.1, momentum=0.9)),
                                         ("Adam", dict(lr=0.01))], ids=["SGD", "Adam"])
def test_16bit_checkpoints_resume_whichever_is_loaded_first(name, kwargs, order, dtype):
    """A 16-bit model and its optimizer resumed from a checkpoint into a model of other
    values, the model's state dict loaded before or after the optimizer's: the masters are
    the checkpoint's (its parameters agree with them), so the resumed run is the
    uninterrupted one bit for bit. (The optimizer loaded first had re-seeded the masters
    from the parameters not loaded yet, and the model's load after it went unseen: the run
    went on from the fresh model's values.)"""
    gen = torch.Generator().manual_seed(40)
    xs = [torch.randn(8, 4, generator=gen).to(dtype) for _ in range(6)]
    model = _bf16_model(0, dtype)
    opt = getattr(ft, name)(model.parameters(), **kwargs)
    _train(model, opt, xs[:3])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    assert any(not torch.equal(s["master_param"].to(dtype).float(), s["master_param"])
               for s in opt.state.values())     # the masters hold more than the params
    _train(model, opt, xs[3:])
    buf.seek(0)
    checkpoint = torch.load(buf, weights_only=True)
    again = _bf16_model(1, dtype)
    resumed = getattr(ft, name)(again.parameters(), **kwargs)
    if order == "model first":
        again.load_state_dict(checkpoint["model"])
        resumed.load_state_dict(checkpoint["opt"])
    else:
        resumed.load_state_dict(checkpoint["opt"])
        again.load_state_dict(checkpoint["model"])
    _train(again, resumed, xs[3:])
    for a, b in zip(model.parameters(), again.parameters()):
        assert _same_bits(a, b)
        for key, value in opt.state[a].items():
            assert _same_bits(resumed.state[b][key], value), key


@pytest.mark.parametrize("order", ["model first", "optimizer first"])
def test_16bit_writes_between_a_load_and_the_next_step_are_seen(order):
    """A 16-bit parameter written between the optimizer's load_state_dict and the next step
    (after the model's load, whichever came first): that step starts from the written
    value, its master re-seeded (a load left no record of the version counters to compare,
    so the write had gone unseen and the step had undone it)."""
    p, first = _bf16_adam_after_3_steps(lr=0.01)
    saved = (copy.deepcopy(first.state_dict()), {"w": p.detach().clone()})
    q = torch.nn.Parameter(torch.zeros(8, dtype=torch.bfloat16))
    again = ft.Adam([q], lr=0.01)
    checkpoint, weights = copy.deepcopy(saved)
    if order == "model first":
        _load_into_module(q, weights["w"])
        again.load_state_dict(checkpoint)
    else:
        again.load_state_dict(checkpoint)
        _load_into_module(q, weights["w"])
    new = (weights["w"].float() + 10).to(torch.bfloat16)
    _no_grad(q.copy_, new)
    q.grad = torch.randn(8).to(torch.bfloat16)
    again.step()
    master = again.state[q]["master_param"]
    assert (master - new.float()).abs().max().item() <= 0.01 * 1.01
    assert torch.equal(master.to(torch.bfloat16), q.detach())


@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=1e-3, momentum=0.9)),
                                         ("Adam", dict(lr=1e-3))], ids=["SGD", "Adam"])
def test_16bit_views_of_one_buffer_in_several_groups_keep_their_masters(name, kwargs):
    """16-bit parameters that are views of one buffer (a flat parameter buffer) in different
    groups share its version counter, which each group's step moves: every step's masters
    are the float32 step's bit for bit (the other group's step had looked like a write, so
    the master was re-seeded from the parameter every step and the small updates were lost).
    A third view without a grad is left alone."""
    gen = torch.Generator().manual_seed(41)
    buf = torch.randn(3, 8, generator=gen).to(torch.bfloat16)
    ours = [torch.nn.Parameter(buf[k]) for k in range(3)]
    assert ours[0]._version == ours[1]._version
    wide = [torch.nn.Parameter(p.detach().float()) for p in ours]
    def groups(ps):
        return [{"params": [ps[0]]}, {"params": [ps[1]], "weight_decay": 0.1},
                {"params": [ps[2]]}]

    opt = getattr(ft, name)(groups(ours), **kwargs)
    ref = getattr(ft, name)(groups(wide), **kwargs)
    for _ in range(10):
        for a, b in zip(ours[:2], wide[:2]):
            a.grad = torch.randn(8, generator=gen).to(torch.bfloat16)
            b.grad = a.grad.float()
        opt.step()
        ref.step()
        for a, b in zip(ours[:2], wide[:2]):
            assert _same_floats(opt.state[a]["master_param"], b.detach())
            assert torch.equal(a.detach(), b.detach().to(torch.bfloat16))
    assert torch.equal(ours[2].detach(), buf[2]) and ours[2] not in opt.state


def _deepspeed_cpu_adam():
    """DeepSpeedCPUAdam, or a skip (deepspeed absent, as in CI, or FASTOPT_NO_DEEPSPEED set,
    or its CPU op not loadable here)."""
    if os.environ.get("FASTOPT_NO_DEEPSPEED"):
        pytest.skip("FASTOPT_NO_DEEPSPEED is set")
    pytest.importorskip("deepspeed")
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    try:
        DeepSpeedCPUAdam([torch.nn.Parameter(torch.zeros(1))])
    except RuntimeError as exc:     # its op failed to build or load
        pytest.skip(f"DeepSpeedCPUAdam is not usable here: {exc}")
    return DeepSpeedCPUAdam


@pytest.mark.parametrize("dtype", HALVES, ids=["bf16", "f16"])
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_16bit_adam_follows_deepspeed(name, dtype):
    """fastopt.torch's 16-bit Adam/AdamW against DeepSpeedCPUAdam's 16-bit mode as
    ZeRO-Offload runs it (float32 masters of the 16-bit parameters stepped with the widened
    16-bit grads, then rounded into the parameters), 25 steps with weight decay, odd sizes
    (DeepSpeed's scalar tail after its vector loop).

    Tolerances, from how the two compute: DeepSpeed keeps beta1**t and beta2**t as float32
    products of float32 betas and uses FMAs; fastopt folds the bias corrections in float64
    from the Python betas. Each step's update therefore differs by a few float32 ulps of
    itself (< 1e-5 * lr), and the roundings of the weight decay and of the update's addition
    by up to an ulp of the parameter each: the masters may drift apart by at most
    ``STEPS * (2 ulps of max |master| + 1e-5 * lr)``. A 16-bit parameter is its master
    rounded to nearest even on both sides (a monotonic rounding), so ours lies between
    DeepSpeed's master moved down and up by that much, rounded. exp_avg agrees to
    ``STEPS * 4`` float32 ulps of its largest value; exp_avg_sq also carries DeepSpeed's
    ``1 - float32(0.999)``, 1.3e-5 below 1e-3 relatively, so it agrees to that relative
    difference plus the same ulps."""
    DeepSpeedCPUAdam = _deepspeed_cpu_adam()
    lr, weight_decay = 1e-2, 0.05
    gen = torch.Generator().manual_seed(16)
    init = [torch.randn(s, generator=gen).to(dtype) for s in [(37,), (5, 13), (1,), (515,)]]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    opt = getattr(ft, name)(ours, lr=lr, weight_decay=weight_decay)
    masters = [t.float() for t in init]
    ds = DeepSpeedCPUAdam(masters, lr=lr, weight_decay=weight_decay,
                          adamw_mode=name == "AdamW")
    for _ in range(STEPS):
        for p, m in zip(ours, masters):
            p.grad = torch.randn(p.shape, generator=gen).to(dtype)
            m.grad = p.grad.float()
        opt.step()
        ds.step()
    eps32 = float(np.finfo(np.float32).eps)
    flat = lambda ts: torch.cat([t.detach().reshape(-1).double() for t in ts])  # noqa: E731
    ours_master = flat([opt.state[p]["master_param"] for p in ours])
    ds_master = flat(masters)
    tol = STEPS * (2 * float(np.spacing(np.float32(ds_master.abs().max()))) + 1e-5 * lr)
    assert (ours_master - ds_master).abs().max() <= tol
    # DeepSpeed's 16-bit parameters are its masters rounded; ours, our masters rounded
    below, above = ((ds_master + d).float().to(dtype) for d in (-tol, tol))
    mine = flat(ours).to(dtype)
    assert ((below <= mine) & (mine <= above)).all()
    beta2_gap = abs(1 - (1 - float(np.float32(0.999))) / (1 - 0.999))
    for key, rtol in (("exp_avg", STEPS * 4 * eps32),
                      ("exp_avg_sq", beta2_gap + STEPS * 4 * eps32)):
        a = flat([opt.state[p][key] for p in ours])
        b = flat([ds.state[m][key] for m in masters])
        assert (a - b).abs().max() <= rtol * b.abs().max(), key


# ---------------------------------------------------------------- torch.optim mechanics
def test_updates_in_place_and_keeps_torch_state_types():
    p = torch.nn.Parameter(torch.randn(10))
    p.grad = torch.randn(10)
    opt = ft.NAdam([p])
    ptr = p.data_ptr()
    opt.step()
    exp_avg = opt.state[p]["exp_avg"]
    opt.step()
    assert p.data_ptr() == ptr and opt.state[p]["exp_avg"] is exp_avg
    assert isinstance(opt, torch.optim.NAdam) and isinstance(opt, torch.optim.Optimizer)
    state = opt.state[p]
    assert state["step"].dtype == torch.float32 and state["step"].item() == 2
    assert state["mu_product"].dtype == torch.float32 and state["step"].dim() == 0


def test_nadam_under_a_float64_default_multiplies_mu_product_in_float64():
    """Under ``torch.set_default_dtype(torch.float64)`` torch keeps ``mu_product`` as a
    float64 tensor and multiplies it in float64: so does the step (the NumPy API's
    ``_nadam_scalars`` rounds to float32 unless told otherwise)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ours, opt, theirs, ref = _pair("NAdam", dict(momentum_decay=0.01))
        gen = torch.Generator().manual_seed(31)
        for _ in range(STEPS):
            _set_grads(gen, ours, theirs)
            opt.step()
            ref.step()
    finally:
        torch.set_default_dtype(default)
    for p, q in zip(ours, theirs):
        mine, torchs = opt.state[p]["mu_product"], ref.state[q]["mu_product"]
        assert mine.dtype == torchs.dtype == torch.float64 and torch.equal(mine, torchs)
    assert_trajectories_close(ours, theirs, opt, ref)
    args = (1, 0.5, 1e-3, (0.9, 0.999), 1e-8, 0.0, 0.004)
    mu = ops.nadam_momentum(1, 0.9, 0.004)
    assert ops._nadam_scalars(*args)[0] == float(np.float32(np.float32(0.5) * np.float32(mu)))
    assert ops._nadam_scalars(*args, single=False)[0] == 0.5 * mu


@pytest.mark.parametrize("product", ["one-element", "bfloat16"])
def test_a_one_element_or_16bit_mu_product_steps(product):
    """A ``mu_product`` assigned as a one-element float32 tensor of shape (1,) (torch steps
    it: its product is read with ``.item()``) gives torch's trajectory; a bfloat16 one (torch
    multiplies it in bfloat16) is widened to float32 as a 16-bit parameter's state is, and
    steps as that float32 product would (the kernels read it as a number, not its bits)."""
    runs = []
    for lib, value in ((ft, None), (torch.optim, None), (ft, "float32")):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 5, dtype=torch.float64))
        kw = {} if lib is ft else dict(foreach=False)
        opt = lib.NAdam([p], lr=0.1, **kw)
        p.grad = torch.full((5,), 0.5, dtype=torch.float64)
        opt.step()
        mu = opt.state[p]["mu_product"]
        if product == "one-element":
            opt.state[p]["mu_product"] = mu.reshape(1).clone()
        else:
            bf = mu.to(torch.bfloat16)
            opt.state[p]["mu_product"] = bf.float() if value == "float32" else bf
        for k in range(4):
            p.grad = torch.linspace(-0.5, k, 5, dtype=torch.float64)
            opt.step()
        runs.append(p.detach().clone())
    if product == "one-element":
        torch.testing.assert_close(runs[0], runs[1], rtol=1e-12, atol=1e-14)
    else:
        assert torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("key,value,error,match", [
    ("mu_product", torch.tensor(1), TypeError, r"state\['mu_product'\] of parameter 1 of "
                                               r"param group 1 has dtype torch.int64"),
    ("mu_product", torch.tensor(True), TypeError, r"state\['mu_product'\] of parameter 1 "
                                                  r"of param group 1 has dtype torch.bool"),
    ("mu_product", torch.ones(2, 2), ValueError, r"state\['mu_product'\] of parameter 1 of "
                                                 r"param group 1 has 4 elements"),
    ("step", torch.ones(2, 2), ValueError, r"state\['step'\] of parameter 1 of param group 1 "
                                           r"has 4 elements")])
def test_scalar_state_that_is_not_a_float_number_raises_before_any_group_steps(
        key, value, error, match):
    """NAdam's ``mu_product`` of an integer dtype (torch's in-place float multiply refuses
    it; the product was truncated to 0), or a ``mu_product`` or ``step`` of more than one
    element (torch's ``.item()`` refuses it): raises naming it before any group has
    stepped."""
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(2))
    c = torch.nn.Parameter(torch.ones(2, 2))
    opt = ft.NAdam([{"params": [a]}, {"params": [b, c]}], lr=0.1)
    for p in (a, b, c):
        p.grad = torch.full_like(p, 0.5)
    opt.step()
    opt.state[c][key] = value
    before = [t.clone() for t in (a, b, c, *opt.state[a].values(), *opt.state[b].values())]
    for _ in range(2):
        with pytest.raises(error, match=match):
            opt.step()
        after = [t for t in (a, b, c, *opt.state[a].values(), *opt.state[b].values())]
        assert all(torch.equal(x, y) for x, y in zip(before, after))
        assert opt.state[c][key] is value


def test_replaced_storage_and_state_are_picked_up():
    """A parameter whose ``.data`` was swapped, a state tensor replaced: the next step uses
    the new ones (the cached views are rebuilt)."""
    ours, opt, theirs, ref = _pair("Adam", {})
    gen = torch.Generator().manual_seed(10)
    for k in range(4):
        _set_grads(gen, ours, theirs)
        if k == 2:
            for ps, o in ((ours, opt), (theirs, ref)):
                ps[0].data = ps[0].data * 0.5
                o.state[ps[1]]["exp_avg"] = torch.ones_like(ps[1])
        opt.step()
        ref.step()
    assert_trajectories_close(ours, theirs, opt, ref)


# ------------------------------------------------- the cached plan of a group's step
def _grads_in_place(gen, *param_lists):
    """The same random grads on each list, written into the grad tensors already there (so
    nothing changes that the cached plan of a step depends on); new ones where None."""
    for ps in zip(*param_lists):
        g = torch.randn(ps[0].shape, generator=gen, dtype=ps[0].dtype)
        for p in ps:
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)


def _set_param(ps, opt):
    with torch.no_grad():
        ps[0].set_(ps[0].detach() * 0.5)


def _replace_param(ps, opt):
    q = torch.nn.Parameter(ps[1].detach() * 2)
    q.grad = ps[1].grad.clone()
    opt.param_groups[0]["params"][1] = ps[1] = q


def _add_group(ps, opt):
    q = torch.nn.Parameter(torch.linspace(-1, 1, 7, dtype=ps[0].dtype))
    q.grad = torch.ones_like(q)
    opt.add_param_group({"params": [q], "lr": 0.01})
    ps.append(q)


def _switch_on_amsgrad(ps, opt):
    # torch.optim's Adam then needs the state it would have made at the first step
    opt.param_groups[0]["amsgrad"] = True
    for p in ps:
        opt.state[p].setdefault("max_exp_avg_sq", torch.zeros_like(p))


# Each is a change between two steps that a stale plan would miss (stepping old tensors, or
# none): applied to fastopt.torch and torch.optim alike, the trajectories must still agree.
CHANGES = {
    "grad replaced": lambda ps, opt: setattr(ps[1], "grad", ps[1].grad * 3),
    "grad storage swapped": lambda ps, opt: setattr(ps[1].grad, "data", ps[1].grad.data * 3),
    "grad set_": lambda ps, opt: ps[1].grad.set_(ps[1].grad * 3),
    "grad None": lambda ps, opt: setattr(ps[1], "grad", None),
    "param .data reassigned": lambda ps, opt: setattr(ps[0], "data", ps[0].data * 0.5),
    "param set_": _set_param,
    "param replaced in its group": _replace_param,
    "param group added": _add_group,
    "state tensor replaced": lambda ps, opt: opt.state[ps[1]].__setitem__(
        "exp_avg", torch.ones_like(ps[1])),
    "state tensor storage swapped": lambda ps, opt: setattr(
        opt.state[ps[1]]["exp_avg"], "data", torch.ones_like(ps[1])),
    "step written in place": lambda ps, opt: opt.state[ps[1]]["step"].fill_(10),
    "step replaced": lambda ps, opt: opt.state[ps[1]].__setitem__("step", torch.tensor(10.0)),
    "state dict of a parameter replaced": lambda ps, opt: opt.state.__setitem__(ps[1], {}),
    "opt.state cleared": lambda ps, opt: opt.state.clear(),
    "opt.state replaced": lambda ps, opt: setattr(opt, "state", type(opt.state)(dict)),
    "state dict loaded": lambda ps, opt: opt.load_state_dict(copy.deepcopy(opt.state_dict())),
    "option needing more state": _switch_on_amsgrad,
}


@pytest.mark.parametrize("extra", [0, 20], ids=["7 params", "27 params"])
@pytest.mark.parametrize("change", CHANGES)
def test_the_cached_plan_sees_every_change(change, extra):
    """fastopt.torch checks its cached plan of a group's step (views, state, counts) against
    the group each step: after each change the trajectory is still torch.optim's. (Beyond
    16 parameters, opt.state is compared with the last step's as a whole first.)"""
    ours, opt, theirs, ref = _pair("Adam", dict(weight_decay=0.1), extra=extra)
    gen = torch.Generator().manual_seed(14)
    for k in range(5):
        _grads_in_place(gen, ours, theirs)
        if k == 2:
            for ps, o in ((ours, opt), (theirs, ref)):
                CHANGES[change](ps, o)
        opt.step()
        ref.step()
    assert _ulps(ours, theirs) <= 4
    for key in ref.state[theirs[0]]:
        assert _ulps([opt.state[p][key] for p in ours],
                     [ref.state[p][key] for p in theirs]) <= 8, key


# In-place writes to a parameter's ``step`` (the state's own tensor: fastopt.torch's is a view
# of the group's count buffer) between steps
STEP_WRITES = {
    "add_": lambda t: t.add_(3),
    "fill_": lambda t: t.fill_(2),
    "mul_": lambda t: t.mul_(0.5),
    "copy_": lambda t: t.copy_(torch.tensor(7)),
    "zero_": lambda t: t.zero_(),
    "unsqueeze_": lambda t: t.unsqueeze_(0),
    "t_ of a (1, 1) view": lambda t: t.unsqueeze_(0).unsqueeze_(1).add_(1).t_(),
    # a count torch steps without reading it (RMSprop's and Adadelta's), which the others'
    # scalars refuse (test_torch_atomicity)
    "fill_ nan": lambda t: t.fill_(float("nan")),
}
STEPPED = ["Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta", "Adamax", "NAdam", "RAdam"]


@pytest.mark.parametrize("name", STEPPED)
@pytest.mark.parametrize("write", STEP_WRITES)
@pytest.mark.parametrize("where", ["one of a group", "every one of a group", "kept grads"])
def test_a_step_count_written_in_place_is_read_by_the_next_step(name, write, where):
    """The next step reads a count written in place as torch.optim does (the counts of the
    group's parameters then differ: they are stepped in separate kernel calls, every one of
    them), and counts on from it."""
    if write == "fill_ nan" and name not in ("RMSprop", "Adadelta"):
        pytest.skip("the step's scalars refuse a NaN count")
    ours, opt, theirs, ref = _pair(name, dict(lr=0.01))
    gen = torch.Generator().manual_seed(15)
    set_grads = _grads_in_place if where == "kept grads" else _set_grads
    for k in range(6):
        set_grads(gen, ours, theirs)
        if k == 3:
            for ps, o in ((ours, opt), (theirs, ref)):
                for p in (ps if where == "every one of a group" else ps[1:2]):
                    STEP_WRITES[write](o.state[p]["step"])
        opt.step()
        ref.step()
    assert _ulps(ours, theirs) <= 4
    for key in ref.state[theirs[0]]:
        if key != "step":
            assert _ulps([opt.state[p][key] for p in ours],
                         [ref.state[p][key] for p in theirs]) <= 8, key
    np.testing.assert_array_equal([float(opt.state[p]["step"]) for p in ours],
                                  [float(ref.state[p]["step"]) for p in theirs])


@pytest.mark.parametrize("name", STEPPED)
def test_step_counts_in_shared_memory_are_advanced_in_place_as_torch_does(name, monkeypatch):
    """The A3C/Hogwild "SharedAdam": each state made before the first step, its tensors in
    shared memory, so that processes stepping one model share one count and one set of
    moments. The count was copied into the group's own and never advanced: each process
    began its bias correction anew on moments that were not new. Now a count in shared memory
    stays the state's, read at each step (another process advances it: here a write between
    steps) and advanced in place, as torch's; and a torch.multiprocessing pickle of the
    optimizer (a spawned worker's) keeps it shared."""
    from multiprocessing.reduction import ForkingPickler
    import torch.multiprocessing  # noqa: F401  (registers its reductions of shared tensors)
    ours, opt, theirs, ref = _pair(name, dict(lr=0.01))
    counts = {}
    for ps, o in ((ours, opt), (theirs, ref)):
        for p in ps:
            o.state[p]["step"] = torch.zeros(()).share_memory_()
            for key in {"Adagrad": ["sum"], "RMSprop": ["square_avg"],
                        "Adadelta": ["square_avg", "acc_delta"],
                        "Adamax": ["exp_avg", "exp_inf"]}.get(name, ["exp_avg", "exp_avg_sq"]):
                o.state[p][key] = torch.zeros_like(p).share_memory_()
            if name == "NAdam":
                o.state[p]["mu_product"] = torch.ones(()).share_memory_()
        counts[id(o)] = [o.state[p]["step"] for p in ps]
    gen = torch.Generator().manual_seed(3)
    update = type(opt)._update

    def another_process_steps_meanwhile(*args, **kwargs):
        monkeypatch.undo()      # (once: a step of counts that differ is several calls)
        counts[id(opt)][0].add_(1)
        return update(*args, **kwargs)
    for k in range(5):
        _set_grads(gen, ours, theirs)
        if k == 2:      # another process stepped the shared state twice
            for o in (opt, ref):
                counts[id(o)][0].add_(2)
        if k == 4:      # and once during this step, after it read the count
            monkeypatch.setattr(type(opt), "_update", another_process_steps_meanwhile)
        opt.step()
        ref.step()
        if k == 4:      # (torch: once it read and advanced the count)
            counts[id(ref)][0].add_(1)
    assert [float(t) for t in counts[id(opt)]] == [float(t) for t in counts[id(ref)]] == \
        [8.0] + [5.0] * (len(ours) - 1)
    assert all(opt.state[p]["step"] is t for p, t in zip(ours, counts[id(opt)]))
    assert _ulps(ours, theirs) <= 4
    twin = ForkingPickler.loads(ForkingPickler.dumps(opt))
    twin_params = [group["params"] for group in twin.param_groups][0]
    for p in twin_params:
        p.grad = torch.ones_like(p)
    twin.step()
    assert [float(t) for t in counts[id(opt)]] == [9.0] + [6.0] * (len(ours) - 1)


def test_a_state_put_in_shared_memory_after_a_step_is_shared_with_a_spawned_worker():
    """torch's own way to share an optimizer: step once (the state is made), move every state
    tensor to shared memory, hand the optimizer to spawned workers (torch.multiprocessing
    pickles it). The pickle gave each count a storage of its own (made for plain pickles,
    where a view carries its whole storage), so each worker counted from 1 alone."""
    from multiprocessing.reduction import ForkingPickler
    import torch.multiprocessing  # noqa: F401  (registers its reductions of shared tensors)
    ours, opt, _, _ = _pair("Adam", dict(lr=0.01))
    for p in ours:
        p.grad = torch.ones_like(p)
    opt.step()
    for state in opt.state.values():
        for t in state.values():
            t.share_memory_()
    worker = ForkingPickler.loads(ForkingPickler.dumps(opt))
    for p in worker.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    worker.step()
    worker.step()
    assert [float(opt.state[p]["step"]) for p in ours] == [3.0] * len(ours)


@pytest.mark.parametrize("dst", NAMES)
@pytest.mark.parametrize("src", NAMES)
def test_a_state_dict_of_another_optimizer_class_loads_and_steps_as_in_torch(src, dst):
    """torch.optim's state dict of one class (SGD with momentum for SGD) loaded into another
    with the same parameters: fastopt.torch does what torch.optim does. The load raises
    where torch's does (NAdam's needs ``mu_product``, the others a ``step``); torch loads the
    rest, with the saved param groups' options, and its step then raises KeyError (an option
    or a state key the state dict lacks: ``exp_inf`` in Adam's for Adamax), which
    fastopt.torch's raises too, changing nothing; or it steps (Adam's for RAdam), and
    fastopt.torch steps torch's numbers."""
    if src == dst:
        pytest.skip("the same class")
    extra = dict(momentum=0.9) if src == "SGD" else {}
    source = getattr(torch.optim, src)(_params(torch.float64), lr=0.01, foreach=False, **extra)
    gen = torch.Generator().manual_seed(16)
    _set_grads(gen, source.param_groups[0]["params"])
    source.step()
    saved = source.state_dict()
    ours, opt, theirs, ref = _pair(dst, dict(lr=0.02))
    try:
        ref.load_state_dict(copy.deepcopy(saved))
    except Exception as error:
        with pytest.raises(type(error)):
            opt.load_state_dict(copy.deepcopy(saved))
        return
    opt.load_state_dict(copy.deepcopy(saved))
    for _ in range(3):
        _set_grads(gen, ours, theirs)
        try:
            ref.step()
        except Exception as error:
            before = [p.detach().clone() for p in ours]
            state = copy.deepcopy(opt.state_dict())
            with pytest.raises(type(error)):
                opt.step()
            assert all(torch.equal(p, q) for p, q in zip(ours, before))
            after = opt.state_dict()
            for i, entry in state["state"].items():
                assert entry.keys() == after["state"][i].keys()
                for key, value in entry.items():
                    assert torch.equal(value, after["state"][i][key]), key
            return
        opt.step()
    assert_trajectories_close(ours, theirs, opt, ref)


@pytest.mark.parametrize("clear", ["opt.zero_grad()", "model.zero_grad()", "grad = None"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_grads_set_to_none_are_freed_as_with_torch(clear, dtype):
    """Grads set to None after a step (``zero_grad()``'s default) are freed then, as with
    torch.optim, not held by the step's cached views until the next step: that would hold a
    second set of grads through the next backward. Grads kept and written in place are
    still stepped through the cached views."""
    model = torch.nn.Linear(3, 2).to(dtype)
    opt = ft.Adam(model.parameters())
    for k in range(3):
        model(torch.ones(1, 3, dtype=dtype)).sum().backward()
        opt.step()
        alive = [weakref.ref(p.grad) for p in model.parameters()]
        if clear == "opt.zero_grad()":
            opt.zero_grad()
        elif clear == "model.zero_grad()":
            model.zero_grad()
        else:
            for p in model.parameters():
                p.grad = None
        assert [ref() for ref in alive] == [None, None]
    for k in range(3):
        model(torch.ones(1, 3, dtype=dtype)).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
    plan = opt._plans[0]
    model(torch.ones(1, 3, dtype=dtype)).sum().backward()
    opt.step()
    assert opt._plans[0] is plan and plan.graw is not None


@pytest.mark.parametrize("name", ["SGD", "Adam", "NAdam"])
def test_empty_parameters_with_zero_strides_step_as_with_torch(name):
    """NumPy 2 gives an empty array strides of 0, which torch.from_numpy keeps (and clone()
    after it): fastopt.torch refused such a parameter as an expanded tensor, where torch.optim
    steps it (it has no elements). The fuzz probe: 69 of 200 random cases, each empty."""
    import numpy as np
    empty = torch.from_numpy(np.zeros((5, 0, 4), np.float32)).clone()
    assert 0 in empty.stride()
    for lib in (torch.optim, ft):
        p, q = empty.clone().requires_grad_(), torch.ones(3, requires_grad=True)
        p.grad, q.grad = torch.zeros_like(p), torch.ones(3)
        getattr(lib, name)([p, q], lr=0.1).step()
        assert p.shape == (5, 0, 4) and q.detach().ne(1).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_kept_grads_are_freed_by_zero_grad_as_with_torch(dtype):
    """Grads stepped again (kept, written in place: zero_grad(set_to_none=False), gradient
    accumulation) are held by the step's cached views; zero_grad() set them to None and the
    views held them until the next step (the leaks probe: a 100 MB grad held through the
    next backward). It lets go of them; the next backward's grads are stepped as new ones
    (as by a twin whose grads are zeroed instead)."""
    model = torch.nn.Linear(3, 2).to(dtype)
    twin = copy.deepcopy(model)
    opt, ref = ft.Adam(model.parameters()), ft.Adam(twin.parameters())
    for k in range(6):
        for m, o in ((model, opt), (twin, ref)):
            m(torch.full((1, 3), 1.0 + k, dtype=dtype)).sum().backward()
            o.step()
            if k % 3 == 2 and o is opt:
                alive = [weakref.ref(p.grad) for p in m.parameters()]
                o.zero_grad()
                assert [r() for r in alive] == [None, None]
            else:
                o.zero_grad(set_to_none=False)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("then", ["zero_grad", "state_dict", "nothing"])
@pytest.mark.parametrize("how", ["removed", "list rebuilt", "last group popped",
                                 "first group popped", "group replaced"])
@pytest.mark.parametrize("many", [False, True], ids=["few", "many"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_a_parameter_taken_out_is_freed_by_zero_grad_or_state_dict(then, how, many, dtype):
    """A parameter taken out of its group (or its group popped, or replaced by another of the
    same size) whose state was deleted is freed by torch.optim at once; the step's plan of
    its group (and, past 16 parameters, its record of opt.state) held it, its grad and its
    state until the next step, for the optimizer's life if it stepped no more (the lifetime
    probe: a frozen part handed to another optimizer). zero_grad() and state_dict() let go
    of it, but in a group with 16-bit parameters, other than one popped from the end (its
    plan tells the next step which parameters were written since: dropped, a write through
    ``.data`` the step does not see was seen after either call, and not without; the
    reviews), where the next step lets go of it. Either way the rest steps on as in an
    optimizer that never had it, and as with torch.optim."""
    results = []
    for lib, take_out in ((torch.optim, True), (ft, True), (ft, False)):
        torch.manual_seed(0)
        rest = [torch.nn.Parameter(torch.randn(3).to(dtype)) for _ in range(20 if many else 1)]
        out = torch.nn.Parameter(torch.randn(3 if "group" in how else 1000).to(dtype))
        first = how == "first group popped"
        opt = lib.Adam([{"params": [out]}, {"params": rest}] if first else
                       [{"params": rest}, {"params": [out]}] if "group" in how
                       else [*rest, out], lr=0.1)
        for p in (*rest, out):
            p.grad = torch.ones_like(p)
        opt.step()
        if how in ("removed", "list rebuilt"):
            rest[0].data.fill_(0.5)     # (in bf16 not seen by the next step: its master)
        if take_out:
            if how == "removed":
                del opt.param_groups[0]["params"][-1]      # (out: list.remove compares values)
            elif how == "list rebuilt":
                opt.param_groups[0]["params"] = [q for q in opt.param_groups[0]["params"]
                                                 if q is not out]
            else:
                opt.param_groups.pop(0 if first else -1)
            if how == "group replaced":
                opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3, dtype=dtype))]})
            del opt.state[out]
            alive = weakref.ref(out)
            del out, p
            if then != "nothing":
                getattr(opt, then)()
                if lib is torch.optim or dtype == torch.float32 or how == "last group popped":
                    assert alive() is None, lib.__name__
        for q in rest:
            q.grad = torch.full_like(q, -1.0)
        opt.step()
        assert not take_out or alive() is None, lib.__name__
        results.append([q.detach() for q in rest])
    assert all(map(torch.equal, results[1], results[2]))
    if dtype == torch.float32:
        assert _ulps(results[1], results[0]) <= 4


def test_grads_that_refuse_the_mark_or_copy_it_step_and_free_as_with_torch():
    """A step marks the grads it releases (see the test above). A grad of a type whose
    __setattr__ refuses had raised after the parameters were written, before the state was
    stored (the momentum lost at every step); a deep copy of a released grad, which carries
    the mark, had been taken for it and held through the next backward."""
    class Frozen(torch.Tensor):
        def __setattr__(self, name, value):
            raise TypeError("frozen")
    results = []
    for lib in (torch.optim, ft):
        p = torch.nn.Parameter(torch.zeros(3))
        opt = lib.SGD([p], lr=0.5, momentum=0.5)
        for _ in range(2):
            p.grad = torch.ones(3).as_subclass(Frozen)
            opt.step()
        results.append((p.detach().clone(), opt.state[p]["momentum_buffer"].clone()))
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(*results))
    p = torch.nn.Parameter(torch.zeros(3))
    opt = ft.Adam([p])
    p.grad = torch.ones(3)
    opt.step()
    p.grad = copy.deepcopy(p.grad)
    alive = weakref.ref(p.grad)
    opt.step()
    opt.zero_grad()
    assert alive() is None


@pytest.mark.parametrize("keep", [False, True], ids=["new-grads", "kept-grads"])
def test_a_model_converted_by_swapping_its_tensors_after_a_step_as_with_torch(keep):
    """``model.to(torch.float64)`` with swap_tensors (as torch converts tensor subclasses, or
    every parameter once torch.__future__ says so) after a step, grads still set: the step
    had left a weak reference in each grad, which swap_tensors refuses, and the conversion
    raised halfway (the weight float64, the bias float32). Then the model steps on in
    float64 as with torch.optim."""
    was = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        results = []
        for lib in (torch.optim, ft):
            torch.manual_seed(0)
            model = torch.nn.Linear(4, 3)
            # (grads 2 and 4, exact momentum buffers and updates: one rounding per step)
            opt = lib.SGD(model.parameters(), lr=0.125, momentum=0.5)
            for _ in range(3 if keep else 1):       # a third step keeps the same grads
                model(torch.ones(2, 4)).sum().backward()
                opt.step()
            model.to(torch.float64)
            assert [p.dtype for p in model.parameters()] == [torch.float64] * 2
            opt.load_state_dict(opt.state_dict())   # (torch's way to re-cast the state)
            opt.zero_grad()
            model(torch.ones(2, 4, dtype=torch.float64)).sum().backward()
            opt.step()
            results.append([p.detach().clone() for p in model.parameters()])
    finally:
        torch.__future__.set_swap_module_params_on_conversion(was)
    for ours, theirs in zip(results[1], results[0]):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.1, momentum=0.9)), *(
    (n, {}) for n in NAMES if n != "SGD")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_held_state_dict_stays_the_live_state_as_in_torch(name, kwargs, dtype):
    """torch's step fills a parameter's state dict and updates it in place: ``opt.state[p]``
    taken before the first step (an empty entry of the defaultdict; Adagrad's, made by its
    constructor) or after a load_state_dict is the state the steps go on updating. Ours
    stored a new dict (made from it, so that a raising step changed nothing), and a held one
    was left behind: empty, or with the loaded step count."""
    def run(module):
        p = torch.nn.Parameter(torch.ones(3, dtype=dtype))
        opt = getattr(module, name)([p], **kwargs)
        held = opt.state[p]
        p.grad = torch.ones(3, dtype=dtype)
        opt.step()
        live = [held is opt.state[p]]
        opt.load_state_dict(opt.state_dict())
        held = opt.state[p]
        opt.step()
        opt.step()
        return live + [held is opt.state[p]], held.get("step")

    ours, theirs = run(ft), run(torch.optim)
    assert ours[0] == theirs[0] == [True, True]
    assert (ours[1] is None) == (theirs[1] is None) and (ours[1] is None or ours[1] == 3)


def test_a_step_that_raises_after_a_load_leaves_the_loaded_counts_as_they_were():
    """The first step after a load adopts the loaded counts (a view of the group's count
    tensor, in place) once it succeeds: done while the plan was made, a step that then raised
    (a sparse grad) left each a view of a count tensor thrown away, and the next plan copied
    it: the checkpoint's counts stayed behind its moments, and the failed step had changed
    which tensors they were."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = ft.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    ck = torch.load(buf)
    opt = ft.Adam([p], lr=0.1)
    opt.load_state_dict(ck)
    step = ck["state"][0]["step"]
    p.grad = torch.ones(3).to_sparse()
    with pytest.raises((RuntimeError, TypeError, ValueError)):
        opt.step()
    assert step._base is None and float(step) == 1.0
    p.grad = torch.ones(3)
    opt.step()
    opt.step()
    assert opt.state[p]["step"] is step and float(step) == 3.0


@pytest.mark.parametrize("then", ["", "a sits out", "a failed step"])
@pytest.mark.parametrize("change", ["b's state deleted", "b's state reset", "b removed",
                                    "c added", "b's count loaded", "a moved to a new group",
                                    "a removed and put back"])
def test_a_held_count_stays_live_when_the_groups_counts_are_made_anew(change, then):
    """A parameter's ``step`` held (in a checkpoint dict loaded with load_state_dict, or from
    ``opt.state[a]``) stays the tensor the steps advance, as in torch.optim, when the group's
    count tensor is made anew (another parameter's state or count changed, a parameter
    added or removed, a moved to another group): it had been replaced by a view of the new
    count tensor, and stayed at its count while the moments it was saved with went on.
    ``then``: a has no grad at the step after the change, or that step raises (fastopt's:
    a's grad sparse), and a steps at the two after."""
    held = []
    for lib in (ft, torch.optim):
        gen = torch.Generator().manual_seed(0)
        a, b, c = (torch.nn.Parameter(torch.randn(3, generator=gen)) for _ in range(3))
        opt = lib.Adam([a, b], lr=0.1)

        def step(skip=None):
            for group in opt.param_groups:
                for p in group["params"]:
                    p.grad = None if p is skip else torch.ones(3)
            opt.step()

        step()
        buf = io.BytesIO()
        torch.save(opt.state_dict(), buf)
        buf.seek(0)
        ck = torch.load(buf)
        opt = lib.Adam([a, b], lr=0.1)
        opt.load_state_dict(ck)
        step()
        count, mine = ck["state"][0]["step"], opt.state[a]["step"]
        group = opt.param_groups[0]["params"]
        if change == "b's state deleted":
            del opt.state[b]
        elif change == "b's state reset":
            opt.state[b] = {}
        elif change == "b removed":
            group.pop(1)
        elif change == "c added":
            group.append(c)
        elif change == "b's count loaded":
            opt.state[b]["step"] = torch.tensor(7.0)
        elif change == "a moved to a new group":
            group.pop(0)
            opt.add_param_group({"params": [a]})
        else:
            group.pop(0)
            step()
            group.append(a)
        if then == "a sits out":
            step(skip=a)
        elif then == "a failed step" and lib is ft:
            a.grad = torch.ones(3).to_sparse()
            with pytest.raises((RuntimeError, TypeError, ValueError)):
                opt.step()
        step()
        step()
        assert opt.state[a]["step"] is count is mine
        held.append((float(count), sorted(float(opt.state[p]["step"]) for p in opt.state)))
    assert held[0] == held[1] and held[0][0] == 4.0


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("how", ["both", "a has no grad", "a failed step first"])
def test_counts_of_two_parameters_whose_states_were_exchanged_stay_theirs(groups, how):
    """Two parameters' states exchanged between steps, in one group or two: the counts were
    read into the group's kept count tensor one after the other, so that one read a slot the
    other had just written (both took one count, and with one parameter without a grad the
    two states then shared one), and a step that raised after that had changed them."""
    counts = []
    for lib, extra in ((ft, {}), (torch.optim, dict(foreach=False))):
        a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
        params = [a, b] if groups == 1 else [{"params": [a]}, {"params": [b]}]
        opt = lib.Adam(params, lr=0.1, **extra)
        a.grad = torch.ones(3)
        for _ in range(3):
            opt.step()
        b.grad = torch.ones(3)
        opt.step()
        opt.state[a], opt.state[b] = opt.state[b], opt.state[a]
        if how == "a has no grad":
            a.grad = None
        if how == "a failed step first" and lib is ft:
            b.grad = torch.ones(3).to_sparse()
            with pytest.raises(RuntimeError):
                opt.step()
            assert (float(opt.state[a]["step"]), float(opt.state[b]["step"])) == (1.0, 4.0)
            b.grad = torch.ones(3)
        opt.step()
        opt.step()
        counts.append((float(opt.state[a]["step"]), float(opt.state[b]["step"])))
    assert counts[0] == counts[1]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_loaded_state_dict_stays_the_live_state_as_in_torch(name, dtype):
    """torch.optim's load_state_dict keeps the loaded tensors as the state where it casts
    none, ``step`` included: the steps after ``opt.load_state_dict(ck)`` update ``ck``, so
    that ``ck = torch.load(path); opt.load_state_dict(ck); ...; torch.save(ck, path)`` saves
    the current state. Ours updated ck's moments but copied its counts into the group's count
    tensor: ck kept the loaded counts, steps behind its moments. So with a checkpoint read
    back (torch.save, torch.load) and with the optimizer's own state_dict() loaded back. One
    difference, where the step keeps another dtype than torch: NAdam's float32 mu_product of
    float64 parameters, which torch's load casts to float64 (a copy the steps leave
    behind), is kept as loaded here (no cast), so it stays live as the others."""
    kwargs = dict(lr=0.1, momentum=0.9) if name == "SGD" else {}

    def run(module):
        gen = torch.Generator().manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(3, generator=gen, dtype=dtype)) for _ in range(2)]
        opt = getattr(module, name)(ps, **kwargs)

        def steps(k):
            for _ in range(k):
                for p in ps:
                    p.grad = torch.randn(3, generator=gen, dtype=dtype)
                opt.step()

        def live(sd, k):
            before = {(i, key): v.clone() for i, s in sd["state"].items()
                      for key, v in s.items()}
            steps(k)
            return {(i, key): (not torch.equal(sd["state"][i][key], v),
                               sd["state"][i][key] is opt.state[ps[i]][key])
                    for (i, key), v in before.items()}

        steps(2)
        buf = io.BytesIO()
        torch.save(opt.state_dict(), buf)
        buf.seek(0)
        ck = torch.load(buf)
        opt = getattr(module, name)(ps, **kwargs)
        opt.load_state_dict(ck)
        saved = live(ck, 2)
        held = opt.state_dict()
        opt.load_state_dict(held)
        return saved, live(held, 1)

    ours, theirs = run(ft), run(torch.optim)
    if name == "NAdam" and dtype == torch.float64:
        for i in range(2):      # (a float64 one, from torch's state after that load, it keeps)
            assert theirs[0][i, "mu_product"] == (False, False)
            theirs[0][i, "mu_product"] = (True, True)
    assert ours == theirs
    assert all(v == (True, True) for sd in theirs for v in sd.values())


def test_the_plan_is_kept_while_nothing_changes():
    """The steady state reuses the plan: grads written in place, or new grad tensors after
    zero_grad(); a group's step counts are views of one tensor."""
    ours, opt, _, _ = _pair("AdamW", {})
    gen = torch.Generator().manual_seed(15)
    _set_grads(gen, ours)
    opt.step()
    plan = opt._plans[0]
    for k in range(4):
        if k % 2:
            opt.zero_grad()
            _set_grads(gen, ours)
        else:
            _grads_in_place(gen, ours)
        opt.step()
    assert opt._plans[0] is plan
    steps = [opt.state[p]["step"] for p in ours]
    assert all(s._base is steps[0]._base is not None and s.item() == 5 for s in steps)


def _transpose(p):
    p.data = p.data.t()
    p.grad = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=p.dtype)


def _transpose_grad_in_place(p):
    p.data = p.data.t()
    p.grad.copy_(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))


def _slice(p):
    p.data = p.data[:1]
    p.grad = torch.tensor([[0.0, 1.0]], dtype=p.dtype)


@pytest.mark.parametrize("change", [_transpose, _transpose_grad_in_place, _slice],
                         ids=["transposed", "transposed, grad in place", "sliced"])
@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16], ids=["f32", "f64", "bf16"])
def test_a_data_of_the_same_storage_and_another_geometry_is_picked_up(change, dtype):
    """``p.data = p.data.t()`` (a square parameter) or ``p.data[:1]``: the same data pointer,
    other strides or shape; the next step views the parameter anew, as torch.optim."""
    results = []
    for lib in (ft, torch.optim):
        p = torch.nn.Parameter(torch.arange(4.0).reshape(2, 2).to(dtype))
        opt = lib.SGD([p], lr=1.0)
        p.grad = torch.zeros(2, 2, dtype=dtype)
        opt.step()
        change(p)
        opt.step()
        results.append(p.detach().clone())
    assert results[0].shape == results[1].shape and torch.equal(*results)


@pytest.mark.parametrize("dtypes", [(torch.bfloat16, torch.float16),
                                    (torch.float16, torch.bfloat16)],
                         ids=["bf16 as f16", "f16 as bf16"])
@pytest.mark.parametrize("params", [1, 2], ids=["one", "two"])
def test_a_data_of_the_same_memory_as_another_dtype_is_picked_up(dtypes, params):
    """``p.data = p.data.view(torch.float16)`` of a bfloat16 parameter: the same data
    pointer, strides and shape, the bits read as another dtype. The next step steps the
    parameter's value as it reads now (its master re-seeded from it), as torch.optim's step
    from that value, where it had stepped the old dtype's master (q64)."""
    old, new = dtypes
    ps = [torch.nn.Parameter(torch.full((4,), 0.5 + k, dtype=old)) for k in range(params)]
    opt = ft.SGD(ps, lr=0.1)
    for _ in range(2):
        for p in ps:
            p.grad = torch.ones(4, dtype=old)
        opt.step()
    theirs = []
    for p in ps:
        p.data = p.data.view(new)
        p.grad = torch.ones(4, dtype=new)
        theirs.append(torch.nn.Parameter(p.detach().clone()))
        theirs[-1].grad = p.grad.clone()
    opt.step()
    torch.optim.SGD(theirs, lr=0.1, foreach=False).step()
    for a, b in zip(ps, theirs):
        assert a.dtype == new and torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("params", [1, 2], ids=["one", "two"])
def test_a_complex_data_replaced_by_its_conjugate_view_is_picked_up(params):
    """``p.data = p.data.conj()``: the same memory, dtype, strides and shape, read as its
    conjugate. The next step steps the conjugate values, as torch.optim, where it had
    stepped the memory as before (q64)."""
    results = []
    for lib in (ft, torch.optim):
        ps = [torch.nn.Parameter(torch.full((3,), 0.5 + 0.25j * (k + 1))) for k in range(params)]
        opt = lib.SGD(ps, lr=0.1, momentum=0.9)
        for _ in range(2):
            for p in ps:
                p.grad = torch.ones(3, dtype=p.dtype)
            opt.step()
        for p in ps:
            p.data = p.data.conj()
            p.grad = torch.full((3,), 1 + 0.5j)
        opt.step()
        results.append([p.detach().resolve_conj().clone() for p in ps])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_a_kept_grad_whose_data_is_read_another_way_is_viewed_anew():
    """A grad kept from step to step (written in place) whose ``.data`` becomes the same
    memory read as its conjugate (complex) or as the other 16-bit dtype: the conjugate is
    stepped as torch.optim steps it, and a grad of a dtype other than its parameter's is
    refused as one assigned so is, nothing changed; the kept grad's check had compared its
    pointer, strides and shape only and stepped the old reading (q67)."""
    results = []
    for lib in (ft, torch.optim):
        p = torch.nn.Parameter(torch.full((3,), 0.5 + 0.25j))
        opt = lib.SGD([p], lr=0.1, momentum=0.5)
        p.grad = torch.full((3,), 1 + 0.5j)
        opt.step()
        opt.step()
        p.grad.data = p.grad.data.conj()
        opt.step()
        results.append(p.detach().resolve_conj().clone())
    assert torch.equal(*results)
    p = torch.nn.Parameter(torch.full((4,), 0.5, dtype=torch.bfloat16))
    opt = ft.SGD([p], lr=0.1)
    p.grad = torch.ones(4, dtype=torch.bfloat16)
    opt.step()
    opt.step()
    p.grad.data = p.grad.data.view(torch.float16)
    before = (p.detach().clone(), opt.state[p]["master_param"].clone())
    with pytest.raises(TypeError, match="grad of parameter 0 of param group 0 has dtype "
                                        "torch.float16, expected torch.bfloat16"):
        opt.step()
    assert torch.equal(p.detach(), before[0])
    assert torch.equal(opt.state[p]["master_param"], before[1])


def _grad_t_(p):
    p.grad.t_()


def _grad_data_t(p):
    p.grad.data = p.grad.data.t()


@pytest.mark.parametrize("change", [_grad_t_, _grad_data_t], ids=["grad.t_()", "grad.data.t()"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_a_grad_of_the_same_storage_and_another_geometry_is_picked_up(change, dtype):
    """The grad kept, its strides changed in place (the same tensor and data pointer): the
    next step reads it through its new strides, as torch.optim (not the old views)."""
    results = []
    for lib in (ft, torch.optim):
        p = torch.nn.Parameter(torch.zeros(2, 2, dtype=dtype))
        opt = lib.SGD([p], lr=1.0)
        p.grad = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=dtype)
        opt.step()
        change(p)
        opt.step()
        results.append(p.detach().clone())
    assert torch.equal(*results)


def test_a_changed_dtype_or_device_raises_and_changes_nothing():
    """A grad or parameter turned into something the step cannot take, after the plan was
    made: the step raises (a stale plan would step the old storage) and nothing changes."""
    p, q = (torch.nn.Parameter(torch.randn(4, dtype=torch.float64)) for _ in range(2))
    opt = ft.Adam([p, q])
    p.grad, q.grad = torch.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    opt.step()
    before = [t.detach().clone() for t in (p, q, opt.state[p]["exp_avg"])]

    def grad_dtype():
        q.grad.data = q.grad.data.float()

    def param_dtype():
        q.data, q.grad = q.data.float(), q.grad.float()

    def sparse_grad():
        q.grad = q.grad.to_sparse()

    def param_device():     # (a .data of another device is refused: swap the tensors)
        meta = torch.nn.Parameter(q.detach().to("meta"))
        meta.grad = torch.zeros(4, dtype=torch.float64, device="meta")
        torch.utils.swap_tensors(q, meta)
        undo.append(lambda: torch.utils.swap_tensors(q, meta))

    for change, error, match in ((grad_dtype, TypeError,
                                  "grad of parameter 1 of param group 0 has dtype"),
                                 (param_dtype, TypeError, "float"),
                                 (sparse_grad, RuntimeError, "sparse"),
                                 (param_device, RuntimeError, "meta")):
        data, grad, grad_data, undo = q.data, q.grad, q.grad.data, []
        change()
        with pytest.raises(error, match=match):
            opt.step()
        for restore in undo:
            restore()
        grad.data, q.data = grad_data, data
        q.grad = grad
        assert all(torch.equal(a, b) for a, b in zip((p, q, opt.state[p]["exp_avg"]), before))
        assert opt.state[p]["step"].item() == opt.state[q]["step"].item() == 1
    opt.step()
    assert opt.state[p]["step"].item() == opt.state[q]["step"].item() == 2


@pytest.mark.parametrize("what", ["grad-dtype", "grad-shape", "state", "expanded"])
def test_errors_name_the_parameter_by_its_index_in_its_group(what):
    """A parameter without a grad before the faulty one: messages named it by its index
    among the parameters with grads (0 here), without its group."""
    a = torch.nn.Parameter(torch.ones(3))
    frozen = torch.nn.Parameter(torch.ones(2))
    b = torch.nn.Parameter(torch.ones(4))
    opt = ft.Adam([{"params": [a]}, {"params": [frozen, b]}], lr=0.1)
    a.grad, b.grad = torch.ones(3), torch.ones(4)
    opt.step()
    if what == "grad-dtype":
        b.grad.data = torch.ones(4, dtype=torch.float64)
    elif what == "grad-shape":
        b.grad.data = torch.ones(2, 2)
    elif what == "state":
        opt.state[b]["exp_avg"] = torch.zeros(5)
    else:
        opt.state[b]["exp_avg"] = torch.zeros(1).expand(4)
    with pytest.raises((TypeError, ValueError, RuntimeError),
                       match=r"(grad|state\['exp_avg'\]) of parameter 1 of param group 1 "):
        opt.step()


def test_a_16bit_grad_of_the_other_format_raises():
    """A bfloat16 parameter's grad turned float16 (the same size: its bits would view
    alike) after the plan was made: the step raises and changes nothing."""
    p = torch.nn.Parameter(torch.randn(5).to(torch.bfloat16))
    p.grad = torch.ones(5, dtype=torch.bfloat16)
    opt = ft.AdamW([p])
    opt.step()
    before = p.detach().clone()
    p.grad.data = p.grad.data.to(torch.float16)
    with pytest.raises(TypeError, match="grad of parameter 0 of param group 0 has dtype "
                                         "torch.float16"):
        opt.step()
    assert torch.equal(p, before) and opt.state[p]["step"].item() == 1
    p.grad = torch.ones(5, dtype=torch.bfloat16)      # a new grad: viewed afresh
    opt.step()
    assert opt.state[p]["step"].item() == 2


@pytest.mark.parametrize("name", NAMES)
def test_steps_under_inference_mode_step_as_torchs(name):
    """torch.optim steps under torch.inference_mode() (its state then made as inference
    tensors); fastopt.torch's step made its state and step counts there too, inference
    tensors without the version counter its plan watches, and raised. They are made as
    normal tensors: the steps are the ones made outside inference mode, and torch's."""
    def run(module, inference, dtype=torch.float32):
        gen = torch.Generator().manual_seed(3)
        ps = [torch.nn.Parameter(torch.randn(4, generator=gen).to(d))
              for d in (dtype, torch.bfloat16)]
        opt = getattr(module, name)(ps)
        for _ in range(3):
            for p in ps:
                p.grad = torch.randn(4, generator=gen).to(p.dtype)
            with torch.inference_mode(inference):
                opt.step()
        return ps

    ours, plain, theirs = run(ft, True), run(ft, False), run(torch.optim, True)
    assert all(torch.equal(a, b) for a, b in zip(ours, plain))
    assert torch.allclose(ours[0], theirs[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_inference_tensor_parameters_step_in_inference_mode_as_torchs(name):
    """Parameters made under torch.inference_mode() (inference tensors, which have no version
    counter): stepped there as torch.optim steps them, 16-bit ones too (whose masters were
    watched by version counters: the step raised "Inference tensors do not track version
    counter"), and a 16-bit one written between steps steps on from the written value; the
    steps are those of the same parameters made as normal tensors. Outside inference mode
    torch refuses to update them in place, and so does the step, changing nothing."""
    kwargs = dict(lr=0.1, momentum=0.9) if name == "SGD" else {}

    def run(module, inference):
        gen = torch.Generator().manual_seed(7)
        with torch.inference_mode(inference):
            ps = [torch.randn(4, generator=gen).to(d) for d in (torch.float32, torch.bfloat16)]
        opt = getattr(module, name)(ps, **kwargs)
        for k in range(4):
            for p in ps:
                p.grad = torch.randn(4, generator=gen).to(p.dtype)
            with torch.inference_mode():
                if k == 2:
                    ps[1].copy_(torch.full((4,), 0.75))
                opt.step()
        return ps, opt

    (ours, opt), (plain, _), (theirs, _) = run(ft, True), run(ft, False), run(torch.optim, True)
    assert all(p.is_inference() for p in ours) and not any(p.is_inference() for p in plain)
    assert all(torch.equal(a, b) for a, b in zip(ours, plain))
    assert torch.allclose(ours[0], theirs[0], rtol=1e-5, atol=1e-6)
    for p in ours:
        p.grad = torch.ones(4, dtype=p.dtype)
    before = [p.clone() for p in ours], copy.deepcopy(opt.state_dict()["state"])
    with pytest.raises(RuntimeError, match="parameter 0 of param group 0 is an inference tensor"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(ours, before[0]))
    after = opt.state_dict()["state"]
    for i, state in before[1].items():
        assert all(_same_bits(after[i][key], value) for key, value in state.items())


def test_step_between_forward_and_backward_raises_as_in_torch():
    p = torch.nn.Parameter(torch.randn(5))
    opt = ft.SGD([p], lr=0.1)
    p.grad = torch.ones(5)
    loss = (p * p).sum()
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("Adam", "AdamW")])
def test_a_clip_that_scales_grads_in_place_counts_it_as_torch_does(name):
    """torch's clip_grad_norm_ scales the grads in place, which moves their version counters:
    a graph that saved a grad (a penalty on it) then refuses to backward through it. The
    optimizers whose clip scales the float grads in place (all but Adam and AdamW, which
    scale inside their kernel and leave p.grad as it was) wrote through NumPy without telling
    autograd: the penalty's backward ran on the scaled grad, silently (x.grad 8.9 where the
    unscaled grad's is 200, and torch raises)."""
    out = []
    for lib in (torch.optim, ft):
        p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
        x = torch.tensor([1.0, 2.0], requires_grad=True)
        p.grad = x * 10                     # a grad in a graph
        penalty = p.grad.pow(2).sum()       # saves it
        version = p.grad._version
        if lib is torch.optim:
            torch.nn.utils.clip_grad_norm_([p], 1.0)
            getattr(torch.optim, name)([p], foreach=False).step()
        else:
            getattr(ft, name)([p], max_grad_norm=1.0).step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            penalty.backward()
        out.append((p.grad._version > version, p.grad.detach().clone()))
    assert out[0][0] and out[1][0]
    assert torch.allclose(out[0][1], out[1][1])


def test_step_hooks_and_the_profiler_run():
    p = torch.nn.Parameter(torch.randn(5))
    p.grad = torch.ones(5)
    opt = ft.Adam([p])
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.step()
    assert calls == ["pre", "post"] and opt.state[p]["step"].item() == 1
    with torch.profiler.profile() as prof:
        opt.step()
        opt.zero_grad()
    names = [e.name for e in prof.events()]
    assert "Optimizer.step#Adam.step" in names and "Optimizer.zero_grad#Adam.zero_grad" in names
    assert p.grad is None


@pytest.mark.parametrize("name", NAMES)
def test_step_hooks_see_the_steps_arguments_as_torchs(name):
    """The step hooks get step's arguments as the caller gave them, as torch.optim's: no
    closure given is none in ``args`` (not a None), a closure by keyword stays in
    ``kwargs``; so a pre-hook that returns a closure as a keyword is taken as torch takes it."""
    def run(module):
        p = torch.nn.Parameter(torch.ones(3))
        opt = getattr(module, name)([p])
        seen = []

        def closure():
            seen.append("closure")
            return torch.tensor(2.0)

        def pre(o, args, kwargs):
            seen.append(("pre", len(args), args[0] is o, *map(callable, args[1:]),
                         sorted(kwargs)))
            if not args[1:] and not kwargs:
                return args, {"closure": closure}   # a closure added by the hook
            return None

        opt.register_step_pre_hook(pre)
        opt.register_step_post_hook(lambda o, args, kwargs: seen.append(
            ("post", len(args), sorted(kwargs))))
        p.grad = torch.ones(3)
        losses = [opt.step(), opt.step(closure), opt.step(closure=closure)]
        return seen, [float(x) for x in losses], p.detach().clone()

    seen, losses, p = run(ft)
    theirs, their_losses, q = run(torch.optim)
    assert seen == theirs and losses == their_losses == [2.0] * 3
    assert torch.allclose(p, q)


@pytest.mark.parametrize("name", NAMES)
def test_a_subclasss_own_step_runs_the_hooks_once(name):
    """torch's Optimizer wraps a subclass's own ``step`` in its hooks and profiler record;
    torch.optim's Adam.step, called from it, runs them again only if a plain Adam made
    before had it wrapped too. Ours ran them in the subclass's wrapper and again in its own
    step: each hook twice, always."""
    class Sub(getattr(ft, name)):
        def step(self, closure=None):
            self.calls.append("step")
            return super().step(closure)

    p = torch.nn.Parameter(torch.ones(3))
    opt = Sub([p])
    opt.calls = calls = []
    opt.register_step_pre_hook(lambda *args: calls.append("pre"))
    opt.register_step_post_hook(lambda *args: calls.append("post"))
    p.grad = torch.ones(3)
    opt.step()
    assert calls == ["pre", "step", "post"]
    with torch.profiler.profile() as prof:
        opt.step()
    assert [e.name for e in prof.events() if e.name.startswith("Optimizer.step")] == [
        "Optimizer.step#Sub.step"]
    assert calls[3:] == ["pre", "step", "post"]


def test_zero_grad_makes_no_profiler_record_while_no_profiler_is_on(monkeypatch):
    """torch's zero_grad opens a record_function (~7 us, most of a call on a few parameters)
    whether or not a profiler listens; fastopt.torch's does only while one is on, as its
    step. The grads are set to None either way (set_to_none=False zeroes them: torch's)."""
    opened = []
    real = torch.autograd.profiler.record_function

    def counting(*args, **kwargs):
        opened.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd.profiler, "record_function", counting)
    params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))]
    opt = ft.SGD([{"params": params[:1]}, {"params": params[1:], "lr": 0.5}], lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.zero_grad()
    assert opened == [] and all(p.grad is None for p in params)
    params[0].grad = torch.ones(3)
    opt.zero_grad(set_to_none=False)
    assert torch.equal(params[0].grad, torch.zeros(3)) and params[1].grad is None


def test_pickle_and_deepcopy():
    ours, opt, _, _ = _pair("AdamW", {})
    gen = torch.Generator().manual_seed(11)
    _set_grads(gen, ours)
    opt.step()
    before = [p.detach().clone() for p in ours]
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        _set_grads(gen, clone.param_groups[0]["params"])
        clone.step()            # steps its own copies of the parameters
        assert clone.state_dict()["state"][0]["step"].item() == 2
    assert opt.state_dict()["state"][0]["step"].item() == 1
    assert all(torch.equal(a, b) for a, b in zip(ours, before))


@pytest.mark.parametrize("name", ["Adam", "NAdam"])
def test_pickled_state_grows_with_the_parameters_as_torch_optims(name):
    """Each state's ``step`` (NAdam's ``mu_product`` too) is a 0-d view of its group's count
    tensor, and a pickled view carries its whole storage: the pickle of the optimizer over
    600 one-element parameters took 600^2 counts, and as many after unpickling. Now each
    count is pickled as a tensor of its own; a state dict stays the live state, as torch's,
    and torch.save stores its shared counts once; a shallow copy still shares the state."""
    def pickles(lib):
        ps = [torch.nn.Parameter(torch.zeros(1)) for _ in range(600)]
        opt = getattr(lib, name)(ps)
        for p in ps:
            p.grad = torch.ones(1)
        opt.step()
        saved = io.BytesIO()
        torch.save(opt.state_dict(), saved)
        return opt, ps, len(saved.getvalue()), len(pickle.dumps(opt))
    opt, ps, state_dict_bytes, optimizer_bytes = pickles(ft)
    _, _, theirs, theirs_optimizer = pickles(torch.optim)
    assert state_dict_bytes < 1.05 * theirs and optimizer_bytes < 1.05 * theirs_optimizer
    for entry in pickle.loads(pickle.dumps(opt)).state.values():
        for value in entry.values():
            assert value.untyped_storage().nbytes() == value.element_size()
    held = opt.state_dict()
    assert held["state"][0] is opt.state[ps[0]]
    shallow = copy.copy(opt)
    assert shallow.state is opt.state
    opt.step()
    assert shallow.state_dict()["state"][0]["step"].item() == 2 == held["state"][0]["step"]


def test_importing_fastopt_does_not_import_torch():
    code = "import sys, fastopt; assert 'torch' not in sys.modules, 'torch imported'"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_fastopt_torch_imports_and_steps_without_docstrings():
    """``python -OO`` drops docstrings: importing fastopt.torch raised AttributeError (its
    constructors' documentation is built from them)."""
    code = ("import torch, fastopt.torch as ft; p = torch.nn.Parameter(torch.ones(3)); "
            "p.grad = torch.ones(3); ft.AdamW([p], lr=0.5).step(); "
            "assert ft.AdamW.__doc__ is None and p.detach().tolist() == [0.5] * 3, p")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-OO", "-c", code], check=True, env=env)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("option", ["fused", "capturable", "differentiable"])
def test_options_that_cannot_be_honoured_raise(option):
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match=option):
        ft.Adam([p], **{option: True})
    opt = ft.Adam([p])
    q = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match=option):
        opt.add_param_group({"params": [q], option: True})
    assert len(opt.param_groups) == 1
    ft.Adam([p], fused=False, foreach=True)     # implementation choices torch allows


def test_keys_a_wrapper_adds_to_defaults_pass_and_an_unknown_torch_option_is_refused(
        monkeypatch):
    """timm's Lookahead adds lookahead_alpha, lookahead_k and lookahead_step to its base
    optimizer's ``defaults`` and groups: add_param_group and load_state_dict refused them as
    options of a newer torch (torch.optim takes them); an option of the torch class itself that
    the kernels do not know is still refused."""
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.ones(3)
    opt = ft.AdamW([p], lr=0.1)
    opt.defaults.update(lookahead_alpha=0.5, lookahead_k=6, lookahead_step=0)
    opt.param_groups[0].update(lookahead_alpha=0.5, lookahead_k=6, lookahead_step=0)
    opt.step()
    opt.load_state_dict(opt.state_dict())
    opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))]})
    assert opt.param_groups[1]["lookahead_k"] == 6
    monkeypatch.setattr(ft.AdamW, "_TORCH_OPTIONS", ft.AdamW._TORCH_OPTIONS | {"new_option"})
    opt.defaults["new_option"] = False
    with pytest.raises(ValueError, match="option new_option=True is not supported"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))],
                             "new_option": True})
    assert len(opt.param_groups) == 2


def test_load_state_dict_gives_a_16_bit_parameters_state_back_its_saved_dtype():
    """torch's load casts a 16-bit parameter's state to its dtype: the float32 state and
    master are given back float32, a key of another's saved 16-bit (timm's Lookahead keeps
    lookahead_slow_buff in opt.state[p]) stays 16-bit as with torch.optim (it had been made
    float32), and so does a float32 key the step does not read at the load (amsgrad switched off
    a while: its max_exp_avg_sq had been left rounded to bfloat16, and the trajectory changed
    once amsgrad was on again); a group value the step cannot read (momentum None, which
    torch.optim loads) no longer raises halfway through the load."""
    def run(round_trip):
        gen = torch.Generator().manual_seed(0)
        p = torch.nn.Parameter(torch.randn(100, generator=gen).to(torch.bfloat16))
        opt = ft.Adam([p], lr=0.01, amsgrad=True)
        for i in range(6):
            p.grad = torch.randn(100, generator=gen).to(torch.bfloat16)
            opt.param_groups[0]["amsgrad"] = i not in (2, 3)
            opt.step()
            if i == 2:
                opt.state[p]["lookahead_slow_buff"] = p.detach().clone()
                if round_trip:
                    saved = opt.state_dict()
                    opt = ft.Adam([p], lr=0.01)
                    opt.load_state_dict(saved)
                    dtypes = {key: value.dtype for key, value in opt.state[p].items()}
                    assert dtypes == {"step": torch.float32, "exp_avg": torch.float32,
                                      "exp_avg_sq": torch.float32,
                                      "max_exp_avg_sq": torch.float32,
                                      "master_param": torch.float32,
                                      "lookahead_slow_buff": torch.bfloat16}
        return [p.detach().clone()] + [opt.state[p][k].clone() for k in sorted(opt.state[p])]

    assert all(torch.equal(a, b) for a, b in zip(run(False), run(True)))
    p = torch.nn.Parameter(torch.randn(5).to(torch.bfloat16))
    p.grad = torch.randn(5).to(torch.bfloat16)
    opt = ft.SGD([p], lr=0.1, momentum=0.9)
    opt.step()
    saved = opt.state_dict()
    saved["param_groups"][0]["momentum"] = None
    torch.optim.SGD([torch.nn.Parameter(p.detach().clone())], lr=0.1).load_state_dict(saved)
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["momentum"] is None
    assert opt.state[p]["momentum_buffer"].dtype == torch.float32


def test_loading_torch_state_with_refused_options():
    """A fused torch optimizer's state dict loads (fused picks torch's kernel, not a formula);
    differentiable state is refused and nothing changes."""
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.ones(3)
    ref = torch.optim.Adam([p], fused=True)
    ref.step()
    opt = ft.Adam([torch.nn.Parameter(p.detach().clone())])
    opt.load_state_dict(ref.state_dict())
    assert opt.param_groups[0]["fused"] is None
    sd = ref.state_dict()
    sd["param_groups"][0]["differentiable"] = True
    other = ft.Adam([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="differentiable"):
        other.load_state_dict(sd)
    assert not other.state and other.param_groups[0]["differentiable"] is False


def test_unsupported_tensors_raise_and_change_nothing():
    good = torch.nn.Parameter(torch.randn(4))
    sparse = torch.nn.Parameter(torch.randn(4))
    opt = ft.Adam([{"params": [good]}, {"params": [sparse], "lr": 0.1}])
    good.grad = torch.ones(4)
    sparse.grad = torch.ones(4).to_sparse()
    before = good.detach().clone()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(good, before) and not opt.state      # the first group did not step
    meta = torch.nn.Parameter(torch.empty(3, device="meta"))
    meta.grad = torch.empty(3, device="meta")
    with pytest.raises(RuntimeError, match="meta"):
        ft.SGD([meta], lr=0.1).step()
    with warnings.catch_warnings():     # "ComplexHalf support is experimental"
        warnings.simplefilter("ignore", UserWarning)
        chalf = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex32))
        chalf.grad = torch.zeros(3, dtype=torch.complex32)
    with pytest.raises(TypeError, match="complex32"):
        ft.Adam([chalf]).step()


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_a_step_that_raises_on_a_hyper_parameter_changes_nothing(name, kwargs):
    """Every group's hyper-parameters are checked before any group is stepped: a bad value
    in the second group leaves the first unstepped (parameters, state, step counts)."""
    a, b = torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(3))
    opt = getattr(ft, name)([{"params": [a]}, {"params": [b]}], **kwargs)
    gen = torch.Generator().manual_seed(32)
    _set_grads(gen, [a, b])
    opt.step()
    before = copy.deepcopy(opt.state_dict()), a.detach().clone(), b.detach().clone()
    _set_grads(gen, [a, b])
    lr = opt.param_groups[1]["lr"]
    opt.param_groups[1]["lr"] = -0.1
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    after = opt.state_dict()
    assert torch.equal(a, before[1]) and torch.equal(b, before[2])
    for i, entry in before[0]["state"].items():
        assert all(torch.equal(after["state"][i][k], v) for k, v in entry.items())
    opt.param_groups[1]["lr"] = lr
    opt.step()
    if name != "SGD":
        assert opt.state[a]["step"].item() == opt.state[b]["step"].item() == 2


@pytest.mark.parametrize("kwargs,name", [(dict(lr=float("nan")), "lr"),
                                         (dict(lr=0.1, momentum=float("nan")), "momentum"),
                                         (dict(lr=0.1, weight_decay=float("nan")), "weight_decay"),
                                         (dict(lr=0.1, momentum=0.5, dampening=-1.0), "dampening")],
                         ids=["lr-nan", "momentum-nan", "weight_decay-nan", "dampening-neg"])
def test_a_hyper_parameter_the_kernels_refuse_raises_at_construction(kwargs, name):
    """torch.optim.SGD's own checks let NaN (``lr < 0`` is False) and a negative dampening
    through; the kernels refuse them. fastopt.torch.SGD(...) was built and its first step()
    raised; now the constructor (and add_param_group) raise, naming the argument, as for
    the values torch refuses itself."""
    with pytest.raises(ValueError, match=name):
        ft.SGD([torch.nn.Parameter(torch.ones(3))], **kwargs)
    opt = ft.SGD([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    with pytest.raises(ValueError, match=name):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], **kwargs})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name,kwargs,key", [
    ("SGD", dict(lr=10**400), "lr"), ("SGD", dict(lr=0.1, momentum=10**400), "momentum"),
    ("RMSprop", dict(lr=10**400), "lr"), ("Adam", dict(lr=0.1, eps=10**400), "eps"),
    ("Adam", dict(lr=0.1, weight_decay=10**400), "weight_decay"),
    ("Adadelta", dict(lr=0.1, eps=10**400), "eps"),
    ("SGD", dict(lr=0.1, max_grad_norm=10**400), "max_grad_norm")])
def test_an_int_past_the_float_range_raises_at_construction(name, kwargs, key):
    """torch.optim's checks (``0.0 <= lr``) and the kernels' comparisons take 10**400: the
    optimizer was built and its first step() raised OverflowError 'int too large to convert
    to float', naming nothing. Now the constructor and add_param_group raise, naming it (in
    short form: its 401 digits had been spelt out)."""
    message = rf"^Invalid {key}: 1e\+400 \(must be within the float range\)"
    with pytest.raises(ValueError, match=message):
        getattr(ft, name)([torch.nn.Parameter(torch.ones(3))], **kwargs)
    opt = getattr(ft, name)([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    with pytest.raises(ValueError, match=message):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], **kwargs})
    assert len(opt.param_groups) == 1


def test_an_int_past_the_float_range_set_in_a_later_group_raises_before_any_step():
    """Set into the second group after construction: step() stepped the first group, then
    raised OverflowError at the second (a raising step changed parameters and state)."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = ft.Adam([{"params": [a]}, {"params": [b]}], lr=0.1)
    a.grad, b.grad = torch.ones(3), torch.ones(2)
    opt.param_groups[1]["eps"] = 10**400
    with pytest.raises(ValueError, match=r"^Invalid eps: 1e\+400 \(must be within the float"):
        opt.step()
    assert torch.equal(a.detach(), torch.ones(3)) and torch.equal(b.detach(), torch.ones(2))
    assert len(opt.state) == 0
    # one group, clipping or not (its grads were scaled before the OverflowError): named too
    for clip in (None, 0.5):
        opt = ft.Adam([b], lr=0.1, max_grad_norm=clip)
        b.grad = torch.full((2,), 3.0)
        opt.param_groups[0]["weight_decay"] = 10**400
        with pytest.raises(ValueError, match=r"^Invalid weight_decay: 1e\+400 \(must be within"):
            opt.step()
        assert torch.equal(b.detach(), torch.ones(2))
        assert torch.equal(b.grad, torch.full((2,), 3.0))


def test_steps_from_several_threads_take_turns():
    """One fastopt.torch optimizer stepped from 4 threads at once (50 steps each, the same
    grads): its kernels release the GIL, and the steps interleaved on the plan's step
    counts and state (200 steps counted 77, the parameters off the serial ones). Each step
    now holds the optimizer's lock, as fastopt's NumPy optimizers do: the serial result."""
    serial, p, opt = _serial_and_fresh_adam(seed=33, steps=200)
    _step_in_threads([opt] * 4, steps=50)
    assert opt.state[p]["step"].item() == 200
    assert torch.equal(p, serial)


def _serial_and_fresh_adam(seed, steps):
    """A parameter Adam stepped ``steps`` times on one grad, and a fresh parameter with that
    grad and its own optimizer."""
    grad = torch.randn(100_000, generator=torch.Generator().manual_seed(seed))
    serial = torch.nn.Parameter(torch.zeros(100_000))
    opt = ft.Adam([serial], lr=1e-3)
    serial.grad = grad.clone()
    for _ in range(steps):
        opt.step()
    p = torch.nn.Parameter(torch.zeros(100_000))
    p.grad = grad.clone()
    return serial, p, ft.Adam([p], lr=1e-3)


def _step_in_threads(opts, steps):
    """Each optimizer of ``opts`` stepped ``steps`` times from a thread of its own, all
    starting at once."""
    barrier = threading.Barrier(len(opts))

    def work(o):
        barrier.wait()
        for _ in range(steps):
            o.step()

    workers = [threading.Thread(target=work, args=(o,)) for o in opts]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def test_a_shallow_copy_and_its_original_stepped_from_two_threads_take_turns():
    """copy.copy(opt) is torch's: another handle on the same state, which a step of either
    advances. It had a lock of its own: the original and the copy stepped from two threads
    at once interleaved their updates of that state (40 steps counted 24, the parameter
    off the serial one). The copy holds the original's lock, as fastopt.optim's does."""
    serial, p, opt = _serial_and_fresh_adam(seed=34, steps=40)
    twin = copy.copy(opt)
    assert twin.state is opt.state and twin._lock is opt._lock
    _step_in_threads([opt, twin], steps=20)
    assert opt.state[p]["step"].item() == 40
    assert torch.equal(p, serial)


def test_a_step_that_raises_leaves_the_grads_a_clip_would_scale():
    """One group that clips (SGD scales its float grads in place first): a bad hyper-parameter
    raises before the grads are scaled."""
    p = torch.nn.Parameter(torch.zeros(4))
    opt = ft.SGD([p], lr=0.1, max_grad_norm=0.5)
    p.grad = torch.full((4,), 3.0)
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert torch.equal(p.grad, torch.full((4,), 3.0)) and torch.equal(p, torch.zeros(4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_clip_whose_squares_or_scaled_grads_underflow_raises_nothing(dtype):
    """Under np.seterr(all="raise") the clip's float64 squares of tiny grads and its scale of
    a grad into the subnormals raised FloatingPointError (after the grads were scaled,
    before the parameters stepped); torch's clip rounds them, and so does this one now: the
    same results as without np.errstate."""
    tiny = float(torch.finfo(dtype).tiny)
    def run():
        a, b = (torch.nn.Parameter(torch.zeros(3, dtype=dtype)) for _ in range(2))
        opt = ft.SGD([a, b], lr=1.0, max_grad_norm=0.5)
        a.grad = torch.full((3,), 2.0, dtype=dtype)
        b.grad = torch.tensor([tiny, 1e-160, 3.0], dtype=dtype)
        opt.step()
        return [t.detach().clone() for t in (a, b, a.grad, b.grad)]
    expected = run()
    with np.errstate(all="raise"):
        got = run()
    assert all(torch.equal(x, y) for x, y in zip(got, expected))


def test_rmsprop_alpha_is_bounded_as_in_torch():
    """torch takes any alpha >= 0 (alpha = 1 keeps square_avg at zero): so does the step; a
    negative alpha set on a group raises, naming alpha."""
    results = []
    for lib in (ft, torch.optim):
        a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
        opt = lib.RMSprop([{"params": [a]}, {"params": [b], "alpha": 1.0}], lr=0.1)
        a.grad, b.grad = torch.ones(2), torch.ones(2)
        opt.step()
        results.append((a.detach().clone(), b.detach().clone()))
    assert all(torch.equal(x, y) for x, y in zip(*results))
    opt = ft.RMSprop([torch.nn.Parameter(torch.ones(2))])
    opt.param_groups[0]["params"][0].grad = torch.ones(2)
    opt.param_groups[0]["alpha"] = -0.5
    with pytest.raises(ValueError, match="alpha"):
        opt.step()


def test_a_wrapper_subclass_parameter_or_grad_raises_naming_it():
    """A tensor subclass that dispatches its own operations (__torch_dispatch__: torch's
    TwoTensor, torchao's and float8 training's wrappers) raised torch's bare ".numpy() is not
    supported for tensor subclasses", naming neither fastopt nor the parameter."""
    two_tensor = pytest.importorskip("torch.testing._internal.two_tensor")
    pair = lambda: two_tensor.TwoTensor(torch.ones(2), torch.ones(2))   # noqa: E731
    plain, wrapped = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(pair())
    opt = ft.SGD([{"params": [plain]}, {"params": [wrapped]}], lr=0.1)
    plain.grad, wrapped.grad = torch.ones(3), pair()
    with pytest.raises(TypeError, match=r"^fastopt.torch: parameter 0 of param group 1 is a "
                                        r"TwoTensor, a tensor subclass that dispatches"):
        opt.step()
    assert torch.equal(plain, torch.ones(3))
    plain = torch.nn.Parameter(torch.ones(2))
    opt = ft.Adam([plain])
    plain.grad = pair()
    with pytest.raises(TypeError, match=r"^fastopt.torch: grad of parameter 0 of param group "
                                        r"0 is a TwoTensor"):
        opt.step()
    assert torch.equal(plain, torch.ones(2)) and not opt.state
    plain.grad = torch.ones(2).as_subclass(_TorchFunctionTensor)   # (NumPy views these)
    opt.step()
    assert not torch.equal(plain, torch.ones(2))


class _TorchFunctionTensor(torch.Tensor):
    """A subclass with only __torch_function__: plain memory, stepped as any tensor."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_parameter_twice_in_a_group_raises_naming_it():
    """torch.optim warns about a parameter listed twice in a group (an error in a future
    torch) and steps it once per occurrence; fastopt.torch's step raises, naming it, and
    changes nothing."""
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt = ft.Adam([q, p, p], lr=0.1)
    p.grad, q.grad = torch.ones(3), torch.ones(2)
    with pytest.raises(ValueError, match="parameter 2 of param group 0 is parameter 1"):
        opt.step()
    assert not opt.state and torch.equal(p, torch.ones(3)) and torch.equal(q, torch.ones(2))


@pytest.mark.parametrize("name", ["Adam", "NAdam", "SGD"])
def test_a_parameter_put_in_a_second_group_raises_naming_it(name):
    """torch.optim refuses a parameter in two param groups when a group is added, but one put
    there by editing ``param_groups`` it steps once per group, its count advancing twice a
    step. fastopt.torch stepped it once per group from the count read before the first:
    Adam's trajectory left torch's (step 4 against 8 after four steps), silently. The step
    raises now, naming both places, before any group steps, and again at the next step."""
    def make(lib):
        a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
        opt = getattr(lib, name)([{"params": [a]}, {"params": [b], "lr": 0.05}], lr=0.1,
                                 **({"foreach": False} if lib is torch.optim else {}))
        a.grad, b.grad = torch.ones(3), torch.ones(2)
        opt.step()
        return a, b, opt
    a, b, opt = make(ft)
    tensors = lambda: [a, b] + [t for s in opt.state.values() for t in s.values()]  # noqa: E731
    before = [t.detach().clone() for t in tensors()]
    opt.param_groups[1]["params"].append(a)
    for _ in range(2):
        with pytest.raises(ValueError, match="parameter 1 of param group 1 is parameter 0 of "
                                             "param group 0"):
            opt.step()
        assert all(map(_same_bits, before, tensors()))
    opt.param_groups[1]["params"].pop()     # as it was: the step goes on, as torch's
    opt.step()
    ta, tb, ref = make(torch.optim)
    ref.step()
    assert torch.allclose(a, ta) and torch.allclose(b, tb)
    assert [s.get("step") for s in opt.state.values()] == [s.get("step")
                                                          for s in ref.state.values()]


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_state_of_another_dtype_or_shape_raises_before_any_group_steps(name):
    """``model.double()`` after some steps leaves float32 state on float64 parameters (torch's
    SGD steps in mixed dtypes, its Adam refuses), a state dict of other parameters state of
    another shape: the step raises, naming the state and parameter, before any group has
    stepped; ``load_state_dict(state_dict())`` casts the state, and the step goes on."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    kwargs = dict(lr=0.1, momentum=0.9) if name == "SGD" else dict(lr=0.1)
    opt = getattr(ft, name)([{"params": [a]}, {"params": [b]}], **kwargs)
    key = "momentum_buffer" if name == "SGD" else "exp_avg"
    a.grad, b.grad = torch.ones(3), torch.ones(2)
    opt.step()
    before = a.detach().clone(), opt.state[a][key].clone()
    for change, error, match in (
            (lambda: setattr(b, "data", b.data.double()), TypeError,
             rf"state\['{key}'\] of parameter 0 of param group 1 has dtype torch.float32, "
             "expected "
             "torch.float64"),
            (lambda: setattr(b, "data", torch.ones(5)), ValueError,
             rf"state\['{key}'\] of parameter 0 of param group 1 has shape \(2,\), "
             r"expected \(5,\)")):
        data = b.data
        change()
        b.grad = torch.ones_like(b)
        with pytest.raises(error, match=match):
            opt.step()
        assert torch.equal(a, before[0]) and torch.equal(opt.state[a][key], before[1])
        b.data, b.grad = data, torch.ones(2)
    b.data, b.grad = b.data.double(), torch.ones(2, dtype=torch.float64)
    opt.load_state_dict(opt.state_dict())       # torch's load casts the state to b's dtype
    opt.step()
    assert opt.state[b][key].dtype == torch.float64 and not torch.equal(a, before[0])


@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.1)),
                                         ("SGD", dict(lr=0.1, momentum=0.9, max_grad_norm=1.0)),
                                         ("Adam", {})], ids=["SGD", "SGD momentum clip", "Adam"])
def test_a_grad_of_another_shape_raises_before_any_group_steps(name, kwargs):
    """A parameter given a ``.data`` of another shape keeps its old grad (torch.optim raises on
    the sizes): the step raises naming the grad before any group has stepped or a clip has
    scaled a grad (the kernels' own check came after the earlier groups' steps)."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = getattr(ft, name)([{"params": [a]}, {"params": [b]}], **kwargs)
    a.grad = torch.full((3,), 2.0)
    opt.step()
    b.grad = torch.ones(2)
    before = [t.clone() for t in (a.detach(), a.grad, b.grad, *opt.state[a].values())]
    b.data = torch.ones(5)      # (b has no state yet)
    with pytest.raises(ValueError, match=r"grad of parameter 0 of param group 1 has shape "
                                         r"\(2,\), expected "
                                         r"\(5,\) like the parameter"):
        opt.step()
    after = [a.detach(), a.grad, b.grad, *opt.state[a].values()]
    assert all(torch.equal(x, y) for x, y in zip(before, after))


def test_an_expanded_parameter_raises_as_in_torch():
    """A parameter with a stride 0 (``expand``): torch.optim's in-place update refuses it
    (one memory location for several elements); so does the step, changing nothing, as it
    does for expanded state."""
    for lib in (torch.optim, ft):
        base = torch.zeros(3, 1)
        p = base.expand(3, 4)
        p.grad = torch.ones(3, 4)
        with pytest.raises(RuntimeError, match="more than one element"):
            lib.SGD([p], lr=0.1).step()
        assert torch.equal(base, torch.zeros(3, 1))
    q = torch.nn.Parameter(torch.zeros(4))
    q.grad = torch.ones(4)
    opt = ft.Adam([q])
    opt.state[q] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros(1).expand(4),
                    "exp_avg_sq": torch.zeros(4)}
    with pytest.raises(RuntimeError, match=r"state\['exp_avg'\] of parameter 0 of param group 0 "
                                           r"has more "):
        opt.step()
    assert torch.equal(q, torch.zeros(4)) and opt.state[q]["step"].item() == 1


@pytest.mark.parametrize("what", ["parameter", "state"])
@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_a_tensor_of_overlapping_windows_raises_before_any_group_steps(name, what):
    """A parameter or state tensor whose elements overlap without a zero stride (an
    ``as_strided`` view of overlapping windows) is refused by the kernels, which have no one
    result for it (torch.optim steps it element after element). That refusal came from the
    kernel of its group, after the groups before had stepped (the first group's parameter
    moved to -0.1, its state made) and naming 'params[0]'; it is now raised before any group
    steps, naming the tensor, as a stride 0 is."""
    a = torch.nn.Parameter(torch.zeros(3))
    windows = torch.arange(6.0).as_strided((3, 3), (1, 1))
    p = torch.nn.Parameter(windows if what == "parameter" else torch.zeros(3, 3))
    opt = getattr(ft, name)([{"params": [a]}, {"params": [p]}], lr=0.1,
                            **({"momentum": 0.9} if name == "SGD" else {}))
    if what == "state":
        key = "momentum_buffer" if name == "SGD" else "exp_avg"
        opt.state[p] = {key: torch.zeros(6).as_strided((3, 3), (1, 1))}
        if name == "Adam":
            opt.state[p].update(step=torch.tensor(1.0), exp_avg_sq=torch.zeros(3, 3))
    a.grad, p.grad = torch.ones(3), torch.ones(3, 3)
    where = "parameter 0 of param group 1" if what == "parameter" else (
        rf"state\['{key}'\] of parameter 0 of param group 1")
    with pytest.raises(ValueError, match=f"{where} has elements that share memory"):
        opt.step()
    assert torch.equal(a, torch.zeros(3)) and a not in opt.state


def test_overlapping_parameters_raise_before_any_group_steps():
    """Views of one buffer whose memory overlaps in one group (the kernels refuse them):
    the step raises naming them and their group before the first group has stepped."""
    a = torch.nn.Parameter(torch.ones(3))
    big = torch.zeros(10)
    opt = ft.Adam([{"params": [a]}, {"params": [big[:6], big[4:]]}], lr=0.1)
    for t in opt.param_groups[0]["params"] + opt.param_groups[1]["params"]:
        t.grad = torch.ones_like(t)
    with pytest.raises(ValueError, match="parameters 0 and 1 of param group 1 overlap"):
        opt.step()
    assert torch.equal(a, torch.ones(3)) and not opt.state and torch.equal(big, torch.zeros(10))
    opt.param_groups[1]["params"][1] = big[6:]      # disjoint: steps
    opt.param_groups[1]["params"][1].grad = torch.ones(4)
    opt.step()
    assert (big != 0).all()


def _apart_views(dtype):
    """Parameters that share no element though their memory bounds overlap (a fused weight's
    column blocks, a buffer's elements 0, 3, 6... and 1, 4, 7...), leaves over one tensor's
    memory, with grads interleaved with them (the next column block, elements 2, 5, 8...),
    and one grad of its own."""
    w = torch.linspace(-1, 1, 60, dtype=dtype).reshape(4, 15)
    buf = torch.linspace(2, 3, 60, dtype=dtype)
    ps = [v.detach().requires_grad_() for v in (w[:, :5], w[:, 5:10], buf[0::3], buf[1::3])]
    for p, g in zip(ps, (w[:, 10:], torch.full((4, 5), 0.25, dtype=dtype), buf[2::3],
                         torch.linspace(-1, 1, 20, dtype=dtype))):
        p.grad = g
    return ps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_views_that_share_no_element_step_as_torch_optims(dtype):
    """Such parameters (and grads beside them) were refused: their memory bounds overlap
    ('parameters 0 and 1 of param group 0 overlap', then the grad), by fastopt.torch and by
    its kernels; torch.optim steps them. They step as torch.optim's (foreach=False) do, in
    one param group and in two."""
    for name, kwargs in [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.1))]:
        out = []
        for lib in (ft, torch.optim):
            ps = _apart_views(dtype)
            extra = {} if lib is ft else dict(foreach=False)
            opts = [getattr(lib, name)(ps, **kwargs, **extra),
                    getattr(lib, name)([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.05}],
                                       **kwargs, **extra)]
            for _ in range(3):
                for opt in opts:
                    opt.step()
            out.append([p.detach().clone() for p in ps])
        assert _ulps(*out) <= 4, name


def test_views_that_share_an_element_are_refused_before_any_group_steps():
    """Parameters whose memory bounds overlap and that share an element (``a[::2]`` and
    ``a[::3]``, a square parameter and its transpose) are still refused, and a grad that shares
    an element with a parameter, before the first group steps."""
    for views in (lambda a: (a[::2], a[::3]), lambda a: (a[:9].view(3, 3), a[:9].view(3, 3).T)):
        a = torch.nn.Parameter(torch.ones(3))
        big = torch.zeros(12)
        ps = [v.detach().requires_grad_() for v in views(big)]
        opt = ft.Adam([{"params": [a]}, {"params": ps}], lr=0.1)
        for t in [a, *ps]:
            t.grad = torch.ones_like(t)
        with pytest.raises(ValueError, match="parameters 0 and 1 of param group 1 overlap"):
            opt.step()
        assert torch.equal(a, torch.ones(3)) and not opt.state and not big.any()
    w = torch.zeros(4, 10)
    p = w[:, :5].detach().requires_grad_()
    p.grad = w[:, 4:9]      # (its first column is p's last)
    opt = ft.SGD([{"params": [a]}, {"params": [p]}], lr=0.1)
    with pytest.raises(ValueError, match="the grad of parameter 0 of param group 1 overlaps "
                                         "parameter 0 of the group"):
        opt.step()
    assert torch.equal(a, torch.ones(3)) and not w.any()


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_max_grad_norm_of_float32_grads_beyond_float32s_range_is_inf_as_torchs(name):
    """torch's norm of float32 grads is float32: beyond float32's range (a sum of squares
    over 2**128) it is inf, its factor 0, and the clipped grads are 0 (NaN where inf); so
    are ours (summed in float64, the norm was finite and the grads scaled to max_norm)."""
    init = [torch.linspace(-1, 1, 4), torch.linspace(1, 2, 3)]
    ours, theirs = ([torch.nn.Parameter(t.clone()) for t in init] for _ in range(2))
    kwargs = {"lr": 0.1, **dict(VARIANTS)[name]}
    opt = getattr(ft, name)(ours, max_grad_norm=1.0, **kwargs)
    ref = getattr(torch.optim, name)(theirs, foreach=False, **kwargs)
    for scale in (1.0, 1e19, 1.0):      # 1e19 * |(1, 2, 3, 4)|: over 2**64, the float32 norm
        for a, b, k in zip(ours, theirs, (1, 5)):
            a.grad = torch.arange(k, k + a.numel(), dtype=torch.float32) * scale
            b.grad = a.grad.clone()
        opt.step()
        norm = torch.nn.utils.clip_grad_norm_(theirs, 1.0, foreach=False)
        ref.step()
        assert (opt.grad_norms[0] == math.inf) == (scale > 1) == (norm.item() == math.inf)
        assert _ulps(ours, theirs) <= 4


def test_a_state_dict_waits_for_a_step_in_another_thread():
    """state_dict() takes the lock a step holds, as load_state_dict does (it had not: a
    snapshot taken while another thread stepped could hold half a step)."""
    p, opt, got = _taken_during_a_step(lambda opt: opt.state_dict())
    assert got["state"][0]["step"].item() == 1


def _taken_during_a_step(take):
    """A parameter, its Adam after one step, and ``take(opt)`` called from another thread
    while this one holds the lock a step holds: it must wait for the lock."""
    p = torch.nn.Parameter(torch.zeros(10))
    p.grad = torch.ones(10)
    opt = ft.Adam([p], lr=1e-3)
    opt.step()
    got = []
    lock = opt._lock = WatchedLock(opt._lock)
    with lock:                      # as a step in progress on this thread
        taker = threading.Thread(target=lambda: got.append(take(opt)))
        held_at(lock, taker)
        assert not got
    taker.join(10)
    assert got
    return p, opt, got[0]


def test_a_deepcopy_waits_for_a_step_in_another_thread():
    """copy.deepcopy(opt) takes the lock a step holds, as state_dict() does (it had not: a
    copy taken while another thread stepped could hold half a step); the copy steps on as
    the original, apart from it."""
    p, opt, twin = _taken_during_a_step(copy.deepcopy)
    (p2,) = twin.param_groups[0]["params"]
    assert p2 is not p and twin._lock is not opt._lock
    p2.grad = torch.ones(10)        # (a deepcopy of a Parameter has no grad, as in torch)
    twin.step()
    opt.step()
    assert torch.equal(p2, p) and twin.state[p2]["step"].item() == 2
    assert p2.untyped_storage().data_ptr() != p.untyped_storage().data_ptr()


def test_add_param_group_waits_for_a_step_in_another_thread():
    """add_param_group takes the lock a step holds. It had not: a group added by another
    thread during a step was left out of the ``grad_norms`` the step then set (one entry for
    two groups, ``opt.grad_norms[1]`` an IndexError until the next step)."""
    p = torch.nn.Parameter(torch.zeros(10))
    p.grad = torch.ones(10)
    opt = ft.Adam([p], lr=1e-3, max_grad_norm=1.0)
    q = torch.nn.Parameter(torch.zeros(3))
    lock = opt._lock = WatchedLock(opt._lock)
    with lock:                      # as a step in progress on this thread
        adder = threading.Thread(target=opt.add_param_group, args=({"params": [q]},))
        held_at(lock, adder)
        assert len(opt.param_groups) == 1
        opt.grad_norms = [1.0]      # as the step sets them last
    adder.join(10)
    assert len(opt.param_groups) == len(opt.grad_norms) == 2


def test_a_step_waits_for_a_load_state_dict_in_another_thread():
    """load_state_dict holds the step's lock to its end; torch's load calls __setstate__,
    which made a new lock: a step in another thread could then run while the load re-cast
    the state (the lock held by the load is the one a step takes after it too)."""
    p = torch.nn.Parameter(torch.zeros(10))
    p.grad = torch.ones(10)
    opt = ft.Adam([p], lr=1e-3)
    opt.step()
    lock = opt._lock = WatchedLock(opt._lock)
    opt.load_state_dict(opt.state_dict())
    with lock:                      # as a load in progress on this thread
        stepper = threading.Thread(target=opt.step)
        held_at(lock, stepper)
        assert opt.state[p]["step"].item() == 1
    stepper.join(10)
    assert opt.state[p]["step"].item() == 2


@pytest.mark.parametrize("clip", [None, 1.0], ids=["", "clip"])
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_a_grad_with_its_negative_bit_set_steps_with_its_value(name, kwargs, clip):
    """A grad that is a negative view (``torch._neg_view(g)``, or ``z.conj().imag``), which
    NumPy cannot view: torch.optim steps with its value, and clip_grad_norm_ scales it in
    place; so does fastopt.torch (float32, float64 and bfloat16 parameters; the bfloat16
    master against torch.optim on a float32 copy fed the widened grad), at every step, the
    same grad objects written in place between steps included."""
    init = _params(torch.float64)[:4]
    mixed = [init[0].float(), init[1], init[2].to(torch.bfloat16), init[3].float()]
    ours = [torch.nn.Parameter(t.clone()) for t in mixed]
    theirs = [torch.nn.Parameter(t.float() if t.dtype == torch.bfloat16 else t.clone())
              for t in mixed]
    opt = getattr(ft, name)(ours, max_grad_norm=clip, **kwargs)
    ref = getattr(torch.optim, name)(theirs, foreach=False, **kwargs)
    gen = torch.Generator().manual_seed(31)
    for step in range(4):
        for a, b in zip(ours, theirs):
            g = torch.randn(a.shape, generator=gen).to(a.dtype)
            if step < 2 or a.grad is None:
                a.grad = torch._neg_view(g)
            else:           # the same negative views, written in place (as backward does)
                a.grad.copy_(-g)
            assert a.grad.is_neg()
            b.grad = (-g).to(b.dtype)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(theirs, clip)
        opt.step()
        ref.step()
        if clip is not None and name not in ("Adam", "AdamW"):      # Adam scales in its kernel
            for a, b in zip(ours, theirs):
                if a.dtype != torch.bfloat16:
                    torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)
    master = opt.state[ours[2]]["master_param"]
    assert _ulps([ours[0], ours[1], master, ours[3]], theirs) <= 4


@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
                                         ("Adam", {}), ("AdamW", dict(weight_decay=0.1))])
@pytest.mark.parametrize("group", [0, 1])
def test_a_negative_view_of_its_own_parameter_as_grad(name, kwargs, group):
    """``p.grad = torch._neg_view(p.detach())``: torch.optim reads -p before it writes p,
    which a copy of the grad taken before the step gives, but where it writes p first (a
    decoupled weight decay): that one raises ValueError, before anything changes."""
    out = []
    for lib in (torch.optim, ft):
        other = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        p = torch.nn.Parameter(torch.tensor([3.0, -4.0, 5.0]))
        groups = [{"params": [p]}, {"params": [other]}]
        opt = getattr(lib, name)(groups[::-1] if group else groups, **kwargs)
        for _ in range(2):
            other.grad, p.grad = torch.ones(2), torch._neg_view(p.detach())
            if lib is ft and name == "AdamW":
                before = p.detach().clone(), other.detach().clone()
                with pytest.raises(ValueError, match="overlaps parameter 0 of the group"):
                    opt.step()
                assert torch.equal(p, before[0]) and torch.equal(other, before[1])
                assert not opt.state
                break
            opt.step()
        out.append(p.detach().clone())
    if name != "AdamW":
        torch.testing.assert_close(out[1], out[0], rtol=1e-6, atol=0)


def _ours_and_theirs(dtype):
    """(wide, ours, theirs): four parameters in ``dtype`` for fastopt.torch and torch.optim's
    copies of their values in ``wide`` (float32 for bfloat16, whose master torch.optim's
    float32 parameters stand for)."""
    wide = torch.float32 if dtype == torch.bfloat16 else dtype
    init = [t.to(dtype) for t in _params(wide)[:4]]
    return (wide, [torch.nn.Parameter(t.clone()) for t in init],
            [torch.nn.Parameter(t.to(wide, copy=True)) for t in init])


def _assert_like_torch(ours, theirs, opt, ref, dtype):
    """bfloat16: the masters within 4 ulps of torch.optim's float32 parameters; else the
    trajectories (assert_trajectories_close)."""
    if dtype == torch.bfloat16:
        assert _ulps([opt.state[p]["master_param"] for p in ours], theirs) <= 4
    else:
        assert_trajectories_close(ours, theirs, opt, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_state_with_its_negative_bit_set_steps_with_its_value(name, kwargs, dtype):
    """State tensors that are negative views (``torch._neg_view``, assigned or loaded),
    which NumPy cannot view: torch.optim steps them with their values, and so does
    fastopt.torch (their values take their places in the state). A bfloat16 parameter's
    float32 state and master against torch.optim on a float32 copy."""
    wide, ours, theirs = _ours_and_theirs(dtype)
    opt = getattr(ft, name)(ours, **kwargs)
    ref = getattr(torch.optim, name)(theirs, foreach=False, **kwargs)
    gen = torch.Generator().manual_seed(32)
    for step in range(5):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn(a.shape, generator=gen).to(dtype)
            b.grad = a.grad.to(wide)
        opt.step()
        ref.step()
        if step == 1:
            for o in (opt, ref):
                for state in o.state.values():
                    for key, value in state.items():
                        if key != "step":
                            state[key] = torch._neg_view(-value)
                            assert state[key].is_neg()
    _assert_like_torch(ours, theirs, opt, ref, dtype)
    if dtype == torch.bfloat16:
        for a, b in zip(opt.state.values(), ref.state.values()):
            for key in b:
                torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_a_parameter_with_its_negative_bit_set_steps_in_place(name, kwargs, dtype):
    """A parameter whose ``.data`` is a negative view (``p.data = torch._neg_view(x)``),
    which NumPy cannot view: torch.optim steps it in place, through the view (its storage
    holds the negated values), and so does fastopt.torch, writes to it between steps seen.
    A bfloat16 parameter's master against torch.optim on a float32 copy."""
    wide, ours, theirs = _ours_and_theirs(dtype)
    storages = []
    for p in ours[:3]:
        p.data = torch._neg_view(-p.detach())
        storages.append(torch._neg_view(p.detach()))    # the storage's own values: -p
    opt = getattr(ft, name)(ours, **kwargs)
    ref = getattr(torch.optim, name)(theirs, foreach=False, **kwargs)
    gen = torch.Generator().manual_seed(33)
    for step in range(5):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn(a.shape, generator=gen).to(dtype)
            b.grad = a.grad.to(wide)
        if step == 3:       # a write between steps (through the view) is seen
            with torch.no_grad():
                ours[0].mul_(0.5)
                theirs[0].copy_(ours[0])
        opt.step()
        ref.step()
    assert all(p.is_neg() for p in ours[:3])
    for p, s in zip(ours, storages):
        assert torch.equal(s, -p.detach())
    _assert_like_torch(ours, theirs, opt, ref, dtype)
    if dtype == torch.bfloat16:
        for p in ours:
            assert torch.equal(p.detach(), opt.state[p]["master_param"].to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_a_zero_tensor_grad_steps_as_zeros(name, kwargs, dtype):
    """A grad that is one of autograd's efficient zero tensors (``torch._efficientzerotensor``,
    which has no memory and which NumPy cannot view): torch.optim steps with zeros, and so
    does fastopt.torch (a bfloat16 master against torch.optim on a float32 copy)."""
    wide, ours, theirs = _ours_and_theirs(dtype)
    opt = getattr(ft, name)(ours, weight_decay=0.1, **{k: v for k, v in kwargs.items()
                                                      if k != "weight_decay"})
    ref = getattr(torch.optim, name)(theirs, foreach=False, weight_decay=0.1,
                                     **{k: v for k, v in kwargs.items() if k != "weight_decay"})
    gen = torch.Generator().manual_seed(34)
    for step in range(4):
        for k, (a, b) in enumerate(zip(ours, theirs)):
            if (k + step) % 2:
                a.grad = torch._efficientzerotensor(a.shape, dtype=dtype)
                b.grad = torch._efficientzerotensor(b.shape, dtype=wide)
            else:
                a.grad = torch.randn(a.shape, generator=gen).to(dtype)
                b.grad = a.grad.to(wide)
        opt.step()
        ref.step()
    _assert_like_torch(ours, theirs, opt, ref, dtype)


# -------------------------------------------------------------------- complex parameters
# torch.optim steps a complex parameter on torch.view_as_real of it, its grad and its state
# (complex, as the parameter): its real and imaginary parts are two real parameters. Each
# optimizer's options besides VARIANTS': weight decay (decoupled too) and maximize.
COMPLEX_VARIANTS = VARIANTS + [
    ("SGD", dict(lr=0.1, momentum=0.5, dampening=0.2, weight_decay=0.1, maximize=True)),
    ("SGD", dict(lr=0.1)),
    ("RMSprop", dict(momentum=0.5, weight_decay=0.1, maximize=True)),
    ("RMSprop", dict(centered=True, momentum=0.5)),
    ("Adagrad", dict(initial_accumulator_value=0.5, weight_decay=0.1, maximize=True)),
    ("Adam", dict(weight_decay=0.1, maximize=True)),
    ("Adam", dict(weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True)),
    ("AdamW", dict(weight_decay=0.1, amsgrad=True, maximize=True)),
    ("Adadelta", dict(weight_decay=0.1, maximize=True)),
    ("Adamax", dict(weight_decay=0.1, maximize=True)),
    ("NAdam", dict(weight_decay=0.1, maximize=True)),
    ("NAdam", dict(weight_decay=0.1, decoupled_weight_decay=True)),
    ("RAdam", dict(weight_decay=0.1, decoupled_weight_decay=True, maximize=True))]
COMPLEX_IDS = [f"{n}-{'-'.join(kw) or 'defaults'}" for n, kw in COMPLEX_VARIANTS]


@pytest.mark.parametrize("dtype", COMPLEX, ids=["c64", "c128"])
@pytest.mark.parametrize("name,kwargs", COMPLEX_VARIANTS, ids=COMPLEX_IDS)
def test_complex_trajectories_match_torch(name, kwargs, dtype):
    """complex64 and complex128 parameters (a 0-d, an empty and a transposed one among them)
    step torch.optim's trajectory, its complex state included (same keys and dtypes)."""
    step_both_and_compare(name, kwargs, dtype, 10)


@pytest.mark.parametrize("dtype", COMPLEX, ids=["c64", "c128"])
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_complex_state_dicts_move_between_torch_and_fastopt(name, kwargs, dtype):
    """torch.optim -> fastopt.torch -> torch.optim mid-training with complex parameters:
    the complex state loads both ways and the trajectory is torch's uninterrupted one."""
    def check(opt):
        for p, state in opt.state.items():
            for key, value in state.items():
                if key not in ("step", "mu_product"):
                    assert value.dtype == dtype, key
    _torch_fastopt_torch_handoffs(name, kwargs, 4, check, dtype)


@pytest.mark.parametrize("clip", [None, 3.0], ids=["", "clip"])
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_a_group_mixing_real_and_complex_params_steps_as_torchs(name, kwargs, clip):
    """float32, complex64, float64 and complex128 parameters in one group step as in
    torch.optim (each in its own dtype). Clipped: the norm is clip_grad_norm_'s (whose norms
    of the float32 and complex64 grads are float32: within their rounding), and the step
    torch.optim's on the grads scaled by the documented factor of the reported norm (in
    float64, the group's widest dtype)."""
    dtypes = [torch.float32, torch.complex64, torch.float64, torch.complex128] * 2
    gen = torch.Generator().manual_seed(40)
    init = [torch.randn(s, generator=gen, dtype=d)
            for s, d in zip([(3, 4), (5,), (), (2, 3), (0,), (4,), (2,), (3, 2)], dtypes)]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    theirs = [torch.nn.Parameter(t.clone()) for t in init]
    opt = getattr(ft, name)(ours, max_grad_norm=clip, **kwargs)
    ref = getattr(torch.optim, name)(theirs, foreach=False, **kwargs)
    for _ in range(6):
        _set_grads(gen, ours, theirs)
        opt.step()
        if clip is not None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in theirs])    # clip's norm
            np.testing.assert_allclose(opt.grad_norms[0], norm.item(),
                                       rtol=16 * torch.finfo(torch.float32).eps)
            factor = _torch_clip_coef(opt.grad_norms[0], clip, torch.float64)
            for p in theirs:
                p.grad.mul_(factor)
        ref.step()
    for d in set(dtypes):
        pick = [k for k, t in enumerate(init) if t.dtype == d]
        assert _ulps([ours[k] for k in pick], [theirs[k] for k in pick]) <= 4, d
    for a, b in zip(opt.state_dict()["state"].values(), ref.state_dict()["state"].values()):
        assert a.keys() == b.keys()
        for key in b:
            assert a[key].dtype == b[key].dtype, key
            assert _ulps([a[key]], [b[key]]) <= 8, key


def test_adagrad_state_of_a_complex_parameter_added_later_starts_as_torchs():
    """Adagrad's ``sum`` of a complex parameter starts at initial_accumulator_value in both
    its real and imaginary parts (torch's ``complex(v, v)``), for a parameter given to the
    constructor or added later."""
    out = []
    for lib in (torch.optim, ft):
        gen = torch.Generator().manual_seed(41)
        first = torch.nn.Parameter(torch.randn(3, generator=gen, dtype=torch.complex64))
        later = torch.nn.Parameter(torch.randn(2, 2, generator=gen, dtype=torch.complex128))
        opt = lib.Adagrad([first], initial_accumulator_value=0.5, lr=0.1)
        opt.add_param_group({"params": [later]})
        for _ in range(3):
            for p in (first, later):
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            opt.step()
        out.append((opt, [first, later]))
    (ref, theirs), (opt, ours) = out
    assert_trajectories_close(ours, theirs, opt, ref)


def test_a_complex_grad_with_its_conjugate_bit_set_steps_with_its_value():
    """A grad that is a conjugate view (``z.conj()``), which neither view_as_real nor NumPy
    takes, steps with its value (as a negative view's), clipped in place as clip_grad_norm_
    would; the same parameters fed the resolved grads step alike."""
    init = _params(torch.complex64)[:4]
    ours, plain = ([torch.nn.Parameter(t.clone()) for t in init] for _ in range(2))
    opt = ft.SGD(ours, lr=0.1, momentum=0.9, max_grad_norm=1.0)
    twin = ft.SGD(plain, lr=0.1, momentum=0.9, max_grad_norm=1.0)
    gen = torch.Generator().manual_seed(42)
    for _ in range(3):
        for a, b in zip(ours, plain):
            g = torch.randn(a.shape, generator=gen, dtype=a.dtype)
            a.grad, b.grad = g.conj(), g.conj().resolve_conj()
            assert a.grad.is_conj()
        opt.step()
        twin.step()
        for a, b in zip(ours, plain):
            assert torch.equal(a.grad, b.grad)
    assert all(_same_bits(a, b) for a, b in zip(ours, plain))


@pytest.mark.parametrize("name", NAMES)
def test_the_signature_shown_is_what_the_constructor_takes(name):
    """inspect.signature (help()) shows torch's constructor arguments and max_grad_norm, and
    the docstring lists them: each, given its shown default by keyword, makes the same param
    group as leaving it out, and every option a group records is shown (but those torch's own
    class records without taking them)."""
    cls = getattr(ft, name)
    shown = inspect.signature(cls).parameters
    assert list(shown)[0] == "params" and shown["max_grad_norm"].default is None
    assert "Parameters\n----------" in cls.__doc__ and "max_grad_norm :" in cls.__doc__
    plain = cls([torch.nn.Parameter(torch.ones(2))]).param_groups[0]
    for arg in list(shown)[1:]:
        group = cls([torch.nn.Parameter(torch.ones(2))],
                    **{arg: shown[arg].default}).param_groups[0]
        assert {k: v for k, v in group.items() if k != "params"} == \
            {k: v for k, v in plain.items() if k != "params"}, arg
    # (AdamW's group records decoupled_weight_decay, which torch's AdamW does not take)
    base = getattr(torch.optim, name)
    fixed = set(base([torch.nn.Parameter(torch.ones(2))]).param_groups[0]) - set(
        inspect.signature(base).parameters)
    assert set(plain) - {"params"} - fixed <= set(shown), set(plain) - set(shown)
