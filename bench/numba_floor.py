"""What bounds the numba backend against the Cython one at 1e5 elements: its compiled kernels
called directly, with no Python around them, against the Cython backend's whole optimizer
step. Per kernel (Adam and plain SGD, float32), microseconds a call:

- ``cython step``: ``fo.Adam/SGD(...).step([g])`` on the Cython backend (validation, the
  plan, the compiled list call, its threads);
- ``numba kernel``: the numba backend's compiled loop called directly on aligned flat arrays,
  serially (``span``) and split in one share per thread (``parallel``, Numba's oneTBB layer);
- ``numba step``: the same optimizer step on the numba backend (its validation and launch are
  Python: ``fastopt._numba._common``).

Each figure is the median over alternating rounds (``--rounds``) of a batch's mean, each round
timing a batch of calls of every row.

The ratios over ``cython step`` say how close the numba backend can come: the kernel alone,
before any checking of the arrays, is the floor.

    python bench/numba_floor.py --size 1e5 --threads 2
"""
import argparse
import statistics
import time

import numpy as np

import fastopt as fo


def batch_us(fn, calls=300):
    """Microseconds a call of ``fn``: the mean of a batch of ``calls``, after as many untimed."""
    for _ in range(calls):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def lined(n):
    """A float32 array of n elements starting a 64-byte line (as the optimizers' state)."""
    room = np.empty(4 * n + 64, np.uint8)
    skip = -room.ctypes.data % 64
    return room[skip:skip + 4 * n].view(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=1e5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    n, threads = int(args.size), args.threads
    fo.set_num_threads(threads)
    import numba

    from fastopt._numba import _common, optim

    p, g, m, v = (lined(n) for _ in range(4))
    for a in (p, g, m, v):
        a[:] = np.random.default_rng(0).standard_normal(n)
    none = np.empty(0, np.float32)
    adam = optim._pack_adam(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                            step_size=1e-3, bias_correction2=0.5, grad_scale=1.0,
                            decoupled=False, maximize=False, eps_inside_sqrt=False)
    sgd = optim._pack_sgd(lr=1e-3, weight_decay=0.0, momentum=0.0, dampening=0.0,
                          nesterov=False, maximize=False, first_step=False)
    share = -(-n // threads)

    fns = {}
    for name, make, span, parallel, arrays, packed in (
            ("adam", fo.Adam, optim._adam_span, optim._adam_parallel, (p, g, m, v, none), adam),
            ("sgd", fo.SGD, optim._sgd_span, optim._sgd_parallel, (p, g, none), sgd)):
        with fo.use_backend("cython"):
            cython_opt = make([p], lr=1e-3)
        with fo.use_backend("numba"):
            numba_opt = make([p], lr=1e-3)
        fns[name] = {
            "cython step": lambda o=cython_opt: o.step([g]),
            "numba kernel, span": lambda f=span, a=arrays, k=packed: f(*a, k),
            "numba kernel, parallel": lambda f=parallel, a=arrays, k=packed: f(threads, share,
                                                                              *a, k),
            "numba step": lambda o=numba_opt: o.step([g])}
    # alternating rounds, each a batch of every row; the Cython steps after a pause, in which
    # Numba's oneTBB workers, spinning for work after a numba call, go to sleep (timed right
    # after one, the Cython helper found its core taken: Adam 31 against 18 us)
    fo.SGD([p], lr=1e-3).step([g])
    with fo.use_backend("numba"):
        fo.SGD([p], lr=1e-3).step([g])      # (starts Numba's pool as the backend does)
        numba.set_num_threads(threads)
    times = {name: {label: [] for label in row} for name, row in fns.items()}
    for _ in range(args.rounds):
        for name, row in fns.items():
            time.sleep(0.05)
            times[name]["cython step"].append(batch_us(row["cython step"]))
            with fo.use_backend("numba"):
                for label, fn in row.items():
                    if label != "cython step":
                        times[name][label].append(batch_us(fn))
    rows = {name: {label: statistics.median(t) for label, t in row.items()}
            for name, row in times.items()}
    print(f"float32, {n} elements, {threads} threads; us (x the Cython step)")
    for name, row in rows.items():
        base = row["cython step"]
        print(f"  {name:5s} " + "  ".join(f"{label} {t:.1f} ({t / base:.2f}x)"
                                         for label, t in row.items()))


if __name__ == "__main__":
    main()
