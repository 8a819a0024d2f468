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
