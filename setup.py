"""Build the Cython kernels; fall back to a pure-Python install if they cannot be built.

Flags: -O3 plus -fno-math-errno (lets sqrt inline and vectorize; nothing reads errno),
unswitching limits raised (each option combination gets its own vectorized loop) and
-ffp-contract=off (no fused multiply-add: every backend rounds the same element-wise formula the
same way, so cython, numba and the NumPy reference agree bit for bit). No fast-math flags, ever:
results keep IEEE semantics.
The ISA is x86-64-v3 (AVX2/FMA) by default when the building CPU runs it (else the compiler's
baseline); the compute-heavy families are also built for x86-64-v4 (AVX-512), which
fastopt._kernels picks at import only when the CPU has it. FASTOPT_MARCH=native (or any -march
value) builds one variant for that ISA instead. FASTOPT_NO_OPENMP=1 builds without OpenMP.
"""
import os
import platform
import subprocess
import sys
import tempfile
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

FAMILIES = ["optim", "layers", "stream"]
# families also built for x86-64-v4 (AVX-512) from a stub <family>_avx512.pyx that includes
# <family>.pyx; fastopt._kernels picks that build at import when the CPU has AVX-512
WIDE_FAMILIES = ["optim", "layers"]
WIDE_MARCH = "-march=x86-64-v4"
BASE_FLAGS = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-fno-trapping-math",
              # unswitch every loop-invariant option branch of a kernel (GCC stops at 3 levels
              # and 50 insns by default, leaving e.g. plain RMSprop scalar and 10x slower)
              "--param=max-unswitch-insns=2000", "--param=max-unswitch-level=6",
              # keep each kernel's loop in its own function: inlined into the big Python
              # wrapper, GCC left the serial SGD loop scalar (10x slower); `cdef inline`
              # helpers are still inlined
              "-fno-inline-functions"]


PROBE = "#include <math.h>\nint main(void){double x=2.0; return (int)sqrt(x) - 1;}\n"
# exit status 0 only on a CPU that runs x86-64-v3 code (AVX2, FMA, BMI2, ...)
HOST_V3_PROBE = """int main(void) {
    __builtin_cpu_init();
    return !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
             && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("movbe"));
}
"""


def _compiles(compiler_cmd, flags, src=PROBE, run=False):
    """True if the C compiler accepts ``flags`` for a small program (and, with ``run``, the
    program exits with status 0 here)."""
    with tempfile.TemporaryDirectory() as d:
        path, exe = os.path.join(d, "probe.c"), os.path.join(d, "probe")
        with open(path, "w") as f:
            f.write(src)
        cmd = [*compiler_cmd, *flags, path, "-o", exe, "-lm"]
        try:
            ok = subprocess.run(cmd, capture_output=True).returncode == 0
            return ok and (not run or subprocess.run([exe], capture_output=True).returncode == 0)
        except OSError:
            return False


def _isa_flags(cc):
    march = os.environ.get("FASTOPT_MARCH")
    if march:
        return [f"-march={march}"] if _compiles(cc, [f"-march={march}"]) else []
    if platform.machine().lower() in ("x86_64", "amd64"):
        # v3 = AVX2 + FMA; prefer 256-bit vectors on AVX-512 machines too (no clock penalty).
        # Only where this CPU runs it: the portable build is imported unconditionally.
        v3 = ["-march=x86-64-v3"]
        return v3 if _compiles(cc, v3) and _compiles(cc, [], HOST_V3_PROBE, run=True) else []
    return []


def _is_wide(ext):
    return ext.name.endswith("_avx512")


class BuildExt(build_ext):
    """Probe the compiler once, apply flags to every extension, and never fail the install."""

    def build_extensions(self):
        cc = self.compiler.compiler_so[:1] if hasattr(self.compiler, "compiler_so") else ["cc"]
        flags = [f for f in BASE_FLAGS if _compiles(cc, [f])] + _isa_flags(cc)
        openmp = (os.environ.get("FASTOPT_NO_OPENMP", "0") in ("", "0")
                  and _compiles(cc, ["-fopenmp"]))
        if not openmp:
            warnings.warn("fastopt: building without OpenMP; compiled kernels run on one thread")
        compile_args = flags + (["-fopenmp"] if openmp else [])
        wide_ok = not os.environ.get("FASTOPT_MARCH") and _compiles(cc, [WIDE_MARCH])
        self.extensions = [e for e in self.extensions if wide_ok or not _is_wide(e)]
        for ext in self.extensions:
            args = compile_args
            if _is_wide(ext):
                args = [f for f in compile_args if not f.startswith("-march")] + [WIDE_MARCH]
            ext.extra_compile_args = args
            ext.extra_link_args = ["-fopenmp"] if openmp else []
            # the extension reports its own flags (python -m fastopt prints them)
            ext.define_macros.append(("FASTOPT_BUILD_FLAGS", '"%s"' % " ".join(args)))
        try:
            super().build_extensions()
        except Exception as exc:  # no compiler, missing headers, ...: numba/numpy still serve
            warnings.warn(f"fastopt: Cython kernels not built ({exc}); "
                          "the numba and numpy backends will be used")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            if not _is_wide(ext):
                raise
            # the AVX-512 build is optional: the portable one serves
            warnings.warn(f"fastopt: {ext.name} not built ({exc})")

    def run(self):
        try:
            super().run()
        except Exception as exc:
            warnings.warn(f"fastopt: Cython kernels not built ({exc})")


def extensions():
    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError as exc:
        print(f"fastopt: cannot cythonize ({exc}); installing without compiled kernels",
              file=sys.stderr)
        return []
    exts = [Extension(f"fastopt._kernels.{name}", [f"src/fastopt/_kernels/{name}.pyx"],
                      include_dirs=[numpy.get_include()],
                      define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
            for name in FAMILIES + [f"{f}_avx512" for f in WIDE_FAMILIES]]
    return cythonize(exts, compiler_directives={"language_level": 3}, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
