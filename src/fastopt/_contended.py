"""``python -m fastopt --contended``: kernel calls while another process keeps one core busy.

A user on a shared machine, in a notebook beside another job, or in a process whose other
threads are busy, must never see fastopt slower than NumPy. This times Adam (float32) per call,
with a busy loop pinned to one of this process's CPUs, for the NumPy reference, fastopt on one
thread and fastopt on every thread, and reports medians and the slowest 5% of calls: a thread
pool that waits for a helper the scheduler is not running shows in the tail, not the median.
"""
import contextlib
import os
import subprocess
import sys
import time

import numpy as np

from . import _backend, _bench, ops

SIZES = (1_000, 100_000, 1_000_000)
CALLS = {1_000: 2000, 100_000: 300, 1_000_000: 60}   # per contender, a few seconds in all


def calls_for(n):
    """Calls per contender at ``n`` elements: CALLS's, or about as long at other sizes."""
    return CALLS.get(n) or min(2000, max(12, int(6e7 // n)))


@contextlib.contextmanager
def busy_core():
    """A process spinning on the last CPU this process may use (None if there is only one)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = list(range(os.cpu_count() or 1))
    if len(cpus) < 2:
        yield None
        return
    # it spins only while this process lives: killed by a signal that skips the ``finally``
    # below (SIGTERM, SIGHUP, SIGKILL), this process left it spinning forever, holding a core
    # and the report's stdout (a reader of the pipe waited on it); Ctrl-C, sent to the whole
    # process group, is this process's to handle (the busy loop had printed a traceback too)
    code = (f"import os, signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            f"os.sched_setaffinity(0, {{{cpus[-1]}}})\n"
            f"while os.getppid() == {os.getpid()}:\n    for _ in range(100_000):\n"
            f"        pass\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.2)                       # let it start spinning
        yield cpus[-1]
    finally:
        proc.kill()
        proc.wait()


def _adam_call(n):
    """One Adam step over fresh arrays of ``n`` float32 a call, on the current backend."""
    p, g, state = _bench.CASES["adam"].arrays(n, np.float32)    # (on cache lines)
    m, v = state["exp_avg"], state["exp_avg_sq"]
    step = [0]

    def call():
        step[0] += 1
        ops.adam_step_(p, g, m, v, step[0], lr=1e-3)
    return call


def per_call_times(call, calls, threads, backend):
    """Seconds of each of ``calls`` calls, after warm-up, on ``threads`` threads of
    ``backend`` (chosen around the calls, not inside the timed ones, as the report's other
    rows do: a ``use_backend`` per call had added its own ~1 us to each Cython call of ~1 us
    at 1e3)."""
    with _backend.use_backend(backend), _backend.use_num_threads(threads):
        for _ in range(3):
            call()
        out = np.empty(calls)
        for i in range(calls):
            t0 = time.perf_counter()
            call()
            out[i] = time.perf_counter() - t0
        return out


def rows(backend=None, threads=None, sizes=SIZES, rounds=3):
    """One row per size and contender (``numpy``, ``<backend> 1T``, ``<backend> NT``): median
    and 95th-percentile seconds per call, measured in interleaved rounds beside a busy core."""
    backend = backend or _backend.backends()[0]
    threads = threads or _backend.get_num_threads()
    out = []
    with busy_core() as cpu:
        for n in sizes:
            contenders = {"numpy": ("numpy", 1), f"{backend} 1T": (backend, 1),
                          f"{backend} {threads}T": (backend, threads)}
            calls = {label: _adam_call(n) for label in contenders}
            samples = {label: [] for label in contenders}
            order = list(contenders.items())
            for r in range(rounds):
                for label, (b, t) in _bench.rotated(order, r):
                    samples[label].append(per_call_times(
                        calls[label], max(1, calls_for(n) // rounds), t, b))
            stats = {label: (float(np.median(np.concatenate(xs))),
                             float(np.percentile(np.concatenate(xs), 95)))
                     for label, xs in samples.items()}
            numpy_median = stats["numpy"][0]
            own_1t = stats[f"{backend} 1T"][0]
            for label, (median, p95) in stats.items():
                out.append(dict(size=n, contender=label, median=median, p95=p95,
                                x_own_1t=median / own_1t, x_numpy=median / numpy_median,
                                p95_x_numpy=p95 / numpy_median, busy_cpu=cpu,
                                calls=sum(map(len, samples[label]))))
    return out


def print_rows(table, fmt_t, backend):
    """The section's heading and :func:`rows`' table, timed on ``backend``. Where this process
    may run on one CPU only no busy process is started, and the heading says so (it had
    claimed that one held a core)."""
    print("\ncontended: Adam float32 per call "
          + ("while a busy process holds one core" if table and table[0]["busy_cpu"] is not None
             else "UNCONTENDED: this process may run on one CPU only, so no busy process was "
                  "started")
          + f" (x own 1T: median over {backend} on one thread in the same conditions; x numpy: "
            "over the reference's median)")
    print(f"  {'size':>10}  {'contender':<12}{'median':>11}{'p95':>11}{'x own 1T':>10}"
          f"{'x numpy':>9}{'p95 x numpy':>13}{'calls':>7}")
    for r in table:
        print(f"  {_bench.size_label(r['size']):>10}  {r['contender']:<12}{fmt_t(r['median']):>11}"
              f" {fmt_t(r['p95']):>10} {r['x_own_1t']:>9.2f} {r['x_numpy']:>8.2f}"
              f" {r['p95_x_numpy']:>12.2f} {r['calls']:>6}")
