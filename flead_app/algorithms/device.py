"""One device's detection-and-training state machine, as pure functions.

The detector agent is a thin shell around this module: it loads a ``DeviceState`` from the
device's table row, calls ``ingest`` with the readings of one message, publishes anomalies,
and when ``training_due`` says so, runs ``train_round`` and publishes the local update.

A federated round (the worker's) starts from the newest global model the device knows: version
0 is ``initial_global`` (zero weights, bias at the prior log-odds), the same for every device
and for the FedAvg agent. The update reports the version it started from, and the FedAvg agent
averages each update's change from that version (``aggregation.federated_step``), as in
buffered asynchronous FL (FedBuff): a round never continues from the device's own previous
weights, whose change is already in an earlier update. A local-only round (``global_params``
None: the evaluation's baseline) continues from the device's own weights, starting from the
same initial model. Accuracy and loss of a round are measured on the round's readings *before*
training on them (the model the round starts from, scored on data it has not seen), so they are
honest, if noisy, estimates.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace

import numpy as np
import orjson

from flead_app.algorithms.detection import NUM_FEATURES, DetectorState, Scored, score_batch
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
    prior_anomaly_rate: float = DEFAULT_PRIOR_RATE  # the initial model predicts this for every reading

    @classmethod
    def from_settings(cls, settings: object) -> DeviceConfig:
        """The configuration from anything carrying the same-named settings (the worker and Spark share it)."""
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class GlobalParams:
    """The parameters of a global model, as a device needs them."""

    version: int
    weights: np.ndarray
    bias: float


def initial_model(cfg: DeviceConfig) -> LinearModel:
    """Where every model starts: zero weights, bias at the prior log-odds of an anomaly."""
    return LinearModel.initial(NUM_FEATURES, cfg.prior_anomaly_rate)


def initial_global(cfg: DeviceConfig) -> GlobalParams:
    """Global version 0: the initial model, known to every device and to the FedAvg agent."""
    m = initial_model(cfg)
    return GlobalParams(0, m.weights, m.bias)


@dataclass(frozen=True)
class DeviceState:
    detector: DetectorState = DetectorState()
    weights: np.ndarray = field(default_factory=lambda: np.zeros(NUM_FEATURES))
    bias: float = 0.0
    model_version: int = 0
    base_global_version: int = 0  # global version the current weights descend from
    buffer_features: np.ndarray = field(default_factory=lambda: np.empty((0, NUM_FEATURES)))
    buffer_labels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))
    pending: int = 0  # readings since the last round
    last_round_at: float = 0.0  # processing time of the last round (0: none yet)
    readings: int = 0
    anomalies: int = 0
    partition: int = -1  # Kafka position of the last message applied, to skip replays
    offset: int = -1
    #: outputs of recent messages whose sends are not acknowledged yet (flead_app.agents.outbox),
    #: so a replay that skips their message can send them again
    outbox: tuple = ()

    def to_bytes(self) -> bytes:
        s = self.detector.stats
        return orjson.dumps(
            {
                "n": s.count,
                "mean": s.mean,
                "m2": s.m2,
                "last": self.detector.last_value,
                "ewm": self.detector.ewm_abs_z,
                "rn": self.detector.robust.count,
                "rmean": self.detector.robust.mean,
                "rm2": self.detector.robust.m2,
                "ez": self.detector.ewm_z,
                "out": self.detector.outliers,
                "w": self.weights.tolist(),
                "b": self.bias,
                "v": self.model_version,
                "g": self.base_global_version,
                "bf": self.buffer_features.astype(np.float32),
                "bl": self.buffer_labels,
                "pending": self.pending,
                "t": self.last_round_at,
                "readings": self.readings,
                "anomalies": self.anomalies,
                "p": self.partition,
                "o": self.offset,
                "ob": self.outbox,
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> DeviceState:
        d = orjson.loads(raw)
        feats = np.asarray(d["bf"], dtype=np.float64).reshape(-1, NUM_FEATURES)
        stats = RunningStats(d["n"], d["mean"], d["m2"])
        # rows written before the robust baseline existed start it from the plain one
        robust = RunningStats(d["rn"], d["rmean"], d["rm2"]) if "rn" in d else stats
        return cls(
            detector=DetectorState(stats, d["last"], d["ewm"], robust, float(d.get("ez", 0.0)), int(d.get("out", 0))),
            weights=np.asarray(d["w"], dtype=np.float64),
            bias=float(d["b"]),
            model_version=int(d["v"]),
            base_global_version=int(d["g"]),
            buffer_features=feats,
            buffer_labels=np.asarray(d["bl"], dtype=np.int8),
            pending=int(d["pending"]),
            last_round_at=float(d["t"]),
            readings=int(d["readings"]),
            anomalies=int(d["anomalies"]),
            partition=int(d["p"]),
            offset=int(d["o"]),
            outbox=tuple(tuple(e) for e in d.get("ob", ())),
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
    model_version: int
    base_global_version: int
    weights: np.ndarray
    bias: float
    accuracy: float
    loss: float
    samples: int


def round_phase(device_id: str, cfg: DeviceConfig) -> float:
    """Seconds (in [0, half the interval)) by which a device's first time-based round comes early.

    A fleet that starts together would otherwise reach its first interval together and send
    thousands of rounds in a few seconds, all starting from the same global version while the
    FedAvg agent falls behind (stale updates). A stable hash spreads them over half an interval.
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
    time-based round comes that much earlier."""
    scored = score_batch(state.detector, values, cfg.min_history)
    anomalous = scored.scored & (np.abs(scored.z) > cfg.z_threshold)
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
        anomalies=state.anomalies + int(anomalous.sum()),
    )
    return new, scored


def training_due(state: DeviceState, now: float, cfg: DeviceConfig) -> bool:
    """Every ``train_every`` readings, or ``train_interval_s`` after the last round if any arrived."""
    if state.pending <= 0:
        return False
    return state.pending >= cfg.train_every or now - state.last_round_at >= cfg.train_interval_s


def round_due(state: DeviceState, now: float, cfg: DeviceConfig, requested: bool = False) -> bool:
    """Whether a message ends in a round: ``training_due``, or any readings waiting when the
    message is a request for a round (a ``control: train`` record: a quiet device, or the demo
    asking every device to train on what it holds)."""
    return state.pending > 0 if requested else training_due(state, now, cfg)


def current_model(state: DeviceState, cfg: DeviceConfig) -> LinearModel:
    """The device's own model: its last round's weights, or the initial model before any round."""
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
    """
    labels = state.buffer_labels
    if labels.shape[0] == 0:
        return replace(state, pending=0, last_round_at=now), None
    if global_params is not None:
        start = LinearModel(np.asarray(global_params.weights, dtype=np.float64), float(global_params.bias))
        base = global_params.version
    else:
        start = current_model(state, cfg)
        base = state.base_global_version
    proba = predict_proba(start, state.buffer_features)
    acc = accuracy(labels, proba)
    loss = log_loss(labels, proba)
    trained = sgd_train(start, state.buffer_features, labels, cfg.learning_rate, cfg.local_epochs)
    version = state.model_version + 1
    result = RoundResult(version, base, trained.weights, trained.bias, acc, loss, int(labels.shape[0]))
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
