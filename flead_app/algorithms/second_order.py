"""The online Newton server step for a small logistic regression (``FLEAD_AGGREGATOR=newton``).

The learner's model has d + 1 parameters (weights, then bias; d = 10), so a device
can afford to send, with each local round, the *gradient* g_k and the *Hessian* H_k of its round's
summed log-loss at the global parameters theta_k its round started from:

    g_k = sum_i (p_i - y_i) [x_i, 1],        H_k = sum_i p_i (1 - p_i) [x_i, 1] [x_i, 1]^T,

with p_i = sigmoid(theta_k . [x_i, 1]). H_k is symmetric: (d + 1)(d + 2) / 2 numbers on the wire
(66 for d = 10; ``pack_symmetric``).

**Online Newton** (``newton_step``; federated IRLS in information form, the Laplace
approximation / Kalman filter of logistic regression). Each round's summed log-loss is replaced by
its second-order expansion at the parameters theta_k where it was computed,

    q_k(theta) = const + g_k . (theta - theta_k) + (theta - theta_k)^T H_k (theta - theta_k) / 2,

and the server keeps the two sums that define the minimiser of all of them plus a ridge R
(``ridge`` on each weight, ``bias_ridge`` on the bias, around 0):

    A = sum_k H_k  (the information matrix),   b = sum_k (H_k theta_k - g_k),
    theta* = (A + R)^-1 b,                    theta <- theta + cap(theta* - theta).

With ``ridge`` 1 theta* is the central L2-regularised logistic regression (scikit-learn's default
C = 1) on the data seen so far, up to the expansion error, which shrinks as the parameters the
rounds start from settle. Stale updates need no special rule: each is expanded where it was
computed (the device sends the parameters it started from). A round moves theta* by its share of
all data seen, so versions stop swinging as data accumulates, however bursty the positives (a
closing window's 100-800 positives move the model by their share of everything, not by 800 SGD
steps).

``max_step``: a trust region, the Euclidean norm of one version's change is capped (a bad early
curvature estimate cannot throw the model far; what the cap holds back is still in A and b, so
later versions catch up). Measured on NAB (docs/learning.md): forgetting A and b (a decayed
memory) lost stability, and FedBuff's mean change with a server learning rate or momentum
stayed 10-12 NAB points below the central model while this step reaches it.

Parameters are always one flat vector, weights then bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np


def num_packed(params: int) -> int:
    """Unique entries of a symmetric ``params`` x ``params`` matrix.

    >>> num_packed(7), num_packed(11)
    (28, 66)
    """
    return params * (params + 1) // 2


@cache
def upper_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.triu_indices(n)``, computed once per size (a round packs two matrices: the hot path).

    >>> [i.tolist() for i in upper_indices(2)]
    [[0, 0, 1], [0, 1, 1]]
    """
    return np.triu_indices(n)


def pack_symmetric(matrix: np.ndarray) -> np.ndarray:
    """The upper triangle (row by row) of a symmetric matrix: what goes on the wire.

    >>> pack_symmetric(np.array([[1.0, 2.0], [2.0, 3.0]])).tolist()
    [1.0, 2.0, 3.0]
    """
    m = np.asarray(matrix, dtype=np.float64)
    return m[upper_indices(m.shape[0])]


def unpack_symmetric(packed: np.ndarray) -> np.ndarray:
    """The symmetric matrix of ``pack_symmetric``'s output.

    >>> unpack_symmetric(np.array([1.0, 2.0, 3.0])).tolist()
    [[1.0, 2.0], [2.0, 3.0]]
    """
    p = np.asarray(packed, dtype=np.float64)
    n = int(round((math.sqrt(8 * p.shape[0] + 1) - 1) / 2))
    if num_packed(n) != p.shape[0]:
        raise ValueError(f"{p.shape[0]} numbers are no packed symmetric matrix")
    m = np.zeros((n, n))
    m[upper_indices(n)] = p
    return m + np.triu(m, 1).T


@dataclass(frozen=True)
class Curvature:
    """A round's summed log-loss at the parameters it started from: gradient and Hessian.

    ``gradient``: d + 1 floats; ``hessian``: (d + 1) x (d + 1), symmetric (packed on the wire).

    >>> Curvature(np.zeros(3), np.eye(3)).packed().shape
    (9,)
    """

    gradient: np.ndarray
    hessian: np.ndarray

    def packed(self) -> np.ndarray:
        """Gradient then the Hessian's upper triangle: 11 + 66 = 77 floats for d = 10.

        >>> c = Curvature.unpacked(Curvature(np.ones(2), np.eye(2)).packed())
        >>> c.gradient.tolist(), c.hessian.tolist()
        ([1.0, 1.0], [[1.0, 0.0], [0.0, 1.0]])
        """
        return np.concatenate((self.gradient, pack_symmetric(self.hessian)))

    @classmethod
    def unpacked(cls, packed: np.ndarray) -> Curvature:
        """From ``packed``'s output (k + k(k+1)/2 numbers for k parameters)."""
        p = np.asarray(packed, dtype=np.float64)
        k = int(round((math.sqrt(8 * p.shape[0] + 9) - 3) / 2))
        if k + num_packed(k) != p.shape[0]:
            raise ValueError(f"{p.shape[0]} numbers are no packed curvature")
        return cls(p[:k], unpack_symmetric(p[k:]))


def curvature_size(params: int) -> int:
    """Numbers in a packed ``Curvature`` of ``params`` parameters.

    >>> curvature_size(11)
    77
    """
    return params + num_packed(params)


def round_curvature(params: np.ndarray, x: np.ndarray, y: np.ndarray) -> Curvature:
    """Gradient and Hessian of sum_i log-loss(y_i, sigmoid(w . x_i + b)) at ``params`` = [w, b].

    >>> c = round_curvature(np.zeros(3), np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1, 0]))
    >>> c.gradient.tolist(), c.hessian[2].tolist()
    ([-0.5, 0.5, 0.0], [0.25, 0.25, 0.5])
    """
    theta = np.asarray(params, dtype=np.float64)
    xa = np.concatenate((np.asarray(x, dtype=np.float64), np.ones((len(y), 1))), axis=1)
    s = np.clip(xa @ theta, -500.0, 500.0)
    p = 1.0 / (1.0 + np.exp(-s))
    r = p - np.asarray(y, dtype=np.float64)
    return Curvature(xa.T @ r, (xa * (p * (1.0 - p))[:, None]).T @ xa)


@dataclass(frozen=True)
class NewtonConfig:
    ridge: float = 1.0  # prior precision of each weight, in samples' curvature (scikit-learn's C = 1)
    bias_ridge: float = 1e-3  # the bias is (almost) unpenalised, as in scikit-learn
    max_step: float | None = 1.0  # trust region: the largest Euclidean norm of one version's change


def ridge_matrix(params: int, cfg: NewtonConfig) -> np.ndarray:
    """R: ``ridge`` on each weight, ``bias_ridge`` on the bias.

    >>> ridge_matrix(3, NewtonConfig()).diagonal().tolist()
    [1.0, 1.0, 0.001]
    """
    return np.diag([cfg.ridge] * (params - 1) + [cfg.bias_ridge])


def newton_step(
    theta: np.ndarray,
    information: np.ndarray,
    target: np.ndarray,
    updates: Sequence[tuple[Curvature, np.ndarray, int]],
    cfg: NewtonConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One online Newton step: (next parameters, next A, next b), from A = sum H_k and b = sum (H_k theta_k - g_k).

    ``information`` A and ``target`` b: the sums over every round so far (zeros at version 0);
    ``updates``: per update its ``Curvature``, the parameters its round started from, its samples.

    Full-batch rounds on the same data, each from an empty state, are Newton's method on the
    ridge-regularised loss, so they converge to its minimiser (the central model):

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(400, 2)); y = (x[:, 0] + rng.normal(size=400) > 1).astype(int)
    >>> cfg = NewtonConfig(ridge=1.0, max_step=None)
    >>> theta = np.zeros(3)
    >>> for _ in range(8):
    ...     c = round_curvature(theta, x, y)
    ...     theta, _, _ = newton_step(theta, np.zeros((3, 3)), np.zeros(3), [(c, theta, 400)], cfg)
    >>> g = round_curvature(theta, x, y).gradient + ridge_matrix(3, cfg) @ theta
    >>> bool(np.abs(g).max() < 1e-8)
    True
    """
    theta = np.asarray(theta, dtype=np.float64)
    if not updates:
        return theta, information, target
    a = np.asarray(information, dtype=np.float64)
    b = np.asarray(target, dtype=np.float64)
    for c, base, _ in updates:
        a = a + c.hessian
        b = b + c.hessian @ np.asarray(base, dtype=np.float64) - c.gradient
    best = np.linalg.solve(a + ridge_matrix(theta.shape[0], cfg), b)
    step = best - theta
    if cfg.max_step is not None:
        norm = float(np.linalg.norm(step))
        if norm > cfg.max_step:
            step *= cfg.max_step / norm
    return theta + step, a, b
