"""Federated evaluation's core: sites' metric summaries merge into the fleet's metrics, equal to
the metrics of the pooled readings (the areas up to the score histogram's resolution)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flead_app.algorithms.metrics import (
    MetricsSummary,
    metrics_from_summary,
    model_metrics,
    score_bins,
    summarize_metrics,
)

EXACT = ("f1", "precision", "recall", "event_recall", "false_alarms_per_1000", "delay_median",
         "nab_standard", "nab_low_fp", "nab_low_fn")  # fmt: skip


def _series(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.zeros(n, dtype=np.int8)
    for _ in range(rng.integers(0, 4)):  # a few labelled windows
        start = int(rng.integers(0, n))
        labels[start : start + int(rng.integers(1, max(2, n // 4)))] = 1
    scores = rng.normal(size=n) + 1.5 * labels
    return labels, scores, scores > 1.8


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), devices=st.integers(1, 12), sites=st.integers(1, 4))
def test_merged_site_summaries_give_the_pooled_metrics(seed, devices, sites):
    rng = np.random.default_rng(seed)
    series = [_series(rng, int(rng.integers(20, 400))) for _ in range(devices)]
    site_of = rng.integers(0, sites, size=devices)
    parts = [
        summarize_metrics(*zip(*[series[d] for d in np.flatnonzero(site_of == k)], strict=True), probation_percent=0.1)
        for k in range(sites) if (site_of == k).any()
    ]  # fmt: skip
    merged = MetricsSummary.from_dict(parts[0].to_dict())  # through the wire format, as it would travel
    for part in parts[1:]:
        merged = merged.merge(MetricsSummary.from_dict(part.to_dict()))
    federated = metrics_from_summary(merged)
    labels, scores, alarms = zip(*series, strict=True)
    central = model_metrics(labels, scores, alarms, probation_percent=0.1)
    for name in EXACT:
        a, b = getattr(federated, name), getattr(central, name)
        assert (a is None and b is None) or abs(a - b) < 1e-9, name
    assert federated.counts == central.counts
    for name in ("roc_auc", "pr_auc"):
        a, b = getattr(federated, name), getattr(central, name)
        assert (a is None and b is None) or abs(a - b) < 0.01, (name, a, b)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_merging_is_associative_and_commutative(seed):
    rng = np.random.default_rng(seed)
    a, b, c = (summarize_metrics(*zip(_series(rng, 50), strict=True), probation_percent=0.0) for _ in range(3))
    left, right = a.merge(b).merge(c), c.merge(a.merge(b))
    assert (left.tp, left.fp, left.fn, left.tn, left.delays) == (right.tp, right.fp, right.fn, right.tn, right.delays)
    assert (left.positive_bins, left.negative_bins) == (right.positive_bins, right.negative_bins)
    ml, mr = metrics_from_summary(left).to_dict(), metrics_from_summary(right).to_dict()
    for name, value in ml.items():  # NAB sums its series in another order: equal up to rounding
        assert (value is None and mr[name] is None) or abs(value - mr[name]) < 1e-9, name


def test_score_bins_keep_the_order_of_the_scores():
    scores = np.sort(np.random.default_rng(0).normal(scale=10.0, size=2000))
    assert np.all(np.diff(score_bins(scores)) >= 0)


def test_the_areas_are_exact_when_no_two_readings_share_a_bin():
    labels = [np.array([0, 0, 1, 1, 0, 1, 0, 0])]
    scores = [np.array([-3.0, -1.0, 2.0, 0.5, 0.0, 8.0, 1.0, -0.5])]
    summary = summarize_metrics(labels, scores, [s > 1.5 for s in scores], 0.0)
    assert metrics_from_summary(summary) == model_metrics(labels, scores, [s > 1.5 for s in scores], 0.0)
