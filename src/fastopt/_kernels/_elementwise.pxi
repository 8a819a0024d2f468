# The driver shared by every element-wise kernel (textually included after _common.pxi).
#
# A kernel is one span function per dtype with a uniform signature,
#     span(arrays, lo, hi, s): update elements [lo, hi) of every array,
# where ``arrays`` holds the data pointers (param, grad, state...; NULL for optional state not in
# use) and ``s`` points to the kernel's struct of named scalars and options (``<name>_scalars``,
# generated from the registry into _glue.pxi; the driver only passes it on). Because the
# signature is uniform, one driver runs a single array or a whole list of them ("multi-tensor"):
# the work is split into chunks of the total element count, not by array, which the calling
# thread and the pool's helpers (fo_pool.h) claim as they run; each walks the pieces of its
# chunk. Every element is computed on its own, so the result is bit-identical
# for any thread count and for any grouping of arrays into calls.
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.string cimport memset

from .._layout import copies_before_writing, via_contiguous
from .. import _multi
from .._multi import check_lists
from ..reference.lowp import check_half_arrays

cdef enum:
    MAX_ARRAYS = 6
    FEW_TENSORS = 8     # calls with up to this many tensors keep their tables on the stack

ctypedef void (*span32)(float** a, Py_ssize_t lo, Py_ssize_t hi, const void* s) noexcept nogil
ctypedef void (*span64)(double** a, Py_ssize_t lo, Py_ssize_t hi, const void* s) noexcept nogil
# a 16-bit form's own span (a = param, grad, master, state...; s a HalfScalars*): False if it
# has no loop for the call's options
ctypedef bint (*span16)(void** a, Py_ssize_t lo, Py_ssize_t hi, const void* s,
                        bint bfloat16) noexcept nogil

ctypedef struct Kernel:
    int narrays          # arrays per tensor; arrays[1] (the grad) is the only one not written
    int nrequired        # the first nrequired may not be None
    span32 f32
    span64 f64           # NULL for a 16-bit form
    int half             # 0, or a 16-bit form's format (_half.pxi: it runs f32 a block at a
                         # time on the float32 master and state); s is then a HalfScalars*
    span16 f16           # NULL, or a 16-bit form's span of its own, tried first (set in optim.pyx)

ctypedef struct Tensor:
    void* ptr[MAX_ARRAYS]
    Py_ssize_t n

from .pool cimport chunk_fn as fo_chunk_fn, run as fo_pool_run

ctypedef struct Job:    # one call's work, split into chunks of the concatenated tensors
    const Kernel* kern
    bint is32
    Tensor* ts
    Py_ssize_t count, chunk, total
    const void* scalars

ctypedef struct Extent:  # the memory bounds of one array, for the overlap check
    size_t lo            # the bytes [lo, hi) its elements span; lo 0: none (empty, or absent)
    size_t hi
    PyObject* array      # the array, for the exact test where bounds overlap (borrowed: the
                         # caller's arrays or refs hold it for the call)
    Py_ssize_t tensor    # its index in the lists (-1 in a single call)
    int arg              # its position among the kernel's arrays (1: the grad, only read)


# Spans of at least this many elements start their vector loop where the param starts a
# 64-byte line (the elements before it are a span of their own): NumPy's arrays lie 16 bytes
# past one, so every 512-bit load and store split two lines, and the other arrays, at the
# same offset, then fall on lines too. Same results, element by element. Zen 5, one thread,
# float32, 512-bit build, ns/element before -> after: Adam 1e5 0.245 -> 0.220, 1e6 0.260 ->
# 0.238; Adamax 1e6 0.280 -> 0.215; RAdam 1e6 0.297 -> 0.248 (SGD, EWA, RMSprop unchanged).
cdef Py_ssize_t ALIGN_MIN = 1 << 10


cdef inline Py_ssize_t line_start(const void* p, Py_ssize_t lo, Py_ssize_t hi,
                                  Py_ssize_t itemsize) noexcept nogil:
    """The first index from lo (at most hi) whose element of p starts a 64-byte line."""
    cdef size_t skip = (64 - (<size_t>p + lo * itemsize) % 64) % 64
    return min(lo + <Py_ssize_t>(skip // itemsize), hi)


cdef inline void run_span(const Kernel* kern, bint is32, void** ptr, Py_ssize_t lo,
                          Py_ssize_t hi, const void* s) noexcept nogil:
    if kern.half:
        half_range(kern, ptr, lo, hi, s)
    elif is32:
        kern.f32(<float**>ptr, lo, hi, s)
    else:
        kern.f64(<double**>ptr, lo, hi, s)


cdef extern from "fo_prefetch.h":
    void fo_prefetch_at(const void* base, size_t offset) nogil
    void fo_prefetchw_at(const void* base, size_t offset) nogil

# Arrays of PREFETCH_MIN_BYTES or more walk their spans PREFETCH_SPAN bytes (of the widest array)
# at a time, each after a prefetch of every array's lines PREFETCH_AHEAD bytes on: there the
# arrays come from L3 or memory, and a loop busy with divisions and square roots keeps too few
# loads in flight for the hardware prefetchers to hide that. Adam float32, 2 threads, this Intel
# VM (bench/prefetch.c, the kernels' loop in C, 4 KiB pages), plain / in spans of 128 elements
# with the prefetch / the roofline stream: 1e7 4.5 / 3.4 / 3.6 ms, 3e7 19.1-19.6 / 16.8-17.3 /
# 16.8-17.4 ms, 3e6 0.91 / 0.88 / 0.88, 1e6 level; in cache (1e5) the prefetches only cost (21.2
# against 22.4 us), and spans of 512 elements (a longer burst of prefetches) lost at 1e6 (379
# against 316 us). 1 KiB ahead did as well as 2; 4 and 8 less. In-process, alternated processes,
# Adam 1e7 back to back 4.55-4.67 -> 3.87-4.22 ms, after 200 MB of other memory 5.19-5.26 ->
# 5.02-5.12; fastopt.torch.Adam at 1e7 after the other contenders' steps 6.56 ; 6.66 -> 6.19 ;
# 6.36 ms (DeepSpeedCPUAdam 6.50-6.66); 1e6 and 5e5 level or a few % faster. Per array, not per
# call: 200 tensors of 4096 floats (16 KiB each, 3.2 MiB in all) had lost with it
# (fastopt.torch.Adam 726 -> 811-902 us): each tensor's first lines unfetched, 2 KiB fetched past
# its end. The 16-bit forms prefetch from PREFETCH_MIN_BYTES_HALF of float32 master:
# fastopt.torch's bfloat16 steps, 2 threads, back to back, old -> new, us: at 1e7 elements NAdam
# 6507-6574 -> 5097-5306, SGD with momentum 4063-4102 -> 2493-2619, Adagrad 4214-4375 ->
# 2819-2849, at 5e6 Adam 1630-1662 -> 1526-1576, but at 1e6 Adagrad and RMSprop 289-298 -> 301-309
# (their widen, step and narrow loops then run 128 elements at a time; the same 512 at a time, as
# without prefetches, with a burst of prefetches that long: Adam 332 -> 442-450) and at 3e6 level
# or up to 7% slower. The roofline stream runs through this driver too, so it prefetches where the
# steps do. Tried and not taken: a 16-bit form's param (only written) not prefetched but written
# with non-temporal stores from a buffer, sparing the read of each line a cached store makes.
# fastopt.torch bfloat16, 2 threads, alternated processes, ms: Adam 1e7 4.45-5.32 -> 3.95-4.65
# and 3e7 17.7-17.8 -> 16.6-17.2, but 5e6 1.52-1.56 -> 1.70-1.73, 6e6 and 8e6 4-11% slower,
# 1.5e7 level; Adagrad (blocks) 1e7 2.87-3.01 -> 3.03-3.29 (this VM's L3 keeps what they send
# to memory).
# (on Intel CPUs only: elsewhere the prefetches were measured to cost, fo_common.h)
cdef Py_ssize_t PREFETCH_MIN_BYTES = 1 << 21, PREFETCH_MIN_BYTES_HALF = 1 << 24
if not fo_cpu_wants_software_prefetch():
    PREFETCH_MIN_BYTES = PREFETCH_MIN_BYTES_HALF = PY_SSIZE_T_MAX
cdef enum:
    PREFETCH_SPAN = 512
    PREFETCH_AHEAD = 2048


cdef void run_span_ahead(const Kernel* kern, bint is32, void** ptr, Py_ssize_t lo,
                         Py_ssize_t hi, const void* s) noexcept nogil:
    """run_span in spans of PREFETCH_SPAN bytes, each after a prefetch of the lines
    PREFETCH_AHEAD bytes past it (for writing, but in the grad). The spans split no vector
    loop of the kernels' (multiples of 64 bytes) and every element is computed as before."""
    cdef Py_ssize_t wide = 4 if is32 else 8
    cdef Py_ssize_t step = PREFETCH_SPAN // wide, ahead = PREFETCH_AHEAD // wide
    cdef Py_ssize_t start = lo, stop, at
    cdef Py_ssize_t size[MAX_ARRAYS]    # each array's item size; 0: absent, nothing to fetch
    cdef int i
    for i in range(kern.narrays):       # (a 16-bit form's param and grad: 2 bytes)
        size[i] = 0 if ptr[i] == NULL else 2 if kern.half and i < 2 else wide
    while start < hi:
        stop = min(start + step, hi)
        for i in range(kern.narrays):
            at = (start + ahead) * size[i]
            while at < (stop + ahead) * size[i]:
                if i == 1:
                    fo_prefetch_at(ptr[i], at)
                else:
                    fo_prefetchw_at(ptr[i], at)
                at += 64
        run_span(kern, is32, ptr, start, stop, s)
        start = stop


cdef inline void run_range(const Kernel* kern, bint is32, Tensor* ts, Py_ssize_t count,
                           Py_ssize_t start, Py_ssize_t stop, const void* s) noexcept nogil:
    """Elements [start, stop) of the concatenation of ``ts``."""
    cdef Py_ssize_t j, lo, hi, mid, offset = 0
    for j in range(count):
        if offset >= stop:
            break
        lo = max(start - offset, 0)
        hi = min(stop - offset, ts[j].n)
        if hi - lo >= ALIGN_MIN and not kern.half:
            mid = line_start(ts[j].ptr[0], lo, hi, 4 if is32 else 8)
            if lo < mid:
                run_span(kern, is32, ts[j].ptr, lo, mid, s)
            lo = mid
        if lo < hi and ts[j].n * (4 if is32 else 8) >= (PREFETCH_MIN_BYTES_HALF if kern.half
                                                        else PREFETCH_MIN_BYTES):
            run_span_ahead(kern, is32, ts[j].ptr, lo, hi, s)
        elif lo < hi:
            run_span(kern, is32, ts[j].ptr, lo, hi, s)
        offset += ts[j].n


# Chunks: several per thread so that a helper that starts late still takes a share, and small
# enough that a helper preempted mid-chunk (by another process) holds up the call only briefly;
# whole 64-byte lines of floats and doubles (multiples of 16 elements).
cdef Py_ssize_t CHUNK_MIN = 1 << 13, CHUNK_MAX = 1 << 16

# Calls under this many elements keep the GIL: they last about a microsecond, less than
# handing the GIL over and back costs, and another thread that took it meanwhile would hold
# the call up for its whole switch interval (5 ms by default).
cdef Py_ssize_t NOGIL_MIN = 1 << 12


cdef void run_chunk(void* ctx, Py_ssize_t c) noexcept nogil:
    cdef Job* job = <Job*>ctx
    run_range(job.kern, job.is32, job.ts, job.count, c * job.chunk,
              min((c + 1) * job.chunk, job.total), job.scalars)


cdef void run(const Kernel* kern, bint is32, Tensor* ts, Py_ssize_t count,
              const void* s) noexcept nogil:
    cdef Py_ssize_t j, total = 0
    for j in range(count):
        total += ts[j].n
    cdef int nt = threads_for(total)
    if nt == 1:
        run_range(kern, is32, ts, count, 0, total, s)
        return
    cdef Job job = Job(kern, is32, ts, count, 0, total, s)
    job.chunk = (min(max(total // (4 * nt), CHUNK_MIN), CHUNK_MAX) + 15) & ~(<Py_ssize_t>15)
    fo_pool_run(run_chunk, &job, (total + job.chunk - 1) // job.chunk, nt)


cdef inline void run_by_dtype(const Kernel* kern, Tensor* ts, Py_ssize_t count, Py_ssize_t n32,
                              Py_ssize_t n64, const void* s) noexcept nogil:
    """The float32 tensors ``ts[:n32]``, then the float64 ones ``ts[count - n64:]``."""
    if n32:
        run(kern, True, ts, n32, s)
    if n64:
        run(kern, False, ts + count - n64, n64, s)


cdef void run_tensors(const Kernel* kern, Tensor* ts, Py_ssize_t count, Py_ssize_t n32,
                      Py_ssize_t n64, Py_ssize_t total, const void* s) noexcept:
    """:func:`run_by_dtype` on ``total`` elements, without the GIL from NOGIL_MIN up."""
    if total < NOGIL_MIN:
        run_by_dtype(kern, ts, count, n32, n64, s)
    else:
        with nogil:
            run_by_dtype(kern, ts, count, n32, n64, s)


cdef int load(Tensor* t, Extent* ext, const Kernel* kern, tuple names, PyObject** arrays,
              Py_ssize_t index) except -1:
    """Validate one tensor's arrays and fill ``t`` and their memory bounds ``ext``;
    ``index`` >= 0 names them as list items (``exp_avgs[3]``). Returns 1 if they are valid but
    not laid out as one flat run (the caller falls back to contiguous copies)."""
    cdef int i
    # exact ndarrays only: None (NULL here), other objects and subclasses (np.matrix is refused,
    # a memmap is fine) take the slow path, which raises or accepts as the other backends do
    cdef int ok = arrays[0] != NULL and cnp.PyArray_CheckExact(<object>arrays[0])
    for i in range(1, kern.narrays):
        if arrays[i] == NULL:
            ok = ok and i >= kern.nrequired
        else:
            ok = ok and cnp.PyArray_CheckExact(<object>arrays[i])
    if ok:
        ok = check_half_fast(kern, arrays) if kern.half else check_fast(kern, arrays)
    if not ok:
        check_slow(kern, names, arrays, index)   # raises with the standard message
    for i in range(kern.narrays):
        ext[i].tensor, ext[i].arg = index, i
        extent_of(<cnp.ndarray>arrays[i] if arrays[i] != NULL else None, &ext[i])
    if same_memory(<cnp.ndarray>arrays[0], <cnp.ndarray>arrays[1]):
        ext[1].lo = 0    # a param as its own grad: each element is read before it is written
    cdef cnp.ndarray ref = <cnp.ndarray>arrays[0]
    cdef bint want_f = not cnp.PyArray_IS_C_CONTIGUOUS(ref)
    for i in range(kern.narrays):
        if arrays[i] == NULL:
            t.ptr[i] = NULL
        elif flat_ok(<cnp.ndarray>arrays[i], want_f):
            t.ptr[i] = cnp.PyArray_DATA(<cnp.ndarray>arrays[i])
        else:
            if ok:      # the full checks too (the C ones pass an array whose elements share
                check_slow(kern, names, arrays, index)    # memory; copies cost more anyway)
            return 1
    t.n = cnp.PyArray_SIZE(ref)
    return 0


cdef inline void extent_of(cnp.ndarray a, Extent* e) noexcept:
    e.lo = e.hi = 0
    e.array = <PyObject*>a
    if a is None or cnp.PyArray_SIZE(a) == 0:
        return
    cdef int d
    cdef Py_ssize_t reach
    cdef size_t lo = <size_t>cnp.PyArray_BYTES(a), hi = lo
    for d in range(cnp.PyArray_NDIM(a)):
        reach = cnp.PyArray_STRIDES(a)[d] * (cnp.PyArray_DIMS(a)[d] - 1)
        if reach < 0:
            lo -= <size_t>(-reach)
        else:
            hi += <size_t>reach
    e.lo, e.hi = lo, hi + <size_t>cnp.PyArray_ITEMSIZE(a)


cdef inline bint same_memory(cnp.ndarray a, cnp.ndarray b) noexcept:
    """As _validate.same_memory, for two arrays of one shape and item size: the same
    elements in the same dtype (a 16-bit kernel's int16 parameter over its own uint16 grad
    is not: refused, as there)."""
    if (cnp.PyArray_BYTES(a) != cnp.PyArray_BYTES(b)
            or cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(b)
            or cnp.PyArray_ISNOTSWAPPED(a) != cnp.PyArray_ISNOTSWAPPED(b)):
        return False
    cdef int d
    for d in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_DIMS(a)[d] > 1 and cnp.PyArray_STRIDES(a)[d] != cnp.PyArray_STRIDES(b)[d]:
            return False
    return True


cdef int overlap_error(tuple names, const Extent* a, const Extent* b) except -1:
    """Raise _validate.overlap_error naming ``a`` and ``b`` in argument order."""
    if (b.arg, b.tensor) < (a.arg, a.tensor):
        a, b = b, a
    if a.tensor < 0:
        raise _validate.overlap_error(names[a.arg], names[b.arg])
    raise _validate.overlap_error(f"{names[a.arg]}[{a.tensor}]", f"{names[b.arg]}[{b.tensor}]")


cdef inline bint shared(const Extent* a, const Extent* b) except -1:
    """Whether the arrays of ``a`` and ``b``, whose bounds overlap, share memory: the exact
    test, _validate.share_elements (interleaved views of one buffer share none)."""
    return _validate.share_elements(<object>a.array, <object>b.array)


cdef int check_pairs(const Extent* e, int n, tuple names) except -1:
    """_validate.check_disjoint for one tensor (only its grad is not written)."""
    cdef int i, j
    for i in range(n):
        if e[i].lo:
            for j in range(i + 1, n):
                if e[j].lo and e[j].lo < e[i].hi and e[i].lo < e[j].hi and shared(&e[i], &e[j]):
                    overlap_error(names, &e[i], &e[j])
    return 0


cdef int check_sorted(Extent* e, Py_ssize_t n, tuple names) except -1:
    """_validate.check_disjoint for many tensors: orders ``e`` by address, then sweeps (as
    _validate._sweep: where a span's bounds meet the furthest-reaching earlier one's, it is
    compared exactly with every earlier span reaching past its start)."""
    cdef Py_ssize_t few[2 * FEW_TENSORS * MAX_ARRAYS]
    cdef Py_ssize_t* buf = few
    if n > FEW_TENSORS * MAX_ARRAYS:
        buf = <Py_ssize_t*>PyMem_Malloc(n * 2 * sizeof(Py_ssize_t))
        if buf == NULL:
            raise MemoryError()
    cdef Py_ssize_t* order = buf
    cdef Py_ssize_t i, k, m = 0, other, reach_any = -1, reach_written = -1
    try:
        for k in range(n):
            if e[k].lo:
                order[m] = k
                m += 1
        order = sort_by_lo(e, buf, buf + n, m)
        for i in range(m):
            k = order[i]
            other = reach_written if e[k].arg == 1 else reach_any
            if other >= 0 and e[k].lo < e[other].hi:
                refuse_shared(e, order, i, names)
            if reach_any < 0 or e[k].hi > e[reach_any].hi:
                reach_any = k
            if e[k].arg != 1 and (reach_written < 0 or e[k].hi > e[reach_written].hi):
                reach_written = k
    finally:
        if buf != few:
            PyMem_Free(buf)
    return 0


cdef int refuse_shared(const Extent* e, const Py_ssize_t* order, Py_ssize_t i,
                       tuple names) except -1:
    """overlap_error for the first span of ``order[:i]`` (in address order) that reaches past
    the start of ``e[order[i]]`` and shares memory with it, grads with each other left out."""
    cdef const Extent* span = &e[order[i]]
    cdef const Extent* other
    cdef Py_ssize_t h
    for h in range(i):
        other = &e[order[h]]
        if (other.hi > span.lo and not (span.arg == 1 and other.arg == 1)
                and shared(other, span)):
            overlap_error(names, other, span)
    return 0


cdef Py_ssize_t* sort_by_lo(const Extent* e, Py_ssize_t* a, Py_ssize_t* b,
                            Py_ssize_t m) noexcept nogil:
    """Indices ``a[:m]`` sorted by ``e[i].lo``, in ``a`` or ``b`` (returned; both hold m).
    A least-significant-digit radix sort over the bits in which the addresses differ: 11 bits
    a pass, so a few thousand arrays within a few MB sort in two linear passes (qsort's
    comparisons through a function pointer cost ~10x more; this check runs every call)."""
    cdef size_t low = <size_t>-1, high = 0, key
    cdef Py_ssize_t i, j
    cdef Py_ssize_t count[2048]
    cdef Py_ssize_t* t
    cdef int shift = 0, d
    if m <= 32:     # a few arrays: insertion sort (a radix pass clears 16 KB of counts)
        for i in range(1, m):
            j = i
            while j > 0 and e[a[j - 1]].lo > e[a[j]].lo:
                a[j - 1], a[j] = a[j], a[j - 1]
                j -= 1
        return a
    for i in range(m):
        low = min(low, e[a[i]].lo)
        high = max(high, e[a[i]].lo)
    while m > 1 and (high - low) >> shift:
        memset(count, 0, sizeof(count))
        for i in range(m):
            count[((e[a[i]].lo - low) >> shift) & 2047] += 1
        key = 0
        for d in range(2048):
            key += count[d]
            count[d] = key - count[d]        # where digit d's run starts
        for i in range(m):
            d = ((e[a[i]].lo - low) >> shift) & 2047
            b[count[d]] = a[i]
            count[d] += 1
        t = a
        a = b
        b = t
        shift += 11
    return a


cdef inline bint same_dims(cnp.ndarray a, cnp.ndarray b, int nd) noexcept:
    """The first ``nd`` dimensions of ``a`` and ``b`` are equal (a loop, not memcmp: most
    arrays have one or two, and a call per array of a many-tensor step showed in perf)."""
    cdef int d
    for d in range(nd):
        if cnp.PyArray_DIMS(a)[d] != cnp.PyArray_DIMS(b)[d]:
            return False
    return True


cdef bint check_fast(const Kernel* kern, PyObject** arrays) noexcept:
    """The common case in C: a float param, every array of its dtype and shape, the updated
    ones writeable."""
    cdef cnp.ndarray ref = <cnp.ndarray>arrays[0], a
    cdef int i, nd = cnp.PyArray_NDIM(ref), t = cnp.PyArray_TYPE(ref)
    if t != cnp.NPY_FLOAT and t != cnp.NPY_DOUBLE:
        return False
    for i in range(kern.narrays):
        if arrays[i] == NULL:
            continue
        a = <cnp.ndarray>arrays[i]
        if (cnp.PyArray_TYPE(a) != t or cnp.PyArray_NDIM(a) != nd
                or not same_dims(a, ref, nd) or (i != 1 and not cnp.PyArray_ISWRITEABLE(a))):
            return False
    return True


cdef bint check_half_fast(const Kernel* kern, PyObject** arrays) noexcept:
    """The common case in C: 16-bit param and grad, float32 state, one shape, the updated
    arrays writeable."""
    cdef cnp.ndarray ref = <cnp.ndarray>arrays[0], a
    cdef int i, t, nd = cnp.PyArray_NDIM(ref)
    for i in range(kern.narrays):
        if arrays[i] == NULL:
            continue
        a = <cnp.ndarray>arrays[i]
        t = cnp.PyArray_TYPE(a)
        if i < 2:
            if t != cnp.NPY_UINT16 and t != cnp.NPY_INT16:
                return False
        elif t != cnp.NPY_FLOAT:
            return False
        if (cnp.PyArray_NDIM(a) != nd or not same_dims(a, ref, nd)
                or (i != 1 and not cnp.PyArray_ISWRITEABLE(a))):
            return False
    return True


cdef int check_slow(const Kernel* kern, tuple names, PyObject** arrays,
                    Py_ssize_t index) except -1:
    """Find what is wrong and raise, naming the array."""
    labels = [name if index < 0 else f"{name}[{index}]" for name in names]
    objs = [None if arrays[i] == NULL else <object>arrays[i] for i in range(kern.narrays)]
    if kern.half:
        check_half_arrays(objs, labels, kern.nrequired)
    else:
        _validate.check_step_arrays(objs, labels, kern.nrequired)
    return 0


cdef inline void fill(PyObject** out, tuple arrays, int count) noexcept:
    cdef int i
    for i in range(count):
        out[i] = NULL if arrays[i] is None else <PyObject*>arrays[i]


cdef int step1(const Kernel* kern, tuple names, tuple arrays, const void* s) except -1:
    """One tensor: validate and run. Returns 1 (nothing written) if the caller must run it on
    contiguous copies instead."""
    cdef Tensor t
    cdef Extent ext[MAX_ARRAYS]
    cdef PyObject* objs[MAX_ARRAYS]
    fill(objs, arrays, kern.narrays)
    cdef int slow = load(&t, ext, kern, names, objs, -1)
    check_pairs(ext, kern.narrays, names)
    if slow:
        return 1
    cdef bint is32 = (kern.half
                      or cnp.PyArray_TYPE(<cnp.ndarray>arrays[0]) == cnp.NPY_FLOAT)
    run_tensors(kern, &t, 1, is32, not is32, t.n, s)
    return 0


cdef Py_ssize_t list_length(const Kernel* kern, tuple names, tuple lists) except -1:
    """The common length of the lists (each a list or tuple, or a subclass: an optimizer's
    param group holds its params in one; optional ones may be None); anything else goes to
    _multi.check_lists, which raises naming the list."""
    cdef Py_ssize_t count = -1
    cdef int i
    for i in range(kern.narrays):
        lst = lists[i]
        if lst is None and i >= kern.nrequired:
            continue
        if not isinstance(lst, (list, tuple)) or (count >= 0 and len(lst) != count):
            return check_lists(names, lists, kern.nrequired)
        count = len(lst)
    return count


cdef extern from "Python.h":
    PyObject** PySequence_Fast_ITEMS(object o)    # a list's or tuple's item array
    void Py_INCREF(PyObject* o)
    void Py_DECREF(PyObject* o)

cdef list step_many(const Kernel* kern, tuple names, tuple lists, const void* s,
                    int needed=-1, str scalar=None, object value=None):
    """A list of tensors (``lists[i][j]``: array i of tensor j; an optional list may be None).
    Validates every tensor, and that no two of their arrays overlap, before writing any; runs
    all flat ones in one parallel sweep per dtype, and returns the indices of the valid but
    non-flat ones for the caller to run (None if there are none). Array ``needed`` (-1: none)
    may not be None in a list that is given (the registry's needed_when: ``scalar`` is
    ``value``, as the caller gave it, not 0)."""
    cdef Py_ssize_t j, count = list_length(kern, names, lists), n32 = 0, n64 = 0, held = 0
    cdef Py_ssize_t total = 0     # elements of the flat tensors
    cdef int i
    cdef Tensor few_ts[FEW_TENSORS]
    cdef Extent few_ext[FEW_TENSORS * MAX_ARRAYS]
    cdef PyObject* few_refs[FEW_TENSORS * MAX_ARRAYS]
    cdef Tensor* ts = few_ts
    cdef Extent* ext = few_ext
    cdef PyObject** refs = few_refs
    if count > FEW_TENSORS:
        ts = <Tensor*>PyMem_Malloc(count * sizeof(Tensor))
        ext = <Extent*>PyMem_Malloc(count * kern.narrays * sizeof(Extent))
        refs = <PyObject**>PyMem_Malloc(count * kern.narrays * sizeof(PyObject*))
        if ts == NULL or ext == NULL or refs == NULL:
            PyMem_Free(ts)
            PyMem_Free(ext)
            PyMem_Free(refs)
            raise MemoryError()
    cdef list slow = None
    cdef Tensor t
    cdef PyObject* objs[MAX_ARRAYS]
    try:
        for j in range(count):
            for i in range(kern.narrays):
                # read in place, not copied; each array is held (refs) until the call ends,
                # and the list is read afresh per tensor: checking an ndarray subclass runs
                # Python code, which could change a list
                lst = lists[i]
                if lst is None:
                    objs[i] = NULL
                    continue
                if j >= len(lst):
                    raise RuntimeError(f"{names[i]} changed size during the call")
                objs[i] = PySequence_Fast_ITEMS(lst)[j]
                Py_INCREF(objs[i])
                refs[held] = objs[i]
                held += 1
                if <object>objs[i] is None:
                    if i == needed:
                        raise _validate.missing_state_error(scalar, value, f"{names[i]}[{j}]")
                    objs[i] = NULL
            if load(&t, ext + j * kern.narrays, kern, names, objs, j):
                if slow is None:
                    slow = []
                slow.append(j)
                continue
            # float32 (and 16-bit) tensors fill the front of ts, float64 ones the back
            if kern.half or cnp.PyArray_TYPE(<cnp.ndarray>objs[0]) == cnp.NPY_FLOAT:
                ts[n32] = t
                n32 += 1
            else:
                n64 += 1
                ts[count - n64] = t
            total += t.n
        check_sorted(ext, count * kern.narrays, names)
        if slow is not None:
            # the other tensors' contiguous copies, before any tensor is stepped (a
            # MemoryError copying one had left the flat tensors stepped, and not counted)
            tensors = [tuple([None if lst is None else lst[j] for lst in lists]) for j in slow]
            slow = list(zip(tensors, copies_before_writing(tensors)))
        run_tensors(kern, ts, count, n32, n64, total, s)
    finally:
        for j in range(held):
            Py_DECREF(refs[j])
        if ts != few_ts:
            PyMem_Free(ts)
            PyMem_Free(ext)
            PyMem_Free(refs)
    return slow


def _fallback(kernel, tuple lists, list slow, **scalars):
    """Run the non-flat tensors of a multi-tensor step one by one on their contiguous copies
    (``slow``: each one's arrays and copies, made by step_many), each copy written back also
    when the kernel raised: one it did not step holds its array's values. All of it here,
    where no Python signal handler runs: Ctrl-C during the flat sweep, the kernels on the
    copies or the writes back is raised once the whole step is done (raised at a call into
    Python between them, it had left a parameter unwritten with its state stepped). A
    kernel's checks can call into Python (a scalar's conversion, an ndarray subclass's
    check), where a handler runs, before it writes: that tensor is stepped again, the others
    after it too, and the first such interrupt raised after, as the step's (_calls.returned:
    fastopt._multi._kernel_began)."""
    cdef Py_ssize_t i
    held = None
    for arrays, copies in slow:
        while True:
            try:
                kernel(*copies, **scalars)
                break
            except BaseException as exc:
                if held is not None or isinstance(exc, (*_multi._REFUSED, MemoryError)):
                    raise       # (a refusal, as _multi._each_part tells one)
                held = exc
            finally:
                for i in range(len(arrays)):
                    if i != 1 and arrays[i] is not None and copies[i] is not arrays[i]:
                        cnp.PyArray_CopyInto(<cnp.ndarray>arrays[i], <cnp.ndarray>copies[i])
    if held is not None:
        _multi._calls.returned = True
        raise held


# the 16-bit forms' driver (half_range) and conversions
include "_half.pxi"
