"""Backends: which exist, which is active, how to switch, thread counts."""
import os
import subprocess
import sys

import pytest

import fastopt as fo
from conftest import AVAILABLE


def test_backends_are_listed_fastest_first_and_numpy_is_always_there():
    assert AVAILABLE[-1] == "numpy"
    assert AVAILABLE == [b for b in ("cython", "numba", "numpy") if b in AVAILABLE]


def test_use_backend_restores_the_previous_one_even_after_an_error():
    before = fo.get_backend()
    with pytest.raises(ZeroDivisionError):
        with fo.use_backend("numpy"):
            assert fo.get_backend() == "numpy"
            1 / 0
    assert fo.get_backend() == before


def test_unknown_backend_is_a_runtime_error_saying_why():
    with pytest.raises(RuntimeError, match="unknown backend"):
        fo.set_backend("fortran")


def test_environment_variable_picks_the_default_backend():
    env = dict(os.environ, FASTOPT_BACKEND="numpy")
    out = subprocess.run([sys.executable, "-c", "import fastopt; print(fastopt.get_backend())"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "numpy"


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_thread_count_must_be_a_positive_int(bad):
    with pytest.raises(ValueError):
        fo.set_num_threads(bad)


def test_thread_count_round_trips():
    n = fo.get_num_threads()
    fo.set_num_threads(1)
    assert fo.get_num_threads() == 1
    fo.set_num_threads(n)
