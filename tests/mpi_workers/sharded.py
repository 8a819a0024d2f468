"""Run under ``mpiexec -n N`` by tests/test_distributed.py: checks of
fastopt.distributed.ShardedOptimizer, each printed by every rank as one JSON line
``{"rank", "size", "check", "ok", "detail"}``.

    mpiexec -n 3 python sharded.py --save DIR     # ... and write a checkpoint at step 10
    mpiexec -n 2 python sharded.py --load DIR     # ... and resume DIR's checkpoint (also on 1)

``--out DIR`` writes each rank's lines to ``DIR/rank-<r>.jsonl`` instead of stdout.

Every check compares with a single-process fastopt optimizer stepped on the averaged grad
``((g_0 + g_1) + ... + g_{N-1}) / N``, the order ShardedOptimizer documents.
"""
import argparse
import json
import os
import pickle
import signal
import sys
import traceback
import types
import warnings

import numpy as np
from mpi4py import MPI

import fastopt as fo
import fastopt.distributed
import fastopt.optim
from fastopt.distributed import ShardedOptimizer

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
# odd sizes, so shard boundaries fall inside parameters, and a 0-d one
SHAPES = {"W1": (37, 29), "b1": (37,), "W2": (11, 37), "s": (), "b2": (11,)}
STEPS = 20

CASES = {   # name -> (class, hyper-parameters)
    "Adam": (fo.Adam, dict(lr=1e-2, weight_decay=0.01)),
    "AdamW": (fo.AdamW, dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    "SGD-momentum": (fo.SGD, dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "RMSprop": (fo.RMSprop, dict(lr=1e-3, momentum=0.5, centered=True)),
    "Momentum": (fo.Momentum, dict(lr=1e-2)),
    "Adagrad": (fo.Adagrad, dict(lr=1e-2, lr_decay=1e-3, initial_accumulator_value=0.1)),
    "Adadelta": (fo.Adadelta, dict(lr=1.0, weight_decay=1e-3)),
    "Adamax": (fo.Adamax, dict(lr=2e-3)),
    "NAdam": (fo.NAdam, dict(lr=2e-3)),
    "RAdam": (fo.RAdam, dict(lr=1e-3, decoupled_weight_decay=True, weight_decay=0.1)),
    "Lion": (fo.Lion, dict(lr=1e-3, weight_decay=0.1)),
}


OUT = sys.stdout


def report(check, ok, detail=""):
    OUT.write(json.dumps(dict(rank=RANK, size=SIZE, check=check, ok=bool(ok), detail=detail))
              + "\n")
    OUT.flush()


def model(dtype, seed=0):
    arena = fo.ParameterArena(dtype, capacity=4096)
    rng = np.random.default_rng(seed)
    for name, shape in SHAPES.items():
        arena.add(name, shape, init=rng.standard_normal(shape))
    return arena


def local_grads(t, dtype, n, size=SIZE):
    """Every rank's grads at step t, full precision: their sums round."""
    return [np.random.default_rng([t, r]).standard_normal(n).astype(dtype)
            for r in range(size)]


def averaged(grads):
    total = grads[0].copy()
    for g in grads[1:]:
        total = total + g
    return total / len(grads)


def coarse_grad(t, dtype, n):
    """The same grad on every rank, on a grid of 2**-8 with 8 significant bits: any number of
    copies sums exactly and divides back to itself, so every N averages to it exactly."""
    return (np.random.default_rng([t, 99]).integers(-255, 256, n) / 256).astype(dtype)


def same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


def step_both(arena, opt, ref, ref_opt, seed, dtype=np.float64):
    """One step of the sharded optimizer on this rank's grads of ``seed`` and one of the
    single-process optimizer on their average."""
    gs = local_grads(seed, dtype, arena.size)
    arena.flat_grads[...] = gs[RANK]
    opt.step()
    ref.flat_grads[...] = averaged(gs)
    ref_opt.step(ref.grads)


def check_equivalence():
    """Every optimizer, float32 and float64: 20 steps, grads in the arena, by "d" + name and
    by name; then the gathered state dict equals the single-process one."""
    for name, (cls, hyper) in CASES.items():
        for dtype in (np.float32, np.float64):
            arena, ref = model(dtype), model(dtype)
            opt = ShardedOptimizer(cls, arena, **hyper)
            ref_opt = cls(ref.params, **hyper)
            names = list(SHAPES)
            for t in range(STEPS):
                gs = local_grads(t, dtype, arena.size)
                arena.flat_grads[...] = gs[RANK]
                # in the arena; a dict of copies by "d" + name; by name (a list: the param
                # groups' check, whose parameters are not named)
                form = t % 3
                if form == 0:
                    opt.step(arena.grads)
                elif form == 1:
                    opt.step({"d" + k: arena.grads[k].copy() for k in names})
                else:
                    opt.step({k: arena.grads[k].copy() for k in names})
                ref.flat_grads[...] = averaged(gs)
                ref_opt.step(ref.grads)
            ok = same(arena.flat_params, ref.flat_params)
            detail = "" if ok else (f"max diff "
                                    f"{np.max(np.abs(arena.flat_params - ref.flat_params))}")
            report(f"equivalence {name} {np.dtype(dtype).name}", ok, detail)
            sd, ref_sd = opt.state_dict(), ref_opt.state_dict()
            if RANK == 0:
                report(f"state_dict {name} {np.dtype(dtype).name}", *compare_sd(sd, ref_sd))
            else:
                report(f"state_dict {name} {np.dtype(dtype).name}", sd is None, repr(sd)[:80])


def compare_sd(sd, ref):
    if sd["param_groups"] != ref["param_groups"]:
        return False, f"groups {sd['param_groups']} != {ref['param_groups']}"
    if set(sd["state"]) != set(ref["state"]):
        return False, f"state keys {set(sd['state'])} != {set(ref['state'])}"
    for i, s in ref["state"].items():
        if set(sd["state"][i]) != set(s):
            return False, f"state[{i}] keys {set(sd['state'][i])} != {set(s)}"
        for k, v in s.items():
            mine = sd["state"][i][k]
            if isinstance(v, np.ndarray) != isinstance(mine, np.ndarray) or (
                    same(mine, v) if isinstance(v, np.ndarray) else mine == v) is False:
                return False, f"state[{i}][{k!r}] differs"
    return True, ""


def check_large():
    """Enough elements that MPICH's own Reduce_scatter would sum three ranks' grads in another
    order for part of them (measured: ~10% of the elements from 1e5 per rank): the fixed
    order must still match."""
    dtype = np.float32
    arena, ref = (fo.ParameterArena(dtype, capacity=600_001) for _ in range(2))
    for a in (arena, ref):
        a.add("w", 600_001, init=np.random.default_rng(0).standard_normal(600_001))
    opt = ShardedOptimizer(fo.SGD, arena, lr=0.5)
    ref_opt = fo.SGD(ref.params, lr=0.5)
    for t in range(2):
        gs = local_grads(t, dtype, arena.size)
        arena.flat_grads[...] = gs[RANK]
        opt.step()
        ref.flat_grads[...] = averaged(gs)
        ref_opt.step(ref.grads)
    report("equivalence large SGD float32", same(arena.flat_params, ref.flat_params))


def check_groups():
    """Param groups with their own lr and weight decay, as a list of dicts; list grads."""
    dtype = np.float64
    arena, ref = model(dtype), model(dtype)

    def groups(a):
        v = list(a.params.values())
        return [{"params": v[:2], "lr": 1e-2}, {"params": v[2:], "weight_decay": 0.0}]
    opt = ShardedOptimizer(fo.AdamW, groups(arena), lr=3e-3, weight_decay=0.1)
    ref_opt = fo.AdamW(groups(ref), lr=3e-3, weight_decay=0.1)
    for t in range(STEPS):
        gs = local_grads(t, dtype, arena.size)
        arena.flat_grads[...] = gs[RANK]
        # (copies: the arena's own views are skipped, and a list of copies is stepped on
        # every rank here only, the other checks' parameters being named)
        opt.step([arena.grads[k].copy() for k in SHAPES])
        ref.flat_grads[...] = averaged(gs)
        ref_opt.step([ref.grads[k] for k in SHAPES])
        if t == 9:
            opt.lr = ref_opt.lr = 1e-3
    report("param groups", same(arena.flat_params, ref.flat_params))
    sd = opt.state_dict()
    if RANK == 0:
        report("param groups state_dict", *compare_sd(sd, ref_opt.state_dict()))


def check_memory():
    """Per-rank state bytes: 1/N of the single process's, up to the cache-line rounding."""
    for dtype in (np.float32, np.float64):
        arena, ref = model(dtype), model(dtype)
        opt = ShardedOptimizer(fo.Adam, arena, amsgrad=True)
        ref_opt = fo.Adam(ref.params, amsgrad=True)
        arena.flat_grads[...] = 1
        ref.flat_grads[...] = 1
        opt.step()
        ref_opt.step(ref.grads)
        arrays = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")       # not the 0-d steps
        mine = sum(s[k].nbytes for s in opt.shard_optimizer.state.values() for k in arrays)
        total = sum(s[k].nbytes for s in ref_opt.state.values() for k in arrays)
        per_line = 3 * 64                       # exp_avg, exp_avg_sq, max_exp_avg_sq
        s0, s1 = opt.shard
        ok = (mine == 3 * (s1 - s0) * arena.dtype.itemsize
              and mine <= total / SIZE + 2 * per_line      # 1/N, up to cache-line rounding
              and COMM.allreduce(mine) == total
              and total == 3 * arena.size * arena.dtype.itemsize)
        report(f"memory {np.dtype(dtype).name}", ok, f"{mine} of {total} bytes")


def check_bad_grads():
    """A bad grad on one rank: every rank raises the same error naming that rank, nothing
    changes, and the next good step still matches the single process."""
    dtype = np.float32
    arena, ref = model(dtype), model(dtype)
    opt = ShardedOptimizer(fo.Adam, arena, lr=1e-2)
    ref_opt = fo.Adam(ref.params, lr=1e-2)

    def good_step(t):
        step_both(arena, opt, ref, ref_opt, t, dtype)

    good_step(0)
    bad_rank = SIZE - 1
    for kind, make in [(ValueError, lambda g: g[:-1]),
                       (TypeError, lambda g: g.astype(np.float64)),
                       (TypeError, lambda g: g.tolist())]:
        params, grads = arena.flat_params.copy(), arena.flat_grads.copy()
        state = pickle.dumps(opt.shard_optimizer.state)
        bad = {k: (make(v) if RANK == bad_rank and k == "W2" else v)
               for k, v in arena.grads.items()}
        try:
            opt.step({k: v.copy() for k, v in bad.items()} if RANK != bad_rank else bad)
            report(f"bad grad {kind.__name__}", False, "no exception")
        except kind as exc:
            unchanged = (same(arena.flat_params, params) and same(arena.flat_grads, grads)
                         and pickle.dumps(opt.shard_optimizer.state) == state)
            report(f"bad grad {kind.__name__}", unchanged and f"rank {bad_rank}" in str(exc)
                   and "'W2'" in str(exc), str(exc))

    class Interrupting(dict):      # Ctrl-C on one rank while its step reads the grads
        def get(self, *args):
            raise KeyboardInterrupt

    params, grads = arena.flat_params.copy(), arena.flat_grads.copy()
    state = pickle.dumps(opt.shard_optimizer.state)
    local = {k: v.copy() for k, v in arena.grads.items()}
    expected = KeyboardInterrupt if RANK == bad_rank else RuntimeError
    try:        # (was: that rank left the step before its collective, the others waited)
        opt.step(Interrupting(local) if RANK == bad_rank else local)
        report("interrupted step on one rank", False, "no exception")
    except (KeyboardInterrupt, RuntimeError) as exc:
        unchanged = (same(arena.flat_params, params) and same(arena.flat_grads, grads)
                     and pickle.dumps(opt.shard_optimizer.state) == state)
        report("interrupted step on one rank", unchanged and type(exc) is expected and (
            RANK == bad_rank or f"rank {bad_rank}" in str(exc) and "KeyboardInterrupt"
            in str(exc)), repr(exc))
    good_step(1)
    report("good step after bad grads", same(arena.flat_params, ref.flat_params))


def check_disagreeing_ranks():
    """Ranks constructed with different hyper-parameters: every rank raises ValueError."""
    arena = model(np.float32)
    try:
        ShardedOptimizer(fo.Adam, arena, lr=1e-3 if RANK else 2e-3)
        report("construction mismatch", SIZE == 1, "no exception")
    except ValueError as exc:
        # (naming what differs: the message had held both ranks' whole signatures)
        report("construction mismatch", "disagree on param group 0's 'lr'" in str(exc),
               str(exc))
    # every group's initial_accumulator_value the same, the constructor's not: Adagrad starts
    # its state from the constructor's (was accepted: each rank's shard of the state started
    # from its own value, a result no process gives)
    try:
        ShardedOptimizer(fo.Adagrad, [{"params": list(arena.params.values()),
                                       "initial_accumulator_value": 1.0}],
                         initial_accumulator_value=0.1 if RANK else 5.0)
        report("construction defaults mismatch", SIZE == 1, "no exception")
    except ValueError as exc:
        report("construction defaults mismatch",
               "disagree on the constructor's 'initial_accumulator_value'" in str(exc), str(exc))
    v = list(arena.params.values())
    try:       # the same parameters and hyper-parameters, split into groups otherwise on rank 0
        # (was accepted: state_dict() then gathered each group with the root's bounds, and
        # returned uninitialized memory for a parameter)
        ShardedOptimizer(fo.Adam, [{"params": v[:1 if RANK else 2]},
                                   {"params": v[1 if RANK else 2:]}])
        report("construction group split mismatch", SIZE == 1, "no exception")
    except ValueError as exc:
        report("construction group split mismatch",
               "disagree on the parameter shapes by param group" in str(exc), str(exc))
    # the same groups, their entries written in another order on rank 0: they agree (was: a
    # construction error; and a group re-keyed between steps on one rank failed every step)
    group = dict(lr=0.1, weight_decay=0.0) if RANK else dict(weight_decay=0.0, lr=0.1)
    try:
        opt = ShardedOptimizer(fo.Adam, [dict(group, params=v)])
        if RANK == 0:
            lr = opt.param_groups[0].pop("lr")
            opt.param_groups[0]["lr"] = lr
        arena.flat_grads[...] = 1.0
        opt.step()
        report("group key order", True)
    except ValueError as exc:
        report("group key order", False, str(exc))
    try:       # equal values of other numeric types (a NumPy float, an int, betas as a list) on
        # one rank: they step alike and agree (were refused as a disagreement)
        hyper = (dict(lr=np.float64(0.5), betas=[0.5, 0.75], weight_decay=0) if RANK
                 else dict(lr=0.5, betas=(0.5, 0.75), weight_decay=0.0))
        opt = ShardedOptimizer(fo.Adam, v, **hyper)
        arena.flat_grads[...] = 1.0
        opt.step()
        opt.lr = np.float32(0.25) if RANK else 0.25
        opt.step()
        report("numeric types of equal values", True)
    except ValueError as exc:
        report("numeric types of equal values", False, str(exc))
    try:       # one rank passes something that is not on an arena
        ShardedOptimizer(fo.Adam, arena if RANK else [np.zeros(3, np.float32)])
        report("construction error on one rank", False, "no exception")
    except ValueError as exc:
        report("construction error on one rank", "rank 0" in str(exc), str(exc))


class Tag:
    """A param group's extra entry (torch keeps them) whose repr differs between processes."""


def check_extra_group_entries():
    """Entries of a param group that are not the optimizer's hyper-parameters (a name, an
    object, a set of str, whose reprs differ between processes) are not compared: the
    ranks construct and step as one process, after an edit of such an entry on one rank too.
    Was: "disagree on the parameters or hyper-parameters" at construction, and on every
    step after the edit."""
    arena, ref = model(np.float64), model(np.float64)
    extra = dict(name="encoder", tag=Tag(), labels={"W1", "b1", "W2", "s", "b2"})
    try:
        opt = ShardedOptimizer(fo.Adam, [dict(extra, params=arena.params)], lr=0.1)
        ref_opt = fo.Adam([dict(extra, params=ref.params)], lr=0.1)
        step_both(arena, opt, ref, ref_opt, 0)
        if RANK == SIZE - 1:
            opt.param_groups[0]["tag"] = Tag()
        step_both(arena, opt, ref, ref_opt, 1)
        report("extra group entries", same(arena.flat_params, ref.flat_params))
    except ValueError as exc:
        report("extra group entries", False, str(exc))


def _snapshot(arena, opt):
    return (arena.flat_params.copy(), arena.flat_grads.copy(),
            pickle.dumps(opt.shard_optimizer.state_dict()))


def _unchanged(arena, opt, before):
    after = _snapshot(arena, opt)
    return same(after[0], before[0]) and same(after[1], before[1]) and after[2] == before[2]


def _small(dtype=np.float64):
    arena = fo.ParameterArena(dtype, capacity=100)
    arena.add("u", 20, init=1.0)
    arena.add("v", 20, init=1.0)
    return arena


def check_read_only():
    """A read-only parameter: refused at construction (every rank, naming it), and at step when
    a view became read-only on one rank only (every rank raises naming that rank and the
    parameter; nothing changes on any rank). Was: accepted and written through."""
    arena = _small()
    if RANK == SIZE - 1:
        arena.params["v"].flags.writeable = False
    try:
        ShardedOptimizer(fo.SGD, arena, lr=1.0)
        report("read-only at construction", False, "no exception")
    except ValueError as exc:
        report("read-only at construction", f"rank {SIZE - 1}" in str(exc)
               and "'v' is read-only" in str(exc) and same(arena.flat_params, np.ones(40)),
               str(exc))
    # at step, on one rank: a parameter's view (after a first step), and the arena's grad
    # view that step(grads) copies into (that rank raised alone, after the others had agreed
    # to step, and they hung in the exchange)
    for name, views, message, stepped in (
            ("read-only at step", "params", "'v' is read-only", True),
            ("read-only grad at step", "grads", "grad of parameter 'v' is read-only", False)):
        arena = _small()
        opt = ShardedOptimizer(fo.SGD, arena, lr=1.0)
        if stepped:
            arena.flat_grads[...] = 1.0
            opt.step()
        if RANK == SIZE - 1:
            getattr(arena, views)["v"].flags.writeable = False
        before = _snapshot(arena, opt)
        try:
            opt.step({"u": np.full(20, 5.0), "v": np.full(20, 5.0)})
            report(name, False, "no exception")
        except ValueError as exc:
            report(name, f"rank {SIZE - 1}" in str(exc) and message in str(exc)
                   and _unchanged(arena, opt, before), str(exc))
    # a state array of the shard made read-only in place on one rank, after the steps that
    # checked it: refused by every rank's checks before any steps (the other ranks stepped,
    # and that rank's kernel refused it alone, after they had agreed)
    arena = _small()
    opt = ShardedOptimizer(fo.Adam, arena, lr=1.0)
    arena.flat_grads[...] = 1.0
    opt.step()
    opt.step()
    if RANK == SIZE - 1:
        shard = opt.shard_optimizer
        shard.state[max(shard.state)]["exp_avg"].flags.writeable = False
    before = _snapshot(arena, opt)
    try:
        opt.step()
        report("read-only state at step", False, "no exception")
    except ValueError as exc:
        report("read-only state at step", f"rank {SIZE - 1}" in str(exc)
               and "['exp_avg'] is read-only" in str(exc) and _unchanged(arena, opt, before),
               str(exc))


def check_grad_sums_past_the_float_range():
    """float32 grads whose sum over the ranks overflows (to +inf, to -inf, and +inf plus -inf:
    NaN) or whose average underflows (the smallest subnormal on one rank) under
    np.errstate(all="raise") and warnings as errors: the average is what it is and the step
    goes on, as one process's step of that average does (the rank holding such an element
    raised alone, and the others hung in the gather)."""
    def rank_grads(r):
        g = np.zeros(40, np.float32)
        g[5], g[20] = 3e38, -3e38             # on the first rank's shard and a middle one
        g[30] = 2.0 ** -149 if r == 0 else 0  # divided by the ranks: rounded, underflow
        g[39] = np.inf if r % 2 == 0 else -np.inf
        return g

    arena, ref = _small(np.float32), _small(np.float32)
    opt = ShardedOptimizer(fo.SGD, arena, lr=1.0)
    with np.errstate(all="ignore"):
        total = rank_grads(0)
        for r in range(1, SIZE):
            total = total + rank_grads(r)
        ref.flat_grads[...] = total / SIZE
        fo.SGD(ref.params, lr=1.0).step(ref.grads)
    arena.flat_grads[...] = rank_grads(RANK)
    try:
        with np.errstate(all="raise"), warnings.catch_warnings():
            warnings.simplefilter("error")
            opt.step()
        report("grad sums past the float range", same(arena.flat_params, ref.flat_params)
               and np.isnan(ref.flat_params[39]) and np.isinf(ref.flat_params[[5, 20]]).all(),
               f"{arena.flat_params[[5, 20, 39]]} against {ref.flat_params[[5, 20, 39]]}")
    except Exception as exc:     # noqa: BLE001 - reported on this rank
        report("grad sums past the float range", False, f"{type(exc).__name__}: {exc}")


def check_refused_shard_step():
    """A step the shard optimizer refuses (an invalid hyper-parameter, on every rank or on one
    rank only) raises on every rank, naming the first failing rank, before anything is
    written: parameters, grads and state are unchanged; fixing it, the next step matches the
    single process. Was: the grads were overwritten first, and with the error on one rank
    only the others deadlocked in Allgatherv."""
    arena, ref = _small(), _small()
    opt = ShardedOptimizer(fo.Adam, arena, lr=0.1)
    ref_opt = fo.Adam(ref.params, lr=0.1)
    step_both(arena, opt, ref, ref_opt, 0)
    arena.flat_grads[...] = 3.0
    for label, key, value, ranks in [("lr everywhere", "lr", -1.0, range(SIZE)),
                                     ("betas on one rank", "betas", (0.9, 1.5), [SIZE - 1]),
                                     ("lr type on one rank", "lr", "0.1", [SIZE - 1])]:
        good = opt.param_groups[0][key]
        if RANK in ranks:
            opt.param_groups[0][key] = value
        before = _snapshot(arena, opt)
        kind = TypeError if isinstance(value, str) else ValueError
        for grads in (None, {"u": np.zeros(20), "v": np.zeros(20)}):
            try:
                opt.step(grads)
                report(f"refused step {label}", False, "no exception")
            except kind as exc:
                report(f"refused step {label}", f"rank {ranks[0]} of {SIZE}" in str(exc)
                       and key in str(exc) and _unchanged(arena, opt, before), str(exc))
        opt.param_groups[0][key] = good
    gs = local_grads(1, np.float64, arena.size)
    opt.step(dict(zip("uv", gs[RANK].reshape(2, 20))))
    ref.flat_grads[...] = averaged(gs)
    ref_opt.step(ref.grads)
    report("good step after refused steps", same(arena.flat_params, ref.flat_params))


def check_overlap_on_one_rank():
    """A shard state array assigned on one rank only that overlaps the shard's parameter (what
    the shard optimizer's step refuses): every rank raises ValueError naming that rank before
    anything is written; with the state put back, the next step matches the single process.
    Was: the other ranks stepped their shards and returned, that rank raised RuntimeError."""
    arena, ref = _small(), _small()
    opt = ShardedOptimizer(fo.Adam, arena, lr=0.1)
    ref_opt = fo.Adam(ref.params, lr=0.1)
    step_both(arena, opt, ref, ref_opt, 3)
    last, state = SIZE - 1, opt.shard_optimizer.state[0]
    kept = state["exp_avg"].copy()
    if RANK == last:
        state["exp_avg"] = opt.shard_optimizer.param_groups[0]["params"][0]
    arena.flat_grads[...] = 3.0
    before = (arena.flat_params.copy(), arena.flat_grads.copy(),
              pickle.dumps({k: v for k, v in state.items() if k != "exp_avg"}))
    try:
        opt.step()
        report("overlap on one rank", False, "no exception")
    except ValueError as exc:
        report("overlap on one rank", f"rank {last} of {SIZE}" in str(exc) and "overlap" in
               str(exc) and same(arena.flat_params, before[0]) and same(arena.flat_grads,
               before[1]) and pickle.dumps({k: v for k, v in state.items() if k != "exp_avg"})
               == before[2], str(exc))
    except RuntimeError as exc:
        report("overlap on one rank", False, repr(exc))
    state["exp_avg"] = kept
    step_both(arena, opt, ref, ref_opt, 4)
    report("overlap on one rank, then put back", same(arena.flat_params, ref.flat_params))


def check_hyper_mismatch_at_step():
    """An edit of the hyper-parameters between steps made on one rank only (``opt.lr``, a
    group's entry): every rank raises ValueError naming that rank and the entry, nothing
    changes; made on every rank, the next step matches the single process. Was: each rank
    stepped its shard with its own value, silently (the gathered parameters mixed them); and
    lrs given as 0-d arrays, betas as 1-d arrays, were compared as NumPy prints them (8
    digits): 0.2 and 0.2 + 2^-40 agreed."""
    arena, ref = _small(), _small()
    opt = ShardedOptimizer(fo.Adam, arena, lr=0.1)
    ref_opt = fo.Adam(ref.params, lr=0.1)
    last = SIZE - 1
    for label, edit in [("lr", lambda: setattr(opt, "lr", np.array(0.2))),
                        ("betas", lambda: opt.param_groups[0].update(
                            betas=np.array([0.8, 0.999]))),
                        ("lr", lambda: setattr(opt, "lr", np.array(0.2 + 2 ** -40))),
                        ("betas", lambda: opt.param_groups[0].update(
                            betas=np.array([0.8, 0.999 - 2 ** -40])))]:
        if RANK == last:
            edit()
        arena.flat_grads[...] = 3.0
        before = _snapshot(arena, opt)
        for grads in (None, {"u": np.ones(20), "v": np.ones(20)}):
            try:
                opt.step(grads)
                report(f"hyper mismatch at step {label}", SIZE == 1, "no exception")
            except ValueError as exc:
                report(f"hyper mismatch at step {label}", f"rank {last}" in str(exc)
                       and label in str(exc) and _unchanged(arena, opt, before), str(exc))
        if RANK != last:
            edit()
    gs = local_grads(2, np.float64, arena.size)
    arena.flat_grads[...] = gs[RANK]
    opt.step()
    ref_opt.lr = 0.2 + 2 ** -40
    ref_opt.param_groups[0]["betas"] = (0.8, 0.999 - 2 ** -40)
    ref.flat_grads[...] = averaged(gs)
    ref_opt.step(ref.grads)
    report("hyper mismatch at step, then the same edit everywhere",
           same(arena.flat_params, ref.flat_params))


def check_optional_hyper_mismatch_at_step():
    """AdamW's eps_inside_sqrt (Adam's course form, not among its defaults, which its steps
    honour where a group sets it) set on one rank only: every rank raises ValueError naming
    it, nothing changes; set on every rank, the next step matches the single process. Was:
    the ranks compared their defaults' keys only, and stepped their shards with two
    formulas, silently (the review of the commit that made AdamW check it)."""
    arena, ref = _small(), _small()
    opt = ShardedOptimizer(fo.AdamW, arena, lr=0.1, eps=0.5)
    ref_opt = fo.AdamW(ref.params, lr=0.1, eps=0.5)
    last = SIZE - 1
    if RANK == last:    # spelled out as its default on one rank: the same step (review q26)
        opt.param_groups[0]["eps_inside_sqrt"] = False
    arena.flat_grads[...] = ref.flat_grads[...] = 3.0
    try:
        opt.step()
        ref_opt.step(ref.grads)
        report("optional hyper at its default on one rank",
               same(arena.flat_params, ref.flat_params))
    except ValueError as exc:
        report("optional hyper at its default on one rank", False, str(exc))
    if RANK == last:
        opt.param_groups[0]["eps_inside_sqrt"] = True
    arena.flat_grads[...] = 3.0
    before = _snapshot(arena, opt)
    try:
        opt.step()
        report("optional hyper mismatch at step eps_inside_sqrt", SIZE == 1, "no exception")
    except ValueError as exc:
        report("optional hyper mismatch at step eps_inside_sqrt", f"rank {last}" in str(exc)
               and "eps_inside_sqrt" in str(exc) and _unchanged(arena, opt, before), str(exc))
    opt.param_groups[0]["eps_inside_sqrt"] = True
    ref_opt.param_groups[0]["eps_inside_sqrt"] = True
    gs = local_grads(2, np.float64, arena.size)
    arena.flat_grads[...] = gs[RANK]
    opt.step()
    ref.flat_grads[...] = averaged(gs)
    ref_opt.step(ref.grads)
    report("optional hyper mismatch at step, then the same edit everywhere",
           same(arena.flat_params, ref.flat_params))


def check_ctrl_c_inside_a_step():
    """Ctrl-C on the last rank while its step copies the grads into the arena (SIGINT sent to
    itself from inside np.copyto): the step ends on every rank as one process's, then
    KeyboardInterrupt is raised on that rank; the next step goes on alike. Was: raised in
    the copy, that rank skipped the exchange and every other rank waited in it forever."""
    arena, ref = _small(), _small()
    opt = ShardedOptimizer(fo.Adam, arena, lr=0.1)
    ref_opt = fo.Adam(ref.params, lr=0.1)
    copyto, sent = np.copyto, []

    def copy_then_interrupt(*args, **kwargs):
        if not sent:
            sent.append(os.kill(os.getpid(), signal.SIGINT))
        return copyto(*args, **kwargs)
    interrupted = False
    for t in (1, 2):
        gs = local_grads(t, np.float64, arena.size)
        grads = {"u": gs[RANK][:20], "v": gs[RANK][20:40]}
        np.copyto = copy_then_interrupt if t == 1 and RANK == SIZE - 1 else copyto
        try:
            opt.step(grads)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            np.copyto = copyto
        ref.flat_grads[...] = averaged(gs)
        ref_opt.step(ref.grads)
        report(f"ctrl-c inside a step {t}", same(arena.flat_params, ref.flat_params)
               and interrupted == bool(sent) == (RANK == SIZE - 1),
               f"interrupted {interrupted}, signal sent {bool(sent)}")


def check_shard_step_failing_on_one_rank():
    """The shard step failing on the last rank after every rank's checks passed (a
    MemoryError, as when the first step allocates the state): that rank raises RuntimeError,
    the others have stepped; every later call raises RuntimeError on every rank naming it
    (was: the others went on, and a state_dict() hung), until a load_state_dict, after which
    the steps go on as one process's. Was: a hang, or shards at different step counts. The
    same for a SystemExit (a SIGTERM handler's) or a KeyboardInterrupt, raised as they are on
    that rank (was: nothing flagged, and a checkpoint saved in a `finally:` held shards at
    different steps)."""
    for kind in (MemoryError, SystemExit, KeyboardInterrupt):
        arena, ref = _small(), _small()
        opt = ShardedOptimizer(fo.Adam, arena, lr=0.1)
        ref_opt = fo.Adam(ref.params, lr=0.1)
        gs = local_grads(1, np.float64, arena.size)
        arena.flat_grads[...] = gs[RANK]
        opt.step()
        saved, params = opt.state_dict(), arena.flat_params.copy()
        ref.flat_grads[...] = averaged(gs)
        ref_opt.step(ref.grads)
        shard_step = opt.shard_optimizer.step

        def failing(*args, **kwargs):
            raise kind("as the state is allocated")
        last, raised = SIZE - 1, RuntimeError if kind is MemoryError else kind
        if RANK == last:
            opt.shard_optimizer.step = failing
        try:
            opt.step()
            report(f"shard step failing {kind.__name__}", RANK != last, "no exception")
        except (RuntimeError, SystemExit, KeyboardInterrupt) as exc:
            report(f"shard step failing {kind.__name__}", RANK == last and type(exc) is raised
                   and (kind is not MemoryError or "MemoryError" not in str(exc)
                        and "as the state is allocated" in str(exc)), repr(exc))
        finally:
            opt.shard_optimizer.step = shard_step
        for call in (opt.state_dict, opt.step):
            try:
                call()
                report("shard step failing, then", False, f"{call.__name__}: no exception")
            except RuntimeError as exc:
                report("shard step failing, then", f"rank {last} of {SIZE}" in str(exc)
                       and "out of step" in str(exc) and "as the state is allocated"
                       in str(exc), str(exc))
        opt.load_state_dict(saved)
        arena.flat_params[...] = params
        gs = local_grads(2, np.float64, arena.size)
        arena.flat_grads[...] = gs[RANK]
        opt.step()
        ref.flat_grads[...] = averaged(gs)
        ref_opt.step(ref.grads)
        report("shard step failing, then loaded", same(arena.flat_params, ref.flat_params))


def check_shard_step_raising_after_it_stepped():
    """An exception on the last rank raised inside its shard step once the step had run (a
    SIGTERM handler's SystemExit as the step returned, a KeyboardInterrupt): raised there as
    it is, the shards are in step, and the calls go on as one process's (was: the rank was
    said to have missed the step, and every later call, the checkpoint in a `finally:` too,
    raised until a state dict was loaded). Raised between its two groups' kernel calls, after
    the first: every later call raises, naming the group that stepped."""
    last = SIZE - 1
    for kind in (SystemExit, KeyboardInterrupt, MemoryError):
        arena, ref = _small(), _small()
        groups = [{"params": [arena.params["u"]]}, {"params": [arena.params["v"]], "lr": 0.05}]
        opt = ShardedOptimizer(fo.Adam, groups, lr=0.1)
        ref_opt = fo.Adam([{"params": [ref.params["u"]]},
                           {"params": [ref.params["v"]], "lr": 0.05}], lr=0.1)
        shard = opt.shard_optimizer
        for t, where in enumerate(("after the step", "between the groups")):
            gs = local_grads(t, np.float64, arena.size)
            arena.flat_grads[...] = gs[RANK]
            ref.flat_grads[...] = averaged(gs)
            saved, params = opt.state_dict(), arena.flat_params.copy()
            if where == "after the step":
                def raising(*args, _step=shard.step, **kwargs):
                    _step(*args, **kwargs)
                    raise kind("as the step returned")
                name = "step"
            else:
                def raising(group, *args, _run=shard._run, **kwargs):
                    _run(group, *args, **kwargs)
                    if group is shard.param_groups[0]:
                        raise kind("after group 0")
                name = "_run"
            if RANK == last:
                setattr(shard, name, raising)
            try:
                opt.step()
                ok, detail = RANK != last, "no exception"
            except (RuntimeError, SystemExit, KeyboardInterrupt, MemoryError) as exc:
                ok, detail = RANK == last, repr(exc)
                if where == "after the step":
                    ok = ok and type(exc) is kind
                else:
                    ok = ok and (type(exc) is kind if kind is not MemoryError
                                 else type(exc) is RuntimeError
                                 and "stepped only its param group 0 of 2" in str(exc))
            finally:
                shard.__dict__.pop(name, None)
            report(f"shard step raising {where} {kind.__name__}", ok, detail)
            if where == "after the step":
                ref_opt.step(ref.grads)
                sd = opt.state_dict()
                if RANK == 0:
                    report(f"shard step raising {where}, state",
                           *compare_sd(sd, ref_opt.state_dict()))
                report(f"shard step raising {where}, params",
                       same(arena.flat_params, ref.flat_params))
                continue
            try:
                opt.state_dict()
                report(f"shard step raising {where}, then", False, "no exception")
            except RuntimeError as exc:
                report(f"shard step raising {where}, then", f"rank {last} of {SIZE}" in str(exc)
                       and "stepped only its param group 0 of 2" in str(exc)
                       and "out of step" in str(exc), str(exc))
            opt.load_state_dict(saved)
            arena.flat_params[...] = params
            arena.flat_grads[...] = gs[RANK]
            opt.step()
            ref_opt.step(ref.grads)
            report(f"shard step raising {where}, then loaded",
                   same(arena.flat_params, ref.flat_params))


class NumPyOutOfMemory(types.ModuleType):
    """NumPy whose function ``name`` raises MemoryError: fastopt.distributed's ``np`` on a rank
    that runs out of memory there."""

    def __init__(self, name):
        super().__init__("numpy")
        self.failing = name

    def __getattr__(self, name):
        if name != self.failing:
            return getattr(np, name)

        def out_of_memory(*args, **kwargs):
            raise MemoryError(f"np.{name} is out of memory")
        return out_of_memory


def check_out_of_memory_in_state_dicts():
    """A MemoryError on one rank inside state_dict or load_state_dict (add_param_group makes
    both calls), after the ranks agreed that the call is valid: the root's gathered arrays, a
    rank's copy of its shard's state, the root's flat arrays, a rank's receive buffers, a
    rank's copy of the state it loads. Every rank raises RuntimeError naming that rank,
    nothing changes on any rank, and the calls then go on as one process's. Was: that rank
    raised alone and the others waited in Gatherv or Scatterv forever; or, failing as it
    loaded its shard, the others had loaded theirs (the shards at different steps, and
    nothing said so)."""
    arena, ref = model(np.float64), model(np.float64)
    keys = list(SHAPES)
    opt = ShardedOptimizer(fo.Adam, {k: arena.params[k] for k in keys[:2]}, lr=0.1)
    ref_opt = fo.Adam({k: ref.params[k] for k in keys[:2]}, lr=0.1)
    step_both(arena, opt, ref, ref_opt, 0)
    sd = opt.state_dict()           # a step behind: a load on some ranks only would show
    step_both(arena, opt, ref, ref_opt, 1)
    last, dist = SIZE - 1, fastopt.distributed

    def raising(*args, **kwargs):
        raise MemoryError("the shard's state is out of memory")
    cases = [  # label, the rank that fails, what fails there (an object, None for the shard
        # optimizer, its attribute and what stands in for it), the call
        ("state_dict: the root's arrays", 0, (dist, "np", NumPyOutOfMemory("empty")),
         opt.state_dict),
        ("state_dict: a rank's copy of its shard", last, (None, "state_dict", raising),
         opt.state_dict),
        ("load_state_dict: the root's flat arrays", 0,
         (dist, "np", NumPyOutOfMemory("concatenate")), lambda: opt.load_state_dict(sd)),
        ("load_state_dict: a rank's receive buffers", last,
         (dist, "np", NumPyOutOfMemory("empty")), lambda: opt.load_state_dict(sd)),
        ("load_state_dict: a rank's copy of the state it loads", last,
         (fastopt.optim, "like_lines", raising), lambda: opt.load_state_dict(sd)),
        ("add_param_group: a rank's copy of its shard", last, (None, "state_dict", raising),
         lambda: opt.add_param_group({"params": {k: arena.params[k] for k in keys[2:]}}))]
    for label, bad, (target, name, value), call in cases:
        before = _snapshot(arena, opt)
        shard = opt.shard_optimizer
        target = shard if target is None else target
        kept = target.__dict__.get(name)
        if RANK == bad:
            setattr(target, name, value)
        error = None
        try:
            call()
        except RuntimeError as exc:
            error = exc
        finally:
            if kept is None:
                target.__dict__.pop(name, None)
            else:
                setattr(target, name, kept)
        report(f"out of memory in {label}", f"rank {bad} of {SIZE}: " in str(error)
               and "out of memory" in str(error) and _unchanged(arena, opt, before)
               and opt.shard_optimizer is shard, str(error or "no exception"))
    opt.add_param_group({"params": {k: arena.params[k] for k in keys[2:]}})
    ref_opt.add_param_group({"params": {k: ref.params[k] for k in keys[2:]}})
    step_both(arena, opt, ref, ref_opt, 2)
    report("out of memory, then add_param_group and a step",
           same(arena.flat_params, ref.flat_params))


def check_subclass_load_failing_on_one_rank():
    """A subclass's own load_state_dict (called on the shard, as torch's ZeRO calls it; not
    staged) that raises on one rank: every rank raises, and since the others have loaded,
    every later call but a load raises on every rank until a load succeeds (the next step had
    run silently on shards at different steps)."""
    failing = [False]

    class Own(fo.Adam):
        def load_state_dict(self, state_dict):
            if failing[0]:
                raise ValueError("this rank's load refused")
            super().load_state_dict(state_dict)

    arena, ref = model(np.float64), model(np.float64)
    keys = list(SHAPES)
    opt = ShardedOptimizer(Own, {k: arena.params[k] for k in keys[:2]}, lr=0.1)
    ref_opt = fo.Adam({k: ref.params[k] for k in keys[:2]}, lr=0.1)
    step_both(arena, opt, ref, ref_opt, 0)
    sd = opt.state_dict()
    ref_sd = ref_opt.state_dict()
    step_both(arena, opt, ref, ref_opt, 1)
    failing[0] = RANK == SIZE - 1
    try:
        opt.load_state_dict(sd)
        raised = "no exception"
    except Exception as exc:    # noqa: BLE001 - which one is reported
        raised = type(exc).__name__
    failing[0] = False
    try:
        arena.flat_grads[...] = 1.0
        opt.step()
        later = "no exception"
    except RuntimeError as exc:
        later = str(exc)
    report("subclass load failing on one rank", raised != "no exception"
           and "out of step" in later, f"{raised}; then: {later}")
    opt.load_state_dict(sd)
    ref_opt.load_state_dict(ref_sd)
    step_both(arena, opt, ref, ref_opt, 2)
    report("subclass load failing on one rank, then a load and a step",
           same(arena.flat_params, ref.flat_params))


def check_own_grad_views():
    """Grads that are the arena's own grad views in another order (or other views of its grad
    buffer) step as one process does. Was: copied one by one, a later copy read a view an
    earlier one had overwritten."""
    for label, make in [("swapped", lambda a: {"u": a.grads["v"], "v": a.grads["u"]}),
                        ("shifted", lambda a: {"u": a.flat_grads[5:25],
                                               "v": a.flat_grads[15:35]}),
                        ("same views", lambda a: {"du": a.grads["u"][...], "v": a.grads["v"]}),
                        ("list", lambda a: [a.grads["v"][::-1], a.grads["u"]])]:
        arena, ref = _small(), _small()
        # (grads in order for the parameters given in order: by name, a list is refused)
        opt = ShardedOptimizer(fo.SGD, list(arena.params.values()) if label == "list" else arena,
                               lr=1.0)
        ref_opt = fo.SGD(list(ref.params.values()), lr=1.0)
        for a in (arena, ref):
            a.flat_grads[...] = np.arange(40.0)      # the same on every rank
        ref_grads = make(ref)
        ref_grads = list(ref_grads.values()) if isinstance(ref_grads, dict) else ref_grads
        expected_grads = np.concatenate([g.copy() for g in ref_grads])
        opt.step(make(arena))
        ref_opt.step(ref_grads)
        report(f"own grad views {label}", same(arena.flat_params, ref.flat_params)
               and same(arena.flat_grads, expected_grads),
               f"{arena.flat_params} vs {ref.flat_params}")


def check_root_on_one_rank():
    """state_dict / load_state_dict with a root out of range on the last rank only, or another
    valid root there: every rank raises ValueError, nothing changes. Was: that rank raised
    alone and the others waited in Gatherv / Scatterv (or the ranks gathered to other roots)."""
    arena = _small()
    opt = ShardedOptimizer(fo.Adam, arena, lr=0.1)
    arena.flat_grads[...] = 1.0
    opt.step()
    sd = opt.state_dict()
    if RANK == 0:
        sd["state"][0]["exp_avg"][...] = 5.0
    before = _snapshot(arena, opt)
    last = SIZE - 1
    for label, root, words in [("out of range", SIZE, f"rank {last} of {SIZE}: Invalid root"),
                               ("another", last, "disagree on root")]:
        for name, call in [("state_dict", lambda r: opt.state_dict(root=r)),
                           ("load_state_dict", lambda r: opt.load_state_dict(sd, root=r))]:
            try:
                call(root if RANK == last else 0)
                report(f"root on one rank {label} {name}", False, "no exception")
            except ValueError as exc:
                report(f"root on one rank {label} {name}", words in str(exc)
                       and _unchanged(arena, opt, before), str(exc))


def check_group_removed_on_one_rank():
    """A param group popped from param_groups on the last rank only: state_dict, step and
    add_param_group raise ValueError on every rank naming that rank, nothing changes; put
    back, the step matches one process. Was: state_dict raised IndexError on that rank alone
    and the other ranks hung in its Gatherv."""
    arena, ref = model(np.float64), model(np.float64)
    keys = list(SHAPES)

    def groups(a):
        p = a.params
        return [{"params": [p[k] for k in keys[:2]]}, {"params": [p[keys[2]]], "lr": 0.5},
                {"params": [p[k] for k in keys[3:]]}]
    opt = ShardedOptimizer(fo.Adam, groups(arena), lr=0.1)
    ref_opt = fo.Adam(groups(ref), lr=0.1)
    step_both(arena, opt, ref, ref_opt, 0)
    before = _snapshot(arena, opt)
    popped = opt.param_groups.pop(1) if RANK == SIZE - 1 else None
    for label, call in [("state_dict", opt.state_dict), ("step", opt.step),
                        ("add_param_group", lambda: opt.add_param_group({"params": []}))]:
        try:
            call()
            report(f"group removed on one rank {label}", False, "no exception")
        except ValueError as exc:
            if RANK == SIZE - 1:
                opt.param_groups.insert(1, popped)
            ok = _unchanged(arena, opt, before) and f"rank {SIZE - 1} of {SIZE}: param_groups " \
                "no longer holds" in str(exc)
            if RANK == SIZE - 1:
                popped = opt.param_groups.pop(1)
            report(f"group removed on one rank {label}", ok, str(exc))
    if RANK == SIZE - 1:
        opt.param_groups.insert(1, popped)
    step_both(arena, opt, ref, ref_opt, 1)
    report("group removed on one rank, put back", same(arena.flat_params, ref.flat_params))


def check_different_calls_on_one_rank():
    """Rank 0 in add_param_group, state_dict or load_state_dict while the others step (or
    save), or in another ShardedOptimizer's step (of the same layout: a GAN's two models):
    RuntimeError on every rank naming each rank's call, nothing changes, and the next step
    matches one process. Was: the calls' collectives paired, and the ranks raised
    AttributeError and TypeError naming nothing; the two optimizers' steps mixed their
    parameters, silently."""
    arena, ref = model(np.float64), model(np.float64)
    keys = list(SHAPES)
    opt = ShardedOptimizer(fo.Adam, {k: arena.params[k] for k in keys[:2]}, lr=0.1)
    ref_opt = fo.Adam({k: ref.params[k] for k in keys[:2]}, lr=0.1)
    step_both(arena, opt, ref, ref_opt, 0)
    sd = opt.state_dict()
    before = _snapshot(arena, opt)
    calls = {"add_param_group": lambda: opt.add_param_group(
                 {"params": {k: arena.params[k] for k in keys[2:]}}),
             "state_dict": opt.state_dict, "load_state_dict": lambda: opt.load_state_dict(sd),
             "step": opt.step}
    for first, others in [("add_param_group", "step"), ("state_dict", "step"),
                          ("load_state_dict", "step"), ("add_param_group", "state_dict")]:
        label = f"different calls {first} vs {others}"
        try:
            calls[first if RANK == 0 else others]()
            report(label, False, "no exception")
        except RuntimeError as exc:
            by_rank = ", ".join([first] + [others] * (SIZE - 1))
            report(label, f"(by rank: {by_rank})" in str(exc) and _unchanged(arena, opt, before),
                   str(exc))
    arena2 = model(np.float64, seed=1)
    opt2 = ShardedOptimizer(fo.Adam, {k: arena2.params[k] for k in keys[:2]}, lr=0.1)
    arena2.flat_grads[...] = 1.0
    before2 = _snapshot(arena2, opt2)
    try:
        (opt2 if RANK == 0 else opt).step()
        report("different calls step vs another optimizer's step", False, "no exception")
    except RuntimeError as exc:
        size = arena.params["W1"].size + arena.params["b1"].size
        by_rank = ", ".join([f"step of #{opt2._id} (Adam, {size} elements)"]
                            + [f"step of #{opt._id} (Adam, {size} elements)"] * (SIZE - 1))
        report("different calls step vs another optimizer's step",
               "calls of different ShardedOptimizers" in str(exc) and opt2._id != opt._id
               and f"(by rank: {by_rank})" in str(exc) and _unchanged(arena, opt, before)
               and _unchanged(arena2, opt2, before2), str(exc))
    step_both(arena, opt, ref, ref_opt, 1)
    report("different calls, then a step", same(arena.flat_params, ref.flat_params))


# ---------------------------------------------------------------------- add_param_group
ADDED = {"Adam": True, "SGD-momentum": False}     # case -> params by name (else lists)


def _groups_from(arena, keys, named, **hyper):
    """One param group of ``arena``'s parameters ``keys``, by name or as a list."""
    params = {k: arena.params[k] for k in keys}
    return dict(hyper, params=params if named else list(params.values()))


def _grads_for(arena, opt_keys, named):
    return arena.grads if named else [arena.grads[k] for k in opt_keys]


def check_add_param_group():
    """A param group added after 5 steps (W2, s, b2, with its own lr; W1's group's lr edited
    first) steps as one process with the same add_param_group call, bit for bit, Adam by name
    and SGD-momentum by lists, float32 and float64. The state dict gathered after it is the
    single-process one; saved at step 12 and loaded into a new optimizer that had the same
    call (on this communicator), the run resumes bit for bit."""
    first, rest = list(SHAPES)[:2], list(SHAPES)[2:]
    for name, named in ADDED.items():
        cls, hyper = CASES[name]
        for dtype in (np.float32, np.float64):
            label = f"{name} {np.dtype(dtype).name}"
            arena, ref, again = model(dtype), model(dtype), model(dtype)
            opt = ShardedOptimizer(cls, [_groups_from(arena, first, named)], **hyper)
            ref_opt = cls([_groups_from(ref, first, named)], **hyper)
            keys, saved = first, None
            try:
                for t in range(STEPS):
                    if t == 5:
                        opt.param_groups[0]["lr"] = ref_opt.param_groups[0]["lr"] = 5e-3
                        for o, a in ((opt, arena), (ref_opt, ref)):
                            o.add_param_group(_groups_from(a, rest, named, lr=3e-3))
                        keys = first + rest
                    if t == 12:
                        saved = (opt.state_dict(), arena.flat_params.copy())
                    gs = local_grads(t, dtype, arena.size)
                    arena.flat_grads[...] = gs[RANK]
                    opt.step(None if t % 2 else _grads_for(arena, keys, named))
                    ref.flat_grads[...] = averaged(gs)
                    ref_opt.step(_grads_for(ref, keys, named))
                report(f"add_param_group equivalence {label}",
                       same(arena.flat_params, ref.flat_params))
                sd = opt.state_dict()
                report(f"add_param_group state_dict {label}",
                       *(compare_sd(sd, ref_opt.state_dict()) if RANK == 0
                         else (sd is None, repr(sd)[:80])))
                resumed = ShardedOptimizer(cls, [_groups_from(again, first, named)], **hyper)
                resumed.add_param_group(_groups_from(again, rest, named, lr=0.5))
                again.flat_params[...] = saved[1]
                resumed.load_state_dict(saved[0])
                for t in range(12, STEPS):
                    again.flat_grads[...] = local_grads(t, dtype, again.size)[RANK]
                    resumed.step()
                report(f"add_param_group resume {label}", same(again.flat_params,
                                                                ref.flat_params))
            except Exception as exc:      # noqa: BLE001 - reported, the other checks go on
                report(f"add_param_group equivalence {label}", False, repr(exc))


def check_bad_param_group():
    """A param group that add_param_group refuses, on every rank or on the last rank only
    (or ranks that disagree): every rank raises the same kind of error naming the problem,
    and nothing changes (parameters, grads, state, groups, shard); a good call then still
    steps as one process."""
    arena, ref = model(np.float64), model(np.float64)
    opt = ShardedOptimizer(fo.Adam, [{"params": dict(list(arena.params.items())[:2])}], lr=0.1)
    ref_opt = fo.Adam([{"params": dict(list(ref.params.items())[:2])}], lr=0.1)
    step_both(arena, opt, ref, ref_opt, 5)
    p, last = arena.params, SIZE - 1
    rest = {k: p[k] for k in list(SHAPES)[2:]}
    cases = [  # label, kind, words in the message, the group on the last rank, elsewhere
        ("duplicate", ValueError, "parameter W1 appears in more than one param group",
         {"params": {"W1": p["W1"]}}, None),
        ("bad lr", ValueError, "lr", {"params": rest, "lr": -1.0}, None),
        ("bad lr type", TypeError, "lr", {"params": rest, "lr": "0.1"}, None),
        ("not a dict", TypeError, "param group must be a dict", [p["W2"]], None),
        ("unnamed", ValueError, "named", {"params": list(rest.values())}, None),
        ("not next on the arena", ValueError, "ParameterArena", {"params": {"s": p["s"]}},
         None),
        ("bad lr on one rank", ValueError, f"rank {last} of {SIZE}: ",
         {"params": rest, "lr": -1.0}, {"params": rest}),
        ("duplicate on one rank", ValueError, f"rank {last} of {SIZE}: ",
         {"params": {"b1": p["b1"], **rest}}, {"params": rest}),
        ("other lr on one rank", ValueError, "disagree", {"params": rest, "lr": 0.2},
         {"params": rest}),
    ]
    arena.flat_grads[...] = 3.0
    for label, kind, words, bad, good in cases:
        before = _snapshot(arena, opt)
        shape = (len(opt.param_groups), opt.shard, opt.bounds, opt.shard_optimizer)
        try:
            opt.add_param_group(bad if RANK == last or good is None else good)
            report(f"bad param group {label}", SIZE == 1 and good is not None, "no exception")
        except Exception as exc:    # noqa: BLE001 - the kind is checked
            report(f"bad param group {label}", type(exc) is kind and words in str(exc)
                   and _unchanged(arena, opt, before) and shape == (
                       len(opt.param_groups), opt.shard, opt.bounds, opt.shard_optimizer),
                   repr(exc))
    try:
        opt.add_param_group({"params": rest, "lr": 0.2})
        ref_opt.add_param_group({"params": {k: ref.params[k] for k in rest}, "lr": 0.2})
        step_both(arena, opt, ref, ref_opt, 6)
        report("good param group after bad ones", same(arena.flat_params, ref.flat_params))
    except Exception as exc:    # noqa: BLE001
        report("good param group after bad ones", False, repr(exc))


# ------------------------------------------------------------------------- checkpoints
CKPT_CASES = {"Adam": (fo.Adam, dict(lr=1e-2, amsgrad=True)),
              "SGD-momentum": (fo.SGD, dict(lr=1e-2, momentum=0.9)),
              "NAdam": (fo.NAdam, dict(lr=2e-3))}


def reference_run(cls, hyper, dtype, steps):
    ref = model(dtype)
    opt = cls(ref.params, **hyper)
    for t in range(steps):
        ref.flat_grads[...] = coarse_grad(t, dtype, ref.size)
        opt.step(ref.grads)
    return ref, opt


def check_save(directory):
    for name, (cls, hyper) in CKPT_CASES.items():
        for dtype in (np.float32, np.float64):
            arena = model(dtype)
            opt = ShardedOptimizer(cls, arena, **hyper)
            for t in range(STEPS):
                if t == STEPS // 2:
                    sd = opt.state_dict()
                    if RANK == 0:
                        path = os.path.join(directory, f"{name}-{np.dtype(dtype).name}.pkl")
                        with open(path, "wb") as f:
                            pickle.dump({"optimizer": sd, "params": arena.flat_params.copy()},
                                        f)
                arena.flat_grads[...] = coarse_grad(t, dtype, arena.size)
                opt.step()
            ref, _ = reference_run(cls, hyper, dtype, STEPS)
            report(f"checkpoint run {name} {np.dtype(dtype).name}",
                   same(arena.flat_params, ref.flat_params))
    COMM.Barrier()


def check_load(directory):
    """Resume each checkpoint on this communicator, on one rank (COMM_SELF), and in a plain
    single-process optimizer: all follow the uninterrupted run bit for bit."""
    for name, (cls, hyper) in CKPT_CASES.items():
        for dtype in (np.float32, np.float64):
            label = f"{name} {np.dtype(dtype).name}"
            with open(os.path.join(directory, f"{name}-{np.dtype(dtype).name}.pkl"), "rb") as f:
                saved = pickle.load(f)
            ref, _ = reference_run(cls, hyper, dtype, STEPS)
            comms = [COMM] + ([MPI.COMM_SELF] if RANK == 0 else [])
            for comm in comms:
                arena = model(dtype, seed=1)     # other values: the checkpoint must restore
                opt = ShardedOptimizer(cls, arena, comm=comm, lr=0.5)
                arena.flat_params[...] = saved["params"]
                opt.load_state_dict(saved["optimizer"] if comm.Get_rank() == 0 else None)
                for t in range(STEPS // 2, STEPS):
                    arena.flat_grads[...] = coarse_grad(t, dtype, arena.size)
                    opt.step()
                report(f"resume on {comm.Get_size()} {label}",
                       same(arena.flat_params, ref.flat_params))
            if RANK == 0:
                arena = model(dtype, seed=1)
                plain = cls(arena.params, **hyper)
                arena.flat_params[...] = saved["params"]
                plain.load_state_dict(saved["optimizer"])
                for t in range(STEPS // 2, STEPS):
                    arena.flat_grads[...] = coarse_grad(t, dtype, arena.size)
                    plain.step(arena.grads)
                report(f"resume single-process {label}", same(arena.flat_params, ref.flat_params))


def check_bad_state_dict():
    """A state dict that does not fit: every rank raises ValueError, nothing changes."""
    arena = model(np.float64)
    opt = ShardedOptimizer(fo.Adam, arena, lr=1e-2)
    arena.flat_grads[...] = 1
    opt.step()
    before = pickle.dumps(opt.shard_optimizer.state_dict())
    sd = opt.state_dict()
    if RANK == 0:
        sd["state"][2]["exp_avg"] = sd["state"][2]["exp_avg"][:-1]
    try:
        opt.load_state_dict(sd)
        report("bad state_dict", False, "no exception")
    except ValueError as exc:
        report("bad state_dict", pickle.dumps(opt.shard_optimizer.state_dict()) == before
               and "rank 0" in str(exc), str(exc))
    # a param group entry, on every rank, that does not pickle (torch keeps a group's extra
    # entries, and loading a state dict keeps the entries it lacks): was raised by bcast on
    # rank 0 alone, the others hung in it
    sd = opt.state_dict()
    opt.param_groups[0]["tag"] = Unpicklable()
    try:
        opt.load_state_dict(sd)
        report("unpicklable param group entry", False, "no exception")
    except TypeError as exc:
        opt.param_groups[0].pop("tag")
        report("unpicklable param group entry", pickle.dumps(opt.shard_optimizer.state_dict())
               == before and "rank 0" in str(exc) and "does not pickle" in str(exc), str(exc))


class Unpicklable:
    """A param group entry that deep-copies (as state_dict() does) but does not pickle."""

    def __reduce__(self):
        raise TypeError("Unpicklable does not pickle")

    def __deepcopy__(self, memo):
        return self


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--save")
    ap.add_argument("--load")
    ap.add_argument("--out", help="write rank r's lines to OUT/rank-r.jsonl (not stdout)")
    ap.add_argument("--only", help="run only these checks (comma-separated function names)")
    args = ap.parse_args()
    global OUT
    if args.out:
        OUT = open(os.path.join(args.out, f"rank-{RANK}.jsonl"), "w")
    checks = [check_equivalence, check_large, check_groups, check_memory, check_bad_grads,
              check_disagreeing_ranks, check_bad_state_dict, check_read_only,
              check_refused_shard_step, check_own_grad_views, check_hyper_mismatch_at_step,
              check_optional_hyper_mismatch_at_step,
              check_overlap_on_one_rank, check_root_on_one_rank, check_add_param_group,
              check_bad_param_group, check_group_removed_on_one_rank,
              check_extra_group_entries, check_grad_sums_past_the_float_range,
              check_different_calls_on_one_rank, check_ctrl_c_inside_a_step,
              check_shard_step_failing_on_one_rank, check_shard_step_raising_after_it_stepped,
              check_out_of_memory_in_state_dicts,
              check_subclass_load_failing_on_one_rank]
    if args.only:
        checks = [c for c in checks if c.__name__ in args.only.split(",")]
    if args.save:
        checks.append(lambda: check_save(args.save))
    if args.load:
        checks.append(lambda: check_load(args.load))
    for check in checks:
        try:
            check()
        except Exception:     # report and stop every rank rather than hang in a collective
            report(getattr(check, "__name__", "check"), False, traceback.format_exc())
            COMM.Abort(1)


if __name__ == "__main__":
    main()
