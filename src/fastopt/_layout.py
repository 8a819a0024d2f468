"""Layout handling shared by the compiled backends.

Element-wise kernels walk their arrays as one flat run, which is right when every array is
contiguous in the same order. Anything else (a strided slice, a transpose next to a C-ordered
grad, a byte-swapped or unaligned array) is run on contiguous copies whose results are then
written back into the caller's arrays, so views the caller holds still see the update.
"""
import numpy as np


def _native(a):
    """``a`` if it is one flat C-ordered run the kernels can walk, else a C-contiguous copy in
    native byte order. The copy is a new allocation, hence aligned: ``np.ascontiguousarray``
    would hand back an unaligned array unchanged (and the kernel would fall back forever)."""
    if a is None or (a.flags.c_contiguous and a.flags.aligned and a.dtype.isnative):
        return a
    return np.array(a, dtype=a.dtype.newbyteorder("="), order="C")


def via_contiguous(kernel, arrays, **scalars):
    """Call ``kernel(*arrays, **scalars)`` on contiguous copies and copy the updated arrays back.

    By the kernels' convention ``arrays[1]`` (the grad, or the new sample) is the only input that
    is not updated. If the kernel raises, the caller's arrays are untouched.
    """
    copies = [_native(a) for a in arrays]
    kernel(*copies, **scalars)
    for i, (a, c) in enumerate(zip(arrays, copies)):
        if i != 1 and a is not None and c is not a:
            np.copyto(a, c)
