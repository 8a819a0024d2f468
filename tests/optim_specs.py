"""Shared by the optimizer, arena and error tests: every optimizer with options that bring in all
of its state, the newer family's variants, and the random parameters and grads they step."""
import pickle

import numpy as np

# every optimizer, with options that bring in all of its state
CONFIGS = [
    ("SGD", dict(lr=0.1)), ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Momentum", dict(lr=0.1)),
    ("RMSprop", dict(lr=0.01)), ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01)), ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)), ("AdamW", dict(lr=0.01)),
    ("Adadelta", dict()), ("Adamax", dict()), ("NAdam", dict()), ("RAdam", dict()),
]
CONFIG_IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)]

# Adadelta, Adamax, NAdam and RAdam with their defaults and with every option, held to torch
VARIANTS = [
    ("Adadelta", {}),
    ("Adadelta", dict(lr=0.5, rho=0.95, eps=1e-4, weight_decay=0.1, maximize=True)),
    ("Adamax", {}),
    ("Adamax", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, maximize=True)),
    ("NAdam", {}),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, momentum_decay=0.01)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("RAdam", {}),
    ("RAdam", dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1)),
    ("RAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
]
VARIANT_IDS = [f"{name}-{i}" for i, (name, _) in enumerate(VARIANTS)]
VARIANT_STEPS = 25      # RAdam switches to the rectified step at t = 6 with the default betas

# a parameter list of mixed shapes: 2-D, 1-D, 0-d, empty, odd
PARAM_SHAPES = [(3, 4), (5,), (), (0,), (17,)]


def random_arrays(rng, dtype=np.float64, shapes=PARAM_SHAPES):
    """One random array per shape of ``shapes`` (parameters or one step's grads)."""
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def two_params(seed=0):
    """A float64 (3, 2) and a float32 (4,) parameter: one optimizer over both dtypes."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, 2)), rng.standard_normal(4).astype(np.float32)]


def two_grads(seed=1):
    """Grads for :func:`two_params`."""
    return two_params(seed)


def course_params(dtype=np.float64):
    """The course's two-layer ``parameters`` dict (W1, b1, W2, b2)."""
    rng = np.random.default_rng(0)
    return {"W1": rng.standard_normal((5, 2)).astype(dtype), "b1": np.zeros((5, 1), dtype),
            "W2": rng.standard_normal((1, 5)).astype(dtype), "b2": np.zeros((1, 1), dtype)}


def opt_snapshot(opt, params):
    """The bytes of ``params`` and of ``opt``'s state, to check that a refused step changed
    nothing."""
    return [p.tobytes() for p in params], pickle.dumps(opt.state_dict()["state"])

