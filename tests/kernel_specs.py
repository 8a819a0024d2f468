"""Every element-wise fo.ops kernel of the registry (fastopt/_registry.py) for the input-contract
and fuzz tests: the names of its arrays (as the error messages spell them), which may be None,
and how to call the single and the foreach form with arrays given in the backends' order
(param, grad, state...)."""
from dataclasses import dataclass

import numpy as np

import fastopt as fo
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
