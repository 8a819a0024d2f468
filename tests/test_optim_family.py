"""Adadelta, Adamax, NAdam and RAdam against torch.optim: trajectories, state dicts (ours and
torch's), and the hyper-parameter checks. The kernels themselves are in the equivalence grid
(tests/test_kernels.py)."""
import pickle

import numpy as np
import pytest

import fastopt as fo
from conftest import GRID_BACKENDS, needs_torch, torch

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
