"""bench/readme_tables.py on small made-up reports whose cells are worked out by hand.

Plain tests (no benchmark fixture): CI's `pytest bench --benchmark-disable` runs them.
"""
import contextlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).with_name("readme_tables.py")
_spec = importlib.util.spec_from_file_location("readme_tables", SCRIPT)
readme_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_tables)

MACHINE = dict(cpu="Test CPU", cores=2, threads=2, python="3.11.7", numpy="2.4.6",
               numba="0.68.1", cython="3.3.1", torch="2.13.0+cpu", deepspeed="0.19.8",
               cython_build="optim_avx512: -O3", load_average=[1.0, 1.0, 1.0])


def report(**sections):
    """A report as `python -m fastopt --json` writes it, every section empty unless given."""
    out = dict(machine=dict(MACHINE), equivalence=[], timings=[], groups=[], layers=[],
               single_thread=[], contended=[], coexistence=[], torch=[])
    out.update(sections)
    return out


def timing(kernel, size, contender, time, x_roofline=None, dtype="float32"):
    return dict(kernel=kernel, dtype=dtype, size=size, contender=contender, time=time,
                spread=0.1, x_ref=None, gbps=1.0, x_roofline=x_roofline)


def one_thread(size, contender, ns):
    return dict(kernel="adam", size=size, contender=contender, time=ns * size * 1e-9,
                spread=0.1, ns_per_element=ns)


def busy(size, contender, x_own_1t, x_numpy, p95_x_numpy):
    return dict(size=size, contender=contender, median=1e-5, p95=2e-5, x_own_1t=x_own_1t,
                x_numpy=x_numpy, p95_x_numpy=p95_x_numpy, busy_cpu=1)


def group(name, contender, time, x_fused=None, x_flat=None):
    return dict(group=name, dtype="float32", arrays=200, size=819200, contender=contender,
                time=time, spread=0.1, x_roofline=None, x_fused=x_fused, x_flat=x_flat)


def race(params, dtype, contender, time):
    return dict(params=params, dtype=dtype, size=1000, contender=contender, time=time,
                spread=0.1)


def render(tmp_path, capsys, *reports):
    """The script's output for these reports, passed as JSON files as on the command line."""
    paths = []
    for k, r in enumerate(reports):
        paths.append(str(tmp_path / f"run{k}.json"))
        pathlib.Path(paths[-1]).write_text(json.dumps(r))
    readme_tables.main(paths)
    return capsys.readouterr().out


def rows(output, caption):
    """{first cell: the other cells} of the markdown table under the line starting ``caption``."""
    blocks = output.split("\n\n")      # a caption, then its table
    table = blocks[next(k for k, b in enumerate(blocks) if b.startswith(caption)) + 1]
    cells = [line.strip("|").split("|") for line in table.splitlines()[2:]]
    return {c[0].strip(): [x.strip() for x in c[1:]] for c in cells}


def test_adam_table_cells_one_run_per_side_of_the_semicolon(tmp_path, capsys):
    run1 = report(
        single_thread=[one_thread(100_000, "cython", 0.6), one_thread(100_000, "deepspeed", 0.8),
                       one_thread(100_000, "torch-fused", 1.2)],
        timings=[timing("adam", 1_000, "cython", 1.37e-6, x_roofline=2.2),
                 timing("adam", 1_000, "deepspeed", 2.4e-5),
                 timing("adam", 1_000, "torch-fused", 6.6e-5),
                 timing("adam", 1_000_000, "cython", 5.3e-4),
                 timing("adam", 1_000_000, "deepspeed", 9.83e-4),
                 timing("adam", 1_000_000, "torch-fused", 1.01e-3),
                 timing("adam", 10_000_000, "cython", 9.9996e-4)],
        contended=[busy(100_000, "numpy", 7.0, 1.0, 1.3),
                   busy(100_000, "cython 1T", 1.0, 0.1, 0.2),
                   busy(100_000, "cython 2T", 0.63, 0.07, 0.12)])
    run2 = report(   # no DeepSpeed, no --contended
        single_thread=[one_thread(100_000, "cython", 0.45),
                       one_thread(100_000, "torch-fused", 1.1)],
        timings=[timing("adam", 1_000, "cython", 1.5e-6, x_roofline=2.31)])
    table = rows(render(tmp_path, capsys, run1, run2), "Adam, float32")
    # columns: 1e3, 1e5, 1e6, 1e7
    assert table["one thread, ns/element: fastopt / DeepSpeedCPUAdam / torch fused"] == [
        "-", "0.60 / 0.80 / 1.20 ; 0.45 / - / 1.10", "-", "-"]
    assert table["2 threads, x roofline: fastopt"] == ["2.20 ; 2.31", "-", "-", "-"]
    assert table["2 threads, time, run 1: fastopt / DeepSpeed / torch fused"] == [
        "1.37 / 24 / 66 us", "-", "530 us / 983 us / 1.01 ms", "1 / - / - ms"]   # 999.96 us
    assert table["2 threads, time, run 2: fastopt / DeepSpeed / torch fused"] == [
        "1.5 / - / - us", "-", "-", "-"]
    assert table["one core busy: median x fastopt's own single thread"] == [
        "-", "0.63 ; -", "-", "-"]
    assert table["one core busy: median (p95) x the NumPy reference's median"] == [
        "-", "0.07 (0.12) ; -", "-", "-"]


def test_kernels_table_float32_rows_and_numba_over_cython(tmp_path, capsys):
    run = report(timings=[timing("sgd_momentum", 100_000, "cython", 1.5e-5, x_roofline=1.09),
                          timing("sgd_momentum", 100_000, "numba", 3e-5),
                          timing("sgd_momentum", 1_000_000, "cython", 1e-4, x_roofline=9.0,
                                 dtype="float64")])
    table = rows(render(tmp_path, capsys, run), "Every optimizer kernel")
    assert table == {"sgd (momentum)": ["1.09", "-", "-", "2.00", "-"]}


def test_groups_table(tmp_path, capsys):
    run1 = report(groups=[group("200x4096", "arena", 528e-6, x_fused=5.2, x_flat=1.4),
                          group("200x4096", "roofline", 218e-6),
                          group("200x4096", "torch-fused", 2.75e-3),
                          group("200x4096", "torch-flat", 740e-6)])
    run2 = report(groups=[group("200x4096", "arena", 368e-6, x_fused=7.1, x_flat=1.9),
                          group("200x4096", "roofline", 181e-6),
                          group("200x4096", "torch-fused", 2.6e-3),
                          group("200x4096", "torch-flat", 700e-6)])
    table = rows(render(tmp_path, capsys, run1, run2), "One Adam step over many arrays")
    assert table["200x4096"] == ["528 ; 368 us", "218 ; 181 us", "2.75 ; 2.6 ms", "740 ; 700 us",
                                 "5.20 ; 7.10", "1.40 ; 1.90"]
    assert table["1000x64"] == ["-"] * 6


def test_torch_table_keeps_1e3_apart_from_the_1x1000_group(tmp_path, capsys):
    run = report(torch=[race("1e+03", "float32", "fastopt.torch", 11.5e-6),
                        race("1e+03", "float32", "torch-fused", 61.9e-6),
                        race("1e+03", "float32", "deepspeed", 27.2e-6),
                        race("1x1000", "float32", "fastopt.torch", 99e-6),
                        race("1e+07", "bfloat16", "fastopt.torch", 5.67e-3),
                        race("1e+07", "bfloat16", "torch-fused", 4.28e-3)])
    table = rows(render(tmp_path, capsys, run), "On torch tensors")
    assert table["1e3"] == ["11.5 / 61.9 / 27.2 us", "-"]
    assert table["1e7"] == ["-", "5.67 / 4.28 / - ms"]
    assert list(table) == ["1e3", "1e5", "1e6", "1e7", "200x4096", "1000x64"]


def test_layers_table_with_x_numpy(tmp_path, capsys):
    layer = dict(kernel="bn_fwd", dtype="float32", shape=[256, 4096], spread=0.1)
    run = report(layers=[dict(layer, contender="cython", time=3.6e-4, x_ref=12.5, x_roofline=6.3),
                         dict(layer, contender="numba", time=3.8e-4, x_ref=11.8, x_roofline=6.6),
                         dict(layer, contender="numpy", time=4.5e-3, x_ref=1.0, x_roofline=79)])
    table = rows(render(tmp_path, capsys, run), "Layers")
    assert table == {"batch norm fwd": ["(256, 4096)", "360 us", "6.30", "380 us", "-", "12.50"]}


def test_machine_line_says_whether_the_runs_agree(tmp_path, capsys):
    other = report()
    other["machine"]["torch"] = "2.12.0"
    first = render(tmp_path, capsys, report(), report()).splitlines()[0]
    assert first.startswith("Machine: Test CPU, 2 cores, 2 threads; python 3.11.7, ")
    assert "Cython build optim_avx512: -O3." in first
    assert first.endswith("The runs' machines agree.")
    first = render(tmp_path, capsys, report(), other).splitlines()[0]
    assert first.endswith("differ in: torch (2.13.0+cpu ; 2.12.0).")
    at = [report(), report()]       # runs of two commits (the JSON says which since a2521be)
    for run, commit in zip(at, ("4c9bd76", "a2521be+")):
        run["machine"].update(fastopt="0.1.0", commit=commit)
    first = render(tmp_path, capsys, *at).splitlines()[0]
    assert "fastopt 0.1.0 at commit 4c9bd76." in first
    assert first.endswith("differ in: commit (4c9bd76 ; a2521be+).")
    assert "agree" not in render(tmp_path, capsys, report()).splitlines()[0]


def test_a_quick_report_without_most_sections_prints_dashes(tmp_path, capsys):
    quick = dict(machine=dict(MACHINE), equivalence=[],
                 timings=[timing("adam", 1_000, "cython", 2e-6, x_roofline=2.5)],
                 groups=[group("1000x64", "arena", 40e-6, x_fused=200.0)])
    output = render(tmp_path, capsys, quick)
    assert rows(output, "Adam, float32")["2 threads, x roofline: fastopt"] == [
        "2.50", "-", "-", "-"]
    assert rows(output, "On torch tensors")["1e5"] == ["-", "-"]
    assert "(no layer timings in these reports)" in output
    # and a --torch report: the machine and the race only
    output = render(tmp_path, capsys, dict(machine=dict(MACHINE), torch=[]))
    assert "(no optimizer timings in these reports)" in output


def test_the_command_line(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(report()))
    done = subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True,
                          text=True, check=True)
    assert done.stdout.startswith("Machine: Test CPU")


def test_contended_rows_without_a_busy_process_are_not_shown_as_contended(tmp_path, capsys):
    """A --contended run on one CPU starts no busy process (busy_cpu None): its times are not
    "one core busy" figures."""
    alone = [dict(busy(100_000, "cython 2T", 0.9, 0.1, 0.2), busy_cpu=None)]
    table = rows(render(tmp_path, capsys, report(contended=alone)), "Adam, float32")
    assert table["one core busy: median x fastopt's own single thread"] == ["-"] * 4
    assert table["one core busy: median (p95) x the NumPy reference's median"] == ["-"] * 4


def test_files_that_are_not_reports_are_usage_errors_naming_them(tmp_path, capsys):
    """An --mpi report (a JSON list) ended in AttributeError, a missing or truncated file in
    FileNotFoundError or JSONDecodeError tracebacks; {} printed tables of "?" and "-"."""
    import pytest
    files = {"mpi.json": json.dumps([dict(elements=1000, dtype="float32", ranks=2)]),
             "cut.json": '{"machine": {', "empty.json": "{}"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for name in [*files, "missing.json"]:
        with pytest.raises(SystemExit) as exc:
            readme_tables.main([str(tmp_path / name)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"{name}: " in err and "Traceback" not in err


def test_the_tables_of_a_real_report(tmp_path, capsys, monkeypatch):
    """The producer's side: a report as `python -m fastopt --contended --json` writes it (every
    time faked, so that it takes seconds) fills every cell its sizes reach. The tests above feed
    hand-written JSON, which a field renamed in the report would not have failed (audit q29)."""
    import numpy as np

    from fastopt import __main__, _bench, _contended
    monkeypatch.setattr(_bench, "time_row", lambda fns, rounds, exact_rounds=False: {
        label: (1e-6 * (k + 1), 0.1) for k, label in enumerate(fns)})
    monkeypatch.setattr(_contended, "busy_core", lambda: contextlib.nullcontext(1))
    monkeypatch.setattr(_contended, "per_call_times",
                        lambda call, calls, threads, backend: np.full(calls, 1e-6 * threads))
    path = tmp_path / "run.json"
    assert __main__.main(["--kernels", "adam,sgd", "--sizes", "1e3,1e5", "--dtypes", "float32",
                          "--contended", "--no-coexistence", "--json", str(path)]) == 0
    capsys.readouterr()
    output = render(tmp_path, capsys, json.loads(path.read_text()))
    peers = importlib.util.find_spec("torch") is not None
    deepspeed = (peers and importlib.util.find_spec("deepspeed") is not None
                 and not os.environ.get("FASTOPT_NO_DEEPSPEED"))
    def values(cell, first=3):
        """The cell's first ``first`` values ("1.2 / 3 / - us", "1 us / 2 ms", "0.5 (0.7)")."""
        parts = cell.replace("(", " / ").replace(")", "").split(" / ")[:first]
        return [p.strip().removesuffix(" us").removesuffix(" ms") for p in parts]

    adam = rows(output, "Adam, float32")
    for label, cells in adam.items():
        # (one thread: sizes from 1e5 only; "fastopt / DeepSpeed / torch fused": the peers'
        # values where they are installed)
        installed = [True, deepspeed, peers] if "DeepSpeed" in label else [True] * 3
        known = [v for c in cells[label.startswith("one thread"):2]
                 for v, there in zip(values(c), installed) if there]
        assert "-" not in known, (label, cells)
    kernels = rows(output, "Every optimizer kernel")
    assert set(kernels) == {"adam", "sgd"}
    assert all(cells[0] != "-" and cells[3] != "-" for cells in kernels.values()), kernels
    for cells in rows(output, "One Adam step").values():     # (arena, roofline, then torch's)
        assert "-" not in cells[:2 + 4 * peers], cells
    for layer, cells in rows(output, "Layers").items():
        # (shape, fastopt, x roofline, numba backend, torch, x NumPy: torch has no backward
        # alone)
        assert "-" not in cells[1:4] + cells[5:], (layer, cells)
        assert (cells[4] != "-") == (peers and layer != "batch norm bwd"), (layer, cells)
    if peers:
        race = rows(output, "On torch tensors")
        for params in ("1e3", "1e5", "200x4096", "1000x64"):
            for cell in race[params]:       # (float32, bfloat16: fastopt / torch / DeepSpeed)
                assert "-" not in values(cell, 2 + deepspeed), race
