"""Backends: which exist, which is active, how to switch, thread counts."""
import os
import subprocess
import sys

import numpy as np
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


def test_blocks_ending_out_of_order_in_one_thread_restore_the_first_ones_previous():
    """Blocks in two generators (or asyncio tasks) of one thread can end in the order they
    began; each restored its own previous backend, so the process was left on the first
    block's, not on the one before both, and the second ran on the one before both while the
    first had ended."""
    before = fo.get_backend()
    others = [b for b in AVAILABLE if b != before] * 2
    if not others:
        pytest.skip("one backend here")

    def block(name):
        with fo.use_backend(name):
            yield fo.get_backend()

    first, second = block(others[0]), block(others[1])
    assert next(first) == others[0] and next(second) == others[1]
    first.close()
    assert fo.get_backend() == others[1]        # (the block still open)
    second.close()
    assert fo.get_backend() == before


def test_unknown_backend_is_a_runtime_error_saying_why():
    with pytest.raises(RuntimeError, match="unknown backend"):
        fo.set_backend("fortran")


@pytest.mark.parametrize("name", [None, 3, b"numpy"])
def test_a_backend_name_that_is_not_a_str_is_a_type_error_changing_nothing(name):
    """set_backend(None) and use_backend(3) had raised RuntimeError("unknown backend")."""
    before = fo.get_backend()
    with pytest.raises(TypeError, match="backend name must be a str"):
        fo.set_backend(name)
    with pytest.raises(TypeError, match="backend name must be a str"):
        with fo.use_backend(name):
            pass
    with pytest.raises(TypeError, match="backend name must be a str"):
        fo._backend.unavailable_reason(name)
    assert fo.get_backend() == before
    with fo.use_backend("numpy"):       # no use_backend block was left open
        assert fo.get_backend() == "numpy"


def test_a_backend_is_named_in_any_case_as_in_the_environment():
    """FASTOPT_BACKEND=" Numba " was taken, set_backend("Numba") refused."""
    before = fo.get_backend()
    try:
        fo.set_backend(" NumPy ")
        assert fo.get_backend() == "numpy"
        with fo.use_backend(before.upper()):
            assert fo.get_backend() == before
        assert fo.get_backend() == "numpy"
        assert fo._backend.unavailable_reason("NUMPY") is None
    finally:
        fo.set_backend(before)


def test_environment_variable_picks_the_default_backend():
    env = dict(os.environ, FASTOPT_BACKEND="numpy")
    out = subprocess.run([sys.executable, "-c", "import fastopt; print(fastopt.get_backend())"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "numpy"


def test_a_bad_backend_in_the_environment_is_named_as_the_environments():
    """The import error said "unknown backend 'bad'", not where that came from."""
    env = dict(os.environ, FASTOPT_BACKEND="bad")
    out = subprocess.run([sys.executable, "-c", "import fastopt"], env=env,
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "RuntimeError: FASTOPT_BACKEND='bad' in the environment: unknown backend 'bad'" \
        in out.stderr


@pytest.mark.parametrize("variable,value,reason", [
    # numba's import raises ValueError, which backends() and set_backend("numba") let through
    # (no backend listed at all)
    ("NUMBA_NUM_THREADS", "0", "numba is not installed or does not import (ValueError: "
                               "Number of threads specified must be > 0.)"),
    # for debugging or coverage: the steps ran, the layers and the 16-bit kernels raised
    # NotImplementedError at their first call (their intrinsics have no pure-Python form),
    # and numba was listed as available (the default where the extension is absent)
    ("NUMBA_DISABLE_JIT", "1", "NUMBA_DISABLE_JIT is set")], ids=["no-threads", "no-jit"])
def test_a_numba_that_cannot_serve_is_an_unavailable_backend(variable, value, reason):
    """numba is unavailable, saying why, and the others serve."""
    pytest.importorskip("numba")
    env = {k: v for k, v in os.environ.items() if k != "FASTOPT_BACKEND"}
    env[variable] = value
    code = """if True:
        import fastopt as fo
        assert "numba" not in fo.backends() and "numpy" in fo.backends(), fo.backends()
        try:
            fo.set_backend("numba")
        except RuntimeError as exc:
            print(exc)
    """
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"backend 'numba' is not available: {reason}" in out.stdout


def test_numba_with_nowhere_to_cache_compiles_in_each_process():
    """A read-only install run by a user without a writable home: Numba finds no cache
    directory, every cache=True kernel raised RuntimeError as fastopt._numba was imported,
    and the backend was "not installed". It now compiles without a cache, and says how to
    keep one. (Numba's cache locators are emptied here: as root, no directory is read-only.)"""
    pytest.importorskip("numba")
    env = {k: v for k, v in os.environ.items() if k != "FASTOPT_BACKEND"}
    code = """if True:
        import warnings
        import numba.core.caching
        import numpy as np
        numba.core.caching.CacheImpl._locator_classes = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import fastopt as fo
            fo.set_backend("numba")
            print(fo.softmax(np.zeros(2)).tolist())
        print([str(w.message) for w in caught if "cannot cache" in str(w.message)])
    """
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result, warned = out.stdout.splitlines()
    assert result == "[0.5, 0.5]"
    assert warned.count("Set NUMBA_CACHE_DIR to a writable directory") == 1


_SOFTMAX_BITS = """if True:
    import hashlib
    import numpy as np
    import fastopt as fo
    h = hashlib.sha256()
    for dtype, lo in ((np.float32, -110.0), (np.float64, -760.0)):
        t = np.linspace(lo, 0.0, 997).astype(dtype)        # through the subnormals to 1
        z = np.stack([np.concatenate([t, [-np.inf, -0.0, 1e-30]]).astype(dtype)] * 3)
        z[1, 5] = np.nan
        for k in (1000, 200, 40):                          # long rows, and short ones
            for f in (fo.softmax, fo.log_softmax):
                h.update(f(z[:, :k]).tobytes())
                h.update(f(np.ascontiguousarray(z[:, :k].T), axis=0).tobytes())  # columns
            loss, grad = fo.softmax_cross_entropy(z[:, :k], np.array([0, 1, 2]))
            h.update(np.float64(loss).tobytes() + grad.tobytes())
    print(h.hexdigest())
"""


def test_numba_softmax_gives_the_same_bits_without_avx512():
    """The numba backend's softmax family scales its vectors' exps by 2^n with vscalefps
    where Numba compiles for AVX-512, and in two exact halves elsewhere (the scalar exp
    everywhere): the same bits. Numba made to compile for AVX2 (NUMBA_CPU_FEATURES) against
    its default, exps through the subnormals, NaN and -inf rows, long and short rows, and
    classes as rows (the course's layout)."""
    pytest.importorskip("numba")
    digests = []
    for features in (None, "+avx,+avx2,+fma,+f16c,+sse4.2,+popcnt,+bmi,+bmi2,+lzcnt,+movbe"):
        env = dict(os.environ, FASTOPT_BACKEND="numba")
        if features:
            env["NUMBA_CPU_FEATURES"] = features
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", _SOFTMAX_BITS], env=env,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        digests.append(out.stdout.strip())
    assert digests[0] == digests[1]


def test_the_thread_count_on_numba_is_the_one_numba_runs():
    """NUMBA_NUM_THREADS=1: the numba backend's kernels run on one thread, whatever
    set_num_threads asks; get_num_threads said 2 (the compiled extension's count) on it."""
    pytest.importorskip("numba")
    env = dict(os.environ, NUMBA_NUM_THREADS="1", FASTOPT_BACKEND="numba")
    code = "import fastopt as fo; fo.set_num_threads(2); print(fo.get_num_threads())"
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1"]


def test_without_the_environment_variable_the_default_is_the_first_available():
    """API.md: get_backend()'s default is the first of backends() (the fastest here)."""
    env = {k: v for k, v in os.environ.items() if k != "FASTOPT_BACKEND"}
    code = "import fastopt; print(fastopt.get_backend(), fastopt.backends()[0])"
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env,
                         capture_output=True, text=True, check=True)
    default, first = out.stdout.split()
    assert default == first


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None, 257, 10 ** 6, 2 ** 31])
def test_thread_count_must_be_an_int_from_1_to_256_and_a_refused_one_changes_nothing(bad):
    before = fo.get_num_threads()
    # a value of another type is a TypeError (as numba's and torch's), a count out of range a
    # ValueError
    error = ValueError if isinstance(bad, int) and not isinstance(bad, bool) else TypeError
    with pytest.raises(error, match="1 to 256"):
        fo.set_num_threads(bad)
    assert fo.get_num_threads() == before and fo._backend._num_threads == before


def test_thread_count_round_trips():
    n = fo.get_num_threads()
    fo.set_num_threads(1)
    assert fo.get_num_threads() == 1
    fo.set_num_threads(n)


def test_use_backend_in_another_thread_at_once_raises_and_the_default_comes_back():
    """A use_backend block, or set_backend, while another thread is inside a block raises
    (set_backend was taken: the block then ran on it, and its end undid it)."""
    import threading
    before = fo.get_backend()
    inside, done = threading.Event(), threading.Event()
    seen = {}

    def holder():
        with fo.use_backend("numpy"):
            inside.set()
            done.wait(10)
            seen["holder"] = fo.get_backend()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert inside.wait(10)
        with pytest.raises(RuntimeError, match="another thread"):
            with fo.use_backend(before):
                pass
        with pytest.raises(RuntimeError, match=r"set_backend\('numpy'\): another thread"):
            fo.set_backend("numpy")
    finally:
        done.set()
        thread.join()
    assert seen["holder"] == "numpy"
    assert fo.get_backend() == before
    with fo.use_backend("numpy"):           # nesting within one thread still works
        with fo.use_backend(before):
            assert fo.get_backend() == before
        assert fo.get_backend() == "numpy"
        fo.set_backend(before)              # and so does set_backend inside one's own block
        assert fo.get_backend() == before
    assert fo.get_backend() == before


def test_use_num_threads_restores_the_count_set_whatever_the_backend():
    """use_num_threads (the benchmarks') inside a numba block restored numba's count, which
    the CPU count caps (2 here), to every backend: a count of 4 set came back as 2."""
    from fastopt import _backend
    from fastopt._backend import use_num_threads
    before = fo.get_num_threads()
    try:
        for backend in AVAILABLE:
            fo.set_num_threads(4)
            with fo.use_backend(backend):
                with use_num_threads(1):
                    assert fo.get_num_threads() == 1
            assert _backend._num_threads == 4, backend
            if "cython" in AVAILABLE:
                assert _backend._loaded["cython"].get_num_threads() == 4, backend
    finally:
        fo.set_num_threads(before)


@pytest.mark.parametrize("convert", [np.float64, np.float32, float])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_scalar_hyper_parameters_give_every_backend_the_same_bits(convert, dtype):
    """A NumPy float64 lr (a NumPy schedule's) or step (np.arange's) made the reference compute
    float32 arrays in float64 (NEP 50), unlike the compiled kernels."""
    results = {}
    for backend in AVAILABLE:
        rng = np.random.default_rng(1)
        p, g = (rng.standard_normal(1000).astype(dtype) for _ in range(2))
        m, v, buf = (np.abs(rng.standard_normal(1000)).astype(dtype) for _ in range(3))
        with fo.use_backend(backend):
            for t in np.arange(1, 4):
                fo.ops.adam_step_(p, g, m, v, t, lr=convert(0.01),
                                  betas=(convert(0.9), convert(0.999)), eps=convert(1e-8),
                                  weight_decay=convert(0.1))
                fo.ops.sgd_step_(p, g, buf, lr=convert(0.1), momentum=convert(0.9),
                                 weight_decay=convert(0.01))
                fo.ops.ewa_(buf, g, convert(0.9))
        results[backend] = (p.tobytes(), m.tobytes(), v.tobytes(), buf.tobytes())
    for backend in AVAILABLE:
        assert results[backend] == results["numpy"], backend
