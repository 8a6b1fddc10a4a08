import doctest

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flead_app.algorithms import second_order
from flead_app.algorithms.second_order import (
    Curvature,
    NewtonConfig,
    curvature_size,
    newton_step,
    num_packed,
    pack_symmetric,
    round_curvature,
    unpack_symmetric,
)


def _loss(theta, x, y):
    s = x @ theta[:-1] + theta[-1]
    return float(np.sum(np.logaddexp(0.0, s) - y * s))


def _data(n, seed=0, d=6):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = (x @ np.linspace(1.0, -0.5, d) - 2.5 + rng.logistic(size=n) > 0).astype(np.int8)
    return x, y


def test_doctests():
    assert doctest.testmod(second_order).failed == 0


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 11), st.integers(0, 10_000))
def test_pack_roundtrip(n, seed):
    a = np.random.default_rng(seed).normal(size=(n, n))
    m = a + a.T
    p = pack_symmetric(m)
    assert p.shape == (num_packed(n),)
    assert np.array_equal(unpack_symmetric(p), m)


def test_curvature_is_the_loss_derivatives():
    x, y = _data(60, 1)
    theta = np.random.default_rng(2).normal(scale=0.3, size=7)
    c = round_curvature(theta, x, y)
    eps = 1e-6
    eye = np.eye(7)
    num_g = np.array([(_loss(theta + eps * e, x, y) - _loss(theta - eps * e, x, y)) / (2 * eps) for e in eye])
    assert np.allclose(c.gradient, num_g, atol=1e-5)
    num_h = np.array([
        (round_curvature(theta + eps * e, x, y).gradient - round_curvature(theta - eps * e, x, y).gradient) / (2 * eps)
        for e in eye
    ])  # fmt: skip
    assert np.allclose(c.hessian, num_h, atol=1e-4)
    assert c.packed().shape == (7 + 28,) == (curvature_size(7),)
    back = Curvature.unpacked(c.packed())
    assert np.array_equal(back.gradient, c.gradient) and np.allclose(back.hessian, c.hessian)


def test_streaming_newton_reaches_the_central_fit():
    """Rounds of 50 samples, each expanded at a stale version, end near scikit-learn's C = 1 fit."""
    from sklearn.linear_model import LogisticRegression

    x, y = _data(20_000, 3)
    central = LogisticRegression().fit(x, y)
    want = np.append(central.coef_[0], central.intercept_[0])
    cfg = NewtonConfig()
    theta, a, b = np.append(np.zeros(6), -3.0), np.zeros((7, 7)), np.zeros(7)
    versions = [theta]
    for start in range(0, 20_000, 1_000):  # a server step per 20 rounds, rounds start 2 versions back
        base = versions[max(0, len(versions) - 3)]
        rounds = []
        for r in range(start, start + 1_000, 50):
            rounds.append((round_curvature(base, x[r : r + 50], y[r : r + 50]), base, 50))
        theta, a, b = newton_step(theta, a, b, rounds, cfg)
        versions.append(theta)
    # weights within 0.01; the bias keeps the expansion error of the first rounds (computed ~0.5 away)
    assert np.abs(theta - want)[:-1].max() < 0.02
    assert abs(theta[-1] - want[-1]) < 0.15
    # later versions move little: the steps shrink as data accumulates
    assert np.linalg.norm(versions[-1] - versions[-2]) < 0.02


def test_a_burst_of_positives_moves_newton_by_its_share():
    x, y = _data(10_000, 4)
    cfg = NewtonConfig()
    theta = np.append(np.zeros(6), -3.0)
    c = round_curvature(theta, x, y)
    theta, a, b = newton_step(theta, np.zeros((7, 7)), np.zeros(7), [(c, theta, 10_000)], cfg)
    for _ in range(3):  # settle on the data
        c = round_curvature(theta, x, y)
        theta, _, _ = newton_step(theta, np.zeros((7, 7)), np.zeros(7), [(c, theta, 10_000)], cfg)
        a, b = c.hessian, c.hessian @ theta - c.gradient
    burst = round_curvature(theta, np.abs(x[:500]) + 2.0, np.ones(500))
    after, _, _ = newton_step(theta, a, b, [(burst, theta, 500)], cfg)
    assert np.linalg.norm(after - theta) < cfg.max_step


def test_trust_region():
    x, y = _data(500, 5)
    theta = np.zeros(7)
    c = round_curvature(theta, x, y)
    capped, _, _ = newton_step(theta, np.zeros((7, 7)), np.zeros(7), [(c, theta, 500)], NewtonConfig(max_step=0.1))
    assert np.linalg.norm(capped - theta) <= 0.1 + 1e-12
    # what the cap held back is still in A and b: the uncapped optimum is unchanged
    _, a, b = newton_step(theta, np.zeros((7, 7)), np.zeros(7), [(c, theta, 500)], NewtonConfig(max_step=0.1))
    assert np.allclose(a, c.hessian) and np.allclose(b, -c.gradient)
