"""The ZeRO-1 sharded Adam step on 1, 2, 3 ranks: one table of its parts and how they scale.

    python bench/bench_mpi.py [--ranks 1,2,3] [--sizes 1e6,1e7] [--dtypes float32]

Runs ``mpiexec -n N python -m fastopt --mpi`` for each N (see fastopt/_bench_mpi.py for what
each part is) and prints, per size and N: the step, its communication (check + exchange +
gather), the fixed-order average, the update, the update times N divided by the one-rank
update (1.00: the update shrinks as 1/N), and the issue's bound: step / (one-rank update / N +
MPI Reduce_scatter + Allgatherv of the same bytes timed alone), which should stay under 1.5.
Needs fastopt[mpi]. Not collected by pytest (the launches take seconds each).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="1,2,3")
    ap.add_argument("--sizes", default="1e6,1e7")
    ap.add_argument("--dtypes", default="float32")
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", HYDRA_LAUNCHER="fork")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(r) for r in args.ranks.split(",")]:
            path = os.path.join(tmp, f"{n}.json")
            subprocess.run(["mpiexec", "-n", str(n), sys.executable, "-m", "fastopt", "--mpi",
                            "--sizes", args.sizes, "--dtypes", args.dtypes, "--json", path],
                           env=env, check=True, stdout=subprocess.DEVNULL)
            with open(path) as f:
                rows += json.load(f)
    one = {(r["elements"], r["dtype"]): r for r in rows if r["ranks"] == 1}
    print("ms, medians on the rank whose step is slowest; x N = update * N / one-rank update; "
          "bound = step / (one-rank update / N + Reduce_scatter + Allgatherv alone)")
    print(f"{'elements':>9} {'dtype':<8}{'ranks':>6}{'step':>9}{'comm':>8}{'average':>9}"
          f"{'update':>8}{'x N':>7}{'alone':>8}{'bound':>7}")
    for r in sorted(rows, key=lambda r: (r["dtype"], r["elements"], r["ranks"])):
        base = one.get((r["elements"], r["dtype"]))
        comm = r["check"] + r["exchange"] + r["gather"]
        alone = r["reduce_scatter alone"] + r["allgather alone"]
        scale = bound = float("nan")
        if base:
            scale = r["update"] * r["ranks"] / base["update"]
            bound = r["step"] / (base["update"] / r["ranks"] + alone)
        print(f"{r['elements']:>9.0e} {r['dtype']:<8}{r['ranks']:>6}{r['step'] * 1e3:>9.2f}"
              f"{comm * 1e3:>8.2f}{r['average'] * 1e3:>9.2f}{r['update'] * 1e3:>8.2f}"
              f"{scale:>7.2f}{alone * 1e3:>8.2f}{bound:>7.2f}")


if __name__ == "__main__":
    main()
