"""The NumPy reference backend: the definition of every kernel (slow, obvious, exact)."""
from .optim import (adagrad, adagrad_multi, adam, adam_multi, ewa, ewa_multi,  # noqa: F401
                    momentum, momentum_multi, rmsprop, rmsprop_multi, sgd, sgd_multi)


def set_num_threads(n):
    """The reference is single-threaded NumPy; the thread count does not apply."""


def get_num_threads():
    return 1
