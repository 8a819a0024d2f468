"""Every public function, class and method has a NumPy-style docstring: a Parameters section
with an entry for each of its parameters (for a class, those of its constructor), and type
hints on every parameter and its return value (``py.typed`` promises them). The public API is
``fastopt.__all__`` plus the ``__all__`` of the public modules, with the public methods and
properties (and property setters) each class defines or inherits from a fastopt class. Cost:
well under a second."""
import importlib
import inspect
import re

import pytest

import fastopt

MODULES = ["fastopt.ops", "fastopt.layers", "fastopt.optim", "fastopt.schedules",
           "fastopt.course", "fastopt.arena", "fastopt.ewa", "fastopt.data",
           "fastopt.distributed", "fastopt.torch"]
SETTERS = {}    # "<property's name>.setter" -> the setter function (checked for type hints)


def _public_objects():
    found = {}

    def add(obj):
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and \
                obj.__module__.startswith("fastopt"):
            found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
            if not inspect.isclass(obj):
                return
            # the public members of the class and of its fastopt bases (fastopt.torch's
            # classes take step and load_state_dict from a private mixin)
            for base in obj.__mro__:
                if not base.__module__.startswith("fastopt"):
                    continue
                for name, member in vars(base).items():
                    if name.startswith("_"):
                        continue
                    if isinstance(member, property):
                        if member.fset is not None:
                            SETTERS.setdefault(
                                f"{base.__module__}.{member.fset.__qualname__}.setter",
                                member.fset)
                        member = member.fget
                    member = getattr(member, "__func__", member)     # static, class methods
                    if inspect.isfunction(member):
                        found.setdefault(f"{base.__module__}.{member.__qualname__}", member)

    for name in fastopt.__all__:
        add(getattr(fastopt, name))
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:         # mpi4py or torch missing: not public here
            continue
        for name in module.__all__:
            add(getattr(module, name))
    return found


PUBLIC = _public_objects()

def _is_protocol(obj):
    """A typing.Protocol class (schedules.HasLR): it has no instances, so no constructor to
    document or hint. (typing.is_protocol from Python 3.13.)"""
    return inspect.isclass(obj) and getattr(obj, "_is_protocol", False)


def _params(obj):
    """The parameters a docstring of ``obj`` must list (a class: its constructor's)."""
    if _is_protocol(obj):
        return []
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [p for p in signature.parameters if p not in ("self", "cls")]


def _documented(doc):
    """Names of the entries of the docstring's Parameters section (``a, b : type`` lines)."""
    match = re.search(r"^Parameters\n-+\n(.*?)(?=^\S[^\n]*\n-{3,}\n|\Z)", doc, re.M | re.S)
    if match is None:
        return None
    names = set()
    for line in match.group(1).splitlines():
        if line and not line[0].isspace():
            names.update(n.strip().lstrip("*") for n in line.split(" : ")[0].split(","))
    return names




def test_all_lists_every_public_name_of_fastopt():
    names = {n for n in dir(fastopt) if not n.startswith("_")}
    objects = {n for n in names if not inspect.ismodule(getattr(fastopt, n))}
    assert objects == {n for n in fastopt.__all__ if not inspect.ismodule(getattr(fastopt, n))}
    assert set(fastopt.__all__) <= names


@pytest.mark.parametrize("module_name, left_out", [
    ("fastopt.ops", "nadam_momentum"), ("fastopt.layers", "BatchNormCache"),
    ("fastopt.schedules", "HasLR")])
def test_all_lists_every_public_function_and_class_of_the_module(module_name, left_out):
    """The module's ``__all__`` (what ``from module import *`` and this file's walk take)
    names every public function and class the module defines. ``left_out`` was not: ops's
    nadam_momentum, layers's BatchNormCache (what batchnorm_forward returns) and schedules's
    HasLR (what LRScheduler drives)."""
    module = importlib.import_module(module_name)
    defined = {n for n, v in vars(module).items() if not n.startswith("_")
               and (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == module_name}
    assert defined <= set(module.__all__), sorted(defined - set(module.__all__))
    assert f"{module_name}.{left_out}" in PUBLIC


def test_the_walk_finds_the_public_api():
    # a walk that found nothing would pass every check below
    for name in ("fastopt.optim.Adam", "fastopt.ops.adam_step_", "fastopt.layers.softmax",
                 "fastopt.arena.ParameterArena.add", "fastopt.schedules.LRScheduler.step",
                 "fastopt._backend.set_backend", "fastopt.layers.BatchNorm.params",
                 "fastopt.ewa.EWA.update", "fastopt.data.minibatches"):
        assert name in PUBLIC
    assert "fastopt.optim.Optimizer.lr.setter" in SETTERS


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_api_has_numpy_docstrings(name):
    obj = PUBLIC[name]
    doc = inspect.getdoc(obj)
    assert doc, f"{name} has no docstring"
    params = _params(obj)
    if not params:
        return
    documented = _documented(doc)
    assert documented is not None, f"{name} takes {params} but has no Parameters section"
    missing = [p for p in params if p not in documented]
    assert not missing, f"{name}: Parameters section lacks {missing}"


def test_the_docstring_check_can_fail():
    def undocumented(x, y):
        """Does things.

        Parameters
        ----------
        x : int
            One.

        Returns
        -------
        y : int
            Not a parameter entry.
        """
    assert _documented(inspect.getdoc(undocumented)) == {"x"}
    assert _documented("No sections.") is None


def _unannotated(obj):
    """The parameters of ``obj`` without a type hint (a class: its constructor's), and
    ``"return"`` when it has no return hint (a class: when its fastopt ``__init__`` has none)."""
    if _is_protocol(obj):
        return []
    if inspect.isclass(obj):
        init = obj.__init__
        if not (inspect.isfunction(init) and init.__module__.startswith("fastopt")):
            # a NamedTuple's (its fields' hints) or an outside class's constructor
            return [n for n, p in inspect.signature(obj).parameters.items()
                    if p.annotation is p.empty]
        obj = init
    signature = inspect.signature(obj)
    missing = [n for n, p in signature.parameters.items()
               if n not in ("self", "cls") and p.annotation is p.empty]
    if signature.return_annotation is signature.empty:
        missing.append("return")
    return missing


@pytest.mark.parametrize("name", sorted(PUBLIC) + sorted(SETTERS))
def test_public_api_has_type_hints(name):
    missing = _unannotated(PUBLIC.get(name) or SETTERS[name])
    assert not missing, f"{name} has no type hint for {missing}"


def test_the_type_hint_check_can_fail():
    def half(x: int, y, *args: int, **kwargs) -> None:
        """Partly annotated."""

    def no_return(x: int):
        """No return hint."""

    class Unhinted:
        def __init__(self, x: int):
            """No return hint on the constructor."""

    class Hinted:
        def __init__(self, x: int) -> None:
            """Fully annotated."""

    Unhinted.__init__.__module__ = Hinted.__init__.__module__ = "fastopt.fake"
    assert _unannotated(half) == ["y", "kwargs"]
    assert _unannotated(no_return) == ["return"]
    assert _unannotated(Unhinted) == ["return"]
    assert _unannotated(Hinted) == []


DOCTEST_MODULES = ["fastopt", "fastopt._backend"] + MODULES


def _doctests():
    """The docstrings' ``>>>`` examples of fastopt's public modules (the module docstrings and
    those of what each module defines), by name."""
    finder = __import__("doctest").DocTestFinder()
    found = {}
    for module_name in DOCTEST_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:         # mpi4py or torch missing
            continue
        for test in finder.find(module):
            if test.examples:
                found[test.name] = test
    return found


DOCTESTS = _doctests()


def _run_doctest(test):
    """Run ``test`` (a doctest.DocTest) in a namespace of its own; the failures' report."""
    import doctest
    import io
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    test.globs = {}                 # as a user's fresh interpreter: the example imports
    with fastopt.use_backend(fastopt.get_backend()):
        runner.run(test, out=out.write)
    return runner.failures, out.getvalue()


def test_the_docstrings_have_examples():
    # a walk that found none would pass the test below
    for name in ("fastopt.optim.Adam", "fastopt.arena", "fastopt.ewa.EWA",
                 "fastopt.schedules.LRScheduler", "fastopt._backend.use_backend"):
        assert name in DOCTESTS, sorted(DOCTESTS)


@pytest.mark.parametrize("name", sorted(DOCTESTS))
def test_docstring_examples_run_as_shown(name):
    """Each docstring's example runs as a user would paste it into a fresh interpreter (its
    own imports only) and prints what it shows, on the backend in use. (The arena module's
    example named np and fo without importing them, and assigned ``...`` into an array.)"""
    failures, report = _run_doctest(DOCTESTS[name])
    assert failures == 0, report


def test_the_docstring_example_check_can_fail():
    import doctest

    def shown_wrong():
        """
        >>> import fastopt as fo
        >>> fo.ewa_series([1.0, 1.0], 0.5).tolist()
        [1.0, 1.0]
        """

    def not_importing():
        """
        >>> fo.backends()[-1]
        'numpy'
        """
    for fn in (shown_wrong, not_importing):
        test = doctest.DocTestFinder().find(fn, fn.__name__, globs={"fo": fastopt})[0]
        assert _run_doctest(test)[0] == 1
