"""The digits MLP of digits.py trained data-parallel over MPI with a ZeRO-1 sharded Adam.

    mpiexec -n 2 python examples/digits_mpi.py [--epochs 40] [--adamw] [--seed 0]

Every rank builds the same model with its parameters on a fo.ParameterArena, draws the same
global mini-batches of 64 and computes grads on its share of the rows (rows r, r + N, ...;
batch norm normalizes over the local rows). fastopt.distributed.ShardedOptimizer averages the
grads, steps each rank's 1/N of the parameters (each rank holds 1/N of Adam's state) and
shares the result. The batch-norm running statistics are averaged over the ranks before the
test. Runs as one process too (``python examples/digits_mpi.py``).
"""
import argparse
import os
import sys
import time

import numpy as np

try:
    from mpi4py import MPI
except ImportError:
    sys.exit("digits_mpi.py needs mpi4py and an MPI: pip install 'fastopt[mpi,examples]'")

import fastopt as fo
from fastopt.distributed import ShardedOptimizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits import MLP, load, progress  # noqa: E402


def on_arena(net):
    """Move the network's parameters (batch-norm scales included) onto one arena."""
    arena = fo.ParameterArena(np.float32, capacity=sum(p.size for p in net.params.values()))
    for name, p in net.params.items():
        net.params[name] = arena.add(name, p.shape, init=p)
    net.bn.gamma, net.bn.beta = net.params["gamma"], net.params["beta"]
    return arena


def run(epochs=40, adamw=False, seed=0, batch_size=64, lr=2e-3, quiet=False,
        comm=MPI.COMM_WORLD):
    """Train on every rank of ``comm``; returns (test accuracy, final train loss)."""
    rank, size = comm.Get_rank(), comm.Get_size()
    quiet = quiet or rank != 0
    X, y, X_test, y_test = load(seed)
    net = MLP(seed=seed)
    arena = on_arena(net)
    opt = ShardedOptimizer(fo.AdamW if adamw else fo.Adam, arena, comm=comm, lr=lr,
                           **(dict(weight_decay=1e-2) if adamw else {}))
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        total = np.zeros(2)       # loss * examples, examples (this rank's)
        for xb, yb in fo.minibatches(X, y, batch_size=batch_size, seed=seed * 1000 + epoch):
            n = len(xb)
            if n // size < 2:                  # batch norm needs two examples on every rank
                continue
            xb, yb = xb[rank::size], yb[rank::size]
            loss, dlogits = fo.softmax_cross_entropy(net.forward(xb), yb)
            # the local mean's grad, weighted so the average over ranks is the batch mean's
            # (the last batch may not split evenly)
            dlogits *= len(xb) * size / n
            grads = net.backward(dlogits)
            opt.step(grads)             # average, update this rank's shard, share
            total += (loss * len(xb), len(xb))
        total = comm.allreduce(total)
        if not quiet:
            progress(epoch, epochs, total[0] / total[1])
    for stat in (net.bn.running_mean, net.bn.running_var):
        stat[...] = comm.allreduce(stat) / size
    test_acc = float(np.mean(net.forward(X_test, training=False).argmax(1) == y_test))
    if not quiet:
        print(f"\n{'AdamW' if adamw else 'Adam'} on {size} rank{'s' * (size > 1)}: test "
              f"accuracy {test_acc:.1%} on {len(X_test)} held-out digits "
              f"({time.perf_counter() - t0:.1f} s, backend {fo.get_backend()})")
    return test_acc, total[0] / total[1]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--adamw", action="store_true", help="AdamW (decoupled weight decay)")
    ap.add_argument("--seed", type=int, default=0, help=">= 0")
    ap.add_argument("--quiet", action="store_true", help="print only the final line")
    args = ap.parse_args()
    if args.epochs < 1:
        ap.error(f"--epochs: at least 1, got {args.epochs}")
    if args.seed < 0:                       # (NumPy's generator takes no negative seed)
        ap.error(f"--seed: at least 0, got {args.seed}")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        sys.exit("digits_mpi.py needs scikit-learn for its data: pip install "
                 "'fastopt[mpi,examples]'")
    acc, loss = run(args.epochs, args.adamw, args.seed, quiet=args.quiet)
    if args.quiet and MPI.COMM_WORLD.Get_rank() == 0:
        print(f"accuracy {acc:.4f} loss {loss:.4f}")
