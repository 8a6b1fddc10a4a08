import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flead_app.algorithms.device_holdout import device_held_out, held_out_devices
from flead_app.algorithms.incident_features import (
    NUM_FEATURES,
    REFRESH,
    IncidentState,
    null_tables,
    raw_statistics,
    score,
)
from flead_app.algorithms.incident_learner import (
    IncidentUpdate,
    LearnerConfig,
    LearnerState,
    ingest,
    initial_model,
    merge_histograms,
    next_global,
    refractory_alarms,
    score_histogram,
    threshold_for_budget,
    train_round,
)


def _series(n, seed=0, step=300.0):
    rng = np.random.default_rng(seed)
    return np.arange(n) * step, rng.normal(20.0, 3.0, n)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 90), min_size=1, max_size=6))
def test_batching_does_not_change_features(cuts):
    t, x = _series(300, 1)
    whole = score(IncidentState(), t, x)
    parts, state, a = [], IncidentState(), 0
    for c in [*np.cumsum(cuts).tolist(), 300]:
        c = min(c, 300)
        if c <= a:
            continue
        r = score(state, t[a:c], x[a:c])
        parts.append(r.features)
        state, a = r.state, c
    np.testing.assert_allclose(np.vstack(parts), whole.features, atol=1e-9)
    np.testing.assert_array_equal(state.table + state.fresh, whole.state.table + whole.state.fresh)


def test_features_are_unitless():
    t, x = _series(500, 2)
    a = score(IncidentState(), t, x).features
    b = score(IncidentState(), t, 1000.0 * x - 7.0).features  # other units and offset
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_null_calibration_is_close_to_exponential():
    t, x = _series(6000, 3)
    r = score(IncidentState(), t, x)
    u = r.features[r.scored] + 1.0  # surprises
    assert u.min() >= -1e-9
    # under the null each surprise is about Exp(1): mean near 1 and P(u > 3) near e^-3
    assert np.all(np.abs(u.mean(axis=0) - 1.0) < 0.25)
    assert np.all(np.abs((u > 3.0).mean(axis=0) - math.exp(-3.0)) < 0.03)


def test_level_shift_and_stuck_sensor_raise_their_features():
    t, x = _series(2000, 4)
    shifted = x.copy()
    shifted[1500:] += 15.0  # 5 standard deviations
    r = score(IncidentState(), t, shifted)
    assert r.features[1505, 1] > r.features[1400:1500, 1].max()
    stuck = x.copy()
    stuck[1500:] = stuck[1499]
    r = score(IncidentState(), t, stuck)
    assert r.features[1510, 3] > np.quantile(r.features[500:1500, 3], 0.999)


def test_constant_and_repeated_timestamps_stay_finite():
    r = score(IncidentState(), np.zeros(200), np.full(200, 5.0))
    assert np.isfinite(r.features).all() and np.isfinite(r.raw).all()
    t, x = _series(100, 5)
    r = score(IncidentState(), t[::-1], x)  # time running backwards
    assert np.isfinite(r.features).all()


def test_state_size_and_null_tables():
    assert IncidentState().state_floats() == 12 + 48 + 2 * NUM_FEATURES * 23
    p = null_tables()
    assert p.shape == (NUM_FEATURES, 23) and np.allclose(p.sum(axis=1), 1.0)


def test_table_refreshes_every_refresh_readings():
    t, x = _series(3 * REFRESH + 5, 6)
    s = score(IncidentState(), t, x).state
    assert s.table.sum(axis=1)[0] + s.fresh.sum(axis=1)[0] == pytest.approx(3 * REFRESH + 5 - 10)
    assert s.fresh.sum(axis=1)[0] == 5  # readings since the last refresh


def test_raw_statistics_warm_up():
    t, x = _series(30, 7)
    _, ok, st_ = raw_statistics(IncidentState(), t, x)
    assert not ok[:10].any() and ok[10:].all() and st_.count == 30


# --- thresholds, histograms, alarms --------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.floats(0.001, 0.5), st.integers(0, 10_000))
def test_threshold_meets_the_budget(budget, seed):
    scores = np.random.default_rng(seed).normal(-3.0, 1.5, 20_000)
    thr = threshold_for_budget(score_histogram(scores), budget)
    share = (scores > thr).mean()
    assert share <= budget + 0.01 and share >= budget - 0.01


def test_empty_histogram_means_no_alarm():
    assert threshold_for_budget(np.zeros(480), 0.01) == math.inf


def test_merge_keeps_a_window_of_histogram_readings():
    cfg = LearnerConfig(alarm_budget=0.01, tail_readings=100)  # 10,000 readings
    h = np.zeros(480)
    for _ in range(100):
        h = merge_histograms(h, [score_histogram(np.zeros(500))], cfg)
    assert 0.99 * cfg.histogram_readings <= h.sum() <= cfg.histogram_readings  # converges to the window


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), max_size=200), st.integers(1, 50), st.integers(1, 60))
def test_refractory_alarms_are_spaced_and_batching_does_not_matter(cands, refractory, cut):
    c = np.array(cands, dtype=bool)
    whole, since = refractory_alarms(c, 1 << 30, refractory)
    idx = np.flatnonzero(whole)
    assert (np.diff(idx) >= refractory).all()
    assert not (c & ~whole).any() or whole.sum() <= c.sum()
    assert not (whole & ~c).any()
    a, s1 = refractory_alarms(c[:cut], 1 << 30, refractory)
    b, s2 = refractory_alarms(c[cut:], s1, refractory)
    np.testing.assert_array_equal(np.concatenate((a, b)), whole)


# --- the device step ----------------------------------------------------------------------------


def _window_labels(n, start, end):
    y = np.zeros(n, np.int8)
    y[start:end] = 1
    return y


def test_window_positives_are_held_until_the_window_closes_and_first_half_skipped():
    cfg = LearnerConfig(positive_skip=0.5, features="incident")
    t, x = _series(300, 8)
    y = _window_labels(300, 100, 140)
    st_, _ = ingest(LearnerState(), t[:120], x[:120], y[:120], initial_model(cfg), cfg)
    assert st_.train_y.sum() == 0 and st_.window_x.shape[0] == 20  # window still open
    st_, _ = ingest(st_, t[120:], x[120:], y[120:], initial_model(cfg), cfg)
    assert st_.train_y.sum() == 20 and st_.window_x.shape[0] == 0  # second half of 40 readings
    assert (st_.train_y == 0).sum() == 300 - 10 - 40


def test_held_out_readings_never_train():
    cfg = LearnerConfig(features="incident")
    t, x = _series(200, 9)
    y = _window_labels(200, 100, 150)
    st_, _ = ingest(LearnerState(), t, x, y, initial_model(cfg), cfg, trainable=np.zeros(200, bool))
    assert st_.train_y.shape[0] == 0


def test_alarm_rule_zscore_uses_the_z_decisions():
    cfg = LearnerConfig(alarm_rule="zscore", refractory=5, features="incident")
    t, x = _series(50, 10)
    z = np.zeros(50, bool)
    z[[20, 22, 30]] = True
    _, out = ingest(LearnerState(), t, x, np.zeros(50, np.int8), initial_model(cfg), cfg, zscore_alarm=z)
    assert np.flatnonzero(out.alarm).tolist() == [20, 30]


def test_round_reports_normal_histogram_and_learns_towards_positives():
    cfg = LearnerConfig(learning_rate=0.1, features="incident")
    rng = np.random.default_rng(11)
    x = np.vstack((rng.normal(0, 1, (200, NUM_FEATURES)), rng.normal(3, 1, (20, NUM_FEATURES))))
    y = np.r_[np.zeros(200), np.ones(20)].astype(np.int8)
    st_, up = train_round(LearnerState(train_x=x, train_y=y), 0.0, cfg, initial_model(cfg))
    assert up.samples == 220 and up.positives == 20 and up.normal_histogram.sum() == 200
    assert (up.weights > 0).all()
    assert st_.train_y.shape[0] == 0 and st_.rounds == 1


def test_next_global_sets_threshold_and_averages():
    cfg = LearnerConfig(alarm_budget=0.1, averaging=3.0, features="incident", threshold_rule="raw")
    g = initial_model(cfg)
    ups = [IncidentUpdate(0, np.ones(6), -2.0, 10, 0, 1.0, 0.1, score_histogram(np.linspace(-4, 0, 1000)))]
    g1 = next_global(g, np.ones(6), -2.0, ups, cfg)
    assert g1.version == 1 and np.allclose(g1.scoring().weights, 1.0)  # version 1 is its own average
    g2 = next_global(g1, np.full(6, 3.0), -2.0, ups, cfg)
    assert np.allclose(g2.scoring().weights, 1.0 + (4.0 / 5.0) * 2.0)
    assert -0.6 < g2.threshold < -0.2


def test_device_split_is_stable_and_near_the_percent():
    ids = [f"dev-{i}" for i in range(5000)]
    h = held_out_devices(ids, 20.0)
    assert 0.18 < h.mean() < 0.22
    assert device_held_out("dev-1") == device_held_out("dev-1")
    assert (held_out_devices(ids, 20.0, "x") != h).any()


def _union_inputs(n, seed=0):
    from flead_app.algorithms import detection
    from flead_app.algorithms.incident_features import uncentred_detector_features

    t, x = _series(n, seed)
    det = detection.score_batch(detection.DetectorState(), x)
    return t, x, det.features, uncentred_detector_features(det.features)


def test_union_features_are_calibrated_like_the_six():
    from flead_app.algorithms.incident_features import FEATURE_SETS

    t, x, _, extra = _union_inputs(3_000, 3)
    r = score(IncidentState(), t, x, extra)
    assert r.features.shape == (3_000, len(FEATURE_SETS["union"])) == (3_000, 10)
    assert r.state.table.shape[0] == 10 and r.state.state_floats() == 12 + 48 + 2 * 10 * 23
    # the null is i.i.d. normal: every calibrated feature has mean ~0 (surprise ~ Exp(1) minus 1)
    u = r.features[r.scored][500:]
    assert np.all(np.abs(u.mean(axis=0)) < 0.35), u.mean(axis=0)
    # and the first six are the incident set's own
    six = score(IncidentState(), t, x)
    assert np.allclose(r.features[:, :6], six.features)
    with pytest.raises(ValueError):
        score(r.state, t[:5] + 1e6, x[:5])  # a 10-feature state given 6 features


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 90), min_size=1, max_size=6))
def test_union_batching_does_not_change_features(cuts):
    t, x, _, extra = _union_inputs(300, 1)
    whole = score(IncidentState(), t, x, extra).features
    state, parts, i = IncidentState(), [], 0
    for c in [*cuts, 300]:
        j = min(300, i + c)
        if j > i:
            r = score(state, t[i:j], x[i:j], extra[i:j])
            parts.append(r.features)
            state, i = r.state, j
    assert np.allclose(np.concatenate(parts), whole)


def test_ingest_with_union_features_trains_a_ten_feature_model():
    t, x, det, _ = _union_inputs(400, 2)
    cfg = LearnerConfig(features="union")
    labels = np.zeros(400, np.int8)
    labels[300:340] = 1
    st_, step = ingest(LearnerState(), t, x, labels, initial_model(cfg), cfg, detector_features=det)
    assert step.features.shape == (400, 10) and st_.train_x.shape[1] == 10
    st_, up = train_round(st_, 0.0, cfg, initial_model(cfg))
    assert up.weights.shape == (10,) and up.curvature.packed().shape == (11 + 66,)
    with pytest.raises(ValueError):
        ingest(LearnerState(), t, x, labels, initial_model(cfg), cfg)
