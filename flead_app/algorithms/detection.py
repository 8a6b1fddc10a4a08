"""Z-score anomaly detection and the features the local models learn from.

Raw means and standard deviations are in each device's own units (degrees, percent, ms), so
weights averaged across devices would mean nothing on them. Every feature here is unitless:
how many of the device's own standard deviations a reading sits from its history, how far it
jumped from the previous reading, and a short-term average of |z| that rises during noise
bursts and drifts. That makes a model trained on one device meaningful on another, which is
what federated averaging needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from flead_app.algorithms.running_stats import RunningStats, prefix_stats

FEATURE_NAMES = ("z", "abs_z", "jump_z", "ewm_abs_z")
NUM_FEATURES = len(FEATURE_NAMES)
Z_CLIP = 10.0
EWM_ALPHA = 0.2
# std below this share of the level (or absolute floor) counts as "no spread yet"
_STD_FLOOR_REL = 1e-6
_STD_FLOOR_ABS = 1e-9


@dataclass(frozen=True)
class DetectorState:
    """What a device carries between batches for scoring and features."""

    stats: RunningStats = RunningStats()
    last_value: float | None = None
    ewm_abs_z: float = 0.0


@dataclass(frozen=True)
class Scored:
    """Per-reading results of ``score_batch``."""

    z: np.ndarray  # z-score against the history before each reading (0 while warming up)
    features: np.ndarray  # shape (k, NUM_FEATURES)
    scored: np.ndarray  # bool: enough history to score
    state: DetectorState


SMALL_BATCH = 24  # below this, a plain Python loop beats numpy's per-call overhead


def _std_floor(mean: float) -> float:
    return max(_STD_FLOOR_REL * abs(mean), _STD_FLOOR_ABS)


def _score_small(state: DetectorState, values: np.ndarray, min_history: int) -> Scored:
    """``score_batch`` for a few readings: Welford's update on Python floats, same results."""
    n, mean, m2 = state.stats.count, state.stats.mean, state.stats.m2
    last, ewm = state.last_value, state.ewm_abs_z
    k = values.shape[0]
    zs, rows, ok = [0.0] * k, [], [False] * k
    need = max(min_history, 2)
    decay = 1.0 - EWM_ALPHA
    for i, x in enumerate(values.tolist()):
        z = jump = 0.0
        if n >= need:
            std = math.sqrt(m2 / (n - 1))
            std = max(std, _std_floor(mean))
            z = min(max((x - mean) / std, -Z_CLIP), Z_CLIP)
            prev = x if last is None else last
            jump = min(max((x - prev) / std, -Z_CLIP), Z_CLIP)
            ok[i] = True
        abs_z = abs(z)
        ewm = decay * ewm + EWM_ALPHA * abs_z
        zs[i] = z
        rows.append((z, abs_z, jump, ewm))
        n += 1
        delta = x - mean
        mean += delta / n
        m2 += delta * (x - mean)
        last = x
    features = np.array(rows, dtype=np.float64) if k else np.empty((0, NUM_FEATURES))
    new_state = DetectorState(RunningStats(n, mean if n else 0.0, max(m2, 0.0)), last, ewm)
    return Scored(z=np.array(zs), features=features, scored=np.array(ok, dtype=bool), state=new_state)


def score_batch(state: DetectorState, values: np.ndarray, min_history: int = 10) -> Scored:
    """Score a device's readings in order, each against everything before it."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] < SMALL_BATCH:
        return _score_small(state, values, min_history)
    return _score_vectorised(state, values, min_history)


def _score_vectorised(state: DetectorState, values: np.ndarray, min_history: int) -> Scored:
    count, mean, std, after = prefix_stats(state.stats, values)
    floor = np.maximum(_STD_FLOOR_REL * np.abs(mean), _STD_FLOOR_ABS)
    safe_std = np.maximum(std, floor)
    scored = count >= max(min_history, 2)
    z = np.where(scored, (values - mean) / safe_std, 0.0)
    z = np.clip(z, -Z_CLIP, Z_CLIP)
    previous = np.empty_like(values)
    if values.shape[0]:
        previous[0] = values[0] if state.last_value is None else state.last_value
        previous[1:] = values[:-1]
    jump = np.where(scored, np.clip((values - previous) / safe_std, -Z_CLIP, Z_CLIP), 0.0)
    abs_z = np.abs(z)
    if values.shape[0]:
        ewm, _ = lfilter([EWM_ALPHA], [1.0, -(1.0 - EWM_ALPHA)], abs_z, zi=[(1.0 - EWM_ALPHA) * state.ewm_abs_z])
    else:
        ewm = abs_z
    features = np.column_stack((z, abs_z, jump, ewm)) if values.shape[0] else np.empty((0, NUM_FEATURES))
    new_state = DetectorState(
        stats=after,
        last_value=float(values[-1]) if values.shape[0] else state.last_value,
        ewm_abs_z=float(ewm[-1]) if values.shape[0] else state.ewm_abs_z,
    )
    return Scored(z=z, features=features, scored=scored, state=new_state)


def severity(z: float, threshold: float = 2.5, critical: float = 3.0) -> str | None:
    """None below ``threshold``; "warning" above it; "critical" from ``critical`` on (by |z|)."""
    a = abs(z)
    if a >= critical and a > threshold:
        return "critical"
    if a > threshold:
        return "warning"
    return None


def anomaly_mask(z: np.ndarray, threshold: float = 2.5) -> np.ndarray:
    return np.abs(z) > threshold
