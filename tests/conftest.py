import os
import sys
import threading

import numpy as np
import pytest

import fastopt as fo

try:  # the property tests' settings: the same examples on every run (CI cannot be flaky), no
    # per-example deadline on a loaded CI machine, no example database written into the
    # checkout, a failure's reproduction blob printed
    from hypothesis import settings as _hypothesis_settings
except ImportError:
    pass
else:
    _hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, database=None,
                                          print_blob=True)
    # new examples at every run, for hunting (HYPOTHESIS_PROFILE=explore): random seeds found
    # an order-dependent case in the layer fuzz's generator that CI's fixed ones never drew
    _hypothesis_settings.register_profile("explore", derandomize=False, deadline=None,
                                          database=None, print_blob=True)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

AVAILABLE = fo.backends()
# CI runs the suite once per backend with FASTOPT_BACKEND set: each run then holds that backend
# to the reference. Without it, every available backend is checked in one run.
GRID_BACKENDS = [os.environ["FASTOPT_BACKEND"]] if os.environ.get("FASTOPT_BACKEND") else AVAILABLE
COMPILED = [b for b in GRID_BACKENDS if b in ("cython", "numba")]
DTYPES = [np.float32, np.float64]


class OwnArithmetic(np.ndarray):
    """An ndarray subclass with arithmetic of its own, as a units library's arrays (this one
    computes in thousandths): the kernels must refuse it, as np.matrix."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = [np.asarray(x) / 1000 if isinstance(x, OwnArithmetic) else x for x in inputs]
        return getattr(ufunc, method)(*inputs, **kwargs)


class OwnOperators(np.ndarray):
    """An ndarray subclass with arithmetic of its own through Python's operators, as
    np.matrix has: the kernels must refuse it too."""

    def __mul__(self, other):
        return np.multiply(np.asarray(self), other) * 1000

    __rmul__ = __mul__

    def __ge__(self, other):        # (the reference compares, Adamax's max say)
        return np.asarray(self) < other


class WatchedLock:
    """Stands in for an optimizer's step lock (``opt._lock = WatchedLock(opt._lock)``) and
    tells when a thread other than the one that made it starts to wait for it: a test that
    holds it then knows, without timing anything, that the other thread is held there."""

    def __init__(self, lock):
        self._lock, self._maker = lock, threading.get_ident()
        self.waiting = threading.Event()

    def acquire(self, *args, **kwargs):
        if threading.get_ident() != self._maker:
            self.waiting.set()
        return self._lock.acquire(*args, **kwargs)

    __enter__ = acquire

    def release(self):
        self._lock.release()

    def __exit__(self, *exc_info):
        self.release()


def held_at(lock, thread):
    """Start ``thread`` while this thread holds ``lock`` (a :class:`WatchedLock`) and return
    once ``thread`` waits for it (AssertionError if it never does: it did not take the lock)."""
    thread.start()
    assert lock.waiting.wait(30), "the other thread did not wait for the step's lock"


def tolerance(dtype):
    """float64 to 1e-12 relative, float32 to a few ulps (DESIGN.md, Tests)."""
    return dict(rtol=1e-12, atol=0) if np.dtype(dtype) == np.float64 else dict(rtol=5e-7, atol=0)


def assert_close(actual, expected, dtype, err_msg=""):
    np.testing.assert_allclose(actual, expected, err_msg=err_msg, equal_nan=True,
                               **tolerance(dtype))


def layout_like(a, layout):
    """A copy of ``a`` in the given memory layout: contiguous; strided (every other element of
    a wider buffer); transposed (Fortran order, or reversed for 1-D)."""
    if layout == "contiguous" or a.ndim == 0:
        return a.copy()
    if layout == "strided":
        out = np.zeros(a.shape + (2,), a.dtype)[..., 0]
    elif a.ndim == 1:
        out = np.zeros(a.shape, a.dtype)[::-1]
    else:
        out = np.zeros(a.shape[::-1], a.dtype).T
    out[...] = a
    return out


LAYOUTS = ["C", "F", "T", "strided", "reversed", "unaligned", "swapped"]


def relayout(a, how):
    """A copy of ``a`` (any rank) in the memory layout ``how``: "C"; "F" (Fortran order);
    "T" (the transpose of a C-ordered array: Fortran order as the course's column-major
    examples arrive, a view whose ``.base`` is not itself); "strided" (every other element
    of a wider buffer along each axis); "reversed" (negative strides on every axis);
    "unaligned" (C order, the data one byte off its dtype's alignment); "swapped" (C order,
    non-native byte order)."""
    a = np.asarray(a)
    if how == "C":
        return np.array(a, order="C")
    if how == "F":
        return np.array(a, order="F")
    if how == "T":
        return np.array(a.T, order="C").T
    if how == "strided":
        out = np.zeros(tuple(2 * n for n in a.shape), a.dtype)[(slice(None, None, 2),) * a.ndim
                                                                  + (Ellipsis,)]
    elif how == "reversed":
        out = np.zeros(a.shape, a.dtype)[(slice(None, None, -1),) * a.ndim + (Ellipsis,)]
    elif how == "unaligned":
        out = np.zeros(a.nbytes + 1, np.uint8)[1:].view(a.dtype).reshape(a.shape)
    elif how == "swapped":
        out = np.zeros(a.shape, a.dtype.newbyteorder())
    else:
        raise ValueError(f"unknown layout {how!r}")
    out[...] = a
    return out


@pytest.fixture(params=GRID_BACKENDS)
def backend(request):
    with fo.use_backend(request.param):
        yield request.param


@pytest.fixture(params=DTYPES, ids=["f32", "f64"])
def dtype(request):
    return request.param


torch = None
try:  # an optional peer: parity tests skip cleanly without it
    import torch  # noqa: F811
except ImportError:
    pass

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def optim_db_params(names, skips):
    """pytest params ``(name, kwargs)`` of every CPU input torch's own optimizer tests
    (``optim_db``) give the torch.optim classes ``names``; ``skips(kwargs)`` lists the reasons
    to skip one (none: it runs). A single skipped param where torch or optim_db is missing."""
    if torch is None:
        return [pytest.param(None, None, marks=pytest.mark.skip(reason="torch is not installed"))]
    try:
        from torch.testing._internal.common_optimizers import optim_db
    except Exception as exc:    # expecttest missing, or torch moved its private test module
        reason = f"torch's optim_db is not importable: {exc!r}"
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=reason))]
    cases = []
    for info in optim_db:
        name = info.optim_cls.__name__
        if name not in names or info.optim_cls is not getattr(torch.optim, name):
            continue
        for inp in info.optim_inputs_func(device="cpu"):
            why = skips(inp.kwargs)
            marks = [pytest.mark.skip(reason="; ".join(why))] if why else []
            cases.append(pytest.param(name, inp.kwargs, id=f"{name}-{inp.desc}", marks=marks))
    return cases

def kernel_builds(family):
    """Every build of a Cython kernel family present here that this CPU runs (the portable
    one, and the AVX-512 ones on a CPU with AVX-512: importing them elsewhere is SIGILL)."""
    import importlib
    try:
        base = importlib.import_module(f"fastopt._kernels.{family}")
    except ImportError:
        return []
    from fastopt._kernels import AVX512_BUILDS
    builds = [base]
    for name in AVX512_BUILDS[family] if base.cpu_has_avx512() else ():
        try:
            builds.append(importlib.import_module(f"fastopt._kernels.{name}"))
        except ImportError:
            pass
    return builds


def cython_builds():
    """The cython backend once per build of its kernels present here that this CPU runs
    (portable, then AVX-512; the optimizer steps' AVX-512 build with 256-bit vectors, then
    with 512-bit ones): a backend namespace (fastopt._backend.Namespace) over that build's
    optim and layers modules, its threads set on both. Install one with
    :func:`use_cython_build`: fastopt.ops and fastopt.layers call the active namespace,
    whose kernels were bound when it was built, so patching a name of fastopt._kernels (or
    of a module) changes nothing they call."""
    import types
    from fastopt import _backend
    optim, layers = kernel_builds("optim"), kernel_builds("layers")
    if (len(optim) > 1) != (len(layers) > 1):     # one family's AVX-512 build missing
        return []
    if optim:
        from fastopt._kernels import pool           # (one per process, whichever build)
    namespaces = []
    # the optimizer steps' AVX-512 builds (256- and 512-bit vectors) with the layers' one
    for o, lay in zip(optim, layers[:1] + layers[1:] * (len(optim) - 1)):
        def set_num_threads(n, modules=(o, lay)):
            for module in modules:
                module.set_num_threads(n)
        package = types.SimpleNamespace(
            __name__=o.__name__, KERNEL_MODULES=(o, lay), set_num_threads=set_num_threads,
            get_num_threads=o.get_num_threads, use_openmp_team=pool.use_openmp_team)
        namespaces.append(_backend.Namespace("cython", package))
    return namespaces


def use_cython_build(monkeypatch, namespace):
    """Make ``namespace`` (one of :func:`cython_builds`) the cython backend until the test
    ends (fo.use_backend("cython") then selects it); the active backend is restored too."""
    from fastopt import _backend
    _backend._load("cython")            # the real one loaded (restored after the test)
    monkeypatch.setattr(_backend, "active", _backend.active)
    monkeypatch.setitem(_backend._loaded, "cython", namespace)


# The start of the Ctrl-C trial scripts (tests/test_optimizers.py, test_torch_atomicity.py):
# Python's SIGINT handler, and a SIGINT sent from another process at a random moment.
SIGINT_SOON = r"""
import os, random, signal, subprocess, sys
random = random.Random(0)
# (a background job of a shell starts with SIGINT ignored, which Python keeps)
signal.signal(signal.SIGINT, signal.default_int_handler)


def interrupt_soon():      # a process that sends this one SIGINT 2-4 ms from now
    return subprocess.Popen(["sh", "-c", "sleep %.4f; kill -INT %d"
                             % (0.002 + random.uniform(0, 0.002), os.getpid())])


# Another SIGINT once 50 steps ran after `killer` sent its own: that one was lost (a
# KeyboardInterrupt raised in a weakref callback is printed and ignored).
def again_if_lost(killer, late):
    if killer.poll() is None:
        return killer, 0
    return (interrupt_soon(), 0) if late >= 50 else (killer, late + 1)
"""


# A signal handler's points in fastopt's code, for tests that raise Ctrl-C at each in turn
def raising_at(k):
    """A trace function raising KeyboardInterrupt at the ``k``-th point of a call where
    CPython runs a signal handler in fastopt's code: as a Python function it calls begins
    (its own, torch's ``Tensor.__hash__``: 3.11 on), and in its frames as any call returns
    (3.10; 3.11 on after C calls, but for the CALL_INTRINSIC ones of 3.12 on, which run no
    handler) and at a jump back: after it jumps, and on 3.13 at the jump itself, where 3.13
    runs them (there the jump of some loops lies outside their try: cpython#130279). Returns
    it and the count of points."""
    import dis
    ours = os.path.dirname(fo.__file__)
    seen = [0]
    checks_before_jumping = sys.version_info >= (3, 13)

    def point():
        seen[0] += 1
        if seen[0] == k:
            sys.settrace(None)
            raise KeyboardInterrupt

    def in_ours(frame, event, arg):
        if event == "opcode":
            name = last.get(id(frame))
            current = dis.opname[frame.f_code.co_code[frame.f_lasti]]
            if checks_before_jumping and current == "JUMP_BACKWARD":
                point()
            elif name is not None and (
                    name.startswith("CALL") and not name.startswith("CALL_INTRINSIC")
                    or "JUMP_BACKWARD" in name and not checks_before_jumping
                    or name == "JUMP_ABSOLUTE"):
                point()
            last[id(frame)] = current
        return in_ours
    last = {}   # each frame's last instruction

    def tracer(frame, event, arg):
        caller = frame.f_back
        if caller is not None and caller.f_code.co_filename.startswith(ours):
            point()
        if not frame.f_code.co_filename.startswith(ours):
            return None
        # (f_trace first: on 3.12 on, a frame whose f_trace_opcodes is set before it got
        # no opcode events, and 3.13 sweeps saw half their points)
        frame.f_trace = in_ours
        frame.f_trace_opcodes, frame.f_trace_lines = True, False
        last[id(frame)] = None
        return in_ours
    return tracer, seen


def sweep_interrupts(make, call, check):
    """For k = 1, 2, ...: ``made = make()``, ``call(made)`` with KeyboardInterrupt raised at
    its k-th point (:func:`raising_at`), then ``check(made, k)``; until a call has no k-th
    point. Returns the number of points."""
    k = 0
    while True:
        k += 1
        made = make()
        tracer, seen = raising_at(k)
        sys.settrace(tracer)
        try:
            call(made)
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        if seen[0] < k:
            return k - 1
        check(made, k)


def c_math_library(why):
    """The C library's math functions (ctypes), or a skip saying ``why`` they were wanted."""
    import ctypes
    import ctypes.util
    import platform
    if platform.machine() not in ("x86_64", "AMD64") or not ctypes.util.find_library("m"):
        pytest.skip(f"{why} through the C library (x86-64)")
    return ctypes.CDLL(ctypes.util.find_library("m"))
