"""Multi-tensor entry points for the Python-level backends (numba, NumPy reference).

The Cython backend has compiled ``<kernel>_multi`` functions that run a whole list in one
call; here the same signature is met by validating every tensor first (so a bad array anywhere
changes nothing) and then calling the single-array kernel on each.
"""
from ._validate import check_disjoint, check_step_arrays

# kernel -> (names of its array lists, how many of them may not be None); the Cython kernels
# use the same names in their messages
LISTS = {
    "ewa": (("avgs", "xs"), 2),
    "sgd": (("params", "grads", "momentum_buffers"), 2),
    "momentum": (("params", "grads", "velocities"), 3),
    "rmsprop": (("params", "grads", "square_avgs", "grad_avgs", "momentum_buffers"), 3),
    "adagrad": (("params", "grads", "state_sums"), 3),
    "adam": (("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"), 4),
    "adadelta": (("params", "grads", "square_avgs", "acc_deltas"), 4),
    "adamax": (("params", "grads", "exp_avgs", "exp_infs"), 4),
    "nadam": (("params", "grads", "exp_avgs", "exp_avg_sqs"), 4),
    "radam": (("params", "grads", "exp_avgs", "exp_avg_sqs"), 4),
}


def multi_forms(namespace):
    """``{"<kernel>_multi": ...}`` for every kernel of :data:`LISTS` in ``namespace``."""
    return {f"{name}_multi": foreach(namespace[name], names, nrequired)
            for name, (names, nrequired) in LISTS.items() if name in namespace}


def check_lists(names, lists, nrequired):
    """Raise unless each of ``lists`` is a list or tuple (the optional ones after the first
    ``nrequired`` may be None) as long as the first; return that length."""
    for i, (name, lst) in enumerate(zip(names, lists)):
        if not (isinstance(lst, (list, tuple)) or (lst is None and i >= nrequired)):
            raise TypeError(f"{name} must be a list or tuple of arrays, "
                            f"got {type(lst).__name__}")
    count = len(lists[0])
    for name, lst in zip(names[1:], lists[1:]):
        if lst is not None and len(lst) != count:
            raise ValueError(f"{name} has {len(lst)} arrays, expected {count} like {names[0]}")
    return count


def foreach(single, names, nrequired):
    """``single(*arrays, *scalars)`` -> ``multi(*lists, *scalars)``; ``names`` are the list
    names (``params``, ``grads``, state...), the first ``nrequired`` lists may not be None."""
    nlists = len(names)

    def multi(*args):
        lists, scalars = args[:nlists], args[nlists:]
        count = check_lists(names, lists, nrequired)
        tensors = [tuple(None if lst is None else lst[j] for lst in lists)
                   for j in range(count)]
        for j, arrays in enumerate(tensors):
            check_step_arrays(arrays, [f"{name}[{j}]" for name in names], nrequired)
        check_disjoint(tensors, lambda i, j: f"{names[i]}[{j}]")
        for arrays in tensors:
            single(*arrays, *scalars)

    multi.__name__ = multi.__qualname__ = single.__name__ + "_multi"
    multi.__doc__ = f"{single.__name__} over lists of arrays ({', '.join(names)})."
    return multi
