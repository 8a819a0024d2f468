"""The Numba backend: the fallback when the compiled extension is absent.

Kernels mirror the Cython ones (same signatures, same element formulas, same chunking).
"""
from ._common import get_num_threads, set_num_threads  # noqa: F401
from .optim import (adadelta, adadelta_multi, adagrad, adagrad_multi, adam,  # noqa: F401
                    adam_multi, adamax, adamax_multi, ewa, ewa_multi, momentum, momentum_multi,
                    nadam, nadam_multi, radam, radam_multi, rmsprop, rmsprop_multi, sgd,
                    sgd_multi)
from .layers import (batchnorm_apply, batchnorm_backward, batchnorm_stats,  # noqa: F401
                     softmax, softmax_cross_entropy)
