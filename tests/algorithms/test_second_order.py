import doctest

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flead_app.algorithms import incident_learner, second_order
from flead_app.algorithms.aggregation import federated_step
from flead_app.algorithms.incident_learner import LearnerConfig, LearnerState, initial_model, server_step, train_round
from flead_app.algorithms.second_order import (
    NewtonConfig,
    delta_step,
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
    for mod in (second_order, incident_learner):
        assert doctest.testmod(mod).failed == 0


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
    assert c.packed().shape == (7 + 28,)


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


def test_trust_region_and_memory():
    x, y = _data(500, 5)
    theta = np.zeros(7)
    c = round_curvature(theta, x, y)
    capped, _, _ = newton_step(theta, np.zeros((7, 7)), np.zeros(7), [(c, theta, 500)], NewtonConfig(max_step=0.1))
    assert np.linalg.norm(capped - theta) <= 0.1 + 1e-12
    a0 = np.eye(7) * 100.0
    _, a, b = newton_step(theta, a0, np.ones(7), [(c, theta, 500)], NewtonConfig(memory=500.0))
    assert np.allclose(a - c.hessian, a0 * np.exp(-1.0))
    assert np.allclose(b + c.gradient, np.exp(-1.0))


def test_delta_step_is_fedbuff_at_lr_1_without_momentum():
    rng = np.random.default_rng(6)
    params, bases = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    current = rng.normal(size=7)
    stale = np.array([0, 1, 2, 0, 3.0])
    want = federated_step(params, bases, current, np.ones(5), stale)
    got, v = delta_step(current, np.zeros(7), params - bases, stale)
    assert np.allclose(got, want)
    assert np.allclose(v, got - current)


def test_server_step_newton_and_fedbuff_carry_their_state():
    x, y = _data(200, 7)
    state = LearnerState(train_x=x, train_y=y)
    for server in ("newton", "fedbuff"):
        cfg = LearnerConfig(server=server, server_momentum=0.5, features="incident", threshold_rule="raw")
        g0 = initial_model(cfg)
        _, up = train_round(state, 0.0, cfg, g0)
        assert up.base_params.shape == (7,) and up.curvature.packed().shape == (35,)
        g1 = server_step(g0, [up], cfg)
        assert g1.version == 1 and np.isfinite(g1.threshold)
        if server == "newton":
            assert g1.information.shape == (7, 7) and g1.velocity is None
            assert np.allclose(g1.information, up.curvature.hessian)
        else:
            assert g1.information is None and np.allclose(g1.velocity, g1.params() - g0.params())


def test_standardised_threshold_follows_a_new_model():
    """Histograms of older versions' standardised scores still give the newest version's quantile."""
    from flead_app.algorithms.incident_learner import next_global, score_histogram, threshold_for_budget

    rng = np.random.default_rng(8)
    x = rng.exponential(size=(20_000, 6)) - 1.0
    cfg = LearnerConfig(threshold_rule="standardised", averaging=None, alarm_budget=0.01, features="incident")
    state = LearnerState(train_x=x, train_y=np.zeros(20_000, np.int8))
    g = initial_model(cfg)
    _, up = train_round(state, 0.0, cfg, g)
    assert not up.standardised  # version 0 has no moments yet: a raw histogram, not merged
    g1 = next_global(g, np.full(6, 0.2), -3.0, [up], cfg)
    assert g1.score_scale is not None and np.isinf(g1.threshold)
    _, up1 = train_round(state, 0.0, cfg, g1)
    assert up1.standardised
    # the next version has other weights; its threshold still leaves ~1% of normal scores above
    w2 = np.array([1.0, 0.0, 0.5, 0.0, 0.0, 0.3])
    g2 = next_global(g1, w2, -7.0, [up1], cfg)
    share = float(np.mean(x @ w2 - 7.0 > g2.threshold))
    assert 0.005 < share < 0.02
    # the raw rule (a quantile of g1's logits) would not: it is on g1's scale
    raw = threshold_for_budget(score_histogram(x @ np.full(6, 0.2) - 3.0), 0.01)
    assert not 0.005 < float(np.mean(x @ w2 - 7.0 > raw)) < 0.02
