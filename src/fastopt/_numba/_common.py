"""Shared by the Numba kernel families: jit options, threading, and the serial/parallel launch."""
import ctypes
import os
import platform
import sys
import threading
import time
import warnings
from collections import namedtuple

import numba
import numpy as np

from .. import _backend, _hyper, _registry
from .._layout import copies_before_writing, run_and_write_back, via_contiguous
from .._multi import _calls, _each_part, foreach
from .._validate import FLOAT_DTYPES, _owner, check_step_arrays, overlap_error

def _cacheable():
    """Whether Numba finds somewhere to cache the compiled kernels: the package's __pycache__,
    or a user-wide directory (NUMBA_CACHE_DIR, or under $HOME). Where neither is writable (a
    read-only install run by a user without a writable home) every ``cache=True`` kernel
    raised RuntimeError as this package was imported, and the backend was reported missing
    ("numba is not installed"): the kernels then compile in each process instead, said once."""
    def probe():
        pass
    try:
        numba.njit(cache=True)(probe)       # (finds its cache locator; compiles nothing)
    except RuntimeError as exc:
        warnings.warn(f"fastopt: Numba cannot cache the numba backend's kernels ({exc}); they "
                      "compile in each process. Set NUMBA_CACHE_DIR to a writable directory "
                      "to keep them.", RuntimeWarning, stacklevel=_backend.user_stacklevel())
        return False
    return True


# error_model="numpy": division by zero gives inf/nan instead of raising, and lets LLVM
# vectorize divisions. fastmath stays off: IEEE semantics, no reassociation, no FMA contraction.
JIT = dict(cache=_cacheable(), nogil=True, error_model="numpy", fastmath=False)


def _load_tbb():
    """Make oneTBB loadable for Numba. The ``tbb`` wheel puts ``libtbb.so.12`` in
    ``<prefix>/lib``, off the dynamic loader's path, so Numba's TBB layer fails to import unless
    the library is loaded first (globally, so Numba's ``tbbpool`` extension resolves it)."""
    try:
        from importlib import metadata
        files = metadata.files("tbb") or []
    except Exception:           # not installed (or no metadata): Numba looks for it itself
        return False
    for f in files:
        if f.name in ("libtbb.so.12", "libtbb.12.dylib", "tbb12.dll"):
            try:
                ctypes.CDLL(str(f.locate()), mode=ctypes.RTLD_GLOBAL)
                return True
            except OSError:
                return False
    return False


# The threading layer: oneTBB first. Its workers steal work, so a call never waits on a worker
# that is not running (OpenMP's end-of-region barrier does: with the other core busy, a 50 us
# call at 1e5 elements took 15-30 ms at the 95th percentile against 0.07-0.2 ms on TBB); it
# survives fork (GNU OpenMP aborts a forked child that launches a parallel region) and calls
# from several threads. OpenMP next (~3 us per launch), the workqueue (~70 us, and not safe
# for concurrent calls) last. A user's explicit NUMBA_THREADING_LAYER still wins.
# Where the tbb wheel is a dependency (pyproject.toml's markers) and no layer was chosen, another
# layer means a broken install (numba 0.62.0's Linux wheels had no TBB layer, numba#10240):
# said in a warning (_start_pool), since the fork safety and floating-point environment of the
# threads are the oneTBB layer's
TBB_EXPECTED = ("NUMBA_THREADING_LAYER" not in os.environ and (sys.platform, platform.machine())
                in (("linux", "x86_64"), ("win32", "AMD64")))
if "NUMBA_THREADING_LAYER" not in os.environ:
    _load_tbb()
    numba.config.THREADING_LAYER_PRIORITY = ["tbb", "omp", "workqueue"]
_pool_started = [False]      # None: no threading layer loads (_start_pool)
_no_layer = [""]             # then why
# held around each parallel launch (:func:`chunked`, :func:`launch`): the gate a fork waits
# at (_backend.LAUNCH_GATE), or under the workqueue layer, which kills the process when two
# threads launch at once, this lock, so that their launches take turns
_WORKQUEUE_LOCK = threading.Lock()
_launch_guard = [_backend.LAUNCH_GATE]


def _free_guard_in_child():
    """A child forked while another thread launched holds the lock, and no thread of its own
    would ever release it: it starts with a free one."""
    global _WORKQUEUE_LOCK
    _WORKQUEUE_LOCK = threading.Lock()
    if _launch_guard[0] is not _backend.LAUNCH_GATE:
        _launch_guard[0] = _WORKQUEUE_LOCK


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_free_guard_in_child)


def _start_pool():
    """Start Numba's thread pool (lazily: at the first parallel step), then undo the one
    global setting its OpenMP layer changes; False where no threading layer loads
    (a NUMBA_THREADING_LAYER naming one not installed), said once in a warning: the steps then
    run on one thread (raising there, after the elements before the first line start or the
    parameters before had been stepped, broke "a step that raises changes nothing"), and the
    layers, which need the layer, raise before writing anything. It turns on nested parallelism
    (max-active-levels 255) in the process's libgomp, which torch shares (its bundled libgomp
    has the same soname): torch's intra-op regions then nest, oversubscribe the cores and run
    ~35x slower after a `torch.set_num_threads` call. Our kernels never nest, so one level is
    all they need; `python -m fastopt` measures both import orders."""
    from numba.np.ufunc import parallel
    if _pool_started[0] is None:
        return False
    try:
        parallel._launch_threads()
    except ValueError as exc:         # Numba's "No threading layer could be loaded"
        _pool_started[0] = None
        _no_layer[0] = str(exc).splitlines()[0]
        warnings.warn(f"fastopt: Numba's threading layer does not load ({_no_layer[0]}): the "
                      "numba backend's steps run on one thread and its layers raise",
                      RuntimeWarning, stacklevel=_backend.user_stacklevel())
        return False
    layer = numba.threading_layer()
    if TBB_EXPECTED and layer != "tbb":
        warnings.warn(f"fastopt: Numba's oneTBB threading layer did not load, Numba runs on its "
                      f"{layer!r} layer: the numba backend's threads then "
                      "ignore the caller's floating-point environment and a fork after a "
                      "parallel call may fail (pip install 'numba>=0.62.1' 'tbb>=2021.6')",
                      RuntimeWarning, stacklevel=_backend.user_stacklevel())
    if layer == "omp":
        ctypes.CDLL("libgomp.so.1").omp_set_max_active_levels(1)
    elif layer == "tbb":
        # Numba's TBB layer starts with an empty task in a task group on the launching thread
        # and waits for the group when the interpreter exits. Where TBB sees one CPU (an
        # affinity mask or a cgroup quota) it has no workers, and a group started on another
        # thread than the one that exits is never finished: the process hung at exit after a
        # call from a non-main thread (numba#10556, oneTBB#2056). Wait for it here, on the
        # launching thread, which runs it.
        from numba.np.ufunc import tbbpool
        ctypes.CFUNCTYPE(None)(tbbpool.synchronize)()
        _backend.LAUNCH_GATE.settle_threads = True     # (its workers outlive a launch)
    elif layer == "workqueue":
        _launch_guard[0] = _WORKQUEUE_LOCK
    # the calling thread's count, got and set around each layer call: Numba's public
    # functions check the launch and the argument each time (0.55 and 0.78 us, three a call
    # added 2.4 us to a 8 us softmax); the functions they call, defined by the launch, take
    # 0.08 and 0.22 (the counts given are in range: get_num_threads bounds them)
    global _get_threads, _set_threads
    _get_threads = getattr(parallel, "_get_num_threads", numba.get_num_threads)
    _set_threads = getattr(parallel, "_set_num_threads", numba.set_num_threads)
    _pool_started[0] = True
    return True


_get_threads, _set_threads = numba.get_num_threads, numba.set_num_threads   # (_start_pool)


def threads_now():
    """The calling thread's Numba thread count (in a :class:`use_threads` block, the layer's)."""
    return _get_threads()


# Below this many elements a layer kernel runs serially: launching the parallel kernel costs more.
PARALLEL_MIN = 1 << 15
# An optimizer step's work per element is a few nanoseconds. Numba's oneTBB layer makes a task
# arena per call; its worker, still awake from the last parallel call, joins it within ~2-4 us,
# so a second thread pays once the step's arrays hold about 1 MiB, whatever the kernel (float32,
# 2 vCPUs, back to back, API calls, 1 / 2 threads: SGD (param, grad) 7.3 / 8.9 us at 1e5,
# 13.0 / 10.5 at 1.5e5; SGD with momentum 8.0 / 9.7 at 6.5e4, 14.1 / 11.9 at 1e5; Adam (four
# arrays) 8.1 / 10.6 at 4e4, 12.6 / 12.3 at 6.5e4, 19.5 / 15.6 at 1e5). The worker sleeps once
# no parallel call came for 0.3-1 ms, and waking it costs the call 10-20 us: after 1 ms of other
# work (a training loop's forward and backward) 2 threads lost on Adam at 1e5 (24 vs 16 us) and
# drew at 3e5 (54 vs 54 us; 128 vs 206 at 1e6). So a step goes parallel from
# STEP_PARALLEL_BYTES of arrays when a step that large ended less than POOL_AWAKE_SECONDS ago
# (the first of a run of calls runs alone, the next ones wake the worker and find it awake),
# and from STEP_PARALLEL_COLD_BYTES otherwise.
STEP_PARALLEL_BYTES = 1 << 20
STEP_PARALLEL_COLD_BYTES = 1 << 23
POOL_AWAKE_SECONDS = 2.5e-4
_last_step_end = [float("-inf")]     # when the last step of STEP_PARALLEL_BYTES or more ended
_num_threads = [numba.config.NUMBA_NUM_THREADS]
_EMPTY = {np.dtype(np.float32): np.empty(0, np.float32),
          np.dtype(np.float64): np.empty(0, np.float64)}


def set_num_threads(n):
    _num_threads[0] = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))


def get_num_threads():
    """This backend's thread count: fastopt.set_num_threads's, lowered by the compiled
    backend's own count when that is loaded, which threadpoolctl limits
    (``threadpool_limits(1)`` then limits this backend too; without the compiled extension
    threadpoolctl has no library of fastopt's to see)."""
    kernels = sys.modules.get("fastopt._kernels")
    limit = getattr(kernels, "get_num_threads", None)
    return _num_threads[0] if limit is None else max(1, min(_num_threads[0], limit()))


def step_views(arrays, names, nrequired):
    """Validate the arrays of one element-wise step and return flat 1-D views of them.

    ``arrays[1]`` is the read-only input (the grad), the others are updated; the first
    ``nrequired`` may not be None, the rest are optional state: None (not in use) becomes an
    empty array, which the kernels read as "absent". Returns None when the layouts differ (a
    strided slice, a transpose next to a C-ordered grad): the caller then runs on contiguous
    copies. Bad input raises as ``_validate.check_step_arrays``.
    """
    p = arrays[0]
    if type(p) is np.ndarray and p.dtype in FLOAT_DTYPES:
        # the common case, in one pass: C-contiguous arrays of the param's dtype and shape
        dtype, shape = p.dtype, p.shape
        views = []
        # the owners of the arrays written (memory numpy did not allocate has none) and the
        # grad's: _validate._apart's test, made in this pass (~1 us less a call than _apart)
        owners, written, grad_owner = set(), 0, None
        for i, a in enumerate(arrays):
            if a is None:
                if i < nrequired:
                    break
                views.append(_EMPTY[dtype])
                continue
            if type(a) is not np.ndarray or a.dtype != dtype or a.shape != shape:
                break
            flags = a.flags
            if not (flags.c_contiguous and flags.aligned) or (i != 1 and not flags.writeable):
                break
            owner = _owner(a)
            if i == 1:
                grad_owner = owner
            else:
                written += 1
                if owner is not None:
                    owners.add(id(owner))
            views.append(a if a.ndim == 1 else a.ravel())    # (a view; reshape took twice as long)
        else:
            if (len(owners) == written
                    and (arrays[1] is None or arrays[1] is p
                         or (grad_owner is not None and id(grad_owner) not in owners))):
                # each array written owns an allocation of its own, and the grad is its param
                # or in another: no two overlap, known without comparing addresses (as
                # _validate.check_disjoint)
                return views
            # Numba types a read-only array apart from a writeable one, and a tuple of mixed
            # types cannot be indexed at run time: beside a read-only grad, check read-only
            # views of them all
            checked = views if views[1].flags.writeable else list(map(read_only, views))
            pair = _first_overlap(tuple(checked))
            if pair >= 0:
                raise overlap_error(names[pair // 8], names[pair % 8])
            return views
    check_step_arrays(arrays, names, nrequired)            # raises with the standard message
    return _flat(arrays, _EMPTY[np.dtype(p.dtype.type)])   # (other layouts, subclasses)


def read_only(a):
    """A read-only view of ``a`` (~0.4 us). Numba compiles a kernel once per combination of
    writeable and read-only arrays: inputs passed read-only always cost one compilation per
    dtype (up to 12 of the layers' _dx_cols otherwise, ~2.5 s each). The machine code is the
    same either way."""
    view = a.view()
    view.setflags(write=False)
    return view


@numba.njit(**JIT)
def _first_overlap(views):
    """-1, or ``8 * i + j`` for the first views ``i < j`` whose memory overlaps, except a param
    and its grad that are the very same memory (views 0 and 1 at one address: the views are
    contiguous, of one shape and dtype). As ``_validate.check_disjoint``, at compiled speed:
    a C-contiguous view's bounds hold nothing but its elements, so overlapping bounds are
    shared memory and the exact test (_validate.share_elements) would say the same."""
    for i in range(len(views)):
        a = views[i]
        if a.size == 0:
            continue
        a_lo = a.ctypes.data
        a_hi = a_lo + a.size * a.itemsize
        for j in range(i + 1, len(views)):
            b = views[j]
            if b.size == 0:
                continue
            b_lo = b.ctypes.data
            own_grad = j == 1 and a_lo == b_lo
            if b_lo < a_hi and a_lo < b_lo + b.size * b.itemsize and not own_grad:
                return 8 * i + j
    return -1


def _flat(arrays, empty):
    order = "C" if arrays[0].flags.c_contiguous else "F"
    views = []
    for a in arrays:
        if a is None:
            views.append(empty)
        elif (a.flags.c_contiguous if order == "C" else a.flags.f_contiguous) \
                and a.flags.aligned and a.dtype.isnative:
            views.append(a.reshape(-1, order=order))
        else:
            return None
    return views


def run_step(single, arrays, views, span, parallel, packed, fields):
    """The end of each element-wise kernel of fastopt._numba.optim (``single``): its flat
    ``views`` launched (:func:`launch`), or, where :func:`step_views` found arrays of other
    layouts, ``single`` on contiguous copies, its scalars named by ``fields`` (the kernel's
    namedtuple) from ``packed``. (``kernel`` bound last: fastopt._multi._kernel_began.)"""
    if views is None:
        named = fields(*packed)._asdict()
        kernel = via_contiguous
        return kernel(single, arrays, **named)
    kernel = launch
    kernel(span, parallel, views, packed)


def list_form(single, span, parallel, pack):
    """The list form of the element-wise kernel ``single`` (its parts as this package's
    kernels name them: ``span``, ``parallel``, ``pack``): fastopt._multi.foreach with
    :func:`step_views` as the check, whose flat views are then launched as they are (``single``
    would validate them again: a course-sized Adam step over four arrays took 200 us, NumPy's
    time)."""
    def run(checked, tensors, scalars):
        packed = pack(**scalars)
        # other layouts run on contiguous copies, all made before any tensor is stepped (a
        # MemoryError making one had left the tensors before it stepped, and not counted)
        copies = {}
        if None in checked:     # (its entries are lists of views, or None)
            odd = [k for k, views in enumerate(checked) if views is None]
            copies = dict(zip(odd, copies_before_writing([tensors[k] for k in odd])))
        # (``kernel`` bound just before each call: fastopt._multi._kernel_began; an interrupt
        # between two tensors: the rest step, then it is raised)
        def step_tensor(k):
            if checked[k] is None:
                kernel = run_and_write_back
                kernel(single, tensors[k], copies[k], scalars)
            else:
                kernel = launch
                kernel(span, parallel, checked[k], packed)
            _calls.returned = True

        indices = range(len(tensors))
        kernel = _each_part
        kernel(indices, step_tensor)
    return foreach(single, _registry.get(single.__name__), check=step_views, run=run)


class use_threads:
    """``with use_threads(n):`` runs a layer's parallel kernels over ``n`` elements on
    fastopt's thread count (one thread below PARALLEL_MIN), starting the pool through
    :func:`_start_pool` first, and gives the calling thread back the Numba thread count it had
    (its own prange code's: a small softmax had left it at 1, a large one at fastopt's)."""

    __slots__ = ("nthreads", "previous")

    def __init__(self, n):
        if not _pool_started[0] and not _start_pool():
            raise RuntimeError("the numba backend's layers need Numba's threading layer, "
                               f"which does not load: {_no_layer[0]}")
        self.nthreads = get_num_threads() if n >= PARALLEL_MIN else 1

    def __enter__(self):
        self.previous = _get_threads()
        if self.previous != self.nthreads:
            _set_threads(self.nthreads)

    def __exit__(self, *exc):
        if self.previous != self.nthreads:
            _set_threads(self.previous)


def scalars(name):
    """The named scalars of the registry's kernel ``name``, as the Cython kernels' struct:
    returns ``(Scalars, pack)``.

    ``Scalars`` is a namedtuple of the kernel's scalars and options, fields named as in the
    registry; a loop names what it receives with ``s = Scalars(*packed)`` and reads ``s.lr``.
    ``pack(lr=..., ...)`` takes them keyword-only and returns a plain tuple in that same order,
    scalars as floats and options as bools: Numba types a plain tuple of floats and bools in
    about 0.1 us (a namedtuple in about 3 us), and fixed types mean one compilation per dtype.
    Neither side writes the order down, so a swapped pair cannot be written.
    """
    kernel = _registry.get(name)
    Scalars = namedtuple(f"{name}_scalars", kernel.keywords)
    # pack is written out, as namedtuple writes its __new__: keyword-only arguments cost a third
    # of building a dict and reading it back
    # a Python float, True or False as it is (a type test costs what float() and bool() did);
    # anything else as fastopt._hyper takes or refuses it (a size-1 array, a complex, a str
    # as an option: TypeError naming it), before any array is touched
    values = ([f"({n} if type({n}) is float else as_real({n!r}, {n}))" for n in kernel.scalars]
              + [f"({n} if {n} is True or {n} is False else as_flag({n!r}, {n}))"
                 for n in kernel.options])
    namespace = {"as_real": _hyper.as_real, "as_flag": _hyper.as_flag}
    exec(f"def pack(*, {', '.join(kernel.keywords)}):\n"
         f"    return ({', '.join(values)},)\n", namespace)
    pack = namespace["pack"]
    pack.__name__ = pack.__qualname__ = f"pack_{name}"
    pack.__module__ = __name__
    return Scalars, pack


def _wide_vectors():
    """Whether Numba compiles for a CPU with AVX-512: NUMBA_CPU_FEATURES's if set, else the
    host's as llvmlite reads them, which is what Numba targets by default, on every OS
    (fastopt._cpu.host_features reads /proc/cpuinfo: Linux only)."""
    features = numba.config.CPU_FEATURES
    if features is not None:
        return "+avx512f" in features.split(",")
    from llvmlite import binding
    return bool(binding.get_host_cpu_features().get("avx512f"))


# Steps of at least this many elements start their vector loop where the param starts a 64-byte
# line (the elements before it are a call of their own), as the Cython kernels' driver does:
# NumPy places arrays 16 bytes past a line, and where the arrays sit in L3 every 512-bit load
# and store split over two lines costs (Adam float32 at 1e6, every array 16 bytes past a line
# against on lines, one thread 281-329 against 215-220 us, two 138-148 against 119-133). The
# other arrays come onto lines with the param where they lie as far past one (the optimizers
# place their state so: fastopt._layout.like_lines). The 16-bit forms (``nbytes`` given) keep
# their one call: their master, not the 16-bit param, is what a line start would be for.
# Only where Numba compiles for AVX-512 (None: no split): with 256-bit vectors only every other
# load and store of a misaligned loop crosses a line, and the split call never paid for its
# ~4-6 us of slicing and dispatch (Zen 2 VM, AVX2, every array 16 bytes past a line,
# in-process alternation, split against none, one thread: SGD 27.7 / 23.1 us at 1e5, 232 / 221
# at 1e6; Adam 62.3 / 57.3, 704 / 706; two threads at 1e6: SGD 119 / 113, Adam 301 / 290;
# level at 4e6).
ALIGN_MIN = 1 << 16 if _wide_vectors() else None


@numba.njit(**JIT)
def _line_head(a):
    """The elements of ``a`` before the first that starts a 64-byte line (for a flat array of
    elements of 4 or 8 bytes). Compiled: ``__array_interface__`` cost ~2.4 us a call on a
    Zen 2 VM, this 0.45 (the dispatch): a 1e5-element SGD step on one thread, 22.1 -> 19.0
    us."""
    return (-a.ctypes.data) % 64 // a.itemsize


# A layer kernel's chunks per thread (a step takes one share per thread: see launch).
CHUNKS_PER_THREAD = 8


def chunked(kernel, iterations, *args):
    """``kernel(*args)``, its ``prange`` of ``iterations`` handed to the threads in chunks of
    about 1 / CHUNKS_PER_THREAD of a thread's share, one at a time (Numba's default splits a
    prange into one static share per thread: a late or preempted worker holds the call up
    with half the work). The kernels' sums never cross iterations: the chunking does not
    change their results.

    Measured on the layer kernels (2 vCPUs, ms-long calls): on a quiet machine the static
    shares already scaled (softmax (4096, 1000) float32: 8.67 ms at 1 thread, 4.44 at 2) and
    the chunks cost nothing (after this and the vectorized row loops: 4.76 and 2.40; Cython
    4.90 and 2.62); with both cores busy with other processes neither gained from a second
    thread (5.2-6.4 ms either way, alternated rounds). The chunks are kept for the case
    between (a worker waking late or preempted once), where :func:`launch` measured them;
    for these kernels that case is not measured."""
    threads = threads_now()
    if threads == 1:    # (small work, see use_threads: setting the chunk size and back cost
        with _launch_guard[0]:                  # a (32, 64) batch norm 3.4 us of 12.3)
            return kernel(*args)
    size = -(-iterations // (CHUNKS_PER_THREAD * threads))
    # inside the guard, which a fork waits for: set_parallel_chunksize takes Numba's init
    # locks, and a child forked while another thread held them hung in its first call
    with _launch_guard[0]:
        previous = numba.set_parallel_chunksize(max(1, size))
        try:
            return kernel(*args)
        finally:
            numba.set_parallel_chunksize(previous)


def _in_numba_call(exc):
    """Whether ``exc``, raised by a call in the frame that caught it, came from Numba's
    dispatch of that call (typing, loading, compiling: nothing written), whose frames follow
    the catching one; not from that frame itself, or from a Python signal handler run there
    as the call returned (a timeout's handler: its frames follow, none of Numba's; q65)."""
    tb = exc.__traceback__.tb_next
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith("numba."):
            return True
        tb = tb.tb_next
    return False


def launch(serial, parallel, views, scalars, nbytes=None):
    """Run a kernel over flat ``views``, serially or in one share per thread (from the
    param's first line start on, the elements before it a serial call of their own, in steps
    of ALIGN_MIN elements or more where Numba compiles for AVX-512).

    ``scalars`` is the kernel's packed scalars and options (:func:`scalars`); the loop casts
    the floats to the arrays' dtype, so arithmetic stays in that precision as in the
    reference. The shares are Numba's default split of the ``prange``, which oneTBB hands out
    by work stealing: the caller runs a share the worker has not taken, so it never waits for
    a worker that is not running. Handing out eight chunks per thread one at a time instead
    (``set_parallel_chunksize``) cost 4-6 us more per call at 1e5 elements, back to back, after
    1 ms of other work and with a busy process on the other core alike (Adam float32: 15.0
    against 10.5 us, 45 against 30 us, 23 against 17 us).

    ``nbytes``: the bytes of the step's arrays, given where ``views`` are not arrays of one
    dtype (the 16-bit kernels': 16-bit param and grad, then the float32 master, then the
    float32 state in a tuple)."""
    n = views[0].size
    nthreads = 1
    head_views = None
    if nbytes is None:
        nbytes = views[0].nbytes * len(views)                   # (a bound, for short steps)
        if nbytes >= STEP_PARALLEL_BYTES:
            nbytes = sum([v.nbytes for v in views])               # absent state is empty
        if ALIGN_MIN is not None and n >= ALIGN_MIN:
            head = _line_head(views[0])
            if head:        # (absent state stays empty: the kernels read it as absent)
                head_views = [v[:head] if v.size else v for v in views]
                views = [v[head:] if v.size else v for v in views]
                n -= head
    if nbytes >= STEP_PARALLEL_BYTES:
        awake = time.perf_counter() - _last_step_end[0] < POOL_AWAKE_SECONDS
        if awake or nbytes >= STEP_PARALLEL_COLD_BYTES:
            nthreads = get_num_threads()
    if nthreads > 1 and not _pool_started[0] and not _start_pool():
        nthreads = 1
    # (``kernel`` bound just before each call: fastopt.ops._kernel_began)
    # whether the head's call returned; the rest's began; the rest's returned
    head_done = rest = rest_done = False
    try:
        if head_views is not None:
            kernel = serial
            kernel(*head_views, scalars)
            head_done = True
        if nthreads > 1:
            previous = _get_threads()       # (the caller's, given back after)
            if previous != nthreads:
                _set_threads(nthreads)
            share = (-(-n // nthreads) + 15) & ~15      # whole 64-byte lines of float32 a thread
            try:
                with _launch_guard[0]:
                    kernel, rest = parallel, True
                    kernel(-(-n // share), share, *views, scalars)
                    rest_done = True
            finally:
                if previous != nthreads:
                    _set_threads(previous)
        else:
            kernel, rest = serial, True
            kernel(*views, scalars)
    except BaseException as exc:
        # raised once the head was stepped (an interrupt, Ctrl-C: after its call returned, or
        # as it returned, in this frame or a Python signal handler's run there; not in the
        # call's own frames, Numba compiling it), before the rest's call wrote (before it
        # began, or in Numba's dispatch of it: loading or compiling the parallel kernel, ~8
        # ms at a process's first large step; q68): the rest is stepped too, by the serial
        # kernel the head's call dispatched, before it is raised, so that a parameter is
        # stepped whole or not at all, and counted as stepped (_calls.returned)
        if head_views is not None and not rest_done:     # (not one raised in _set_threads)
            in_dispatch = _in_numba_call(exc)
            if (head_done or not rest and not in_dispatch) and (not rest or in_dispatch):
                serial(*views, scalars)
                _calls.returned = True
        raise
    if nbytes >= STEP_PARALLEL_BYTES:
        _last_step_end[0] = time.perf_counter()


@numba.njit(inline="always", **JIT)
def max_nan(a, b):
    """np.maximum: NaN in either operand gives NaN."""
    return a if (a >= b or a != a) else b


@numba.njit(inline="always", **JIT)
def lerp_coef(w, one):
    """torch.lerp's coefficient for a weight ``w`` in (0, 1] (``one``: 1 in ``w``'s dtype):
    ``w`` below 0.5, else ``w - 1`` (exact; <= 0: the lerp starts from its end)."""
    return w if w < 0.5 else w - one


@numba.njit(inline="always", **JIT)
def lerp(start, end, k):
    """torch.lerp(start, end, w) with ``k = lerp_coef(w)``: ``start + w * (end - start)`` for
    w < 0.5, else ``end - (end - start) * (1 - w)``, as torch's CPU kernel."""
    return (end if k <= 0 else start) + k * (end - start)

