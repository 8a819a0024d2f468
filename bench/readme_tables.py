"""The README's "Speed on this machine" tables, as markdown, from reports of ``python -m fastopt``.

    python -m fastopt --sizes 1e3,1e5,1e6,1e7 --contended --json run1.json    # twice
    python bench/readme_tables.py run1.json run2.json

So the README's figures can be regenerated from the runs they came from. Each cell holds the
runs' values in order, "run 1 ; run 2" (one value with one report); "-" where a run lacks the
row (no DeepSpeed installed, no --contended, a --quick report). Times: three significant
digits, in us below 1 ms, ms below 1 s; ratios: two decimals. Standard library only.
"""
import argparse
import json

SIZES = (1_000, 100_000, 1_000_000, 10_000_000)
FASTOPT = "cython"              # the backend the README's "fastopt" columns report
KERNEL_NAMES = {"sgd_momentum": "sgd (momentum)", "momentum": "momentum (course)"}
LAYER_NAMES = {"bn_fwd": "batch norm fwd", "bn_bwd": "batch norm bwd",
               "bn_fwd_bwd": "batch norm fwd+bwd",
               "bn_fwd_bwd_t": "batch norm fwd+bwd, features as rows",
               "softmax": "softmax", "xent": "softmax cross-entropy + gradient"}
GROUPS = ("200x4096", "1000x64")
# the machine fields the first line names (load_average changes from run to run: not compared)
MACHINE_FIELDS = ("cpu", "cores", "threads", "python", "numpy", "numba", "cython", "torch",
                  "deepspeed", "cython_build", "fastopt", "commit")


def field(rows, name, **keys):
    """``name`` of the first row whose fields equal ``keys``, or None (no such row)."""
    for row in rows:
        if all(row.get(k) == v for k, v in keys.items()):
            return row.get(name)
    return None


def size_label(n):
    return f"{n:.0e}".replace("e+0", "e").replace("e+", "e")      # 1000 -> 1e3


def _unit(t):
    """(scale, name) of a time in seconds: us below 1 ms, ms below 1 s, s above (judged
    after rounding, so 999.9 us shows as 1 ms, not 1e+03 us)."""
    for scale, name in ((1e6, "us"), (1e3, "ms")):
        if float(f"{t * scale:.3g}") < 1000:
            return scale, name
    return 1, "s"


def times(ts, sep):
    """Times in seconds joined by ``sep``, one unit after them all when they share it
    ("1.37 / 24 / 66 us"), else each its own; "-" for a missing one, or if all are."""
    known = [t for t in ts if t is not None]
    if not known:
        return "-"
    units = {_unit(t) for t in known}
    if len(units) == 1:
        scale, name = units.pop()
        return sep.join("-" if t is None else f"{t * scale:.3g}" for t in ts) + " " + name
    return sep.join("-" if t is None else f"{t * _unit(t)[0]:.3g} {_unit(t)[1]}" for t in ts)


def ratios(xs, sep=" / "):
    """Ratios with two decimals joined by ``sep``; "-" for a missing one, or if all are."""
    if all(x is None for x in xs):
        return "-"
    return sep.join("-" if x is None else f"{x:.2f}" for x in xs)


def cell(parts):
    """A cell from each run's part: "run 1 ; run 2", or "-" when no run has the row."""
    return "-" if all(p == "-" for p in parts) else " ; ".join(parts)


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def machine_line(runs):
    """The machine of the first report, and whether every report's machine is the same."""
    first = runs[0].get("machine", {})
    versions = ", ".join(f"{k} {first[k]}" for k in MACHINE_FIELDS[3:9] if k in first)
    line = (f"Machine: {first.get('cpu', '?')}, {first.get('cores', '?')} cores, "
            f"{first.get('threads', '?')} threads; {versions}; "
            f"Cython build {first.get('cython_build', '-')}.")
    if first.get("commit"):
        line += f" fastopt {first.get('fastopt', '?')} at commit {first['commit']}."
    if len(runs) == 1:
        return line
    differ = [k for k in MACHINE_FIELDS
              if len({str(r.get("machine", {}).get(k)) for r in runs}) > 1]
    if not differ:
        return line + " The runs' machines agree."
    return line + " The runs' machines differ in: " + ", ".join(
        f"{k} ({' ; '.join(str(r.get('machine', {}).get(k, '-')) for r in runs)})"
        for k in differ) + "."


def adam_table(runs):
    threads = runs[0].get("machine", {}).get("threads", "?")
    racers = (FASTOPT, "deepspeed", "torch-fused")

    def adam(r, name, n, contender):
        return field(r.get("timings", []), name, kernel="adam", dtype="float32", size=n,
                     contender=contender)

    def busy(r, name, n):
        # the contended rows time fastopt on one thread and on all of the run's threads
        # ("cython 2T"): the README shows the latter
        # (a run on one CPU started no busy process: its rows are not contended)
        label = f"{FASTOPT} {r.get('machine', {}).get('threads')}T"
        if field(r.get("contended", []), "busy_cpu", size=n, contender=label) is None:
            return None
        return field(r.get("contended", []), name, size=n, contender=label)

    def median_p95(r, n):
        median = busy(r, "x_numpy", n)
        return "-" if median is None else f"{median:.2f} ({ratios([busy(r, 'p95_x_numpy', n)])})"

    def row(label, part):
        return [label] + [cell([part(r, n) for r in runs]) for n in SIZES]

    rows = [row("one thread, ns/element: fastopt / DeepSpeedCPUAdam / torch fused",
                lambda r, n: ratios([field(r.get("single_thread", []), "ns_per_element",
                                           kernel="adam", size=n, contender=c)
                                     for c in racers])),
            row(f"{threads} threads, x roofline: fastopt",
                lambda r, n: ratios([adam(r, "x_roofline", n, FASTOPT)]))]
    rows += [[f"{threads} threads, time, run {k}: fastopt / DeepSpeed / torch fused"]
             + [times([adam(r, "time", n, c) for c in racers], " / ") for n in SIZES]
             for k, r in enumerate(runs, 1)]
    rows += [row("one core busy: median x fastopt's own single thread",
                 lambda r, n: ratios([busy(r, "x_own_1t", n)])),
             row("one core busy: median (p95) x the NumPy reference's median", median_p95)]
    return ["Adam, float32:", ""] + table([""] + [size_label(n) for n in SIZES], rows)


def kernels_table(runs):
    float32 = [[row for row in r.get("timings", []) if row.get("dtype") == "float32"]
               for r in runs]
    kernels = list(dict.fromkeys(row["kernel"] for rows in float32 for row in rows))
    caption = ["Every optimizer kernel, float32, same runs (x roofline: the kernel's time over "
               "the roofline stream's; numba / cython: the numba backend's time over the "
               "Cython one's):", ""]
    if not kernels:
        return caption + ["(no optimizer timings in these reports)"]

    def numba_over_cython(rows, kernel, n):
        numba = field(rows, "time", kernel=kernel, size=n, contender="numba")
        cython = field(rows, "time", kernel=kernel, size=n, contender="cython")
        return numba / cython if numba and cython else None

    rows = [[KERNEL_NAMES.get(k, k)]
            + [cell([ratios([field(rows, "x_roofline", kernel=k, size=n, contender=FASTOPT)])
                     for rows in float32]) for n in SIZES[1:]]
            + [cell([ratios([numba_over_cython(rows, k, n)]) for rows in float32])
               for n in SIZES[1:3]]
            for k in kernels]
    return caption + table(["kernel", "x roofline, 1e5", "1e6", "1e7", "numba / cython, 1e5",
                            "1e6"], rows)


def groups_table(runs):
    def get(name, g, contender):
        return [field(r.get("groups", []), name, group=g, contender=contender) for r in runs]

    rows = [[g] + [times(get("time", g, c), " ; ")
                   for c in ("arena", "roofline", "torch-fused", "torch-flat")]
            + [cell([ratios([x]) for x in get(k, g, "arena")]) for k in ("x_fused", "x_flat")]
            for g in GROUPS]
    return (["One Adam step over many arrays (ParameterArena; torch fused=True over the arrays "
             "as tensors, and over one flat tensor of them all, as the arena is; x faster: "
             "their time over the arena's):", ""]
            + table(["arrays", "arena", "roofline", "torch fused", "torch fused, flat",
                     "x faster than torch fused", "than torch fused, flat"], rows))


def torch_table(runs):
    rows = []
    for params in [f"{n:.0e}" for n in SIZES] + list(GROUPS):
        label = size_label(float(params)) if "e" in params else params
        rows.append([label] + [cell([times([field(r.get("torch", []), "time", params=params,
                                                  dtype=dtype, contender=c)
                                            for c in ("fastopt.torch", "torch-fused",
                                                      "deepspeed")], " / ") for r in runs])
                               for dtype in ("float32", "bfloat16")])
    return (["On torch tensors (fastopt.torch.Adam, torch fused=True, DeepSpeedCPUAdam):", ""]
            + table(["params", "float32: fastopt.torch / torch fused / DeepSpeed",
                     "bfloat16: fastopt.torch / torch fused / DeepSpeed"], rows))


def layers_table(runs):
    layers = [r.get("layers", []) for r in runs]
    keys = list(dict.fromkeys((row["kernel"], tuple(row["shape"]))
                              for rows in layers for row in rows))
    caption = ["Layers, float32 (x roofline: over a stream over the layer's arrays, reading "
               "its inputs and writing its outputs; x NumPy: the NumPy reference's time over "
               "fastopt's):", ""]
    if not keys:
        return caption + ["(no layer timings in these reports)"]
    rows = []
    for kernel, shape in keys:
        def get(name, contender):
            return [field(rows, name, kernel=kernel, shape=list(shape), contender=contender)
                    for rows in layers]
        rows.append([LAYER_NAMES.get(kernel, kernel), str(shape),
                     times(get("time", FASTOPT), " ; "),
                     cell([ratios([x]) for x in get("x_roofline", FASTOPT)]),
                     times(get("time", "numba"), " ; "), times(get("time", "torch"), " ; "),
                     # x_ref is the reference's time over this row's
                     cell([ratios([x]) for x in get("x_ref", FASTOPT)])])
    return caption + table(["layer", "shape", "fastopt", "x roofline", "numba backend",
                            "torch", "x NumPy"], rows)


def render(runs):
    """The markdown for these reports (parsed JSON dicts, in run order)."""
    parts = [[machine_line(runs)], adam_table(runs), kernels_table(runs), groups_table(runs),
             torch_table(runs), layers_table(runs)]
    return "\n\n".join("\n".join(p) for p in parts) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", help="JSON reports of python -m fastopt --json")
    args = ap.parse_args(argv)
    runs = []
    for path in args.reports:
        # a usage error naming the file, not a traceback (an --mpi report, a list, had ended
        # in AttributeError; a missing or truncated file in OSError or JSONDecodeError)
        try:
            with open(path) as f:
                runs.append(json.load(f))
        except OSError as exc:
            ap.error(f"{path}: {exc.strerror or exc}")
        except ValueError as exc:
            ap.error(f"{path}: not JSON ({exc})")
        if not isinstance(runs[-1], dict) or "machine" not in runs[-1]:
            ap.error(f"{path}: not a report of python -m fastopt --json (an --mpi run's "
                     "report has no tables here)")
    print(render(runs), end="")


if __name__ == "__main__":
    main()
