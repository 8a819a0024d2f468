"""The input contract of every element-wise kernel, single and foreach, on every backend: what is
not an array is a TypeError naming it; unaligned and byte-swapped arrays give the reference's
bits; a refused call changes nothing (issue 12, items 1, 3, 12)."""
import re

import numpy as np
import pytest

import fastopt as fo
from conftest import GRID_BACKENDS, torch
from kernel_specs import SPECS, same_bits, snapshot, valid_arrays

NOT_ARRAYS = {"None": None, "list": [1.0, 2.0, 3.0], "float": 1.5, "tuple": (1.0, 2.0, 3.0)}
if torch is not None:
    NOT_ARRAYS["torch"] = torch.ones(3, dtype=torch.float64)
POSITIONS = [(k, i) for k, spec in SPECS.items() for i in range(len(spec.arrays))]


def call(spec, arrays, foreach):
    if foreach:
        spec.multi([None if a is None and i >= spec.nrequired else [a]
                    for i, a in enumerate(arrays)], **spec.hyper)
    else:
        spec.single(arrays, **spec.hyper)


def assert_unchanged(arrays, before):
    for a, b in zip(arrays, before):
        if isinstance(a, np.ndarray):
            assert same_bits(a, b)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("bad", NOT_ARRAYS)
@pytest.mark.parametrize("kernel,position", POSITIONS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_not_an_array_is_a_type_error_naming_it(backend, kernel, position, bad, foreach):
    # cython segfaulted on None for a required array (sgd_step_(None, ...), ewa_(None, ...))
    spec = SPECS[kernel]
    if bad == "None" and position >= spec.nrequired:
        pytest.skip("None is how optional state that is not in use is passed")
    arrays = valid_arrays(spec, (3,), np.float64, np.random.default_rng(0))
    arrays[position] = NOT_ARRAYS[bad]
    before = snapshot(arrays)
    name = spec.names(0 if foreach else None)[position]
    with fo.use_backend(backend), pytest.raises(TypeError, match=f"^{re.escape(name)} "):
        call(spec, arrays, foreach)
    assert_unchanged(arrays, before)


@pytest.mark.parametrize("kernel", SPECS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_list_argument_that_is_not_a_list_is_a_type_error_naming_it(backend, kernel):
    spec = SPECS[kernel]
    arrays = valid_arrays(spec, (3,), np.float64, np.random.default_rng(0))
    lists = [[a] for a in arrays]
    for i, name in enumerate(spec.lists):
        # a bare array is not a list of them (it would be iterated row by row)
        for bad in ([None] if i < spec.nrequired else []) + [arrays[i], 3.0]:
            args = list(lists)
            args[i] = bad
            before = snapshot(arrays)
            with fo.use_backend(backend), pytest.raises(TypeError, match=f"^{name} "):
                spec.multi(args, **spec.hyper)
            assert_unchanged(arrays, before)


def unaligned(a):
    """A copy of ``a`` whose data sits one byte off any natural alignment."""
    raw = np.zeros(a.nbytes + a.itemsize + 1, np.uint8)
    out = raw[1:1 + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def byteswapped(a):
    out = a.astype(a.dtype.newbyteorder("S"))
    assert not out.dtype.isnative and np.array_equal(out, a)
    return out


def expected(spec, arrays, foreach):
    """The reference on plain, aligned, native copies."""
    plain = [np.array(a, dtype=a.dtype.newbyteorder("="), copy=True) for a in arrays]
    with fo.use_backend("numpy"):
        call(spec, plain, foreach)
    return plain


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("odd", [unaligned, byteswapped])
@pytest.mark.parametrize("kernel,position", POSITIONS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_unaligned_and_byteswapped_arrays_give_the_reference_bits(backend, kernel, position,
                                                                  odd, dtype, foreach):
    # cython and numba recursed forever on unaligned arrays; numba and numpy refused
    # byte-swapped ones that cython accepted
    spec = SPECS[kernel]
    for shape in [(), (5,), (3, 4)]:
        arrays = valid_arrays(spec, shape, dtype, np.random.default_rng(1))
        want = expected(spec, arrays, foreach)
        arrays[position] = odd(arrays[position])
        with fo.use_backend(backend):
            call(spec, arrays, foreach)
        for name, a, w in zip(spec.arrays, arrays, want):
            assert same_bits(a, w), (name, shape)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")   # np.matrix's own
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("kernel,position", POSITIONS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_matrices_and_masked_arrays_are_type_errors_naming_them(backend, kernel, position,
                                                                foreach):
    # the reference computed g * g of a np.matrix as a matrix product
    spec = SPECS[kernel]
    for wrap in (np.asmatrix, np.ma.masked_array):
        arrays = valid_arrays(spec, (2, 2), np.float64, np.random.default_rng(2))
        arrays[position] = wrap(arrays[position])
        before = snapshot(arrays)
        name = spec.names(0 if foreach else None)[position]
        with fo.use_backend(backend), pytest.raises(TypeError, match=f"^{re.escape(name)} "):
            call(spec, arrays, foreach)
        assert_unchanged(arrays, before)


# ------------------------------------------------------------------------------- aliasing
def overlapping(spec, i, j, how, shape=(6,)):
    """Valid arrays for ``spec`` where arrays ``i`` and ``j`` share memory as ``how`` says."""
    arrays = valid_arrays(spec, shape, np.float64, np.random.default_rng(3))
    n = int(np.prod(shape))
    if how == "same":               # the very same array
        arrays[j] = arrays[i]
    elif how == "shifted":          # two slices of one buffer, one element apart
        buf = np.abs(np.random.default_rng(4).standard_normal(n + 1))
        arrays[i], arrays[j] = buf[1:].reshape(shape), buf[:-1].reshape(shape)
    elif how == "reversed":         # the same elements in the opposite order
        buf = np.abs(np.random.default_rng(4).standard_normal(n))
        arrays[i], arrays[j] = buf.reshape(shape), buf[::-1].reshape(shape)
    return arrays


PAIRS = [(k, i, j) for k, spec in SPECS.items() for i in range(len(spec.arrays))
         for j in range(i + 1, len(spec.arrays))]


@pytest.mark.parametrize("how", ["same", "shifted", "reversed"])
@pytest.mark.parametrize("kernel,i,j", PAIRS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_overlapping_arrays_are_a_value_error_naming_both(backend, kernel, i, j, how):
    # buf[1:] as param and buf[:-1] as grad gave different results on every backend
    if how == "same" and (i, j) == (0, 1):
        pytest.skip("a param may be its own grad (next test)")
    spec = SPECS[kernel]
    for foreach in (False, True):
        arrays = overlapping(spec, i, j, how)
        before = snapshot(arrays)
        names = spec.names(0 if foreach else None)
        with fo.use_backend(backend), pytest.raises(ValueError) as info:
            call(spec, arrays, foreach)
        assert str(info.value).startswith(f"{names[i]} and {names[j]} overlap in memory")
        assert_unchanged(arrays, before)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("kernel", SPECS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_param_that_is_its_own_grad_gives_the_reference_bits(backend, kernel, foreach):
    # with decoupled weight decay the reference read the grad after shrinking the param
    spec = SPECS[kernel]
    for strided in (False, True):
        for same_object in (True, False):   # or another view of exactly the same memory
            arrays = valid_arrays(spec, (5, 3), np.float64, np.random.default_rng(5))
            if strided:
                param = np.zeros((5, 6))[:, ::2]
                param[...] = arrays[0]
                arrays[0] = param
            # the grad's value is the param's before the step: as with a copy, on the reference
            want = expected(spec, [arrays[0], arrays[0].copy()] + arrays[2:], foreach)
            arrays[1] = arrays[0] if same_object else arrays[0][...]
            with fo.use_backend(backend):
                call(spec, arrays, foreach)
            assert same_bits(arrays[0], want[0]), (strided, same_object)
            for a, w in zip(arrays[2:], want[2:]):
                assert same_bits(a, w), (strided, same_object)


@pytest.mark.parametrize("kernel", SPECS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_overlap_across_the_tensors_of_one_foreach_call_is_a_value_error(backend, kernel):
    # cython stepped a parameter listed twice twice (float64 lists in reverse order)
    spec = SPECS[kernel]
    rng = np.random.default_rng(6)
    one, two = (valid_arrays(spec, (4,), np.float64, rng) for _ in range(2))
    buf = np.abs(rng.standard_normal(8))
    cases = {"the same param twice": (0, 0, one[0]),
             "a grad of one the param of the other": (0, 1, one[0]),
             "halves of one buffer overlapping": (0, 0, buf[2:6])}
    if len(spec.arrays) > 2:
        cases["a state array of one the param of the other"] = (2, 0, one[2])
    for what, (i, j, shared) in cases.items():
        lists = [[a, b] for a, b in zip(one, two)]
        if what.startswith("halves"):
            lists[0] = [buf[:4], buf[2:6]]
        else:
            lists[i][0] = shared
            lists[j][1] = shared
        before = snapshot(lists)
        with fo.use_backend(backend), pytest.raises(ValueError, match="overlap in memory"):
            spec.multi(lists, **spec.hyper)
        for a, b in zip(lists, before):
            assert all(same_bits(x, y) for x, y in zip(a, b)), what


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_overlap_among_many_tensors_is_found_wherever_it_is(backend):
    """Beyond a few dozen arrays the compiled check orders them with a radix sort of their
    addresses (not an insertion sort): 150 Adam tensors cut from one shuffled buffer (600
    arrays, addresses far apart and out of order) are fine; one param that overlaps another
    tensor's exp_avg by one element, or repeats an earlier param, is refused by name."""
    rng = np.random.default_rng(7)
    n, k = 150, 5
    buf = np.zeros(4 * n * k)
    cuts = [buf[i * k:(i + 1) * k] for i in rng.permutation(4 * n)]
    lists = [cuts[j * n:(j + 1) * n] for j in range(4)]      # params, grads, avgs, avg_sqs
    with fo.use_backend(backend):
        fo.ops.foreach_adam_step_(*lists, 1, lr=0.1)
        avg = lists[2][40]
        start = (avg.ctypes.data - buf.ctypes.data) // buf.itemsize
        for bad, name in [(buf[start + k - 1:start + 2 * k - 1], "exp_avgs[40]"),
                          (lists[0][3], "params[3]")]:
            bad_lists = [list(lst) for lst in lists]
            bad_lists[0][97] = bad
            before = buf.copy()
            with pytest.raises(ValueError, match=r"overlap in memory") as info:
                fo.ops.foreach_adam_step_(*bad_lists, 2, lr=0.1)
            assert name in str(info.value) and "params[97]" in str(info.value)
            assert buf.tobytes() == before.tobytes()


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_grads_may_share_memory_and_disjoint_views_of_one_buffer_are_fine(backend):
    # only reads: one grad for two params; an arena-like buffer cut into adjacent params
    buf = np.arange(12.0)
    grad = np.full(6, 0.5)
    params, want = [buf[:6], buf[6:]], [buf[:6] - 0.05, buf[6:] - 0.05]
    with fo.use_backend(backend):
        fo.ops.foreach_sgd_step_(params, [grad, grad], lr=0.1)
    assert same_bits(params[0], want[0]) and same_bits(params[1], want[1])
