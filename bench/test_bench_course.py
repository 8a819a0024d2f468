"""pytest-benchmark suite: the course's updates on a course-sized model, against the notebook's
own NumPy.

    pytest bench/test_bench_course.py --benchmark-only --benchmark-group-by=group \
        --benchmark-columns=median,iqr

The two-moons model of the course's "Optimization Methods" notebook (layer sizes 2, 5, 2, 1:
six arrays of 1 to 10 values), where a step is all call overhead: ``fastopt.course``'s
``update_parameters_with_gd`` and ``update_parameters_with_adam`` on each backend, and the
notebook's loops over the layers in NumPy (``notebook``). Benchmarks, not tests: nothing here
asserts a time.
"""
import numpy as np
import pytest

import fastopt as fo
from fastopt import _backend, course

LAYERS = [2, 5, 2, 1]


def _model():
    rng = np.random.default_rng(0)
    params = {}
    for l in range(1, len(LAYERS)):
        params[f"W{l}"] = rng.standard_normal((LAYERS[l], LAYERS[l - 1])) * 0.1
        params[f"b{l}"] = np.zeros((LAYERS[l], 1))
    grads = {"d" + k: rng.standard_normal(p.shape) for k, p in params.items()}
    return params, grads


def notebook_gd(parameters, grads, learning_rate):
    """The notebook's update_parameters_with_gd."""
    for l in range(1, len(parameters) // 2 + 1):
        parameters[f"W{l}"] = parameters[f"W{l}"] - learning_rate * grads[f"dW{l}"]
        parameters[f"b{l}"] = parameters[f"b{l}"] - learning_rate * grads[f"db{l}"]
    return parameters


def notebook_adam(parameters, grads, v, s, t, learning_rate=0.01, beta1=0.9, beta2=0.999,
                  epsilon=1e-8):
    """The notebook's update_parameters_with_adam."""
    v_corrected, s_corrected = {}, {}
    for l in range(1, len(parameters) // 2 + 1):
        for p in ("W", "b"):
            k = f"d{p}{l}"
            v[k] = beta1 * v[k] + (1 - beta1) * grads[k]
            v_corrected[k] = v[k] / (1 - beta1 ** t)
            s[k] = beta2 * s[k] + (1 - beta2) * grads[k] ** 2
            s_corrected[k] = s[k] / (1 - beta2 ** t)
            parameters[f"{p}{l}"] = (parameters[f"{p}{l}"] - learning_rate * v_corrected[k]
                                     / (np.sqrt(s_corrected[k]) + epsilon))
    return parameters, v, s, v_corrected, s_corrected


CONTENDERS = fo.backends() + ["notebook"]


@pytest.mark.parametrize("contender", CONTENDERS)
def test_course_gd(benchmark, contender):
    params, grads = _model()
    benchmark.group = "course update_parameters_with_gd, layers 2-5-2-1"
    if contender == "notebook":
        benchmark(notebook_gd, params, grads, 0.01)
        return
    with _backend.use_backend(contender):
        benchmark(course.update_parameters_with_gd, params, grads, 0.01)


@pytest.mark.parametrize("contender", CONTENDERS)
def test_course_adam(benchmark, contender):
    params, grads = _model()
    v, s = course.initialize_adam(params)
    benchmark.group = "course update_parameters_with_adam, layers 2-5-2-1"
    if contender == "notebook":
        benchmark(notebook_adam, params, grads, v, s, 2)
        return
    with _backend.use_backend(contender):
        benchmark(course.update_parameters_with_adam, params, grads, v, s, 2)
