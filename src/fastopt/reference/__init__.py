"""The NumPy reference backend: the definition of every kernel (slow, obvious, exact).

``optim`` defines the element-wise kernels of the registry (``fastopt._registry``), ``lowp``
the 16-bit ones and ``layers`` the layer kernels; ``fastopt._backend`` serves them (with each kernel's list form).
"""
from . import layers, lowp, optim

KERNEL_MODULES = (optim, layers, lowp)


def set_num_threads(n):
    """The reference is single-threaded NumPy; the thread count does not apply."""


def get_num_threads():
    return 1


def use_openmp_team(on):
    """The reference is single-threaded NumPy: no OpenMP team to use."""
    return False
