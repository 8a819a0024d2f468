"""List forms of the element-wise kernels for the Python-level backends (numba, NumPy
reference).

The Cython backend has compiled ``<kernel>_multi`` functions that run a whole list in one
call; for the others ``fastopt._backend`` makes each ``<kernel>_multi`` with :func:`foreach`
from the kernel's registry entry: it validates every tensor first (so a bad array anywhere
changes nothing) and then calls the single-array kernel on each.
"""
import inspect
import threading
from itertools import repeat

from ._hyper import as_flag, as_real
from ._layout import copies_before_writing
from ._validate import check_disjoint, check_step_arrays, missing_state_error

# per thread: whether a kernel call made since the caller's bookkeeping frame reset it
# (Optimizer._run, fastopt.torch's _run, EWA.update) has returned (_kernel_began); a list
# form's caller sets it after the list's, _each_part after its parts
_calls = threading.local()
# what a backend raises for a scalar it refuses (the compiled kernels' conversion of an int past
# the float range is an OverflowError, fastopt._hyper's a ValueError), or for an array (then
# fastopt.ops._refuse finds every scalar fine and the error is raised as it is)
_REFUSED = (TypeError, ValueError, OverflowError)


def _interrupted_kernel(exc):
    """Whether ``exc``, raised in an optimizer's step, interrupted it once a kernel had been
    called (:func:`_kernel_began`): Ctrl-C's KeyboardInterrupt, or whatever a signal handler
    raises (a timeout's TimeoutError), which the step then stores as taken, as the kernel's
    writes are; not one of the refusals (_REFUSED), nor a MemoryError, which the kernels raise
    before writing (allocating their tables of many tensors, checking a strided one: it was
    stored as a step taken, its count advanced over parameters left as they were), nor one
    marked as raised before any write (``_fastopt_unwritten``: while the copies of a step's
    tensors of other layouts were made)."""
    return (not isinstance(exc, (*_REFUSED, MemoryError)) and _kernel_began(exc)
            and not getattr(exc, "_fastopt_unwritten", False))


def _kernel_began(interrupt):
    """Whether ``interrupt`` (an exception raised in an optimizer's step, as a signal handler raises
    it) came once a kernel had been called. Each fastopt function on the way to a compiled
    kernel (these, the list forms of fastopt._multi, Numba's launch, fastopt.torch's
    ``_update``) binds a local ``kernel`` just before it calls the next, with no point between
    the two where Python runs a signal handler (those follow a call or a jump back): the
    innermost such frame where the interrupt was raised tells (below a loop of
    :func:`_each_part`, each part's own frames). A compiled kernel runs without the GIL, so
    Ctrl-C is raised as it returns, its writes done; the numba and NumPy list forms are Python
    loops over the arrays (run through :func:`_each_part`: every array steps).

    Also begun once a kernel call of the step has returned (``_calls.returned``, which the
    optimizer's bookkeeping frame reset, each kernel call's caller sets after it returns, an
    attribute store with no check for signals before it, and :func:`_each_part` once every
    part has): raised once the frames above had returned, in a frame above them (CPython 3.10
    checks for signals as each call returns, 3.11 as a function starts)."""
    began, tb = False, interrupt.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        module = frame.f_globals.get("__name__", "")
        if (frame.f_code is _EACH_PART or frame.f_code is _COPIES
                or module in _BEFORE_WRITES or module.startswith("numba.")):
            # (the parts' own kernels tell, each part a kernel of its own; the checks, the
            # scalars' conversions and the copies of arrays of other layouts, which a compiled
            # kernel also calls back for, and Numba's dispatch of a call (typing, loading,
            # compiling) come before any write)
            began = False
        elif "kernel" in frame.f_code.co_varnames and module.startswith("fastopt."):
            began = "kernel" in frame.f_locals
        tb = tb.tb_next
    return began or getattr(_calls, "returned", False)


def _each_part(parts, step_part):
    """``step_part(part)`` for each of ``parts``: one step of a group in several kernel calls
    (fastopt.torch: parameters of another count, another 16-bit format, a first momentum;
    the numba and NumPy list forms: each array).
    An interrupt (:func:`_interrupted_kernel`) once a part has stepped is raised when every
    part has, so that the group is stepped whole, as the counts stored for it then say: a
    part whose kernel it interrupted (raised as the kernel returned) counts as stepped, one
    it came before (in this loop, or in the part's own calls before its kernel) is stepped
    then. Raised before the first part's kernel, it is raised at once (nothing stepped);
    anything else (a refusal, a second interrupt) is raised at once too. ``step_part`` binds
    ``kernel`` just before its kernel call and sets ``_calls.returned`` after it returned
    (:func:`_kernel_began`)."""
    _calls.returned = False     # (a call's before this one: not this one's parts)
    count, held, done = len(parts), None, 0
    while True:
        try:
            # (between a part's return and the next store only CPython 3.10 checks for
            # signals, once the part has set _calls.returned; none between the last store
            # and the break. `while True` and a break, not `while done < count`: CPython
            # 3.13 leaves the jump back of a `while <condition>` loop outside the try, where
            # it runs signal handlers, and Ctrl-C there left the parts after unstepped and
            # none counted: cpython#130279)
            while True:
                if done >= count:
                    break
                step_part(parts[done])
                done += 1
                _calls.returned = False
            _calls.returned = True
            break
        except BaseException as exc:
            if held is not None or isinstance(exc, (*_REFUSED, MemoryError)):
                raise
            if _interrupted_kernel(exc):
                done += 1
            elif not done:
                raise
            exc._fastopt_unwritten = False  # (raised once every part has stepped)
            held = exc
    if held is not None:
        raise held


_EACH_PART = _each_part.__code__
_COPIES = copies_before_writing.__code__
_BEFORE_WRITES = frozenset({"fastopt._validate", "fastopt._hyper"})


def check_lists(names, lists, nrequired):
    """Raise unless each of ``lists`` is a list or tuple (the optional ones after the first
    ``nrequired`` may be None) as long as the first; return that length."""
    count = len(lists[0]) if type(lists[0]) is list or type(lists[0]) is tuple else -1
    for i, lst in enumerate(lists):     # the common case, in a third of the time
        if not ((type(lst) is list or type(lst) is tuple) and len(lst) == count
                or lst is None and i >= nrequired):
            break
    else:
        return count
    for i, (name, lst) in enumerate(zip(names, lists)):
        if not (isinstance(lst, (list, tuple)) or (lst is None and i >= nrequired)):
            raise TypeError(f"{name} must be a list or tuple of arrays, "
                            f"got {type(lst).__name__}")
    count = len(lists[0])
    for name, lst in zip(names[1:], lists[1:]):
        if lst is not None and len(lst) != count:
            raise ValueError(f"{name} has {len(lst)} arrays, expected {count} like {names[0]}")
    return count


class _Labels:
    """The names of tensor ``j``'s arrays in a list call (``exp_avgs[3]``), each made only when
    a message asks for it."""
    __slots__ = ("names", "j")

    def __init__(self, names, j):
        self.names, self.j = names, j

    def __getitem__(self, i):
        return f"{self.names[i]}[{self.j}]"

    def __len__(self):
        return len(self.names)


def foreach(single, entry, check=check_step_arrays, run=None):
    """The list form of ``single``, a backend's single-array function of the kernel ``entry``
    (a :class:`fastopt._registry.Kernel`): ``multi(*lists, **scalars)`` with the registry's
    signature, bit-identical to ``single`` on each tensor. ``check(arrays, names, nrequired)``
    validates one tensor's arrays, that one tensor's arrays are disjoint included (the 16-bit
    kernels pass their own). With ``run``, the tensors then run as ``run(checked, tensors,
    scalars)``, ``checked`` holding what ``check`` returned for each (a backend whose check also
    prepares the arrays need not do it twice), instead of ``single(*arrays, **scalars)`` on
    each."""
    names, nrequired, keywords = entry.lists, entry.nrequired, frozenset(entry.keywords)

    def multi(*lists, **scalars):
        if len(lists) != len(names) or scalars.keys() != keywords:
            raise TypeError(f"{entry.multi}() takes the lists {', '.join(names)} and the "
                            f"keyword arguments {', '.join(entry.keywords)}")
        count = check_lists(names, lists, nrequired)
        if not count:   # no tensor's call to check them (the Cython backend's list forms do)
            for name in entry.scalars:
                as_real(name, scalars[name])
            for name in entry.options:
                as_flag(name, scalars[name])
            return
        tensors = list(zip(*[repeat(None, count) if lst is None else lst for lst in lists]))
        # a needed array's None refused with its tensor, before the tensor's own checks (the
        # Cython backend's order: it meets the None as it gathers the tensor)
        needed = [(i, scalar) for i, scalar in entry.needed_when
                  if scalars[scalar] != 0 and lists[i] is not None]
        checked = []
        for j, arrays in enumerate(tensors):
            for i, scalar in needed:
                if arrays[i] is None:
                    raise missing_state_error(scalar, scalars[scalar], f"{names[i]}[{j}]")
            checked.append(check(arrays, _Labels(names, j), nrequired))
        if count > 1:
            check_disjoint(tensors, lambda i, j: f"{names[i]}[{j}]")
        # (``kernel`` bound just before each call: _kernel_began)
        if run is not None:
            kernel = run
            kernel(checked, tensors, scalars)
            return

        def step_tensor(arrays):
            kernel = single
            kernel(*arrays, **scalars)
            _calls.returned = True

        kernel = _each_part     # (an interrupt between two arrays: the rest step, then it)
        kernel(tensors, step_tensor)

    P = inspect.Parameter
    multi.__signature__ = inspect.Signature(
        [P(n, P.POSITIONAL_OR_KEYWORD) for n in names]
        + [P(n, P.KEYWORD_ONLY) for n in entry.keywords])
    multi.__name__ = multi.__qualname__ = entry.multi
    multi.__module__ = single.__module__
    multi.__doc__ = f"{entry.name} over lists of arrays ({', '.join(names)})."
    return multi
