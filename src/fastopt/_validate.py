"""Argument checks shared by the Python-level backends (numba, numpy reference).

The Cython kernels do the common case in C (``_kernels/_elementwise.pxi``) and call these for the
rest, so the messages are the same; at 1e3 elements doing it all in Python would cost more than
the arithmetic.
"""
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
FLOAT_TYPES = (np.float32, np.float64)


def renamed(exc, message):
    """``exc`` (a TypeError, ValueError or OverflowError) again, with ``message``: as the
    builtin class, since a subclass's constructor (NumPy's, a user's) may not take a message
    alone."""
    return (ValueError if isinstance(exc, ValueError) else
            OverflowError if isinstance(exc, OverflowError) else TypeError)(message)


def check_axis(axis):
    """``axis`` as an int: whatever ``operator.index`` takes, as NumPy's axes (an int, a
    NumPy integer, a 0-d integer array); TypeError naming axis for anything else, bools
    (Python's, which index takes, and NumPy's) and floats included."""
    if type(axis) is int:          # the common case, at once
        return axis
    # (NumPy before 2.3 indexes with a NumPy bool, warning only: np.True_ was axis 1)
    if not (isinstance(axis, (bool, np.bool_))
            or isinstance(axis, np.ndarray) and axis.dtype == np.bool_):
        try:
            return operator.index(axis)
        except TypeError:
            pass
    what = type(axis).__name__
    if isinstance(axis, np.ndarray):
        what += f" of dtype {axis.dtype} and shape {axis.shape}"
    raise TypeError(f"axis must be an int (or a NumPy integer, a 0-d integer array), "
                    f"got {what}")


def check_unmasked(name, a):
    """Raise TypeError if ``a`` is a masked array, whose mask ``np.asarray`` would drop
    silently (its masked values taken as data)."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} must not be a masked array (its mask would be ignored): "
                        "fill or drop the masked values first (.filled(...), .compressed())")


def as_array(name, a):
    """``np.asarray(a)``, whose errors name ``name``: a ragged sequence's, and an array-like's
    own refusal to convert (a torch tensor that requires grad raises RuntimeError)."""
    try:
        return np.asarray(a)
    except ValueError as e:     # NumPy's 'inhomogeneous shape' message names no argument
        raise ValueError(f"{name} must be a rectangular array: {e}") from None
    except (TypeError, RuntimeError) as e:
        raise TypeError(f"{name} could not be read as a NumPy array: {e}") from e


def as_examples(name, a):
    """``a`` (mini-batches' X or Y) as an ndarray: TypeError naming ``name`` for None (which
    NumPy makes a 0-d object array), for a masked array (whose mask the batches would drop)
    and for an array-like that refuses conversion, ValueError for a ragged sequence."""
    if a is None:
        raise TypeError(f"{name} must be an array, got None")
    check_unmasked(name, a)
    return as_array(name, a)


def npz_item(value):
    """A scalar entry of a state dict as ``np.load`` gives it back (``np.savez`` stores each
    entry as an array): the item of a 0-d array of numbers or bools, or None for the 0-d
    object array ``np.savez`` made of None (read back with ``allow_pickle=True``); anything
    else as it is."""
    if isinstance(value, np.ndarray) and value.shape == () and (
            value.dtype.kind in "biuf" or value.dtype == object and value.item() is None):
        return value.item()
    return value


def check_state_keys(owner, state_dict, required, known):
    """Raise unless ``state_dict`` is a dict holding every key of ``required`` and no key
    outside ``known``: what ``owner``'s (a class name) ``load_state_dict`` checks first."""
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict (from state_dict()), got "
                        f"{type(state_dict).__name__}")
    for key in required:
        if key not in state_dict:
            raise ValueError(f"state_dict has no {key!r} (make it with "
                             f"{owner}.state_dict())")
    unknown = [k for k in state_dict if k not in known]
    if unknown:
        raise ValueError(f"state_dict has the key {unknown[0]!r}; {owner}'s keys are "
                         f"{', '.join(map(repr, known))}")


def as_count(name, value):
    """``value`` (a state dict's count: an int, a NumPy integer, a 0-d integer array) as a
    Python int; TypeError naming ``name`` for anything else (a bool, a float), ValueError for
    a negative one."""
    value = npz_item(value)
    if (isinstance(value, (bool, np.bool_, np.timedelta64))   # (a NumPy signedinteger)
            or not isinstance(value, (int, np.integer))):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"Invalid {name}: {value!r} (must be >= 0)")
    return int(value)


def check_float_array(name, a):
    """Raise TypeError unless ``a`` is a float32/float64 ndarray; return its dtype."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    return a.dtype


# what a subclass changes to compute otherwise than an ndarray: NumPy's ufunc and function
# hooks, or Python's operators (np.matrix's ``*`` is a matrix product; a masked array's skip
# its mask), comparisons and item assignment, which the NumPy reference uses too
_ARITHMETIC = ("__array_ufunc__", "__array_function__", "__add__", "__radd__", "__iadd__",
               "__sub__", "__rsub__", "__isub__", "__mul__", "__rmul__", "__imul__",
               "__truediv__", "__rtruediv__", "__itruediv__", "__pow__", "__rpow__", "__ipow__",
               "__neg__", "__abs__", "__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__",
               "__and__", "__or__", "__invert__", "__setitem__")


def has_own_arithmetic(a):
    """True for an ndarray whose values the kernels would misread: a subclass with arithmetic
    of its own, through ``__array_ufunc__`` (a units library's) or Python's operators
    (``np.matrix``, a masked array): the reference had computed with it, the compiled kernels
    on its raw memory. A memmap, a recarray or a subclass that only carries attributes
    computes as an ndarray."""
    kind = type(a)
    return (kind is not np.ndarray and isinstance(a, np.ndarray)
            and any(getattr(kind, name) is not getattr(np.ndarray, name)
                    for name in _ARITHMETIC))


def check_plain(name, a):
    """TypeError naming ``name`` if ``a`` is an ndarray with arithmetic of its own
    (:func:`has_own_arithmetic`)."""
    if has_own_arithmetic(a):
        raise TypeError(f"{name} must be a plain numpy.ndarray, got {type(a).__name__}")


def check_kernel_array(name, a):
    """Raise TypeError unless ``a`` is an ndarray an element-wise kernel can update: float32 or
    float64 in either byte order (a storage detail: the values are the same), and not one
    with arithmetic of its own (:func:`has_own_arithmetic`)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    check_plain(name, a)
    if a.dtype.type not in FLOAT_TYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")


def check_like(name, a, ref_name, ref):
    """Raise unless ``a`` is a kernel array (:func:`check_kernel_array`) with the shape and
    dtype of ``ref`` (the byte order may differ)."""
    check_kernel_array(name, a)
    if a.dtype.type is not ref.dtype.type:
        raise TypeError(f"{name} has dtype {a.dtype}, expected {ref.dtype} like {ref_name}")
    if a.shape != ref.shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {ref.shape} like {ref_name}")


def check_grad(label, param, grad):
    """Raise unless ``grad`` is an ndarray of ``param``'s dtype and shape (``label`` names the
    parameter: the optimizers' messages)."""
    if not isinstance(grad, np.ndarray):
        raise TypeError(f"grad for parameter {label} must be a numpy.ndarray, "
                        f"got {type(grad).__name__}")
    check_plain(f"grad for parameter {label}", grad)
    if grad.dtype.type is not param.dtype.type:     # (either byte order, as the kernels)
        raise TypeError(f"grad for parameter {label} has dtype {grad.dtype}, "
                        f"expected {param.dtype}")
    if grad.shape != param.shape:
        raise ValueError(f"grad for parameter {label} has shape {grad.shape}, "
                         f"expected {param.shape}")


def check_writeable(name, a):
    """Raise ValueError unless ``a`` can be updated in place: writeable, and every element at
    its own address. An array whose elements share memory (a zero stride, an ``as_strided``
    view of overlapping windows) had no one result: the compiled kernels step contiguous
    copies and write them back (the last write of a shared address kept), the reference
    ufunc by ufunc."""
    flags = a.flags         # (each .flags makes an object: ~0.1 us)
    if not flags.writeable:
        raise ValueError(f"{name} is read-only; it is updated in place")
    if not (flags.c_contiguous or flags.f_contiguous) and _shares_elements(a):
        raise ValueError(f"{name} has elements that share memory (a zero stride or "
                         "overlapping as_strided windows); an updated array needs every "
                         "element at its own address")


def _shares_elements(a):
    """True if two elements of ``a`` overlap in memory. Axes sorted by stride, each stride
    past the reach of the smaller ones proves them apart at once; elements that need more
    bytes than their span holds must overlap (a window view over a small buffer, refused
    without listing its elements); else (as_strided layouts only, whose span holds every
    element's bytes) the elements' byte offsets are compared."""
    if a.size < 2:
        return False
    axes = sorted((abs(s), n) for n, s in zip(a.shape, a.strides) if n > 1)
    reach = a.itemsize
    for stride, n in axes:
        if stride < reach:
            break
        reach += stride * (n - 1)
    else:
        return False
    span = a.itemsize + sum(stride * (n - 1) for stride, n in axes)
    if span < a.size * a.itemsize:
        return True
    offsets = np.zeros((), np.int64)
    for stride, n in axes:
        offsets = np.add.outer(offsets, np.arange(n, dtype=np.int64) * stride)
    offsets = np.sort(offsets, axis=None)
    return bool(np.any(np.diff(offsets) < a.itemsize))


def check_step_arrays(arrays, names, nrequired):
    """Validate the arrays of one element-wise step, given in the kernels' order: the param
    (which sets the expected shape and dtype), the grad (the one array only read), then state.
    The first ``nrequired`` may not be None; None after them is optional state not in use.
    """
    for i in range(nrequired):
        if arrays[i] is None:
            raise TypeError(f"{names[i]} must be a numpy.ndarray, got NoneType")
    ref = arrays[0]
    check_kernel_array(names[0], ref)
    check_writeable(names[0], ref)
    for i in range(1, len(arrays)):
        if arrays[i] is not None:
            check_like(names[i], arrays[i], names[0], ref)
            if i != 1:
                check_writeable(names[i], arrays[i])
    check_own_arrays(arrays, names)


def _address(a):
    return a.__array_interface__["data"][0]


def _owner(a):
    """The ndarray whose own allocation holds the elements of ``a``, or None when that is not
    known (memory numpy did not allocate: a buffer, a torch tensor, ``as_strided``)."""
    if a.flags.owndata:     # (first: the usual array, one attribute read)
        return a
    base = a.base           # numpy collapses a view's base to the owner
    return base if isinstance(base, np.ndarray) and base.flags.owndata else None


def extent(a):
    """The bytes ``[lo, hi)`` spanned by the elements of ``a`` (its memory bounds), or None
    when it has none."""
    if a.size == 0:
        return None
    lo = hi = _address(a)
    for n, stride in zip(a.shape, a.strides):
        if stride < 0:
            lo += stride * (n - 1)
        else:
            hi += stride * (n - 1)
    return lo, hi + a.itemsize


def same_memory(a, b):
    """True if ``a`` and ``b`` are the very same elements: one address, shape, strides (of the
    axes longer than 1) and byte order."""
    if a is b:
        return True
    if a.dtype != b.dtype or a.shape != b.shape or any(
            n > 1 and s != t for n, s, t in zip(a.shape, a.strides, b.strides)):
        return False
    owner_a, owner_b = _owner(a), _owner(b)
    if owner_a is not None and owner_b is not None and owner_a is not owner_b:
        return False
    return _address(a) == _address(b)


def missing_state_error(scalar, value, label):
    """The ValueError for a list call whose tensor has no ``label`` (its None) where the
    scalar ``scalar`` is ``value`` (not 0) needs one: the kernels apply momentum only with a
    buffer, so that tensor's step was silently the one without it (the single-array forms
    refuse the same)."""
    return ValueError(f"{scalar}={value!r} needs {label} (got None): without one the "
                      f"{scalar} would be ignored for that array; pass one for every array, "
                      f"or {scalar}=0")


def overlap_error(first, second):
    return ValueError(f"{first} and {second} overlap in memory (they share elements' memory); "
                      "only a param and its own grad may be the same elements (the same array, "
                      "or views of it in its order)")


# np.shares_memory's problem is NP-hard in the number of axes; max_work bounds the candidate
# solutions it tries. Slices, row and column blocks, interleaved steps (a[::2], a[1::2]) and
# transposes decide within a few (measured, NumPy 2.4: at most 4, whatever their size; ~2 us a
# pair), so this bound costs them nothing and keeps a pathological as_strided pair under
# ~0.1 ms; what it cannot decide counts as shared (refused, never stepped wrong).
_EXACT_WORK = 1000


def share_elements(a, b):
    """Whether the arrays ``a`` and ``b`` share memory (some byte of an element of each): the
    exact decision, asked only where their memory bounds overlap (the cheap test). Layouts too
    hard to decide within ``_EXACT_WORK`` count as sharing."""
    try:
        return bool(np.shares_memory(a, b, max_work=_EXACT_WORK))
    except (np.exceptions.TooHardError, OverflowError):
        return True


def check_disjoint(tensors, label):
    """Raise ValueError naming two arrays of one call that share memory, unless both are only
    read (grads) or they are a param and its own grad as the very same array
    (:func:`same_memory`: each element then reads its grad before writing it, as if the grad
    were a copy). Memory bounds first (cheap, and what the Cython kernels compare in C), then,
    only where two arrays' bounds overlap, :func:`share_elements`: interleaved views of one
    buffer (a matrix's column blocks, ``a[::2]`` and ``a[1::2]``) share none and pass.

    ``tensors`` holds each tensor's arrays in the kernels' order (param, grad, state...);
    ``label(i, j)`` names array ``i`` of tensor ``j``.
    """
    if not _apart(tensors):
        check_owners(by_owner(tensors), label)


def check_own_arrays(arrays, names):
    """:func:`check_disjoint` for the arrays of one single-array call (``names[i]`` names
    ``arrays[i]``), pair by pair in argument order, as the compiled kernels' own checks take
    them (Cython's check_pairs, numba's _first_overlap), so that every backend names the same
    pair where several share memory."""
    if _apart([arrays]):
        return
    members = sorted((m for ms in by_owner([arrays]).values() for m in ms),
                     key=lambda m: m[1])
    for n, (a, i, _) in enumerate(members):
        lo, hi = extent(a)
        for b, k, _ in members[n + 1:]:
            b_lo, b_hi = extent(b)
            if b_lo < hi and lo < b_hi and share_elements(a, b):
                raise overlap_error(names[i], names[k])


def _apart(tensors):
    """True when no two arrays of ``tensors`` can overlap, known without reading an address
    (what :func:`by_owner` would find, the usual case, in a third of its time): each is an
    allocation of numpy's or a view of one (its :func:`_owner`), no owner holds two written
    arrays, and no grad's owner holds an array written, other than its own param. False: the
    full check decides."""
    written = set()
    count = 0
    for arrays in tensors:
        for i, a in enumerate(arrays):
            if a is None or i == 1:
                continue
            owner = _owner(a)
            if owner is None:
                return False
            written.add(id(owner))
            count += 1
    if len(written) != count:
        return False
    for arrays in tensors:
        g = arrays[1]
        if g is not None and g is not arrays[0]:
            owner = _owner(g)
            if owner is None or id(owner) in written:
                return False
    return True


def by_owner(tensors):
    """The arrays of ``tensors`` (as :func:`check_disjoint`'s) as ``(array, i, j)`` by the id of
    their owner (:func:`_owner`; None: memory of unknown origin), leaving out empty arrays and
    a grad that is its param's very same array."""
    # Arrays held by different numpy allocations cannot overlap: only the arrays of one owner
    # need their bounds compared (reading an address costs ~1 us here), unless some memory is
    # of unknown origin, which is compared with everything.
    # A grad is its param's very same array only if both have one owner (or either has none):
    # same_memory is asked only then (it cost most of this function for separate grads).
    owners = {}
    for j, arrays in enumerate(tensors):
        keys = []
        for a in arrays:
            owner = None if a is None or not a.size else _owner(a)
            keys.append(None if owner is None else id(owner))
        own_grad = (arrays[1] is not None and (keys[0] == keys[1] or None in keys[:2])
                    and same_memory(arrays[0], arrays[1]))
        for i, a in enumerate(arrays):
            if a is not None and a.size and not (i == 1 and own_grad):
                owners.setdefault(keys[i], []).append((a, i, j))
    return owners


def check_owners(owners, label):
    """:func:`check_disjoint` of the arrays :func:`by_owner` sorted by owner."""
    if None in owners:
        groups = [[m for members in owners.values() for m in members]]
    else:
        groups = [members for members in owners.values() if len(members) > 1]
    for members in groups:
        _sweep(members, label)


def check_reads(owners, reads, label):
    """:func:`check_disjoint` of written arrays already checked and sorted by owner
    (:func:`by_owner` of tensors without grads, kept while they do not change) with grads
    added: ``reads`` holds ``(param, grad, j)``, the grad of tensor ``j`` and its param (which
    it may be). A grad is compared only with the arrays of its owner (the usual grad, an array
    of its own, costs a look-up), or with every array when its memory or some written array's
    is of unknown origin."""
    unknown = None in owners
    hits = {}
    for param, grad, j in reads:
        if grad is None:
            continue
        owner = _owner(grad)
        key = None if owner is None else id(owner)
        if ((unknown or key is None or key in owners) and grad.size
                and not (param is not None and same_memory(param, grad))):
            hits.setdefault(key, []).append((grad, 1, j))
    if unknown or None in hits:
        if hits:
            _sweep([m for members in (*owners.values(), *hits.values()) for m in members],
                   label)
    else:
        for key, members in hits.items():
            _sweep(owners[key] + members, label)


def _sweep(members, label):
    pair = shared_pair(members)
    if pair is not None:
        raise overlap_error(label(*pair[0]), label(*pair[1]))


def shared_pair(members):
    """The first two of ``members`` that share memory, as ``((i, j), (i2, j2))`` in argument
    order (sorted), or None. ``members`` holds ``(array, i, j)``: array ``i`` of tensor ``j``,
    only read if ``i`` is 1 (a grad; two grads may share)."""
    spans = [(*extent(a), i, j, n) for n, (a, i, j) in enumerate(members)]
    # the Cython kernels' order (check_sorted), so that every backend names the same pair: by
    # address, ties by tensor, then by argument
    spans.sort(key=lambda span: (span[0], span[3], span[2]))
    # in address order, each span against the furthest-reaching one before it: of any kind if
    # it is written, of the written ones if it is only read; where those bounds overlap, the
    # exact test with every such earlier span reaching past its start
    reach_any = reach_written = -1
    for at, (lo, hi, i, j, n) in enumerate(spans):
        if lo < (reach_written if i == 1 else reach_any):
            for _, end, oi, oj, on in spans[:at]:
                if (end > lo and not (i == 1 and oi == 1)
                        and share_elements(members[on][0], members[n][0])):
                    return tuple(sorted([(oi, oj), (i, j)]))
        if hi > reach_any:
            reach_any = hi
        if i != 1 and hi > reach_written:
            reach_written = hi
    return None
