"""fastopt.course against the course's own numbers: the inputs of the Coursera "Improving Deep
Neural Networks" week-2 assignment ("Optimization Methods") and the outputs its notebook prints
and its public tests assert. The expected values below are copied from the course material,
never computed with fastopt. Each check uses the tolerance the course's own test uses.

Sources (public copies of the assignment, by repository @ commit):

NEW  the current version (exercises 1-8, ``t`` and the hyper-parameters in the Adam test case,
     five values returned by update_parameters_with_adam, learning-rate decay):
     shivamaggarwal513/coursera-deep-learning-specialization
     @ ded9d4c0a0f755e277c9c805374f8b339f6743dd,
     c2-improving-deep-neural-networks/week-2/a1-optimization-algorithms/
       test_cases.py                    the inputs (the course's testCases.py, renamed)
       public_tests.py                  the asserted values
       a1_optimization_algorithms.ipynb the printed outputs and "Expected values"/"Expected
                                        output" cells, the extra random_mini_batches cell,
                                        and the model() runs' printed costs
OLD  the earlier public_tests.py (W2 of shape (3, 3), the Adam hyper-parameters set in the test):
     greyhatguy007/deep-learning-specialization @ 4f3647d753aee4a80fddb6a58495e0c7b9073072,
     "C2-Improving Deep Neural Networks: Hyperparameter Tuning, Regularization and
     Optimization/week2/pogramming assignments/W2A1/public_tests.py"
     with the inputs of the testCases.py of that version:
     amanchadha/coursera-deep-learning-specialization
     @ 835e099dfeb8b63caeabe25311ae400b0590a4a1,
     "C2 - Improving Deep Neural Networks Hyperparameter tuning, Regularization and
     Optimization/Week 2/testCases.py"
V1B  the first version (no public tests; "Expected Output" cells; Adam with its defaults and
     t = 2, returning (parameters, v, s) only):
     amanchadha/coursera-deep-learning-specialization
     @ 3f055e4a8db0d76efbfb6f5a0e7e854535a3e2ec, same folder, Optimization_methods_v1b.ipynb

The course's public tests run through dlai_tools' ``multiple_test``: it calls the function on a
deep copy of the inputs and checks the types (``isinstance`` of the expected type, recursively),
the shapes, and the values (``np.testing.assert_array_almost_equal``, 6 decimals).
``_course_multiple_test`` below does the same checks.
"""
import copy
import math
import os
import sys

import numpy as np
import pytest

import fastopt as fo
from fastopt import course
from conftest import GRID_BACKENDS

LAYER_KEYS = ("W1", "b1", "W2", "b2")


# ---------------------------------------------------------------------------------------------
# the course's test-case inputs (seeded draws in the order its test_cases.py draws them)

def _draw(shapes, seed=1):
    """``np.random.seed(seed)``, then one ``randn`` per shape, in order."""
    np.random.seed(seed)
    return [np.random.randn(*shape) for shape in shapes]


def _params_and_grads(w2_shape):
    """update_parameters_with_gd/momentum/adam test cases: W1, b1, W2, b2, then their grads."""
    shapes = [(2, 3), (2, 1), w2_shape, (3, 1)]
    arrays = _draw(shapes * 2)
    params = dict(zip(LAYER_KEYS, arrays[:4]))
    grads = {"d" + k: a for k, a in zip(LAYER_KEYS, arrays[4:])}
    return params, grads


def _zeros_like_grads(grads):
    return {k: np.zeros(g.shape) for k, g in grads.items()}


def _course_multiple_test(target, args, expected):
    """dlai_tools' multiple_test: datatype, shape and value checks, each on a fresh deep copy
    of ``args`` (the course's test calls the function three times)."""
    def datatype(exp, out):
        if isinstance(exp, dict):
            assert isinstance(out, dict) and sorted(out) == sorted(exp)
            for k in exp:
                datatype(exp[k], out[k])
        elif isinstance(exp, (tuple, list)):
            assert isinstance(out, type(exp)) and len(out) == len(exp)
            for e, o in zip(exp, out):
                datatype(e, o)
        else:
            assert isinstance(out, type(exp)), (type(out), type(exp))

    def shape(exp, out):
        if isinstance(exp, dict):
            for k in exp:
                shape(exp[k], out[k])
        elif isinstance(exp, (tuple, list)):
            for e, o in zip(exp, out):
                shape(e, o)
        else:
            assert out.shape == exp.shape, (out.shape, exp.shape)

    def values(exp, out):
        if isinstance(exp, dict):
            for k in exp:
                values(exp[k], out[k])
        elif isinstance(exp, (tuple, list)):
            for e, o in zip(exp, out):
                values(e, o)
        else:
            np.testing.assert_array_almost_equal(out, exp)

    for check in (datatype, shape, values):
        check(expected, target(*copy.deepcopy(args)))


# ---------------------------------------------------------------------------------------------
# NEW: exercise 1, update_parameters_with_gd

GD_NEW = {"W1": [[1.63312395, -0.61217855, -0.5339999], [-1.06196243, 0.85396039, -2.3105546]],
          "b1": [[1.73978682], [-0.77021546]],
          "W2": [[0.32587637, -0.24814147], [1.47146563, -2.05746183],
                 [-0.32772076, -0.37713775]],
          "b2": [[1.13773698], [-1.09301954], [-0.16397615]]}

# OLD public_tests.py: the same test on the earlier inputs (W2 of shape (3, 3))
GD_OLD = {"W1": [[1.63535156, -0.62320365, -0.53718766], [-1.07799357, 0.85639907, -2.29470142]],
          "b1": [[1.74604067], [-0.75184921]],
          "W2": [[0.32171798, -0.25467393, 1.46902454], [-2.05617317, -0.31554548, -0.3756023],
                 [1.1404819, -1.09976462, -0.1612551]],
          "b2": [[-0.88020257], [0.02561572], [0.57539477]]}


@pytest.mark.parametrize("w2_shape,expected", [((3, 2), GD_NEW), ((3, 3), GD_OLD)],
                         ids=["new", "old"])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_update_parameters_with_gd(backend, w2_shape, expected):
    parameters, grads = _params_and_grads(w2_shape)
    with fo.use_backend(backend):
        params_up = course.update_parameters_with_gd(parameters, grads, 0.01)
    assert sorted(params_up) == sorted(expected)
    for key in params_up:       # public_tests: type, shape, np.allclose
        assert type(params_up[key]) == np.ndarray
        assert params_up[key].shape == parameters[key].shape
        assert np.allclose(params_up[key], expected[key]), key


# ---------------------------------------------------------------------------------------------
# exercise 2, random_mini_batches

MINI_BATCHES_NEW = [  # public_tests.py: X = randn(5, 7), Y = randn(1, 7) < 0.5, batches of 2
    ([[1.74481176, -0.52817175], [-0.38405435, -0.24937038], [-1.10061918, -0.17242821],
      [-0.93576943, 0.50249434], [-0.67124613, -0.69166075]], [[True, True]]),
    ([[-0.61175641, -1.07296862], [0.3190391, 1.46210794], [-1.09989127, -0.87785842],
      [0.90159072, 0.90085595], [0.53035547, -0.39675353]], [[True, False]]),
    ([[1.62434536, -2.3015387], [-0.7612069, -0.3224172], [1.13376944, 0.58281521],
      [1.14472371, -0.12289023], [-0.26788808, -0.84520564]], [[True, True]]),
    ([[0.86540763], [-2.06014071], [0.04221375], [-0.68372786], [-0.6871727]], [[False]])]

MINI_BATCHES_OLD = [  # OLD public_tests.py: X = randn(7, 3), Y = randn(1, 3) < 0.5
    ([[-0.52817175, -0.61175641], [-2.3015387, 0.86540763], [0.3190391, -0.7612069],
      [-2.06014071, 1.46210794], [1.13376944, -0.38405435], [-0.87785842, -0.17242821],
      [-1.10061918, 0.58281521]], [[False, False]]),
    ([[1.62434536], [-1.07296862], [1.74481176], [-0.24937038], [-0.3224172], [-1.09989127],
      [0.04221375]], [[False]])]


@pytest.mark.parametrize("x_shape,expected", [((5, 7), MINI_BATCHES_NEW),
                                              ((7, 3), MINI_BATCHES_OLD)], ids=["new", "old"])
def test_random_mini_batches_public_test(x_shape, expected):
    np.random.seed(1)
    X = np.random.randn(*x_shape)
    Y = np.random.randn(1, x_shape[1]) < 0.5
    expected = [(np.array(x), np.array(y)) for x, y in expected]
    _course_multiple_test(course.random_mini_batches, [X, Y, 2], expected)
    # the last, partial batch and the labels' dtype, as the course makes them
    batches = course.random_mini_batches(X, Y, 2)
    assert [b[0].shape[1] for b in batches][-1] == x_shape[1] % 2
    assert all(b[1].dtype == np.bool_ for b in batches)


def test_random_mini_batches_notebook_outputs():
    """NEW/V1B notebooks: random_mini_batches_test_case() (X = randn(12288, 148), batches of
    64) prints the three shapes and "mini batch sanity check: [ 0.90085595 -0.7612069
    0.2344157 ]"."""
    np.random.seed(1)
    X = np.random.randn(12288, 148)
    Y = np.random.randn(1, 148) < 0.5
    batches = course.random_mini_batches(X, Y, 64)
    assert [b[0].shape for b in batches] == [(12288, 64), (12288, 64), (12288, 20)]
    assert [b[1].shape for b in batches] == [(1, 64), (1, 64), (1, 20)]
    np.testing.assert_allclose(batches[0][0][0][0:3], [0.90085595, -0.7612069, 0.2344157],
                               rtol=0, atol=5e-9)


def test_random_mini_batches_notebook_index_cell():
    """NEW notebook's ungraded check: integer X whose entries are their own flat indices, so
    the values name the columns each batch took."""
    np.random.seed(1)
    mini_batch_size, nx, m = 64, 12288, 148
    X = np.array([x for x in range(nx * m)]).reshape((m, nx)).T
    Y = np.random.randn(1, m) < 0.5
    mini_batches = course.random_mini_batches(X, Y, mini_batch_size)
    n_batches = len(mini_batches)
    assert n_batches == math.ceil(m / mini_batch_size)
    for k in range(n_batches - 1):
        assert mini_batches[k][0].shape == (nx, mini_batch_size)
        assert mini_batches[k][1].shape == (1, mini_batch_size)
        assert np.sum(mini_batches[k][0] - mini_batches[k][0][0], dtype=np.int64) \
            == (nx * (nx - 1) // 2) * mini_batch_size
    assert mini_batches[-1][0].shape == (nx, m % mini_batch_size)
    assert np.allclose(mini_batches[0][0][0][0:3], [294912, 86016, 454656])
    assert np.allclose(mini_batches[-1][0][-1][0:3], [1425407, 1769471, 897023])


# ---------------------------------------------------------------------------------------------
# exercises 3 and 5, initialize_velocity and initialize_adam (the printed zeros)

def test_initialize_velocity_public_test():
    # NEW initialize_velocity_test_case: W1 (3, 2), b1 (3, 1), W2 (3, 3), b2 (3, 1)
    params = dict(zip(LAYER_KEYS, _draw([(3, 2), (3, 1), (3, 3), (3, 1)])))
    expected = {"dW1": np.zeros((3, 2)), "db1": np.zeros((3, 1)), "dW2": np.zeros((3, 3)),
                "db2": np.zeros((3, 1))}
    _course_multiple_test(course.initialize_velocity, [params], expected)


@pytest.mark.parametrize("w2_shape", [(3, 2), (3, 3)], ids=["new", "old"])
def test_initialize_adam_public_test(w2_shape):
    params = dict(zip(LAYER_KEYS, _draw([(2, 3), (2, 1), w2_shape, (3, 1)])))
    zeros = {"dW1": np.zeros((2, 3)), "db1": np.zeros((2, 1)), "dW2": np.zeros(w2_shape),
             "db2": np.zeros((3, 1))}
    _course_multiple_test(course.initialize_adam, [params], (zeros, copy.deepcopy(zeros)))
    v, s = course.initialize_adam(params)
    assert all(v[k] is not s[k] for k in v)     # two sets of arrays, as the course's


# ---------------------------------------------------------------------------------------------
# exercise 4, update_parameters_with_momentum (beta 0.9, learning rate 0.01)

MOMENTUM_NEW = (
    {"W1": [[1.62522322, -0.61179863, -0.52875457], [-1.071868, 0.86426291, -2.30244029]],
     "b1": [[1.74430927], [-0.76210776]],
     "W2": [[0.31972282, -0.24924749], [1.46304371, -2.05987282], [-0.32294756, -0.38336269]],
     "b2": [[1.1341662], [-1.09920409], [-0.171583]]},
    {"dW1": [[-0.08778584, 0.00422137, 0.05828152], [-0.11006192, 0.11447237, 0.09015907]],
     "dW2": [[-0.06837279, -0.01228902], [-0.09357694, -0.02678881], [0.05303555, -0.06916608]],
     "db1": [[0.05024943], [0.09008559]],
     "db2": [[-0.03967535], [-0.06871727], [-0.08452056]]})

MOMENTUM_OLD = (
    {"W1": [[1.62544598, -0.61290114, -0.52907334], [-1.07347112, 0.86450677, -2.30085497]],
     "b1": [[1.74493465], [-0.76027113]],
     "W2": [[0.31930698, -0.24990073, 1.4627996], [-2.05974396, -0.32173003, -0.38320915],
            [1.13444069, -1.0998786, -0.1713109]],
     "b2": [[-0.87809283], [0.04055394], [0.58207317]]},
    {"dW1": [[-0.11006192, 0.11447237, 0.09015907], [0.05024943, 0.09008559, -0.06837279]],
     "dW2": [[-0.02678881, 0.05303555, -0.06916608], [-0.03967535, -0.06871727, -0.08452056],
             [-0.06712461, -0.00126646, -0.11173103]],
     "db1": [[-0.01228902], [-0.09357694]],
     "db2": [[0.02344157], [0.16598022], [0.07420442]]})


@pytest.mark.parametrize("w2_shape,expected", [((3, 2), MOMENTUM_NEW), ((3, 3), MOMENTUM_OLD)],
                         ids=["new", "old"])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_update_parameters_with_momentum_public_test(backend, w2_shape, expected):
    parameters, grads = _params_and_grads(w2_shape)
    v = _zeros_like_grads(grads)
    expected = tuple({k: np.array(a) for k, a in d.items()} for d in expected)
    with fo.use_backend(backend):
        _course_multiple_test(course.update_parameters_with_momentum,
                              [parameters, grads, v, 0.9, 0.01], expected)
        # the notebook's call, by keyword
        out = course.update_parameters_with_momentum(parameters, grads, v, beta=0.9,
                                                     learning_rate=0.01)
    for got, exp in zip(out, expected):
        for k in exp:
            assert np.allclose(got[k], exp[k]), k


# ---------------------------------------------------------------------------------------------
# exercise 6, update_parameters_with_adam (public_tests compare the first row of each array)

ADAM_NEW = {  # t = 2, learning_rate 0.02, beta1 0.8, beta2 0.888, epsilon 1e-2 (test_cases.py)
    "v": {"dW1": [-0.17557168, 0.00844275, 0.11656304], "dW2": [-0.13674557, -0.02457805],
          "db1": [0.10049887], "db2": [-0.07935071]},
    "s": {"dW1": [0.08631117, 0.00019958, 0.03804344], "dW2": [0.05235818, 0.00169142],
          "db1": [0.02828006], "db2": [0.0176303]},
    "parameters": {"W1": [1.63937725, -0.62327448, -0.54308727],
                   "W2": [0.33400549, -0.23563857], "b1": [1.72995096], "b2": [1.14852557]}}

ADAM_NEW_PRINTED = {  # the notebook's "Expected values" cell: whole arrays
    "W1": [[1.63937725, -0.62327448, -0.54308727], [-1.0578897, 0.85032154, -2.31657668]],
    "W2": [[0.33400549, -0.23563857], [1.47715417, -2.04561842], [-0.33729882, -0.36908457]],
    "b1": [[1.72995096], [-0.7762447]],
    "b2": [[1.14852557], [-1.08492339], [-0.15740527]]}

ADAM_OLD = {  # OLD public_tests.py: the same hyper-parameters, set in the test
    "v": {"dW1": [-0.22012384, 0.22894474, 0.18031814],
          "dW2": [-0.05357762, 0.10607109, -0.13833215],
          "db1": [-0.02457805], "db2": [0.04688314]},
    "s": {"dW1": [0.13567261, 0.14676395, 0.09104097],
          "dW2": [8.03757060e-03, 3.15030152e-02, 5.35801947e-02],
          "db1": [0.00169142], "db2": [0.00615448]},
    "parameters": {"W1": [1.63942428, -0.6268425, -0.54320974],
                   "W2": [0.33356139, -0.26425199, 1.47707772],
                   "b1": [1.75854357], "b2": [-0.89228024]}}


def _adam_test_case(w2_shape):
    """The Adam test case: seed 1, zero v and s, then parameters and grads as above."""
    parameters, grads = _params_and_grads(w2_shape)
    return parameters, grads, _zeros_like_grads(grads), _zeros_like_grads(grads)


@pytest.mark.parametrize("w2_shape,expected", [((3, 2), ADAM_NEW), ((3, 3), ADAM_OLD)],
                         ids=["new", "old"])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_update_parameters_with_adam_public_test(backend, w2_shape, expected):
    parametersi, grads, vi, si = _adam_test_case(w2_shape)
    t, learning_rate, beta1, beta2, epsilon = 2, 0.02, 0.8, 0.888, 1e-2
    c1, c2 = 1.0 / (1 - beta1 ** t), 1.0 / (1 - beta2 ** t)
    with fo.use_backend(backend):
        out = course.update_parameters_with_adam(parametersi, grads, vi, si, t, learning_rate,
                                                 beta1, beta2, epsilon)
    assert isinstance(out, tuple) and len(out) == 5
    parameters, v, s, vc, sc = out
    checks = [(v, vi, expected["v"], 1), (vc, vi, expected["v"], c1), (s, si, expected["s"], 1),
              (sc, si, expected["s"], c2), (parameters, parametersi, expected["parameters"], 1)]
    for got, given, exp, scale in checks:
        assert sorted(got) == sorted(exp)
        for key in got:
            assert type(got[key]) == np.ndarray
            assert got[key].shape == given[key].shape
            assert np.allclose(got[key][0], np.multiply(exp[key], scale)), key


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_update_parameters_with_adam_notebook_outputs(backend):
    """NEW notebook: the printed W1, W2, b1, b2 after the Adam test case, whole arrays."""
    case = _adam_test_case((3, 2))
    with fo.use_backend(backend):
        parameters = course.update_parameters_with_adam(*case, 2, 0.02, 0.8, 0.888, 1e-2)[0]
    for key, exp in ADAM_NEW_PRINTED.items():
        np.testing.assert_allclose(parameters[key], exp, rtol=0, atol=5e-9, err_msg=key)


ADAM_V1B = {  # V1B "Expected Output": update_parameters_with_adam(parameters, grads, v, s, t=2)
    "parameters": {
        "W1": [[1.63178673, -0.61919778, -0.53561312], [-1.08040999, 0.85796626, -2.29409733]],
        "b1": [[1.75225313], [-0.75376553]],
        "W2": [[0.32648046, -0.25681174, 1.46954931], [-2.05269934, -0.31497584, -0.37661299],
               [1.14121081, -1.09245036, -0.16498684]],
        "b2": [[-0.88529978], [0.03477238], [0.57537385]]},
    "v": {"dW1": [[-0.11006192, 0.11447237, 0.09015907], [0.05024943, 0.09008559, -0.06837279]],
          "db1": [[-0.01228902], [-0.09357694]],
          "dW2": [[-0.02678881, 0.05303555, -0.06916608], [-0.03967535, -0.06871727, -0.08452056],
                  [-0.06712461, -0.00126646, -0.11173103]],
          "db2": [[0.02344157], [0.16598022], [0.07420442]]},
    "s": {"dW1": [[0.00121136, 0.00131039, 0.00081287], [0.0002525, 0.00081154, 0.00046748]],
          "db1": [[1.51020075e-05], [8.75664434e-04]],
          "dW2": [[7.17640232e-05, 2.81276921e-04, 4.78394595e-04],
                  [1.57413361e-04, 4.72206320e-04, 7.14372576e-04],
                  [4.50571368e-04, 1.60392066e-07, 1.24838242e-03]],
          "db2": [[5.49507194e-05], [2.75494327e-03], [5.50629536e-04]]}}


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_update_parameters_with_adam_defaults_v1b(backend):
    """V1B: Adam with the defaults (learning_rate 0.01, beta1 0.9, beta2 0.999, epsilon 1e-8)
    and t = 2. That version returned (parameters, v, s); the current one, which fastopt
    follows, adds v_corrected and s_corrected. The notebook's expected W2[2][1] -1.09245036
    and b2[0] -0.88529978 differ from its own printed run (-1.09244991, -0.88529979) by ~5e-7:
    they are what epsilon inside the square root gives, sqrt(s_corrected + eps), where that
    notebook's formula (and every later version's) adds it outside, which gives fastopt's
    numbers (q61). Compared with np.allclose's defaults, as the course's later tests do."""
    with fo.use_backend(backend):
        parameters, v, s = course.update_parameters_with_adam(*_adam_test_case((3, 3)), t=2)[:3]
    for got, exp in ((parameters, ADAM_V1B["parameters"]), (v, ADAM_V1B["v"]),
                     (s, ADAM_V1B["s"])):
        for key in exp:
            assert np.allclose(got[key], exp[key]), key


# ---------------------------------------------------------------------------------------------
# exercises 7 and 8, update_lr and schedule_lr_decay

def test_update_lr_public_test_and_notebook():
    # public_tests.update_lr_test and the notebook's "Updated learning rate:  0.16666666666666666"
    assert np.isclose(course.update_lr(0.5, 2, 1), 0.16666666666666666)


@pytest.mark.parametrize("args,expected", [
    ((0.5, 100, 1, 100), 0.25), ((0.5, 10, 1, 100), 0.5),             # public_tests
    ((0.3, 1000, 0.25, 100), 0.085714285), ((0.3, 100, 0.25, 100), 0.24),
    ((0.5, 10, 0.3, 100), 0.5), ((0.5, 100, 0.3, 100), 0.3846153846153846)])  # notebook
def test_schedule_lr_decay_public_test_and_notebook(args, expected):
    assert np.isclose(course.schedule_lr_decay(*args), expected)


def test_learning_rate_decay_rounds_as_the_notebook_writes_it():
    # the notebook's update_lr is 1 / (1 + decay_rate * epoch_num) * learning_rate0 and its
    # schedule_lr_decay the same of np.floor(epoch_num / time_interval): a printed rate shows
    # that order's rounding (learning_rate0 / (1 + ...) ends 0.02 and 0.08571428571428572)
    assert course.update_lr(0.1, 4, 1) == 0.020000000000000004
    assert course.update_lr(0.1, 6, 1) == 0.014285714285714285
    assert course.schedule_lr_decay(0.3, 1000, 0.25, 100) == 0.0857142857142857
    assert course.schedule_lr_decay(0.1, 3999, 0.25, 1000) == 0.05714285714285714


def test_schedule_lr_decay_default_interval_is_the_courses():
    # the notebook's model() calls decay(learning_rate0, epoch, decay_rate): interval 1000;
    # its printed rates with learning_rate 0.1, decay_rate 1 (section 7.3.1)
    printed = {0: 0.100000, 1000: 0.050000, 2000: 0.033333, 3000: 0.025000, 4000: 0.020000}
    for epoch, rate in printed.items():
        assert round(course.schedule_lr_decay(0.1, epoch, 1), 6) == rate
    # and update_lr in the same loop (section 6 with decay=update_lr)
    printed = {0: 0.100000, 1000: 0.000100, 2000: 0.000050, 3000: 0.000033, 4000: 0.000025}
    for epoch, rate in printed.items():
        assert round(course.update_lr(0.1, epoch, 1), 6) == rate


# ---------------------------------------------------------------------------------------------
# the notebook's model(): three-layer network on two moons, driven by fastopt.course
# (examples/moons.py is that model; the notebook prints the cost every 1000 epochs)

NOTEBOOK_COSTS = {  # "Cost after epoch 0", "Cost after epoch 1000"
    "gd": (0.702405, 0.668101), "momentum": (0.702413, 0.668167),
    "adam": (0.702166, 0.167845), "adam + decay": (0.699346, 0.130074)}


@pytest.mark.parametrize("run", ["gd", "momentum", "adam", "adam + decay"])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_notebook_model_costs(backend, run):
    pytest.importorskip("sklearn")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "examples"))
    try:
        import moons
    finally:
        sys.path.pop(0)
    X, Y = moons.load_moons()
    kwargs = dict(learning_rate=0.01, decay=True, decay_rate=1) if run == "adam + decay" else {}
    optimizer = run.split()[0]
    # the first epoch everywhere; 1000 more epochs only where the optimizer has moved far
    epochs = 1001 if optimizer == "adam" else 1
    with fo.use_backend(backend):
        costs = moons.model(X, Y, optimizer, num_epochs=epochs, **kwargs)[1]
    expected = NOTEBOOK_COSTS[run][:len(costs)]
    np.testing.assert_allclose(costs, expected, rtol=0, atol=5e-7)   # printed with %f
