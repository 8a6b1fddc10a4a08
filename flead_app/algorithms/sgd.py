"""Logistic regression trained by plain per-sample SGD, as the description's local step does.

Per sample: p = sigmoid(w·x + b); error = p - y; w -= lr * error * x; b -= lr * error.
The feature vectors are short (see ``detection.FEATURE_NAMES``), so the inner loop runs on
Python floats rather than numpy, which is several times faster for vectors of this size; for
the four features the worker uses it is unrolled (about 1 µs per sample per epoch).

Every model starts from ``LinearModel.initial``: zero weights and the bias at the prior
log-odds of an anomaly, i.e. the model that predicts the base rate for every reading. From
zeros with bias 0 every reading starts at p = 0.5 and the first thousands of SGD steps go into
pulling the bias down, pushing the weights of the (non-negative) surprise features down with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_EPS = 1e-12
#: defaults of the worker's SGD (settings FLEAD_LEARNING_RATE, FLEAD_PRIOR_ANOMALY_RATE); docs/learning.md
DEFAULT_LEARNING_RATE = 0.03
DEFAULT_PRIOR_RATE = 0.04


@dataclass(frozen=True)
class LinearModel:
    """Weights and bias of a logistic regression.

    >>> round(LinearModel.initial(4, 0.04).bias, 3), LinearModel.zeros(2).weights.tolist()
    (-3.178, [0.0, 0.0])
    """

    weights: np.ndarray
    bias: float

    @classmethod
    def zeros(cls, n_features: int) -> LinearModel:
        return cls(np.zeros(n_features), 0.0)

    @classmethod
    def initial(cls, n_features: int, prior_rate: float) -> LinearModel:
        """Zero weights, bias = log(prior / (1 - prior)): p = ``prior_rate`` for every reading."""
        return cls(np.zeros(n_features), prior_log_odds(prior_rate))


def prior_log_odds(rate: float) -> float:
    """The bias at which a model with zero weights predicts ``rate``.

    >>> round(prior_log_odds(0.04), 4)
    -3.1781
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"a prior anomaly rate must lie strictly between 0 and 1, got {rate}")
    return math.log(rate / (1.0 - rate))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x), clipped so that huge scores do not overflow.

    >>> sigmoid(np.array([0.0, 2.0])).round(3).tolist()
    [0.5, 0.881]
    """
    x = np.clip(x, -500, 500)
    return 1.0 / (1.0 + np.exp(-x))


def predict_proba(model: LinearModel, features: np.ndarray) -> np.ndarray:
    """p = sigmoid(w . x + b) for each row of ``features``.

    >>> predict_proba(LinearModel(np.array([1.0, -1.0]), 0.0), np.array([[1.0, 0.0], [0.0, 0.0]])).round(3).tolist()
    [0.731, 0.5]
    """
    features = np.asarray(features, dtype=np.float64)
    if features.shape[0] == 0:
        return np.empty(0)
    return sigmoid(features @ model.weights + model.bias)


def log_loss(labels: np.ndarray, proba: np.ndarray) -> float:
    """Mean binary cross-entropy; 0 for an empty batch.

    >>> round(log_loss(np.array([1, 0]), np.array([0.9, 0.2])), 4)
    0.1643
    """
    if labels.shape[0] == 0:
        return 0.0
    p = np.clip(proba, _EPS, 1 - _EPS)
    y = labels.astype(np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def accuracy(labels: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> float:
    """Share of readings whose thresholded probability equals the label.

    >>> round(accuracy(np.array([1, 0, 1]), np.array([0.9, 0.2, 0.4])), 3)
    0.667
    """
    if labels.shape[0] == 0:
        return 0.0
    return float(np.mean((proba >= threshold).astype(np.int8) == labels))


def sgd_train(
    model: LinearModel,
    features: np.ndarray,
    labels: np.ndarray,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    epochs: int = 1,
) -> LinearModel:
    """Per-sample SGD over the batch in order, ``epochs`` times; returns a new model.

    >>> m = sgd_train(LinearModel.zeros(2), np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1, 0]), 0.5)
    >>> m.weights.round(3).tolist(), round(m.bias, 3)
    ([0.25, -0.281], -0.031)
    """
    w = [float(v) for v in model.weights]
    b = float(model.bias)
    rows = np.asarray(features, dtype=np.float64).tolist()
    ys = [float(v) for v in np.asarray(labels)]
    d = len(w)
    if d == 4:
        return _sgd4(w, b, rows, ys, learning_rate, epochs)
    for _ in range(max(1, epochs)):
        for x, y in zip(rows, ys, strict=True):
            s = b
            for j in range(d):
                s += w[j] * x[j]
            if s >= 0:
                p = 1.0 / (1.0 + math.exp(-s))
            else:
                e = math.exp(s)
                p = e / (1.0 + e)
            g = learning_rate * (p - y)
            for j in range(d):
                w[j] -= g * x[j]
            b -= g
    return LinearModel(np.array(w), b)


def _sgd4(w: list[float], b: float, rows: list, ys: list[float], lr: float, epochs: int) -> LinearModel:
    """``sgd_train`` unrolled for four features: the same arithmetic, about twice as fast."""
    w0, w1, w2, w3 = w
    exp = math.exp
    for _ in range(max(1, epochs)):
        for (x0, x1, x2, x3), y in zip(rows, ys, strict=True):
            s = b + w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3
            if s >= 0:
                p = 1.0 / (1.0 + exp(-s))
            else:
                e = exp(s)
                p = e / (1.0 + e)
            g = lr * (p - y)
            w0 -= g * x0
            w1 -= g * x1
            w2 -= g * x2
            w3 -= g * x3
            b -= g
    return LinearModel(np.array([w0, w1, w2, w3]), b)
