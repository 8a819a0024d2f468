"""The NumPy reference backend: the definition of every kernel (slow, obvious, exact)."""
from .optim import adagrad, adam, ewa, momentum, rmsprop, sgd  # noqa: F401

REASON = None


def set_num_threads(n):
    """The reference is single-threaded NumPy; the thread count does not apply."""


def get_num_threads():
    return 1
