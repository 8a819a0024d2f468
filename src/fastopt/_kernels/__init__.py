"""The Cython backend: compiled kernels, OpenMP-parallel, GIL released.

Importing this package fails (ImportError) when the extension was not built; the registry then
reports the reason and serves the next backend.
"""
from . import optim as _optim
from . import stream as _stream
from .optim import adagrad, adam, ewa, momentum, rmsprop, sgd  # noqa: F401

_FAMILIES = (_optim, _stream)

BUILD_FLAGS = _optim.BUILD_FLAGS


def set_num_threads(n):
    for family in _FAMILIES:
        family.set_num_threads(n)


def get_num_threads():
    return _optim.get_num_threads()
