"""Living beside torch: does either library slow the other down in one process?

Both run thread pools. Each measurement runs in a fresh interpreter, so the import order is real:
- torch's speed (torch.optim.Adam, foreach=False, 1e5 float32) alone, and after fastopt has
  imported and run a parallel kernel on a backend;
- fastopt's speed (fo.ops.adam_step_, 1e5 float32, the parallel path) alone, and after torch has
  imported and run a parallel step.
``python -m fastopt._coexist`` prints the table; the report includes it.

fastopt's arrays lie at the same places in every process. At NumPy's they had not: once a
process frees a large array (torch's step above frees a few), glibc serves arrays like these
from its heap instead of fresh pages, at other offsets within a page, and about one set of four
in three then has a load wait on another array's stores (4K aliasing, _layout.like_lines).
Zen 4, medians of seven fresh processes, us: alone 16.2; after torch's step 17.6; with no
torch at all but a 1.2 MB and a 2.4 MB NumPy array freed first 20.6 (that slowdown); the
arrays at fixed places, 17.1 / 16.1 / 16.0. torch's step, whose arrays and temporaries are its
own allocator's, draws the same lottery with or without fastopt: 112.6 us alone, five processes
each; 113.8 after two NumPy arrays freed (two of five processes at 167-169); 113.6 after
fastopt[numba]'s steps; a median of five reads a ratio of 1.27 in some runs.
"""
import collections
import os
import statistics
import subprocess
import sys

N = 100_000
SNIPPETS = {
    "run_fastopt": (
        "import numpy as np, fastopt as fo\n"
        "fo.set_backend({backend!r})\n"
        "x = np.ones(300_000, np.float32); g = np.ones_like(x)\n"
        "m = np.zeros_like(x); v = np.zeros_like(x)\n"
        "for t in range(1, 5): fo.ops.adam_step_(x, g, m, v, t)\n"),
    "run_torch": (
        "import torch\n"
        "pt = torch.randn(300_000, requires_grad=True); pt.grad = torch.randn(300_000)\n"
        "torch.optim.Adam([pt], foreach=False).step()\n"),
    "time_torch": (
        "import torch, time\n"
        "torch.set_num_threads(torch.get_num_threads())  # as users (and our report) do\n"
        f"p = torch.randn({N}, requires_grad=True); p.grad = torch.randn({N})\n"
        "opt = torch.optim.Adam([p], foreach=False)\n"
        "step = opt.step\n"),
    "time_fastopt": (
        "import numpy as np, fastopt as fo, time\n"
        "fo.set_backend({backend!r})\n"
        # at the same places in a page in every process (_layout.like_lines' slots): where
        # NumPy puts them depends on what the process allocated and freed before
        "from fastopt._layout import SLOT_BYTES, past_line\n"
        f"p, g, m, v = (past_line(({N},), np.float32, 0, page_offset=SLOT_BYTES * k)\n"
        "              for k in range(4))\n"
        "p[:] = 1; g[:] = 1; m[:] = 0; v[:] = 0\n"
        "step = lambda: fo.ops.adam_step_(p, g, m, v, 10)\n"),
}
TIMER = (
    "for _ in range(20): step()\n"
    "ts = []\n"
    "for _ in range(9):\n"
    "    t0 = time.perf_counter()\n"
    "    for _ in range(50): step()\n"
    "    ts.append((time.perf_counter() - t0) / 50)\n"
    "print(sorted(ts)[4])\n")


def _run(*parts, backend=None, threads=None):
    code = "".join(SNIPPETS[p].format(backend=backend) for p in parts) + TIMER
    # the thread count asked for (--threads), as both libraries take it at start-up
    env = None if threads is None else dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr else "failed")
    return float(out.stdout.strip().splitlines()[-1])


REPEATS = 5


def measure(backends, repeats=REPEATS, threads=None):
    """Rows ``(what, alone, beside, ratio)``; ratio > 1 means slowed down. Each time is the
    median of ``repeats`` fresh processes, one of each kind a round, so that the machine's
    drift hits alone and beside alike (the best of a few would hide a slowdown that happens
    only sometimes). Torch alone is one set of processes for every backend's row. One
    process's time varies with where its arrays land: torch's Adam at 1e5 on an Intel Xeon
    VM, twenty processes each, took 102-139 us alone (median 115.6) and 101-139 after
    fastopt[cython]'s steps (median 115.5), where medians of three had read a ratio of 1.13
    in one run (and of five, 1.11 in another). The NumPy reference runs no threads of its
    own and is not measured."""
    backends = [b for b in backends if b != "numpy"]
    times = collections.defaultdict(list)
    for _ in range(repeats):
        times["torch"].append(_run("time_torch", threads=threads))
        for b in backends:
            times["torch", b].append(_run("run_fastopt", "time_torch", backend=b,
                                          threads=threads))
            times["fastopt", b].append(_run("time_fastopt", backend=b, threads=threads))
            times["fastopt", "torch", b].append(_run("run_torch", "time_fastopt", backend=b,
                                                     threads=threads))
    median = {key: statistics.median(ts) for key, ts in times.items()}
    rows = []
    for b in backends:
        for what, alone, beside in (
                (f"torch Adam after fastopt[{b}] ran", median["torch"], median["torch", b]),
                (f"fastopt[{b}] adam after torch ran", median["fastopt", b],
                 median["fastopt", "torch", b])):
            rows.append((what, alone, beside, beside / alone))
    return rows


def report(backends, threads=None):
    try:
        import torch  # noqa: F401
    except ImportError:
        print("  (torch is not installed: nothing to measure)")
        return []
    rows = measure(backends, threads=threads)
    if not rows:
        print("  (no compiled backend among those timed: the NumPy reference runs no threads)")
    for what, alone, beside, ratio in rows:
        print(f"  {what:<38}{alone * 1e6:>9.1f} us alone{beside * 1e6:>9.1f} us beside"
              f"{ratio:>7.2f}x")
    return rows


if __name__ == "__main__":
    from . import _backend
    report(_backend.backends())
