import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from flead_app.algorithms.metrics import classification_scores, event_scores, label_windows, roc_auc


def test_scores_agree_with_scikit_learn():
    rng = np.random.default_rng(1)
    y = (rng.random(500) < 0.2).astype(int)
    p = np.clip(y * 0.4 + rng.random(500) * 0.7, 0, 1)
    s = classification_scores(y, p)
    pred = (p >= 0.5).astype(int)
    assert s.precision == pytest.approx(precision_score(y, pred))
    assert s.recall == pytest.approx(recall_score(y, pred))
    assert s.f1 == pytest.approx(f1_score(y, pred))
    assert s.roc_auc == pytest.approx(roc_auc_score(y, p))
    assert s.tp + s.fp + s.tn + s.fn == 500


def test_roc_auc_with_ties_and_single_class():
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)
    assert roc_auc(np.array([1, 1]), np.array([0.1, 0.2])) is None


def test_event_level_recall_and_false_alarms():
    labels = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 0])
    alarms = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    assert label_windows(labels) == [(1, 4), (6, 8)]
    e = event_scores(labels, alarms)
    assert e.events == 2 and e.detected == 1 and e.event_recall == 0.5
    assert e.false_alarms == 2 and e.false_alarms_per_1000 == pytest.approx(200.0)
