"""Aggregating local models into a global one: FedAvg and two robust alternatives.

Modelled on Flower's ``aggregate.py``: small functions over arrays. Every aggregator takes
the stacked parameter vectors (weights followed by bias, one row per update) and per-update
weights (samples, discounted for staleness) and returns one parameter vector.

Staleness: an update that started from global version g while the current version is G has
staleness s = G - g. As in buffered asynchronous FL (FedBuff), its weight is
samples / (1 + s) ** exponent, so stale work still counts but less; exponent 0 is plain FedAvg.

Deltas (``federated_step``): devices train asynchronously, so the updates in one buffer started
from different global versions. Averaging their *absolute* parameters would pull the model back
towards the older versions stale updates started from; FedBuff instead averages each update's
*change* from its own base version and adds it to the current model. When every update started
from the current version this is exactly the sample-weighted average of the parameters (the
description's worked example), since the weights sum to one.
"""

from __future__ import annotations

import numpy as np

AGGREGATORS = ("fedavg", "median", "trimmed_mean")


def staleness_weights(samples: np.ndarray, staleness: np.ndarray, exponent: float = 0.5) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float64)
    staleness = np.maximum(np.asarray(staleness, dtype=np.float64), 0.0)
    return samples / np.power(1.0 + staleness, exponent)


def weighted_average(params: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """FedAvg: sum_k w_k * params_k / sum_k w_k."""
    params = np.asarray(params, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    total = weights.sum()
    if params.shape[0] == 0 or total <= 0:
        raise ValueError("weighted_average needs at least one update with positive weight")
    return (weights[:, None] * params).sum(axis=0) / total


def coordinate_median(params: np.ndarray) -> np.ndarray:
    """Coordinate-wise median: robust to up to half the updates being arbitrary."""
    params = np.asarray(params, dtype=np.float64)
    if params.shape[0] == 0:
        raise ValueError("coordinate_median needs at least one update")
    return np.median(params, axis=0)


def trimmed_mean(params: np.ndarray, trim_ratio: float = 0.1) -> np.ndarray:
    """Coordinate-wise mean after dropping the ``trim_ratio`` smallest and largest values."""
    params = np.asarray(params, dtype=np.float64)
    n = params.shape[0]
    if n == 0:
        raise ValueError("trimmed_mean needs at least one update")
    if not 0 <= trim_ratio < 0.5:
        raise ValueError("trim_ratio must lie in [0, 0.5)")
    cut = int(np.floor(n * trim_ratio))
    ordered = np.sort(params, axis=0)
    return ordered[cut : n - cut].mean(axis=0)


def aggregate(
    params: np.ndarray,
    samples: np.ndarray,
    staleness: np.ndarray | None = None,
    method: str = "fedavg",
    staleness_exponent: float = 0.5,
    trim_ratio: float = 0.1,
) -> np.ndarray:
    """One global parameter vector from the buffered updates, by ``method``."""
    if staleness is None:
        staleness = np.zeros(len(samples))
    if method == "fedavg":
        return weighted_average(params, staleness_weights(samples, staleness, staleness_exponent))
    if method == "median":
        return coordinate_median(params)
    if method == "trimmed_mean":
        return trimmed_mean(params, trim_ratio)
    raise ValueError(f"unknown aggregator {method!r}; choose one of {AGGREGATORS}")


def federated_step(
    params: np.ndarray,
    bases: np.ndarray,
    current: np.ndarray,
    samples: np.ndarray,
    staleness: np.ndarray | None = None,
    method: str = "fedavg",
    staleness_exponent: float = 0.5,
    trim_ratio: float = 0.1,
) -> np.ndarray:
    """The next global parameters: ``current`` + aggregate of (update - the global it started from).

    ``params`` and ``bases`` have one row per update; a row of ``bases`` that is all NaN (its
    version is no longer known) counts that update's change from ``current``, i.e. its absolute
    parameters, as plain FedAvg would.
    """
    params = np.asarray(params, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    bases = np.array(bases, dtype=np.float64).reshape(params.shape)
    unknown = np.isnan(bases).all(axis=1)
    bases[unknown] = current
    return current + aggregate(params - bases, samples, staleness, method, staleness_exponent, trim_ratio)


def weighted_accuracy(accuracies: np.ndarray, samples: np.ndarray) -> float:
    """Global accuracy = sum(accuracy_k * samples_k) / sum(samples_k), as the description says."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.sum() <= 0:
        return 0.0
    return float(np.dot(np.asarray(accuracies, dtype=np.float64), samples) / samples.sum())
