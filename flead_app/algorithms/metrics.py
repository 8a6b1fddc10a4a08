"""Classification and event-level metrics for held-out evaluation.

Point-wise scores treat every reading alike. NAB's labelled windows are wide, so we also count
events: a window counts as detected when at least one alarm falls inside it, and alarms
outside every window are false alarms (reported per 1,000 readings).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Scores:
    samples: int
    tp: int
    fp: int
    tn: int
    fn: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    roc_auc: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def _div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve by the rank-sum formula (ties get average ranks); None if one class."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = labels.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.shape[0], dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.shape[0]]))
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_scores(labels: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> Scores:
    labels = np.asarray(labels).astype(np.int8)
    proba = np.asarray(proba, dtype=np.float64)
    pred = (proba >= threshold).astype(np.int8)
    tp = int(((pred == 1) & (labels == 1)).sum())
    fp = int(((pred == 1) & (labels == 0)).sum())
    tn = int(((pred == 0) & (labels == 0)).sum())
    fn = int(((pred == 0) & (labels == 1)).sum())
    precision = _div(tp, tp + fp)
    recall = _div(tp, tp + fn)
    f1 = _div(2 * precision * recall, precision + recall)
    return Scores(
        samples=int(labels.shape[0]),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        accuracy=_div(tp + tn, labels.shape[0]),
        precision=precision,
        recall=recall,
        f1=f1,
        roc_auc=roc_auc(labels, proba),
    )


def label_windows(labels: np.ndarray) -> list[tuple[int, int]]:
    """Runs of label 1 as (start, end) index pairs, end exclusive."""
    labels = np.asarray(labels).astype(np.int8)
    padded = np.concatenate(([0], labels, [0]))
    edges = np.diff(padded)
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


@dataclass(frozen=True)
class EventScores:
    events: int
    detected: int
    event_recall: float
    false_alarms: int
    false_alarms_per_1000: float


def event_scores(labels: np.ndarray, alarms: np.ndarray) -> EventScores:
    """Event-level recall (an alarm inside each labelled window) and false alarms per 1,000 readings."""
    labels = np.asarray(labels).astype(np.int8)
    alarms = np.asarray(alarms).astype(bool)
    windows = label_windows(labels)
    detected = sum(1 for s, e in windows if alarms[s:e].any())
    false_alarms = int((alarms & (labels == 0)).sum())
    n = labels.shape[0]
    return EventScores(
        events=len(windows),
        detected=detected,
        event_recall=_div(detected, len(windows)),
        false_alarms=false_alarms,
        false_alarms_per_1000=_div(1000.0 * false_alarms, n),
    )
