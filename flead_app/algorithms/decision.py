"""How a model's scores become alarms: standardised scores, a threshold at a budget, a refractory period.

One rule for every model the product has or compares (the devices' global model, each device's
local-only model, the central baseline of the evaluation):

1. **Standardised score.** A linear model's logit w . x + b is standardised by the mean
   ``loc`` and standard deviation ``scale`` of the same model's logits on *normal* readings:
   s = (logit - loc) / scale. Both come from the moments of the normal features (count, sum,
   sum of outer products: ``moments_of``, ``merge_moments``, ``score_location_scale``), so any
   weights can be standardised without rescoring the readings. Standardised scores of older
   model versions tell the newest version's quantile (its scores are on the same scale), which
   is what lets the FedAvg server keep a long window of them.
2. **Threshold at a budget.** The threshold is the standardised score that a share ``budget``
   (``FLEAD_ALARM_BUDGET``, 1%) of normal readings exceed, read from a histogram of standardised
   normal scores in the fixed bins ``SCORE_EDGES`` (``threshold_for_budget``). Devices report
   such histograms with their updates and the server merges them over a window of
   ``tail_readings / budget`` normal readings (``merge_histograms``: ~1,000 normal readings above
   the threshold, a relative error of the tail share of ~3%). The threshold is a quantile of
   normal scores, so class imbalance needs no loss weights: only the ranking matters.
3. **Each device's own share of the budget** (``FLEAD_THRESHOLD_SCOPE=device``, the default). A
   fleet threshold is a quantile of the normal scores of whichever devices reported most: a device
   whose normal scores run higher than the fleet's alarms far above the budget, one whose run lower
   hardly ever. Each device therefore moves the fleet threshold toward the budget quantile of its
   own scores as they accumulate (``device_threshold``: a weighted mean, the fleet's threshold
   weighing as much as ``DEVICE_PRIOR_TAIL_READINGS / budget`` readings of the device's own), the
   per-series calibration NAB's best detectors make of their raw scores (Numenta's anomaly
   likelihood). A new device starts at the fleet threshold; one with ten times the prior's
   readings of its own is almost on its own quantile. ``device_thresholds`` replays the same rule
   over a device's scores for the evaluation.
4. **Refractory period.** After an alarm a device raises no other for ``refractory`` readings
   (``FLEAD_REFRACTORY``, 100): an incident raises one alarm (NAB counts the first detection in a
   window, and every detection outside one is a false positive).

``ScoreRule`` is the rule as one object; ``central_rule`` (a model trained centrally, from its
normal training features) and ``ScoreRule.published`` (a global version's published fields) make
the evaluation judge every model by it.

>>> rng = np.random.default_rng(0)
>>> normal = rng.normal(size=(20_000, 2))
>>> rule = central_rule(np.array([1.0, 1.0]), -3.0, normal, budget=0.01, refractory=5)
>>> round(float((rule.standardised(normal) > rule.threshold).mean()), 3)
0.01
>>> rule.alarms(np.array([[9.0, 9.0]] * 7)).tolist()  # one alarm, then five quiet readings
[True, False, False, False, False, True, False]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from flead_app.algorithms.second_order import upper_indices

#: fixed bins of the standardised-score histograms every device and the server share
SCORE_EDGES = np.linspace(-12.0, 12.0, 481)
NUM_SCORE_BINS = SCORE_EDGES.shape[0] - 1
#: a threshold rests on this many normal readings above it (``FLEAD_THRESHOLD_TAIL_READINGS``)
TAIL_READINGS = 1000.0
#: the fleet threshold counts in a device's own threshold as this many of its own readings above it
#: would: the weight of ``DEVICE_PRIOR_TAIL_READINGS / budget`` readings (1,000 at 1%), fixed a
#: priori (ten readings above the threshold: a quantile estimate of ~30% relative error on its own)
DEVICE_PRIOR_TAIL_READINGS = 10.0
#: the standard deviation of normal scores is floored here (a model with zero weights has none)
MIN_SCALE = 1e-3
#: readings since the last alarm of a device that never alarmed
NEVER = 1 << 30


def score_histogram(scores: np.ndarray) -> np.ndarray:
    """Counts of ``scores`` in the fixed ``SCORE_EDGES`` bins (values outside go to the end bins).

    >>> h = score_histogram(np.array([-100.0, 0.0, 0.01, 100.0]))
    >>> int(h.sum()), int(h[0]), int(h[-1])
    (4, 1, 1)
    """
    idx = np.clip(np.searchsorted(SCORE_EDGES, np.asarray(scores, dtype=np.float64), side="right") - 1,
                  0, NUM_SCORE_BINS - 1)  # fmt: skip
    return np.bincount(idx, minlength=NUM_SCORE_BINS).astype(np.float64)


def sparse_histogram(counts: np.ndarray) -> dict[int, float]:
    """The non-empty bins of a histogram: what travels (a round of 50 readings fills ~10-30 bins).

    >>> sparse_histogram(score_histogram(np.array([0.0, 0.01, 1.0])))
    {240: 2.0, 260: 1.0}
    """
    h = np.asarray(counts, dtype=np.float64)
    return {int(i): float(h[i]) for i in np.flatnonzero(h)}


def dense_histogram(bins: Mapping[int | str, float]) -> np.ndarray:
    """The histogram of ``sparse_histogram``'s output (keys may be strings, as JSON has them).

    >>> dense_histogram({"240": 2, 260: 1})[[240, 260]].tolist()
    [2.0, 1.0]
    """
    h = np.zeros(NUM_SCORE_BINS)
    for k, v in bins.items():
        h[int(k)] += float(v)
    return h


def threshold_for_budget(histogram: np.ndarray, budget: float) -> float:
    """The score above which a share ``budget`` of the histogram lies (linear within a bin).

    ``inf`` for an empty histogram (no alarm until normal scores are known).

    >>> h = score_histogram(np.linspace(-5, 5, 10_001))
    >>> round(threshold_for_budget(h, 0.1), 2)
    4.0
    """
    h = np.asarray(histogram, dtype=np.float64)
    total = h.sum()
    if total <= 0:
        return math.inf
    above = np.concatenate((np.cumsum(h[::-1])[::-1], [0.0]))  # mass at or above each edge
    target = budget * total
    j = int(np.searchsorted(-above, -target, side="left"))  # first edge with mass above <= target
    if j <= 0:
        return float(SCORE_EDGES[0])
    if j >= above.shape[0]:
        return float(SCORE_EDGES[-1])
    hi, lo = above[j - 1], above[j]  # between edge j-1 (mass above > target) and edge j (<= target)
    frac = (hi - target) / (hi - lo) if hi > lo else 1.0
    return float(SCORE_EDGES[j - 1] + frac * (SCORE_EDGES[j] - SCORE_EDGES[j - 1]))


def histogram_window(budget: float, tail_readings: float = TAIL_READINGS) -> float:
    """Normal readings a threshold rests on: ``tail_readings`` above it at the budget.

    >>> histogram_window(0.01)
    100000.0
    """
    return float(tail_readings) / float(budget)


def merge_histograms(previous: np.ndarray, reported: Sequence[np.ndarray], window: float) -> np.ndarray:
    """The next histogram: the reported ones plus the previous one, discounted.

    The previous histogram keeps weight max(0, 1 - new / ``window``): once about ``window``
    normal readings are in, new scores (of newer versions) replace old ones at the rate they
    arrive, so the threshold follows the model.

    >>> h = merge_histograms(np.full(NUM_SCORE_BINS, 2.0), [np.full(NUM_SCORE_BINS, 0.25)], 1000.0)
    >>> round(float(h[0]), 3)  # 120 new readings: the old ones keep 1 - 120 / 1,000
    2.01
    """
    new = np.sum(reported, axis=0) if len(reported) else np.zeros(NUM_SCORE_BINS)
    keep = max(0.0, 1.0 - float(new.sum()) / window)
    return keep * np.asarray(previous, dtype=np.float64) + new


def moments_size(features: int) -> int:
    """Numbers in packed moments of ``features`` features: count, sums, upper triangle of outer products.

    >>> moments_size(10)
    66
    """
    return 1 + features + features * (features + 1) // 2


def moments_of(x: np.ndarray) -> np.ndarray:
    """Packed moments of the rows of ``x``: [n, sum (F), upper triangle of sum x x^T (F(F+1)/2)].

    >>> moments_of(np.array([[1.0, 2.0], [3.0, 4.0]])).tolist()
    [2.0, 4.0, 6.0, 10.0, 14.0, 20.0]
    """
    x = np.asarray(x, dtype=np.float64)
    return np.concatenate(([float(x.shape[0])], x.sum(axis=0), (x.T @ x)[upper_indices(x.shape[1])]))


def _unpack_moments(m: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    m = np.asarray(m, dtype=np.float64)
    f = int(round((math.sqrt(8 * m.shape[0] + 1) - 3) / 2))  # 1 + f + f(f+1)/2 = len
    if moments_size(f) != m.shape[0]:
        raise ValueError(f"{m.shape[0]} numbers are no packed moments")
    s2 = np.zeros((f, f))
    s2[np.triu_indices(f)] = m[1 + f :]  # (the server's step, once per version)
    return float(m[0]), m[1 : 1 + f], s2 + np.triu(s2, 1).T


def merge_moments(
    previous: np.ndarray | None, reported: Sequence[np.ndarray | None], window: float
) -> np.ndarray | None:
    """Normal-feature moments over the threshold's window, discounted as ``merge_histograms`` does.

    >>> merge_moments(None, [moments_of(np.ones((2, 2)))], 100.0).tolist()
    [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    """
    new = [np.asarray(r, dtype=np.float64) for r in reported if r is not None]
    if not new:
        return previous
    total = np.sum(new, axis=0)
    if previous is None:
        return total
    keep = max(0.0, 1.0 - float(total[0]) / window)
    return keep * np.asarray(previous, dtype=np.float64) + total


def score_location_scale(moments: np.ndarray, weights: np.ndarray, bias: float) -> tuple[float, float]:
    """Mean and standard deviation (floored at ``MIN_SCALE``) of w . x + b over normal features with these moments.

    >>> score_location_scale(moments_of(np.array([[1.0, 0.0], [-1.0, 0.0]])), np.array([3.0, 4.0]), -1.0)
    (-1.0, 3.0)
    """
    n, s1, s2 = _unpack_moments(moments)
    w = np.asarray(weights, dtype=np.float64)
    mean = s1 / n
    cov = s2 / n - np.outer(mean, mean)
    var = float(w @ cov @ w)
    return float(w @ mean + bias), max(math.sqrt(max(var, 0.0)), MIN_SCALE)


def standardise(logits: np.ndarray, loc: float | None, scale: float | None) -> np.ndarray:
    """(logit - loc) / scale; NaN everywhere while the model has no normal-score scale yet.

    >>> standardise(np.array([1.0, 3.0]), 1.0, 2.0).tolist(), bool(np.isnan(standardise(np.ones(1), None, None)).all())
    ([0.0, 1.0], True)
    """
    logits = np.asarray(logits, dtype=np.float64)
    if loc is None or scale is None:
        return np.full(logits.shape, np.nan)
    return (logits - loc) / scale


def device_threshold(
    fleet: float | None, own: np.ndarray, budget: float, prior_tail: float = DEVICE_PRIOR_TAIL_READINGS
) -> float | None:
    """The threshold one device applies: the fleet's, moved toward the ``budget`` quantile of the
    device's own standardised scores (``own``: their histogram) as they accumulate.

    A weighted mean of the two quantiles, the fleet's weighing ``prior_tail / budget`` readings,
    the device's its own count. No fleet threshold yet: none (no alarm before the fleet knows its
    normal scores).

    >>> own = score_histogram(np.linspace(-5, 5, 9_001))  # the device's 1% quantile: 4.9
    >>> device_threshold(2.0, np.zeros(NUM_SCORE_BINS), 0.01), round(threshold_for_budget(own, 0.01), 2)
    (2.0, 4.9)
    >>> round(device_threshold(2.0, own, 0.01), 2)  # 9,001 own readings against the fleet's 1,000
    4.61
    >>> device_threshold(None, own, 0.01) is None
    True
    """
    if fleet is None:
        return None
    seen = float(np.sum(own))
    if seen <= 0 or not math.isfinite(fleet):
        return fleet
    prior = prior_tail / budget
    return (prior * fleet + seen * threshold_for_budget(own, budget)) / (prior + seen)


def device_thresholds(
    scores: np.ndarray, fleet: float | np.ndarray, blocks: np.ndarray, budget: float, window: float,
    prior_tail: float = DEVICE_PRIOR_TAIL_READINGS,
) -> np.ndarray:  # fmt: skip
    """Per reading, the threshold ``device_threshold`` gives a device whose scores are ``scores``, in order.

    What ``device.step`` does, replayed for the evaluation: the readings of one step (equal
    consecutive ``blocks`` values, e.g. the time their message arrived) are decided against the
    histogram of the scores decided before them, which then takes theirs in (``merge_histograms``
    with ``window``). ``fleet``: the fleet threshold, one for all or one per reading (inf or NaN:
    none, and the block's scores do not count, as a step without a threshold adds none).

    >>> s = np.r_[np.zeros(1000), np.full(5, 9.0)]
    >>> t = device_thresholds(s, 1.0, np.repeat(np.arange(201), 5), 0.01, 1e9)
    >>> float(t[0]), round(float(t[-1]), 2)  # first the fleet's; after 1,000 scores near 0, half-way to their quantile
    (1.0, 0.52)
    """
    s = np.asarray(scores, dtype=np.float64)
    n = s.shape[0]
    f = np.broadcast_to(np.asarray(fleet, dtype=np.float64), (n,))
    out = np.empty(n)
    b = np.asarray(blocks)
    starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]]) if n else np.empty(0, np.int64)
    ends = np.r_[starts[1:], n].astype(np.int64)
    spans = list(zip(starts.tolist(), ends.tolist(), strict=True))
    limits, _ = block_thresholds([float(f[a]) for a, _ in spans], np.zeros(NUM_SCORE_BINS),
                                 [s[a:e] for a, e in spans], budget, window, prior_tail=prior_tail)  # fmt: skip
    for (a, e), limit in zip(spans, limits, strict=True):
        out[a:e] = limit
    return out


def block_thresholds(
    fleet: Sequence[float], own: np.ndarray, blocks: Sequence[np.ndarray], budget: float, window: float,
    move: bool = True, prior_tail: float = DEVICE_PRIOR_TAIL_READINGS,
) -> tuple[list[float], np.ndarray]:  # fmt: skip
    """The threshold of each block of a device's scores (its fleet threshold, moved toward the
    device's own quantile when ``move``) and the device's histogram after them: the one loop
    ``device.step`` (a block per message) and ``device_thresholds`` share. A block whose fleet
    threshold is not finite (none yet) gets inf and adds nothing to the histogram.

    >>> t, h = block_thresholds([1.0, 1.0, math.inf], np.zeros(NUM_SCORE_BINS), [np.zeros(1000)] * 3, 0.01, 1e9)
    >>> t[0], round(t[1], 2), t[2], round(float(h.sum()))
    (1.0, 0.52, inf, 2000)
    """
    out = []
    for fl, scores in zip(fleet, blocks, strict=True):
        if not math.isfinite(fl):
            out.append(math.inf)
            continue
        out.append(device_threshold(fl, own, budget, prior_tail) if move else fl)
        own = with_decided(own, scores, window)
    return out, own


def with_decided(own: np.ndarray, scores: np.ndarray, window: float) -> np.ndarray:
    """A device's own score histogram after the finite ``scores`` it just decided (``merge_histograms``).

    >>> h = with_decided(np.zeros(NUM_SCORE_BINS), np.array([0.0, np.nan, 1.0]), 1e9)
    >>> int(h.sum()), with_decided(h, np.array([np.nan]), 1e9) is h
    (2, True)
    """
    decided = scores[np.isfinite(scores)]
    if not decided.shape[0]:
        return own
    return merge_histograms(own, [score_histogram(decided)], window)


def refractory_alarms(candidates: np.ndarray, since_alarm: int, refractory: int) -> tuple[np.ndarray, int]:
    """Keep a candidate only if at least ``refractory`` readings passed since the last alarm.

    Returns the alarms and the readings since the last alarm after the batch, so a device's
    messages can be decided one batch at a time with the same result.

    >>> a, s = refractory_alarms(np.array([1, 1, 0, 1, 0, 0, 1], bool), 10, 3)
    >>> a.astype(int).tolist(), s
    ([1, 0, 0, 1, 0, 0, 1], 1)
    """
    c = np.asarray(candidates, dtype=bool)
    if refractory <= 1:
        hits = np.flatnonzero(c)
        return c.copy(), (c.shape[0] - int(hits[-1]) if hits.shape[0] else min(since_alarm + c.shape[0], NEVER))
    out = np.zeros(c.shape[0], dtype=bool)
    last = -since_alarm  # index of the last alarm relative to this batch
    for i in np.flatnonzero(c).tolist():
        if i - last >= refractory:
            out[i] = True
            last = i
    return out, min(c.shape[0] - last, NEVER)


@dataclass(frozen=True)
class ScoreRule:
    """A linear model with its decision: standardise the logit, compare with ``threshold``, refractory.

    ``threshold`` is on the standardised score; None: no alarm yet (no normal scores known).
    ``probability_threshold`` is the same threshold on sigmoid(logit), for code that compares
    probabilities (alarm at a probability strictly above it).

    >>> r = ScoreRule(np.array([2.0]), -1.0, loc=-1.0, scale=2.0, threshold=1.5)
    >>> r.standardised(np.array([[1.0], [2.0]])).tolist(), round(r.probability_threshold, 3)
    ([1.0, 2.0], 0.881)
    """

    weights: np.ndarray
    bias: float
    loc: float | None = 0.0
    scale: float | None = 1.0
    threshold: float | None = None
    refractory: int = 0

    @classmethod
    def published(
        cls, weights: Sequence[float], bias: float, threshold: float | None, score_loc: float | None,
        score_scale: float | None, refractory: int = 0,
    ) -> ScoreRule:  # fmt: skip
        """The rule of a global version from its published fields (``GlobalModel``'s weights, bias,
        threshold, score_loc, score_scale): what every device applies to it.

        >>> r = ScoreRule.published([1.0, 0.0], -3.0, 2.0, -3.5, 0.5, refractory=100)
        >>> r.standardised(np.array([[0.5, 9.0]])).tolist(), r.candidates(np.array([[0.5, 0.0], [0.6, 0.0]])).tolist()
        ([2.0], [False, True])
        """
        known = threshold is not None and score_loc is not None and score_scale is not None
        return cls(np.asarray(weights, dtype=np.float64), float(bias), score_loc, score_scale,
                   threshold if known else None, refractory)  # fmt: skip

    def logits(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, dtype=np.float64) @ self.weights + self.bias

    def standardised(self, features: np.ndarray) -> np.ndarray:
        return standardise(self.logits(features), self.loc, self.scale)

    def candidates(self, features: np.ndarray) -> np.ndarray:
        """Readings above the threshold, before the refractory period."""
        s = self.standardised(features)
        if self.threshold is None:
            return np.zeros(s.shape[0], dtype=bool)
        return s > self.threshold  # NaN (no scale yet) is never above it

    def alarms(self, features: np.ndarray, since_alarm: int = NEVER) -> np.ndarray:
        """The alarms one device raises on these readings, in order."""
        return refractory_alarms(self.candidates(features), since_alarm, self.refractory)[0]

    @property
    def probability_threshold(self) -> float:
        """sigmoid(loc + scale x threshold); inf while there is no threshold."""
        if self.threshold is None or self.loc is None or self.scale is None:
            return math.inf
        z = self.loc + self.scale * self.threshold
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


def central_rule(
    weights: np.ndarray, bias: float, normal_features: np.ndarray, budget: float, refractory: int = 0
) -> ScoreRule:
    """The decision rule of a model trained centrally, from its normal training readings' features.

    The same rule the server publishes for the global model: loc and scale from the moments of
    the normal features, the threshold at ``budget`` from the histogram of their standardised
    scores (all at once: a central model has no window), the same refractory period. The
    evaluation fits the central model on ``device.training_targets`` and applies this, so the
    central, local-only and global models are judged by one rule (the example at the top).
    """
    x = np.asarray(normal_features, dtype=np.float64)
    if x.shape[0] < 2:
        return ScoreRule(np.asarray(weights, dtype=np.float64), float(bias), None, None, None, refractory)
    loc, scale = score_location_scale(moments_of(x), weights, bias)
    s = standardise(x @ np.asarray(weights, dtype=np.float64) + bias, loc, scale)
    thr = threshold_for_budget(score_histogram(s), budget)
    return ScoreRule(np.asarray(weights, dtype=np.float64), float(bias), loc, scale,
                     thr if math.isfinite(thr) else None, refractory)  # fmt: skip
