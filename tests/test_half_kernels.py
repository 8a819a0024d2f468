"""The 16-bit kernels (fastopt._registry.HALF_KERNELS: every fastopt.torch optimizer's kernel on
bfloat16/float16 parameters with float32 master weights and state) on every backend, bit for
bit against the unfused path that defines them (the grad widened into a float32 copy, the
float32 kernel on the master and the state, the master rounded into the param): every kernel,
option and optional state, odd sizes, empty, 0-d, non-contiguous and int16 arrays, lists,
threads; the rounding of every kind of float32 and the widening of every 16-bit pattern; bad
input refused by name, changing nothing.

Cost: ~80 variants x 4 shapes x 2 steps per format and backend, and a list step per kernel,
format and backend (a few seconds; Numba's compile of the eight kernels' 16-bit forms, on a
cold cache, ~40 s of CPU, cached on disk)."""

import numpy as np
import pytest

import fastopt as fo
from conftest import GRID_BACKENDS, relayout
from fastopt import _backend, _registry
from fastopt.reference import lowp
from kernel_specs import same_bits as same_float_bits

HALF = {k.name: k for k in _registry.HALF_KERNELS}
ADAM = HALF["adam_half"]
FORMATS = {"bf16": True, "f16": False}


def same_bits(a, b):
    """The 16-bit arrays' exact bits (NaN canonical: the kernels write one NaN pattern per
    sign), the float32 ones' as kernel_specs.same_bits."""
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


def arrays_for(kernel, shape, bfloat16, rng, used=None):
    """param (the rounded master), grad, master, and the kernel's state: every optional
    array, or those in ``used`` (the others None); running squares and maxima >= 0."""
    f32 = lambda x: np.array(x, np.float32)      # noqa: E731 (0-d stays an array)
    master = f32(rng.standard_normal(shape))
    arrays = [to_bits(master, bfloat16), to_bits(f32(rng.standard_normal(shape)), bfloat16),
              master]
    for name in kernel.arrays[3:]:
        a = f32(0.1 * rng.standard_normal(shape))
        if any(word in name for word in ("sq", "sum", "inf", "square", "acc")):
            a = f32(np.abs(a))
        arrays.append(None if used is not None and name in kernel.optional and name not in used
                      else a)
    return arrays


def scalars_for(kernel, bfloat16, **options):
    return {**kernel.examples, **{o: False for o in kernel.options}, **options,
            "bfloat16": bfloat16}


def unfused(kernel, arrays, scalars):
    """The definition, written out: the grad widened into a float32 copy and multiplied by
    grad_scale, the reference's float32 kernel on the master and the state (its own grad scale
    1), the master rounded into the param."""
    scalars = dict(scalars)
    bfloat16, scale = scalars.pop("bfloat16"), scalars.pop("grad_scale")
    grad = lowp.widen(arrays[1], bfloat16)
    if scale != 1:
        np.multiply(grad, np.float32(scale), out=grad)
    if "grad_scale" in _registry.get(kernel.base).scalars:
        scalars["grad_scale"] = 1.0
    getattr(fo.reference.optim, kernel.base)(arrays[2], grad, *arrays[3:], **scalars)
    lowp.store_rounded_(arrays[0], arrays[2], bfloat16)


def run(backend, kernel, arrays, scalars, multi=False):
    ns = namespace(backend)
    if multi:
        getattr(ns, kernel.multi)(*[None if a is None else [a] for a in arrays], **scalars)
    else:
        getattr(ns, kernel.name)(*arrays, **scalars)


def native(a):
    """A C-ordered copy of ``a`` in native byte order."""
    return np.array(a, dtype=a.dtype.newbyteorder("="), order="C")


def copies(arrays):
    return [None if a is None else a.copy() for a in arrays]


# every kernel's variants; the format is a parameter of its own
VARIANTS = [(k.name, {o: on for o, on in opts.items() if o != "bfloat16"}, used)
            for k in _registry.HALF_KERNELS for opts, used in k.variants()
            if not opts["bfloat16"]]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name,options,used", VARIANTS, ids=[
    f"{name}-{'+'.join([o for o, on in opts.items() if on] + list(used)) or 'plain'}"
    for name, opts, used in VARIANTS])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_every_variant_is_the_unfused_path(backend, name, options, used, fmt):
    """Two steps (a new grad each), single and list form, with and without a grad scale."""
    kernel, bfloat16 = HALF[name], FORMATS[fmt]
    for shape, seed, scale in (((37,), 0, 0.75), ((), 1, 0.75), ((0,), 2, 1.0),
                               ((3, 5), 3, 1.0)):
        rng = np.random.default_rng(seed)
        arrays = arrays_for(kernel, shape, bfloat16, rng, used)
        grads = [arrays[1], to_bits(rng.standard_normal(shape).astype(np.float32), bfloat16)]
        scalars = scalars_for(kernel, bfloat16, grad_scale=scale, **options)
        assert_steps_are_the_unfused_path(backend, kernel, arrays, grads, scalars, shape)


def assert_steps_are_the_unfused_path(backend, kernel, arrays, grads, scalars, label):
    """A step per grad of ``grads`` on copies of ``arrays``, single and list form, on
    ``backend`` give the unfused path's bits."""
    expected = copies(arrays)
    for g in grads:
        expected[1] = g
        unfused(kernel, expected, scalars)
    for multi in (False, True):
        got = copies(arrays)
        for g in grads:
            got[1] = g
            run(backend, kernel, got, scalars, multi)
        for array_name, a, b in zip(kernel.arrays, got, expected):
            assert (a is None) == (b is None)
            assert a is None or same_bits(a, b), (array_name, label, multi)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_layouts_lists_and_threads(backend, name, fmt):
    """Non-contiguous (run on copies, written back) and int16 views of the 16-bit arrays,
    every array in each other layout of conftest.relayout (byte-swapped included), a
    list of mixed sizes in one call: several blocks of the 16-bit driver and a partial last
    one, and for two kernels 70,001 elements (threaded on the compiled backends; the parallel
    loop is the same for every kernel, and Numba compiles it per kernel): the unfused path's
    bits."""
    kernel, bfloat16 = HALF[name], FORMATS[fmt]
    scalars = scalars_for(kernel, bfloat16)
    rng = np.random.default_rng(5)
    base = arrays_for(kernel, (8, 10), bfloat16, rng)
    strided = [a[:, ::2] if i != 1 else a[:, 1::2] for i, a in enumerate(base)]
    strided[0] = strided[0].view(np.int16)
    expected = copies(strided)
    unfused(kernel, expected, scalars)
    run(backend, kernel, strided, scalars)
    assert all(same_bits(a, b) for a, b in zip(strided, expected))
    untouched = arrays_for(kernel, (8, 10), bfloat16, np.random.default_rng(5))
    assert all(same_bits(a[:, 1::2], b[:, 1::2]) for a, b in zip(base[2:], untouched[2:]))
    for how in ("F", "T", "reversed", "unaligned", "swapped"):   # conftest.relayout's others
        laid = [relayout(a, how) for a in arrays_for(kernel, (5, 7), bfloat16,
                                                      np.random.default_rng(6))]
        expected = [native(a) for a in laid]
        unfused(kernel, expected, scalars)
        run(backend, kernel, laid, scalars)
        assert all(same_bits(native(a), b) for a, b in zip(laid, expected)), how
    big = 70001 if name in ("adam_half", "rmsprop_half") else 1537
    tensors = [arrays_for(kernel, s, bfloat16, rng) for s in ((7,), (big,), (), (0,), (3, 3))]
    lists = [[t[i] for t in tensors] for i in range(len(kernel.arrays))]
    expected = [copies(t) for t in tensors]
    getattr(namespace(backend), kernel.multi)(*lists, **scalars)
    for t, e in zip(tensors, expected):
        unfused(kernel, e, scalars)
        assert all(same_bits(a, b) for a, b in zip(t, e))


SPECIAL_GRADS = np.array([np.nan, np.inf, -np.inf, 1e-40, -0.0, 3e38], np.float32)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_adam_and_adamw_in_one_loop_are_the_unfused_path(backend, fmt):
    """Adam without weight decay and AdamW, the options the Cython backend's one-loop 16-bit
    Adam takes (the variants above all decay): grads with NaN, infinities and subnormals,
    with and without a grad scale, odd sizes and 70,001 elements (threaded), single and list
    form."""
    bfloat16 = FORMATS[fmt]
    rng = np.random.default_rng(11)
    for weight_decay, decoupled in ((0.0, False), (0.1, True)):
        for scale in (1.0, 0.75):
            scalars = scalars_for(ADAM, bfloat16, weight_decay=weight_decay,
                                  decoupled=decoupled, grad_scale=scale)
            for n in (1, 37, 1000, 70001):
                arrays = arrays_for(ADAM, (n,), bfloat16, rng, used=())
                grad = rng.standard_normal(n).astype(np.float32)
                special = np.arange(0, n, 97)
                grad[special] = SPECIAL_GRADS[np.arange(special.size) % SPECIAL_GRADS.size]
                arrays[1] = to_bits(grad, bfloat16)
                expected = copies(arrays)
                unfused(ADAM, expected, scalars)
                for multi in (False, True):
                    got = copies(arrays)
                    run(backend, ADAM, got, scalars, multi)
                    for array_name, a, b in zip(ADAM.arrays, got, expected):
                        assert a is None or same_bits(a, b), (array_name, n, scale, multi)


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_steps_of_a_mebibyte_and_more(backend, name, monkeypatch):
    """Arrays of a mebibyte and more (131,101 elements: the Numba backend's steps go parallel
    there, in a run of calls), three steps in a row, single and list form, on two threads: the
    unfused path's bits. Numba's launch read the 16-bit kernels' state, a tuple of arrays, as
    an array, and raised AttributeError."""
    if backend == "numba":
        from fastopt._numba import _common
        monkeypatch.setattr(_common, "POOL_AWAKE_SECONDS", 1e9)   # every step "in a run"
    kernel = HALF[name]
    scalars = scalars_for(kernel, True, grad_scale=0.75)
    rng = np.random.default_rng(13)
    arrays = arrays_for(kernel, (131101,), True, rng)
    grads = [to_bits(rng.standard_normal(131101).astype(np.float32), True) for _ in range(3)]
    threads = fo.get_num_threads()
    fo.set_num_threads(2)
    try:
        assert_steps_are_the_unfused_path(backend, kernel, arrays, grads, scalars, "131101")
    finally:
        fo.set_num_threads(threads)


@pytest.mark.parametrize("name", ["adam_half", "rmsprop_half"])
@pytest.mark.skipif("cython" not in GRID_BACKENDS, reason="the Cython driver's prefetching path")
def test_steps_of_16_mebibytes_of_master_and_more(name):
    """The Cython driver prefetches from 16 MiB of float32 master (4,194,304 elements;
    _elementwise.pxi, PREFETCH_MIN_BYTES_HALF), in spans of 128 elements: Adam's own 16-bit
    loop and the widen/step/narrow blocks (RMSprop) there, two steps, single and list form,
    on two threads, give the unfused path's bits."""
    kernel = HALF[name]
    scalars = scalars_for(kernel, True, grad_scale=0.75)
    rng = np.random.default_rng(17)
    n = (1 << 22) + 13
    arrays = arrays_for(kernel, (n,), True, rng)
    grads = [to_bits(rng.standard_normal(n).astype(np.float32), True) for _ in range(2)]
    threads = fo.get_num_threads()
    fo.set_num_threads(2)
    try:
        assert_steps_are_the_unfused_path("cython", kernel, arrays, grads, scalars, str(n))
    finally:
        fo.set_num_threads(threads)


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
    """With a zero grad, zero moments and no weight decay the master keeps its bits, so the
    parameter written is the rounding of arbitrary float32 patterns: random ones, ties for
    both formats and the edges, against the reference's rounding (lowp), and torch's where it
    is installed."""
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
    arrays = [np.zeros(n, np.uint16), np.zeros(n, np.uint16), master.copy(), zeros.copy(),
              zeros.copy(), None]
    run(backend, ADAM, arrays, scalars_for(ADAM, bfloat16, weight_decay=0.0))
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
    float32 value, NaNs staying NaN (infinities: see below)."""
    bfloat16 = FORMATS[fmt]
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    n = bits.size
    arrays = [np.zeros(n, np.uint16), bits, np.zeros(n, np.float32), np.zeros(n, np.float32),
              np.zeros(n, np.float32), None]
    scalars = dict(ADAM.examples, beta1=0.0, weight_decay=0.0, grad_scale=1.0, decoupled=False,
                   maximize=False, eps_inside_sqrt=False, bfloat16=bfloat16)
    namespace(backend).adam_half(*arrays, **scalars)
    expected = lowp.widen(bits, bfloat16)
    # m = torch.lerp(0, g, 1) = g + 0 * (g - 0): g exactly, -0.0 included (torch's vectorized
    # lerp's sign), but NaN for an infinite g (0 * inf), as torch's; exp_avg_sq holds the inf
    inf = np.isinf(expected)
    assert same_bits(arrays[3], np.where(inf, np.float32(np.nan), expected))
    assert np.isposinf(arrays[4][inf]).all() and inf.sum() == 2
    assert np.signbit(expected[bits == 0x8000]).all()
    if not bfloat16:
        ok = ~np.isnan(expected)
        np.testing.assert_array_equal(expected[ok], bits.view(np.float16)[ok].astype(np.float32))


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_bad_input_is_refused_by_name_and_changes_nothing(backend, name):
    kernel = HALF[name]
    rng = np.random.default_rng(9)
    good = arrays_for(kernel, (5,), True, rng)
    scalars = scalars_for(kernel, True)
    ns = namespace(backend)
    last = kernel.nrequired - 1
    cases = [
        (2, good[2].astype(np.float64), TypeError, "master"),
        (0, good[0].view(np.float16), TypeError, "param"),
        (1, good[1].astype(np.float32), TypeError, "grad"),
        (3, good[3][:4], ValueError, kernel.arrays[3]),
        (last, None, TypeError, kernel.arrays[last]),
        (3, "master", ValueError, kernel.arrays[3]),          # the master itself
        # an int16 parameter over its own uint16 grad (two dtypes: refused as an overlap,
        # which the Cython backend had taken for a parameter that is its own grad)
        (0, "grad as int16", ValueError, "overlap"),
    ]
    for index, bad, error, match in cases:
        arrays = copies(good)
        if isinstance(bad, str):
            bad = arrays[2] if bad == "master" else arrays[1].view(np.int16)
        arrays[index] = bad
        before = copies(arrays)
        with pytest.raises(error, match=match):
            getattr(ns, kernel.name)(*arrays, **scalars)
        with pytest.raises(error, match=match):
            getattr(ns, kernel.multi)(*[[a] for a in arrays], **scalars)
        assert all(a is None or same_bits(a, b) for a, b in zip(arrays, before))
    frozen = copies(good)
    frozen[2].flags.writeable = False
    with pytest.raises(ValueError, match="master"):
        getattr(ns, kernel.name)(*frozen, **scalars)
    # the 16-bit forms' own options, as every backend checks them (the numba backend had
    # taken bfloat16 by its truth and grad_scale by float(): None read float16 bits, True
    # and "2" scaled)
    for option, bad in (("bfloat16", None), ("bfloat16", 0), ("bfloat16", "no"),
                        ("grad_scale", True), ("grad_scale", "2"), ("grad_scale", None)):
        arrays, wrong = copies(good), dict(scalars, **{option: bad})
        with pytest.raises(TypeError, match=rf"^Invalid {option}: "):
            getattr(ns, kernel.name)(*arrays, **wrong)
        # (checked before the arrays on every backend: with a float64 master too, the option
        # is what the single form names)
        with pytest.raises(TypeError, match=rf"^Invalid {option}: "):
            getattr(ns, kernel.name)(*arrays[:2], arrays[2].astype(np.float64), *arrays[3:],
                                     **wrong)
        with pytest.raises(TypeError, match=rf"^Invalid {option}: "):
            getattr(ns, kernel.multi)(*[[a] for a in arrays], **wrong)
        assert all(a is None or same_bits(a, b) for a, b in zip(arrays, good))
    # scalars are keyword-only, and every one is required
    values = [scalars[n] for n in kernel.keywords]
    with pytest.raises(TypeError):
        getattr(ns, kernel.name)(*good, *values)
    with pytest.raises(TypeError):
        getattr(ns, kernel.multi)(*[[a] for a in good], **dict(scalars, typo=1.0))
    with pytest.raises(TypeError):
        getattr(ns, kernel.name)(*good, **{n: v for n, v in scalars.items() if n != "lr"
                                           and n != "clr"})
    assert all(same_bits(a, b) for a, b in zip(good, arrays_for(
        kernel, (5,), True, np.random.default_rng(9))))
