"""``python -m fastopt`` as a user drives it: in a subprocess, with tiny options (seconds).

The report's plumbing (where the JSON, the table and the progress line go) does not depend on
the backend, so these runs time the NumPy reference only.
"""
import errno
import importlib.util
import json
import os
import pty
import subprocess
import sys
import types

import pytest

import fastopt

TINY = ["--kernels", "sgd", "--sizes", "1e3,2e3", "--dtypes", "float32", "--backends", "numpy",
        "--rounds", "1", "--no-peers", "--no-groups", "--no-layers"]


def cli_env():
    """This process's environment, importing the fastopt under test (the checkout's src/ or
    the installed one) from any directory."""
    path = os.path.dirname(os.path.dirname(os.path.abspath(fastopt.__file__)))
    return dict(os.environ, FASTOPT_BACKEND="numpy",
                PYTHONPATH=os.pathsep.join([path, os.environ.get("PYTHONPATH", "")]))


def run_cli(*args, cwd=None, stderr_tty=False, base=TINY):
    """Run ``python -m fastopt TINY args``; returns (status, stdout, stderr) as text. With
    ``stderr_tty`` stderr is a pseudo-terminal, as when a user runs it in a shell."""
    cmd = [sys.executable, "-m", "fastopt", *base, *args]
    env = cli_env()
    if not stderr_tty:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env,
                              timeout=300)
        return done.returncode, done.stdout, done.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, cwd=cwd, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError as exc:          # EIO: the child closed the terminal
            if exc.errno != errno.EIO:
                raise
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    out = proc.stdout.read()
    proc.stdout.close()
    status = proc.wait(timeout=300)
    return status, out.decode(), b"".join(chunks).decode()


def test_json_dash_pipes_the_json_alone_and_reports_on_the_terminal():
    status, out, err = run_cli("--json", "-", stderr_tty=True)
    assert status == 0, err
    results = json.loads(out)                         # stdout holds the JSON and nothing else
    # (the roofline stream is a compiled kernel: without the extension the report says so)
    from fastopt._bench import stream_kernel
    streams = stream_kernel() is not None
    assert {r["contender"] for r in results["timings"]} >= (
        {"numpy", "roofline"} if streams else {"numpy"})
    assert streams or "no x roof: the roofline stream is a compiled kernel" in err
    assert results["machine"]["threads"] >= 1
    assert "fastopt report" in err and "speed (median" in err
    # progress on a terminal: a status line per section, with the time left after a row
    assert "\033[K" in err and "timing 2/2: sgd" in err and "s left" in err


def test_json_without_a_path_means_stdout():
    status, out, err = run_cli("--json")
    assert status == 0, err
    assert json.loads(out)["equivalence"] == []       # numpy alone: nothing to hold to itself
    assert "fastopt report" in err


def test_json_to_a_file_keeps_the_report_on_stdout_and_no_progress_when_piped(tmp_path):
    status, out, err = run_cli("--json", "results.json", cwd=tmp_path)
    assert status == 0, err
    assert "fastopt report" in out and "wrote results.json" in out
    assert json.loads((tmp_path / "results.json").read_text())["timings"]
    assert "\033" not in err and "\r" not in err and "left" not in err


def test_sizes_print_as_they_were_asked_for():
    """One digit had printed --sizes 1500,2500 both as 2e+03 (and 2**20 as 1e+06)."""
    from fastopt._bench import size_label
    assert [size_label(n) for n in (1000, 1500, 2500, 1e5, 2 ** 20, 10 ** 7)] == [
        "1e+03", "1500", "2500", "1e+05", "1048576", "1e+07"]


def test_header_says_threads_and_load_average():
    status, out, err = run_cli("--threads", "1")
    assert status == 0, err
    header = out.split("\n\n")[0]
    assert "1 thread used" in header
    if hasattr(os, "getloadavg"):
        load = [line for line in header.splitlines() if line.strip().startswith("load")]
        assert len(load) == 1 and "(1, 5, 15 min)" in load[0]
        assert len(load[0].split(":")[1].split("(")[0].split()) == 3


@pytest.mark.parametrize("output", [[], ["--json"]], ids=["report", "json"])
def test_a_closed_pipe_ends_quietly(output):
    proc = subprocess.Popen([sys.executable, "-m", "fastopt", *TINY, *output],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cli_env())
    proc.stdout.read(1)                               # as `| head -c 1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=300) in (0, 1)
    assert "Traceback" not in err


def test_an_unavailable_backend_is_a_usage_error_naming_it():
    status, out, err = run_cli("--backends", "nope")
    assert status == 2 and "'nope'" in err


def test_only_layers_times_the_layer_rows_alone_at_every_shape():
    import pytest
    from fastopt.__main__ import parse_args
    args = parse_args(["--only-layers"])
    assert args.kernels == [] and not args.no_layers
    assert args.no_groups and args.no_coexistence and args.no_single_thread and args.no_torch
    with pytest.raises(SystemExit):
        parse_args(["--only-layers", "--no-layers"])


def test_every_layer_row_runs_on_every_backend():
    """Each row's calls (the course's layout ``bn_fwd_bwd_t`` included) at a tiny shape."""
    import numpy as np
    from fastopt import _bench
    for name in _bench.LAYER_CASES:
        fns = _bench.layer_contenders(name, (6, 10), np.dtype(np.float32), fastopt.backends(),
                                      peers=False)
        for label, fn in fns.items():
            with fastopt.use_backend(getattr(fn, "backend", fastopt.get_backend())):
                fn()


@pytest.mark.parametrize("name", ["bn_fwd", "bn_fwd_bwd", "bn_fwd_bwd_t", "softmax"])
def test_torch_races_each_layer_row_on_the_same_data_in_its_own_best_form(name):
    """torch's batch norm of the course's layout, (features, m), is taken as one sample of
    ``features`` channels, (1, C, L), not the transposed view (torch's slow strided path:
    67 ms against 4.4 for the same elements as examples), and its softmax writes a reused
    output, as fastopt's: the same numbers as fastopt's row."""
    torch = pytest.importorskip("torch")
    import numpy as np
    from fastopt import _bench
    backend = fastopt.get_backend()
    fns = _bench.layer_contenders(name, (6, 10), np.dtype(np.float64), [backend])
    ours = fns[backend]()
    ours = ours[0] if isinstance(ours, tuple) else ours      # (the backward's dx)
    theirs = fns["torch"]()
    np.testing.assert_allclose(theirs.detach().numpy().reshape(ours.shape), ours, rtol=1e-10,
                               atol=1e-12)
    if name == "softmax":
        assert theirs.data_ptr() == fns["torch"]().data_ptr()     # the same output each call


def test_the_groups_race_torch_on_the_arrays_and_on_one_flat_tensor_as_the_arena_is():
    """The arena is one flat buffer swept by one kernel; torch fused over the same arrays as
    1000 tensors pays a per-tensor cost the arena never does: torch fused over one flat tensor
    of them all races too (torch-flat), the same Adam step."""
    torch = pytest.importorskip("torch")
    import numpy as np
    from fastopt import _bench
    shapes = [(3, 2), (5,), (4,)]
    fns = _bench.group_contenders(shapes, np.dtype(np.float32))
    tensors = {k: fns[k].__self__.param_groups[0]["params"] for k in ("torch-fused", "torch-flat")}
    assert [tuple(t.shape) for t in tensors["torch-fused"]] == shapes
    [flat] = tensors["torch-flat"]
    assert flat.shape == (15,) and fns["torch-flat"].__self__.defaults["fused"]
    for _ in range(3):
        fns["torch-fused"](), fns["torch-flat"]()
    torch.testing.assert_close(torch.cat([t.ravel() for t in tensors["torch-fused"]]), flat,
                               rtol=0, atol=0)


def test_the_groups_roofline_streams_adams_arrays_with_the_torch_contenders_too(monkeypatch):
    """The roofline of a group row streams 4 arrays of the group's elements (Adam's 4 read, 3
    written): with torch installed, the torch-flat contender's arrays had taken the name the
    roofline's closure read, and it streamed 2 (3/7 of the bytes)."""
    pytest.importorskip("torch")
    import numpy as np
    from fastopt import _bench
    streamed = []
    monkeypatch.setattr(_bench, "stream_kernel", lambda name="stream": (
        lambda *arrays: streamed.append([a.size for a in arrays])))
    fns = _bench.group_contenders([(3, 2), (5,)], np.dtype(np.float32))
    assert "torch-flat" in fns
    fns["roofline"]()
    assert streamed == [[11] * 4]


def test_the_commit_recorded_is_fastopts_own_not_a_repository_it_is_installed_in(tmp_path):
    """fastopt installed inside another git repository (a .venv in a project) recorded that
    project's commit as the code it timed."""
    import shutil
    from fastopt import _bench
    if shutil.which("git") is None:
        pytest.skip("no git")
    project = tmp_path / "project"
    shutil.copytree(os.path.dirname(fastopt.__file__), project / ".venv" / "fastopt",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    (project / ".gitignore").write_text(".venv\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    for command in (["init", "-q"], ["add", ".gitignore"],
                    ["-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "x"]):
        subprocess.run(["git", "-C", str(project), *command], check=True, env=env)
    # source_commit asks git about the directory of the file it is defined in: the copy's
    in_project = types.FunctionType(_bench.source_commit.__code__, dict(
        _bench.source_commit.__globals__,
        __file__=str(project / ".venv" / "fastopt" / "_bench.py")))
    assert in_project() is None


def test_torch_race_rows():
    """``--torch``: only the race on torch tensors (fastopt.torch alone under --no-peers), a
    row per size and group (--quick: the 1000x64 one), float32 and bfloat16. Skips without
    torch. Costs what the other CLI runs do plus importing torch (~15 s on a busy 2-core VM)."""
    import pytest
    pytest.importorskip("torch")
    status, out, _ = run_cli("--torch", "--quick", "--json", "-",    # (Adam: no --kernels,
                             base=[a for a in TINY if a not in ("--kernels", "sgd",  # --dtypes;
                                                                "--dtypes", "float32",  # the
                                                                "--no-groups")])  # 1000x64 row)
    assert status == 0
    rows = json.loads(out)["torch"]
    assert {(r["params"], r["dtype"]) for r in rows} == {
        (p, d) for p in ("1e+03", "2e+03", "1000x64") for d in ("float32", "bfloat16")}
    assert {r["contender"] for r in rows} == {"fastopt.torch"}
    assert all(r["time"] > 0 for r in rows)


@pytest.mark.parametrize("argv,groups", [
    (["--torch"], ["1x1000", "200x4096", "1000x64"]), (["--torch", "--quick"], ["1000x64"]),
    (["--torch", "--no-groups"], []), (["--torch", "--quick", "--no-groups"], []),
    (["--no-groups"], []), ([], ["1x1000", "200x4096", "1000x64"]),
])
def test_torch_race_times_the_groups_unless_no_groups(argv, groups):
    """--no-groups was taken and ignored by the torch race (alone with --torch, or in the
    default report): it timed the parameter groups still."""
    from fastopt.__main__ import parse_args, torch_race_specs
    if "--torch" in argv and importlib.util.find_spec("torch") is None:
        pytest.skip("--torch needs torch")
    args = parse_args(argv + ["--sizes", "1e3"])
    assert torch_race_specs(args) == [1000] + groups


@pytest.mark.parametrize("argv,named", [
    (["--sizes", "0"], "--sizes"), (["--sizes", "-5"], "--sizes"), (["--sizes", "inf"], "--sizes"),
    (["--sizes", "1e30"], "--sizes"), (["--sizes", "1.5"], "--sizes"),
    (["--sizes", "1e3,1e12"], "--sizes"),
    (["--sizes", "abc"], "--sizes"), (["--threads", "0"], "--threads"),
    (["--threads", "-1"], "--threads"), (["--threads", "300"], "--threads"),
    (["--rounds", "0"], "--rounds"), (["--dtypes", "float16"], "--dtypes"),
    (["--dtypes", "bogus"], "--dtypes"), (["--kernels="], "kernel"),
    (["--json", "/nonexistent/dir/x.json"], "--json"),
    (["--kernels", "sdg"], "argument --kernels: unknown kernel 'sdg'"),
    (["--backends", "cyton"], "argument --backends: backend 'cyton'"),
])
def test_bad_option_values_are_usage_errors_naming_the_option(argv, named, capsys):
    """Caught before anything is timed (they had failed with tracebacks, some after part of
    the report had run)."""
    from fastopt.__main__ import parse_args
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--quick", "--full"], ["--torch", "--no-torch"], ["--torch", "--mpi"],
    ["--only-layers", "--torch"], ["--only-layers", "--mpi"], ["--only-layers", "--kernels", "sgd"],
    ["--only-layers", "--plot", "p.png"], ["--torch", "--plot", "p.png"],
    ["--mpi", "--plot", "p.png"],
    ["--only-layers", "--sizes", "1e3"], ["--torch", "--contended"], ["--mpi", "--contended"],
    ["--mpi", "--quick"], ["--mpi", "--full"],
    ["--torch", "--kernels", "sgd"], ["--mpi", "--kernels", "sgd"],
    ["--only-layers", "--contended"], ["--torch", "--dtypes", "float32"],
    ["--mpi", "--rounds", "3"], ["--only-layers", "--quick"],
])
def test_options_that_contradict_each_other_are_usage_errors(argv, capsys):
    """One of the two had been silently ignored (--quick won over --full for the sizes but
    not for the layer shapes; --torch ran the torch race despite --no-torch or --only-layers;
    --mpi ignored --torch; --only-layers dropped the --kernels asked for). --plot beside
    --only-layers timed every layer shape, then failed with a traceback plotting no rows (beside
    --torch or --mpi it wrote nothing); --torch and --mpi ignored --contended, --mpi --quick
    and --full, and --only-layers the --sizes asked for. --torch and --mpi (Adam only) ignored
    --kernels; --only-layers beside --contended timed Adam rows too. --torch (float32 and
    bfloat16 always) ignored --dtypes, and --mpi (10 steps a row, 4 from 2e6 elements)
    --rounds. --quick dropped four of --only-layers' six layers ("at every shape")."""
    from fastopt.__main__ import parse_args
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    flags = [a for a in argv if a.startswith("--")]
    assert f"{flags[0]} and {flags[1]} exclude each other" in capsys.readouterr().err


def test_mpi_without_mpi4py_is_a_usage_error(monkeypatch, capsys):
    """--mpi where mpi4py is not installed ended in ModuleNotFoundError's traceback."""
    from fastopt.__main__ import parse_args
    monkeypatch.setitem(sys.modules, "mpi4py", None)     # as if not installed
    with pytest.raises(SystemExit) as exc:
        parse_args(["--mpi", "--sizes", "1e3"])
    assert exc.value.code == 2
    assert "argument --mpi: needs mpi4py" in capsys.readouterr().err


def test_torch_without_torch_is_a_usage_error(monkeypatch, capsys):
    """--torch where torch is not installed printed the race's heading, "(torch is not
    installed)" and exited 0, an empty race in its JSON."""
    from fastopt.__main__ import parse_args
    monkeypatch.setitem(sys.modules, "torch", None)       # as if not installed
    with pytest.raises(SystemExit) as exc:
        parse_args(["--torch", "--sizes", "1e3"])
    assert exc.value.code == 2
    assert "argument --torch: needs torch" in capsys.readouterr().err


def test_fastopt_torch_without_torch_says_which_extra_to_install(monkeypatch):
    import importlib
    monkeypatch.setitem(sys.modules, "torch", None)       # as if not installed
    monkeypatch.delitem(sys.modules, "fastopt.torch", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'fastopt\[torch\]'") as exc:
        importlib.import_module("fastopt.torch")
    assert exc.value.name == "torch"


def test_fastopt_torch_on_a_torch_older_than_it_needs_says_so(monkeypatch):
    """The extra asked for torch >= 2.1, where torch.utils.swap_tensors (2.3) is missing: the
    first step after a load_state_dict raised AttributeError with the parameters changed."""
    torch = pytest.importorskip("torch")
    import importlib
    monkeypatch.delattr(torch.utils, "swap_tensors")       # as on torch 2.2
    monkeypatch.delitem(sys.modules, "fastopt.torch", raising=False)
    with pytest.raises(ImportError, match=r"fastopt.torch needs torch >= 2.3, found "):
        importlib.import_module("fastopt.torch")


def test_plot_without_matplotlib_is_a_usage_error(monkeypatch, capsys, tmp_path):
    """It was found missing after the whole report had run (no plot written)."""
    from fastopt.__main__ import parse_args
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(SystemExit) as exc:
        parse_args(["--plot", str(tmp_path / "p.png")])
    assert exc.value.code == 2
    assert "argument --plot: needs matplotlib" in capsys.readouterr().err


def test_plot_to_stdout_is_a_usage_error_not_a_file_named_dash(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from fastopt.__main__ import parse_args
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        parse_args(["--plot", "-"])
    assert exc.value.code == 2 and "argument --plot: a file" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_wide_values_keep_their_columns_apart(monkeypatch, capsys):
    """A contender 10000x its roofline printed its GB/s and its ratio as one number."""
    from fastopt import __main__, _bench
    times = {"cython": 1e-6, "numpy": 1e-5, "roofline": 1e-7, "slow": 2.0}
    monkeypatch.setattr(_bench, "time_row", lambda fns, rounds, exact_rounds: {
        k: (t, 0.01) for k, t in times.items()})
    threads = fastopt.get_num_threads()
    try:
        assert __main__.main(["--kernels", "sgd", "--sizes", "1e3", "--dtypes", "float32",
                              "--threads", "1", "--no-peers", "--no-layers", "--no-groups",
                              "--no-single-thread", "--no-coexistence"]) == 0
    finally:
        fastopt.set_num_threads(threads)      # (--threads sets the process's count)
    out = capsys.readouterr().out
    assert "1 thread used" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("  sgd  ")
            and "float32" in line]
    slow = [r for r in rows if "slow" in r]
    assert len(rows) == 4 and slow
    # kernel dtype size contender time unit spread x-ref GB/s x-roof
    assert all(len(r) == 10 for r in rows), rows
    assert slow[0][-1] == "20000000.00"


@pytest.mark.parametrize("asked", [False, True])
def test_rounds_and_sizes_asked_for_reach_every_timed_section(monkeypatch, capsys, tmp_path,
                                                             asked):
    """--rounds given is what every row gets (rows with a call over 10 ms had been cut to 3,
    silently), and --contended takes --sizes and --rounds (it had timed 1e3, 1e5 and 1e6 in 3
    rounds whatever was asked); by default, its own sizes and rounds. The JSON says how the
    run was made: its options, fastopt's version and the commit (it had neither)."""
    from fastopt import __main__, _bench, _contended
    timed, contended = [], []

    def time_row(fns, rounds, exact_rounds):
        timed.append((rounds, exact_rounds))
        return {k: (1e-6, 0.0) for k in fns}

    monkeypatch.setattr(_bench, "time_row", time_row)
    monkeypatch.setattr(_contended, "rows", lambda backend, **kw: contended.append(kw) or [])
    options = ["--kernels", "sgd", "--dtypes", "float32", "--no-peers", "--no-layers",
               "--no-coexistence", "--contended", "--threads", "1"]
    options += ["--sizes", "1e3,2e3", "--rounds", "7"] if asked else ["--quick"]
    options += ["--json", str(tmp_path / "run.json")]
    threads = fastopt.get_num_threads()
    try:
        assert __main__.main(options) == 0
    finally:
        fastopt.set_num_threads(threads)
    capsys.readouterr()
    assert len(timed) >= 3 and set(timed) == {(7, True) if asked else (3, False)}
    assert contended == [dict(sizes=[1000, 2000], rounds=7) if asked else {}]
    machine = json.loads((tmp_path / "run.json").read_text())["machine"]
    assert machine["options"] == options and machine["fastopt"] == fastopt.__version__
    assert "commit" in machine


def test_names_may_have_spaces_after_their_commas_as_sizes_may():
    from fastopt.__main__ import parse_args
    args = parse_args(["--kernels", "adam, sgd", "--dtypes", "float32, float64",
                       "--backends", "numpy, " + fastopt.backends()[0], "--sizes", "1e3, 1e4"])
    assert args.kernels == ["adam", "sgd"] and len(args.dtypes) == 2
    assert args.backends == ["numpy", fastopt.backends()[0]]


def test_an_empty_backends_list_is_a_usage_error_not_every_backend(capsys):
    from fastopt.__main__ import parse_args
    with pytest.raises(SystemExit) as exc:
        parse_args(["--backends", ""])
    assert exc.value.code == 2 and "backend ''" in capsys.readouterr().err


def test_output_paths_that_cannot_be_written_are_usage_errors(tmp_path, capsys):
    """--json or --plot naming a directory, an empty path, or a place nothing can be created
    in: a usage error before anything is timed (the report had run for minutes, then failed
    with a traceback writing the JSON, or wrote no JSON at all for an empty path). --plot's
    directory was not checked either. Nothing is created, an existing file is not changed."""
    from fastopt.__main__ import parse_args
    unwritable = ["/proc/fastopt.json"] if os.path.isdir("/proc/self") else []
    for option in ("--json", "--plot"):
        for path in [str(tmp_path), str(tmp_path) + os.sep, "", str(tmp_path / "no" / "x"),
                     *unwritable]:
            with pytest.raises(SystemExit) as exc:
                parse_args([option, path])
            assert exc.value.code == 2
            assert f"argument {option}: " in capsys.readouterr().err
    # a link to a file in no directory (open() would create the target, and cannot): the
    # up-front check had taken it and the final write raised FileNotFoundError
    # (and one into a directory nothing can be created in, and a loop of links)
    links = {"dangling.png": "/nonexistent/fastopt/x.png", "loop.png": "loop.png"}
    if os.path.isdir("/proc/self"):
        links["proc.png"] = "/proc/fastopt.png"
    for name, target in links.items():
        (tmp_path / name).symlink_to(target)
    for option in ("--json", "--plot"):
        if option == "--plot" and not importlib.util.find_spec("matplotlib"):
            continue
        for name in links:
            with pytest.raises(SystemExit) as exc:
                parse_args([option, str(tmp_path / name)])
            assert exc.value.code == 2
            assert f"argument {option}: cannot write" in capsys.readouterr().err
    for name in links:
        (tmp_path / name).unlink()
    kept = tmp_path / "kept.json"
    kept.write_text("old")
    # a good --plot path parses where matplotlib is installed (else --plot is refused for that)
    plot = str(tmp_path / "new.png") if importlib.util.find_spec("matplotlib") else None
    args = parse_args(["--json", str(kept), *(["--plot", plot] if plot else [])])
    assert args.json == str(kept) and args.plot == plot
    assert kept.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "kept.json"]


def test_a_size_whose_row_would_not_fit_in_half_the_memory_is_a_usage_error(
        monkeypatch, capsys):
    """--sizes had no bound below 2^40: a typo (1e12 for 1e6) went on to allocate terabytes.
    A row holds the largest kernel's arrays (param, grad, two states: 32 bytes an element in
    float64) for every contender (the backends, the roofline, four torch/deepspeed peers:
    7 or 8 sets here), about 250 bytes an element: with 2 GiB of memory, 1e6 (~250 MB) fits
    in half of it and 1e7 (~2.5 GB) does not; with one backend, no peers and float32 (2 sets
    of 16 bytes an element) 2e7 (~640 MB) does."""
    from fastopt.__main__ import parse_args
    sysconf = os.sysconf
    memory = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 2 * 2 ** 30 // 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: memory.get(name) or sysconf(name))
    assert parse_args(["--sizes", "1e6"]).sizes == [1_000_000]
    with pytest.raises(SystemExit) as exc:
        parse_args(["--sizes", "1e3,1e7"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --sizes: 10,000,000 elements is more than " in err and "half" in err
    assert parse_args(["--sizes", "2e7", "--backends", "numpy", "--no-peers",
                       "--dtypes", "float32"]).sizes == [20_000_000]


def test_repeated_sizes_are_timed_once_in_the_order_given():
    """--sizes 1e3,1e5,1000 timed the 1e3 rows twice."""
    from fastopt.__main__ import parse_args
    assert parse_args(["--sizes", "1e5,1e3,100000,1000,2e3"]).sizes == [100_000, 1_000, 2_000]


def test_repeated_kernels_dtypes_and_backends_are_timed_once_in_the_order_given():
    """--kernels sgd,sgd --dtypes float32,float32 timed every sgd row four times (and the
    single-thread row printed each cell twice); --backends numba,numba timed numba twice."""
    from fastopt.__main__ import parse_args
    args = parse_args(["--kernels", "adam,sgd,adam", "--dtypes", "float64,float32,float64",
                       "--backends", "numpy,numpy"])
    assert args.kernels == ["adam", "sgd"] and args.backends == ["numpy"]
    assert [str(d) for d in args.dtypes] == ["float64", "float32"]


def test_rounds_asked_for_are_kept_with_quick():
    """--quick --rounds 10 timed 3 rounds, silently (3 is --quick's default, not a cap)."""
    from fastopt.__main__ import parse_args
    assert parse_args(["--quick", "--rounds", "10"]).rounds == 10
    assert parse_args(["--quick"]).rounds == 3 and parse_args([]).rounds == 5


def test_good_option_values_parse():
    from fastopt.__main__ import parse_args
    args = parse_args(["--sizes", "1e3,100000", "--threads", "2", "--rounds", "1",
                       "--dtypes", "float32"])
    assert args.sizes == [1000, 100000] and args.threads == 2 and args.rounds == 1
    assert [str(d) for d in args.dtypes] == ["float32"]


def _fake_clock(monkeypatch):
    """time_row's clock, installed in fastopt._bench: ``[seconds]``, which only the test
    moves."""
    from fastopt import _bench
    clock = [0.0]
    monkeypatch.setattr(_bench, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    return clock


def _calls_since_settle(events):
    """Calls in ``events`` since its last "settle", the last one included (0 before any)."""
    return len(events) - 1 - max((i for i, e in enumerate(events) if e == "settle"),
                                 default=len(events) - 1)


def test_each_timed_batch_follows_settling_and_an_untimed_batch(monkeypatch):
    """time_row: after a warm-up and 3 sizing calls, every round settles, makes an untimed
    batch (the first calls after other work run cold) and then the timed batch, both as long
    as the fastest sizing call gives. On a clock that each call moves by a known amount: the
    50 calls after each settle cost 1 ms (cold), later ones 10 us."""
    from fastopt import _bench
    clock, events = _fake_clock(monkeypatch), []
    costs = iter([1.0, 0.5, 2e-5, 1e-3])     # warm-up, 3 sizing calls (fastest: 20 us)

    def contender():
        events.append("call")
        since_settle = _calls_since_settle(events)
        clock[0] += next(costs, 1e-3 if since_settle <= 50 else 1e-5)

    monkeypatch.setattr(_bench, "settle", lambda: events.append("settle"))
    timed = _bench.time_row({"c": contender}, rounds=3, target=1e-3)
    assert events[:4] == ["call"] * 4 and events[4] == "settle"
    rounds = "".join("S" if e == "settle" else "c" for e in events[4:]).split("S")[1:]
    assert rounds == ["c" * (50 + 50)] * 3      # 1 ms / 20 us untimed, then as many timed
    assert timed["c"] == (pytest.approx(1e-5, rel=1e-9), 0.0)    # the cold calls left out


def test_each_round_starts_one_contender_later(monkeypatch):
    """time_row: the contenders in turn, from a later one each round (a fixed order had the
    first backend always follow the last round's torch call)."""
    from fastopt import _bench
    clock, events = _fake_clock(monkeypatch), []

    def make(label):
        def contender():
            clock[0] += 1e-3
            events.append(label)
        return contender

    monkeypatch.setattr(_bench, "settle", lambda: events.append("settle"))
    monkeypatch.setattr(_bench, "WARM_SECONDS", 0.0)
    monkeypatch.setattr(_bench, "WARM_CALLS", 1)
    _bench.time_row({c: make(c) for c in "abc"}, rounds=4, target=1e-3)
    # after the warm-up and 3 sizing calls each: per contender a settle, one untimed call and
    # one timed call
    assert "".join(e[0].upper() if e == "settle" else e for e in events[12:]) == (
        "SaaSbbScc" "SbbSccSaa" "SccSaaSbb" "SaaSbbScc")
    assert _bench.time_row({}, rounds=4) == {}       # (an empty row: it divided by zero)


def test_a_row_of_calls_of_20_us_or_more_is_timed_call_by_call_and_a_row_with_shorter_by_batch(
        monkeypatch):
    """time_row: a contender of 122 us a call (2^-13 s: 8 calls a batch) whose first timed
    call of every round is caught by a burst of other work (7.8 ms): alone in its row, its
    median is the 122 us of the calls the bursts missed (batch means would all read 1.1 ms).
    Beside a contender of 15 us (65 calls a batch) every contender of the row is timed per
    batch, each batch one sample, so that the row's ratios compare one statistic (each had
    been timed by its own length: the 122 us one call by call, the 15 us one by the batch). On
    a clock each call moves (binary fractions of a second: the sums are exact)."""
    from fastopt import _bench
    clock = _fake_clock(monkeypatch)
    burst = 2.0 ** -7

    def make(label, cost, batch, calls):
        def contender():
            k = calls[label]
            calls[label] += 1
            # a warm-up and 3 sizing calls, then per round an untimed batch and the batch
            clock[0] += burst if k >= 4 and (k - 4) % (2 * batch) == batch else cost
        return contender

    monkeypatch.setattr(_bench, "settle", lambda: None)
    monkeypatch.setattr(_bench, "WARM_SECONDS", 0.0)    # untimed batches of one batch's calls
    calls = {"slow": 0}
    timed = _bench.time_row({"slow": make("slow", 2.0 ** -13, 8, calls)}, rounds=3,
                            target=1e-3)
    assert calls == {"slow": 4 + 3 * 16}
    assert timed["slow"] == (2.0 ** -13, 0.0)
    calls = {"slow": 0, "fast": 0}
    timed = _bench.time_row({"slow": make("slow", 2.0 ** -13, 8, calls),
                             "fast": make("fast", 2.0 ** -16, 65, calls)}, rounds=3, target=1e-3)
    assert calls == {"slow": 4 + 3 * 16, "fast": 4 + 3 * 130}
    assert timed["slow"] == ((burst + 7 * 2.0 ** -13) / 8, 0.0)
    assert timed["fast"] == (pytest.approx((burst + 64 * 2.0 ** -16) / 65, rel=1e-12), 0.0)


def test_rows_of_calls_over_10_ms_get_3_rounds_unless_the_rounds_are_asked_for(monkeypatch):
    """time_row: a row with a call over 10 ``target`` gets at most 3 rounds by default (the
    NumPy reference at 1e7 would make a default run last many minutes) and every round asked
    for with ``exact_rounds`` (``--rounds`` given: the layer table's "--rounds 15" had run 3).
    The spread is the interquartile range, interpolated between the samples."""
    from fastopt import _bench
    clock, settles = _fake_clock(monkeypatch), []
    timed_calls = [2.0 ** -6, 2.0 ** -5, 2.0 ** -4, 2.0 ** -6, 2.0 ** -5]
    # a warm-up and 3 sizing calls, then per round one untimed call and one timed call
    costs = [2.0 ** -6] * 4 + [c for t in timed_calls for c in (2.0 ** -6, t)]

    def row(**kwargs):
        settles.clear()
        cost = iter(costs)

        def contender():
            clock[0] += next(cost)
        return _bench.time_row({"c": contender}, rounds=5, target=1e-3, **kwargs)["c"]

    monkeypatch.setattr(_bench, "settle", lambda: settles.append(1))
    monkeypatch.setattr(_bench, "WARM_CALLS", 0)
    monkeypatch.setattr(_bench, "WARM_SECONDS", 0.0)
    assert row() == (2.0 ** -5, 0.75) and len(settles) == 3     # over 3 samples: half the range
    assert row(exact_rounds=True) == (2.0 ** -5, 0.5) and len(settles) == 5


def test_the_untimed_batch_lasts_warm_seconds_so_the_slow_calls_after_settling_stay_out(
        monkeypatch):
    """time_row: calls are slow (2^-11 s) for the first 2^-7 s after each settle, then fast
    (2^-13 s). The untimed batch of 8 calls (1 ms / the fastest sizing call) would end after
    2^-8 s, inside the slow stretch, and the timed batch would read 2^-11: it goes on until
    WARM_SECONDS (2^-6 s here) have passed, and the timed calls read 2^-13. On a clock each call
    moves (binary fractions: the sums are exact)."""
    from fastopt import _bench
    clock, settled, per_round = _fake_clock(monkeypatch), [float("-inf")], []

    def settle():
        settled[0] = clock[0]
        per_round.append(0)

    def contender():
        if per_round:
            per_round[-1] += 1
        clock[0] += 2.0 ** -11 if clock[0] - settled[0] < 2.0 ** -7 else 2.0 ** -13

    monkeypatch.setattr(_bench, "settle", settle)
    monkeypatch.setattr(_bench, "WARM_SECONDS", 2.0 ** -6)
    timed = _bench.time_row({"c": contender}, rounds=3, target=1e-3)
    # per round: 16 slow calls (2^-7 s), 64 fast ones to 2^-6 s, then the 8 timed
    assert per_round == [16 + 64 + 8] * 3
    assert timed["c"] == (2.0 ** -13, 0.0)


def test_the_untimed_batch_makes_warm_calls_so_the_slow_first_calls_of_a_long_call_stay_out(
        monkeypatch):
    """time_row: a contender of 2^-9 s a call (2 ms, one a batch) whose first 4 calls after each
    settle take 2^-7 s (a call over many MB, after other work). 5 ms of untimed calls would be
    one slow call, and the timed call would read slow: the untimed batch makes WARM_CALLS (5)
    calls, and the timed call reads 2^-9. A contender of 0.15625 s a call ends its untimed batch
    at WARM_CAP (0.2 s): 2 calls. On a clock each call moves (binary fractions: sums exact)."""
    from fastopt import _bench
    clock, events = _fake_clock(monkeypatch), []

    def make(label, cost, slow_calls):
        def contender():
            events.append(label)
            since_settle = _calls_since_settle(events)
            clock[0] += 2.0 ** -7 if 0 < since_settle <= slow_calls else cost
        return contender

    monkeypatch.setattr(_bench, "settle", lambda: events.append("settle"))
    timed = _bench.time_row({"long": make("long", 2.0 ** -9, 4), "huge": make("huge", 0.15625, 0)},
                            rounds=3, target=1e-3)
    rounds = " ".join(events[8:]).split("settle")[1:]
    long, huge = ["long"] * (5 + 1), ["huge"] * (2 + 1)      # (each round starts one later)
    assert [r.split() for r in rounds] == [long, huge, huge, long, long, huge]
    assert timed["long"] == (2.0 ** -9, 0.0) and timed["huge"] == (0.15625, 0.0)


BUSY_SCRIPT = """
import os, sys, time
from fastopt import _contended
with _contended.busy_core() as cpu:
    print(*open(f"/proc/self/task/{os.getpid()}/children").read().split(), flush=True)
    time.sleep(60)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _default_sigint():
    """In the child before exec: SIGINT as a terminal gives it. A shell without job control
    starts background commands (a CI script run with ``&``) with SIGINT ignored, which exec
    keeps and Python then leaves ignored: Ctrl-C could not be tested there."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux's /proc and two CPUs (else no busy process is started)")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT to the group"])
def test_the_busy_process_of_contended_ends_with_the_report(how):
    """--contended's busy loop outlived a report killed by SIGTERM (or SIGHUP, SIGKILL), spinning
    on a core for good and holding the report's stdout, so that a reader of the pipe waited on
    it; on Ctrl-C it printed a KeyboardInterrupt traceback of its own beside the report's."""
    import signal
    import time
    proc = subprocess.Popen([sys.executable, "-c", BUSY_SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(),
                            start_new_session=True, preexec_fn=_default_sigint)
    busy = [int(pid) for pid in proc.stdout.readline().split()]
    try:
        assert len(busy) == 1 and _alive(busy[0])
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=20)     # the pipe closes: nothing holds it
        deadline = time.monotonic() + 5
        while _alive(busy[0]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _alive(busy[0])
        assert err.count("Traceback") <= 1          # the script's own, not the busy loop's
    finally:
        proc.kill()
        for pid in busy:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_ctrl_c_ends_the_report_with_a_line_and_status_130(tmp_path):
    """Ctrl-C printed a KeyboardInterrupt traceback (from wherever the timing loop was)."""
    import signal
    cmd = [sys.executable, "-m", "fastopt", *TINY, "--rounds", "100000", "--json",
           str(tmp_path / "r.json")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(cli_env(), PYTHONUNBUFFERED="1"),
                            preexec_fn=_default_sigint)
    try:
        for line in proc.stdout:
            if line.startswith("speed (median"):          # timing has started
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err and "interrupted (no JSON or plot written)" in err
    assert not (tmp_path / "r.json").exists()


def test_contended_on_one_cpu_says_no_busy_process_held_a_core(monkeypatch, capsys):
    """Where the report may run on one CPU only (taskset -c 0) no busy process is started, but
    the heading said one held a core over uncontended times."""
    from fastopt import _contended
    from fastopt.__main__ import _fmt_t
    monkeypatch.setattr(_contended.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setitem(_contended.CALLS, 1_000, 3)
    table = _contended.rows("numpy", threads=1, sizes=(1_000,), rounds=1)
    assert {r["busy_cpu"] for r in table} == {None}
    _contended.print_rows(table, _fmt_t, "numpy")
    heading = capsys.readouterr().out.strip().splitlines()[0]
    assert "UNCONTENDED" in heading and "no busy process" in heading
    assert "while a busy process holds" not in heading


def test_contended_rows_choose_the_backend_around_the_timed_calls_in_rotating_order(
        monkeypatch):
    """A ``use_backend`` inside every timed call had added its own cost to each ~1 us call
    at 1e3 (the audit); each round now also starts one contender later."""
    import contextlib
    from fastopt import _contended
    entered, seen = [], []
    real_use = _contended._backend.use_backend

    @contextlib.contextmanager
    def use_backend(name):
        entered.append(name)
        with real_use(name):
            yield
    monkeypatch.setattr(_contended._backend, "use_backend", use_backend)
    monkeypatch.setattr(_contended.ops, "adam_step_", lambda *a, **k: seen.append(
        (fastopt.get_backend(), fastopt.get_num_threads())))
    monkeypatch.setattr(_contended.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setitem(_contended.CALLS, 1_000, 15)
    backend = fastopt.backends()[0]
    table = _contended.rows(backend, threads=2, sizes=(1_000,), rounds=3)
    # (numpy 1T, backend 1T, backend 2T) in turn, from a later one each round: 3 warm-up and
    # 5 timed calls a batch, one use_backend a batch
    turn = [("numpy", 1), (backend, 1), (backend, 2)]
    batches = [turn[r:] + turn[:r] for r in range(3)]
    assert seen == [c for order in batches for c in order for _ in range(8)]
    assert entered == [b for order in batches for b, _ in order]
    assert [r["calls"] for r in table] == [15, 15, 15]


def test_plot_paths_are_named_as_written_and_their_format_checked_first(tmp_path, capsys):
    """--plot out.xyz timed the whole report, then ended in savefig's ValueError; --plot out
    wrote out.png and said "wrote out"; --plot naming --json's file replaced the JSON."""
    pytest.importorskip("matplotlib")
    from fastopt.__main__ import parse_args
    for argv in (["--plot", str(tmp_path / "out.xyz")],
                 ["--plot", str(tmp_path / "r.json"), "--json", str(tmp_path / "r.json")]):
        with pytest.raises(SystemExit) as exc:
            parse_args(argv)
        assert exc.value.code == 2 and "argument --plot: " in capsys.readouterr().err
    assert parse_args(["--plot", str(tmp_path / "out")]).plot == str(tmp_path / "out.png")
    # (savefig writes out.png for "out." too: the report had said out..png)
    assert parse_args(["--plot", str(tmp_path / "out.")]).plot == str(tmp_path / "out.png")
    assert parse_args(["--plot", str(tmp_path / "o.SVG")]).plot == str(tmp_path / "o.SVG")
    status, out, err = run_cli("--plot", "out", cwd=tmp_path)
    assert status == 0, err
    assert "wrote out.png" in out and os.listdir(tmp_path) == ["out.png"]


def test_a_plot_format_matplotlib_cannot_write_here_is_a_usage_error(tmp_path, capsys):
    """--plot out.pgf (a format matplotlib lists, which lays text out with TeX) passed the
    checks where no TeX is installed, and ended the run, after all the timing, in savefig's
    RuntimeError (the failed-checks line and status with it)."""
    pytest.importorskip("matplotlib")
    import shutil
    if shutil.which("xelatex"):
        pytest.skip("TeX is installed: matplotlib writes pgf here")
    from fastopt.__main__ import parse_args
    with pytest.raises(SystemExit) as exc:
        parse_args(["--plot", str(tmp_path / "out.pgf")])
    assert exc.value.code == 2
    assert "argument --plot: matplotlib cannot write 'pgf' files here" in (
        capsys.readouterr().err)
    assert os.listdir(tmp_path) == []


def test_mpi_where_mpi4py_cannot_load_an_mpi_library_is_an_error_not_a_traceback(tmp_path):
    """mpi4py installed without an MPI library it loads: --mpi passed the checks (mpi4py
    imports) and ended in RuntimeError's traceback at ``from mpi4py import MPI``."""
    pytest.importorskip("mpi4py")
    env = dict(cli_env(), MPI4PY_LIBMPI=str(tmp_path / "libmpi-nowhere.so"))
    # (the PyPI wheels' loader reads MPI4PY_LIBMPI; an mpi4py built against one MPI does not,
    # and would run the benchmark)
    if subprocess.run([sys.executable, "-c", "from mpi4py import MPI"], env=env,
                      capture_output=True, timeout=120).returncode == 0:
        pytest.skip("this mpi4py does not take MPI4PY_LIBMPI")
    done = subprocess.run([sys.executable, "-m", "fastopt", "--mpi", "--sizes", "1e3"],
                          capture_output=True, text=True, env=env, timeout=300)
    status, err = done.returncode, done.stderr
    assert status == 2 and "Traceback" not in err, err
    assert "argument --mpi: mpi4py cannot start MPI" in err


def test_rows_timing_fastopt_without_a_backend_run_on_one_of_backends():
    """The group rows (arena, list, per-array) run on the active backend: with --backends
    numba they timed the Cython one (13 us where numba's arena takes 124 us), unnamed."""
    compiled = [b for b in fastopt.backends() if b != "numpy"]
    if not compiled:
        pytest.skip("no compiled backend")
    done = subprocess.run(
        [sys.executable, "-m", "fastopt", "--kernels", "sgd", "--sizes", "1e3", "--dtypes",
         "float32", "--backends", compiled[-1], "--rounds", "1", "--quick", "--no-peers",
         "--no-layers", "--no-single-thread"], capture_output=True, text=True, timeout=300,
        env=cli_env())                                   # (FASTOPT_BACKEND=numpy)
    assert done.returncode == 0, done.stderr
    assert f"backends: {compiled[-1]} (active: {compiled[-1]})" in done.stdout
    assert f"many arrays, fastopt on {compiled[-1]} " in done.stdout
