"""Errors: what the kernels and the optimizers refuse (arrays that are not arrays, of
the wrong shape, dtype or layout, overlapping, read-only; hyper-parameters out of range
or of the wrong type; grads that do not fit; state dicts that would break a step), each
a TypeError or ValueError naming the argument, and a refused call changes nothing. Also
what must be accepted: unaligned and byte-swapped arrays, a param that is its own grad,
the edges of the ranges torch accepts."""
import copy
import gc
import inspect
import math
import pickle
import re
import sys
import warnings

import numpy as np
import pytest

import fastopt as fo
from conftest import GRID_BACKENDS, OwnArithmetic, OwnOperators, torch
from fastopt import _registry
from kernel_specs import GROUP, SPECS, same_bits, snapshot, valid_arrays
from optim_specs import CONFIGS, CONFIG_IDS, course_params, opt_snapshot, two_grads, two_params

ops = fo.ops


# ------------------------------------------------------------------------- kernel inputs
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


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("layout", ["C", "T"])
@pytest.mark.parametrize("kernel", SPECS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_read_only_grad_gives_the_reference_bits(backend, kernel, layout, foreach):
    # the grad is only read, so a read-only one is accepted (numba failed to compile its
    # overlap check for a read-only grad beside writeable state)
    spec = SPECS[kernel]
    for shape in [(), (5,), (3, 4)]:
        arrays = valid_arrays(spec, shape, np.float64, np.random.default_rng(2))
        if layout == "T":
            arrays = [np.asfortranarray(a).T for a in arrays]
        want = expected(spec, arrays, foreach)
        arrays[1].flags.writeable = False
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
    # the reference computed g * g of a np.matrix as a matrix product (and an array of its
    # own arithmetic with that, where the compiled kernels read its raw memory)
    spec = SPECS[kernel]
    for wrap in (np.asmatrix, np.ma.masked_array, lambda a: a.view(OwnArithmetic),
                 lambda a: a.view(OwnOperators)):
        arrays = valid_arrays(spec, (2, 2), np.float64, np.random.default_rng(2))
        arrays[position] = wrap(arrays[position])
        before = snapshot(arrays)
        name = spec.names(0 if foreach else None)[position]
        with fo.use_backend(backend), pytest.raises(TypeError, match=f"^{re.escape(name)} "):
            call(spec, arrays, foreach)
        assert_unchanged(arrays, before)


def read_only(a):
    a.flags.writeable = False
    return a


BAD_ARRAYS = [
    ("grad shape", lambda p: dict(grad=np.zeros(5, p.dtype)), ValueError, "grad"),
    ("grad dtype", lambda p: dict(grad=np.zeros(p.shape, np.float16)), TypeError, "grad"),
    ("grad not an array", lambda p: dict(grad=[0.0] * 4), TypeError, "grad"),
    ("state shape", lambda p: dict(exp_avg_sq=np.zeros(3, p.dtype)), ValueError, "exp_avg_sq"),
    ("state dtype", lambda p: dict(exp_avg=np.zeros(p.shape, np.float64 if p.dtype ==
                                                     np.float32 else np.float32)),
     TypeError, "exp_avg"),
    ("read-only state", lambda p: dict(exp_avg=read_only(np.zeros(p.shape, p.dtype))),
     ValueError, "exp_avg"),
]


@pytest.mark.parametrize("what,bad,exc,name", BAD_ARRAYS, ids=[b[0] for b in BAD_ARRAYS])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_bad_arrays_raise_naming_the_argument_and_change_nothing(backend, dtype, what, bad,
                                                                 exc, name):
    param = np.arange(4, dtype=dtype)
    args = dict(grad=np.ones(4, dtype), exp_avg=np.zeros(4, dtype),
                exp_avg_sq=np.zeros(4, dtype))
    args.update(bad(param))
    before = {k: np.array(v, copy=True) for k, v in args.items()}
    with fo.use_backend(backend), pytest.raises(exc, match=name):
        ops.adam_step_(param, args["grad"], args["exp_avg"], args["exp_avg_sq"], 1, lr=0.1)
    np.testing.assert_array_equal(param, np.arange(4, dtype=dtype))
    for k, v in args.items():
        np.testing.assert_array_equal(np.asarray(v), before[k])


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_non_float_param_is_a_type_error(backend):
    with fo.use_backend(backend), pytest.raises(TypeError, match="param"):
        ops.sgd_step_(np.arange(4), np.arange(4), lr=0.1)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_lists_of_different_lengths_are_refused(backend):
    ps = [np.zeros(3), np.zeros(4)]
    with fo.use_backend(backend), pytest.raises(ValueError, match="grads"):
        ops.foreach_sgd_step_(ps, [np.zeros(3)], lr=0.1)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_grad_of_the_wrong_dtype_is_a_type_error_naming_it(backend):
    ps = [np.zeros(3, np.float32), np.zeros(4, np.float32)]
    gs = [np.zeros(3, np.float32), np.zeros(4, np.float64)]
    with fo.use_backend(backend), pytest.raises(TypeError, match=r"grads\[1\]"):
        ops.foreach_momentum_step_(ps, gs, [np.zeros(3, np.float32), np.zeros(4, np.float32)],
                                   lr=0.1)


@pytest.mark.parametrize("kernel", SPECS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_bad_array_late_in_a_list_changes_nothing(backend, kernel):
    """Every kernel's foreach form checks every array before it writes any: a wrong shape in
    the last list, at index 4 of a mixed group (kernel_specs.GROUP), is a ValueError naming
    it, and no array of the call changes."""
    spec = SPECS[kernel]
    rng = np.random.default_rng(0)
    tensors = [valid_arrays(spec, shape, dt, rng) for shape, dt, _ in GROUP]
    lists = [list(arrays) for arrays in zip(*tensors)]
    lists[-1][4] = np.zeros((2, 2), GROUP[4][1])
    before = snapshot(lists)
    with fo.use_backend(backend), pytest.raises(ValueError, match=rf"{spec.lists[-1]}\[4\]"):
        spec.multi(lists, **spec.hyper)
    for got, was in zip(lists, before):
        assert all(same_bits(a, b) for a, b in zip(got, was))


class _Emptying(np.ndarray):
    """An ndarray subclass whose ``shape`` empties the call's lists (``victims``) when a
    check reads it, freeing every array only they held."""

    victims = ()

    @property
    def shape(self):
        for lst in self.victims:
            lst.clear()
        gc.collect()
        return np.ndarray.shape.__get__(self)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_lists_emptied_while_a_call_checks_them_do_not_crash_it(backend):
    """Checking an ndarray subclass runs Python code, which may change the caller's lists
    while the kernel reads them (the Cython backend reads them in place). The call must
    neither crash nor write freed memory: it runs on the arrays it had read, or raises a
    RuntimeError naming the list and writes nothing."""
    n = 1 << 12
    param, grad, exp_avg = (np.zeros(n, np.float32), np.ones(n, np.float32),
                            np.zeros(n, np.float32))
    lists = ([np.zeros(n, np.float32).view(_Emptying), param], [np.ones(n, np.float32), grad],
             [np.zeros(n, np.float32), exp_avg], [np.zeros(n, np.float32) for _ in range(2)])
    _Emptying.victims = lists
    try:
        with fo.use_backend(backend):
            ops.foreach_adam_step_(*lists, 1, lr=0.5)
    except RuntimeError as e:
        assert "params changed size" in str(e)
        assert not param.any() and not exp_avg.any()
    else:
        assert (param < 0).all() and (exp_avg > 0).all()     # the second tensor stepped
    finally:
        _Emptying.victims = ()


# ------------------------------------------------------------------------------ aliasing
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


def apart_views(dtype):
    """Four (4, 5) views that share no element but whose memory bounds overlap in pairs: a
    matrix's column blocks, and a buffer's even and odd elements; filled with distinct
    values."""
    w = np.linspace(-1, 1, 40).astype(dtype).reshape(4, 10)
    buf = np.linspace(2, 3, 40).astype(dtype)
    views = [w[:, :5], w[:, 5:], buf[0::2].reshape(4, 5), buf[1::2].reshape(4, 5)]
    assert not any(np.shares_memory(a, b) for a in views for b in views if a is not b)
    return views


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_views_that_share_no_element_step_as_separate_copies(backend, dtype):
    """A matrix's column blocks (a fused QKV weight split in groups) and a buffer's even and
    odd elements share no element, though their memory bounds overlap: they were refused
    ('address ranges overlap'), by every backend; they step as the reference steps copies of
    them, as parameters of one group and of two, as a foreach call's params, grads and state,
    and as a param beside its own state."""
    grads = [np.full((4, 5), 0.5, dtype) * k for k in range(1, 5)]

    def run(copies):
        views, p, q = ([v.copy() if copies else v for v in apart_views(dtype)]
                       for _ in range(3))
        groups = [{"params": views[:2]}, {"params": views[2:], "lr": 0.5}]
        for opt in (fo.Adam(views, lr=0.1), fo.SGD(groups, lr=0.1, momentum=0.9)):
            for _ in range(2):
                opt.step(grads)
        fo.ops.foreach_adam_step_([p[0], p[2]], [q[1], q[3]], [p[1], q[0]], [p[3], q[2]], 1,
                                  lr=0.1)
        fo.ops.momentum_step_(views[0], grads[0], views[1], lr=0.1, beta=0.9)
        return views + p + q

    with fo.use_backend(backend):
        got = run(copies=False)
    with fo.use_backend("numpy"):
        want = run(copies=True)
    assert all(same_bits(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_views_that_share_an_element_are_refused_as_overlapping(backend):
    """Views whose bounds overlap and which share an element (overlapping slices, ``a[::2]``
    and ``a[::3]``, a square param and its transpose) are refused by the exact test as by the
    bounds, with the same error and nothing written: in one group, across two, and in a
    foreach call. The pair named is the first in memory that shares: ``a[::4]`` and ``a[4:5]``,
    not ``a[1::2]``, which reaches further and shares no element with ``a[4:5]``."""
    def cases():
        a = np.linspace(1, 2, 12)
        yield a, [a[0:6], a[4:10]], "0", "1"
        a = np.linspace(1, 2, 12)
        yield a, [a[::2], a[::3]], "0", "1"
        s = np.linspace(1, 2, 9).reshape(3, 3)
        yield s, [s, s.T], "0", "1"
        a = np.linspace(1, 2, 12)
        yield a, [a[::4], a[1::2], a[4:5]], "0", "2"

    with fo.use_backend(backend):
        for buf, views, i, j in cases():
            before = buf.copy()
            grads = [np.ones(v.shape) for v in views]
            last = str(len(views) - 1)
            for call, first, second in [
                    (lambda: fo.SGD(views, lr=0.1).step(grads),
                     f"parameter {i} (param group 0)", f"parameter {j} (param group 0)"),
                    (lambda: fo.Adam([{"params": views[:-1]}, {"params": views[-1:]}], lr=0.1)
                     .step(grads),
                     f"parameter {i} (param group {int(i == last)})",
                     f"parameter {j} (param group {int(j == last)})"),
                    (lambda: fo.ops.foreach_sgd_step_(views, grads, lr=0.1),
                     f"params[{i}]", f"params[{j}]")]:
                with pytest.raises(ValueError, match=re.escape(
                        f"{first} and {second} overlap in memory (they share elements' memory)")):
                    call()
                assert same_bits(buf, before)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_every_backend_names_the_same_pair_where_arrays_start_at_one_address(backend):
    """Spans are taken in address order, ties by tensor then argument, as the Cython kernels
    sort them: the Python check had broken ties by end, argument, tensor, and named
    params[2] and momentum_buffers[1] where Cython named params[0] (both share buf[0])."""
    buf = np.ones(8)
    params = [buf[0:4], np.ones(1), buf[0:1]]
    buffers = [np.zeros(4), buf[0:1], np.zeros(1)]
    with fo.use_backend(backend):
        with pytest.raises(ValueError, match=re.escape(
                "params[0] and momentum_buffers[1] overlap in memory")):
            fo.ops.foreach_sgd_step_(params, [np.ones(4), np.ones(1), np.ones(1)], buffers,
                                     lr=0.1, momentum=0.9)
    assert (buf == 1).all() and not any(b.any() for b in buffers[::2])


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_every_backend_names_the_same_pair_of_a_single_call(backend):
    """A single call whose param shares memory with two of its state arrays: the compiled
    kernels compare its arrays pair by pair in argument order, and so does the Python check
    now (it swept in address order: the reference, and numba's strided path, named param and
    exp_avg_sq where Cython and numba's contiguous path named param and exp_avg)."""
    for step in (1, 2):         # contiguous, and strided (numba's Python check)
        buf = np.zeros(12 * step)
        views = [buf[k * step:(k + 4) * step:step] for k in (4, 6, 2)]  # exp_avg_sq lowest
        with fo.use_backend(backend):
            with pytest.raises(ValueError, match=r"^param and exp_avg overlap in memory"):
                fo.ops.adam_step_(views[0], np.ones(4), views[1], views[2], 1, lr=0.1)
        assert not buf.any()


def test_a_layout_too_hard_to_decide_counts_as_sharing(monkeypatch):
    """The exact test bounds np.shares_memory's work; a pair it gives up on is refused (taken
    as sharing), never stepped wrong. These share nothing, decided in 3 candidate solutions."""
    from fastopt import _validate
    x = np.zeros((6, 7, 8), np.int8)
    a, b = x[1:, 2::2, 2::2], x[1:, 1::2, 2::3]
    assert not np.shares_memory(a, b) and not _validate.share_elements(a, b)
    monkeypatch.setattr(_validate, "_EXACT_WORK", 1)
    assert _validate.share_elements(a, b)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_grads_may_share_memory_and_disjoint_views_of_one_buffer_are_fine(backend):
    # only reads: one grad for two params; an arena-like buffer cut into adjacent params
    buf = np.arange(12.0)
    grad = np.full(6, 0.5)
    params, want = [buf[:6], buf[6:]], [buf[:6] - 0.05, buf[6:] - 0.05]
    with fo.use_backend(backend):
        fo.ops.foreach_sgd_step_(params, [grad, grad], lr=0.1)
    assert same_bits(params[0], want[0]) and same_bits(params[1], want[1])


def self_overlapping(kind, like):
    """A writeable array of ``like``'s dtype, of shape (3, 2), whose elements share memory:
    every element at one address (zero strides), or windows of one buffer one element apart
    (element [k, 1] is element [k + 1, 0])."""
    from numpy.lib.stride_tricks import as_strided
    buf = np.abs(np.random.default_rng(6).standard_normal(8)).astype(like.dtype)
    step = 0 if kind == "zero stride" else buf.itemsize
    return as_strided(buf, shape=(3, 2), strides=(step, step))


WRITTEN = [(k, i) for k, spec in SPECS.items() for i in range(len(spec.arrays)) if i != 1]


@pytest.mark.parametrize("kind", ["zero stride", "windows"])
@pytest.mark.parametrize("kernel,position", WRITTEN)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_an_updated_array_whose_elements_share_memory_is_a_value_error_naming_it(
        backend, kernel, position, kind):
    # was: run, as copies written back element by element (the last write of a shared
    # address kept), on the compiled backends, and ufunc by ufunc on the reference: SGD with a
    # zero-stride momentum_buffer gave a param 0.2 apart between them
    spec = SPECS[kernel]
    for foreach in (False, True):
        arrays = valid_arrays(spec, (3, 2), np.float64, np.random.default_rng(7))
        arrays[position] = self_overlapping(kind, arrays[position])
        before = snapshot(arrays)
        name = spec.names(0 if foreach else None)[position]
        with fo.use_backend(backend), pytest.raises(ValueError) as info:
            call(spec, arrays, foreach)
        assert str(info.value).startswith(f"{name} has elements that share memory"), info.value
        assert_unchanged(arrays, before)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_huge_window_view_is_refused_without_listing_its_elements(backend):
    # was: NumPy's MemoryError (the check listed all 10^12 elements' byte offsets, 8 TB), not
    # the ValueError naming the argument; the windows of an 8 MB buffer need 4 TB to be apart
    from numpy.lib.stride_tricks import as_strided
    buf = np.zeros(2 * 10**6, np.float32)
    param = as_strided(buf, shape=(10**6, 10**6), strides=(4, 4))
    grad = as_strided(np.zeros(1, np.float32), shape=param.shape, strides=(0, 0))
    with fo.use_backend(backend), pytest.raises(ValueError, match=r"^param has elements that "
                                                                  r"share memory"):
        fo.ops.sgd_step_(param, grad, lr=0.1)
    assert not buf.any()


@pytest.mark.parametrize("kind", ["zero stride", "windows"])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_an_optimizers_array_whose_elements_share_memory_is_named_as_the_optimizer_names_it(
        backend, kind):
    # a parameter at construction ('W2', not the kernel's 'params[1]' at the first step), a
    # state array assigned into opt.state at the step ("state[0]['exp_avg_sq']", not
    # 'exp_avg_sqs[0]'); the failed step changes nothing
    with fo.use_backend(backend):
        with pytest.raises(ValueError, match=r"^parameter W2 has elements that share memory"):
            fo.SGD({"W1": np.ones(2), "W2": self_overlapping(kind, np.ones(1))}, lr=0.1)
        p = np.ones((3, 2))
        opt = fo.Adam([p, np.ones(3)], lr=0.1)
        opt.step([np.ones((3, 2)), np.ones(3)])
        opt.state[0] = {"step": 1, "exp_avg": np.zeros((3, 2)),
                        "exp_avg_sq": self_overlapping(kind, p)}
        before = opt_snapshot(opt, [p])
        with pytest.raises(ValueError, match=re.escape(
                "state[0]['exp_avg_sq'] has elements that share memory")):
            opt.step([np.ones((3, 2)), np.ones(3)])
        assert opt_snapshot(opt, [p]) == before


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_grads_whose_elements_share_memory_and_interleaved_params_are_fine(backend):
    # only read: a zero-stride (broadcast) grad and a grad of overlapping windows; written: a
    # param whose elements interleave (strides 8 and 12 elements over 3 x 2: every element its
    # own address)
    from numpy.lib.stride_tricks import as_strided
    spec = SPECS["adam"]
    for grad in (np.broadcast_to(np.float64(0.5), (3, 2)),
                 self_overlapping("windows", np.zeros(6))):
        for interleaved in (False, True):
            arrays = valid_arrays(spec, (3, 2), np.float64, np.random.default_rng(8))
            arrays[1] = grad
            if interleaved:
                param = as_strided(np.zeros(40), shape=(3, 2), strides=(8 * 8, 12 * 8))
                param[...] = arrays[0]
                arrays[0] = param
            want = expected(spec, arrays, False)
            with fo.use_backend(backend):
                call(spec, arrays, False)
            for a, w in zip(arrays, want):
                assert same_bits(np.ascontiguousarray(a), w)


# ---------------------------------------------------------------------- hyper-parameters
# (value, exception) refused for a real hyper-parameter with a lower bound of 0
BAD_REALS = [(None, TypeError), ("0.1", TypeError), ([0.1], TypeError), (math.nan, ValueError),
             (-1.0, ValueError)]
# refused by fastopt.ops: an int past the float range was an OverflowError naming nothing, from
# wherever it was first converted (the backend, or the folding of a step count)
PAST_FLOAT = (10**400, ValueError)


def _hyper_cases(opt):
    """(key, value, exception) for each hyper-parameter of ``opt``'s group: bad types and
    values out of range."""
    cases = []
    for key, value in opt.param_groups[0].items():
        if key in ("params", "param_names"):
            continue
        if isinstance(value, bool):
            cases += [(key, None, TypeError), (key, "yes", TypeError)]
        elif isinstance(value, tuple):
            cases += [(key, None, TypeError), (key, (1.0, 0.999), ValueError),
                      (key, (0.9, 1.0), ValueError), (key, (0.9,), ValueError),
                      (key, (0.9, "0.9"), TypeError)]
        else:
            cases += [(key,) + bad for bad in BAD_REALS]
            if key in ("beta", "rho"):      # (RMSprop's alpha: >= 0, as torch bounds it)
                cases.append((key, 1.5, ValueError))
    return cases


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=CONFIG_IDS)
def test_bad_hyper_parameters_at_construction_are_named(name, kwargs):
    opt = getattr(fo, name)(two_params(), **kwargs)
    for key, value, exc in _hyper_cases(opt):
        kw = dict(kwargs, **{key: value})
        if name == "AdamW" and key == "decoupled_weight_decay":
            continue                    # not an argument of AdamW (always True)
        with pytest.raises(exc, match=key.split("_")[0] if key == "betas" else key):
            getattr(fo, name)(two_params(), **kw)


@pytest.mark.parametrize("name,kwargs", CONFIGS + [("Lion", {})],
                         ids=CONFIG_IDS + ["Lion"])
def test_a_hyper_parameter_past_the_float_range_is_refused_at_construction(name, kwargs):
    """An int past the float range (lr=10**400) passed the construction's range checks and was
    refused only at the first step, by the kernel, under its name for the argument (RMSprop's
    beta for alpha). Now construction refuses it, naming the argument; so do the lr setter
    and a param group edited before a step (nothing written)."""
    opt = getattr(fo, name)(two_params(), **kwargs)
    keys = [k for k, v in opt.param_groups[0].items()
            if k not in ("params", "param_names") and not isinstance(v, (bool, tuple))]
    assert "lr" in keys
    for key in keys:        # (beta, rho: out of [0, 1] too)
        with pytest.raises(ValueError, match=rf"^Invalid {key}: 1e\+400 \(must be"):
            getattr(fo, name)(two_params(), **dict(kwargs, **{key: 10**400}))
    # (an int too long for repr, which raised ValueError past sys.get_int_max_str_digits())
    with pytest.raises(ValueError, match=r"^Invalid lr: 1e\+5000 \(must be within"):
        getattr(fo, name)(two_params(), **dict(kwargs, lr=10**5000))
    if name == "RMSprop":                   # the course's name for alpha, named as given
        with pytest.raises(ValueError, match=r"^Invalid beta: 1e\+400 \(must be in \[0, 1\)\)"):
            fo.RMSprop(two_params(), beta=10**400)
    params = two_params()
    opt = getattr(fo, name)(params, **kwargs)
    with pytest.raises(ValueError, match=r"^Invalid lr: 1e\+400 \(must be within the float range"):
        opt.lr = 10**400
    assert opt.param_groups[0]["lr"] == kwargs.get("lr", opt.defaults["lr"])
    opt.param_groups[0]["lr"] = 10**400
    before = opt_snapshot(opt, params)
    with pytest.raises(ValueError, match=r"^Invalid lr: 1e\+400 \(must be within the float range"):
        opt.step(two_grads())
    assert opt_snapshot(opt, params) == before


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=CONFIG_IDS)
def test_a_hyper_parameter_set_later_is_checked_at_step_and_nothing_changes(backend, name,
                                                                          kwargs):
    """param_groups[0][key] = bad, before the first step and after a few: TypeError or
    ValueError naming it, and no parameter or state array changes (numba turned lr=None into
    NaN parameters; the numpy backend updated state before raising; betas=(1, .999) was a
    ZeroDivisionError)."""
    with fo.use_backend(backend):
        for warm in (0, 2):
            params = two_params()
            opt = getattr(fo, name)(params, **kwargs)
            for _ in range(warm):
                opt.step(two_grads())
            group = opt.param_groups[0]
            for key, value, exc in _hyper_cases(opt):
                good = group[key]
                group[key] = value
                before = opt_snapshot(opt, params)
                with pytest.raises(exc, match="beta" if key == "betas" else key):
                    opt.step(two_grads())
                assert opt_snapshot(opt, params) == before, (key, value)
                group[key] = good
            opt.step(two_grads())          # and it steps again once fixed
            assert all(np.isfinite(p).all() for p in params)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")   # np.matrix's own
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_state_arrays_of_their_own_arithmetic_are_refused_by_their_names(backend):
    """A masked array in a loaded state dict was copied without its mask (its masked values
    loaded as data); a matrix or masked array assigned into opt.state was refused under the
    kernel's list name ('exp_avg_sqs[1]': another parameter's, with two groups). Either is
    a TypeError naming the entry, and nothing changes."""
    def fresh():
        params = [np.zeros(3) for _ in range(4)]
        return params, fo.Adam([{"params": params[:2]}, {"params": params[2:]}], lr=0.1)
    grads = [np.ones(3) for _ in range(4)]
    wraps = (np.asmatrix, np.ma.masked_invalid, lambda a: a.view(OwnArithmetic),
             lambda a: a.view(OwnOperators))
    with fo.use_backend(backend):
        params, opt = fresh()
        opt.step(grads)
        for wrap in wraps:
            saved = opt.state_dict()
            saved["state"][3]["exp_avg_sq"] = wrap(np.array([0.1, np.nan, 0.1]))
            params, mine = fresh()
            mine.step(grads)
            before = opt_snapshot(mine, params)
            with pytest.raises(TypeError, match=re.escape(
                    "state_dict['state'][3]['exp_avg_sq'] must be a plain numpy.ndarray")):
                mine.load_state_dict(saved)
            assert opt_snapshot(mine, params) == before
            mine.state[3]["exp_avg_sq"] = wrap(np.zeros(3))
            with pytest.raises(TypeError, match=re.escape(
                    "state[3]['exp_avg_sq'] must be a plain numpy.ndarray")):
                mine.step(grads)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")   # np.matrix's own
@pytest.mark.parametrize("named", [False, True], ids=["list", "dict"])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_parameter_put_into_a_group_by_hand_is_checked_at_step(backend, named):
    """A group's params list edited by hand, before the first step and after two: a list is
    refused with TypeError naming the parameter (it was an AttributeError about its ``size``
    or ``dtype``), as are an int array and a matrix (refused before by what their grads did
    not match); a read-only array with ValueError. Nothing changes."""
    bad = [([1.0, 2.0], TypeError, "must be a numpy.ndarray, got list"),
           (np.ones(2, np.int64), TypeError, "must have dtype float32 or float64, got int64"),
           (np.ones(2).view(np.matrix), TypeError, "must be a plain numpy.ndarray, got matrix"),
           (np.ones(2).view(OwnArithmetic), TypeError,
            "must be a plain numpy.ndarray, got OwnArithmetic"),
           (np.ones(2), ValueError, "is read-only")]
    bad[-1][0].flags.writeable = False
    label = "b" if named else "1"
    with fo.use_backend(backend):
        for warm in (0, 2):
            for value, exc, message in bad:
                params = two_params()
                opt = fo.Adam(dict(zip("ab", params)) if named else params, lr=0.1)
                grads = two_grads()
                for _ in range(warm):
                    opt.step(dict(zip("ab", grads)) if named else grads)
                opt.param_groups[0]["params"][1] = value
                before = opt_snapshot(opt, params)
                with pytest.raises(exc, match=f"^parameter {label} {message}"):
                    opt.step(dict(zip("ab", grads)) if named else grads)
                assert opt_snapshot(opt, params) == before


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_bad_later_group_leaves_earlier_groups_unstepped(backend):
    a, b = np.ones(3), np.ones(2)
    with fo.use_backend(backend):
        opt = fo.Adam([{"params": [a]}, {"params": [b]}], lr=0.1)
        opt.step([np.ones(3), np.ones(2)])
        opt.param_groups[1]["betas"] = (1.0, 0.999)
        before = opt_snapshot(opt, [a, b])
        with pytest.raises(ValueError, match="beta1"):
            opt.step([np.ones(3), np.ones(2)])
        assert opt_snapshot(opt, [a, b]) == before
        opt.param_groups[1]["lr"] = None
        with pytest.raises(TypeError, match="lr"):
            opt.step([np.ones(3), np.ones(2)])
        assert opt_snapshot(opt, [a, b]) == before


@pytest.mark.parametrize("value", [1, "yes", None, np.array(False)], ids=repr)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_adamws_eps_inside_sqrt_set_on_a_later_group_is_checked_before_any_steps(
        backend, value):
    """AdamW steps Adam's course form where a group sets ``eps_inside_sqrt`` (not among its
    defaults), but did not check it with the others: a bad one was refused by its own group's
    kernel after the groups before it had stepped (the hyper-parameter probe). An Adam state
    dict whose entries went through np.savez (a flag as a 0-d array) loads into AdamW as its
    own keys do, the flag a bool, the form honoured."""
    a, b = np.ones(3), np.ones(2)
    with fo.use_backend(backend):
        opt = fo.AdamW([{"params": [a]}, {"params": [b]}], lr=0.1)
        opt.step([np.ones(3), np.ones(2)])
        opt.param_groups[1]["eps_inside_sqrt"] = value
        before = opt_snapshot(opt, [a, b])
        with pytest.raises(TypeError, match="eps_inside_sqrt"):
            opt.step([np.ones(3), np.ones(2)])
        assert opt_snapshot(opt, [a, b]) == before
        # (an eps of 0.5 tells the forms apart: sqrt(0.25 + eps) against sqrt(0.25) + eps)
        adam, adamw = (cls([np.ones(3)], lr=0.1, eps=0.5, weight_decay=0.0)
                       for cls in (fo.Adam, fo.AdamW))
        adam.param_groups[0]["eps_inside_sqrt"] = True
        state = adam.state_dict()
        state["param_groups"][0]["eps_inside_sqrt"] = np.array(True)
        adamw.load_state_dict(state)
        assert adamw.param_groups[0]["eps_inside_sqrt"] is True
        for opt in (adam, adamw):
            opt.step([np.full(3, 0.5)])
        assert np.array_equal(adam.param_groups[0]["params"][0],
                              adamw.param_groups[0]["params"][0])


@pytest.mark.parametrize("key,make,spoil", [
    ("betas", lambda: [0.9, 0.999], lambda v: v.__setitem__(0, 1.5)),   # a list, as configs
    ("betas", lambda: np.array([0.9, 0.999]), lambda v: v.__setitem__(0, 1.5)),
    ("lr", lambda: np.array(0.1), lambda v: v.fill(-1.0)),              # a 0-d array
    ("betas", lambda: (np.array(0.9), 0.999), lambda v: v[0].fill(np.nan)),
], ids=["list", "array", "0-d lr", "0-d in a tuple"])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_hyper_parameter_changed_in_place_in_a_later_group_leaves_earlier_groups_unstepped(
        backend, key, make, spoil):
    """A hyper-parameter held in a mutable object, changed in place after the steps that
    checked it: the later group's kernel call refused it after the earlier group had
    stepped."""
    a, b = np.ones(3), np.ones(2)
    with fo.use_backend(backend):
        opt = fo.Adam([{"params": [a]}, {"params": [b], key: make()}], lr=0.1)
        opt.step([np.ones(3), np.ones(2)])
        opt.step([np.ones(3), np.ones(2)])
        before = opt_snapshot(opt, [a, b])
        spoil(opt.param_groups[1][key])
        with pytest.raises(ValueError, match="lr" if key == "lr" else "beta1"):
            opt.step([np.ones(3), np.ones(2)])
        assert opt_snapshot(opt, [a, b]) == before


# (plain SGD keeps no state array)
STATEFUL = [(c, i) for c, i in zip(CONFIGS, CONFIG_IDS) if c != ("SGD", dict(lr=0.1))]


@pytest.mark.parametrize("change", ["read-only", "reshaped"])
@pytest.mark.parametrize("name,kwargs", [c for c, _ in STATEFUL], ids=[i for _, i in STATEFUL])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_state_array_changed_in_place_in_a_later_group_is_refused_by_name(
        backend, name, kwargs, change):
    """A state array made read-only (or reshaped) in place, after the steps that checked it,
    is refused before any group steps, named as the optimizer's state: every group is left
    as it was (the earlier groups had stepped before their later one's kernel refused it)."""
    a, b = np.ones(3), np.ones(2)
    with fo.use_backend(backend):
        opt = getattr(fo, name)([{"params": [a]}, {"params": [b]}], **kwargs)
        opt.step([np.ones(3), np.ones(2)])
        opt.step([np.ones(3), np.ones(2)])
        key = next(k for k, v in opt.state[1].items()
                   if isinstance(v, np.ndarray) and v.shape == b.shape)
        if change == "read-only":
            opt.state[1][key].flags.writeable = False
        else:
            with warnings.catch_warnings():     # (NumPy 2.5 deprecates setting the shape)
                warnings.simplefilter("ignore", DeprecationWarning)
                opt.state[1][key].shape = (1, 2)
        before = opt_snapshot(opt, [a, b])
        with pytest.raises(ValueError, match=re.escape(f"state[1][{key!r}]")):
            opt.step([np.ones(3), np.ones(2)])
        assert opt_snapshot(opt, [a, b]) == before


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_state_array_changed_in_place_in_a_later_group_stepping_in_parts_changes_nothing(
        backend):
    """The same for a later group whose parameters step in parts (one without state yet),
    whose plan a refused step had left current: the check had looked only at groups
    stepping in one part (review q14)."""
    a, b, c = np.ones(3), np.ones(3), np.ones(3)
    with fo.use_backend(backend):
        opt = fo.Adam([{"params": [a]}, {"params": [b, c]}], lr=0.1)
        opt.step([np.ones(3), np.ones(3), None])
        with pytest.raises(ValueError, match="grad for parameter 2"):
            opt.step([np.ones(3), np.ones(3), np.ones(4)])
        opt.state[1]["exp_avg"].flags.writeable = False
        before = opt_snapshot(opt, [a, b, c])
        with pytest.raises(ValueError, match=re.escape("state[1]['exp_avg'] is read-only")):
            opt.step([np.ones(3), np.ones(3), np.ones(3)])
        assert opt_snapshot(opt, [a, b, c]) == before


@pytest.mark.parametrize("compiled", [True, False], ids=["C", "Python"])
def test_the_per_step_check_of_state_arrays_finds_the_first_unlike_its_parameter(
        compiled, monkeypatch):
    """fastopt.optim's check of state arrays against their parameters (writeable, the same
    shape), in C where the compiled kernels are loaded and in Python where they are not."""
    from fastopt import optim
    if compiled and "cython" not in fo.backends():
        pytest.skip("the compiled extension is not built")
    if not compiled:
        monkeypatch.delitem(sys.modules, "fastopt._kernels", raising=False)
    params = [np.ones(3), np.ones((2, 2)), np.ones(0), np.ones(())]
    assert optim._first_unlike([p.copy() for p in params], params) == -1
    assert optim._first_unlike([p.astype(">f8") for p in params], params) == -1
    for k, bad in ((1, np.ones(4)), (1, np.ones((2, 2, 1))), (2, np.ones(1)), (3, np.ones(1)),
                   (0, np.ones(3)[::-1].copy()), (1, np.ones((2, 2), np.int64)),
                   (3, np.ones((), np.float32))):
        arrays = [p.copy() for p in params]
        arrays[k] = bad
        if k == 0:
            bad.flags.writeable = False
        assert optim._first_unlike(arrays, params) == k


@pytest.mark.parametrize("grads", ["list", "dict"])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_state_array_made_read_only_in_place_is_named_as_the_optimizers_state(backend,
                                                                               grads):
    """One group, whose kernel call refuses the array: the message named the kernel's list
    item (exp_avgs[0]), an argument the caller never passed."""
    params = {"W": np.ones(3), "b": np.ones(2)}
    with fo.use_backend(backend):
        opt = fo.Adam(params if grads == "dict" else list(params.values()), lr=0.1)
        step = ({"dW": np.ones(3), "db": np.ones(2)} if grads == "dict"
                else [np.ones(3), np.ones(2)])
        opt.step(step)
        opt.step(step)
        opt.state[1]["exp_avg_sq"].flags.writeable = False
        before = opt_snapshot(opt, list(params.values()))
        with pytest.raises(ValueError, match=re.escape("state[1]['exp_avg_sq'] is read-only")):
            opt.step(step)
        assert opt_snapshot(opt, list(params.values())) == before



def _overlaps_across_groups():
    """(what, make() -> (opt, params, grads), message): two param groups whose arrays overlap
    in a way no step may take; ``make`` has stepped once where it can."""
    def plain(*groups):
        return fo.Adam([{"params": list(g)} for g in groups], lr=0.1)

    def later_params_overlap():
        a, buf = np.ones(3), np.zeros(10)
        return plain([a], [buf[:6], buf[4:]]), [a, buf], [np.ones(3), np.ones(6), np.ones(6)]

    def param_overlaps_an_earlier_groups():
        a = np.ones(4)
        return plain([a], [a[2:]]), [a], [np.ones(4), np.ones(2)]

    def grad_is_an_earlier_groups_param():
        a, b = np.ones(3), np.ones(2)
        opt = plain([a], [b])
        opt.step([np.ones(3), np.ones(2)])
        return opt, [a, b], [np.ones(3), a[:2]]

    def grad_overlaps_its_own_param():
        a, buf = np.ones(3), np.ones(5)
        opt = plain([a], [buf[:4]])
        opt.step([np.ones(3), np.ones(4)])
        return opt, [a, buf], [np.ones(3), buf[1:]]

    def grad_is_an_earlier_groups_state():
        a, b = np.ones(3), np.ones(2)
        opt = plain([a], [b])
        opt.step([np.ones(3), np.ones(2)])
        return opt, [a, b], [np.ones(3), opt.state[0]["exp_avg"][1:]]

    def state_assigned_overlaps_an_earlier_groups_param():
        a, b = np.ones(3), np.ones(2)
        opt = plain([a], [b])
        opt.step([np.ones(3), np.ones(2)])
        opt.state[1]["exp_avg"] = a[1:]
        return opt, [a, b], [np.ones(3), np.ones(2)]

    def group_added_later_overlaps():
        a = np.ones(4)
        opt = plain([a])
        opt.step([np.ones(4)])
        opt.add_param_group({"params": [a[1:3]]})
        return opt, [a], [np.ones(4), np.ones(2)]

    def named_params_overlap():
        W = np.ones((2, 3))
        opt = fo.Adam([{"params": {"W": W}}, {"params": {"b": W[1]}, "lr": 0.01}], lr=0.1)
        return opt, [W], {"dW": np.ones((2, 3)), "db": np.ones(3)}

    def grad_of_memory_numpy_did_not_allocate():
        raw = bytearray(np.ones(4).tobytes())
        a = np.frombuffer(raw)       # (no numpy owner: compared with every array)
        opt = plain([a], [np.ones(2)])
        return opt, [a], [np.ones(4), np.frombuffer(raw, count=2, offset=8)]

    first = "parameter 1 (param group 1) and "
    return [
        (grad_of_memory_numpy_did_not_allocate,
         "parameter 0 (param group 0) and grad for parameter 1 (param group 1) overlap"),
        (later_params_overlap, first + "parameter 2 (param group 1) overlap in memory"),
        (param_overlaps_an_earlier_groups,
         "parameter 0 (param group 0) and parameter 1 (param group 1) overlap in memory"),
        (grad_is_an_earlier_groups_param,
         "parameter 0 (param group 0) and grad for parameter 1 (param group 1) overlap"),
        (grad_overlaps_its_own_param, first + "grad for parameter 1 (param group 1) overlap"),
        (grad_is_an_earlier_groups_state,
         r"grad for parameter 1 \(param group 1\) and state\[0\]\['exp_avg'\] \(param group 0\)"),
        (state_assigned_overlaps_an_earlier_groups_param,
         r"parameter 0 \(param group 0\) and state\[1\]\['exp_avg'\] \(param group 1\)"),
        (group_added_later_overlaps,
         "parameter 0 (param group 0) and parameter 1 (param group 1) overlap in memory"),
        (named_params_overlap,
         "parameter 'W' (param group 0) and parameter 'b' (param group 1) overlap in memory"),
    ]


OVERLAPS_ACROSS_GROUPS = _overlaps_across_groups()


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("make,message", OVERLAPS_ACROSS_GROUPS,
                         ids=[m.__name__ for m, _ in OVERLAPS_ACROSS_GROUPS])
def test_arrays_overlapping_across_param_groups_are_refused_before_any_group_steps(
        backend, make, message):
    """A multi-tensor kernel call refuses overlapping arrays, but it sees one group's: a later
    group's overlap (within it, or with an earlier group's params or state) was refused after
    the earlier groups had stepped, or not at all (an element stepped twice, a grad read after
    another group wrote it). Every group's arrays are checked before any group steps."""
    with fo.use_backend(backend):
        opt, params, grads = make()
        before = opt_snapshot(opt, params)
        pattern = message if "\\" in message else re.escape(message)
        with pytest.raises(ValueError, match=pattern):
            opt.step(grads)
        assert opt_snapshot(opt, params) == before
        with pytest.raises(ValueError, match=pattern):     # and again: nothing was cached
            opt.step(grads)
        assert opt_snapshot(opt, params) == before


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_arrays_that_may_share_memory_across_param_groups_step_as_apart(backend):
    """Disjoint views of one buffer in different groups, one grad for parameters of two
    groups, a grad that is its own parameter, grads of memory numpy did not allocate: each
    group steps as if its arrays were apart."""
    def run(shared):
        buf = np.linspace(1, 2, 10)
        raw = bytearray(np.full(3, 0.5).tobytes())
        grad = np.full(4, 0.25)
        if shared:
            params = [buf[:4], buf[4:8], buf[8:]]
            grads = [grad, grad, params[2], np.frombuffer(raw, count=2)]
        else:
            params = [buf[:4].copy(), buf[4:8].copy(), buf[8:].copy()]
            grads = [grad.copy(), grad.copy(), params[2].copy(), np.full(2, 0.5)]
        params.append(np.frombuffer(bytearray(np.ones(2).tobytes())))
        opt = fo.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.01}], lr=0.1)
        for _ in range(3):
            if not shared:
                grads[2] = params[2].copy()
            opt.step(grads)
        return [p.tobytes() for p in params], opt_snapshot(opt, [])
    with fo.use_backend(backend):
        assert run(True) == run(False)


def test_views_of_separate_allocations_are_known_apart_without_their_addresses():
    """The overlap check's shortcut (_validate._apart) takes views of separate numpy
    allocations (arrays placed on cache lines, as the benchmark's are, are such views) as
    apart, as it takes the allocations themselves; two written arrays of one allocation, a
    grad of a written array's allocation (other than its own param) and memory numpy did not
    allocate are left to the full check."""
    from fastopt._validate import _apart

    def view(n):                                  # n elements of an allocation of their own
        return np.empty(n + 3)[3:]
    p, g, m, v = (np.ones(5) for _ in range(4))
    assert _apart([(p, g, m, v)])
    assert _apart([(view(5), view(5), view(5), view(5))])
    assert _apart([(p, p, m, v)])                 # a grad that is its param
    buf = np.empty(10)
    assert not _apart([(p, g, buf[:5], buf[5:])])
    assert not _apart([(p, m[1:], m, v)])
    assert not _apart([(p, g, m, np.frombuffer(bytearray(40)))])
    assert not _apart([(p, g, m, v), (view(5), v[2:], view(5), view(5))])


@pytest.mark.skipif("numba" not in GRID_BACKENDS, reason="runs with the numba backend")
def test_numba_step_views_skips_the_address_check_exactly_where_apart_does(monkeypatch):
    """The Numba backend's step_views makes _validate._apart's test from the flags it reads
    anyway (written out there for speed): it must skip the check of addresses
    (_first_overlap) on exactly the arrays _apart takes as apart (those it leaves to the
    full check are compared by address, and refused where they overlap)."""
    from fastopt._numba import _common
    from fastopt._validate import _apart, check_disjoint
    compared = []
    first_overlap = _common._first_overlap
    monkeypatch.setattr(_common, "_first_overlap",
                        lambda views: compared.append(1) or first_overlap(views))

    def view(n):                                  # n elements of an allocation of their own
        return np.empty(n + 3)[3:]
    p, g, m, v = (np.ones(5) for _ in range(4))
    buf, big = np.empty(10), np.empty(16)
    cases = [(p, g, m, v), (view(5), view(5), view(5), view(5)), (p, p, m, v),
             (p, g, buf[:5], buf[5:]), (p, buf[1:6], buf[:5], v), (p, m, m, v), (p, g, m, m),
             (p, g, m, np.frombuffer(bytearray(40))), (p, np.frombuffer(bytearray(40)), m, v),
             (big[:5], g, big[8:13], v), (big[:5], g, big[3:8], v), (p, big[:5], m, big[5:10]),
             (p, g, m, big[:5].reshape(5)), (p, g, m, v[:])]
    names = ("param", "grad", "exp_avg", "exp_avg_sq")
    for arrays in cases:
        compared.clear()
        try:
            check_disjoint([arrays], lambda i, j: names[i])
            overlap = None
        except ValueError as e:
            overlap = str(e)
        if overlap is None:
            _common.step_views(arrays, names, 4)
        else:
            with pytest.raises(ValueError) as info:
                _common.step_views(arrays, names, 4)
            assert str(info.value) == overlap
        assert bool(compared) == (not _apart([arrays])), arrays


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_overlapping_views_of_one_allocation_are_refused(backend):
    """Written views of one allocation that overlap are refused (by the full check), those
    that do not are stepped as the reference steps copies of them."""
    def arrays(buf, lo):
        p, g = np.linspace(1, 2, 8), np.linspace(-1, 1, 8)
        m, v = buf[:8], buf[lo:lo + 8]
        m[...], v[...] = 0, 0
        return p, g, m, v
    with fo.use_backend(backend):
        p, g, m, v = arrays(np.empty(16), 4)
        with pytest.raises(ValueError, match="exp_avg and exp_avg_sq overlap"):
            fo.ops.adam_step_(p, g, m, v, 1)
        assert not (m.any() or v.any())
        p, g, m, v = arrays(np.empty(16), 8)
        fo.ops.adam_step_(p, g, m, v, 1)
        with fo.use_backend("numpy"):
            q, h, m2, v2 = arrays(np.empty(16), 8)
            fo.ops.adam_step_(q, h, m2.copy(), v2.copy(), 1)
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_the_overlap_check_across_groups_is_made_again_when_the_arrays_change(backend):
    """Params and state are checked across groups when a group's plan is made (not at every
    step): again after a group's params are replaced, after load_state_dict (new state
    arrays), and the step goes on once the overlap is gone."""
    a, b = np.ones(4), np.ones(2)
    with fo.use_backend(backend):
        opt = fo.Adam([{"params": [a]}, {"params": [b]}], lr=0.1)
        opt.step([np.ones(4), np.ones(2)])
        opt.param_groups[1]["params"] = [a[2:]]
        before = opt_snapshot(opt, [a, b])
        with pytest.raises(ValueError, match=re.escape(
                "parameter 0 (param group 0) and parameter 1 (param group 1) overlap")):
            opt.step([np.ones(4), np.ones(2)])
        assert opt_snapshot(opt, [a, b]) == before
        opt.param_groups[1]["params"] = [b]
        opt.step([np.ones(4), np.ones(2)])
        assert int(opt.state[1]["step"]) == 2
        opt.load_state_dict(opt.state_dict())      # new state arrays, checked with the grads
        before = opt_snapshot(opt, [a, b])
        with pytest.raises(ValueError, match=r"state\[0\]\['exp_avg_sq'\] \(param group 0\)"):
            opt.step([np.ones(4), opt.state[0]["exp_avg_sq"][:2]])
        assert opt_snapshot(opt, [a, b]) == before
        opt.step([np.ones(4), np.ones(2)])
        assert int(opt.state[0]["step"]) == int(opt.state[1]["step"]) == 3


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_one_group_stepping_in_parts_refuses_overlaps_before_either_part(backend):
    """Parameters of one group in different phases (step counts) step in one kernel call per
    phase; an overlap the second call refuses was refused after the first had stepped."""
    with fo.use_backend(backend):
        p0, buf = np.ones(3), np.ones(8)
        opt = fo.Adam([p0, buf[:5], buf[3:]], lr=0.1)
        raised = False
        for grads in ([np.ones(3), None, None], [np.ones(3), np.ones(5), np.ones(5)]):
            before = opt_snapshot(opt, [p0, buf])
            try:
                opt.step(grads)
            except ValueError as e:
                assert "overlap in memory" in str(e)
                assert opt_snapshot(opt, [p0, buf]) == before
                raised = True
                break
        assert raised
        p0, buf = np.ones(3), np.ones(5)
        opt = fo.Adam([p0, buf[:4]], lr=0.1)
        opt.step([np.ones(3), None])
        before = opt_snapshot(opt, [p0, buf])
        with pytest.raises(ValueError, match=re.escape(
                "parameter 1 (param group 0) and grad for parameter 1 (param group 0) overlap")):
            opt.step([np.ones(3), buf[1:]])
        assert opt_snapshot(opt, [p0, buf]) == before

@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("case", ["grad is a state array", "grad is another parameter",
                                  "named grad is a state array", "grad overlaps its parameter"])
def test_one_groups_grad_overlap_is_named_as_the_optimizer_names_it(backend, case):
    """A lone group whose parameters all have state steps in one kernel call, whose refusal of
    an overlapping grad named the kernel's arguments ("grads[0] and exp_avgs[0]", of a call
    the user never made; 'W' not named) where several groups name the parameter and the
    state entry. It changes nothing either way."""
    a, b = np.ones(4), np.ones(4)
    named = case.startswith("named")
    with fo.use_backend(backend):
        opt = fo.Adam({"W": a, "b": b} if named else [a, b], lr=0.1)
        opt.step({"dW": np.ones(4), "db": np.ones(4)} if named else [np.ones(4), np.ones(4)])
        grads, message = {
            "grad is a state array": (
                [opt.state[0]["exp_avg"], np.ones(4)],
                "grad for parameter 0 (param group 0) and state[0]['exp_avg'] (param group 0)"),
            "grad is another parameter": (
                [np.ones(4), a[::-1]],
                "parameter 0 (param group 0) and grad for parameter 1 (param group 0)"),
            "named grad is a state array": (
                {"dW": opt.state[0]["exp_avg_sq"], "db": np.ones(4)},
                "grad for parameter 'W' (param group 0) and state[0]['exp_avg_sq'] (param "
                "group 0)"),
            "grad overlaps its parameter": (
                [a[::-1], np.ones(4)],
                "parameter 0 (param group 0) and grad for parameter 0 (param group 0)"),
        }[case]
        before = opt_snapshot(opt, [a, b])
        with pytest.raises(ValueError, match=re.escape(message + " overlap in memory")):
            opt.step(grads)
        assert opt_snapshot(opt, [a, b]) == before


def _ops_calls():
    """(name, call(arrays, **overrides), [(argument, bad value, exception)])."""
    def arrays_call(fn, n_state, *positional, **defaults):
        def call(arrays, **over):
            fn(arrays[0], arrays[1], *arrays[2:2 + n_state], *positional, **{**defaults, **over})
        return call

    def multi_call(fn, n_state, *positional, **defaults):
        def call(arrays, **over):
            fn([arrays[0]], [arrays[1]], *[[a] for a in arrays[2:2 + n_state]], *positional,
               **{**defaults, **over})
        return call

    reals = lambda *names: [(n,) + bad for n in names  # noqa: E731
                            for bad in BAD_REALS + [PAST_FLOAT]]
    unit = lambda name, top: [(name, top, ValueError), (name, 1.5, ValueError)]  # noqa: E731
    betas = [("betas", None, TypeError), ("betas", (1.0, 0.9), ValueError),
             ("betas", (0.9, 1.0), ValueError), ("betas", (0.9,), ValueError),
             ("betas", "ab", TypeError), ("betas", {0.9, 0.999}, TypeError),
             ("betas", {0: 0.9, 1: 0.999}, TypeError)]    # (a set raised naming nothing)
    steps = [("step", None, TypeError), ("step", 0, ValueError), ("step", "1", TypeError),
             ("step",) + PAST_FLOAT]
    adam_like = reals("lr", "eps", "weight_decay") + betas + steps
    o = fo.ops
    return [
        ("ewa_", lambda a, **k: o.ewa_(a[0], a[1], **{"beta": 0.9, **k}),
         [("beta", v, e) for v, e in BAD_REALS] + [("beta", 1.5, ValueError)]),
        ("foreach_ewa_", lambda a, **k: o.foreach_ewa_([a[0]], [a[1]], **{"beta": 0.9, **k}),
         [("beta", None, TypeError), ("beta", -0.5, ValueError)]),
        ("sgd_step_", arrays_call(o.sgd_step_, 1, lr=0.1, momentum=0.9),
         reals("lr", "momentum", "dampening", "weight_decay")),
        ("foreach_sgd_step_", multi_call(o.foreach_sgd_step_, 1, lr=0.1, momentum=0.9),
         reals("lr", "momentum")),
        ("momentum_step_", arrays_call(o.momentum_step_, 1, lr=0.1),
         reals("lr", "beta") + unit("beta", 1.0)),
        ("rmsprop_step_", arrays_call(o.rmsprop_step_, 1, lr=0.1),     # beta >= 0 (torch's)
         reals("lr", "beta", "eps", "weight_decay", "momentum")),
        ("foreach_rmsprop_step_", multi_call(o.foreach_rmsprop_step_, 1, lr=0.1),
         reals("lr", "beta")),
        ("adagrad_step_", arrays_call(o.adagrad_step_, 1, step=2),
         reals("lr", "lr_decay", "eps", "weight_decay") + steps),
        ("adam_step_", arrays_call(o.adam_step_, 2, step=2), adam_like),
        ("foreach_adam_step_", multi_call(o.foreach_adam_step_, 2, step=2), adam_like),
        ("adamw_step_", arrays_call(o.adamw_step_, 2, step=2), adam_like),
        ("adadelta_step_", arrays_call(o.adadelta_step_, 2),
         reals("lr", "rho", "eps", "weight_decay") + [("rho", 1.5, ValueError)]),
        ("adamax_step_", arrays_call(o.adamax_step_, 2, step=2), adam_like),
        ("nadam_step_", arrays_call(o.nadam_step_, 2, step=2, mu_product=0.9),
         adam_like + reals("momentum_decay", "mu_product") + [("mu_product", 1.5, ValueError)]),
        ("radam_step_", arrays_call(o.radam_step_, 2, step=2), adam_like),
        ("foreach_radam_step_", multi_call(o.foreach_radam_step_, 2, step=2), adam_like),
    ]


OPS = _ops_calls()


MOMENTUM_WITHOUT_BUFFER = [
    ("sgd_step_", "momentum_buffer",
     lambda a, **k: fo.ops.sgd_step_(a[0], a[1], lr=0.1, **k)),
    ("foreach_sgd_step_", "momentum_buffers",
     lambda a, **k: fo.ops.foreach_sgd_step_([a[0]], [a[1]], lr=0.1, **k)),
    ("rmsprop_step_", "momentum_buffer",
     lambda a, **k: fo.ops.rmsprop_step_(a[0], a[1], a[2], lr=0.1, **k)),
    ("foreach_rmsprop_step_", "momentum_buffers",
     lambda a, **k: fo.ops.foreach_rmsprop_step_([a[0]], [a[1]], [a[2]], lr=0.1, **k)),
]


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("name,buffer,call", MOMENTUM_WITHOUT_BUFFER,
                         ids=[c[0] for c in MOMENTUM_WITHOUT_BUFFER])
def test_ops_refuse_a_momentum_without_its_buffer(backend, name, buffer, call):
    """sgd_step_/rmsprop_step_ (and their foreach_ forms) apply momentum only with a buffer:
    momentum=0.9 with none stepped as plain SGD/RMSprop, every call, silently (torch's
    functional form makes the buffer). ValueError naming momentum and the buffer, nothing
    written; momentum=0 without a buffer is plain SGD/RMSprop as before."""
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(5), rng.standard_normal(5), np.abs(rng.standard_normal(5))]
    with fo.use_backend(backend):
        for momentum in (0.9, np.float32(0.5), np.array(0.25)):
            work = [a.copy() for a in arrays]
            with pytest.raises(ValueError, match=f"^momentum=.* needs .*{buffer}"):
                call(work, momentum=momentum)
            for w, a in zip(work, arrays):
                assert w.tobytes() == a.tobytes(), (name, momentum)
        work = [a.copy() for a in arrays]
        call(work, momentum=0.0)
        assert not np.array_equal(work[0], arrays[0])


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("half", [False, True], ids=["float", "bfloat16"])
@pytest.mark.parametrize("kernel", ["sgd", "rmsprop"])
def test_list_forms_refuse_a_momentum_without_one_of_its_buffers(backend, kernel, half):
    """A buffer list holding None for one array, with momentum: that array stepped without
    momentum, silently, where the single form refuses (probe M: params[1] 0.95, plain SGD's
    value). ValueError naming the entry, nothing written; the 16-bit forms fastopt.torch
    calls too. (A None entry stays allowed without momentum, as a whole None list is.)"""
    rng = np.random.default_rng(4)
    entry = _registry.get(kernel + "_half" if half else kernel)
    n = 2
    lists = []
    for name in entry.arrays:
        if half and name in ("param", "grad"):
            lists.append([(rng.standard_normal(5).astype(np.float32).view(np.uint32) >> 16)
                          .astype(np.uint16) for _ in range(n)])
        elif name == "grad_avg":
            lists.append(None)
        else:
            lists.append([np.abs(rng.standard_normal(5)).astype(np.float32) for _ in range(n)])
    buffers = entry.arrays.index("momentum_buffer")
    lists[buffers][1] = None
    scalars = dict(entry.examples, momentum=0.5)
    options = {o: o == "bfloat16" for o in entry.options}
    before = [None if lst is None else [None if a is None else a.copy() for a in lst]
              for lst in lists]
    with fo.use_backend(backend):
        multi = getattr(fo._backend.active, entry.multi)
        for momentum in (0.5, 1):           # named as given, on every backend
            with pytest.raises(ValueError, match=re.escape(
                    f"momentum={momentum} needs {entry.lists[buffers]}[1] (got None)")):
                multi(*lists, **dict(scalars, momentum=momentum), **options)
        for lst, old in zip(lists, before):
            for a, b in zip(lst or [], old or []):
                assert a is b is None or a.tobytes() == b.tobytes()
        if not half:
            ops = getattr(fo.ops, entry.foreach_ops)
            with pytest.raises(ValueError, match=re.escape("needs momentum_buffers[1]")):
                if kernel == "sgd":
                    ops(lists[0], lists[1], lists[2], lr=0.1, momentum=0.9)
                else:
                    ops(lists[0], lists[1], lists[2], lr=0.1, momentum=0.9,
                        momentum_buffers=lists[4])
        # with a fault in a later tensor too, every backend names the first tensor's None
        # (Cython meets it as it gathers that tensor; numba and NumPy had checked every
        # tensor's arrays first and named the later grad)
        later = [None if lst is None else list(lst) for lst in lists]
        later[buffers][0], later[buffers][1] = None, lists[buffers][0]
        later[1][1] = later[1][1][:4]
        with pytest.raises(ValueError, match=re.escape(f"{entry.lists[buffers]}[0] (got None)")):
            multi(*later, **scalars, **options)
        multi(*lists, **dict(scalars, momentum=0.0), **options)      # without momentum: fine


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("bad", [True, np.timedelta64(1, "s")], ids=["bool", "timedelta64"])
def test_ops_refuse_a_momentum_of_no_number_as_a_type_error_with_or_without_a_buffer(
        backend, bad):
    """momentum=True without a buffer raised ValueError ('needs a momentum_buffer'), with one
    the TypeError the docstring promises (probe M); a NumPy timedelta64 (a signedinteger
    subclass) passed the check of a real number and failed in NumPy's comparison, naming
    nothing. TypeError naming momentum (lr, step) either way."""
    p, g = np.ones(3), np.full(3, 0.5)
    with fo.use_backend(backend):
        for buffer in (None, np.zeros(3)):
            with pytest.raises(TypeError, match="Invalid momentum"):
                fo.ops.sgd_step_(p, g, buffer, lr=0.1, momentum=bad)
        with pytest.raises(TypeError, match="Invalid momentum"):
            fo.ops.foreach_sgd_step_([p], [g], None, lr=0.1, momentum=bad)
        td = np.timedelta64(1, "s")
        with pytest.raises(TypeError, match="Invalid lr"):
            fo.ops.sgd_step_(p, g, lr=td)
        with pytest.raises(TypeError, match="Invalid step"):
            fo.ops.adam_step_(p, g, np.zeros(3), np.zeros(3), td)
        with pytest.raises(TypeError, match="Invalid lr"):
            fo.Adam([p], lr=td)
    assert (p == 1).all()


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("name,call,bad", OPS, ids=[c[0] for c in OPS])
def test_ops_refuse_bad_scalars_by_name_and_write_nothing(backend, name, call, bad):
    """Checked before the backend runs: the numpy backend wrote the state arrays before
    raising; numba took lr=None as NaN."""
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(5) for _ in range(4)]
    arrays[2:] = [np.abs(a) for a in arrays[2:]]
    with fo.use_backend(backend):
        call([a.copy() for a in arrays])        # the good call runs
        for key, value, exc in bad:
            work = [a.copy() for a in arrays]
            with pytest.raises(exc, match="beta" if key == "betas" else key):
                call(work, **{key: value})
            for w, a in zip(work, arrays):
                assert w.tobytes() == a.tobytes(), (name, key, value)


@pytest.mark.parametrize("make,word", [
    (lambda p: fo.SGD(p, lr=-0.1), "lr"),
    (lambda p: fo.SGD(p, lr=0.1, momentum=-0.5), "momentum"),
    (lambda p: fo.SGD(p, lr=0.1, nesterov=True), "nesterov"),
    (lambda p: fo.Adam(p, eps=-1e-8), "eps"),
    (lambda p: fo.Adam(p, betas=(1.0, 0.999)), "beta1"),
    (lambda p: fo.AdamW(p, weight_decay=-0.01), "weight_decay"),
    (lambda p: fo.RMSprop(p, beta=-0.2), "beta"),
    (lambda p: fo.RMSprop(p, alpha=-0.2), "alpha"),
    (lambda p: fo.Momentum(p, lr=0.1, beta=-0.1), "beta"),
    (lambda p: fo.Adagrad(p, lr_decay=-1.0), "lr_decay"),
])
def test_bad_hyper_parameters_are_value_errors_with_the_value(make, word):
    with pytest.raises(ValueError, match=word):
        make([np.zeros(2)])


@pytest.mark.parametrize("call", [
    lambda a: fo.ops.adam_step_(a, a.copy(), a * 0, a * 0, 0),
    lambda a: fo.ops.adamax_step_(a, a.copy(), a * 0, a * 0, 0),
    lambda a: fo.ops.radam_step_(a, a.copy(), a * 0, a * 0, -1),
    lambda a: fo.ops.nadam_step_(a, a.copy(), a * 0, a * 0, 0, 1.0),
    lambda a: fo.ops.adagrad_step_(a, a.copy(), a * 0, 0),
    lambda a: fo.ops.foreach_adam_step_([a], [a.copy()], [a * 0], [a * 0], 0),
])
def test_step_counts_start_at_one(call):
    a = np.ones(3)
    with pytest.raises(ValueError, match="step"):
        call(a)
    np.testing.assert_array_equal(a, 1.0)


NADAM_MOMENTUM_BAD = [
    ("step", None, TypeError), ("step", "1", TypeError), ("step", True, TypeError),
    ("step", np.array([1, 2]), TypeError), ("step", math.nan, ValueError), ("step", 0, ValueError),
    ("step", -1, ValueError), ("step",) + PAST_FLOAT,
    ("beta1", None, TypeError), ("beta1", 0.9j, TypeError), ("beta1", math.nan, ValueError),
    ("beta1", -0.1, ValueError), ("beta1", 1.0, ValueError), ("beta1", 1.5, ValueError),
    ("momentum_decay", "4e-3", TypeError), ("momentum_decay", math.nan, ValueError),
    ("momentum_decay", -0.1, ValueError), ("momentum_decay", -1e300, ValueError),
    ("momentum_decay",) + PAST_FLOAT,
]


@pytest.mark.parametrize("name,bad,exc", NADAM_MOMENTUM_BAD,
                         ids=[f"{n}-{i}" for i, (n, *_) in enumerate(NADAM_MOMENTUM_BAD)])
def test_nadam_momentum_refuses_bad_scalars_by_name(name, bad, exc):
    """As nadam_step_ refuses them: it checked nothing (None or a str raised an unnamed
    TypeError from ``*``, NaN, a step of 0 or -1 or a beta1 out of [0, 1) returned a value,
    an array returned an array, a complex a complex, a negative momentum_decay -1e300 and an
    int past the float range raised OverflowError naming nothing)."""
    args = {"step": 1, "beta1": 0.9, "momentum_decay": 4e-3, name: bad}
    with pytest.raises(exc, match=f"^Invalid {name}: "):
        ops.nadam_momentum(**args)


def test_nadam_momentum_takes_numpy_reals_and_folds_in_float64():
    """The edges torch takes, and NumPy scalars and 0-d arrays as their values: a float32
    beta1 returned a np.float32, mu_t folded in float32."""
    want = 0.9 * (1.0 - 0.5 * 0.96 ** (3 * 4e-3))
    assert ops.nadam_momentum(3, 0.9, 4e-3) == want
    for convert in (np.float64, np.array, lambda v: np.array(v, np.float32), np.float32):
        got = ops.nadam_momentum(convert(3), convert(0.9), convert(4e-3))
        exact = ops.nadam_momentum(3, float(convert(0.9)), float(convert(4e-3)))
        assert type(got) is float and got == exact, convert
    assert ops.nadam_momentum(1, 0.0, 0.0) == 0.0
    assert ops.nadam_momentum(2.0, 0.5, math.inf) == 0.5


BAD_HYPER = [
    ("Adadelta", dict(lr=-1.0), "lr"), ("Adadelta", dict(rho=1.5), "rho"),
    ("Adadelta", dict(eps=-1e-6), "eps"), ("Adadelta", dict(weight_decay=-0.1), "weight_decay"),
    ("Adamax", dict(betas=(1.0, 0.9)), "beta1"), ("Adamax", dict(betas=(0.9, -0.1)), "beta2"),
    ("NAdam", dict(momentum_decay=-1.0), "momentum_decay"), ("NAdam", dict(lr=-0.1), "lr"),
    ("RAdam", dict(eps=-1.0), "eps"), ("RAdam", dict(betas=(0.9, 1.0)), "beta2"),
]


@pytest.mark.parametrize("name,kwargs,word", BAD_HYPER, ids=[f"{n}-{w}" for n, _, w in BAD_HYPER])
def test_bad_hyper_parameters_raise_with_name_and_value(name, kwargs, word):
    value = next(iter(kwargs.values()))
    with pytest.raises(ValueError, match=word) as info:
        getattr(fo, name)([np.zeros(3)], **kwargs)
    shown = value if not isinstance(value, tuple) else value[0 if "1" in word else 1]
    assert repr(shown) in str(info.value)


MORE_BAD = [
    ("Adadelta", dict(rho=-0.1), "rho"), ("Adadelta", dict(rho=float("nan")), "rho"),
    ("Adadelta", dict(lr=float("nan")), "lr"),
    ("Adamax", dict(lr=-2e-3), "lr"), ("Adamax", dict(eps=-1.0), "eps"),
    ("Adamax", dict(weight_decay=-0.5), "weight_decay"), ("Adamax", dict(betas=(0.9,)), "betas"),
    ("NAdam", dict(eps=-1e-8), "eps"), ("NAdam", dict(weight_decay=-1.0), "weight_decay"),
    ("NAdam", dict(betas=(-0.1, 0.9)), "beta1"), ("NAdam", dict(betas=(0.9, 1.5)), "beta2"),
    ("RAdam", dict(lr=-1e-3), "lr"), ("RAdam", dict(weight_decay=-1e-2), "weight_decay"),
    ("RAdam", dict(betas=(1.0, 0.999)), "beta1"),
]


@pytest.mark.parametrize("name,kwargs,word", MORE_BAD,
                         ids=[f"{n}-{w}-{i}" for i, (n, _, w) in enumerate(MORE_BAD)])
def test_more_bad_hyper_parameters_raise_naming_them(name, kwargs, word):
    with pytest.raises(ValueError, match=word):
        getattr(fo, name)([np.zeros(3)], **kwargs)


@pytest.mark.parametrize("name,kwargs", [
    ("Adadelta", dict(rho=0.0)), ("Adadelta", dict(rho=1.0, lr=0.0)),
    ("Adamax", dict(betas=(0.0, 0.0), eps=0.0)), ("NAdam", dict(momentum_decay=0.0)),
    ("RAdam", dict(betas=(0.0, 0.0)))])
def test_the_edges_torch_accepts_are_accepted(name, kwargs):
    p = np.ones(3)
    getattr(fo, name)([p], **kwargs).step([np.full(3, 0.5)])
    assert not np.isnan(p).any()


@pytest.mark.parametrize("kwargs,word", [(dict(lr=-1.0), "lr"), (dict(betas=(1.0, 0.9)), "beta1"),
                                         (dict(betas=(0.9, -0.1)), "beta2"),
                                         (dict(weight_decay=-1e-3), "weight_decay")])
def test_lion_bad_hyper_parameters_are_named(kwargs, word):
    p, m = np.zeros(3), np.zeros(3)
    with pytest.raises(ValueError, match=word):
        fo.Lion([p], **kwargs)
    with pytest.raises(ValueError, match=word):
        fo.ops.lion_step_(p, np.ones(3), m, **kwargs)
    assert not p.any() and not m.any()


# ---------------------------------------------------------------------- optimizer inputs
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_bad_array_assigned_into_state_is_refused_by_name_and_changes_nothing(backend):
    params = two_params()
    with fo.use_backend(backend):
        opt = fo.Adam(params, lr=0.1)
        opt.step(two_grads())
        before = opt_snapshot(opt, params)
        for bad, exc in [(np.zeros(5, np.float32), ValueError), (np.zeros(4), TypeError),
                         ([0.0] * 4, TypeError)]:
            opt.state[1]["exp_avg"] = bad
            with pytest.raises(exc, match=r"state\[1\].*exp_avg"):
                opt.step(two_grads())
            assert [p.tobytes() for p in params] == before[0]
        del opt.state[1]["exp_avg"]
        with pytest.raises(ValueError, match="exp_avg"):
            opt.step(two_grads())
        opt.state[1] = {"step": 0, "exp_avg": np.zeros(4, np.float32),
                        "exp_avg_sq": np.zeros(4, np.float32)}
        opt.step(two_grads())              # a fresh state dict restarts that parameter
    assert opt.state[1]["step"] == 1 and opt.state[0]["step"] == 2


BAD_GRADS = [
    (lambda p: {"dW1": np.zeros((2, 5)), "db1": p["b1"], "dW2": p["W2"], "db2": p["b2"]},
     ValueError, "'W1'"),
    (lambda p: {"dW1": p["W1"].astype(np.float32), "db1": p["b1"], "dW2": p["W2"],
                "db2": p["b2"]}, TypeError, "'W1'"),
    (lambda p: {"dW1": p["W1"], "db1": p["b1"], "dW2": p["W2"]}, ValueError, "'b2'"),
    (lambda p: {"dW1": p["W1"], "db1": [0.0] * 5, "dW2": p["W2"], "db2": p["b2"]},
     TypeError, "'b1'"),
    (lambda p: [p["W1"], p["b1"], p["W2"], p["b2"]], ValueError, "by name"),  # dict: by name
    (lambda p: 3.0, TypeError, "grads"),
]


@pytest.mark.parametrize("make,exc,word", BAD_GRADS,
                         ids=["shape", "dtype", "missing", "not-array", "sequence", "type"])
@pytest.mark.parametrize("cls", [fo.SGD, fo.Adam, fo.RMSprop, fo.Adagrad, fo.NAdam])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_bad_grad_raises_naming_the_parameter_and_changes_nothing(backend, cls, make, exc,
                                                                     word):
    params = course_params()
    with fo.use_backend(backend):
        opt = cls(params, lr=0.1) if cls is not fo.SGD else cls(params, lr=0.1, momentum=0.9)
        good = {"d" + k: np.ones_like(v) for k, v in params.items()}
        opt.step(good)                               # state exists, cached path in use
        before = {k: v.copy() for k, v in params.items()}
        state_before = pickle.dumps(opt.state_dict())
        with pytest.raises(exc, match=word):
            opt.step(make(params))
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])
    assert pickle.dumps(opt.state_dict()) == state_before


def test_a_failed_first_step_creates_no_state():
    params = course_params()
    opt = fo.Adam(params)
    with pytest.raises(ValueError):
        opt.step({"dW1": params["W1"], "db1": params["b1"], "dW2": params["W2"],
                  "db2": np.zeros(7)})
    assert opt.state == {}


def test_read_only_parameters_are_refused_at_construction():
    w = np.ones(3)
    w.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fo.Adam([w])


@pytest.mark.parametrize("bad", [np.arange(3), [np.ones(2), "x"], np.ones(3)])
def test_bad_params_are_type_errors(bad):
    with pytest.raises(TypeError):
        fo.SGD(bad, lr=0.1)


def test_empty_params_are_refused():
    with pytest.raises(ValueError, match="empty"):
        fo.SGD([], lr=0.1)


def test_a_group_whose_params_is_not_a_collection_is_refused_saying_so():
    """{"params": 3} raised list()'s "'int' object is not iterable", naming nothing, and a
    str was split into its characters; now a TypeError naming the group's 'params', at
    construction and in add_param_group (which then adds nothing)."""
    for bad in (3, 2.5, None, "ab", b"ab"):
        with pytest.raises(TypeError, match=r"param group's 'params' must be an array, a "
                                            rf"dict or a sequence of arrays, got {type(bad).__name__}"):
            fo.Adam([{"params": bad}])
    opt = fo.Adam([np.ones(2)])
    with pytest.raises(TypeError, match="'params' must be"):
        opt.add_param_group({"params": 7})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": (a for a in [np.ones(3)])})     # any iterable of arrays
    assert len(opt.param_groups) == 2


def test_a_parameter_twice_in_one_group_is_refused_saying_so():
    """The same array twice in one group (torch.optim warns of it) is refused as such; it
    was refused as appearing "in more than one param group", of which there was one. Across
    groups it is the other message, and nothing is added either way."""
    a, b = np.ones(2), np.ones(3)
    with pytest.raises(ValueError, match=r"params\[1\] appears twice in its param group"):
        fo.SGD([a, a], lr=0.1)
    with pytest.raises(ValueError, match="parameter y appears twice"):
        fo.SGD({"x": a, "y": a}, lr=0.1)
    opt = fo.SGD([a], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[1\] appears twice"):
        opt.add_param_group({"params": [b, b]})
    with pytest.raises(ValueError, match=r"params\[1\] appears in more than one param group"):
        opt.add_param_group({"params": [b, a]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", ["Adadelta", "Adamax", "NAdam", "RAdam"])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_bad_grad_changes_nothing(backend, name):
    rng = np.random.default_rng(15)
    params = [rng.standard_normal((3, 4)), rng.standard_normal(5), rng.standard_normal(2)]
    with fo.use_backend(backend):
        opt = getattr(fo, name)(params)
        for _ in range(3):
            opt.step([rng.standard_normal(p.shape) for p in params])
        before = [p.copy() for p in params]
        state_before = pickle.dumps(opt.state_dict())
        for bad, exc in [(np.zeros(3), ValueError), (np.zeros(2, np.float32), TypeError)]:
            with pytest.raises(exc, match="parameter 2"):
                opt.step([np.ones((3, 4)), np.ones(5), bad])
    for p, b in zip(params, before):
        assert p.tobytes() == b.tobytes()
    assert pickle.dumps(opt.state_dict()) == state_before


@pytest.mark.parametrize("opt_cls", [fo.SGD, fo.Adam])
def test_a_grad_key_for_a_parameter_that_does_not_exist_is_refused(opt_cls):
    params = {"W1": np.ones((3, 2)), "b1": np.zeros(3)}
    before = {k: v.copy() for k, v in params.items()}
    opt = opt_cls(params, lr=0.1)
    grads = {"dW1": np.ones((3, 2)), "db1": np.ones(3)}
    for stray in ("dW2", "W2", "db", "dW"):
        with pytest.raises(ValueError, match=f"'{stray}' but there is no such parameter"):
            opt.step({**grads, stray: np.ones(2)})
    # (an optimizer over some of a model's parameters is told what to pass)
    with pytest.raises(ValueError, match="pass their grads only"):
        opt.step({**grads, "dW2": np.ones(2)})
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])
    # the course's caches ride along in its grads dict (dA1, dZ1): not a parameter's kind
    opt.step({**grads, "dA1": np.ones(4), "dZ1": np.ones(4), "loss": 0.5})
    opt.step({"W1": np.ones((3, 2)), "b1": np.ones(3)})   # the parameters' names
    assert not np.array_equal(params["W1"], before["W1"])


def test_a_sequence_of_grads_for_named_parameters_is_refused():
    # the order of a dict is easy to get wrong and same-shaped arrays would swap silently
    params = {"W1": np.ones(4), "W2": np.ones(4)}
    opt = fo.SGD(params, lr=0.1)
    for grads in ([np.ones(4), np.ones(4)], (np.ones(4), np.ones(4))):
        with pytest.raises(ValueError, match="by name"):
            opt.step(grads)
    np.testing.assert_array_equal(params["W1"], 1.0)


def test_a_sequence_of_the_wrong_length_says_how_many():
    a, b = np.ones(3), np.ones(2)
    with pytest.raises(ValueError, match="1 entries, expected 2"):
        fo.SGD([a, b], lr=0.1).step([np.ones(3)])
    np.testing.assert_array_equal(a, 1.0)


# --------------------------------------------------------------------------- state dicts
def _corruptions():
    """(description, change to a state dict of Adam over two parameters, exception)."""
    def drop(sd):
        del sd["state"][0]["exp_avg"]

    def rename(sd):
        sd["state"][0]["exp_avg2"] = sd["state"][0].pop("exp_avg")

    def step(value):
        return lambda sd: sd["state"][0].__setitem__("step", value)

    def array(value):
        return lambda sd: sd["state"][1].__setitem__("exp_avg_sq", value)

    return [
        ("missing exp_avg", drop, ValueError), ("renamed exp_avg", rename, ValueError),
        # (step 0 loads: an assigned reset, test_optimizers.py)
        ("negative step", step(-1), ValueError),
        ("NaN step", step(math.nan), ValueError), ("fractional step", step(1.5), ValueError),
        ("step None", step(None), TypeError), ("step str", step("2"), TypeError),
        ("wrong shape", array(np.zeros(5)), ValueError),
        ("integer array", array(np.zeros(4, np.int64)), TypeError),
        ("list", array([0.0] * 4), TypeError),
        ("unknown parameter", lambda sd: sd["state"].__setitem__(7, {"step": 1}), ValueError),
        ("state not a dict", lambda sd: sd["state"].__setitem__(1, [1]), TypeError),
        ("extra group", lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])),
         ValueError),
        ("too many params", lambda sd: sd["param_groups"][0]["params"].append(2), ValueError),
        ("a parameter twice", lambda sd: sd["param_groups"][0].__setitem__("params", [0, 0]),
         ValueError),
        ("bad betas", lambda sd: sd["param_groups"][0].__setitem__("betas", (1.0, 0.9)),
         ValueError),
        ("lr None", lambda sd: sd["param_groups"][0].__setitem__("lr", None), TypeError),
        ("no state key", lambda sd: sd.pop("state"), ValueError),
    ]


@pytest.mark.parametrize("what,change,exc", _corruptions(), ids=[c[0] for c in _corruptions()])
def test_load_state_dict_refuses_what_would_break_a_step_and_changes_nothing(what, change,
                                                                           exc):
    params = two_params()
    opt = fo.Adam(params, lr=0.1)
    opt.step(two_grads())
    sd = opt.state_dict()
    opt.step(two_grads(2))
    before = opt_snapshot(opt, params)
    change(sd)
    with pytest.raises(exc):
        opt.load_state_dict(sd)
    assert opt_snapshot(opt, params) == before
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["betas"] == (0.9, 0.999)


@pytest.mark.parametrize("ids,words", [
    (5, r"\['params'\] must be a list of parameter ids, got int"),
    (None, r"\['params'\] must be a list of parameter ids"),
    ([[0], [1]], r"\['params'\]\[0\] must be a parameter id")])
def test_load_state_dict_names_a_bad_list_of_parameter_ids(ids, words):
    """A group's params that is no list ('object of type 'int' has no len()') or holds an
    unhashable id ('unhashable type: 'list'') was a TypeError naming nothing."""
    params = two_params()
    opt = fo.Adam(params, lr=0.1)
    opt.step(two_grads())
    sd = opt.state_dict()
    sd["param_groups"][0]["params"] = ids
    before = opt_snapshot(opt, params)
    with pytest.raises(TypeError, match=r"^state_dict\['param_groups'\]\[0\]" + words):
        opt.load_state_dict(sd)
    assert opt_snapshot(opt, params) == before


def test_load_state_dict_refuses_a_mismatch_and_changes_nothing():
    opt = fo.Adam([np.ones(3)])
    opt.step([np.ones(3)])
    bad = opt.state_dict()
    bad["state"][0]["exp_avg"] = np.zeros(4)
    before = pickle.dumps(opt.state_dict())
    with pytest.raises(ValueError, match="exp_avg"):
        opt.load_state_dict(bad)
    assert pickle.dumps(opt.state_dict()) == before


@pytest.mark.parametrize("alpha", [1.0, 1.5])
def test_rmsprop_takes_any_alpha_torch_takes(alpha):
    """torch.optim.RMSprop bounds alpha only below (0 <= alpha)."""
    torch = pytest.importorskip("torch")
    p = np.array([1.0, -2.0, 3.0])
    g = np.array([0.5, 0.25, -1.0])
    opt = fo.RMSprop([p], lr=0.1, alpha=alpha)
    tp = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    topt = torch.optim.RMSprop([tp], lr=0.1, alpha=alpha, foreach=False)
    for _ in range(3):
        opt.step([g])
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
    np.testing.assert_array_equal(p, tp.detach().numpy())


def test_a_load_state_dict_with_a_step_past_2_53_is_refused_and_changes_nothing():
    p = [np.ones(3), np.ones(2)]
    opt = fo.Adam(p, lr=0.1)
    opt.step([np.ones(3), np.ones(2)])
    before = pickle.dumps(opt.state_dict())
    sd = opt.state_dict()
    sd["param_groups"][0]["lr"] = 0.5
    sd["state"][1]["step"] = 2 ** 63            # a whole number >= 1, but not an int64 count
    with pytest.raises(ValueError, match=r"\['step'\]"):
        opt.load_state_dict(sd)
    assert pickle.dumps(opt.state_dict()) == before
    opt.step([np.ones(3), np.ones(2)])
    assert int(opt.state[1]["step"]) == 2


@pytest.mark.parametrize("reset", ["assign an empty dict", "an empty entry"])
def test_an_emptied_state_makes_the_next_step_a_first_step(reset):
    """As torch: ``opt.state = {}`` / ``opt.state[i] = {}`` reset the parameters' state."""
    fresh = np.full(3, 1.0)
    fo.Adam([fresh], lr=0.2).step([np.full(3, 0.5)])
    p = np.full(3, 1.0)
    opt = fo.Adam([p], lr=0.2)
    for _ in range(3):
        opt.step([np.full(3, 0.5)])
    p[...] = 1.0
    if reset == "assign an empty dict":
        opt.state = {}
    else:
        opt.state[0] = {}
    opt.step([np.full(3, 0.5)])
    np.testing.assert_array_equal(p, fresh)
    assert int(opt.state[0]["step"]) == 1


@pytest.mark.parametrize("name,kwargs", CONFIGS + [("Lion", {})], ids=CONFIG_IDS + ["Lion"])
def test_a_state_dict_with_an_emptied_entry_loads_as_torchs(name, kwargs):
    """``opt.state[i] = {}`` leaves an empty entry in ``state_dict()``, as in torch, whose
    load_state_dict takes it back: it loads as no state (the parameter's next step is a
    first step), into the optimizer itself and into a fresh one. It was refused with
    "state_dict['state'][0] has no 'step'"."""
    p = [np.full(3, 1.0), np.full(2, 1.0)]
    opt = getattr(fo, name)(p, **kwargs)
    opt.step([np.full(3, 0.5), np.full(2, 0.5)])
    opt.state[0] = {}
    opt.state[1].clear()            # (emptied in place: saved too)
    sd = opt.state_dict()
    assert sd["state"][0] == sd["state"][1] == {}
    first = [p[0].copy()]           # what a first step from here gives
    getattr(fo, name)(first, **kwargs).step([np.full(3, 0.25)])
    twin = [a.copy() for a in p]
    fresh = getattr(fo, name)(twin, **kwargs)
    fresh.load_state_dict(sd)
    opt.load_state_dict(sd)
    for o in (opt, fresh):
        o.step([np.full(3, 0.25), np.full(2, 0.25)])
    assert [a.tobytes() for a in p] == [a.tobytes() for a in twin]
    assert p[0].tobytes() == first[0].tobytes()


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("kind", ["matrix", "masked"])
def test_a_matrix_or_masked_grad_in_a_later_group_changes_nothing(kind):
    W, b = np.ones((2, 2)), np.ones((2, 1))
    opt = fo.Adam([{"params": [W]}, {"params": [b], "lr": 0.01}], lr=0.1)
    bad = np.asmatrix(np.ones((2, 1))) if kind == "matrix" else np.ma.masked_array(np.ones((2, 1)))
    with pytest.raises(TypeError, match="parameter 1 must be a plain numpy.ndarray"):
        opt.step([np.ones((2, 2)), bad])
    assert (W == 1).all() and (b == 1).all() and len(opt.state) == 0


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_an_optimizer_takes_byteswapped_grads_as_the_kernels_do(backend):
    """A grad in the other byte order holds the same values: every group steps as with the
    native grad (it had been refused by the optimizers' own check, not by the kernels)."""
    results = []
    for g in (np.full(3, 0.5), byteswapped(np.full(3, 0.5))):
        p, q = np.ones(3), np.ones(2)
        with fo.use_backend(backend):
            opt = fo.Adam([{"params": [p]}, {"params": [q], "lr": 0.01}], lr=0.1)
            for _ in range(3):
                opt.step([g, np.ones(2)])
        results.append(p.tobytes() + q.tobytes())
    assert results[0] == results[1]


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("name,kwargs", CONFIGS + [("Lion", {})], ids=CONFIG_IDS + ["Lion"])
def test_an_optimizer_takes_byteswapped_params_and_state_as_the_kernels_do(backend, name, kwargs):
    """README: every function takes float32/float64 arrays in either byte order and updates
    them in place. A byte-swapped parameter (and state assigned in the other byte order)
    steps to the bits of the native one, through a state dict too (they had been refused at
    construction with "must have dtype float32 or float64, got >f8")."""
    results = []
    for swap in (False, True):
        rng = np.random.default_rng(0)
        ps = [rng.standard_normal(s) for s in ((3, 4), (5,), ())]
        ps.append(rng.standard_normal(6).astype(np.float32))
        ps = [byteswapped(p) if swap else p for p in ps]
        grads = [[rng.standard_normal(p.shape).astype(p.dtype.type) for p in ps]
                 for _ in range(3)]
        with fo.use_backend(backend):
            opt = getattr(fo, name)([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.01}],
                                    **kwargs)
            opt.step(grads[0])
            for key, value in list(opt.state[1].items()):
                if isinstance(value, np.ndarray) and value.ndim:
                    flip = value.dtype.newbyteorder("S")        # (the other order than ps[1])
                    opt.state[1][key] = value.astype(flip) if swap else value.copy()
            opt.step(grads[1])
            again = getattr(fo, name)([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.01}],
                                      **kwargs)
            again.load_state_dict(pickle.loads(pickle.dumps(opt.state_dict())))
            again.step(grads[2])
        results.append(b"".join(p.astype(p.dtype.newbyteorder("=")).tobytes() for p in ps))
    assert results[0] == results[1]


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("kind", ["matrix", "masked"])
def test_a_matrix_or_masked_param_is_refused_at_construction(kind):
    """A param that is not a plain ndarray is a TypeError when the optimizer is built, as a
    read-only one is (it had been accepted, and refused only at the first step)."""
    bad = np.asmatrix(np.ones((2, 1))) if kind == "matrix" else np.ma.masked_array(np.ones(2))
    with pytest.raises(TypeError, match="parameter params\\[1\\] must be a plain numpy.ndarray"):
        fo.Adam([np.ones(2), bad])


def test_numpy_float32_hyper_parameters_are_folded_in_float64():
    """The per-step scalars are folded in float64 whatever the scalars' type: np.float32
    values fold as the Python floats they equal."""
    runs = []
    for convert in (lambda v: float(np.float32(v)), np.float32):    # the same values
        p = np.ones(5)
        opt = fo.NAdam([p], lr=convert(0.01), betas=(convert(0.9), convert(0.999)),
                       momentum_decay=convert(0.004))
        q = np.ones(5)
        opt2 = fo.Adagrad([q], lr=convert(0.1), lr_decay=convert(0.01))
        for _ in range(5):
            opt.step([np.full(5, 0.3)])
            opt2.step([np.full(5, 0.3)])
        runs.append(p.tobytes() + q.tobytes())
    assert runs[0] == runs[1]


def test_an_empty_parameter_dict_is_refused_as_an_empty_list_is():
    for empty in ({}, []):
        with pytest.raises(ValueError, match="empty parameter"):
            fo.SGD(empty, lr=0.1)


def test_zero_grad_takes_torchs_set_to_none():
    opt = fo.Adam([np.ones(2)])
    opt.zero_grad()
    opt.zero_grad(set_to_none=False)
    opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_an_arena_optimizer_keeps_no_state_from_a_refused_step_or_for_a_param_that_sat_out(
        backend):
    """The arena path makes every parameter's state (views of flat buffers) when it plans;
    it is stored only once a step used it, as on the list path."""
    with fo.use_backend(backend):
        arena = fo.ParameterArena(np.float64)
        W, b = arena.add("W", (2, 3), init=1.0), arena.add("b", 3, init=1.0)
        opt = fo.Adam([W, b], lr=0.1)
        with pytest.raises(ValueError):
            opt.step([np.ones((2, 3)), np.ones(4)])
        assert len(opt.state) == 0 and (W == 1).all() and (b == 1).all()
        opt.step([np.ones((2, 3)), None])
        assert list(opt.state) == [0] and int(opt.state[0]["step"]) == 1
        fo.Adam([W, b], lr=0.1).load_state_dict(opt.state_dict())
        opt.step([np.ones((2, 3)), np.ones(3)])
        assert int(opt.state[0]["step"]) == 2 and int(opt.state[1]["step"]) == 1
        W2, b2 = np.ones((2, 3)), np.ones(3)
        ref = fo.Adam([W2, b2], lr=0.1)
        ref.step([np.ones((2, 3)), None])
        ref.step([np.ones((2, 3)), np.ones(3)])
        assert W.tobytes() == W2.tobytes() and b.tobytes() == b2.tobytes()


# ------------------------------------------- 0-d arrays and NumPy scalars as hyper-parameters
def _lr_entry_points():
    """(name, run(lr) -> the bytes it produced): every kind of place that takes a learning
    rate (ops kernels, optimizers at construction, through a param group edited between
    steps and through the lr setter, the course module, a schedule). Each runs from fresh
    arrays."""
    def arrays():
        return np.linspace(-1.0, 1.0, 5), np.linspace(0.5, -0.5, 5)

    def op_sgd(lr):
        p, g = arrays()
        ops.sgd_step_(p, g, lr=lr)
        return p.tobytes()

    def op_adam(lr):
        p, g = arrays()
        m, v = np.zeros(5), np.zeros(5)
        ops.foreach_adam_step_([p], [g], [m], [v], 2, lr=lr)
        return p.tobytes() + m.tobytes() + v.tobytes()

    def opt_new(lr):
        p, g = arrays()
        fo.Adam([p], lr=lr).step([g])
        return p.tobytes()

    def opt_group(lr):
        p, g = arrays()
        opt = fo.SGD([p], lr=0.5, momentum=0.5)
        opt.step([g])
        opt.param_groups[0]["lr"] = lr
        opt.step([g])
        return p.tobytes()

    def opt_setter(lr):
        p, g = arrays()
        opt = fo.RMSprop([p], lr=0.5)
        opt.lr = lr
        opt.step([g])
        return p.tobytes()

    def course_gd(lr):
        p, g = arrays()
        params = fo.course.update_parameters_with_gd({"W1": p, "b1": g.copy()},
                                                     {"dW1": g, "db1": g}, lr)
        return params["W1"].tobytes() + params["b1"].tobytes()

    def course_adam(lr):
        p, g = arrays()
        params = {"W1": p, "b1": g.copy()}
        v, s = fo.course.initialize_adam(params)
        out = fo.course.update_parameters_with_adam(params, {"dW1": g, "db1": g}, v, s, 2,
                                                    learning_rate=lr)
        return out[0]["W1"].tobytes()

    def course_update_lr(lr):
        return repr(fo.course.update_lr(lr, 3, 0.5)).encode()

    def schedule(lr):
        return repr(fo.schedules.exponential_decay(lr, 0.5)(3)).encode()

    return {f.__name__: f for f in (op_sgd, op_adam, opt_new, opt_group, opt_setter,
                                    course_gd, course_adam, course_update_lr, schedule)}


LR_ENTRY_POINTS = _lr_entry_points()
# where the learning rate is called otherwise (the course's name)
LR_NAME = {"course_gd": "learning_rate", "course_adam": "learning_rate",
           "course_update_lr": "learning_rate0", "schedule": "lr0"}


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("where", LR_ENTRY_POINTS)
def test_a_0d_array_or_numpy_scalar_is_taken_wherever_a_real_number_is(backend, where):
    """A NumPy user's lr: a 0-d array (float or int) or a NumPy scalar gives the bits the
    Python number it holds gives (the optimizers and the course's update_lr refused 0-d
    arrays as 'not a real number')."""
    run = LR_ENTRY_POINTS[where]
    with fo.use_backend(backend):
        for value, same in [(np.array(0.25), 0.25), (np.array(0.25, np.float32), 0.25),
                            (np.float32(0.25), 0.25), (np.float64(0.25), 0.25),
                            (np.array(1), 1), (np.int64(1), 1), (np.array(0.0), 0.0)]:
            assert run(value) == run(same), (where, value)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("where", LR_ENTRY_POINTS)
def test_a_refused_0d_or_numpy_lr_says_the_true_reason_naming_it(backend, where):
    """np.array(-0.1) is a real number, negative: the message said 'not a real number'. Each
    refusal names the argument and says why; True (a bug, not a learning rate of 1) is
    refused wherever a hyper-parameter is checked by type before any kernel runs."""
    run = LR_ENTRY_POINTS[where]
    name = LR_NAME.get(where, "lr")
    in_range = "must be >= 0" if where not in ("course_update_lr", "schedule") else (
        "must be in [0, inf)")    # (a schedule's lr0 is finite)
    cases = [(np.array(-0.1), ValueError, in_range),
             (np.float32(-0.25), ValueError, in_range),
             (np.array(math.nan), ValueError, in_range),
             (np.array([0.1, 0.2]), TypeError, "array of shape (2,)"),
             ("0.1", TypeError, "got str"), (None, TypeError, "got NoneType"),
             (0.1 + 0j, TypeError, "got complex")]
    # (fastopt.ops's chained comparisons let these pass; its backends refuse them)
    cases += [(True, TypeError, "got bool"), (np.True_, TypeError, "got bool"),
              (np.array(True), TypeError, "dtype bool"),
              (np.array(0.1 + 0j), TypeError, "dtype complex128"),
              (np.array(1.0, dtype=object), TypeError, "dtype object"),
              (np.complex128(0.1), TypeError, "got complex128"),
              (np.array([0.1]), TypeError, "array of shape (1,)")]
    with fo.use_backend(backend):
        for value, exc, why in cases:
            with pytest.raises(exc) as info:
                run(value)
            message = str(info.value)
            assert message.startswith(f"Invalid {name}: ") and why in message, (value, message)


# ------------------------------- fastopt.ops: scalars that pass the chained comparisons
def _ops_scalars(fn):
    """The scalar arguments of the fastopt.ops function ``fn``, from its signature:
    ``(reals, betas, flags)`` (annotated float or int, a tuple, bool)."""
    reals, betas, flags = [], [], []
    for name, p in inspect.signature(fn).parameters.items():
        if p.annotation in (float, int):
            reals.append(name)
        elif "tuple" in str(p.annotation):
            betas.append(name)
        elif p.annotation is bool:
            flags.append(name)
    return reals, betas, flags


def _ops_scalar_cases():
    """(kernel, foreach, argument, bad value, message) for every scalar of every fastopt.ops
    function: values whose comparisons succeed (a size-1 array, a NumPy complex) or whose
    truthiness is defined (a str, an int, None, an array as a flag)."""
    not_real = [(np.array([0.5]), "got an array of shape (1,)"),
                (np.array([[0.5]]), "got an array of shape (1, 1)"),
                (np.complex128(0.5), "got complex128"), (np.complex64(0.5), "got complex64"),
                (np.array(0.5 + 0j), "got a 0-d array of dtype complex128"),
                (True, "got bool"), (np.True_, "got bool"),
                (np.array(True), "got a 0-d array of dtype bool")]
    not_flag = ["no", "", None, 1, 0, np.array([True]), np.array([True, False]),
                np.array(True), 1.0]
    cases = []
    for kernel in _registry.KERNELS:
        for foreach in (False, True):
            fn = getattr(ops, kernel.foreach_ops if foreach else kernel.ops)
            reals, betas, flags = _ops_scalars(fn)
            for name in reals:
                cases += [(kernel.name, foreach, name, bad, f"Invalid {name}: .*{re.escape(why)}")
                          for bad, why in not_real]
            for name in betas:
                for i in (0, 1):
                    label = re.escape(f"Invalid beta{i + 1} ({name}[{i}]): ")
                    cases += [(kernel.name, foreach, (name, i), bad, f"{label}.*{re.escape(why)}")
                              for bad, why in not_real]
            for name in flags:
                cases += [(kernel.name, foreach, name, bad,
                           f"Invalid {name}: .*must be True or False") for bad in not_flag]
    return cases


OPS_SCALAR_CASES = _ops_scalar_cases()


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("kernel,foreach,name,bad,message", OPS_SCALAR_CASES,
                         ids=[f"{k}-{'foreach' if f else 'single'}-{n}-{i}"
                              for i, (k, f, n, *_) in enumerate(OPS_SCALAR_CASES)])
def test_ops_refuse_non_real_scalars_and_non_bool_flags_by_name_and_write_nothing(
        backend, kernel, foreach, name, bad, message):
    """A size-1 array, a NumPy complex or a bool passed the chained comparisons of the quick
    check: the compiled backends then raised an unnamed TypeError (or took the complex's real
    part, or 1.0 for True) and the NumPy reference broadcast; a flag was taken by its
    truthiness ("no" maximized). Each is now the TypeError the thorough check raises, naming
    the argument, and nothing is written."""
    spec = SPECS[kernel]
    arrays = valid_arrays(spec, (4,), np.float64, np.random.default_rng(3))
    if isinstance(name, tuple):                 # one element of betas
        name, i = name
        pair = list(inspect.signature(getattr(ops, spec.kernel.ops)).parameters[name].default)
        pair[i] = bad
        hyper = dict(spec.hyper, **{name: tuple(pair)})
    else:
        hyper = dict(spec.hyper, **{name: bad})
    args = [[a] for a in arrays] if foreach else arrays
    before = snapshot(args)
    with fo.use_backend(backend), warnings.catch_warnings():
        warnings.simplefilter("error")          # (no ComplexWarning on the way)
        with pytest.raises(TypeError, match=message):
            (spec.multi if foreach else spec.single)(args, **hyper)
    for a, b in zip(args, before):
        for x, y in zip(a if foreach else [a], b if foreach else [b]):
            assert same_bits(x, y), (kernel, name)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("kernel", SPECS)
def test_ops_take_numpy_bools_as_flags_and_numpy_reals_as_scalars(backend, kernel):
    """What the refusals above leave taken: np.bool_ flags and NumPy real scalars (and 0-d
    arrays of them) give the bits the Python values give."""
    spec = SPECS[kernel]
    reals, betas, flags = _ops_scalars(getattr(ops, spec.kernel.ops))

    def run(convert_real, convert_flag):
        arrays = valid_arrays(spec, (4,), np.float64, np.random.default_rng(4))
        hyper = dict(spec.hyper)
        for name in flags:
            hyper[name] = convert_flag(True)
        for name in reals:
            if name in hyper:
                hyper[name] = convert_real(hyper[name])
        with fo.use_backend(backend):
            spec.single(arrays, **hyper)
        return b"".join(a.tobytes() for a in arrays)

    assert run(lambda v: v, bool) == run(np.float64, np.bool_) == run(np.array, np.bool_)
    # narrower NumPy floats are their values, folded in float64 as Python's: a np.float32 or
    # np.float16 step (torch keeps it as a float32 tensor) folded the bias corrections in
    # its own precision (1 - beta2**step in float16)
    for narrow in (np.float32, np.float16):
        as_python = lambda v: float(narrow(v))  # noqa: E731
        assert (run(narrow, bool) == run(lambda v: np.array(v, narrow), bool)
                == run(as_python, bool)), narrow


def test_lr_of_an_optimizer_whose_groups_were_all_popped_is_an_empty_list():
    # (lrs[0] of no groups: IndexError, from opt.lr and from an LRScheduler's get_last_lr)
    opt = fo.SGD([np.ones(2)], lr=0.1)
    sched = fo.schedules.LRScheduler(opt, fo.schedules.exponential_decay(0.1))
    opt.param_groups.pop()
    assert opt.lr == [] and sched.get_last_lr() == []
    opt.add_param_group({"params": [np.ones(3)], "lr": 0.5})
    assert opt.lr == 0.5


@pytest.mark.parametrize("how", ["entry", "whole"])
def test_state_after_a_param_group_was_popped_is_by_the_new_indices(backend, how):
    # after param_groups.pop(0), opt.state (until the next step) was by the old indices:
    # opt.state[0] was the popped parameter's, and an exp_avg assigned there for the
    # remaining parameter (index 0 in state_dict()) was lost; a state assigned whole was
    # moved by the pop at the next step, and lost too
    a, b = np.ones(2), np.full(3, 2.0)
    with fo.use_backend(backend):
        opt = fo.Adam([{"params": [a]}, {"params": [b]}], lr=0.1)
        opt.step([np.ones(2), np.ones(3)])          # b's exp_avg: 0.1
        opt.param_groups.pop(0)
        assert list(opt.state) == [0] and opt.state[0]["exp_avg"].shape == (3,)
        if how == "entry":
            opt.state[0]["exp_avg"] = np.full(3, 7.0)
        else:
            opt.state = {0: {"step": 1, "exp_avg": np.full(3, 7.0),
                             "exp_avg_sq": np.full(3, 0.001)}}
        opt.step([np.ones(3)])
    assert opt.state_dict()["state"][0]["exp_avg"].tolist() == [6.4] * 3   # 0.9 * 7 + 0.1


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_an_optimizer_copied_after_a_param_group_was_popped_steps_as_the_original(backend,
                                                                                  name, how):
    # pickle or deepcopy right after param_groups.pop(0), before a step: the copy's flat
    # indices were the ones from before the pop, and making it raised IndexError
    kw = dict(lr=0.1, momentum=0.9) if name == "SGD" else dict(lr=0.1)
    rng = np.random.default_rng(5)
    a, b, c = (rng.standard_normal(n) for n in (2, 3, 4))
    g = [rng.standard_normal(x.shape) for x in (a, b, c)]
    b2, c2 = b.copy(), c.copy()
    with fo.use_backend(backend):
        opt = getattr(fo, name)([{"params": [a]}, {"params": [b, c]}], **kw)
        ref = getattr(fo, name)([b2, c2], **kw)
        opt.step(g)
        ref.step(g[1:])
        opt.param_groups.pop(0)
        new = pickle.loads(pickle.dumps(opt)) if how == "pickle" else copy.deepcopy(opt)
        b3, c3 = new.param_groups[0]["params"]
        new.step(g[1:])
        opt.step(g[1:])
        ref.step(g[1:])
    assert same_bits(b, b2) and same_bits(c, c2) and same_bits(b3, b2) and same_bits(c3, c2)


@pytest.mark.parametrize("name", ["Adam", "SGD", "NAdam"])
def test_a_param_group_popped_from_param_groups_takes_its_state_along(backend, name):
    # param_groups.pop(1) (as torch.optim users drop a group): the state, step counts and flat
    # indices were kept by group position, so the group after the popped one stepped with the
    # popped group's state (and its step count), and one grad per remaining parameter was
    # refused as too few
    kw = dict(lr=0.1, momentum=0.9) if name == "SGD" else dict(lr=0.1)
    rng = np.random.default_rng(3)
    a, b, c = (rng.standard_normal(5) for _ in range(3))
    g = [rng.standard_normal(5) for _ in range(3)]
    opt = getattr(fo, name)([{"params": [a]}, {"params": [b, b[:0].copy()]},
                             {"params": [c], "lr": 0.05}], **kw)
    a2, c2 = a.copy(), c.copy()
    ref = getattr(fo, name)([{"params": [a2]}, {"params": [c2], "lr": 0.05}], **kw)
    opt.step(g[:2] + [np.zeros(0)] + g[2:])
    ref.step([g[0], g[2]])
    b_before = b.copy()
    opt.param_groups.pop(1)
    for _ in range(2):
        opt.step([g[0], g[2]])
        ref.step([g[0], g[2]])
    assert same_bits(a, a2) and same_bits(c, c2) and same_bits(b, b_before)
    got, want = opt.state_dict(), ref.state_dict()
    assert got["state"].keys() == want["state"].keys() == {0, 1}
    for i in (0, 1):
        for key, value in want["state"][i].items():
            assert same_bits(np.asarray(got["state"][i][key]), np.asarray(value)), (i, key)
    assert [grp["params"] for grp in got["param_groups"]] == [[0], [1]]
    with pytest.raises(ValueError, match="expected 2"):
        opt.step(g)
    opt.param_groups.append({"params": [b]})        # not by add_param_group: refused by name
    with pytest.raises(ValueError, match=r"param_groups\[2\]"):
        opt.step(g)
    opt.param_groups.pop()
    opt.add_param_group({"params": [b]})
    opt.step(g)
    assert not same_bits(b, b_before)


_LIST_EDITS = {
    "append": lambda params, x: params.append(x),
    "insert": lambda params, x: params.insert(0, x),
    "delete": lambda params, x: params.pop(0),
    "replace": lambda params, x: params.__setitem__(1, x),
    "assign": None,                               # group["params"] = [b, x]
}


@pytest.mark.parametrize("edit", list(_LIST_EDITS))
@pytest.mark.parametrize("name", ["Adam", "SGD", "NAdam"])
def test_a_group_params_list_changed_in_place_steps_what_it_holds(backend, name, edit):
    # torch steps what a group's params list holds, each tensor with its own state (a new one
    # from scratch). The flat indices were kept from before the change: an appended array was
    # never stepped and a grad for it was refused as one too many, a deleted one left every
    # grads structure refused, a replacement took the replaced array's moments and step count.
    # The oracle: every array stepped alone by an optimizer of its own, with the same grads
    kw = dict(lr=0.1, momentum=0.9) if name == "SGD" else dict(lr=0.1)
    rng = np.random.default_rng(11)
    a, b, c, x = (rng.standard_normal(n) for n in (2, 3, 4, 5))
    alone = {id(v): getattr(fo, name)([v.copy()], **kw) for v in (a, b, c, x)}

    def step(opt, arrays):
        grads = [rng.standard_normal(v.shape) for v in arrays]
        opt.step(grads)
        for v, g in zip(arrays, grads):
            alone[id(v)].step([g])

    with fo.use_backend(backend):
        opt = getattr(fo, name)([{"params": [a, b]}, {"params": [c]}], **kw)
        step(opt, [a, b, c])
        group = opt.param_groups[0]
        if edit == "assign":
            group["params"] = [b, x]
        else:
            _LIST_EDITS[edit](group["params"], x)
        for _ in range(2):
            step(opt, [*group["params"], c])
    for v in (*group["params"], c):
        assert same_bits(v, alone[id(v)].param_groups[0]["params"][0]), edit
    # the state dict numbers what the groups hold, and loads into an optimizer like it
    saved = opt.state_dict()
    held = [*group["params"], c]
    assert [g["params"] for g in saved["param_groups"]] == [list(range(len(held) - 1)),
                                                           [len(held) - 1]]
    for i, v in enumerate(held):
        want = alone[id(v)].state_dict()["state"][0]
        assert saved["state"][i].keys() == want.keys()
        for key, value in want.items():
            assert same_bits(np.asarray(saved["state"][i][key]), np.asarray(value)), (i, key)
    twin = getattr(fo, name)([{"params": [v.copy() for v in held[:-1]]},
                              {"params": [c.copy()]}], **kw)
    twin.load_state_dict(saved)


@pytest.mark.parametrize("back", ["list", "add_param_group"])
def test_an_array_taken_out_of_its_group_keeps_its_state_for_when_it_comes_back(backend, back):
    # as torch's state, keyed by the tensor: b, out of the groups for a step, goes on from
    # its own moments and step count (an oracle stepping b alone, skipping that step)
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal(3), rng.standard_normal(2)
    g = [rng.standard_normal(3), rng.standard_normal(2)]
    with fo.use_backend(backend):
        opt, solo = fo.Adam([a, b], lr=0.1), fo.Adam([b.copy()], lr=0.1)
        opt.step(g)
        solo.step(g[1:])
        opt.param_groups[0]["params"].pop()
        opt.step(g[:1])
        assert list(opt.state_dict()["state"]) == [0]
        if back == "list":
            opt.param_groups[0]["params"].append(b)
        else:
            opt.add_param_group({"params": [b]})
        opt.step(g)
        solo.step(g[1:])
    assert int(opt.state[1]["step"]) == 2 and int(opt.state[0]["step"]) == 3
    assert same_bits(b, solo.param_groups[0]["params"][0])


def test_the_state_of_an_array_taken_out_of_the_groups_goes_when_the_array_does():
    """Kept for when it comes back (the test above), the state of a replaced parameter was
    kept, with the array, for the optimizer's life, out of sight (not in opt.state nor in
    state_dict(), which torch's keeps it in): 20 replacements of a 4 MB Adam parameter held
    229 MB (the leaks probe). It goes when the user lets go of the array."""
    import weakref
    rng = np.random.default_rng(8)
    opt = fo.Adam([rng.standard_normal(1000)], lr=0.1)
    gone = []
    for _ in range(20):
        opt.step([np.ones(1000)])
        gone.append(weakref.ref(opt.param_groups[0]["params"][0]))
        opt.param_groups[0]["params"][0] = rng.standard_normal(1000)
    opt.step([np.ones(1000)])
    assert all(ref() is None for ref in gone) and not opt._detached
    kept = opt.param_groups[0]["params"].pop()      # held: its state stays for its return
    opt.param_groups[0]["params"].append(rng.standard_normal(1000))
    opt.step([np.ones(1000)])
    opt.param_groups[0]["params"][0] = kept
    opt.step([np.ones(1000)])
    assert int(opt.state[0]["step"]) == 2


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_a_copy_keeps_the_state_of_arrays_out_of_the_groups(backend, how):
    """A copy (pickle or deepcopy, with the arrays) dropped the state kept for an array taken
    out of the groups: back in the copy's groups it started again (Adam's bias correction
    from step 1), where torch's copy keeps it in opt.state (the stateful probe). A copy of the
    optimizer alone holds the only copy of such an array: it goes, and its state with it."""
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal(3), rng.standard_normal(2)
    a_init, b_init = a.copy(), b.copy()
    g = [rng.standard_normal(3), rng.standard_normal(2)]
    copy_of = (lambda x: pickle.loads(pickle.dumps(x))) if how == "pickle" else copy.deepcopy
    with fo.use_backend(backend):
        opt = fo.Adam([{"params": [a]}, {"params": [b]}], lr=0.1)
        ref = fo.Adam([{"params": [a.copy()]}, {"params": [b.copy()]}], lr=0.1)
        opt.step(g)
        ref.step(g)
        opt.param_groups.pop(1)
        a2, b2, opt2 = copy_of((a, b, opt))
        opt2.param_groups[0]["params"].append(b2)
        opt2.step(g)
        ref.step(g)
        assert int(opt2.state[1]["step"]) == 2
        assert same_bits(b2, ref.param_groups[1]["params"][0])
        assert same_bits(a2, ref.param_groups[0]["params"][0])
        alone = copy_of(opt)
        assert not alone._detached
        assert len(opt._detached) == 1 and opt._detached[id(b)][0]() is b
        # arena views (pickled as the arena and a position, as the groups' are): the same
        arena = fo.ParameterArena(np.float64, capacity=64)
        views = [arena.add("a", 3, init=a_init), arena.add("b", 2, init=b_init)]
        opt = fo.Adam([{"params": [views[0]]}, {"params": [views[1]]}], lr=0.1)
        opt.step(g)
        opt.param_groups.pop(1)
        arena2, opt2 = copy_of((arena, opt))
        opt2.param_groups[0]["params"].append(arena2.params["b"])
        opt2.step(g)
        assert int(opt2.state[1]["step"]) == 2
        assert same_bits(arena2.params["b"], ref.param_groups[1]["params"][0])
        # an optimizer pickled before its copies kept these states loads (without them)
        state = opt.__getstate__()
        del state["_detached"]
        old = object.__new__(type(opt))
        old.__setstate__(state)
        assert not old._detached


@pytest.mark.parametrize("how", ["betas edited", "moved to another group"])
def test_nadam_parameters_with_one_step_count_keep_their_own_mu_products(backend, how):
    # the mu product depends on the betas and momentum_decay each step took: two parameters
    # at one step count may hold different ones (one sat a step out before the betas
    # changed, or came from another group), and a step of both used the first one's for
    # both. The oracle: each array stepped alone with the same betas at each of its steps
    rng = np.random.default_rng(21)
    a, b = rng.standard_normal(3), rng.standard_normal(3)
    g = [rng.standard_normal(3) for _ in range(2)]
    with fo.use_backend(backend):
        solo = [fo.NAdam([v.copy()], lr=0.1, betas=(0.9, 0.99)) for v in (a, b)]

        def step(grads):
            opt.step(grads)
            for alone, gv in zip(solo, grads):
                if gv is not None:
                    alone.step([gv])

        if how == "betas edited":
            opt = fo.NAdam([a, b], lr=0.1, betas=(0.9, 0.99))
            step(g)                                     # both at step 1, one mu product
            step([g[0], None])                          # a at step 2 with beta1 0.9
            for o in (opt, *solo):
                o.param_groups[0]["betas"] = (0.5, 0.99)
            step([None, g[1]])                          # b at step 2 with beta1 0.5
        else:
            opt = fo.NAdam([{"params": [a]}, {"params": [b], "betas": (0.5, 0.99)}], lr=0.1,
                           betas=(0.9, 0.99))
            solo[1].param_groups[0]["betas"] = (0.5, 0.99)
            step(g)
            opt.param_groups[1]["params"].remove(b)     # b joins a's group, its state with it
            opt.param_groups[0]["params"].append(b)
            solo[1].param_groups[0]["betas"] = (0.9, 0.99)
        step(g)                                         # both at one step count
        step(g)
    for v, alone in zip((a, b), solo):
        assert same_bits(v, alone.param_groups[0]["params"][0]), how


def test_an_empty_state_entry_of_no_parameter_is_no_state_to_load():
    # opt.state.setdefault(5, {}) (torch's state takes any key) left an entry state_dict()
    # saved, and loading it was refused: "state for unknown parameter 5". One with state still is
    opt = fo.Adam([np.ones(2)], lr=0.1)
    opt.step([np.ones(2)])
    opt.state.setdefault(5, {})
    twin = fo.Adam([np.ones(2)], lr=0.1)
    twin.load_state_dict(opt.state_dict())
    assert list(twin.state_dict()["state"]) == [0]
    saved = opt.state_dict()
    saved["state"][5] = {"step": 1}
    with pytest.raises(ValueError, match="state for unknown parameter 5"):
        twin.load_state_dict(saved)


def test_a_named_groups_params_and_param_names_change_together():
    w, b = np.ones(2), np.ones(3)
    opt = fo.Adam({"W": w, "b": b}, lr=0.1)
    opt.step({"dW": np.ones(2), "db": np.ones(3)})
    opt.param_groups[0]["params"].append(np.ones(4))
    with pytest.raises(ValueError, match="3 params and 2 param_names"):
        opt.step({"dW": np.ones(2), "db": np.ones(3)})
    before = w.copy()
    opt.param_groups[0]["param_names"].append("v")
    opt.step({"dW": np.ones(2), "db": np.ones(3), "dv": np.ones(4)})
    assert not same_bits(w, before) and opt.state_dict()["param_groups"][0]["params"] == [0, 1, 2]


def _state_dict_bytes(opt):
    sd = opt.state_dict()
    return (repr(sd["param_groups"]),
            {i: {k: (np.asarray(v).dtype.str, np.asarray(v).tobytes()) for k, v in s.items()}
             for i, s in sd["state"].items()})


def test_a_memory_error_in_add_param_group_or_load_state_dict_changes_nothing(monkeypatch):
    """Both made their step-count arrays after recording the change: a MemoryError there left
    add_param_group's group start without its slots (every later state_dict, deepcopy and
    pickle raised IndexError) and load_state_dict's new lr and state in place."""
    p, q = np.ones(3), np.ones(2)
    opt = fo.Adam([p], lr=0.1)
    opt.step([np.full(3, 0.5)])
    other = opt.state_dict()
    other["param_groups"][0]["lr"] = 0.5
    other["state"][0]["step"] = 7
    other["state"][0]["exp_avg"] = np.full(3, 0.25)
    before = _state_dict_bytes(opt)

    def failing(self, n):
        raise MemoryError("injected")
    new_slots = fo.optim.Optimizer._new_slots
    monkeypatch.setattr(fo.optim.Optimizer, "_new_slots", failing)
    with pytest.raises(MemoryError):
        opt.add_param_group({"params": [q]})
    with pytest.raises(MemoryError):
        opt.load_state_dict(other)
    monkeypatch.setattr(fo.optim.Optimizer, "_new_slots", new_slots)
    assert _state_dict_bytes(opt) == before and len(opt.param_groups) == 1
    opt.add_param_group({"params": [q]})
    for copied in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert _state_dict_bytes(copied) == _state_dict_bytes(opt)
    opt.step([np.full(3, 0.5), np.full(2, 0.5)])
    assert [int(opt.state[i]["step"]) for i in (0, 1)] == [2, 1]


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_memory_error_from_a_kernel_is_no_step_taken(backend, monkeypatch):
    """A MemoryError from the backend (its tables for many tensors, the check of a strided
    one: raised before it writes) was stored as a step taken, as a Ctrl-C as the kernel
    returns is: the counts advanced, a first step's state was stored, over parameters left as
    they were (a bias correction one step off from then on). EWA.update counted the sample
    that way; and a MemoryError allocating its result, once the sample was in, left it
    counted (a retry folded it in twice)."""
    def failing(*args, **kwargs):
        raise MemoryError("injected")
    p = [np.ones(3), np.ones((2, 2))]
    twin = [a.copy() for a in p]
    grads = [np.full(3, 0.5), np.full((2, 2), 0.5)]
    ewa, ewa_twin = fo.EWA(0.9), fo.EWA(0.9)
    with fo.use_backend(backend):
        opt, ref = fo.Adam(p, lr=0.1), fo.Adam(twin, lr=0.1)
        for name in ("adam_multi", "ewa", "ewa_multi"):
            monkeypatch.setattr(fo._backend.active, name, failing)
        with pytest.raises(MemoryError):
            opt.step(grads)
        with pytest.raises(MemoryError):
            ewa.update([1.0, 2.0])
        monkeypatch.undo()
        assert not opt.state and ewa.t == 0 and ewa.value is None
        monkeypatch.setattr(np, "empty_like", failing)
        with pytest.raises(MemoryError):
            ewa.update([1.0, 2.0])
        monkeypatch.undo()
        assert ewa.t == 0 and ewa.value is None
        for _ in range(2):
            opt.step(grads)
            ref.step(grads)
            ewa.update([1.0, 2.0])
            ewa_twin.update([1.0, 2.0])
    assert [a.tobytes() for a in p] == [a.tobytes() for a in twin]
    assert ewa.t == 2 and ewa.value.tobytes() == ewa_twin.value.tobytes()


# (the NumPy reference steps strided arrays as they are)
@pytest.mark.parametrize("backend", [b for b in GRID_BACKENDS if b != "numpy"])
@pytest.mark.parametrize("error", [MemoryError, KeyboardInterrupt])
def test_an_error_copying_a_strided_parameter_changes_nothing(backend, error, monkeypatch):
    """A step over parameters some of which are stepped as contiguous copies made their
    copies after the others were stepped: a MemoryError copying one left those stepped, and
    not counted (the review's and the fault-injection probe's case), and Ctrl-C there left
    them stepped and counted, the one copied not stepped. The copies are made first now, and
    what is raised while they are made (Ctrl-C included) is no step taken."""
    from fastopt import _layout
    rng = np.random.default_rng(5)
    big = rng.standard_normal((8, 6))
    params = [rng.standard_normal((4, 3)), big[::2, ::2], rng.standard_normal(5)]
    twin = [p.copy() for p in params]
    grads = [rng.standard_normal(p.shape) for p in params]
    native = _layout._native

    def failing(a, order="C"):
        if a is not None and not a.flags.c_contiguous:
            native(a, order)
            raise error("injected")
        return native(a, order)
    with fo.use_backend(backend):
        opt, ref = fo.Adam(params, lr=0.1), fo.Adam(twin, lr=0.1)
        opt.step(grads)
        ref.step(grads)
        before = [p.copy() for p in params], _state_dict_bytes(opt)
        monkeypatch.setattr(_layout, "_native", failing)
        with pytest.raises(error):
            opt.step(grads)
        monkeypatch.undo()
        assert all(same_bits(p, b) for p, b in zip(params, before[0]))
        assert _state_dict_bytes(opt) == before[1]
        opt.step(grads)
        ref.step(grads)
    assert all(same_bits(p, t) for p, t in zip(params, twin))


def _lazy_state_cases():
    """(name, make optimizer, switch options on between the warm-up and the failing step, the
    warm-up's grads mask): each step makes state arrays for a kernel call after another."""
    return [
        ("sgd momentum, two groups", lambda g: fo.SGD(g, lr=0.1, momentum=0.9), None, None),
        ("sgd momentum, two phases", lambda g: fo.SGD(g, lr=0.1, momentum=0.9), None,
         [True, False, True]),
        ("adam, two groups", lambda g: fo.Adam(g, lr=0.1), None, None),
        ("adam amsgrad switched on", lambda g: fo.Adam(g, lr=0.1),
         dict(amsgrad=True), [True, True, True]),
        ("rmsprop momentum and centered switched on", lambda g: fo.RMSprop(g, lr=0.1),
         dict(momentum=0.5, centered=True), [True, True, True]),
    ]


# (on an arena too, but for a warm-up step some parameters sit out: the arena's grads step all)
@pytest.mark.parametrize("case, on_arena", [
    (case, on_arena) for case in _lazy_state_cases() for on_arena in (False, True)
    if not (on_arena and case[3] is not None and not all(case[3]))],
    ids=lambda c: c[0] if isinstance(c, tuple) else ("arena" if c else "arrays"))
def test_a_memory_error_making_a_later_groups_state_changes_nothing(case, on_arena,
                                                                    monkeypatch):
    """State is made on first use, and the state an option switched on later needs when the
    step uses it: each group's (and each phase's) was made just before its own kernel call,
    so a MemoryError making a later group's left the groups before it stepped (the
    fault-injection probe's case). Every state array of a step is made before its first
    kernel call now: a state allocation failing at any point of the step changes nothing.
    (The contiguous copy of a parameter of another layout is still made by its group's own
    kernel call.)"""
    _, make, switch_on, warm_up = case
    rng = np.random.default_rng(3)
    shapes = [(4,), (2, 3), (5,)]

    def build():
        if on_arena:
            arena = fo.ParameterArena(np.float64, capacity=64)
            p = [arena.add(f"W{i}", shape) for i, shape in enumerate(shapes)]
        else:
            arena, p = None, [np.empty(shape) for shape in shapes]
        for a in p:
            a[...] = rng.standard_normal(a.shape)
        return arena, p, make([{"params": p[:2]}, {"params": p[2:]}])
    arena, params, opt = build()
    arena_twin, twin, ref = build()
    for a, b in zip(params, twin):
        b[...] = a
    grads = [rng.standard_normal(p.shape) for p in params]
    if on_arena:
        for arena_of in (arena, arena_twin):
            for g, value in zip(arena_of.grads.values(), grads):
                g[...] = value
        grads, ref_grads = arena.grads, arena_twin.grads
    else:
        ref_grads = grads
    if warm_up is not None:
        opt.step(grads if on_arena else [g if keep else None for g, keep in zip(grads, warm_up)])
        ref.step(ref_grads if on_arena
                 else [g if keep else None for g, keep in zip(grads, warm_up)])
    for o in (opt, ref):
        for group in o.param_groups:
            group.update(switch_on or {})
    like_lines = fo.optim.like_lines
    failures = 0
    for fail_at in range(1, 50):
        made = []

        def failing(*args, **kwargs):
            made.append(None)
            if len(made) == fail_at:
                raise MemoryError("injected")
            return like_lines(*args, **kwargs)
        before = [p.copy() for p in params], _state_dict_bytes(opt)
        monkeypatch.setattr(fo.optim, "like_lines", failing)
        try:
            opt.step(grads)
        except MemoryError:
            failures += 1
            assert all(same_bits(p, b) for p, b in zip(params, before[0])), fail_at
            assert _state_dict_bytes(opt) == before[1], fail_at
            continue
        finally:
            monkeypatch.undo()
        break
    assert failures >= 1
    ref.step(ref_grads)
    for _ in range(2):
        opt.step(grads)
        ref.step(ref_grads)
    assert all(same_bits(p, t) for p, t in zip(params, twin))
    assert _state_dict_bytes(opt) == _state_dict_bytes(ref)
