"""Parameters, grads and optimizer state as views of one contiguous buffer each.

A network with hundreds of small arrays makes an optimizer step a loop over arrays. With a
``ParameterArena`` the arrays are views of one buffer, so an optimizer built on them steps the
whole buffer with one kernel call (one sweep over memory, split across threads):

>>> import numpy as np, fastopt as fo
>>> arena = fo.ParameterArena(np.float32)
>>> W1 = arena.add("W1", (64, 32), init=np.random.randn(64, 32) * 0.1)
>>> b1 = arena.add("b1", (64, 1))
>>> opt = fo.Adam(arena.params, lr=1e-3)        # or a list of the views, or param groups
>>> arena.grads["dW1"][...] = 0.5               # fill the grads in place (keys: name or d+name)
>>> arena.grads["b1"][...] = 0.5
>>> opt.step(arena.grads)
>>> float(b1[0, 0])                             # b1 is a view of the arena: stepped in place
-0.0010000000474974513

The flat path applies to any optimizer group whose parameters are consecutive views of one
arena, when ``step`` receives the arena's own grad views (``arena.grads``, or a list or dict of
those views); otherwise the optimizer uses its multi-tensor path, with the same results bit
for bit.
"""
import math
import numbers
import sys
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ._layout import like_lines
from ._validate import FLOAT_DTYPES, as_array, check_unmasked, renamed

# id(param buffer) -> its arena
_OWNERS: "weakref.WeakValueDictionary[int, ParameterArena]" = weakref.WeakValueDictionary()
# id(param buffer) -> the buffer, while it lives: its views keep it (not its arena) alive
_BUFFERS: "weakref.WeakValueDictionary[int, np.ndarray]" = weakref.WeakValueDictionary()
# sys.getrefcount of an instance-dict entry that nothing else holds (see ParameterArena.__del__)
_ALONE = (lambda items: sys.getrefcount(items[0]))([object()])


class ParameterArena:
    """Allocate parameters and their grads as views into two flat buffers of one dtype.

    An optimizer over consecutive views of one arena steps their whole stretch with one kernel
    call; ``arena.grads`` holds the grad views (keys: the name or ``"d" + name``).

    Parameters
    ----------
    dtype : float32 or float64, default float32
        Dtype of every parameter and grad.
    capacity : int, default 2**24
        Elements reserved. The buffers are allocated zeroed up front; the operating system only
        backs the pages that are used, so a generous capacity costs address space, not memory.

    Attributes
    ----------
    params : dict
        Name -> parameter view, in allocation order; assigning ``params["W1"] = W1`` copies
        into the view (anything but real numbers, and masked arrays, are refused: TypeError).
    grads : dict
        Name -> grad view (also reachable as ``"d" + name``); assigning
        ``grads["dW1"] = dW1`` copies into the view.

    Holding ``arena.params`` or ``arena.grads`` keeps the arena alive (a function may build
    the model and return them); the views alone keep only the buffers, not the arena, so
    optimizers over views of an arena that is gone step them as separate arrays and
    ShardedOptimizer refuses them.
    size : int
        Elements in use (read-only).

    Raises
    ------
    TypeError
        A ``dtype`` other than float32/float64 (either byte order: the buffers are in the
        machine's).
    ValueError
        A negative or non-int ``capacity``, or one beyond what NumPy can allocate.
    MemoryError
        A ``capacity`` the operating system cannot reserve.
    """

    def __init__(self, dtype: DTypeLike = np.float32, capacity: int = 1 << 24) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype.kind == "f" and self.dtype.newbyteorder("=") in FLOAT_DTYPES:
            self.dtype = self.dtype.newbyteorder("=")
        if self.dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        if (isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer))
                or capacity < 0):
            raise ValueError(f"Invalid capacity: {capacity!r} (must be a non-negative int)")
        try:
            self._param_buf = np.zeros(capacity, self.dtype)
            self._grad_buf = like_lines(self._param_buf)     # (on lines as the params: slot 1)
        except (ValueError, MemoryError) as exc:    # (NumPy's messages do not say which)
            # (a plain MemoryError: NumPy's subclass of it takes a shape and dtype, not this)
            kind = ValueError if isinstance(exc, ValueError) else MemoryError
            raise kind(f"capacity {capacity}: {exc}") from None
        self._size = 0                             # elements in use
        self._adding = threading.Lock()   # add from several threads: each its own stretch
        # params (name -> parameter view) and grads (name -> grad view, also as "d" + name);
        # weak references once the arena is kept alive by them (__del__)
        self._dicts: list = [_Views(self), _GradDict(self)]
        # (param view, grad view, offset) in allocation order
        self._views: list[tuple[np.ndarray, np.ndarray, int]] = []
        self._names: list[str] = []                 # their names, in that order
        self._index: dict[int, int] = {}           # id(param view) -> position in _views
        _OWNERS[id(self._param_buf)] = self
        _BUFFERS[id(self._param_buf)] = self._param_buf

    def add(self, name: str, shape: int | Sequence[int],
            init: ArrayLike | None = None) -> np.ndarray:
        """Add parameter ``name`` of ``shape``: a view into the arena, zeros or ``init``.

        Its grad, a zeroed view of the grad buffer, is ``arena.grads[name]``.

        Parameters
        ----------
        name : str
            A new, non-empty name.
        shape : int or tuple of int
            The parameter's shape.
        init : array_like, optional
            Initial values (broadcast into the view); zeros by default.

        Returns
        -------
        ndarray
            The parameter, a view of the arena's buffer.

        Raises
        ------
        TypeError
            ``name`` not a non-empty str, ``shape`` not an int or a sequence of ints, or an
            ``init`` of anything but real numbers (complex, strings, None, objects) or masked.
        ValueError
            ``name`` already in the arena (or ``"d" + name``, or ``name`` without its
            leading ``d``: the grads' keys), a negative dimension in ``shape`` (as NumPy), not
            enough capacity left, or an ``init`` that does not broadcast to ``shape``. A call
            that raises changes nothing.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        with self._adding:      # (threads adding at once: each checks and takes its stretch)
            return self._add(name, shape, init)

    def _add(self, name, shape, init):
        if name in self.params:
            raise ValueError(f"parameter {name!r} is already in the arena")
        # grads are keyed by name or "d" + name: "W" and "dW" would share the key "dW"
        for other, key in (("d" + name, "d" + name), (name[1:], name)):
            if other and key[:1] == "d" and other in self.params:
                raise ValueError(f"parameter {name!r} beside {other!r}: grads[{key!r}] would "
                                 "name both (grads are keyed by name or 'd' + name)")
        shape = _check_shape(name, shape)
        n = math.prod(shape)
        if self._size + n > self._param_buf.size:
            raise ValueError(f"the arena is full: {name!r} needs {n} elements, "
                             f"{self._param_buf.size - self._size} of {self._param_buf.size} "
                             "are free (pass a larger capacity)")
        lo = self._size
        try:
            param = self._param_buf[lo:lo + n].reshape(shape)
        except ValueError as exc:       # an empty shape with a dimension NumPy cannot index
            raise ValueError(f"Invalid shape {shape!r} for {name!r}: {exc}") from None
        grad = self._grad_buf[lo:lo + n].reshape(shape)
        if init is not None:
            _refuse_non_real(f"init for {name!r}", init)
            try:
                param[...] = init
            except BaseException as exc:    # (Ctrl-C in a long copy too)
                param[...] = 0          # a conversion may fail part way: the space stays free
                if type(exc) in (TypeError, ValueError, OverflowError):
                    raise type(exc)(f"init for {name!r}: {exc}") from None
                raise
        self._size += n
        dict.__setitem__(self.params, name, param)
        dict.__setitem__(self.grads, name, grad)
        self._index[id(param)] = len(self._views)
        self._views.append((param, grad, lo))
        self._names.append(name)
        return param

    @property
    def params(self) -> "_Views":
        """Name -> parameter view (see the class docstring)."""
        return self._dict(0)

    @property
    def grads(self) -> "_GradDict":
        """Name -> grad view, also as ``"d" + name`` (see the class docstring)."""
        return self._dict(1)

    def _dict(self, k):
        """``params`` (k 0) or ``grads`` (k 1). One held weakly (see __del__) that is gone
        while the arena lives on (kept by the other, or by an optimizer's plan) is made again,
        the same names over the same views: it was None, and pickling the arena, or an
        optimizer over it, raised AttributeError."""
        views = self._dicts[k]
        if isinstance(views, weakref.ref):
            views = views()
            if views is None:
                # and, as __del__ made the first, it keeps the arena, which holds it weakly
                views = (_Views, _GradDict)[k](self)
                dict.update(views, zip(self._names, (v[k] for v in self._views)))
                views._keep = self
                self._dicts[k] = weakref.ref(views)
        return views

    @params.setter
    def params(self, value: "_Views") -> None:
        self._keep_dict(0, value)

    @grads.setter
    def grads(self, value: "_GradDict") -> None:
        self._keep_dict(1, value)

    def _keep_dict(self, k, value):
        """``arena.params |= {...}`` assigns the dict back to itself (fine); any other value
        would have replaced the dict of views: TypeError."""
        attr = ("params", "grads")[k]
        if value is not getattr(self, attr):
            raise TypeError(f"arena.{attr} cannot be replaced; assign its entries "
                            f"(arena.{attr}[name] = value) or update() it, to copy into the "
                            "views")

    @property
    def size(self) -> int:
        """Elements in use (read-only: the parameters live in them)."""
        return self._size

    @property
    def flat_params(self) -> np.ndarray:
        """Every parameter, as one 1-D view."""
        return self._param_buf[:self.size]

    @property
    def flat_grads(self) -> np.ndarray:
        """Every grad, as one 1-D view."""
        return self._grad_buf[:self.size]

    def zero_grad(self) -> None:
        """Set every grad to zero (one memset)."""
        self.flat_grads[...] = 0

    @staticmethod
    def span_of(params: Sequence[np.ndarray]) -> "ArenaSpan | None":
        """The stretch of an arena that ``params`` tile, if they do.

        An optimizer steps parameters that tile a stretch with one kernel call over it.

        Parameters
        ----------
        params : sequence of ndarray, or dict of them
            Candidate parameters (of a dict, such as ``arena.params``, its values).

        Returns
        -------
        ArenaSpan or None
            When ``params`` are views ``k, k+1, ...`` of one arena in the order they were
            added: that arena, ``k``, flat views of the stretch of both buffers, each
            parameter's offset in it (and its end), and the arena's grad views. Else None.
        """
        if isinstance(params, Mapping):
            params = list(params.values())
        elif not isinstance(params, (list, tuple)):
            params = list(params)       # an ndarray (its rows), dict values, an iterator
        if not params or not isinstance(params[0], np.ndarray):
            return None
        base = params[0].base
        arena = _OWNERS.get(id(base)) if base is not None else None
        if arena is None or arena._param_buf is not base:
            return None
        first = arena._index.get(id(params[0]))
        if first is None:
            return None
        views = arena._views[first:first + len(params)]
        if len(views) != len(params) or any(v[0] is not p for v, p in zip(views, params)):
            return None
        lo = views[0][2]
        hi = views[-1][2] + views[-1][0].size
        offsets = [off - lo for _, _, off in views] + [hi - lo]
        return ArenaSpan(arena, first, arena._param_buf[lo:hi], arena._grad_buf[lo:hi], offsets,
                         [g for _, g, _ in views])

    def __getstate__(self):
        """Pickle and deepcopy: the used part of both buffers and the layout (the views and
        the grad dict are rebuilt from them, so a copy's views share its buffers)."""
        return {"dtype": self.dtype.str, "capacity": self._param_buf.size,
                "layout": [(name, p.shape) for name, p in self.params.items()],
                "params": self.flat_params.copy(), "grads": self.flat_grads.copy()}

    def __setstate__(self, state):
        self.__init__(state["dtype"], state["capacity"])
        for name, shape in state["layout"]:
            self.add(name, shape)
        self.flat_params[...] = state["params"]
        self.flat_grads[...] = state["grads"]

    def __del__(self):
        """Kept alive by its ``params`` or ``grads`` dict while something else holds one (a
        model built in a function that returned ``arena.params``, an unpickled
        ``arena.params``), so optimizers and ShardedOptimizer still find the arena of its
        views: that dict then holds the arena, which holds it weakly (no cycle: the arena
        goes with the last such dict). Otherwise the arena goes at once; the views keep only
        its buffers alive."""
        dicts = getattr(self, "_dicts", None)
        if not dicts or any(isinstance(d, weakref.ref) for d in dicts):
            return              # (a failed __init__; or kept alive once already)
        held = [k for k in (0, 1) if sys.getrefcount(dicts[k]) > _ALONE]
        for k in held:
            dicts[k]._keep = self
            dicts[k] = weakref.ref(dicts[k])
        if held:
            _OWNERS[id(self._param_buf)] = self     # (the garbage collector cleared it)

    def __repr__(self):
        return (f"ParameterArena({self.dtype}, {len(self.params)} params, {self.size} of "
                f"{self._param_buf.size} elements)")


def orphaned(array) -> bool:
    """Whether ``array`` is a view of the parameter buffer of a ParameterArena that no longer
    exists (NumPy views keep the buffer alive, not the arena: the caller kept only views)."""
    base = getattr(array, "base", None)
    return (base is not None and _BUFFERS.get(id(base)) is base
            and _OWNERS.get(id(base)) is None)


def _real(x):
    """Whether ``x`` is a real number NumPy converts to a float (bools and Decimals too)."""
    return isinstance(x, (numbers.Real, np.bool_)) or (
        isinstance(x, numbers.Number) and not isinstance(x, numbers.Complex))


def _refuse_non_real(label, value):
    """TypeError naming ``label`` unless ``value`` holds real numbers (bools, ints, floats):
    NumPy's cast into the arena's dtype would drop a complex value's imaginary part (with only
    a ComplexWarning) and a masked array's mask, make None NaN and a string the number it
    spells; ValueError naming ``label`` for a ragged sequence."""
    check_unmasked(label, value)
    if value is None:
        raise TypeError(f"{label} must hold real numbers, got None")
    array = value if isinstance(value, np.ndarray) else as_array(label, value)
    if array.dtype.kind == "c":
        raise TypeError(f"{label}: complex values, the arena holds real numbers")
    if array.dtype.kind == "O" and all(_real(x) for x in array.flat):
        return                          # (an object array of numbers: NumPy converts them)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{label} must hold real numbers, got dtype {array.dtype}")


def _check_shape(name, shape):
    """``shape`` as a tuple of non-negative ints, else TypeError/ValueError naming it."""
    dims = (shape,) if isinstance(shape, (int, np.integer)) else shape
    try:
        dims = tuple(dims) if not isinstance(dims, (str, bytes)) else None
    except TypeError:
        dims = None
    if dims is None or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                               for d in dims):
        raise TypeError(f"Invalid shape {shape!r} for {name!r}: must be an int or a sequence "
                        "of ints")
    if any(d < 0 for d in dims):
        raise ValueError(f"Invalid shape {shape!r} for {name!r}: negative dimensions are not "
                         "allowed")
    return tuple(int(d) for d in dims)


class _Views(dict):
    """An arena's views by parameter name: ``arena.params`` (and, with the grads' keys,
    ``arena.grads``). Its entries are always the arena's views: assigning ``params["W1"] = W1``
    (or ``update``, ``|=``) copies into the view, so the arena's buffer, the optimizers stepping
    it and its pickles see the values. An assignment or update that raises writes nothing;
    entries cannot be added (``add`` adds) or removed. A deep copy or pickle is the copied
    arena's (views of its buffer); a shallow copy holds the same views."""

    _attr = "params"        # the arena's attribute holding this dict

    def __init__(self, arena: "ParameterArena | None" = None) -> None:
        super().__init__()
        self._arena = None if arena is None else weakref.ref(arena)

    def _owner(self):
        """The arena (None for a dict of copies); held weakly unless the arena's __del__ found
        this dict held elsewhere and made it keep the arena."""
        keep = getattr(self, "_keep", None)
        return keep if keep is not None else (None if self._arena is None else self._arena())

    def _view(self, key):
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        raise KeyError(f"{key!r}: the arena has no such parameter (add it with add())")

    def __missing__(self, key):
        return self._view(key)

    def _converted(self, key, value):
        """(view, value as an array of the view's dtype and shape): every check and
        conversion, nothing written."""
        view = self._view(key)
        if not view.flags.writeable:
            # (made read-only by hand: NumPy's copy raised unnamed, after an update had
            # written the entries before it)
            raise ValueError(f"{self._attr}[{key!r}] is read-only (its view was made read-only)")
        _refuse_non_real(f"{self._attr}[{key!r}]", value)
        try:
            array = np.asarray(value, dtype=view.dtype)
        except (TypeError, ValueError, OverflowError) as exc:
            raise renamed(exc, f"{self._attr}[{key!r}]: {exc}") from None
        if array.shape != view.shape:
            raise ValueError(f"{self._attr}[{key!r}] has shape {array.shape}, expected "
                             f"{view.shape} (its parameter's)")
        return view, array

    def __setitem__(self, key, value):
        view, array = self._converted(key, value)
        if array is not view:
            np.copyto(view, array)      # (checked: cannot fail; overlap is safe)

    def update(self, *args, **kwargs):
        """Copy every value into its view, once all of them are checked and converted."""
        items = dict(*args, **kwargs)
        pairs = [self._converted(k, v) for k, v in items.items()]
        seen = {}
        for key, (view, _) in zip(items, pairs):   # grads: "W" and "dW" are one grad
            if id(view) in seen:
                raise ValueError(f"{self._attr} given both {seen[id(view)]!r} and {key!r}, "
                                 "one entry's two names")
            seen[id(view)] = key
        # a value that is (part of) another entry's view is read before any is written
        pairs = [(view, array.copy() if array is not view and any(
                     np.may_share_memory(array, other) for other, _ in pairs) else array)
                 for view, array in pairs] if len(pairs) > 1 else pairs
        for view, array in pairs:
            if array is not view:
                np.copyto(view, array)

    def __ior__(self, other):
        self.update(other)
        return self

    def setdefault(self, key, default=None):
        """The view of ``key``; nothing is written or added."""
        return self._view(key)

    def _refuse(self, *args, **kwargs):
        raise TypeError(f"the arena's {self._attr} cannot be removed; assign to fill them in "
                        "place")

    __delitem__ = pop = popitem = clear = _refuse

    def __copy__(self):
        new = type(self)()
        dict.update(new, self)
        new._arena = self._arena
        return new

    def __reduce__(self):
        """Deepcopy and pickle: the (copied) arena's dict, so that copying an arena together
        with its params or grads gives one arena whose dicts hold views of its own buffers."""
        arena = self._owner()
        if arena is not None and getattr(arena, self._attr) is self:
            return getattr, (arena, self._attr)
        # the arena is gone (the views keep its buffer alive): a dict of copies
        return _standalone_views, (type(self), {k: np.array(v) for k, v in dict.items(self)})


class _GradDict(_Views):
    """The arena's grads by parameter name; ``grads["dW1"]`` also finds ``"W1"`` (the course's
    naming), as do ``in`` and ``get``. Assigning copies into the view (:class:`_Views`), so an
    optimizer handed this dict can step the flat buffer directly."""

    _attr = "grads"

    def _view(self, key):
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        if isinstance(key, str) and key.startswith("d") and dict.__contains__(self, key[1:]):
            return dict.__getitem__(self, key[1:])
        raise KeyError(f"{key!r}: the arena has no such parameter (grads are keyed by its "
                       "name or 'd' + name)")

    def __contains__(self, key):
        return dict.__contains__(self, key) or (
            isinstance(key, str) and key.startswith("d") and dict.__contains__(self, key[1:]))

    def get(self, key, default=None):
        return self._view(key) if key in self else default


def _standalone_views(cls, entries):
    """A ``cls`` dict holding ``entries`` (a pickled params or grads dict whose arena was
    gone)."""
    views = cls()
    dict.update(views, entries)
    return views


class ArenaSpan(NamedTuple):
    """Consecutive parameters of one arena, as :meth:`ParameterArena.span_of` finds them.

    Parameters
    ----------
    arena : ParameterArena
        The arena.
    first : int
        The first parameter's position in the arena (order added).
    params, grads : ndarray
        The parameters' stretch of the parameter buffer and of the grad buffer (1-D views).
    offsets : list of int
        Each parameter's first element in the stretch, then the stretch's end.
    grad_views : list of ndarray
        The arena's grad view of each parameter.
    """

    arena: ParameterArena
    first: int
    params: np.ndarray
    grads: np.ndarray
    offsets: list[int]
    grad_views: list[np.ndarray]


__all__ = ["ParameterArena", "ArenaSpan"]
