"""Running mean and standard deviation per device (Welford/Chan), updated a batch at a time.

Each reading is scored against the device's history *before* it, so ``prefix_stats`` returns,
for every reading in a batch, the count, mean and standard deviation of everything that came
earlier. It is the vectorised form of Welford's update: centring on the current mean keeps the
prefix sums small, and Chan's pairwise formula merges the history with each batch prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RunningStats:
    """Count, mean and sum of squared deviations (M2) of everything seen so far."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @property
    def variance(self) -> float:
        """Sample variance (ddof=1); 0 for fewer than two readings."""
        return self.m2 / (self.count - 1) if self.count > 1 else 0.0

    @property
    def std(self) -> float:
        return float(np.sqrt(self.variance))


def prefix_stats(stats: RunningStats, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, RunningStats]:
    """Per reading: (count, mean, std) of the history before it; and the stats after the batch.

    ``std`` uses ddof=1 and is 0 where fewer than two readings came before.
    """
    values = np.asarray(values, dtype=np.float64)
    k = values.shape[0]
    n0, mean0, m20 = float(stats.count), stats.mean, stats.m2
    if n0 == 0 and k:
        mean0 = float(values[0])  # centre on the first value for numerical stability
    u = values - mean0
    # prefix sums over the readings strictly before each position (0..k)
    s1 = np.concatenate(([0.0], np.cumsum(u)))
    s2 = np.concatenate(([0.0], np.cumsum(u * u)))
    i = np.arange(k + 1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        batch_mean_u = np.where(i > 0, s1 / np.maximum(i, 1), 0.0)
        batch_m2 = np.maximum(s2 - np.where(i > 0, s1 * s1 / np.maximum(i, 1), 0.0), 0.0)
    n_tot = n0 + i
    delta = batch_mean_u  # history mean is 0 after centring
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_u = np.where(n_tot > 0, (i * batch_mean_u) / np.maximum(n_tot, 1), 0.0)
        m2 = m20 + batch_m2 + np.where(n_tot > 0, delta * delta * n0 * i / np.maximum(n_tot, 1), 0.0)
        var = np.where(n_tot > 1, m2 / np.maximum(n_tot - 1, 1), 0.0)
    mean = mean_u + mean0
    std = np.sqrt(np.maximum(var, 0.0))
    after = RunningStats(int(n_tot[-1]), float(mean[-1]), float(max(m2[-1], 0.0)))
    if n0 == 0:
        # before any reading the mean is undefined; report 0 like RunningStats()
        mean = mean.copy()
        mean[0] = 0.0
    return n_tot[:-1], mean[:-1], std[:-1], after
