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
from ._validate import check_disjoint, check_step_arrays, missing_state_error

# per thread: whether a kernel call made since the caller's bookkeeping frame reset it
# (Optimizer._run, fastopt.torch's _run, EWA.update) has returned (fastopt.ops._kernel_began);
# a loop over arrays sets it after each array's call, a list form's caller after the list's
_calls = threading.local()


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
        # (``kernel`` bound just before each call: fastopt.ops._kernel_began)
        if run is not None:
            kernel = run
            kernel(checked, tensors, scalars)
            return
        for arrays in tensors:
            kernel = single
            kernel(*arrays, **scalars)
            _calls.returned = True

    P = inspect.Parameter
    multi.__signature__ = inspect.Signature(
        [P(n, P.POSITIONAL_OR_KEYWORD) for n in names]
        + [P(n, P.KEYWORD_ONLY) for n in entry.keywords])
    multi.__name__ = multi.__qualname__ = entry.multi
    multi.__module__ = single.__module__
    multi.__doc__ = f"{entry.name} over lists of arrays ({', '.join(names)})."
    return multi
