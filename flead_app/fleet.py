"""The simulated device fleet: vectorised sensor readings with labelled, injected anomalies.

Pure numpy, no Kafka: ``flead simulate`` wraps it in a producer, the benchmark drives it
directly and the tests check it. Every device has one sensor of a realistic kind (its level,
noise and a slow daily cycle drawn from ``--seed``), so the detector faces devices in very
different units. Anomalies are *episodes* with a start and a duration, and every reading
carries the ground truth (label 1 inside an episode, else 0), which is what the held-out
evaluation needs.

Magnitudes are expressed in multiples of the device's natural spread (noise and daily cycle
together), so spikes, level shifts, drifts and noise bursts stand several standard deviations
out of the device's own history: a z-score detector can find them, which is the point of the
exercise. Stuck values are labelled too but hardly move the z-score; they are there because
real fleets have them and a learned model may pick them up from the jump feature.

Generation runs one vectorised step per reading *position* over all requested devices (a
batch of ``k`` readings per device is ``k`` steps), never a Python loop per reading.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# --- sensor kinds -----------------------------------------------------------------------


@dataclass(frozen=True)
class SensorKind:
    """How one kind of sensor behaves: ranges from which each device draws its own values."""

    name: str
    unit: str
    level: tuple[float, float]  # the device's operating level is drawn from this range
    noise: tuple[float, float]  # standard deviation of its measurement noise
    daily: tuple[float, float]  # daily-cycle amplitude, in multiples of the device's noise
    limits: tuple[float, float]  # physical range the value is clipped to


SENSOR_KINDS: tuple[SensorKind, ...] = (
    SensorKind("temperature", "degC", (18.0, 85.0), (0.15, 0.8), (0.5, 1.5), (-40.0, 150.0)),
    SensorKind("vibration", "mm/s", (1.5, 12.0), (0.05, 0.4), (0.2, 0.8), (0.0, 100.0)),
    SensorKind("pressure", "kPa", (95.0, 650.0), (0.4, 3.0), (0.3, 1.0), (0.0, 2000.0)),
    SensorKind("humidity", "%RH", (30.0, 70.0), (0.4, 1.5), (0.6, 1.5), (0.0, 100.0)),
    SensorKind("current", "A", (2.0, 60.0), (0.05, 0.6), (0.4, 1.5), (0.0, 500.0)),
    SensorKind("voltage", "V", (220.0, 240.0), (0.3, 1.2), (0.3, 1.0), (0.0, 500.0)),
    SensorKind("flow", "L/min", (10.0, 200.0), (0.2, 2.0), (0.3, 1.2), (0.0, 1000.0)),
    SensorKind("co2", "ppm", (400.0, 900.0), (5.0, 20.0), (0.5, 1.5), (0.0, 5000.0)),
)

# --- anomaly kinds ------------------------------------------------------------------------

NORMAL, SPIKE, LEVEL_SHIFT, DRIFT, STUCK, NOISE_BURST = range(6)
ANOMALY_KINDS: tuple[str, ...] = ("spike", "level_shift", "drift", "stuck", "noise_burst")


@dataclass(frozen=True)
class AnomalyKind:
    """One kind of injected episode: how often it is chosen, how long it lasts, how big it is."""

    name: str
    weight: float  # share of episodes
    duration: tuple[int, int]  # readings, both ends included
    magnitude: tuple[float, float]  # multiples of the device's spread (unused by ``stuck``)


EPISODES: tuple[AnomalyKind, ...] = (
    AnomalyKind("spike", 0.35, (1, 3), (6.0, 10.0)),  # offset of the whole episode
    AnomalyKind("level_shift", 0.20, (20, 60), (4.0, 7.0)),  # constant offset
    AnomalyKind("drift", 0.15, (30, 90), (6.0, 10.0)),  # offset growing linearly to this
    AnomalyKind("stuck", 0.15, (15, 45), (0.0, 0.0)),  # value frozen at the last reading
    AnomalyKind("noise_burst", 0.15, (10, 30), (4.0, 7.0)),  # extra noise of this std
)

DEFAULT_ANOMALY_RATE = 0.04
MAX_ANOMALY_RATE = 0.5
WARMUP_READINGS = 12  # no episode in a device's first readings: the detector needs some history
QUIET_AFTER = 10  # normal readings after every episode before the next may start
MIN_STEP_S = 0.001  # timestamps are millisecond-precise and strictly increase per device
DAY_S = 86_400.0


def mean_episode_length() -> float:
    weights = np.array([e.weight for e in EPISODES])
    lengths = np.array([(e.duration[0] + e.duration[1]) / 2.0 for e in EPISODES])
    return float((weights * lengths).sum() / weights.sum())


def start_probability(anomaly_rate: float) -> float:
    """Per-reading chance that an episode starts, so that ``anomaly_rate`` of readings are labelled.

    A device alternates normal stretches (geometric, mean 1/p, plus the quiet gap) and episodes
    (mean length L): the labelled share is L / (L + QUIET_AFTER + 1/p).
    """
    if not 0.0 <= anomaly_rate <= MAX_ANOMALY_RATE:
        raise ValueError(f"anomaly rate must lie in [0, {MAX_ANOMALY_RATE}], got {anomaly_rate}")
    if anomaly_rate == 0.0:
        return 0.0
    length = mean_episode_length()
    return 1.0 / (length / anomaly_rate - length - QUIET_AFTER)


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Readings:
    """Readings as parallel arrays, grouped by device (each device's readings contiguous, in order)."""

    device: np.ndarray  # int32 device index
    timestamp: np.ndarray  # float64 epoch seconds, millisecond precision
    value: np.ndarray  # float64
    label: np.ndarray  # int8: 1 inside an anomaly episode, 0 outside, -1 unknown (CSV without labels)
    kind: np.ndarray  # int8 anomaly kind (NORMAL=0, SPIKE, ...); 0 where unknown

    def __len__(self) -> int:
        return int(self.value.shape[0])


def empty_readings() -> Readings:
    return Readings(np.empty(0, np.int32), np.empty(0), np.empty(0), np.empty(0, np.int8), np.empty(0, np.int8))


def message_starts(device: np.ndarray, batch: int) -> np.ndarray:
    """Where each message begins: a new device, or every ``batch`` readings within a device's run."""
    n = device.shape[0]
    if n == 0:
        return np.empty(0, np.int64)
    idx = np.arange(n)
    new_run = np.ones(n, bool)
    new_run[1:] = device[1:] != device[:-1]
    run_start = np.maximum.accumulate(np.where(new_run, idx, 0))
    return np.flatnonzero((idx - run_start) % batch == 0)


# --- the fleet ----------------------------------------------------------------------------


class Fleet:
    """``n_devices`` simulated sensors; deterministic from ``seed`` and the sequence of calls."""

    def __init__(
        self,
        n_devices: int,
        seed: int = 0,
        anomaly_rate: float = DEFAULT_ANOMALY_RATE,
        warmup: int = WARMUP_READINGS,
    ) -> None:
        if n_devices <= 0:
            raise ValueError("a fleet needs at least one device")
        if warmup < 0:
            raise ValueError("warmup must be >= 0")
        self.warmup = warmup
        self.n_devices = n_devices
        self.seed = seed
        self.anomaly_rate = anomaly_rate
        self.p_start = start_probability(anomaly_rate)
        self._rng = np.random.default_rng(seed)
        rng = self._rng
        n = n_devices
        kinds = SENSOR_KINDS
        self.sensor = rng.integers(0, len(kinds), n).astype(np.int8)

        def draw(attr: str) -> np.ndarray:
            lo = np.array([getattr(k, attr)[0] for k in kinds])[self.sensor]
            hi = np.array([getattr(k, attr)[1] for k in kinds])[self.sensor]
            return lo + (hi - lo) * rng.random(n)

        self.level = draw("level")
        self.noise = draw("noise")
        self.daily_amp = draw("daily") * self.noise
        self.daily_phase = rng.random(n) * 2.0 * np.pi
        self.low = np.array([k.limits[0] for k in kinds])[self.sensor]
        self.high = np.array([k.limits[1] for k in kinds])[self.sensor]
        # the std of a device's normal signal: noise plus the daily sine (variance amp^2 / 2)
        self.spread = np.sqrt(self.noise**2 + self.daily_amp**2 / 2.0)
        self._ids = [f"device_{i}" for i in range(n)]
        # per-device state
        self._count = np.zeros(n, np.int64)
        self._last_ts = np.full(n, -np.inf)
        self._last_value = self.level.copy()
        self._quiet = np.full(n, warmup, np.int64)
        self._ep_kind = np.zeros(n, np.int8)
        self._ep_pos = np.zeros(n, np.int64)
        self._ep_len = np.ones(n, np.int64)
        self._ep_mag = np.zeros(n)
        self._next_device = 0
        self._mark = np.zeros(n, np.int64)
        # what was injected
        self.episodes = np.zeros(len(ANOMALY_KINDS) + 1, np.int64)  # by kind code
        self.labelled = np.zeros(len(ANOMALY_KINDS) + 1, np.int64)
        self.generated = 0
        w = np.array([e.weight for e in EPISODES])
        self._kind_cdf = np.cumsum(w / w.sum())
        self._dur_lo = np.array([e.duration[0] for e in EPISODES])
        self._dur_hi = np.array([e.duration[1] for e in EPISODES])
        self._mag_lo = np.array([e.magnitude[0] for e in EPISODES])
        self._mag_hi = np.array([e.magnitude[1] for e in EPISODES])
        timeshare = w * (self._dur_lo + self._dur_hi) / 2.0
        self._stationary_cdf = np.cumsum(timeshare / timeshare.sum())

    # ------------------------------------------------------------------------------------
    def device_id(self, i: int) -> str:
        return self._ids[i]

    @property
    def device_ids(self) -> list[str]:
        return self._ids

    def describe(self, i: int) -> dict[str, object]:
        """A device's sensor, for logs and docs."""
        kind = SENSOR_KINDS[int(self.sensor[i])]
        return {
            "device_id": self._ids[i],
            "sensor": kind.name,
            "unit": kind.unit,
            "level": round(float(self.level[i]), 3),
            "noise": round(float(self.noise[i]), 4),
            "daily_amplitude": round(float(self.daily_amp[i]), 4),
        }

    def round_robin(self, m: int) -> np.ndarray:
        """The next ``m`` (at most ``n_devices``) distinct devices in cyclic order."""
        m = min(m, self.n_devices)
        idx = (self._next_device + np.arange(m)) % self.n_devices
        self._next_device = (self._next_device + m) % self.n_devices
        return idx

    def injected(self) -> dict[str, dict[str, int]]:
        """Episodes started and readings labelled, by anomaly kind."""
        return {
            name: {"episodes": int(self.episodes[code]), "readings": int(self.labelled[code])}
            for code, name in enumerate(ANOMALY_KINDS, start=1)
        }

    # ------------------------------------------------------------------------------------
    def next_readings(
        self,
        devices: np.ndarray | None = None,
        now: float = 0.0,
        k: int = 1,
        interval_s: float = 1.0,
    ) -> Readings:
        """``k`` new readings of each of ``devices`` (distinct indices; default all), the last at ``now``.

        A device's readings are ``interval_s`` apart and end at ``now`` (epoch seconds), moved
        later if needed so that each device's timestamps strictly increase. The result is
        grouped by device: ``k`` consecutive readings per device, in the order given.
        """
        idx = np.arange(self.n_devices) if devices is None else np.asarray(devices, dtype=np.int64)
        m = idx.shape[0]
        if m == 0 or k <= 0:
            return empty_readings()
        if devices is not None:
            # distinct iff every position survives a scatter of positions (duplicates overwrite)
            pos = np.arange(m)
            self._mark[idx] = pos
            if not (self._mark[idx] == pos).all():
                raise ValueError("next_readings needs distinct device indices")
        interval = max(float(interval_s), MIN_STEP_S)
        start = np.maximum(now - (k - 1) * interval, self._last_ts[idx] + MIN_STEP_S)
        ts = np.round((start[None, :] + interval * np.arange(k)[:, None]) * 1000.0) / 1000.0  # (k, m)
        values = np.empty((k, m))
        kinds = np.empty((k, m), np.int8)
        for j in range(k):
            values[j], kinds[j] = self._step(idx, ts[j])
        self._last_ts[idx] = ts[-1]
        kind = kinds.T.ravel()
        self.generated += k * m
        self.labelled += np.bincount(kind, minlength=self.labelled.shape[0])
        return Readings(
            device=np.repeat(idx, k).astype(np.int32),
            timestamp=ts.T.ravel(),
            value=values.T.ravel(),
            label=(kind > 0).astype(np.int8),
            kind=kind,
        )

    def _step(self, idx: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One reading for each device in ``idx`` at times ``t``."""
        rng = self._rng
        m = idx.shape[0]
        noise_draw = rng.standard_normal(m)
        if self.p_start > 0.0:
            free = (self._ep_kind[idx] == NORMAL) & (self._quiet[idx] == 0)
            # a device leaving warm-up joins the stationary state: inside an episode with
            # probability anomaly_rate, so labels do not ramp up over the first minutes
            first = self._count[idx] == self.warmup
            chance = np.where(first, self.anomaly_rate, self.p_start)
            starting = free & (rng.random(m) < chance)
            if starting.any():
                self._start_episodes(idx[starting & ~first], stationary=False)
                self._start_episodes(idx[starting & first], stationary=True)
        kind = self._ep_kind[idx]
        value = (
            self.level[idx]
            + self.daily_amp[idx] * np.sin(2.0 * np.pi * (t / DAY_S) + self.daily_phase[idx])
            + self.noise[idx] * noise_draw
        )
        active = kind != NORMAL
        if active.any():
            a = idx[active]
            ak = kind[active]
            mag = self._ep_mag[a]
            offset = np.where((ak == SPIKE) | (ak == LEVEL_SHIFT), mag, 0.0)
            offset = offset + np.where(ak == DRIFT, mag * (self._ep_pos[a] + 1) / self._ep_len[a], 0.0)
            burst = ak == NOISE_BURST
            if burst.any():
                offset[burst] += mag[burst] * rng.standard_normal(int(burst.sum()))
            v = value[active] + offset
            stuck = ak == STUCK
            v[stuck] = self._last_value[a[stuck]]
            value[active] = v
            # advance the episodes; the ones that end leave a quiet gap
            pos = self._ep_pos[a] + 1
            ended = pos >= self._ep_len[a]
            self._ep_pos[a] = pos
            done = a[ended]
            self._ep_kind[done] = NORMAL
            self._quiet[done] = QUIET_AFTER + 1  # decremented below with everyone else
        value = np.round(np.clip(value, self.low[idx], self.high[idx]), 4)
        self._last_value[idx] = value
        self._count[idx] += 1
        q = self._quiet[idx]
        self._quiet[idx] = np.where(q > 0, q - 1, 0)
        return value, kind

    def _start_episodes(self, devs: np.ndarray, stationary: bool) -> None:
        """Begin episodes on ``devs``; ``stationary`` ones are caught at a random point of their course.

        A reading taken at a random moment falls in a kind's episodes in proportion to
        share x mean length, at a uniformly random position of the episode.
        """
        n = devs.shape[0]
        if n == 0:
            return
        rng = self._rng
        cdf = self._stationary_cdf if stationary else self._kind_cdf
        choice = np.searchsorted(cdf, rng.random(n), side="right").clip(0, len(EPISODES) - 1)
        code = (choice + 1).astype(np.int8)
        length = rng.integers(self._dur_lo[choice], self._dur_hi[choice] + 1)
        position = rng.integers(0, length) if stationary else np.zeros(n, np.int64)
        size = self._mag_lo[choice] + (self._mag_hi[choice] - self._mag_lo[choice]) * rng.random(n)
        size = size * self.spread[devs]
        sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        # offsets that would leave the physical range point the other way
        level = self.level[devs]
        sign = np.where(level - size < self.low[devs], 1.0, sign)
        sign = np.where(level + size > self.high[devs], -1.0, sign)
        self._ep_kind[devs] = code
        self._ep_pos[devs] = position
        self._ep_len[devs] = length
        self._ep_mag[devs] = np.where(code == NOISE_BURST, size, sign * size)
        self.episodes += np.bincount(code, minlength=self.episodes.shape[0])
