"""The learner: calibrated features, the decision rule, held windows, rounds and the server step."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flead_app.algorithms import detection
from flead_app.algorithms.decision import (
    NEVER,
    NUM_SCORE_BINS,
    ScoreRule,
    central_rule,
    dense_histogram,
    merge_histograms,
    merge_moments,
    moments_of,
    refractory_alarms,
    score_histogram,
    score_location_scale,
    sparse_histogram,
    threshold_for_budget,
)
from flead_app.algorithms.device import (
    DeviceConfig,
    DeviceMessage,
    DeviceState,
    GlobalParams,
    ingest,
    initial_global,
    step,
    train_round,
    training_targets,
)
from flead_app.algorithms.fedbuff import FedBuffConfig, FedBuffState
from flead_app.algorithms.holdout import device_held_out, held_out_devices
from flead_app.algorithms.incident_features import (
    NUM_FEATURES,
    REFRESH,
    IncidentState,
    null_tables,
    raw_statistics,
    score,
)
from flead_app.algorithms.robust import UpdateBound
from flead_app.models import LocalModelUpdate, format_timestamp


def _series(n, seed=0, step=300.0):
    rng = np.random.default_rng(seed)
    return np.arange(n) * step, rng.normal(20.0, 3.0, n)


def _det(x):
    return detection.score_batch(detection.DetectorState(), x).features


def _score(t, x, state=None):
    return score(state or IncidentState(), t, x, _det(x))


# --- features -----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 90), min_size=1, max_size=6))
def test_batching_does_not_change_features(cuts):
    t, x = _series(300, 1)
    det = _det(x)
    whole = score(IncidentState(), t, x, det)
    parts, state, a = [], IncidentState(), 0
    for c in [*np.cumsum(cuts).tolist(), 300]:
        c = min(c, 300)
        if c <= a:
            continue
        r = score(state, t[a:c], x[a:c], det[a:c])
        parts.append(r.features)
        state, a = r.state, c
    np.testing.assert_allclose(np.vstack(parts), whole.features, atol=1e-9)
    np.testing.assert_array_equal(state.table + state.fresh, whole.state.table + whole.state.fresh)


def test_features_are_unitless():
    t, x = _series(500, 2)
    a = _score(t, x).features
    b = _score(t, 1000.0 * x - 7.0).features  # other units and offset
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_null_calibration_is_close_to_exponential_for_all_ten():
    t, x = _series(6000, 3)
    r = _score(t, x)
    assert r.features.shape == (6000, NUM_FEATURES) == (6000, 10)
    u = r.features[r.scored][500:] + 1.0  # surprises
    assert u.min() >= -1e-9
    # under the null each surprise is about Exp(1): mean near 1 and P(u > 3) near e^-3
    assert np.all(np.abs(u.mean(axis=0) - 1.0) < 0.35), u.mean(axis=0)
    assert np.all(np.abs((u > 3.0).mean(axis=0) - math.exp(-3.0)) < 0.04)


def test_level_shift_and_stuck_sensor_raise_their_features():
    t, x = _series(2000, 4)
    shifted = x.copy()
    shifted[1500:] += 15.0  # 5 standard deviations
    r = _score(t, shifted)
    assert r.features[1505, 1] > r.features[1400:1500, 1].max()
    stuck = x.copy()
    stuck[1500:] = stuck[1499]
    r = _score(t, stuck)
    assert r.features[1510, 3] > np.quantile(r.features[500:1500, 3], 0.999)


def test_constant_and_repeated_timestamps_stay_finite():
    r = _score(np.zeros(200), np.full(200, 5.0))
    assert np.isfinite(r.features).all() and np.isfinite(r.raw).all()
    t, x = _series(100, 5)
    r = _score(t[::-1], x)  # time running backwards
    assert np.isfinite(r.features).all()


def test_state_size_and_null_tables():
    assert IncidentState().state_floats() == 12 + 48 + 2 * NUM_FEATURES * 23
    p = null_tables()
    assert p.shape == (NUM_FEATURES, 23) and np.allclose(p.sum(axis=1), 1.0)


def test_table_refreshes_every_refresh_readings():
    t, x = _series(3 * REFRESH + 5, 6)
    s = _score(t, x).state
    assert s.table.sum(axis=1)[0] + s.fresh.sum(axis=1)[0] == pytest.approx(3 * REFRESH + 5 - 10)
    assert s.fresh.sum(axis=1)[0] == 5  # readings since the last refresh


def test_raw_statistics_warm_up():
    t, x = _series(30, 7)
    _, ok, st_ = raw_statistics(IncidentState(), t, x)
    assert not ok[:10].any() and ok[10:].all() and st_.count == 30


def test_feature_state_round_trips():
    t, x = _series(77, 8)
    s = _score(t, x).state
    back = IncidentState.from_dict(s.to_dict())
    assert back.to_dict() == s.to_dict()
    t2, x2 = _series(40, 9)
    np.testing.assert_allclose(score(back, t2, x2, _det(x2)).features, score(s, t2, x2, _det(x2)).features)


# --- the decision rule ----------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.floats(0.001, 0.5), st.integers(0, 10_000))
def test_threshold_meets_the_budget(budget, seed):
    scores = np.random.default_rng(seed).normal(-3.0, 1.5, 20_000)
    thr = threshold_for_budget(score_histogram(scores), budget)
    share = (scores > thr).mean()
    assert share <= budget + 0.01 and share >= budget - 0.01


def test_empty_histogram_means_no_alarm():
    assert threshold_for_budget(np.zeros(NUM_SCORE_BINS), 0.01) == math.inf
    assert not ScoreRule(np.ones(2), 0.0, 0.0, 1.0, None).candidates(np.full((3, 2), 50.0)).any()


def test_merge_keeps_a_window_of_histogram_readings():
    h = np.zeros(NUM_SCORE_BINS)
    for _ in range(100):
        h = merge_histograms(h, [score_histogram(np.zeros(500))], 10_000.0)
    assert 0.99 * 10_000 <= h.sum() <= 10_000  # converges to the window


def test_sparse_histograms_round_trip():
    h = score_histogram(np.random.default_rng(1).normal(size=50))
    assert np.array_equal(dense_histogram(sparse_histogram(h)), h)
    assert len(sparse_histogram(h)) < 40


def test_moments_give_the_mean_and_std_of_any_model():
    rng = np.random.default_rng(2)
    x = rng.exponential(size=(5000, 4)) - 1.0
    w, b = np.array([0.5, -1.0, 0.2, 0.0]), -2.0
    merged = merge_moments(moments_of(x[:2000]), [moments_of(x[2000:])], 1e9)
    loc, scale = score_location_scale(merged, w, b)
    s = x @ w + b
    assert loc == pytest.approx(s.mean()) and scale == pytest.approx(s.std())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), max_size=200), st.integers(0, 50), st.integers(1, 60))
def test_refractory_alarms_are_spaced_and_batching_does_not_matter(cands, refractory, cut):
    c = np.array(cands, dtype=bool)
    whole, since = refractory_alarms(c, NEVER, refractory)
    idx = np.flatnonzero(whole)
    assert (np.diff(idx) >= max(refractory, 1)).all()
    assert not (whole & ~c).any()
    a, s1 = refractory_alarms(c[:cut], NEVER, refractory)
    b, s2 = refractory_alarms(c[cut:], s1, refractory)
    np.testing.assert_array_equal(np.concatenate((a, b)), whole)
    assert s2 == since


def test_central_rule_is_the_servers_rule_on_pooled_normal_scores():
    rng = np.random.default_rng(3)
    normal = rng.exponential(size=(30_000, NUM_FEATURES)) - 1.0
    w = rng.normal(size=NUM_FEATURES)
    rule = central_rule(w, -3.0, normal, budget=0.01, refractory=100)
    assert (rule.standardised(normal) > rule.threshold).mean() == pytest.approx(0.01, abs=0.002)
    # the same numbers published by a server give the same decisions
    pub = ScoreRule.published(w.tolist(), -3.0, rule.threshold, rule.loc, rule.scale, 100)
    assert np.array_equal(pub.candidates(normal), rule.candidates(normal))
    # and on probabilities: p > probability_threshold is the same decision
    p = 1 / (1 + np.exp(-(normal @ w - 3.0)))
    assert np.array_equal(p > rule.probability_threshold, rule.candidates(normal))


# --- training targets and held windows ---------------------------------------------------------


def test_window_positives_are_held_until_the_window_closes_and_first_half_skipped():
    cfg = DeviceConfig(positive_skip=0.5)
    t, x = _series(300, 8)
    y = np.zeros(300, np.int8)
    y[100:140] = 1
    st_, _ = ingest(DeviceState(), t[:120], x[:120], y[:120], 0.0, cfg)
    assert st_.buffer_labels.sum() == 0 and st_.window_length == 20  # window still open
    st_, _ = ingest(st_, t[120:], x[120:], y[120:], 0.0, cfg)
    assert st_.buffer_labels.sum() == 20 and st_.window_length == 0  # second half of 40 readings
    assert (st_.buffer_labels == 0).sum() == 300 - 10 - 40


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from([0, 0, 0, 1, 1, -1]), min_size=12, max_size=120), st.integers(1, 40),
       st.sampled_from([0.0, 0.5, 0.25]))  # fmt: skip
def test_streaming_releases_what_training_targets_says(labels, cut, skip):
    """Whatever the batching, the samples a device trains on are ``training_targets``' (closed windows)."""
    cfg = DeviceConfig(positive_skip=skip, holdout_device_percent=0, holdout_percent=0)
    y = np.array([*labels, 0], dtype=np.int8)  # a last normal reading closes any window
    n = y.shape[0]
    t, x = _series(n, 11)
    state, a = DeviceState(), 0
    for c in [*range(cut, n, cut), n]:
        state, _ = ingest(state, t[a:c], x[a:c], y[a:c], 0.0, cfg)
        a = c
    want = training_targets(y, cfg)
    want[:10] = -1  # not scored yet
    assert sorted(state.buffer_labels.tolist()) == sorted(want[want >= 0].tolist())


def test_held_out_device_never_buffers_but_alarms():
    ids = [f"device_{i}" for i in range(50)]
    held = next(d for d in ids if device_held_out(d))
    cfg = DeviceConfig(alarm_rule="zrule", refractory=0)
    t, x = _series(300, 9)
    x[200] += 60
    y = np.zeros(300, np.int8)
    y[150:180] = 1
    msgs = [DeviceMessage(float(i), t[i : i + 30], x[i : i + 30], y[i : i + 30]) for i in range(0, 300, 30)]
    out = step(DeviceState(), msgs, initial_global(cfg), held, cfg)
    assert out.state.buffer_labels.shape[0] == 0 and out.state.window_features.shape[0] == 0
    assert not out.updates and any(a.reading == 20 and a.message == 6 for a in out.alarms)
    assert all(s.device_heldout and s.heldout.all() for s in out.scores)


def test_device_split_is_stable_and_near_the_percent():
    ids = [f"dev-{i}" for i in range(5000)]
    h = held_out_devices(ids, 20.0)
    assert 0.18 < h.mean() < 0.22
    assert device_held_out("dev-1") == device_held_out("dev-1")
    assert (held_out_devices(ids, 20.0, "x") != h).any()


def test_the_refractory_period_spans_messages_and_both_rules():
    cfg = DeviceConfig(alarm_rule="zrule", refractory=50, holdout_device_percent=0)
    t = np.arange(400) * 300.0
    x = 20.0 + np.sin(np.arange(400.0))  # no |z| above 2.5 but the three spikes
    x[[100, 120, 200]] += 80
    msgs = [DeviceMessage(float(i), t[i : i + 7], x[i : i + 7], np.zeros(7, np.int8)) for i in range(0, 399, 7)]
    out = step(DeviceState(), msgs, initial_global(cfg), "device_r", cfg)
    flagged = [a.message * 7 + a.reading for a in out.alarms]
    assert 100 in flagged and 120 not in flagged and 200 in flagged


# --- rounds and the server ----------------------------------------------------------------------


def test_round_reports_curvature_histogram_and_moments():
    rng = np.random.default_rng(11)
    x = np.vstack((rng.normal(0, 1, (200, NUM_FEATURES)), rng.normal(3, 1, (20, NUM_FEATURES))))
    y = np.r_[np.zeros(200), np.ones(20)].astype(np.int8)
    g = GlobalParams(4, np.zeros(NUM_FEATURES), -3.0, threshold=2.0, score_loc=-3.0, score_scale=0.5)
    st_, r = train_round(DeviceState(buffer_features=x, buffer_labels=y), 0.0, DeviceConfig(learning_rate=0.1), g)
    assert r.samples == 220 and r.positives == 20 and sum(r.normal_histogram.values()) == 200
    assert (r.weights > 0).all() and r.base_global_version == 4
    assert r.curvature.shape == (77,) and r.base_params.tolist() == [0.0] * NUM_FEATURES + [-3.0]
    assert r.normal_moments[0] == 200 and r.normal_moments.shape == (66,)
    assert st_.buffer_labels.shape[0] == 0 and st_.model_version == 1
    # version 0 has no scale yet: no histogram, but moments
    v0 = initial_global(DeviceConfig())
    _, r0 = train_round(DeviceState(buffer_features=x, buffer_labels=y), 0.0, DeviceConfig(), v0)
    assert r0.normal_histogram == {} and r0.normal_moments[0] == 200


def _update(r, device="d1", version=1):
    return LocalModelUpdate(
        device, version, r.base_global_version, r.weights.tolist(), r.bias, r.accuracy, r.loss, r.samples,
        format_timestamp(1.7e9), positives=r.positives, base_params=r.base_params.tolist(),
        curvature=r.curvature.tolist(), normal_histogram={str(k): int(v) for k, v in r.normal_histogram.items()},
        normal_moments=r.normal_moments.tolist(),
    )  # fmt: skip


def test_standardised_threshold_follows_a_new_model():
    """Histograms of older versions' standardised scores still give the newest version's quantile."""
    rng = np.random.default_rng(8)
    x = rng.exponential(size=(20_000, NUM_FEATURES)) - 1.0
    y = (x[:, 0] + rng.logistic(size=20_000) > 4.0).astype(np.int8)
    dcfg = DeviceConfig()
    v0 = initial_global(dcfg)
    # one round of 20,000 readings, more than any round holds: without the server's cap on claims
    cfg = FedBuffConfig(buffer_size=1, initial=(*v0.weights, v0.bias), alarm_budget=0.01, bound=UpdateBound())
    state = FedBuffState.start(cfg)
    _, r = train_round(DeviceState(buffer_features=x, buffer_labels=y), 0.0, dcfg, v0)
    state, out = state.offer(_update(r), 0.0, cfg)
    g1 = GlobalParams.from_record(out.model)
    assert g1.score_scale is not None and g1.threshold is None  # v1: no standardised histogram yet
    _, r1 = train_round(DeviceState(buffer_features=x, buffer_labels=y), 0.0, dcfg, g1)
    state, out = state.offer(_update(r1, version=2), 1.0, cfg)
    g2 = GlobalParams.from_record(out.model)
    assert g2.threshold is not None and np.linalg.norm(g2.weights - g1.weights) > 0.01
    normal = x[y == 0]
    share = float(g2.rule(dcfg).candidates(normal).mean())
    assert 0.005 < share < 0.02
    # the rule from the record's fields is the same rule
    assert ScoreRule.published(out.model.weights, out.model.bias, out.model.threshold, out.model.score_loc,
                               out.model.score_scale).threshold == g2.threshold  # fmt: skip


def test_newton_server_reaches_the_central_model_from_device_rounds():
    """Rounds of 50 from the newest version, 20 per version: the global model ends near scikit-learn's."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(12)
    x = rng.exponential(size=(20_000, NUM_FEATURES)) - 1.0
    y = (x @ np.linspace(1.0, -0.5, NUM_FEATURES) - 3.5 + rng.logistic(size=20_000) > 0).astype(np.int8)
    dcfg = DeviceConfig()
    g = initial_global(dcfg)
    cfg = FedBuffConfig(buffer_size=20, initial=(*g.weights, g.bias))
    state = FedBuffState.start(cfg)
    for k, a in enumerate(range(0, 20_000, 50)):
        _, r = train_round(DeviceState(buffer_features=x[a : a + 50], buffer_labels=y[a : a + 50]), 0.0, dcfg, g)
        state, out = state.offer(_update(r, f"d{k % 97}", k + 1), float(k), cfg)
        if out.model is not None:
            g = GlobalParams.from_record(out.model)
    central = LogisticRegression().fit(x, y)
    assert np.abs(g.weights - central.coef_[0]).max() < 0.05
    assert abs(g.bias - central.intercept_[0]) < 0.2
    assert g.threshold is not None and state.information and len(state.moments) == 66


def test_fedbuff_state_with_server_parts_round_trips_through_json():
    import orjson

    rng = np.random.default_rng(13)
    x = rng.normal(size=(60, NUM_FEATURES))
    y = (x[:, 0] > 1).astype(np.int8)
    dcfg = DeviceConfig()
    v0 = initial_global(dcfg)
    cfg = FedBuffConfig(buffer_size=2, initial=(*v0.weights, v0.bias))
    _, r = train_round(DeviceState(buffer_features=x, buffer_labels=y), 0.0, dcfg, v0)
    state, _ = FedBuffState.start(cfg).offer(_update(r), 0.0, cfg)
    state, out = state.offer(_update(r, "d2"), 1.0, cfg)
    assert out.model is not None
    state, _ = state.offer(_update(r, "d3"), 2.0, cfg)
    back = FedBuffState.from_dict(orjson.loads(orjson.dumps(state.to_dict())))
    assert back == state


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=12), st.integers(0, 3), st.sampled_from(["model", "zrule"]))
def test_one_step_over_many_messages_is_one_step_per_message(sizes, controls, alarm_rule):
    """The detector agent's micro-batches: the same alarms, updates, scores and state as message by message."""
    cfg = DeviceConfig(alarm_rule=alarm_rule, refractory=7, train_every=25, holdout_device_percent=0.0)
    w = np.zeros(NUM_FEATURES)
    w[[0, 6]] = 1.0
    g = GlobalParams(2, w, -3.0, threshold=1.5, score_loc=-3.0, score_scale=1.0)
    n = sum(sizes)
    t, x = _series(n, 14)
    x[n // 2] += 40
    y = np.zeros(n, np.int8)
    y[n // 3 : n // 3 + 9] = 1
    msgs, a = [], 0
    for k, size in enumerate(sizes):
        msgs.append(DeviceMessage(float(k), t[a : a + size], x[a : a + size], y[a : a + size]))
        if k < controls:
            msgs.append(DeviceMessage(float(k) + 0.5, np.empty(0), np.empty(0), np.empty(0, np.int8), train_now=True))
        a += size
    together = step(DeviceState(), msgs, g, "device_p", cfg)
    state, alarms, updates, scores = DeviceState(), [], [], []
    for k, m in enumerate(msgs):
        one = step(state, [m], g, "device_p", cfg)
        state = one.state
        alarms += [(k, al.reading, al.score) for al in one.alarms]
        updates += [(k, u.samples, u.positives, u.weights.tolist()) for u in one.updates]
        scores += one.scores
    assert [(al.message, al.reading, al.score) for al in together.alarms] == alarms
    assert [(u.message, u.samples, u.positives, u.weights.tolist()) for u in together.updates] == updates
    assert together.state.to_dict().keys() == state.to_dict().keys()
    assert together.state.summary() == state.summary()
    np.testing.assert_array_equal(together.state.buffer_labels, state.buffer_labels)
    for a_, b_ in zip(together.scores, scores, strict=True):
        assert (a_ is None) == (b_ is None)
        if a_ is not None:
            np.testing.assert_allclose(a_.features, b_.features, atol=1e-12)
            np.testing.assert_array_equal(np.isnan(a_.score), np.isnan(b_.score))


# --- each device's own share of the budget ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.floats(-4.0, 6.0),
    st.lists(st.floats(-6.0, 8.0), min_size=1, max_size=400),
    st.sampled_from([0.003, 0.01, 0.05]),
)
def test_a_device_threshold_lies_between_the_fleets_and_its_own_quantile(fleet, own_scores, budget):
    from flead_app.algorithms.decision import device_threshold

    own = score_histogram(np.array(own_scores))
    mine = threshold_for_budget(own, budget)
    got = device_threshold(fleet, own, budget)
    assert min(fleet, mine) - 1e-9 <= got <= max(fleet, mine) + 1e-9
    more = device_threshold(fleet, own * 10, budget)  # ten times the evidence: closer to its own
    assert abs(more - mine) <= abs(got - mine) + 1e-9
    assert device_threshold(fleet, np.zeros(NUM_SCORE_BINS), budget) == fleet
    assert device_threshold(None, own, budget) is None


def _device_with_high_normal_scores(n=3000, seed=21):
    """A device whose normal readings score higher under the fleet's model than the fleet's 1%:
    its own noise is heavy-tailed (Student t, 2 degrees of freedom)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) * 300.0
    x = 20.0 + rng.standard_t(2, n)
    msgs = [DeviceMessage(float(i), t[i : i + 10], x[i : i + 10], np.zeros(10, np.int8)) for i in range(0, n, 10)]
    w = np.zeros(NUM_FEATURES)
    w[[0, 6]] = 1.0
    return msgs, GlobalParams(3, w, -3.0, threshold=1.0, score_loc=-3.0, score_scale=1.0)


def test_a_device_moves_the_fleet_threshold_toward_its_own_quantile_and_alarms_less():
    msgs, g = _device_with_high_normal_scores()
    fleet_cfg = DeviceConfig(threshold_scope="fleet", holdout_device_percent=0.0, refractory=0)
    own_cfg = DeviceConfig(threshold_scope="device", holdout_device_percent=0.0, refractory=0)
    fleet, own = DeviceState(), DeviceState()
    fleet_alarms = own_alarms = late_alarms = 0
    last = None
    for k, m in enumerate(msgs):
        a, b = step(fleet, [m], g, "device_h", fleet_cfg), step(own, [m], g, "device_h", own_cfg)
        fleet, own = a.state, b.state
        fleet_alarms, own_alarms = fleet_alarms + len(a.alarms), own_alarms + len(b.alarms)
        late_alarms += len(b.alarms) if k >= 2 * len(msgs) // 3 else 0
        assert a.scores[0].threshold == 1.0
        last = b.scores[0]
    scored = int(sum(own.own_histogram.values()))
    assert scored > 2500 and int(sum(fleet.own_histogram.values())) == scored  # both keep the histogram
    assert last.threshold > 1.5, "the device's own 1% lies far above the fleet's threshold"
    assert own_alarms < fleet_alarms / 3
    # readings 2,000-3,000: its own count against the prior's 1,000, three quarters of the way to its own 1%
    assert late_alarms / 1000 < 0.05
    assert DeviceState.from_dict(own.to_dict()).own_histogram == own.own_histogram


def test_the_evaluation_replays_the_device_threshold_that_step_applied():
    """``protocol.alarms_from`` with the published decision gives the alarms ``step`` raised."""
    from flead_app.algorithms.device import published_decision
    from flead_app.algorithms.protocol import alarms_from

    msgs, g = _device_with_high_normal_scores(2000, seed=5)
    cfg = DeviceConfig(holdout_device_percent=0.0, refractory=20)
    state, flagged, scores, arrived = DeviceState(), [], [], []
    for m in msgs:
        out = step(state, [m], g, "device_e", cfg)
        state = out.state
        s = out.scores[0]
        keep = s.scored
        base = len(scores)
        flagged += [base + int(np.flatnonzero(keep)[: al.reading + 1].shape[0]) - 1 for al in out.alarms]
        scores += s.score[keep].tolist()
        arrived += [m.received_at] * int(keep.sum())
    loc, scale, decision = published_decision(g.threshold, g.score_loc, g.score_scale, cfg)
    assert decision.own_budget == cfg.alarm_budget
    replayed = alarms_from(np.array(scores), decision, blocks=np.array(arrived))
    assert len(flagged) > 3
    assert np.flatnonzero(replayed).tolist() == flagged
