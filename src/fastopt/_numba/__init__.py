"""The Numba backend: the fallback when the compiled extension is absent.

Kernels mirror the Cython ones (same signatures, same element formulas, same chunking).
"""
from ._common import get_num_threads, set_num_threads  # noqa: F401
from .optim import adagrad, adam, ewa, momentum, rmsprop, sgd  # noqa: F401
