"""``mpiexec -n N python -m fastopt --mpi``: the ShardedOptimizer step, timed in its parts.

One Adam step over ``n`` parameters on N ranks, split into the parts of
:meth:`fastopt.distributed.ShardedOptimizer.step`:

- ``check``: the five-integer ``Allreduce`` agreeing that every rank's grads are valid and
  that the ranks' hyper-parameters are the same;
- ``exchange``: the ``Alltoallv`` that brings each rank its shard of every rank's grads;
- ``average``: the fixed-order sum and the division by N, on the shard;
- ``update``: the fused Adam kernel on the shard (it should shrink as 1/N);
- ``gather``: the in-place ``Allgatherv`` of the parameters.

Beside them, measured alone on the same bytes: MPI's own ``Reduce_scatter`` (the collective the
exchange + average replaces) and ``Allgatherv``. Each figure is the median over steps, on the
rank whose median step is slowest (the step waits for it), every part from that rank (medians:
the parts' need not sum to the step's exactly). Imports mpi4py: only
``python -m fastopt --mpi`` imports this module.
"""
import json
import time

import numpy as np
from mpi4py import MPI

from . import __version__
from ._bench import size_label, source_commit
from .arena import ParameterArena
from .distributed import ShardedOptimizer
from .optim import Adam

PARTS = ("check", "exchange", "average", "update", "gather")


def time_step(n, dtype=np.float32, steps=10, comm=MPI.COMM_WORLD):
    """Per-part median seconds of ``steps`` Adam steps over ``n`` parameters, on the rank
    whose median step is slowest."""
    arena = ParameterArena(dtype, capacity=n)
    rng = np.random.default_rng(comm.Get_rank())
    arena.add("w", n, init=rng.standard_normal(n))
    arena.flat_grads[...] = rng.standard_normal(n)
    opt = ShardedOptimizer(Adam, arena, comm=comm, lr=1e-6)
    times = {k: [] for k in PARTS + ("step", "reduce_scatter alone", "allgather alone")}
    mpi_type = MPI.FLOAT if np.dtype(dtype) == np.float32 else MPI.DOUBLE
    counts = [b - a for a, b in zip(opt.bounds, opt.bounds[1:])]
    scratch = np.empty(opt.shard[1] - opt.shard[0], dtype)
    for i in range(steps + 1):            # the first is a warm-up (page faults, state)
        comm.Barrier()
        t = [time.perf_counter()]
        opt._take_grads(None)
        t.append(time.perf_counter())
        opt._exchange()
        t.append(time.perf_counter())
        opt._average()
        t.append(time.perf_counter())
        opt.shard_optimizer.step(opt._shard_grads)
        t.append(time.perf_counter())
        opt._allgather()
        t.append(time.perf_counter())
        comm.Barrier()
        t0 = time.perf_counter()
        if comm.Get_size() > 1:
            comm.Reduce_scatter([arena.flat_grads, mpi_type], [scratch, mpi_type], counts,
                                op=MPI.SUM)
        t1 = time.perf_counter()
        comm.Barrier()
        t2 = time.perf_counter()
        if comm.Get_size() > 1:
            comm.Allgatherv(MPI.IN_PLACE, opt._gather_spec)
        t3 = time.perf_counter()
        if i == 0:
            continue
        for k, a, b in zip(PARTS, t, t[1:]):
            times[k].append(b - a)
        times["step"].append(t[-1] - t[0])
        times["reduce_scatter alone"].append(t1 - t0)
        times["allgather alone"].append(t3 - t2)
    mine = {k: float(np.median(v)) for k, v in times.items()}
    mine["rank"] = comm.Get_rank()
    # every part from the one rank whose step is slowest (the step waits for it): each part's
    # slowest rank, taken apart, had summed to more than the step (comm 5.68 ms, step 5.19)
    return max(comm.allgather(mine), key=lambda r: r["step"])


def report(sizes=(1_000_000, 10_000_000), dtypes=(np.float32,), json_path=None,
           comm=MPI.COMM_WORLD):
    """Print the table on rank 0 (and write ``json_path``); every rank must call it."""
    size, rank = comm.Get_size(), comm.Get_rank()
    out = print if rank == 0 else (lambda *a, **k: None)
    out(f"\nZeRO-1 sharded Adam step on {size} rank{'s' * (size > 1)} (MPI: "
        f"{MPI.Get_library_version().splitlines()[0].strip()}); ms, medians on the rank "
        "whose step is slowest\n  comm = check + exchange + gather; upd x N = the update's "
        "time times N; alone = MPI Reduce_scatter\n  + Allgatherv of the same bytes, each "
        "timed by itself")
    out(f"  {'elements':>9} {'dtype':<8}{'step':>8}{'comm':>8}{'average':>9}{'update':>8}"
        f"{'upd x N':>9}{'alone':>8}{'step / (update + alone)':>25}")
    rows, commit = [], source_commit()
    for dtype in dtypes:
        for n in sizes:
            n = int(n)
            r = time_step(n, dtype, steps=10 if n <= 2_000_000 else 4, comm=comm)
            comm_t = r["check"] + r["exchange"] + r["gather"]
            alone = r["reduce_scatter alone"] + r["allgather alone"]
            rows.append(dict(r, elements=n, dtype=np.dtype(dtype).name, ranks=size,
                             fastopt=__version__, commit=commit))
            out(f"  {size_label(n):>9} {np.dtype(dtype).name:<8}{r['step'] * 1e3:>8.2f}"
                f"{comm_t * 1e3:>8.2f}{r['average'] * 1e3:>9.2f}{r['update'] * 1e3:>8.2f}"
                f"{r['update'] * size * 1e3:>9.2f}{alone * 1e3:>8.2f}"
                f"{r['step'] / (r['update'] + alone):>25.2f}")
    if json_path and rank == 0:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)
        out(f"\nwrote {json_path}")
    return rows
