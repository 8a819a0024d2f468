"""Every element-wise fo.ops kernel described once for the input-contract and fuzz tests: the
names of its arrays (as the error messages spell them), which may be None, and how to call the
single and the foreach form with arrays given in the backends' order (param, grad, state...)."""
from dataclasses import dataclass
from typing import Callable

import numpy as np

import fastopt as fo

ops = fo.ops


@dataclass(frozen=True)
class Spec:
    name: str
    arrays: tuple        # single-form names, in order: the updated one, the read one, state
    lists: tuple         # foreach-form names
    nrequired: int       # the first nrequired may not be None
    single: Callable     # single(arrays, **hyper)
    multi: Callable      # multi(lists, **hyper)
    hyper: dict          # valid hyper-parameters (the regression tests' defaults)

    def names(self, index=None):
        """The names errors use: single form (index None) or item ``index`` of the lists."""
        if index is None:
            return self.arrays
        return tuple(f"{n}[{index}]" for n in self.lists)


SPECS = {s.name: s for s in [
    Spec("ewa", ("avg", "x"), ("avgs", "xs"), 2,
         lambda a, beta: ops.ewa_(a[0], a[1], beta),
         lambda a, beta: ops.foreach_ewa_(a[0], a[1], beta),
         dict(beta=0.9)),
    Spec("sgd", ("param", "grad", "momentum_buffer"), ("params", "grads", "momentum_buffers"), 2,
         lambda a, **h: ops.sgd_step_(a[0], a[1], a[2], **h),
         lambda a, **h: ops.foreach_sgd_step_(a[0], a[1], a[2], **h),
         dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    Spec("momentum", ("param", "grad", "velocity"), ("params", "grads", "velocities"), 3,
         lambda a, **h: ops.momentum_step_(a[0], a[1], a[2], **h),
         lambda a, **h: ops.foreach_momentum_step_(a[0], a[1], a[2], **h),
         dict(lr=0.1, beta=0.9)),
    Spec("rmsprop", ("param", "grad", "square_avg", "grad_avg", "momentum_buffer"),
         ("params", "grads", "square_avgs", "grad_avgs", "momentum_buffers"), 3,
         lambda a, **h: ops.rmsprop_step_(a[0], a[1], a[2], grad_avg=a[3],
                                          momentum_buffer=a[4], **h),
         lambda a, **h: ops.foreach_rmsprop_step_(a[0], a[1], a[2], grad_avgs=a[3],
                                                  momentum_buffers=a[4], **h),
         dict(lr=0.01, momentum=0.5, weight_decay=0.1)),
    Spec("adagrad", ("param", "grad", "state_sum"), ("params", "grads", "state_sums"), 3,
         lambda a, **h: ops.adagrad_step_(a[0], a[1], a[2], **h),
         lambda a, **h: ops.foreach_adagrad_step_(a[0], a[1], a[2], **h),
         dict(step=3, lr=0.1, lr_decay=0.01, weight_decay=0.1)),
    Spec("adam", ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
         ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"), 4,
         lambda a, **h: ops.adam_step_(a[0], a[1], a[2], a[3], max_exp_avg_sq=a[4], **h),
         lambda a, **h: ops.foreach_adam_step_(a[0], a[1], a[2], a[3], max_exp_avg_sqs=a[4],
                                               **h),
         dict(step=3, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    Spec("adadelta", ("param", "grad", "square_avg", "acc_delta"),
         ("params", "grads", "square_avgs", "acc_deltas"), 4,
         lambda a, **h: ops.adadelta_step_(a[0], a[1], a[2], a[3], **h),
         lambda a, **h: ops.foreach_adadelta_step_(a[0], a[1], a[2], a[3], **h),
         dict(lr=0.5, rho=0.8, weight_decay=0.1)),
    Spec("adamax", ("param", "grad", "exp_avg", "exp_inf"),
         ("params", "grads", "exp_avgs", "exp_infs"), 4,
         lambda a, **h: ops.adamax_step_(a[0], a[1], a[2], a[3], **h),
         lambda a, **h: ops.foreach_adamax_step_(a[0], a[1], a[2], a[3], **h),
         dict(step=2, lr=0.01, weight_decay=0.1)),
    Spec("nadam", ("param", "grad", "exp_avg", "exp_avg_sq"),
         ("params", "grads", "exp_avgs", "exp_avg_sqs"), 4,
         lambda a, **h: ops.nadam_step_(a[0], a[1], a[2], a[3], **h),
         lambda a, **h: ops.foreach_nadam_step_(a[0], a[1], a[2], a[3], **h),
         dict(step=2, mu_product=0.9, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    Spec("radam", ("param", "grad", "exp_avg", "exp_avg_sq"),
         ("params", "grads", "exp_avgs", "exp_avg_sqs"), 4,
         lambda a, **h: ops.radam_step_(a[0], a[1], a[2], a[3], **h),
         lambda a, **h: ops.foreach_radam_step_(a[0], a[1], a[2], a[3], **h),
         dict(step=9, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
]}


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
