"""Does this CPU run the compiled kernels? Checked before importing them: code built for
x86-64-v3 dies with SIGILL on a CPU without AVX2/FMA, it cannot report the problem itself.

Pure Python on purpose (it must run before any compiled code). Only the x86-64
micro-architecture levels are known; for any other target (aarch64, ``-march=native``) or where
the CPU's features cannot be read, nothing is refused. Also the cache size the layers' stores
are chosen by (last_level_cache_bytes).
"""
import os


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
            for line in f:     # (`continue`: cpython#130279, see _multi._each_part)
                if not line.startswith("flags"):
                    continue
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def last_level_cache_bytes(root="/sys/devices/system/cpu/cpu0/cache"):
    """The size in bytes of the last-level cache the first CPU reads data through (its L3 on
    x86), from Linux's sysfs (``root``); None where it cannot be read. glibc's
    ``sysconf(_SC_LEVEL3_CACHE_SIZE)`` is not used: on an EPYC VM it gave 320 MiB, ten times
    the 32 MiB L3 that sysfs and lscpu name."""
    best, units = None, {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        entries = os.listdir(root)
    except OSError:
        return None
    for entry in sorted(entries):
        try:
            with open(f"{root}/{entry}/type") as f:
                kind = f.read().strip()
            with open(f"{root}/{entry}/level") as f:
                level = int(f.read())
            with open(f"{root}/{entry}/size") as f:
                size = f.read().strip()
        except (OSError, ValueError):
            continue
        try:
            nbytes = int(size[:-1]) * units[size[-1]] if size[-1:] in units else int(size)
        except ValueError:
            continue
        if kind != "Instruction" and (best is None or level > best[0]):
            best = (level, nbytes)
    return best[1] if best else None


def missing_features(march):
    """Sorted features the ISA ``march`` (e.g. ``"x86-64-v3"``) needs and this CPU lacks;
    empty when it runs that code or when either side is unknown."""
    needed = LEVELS.get(march)
    have = host_features() if needed else None
    return sorted(needed - have) if needed and have is not None else []
