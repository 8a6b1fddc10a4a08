import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flead_app.algorithms.detection import DetectorState, score_batch
from flead_app.algorithms.running_stats import RunningStats

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=1, max_size=200), st.integers(min_value=0, max_value=200))
def test_the_running_statistics_match_numpy_however_the_readings_are_split(values, cut):
    """Welford's update in ``score_batch``, fed in two batches, gives the statistics of all readings."""
    values = np.array(values)
    cut = min(cut, len(values))
    first = score_batch(DetectorState(), values[:cut]).state
    after = score_batch(first, values[cut:]).state.stats
    assert after.count == len(values)
    np.testing.assert_allclose(after.mean, values.mean(), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(after.variance, values.var(ddof=1) if len(values) > 1 else 0.0, rtol=1e-6, atol=1e-3)


def test_an_empty_batch_leaves_the_statistics_unchanged():
    state = DetectorState(stats=RunningStats(5, 2.0, 8.0))
    assert score_batch(state, np.array([])).state.stats == state.stats
