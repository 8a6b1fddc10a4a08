import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flead_app.algorithms.aggregation import (
    CoordinateMedian,
    FedAvg,
    TrimmedMean,
    coordinate_median,
    federated_step,
    make_aggregator,
    staleness_weights,
    trimmed_mean,
    weighted_accuracy,
    weighted_average,
)

NO_STALENESS = np.zeros(3)

DESCRIPTION_UPDATES = np.array([[0.45, 0.35, 0.25], [0.55, 0.25, 0.20], [0.48, 0.32, 0.23]])
DESCRIPTION_SAMPLES = np.array([500, 400, 300])


def test_description_worked_example():
    """The description's formula, (w1*500 + w5*400 + w8*300) / 1200, evaluated exactly.

    The description prints [0.494, 0.323, 0.223] as its result, but its own formula gives
    589/1200 = 0.491 for the first weight (225 + 220 + 144 = 589), and no non-negative
    weighting of the three updates yields the printed vector; we follow the formula.
    """
    result = weighted_average(DESCRIPTION_UPDATES, DESCRIPTION_SAMPLES)
    np.testing.assert_allclose(result, [589 / 1200, 371 / 1200, 274 / 1200])
    assert result.round(3).tolist() == [0.491, 0.309, 0.228]
    combined = FedAvg(staleness_exponent=0.5).combine(DESCRIPTION_UPDATES, DESCRIPTION_SAMPLES, NO_STALENESS)
    assert combined.round(3).tolist() == [0.491, 0.309, 0.228]


def test_printed_description_vector_is_not_a_weighted_average():
    target = np.array([0.494, 0.323, 0.223])
    solved = np.linalg.solve(DESCRIPTION_UPDATES.T, target)
    assert (solved < 0).any()  # only negative weights reproduce it


def test_global_accuracy_is_sample_weighted():
    assert weighted_accuracy(np.array([0.8, 0.6]), np.array([300, 100])) == pytest.approx(0.75)


def test_staleness_discounts_older_updates():
    w = staleness_weights(np.array([100, 100]), np.array([0, 3]), exponent=0.5)
    assert w[0] == 100 and w[1] == pytest.approx(50)
    fresh_wins = FedAvg().combine(np.array([[1.0], [0.0]]), np.array([100, 100]), np.array([0, 3]))
    assert fresh_wins[0] == pytest.approx(2 / 3)


params = st.lists(st.lists(st.floats(-10, 10, allow_nan=False), min_size=3, max_size=3), min_size=1, max_size=25).map(
    np.array
)


@settings(max_examples=100, deadline=None)
@given(params, st.data())
def test_aggregates_stay_within_coordinate_bounds(p, data):
    samples = np.array(data.draw(st.lists(st.integers(1, 1000), min_size=len(p), max_size=len(p))))
    for result in (weighted_average(p, samples), coordinate_median(p), trimmed_mean(p, 0.2)):
        assert (result >= p.min(axis=0) - 1e-9).all() and (result <= p.max(axis=0) + 1e-9).all()


def test_robust_aggregators_resist_a_faulty_device():
    honest = np.tile([[0.5, -0.2, 0.1]], (19, 1))
    faulty = np.array([[1e6, -1e6, 1e6]])
    p = np.vstack((honest, faulty))
    samples = np.full(20, 50)
    none = np.zeros(20)
    assert abs(FedAvg().combine(p, samples, none)[0]) > 1000
    np.testing.assert_allclose(CoordinateMedian().combine(p, samples, none), honest[0])
    np.testing.assert_allclose(TrimmedMean(0.1).combine(p, samples, none), honest[0])


def test_aggregators_are_made_from_their_setting_names():
    assert make_aggregator("fedavg", staleness_exponent=0.0) == FedAvg(0.0)
    assert make_aggregator("median") == CoordinateMedian()
    assert make_aggregator("trimmed_mean", trim_ratio=0.2) == TrimmedMean(0.2)
    with pytest.raises(ValueError, match="unknown aggregator"):
        make_aggregator("mean")


DESCRIPTION_V1 = np.array([0.5, 0.3, 0.2])


def test_description_worked_example_as_changes_from_the_same_base():
    """Three updates that all started from global v1: the change-based step is the same average."""
    bases = np.tile(DESCRIPTION_V1, (3, 1))
    result = federated_step(DESCRIPTION_UPDATES, bases, DESCRIPTION_V1, DESCRIPTION_SAMPLES, np.zeros(3))
    np.testing.assert_allclose(result, [589 / 1200, 371 / 1200, 274 / 1200])
    assert result.round(3).tolist() == [0.491, 0.309, 0.228]


def test_a_stale_update_adds_its_change_instead_of_dragging_the_model_back():
    current = np.array([1.0, -3.0])  # v5
    v0 = np.array([0.0, -3.0])
    fresh = current + [0.1, 0.0]  # started from v5, moved +0.1
    stale = v0 + [0.1, 0.0]  # started from v0, made the same move
    params, bases = np.array([fresh, stale]), np.array([current, v0])
    step = federated_step(params, bases, current, np.array([10, 10]), np.array([0, 5]), FedAvg(0.0))
    np.testing.assert_allclose(step, [1.1, -3.0])
    plain = FedAvg(0.0).combine(params, np.array([10, 10]), np.array([0, 5]))
    assert plain[0] == pytest.approx(0.6)  # averaging absolute weights undoes half of v1..v5


def test_an_update_whose_base_is_unknown_counts_with_its_absolute_weights():
    current = np.array([1.0, 1.0])
    params = np.array([[2.0, 2.0], [0.0, 0.0]])
    bases = np.array([[1.0, 1.0], [np.nan, np.nan]])
    step = federated_step(params, bases, current, np.array([1, 1]))
    np.testing.assert_allclose(step, [1.0, 1.0])  # +1 from the first, -1 (= 0 - current) from the second


def test_robust_aggregators_work_on_changes_too():
    current = np.array([0.5, -0.2, 0.1])
    honest = current + np.tile([[0.01, 0.0, -0.01]], (19, 1))
    params = np.vstack((honest, [[1e6, -1e6, 1e6]]))
    bases = np.tile(current, (20, 1))
    step = federated_step(params, bases, current, np.full(20, 50), aggregator=CoordinateMedian())
    np.testing.assert_allclose(step, honest[0])
