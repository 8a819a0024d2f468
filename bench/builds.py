"""Which Cython build runs the optimizer steps fastest on this CPU? Every build present that
the CPU runs (``optim``: x86-64-v3; ``optim_avx512``: AVX-512 with 256-bit vectors and part of
the float32 square roots on the FMA units; ``optim_avx512_zmm``: 512-bit vectors), each kernel
through ``fastopt.ops`` with its default hyper-parameters, float32, its arrays on lines as the
optimizers place them (or, with ``--offsets``, 0, 16, 32 and 48 bytes past one, as NumPy's
allocations fall). Seven rounds interleave the builds; prints per build the median over the
rounds of each round's median (ns/element) and the fastest round. fastopt._kernels loads the
build fo_common.h's fo_cpu_prefers_512bit_steps picks: this is the measurement behind it.

    python bench/builds.py --threads 1 --sizes 1e5,1e6

Run from a checkout (it builds its backends with the tests' helpers, tests/conftest.py).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import fastopt as fo  # noqa: E402
from conftest import cython_builds  # noqa: E402
from fastopt import _backend  # noqa: E402
from fastopt._layout import past_line  # noqa: E402
from kernel_specs import SPECS, valid_arrays  # noqa: E402

DEFAULTS = ("step", "mu_product", "lr", "beta", "betas")    # HYPER's keys the kernels need
KERNELS = ("sgd", "adam", "rmsprop", "adagrad", "adadelta", "nadam", "radam", "lion")
ROUNDS = 7


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", default="1e5,1e6")
    parser.add_argument("--offsets", action="store_true",
                        help="arrays 0, 16, 32 and 48 bytes past a line (NumPy's)")
    args = parser.parse_args()
    builds = cython_builds()
    if not builds:
        sys.exit("the compiled extension is not built here")
    names = [b.package.__name__.rsplit(".", 1)[-1] for b in builds]
    fo.set_backend("cython")
    for n in (int(float(s)) for s in args.sizes.split(",")):
        calls = max(5, int(1e7 // n))
        for name in KERNELS:
            spec = SPECS[name]
            hyper = {k: v for k, v in spec.hyper.items() if k in DEFAULTS}
            arrays = []
            for a in valid_arrays(spec, (n,), np.float32, np.random.default_rng(0)):
                b = past_line((n,), np.float32, 16 * len(arrays) % 64 if args.offsets else 0)
                b[...] = a
                arrays.append(b)
            per_round = {nm: [] for nm in names}
            for _ in range(ROUNDS):
                for nm, namespace in zip(names, builds):
                    _backend._loaded["cython"] = _backend.active = namespace
                    namespace.set_num_threads(args.threads)
                    for _ in range(3):
                        spec.single(arrays, **hyper)
                    times = []
                    for _ in range(calls):
                        start = time.perf_counter()
                        spec.single(arrays, **hyper)
                        times.append(time.perf_counter() - start)
                    per_round[nm].append(statistics.median(times) / n * 1e9)
            print(f"threads={args.threads} n={n:.0e} {name:9s} " + "  ".join(
                f"{nm} {statistics.median(r):.3f} (fastest {min(r):.3f})"
                for nm, r in per_round.items()), flush=True)


if __name__ == "__main__":
    main()
