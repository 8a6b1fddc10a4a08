"""Held-out evaluation as pure numpy: replay each device as the worker processed it, then the protocol.

Every device's whole history in Kafka is replayed in offset order through the worker's own
step, local-only (``device.step(..., global_params=None)``), so each reading gets exactly the
features, z and held-out flags the worker computed for it, and the device's own model as it was
when the reading arrived (the local-only baseline, causally) and at the end. The Spark job
(``jobs.evaluate_job``) runs ``replay_device`` on executors, fits the central model on the pooled
training readings of the devices that train, and calls ``run_evaluation`` in the driver, which
scores global versions and every baseline on the three splits of ``algorithms.protocol``
(held-out readings, held-out devices, prequential) and turns the results into table rows.

One decision rule judges every model (``device.decision_rule``: the standardisation of a model's
score and its alarm threshold, from its normal training readings; ``device.published_decision``
for a global version, from what it published), and every model is applied with the device's
refractory period, so the comparison is of models, not of thresholds. With
``FLEAD_THRESHOLD_SCOPE=device`` the global and the central model's thresholds are both moved
toward each device's own quantile, as ``step`` does (``device.threshold_scope``); the local-only
models' thresholds are their devices' own already.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from flead_app.algorithms.device import (
    DeviceConfig,
    DeviceMessage,
    DeviceState,
    current_model,
    decision_rule,
    published_decision,
    step,
    threshold_scope,
    train_round,
    training_targets,
)
from flead_app.algorithms.holdout import device_held_out
from flead_app.algorithms.metrics import MetricsSummary, ModelMetrics, metrics_from_summary
from flead_app.algorithms.protocol import MODELS, SPLITS, Decision, DeviceSeries, VersionModel, evaluate
from flead_app.algorithms.sgd import LinearModel

KIND_GLOBAL, KIND_LOCAL, KIND_CENTRAL, KIND_ZRULE, KIND_RANDOM = MODELS[0], MODELS[2], MODELS[1], MODELS[3], MODELS[4]
SPLIT_READINGS, SPLIT_DEVICES, SPLIT_PREQUENTIAL = SPLITS
#: the splits on which every evaluated global version is scored (the trend by version)
VERSION_SPLITS = (SPLIT_READINGS, SPLIT_DEVICES)

# what replay_device needs of a message: (partition, offset, kafka_ts_s, control, timestamps, values, labels)
MessageTuple = tuple[int, int, float, bool, Sequence[float], Sequence[float], Sequence[int]]
#: one row per scored, labelled reading; the device's local decision rides on each of its rows
ROW_FIXED = (
    "device_id", "device_heldout", "heldout", "seq", "arrived_at", "label", "target", "z", "local_causal",
    "local_final", "local_loc", "local_scale", "local_threshold", "ts",
)  # fmt: skip


def feature_names(n: int) -> tuple[str, ...]:
    return tuple(f"f{i}" for i in range(n))


def replay_device(device_id: str, messages: Iterable[MessageTuple], cfg: DeviceConfig) -> list[tuple]:
    """Replay one device's messages in (partition, offset) order, as the worker processed them;
    one row per scored, labelled reading (``ROW_FIXED`` then the features).

    The worker decides on event time (the record's Kafka timestamp) and trains when its rounds
    are due, on readings and on the control records that request a round, so replaying the same
    records with the same clock gives the same local rounds; what it has not trained yet at the
    end counts in the device's final local model.
    """
    ordered = sorted(messages, key=lambda m: (m[0], m[1]))
    held_device = device_held_out(device_id, cfg.holdout_device_percent, cfg.holdout_device_salt)
    state = DeviceState()
    parts: list[tuple] = []
    for _, _, now, control, ts, values, labels in ordered:
        msg = DeviceMessage(
            now, np.asarray(ts, dtype=np.float64), np.asarray(values, dtype=np.float64),
            np.asarray(labels, dtype=np.int8), train_now=control,
        )  # fmt: skip
        out = step(state, [msg], None, device_id, cfg)
        state, seen = out.state, out.scores[0]
        if seen is None:
            continue
        keep = seen.scored & (msg.labels >= 0)
        if keep.any():
            local_logit = _logit(seen.probability[keep])
            parts.append(
                (now, msg.labels[keep], seen.z[keep], seen.features[keep], seen.heldout[keep], local_logit,
                 msg.timestamps[keep])
            )  # fmt: skip
    if state.buffer_labels.shape[0]:  # what the worker has not trained yet still counts
        state, _ = train_round(state, state.last_round_at, cfg, None)
    if not parts:
        return []
    arrived = np.concatenate([np.full(p[1].shape[0], p[0]) for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    z = np.concatenate([p[2] for p in parts])
    features = np.concatenate([p[3] for p in parts])
    heldout = np.concatenate([p[4] for p in parts]) | held_device
    local_causal = np.concatenate([p[5] for p in parts])
    stamps = np.concatenate([p[6] for p in parts])
    targets = training_targets(labels, cfg)
    final = current_model(state, cfg)
    final_logits = features @ final.weights + final.bias
    trained_normals = ~heldout & (targets == 0)
    loc, scale, decision = decision_rule(final_logits[trained_normals], cfg)
    rows = []
    for i in range(labels.shape[0]):
        rows.append(
            (
                device_id, held_device, bool(heldout[i]), i, float(arrived[i]), int(labels[i]), int(targets[i]),
                float(z[i]), float(local_causal[i]), float(final_logits[i]), loc, scale, decision.threshold,
                float(stamps[i]), *map(float, features[i]),
            )
        )  # fmt: skip
    return rows


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p / (1.0 - p))


def series_from_rows(rows: Iterable[Sequence], cfg: DeviceConfig) -> list[DeviceSeries]:
    """The ``DeviceSeries`` of every device from ``replay_device`` rows (any order)."""
    by_device: dict[str, list[Sequence]] = {}
    for r in rows:
        by_device.setdefault(str(r[0]), []).append(r)
    out = []
    n_fixed = len(ROW_FIXED)
    for device_id in sorted(by_device):
        rs = sorted(by_device[device_id], key=lambda r: r[3])
        cols = list(zip(*rs, strict=True))
        features = np.column_stack([np.asarray(c, dtype=np.float64) for c in cols[n_fixed:]])
        loc, scale, threshold = float(cols[10][0]), float(cols[11][0]), float(cols[12][0])
        stamps = np.asarray(cols[13], dtype=np.float64)
        out.append(
            DeviceSeries(
                device_id=device_id,
                labels=np.asarray(cols[5], dtype=np.int8),
                features=features,
                z=np.asarray(cols[7], dtype=np.float64),
                arrived_at=np.asarray(cols[4], dtype=np.float64),
                heldout=np.asarray(cols[2], dtype=bool),
                device_heldout=bool(cols[1][0]),
                local_causal=(np.asarray(cols[8], dtype=np.float64) - loc) / scale,
                local_final=(np.asarray(cols[9], dtype=np.float64) - loc) / scale,
                local_decision=Decision(threshold, refractory_of(cfg)),
                timestamps=stamps,
            )
        )
    return out


def refractory_of(cfg: DeviceConfig) -> int:
    return int(getattr(cfg, "refractory", 0) or 0)


@dataclass(frozen=True)
class GlobalVersion:
    """A global version as the database holds it."""

    version: int
    weights: np.ndarray
    bias: float
    created_at: float = 0.0  # event time, epoch seconds
    threshold: float | None = None
    score_loc: float | None = None
    score_scale: float | None = None

    def model(self, cfg: DeviceConfig) -> VersionModel:
        loc, scale, decision = published_decision(self.threshold, self.score_loc, self.score_scale, cfg)
        decision = replace(decision, refractory=refractory_of(cfg))
        model = LinearModel(np.asarray(self.weights, dtype=np.float64), float(self.bias))
        return VersionModel(self.version, model, decision, self.created_at, loc, scale)


def central_model(model: LinearModel, series: Sequence[DeviceSeries], cfg: DeviceConfig) -> VersionModel:
    """The central logistic regression, judged by the fleet's decision rule on its training normals."""
    normals = [s.features[~s.heldout & (training_targets(s.labels, cfg) == 0)] for s in series if not s.device_heldout]
    x = np.concatenate(normals) if normals else np.empty((0, model.weights.shape[0]))
    loc, scale, decision = decision_rule(x @ model.weights + model.bias, cfg)
    rule = Decision(decision.threshold, refractory_of(cfg), **threshold_scope(cfg))  # the global model's rule
    return VersionModel(-1, model, rule, 0.0, loc, scale)


def training_rows(rows: Iterable[Sequence]) -> Iterable[Sequence]:
    """The rows the central model learns from: trainable readings of devices that train."""
    return (r for r in rows if not r[1] and not r[2] and r[6] >= 0)


@dataclass(frozen=True)
class RunResult:
    summaries: list[dict]
    samples: list[dict]  # rows of model_evaluations: per-reading predictions on the readings split
    results: dict[str, dict[str, ModelMetrics | None]]  # the latest version's splits x models
    trend: dict[int, dict[str, ModelMetrics | None]]  # version -> split -> the global model's metrics
    latest: int | None
    skipped_versions: list[int]
    stability: float | None


def usable(v: GlobalVersion, n_features: int) -> bool:
    return len(v.weights) == n_features and all(math.isfinite(float(w)) for w in v.weights)


def run_evaluation(
    series: Sequence[DeviceSeries],
    evaluated: Sequence[GlobalVersion],
    published: Sequence[GlobalVersion],
    central: VersionModel | None,
    cfg: DeviceConfig,
    now: datetime,
    sample_cap: int = 2000,
) -> RunResult:
    """Score each of ``evaluated`` on the readings and devices splits; the newest of them and every
    baseline on all three splits (prequential from every version in ``published``)."""
    n_features = series[0].features.shape[1] if series else 0
    good = sorted((v for v in evaluated if usable(v, n_features)), key=lambda v: v.version)
    skipped = sorted(v.version for v in evaluated if not usable(v, n_features))
    if not good or not series:
        return RunResult([], [], {}, {}, None, skipped, None)
    zrule = Decision(cfg.z_threshold, refractory_of(cfg))
    models = {v.version: v.model(cfg) for v in good}
    trend = {
        version: {k: r["global"] for k, r in evaluate(series, VERSION_SPLITS, m, [m], None, zrule).items()}
        for version, m in models.items()
    }
    latest = good[-1].version
    all_published = [v.model(cfg) for v in published if usable(v, n_features)] or [models[latest]]
    results = evaluate(series, SPLITS, models[latest], all_published, central, zrule)
    summaries = []
    for version, by_split in trend.items():
        for split, metrics in by_split.items():
            if metrics is not None and version != latest:
                summaries.append(summary_row(KIND_GLOBAL, version, split, metrics, now))
    for split, by_model in results.items():
        for kind, metrics in by_model.items():
            if metrics is not None:
                summaries.append(summary_row(kind, latest, split, metrics, now))
    baselines = {KIND_GLOBAL: models[latest], KIND_CENTRAL: central}
    samples = sample_rows(series, baselines, latest, sample_cap, now)
    return RunResult(summaries, samples, results, trend, latest, skipped, stability(trend))


# --- federated evaluation: each site scores its own readings, the centre merges the summaries ---

#: (model kind, model version, split) -> a site's MetricsSummary of it, or None (cannot score it there)
SiteSummaries = dict[tuple[str, int, str], MetricsSummary | None]


def site_evaluation(
    series: Sequence[DeviceSeries], evaluated: Sequence[GlobalVersion], published: Sequence[GlobalVersion],
    cfg: DeviceConfig,
) -> SiteSummaries:  # fmt: skip
    """One site's share of ``run_evaluation`` on its own devices: the same versions, splits and
    models, as ``MetricsSummary`` parts to merge centrally (``merge_site_evaluations``) instead of
    metrics. No central model: a site has no pooled readings to fit one on, which is the point.
    Nothing when no evaluated version fits the site's features (or the site has no series)."""
    n_features = series[0].features.shape[1] if series else 0
    good = sorted((v for v in evaluated if usable(v, n_features)), key=lambda v: v.version)
    if not good or not series:
        return {}
    zrule = Decision(cfg.z_threshold, refractory_of(cfg))
    models = {v.version: v.model(cfg) for v in good}
    latest = good[-1].version
    out: SiteSummaries = {}
    for version, m in models.items():
        if version != latest:
            for split, by_model in evaluate(series, VERSION_SPLITS, m, [m], None, zrule, summarize=True).items():
                out[(KIND_GLOBAL, version, split)] = by_model[KIND_GLOBAL]
    all_published = [v.model(cfg) for v in published if usable(v, n_features)] or [models[latest]]
    for split, by_model in evaluate(series, SPLITS, models[latest], all_published, None, zrule, summarize=True).items():
        for kind, summary in by_model.items():
            if kind != KIND_CENTRAL:
                out[(kind, latest, split)] = summary
    return out


@dataclass(frozen=True)
class MergedEvaluation:
    summaries: list[dict]  # rows of evaluation_summaries, as run_evaluation's
    waiting: dict[tuple[str, int, str], list[int]]  # what some sites have not reported yet: those sites


def merge_site_evaluations(by_site: dict[int, SiteSummaries], sites: Sequence[int], now: datetime) -> MergedEvaluation:
    """The fleet's evaluation rows from the sites' summaries: for each (model, version, split) that
    every site in ``sites`` reported, the merged summary's metrics (``metrics_from_summary``); none
    where a site could not score it (a model missing anywhere is missing for the fleet, as in the
    pooled evaluation) or no site had a reading of it.

    >>> from flead_app.algorithms.metrics import summarize_metrics
    >>> labels = np.array([0, 0, 0, 0, 1, 1, 0, 0, 0, 0])
    >>> one = summarize_metrics([labels], [labels * 1.0], [np.arange(10) == 5], probation_percent=0.0)
    >>> key = ("zrule", 3, "readings")
    >>> merged = merge_site_evaluations({1: {key: one}, 2: {key: one}}, [1, 2, 3], datetime(2026, 1, 1, tzinfo=UTC))
    >>> merged.summaries, merged.waiting
    ([], {('zrule', 3, 'readings'): [3]})
    >>> merged = merge_site_evaluations({1: {key: one}, 2: {key: one}}, [1, 2], datetime(2026, 1, 1, tzinfo=UTC))
    >>> [(r["samples"], r["recall"], r["event_recall"], r["delay_median"]) for r in merged.summaries]
    [(20, 0.5, 1.0, 1.0)]
    """
    keys = sorted({key for reported in by_site.values() for key in reported})
    rows, waiting = [], {}
    for key in keys:
        missing = [k for k in sites if key not in by_site.get(k, {})]
        if missing:
            waiting[key] = missing
            continue
        parts = [by_site[k][key] for k in sites]
        if any(p is None for p in parts):
            continue
        merged = functools.reduce(MetricsSummary.merge, parts)
        if merged.tp + merged.fp + merged.fn + merged.tn == 0:
            continue
        kind, version, split = key
        rows.append(summary_row(kind, version, split, metrics_from_summary(merged), now))
    return MergedEvaluation(rows, waiting)


def sample_rows(
    series: Sequence[DeviceSeries], models: dict[str, VersionModel | None], version: int, cap: int, now: datetime
) -> list[dict]:
    """Rows of the description's ``model_evaluations``: up to ``cap`` held-out readings of the
    readings split (drawn once, the same for every model), each model's prediction on them."""
    picked = [(s, i) for s in series if not s.device_heldout for i in np.flatnonzero(s.heldout).tolist()]
    if cap <= 0 or not picked:
        return []
    order = np.random.default_rng(0).permutation(len(picked))[:cap]
    rows = []
    for kind, model in models.items():
        if model is None:
            continue
        for k in sorted(order.tolist()):
            s, i = picked[k]
            score = float(model.score(s.features[i : i + 1])[0])
            alarm = score >= model.decision.threshold
            actual = int(s.labels[i])
            p = 1.0 / (1.0 + math.exp(-max(min(score * model.scale + model.loc, 500.0), -500.0)))
            rows.append(
                {
                    "model_kind": kind, "model_version": int(version), "device_id": s.device_id,
                    "reading_time": datetime.fromtimestamp(float(_times(s)[i]), UTC),
                    "prediction": p, "actual_result": actual, "is_correct": alarm == (actual == 1),
                    "confidence": max(p, 1.0 - p), "created_at": now,
                }
            )  # fmt: skip
    return rows


def _times(s: DeviceSeries) -> np.ndarray:
    return s.timestamps if s.timestamps is not None else s.arrived_at


def stability(trend: dict[int, dict[str, ModelMetrics | None]], split: str = SPLIT_DEVICES) -> float | None:
    """The worst held-out F1 of the second half of the evaluated versions over the best version's.

    >>> from flead_app.algorithms.metrics import ModelMetrics as M
    >>> m = lambda f1: {"devices": M(f1, 0, 0, None, None, 0, 0, None, None, None, None)}
    >>> round(stability({1: m(0.2), 2: m(0.8), 3: m(0.6), 4: m(0.7)}), 3)
    0.75
    """
    f1 = [(v, by[split].f1) for v, by in sorted(trend.items()) if by.get(split) is not None]
    if len(f1) < 2:
        return None
    best = max(f for _, f in f1)
    second = [f for _, f in f1[len(f1) // 2 :]]
    return float(min(second) / best) if best > 0 else None


def summary_row(kind: str, version: int, split: str, m: ModelMetrics, now: datetime) -> dict[str, Any]:
    """A row of ``evaluation_summaries``."""
    c = m.counts
    samples = int(c.get("samples", 0))
    tp, fp, fn, tn = (int(c.get(k, 0)) for k in ("tp", "fp", "fn", "tn"))
    return {
        "model_kind": kind,
        "model_version": int(version),
        "split": split,
        "samples": samples,
        "accuracy": (tp + tn) / samples if samples else 0.0,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "evaluated_at": now,
        **m.to_dict(),
    }  # fmt: skip


def thin_versions(versions: Sequence[int], every: int) -> list[int]:
    """The first and the last of ``versions`` and every ``every``-th version number between them:
    a trend over many versions at the cost of a few evaluations.

    >>> thin_versions(list(range(1, 11)), 4)
    [1, 4, 8, 10]
    """
    if every <= 1 or not versions:
        return sorted(versions)
    ordered = sorted(versions)
    keep = {ordered[0], ordered[-1]} | {v for v in ordered if v % every == 0}
    return sorted(keep)


def epoch(dt: datetime) -> float:
    return dt.astimezone(UTC).timestamp() if dt.tzinfo else dt.replace(tzinfo=UTC).timestamp()
