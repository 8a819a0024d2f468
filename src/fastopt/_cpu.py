"""Does this CPU run the compiled kernels? Checked before importing them: code built for
x86-64-v3 dies with SIGILL on a CPU without AVX2/FMA, it cannot report the problem itself.

Pure Python on purpose (it must run before any compiled code). Only the x86-64
micro-architecture levels are known; for any other target (aarch64, ``-march=native``) or where
the CPU's features cannot be read, nothing is refused.
"""



class UnusableBuild(ImportError):
    """A backend's kernels are not in this install or cannot run here (the message says why
    and what to do): raised by importing fastopt._kernels (not built, or built for another
    CPU) or fastopt._numba (NUMBA_DISABLE_JIT)."""


# the features each x86-64 level adds, as Linux names them in /proc/cpuinfo ("abm" is LZCNT)
_V2 = {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"}
_V3 = _V2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
_V4 = _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
LEVELS = {"x86-64": set(), "x86-64-v2": _V2, "x86-64-v3": _V3, "x86-64-v4": _V4}


def host_features():
    """The CPU's feature flags (Linux names), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def missing_features(march):
    """Sorted features the ISA ``march`` (e.g. ``"x86-64-v3"``) needs and this CPU lacks;
    empty when it runs that code or when either side is unknown."""
    needed = LEVELS.get(march)
    have = host_features() if needed else None
    return sorted(needed - have) if needed and have is not None else []
