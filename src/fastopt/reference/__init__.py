"""The NumPy reference backend: the definition of every kernel (slow, obvious, exact)."""
from .optim import (adadelta, adadelta_multi, adagrad, adagrad_multi, adam,  # noqa: F401
                    adam_multi, adamax, adamax_multi, ewa, ewa_multi, momentum, momentum_multi,
                    nadam, nadam_multi, radam, radam_multi, rmsprop, rmsprop_multi, sgd,
                    sgd_multi)
from .layers import (batchnorm_apply, batchnorm_backward, batchnorm_stats,  # noqa: F401
                     softmax, softmax_cross_entropy)


def set_num_threads(n):
    """The reference is single-threaded NumPy; the thread count does not apply."""


def get_num_threads():
    return 1
