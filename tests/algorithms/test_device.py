import numpy as np
import orjson
import pytest

from flead_app.algorithms.detection import DetectorState
from flead_app.algorithms.device import (
    DeviceConfig,
    DeviceMessage,
    DeviceState,
    GlobalParams,
    current_model,
    ingest,
    initial_global,
    initial_model,
    step,
    train_round,
    training_due,
)
from flead_app.algorithms.holdout import holdout_mask
from flead_app.algorithms.incident_features import NUM_FEATURES
from flead_app.algorithms.sgd import LinearModel, sgd_train

CFG = DeviceConfig(holdout_device_percent=0.0)


def _feed(state, n, now=0.0, seed=0):
    """n readings, every 7th in a one-reading labelled window (closed by the next one)."""
    rng = np.random.default_rng(seed)
    values = rng.normal(20, 1, n)
    labels = (np.arange(n) % 7 == 3).astype(np.int8)
    stamps = 1_700_000_000 + 60.0 * (state.readings + np.arange(n))
    return ingest(state, stamps, values, labels, now, CFG)[0]


def _trained(start, state, base=0):
    """SGD as a round runs it: over the buffer in the round's shuffled order."""
    y = state.buffer_labels
    order = np.random.default_rng((state.model_version, y.shape[0], base)).permutation(y.shape[0])
    return sgd_train(start, state.buffer_features[order], y[order], CFG.learning_rate, CFG.local_epochs)


def test_trains_every_50_readings():
    state = _feed(DeviceState(), 49)
    assert not training_due(state, 1.0, CFG)
    state = _feed(state, 1, seed=1)
    assert training_due(state, 1.0, CFG)
    state, result = train_round(state, 1.0, CFG)
    assert result.model_version == 1 and state.pending == 0 and state.buffer_labels.shape == (0,)
    # the first 10 readings only warm the statistics up; they are not training samples
    assert result.samples == 50 - CFG.min_history


def test_trains_after_60_seconds_for_quiet_devices():
    state = _feed(DeviceState(), 20, now=100.0)
    assert not training_due(state, 159.0, CFG)
    assert training_due(state, 160.0, CFG)


def test_federated_round_starts_from_the_global_model_it_is_given():
    state = _feed(DeviceState(), 50)
    gp = GlobalParams(7, np.linspace(0.1, 1.0, NUM_FEATURES), -1.0)
    expected = _trained(LinearModel(gp.weights, gp.bias), state, 7)
    state, result = train_round(state, 0.0, CFG, gp)
    assert result.base_global_version == 7
    np.testing.assert_allclose(result.weights, expected.weights)
    # the next round starts from the global again, not from the device's own weights: its change
    # since version 7 is already in the first update, and FedAvg averages changes from the base
    state = _feed(state, 50, seed=2)
    expected = _trained(LinearModel(gp.weights, gp.bias), state, 7)
    state, again = train_round(state, 0.0, CFG, gp)
    assert again.base_global_version == 7 and again.model_version == 2
    np.testing.assert_allclose(again.weights, expected.weights)


def test_version_zero_is_the_initial_model_at_the_prior_log_odds():
    cfg = DeviceConfig(prior_anomaly_rate=0.04)
    v0 = initial_global(cfg)
    assert v0.version == 0 and not v0.weights.any()
    assert 1 / (1 + np.exp(-v0.bias)) == pytest.approx(0.04)
    assert initial_model(cfg).bias == v0.bias


def test_local_only_rounds_start_from_the_initial_model_and_continue_their_own():
    state = _feed(DeviceState(), 50)
    assert current_model(state, CFG).bias == initial_model(CFG).bias  # nothing trained yet
    expected = _trained(initial_model(CFG), state)
    state, first = train_round(state, 0.0, CFG)
    np.testing.assert_allclose(first.weights, expected.weights)
    assert first.bias == pytest.approx(expected.bias) and first.base_global_version == 0
    state = _feed(state, 50, seed=2)
    expected = _trained(LinearModel(first.weights, first.bias), state)
    state, second = train_round(state, 0.0, CFG)
    np.testing.assert_allclose(second.weights, expected.weights)


def test_held_out_readings_are_never_buffered():
    rng = np.random.default_rng(5)
    ts = 1_700_000_000 + np.arange(200.0)
    holdout = holdout_mask("device_9", ts, 20.0)
    state, _ = ingest(DeviceState(), ts, rng.normal(0, 1, 200), np.zeros(200, np.int8), 0.0, CFG, holdout)
    assert state.buffer_labels.shape[0] == int((~holdout[CFG.min_history :]).sum())


def test_state_round_trips_through_json():
    state = _feed(DeviceState(), 73)
    state, _ = train_round(state, 5.0, CFG)
    state = _feed(state, 7, seed=3)
    back = DeviceState.from_dict(orjson.loads(orjson.dumps(state.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY)))
    assert back.summary() == state.summary()
    assert back.detector == state.detector  # plain and robust baselines, EWMs, outlier run
    assert isinstance(back.detector, DetectorState)
    np.testing.assert_allclose(back.buffer_features, state.buffer_features, rtol=1e-6)
    assert back.features.to_dict() == state.features.to_dict()
    # a state that came back scores the next readings as the original does
    msgs = _messages(30, 30, seed=4)
    a = step(state, msgs, initial_global(CFG), "device_j", CFG)
    b = step(back, msgs, initial_global(CFG), "device_j", CFG)
    np.testing.assert_allclose(a.scores[0].features, b.scores[0].features, atol=1e-9)


def test_a_state_of_another_format_is_refused_with_what_to_do():
    d = DeviceState().to_dict()
    d["format"] = 2
    with pytest.raises(ValueError, match="flead stack down --wipe"):
        DeviceState.from_dict(d)


def _messages(n: int, per: int, spike_at: int | None = None, seed: int = 0) -> list[DeviceMessage]:
    rng = np.random.default_rng(seed)
    values = rng.normal(20, 1, n)
    labels = np.zeros(n, np.int8)
    if spike_at is not None:
        values[spike_at], labels[spike_at] = 40.0, 1
    stamps = 1_700_000_000 + np.arange(n, dtype=float)
    return [
        DeviceMessage(100.0 + i, stamps[i : i + per], values[i : i + per], labels[i : i + per])
        for i in range(0, n, per)
    ]


def test_step_is_ingest_decide_and_train_in_one_call():
    cfg = DeviceConfig(alarm_rule="zrule", refractory=0, holdout_device_percent=0.0)
    msgs = _messages(100, 10, spike_at=70)
    out = step(DeviceState(), msgs, initial_global(cfg), "device_s", cfg)
    assert [(a.message, a.reading, a.rule) for a in out.alarms if a.z > 5] == [(7, 0, "zrule")]
    assert all(abs(a.z) > cfg.z_threshold for a in out.alarms)
    assert [u.model_version for u in out.updates] == [1, 2] and out.state.readings == 100
    assert out.state.anomalies == len(out.alarms)
    assert len(out.scores) == 10 and out.scores[0].scored[: cfg.min_history].sum() == 0
    assert out.scores[0].features.shape == (10, NUM_FEATURES)
    assert np.isnan(out.scores[3].score).all()  # version 0 has no scale: no standardised score


def test_step_over_several_messages_equals_one_message_at_a_time():
    cfg = DeviceConfig(alarm_rule="zrule", refractory=20, holdout_device_percent=0.0)
    msgs = _messages(120, 7, spike_at=50, seed=3)
    together = step(DeviceState(), msgs, initial_global(cfg), "device_t", cfg)
    state, alarms, updates = DeviceState(), [], []
    for m in msgs:
        one = step(state, [m], initial_global(cfg), "device_t", cfg)
        state = one.state
        alarms += [(a.z, a.probability) for a in one.alarms]
        updates += list(one.updates)
    assert [(a.z, a.probability) for a in together.alarms] == alarms
    assert [(u.model_version, u.samples, u.trained_at) for u in together.updates] == [
        (u.model_version, u.samples, u.trained_at) for u in updates
    ]
    assert together.state.summary() == state.summary()


def test_the_model_rule_alarms_above_the_published_threshold_and_reports_both():
    cfg = DeviceConfig(alarm_rule="model", refractory=0, holdout_device_percent=0.0)
    w = np.zeros(NUM_FEATURES)
    w[0] = 1.0  # the level |z|'s surprise
    strong = GlobalParams(3, w, -4.0, threshold=3.0, score_loc=-4.0, score_scale=1.0)
    out = step(DeviceState(), _messages(60, 60, spike_at=40), strong, "device_m", cfg)
    assert out.alarms and all(a.rule == "model" and a.score > 3.0 for a in out.alarms)
    spike = [a for a in out.alarms if a.reading == 40]
    assert spike and spike[0].z > 5 and spike[0].severity == "critical"
    s = out.scores[0]
    np.testing.assert_allclose(s.score[s.scored], s.features[s.scored] @ w)  # (logit - loc) / scale
    # without a threshold the model raises nothing
    quiet = step(DeviceState(), _messages(60, 60, spike_at=40), GlobalParams(3, w, -4.0), "device_m", cfg)
    assert not quiet.alarms


def test_local_only_runs_keep_their_own_threshold():
    cfg = DeviceConfig(alarm_rule="model", refractory=0, holdout_device_percent=0.0, train_every=50)
    out = step(DeviceState(), _messages(400, 10, seed=5), None, "device_l", cfg)
    assert out.updates and out.state.local_histogram
    reported = sum(sum(u.normal_histogram.values()) for u in out.updates)
    assert sum(out.state.local_histogram.values()) == pytest.approx(reported, rel=0.01)  # (window discount)
    assert all(u.normal_histogram for u in out.updates)  # loc 0, scale 1: the device's raw logits


def test_a_request_for_a_round_trains_what_is_buffered():
    msgs = _messages(20, 20)
    state = step(DeviceState(), msgs, initial_global(CFG), "device_q", CFG).state
    assert state.pending == 20
    request = DeviceMessage(500.0, np.empty(0), np.empty(0), np.empty(0, np.int8), train_now=True)
    out = step(state, [request], initial_global(CFG), "device_q", CFG)
    assert [u.model_version for u in out.updates] == [1] and out.scores == (None,) and out.state.pending == 0


def test_worker_defaults_match_the_settings_defaults():
    from flead_app.settings import Settings

    assert DeviceConfig.from_settings(Settings()) == DeviceConfig()


def test_round_phase_spreads_a_fleet_over_half_an_interval():
    from flead_app.algorithms.device import round_phase

    cfg = DeviceConfig(train_interval_s=60.0)
    phases = np.array([round_phase(f"device_{i}", cfg) for i in range(2407)])
    assert ((phases >= 0) & (phases < 30.0)).all()
    assert round_phase("device_7", cfg) == round_phase("device_7", cfg)  # the worker and Spark agree
    assert np.histogram(phases, bins=10, range=(0, 30))[0].min() > 150  # spread, not bunched


def test_a_new_device_reaches_its_first_timed_round_early_by_its_phase():
    cfg = DeviceConfig(train_interval_s=60.0, train_every=10_000)
    state, _ = ingest(DeviceState(), np.arange(5.0), np.ones(5), np.zeros(5, np.int8), 1000.0, cfg, phase_s=20.0)
    assert not training_due(state, 1039.0, cfg) and training_due(state, 1040.0, cfg)
