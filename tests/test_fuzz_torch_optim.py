"""Randomized differential test of the optimizer classes against torch.optim (foreach=False).

Hypothesis draws an optimizer with every hyper-parameter across torch's valid range (edge values
included: lr, betas and eps 0, amsgrad, maximize, nesterov, centered, ...), float32/float64
params of random shapes (0-d, empty, 1-D..3-D) in random layouts (transposed, negative strides,
views of a bigger array, Fortran order), 1-3 param groups, then a sequence of operations done to
both: steps with random grads (exact zeros, NaN/Inf now and then, a param as its own grad),
hyper-parameter edits in param_groups between steps, state_dict round trips (fastopt -> fresh
fastopt, torch -> fresh torch, torch's converted to NumPy -> fastopt and back), add_param_group,
fo.set_num_threads and backend switches. After every step the params and state must agree to a
few ulps of the values and of the step; then fastopt's are set to torch's bits, so every step is
compared on its own (rounding does not accumulate). A step torch refuses ends the example (its
KeyErrors on state an option made mid-run, which fastopt creates instead); a step fastopt
refuses must leave every array as it was.

torch's quirks the draws step around (not fastopt's to copy): Adagrad fills every group's sum
with the constructor's initial_accumulator_value (fastopt takes the group's), so it is the
same in every group here; load_state_dict casts NAdam's float32 mu_product to the params'
dtype (fastopt keeps float32, as its docstring says), undone after torch's loads; centered
RMSprop with alpha about 0 has no common answer (see degenerate()). Tolerances grow with the
roundings a step amplifies (cancellations in g + weight_decay * p, beta * old + new, centered
RMSprop's variance: README "Special values").

Cost: derandomized, 400 examples: about 7 s per backend on the 2-core development machine.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastopt as fo
from conftest import GRID_BACKENDS
from test_fuzz_kernels import lay_out

torch = pytest.importorskip("torch")

LAYOUTS = ["C", "F", "strided", "negative", "transposed", "slice"]
FLAG = st.booleans()
LR = st.sampled_from([0.0, 1e-3, 0.1, 1.0]) | st.floats(0, 2)
UNIT = st.sampled_from([0.0, 0.5, 0.9]) | st.floats(0, 1, exclude_max=True)
EPS = st.sampled_from([0.0, 1e-8, 1e-3]) | st.floats(0, 1)
DECAY = st.sampled_from([0.0, 0.0, 1e-2]) | st.floats(0, 1)


def betas():
    return st.tuples(UNIT, UNIT)


# name -> (hyper-parameter strategies, keys editable between steps)
SPECS = {
    "SGD": dict(lr=LR, momentum=st.sampled_from([0.0, 0.9]) | UNIT,
                dampening=st.sampled_from([0.0, 0.5, 1.0]), weight_decay=DECAY,
                nesterov=FLAG, maximize=FLAG),
    "RMSprop": dict(lr=LR, alpha=UNIT, eps=EPS, weight_decay=DECAY,
                    momentum=st.sampled_from([0.0, 0.9]) | UNIT, centered=FLAG, maximize=FLAG),
    "Adagrad": dict(lr=LR, lr_decay=st.sampled_from([0.0, 0.1]) | UNIT, weight_decay=DECAY,
                    initial_accumulator_value=st.sampled_from([0.0, 0.1, 1.0]), eps=EPS,
                    maximize=FLAG),
    "Adam": dict(lr=LR, betas=betas(), eps=EPS, weight_decay=DECAY, amsgrad=FLAG,
                 maximize=FLAG, decoupled_weight_decay=FLAG),
    "AdamW": dict(lr=LR, betas=betas(), eps=EPS, weight_decay=DECAY, amsgrad=FLAG,
                  maximize=FLAG),
    "Adadelta": dict(lr=LR, rho=UNIT, eps=EPS, weight_decay=DECAY, maximize=FLAG),
    "Adamax": dict(lr=LR, betas=betas(), eps=EPS, weight_decay=DECAY, maximize=FLAG),
    "NAdam": dict(lr=LR, betas=betas(), eps=EPS, weight_decay=DECAY,
                  momentum_decay=st.sampled_from([0.0, 4e-3]) | st.floats(0, 0.1),
                  decoupled_weight_decay=FLAG, maximize=FLAG),
    "RAdam": dict(lr=LR, betas=betas(), eps=EPS, weight_decay=DECAY,
                  decoupled_weight_decay=FLAG, maximize=FLAG),
}
# keys torch reads from the group at every step (SGD's nesterov only with momentum)
EDITABLE = {name: [k for k in spec if k not in ("nesterov", "initial_accumulator_value")]
            for name, spec in SPECS.items()}
# Adagrad fills every group's sum with the constructor's initial_accumulator_value (torch's
# self.defaults; a group's own is ignored, by fastopt as by torch): drawn once per example, given
# to both constructors and to every group.
SAME_IN_EVERY_GROUP = ("initial_accumulator_value",)


@st.composite
def hypers(draw, name):
    h = {k: draw(s) for k, s in SPECS[name].items()}
    if name == "SGD" and h["nesterov"]:
        h["momentum"] = h["momentum"] or 0.5
        h["dampening"] = 0.0
    if name == "RMSprop" and degenerate(h):
        h["alpha"] = 0.5
    return h


def degenerate(group):
    """centered RMSprop with alpha (about) 0: the variance square_avg - grad_avg**2 is
    g*g - g*g, 0 or a rounding error of either sign whether or not the subtraction is fused
    (torch's addcmul is), so sqrt gives 0, a tiny number or NaN: no common answer. (A larger
    alpha is compared, to a tolerance scaled by conditions().)"""
    return bool(group.get("centered")) and group.get("alpha", 1.0) < 1e-3


@st.composite
def param_specs(draw):
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.sampled_from([0, 1, 2, 3, 5, 17])) if ndim == 1
                  else draw(st.integers(0 if ndim > 1 else 1, 4)) for _ in range(ndim))
    return shape, draw(st.sampled_from(LAYOUTS)), draw(st.integers(0, 2**32 - 1))


OPS = st.sampled_from(["step"] * 6 + ["edit"] * 2 + ["roundtrip", "torch_to_fo", "fo_to_torch",
                                                      "add_group", "threads", "backend"])


@st.composite
def scenarios(draw):
    name = draw(st.sampled_from(sorted(SPECS)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    groups = [dict(params=draw(st.lists(param_specs(), min_size=1, max_size=2)),
                   hyper=draw(hypers(name))) for _ in range(draw(st.integers(1, 3)))]
    same = {k: v for k, v in groups[0]["hyper"].items() if k in SAME_IN_EVERY_GROUP}
    ops = []
    for op in draw(st.lists(OPS, min_size=1, max_size=8)):
        if op == "step":
            ops.append((op, draw(st.integers(0, 2**32 - 1)),
                        draw(st.sampled_from(["normal"] * 6 + ["zeros", "special", "self"]))))
        elif op == "edit":
            key = draw(st.sampled_from(EDITABLE[name]))
            ops.append((op, draw(st.integers(0, 2)), key, draw(SPECS[name][key])))
        elif op == "add_group":
            ops.append((op, draw(st.lists(param_specs(), min_size=1, max_size=2)),
                        {**draw(hypers(name)), **same}))
        elif op == "threads":
            ops.append((op, draw(st.sampled_from([1, 2]))))
        elif op == "backend":
            ops.append((op, draw(st.sampled_from(fo.backends()))))
        else:
            ops.append((op,))
    for g in groups:
        g["hyper"].update(same)
    return name, dtype, groups, ops


def to_numpy(sd):
    conv = {k: {kk: (vv.numpy().copy() if torch.is_tensor(vv) else vv) for kk, vv in v.items()}
            for k, v in sd["state"].items()}
    return {"state": conv, "param_groups": [dict(g) for g in sd["param_groups"]]}


def to_torch(sd):
    conv = {k: {kk: (torch.from_numpy(np.array(vv)) if isinstance(vv, np.ndarray) else vv)
                for kk, vv in v.items()} for k, v in sd["state"].items()}
    return {"state": conv, "param_groups": [dict(g) for g in sd["param_groups"]]}


def torch_group(hyper):
    return {k: (tuple(v) if k == "betas" else v) for k, v in hyper.items()}


def close(got, want, scale, dtype, what):
    """got to want within a few ulps of ``scale`` (elementwise), NaNs equal."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan), f"{what}: NaNs differ\n{got}\n{want}"
    inf = np.isinf(want)
    assert np.array_equal(got[inf], want[inf]), f"{what}: Infs differ\n{got}\n{want}"
    ok = nan | inf
    tol = 8 * np.finfo(dtype).eps * np.abs(scale)
    bad = ~ok & ~(np.abs(got - want) <= tol)
    assert not bad.any(), (f"{what}: {got[bad][:4]} != {want[bad][:4]} (tolerance {tol[bad][:4]})")


class Pair:
    def __init__(self, name, dtype, groups):
        self.name, self.dtype = name, dtype
        self.arrays, self.tensors, fgroups, tgroups = [], [], [], []
        for g in groups:
            fa, ta = self._make(g["params"])
            fgroups.append(dict(params=fa, **g["hyper"]))
            tgroups.append(dict(params=ta, **torch_group(g["hyper"])))
        same = {k: v for k, v in groups[0]["hyper"].items() if k in SAME_IN_EVERY_GROUP}
        self.fo = getattr(fo, name)(fgroups, **same)
        self.t = getattr(torch.optim, name)(tgroups, foreach=False, **same)

    def _make(self, specs):
        fa, ta = [], []
        for shape, layout, seed in specs:
            v = np.random.default_rng(seed).standard_normal(shape).astype(self.dtype)
            fa.append(lay_out(v, layout))
            ta.append(torch.tensor(v, requires_grad=True))
        self.arrays += fa
        self.tensors += ta
        return fa, ta

    def fresh_fo(self):
        same = {k: v for k, v in self.fo.defaults.items() if k in SAME_IN_EVERY_GROUP}
        return getattr(fo, self.name)([dict(g) for g in self.fo.param_groups], **same)

    def fresh_torch(self):
        groups = [{k: v for k, v in g.items()} for g in self.t.param_groups]
        same = {k: v for k, v in self.t.defaults.items() if k in SAME_IN_EVERY_GROUP}
        return getattr(torch.optim, self.name)(groups, foreach=False, **same)


def snapshot(pair):
    arrays = [a.copy() for a in pair.arrays]
    state = {i: {k: np.array(v, copy=True) for k, v in s.items()} for i, s in pair.fo.state.items()}
    return arrays, state


QUADRATIC = ("square_avg", "exp_avg_sq", "max_exp_avg_sq", "sum")


def conditions(pair):
    """Per param, how much centered RMSprop's variance square_avg - grad_avg**2 amplifies
    roundings (square_avg / variance, torch's state); 1 elsewhere."""
    out = []
    for i, t in enumerate(pair.tensors):
        s = pair.t.state.get(t, {})
        if "grad_avg" not in s:
            out.append(1.0)
            continue
        sq = s["square_avg"].numpy().astype(np.float64)
        ga = s["grad_avg"].numpy().astype(np.float64)
        with np.errstate(all="ignore"):
            c = np.nan_to_num(sq / np.abs(sq - ga * ga), nan=1.0, posinf=1.0)
        out.append(np.maximum(c, 1.0))
    return out


def check_state(pair, what, magnitude=None, before=None, cond=None):
    fsd, tsd = pair.fo.state_dict(), pair.t.state_dict()
    fstate = {i: s for i, s in fsd["state"].items() if s}
    tstate = {i: {k: v for k, v in s.items() if v is not None}
              for i, s in tsd["state"].items()}
    tstate = {i: s for i, s in tstate.items() if s}
    assert sorted(fstate) == sorted(tstate), f"{what}: state for {sorted(fstate)} != {sorted(tstate)}"
    amp = {}    # per param: how much larger than its value a state's rounding may be
    for i, ts in tstate.items():
        fs = fstate[i]
        assert set(fs) == set(ts), f"{what}: state[{i}] keys {sorted(fs)} != {sorted(ts)}"
        for k, tv in ts.items():
            tv = tv.numpy() if torch.is_tensor(tv) else np.asarray(tv)
            if k == "step":
                assert float(fs[k]) == float(tv), f"{what}: state[{i}]['step'] {fs[k]} != {tv}"
                continue
            if k in pair.fo.scalar_keys():      # NAdam's mu_product: float32 in both
                close(fs[k], tv, np.abs(tv), np.float32, f"{what}: state[{i}][{k!r}]")
                continue
            scale = np.abs(tv) + np.abs(np.asarray(fs[k], np.float64))
            if before is not None and k in before.get(i, {}):   # beta * old + new, cancelled
                scale = scale + np.nan_to_num(np.abs(before[i][k].astype(np.float64)), nan=0.0)
            if magnitude is not None:   # a rounding of g + weight_decay * param, cancelled
                m, ratio = magnitude[i]     # (and the relative error it leaves, for ratios)
                scale = (scale + (m * m if k in QUADRATIC else m)) * ratio
            if cond is not None and k == "momentum_buffer":
                scale = scale * cond[i]
            close(fs[k], tv, scale, pair.dtype, f"{what}: state[{i}][{k!r}]")
            with np.errstate(all="ignore"):
                a = np.nan_to_num(scale / np.abs(tv), nan=1.0, posinf=1e6)
            amp[i] = np.maximum(amp.get(i, 1.0), np.clip(a, 1.0, 1e6))
    return amp


def sync(pair):
    """fastopt's params and state arrays to torch's bits (so the next step starts equal)."""
    for a, t in zip(pair.arrays, pair.tensors):
        a[...] = t.detach().numpy()
    tstate = pair.t.state
    for i, t in enumerate(pair.tensors):
        if t not in tstate or i not in pair.fo.state:
            continue
        for k, v in tstate[t].items():
            if torch.is_tensor(v) and k not in ("step", "mu_product") and k in pair.fo.state[i]:
                pair.fo.state[i][k][...] = v.numpy()


def untouch_mu_product(opt):
    """torch quirk: load_state_dict casts NAdam's mu_product (a float32 tensor, multiplied in
    float32) to the param's dtype, so a float64 run multiplies it in float64 after a load;
    fastopt keeps float32 (its docstring). Put torch back on its uninterrupted path."""
    for s in opt.state.values():
        if "mu_product" in s:
            s["mu_product"] = s["mu_product"].to(torch.float32)


def magnitudes(pair, fgrads):
    """Per param: |grad| + weight_decay * |param| per element (the effective grad's scale)
    and its ratio to |grad + weight_decay * param| (how much a cancellation there amplifies
    roundings in what is divided by it, e.g. RMSprop's g / (|g| + eps))."""
    out = []
    for group in pair.fo.param_groups:
        wd = group.get("weight_decay", 0.0)
        for p in group["params"]:
            k = next(j for j, a in enumerate(pair.arrays) if a is p)
            with np.errstate(all="ignore"):
                m = (np.abs(np.asarray(fgrads[k], np.float64))
                     + wd * np.abs(np.asarray(p, np.float64)))
                g = np.asarray(fgrads[k], np.float64) + wd * np.asarray(p, np.float64)
                ratio = np.clip(np.nan_to_num(m / np.abs(g), nan=1.0, posinf=1e6), 1.0, 1e6)
            out.append((np.nan_to_num(m, nan=0.0), ratio))
    return out


def make_grads(pair, seed, kind):
    rng = np.random.default_rng(seed)
    fgrads, tgrads = [], []
    for a in pair.arrays:
        if kind == "self":
            g = a
        elif kind == "zeros":
            g = np.zeros(a.shape, a.dtype)
        else:
            g = rng.standard_normal(a.shape).astype(a.dtype)
            if kind == "special" and g.size:
                g.flat[rng.integers(g.size)] = rng.choice([np.nan, np.inf, -np.inf, 0.0])
        fgrads.append(g)
        tgrads.append(torch.tensor(np.array(g)))
    return fgrads, tgrads


def run_scenario(name, dtype, groups, ops):
    pair = Pair(name, dtype, groups)
    check_state(pair, "construction")
    for n, op in enumerate(ops):
        what = f"op {n} {op}"
        if op[0] == "step":
            fgrads, tgrads = make_grads(pair, op[1], op[2])
            for t, g in zip(pair.tensors, tgrads):
                t.grad = g
            before = [t.detach().numpy().copy() for t in pair.tensors]
            try:
                with np.errstate(all="ignore"):
                    pair.t.step()
            except (KeyError, RuntimeError) as e:   # torch refuses: nothing to compare
                return f"torch refused: {e!r}"
            arrays, state = snapshot(pair)
            mags = magnitudes(pair, fgrads)
            try:
                with np.errstate(all="ignore"):
                    pair.fo.step(fgrads)
            except Exception as e:
                after = snapshot(pair)
                for a, b in zip(arrays, after[0]):
                    np.testing.assert_array_equal(a, b)
                raise AssertionError(f"{what}: fastopt raised where torch stepped: {e!r}")
            cond = conditions(pair)
            amp = check_state(pair, what, mags, state, cond)
            for i, (a, t, b) in enumerate(zip(pair.arrays, pair.tensors, before)):
                want = t.detach().numpy()
                # the step computed from states known to amp[i] times their rounding
                scale = np.abs(want) + np.abs(want.astype(np.float64) - b) * amp.get(i, 1.0)
                lr = next(g["lr"] for g in pair.fo.param_groups
                          if any(p is a for p in g["params"]))
                if "momentum_buffer" in state.get(i, {}):   # lr * (momentum * buf + new)
                    old = np.nan_to_num(np.abs(state[i]["momentum_buffer"]), nan=0.0)
                    scale = scale + lr * old
                close(a, want, scale * cond[i], dtype, f"{what}: param {i}")
            sync(pair)
        elif op[0] == "edit":
            _, gi, key, value = op
            gi %= len(pair.fo.param_groups)
            tg, fg = pair.t.param_groups[gi], pair.fo.param_groups[gi]
            if name == "SGD" and key in ("momentum", "dampening") and tg["nesterov"]:
                if (key == "momentum" and value <= 0) or (key == "dampening" and value != 0):
                    continue    # torch's own check is at construction only
            if degenerate({**tg, key: value}):
                continue
            tg[key] = tuple(value) if key == "betas" else value
            fg[key] = value
        elif op[0] == "roundtrip":
            f2, t2 = pair.fresh_fo(), pair.fresh_torch()
            f2.load_state_dict(pair.fo.state_dict())
            t2.load_state_dict(pair.t.state_dict())
            untouch_mu_product(t2)
            pair.fo, pair.t = f2, t2
            check_state(pair, what)
        elif op[0] == "torch_to_fo":
            f2 = pair.fresh_fo()
            f2.load_state_dict(to_numpy(pair.t.state_dict()))
            pair.fo = f2
            check_state(pair, what)
        elif op[0] == "fo_to_torch":
            t2 = pair.fresh_torch()
            t2.load_state_dict(to_torch(pair.fo.state_dict()))
            untouch_mu_product(t2)
            pair.t = t2
            check_state(pair, what)
        elif op[0] == "add_group":
            _, specs, hyper = op
            fa, ta = pair._make(specs)
            pair.fo.add_param_group(dict(params=fa, **hyper))
            pair.t.add_param_group(dict(params=ta, **torch_group(hyper)))
        elif op[0] == "threads":
            fo.set_num_threads(op[1])
        else:
            fo.set_backend(op[1])
    return "done"


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_optimizers_follow_torch_through_random_sequences(backend, scenario):
    threads = fo.get_num_threads()
    try:
        with fo.use_backend(backend):
            run_scenario(*scenario)
    finally:
        fo.set_num_threads(threads)
