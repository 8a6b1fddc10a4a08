"""The simulated fleet: determinism, labels, anomaly rates, detectability and speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from flead_app.fleet import (
    ANOMALY_KINDS,
    DRIFT,
    LEVEL_SHIFT,
    NOISE_BURST,
    SENSOR_KINDS,
    SPIKE,
    STUCK,
    WARMUP_READINGS,
    Fleet,
    message_starts,
    start_probability,
)

T0 = 1_762_528_951.0  # 2025-11-07T15:22:31Z


def run(fleet: Fleet, steps: int, interval: float = 5.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``steps`` readings of every device: values, labels and kinds as (device, step) arrays."""
    rs = [fleet.next_readings(now=T0 + i * interval, interval_s=interval) for i in range(steps)]
    stack = lambda attr: np.stack([getattr(r, attr) for r in rs]).T  # noqa: E731
    return stack("value"), stack("label"), stack("kind")


def history_z(values: np.ndarray) -> np.ndarray:
    """z of every reading against the mean and std (ddof=1) of all readings before it, per row."""
    n = np.arange(1, values.shape[1] + 1, dtype=float)
    c, c2 = np.cumsum(values, 1), np.cumsum(values**2, 1)
    prev_n = n[:-1]
    mean = c[:, :-1] / prev_n
    var = (c2[:, :-1] - c[:, :-1] ** 2 / prev_n) / np.maximum(prev_n - 1, 1)
    z = np.full(values.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        z[:, 1:] = (values[:, 1:] - mean) / np.sqrt(var)
    return z


def episode_starts(mask: np.ndarray) -> np.ndarray:
    before = np.zeros_like(mask)
    before[:, 1:] = mask[:, :-1]
    return mask & ~before


@pytest.fixture(scope="module")
def long_run():
    fleet = Fleet(200, seed=5)
    values, labels, kinds = run(fleet, 600)
    return fleet, values, labels, kinds


def test_device_ids_and_sensors():
    fleet = Fleet(2407, seed=1)
    assert fleet.device_id(0) == "device_0" and fleet.device_id(2406) == "device_2406"
    assert fleet.device_ids[17] == "device_17"
    assert set(np.unique(fleet.sensor)) == set(range(len(SENSOR_KINDS)))
    for i in range(0, 2407, 97):
        kind = SENSOR_KINDS[fleet.sensor[i]]
        assert kind.level[0] <= fleet.level[i] <= kind.level[1]
        assert kind.noise[0] <= fleet.noise[i] <= kind.noise[1]
        assert fleet.describe(i)["unit"] == kind.unit
    assert len(np.unique(fleet.level)) == 2407  # every device its own level


def test_same_seed_same_readings_other_seed_differs():
    a, b, c = Fleet(300, seed=42), Fleet(300, seed=42), Fleet(300, seed=43)
    for step in range(80):
        ra = a.next_readings(now=T0 + step, interval_s=1.0)
        rb = b.next_readings(now=T0 + step, interval_s=1.0)
        for f in ("device", "timestamp", "value", "label", "kind"):
            np.testing.assert_array_equal(getattr(ra, f), getattr(rb, f))
    rc = c.next_readings(now=T0 + 80, interval_s=1.0)
    assert not np.array_equal(ra.value, rc.value)
    assert a.injected() == b.injected()


def test_labels_mark_exactly_the_episodes(long_run):
    fleet, values, labels, kinds = long_run
    np.testing.assert_array_equal(labels == 1, kinds > 0)
    assert set(np.unique(labels)) == {0, 1}
    assert not labels[:, :WARMUP_READINGS].any(), "no anomaly while a device warms up"
    counts = fleet.injected()
    assert list(counts) == list(ANOMALY_KINDS)
    for code, name in enumerate(ANOMALY_KINDS, start=1):
        assert counts[name]["episodes"] > 5, name
        assert counts[name]["readings"] == int((kinds == code).sum()), name


def test_anomaly_rate_default_and_configurable():
    for rate in (0.04, 0.10):
        fleet = Fleet(300, seed=9, anomaly_rate=rate)
        _, labels, _ = run(fleet, 1500, interval=1.0)
        share = labels[:, WARMUP_READINGS:].mean()
        assert rate * 0.8 <= share <= rate * 1.2, (rate, share)
    # devices leaving warm-up join the stationary state: no slow ramp-up of anomalies
    fleet = Fleet(2407, seed=4)
    _, labels, _ = run(fleet, WARMUP_READINGS + 20)
    assert 0.025 <= labels[:, WARMUP_READINGS:].mean() <= 0.055
    fleet = Fleet(100, seed=4, warmup=3)
    _, labels, _ = run(fleet, 200)
    assert not labels[:, :3].any() and labels[:, 3:].any()
    _, labels, _ = run(Fleet(50, seed=1, anomaly_rate=0.0), 300)
    assert not labels.any()
    with pytest.raises(ValueError):
        start_probability(0.9)


def test_spikes_shifts_and_bursts_stand_out_of_the_device_history(long_run):
    _, values, _, kinds = long_run
    z = np.abs(history_z(values))
    spikes = kinds == SPIKE
    assert (z[spikes] > 2.5).mean() > 0.9
    assert np.median(z[spikes]) > 5
    shift_starts = episode_starts(kinds == LEVEL_SHIFT)
    assert (z[shift_starts] > 2.5).mean() > 0.75
    drift = kinds == DRIFT
    assert (z[drift] > 2.5).mean() > 0.3  # grows into view
    # a noise burst shows within its episode: some reading of nearly every burst crosses 2.5
    burst = kinds == NOISE_BURST
    episode_id = np.cumsum(episode_starts(burst).ravel()).reshape(burst.shape)
    ids = episode_id[burst]
    hits = np.zeros(ids.max() + 1, bool)
    np.logical_or.at(hits, ids, z[burst] > 2.5)
    assert hits[np.unique(ids)].mean() > 0.9
    # stuck values repeat the last reading exactly
    stuck = kinds == STUCK
    prev = np.zeros_like(values)
    prev[:, 1:] = values[:, :-1]
    assert (values[stuck] == prev[stuck]).all()


def test_values_stay_in_the_physical_range(long_run):
    fleet, values, _, _ = long_run
    assert (values >= fleet.low[:, None]).all() and (values <= fleet.high[:, None]).all()
    assert np.isfinite(values).all()


def test_batches_subsets_and_timestamps():
    fleet = Fleet(10, seed=0)
    r = fleet.next_readings(np.array([3, 7, 1]), now=T0, k=4, interval_s=2.0)
    assert r.device.tolist() == [3] * 4 + [7] * 4 + [1] * 4
    np.testing.assert_allclose(r.timestamp[:4], T0 + np.array([-6.0, -4.0, -2.0, 0.0]))
    # a second call at the same `now` still moves every device forward in time
    r2 = fleet.next_readings(np.array([3]), now=T0, k=2, interval_s=2.0)
    assert r2.timestamp[0] > r.timestamp[3] and r2.timestamp[1] > r2.timestamp[0]
    assert (np.round(r2.timestamp * 1000) == r2.timestamp * 1000).all(), "millisecond precision"
    with pytest.raises(ValueError):
        fleet.next_readings(np.array([1, 1]), now=T0)
    assert fleet.round_robin(4).tolist() == [0, 1, 2, 3]
    assert fleet.round_robin(8).tolist() == [4, 5, 6, 7, 8, 9, 0, 1]
    assert len(fleet.round_robin(50)) == 10


def test_message_starts():
    dev = np.array([0, 0, 0, 0, 0, 1, 1, 2, 0, 0])
    assert message_starts(dev, 2).tolist() == [0, 2, 4, 5, 7, 8]
    assert message_starts(dev, 1).tolist() == list(range(10))
    assert message_starts(np.array([], np.int32), 3).tolist() == []


def test_generator_is_fast_enough_for_the_benchmark():
    fleet = Fleet(2407, seed=0)
    fleet.next_readings(now=T0, k=1)
    start, n = time.perf_counter(), 0
    for i in range(20):
        n += len(fleet.next_readings(now=T0 + 10 * (i + 1), k=10, interval_s=1.0))
    rate = n / (time.perf_counter() - start)
    assert rate > 50_000, f"{rate:,.0f} readings/s"
