"""Aggregating local models into a global one: online Newton, FedAvg and two robust alternatives.

Modelled on Flower: the math is small functions over arrays (its ``aggregate.py``), and an
aggregator is an object holding its options that calls them (its strategies). ``FedAvg``,
``CoordinateMedian`` and ``TrimmedMean`` each have ``combine(params, samples, staleness)`` over
the stacked parameter vectors (weights followed by bias, one row per update). ``Newton`` (the
default, ``FLEAD_AGGREGATOR=newton``) is of another kind: it does not combine the rounds'
parameters but their curvature (``step``: ``second_order.newton_step``), and keeps two sums over
every round so far, which the FedBuff state holds; docs/learning.md has why (on NAB the
averaging aggregators stay 10-12 points below the central model, Newton reaches it).

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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from flead_app.algorithms.second_order import Curvature, NewtonConfig, newton_step


def staleness_weights(samples: np.ndarray, staleness: np.ndarray, exponent: float = 0.5) -> np.ndarray:
    """samples / (1 + staleness) ** exponent.

    >>> staleness_weights(np.array([100, 100]), np.array([0, 3])).tolist()
    [100.0, 50.0]
    """
    samples = np.asarray(samples, dtype=np.float64)
    staleness = np.maximum(np.asarray(staleness, dtype=np.float64), 0.0)
    return samples / np.power(1.0 + staleness, exponent)


def weighted_average(params: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """FedAvg: sum_k w_k * params_k / sum_k w_k.

    >>> weighted_average(np.array([[1.0], [3.0]]), np.array([1, 3])).tolist()
    [2.5]
    """
    params = np.asarray(params, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    total = weights.sum()
    if params.shape[0] == 0 or total <= 0:
        raise ValueError("weighted_average needs at least one update with positive weight")
    return (weights[:, None] * params).sum(axis=0) / total


def coordinate_median(params: np.ndarray) -> np.ndarray:
    """Coordinate-wise median: robust to up to half the updates being arbitrary.

    >>> coordinate_median(np.array([[1.0], [2.0], [100.0]])).tolist()
    [2.0]
    """
    params = np.asarray(params, dtype=np.float64)
    if params.shape[0] == 0:
        raise ValueError("coordinate_median needs at least one update")
    return np.median(params, axis=0)


def trimmed_mean(params: np.ndarray, trim_ratio: float = 0.1) -> np.ndarray:
    """Coordinate-wise mean after dropping the ``trim_ratio`` smallest and largest values.

    >>> trimmed_mean(np.array([[-100.0], [1.0], [3.0], [100.0]]), 0.25).tolist()
    [2.0]
    """
    params = np.asarray(params, dtype=np.float64)
    n = params.shape[0]
    if n == 0:
        raise ValueError("trimmed_mean needs at least one update")
    if not 0 <= trim_ratio < 0.5:
        raise ValueError("trim_ratio must lie in [0, 0.5)")
    cut = int(np.floor(n * trim_ratio))
    ordered = np.sort(params, axis=0)
    return ordered[cut : n - cut].mean(axis=0)


@dataclass(frozen=True)
class FedAvg:
    """Sample-weighted mean, each update discounted for staleness (``staleness_exponent`` 0: plain FedAvg).

    >>> FedAvg().combine(np.array([[1.0], [0.0]]), np.array([100, 100]), np.array([0, 3])).round(3).tolist()
    [0.667]
    """

    staleness_exponent: float = 0.5
    name: ClassVar[str] = "fedavg"

    def combine(self, params: np.ndarray, samples: np.ndarray, staleness: np.ndarray) -> np.ndarray:
        return weighted_average(params, staleness_weights(samples, staleness, self.staleness_exponent))


@dataclass(frozen=True)
class CoordinateMedian:
    """Coordinate-wise median: ignores sample counts, which a faulty device could inflate.

    >>> CoordinateMedian().combine(np.array([[1.0], [2.0], [1e6]]), np.ones(3), np.zeros(3)).tolist()
    [2.0]
    """

    name: ClassVar[str] = "median"

    def combine(self, params: np.ndarray, samples: np.ndarray, staleness: np.ndarray) -> np.ndarray:
        return coordinate_median(params)


@dataclass(frozen=True)
class TrimmedMean:
    """Coordinate-wise mean after trimming ``trim_ratio`` of the updates at each end.

    >>> TrimmedMean(0.25).combine(np.array([[-1e6], [1.0], [3.0], [1e6]]), np.ones(4), np.zeros(4)).tolist()
    [2.0]
    """

    trim_ratio: float = 0.1
    name: ClassVar[str] = "trimmed_mean"

    def combine(self, params: np.ndarray, samples: np.ndarray, staleness: np.ndarray) -> np.ndarray:
        return trimmed_mean(params, self.trim_ratio)


@dataclass(frozen=True)
class Newton:
    """Online Newton: the minimiser of every round's quadratic expansion plus a ridge (the central
    L2 logistic regression on the data seen, up to the expansion error), through a trust region.

    >>> from flead_app.algorithms.second_order import round_curvature
    >>> x = np.array([[0.0], [1.0], [2.0], [3.0]]); y = np.array([0, 0, 1, 1])
    >>> c = round_curvature(np.zeros(2), x, y)
    >>> theta, a, b = Newton(max_step=None).step(np.zeros(2), np.zeros((2, 2)), np.zeros(2), [(c, np.zeros(2), 4)])
    >>> bool(theta[0] > 0), a.shape
    (True, (2, 2))
    """

    ridge: float = 1.0
    bias_ridge: float = 1e-3
    max_step: float | None = 1.0
    name: ClassVar[str] = "newton"

    def step(
        self, theta: np.ndarray, information: np.ndarray, target: np.ndarray,
        rounds: Sequence[tuple[Curvature, np.ndarray, int]],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        """(next parameters, next information matrix A, next target b) after these rounds."""
        return newton_step(theta, information, target, rounds, NewtonConfig(self.ridge, self.bias_ridge, self.max_step))


Averaging = FedAvg | CoordinateMedian | TrimmedMean
Aggregator = Newton | FedAvg | CoordinateMedian | TrimmedMean
AGGREGATORS = {cls.name: cls for cls in (Newton, FedAvg, CoordinateMedian, TrimmedMean)}


def make_aggregator(
    name: str, staleness_exponent: float = 0.5, trim_ratio: float = 0.1, ridge: float = 1.0,
    bias_ridge: float = 1e-3, max_step: float | None = 1.0,
) -> Aggregator:  # fmt: skip
    """The aggregator a setting names (``FLEAD_AGGREGATOR``), with its options (``max_step`` 0: none).

    >>> make_aggregator("trimmed_mean", trim_ratio=0.2), make_aggregator("newton", max_step=0)
    (TrimmedMean(trim_ratio=0.2), Newton(ridge=1.0, bias_ridge=0.001, max_step=None))
    """
    if name == "newton":
        return Newton(ridge, bias_ridge, max_step or None)
    if name == "fedavg":
        return FedAvg(staleness_exponent)
    if name == "median":
        return CoordinateMedian()
    if name == "trimmed_mean":
        return TrimmedMean(trim_ratio)
    raise ValueError(f"unknown aggregator {name!r}; choose one of {sorted(AGGREGATORS)}")


def federated_step(
    params: np.ndarray,
    bases: np.ndarray,
    current: np.ndarray,
    samples: np.ndarray,
    staleness: np.ndarray | None = None,
    aggregator: Averaging = FedAvg(),
) -> np.ndarray:
    """The next global parameters: ``current`` + the aggregate of (update - the global it started from).

    ``params`` and ``bases`` have one row per update; a row of ``bases`` that is all NaN (its
    version is no longer known) counts that update's change from ``current``, i.e. its absolute
    parameters, as plain FedAvg would.

    >>> federated_step(np.array([[1.1], [0.1]]), np.array([[1.0], [0.0]]), np.array([1.0]), np.array([1, 1])).tolist()
    [1.1]
    """
    params = np.asarray(params, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    bases = np.array(bases, dtype=np.float64).reshape(params.shape)
    unknown = np.isnan(bases).all(axis=1)
    bases[unknown] = current
    if staleness is None:
        staleness = np.zeros(params.shape[0])
    return current + aggregator.combine(params - bases, np.asarray(samples, dtype=np.float64), staleness)


def weighted_accuracy(accuracies: np.ndarray, samples: np.ndarray) -> float:
    """Global accuracy = sum(accuracy_k * samples_k) / sum(samples_k), as the description says.

    >>> weighted_accuracy(np.array([0.8, 0.6]), np.array([300, 100]))
    0.75
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.sum() <= 0:
        return 0.0
    return float(np.dot(np.asarray(accuracies, dtype=np.float64), samples) / samples.sum())
