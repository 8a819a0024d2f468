"""Property test: every Cython build of the optimizer kernels gives the same bytes.

The optimizer steps are compiled up to three times (``optim``: x86-64-v3; ``optim_avx512``:
x86-64-v4 with 256-bit vectors; ``optim_avx512_zmm``: x86-64-v4 with 512-bit vectors) and
fastopt._kernels loads one of them by CPU. Each element is computed on its own, so the builds
must agree bit for bit, signed zeros included, whatever the vector width and the scalar tail,
but for the payload of a NaN made from two NaNs (IEEE 754 leaves which one wins to the
operand order, which GCC picks per loop: a build's vector loop and its tail can differ).
Hypothesis draws a kernel (every fo.ops step and ewa_, single or foreach, and every 16-bit form
of fastopt._registry.HALF_KERNELS), its options and hyper-parameters, shapes
(0-d, empty, 1..70 around every vector width, 2-D, rarely 1,000,003), a memory layout per array
(tests/test_fuzz_kernels.py's: strided, reversed, transposed, unaligned, byte-swapped...),
values with NaN, +-inf, -0.0, subnormals and huge numbers mixed in, and 1 or 2 threads; each
build runs the call on its own copy, and every output array must have the same bytes in every
build (and the NumPy reference's values: kernel_specs.same_bits).

Cost: derandomized (the "ci" profile in tests/conftest.py), 200 examples, ~10 s on one core.
"""
import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastopt as fo
from conftest import GRID_BACKENDS, cython_builds, use_cython_build
from fastopt import _backend, _registry
from fastopt.reference import lowp
from kernel_specs import SPECS, same_bits
from test_fuzz_kernels import LAYOUTS, fill, hyper, lay_out, special_values

BUILDS = cython_builds()
pytestmark = pytest.mark.skipif(
    len(BUILDS) < 2 or "cython" not in GRID_BACKENDS,
    reason="needs at least two Cython builds of the optimizer kernels (a CPU with AVX-512)")

HALF = {k.name: k for k in _registry.HALF_KERNELS}
FLAG = st.booleans()


@st.composite
def shapes(draw):
    kind = draw(st.integers(0, 31))
    if kind == 0:
        return (1_000_003,)          # threaded from 2**15 elements on; odd tail
    if kind < 4:
        return ()
    if kind < 8:
        return tuple(draw(st.integers(0, 9)) for _ in range(draw(st.integers(2, 3))))
    return (draw(st.integers(0, 70)),)


@st.composite
def values(draw, name, shape, dtype):
    """``fill`` of test_fuzz_kernels (specials mixed in) with a seed, special fraction and
    scale drawn here."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    special = draw(st.sampled_from([0.0, 0.05, 0.5]))
    scale = draw(st.sampled_from([1e-40 if dtype == np.float32 else 1e-310, 1e-3, 1.0, 1e30]))
    a = fill(name, shape, dtype, rng, special, scale)
    if draw(FLAG):  # NaNs of either sign and any payload: where two meet, IEEE 754 leaves
        # which one the result carries, but every build must make the same choice
        bits, keep, quiet = ((np.uint32, 0x803FFFFF, 0x7FC00000) if a.itemsize == 4 else
                             (np.uint64, 0x8007FFFFFFFFFFFF, 0x7FF8000000000000))
        nan = np.isnan(a)
        raw = rng.integers(0, 1 << 64, np.count_nonzero(nan), dtype=np.uint64).astype(bits)
        a.view(bits)[nan] = (raw & bits(keep)) | bits(quiet)
    return a


def half_bits(master, bfloat16, rng):
    """16-bit patterns: the rounding of ``master``, a third of them arbitrary bits (every
    NaN payload, subnormals, infinities)."""
    bits = (lowp.float32_to_bfloat16(master) if bfloat16
            else lowp.float32_to_float16(master).view(np.uint16))
    bits = np.array(bits, np.uint16)
    raw = rng.integers(0, 1 << 16, master.shape).astype(np.uint16)
    return np.where(rng.random(master.shape) < 0.3, raw, bits).astype(np.uint16)


@st.composite
def half_scalars(draw, kernel):
    """Registry scalars (already folded, as fastopt.torch passes them) in their valid ranges:
    each its example, 0, 1 or any float in [0, 1], the betas below 1 (torch.optim's range)
    and a bias correction above 0; every option."""
    s = {}
    for n in kernel.scalars:
        top = 1.0 if n in ("beta1", "beta2", "alpha", "rho", "momentum") else 1.1
        low = 1e-6 if n == "bias_correction2" else 0.0
        s[n] = draw(st.sampled_from([kernel.examples[n], low, 1.0]).filter(lambda x: x < top)
                    | st.floats(low, 1, exclude_max=top == 1.0))
    s.update({o: draw(FLAG) for o in kernel.options})
    return s


@st.composite
def calls(draw):
    """(kind, name, foreach, scalars, tensors of native arrays, layouts per array)."""
    if draw(st.integers(0, 2)) == 0:
        kernel = HALF[draw(st.sampled_from(sorted(HALF)))]
        scalars = draw(half_scalars(kernel))
        use = {i for i in range(kernel.nrequired, len(kernel.arrays)) if draw(FLAG)}
        kind = "half"
    else:
        kernel = SPECS[draw(st.sampled_from(sorted(SPECS)))].kernel
        scalars, use = draw(hyper(kernel.name))
        kind = "ops"
    foreach = draw(FLAG)
    tensors, layouts = [], []
    for _ in range(draw(st.integers(1, 3)) if foreach else 1):
        shape = draw(shapes())
        if kind == "half":
            rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
            master = draw(values("master", shape, np.float32))
            arrays = [half_bits(master, scalars["bfloat16"], rng),
                      half_bits(draw(values("grad", shape, np.float32)), scalars["bfloat16"],
                                rng), master]
            arrays += [draw(values(name, shape, np.float32))
                       if i < kernel.nrequired or i in use else None
                       for i, name in enumerate(kernel.arrays[3:], start=3)]
        else:
            dtype = draw(st.sampled_from([np.float32, np.float64]))
            arrays = [draw(values(name, shape, dtype))
                      if i < kernel.nrequired or i in use else None
                      for i, name in enumerate(kernel.arrays)]
        tensors.append(arrays)
        layouts.append([draw(st.sampled_from(LAYOUTS)) for _ in arrays])
    return kind, kernel, foreach, scalars, tensors, layouts


@contextlib.contextmanager
def installed(namespace, threads):
    """``namespace`` (a Cython build, or None: the NumPy reference) as the active backend,
    on ``threads`` threads."""
    with pytest.MonkeyPatch.context() as mp:
        if namespace is not None:
            use_cython_build(mp, namespace)
            previous = namespace.get_num_threads()
            namespace.set_num_threads(threads)
        try:
            with fo.use_backend("numpy" if namespace is None else "cython"):
                yield
        finally:
            if namespace is not None:
                namespace.set_num_threads(previous)


def call(kind, kernel, foreach, scalars, tensors):
    lists = [None if i >= kernel.nrequired and all(t[i] is None for t in tensors)
             else [t[i] for t in tensors] for i in range(len(kernel.arrays))]
    with np.errstate(all="ignore"):
        if kind == "half":
            if foreach:
                getattr(_backend.active, kernel.multi)(*lists, **scalars)
            else:
                getattr(_backend.active, kernel.name)(*[lst and lst[0] for lst in lists],
                                                      **scalars)
        elif foreach:
            SPECS[kernel.name].multi(lists, **scalars)
        else:
            SPECS[kernel.name].single([lst and lst[0] for lst in lists], **scalars)


def laid_out(tensors, layouts):
    return [[None if a is None else lay_out(a, how) for a, how in zip(t, hows)]
            for t, hows in zip(tensors, layouts)]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow,
                                                   HealthCheck.data_too_large])
@given(case=calls(), threads=st.sampled_from([1, 2]))
def test_every_build_gives_the_same_bytes(case, threads):
    kind, kernel, foreach, scalars, tensors, layouts = case
    results = []
    for namespace in BUILDS:
        laid = laid_out(tensors, layouts)
        with installed(namespace, threads):
            call(kind, kernel, foreach, scalars, laid)
        results.append(laid)
    first = results[0]
    for namespace, got in zip(BUILDS[1:], results[1:]):
        for j, (t0, t1) in enumerate(zip(first, got)):
            for name, a, b in zip(kernel.arrays, t0, t1):
                # the same bytes but for NaN payloads (see the docstring), 16-bit arrays too
                # (widened: a float16 param's NaN made from two NaNs keeps the sign of the
                # one its build's loop took)
                if a is not None and a.dtype.kind != "f":
                    a, b = (lowp.widen(x.astype(np.uint16), scalars["bfloat16"]) for x in (a, b))
                same = a is None or same_bits(a, b)
                assert same, (f"{name}[{j}] of {kernel.name}: {namespace.package.__name__} "
                              f"differs from {BUILDS[0].package.__name__}")
    first = [[None if a is None else a.tobytes() for a in t] for t in first]
    # and the reference's values (its NaN payloads may differ: kernel_specs.same_bits; a
    # float16 param keeps the sign of the master's NaN, so 16-bit arrays are compared widened)
    with installed(None, threads):
        call(kind, kernel, foreach, scalars, tensors)
    for j, (t, laid_bytes) in enumerate(zip(tensors, first)):
        for name, want, got, how in zip(kernel.arrays, t, laid_bytes, layouts[j]):
            if want is None:
                continue
            a = np.frombuffer(got, lay_out(want, how).dtype).reshape(want.shape)
            if a.dtype.kind != "f":
                a = lowp.widen(a.astype(np.uint16), scalars["bfloat16"])
                want = lowp.widen(want, scalars["bfloat16"])
            assert same_bits(a, want), f"{name}[{j}] of {kernel.name}: not the reference's"
