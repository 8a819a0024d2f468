"""Does the page size of Adam's arrays decide its speed? Adam float32 (``fo.ops.adam_step_``)
on three sets of arrays in one process, timed in alternating rounds: NumPy's own allocations
(NumPy asks for transparent huge pages on large ones, but its blocks are not 2 MiB-aligned, so
most of their pages stay 4 KiB), 2 MiB-aligned memory with ``madvise(MADV_HUGEPAGE)``, and the
same with ``MADV_NOHUGEPAGE``. Four 4 MB arrays span ~4,000 4 KiB pages, more than a data TLB's
first level holds. Prints the median time per step and how many kB of the process are huge pages.

    python bench/hugepages.py --sizes 1e6,1e7 --threads 1,2

Needs Linux (``/proc/self/smaps_rollup``) with transparent huge pages in ``madvise`` or
``always`` mode (``/sys/kernel/mm/transparent_hugepage/enabled``).
"""
import argparse
import mmap
import re
import statistics
import time

import numpy as np

import fastopt as fo

HUGE = 2 << 20


def huge_kb() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return int(re.search(r"AnonHugePages:\s+(\d+)", f.read()).group(1))


def array(n: int, pages: str, keep: list) -> np.ndarray:
    """n float32 of NumPy's allocation ("numpy"), or 2 MiB-aligned private anonymous memory
    advised to use huge pages ("huge") or not ("4k")."""
    if pages == "numpy":
        return np.empty(n, np.float32)
    region = mmap.mmap(-1, 4 * n + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE if pages == "huge" else mmap.MADV_NOHUGEPAGE)
    keep.append(region)
    raw = np.frombuffer(region, np.uint8)
    start = -raw.ctypes.data % HUGE
    return raw[start:start + 4 * n].view(np.float32)


def race(n: int, threads: int, rounds: int) -> None:
    fo.set_num_threads(threads)
    rng = np.random.default_rng(0)
    keep: list = []
    sets = {}
    for pages in ("numpy", "huge", "4k"):
        before = huge_kb()
        p, g, m, v = (array(n, pages, keep) for _ in range(4))
        p[...], g[...], m[...], v[...] = rng.standard_normal(n), rng.standard_normal(n), 0, 0
        sets[pages] = (p, g, m, v), huge_kb() - before
    calls = max(3, int(2e7 // n))
    times = {pages: [] for pages in sets}
    for r in range(rounds):
        for pages, ((p, g, m, v), _) in sets.items():
            for timed in (False, True):         # an untimed batch first, as python -m fastopt
                t = time.perf_counter()
                for _ in range(calls):
                    fo.ops.adam_step_(p, g, m, v, lr=1e-3, step=r + 1)
                if timed:
                    times[pages].append((time.perf_counter() - t) / calls)
    for pages, ((p, *_), kb) in sets.items():
        med = statistics.median(times[pages])
        print(f"n={n:.0e} threads={threads} {pages:>5}: {med * 1e6:9.1f} us "
              f"({med * 1e9 / n * threads:.3f} ns/element per thread), huge pages {kb} kB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e6,1e7")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(f"backend {fo.get_backend()}, THP:",
          open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip())
    for n in (int(float(s)) for s in args.sizes.split(",")):
        for threads in (int(t) for t in args.threads.split(",")):
            race(n, threads, args.rounds)


if __name__ == "__main__":
    main()
