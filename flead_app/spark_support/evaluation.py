"""Held-out evaluation of the global models and of two baselines, as pure numpy.

The evaluation set. Every device's whole history in Kafka is replayed in offset order through
the worker's own state machine (``algorithms.device.step``), so each reading gets exactly the
features the worker computed for it. A reading is evaluated when it was scored (enough
history), carries a label, and is held out by the stable hash rule (``algorithms.holdout``):
the worker never buffers such a reading for training, so no global model, no local-only model
and not the central model below has trained on it.

The models compared on the same evaluation set:

* ``global``: every FedAvg version, ``p = sigmoid(w . x + b)`` with the weights in federated_models.
* ``local``: each device's local-only model, trained exactly as the worker trains when no global
  model ever arrives: SGD from zeros over the device's own non-held-out labelled readings, in
  the worker's rounds (every ``train_every`` readings or ``train_interval_s`` of event time, and
  at its control records), with its ``learning_rate`` and ``local_epochs``, plus a last round on
  what is left at the end of the history.
* ``central``: one logistic regression fitted on the pooled non-held-out readings of all devices
  (what a server that received all raw data would train; fitted by Spark MLlib in the job).

Baselines are evaluated once per evaluation run and stored with ``model_version`` = the newest
global version that run evaluated, so each baseline row sits beside the global version it was
compared with.

Metrics (alarm = p >= 0.5): point-wise accuracy, precision, recall, F1, ROC-AUC and confusion
counts over all evaluated readings pooled (split ``holdout``); event recall counts labelled
windows (runs of label 1 in a device's full history) that contain at least one evaluated reading,
and a window is detected when an alarm falls on one of its evaluated readings; false alarms
are alarms on evaluated label-0 readings, per 1,000 evaluated readings. Split
``holdout_device_mean`` holds the unweighted mean of the same metrics over devices that have at
least one evaluated positive reading (ROC-AUC over those with both classes), so one large
device cannot dominate the comparison with the local-only models.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from flead_app.algorithms.device import DeviceConfig, DeviceMessage, DeviceState, current_model, step, train_round
from flead_app.algorithms.incident_features import NUM_FEATURES
from flead_app.algorithms.metrics import Scores, classification_scores, label_windows
from flead_app.algorithms.sgd import LinearModel, predict_proba

THRESHOLD = 0.5
SPLIT_POOLED = "holdout"
SPLIT_DEVICE_MEAN = "holdout_device_mean"
KIND_GLOBAL, KIND_LOCAL, KIND_CENTRAL = "global", "local", "central"

# what replay_device needs of a message: (partition, offset, kafka_ts_s, control, timestamps, values, labels)
MessageTuple = tuple[int, int, float, bool, Sequence[float], Sequence[float], Sequence[int]]


@dataclass(frozen=True)
class DeviceHistory:
    """A device's evaluable readings (scored and labelled), in offset order, and its local-only model."""

    device_id: str
    timestamps: np.ndarray
    labels: np.ndarray  # int8, 0/1
    features: np.ndarray  # (n, NUM_FEATURES)
    heldout: np.ndarray  # bool
    window_ids: np.ndarray  # index of the labelled window in the full history, -1 outside
    local_model: LinearModel
    readings: int  # every reading replayed, labelled or not
    local_rounds: int


def window_ids(labels: np.ndarray) -> np.ndarray:
    """Per reading, the index of its run of label 1 (0, 1, ...), or -1; unknown labels end a run."""
    labels = np.asarray(labels)
    ids = np.full(labels.shape[0], -1, dtype=np.int64)
    for k, (start, end) in enumerate(label_windows((labels == 1).astype(np.int8))):
        ids[start:end] = k
    return ids


def replay_device(device_id: str, messages: Iterable[MessageTuple], cfg: DeviceConfig) -> DeviceHistory:
    """Replay one device's messages in (partition, offset) order, as the worker processed them.

    The worker decides on event time (the record's Kafka timestamp) and trains when
    ``round_due`` says so, on readings and on the control records that request a round,
    so replaying the same records with the same clock gives the same local rounds.
    """
    ordered = sorted(messages, key=lambda m: (m[0], m[1]))
    state = DeviceState()
    stamps, labs, feats, scored_parts, held = [], [], [], [], []
    rounds = 0
    for _, _, now, control, ts, values, labels in ordered:
        msg = DeviceMessage(
            now, np.asarray(ts, dtype=np.float64), np.asarray(values, dtype=np.float64),
            np.asarray(labels, dtype=np.int8), train_now=control,
        )  # fmt: skip
        out = step(state, [msg], None, device_id, cfg)
        state, rounds = out.state, rounds + len(out.updates)
        seen = out.scores[0]
        if seen is not None:
            stamps.append(msg.timestamps)
            labs.append(msg.labels)
            feats.append(seen.features)
            scored_parts.append(seen.scored)
            held.append(seen.heldout)
    if state.buffer_labels.shape[0]:  # what the worker has not trained yet still counts
        state, result = train_round(state, state.last_round_at, cfg, None)
        rounds += result is not None
    if not stamps:
        empty = np.empty(0)
        return DeviceHistory(
            device_id, empty, np.empty(0, np.int8), np.empty((0, NUM_FEATURES)), np.empty(0, bool),
            np.empty(0, np.int64), current_model(state, cfg), 0, rounds,
        )  # fmt: skip
    all_ts = np.concatenate(stamps)
    all_labels = np.concatenate(labs)
    all_feats = np.concatenate(feats)
    scored_mask = np.concatenate(scored_parts)
    all_held = np.concatenate(held)
    windows = window_ids(all_labels)
    keep = scored_mask & (all_labels >= 0)
    return DeviceHistory(
        device_id=device_id,
        timestamps=all_ts[keep],
        labels=all_labels[keep],
        features=all_feats[keep],
        heldout=all_held[keep],
        window_ids=windows[keep],
        local_model=current_model(state, cfg),
        readings=int(all_ts.shape[0]),
        local_rounds=rounds,
    )


def history_rows(h: DeviceHistory) -> list[tuple]:
    """Flat rows for Spark: (device_id, heldout, window_id, ts, label, f0..f9, local_p)."""
    local_p = predict_proba(h.local_model, h.features) if h.labels.shape[0] else np.empty(0)
    return [
        (h.device_id, bool(hold), int(w), float(t), int(y), *map(float, f), float(p))
        for hold, w, t, y, f, p in zip(
            h.heldout, h.window_ids, h.timestamps, h.labels, h.features.tolist(), local_p, strict=True
        )
    ]


FEATURE_FIELDS = tuple(f"f{j}" for j in range(NUM_FEATURES))
ROW_FIELDS = ("device_id", "heldout", "window_id", "ts", "label", *FEATURE_FIELDS, "local_p")


@dataclass(frozen=True)
class EvalSet:
    """The held-out evaluation readings of all devices, sorted by device then history order."""

    device_ids: np.ndarray  # str objects
    window_ids: np.ndarray
    timestamps: np.ndarray
    labels: np.ndarray
    features: np.ndarray
    local_p: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence]) -> EvalSet:
        """From ``history_rows`` tuples (held-out ones; ``heldout`` is ignored), kept in given order."""
        rows = list(rows)
        if not rows:
            return cls(
                np.empty(0, object), np.empty(0, np.int64), np.empty(0), np.empty(0, np.int8),
                np.empty((0, NUM_FEATURES)), np.empty(0),
            )  # fmt: skip
        cols = list(zip(*rows, strict=True))
        return cls(
            device_ids=np.asarray(cols[0], dtype=object),
            window_ids=np.asarray(cols[2], dtype=np.int64),
            timestamps=np.asarray(cols[3], dtype=np.float64),
            labels=np.asarray(cols[4], dtype=np.int8),
            features=np.column_stack([np.asarray(c, dtype=np.float64) for c in cols[5 : 5 + NUM_FEATURES]]),
            local_p=np.asarray(cols[5 + NUM_FEATURES], dtype=np.float64),
        )


@dataclass(frozen=True)
class GlobalVersion:
    version: int
    weights: np.ndarray
    bias: float

    @property
    def model(self) -> LinearModel:
        return LinearModel(np.asarray(self.weights, dtype=np.float64), float(self.bias))


@dataclass(frozen=True)
class ModelEvaluation:
    """One model's results on the evaluation set."""

    kind: str
    version: int
    proba: np.ndarray
    pooled: Scores
    events: int
    detected: int
    false_alarms: int
    device_mean: dict | None  # None when no device has an evaluated positive

    @property
    def event_recall(self) -> float | None:
        return self.detected / self.events if self.events else None

    @property
    def false_alarms_per_1000(self) -> float:
        return 1000.0 * self.false_alarms / self.pooled.samples if self.pooled.samples else 0.0


def _device_slices(device_ids: np.ndarray) -> list[tuple[str, np.ndarray]]:
    if device_ids.shape[0] == 0:
        return []
    names, inverse = np.unique(device_ids.astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(names.shape[0] + 1))
    return [(str(names[k]), order[bounds[k] : bounds[k + 1]]) for k in range(names.shape[0])]


def pooled_events(device_ids: np.ndarray, window_ids: np.ndarray, alarms: np.ndarray) -> tuple[int, int]:
    """(windows with an evaluated reading, windows with an alarm on one), over all devices."""
    inside = window_ids >= 0
    if not inside.any():
        return 0, 0
    _, dev_codes = np.unique(device_ids[inside].astype(str), return_inverse=True)
    pair = dev_codes.astype(np.int64) * (int(window_ids[inside].max()) + 1) + window_ids[inside]
    keys, inverse = np.unique(pair, return_inverse=True)
    hit = np.zeros(keys.shape[0], dtype=bool)
    np.logical_or.at(hit, inverse, alarms[inside])
    return int(keys.shape[0]), int(hit.sum())


def evaluate_model(evalset: EvalSet, proba: np.ndarray, kind: str, version: int) -> ModelEvaluation:
    """Pooled and per-device-mean metrics of one model's probabilities on ``evalset``."""
    proba = np.asarray(proba, dtype=np.float64)
    labels = evalset.labels
    alarms = proba >= THRESHOLD
    pooled = classification_scores(labels, proba, THRESHOLD)
    events, detected = pooled_events(evalset.device_ids, evalset.window_ids, alarms)
    false_alarms = int((alarms & (labels == 0)).sum())
    return ModelEvaluation(
        kind, version, proba, pooled, events, detected, false_alarms, _device_mean(evalset, proba, alarms)
    )


def _device_mean(evalset: EvalSet, proba: np.ndarray, alarms: np.ndarray) -> dict | None:
    per: list[dict] = []
    for _, idx in _device_slices(evalset.device_ids):
        labels = evalset.labels[idx]
        if not (labels == 1).any():
            continue
        s = classification_scores(labels, proba[idx], THRESHOLD)
        events, detected = pooled_events(evalset.device_ids[idx], evalset.window_ids[idx], alarms[idx])
        fa = int((alarms[idx] & (labels == 0)).sum())
        per.append(
            {
                "samples": s.samples, "tp": s.tp, "fp": s.fp, "tn": s.tn, "fn": s.fn,
                "accuracy": s.accuracy, "precision": s.precision, "recall": s.recall, "f1": s.f1,
                "roc_auc": s.roc_auc, "event_recall": detected / events if events else None,
                "false_alarms_per_1000": 1000.0 * fa / s.samples,
            }
        )  # fmt: skip
    if not per:
        return None

    def mean(key: str) -> float | None:
        vals = [d[key] for d in per if d[key] is not None]
        return float(np.mean(vals)) if vals else None

    out = {k: int(sum(d[k] for d in per)) for k in ("samples", "tp", "fp", "tn", "fn")}
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "event_recall", "false_alarms_per_1000"):
        out[key] = mean(key)
    out["devices"] = len(per)
    return out


def summary_rows(ev: ModelEvaluation, evaluated_at: datetime) -> list[dict]:
    """Rows of evaluation_summaries for one model: pooled, and the per-device mean when defined."""
    s = ev.pooled
    rows = [
        {
            "model_kind": ev.kind, "model_version": ev.version, "split": SPLIT_POOLED, "samples": s.samples,
            "accuracy": s.accuracy, "precision": s.precision, "recall": s.recall, "f1": s.f1,
            "roc_auc": s.roc_auc, "tp": s.tp, "fp": s.fp, "tn": s.tn, "fn": s.fn,
            "event_recall": ev.event_recall, "false_alarms_per_1000": ev.false_alarms_per_1000,
            "evaluated_at": evaluated_at,
        }
    ]  # fmt: skip
    d = ev.device_mean
    if d is not None:
        rows.append(
            {
                "model_kind": ev.kind, "model_version": ev.version, "split": SPLIT_DEVICE_MEAN,
                "samples": d["samples"], "accuracy": d["accuracy"], "precision": d["precision"],
                "recall": d["recall"], "f1": d["f1"], "roc_auc": d["roc_auc"], "tp": d["tp"], "fp": d["fp"],
                "tn": d["tn"], "fn": d["fn"], "event_recall": d["event_recall"],
                "false_alarms_per_1000": d["false_alarms_per_1000"], "evaluated_at": evaluated_at,
            }
        )  # fmt: skip
    return rows


def sample_indices(evalset: EvalSet, cap: int, seed: int = 0) -> np.ndarray:
    """Up to ``cap`` evaluated readings, drawn uniformly, at most one per (device, timestamp).

    The same readings are sampled for every model of a run, so per-sample rows compare models
    reading by reading; one per (device, timestamp) because that is the table's key.
    """
    n = len(evalset)
    if cap <= 0 or n == 0:
        return np.empty(0, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(n)
    seen: set[tuple[str, int]] = set()
    picked: list[int] = []
    for i in order.tolist():
        key = (str(evalset.device_ids[i]), int(round(evalset.timestamps[i] * 1000)))
        if key in seen:
            continue
        seen.add(key)
        picked.append(i)
        if len(picked) >= cap:
            break
    return np.sort(np.asarray(picked, dtype=np.int64))


def sample_rows(evalset: EvalSet, ev: ModelEvaluation, idx: np.ndarray, created_at: datetime) -> list[dict]:
    """Rows of model_evaluations: the description's columns plus model_kind and reading_time."""
    rows = []
    for i in idx.tolist():
        p = float(ev.proba[i])
        actual = int(evalset.labels[i])
        rows.append(
            {
                "model_kind": ev.kind,
                "model_version": ev.version,
                "device_id": str(evalset.device_ids[i]),
                "reading_time": datetime.fromtimestamp(float(evalset.timestamps[i]), UTC),
                "prediction": p,
                "actual_result": actual,
                "is_correct": (p >= THRESHOLD) == (actual == 1),
                "confidence": max(p, 1.0 - p),
                "created_at": created_at,
            }
        )
    return rows


def thin_versions(versions: Sequence[int], every: int) -> list[int]:
    """The first and the last of ``versions`` and every ``every``-th version number between them:
    a trend over many versions at the cost of a few evaluations."""
    if every <= 1 or not versions:
        return sorted(versions)
    ordered = sorted(versions)
    keep = {ordered[0], ordered[-1]} | {v for v in ordered if v % every == 0}
    return sorted(keep)


def valid_weights(weights: Sequence[float]) -> bool:
    return len(weights) == NUM_FEATURES and all(math.isfinite(float(w)) for w in weights)


@dataclass(frozen=True)
class RunResult:
    evaluations: list[ModelEvaluation]
    summaries: list[dict]
    samples: list[dict]
    skipped_versions: list[int]
    baseline_version: int | None


def run_evaluation(
    evalset: EvalSet,
    versions: Sequence[GlobalVersion],
    central: LinearModel | None,
    sample_cap: int,
    now: datetime,
) -> RunResult:
    """Evaluate every global version with usable weights, then the baselines at the newest one."""
    usable = [v for v in versions if valid_weights(list(v.weights))]
    skipped = sorted(v.version for v in versions if not valid_weights(list(v.weights)))
    if not usable or len(evalset) == 0:
        return RunResult([], [], [], skipped, None)
    idx = sample_indices(evalset, sample_cap)
    evaluations = [
        evaluate_model(evalset, predict_proba(v.model, evalset.features), KIND_GLOBAL, v.version)
        for v in sorted(usable, key=lambda v: v.version)
    ]
    baseline_version = max(v.version for v in usable)
    evaluations.append(evaluate_model(evalset, evalset.local_p, KIND_LOCAL, baseline_version))
    if central is not None:
        evaluations.append(
            evaluate_model(evalset, predict_proba(central, evalset.features), KIND_CENTRAL, baseline_version)
        )
    summaries = [row for ev in evaluations for row in summary_rows(ev, now)]
    samples = [row for ev in evaluations for row in sample_rows(evalset, ev, idx, now)]
    return RunResult(evaluations, summaries, samples, skipped, baseline_version)
