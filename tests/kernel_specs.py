"""Shared by the kernel tests: every element-wise fo.ops kernel of the registry
(fastopt/_registry.py) for the input-contract and fuzz tests (the names of its arrays, as the
error messages spell them, which may be None, and how to call the single and the foreach form
with arrays given in the backends' order: param, grad, state...), and the runners of the
equivalence grids (a kernel stepped over several steps, and over a mixed group of arrays)."""
from dataclasses import dataclass

import numpy as np

import fastopt as fo
from conftest import layout_like
from fastopt import _registry

ops = fo.ops


# each kernel's fastopt.ops hyper-parameters for these tests (valid, not the defaults); every
# kernel of the registry needs an entry
HYPER = {
    "ewa": dict(beta=0.9),
    "sgd": dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "momentum": dict(lr=0.1, beta=0.9),
    "rmsprop": dict(lr=0.01, momentum=0.5, weight_decay=0.1),
    "adagrad": dict(step=3, lr=0.1, lr_decay=0.01, weight_decay=0.1),
    "adam": dict(step=3, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
    "adadelta": dict(lr=0.5, rho=0.8, weight_decay=0.1),
    "adamax": dict(step=2, lr=0.01, weight_decay=0.1),
    "nadam": dict(step=2, mu_product=0.9, lr=0.01, weight_decay=0.1,
                  decoupled_weight_decay=True),
    "radam": dict(step=9, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
    "lion": dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1),
}
assert set(HYPER) == {k.name for k in _registry.KERNELS}, "a registry kernel has no HYPER"


@dataclass(frozen=True)
class Spec:
    """A registry kernel as these tests call it, through fastopt.ops with every array passed
    by its registry name (the ops functions use the same names)."""
    kernel: _registry.Kernel
    hyper: dict          # valid hyper-parameters (the regression tests' defaults)

    @property
    def name(self):
        return self.kernel.name

    @property
    def arrays(self):    # single-form names, in order: the updated one, the read one, state
        return self.kernel.arrays

    @property
    def lists(self):     # foreach-form names
        return self.kernel.lists

    @property
    def nrequired(self):  # the first nrequired may not be None
        return self.kernel.nrequired

    def single(self, arrays, **hyper):
        getattr(ops, self.kernel.ops)(**dict(zip(self.arrays, arrays)), **hyper)

    def multi(self, lists, **hyper):
        getattr(ops, self.kernel.foreach_ops)(**dict(zip(self.lists, lists)), **hyper)

    def names(self, index=None):
        """The names errors use: single form (index None) or item ``index`` of the lists."""
        if index is None:
            return self.arrays
        return tuple(f"{n}[{index}]" for n in self.lists)


SPECS = {k.name: Spec(k, HYPER[k.name]) for k in _registry.KERNELS}


def valid_arrays(spec, shape, dtype, rng):
    """A full set of arrays for ``spec`` (every optional state in use): random param, grad and
    signed state; the running squares and maxima non-negative, as a real run keeps them."""
    out = []
    for name in spec.arrays:
        a = rng.standard_normal(shape).astype(dtype)
        if any(word in name for word in ("sq", "sum", "inf", "square", "acc")):
            a = np.abs(a)
        out.append(np.asarray(a, dtype))
    return out


def snapshot(arrays):
    """Copies of every array (and of the arrays in lists), to check that a refused call
    changed nothing; anything else is kept as it is."""
    def copy(a):
        if isinstance(a, list):
            return [copy(x) for x in a]
        return np.array(a, copy=True) if isinstance(a, np.ndarray) else a
    return [copy(a) for a in arrays]


def same_bits(a, b):
    """Equal dtype, shape and bits (signed zeros included), NaN where the other has NaN (the
    payload of a NaN depends on the operand order the compiler chose, as IEEE 754 allows)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.type is not b.dtype.type or a.shape != b.shape:
        return False
    a = a.astype(a.dtype.newbyteorder("="))
    b = b.astype(b.dtype.newbyteorder("="))
    nan = np.isnan(a)
    if not np.array_equal(nan, np.isnan(b)):
        return False
    bits = np.uint32 if a.dtype.itemsize == 4 else np.uint64
    return np.array_equal(a.view(bits)[~nan], b.view(bits)[~nan])


# ------------------------------------------------------------------- stepping kernels
def random_run(shape, dtype, seed=0, steps=7):
    """A random param of ``shape`` and ``dtype`` and ``steps`` random grads for it."""
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(shape).astype(dtype)
    return p0, [rng.standard_normal(shape).astype(dtype) for _ in range(steps)]


def run_steps(step, init, backend, p0, grads, layout, threads=None):
    """Call ``step(param, grad, state, t)`` for t = 1..len(grads) on ``backend``, on a copy of
    ``p0`` laid out as ``layout`` (one of ``layout_like``'s, or "mixed": a transposed param,
    contiguous grads, strided state); ``state`` holds the arrays of ``init`` (name -> initial
    value) in that layout, and whatever scalars the step keeps there (NAdam's mu_product).
    ``threads``: run with that many threads. Returns the param and the state arrays."""
    param_layout, grad_layout, state_layout = {
        "mixed": ("transposed", "contiguous", "strided")}.get(layout, (layout,) * 3)
    p = layout_like(p0, param_layout)
    state = {k: layout_like(np.full(p0.shape, v, p0.dtype), state_layout)
             for k, v in init.items()}
    with fo.use_backend(backend):
        previous = fo.get_num_threads()
        if threads:
            fo.set_num_threads(threads)
        try:
            for t, g in enumerate(grads, start=1):
                step(p, layout_like(g, grad_layout), state, t)
        finally:
            fo.set_num_threads(previous)
    return p, {k: state[k] for k in init}


# (shape, dtype, layout) of each array of a mixed group: 0-d, empty, odd sizes, both dtypes,
# three layouts, and one above the parallel threshold
GROUP = [((), np.float32, "contiguous"), ((0,), np.float64, "contiguous"),
         ((7,), np.float64, "contiguous"), ((1031,), np.float32, "strided"),
         ((33, 31), np.float64, "transposed"), ((70001,), np.float32, "contiguous"),
         ((4, 5), np.float32, "contiguous")]


def make_group(init, seed=0, steps=4):
    """A random group laid out as GROUP: ``(params, state, grads)``, ``state`` a list of arrays
    per name of ``init`` (name -> initial value), ``grads`` one list per step."""
    rng = np.random.default_rng(seed)
    params = [layout_like(rng.standard_normal(shape).astype(dt), layout)
              for shape, dt, layout in GROUP]
    state = {k: [layout_like(np.full(shape, v, dt), layout) for shape, dt, layout in GROUP]
             for k, v in init.items()}
    grads = [[rng.standard_normal(shape).astype(dt) for shape, dt, _ in GROUP]
             for _ in range(steps)]
    return params, state, grads


def run_group(step, backend, params, state, grads, multi):
    """Step a group on ``backend``: ``multi``, one ``step(params, grads, state, t)`` per step
    with lists; else ``step(param, grad, state, t)`` per array, each with its own ``state``
    (arrays and any scalars the step keeps). Returns the params and the state arrays."""
    shared = dict(state)
    per_array = [{k: v[j] for k, v in state.items()} for j in range(len(params))]
    with fo.use_backend(backend):
        for t, gs in enumerate(grads, start=1):
            if multi:
                step(params, gs, shared, t)
                continue
            for p, g, s in zip(params, gs, per_array):
                step(p, g, s, t)
    return params + sum(state.values(), [])
