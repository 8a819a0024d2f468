"""Learning-rate schedules, exponentially weighted averages and mini-batches, against the
course's numbers and formulas written out here."""
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
    with pytest.raises(ValueError):
        fo.schedules.inverse_sqrt_decay(0.3)(0)


def test_lr_scheduler_counts_epochs_from_zero_and_sets_every_group():
    opt = fo.SGD([{"params": [np.ones(2)]}, {"params": [np.ones(2)], "lr": 9.0}], lr=1.0)
    sched = fo.schedules.LRScheduler(opt, fo.schedules.inverse_time_decay(1.0, 1.0))
    assert sched.step() == 1.0 and opt.lr == 1.0
    assert sched.step() == 0.5 and all(g["lr"] == 0.5 for g in opt.param_groups)
    sched.step(epoch=3)
    assert opt.lr == 0.25


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
