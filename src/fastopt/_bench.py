"""Benchmark cases shared by ``python -m fastopt`` and the ``bench/`` pytest-benchmark suites.

A case is one fo.ops kernel with fixed hyper-parameters: the state arrays it keeps, a step
function, the torch.optim peer that computes the same update (where torch has one), and the
arrays it streams (for the bytes moved and the roofline). Timing is interleaved: each round times
every contender of a row once, and the median over rounds (over every call, for calls of 20 us
or more) is kept, so the machine's drift hits all contenders alike.
"""
import contextlib
import dataclasses
import os
import platform
import statistics
import subprocess
import time

import numpy as np

from . import _backend, _registry, _threads, ops
from ._layout import SLOT_BYTES, past_line


def size_label(n):
    """An element count as the report prints it: 1e+05 where one digit says it exactly, else
    the count itself (one digit had printed 1500 and 2500 both as 2e+03)."""
    label = f"{n:.0e}"
    return label if float(label) == n else str(int(n))


def on_lines(a, slot=None):
    """A copy of ``a`` whose first element starts a 64-byte cache line (a view of an allocation
    of its own), as torch's CPU allocator places a tensor and DeepSpeedCPUAdam its state.

    Every contender of a row then reads and writes whole lines. NumPy places an array 16 bytes
    past a line boundary, or at 0, 32 or 48 when the allocation comes from the heap (which
    glibc uses for arrays up to 32 MB once a large temporary was freed), so the arrays of one
    step lie at different offsets from a line, by the process's history: Adam's 512-bit loads
    and stores then split lines on every array but the one the kernels align to. Where the
    arrays sit in L3 that nearly doubled a step's time (Adam float32 at 1e6 elements, one Zen
    5 core, a C loop, offsets 16/32/48/0 as NumPy placed them against all 0: 0.25-0.26
    against 0.14 ns/element, the roofline stream 0.23 against 0.14; bench/misalign.c), and
    this Adam row, one thread, measured 1.08-1.92x its roofline from one set of fresh arrays
    to the next (three in one process; on lines 1.05-1.16).

    A ``slot`` also places a large array that many times SLOT_BYTES into a 4 KiB page
    (fastopt._layout.like_lines says why: NumPy's places made a step's arrays wait on each
    other's stores in about one set of arrays in three, by up to 1.4x), where fastopt's
    optimizers and ParameterArena put their state and grads beside a param."""
    out = past_line(a.shape, a.dtype, 0,
                    page_offset=None if slot is None else SLOT_BYTES * slot)
    out[...] = a
    return out


def place_state(opt, params):
    """Move each state tensor of ``opt`` (torch.optim's, DeepSpeedCPUAdam's) shaped like its
    parameter onto an array at the benchmark's slots, its values kept: a peer's state then
    lies where fastopt's does beside the same param and grad (torch's allocator placed it by
    the process's history, which put a pair of a torch row's arrays in the 4K-aliasing window
    in 8 of 10 sets of Adam's at 1e5)."""
    import torch
    for p in params:
        state = opt.state[p]
        tensors = [k for k, v in state.items() if torch.is_tensor(v) and v.shape == p.shape]
        for slot, key in enumerate(tensors, start=2):
            state[key] = torch.from_numpy(on_lines(state[key].numpy(), slot=slot))


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    state: tuple            # the state arrays (the registry's names), initialised to zero
    step: object            # step(param, grad, state_dict, t) using fo.ops
    torch_peer: tuple = ()  # (torch.optim class name, kwargs) computing the same update
    kernel: str = None      # the registry kernel it runs, if not ``name``

    @property
    def registry_kernel(self):
        return _registry.get(self.kernel or self.name)

    def arrays(self, n, dtype, seed=0):
        """Fresh param, grad and state arrays of ``n`` elements, each starting a cache line
        and taking its own slot in the page (:func:`on_lines`)."""
        rng = np.random.default_rng(seed)
        p = on_lines(rng.standard_normal(n).astype(dtype), slot=0)
        g = on_lines(rng.standard_normal(n).astype(dtype), slot=1)
        return p, g, {k: on_lines(np.zeros(n, dtype), slot=2 + i)
                      for i, k in enumerate(self.state)}

    def tensors(self, n, dtype):
        """:meth:`arrays`' param and grad as torch tensors over them (for a peer, which
        places its state with :func:`place_state` after its first step)."""
        import torch
        p, g, _ = self.arrays(n, dtype)
        pt = torch.from_numpy(p).requires_grad_()
        pt.grad = torch.from_numpy(g)
        return pt

    def n_streams(self):
        """Arrays read (param, grad, state) and written (all but the grad) per element."""
        k = 2 + len(self.state)
        return k, k - 1


CASES = {c.name: c for c in [
    Case("sgd", (), lambda p, g, s, t: ops.sgd_step_(p, g, lr=0.01),
         ("SGD", dict(lr=0.01))),
    Case("sgd_momentum", ("momentum_buffer",),
         lambda p, g, s, t: ops.sgd_step_(p, g, s["momentum_buffer"], lr=0.01, momentum=0.9,
                                          first_step=t == 1),
         ("SGD", dict(lr=0.01, momentum=0.9)), kernel="sgd"),
    Case("momentum", ("velocity",),
         lambda p, g, s, t: ops.momentum_step_(p, g, s["velocity"], lr=0.01, beta=0.9)),
    Case("rmsprop", ("square_avg",),
         lambda p, g, s, t: ops.rmsprop_step_(p, g, s["square_avg"], lr=0.01),
         ("RMSprop", dict(lr=0.01))),
    Case("adagrad", ("state_sum",),
         lambda p, g, s, t: ops.adagrad_step_(p, g, s["state_sum"], t, lr=0.01),
         ("Adagrad", dict(lr=0.01))),
    Case("adam", ("exp_avg", "exp_avg_sq"),
         lambda p, g, s, t: ops.adam_step_(p, g, s["exp_avg"], s["exp_avg_sq"], t, lr=1e-3),
         ("Adam", dict(lr=1e-3))),
    Case("adamw", ("exp_avg", "exp_avg_sq"),
         lambda p, g, s, t: ops.adamw_step_(p, g, s["exp_avg"], s["exp_avg_sq"], t, lr=1e-3),
         ("AdamW", dict(lr=1e-3)), kernel="adam"),
    Case("ewa", (), lambda p, g, s, t: ops.ewa_(p, g, 0.9)),   # avg, x: the param, the grad
    Case("adadelta", ("square_avg", "acc_delta"),
         lambda p, g, s, t: ops.adadelta_step_(p, g, s["square_avg"], s["acc_delta"]),
         ("Adadelta", {})),
    Case("adamax", ("exp_avg", "exp_inf"),
         lambda p, g, s, t: ops.adamax_step_(p, g, s["exp_avg"], s["exp_inf"], t),
         ("Adamax", {})),
    Case("nadam", ("exp_avg", "exp_avg_sq"),
         lambda p, g, s, t: ops.nadam_step_(p, g, s["exp_avg"], s["exp_avg_sq"], t, 0.5),
         ("NAdam", {})),
    Case("radam", ("exp_avg", "exp_avg_sq"),
         lambda p, g, s, t: ops.radam_step_(p, g, s["exp_avg"], s["exp_avg_sq"], t),
         ("RAdam", {})),
    Case("lion", ("exp_avg",), lambda p, g, s, t: ops.lion_step_(p, g, s["exp_avg"], lr=1e-4)),
]}


# ------------------------------------------------------------------------------ equivalence
def check_equivalence(case, backend, dtype, n=1031, steps=7):
    """Max relative error of ``backend`` vs the NumPy reference after ``steps`` steps of
    ``case`` on a strided (non-contiguous) param, and whether it is within tolerance."""
    results = []
    for name in ("numpy", backend):
        p, g, state = case.arrays(2 * n, dtype)
        p = p[::2]                          # exercise the non-contiguous path too
        g = g[:n]
        state = {k: v[:n] for k, v in state.items()}
        rng = np.random.default_rng(1)
        with _backend.use_backend(name):
            for t in range(1, steps + 1):
                case.step(p, (g * rng.standard_normal(n)).astype(dtype), state, t)
        results.append([p] + [state[k] for k in case.state])
    err = max((_rel_err(a, b) for a, b in zip(*results)), default=0.0)
    tol = 1e-12 if np.dtype(dtype) == np.float64 else 5e-7
    return err, err <= tol


def _rel_err(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    return float(np.max(diff / np.maximum(np.abs(b), np.finfo(np.float64).tiny), initial=0.0))


# ----------------------------------------------------------------------------------- timing
def stream_kernel(name="stream"):
    """The compiled streaming kernel that defines the roofline (``stream``: in place, as the
    optimizer steps; ``stream_to``: into another array, as the layers), or None without the
    extension."""
    try:
        from ._kernels import stream
    except ImportError:
        return None
    return getattr(stream, name)


PEERS = ("torch", "torch-foreach", "torch-fused", "deepspeed")


def contenders(case, n, dtype, backends, peers=True, only=None):
    """``{label: zero-argument callable}`` for one row: every backend, the roofline stream,
    and the torch peers (foreach=False, foreach=True, fused=True where torch has them).
    ``only`` restricts it to one label (the pytest-benchmark suites time one per test)."""
    out = {}
    if only is not None:
        backends = [b for b in backends if b == only]
        peers = peers and only in PEERS
    for name in backends:
        p, g, state = case.arrays(n, dtype)
        counter = [0]

        def run(p=p, g=g, state=state, counter=counter, name=name):
            counter[0] += 1
            case.step(p, g, state, counter[0])
        run.backend = name                   # time_row switches to it around each batch
        out[name] = run
    stream = stream_kernel() if only in (None, "roofline") else None
    if stream is not None:
        p, g, state = case.arrays(n, dtype)
        arrays = [p, g] + list(state.values())
        if len(arrays) < 2:
            arrays.append(on_lines(np.zeros_like(p), slot=2))
        out["roofline"] = lambda: stream(*arrays)
    if peers and case.torch_peer:
        out.update(_torch_peers(case, n, dtype))
    return out if only is None else {k: v for k, v in out.items() if k == only}


def _torch_peers(case, n, dtype):
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(_backend.get_num_threads())
    cls_name, kwargs = case.torch_peer
    cls = getattr(torch.optim, cls_name)
    out = {}
    for label, extra in (("torch", dict(foreach=False)), ("torch-foreach", dict(foreach=True)),
                         ("torch-fused", dict(fused=True))):
        pt = case.tensors(n, dtype)
        try:
            opt = cls([pt], **kwargs, **extra)
            opt.step()
        except (RuntimeError, TypeError, ValueError):
            continue            # this torch has no such implementation for this optimizer
        place_state(opt, [pt])
        out[label] = opt.step
    if case.name == "adam":
        out.update(_deepspeed_peer(case, n, dtype))
    return out


_CPU_INFO = []      # py-cpuinfo's answer, asked once a process (_cpu_info_once)


@contextlib.contextmanager
def _cpu_info_once():
    """Around a DeepSpeedCPUAdam's construction: its constructor asks py-cpuinfo for the
    CPU's vendor, which runs a subprocess each time (1.2 s on the Zen 4 VM; a report makes a
    dozen of them), so the first answer serves the others."""
    try:
        import cpuinfo
    except ImportError:
        yield
        return
    ask = cpuinfo.get_cpu_info
    if not _CPU_INFO:
        _CPU_INFO.append(ask())
    cpuinfo.get_cpu_info = lambda: dict(_CPU_INFO[0])
    try:
        yield
    finally:
        cpuinfo.get_cpu_info = ask


def _deepspeed_peer(case, n, dtype):
    """DeepSpeedCPUAdam, when deepspeed is installed (it compiles its CPU op on first use)."""
    if np.dtype(dtype) != np.float32 or os.environ.get("FASTOPT_NO_DEEPSPEED"):
        return {}
    try:
        import torch
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        pt = case.tensors(n, dtype)
        with _cpu_info_once():
            opt = DeepSpeedCPUAdam([pt], lr=1e-3, adamw_mode=False)
        opt.step()
        place_state(opt, [pt])
    except Exception:   # absent, or its op failed to build: simply not a contender here
        return {}
    return {"deepspeed": opt.step}


def settle(limit=0.05):
    """Wait (at most ``limit`` seconds) until no other thread of this process is running, so
    that every contender starts on a quiet machine. torch's and DeepSpeed's OpenMP workers spin
    for about 10 ms after each parallel region (GNU OpenMP's default ``GOMP_SPINCOUNT``); the
    contender timed next would share a core with them and run at one thread's speed."""
    if _threads.wait_for_other_threads(limit) is None:   # no procfs: wait a spin's length
        time.sleep(0.02)


# Each round's untimed batch lasts at least this long: after settle() the first few ms of calls
# run slow, the second core's most (per-call medians by time since the start of a contender's
# calls, 6 rounds, 2-vCPU Zen 2 VM, rows of five contenders: fastopt SGD 1e5 13.3 us in the
# first ms, 10.1 in the third, 8.9 after 8 ms, the roofline 9.0 -> 8.2; Adam 1e6 809 -> 573 ->
# 548 us, the roofline 751 -> 501 -> 473). With an untimed batch of ~1 ms that SGD row read
# 1.41-1.46x its roofline, with 5 ms 1.11-1.18 (three alternated rows each).
WARM_SECONDS = 5e-3

# ... and makes WARM_CALLS calls at least, unless they have lasted WARM_CAP: a call over a few MB
# runs slow the first few times after other work, by calls rather than by time (2-vCPU Intel
# VM, 2 threads, after 80 ms asleep, medians of 8 rounds: batch norm forward with features as
# rows at (1024, 4096), 32 MB moved, 2.37 1.95 1.33 1.01 0.91 0.93 ms for calls 1-6; at (256,
# 4096) 0.89 0.58 0.34 0.29 0.30 ms; the same after a torch call, a NumPy one or a pass over
# 400 MB instead of the sleep). With the untimed batch 5 ms long, the contender timed after
# torch's 80 ms call in that row read 4.0 ms against 2.75 alone.
WARM_CALLS = 5
WARM_CAP = 0.2

# Rows whose every contender's calls last at least this long are timed one call at a time (the
# clock's own cost, ~0.1 us, is then below 1% of a call); other rows by the batch.
PER_CALL_MIN = 2e-5


def rotated(order, k):
    """``order`` (a list) started at its item ``k`` (modulo its length): round ``k`` of a row
    times its contenders so, so that none always follows the same one (the first backend had
    always followed the last round's torch call)."""
    k = k % len(order) if order else 0      # (an empty row: nothing to time)
    return order[k:] + order[:k]


def time_row(fns, rounds=5, target=1e-3, exact_rounds=False):
    """Interleaved timing: each round times every contender once (a batch of calls lasting about
    ``target`` seconds, started after :func:`settle` and an untimed batch as long; unless
    ``exact_rounds``, rows where one call takes longer than 10 ``target`` get at most 3 rounds:
    the 1e7 rows, not the 1e6 ones, whose NumPy reference takes a few ms and which had 3 rounds of
    ~6 calls each for all their samples; the untimed batch lasts WARM_SECONDS and WARM_CALLS
    calls at least, or WARM_CAP). The untimed
    batch keeps out what the first calls after other work cost, which is the machine's state more
    than the contender's: on a 2-vCPU cloud VM, 10 ms of other work left a fastopt.torch step on 1e3
    elements at 120 us for its first call and 9.5 us after, torch's ``add_`` on 1e3 floats at 111
    and 3.9 us. In the Adam 1e6 row (8 contenders, 16 MB of arrays each, Zen 5 VM) one untimed call
    was not enough: the six calls after it took, by position (medians over 8 rounds), 340 282 240
    197 156 185 us for fastopt, 298 149 134 132 118 115 for the roofline, 441 259 208 181 182 167
    for DeepSpeedCPUAdam (what the other contenders leave behind: their arrays in L3, idle vCPUs
    after the settle; not pinned down further); after six untimed calls 166 147 145 141 137 141, 138
    120 129 115 109 109 and 181 171 169 169 168 166. (bench/test_bench_spaced.py times steps after
    other work.)
    In a row whose contenders' calls all last ``PER_CALL_MIN`` or more, each call of a batch
    is timed alone, and a median is over every such call of every round: a burst of other
    work (the VM's other tenants, a pool helper descheduled, after which the pool runs calls
    on the caller alone for a while) then spoils the calls it hits, not whole batches. On this
    2-vCPU VM, six rows of Adam at 1e6 elements against its roofline, 2 threads, measured
    0.55-1.98x from batch means and 0.92-1.15x from single calls, alternated in the same
    minutes. A row with a shorter contender is timed per batch (the clock's cost), every
    contender of it: each ratio in a row compares one statistic (timed each by its own length,
    a contender of 19 us beside one of 21 had its bursts kept in its batch means and the
    other's dropped). A contender with a ``backend`` attribute runs its batches on that
    backend. Each round starts one contender later than the one before. Returns ``{label:
    (median, spread)}`` in seconds per call, spread being the interquartile range over the
    samples (batches, or calls; quartiles interpolated between them, so over 3 samples half
    their range) relative to the median."""
    reps, shortest, slowest = {}, float("inf"), 0.0
    for label, fn in fns.items():
        with _backend.use_backend(getattr(fn, "backend", _backend.get_backend())):
            fn()                                   # warm-up (numba compiles, pages fault in)
            single = float("inf")
            for _ in range(3):          # the fastest of 3: a batch's length, not a cold call's
                t0 = time.perf_counter()
                fn()
                single = min(single, max(time.perf_counter() - t0, 1e-7))
        reps[label] = max(1, min(int(target / single), 100_000))
        shortest, slowest = min(shortest, single), max(slowest, single)
    each_call = shortest >= PER_CALL_MIN     # (an empty row: nothing to time)
    if slowest > 10 * target and not exact_rounds:
        rounds = min(rounds, 3)
    samples = {label: [] for label in fns}
    clock = time.perf_counter
    order = list(fns.items())
    for round_ in range(rounds):
        for label, fn in rotated(order, round_):
            r, xs = reps[label], samples[label]
            settle()
            with _backend.use_backend(getattr(fn, "backend", _backend.get_backend())):
                warm_start, calls = clock(), 0
                # an untimed batch first (see above): WARM_SECONDS, and WARM_CALLS calls or
                # WARM_CAP, at least (`while True` and a break: a `while <condition>` loop's
                # jump back lies outside the `with` on CPython 3.13, and Ctrl-C there left
                # the backend switched: cpython#130279, see _multi._each_part)
                while True:
                    if not (calls < r or clock() - warm_start < WARM_SECONDS
                            or calls < WARM_CALLS and clock() - warm_start < WARM_CAP):
                        break
                    fn()
                    calls += 1
                if each_call:
                    for _ in range(r):
                        t0 = clock()
                        fn()
                        xs.append(clock() - t0)
                else:
                    t0 = clock()
                    for _ in range(r):
                        fn()
                    xs.append((clock() - t0) / r)
    out = {}
    for label, xs in samples.items():
        med = statistics.median(xs)
        q = (statistics.quantiles(xs, n=4, method="inclusive") if len(xs) >= 2
             else [med, med, med])
        out[label] = (med, (q[2] - q[0]) / med if med else 0.0)
    return out


SINGLE_THREAD_SIZES = (100_000, 1_000_000)
SINGLE_THREAD_PEERS = ("torch-fused", "deepspeed")


def single_thread_rows(kernels, backends, sizes=SINGLE_THREAD_SIZES, rounds=5, peers=True,
                       exact_rounds=False):
    """Nanoseconds per element on one thread, float32: the compiled backends, torch
    ``fused=True`` and DeepSpeedCPUAdam (torch and its OpenMP on one thread too), and the
    roofline stream. What a kernel costs per element, apart from how threads share it out."""
    compiled = [b for b in backends if b != "numpy"]
    out = []
    with _backend.use_num_threads(1):    # the torch peers take their thread count from this
        for name in kernels:
            for n in sizes:
                fns = contenders(CASES[name], n, np.float32, compiled, peers=peers)
                fns = {k: f for k, f in fns.items()
                       if k in compiled or k == "roofline" or k in SINGLE_THREAD_PEERS}
                for label, (t, spread) in time_row(fns, rounds=rounds,
                                                   exact_rounds=exact_rounds).items():
                    out.append(dict(kernel=name, size=n, contender=label, time=t,
                                    spread=spread, ns_per_element=t / n * 1e9))
    return out


# ---------------------------------------------------------------------------------- machine
def source_commit():
    """The git commit fastopt runs from, "+" if its files differ from it, or None (installed,
    or no git): so that a run's JSON says which code it timed."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}    # (GIT_DIR...)

    def git(*args):
        return subprocess.run(["git", "-C", here, *args], capture_output=True, text=True,
                              timeout=10, env=env)
    try:
        # fastopt's own repository, not one it is installed inside (a .venv in a project)
        if git("ls-files", "--error-unmatch", os.path.basename(__file__)).returncode != 0:
            return None
        head = git("rev-parse", "--short", "HEAD")
        changed = git("diff", "--quiet", "HEAD", "--", ".").returncode != 0
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+" if changed else "") if head.returncode == 0 else None


def machine(peers=True):
    """What the header prints: CPU, cores, threads, library versions (torch and deepspeed only
    with ``peers``: importing them takes seconds), build flags."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from . import __version__
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": _backend.get_num_threads(),
            "fastopt": __version__, "commit": source_commit(),
            "python": platform.python_version(), "numpy": np.__version__}
    for mod in ("numba", "Cython") + (("torch", "deepspeed") if peers else ()):
        try:
            info[mod.lower()] = __import__(mod).__version__
        except Exception:
            pass
    try:
        from . import _kernels
        info["cython_build"] = f"{_kernels._optim.__name__.rsplit('.', 1)[1]}: " \
                               f"{_kernels.BUILD_FLAGS}"
    except ImportError:
        info["cython_build"] = _backend.unavailable_reason("cython")
    return info


# ----------------------------------------------------------------------- parameter groups
GROUPS = {
    "1x1000": [(1000,)],        # one small array: the cost of a step call itself
    "200x4096": [(4096,)] * 200,
    "1000x64": [(64,)] * 1000,
    # a 3-layer MLP on MNIST-sized input, and a small CNN (convs, batch-norm scales, linear)
    "mlp": [(256, 784), (256,), (128, 256), (128,), (10, 128), (10,)],
    "cnn": [(32, 3, 3, 3), (32,), (32,), (32,), (64, 32, 3, 3), (64,), (64,), (64,),
            (128, 64, 3, 3), (128,), (128,), (128,), (256, 128 * 4 * 4), (256,), (10, 256),
            (10,)],
}


def group_contenders(shapes, dtype, peers=True):
    """One Adam step over a group of parameters with these shapes, done every way: fastopt
    on a ParameterArena, on a list (multi-tensor), one fo.ops call per array, the NumPy
    reference, torch (foreach, fused; fused on one flat tensor of every parameter), and the
    roofline (a stream over the same bytes)."""
    from .arena import ParameterArena
    from .optim import Adam
    rng = np.random.default_rng(0)
    total = sum(int(np.prod(s)) for s in shapes)
    out = {}

    arena = ParameterArena(dtype, capacity=total)
    for k, s in enumerate(shapes):
        arena.add(f"w{k}", s, init=rng.standard_normal(s))
    arena.flat_grads[...] = rng.standard_normal(total)
    opt_arena = Adam(arena.params)
    out["arena"] = lambda: opt_arena.step(arena.grads)

    params = [on_lines(rng.standard_normal(s).astype(dtype), slot=0) for s in shapes]
    grads = [on_lines(rng.standard_normal(s).astype(dtype), slot=1) for s in shapes]
    opt_list = Adam(params)
    out["list"] = lambda: opt_list.step(grads)

    state = [(on_lines(np.zeros_like(p), slot=2), on_lines(np.zeros_like(p), slot=3))
             for p in params]
    counter = [0]

    def per_array():
        counter[0] += 1
        for p, g, (m, v) in zip(params, grads, state):
            ops.adam_step_(p, g, m, v, counter[0])
    out["per-array"] = per_array

    def reference():
        with _backend.use_backend("numpy"):
            per_array()
    out["numpy"] = reference

    stream = stream_kernel()
    if stream is not None:
        streamed = [on_lines(rng.standard_normal(total).astype(dtype), slot=k)
                    for k in range(4)]
        out["roofline"] = lambda: stream(*streamed)
    if peers:
        try:
            import torch
        except ImportError:
            return out
        torch.set_num_threads(_backend.get_num_threads())
        # torch on the same arrays, and fused on one flat tensor of them all: the arena's
        # layout, which a torch user gets by flattening (as ZeRO does); the arena against
        # torch on 1000 tensors compares layouts as much as steps
        flat = [on_lines(np.concatenate([a.ravel() for a in arrays]), slot=k)
                for k, arrays in enumerate((params, grads))]  # (grads as they are, params copied)
        for label, extra, (ps, gs) in (
                ("torch-foreach", dict(foreach=True), (params, grads)),
                ("torch-fused", dict(fused=True), (params, grads)),
                ("torch-flat", dict(fused=True), ([flat[0]], [flat[1]]))):
            tparams = [torch.from_numpy(on_lines(p, slot=0)).requires_grad_() for p in ps]
            for tp, g in zip(tparams, gs):
                tp.grad = torch.from_numpy(g)
            try:
                topt = torch.optim.Adam(tparams, **extra)
                topt.step()
                place_state(topt, tparams)
            except (RuntimeError, TypeError, ValueError):
                continue
            out[label] = topt.step
    return out


# ---------------------------------------------------------------------------------- layers
LAYER_CASES = {   # name -> shapes (rows are examples, features/classes last)
    "bn_fwd": [(256, 4096), (4096, 1024)],
    "bn_bwd": [(256, 4096), (4096, 1024)],
    "bn_fwd_bwd": [(256, 4096), (4096, 1024)],
    # the course's layout: x is (features, m), batch axis 1 (the same data, transposed)
    "bn_fwd_bwd_t": [(4096, 256), (1024, 4096)],
    "softmax": [(4096, 1000), (256, 32000)],
    "xent": [(4096, 1000), (256, 32000)],
}


def layer_contenders(name, shape, dtype, backends, peers=True, scale=1.0):
    """One layer call (rows are examples, features/classes last; ``bn_fwd_bwd_t``: features
    are rows, batch axis 1) done every way, plus the roofline: a stream over the layer's own
    arrays reading its inputs and writing its outputs. The input is standard normal times
    ``scale`` (logits of a confident classifier spread wider: exp then underflows for many of
    them)."""
    from . import layers
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    axis = 1 if name == "bn_fwd_bwd_t" else 0
    c = shape[1 - axis]
    gamma, beta = np.ones(c, dtype), np.zeros(c, dtype)
    labels = rng.integers(0, shape[1], shape[0])
    out, dx = np.empty_like(x), np.empty_like(x)    # outputs reused: no page faults per call
    _, cache = layers.batchnorm_forward(x, gamma, beta, axis=axis)
    calls = {
        "bn_fwd": lambda: layers.batchnorm_forward(x, gamma, beta, out=out),
        "bn_bwd": lambda: layers.batchnorm_backward(dy, cache, out=dx),
        "bn_fwd_bwd": lambda: layers.batchnorm_backward(
            dy, layers.batchnorm_forward(x, gamma, beta, out=out)[1], out=dx),
        "bn_fwd_bwd_t": lambda: layers.batchnorm_backward(
            dy, layers.batchnorm_forward(x, gamma, beta, axis=1, out=out)[1], out=dx),
        "softmax": lambda: layers.softmax(x, out=out),
        "xent": lambda: layers.softmax_cross_entropy(x, labels, out=out),
    }
    fns = {}
    for b in backends:
        fn = (lambda f: lambda: f())(calls[name])
        fn.backend = b
        fns[b] = fn
    stream_to = stream_kernel("stream_to")
    if stream_to is not None:
        # on the layer's own arrays: read its inputs, write its outputs (not read first)
        roofs = {"bn_fwd": [(out, x)], "bn_bwd": [(dx, x, dy)],
                 "bn_fwd_bwd": [(out, x), (dx, x, dy)], "softmax": [(out, x)],
                 "xent": [(out, x)]}
        streams = roofs.get(name, roofs["bn_fwd_bwd"])
        fns["roofline"] = lambda: [stream_to(*arrays) for arrays in streams]
    if peers:
        fns.update(_torch_layer(name, x, dy, labels))
    return fns


def _torch_layer(name, x, dy, labels):
    """torch's call for the row, in its own best form of the same data: ``bn_fwd_bwd_t`` (x
    is (features, m)) as one sample of ``features`` channels of length m, (1, C, L), the same
    statistics with no copy (the transposed view, (m, C) strided, had taken torch's slow path:
    67 ms against 4.4 for the same elements laid out as examples); softmax into a reused
    output, as fastopt's."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return {}
    torch.set_num_threads(_backend.get_num_threads())
    channels = x.shape[1]
    if name == "bn_fwd_bwd_t":
        name, x, dy, channels = "bn_fwd_bwd", x[None], dy[None], x.shape[0]
    xt = torch.from_numpy(x)
    dyt = torch.from_numpy(dy)
    lt = torch.from_numpy(labels)
    w = torch.ones(channels, dtype=xt.dtype)
    b = torch.zeros(channels, dtype=xt.dtype)
    out = torch.empty_like(xt) if name == "softmax" else None

    def bn(backward):
        xg = xt.detach().requires_grad_(backward)
        y = F.batch_norm(xg, None, None, w, b, training=True)
        if backward:
            y.backward(dyt)
            return xg.grad
        return y

    def xent():
        zg = xt.detach().requires_grad_()
        F.cross_entropy(zg, lt).backward()

    calls = {"bn_fwd": lambda: bn(False), "bn_fwd_bwd": lambda: bn(True),
             "softmax": lambda: torch.softmax(xt, -1, out=out), "xent": xent}
    return {"torch": calls[name]} if name in calls else {}


def check_layer_equivalence(name, backend, dtype, shape=(37, 29)):
    """Max relative error of a layer kernel on ``backend`` vs the reference, and whether it is
    within tolerance (reductions are summed in a different order: a few ulps of float32, 1e-11
    relative in float64)."""
    from . import layers
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(dtype) * 3 + 1
    dy = rng.standard_normal(shape).astype(dtype)
    labels = rng.integers(0, shape[1], shape[0])
    gamma, beta = np.ones(shape[1], dtype), np.zeros(shape[1], dtype)

    def outputs():
        if name.startswith("bn"):
            y, cache = layers.batchnorm_forward(x, gamma, beta)
            return [y, *layers.batchnorm_backward(dy, cache)]
        if name == "softmax":
            return [layers.softmax(x), layers.log_softmax(x, axis=0)]
        loss, d = layers.softmax_cross_entropy(x, labels)
        return [np.array([loss]), d]

    with _backend.use_backend("numpy"):
        expected = outputs()
    with _backend.use_backend(backend):
        got = outputs()
    err = max(float(np.max(np.abs(a - b) / (np.abs(b) + 1.0), initial=0.0))
              for a, b in zip(got, expected))
    tol = 1e-11 if np.dtype(dtype) == np.float64 else 1e-5
    return err, err <= tol


# ----------------------------------------------------------------------- torch tensors race
TORCH_DTYPES = ("float32", "bfloat16")
TORCH_RACERS = ("fastopt.torch", "torch-fused", "deepspeed")


def torch_shapes(spec):
    """The parameter shapes of a race row: ``n`` elements in one tensor, or a GROUPS name."""
    return GROUPS[spec] if isinstance(spec, str) else [(int(spec),)]


def torch_contenders(shapes, dtype, only=None, peers=True):
    """One Adam step (lr 1e-3, torch's other defaults) over torch tensors of these shapes and
    dtype (``"float32"`` or ``"bfloat16"``) with grads set once: ``fastopt.torch.Adam``,
    ``torch.optim.Adam(fused=True)`` and DeepSpeedCPUAdam (``adamw_mode=False``), each where
    installed; ``{}`` without torch. ``only`` builds just that one; without ``peers`` only
    fastopt.torch (DeepSpeed compiles its op on first use; ``FASTOPT_NO_DEEPSPEED=1`` leaves
    it out). 16-bit parameters: fastopt keeps a float32 master copy and float32 moments and
    writes the rounded parameter in its one sweep; torch fused keeps bfloat16 state and no
    master; DeepSpeed runs its 16-bit mode as ZeRO-Offload does, float32 master parameters
    beside the 16-bit ones, so its step is three passes: the 16-bit grads copied into the
    masters' float32 grads, DeepSpeedCPUAdam on the masters, the masters copied (rounded to
    nearest even) into the 16-bit parameters. (ZeRO flattens each group into one tensor
    first; the one-tensor rows are that case.)"""
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(_backend.get_num_threads())
    tdtype = getattr(torch, dtype)

    def tensors():
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=gen).to(tdtype).requires_grad_() for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(tdtype)
        return params

    def fastopt_adam():
        from . import torch as fastopt_torch
        return fastopt_torch.Adam(tensors(), lr=1e-3)

    def deepspeed_adam():
        if os.environ.get("FASTOPT_NO_DEEPSPEED"):
            raise RuntimeError("FASTOPT_NO_DEEPSPEED is set")
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        params = tensors()
        with _cpu_info_once():
            if tdtype == torch.float32:
                return DeepSpeedCPUAdam(params, lr=1e-3, adamw_mode=False)
            return _DeepSpeedMasters(DeepSpeedCPUAdam, params, lr=1e-3, adamw_mode=False)

    makers = {"fastopt.torch": fastopt_adam,
              "torch-fused": lambda: torch.optim.Adam(tensors(), lr=1e-3, fused=True),
              "deepspeed": deepspeed_adam}
    out = {}
    for label, make in makers.items():
        if (only is not None and label != only) or not (peers or label == "fastopt.torch"):
            continue
        try:
            opt = make()
            opt.step()
        except Exception:   # absent, unsupported here, or DeepSpeed's op failed to build
            continue
        out[label] = opt.step
    return out


class _DeepSpeedMasters:
    """DeepSpeedCPUAdam in its 16-bit mode (ZeRO-Offload's): it steps float32 master copies
    of the 16-bit parameters; ``step`` copies the 16-bit grads into the masters' float32 grads,
    steps, and copies the masters back into the parameters (rounded to nearest even)."""

    def __init__(self, cls, params, **kwargs):
        import torch
        self.params = [p.detach() for p in params]
        self.grads = [p.grad for p in params]
        masters = [p.float() for p in self.params]
        for m in masters:
            m.grad = torch.empty_like(m)
        self.masters, self.master_grads = masters, [m.grad for m in masters]
        self.opt = cls(masters, **kwargs)
        self._copy = torch._foreach_copy_

    def step(self):
        self._copy(self.master_grads, self.grads)
        self.opt.step()
        self._copy(self.params, self.masters)
