"""The Numba backend: the fallback when the compiled extension is absent.

Kernels mirror the Cython ones (same signatures, same element formulas, same chunking):
``optim`` holds the element-wise kernels of the registry (``fastopt._registry``), ``lowp``
the 16-bit ones, ``layers`` the layer kernels; ``fastopt._backend`` serves them (with each
kernel's list form).
"""
import numba

from .._cpu import UnusableBuild

if numba.config.DISABLE_JIT:
    # the layers' and the 16-bit kernels' intrinsics have no pure-Python form: half of the
    # backend raised NotImplementedError at its first call
    raise UnusableBuild("NUMBA_DISABLE_JIT is set: the numba backend's kernels need Numba's "
                        "compiler (unset it to use them)")

from . import layers, lowp, optim  # noqa: E402
from ._common import get_num_threads, set_num_threads  # noqa: F401


def use_openmp_team(on):
    """Numba's threads are its threading layer's (oneTBB): no OpenMP team to use."""
    return False


KERNEL_MODULES = (optim, layers, lowp)
