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
A wheel built here and installed on a CPU without the ISA is refused at import (fastopt._cpu),
and the numba backend serves. CC may hold several words (CC="ccache gcc").
"""
import glob
import hashlib
import itertools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

FAMILIES = ["optim", "layers", "stream", "pool"]
# Families also built for x86-64-v4 (AVX-512), from stubs that include <family>.pyx, each with
# its own vector width; fastopt._kernels picks one at import when the CPU has AVX-512.
# The optimizer steps come in two widths, as the faster one depends on the core: on Zen 4
# (512-bit operations split in two, and every 64-byte access of an unaligned array splits a
# cache line) 512-bit loops ran 1.2-2.7x slower than the AVX2 build (Adam 1e5 float32, one
# thread: 1.08 against 0.59 ns/element) and 256-bit ones match it; on Zen 5, whose divider is
# 512 bits wide, 512-bit loops run 1.2-1.8x faster than 256-bit ones (Adam 0.25 against 0.32,
# RMSprop 0.17 against 0.29, float64 Adam 0.48 against 0.86). The layers keep 512-bit vectors:
# batch norm's float64 sweeps gain 20-30% from them on Zen 4 too.
WIDE_MARCH = "-march=x86-64-v4"
# (fastopt._kernels.AVX512_BUILDS names them too, for choosing one at import). The 256-bit
# build, on cores whose divider is not 512 bits wide, also takes part of its float32 square
# roots on the FMA units (FO_ROOT_ON_FMA: src/fastopt/_kernels/fo_root.h).
WIDE_VARIANTS = {"optim_avx512": ["-mprefer-vector-width=256", "-DFO_ROOT_ON_FMA"],
                 "optim_avx512_zmm": ["-mprefer-vector-width=512"],
                 "layers_avx512": []}
BASE_FLAGS = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-fno-trapping-math",
              # unswitch every loop-invariant option branch of a kernel (GCC stops at 3 levels
              # and 50 insns by default, leaving e.g. plain RMSprop scalar and 10x slower)
              "--param=max-unswitch-insns=2000", "--param=max-unswitch-level=6",
              # keep each kernel's loop in its own function: inlined into the big Python
              # wrapper, GCC left the serial SGD loop scalar (10x slower); `cdef inline`
              # helpers are still inlined
              "-fno-inline-functions"]
# no debug info, unless CFLAGS ask for it: Python's own CFLAGS' -g made the kernels 19 MB
NO_DEBUG_INFO = "-g0"


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
        if _compiles(cc, [f"-march={march}"]):
            return [f"-march={march}"]
        # (pip shows a build's warnings only with -v; python -m fastopt prints the flags)
        warnings.warn(f"fastopt: the C compiler refuses -march={march} (FASTOPT_MARCH); "
                      "building for the compiler's default ISA, without the AVX-512 variants")
        return []
    if platform.machine().lower() in ("x86_64", "amd64"):
        # v3 = AVX2 + FMA; prefer 256-bit vectors on AVX-512 machines too (no clock penalty).
        # Only where this CPU runs it: the portable build is imported unconditionally.
        v3 = ["-march=x86-64-v3"]
        return v3 if _compiles(cc, v3) and _compiles(cc, [], HOST_V3_PROBE, run=True) else []
    return []


def _is_wide(ext):
    return ext.name.rsplit(".", 1)[-1] in WIDE_VARIANTS


def _compiler_command(compiler):
    """The words that run the C compiler, without its flags: ``CC="ccache gcc"`` gives
    ``["ccache", "gcc"]`` (probing with only the first word would drop every flag)."""
    words = list(getattr(compiler, "compiler_so", None) or ["cc"])
    return list(itertools.takewhile(lambda w: not w.startswith("-"), words)) or ["cc"]


def _digest(*parts):
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else repr(part).encode())
        h.update(b"\0")
    return h.hexdigest()


# what an install without the kernels tells its user to do: pip keeps the wheel it built without
# them in its cache and installs that one again unless told not to (q69)
REINSTALL = ("reinstall with a working C compiler for the fast backend, past pip's cache (pip "
             "install --no-cache-dir --force-reinstall --no-deps fastopt, or the path or file "
             "you installed from)")

BUILD_INFO = '''"""Written by setup.py when building the Cython kernels: how, or why not."""
ERROR = {error!r}
MARCH = {march!r}
FLAGS = {flags!r}
'''


class BuildExt(build_ext):
    """Probe the compiler once, apply flags to every extension, and never fail the install.

    An extension is reused only when made with the same compiler, flags and generated C source
    (a key stored in the build directory; otherwise it is rebuilt), and a build that
    fails removes its outputs: the install then has no compiled kernels rather than stale ones.
    ``_build_info.py`` next to the extension records the flags (fastopt._kernels checks the
    CPU runs that ISA before importing them) or why the build failed (the backend says so).
    """

    def build_extensions(self):
        cc = _compiler_command(self.compiler)
        if not _compiles(cc, []):
            self._fail(f"no working C compiler when fastopt was installed ({' '.join(cc)} "
                       f"cannot build a C program); {REINSTALL}")
            return
        asked = [f for f in os.environ.get("CFLAGS", "").split() if f.startswith("-g")]
        base = BASE_FLAGS + ([] if asked else [NO_DEBUG_INFO])
        flags = [f for f in base if _compiles(cc, [f])] + _isa_flags(cc)
        openmp = (os.environ.get("FASTOPT_NO_OPENMP", "0") in ("", "0")
                  and _compiles(cc, ["-fopenmp"]))
        if not openmp:
            warnings.warn("fastopt: building without OpenMP; the compiled kernels still run on "
                          "fastopt's own thread pool, but fastopt.torch never hands a long step "
                          "to torch's OpenMP team")
        compile_args = flags + (["-fopenmp"] if openmp else [])
        wide_ok = not os.environ.get("FASTOPT_MARCH") and _compiles(cc, [WIDE_MARCH])
        self._remove_outputs([e for e in self.extensions if not wide_ok and _is_wide(e)])
        self.extensions = [e for e in self.extensions if wide_ok or not _is_wide(e)]
        for ext in self.extensions:
            args = compile_args
            if _is_wide(ext):
                args = ([f for f in compile_args if not f.startswith("-march")] + [WIDE_MARCH]
                        + WIDE_VARIANTS[ext.name.rsplit(".", 1)[-1]])
            ext.extra_compile_args = args
            ext.extra_link_args = ["-fopenmp"] if openmp else []
            # the extension reports its own flags (python -m fastopt prints them)
            ext.define_macros.append(("FASTOPT_BUILD_FLAGS", '"%s"' % " ".join(args)))
        # one compiler per extension at once, as many as there are CPUs (`-j N` sets another
        # count): the two big ones, the optimizer kernels in two ISA variants, take most of it
        if not self.parallel:
            self.parallel = min(len(self.extensions), os.cpu_count() or 1)
        try:
            super().build_extensions()
        except Exception as exc:  # missing headers, a compiler error, ...: numba/numpy serve
            self._fail(f"the C build failed when fastopt was installed ({exc}); {REINSTALL}")
            return
        march = [f.split("=", 1)[1] for f in compile_args if f.startswith("-march=")]
        self._write_info(error=None, march=march[-1] if march else None,
                         flags=" ".join(compile_args))

    def build_extension(self, ext):
        """Build ``ext``, from scratch unless its outputs were made under the same key. (The
        extensions build in parallel threads: nothing shared is changed here.)"""
        stamp, key = self._stamp(ext)
        try:
            with open(stamp) as f:
                same = f.read() == key
        except OSError:
            same = False
        if os.path.exists(stamp):
            os.remove(stamp)    # until this build succeeds
        if not same:            # a missing output is rebuilt: its sources are all compiled
            self._remove_outputs([ext])
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._remove_outputs([ext])
            if not _is_wide(ext):
                raise
            # the AVX-512 build is optional: the portable one serves
            warnings.warn(f"fastopt: {ext.name} not built ({exc})")
            return
        with open(stamp, "w") as f:
            f.write(key)

    def _stamp(self, ext):
        """Where the key of ``ext``'s outputs is kept, and this build's key: the compiler, the
        extension's flags and macros, its generated C source."""
        parts = [self.compiler.compiler_so, self.compiler.linker_so, ext.name,
                 ext.extra_compile_args, ext.extra_link_args, ext.define_macros, ext.include_dirs]
        for source in ext.sources + ext.depends:      # the C, and the headers it includes
            with open(source, "rb") as f:
                parts.append(f.read())
        output = os.path.abspath(self.get_ext_fullpath(ext.name))
        os.makedirs(self.build_temp, exist_ok=True)
        return os.path.join(self.build_temp, f"{_digest(output)[:16]}.key"), _digest(*parts)

    def _remove_outputs(self, exts):
        for ext in exts:
            path = self.get_ext_fullpath(ext.name)
            if os.path.exists(path):
                os.remove(path)

    def _fail(self, reason):
        self._failed = True
        self._remove_outputs(self.extensions)
        self._write_info(error=reason, march=None, flags=None)
        warnings.warn(f"fastopt: Cython kernels not built: {reason}; "
                      "the numba and numpy backends will be used")

    def _write_info(self, **info):
        self._info = os.path.join(
            os.path.dirname(self.get_ext_fullpath("fastopt._kernels.stream")), "_build_info.py")
        os.makedirs(os.path.dirname(self._info), exist_ok=True)
        with open(self._info, "w") as f:
            f.write(BUILD_INFO.format(**info))

    def run(self):
        inplace, self._failed = self.inplace, False
        try:
            super().run()
        except Exception as exc:
            if not self._failed:    # else: the failure was reported, the copy to src/ failed
                self._fail(f"the C build failed when fastopt was installed ({exc}); {REINSTALL}")
        if inplace:   # setuptools builds in build_lib, then copies only the extensions to src/
            package = self.get_finalized_command("build_py").get_package_dir("fastopt._kernels")
            shutil.copyfile(self._info, os.path.join(package, "_build_info.py"))


def generate_glue():
    """Render the Cython entry points of every registry kernel and 16-bit form
    (_kernels/_glue.pxi.tp with fastopt/_registry.py, loaded by path: it imports nothing);
    rewrite only on change, so cythonize sees an unchanged include as up to date."""
    import importlib.util
    from Cython import Tempita
    spec = importlib.util.spec_from_file_location("_registry", "src/fastopt/_registry.py")
    registry = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = registry     # dataclasses resolve string annotations there
    spec.loader.exec_module(registry)
    template = "src/fastopt/_kernels/_glue.pxi.tp"
    with open(template) as f:
        text = Tempita.sub(f.read(), kernels=registry.KERNELS, halves=registry.HALF_KERNELS,
                           get=registry.get)
    target = template[:-len(".tp")]
    if not os.path.exists(target) or open(target).read() != text:
        with open(target, "w") as f:
            f.write(text)


def extensions():
    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError as exc:
        print(f"fastopt: cannot cythonize ({exc}); installing without compiled kernels",
              file=sys.stderr)
        return []
    generate_glue()
    headers = sorted(glob.glob("src/fastopt/_kernels/*.h"))
    exts = [Extension(f"fastopt._kernels.{name}", [f"src/fastopt/_kernels/{name}.pyx"],
                      include_dirs=[numpy.get_include()], depends=headers,
                      define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
            for name in FAMILIES + list(WIDE_VARIANTS)]
    return cythonize(exts, compiler_directives={"language_level": 3}, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
