import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flead_app.algorithms.detection import NUM_FEATURES, DetectorState, score_batch, severity


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
