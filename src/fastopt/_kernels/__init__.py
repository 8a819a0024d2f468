"""The Cython backend: compiled kernels, multi-threaded, GIL released.

Importing this package fails (ImportError saying why) when the extension was not built or was
built for an ISA this CPU lacks; the registry then reports the reason and serves the next
backend. Compute-bound families are also built for AVX-512 (``<family>_avx512``, and the optimizer
steps with 512-bit vectors as ``optim_avx512_zmm``); that build is used when the CPU has it,
unless ``FASTOPT_NO_AVX512=1``.
"""
import importlib
import importlib.util
import os
import sys

from .. import _cpu

try:  # written by setup.py next to the extension: its flags, or why it was not built
    from . import _build_info
except ImportError:
    _build_info = None


def _refuse_unusable_build():
    """UnusableBuild (an ImportError) saying why the compiled kernels cannot be used here,
    raised before importing any of them (on a CPU without their ISA, that import is SIGILL)."""
    error = getattr(_build_info, "ERROR", None)
    if error:
        raise _cpu.UnusableBuild(f"not built: {error}")
    if importlib.util.find_spec(f"{__name__}.stream") is None:
        raise _cpu.UnusableBuild("not built: the compiled extension is not in this install (built "
                          "without Cython, or removed); reinstall fastopt with Cython and a C "
                          "compiler for the fast backend (pip install --no-cache-dir "
                          "--force-reinstall --no-deps fastopt, or the path you installed "
                          "from)")
    march = getattr(_build_info, "MARCH", None)
    missing = _cpu.missing_features(march)
    if missing:
        raise _cpu.UnusableBuild(f"built for {march}, which this CPU does not run (it lacks "
                          f"{', '.join(missing)}); reinstall fastopt from source on this "
                          "machine for a build it runs (pip install --no-cache-dir "
                          "--force-reinstall --no-deps --no-binary fastopt fastopt)")


_refuse_unusable_build()
from . import pool as _pool, stream as _stream  # noqa: E402  (once the build is known to run here)


# each family's AVX-512 builds (setup.py's WIDE_VARIANTS): 256-bit vectors where the family
# has a second build with 512-bit ones, which CPUs that prefer 512-bit steps load instead
AVX512_BUILDS = {"optim": ("optim_avx512", "optim_avx512_zmm"), "layers": ("layers_avx512",)}


def _load(family):
    """The AVX-512 build of a kernel family when it exists and this CPU runs it (for the
    optimizer steps, the 512-bit one on CPUs where it is the faster), else the portable
    (x86-64-v3) build."""
    base = importlib.import_module(f".{family}", __name__)
    if os.environ.get("FASTOPT_NO_AVX512", "0") in ("", "0") and base.cpu_has_avx512():
        names = AVX512_BUILDS[family]
        if base.cpu_prefers_512bit_steps():
            names = names[::-1]
        for name in names:
            try:
                return importlib.import_module(f".{name}", __name__)
            except ImportError:
                pass
    return base


_optim = _load("optim")
_layers = _load("layers")
# the kernels fastopt._backend serves, checked against the registry (fastopt/_registry.py)
KERNEL_MODULES = (_optim, _layers)

BUILD_FLAGS = _optim.BUILD_FLAGS
first_readonly = _optim.first_readonly
first_unlike = _optim.first_unlike


def set_num_threads(n):
    # every build imported in this process follows the count: threadpoolctl lists each (the
    # portable ones that _load asked about the CPU too)
    for name, module in list(sys.modules.items()):
        if name.startswith(f"{__name__}.") and hasattr(module, "set_num_threads"):
            module.set_num_threads(n)


def get_num_threads():
    return _optim.get_num_threads()


# Run the calling thread's long jobs on its OpenMP team (torch's, beside torch) instead
# of fastopt's pool (fo_pool.h says why); returns the previous setting. fastopt.torch calls it
# twice a step, so it is the compiled function itself.
use_openmp_team = _pool.use_openmp_team
