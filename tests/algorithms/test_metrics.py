import time

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from flead_app.algorithms.metrics import (
    classification_scores,
    delay_median,
    detection_delays,
    event_scores,
    label_windows,
    model_metrics,
    nab_score,
    pr_auc,
    random_alarm_baseline,
    roc_auc,
)


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


# --- pr_auc and roc_auc against scikit-learn --------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_pr_auc_and_roc_auc_agree_with_scikit_learn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    y = (rng.random(n) < rng.uniform(0.02, 0.6)).astype(int)
    y[0], y[-1] = 1, 0  # both classes
    p = y * rng.uniform(0, 0.5) + rng.random(n)
    if seed % 2:
        p = np.round(p, 1)  # many ties
    assert pr_auc(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_pr_auc_edge_cases():
    assert pr_auc(np.array([0, 0, 0]), np.array([0.1, 0.5, 0.9])) is None
    assert pr_auc(np.array([1, 1]), np.array([0.3, 0.1])) == 1.0
    # all scores tied: one threshold, precision = prevalence
    assert pr_auc(np.array([1, 0, 0, 0]), np.full(4, 0.5)) == pytest.approx(0.25)
    # by hand: scores 0.8(+) 0.4(-) 0.35(+) 0.1(-): R/P steps (0.5, 1), (0.5, 1/2), (1, 2/3)
    # AP = 0.5 * 1 + 0 * 0.5 + 0.5 * 2/3 = 0.8333
    assert pr_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(5 / 6)


# --- delays and event scores ------------------------------------------------------------------


def test_detection_delays_count_readings_from_each_window_start_to_its_first_alarm():
    labels = np.array([0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1])
    alarms = np.zeros(12, dtype=bool)
    alarms[[0, 1, 2, 10, 11]] = True  # window [1, 4): alarm on its first reading; [5, 7): none; [8, 12): third
    assert detection_delays(labels, alarms) == [0, 2]
    assert detection_delays(labels, np.zeros(12, dtype=bool)) == []
    assert delay_median([0, 2]) == 1.0 and delay_median([]) is None
    with pytest.raises(ValueError):
        detection_delays(labels, alarms[:5])


def test_false_alarms_per_1000_normal_readings_beside_the_old_per_all_readings_figure():
    labels = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 0])
    alarms = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    e = event_scores(labels, alarms)
    assert e.false_alarms_per_1000 == pytest.approx(200.0)  # 2 of 10 readings
    assert e.false_alarms_per_1000_normal == pytest.approx(400.0)  # 2 of 5 normal readings


# --- the random-alarm baseline ------------------------------------------------------------------


def test_random_alarm_baseline_is_seeded_and_matches_its_analytic_event_recall():
    labels = [np.zeros(2000, dtype=np.int8) for _ in range(3)]
    for k, lab in enumerate(labels):
        for start in range(100, 1900, 150):
            lab[start : start + 5 + k] = 1  # windows of 5, 6 and 7 readings
    a = random_alarm_baseline(labels, rate=0.05, seed=3)
    b = random_alarm_baseline(labels, rate=0.05, seed=3)
    assert all((x == y).all() for x, y in zip(a.alarms, b.alarms, strict=True))
    assert [x.shape for x in a.alarms] == [(2000,)] * 3
    expected = np.mean([1 - 0.95**5, 1 - 0.95**6, 1 - 0.95**7])
    assert a.expected_event_recall == pytest.approx(expected)
    # 36 windows: the drawn recall is within a few standard errors of the expectation (~0.28)
    assert abs(a.event_recall - expected) < 3 * np.sqrt(expected * (1 - expected) / 36)
    overall = np.concatenate(a.alarms).mean()
    assert overall == pytest.approx(0.05, abs=0.01)


def test_random_alarm_baseline_extremes():
    labels = [np.array([0, 1, 1, 0])]
    assert random_alarm_baseline(labels, 0.0).event_recall == 0.0
    full = random_alarm_baseline(labels, 1.0)
    assert full.event_recall == 1.0 and full.expected_event_recall == 1.0 and full.alarms[0].all()
    assert random_alarm_baseline([np.zeros(4)], 0.5).expected_event_recall is None
    with pytest.raises(ValueError):
        random_alarm_baseline(labels, 1.5)


# --- one result per model and split -------------------------------------------------------------

REPORT_KEYS = [
    "f1",
    "precision",
    "recall",
    "roc_auc",
    "pr_auc",
    "event_recall",
    "false_alarms_per_1000",
    "delay_median",
    "nab_standard",
    "nab_low_fp",
    "nab_low_fn",
]


def test_model_metrics_worked_example():
    # device A: 10 readings, window [2, 5); alarms at 3 (delay 1) and 8 (false)
    # device B: 6 readings, window [4, 6) missed; no false alarm
    labels = [np.array([0, 0, 1, 1, 1, 0, 0, 0, 0, 0]), np.array([0, 0, 0, 0, 1, 1])]
    scores = [np.array([0.1, 0.2, 0.4, 0.9, 0.3, 0.1, 0.2, 0.1, 0.8, 0.1]), np.array([0.1, 0.2, 0.1, 0.3, 0.4, 0.2])]
    alarms = [s >= 0.5 for s in scores]
    m = model_metrics(labels, scores, alarms, probation_percent=0.0)
    # point-wise pooled: tp 1, fp 1, fn 4 -> precision 0.5, recall 0.2, f1 2/7
    assert (m.precision, m.recall) == (0.5, 0.2)
    assert m.f1 == pytest.approx(2 / 7)
    assert m.event_recall == 0.5  # 1 of 2 windows
    assert m.false_alarms_per_1000 == pytest.approx(1000 / 11)  # 1 false alarm, 7 + 4 normal readings
    assert m.delay_median == 1.0
    pooled_y, pooled_p = np.concatenate(labels), np.concatenate(scores)
    assert m.roc_auc == pytest.approx(roc_auc_score(pooled_y, pooled_p))
    assert m.pr_auc == pytest.approx(average_precision_score(pooled_y, pooled_p))
    # NAB: A's window w = 3, detection at offset 1: y = -2/3 -> 0.943742; FP at 8 after last reading 4:
    # y = 4 / 2 = 2 -> S(2) = -0.999909; B's window missed: -fn
    series = list(zip(labels, alarms, strict=True))
    assert m.nab_standard == nab_score(series, "standard", 0.0)
    assert m.nab_low_fp == nab_score(series, "low_fp", 0.0)
    assert m.nab_low_fn == nab_score(series, "low_fn", 0.0)
    raw_standard = 0.9437422611978669 + 0.11 * (2 / (1 + np.exp(10)) - 1) - 1.0
    assert m.nab_standard == pytest.approx(100 * (raw_standard + 2) / (2 + 2), abs=1e-12)
    assert list(m.to_dict()) == REPORT_KEYS


def test_model_metrics_without_windows_or_alarms():
    labels, scores = [np.zeros(5, dtype=np.int8)], [np.linspace(0, 1, 5)]
    m = model_metrics(labels, scores, [np.zeros(5, dtype=bool)])
    assert m.roc_auc is None and m.pr_auc is None and m.delay_median is None
    assert (m.nab_standard, m.nab_low_fp, m.nab_low_fn) == (None, None, None)
    assert m.false_alarms_per_1000 == 0.0 and m.event_recall == 0.0
    with pytest.raises(ValueError):
        model_metrics(labels, scores, [])


def test_model_metrics_scores_the_product_corpus_size_well_under_a_second():
    # 321,206 readings in 47 series, 3 windows each
    rng = np.random.default_rng(0)
    sizes = rng.multinomial(321_206 - 47 * 400, np.ones(47) / 47) + 400
    labels, scores = [], []
    for n in sizes:
        lab = np.zeros(n, dtype=np.int8)
        for start in rng.integers(0, n - 200, 3):
            lab[start : start + rng.integers(50, 200)] = 1
        labels.append(lab)
        scores.append(np.clip(lab * 0.3 + rng.random(n) * 0.7, 0, 1))
    alarms = [s >= 0.5 for s in scores]
    assert sum(sizes) == 321_206
    best = min(_timed(lambda: model_metrics(labels, scores, alarms)) for _ in range(3))
    assert best < 1.0


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
