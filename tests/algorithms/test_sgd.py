import numpy as np
import pytest

from flead_app.algorithms.sgd import LinearModel, accuracy, log_loss, predict_proba, prior_log_odds, sgd_train


def test_sgd_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int8)
    model = LinearModel.zeros(4)
    before = log_loss(y, predict_proba(model, x))
    model = sgd_train(model, x, y, learning_rate=0.05, epochs=5)
    proba = predict_proba(model, x)
    assert accuracy(y, proba) > 0.95
    assert log_loss(y, proba) < before
    assert model.weights[0] > model.weights[1] > abs(model.weights[2])


def test_one_step_matches_the_description_formula():
    model = LinearModel(np.array([0.5, -0.25]), 0.1)
    x = np.array([[2.0, 1.0]])
    y = np.array([1])
    p = 1 / (1 + np.exp(-(0.5 * 2 - 0.25 + 0.1)))
    trained = sgd_train(model, x, y, learning_rate=0.001)
    np.testing.assert_allclose(trained.weights, model.weights - 0.001 * (p - 1) * x[0])
    np.testing.assert_allclose(trained.bias, 0.1 - 0.001 * (p - 1))


def test_training_does_not_mutate_input():
    model = LinearModel.zeros(3)
    sgd_train(model, np.ones((5, 3)), np.ones(5, np.int8), 0.1)
    assert not model.weights.any()


def _reference_sgd(model, x, y, lr, epochs):
    """The description's loop, written out with numpy, one sample at a time."""
    w, b = model.weights.astype(float).copy(), float(model.bias)
    for _ in range(epochs):
        for xi, yi in zip(x, y, strict=True):
            p = 1 / (1 + np.exp(-(w @ xi + b)))
            w = w - lr * (p - yi) * xi
            b = b - lr * (p - yi)
    return w, b


def test_the_unrolled_four_feature_path_is_the_same_sgd():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 4)) * 3
    y = (rng.random(40) < 0.3).astype(np.int8)
    start = LinearModel(rng.normal(size=4), -1.5)
    for epochs in (1, 3):
        trained = sgd_train(start, x, y, learning_rate=0.03, epochs=epochs)
        w, b = _reference_sgd(start, x, y, 0.03, epochs)
        np.testing.assert_allclose(trained.weights, w, rtol=1e-12)
        assert trained.bias == pytest.approx(b, rel=1e-12)


def test_initial_model_predicts_the_prior_for_every_reading():
    model = LinearModel.initial(4, 0.04)
    assert not model.weights.any()
    np.testing.assert_allclose(predict_proba(model, np.random.default_rng(0).normal(size=(5, 4))), 0.04)
    with pytest.raises(ValueError):
        prior_log_odds(0.0)
