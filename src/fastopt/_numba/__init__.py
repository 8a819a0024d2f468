"""The Numba backend: the fallback when the compiled extension is absent.

Kernels mirror the Cython ones (same signatures, same element formulas, same chunking).
"""
from ._common import get_num_threads, set_num_threads  # noqa: F401
from .optim import (adagrad, adagrad_multi, adam, adam_multi, ewa, ewa_multi,  # noqa: F401
                    momentum, momentum_multi, rmsprop, rmsprop_multi, sgd, sgd_multi)
