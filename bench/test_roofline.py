"""The roofline streams compute what they say, so that their times are of that traffic: ``stream``
updates every array but the second in place, ``stream_to`` writes its first array from the
others and leaves them as they were."""
import numpy as np
import pytest

stream = pytest.importorskip("fastopt._kernels.stream")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 17, 100_003])
def test_stream_adds_the_second_array_to_every_other(n, dtype):
    rng = np.random.default_rng(n)
    arrays = [rng.standard_normal(n).astype(dtype) for _ in range(4)]
    before = [a.copy() for a in arrays]
    stream.stream(*arrays)
    np.testing.assert_array_equal(arrays[1], before[1])
    for a, b in zip(arrays[:1] + arrays[2:], before[:1] + before[2:]):
        np.testing.assert_array_equal(a, b + before[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 17, 100_003])
def test_stream_to_writes_its_output_from_its_inputs_only(n, dtype):
    rng = np.random.default_rng(n)
    x, dy = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    x0, dy0 = x.copy(), dy.copy()
    out = np.full(n, np.nan, dtype)             # not read: NaNs would show
    stream.stream_to(out, x)
    np.testing.assert_array_equal(out, x + dtype(1))
    stream.stream_to(out, x, dy)
    np.testing.assert_array_equal(out, x + dy)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)


def test_stream_to_takes_one_or_two_inputs_of_the_same_bytes():
    a = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="1 or 2 inputs"):
        stream.stream_to(a)
    with pytest.raises(ValueError, match="1 or 2 inputs"):
        stream.stream_to(a, a, a, a)
    with pytest.raises(ValueError, match="one dtype and size"):
        stream.stream_to(a, np.zeros(9, np.float32))
    with pytest.raises(ValueError, match="one dtype and size"):      # the same bytes
        stream.stream_to(a, np.zeros(4, np.float64))
    with pytest.raises(TypeError, match="float32 or float64 arrays, got int32"):
        stream.stream_to(np.zeros(8, np.int32), np.zeros(8, np.int32))


def test_the_roofline_goes_parallel_where_its_kernel_does():
    """The stream counts elements as the kernels do, so that a row's roofline runs on as many
    threads as its kernel: float64 rows of 16384-32767 elements ran the kernel on the calling
    thread and the stream (in float32 lanes) on two. The pool starts its helper at the first
    parallel call; nothing is timed."""
    import subprocess
    import sys
    script = """
import numpy as np, fastopt as fo
from fastopt._kernels import pool, stream
fo.set_backend("cython")
fo.set_num_threads(2)
for n in (20_000, 40_000):
    a, b, c, d = (np.ones(n) for _ in range(4))
    stream.stream(a, b, c, d)
    kernel_first = pool.pool_state()["helpers"]
    fo.ops.adam_step_(a, b, c, d, 1)
    print(n, kernel_first, pool.pool_state()["helpers"])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.stdout.split() == ["20000", "0", "0", "40000", "1", "1"], out.stderr


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 17, 100_003])
def test_the_benchmark_arrays_start_cache_lines_and_hold_their_values(n, dtype):
    """Every contender of a row gets arrays that start a 64-byte line (_bench.on_lines), with
    the values the seeds give."""
    from fastopt import _bench
    p, g, state = _bench.CASES["adam"].arrays(n, dtype)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(p, rng.standard_normal(n).astype(dtype))
    np.testing.assert_array_equal(g, rng.standard_normal(n).astype(dtype))
    for a in (p, g, *state.values()):
        assert a.__array_interface__["data"][0] % 64 == 0 or n == 0     # (none to place)
        assert a.dtype == dtype and a.shape == (n,) and a.flags.c_contiguous
    assert not any(a.any() for a in state.values())
