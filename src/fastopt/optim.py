"""Optimizers over the functional kernels, shaped like torch.optim.

``params`` is a dict ``name -> ndarray`` (the course's ``parameters``), a list of ndarrays, or a
list of param-group dicts. ``step(grads)`` takes the grads in the same structure: a dict keyed by
the parameter names or by the course's ``"d" + name``, or a sequence in parameter order. Every
grad is checked before any array is written, so a step that raises changes nothing.
"""
import copy
import operator
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Mapping
from itertools import repeat

from typing import Any

import numpy as np

from . import _validate, ops
from ._hyper import (BETAS, NONNEG, UNIT, UNIT_OPEN, _shown, check_betas, check_flag,
                     check_real, check_real_type)
from ._layout import like_lines
from ._validate import FLOAT_TYPES
from .arena import ParameterArena, _GradDict

# what the optimizers take (see above): parameters by name, in a list, or as param groups
# ({"params": ..., <hyper-parameter overrides>}); grads by name or in parameter order, None
# for a parameter without a grad (dict and list are spelled with and without None: a
# dict[str, ndarray] is no dict[str, ndarray | None] to a type checker); arrays and groups
# as one Iterable (as Iterable[ndarray] | Iterable[dict[str, Any]], mypy had inferred
# README's list of two groups, one with an lr, as a list[object])
Params = dict[str, np.ndarray] | Iterable[np.ndarray | dict[str, Any]]
ParamGroup = dict[str, Any]
Grads = (dict[str, np.ndarray] | dict[str, np.ndarray | None] | list[np.ndarray]
         | list[np.ndarray | None] | tuple[np.ndarray | None, ...])

_NOT_HYPER = ("params", "param_names")
_MISSING = object()
FLAG = "flag"      # a _BOUNDS entry: True or False
_DIGITS = "0123456789"
_FLAT = object()   # a group's grads are its arena stretch's own (Optimizer._split)
_ALL = slice(None)   # a _Batch of every parameter of its group


# (grads in parameter order for parameters given by name: same-shaped ones swapped
# silently where the order differs from the dict's)
NAMED_GRADS_SEQUENCE = ("params were given by name (a dict): pass grads as a dict keyed by "
                        "name or 'd' + name, not a sequence")


def _stray_keys(grads, names):
    """Keys of the dict ``grads`` naming no parameter of ``names`` but shaped like one's key:
    the same stem (the name without its digits) as a parameter, e.g. ``dW3`` or ``W3`` beside
    ``W1``, ``W2`` (a model's grad for a parameter the optimizer does not have)."""
    names = set(names)
    stems = {n.rstrip(_DIGITS) for n in names if isinstance(n, str)}
    strays = []
    for key in grads:
        if not isinstance(key, str) or key in names or key[:1] == "d" and key[1:] in names:
            continue
        bare = key[1:] if key[:1] == "d" else key
        if key.rstrip(_DIGITS) in stems or bare.rstrip(_DIGITS) in stems:
            strays.append(repr(key))
    return strays


def _doubled_key(grads, names):
    """For the dict ``grads``, a message naming the first parameter of ``names`` whose grad it
    holds under both the name and ``"d" + name`` as different arrays (which one to step with
    is ambiguous: ``{**arena.grads, "dW": new}`` keeps the arena's under 'W'), else None."""
    known = set(names)
    for name in names:
        key = _course_key(name)
        if (key is not None and key in grads and key not in known and name in grads
                and grads[key] is not grads[name]):
            return (f"grads has both {name!r} and {key!r} for parameter {name!r} (one key per "
                    "parameter: its name or 'd' + name)")
    return None


def _by_name(grads, names):
    """The grads of the parameters ``names`` from the dict ``grads``, in order: each under its
    name or the course's ``"d" + name``; ValueError for a parameter with neither, or for
    keys :func:`_doubled_key` or :func:`_stray_keys` find (shared with ShardedOptimizer)."""
    matched, known = [], None
    for name in names:
        g = grads.get(name, _MISSING)
        if g is _MISSING:
            key = _course_key(name)
            g = _MISSING if key is None else grads.get(key, _MISSING)
            if g is not _MISSING:
                # not when "d" + name is another parameter's own name ('W' beside 'dW':
                # grads["dW"] is dW's, and W has none)
                if known is None:
                    known = set(names)
                if key in known:
                    g = _MISSING
            if g is _MISSING:
                expected = (repr(name) if key is None or key in (known or ()) else
                            f"{name!r} or {key!r}")
                why = (f"; {key!r} is another parameter's name, so grads[{key!r}] is that "
                       "parameter's grad" if key in (known or ()) else "")
                raise ValueError(f"grads has no entry for parameter {name!r} "
                                 f"(expected key {expected}{why})")
        matched.append(g)
    # more keys than parameters: the course's caches (dA1, dZ1) ride along, but a parameter's
    # grad under a name no parameter has is a mistake (the arena's grads hold every arena
    # parameter's, for optimizers over a part of them)
    if len(grads) > len(matched) and not isinstance(grads, _GradDict):
        doubled = _doubled_key(grads, names)
        if doubled:
            raise ValueError(doubled)
        strays = _stray_keys(grads, names)
        if strays:
            raise ValueError(f"grads has {', '.join(strays)} but there is no such "
                             "parameter (keys are a parameter's name or 'd' + name; for an "
                             "optimizer over some of a model's parameters, pass their grads "
                             "only)")
    return matched


def _arena_grads(grads, params):
    """The grad views that ``grads``, an arena's ``arena.grads``, holds for ``params``, in
    order; None unless ``grads`` is an arena's and every parameter a view of that arena."""
    if not isinstance(grads, _GradDict):
        return None
    views = []
    for p in params:
        span = ParameterArena.span_of([p])
        if span is None or span.arena.grads is not grads:
            return None
        views.append(span.grad_views[0])
    return views


def _course_key(name):
    """The course's key for parameter ``name``'s grad, ``"d" + name``; None for a name that is
    not a str (a params dict keyed by ints or tuples: such a key is matched as it is)."""
    return "d" + name if isinstance(name, str) else None


def _pair(betas):
    """``betas`` as a tuple, as torch's groups hold it (anything else is left for the check to
    refuse by name)."""
    return tuple(betas) if isinstance(betas, (list, tuple, np.ndarray)) else betas


def _mutable(value):
    """Whether a hyper-parameter's value can change in place (betas as a list or an array, an
    lr as a 0-d array, a tuple holding one), unseen by the group's dict."""
    if isinstance(value, tuple):
        return any(map(_mutable, value))
    return isinstance(value, (list, np.ndarray))


def _check_hyper(name, value, bounds):
    """One hyper-parameter: a flag, a betas pair or a real number in ``bounds``."""
    if bounds is FLAG:
        check_flag(name, value)
    elif bounds is BETAS:
        check_betas(name, value)
    else:
        check_real(name, value, bounds)


# --------------------------------------------------------------------------- state containers
_state_version = 0       # bumped when state is changed from outside an optimizer (see _State)
_params_version = 0      # bumped when a group's params list changes (_Params, _Group)
_MAX_STEP = 2.0 ** 53   # the largest step count a state may hold (exact as a float)
_set = dict.__setitem__  # the optimizers' own writes into state: no plan goes stale


def _group_params(params):
    """A param group's ``params`` as (list of its arrays, their names or None): a dict of named
    arrays, one array, or an iterable of arrays; anything else (an int, a str: list() had
    raised 'int object is not iterable' or split the str) TypeError."""
    if isinstance(params, dict):
        return list(params.values()), list(params)
    if isinstance(params, np.ndarray):
        return [params], None
    if isinstance(params, (str, bytes)) or not hasattr(params, "__iter__"):
        raise TypeError("a param group's 'params' must be an array, a dict or a sequence of "
                        f"arrays, got {type(params).__name__}")
    return list(params), None


def _first_readonly(arrays):
    """The index of the first array of ``arrays`` that is not writeable, or -1; in C when
    the compiled kernels are loaded (never imported from here: fastopt._backend decides)."""
    kernels = sys.modules.get("fastopt._kernels")
    if kernels is not None and hasattr(kernels, "first_readonly"):
        return kernels.first_readonly(arrays)
    for k, a in enumerate(arrays):
        if not a.flags.writeable:
            return k
    return -1


def _first_unlike(arrays, likes):
    """The index of the first array of ``arrays`` that is not writeable or not of the dtype
    (either byte order) and shape of the array at its index in ``likes``, or -1; in C when
    the compiled kernels are loaded."""
    kernels = sys.modules.get("fastopt._kernels")
    if kernels is not None and hasattr(kernels, "first_unlike"):
        return kernels.first_unlike(arrays, likes)
    for k, (a, b) in enumerate(zip(arrays, likes)):
        if (not a.flags.writeable or a.dtype.newbyteorder("=") != b.dtype.newbyteorder("=")
                or a.shape != b.shape):
            return k
    return -1


def _state_changed():
    global _state_version
    _state_version += 1


def _params_changed():
    global _params_version
    _params_version += 1


def _check_param(label, p):
    """Raise naming parameter ``label`` unless ``p`` is an ndarray the kernels can update: a
    plain one (no arithmetic of its own: _validate.has_own_arithmetic), float32 or float64,
    writeable."""
    if not isinstance(p, np.ndarray):
        raise TypeError(f"parameter {label} must be a numpy.ndarray, got {type(p).__name__}")
    _validate.check_plain(f"parameter {label}", p)
    if p.dtype.type not in FLOAT_TYPES:     # (either byte order, as the kernels)
        raise TypeError(f"parameter {label} must have dtype float32 or float64, got {p.dtype}")
    if not p.flags.writeable:
        raise ValueError(f"parameter {label} is read-only; parameters are updated in place")
    _validate.check_writeable(f"parameter {label}", p)     # (elements sharing memory)


class _Watched(dict):
    """A dict that is told (``_changed(value)``, value None for removals) of every change
    made through its methods; the optimizers' own writes go through ``dict.__setitem__``."""

    def __setitem__(self, key, value):
        self._changed(value)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key):
        self._changed(None)
        dict.__delitem__(self, key)

    def pop(self, *args):
        self._changed(None)
        return dict.pop(self, *args)

    def popitem(self):
        self._changed(None)
        return dict.popitem(self)

    def clear(self):
        self._changed(None)
        dict.clear(self)

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other):
        self.update(other)
        return self

    def __reduce__(self):     # rebuilt without _changed (pickle would call __setitem__)
        return type(self), (dict(self),), dict(self.__dict__) or None


class _Params(list):
    """A param group's ``params``: a list that, changed in place (``group["params"][1] = W``),
    has every optimizer make its plans again, as assigning ``group["params"]`` does. (A plan
    kept the arena stretch of the arrays the list held: the arena path went on stepping the
    view that was replaced, never the array the group held instead), and renumber their
    parameters (:meth:`Optimizer._sync_groups`)."""

    __slots__ = ()


def _telling(name):
    method = getattr(list, name)

    def changed(self, *args, **kwargs):
        _params_changed()
        _state_changed()
        return method(self, *args, **kwargs)
    changed.__name__ = name
    return changed


for _name in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend",
              "insert", "pop", "remove", "clear", "sort", "reverse"):
    setattr(_Params, _name, _telling(_name))


class _Group(_Watched):
    """A param group (a dict, as torch's). Changing it marks it for checking at the next step,
    before anything is written; its ``params``, a list, is held as a :class:`_Params`."""

    checked = False
    # the course's names of hyper-parameters (RMSprop's beta): alias -> (key, the alias's
    # bounds or None); one assigned is checked in its range and stored as its key, as the
    # constructor and add_param_group take it (kept as an unknown key, it was ignored)
    aliases: dict[str, tuple[str, Any]] = {}

    def __setitem__(self, key, value):
        if key == "params":
            if type(value) is list:
                value = _Params(value)
            _params_changed()
        elif key in self.aliases:
            alias = key
            key, bounds = self.aliases[alias]
            if bounds is not None:
                check_real(alias, value, bounds)
        _Watched.__setitem__(self, key, value)

    def setdefault(self, key, default=None):
        return _Watched.setdefault(self, self.aliases.get(key, (key,))[0], default)

    def update(self, *args, **kwargs):
        items = dict(*args, **kwargs)
        # (checked before any is set, as one by one a bad beta came after the others were)
        for alias, (key, bounds) in self.aliases.items():
            if alias in items:
                if key in items:
                    raise TypeError(f"a param group takes {key} or its alias {alias}, not both")
                if bounds is not None:
                    check_real(alias, items[alias], bounds)
        _Watched.update(self, items)

    def __missing__(self, key):     # (group["beta"] reads alpha)
        if key in self.aliases:
            return self[self.aliases[key][0]]
        raise KeyError(key)

    def _changed(self, value):
        self.checked = False


class _State(_Watched):
    """One parameter's state (torch's keys). Changing an entry makes the optimizer re-read its
    state; an array assigned here is the state from then on and is updated in place (as a
    tensor in torch's state), so the arena path leaves such a parameter group alone."""

    adopted = False
    # given from outside (assigned to opt.state, or loaded), not made by a step: saved by
    # state_dict() even when empty, as torch saves an emptied entry, where an empty state a
    # step made (SGD's without momentum) is not saved, as torch makes none
    given = False

    def _changed(self, value):
        _state_changed()
        self.given = True           # (emptied by hand, as by clear(): torch saves it)
        if isinstance(value, np.ndarray):
            self.adopted = True


class _StateDict(_Watched):
    """``optimizer.state``: flat parameter index -> :class:`_State`. A dict assigned to an entry
    is stored as a ``_State`` holding its items."""

    def _changed(self, value):
        _state_changed()

    def __setitem__(self, key, value):
        if not isinstance(value, _State):
            value = _adopt(value)
        _state_changed()
        dict.__setitem__(self, key, value)


def _adopt(entries):
    """A ``_State`` of ``entries`` (a dict) given from outside."""
    if not isinstance(entries, dict):
        raise TypeError(f"a parameter's state must be a dict, got {type(entries).__name__}")
    state = _State(entries)
    state.adopted = any(isinstance(v, np.ndarray) for v in entries.values())
    state.given = True
    return state


class _Batch:
    """The parameters of one kernel call, as ``_update`` sees them: their state arrays by key
    (``columns``, :meth:`new_column`) and their scalar state (:meth:`scalar`,
    :meth:`set_scalar`). On the arena path ``states`` is one dict of flat buffers.
    State the call creates is stored by :meth:`commit`, and the new states in ``made`` by
    the optimizer, once the call stepped (``Optimizer._advance``)."""

    def __init__(self, states, slots, index, spread=None, made=None):
        self.states = states      # the parameters' state dicts, or [flat buffers by key]
        self.slots = slots        # scalar key -> the group's array of it, one slot per param
        self.steps = slots.get("step")    # the step counts' slots (None: no step count)
        # the same through a memoryview, which reads (and writes one) ~0.3 us a step faster
        # than NumPy's item() and fill()
        self.counts = None if self.steps is None else memoryview(self.steps)
        self.index = index        # these parameters' slots: _ALL or a list
        # key -> the parameters' arrays, in order, for every array key all states have (a
        # plan's batch keeps them from step to step)
        self.columns = {key: [s[key] for s in states] for key in states[0]
                        if key not in slots and all(key in s for s in states)}
        self.spread = spread      # arena path: (states, offsets, params) to view new state
        self.pending = []         # (state, key, array) made by this call
        self.made = [] if made is None else made    # (index, state): new states it steps
        self.first = 0 if isinstance(index, slice) else index[0]
        self.optional = {}        # key -> column, of the state this call's options use
        self.wanted = ()          # the _option_state they were made for

    def has(self, key):
        return key in self.states[0]

    def new_column(self, key, params, fill, slot):
        """``columns[key]``, with a new array like the parameter (:func:`like_lines`, holding
        ``fill``, at ``slot``) where a state lacks ``key`` (state an option switched on later
        needs, as torch creates it), kept in ``columns`` (until :meth:`discard`)."""
        col = self.columns.get(key)
        if col is not None:
            return col
        col = []
        for p, s in zip(params, self.states):
            a = s.get(key)
            if a is None:
                a = like_lines(p, fill, slot)
                self.pending.append((s, key, a))
            col.append(a)
        self.columns[key] = col
        return col

    def discard(self):
        """Forget the state made for a call that did not step."""
        for _, key, _ in self.pending:
            self.columns.pop(key, None)
        self.pending = []
        self.optional, self.wanted = {}, None

    def scalar(self, key):
        """The parameters' (common) ``key`` scalar: step, NAdam's mu_product."""
        return self.slots[key][self.first].item()

    def set_scalar(self, key, value):
        self.slots[key][self.index] = value

    def commit(self):
        """Store the state the call made (on the arena path: the flat buffer, and a view of
        it in each parameter's state)."""
        for s, key, a in self.pending:
            _set(s, key, a)
            if self.spread is not None:
                states, offsets, params = self.spread
                for ps, p, lo, hi in zip(states, params, offsets, offsets[1:]):
                    _set(ps, key, a[lo:hi].reshape(p.shape))
        self.pending = []


def _discard(calls):
    """:meth:`_Batch.discard` every batch of ``calls`` (each group's kernel calls)."""
    for group_calls in calls:
        for _, _, batch in group_calls:
            batch.discard()


class _Plan:
    """How one param group steps, made at its first step and again when its hyper-parameters
    or any state changed (``version``): the parameters' states, whether they step together
    (``uniform``: every one has state, all in one phase), on the arena path the span and the
    flat state buffers, and the :class:`_Batch` of each path's one kernel call (kept from step
    to step with the columns of state arrays it gathered)."""

    def __init__(self, states, uniform, span, flat, list_batch, flat_batch, alone, made,
                 mutable, views):
        self.version = _state_version
        self.states = states
        self.uniform = uniform
        self.span = span          # an ArenaSpan when the group steps as one flat stretch
        self.flat = flat          # key -> flat state buffer over the span
        self.list_batch = list_batch    # the list path's (None: not uniform, it steps in parts)
        self.flat_batch = flat_batch    # the arena path's (None: no span)
        # the optimizer's only group, stepped as a list: Optimizer.step's fast path
        self.alone = alone
        self.made = made          # (index, state) made for the arena path, not stored yet
        self.mutable = mutable    # a hyper-parameter is held in a mutable object (_mutable)
        self.views = views        # the arena path's parameter and state views (_plan)


def _views_at(buf, arrays, offsets):
    """Whether ``arrays`` are ``buf[offsets[k]:offsets[k + 1]]`` in turn and fill ``buf``
    (each state at its own parameter's place: states swapped by hand are not; an empty one
    may lie anywhere, as NumPy places an empty view)."""
    start, size = buf.__array_interface__["data"][0], buf.itemsize
    return buf.size == offsets[-1] and all(
        a.size == hi - lo and (a.size == 0 or (
            a.base is buf.base and a.flags.c_contiguous and a.dtype == buf.dtype
            and a.__array_interface__["data"][0] == start + lo * size))
        for a, lo, hi in zip(arrays, offsets, offsets[1:]))


class _ArenaParams:
    """Parameters that are views ``first, first + 1, ...`` of a ParameterArena, as an
    optimizer pickles them (the arena pickles its buffers once; the views are rebuilt)."""

    def __init__(self, arena, first, count):
        self.arena, self.first, self.count = arena, first, count

    def resolve(self):
        return list(self.arena.params.values())[self.first:self.first + self.count]


_ADAM_BOUNDS = dict(lr=NONNEG, betas=BETAS, eps=NONNEG, weight_decay=NONNEG, maximize=FLAG)


# every optimizer's step lock (fastopt.optim's and fastopt.torch's, all made by _step_lock),
# so that a fork can wait for the steps in progress
_STEP_LOCKS: "weakref.WeakSet[Any]" = weakref.WeakSet()
# the forking thread -> the step locks it took, and those it gave up waiting for
_held_for_fork: dict[int, tuple[list, list]] = {}
STEP_FORK_WAIT = 60.0    # seconds a fork waits for other threads' steps (_hold_step_locks)


def _step_lock():
    """A new lock for an optimizer's steps, which ``os.fork()`` takes (see _hold_step_locks)."""
    lock = threading.RLock()
    _STEP_LOCKS.add(lock)
    return lock


def _hold_step_locks():
    """Before a fork: take every optimizer's step lock, as CPython takes its own locks. A
    child forked during a step in another thread would have that step half done, and its
    lock held by a thread the child does not have: its first step() would wait forever.

    The wait is bounded (STEP_FORK_WAIT seconds in all), as the launch gate's is: a step that
    cannot end until the fork does had hung the parent for good (a numba first call in
    another thread, importing, waited for logging's lock, which logging's fork handler held
    through the fork: fastopt._backend now imports logging first). Past it the fork goes on,
    with a warning, and the child resets the locks not taken: its copy of such an optimizer
    may be half stepped."""
    # (the WeakSet's own set of references, copied in one C call: iterating the WeakSet
    # raises should another thread make an optimizer meanwhile; in one order, so that two
    # threads forking at once take them in turn)
    locks = [ref() for ref in tuple(_STEP_LOCKS.data)]
    locks = sorted((lock for lock in locks if lock is not None), key=id)
    held = _held_for_fork[threading.get_ident()] = ([], [])
    deadline = time.monotonic() + STEP_FORK_WAIT
    for lock in locks:
        if lock._is_owned():
            continue    # (a fork inside a step of this thread: its own hold, the child's too)
        # listed before it is taken: what a signal handler raises (Ctrl-C) as the acquire
        # returns stops this, and the fork goes on (_release_step_locks lets go of it, or
        # finds it was not taken)
        held[0].append(lock)
        if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            del held[0][-1]
            held[1].append(lock)
    if held[1]:
        warnings.warn(f"fastopt: a fork waited {STEP_FORK_WAIT:g} s for {len(held[1])} "
                      "optimizer(s) locked by other threads (a step, a state dict, a copy), "
                      "and goes on: the child's copy of those optimizers may be half stepped",
                      RuntimeWarning, stacklevel=2)


def _release_step_locks(child=False):
    """After a fork, in the parent and in the child (whose forking thread has the same id).
    A Python handler, as logging's own: an interrupt (Ctrl-C) raised as it begins leaves the
    locks with the forking thread, whose steps go on (they are re-entrant) while other
    threads' wait."""
    taken, missed = _held_for_fork.pop(threading.get_ident(), ([], []))
    for lock in taken:
        try:
            lock.release()
        except RuntimeError:    # (not taken: its acquire was interrupted, another thread's)
            missed.append(lock)
    if child:
        for lock in missed:     # held by a thread the child does not have
            lock._at_fork_reinit()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_hold_step_locks, after_in_parent=_release_step_locks,
                        after_in_child=lambda: _release_step_locks(child=True))


def _deepcopy_locked(opt, memo):
    """``copy.deepcopy(opt)`` as copy would make it (the class's pickling protocol), under the
    lock ``opt``'s steps hold, as state_dict() takes it: a copy made while another thread
    steps is the optimizer between two steps, not half of one."""
    with opt._lock:
        return copy._reconstruct(opt, memo, *opt.__reduce_ex__(4))


class Optimizer:
    """Base class: parameter groups, grad matching and validation, state dicts.

    Subclasses define ``_BOUNDS`` (each hyper-parameter's range: NONNEG, UNIT, ..., or FLAG),
    ``_STATE`` and ``_OPTIONAL_STATE`` (torch's state keys: always there once a parameter has
    state; created when an option needs them), ``_init_state(param, group)`` (by default
    ``step`` 0 and zeros for the other keys of ``_STATE``) and
    ``_update(group, params, grads, batch, step)``: one multi-tensor kernel call for the
    parameters sharing a phase (``_phase``: the step count; NAdam's adds its mu product),
    where ``step`` is the new count (None for optimizers without one; the base class stores it
    after the call succeeds) and ``batch`` (a :class:`_Batch`) gives their state arrays by key
    and holds the state the call creates until it succeeded, so a refused call changes
    nothing.

    ``state`` is the truth, as in torch: arrays assigned into ``opt.state[i]`` are what later
    steps update in place. ``step`` (and NAdam's ``mu_product``) are read-only 0-d arrays, as
    torch's are 0-d tensors: views of one array per group, so a step over a thousand
    parameters advances every count with one NumPy operation. Assign a new value to change
    one. ``param_groups`` is edited as torch's: hyper-parameters, groups popped, and a group's
    ``params`` list, each array's state going with it (:meth:`_sync_groups`).

    Parameters
    ----------
    params : dict, sequence of ndarray, or sequence of dict
        Parameters by name (the course's ``parameters``), a list of arrays, or param groups
        (``{"params": ..., <hyper-parameter overrides>}``).
    defaults : dict
        The subclass's hyper-parameters, the values groups take unless they override them.
    """

    # hyper-parameter -> its range (NONNEG, UNIT_OPEN, UNIT, BETAS) or FLAG
    _BOUNDS: dict[str, Any] = {}
    # an option the steps honour where a group has it, not among the defaults -> (its range,
    # the value a group without it steps with)
    _OPTIONAL: dict[str, tuple[Any, Any]] = {}
    # a hyper-parameter's other name (the course's, which older state dicts used) -> torch's,
    # in param groups and state dicts
    _RENAMED: dict[str, str] = {}
    # an alias's own range, where it is another name's (the course's beta, API.md's [0, 1))
    _ALIAS_BOUNDS: dict[str, tuple] = {}
    _STATE: tuple[str, ...] = ()           # state keys every parameter with state has
    _OPTIONAL_STATE: tuple[str, ...] = ()  # state keys created when an option needs them
    # state entries that are numbers, not arrays (besides "step"); at most one, whose new value
    # _update returns
    _scalar_state: tuple[str, ...] = ()

    def __init__(self, params: Params, defaults: dict[str, Any]) -> None:
        self._check(defaults)
        # held by step, state_dict and load_state_dict: the kernels release the GIL, and two
        # threads stepping one optimizer at once would both read step count t, both write
        # t + 1 and interleave their updates of the same state arrays
        self._lock = _step_lock()
        # the groups, by id, a kernel call stepped since this was last emptied:
        # ShardedOptimizer empties it before its shard's step, to tell after an exception
        # which groups of the shard stepped (one parameter each: one call a group)
        self._stepped_groups: set[int] = set()
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self._state = _StateDict()   # flat parameter index -> {"step": ..., state arrays}
        self._plans: dict[int, _Plan] = {}    # group index -> its _Plan (how it steps)
        # (group index, key) -> the flat buffer an arena group's loaded state is views of
        self._loaded_flat: dict = {}
        # (plans, flat params, their arrays by owner, label): what _check_overlaps found
        # disjoint, kept for the grads' check while the plans are the same
        self._disjoint: tuple | None = None
        # per group: scalar state key -> one slot per parameter
        self._slots: list[dict[str, np.ndarray]] = []
        self._starts: list[int] = []   # per group: the flat index of its first parameter
        # the groups _starts, _slots and the state's indices were made for (_sync_groups),
        # and per group its params list and the arrays that list held then
        self._groups: list[dict[str, Any]] = []
        self._held: list[tuple[_Params, tuple[np.ndarray, ...]]] = []
        self._synced = _params_version  # the _params_version they were checked at
        # the state of arrays taken out of the groups, by id: back if the array comes back
        # (torch's state is keyed by the tensor and outlives its place in a group), while
        # the array lives (_detach)
        self._detached: dict[int, tuple[weakref.ref, _State]] = {}
        self._count = 0                # parameters in all groups
        self._named: bool | None = None   # True: params came as a dict (grads may be by name)
        if isinstance(params, np.ndarray) or not hasattr(params, "__iter__"):
            raise TypeError("params must be a dict of arrays, a list of arrays or a list of "
                            f"param-group dicts, got {type(params).__name__}")
        groups: list[Any]
        if isinstance(params, dict):
            if not params:
                raise ValueError("params is an empty parameter dict")
            groups = [{"params": params}]
        else:
            params = list(params)
            if not params:
                raise ValueError("params is an empty parameter list")
            groups = params if isinstance(params[0], dict) else [{"params": params}]
        for group in groups:
            self.add_param_group(group)

    @property
    def state(self) -> dict[int, dict[str, Any]]:
        """Flat parameter index -> that parameter's state dict (torch's keys); after groups
        were popped from ``param_groups``, by the remaining parameters' new indices, as
        ``state_dict()`` has them (it was by the old ones until the next step, so
        ``opt.state[0]`` was a popped parameter's, and what was assigned into it was lost)."""
        with self._lock:
            self._sync_groups()
        return self._state

    @state.setter
    def state(self, value: Mapping[int, dict[str, Any]]) -> None:
        with self._lock:
            self._sync_groups()     # (else the next step moved the new state by the pop)
        new = _StateDict()
        for key, entries in dict(value).items():
            new[key] = entries
        self._state, self._detached, self._loaded_flat = new, {}, {}
        _state_changed()        # (an empty mapping assigns no entry: the plans must see it)

    # ------------------------------------------------------------------ parameter groups
    def add_param_group(self, group: ParamGroup) -> None:
        """Add a param group, as torch.optim.Optimizer.add_param_group.

        Parameters
        ----------
        group : dict
            ``{"params": arrays or a dict of named arrays, <hyper-parameter overrides>}``;
            hyper-parameters not given take the optimizer's defaults.

        Raises
        ------
        TypeError
            ``group`` is not a dict with ``"params"``, a parameter is not a float32/float64
            ndarray, or a hyper-parameter has the wrong type.
        ValueError
            A parameter is read-only or already in a group, named and unnamed groups are
            mixed, or a hyper-parameter is out of range.
        """
        # under the step's lock: a group added while another thread steps is in that step
        # whole or not at all (the groups, slots, starts and parameter count agree)
        with self._lock:
            self._add_param_group(group)

    def _aliases(self):
        """A group's ``aliases`` (:class:`_Group`): the course's names of hyper-parameters."""
        return {alias: (key, self._ALIAS_BOUNDS.get(alias))
                for alias, key in self._RENAMED.items()}

    def _add_param_group(self, group):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("a param group must be a dict with a 'params' entry")
        group = _Group(group)
        if self._RENAMED:
            group.aliases = self._aliases()
        for alias, key in self._RENAMED.items():    # (was kept as an unknown key, unused)
            if alias in group:
                if key in group:
                    raise TypeError(f"{type(self).__name__} takes {key} or its alias {alias}, "
                                    "not both (a param group has both)")
                if alias in self._ALIAS_BOUNDS:
                    check_real(alias, group[alias], self._ALIAS_BOUNDS[alias])
                group[key] = group.pop(alias)
        params, names = _group_params(group["params"])
        named = names is not None
        if named:
            group["param_names"] = names
        if self._named is not None and self._named != named:
            raise ValueError("params: either every group is a dict of named arrays or none is")
        self._named = named
        known = {id(p) for g in self.param_groups for p in g["params"]}
        mine = set()
        for i, p in enumerate(params):
            label = group["param_names"][i] if named else f"params[{i}]"
            _check_param(label, p)
            if id(p) in known:
                raise ValueError(f"parameter {label} appears in more than one param group")
            if id(p) in mine:
                raise ValueError(f"parameter {label} appears twice in its param group")
            mine.add(id(p))
        if named:
            self._check_names(group["param_names"])
        group["params"] = params
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check(group)
        self._sync_groups()             # (groups popped before: indices after theirs)
        # made before anything is recorded: a MemoryError here had left a start without its
        # slots, and every later state_dict, copy and pickle raised IndexError
        slots = self._new_slots(len(params))
        self._starts.append(self._count)
        self._slots.append(slots)
        self.param_groups.append(group)
        self._groups.append(group)
        self._held.append((group["params"], tuple(params)))
        for k, p in enumerate(params):      # an array back in a group takes its state back
            entry = self._detached_state(self._detached, p)
            if entry is not None:
                _set(self._state, self._count + k, entry)
                self._bind(len(self._starts) - 1, k, entry)
        self._count += len(params)
        # every plan made again (a plan knows if its group is alone), from the old one: an
        # arena group's flat state is kept, so state arrays read from opt.state stay its state
        for plan in self._plans.values():
            plan.version = None

    def _detach(self, p):
        """A weak reference to ``p``, an array whose state is kept in ``_detached``, which
        forgets that state when ``p`` is freed: held, it kept every replaced array and its
        state for the optimizer's life, out of sight (20 replacements of a 4 MB Adam
        parameter: 229 MB; torch keeps them too, in opt.state, where a user can delete them).
        (The callback holds the optimizer weakly: no cycle.)"""
        me, key = weakref.ref(self), id(p)

        def forget(_):
            opt = me()
            if opt is not None:
                opt._detached.pop(key, None)
        return weakref.ref(p, forget)

    @staticmethod
    def _detached_state(detached, p):
        """The state kept in ``detached`` for array ``p``, taken out of it (None: none). By
        id, for that very array (an entry whose array is gone, which a shallow copy's
        callback could leave, is another's)."""
        ref, entry = detached.pop(id(p), (None, None))
        return entry if ref is not None and ref() is p else None

    def _new_slots(self, n):
        """The arrays holding a group's scalar state, one slot per parameter (see _bind):
        the step count as int64, the others float32 (torch's dtype for NAdam's mu_product,
        which it also multiplies in float32)."""
        return {key: np.zeros(n, np.int64 if key == "step" else np.float32)
                for key in self.scalar_keys()}

    def _slots_of(self, groups):
        return [self._new_slots(len(g["params"])) for g in groups]

    @classmethod
    def scalar_keys(cls) -> tuple[str, ...]:
        """The state keys holding a number per parameter (0-d arrays), not an array like it:
        ``step`` (where the optimizer counts steps) and e.g. NAdam's ``mu_product``."""
        return (("step",) if "step" in cls._STATE else ()) + cls._scalar_state

    @property
    def lr(self) -> float | list[float]:
        """The learning rate (a list if the groups differ, an empty one once every group was
        popped: that raised IndexError); setting a number sets every group's, a list or tuple
        of one per group sets each group's (so ``opt.lr = opt.lr`` restores what was read)."""
        lrs = [g["lr"] for g in self.param_groups]
        return lrs[0] if lrs and all(lr == lrs[0] for lr in lrs) else lrs

    @lr.setter
    def lr(self, value: float | list[float] | tuple[float, ...]) -> None:
        groups = self.param_groups
        if isinstance(value, (list, tuple)):
            if len(value) != len(groups):
                raise ValueError(f"lr: a list of {len(value)} learning rates for "
                                 f"{len(groups)} param groups (give one per group, or a number "
                                 "for all)")
            for i, lr in enumerate(value):      # all checked before any is set
                check_real(f"lr[{i}] (param group {i})", lr)
        else:
            check_real("lr", value)
            value = [value] * len(groups)
        for g, lr in zip(groups, value):
            g["lr"] = lr

    def _flat(self):
        """(index, label, name, group, param) for every parameter, in flat order."""
        out, i = [], 0
        for group in self.param_groups:
            names = group.get("param_names")
            for j, p in enumerate(group["params"]):
                name = names[j] if names else None
                out.append((i, repr(name) if name else f"{i}", name, group, p))
                i += 1
        return out

    def _check_names(self, names):
        """ValueError for a name of a new group's parameters that another group has: a grads
        dict, matched by name, could not tell the two apart."""
        taken = {n for g in self.param_groups for n in g.get("param_names", ())}
        for name in names:
            if name in taken:
                raise ValueError(f"parameter name {name!r} is in two param groups (grads are "
                                 "matched by name)")

    # ------------------------------------------------------------------------------ step
    def _match(self, grads):
        """The grads as one flat list in parameter order (None: that parameter has no grad).
        Checks the structure; the arrays are checked by :meth:`_check_grads` or the kernels."""
        if type(grads) is list and not self._named and len(grads) == self._count:
            return grads                # the common case, first (the list is not changed)
        if isinstance(grads, dict):
            if not self._named:
                # an arena's grads for a list of its views: each parameter's grad view (the
                # arena path takes them without matching, but not once the phases differ)
                views = _arena_grads(grads, [p for g in self.param_groups for p in g["params"]])
                if views is not None:
                    return views
                raise ValueError("grads is a dict but params were not given by name; pass a "
                                 "sequence of grads in parameter order")
            return _by_name(grads, [n for g in self.param_groups for n in g["param_names"]])
        if isinstance(grads, (list, tuple)) and self._named:
            raise ValueError(NAMED_GRADS_SEQUENCE)
        if isinstance(grads, (list, tuple)):
            if len(grads) != self._count:
                raise ValueError(f"grads has {len(grads)} entries, expected {self._count} "
                                 "(one per parameter, in order)")
            return list(grads)
        raise TypeError(f"grads must be a dict or a sequence of arrays, "
                        f"got {type(grads).__name__}")

    def _option(self, group, name):
        """The group's hyper-parameter ``name``, or, for one of ``_OPTIONAL`` it does not
        set, the value steps take without it."""
        return group[name] if name in group else self._OPTIONAL[name][1]

    def _check(self, group):
        """Check a group's hyper-parameters (type and range, from ``_BOUNDS``): TypeError or
        ValueError naming the first bad one."""
        for name, bounds in self._BOUNDS.items():
            value = group.get(name, _MISSING)
            if value is _MISSING:
                raise ValueError(f"a param group has no {name!r} (it is a hyper-parameter of "
                                 f"{type(self).__name__})")
            _check_hyper(name, value, bounds)
        for name, (bounds, _) in self._OPTIONAL.items():
            if name in group:
                _check_hyper(name, group[name], bounds)

    def _check_grads(self, gi, grads):
        """Check group ``gi``'s grads against its parameters, raising with the parameter's
        name."""
        group = self.param_groups[gi]
        names = group.get("param_names")
        for k, (p, g) in enumerate(zip(group["params"], grads)):
            if g is None:
                continue
            label = repr(names[k]) if names else f"{self._starts[gi] + k}"
            _validate.check_grad(label, p, g)
            if not p.flags.writeable:
                raise ValueError(f"parameter {label} is read-only")

    def _check_state_entry(self, where, key, value, p):
        """One state entry of parameter ``p`` (``where`` names it in the message). A step count
        of 0 is one: an assigned ``state["step"] = 0`` (bias correction restarted), which
        state_dict() then saves and torch's load_state_dict loads."""
        if key == "step" or key in self._scalar_state:
            value = _scalar(where, key, value)
        if key == "step":        # (counted in int64: bounded where floats are still whole)
            check_real_type(f"{where}['step']", value)
            if not 0 <= value <= _MAX_STEP:     # (a huge one shown as given, not 301 digits)
                try:
                    shown = (repr(value) if abs(value) <= _MAX_STEP or value != value
                             else f"{float(value):g}")
                except OverflowError:       # (an int past the float range)
                    shown = _shown(value)
                raise ValueError(f"Invalid {where}['step']: {shown} (must be a whole number "
                                 f"from 0 to 2**53 = {int(_MAX_STEP)})")
            if not float(value).is_integer():
                raise ValueError(f"Invalid {where}['step']: {value!r} (must be a whole number)")
        elif key in self._scalar_state:
            check_real(f"{where}[{key!r}]", value, UNIT)
        elif key not in self._STATE and key not in self._OPTIONAL_STATE:
            raise ValueError(f"{where} has the key {key!r}; {type(self).__name__}'s state "
                             f"keys are {sorted(self._STATE + self._OPTIONAL_STATE)}")
        else:       # an array as the kernels take it, like its parameter (either byte order)
            _validate.check_like(f"{where}[{key!r}]", value, "its parameter", p)
            # (a zero stride had been named by the kernel's list, 'exp_avgs[0]')
            _validate.check_writeable(f"{where}[{key!r}]", value)

    def _check_states(self, gi, states):
        """Check the states of group ``gi``'s parameters (keys, arrays like the parameter,
        scalars in range): arrays assigned into ``state`` are checked before any write."""
        start, params = self._starts[gi], self.param_groups[gi]["params"]
        for k, s in enumerate(states):
            if s is None:
                continue
            where = f"state[{start + k}]"
            missing = [key for key in self._STATE if key not in s]
            if missing:
                raise ValueError(f"{where} has no {missing[0]!r}")
            for key, value in s.items():
                self._check_state_entry(where, key, value, params[k])

    def _check_state_arrays(self, gi, states):
        """Check the state arrays of group ``gi`` as its kernel call does (dtype, shape,
        writeable), naming them: after that call refused one changed in place since the plan
        checked it (``.flags.writeable = False``, ``.shape = ...``), whose message named the
        kernel's list item. (:meth:`_check_unchanged` finds such an array before any group
        steps, in C-level passes: this Python pass over every state entry before each step
        took a multi-group Adam step over 100 arrays from 90 to 203 us.)"""
        start, params, slots = self._starts[gi], self.param_groups[gi]["params"], self._slots[gi]
        for k, s in enumerate(states):
            if s is not None:
                for key, value in s.items():
                    if key not in slots:
                        self._check_state_entry(f"state[{start + k}]", key, value, params[k])

    # ------------------------------------------------------------------------------ step
    def step(self, grads: Grads) -> None:
        """Update every parameter in place from ``grads``.

        First every group is checked (hyper-parameters and state, and that no parameter or state
        array overlaps another in any group, again only after they changed; with several groups
        every grad too), then each group steps with one kernel call: over its flat stretch of a
        ParameterArena, or over its list of arrays. A step that raises changes nothing. A
        KeyboardInterrupt (Ctrl-C), or another exception a signal handler raised (a timeout's),
        leaves each parameter stepped with its count and state, or untouched: raised before a
        group's kernel call, that group and those after it have not stepped; a Cython kernel
        runs to its end (without the GIL, where no Python handler runs), and is raised as it
        returns; the numba and NumPy kernels over a list are Python loops, which step every
        array before it is raised (the NumPy reference's update of an array can stop between
        its operations).

        Parameters
        ----------
        grads : dict or sequence of ndarray
            A dict keyed by parameter name or ``"d" + name`` (when the parameters were given
            by name; other keys, e.g. the course's caches, are ignored, but not one shaped
            like a missing parameter's, ``dW3`` beside ``W1``, ``W2``), or a sequence in
            parameter order; ``None`` for a parameter that sits this step out. An arena's
            ``arena.grads`` steps its stretch directly.

        Raises
        ------
        TypeError
            A grad is not an ndarray of its parameter's dtype, or ``grads`` is neither a
            dict nor a sequence.
        ValueError
            A grad is missing or has the wrong shape, a parameter is read-only, a
            hyper-parameter or a state entry is invalid, or two arrays overlap in memory (a
            parameter or state array with another, in any group, or a grad with one of them
            other than its own parameter's very elements, the same array or a view of it in
            its order; each named in the message).
        """
        with self._lock:
            plan = (self._current_plan(0)
                    if len(self.param_groups) == 1 and len(self._starts) == 1 else None)
            if plan is not None and plan.alone:
                # the common case in a few comparisons: a lone group of arrays in one phase,
                # a list of grads (a dict by name, for parameters given by name), the group's
                # plan current (what _plan and _split would find): one kernel call. A grad
                # that is None makes the kernel refuse the call (writing nothing); the general
                # path below then steps the others.
                group = self.param_groups[0]
                if self._named:     # (Adam, a course-style dict of 6 small arrays: 14.7 -> 5.3 us)
                    listed = (_by_name(grads, group["param_names"]) if type(grads) is dict
                              else None)
                else:
                    listed = grads if type(grads) is list and len(grads) == self._count else None
                if listed is not None:
                    try:
                        self._run(group, group["params"], listed, plan.list_batch)
                        return
                    except (TypeError, ValueError):
                        if all(g is not None for g in listed):
                            # an error naming the parameter, if a grad's
                            self._name_refusal(0, plan, listed)
                            raise
            if (plan is not None and plan.span is not None and not plan.made
                    and grads is plan.span.arena.grads and self._overlaps_known([plan])
                    and _first_readonly(plan.views) < 0):
                # the same for a lone group on an arena stepped with its own grads: what
                # _checked_plans, _split and _step_group would check and run, in one kernel
                # call. With the caches cold (a 1000 x 64 step after a 64 MB sweep, this
                # Intel VM) the Python around the kernel call took 110-130 us that way and
                # takes 70-80 us this way, of steps of 200-300 us.
                span = plan.span
                self._run(self.param_groups[0], [span.params], [span.grads], plan.flat_batch)
                return
            self._sync_groups()
            plans = self._checked_plans()
            split = self._split(grads, plans)
            calls = [self._kernel_calls(gi, plans[gi], g) for gi, g in enumerate(split)]
            try:
                self._prepare_all(calls)
                for gi, grads_of_group in enumerate(split):
                    self._step_group(gi, plans[gi], grads_of_group, calls[gi])
            except BaseException:
                # the state made for the calls that did not run (a call that ran stored its
                # own, or forgot it); a plan's batch runs again at the next step
                _discard(calls)
                raise

    def _checked_plans(self):
        """Every group's :class:`_Plan`, after the checks :meth:`step` makes before any write
        whatever the grads: hyper-parameters, states, and no overlap of params and state
        arrays. (ShardedOptimizer runs them on its shard's optimizer on every rank first.)"""
        kept = dict(self._plans)
        plans = [self._plan(gi) for gi in range(len(self.param_groups))]
        if len(plans) > 1:
            # a hyper-parameter changed in place in its mutable object tells no one: the
            # later group's kernel call refused it after the earlier groups had stepped
            for gi, plan in enumerate(plans):
                if plan.mutable:
                    self._check(self.param_groups[gi])
        try:
            self._check_overlaps(plans)
        except ValueError:
            self._plans.clear()     # (the fast path in step would take the lone group's)
            raise
        for gi, plan in enumerate(plans):
            if kept.get(gi) is plan:    # (one made just now checked its states as it was)
                self._check_unchanged(gi, plan)
        return plans

    def _check_unchanged(self, gi, plan):
        """Refuse, naming it, a state array of group ``gi`` changed in place since its plan
        checked it (``.flags.writeable = False``, ``.shape = ...``): a kernel call refuses
        it, but only once the groups before it (or the other ranks of a ShardedOptimizer)
        have stepped: a pass in C a state key over the columns the plan's batch gathered
        (a group stepping in parts: over its states' arrays, gathered in Python)."""
        params, slots = self.param_groups[gi]["params"], self._slots[gi]
        batch = plan.list_batch
        if batch is not None:
            if all(_first_unlike(col, params) < 0 for col in batch.columns.values()):
                return
        else:
            # (a group stepping in parts: its states' arrays gathered here, where a plan kept
            # after a refused step was not made again)
            pairs = [(value, p) for p, s in zip(params, plan.states) if s is not None
                     for key, value in s.items() if key not in slots]
            if _first_unlike([a for a, _ in pairs], [p for _, p in pairs]) < 0:
                return
        start = self._starts[gi]
        for k, (p, s) in enumerate(zip(params, plan.states)):
            for key, value in (() if s is None else s.items()):
                if key not in slots:
                    self._check_state_entry(f"state[{start + k}]", key, value, p)

    def _plan(self, gi):
        """Group ``gi``'s :class:`_Plan`, made again when the group or any state changed:
        its hyper-parameters and its parameters' states are checked here."""
        current = self._current_plan(gi)
        if current is not None:
            return current
        group, plan = self.param_groups[gi], self._plans.get(gi)
        self._check(group)
        start = self._starts[gi]
        # (one put into the group's list by hand: a list failed with AttributeError)
        for k, p in enumerate(group["params"]):
            _check_param(group["param_names"][k] if self._named else start + k, p)
        # an empty state (``opt.state[i] = {}``, as torch's reset of a parameter) is none:
        # made at the next step; but for an optimizer whose every state entry is optional
        # (SGD) it is a whole state: taken for none, plain SGD's plan was made again at every
        # step (22 us of Python a step at 1e5, against a 6 us kernel call)
        states = [self._state.get(start + k) for k in range(len(group["params"]))]
        states = [s if s or (s is not None and not self._STATE) else None for s in states]
        self._check_states(gi, states)
        for k, s in enumerate(states):
            if s is not None:
                self._bind(gi, k, s)
        span = ParameterArena.span_of(group["params"])
        made = []       # (index, state) that _flatten made: stored once a step used them
        flat = None if span is None else self._flatten(gi, span, states, plan, made)
        # (a group without parameters, which torch allows, has no batch: it steps nothing)
        uniform = (bool(states) and None not in states
                   and len({self._phase(s) for s in states}) <= 1)
        slots = self._slots[gi]
        list_batch = _Batch(states, slots, _ALL, made=made) if uniform else None
        flat_batch = None
        if flat is None:
            span = None
        else:
            flat_batch = _Batch([flat], slots, _ALL, (states, span.offsets, group["params"]),
                                made)
        if isinstance(group, _Group):
            group.checked = True
        alone = len(self.param_groups) == 1 and span is None and list_batch is not None
        mutable = any(_mutable(group.get(key))
                      for key in (*self._BOUNDS, *self._OPTIONAL))
        # the views of what the arena path writes through its flat buffers: one made read-only
        # by hand is refused, as the list path refuses it (one group had written it, two
        # groups refused it)
        views = None if span is None else [*group["params"], *(
            value for s in states if s for key, value in s.items() if key not in slots)]
        plan = self._plans[gi] = _Plan(states, uniform, span, flat, list_batch, flat_batch,
                                       alone, made, mutable, views)
        return plan

    def _current_plan(self, gi):
        """Group ``gi``'s plan if neither the group nor any state changed since it was made,
        else None (:meth:`_plan` makes it again; a plain dict group is checked each step)."""
        plan = self._plans.get(gi)
        if (plan is not None and plan.version == _state_version
                and getattr(self.param_groups[gi], "checked", False)
                # a group of another optimizer put in param_groups: step's fast paths had
                # stepped it with this one's state (_sync_groups refuses it)
                and gi < len(self._groups) and self.param_groups[gi] is self._groups[gi]):
            return plan
        return None

    def _overlaps_known(self, plans):
        """Whether :meth:`_check_overlaps` already passed these very plans."""
        known = self._disjoint
        return (known is not None and len(known[0]) == len(plans)
                and all(map(operator.is_, known[0], plans)))

    def _check_overlaps(self, plans):
        """Refuse params and state arrays that overlap (:func:`_validate.check_disjoint`), in
        one group or across groups: a kernel call sees one group's arrays (or one phase's of
        them), so it refused a later group's overlap after the earlier groups had stepped,
        and stepped an element shared by two groups twice. Checked when a plan was made
        again (the params and state are the plans'; state the kernel calls make, of memory
        of its own, clears the record: ``_run``), not at every step; the arrays are kept by
        owner, for the grads' check (:meth:`_check_grad_overlaps`)."""
        if self._overlaps_known(plans):
            return
        self._disjoint = None
        tensors, where = [], []
        for gi, plan in enumerate(plans):
            group = self.param_groups[gi]
            names, slots = group.get("param_names"), self._slots[gi]
            for k, (p, s) in enumerate(zip(group["params"], plan.states)):
                keys = () if s is None else tuple(
                    key for key, v in s.items() if key not in slots and isinstance(v, np.ndarray))
                tensors.append([p, None, *(s[key] for key in keys)])
                where.append((repr(names[k]) if names else f"{len(where)}", gi, keys))

        def label(i, j):
            name, gi, keys = where[j]
            if i == 0:
                return f"parameter {name} (param group {gi})"
            if i == 1:
                return f"grad for parameter {name} (param group {gi})"
            return f"state[{j}][{keys[i - 2]!r}] (param group {gi})"

        owners = _validate.by_owner(tensors)
        _validate.check_owners(owners, label)
        self._disjoint = (plans, [t[0] for t in tensors], owners, label)

    def _check_grad_overlaps(self, reads):
        """Refuse a grad that overlaps a param or state array (other than its own param as the
        very same array) before any kernel call: ``reads`` holds (param, grad, flat index).
        A grad of memory of its own (the usual) costs a look-up of its owner."""
        _, _, owners, label = self._disjoint
        _validate.check_reads(owners, reads, label)

    def _split(self, grads, plans):
        """``grads`` per group: a list in parameter order (None: no grad), or ``_FLAT`` for a
        group on the arena path handed the arena's own grad views (no grad to check; its
        parameters are checked for writeability, which a view can lose after the fact).
        With several groups every grad is checked here, before any group steps (its type,
        dtype and shape, and that it overlaps no param or state array of any group)."""
        if isinstance(grads, _GradDict) and all(
                p.span is not None and p.span.arena.grads is grads for p in plans):
            out = [_FLAT] * len(plans)    # (the arena's grad buffer is no param's or state's)
        elif len(plans) == 1 and plans[0].span is None:
            return [self._match(grads)]
        else:
            grads = self._match(grads)
            out = []
            for gi, plan in enumerate(plans):
                start = self._starts[gi]
                mine = grads[start:start + len(plan.states)]
                if plan.span is not None and all(map(operator.is_, mine, plan.span.grad_views)):
                    mine = _FLAT
                elif len(plans) > 1:
                    self._check_grads(gi, mine)
                out.append(mine)
            if len(plans) > 1:
                self._check_grad_overlaps(zip(self._disjoint[1], grads, range(len(grads))))
        for gi, mine in enumerate(out):
            if mine is _FLAT:
                params = self.param_groups[gi]["params"]
                k = _first_readonly(params)
                if k >= 0:
                    names = self.param_groups[gi].get("param_names")
                    label = repr(names[k]) if names else self._starts[gi] + k
                    raise ValueError(f"parameter {label} is read-only")
        return out

    def _kernel_calls(self, gi, plan, grads):
        """Group ``gi``'s kernel calls, as (params, grads, batch): the arena stretch in one, or
        the list in one while every parameter has a grad and they share a phase. Else one
        per phase of the parameters with a grad (parameters in different phases, e.g. steps,
        cannot share one), their new states made here (stored once their call stepped)."""
        group, start = self.param_groups[gi], self._starts[gi]
        params = group["params"]
        if grads is _FLAT:
            return [([plan.span.params], [plan.span.grads], plan.flat_batch)]
        if plan.uniform and all(map(operator.is_not, grads, repeat(None))):
            return [(params, grads, plan.list_batch)]
        self._check_grads(gi, grads)
        if len(self.param_groups) == 1:   # (with several, _split checked every group's)
            # one kernel call per phase: a later one's overlap must not find the earlier
            # ones stepped
            self._check_grad_overlaps(zip(params, grads, range(len(grads))))
        slots = self._slots[gi]
        parts, created, made = {}, set(), dict(plan.made)
        for k, g in enumerate(grads):
            if g is None:
                continue
            s = plan.states[k]
            if s is None:
                s = self._new_state(gi, k)
                created.add(k)
            elif start + k in made:     # made by the arena path's plan, not stored yet
                created.add(k)
            parts.setdefault(self._phase(s), []).append((k, s))
        # (partitioned first: a step moves phases)
        calls = []
        for part in parts.values():
            index = [k for k, _ in part]
            batch = _Batch([s for _, s in part], slots, index,
                           made=[(start + k, s) for k, s in part if k in created])
            calls.append(([params[k] for k in index], [grads[k] for k in index], batch))
        return calls

    def _prepare_all(self, calls):
        """Make the state arrays the options of every kernel call of a step need
        (:meth:`_prepare`) before the first call: made as each call ran, a MemoryError
        making a later group's (or phase's) left the ones before it stepped. ``calls``
        holds each group's :meth:`_kernel_calls` (step discards them if this raises)."""
        for group, group_calls in zip(self.param_groups, calls):
            for params, _, batch in group_calls:
                _next_count(batch)      # (a count at its bound refused before any group steps)
                self._prepare(params, batch, self._option_state(group))

    def _prepare(self, params, batch, wanted):
        """Make (or find) the state arrays ``wanted`` (:meth:`_option_state`) for this call:
        ``batch.optional``."""
        batch.optional = {key: batch.new_column(key, params, fill, self._state_slot(key))
                          for key, fill in wanted}
        batch.wanted = wanted

    def _option_state(self, group):
        """(key, fill) of each state array the group's options need that a parameter's first
        state may lack (:meth:`_init_state` makes the others): made at the step that first
        uses it, as torch makes it. ``fill`` None: not filled (the kernel sets it). The same
        options give the same tuple object (a constant), which a step compares by identity."""
        return ()

    def _step_group(self, gi, plan, grads, calls):
        """Run group ``gi``'s kernel calls (:meth:`_kernel_calls`)."""
        group = self.param_groups[gi]
        if len(calls) == 1 and calls[0][2] in (plan.list_batch, plan.flat_batch):
            try:
                self._run(group, *calls[0])
            except (TypeError, ValueError):     # the kernel checked every array, wrote none
                if grads is not _FLAT:  # an error naming the parameter, if a grad's
                    self._name_refusal(gi, plan, grads)
                raise
            return
        try:
            for call in calls:
                self._run(group, *call)
        finally:
            # made again with the states stored by the calls, from this plan: its flat
            # buffers, which the state keeps (dropped, the next plan moved every state array
            # of an arena group into new ones, and one the caller held stopped being the
            # state: the review)
            plan.version = None

    def _name_refusal(self, gi, plan, grads):
        """After a kernel call over group ``gi``'s list refused it (writing nothing): raise the
        error the optimizer's own checks give for a grad (its type, dtype or shape; an
        overlap, whose kernel error named the kernel's arguments, 'grads[0] and
        exp_avgs[0]'), which names the parameter; else return (the caller re-raises)."""
        self._check_grads(gi, grads)
        if len(self.param_groups) == 1:     # (with several, _split checked every grad)
            self._check_overlaps([plan])
            start = self._starts[gi]
            self._check_grad_overlaps(zip(self.param_groups[gi]["params"], grads,
                                          range(start, start + len(grads))))
        # (a state array changed in place: the kernel's message named its list, 'exp_avgs[0]')
        self._check_state_arrays(gi, plan.states)

    def _run(self, group, params, grads, batch):
        """One kernel call; the step count and the state it made are stored only after it
        stepped: not after a refusal (which changes nothing), nor after a KeyboardInterrupt
        (Ctrl-C), or another exception a signal handler raised, before the kernel was called.
        One raised once it had been is stored with the step: the Cython kernels run without
        the GIL, where no Python signal handler runs, so it is raised as they return, their
        writes done."""
        step = _next_count(batch)
        stepped = False
        ops._calls.returned = False     # (see ops._kernel_began)
        try:
            # (made here too for the one-call paths of step, which skip _prepare_all; a
            # plan's batch keeps them while the options want the same, one object)
            wanted = self._option_state(group)
            if wanted is not batch.wanted:
                self._prepare(params, batch, wanted)
            scalar = self._update(group, params, grads, batch, step)
            stepped = True
            self._advance(group, batch, step, scalar)
        except BaseException as exc:
            # an interrupt (ops._interrupted_kernel) once the kernel was called is stored with
            # the step, whose writes are done; a refusal changes nothing
            if stepped or ops._interrupted_kernel(exc):
                if not stepped:     # raised before _update returned its new scalar state
                    scalar = self._interrupted_scalar(group, batch, step)
                # (again, if it was what the interrupt stopped: it stores values)
                self._advance(group, batch, step, scalar)
            else:
                batch.discard()       # a plan's batch is used again
            raise

    def _interrupted_scalar(self, group, batch, step):
        """The new value of the ``_scalar_state`` that :meth:`_update` returns, for a call
        whose kernel stepped but which an interrupt stopped before it returned."""
        return None

    def _advance(self, group, batch, step, scalar=None):
        """Note that ``group`` stepped; store the step count, the new value of the
        ``_scalar_state`` that ``_update`` returned (None: none), the new state arrays the
        call made and the new states it stepped. Stores values, so that doing it twice is
        doing it once."""
        self._stepped_groups.add(id(group))
        steps = batch.steps
        if steps is None:
            pass
        elif batch.index is not _ALL:
            steps[batch.index] = step
        elif len(steps) == 1:
            batch.counts[0] = step
        else:
            steps.fill(step)
        if batch.pending:
            batch.commit()
            self._disjoint = None       # new state arrays: _check_overlaps keeps them too
            # the plans of the arena path are made again, with them (from the old plans, whose
            # flat buffers they keep: state held by the caller stays the state): made on the
            # list path, outside a plan's flat buffers, they were taken for missing at the next
            # arena step; made on the arena path, its plan's views and list batch lacked them
            # (one made read-only by hand was written: the review)
            for plan in self._plans.values():
                if plan.flat is not None:
                    plan.version = None     # (never current: _current_plan)
        if scalar is not None:
            batch.set_scalar(self._scalar_state[0], scalar)
        if batch.made:
            for i, state in batch.made:
                _set(self._state, i, state)
            batch.made.clear()      # (the plan's list, which its two batches share)

    def _phase(self, state):
        """Parameters step together (one kernel call) when their phases are equal."""
        step = state.get("step")
        return None if step is None else int(step)

    # ------------------------------------------------------------------------ state
    def _init_state(self, param, group):
        """A parameter's first state: ``step`` 0 and zeros like ``param`` for the other keys
        of ``_STATE`` (subclasses with other initial values override it)."""
        return {key: 0 if key == "step" else self._like_param(param, key)
                for key in self._STATE}

    def _state_slot(self, key):
        """Where state ``key`` lies in its page beside its parameter (:func:`like_lines`):
        each key of the optimizer's its own slot, from 2 (1 is a ParameterArena's grads; past
        7 the places wrap onto the param's and the grads', equal places, which cost nothing)."""
        keys = self._STATE + self._OPTIONAL_STATE
        return 2 + (keys.index(key) if key in keys else len(keys))

    def _like_param(self, param, key, fill=0):
        """A new array for state ``key`` of ``param``, holding ``fill`` (None: not set)."""
        return like_lines(param, fill, self._state_slot(key))

    def _new_state(self, gi, k):
        """A new state for parameter ``k`` of group ``gi`` (not stored yet)."""
        group = self.param_groups[gi]
        state = _State(self._init_state(group["params"][k], group))
        self._bind(gi, k, state)
        return state

    def _bind(self, gi, k, state):
        """Make ``state``'s scalar entries (step, mu_product) read-only 0-d views of parameter
        ``k``'s slots in the group's arrays, holding their values (as torch's 0-d tensors):
        a step over many parameters then advances every count with one NumPy operation.
        A new value is assigned (``state["step"] = 5``), not written into the view."""
        for key, slots in self._slots[gi].items():
            value = state.get(key)
            if value is not None:
                slots[k] = value
                view = slots[k, ...]
                view.flags.writeable = False
                _set(state, key, view)

    def _flatten(self, gi, span, states, old, made):
        """The arena path's flat state: one buffer per state key over the group's stretch,
        each parameter's entry a view of it (made for every parameter without state, listed
        in ``made`` as (index, state): stored in ``opt.state`` only once a step that used it
        succeeded, so a step that raises, or a parameter that sits steps out, leaves no
        state behind, as on the list path). None if the states differ in keys or phase, or
        hold arrays assigned from outside (those are updated where they are)."""
        if any(s is not None and s.adopted for s in states):
            return None
        start = self._starts[gi]
        for k, s in enumerate(states):
            if s is None:
                s = states[k] = self._new_state(gi, k)
                made.append((start + k, s))
        keys = set(states[0])
        if any(set(s) != keys for s in states) or len({self._phase(s) for s in states}) > 1:
            return None
        flat, offsets = {}, span.offsets
        for key in keys - self._slots[gi].keys():
            arrays = [s[key] for s in states]
            # the last plan's buffer, or the one a load put the state in (_load_target; popped:
            # one a later step found moved would otherwise be kept for good), kept where every
            # state is at its own place in it (no state is ever written over: a state made or
            # reset since, or the groups changed, move them all into a new one)
            loaded = self._loaded_flat.pop((gi, key), None)
            last = old.flat.get(key) if old is not None and old.flat is not None else None
            buf = next((b for b in (last, loaded)
                        if b is not None and _views_at(b, arrays, offsets)), None)
            if buf is not None:
                flat[key] = buf                 # already views of it: nothing to move
                continue
            buf = flat[key] = self._like_param(span.params, key, None)
            for s, a, lo, hi in zip(states, arrays, offsets, offsets[1:]):
                buf[lo:hi] = a.ravel()
                _set(s, key, buf[lo:hi].reshape(a.shape))
        return flat

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the grads a ParameterArena keeps for this optimizer's parameters (they stay
        between steps, as torch's ``.grad`` does, so grads accumulated into them start again
        from zero). Other grads are passed to ``step``: nothing to do for them.

        Parameters
        ----------
        set_to_none : bool, default True
            torch's argument, accepted: an arena's grads are views of its buffer and cannot
            be None, so they are zeroed either way.
        """
        for group in self.param_groups:
            span = ParameterArena.span_of(group["params"])
            if span is not None:            # the group's stretch: one memset
                span.grads[...] = 0
                continue
            for p in group["params"]:
                span = ParameterArena.span_of([p])
                if span is not None:
                    span.grads[...] = 0

    # ------------------------------------------------------------------------ state dicts
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout, holding copies of the NumPy state arrays and of the groups'
        entries (``param_names``, a ``betas`` list): a snapshot, which later steps and edits
        of either side leave apart (taken between steps, should another thread step)."""
        with self._lock:
            self._sync_groups()
            return self._state_dict()

    def _state_dict(self):
        groups, start = [], 0
        for group in self.param_groups:
            g = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            g["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(g)
        state = {i: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                 for i, s in self._state.items() if s or s.given}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from ``state_dict()`` or from torch (tensors turned into arrays).

        Everything is checked first (structure, parameter counts, state keys, array shapes
        and dtypes, step counts, hyper-parameters); a refused state dict changes nothing.
        Arrays are copied (floating-point ones cast to their parameter's dtype, as torch).
        A group takes the saved group's entries, as torch's: hyper-parameters and others
        (a scheduler's ``initial_lr``); its parameters and their names stay its own.

        Parameters
        ----------
        state_dict : dict
            ``{"state": {index: {key: value}}, "param_groups": [...]}`` in torch.optim's
            layout; ``step`` and ``mu_product`` may be numbers or 0-d arrays.

        Raises
        ------
        TypeError
            A state entry or the structure has the wrong type.
        ValueError
            The groups or parameters do not match this optimizer's, or an entry is invalid.
        """
        with self._lock:        # (both stages as one)
            self._load_staged(state_dict)()

    def _load_staged(self, state_dict):
        """:meth:`load_state_dict` in two stages: this call checks and copies everything and
        changes nothing (it raises what load_state_dict raises); the function it returns
        installs the result, with nothing left to fail. A ShardedOptimizer's ranks agree in
        between, so that every rank's shard loads or none does."""
        with self._lock:
            self._sync_groups()
            return self._load_state_dict(state_dict)

    def _load_state_dict(self, state_dict):
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError("state_dict must be a dict with the keys 'state' and "
                             "'param_groups' (as state_dict() returns)")
        groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(groups, (list, tuple)) or not isinstance(saved_state, dict):
            raise TypeError("state_dict['param_groups'] must be a list and "
                            "state_dict['state'] a dict")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, "
                             f"expected {len(self.param_groups)}")
        flat = self._flat()
        index: dict[Any, int] = {}     # saved parameter id -> flat index
        for gi, (mine, saved) in enumerate(zip(self.param_groups, groups)):
            if not isinstance(saved, dict) or "params" not in saved:
                raise ValueError("each of state_dict['param_groups'] must be a dict with "
                                 "'params'")
            where = f"state_dict['param_groups'][{gi}]['params']"
            ids = saved["params"]
            if isinstance(ids, np.ndarray) and ids.ndim == 1 and ids.dtype.kind in "iu":
                saved = {**saved, "params": ids.tolist()}     # (through np.savez)
            # (len() and the look-ups below raised TypeErrors naming nothing)
            if not isinstance(saved["params"], (list, tuple)):
                raise TypeError(f"{where} must be a list of parameter ids, "
                                f"got {type(saved['params']).__name__}")
            if len(saved["params"]) != len(mine["params"]):
                raise ValueError(f"a param group in state_dict has {len(saved['params'])} "
                                 f"params, expected {len(mine['params'])}")
            start = len(index)
            for k, pid in enumerate(saved["params"]):
                try:
                    twice = pid in index
                except TypeError:       # unhashable: no state entry can be keyed by it
                    raise TypeError(f"{where}[{k}] must be a parameter id (an int), "
                                    f"got {type(pid).__name__}") from None
                if twice:
                    raise ValueError(f"state_dict names parameter {pid!r} twice")
                index[pid] = start + k
        new_state = _StateDict()
        loaded_flat, spans = {}, {}     # (_load_target's)
        for pid, saved in saved_state.items():
            if pid not in index:
                if isinstance(saved, dict) and not saved:
                    continue    # no state (opt.state.setdefault(5, {}) saves one; torch's loads)
                raise ValueError(f"state_dict has state for unknown parameter {pid!r}")
            if not isinstance(saved, dict):
                raise TypeError(f"state_dict['state'][{pid!r}] must be a dict")
            i = index[pid]
            p = flat[i][4]
            where = f"state_dict['state'][{pid!r}]"
            entry = _State()
            entry.given = True
            for key, value in saved.items():
                if value is None and key in self._OPTIONAL_STATE:
                    continue                # torch's momentum_buffer before its first use
                if key == "step" or key in self._scalar_state:
                    value = _scalar(where, key, value)
                elif isinstance(value, np.ndarray) and value.dtype.kind == "f":
                    # (before the copy, which would drop a mask, say)
                    _validate.check_plain(f"{where}[{key!r}]", value)
                    if value.shape == p.shape:      # a copy on lines as the param's
                        value, saved_value = self._load_target(i, p, key, loaded_flat,
                                                               spans), value
                        value[...] = saved_value
                    else:                           # (refused below)
                        value = np.array(value, dtype=p.dtype, copy=True, order="C")
                self._check_state_entry(where, key, value, p)
                _set(entry, key, value)
            missing = [k for k in self._STATE if k not in entry]
            # an empty entry is no state (opt.state[i] = {}, torch's reset, leaves one in
            # state_dict(), and torch's load_state_dict takes it): made at the next step
            if missing and saved:
                raise ValueError(f"{where} has no {missing[0]!r}")
            _set(new_state, i, entry)
        new_hyper = []
        for mine, saved in zip(self.param_groups, groups):
            hyper = {}
            for key, value in saved.items():
                if key in self._RENAMED:
                    # an alias (a state dict saved before the rename) stands for its key only
                    # where that is absent (one set into a group by hand after construction,
                    # which the steps did not use, had overridden the saved alpha), in its own
                    # range (RMSprop's beta: [0, 1), named as given)
                    if self._RENAMED[key] in saved:
                        continue
                    if key in self._ALIAS_BOUNDS:
                        check_real(key, value, self._ALIAS_BOUNDS[key])
                    key = self._RENAMED[key]
                if key in ("params", "param_names"):   # (this optimizer's own)
                    continue
                if key not in self.defaults and key not in self._OPTIONAL:
                    hyper[key] = copy.deepcopy(value)   # (another entry: as it is, a copy)
                    continue
                if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
                    # (np.savez gives back every entry as an array: a flag as a 0-d bool)
                    value = value.item() if value.ndim == 0 else value.tolist()
                # (copied: the state dict stays the caller's)
                hyper[key] = tuple(value) if isinstance(value, list) else copy.deepcopy(value)
            self._check({**mine, **hyper})
            new_hyper.append(hyper)
        # (made before anything changes: a MemoryError here had left the load half done)
        slots = self._slots_of(self.param_groups)

        def install():
            with self._lock:
                for mine, hyper in zip(self.param_groups, new_hyper):
                    mine.update(hyper)
                    mine.update(self._FORCED)
                self._state, self._detached, self._slots = new_state, {}, slots
                for i, entry in new_state.items():
                    self._bind(*self._position(i), entry)
                _state_changed()
                self._plans, self._loaded_flat = {}, loaded_flat
        return install

    def _remember_groups(self):
        """Note the groups and the arrays each one's params list holds: what
        :meth:`_sync_groups` compares them with."""
        self._groups = list(self.param_groups)
        self._held = [(g["params"], tuple(g["params"])) for g in self.param_groups]
        self._synced = _params_version

    def _sync_groups(self):
        """Follow the changes of ``param_groups`` made as a list (``param_groups.pop(1)``,
        ``del``, as torch.optim users drop a group) and of a group's ``params`` list
        (``append``, ``del``, a parameter replaced, a new list assigned): each array's
        state and step count go with the array to its new flat index, as torch's state is
        keyed by the tensor. An array new to the groups starts without state; one taken out
        keeps its state aside (not in ``state_dict()``), taken back if the array comes back
        in any group. (The indices were kept by position: an appended array was never
        stepped, the grads were counted for the old list, a replacement took the replaced
        array's moments and step count.) A group ``param_groups`` holds that
        ``add_param_group`` did not add is refused (ValueError)."""
        groups, known, held = self.param_groups, self._groups, self._held
        if len(groups) == len(known) and all(map(operator.is_, groups, known)):
            if self._synced == _params_version:
                return
            # some group's params list changed, maybe none of ours, maybe back as it was
            if all(g["params"] is params and len(params) == len(before)
                   and all(map(operator.is_, params, before))
                   for g, (params, before) in zip(groups, held)):
                self._synced = _params_version
                return
        where = {id(g): gi for gi, g in enumerate(known)}
        olds = []
        for gi, group in enumerate(groups):
            oi = where.get(id(group))
            if oi is None or oi in olds:
                raise ValueError(
                    f"param_groups[{gi}] is not a group this optimizer holds (add groups with "
                    "add_param_group; remove one with param_groups.pop, keeping its params)")
            params = group["params"]
            if not isinstance(params, (list, tuple)):
                raise TypeError(f"param_groups[{gi}]['params'] must be a list of arrays, "
                                f"got {type(params).__name__}")
            if self._named and len(params) != len(group["param_names"]):
                raise ValueError(
                    f"param_groups[{gi}] has {len(params)} params and "
                    f"{len(group['param_names'])} param_names; change both lists together")
            olds.append(oi)
        # every array's state goes with the array, wherever the groups now hold it
        spare = dict(self._detached)
        for oi, (_, before) in enumerate(held):
            for k, p in enumerate(before):
                entry = self._state.get(self._starts[oi] + k)
                if entry is not None:
                    spare[id(p)] = (self._detach(p), entry)
        state, starts, start, moved = _StateDict(), [], 0, []
        for gi, group in enumerate(groups):
            if type(group["params"]) is not _Params:
                dict.__setitem__(group, "params", _Params(group["params"]))
            starts.append(start)
            for k, p in enumerate(group["params"]):
                entry = self._detached_state(spare, p)
                if entry is not None:
                    _set(state, start + k, entry)
                    moved.append((gi, k, entry))
            start += len(group["params"])
        slots = self._slots_of(groups)      # (before the commit)
        self._starts, self._state, self._count = starts, state, start
        self._detached = spare
        self._remember_groups()
        self._slots = slots
        for gi, k, entry in moved:
            self._bind(gi, k, entry)       # (the step counts into the new slots)
        self._plans, self._disjoint = {}, None
        _state_changed()

    def _load_target(self, i, p, key, loaded_flat, spans):
        """The array loaded state ``key`` of parameter ``i`` (``p``) is copied into: where its
        group tiles a stretch of an arena, a view of one flat buffer per key for the group
        (made once, in ``loaded_flat``), which the group's next step keeps (:meth:`_flatten`),
        so that an array read from opt.state after the load stays the one stepped (copied
        into a new buffer at that step, it had been left behind); else like_lines' copy.
        ``spans``: group index -> its ArenaSpan or None, found once per group."""
        gi, k = self._position(i)
        span = self._group_span(gi, spans)
        if span is None:
            return self._like_param(p, key, None)
        buf = loaded_flat.get((gi, key))
        if buf is None:
            buf = loaded_flat[gi, key] = self._like_param(span.params, key, None)
        return buf[span.offsets[k]:span.offsets[k + 1]].reshape(p.shape)

    def _group_span(self, gi, spans):
        """Group ``gi``'s ArenaSpan, or None, found once per group (``spans`` caches it)."""
        if gi not in spans:
            spans[gi] = ParameterArena.span_of(self.param_groups[gi]["params"])
        return spans[gi]

    def _position(self, i: int) -> tuple[int, int]:
        """(group index, index in the group) of flat parameter index ``i``."""
        gi = next(gi for gi in reversed(range(len(self._starts))) if self._starts[gi] <= i)
        return gi, i - self._starts[gi]

    _FORCED: dict[str, Any] = {}    # group entries a state dict cannot change (AdamW's)

    # --------------------------------------------------------------- pickle and deepcopy
    def __getstate__(self):
        """Parameters that are views of a ParameterArena are saved as (arena, position), so a
        copy's parameters are views of the copied arena (views of it held elsewhere in the same
        pickle come back as arrays of their own, as NumPy pickles any view: README, "Many small
        parameters"); plans and scalar slots are made
        again (from the states' values); the states kept for arrays out of the groups go with
        their arrays. Groups popped from ``param_groups`` since the last
        step are followed first (the copy's flat indices and slots are rebuilt from its
        groups: the popped group's left them out of step, and the copy raised IndexError)."""
        with self._lock:
            self._sync_groups()
        state = dict(self.__dict__)
        state["_plans"], state["_loaded_flat"] = {}, {}
        del state["_slots"]
        state.pop("_disjoint", None)
        state.pop("_lock", None)
        state.pop("_stepped_groups", None)
        state.pop("_groups", None)
        state.pop("_held", None)
        # the states kept for arrays out of the groups, with their arrays (a copy's are its
        # own: keyed again by their ids there), as torch's copies keep them in opt.state
        state["_detached"] = [(_arena_params([p])[0], entry) for p, entry in
                              ((ref(), entry) for ref, entry in self._detached.values())
                              if p is not None]
        groups = []
        for group in self.param_groups:
            saved = _Group(group)
            saved.__dict__.update(getattr(group, "__dict__", {}))
            dict.__setitem__(saved, "params", _arena_params(group["params"]))
            groups.append(saved)
        state["param_groups"] = groups
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = _step_lock()
        self._stepped_groups = set()
        self._disjoint = None
        for group in self.param_groups:
            params = []
            for p in group["params"]:
                params.extend(p.resolve() if isinstance(p, _ArenaParams) else [p])
            dict.__setitem__(group, "params", _Params(params))
            if self._RENAMED and isinstance(group, _Group):
                # (a pickle from before groups took the course's names as they are assigned:
                # one set by hand beside its key is dropped, its key kept, as load_state_dict
                # keeps it)
                group.aliases = self._aliases()
                for alias, key in self._RENAMED.items():
                    if alias in group and key in group:
                        dict.__delitem__(group, alias)
        self._remember_groups()
        # (an array only this list held is freed as it goes, and its state with it; a pickle
        # of a version before the list has none)
        detached = [(p.resolve()[0] if isinstance(p, _ArenaParams) else p, entry)
                    for p, entry in state.get("_detached", ())]
        self._detached = {id(p): (self._detach(p), entry) for p, entry in detached}
        self._slots = self._slots_of(self.param_groups)
        for i, entry in self._state.items():
            self._bind(*self._position(i), entry)
        # an arena group's state into flat buffers at once, as load_state_dict puts it: NumPy
        # pickled each view as an array of its own, which the first step had moved, leaving
        # arrays read from the copy's opt.state behind
        self._loaded_flat, spans = {}, {}
        for i, entry in self._state.items():
            gi, k = self._position(i)
            if self._group_span(gi, spans) is None or entry.adopted:
                continue            # (plain arrays' state stays the arrays unpickled)
            p = self.param_groups[gi]["params"][k]
            for key, value in list(entry.items()):
                if (key not in self._slots[gi] and isinstance(value, np.ndarray)
                        and value.shape == p.shape and value.dtype == p.dtype):
                    target = self._load_target(i, p, key, self._loaded_flat, spans)
                    target[...] = value
                    _set(entry, key, target)

    def __deepcopy__(self, memo):
        return _deepcopy_locked(self, memo)

    def __copy__(self):
        """A shallow copy, as torch.optim's: another handle on the same parameters, param
        groups and state (step counts included), which a step of either advances. (Made by
        pickling's protocol, it rebound the shared state's step counts to its own, which the
        original then no longer advanced: its state_dict() and, after any state change, its
        bias corrections went back to the count at the copy.) The two share one instance
        dict: with a copy of it, a change that rebinds the bookkeeping (add_param_group's
        parameter count, load_state_dict's or ``opt.state = ...``'s new state) reached only
        the handle it was made through, and the other refused the grads or stepped the old
        state."""
        new = object.__new__(type(self))
        new.__dict__ = self.__dict__
        return new

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for k, group in enumerate(self.param_groups):
            hyper = ", ".join(f"{key}={v!r}" for key, v in group.items() if key not in _NOT_HYPER)
            lines.append(f"  group {k}: {len(group['params'])} params, {hyper}")
        return "\n".join(lines + [")"])


def _next_count(batch):
    """The step count ``batch``'s call steps to (None: the optimizer keeps none); ValueError
    for a count at 2**53, the largest a state holds, which a step would take past it (the
    state dict saved after had been refused by load_state_dict)."""
    if batch.steps is None:
        return None
    count = batch.counts[batch.first]
    if count >= _MAX_STEP:
        raise ValueError(f"Invalid step count {count}: 2**53 is the largest a state holds, "
                         "and it steps no further (assign a smaller state[i]['step'])")
    return count + 1


def _scalar(where, key, value):
    """A state dict's step or mu_product as a Python number (torch saves 0-d tensors, which
    arrive as 0-d arrays)."""
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "fiu":
        value = value.item()
    if key == "step" and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
        raise TypeError(f"{where}[{key!r}] must be a number, got {type(value).__name__}")
    return value


def _arena_params(params):
    """``params`` as pickled: :class:`_ArenaParams` for views of a ParameterArena (one for
    a group that tiles a stretch of one), the arrays themselves otherwise."""
    span = ParameterArena.span_of(params)
    if span is not None:
        return [_ArenaParams(span.arena, span.first, len(params))]
    spans = [ParameterArena.span_of([p]) for p in params]
    return [p if sp is None else _ArenaParams(sp.arena, sp.first, 1)
            for p, sp in zip(params, spans)]


class SGD(Optimizer):
    """torch.optim.SGD (momentum, dampening, Nesterov, weight decay, maximize).

    One step, with ``g = ±grad + weight_decay * param``::

        buf = g                                       (a parameter's first step)
        buf = momentum * buf + (1 - dampening) * g    (later steps)
        param -= lr * (g + momentum * buf if nesterov else buf)   (with momentum)
        param -= lr * g                                            (without)

    ``opt.step(grads)`` takes the grads in the structure of ``params`` (for a dict, the same keys
    or the course's ``"d" + name``); a step that raises changes nothing.

    Parameters
    ----------
    params : dict of ndarray, sequence of ndarray, or list of dict
        The parameters, float32 or float64 arrays updated in place by :meth:`step`: a dict
        ``name -> array`` (the course's ``parameters``), a list or tuple of arrays, or
        torch-style param groups ``{"params": ..., <hyper-parameter overrides>}``.
    lr : float, default 1e-3
        Learning rate, >= 0 (torch 2.13's default).
    momentum : float, default 0.0
        Momentum factor, >= 0.
    dampening : float, default 0.0
        Dampening of the momentum, >= 0.
    nesterov : bool, default False
        Nesterov momentum (needs ``momentum > 0`` and zero dampening).
    weight_decay : float, default 0.0
        L2 penalty, >= 0.
    maximize : bool, default False
        Ascend the objective: ``g = -grad``.

    State per parameter (torch's keys): ``momentum_buffer`` (with momentum).

    Raises
    ------
    ValueError
        A hyper-parameter out of range (its value in the message), a read-only parameter, or
        an empty parameter list.
    TypeError
        A hyper-parameter of the wrong type, or a parameter that is not a float32/float64
        ``numpy.ndarray`` (named).
    """

    _BOUNDS = dict(lr=NONNEG, momentum=NONNEG, dampening=NONNEG, weight_decay=NONNEG,
                   nesterov=FLAG, maximize=FLAG)
    _OPTIONAL_STATE = ("momentum_buffer",)

    def __init__(self, params: Params, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      nesterov=nesterov, weight_decay=weight_decay,
                                      maximize=maximize))

    def _check(self, group):
        super()._check(group)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Invalid nesterov=True: Nesterov momentum requires a momentum > 0 "
                             f"and zero dampening (momentum={group['momentum']!r}, "
                             f"dampening={group['dampening']!r})")

    def _init_state(self, param, group):
        return {}

    def _phase(self, state):
        # torch's first step, decided per parameter: a parameter without a buffer yet steps
        # in its own kernel call (first_step=True), apart from those with one
        return "momentum_buffer" in state

    def _option_state(self, group):
        # (not filled: at the first step the kernel sets it to the grad)
        return (("momentum_buffer", None),) if group["momentum"] != 0 else ()

    def _update(self, group, params, grads, batch, step):
        bufs = batch.optional.get("momentum_buffer")
        first = bufs is not None and not batch.has("momentum_buffer")
        ops.foreach_sgd_step_(params, grads, bufs, lr=group["lr"],
                              momentum=group["momentum"], dampening=group["dampening"],
                              nesterov=group["nesterov"], weight_decay=group["weight_decay"],
                              maximize=group["maximize"], first_step=first)


class Momentum(Optimizer):
    """The course's gradient descent with momentum.

    One step: ``v = beta * v + (1 - beta) * grad``; ``param -= lr * v`` (``v`` starts at zero).

    ``opt.step(grads)`` takes the grads in the structure of ``params`` (for a dict, the same keys
    or the course's ``"d" + name``); a step that raises changes nothing.

    Parameters
    ----------
    params : dict of ndarray, sequence of ndarray, or list of dict
        The parameters, float32 or float64 arrays updated in place by :meth:`step`: a dict
        ``name -> array`` (the course's ``parameters``), a list or tuple of arrays, or
        torch-style param groups ``{"params": ..., <hyper-parameter overrides>}``.
    lr : float
        Learning rate, >= 0.
    beta : float, default 0.9
        Momentum, in [0, 1).

    State per parameter: ``momentum_buffer`` (the velocity ``v``).

    Raises
    ------
    ValueError
        A hyper-parameter out of range (its value in the message), a read-only parameter, or
        an empty parameter list.
    TypeError
        A hyper-parameter of the wrong type, or a parameter that is not a float32/float64
        ``numpy.ndarray`` (named).
    """

    _BOUNDS = dict(lr=NONNEG, beta=UNIT_OPEN)
    _STATE = ("momentum_buffer",)

    def __init__(self, params: Params, lr: float, beta: float = 0.9) -> None:
        super().__init__(params, dict(lr=lr, beta=beta))

    def _update(self, group, params, grads, batch, step):
        ops.foreach_momentum_step_(params, grads, batch.columns["momentum_buffer"],
                                   lr=group["lr"], beta=group["beta"])


# RMSprop._option_state by (momentum > 0, centered), made once
_RMSPROP_STATE = {(m, c): (("momentum_buffer", 0),) * m + (("grad_avg", 0),) * c
                  for m in (False, True) for c in (False, True)}


class _NotGiven(float):
    """A default that ``isinstance`` tells from the same number passed (an argument whose
    alias may be given instead: passing both is an error, whatever the value)."""


class RMSprop(Optimizer):
    """torch.optim.RMSprop (centered, momentum, weight decay), or the course's form.

    One step, with ``g = ±grad + weight_decay * param``::

        square_avg = alpha * square_avg + (1 - alpha) * g**2
        grad_avg += (1 - alpha) * (g - grad_avg)                      (centered)
        s = square_avg - grad_avg**2 if centered else square_avg
        avg = sqrt(s) + eps                (sqrt(s + eps) with eps_inside_sqrt)
        buf = momentum * buf + g / avg;  param -= lr * buf            (momentum > 0)
        param -= lr * g / avg                                         (otherwise)

    ``opt.step(grads)`` takes the grads in the structure of ``params`` (for a dict, the same keys
    or the course's ``"d" + name``); a step that raises changes nothing.

    Parameters
    ----------
    params : dict of ndarray, sequence of ndarray, or list of dict
        The parameters, float32 or float64 arrays updated in place by :meth:`step`: a dict
        ``name -> array`` (the course's ``parameters``), a list or tuple of arrays, or
        torch-style param groups ``{"params": ..., <hyper-parameter overrides>}``.
    lr : float, default 0.01
        Learning rate, >= 0.
    alpha : float, default 0.99
        Smoothing constant, >= 0 (torch's range).
    eps : float, default 1e-8
        Added to the denominator, >= 0.
    weight_decay : float, default 0.0
        L2 penalty, >= 0.
    momentum : float, default 0.0
        Momentum factor, >= 0.
    centered : bool, default False
        Normalize by the estimated variance of the gradient.
    eps_inside_sqrt : bool, default False
        The denominator ``sqrt(s + eps)`` (eps inside the root, as TensorFlow's RMSProp and
        some of the course's texts write it) instead of torch's ``sqrt(s) + eps`` (the
        default, as the course's lecture slide ``dW / (sqrt(s) + eps)``).
    maximize : bool, default False
        Ascend the objective: ``g = -grad``.
    beta : float, optional
        The course's name for ``alpha`` (give one of them), in [0, 1) as API.md bounds every
        beta (``alpha`` takes torch's range); groups and state dicts say ``alpha``, as torch's.

    State per parameter (torch's keys): ``step``, ``square_avg``, ``momentum_buffer`` (with
    momentum), ``grad_avg`` (centered).

    Raises
    ------
    ValueError
        A hyper-parameter out of range (its value in the message), a read-only parameter, or
        an empty parameter list.
    TypeError
        A hyper-parameter of the wrong type, or a parameter that is not a float32/float64
        ``numpy.ndarray`` (named).
    """

    _RENAMED = {"beta": "alpha"}
    _ALIAS_BOUNDS = {"beta": UNIT_OPEN}

    _BOUNDS = dict(lr=NONNEG, alpha=NONNEG, eps=NONNEG, weight_decay=NONNEG,
                   momentum=NONNEG, centered=FLAG, eps_inside_sqrt=FLAG, maximize=FLAG)
    _STATE = ("step", "square_avg")
    _OPTIONAL_STATE = ("momentum_buffer", "grad_avg")

    # (keyword-only arguments past torch's positional ones, whose next is capturable: torch
    # code's positional capturable=True would be taken as eps_inside_sqrt=True here)
    def __init__(self, params: Params, lr: float = 0.01, alpha: float = _NotGiven(0.99),
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0,
                 centered: bool = False, *, eps_inside_sqrt: bool = False,
                 maximize: bool = False, beta: float | None = None) -> None:
        if beta is not None:
            if not isinstance(alpha, _NotGiven):    # (alpha=0.99 given beside beta too)
                raise TypeError("RMSprop takes alpha or its alias beta, not both")
            check_real("beta", beta, self._ALIAS_BOUNDS["beta"])
            alpha = beta
        elif isinstance(alpha, _NotGiven):
            alpha = float(alpha)
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered,
                                      eps_inside_sqrt=eps_inside_sqrt, maximize=maximize))

    def _option_state(self, group):
        return _RMSPROP_STATE[group["momentum"] > 0, bool(group["centered"])]

    def _update(self, group, params, grads, batch, step):
        bufs = batch.optional.get("momentum_buffer")
        grad_avgs = batch.optional.get("grad_avg")
        ops.foreach_rmsprop_step_(params, grads, batch.columns["square_avg"],
                                  lr=group["lr"], beta=group["alpha"], eps=group["eps"],
                                  weight_decay=group["weight_decay"], momentum_buffers=bufs,
                                  momentum=group["momentum"], grad_avgs=grad_avgs,
                                  maximize=group["maximize"],
                                  eps_inside_sqrt=group["eps_inside_sqrt"])


class Adagrad(Optimizer):
    """torch.optim.Adagrad.

    Step ``t``, with ``g = ±grad + weight_decay * param``::

        sum += g**2
        param -= lr / (1 + (t - 1) * lr_decay) * g / (sqrt(sum) + eps)

    ``opt.step(grads)`` takes the grads in the structure of ``params`` (for a dict, the same keys
    or the course's ``"d" + name``); a step that raises changes nothing.

    Parameters
    ----------
    params : dict of ndarray, sequence of ndarray, or list of dict
        The parameters, float32 or float64 arrays updated in place by :meth:`step`: a dict
        ``name -> array`` (the course's ``parameters``), a list or tuple of arrays, or
        torch-style param groups ``{"params": ..., <hyper-parameter overrides>}``.
    lr : float, default 0.01
        Learning rate, >= 0.
    lr_decay : float, default 0.0
        Learning-rate decay, >= 0.
    weight_decay : float, default 0.0
        L2 penalty, >= 0.
    initial_accumulator_value : float, default 0.0
        Starting value of ``sum``, >= 0, for every group (as torch, which ignores a group's own).
    eps : float, default 1e-10
        Added to the denominator, >= 0.
    maximize : bool, default False
        Ascend the objective: ``g = -grad``.

    State per parameter (torch's keys): ``step``, ``sum`` (both exist from construction, as in
    torch).

    Raises
    ------
    ValueError
        A hyper-parameter out of range (its value in the message), a read-only parameter, or
        an empty parameter list.
    TypeError
        A hyper-parameter of the wrong type, or a parameter that is not a float32/float64
        ``numpy.ndarray`` (named).
    """

    _BOUNDS = dict(lr=NONNEG, lr_decay=NONNEG, weight_decay=NONNEG,
                   initial_accumulator_value=NONNEG, eps=NONNEG, maximize=FLAG)
    _STATE = ("step", "sum")

    def __init__(self, params: Params, lr: float = 0.01, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, *, maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize))
        # as torch: the accumulator exists (and is in the state dict) before the first step
        for gi, group in enumerate(self.param_groups):
            for k in range(len(group["params"])):
                _set(self._state, self._starts[gi] + k, self._new_state(gi, k))

    def _init_state(self, param, group):
        # as torch: from the constructor's value, also where a group gives its own (torch reads
        # a group's initial_accumulator_value nowhere; fastopt.torch.Adagrad does the same)
        return {"step": 0,
                "sum": self._like_param(param, "sum",
                                        self.defaults["initial_accumulator_value"])}

    def _update(self, group, params, grads, batch, step):
        ops.foreach_adagrad_step_(params, grads, batch.columns["sum"], step,
                                  lr=group["lr"], lr_decay=group["lr_decay"],
                                  weight_decay=group["weight_decay"], eps=group["eps"],
                                  maximize=group["maximize"])


_AMSGRAD_STATE = (("max_exp_avg_sq", 0),)     # (Adam._option_state, made once)


class Adam(Optimizer):
    """torch.optim.Adam (AdamW with ``decoupled_weight_decay``), or the course's form.

    Step ``t``, bias correction always on::

        param *= 1 - lr * weight_decay          (decoupled_weight_decay)
        g = ±grad (+ weight_decay * param       otherwise)
        m += (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g**2
        v = vmax = max(vmax, v)                 (amsgrad)
        param -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    With ``eps_inside_sqrt``: ``param -= lr * m_hat / sqrt(v_hat + eps)``, eps inside the root
    (the form some of the course's texts write). The course notebook's code, ``W -=
    learning_rate * v_corrected / (sqrt(s_corrected) + epsilon)``, is the default, the last
    line above (``fastopt.course.update_parameters_with_adam``).

    ``opt.step(grads)`` takes the grads in the structure of ``params`` (for a dict, the same keys
    or the course's ``"d" + name``); a step that raises changes nothing.

    Parameters
    ----------
    params : dict of ndarray, sequence of ndarray, or list of dict
        The parameters, float32 or float64 arrays updated in place by :meth:`step`: a dict
        ``name -> array`` (the course's ``parameters``), a list or tuple of arrays, or
        torch-style param groups ``{"params": ..., <hyper-parameter overrides>}``.
    lr : float, default 1e-3
        Learning rate, >= 0.
    betas : tuple of float, default (0.9, 0.999)
        ``(beta1, beta2)``, each in [0, 1): decay of the first and second moments.
    eps : float, default 1e-8
        Added to the denominator, >= 0.
    weight_decay : float, default 0.0
        Weight decay, >= 0: an L2 penalty, or decoupled with ``decoupled_weight_decay``.
    amsgrad : bool, default False
        Divide by the running maximum of ``v`` (AMSGrad).
    maximize : bool, default False
        Ascend the objective: ``g = -grad``.
    decoupled_weight_decay : bool, default False
        Decay the parameter directly (AdamW) instead of adding an L2 term to the grad.
    eps_inside_sqrt : bool, default False
        The denominator ``sqrt(v_hat + eps)`` instead of ``sqrt(v_hat) + eps`` (the course
        notebook's code adds epsilon after the root, as the default does).

    State per parameter (torch's keys): ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v),
    ``max_exp_avg_sq`` (amsgrad).

    Raises
    ------
    ValueError
        A hyper-parameter out of range (its value in the message), a read-only parameter, or
        an empty parameter list.
    TypeError
        A hyper-parameter of the wrong type, or a parameter that is not a float32/float64
        ``numpy.ndarray`` (named).

    Examples
    --------
    >>> import numpy as np, fastopt as fo
    >>> params = {"W1": np.ones((2, 2)), "b1": np.zeros((2, 1))}
    >>> opt = fo.Adam(params, lr=0.1)
    >>> opt.step({"dW1": np.ones((2, 2)), "db1": np.ones((2, 1))})
    >>> round(float(params["W1"][0, 0]), 6)     # 1 - lr * m_hat / (sqrt(v_hat) + eps)
    0.9
    """

    _BOUNDS = dict(_ADAM_BOUNDS, amsgrad=FLAG, decoupled_weight_decay=FLAG, eps_inside_sqrt=FLAG)
    _STATE = ("step", "exp_avg", "exp_avg_sq")
    _OPTIONAL_STATE = ("max_exp_avg_sq",)

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
                 maximize: bool = False, decoupled_weight_decay: bool = False,
                 eps_inside_sqrt: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=_pair(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      eps_inside_sqrt=eps_inside_sqrt))

    def _init_state(self, param, group):
        state = super()._init_state(param, group)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = self._like_param(param, "max_exp_avg_sq")
        return state

    def _option_state(self, group):
        # (also made by _init_state: here for amsgrad switched on after the first step)
        return _AMSGRAD_STATE if group["amsgrad"] else ()

    def _update(self, group, params, grads, batch, step):
        vmaxes = batch.optional.get("max_exp_avg_sq")
        ops.foreach_adam_step_(params, grads, batch.columns["exp_avg"],
                               batch.columns["exp_avg_sq"], step, lr=group["lr"],
                               betas=group["betas"], eps=group["eps"],
                               weight_decay=group["weight_decay"], max_exp_avg_sqs=vmaxes,
                               maximize=group["maximize"],
                               decoupled_weight_decay=group["decoupled_weight_decay"],
                               eps_inside_sqrt=self._option(group, "eps_inside_sqrt"))


class AdamW(Adam):
    """torch.optim.AdamW: :class:`Adam` with decoupled weight decay.

    Each step first shrinks ``param *= 1 - lr * weight_decay``, then takes the Adam step
    without an L2 term; its groups say ``decoupled_weight_decay=True``, as torch's.

    ``opt.step(grads)`` takes the grads in the structure of ``params`` (for a dict, the same keys
    or the course's ``"d" + name``); a step that raises changes nothing.

    Parameters
    ----------
    params : dict of ndarray, sequence of ndarray, or list of dict
        The parameters, float32 or float64 arrays updated in place by :meth:`step`: a dict
        ``name -> array`` (the course's ``parameters``), a list or tuple of arrays, or
        torch-style param groups ``{"params": ..., <hyper-parameter overrides>}``.
    lr : float, default 1e-3
        Learning rate, >= 0.
    betas : tuple of float, default (0.9, 0.999)
        ``(beta1, beta2)``, each in [0, 1): decay of the first and second moments.
    eps : float, default 1e-8
        Added to the denominator, >= 0.
    weight_decay : float, default 1e-2
        Decoupled weight decay, >= 0.
    amsgrad : bool, default False
        Divide by the running maximum of ``v`` (AMSGrad).
    maximize : bool, default False
        Ascend the objective: ``g = -grad``.

    A param group may also set Adam's ``eps_inside_sqrt`` (the course form, see :class:`Adam`;
    not a constructor argument, as torch's AdamW has none), which its steps honour.

    State per parameter (torch's keys): ``step``, ``exp_avg``, ``exp_avg_sq``,
    ``max_exp_avg_sq`` (amsgrad).

    Raises
    ------
    ValueError
        A hyper-parameter out of range (its value in the message), a read-only parameter, or
        an empty parameter list.
    TypeError
        A hyper-parameter of the wrong type, or a parameter that is not a float32/float64
        ``numpy.ndarray`` (named).
    """

    _BOUNDS = dict(_ADAM_BOUNDS, amsgrad=FLAG, decoupled_weight_decay=FLAG)
    # Adam's course form, which a group may set (or an Adam state dict loaded bring): checked
    # with the others before any group steps (a bad one had raised in its group's kernel,
    # after the groups before it stepped)
    _OPTIONAL = {"eps_inside_sqrt": (FLAG, False)}
    _FORCED = {"decoupled_weight_decay": True}     # as torch's AdamW.__setstate__

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                 maximize: bool = False) -> None:
        Optimizer.__init__(self, params, dict(lr=lr, betas=_pair(betas), eps=eps,
                                              weight_decay=weight_decay, amsgrad=amsgrad,
                                              maximize=maximize, decoupled_weight_decay=True))


class Adadelta(Optimizer):
    """torch.optim.Adadelta.

    One step, with ``g = ±grad + weight_decay * param``::

        square_avg = rho * square_avg + (1 - rho) * g**2
        delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
        acc_delta = rho * acc_delta + (1 - rho) * delta**2
        param -= lr * delta

    ``opt.step(grads)`` takes the grads in the structure of ``params`` (for a dict, the same keys
    or the course's ``"d" + name``); a step that raises changes nothing.

    Parameters
    ----------
    params : dict of ndarray, sequence of ndarray, or list of dict
        The parameters, float32 or float64 arrays updated in place by :meth:`step`: a dict
        ``name -> array`` (the course's ``parameters``), a list or tuple of arrays, or
        torch-style param groups ``{"params": ..., <hyper-parameter overrides>}``.
    lr : float, default 1.0
        Learning rate (scales ``delta``), >= 0.
    rho : float, default 0.9
        Decay of both running averages, in [0, 1].
    eps : float, default 1e-6
        Added inside both square roots, >= 0.
    weight_decay : float, default 0.0
        L2 penalty, >= 0.
    maximize : bool, default False
        Ascend the objective: ``g = -grad``.

    State per parameter (torch's keys): ``step``, ``square_avg``, ``acc_delta``.

    Raises
    ------
    ValueError
        A hyper-parameter out of range (its value in the message), a read-only parameter, or
        an empty parameter list.
    TypeError
        A hyper-parameter of the wrong type, or a parameter that is not a float32/float64
        ``numpy.ndarray`` (named).
    """

    _BOUNDS = dict(lr=NONNEG, rho=UNIT, eps=NONNEG, weight_decay=NONNEG, maximize=FLAG)
    _STATE = ("step", "square_avg", "acc_delta")

    # (keyword-only arguments past torch's positional ones, whose next is foreach: torch code's
    # positional foreach=True would be taken as maximize=True here)
    def __init__(self, params: Params, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0, *, maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize))

    def _update(self, group, params, grads, batch, step):
        ops.foreach_adadelta_step_(params, grads, batch.columns["square_avg"],
                                   batch.columns["acc_delta"], lr=group["lr"],
                                   rho=group["rho"], eps=group["eps"],
                                   weight_decay=group["weight_decay"],
                                   maximize=group["maximize"])


class Adamax(Optimizer):
    """torch.optim.Adamax (Adam with the infinity norm).

    Step ``t``, with ``g = ±grad + weight_decay * param``::

        exp_avg += (1 - beta1) * (g - exp_avg)
        exp_inf = max(beta2 * exp_inf, |g| + eps)      (eps inside the max; NaN propagates)
        param -= lr / (1 - beta1**t) * exp_avg / exp_inf

    ``opt.step(grads)`` takes the grads in the structure of ``params`` (for a dict, the same keys
    or the course's ``"d" + name``); a step that raises changes nothing.

    Parameters
    ----------
    params : dict of ndarray, sequence of ndarray, or list of dict
        The parameters, float32 or float64 arrays updated in place by :meth:`step`: a dict
        ``name -> array`` (the course's ``parameters``), a list or tuple of arrays, or
        torch-style param groups ``{"params": ..., <hyper-parameter overrides>}``.
    lr : float, default 2e-3
        Learning rate, >= 0.
    betas : tuple of float, default (0.9, 0.999)
        ``(beta1, beta2)``, each in [0, 1).
    eps : float, default 1e-8
        Added to ``|g|``, >= 0.
    weight_decay : float, default 0.0
        L2 penalty, >= 0.
    maximize : bool, default False
        Ascend the objective: ``g = -grad``.

    State per parameter (torch's keys): ``step``, ``exp_avg``, ``exp_inf``.

    Raises
    ------
    ValueError
        A hyper-parameter out of range (its value in the message), a read-only parameter, or
        an empty parameter list.
    TypeError
        A hyper-parameter of the wrong type, or a parameter that is not a float32/float64
        ``numpy.ndarray`` (named).
    """

    _BOUNDS = _ADAM_BOUNDS
    _STATE = ("step", "exp_avg", "exp_inf")

    # (maximize keyword-only: as Adadelta's)
    def __init__(self, params: Params, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=_pair(betas), eps=eps,
                                      weight_decay=weight_decay, maximize=maximize))

    def _update(self, group, params, grads, batch, step):
        ops.foreach_adamax_step_(params, grads, batch.columns["exp_avg"],
                                 batch.columns["exp_inf"], step, lr=group["lr"],
                                 betas=group["betas"], eps=group["eps"],
                                 weight_decay=group["weight_decay"], maximize=group["maximize"])


class NAdam(Optimizer):
    """torch.optim.NAdam: Adam with Nesterov momentum on a schedule.

    Step ``t``::

        mu_t = beta1 * (1 - 0.5 * 0.96**(t * momentum_decay));   P_t = mu_1 * ... * mu_t
        param *= 1 - lr * weight_decay     (decoupled_weight_decay)
        g = ±grad (+ weight_decay * param  otherwise)
        exp_avg += (1 - beta1) * (g - exp_avg)
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g**2
        d = sqrt(exp_avg_sq / (1 - beta2**t)) + eps
        param -= lr * (1 - mu_t) / (1 - P_t) * g / d
                 + lr * mu_{t+1} / (1 - P_t * mu_{t+1}) * exp_avg / d

    ``opt.step(grads)`` takes the grads in the structure of ``params`` (for a dict, the same keys
    or the course's ``"d" + name``); a step that raises changes nothing.

    Parameters
    ----------
    params : dict of ndarray, sequence of ndarray, or list of dict
        The parameters, float32 or float64 arrays updated in place by :meth:`step`: a dict
        ``name -> array`` (the course's ``parameters``), a list or tuple of arrays, or
        torch-style param groups ``{"params": ..., <hyper-parameter overrides>}``.
    lr : float, default 2e-3
        Learning rate, >= 0.
    betas : tuple of float, default (0.9, 0.999)
        ``(beta1, beta2)``, each in [0, 1): decay of the first and second moments.
    eps : float, default 1e-8
        Added to the denominator, >= 0.
    weight_decay : float, default 0.0
        Weight decay, >= 0: an L2 penalty, or decoupled with ``decoupled_weight_decay``.
    momentum_decay : float, default 4e-3
        Speed of the momentum schedule, >= 0.
    decoupled_weight_decay : bool, default False
        AdamW-style decay (NAdamW) instead of adding it to the grad.
    maximize : bool, default False
        Ascend the objective: ``g = -grad``.

    State per parameter (torch's keys): ``step``, ``exp_avg``, ``exp_avg_sq`` and
    ``mu_product`` (``P_t``, a float; as in torch it is multiplied in float32, so trajectories
    match torch's; a torch state dict's 0-d array loads as well).

    Raises
    ------
    ValueError
        A hyper-parameter out of range (its value in the message), a read-only parameter, or
        an empty parameter list.
    TypeError
        A hyper-parameter of the wrong type, or a parameter that is not a float32/float64
        ``numpy.ndarray`` (named).
    """

    _scalar_state = ("mu_product",)     # (_update returns its new value)

    _BOUNDS = dict(_ADAM_BOUNDS, momentum_decay=NONNEG, decoupled_weight_decay=FLAG)
    _STATE = ("step", "mu_product", "exp_avg", "exp_avg_sq")

    def __init__(self, params: Params, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=_pair(betas), eps=eps,
                                      weight_decay=weight_decay, momentum_decay=momentum_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize))

    def _init_state(self, param, group):
        return {"step": 0, "mu_product": 1.0, "exp_avg": self._like_param(param, "exp_avg"),
                "exp_avg_sq": self._like_param(param, "exp_avg_sq")}

    def _phase(self, state):
        # the mu product too: it depends on the betas and momentum_decay of each step taken (a
        # parameter that sat steps out, or came from another group, has its own), so one step
        # count does not make one mu product (the first parameter's had been used for all)
        step = state.get("step")
        return None if step is None else (int(step), float(state["mu_product"]))

    def _update(self, group, params, grads, batch, step):
        # parameters stepped together share their phase: step count and mu product
        return ops.foreach_nadam_step_(
            params, grads, batch.columns["exp_avg"], batch.columns["exp_avg_sq"], step,
            batch.scalar("mu_product"), lr=group["lr"], betas=group["betas"], eps=group["eps"],
            weight_decay=group["weight_decay"], momentum_decay=group["momentum_decay"],
            decoupled_weight_decay=group["decoupled_weight_decay"], maximize=group["maximize"])

    def _interrupted_scalar(self, group, batch, step):
        return ops._nadam_scalars(step, batch.scalar("mu_product"), group["lr"], group["betas"],
                                  group["eps"], group["weight_decay"], group["momentum_decay"])[0]


class RAdam(Optimizer):
    """torch.optim.RAdam: SGD with bias-corrected momentum while the variance estimate is
    unreliable, the rectified Adam step after.

    Step ``t``::

        param *= 1 - lr * weight_decay     (decoupled_weight_decay)
        g = ±grad (+ weight_decay * param  otherwise)
        exp_avg += (1 - beta1) * (g - exp_avg)
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g**2
        rho_inf = 2 / (1 - beta2) - 1;   rho_t = rho_inf - 2 t beta2**t / (1 - beta2**t)
        rho_t > 5:   rect = sqrt((rho_t-4) (rho_t-2) rho_inf / ((rho_inf-4) (rho_inf-2) rho_t))
                     param -= lr / (1 - beta1**t) * rect * sqrt(1 - beta2**t)
                              * exp_avg / (sqrt(exp_avg_sq) + eps)
        otherwise:   param -= lr / (1 - beta1**t) * exp_avg

    ``opt.step(grads)`` takes the grads in the structure of ``params`` (for a dict, the same keys
    or the course's ``"d" + name``); a step that raises changes nothing.

    Parameters
    ----------
    params : dict of ndarray, sequence of ndarray, or list of dict
        The parameters, float32 or float64 arrays updated in place by :meth:`step`: a dict
        ``name -> array`` (the course's ``parameters``), a list or tuple of arrays, or
        torch-style param groups ``{"params": ..., <hyper-parameter overrides>}``.
    lr : float, default 1e-3
        Learning rate, >= 0.
    betas : tuple of float, default (0.9, 0.999)
        ``(beta1, beta2)``, each in [0, 1): decay of the first and second moments.
    eps : float, default 1e-8
        Added to the denominator, >= 0.
    weight_decay : float, default 0.0
        Weight decay, >= 0: an L2 penalty, or decoupled with ``decoupled_weight_decay``.
    decoupled_weight_decay : bool, default False
        AdamW-style decay instead of adding it to the grad.
    maximize : bool, default False
        Ascend the objective: ``g = -grad``.

    State per parameter (torch's keys): ``step``, ``exp_avg``, ``exp_avg_sq``.

    Raises
    ------
    ValueError
        A hyper-parameter out of range (its value in the message), a read-only parameter, or
        an empty parameter list.
    TypeError
        A hyper-parameter of the wrong type, or a parameter that is not a float32/float64
        ``numpy.ndarray`` (named).
    """

    _BOUNDS = dict(_ADAM_BOUNDS, decoupled_weight_decay=FLAG)
    _STATE = ("step", "exp_avg", "exp_avg_sq")

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0,
                 decoupled_weight_decay: bool = False, maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=_pair(betas), eps=eps,
                                      weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize))

    def _update(self, group, params, grads, batch, step):
        ops.foreach_radam_step_(params, grads, batch.columns["exp_avg"],
                                batch.columns["exp_avg_sq"], step, lr=group["lr"],
                                betas=group["betas"], eps=group["eps"],
                                weight_decay=group["weight_decay"],
                                decoupled_weight_decay=group["decoupled_weight_decay"],
                                maximize=group["maximize"])


class Lion(Optimizer):
    """Lion, "EvoLved Sign Momentum" (Chen et al. 2023, "Symbolic Discovery of Optimization
    Algorithms"), as ``optax.lion``.

    Every coordinate moves by ``lr`` times the sign of an interpolated momentum, plus
    decoupled weight decay. One step, with ``g = ±grad``::

        update = sign((1 - beta1) * g + beta1 * exp_avg) + weight_decay * param
        exp_avg = (1 - beta2) * g + beta2 * exp_avg
        param -= lr * update

    ``sign`` is 0 at zero and NaN at NaN. Its steps are larger than Adam's: the paper takes a
    learning rate 3-10x smaller than AdamW's and a weight decay 3-10x larger.

    ``opt.step(grads)`` takes the grads in the structure of ``params`` (for a dict, the same keys
    or the course's ``"d" + name``); a step that raises changes nothing.

    Parameters
    ----------
    params : dict of ndarray, sequence of ndarray, or list of dict
        The parameters, float32 or float64 arrays updated in place by :meth:`step`: a dict
        ``name -> array`` (the course's ``parameters``), a list or tuple of arrays, or
        torch-style param groups ``{"params": ..., <hyper-parameter overrides>}``.
    lr : float, default 1e-4
        Learning rate, >= 0.
    betas : tuple of float, default (0.9, 0.99)
        ``(beta1, beta2)``, each in [0, 1): ``beta1`` interpolates the sign's argument,
        ``beta2`` decays the momentum.
    weight_decay : float, default 1e-3
        optax's default, >= 0; added to the update before the learning rate scales it.
    maximize : bool, default False
        Ascend the objective: ``g = -grad``.

    State per parameter: ``exp_avg`` (optax's ``mu``).

    Raises
    ------
    ValueError
        A hyper-parameter out of range (its value in the message), a read-only parameter, or
        an empty parameter list.
    TypeError
        A hyper-parameter of the wrong type, or a parameter that is not a float32/float64
        ``numpy.ndarray`` (named).
    """

    _BOUNDS = dict(lr=NONNEG, betas=BETAS, weight_decay=NONNEG, maximize=FLAG)
    _STATE = ("exp_avg",)

    def __init__(self, params: Params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 1e-3, maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=_pair(betas), weight_decay=weight_decay,
                                      maximize=maximize))

    def _update(self, group, params, grads, batch, step):
        ops.foreach_lion_step_(params, grads, batch.columns["exp_avg"], lr=group["lr"],
                               betas=group["betas"], weight_decay=group["weight_decay"],
                               maximize=group["maximize"])


__all__ = ["Optimizer", "SGD", "Momentum", "RMSprop", "Adagrad", "Adam", "AdamW", "Adadelta",
           "Adamax", "NAdam", "RAdam", "Lion"]
