"""fastopt.course against the course notebook's formulas, written out here in plain NumPy."""
import math
import re
import warnings

import numpy as np
import pytest

import fastopt as fo
from fastopt import course
from conftest import GRID_BACKENDS


def params_and_grads(dtype, seed=1):
    rng = np.random.default_rng(seed)
    shapes = {"W1": (3, 2), "b1": (3, 1), "W2": (1, 3), "b2": (1, 1)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    grads = {"d" + k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    return params, grads


def close(a, b, dtype):
    np.testing.assert_allclose(a, b, rtol=1e-12 if dtype == np.float64 else 1e-6, atol=0)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_gradient_descent(backend, dtype):
    params, grads = params_and_grads(dtype)
    expected = {k: v - 0.01 * grads["d" + k] for k, v in params.items()}
    with fo.use_backend(backend):
        out = course.update_parameters_with_gd(params, grads, 0.01)
    assert out is params
    for k in params:
        close(params[k], expected[k], dtype)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_momentum_two_steps(backend, dtype):
    params, grads = params_and_grads(dtype)
    v = course.initialize_velocity(params)
    assert sorted(v) == ["dW1", "dW2", "db1", "db2"]
    assert all(not v["d" + k].any() and v["d" + k].shape == params[k].shape for k in params)
    exp_p = {k: p.copy() for k, p in params.items()}
    exp_v = {k: np.zeros_like(p) for k, p in params.items()}
    with fo.use_backend(backend):
        for _ in range(2):
            params, v = course.update_parameters_with_momentum(params, grads, v, beta=0.9,
                                                               learning_rate=0.01)
            for k in exp_p:
                exp_v[k] = 0.9 * exp_v[k] + (1 - 0.9) * grads["d" + k]
                exp_p[k] = exp_p[k] - 0.01 * exp_v[k]
    for k in params:
        close(params[k], exp_p[k], dtype)
        close(v["d" + k], exp_v[k], dtype)


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_adam_three_steps(backend, dtype):
    params, grads = params_and_grads(dtype)
    v, s = course.initialize_adam(params)
    exp_p = {k: p.astype(np.float64) for k, p in params.items()}
    exp_v = {k: np.zeros(p.shape) for k, p in params.items()}
    exp_s = {k: np.zeros(p.shape) for k, p in params.items()}
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    scale = {}                  # per param: the largest |param| + |update| of its steps
    with fo.use_backend(backend):
        for t in range(1, 4):
            params, v, s, v_corr, s_corr = course.update_parameters_with_adam(
                params, grads, v, s, t, lr, b1, b2, eps)
            for k in exp_p:
                g = grads["d" + k].astype(np.float64)
                exp_v[k] = b1 * exp_v[k] + (1 - b1) * g
                exp_s[k] = b2 * exp_s[k] + (1 - b2) * np.power(g, 2)
                exp_vc = exp_v[k] / (1 - np.power(b1, t))
                exp_sc = exp_s[k] / (1 - np.power(b2, t))
                update = lr * exp_vc / (np.sqrt(exp_sc) + eps)
                scale[k] = np.maximum(scale.get(k, 0), np.abs(exp_p[k]) + np.abs(update))
                exp_p[k] = exp_p[k] - update
                close(v_corr["d" + k], exp_vc, dtype)     # the notebook's corrected moments
                close(s_corr["d" + k], exp_sc, dtype)
    for k in params:
        # a subtraction's error is relative to its operands, not to what is left: a float32
        # param of ~0.03 that three steps of ~0.01 bring to -0.0016 keeps ~1e-6 of it
        rtol = 1e-12 if dtype == np.float64 else 1e-6
        error = np.abs(params[k] - exp_p[k])
        assert (error <= rtol * np.maximum(np.abs(exp_p[k]), scale[k])).all(), (k, error)
        close(v["d" + k], exp_v[k], dtype)
        close(s["d" + k], exp_s[k], dtype)


@pytest.mark.parametrize("m,size,sizes", [(148, 64, [64, 64, 20]), (128, 64, [64, 64]),
                                          (10, 3, [3, 3, 3, 1])])
def test_random_mini_batches_reproduce_the_course_shuffle(m, size, sizes):
    X = np.arange(3 * m, dtype=float).reshape(3, m)
    Y = (np.arange(m) % 2).reshape(1, m)
    batches = course.random_mini_batches(X, Y, size, seed=7)
    np.random.seed(7)
    perm = list(np.random.permutation(m))
    assert [b[0].shape[1] for b in batches] == sizes
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches], axis=1), X[:, perm])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches], axis=1), Y[:, perm])


def test_random_mini_batches_refuses_bad_sizes_and_mismatched_inputs_before_seeding():
    """mini_batch_size 0 was a ZeroDivisionError, -1 gave no batches, -3 one empty batch,
    4.0 a slicing TypeError, True batches of one; a Y with more columns than X lost the
    extra labels silently, one with fewer was an IndexError; and each of these calls had
    already reseeded NumPy's global generator."""
    X, Y = np.arange(20.0).reshape(2, 10), np.arange(10.0).reshape(1, 10)
    bad = [((X, Y, 0), ValueError, "Invalid mini_batch_size: 0"),
           ((X, Y, -3), ValueError, "Invalid mini_batch_size: -3"),
           ((X, Y, 4.0), TypeError, "mini_batch_size must be an int, got float"),
           ((X, Y, True), TypeError, "mini_batch_size must be an int, got bool"),
           ((X, np.zeros((1, 12)), 4), ValueError, "X has 10 examples .* but Y has 12"),
           ((X, np.zeros((1, 8)), 4), ValueError, "X has 10 examples .* but Y has 8"),
           ((X, np.arange(10.0), 4), ValueError, r"Y must be 2-D .* got shape \(10,\)"),
           ((X[0], Y, 4), ValueError, r"X must be 2-D .* got shape \(10,\)")]
    for args, error, match in bad:
        np.random.seed(123)
        with pytest.raises(error, match=match):
            course.random_mini_batches(*args, seed=7)
        assert np.random.randint(1 << 30) == np.random.RandomState(123).randint(1 << 30)
    sizes = [b[0].shape[1] for b in course.random_mini_batches(X, Y, np.int64(4))]
    assert sizes == [4, 4, 2]



def test_random_mini_batches_ragged_or_masked_inputs_are_refused_naming_them():
    """A ragged X or Y raised NumPy's 'inhomogeneous shape' ValueError naming neither; a masked
    one lost its mask (np.asarray), its masked values shuffled into the batches as data, where
    fo.minibatches and EWA refuse masked arrays. Refused before seeding, naming the argument."""
    X, Y = np.arange(20.0).reshape(2, 10), np.arange(10.0).reshape(1, 10)
    masked = np.ma.masked_array(X, mask=X == 2.0)
    for args, error, match in [(([[1.0, 2.0], [3.0]], Y), ValueError, "^X must be a rectangular"),
                               ((X, [[0.0] * 10, [1.0]]), ValueError, "^Y must be a rectangular"),
                               ((masked, Y), TypeError, "^X must not be a masked array"),
                               ((X, np.ma.masked_array(Y)), TypeError,
                                "^Y must not be a masked array")]:
        np.random.seed(123)
        with pytest.raises(error, match=match):
            course.random_mini_batches(*args, 4, seed=7)
        assert np.random.randint(1 << 30) == np.random.RandomState(123).randint(1 << 30)


def test_random_mini_batches_bad_seed_errors_name_the_seed():
    """NumPy's own messages ("Seed must be between 0 and 2**32 - 1", "Cannot cast scalar
    from dtype('float64') to dtype('int64') according to the rule 'safe'") did not say which
    argument was wrong; the global generator is left as it was."""
    X, Y = np.arange(20.0).reshape(2, 10), np.arange(10.0).reshape(1, 10)
    for bad, error in ((-1, ValueError), (2 ** 32, ValueError), (1.5, TypeError),
                       ("a", TypeError), (np.random.default_rng(0), TypeError)):
        np.random.seed(123)
        with pytest.raises(error, match=rf"^Invalid seed: {re.escape(repr(bad))} "):
            course.random_mini_batches(X, Y, 4, seed=bad)
        assert np.random.randint(1 << 30) == np.random.RandomState(123).randint(1 << 30)


def test_a_bad_seed_whose_error_takes_no_message_is_still_named():
    """The seed's own error class (here one whose constructor takes two arguments) cannot be
    remade with a message: re-raising it as such raised TypeError from its constructor."""
    class Picky(ValueError):
        def __init__(self, code, detail):
            super().__init__(f"{code}: {detail}")

    class Seed:
        def __index__(self):
            raise Picky(7, "not today")

    X, Y = np.arange(20.0).reshape(2, 10), np.arange(10.0).reshape(1, 10)
    with pytest.raises(ValueError, match=r"^Invalid seed: .*\(7: not today\)$"):
        course.random_mini_batches(X, Y, 4, seed=Seed())


def test_learning_rate_decay_matches_the_course():
    assert course.update_lr(0.5, 2, 1) == pytest.approx(0.5 / 3)
    assert course.schedule_lr_decay(0.5, 100, 0.3, time_interval=100) == pytest.approx(0.5 / 1.3)
    assert course.schedule_lr_decay(0.5, 99, 0.3, time_interval=100) == 0.5
    assert course.schedule_lr_decay(0.5, 2500, 1) == pytest.approx(0.5 / (1 + math.floor(2.5)))



def test_learning_rate_decay_refuses_bad_arguments_by_name_and_returns_a_float():
    """update_lr and schedule_lr_decay took anything: None failed with Python's operator
    error, time_interval=0 was a ZeroDivisionError (with a np.int64 epoch a divide-by-zero
    warning and an lr of 0 or NaN), a negative decay_rate divided by zero at 1 + decay_rate *
    epoch_num = 0; a np.float32 learning_rate0 was decayed in float32 (update_lr) and
    schedule_lr_decay returned a np.float64. Each argument is now a real number >= 0
    (time_interval >= 1), named when it is not, and the rate a Python float."""
    cases = [(course.update_lr, (0.5, 2, 1), ("learning_rate0", "epoch_num", "decay_rate")),
             (course.schedule_lr_decay, (0.5, 2000, 1, 1000),
              ("learning_rate0", "epoch_num", "decay_rate", "time_interval"))]
    for fn, args, names in cases:
        for i, name in enumerate(names):
            for bad, error in ((None, TypeError), ("1", TypeError), (-1, ValueError),
                               (float("nan"), ValueError)):
                with pytest.raises(error, match=rf"^Invalid {name}: "):
                    fn(*args[:i], bad, *args[i + 1:])
    for bad in (0, np.int64(0), 0.5):
        with pytest.raises(ValueError, match=r"^Invalid time_interval: "):
            course.schedule_lr_decay(0.5, np.int64(5), 1, bad)
    lr0 = np.float32(0.1)
    rate = course.update_lr(lr0, np.int64(2), 0.37)
    assert type(rate) is float and rate == 1 / (1 + 0.37 * 2) * float(lr0)
    rate = course.schedule_lr_decay(lr0, np.int64(2500), 0.37)
    assert type(rate) is float and rate == 1 / (1 + 0.37 * 2) * float(lr0)



def test_learning_rate_decay_gives_a_float_for_any_epoch_and_refuses_infinite_rates():
    """An epoch_num past the float range raised OverflowError ('int too large to convert to
    float'); an infinite learning_rate0 or decay_rate gave NaN (0 * inf at epoch 0). Such an
    epoch gives the limit, 0.0; the infinite arguments are refused by name."""
    want = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert course.update_lr(1e300, 10**400, 1e-300) == want
        assert course.schedule_lr_decay(1e300, 10**403 + 999, 1e-300, 1000) == want
        assert course.update_lr(0.1, math.inf, 0.0) == 0.1
    for i, name in ((0, "learning_rate0"), (2, "decay_rate")):
        for fn, args in ((course.update_lr, [0.5, 2, 1]),
                         (course.schedule_lr_decay, [0.5, 2, 1, 1000])):
            args[i] = math.inf
            with pytest.raises(ValueError, match=rf"^Invalid {name}: inf"):
                fn(*args)


def test_schedule_lr_decay_refuses_an_infinite_time_interval_by_name():
    """time_interval=inf was taken (staircase, the same formula, refuses every=inf): an
    infinite epoch_num with it made NaN intervals, refused as "Invalid epoch: nan", naming
    an argument the caller never passed. Expected: time_interval finite, named when not."""
    for epoch in (math.inf, 5, 10**400):
        with pytest.raises(ValueError, match=r"^Invalid time_interval: inf \(must be in \[1, inf\)"):
            course.schedule_lr_decay(0.5, epoch, 1, math.inf)

def _bad_layer_cases():
    """(update function, what to spoil, exception, message): every kind of bad array, each in
    the last layer, so that an update applied layer by layer would have written the others."""
    cases = []
    for fn in ("gd", "momentum", "adam"):
        cases += [
            (fn, ("grads", "db2", np.ones((2, 1))), ValueError,
             r"grads\['db2'\] has shape \(2, 1\), expected \(1, 1\) like parameters\['b2'\]"),
            (fn, ("grads", "dW2", np.ones((1, 3), np.float32)), TypeError,
             r"grads\['dW2'\] has dtype float32, expected float64 like parameters\['W2'\]"),
            (fn, ("grads", "db2", [[1.0]]), TypeError, r"grads\['db2'\] must be a numpy.ndarray"),
            (fn, ("grads", "db2", None), TypeError, r"grads\['db2'\] must be a numpy.ndarray"),
            (fn, ("grads", "db2", KeyError), KeyError, r"grads has no 'db2'"),
            (fn, ("parameters", "b2", np.zeros((1, 1), int)), TypeError,
             r"parameters\['b2'\] must have dtype float32 or float64"),
            (fn, ("parameters", "b2", "read-only"), ValueError,
             r"parameters\['b2'\] is read-only"),
            (fn, ("parameters", "b2", KeyError), KeyError, r"parameters has no 'b2'"),
        ]
    for fn in ("momentum", "adam"):
        cases += [
            (fn, ("v", "db2", np.zeros((1, 2))), ValueError,
             r"v\['db2'\] has shape \(1, 2\), expected \(1, 1\) like parameters\['b2'\]"),
            (fn, ("v", "db2", "read-only"), ValueError, r"v\['db2'\] is read-only"),
            (fn, ("v", "db2", KeyError), KeyError, r"v has no 'db2'"),
            (fn, ("v", "db2", "is the param"), ValueError,
             r"parameters\['b2'\] and v\['db2'\] overlap"),
        ]
    cases += [("adam", ("s", "dW2", np.zeros((1, 3), np.float32)), TypeError,
               r"s\['dW2'\] has dtype"),
              ("adam", ("s", "db2", KeyError), KeyError, r"s has no 'db2'"),
              ("adam", ("s", "db2", "is v"), ValueError, r"v\['db2'\] and s\['db2'\] overlap")]
    return cases


def _case_id(case):
    fn, (where, key, bad), _, _ = case
    what = (bad.__name__ if bad is KeyError else bad if isinstance(bad, str)
            else type(bad).__name__ if not isinstance(bad, np.ndarray)
            else f"{bad.dtype}{bad.shape}")
    return f"{fn}-{where}[{key}]-{what}"


@pytest.mark.parametrize("fn,spoil,exc,match", _bad_layer_cases(),
                         ids=[_case_id(c) for c in _bad_layer_cases()])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_bad_layer_is_refused_before_any_layer_is_updated(backend, fn, spoil, exc, match):
    """The course's updates check every layer's arrays (presence, type, dtype, shape,
    writeability, overlap) before updating any, and name the offending key."""
    params, grads = params_and_grads(np.float64)
    v, s = course.initialize_adam(params)
    for st in (v, s):
        for a in st.values():
            a += 0.5
    dicts = {"parameters": params, "grads": grads, "v": v, "s": s}
    where, key, bad = spoil
    if bad is KeyError:
        del dicts[where][key]
    elif isinstance(bad, str) and bad == "read-only":
        dicts[where][key].flags.writeable = False
    elif isinstance(bad, str) and bad == "is the param":
        dicts[where][key] = params[key[1:]]
    elif isinstance(bad, str) and bad == "is v":
        dicts[where][key] = v[key]
    else:
        dicts[where][key] = bad
    before = {name: {k: np.array(a, copy=True) for k, a in d.items() if isinstance(a, np.ndarray)}
              for name, d in dicts.items()}
    with fo.use_backend(backend), pytest.raises(exc, match=match):
        if fn == "gd":
            course.update_parameters_with_gd(params, grads, 0.01)
        elif fn == "momentum":
            course.update_parameters_with_momentum(params, grads, v, beta=0.9, learning_rate=0.01)
        else:
            course.update_parameters_with_adam(params, grads, v, s, t=2)
    for name, d in dicts.items():
        for k, a in before[name].items():
            assert d[k].tobytes() == a.tobytes(), f"{name}[{k!r}] was changed"



@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_arrays_of_two_layers_that_overlap_are_named_by_their_keys(backend):
    """Overlap across layers (a grad that is another layer's parameter, one array as two
    layers' parameters or velocities) was refused with the kernel's list labels, "params[0]
    and grads[2] overlap", which the course's dicts do not have; it is named by the keys."""
    cases = [("grads", "dW2", ("parameters", "W1"), r"parameters\['W1'\] and grads\['dW2'\]"),
             ("parameters", "W2", ("parameters", "W1"),
              r"parameters\['W1'\] and parameters\['W2'\]"),
             ("v", "dW2", ("v", "dW1"), r"v\['dW1'\] and v\['dW2'\]"),
             ("s", "db2", ("v", "db1"), r"v\['db1'\] and s\['db2'\]")]
    for where, key, (other, other_key), match in cases:
        shapes = {"W1": (2, 2), "b1": (2, 1), "W2": (2, 2), "b2": (2, 1)}
        params = {k: np.full(sh, 1.0 + i) for i, (k, sh) in enumerate(shapes.items())}
        grads = {"d" + k: np.full(sh, 0.5) for k, sh in shapes.items()}
        v, s = course.initialize_adam(params)
        dicts = {"parameters": params, "grads": grads, "v": v, "s": s}
        dicts[where][key] = dicts[other][other_key]
        before = {name: {k: a.copy() for k, a in d.items()} for name, d in dicts.items()}
        with fo.use_backend(backend), pytest.raises(ValueError, match=match + " overlap"):
            course.update_parameters_with_adam(params, grads, v, s, 1)
        for name, d in dicts.items():
            for k, a in before[name].items():
                assert d[k].tobytes() == a.tobytes(), f"{name}[{k!r}] was changed"


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_course_updates_take_an_arenas_grads_and_name_a_bad_t(backend):
    """Grads keyed 'd' + name as a ParameterArena's grad dict holds them (it finds 'dW1' under
    'W1'), and Adam's step count t named when it is out of range, with nothing written."""
    arena = fo.ParameterArena(np.float64, 64)
    params = {k: arena.add(k, s) for k, s in (("W1", (3, 2)), ("b1", (3, 1)))}
    arena.flat_grads[...] = 1.0
    with fo.use_backend(backend):
        course.update_parameters_with_gd(params, arena.grads, 0.5)
        np.testing.assert_array_equal(arena.flat_params, -0.5)
        v, s = course.initialize_adam(params)
        for t, exc in ((0, ValueError), (-1, ValueError), ("1", TypeError), (None, TypeError),
                       (np.array(0), ValueError), (True, TypeError), (np.array([1]), TypeError)):
            with pytest.raises(exc, match=r"\bt\b"):
                course.update_parameters_with_adam(params, arena.grads, v, s, t)
            assert not v["dW1"].any() and not s["db1"].any()
            np.testing.assert_array_equal(arena.flat_params, -0.5)
    # a 0-d array or a NumPy integer is a step count as the int it holds is
    runs = []
    for t in (2, np.array(2), np.int64(2)):
        p = {"W1": np.ones((3, 2)), "b1": np.ones((3, 1))}
        v, s = course.initialize_adam(p)
        with fo.use_backend(backend):
            course.update_parameters_with_adam(p, {"dW1": p["W1"] * 0.5, "db1": p["b1"]}, v, s,
                                               t)
        runs.append(p["W1"].tobytes() + s["dW1"].tobytes())
    assert runs[1] == runs[0] and runs[2] == runs[0]



def test_initialize_velocity_and_adam_refuse_what_the_updates_refuse():
    """initialize_velocity([W]) returned {} and {W1, b1, W2} zeros for layer 1 only (the
    updates then refused the dicts), None was "object of type 'NoneType' has no len()", and
    {W1, W2} a bare KeyError 'b1': the same errors as the updates' now, naming parameters."""
    one = np.ones((2, 2))
    for init in (course.initialize_velocity, course.initialize_adam):
        for bad in ([one, one], None, (one, one)):
            with pytest.raises(TypeError, match=r"^parameters must be a dict of arrays, got "):
                init(bad)
        for bad, missing in (({"W1": one, "b1": one, "W2": one}, "b2"),
                             ({"W1": one, "W2": one}, "b2"), ({"W1": one, "c": one}, "b1")):
            with pytest.raises(KeyError, match=rf"^\"parameters has no '{missing}'"):
                init(bad)
            params, grads = {k: a.copy() for k, a in bad.items()}, {"d" + k: one for k in bad}
            with pytest.raises(KeyError, match=rf"^\"parameters has no '{missing}'"):
                course.update_parameters_with_gd(params, grads, 0.1)


def test_initialize_velocity_and_adam_refuse_parameters_no_update_takes():
    """A None parameter had given a 0-d object array of zeros, an int one int zeros, and the
    error came only at the first update: refused here, naming the parameter, as the
    updates refuse them."""
    one = np.ones((2, 2), np.float32)
    for init in (course.initialize_velocity, course.initialize_adam):
        for bad, message in ((None, "must be a numpy.ndarray, got NoneType"),
                             (3, "must be a numpy.ndarray, got int"),
                             (np.ones((2, 2), int), "must have dtype float32 or float64"),
                             ([[1.0]], "must be a numpy.ndarray, got list")):
            with pytest.raises(TypeError, match=r"^parameters\['b1'\] " + re.escape(message)):
                init({"W1": one, "b1": bad})
        v = init({"W1": one, "b1": one[:1]})
        for d in (v if init is course.initialize_adam else (v,)):
            assert d["dW1"].dtype == np.float32 and d["db1"].shape == (1, 2)
            assert not d["dW1"].any()


class _Keyed:
    """Not a Mapping, though ``obj[key]`` works."""

    def __init__(self, d):
        self._d = d

    def __getitem__(self, key):
        return self._d[key]


def test_updates_take_any_mapping_and_refuse_other_keyed_objects_by_name():
    """The updates read the dicts' arrays in one pass (fastopt.course._update): any Mapping
    (a read-only MappingProxyType, an OrderedDict) is taken as a dict, with the dict's
    results; an object that is not one, even one that ``[key]`` works on, is refused naming
    the argument, and nothing is updated."""
    import collections
    import types
    rng = np.random.default_rng(3)
    params = {"W1": rng.standard_normal((3, 2)), "b1": rng.standard_normal((3, 1))}
    grads = {"dW1": rng.standard_normal((3, 2)), "db1": rng.standard_normal((3, 1))}
    expected = {k: p.copy() for k, p in params.items()}
    v, s = course.initialize_adam(expected)
    course.update_parameters_with_adam(expected, grads, v, s, 1)
    for wrap in (types.MappingProxyType, collections.OrderedDict):
        p = {k: a.copy() for k, a in params.items()}
        v, s = course.initialize_adam(p)
        course.update_parameters_with_adam(wrap(p), wrap(grads), wrap(v), wrap(s), 1)
        for k in p:
            np.testing.assert_array_equal(p[k], expected[k])
    p = {k: a.copy() for k, a in params.items()}
    v, s = course.initialize_adam(p)
    for args, name in (((p, _Keyed(grads), v, s), "grads"), ((p, grads, _Keyed(v), s), "v"),
                       ((p, grads, v, _Keyed(s)), "s")):
        with pytest.raises(TypeError, match=rf"^{name} must be a dict of arrays, got _Keyed"):
            course.update_parameters_with_adam(*args, 1)
    with pytest.raises(TypeError, match=r"^grads must be a dict of arrays, got _Keyed"):
        course.update_parameters_with_gd(p, _Keyed(grads), 0.1)
    for k in p:
        np.testing.assert_array_equal(p[k], params[k])


def test_adam_matches_the_notebooks_public_test():
    """The course notebook's update_parameters_with_adam test case (its test_cases.py inputs,
    public_tests.py's expected first rows, quoted to its printed precision): five values
    returned, the last two the bias-corrected moments."""
    np.random.seed(1)
    shapes = {"W1": (2, 3), "b1": (2, 1), "W2": (3, 2), "b2": (3, 1)}
    v = {"d" + k: np.zeros(sh) for k, sh in shapes.items()}
    s = {"d" + k: np.zeros(sh) for k, sh in shapes.items()}
    params = {k: np.random.randn(*shapes[k]) for k in ("W1", "b1", "W2", "b2")}
    grads = {"d" + k: np.random.randn(*shapes[k]) for k in ("W1", "b1", "W2", "b2")}
    t, lr, b1, b2, eps = 2, 0.02, 0.8, 0.888, 1e-2
    params, v, s, vc, sc = course.update_parameters_with_adam(params, grads, v, s, t, lr, b1,
                                                              b2, eps)
    expected_v = {"dW1": [-0.17557168, 0.00844275, 0.11656304],
                  "dW2": [-0.13674557, -0.02457805], "db1": [0.10049887], "db2": [-0.07935071]}
    expected_s = {"dW1": [0.08631117, 0.00019958, 0.03804344],
                  "dW2": [0.05235818, 0.00169142], "db1": [0.02828006], "db2": [0.0176303]}
    expected_p = {"W1": [1.63937725, -0.62327448, -0.54308727],
                  "W2": [0.33400549, -0.23563857], "b1": [1.72995096], "b2": [1.14852557]}
    c1, c2 = 1 / (1 - b1 ** t), 1 / (1 - b2 ** t)
    for k in expected_v:
        np.testing.assert_allclose(v[k][0], expected_v[k], rtol=0, atol=1e-8)
        np.testing.assert_allclose(s[k][0], expected_s[k], rtol=0, atol=1e-8)
        # (the quoted values' last digit, scaled by the correction)
        np.testing.assert_allclose(vc[k][0], np.multiply(expected_v[k], c1), atol=1e-8 * c1)
        np.testing.assert_allclose(sc[k][0], np.multiply(expected_s[k], c2), atol=1e-8 * c2)
    for k in expected_p:
        np.testing.assert_allclose(params[k][0], expected_p[k], rtol=0, atol=1e-8)



@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_adam_corrected_moments_keep_the_moments_dtype_whatever_the_scalar_types(backend):
    """v_corrected and s_corrected of float32 moments came back float64 when t was a
    np.int64 (a step count out of np.arange) or beta1 a np.float64: NumPy (NEP 50) divides
    a float32 array by a NumPy float64 scalar in float64. The kernels fold those scalars as
    Python floats; so do the corrections now, as the course's formula with Python numbers.
    A np.float32 or np.float16 t (Python's float ** np.float32 is a np.float32) folded them
    in its precision."""
    params, grads = params_and_grads(np.float32)
    v, s = course.initialize_adam(params)
    with fo.use_backend(backend):
        for t in (np.int64(1), np.int32(2), 3, np.float32(4), np.float16(5)):
            *_, vc, sc = course.update_parameters_with_adam(
                params, grads, v, s, t, beta1=np.float64(0.9), beta2=np.float32(0.999))
            for k in v:
                assert vc[k].dtype == sc[k].dtype == np.float32, (t, k)
                np.testing.assert_array_equal(vc[k], v[k] / (1 - 0.9 ** int(t)))
                beta2 = float(np.float32(0.999))
                np.testing.assert_array_equal(sc[k], s[k] / (1 - beta2 ** int(t)))



@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_adam_corrected_moments_cannot_fail_after_the_update(backend):
    """The corrected moments were computed after the update over every key of v and s: an
    entry that is not a layer's (v["note"] = None) raised a TypeError, and float32 moments
    near the largest float32 an overflow warning (an error under -W error), once parameters,
    v and s had been updated. Now they cover the layers only (as the course's loop over l),
    and overflow to inf without a warning, as the kernels' arithmetic does; a subnormal
    moment's correction rounds without a FloatingPointError under np.errstate(all="raise")."""
    params, grads = params_and_grads(np.float32)
    v, s = course.initialize_adam(params)
    v["note"], s["note"] = None, "not a layer"
    v["dW1"][0, 0] = 3e38
    v["dW2"][0, 0], grads["dW2"][0, 0] = 1e-44, 0.0     # 0.9 * 1e-44, then / 0.1: inexact
    with fo.use_backend(backend), warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        *_, vc, sc = course.update_parameters_with_adam(params, grads, v, s, 1)
    assert sorted(vc) == sorted(sc) == ["dW1", "dW2", "db1", "db2"]
    assert vc["dW1"][0, 0] == np.inf
    with np.errstate(under="ignore"):
        assert vc["dW2"][0, 0] == v["dW2"][0, 0] / np.float32(1 - 0.9) > 0
    np.testing.assert_array_equal(vc["db1"], v["db1"] / (1 - 0.9))


@pytest.mark.parametrize("call,exc,name", [
    (lambda p, g, v, s: course.update_parameters_with_gd(p, g, -0.1), ValueError,
     "learning_rate"),
    (lambda p, g, v, s: course.update_parameters_with_gd(p, g, None), TypeError,
     "learning_rate"),
    (lambda p, g, v, s: course.update_parameters_with_momentum(p, g, v, 1.0, 0.1), ValueError,
     "beta"),
    (lambda p, g, v, s: course.update_parameters_with_momentum(p, g, v, 0.9, -1), ValueError,
     "learning_rate"),
    (lambda p, g, v, s: course.update_parameters_with_adam(p, g, v, s, 1, learning_rate=-1),
     ValueError, "learning_rate"),
    (lambda p, g, v, s: course.update_parameters_with_adam(p, g, v, s, 1, beta1=1.0),
     ValueError, "beta1"),
    (lambda p, g, v, s: course.update_parameters_with_adam(p, g, v, s, 1, beta2="x"),
     TypeError, "beta2"),
    (lambda p, g, v, s: course.update_parameters_with_adam(p, g, v, s, 1, epsilon=-1e-8),
     ValueError, "epsilon")])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_bad_hyper_parameter_is_named_as_the_course_names_it(backend, call, exc, name):
    """learning_rate and epsilon, not the kernels' lr and eps; nothing is updated."""
    params, grads = params_and_grads(np.float64)
    before = {k: a.copy() for k, a in params.items()}
    v, s = course.initialize_adam(params)
    with fo.use_backend(backend), pytest.raises(exc, match=rf"^Invalid {name}: "):
        call(params, grads, v, s)
    assert all(np.array_equal(params[k], before[k]) for k in params)
    assert not any(a.any() for a in (*v.values(), *s.values()))


@pytest.mark.parametrize("call,name", [
    (lambda p, g, v, s: course.update_parameters_with_gd(p, g, 10**400), "learning_rate"),
    (lambda p, g, v, s: course.update_parameters_with_momentum(p, g, v, 0.9, 10**400),
     "learning_rate"),
    (lambda p, g, v, s: course.update_parameters_with_adam(p, g, v, s, 1, learning_rate=10**400),
     "learning_rate"),
    (lambda p, g, v, s: course.update_parameters_with_adam(p, g, v, s, 1, epsilon=10**400),
     "epsilon"),
    (lambda p, g, v, s: course.update_parameters_with_adam(p, g, v, s, 10**400), "t"),
    (lambda p, g, v, s: course.update_lr(10**400, 2, 0.5), "learning_rate0"),
    (lambda p, g, v, s: course.schedule_lr_decay(0.1, 2, 10**400), "decay_rate")])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_a_hyper_parameter_past_the_float_range_is_named_as_the_course_names_it(backend, call,
                                                                               name):
    """An int past the float range passed the course's checks: the kernel refused it under its
    own name (lr, eps, step), and update_lr raised OverflowError naming nothing. Now it is a
    ValueError naming the course's argument, and nothing is updated."""
    params, grads = params_and_grads(np.float64)
    before = {k: a.copy() for k, a in params.items()}
    v, s = course.initialize_adam(params)
    with fo.use_backend(backend), pytest.raises(ValueError,
                                                match=rf"^Invalid {name}: 1e\+400 \(must be"):
        call(params, grads, v, s)
    assert all(np.array_equal(params[k], before[k]) for k in params)
    assert not any(a.any() for a in (*v.values(), *s.values()))


@pytest.mark.parametrize("call,exc,name", [
    (lambda: course.update_parameters_with_gd({}, {}, -0.1), ValueError, "learning_rate"),
    (lambda: course.update_parameters_with_gd({}, {}, None), TypeError, "learning_rate"),
    (lambda: course.update_parameters_with_momentum({}, {}, {}, 1.5, 0.1), ValueError, "beta"),
    (lambda: course.update_parameters_with_adam({}, {}, {}, {}, 1, epsilon=-1.0), ValueError,
     "epsilon")])
def test_a_bad_hyper_parameter_is_refused_with_no_layers_too(call, exc, name):
    """With no layers (empty dicts) there was no kernel call to check the hyper-parameters:
    a negative learning_rate or a beta of 1.5 passed."""
    with pytest.raises(exc, match=rf"^Invalid {name}: "):
        call()
