"""The evaluation protocol: which readings each split scores, and how each model is applied."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flead_app.algorithms.protocol import (
    Decision,
    DeviceSeries,
    VersionModel,
    alarms_from,
    evaluate,
    prequential_scores,
)
from flead_app.algorithms.sgd import LinearModel


def _series(device: str, held_device: bool, n: int = 400, seed: int = 0, windows=((150, 190), (300, 340))):
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, np.int8)
    for a, b in windows:
        labels[a:b] = 1
    signal = labels * 3.0 + rng.normal(0, 1, n)
    return DeviceSeries(
        device_id=device,
        labels=labels,
        features=signal[:, None],
        z=signal,
        arrived_at=np.arange(n, dtype=float),
        heldout=rng.random(n) < 0.2,
        device_heldout=held_device,
        local_causal=signal - 2,
        local_final=signal - 2,
        local_decision=Decision(0.0, refractory=50),
    )


GOOD = VersionModel(5, LinearModel(np.array([2.0]), -4.0), Decision(0.0, refractory=50), created_at=100.0)
V0 = VersionModel(0, LinearModel(np.array([0.0]), -3.0), Decision(0.0), created_at=0.0)


def test_each_split_scores_its_own_readings_and_says_who_cannot_score_it():
    series = [_series("a", False, seed=1), _series("b", False, seed=2), _series("c", True, seed=3)]
    central = VersionModel(0, LinearModel(np.array([1.5]), -3.0), Decision(0.0, 50))
    r = evaluate(series, {"readings", "devices", "prequential"}, GOOD, [V0, GOOD], central, Decision(2.5), seed=1)
    assert r["devices"]["local"] is None, "held-out devices have no model of their own"
    assert r["prequential"]["central"] is None, "a model trained on the whole stream cannot be scored test-then-train"
    assert r["readings"]["local"] is not None and r["devices"]["central"] is not None
    # the devices split is the one held-out device's whole history: its two windows
    only_c = evaluate([series[2]], {"devices"}, GOOD, [GOOD], None, Decision(2.5))
    assert r["devices"]["global"] == only_c["devices"]["global"]
    assert r["devices"]["global"].event_recall == 1.0 and r["devices"]["global"].nab_standard is not None


def test_prequential_scores_each_reading_with_the_version_of_its_time():
    s = _series("a", False)
    r = evaluate([s], {"prequential"}, GOOD, [V0, GOOD], None, Decision(2.5))
    # before t=100 version 0 (which never alarms) scores: no alarm there, so the readings-0..99 part is silent
    scores, thresholds = prequential_scores(s.features, s.arrived_at, [V0, GOOD])
    assert (scores[:100] < 0.0).all() and r["prequential"]["global"].event_recall == 1.0


def test_random_alarms_come_at_the_global_false_alarm_rate():
    series = [_series(f"d{i}", True, n=3000, seed=i, windows=((1000, 1200), (2000, 2200))) for i in range(6)]
    noisy = VersionModel(1, LinearModel(np.array([1.0]), -2.5), Decision(0.0), created_at=0.0)
    r = evaluate(series, {"devices"}, noisy, [noisy], None, Decision(2.5), seed=3)["devices"]
    assert r["random"].false_alarms_per_1000 == pytest.approx(r["global"].false_alarms_per_1000, rel=0.25)
    assert r["random"].roc_auc == pytest.approx(0.5, abs=0.05)


def test_the_z_rule_alarms_strictly_above_its_threshold():
    lab = np.zeros(5, np.int8)
    s = DeviceSeries("a", lab, np.zeros((5, 1)), np.array([2.5, 2.5001, -3.0, 0.0, 1.0]), np.arange(5.0),
                     np.zeros(5, bool), True)  # fmt: skip
    r = evaluate([s], {"devices"}, GOOD, [GOOD], None, Decision(2.5))
    assert r["devices"]["zrule"].false_alarms_per_1000 == pytest.approx(2 / 5 * 1000)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=0, max_size=200), st.integers(0, 30), st.floats(0.05, 0.95))
def test_refractory_alarms_are_candidates_spaced_at_least_the_period_apart(scores, period, threshold):
    scores = np.array(scores, dtype=float)
    alarms = alarms_from(scores, Decision(threshold, period))
    idx = np.flatnonzero(alarms)
    assert (scores[idx] >= threshold).all()
    if period > 1 and idx.shape[0] > 1:
        assert np.diff(idx).min() >= period
    candidates = np.flatnonzero(scores >= threshold)
    if candidates.shape[0]:
        assert idx[0] == candidates[0], "the first candidate always alarms"
