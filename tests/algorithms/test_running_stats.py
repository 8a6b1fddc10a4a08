import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flead_app.algorithms.running_stats import RunningStats, prefix_stats

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=1, max_size=200), st.integers(min_value=0, max_value=200))
def test_prefix_stats_match_numpy_for_any_split(values, cut):
    values = np.array(values)
    cut = min(cut, len(values))
    _, _, _, first = prefix_stats(RunningStats(), values[:cut])
    count, mean, std, after = prefix_stats(first, values[cut:])
    assert after.count == len(values)
    np.testing.assert_allclose(after.mean, values.mean(), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(after.variance, values.var(ddof=1) if len(values) > 1 else 0.0, rtol=1e-6, atol=1e-3)
    for i in range(len(values) - cut):
        history = values[: cut + i]
        assert count[i] == len(history)
        if len(history):
            np.testing.assert_allclose(mean[i], history.mean(), rtol=1e-9, atol=1e-6)
        if len(history) > 1:
            np.testing.assert_allclose(std[i], history.std(ddof=1), rtol=1e-6, atol=1e-3)
        else:
            assert std[i] == 0.0


def test_empty_batch_leaves_stats_unchanged():
    stats = RunningStats(5, 2.0, 8.0)
    count, mean, std, after = prefix_stats(stats, np.array([]))
    assert after == stats and count.shape == (0,)
