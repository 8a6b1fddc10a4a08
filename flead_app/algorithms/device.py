"""One device's detection-and-training state machine, as pure functions.

``step`` is the whole of it for the worker: given a device's state, the messages that arrived
for it, the newest global model the worker knows and the configuration, it returns the new
state, the alarms to publish and the local updates to send. The detector agent only loads the
state, calls ``step`` once, sends what it returns and stores the state; the Spark evaluation
replays devices through the same ``step``, so both see the same features and rounds.

Inside, each message is scored (``detection.score_batch``: z against the device's history and
the model's unitless features), the alarm rule decides once per reading (``decide``), labelled
readings that are not held out are buffered (``ingest``), and a round runs when one is due
(``round_due``: every ``train_every`` readings, ``train_interval_s`` of event time, or on a
request) with SGD from the global model (``train_round``).

A federated round starts from the newest global model the device knows: version 0 is
``initial_global`` (zero weights, bias at the prior log-odds), the same for every device and
for the FedAvg agent. The update reports the version it started from, and FedAvg averages each
update's change from that version (FedBuff): a round never continues from the device's own
previous weights, whose change is already in an earlier update. A local-only round
(``global_params`` None: the evaluation's baseline) continues from the device's own weights,
from the same initial model. Accuracy and loss of a round are measured on the round's readings
*before* training on them, so they are honest, if noisy, estimates.

>>> cfg = DeviceConfig(min_history=3, train_every=5)
>>> msg = DeviceMessage(received_at=100.0, timestamps=np.arange(6.0), values=np.array([1.0, 1.1, 0.9, 1.0, 9.0, 1.0]),
...                     labels=np.array([0, 0, 0, 0, 1, 0], dtype=np.int8))
>>> out = step(DeviceState(), [msg], initial_global(cfg), "device_0", cfg)
>>> [(a.reading, a.rule, a.severity) for a in out.alarms]
[(4, 'zrule', 'critical')]
>>> [(u.model_version, u.base_global_version) for u in out.updates], out.state.readings
([(1, 0)], 6)
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from flead_app.algorithms.detection import NUM_FEATURES, DetectorState, Scored, score_batch, severity
from flead_app.algorithms.holdout import device_held_out, holdout_mask
from flead_app.algorithms.protocol import Decision
from flead_app.algorithms.running_stats import RunningStats
from flead_app.algorithms.sgd import (
    DEFAULT_LEARNING_RATE,
    DEFAULT_PRIOR_RATE,
    LinearModel,
    accuracy,
    log_loss,
    predict_proba,
    sgd_train,
)


@dataclass(frozen=True)
class DeviceConfig:
    z_threshold: float = 2.5
    z_critical: float = 3.0
    min_history: int = 10
    train_every: int = 50
    train_interval_s: float = 60.0
    learning_rate: float = DEFAULT_LEARNING_RATE
    local_epochs: int = 1
    holdout_percent: float = 20.0
    holdout_device_percent: float = 20.0  # devices (by a hash of the id) none of whose readings trains
    prior_anomaly_rate: float = DEFAULT_PRIOR_RATE  # the initial model predicts this for every reading
    alarm_rule: str = "zrule"  # which rule raises alarms: the z-rule, or the model's probability
    alarm_probability: float = 0.5  # the model rule alarms at or above this probability

    @classmethod
    def from_settings(cls, settings: object) -> DeviceConfig:
        """The configuration from anything carrying the same-named settings (the worker and Spark share it)."""
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class GlobalParams:
    """The parameters of a global model, as a device needs them.

    >>> GlobalParams(3, np.array([1.0, 0.0, 0.0, 0.0]), -2.0).model.bias
    -2.0
    """

    version: int
    weights: np.ndarray
    bias: float

    @property
    def model(self) -> LinearModel:
        return LinearModel(np.asarray(self.weights, dtype=np.float64), float(self.bias))


def initial_model(cfg: DeviceConfig) -> LinearModel:
    """Where every model starts: zero weights, bias at the prior log-odds of an anomaly.

    >>> round(initial_model(DeviceConfig(prior_anomaly_rate=0.04)).bias, 3)
    -3.178
    """
    return LinearModel.initial(NUM_FEATURES, cfg.prior_anomaly_rate)


def initial_global(cfg: DeviceConfig) -> GlobalParams:
    """Global version 0: the initial model, known to every device and to the FedAvg agent.

    >>> v0 = initial_global(DeviceConfig())
    >>> v0.version, v0.weights.tolist(), round(v0.bias, 3)
    (0, [0.0, 0.0, 0.0, 0.0], -3.178)
    """
    m = initial_model(cfg)
    return GlobalParams(0, m.weights, m.bias)


ALARM_RULES = ("zrule", "model")
STATE_FORMAT = 2  # bump when the serialised layout changes


@dataclass(frozen=True)
class DeviceState:
    """What one device has learned: detector memory, its model, readings waiting for a round."""

    detector: DetectorState = DetectorState()
    weights: np.ndarray = field(default_factory=lambda: np.zeros(NUM_FEATURES))
    bias: float = 0.0
    model_version: int = 0
    base_global_version: int = 0  # global version the current weights descend from
    buffer_features: np.ndarray = field(default_factory=lambda: np.empty((0, NUM_FEATURES)))
    buffer_labels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))
    pending: int = 0  # readings since the last round
    last_round_at: float = 0.0  # event time of the last round (0: none yet)
    readings: int = 0
    anomalies: int = 0

    def to_dict(self) -> dict:
        """A JSON-ready dict (buffered features as float32: they are rounded features, not sums).

        >>> DeviceState.from_dict(DeviceState(readings=3).to_dict()).readings
        3
        """
        d = self.detector
        return {
            "format": STATE_FORMAT,
            "stats": [d.stats.count, d.stats.mean, d.stats.m2],
            "robust": [d.robust.count, d.robust.mean, d.robust.m2],
            "last_value": d.last_value,
            "ewm_abs_z": d.ewm_abs_z,
            "ewm_z": d.ewm_z,
            "outliers": d.outliers,
            "weights": self.weights.tolist(),
            "bias": self.bias,
            "model_version": self.model_version,
            "base_global_version": self.base_global_version,
            "buffer_features": self.buffer_features.astype(np.float32),
            "buffer_labels": self.buffer_labels,
            "pending": self.pending,
            "last_round_at": self.last_round_at,
            "readings": self.readings,
            "anomalies": self.anomalies,
        }

    @classmethod
    def from_dict(cls, d: dict) -> DeviceState:
        if d.get("format") != STATE_FORMAT:
            raise ValueError(
                f"device state of format {d.get('format')!r}, this version reads {STATE_FORMAT}: "
                "tables written by an older FLEAD must be wiped (`flead stack down --wipe`)"
            )
        (n, mean, m2), (rn, rmean, rm2) = d["stats"], d["robust"]
        detector = DetectorState(
            RunningStats(int(n), float(mean), float(m2)),
            d["last_value"],
            float(d["ewm_abs_z"]),
            RunningStats(int(rn), float(rmean), float(rm2)),
            float(d["ewm_z"]),
            int(d["outliers"]),
        )
        return cls(
            detector=detector,
            weights=np.asarray(d["weights"], dtype=np.float64),
            bias=float(d["bias"]),
            model_version=int(d["model_version"]),
            base_global_version=int(d["base_global_version"]),
            buffer_features=np.asarray(d["buffer_features"], dtype=np.float64).reshape(-1, NUM_FEATURES),
            buffer_labels=np.asarray(d["buffer_labels"], dtype=np.int8),
            pending=int(d["pending"]),
            last_round_at=float(d["last_round_at"]),
            readings=int(d["readings"]),
            anomalies=int(d["anomalies"]),
        )

    def summary(self) -> dict:
        """What ``flead device`` shows."""
        s = self.detector.stats
        return {
            "readings": self.readings,
            "mean": s.mean,
            "std": s.std,
            "anomalies": self.anomalies,
            "model_version": self.model_version,
            "base_global_version": self.base_global_version,
            "weights": self.weights.tolist(),
            "bias": self.bias,
            "pending_readings": self.pending,
            "last_round_at": self.last_round_at,
        }


@dataclass(frozen=True)
class RoundResult:
    """One local round: the device's new model and how the round's start model did on its readings."""

    trained_at: float  # event time of the message that ended the round
    model_version: int
    base_global_version: int
    weights: np.ndarray
    bias: float
    accuracy: float
    loss: float
    samples: int
    message: int = 0  # index of the message in the ``step`` call that ended the round


def round_phase(device_id: str, cfg: DeviceConfig) -> float:
    """Seconds (in [0, half the interval)) by which a device's first time-based round comes early.

    A fleet that starts together would otherwise reach its first interval together and send
    thousands of rounds in a few seconds, all starting from the same global version while the
    FedAvg agent falls behind (stale updates). A stable hash spreads them over half an interval.

    >>> round(round_phase("device_7", DeviceConfig(train_interval_s=60.0)), 2)
    1.92
    """
    return (zlib.crc32(device_id.encode()) % 1000) / 1000.0 * 0.5 * cfg.train_interval_s


def ingest(
    state: DeviceState,
    values: np.ndarray,
    labels: np.ndarray,
    now: float,
    cfg: DeviceConfig,
    holdout: np.ndarray | None = None,
    phase_s: float = 0.0,
) -> tuple[DeviceState, Scored]:
    """Score readings in order; buffer the labelled, scored, not held-out ones for training.

    ``phase_s`` (``round_phase``) moves a new device's round clock back, so that its first
    time-based round comes that much earlier.

    >>> cfg = DeviceConfig(min_history=3)
    >>> labels = np.array([0, 0, 0, 1, -1], dtype=np.int8)  # the last one is unlabelled
    >>> state, scored = ingest(DeviceState(), np.array([1.0, 1.1, 0.9, 1.0, 1.2]), labels, 100.0, cfg)
    >>> state.pending, state.buffer_labels.tolist(), scored.scored.tolist()
    (5, [1], [False, False, False, True, True])
    """
    scored = score_batch(state.detector, values, cfg.min_history)
    keep = scored.scored & (labels >= 0)
    if holdout is not None:
        keep &= ~holdout
    feats, labs = state.buffer_features, state.buffer_labels
    if keep.any():
        feats = np.concatenate((feats, scored.features[keep]))
        labs = np.concatenate((labs, labels[keep].astype(np.int8)))
    new = replace(
        state,
        detector=scored.state,
        buffer_features=feats,
        buffer_labels=labs,
        pending=state.pending + int(values.shape[0]),
        last_round_at=state.last_round_at or now - phase_s,
        readings=state.readings + int(values.shape[0]),
    )
    return new, scored


def training_due(state: DeviceState, now: float, cfg: DeviceConfig) -> bool:
    """Every ``train_every`` readings, or ``train_interval_s`` after the last round if any arrived.

    >>> cfg = DeviceConfig(train_every=50, train_interval_s=60.0)
    >>> quiet = DeviceState(pending=2, last_round_at=100.0)
    >>> training_due(DeviceState(pending=50), 0.0, cfg), training_due(quiet, 150.0, cfg)
    (True, False)
    >>> training_due(quiet, 160.0, cfg)
    True
    """
    if state.pending <= 0:
        return False
    return state.pending >= cfg.train_every or now - state.last_round_at >= cfg.train_interval_s


def round_due(state: DeviceState, now: float, cfg: DeviceConfig, requested: bool = False) -> bool:
    """Whether a message ends in a round: ``training_due``, or any readings waiting when the
    message is a request for a round (a ``control: train`` record: a quiet device, or the demo
    asking every device to train on what it holds).

    >>> round_due(DeviceState(pending=2, last_round_at=100.0), 101.0, DeviceConfig(), requested=True)
    True
    """
    return state.pending > 0 if requested else training_due(state, now, cfg)


def current_model(state: DeviceState, cfg: DeviceConfig) -> LinearModel:
    """The device's own model: its last round's weights, or the initial model before any round.

    >>> current_model(DeviceState(), DeviceConfig()).bias == initial_model(DeviceConfig()).bias
    True
    """
    if state.model_version == 0:
        return initial_model(cfg)
    return LinearModel(np.asarray(state.weights, dtype=np.float64), float(state.bias))


def train_round(
    state: DeviceState, now: float, cfg: DeviceConfig, global_params: GlobalParams | None = None
) -> tuple[DeviceState, RoundResult | None]:
    """Run one local round on the buffered readings; None when none of them carried a label.

    With ``global_params`` (the worker passes the newest global it knows, ``initial_global``
    before any) the round starts from that global model; without, it is a local-only round
    that continues from ``current_model``.

    >>> cfg = DeviceConfig(min_history=3)
    >>> state, _ = ingest(DeviceState(), np.array([1.0, 1.1, 0.9, 1.0, 1.2]), np.zeros(5, np.int8), 0.0, cfg)
    >>> state, result = train_round(state, 1.0, cfg, initial_global(cfg))
    >>> result.model_version, result.base_global_version, result.samples, state.pending
    (1, 0, 2, 0)
    """
    labels = state.buffer_labels
    if labels.shape[0] == 0:
        return replace(state, pending=0, last_round_at=now), None
    if global_params is not None:
        start = global_params.model
        base = global_params.version
    else:
        start = current_model(state, cfg)
        base = state.base_global_version
    proba = predict_proba(start, state.buffer_features)
    acc = accuracy(labels, proba)
    loss = log_loss(labels, proba)
    trained = sgd_train(start, state.buffer_features, labels, cfg.learning_rate, cfg.local_epochs)
    version = state.model_version + 1
    result = RoundResult(now, version, base, trained.weights, trained.bias, acc, loss, int(labels.shape[0]))
    new = replace(
        state,
        weights=trained.weights,
        bias=trained.bias,
        model_version=version,
        base_global_version=base,
        buffer_features=np.empty((0, NUM_FEATURES)),
        buffer_labels=np.empty(0, np.int8),
        pending=0,
        last_round_at=now,
    )
    return new, result


@dataclass(frozen=True)
class DeviceMessage:
    """What ``step`` needs of one message of a device: when it arrived and its readings."""

    received_at: float  # event time: the record's Kafka timestamp, so a replay decides the same way
    timestamps: np.ndarray  # epoch seconds of the readings (the held-out rule hashes them)
    values: np.ndarray
    labels: np.ndarray  # int8: 0, 1, or -1 for unknown
    train_now: bool = False  # a request for a round (a quiet device, or the demo's last rounds)


@dataclass(frozen=True)
class Alarm:
    """One reading an alarm rule flagged, with both rules' view of it."""

    message: int  # index of the message in the ``step`` call
    reading: int  # index of the reading in that message
    z: float  # against the device's running mean and std (the description's rule)
    probability: float  # the model's probability of an anomaly
    rule: str  # the rule that raised it: "zrule" or "model"
    severity: str  # "warning" or "critical" (by |z|)


@dataclass(frozen=True)
class MessageScores:
    """How ``step`` saw one message's readings (the evaluation replays devices to get these)."""

    z: np.ndarray
    probability: np.ndarray
    features: np.ndarray
    scored: np.ndarray  # bool: enough history to score
    heldout: np.ndarray  # bool: never trained on


@dataclass(frozen=True)
class StepResult:
    state: DeviceState
    alarms: tuple[Alarm, ...]
    updates: tuple[RoundResult, ...]
    scores: tuple[MessageScores | None, ...]  # per message; None for a request for a round


def decide(scored: Scored, proba: np.ndarray, cfg: DeviceConfig) -> np.ndarray:
    """The alarm decision, made here only: which scored readings the configured rule flags.

    >>> s = Scored(np.array([3.0, 1.0, 0.0]), np.zeros((3, NUM_FEATURES)), np.array([True, True, False]), None)
    >>> decide(s, np.array([0.1, 0.9, 0.9]), DeviceConfig()).tolist()
    [True, False, False]
    >>> decide(s, np.array([0.1, 0.9, 0.9]), DeviceConfig(alarm_rule="model")).tolist()
    [False, True, False]
    """
    if cfg.alarm_rule == "model":
        return scored.scored & (proba >= cfg.alarm_probability)
    return scored.scored & (np.abs(scored.z) > cfg.z_threshold)


def step(
    state: DeviceState,
    messages: Sequence[DeviceMessage],
    global_params: GlobalParams | None,
    device_id: str,
    cfg: DeviceConfig,
) -> StepResult:
    """Apply a device's messages in order: the new state, the alarms and the local updates.

    ``global_params`` is the newest global model known (``initial_global`` before any); it
    scores the readings and every round starts from it. None runs the device local-only: its
    own model scores and its rounds continue from it (the evaluation's baseline).
    """
    alarms: list[Alarm] = []
    updates: list[RoundResult] = []
    scores: list[MessageScores | None] = []
    phase = round_phase(device_id, cfg)
    whole_device = device_held_out(device_id, cfg.holdout_device_percent)
    for k, msg in enumerate(messages):
        if msg.train_now:
            scores.append(None)
        else:
            if whole_device:
                holdout = np.ones(msg.values.shape[0], dtype=bool)
            else:
                holdout = holdout_mask(device_id, msg.timestamps, cfg.holdout_percent)
            state, scored = ingest(state, msg.values, msg.labels, msg.received_at, cfg, holdout, phase)
            model = current_model(state, cfg) if global_params is None else global_params.model
            proba = predict_proba(model, scored.features)
            scores.append(MessageScores(scored.z, proba, scored.features, scored.scored, holdout))
            flagged = np.flatnonzero(decide(scored, proba, cfg))
            for i in flagged.tolist():
                z = float(scored.z[i])
                level = severity(z, cfg.z_threshold, cfg.z_critical) if cfg.alarm_rule == "zrule" else None
                if level is None:  # the model flagged a reading the z-rule would not
                    level = "critical" if abs(z) >= cfg.z_critical else "warning"
                alarms.append(Alarm(k, i, z, float(proba[i]), cfg.alarm_rule, level))
            if flagged.shape[0]:
                state = replace(state, anomalies=state.anomalies + int(flagged.shape[0]))
        if round_due(state, msg.received_at, cfg, requested=msg.train_now):
            state, result = train_round(state, msg.received_at, cfg, global_params)
            if result is not None:
                updates.append(replace(result, message=k))
    return StepResult(state, tuple(alarms), tuple(updates), tuple(scores))


def training_targets(labels: np.ndarray, cfg: DeviceConfig) -> np.ndarray:
    """What a model trained on a device's whole labelled history learns, per reading (-1: left out).

    The evaluation's central model learns this from the pooled training readings, so that it
    and the devices' rounds learn the same target. This learner learns the labels as they are.

    >>> training_targets(np.array([0, 1, -1], dtype=np.int8), DeviceConfig()).tolist()
    [0, 1, -1]
    """
    return np.asarray(labels, dtype=np.int8)


def decision_rule(normal_logits: np.ndarray, cfg: DeviceConfig) -> tuple[float, float, Decision]:
    """(loc, scale, decision) of a model whose logits on its normal training readings are given:
    how the evaluation judges a model trained outside the fleet (central, local-only) by the rule
    the fleet's models follow. This learner alarms at ``alarm_probability`` on the plain logit.

    >>> decision_rule(np.zeros(3), DeviceConfig(alarm_probability=0.5))
    (0.0, 1.0, Decision(threshold=0.0, refractory=0))
    """
    p = cfg.alarm_probability
    return 0.0, 1.0, Decision(float(np.log(p / (1.0 - p))), 0)


def published_decision(
    threshold: float | None, loc: float | None, scale: float | None, cfg: DeviceConfig
) -> tuple[float, float, Decision]:
    """(loc, scale, decision) of a global version from what it published; versions that publish no
    threshold are judged by ``decision_rule``.

    >>> published_decision(None, None, None, DeviceConfig())[2].threshold
    0.0
    """
    if threshold is None:
        return decision_rule(np.empty(0), cfg)
    return float(loc or 0.0), float(scale or 1.0), Decision(float(threshold), 0)
