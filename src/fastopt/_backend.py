"""Backend registry: which kernel namespaces exist, which one is active, and thread counts.

A backend is a package whose ``KERNEL_MODULES`` define every kernel of the registry
(``fastopt._registry``) under the registry's signature, plus ``set_num_threads``/
``get_num_threads``/``use_openmp_team``; what ``fastopt.ops`` calls is the namespace the
registry builds from it (:func:`fastopt._registry.backend_namespace`). Backends are imported
lazily, so a process that only uses the default never pays for importing numba.
"""
import collections
import contextlib
import functools
import importlib
# (logging, before this package's fork handlers are registered: handlers registered later run
# first before a fork, and logging's holds its lock through the fork; numba imports logging
# lazily, at its first compile, after them, and a fork then waited for a step in another
# thread that waited, compiling, for that lock: the parent hung)
import logging  # noqa: F401
import numbers
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import _cpu

from . import _threads

from . import _registry
from ._hyper import as_flag, as_real
from ._multi import foreach
from .reference import lowp

NAMES = ("cython", "numba", "numpy")
_MODULES = {"cython": "fastopt._kernels", "numba": "fastopt._numba", "numpy": "fastopt.reference"}

_loaded: dict[str, "Namespace"] = {}    # name -> its kernel namespace
_failed: dict[str, str] = {}            # name -> reason it cannot be used
active: Any = None    # the namespace of the backend in use; fastopt.ops dispatches through it
_active_name = ""     # its name (both are set at import, by _choose_default)


_num_threads = _threads.default_threads()


class Namespace:
    """One backend's kernels as :mod:`fastopt.ops` and :mod:`fastopt.layers` call them: every
    kernel of the registry and its list form (the package's own ``<name>_multi`` if it has
    one, else :func:`fastopt._multi.foreach` of the single form), the layer kernels, and the
    thread controls. ImportError naming any kernel the package lacks."""

    def __init__(self, name, package):
        self.name, self.package = name, package
        found = {}
        for module in package.KERNEL_MODULES:
            found.update((k, v) for k, v in vars(module).items() if not k.startswith("_"))
        kernels = _registry.KERNELS + _registry.HALF_KERNELS
        missing = [k.name for k in kernels if k.name not in found]
        missing += [layer for layer in _registry.LAYERS if layer not in found]
        if missing:
            raise ImportError(f"it lacks the kernels {', '.join(missing)}")
        for kernel in kernels:
            single = found[kernel.name]
            if name == "numpy":
                single = _as_compiled(single, kernel.scalars, kernel.options)
            setattr(self, kernel.name, single)
            check = {"check": lowp.check_half_arrays} if kernel in _registry.HALF_KERNELS else {}
            setattr(self, kernel.multi,
                    found.get(kernel.multi) or foreach(single, kernel, **check))
        for layer in _registry.LAYERS:
            setattr(self, layer, _as_compiled(found[layer], ()) if name == "numpy"
                    else found[layer])
        self.set_num_threads = package.set_num_threads
        self.get_num_threads = package.get_num_threads
        self.use_openmp_team = package.use_openmp_team

    def __repr__(self):
        return f"<fastopt backend {self.name!r} ({self.package.__name__})>"


def _as_compiled(reference, names, options=()):
    """``reference`` (a NumPy reference kernel) called as the compiled kernels are: its scalars
    ``names`` taken as Python floats and its ``options`` as True or False (anything else
    refused as the compiled kernels refuse it, by fastopt._hyper, before the reference
    touches an array: it broadcast a size-1 array and took a flag by its truth), and IEEE
    results without NumPy's floating-point warnings
    (an inf grad times a clip's factor 0 is NaN on every backend; only NumPy would warn, an
    error under ``-W error``). The reference computes with a scalar as given, and NumPy
    (NEP 50) computes float32 arrays times a NumPy float64 (an ``lr`` from a NumPy schedule, a
    bias correction folded from a step count out of ``np.arange``) in float64; the compiled
    kernels take any scalar as a C double and compute in the arrays' dtype, as NumPy does
    with a Python float."""
    names, options = frozenset(names), frozenset(options)

    @functools.wraps(reference)
    def call(*arrays, **scalars):
        for key in names.intersection(scalars):
            if type(scalars[key]) is not float:
                scalars[key] = as_real(key, scalars[key])
        for key in options.intersection(scalars):
            if scalars[key] is not True and scalars[key] is not False:
                scalars[key] = as_flag(key, scalars[key])
        with np.errstate(all="ignore"):
            kernel = reference      # (bound last: fastopt._multi._kernel_began)
            return kernel(*arrays, **scalars)
    return call


def _canonical(name):
    """A backend's name as FASTOPT_BACKEND takes it: ``"Numba"`` and ``" numba "`` too;
    TypeError for a name that is not a str (None had been an "unknown backend")."""
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a str (one of {list(NAMES)}), got "
                        f"{type(name).__name__}")
    return name.strip().lower()


def _load(name):
    if name not in NAMES:
        raise RuntimeError(f"unknown backend {name!r}; choose from {list(NAMES)}")
    if name in _loaded:
        return _loaded[name]
    if name in _failed:
        raise RuntimeError(f"backend {name!r} is not available: {_failed[name]}")
    try:
        module = Namespace(name, importlib.import_module(_MODULES[name]))
    except Exception as exc:     # ImportError, or numba's own refusal (NUMBA_NUM_THREADS=0)
        if isinstance(exc, _cpu.UnusableBuild):    # fastopt._kernels says why and what to do
            _failed[name] = str(exc)
        else:
            reason = {"cython": "the compiled extension does not import",
                      "numba": "numba is not installed or does not import"}.get(name, "")
            what = "" if isinstance(exc, ImportError) else f"{type(exc).__name__}: "
            _failed[name] = f"{reason} ({what}{exc})"
        raise RuntimeError(f"backend {name!r} is not available: {_failed[name]}") from None
    module.set_num_threads(_num_threads)
    _loaded[name] = module
    if name == "numba":
        # threadpoolctl sees fastopt through the compiled extension's library, and the numba
        # backend takes that library's count as its limit: load it too where it is built
        # (with FASTOPT_BACKEND=numba nothing else had, and threadpool_limits(1) did nothing)
        with contextlib.suppress(RuntimeError):
            _load("cython")
    return module


def backends() -> list[str]:
    """Names of the backends available here, fastest first."""
    available = []
    for name in NAMES:
        try:
            _load(name)
        except RuntimeError:
            continue
        available.append(name)
    return available


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot be used here, or None when it can (TypeError for a name
    that is not a str)."""
    name = _canonical(name)
    try:
        _load(name)
    except RuntimeError:
        return _failed.get(name, f"unknown backend {name!r}")
    return None


def get_backend() -> str:
    """Name of the backend in use."""
    return _active_name


_block_lock = threading.Lock()
# the thread inside use_backend blocks, how deep, and the backend its outermost block restores
_block_owner = [None, 0, None]
# those blocks, open, in the order they began: each a list [name] (known by identity)
_open_blocks: list[list[str]] = []


def set_backend(name: str) -> None:
    """Use backend ``name`` from now on.

    Parameters
    ----------
    name : str
        ``"cython"``, ``"numba"`` or ``"numpy"`` (see :func:`backends`), in any case (as
        the environment variable ``FASTOPT_BACKEND``).

    Raises
    ------
    TypeError
        ``name`` is not a str.
    RuntimeError
        An unknown backend, or one not available here (saying why), or another thread is
        inside a :func:`use_backend` block (whose code would run on it, and whose end would
        undo it).
    """
    global active, _active_name
    with _block_lock:
        owner, depth, _ = _block_owner
        if depth and owner != threading.get_ident():
            raise RuntimeError(
                f"fastopt.set_backend({name!r}): another thread is inside a use_backend "
                "block, whose code would run on this backend, and whose end would undo it")
        name = _canonical(name)
        module = _load(name)
        active, _active_name = module, name


def _forget_other_threads_block():
    """In a child after fork, where only the forking thread exists: a block another thread
    of the parent was in is left as it would have been (its backend restored), and a lock
    that thread held is made again; the forking thread's own block goes on."""
    global _block_lock
    _block_lock = threading.Lock()
    owner, depth, restore = _block_owner
    if depth and owner != threading.get_ident():
        _block_owner[:] = [None, 0, None]
        _open_blocks.clear()
        set_backend(restore)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_other_threads_block)


class _LaunchGate:
    """``with LAUNCH_GATE:`` around each parallel launch of the numba backend: a fork waits
    for the launches in progress in other threads, and a launch begun meanwhile waits for the
    fork. A child forked while another thread was in one hung on a lock oneTBB held then (Numba
    alone, without fastopt, hung 8 children of 150). Launches from several threads still run
    at once (a lock would make them take turns). Its fork handlers are registered here, before
    fastopt.optim's, so that at a fork they run after those take every optimizer's step lock:
    a step launches more than once, and holding its lock it would wait here for the fork. A
    fork waits at most FORK_WAIT seconds (a launch's entry left by an interrupt as it ended
    would hold every fork up for good), and never for the forking thread's own launch (a
    signal handler that forks runs as a launch returns, inside it).

    Once Numba's oneTBB layer has started (``settle_threads``), a fork then also waits, at most
    SETTLE_WAIT seconds, until no thread of the process but Python's is running: oneTBB's
    workers run on after a launch has returned (leaving its arena, spinning), and a child
    forked while one held a lock of oneTBB's hung in its first parallel call. On a loaded
    machine (two busy processes on the 2 cores) tests/test_threads.py's forks during another
    thread's layer calls hung a child within 100 forks in 5 runs of 5; with the wait none did
    in 5, which waited 7.8 ms at the median and 24 ms at most (300 forks). Python threads are
    not oneTBB's: one computing (a NumPy call) does not hold a fork up."""

    FORK_WAIT = 10.0
    SETTLE_WAIT = 0.1
    settle_threads = False

    def __init__(self) -> None:
        self._active: list[int] = []   # each launch's thread (list appends/removes: atomic)
        self._forks: collections.deque = collections.deque()   # one entry a fork in progress

    def __enter__(self) -> None:
        me = threading.get_ident()
        try:
            self._active.append(me)
            # (`while True` and a break, not `while self._forks`: CPython 3.13 runs signal
            # handlers at such a loop's jump back outside the try, cpython#130279)
            while True:
                if not self._forks:     # (read after the append: a fork that missed it waits)
                    break
                self._active.remove(me)
                while True:
                    if not self._forks:
                        break
                    time.sleep(0.0002)
                self._active.append(me)
        except BaseException:       # (Ctrl-C: a launch that did not begin is not in progress)
            if me in self._active:
                self._active.remove(me)
            raise

    def __exit__(self, *exc_info) -> None:
        with contextlib.suppress(ValueError):   # (gone in a child forked inside it)
            self._active.remove(threading.get_ident())

    def _wait_for_launches(self) -> None:
        """Before a fork, once it is entered in ``_forks``: wait for the launches of other
        threads."""
        me = threading.get_ident()
        deadline = time.monotonic() + self.FORK_WAIT
        while self._active.count(me) != len(self._active):
            if time.monotonic() > deadline:
                warnings.warn(f"fastopt: a fork waited {self.FORK_WAIT:g} s for the numba "
                              "backend's parallel calls in other threads, and goes on: the "
                              "child may hang in its first parallel call", RuntimeWarning)
                break
            time.sleep(0.0002)
        if self.settle_threads:     # (Python threads are not oneTBB's: a busy one costs none)
            _threads.wait_for_other_threads(
                self.SETTLE_WAIT, poll=0.0002,
                ignore=[t.native_id for t in threading.enumerate()])


LAUNCH_GATE = _LaunchGate()
if hasattr(os, "register_at_fork"):
    # A fork in progress is an entry in a deque, put in and taken out by the deque's own
    # methods, called from C: a Python handler can be stopped as it begins by what a signal
    # handler raises (Ctrl-C; CPython then forks on), and a lock it had left held hung every
    # later launch and fork; a blocking acquire runs signal handlers as it waits. (Before a
    # fork the handlers run last registered first, after it in order.)
    os.register_at_fork(before=LAUNCH_GATE._wait_for_launches)
    os.register_at_fork(before=functools.partial(LAUNCH_GATE._forks.append, None),
                        after_in_parent=LAUNCH_GATE._forks.pop,
                        after_in_child=LAUNCH_GATE._forks.clear)
    os.register_at_fork(after_in_child=LAUNCH_GATE._active.clear)  # (its only thread)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run a block on backend ``name``, then restore the previous one (even after an error).

    The backend is process-wide (as :func:`set_backend`): blocks may nest within one thread,
    but a block entered while another thread is inside one raises, since the two would
    switch each other's backend (and the last to leave would restore a stale one).

    Parameters
    ----------
    name : str
        ``"cython"``, ``"numba"`` or ``"numpy"``.

    Raises
    ------
    TypeError, RuntimeError
        As :func:`set_backend`, or (RuntimeError) another thread is inside a ``use_backend``
        block.

    Examples
    --------
    >>> import fastopt as fo
    >>> with fo.use_backend("numpy"):
    ...     fo.get_backend()
    'numpy'
    """
    me = threading.get_ident()
    with _block_lock:
        owner, depth, restore = _block_owner
        if depth and owner != me:
            raise RuntimeError(
                f"fastopt.use_backend({name!r}): another thread is inside a use_backend block; "
                "the backend is process-wide, so blocks in several threads at once would "
                "switch each other's backend (choose one with set_backend before starting "
                "the threads)")
        _block_owner[:] = [me, depth + 1, restore if depth else _active_name]
        block = [name]
        _open_blocks.append(block)
    try:
        set_backend(name)
        yield
    finally:
        # the backend is the innermost open block's, and once none is open the one before
        # the first began, whatever the order the blocks end in (in generators or asyncio
        # tasks of one thread they can end out of order: each restoring the backend before
        # it had left the process on an inner block's, and an inner block still open on an
        # outer one's)
        with _block_lock:
            innermost = _open_blocks[-1] is block
            del _open_blocks[next(i for i, b in enumerate(_open_blocks) if b is block)]
            after = _open_blocks[-1][0] if _open_blocks else _block_owner[2]
        if innermost:
            set_backend(after)
        with _block_lock:
            _block_owner[1] -= 1


def set_num_threads(n: int) -> None:
    """Set the threads used by the compiled backends.

    Results are bit-identical for any count (but a NaN's sign bit on the Cython backend,
    which IEEE leaves open: README, Backends).

    Parameters
    ----------
    n : int
        Threads, 1 to 256; the numba backend uses at most Numba's ``NUMBA_NUM_THREADS``
        (the CPU count unless set before numba is imported), which :func:`get_num_threads`
        then shows.

    Raises
    ------
    TypeError
        ``n`` not an int (a float, a str, a bool; as numba's and torch's set_num_threads).
    ValueError
        ``n`` not from 1 to 256. Either way nothing changes.
    """
    global _num_threads
    message = f"number of threads must be an int from 1 to {_threads.MAX_THREADS}, got {n!r}"
    if not isinstance(n, numbers.Integral) or isinstance(n, bool):
        raise TypeError(message)
    if not 1 <= n <= _threads.MAX_THREADS:
        raise ValueError(message)
    _num_threads = int(n)
    for module in _loaded.values():
        module.set_num_threads(n)


def get_num_threads() -> int:
    """Threads the compiled kernels use now (a ``threadpoolctl`` limit included; on the numba
    backend, at most Numba's own ``NUMBA_NUM_THREADS``, which defaults to the CPU count)."""
    if active is not None and active.name == "numba":
        return active.get_num_threads()
    if "cython" in _loaded:
        return _loaded["cython"].get_num_threads()
    return _num_threads


@contextlib.contextmanager
def use_num_threads(n: int) -> Iterator[None]:
    """Run a block on ``n`` threads, then restore the previous count (even after an error);
    for the benchmarks. The count restored is the one :func:`set_num_threads` gave the
    compiled kernels (a threadpoolctl limit included), not numba's own, which the CPU count
    caps: restored to every backend, that had lowered the Cython one's."""
    previous = _loaded["cython"].get_num_threads() if "cython" in _loaded else _num_threads
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)


def _choose_default():
    given = os.environ.get("FASTOPT_BACKEND", "")
    if given.strip():
        try:
            set_backend(given)   # an explicit choice that fails must say so, not fall back
        except RuntimeError as exc:
            raise RuntimeError(f"FASTOPT_BACKEND={given!r} in the environment: {exc}") from None
        return
    for name in NAMES:
        try:
            set_backend(name)
        except RuntimeError:
            continue
        if name != NAMES[0]:   # a fallback is several times slower: say so, once
            skipped = "".join(f"; {other}: {_failed[other]}" for other in NAMES[1:]
                              if other in _failed)
            warnings.warn(f"fastopt: the compiled backend is not available: {_failed[NAMES[0]]}"
                          f"{skipped}. Using {name!r} (slower). Set FASTOPT_BACKEND={name} to "
                          "choose it and silence this warning.", stacklevel=user_stacklevel())
        return


def user_stacklevel():
    """warnings.warn's stacklevel, from its caller, of the user's line (that imported fastopt,
    or called it): the first frame outside this package (importlib's frames, which warnings
    skips, uncounted)."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep

    def internal(frame):
        name = frame.f_code.co_filename
        return "importlib" in name and "_bootstrap" in name

    frame, level = sys._getframe(1), 1     # (the caller: stacklevel 1)
    while frame.f_back is not None and (
            internal(frame) or os.path.abspath(frame.f_code.co_filename).startswith(package)):
        frame = frame.f_back
        level += not internal(frame)
    return level


_choose_default()
