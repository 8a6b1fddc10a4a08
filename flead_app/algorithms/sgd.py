"""Logistic regression trained by plain per-sample SGD, as the description's local step does.

Per sample: p = sigmoid(w·x + b); error = p - y; w -= lr * error * x; b -= lr * error.
The feature vectors are short (see ``detection.FEATURE_NAMES``), so the inner loop runs on
Python floats rather than numpy, which is several times faster for vectors of this size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_EPS = 1e-12


@dataclass(frozen=True)
class LinearModel:
    weights: np.ndarray
    bias: float

    @classmethod
    def zeros(cls, n_features: int) -> LinearModel:
        return cls(np.zeros(n_features), 0.0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, -500, 500)
    return 1.0 / (1.0 + np.exp(-x))


def predict_proba(model: LinearModel, features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.shape[0] == 0:
        return np.empty(0)
    return sigmoid(features @ model.weights + model.bias)


def log_loss(labels: np.ndarray, proba: np.ndarray) -> float:
    """Mean binary cross-entropy; 0 for an empty batch."""
    if labels.shape[0] == 0:
        return 0.0
    p = np.clip(proba, _EPS, 1 - _EPS)
    y = labels.astype(np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def accuracy(labels: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> float:
    if labels.shape[0] == 0:
        return 0.0
    return float(np.mean((proba >= threshold).astype(np.int8) == labels))


def sgd_train(
    model: LinearModel,
    features: np.ndarray,
    labels: np.ndarray,
    learning_rate: float = 0.001,
    epochs: int = 1,
) -> LinearModel:
    """Per-sample SGD over the batch in order, ``epochs`` times; returns a new model."""
    w = [float(v) for v in model.weights]
    b = float(model.bias)
    rows = np.asarray(features, dtype=np.float64).tolist()
    ys = [float(v) for v in np.asarray(labels)]
    d = len(w)
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
