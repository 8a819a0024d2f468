"""The 16-bit kernels (fastopt._registry.HALF_KERNELS: Adam on bfloat16/float16 parameters
with float32 master weights and state) on every backend against the NumPy reference
(fastopt.reference.lowp), bit for bit: every option and the optional state, odd sizes, empty,
0-d, non-contiguous and int16 arrays, lists; the rounding of every kind of float32 and the
widening of every 16-bit pattern; bad input refused by name, changing nothing.

Cost: ~40 variants x 3 layouts of 37 elements per backend, and two 70,000-element steps per
backend and format (well under a second after Numba's compile, cached on disk)."""
import numpy as np
import pytest

import fastopt as fo
from conftest import GRID_BACKENDS
from fastopt import _backend, _registry
from fastopt.reference import lowp
from kernel_specs import same_bits as same_float_bits

HALF = {k.name: k for k in _registry.HALF_KERNELS}
ADAM = HALF["adam_half"]
FORMATS = {"bf16": True, "f16": False}


def same_bits(a, b):
    """The 16-bit arrays' exact bits (NaN canonical: the kernels write one NaN pattern), the
    float32 ones' as kernel_specs.same_bits."""
    if a.dtype.itemsize == 2:
        return (a.dtype == b.dtype and a.shape == b.shape
                and np.array_equal(a.view(np.uint16), b.view(np.uint16)))
    return same_float_bits(a, b)


def namespace(backend):
    with fo.use_backend(backend):
        return _backend.active


def to_bits(x, bfloat16):
    return (lowp.float32_to_bfloat16(x) if bfloat16
            else lowp.float32_to_float16(x).view(np.uint16))


def arrays_for(shape, bfloat16, rng, amsgrad=True):
    """param (rounded master), grad, master, exp_avg, exp_avg_sq, max_exp_avg_sq."""
    f32 = lambda x: np.array(x, np.float32)      # noqa: E731 (0-d stays an array)
    master = f32(rng.standard_normal(shape))
    grad = to_bits(f32(rng.standard_normal(shape)), bfloat16)
    m = f32(0.1 * rng.standard_normal(shape))
    v = f32(0.1 * rng.random(shape))
    vmax = f32(v + 0.05 * rng.random(shape)) if amsgrad else None
    return [to_bits(master, bfloat16), grad, master, m, v, vmax]


def run(backend, arrays, bfloat16, multi=False, **options):
    scalars = {**ADAM.examples, **{o: False for o in ADAM.options}, **options,
               "bfloat16": bfloat16}
    ns = namespace(backend)
    if multi:
        ns.adam_half_multi(*[None if a is None else [a] for a in arrays], **scalars)
    else:
        ns.adam_half(*arrays, **scalars)


def copies(arrays):
    return [None if a is None else a.copy() for a in arrays]


# the format is a parameter of its own
VARIANTS = [({o: on for o, on in opts.items() if o != "bfloat16"}, used)
            for opts, used in ADAM.variants() if not opts["bfloat16"]]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("variant", VARIANTS,
                         ids=["+".join([o for o, on in opts.items() if on] + list(used))
                              or "plain" for opts, used in VARIANTS])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_every_variant_matches_the_reference(backend, variant, fmt):
    options, used = variant
    bfloat16 = FORMATS[fmt]
    for shape, seed in (((37,), 0), ((), 1), ((0,), 2), ((3, 5), 3)):
        arrays = arrays_for(shape, bfloat16, np.random.default_rng(seed),
                            amsgrad="max_exp_avg_sq" in used)
        expected = copies(arrays)
        run("numpy", expected, bfloat16, **options)
        for multi in (False, True):
            got = copies(arrays)
            run(backend, got, bfloat16, multi=multi, **options)
            for name, a, b in zip(ADAM.arrays, got, expected):
                assert (a is None) == (b is None)
                assert a is None or same_bits(a, b), (name, shape, multi)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_layouts_lists_and_threads(backend, fmt):
    """Non-contiguous (run on copies, written back) and int16 views of the 16-bit arrays, a
    list of mixed sizes in one call, and 70,000 elements (threaded on the compiled
    backends): the reference's bits."""
    bfloat16 = FORMATS[fmt]
    rng = np.random.default_rng(5)
    base = arrays_for((8, 10), bfloat16, rng)
    strided = [a[:, ::2] if i != 1 else a[:, 1::2] for i, a in enumerate(base)]
    strided[0] = strided[0].view(np.int16)
    expected = copies(strided)
    run("numpy", expected, bfloat16)
    run(backend, strided, bfloat16)
    assert all(same_bits(a, b) for a, b in zip(strided, expected))
    assert all(same_bits(a[:, 1::2], b[:, 1::2]) for a, b in zip(base[2:], arrays_for(
        (8, 10), bfloat16, np.random.default_rng(5))[2:]))      # the rest left alone
    tensors = [arrays_for(s, bfloat16, rng) for s in ((7,), (70000,), (), (0,), (3, 3))]
    lists = [[t[i] for t in tensors] for i in range(6)]
    expected = [[a.copy() for a in lst] for lst in lists]
    ns = namespace(backend)
    scalars = dict(ADAM.examples, decoupled=True, maximize=False, eps_inside_sqrt=False,
                   bfloat16=bfloat16)
    ns.adam_half_multi(*lists, **scalars)
    with fo.use_backend("numpy"):
        _backend.active.adam_half_multi(*expected, **scalars)
    for lst, exp in zip(lists, expected):
        assert all(same_bits(a, b) for a, b in zip(lst, exp))


# float32 bit patterns whose rounding is delicate: ties, carries, overflow, subnormals, NaN
EDGES = np.array([0x3F808000, 0x3F818000, 0x3FFF8000, 0x7F7F7FFF, 0x7F7FFFFF, 0x7F800000,
                  0x80000000, 0x00008000, 0x00018000, 0x807FFFFF, 0x7FC00001, 0xFFFFFFFF,
                  0x7F800001, 0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FF001, 0x38800000,
                  0x387FFFFF, 0x387FF000, 0x33000000, 0x33000001, 0xB3000001, 0x33800000,
                  0x33C00000, 0x34000000, 0x3F801000, 0x3F803000, 0x3F802FFF, 0x00000001],
                 np.uint32)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_rounding_of_any_float32(backend, fmt):
    """With a zero grad and zero moments the master keeps its bits, so the parameter written
    is the rounding of arbitrary float32 patterns: random ones, ties for both formats and the
    edges, against the reference's rounding (lowp), and torch's where it is installed."""
    bfloat16 = FORMATS[fmt]
    rng = np.random.default_rng(7)
    u = rng.integers(0, 1 << 32, 60000, dtype=np.uint64).astype(np.uint32)
    u[:10000] = (u[:10000] & 0xFFFF0000) | 0x8000                  # bfloat16 ties
    u[10000:20000] = (u[10000:20000] & 0xFFFFE000) | 0x1000        # float16 normal ties
    u[20000:30000] = (u[20000:30000] & 0x87FFFFFF) | 0x30000000    # float16 subnormal range
    u[-len(EDGES):] = EDGES
    master = u.view(np.float32).copy()
    n = master.size
    zeros = np.zeros(n, np.float32)
    arrays = [np.zeros(n, np.uint16), np.zeros(n, np.uint16), master, zeros.copy(),
              zeros.copy(), None]
    run(backend, arrays, bfloat16)
    assert same_bits(arrays[2], master)
    np.testing.assert_array_equal(arrays[0], to_bits(master, bfloat16))
    torch = pytest.importorskip("torch")
    dtype = torch.bfloat16 if bfloat16 else torch.float16
    theirs = torch.from_numpy(master).to(dtype).view(torch.int16).numpy().view(np.uint16)
    ok = ~np.isnan(master)
    np.testing.assert_array_equal(arrays[0][ok], theirs[ok])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_widening_of_every_16bit_pattern(backend, fmt):
    """With beta1 = 0 the first moment becomes the grad exactly: every 16-bit pattern's
    float32 value, NaNs staying NaN."""
    bfloat16 = FORMATS[fmt]
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    n = bits.size
    arrays = [np.zeros(n, np.uint16), bits, np.zeros(n, np.float32), np.zeros(n, np.float32),
              np.zeros(n, np.float32), None]
    scalars = dict(ADAM.examples, beta1=0.0, weight_decay=0.0, grad_scale=1.0, decoupled=False,
                   maximize=False, eps_inside_sqrt=False, bfloat16=bfloat16)
    namespace(backend).adam_half(*arrays, **scalars)
    expected = lowp.widen(bits, bfloat16)
    # m = 0 + 1 * (g - 0) is g but for -0.0, which becomes +0.0
    assert same_bits(arrays[3], expected + np.float32(0))
    assert np.signbit(expected[bits == 0x8000]).all()
    if not bfloat16:
        ok = ~np.isnan(expected)
        np.testing.assert_array_equal(expected[ok], bits.view(np.float16)[ok].astype(np.float32))


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_bad_input_is_refused_by_name_and_changes_nothing(backend):
    rng = np.random.default_rng(9)
    good = arrays_for((5,), True, rng)
    scalars = dict(ADAM.examples, decoupled=False, maximize=False, eps_inside_sqrt=False,
                   bfloat16=True)
    ns = namespace(backend)
    cases = [
        (2, good[2].astype(np.float64), TypeError, "master"),
        (0, good[0].view(np.float16), TypeError, "param"),
        (1, good[1].astype(np.float32), TypeError, "grad"),
        (3, good[3][:4], ValueError, "exp_avg"),
        (4, None, TypeError, "exp_avg_sq"),
        (5, "exp_avg", ValueError, "max_exp_avg_sq"),           # exp_avg itself
    ]
    for index, bad, error, name in cases:
        arrays = copies(good)
        arrays[index] = arrays[3] if isinstance(bad, str) else bad
        before = copies(arrays)
        with pytest.raises(error, match=name):
            ns.adam_half(*arrays, **scalars)
        with pytest.raises(error, match=name):
            ns.adam_half_multi(*[[a] for a in arrays], **scalars)
        assert all(a is None or same_bits(a, b) for a, b in zip(arrays, before))
    frozen = copies(good)
    frozen[2].flags.writeable = False
    with pytest.raises(ValueError, match="master"):
        ns.adam_half(*frozen, **scalars)
