"""Property tests for every element-wise kernel (fo.ops, single and foreach) on every backend.

Hypothesis draws the kernel, its hyper-parameters across their valid ranges with every option
(optional state in use or not, maximize, decoupled decay, ...), shapes (0-d, empty, sizes around
the vector widths 1..67, rarely up to 1e5), dtypes, a memory layout per array (C, F, strided,
negative strides, transposed, unaligned, byte-swapped; a param that is its own grad) and values
with NaN, Inf, huge and subnormal numbers mixed in. Each call must give the NumPy reference's
bits on plain arrays (these kernels compute each element on its own, in the same order, so
they are bit-identical by design), and a refused call must leave every array bit-identical.

Cost: derandomized (the "ci" profile in tests/conftest.py), 250 + 150 examples: 13-15 s of CPU
per backend for this file on the 2-core development machine (imports and numba's cached
compilations included).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastopt as fo
from conftest import GRID_BACKENDS
from kernel_specs import SPECS, same_bits, snapshot

LAYOUTS = ["C", "F", "strided", "negative", "transposed", "unaligned", "byteswapped"]
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]   # arrays up to 1e5

# valid ranges (torch.optim's) of the hyper-parameters
LR = st.floats(0, 10)
EPS = st.floats(1e-12, 1)
DECAY = st.floats(0, 1)
UNIT = st.floats(0, 1)
BETA = st.floats(0, 1, exclude_max=True)
STEP = st.integers(1, 10_000)
FLAG = st.booleans()


@st.composite
def hyper(draw, kernel):
    """(hyper-parameters, positions of the optional arrays in use) for ``kernel``."""
    if kernel == "ewa":
        return dict(beta=draw(UNIT)), set()
    if kernel == "sgd":
        use = draw(FLAG)
        h = dict(lr=draw(LR), weight_decay=draw(DECAY), maximize=draw(FLAG))
        if use:
            h.update(momentum=draw(BETA), dampening=draw(st.sampled_from([0.0, 0.5, 1.0])),
                     first_step=draw(FLAG))
            h["nesterov"] = h["momentum"] > 0 and h["dampening"] == 0 and draw(FLAG)
        return h, {2} if use else set()
    if kernel == "momentum":
        return dict(lr=draw(LR), beta=draw(BETA)), set()
    if kernel == "rmsprop":
        use = {i for i in (3, 4) if draw(FLAG)}
        return dict(lr=draw(LR), beta=draw(BETA), eps=draw(EPS), weight_decay=draw(DECAY),
                    momentum=draw(BETA) if 4 in use else 0.0, maximize=draw(FLAG),
                    eps_inside_sqrt=draw(FLAG)), use
    betas = (draw(BETA), draw(BETA))
    if kernel == "adagrad":
        return dict(step=draw(STEP), lr=draw(LR), lr_decay=draw(UNIT), weight_decay=draw(DECAY),
                    eps=draw(EPS), maximize=draw(FLAG)), set()
    if kernel == "adam":
        use = {4} if draw(FLAG) else set()
        return dict(step=draw(STEP), lr=draw(LR), betas=betas, eps=draw(EPS),
                    weight_decay=draw(DECAY), maximize=draw(FLAG),
                    decoupled_weight_decay=draw(FLAG), eps_inside_sqrt=draw(FLAG)), use
    if kernel == "adadelta":
        return dict(lr=draw(LR), rho=draw(UNIT), eps=draw(EPS), weight_decay=draw(DECAY),
                    maximize=draw(FLAG)), set()
    if kernel == "adamax":
        return dict(step=draw(STEP), lr=draw(LR), betas=betas, eps=draw(EPS),
                    weight_decay=draw(DECAY), maximize=draw(FLAG)), set()
    if kernel == "nadam":
        return dict(step=draw(STEP), mu_product=draw(st.floats(1e-3, 1)), lr=draw(LR),
                    betas=betas, eps=draw(EPS), weight_decay=draw(DECAY),
                    momentum_decay=draw(st.floats(0, 0.1)), decoupled_weight_decay=draw(FLAG),
                    maximize=draw(FLAG)), set()
    if kernel == "lion":
        return dict(lr=draw(LR), betas=betas, weight_decay=draw(DECAY), maximize=draw(FLAG)), set()
    assert kernel == "radam"
    return dict(step=draw(STEP), lr=draw(LR), betas=betas, eps=draw(EPS),
                weight_decay=draw(DECAY), decoupled_weight_decay=draw(FLAG),
                maximize=draw(FLAG)), set()


@st.composite
def shapes(draw):
    ndim = draw(st.integers(0, 3))
    if ndim == 1:   # around every vector width; one draw in 16 up to 1e5
        large = draw(st.integers(0, 15)) == 0
        return (draw(st.integers(68, 100_000) if large else st.integers(0, 67)),)
    return tuple(draw(st.integers(0, 9)) for _ in range(ndim))


def special_values(dtype):
    info = np.finfo(dtype)
    return np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, info.max, -info.max, info.tiny,
                     info.smallest_subnormal, -info.smallest_subnormal, 1.0], dtype)


def fill(name, shape, dtype, rng, special, scale):
    """Random values, the fraction ``special`` of them NaN/Inf/huge/subnormal/zero; running
    squares and maxima non-negative, as a real run keeps them."""
    a = np.array(rng.standard_normal(shape) * scale, dtype)
    if any(word in name for word in ("sq", "sum", "inf", "square", "acc")):
        np.abs(a, out=a)
    hit = np.asarray(rng.random(shape) < special)
    a[hit] = rng.choice(special_values(dtype), size=int(np.count_nonzero(hit)))
    return a


def lay_out(a, layout):
    """A new array with the values, shape and dtype of ``a`` in the given memory layout."""
    every = (Ellipsis,)      # indexing with it keeps a 0-d result an array
    if layout == "C":
        out = np.empty(a.shape, a.dtype)
    elif layout == "F":
        out = np.empty(a.shape, a.dtype, order="F")
    elif layout == "strided":
        out = np.empty(tuple(2 * n for n in a.shape), a.dtype)[
            tuple(slice(None, None, 2) for _ in a.shape) + every]
    elif layout == "negative":
        out = np.empty(a.shape, a.dtype)[tuple(slice(None, None, -1) for _ in a.shape) + every]
    elif layout == "transposed":
        out = np.empty(a.shape[::-1], a.dtype).T
    elif layout == "unaligned":
        out = np.empty(a.nbytes + 1, np.uint8)[1:].view(a.dtype).reshape(a.shape)
    elif layout == "slice":     # a view of a bigger array, not at its start
        out = np.empty(tuple(n + 2 for n in a.shape), a.dtype)[
            tuple(slice(1, n + 1) for n in a.shape) + every]
    else:
        assert layout == "byteswapped"
        out = np.empty(a.shape, a.dtype.newbyteorder("S"))
    out[...] = a
    return out


@st.composite
def calls(draw, max_tensors=3):
    """A kernel call: (spec, foreach, hyper, tensors of plain arrays, tensors laid out)."""
    spec = SPECS[draw(st.sampled_from(sorted(SPECS)))]
    foreach = draw(FLAG)
    h, use = draw(hyper(spec.name))
    plain, laid = [], []
    for _ in range(draw(st.integers(1, max_tensors)) if foreach else 1):
        shape, dtype = draw(shapes()), draw(st.sampled_from([np.float32, np.float64]))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        special = draw(st.sampled_from([0.0, 0.01, 0.3]))
        scale = draw(st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e30]))
        arrays = [fill(name, shape, dtype, rng, special, scale)
                  if i < spec.nrequired or i in use else None
                  for i, name in enumerate(spec.arrays)]
        own_grad = draw(st.integers(0, 7)) == 0      # a param that is its own grad
        if own_grad:
            arrays[1] = arrays[0]
        plain.append(arrays)
        tensor = [None if a is None else lay_out(a, draw(st.sampled_from(LAYOUTS)))
                  for a in arrays]
        if own_grad:
            tensor[1] = tensor[0]
        laid.append(tensor)
    return spec, foreach, h, plain, laid


def run(spec, foreach, h, tensors):
    lists = [None if i >= spec.nrequired and all(t[i] is None for t in tensors)
             else [t[i] for t in tensors] for i in range(len(spec.arrays))]
    with np.errstate(all="ignore"):      # the reference warns on the NaN and Inf it makes
        if foreach:
            spec.multi(lists, **h)
        else:
            spec.single([lst[0] if lst else None for lst in lists], **h)


@settings(max_examples=250, suppress_health_check=SLOW_OK)
@given(call=calls())
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_every_kernel_gives_the_reference_bits_on_any_input(backend, call):
    spec, foreach, h, plain, laid = call
    grads_before = snapshot([t[1] for t in laid])
    with fo.use_backend("numpy"):
        run(spec, foreach, h, plain)
    with fo.use_backend(backend):
        run(spec, foreach, h, laid)
    for j, (want, got) in enumerate(zip(plain, laid)):
        for name, w, a in zip(spec.arrays, want, got):
            if a is None:
                continue
            if name == spec.arrays[1] and a is not got[0]:
                assert same_bits(a, grads_before[j]), f"{name}[{j}] (read only) changed"
            else:
                assert same_bits(a, w), f"{name}[{j}]: {a!r} != {w!r}"


FAULTS = {   # fault -> (exception, whether its message starts with the faulty array's name)
    "None": (TypeError, True), "list": (TypeError, True), "matrix": (TypeError, True),
    "int dtype": (TypeError, True), "other float dtype": (TypeError, False),
    "shape": (ValueError, False), "read-only": (ValueError, True),
    "overlap": (ValueError, False),   # named, but second when it is the later argument
}


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")   # np.matrix's own
@settings(max_examples=150, suppress_health_check=SLOW_OK)
@given(call=calls(), data=st.data())
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_refused_call_changes_nothing(backend, call, data):
    spec, foreach, h, _, tensors = call
    j = data.draw(st.integers(0, len(tensors) - 1), label="faulty tensor")
    arrays = tensors[j]
    i = data.draw(st.sampled_from([i for i, a in enumerate(arrays) if a is not None]),
                  label="faulty array")
    faults = [f for f in FAULTS if (f != "None" or i < spec.nrequired)
              and (f != "read-only" or i != 1) and (f != "matrix" or arrays[i].ndim == 2)]
    fault = data.draw(st.sampled_from(faults), label="fault")
    a = arrays[i]
    if fault == "None":
        arrays[i] = None
    elif fault == "list":
        arrays[i] = a.tolist()
    elif fault == "matrix":
        arrays[i] = np.asmatrix(a)
    elif fault == "int dtype":
        arrays[i] = np.zeros(a.shape, np.int64)
    elif fault == "other float dtype":
        arrays[i] = a.astype(np.float64 if a.dtype.itemsize == 4 else np.float32)
    elif fault == "shape":
        arrays[i] = a[..., np.newaxis]
    elif fault == "read-only":
        arrays[i] = a.copy()
        arrays[i].flags.writeable = False
    else:   # array i and another of the tensor, one element apart in one buffer
        if a.size < 2:   # (no partial overlap without two elements)
            arrays[:] = [None if x is None else np.ones(3, x.dtype) for x in arrays]
        shape = arrays[0].shape
        buf = np.ones(arrays[0].size + 1, arrays[0].dtype)
        arrays[i], arrays[1 if i == 0 else 0] = buf[1:].reshape(shape), buf[:-1].reshape(shape)
    before = [snapshot(t) for t in tensors]
    exc, named = FAULTS[fault]
    label = spec.names(j if foreach else None)[i]
    with fo.use_backend(backend), np.errstate(all="ignore"), pytest.raises(exc) as info:
        run(spec, foreach, h, tensors)
    message = str(info.value)
    assert message.startswith(f"{label} ") if named else label in message, message
    for t, b in zip(tensors, before):
        for x, y in zip(t, b):
            if isinstance(x, np.ndarray):
                assert same_bits(x, y)
