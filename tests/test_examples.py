"""Smoke tests: each example runs with few epochs and learns what it should."""
import os
import sys

import numpy as np
import pytest

import fastopt as fo

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))


def test_moons_adam_beats_gradient_descent():
    pytest.importorskip("sklearn")
    import moons
    results = moons.run(epochs=1000)
    assert results["adam"][0] > results["gradient descent"][0] + 0.1
    assert results["adam"][0] > 0.85


def test_moons_final_cost_is_the_trained_models(capsys):
    """The table's "final cost" is the trained parameters' (it had printed the cost kept for
    epoch 0, 1000, ...: epoch 0's, before any training, for every run under 1001 epochs)."""
    pytest.importorskip("sklearn")
    import moons
    finals = []
    for epochs in (1, 300):
        moons.run(epochs=epochs)
        line = [s for s in capsys.readouterr().out.splitlines() if "adam + lr decay" in s][0]
        finals.append(float(line.split("final cost")[1]))
    assert finals[1] < finals[0] - 0.1


def test_digits_reaches_high_held_out_accuracy():
    pytest.importorskip("sklearn")
    import digits
    acc, loss = digits.run(epochs=8, quiet=True)
    assert acc >= 0.9 and loss < 0.3


def test_swap_backend_gives_the_same_loss_everywhere(capsys):
    import swap_backend
    results = swap_backend.run(steps=20, size=5000)
    assert len(set(results.values())) == 1 and set(results) == set(fo.backends())
    # its times are only readable knowing how busy the machine was
    header = capsys.readouterr().out.splitlines()[1]
    assert f"{fo.get_num_threads()} threads on" in header and "load average" in header


def test_optimizer_paths_reach_the_minima():
    import optimizer_paths
    results = optimizer_paths.run(steps=2000)
    for surface in ("rosenbrock", "beale"):
        assert results[surface, "Adam"][0] < 1e-3
        assert results[surface, "SGD+Nesterov"][0] < 1e-3
    assert results["saddle", "Adam"][0] < -10             # escaped the saddle
    assert np.isfinite(results["beale", "RAdam"][0])


def test_optimizer_paths_draws_each_optimizer_in_its_own_style(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optimizer_paths
    results = optimizer_paths.run(steps=20)
    fig, ax = plt.subplots()
    optimizer_paths.draw(ax, "beale", results)
    paths = {line.get_label(): line for line in ax.get_lines()}
    assert set(paths) == set(optimizer_paths.OPTIMIZERS)
    colors = {matplotlib.colors.to_hex(line.get_color()) for line in paths.values()}
    assert len(colors) == len(paths)                      # SGD and RAdam were both blue
    plt.close(fig)
    optimizer_paths.plot_paths(results, str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path / "out")) == ["beale.png", "rosenbrock.png", "saddle.png"]


def test_optimizer_paths_plots_by_default_where_git_ignores_them(tmp_path):
    pytest.importorskip("matplotlib")
    import subprocess
    examples = os.path.join(os.path.dirname(__file__), "..", "examples")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(fo.__file__)), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, os.path.join(examples, "optimizer_paths.py"), "--steps", "5",
                    "--plot"], cwd=tmp_path, env=env, check=True, capture_output=True)
    assert sorted(os.listdir(tmp_path / "plots")) == ["beale.png", "rosenbrock.png",
                                                      "saddle.png"]
    root = os.path.join(examples, "..")
    if os.path.exists(os.path.join(root, ".git")):          # run in the checkout, not ignored
        ignored = subprocess.run(["git", "check-ignore", "plots/saddle.png", "plots/moons.png"],
                                 cwd=root, capture_output=True, text=True)
        assert ignored.stdout.split() == ["plots/saddle.png", "plots/moons.png"]


def test_torch_mlp_trains_alike_with_fastopt_and_torch():
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    import torch
    import torch_mlp
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = torch_mlp.run(epochs=4, quiet=True)
    finally:
        torch.set_num_threads(threads)
    accs = [acc for acc, _, _ in results.values()]
    assert min(accs) >= 0.9 and max(accs) - min(accs) <= 0.01


EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
HIDING = ("import runpy, sys\n"
          "for name in sys.argv[1].split(','): sys.modules[name] = None   # as if not installed\n"
          "sys.argv = sys.argv[2:]\n"
          "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def run_example(script, *args, hide=()):
    """Run examples/``script`` as a user does, with the modules ``hide`` as if not installed;
    returns (status, stdout + stderr)."""
    import subprocess
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(fo.__file__)), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", HIDING, ",".join(hide) or "_",
                           os.path.join(EXAMPLES, script), *args],
                          capture_output=True, text=True, env=env, timeout=300)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("script,args", [
    ("moons.py", ["--epochs", "0"]), ("digits.py", ["--epochs", "-3"]),
    ("swap_backend.py", ["--size", "0"]), ("swap_backend.py", ["--steps", "0"]),
    ("optimizer_paths.py", ["--steps", "-1"]), ("torch_mlp.py", ["--threads", "0"]),
    ("digits_mpi.py", ["--epochs", "0"]),
])
def test_nonsense_counts_are_usage_errors(script, args):
    """--epochs 0 ended in IndexError (moons) or UnboundLocalError (digits); swap_backend
    --size 0 printed nan losses and "final losses differ!", -1 a ValueError; torch_mlp
    --threads 0 torch's RuntimeError; optimizer_paths --steps -1 ran nothing, silently."""
    if script in ("torch_mlp.py", "digits_mpi.py"):      # (they import these first)
        pytest.importorskip({"torch_mlp.py": "torch", "digits_mpi.py": "mpi4py"}[script])
    status, out = run_example(script, *args)
    assert status == 2 and f"{args[0]}: at least 1" in out and "Traceback" not in out


@pytest.mark.parametrize("script,seed,says", [
    ("digits.py", "-1", "at least 0"), ("digits_mpi.py", "-1", "at least 0"),
    ("torch_mlp.py", "-1", "0 to 2**64 - 1"), ("torch_mlp.py", str(2**64), "0 to 2**64 - 1"),
])
def test_seeds_out_of_range_are_usage_errors(script, seed, says):
    """--seed -1 ended in NumPy's ValueError traceback (default_rng takes no negative seed),
    torch_mlp.py --seed 2**64 in torch.manual_seed's."""
    if script in ("torch_mlp.py", "digits_mpi.py"):
        pytest.importorskip({"torch_mlp.py": "torch", "digits_mpi.py": "mpi4py"}[script])
    status, out = run_example(script, "--seed", seed)
    assert status == 2 and f"--seed: {says}, got {seed}" in out and "Traceback" not in out


@pytest.mark.parametrize("script,hide,needs", [
    ("digits.py", ["sklearn"], "scikit-learn"), ("torch_mlp.py", ["torch"], "torch"),
    ("torch_mlp.py", ["sklearn"], "scikit-learn"), ("digits_mpi.py", ["mpi4py"], "mpi4py"),
    ("digits_mpi.py", ["sklearn"], "scikit-learn"),
])
def test_a_missing_optional_dependency_is_named_not_a_traceback(script, hide, needs):
    """digits.py, torch_mlp.py and digits_mpi.py ended in ModuleNotFoundError's traceback
    without scikit-learn, torch or mpi4py (moons.py and optimizer_paths.py managed)."""
    for module in {"torch_mlp.py": ["torch"], "digits_mpi.py": ["mpi4py"]}.get(script, []):
        if module not in hide:
            pytest.importorskip(module)
    status, out = run_example(script, "--epochs", "1", hide=hide)
    assert status == 1 and f"{script} needs" in out and needs in out
    assert "Traceback" not in out and "pip install 'fastopt[" in out


def test_moons_plot_names_the_file_it_writes_and_refuses_an_empty_path(tmp_path):
    """--plot NAME. wrote NAME.png (savefig) and printed "wrote NAME."; --plot '' in moons.py
    and optimizer_paths.py plotted nothing, silently (python -m fastopt refuses it)."""
    pytest.importorskip("matplotlib")
    status, out = run_example("moons.py", "--epochs", "1", "--plot", str(tmp_path / "b."))
    assert status == 0 and f"wrote {tmp_path / 'b.png'}\n" in out
    assert os.listdir(tmp_path) == ["b.png"]
    for script in ("moons.py", "optimizer_paths.py"):
        status, out = run_example(script, "--plot", "")
        assert status == 2 and "--plot : an empty path" in out and "Traceback" not in out


def test_plot_paths_that_cannot_be_written_are_usage_errors_before_training(tmp_path):
    """moons.py --plot out.xyz, or a path nothing can be created in, trained for the epochs
    asked, then ended in savefig's ValueError or FileNotFoundError; optimizer_paths.py --plot
    in such a place too."""
    pytest.importorskip("matplotlib")
    (tmp_path / "file").write_text("")
    for script, path in [("moons.py", str(tmp_path / "out.xyz")),
                         ("moons.py", str(tmp_path / "file" / "m.png")),
                         ("moons.py", str(tmp_path)),
                         ("optimizer_paths.py", str(tmp_path / "file" / "dir"))]:
        status, out = run_example(script, "--plot", path)
        assert status == 2 and f"--plot {path}: " in out and "Traceback" not in out
        assert "train accuracy" not in out and "final loss" not in out
