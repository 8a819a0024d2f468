"""Layout handling shared by the compiled backends.

Element-wise kernels walk their arrays as one flat run, which is right when every array is
contiguous in the same order. Anything else (a strided slice, a transpose next to a C-ordered
grad, a byte-swapped or unaligned array) is run on contiguous copies whose results are then
written back into the caller's arrays, so views the caller holds still see the update.
"""
import math

import numpy as np


def _native(a, order="C"):
    """``a`` if it is one flat run in ``order`` ("C" or "F") the kernels can walk, else a copy
    in that order and native byte order. The copy is a new allocation, hence aligned:
    ``np.ascontiguousarray`` would hand back an unaligned array unchanged (and the kernel
    would fall back forever)."""
    if a is None or ((a.flags.f_contiguous if order == "F" else a.flags.c_contiguous)
                     and a.flags.aligned and a.dtype.isnative):
        return a
    return np.array(a, dtype=a.dtype.newbyteorder("="), order=order)


def fortran_only(a):
    """Whether ``a`` is one flat run in Fortran order only (a transposed weight)."""
    return a.flags.f_contiguous and not a.flags.c_contiguous


def via_contiguous(fn, arrays, **scalars):
    """Call ``fn(*arrays, **scalars)`` (a kernel) on contiguous copies and copy the updated
    arrays back.

    By the kernels' convention ``arrays[1]`` (the grad, or the new sample) is the only input that
    is not updated. If the kernel raises, the caller's arrays keep their values.
    """
    copies = contiguous_copies(arrays)
    kernel = run_and_write_back     # (bound last: fastopt._multi._kernel_began)
    kernel(fn, arrays, copies, scalars)


def contiguous_copies(arrays):
    """``arrays`` as a kernel walks them (:func:`_native`: each itself, or a copy), in the
    order of the first (the parameter) where that is a flat Fortran-ordered run: a
    transposed weight beside its C-ordered grad copies the grad alone (the parameter and
    its state, made in its order, had been copied and written back)."""
    order = "F" if fortran_only(arrays[0]) else "C"
    return [_native(a, order) for a in arrays]


def copies_before_writing(tensors):
    """:func:`contiguous_copies` of each of ``tensors`` (each a kernel's arrays), made before
    a step writes any: what is raised meanwhile (a MemoryError, Ctrl-C) is marked as raised
    before any write, which fastopt.ops._interrupted_kernel takes for no step taken."""
    try:
        return [contiguous_copies(arrays) for arrays in tensors]
    except BaseException as exc:
        exc._fastopt_unwritten = True
        raise


def run_and_write_back(fn, arrays, copies, scalars):
    """``fn(*copies, **scalars)`` (a kernel), then the copies written back into ``arrays``,
    also when it raised: a copy it did not step holds its array's values, and one it stepped,
    where Ctrl-C was raised as it returned (the compiled kernels run to their end), belongs
    with the state it stepped in place (which had left the parameter alone unwritten)."""
    written = [(a, c) for i, (a, c) in enumerate(zip(arrays, copies))
               if i != 1 and a is not None and c is not a]
    raised = True
    try:
        kernel = fn
        kernel(*copies, **scalars)
        raised = False
    finally:
        # every copy written back, also where an interrupt (Ctrl-C) comes meanwhile (the
        # copy it came at written again: copying is idempotent); then raised, unless the
        # kernel's own exception is (which tells whether the kernel began)
        held, done = None, 0
        while True:
            try:
                while True:     # (not `while done < ...`: cpython#130279, see _each_part)
                    if done >= len(written):
                        break
                    np.copyto(*written[done])
                    done += 1
                break
            except BaseException as exc:
                if held is not None:
                    raise
                held = exc
        if held is not None and not raised:
            raise held


# Arrays of SPREAD_MIN bytes or more made to go beside others (a step's state, a
# ParameterArena's grads) also take a place within their 4 KiB page: SLOT_BYTES times their slot
# past where the array they go with lies. A load from an address whose low 12 bits match those
# of a store the core has not yet retired (an earlier element of another of the step's arrays)
# waits for that store ("4K aliasing"), so a step over arrays whose page offsets lie 64-256
# bytes below a written one's ran the whole loop stalled. Zen 4, fo.ops.adam_step_ on 1e5
# float32, one thread, the arrays page offsets 1 KiB apart / the grad 64 bytes below the
# param: 29.6 / 40.6 us (two threads 16.2 / 21.6; SGD with momentum 14.1 / 19.4; at 1e6 287 /
# 361); bench/alias.c sweeps the distance. NumPy's heap places arrays at any offset, so about
# one set of a step's arrays in three had some pair in the window; multiples of 512 bytes apart
# none is (equal offsets neither: a load then precedes the store it matches).
PAGE_BYTES = 4096
SLOT_BYTES = 512
SPREAD_MIN = 1 << 16


def past_line(shape, dtype, skip, zeroed=False, page_offset=None):
    """A new C-ordered array of ``shape`` and ``dtype`` whose data lies ``skip`` bytes past a
    64-byte cache line: a view of an allocation of its own, unset, or all zero bytes if
    ``zeroed`` (calloc's: a large one takes memory only as its pages are first written).
    Arrays of SPREAD_MIN bytes or more given a ``page_offset`` (``skip`` past a line) lie that
    many bytes past a page boundary."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    spread = page_offset is not None and nbytes >= SPREAD_MIN
    modulus, want = (PAGE_BYTES, page_offset) if spread else (64, skip)
    buf = (np.zeros if zeroed else np.empty)(nbytes + modulus, np.uint8)
    start = (want - buf.__array_interface__["data"][0]) % modulus
    return buf[start:start + nbytes].view(dtype).reshape(shape)


def like_lines(a, fill=0, slot=1):
    """A new array of ``a``'s shape and dtype, in Fortran order where ``a`` is a flat
    Fortran-ordered run and in C order otherwise (the two orders the kernels walk flat),
    holding ``fill`` (None: not set), whose data lies as far past a 64-byte cache line as
    ``a``'s and, large, ``slot`` times SLOT_BYTES further into its page (:func:`past_line`;
    each of a step's arrays its own slot: a ParameterArena's grads 1, state from 2).

    The kernels step arrays of one order in place, and others on copies: state in C order
    beside a Fortran-ordered parameter (a transposed weight) had copied the parameter and its
    grad at every step (torch's state keeps its parameter's strides too).

    The element-wise kernels start their vector loop where the param starts a line, which puts
    the other arrays of a step on lines only where they lie as far past one as the param. NumPy
    places each new array 0, 16, 32 or 48 bytes past a line, as the heap allows, so state
    allocated next to its param with ``np.zeros`` did not, and each of a step's 512-bit loads
    and stores of it then touched two lines: where the arrays sit in L3 that cost Adam 1.75x
    (one Zen 5 core, 1e6 float32, arrays 16, 32, 48 and 0 bytes past a line against all as far
    as the param: 0.25-0.26 against 0.14 ns/element; bench/misalign.c). The state of an
    optimizer, the grads and state of a ParameterArena are placed so.
    """
    address = a.__array_interface__["data"][0]
    # a fill of +0 is the zero bytes calloc gives: ParameterArena's default grad buffer of 64
    # MiB, filled, had taken that memory at once (and 20-30 ms)
    zeroed = fill is not None and fill == 0 and math.copysign(1.0, fill) > 0
    # (an unaligned param's copies run on lines: its state starts one)
    fortran = fortran_only(a)
    skip = 0 if address % a.dtype.alignment else address % 64
    out = past_line(a.shape[::-1] if fortran else a.shape, a.dtype, skip, zeroed,
                    (address - address % 64 + skip + SLOT_BYTES * slot) % PAGE_BYTES)
    out = out.T if fortran else out
    if fill is not None and not zeroed:
        out.fill(fill)
    return out
