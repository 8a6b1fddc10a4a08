"""The held-out evaluation protocol: three splits, every model scored on the same readings.

Splits (``SPLITS``):

* ``readings``: the readings held out by a stable hash of (device, timestamp)
  (``FLEAD_HOLDOUT_PERCENT``), on the devices that train. No model trained on them, but their
  neighbours in time did.
* ``devices``: every labelled reading of the held-out devices (``FLEAD_HOLDOUT_DEVICE_PERCENT``,
  a stable hash of the device id), which never train any model, local or central: what a
  federated model is for is devices it has not seen. Local-only models cannot score them.
* ``prequential``: every labelled reading of every device, scored by the newest global version
  that existed when the reading arrived (event time): test-then-train over the whole stream, as
  streaming learners are judged. The central model, trained once on the whole stream, cannot be
  scored this way; the local-only models can (each as it was when the reading arrived).

Models (``MODELS``): ``global`` (a FedAvg version), ``central`` (logistic regression fitted on
the pooled training readings), ``local`` (each device's own model), ``zrule`` (the description's
|z| > threshold, as the worker publishes it) and ``random`` (alarms drawn at random at the global
model's false-alarm rate on the same split: event recall means little without it, since NAB's
windows are long). A model scores a reading by its standardised logit, (w . x + b - loc) / scale
(``VersionModel.score``; loc 0 and scale 1 is the plain logit), and the scores become alarms by a
threshold and a refractory period (``Decision``, ``alarms_from``): after an alarm a device raises
no other for that many readings, so an incident raises one alarm. Ranking metrics (ROC-AUC,
PR-AUC) do not depend on the standardisation. Metrics are ``metrics.model_metrics``: one series
per device.

>>> lab = np.array([0] * 20 + [1] * 5 + [0] * 5, dtype=np.int8)
>>> z = np.where(lab, 4.0, 0.1)
>>> s = DeviceSeries("d", lab, np.c_[lab * 4.0], z, np.arange(30.0), np.zeros(30, bool), device_heldout=True)
>>> v = VersionModel(1, LinearModel(np.array([2.0]), -4.0), Decision(0.0), created_at=0.0)
>>> r = evaluate([s], {"devices"}, v, [v], central=None, zrule=Decision(2.5), seed=0)
>>> r["devices"]["global"].event_recall, r["devices"]["local"]
(1.0, None)
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flead_app.algorithms.decision import device_thresholds
from flead_app.algorithms.metrics import MetricsSummary, ModelMetrics, model_metrics, summarize_metrics
from flead_app.algorithms.sgd import LinearModel

SPLITS = ("readings", "devices", "prequential")
MODELS = ("global", "central", "local", "zrule", "random")


@dataclass(frozen=True)
class Decision:
    """How scores become alarms: at or above ``threshold``, then at most one per ``refractory`` readings.

    ``own_budget`` set: the threshold is the fleet's moved toward that quantile of the device's
    own scores (``decision.device_thresholds``, over a window of ``own_window`` readings), as
    ``device.step`` applies a global version with ``threshold_scope="device"``.

    >>> alarms_from(np.array([0.9, 0.9, 0.1, 0.9, 0.9]), Decision(0.5, refractory=3)).tolist()
    [True, False, False, True, False]
    """

    threshold: float = 0.5
    refractory: int = 0
    own_budget: float | None = None
    own_window: float = float("inf")


def alarms_from(
    scores: np.ndarray, decision: Decision, thresholds: np.ndarray | None = None, blocks: np.ndarray | None = None
) -> np.ndarray:
    """The alarms one device raises, in order (``thresholds``: one per reading, else ``decision``'s;
    ``blocks``: readings decided together, e.g. by the arrival time of their message).

    >>> alarms_from(np.array([0.2, 0.6, 0.6]), Decision(0.9), thresholds=np.array([0.1, 0.5, 0.7])).tolist()
    [True, True, False]
    """
    scores = np.asarray(scores, dtype=np.float64)
    limit = decision.threshold if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    if decision.own_budget is not None:
        limit = device_thresholds(scores, limit, np.arange(scores.shape[0]) if blocks is None else blocks,
                                  decision.own_budget, decision.own_window)  # fmt: skip
    candidates = scores >= limit
    if decision.refractory <= 1:
        return candidates
    out = np.zeros(scores.shape[0], dtype=bool)
    last = -decision.refractory
    for i in np.flatnonzero(candidates).tolist():
        if i - last >= decision.refractory:
            out[i] = True
            last = i
    return out


@dataclass(frozen=True)
class VersionModel:
    """A model as the protocol applies it: weights, bias, the standardisation of its score, its
    decision on that score, and when it existed.

    >>> VersionModel(1, LinearModel(np.array([1.0]), -1.0), Decision(0.0), loc=1.0, scale=2.0).score(np.array([[5.0]]))
    array([1.5])
    """

    version: int
    model: LinearModel
    decision: Decision
    created_at: float = 0.0  # event time at which it was published (prequential)
    loc: float = 0.0
    scale: float = 1.0

    def score(self, features: np.ndarray) -> np.ndarray:
        logit = np.asarray(features, dtype=np.float64) @ self.model.weights + self.model.bias
        return (logit - self.loc) / self.scale

    def ranking_score(self, features: np.ndarray) -> np.ndarray:
        """What ROC-AUC and PR-AUC rank: ``score`` itself once the version publishes its decision
        (the standardised logit, spread about 1 over normal readings); before that, w . x / |w|,
        in the same order. An early version's logits are its bias plus a tiny spread (all within
        0.01 of -4.6, say), which the federated evaluation's fixed score histogram would put in
        one bin, tying readings the exact ranking tells apart.

        >>> v = VersionModel(1, LinearModel(np.array([3e-4, 4e-4]), -4.6), Decision(np.inf))
        >>> v.ranking_score(np.array([[1.0, 2.0], [2.0, 1.0]])).round(6).tolist()
        [2.2, 2.0]
        """
        w = self.model.weights
        norm = float(np.linalg.norm(w))
        if np.isfinite(self.decision.threshold) or norm == 0.0:
            return self.score(features)
        return (np.asarray(features, dtype=np.float64) @ w) / norm


@dataclass(frozen=True)
class DeviceSeries:
    """A device's scored, labelled readings in arrival order, as the worker saw them."""

    device_id: str
    labels: np.ndarray  # int8 0/1
    features: np.ndarray  # (n, features): the same for every model
    z: np.ndarray  # the z-rule's statistic
    arrived_at: np.ndarray  # event time of the message that carried each reading
    heldout: np.ndarray  # bool: held out by the readings split
    device_heldout: bool  # the device is held out (never trains)
    #: the device's own model's scores, as it was when each reading arrived (prequential) and at the
    #: end (readings split), standardised like ``local_decision`` expects; None: no local model
    local_causal: np.ndarray | None = None
    local_final: np.ndarray | None = None
    local_decision: Decision | None = None
    timestamps: np.ndarray | None = None  # the readings' own times (epoch seconds), for the record


def _in_split(s: DeviceSeries, split: str) -> np.ndarray | None:
    """Which of the series' readings the split evaluates (None: the device is not in the split)."""
    if split == "readings":
        return None if s.device_heldout else s.heldout
    if split == "devices":
        return np.ones(s.labels.shape[0], dtype=bool) if s.device_heldout else None
    if split == "prequential":
        return np.ones(s.labels.shape[0], dtype=bool)
    raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")


def prequential_scores(
    features: np.ndarray, arrived_at: np.ndarray, versions: Sequence[VersionModel], ranking: bool = False
):  # fmt: skip
    """Each reading scored by the newest version published before it arrived (the first one before
    any); returns (scores, the threshold that version's decision applies); with ``ranking``, each
    version's ``ranking_score`` instead of its score.

    >>> v1 = VersionModel(1, LinearModel(np.array([1.0]), 0.0), Decision(0.7), created_at=10.0)
    >>> v0 = VersionModel(0, LinearModel(np.array([0.0]), 0.0), Decision(0.5))
    >>> s, t = prequential_scores(np.array([[2.0], [2.0]]), np.array([5.0, 15.0]), [v0, v1])
    >>> s.tolist(), t.tolist()
    ([0.0, 2.0], [0.5, 0.7])
    """
    ordered = sorted(versions, key=lambda v: (v.created_at, v.version))
    times = np.array([v.created_at for v in ordered])
    which = np.searchsorted(times, np.asarray(arrived_at, dtype=np.float64), side="right") - 1
    which = np.maximum(which, 0)
    scores = np.empty(features.shape[0])
    thresholds = np.empty(features.shape[0])
    for k in np.unique(which).tolist():
        at = which == k
        scores[at] = ordered[k].ranking_score(features[at]) if ranking else ordered[k].score(features[at])
        thresholds[at] = ordered[k].decision.threshold
    return scores, thresholds


def evaluate(
    series: Sequence[DeviceSeries],
    splits: Collection[str],
    latest: VersionModel,
    versions: Sequence[VersionModel],
    central: VersionModel | None,
    zrule: Decision,
    seed: int = 0,
    probation_percent: float | None = None,
    summarize: bool = False,
) -> dict[str, dict[str, Any]]:
    """{split: {model: metrics}} for the latest global version and every baseline on each split.

    ``versions`` (every published version, with its time) serve the prequential split; the
    others score ``latest``. A model that cannot score a split is None there. With ``summarize``
    (a site's federated evaluation) each entry is the ``MetricsSummary`` of these series instead,
    and a split with no series here has empty summaries for the models that could score it:
    merged with other sites' summaries they give the fleet's metrics (``random`` excepted: each
    site draws its alarms at its own global false-alarm rate).
    """
    kw = {} if probation_percent is None else {"probation_percent": probation_percent}
    measure = summarize_metrics if summarize else model_metrics
    out: dict[str, dict[str, Any]] = {}
    for split in splits:
        picked = [(s, m) for s in series if (m := _in_split(s, split)) is not None and m.any()]
        if not picked:
            out[split] = _nothing_to_score(split, central is not None) if summarize else dict.fromkeys(MODELS)
            continue
        labels = [s.labels[m] for s, m in picked]
        results: dict[str, Any] = {}
        glob_scores, glob_alarms = [], []
        for s, m in picked:
            if split == "prequential":
                p, t = prequential_scores(s.features, s.arrived_at, versions or [latest])
                a = alarms_from(p, latest.decision, thresholds=t, blocks=s.arrived_at)
                r, _ = prequential_scores(s.features, s.arrived_at, versions or [latest], ranking=True)
            else:
                p = latest.score(s.features)
                a = alarms_from(p, latest.decision, blocks=s.arrived_at)
                r = latest.ranking_score(s.features)
            glob_scores.append(r[m])
            glob_alarms.append(a[m])
        results["global"] = measure(labels, glob_scores, glob_alarms, **kw)
        if central is not None and split != "prequential":
            ps = [central.score(s.features) for s, _ in picked]
            results["central"] = measure(
                labels, [p[m] for p, (_, m) in zip(ps, picked, strict=True)],
                [alarms_from(p, central.decision)[m] for p, (_, m) in zip(ps, picked, strict=True)], **kw,
            )  # fmt: skip
        else:
            results["central"] = None
        results["local"] = _local(picked, split, labels, kw, measure)
        zs = [np.abs(s.z) for s, _ in picked]
        results["zrule"] = measure(
            labels, [z[m] for z, (_, m) in zip(zs, picked, strict=True)],
            [alarms_from(z, Decision(np.nextafter(zrule.threshold, np.inf), zrule.refractory))[m]
             for z, (_, m) in zip(zs, picked, strict=True)], **kw,
        )  # fmt: skip
        results["random"] = _random(picked, labels, false_alarm_rate(results["global"]), seed, kw, measure)
        out[split] = results
    return out


def false_alarm_rate(m: ModelMetrics | MetricsSummary) -> float:
    """Alarms per normal reading.

    >>> false_alarm_rate(MetricsSummary(fp=3, tn=997)), false_alarm_rate(MetricsSummary())
    (0.003, 0.0)
    """
    if isinstance(m, MetricsSummary):
        return m.fp / (m.fp + m.tn) if m.fp + m.tn else 0.0
    return m.false_alarms_per_1000 / 1000.0


def _nothing_to_score(split: str, with_central: bool) -> dict[str, MetricsSummary | None]:
    """A site's summaries of a split it has no readings of: empty for the models that could score it."""
    empty = MetricsSummary()
    return {
        "global": empty, "central": empty if with_central and split != "prequential" else None,
        "local": None if split == "devices" else empty, "zrule": empty, "random": empty,
    }  # fmt: skip


def _local(picked: list, split: str, labels: list, kw: Mapping, measure: Callable = model_metrics) -> Any:
    if split == "devices":
        return None  # held-out devices never train: they have no model of their own
    scores, alarms = [], []
    for s, m in picked:
        p = s.local_final if split == "readings" else s.local_causal
        if p is None or s.local_decision is None:
            return None
        scores.append(p[m])
        alarms.append(alarms_from(p, s.local_decision)[m])
    return measure(labels, scores, alarms, **kw)


def _random(picked: list, labels: list, rate: float, seed: int, kw: Mapping, measure: Callable = model_metrics) -> Any:
    """Alarms at random, at the global model's rate of false alarms per normal reading on this split."""
    rng = np.random.default_rng(seed)
    scores = [rng.random(lab.shape[0]) for lab in labels]
    alarms = [sc < rate for sc in scores]
    return measure(labels, scores, alarms, **kw)
