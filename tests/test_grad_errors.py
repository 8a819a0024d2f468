"""Grads that do not fit the parameters are refused with an error naming the key, before any
array is written (issue 16, item 9)."""
import numpy as np
import pytest

import fastopt as fo


def test_arena_grad_of_the_wrong_shape_names_the_key_and_writes_nothing():
    arena = fo.ParameterArena(np.float64)
    arena.add("W", (3, 2))
    arena.grads["dW"] = np.ones((3, 2))
    for bad in (np.zeros((2, 3)), np.zeros(6), np.zeros((3, 1)), 0.0):
        with pytest.raises(ValueError, match=r"grads\['dW'\] has shape .* expected \(3, 2\)"):
            arena.grads["dW"] = bad
    with pytest.raises(ValueError, match=r"grads\['W'\]"):
        arena.grads["W"] = np.full((3, 2), "x")
    assert (arena.grads["W"] == 1).all()
    with pytest.raises(KeyError, match="'dW2'.* no such parameter"):
        arena.grads["dW2"] = np.ones((3, 2))


@pytest.mark.parametrize("opt_cls", [fo.SGD, fo.Adam])
def test_a_grad_key_for_a_parameter_that_does_not_exist_is_refused(opt_cls):
    params = {"W1": np.ones((3, 2)), "b1": np.zeros(3)}
    before = {k: v.copy() for k, v in params.items()}
    opt = opt_cls(params, lr=0.1)
    grads = {"dW1": np.ones((3, 2)), "db1": np.ones(3)}
    for stray in ("dW2", "W2", "db", "dW"):
        with pytest.raises(ValueError, match=f"'{stray}' but there is no such parameter"):
            opt.step({**grads, stray: np.ones(2)})
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


def test_the_arenas_grads_may_hold_more_than_one_optimizer_steps():
    arena = fo.ParameterArena(np.float32)
    w = arena.add("w", (4,), init=np.ones(4))
    b = arena.add("b", (2,), init=np.ones(2))
    opt_w = fo.SGD({"w": w}, lr=0.5)
    arena.grads["dw"] = np.ones(4, np.float32)
    arena.grads["db"] = np.ones(2, np.float32)
    opt_w.step(arena.grads)                              # "b" belongs to another optimizer
    np.testing.assert_array_equal(w, 0.5)
    np.testing.assert_array_equal(b, 1.0)


def test_a_sequence_of_the_wrong_length_says_how_many():
    a, b = np.ones(3), np.ones(2)
    with pytest.raises(ValueError, match="1 entries, expected 2"):
        fo.SGD([a, b], lr=0.1).step([np.ones(3)])
    np.testing.assert_array_equal(a, 1.0)
