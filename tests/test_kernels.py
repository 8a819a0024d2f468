"""The kernels (fastopt.ops) on every backend against the NumPy reference: the single and
the foreach forms over dtypes, sizes (0-d, empty, odd, above the parallel threshold) and
memory layouts for several steps with fresh grads each step; NaN/Inf; thread counts; the
AVX-512 build; a list in one call against one call per array; Lion by hand. Expected
values come from the reference (tests/test_registry.py holds every backend to it for
every option) or from formulas written out here."""
import contextlib
import functools

import numpy as np
import pytest

import fastopt as fo
from conftest import (COMPILED, GRID_BACKENDS, assert_close, c_math_library, cython_builds,
                      use_cython_build)
from kernel_specs import make_group, random_run, run_group, run_steps, same_bits

ops = fo.ops


# ------------------------------------------------------------------------- single arrays

# name -> (state arrays with their initial value, one step(param, grad, state, t))
CASES = {
    "ewa": ({}, lambda p, g, s, t: ops.ewa_(p, g, 0.9)),
    "sgd": ({}, lambda p, g, s, t: ops.sgd_step_(p, g, lr=0.1)),
    "sgd_wd_maximize": ({}, lambda p, g, s, t: ops.sgd_step_(p, g, lr=0.1, weight_decay=0.1,
                                                             maximize=True)),
    "sgd_momentum_dampening": ({"buf": 0.0}, lambda p, g, s, t: ops.sgd_step_(
        p, g, s["buf"], lr=0.1, momentum=0.9, dampening=0.25, weight_decay=0.01,
        first_step=t == 1)),
    "sgd_nesterov": ({"buf": 0.0}, lambda p, g, s, t: ops.sgd_step_(
        p, g, s["buf"], lr=0.1, momentum=0.8, nesterov=True, first_step=t == 1)),
    "momentum": ({"v": 0.0}, lambda p, g, s, t: ops.momentum_step_(p, g, s["v"], lr=0.1,
                                                                    beta=0.9)),
    "rmsprop": ({"sq": 0.0}, lambda p, g, s, t: ops.rmsprop_step_(p, g, s["sq"], lr=0.01)),
    "rmsprop_centered_momentum_wd": (
        {"sq": 0.0, "ga": 0.0, "buf": 0.0},
        lambda p, g, s, t: ops.rmsprop_step_(p, g, s["sq"], lr=0.01, beta=0.9, eps=1e-6,
                                             weight_decay=0.1, momentum_buffer=s["buf"],
                                             momentum=0.5, grad_avg=s["ga"], maximize=True)),
    "rmsprop_eps_inside": ({"sq": 0.0}, lambda p, g, s, t: ops.rmsprop_step_(
        p, g, s["sq"], lr=0.01, eps=1e-4, eps_inside_sqrt=True)),
    "adagrad": ({"sum": 0.1}, lambda p, g, s, t: ops.adagrad_step_(
        p, g, s["sum"], t, lr=0.1, lr_decay=0.01, weight_decay=0.05)),
    "adam": ({"m": 0.0, "v": 0.0}, lambda p, g, s, t: ops.adam_step_(p, g, s["m"], s["v"], t,
                                                                      lr=0.01)),
    "adam_amsgrad_wd_maximize": (
        {"m": 0.0, "v": 0.0, "vmax": 0.0},
        lambda p, g, s, t: ops.adam_step_(p, g, s["m"], s["v"], t, lr=0.01, betas=(0.8, 0.99),
                                          weight_decay=0.1, max_exp_avg_sq=s["vmax"],
                                          maximize=True)),
    "adam_eps_inside": ({"m": 0.0, "v": 0.0}, lambda p, g, s, t: ops.adam_step_(
        p, g, s["m"], s["v"], t, lr=0.01, eps=1e-6, eps_inside_sqrt=True)),
    "adamw": ({"m": 0.0, "v": 0.0}, lambda p, g, s, t: ops.adamw_step_(
        p, g, s["m"], s["v"], t, lr=0.01, weight_decay=0.1)),
    "adadelta": ({"sq": 0.0, "acc": 0.0}, lambda p, g, s, t: ops.adadelta_step_(
        p, g, s["sq"], s["acc"], lr=0.5, rho=0.8, weight_decay=0.1, maximize=True)),
    "adamax": ({"m": 0.0, "u": 0.0}, lambda p, g, s, t: ops.adamax_step_(
        p, g, s["m"], s["u"], t, lr=0.01, weight_decay=0.1)),
    "nadam_decoupled": ({"m": 0.0, "v": 0.0}, lambda p, g, s, t: ops.nadam_step_(
        p, g, s["m"], s["v"], t, 0.9 ** (t - 1), lr=0.01, weight_decay=0.1,
        decoupled_weight_decay=True)),
    # no weight decay and no maximize: the compiled kernels' own loops for the defaults (and
    # RAdam's steps 1-5 unrectified, 6-7 rectified)
    "nadam": ({"m": 0.0, "v": 0.0}, lambda p, g, s, t: ops.nadam_step_(
        p, g, s["m"], s["v"], t, 0.9 ** (t - 1), lr=0.01)),
    "radam_plain": ({"m": 0.0, "v": 0.0}, lambda p, g, s, t: ops.radam_step_(
        p, g, s["m"], s["v"], t, lr=0.01)),
    "radam": ({"m": 0.0, "v": 0.0}, lambda p, g, s, t: ops.radam_step_(
        p, g, s["m"], s["v"], t, lr=0.01, weight_decay=0.1, maximize=True)),
    "lion": ({"m": 0.0}, lambda p, g, s, t: ops.lion_step_(
        p, g, s["m"], lr=0.01, betas=(0.8, 0.95), weight_decay=0.1, maximize=t % 2 == 0)),
}
SHAPES = [(), (0,), (1,), (7,), (1031,), (70001,), (33, 31)]
LAYOUTS = ["contiguous", "strided", "transposed", "mixed"]
STEPS = 7


def run(case, backend, p0, grads, layout, threads=None):
    """The case's step ``len(grads)`` times on ``backend``: :func:`kernel_specs.run_steps`."""
    init, step = CASES[case]
    return run_steps(step, init, backend, p0, grads, layout, threads)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_matches_reference(backend, case, shape, layout, dtype):
    if backend == "numpy" and layout == "contiguous":
        pytest.skip("the reference on contiguous arrays is the expected value itself")
    p0, grads = random_run(shape, dtype, steps=STEPS)
    expected_p, expected_state = run(case, "numpy", p0, grads, "contiguous")
    p, state = run(case, backend, p0, grads, layout)
    assert p.dtype == dtype and p.shape == p0.shape
    assert_close(p, expected_p, dtype, f"param of {case}")
    for k in state:
        assert_close(state[k], expected_state[k], dtype, f"state {k} of {case}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_nan_and_inf_propagate_as_in_reference(backend, case, dtype):
    p0, grads = random_run((64,), dtype, steps=3)
    p0[3], p0[5] = np.nan, np.inf
    grads[0][7], grads[1][9], grads[2][11] = np.nan, np.inf, -np.inf
    expected_p, expected_state = run(case, "numpy", p0, grads, "contiguous")
    p, state = run(case, backend, p0, grads, "contiguous")
    np.testing.assert_array_equal(p, expected_p)   # NaN positions must match too
    for k in state:
        np.testing.assert_array_equal(state[k], expected_state[k])
    assert np.isnan(p[3]) and np.isfinite(p[0])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", COMPILED)
def test_bit_identical_for_any_thread_count(backend, case, dtype):
    p0, grads = random_run((300007,), dtype, steps=3)
    p1, s1 = run(case, backend, p0, grads, "contiguous", threads=1)
    p2, s2 = run(case, backend, p0, grads, "contiguous", threads=2)
    assert p1.tobytes() == p2.tobytes()
    assert all(s1[k].tobytes() == s2[k].tobytes() for k in s1)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", COMPILED)
def test_a_long_array_steps_as_its_pieces_do(backend, case, dtype):
    """From 2 MiB an array is stepped with software prefetches (the Cython driver's
    run_span_ahead, in spans of 512 bytes): the same bits as its pieces stepped in calls of
    their own, each under that size, on the plain loops (on Numba, its long steps against its
    short ones). The arrays start an element past NumPy's placement and are of odd length: the
    elements before the param's first line start run apart, and the last span is partial."""
    init, step = CASES[case]
    n, piece = 600_011, 100_000

    def unaligned(a):
        out = np.empty(a.size + 1, a.dtype)[1:]
        out[...] = a
        return out

    p0, grads = random_run((n,), dtype, steps=3)
    long_p, pieces_p = unaligned(p0), unaligned(p0)
    long_state = {k: unaligned(np.full(n, v, dtype)) for k, v in init.items()}
    pieces_state = {k: unaligned(np.full(n, v, dtype)) for k, v in init.items()}
    with fo.use_backend(backend):
        for t, g in enumerate(grads, start=1):
            step(long_p, unaligned(g), long_state, t)
            for lo in range(0, n, piece):
                cut = slice(lo, lo + piece)
                step(pieces_p[cut], g[cut], {k: a[cut] for k, a in pieces_state.items()}, t)
    assert same_bits(long_p, pieces_p)
    assert all(same_bits(long_state[k], pieces_state[k]) for k in init)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_updates_the_callers_array_and_its_views(backend, dtype):
    base = np.ones((10, 6), dtype)
    param = base[::2, 1:5]                # a non-contiguous view the caller holds
    other_view = base[::2]
    m, v = np.zeros_like(param), np.zeros_like(param)
    with fo.use_backend(backend):
        ops.adam_step_(param, np.ones_like(param), m, v, 1, lr=0.5)
    assert np.shares_memory(param, base)
    assert np.all(other_view[:, 1:5] < 1) and np.all(other_view[:, 0] == 1)
    assert np.all(base[1::2] == 1)        # rows outside the view untouched


@pytest.mark.skipif(len(cython_builds()) < 2 or "cython" not in GRID_BACKENDS,
                    reason="needs the portable and the AVX-512 builds of the kernels")
@pytest.mark.parametrize("case", ["sgd_momentum_dampening", "rmsprop_centered_momentum_wd",
                                  "adagrad", "adam_amsgrad_wd_maximize", "adam_eps_inside",
                                  "momentum", "ewa", "adadelta", "adamax", "nadam_decoupled",
                                  "radam"])
def test_avx512_build_is_bit_identical_to_the_portable_build(case, dtype, monkeypatch):
    """Each build installed as the cython backend in turn (patching names of
    fastopt._kernels, as this test once did, reached no kernel: AttributeError on the first
    CPU with AVX-512)."""
    p0, grads = random_run((100003,), dtype, steps=3)
    results = []
    for namespace in cython_builds():
        use_cython_build(monkeypatch, namespace)
        p, state = run(case, "cython", p0, grads, "contiguous")
        results.append((p.tobytes(), {k: s.tobytes() for k, s in state.items()}))
    assert all(r == results[0] for r in results[1:])


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_running_max_keeps_its_zero_on_a_tie(backend, dtype):
    """amsgrad's max_exp_avg_sq and Adamax's exp_inf keep the running value when the new one
    equals it: max(-0.0, +0.0) is -0.0 on every backend (np.maximum gave +0.0 in the reference,
    the compiled kernels -0.0)."""
    z = np.zeros(3, dtype)
    vmax = np.full(3, -0.0, dtype)
    u = np.full(3, -0.0, dtype)
    with fo.use_backend(backend):
        ops.adam_step_(z.copy(), z, z.copy(), z.copy(), 1, max_exp_avg_sq=vmax)
        ops.adamax_step_(z.copy(), z, z.copy(), u, 1, betas=(0.9, 1e-300), eps=0.0)
    assert np.signbit(vmax).all() and np.signbit(u).all()


# ------------------------------------------ Adadelta, Adamax, NAdam, RAdam over 25 steps
STATE_KEYS = {"adadelta": ("square_avg", "acc_delta"), "adamax": ("exp_avg", "exp_inf"),
              "nadam": ("exp_avg", "exp_avg_sq"), "radam": ("exp_avg", "exp_avg_sq")}
# case -> (kernel, keyword arguments of fo.ops.<kernel>_step_)
KERNEL_CASES = {
    "adadelta": ("adadelta", {}),
    "adadelta_wd_maximize": ("adadelta", dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1,
                                              maximize=True)),
    "adamax": ("adamax", dict(lr=0.01)),
    "adamax_wd_maximize": ("adamax", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6,
                                          weight_decay=0.1, maximize=True)),
    "nadam_wd": ("nadam", dict(lr=0.01, weight_decay=0.1, momentum_decay=0.01)),
    "nadam_decoupled_maximize": ("nadam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1,
                                               decoupled_weight_decay=True, maximize=True)),
    "radam_wd": ("radam", dict(lr=0.01, weight_decay=0.1)),
    "radam_decoupled_maximize": ("radam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1,
                                               decoupled_weight_decay=True, maximize=True)),
}
KERNEL_SHAPES = [(), (0,), (7,), (1031,), (70001,), (33, 31)]

KERNEL_STEPS = 25


def call_kernel(case, p, g, state, t, multi=False):
    """One step of the case's fo.ops kernel (``foreach_`` form with lists when ``multi``);
    ``state`` holds the state arrays (lists) by torch's key and NAdam's ``mu_product`` (1.0
    until the first step)."""
    kernel, kwargs = KERNEL_CASES[case]
    fn = getattr(ops, f"{'foreach_' if multi else ''}{kernel}_step_")
    arrays = [state[k] for k in STATE_KEYS[kernel]]
    if kernel == "adadelta":
        fn(p, g, *arrays, **kwargs)
    elif kernel == "nadam":
        state["mu_product"] = fn(p, g, *arrays, t, state.get("mu_product", 1.0), **kwargs)
    else:
        fn(p, g, *arrays, t, **kwargs)


kernel_inputs = functools.partial(random_run, steps=KERNEL_STEPS)


def run_kernel(case, backend, p0, grads, layout, threads=None):
    """The case ``len(grads)`` times on ``backend``: :func:`kernel_specs.run_steps`."""
    init = dict.fromkeys(STATE_KEYS[KERNEL_CASES[case][0]], 0.0)
    return run_steps(functools.partial(call_kernel, case), init, backend, p0, grads, layout,
                     threads)


@functools.lru_cache(maxsize=None)
def expected_run(case, shape, dtype):
    """The reference's result on contiguous arrays (computed once per case, shape, dtype)."""
    p0, grads = kernel_inputs(shape, dtype)
    return run_kernel(case, "numpy", p0, grads, "contiguous")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=str)
@pytest.mark.parametrize("case", KERNEL_CASES)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_kernel_matches_the_reference_over_25_steps(backend, case, shape, layout, dtype):
    if backend == "numpy" and layout == "contiguous":
        pytest.skip("the reference on contiguous arrays is the expected value itself")
    p0, grads = kernel_inputs(shape, dtype)
    expected_p, expected_state = expected_run(case, shape, dtype)
    p, state = run_kernel(case, backend, p0, grads, layout)
    assert p.dtype == dtype and p.shape == p0.shape
    assert_close(p, expected_p, dtype, f"param of {case}")
    for k in state:
        assert state[k].dtype == dtype
        assert_close(state[k], expected_state[k], dtype, f"state {k} of {case}")


@pytest.mark.parametrize("layout", ["contiguous", "mixed"])
@pytest.mark.parametrize("case", KERNEL_CASES)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_kernel_gives_the_reference_bits(backend, case, layout, dtype):
    """Element-wise kernels do the reference's operations in its order and precision (no
    FMA contraction, no fast-math, scalars folded in float64 then cast), so they agree to
    the bit, serially (1031) and in parallel (70001)."""
    for shape in [(1031,), (70001,)]:
        p0, grads = kernel_inputs(shape, dtype)
        expected_p, expected_state = expected_run(case, shape, dtype)
        p, state = run_kernel(case, backend, p0, grads, layout)
        assert p.tobytes() == expected_p.tobytes()
        for k in state:
            assert state[k].tobytes() == expected_state[k].tobytes(), k


def each_build(backend, monkeypatch):
    """``backend`` once (yielding None), or the cython backend once per build of its kernels,
    each installed in turn (yielding its namespace)."""
    for namespace in cython_builds() if backend == "cython" else [None]:
        if namespace is not None:
            use_cython_build(monkeypatch, namespace)
        yield namespace


@contextlib.contextmanager
def stepping_on(backend, threads):
    """``backend`` with ``threads`` threads, both restored after."""
    with fo.use_backend(backend):
        previous = fo.get_num_threads()
        fo.set_num_threads(threads)
        try:
            yield
        finally:
            fo.set_num_threads(previous)


def roots_of_every_magnitude(n, rng):
    """float32 squares whose roots span float32's range, in blocks of 8 (a vector): most blocks
    all normal (2^-100 to 2^120), some with one or all eight below 2^-102 (subnormal too), some
    with 0, -0, inf or NaN; grads, half of them 0, those of the squares below 2^-102 as small
    as their root (the new square stays that small and the step uses its root); and params, 0
    where the square is below 2^-102 (the step then shows every bit of its quotient)."""
    squares = np.ldexp(rng.uniform(1, 2, n), rng.integers(-100, 120, n)).astype(np.float32)
    grads = (rng.standard_normal(n) * np.ldexp(1.0, rng.integers(-60, 30, n))).astype(np.float32)
    grads[rng.random(n) < 0.5] = 0
    params = rng.standard_normal(n).astype(np.float32)
    for block in range(0, n - 7, 8):
        kind = rng.integers(6)
        if kind in (3, 4):
            lanes = block + (np.arange(8) if kind == 4 else rng.integers(8, size=1))
            squares[lanes] = np.ldexp(rng.uniform(1, 2, lanes.size),
                                      rng.integers(-149, -102, lanes.size))
            grads[lanes] = np.sqrt(squares[lanes]) * rng.uniform(-2, 2, lanes.size)
            params[lanes] = 0
        elif kind == 5:
            squares[block + rng.integers(8)] = rng.choice(
                np.array([0.0, -0.0, np.inf, np.nan], np.float32))
    return squares, grads, params


ROOT_KERNELS = ["adam", "adamw", "nadam", "radam", "rmsprop", "adagrad", "adadelta"]


@pytest.mark.parametrize("kernel", ROOT_KERNELS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_square_roots_of_every_magnitude_give_the_reference_bits(backend, kernel, monkeypatch):
    """The float32 steps whose loops take some square roots on the FMA units (fo_root.h, in
    the AVX-512 build with 256-bit vectors) give the reference's bits for roots of any
    magnitude: tiny ones (where that root gives way to vsqrtps), subnormal, 0, inf and NaN,
    over whole blocks, single vectors and a masked last vector, on every build of the cython
    backend. eps is 0, or for NAdam 1e-37 (its loop needs eps >= 2 / max, nadam_span): an eps
    above a tiny root would hide its last bit. (Fewer than 1024 elements: a longer step starts
    its loop where the param starts a line, which would move the blocks.)"""
    rng = np.random.default_rng(7)
    n = 24 * 40 + 8 + 5
    squares, grads, p0 = roots_of_every_magnitude(n, rng)
    m0 = (rng.standard_normal(n) * 1e-3).astype(np.float32)
    step = root_step(kernel, grads)

    def run(name):
        first = squares[::-1].copy() if kernel == "adadelta" else m0.copy()
        p, state = p0.copy(), [first, squares.copy()]
        with np.errstate(all="ignore"), fo.use_backend(name):
            step(p, state)
        return [p] + state
    expected = run("numpy")
    for namespace in each_build(backend, monkeypatch):
        for got, want in zip(run(backend), expected):
            assert got.tobytes() == want.tobytes(), namespace


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_two_million_roots_give_the_reference_bits(backend, monkeypatch):
    """Adagrad's step on 2^21 float32 sums drawn over every bit pattern from 2^-60 to 2^60,
    with a grad (2^-80) whose square vanishes beside them and param 0, so that each new param
    is -grad / sqrt(sum) and shows the root's bits: the reference's bits on every build
    (bench/sqrt_floor.c checks fo_root.h's root over all 2^32 floats; this samples it in the
    kernels as built, where an estimate one Newton step short is off in ~1e-4 of roots)."""
    n = 2 ** 21
    lo, hi = (np.array([2.0 ** e], np.float32).view(np.uint32)[0] for e in (-60, 60))
    sums = np.random.default_rng(5).integers(lo, hi, n, dtype=np.uint32).view(np.float32)
    grads = np.full(n, 2.0 ** -80, np.float32)

    def run(name):
        p, s = np.zeros(n, np.float32), sums.copy()
        with fo.use_backend(name):
            ops.adagrad_step_(p, grads, s, 1, lr=1.0, eps=0.0)
        return p
    expected = run("numpy")
    for namespace in each_build(backend, monkeypatch):
        assert run(backend).tobytes() == expected.tobytes(), namespace


def root_step(kernel, grads, eps=0.0):
    """One step of ``kernel`` (of ROOT_KERNELS) with ``grads`` on (p, [its first state, its
    square state]); NAdam's eps at least 1e-37, which keeps its plain loop."""
    def step(p, state):
        if kernel in ("adam", "adamw"):
            ops.adam_step_(p, grads, state[0], state[1], 3, lr=1e-2, eps=eps, weight_decay=0.1
                           if kernel == "adamw" else 0, decoupled_weight_decay=True)
        elif kernel == "nadam":
            ops.nadam_step_(p, grads, state[0], state[1], 3, 0.9, eps=max(eps, 1e-37))
        elif kernel == "radam":         # (rectified from step 6)
            ops.radam_step_(p, grads, state[0], state[1], 10, eps=eps)
        elif kernel == "rmsprop":
            ops.rmsprop_step_(p, grads, state[1], lr=1e-2, eps=eps)
        elif kernel == "adagrad":
            ops.adagrad_step_(p, grads, state[1], 3, lr=1e-2, eps=eps)
        else:
            ops.adadelta_step_(p, grads, state[1], state[0], eps=eps)
    return step


@pytest.mark.parametrize("kernel", ROOT_KERNELS)
def test_the_root_loops_nan_does_not_hang_on_where_its_span_starts(kernel, monkeypatch):
    """Every element the same: a NaN grad and NaN state of other payloads. In the build whose
    steps take roots on the FMA units (fo_root.h), each output array then holds one bit
    pattern, wherever an element falls in its span (a span's last vector, its body, a
    thread's chunk): which NaN an operation keeps hangs on its operands' order, which a
    compiler may swap in one copy of a loop and not in another (fo_root.h's fo_add; NaN
    payloads are not in the contract, and the compiler's own loops, in the other builds and
    Numba's, do not all keep one)."""
    builds = [b for b in cython_builds() if getattr(b.package.KERNEL_MODULES[0], "ROOT_LOOPS",
                                                    False)]
    if "cython" not in GRID_BACKENDS or not builds:
        pytest.skip("no build of the cython backend here takes roots on the FMA units")
    nan_grad, nan_state = (np.array([b], np.uint32).view(np.float32)[0]
                           for b in (0x7fc0000b, 0x7fc0000d))
    for namespace in builds:
        use_cython_build(monkeypatch, namespace)
        for n, threads in [(61, 1), (70_001, 2)]:
            p = np.ones(n, np.float32)
            state = [np.full(n, nan_state), np.full(n, nan_state)]
            step = root_step(kernel, np.full(n, nan_grad), eps=1e-8)
            with stepping_on("cython", threads):
                step(p, state)
            for k, out in enumerate([p] + state):
                assert np.unique(out.view(np.uint32)).size == 1, (namespace, n, k)


@pytest.mark.parametrize("kernel", ROOT_KERNELS)
@pytest.mark.parametrize("backend", COMPILED)
def test_roots_of_zero_inf_and_nan_raise_no_invalid_operation(backend, kernel, monkeypatch):
    """Squares of 0, +inf and quiet NaN among ordinary ones, with grads 0: no operation of the
    step is invalid (vsqrtps raises nothing for them), so FE_INVALID stays clear, on every build
    (fo_root.h's emulated root clamps such x on its bits; vminps would raise it for a NaN)."""
    libm = c_math_library("reads the floating-point flags")
    fe_invalid, fe_all = 0x01, 0x3D
    n = 24 * 4 + 5
    squares = np.tile(np.array([0.0, np.nan, np.inf, 1.0], np.float32), n // 4 + 1)[:n]
    step = root_step(kernel, np.zeros(n, np.float32), eps=1e-8)
    for namespace in each_build(backend, monkeypatch):
        p, state = np.zeros(n, np.float32), [np.ones(n, np.float32), squares.copy()]
        with stepping_on(backend, 1):       # (the flags are the calling thread's)
            libm.feclearexcept(fe_all)
            step(p, state)
            raised = libm.fetestexcept(fe_invalid)
        assert not raised, namespace


@pytest.mark.parametrize("kernel", ROOT_KERNELS)
@pytest.mark.parametrize("backend", COMPILED)
def test_steps_in_a_directed_rounding_mode_give_the_reference_bits(backend, kernel,
                                                                   monkeypatch):
    """A thread set to round down, up or toward zero (fesetround, as a C library may leave
    it): the roots are vsqrtps's, as the reference's (fo_root.h's emulated root rounds as
    vsqrtps only to nearest). Each kernel's squares exact (the Adam family with beta2 0.75 from
    v = 0 and grads 2r, so v = r * r, at step 100, where its bias corrections are 1 in float32;
    RMSprop and Adadelta with alpha, rho 0 and grads r; Adagrad's sums r * r beside a grad
    whose square vanishes), whose roots one ulp off would show."""
    libm = c_math_library("sets the rounding mode (fesetround)")
    rng = np.random.default_rng(3)
    n = 24 * 40 + 5
    roots = (rng.integers(1, 2 ** 12, n) * 2.0 ** -6).astype(np.float32)

    def step(p):
        zeros, squares = np.zeros(n, np.float32), roots * roots
        adam = dict(betas=(0.9, 0.75), eps=0.0)
        if kernel in ("adam", "adamw"):
            ops.adam_step_(p, 2 * roots, zeros.copy(), zeros, 100, weight_decay=0.1
                           if kernel == "adamw" else 0, decoupled_weight_decay=True, **adam)
        elif kernel == "nadam":
            ops.nadam_step_(p, 2 * roots, zeros.copy(), zeros, 100, 0.9, betas=(0.9, 0.75),
                            eps=1e-37)
        elif kernel == "radam":         # (rectified: rho_inf 7)
            ops.radam_step_(p, 2 * roots, zeros.copy(), zeros, 100, **adam)
        elif kernel == "rmsprop":
            ops.rmsprop_step_(p, roots, zeros, beta=0.0, eps=0.0)
        elif kernel == "adagrad":
            ops.adagrad_step_(p, np.full(n, 2.0 ** -80, np.float32), squares, 1, lr=1.0, eps=0.0)
        else:
            ops.adadelta_step_(p, roots, zeros, squares[::-1].copy(), rho=0.0, eps=0.0)

    def run(name, mode):
        p = np.zeros(n, np.float32)
        with stepping_on(name, 1), np.errstate(all="ignore"):   # (the mode is the thread's)
            libm.fesetround(mode)
            try:
                step(p)
            finally:
                libm.fesetround(0)
        return p.tobytes()
    for mode in (0x400, 0x800, 0xC00):     # FE_DOWNWARD, FE_UPWARD, FE_TOWARDZERO
        expected = run("numpy", mode)
        for namespace in each_build(backend, monkeypatch):
            assert run(backend, mode) == expected, (hex(mode), namespace)


@pytest.mark.parametrize("case", [c for c, (k, _) in KERNEL_CASES.items() if k == "radam"])
def test_the_radam_cases_run_both_sides_of_the_switch(case):
    """rho_t (torch's formula) is <= 5 on the first step and > 5 on the last one, so the grid
    holds both the un-rectified and the rectified update to the reference."""
    beta2 = KERNEL_CASES[case][1].get("betas", (0.9, 0.999))[1]
    rho_inf = 2 / (1 - beta2) - 1
    rho = [rho_inf - 2 * t * beta2 ** t / (1 - beta2 ** t) for t in (1, KERNEL_STEPS)]
    assert rho[0] <= 5 < rho[1]


@pytest.mark.parametrize("case", KERNEL_CASES)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_kernel_nan_and_inf_propagate_as_in_the_reference(backend, case, dtype):
    p0, grads = kernel_inputs((64,), dtype)
    p0[3], p0[5] = np.nan, np.inf
    grads[0][7], grads[9][9], grads[19][11], grads[12][13] = np.nan, np.inf, -np.inf, np.nan
    expected_p, expected_state = run_kernel(case, "numpy", p0, grads, "contiguous")
    p, state = run_kernel(case, backend, p0, grads, "contiguous")
    np.testing.assert_array_equal(p, expected_p)   # NaN positions must match too
    for k in state:
        np.testing.assert_array_equal(state[k], expected_state[k], err_msg=k)
    # a NaN grad poisons its element from then on, and only its element
    assert np.isnan(p[3]) and np.isnan(p[7]) and np.isnan(p[13])
    assert np.isfinite(p[0]) and np.isfinite(p[8])


def test_adamax_infinity_norm_keeps_nan():
    """exp_inf = max(beta2 * exp_inf, |g| + eps) with torch.maximum's NaN rule: a NaN on
    either side gives NaN (a plain max would drop it on one side)."""
    for backend in GRID_BACKENDS:
        with fo.use_backend(backend):
            p = np.zeros(3)
            m, u = np.zeros(3), np.array([np.nan, 1.0, 1.0])
            ops.adamax_step_(p, np.array([0.5, np.nan, 0.5]), m, u, 1, lr=0.1, betas=(0.9, 0.5))
            assert np.isnan(u[0]) and np.isnan(u[1]), backend
            assert u[2] == 0.5 + 1e-8, backend      # max(0.5 * 1.0, 0.5 + eps)


@pytest.mark.parametrize("case", KERNEL_CASES)
@pytest.mark.parametrize("backend", COMPILED)
def test_kernel_is_bit_identical_for_any_thread_count(backend, case, dtype):
    p0, grads = kernel_inputs((100003,), dtype)
    p1, s1 = run_kernel(case, backend, p0, grads, "contiguous", threads=1)
    p2, s2 = run_kernel(case, backend, p0, grads, "contiguous", threads=2)
    assert p1.tobytes() == p2.tobytes()
    assert all(s1[k].tobytes() == s2[k].tobytes() for k in s1)


# --------------------------------------------------------------------- lists in one call
# name -> (state arrays with initial values, single step, multi step)
FOREACH_CASES = {
    "ewa": ({}, lambda p, g, s, t: ops.ewa_(p, g, 0.9),
            lambda p, g, s, t: ops.foreach_ewa_(p, g, 0.9)),
    "sgd_nesterov_wd": (
        {"buf": 0.0},
        lambda p, g, s, t: ops.sgd_step_(p, g, s["buf"], lr=0.1, momentum=0.9, nesterov=True,
                                         weight_decay=0.01, first_step=t == 1),
        lambda p, g, s, t: ops.foreach_sgd_step_(p, g, s["buf"], lr=0.1, momentum=0.9,
                                                 nesterov=True, weight_decay=0.01,
                                                 first_step=t == 1)),
    "sgd_plain_maximize": (
        {}, lambda p, g, s, t: ops.sgd_step_(p, g, lr=0.1, maximize=True),
        lambda p, g, s, t: ops.foreach_sgd_step_(p, g, lr=0.1, maximize=True)),
    "momentum": ({"v": 0.0}, lambda p, g, s, t: ops.momentum_step_(p, g, s["v"], lr=0.1),
                 lambda p, g, s, t: ops.foreach_momentum_step_(p, g, s["v"], lr=0.1)),
    "rmsprop_centered_momentum": (
        {"sq": 0.0, "ga": 0.0, "buf": 0.0},
        lambda p, g, s, t: ops.rmsprop_step_(p, g, s["sq"], lr=0.01, grad_avg=s["ga"],
                                             momentum_buffer=s["buf"], momentum=0.5),
        lambda p, g, s, t: ops.foreach_rmsprop_step_(p, g, s["sq"], lr=0.01,
                                                     grad_avgs=s["ga"],
                                                     momentum_buffers=s["buf"],
                                                     momentum=0.5)),
    "adagrad": ({"sum": 0.1}, lambda p, g, s, t: ops.adagrad_step_(p, g, s["sum"], t, lr=0.1,
                                                                    lr_decay=0.01),
                lambda p, g, s, t: ops.foreach_adagrad_step_(p, g, s["sum"], t, lr=0.1,
                                                             lr_decay=0.01)),
    "adam_amsgrad_wd": (
        {"m": 0.0, "v": 0.0, "vmax": 0.0},
        lambda p, g, s, t: ops.adam_step_(p, g, s["m"], s["v"], t, lr=0.01, weight_decay=0.1,
                                          max_exp_avg_sq=s["vmax"]),
        lambda p, g, s, t: ops.foreach_adam_step_(p, g, s["m"], s["v"], t, lr=0.01,
                                                  weight_decay=0.1, max_exp_avg_sqs=s["vmax"])),
    "adamw": (
        {"m": 0.0, "v": 0.0},
        lambda p, g, s, t: ops.adam_step_(p, g, s["m"], s["v"], t, lr=0.01, weight_decay=0.1,
                                          decoupled_weight_decay=True),
        lambda p, g, s, t: ops.foreach_adam_step_(p, g, s["m"], s["v"], t, lr=0.01,
                                                  weight_decay=0.1,
                                                  decoupled_weight_decay=True)),
}


def foreach_group(case, steps=4):
    """A random mixed group (kernel_specs.GROUP) with the case's state."""
    return make_group(FOREACH_CASES[case][0], steps=steps)


def run_single(case, backend, params, state, grads):
    run_group(FOREACH_CASES[case][1], backend, params, state, grads, multi=False)


def run_multi(case, backend, params, state, grads):
    run_group(FOREACH_CASES[case][2], backend, params, state, grads, multi=True)


@pytest.mark.parametrize("case", FOREACH_CASES)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_one_call_per_group_is_bit_identical_to_one_call_per_array(backend, case):
    p1, s1, grads = foreach_group(case)
    p2, s2, _ = foreach_group(case)
    run_single(case, backend, p1, s1, grads)
    run_multi(case, backend, p2, s2, grads)
    for a, b in zip(p1 + sum(s1.values(), []), p2 + sum(s2.values(), [])):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("case", FOREACH_CASES)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_multi_matches_the_reference(backend, case):
    if backend == "numpy":
        pytest.skip("the reference is the expected value")
    p1, s1, grads = foreach_group(case)
    p2, s2, _ = foreach_group(case)
    run_single(case, "numpy", p1, s1, grads)
    run_multi(case, backend, p2, s2, grads)
    for a, b in zip(p1 + sum(s1.values(), []), p2 + sum(s2.values(), [])):
        assert_close(b, a, a.dtype)


@pytest.mark.parametrize("backend", COMPILED)
def test_multi_is_bit_identical_for_any_thread_count(backend):
    results = []
    for threads in (1, 2):
        params, state, grads = foreach_group("adam_amsgrad_wd")
        fo.set_num_threads(threads)
        try:
            run_multi("adam_amsgrad_wd", backend, params, state, grads)
        finally:
            fo.set_num_threads(2)
        results.append([a.tobytes() for a in params + sum(state.values(), [])])
    assert all(r == results[0] for r in results[1:])


def kernel_group(case, steps=KERNEL_STEPS):
    """A random mixed group (kernel_specs.GROUP) with the case's state, zeros."""
    return make_group(dict.fromkeys(STATE_KEYS[KERNEL_CASES[case][0]], 0.0), seed=3,
                      steps=steps)


def run_in_group(case, backend, params, state, grads, multi):
    """Step the group with one foreach call per step (``multi``) or one call per array."""
    return run_group(functools.partial(call_kernel, case, multi=multi), backend, params, state,
                     grads, multi)


@pytest.mark.parametrize("case", KERNEL_CASES)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_one_call_per_group_gives_the_bits_of_one_call_per_array(backend, case):
    single = run_in_group(case, backend, *kernel_group(case), multi=False)
    multi = run_in_group(case, backend, *kernel_group(case), multi=True)
    for a, b in zip(single, multi):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("case", KERNEL_CASES)
@pytest.mark.parametrize("backend", [b for b in GRID_BACKENDS if b != "numpy"])
def test_one_call_per_group_matches_the_reference(backend, case):
    expected = run_in_group(case, "numpy", *kernel_group(case), multi=False)
    actual = run_in_group(case, backend, *kernel_group(case), multi=True)
    for a, b in zip(actual, expected):
        assert_close(a, b, b.dtype)


@pytest.mark.parametrize("backend", COMPILED)
def test_one_call_per_group_is_bit_identical_for_any_thread_count(backend):
    results = []
    for threads in (1, 2):
        fo.set_num_threads(threads)
        try:
            arrays = run_in_group("radam_wd", backend, *kernel_group("radam_wd"), multi=True)
        finally:
            fo.set_num_threads(2)
        results.append([a.tobytes() for a in arrays])
    assert all(r == results[0] for r in results[1:])


# ---------------------------------------------------------------------------------- Lion
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_lion_step_by_hand(backend):
    # c = 0.1 g + 0.9 m = [0.05, 0.065, -0.18, 0.3, 0]; sign = [1, 1, -1, 1, 0]
    p = np.array([1.0, -2.0, 0.5, 0.0, 2.0])
    g = np.array([0.5, -0.25, 0.0, 3.0, 0.0])
    m = np.array([0.0, 0.1, -0.2, 0.0, 0.0])
    with fo.use_backend(backend):
        fo.ops.lion_step_(p, g, m, lr=0.1, betas=(0.9, 0.99), weight_decay=0.01)
    # p - 0.1 * (sign + 0.01 p);  m = 0.01 g + 0.99 m
    np.testing.assert_allclose(p, [0.899, -2.098, 0.5995, -0.1, 1.998], rtol=1e-15, atol=0)
    np.testing.assert_allclose(m, [0.005, 0.0965, -0.198, 0.03, 0.0], rtol=1e-15, atol=1e-18)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("skips", [(16, 16, 16, 16), (48, 0, 16, 32)], ids=["together", "apart"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_long_steps_on_arrays_past_a_cache_line_give_the_reference_bits(backend, dtype, skips,
                                                                         threads):
    """Steps long enough that the compiled backends start their vector loop where the param
    starts a 64-byte line (the elements before it a call of their own), on arrays lying 0-48
    bytes past one as NumPy places them, with every optional state in use and with none:
    the reference's bits, on one thread and two."""
    from kernel_specs import SPECS, same_bits, valid_arrays
    n = 70_001

    def placed(a, skip):
        buf = np.zeros(a.nbytes + 128, np.uint8)
        start = -buf.__array_interface__["data"][0] % 64 + skip
        out = buf[start:start + a.nbytes].view(a.dtype)
        out[...] = a
        return out
    for spec in SPECS.values():
        for optional in (True, False):
            arrays = valid_arrays(spec, (n,), dtype, np.random.default_rng(1))
            arrays = [a if i < spec.nrequired or optional else None
                      for i, a in enumerate(arrays)]
            hyper = dict(spec.hyper)
            if not optional and "momentum" in hyper:
                hyper["momentum"] = 0           # (with no momentum buffer)
            expected = [None if a is None else a.copy() for a in arrays]
            with fo.use_backend("numpy"):
                spec.single(expected, **hyper)
            with fo.use_backend(backend):
                previous = fo.get_num_threads()
                fo.set_num_threads(threads)
                try:
                    for _ in range(2):      # (the second: numba's pool is awake, see launch)
                        got = [None if a is None else placed(a, skips[min(i, 3)])
                               for i, a in enumerate(arrays)]
                        spec.single(got, **hyper)
                finally:
                    fo.set_num_threads(previous)
            for i, (a, b) in enumerate(zip(got, expected)):
                assert (a is None and b is None) or same_bits(a, b), (spec.name, optional, i)
