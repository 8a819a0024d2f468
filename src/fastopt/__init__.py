"""fastopt: fast, exact neural-network update kernels for NumPy on the CPU.

Three backends with one meaning: Cython (compiled, multi-threaded, the GIL released), Numba,
and the NumPy reference that defines the correct answer. Each function and class documents its
contract (``help(fastopt.Adam)``); the project's README (the package's description) gives the
tour, the benchmarks and the build switches.
"""
from . import course, ops, schedules  # noqa: F401
from ._backend import (backends, get_backend, get_num_threads, set_backend,  # noqa: F401
                       set_num_threads, use_backend)
from .arena import ParameterArena  # noqa: F401
from .data import minibatches  # noqa: F401
from .ewa import EWA, ewa_series  # noqa: F401
from .layers import (BatchNorm, batchnorm_backward, batchnorm_forward,  # noqa: F401
                     batchnorm_inference, log_softmax, softmax, softmax_cross_entropy)
from .optim import (SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, Lion, Momentum,  # noqa: F401
                    NAdam, Optimizer, RAdam, RMSprop)

from . import _threads

# (here, not where the compiled extension loads: threadpoolctl's user_api="fastopt" is known on
# every backend, the NumPy reference's and a machine without the extension included, where it
# limits nothing; it raised ValueError there, q65)
_threads.register_threadpoolctl()

__version__ = "0.1.0"

__all__ = [
    # backends
    "backends", "get_backend", "set_backend", "use_backend", "get_num_threads",
    "set_num_threads",
    # optimizers, and the buffer they step in one call
    "Optimizer", "SGD", "Momentum", "RMSprop", "Adagrad", "Adam", "AdamW", "Adadelta", "Adamax",
    "NAdam", "RAdam", "Lion", "ParameterArena",
    # layers
    "batchnorm_forward", "batchnorm_backward", "batchnorm_inference", "BatchNorm", "softmax",
    "log_softmax", "softmax_cross_entropy",
    # averages and mini-batches
    "EWA", "ewa_series", "minibatches",
    # submodules: the functional kernels, learning-rate schedules, the course's functions
    "ops", "schedules", "course",
]
