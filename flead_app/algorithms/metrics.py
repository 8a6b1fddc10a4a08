"""Classification, event-level and NAB metrics for held-out evaluation, as pure numpy functions.

Point-wise scores (precision, recall, F1, ROC-AUC, PR-AUC) treat every reading alike. NAB's
labelled windows are wide, so we also count events: a window (a run of label 1) counts as
detected when at least one alarm falls inside it, and alarms outside every window are false
alarms. NAB's own score (``nab_score``) additionally rewards early detection inside a window and
charges each false alarm by how far it lies from the preceding window.

Everything here is per series (one device's readings in order); the corpus-level functions take
one ``(labels, alarms)`` pair, or one summary, per series and pool them the way NAB pools files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

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
    """Area under the ROC curve by the rank-sum formula (ties get average ranks); None if one class.

    >>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = labels.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # average ranks over ties (1-based ranks s+1 .. e of a tie group [s, e) average to (s + e + 1) / 2)
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.shape[0]]))
    ranks = np.empty(scores.shape[0], dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the precision-recall curve as average precision; None when there is no positive.

    The step-wise sum of scikit-learn's ``average_precision_score``: ``sum_k (R_k - R_{k-1}) P_k``
    over the distinct score values taken as thresholds from the highest down (a reading is an
    alarm at threshold t when its score >= t), with R_0 = 0. Tied scores enter together, so their
    order does not matter. Unlike the trapezoidal area it never interpolates optimistically
    between points, which matters when positives are rare (NAB windows are ~10% of readings).

    >>> pr_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.8333333333333333
    >>> pr_auc(np.array([0, 0]), np.array([0.1, 0.2])) is None
    True
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return None
    order = np.argsort(scores, kind="mergesort")[::-1]
    sorted_scores = scores[order]
    last_of_each_threshold = np.concatenate((np.flatnonzero(np.diff(sorted_scores)), [scores.shape[0] - 1]))
    true_positives = np.cumsum(labels[order])[last_of_each_threshold]
    precision = true_positives / (last_of_each_threshold + 1.0)
    recall = true_positives / float(n_pos)
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def classification_scores(labels: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> Scores:
    """Confusion counts, precision, recall, F1 and ROC-AUC of ``proba >= threshold`` against ``labels``.

    >>> s = classification_scores(np.array([1, 0, 1, 0]), np.array([0.9, 0.6, 0.4, 0.1]))
    >>> (s.tp, s.fp, s.fn, s.tn), s.f1, s.roc_auc
    ((1, 1, 1, 1), 0.5, 0.75)
    """
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


def _window_bounds(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and (exclusive) ends of the runs of label 1, as int64 arrays."""
    labels = np.asarray(labels).astype(np.int8)
    edges = np.diff(np.concatenate(([0], labels, [0])))
    return np.flatnonzero(edges == 1).astype(np.int64), np.flatnonzero(edges == -1).astype(np.int64)


def label_windows(labels: np.ndarray) -> list[tuple[int, int]]:
    """Runs of label 1 as (start, end) index pairs, end exclusive.

    >>> label_windows(np.array([0, 1, 1, 0, 1]))
    [(1, 3), (4, 5)]
    """
    starts, ends = _window_bounds(labels)
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def _first_alarm_in_windows(alarm_indices: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Index of the first of the sorted ``alarm_indices`` in each window [start, end), or -1."""
    k = np.searchsorted(alarm_indices, starts, side="left")
    candidate = alarm_indices[np.minimum(k, max(alarm_indices.shape[0] - 1, 0))] if alarm_indices.size else k
    inside = (k < alarm_indices.shape[0]) & (candidate < ends)
    return np.where(inside, candidate, -1).astype(np.int64)


@dataclass(frozen=True)
class EventScores:
    events: int
    detected: int
    event_recall: float
    false_alarms: int
    false_alarms_per_1000: float  # per 1,000 readings of any label (kept as stored since the first evaluations)
    false_alarms_per_1000_normal: float = 0.0  # per 1,000 normal (label 0) readings: what an operator sees


def event_scores(labels: np.ndarray, alarms: np.ndarray) -> EventScores:
    """Event-level recall (an alarm inside each labelled window) and false alarms per 1,000 readings.

    ``false_alarms_per_1000`` divides by all readings; ``false_alarms_per_1000_normal`` by the
    normal (label 0) ones only, the readings that can raise a false alarm at all.

    >>> e = event_scores(np.array([0, 1, 1, 0, 0]), np.array([0, 0, 1, 1, 0], dtype=bool))
    >>> e.detected, e.false_alarms, e.false_alarms_per_1000, round(e.false_alarms_per_1000_normal, 1)
    (1, 1, 200.0, 333.3)
    """
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
        false_alarms_per_1000_normal=_div(1000.0 * false_alarms, int((labels == 0).sum())),
    )


def detection_delays(labels: np.ndarray, alarms: np.ndarray) -> list[int]:
    """Readings from each labelled window's first reading to its first alarm (0 = on the first reading).

    Only windows with an alarm inside appear, in window order; a missed window has no delay (it
    counts against event recall instead).

    >>> detection_delays(np.array([0, 1, 1, 1, 0, 1, 1, 0]), np.array([0, 0, 0, 1, 0, 0, 0, 1], dtype=bool))
    [2]
    """
    labels = np.asarray(labels)
    alarms = np.asarray(alarms).astype(bool)
    if labels.shape != alarms.shape:
        raise ValueError(f"labels {labels.shape} and alarms {alarms.shape} differ in shape")
    starts, ends = _window_bounds(labels)
    first = _first_alarm_in_windows(np.flatnonzero(alarms), starts, ends)
    hit = first >= 0
    return (first[hit] - starts[hit]).tolist()


def delay_median(delays: Iterable[int]) -> float | None:
    """Median detection delay in readings; None when no window was detected.

    >>> delay_median([0, 4, 1]), delay_median([0, 3]), delay_median([])
    (1.0, 1.5, None)
    """
    values = np.fromiter(delays, dtype=np.float64)
    return float(np.median(values)) if values.size else None


# --- NAB's score ------------------------------------------------------------------------------
#
# Verified against numenta/NAB's code: nab/sweeper.py (Sweeper.calcSweepScore and
# calcScoreByThreshold, the scorer NAB uses since v1.0), nab/scorer.py (scoreCorpus sums the
# per-file scores), nab/runner.py (Runner.normalize), nab/util.py (getProbationPeriod),
# config/profiles.json, and NAB's tests (tests/integration/*_test.py, tests/unit/scorer_test.py).

NAB_PROBATION_PERCENT = 0.15
_NAB_PROBATION_CAP_READINGS = 5000  # NAB caps the probationary period at probationPercent * 5000 readings
_NAB_SIGMOID_STEEPNESS = 5.0
_NAB_FP_POSITION_AFTER_ONE_READING_WINDOW = 2.0


def nab_probation_length(readings: int, probation_percent: float = NAB_PROBATION_PERCENT) -> int:
    """How many leading readings of a series NAB ignores: ``min(floor(p * n), p * 5000)``.

    NAB compares ``index >= min(...)``, so a fractional cap is rounded up to whole readings.

    >>> nab_probation_length(1000), nab_probation_length(4000), nab_probation_length(22695)
    (150, 600, 750)
    """
    limit = min(math.floor(probation_percent * readings), probation_percent * _NAB_PROBATION_CAP_READINGS)
    return max(int(math.ceil(limit)), 0)


def nab_scaled_sigmoid(relative_position: float) -> float:
    """NAB's scaled sigmoid ``2 / (1 + exp(5 y)) - 1``, and exactly -1 for ``y > 3``.

    y = -1 is a window's first reading (0.98661), y -> 0 its end (0.0), y > 0 readings after it.

    >>> round(nab_scaled_sigmoid(-1.0), 5), round(nab_scaled_sigmoid(-0.5), 5), nab_scaled_sigmoid(0.0)
    (0.98661, 0.84828, 0.0)
    >>> round(nab_scaled_sigmoid(1.0), 5), nab_scaled_sigmoid(3.5)
    (-0.98661, -1.0)
    """
    if relative_position > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(_NAB_SIGMOID_STEEPNESS * relative_position)) - 1.0


def _scaled_sigmoid_array(relative_positions: np.ndarray) -> np.ndarray:
    y = np.asarray(relative_positions, dtype=np.float64)
    inner = 2.0 / (1.0 + np.exp(_NAB_SIGMOID_STEEPNESS * np.minimum(y, 3.0))) - 1.0
    return np.where(y > 3.0, -1.0, inner)


_NAB_MAX_TP = nab_scaled_sigmoid(-1.0)


@dataclass(frozen=True)
class NabProfile:
    """One of NAB's application profiles: the weights of a detected window, a false alarm, a miss.

    Weights are stored positive, as in NAB's ``config/profiles.json`` (``tpWeight``,
    ``fpWeight``, ``fnWeight``); the paper writes A_FP and A_FN as negative numbers.
    """

    nab_name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float

    def __post_init__(self) -> None:
        if not self.tp_weight > 0 or self.fp_weight < 0 or self.fn_weight < 0:
            raise ValueError(f"NAB weights must be tp > 0, fp >= 0, fn >= 0; got {self}")


NAB_PROFILES: dict[str, NabProfile] = {
    "standard": NabProfile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0),
    "low_fp": NabProfile("reward_low_FP_rate", tp_weight=1.0, fp_weight=0.22, fn_weight=1.0),
    "low_fn": NabProfile("reward_low_FN_rate", tp_weight=1.0, fp_weight=0.11, fn_weight=2.0),
}


def _profile(profile: NabProfile | str) -> NabProfile:
    if isinstance(profile, NabProfile):
        return profile
    try:
        return NAB_PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown NAB profile {profile!r}; known: {sorted(NAB_PROFILES)}") from None


@dataclass(frozen=True)
class NabWindow:
    """One labelled window of a series, as NAB's score needs it.

    ``first_detection`` counts readings from ``start`` to the first alarm NAB scores in the window
    (alarms in the probationary period are not scored), or is None when there is none.
    """

    start: int
    length: int
    first_detection: int | None


@dataclass(frozen=True)
class NabSeriesSummary:
    """Everything NAB's score needs from one series, without its readings.

    It does not depend on the profile: a site can compute it once and send it, and the
    server scores every profile from it (``nab_score_summary``, ``nab_score_from_summaries``).
    ``false_positive_sigmoid_sum`` is the sum over the scored false alarms of the scaled sigmoid
    of their position after the preceding window (each in [-1, 0)), before the FP weight.
    """

    readings: int
    probation_length: int
    windows: tuple[NabWindow, ...]
    false_positives: int
    false_positive_sigmoid_sum: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NabSeriesSummary:
        return cls(
            readings=int(data["readings"]),
            probation_length=int(data["probation_length"]),
            windows=tuple(NabWindow(**w) for w in data["windows"]),
            false_positives=int(data["false_positives"]),
            false_positive_sigmoid_sum=float(data["false_positive_sigmoid_sum"]),
        )


@dataclass(frozen=True)
class NabSeriesScore:
    """NAB's raw score of one series under one profile, with its parts.

    ``tp`` counts detected windows and ``fn`` missed ones; windows lying wholly in the
    probationary period are neither (NAB does not score them). ``fp`` counts scored false
    alarms (readings). NAB's own TP/FN columns count readings, not windows.
    ``null_score`` is what the detector that never alarms gets on this series,
    ``perfect_score`` NAB's perfect score (``tp_weight`` per window).
    """

    raw_score: float
    tp: int
    fp: int
    fn: int
    first_detections: tuple[int | None, ...]
    null_score: float
    perfect_score: float


def _check_series(labels: np.ndarray, alarms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    alarms = np.asarray(alarms).astype(bool)
    if labels.ndim != 1 or labels.shape != alarms.shape:
        raise ValueError(f"labels {labels.shape} and alarms {alarms.shape} must be 1-d of one length")
    return labels.astype(bool), alarms


def nab_summarize(
    labels: np.ndarray, alarms: np.ndarray, probation_percent: float = NAB_PROBATION_PERCENT
) -> NabSeriesSummary:
    """Summarise one series' alarms for NAB's score (the part a site can compute on its own).

    Windows are the runs of label 1 (adjacent NAB windows would merge into one run). Alarms at
    indices below ``nab_probation_length`` are ignored. Each false alarm at index i gets the
    scaled sigmoid of ``(i - e) / (w - 1)`` for the closest preceding window (last reading e,
    w readings), and -1 when no window precedes it.

    >>> s = nab_summarize(np.array([0, 0, 0, 1, 1, 1, 0, 0]), np.array([0, 0, 0, 0, 1, 0, 0, 1]), 0.0)
    >>> s.windows, s.false_positives, round(s.false_positive_sigmoid_sum, 4)
    ((NabWindow(start=3, length=3, first_detection=1),), 1, -0.9866)
    """
    labels, alarms = _check_series(labels, alarms)
    readings = labels.shape[0]
    probation = nab_probation_length(readings, probation_percent)
    scored_alarms = np.flatnonzero(alarms)
    scored_alarms = scored_alarms[scored_alarms >= probation]

    starts, ends = _window_bounds(labels)
    lengths = ends - starts
    first = _first_alarm_in_windows(scored_alarms, starts, ends)
    windows = tuple(
        NabWindow(start=int(s), length=int(w), first_detection=None if f < 0 else int(f - s))
        for s, w, f in zip(starts.tolist(), lengths.tolist(), first.tolist(), strict=True)
    )

    false_alarms = scored_alarms[~labels[scored_alarms]]
    last_readings = ends - 1
    preceding = np.searchsorted(last_readings, false_alarms, side="left") - 1
    has_preceding = preceding >= 0
    sigmoids = np.full(false_alarms.shape[0], -1.0)
    if has_preceding.any():
        window = preceding[has_preceding]
        width = lengths[window]
        distance = (false_alarms[has_preceding] - last_readings[window]).astype(np.float64)
        position = np.where(width > 1, distance / np.maximum(width - 1, 1), _NAB_FP_POSITION_AFTER_ONE_READING_WINDOW)
        sigmoids[has_preceding] = _scaled_sigmoid_array(position)
    return NabSeriesSummary(
        readings=readings,
        probation_length=probation,
        windows=windows,
        false_positives=int(false_alarms.shape[0]),
        false_positive_sigmoid_sum=float(sigmoids.sum()),
    )


def nab_score_summary(summary: NabSeriesSummary, profile: NabProfile | str) -> NabSeriesScore:
    """NAB's raw score of one summarised series under ``profile``.

    A detected window adds ``tp_weight * S(-(w - d) / w) / S(-1)`` for its first detection d
    readings after its start (so ``tp_weight`` exactly at its first reading); a missed window
    costs ``fn_weight``; false alarms add ``fp_weight`` times their summed sigmoids (negative).

    >>> s = nab_summarize(np.array([0, 0, 0, 1, 1, 1, 0, 0]), np.array([0, 0, 0, 0, 1, 0, 0, 1]), 0.0)
    >>> r = nab_score_summary(s, "standard")
    >>> round(r.raw_score, 4), r.tp, r.fp, r.fn, r.first_detections
    (0.8352, 1, 1, 0, (1,))
    """
    profile = _profile(profile)
    raw = profile.fp_weight * summary.false_positive_sigmoid_sum
    tp = fn = 0
    first_detections: list[int | None] = []
    for window in summary.windows:
        if window.start + window.length <= summary.probation_length:
            first_detections.append(None)  # wholly in the probationary period: NAB does not score it
            continue
        if window.first_detection is None:
            fn += 1
            raw -= profile.fn_weight
        else:
            tp += 1
            position = -(window.length - window.first_detection) / float(window.length)
            raw += nab_scaled_sigmoid(position) * profile.tp_weight / _NAB_MAX_TP
        first_detections.append(window.first_detection)
    return NabSeriesScore(
        raw_score=float(raw),
        tp=tp,
        fp=summary.false_positives,
        fn=fn,
        first_detections=tuple(first_detections),
        null_score=-profile.fn_weight * (tp + fn),
        perfect_score=profile.tp_weight * len(summary.windows),
    )


def nab_score_series(
    labels: np.ndarray,
    alarms: np.ndarray,
    profile: NabProfile | str,
    probation_percent: float = NAB_PROBATION_PERCENT,
) -> NabSeriesScore:
    """NAB's raw score of one series' alarms under ``profile`` (``nab_summarize`` then score).

    >>> r = nab_score_series(np.array([0, 0, 1, 1, 0]), np.array([0, 0, 1, 0, 0]), "standard", 0.0)
    >>> r.raw_score, r.tp, r.fp, r.fn, r.first_detections
    (1.0, 1, 0, 0, (0,))
    """
    return nab_score_summary(nab_summarize(labels, alarms, probation_percent), profile)


def nab_score_from_summaries(summaries: Iterable[NabSeriesSummary], profile: NabProfile | str) -> float:
    """NAB's normalised score of a corpus: ``100 * (raw - null) / (perfect - null)``.

    As NAB's ``Runner.normalize``: raw, null and perfect are each summed over the series first
    (not normalised per series); null is the detector that never alarms (``-fn_weight`` per
    scored window) and perfect is ``tp_weight`` per labelled window, every window counted, also
    one lying in the probationary period. So 0 is the null detector, 100 a detector alarming on
    the first reading of every window, and there is no lower bound. Raises ValueError when the
    corpus has no labelled window (NAB would divide by zero).

    >>> labels = np.array([0, 0, 1, 1, 0, 0])
    >>> s = nab_summarize(labels, np.array([0, 0, 0, 1, 0, 0]), 0.0)
    >>> round(nab_score_from_summaries([s], "standard"), 2)
    92.99
    """
    profile = _profile(profile)
    raw = null = perfect = 0.0
    for summary in summaries:
        scored = nab_score_summary(summary, profile)
        raw += scored.raw_score
        null += scored.null_score
        perfect += scored.perfect_score
    if perfect == 0.0:
        raise ValueError("NAB's score needs at least one labelled window in the corpus")
    return float(100.0 * (raw - null) / (perfect - null))


def nab_score(
    series: Iterable[tuple[np.ndarray, np.ndarray]],
    profile: NabProfile | str,
    probation_percent: float = NAB_PROBATION_PERCENT,
) -> float:
    """NAB's normalised score of per-series ``(labels, alarms)`` pairs under ``profile``.

    Alarms are detections (NAB thresholds an anomaly score into them; we pass them directly).
    Rules verified in numenta/NAB's code (nab/sweeper.py, nab/scorer.py, nab/runner.py,
    nab/util.py, config/profiles.json), which we follow where its paper (Lavin & Ahmad 2015,
    "Evaluating Real-time Anomaly Detection Algorithms") differs:

    * Only the first scored detection in a window counts (the code takes the maximum of the
      in-window scores, which is the earliest one since the sigmoid falls through the window).
      Its relative position is ``-(e - i + 1) / w`` for reading i of a window with last reading e
      and w readings: -1 on the first reading, -1/w on the last; the code never reaches the
      paper's 0 at the window's end (NAB issues #258 and PR #328 note it).
    * The scaled sigmoid is ``2 / (1 + exp(5 y)) - 1`` and -1 beyond y = 3; the paper writes
      ``(A_TP - A_FP) / (1 + exp(5 y)) - 1`` (NAB issues #404, #405). The code then multiplies a
      true positive by ``tp_weight / S(-1)`` (a detection on a window's first reading is worth
      exactly ``tp_weight``, NAB issue #83) and a false alarm by ``fp_weight`` without that
      division.
    * A false alarm after a window is placed at ``(i - e) / (w - 1)``, dividing by one reading
      less than inside the window; one before every window, or with y > 3, costs the whole
      ``fp_weight``. After a one-reading window NAB's current code divides by zero; we use the
      position 2.0 its earlier scorer (nab/scorer.py, ``Scorer.getScore``) used for that case.
    * Probation: alarms at indices below ``min(floor(0.15 n), 0.15 * 5000)`` are ignored (the
      paper says 15% of each file; the code caps it at 750 readings), and a window lying
      wholly in it is not scored at all, while it still counts in the perfect score.
    * Normalisation sums raw, null and perfect over the corpus before dividing, and perfect is
      ``tp_weight`` per window, as in ``Runner.normalize``.

    >>> labels = np.array([0, 0, 1, 1, 0, 0])
    >>> nab_score([(labels, labels.astype(bool))], "standard", probation_percent=0.0)
    100.0
    >>> nab_score([(labels, np.zeros(6, dtype=bool))], "low_fn", probation_percent=0.0)
    0.0
    """
    summaries = [nab_summarize(labels, alarms, probation_percent) for labels, alarms in series]
    return nab_score_from_summaries(summaries, profile)


# --- baselines and the report -----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RandomAlarmBaseline:
    """Alarms drawn independently with probability ``rate`` per reading, and what to expect of them.

    ``expected_event_recall`` is the analytic mean over windows of ``1 - (1 - rate) ** length``
    (None without windows); ``event_recall`` is what the drawn alarms achieved.
    """

    rate: float
    alarms: tuple[np.ndarray, ...]
    expected_event_recall: float | None
    event_recall: float


def random_alarm_baseline(
    labels_per_series: Sequence[np.ndarray], rate: float, seed: int | None = 0
) -> RandomAlarmBaseline:
    """The "random alarms at the same false-alarm rate" baseline, seeded and per series.

    Pass a model's false alarms per normal reading (``false_alarms_per_1000 / 1000`` of its
    ``ModelMetrics``) as ``rate``: a model earns its event recall only beyond what this gets.

    >>> b = random_alarm_baseline([np.array([0, 1, 1, 0]), np.array([0, 0, 0, 1])], rate=0.5, seed=1)
    >>> b.expected_event_recall, [a.shape for a in b.alarms]
    (0.625, [(4,), (4,)])
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a probability, got {rate}")
    rng = np.random.default_rng(seed)
    alarms = tuple(rng.random(np.asarray(labels).shape[0]) < rate for labels in labels_per_series)
    lengths = np.concatenate([ends - starts for starts, ends in map(_window_bounds, labels_per_series)] or [[]])
    expected = float(np.mean(1.0 - (1.0 - rate) ** lengths)) if lengths.size else None
    detected = sum(len(detection_delays(labels, a)) for labels, a in zip(labels_per_series, alarms, strict=True))
    return RandomAlarmBaseline(
        rate=rate, alarms=alarms, expected_event_recall=expected, event_recall=_div(detected, lengths.size)
    )


@dataclass(frozen=True)
class ModelMetrics:
    """Every metric the product reports for one model on one split, pooled over series (devices).

    Point-wise figures pool all readings; ``roc_auc``/``pr_auc`` rank the scores, the others use
    the alarms. ``event_recall`` is detected windows over all windows; ``false_alarms_per_1000``
    counts alarms on normal (label 0) readings per 1,000 normal readings (``EventScores`` and
    the Spark evaluation divide by all readings instead); ``delay_median`` is in readings.
    NAB scores are None when no series has a labelled window.
    """

    f1: float
    precision: float
    recall: float
    roc_auc: float | None
    pr_auc: float | None
    event_recall: float
    false_alarms_per_1000: float
    delay_median: float | None
    nab_standard: float | None
    nab_low_fp: float | None
    nab_low_fn: float | None
    #: samples, tp, fp, fn, tn, windows, detected: what the figures were computed from
    counts: Mapping[str, int] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, float | None]:
        """The eleven reported metrics (not the counts), under their reporting names."""
        return {k: v for k, v in asdict(self).items() if k != "counts"}


def model_metrics(
    labels_per_series: Sequence[np.ndarray],
    scores_per_series: Sequence[np.ndarray],
    alarms_per_series: Sequence[np.ndarray],
    probation_percent: float = NAB_PROBATION_PERCENT,
) -> ModelMetrics:
    """Compute ``ModelMetrics`` from per-series labels, scores (or probabilities) and alarms.

    >>> labels = [np.array([0, 0, 1, 1, 0, 0]), np.array([0, 1, 1, 0])]
    >>> scores = [np.array([0.1, 0.2, 0.9, 0.7, 0.3, 0.1]), np.array([0.2, 0.4, 0.8, 0.1])]
    >>> alarms = [s >= 0.5 for s in scores]
    >>> m = model_metrics(labels, scores, alarms, probation_percent=0.0)
    >>> m.recall, m.event_recall, m.false_alarms_per_1000, m.delay_median, m.roc_auc
    (0.75, 1.0, 0.0, 0.5, 1.0)
    >>> sorted(m.to_dict())[:3]
    ['delay_median', 'event_recall', 'f1']
    """
    summary = summarize_metrics(labels_per_series, scores_per_series, alarms_per_series, probation_percent)
    labels = np.concatenate([np.asarray(lab).astype(bool) for lab in labels_per_series] or [np.zeros(0, dtype=bool)])
    scores = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores_per_series] or [np.zeros(0)])
    # every figure but the two areas is a sum over series (the summary's); the areas rank the exact scores
    return replace(metrics_from_summary(summary), roc_auc=roc_auc(labels, scores), pr_auc=pr_auc(labels, scores))


# --- federated evaluation: what a site sends instead of its readings ---------------------------
#
# Every metric above is a function of additive parts: confusion counts, the windows and their
# detection delays, NAB's per-series summaries, and, for ROC-AUC and PR-AUC, the scores of the
# positives and of the negatives. A site summarises its own held-out readings
# (``summarize_metrics``), the summaries of all sites merge (``MetricsSummary.merge``), and
# ``metrics_from_summary`` gives the fleet's ``ModelMetrics``: the counts, event recall, false
# alarms, delays and NAB scores exactly as ``model_metrics`` on the pooled readings, the two areas
# from score histograms (``SCORE_BINS`` bins of x / (1 + |x|), fine near 0 and coarse in the
# tails: readings in one bin count as tied), which is the only thing a site's summary cannot
# carry exactly without carrying every score.

SCORE_BINS = 4096


def score_bins(scores: np.ndarray) -> np.ndarray:
    """The histogram bin of each score: ``SCORE_BINS`` equal bins of x / (1 + |x|) over (-1, 1)
    (NaN and -inf in the first, +inf in the last). Monotone, so ranks survive up to ties.

    >>> score_bins(np.array([-np.inf, -1.0, 0.0, 0.001, 1.0, 1e9])).tolist()
    [0, 1024, 2048, 2050, 3072, 4095]
    """
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    with np.errstate(invalid="ignore"):
        squashed = np.where(np.isfinite(s), s / (1.0 + np.abs(s)), np.sign(s))
    return np.clip(np.floor((squashed + 1.0) / 2.0 * SCORE_BINS), 0, SCORE_BINS - 1).astype(np.int64)


def _histogram(bins: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(bins, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def _add(a: Mapping[int, int], b: Mapping[int, int]) -> dict[int, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


@dataclass(frozen=True)
class MetricsSummary:
    """One model's evaluation of some series (one site's held-out readings), without the readings.

    >>> labels, scores = [np.array([0, 1, 1, 0])], [np.array([0.1, 0.9, 0.4, 0.2])]
    >>> a = summarize_metrics(labels, scores, [s >= 0.5 for s in scores], 0.0)
    >>> (a.tp, a.fn, a.windows, a.delays), MetricsSummary.from_dict(a.to_dict()) == a
    ((1, 1, 1, (0,)), True)
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    windows: int = 0
    delays: tuple[int, ...] = ()
    nab: tuple[NabSeriesSummary, ...] = ()
    positive_bins: Mapping[int, int] = field(default_factory=dict)  # score histogram of label-1 readings
    negative_bins: Mapping[int, int] = field(default_factory=dict)  # ... of label-0 readings

    def merge(self, other: MetricsSummary) -> MetricsSummary:
        """The summary of both parts' series together (associative and commutative)."""
        return MetricsSummary(
            tp=self.tp + other.tp, fp=self.fp + other.fp, fn=self.fn + other.fn, tn=self.tn + other.tn,
            windows=self.windows + other.windows, delays=tuple(sorted((*self.delays, *other.delays))),
            nab=(*self.nab, *other.nab),
            positive_bins=_add(self.positive_bins, other.positive_bins),
            negative_bins=_add(self.negative_bins, other.negative_bins),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (histogram keys as strings)."""
        d = asdict(self)
        d["positive_bins"] = {str(k): v for k, v in self.positive_bins.items()}
        d["negative_bins"] = {str(k): v for k, v in self.negative_bins.items()}
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricsSummary:
        return cls(
            **{k: int(data[k]) for k in ("tp", "fp", "fn", "tn", "windows")},
            delays=tuple(int(d) for d in data["delays"]),
            nab=tuple(NabSeriesSummary.from_dict(s) for s in data["nab"]),
            positive_bins={int(k): int(v) for k, v in data["positive_bins"].items()},
            negative_bins={int(k): int(v) for k, v in data["negative_bins"].items()},
        )


def summarize_metrics(
    labels_per_series: Sequence[np.ndarray],
    scores_per_series: Sequence[np.ndarray],
    alarms_per_series: Sequence[np.ndarray],
    probation_percent: float = NAB_PROBATION_PERCENT,
) -> MetricsSummary:
    """The ``MetricsSummary`` of these series (the arguments of ``model_metrics``).

    >>> s = summarize_metrics([np.array([0, 0, 1, 1, 0])], [np.array([0.1, 0.3, 0.2, 0.9, 0.1])],
    ...                       [np.array([0, 0, 0, 1, 0], dtype=bool)], probation_percent=0.0)
    >>> (s.tp, s.fp, s.fn, s.tn), s.delays, s.nab[0].windows[0].first_detection, sum(s.negative_bins.values())
    ((1, 0, 1, 3), (1,), 1, 3)
    """
    if not len(labels_per_series) == len(scores_per_series) == len(alarms_per_series):
        raise ValueError("one labels, scores and alarms array per series")
    checked, bins = [], []
    for lab, sc, al in zip(labels_per_series, scores_per_series, alarms_per_series, strict=True):
        labels, alarms = _check_series(lab, al)
        bins.append(score_bins(sc))
        if bins[-1].shape != labels.shape:
            raise ValueError(f"scores {bins[-1].shape} and labels {labels.shape} differ in shape")
        checked.append((labels, alarms))
    labels = np.concatenate([lab for lab, _ in checked] or [np.zeros(0, dtype=bool)])
    alarms = np.concatenate([al for _, al in checked] or [np.zeros(0, dtype=bool)])
    every_bin = np.concatenate(bins or [np.zeros(0, dtype=np.int64)])
    return MetricsSummary(
        tp=int((alarms & labels).sum()), fp=int((alarms & ~labels).sum()),
        fn=int((~alarms & labels).sum()), tn=int((~alarms & ~labels).sum()),
        windows=sum(int(_window_bounds(lab)[0].shape[0]) for lab, _ in checked),
        delays=tuple(sorted(d for lab, al in checked for d in detection_delays(lab, al))),
        nab=tuple(nab_summarize(lab, al, probation_percent) for lab, al in checked),
        positive_bins=_histogram(every_bin[labels]), negative_bins=_histogram(every_bin[~labels]),
    )  # fmt: skip


def _binned_areas(positive: Mapping[int, int], negative: Mapping[int, int]) -> tuple[float | None, float | None]:
    """ROC-AUC (rank sum, a bin's readings tied) and PR-AUC (average precision, each bin one
    threshold) from the two score histograms."""
    keys = sorted(set(positive) | set(negative))
    pos = np.array([positive.get(k, 0) for k in keys], dtype=np.float64)
    neg = np.array([negative.get(k, 0) for k in keys], dtype=np.float64)
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    roc = None
    if n_pos and n_neg:
        below = np.cumsum(neg) - neg
        roc = float(np.sum(pos * (below + 0.5 * neg)) / (n_pos * n_neg))
    pr = None
    if n_pos:
        tp, alarms = np.cumsum(pos[::-1]), np.cumsum((pos + neg)[::-1])
        pr = float(np.sum(np.diff(tp / n_pos, prepend=0.0) * tp / alarms))
    return roc, pr


def metrics_from_summary(summary: MetricsSummary) -> ModelMetrics:
    """``ModelMetrics`` of the summarised series: as ``model_metrics`` on their readings, the
    areas from the histograms.

    >>> labels = [np.array([0, 0, 1, 1, 0, 0]), np.array([0, 1, 1, 0])]
    >>> scores = [np.array([0.1, 0.2, 0.9, 0.7, 0.3, 0.1]), np.array([0.2, 0.4, 0.8, 0.1])]
    >>> alarms = [s >= 0.5 for s in scores]
    >>> parts = [summarize_metrics(labels[i:i + 1], scores[i:i + 1], alarms[i:i + 1], 0.0) for i in (0, 1)]
    >>> m = metrics_from_summary(parts[0].merge(parts[1]))
    >>> m == model_metrics(labels, scores, alarms, probation_percent=0.0)
    True
    """
    s = summary
    precision, recall = _div(s.tp, s.tp + s.fp), _div(s.tp, s.tp + s.fn)
    roc, pr = _binned_areas(s.positive_bins, s.negative_bins)
    nab = {key: nab_score_from_summaries(s.nab, p) if s.windows else None for key, p in NAB_PROFILES.items()}
    return ModelMetrics(
        f1=_div(2 * precision * recall, precision + recall), precision=precision, recall=recall,
        roc_auc=roc, pr_auc=pr, event_recall=_div(len(s.delays), s.windows),
        false_alarms_per_1000=_div(1000.0 * s.fp, s.fp + s.tn), delay_median=delay_median(s.delays),
        nab_standard=nab["standard"], nab_low_fp=nab["low_fp"], nab_low_fn=nab["low_fn"],
        counts={"samples": s.tp + s.fp + s.fn + s.tn, "tp": s.tp, "fp": s.fp, "fn": s.fn, "tn": s.tn,
                "windows": s.windows, "detected": len(s.delays)},
    )  # fmt: skip
