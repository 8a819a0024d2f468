"""Learning-rate schedules, exponentially weighted averages and mini-batches, against the
course's numbers and formulas written out here."""
import copy
import math
import pickle
import re
import warnings

import numpy as np
import pytest

import fastopt as fo
from conftest import GRID_BACKENDS


# ----------------------------------------------------------------------------- schedules
def test_inverse_time_decay_matches_the_course():
    fn = fo.schedules.inverse_time_decay(0.2, decay_rate=1.0)
    np.testing.assert_allclose([fn(e) for e in (1, 2, 3, 4)], [0.1, 0.2 / 3, 0.05, 0.04])


def test_other_schedules():
    assert fo.schedules.exponential_decay(1.0, 0.5)(3) == 0.125
    assert fo.schedules.inverse_sqrt_decay(0.3, k=2.0)(4) == pytest.approx(0.3)
    assert fo.schedules.staircase(1.0, 0.1, every=10)(25) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="epoch"):
        fo.schedules.inverse_sqrt_decay(0.3)(0)


def test_lr_scheduler_counts_epochs_from_zero_and_sets_every_group():
    opt = fo.SGD([{"params": [np.ones(2)]}, {"params": [np.ones(2)], "lr": 9.0}], lr=1.0)
    sched = fo.schedules.LRScheduler(opt, fo.schedules.inverse_time_decay(1.0, 1.0))
    assert sched.step() == 1.0 and opt.lr == 1.0
    assert sched.step() == 0.5 and all(g["lr"] == 0.5 for g in opt.param_groups)
    sched.step(epoch=3)
    assert opt.lr == 0.25


SCHEDULES = [("inverse_time_decay", (0.2, 1.0), lambda e: 0.2 / (1.0 + 1.0 * e)),
             ("inverse_time_decay", (0.1, 0.37), lambda e: 0.1 / (1.0 + 0.37 * e)),
             ("exponential_decay", (0.1, 0.5), lambda e: 0.1 * 0.5 ** e),
             ("exponential_decay", (0.3,), lambda e: 0.3 * 0.95 ** e),
             ("inverse_sqrt_decay", (0.3, 2.0), lambda e: 2.0 * 0.3 / math.sqrt(e)),
             ("inverse_sqrt_decay", (0.07,), lambda e: 1.0 * 0.07 / math.sqrt(e)),
             ("staircase", (1.0, 0.1, 10), lambda e: 1.0 * 0.1 ** (e // 10)),
             ("staircase", (0.3, 0.7, 3), lambda e: 0.3 * 0.7 ** (e // 3))]


@pytest.mark.parametrize("name,args,formula", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_schedules_pickle_and_copy_with_the_same_numbers(name, args, formula):
    """The built-in schedules pickle and deepcopy (a checkpoint of an optimizer and its
    scheduler), give the formula's numbers bit for bit, and show their arguments."""
    fn = getattr(fo.schedules, name)(*args)
    for other in (pickle.loads(pickle.dumps(fn)), copy.deepcopy(fn)):
        for epoch in range(1, 40):
            assert fn(epoch) == other(epoch) == formula(epoch)
            assert type(fn(epoch)) is float
    assert repr(fn).startswith(name + "(") and all(repr(a) in repr(fn) for a in args)


@pytest.mark.parametrize("name,args,formula", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_a_schedules_arguments_set_later_are_checked_as_when_made(name, args, formula):
    """``fn.decay_rate = -3`` had been kept and made negative rates (``fn.lr0 = nan`` NaN
    ones): an argument set later is checked as the constructor checks it, naming it, and
    kept as it is; a valid one is taken (as a Python float: a float32 lr0 does not set the
    arithmetic's precision)."""
    fn = getattr(fo.schedules, name)(*args)
    for field in fn._fields:
        before = getattr(fn, field)
        for bad, error in ((-3, ValueError), (math.nan, ValueError), (math.inf, ValueError),
                           ("1", TypeError), (None, TypeError)):
            with pytest.raises(error, match=field):
                setattr(fn, field, bad)
            assert getattr(fn, field) == before
    fn.lr0 = np.float32(0.25)
    assert type(fn.lr0) is float and fn.lr0 == 0.25
    fresh = getattr(fo.schedules, name)(0.25, *args[1:])
    assert [fn(e) for e in range(1, 9)] == [fresh(e) for e in range(1, 9)]
    # one saved with a bad argument (by a version that did not check sets) does not load
    object.__setattr__(fn, fn._fields[-1], -2.0)
    for load in (lambda: pickle.loads(pickle.dumps(fn)), lambda: copy.deepcopy(fn)):
        with pytest.raises(ValueError, match=fn._fields[-1]):
            load()


def test_an_lr_scheduler_pickles_and_resumes_exactly():
    opt = fo.SGD([np.zeros(3)], lr=0.1)
    sched = fo.schedules.LRScheduler(opt, fo.schedules.exponential_decay(0.1, base=0.5))
    sched.step(), sched.step()
    opt2, sched2 = pickle.loads(pickle.dumps((opt, sched)))
    assert sched2.opt is opt2 and sched2.epoch == 1 and opt2.lr == opt.lr == 0.05
    assert [sched.step() for _ in range(3)] == [sched2.step() for _ in range(3)] == \
        [0.025, 0.0125, 0.00625]
    assert opt2.lr == opt.lr


def test_an_lr_scheduler_state_dict_resumes_the_epochs_and_refuses_bad_ones():
    """state_dict() / load_state_dict() as torch's schedulers have them (checkpoint code calls
    them): a fresh scheduler loaded from one after two steps sets epoch 2 next; the optimizer's
    lr is left to its own state dict. Bad state dicts raise naming the problem and change
    nothing."""
    fn = fo.schedules.exponential_decay(0.1, base=0.5)
    opt = fo.SGD([np.zeros(3)], lr=0.1)
    sched = fo.schedules.LRScheduler(opt, fn)
    assert sched.state_dict() == {"epoch": -1}
    sched.step(), sched.step()
    saved = sched.state_dict()
    assert saved == {"epoch": 1}
    opt2 = fo.SGD([np.zeros(3)], lr=0.3)
    sched2 = fo.schedules.LRScheduler(opt2, fn)
    sched2.load_state_dict(saved)
    assert sched2.epoch == 1 and opt2.lr == 0.3
    assert sched2.step() == 0.025 and opt2.lr == 0.025
    for bad, kind, match in [([1], TypeError, "must be a dict"), ({}, ValueError, "no 'epoch'"),
                             ({"epoch": "1"}, TypeError, "must be a number"),
                             ({"epoch": None}, TypeError, "must be a number"),
                             ({"epoch": True}, TypeError, "must be a number"),
                             ({"epoch": float("nan")}, ValueError, "NaN")]:
        with pytest.raises(kind, match=match):
            sched2.load_state_dict(bad)
        assert sched2.epoch == 2
    with pytest.raises(ValueError, match="NaN"):      # (as load_state_dict refuses it)
        sched2.step(float("nan"))
    assert sched2.epoch == 2
    sched2.load_state_dict({"epoch": np.int64(4)})
    assert sched2.epoch == 4 and type(sched2.epoch) is int
    sched2.load_state_dict({"epoch": np.array(5)})          # (a 0-d array, as step() takes)
    assert sched2.epoch == 5 and type(sched2.epoch) is int


@pytest.mark.parametrize("epoch", [2.5, np.float64(4.0), np.array(2), np.int32(3), -3])
def test_an_lr_scheduler_state_dict_loads_back_any_epoch_step_set(epoch):
    """A state dict after step(epoch) with any epoch the schedule took (a float, a NumPy scalar
    or 0-d array; a negative one for an fn that takes it) loads back, and the next step() goes
    on from it, as torch's schedulers (they keep last_epoch as given). It held the epoch as
    given and load_state_dict took only an int >= -1: such a checkpoint did not resume."""
    schedule = fo.schedules.exponential_decay(0.1, base=0.5)
    fn = (lambda e: schedule(abs(e))) if epoch == -3 else schedule
    opt = fo.SGD([np.zeros(3)], lr=0.1)
    sched = fo.schedules.LRScheduler(opt, fn)
    sched.step(epoch)
    saved = sched.state_dict()
    assert type(saved["epoch"]) in (int, float) and saved["epoch"] == epoch
    sched2 = fo.schedules.LRScheduler(fo.SGD([np.zeros(3)], lr=0.1), fn)
    sched2.load_state_dict(pickle.loads(pickle.dumps(saved)))
    assert sched2.state_dict() == saved
    assert sched2.step() == sched.step() == fn(epoch + 1)


def test_lr_scheduler_step_that_raises_keeps_its_epoch_and_lr():
    """A refused step (by the schedule or by the optimizer's lr setter) changes nothing: the
    epoch is the last one set, and the next step() retries the same epoch."""
    opt = fo.SGD([np.zeros(3)], lr=0.1)
    calls = []

    def fn(epoch):
        calls.append(epoch)
        if epoch == 3:
            raise ValueError("no lr for epoch 3")
        return [0.1, -1.0, 0.05][epoch]
    sched = fo.schedules.LRScheduler(opt, fn)
    assert sched.step() == 0.1 and sched.epoch == 0
    for _ in range(2):
        with pytest.raises(ValueError, match="lr"):
            sched.step()                                 # fn(1) = -1: refused by opt.lr
        assert sched.epoch == 0 and opt.lr == 0.1
    assert calls == [0, 1, 1]
    assert sched.step(2) == 0.05 and sched.epoch == 2 and opt.lr == 0.05
    with pytest.raises(ValueError, match="epoch 3"):
        sched.step()
    assert sched.epoch == 2 and opt.lr == 0.05
    with pytest.raises(IndexError):
        sched.step(epoch=7)
    assert sched.epoch == 2 and opt.lr == 0.05
    assert sched.get_last_lr() == 0.05


def test_lr_scheduler_refuses_what_it_cannot_drive_when_made():
    """LRScheduler(opt, 0.1) or LRScheduler(None, fn) were made, and failed at the first
    step() with "'float' object is not callable" or an AttributeError on None."""
    opt, fn = fo.SGD([np.zeros(3)], lr=0.1), fo.schedules.exponential_decay(0.1)
    with pytest.raises(TypeError, match=r"fn must be callable .* got float"):
        fo.schedules.LRScheduler(opt, 0.1)
    for bad in (None, [opt], fn):
        with pytest.raises(TypeError,
                           match=rf"opt must be an optimizer .* got {type(bad).__name__}"):
            fo.schedules.LRScheduler(bad, fn)


def test_lr_scheduler_drives_torch_optimizers_by_their_param_groups():
    """fastopt.torch's optimizers (and torch.optim's) have no ``lr``: LRScheduler refused
    them ("opt must have an lr to set (an optimizer), got SGD"), though documented to drive
    every fastopt optimizer. Every group's lr is set, a tensor lr filled in place, and the
    next step uses it."""
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft
    fn = fo.schedules.exponential_decay(0.1, base=0.5)
    for make in (ft.SGD, torch.optim.SGD):
        p, q = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
        lr_tensor = torch.tensor(0.3, dtype=torch.float64)
        opt = make([{"params": [p]}, {"params": [q], "lr": lr_tensor}], lr=0.2)
        sched = fo.schedules.LRScheduler(opt, fn)
        assert sched.step() == 0.1 and sched.step() == 0.05
        assert opt.param_groups[0]["lr"] == 0.05
        assert opt.param_groups[1]["lr"] is lr_tensor and lr_tensor.item() == 0.05
        assert sched.get_last_lr() == 0.05
        p.grad, q.grad = torch.ones(2), torch.ones(1)
        opt.step()
        assert torch.equal(p, torch.full((2,), -0.05)) and torch.equal(q, torch.full((1,), -0.05))
        opt.param_groups[0]["lr"] = 0.5
        assert sched.get_last_lr() == [0.5, 0.05]
        # a step that raises changes nothing: an lr fastopt's own setter refuses (None had
        # been set in the first group before the tensor's fill_ raised; -1 was set)
        for bad in (None, -1.0, float("nan")):
            bad_sched = fo.schedules.LRScheduler(opt, lambda epoch, bad=bad: bad)
            with pytest.raises((TypeError, ValueError), match="lr"):
                bad_sched.step()
            assert opt.param_groups[0]["lr"] == 0.5 and lr_tensor.item() == 0.05
            assert bad_sched.epoch == -1
        # nor does a later group's tensor lr that cannot take it (the hyper-parameter probe
        # and its review: the groups before it had been set; an integer one held 0.05 as 0)
        leaf = torch.tensor([0.25], requires_grad=True)
        with torch.inference_mode():
            inference = torch.tensor(0.25)
        for bad, exc, message in (
                (torch.tensor(1), TypeError, "param group 2's lr is a tensor of torch.int64"),
                (leaf, RuntimeError, "param group 2's lr tensor cannot be set in place: a "
                                     "leaf Variable that requires grad"),
                (leaf[0], RuntimeError, "param group 2's lr tensor cannot be set in place: a "
                                        "view of a leaf Variable that requires grad"),
                # (unchanged NaN, seen as changed, had been copied back into, which raised)
                (torch.tensor(float("nan"), requires_grad=True), RuntimeError,
                 "param group 2's lr tensor cannot be set in place"),
                (inference, RuntimeError, "param group 2's lr is an inference tensor")):
            opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)]})
            opt.param_groups[2]["lr"] = bad     # (as a scheduler or a hand sets it)
            with pytest.raises(exc, match=message):
                sched.step()
            assert opt.param_groups[0]["lr"] == 0.5 and lr_tensor.item() == 0.05
            assert (bad.item() in (1, 0.25) or bad.isnan()) and sched.epoch == 1
            opt.param_groups.pop()
        # an interrupt as a fill_ returns: that group is set back too (the review)
        class Interrupting(torch.Tensor):
            def fill_(self, value):
                super().fill_(value)
                raise KeyboardInterrupt
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)],
                             "lr": torch.tensor(0.25).as_subclass(Interrupting)})
        with pytest.raises(KeyboardInterrupt):
            sched.step()
        assert [float(g["lr"]) for g in opt.param_groups] == [0.5, 0.05, 0.25]
        assert sched.epoch == 1
        opt.param_groups.pop()
        # (fill_ takes a leaf that requires grad under no_grad, as torch's schedulers)
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "lr": leaf})
        with torch.no_grad():
            assert sched.step() == 0.025
        assert opt.param_groups[0]["lr"] == 0.025 and leaf.item() == np.float32(0.025)


def test_inverse_sqrt_decay_refuses_epoch_0_and_a_scheduler_step_of_it_changes_nothing():
    """The formula starts at epoch 1 (API.md), the scheduler's count at 0: its first step()
    raises, leaving epoch and lr as they were; step(1) then works."""
    fn = fo.schedules.inverse_sqrt_decay(0.3, k=2.0)
    opt = fo.SGD([np.zeros(3)], lr=1.0)
    sched = fo.schedules.LRScheduler(opt, fn)
    epoch = sched.epoch
    with pytest.raises(ValueError, match=r"epoch: 0 \(must be >= 1\)"):
        sched.step()
    assert sched.epoch == epoch and opt.lr == 1.0
    assert sched.step(1) == 0.6 == opt.lr
    assert sched.step() == 2.0 * 0.3 / math.sqrt(2) == opt.lr


@pytest.mark.parametrize("epoch", [-1, -0.5, 0, 0.5, np.float32(0.99), np.int64(-3)])
def test_inverse_sqrt_decay_names_its_own_domain_for_every_epoch_below_1(epoch):
    """A negative epoch was refused as 'Invalid epoch: -1 (must be >= 0)', the range of the
    other schedules, though inverse_sqrt_decay takes epochs from 1 only (its docstring: 'a
    real number >= 1'); epochs in [0, 1) were refused with another message. Every epoch
    below 1 now gives the one message, naming epoch and the bound 1; from 0, where
    LRScheduler.step() starts counting, it says how to drive the schedule with one."""
    with pytest.raises(ValueError, match=r"^Invalid epoch: .* \(must be >= 1\)") as raised:
        fo.schedules.inverse_sqrt_decay(0.3)(epoch)
    assert ("LRScheduler" in str(raised.value)) == (0 <= epoch < 1)


def test_lr_scheduler_over_inverse_sqrt_decay_says_how_to_start_it():
    opt = fo.SGD([np.zeros(2)], lr=0.1)
    sched = fo.schedules.LRScheduler(opt, fo.schedules.inverse_sqrt_decay(0.3))
    with pytest.raises(ValueError, match=r"step\(epoch\) from 1, or wrap it, lambda e: fn\(e \+ 1\)"):
        sched.step()
    assert sched.epoch == -1 and opt.lr == 0.1
    assert sched.step(1) == 0.3 == opt.lr



# (schedule, epoch, the value as a float), each worked out here: a power past the float range is
# inf, one below it 0.0, 0 times a power that overflowed 0 (its true value is finite); an epoch
# of inf, or an int past the float range, gives the limit
_S = fo.schedules
FAR = [(_S.exponential_decay(0.1, 1.5), 2000, math.inf),        # 1.5**2000 ~ 1e352
       (_S.exponential_decay(0.1, 1.5), 10**6, math.inf),
       (_S.exponential_decay(0.1, 1.5), 10**300, math.inf),
       (_S.exponential_decay(0.1, 1.5), 1e300, math.inf),
       (_S.exponential_decay(0.1, 1.5), 10**400, math.inf),
       (_S.exponential_decay(0.1, 1.5), math.inf, math.inf),
       (_S.exponential_decay(0.1, 1.5), np.int64(2**62), math.inf),
       (_S.exponential_decay(0.1, 1.5), np.array(2000), math.inf),
       (_S.exponential_decay(1e300, 2.0), 2000, math.inf),
       (_S.exponential_decay(0.0, 1.5), 2000, 0.0),
       (_S.exponential_decay(0.0, 1.5), 10**400, 0.0),
       (_S.exponential_decay(0.0, 1.5), math.inf, 0.0),
       (_S.exponential_decay(0.0, 1.5), np.int64(2**62), 0.0),
       (_S.exponential_decay(0.1, 0.5), 10**400, 0.0),
       (_S.exponential_decay(0.1, 1.0), 10**400, 0.1),
       (_S.exponential_decay(0.1, 0.0), 10**400, 0.0),
       (_S.staircase(0.1, 1.5, 3), 10**6, math.inf),
       (_S.staircase(0.1, 2.0, 2.5), 1e300, math.inf),
       (_S.staircase(0.1, 2.0, 1), 10**400, math.inf),
       (_S.staircase(0.0, 2.0, 1), 2000, 0.0),
       (_S.staircase(0.1, 1.5, np.array(3)), 10**6, math.inf),
       (_S.staircase(0.1, 2.0, np.int64(1)), 2000, math.inf),
       (_S.staircase(0.1, 0.5, 3), math.inf, 0.0),
       (_S.staircase(0.1, 2.0, 1), math.inf, math.inf),
       (_S.staircase(0.1, 1.0, 3), math.inf, 0.1),
       (_S.inverse_time_decay(0.1, 0.0), math.inf, 0.1),
       (_S.inverse_time_decay(0.1, 0.5), math.inf, 0.0),
       (_S.inverse_time_decay(0.1, 0.5), 10**400, 0.0),
       (_S.inverse_sqrt_decay(0.1), math.inf, 0.0),
       (_S.inverse_sqrt_decay(0.1), 10**400, 0.0),
       (_S.inverse_sqrt_decay(1e308, 1e308), 1e300, math.inf),          # ~1e466
       (_S.inverse_sqrt_decay(0.0, 1e308), 10**700, 0.0),
       (_S.inverse_sqrt_decay(1e200, 1e200), math.inf, 0.0)]


# (schedule, epoch, the value) where a step of the formula leaves the float range but the value
# does not, each worked out here (q66: they were inf or 0.0)
WITHIN = [(_S.exponential_decay(1e-300, 1e10), 40, 1e100),
          (_S.exponential_decay(1e300, 1e-10), 40, 1e-100),
          (_S.exponential_decay(2.0**-1074, 2.0), 1100, 2.0**26),
          (_S.exponential_decay(2.0**-1074, 2.0), 1100.0, 2.0**26),
          (_S.exponential_decay(2.0**1000, 0.5), 2000, 2.0**-1000),
          (_S.staircase(1e300, 1e-10, 1), 40, 1e-100),
          (_S.staircase(2.0**-1074, 2.0, 2), 2201, 2.0**26),
          (_S.inverse_sqrt_decay(1e10, k=1e300), 1e20, 1e300),
          (_S.inverse_time_decay(0.1, 10.0), 1e308, 1e-310),
          (_S.inverse_time_decay(1e300, 1e300), 1e300, 1e-300),
          # base**epoch subnormal, its digits lost (4.9e-324 for 3.2e-324; q67)
          (_S.exponential_decay(1e300, 0.1), 323.5, 10.0**-23.5),
          (_S.exponential_decay(2.0**1000, 0.5), 1070, 2.0**-70),
          (_S.staircase(1e300, 0.1, 2), 646, 1e-23)]


@pytest.mark.parametrize("fn,epoch,want", WITHIN,
                         ids=[f"{f!r}({e!r})"[:60] for f, e, _ in WITHIN])
def test_schedules_give_a_value_in_range_where_a_step_of_the_formula_is_not(fn, epoch, want):
    """``lr0 * base**epoch`` with ``base**epoch`` past the float range, ``k * lr0`` past it,
    ``decay_rate * epoch`` past it: the value itself is within the range (torch's
    ExponentialLR, multiplying step by step, gives 1e100 for the first), and is returned to
    a few ulps (exactly for powers of two), not inf or 0.0."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = fn(epoch)
    assert got == pytest.approx(want, rel=1e-13, abs=0)
    if math.log2(want).is_integer() and want >= 2.0**-1022:
        assert got == want


@pytest.mark.parametrize("fn,epoch,want", FAR, ids=[f"{f!r}({e!r})"[:60] for f, e, _ in FAR])
def test_schedules_give_a_float_for_any_epoch_without_raising(fn, epoch, want):
    """exponential_decay(0.1, 1.5)(2000) raised OverflowError (Python's float **), as did
    staircase and every schedule at an epoch past the float range (10**400: 'int too large to
    convert to float'); NumPy epochs warned; 0 * an overflowed power was NaN, and 0 * inf
    at epoch inf. Each now returns the true value as a float (inf past the float range, 0.0
    below it), silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = fn(epoch)
    assert type(got) is float
    assert got == want, (fn, epoch, got, want)


@pytest.mark.parametrize("make,names", [(fo.schedules.exponential_decay, ("lr0", "base")),
                                        (fo.schedules.inverse_time_decay, ("lr0", "decay_rate")),
                                        (fo.schedules.inverse_sqrt_decay, ("lr0", "k")),
                                        (fo.schedules.staircase, ("lr0", "factor", "every"))])
def test_schedules_refuse_infinite_arguments_by_name(make, names):
    """An infinite lr0, base, rate, k or factor made a schedule of NaNs (inf * 0.0 once the
    power underflowed, 0 * inf at epoch 0 for a decay rate): refused when made, by name."""
    good = {"lr0": 0.1, "base": 0.5, "decay_rate": 0.5, "k": 1.0, "factor": 0.5, "every": 2}
    for name in names:
        args = [math.inf if n == name else good[n] for n in names]
        with pytest.raises(ValueError, match=rf"^Invalid {name}: inf \(must be in \["):
            make(*args)


@pytest.mark.parametrize("name,args,formula", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_schedules_refuse_bad_arguments_and_epochs_by_name(name, args, formula):
    """The schedules took any argument: None or a str failed only when called, with Python's
    own operator errors, and a negative or NaN lr0 or decay gave negative or NaN learning
    rates (inverse_time_decay(0.1, -1) divided by zero at epoch 1). Now each argument is a
    real number >= 0 (every >= 1), checked when the schedule is made, and the epoch a real
    number >= 0 (>= 1 for inverse_sqrt_decay), each error naming it."""
    make = getattr(fo.schedules, name)
    fields = ["lr0", {"inverse_time_decay": "decay_rate", "exponential_decay": "base",
                      "inverse_sqrt_decay": "k", "staircase": "factor"}[name], "every"]
    for i in range(len(args)):
        if fields[i] == "every":
            continue
        for bad, error in ((None, TypeError), ("0.1", TypeError), (-0.5, ValueError),
                           (float("nan"), ValueError)):
            spoilt = args[:i] + (bad,) + args[i + 1:]
            with pytest.raises(error, match=rf"Invalid {fields[i]}: "):
                make(*spoilt)
    fn = make(*args)
    for bad, error in ((None, TypeError), ("3", TypeError), (-1, ValueError),
                       (float("nan"), ValueError)):
        with pytest.raises(error, match=r"epoch"):
            fn(bad)


# (name, the arguments after lr0, the formula of lr0 and the epoch)
OF_LR0 = [("inverse_time_decay", (0.37,), lambda lr0, e: lr0 / (1.0 + 0.37 * e)),
          ("exponential_decay", (0.5,), lambda lr0, e: lr0 * 0.5 ** e),
          ("inverse_sqrt_decay", (2.0,), lambda lr0, e: 2.0 * lr0 / math.sqrt(e)),
          ("staircase", (0.7, 3), lambda lr0, e: lr0 * 0.7 ** (e // 3))]


@pytest.mark.parametrize("name,args,formula", OF_LR0, ids=[s[0] for s in OF_LR0])
def test_schedules_compute_in_python_floats_whatever_the_argument_types(name, args, formula):
    """A np.float32 lr0 made every learning rate a float32 computed in float32 (of lr0 = 0.1,
    0.1 / 1.37 came back 3e-9 off), a np.int64 epoch or every a np.float64, and integer
    arguments an int (exponential_decay(1, 2)(3) == 8): each now gives the formula's Python
    float."""
    lr0 = np.float32(0.1)
    fn = getattr(fo.schedules, name)(lr0, *args)
    for epoch in (1, 4, 11, np.int64(5), np.int32(12)):
        assert type(fn(epoch)) is float and fn(epoch) == formula(float(lr0), int(epoch))
    if name == "staircase":
        every = fo.schedules.staircase(0.1, 0.7, np.int64(3))
        assert type(every(7)) is float and every(7) == formula(0.1, 7)
    assert type(fo.schedules.exponential_decay(1, 2)(3)) is float


# ------------------------------------------------------- exponentially weighted averages
def test_ewa_series_matches_the_course_beta_098_example():
    theta = np.array([10.0, 20.0, 30.0])
    v = fo.ewa_series(theta, 0.98)
    np.testing.assert_allclose(v[1], 0.0196 * 10.0 + 0.02 * 20.0)
    corrected = fo.ewa_series(theta, 0.98, bias_correction=True)
    np.testing.assert_allclose(corrected[1], (0.0196 * 10.0 + 0.02 * 20.0) / 0.0396)
    np.testing.assert_allclose(corrected[0], 10.0)           # 0.02 * 10 / 0.02


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_ewa_object_tracks_the_corrected_average(backend):
    with fo.use_backend(backend):
        avg = fo.EWA(beta=0.9)
        assert avg.value is None and avg.t == 0
        out = avg.update(np.full((2, 2), 4.0))
        np.testing.assert_allclose(out, 4.0)                 # bias correction undoes the 0
        avg.update(np.full((2, 2), 2.0))
        v2 = 0.9 * 0.1 * 4.0 + 0.1 * 2.0
        np.testing.assert_allclose(avg.value, v2 / (1 - 0.81))
        assert avg.t == 2
        with pytest.raises(ValueError, match="shape"):
            avg.update(np.zeros(3))


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_ewa_update_that_raises_changes_nothing(backend):
    """A sample that is not an array of real numbers is refused (TypeError naming x) before
    anything is allocated or folded in: a refused first update fixes no shape and leaves no
    NaN value."""
    with fo.use_backend(backend):
        avg = fo.EWA(0.9)
        for bad in (np.array(["a", "b"]), ["1.0", "2.0"], [1.0, None], np.array([1j, 2.0]),
                    np.array([1.0, 2.0], dtype=object), None):
            with pytest.raises(TypeError, match=r"x must be .*real numbers, got"):
                avg.update(bad)
            assert avg.t == 0 and avg.value is None and avg._avg is None
        np.testing.assert_allclose(avg.update([1.0, 2.0, 3.0]), [1.0, 2.0, 3.0])
        assert avg.update(np.array([1, 1, 0], np.uint8)).dtype == np.float64
        value = avg.value
        for bad in (np.array(["a", "b", "c"]), np.zeros(2)):
            with pytest.raises((TypeError, ValueError), match="x"):
                avg.update(bad)
            assert avg.t == 2 and avg.value.tobytes() == value.tobytes()
        f32 = fo.EWA(0.5)
        with pytest.raises(TypeError, match="x"):
            f32.update(np.array(["a"]))
        assert f32.update(np.float32([2.0])).dtype == np.float32


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_ewa_beta_is_checked_by_name_and_folded_as_a_python_float(backend):
    """beta is a real number in [0, 1) (TypeError/ValueError naming it, as every other
    hyper-parameter; None and arrays gave NumPy's or Python's own comparison errors), and a
    NumPy scalar beta computes as its value would as a Python float: a np.float64 beta had
    float32 averages come back float64, and a np.float32 one bias-corrected float64 averages
    in float32 (5e-6 off). A 0-d average comes back as an array, as every other shape."""
    with fo.use_backend(backend):
        for bad, exc in [(None, TypeError), ("0.9", TypeError), (np.array([0.5, 0.6]), TypeError),
                         (float("nan"), ValueError), (1.0, ValueError)]:
            with pytest.raises(exc, match="Invalid beta"):
                fo.EWA(bad)
            with pytest.raises(exc, match="Invalid beta"):
                fo.ewa_series([1.0, 2.0], bad)
        for bad in ("no", None, 1):
            with pytest.raises(TypeError, match="bias_correction"):
                fo.EWA(0.9, bias_correction=bad)
            with pytest.raises(TypeError, match="bias_correction"):
                fo.ewa_series([1.0], 0.9, bias_correction=bad)
        f32 = fo.EWA(np.float64(0.5))
        assert f32.update(np.float32([2.0])).dtype == np.float32
        assert f32.value.dtype == np.float32
        beta = np.float32(0.999)
        x = np.array([1.0, 3.0, -2.0, 0.5, 7.0])
        avg, b, v = fo.EWA(beta), float(beta), 0.0
        for t, xt in enumerate(x, 1):
            v = b * v + (1 - b) * xt
            np.testing.assert_allclose(avg.update(np.array([xt])), [v / (1 - b ** t)], rtol=1e-12)
        np.testing.assert_allclose(fo.ewa_series(x, beta, bias_correction=True)[-1],
                                   v / (1 - b ** len(x)), rtol=1e-12)
        scalar = fo.EWA(0.5)
        out = scalar.update(3.0)
        assert isinstance(out, np.ndarray) and out.shape == () and out == 3.0
        assert isinstance(scalar.value, np.ndarray) and scalar.value.shape == ()



@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_ewa_of_float32_in_the_other_byte_order_stays_float32(backend):
    """A big-endian float32 sample (read from a file, a network buffer) is float32 values,
    but its dtype is not np.float32's: EWA and ewa_series averaged it in float64 and returned
    float64, where the docstrings say float32 stays float32."""
    x = np.array([1.5, -2.25, 3.0], dtype=np.dtype(np.float32).newbyteorder())
    native = x.astype(np.float32)
    with fo.use_backend(backend):
        avg, ref = fo.EWA(0.9), fo.EWA(0.9)
        for _ in range(3):
            out, expected = avg.update(x), ref.update(native)
            assert out.dtype == np.float32 and out.tobytes() == expected.tobytes()
    series = fo.ewa_series(x, 0.9, bias_correction=True)
    assert series.dtype == np.float32
    assert series.tobytes() == fo.ewa_series(native, 0.9, bias_correction=True).tobytes()



@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_ewa_infinities_and_overflow_propagate_without_warnings(backend):
    """ewa_series computed with NumPy scalars, which warn: an inf then a -inf (inf - inf)
    and a bias-corrected float64 average past the largest float64 were RuntimeWarnings
    (errors under -W error) where EWA's kernel, as every kernel, propagates inf and NaN
    silently; EWA's own bias correction warned on that overflow after the average and t had
    been updated, so an update raising under -W error had changed them."""
    big = [float(np.finfo(np.float64).max)] * 3
    v, expected = 0.0, []             # the formula in Python floats (which overflow silently)
    for t, x in enumerate(big, 1):
        v = 0.9 * v + (1 - 0.9) * x
        expected.append(v / (1 - 0.9 ** t))
    assert math.isinf(expected[1])
    with fo.use_backend(backend), warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(fo.ewa_series([np.inf, -np.inf, 1.0], 0.5),
                                      [np.inf, np.nan, np.nan])
        np.testing.assert_array_equal(fo.ewa_series(big, 0.9, bias_correction=True), expected)
        avg = fo.EWA(0.9)
        assert [avg.update([x])[0] for x in big] == expected and avg.t == 3
        avg = fo.EWA(0.5)
        avg.update([np.inf])
        assert np.isnan(avg.update([-np.inf])[0]) and avg.t == 2
        avg, tiny = fo.EWA(0.9), 1e-310     # a subnormal average's correction rounds, and
        with np.errstate(all="raise"):      # raised a FloatingPointError after the update
            assert avg.update([tiny])[0] == (1 - 0.9) * tiny / (1 - 0.9) and avg.t == 1
        avg = fo.EWA(0.5)                   # a float64 sample past float32's range, cast
        avg.update(np.zeros(1, np.float32))  # to a float32 average: NumPy's cast warned
        with np.errstate(all="raise"):
            assert avg.update(np.array([1e300]))[0] == np.inf and avg.t == 2
        avg, zero = fo.EWA(0.5), fo.EWA(0.5)  # and one below its range: 0
        avg.update(np.ones(1, np.float32)), zero.update(np.ones(1, np.float32))
        with np.errstate(all="raise"):
            assert avg.update(np.array([1e-50])) == zero.update(np.zeros(1, np.float32))
            assert avg.t == 2


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_ewa_copies_do_not_share_their_average(backend):
    """copy.copy(avg) shared the average array, which update() changes in place: updating
    the copy changed the original's value (and not its t). A copy, a deepcopy and a pickle
    each go on from the original's state on their own."""
    with fo.use_backend(backend):
        avg = fo.EWA(0.5)
        avg.update([2.0, 4.0])
        value, t = avg.value, avg.t
        for other in (copy.copy(avg), copy.deepcopy(avg), pickle.loads(pickle.dumps(avg))):
            np.testing.assert_allclose(other.update([4.0, 8.0]), [10 / 3, 20 / 3])
            assert other.t == 2
            assert avg.t == t and avg.value.tobytes() == value.tobytes()
        assert copy.copy(fo.EWA(0.5)).value is None


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_ewa_beta_and_bias_correction_set_later_are_checked_and_change_nothing(backend):
    """As the optimizers check a hyper-parameter set into a group at their next step:
    avg.beta set after construction was checked only by fastopt.ops.ewa_, whose range is
    [0, 1] (1.0, which the constructor refuses, made the corrected value inf with a
    divide-by-zero warning, an error under -W error raised after the average and t had
    changed), not by value (1.5 gave a negative correction); a np.float32 beta corrected in
    float32; a bias_correction of "no", 1.5 or None was taken by its truth. Expected: the
    constructor's errors naming them, from update (average and t as they were) and value; a
    NumPy beta folded as its Python float."""
    with fo.use_backend(backend), warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, bad, exc in (("beta", 1.0, ValueError), ("beta", 1.5, ValueError),
                               ("beta", float("nan"), ValueError), ("beta", "0.5", TypeError),
                               ("beta", None, TypeError), ("bias_correction", "no", TypeError),
                               ("bias_correction", 1.5, TypeError),
                               ("bias_correction", None, TypeError)):
            avg = fo.EWA(0.5)
            avg.update([2.0, 4.0])
            before = avg._avg.copy()
            setattr(avg, name, bad)
            with pytest.raises(exc, match=rf"^Invalid {name}: "):
                avg.update([4.0, 8.0])
            assert avg.t == 1 and avg._avg.tobytes() == before.tobytes(), (name, bad)
            with pytest.raises(exc, match=rf"^Invalid {name}: "):
                avg.value
        ours, python = fo.EWA(0.5), fo.EWA(0.5)
        ours.beta, python.beta = np.float32(0.999), float(np.float32(0.999))
        for x in ([1.0, 3.0], [-2.0, 0.5]):
            assert ours.update(x).tobytes() == python.update(x).tobytes()


@pytest.mark.parametrize("bad,exc,message", [
    (None, TypeError, "t must be an int, got NoneType"), ("3", TypeError, "got str"),
    (2.5, TypeError, "got float"), (True, TypeError, "got bool"),
    (-1, ValueError, r"Invalid t: -1 \(must be >= 0\)"),
    (10 ** 400, ValueError, r"Invalid t: 1000\d* \(must be <= 2\*\*53\)"),
    (0, ValueError, "t is 0 but the average is an array: an average has a count of 0 "
                    "exactly when it has no samples"),
    (2 ** 53, ValueError, "t is 2\\*\\*53, the largest count")],
    ids=["None", "str", "float", "bool", "negative", "huge", "0 after samples", "last"])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_ewa_count_set_later_is_checked_and_changes_nothing(backend, bad, exc, message):
    """The count ``t`` set by hand, as beta (the test above) and as load_state_dict checks it:
    None or "3" had been found by ``self.t += 1`` after the sample was folded in (an unnamed
    error), -1 gave an average of inf with a divide-by-zero warning, 2.5 a fractional
    correction (the hyper-parameter probe), 0 after samples inf, 10**400 an unnamed
    OverflowError after the sample was folded in, and a count before any sample a wrong
    first value (the review). A NumPy integer count is taken as its int."""
    with fo.use_backend(backend), warnings.catch_warnings():
        warnings.simplefilter("error")
        avg = fo.EWA(0.5)
        avg.update([2.0, 4.0])
        before = avg._avg.copy()
        avg.t = bad
        with pytest.raises(exc, match=message):
            avg.update([4.0, 8.0])
        assert avg._avg.tobytes() == before.tobytes()
        if bad != 2 ** 53:      # (an average that counted that far has a value)
            with pytest.raises(exc, match=message):
                avg.value
        avg.t = np.int64(1)
        assert avg.update([4.0, 8.0]).tolist() == [10 / 3, 20 / 3] and type(avg.t) is int
        fresh = fo.EWA(0.5)
        fresh.t = 3
        with pytest.raises(ValueError, match="t is 3 but the average is None"):
            fresh.update([2.0, 4.0])
        for zero in (0.0, False, np.float64(0)):    # (not ints: refused as any other t)
            fresh.t = zero
            with pytest.raises(TypeError, match="t must be an int"):
                fresh.update([2.0, 4.0])
        assert fresh._avg is None


def _npz_round_trip(sd, path, allow_pickle=False):
    """``sd`` through ``np.savez`` and ``np.load``, each entry an array, as a checkpoint."""
    np.savez(path, **{k: np.asarray(v) for k, v in sd.items()})
    with np.load(path, allow_pickle=allow_pickle) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_ewa_state_dict_resumes_bit_for_bit_through_pickle_and_npz(backend, dt, tmp_path):
    """EWA had no state_dict: a checkpoint of arrays and numbers could restore it only
    through the private _avg (.value is bias-corrected and has no setter). The state dict
    holds beta, bias_correction, t and the raw average (a copy: later updates leave a held
    dict as it is, and a loaded dict too), and a fresh EWA that loads it, through pickle or
    np.savez, goes on bit for bit as the original."""
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((3, 2)).astype(dt) for _ in range(7)]
    with fo.use_backend(backend):
        for bias_correction in (True, False):
            avg = fo.EWA(np.float32(0.9), bias_correction=bias_correction)
            for x in xs[:3]:
                avg.update(x)
            sd = avg.state_dict()
            assert sorted(sd) == ["avg", "beta", "bias_correction", "t"]
            assert (sd["beta"], sd["bias_correction"], sd["t"]) == (
                float(np.float32(0.9)), bias_correction, 3)
            assert sd["avg"].dtype == dt and sd["avg"].tobytes() == avg._avg.tobytes()
            held = sd["avg"].copy()
            twins = []
            for loaded in (pickle.loads(pickle.dumps(sd)),
                           _npz_round_trip(sd, tmp_path / "e.npz")):
                twin = fo.EWA(0.5, bias_correction=not bias_correction)
                twin.load_state_dict(loaded)
                assert twin.value.tobytes() == avg.value.tobytes()
                twins.append((twin, loaded, loaded["avg"].copy()))
            for x in xs[3:]:
                want = avg.update(x)
                for twin, _, _ in twins:
                    assert twin.update(x).tobytes() == want.tobytes()
            assert sd["avg"].tobytes() == held.tobytes()            # a copy, not the average
            for twin, loaded, before in twins:
                assert twin.t == avg.t == 7 and twin.value.tobytes() == avg.value.tobytes()
                assert loaded["avg"].tobytes() == before.tobytes()  # the loaded dict too
        # before the first update: no average (np.savez stores None as an object array)
        fresh = fo.EWA(0.8, bias_correction=False).state_dict()
        assert fresh == {"beta": 0.8, "bias_correction": False, "t": 0, "avg": None}
        for loaded in (pickle.loads(pickle.dumps(fresh)),
                       _npz_round_trip(fresh, tmp_path / "f.npz", allow_pickle=True)):
            twin = fo.EWA(0.5)
            twin.update(np.ones(4))
            twin.load_state_dict(loaded)
            assert (twin.beta, twin.bias_correction, twin.t, twin.value) == (0.8, False, 0, None)
            assert twin.update(xs[0]).tobytes() == fo.EWA(0.8, False).update(xs[0]).tobytes()
        swapped, native = fo.EWA(0.9), fo.EWA(0.9)    # the other byte order: its values
        swapped.load_state_dict({**sd, "avg": sd["avg"].astype(sd["avg"].dtype.newbyteorder())})
        native.load_state_dict(sd)
        assert swapped._avg.dtype == dt
        assert swapped.update(xs[0]).tobytes() == native.update(xs[0]).tobytes()


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_ewa_load_state_dict_refuses_bad_entries_by_name_and_changes_nothing(backend):
    """Each bad entry is an error naming it, raised before anything changes."""
    with fo.use_backend(backend):
        avg = fo.EWA(0.9)
        avg.update(np.float32([1.0, 2.0]))
        good = avg.state_dict()
        bad = [
            ([], TypeError, "state_dict must be a dict"),
            ({k: v for k, v in good.items() if k != "t"}, ValueError, "no 't'"),
            ({k: v for k, v in good.items() if k != "avg"}, ValueError, "no 'avg'"),
            ({**good, "value": good["avg"]}, ValueError, "the key 'value'"),
            ({**good, "t": -1}, ValueError, r"Invalid state_dict\['t'\]: -1"),
            ({**good, "t": 2.0}, TypeError, r"state_dict\['t'\] must be an int"),
            ({**good, "t": True}, TypeError, r"state_dict\['t'\] must be an int"),
            ({**good, "t": "2"}, TypeError, r"state_dict\['t'\] must be an int"),
            ({**good, "beta": float("nan")}, ValueError, r"Invalid state_dict\['beta'\]: nan"),
            ({**good, "beta": 1.0}, ValueError, r"Invalid state_dict\['beta'\]"),
            ({**good, "beta": None}, TypeError, r"Invalid state_dict\['beta'\]"),
            ({**good, "bias_correction": 1}, TypeError, r"state_dict\['bias_correction'\]"),
            ({**good, "avg": [1.0, 2.0]}, TypeError, r"state_dict\['avg'\] must be"),
            ({**good, "avg": np.array([1, 2])}, TypeError, r"state_dict\['avg'\] has dtype"),
            ({**good, "avg": np.float16([1, 2])}, TypeError, r"state_dict\['avg'\] has dtype"),
            ({**good, "avg": np.ma.masked_array([1.0, 2.0])}, TypeError,
             r"state_dict\['avg'\] must be a plain"),
            # a count and an average that no state_dict() gives (.value read inf, or 0.2)
            ({**good, "t": 0}, ValueError, r"state_dict\['t'\] is 0 but state_dict\['avg'\]"),
            ({**good, "avg": None}, ValueError,
             r"state_dict\['t'\] is 1 but state_dict\['avg'\] is None"),
        ]
        for sd, exc, match in bad:
            with pytest.raises(exc, match=match):
                avg.load_state_dict(sd)
            now = avg.state_dict()
            assert (now["beta"], now["bias_correction"], now["t"]) == (0.9, True, 1), match
            assert now["avg"].tobytes() == good["avg"].tobytes(), match
        # beta or bias_correction missing: this average's own, as an optimizer's hyper-params
        other = fo.EWA(0.5, bias_correction=False)
        other.load_state_dict({"t": 1, "avg": good["avg"]})
        assert (other.beta, other.bias_correction, other.t) == (0.5, False, 1)


def test_ewa_series_refuses_what_ewa_refuses():
    """ewa_series took complex samples (dropping the imaginary part with a warning) and object
    arrays (None became NaN) where EWA.update refuses them: a TypeError naming x."""
    for bad in (np.array([1j, 2.0]), np.array([1.0, None], dtype=object), ["a", "b"]):
        with pytest.raises(TypeError, match=r"x must be .*real numbers, got"):
            fo.ewa_series(bad, 0.9)
    np.testing.assert_allclose(fo.ewa_series([True, False], 0.5), [0.5, 0.25])


@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_ewa_refuses_masked_arrays(backend):
    """np.asarray dropped a masked array's mask: EWA.update and ewa_series averaged the
    masked values in (fo.ops.ewa_ refuses masked arrays for the same reason). A TypeError
    naming x, and nothing changed."""
    x = np.ma.masked_array([1.0, 100.0], mask=[False, True])
    with fo.use_backend(backend):
        avg = fo.EWA(0.5)
        with pytest.raises(TypeError, match="x must not be a masked array"):
            avg.update(x)                                 # a refused first sample
        assert avg.t == 0 and avg.value is None
        avg.update([1.0, 2.0])
        with pytest.raises(TypeError, match="x must not be a masked array"):
            avg.update(x)
        assert avg.t == 1 and avg.value.tolist() == [1.0, 2.0]
        with pytest.raises(TypeError, match="x must not be a masked array"):
            fo.ewa_series(x, 0.5)



@pytest.mark.parametrize("backend", GRID_BACKENDS)
def test_ewa_ragged_samples_are_value_errors_naming_x(backend):
    """A ragged sample raised NumPy's 'inhomogeneous shape' ValueError naming nothing
    (fo.minibatches names its X); nothing changed."""
    ragged = [[1.0, 2.0], [3.0]]
    with fo.use_backend(backend):
        avg = fo.EWA(0.5)
        avg.update([[1.0, 2.0], [3.0, 4.0]])
        with pytest.raises(ValueError, match="^x must be a rectangular array"):
            avg.update(ragged)
        assert avg.t == 1 and avg.value.tolist() == [[1.0, 2.0], [3.0, 4.0]]
        with pytest.raises(ValueError, match="^x must be a rectangular array"):
            fo.ewa_series(ragged, 0.5)


def test_staircase_refuses_a_nan_or_missing_every():
    """``every < 1`` was the check, which NaN passes (every lr after it was NaN) and None
    failed with Python's own comparison error."""
    with pytest.raises(ValueError, match="Invalid every: nan"):
        fo.schedules.staircase(0.1, 0.5, float("nan"))
    with pytest.raises(TypeError, match="Invalid every: None"):
        fo.schedules.staircase(0.1, 0.5, None)
    assert fo.schedules.staircase(0.1, 0.5, np.int64(2))(5) == pytest.approx(0.025)


# -------------------------------------------------------------------------- mini-batches
def test_minibatches_148_by_64_in_the_course_column_layout():
    X = np.arange(2 * 148).reshape(2, 148)
    Y = np.arange(148).reshape(1, 148)
    batches = list(fo.minibatches(X, Y, batch_size=64, axis=-1, seed=1))
    assert [b[0].shape[1] for b in batches] == [64, 64, 20]
    seen = np.concatenate([b[1][0] for b in batches])
    assert sorted(seen) == list(range(148)) and not np.array_equal(seen, np.arange(148))
    for xb, yb in batches:                                   # shuffled in sync
        np.testing.assert_array_equal(xb[1] - 148, yb[0])


def test_minibatches_rows_same_seed_same_batches_and_no_shuffle():
    X, Y = np.arange(10)[:, None] * 1.0, np.arange(10)
    a = [y.tolist() for _, y in fo.minibatches(X, Y, batch_size=4, seed=3)]
    b = [y.tolist() for _, y in fo.minibatches(X, Y, batch_size=4, seed=3)]
    assert a == b
    plain = [y.tolist() for _, y in fo.minibatches(X, Y, batch_size=4, shuffle=False)]
    assert plain == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError):
        list(fo.minibatches(X, Y, batch_size=0))
    with pytest.raises(ValueError):
        list(fo.minibatches(X, Y[:5]))


def test_minibatches_bad_seed_errors_name_the_seed():
    """numpy's own messages ('expected non-negative integer', 'SeedSequence expects int or
    sequence of ints ...') did not say which argument was wrong."""
    X, Y = np.arange(6.0)[:, None], np.arange(6)
    # (a bool: numpy seeds from True as from 1, where every other argument refuses bools; q66)
    for bad, error in ((-1, ValueError), (1.5, TypeError), ("a", TypeError), (True, TypeError),
                       (np.bool_(False), TypeError)):
        match = f"Invalid seed: {re.escape(repr(bad))}"
        with pytest.raises(error, match=match):
            list(fo.minibatches(X, Y, seed=bad))
        with pytest.raises(error, match=match):       # (had been unchecked)
            fo.minibatches(X, Y, shuffle=False, seed=bad)
    rng = np.random.default_rng(5)                  # a Generator is used as it is
    first = [y.tolist() for _, y in fo.minibatches(X, Y, batch_size=6, seed=rng)]
    assert first == [np.random.default_rng(5).permutation(6).tolist()]


def test_minibatches_ragged_lists_are_value_errors_naming_them():
    """A ragged list for X or Y raised NumPy's 'inhomogeneous shape' ValueError, naming
    neither (softmax's z and softmax_cross_entropy's logits and labels name theirs)."""
    X = np.arange(6.0)[:, None]
    for bad_X, bad_Y, name in (([[1.0, 2.0], [3.0]], [0, 1], "X"),
                               (X[:2], [[0], [1, 2]], "Y")):
        with pytest.raises(ValueError, match=rf"^{name} must be a rectangular array"):
            fo.minibatches(bad_X, bad_Y)


def test_minibatches_refuses_masked_arrays_naming_them():
    """np.asarray dropped a masked X's or Y's mask: the masked values were batched as data
    (EWA and the kernels refuse masked arrays for that). A TypeError naming it."""
    X, Y = np.arange(6.0)[:, None], np.arange(6)
    for bad_X, bad_Y, name in ((np.ma.masked_array(X, mask=X > 3), Y, "X"),
                               (X, np.ma.masked_array(Y, mask=Y > 3), "Y")):
        with pytest.raises(TypeError, match=rf"^{name} must not be a masked array"):
            fo.minibatches(bad_X, bad_Y)


def test_minibatches_refuse_none_naming_it():
    """None for X or Y (fo.minibatches, the course's random_mini_batches): a TypeError naming
    it, as the kernels say (NumPy's 0-d object array of None had given a ValueError about a
    0-d array or its shape)."""
    X, Y = np.zeros((4, 2)), np.zeros(4)
    for call in (lambda x, y: fo.minibatches(x, y),
                 lambda x, y: fo.course.random_mini_batches(
                     None if x is None else x.T, None if y is None else y[None, :])):
        for bad_X, bad_Y, name in ((None, Y, "X"), (X, None, "Y")):
            with pytest.raises(TypeError, match=rf"^{name} must be an array, got None"):
                call(bad_X, bad_Y)


def test_minibatches_refuses_a_bool_batch_size():
    """True is an int to Python: it had been taken as batches of one example (axis already
    refused bools); a bool batch_size is a TypeError as any other non-int (a float was a
    ValueError here and a TypeError in the course's random_mini_batches)."""
    X, Y = np.arange(6.0)[:, None], np.arange(6)
    for bad in (True, False, np.bool_(True), 4.0, "4"):
        with pytest.raises(TypeError, match="batch_size must be an int"):
            list(fo.minibatches(X, Y, batch_size=bad))
        with pytest.raises(TypeError, match="mini_batch_size must be an int"):
            fo.course.random_mini_batches(X.T, Y[None], mini_batch_size=bad)
    assert [len(y) for _, y in fo.minibatches(X, Y, batch_size=np.int8(4))] == [4, 2]


@pytest.mark.parametrize("size", [np.uint8(100), np.int8(100), np.uint8(200), np.int16(100)])
def test_small_numpy_int_batch_sizes_batch_every_example(size):
    """A NumPy int8 or uint8 batch size was added in its own type: over 300 examples
    np.uint8(100) gave batches of 100, 100 and 0 (an epoch missing 100 examples, said only by
    an overflow warning), np.int8(100) an OverflowError naming nothing at the second batch,
    and the course's random_mini_batches an OverflowError for both. The sizes of the equal
    Python int now."""
    m = 300
    X, Y = np.arange(2 * m, dtype=float).reshape(m, 2), np.arange(m)
    want = [int(size)] * (m // int(size)) + ([m % int(size)] if m % int(size) else [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # (NumPy's overflow warnings included)
        got = [len(y) for _, y in fo.minibatches(X, Y, batch_size=size, seed=0)]
        assert got == want
        assert sorted(np.concatenate([y for _, y in fo.minibatches(X, Y, batch_size=size)])
                      .tolist()) == list(range(m))
        batches = fo.course.random_mini_batches(X.T, Y[None], mini_batch_size=size)
        assert [b[1].shape[1] for b in batches] == want


@pytest.mark.parametrize("axis", [1, -1])
def test_minibatches_1d_labels_have_their_examples_along_their_only_axis(axis):
    """A 1-D Y has one axis: its examples lie along it whatever X's axis is (the course's
    (n_x, m) inputs with 1-D labels, spelled axis=1 or axis=-1)."""
    X, y = np.arange(10).reshape(2, 5), np.arange(5)
    batches = list(fo.minibatches(X, y, batch_size=2, axis=axis, seed=0))
    assert [(xb.shape, yb.shape) for xb, yb in batches] == [((2, 2), (2,))] * 2 + [((2, 1), (1,))]
    assert sorted(np.concatenate([yb for _, yb in batches])) == list(range(5))
    for xb, yb in batches:                                   # shuffled in sync
        np.testing.assert_array_equal(xb[0], yb)
        np.testing.assert_array_equal(xb[1] - 5, yb)
    X3 = np.arange(24).reshape(2, 3, 4)
    for ax in (1, -2):
        b = list(fo.minibatches(X3, np.arange(3), batch_size=2, axis=ax, shuffle=False))
        assert [(xb.shape, yb.tolist()) for xb, yb in b] == [((2, 2, 4), [0, 1]),
                                                               ((2, 1, 4), [2])]


def test_minibatches_mismatched_inputs_raise_value_error_naming_them():
    X = np.zeros((2, 5))
    for Y, match in ((np.arange(4), "X has 5 examples along axis 1 but Y has 4"),
                     (np.zeros((5, 2)), "X has 5 examples along axis 1 but Y has 2"),
                     (np.array(3), "Y must have at least 1 dimension"),
                     (np.zeros((2, 2, 5)), "X has 5 examples along axis 1 but Y has 2")):
        with pytest.raises(ValueError, match=match):
            list(fo.minibatches(X, Y, axis=1))
    for axis in (2, -3):
        with pytest.raises(ValueError, match=r"axis .* for X of shape \(2, 5\)"):
            list(fo.minibatches(X, np.zeros(5), axis=axis))
    with pytest.raises(ValueError, match=r"axis 2 for Y of shape \(1, 5\)"):
        list(fo.minibatches(np.zeros((2, 2, 5)), np.zeros((1, 5)), axis=2))
    with pytest.raises(ValueError, match="X must have at least 1 dimension"):
        list(fo.minibatches(np.array(1.0), np.zeros(1)))
    for axis in (1.0, None, True, np.True_, np.array([1]), np.array(1.0)):
        with pytest.raises(TypeError, match="axis must be an int"):
            list(fo.minibatches(X, np.zeros(5), axis=axis))
    # what operator.index takes, as NumPy's axes: a 0-d integer array too
    for axis in (np.array(1), np.int32(-1)):
        assert [y.tolist() for _, y in fo.minibatches(X, np.arange(5), batch_size=2,
                                                      axis=axis, shuffle=False)] == [
            [0, 1], [2, 3], [4]]


def test_minibatches_refuses_bad_arguments_when_called_not_at_the_first_next():
    """minibatches was a generator function: none of its checks ran until the first next(),
    so a bad batch_size, axis, shape or seed went unnoticed where the call was made (and
    forever if the iterator was never used); shuffle=None or "no" was taken as a truth value."""
    X, Y = np.zeros((6, 2)), np.zeros(6)
    bad = [(dict(batch_size=0), ValueError, "Invalid batch_size"),
           (dict(axis=2), ValueError, "Invalid axis 2"),
           (dict(axis=1.0), TypeError, "axis must be an int"),
           (dict(seed=-1), ValueError, "Invalid seed: -1"),
           (dict(shuffle=None), TypeError, "Invalid shuffle: None"),
           (dict(shuffle="no"), TypeError, "Invalid shuffle: 'no'")]
    for kwargs, error, match in bad:
        with pytest.raises(error, match=match):
            fo.minibatches(X, Y, **kwargs)
    with pytest.raises(ValueError, match="X has 6 examples along axis 0 but Y has 5"):
        fo.minibatches(X, Y[:5])
    batches = fo.minibatches(X, Y, batch_size=4, shuffle=np.bool_(False))
    assert [len(y) for _, y in batches] == [4, 2]


# ------------------------------------------------------------------ the contract's signatures
# API.md's signatures of the functions and classes other than the optimizers (whose are
# test_optimizers.API): names, order and defaults. A callable may take more parameters after
# these, each with a default (the layers' out=None).
API_SIGNATURES = {
    "schedules.inverse_time_decay": "(lr0, decay_rate)",
    "schedules.exponential_decay": "(lr0, base=0.95)",
    "schedules.inverse_sqrt_decay": "(lr0, k=1.0)",
    "schedules.staircase": "(lr0, factor, every)",
    "schedules.LRScheduler": "(opt, fn)",
    "schedules.LRScheduler.step": "(self, epoch=None)",
    "ewa_series": "(x, beta, bias_correction=False)",
    "EWA": "(beta, bias_correction=True)",
    "ops.ewa_": "(avg, x, beta)",
    "batchnorm_forward": "(x, gamma, beta, axis=0, eps=1e-05)",
    "batchnorm_backward": "(dy, cache)",
    "batchnorm_inference": "(x, gamma, beta, running_mean, running_var, axis=0, eps=1e-05)",
    "BatchNorm": "(num_features, axis=0, momentum=0.1, eps=1e-05, dtype=<class "
                 "'numpy.float32'>)",
    "BatchNorm.forward": "(self, x, training=True)",
    "BatchNorm.backward": "(self, dy)",
    "softmax": "(z, axis=-1)",
    "log_softmax": "(z, axis=-1)",
    "softmax_cross_entropy": "(logits, labels, axis=-1)",
    "minibatches": "(X, Y, batch_size=64, axis=0, shuffle=True, seed=None)",
    "backends": "()",
    "get_backend": "()",
    "set_backend": "(name)",
    "use_backend": "(name)",
    "set_num_threads": "(n)",
    "get_num_threads": "()",
}


def _leading_signature(obj, count):
    """``obj``'s first ``count`` parameters as a signature string, without type hints;
    AssertionError if a parameter after them has no default."""
    import inspect
    params = list(inspect.signature(obj).parameters.values())
    extra = [p.name for p in params[count:] if p.default is p.empty]
    assert not extra, f"{obj.__qualname__} also requires {extra}"
    return str(inspect.Signature([p.replace(annotation=p.empty) for p in params[:count]]))


def _check_signature(obj, want):
    count = 0 if want == "()" else want.count(",") + 1     # no default here holds a comma
    assert _leading_signature(obj, count) == want


@pytest.mark.parametrize("name", sorted(API_SIGNATURES))
def test_the_other_signatures_are_the_api_contract(name):
    obj = fo
    for part in name.split("."):
        obj = getattr(obj, part)
    _check_signature(obj, API_SIGNATURES[name])


def test_the_signature_check_can_fail():
    def other_default(lr0, base=0.9, out=None):
        """A default other than the contract's."""

    def requires_more(z, axis=-1, *, out):
        """A required parameter after the contract's."""
    with pytest.raises(AssertionError):
        _check_signature(other_default, "(lr0, base=0.95)")
    with pytest.raises(AssertionError, match="also requires"):
        _check_signature(requires_more, "(z, axis=-1)")
    _check_signature(other_default, "(lr0, base=0.9)")


@pytest.mark.parametrize("backend", GRID_BACKENDS)
@pytest.mark.parametrize("when", ["as the kernel returns", "before the kernel"])
@pytest.mark.parametrize("signal_raises", [KeyboardInterrupt, TimeoutError])
def test_an_interrupted_ewa_update_keeps_its_count_with_its_average(backend, when,
                                                                   signal_raises, monkeypatch):
    """Ctrl-C during ``update`` is raised as the compiled kernel returns, the sample folded
    in: ``t`` counts it (it did not: every later bias correction a step off). Raised before
    the kernel was called, it changes nothing. Simulated: the backend's kernel runs, then
    raises KeyboardInterrupt; or the beta check raises it. The same for another exception a
    signal handler raises (a timeout's TimeoutError)."""
    from fastopt import _backend
    samples = [np.arange(4.0) * k for k in range(1, 4)]
    after = when == "as the kernel returns"
    with fo.use_backend(backend):
        ours, ref = fo.EWA(beta=0.9, bias_correction=True), fo.EWA(beta=0.9, bias_correction=True)
        real = _backend.active.ewa

        def interrupted(*args, **kwargs):
            real(*args, **kwargs)
            raise signal_raises

        def interrupt(*args, **kwargs):
            raise signal_raises

        for x in samples:
            if after:
                monkeypatch.setattr(_backend.active, "ewa", interrupted)
            else:
                monkeypatch.setattr(fo.ops, "_check_ewa", interrupt)
            with pytest.raises(signal_raises):
                ours.update(x)
            monkeypatch.undo()
            if after:
                ref.update(x)
            assert ours.t == ref.t
            if ref.t:
                np.testing.assert_array_equal(ours.value, ref.value)
        np.testing.assert_array_equal(ours.update(samples[0]), ref.update(samples[0]))


class _Unreadable:
    """An array-like whose conversion fails as a torch tensor that requires grad fails."""

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("Can't call numpy() on Tensor that requires grad.")


@pytest.mark.parametrize("name,call", [
    ("z", lambda bad: fo.softmax(bad)),
    ("z", lambda bad: fo.log_softmax(bad)),
    ("logits", lambda bad: fo.softmax_cross_entropy(bad, np.array([0, 1]))),
    ("labels", lambda bad: fo.softmax_cross_entropy(np.ones((2, 3)), bad)),
    ("x", lambda bad: fo.EWA(0.9).update(bad)),
    ("x", lambda bad: fo.ewa_series(bad, 0.9)),
    ("X", lambda bad: fo.minibatches(bad, np.arange(2))),
    ("init for 'W'", lambda bad: fo.ParameterArena().add("W", (2, 3), init=bad)),
], ids=["softmax", "log_softmax", "xent-logits", "xent-labels", "EWA", "ewa_series",
        "minibatches", "arena-init"])
def test_an_array_like_that_refuses_conversion_is_a_type_error_naming_it(name, call):
    """An array-like's own error on conversion (torch's RuntimeError for a tensor that
    requires grad) becomes a TypeError naming the argument (it had come through naming none)."""
    with pytest.raises(TypeError, match=rf"^{name} could not be read as a NumPy array: Can't"):
        call(_Unreadable())
