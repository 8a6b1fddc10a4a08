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


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=0, max_size=60),
    st.integers(0, 30),
    st.floats(0, 5),
)
def test_small_batch_loop_matches_the_vectorised_path(values, warm, ewm):
    from flead_app.algorithms.detection import _score_small, _score_vectorised

    rng = np.random.default_rng(warm)
    start = score_batch(DetectorState(ewm_abs_z=ewm), rng.normal(3, 2, warm)).state if warm else DetectorState()
    values = np.array(values)
    a = _score_small(start, values, 10)
    b = _score_vectorised(start, values, 10)
    np.testing.assert_array_equal(a.scored, b.scored)
    np.testing.assert_allclose(a.z, b.z, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.features, b.features, rtol=1e-6, atol=1e-6)
    assert a.state.stats.count == b.state.stats.count
    np.testing.assert_allclose(a.state.stats.mean, b.state.stats.mean, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(a.state.stats.m2, b.state.stats.m2, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(a.state.ewm_abs_z, b.state.ewm_abs_z, rtol=1e-6, atol=1e-9)
