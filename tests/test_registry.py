"""Every backend against the kernel registry (fastopt/_registry.py): each has every kernel and
16-bit form and their list forms with the registry's signature (arrays, then keyword-only named
scalars and options), and every combination of a kernel's options and optional state gives the
reference's bits, single and multi-tensor, over dtypes and layouts. A kernel added to the
registry is covered here without editing this file; a backend that lacks it fails here.

Cost: ~70 variants x 2 dtypes per backend, each three 35-element steps in three layouts and
three list steps (a few seconds)."""
import inspect
import types

import numpy as np
import pytest

import fastopt as fo
from conftest import GRID_BACKENDS, relayout
from fastopt import _backend, _bench, _registry
from kernel_specs import same_bits, valid_arrays

KERNELS = {k.name: k for k in _registry.KERNELS}
# with the 16-bit forms, whose behaviour tests/test_half_kernels.py checks
EVERY = {k.name: k for k in _registry.KERNELS + _registry.HALF_KERNELS}
VARIANTS = [(k.name, options, used) for k in _registry.KERNELS for options, used in k.variants()]
VARIANT_IDS = [f"{name}-{'+'.join([o for o, on in opts.items() if on] + list(used)) or 'plain'}"
               for name, opts, used in VARIANTS]


def namespace(backend):
    """The kernels fastopt.ops calls on ``backend``."""
    with fo.use_backend(backend):
        return _backend.active


@pytest.mark.parametrize("form", ["single", "multi"])
@pytest.mark.parametrize("kernel", EVERY)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_every_backend_has_every_kernel_with_the_registry_signature(backend, kernel, form):
    k = EVERY[kernel]
    fn = getattr(namespace(backend), k.name if form == "single" else k.multi)
    params = list(inspect.signature(fn).parameters.values())
    names = k.arrays if form == "single" else k.lists
    P = inspect.Parameter
    assert [(p.name, p.kind) for p in params] == (
        [(n, P.POSITIONAL_OR_KEYWORD) for n in names] + [(n, P.KEYWORD_ONLY) for n in k.keywords])
    assert all(p.default is P.empty for p in params)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_scalars_are_keyword_only(backend, kernel):
    k = KERNELS[kernel]
    arrays = valid_arrays(k, (3,), np.float64, np.random.default_rng(0))
    before = [a.copy() for a in arrays]
    values = [k.examples[n] for n in k.scalars] + [False] * len(k.options)
    with pytest.raises(TypeError):
        getattr(namespace(backend), k.name)(*arrays, *values)
    with pytest.raises(TypeError):        # a misspelt or missing name is refused too
        getattr(namespace(backend), k.multi)(*[[a] for a in arrays], **dict(
            zip(k.keywords[1:], values[1:]), typo=values[0]))
    assert all(same_bits(a, b) for a, b in zip(arrays, before))



@pytest.mark.parametrize("kernel", EVERY)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_list_forms_check_their_scalars_and_options_without_tensors(backend, kernel):
    """Empty lists: the NumPy reference's list forms and the numba backend's 16-bit ones took
    any scalar and option (each tensor's call checks them, and there was none), where the
    Cython backend refuses them, naming them."""
    k = EVERY[kernel]
    good = {n: k.examples.get(n, 1.0) for n in k.scalars}
    good.update({n: False for n in k.options})
    multi = getattr(namespace(backend), k.multi)
    multi(*[[] for _ in k.lists], **good)
    for name in k.keywords:
        for bad in ("2", None):
            with pytest.raises(TypeError, match=rf"^Invalid {name}: "):
                multi(*[[] for _ in k.lists], **dict(good, **{name: bad}))


@pytest.mark.skipif("numba" not in GRID_BACKENDS, reason="runs with the numba backend")
@pytest.mark.parametrize("kernel", KERNELS)
def test_numba_loops_receive_the_scalars_by_the_registry_names(kernel):
    # the loops read s.<name> of a namedtuple of the registry's names; pack, which fills it,
    # takes them keyword-only and gives floats and bools whatever real numbers and True/False
    # the caller passed (ints and np.bool_ here), so the loops compile once per dtype; an
    # option that is not True or False (an int, as fastopt._hyper.check_flag) is refused
    from fastopt._numba import _common, optim
    k = KERNELS[kernel]
    Scalars, pack = _common.scalars(kernel)
    assert Scalars._fields == k.keywords == getattr(optim, "_" + kernel.upper())._fields
    values = {n: i + 2 for i, n in enumerate(k.scalars)} | {n: np.True_ for n in k.options}
    packed = pack(**values)
    assert [type(x) for x in packed] == [float] * len(k.scalars) + [bool] * len(k.options)
    assert Scalars(*packed)._asdict() == {n: values[n] for n in k.keywords}
    with pytest.raises(TypeError):
        pack(*values.values())
    for n in k.options:
        with pytest.raises(TypeError, match=f"Invalid {n}: 1 "):
            pack(**dict(values, **{n: 1}))

def test_the_16bit_forms_are_their_kernels_halved():
    """fastopt.torch's kernels, each with its 16-bit form: the master copy after the grad,
    the format option, a grad scale (the kernel's own if it has one)."""
    assert {k.base for k in _registry.HALF_KERNELS} == {
        "sgd", "rmsprop", "adagrad", "adam", "adadelta", "adamax", "nadam", "radam"}
    for h in _registry.HALF_KERNELS:
        k = KERNELS[h.base]
        assert h.name == k.name + "_half" and h.ops is None
        assert h.arrays == k.arrays[:2] + ("master",) + k.arrays[2:]
        assert h.lists == k.lists[:2] + ("masters",) + k.lists[2:]
        assert h.nrequired == k.nrequired + 1 and h.options == k.options + ("bfloat16",)
        assert h.scalars == k.scalars + (() if "grad_scale" in k.scalars else ("grad_scale",))
    assert _registry.get("adam_half").scalars == _registry.get("adam").scalars


def test_a_backend_that_lacks_a_kernel_is_refused_naming_it():
    reference = fo.reference
    partial = types.ModuleType("partial")
    for k in _registry.KERNELS[1:]:
        setattr(partial, k.name, getattr(reference.optim, k.name))
    package = types.SimpleNamespace(KERNEL_MODULES=(partial, reference.layers),
                                    set_num_threads=reference.set_num_threads,
                                    get_num_threads=reference.get_num_threads,
                                    __name__="partial")
    with pytest.raises(ImportError, match=_registry.KERNELS[0].name):
        _backend.Namespace("partial", package)


@pytest.mark.parametrize("kernel", KERNELS)
def test_ops_has_both_forms_of_every_kernel_with_its_array_names(kernel):
    k = KERNELS[kernel]
    single = inspect.signature(getattr(fo.ops, k.ops)).parameters
    multi = inspect.signature(getattr(fo.ops, k.foreach_ops)).parameters
    assert set(k.arrays) <= set(single) and set(k.lists) <= set(multi)


def _state(k, used, dtype, rng, shape):
    arrays = valid_arrays(k, shape, dtype, rng)
    return [a if i < k.nrequired or k.arrays[i] in used else None
            for i, a in enumerate(arrays)]


def _steps(fn, arrays, scalars, steps, rng):
    """``steps`` calls of ``fn`` on ``arrays`` (updated in place), a fresh grad each time."""
    for _ in range(steps):
        arrays[1][...] = rng.standard_normal(arrays[1].shape)
        fn(*arrays, **scalars)


@pytest.mark.parametrize("kernel,options,used", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_every_option_and_optional_state_matches_the_reference(backend, kernel, options, used,
                                                               dtype):
    k = KERNELS[kernel]
    scalars = dict(k.examples, **options)
    ref, ours = namespace("numpy"), namespace(backend)
    start = _state(k, used, dtype, np.random.default_rng(1), (5, 7))
    expected = [None if a is None else a.copy() for a in start]
    _steps(getattr(ref, k.name), expected, scalars, 3, np.random.default_rng(2))
    for layout in ("C", "T", "strided"):
        arrays = [None if a is None else relayout(a, layout) for a in start]
        _steps(getattr(ours, k.name), arrays, scalars, 3, np.random.default_rng(2))
        for name, a, e in zip(k.arrays, arrays, expected):
            if name != "grad" and a is not None:
                assert same_bits(a, e), f"{name} of {kernel} ({layout})"
    # the list form over two tensors of different shapes and layouts: one call per step
    other = _state(k, used, dtype, np.random.default_rng(3), (11,))
    expected_other = [None if a is None else a.copy() for a in other]
    _steps(getattr(ref, k.name), expected_other, scalars, 3, np.random.default_rng(4))
    tensors = [[None if a is None else relayout(a, "T") for a in start],
               [None if a is None else a.copy() for a in other]]
    lists = [None if t0 is None else [t0, t1] for t0, t1 in zip(*tensors)]
    rngs = [np.random.default_rng(2), np.random.default_rng(4)]
    for _ in range(3):
        for t, rng in zip(tensors, rngs):
            t[1][...] = rng.standard_normal(t[1].shape)
        getattr(ours, k.multi)(*lists, **scalars)
    for t, e in zip(tensors, (expected, expected_other)):
        for name, a, b in zip(k.arrays, t, e):
            if name != "grad" and a is not None:
                assert same_bits(a, b), f"{name} of {kernel}_multi"


def test_every_kernel_is_benchmarked_with_its_state():
    cases = list(_bench.CASES.values())
    assert {c.registry_kernel.name for c in cases} == set(KERNELS)
    for c in cases:
        k = c.registry_kernel
        assert set(k.arrays[2:k.nrequired]) <= set(c.state) <= set(k.arrays[2:]), c.name
