"""``python -m fastopt``: check every kernel against the NumPy reference, then time them.

Each row times every contender (each backend, the roofline stream, torch peers where installed)
in interleaved rounds and prints the median, the spread, the speed-up over the NumPy reference,
the effective bandwidth and the ratio to the roofline: the time a streaming kernel moving the
same bytes takes, measured in the same run. Exit status 1 if any equivalence check fails.
"""
import argparse
import contextlib
import errno
import importlib.util
import io
import json
import math
import os
import sys
import tempfile
import time
from functools import partial

import numpy as np

from . import _backend, _bench, _coexist, _contended

# the default run takes a few minutes (the README's); --full adds 1e7 elements, the MLP/CNN
# groups and the second layer shapes
DEFAULT_SIZES = [1_000, 100_000, 1_000_000]
FULL_SIZES = [1_000, 100_000, 1_000_000, 10_000_000]
QUICK_SIZES = [1_000, 100_000]
QUICK_KERNELS = ["sgd_momentum", "adam"]
MPI_SIZES = [1_000_000, 10_000_000]
QUICK_GROUPS = ["1000x64"]
DEFAULT_GROUPS = ["1x1000", "200x4096", "1000x64"]


def _max_size(args):
    """The largest ``--sizes`` entry for this run, and why: a row holds the largest kernel's
    arrays (param, grad and state, in the widest dtype asked for) for every contender at once
    (each backend, the roofline, and the torch/deepspeed peers unless ``--no-peers``), and
    they must fit in half of the physical memory, so that a typo (1e12 for 1e6) is a usage
    error, not terabytes asked of the allocator (and the machine's swap). Where the memory is
    not known (no ``os.sysconf``): 2^40."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 2 ** 40, "2^40"
    arrays = max(2 + len(case.state) for case in _bench.CASES.values())
    contenders = len(args.backends) + 1 + (0 if args.no_peers else len(_bench.PEERS))
    itemsize = max(np.dtype(d).itemsize for d in args.dtypes)
    limit = memory // 2 // (itemsize * arrays * contenders)
    return limit, (f"{limit:,}: {contenders} contenders x {arrays} arrays of {itemsize} bytes "
                   f"an element in half of this machine's {memory / 2 ** 30:.0f} GiB")


def _parse_sizes(text):
    """``1e3,1e5``: whole element counts >= 1 (a usage error otherwise; the upper bound is
    :func:`_max_size`'s), each once, in the order given."""
    sizes = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not (1 <= value < math.inf and value == int(value)):
            raise argparse.ArgumentTypeError(
                f"{item!r} is not a whole element count >= 1 (e.g. 1e3,1e5)")
        sizes.append(int(value))
    return list(dict.fromkeys(sizes))      # (a size given twice is timed once)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int >= 1")
    return value


def _names(text):
    """The comma-separated names of an option, spaces around them dropped (as --sizes')."""
    return [name.strip() for name in text.split(",")]


def _parse_dtypes(text):
    names = _names(text)
    for name in names:
        if name not in ("float32", "float64"):
            raise argparse.ArgumentTypeError(f"{name!r}: the kernels take float32 and float64")
    return [np.dtype(name) for name in dict.fromkeys(names)]     # (each once)


def _unwritable(path):
    """Why ``path`` (in an existing directory) cannot be written, or None: nothing is
    created, and an existing file is not changed."""
    if not path:
        return "an empty path"
    if os.path.isdir(path):
        return "it is a directory"
    if os.path.islink(path) and not os.path.exists(path):   # (open() would create the target)
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "it is a loop of links"
        target = os.path.realpath(path)
        if not os.path.isdir(os.path.dirname(target)):
            return f"it is a link to {target!r}, in no directory"
        path = target           # (the directory checked below is the target's)
    try:
        if os.path.exists(path):
            with open(path, "a"):
                pass
        else:
            tempfile.TemporaryFile(dir=os.path.dirname(path) or ".").close()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m fastopt", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernels", help="comma-separated, from: " + ", ".join(_bench.CASES))
    ap.add_argument("--sizes", type=_parse_sizes,
                    help="whole element counts >= 1, e.g. 1e3,1e5,1e6 (each once; at most "
                    "what a row's arrays fit in half of the memory)")
    ap.add_argument("--dtypes", type=_parse_dtypes,
                    help="float32 and/or float64 (default both; the layer and many-array rows "
                    "time the first; not with --torch, which races float32 and bfloat16)")
    ap.add_argument("--backends", help="backends to time (default: all available)")
    ap.add_argument("--threads", type=_positive_int,
                    help="threads for the compiled backends and torch (1 to 256)")
    ap.add_argument("--quick", action="store_true", help="a few kernels and sizes (seconds)")
    ap.add_argument("--full", action="store_true",
                    help="also 1e7 elements, the MLP/CNN groups and every layer shape (minutes)")
    ap.add_argument("--rounds", type=_positive_int,
                    help="interleaved timing rounds per row, every row (>= 1; default 5, 3 in "
                    "rows with a call over 10 ms, 3 with --quick; not with --mpi, which times "
                    "10 steps a row, 4 above 2e6 elements)")
    ap.add_argument("--no-peers", action="store_true", help="skip torch and deepspeed")
    ap.add_argument("--no-layers", action="store_true",
                    help="skip the batch-norm and softmax rows")
    ap.add_argument("--only-layers", action="store_true",
                    help="only the batch-norm and softmax rows, at every shape")
    ap.add_argument("--no-groups", action="store_true",
                    help="skip the many-small-parameters rows (arena, multi-tensor list, "
                    "and the torch race's)")
    ap.add_argument("--no-coexistence", action="store_true",
                    help="skip measuring fastopt and torch in one process (skipped by --quick)")
    ap.add_argument("--mpi", action="store_true",
                    help="only the ZeRO-1 sharded step, under mpiexec (default sizes 1e6,1e7, "
                    "float32; "
                    "needs fastopt[mpi]): mpiexec -n 2 python -m fastopt --mpi")
    ap.add_argument("--torch", action="store_true",
                    help="only the race on torch tensors: fastopt.torch.Adam against torch "
                    "fused=True and DeepSpeedCPUAdam (fastopt.torch alone with --no-peers), "
                    "float32 and bfloat16, the sizes and the 1x1000, 200x4096 and 1000x64 "
                    "groups (--quick: 1000x64)")
    ap.add_argument("--no-torch", action="store_true",
                    help="skip the race on torch tensors")
    ap.add_argument("--no-single-thread", action="store_true",
                    help="skip the single-thread ns/element rows")
    ap.add_argument("--contended", action="store_true",
                    help="also time calls while a busy process holds one core (seconds; "
                    "default sizes 1e3,1e5,1e6 and 3 rounds, or --sizes and --rounds)")
    ap.add_argument("--json", metavar="PATH", nargs="?", const="-",
                    help="also write the results as JSON to PATH; to stdout when PATH is - or "
                         "omitted (the report then goes to stderr, so the JSON pipes)")
    ap.add_argument("--plot", metavar="PATH", help="plot time vs size per backend (matplotlib)")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    available = _backend.backends()
    # (an empty --backends is no backend, not all of them)
    # (each of --backends, --kernels and --dtypes once, as --sizes: a name given twice had its
    # rows timed twice, or four times)
    args.backends = (list(dict.fromkeys(_names(args.backends))) if args.backends is not None
                     else available)
    for b in args.backends:
        if b not in available:
            ap.error(f"argument --backends: backend {b!r} is not available here (available: "
                     f"{available})")
    if args.threads is not None and args.threads > 256:
        ap.error(f"argument --threads: at most 256, got {args.threads}")
    # options that contradict each other, before what either needs (one of the two had been
    # silently ignored; --plot beside --only-layers plotted no rows and failed after the whole
    # run)
    for first, second in (("quick", "full"), ("torch", "no_torch"), ("torch", "mpi"),
                          ("only_layers", "no_layers"), ("only_layers", "torch"),
                          ("only_layers", "mpi"), ("only_layers", "kernels"),
                          ("only_layers", "plot"), ("torch", "plot"), ("mpi", "plot"),
                          ("only_layers", "sizes"), ("torch", "contended"),
                          ("mpi", "contended"), ("mpi", "quick"), ("mpi", "full"),
                          ("torch", "kernels"), ("mpi", "kernels"),
                          ("only_layers", "contended"), ("torch", "dtypes"),
                          ("mpi", "rounds"), ("only_layers", "quick")):
        if getattr(args, first) and getattr(args, second) not in (None, False):
            ap.error(f"--{first.replace('_', '-')} and --{second.replace('_', '-')} exclude "
                     "each other")
    # (None until here, so that the table above sees whether they were given)
    dtypes_given = bool(args.dtypes)
    args.dtypes = args.dtypes or _parse_dtypes("float32,float64")
    if args.sizes:
        limit, why = _max_size(args)
        for n in args.sizes:
            if n > limit:
                ap.error(f"argument --sizes: {n:,} elements is more than {why} (a row holds "
                         "them all at once)")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
            from matplotlib.backend_bases import FigureCanvasBase
        except ImportError:
            ap.error("argument --plot: needs matplotlib (pip install 'fastopt[bench]')")
        # the file format, from the extension as savefig takes it: an unknown one ended the
        # whole run in savefig's ValueError; none wrote out.png, and the report said "wrote out"
        if args.plot == "-":        # (as --json's, it would be stdout: a PNG to a terminal)
            ap.error("argument --plot: a file to write ('-', stdout, takes no plot)")
        stem, ext = os.path.splitext(args.plot)
        ext = ext[1:].lower()
        formats = FigureCanvasBase.get_supported_filetypes()
        if args.plot and not os.path.isdir(args.plot) and not ext:
            args.plot = stem + ".png"       # (as savefig names "name" and "name.")
        elif ext and ext not in formats:
            ap.error(f"argument --plot: matplotlib writes no {ext!r} files (it writes "
                     f"{', '.join(sorted(formats))})")
        try:    # one it lists but cannot write here (pgf without TeX) failed after the run
            from matplotlib.figure import Figure
            figure = Figure(figsize=(1, 1))
            figure.text(0, 0, "x")      # (text: pgf lays it out with TeX)
            figure.savefig(io.BytesIO(), format=ext or "png", bbox_inches="tight")
        except Exception as exc:
            ap.error(f"argument --plot: matplotlib cannot write {ext or 'png'!r} files here "
                     f"({type(exc).__name__}: {exc})")
    if (args.plot and args.json not in (None, "-")
            and os.path.abspath(args.plot) == os.path.abspath(args.json)):
        ap.error("argument --plot: the file --json writes (the plot replaced the JSON)")
    # the output paths are checked before anything is timed, not after minutes of timing
    for option, path in (("--json", None if args.json == "-" else args.json),
                         ("--plot", args.plot)):
        if path is not None and not os.path.isdir(os.path.dirname(path) or "."):
            ap.error(f"argument {option}: no directory {os.path.dirname(path)!r} to write to")
        problem = None if path is None else _unwritable(path)
        if problem:
            ap.error(f"argument {option}: cannot write {path!r}: {problem}")
    if args.mpi:
        try:        # (the package alone: MPI starts when the report imports mpi4py.MPI)
            import mpi4py  # noqa: F401
        except ImportError:
            ap.error("argument --mpi: needs mpi4py (pip install 'fastopt[mpi]')")
    # (found, not imported: importing torch takes seconds, and the race imports it anyway)
    if args.torch and importlib.util.find_spec("torch") is None:
        ap.error("argument --torch: needs torch (pip install 'fastopt[torch]')")
    names = _names(args.kernels) if args.kernels is not None else (
        QUICK_KERNELS if args.quick else list(_bench.CASES))
    for k in names:
        if k not in _bench.CASES:
            ap.error(f"argument --kernels: unknown kernel {k!r}; choose from "
                     f"{list(_bench.CASES)}")
    args.kernels = list(dict.fromkeys(names))
    if args.only_layers:
        args.kernels = []
        args.no_groups = args.no_coexistence = args.no_single_thread = args.no_torch = True
    args.sizes_given = bool(args.sizes)
    if args.mpi and not args.sizes:
        args.sizes = MPI_SIZES
    if args.mpi and not dtypes_given:     # ("one float32 Adam step": float64 had run too)
        args.dtypes = args.dtypes[:1]
    args.sizes = args.sizes or (QUICK_SIZES if args.quick else
                                FULL_SIZES if args.full else DEFAULT_SIZES)
    # rounds asked for are the rounds every row gets (--quick --rounds 10 had been cut to 3,
    # and any row with a call over 10 ms to 3, silently); by default such rows get 3
    args.exact_rounds = args.rounds is not None
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    return args


class Progress:
    """One status line on stderr while a section runs, when stderr is a terminal (nothing when
    it is piped): the section, rows done of its total, the current row and the time left,
    estimated from the rows done so far (rows cost about the same: each times a fixed batch)."""

    def __init__(self, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.live = self.stream.isatty()
        self.section, self.total, self.done, self.t0 = "", 0, 0, 0.0

    def start(self, section, total):
        self.section, self.total, self.done, self.t0 = section, total, 0, time.perf_counter()

    def __call__(self, msg):
        """Show ``msg`` as the row now running (counted as done at the next call)."""
        if self.done and self.total:
            left = (time.perf_counter() - self.t0) / self.done * (self.total - self.done)
            eta = f", ~{left:.0f} s left" if left < 90 else f", ~{left / 60:.0f} min left"
        else:
            eta = ""
        self.done += 1
        self._write(f"{self.section} {min(self.done, self.total)}/{self.total}: {msg}{eta}")

    def clear(self):
        """Erase the status line (before the report prints to the same terminal)."""
        self._write("")

    def _write(self, text):
        if self.live:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()


def load_average():
    """The 1, 5 and 15 minute load averages, or None where the OS does not say."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def main(argv=None):
    args = parse_args(argv)
    # the rows that time fastopt without naming a backend (the groups' arena, list and
    # per-array, fastopt.torch in the race, the sharded step) run on the active backend: one of
    # --backends, compiled first (they had timed the active Cython beside --backends numba)
    active = _backend.get_backend()
    if active not in args.backends:
        active = next((b for b in args.backends if b != "numpy"), args.backends[0])
    stdout = sys.stdout
    try:
        if args.json != "-":
            with _backend.use_backend(active):
                return report(args, None)
        # the JSON alone on stdout, so it pipes; the human report on stderr
        with contextlib.redirect_stdout(sys.stderr), _backend.use_backend(active):
            return report(args, stdout)
    except BrokenPipeError:   # the reader stopped early (`| head`): quiet, as other CLIs
        os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
        return 1
    except KeyboardInterrupt:     # Ctrl-C: a line, not a traceback; the shell's status for it
        print("\ninterrupted (no JSON or plot written)" if args.json or args.plot
              else "\ninterrupted", file=sys.stderr)
        return 130


def report(args, json_out):
    """Print the report; write the JSON to ``json_out`` (a stream) or ``args.json`` (a path)."""
    if args.threads:
        _backend.set_num_threads(args.threads)
    if args.mpi:
        try:        # (mpi4py without an MPI library it can load)
            from mpi4py import MPI  # noqa: F401
        except (ImportError, RuntimeError) as exc:
            print(f"python -m fastopt: error: argument --mpi: mpi4py cannot start MPI "
                  f"({exc})", file=sys.stderr)
            return 2
        from . import _bench_mpi     # imports mpi4py, which nothing else here does
        rows = _bench_mpi.report(args.sizes, args.dtypes, None if json_out else args.json)
        if json_out is not None and _bench_mpi.MPI.COMM_WORLD.Get_rank() == 0:
            json.dump(rows, json_out, indent=1)
            json_out.write("\n")
        return 0
    info = _bench.machine(peers=not args.no_peers)
    info["load_average"] = load_average()
    info["options"] = args.argv      # (so a run's JSON says how it was made)
    progress = Progress()
    print("fastopt report")
    print(f"  machine : {info['cpu']}, {_count(info['cores'], 'core')}, "
          f"{_count(info['threads'], 'thread')} used")
    if info["load_average"] is not None:
        load = info["load_average"]
        busy = load[0] + info["threads"] > (info["cores"] or 1) + 0.5
        print(f"  load    : {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min)"
              + ("; other processes compete for the cores: times are slower and noisier"
                 if busy else ""))
    print("  versions: " + ", ".join(f"{k} {info[k]}" for k in
                                     ("python", "numpy", "numba", "cython", "torch", "deepspeed")
                                     if k in info))
    print(f"  fastopt : {info['fastopt']}" + (f" (commit {info['commit']})" if info["commit"]
                                               else ""))
    print(f"  cython  : {info['cython_build']}")
    print(f"  backends: {', '.join(args.backends)} (active: {_backend.get_backend()})")

    if args.torch:
        results = dict(machine=info, torch=torch_race(args, progress))
        _write_json(results, args, json_out)
        return 0

    # 1. equivalence with the reference, every kernel on every backend
    print("\nequivalence with the NumPy reference (max relative error; optimizers: 7 steps on a "
          "strided param; layers: one call, reductions summed in another order)")
    failures, checks = 0, []
    compiled = [b for b in args.backends if b != "numpy"]
    layer_checks = [] if args.no_layers else ["bn_fwd_bwd", "softmax", "xent"]
    progress.start("checking", (len(args.kernels) + len(layer_checks)) * len(args.dtypes)
                   * len(compiled))
    # each check is called as check(backend, dtype) -> (max relative error, ok)
    equivalences = ([(name, partial(_bench.check_equivalence, _bench.CASES[name]))
                     for name in args.kernels]
                    + [(name, partial(_bench.check_layer_equivalence, name))
                       for name in layer_checks])
    for name, check in equivalences:
        cells = []
        for dtype in args.dtypes:
            for backend in compiled:
                progress(f"{name} {dtype} {backend}")
                err, ok = check(backend, dtype)
                failures += not ok
                checks.append(dict(kernel=name, dtype=str(dtype), backend=backend,
                                   max_rel_err=err, ok=ok))
                cells.append(f"{backend}/{dtype.name[5:]}: {err:.1e}{'' if ok else ' FAIL'}")
        progress.clear()
        print(f"  {name:<13} " + "  ".join(cells))

    # 2. timing
    if _bench.stream_kernel() is None:      # (its cells were blank, unexplained)
        print("\nno x roof: the roofline stream is a compiled kernel of the extension, which "
              "did not build here (" + (_backend.unavailable_reason("cython")
                                        or "its stream module does not import") + ")")
    if args.kernels:
        print("\nspeed (median of interleaved rounds; x ref = speed-up over the NumPy reference; "
              "x roof = time / roofline stream time)")
        print(f"  {'kernel':<13}{'dtype':<8}{'size':>10}  {'contender':<14}{'time':>11}"
              f"{'spread':>8}{'x ref':>8}{'GB/s':>8}{'x roof':>8}")
    rows = []
    progress.start("timing", len(args.kernels) * len(args.dtypes) * len(args.sizes))
    for name in args.kernels:
        case = _bench.CASES[name]
        reads, writes = case.n_streams()
        for dtype in args.dtypes:
            for n in args.sizes:
                progress(f"{name} {dtype} {_bench.size_label(n)}")
                fns = _bench.contenders(case, n, dtype, args.backends, peers=not args.no_peers)
                timed = _bench.time_row(fns, rounds=args.rounds, exact_rounds=args.exact_rounds)
                ref = timed.get("numpy", (None,))[0]
                roof = timed.get("roofline", (None,))[0]
                nbytes = n * dtype.itemsize * (reads + writes)
                progress.clear()
                for label, (t, spread) in timed.items():
                    row = dict(kernel=name, dtype=dtype.name, size=n, contender=label, time=t,
                               spread=spread, x_ref=ref / t if ref else None,
                               gbps=nbytes / t / 1e9, x_roofline=t / roof if roof else None)
                    rows.append(row)
                    print(f"  {name:<13}{dtype.name:<8}{_bench.size_label(n):>10}  {label:<14}"
                          f"{_fmt_t(t):>11}{spread:>7.0%} {_fmt_x(row['x_ref']):>7}"
                          f" {row['gbps']:>7.1f} {_fmt_x(row['x_roofline']):>7}")
    single_rows = []
    if not args.no_single_thread:
        sizes = [n for n in args.sizes if n >= 100_000] or args.sizes[-1:]
        print("\nsingle thread, float32 (ns per element" + ("" if args.no_peers else
                                                            "; torch and DeepSpeed on one "
                                                            "thread too") + ")")
        progress.start("timing on one thread", 1)
        progress(", ".join(args.kernels))
        single_rows = _bench.single_thread_rows(args.kernels, args.backends, sizes=sizes,
                                                rounds=args.rounds, peers=not args.no_peers,
                                                exact_rounds=args.exact_rounds)
        progress.clear()
        for name in args.kernels:
            for n in sizes:
                cells = [f"{r['contender']} {r['ns_per_element']:.3f}" for r in single_rows
                         if r["kernel"] == name and r["size"] == n]
                print(f"  {name:<13}{_bench.size_label(n):>8}  " + "  ".join(cells))

    group_rows = []
    if not args.no_groups:
        print(f"\nparameter groups: one Adam step over many arrays, fastopt on "
              f"{_backend.get_backend()} (x roof: vs one stream over the same bytes; x fused, "
              "x flat: torch fused=True's time over these\n  arrays as tensors, and over one "
              "flat tensor of them all, torch-flat, as the arena is flat)")
        print(f"  {'group':<10}{'dtype':<8}{'arrays':>7}{'elements':>10}  {'contender':<14}"
              f"{'time':>11}{'spread':>8}{'x roof':>8}{'x fused':>9}{'x flat':>8}")
        gnames = (QUICK_GROUPS if args.quick else
                  list(_bench.GROUPS) if args.full else DEFAULT_GROUPS)
        progress.start("timing groups", len(gnames) * len(args.dtypes[:1]))
        for gname in gnames:
            shapes = _bench.GROUPS[gname]
            total = sum(int(np.prod(s)) for s in shapes)
            for dtype in args.dtypes[:1]:
                progress(gname)
                timed = _bench.time_row(_bench.group_contenders(shapes, dtype,
                                                                peers=not args.no_peers),
                                        rounds=args.rounds, exact_rounds=args.exact_rounds)
                roof = timed.get("roofline", (None,))[0]
                fused = timed.get("torch-fused", (None,))[0]
                flat = timed.get("torch-flat", (None,))[0]
                progress.clear()
                for label, (t, spread) in timed.items():
                    row = dict(group=gname, dtype=dtype.name, arrays=len(shapes), size=total,
                               contender=label, time=t, spread=spread,
                               x_roofline=t / roof if roof else None,
                               x_fused=fused / t if fused else None,
                               x_flat=flat / t if flat else None)
                    group_rows.append(row)
                    print(f"  {gname:<10}{dtype.name:<8}{len(shapes):>7}{total:>10}  "
                          f"{label:<14}{_fmt_t(t):>11}{spread:>7.0%} "
                          f"{_fmt_x(row['x_roofline']):>7} {_fmt_x(row['x_fused']):>8}"
                          f" {_fmt_x(row['x_flat']):>7}")

    layer_rows = []
    if not args.no_layers:
        print("\nlayers (rows are examples; x roof: vs a stream reading the inputs, writing the "
              "outputs)")
        print(f"  {'kernel':<12}{'dtype':<8}{'shape':>14}  {'contender':<10}{'time':>11}"
              f"{'spread':>8}{'x ref':>8}{'x roof':>8}")
        layer_shapes = [(name, shape) for name, shapes in _bench.LAYER_CASES.items()
                        if not (args.quick and name not in ("bn_fwd_bwd", "xent"))
                        for shape in (shapes if args.full or args.only_layers else shapes[:1])]
        progress.start("timing layers", len(layer_shapes) * len(args.dtypes[:1]))
        for name, shape in layer_shapes:
            for dtype in args.dtypes[:1]:
                progress(f"{name} {shape}")
                timed = _bench.time_row(_bench.layer_contenders(
                    name, shape, dtype, args.backends, peers=not args.no_peers),
                    rounds=args.rounds, exact_rounds=args.exact_rounds)
                ref = timed.get("numpy", (None,))[0]
                roof = timed.get("roofline", (None,))[0]
                progress.clear()
                for label, (t, spread) in timed.items():
                    row = dict(kernel=name, dtype=dtype.name, shape=shape, contender=label,
                               time=t, spread=spread, x_ref=ref / t if ref else None,
                               x_roofline=t / roof if roof else None)
                    layer_rows.append(row)
                    print(f"  {name:<12}{dtype.name:<8}{str(shape):>14}  {label:<10}"
                          f"{_fmt_t(t):>11}{spread:>7.0%} {_fmt_x(row['x_ref']):>7}"
                          f" {_fmt_x(row['x_roofline']):>7}")

    torch_rows = [] if args.no_torch or args.no_peers else torch_race(args, progress)

    coexistence = []
    if not (args.quick or args.no_coexistence or args.no_peers):
        print(f"\nliving beside torch (median of {_coexist.REPEATS} fresh processes each; Adam "
              "1e5 float32; ratio > 1: slowed)")
        progress.start("beside torch", 1)
        progress("measuring import orders")
        with contextlib.redirect_stdout(io.StringIO()) as text:  # printed after the status line
            measured = _coexist.report(args.backends, threads=args.threads)
        progress.clear()
        print(text.getvalue(), end="")
        coexistence = [dict(what=w, alone=a, beside=b, ratio=r) for w, a, b, r in measured]
    contended = []
    if args.contended:
        compiled = [b for b in args.backends if b != "numpy"]
        progress.start("timing beside a busy core", 1)
        progress("adam float32")
        backend = compiled[0] if compiled else "numpy"
        contended = _contended.rows(backend, **(dict(sizes=args.sizes) if args.sizes_given
                                                else {}),
                                    **(dict(rounds=args.rounds) if args.exact_rounds else {}))
        progress.clear()
        _contended.print_rows(contended, _fmt_t, backend)
    results = dict(machine=info, equivalence=checks, timings=rows, groups=group_rows,
                   layers=layer_rows, single_thread=single_rows, contended=contended,
                   coexistence=coexistence, torch=torch_rows)
    _write_json(results, args, json_out)
    if args.plot:
        _plot(rows, args.plot)
    if failures:
        print(f"\n{failures} equivalence check(s) FAILED", file=sys.stderr)
        return 1
    return 0


def _write_json(results, args, json_out):
    if json_out is not None:
        json.dump(results, json_out, indent=1)
        json_out.write("\n")
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nwrote {args.json}")


def torch_race_specs(args):
    """The torch race's rows: the sizes, then (unless --no-groups) the parameter groups."""
    groups = [] if args.no_groups else QUICK_GROUPS if args.quick else DEFAULT_GROUPS
    return list(args.sizes) + groups


def torch_race(args, progress):
    """Adam on torch tensors: fastopt.torch.Adam, torch fused=True and DeepSpeedCPUAdam (each
    where installed; fastopt.torch alone with --no-peers), float32 and bfloat16, over the
    sizes and the parameter groups. Prints the rows and returns them."""
    specs = torch_race_specs(args)
    print("\ntorch tensors: one Adam step (x fused, x deepspeed: their time / fastopt.torch's; "
          "> 1: fastopt.torch is faster;\n  bfloat16: fastopt keeps float32 masters and state, "
          "torch fused bfloat16 state, DeepSpeed steps float32 masters\n  and copies grads in "
          "and parameters out, as ZeRO-Offload)")
    print(f"  {'params':<10}{'dtype':<10}{'elements':>10}  {'contender':<15}{'time':>11}"
          f"{'spread':>8}{'x fused':>9}{'x deepspeed':>12}")
    out = []
    progress.start("timing on torch tensors", len(specs) * len(_bench.TORCH_DTYPES))
    for spec in specs:
        shapes = _bench.torch_shapes(spec)
        total = sum(int(np.prod(s)) for s in shapes)
        name = spec if isinstance(spec, str) else _bench.size_label(spec)
        for dtype in _bench.TORCH_DTYPES:
            progress(f"{name} {dtype}")
            fns = _bench.torch_contenders(shapes, dtype, peers=not args.no_peers)
            if not fns:
                progress.clear()
                print("  (torch is not installed)")
                return out
            timed = _bench.time_row(fns, rounds=args.rounds, exact_rounds=args.exact_rounds)
            ours = timed.get("fastopt.torch", (None,))[0]
            progress.clear()
            for label, (t, spread) in timed.items():
                row = dict(params=name, dtype=dtype, size=total, contender=label, time=t,
                           spread=spread)
                out.append(row)
                ratios = ["", ""]
                if label == "fastopt.torch" and ours:
                    ratios = [_fmt_x(timed[k][0] / ours) if k in timed else "-"
                              for k in ("torch-fused", "deepspeed")]
                print(f"  {name:<10}{dtype:<10}{total:>10}  {label:<15}{_fmt_t(t):>11}"
                      f"{spread:>7.0%} {ratios[0]:>8} {ratios[1]:>11}")
    return out


def _fmt_t(t):
    return f"{t * 1e6:.2f} us" if t < 1e-3 else f"{t * 1e3:.2f} ms"


def _count(n, noun):
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _fmt_x(x):
    return "" if x is None else f"{x:.2f}"


def _plot(rows, path):
    import matplotlib           # (parse_args checked that it is installed)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = sorted({(r["kernel"], r["dtype"]) for r in rows})
    fig, axes = plt.subplots(len(groups), 1, figsize=(7, 3.2 * len(groups)), squeeze=False)
    for ax, (kernel, dtype) in zip(axes[:, 0], groups):
        sel = [r for r in rows if r["kernel"] == kernel and r["dtype"] == dtype]
        for label in dict.fromkeys(r["contender"] for r in sel):
            pts = sorted((r["size"], r["time"]) for r in sel if r["contender"] == label)
            ax.loglog(*zip(*pts), "o-" if label != "roofline" else "k--", label=label)
        ax.set_title(f"{kernel} {dtype}")
        ax.set_xlabel("elements")
        ax.set_ylabel("seconds per step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    sys.exit(main())
