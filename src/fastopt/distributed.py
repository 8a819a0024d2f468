"""Data-parallel training over MPI with the optimizer state sharded across ranks (ZeRO stage 1).

Every rank holds the whole model on a :class:`fastopt.ParameterArena` and computes grads on its
part of the global batch. ``ShardedOptimizer.step`` then

1. agrees on the grads' validity and on the hyper-parameters (a digest of them) with one
   five-integer ``Allreduce`` (a bad grad on any rank, or an edit of ``lr`` made on some
   ranks only, raises on every rank, before anything is written; so does a rank in another
   call, ``state_dict`` on one rank while the others step, or in another ShardedOptimizer's
   step on the same communicator: RuntimeError naming each rank's);
2. sends each rank the slice of the grad buffer it owns (one ``Alltoallv`` on the flat buffer)
   and sums the N slices on their owner in rank order, then divides by N: the averaged grad is
   ``((g_0 + g_1) + ... + g_{N-1}) / N``, each operation rounded in the parameter dtype;
3. runs the optimizer's fused kernel on the owned slice only, so each rank holds 1/N of the
   optimizer state;
4. all-gathers the updated parameters (one ``Allgatherv``, in place in the arena).

The parameters after each step are bit for bit those of one process stepping the same
optimizer on the averaged grad above, whatever N (tests/test_distributed.py). MPI's own
``Reduce_scatter`` would move the same bytes, but with more than two ranks its summation order
is the library's choice (it differs between algorithms, message sizes and ranks), so the sum is
done here, in a fixed order. Shards split the elements evenly in whole 64-byte cache lines,
counted from the start of the parameters' stretch of the arena.

Needs ``mpi4py`` (``pip install 'fastopt[mpi]'`` adds it and the ``mpich`` wheel, which brings
``mpiexec``); ``import fastopt`` does not import it. Run with ``mpiexec -n 4 python train.py``.
"""
import functools
import hashlib
import numbers
import pickle
import signal
import threading
from typing import Any

import numpy as np

try:
    from mpi4py import MPI
except ImportError as exc:       # pragma: no cover - depends on the environment
    raise ImportError("fastopt.distributed needs mpi4py: pip install 'fastopt[mpi]' "
                      "(mpi4py and the mpich wheel)") from exc

from . import _validate
from ._layout import like_lines
from .arena import ParameterArena, orphaned
from .optim import (NAMED_GRADS_SEQUENCE, Grads, Optimizer, Params, _by_name, _first_readonly,
                    _group_params)

CACHE_LINE = 64       # bytes; shard boundaries fall on multiples of it
_MPI_TYPES = {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE}
# the public calls, each tagged in its first collective (_raise_if_any): ranks in different
# ones raise together
_CALLS = ("ShardedOptimizer()", "add_param_group", "step", "state_dict", "load_state_dict")
# what each entry of _agree_signature's signature is, for its message
_SIGNATURE_PARTS = ("the parameter dtype", "the parameter shapes by param group",
                    "the parameter names", "the optimizer class", "the hyper-parameters",
                    "the constructor's hyper-parameters")
# the id this process proposes for the next ShardedOptimizer made: the ranks take the largest
# of theirs (_agree_signature), so no two optimizers on one communicator share one
_next_id = 0


def shard_bounds(n: int, size: int, itemsize: int) -> list[int]:
    """Boundaries ``[0, b_1, ..., n]`` of ``size`` shards of ``n`` elements.

    The ``ceil(n / line)`` cache lines are dealt out evenly (shards differ by at most one line),
    so every shard but the last starts and ends on a line boundary.

    Parameters
    ----------
    n : int
        Elements to split.
    size : int
        Number of shards (ranks).
    itemsize : int
        Bytes per element (a cache line is 64 bytes).

    Returns
    -------
    list of int
        ``size + 1`` non-decreasing boundaries from 0 to ``n`` (a shard is empty where there
        are fewer cache lines than ranks).

    Raises
    ------
    TypeError, ValueError
        An argument that is not an int, ``n`` negative, ``size`` or ``itemsize`` below 1.
    """
    for name, value, least in (("n", n, 0), ("size", size, 1), ("itemsize", itemsize, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    line = max(1, CACHE_LINE // itemsize)
    lines = -(-n // line)
    return [min(n, (k * lines // size) * line) for k in range(size + 1)]


def _plain(value):
    """A hyper-parameter as the step reads it: a number as a Python float (lr=0.05 on one rank
    and np.float64(0.05) or 0.05 from a schedule on another step alike, and had been refused
    as a disagreement), a flag as a bool, a sequence (betas) as a tuple. A numeric array
    (which the optimizers take: a 0-d lr, a 1-d betas) as its values: its repr has 8 digits,
    and ranks whose values differed past them agreed."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        value = value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v) for v in value)
    return value


def _differing(mine, theirs):
    """The keys, sorted, whose entries differ between the dicts ``mine`` and ``theirs`` (one
    missing counts): what the disagreement messages name."""
    return [k for k in sorted(mine.keys() | theirs.keys()) if mine.get(k) != theirs.get(k)]


def _ctrl_c_after_the_call(method):
    """``method`` (a collective call) with Ctrl-C held until it returns: SIGINT's handler is
    swapped for one that notes the signal, and the real one runs after the call (raising
    KeyboardInterrupt there). A KeyboardInterrupt raised on one rank between two collectives
    of a call (copying the grads into the arena, right after the exchange, averaging) left
    that rank's collectives unmatched: the other ranks waited for them forever. Held, the
    call ends on every rank as it would have, and only then is it interrupted (what the
    ranks do next must agree: README). Only the main thread may set a handler; elsewhere,
    or with SIGINT ignored or at its default, the call runs as it is, and so it does on one
    rank (no collective to leave unmatched; swapping the handler twice costs ~7 us); other
    signals (a SIGTERM handler that exits) are not held."""
    @functools.wraps(method)
    def held(self, *args, **kwargs):
        handler = signal.getsignal(signal.SIGINT)
        comm = self.__dict__.get("comm")        # (None while the constructor runs)
        if (not callable(handler) or threading.current_thread() is not threading.main_thread()
                or comm is not None and comm.Get_size() == 1):
            return method(self, *args, **kwargs)
        noted = []
        signal.signal(signal.SIGINT, lambda signum, frame: noted.append(frame))
        try:
            return method(self, *args, **kwargs)
        finally:
            signal.signal(signal.SIGINT, handler)
            if noted:
                handler(signal.SIGINT, noted[0])
    return held


def _not_one_span(views):
    """Why ``views`` (a ShardedOptimizer's params) are not one stretch of one arena."""
    if not views:
        return "none were given"
    spans = [ParameterArena.span_of([v]) for v in views]
    for i, span in enumerate(spans):
        if span is None:
            return (f"params[{i}] is not one of an arena's own views (a transposed, sliced "
                    "or copied array); put the model's parameters on a "
                    "fastopt.ParameterArena and pass them, or arena.params")
    for i, span in enumerate(spans[1:], 1):
        if span.arena is not spans[0].arena:
            return (f"params[{i}] is on another arena than params[0] ({span.arena.dtype} "
                    f"and {spans[0].arena.dtype}): one ShardedOptimizer per arena")
        if span.first != spans[i - 1].first + 1:
            return f"params[{i}] is not the parameter added after params[{i - 1}]"
    return "they are not"                                   # (not reached)


class ShardedOptimizer:
    """A fastopt optimizer whose state and update are split across the ranks of ``comm``.

    Parameters
    ----------
    optimizer_class : a fastopt optimizer class
        ``fo.Adam``, ``fo.AdamW``, ``fo.SGD``, ``fo.RMSprop``, ... (every one of fastopt's
        optimizers is element-wise, so a slice of the parameters steps independently).
    params : ParameterArena, dict or list of arrays, or list of param-group dicts
        The parameters, which must be consecutive parameters of one ``ParameterArena`` in the
        order they were added (so the parameters and grads are two contiguous buffers and each
        collective is one call). A ``ParameterArena`` means all its parameters, by name.
    comm : mpi4py intracommunicator, default ``MPI.COMM_WORLD``
        The ranks that train together (``MPI.COMM_SELF``: one process; a ``Split`` of the
        world: several independent groups).
    **hyper
        The optimizer's hyper-parameters (``lr=...``, ``betas=...``), as for
        ``optimizer_class``.

    Every rank must construct it with the same parameter shapes, dtype and hyper-parameters
    (checked: a mismatch raises ``ValueError`` on every rank); rank 0's parameter values are
    then broadcast, so all ranks start from the same point.

    Attributes
    ----------
    shard_optimizer : Optimizer
        The ``optimizer_class`` instance over this rank's slice (one array per param group).
    shard : (int, int)
        This rank's element range, relative to the start of the parameters' stretch.
    """

    _missed = None      # why this rank's shard missed a step the others took, if it did
    _id = -1            # which optimizer a call is of (agreed at construction; -1 until then)

    @_ctrl_c_after_the_call
    def __init__(self, optimizer_class: type[Optimizer], params: ParameterArena | Params,
                 comm: MPI.Comm | None = None, **hyper: Any) -> None:
        comm = MPI.COMM_WORLD if comm is None else comm
        # checked here, alone on each rank: every later check is a collective on it. A rank
        # left out of Split(MPI.UNDEFINED) or Create_group gets a null Intracomm
        null = isinstance(comm, MPI.Comm) and comm == MPI.COMM_NULL
        if null or not isinstance(comm, MPI.Intracomm):
            got = "MPI.COMM_NULL" if null else type(comm).__name__
            raise TypeError("comm must be an mpi4py intracommunicator such as MPI.COMM_WORLD "
                            f"or one made by its Split (its ranks train together), got {got}")
        self.comm = comm
        # local checks first; then every rank learns whether any failed
        self._on_every_rank("ShardedOptimizer()", self._setup, optimizer_class, params, hyper)
        self._agree_signature()
        self.comm.Bcast([self._params, _MPI_TYPES[self.dtype]], root=0)

    def _agree_signature(self):
        """Collective: ValueError on every rank unless every rank has the same dtype, shapes
        per param group, names, optimizer class and hyper-parameters, its groups' and its
        constructor's (the shapes per group: ranks that split the same parameters into groups
        otherwise would step alike but gather and scatter state dicts with other bounds). At
        construction, the ranks also agree on the optimizer's id, which each call's first
        collective carries."""
        global _next_id
        # (the constructor's too: Adagrad starts its state from the constructor's
        # initial_accumulator_value whatever the groups say, as torch's)
        defaults = self.shard_optimizer.defaults
        signature = (self.dtype.str, [[p.shape for p in g["params"]] for g in self._full_groups],
                     self._names, self.optimizer_class.__name__, self._hyper_reprs(),
                     {k: repr(_plain(defaults[k])) for k in sorted(defaults)})
        every = self.comm.allgather((signature, _next_id))
        if self._id < 0:        # (add_param_group's new layout keeps its optimizer's)
            self._id = max(n for _, n in every)
            _next_id = max(_next_id, self._id + 1)
        for r, (other, _) in enumerate(every):
            if other != signature:
                # what differs, not both signatures whole (a model's shapes run long)
                what, mine, theirs = next(
                    (w, a, b) for w, a, b in zip(_SIGNATURE_PARTS, signature, other) if a != b)
                if what == "the hyper-parameters":
                    what, mine, theirs = next(
                        (f"param group {gi}'s {k!r}", ga.get(k), gb.get(k))
                        for gi, (ga, gb) in enumerate(zip(mine, theirs))
                        for k in _differing(ga, gb))
                elif what == "the constructor's hyper-parameters":
                    k = _differing(mine, theirs)[0]
                    what, mine, theirs = f"the constructor's {k!r}", mine.get(k), theirs.get(k)
                raise ValueError(f"rank {self.comm.Get_rank()} and rank {r} disagree on {what}: "
                                 f"{mine} here, {theirs} there")

    def _setup(self, optimizer_class, params, hyper):
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)):
            raise TypeError("optimizer_class must be a fastopt optimizer class such as "
                            f"fastopt.Adam, got {optimizer_class!r}")
        self.optimizer_class = optimizer_class
        self._hyper = dict(hyper)
        groups, self._named = _groups_of(params)
        self._full_groups = groups
        views = self._views = [p for g in groups for p in g["params"]]
        span = ParameterArena.span_of(views)
        if span is None and views and orphaned(views[0]):
            raise ValueError("params are views of a ParameterArena that no longer exists (only "
                             "its views were kept, and NumPy views do not keep it alive); keep "
                             "the arena, or arena.params, and pass that")
        if span is None:
            raise ValueError("params must be consecutive parameters of one ParameterArena, in "
                             "the order they were added (the collectives run on its flat "
                             f"buffers): {_not_one_span(views)}")
        self.arena = span.arena
        self.dtype = span.arena.dtype
        self._names = [n for g in groups for n in g.get("param_names", ())] or None
        k = _first_readonly(views)
        if k >= 0:
            raise ValueError(f"parameter {self._label(k)} is read-only; parameters are updated "
                             "in place")
        # element offsets of every parameter, relative to the start of the stretch
        offsets = self._offsets = span.offsets
        self._params = span.params
        self._grads = span.grads
        self._grad_views = span.grad_views
        self._group_bounds, k = [], 0      # per group: (first element, stop, first param)
        for g in groups:
            self._group_bounds.append((offsets[k], offsets[k + len(g["params"])], k))
            k += len(g["params"])

        size, rank = self.comm.Get_size(), self.comm.Get_rank()
        self.bounds = shard_bounds(span.params.size, size, self.dtype.itemsize)
        self.shard = s0, s1 = self.bounds[rank], self.bounds[rank + 1]
        self.shard_optimizer = optimizer_class(
            [dict({k: v for k, v in g.items() if k not in ("params", "param_names")},
                  params=[self._params[self._clip(a, b)]])
             for g, (a, b, _) in zip(groups, self._group_bounds)], **hyper)
        # its groups and their shards, as made: the layout below is per group
        self._made = [(g, g["params"][0]) for g in self.shard_optimizer.param_groups]

        # the grad exchange: this rank's slice of every other rank's grad buffer, one row each
        mine, mpi_type = s1 - s0, _MPI_TYPES[self.dtype]
        counts = [b - a for a, b in zip(self.bounds, self.bounds[1:])]
        self._recv = np.empty((size - 1, mine), self.dtype)
        self._send_spec = [self._grads, [0 if r == rank else counts[r] for r in range(size)],
                           self.bounds[:-1], mpi_type]
        self._recv_spec = [self._recv, [0 if r == rank else mine for r in range(size)],
                           [mine * (r - (r > rank)) for r in range(size)], mpi_type]
        self._gather_spec = [self._params, counts, self.bounds[:-1], mpi_type]
        # the averaged grad of the shard; with one rank, the grad buffer itself; else placed
        # as the arena's grads are beside the shard's params (_layout.like_lines: 4K aliasing)
        self._avg = self._grads[s0:s1] if size == 1 else like_lines(self._params[s0:s1], None)
        self._shard_grads = [self._avg[self._clip(a, b, s0)] for a, b, _ in self._group_bounds]

    @_ctrl_c_after_the_call
    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a param group, as torch's ZeroRedundancyOptimizer.add_param_group. Every rank
        must call it, with the same group.

        Its parameters must continue the optimizer's stretch of the ParameterArena: the
        parameters added to the arena right after the optimizer's last one, in order (layers
        unfrozen, or added to the arena, since construction). Hyper-parameters not given take
        the optimizer's (those passed to the constructor). The shards are then dealt out
        again over all the parameters: the state is gathered to rank 0 and scattered over the
        new shards (a :meth:`state_dict` and :meth:`load_state_dict` round trip, exact), and
        rank 0's values of the new parameters are broadcast, as at construction. Steps then
        update the new group as one process stepping the plain optimizer that had the same
        ``add_param_group`` call, bit for bit. ``shard_optimizer`` (so ``param_groups``),
        ``shard`` and ``bounds`` are new objects after it.

        Parameters
        ----------
        group : dict
            ``{"params": arrays (a dict of named arrays if the optimizer's parameters were
            given by name), <hyper-parameter overrides>}``.

        Raises
        ------
        TypeError, ValueError
            What the plain optimizer's ``add_param_group`` refuses (not a dict with
            ``"params"``, a parameter already in a group or twice in this one, a
            hyper-parameter of the wrong type or out of range, named and unnamed groups
            mixed), or parameters that do not continue the stretch, on any rank: raised on
            every rank, naming the first failing rank. ValueError on every rank when the
            ranks' groups differ (shapes, names or hyper-parameters). Either is raised before
            anything changes: a refused call changes nothing.
        """
        # local checks first, on a new optimizer; then every rank learns of any
        new = self._on_every_rank("add_param_group", self._with_group, group)
        new._agree_signature()
        saved = self.state_dict()
        if saved is not None:        # the new group: its hyper-parameters as given, no state
            saved["param_groups"].append({"params": list(range(len(self._views),
                                                               len(new._views)))})
        new.load_state_dict(saved)
        self.comm.Bcast([new._params[self._offsets[-1]:], _MPI_TYPES[self.dtype]], root=0)
        self.__dict__.update(new.__dict__)

    def _with_group(self, group):
        """A new ShardedOptimizer over this one's groups (with their current
        hyper-parameters) and ``group``, which the plain optimizer's add_param_group checks
        first; not yet agreed with the other ranks, its state not loaded."""
        if isinstance(group, dict) and not isinstance(group.get("params", {}),
                                                      (dict, np.ndarray)):
            group = dict(group, params=list(group["params"]))    # an iterator: read once
        self._check_groups()
        groups = self._current_groups()
        self.optimizer_class(groups, **self._hyper).add_param_group(group)
        added = _groups_of([group])[0][0]
        if ParameterArena.span_of(self._views + added["params"]) is None:
            raise ValueError("the group's parameters must continue the optimizer's stretch of "
                             "its ParameterArena: the parameters added to the arena right "
                             "after the optimizer's last one, in the order they were added")
        new = object.__new__(type(self))
        new.comm, new._id = self.comm, self._id
        new._setup(self.optimizer_class, groups + [group], self._hyper)
        return new

    def _current_groups(self):
        """The param groups over the full parameters (by name if given so), with this rank's
        current hyper-parameters."""
        out = []
        for g, mine in zip(self._full_groups, self.shard_optimizer.param_groups):
            params = dict(zip(g["param_names"], g["params"])) if self._named else g["params"]
            out.append(dict({k: v for k, v in mine.items() if k != "params"}, params=params))
        return out

    def _label(self, k):
        """Parameter ``k`` as messages name it: its name, else its position."""
        return repr(self._names[k]) if self._names else str(k)

    def _check_groups(self):
        """ValueError unless ``param_groups`` holds the groups this optimizer made, in order,
        each with its shard alone: the shards, exchanges and state dicts are laid out per
        group, so groups change only by :meth:`add_param_group` (a group popped from the list
        had state_dict() raise IndexError, on one rank alone while the others waited in its
        Gatherv)."""
        groups = self.shard_optimizer.param_groups
        if len(groups) != len(self._made) or not all(
                g is mine and len(g["params"]) == 1 and g["params"][0] is shard
                for g, (mine, shard) in zip(groups, self._made)):
            raise ValueError(f"param_groups no longer holds the {len(self._made)} groups this "
                             "optimizer was given, in order, each with its shard of the "
                             "parameters (a group removed, replaced or added, or its 'params' "
                             "edited): its shards are laid out per group; put them back, and "
                             "add groups with add_param_group")

    def _clip(self, a, b, base=0):
        """The slice of this rank's shard inside element range [a, b), shifted by -base."""
        s0, s1 = self.shard
        lo = min(max(a, s0), s1)
        return slice(lo - base, max(lo, min(b, s1)) - base)

    # ----------------------------------------------------------------------------- step
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """This rank's optimizer's param groups: the hyper-parameters (editable between
        steps, identically on every rank) and, under ``"params"``, this rank's slice."""
        return self.shard_optimizer.param_groups

    @property
    def lr(self) -> float | list[float]:
        """The learning rate (a list if the groups differ); setting a number sets every
        group's, a list one per group, on this rank (set it identically on every rank).
        """
        return self.shard_optimizer.lr

    @lr.setter
    def lr(self, value: float | list[float] | tuple[float, ...]) -> None:
        """The learning rate (a list if the groups differ); setting a number sets every
        group's, a list one per group, on this rank (set it identically on every rank).
        """
        self.shard_optimizer.lr = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the parameters' grads in the arena.

        Parameters
        ----------
        set_to_none : bool, default True
            torch's argument, accepted: the arena's grads are a buffer and cannot be None, so
            they are zeroed either way.
        """
        self._grads[...] = 0

    @_ctrl_c_after_the_call
    def step(self, grads: Grads | None = None) -> None:
        """One data-parallel step: average the grads of all ranks, update this rank's shard,
        share the updated parameters. Every rank must call it.

        Parameters
        ----------
        grads : None, dict or sequence of ndarray, optional
            This rank's local grads: None or the arena's ``grads`` (already in the grad
            buffer: nothing is copied), or a dict (names or ``"d" + name``) or sequence of
            arrays as for the optimizer (a sequence only for parameters not given by name),
            which are checked and then copied into the arena's grad buffer. Every parameter
            steps: a grad may not be None.

        Raises
        ------
        TypeError, ValueError
            A grad of the wrong type, dtype or shape, grads as a sequence for parameters
            given by name, a parameter made read-only, or a step
            the shard optimizer refuses (an invalid hyper-parameter or state, e.g. after an
            edit of ``param_groups``) on any rank: raised on every rank, naming the first
            failing rank, before anything is written; nothing changes on any rank. Also
            ValueError on every rank when the ranks' hyper-parameters differ (an edit of
            ``lr`` or ``param_groups`` made on some ranks only).
        RuntimeError
            On every rank, when some ranks are in another call of this optimizer
            (``state_dict``, ``add_param_group``, ...) or in a call of another
            ShardedOptimizer on the same communicator: each rank's call named, nothing
            changed. The same for those calls. On one rank, when its shard step failed after
            every rank's checks passed (a MemoryError; a SystemExit or KeyboardInterrupt is
            raised as it is): the others stepped theirs, and every later call but
            ``load_state_dict`` raises on every rank, naming it, until a state dict is loaded.
            (One raised once every group of the shard had stepped, a SIGTERM handler's
            SystemExit as the step returned, is raised as it is: the shards are in step.)
        """
        self._take_grads(grads)
        self._exchange()
        self._average()
        self._update()
        self._allgather()

    # the phases of a step, separate so that the benchmark can time them
    def _take_grads(self, grads):
        """Check ``grads`` and everything else that could refuse the step on every rank (one
        collective), then copy the grads into the arena."""
        error = local = hypers = None
        try:
            self._check_groups()
            local = self._match(grads)
            self._check_step()
            if local is not None:
                # the arena's grad views the copy below writes (one made read-only on one
                # rank raised there alone, after the others had agreed to step: they hung)
                # (a loop, not a comprehension with an `if`, whose jump back CPython 3.13
                # leaves outside the try: cpython#130279, see _multi._each_part)
                written = []
                for k, (view, g) in enumerate(zip(self._grad_views, local)):
                    if g is view:
                        continue
                    written.append(k)
                k = _first_readonly([self._grad_views[j] for j in written])
                if k >= 0:
                    raise ValueError(f"the arena's grad of parameter {self._label(written[k])} "
                                     "is read-only; step(grads) copies this rank's grads into it")
            if self.comm.Get_size() > 1:     # (one rank agrees with itself)
                hypers = self._hyper_reprs()
        except BaseException as exc:     # noqa: BLE001 - any error must reach every rank
            error = exc
        self._raise_if_any(error, "step", hypers)
        if local is None:
            return
        # grads that are views of the grad buffer (another parameter's, in another order) are
        # read before any is written; the arena's own view of a parameter is already in place
        copies = [(view, g.copy() if np.may_share_memory(g, self._grads) else g)
                  for view, g in zip(self._grad_views, local) if g is not view]
        for view, g in copies:
            np.copyto(view, g)

    def _check_step(self):
        """Raise what the step would refuse, before anything is written: a parameter made
        read-only since construction, and what the shard optimizer's own step checks first
        (hyper-parameters, e.g. after an edit of ``param_groups``, its state, and overlaps of
        its params and state arrays: ``Optimizer._checked_plans``, the same code)."""
        k = _first_readonly(self._views)
        if k >= 0:
            raise ValueError(f"parameter {self._label(k)} is read-only; parameters are updated "
                             "in place")
        opt = self.shard_optimizer
        for gi, group in enumerate(opt.param_groups):
            if _first_readonly(group["params"]) >= 0:
                raise ValueError(f"this rank's shard of param group {gi} is read-only")
        opt._checked_plans()    # the checks step() runs first (cached while nothing changed)

    def _update(self):
        """The shard optimizer's step on this rank's shard of the averaged grads. Everything it
        could refuse was checked on every rank by :meth:`_take_grads`; should it raise anyway,
        this rank still takes part in the gather (so no rank waits for it) and raises."""
        opt = self.shard_optimizer
        opt._stepped_groups.clear()
        try:
            opt.step(self._shard_grads)
        except BaseException as exc:     # noqa: BLE001 - re-raised after the collective
            self._allgather()        # this rank's shard as the step left it
            # which of the shard's groups stepped (each whole or not at all: Optimizer.step):
            # every one, when the exception came after the kernels (a SIGTERM handler's
            # SystemExit as the step returned): the shards are in step, and it is raised as
            # it is (taken for a missed step, every later call had been refused, the
            # checkpoint in a `finally:` too)
            stepped = [gi for gi, g in enumerate(opt.param_groups)
                       if id(g) in opt._stepped_groups]
            if len(stepped) == len(opt.param_groups):
                raise
            what = str(exc) if isinstance(exc, Exception) else f"{type(exc).__name__} {exc}"
            this_one = ("did not" if not stepped else
                        f"stepped only its param group{'s' * (len(stepped) > 1)} "
                        f"{', '.join(map(str, stepped))} of {len(opt.param_groups)}")
            missed = (f"the shard step failed after every rank's checks passed "
                      f"({what.rstrip()}); the other ranks stepped their shards, this one "
                      f"{this_one}")
            # (every later call but a load_state_dict raises it on every rank: _raise_if_any;
            # after a SystemExit too, e.g. a SIGTERM handler's, or a checkpoint saved in its
            # `finally:` held the shards at different steps; on one rank there are no others
            # to be out of step with, and its checkpoint is as a plain optimizer's)
            if self.comm.Get_size() > 1:
                self._missed = missed
            if not isinstance(exc, Exception):     # KeyboardInterrupt, SystemExit: as they are
                raise
            raise RuntimeError(f"rank {self.comm.Get_rank()} of {self.comm.Get_size()}: "
                               f"{missed}") from exc

    def _exchange(self):
        """Receive this rank's shard of every other rank's grads, one row per rank."""
        if self.comm.Get_size() > 1:
            self.comm.Alltoallv(self._send_spec, self._recv_spec)

    def _average(self):
        """``((g_0 + g_1) + ... + g_{N-1}) / N`` over this rank's shard, into ``_avg``."""
        size, rank = self.comm.Get_size(), self.comm.Get_rank()
        if size == 1:            # _avg is the grad buffer itself
            return
        s0, s1 = self.shard
        rows = list(self._recv)
        rows.insert(rank, self._grads[s0:s1])
        # a sum past the float range is inf and an average below it rounds, as in the
        # optimizers' own arithmetic, and no warning: under np.seterr(all="raise") or
        # warnings as errors, the rank holding it raised alone after the checks, and the
        # others waited for it in the gather
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            np.add(rows[0], rows[1], out=self._avg)
            for row in rows[2:]:
                np.add(self._avg, row, out=self._avg)
            np.divide(self._avg, size, out=self._avg)

    def _allgather(self):
        """Every rank's updated shard into every rank's parameters, in place."""
        if self.comm.Get_size() > 1:
            self.comm.Allgatherv(MPI.IN_PLACE, self._gather_spec)

    def _match(self, grads):
        """This rank's grads as a list in parameter order (None: already in the arena),
        checked against the parameters."""
        if grads is None or grads is self.arena.grads:
            return None
        if isinstance(grads, dict):
            if self._names is None:
                raise ValueError("grads is a dict but params were not given by name; pass a "
                                 "sequence of grads in parameter order")
            # as the plain optimizer (its code: this one's gave a parameter W the grad of a
            # parameter named dW, and raised TypeError for int names)
            matched = _by_name(grads, self._names)
        elif isinstance(grads, (list, tuple)):
            if self._names is not None:     # (as the plain optimizer: q62)
                raise ValueError(NAMED_GRADS_SEQUENCE)
            if len(grads) != len(self._views):
                raise ValueError(f"grads has {len(grads)} entries, expected "
                                 f"{len(self._views)} (one per parameter, in order)")
            matched = list(grads)
        else:
            raise TypeError(f"grads must be a dict or a sequence of arrays, "
                            f"got {type(grads).__name__}")
        for i, (p, g) in enumerate(zip(self._views, matched)):
            label = repr(self._names[i]) if self._names else str(i)
            if g is None:       # (the plain optimizer's parameter that sits the step out)
                raise TypeError(f"grad for parameter {label} is None: a ShardedOptimizer "
                                "steps every parameter (its state is split across the ranks "
                                "by element, not by parameter)")
            _validate.check_grad(label, p, g)
        return matched

    def _hyper_reprs(self):
        """Every param group's hyper-parameters, as reprs by sorted key (what the ranks must
        agree on, whatever order a group's entries were written in). Only the optimizer's own
        (its ``defaults``): a group's other entries (a name, a tag object) do not change the
        step, and their reprs may differ between processes (an address, a set's order); and
        the options its steps honour where a group sets them (AdamW's eps_inside_sqrt), as
        the value they step with (one spelled out as its default agrees with one left out)."""
        shard = self.shard_optimizer
        keys = sorted({*shard.defaults, *shard._OPTIONAL})
        return [{k: repr(_plain(shard._option(g, k) if k in shard._OPTIONAL else g[k]))
                 for k in keys if k in g or k in shard._OPTIONAL}
                for g in shard.param_groups]

    def _on_every_rank(self, call, make, *args):
        """``make(*args)`` on this rank, then the ranks agree (:meth:`_raise_if_any`): what
        it raised on any rank is raised on every rank, so that none goes on to a collective
        the others do not reach. Returns what it returned."""
        error = result = None
        try:
            result = make(*args)
        except BaseException as exc:     # noqa: BLE001 - any error must reach every rank
            error = exc
        self._raise_if_any(error, call)
        return result

    def _raise_if_any(self, error, call, hypers=None):
        """Collective: raise on every rank if ``error`` is set on any (a five-integer
        allreduce when all is well; the errors themselves are gathered only when one
        occurred). The first failing rank's TypeError or ValueError is raised everywhere as
        that type, anything else as RuntimeError. A KeyboardInterrupt or SystemExit takes part
        too (it had left its rank's collectives unmatched: the other ranks' next step paired
        with this one's, silently mixing two steps' grads, then hung), and is raised as it is
        on its own rank. With ``hypers`` (:meth:`_hyper_reprs`, every rank), ranks whose
        hyper-parameters differ raise ValueError on every rank: an edit made on one rank only
        would step that rank's shard with its own value, silently. ``call`` (one of _CALLS)
        names the public call this is the first collective of: ranks in different calls
        (``state_dict`` on one, ``step`` on the others) raise RuntimeError on every rank,
        naming each rank's (their allreduces had paired, and the next collectives exchanged
        unrelated objects: AttributeError and TypeError naming nothing); so do ranks in calls
        of two ShardedOptimizers on one communicator (its id is in the tag: their collectives
        had paired, mixing their parameters, or hung)."""
        if error is None and self._missed is not None and call != "load_state_dict":
            # the shards are out of step (the others went on, and their next collectives
            # paired with this rank's unrelated ones: a state_dict() hung)
            error = RuntimeError(f"{self._missed}; the shards are out of step: load a state "
                                 "dict (load_state_dict) to go on")
        # the max of a value and the max of its negation agree only if every rank's is the same
        digest = 0 if hypers is None else int.from_bytes(
            hashlib.blake2b(repr(hypers).encode(), digest_size=7).digest(), "little")
        code = _CALLS.index(call) + 1 + len(_CALLS) * (self._id + 1)
        flag = np.array([error is not None, digest, -digest, code, -code], np.int64)
        self.comm.Allreduce(MPI.IN_PLACE, flag, op=MPI.MAX)
        if flag[3] != -flag[4]:
            calls = self.comm.allgather((call, self._id, self._named_call(call)))
            if error is not None and not isinstance(error, Exception):
                raise error
            if len({i for _, i, _ in calls}) == 1:
                raise RuntimeError(
                    f"the {len(calls)} ranks are in different calls of this ShardedOptimizer "
                    f"(by rank: {', '.join(c for c, _, _ in calls)}): every rank must make "
                    f"the same calls in the same order; this rank's {call} changed "
                    "nothing") from error
            raise RuntimeError(
                f"the {len(calls)} ranks are in calls of different ShardedOptimizers (by "
                f"rank: {', '.join(n for _, _, n in calls)}): every rank must make the same "
                "ShardedOptimizers in the same order (#n, an id the ranks agree on as one is "
                "made, tells them apart) and the same calls of them in the same order; this "
                f"rank's {call} changed nothing") from error
        if not flag[0]:
            if hypers is not None and flag[1] != -flag[2]:
                self._raise_disagreement(hypers)
            return
        kind = next((k for k in (TypeError, ValueError) if isinstance(error, k)), RuntimeError)
        message = (str(error) if isinstance(error, Exception)
                   else f"{type(error).__name__} {error}".rstrip())
        errors = self.comm.allgather(None if error is None else (kind.__name__, message))
        if error is not None and not isinstance(error, Exception):
            raise error
        rank, (name, msg) = next((r, e) for r, e in enumerate(errors) if e is not None)
        kind = {"TypeError": TypeError, "ValueError": ValueError}.get(name, RuntimeError)
        raise kind(f"rank {rank} of {len(errors)}: {msg}") from error

    def _named_call(self, call):
        """``call`` as a message names it beside other optimizers' calls: with its optimizer's
        id, class and size (not while it is constructed)."""
        if self._id < 0:
            return call
        return (f"{call} of #{self._id} ({self.optimizer_class.__name__}, "
                f"{self._offsets[-1]} elements)")

    def _raise_disagreement(self, hypers):
        """Collective: ValueError on every rank naming the ranks whose ``hypers`` differ from
        rank 0's and the entries (reprs are gathered: they always pickle)."""
        every = self.comm.allgather(hypers)
        diffs = []
        for r, other in enumerate(every[1:], 1):
            for gi, (mine, theirs) in enumerate(zip(every[0], other)):
                diffs += [f"rank {r} has param group {gi}'s {k!r} = {theirs.get(k)}, rank 0 "
                          f"{mine.get(k)}" for k in _differing(mine, theirs)]
        raise ValueError(f"the {len(every)} ranks disagree on the hyper-parameters of this step "
                         f"({'; '.join(diffs)}): make the same edit of opt.lr or "
                         "opt.param_groups on every rank; nothing changed")

    # ---------------------------------------------------------------------- state dicts
    @_ctrl_c_after_the_call
    def state_dict(self, root: int = 0) -> dict[str, Any] | None:
        """The state of the whole optimizer, gathered to rank ``root``. Every rank must call it.

        Parameters
        ----------
        root : int, default 0
            The rank that receives it (the same on every rank: else ValueError on every rank).

        Returns
        -------
        dict or None
            On ``root``, the dict a single-process ``optimizer_class`` over the same
            parameters would return (torch.optim's per-parameter layout, so that optimizer
            and ``load_state_dict`` on any number of ranks load it); None on the other ranks.

        Raises
        ------
        RuntimeError
            On every rank, naming the rank, when one fails to make its arrays (a MemoryError
            for the root's, which hold the whole state); also as :meth:`step` says.
        """
        self._agree_root(root, "state_dict")
        # every allocation and copy first: one failing on a rank after the ranks agreed (the
        # root's gathered arrays, the biggest of a run) had left the others waiting in Gatherv
        gathers, result = self._on_every_rank("state_dict", self._gathers,
                                              self.comm.Get_rank() == root)
        for value, full, counts, displs in gathers:
            self.comm.Gatherv(value, [full, counts, displs, _MPI_TYPES[self.dtype]], root=root)
        return result

    def _gathers(self, is_root):
        """For :meth:`state_dict`: this rank's copy of its shard's state, and on the root the
        state dict whose arrays are views of the buffers that the gathers fill. Returns
        ([(this rank's array, the root's buffer or None, counts, displacements)], the state
        dict or None)."""
        local = self.shard_optimizer.state_dict()
        state: dict[int, dict[str, np.ndarray]] = {}
        groups: list[dict[str, Any]] = []
        gathers = []
        for gi, (a, b, first) in enumerate(self._group_bounds):
            group = {k: v for k, v in local["param_groups"][gi].items() if k != "params"}
            stop = first + len(self._full_groups[gi]["params"])
            group["params"] = list(range(first, stop))
            if self._named:
                group["param_names"] = list(self._full_groups[gi]["param_names"])
            groups.append(group)
            entry = local["state"].get(gi)
            if entry is None:          # not stepped yet: the same on every rank
                continue
            counts = [self._clip_len(a, b, r) for r in range(len(self.bounds) - 1)]
            displs = np.cumsum([0] + counts[:-1]).tolist()
            for i in range(first, stop):
                state[i] = {}
            scalar_keys = self.shard_optimizer.scalar_keys()
            for key in sorted(entry):
                value = entry[key]
                if key in scalar_keys:        # a 0-d array, one per parameter (as torch's)
                    for i in range(first, stop):
                        state[i][key] = value.copy()
                    continue
                full = np.empty(b - a, self.dtype) if is_root else None
                gathers.append((value, full, counts, displs))
                if is_root:
                    for i in range(first, stop):
                        p = self._views[i]
                        o = self._offsets[i] - a
                        state[i][key] = full[o:o + p.size].reshape(p.shape)
        return gathers, {"state": state, "param_groups": groups} if is_root else None

    def _agree_root(self, root, call):
        """Collective: ``root`` valid (:meth:`_check_root`) and the same on every rank, and the
        param groups as made (:meth:`_check_groups`), else TypeError/ValueError on every rank
        (a rank that raised alone, or gathered to another root, left the others waiting in
        Gatherv or Scatterv)."""
        error = None
        try:
            self._check_groups()
            self._check_root(root)
        except (TypeError, ValueError) as exc:
            error = exc
        self._raise_if_any(error, call)
        roots = self.comm.allgather(int(root))
        if len(set(roots)) > 1:
            raise ValueError(f"the ranks disagree on root (by rank: {roots}); pass the same "
                             "root on every rank")

    def _check_root(self, root):
        """A rank of the communicator, else TypeError/ValueError naming ``root`` (before any
        collective: MPI's own error is an error stack, and -1 is its MPI_PROC_NULL)."""
        if isinstance(root, bool) or not isinstance(root, (int, np.integer)):
            raise TypeError(f"root must be an int (a rank), got {type(root).__name__}")
        if not 0 <= root < self.comm.Get_size():
            raise ValueError(f"Invalid root: {root} (must be a rank of the communicator, 0 to "
                             f"{self.comm.Get_size() - 1})")

    def _clip_len(self, a, b, rank):
        s0, s1 = self.bounds[rank], self.bounds[rank + 1]
        return max(0, min(b, s1) - max(a, s0))

    @_ctrl_c_after_the_call
    def load_state_dict(self, state_dict: dict[str, Any] | None, root: int = 0) -> None:
        """Load a state dict, read on rank ``root`` only. Every rank must call it.

        It may come from :meth:`state_dict` on any number of ranks, a single-process fastopt
        optimizer, or torch.optim with its tensors as arrays. Every parameter of a group must have
        state at the same step (as a sharded run saves). It loads the optimizer's state only:
        restore the parameters on every rank (each rank steps its shard from its own copy).

        Parameters
        ----------
        state_dict : dict or None
            The state dict on ``root``; the other ranks may pass None.
        root : int, default 0
            The rank that reads it (the same on every rank: else ValueError on every rank).

        Raises
        ------
        ValueError
            An invalid state dict, raised on every rank after a full check; nothing changes.
        RuntimeError
            On every rank, naming the rank, when one fails to make or load its part (a
            MemoryError); no rank loads it.
        """
        self._agree_root(root, "load_state_dict")
        plan = flats = None
        error: BaseException | None = None
        if self.comm.Get_rank() == root:
            try:
                full, plan = self._check_state_dict(state_dict)
                # made before the ranks agree (a MemoryError after it had left the other ranks
                # waiting in Scatterv), as are every rank's receive buffers below
                flats = self._flats(full, plan)
                # pickled here: a group entry that does not pickle then raises on every rank
                # (bcast raised it on the root alone, the other ranks waiting in it)
                plan = pickle.dumps(plan)
            except KeyError as exc:
                error = ValueError(f"state_dict is missing the entry {exc}")
            except BaseException as exc:     # noqa: BLE001 - any error must reach every rank
                error = exc
        self._raise_if_any(error, "load_state_dict")
        plan = self.comm.bcast(plan, root=root)
        local, scatters = self._on_every_rank("load_state_dict", lambda: self._receive_buffers(
            pickle.loads(plan)))
        for k, (counts, displs, part) in enumerate(scatters):
            flat = None if flats is None else flats[k]
            self.comm.Scatterv([flat, counts, displs, _MPI_TYPES[self.dtype]], part, root=root)
        try:        # checked and copied on every rank, installed once all can (one failing
            # after the others had loaded left the shards at different steps, silently)
            install = self._on_every_rank("load_state_dict", self._staged_load, local)
        except BaseException:
            if self._own_load() and self.comm.Get_size() > 1:
                # a subclass's own load, not staged: the ranks where it succeeded have loaded
                # (every later call but a load raises, as after a failed shard step)
                self._missed = ("a load_state_dict of the shard optimizer's class failed on "
                                "a rank after others had loaded theirs")
            raise
        install()
        self._missed = None

    def _staged_load(self, local):
        """The shard optimizer's load of ``local``, checked and copied, returning the install
        (nothing left to fail); a subclass's own ``load_state_dict`` (any ``optimizer_class``
        may be given) is honoured, as torch's ZeRO calls it: loaded at once, the ranks then
        agreeing only afterwards (one failing where others loaded leaves the shards out of
        step: later calls raise until a load succeeds)."""
        opt = self.shard_optimizer
        if self._own_load():
            opt.load_state_dict(local)
            return lambda: None
        return opt._load_staged(local)

    def _own_load(self):
        """Whether the shard optimizer's class has a load_state_dict of its own."""
        return type(self.shard_optimizer).load_state_dict is not Optimizer.load_state_dict

    def _flats(self, full, plan):
        """On the root, for :meth:`load_state_dict`: per param group with state, per key of
        the plan, the group's arrays in ``full`` as one flat array (what Scatterv deals out).
        Each array is taken out of ``full`` as it is copied, so the root holds the state
        twice at most for one key (as when each was made just before its Scatterv)."""
        flats = []
        for (_, _, first), (_, keys, _), g in zip(self._group_bounds, plan, self._full_groups):
            for key in keys or ():
                flats.append(np.concatenate([np.ravel(full.state[i].pop(key))
                                             for i in range(first, first + len(g["params"]))]))
        return flats

    def _receive_buffers(self, plan):
        """For :meth:`load_state_dict`: the state dict this rank's shard optimizer loads, its
        arrays new buffers, and per array (in the order of :meth:`_flats`) the counts and
        displacements of its Scatterv and the buffer it fills."""
        local: dict[str, Any] = {"state": {}, "param_groups": []}
        scatters = []
        for gi, ((a, b, first), (hyper, keys, scalars)) in enumerate(
                zip(self._group_bounds, plan)):
            local["param_groups"].append(dict(hyper, params=[gi]))
            if keys is None:
                continue
            counts = [self._clip_len(a, b, r) for r in range(len(self.bounds) - 1)]
            displs = np.cumsum([0] + counts[:-1]).tolist()
            entry = dict(scalars)
            for key in keys:
                entry[key] = np.empty(self._clip_len(a, b, self.comm.Get_rank()), self.dtype)
                scatters.append((counts, displs, entry[key]))
            local["state"][gi] = entry
        return local, scatters

    def _check_state_dict(self, state_dict):
        """On the root: load ``state_dict`` into a single-process optimizer over the full
        parameters (its checks, its conversions), then check that every group's parameters
        share their state keys and scalars. Returns (that optimizer, per group: (hyper, array
        keys or None, scalar entries))."""
        full = self.optimizer_class(self._current_groups(), **self._hyper)
        full.load_state_dict(state_dict)
        plan = []
        for gi, (_, _, first) in enumerate(self._group_bounds):
            hyper = {k: v for k, v in full.param_groups[gi].items()
                     if k not in ("params", "param_names")}
            stop = first + len(self._full_groups[gi]["params"])
            # an empty state is none (torch's reset, saved by plain SGD's state_dict())
            states = [full.state.get(i) or None for i in range(first, stop)]
            if all(s is None for s in states):
                plan.append((hyper, None, {}))
                continue
            if any(s is None for s in states):
                raise ValueError(f"state_dict has state for some parameters of param group "
                                 f"{gi} but not all; a sharded optimizer steps them together")
            scalar_keys = full.scalar_keys()
            keys = sorted(k for k in states[0] if k not in scalar_keys)
            scalars = {k: states[0][k].item() for k in scalar_keys if k in states[0]}
            for i, s in zip(range(first, stop), states):
                s_keys = sorted(k for k in s if k not in scalar_keys)
                s_scalars = {k: s[k].item() for k in scalar_keys if k in s}
                if s_keys != keys or s_scalars != scalars:
                    raise ValueError(f"state_dict['state'][{i}] differs from parameter {first}"
                                     f" of its group in keys or step ({s_keys} {s_scalars} vs "
                                     f"{keys} {scalars}); a sharded optimizer steps a group's "
                                     "parameters together")
            plan.append((hyper, keys, scalars))
        return full, plan

    def __reduce_ex__(self, protocol):
        # a copy's parameters, grads and exchange buffers would be copies apart from the copied
        # arena (its steps would never reach its parameters), and its communicator this job's
        raise TypeError("a ShardedOptimizer cannot be pickled or copied (it holds views of its "
                        "arena's buffers and an MPI communicator); save opt.state_dict() and "
                        "arena.flat_params, and load_state_dict() into a new one, on any number "
                        "of ranks")

    def __repr__(self):
        return (f"ShardedOptimizer({self.optimizer_class.__name__}, rank "
                f"{self.comm.Get_rank()} of {self.comm.Get_size()}, elements "
                f"{self.shard[0]}:{self.shard[1]} of {self._offsets[-1]} {self.dtype})")


def _groups_of(params):
    """The param groups as dicts with a list under "params" (and "param_names" when named)."""
    if isinstance(params, ParameterArena):
        if not params.params:
            raise ValueError("params is an empty ParameterArena")
        params = params.params
    if isinstance(params, np.ndarray) or not hasattr(params, "__iter__"):
        raise TypeError("params must be a ParameterArena, a dict or list of its arrays, or a "
                        f"list of param-group dicts, got {type(params).__name__}")
    if isinstance(params, dict):
        groups = [{"params": params}]
    else:
        groups = list(params)
        if not groups:
            raise ValueError("params is an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
    out, named = [], None
    for g in groups:
        if not isinstance(g, dict) or "params" not in g:
            raise TypeError("a param group must be a dict with a 'params' entry")
        g = dict(g)
        ps = g["params"]
        if named is not None and named != isinstance(ps, dict):
            raise ValueError("params: either every group is a dict of named arrays or none is")
        ps, names = _group_params(ps)
        named = names is not None
        if named:
            g["param_names"] = names
        if not all(isinstance(p, np.ndarray) for p in ps):
            raise TypeError("every parameter must be a numpy.ndarray (a ParameterArena view)")
        g["params"] = ps
        out.append(g)
    return out, named


__all__ = ["ShardedOptimizer", "shard_bounds"]
