import numpy as np

from flead_app.algorithms.device import DeviceConfig, DeviceState, GlobalParams, ingest, train_round, training_due
from flead_app.algorithms.holdout import holdout_mask

CFG = DeviceConfig()


def _feed(state, n, now=0.0, seed=0):
    rng = np.random.default_rng(seed)
    values = rng.normal(20, 1, n)
    labels = (rng.random(n) < 0.1).astype(np.int8)
    return ingest(state, values, labels, now, CFG)[0]


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


def test_round_starts_from_a_newer_global_model():
    state = _feed(DeviceState(), 50)
    gp = GlobalParams(7, np.array([1.0, 2.0, 3.0, 4.0]), -1.0)
    state, result = train_round(state, 0.0, CFG, gp)
    assert result.base_global_version == 7
    assert np.abs(result.weights - gp.weights).max() < 0.1  # small steps from the global model
    state = _feed(state, 50, seed=2)
    state, again = train_round(state, 0.0, CFG, gp)  # same global: continue from own weights
    assert again.base_global_version == 7 and again.model_version == 2


def test_held_out_readings_are_never_buffered():
    rng = np.random.default_rng(5)
    ts = 1_700_000_000 + np.arange(200.0)
    holdout = holdout_mask("device_9", ts, 20.0)
    state, _ = ingest(DeviceState(), rng.normal(0, 1, 200), np.zeros(200, np.int8), 0.0, CFG, holdout)
    assert state.buffer_labels.shape[0] == int((~holdout[CFG.min_history :]).sum())


def test_state_round_trips_through_bytes():
    state = _feed(DeviceState(), 73)
    state, _ = train_round(state, 5.0, CFG)
    state = _feed(state, 7, seed=3)
    back = DeviceState.from_bytes(state.to_bytes())
    assert back.summary() == state.summary()
    np.testing.assert_allclose(back.buffer_features, state.buffer_features, rtol=1e-6)
