"""Special values against torch.optim: huge numbers (whose squares overflow), infinities, NaN.

torch.optim (``foreach=False``) is the expected value; fastopt runs both front ends
(``fastopt.torch`` and the NumPy optimizers ``fo.<Name>``) on every backend. A value is
matched as ``numpy.testing.assert_allclose`` matches it: the same NaN positions, the same
infinities (signs included), finite values to a few ulps.

Differences from torch.optim that are by design (README, "Special values"): torch's CPU
kernels contract ``a + b * c`` into a fused multiply-add (``add(alpha=)``, ``addcmul``,
``lerp``; ``addcdiv`` rounds its quotient before the add, as fastopt), fastopt's reference
rounds the product first; so where the product overflows
and the sum would not (``g + weight_decay * p`` with an infinite ``g`` and an overflowing
``weight_decay * p``; centered RMSprop's ``square_avg - grad_avg**2`` with an infinite
``square_avg`` and an overflowing ``grad_avg**2``) torch keeps an infinity where fastopt
gets ``inf - inf = NaN``, and a cancellation leaves torch the product's rounding error where
fastopt gets 0.
"""
import os

import numpy as np
import pytest

import fastopt as fo

torch = pytest.importorskip("torch")
import fastopt.torch as ft  # noqa: E402

TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def _state_arrays(state):
    return {k: np.array(v.detach().cpu().numpy() if torch.is_tensor(v) else v, dtype=np.float64)
            for k, v in state.items()}


def run_torch(cls, kwargs, p0, grads):
    """(param, state) after stepping a torch.optim-style class over ``grads``."""
    p = torch.nn.Parameter(torch.tensor(p0))
    opt = cls([p], foreach=False, **kwargs)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    return p.detach().numpy().copy(), _state_arrays(opt.state[p])


def run_numpy(name, kwargs, p0, grads):
    """(param, state) after stepping ``fo.<name>`` over ``grads``."""
    p = np.array(p0)
    opt = getattr(fo, name)([p], **kwargs)
    for g in grads:
        opt.step([np.array(g)])
    return p, {k: np.array(v, dtype=np.float64) for k, v in opt.state[0].items()}


def assert_matches(ours, theirs, dtype, ulps=8):
    """The same NaN and infinities, finite values within ``ulps`` relative ulps; every state
    key of torch's (``step`` and NAdam's ``mu_product`` included)."""
    rtol = ulps * np.finfo(dtype).eps
    (p, state), (p_ref, state_ref) = ours, theirs
    np.testing.assert_allclose(p, p_ref, rtol=rtol, atol=0, equal_nan=True, err_msg="param")
    assert set(state_ref) <= set(state)
    for key, ref in state_ref.items():
        np.testing.assert_allclose(state[key], ref, rtol=rtol, atol=0, equal_nan=True,
                                   err_msg=key)


def check_both_front_ends(name, kwargs, p0, grads, dtype):
    expected = run_torch(getattr(torch.optim, name), kwargs, p0, grads)
    assert_matches(run_torch(getattr(ft, name), kwargs, p0, grads), expected, dtype)
    assert_matches(run_numpy(name, kwargs, p0, grads), expected, dtype)
    return expected


# ------------------------------------------------------------ squares of huge grads
# |g| past sqrt(max) (g * g overflows) but (1 - beta2) * g * g finite: torch's addcmul computes
# ((1 - beta2) * g) * g, a finite second moment; (1 - beta2) * (g * g) would be inf, and the
# parameter would never move again (g / sqrt(inf) = 0).
HUGE = {np.float32: 3e19, np.float64: 3e154}
SQUARES = [("RMSprop", {}), ("RMSprop", dict(centered=True, momentum=0.5, weight_decay=0.1)),
           ("RMSprop", dict(alpha=0.9, eps=0.0)), ("Adam", {}), ("Adam", dict(amsgrad=True)),
           ("AdamW", dict(maximize=True)), ("Adadelta", {}),
           ("Adadelta", dict(weight_decay=0.1, maximize=True)),
           ("NAdam", {}), ("NAdam", dict(decoupled_weight_decay=True, weight_decay=0.1)),
           ("RAdam", {}), ("RAdam", dict(betas=(0.9, 0.9)))]


@pytest.mark.parametrize("name,kwargs", SQUARES,
                         ids=[f"{n}-{'-'.join(map(str, k.values())) or 'default'}"
                              for n, k in SQUARES])
def test_squares_of_huge_grads_are_scaled_before_they_overflow(name, kwargs, dtype, backend):
    huge = HUGE[dtype]
    assert np.isinf(dtype(huge) * dtype(huge))          # the square alone overflows
    p0 = np.array([1.0, -2.0, 0.5, 3.0], dtype)
    grads = [np.array([huge, -huge, 0.25, huge / 2], dtype),
             np.array([huge / 3, -1.0, huge, 0.5], dtype),    # signs kept: no cancellation
             np.array([0.5, -0.25, 2.0, 1.0], dtype)]
    p, state = check_both_front_ends(name, kwargs, p0, grads, dtype)
    second = "square_avg" if "square_avg" in state else "exp_avg_sq"
    assert np.isfinite(state[second]).all() and np.isfinite(p).all()    # torch's: finite


# ------------------------------------------------------------- first moments: torch.lerp
# torch's exp_avg.lerp_(grad, 1 - beta1) (centered RMSprop: grad_avg.lerp_(grad, 1 - alpha))
# starts from the grad when the weight is 0.5 or more: grad - (grad - exp_avg) * beta1. An
# infinite grad then gives NaN (inf - inf * beta1; beta1 = 0: inf * 0), where
# exp_avg + (1 - beta1) * (grad - exp_avg) gives the infinity; and a difference that overflows
# gives the other infinity (exp_avg -7e37, grad 3e38: torch -inf, the other form +inf).
LERPS = [("Adam", dict(betas=(0.0, 0.0))), ("Adam", dict(betas=(0.3, 0.999), amsgrad=True)),
         ("AdamW", dict(betas=(0.5, 0.9))), ("Adamax", dict(betas=(0.0, 0.0))),
         ("Adamax", dict(betas=(0.3, 0.9))), ("NAdam", dict(betas=(0.2, 0.9))),
         ("NAdam", dict(betas=(0.0, 0.0), decoupled_weight_decay=True, weight_decay=0.1)),
         ("RAdam", dict(betas=(0.3, 0.5))), ("RAdam", dict(betas=(0.0, 0.0), weight_decay=0.1)),
         ("RMSprop", dict(alpha=0.5, centered=True)),
         ("RMSprop", dict(alpha=0.0, centered=True, momentum=0.9)),
         ("Adam", dict(betas=(0.9, 0.999))), ("RMSprop", dict(centered=True))]   # w < 0.5


@pytest.mark.parametrize("name,kwargs", LERPS,
                         ids=[f"{n}-{'-'.join(map(str, k.values()))}" for n, k in LERPS])
def test_first_moments_are_torchs_lerp_for_infinite_and_overflowing_grads(name, kwargs, dtype,
                                                                          backend):
    big = np.finfo(dtype).max
    p0 = np.array([1.0, -2.0, 0.5, 3.0, 0.25], dtype)
    first = [np.array([np.inf, -np.inf, -big / 2, 0.5, 1.0], dtype)]
    second = np.array([1.0, 2.0, big * 0.9, 0.75, 1.0], dtype)
    if name == "RMSprop":   # a finite grad_avg**2 that overflows meets torch's fused
        first[0][2], second[2] = -4.0, 8.0      # multiply-add (module docstring): not here
    # state after one step (exp_avg NaN in torch where the weight is >= 0.5) ...
    check_both_front_ends(name, kwargs, p0, first, dtype)
    # ... and after a second, whose grad minus the first moment overflows
    check_both_front_ends(name, kwargs, p0, first + [second], dtype)


# ------------------------------------------------------- updates: torch's addcdiv order
# param.addcdiv_(t1, t2, value=-lr) is param - (lr * t1) / t2: with lr > 1 and a huge t1 the
# product overflows (torch: inf / inf = NaN, or an infinite step), and with a subnormal product
# torch keeps its few bits, where lr * (t1 / t2) would give a finite, or more precise, update.
# (NAdam: (coef * t1) * r, r the reciprocal of the denominator: the same overflows.)
UPDATES = [("Adam", dict(lr=10.0)), ("AdamW", dict(lr=10.0, amsgrad=True)),
           ("Adam", dict(lr=1e-3)), ("Adagrad", dict(lr=10.0)),
           ("Adagrad", dict(lr=0.01, lr_decay=0.5)), ("RMSprop", dict(lr=10.0)),
           ("RMSprop", dict(lr=0.01, alpha=0.9)), ("Adamax", dict(lr=10.0)),
           ("Adamax", dict(lr=2e-3, maximize=True)), ("NAdam", dict(lr=10.0)),
           ("NAdam", dict(lr=2e-3, decoupled_weight_decay=True, weight_decay=0.1))]


@pytest.mark.parametrize("name,kwargs", UPDATES,
                         ids=[f"{n}-{'-'.join(map(str, k.values()))}" for n, k in UPDATES])
def test_updates_multiply_by_the_lr_before_they_divide(name, kwargs, dtype, backend):
    info = np.finfo(dtype)
    huge, tiny = info.max / 4, info.smallest_normal / 2 ** 10      # tiny: subnormal
    p0 = np.array([1.0, -1.0, 0.0, 0.0, 0.5, 0.0], dtype)
    grads = [np.array([huge, -huge, tiny, -tiny * 3, 1.0, tiny], dtype),
             np.array([0.5, -0.5, tiny, -tiny, 2.0, tiny * 5], dtype)]
    check_both_front_ends(name, kwargs, p0, grads[:1], dtype)
    check_both_front_ends(name, kwargs, p0, grads, dtype)


def test_torch_rounds_addcdiv_unfused_and_the_readme_does_not_call_it_fused():
    """torch's CPU addcdiv ``a + (value * t1) / t2`` rounds the quotient before the add (a
    division is no multiply-add; checked here on the vectorized loop and its scalar tail), so
    it is not among the fused operations where fastopt differs by design; the README's list
    of them named it."""
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        a, t1, t2 = (rng.standard_normal(4099).astype(dtype) for _ in range(3))
        got = torch.from_numpy(a.copy()).addcdiv_(torch.from_numpy(t1), torch.from_numpy(t2),
                                                  value=-0.37)
        np.testing.assert_array_equal(got.numpy(), a + (dtype(-0.37) * t1) / t2)
    path = os.path.join(os.path.dirname(__file__), "..", "README.md")
    if not os.path.exists(path):
        pytest.skip("no README.md next to the tests")
    with open(path) as f:
        text = " ".join(f.read().split())
    fused = text.split("torch's CPU kernels fuse", 1)[1].split("fastopt rounds the product", 1)[0]
    named = fused.split(";")[0]                 # the list, before any "not ..." aside
    assert "`add(alpha=)`" in named and "addcdiv" not in named


# RAdam's rectified step is torch's ((exp_avg / bc1) * lr) * (sqrt(bc2) / (sqrt(v) + eps)) * rect:
# step_size * exp_avg comes first, so it overflows (and times an adaptive factor of 0, NaN)
# where torch's does.
RADAM = [dict(lr=10.0), dict(lr=10.0, betas=(0.5, 0.99), decoupled_weight_decay=True,
                            weight_decay=0.05), dict(lr=1e-3, eps=0.0)]


@pytest.mark.parametrize("kwargs", RADAM, ids=["lr10", "decoupled", "eps0"])
def test_radam_multiplies_by_the_step_size_first(kwargs, dtype, backend):
    huge = np.finfo(dtype).max * 0.9    # (subnormal products: torch rounds twice, fastopt once)
    p0 = np.array([1.0, -1.0, 0.0, 0.5, 0.25], dtype)
    warm = [np.array([0.1, -0.1, 0.0, 0.2, 0.3], dtype)] * 6      # rectified from t = 6 on
    last = np.array([huge, -huge, 0.0, 1.0, 2.0], dtype)
    p, _ = check_both_front_ends("RAdam", kwargs, p0, warm + [last], dtype)
    if kwargs["lr"] == 10.0:
        assert np.isnan(p[:2]).all()                                # torch's



# ------------------------------------------------------------ NAdam's subnormal denominators
# NAdam's kernels multiply both terms by one reciprocal of the denominator; with a subnormal
# eps and a zero second moment that reciprocal overflows, and 0 * inf made the parameter NaN
# where torch's addcdiv (0 / eps) leaves it as it was. Found by tests/test_fuzz_torch_optim.py.
@pytest.mark.parametrize("grad", [0.0, 1.0])
def test_nadam_with_a_subnormal_eps_divides_where_the_reciprocal_overflows(grad, dtype, backend):
    eps = float(np.finfo(dtype).smallest_subnormal * 16)
    p0 = np.array([0.5, -1.0, 2.0], dtype)
    grads = [np.zeros(3, dtype), np.array([0.0, grad, 0.0], dtype)]
    p, _ = check_both_front_ends("NAdam", dict(eps=eps), p0, grads, dtype)
    assert p[0] == p0[0] and p[2] == p0[2]
