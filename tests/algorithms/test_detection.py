import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flead_app.algorithms.detection import (
    ABS_Z_MEAN,
    FEATURE_NAMES,
    NUM_FEATURES,
    ROBUST_PATIENCE,
    Z_CLIP,
    DetectorState,
    score_batch,
    severity,
    stillness,
)


def test_severity_bands():
    assert severity(2.0) is None
    assert severity(2.5) is None  # strictly above the threshold
    assert severity(2.6) == "warning"
    assert severity(-2.9) == "warning"
    assert severity(3.0) == "critical"
    assert severity(-7.0) == "critical"


def test_spike_scores_high_after_warmup_and_not_before():
    rng = np.random.default_rng(3)
    values = rng.normal(50.0, 2.0, 300)
    values[200] = 50.0 + 10 * 2.0
    result = score_batch(DetectorState(), values, min_history=10)
    assert not result.scored[:10].any() and result.scored[10:].all()
    assert result.z[200] > 5
    assert np.abs(result.z[20:200]).max() < 5
    assert result.features.shape == (300, NUM_FEATURES)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=120), st.integers(1, 119))
def test_batching_does_not_change_scores(values, cut):
    values = np.array(values)
    cut = min(cut, len(values) - 1)
    whole = score_batch(DetectorState(), values)
    first = score_batch(DetectorState(), values[:cut])
    second = score_batch(first.state, values[cut:])
    np.testing.assert_allclose(np.concatenate((first.z, second.z)), whole.z, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.concatenate((first.features, second.features)), whole.features, rtol=1e-6, atol=1e-6)


def test_constant_signal_gives_finite_features():
    result = score_batch(DetectorState(), np.full(50, 7.0))
    assert np.isfinite(result.features).all()
    assert np.abs(result.z).max() == pytest.approx(0.0)


def _features(values, min_history=10):
    r = score_batch(DetectorState(), np.asarray(values, dtype=float), min_history)
    return r, {name: r.features[:, j] for j, name in enumerate(FEATURE_NAMES)}


def test_features_are_centred_under_normal_operation():
    """i.i.d. normal readings (any level and scale): every feature averages about 0."""
    values = np.random.default_rng(11).normal(250.0, 7.0, 20_000)
    r, f = _features(values)
    for name, col in f.items():
        assert abs(col[r.scored][100:].mean()) < 0.03, name
    # the features are surprise scores in standard deviations: the same for any units
    r2, _ = _features(values * 1000.0 - 3.0)
    np.testing.assert_allclose(r2.features, r.features, atol=1e-6)


def test_stillness_is_distributed_like_abs_z_and_maxes_out_on_a_stuck_value():
    steps = np.random.default_rng(2).normal(0.0, np.sqrt(2.0), 50_000)  # steps of i.i.d. N(0, 1) readings
    scores = np.array([stillness(s) for s in steps])
    assert scores.mean() == pytest.approx(ABS_Z_MEAN, abs=0.01)
    assert scores.std() == pytest.approx(np.sqrt(1 - 2 / np.pi), abs=0.01)
    assert stillness(0.0) == Z_CLIP and stillness(5.0) < 1e-3
    values = np.random.default_rng(4).normal(20.0, 1.0, 80)
    values[60:70] = values[59]  # the sensor freezes
    r, f = _features(values)
    assert (f["stillness_z"][60:70] == Z_CLIP - ABS_Z_MEAN).all()
    assert f["stillness_z"][20:60].max() < 6


def test_a_level_shift_stays_visible_in_the_robust_features():
    rng = np.random.default_rng(7)
    values = rng.normal(100.0, 1.0, 60)
    values[30:60] += 6.0  # a shift for the rest of a short history: plain stats absorb it
    r, f = _features(values)
    assert np.abs(r.z[50:60]).max() < 2.5  # the alarm's z has stopped seeing it...
    assert f["robust_abs_z"][50:60].min() > 3.0  # ...the robust baseline has not
    assert f["robust_ewm_z"][50:60].min() > 3.0
    assert r.state.outliers == 30 and r.state.robust.count <= 30  # none of the shifted readings got in


def test_a_permanent_change_becomes_the_new_normal_after_the_patience():
    rng = np.random.default_rng(8)
    values = np.concatenate((rng.normal(0.0, 1.0, 50), rng.normal(8.0, 1.0, ROBUST_PATIENCE + 400)))
    r, f = _features(values)
    assert f["robust_abs_z"][50 : 50 + ROBUST_PATIENCE].min() > 3.0
    assert np.median(f["robust_abs_z"][-50:]) < 1.0  # absorbed
    assert r.state.outliers == 0
