"""Drop-in CPU optimizers for torch models, stepped by fastopt's kernels.

``fastopt.torch.Adam`` is ``torch.optim.Adam`` (same constructor, param groups, state,
state dicts, hooks, ``zero_grad``, ``add_param_group``, learning-rate schedulers) whose
``step`` runs fastopt's kernels on zero-copy NumPy views of the CPU tensors: one multi-tensor
call per param group (per distinct step count within it)::

    from fastopt.torch import AdamW        # instead of: from torch.optim import AdamW
    opt = AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)

Each class subclasses its ``torch.optim`` namesake, so the constructor arguments, defaults and
checks are torch's own, the state holds torch's keys and tensor types (``step`` is a float32
scalar tensor), and state dicts load into ``torch.optim`` and back unchanged. Parameters are
CPU tensors with dense grads of their own dtype (a grad of another, ``Tensor.grad_dtype``,
raises TypeError before any group has stepped, where torch.optim's SGD, RMSprop, Adagrad and
Adadelta step in mixed dtypes and its Adam family refuses); grads that are None are skipped,
as torch does. A grad that is a negative view (``torch._neg_view(g)``, ``z.conj().imag``), a
conjugate view (``z.conj()``) or an efficient zero tensor (autograd's
``torch._efficientzerotensor``), which NumPy cannot view, is read from a copy of its value
made at each step; a parameter that is a negative or conjugate view is stepped as a copy that
is then written back through it, and a state tensor that is one is replaced by its value
(torch.optim's ``view_as_real`` refuses conjugate views of complex parameters, grads and state
in most of its optimizers).

A group's NumPy views and state are kept between steps; each step checks them in a few C-level
passes over the group (the parameters, ``p.grad`` objects and data pointers, the state dicts
and tensors and their data pointers, the options that need more state), so a change made
between steps (a ``.data`` reassigned, new grads, state assigned or loaded) is picked up by
the next one (a ``.data`` of the same storage with other strides or shape, ``p.data =
p.data.t()``, included; of a state tensor's strides or shape changed in place,
``opt.state[p]['exp_avg'].t_()``, only a new storage is: comparing every state tensor's
geometry at every step would cost more than the parameters' and grads'). A group's ``step``
counts are 0-d views of one tensor, advanced with one operation. A ``step`` loaded or assigned
is made that view in place once the next step has succeeded (``torch.utils.swap_tensors``: the
same tensor object; attributes set on it are swapped away with its old contents), so that a
loaded state dict stays the live state as torch.optim's ``load_state_dict`` keeps it (the
tensors it does not cast): after ``ck = torch.load(path); opt.load_state_dict(ck["opt"])`` (or
``opt.load_state_dict(opt.state_dict())``) the steps advance ``ck``'s counts with its moments,
and a later ``torch.save(ck, path)`` saves the current state. A ``step`` that cannot be made a
view of the group's tensor is copied into it instead, and the loaded one stays as it was: one of
another dtype or shape than the counts' (torch's scalar dtype, float32; a float64 or int64
count, which torch keeps and advances in its dtype), a view of other memory (another optimizer's
live counts, its ``state_dict()`` held and loaded, not saved, or a count stepped through a
``copy.copy`` handle; a count of this optimizer's own, left behind when the group's count
tensor is made anew, after a parameter was added to or removed from the group, or another's
state deleted, reset, loaded or assigned, is made a view of the new one in place as a loaded
one is) or a tensor that other tensors or a weak reference hold (which swap_tensors
refuses). Keeping those as the state would cost a read and a write of each at every step (as
a count in shared memory costs, below), where the group's counts take one operation. One
written in place (``opt.state[p]['step'].fill_(5)``) is read by the next step, as torch reads
it. One in shared memory (the A3C/Hogwild ``SharedAdam``, or state moved there to share the
optimizer with spawned workers) stays the state's, read at each step and advanced in place,
as torch's.
Every group's tensors, hyper-parameters and step counts loaded, assigned or written in place
(a count below 0 or NaN, which the kernels' scalars refuse where torch's step goes on into NaNs
or a complex bias correction; RMSprop and Adadelta, which do not read it, step any count as
torch does; NAdam's ``mu_product`` outside [0, 1]) are checked before any group is stepped, so
a step that raises on them changes nothing: that includes a state tensor whose dtype or shape is
not its parameter's (``model.double()`` after some steps, or before the first for Adagrad,
whose state torch makes in its constructor; torch.optim's SGD, RMSprop, Adagrad and Adadelta
step in mixed dtypes, its Adam family refuses: ``opt.load_state_dict(opt.state_dict())`` casts
the state), an expanded parameter (stride 0), which torch.optim refuses too, a parameter or
state tensor whose elements overlap otherwise (``as_strided`` windows: torch.optim steps it,
the kernels refuse it), and a state made without a key the step reads (``amsgrad`` switched
on after the first step, or a state dict of another optimizer class loaded), which raises
``KeyError`` naming the key as torch.optim's step does (torch's after stepping the groups
before it, fastopt's before stepping any; SGD's missing momentum buffer is made, as torch
makes it). A parameter listed twice in a group (torch.optim warns, then steps it once per
occurrence) or in two groups (put there by editing ``param_groups``: torch refuses it in
``add_param_group``, and steps it once per group),
parameters or state tensors of a group that share memory (overlapping views of one buffer,
or separate storages over one memory such as ``torch.from_numpy`` of overlapping slices;
views that share no element, such as a matrix's column blocks ``W[:, :k]`` and ``W[:, k:]``
or ``buf[0::2]`` and ``buf[1::2]``, are stepped as torch.optim steps them), or a grad that
shares memory with a parameter or state tensor of its group (other than a parameter that is
its own grad, ``p.grad = p.detach()``, which is stepped as torch steps it: a decoupled weight
decay decays its grad with it), raise ``ValueError`` at the step, before any group has stepped
(torch.optim steps them one after the other). A param group popped from ``param_groups``, or
a parameter taken out of its group, is forgotten at the next ``step()``, ``zero_grad()`` or
``state_dict()`` (in a group with 16-bit parameters, at the next step, but for a group popped
from the end; its state stays in ``opt.state``, as in torch.optim, until deleted there).

float32 and float64 parameters are stepped in place. complex64 and complex128 parameters are
stepped in place as torch.optim steps them: the kernels run on ``torch.view_as_real`` of the
parameter, its grad and its state (float32 and float64 arrays of shape ``(..., 2)``, views of
the same memory), so the real and imaginary parts are two real parameters; the state tensors
are complex, of the parameter's dtype, as torch.optim's (Adagrad's ``sum`` starts at
``initial_accumulator_value`` in both parts, torch's ``complex(v, v)``), and a group may mix
real and complex parameters. complex32 is refused, as are other dtypes. One difference, on
non-finite values only: where torch.optim computes in complex arithmetic before or after its
``view_as_real`` (SGD throughout, Adadelta's ``param.add_(delta)``, a weight decay, coupled or
decoupled), its product by a real scalar ``x`` is by ``complex(x, 0)``, so an infinite part
makes the other part NaN (``0 * inf``); the kernels keep the parts apart, as for finite
values, where the results agree. bfloat16 and float16 parameters step a
float32 master copy kept in their state (``master_param``, created from the parameter) with
float32 state, and receive the master rounded to nearest even (``fastopt.reference.lowp``
defines the rounding; the bits are those of ``master.to(torch.bfloat16)``, but a NaN's,
written as a quiet NaN without payload: README), in one sweep:
every optimizer's 16-bit kernel (``fastopt._registry.HALF_KERNELS``) reads the 16-bit param
and grad as ``uint16``, runs the optimizer's float32 formula on the master and the state and
writes the rounded param back, without full-size temporaries. torch.optim keeps 16-bit state
for 16-bit parameters: its state dicts load here widened, and ours load there narrowed.

A 16-bit parameter written between steps (a model's ``load_state_dict``, ``p.clamp_()`` or
``p.copy_()`` under ``torch.no_grad()``, a ``.data`` reassigned, ``set_``) has its master copy
re-seeded from it before the next step, which would otherwise undo the write: each step records
the parameters' version counters once all its groups have stepped, and a counter that moved, or
a new storage, shape or strides, tells of a possible write (the counters are read only in
groups with 16-bit parameters). The next step then checks that parameter's master, element by
element: where the parameter is its rounding it is kept (a write that left the parameter as it
was, the elements a clamp did not change, or another group's step moving the counter that views
of one buffer share), elsewhere it is re-seeded from the parameter. An in-place write through
``p.data`` (``p.data.copy_(x)``, ``p.data.clamp_()``), or through a NumPy view of it
(``p.detach().numpy()``), is not seen: torch does not count it in the version counter, so the
next step starts from the master as it was (write through ``p`` under ``torch.no_grad()``, or
assign ``p.data``, instead), unless that step checks every master of the group anyway (after a
``load_state_dict``, or once it or a group before it in ``param_groups`` was popped, even if
put back before a ``zero_grad()`` or ``state_dict()``). Nor is a write by a ``torch.distributed``
collective on the parameter, which torch does not count either (``dist.broadcast(p, 0)``
re-synchronizing replicas: the next step would undo it on the ranks that received it): follow
it with ``torch.autograd.graph.increment_version(p)``.
``load_state_dict`` leaves the masters as loaded (the model may be loaded after its optimizer)
and the next step checks every one of them the same way: a checkpoint of this optimizer, with
its model loaded before or after it, keeps its masters, so a resumed run is bit-identical; a
master the parameter is not the rounding of (torch.optim keeps ``master_param`` in its state
without stepping it, or the parameter was written after the load) is re-seeded from the
parameter. A ``master_param`` set to None is made anew from the
parameter; one that is not a float32 dense CPU tensor of its shape raises at the step.

A gradient clip folded into the step: ``max_grad_norm=1.0`` (a constructor keyword, or per
param group) gives each group the numbers of ``torch.nn.utils.clip_grad_norm_(group_params,
1.0)`` before the step: one pass computes the global L2 norm of the group's grads (summing
squares in float64: the norm is the exact one correctly rounded, where torch's float32 sum of
a large float32 grad runs low by its rounding, ~1e-4 relative at 4e6 elements, and it rounds
a float32 grad's norm to float32 before adding a float64 one's; where the float32 norm
overflows, a float32 grad's or a float32 group's exact sum of squares beyond float32's range,
the norm is inf as torch's, and the factor 0: within that ~1e-4 of the bound torch's low sum
can stay finite and clip), the factor is
``min(max_norm / (norm + 1e-6), 1)`` computed as torch computes it on its norm tensor, in the
grads' dtype (float64 if any grad of the group is float64, else float32: the norm and
``norm + 1e-6`` rounded to it, then ``reciprocal() * max_norm``, as ``Tensor.__rtruediv__``),
so that where the norms agree the factor is torch's bit for bit, and the grads are multiplied
by it rounded to their dtype, as torch's in-place multiply does. Complex grads count as their
real views (clip_grad_norm_'s norm of a complex grad is that of its values' moduli, the same
sum of squares; its float32 norm for complex64, float64 for complex128), and are scaled
through them. Adam and AdamW apply it
inside their update kernel (a grad scale: ``p.grad`` is left as it was); the other optimizers
scale the float32/float64 grads in place first, as clip_grad_norm_ does. 16-bit grads: the
norm is summed in float64 as for the others (a group's total beyond float32's range is
inf), where torch's norms are 16-bit (each grad's norm is rounded to its 16-bit dtype, and
their total norm is computed in it), so torch's may overflow where ours does not (a float16
norm beyond 65504 is inf, which makes torch's
factor 0, where ours scales the grads to norm ``max_norm``); the factor is computed in
float32 (torch's in the 16-bit dtype), and every 16-bit kernel scales the grads in float32 as
it widens them (``p.grad`` is left as it was), without the rounding to 16 bits of
clip_grad_norm_'s in-place multiply. A parameter that is its own grad is scaled with it, as
clip_grad_norm_ scales it (Adam's and AdamW's groups with such a grad then scale their float
grads in place); a 16-bit one, or any in an Adam or AdamW group with 16-bit parameters, raises
``ValueError`` before any group steps. Memory that several grads of a group share
(``a.grad = b.grad``, overlapping views) is scaled once per grad, as clip_grad_norm_ scales
it: in place (Adam's and AdamW's groups with such grads too); a 16-bit grad, any in an Adam
or AdamW group with 16-bit parameters, a negative or conjugate view, or a grad another group
shares raises ``ValueError`` before any group steps. ``opt.grad_norms`` has an
entry per param group: its norm before clipping as a Python float (0.0 for a clipping group
without grads, as clip_grad_norm_ returns for no grads), None where the group does not clip
or has not stepped yet. The norm is the group's, as its optimizer holds it: under
``torch.distributed.optim.ZeroRedundancyOptimizer``, whose ranks each step an optimizer over
their shard of the parameters, each rank's is its shard's (clip over the whole model with
``clip_grad_norm_`` before the step there; under DDP every rank holds every grad, summed).

Hyper-parameters may be tensors where torch takes them (``lr=torch.tensor(0.01)``, betas, a
tensor changed in place between steps is read at the next step): the scalars torch's step
computes from them in the tensor's dtype (a bias-corrected lr, ``1 - lr * weight_decay``,
``1 - dampening``, the ``1 - beta1`` its ``lerp_`` weighs by, NAdam's momentum and
coefficients: float32 ones for float32 tensors, even for float64 parameters; NumPy scalars
too, a ``np.float32`` one in float32) are computed here by the same torch arithmetic, but for
one: a decay ``x`` that the kernels take once for both terms of ``x * v + (1 - x) * g * g``
(RMSprop's alpha, Adadelta's rho, the beta2 of Adam, NAdam and RAdam), where torch's
``1 - x`` of a float32 ``x`` below 0.5 is rounded to float32 (from 0.5 up it is exact): the
kernels' is not, so float64 parameters step off torch's by that rounding (at most a relative
2^-24, 6e-8, of that term). A bool, Python's or NumPy's (a "no decay" group's
``weight_decay=False``), is its number, 0 or 1, as torch's arithmetic takes it; those its
step cannot compute with raise here too, naming them (Python's True as an ``alpha``: a coupled
``weight_decay=True``, SGD's Nesterov ``momentum=True``; NumPy's bools as an lr it negates). A
value the kernels
cannot take as a number (a Decimal, a complex, a string, a bool tensor, which torch's step
refuses for most hyper-parameters: its arithmetic does not negate or subtract one) or an
option whose truth value is ambiguous (an array) raises naming it in the constructor and
``add_param_group``, as the values the kernels refuse do (a NaN lr); set on a group later,
at the step, before any group has stepped.

torch's implementation switches ``foreach`` (any value: fastopt always makes one multi-tensor
call per group) and ``fused=None/False`` are accepted; ``fused=True``, ``capturable=True`` and
``differentiable=True`` ask for things these kernels do not do and raise ``ValueError``.

This module imports torch; ``import fastopt`` does not import it.
"""
import copy
import inspect
import math
import numbers
import operator
import textwrap
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from itertools import chain, combinations, compress, count, repeat
from typing import TYPE_CHECKING, Any, overload

import numpy as np

try:
    import torch
except ImportError as exc:      # (which extra to install, not only that torch is missing)
    raise ModuleNotFoundError("fastopt.torch needs torch: pip install 'fastopt[torch]'",
                              name="torch") from exc
import torch.optim.optimizer as _torch_optimizer

if not hasattr(torch.utils, "swap_tensors"):    # (and ParamsT, StateDict: torch 2.3's API)
    raise ImportError(f"fastopt.torch needs torch >= 2.3, found {torch.__version__}: "
                      "pip install 'fastopt[torch]'")

from . import _backend, _registry, ops
from ._hyper import NONNEG, STEP, UNIT, _shown, as_real, check_pair, check_reals
from ._validate import (_shares_elements, extent, renamed, same_memory, share_elements,
                        shared_pair)
from .optim import _deepcopy_locked, _step_lock
from .reference import lowp

__all__ = ["SGD", "RMSprop", "Adagrad", "Adam", "AdamW", "Adadelta", "Adamax", "NAdam",
           "RAdam"]

_VIEWABLE = (torch.float32, torch.float64)    # dtypes NumPy views directly
# complex parameters are stepped as torch.optim steps them: on torch.view_as_real of the
# parameter, its grad and its (complex) state, as float32/float64 arrays of shape (..., 2)
_COMPLEX = (torch.complex64, torch.complex128)
# 16-bit parameters (-> whether bfloat16) step a float32 master copy kept in their state
_HALF = {torch.bfloat16: True, torch.float16: False}
_SUPPORTED = _VIEWABLE + _COMPLEX + tuple(_HALF)
MASTER = "master_param"     # the state key of a 16-bit parameter's float32 master copy

# Option -> why a true value cannot be honoured (fastopt's kernels run on CPU NumPy views).
_REFUSED = {
    "fused": "it selects torch's own fused kernel and its GradScaler protocol "
             "(grad_scale/found_inf); fastopt's step is fused already, leave fused unset",
    "capturable": "CUDA/XPU graph capture needs device tensors; fastopt.torch steps CPU "
                  "tensors",
    "differentiable": "fastopt's kernels do not record autograd history through the step",
}
# torch options that choose an implementation, not a formula: any value is fine
_IMPLEMENTATION = ("foreach",)
# the options the kernels honour, read by their truth value as torch reads them
_FLAGS = frozenset(("maximize", "nesterov", "centered", "amsgrad", "decoupled_weight_decay"))
CLIP = "max_grad_norm"      # fastopt's own group option: the fused gradient clip

_GLOBAL_PRE_HOOKS = getattr(_torch_optimizer, "_global_optimizer_pre_hooks", None)
_GLOBAL_POST_HOOKS = getattr(_torch_optimizer, "_global_optimizer_post_hooks", None)
_profiler_enabled = getattr(torch.autograd, "_profiler_enabled", lambda: True)
_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # (torch >= 2.3; ~50 ns)
try:        # the frame hook torch.compile sets, which offers it every Python frame called
    from torch._C._dynamo.eval_frame import get_eval_frame_callback as _compile_hook
except ImportError:     # (a torch without dynamo)
    def _compile_hook():
        return None


def _torch_base(cls):
    """The torch.optim class that ``cls`` (a subclass of this module's) steps."""
    return next(b for b in cls.__mro__ if b.__module__.startswith("torch.optim."))


def _increment_versions(tensors):
    """Tell autograd the tensors changed in place (NumPy writes bypass its version counters),
    so a step between forward and backward raises in backward as with torch.optim."""
    torch.autograd.graph.increment_version(tensors)


try:  # torch < 2.3 takes one tensor at a time
    torch.autograd.graph.increment_version([])
    # what increment_version calls for a list (its Python wrapper is a third of the cost)
    _increment_versions = getattr(torch._C, "_increment_version", _increment_versions)
except TypeError:
    def _increment_versions(tensors):  # noqa: F811
        for t in tensors:
            torch.autograd.graph.increment_version(t)


def _scalar_dtype():
    """torch's dtype for ``step`` and ``mu_product``: float32 unless the default is float64."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _number(value, name):
    """The hyper-parameter ``name`` as the Python number the kernels take (torch accepts
    1-element tensors for some; a bool, Python's or NumPy's, is its 0 or 1, as torch's
    arithmetic takes it): TypeError or ValueError, naming it, for a value the kernels
    would refuse (a Decimal, a bool tensor, ...), so that the checks every group gets before
    any group steps refuse it, not the kernels of its group once the groups before stepped."""
    if type(value) is float or type(value) is int:
        return value
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool:
            # (torch's step refuses most: its arithmetic negates or subtracts them)
            raise TypeError(f"Invalid {name}: {value!r} (must be a real number, got a bool "
                            "tensor)")
        if value.numel() != 1:
            # (item()'s RuntimeError named nothing; torch's step raises a TypeError for an
            # lr, a RuntimeError for some others, and broadcasts an eps)
            raise TypeError(f"Invalid {name}: a tensor of shape {tuple(value.shape)} (must "
                            "be a real number or a one-element tensor)")
        value = value.item()
        if type(value) is float:
            return value
    return as_real(name, value)


def _to_scalar(value):
    """torch's ``_to_scalar``: a one-element tensor hyper-parameter as a 0-d tensor (which
    torch's step folds in tensor arithmetic, in the tensor's dtype), anything else as it is."""
    return value.reshape(()) if isinstance(value, torch.Tensor) else value


def _index_of(groups, group):
    """The index of ``group`` in ``groups`` ("?" if it is not there)."""
    return next((gi for gi, g in enumerate(groups) if g is group), "?")


class _Name:
    """A parameter in messages, "3 of param group 1" (its index among the group's
    parameters, not among those with grads), formatted only when a message is made."""

    __slots__ = ("groups", "group", "j")

    def __init__(self, groups, group, j):
        self.groups, self.group, self.j = groups, group, j

    def __str__(self):
        return f"{self.j} of param group {_index_of(self.groups, self.group)}"


def _check_tensor(kind, index, t):
    """Raise unless ``t`` is a dense CPU tensor of a supported dtype, not a subclass whose
    ``__torch_dispatch__`` holds its values (a wrapper such as torchao's and float8 training's,
    whose memory NumPy cannot view)."""
    if torch._C._dispatch_keys(t).has(torch._C.DispatchKey.Python):
        raise TypeError(f"fastopt.torch: {kind} {index} is a {type(t).__name__}, a tensor "
                        "subclass that dispatches its own operations (__torch_dispatch__), "
                        "whose memory NumPy cannot view; fastopt steps plain dense tensors "
                        "(torch.optim steps these too)")
    if t.layout != torch.strided:
        raise RuntimeError(f"fastopt.torch: {kind} {index} is {t.layout}; sparse tensors are "
                           "not supported")
    if not t.is_cpu:
        raise RuntimeError(f"fastopt.torch: {kind} {index} is on {t.device}; fastopt steps "
                           "CPU tensors (move the optimizer's parameters to the CPU)")
    if t.dtype not in _SUPPORTED:
        raise TypeError(f"fastopt.torch: {kind} {index} has dtype {t.dtype}; expected "
                        "torch.float32, float64, complex64, complex128, bfloat16 or float16")


def _check_not_expanded(kind, index, t):
    """RuntimeError if elements of ``t`` share a memory location (a stride 0 on an axis longer
    than 1: an expanded tensor), which the step would write once per element; torch's
    in-place updates refuse it too. ValueError for elements that overlap otherwise (an
    ``as_strided`` view of overlapping windows), which the kernels refuse: here, before any
    group steps, not from its group's kernel once the groups before have stepped."""
    # (an empty tensor has no elements to share one: NumPy 2 gives an empty array strides of
    # 0, and torch.from_numpy of it keeps them, as clone() then does)
    if t.numel() > 1 and any(stride == 0 and n > 1 for n, stride in zip(t.shape, t.stride())):
        raise RuntimeError(f"fastopt.torch: {kind} {index} has more than one element at one "
                           f"memory location (shape {tuple(t.shape)}, strides {t.stride()}: an "
                           "expanded tensor) and is updated in place, which torch.optim "
                           "refuses too; clone() it first")
    if not t.is_contiguous() and _shares_elements(_memory(t)):
        raise ValueError(f"fastopt.torch: {kind} {index} has elements that share memory "
                         f"(shape {tuple(t.shape)}, strides {t.stride()}: overlapping "
                         "as_strided windows); fastopt's kernels update every element at its "
                         "own address and refuse it (torch.optim steps it element after "
                         "element): clone() it first")


def _check_state_tensor(key, index, t):
    """Raise unless the state entry ``t`` is a dense CPU tensor that does not require grad."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastopt.torch: state[{key!r}] of parameter {index} is of type "
                        f"{type(t).__name__}, expected a tensor")
    if t.requires_grad:
        raise RuntimeError(f"fastopt.torch: state[{key!r}] of parameter {index} "
                           "requires grad; fastopt steps plain tensors")
    if not t.is_cpu or t.layout != torch.strided:
        raise RuntimeError(f"fastopt.torch: state[{key!r}] of parameter {index} is "
                           "not a dense CPU tensor")


def _check_state_like(key, index, t, p, dtype):
    """Raise unless the state tensor ``t`` of parameter ``p`` has ``dtype`` and ``p``'s
    shape and is not expanded (the parameter's dtype or shape changed after its state was
    made: ``model.double()``, a ``.data`` of another shape, a state dict of other
    parameters)."""
    if t.dtype != dtype:
        raise TypeError(f"fastopt.torch: state[{key!r}] of parameter {index} has dtype "
                        f"{t.dtype}, expected {dtype} for a parameter of dtype {p.dtype} (the "
                        "parameter's dtype changed after its state was made? "
                        "opt.load_state_dict(opt.state_dict()) casts the state to it)")
    if t.shape != p.shape:
        raise ValueError(f"fastopt.torch: state[{key!r}] of parameter {index} has shape "
                         f"{tuple(t.shape)}, expected {tuple(p.shape)} like the parameter")
    _check_not_expanded(f"state[{key!r}] of parameter", index, t)


def _array(t):
    """A NumPy view of ``t``'s storage (no copy; it keeps that storage alive, whatever
    becomes of ``t``); bfloat16 and float16 as their ``uint16`` bit patterns, complex64 and
    complex128 as float32 and float64 of shape ``(..., 2)`` (``torch.view_as_real``, the
    view torch.optim steps them on). The one place tensors become the kernels' arrays."""
    t = t.detach()
    if t.dtype in _HALF:
        return t.view(torch.int16).numpy().view(np.uint16)
    return torch.view_as_real(t).numpy() if t.is_complex() else t.numpy()


def _tensor(view, like):
    """The tensor over the array ``view`` (of :func:`_array`'s kind) with ``like``'s dtype:
    what a copy's values are written back through ``like`` from."""
    t = torch.from_numpy(view if like.dtype not in _HALF else view.view(np.int16))
    # (torch.complex: view_as_complex refuses some strides, an empty tensor's included)
    return (t.view(like.dtype) if like.dtype in _HALF else
            torch.complex(t[..., 0], t[..., 1]) if like.is_complex() else t)


def _lazy(t):
    """Whether ``t`` is a negative or conjugate view (``torch._neg_view(t)``, ``z.conj()``),
    which NumPy (and ``torch.view_as_real``) cannot view."""
    return t.is_neg() or t.is_conj()


def _resolved(t):
    """``t``'s values, as a tensor NumPy views (a copy of a negative or conjugate view)."""
    return t.resolve_conj().resolve_neg() if _lazy(t) else t


def _memory(t):
    """A NumPy view of ``t``'s memory, for comparing memory: a negative or conjugate view's
    is its storage's values (torch._neg_view or conj() of it)."""
    if t.is_conj():
        t = t.conj()
    return _array(torch._neg_view(t) if t.is_neg() else t)


def _check_clip(max_grad_norm):
    """TypeError unless ``max_grad_norm`` is None or a real number (not a bool), ValueError
    unless it is > 0 within the float range (an int past it was taken here and raised
    OverflowError, naming nothing, from the step's factor: after the groups before had
    stepped)."""
    if max_grad_norm is None:
        return
    if not isinstance(max_grad_norm, numbers.Real) or isinstance(max_grad_norm, bool):
        raise TypeError(f"Invalid max_grad_norm: {_shown(max_grad_norm)} (must be None or a "
                        f"real number > 0, got {type(max_grad_norm).__name__})")
    if not max_grad_norm > 0:
        raise ValueError(f"Invalid max_grad_norm: {_shown(max_grad_norm)} (must be None or > 0)")
    if type(max_grad_norm) is not float:
        as_real(CLIP, max_grad_norm)


_NORM_BLOCK = 1 << 15     # elements widened to float64 at a time (256 KiB: stays in cache)
_F32_OVERFLOW = 2.0 ** 128 - 2.0 ** 103     # the least float64 that rounds to float32 inf


def _clip_factor(grads, formats, max_norm):
    """The global L2 norm of the grads (NumPy views; ``formats``: None, or whether 16-bit bits
    are bfloat16) and clip_grad_norm_'s factor for it, ``min(max_norm / (norm + 1e-6), 1)``
    (NaN stays NaN) as a Python float. The squares are summed in float64, a block at a time,
    the same on every backend; torch sums in the grads' dtype, so the norms differ by its
    rounding. The factor is torch's arithmetic on its norm tensor, in the grads' dtype T
    (float64 if any grad is float64, else float32): ``norm + 1e-6`` in T, then
    ``Tensor.__rtruediv__``'s ``reciprocal() * max_norm``, each rounded to T, so that for the
    same norm it is torch's factor bit for bit. 16-bit grads take T = float32 (torch would
    compute in their 16-bit dtype)."""
    total = 0.0
    wide64 = False
    for g, f in zip(grads, formats):
        wide64 = wide64 or g.dtype == np.float64
        flat = g.reshape(-1)
        own = 0.0
        for lo in range(0, flat.size, _NORM_BLOCK):
            block = flat[lo:lo + _NORM_BLOCK]
            wide = np.asarray(block if f is None else lowp.widen(block, f), np.float64)
            own += float(np.einsum("i,i->", wide, wide))    # einsum: no BLAS threads
        # torch's norm of a float32 grad is float32: a sum of squares beyond its range is inf
        total += math.inf if g.dtype == np.float32 and own >= _F32_OVERFLOW else own
    T = np.float64 if wide64 else np.float32
    # and so is its total norm of float32 norms
    norm = math.inf if T is np.float32 and total >= _F32_OVERFLOW else math.sqrt(total)
    factor = float(T(T(1) / T(T(norm) + T(1e-6))) * T(max_norm))
    return norm, (factor if not factor >= 1.0 else 1.0)


def _state_dtype(p):
    """The dtype of ``p``'s state tensors: float32 for 16-bit parameters."""
    return torch.float32 if p.dtype in _HALF else p.dtype


def _zeros(p):
    return torch.zeros_like(p, dtype=_state_dtype(p), memory_format=torch.preserve_format)


def _let_go_of_grads(plan, known_again):
    """Hold ``plan``'s grads no more. ``known_again``: the next step takes the same grads for
    kept ones (their ids and a mark in each, a number new to this step; see _run); else it
    takes any grads for new ones (after ``zero_grad()``)."""
    if known_again:
        plan.gmark = mark = next(_grad_marks)
        plan.gids = list(map(id, plan.grads))
        for g in plan.grads:
            if g is not None:
                try:
                    setattr(g, _GRAD_MARK, mark)
                except Exception:   # (a type whose __setattr__ refuses: seen as new)
                    pass
    else:
        plan.gids = [None] * len(plan.grads)
    plan.grads = plan.live_grads = plan.graw = plan.watched_all = plan.ptrs_all = None


class _Plan:
    """A group's step as it was last made: its parameters with grads (``params``), their
    states, the grads, and the NumPy views the kernels take. Each step checks that it still
    holds in a fixed number of C-level passes over the group (no Python bytecode per tensor,
    but for Tensor.__hash__ where opt.state changed or holds at most 16 parameters): the
    same parameters in the group and the same ``p.grad`` objects, the same data pointers
    (a ``.data`` reassigned, ``set_``, a dtype or device change: the views keep the old
    storage alive, so a new one never has the old address), the same strides and shapes (a
    ``.data`` that views the same memory otherwise: ``p.data.t()``), in groups of 16-bit or
    complex parameters the same dtypes of parameters and kept grads and no conjugate view
    among them (``p.data.view(torch.float16)`` of a bfloat16 parameter, ``p.data.conj()``;
    not looked for elsewhere, where each pass cost a 1000 x 64 float32 step 3-4%: a float
    parameter's ``.data`` viewed as an int or complex dtype of its size, or a real one's
    negative view, made only by the private ``torch._neg_view`` or as ``z.conj().imag`` of
    the complex tensor whose imaginary part it was), the same
    ``opt.state`` dict, state dict and state tensors per parameter, and the same state keys
    (an option that needs more state). Anything else rebuilds it; new grad tensors (a
    backward after ``zero_grad()``) or a grad's new storage, strides or shape (or, in those
    groups, dtype or conjugation) only renew the grads' views.
    Grads new to a step are not held after it (``keep`` false; ``gmark`` and ``gids`` know
    them again), so that ``zero_grad()`` frees them; the same ones at the next step are held
    from then on.

    Step counts live in one tensor per group (``step_buf``, a slot per parameter of the
    group): each state's ``step`` is a 0-d view of its slot, so one NumPy operation reads and
    advances a group's counts. A ``step`` from elsewhere (a loaded state dict, an assigned
    tensor) is copied into its slot, and when the step succeeds made the slot's view in place
    (:func:`_adopt_count`: ``adopt``), or where it cannot be, replaced by the slot's view; one in
    shared memory (``shared_steps``) stays the state's, read into its slot before
    each step and advanced in place after it, as torch advances it."""

    __slots__ = ("all_params", "param_list", "grads", "has_grad", "params", "keys",
                 "state_map", "stored", "states", "fresh", "pending", "tensors", "values",
                 "watched", "ptrs", "watched_all", "ptrs_all", "views", "cols", "pviews",
                 "formats", "gdtypes", "tdtypes", "live_grads", "graw", "step_buf", "slots",
                 "counts", "tally", "live_index", "strides", "shapes", "one", "versions",
                 "marks", "gstrides", "keep", "gmark", "gids", "wstarts", "wreach", "alias",
                 "pptrs", "split", "negs", "neg_grads", "scalars", "scalar_versions", "vshapes",
                 "inference", "shared_steps", "clip_shared", "adopt", "reseeded", "dtypes",
                 "cplx")


_FORMAT = "_format"     # a column of a group with 16-bit parameters: None, or whether bfloat16
_GRAD_MARK = "_fastopt_mark"    # set in the grads a step released (see _run)
_grad_marks = count(1)
_ALL = slice(None)      # every parameter of the group has a grad
_grad_of = operator.attrgetter("grad")
_dtype_of = operator.attrgetter("dtype")
_data_ptr = torch.Tensor.data_ptr
_stride = torch.Tensor.stride
_shape = operator.attrgetter("shape")
_version_of = operator.attrgetter("_version")
_numpy = torch.Tensor.numpy
_numel, _element_size = torch.Tensor.numel, torch.Tensor.element_size
_is_dense = torch.Tensor.is_contiguous
_storage = torch.Tensor.untyped_storage
_storage_ptr = torch.UntypedStorage.data_ptr
_storage_nbytes = torch.UntypedStorage.nbytes


def _own_counts(state):
    """``state`` (parameter -> its state dict) with each count that is a 0-d view of its
    group's count tensor (``plan.step_buf``) replaced by a tensor of its own, in a new dict:
    pickled, a view carries its whole storage, so a pickled optimizer over a group of n
    parameters held n^2 counts (and as many after unpickling), where torch.optim's
    independent counts take n. The next step copies such counts back into the group's
    tensor."""
    def shared(t):     # (one in shared memory stays it: a spawned process advances it)
        return (isinstance(t, torch.Tensor) and t.dim() == 0
                and _storage_nbytes(_storage(t)) > t.element_size() and not t.is_shared())
    return {key: {k: v.clone() if shared(v) else v for k, v in entry.items()}
            if isinstance(entry, dict) and any(map(shared, entry.values())) else entry
            for key, entry in state.items()}


def _next_count(count, counts):
    """``count + 1`` as torch's step tensor (float32 unless the default dtype is float64)
    holds it and its step uses it: past 2**24 a float32 count + 1 rounds (to the even
    neighbour, or not up at all). The exact sum had been used and the rounded one stored."""
    step = count + 1
    if step > 16777216.0 and counts.dtype == np.float32:
        step = float(np.float32(step))
    return step


def _adoptable(step, counts):
    """Whether the loaded or assigned count ``step`` can be made a slot of its group's count
    tensor ``counts`` in place (:func:`_adopt_count`): a plain 0-d tensor of the counts' dtype
    that is no view (a view, a count of this or another group, another holder would see it
    change)."""
    return (type(step) is torch.Tensor and step._base is None and step.dim() == 0
            and step.dtype == counts.dtype)


def _adopt_count(step, slot):
    """Make ``step`` (:func:`_adoptable`) the view ``slot`` of its group's count tensor in
    place, once the step that copied it there has succeeded: the same tensor object, so that
    a state dict it was loaded from sees the counts advance, as torch.optim's load keeps the
    loaded ``step`` as the state. ``torch.utils.swap_tensors`` swaps the two objects; returns
    whether it could (it refuses a tensor that other tensors or a weak reference hold: that
    one stays a copy)."""
    try:
        torch.utils.swap_tensors(step, slot)
    except RuntimeError:
        return False
    return True


def _versions(tensors):
    """The tensors' version counters. An inference tensor (made under torch.inference_mode())
    has none: it gets a new object, never equal to the last, so that the plan of its group is
    made anew, and its master checked, at every step."""
    try:
        return list(map(_version_of, tensors))
    except RuntimeError:
        return [object() if t.is_inference() else t._version for t in tensors]


def _storage_span(t):
    """The bytes ``[start, end)`` of ``t``'s storage: separate storages may share memory
    (``torch.from_numpy`` of overlapping slices of one NumPy buffer), so memory is compared
    by these, not by storage."""
    storage = _storage(t)
    start = _storage_ptr(storage)
    return start, start + _storage_nbytes(storage)


def _shared_memory(grads, others=()):
    """Clusters (two indices or more, into ``grads`` then ``others``) of grads that share
    elements' memory (a grad listed for several parameters, ``a.grad = b.grad``, or
    overlapping views of one buffer): clip_grad_norm_ scales shared memory once per grad
    listing it. The elements' memory bounds from torch (3 grads ~2 us, 1000 ~0.4 ms; by NumPy
    views of the grads, ~4 ms); where a strided grad's bounds meet another's, their elements
    (``buf[0::2]`` and ``buf[1::2]`` share none)."""
    every = list(chain(grads, others))
    los = list(map(_data_ptr, every))
    sizes = list(map(_element_size, every))
    ends = list(map(operator.add, los, map(operator.mul, sizes, map(_numel, every))))
    dense = list(map(_is_dense, every))
    for k in compress(count(), map(operator.not_, dense)):
        g = every[k]            # (torch's strides are not negative)
        ends[k] = los[k] + sizes[k] * (1 + sum((n - 1) * st for n, st in zip(g.shape,
                                                                             g.stride())))
    clusters, reach = [], 0
    for k in sorted(range(len(every)), key=los.__getitem__):
        # (an empty grad, or autograd's efficient zero tensor, which has no memory, shares none)
        if los[k] and ends[k] > los[k]:
            if los[k] < reach:      # its bounds meet those of a grad before it in address order
                clusters[-1].append(k)
            else:
                clusters.append([k])
            reach = max(reach, ends[k])
    shared = []
    for cluster in (c for c in clusters if len(c) > 1):
        if all(dense[k] for k in cluster):
            shared.append(cluster)
            continue
        views = {k: _memory(every[k]) for k in cluster}
        joined = {k: {k} for k in cluster}      # (the sets of grads found to share)
        for a, b in combinations(cluster, 2):
            if (joined[a] is not joined[b] and los[a] < ends[b] and los[b] < ends[a]
                    and share_elements(views[a], views[b])):
                union = joined[a] | joined[b]
                for k in union:
                    joined[k] = union
        shared += [sorted(c) for c in {id(c): c for c in joined.values()}.values()
                   if len(c) > 1]
    return shared


def _merge_spans(spans):
    """The byte ranges ``[start, end)`` merged where they overlap, in address order: their
    starts and their ends."""
    starts, ends = [], []
    for lo, hi in sorted(spans):
        if ends and lo < ends[-1]:
            ends[-1] = max(ends[-1], hi)
        else:
            starts.append(lo)
            ends.append(hi)
    return starts, ends


def _mark(p):
    """Where and how a tensor's elements lie and are read: its data pointer, strides, shape
    and dtype (None for a tensor without them, such as a sparse one)."""
    try:
        return p.data_ptr(), p.stride(), p.shape, p.dtype
    except (RuntimeError, TypeError):
        return None


def _reseeded_master(master, p):
    """``master`` (float32) re-seeded from the 16-bit parameter ``p`` where ``p`` is no longer
    its rounding (written between steps; NaN where the master is NaN counts as its
    rounding): a new tensor, or ``master`` itself where ``p`` is its rounding throughout.
    Element by element: a write to some elements (a clamp of one, nn.Embedding's max_norm
    renormalizing a few rows) had re-seeded them all, dropping the others' float32
    remainders (200 SGD steps, each clamping one of three bf16 elements: the others ended
    at 0.609 where float32 rounded gives 0.801). A master of another shape or kind is
    re-seeded whole."""
    if master.shape != p.shape or not master.is_floating_point():
        return _fresh_master(p)
    rounded, p = master.to(p.dtype), _resolved(p.detach())
    # by the bits (+0.0 written over a master of -0.0 is a write), NaN for NaN; a negative
    # view's values (a view of its bits is refused)
    written = ((rounded.view(torch.int16) != p.view(torch.int16))
               & ~(rounded.isnan() & p.isnan()))
    if not written.any():
        return master
    fresh = master.clone(memory_format=torch.preserve_format)
    fresh[written] = p[written].to(torch.float32)
    return fresh


def _odd_scalar(t):
    """Whether ``t`` is a one-element floating-point tensor that is not a 0-d float32 or
    float64 one (which scalar state must be to be read as a number)."""
    return (isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() == 1
            and (t.dtype not in _VIEWABLE or t.dim() != 0))


def _fresh_master(p):
    """A 16-bit parameter's float32 master copy, seeded from the parameter."""
    return p.detach().to(torch.float32, memory_format=torch.preserve_format)


if TYPE_CHECKING:    # what the mixin is placed before, for type checkers
    _Mixin = _torch_optimizer.Optimizer
else:
    _Mixin = object


class _FastOptimizer(_Mixin):
    """The fastopt step for a ``torch.optim`` optimizer class (a mixin placed before it).

    Subclasses give ``_KEYS`` (the hyper-parameters the kernels honour), ``_KERNEL`` (the
    registry kernel that steps them), ``_state_keys(group)`` (the tensor state the step needs,
    besides ``step``), ``_init_state(p, group)`` (torch's lazy state, if not ``step`` and
    zeros) and ``_update(group, params, grads, cols, step, fresh, grad_scale)``: the checks
    and scalars of a step of parameters sharing a step count, and the call of the kernel
    :meth:`_kernel_for` gives (``cols``: state key -> NumPy views; ``fresh``: per parameter,
    whether its state was created for this step; ``grad_scale``: the clip's factor). 16-bit
    parameters and grads come as ``uint16`` views, with the ``master_param`` views and each
    parameter's format (``_FORMAT``: None, or whether bfloat16) among ``cols``.
    """

    _STEPPED = True         # the state has torch's ``step`` count
    _STEP_SCALARS = True    # (if stepped) the kernels' scalars depend on it, and ops checks it
    _decoupled = False      # the groups' decoupled_weight_decay by default (AdamW: True)
    _watching = False       # (set on the optimizer) a plan has 16-bit parameters to watch
    _SCALAR_STATE: tuple[str, ...] = ()   # 0-d state tensors besides step (NAdam's mu_product)
    _NONE_IS_NEW: tuple[str, ...] = ()    # state keys whose None torch takes as not made yet
    # (index, error) of the betas whose tensors torch's step refuses unless they are 0-d
    _BETAS_0D: tuple[tuple[int, type], ...] = ()
    _CASTS_BETA1 = False    # torch's step casts a tensor beta1 to the parameters' dtype
    _NEGATES_LR = False     # torch's step computes -lr (SGD, RMSprop, Adadelta, NAdam)
    # the float hyper-parameters whose one-element tensors torch's step refuses unless they
    # are 0-d, by its error (see _real); it takes one-element tensors for the others
    _NOT_0D: dict[str, type] = {}

    def __init__(self, params: _torch_optimizer.ParamsT, *args: Any,
                 max_grad_norm: float | None = None, **kwargs: Any) -> None:
        """torch's arguments, plus ``max_grad_norm``: clip each group's grads to this global
        L2 norm in the step, as ``torch.nn.utils.clip_grad_norm_(group_params, max_norm)``
        before it would (None: no clipping; a group may set its own)."""
        _check_clip(max_grad_norm)
        # held by step (after the closure) and load_state_dict: the kernels release the GIL,
        # and two threads stepping one optimizer at once would both read a step count t
        # from the plan, both store t + 1 and interleave their updates of the same state
        self._lock = _step_lock()
        self._plans: dict[int, _Plan] = {}      # each param group's plan, by its index
        self._counts_token = object()           # marks its count tensors (_own_count)
        super().__init__(params, *args, **kwargs)
        if max_grad_norm is not None:
            # (only then: the groups and state dicts of an optimizer that does not clip hold
            # torch's keys alone, as torch.distributed.checkpoint requires of a state dict
            # loaded into it, whose torch.optim checkpoint has no such key)
            self.defaults[CLIP] = max_grad_norm
            for group in self.param_groups:
                group.setdefault(CLIP, max_grad_norm)
        self.grad_norms = [None] * len(self.param_groups)

    # ------------------------------------------------------------ options and checks
    def _refuse(self, group):
        """ValueError for the options the kernels cannot honour."""
        if not (group.get("fused") or group.get("capturable") or group.get("differentiable")):
            return      # the per-step check: one line, not a loop
        for key, why in _REFUSED.items():
            if group.get(key):
                raise ValueError(f"fastopt.torch.{type(self).__name__}: {key}={group[key]!r} "
                                 f"is not supported: {why}")

    def _check_hyper(self, group):
        """The checks a group's hyper-parameters get before any group steps:
        :meth:`_check_group`'s (which reads each real one as the kernels take it:
        :meth:`_real`), then :meth:`_check_float_range`, and the truth value of each option
        the step reads (an array's is ambiguous: that raised once the groups before had
        stepped)."""
        self._check_group(group)
        self._check_float_range(group)
        for key in self._KEYS:
            if key in _FLAGS and key in group:
                try:
                    bool(group[key])
                except (TypeError, ValueError) as exc:
                    raise renamed(exc, f"Invalid {key}: {group[key]!r} ({exc})") from None

    def _check_float_range(self, group):
        """ValueError naming a real hyper-parameter past the float range: an int such as
        10**400, which torch's checks and :meth:`_check_group`'s comparisons take, and the
        kernels' conversion refused with an OverflowError naming nothing."""
        for key in self._KEYS:
            value = group.get(key)
            if (type(value) is not float and type(value) is not bool
                    and isinstance(value, numbers.Real)):
                as_real(key, value)

    def _check_options(self, group):
        """:meth:`_refuse`, and ValueError for a true value of an option of a newer torch
        that these kernels do not know (one of the torch class's constructor arguments: a
        key a wrapper added to ``defaults``, as timm's Lookahead does, is not, and passes as
        in torch.optim)."""
        self._refuse(group)
        for key, value in group.items():
            if (key in self._TORCH_OPTIONS and key not in self._KEYS and key not in _REFUSED
                    and key not in _IMPLEMENTATION and key != CLIP
                    and value not in (None, False, 0)):
                raise ValueError(f"fastopt.torch.{type(self).__name__}: option "
                                 f"{key}={value!r} is not supported")

    def __getstate__(self) -> dict[str, Any]:
        """torch's (defaults, state, param groups) and ``grad_norms``, which torch's leaves out:
        a pickled, deep-copied or shallow-copied optimizer had none until its next step. Each
        state's step count is a tensor of its own (:func:`_own_counts`), taken between steps
        should another thread step."""
        with self._lock:
            state = self._shared_state()
            state["state"] = defaultdict(dict, _own_counts(state["state"]))
        return state

    def _shared_state(self):
        state = super().__getstate__()
        state["grad_norms"] = list(self.__dict__.get("grad_norms", ()))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # torch's load_state_dict calls this too, under the lock: keep it
        if "_lock" not in self.__dict__:
            self._lock = _step_lock()
        self._plans = {}
        if "_counts_token" not in self.__dict__:
            self._counts_token = object()
        if "grad_norms" not in self.__dict__:     # pickled before grad_norms was saved
            self.grad_norms = [None] * len(self.param_groups)

    def __deepcopy__(self, memo: dict[int, Any]) -> "_FastOptimizer":
        return _deepcopy_locked(self, memo)

    def __copy__(self) -> "_FastOptimizer":
        """torch's shallow copy (through pickling's protocol: the same defaults, state and
        param groups), holding this optimizer's lock: another handle on the same state,
        whose steps from another thread take turns with this one's."""
        new = type(self).__new__(type(self))
        new.__setstate__(self._shared_state())
        new._lock = self._lock
        return new

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``, refusing options the kernels cannot honour first;
        ``grad_norms`` gets the new group's entry (None until it steps).

        Parameters
        ----------
        param_group : dict
            The group: ``"params"`` (tensors, or (name, tensor) pairs) and the options it
            sets; the others are the constructor's.
        """
        if isinstance(param_group, dict):
            self._check_options({**self.defaults, **param_group})
            _check_clip(param_group.get(CLIP))
            # the step's checks too (torch's __init__ adds every group here): a value torch's
            # own checks let through and the kernels refuse (SGD's lr=nan or dampening=-1)
            # raises at construction, not at the first step()
            self._check_hyper({**self.defaults, **param_group})
        with self._lock:    # between steps, should another thread step (which sets grad_norms)
            super().add_param_group(param_group)
            norms = self.__dict__.get("grad_norms")     # (not set while __init__ adds groups)
            if norms is not None:
                norms.extend([None] * (len(self.param_groups) - len(norms)))

    def state_dict(self) -> _torch_optimizer.StateDict:
        """torch.optim's ``state_dict``, taken between steps should another thread step
        (under the lock :meth:`step` and :meth:`load_state_dict` hold). As torch's, each
        parameter's entry is its live state; its ``step`` is a 0-d view of the group's count
        tensor, which ``torch.save`` stores once, and a plain ``pickle.dumps`` once per view
        (n^2 counts for n parameters: save state dicts with ``torch.save``). The entry of a
        16-bit parameter with state but no ``master_param`` yet (loaded from torch.optim, or
        made 16-bit after the state) is a copy holding one made from the parameter, which a
        load brings into the state: a snapshot of the parameter, so save a state dict taken
        when saving, not one held across steps (see :meth:`_with_missing_masters`)."""
        with self._lock:
            self._drop_plans()
            return self._with_missing_masters(super().state_dict())

    def _with_missing_masters(self, state_dict):
        """``state_dict`` (torch's, packed) with a ``master_param`` made from the parameter
        in the entry of each 16-bit parameter that requires grad and has state but no master
        yet (an Adagrad built before ``model.to(torch.bfloat16)``, a state dict loaded without
        masters): ``torch.distributed.checkpoint`` loads a checkpoint into the keys of this
        optimizer's state dict only, so a master left to the next step was not loaded, and
        the resumed run drifted. The entry is a copy holding it, and the optimizer's state is
        left as it was: made in it, the master had changed what the next steps did (a write
        the version counter does not see, after steps the parameter sat out, was undone: two
        reviews). So that entry's master is the parameter at this call, where its moments are
        live: save a state dict taken when saving, not one held across steps (the master a
        later step makes is not in it; having the step fill the handed-out tensor kept it live
        in some cases only: a later write re-seeds the master into a new tensor)."""
        packed = state_dict.get("state")
        if not isinstance(packed, dict):
            return state_dict       # (remade by a post-hook)
        # torch's numbering of the parameters (a post-hook may have left groups out)
        params = [p for group in self.param_groups for p in group["params"]]
        for index, entry in list(packed.items()):
            p = params[index] if type(index) is int and 0 <= index < len(params) else None
            if (p is not None and isinstance(entry, dict) and entry and p.dtype in _HALF
                    and p.requires_grad and MASTER not in entry):
                packed[index] = {**entry, MASTER: _fresh_master(p)}
        return state_dict

    def load_state_dict(self, state_dict: _torch_optimizer.StateDict) -> None:
        """torch's ``load_state_dict``, keeping the state dtypes the step needs (float32 for
        16-bit parameters, NAdam's ``mu_product`` in torch's scalar dtype). The load
        state-dict hooks run as in torch: the pre-hooks on a shallow copy of ``state_dict``
        first (what they return is what is loaded, re-cast included), the post-hooks last
        (after the re-cast). The saved optimizer's ``foreach``/``fused`` choices (torch's
        implementations) are replaced by this one's; ``capturable`` or ``differentiable``
        state raises ``ValueError`` before anything changes.

        As torch's, it keeps the loaded tensors as the state where the step needs no cast,
        so that the steps go on updating the loaded dict (a checkpoint ``ck =
        torch.load(path)`` saved again later saves the current state). That includes the
        ``step`` counts: the next step makes each one a view of its group's count tensor in
        place (the module's notes say which cannot be, and are copied), so save such a dict
        with ``torch.save``, as a held :meth:`state_dict` (a plain pickle stores that tensor
        once per count). Where the step keeps another dtype than torch.optim's, a loaded
        tensor of that dtype is the state where torch's cast copies it: NAdam's float32
        ``mu_product`` of float64 parameters, and the float32 state of 16-bit parameters; a
        torch.optim state dict's 16-bit state, or a float64 ``mu_product``, is cast here: a
        copy, which the steps do not update.

        The 16-bit parameters' master copies are not touched here, as the parameters may
        not hold their values yet (a model loaded after its optimizer): the next step
        checks each one against its parameter (see :meth:`_watch_masters`).

        Parameters
        ----------
        state_dict : dict
            A state dict of this optimizer or of its torch.optim namesake
            (:meth:`state_dict`'s layout).
        """
        # torch's pre-hooks, as its load_state_dict runs them (which then runs none)
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            hook_result = pre_hook(self, state_dict)
            if hook_result is not None:
                state_dict = hook_result
        saved = state_dict["param_groups"]
        for group in saved:
            self._check_options({k: v for k, v in group.items() if k != "fused"})
        if len(saved) == len(self.param_groups):
            state_dict = dict(state_dict)
            # a torch.optim state dict has no clip setting: this optimizer's stays
            state_dict["param_groups"] = [
                dict(g, **{k: mine[k] for k in ("foreach", "fused") if k in mine},
                     **({CLIP: mine[CLIP]} if CLIP in mine and CLIP not in g else {}))
                for g, mine in zip(saved, self.param_groups)]
        for group in state_dict["param_groups"]:
            _check_clip(group.get(CLIP))
        with self._lock:
            self._load_checked(state_dict)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _load_checked(self, state_dict):
        """torch's load of ``state_dict`` (already through the pre-hooks and the checks)
        and the re-cast of the state the step needs: under the step's lock."""
        pre, post = (self._optimizer_load_state_dict_pre_hooks,
                     self._optimizer_load_state_dict_post_hooks)
        counts = {id(plan.step_buf) for plan in self._plans.values()
                  if plan.step_buf is not None}
        try:    # torch's load without its hooks: they run here, around the re-cast
            self._optimizer_load_state_dict_pre_hooks = type(pre)()
            self._optimizer_load_state_dict_post_hooks = type(post)()
            super().load_state_dict(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks = pre
            self._optimizer_load_state_dict_post_hooks = post
        # no plan: the next step checks every 16-bit parameter's master (_watch_masters)
        self._plans: dict[int, _Plan] = {}
        if counts:
            # a loaded count that is a view of this optimizer's counts (its own state_dict()
            # loaded back) is made a tensor of its own, in place, for the next step to take
            # it into the group's new count tensor as it takes a saved one (_count_steps)
            for state in self.state.values():
                step = state.get("step") if isinstance(state, dict) else None
                if (isinstance(step, torch.Tensor) and step._base is not None
                        and id(step._base) in counts):
                    try:
                        torch.utils.swap_tensors(step, step.clone())
                    except RuntimeError:    # (held elsewhere too: copied at the step)
                        pass
        # torch cast every state tensor but ``step`` to its parameter's dtype: undo that where
        # the step needs another (NAdam's mu_product; a 16-bit parameter's state the step
        # reads and its master, float32, also when torch.optim saved them 16-bit: a
        # torch.distributed.checkpoint load copies into these tensors), and give a 16-bit
        # parameter's other float32 state back its dtype (amsgrad's max_exp_avg_sq while
        # amsgrad is off), so that state_dict() loads back as it was saved; a 16-bit key of
        # another's (timm's Lookahead's lookahead_slow_buff) keeps torch's cast
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [(p, g) for g in self.param_groups for p in g["params"]]
        for sid, (p, group) in zip(saved_ids, params):
            state = self.state.get(p)
            if not state:
                continue
            wide = ()
            if p.dtype in _HALF:
                try:
                    wide = (*self._state_keys(group), MASTER)
                except (TypeError, ValueError, KeyError):   # (torch loads a momentum of None:
                    wide = (MASTER,)                        # the step refuses it, named)
            for key, value in state_dict["state"][sid].items():
                if key in self._SCALAR_STATE and isinstance(value, torch.Tensor):
                    state[key] = value.to(_scalar_dtype())
                elif (p.dtype in _HALF and key != "step" and isinstance(value, torch.Tensor)
                        and value.is_floating_point()
                        and (key in wide or value.dtype == torch.float32)):
                    state[key] = value.to(device=p.device, dtype=torch.float32)

    # ---------------------------------------------------------------------------- step
    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    def step(self, *args: Any, **kwargs: Any) -> float | None:
        """step(closure=None): one optimization step (``closure`` re-evaluates the model and
        returns the loss).

        torch's step hooks and profiler record run when any are registered or a profiler
        is on; otherwise they are skipped (``record_function`` alone costs ~9 us). The hooks
        get the arguments as given, as torch's (``opt.step()``: no closure in ``args``; a
        closure by keyword in ``kwargs``), so a pre-hook's new ``(args, kwargs)`` are
        taken as torch takes them. A subclass's own ``step`` (calling this one) is wrapped
        by torch's Optimizer, which runs the hooks and the record around it: this one then
        runs them no more, as torch.optim's own steps run none then.

        A KeyboardInterrupt (Ctrl-C), or another exception a signal handler raised (a
        timeout's), raised before a group's kernels were called leaves the parameters and state
        of that group and those after it as they were (a clipping group's grads may be scaled
        already, as by ``clip_grad_norm_``); one raised once they were is raised after the
        group's counts and state are stored with what the kernels wrote (a compiled kernel runs
        to its end: the interrupt is raised as it returns).

        Parameters
        ----------
        closure : callable or None, default None
            Re-evaluates the model and returns the loss; called with grad enabled before
            the step.

        Returns
        -------
        object or None
            What ``closure`` returned, as it returned it (the loss, usually a Tensor; torch's
            annotation says float); None without a closure.
        """
        if _compiling() or _compile_hook():
            # under torch.compile (tracing, or running a compiled function's frames): the
            # step runs as it is, a graph break (dynamo traced its Python per parameter, and
            # failed in Numba's dispatcher on the numba backend)
            return _EAGER_STEP(self, *args, **kwargs)
        if ((_GLOBAL_PRE_HOOKS is None or _GLOBAL_PRE_HOOKS or _GLOBAL_POST_HOOKS
                or self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or _profiler_enabled()) and type(self).step is _OWN_STEP):
            return self._hooked_step(*args, **kwargs)
        return self._step(*args, **kwargs)

    step.hooked = True      # torch's Optimizer.__init__ must not wrap it again

    def _step_signature(self, closure: Callable[[], float] | None = None) -> float | None:
        """What ``inspect.signature`` shows for step (torch's own, through its wrapper)."""

    step.__signature__ = inspect.signature(_step_signature)   # type: ignore[attr-defined]
    del _step_signature

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch.optim's: sets every parameter's grad to None (``set_to_none=False``:
        zeroes it). torch's profiler record of it runs when a profiler is on; otherwise it is
        skipped, as the step's (``record_function`` costs ~7 us a call).

        Parameters
        ----------
        set_to_none : bool, default True
            Set the grads to None instead of zeroing them.
        """
        with self._lock:
            self._drop_plans()
            if set_to_none:
                # grads the last steps kept (the same ones stepped again, written in place)
                # are held no more: freed now with p.grad, as with torch.optim, not at the
                # next step (`continue`, not the call under an `if` ending the loop: the
                # jump back of such a loop lies outside the `with` on CPython 3.13, where
                # Ctrl-C left the lock held: cpython#130279, see _multi._each_part)
                for plan in self._plans.values():
                    if plan.grads is None:
                        continue
                    _let_go_of_grads(plan, known_again=False)
        if not set_to_none or _profiler_enabled():
            return super().zero_grad(set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def _step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with self._lock:
            self._locked_step()
            if len(self._plans) > len(self.param_groups):
                self._drop_plans()
        return loss

    def _drop_plans(self):
        """Forget the plans of param groups popped from ``param_groups`` or replaced there
        (plans are kept by group index), and of groups that lost or gained parameters, and
        the last step's record of ``opt.state`` once entries left it: they hold the
        parameters, grads and states they describe, where torch.optim lets go of a parameter
        as soon as it has left its group and its state was deleted. Such a group is planned
        anew at its next step, as it would have been (:meth:`_plan_holds` compares the
        parameters). Run by the step (popped groups), ``zero_grad()`` and ``state_dict()``;
        it compares each group's list of parameters by identity and length only (a pass
        comparing the parameters cost a zero_grad() over 1000 of them 15 us), so a parameter
        replaced by another in its group is let go of at the next step. So is any of a group
        with 16-bit parameters, but for a group popped from the end: its plan tells the next
        which parameters were written since (:meth:`_watch_masters`), so that calling these
        between steps does not change what the next step does."""
        groups = self.param_groups
        stale = [gi for gi, plan in self._plans.items()
                 if gi >= len(groups) or plan.versions is None
                 and (groups[gi]["params"] is not plan.param_list
                      or len(plan.param_list) != len(plan.all_params))]
        for gi in stale:
            del self._plans[gi]
        seen = self.__dict__.get("_seen")
        if seen is not None and (stale or seen[0] is not self.state
                                 or len(seen[1]) != len(self.state)):
            self._seen = None

    def _locked_step(self):
        # every group is checked and viewed before any is stepped; each plan is checked
        # against opt.state per parameter only if opt.state changed since the last step
        # (a Tensor's hash, which looking it up calls, is Python code)
        state, seen = self.state, self.__dict__.get("_seen")
        same = (seen is not None and seen[0] is state and len(state) == len(seen[1])
                and all(map(operator.is_, state, seen[1]))
                and all(map(operator.is_, state.values(), seen[2])))
        self._replanned = False
        work = [self._prepare(gi, group, same) for gi, group in enumerate(self.param_groups)]
        if self._STEPPED:
            for plan in work:
                if plan is not None and plan.shared_steps:
                    # counts in shared memory, which other processes advance: read at each
                    # step, as torch reads them, and checked before any group steps
                    for j, t in plan.shared_steps:
                        plan.counts[j] = float(t)
                    self._check_counts(plan)
        if self._replanned and len(work) > 1:
            self._refuse_shared(work)
        # so are the hyper-parameters, so that a raising step changes nothing (each group's
        # _update checks its own before its kernels run, which is in time for one group;
        # _run checks a group that clips before it scales grads in place)
        if len(work) > 1:
            for group, plan in zip(self.param_groups, work):
                if plan is not None:
                    # (with the float range: a later group's int past it was an
                    # OverflowError after the earlier groups stepped)
                    self._check_hyper(group)
                    _check_clip(group.get(CLIP))    # (set on the group after its checks)
                    if group.get(CLIP) is not None:
                        plan.clip_shared = self._shared_clipped_grads(plan, group, work)
        elif work and work[0] is not None and self.param_groups[0].get(CLIP) is not None:
            work[0].clip_shared = self._shared_clipped_grads(work[0], self.param_groups[0], ())
        # long kernels on torch's OpenMP team: after a backward pass its workers hold the
        # other cores, spinning, and take the job at once (fastopt/_kernels/fo_pool.h)
        team = _backend.active.use_openmp_team
        was = team(True)
        try:
            # a clipping group without grads: clip_grad_norm_'s norm of no grads, 0
            self.grad_norms = [self._run(group, plan) if plan is not None
                               else None if group.get(CLIP) is None else 0.0
                               for group, plan in zip(self.param_groups, work)]
        finally:
            team(was)
        # the version counters the next step compares (groups with 16-bit parameters),
        # once every group has stepped: views of one storage share a counter, which a later
        # group's step moves
        if self._watching:
            for plan in self._plans.values():
                if plan.versions is not None:
                    plan.versions = _versions(plan.all_params)
        # every plan agrees with opt.state now (the runs stored their new state in both);
        # for a few parameters, looking them up costs less than this
        self._seen = (state, list(state), list(state.values())) if len(state) > 16 else None

    _hooked_step = _torch_optimizer.Optimizer.profile_hook_step(_step)

    def _prepare(self, gi, group, same=False):
        """Check the group and return its plan (None if no parameter has a grad). Stores no
        state: :meth:`_run` does once the kernels ran."""
        self._refuse(group)
        params = group["params"]
        grads = list(map(_grad_of, params))
        plans = self.__dict__.get("_plans")
        if plans is None:
            plans = self._plans = {}
        plan = plans.get(gi)
        if plan is None or not self._plan_holds(plan, group, params, grads, same):
            # under torch.inference_mode() the state and step counts made here would be
            # inference tensors, which have no version counter for the plan to watch
            # (torch.optim's step makes them and steps on): made as normal tensors, they
            # step on in or out of inference mode
            with torch.inference_mode(False):
                plan = plans[gi] = self._make_plan(group, params, grads, plan)
            self._replanned = True      # (_refuse_shared compares the groups' parameters)
        if plan.inference and not torch.is_inference_mode_enabled():
            # torch.optim's in-place update raises so
            k = plan.inference[0]
            raise RuntimeError(
                f"fastopt.torch: parameter {self._names(group, plan)[k]} is an inference tensor "
                "(made under torch.inference_mode()), which torch does not let be updated in "
                "place outside inference mode: step under torch.inference_mode(), or make the "
                "parameter outside it (or a clone() of it there)")
        return plan if plan.params else None

    def _refuse_shared(self, work):
        """ValueError naming a parameter with a grad in two param groups (put there by editing
        ``param_groups``: torch's add_param_group refuses it), whose plans would each step
        it from the count read before either ran, where torch.optim steps it once per group,
        counting each. The plans of both groups are forgotten, so that the next step checks
        again."""
        first: dict[int, int] = {}
        for gi, plan in enumerate(work):
            for p in plan.params if plan is not None else ():
                other = first.setdefault(id(p), gi)
                if other != gi:
                    where = [next(j for j, q in enumerate(self.param_groups[g]["params"])
                                  if q is p) for g in (gi, other)]
                    self._plans.pop(gi, None)
                    self._plans.pop(other, None)
                    raise ValueError(
                        f"fastopt.torch: parameter {where[0]} of param group {gi} is parameter "
                        f"{where[1]} of param group {other} too; torch.optim refuses a "
                        "parameter in more than one param group (add_param_group), and steps "
                        "one put there by editing param_groups once per group: list each "
                        "parameter in one group")

    def _plan_holds(self, plan, group, params, grads, same=False):
        """Whether ``plan`` still describes the group's parameters, their state and grads
        (renewing its grad views when only the grads changed). Each test is one C-level
        pass over the group; ``same``: opt.state is as the last step left it, so its dicts
        need not be looked up per parameter."""
        is_ = operator.is_
        # pending, or re-seeds of a group that steps: the last step raised (the next plan
        # checks those parameters' states and masters again)
        if (plan.pending or (plan.reseeded and plan.params) or self.state is not plan.state_map
                or len(params) != len(plan.all_params)
                or not all(map(is_, params, plan.all_params))
                or plan.keys != self._state_keys(group)
                or not (same or all(map(is_, map(self.state.get, plan.params),
                                            plan.stored)))
                # a .data of the same storage with another shape or strides (p.data.t());
                # one parameter (``one``): its own calls cost less than building the lists
                or (plan.one.stride() != plan.strides[0] or plan.one.shape != plan.shapes[0]
                    if plan.one is not None else
                    [*map(_stride, plan.params)] != plan.strides
                    or [*map(_shape, plan.params)] != plan.shapes)
                # 16-bit or complex parameters: a .data of the same memory as another dtype
                # of the same size (p.data.view(torch.float16) of a bfloat16 one), or as a
                # conjugate view, p.data.conj()
                or (plan.gdtypes is None
                    and ([*map(_dtype_of, plan.params)] != plan.dtypes
                         or plan.cplx and any(map(_lazy, plan.params))))
                # a 16-bit parameter written outside the step: its master is checked
                or (plan.versions is not None
                    and _versions(params) != plan.versions)
                # a count or scalar state written in place (``state['step'].fill_(-5)``):
                # checked anew
                or (plan.scalars[0]._version if len(plan.scalars) == 1
                    else sum(map(_version_of, plan.scalars))) != plan.scalar_versions):
            return False
        plan.param_list = params    # (the same parameters, perhaps in a new list: _drop_plans)
        values = list(chain.from_iterable(map(dict.values, plan.states)))
        if len(values) != len(plan.values) or not all(map(is_, values, plan.values)):
            return False
        if plan.grads is None:
            # released after the last step (see _run): the same grads again (kept and written
            # in place) are viewed anew and held from now on
            plan.keep = all(g is None or (id(g) == gid and getattr(g, _GRAD_MARK, None)
                                          == plan.gmark) for g, gid in zip(grads, plan.gids))
        elif plan.keep and all(map(is_, grads, plan.grads)):
            # the same grads, kept: their storage, and their strides and shape (``p.grad.t_()``)
            if (list(map(_data_ptr, plan.watched_all)) == plan.ptrs_all
                    and list(map(_stride, plan.live_grads)) == plan.gstrides
                    and list(map(_shape, plan.live_grads)) == plan.shapes
                    # 16-bit or complex parameters: a grad's .data of the same memory as
                    # another dtype, or as its conjugate view, viewed anew (q67)
                    and (plan.gdtypes is not None
                         or list(map(_dtype_of, plan.live_grads)) == plan.dtypes
                         and not (plan.cplx and any(map(_lazy, plan.live_grads))))):
                return True
            if list(map(_data_ptr, plan.watched)) != plan.ptrs:
                return False
            self._view_grads(plan, group, plan.live_grads)  # a grad's storage or geometry changed
            return True
        else:
            plan.keep = False
        if (list(map(operator.is_not, grads, repeat(None))) != plan.has_grad
                or list(map(_data_ptr, plan.watched)) != plan.ptrs):
            return False
        self._view_grads(plan, group, list(compress(grads, plan.has_grad)))
        plan.grads = grads
        return True

    def _view_grads(self, plan, group, grads):
        """Check the grads of the plan's parameters (of ``group``) and keep them and their
        NumPy views."""
        views, plan.neg_grads = None, ()
        try:    # torch's numpy() refuses what is not a plain dense CPU tensor: see below
            if plan.gdtypes is not None:        # float32/float64 parameters
                views = list(map(_numpy, grads))
                if list(map(_dtype_of, views)) != plan.gdtypes:
                    views = None
            elif list(map(_dtype_of, grads)) == plan.tdtypes:
                if plan.formats[0] is None:     # complex ones (and float): their real views
                    views = list(map(_array, grads))
                else:                           # 16-bit ones: their bits
                    views = list(map(np.ndarray.view, map(_numpy, map(
                        torch.Tensor.view, grads, repeat(torch.int16))), repeat(np.uint16)))
        except (TypeError, RuntimeError):
            views = None
        if views is None:
            where = self._names(group, plan)
            for i, (p, g) in enumerate(zip(plan.params, grads)):
                _check_tensor("grad of parameter", where[i], g)
                if g.dtype != p.dtype:
                    raise TypeError(f"fastopt.torch: grad of parameter {where[i]} has dtype "
                                    f"{g.dtype}, expected {p.dtype} like the parameter")
            # a negative view (torch._neg_view(g), z.conj().imag), a conjugate view
            # (z.conj()) or an efficient zero tensor (autograd's, without memory), which
            # numpy() refuses: the kernels read a copy of its value (clone() resolves the
            # view), made anew at every step (kept, it would miss writes to the grad); _run
            # writes a clip's in-place scale of a negative or conjugate view back to the grad
            copied = [_lazy(g) or g._is_zerotensor() for g in grads]
            if any(copied):
                plan.keep = False
                plan.neg_grads = [k for k, g in enumerate(grads) if _lazy(g)]
            views = [_array(g.clone() if copy else g) for g, copy in zip(grads, copied)]
        # the kernels check the shapes too, but only once the groups before have stepped (the
        # views' shapes are the grads' (complex ones': with their trailing 2), and NumPy's
        # shape costs half of torch's)
        if list(map(_shape, views)) != plan.vshapes:
            where = self._names(group, plan)
            for i, (p, g) in enumerate(zip(plan.params, grads)):
                if g.shape != p.shape:
                    raise ValueError(f"fastopt.torch: grad of parameter {where[i]} has shape "
                                     f"{tuple(g.shape)}, expected {tuple(p.shape)} like the "
                                     "parameter")
        # a grad in the storage of a tensor the step writes (its parameter's, if it is the
        # parameter itself): compared with them here, where the kernels would refuse it only
        # once the groups before had stepped. The first group's kernels refuse it before
        # anything is written, so its grads are compared only when they are clipped (a
        # parameter that is its own grad is scaled through it) or, where a decoupled weight
        # decay would decay such a grad (_run), one starts where a parameter does (a set
        # test of the data pointers): otherwise (None) by _run, if a clip is switched on
        # later (the full comparison cost a 1000 x 64 step 5%)
        plan.alias = (None if group is self.param_groups[0] and group.get(CLIP) is None
                      and (not self._DECOUPLES or plan.pptrs.isdisjoint(map(_data_ptr, grads)))
                      else self._aliases(plan, group, grads))
        plan.graw = views
        plan.live_grads = grads
        if plan.keep:
            # what the next step compares kept grads by; grads new to this step are let go
            # after it (_run), as after every backward that follows zero_grad()
            plan.gstrides = list(map(_stride, grads))
            plan.watched_all = plan.watched + grads
            plan.ptrs_all = plan.ptrs + list(map(_data_ptr, grads))

    def _make_plan(self, group, params, grads, old):
        plan = _Plan()
        plan.all_params, plan.grads = list(params), list(grads)
        plan.param_list = params        # the group's own list (_drop_plans)
        plan.keep, plan.adopt = False, []
        plan.has_grad = [g is not None for g in grads]
        live = [p for p, g in zip(params, grads) if g is not None]
        plan.params = live
        where = self._names(group, plan)
        for i, p in enumerate(live):
            _check_tensor("parameter", where[i], p)
            _check_not_expanded("parameter", where[i], p)
        if len(set(map(id, live))) != len(live):
            self._refuse_duplicates(group, params)
        plan.strides, plan.shapes = list(map(_stride, live)), list(map(_shape, live))
        plan.dtypes = list(map(_dtype_of, live))
        plan.one = live[0] if len(live) == 1 else None
        plan.inference = [k for k, p in enumerate(live) if p.is_inference()]
        plan.versions = plan.marks = None
        plan.reseeded = {}
        if any(p.dtype in _HALF for p in params):
            self._watch_masters(plan, params, old)
        plan.keys = self._state_keys(group)
        plan.state_map, plan.step_buf = self.state, None
        plan.stored = [self.state.get(p) for p in live]
        # new state goes into new dicts, stored by _run once the kernels ran
        plan.states, plan.fresh = [], []
        # the state torch's step reads from a state it made before: where a key is missing
        # (an option switched on after the first step, amsgrad; another optimizer's state
        # dict loaded) torch raises KeyError, but for the keys it takes as not made yet
        # where they are missing or None (SGD's momentum buffer, made then)
        required = [key for key in plan.keys + (("step",) if self._STEPPED else ())
                    + self._SCALAR_STATE if key not in self._NONE_IS_NEW]
        for i, (p, old_state) in enumerate(zip(live, plan.stored)):
            state = old_state if old_state else self._init_state(p, group)
            if id(p) in plan.reseeded:      # (stored with the new state: _watch_masters)
                state = dict(state)
                state[MASTER] = plan.reseeded[id(p)]
            for key in required:
                if key not in state:
                    raise KeyError(f"fastopt.torch: state[{key!r}] of parameter {where[i]} is "
                                   "missing: its state was made without it (an option switched "
                                   "on later, such as amsgrad, or another optimizer's state "
                                   "dict loaded), which torch.optim's step refuses with a "
                                   "KeyError too; set it, or delete the parameter's state to "
                                   "start it anew")
            missing = [key for key in self._NONE_IS_NEW
                       if key in plan.keys and state.get(key) is None]
            plan.fresh.append(not old_state or bool(missing))
            narrow = []
            if p.dtype in _HALF:
                # torch.optim's state of a 16-bit parameter is 16-bit: widen it; the master
                # copy starts as the parameter
                narrow = [key for key in plan.keys if key not in missing
                          and isinstance(state.get(key), torch.Tensor)
                          and state[key].dtype != torch.float32]
                if state.get(MASTER) is None:     # (None: not made yet, as a missing one)
                    missing.append(MASTER)
            # scalar state is read as a number (torch's .item()): a 16-bit one (torch.optim's
            # for 16-bit parameters) takes torch's scalar dtype (float32, or float64 under
            # torch.set_default_dtype(torch.float64), as torch's own), one of another shape
            # with one element is made 0-d; the checks below refuse the others
            narrow += [key for key in self._SCALAR_STATE if _odd_scalar(state.get(key))]
            # a negative or conjugate view (torch._neg_view(t), z.conj(), assigned or
            # loaded), which numpy() refuses and torch steps in place: its value takes its place
            negs = [key for key, value in state.items() if key != "step"
                    and isinstance(value, torch.Tensor) and _lazy(value)]
            if missing or narrow or negs:
                state = dict(state)
                for key in negs:
                    state[key] = _resolved(state[key])
                for key in missing:
                    state[key] = _fresh_master(p) if key == MASTER else _zeros(p)
                for key in narrow:
                    value = state[key]
                    state[key] = (value.to(torch.float32) if key in plan.keys else value.to(
                        value.dtype if value.dtype in _VIEWABLE else _scalar_dtype(),
                        copy=True).reshape(()))
            plan.states.append(state)
        # 16-bit parameters: their kernel steps the master copy and writes the rounded param
        plan.formats = [_HALF.get(p.dtype) for p in live]
        for i, (f, s) in enumerate(zip(plan.formats, plan.states)):
            if f is not None:
                _check_state_tensor(MASTER, where[i], s[MASTER])
                _check_state_like(MASTER, where[i], s[MASTER], live[i], torch.float32)
        masters = [None if f is None else _array(s[MASTER])
                   for f, s in zip(plan.formats, plan.states)]
        # a negative or conjugate view (p.data = torch._neg_view(x)), which numpy() refuses:
        # the kernels step a copy of its value, written back through it after them (_run);
        # strides that no parameter has make the plan anew at every step, so that the copy is
        # never stale
        plan.negs = [k for k, p in enumerate(live) if _lazy(p)]
        plan.pviews = [_array(_resolved(p)) for p in live]
        if plan.negs:
            plan.strides = [None] * len(live)
        half = any(f is not None for f in plan.formats)
        cplx = plan.cplx = any(p.is_complex() for p in live)
        # the grads' dtypes _view_grads expects: their views' (float parameters), or the
        # parameters' own (if all are 16-bit, or none is and some are complex; a group
        # mixing 16-bit parameters with others checks each grad)
        plan.gdtypes = None if half or cplx else [v.dtype for v in plan.pviews]
        plan.tdtypes = (None if half and None in plan.formats or not (half or cplx)
                        else [p.dtype for p in live])
        plan.vshapes = list(map(_shape, plan.pviews)) if cplx else plan.shapes
        plan.tensors = {MASTER: [s.get(MASTER) for s in plan.states]} if half else {}
        plan.views = {}
        for key in (("step",) if self._STEPPED else ()) + plan.keys + self._SCALAR_STATE:
            tensors = [s[key] for s in plan.states]
            for i, t in enumerate(tensors):
                _check_state_tensor(key, where[i], t)
                if key in plan.keys:
                    _check_state_like(key, where[i], t, live[i], _state_dtype(live[i]))
                elif t.numel() != 1:
                    raise ValueError(f"fastopt.torch: state[{key!r}] of parameter {where[i]} has "
                                     f"{t.numel()} elements, expected one (a scalar)")
                elif key != "step" and not t.is_floating_point():
                    raise TypeError(f"fastopt.torch: state[{key!r}] of parameter {where[i]} has "
                                    f"dtype {t.dtype}, expected a floating-point dtype (torch "
                                    "multiplies it in place by a float, which refuses it)")
            plan.tensors[key] = tensors
            if key != "step":
                plan.views[key] = [_array(t) for t in tensors]
        if self._STEPPED:
            self._count_steps(plan, old)
            self._check_counts(plan)
        # the counts' buffer and the scalar state, whose version counters move where they are
        # written in place (the step writes them through NumPy, which moves none)
        plan.scalars = ([plan.step_buf] if self._STEPPED else []) + [
            t for key in self._SCALAR_STATE for t in plan.tensors[key]]
        # (a version counter only grows: their sum moves when any does)
        plan.scalar_versions = sum(map(_version_of, plan.scalars))
        # what _plan_holds checks: the states' entries by identity, and the data pointers of
        # the parameters, the state tensors the step uses and the grads
        plan.values = list(chain.from_iterable(map(dict.values, plan.states)))
        plan.watched = live + [t for key in plan.tensors for t in plan.tensors[key]
                               if t is not None]
        plan.ptrs = list(map(_data_ptr, plan.watched))
        plan.pptrs = set(plan.ptrs[:len(live)])
        # the memory of what the kernels write (the parameters, their state and masters) as
        # merged storage byte ranges, which a grad's storage is compared with (_aliases); a
        # range holding more than one of them is looked into here
        written = self._written(plan)
        spans = [_storage_span(t) for _, _, t in written]
        plan.wstarts, ends = _merge_spans(spans)
        plan.wreach = [0, *ends]    # [i]: the end of the last range starting before i's start
        if len(plan.wstarts) < len(written):
            self._refuse_overlaps(plan, group, written)
        self._view_grads(plan, group, [g for g in grads if g is not None])
        # what _update receives, a column per parameter
        plan.cols = (dict(plan.views, **{MASTER: masters, _FORMAT: plan.formats})
                     if half else plan.views)
        plan.pending = [k for k, (s, old_state) in enumerate(zip(plan.states, plan.stored))
                        if s is not old_state and s]   # torch's SGD keeps no empty state
        plan.split = self._splits(plan)
        return plan

    def _splits(self, plan):
        """Whether the group's step makes more than one kernel call: parameters whose step
        counts differ, or 16-bit beside float32/float64 ones (a subclass adds its own
        reasons). A call does not see the others' tensors, so the first group's grads must
        then be compared with what the step writes (see :meth:`_run`)."""
        counts = (plan.counts.tolist() if plan.live_index is _ALL else
                  plan.counts[plan.live_index].tolist()) if self._STEPPED else ()
        return len(set(counts)) > 1 or len(set(plan.formats)) > 1

    def _refuse_duplicates(self, group, params):
        """ValueError naming a parameter listed twice in the group (torch.optim warns, then
        steps it once per occurrence; its kernels cannot step one tensor twice at once)."""
        gi = self._group_index(group)
        first: dict[int, int] = {}
        for j, p in enumerate(params):
            i = first.setdefault(id(p), j)
            if i != j:
                raise ValueError(
                    f"fastopt.torch: parameter {j} of param group {gi} is parameter {i} "
                    "again; torch.optim warns about duplicate parameters in a group (an error "
                    "in a future torch) and steps them once per occurrence, fastopt.torch "
                    "refuses them: list each parameter once")

    @staticmethod
    def _written(plan):
        """What the plan's kernels write, as ``(key, k, tensor)`` (key None: the parameter;
        ``k``: its index in ``plan.params``), leaving out empty tensors (no memory)."""
        written = [(None, k, p) for k, p in enumerate(plan.params)]
        written += [(key, k, t) for key in (MASTER, *plan.keys)
                    for k, t in enumerate(plan.tensors.get(key, ())) if t is not None]
        return [w for w in written if w[2].numel()]

    @staticmethod
    def _by_range(plan, written):
        """``written`` (:meth:`_written`) by the merged storage range that holds each."""
        ranges: dict[int, list] = {}
        for w in written:
            ranges.setdefault(bisect_right(plan.wstarts, _storage_span(w[2])[0]) - 1,
                              []).append(w)
        return ranges

    def _refuse_overlaps(self, plan, group, written):
        """ValueError naming two tensors the group's step writes (parameters with grads, their
        state and masters) that share memory: overlapping views of one buffer, or separate
        storages over one memory; the kernels refuse them (a multi-tensor call updates its
        tensors at once), and would do so after earlier groups had stepped. Views that share
        no element (a matrix's column blocks, ``buf[0::2]`` and ``buf[1::2]``) pass, as the
        kernels take them (the exact test where memory bounds meet:
        :func:`fastopt._validate.shared_pair`). Only tensors in one merged storage range are
        compared."""
        for members in self._by_range(plan, written).values():
            if len(members) < 2:
                continue
            # (shared_pair's ``i``: 0 a parameter, 2 a state tensor, both written)
            pair = shared_pair([(_memory(t), 0 if key is None else 2, (k, key or ""))
                                for key, k, t in members])
            if pair is not None:
                self._raise_overlap(plan, group, [(i == 2, *at) for i, at in pair])

    def _raise_overlap(self, plan, group, pair):
        """The error of :meth:`_refuse_overlaps` for ``pair``: two ``(is_state, k, key)``."""
        index = [j for j, has in enumerate(plan.has_grad) if has]
        gi = self._group_index(group)
        if not (pair[0][0] or pair[1][0]):      # two parameters
            first, second = pair[0][1], pair[1][1]
            raise ValueError(
                f"fastopt.torch: parameters {index[first]} and {index[second]} of param group "
                f"{gi} overlap in memory (views of one buffer that share elements, or "
                "tensors over one memory); fastopt's multi-tensor kernels update a group's "
                "parameters at once and refuse them (torch.optim steps them one after the "
                "other): give each its own storage, or put them in different param groups")
        names = [f"state[{key!r}] of parameter {index[k]}" if is_state else
                 f"parameter {index[k]}" for is_state, k, key in pair]
        raise ValueError(
            f"fastopt.torch: {names[0]} and {names[1]} of param group {gi} overlap in memory; "
            "fastopt's multi-tensor kernels update a group's tensors at once and refuse them: "
            "give each its own memory (clone() it)")

    def _aliases(self, plan, group, grads):
        """:meth:`_grad_overlaps` if a grad's storage overlaps the merged storage ranges of
        the tensors the step writes (for most steps this test is the whole cost: a grad's
        storage overlaps the last range starting before its end if it starts before that
        range ends)."""
        stores = list(map(_storage, grads))
        try:
            starts = list(map(_storage_ptr, stores))
        except RuntimeError:    # an efficient zero tensor (autograd's) has no memory
            starts = [0 if g._is_zerotensor() else _storage_ptr(store)
                      for g, store in zip(grads, stores)]
        ends = map(operator.add, starts, map(_storage_nbytes, stores))
        reach = map(plan.wreach.__getitem__, map(bisect_left, repeat(plan.wstarts), ends))
        return (self._grad_overlaps(plan, group, grads) if any(map(operator.lt, starts, reach))
                else ())

    def _grad_overlaps(self, plan, group, grads):
        """The grads (of ``plan.params``) whose storage overlaps that of a tensor the step
        writes (:meth:`_aliases` found one): ValueError naming a grad that shares memory with
        a parameter of the group or a state tensor the kernels write (they would refuse it:
        only a parameter as its own grad, the very same elements, is taken; a grad interleaved
        with them, sharing no element, passes), before any group has stepped; else the
        indices of the grads that are their parameters themselves (``p.grad = p.detach()``)."""
        ranges = self._by_range(plan, self._written(plan))
        alias = []
        for k, g in enumerate(grads):
            if not g.numel() or g._is_zerotensor():     # (no memory)
                continue
            lo, hi = _storage_span(g)
            members = [m for r in range(max(bisect_right(plan.wstarts, lo) - 1, 0),
                                        bisect_left(plan.wstarts, hi))
                       for m in ranges.get(r, ())]
            if not members:
                continue
            # a negative view's kernels read a copy taken before the step (_view_grads), as
            # torch reads it, unless torch writes the parameter first (a decoupled weight
            # decay, or a clip's scale, which Adam's kernel would not apply to it)
            copied = _lazy(g) and not (self._decays_own_grads(group)
                                         or group.get(CLIP) is not None)
            gview = _memory(g)
            lo, hi = extent(gview)
            for key, i, t in members:
                view = _memory(t)
                if (key is None and i == k and same_memory(view, gview)
                        and not _lazy(g) and not _lazy(t)):
                    alias.append(k)
                    continue
                t_lo, t_hi = extent(view)
                if lo < t_hi and t_lo < hi and not copied and share_elements(gview, view):
                    index = [j for j, has in enumerate(plan.has_grad) if has]
                    gi = self._group_index(group)
                    what = (f"parameter {index[i]} of the group" if key is None else
                            f"state[{key!r}] of parameter {index[i]}")
                    raise ValueError(
                        f"fastopt.torch: the grad of parameter {index[k]} of param group {gi} "
                        f"overlaps {what} in memory (they share elements' memory), which the "
                        "step writes; fastopt's multi-tensor kernels update a group's tensors "
                        "at once and refuse it (torch.optim reads it as its step goes): give "
                        "the grad memory of its own (clone() it)")
        if alias:
            # viewed again at every step, so that a clip switched on later is seen here too
            plan.keep = False
            self._refuse_clipped_aliases(plan, group, alias)
        return alias

    def _refuse_clipped_aliases(self, plan, group, alias):
        """ValueError, in a group that clips, for a grad that is its 16-bit parameter itself
        (clip_grad_norm_ would scale the parameter through it; the step writes the parameter
        from its float32 master), or any such grad in a group with 16-bit parameters whose
        kernel scales the grads (Adam's: :meth:`_run` scales a parameter that is its grad
        in place, as clip_grad_norm_ does, and then passes the kernels no scale, which the
        16-bit grads need). Float32/float64 parameters that are their grads get torch's
        numbers otherwise."""
        half = [k for k in alias if plan.formats[k] is not None]
        if not half and not (self._SCALES and any(f is not None for f in plan.formats)):
            return
        if group.get(CLIP) is None:
            return
        gi = self._group_index(group)
        j = [j for j, has in enumerate(plan.has_grad) if has][(half or alias)[0]]
        why = ("a 16-bit parameter is written from its float32 master" if half else
               "its kernel scales the 16-bit grads of the group, which the parameter's "
               "in-place scale would leave unscaled")
        raise ValueError(
            f"fastopt.torch: the grad of parameter {j} of param group {gi} is the parameter "
            f"itself, in a group that clips ({CLIP}={group[CLIP]!r}): "
            f"torch's clip_grad_norm_ would scale the parameter through it, which "
            f"fastopt.torch cannot do here ({why}); give the grad memory of its own "
            "(clone() it)")

    def _shared_clipped_grads(self, plan, group, work):
        """Whether grads of a group that clips share memory (a grad listed for several
        parameters, ``a.grad = b.grad``, or overlapping views): clip_grad_norm_ scales shared
        memory once per grad listing it, which in-place scaling does for float32/float64
        grads (:meth:`_run`). ValueError, before any group steps, for such a grad that is
        16-bit (its kernel scales it once, as it widens it) or in a group with 16-bit
        parameters whose kernel scales the grads (Adam's), that is a negative or conjugate
        view (the kernels read a copy per parameter), or that another group's grad shares
        (``work``'s plans: which group read it scaled would hang on the groups' order), or
        that is memory of another group's parameter (which clip_grad_norm_ would scale)."""
        grads, formats = plan.live_grads, plan.formats
        n = len(grads)
        others = [g for other in work if other is not None and other is not plan
                  for g in other.live_grads]
        m = n + len(others)
        # and the other groups' parameters: clip_grad_norm_ scales one in place through a grad
        # that is its memory, which the steps here do not (Adam's scales in its kernel)
        others += [p for g in self.param_groups if g is not group for p in g["params"]]
        # (a cluster's indices are in address order: any of them may be this group's)
        clusters = [sorted(c) for c in _shared_memory(grads, others) if min(c) < n]
        for cluster in clusters:
            mine = [k for k in cluster if k < n]
            why = ("it is memory of another param group's parameter, which torch's clip would "
                   "scale in place through it" if cluster[-1] >= m else
                   "another param group's grad shares its memory (put the parameters in one "
                   "group)" if cluster[-1] >= n else
                   "a 16-bit grad, which its kernel scales once as it widens it"
                   if any(formats[k] is not None for k in mine)
                   or (self._SCALES and any(f is not None for f in formats)) else
                   "a negative or conjugate view, which the kernels read as a copy"
                   if any(_lazy(grads[k]) for k in mine) else None)
            if why is not None:
                with_grads = [j for j, has in enumerate(plan.has_grad) if has]
                named = " and ".join(str(with_grads[k]) for k in mine[:2])
                raise ValueError(
                    f"fastopt.torch: the grad{'s' * (len(mine) > 1)} of parameter"
                    f"{'s' * (len(mine) > 1)} {named} of param group "
                    f"{self._group_index(group)} share{'s' * (len(mine) == 1)} memory, in a "
                    f"group that clips ({CLIP}={group[CLIP]!r}): torch's clip_grad_norm_ would "
                    f"scale that memory once per grad, which fastopt.torch cannot do here "
                    f"({why}); give each parameter a grad of its own (clone() it)")
        return bool(clusters)

    def _group_index(self, group):
        """The index of ``group`` in param_groups, for messages ("?" if it is not there)."""
        return _index_of(self.param_groups, group)

    def _names(self, group, plan):
        """Per parameter of the plan (those with grads), its name in messages: its index
        among the group's parameters and the group's, made only if a message is."""
        return [_Name(self.param_groups, group, j)
                for j, has in enumerate(plan.has_grad) if has]

    def _watch_masters(self, plan, params, old):
        """A group with 16-bit parameters: record their version counters and storage (data
        pointer, strides, shape), and verify the master copy of each 16-bit parameter that
        may have been written since the last step (its counter, storage or dtype changed
        since ``old`` recorded them: written in place, ``.data`` reassigned, ``set_``, the
        same memory viewed as the other 16-bit dtype), or that
        ``old`` did not record (no plan since a ``load_state_dict``, or ever): a master the
        parameter is the rounding of is kept (a checkpoint of this optimizer, loaded before
        or after the model's, resumes bit-identically); any other is re-seeded from the
        parameter where it is not (it would undo the write; or a stale one of torch.optim,
        which keeps it in its state without stepping it), element by element
        (:func:`_reseeded_master`). The re-seeded masters go into ``plan.reseeded`` by
        parameter id (and those of parameters with a grad into the plan's new states), and
        are stored once the group's kernels ran (:meth:`_run`): a step that raises leaves
        ``master_param`` as it was, and the next plan checks those parameters again. In a
        group where no parameter has a grad (no kernel runs) they wait, and a parameter's
        master is checked again when it next steps. A counter moved by another writer of
        the same storage (views of one buffer in other groups) costs a check, nothing
        more."""
        plan.versions = _versions(params)
        plan.marks = list(map(_mark, params))
        self._watching = True       # _step records the counters of such plans
        before = ({} if old is None or old.versions is None else
                  dict(zip(map(id, old.all_params), zip(old.versions, old.marks))))
        for pid in (old.reseeded if old is not None else ()):
            before.pop(pid, None)   # re-seeded by a plan whose step raised: not stored
        for p, version, mark in zip(params, plan.versions, plan.marks):
            if p.dtype not in _HALF or before.get(id(p)) == (version, mark):
                continue
            state = self.state.get(p)
            master = state.get(MASTER) if state else None
            # (one that is not a dense CPU tensor is refused by _make_plan, by name)
            if (isinstance(master, torch.Tensor) and master.is_cpu
                    and master.layout == torch.strided):
                fresh = _reseeded_master(master, p)
                if fresh is not master:
                    plan.reseeded[id(p)] = fresh

    def _count_tensor(self, n):
        """A new count tensor for a group of ``n`` parameters, marked as this optimizer's
        (:meth:`_own_count`)."""
        counts = torch.zeros(n, dtype=_scalar_dtype())
        counts._fastopt_counts = self._counts_token
        return counts

    def _own_count(self, step, counts):
        """Whether ``step`` is a slot of one of this optimizer's earlier count tensors, which a
        state dict or a caller may hold as the live count: adopted by the new count tensor
        ``counts`` (:func:`_adopt_count`) as a loaded count is. (Made anew when a parameter
        was added to or removed from the group, or another's state deleted, reset, loaded or
        assigned, the counts had been copied, and a held one left behind as its moments went
        on.) Another optimizer's, or a ``copy.copy`` handle's, is not this one's to take."""
        base = step._base if type(step) is torch.Tensor else None
        return (base is not None and step.dim() == 0 and step.dtype == counts.dtype
                and getattr(base, "_fastopt_counts", None) is self._counts_token)

    def _count_steps(self, plan, old):
        """The group's step counts as slots of one tensor (kept from the last plan while the
        group has the same parameters and no count moved; a new one, all counts read before
        any is written, when one did). A ``step`` that is not its parameter's slot, loaded
        or assigned, is copied into it, and once the step succeeds made the slot in place
        where it can be (:func:`_adopt_count`), so that it goes on counting as torch's does,
        or else replaced in the state (copied) by the slot."""
        params = plan.all_params
        reuse = (old is not None and old.step_buf is not None
                 and len(old.all_params) == len(params)
                 and all(map(operator.is_, old.all_params, params)))
        if reuse:
            plan.step_buf, plan.slots = old.step_buf, old.slots
        else:
            plan.step_buf = self._count_tensor(len(params))
            plan.slots = [None] * len(params)
        index = [j for j, has in enumerate(plan.has_grad) if has]
        plan.live_index = _ALL if len(index) == len(params) else np.array(index, np.intp)
        steps = plan.tensors["step"]
        base, size = plan.step_buf.data_ptr(), plan.step_buf.element_size()
        plan.shared_steps = []
        moved = [(k, j) for k, j in enumerate(index)
                 if not (steps[k] is plan.slots[j] and steps[k].data_ptr() == base + j * size)]
        if reuse and not all(steps[k].is_shared() for k, _ in moved):
            # a count loaded, assigned or exchanged: every count goes into a new count
            # tensor, so that the kept one, which the states of parameters without a grad
            # still view (and every state, should this step raise), stays as it was (counts
            # written into it had changed them before the checks below; two parameters'
            # exchanged states, or one without a grad, had taken one count)
            plan.step_buf = self._count_tensor(len(params))
            plan.slots = [None] * len(params)
            moved = list(enumerate(index))
        plan.counts = plan.step_buf.numpy()
        plan.tally = memoryview(plan.counts)    # the same (for one parameter: see _run)
        # every count read before any is written (one may be a view of another's slot)
        for (k, j), count in zip(moved, [float(steps[k]) for k, _ in moved]):
            plan.counts[j] = count
        for k, j in moved:
            if steps[k].is_shared():
                # a count in shared memory (the A3C/Hogwild SharedAdam, or state shared with
                # processes it spawned) is other processes' too: it stays the state's
                plan.shared_steps.append((j, steps[k]))
                continue
            if plan.stored[k] and (_adoptable(steps[k], plan.step_buf)
                                   or self._own_count(steps[k], plan.step_buf)):
                # made the slot in place once the step succeeds (_run): a step that raised
                # after the swap had left it a view of a count tensor thrown away
                plan.adopt.append((k, j, steps[k]))
            if plan.slots[j] is None or plan.slots[j] is steps[k]:    # (its .data was set)
                plan.slots[j] = plan.step_buf[j]
            state = plan.states[k]
            if state is plan.stored[k]:
                state = plan.states[k] = dict(state)
            state["step"] = steps[k] = plan.slots[j]

    def _check_counts(self, plan):
        """ValueError, as :meth:`_update`'s scalars would raise it, for a step count they
        refuse (below 0 or NaN, loaded or assigned: the step would be below 1), here where
        the plan is made, before any group steps (or any call of this group, whose
        parameters' counts may differ); the step advances valid counts only."""
        if not self._STEP_SCALARS:
            return
        counts = plan.counts if plan.live_index is _ALL else plan.counts[plan.live_index]
        for count in counts.tolist():
            if not count >= 0:
                check_reals(step=(count + 1, STEP))

    def _run(self, group, plan):
        """The kernel calls for one group, one per distinct step count (torch counts steps
        per parameter); then the new counts and any new state are stored, also when an
        interrupt (a KeyboardInterrupt, or what a signal handler raised) came once a kernel was
        called (``_update`` binds ``kernel`` just before it calls it:
        fastopt.ops._interrupted_kernel), which is raised after. Returns the grads' norm if the
        group clips them."""
        gviews = plan.graw
        norm, factor = None, 1.0
        if plan.alias is None and plan.split:
            # the first group's grads, not compared yet, and each kernel call sees only its
            # own tensors (the first would read a grad another writes later, or the reverse)
            plan.alias = self._aliases(plan, group, plan.live_grads)
        if group.get(CLIP) is not None:
            _check_clip(group[CLIP])
            self._check_hyper(group)
            if plan.alias is None:      # the first group's grads, not compared yet
                plan.alias = self._aliases(plan, group, plan.live_grads)
            # an inf or NaN grad makes NaNs, as in torch, without NumPy's RuntimeWarning; a
            # square or a scaled grad below the float range rounds (to 0), as in torch,
            # without a FloatingPointError under np.seterr(all="raise") (the grads had been
            # scaled, the parameters not stepped)
            with np.errstate(invalid="ignore", over="ignore", under="ignore"):
                norm, factor = _clip_factor(gviews, plan.formats, group[CLIP])
                if factor != 1.0 and (not self._SCALES or plan.alias or plan.clip_shared):
                    # float32/float64 grads as clip_grad_norm_'s multiply (the factor's
                    # dtype's value); 16-bit ones are scaled by their kernel as it widens them
                    # (Adam's kernel scales them all, but for a grad that is its parameter
                    # itself, which clip_grad_norm_ scales: _refuse_clipped_aliases, or one
                    # several parameters share, which it scales once for each of them)
                    # (the loops skip with `continue`, in the `with` on CPython 3.13 too:
                    # cpython#130279, see zero_grad)
                    scaled = []
                    for k, f in enumerate(plan.formats):
                        if f is not None:
                            continue
                        np.multiply(gviews[k], gviews[k].dtype.type(factor), out=gviews[k])
                        scaled.append(plan.live_grads[k])
                    # as clip_grad_norm_'s mul_ moves them: a graph that saved a grad must
                    # refuse to backward through the scaled one
                    _increment_versions(scaled)
                    for k in plan.neg_grads:    # gviews[k] is a copy of it (_view_grads)
                        if plan.formats[k] is not None:
                            continue
                        plan.live_grads[k].copy_(_tensor(gviews[k], plan.live_grads[k]))
                    if self._SCALES:
                        factor = 1.0
        if plan.alias and self._decays_own_grads(group):
            gviews = self._decayed_own_grads(plan, group, gviews)
        cols = plan.cols
        interrupted = None
        ops._calls.returned = False     # (see ops._kernel_began)
        new_counts = None   # the counts once a kernel has run (stored again by an interrupt)
        adds = plan.shared_steps[:] if self._STEPPED else ()   # (taken one by one: _store_step)
        try:
            if not self._STEPPED:
                self._update(group, plan.pviews, gviews, cols, None, plan.fresh, factor)
            elif len(plan.counts) == 1 and plan.live_index is _ALL:
                # one parameter: its count read and written through a memoryview, which costs
                # ~0.4 us less than NumPy's scalar access and fill()
                step = new_counts = _next_count(plan.tally[0], plan.counts)
                self._update(group, plan.pviews, gviews, cols, step, plan.fresh, factor)
                plan.tally[0] = step
            else:
                every = plan.live_index is _ALL
                counts = plan.counts if every else plan.counts[plan.live_index]
                first = float(counts[0])
                if len(counts) == 1 or (counts == first).all():
                    step = new_counts = _next_count(first, counts)
                    self._update(group, plan.pviews, gviews, cols, step, plan.fresh, factor)
                    if every:
                        counts.fill(step)           # (a ufunc on a small array costs ~1.5 us)
                    else:
                        plan.counts[plan.live_index] = step
                else:
                    # the parameters by count (a NaN count, written in place or loaded, which
                    # RMSprop and Adadelta step, is a call of its own)
                    parts: dict[float, list[int]] = {}
                    for k, count in enumerate(counts.tolist()):
                        parts.setdefault(count, []).append(k)
                    new_counts = counts + 1

                    def step_part(item):
                        count, part = item
                        pviews, grads, fresh = _pick(part, plan.pviews, gviews, plan.fresh)
                        self._update(group, pviews, grads, _pick_cols(cols, part),
                                     _next_count(count, counts), fresh, factor)

                    ops._each_part(list(parts.items()), step_part)
                    plan.counts[plan.live_index] = new_counts
        except OverflowError:     # the kernels' conversion of an int past the float range
            self._check_float_range(group)      # (named, as a later group's is in time)
            raise
        except ValueError:
            if plan.alias is None:
                # the first group's grads, left to its kernels: the overlap they refused (in
                # their words, by index among the parameters with grads) is named here
                self._aliases(plan, group, plan.live_grads)
            raise
        except BaseException as exc:
            # Ctrl-C, or what a signal handler raised (ops._interrupted_kernel): raised before
            # a kernel was called, it changes nothing; once one was, as it returned (a kernel
            # runs without the GIL, where no Python handler runs) or after, the step is stored
            # as it would have been, then it is raised
            if not ops._interrupted_kernel(exc):
                raise
            interrupted = exc
            if self._STEPPED:   # (stored, or stored again: raised as a store returned)
                plan.counts[plan.live_index] = new_counts
        # the step's bookkeeping, to its end: an interrupt raised in it stores it again (each
        # of its stores taken once or idempotent), then is raised
        while True:
            try:
                self._store_step(plan, adds)
                break
            except BaseException as exc:
                if interrupted is not None or isinstance(exc, (*ops._REFUSED, MemoryError)):
                    raise
                interrupted = exc
        if interrupted is not None:
            raise interrupted
        return norm

    def _store_step(self, plan, adds):
        """What a group's step stores once its kernels have run (:meth:`_run`), where an
        interrupt raised in it runs it again: the counts shared with another process
        (``adds``, each taken off before it is added to), the parameters' versions, the new
        state and masters, each store idempotent."""
        while adds:
            # torch's step_t += 1, in place: a count another process advanced during this
            # step keeps its steps (writing the count read at the start lost them)
            t = adds[-1][1]
            del adds[-1]
            t.add_(1)
        _increment_versions(plan.params)
        if not plan.keep:
            # (a plan with a parameter that is a negative view is never kept: _make_plan)
            for k in plan.negs:
                p, view = plan.params[k], plan.pviews[k]
                p.detach().copy_(_tensor(view, p))
            # grads new to this step (after zero_grad(), whose default sets them to None)
            # are not held, so that they are freed with p.grad, as with torch.optim, not
            # held through the next backward. The next step knows them (and keeps them from
            # then on) by their ids and a mark in each, a number new to this step (an int:
            # torch.load(weights_only=True) of a saved grad takes it): a grad made at a freed
            # one's address has no mark, a copy of one (deep or pickled) another id. Not a
            # weak reference: swap_tensors (which model.to() uses for tensor subclasses, or
            # when torch.__future__ says so) refuses a tensor that has one, and left the
            # model half converted.
            if plan.grads is not None:      # (None: let go of already)
                _let_go_of_grads(plan, known_again=True)
        if plan.pending:
            for k in plan.pending:
                state, stored = plan.states[k], plan.stored[k]
                if isinstance(stored, dict):
                    # the new state (made from the stored one: its keys and more) goes into
                    # the parameter's dict, as torch's step fills and updates it in place: a
                    # dict held from opt.state[p] (taken before the first step, after a
                    # load_state_dict) stays the live state
                    stored.update(state)
                    state = plan.states[k] = stored
                self.state[plan.params[k]] = plan.stored[k] = state
            while plan.adopt:
                # the loaded or assigned count goes on counting, as torch's (_adopt_count);
                # once swapped, it is a view of the count tensor (stored again: not swapped
                # back)
                k, j, step = plan.adopt[-1]
                state = plan.states[k]
                if step._base is plan.step_buf or (state.get("step") is plan.slots[j]
                                                   and _adopt_count(step, plan.slots[j])):
                    state["step"] = plan.slots[j] = step
                del plan.adopt[-1]
            plan.values = list(chain.from_iterable(map(dict.values, plan.states)))
            plan.fresh = [False] * len(plan.params)    # (a fresh state is a pending one)
            plan.split = self._splits(plan)
            plan.pending = []   # (last: stored again up to here)
        if plan.reseeded:
            # the masters of parameters written between steps: those of the parameters
            # that stepped are in their new states (stored above), the others' go in now
            for p, has in zip(plan.all_params, plan.has_grad):
                if not has and id(p) in plan.reseeded:
                    self.state[p][MASTER] = plan.reseeded[id(p)]
            plan.reseeded = {}

    def _decays_own_grads(self, group):
        """Whether torch's step decays a parameter in place before it reads the grad, which a
        parameter that is its own grad (``p.grad = p.detach()``) then reads decayed:
        decoupled weight decay (``param.mul_(1 - lr * weight_decay)``), but for ``maximize``,
        whose grad is a negated copy taken before."""
        return bool(self._decouples(group) and group["weight_decay"] != 0
                    and not group["maximize"])

    def _decouples(self, group):
        """Whether ``group``'s weight decay is decoupled: its ``decoupled_weight_decay``, as
        torch's step reads it (AdamW's groups have it True; one set to False by hand decays
        coupled there too)."""
        return bool(self._DECOUPLES and group.get("decoupled_weight_decay", self._decoupled))

    @staticmethod
    def _decayed_own_grads(plan, group, gviews):
        """``gviews`` with the grads that are their parameters themselves (``plan.alias``)
        replaced by what torch's step reads there: the parameter decayed by torch's own
        ``param.mul_(1 - lr * weight_decay)`` (its rounding, a tensor lr's arithmetic
        included), a copy; the kernels decay the parameter itself."""
        gviews = list(gviews)
        decay = _torch_decay(group)
        for k in plan.alias:
            gviews[k] = _array(plan.params[k].detach() * decay)
        return gviews

    @staticmethod
    def _decay_args(group, lr, wd):
        """The kernel's ``lr`` and ``weight_decay`` for a decoupled weight decay, whose
        factor the kernels compute as ``1.0 - lr * weight_decay``: torch's
        (:func:`_torch_decay`) where lr or weight_decay is a tensor (:func:`_one_minus`;
        the kernels get ``1 - D`` and 1)."""
        if wd == 0 or not (_own_arithmetic(group["lr"])
                           or _own_arithmetic(group["weight_decay"])):
            return lr, wd
        x = _one_minus(_to_scalar(group["lr"]) * _to_scalar(group["weight_decay"]), None)
        return (lr, wd) if x is None else (x, 1.0)

    @staticmethod
    def _step_size(group, step, step_size):
        """``step_size``, or where lr or beta1 is a tensor torch's ``lr / (1 - beta1**step)``
        (Adam's and Adamax's), which it folds in the tensor's dtype."""
        lr, beta1 = group["lr"], group["betas"][0]
        if type(lr) is float and type(beta1) is float:
            return step_size    # the common case, at every step
        if not (_own_arithmetic(lr) or _own_arithmetic(beta1)):
            return step_size
        return float(_to_scalar(lr) / (1 - _to_scalar(beta1) ** step))

    def _lerp_beta1(self, group, beta1):
        """The kernels' ``beta1``, whose ``1.0 - beta1`` weighs their lerp of ``exp_avg``:
        where torch's step computes its weight ``1 - beta1`` in a narrower dtype (a float32
        tensor or NumPy scalar, even for float64 parameters: rounded for a beta1 below 0.5),
        torch's weight (:func:`_one_minus`). Adam's step casts a tensor beta1 to the
        parameters' dtype first (``_CASTS_BETA1``)."""
        raw = group["betas"][0]
        if type(raw) is float or self._CASTS_BETA1 and isinstance(raw, torch.Tensor):
            return beta1        # (the common case, at every step)
        return _one_minus(_to_scalar(raw), beta1)

    def _betas(self, group):
        """A group's ``betas`` as a tuple of Python numbers: torch takes one-element tensors,
        but for those its step refuses where they are not 0-d (``_BETAS_0D``). Anything but
        a pair raises naming betas (a set too, which torch's step unpacks in no set order)."""
        betas = group["betas"]
        if (type(betas) is tuple and len(betas) == 2 and type(betas[0]) is float
                and type(betas[1]) is float):
            return betas        # the common case, at every step
        check_pair("betas", betas)
        for i, error in self._BETAS_0D:
            if len(betas) > i and isinstance(betas[i], torch.Tensor) and betas[i].dim() != 0:
                raise error(f"fastopt.torch.{type(self).__name__}: betas[{i}] is a tensor of "
                            f"shape {tuple(betas[i].shape)}; torch.optim's step refuses a "
                            f"beta{i + 1} tensor that is not 0-d with {error.__name__} too: "
                            "pass a 0-d tensor or a float")
        return tuple(_number(beta, f"beta{i + 1} (betas[{i}])")
                     for i, beta in enumerate(betas))

    def _real(self, group, key):
        """The group's float hyper-parameter ``key`` as a Python number, read once where the
        group is read: torch's step takes a 0-d tensor for each. A one-element tensor that is
        not 0-d raises where torch's step refuses it (``_NOT_0D``)."""
        value = group[key]
        if type(value) is float or type(value) is int:
            return value        # the common case, at every step (torch's weight_decay=0)
        if isinstance(value, torch.Tensor) and value.dim() != 0 and key in self._NOT_0D:
            self._refuse_not_0d(group, key, value)
        if isinstance(value, (bool, np.bool_)) and self._torch_refuses_bool(group, key, value):
            raise TypeError(f"Invalid {key}: {value!r} (torch.optim's step refuses it: "
                            + ("it negates the lr, and NumPy's bools do not negate)"
                               if key == "lr" else "an alpha of Python's True, 'Boolean alpha "
                               "only supported for Boolean results')"))
        return _number(value, key)

    def _torch_refuses_bool(self, group, key, value):
        """Whether torch's step cannot compute with the bool ``value`` of ``key`` (it takes
        the others as 0 and 1, and so does fastopt.torch): Python's True as an ``alpha`` (a
        coupled weight decay's ``grad.add(param, alpha=weight_decay)``, SGD's Nesterov
        ``grad.add(buf, alpha=momentum)``), and NumPy's bools as an lr it negates. Stepped as
        1, they had trained silently where torch raises."""
        if key == "lr":
            return self._NEGATES_LR and isinstance(value, np.bool_)
        if value is not True:
            return False
        return (key == "weight_decay" and not self._decouples(group)
                or key == "momentum" and bool(group.get("nesterov")))

    def _refuse_not_0d(self, group, key, value):
        """The error torch's step raises for a one-element ``value`` of ``key`` that is not
        0-d (``_NOT_0D``): a TypeError where it passes it as a number (``alpha=weight_decay``,
        ``value=1 - alpha``), which must be a Python number or a 0-d tensor. Not for one
        torch's step does not use (a weight_decay of 0, a dampening without momentum) or uses
        otherwise (a decoupled weight_decay, which it multiplies the parameters by, as it
        does a shape-(1,) eps: those it steps, but for a 0-d parameter, whose in-place result
        cannot take the broadcast shape (1,))."""
        if (value.numel() != 1      # (.item()'s RuntimeError, as torch's checks' bool())
                or (key == "weight_decay" and (
                    value.item() == 0 or self._decouples(group)))
                or (key == "dampening" and group["momentum"] == 0)):
            return
        error = self._NOT_0D[key]
        raise error(f"fastopt.torch.{type(self).__name__}: {key} is a tensor of shape "
                    f"{tuple(value.shape)}; torch.optim's step refuses a {key} tensor that is "
                    f"not 0-d with {error.__name__} too: pass a 0-d tensor or a float")

    def _check_group(self, group):
        """Raise for a hyper-parameter of the group the kernels cannot take (the checks of
        ``_update``, by ops' helpers); :meth:`_step` runs it on every group that steps
        before any is stepped (but for one group without a clip: see there)."""
        raise NotImplementedError

    def _new_step(self):
        return torch.tensor(0.0, dtype=_scalar_dtype())

    def _kernel_for(self, cols, grad_scale):
        """The list kernel ``_update`` calls with these state columns: the kernel's arrays
        (the registry's order; None for optional state not in use) and its scalars,
        written out (through a dict of keywords the call costs ~2 us more). That is the
        backend's own (``_KERNEL``'s list form), or, in a group with 16-bit parameters,
        :func:`_one_half_format` (all of one format) or :meth:`_by_format` bound to the
        columns and ``grad_scale``, which take the same arguments. A kernel with a grad scale
        of its own (``_SCALES``) is passed ``grad_scale``; the others' grads are scaled by
        :meth:`_run`."""
        if _FORMAT not in cols:     # the common case
            return getattr(_backend.active, self._MULTI)
        formats = cols[_FORMAT]
        if formats[0] is not None and formats.count(formats[0]) == len(formats):
            # one 16-bit format, the common case: its kernel, without _by_format's sorting
            # (which cost a 1e3 bfloat16 Adam step ~4 us of 15)
            return partial(_one_half_format, getattr(_backend.active, self._HALF_MULTI),
                           cols[MASTER], grad_scale, formats[0])
        return partial(self._by_format, cols, grad_scale)

    def _by_format(self, cols, scale, params, grads, *state, **scalars):
        """The kernel call of a group with 16-bit parameters: one call per format, the 16-bit
        ones on the kernel's 16-bit form (given the master copies and the grad scale
        ``scale``; a kernel's own ``grad_scale`` among ``scalars`` is that too)."""
        kernels = _backend.active
        scalars.pop("grad_scale", None)
        own = {"grad_scale": scale} if self._SCALES else {}
        formats = cols[_FORMAT]
        kinds = list(dict.fromkeys(formats))

        def step_format(fmt):
            if len(kinds) == 1:     # one format, the common case: the columns as they are
                lists, masters = [params, grads, *state], cols[MASTER]
            else:
                part = [k for k, f in enumerate(formats) if f is fmt]
                lists, masters = _pick(part, params, grads, *state), _pick(part, cols[MASTER])[0]
            if fmt is None:
                kernel = getattr(kernels, self._MULTI)     # (bound last: _run)
                kernel(*lists, **scalars, **own)
            else:
                kernel = getattr(kernels, self._HALF_MULTI)
                kernel(*lists[:2], masters, *lists[2:], **scalars, grad_scale=scale,
                       bfloat16=fmt)
            ops._calls.returned = True      # (see ops._kernel_began)

        kernel = ops._each_part     # (bound last: an interrupt before is before any kernel)
        kernel(kinds, step_format)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._HALF_MULTI = cls._KERNEL + "_half_multi"
        # whether the kernel takes the clip's factor as a grad scale (Adam's does)
        cls._SCALES = "grad_scale" in _registry.get(cls._KERNEL).scalars
        cls._MULTI = cls._KERNEL + "_multi"     # its list form's name on a backend
        # whether its weight decay may be decoupled (see _decays_own_grads)
        cls._DECOUPLES = cls._decoupled or "decoupled_weight_decay" in cls._KEYS
        # the torch class's options, its constructor's arguments (see _check_options)
        cls._TORCH_OPTIONS = frozenset(inspect.signature(_torch_base(cls)).parameters) - {
            "params"}

    def _init_state(self, p, group):
        """torch's lazy state of ``p``: ``step`` and zeros for every state tensor."""
        state = {"step": self._new_step()}
        for key in self._state_keys(group):
            state[key] = _zeros(p)
        return state


def _own_arithmetic(value):
    """Whether torch's step computes with the hyper-parameter ``value`` in arithmetic of its
    own, not Python's float arithmetic: a tensor's (in its dtype) or a NumPy scalar's (a
    ``np.float32`` one in float32), which the scalars here are then computed by too."""
    return not isinstance(value, (float, int))


def _narrow(value):
    """Whether ``value`` is a tensor or NumPy scalar narrower than float64 (torch's
    arithmetic with it rounds to its dtype)."""
    dtype = getattr(value, "dtype", None)
    return dtype is not None and dtype.itemsize < 8


def _one_minus(subtrahend, x):
    """What to give a kernel that computes ``1.0 - x`` in float64 where torch's step
    computes ``1 - subtrahend``: ``x``, or where ``subtrahend`` is narrower than float64
    (:func:`_narrow`: from a tensor hyper-parameter, and torch.tensor(0.9) is float32 even for
    float64 parameters), whose ``1 - subtrahend`` torch rounds to its dtype, the x' = ``1 - c`` for
    torch's value c, whose ``1.0 - x'`` is c exactly (both subtractions are exact in float64
    for a float32 c)."""
    if not _narrow(subtrahend):
        return x
    return 1.0 - float(1 - subtrahend)


def _torch_decay(group):
    """torch's decoupled weight decay factor ``1 - lr * weight_decay``: a tensor in a tensor
    lr's or weight_decay's dtype (torch's arithmetic), else a Python float."""
    return 1 - _to_scalar(group["lr"]) * _to_scalar(group["weight_decay"])


def _one_half_format(half_kernel, masters, scale, bfloat16, params, grads, *state,
                     grad_scale=None, **scalars):
    """The 16-bit ``half_kernel`` of a group whose parameters are all of one format, called as
    :meth:`_FastOptimizer._by_format` calls it (``grad_scale``, a kernel's own, is ``scale``)."""
    kernel = half_kernel    # (bound last: _run)
    kernel(params, grads, masters, *state, **scalars, grad_scale=scale, bfloat16=bfloat16)
    ops._calls.returned = True      # (see ops._kernel_began)


def _pick(part, *columns):
    """Each column's entries at the indices ``part`` (a column that is None stays None)."""
    return [None if col is None else [col[k] for k in part] for col in columns]


def _pick_cols(cols, part):
    return {key: [v[k] for k in part] for key, v in cols.items()}


_OWN_STEP = _FastOptimizer.step    # (see its docstring: a subclass's own step runs the hooks)
# (not traced by torch.compile; torch._dynamo, ~800 modules, is imported at its first call)
_EAGER_STEP = getattr(torch, "_disable_dynamo", torch.compiler.disable)(_OWN_STEP)


class SGD(_FastOptimizer, torch.optim.SGD):
    """``torch.optim.SGD`` stepped by fastopt's SGD kernel (:func:`fastopt.ops.
    foreach_sgd_step_`'s). State (torch's): ``momentum_buffer`` when momentum is used, which
    starts as the first step's grad (as does one set to None)."""

    _NEGATES_LR = True
    _KEYS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")
    _KERNEL = "sgd"
    _NOT_0D = {"dampening": TypeError, "weight_decay": TypeError}
    _STEPPED = False
    _NONE_IS_NEW = ("momentum_buffer",)     # torch's state.get: a None buffer starts anew

    def _state_keys(self, group):
        # (read as the step reads it: an array's != 0 has no truth value, which raised
        # before the checks that name it)
        return ("momentum_buffer",) if self._real(group, "momentum") != 0 else ()

    def _init_state(self, p, group):
        return {}       # the buffer is made by _make_plan; the kernel's first step fills it

    def _splits(self, plan):
        # new buffers take a call of their own (their first step copies the grad)
        return super()._splits(plan) or ("momentum_buffer" in plan.cols
                                         and len(set(plan.fresh)) > 1)

    def _check_group(self, group):
        ops._check_sgd(self._real(group, "lr"), self._real(group, "weight_decay"),
                       self._real(group, "momentum"), self._real(group, "dampening"))

    def _update(self, group, params, grads, cols, step, fresh, grad_scale):
        lr, wd = self._real(group, "lr"), self._real(group, "weight_decay")
        momentum, dampening = self._real(group, "momentum"), self._real(group, "dampening")
        ops._check_sgd(lr, wd, momentum, dampening)
        if type(group["dampening"]) is not float:   # torch's 1 - dampening of a tensor
            dampening = _one_minus(_to_scalar(group["dampening"]), dampening)
        if cols.get("momentum_buffer") is None or not any(fresh):
            parts = [(False, params, grads, cols)]
        else:   # a new buffer starts as the grad (torch's first step), decided per parameter
            parts = []
            for first in (True, False):
                part = [k for k, f in enumerate(fresh) if f == first]
                if part:
                    parts.append((first, *_pick(part, params, grads), _pick_cols(cols, part)))
        nesterov, maximize = bool(group["nesterov"]), bool(group["maximize"])

        def step_part(part):
            first, params, grads, cols = part
            buffers = cols.get("momentum_buffer")
            kernel = self._kernel_for(cols, grad_scale)     # (bound last: _run)
            kernel(params, grads, buffers, lr=lr, weight_decay=wd, momentum=momentum,
                   dampening=dampening, nesterov=nesterov, maximize=maximize,
                   first_step=first)
            ops._calls.returned = True      # (see ops._kernel_began)

        ops._each_part(parts, step_part)


class RMSprop(_FastOptimizer, torch.optim.RMSprop):
    """``torch.optim.RMSprop`` stepped by fastopt's RMSprop kernel (:func:`fastopt.ops.
    foreach_rmsprop_step_`'s). State (torch's): ``step``, ``square_avg``, ``momentum_buffer``
    (momentum > 0), ``grad_avg`` (centered)."""

    _NEGATES_LR = True
    _KEYS = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize")
    _KERNEL = "rmsprop"
    _NOT_0D = {"alpha": TypeError, "weight_decay": TypeError}
    _STEP_SCALARS = False   # torch counts its steps, and steps any count

    def _state_keys(self, group):
        momentum = self._real(group, "momentum")    # (as SGD's)
        return (("square_avg",) + (("momentum_buffer",) if momentum > 0 else ())
                + (("grad_avg",) if group["centered"] else ()))

    def _check_group(self, group):
        # torch bounds alpha by alpha >= 0 only (alpha = 1 keeps square_avg as it is)
        ops._check_lr_beta(self._real(group, "lr"), self._real(group, "alpha"), NONNEG,
                           self._real(group, "eps"), self._real(group, "weight_decay"),
                           self._real(group, "momentum"), beta_name="alpha")

    def _update(self, group, params, grads, cols, step, fresh, grad_scale):
        lr, alpha = self._real(group, "lr"), self._real(group, "alpha")
        eps = self._real(group, "eps")
        wd, momentum = self._real(group, "weight_decay"), self._real(group, "momentum")
        ops._check_lr_beta(lr, alpha, NONNEG, eps, wd, momentum, beta_name="alpha")
        grad_avg, buffers = cols.get("grad_avg"), cols.get("momentum_buffer")
        maximize = bool(group["maximize"])
        kernel = self._kernel_for(cols, grad_scale)     # (bound last: _run)
        kernel(params, grads, cols["square_avg"], grad_avg, buffers, lr=lr, alpha=alpha,
               eps=eps, weight_decay=wd, momentum=momentum, maximize=maximize,
               eps_inside_sqrt=False)
        ops._calls.returned = True      # (see ops._kernel_began)


class Adagrad(_FastOptimizer, torch.optim.Adagrad):
    """``torch.optim.Adagrad`` stepped by fastopt's Adagrad kernel (:func:`fastopt.ops.
    foreach_adagrad_step_`'s). State (torch's, created at construction as torch does):
    ``step``, ``sum``, and with them the ``master_param`` of a 16-bit parameter that requires
    grad: ``torch.distributed.checkpoint`` loads a checkpoint into the state dict of a fresh
    optimizer, which it makes by faking a step only where there is no state, so a master
    left to the first step was not loaded, and the resumed run drifted. (As for every class
    with 16-bit parameters, such a state dict then asks the checkpoint for masters: one saved
    by torch.optim, or from float32 parameters, loads with ``dcp.load(...,
    planner=DefaultLoadPlanner(allow_partial_load=True))``, the masters seeded from the
    parameters at the next step.)"""

    _KEYS = ("lr", "lr_decay", "eps", "weight_decay", "initial_accumulator_value",
             "maximize")
    _KERNEL = "adagrad"
    _NOT_0D = {"lr_decay": TypeError, "weight_decay": TypeError}

    def __init__(self, params: _torch_optimizer.ParamsT, *args: Any, **kwargs: Any) -> None:
        super().__init__(params, *args, **kwargs)
        # torch's __init__ made each ``sum`` in its parameter's dtype: a 16-bit parameter's
        # float32 one is made from the value itself, as a parameter added later gets it, and
        # its master beside it
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if p.dtype in _HALF and state and "sum" in state:
                    state["sum"] = torch.full_like(
                        p, self.defaults["initial_accumulator_value"], dtype=torch.float32,
                        memory_format=torch.preserve_format)
                    if p.requires_grad:     # (a frozen one's would never step)
                        state[MASTER] = _fresh_master(p)

    def _state_keys(self, group):
        return ("sum",)

    def _init_state(self, p, group):
        # torch fills a parameter added later from the constructor's value, not its group's
        value = self.defaults["initial_accumulator_value"]
        if p.is_complex():      # both parts, as torch's complex(value, value)
            value = complex(value, value)
        return {"step": self._new_step(),
                "sum": torch.full_like(p, value, dtype=_state_dtype(p),
                                      memory_format=torch.preserve_format)}

    def _check_group(self, group):
        ops._adagrad_clr(1, self._real(group, "lr"), self._real(group, "lr_decay"),
                         self._real(group, "weight_decay"), self._real(group, "eps"))

    def _update(self, group, params, grads, cols, step, fresh, grad_scale):
        wd, eps = self._real(group, "weight_decay"), self._real(group, "eps")
        clr = ops._adagrad_clr(step, self._real(group, "lr"), self._real(group, "lr_decay"), wd,
                               eps)
        lr, lr_decay = group["lr"], group["lr_decay"]
        if _own_arithmetic(lr) or _own_arithmetic(lr_decay):
            # torch folds a tensor's in its dtype
            clr = float(_to_scalar(lr) / (1 + (step - 1) * _to_scalar(lr_decay)))
        maximize = bool(group["maximize"])
        kernel = self._kernel_for(cols, grad_scale)     # (bound last: _run)
        kernel(params, grads, cols["sum"], clr=clr, eps=eps, weight_decay=wd, maximize=maximize)
        ops._calls.returned = True      # (see ops._kernel_began)


class Adam(_FastOptimizer, torch.optim.Adam):
    """``torch.optim.Adam`` stepped by fastopt's Adam kernel (:func:`fastopt.ops.
    foreach_adam_step_`'s); the gradient clip is its grad scale. State (torch's): ``step``,
    ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad), and ``master_param`` for
    16-bit parameters."""

    _KEYS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
             "decoupled_weight_decay")
    _KERNEL = "adam"
    _NOT_0D = {"weight_decay": TypeError}
    _CASTS_BETA1 = True

    def _state_keys(self, group):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ())

    def _check_group(self, group):
        ops._adam_scalars(1, self._real(group, "lr"), self._betas(group),
                          self._real(group, "eps"), self._real(group, "weight_decay"))

    def _update(self, group, params, grads, cols, step, fresh, grad_scale):
        lr, eps = self._real(group, "lr"), self._real(group, "eps")
        wd = self._real(group, "weight_decay")
        # ops' checks and folding (a scheduler may have set any lr), then the kernels directly
        beta1, beta2, step_size, bias_correction2 = ops._adam_scalars(
            step, lr, self._betas(group), eps, wd)
        beta1 = self._lerp_beta1(group, beta1)
        decoupled = self._decouples(group)
        step_size = self._step_size(group, step, step_size)
        beta2_t = group["betas"][1]
        if type(beta2_t) is not float and _narrow(beta2_t):
            # torch's bias_correction2 ** 0.5, a tensor of beta2's dtype, which it divides
            # by: the kernels take the float64 root of its square, which is that exactly
            root = float((1 - _to_scalar(beta2_t) ** step) ** 0.5)
            bias_correction2 = root * root
        if decoupled:
            lr, wd = self._decay_args(group, lr, wd)
        max_exp_avg_sqs, maximize = cols.get("max_exp_avg_sq"), bool(group["maximize"])
        kernel = self._kernel_for(cols, grad_scale)     # (bound last: _run)
        kernel(params, grads, cols["exp_avg"], cols["exp_avg_sq"], max_exp_avg_sqs, lr=lr,
               beta1=beta1, beta2=beta2, eps=eps, weight_decay=wd, step_size=step_size,
               bias_correction2=bias_correction2, grad_scale=grad_scale, decoupled=decoupled,
               maximize=maximize, eps_inside_sqrt=False)
        ops._calls.returned = True      # (see ops._kernel_began)


class AdamW(Adam, torch.optim.AdamW):
    """``torch.optim.AdamW`` (decoupled weight decay: its groups' ``decoupled_weight_decay``
    is True, as torch's) stepped by fastopt's Adam kernel; state as :class:`Adam`."""

    _decoupled = True


class Adadelta(_FastOptimizer, torch.optim.Adadelta):
    """``torch.optim.Adadelta`` stepped by fastopt's Adadelta kernel (:func:`fastopt.ops.
    foreach_adadelta_step_`'s). State (torch's): ``step``, ``square_avg``, ``acc_delta``."""

    _NEGATES_LR = True
    _KEYS = ("lr", "rho", "eps", "weight_decay", "maximize")
    _KERNEL = "adadelta"
    _NOT_0D = {"rho": TypeError, "weight_decay": TypeError}
    _STEP_SCALARS = False   # torch counts its steps, and steps any count

    def _state_keys(self, group):
        return ("square_avg", "acc_delta")

    def _check_group(self, group):
        ops._check_lr_beta(self._real(group, "lr"), self._real(group, "rho"), UNIT,
                           self._real(group, "eps"), self._real(group, "weight_decay"),
                           beta_name="rho")

    def _update(self, group, params, grads, cols, step, fresh, grad_scale):
        lr, rho = self._real(group, "lr"), self._real(group, "rho")
        eps, wd = self._real(group, "eps"), self._real(group, "weight_decay")
        ops._check_lr_beta(lr, rho, UNIT, eps, wd, beta_name="rho")
        maximize = bool(group["maximize"])
        kernel = self._kernel_for(cols, grad_scale)     # (bound last: _run)
        kernel(params, grads, cols["square_avg"], cols["acc_delta"], lr=lr, rho=rho, eps=eps,
               weight_decay=wd, maximize=maximize)
        ops._calls.returned = True      # (see ops._kernel_began)


class Adamax(_FastOptimizer, torch.optim.Adamax):
    """``torch.optim.Adamax`` stepped by fastopt's Adamax kernel (:func:`fastopt.ops.
    foreach_adamax_step_`'s). State (torch's): ``step``, ``exp_avg``, ``exp_inf``."""

    _KEYS = ("lr", "betas", "eps", "weight_decay", "maximize")
    _KERNEL = "adamax"
    _NOT_0D = {"weight_decay": TypeError}
    _BETAS_0D = ((0, TypeError),)    # (torch's errors)

    def _state_keys(self, group):
        return ("exp_avg", "exp_inf")

    def _check_group(self, group):
        ops._adamax_scalars(1, self._real(group, "lr"), self._betas(group),
                            self._real(group, "eps"), self._real(group, "weight_decay"))

    def _update(self, group, params, grads, cols, step, fresh, grad_scale):
        eps, wd = self._real(group, "eps"), self._real(group, "weight_decay")
        beta1, beta2, clr = ops._adamax_scalars(step, self._real(group, "lr"),
                                                self._betas(group), eps, wd)
        beta1 = self._lerp_beta1(group, beta1)
        clr = self._step_size(group, step, clr)
        maximize = bool(group["maximize"])
        kernel = self._kernel_for(cols, grad_scale)     # (bound last: _run)
        kernel(params, grads, cols["exp_avg"], cols["exp_inf"], beta1=beta1, beta2=beta2,
               eps=eps, weight_decay=wd, clr=clr, maximize=maximize)
        ops._calls.returned = True      # (see ops._kernel_began)


class NAdam(_FastOptimizer, torch.optim.NAdam):
    """``torch.optim.NAdam`` stepped by fastopt's NAdam kernel (:func:`fastopt.ops.
    foreach_nadam_step_`'s). State (torch's): ``step``, ``mu_product`` (a scalar tensor of
    torch's scalar dtype, float32, or float64 under ``torch.set_default_dtype(torch.float64)``,
    multiplied in its dtype as torch does), ``exp_avg``, ``exp_avg_sq``. torch's
    ``load_state_dict`` casts ``mu_product`` to the parameters' dtype, after which torch
    multiplies it in float64 for float64 parameters; here it keeps the scalar dtype, so a
    resumed run follows the uninterrupted trajectory."""

    _NEGATES_LR = True
    _KEYS = ("lr", "betas", "eps", "weight_decay", "momentum_decay",
             "decoupled_weight_decay", "maximize")
    _KERNEL = "nadam"
    # (momentum_decay makes the momentum torch multiplies its 0-d mu_product by in place)
    _NOT_0D = {"weight_decay": TypeError, "momentum_decay": RuntimeError}
    _BETAS_0D = ((0, RuntimeError), (1, TypeError))    # (torch's errors)
    _SCALAR_STATE = ("mu_product",)

    def _state_keys(self, group):
        return ("exp_avg", "exp_avg_sq")

    def _init_state(self, p, group):
        return {"step": self._new_step(), "mu_product": torch.tensor(1.0, dtype=_scalar_dtype()),
                **super()._init_state(p, group)}

    def _splits(self, plan):
        # products that differ, or are multiplied in other dtypes, take calls of their own
        return super()._splits(plan) or len(
            {(float(m), m.dtype) for m in plan.cols["mu_product"]}) > 1

    def _check_counts(self, plan):
        # and the products (the step multiplies a valid one by a factor in [0, 1))
        super()._check_counts(plan)
        for product in plan.tensors["mu_product"]:
            check_reals(mu_product=(float(product), UNIT))

    def _check_group(self, group):
        ops._nadam_scalars(1, 1.0, self._real(group, "lr"), self._betas(group),
                           self._real(group, "eps"), self._real(group, "weight_decay"),
                           self._real(group, "momentum_decay"))

    def _update(self, group, params, grads, cols, step, fresh, grad_scale):
        lr, eps = self._real(group, "lr"), self._real(group, "eps")
        wd, momentum_decay = self._real(group, "weight_decay"), self._real(group, "momentum_decay")
        # the kernel takes one product: parameters whose products differ (momentum_decay
        # changed between their first steps) or are multiplied in another dtype (torch's
        # float32 tensor, or float64 under set_default_dtype(torch.float64)) go in separate
        # calls
        products = [(float(m), m.dtype != np.float64) for m in cols["mu_product"]]
        # a tensor lr, beta1 or momentum_decay makes torch's momentum or coefficients
        # tensors, folded in their dtype (_nadam_folded)
        betas = self._betas(group)
        folded = (_own_arithmetic(group["lr"]) or _own_arithmetic(group["betas"][0])
                  or _own_arithmetic(group["momentum_decay"]))
        decoupled = self._decouples(group)
        kernel_lr, kernel_wd = self._decay_args(group, lr, wd) if decoupled else (lr, wd)
        maximize = bool(group["maximize"])

        def step_part(key):
            product, single = key
            part = [k for k, m in enumerate(products) if m == key]
            new, beta1, beta2, bias_correction2, grad_coef, avg_coef = ops._nadam_scalars(
                step, product, lr, betas, eps, wd, momentum_decay, single=single)
            beta1 = self._lerp_beta1(group, beta1)
            if folded:
                new, grad_coef, avg_coef = _nadam_folded(group, step, product, single)
            if _own_arithmetic(group["betas"][1]):     # (in its dtype)
                bias_correction2 = float(1 - _to_scalar(group["betas"][1]) ** step)
            part_cols = cols if len(part) == len(products) else _pick_cols(cols, part)
            part_params, part_grads = _pick(part, params, grads)
            before = [cols["mu_product"][k][()] for k in part]
            try:
                # the new products before the kernel call, taken back if it did not begin:
                # written after it, an interrupt between the two left them a step behind the
                # state and the count
                for k in part:
                    cols["mu_product"][k][()] = new
                kernel = self._kernel_for(part_cols, grad_scale)    # (bound last: _run)
                kernel(part_params, part_grads, part_cols["exp_avg"],
                       part_cols["exp_avg_sq"], lr=kernel_lr, beta1=beta1, beta2=beta2,
                       eps=eps, weight_decay=kernel_wd, bias_correction2=bias_correction2,
                       grad_coef=grad_coef, avg_coef=avg_coef, decoupled=decoupled,
                       maximize=maximize)
                ops._calls.returned = True      # (see ops._kernel_began)
            except BaseException as exc:
                if not ops._interrupted_kernel(exc):
                    for k, old in zip(part, before):
                        cols["mu_product"][k][()] = old
                raise

        ops._each_part(list(dict.fromkeys(products)), step_part)


def _nadam_folded(group, step, product, single):
    """NAdam's new ``mu_product`` (from ``product``, a float32 value if ``single``, else a
    float64 one), ``grad_coef`` and ``avg_coef`` as torch's step computes them from the
    group's lr, beta1 and momentum_decay: in torch's arithmetic, in a tensor's dtype where
    any is a tensor (a float32 torch.tensor(0.01) of float64 parameters: float32; its momentum
    from a float64 tensor beta1 multiplies the float32 product in float64)."""
    lr, beta1 = _to_scalar(group["lr"]), _to_scalar(group["betas"][0])
    momentum_decay = _to_scalar(group["momentum_decay"])
    mu = ops._nadam_momentum(step, beta1, momentum_decay)
    mu_next = ops._nadam_momentum(step + 1, beta1, momentum_decay)
    # torch's ``mu_product *= mu`` on its 0-d tensor
    new = float(torch.tensor(product, dtype=torch.float32 if single else torch.float64).mul_(mu))
    # (-(lr * x), which is -lr * x, but for NumPy's bool, which does not negate)
    return (new, float(-(lr * (1.0 - mu)) / (1.0 - new)),
            float(-(lr * mu_next) / (1.0 - new * mu_next)))


class RAdam(_FastOptimizer, torch.optim.RAdam):
    """``torch.optim.RAdam`` stepped by fastopt's RAdam kernel (:func:`fastopt.ops.
    foreach_radam_step_`'s). State (torch's): ``step``, ``exp_avg``, ``exp_avg_sq``."""

    _KEYS = ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay", "maximize")
    _KERNEL = "radam"
    _NOT_0D = {"weight_decay": TypeError}
    _BETAS_0D = ((1, TypeError),)    # (torch's errors)

    def _state_keys(self, group):
        return ("exp_avg", "exp_avg_sq")

    def _check_group(self, group):
        ops._radam_scalars(1, self._real(group, "lr"), self._betas(group),
                           self._real(group, "eps"), self._real(group, "weight_decay"))

    def _update(self, group, params, grads, cols, step, fresh, grad_scale):
        lr, eps = self._real(group, "lr"), self._real(group, "eps")
        wd = self._real(group, "weight_decay")
        beta1, beta2, step_size, adaptive_scale, rectified = ops._radam_scalars(
            step, lr, self._betas(group), eps, wd)
        beta1 = self._lerp_beta1(group, beta1)
        betas = group["betas"]
        if _own_arithmetic(betas[0]) or _own_arithmetic(betas[1]):
            # torch's bias corrections and rectification are tensors of a beta's dtype
            beta1_t, beta2_t = map(_to_scalar, betas)
            bias_correction2 = 1 - beta2_t ** step
            step_size = float(lr) / float(1 - beta1_t ** step)
            rect = ops._radam_rect(step, beta2_t, bias_correction2)
            rectified = rect is not None
            adaptive_scale = float(bias_correction2 ** 0.5) * float(rect) if rectified else 1.0
        decoupled = self._decouples(group)
        if decoupled:
            lr, wd = self._decay_args(group, lr, wd)
        maximize = bool(group["maximize"])
        kernel = self._kernel_for(cols, grad_scale)     # (bound last: _run)
        kernel(params, grads, cols["exp_avg"], cols["exp_avg_sq"], lr=lr, beta1=beta1,
               beta2=beta2, eps=eps, weight_decay=wd, step_size=step_size,
               adaptive_scale=adaptive_scale, rectified=rectified, decoupled=decoupled,
               maximize=maximize)
        ops._calls.returned = True      # (see ops._kernel_began)


# What each constructor argument does here (type, description), for the classes' Parameters
# sections, which list torch's constructor arguments (each class takes them, passed through to
# torch) and max_grad_norm, fastopt's own
_ARGUMENTS = {
    "params": ("iterable of Tensor, of (name, Tensor) pairs, or of dicts",
               "The parameters, as torch.optim takes them: CPU tensors (float32, float64, "
               "complex64, complex128, bfloat16 or float16) with dense grads; dicts are param "
               "groups, whose entries override the defaults."),
    "lr": ("float or Tensor", "Learning rate (a one-element tensor as torch takes it)."),
    "momentum": ("float", "Momentum factor."),
    "dampening": ("float", "Dampening of the grad's share of the momentum buffer."),
    "weight_decay": ("float", "Weight decay: an L2 term added to the grad, or the parameters "
                     "decayed directly where the decay is decoupled (AdamW)."),
    "nesterov": ("bool", "Nesterov momentum."),
    "maximize": ("bool", "Ascend the objective instead of descending."),
    "foreach": ("bool or None", "torch's implementation switch: any value (fastopt makes one "
                "multi-tensor call per param group)."),
    "fused": ("bool or None", "None or False: fastopt's step is fused already (True, torch's "
              "own fused kernel, raises ValueError)."),
    "capturable": ("bool", "False (True, CUDA/XPU graph capture, raises ValueError)."),
    "differentiable": ("bool", "False (True raises ValueError: the kernels do not record "
                       "autograd history)."),
    "alpha": ("float", "Smoothing constant of the average of squared grads."),
    "eps": ("float", "Added to the denominator for numerical stability."),
    "centered": ("bool", "Divide by the grads' estimated variance (keeps their average)."),
    "lr_decay": ("float", "Learning-rate decay: step t uses lr / (1 + (t - 1) * lr_decay)."),
    "initial_accumulator_value": ("float", "Starting value of the sum of squared grads."),
    "betas": ("tuple of two floats", "Decay rates of the running averages of the grad and of "
              "its square (Adamax: of its infinity norm)."),
    "amsgrad": ("bool", "Divide by the largest second moment so far (``max_exp_avg_sq``)."),
    "decoupled_weight_decay": ("bool", "Decay the parameters directly (AdamW's rule) instead "
                               "of adding an L2 term to the grad."),
    "rho": ("float", "Decay rate of the averages of squared grads and of squared updates."),
    "momentum_decay": ("float", "NAdam's momentum decay (psi)."),
    CLIP: ("float or None", "fastopt's own: clip each param group's grads to this global L2 "
           "norm inside the step, with the numbers of ``torch.nn.utils.clip_grad_norm_("
           "group_params, max_grad_norm)`` before the step (a group may set its own; None: no "
           "clip, and the groups hold no such key, as torch.optim's)."),
}


def _document_constructor(cls):
    """Give ``cls`` (a subclass of a torch.optim class) the signature of what it takes, the
    torch class's constructor plus the keyword ``max_grad_norm`` (its own ``__init__`` passes
    torch's arguments through as ``*args, **kwargs``), and a Parameters section listing them."""
    base = _torch_base(cls)
    signature = inspect.signature(base)
    arguments = [*signature.parameters.values(),
                 inspect.Parameter(CLIP, inspect.Parameter.KEYWORD_ONLY, default=None,
                                   annotation=float | None)]
    cls.__signature__ = signature.replace(parameters=arguments)
    lines = ["", "Parameters", "----------"]
    for argument in arguments:
        kind, text = _ARGUMENTS.get(argument.name,
                                    ("", f"As ``torch.optim.{base.__name__}``'s."))
        default = "" if argument.default is argument.empty else f", default {argument.default!r}"
        lines.append(f"{argument.name} : {kind}{default}")
        lines.extend(textwrap.wrap(text, 88, initial_indent="    ", subsequent_indent="    "))
    if cls.__doc__ is not None:     # (python -OO drops docstrings)
        cls.__doc__ = inspect.cleandoc(cls.__doc__) + "\n" + "\n".join(lines)


for _cls in (SGD, RMSprop, Adagrad, Adam, AdamW, Adadelta, Adamax, NAdam, RAdam):
    _document_constructor(_cls)
del _cls
