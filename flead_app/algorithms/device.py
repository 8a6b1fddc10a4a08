"""One device's detection-and-training state machine, as pure functions.

``step`` is the whole of it for the worker: given a device's state, the messages that arrived
for it, the newest global model the worker knows and the configuration, it returns the new
state, the alarms to publish, the local updates to send and how it scored each reading. The
detector agent loads the state, calls ``step`` once per micro-batch with the device's messages
in order, sends what it returns and stores the state; the Spark evaluation replays devices
through the same ``step``, so both see the same features, decisions and rounds.

Inside, each message is scored (``ingest``): the z-rule's z against the device's running mean
and std and ``detection``'s four features (``detection.score_batch``), then the six incident
statistics and the calibration of all ten (``incident_features.score``, docs/learning.md says
why ten). The model's logit is standardised by the global version's ``score_loc`` and
``score_scale`` and the alarm rule decides once per reading (``decide``: the model's
standardised score above the threshold, or the description's |z| rule, then the refractory
period). The threshold is the published one moved toward the budget quantile of the device's
own scores (``decision.device_threshold`` over ``DeviceState.own_histogram``, which every step
adds its scores to; ``threshold_scope="fleet"`` applies the published one as it is). Labelled
readings that are neither held out (``holdout_mask``) nor on a held-out device
(``device_held_out``) become training samples: normal readings at once, the readings of a
labelled window when it closes, without its first ``positive_skip`` share
(``training_targets`` says the same for a whole history). A round runs when one is due
(``round_due``: every ``train_every`` readings, ``train_interval_s`` of event time, or on a
request): SGD from the global model (``train_round``), reporting beside the new weights what the
server needs: the gradient and Hessian of the round's log-loss at the start model (online
Newton), the histogram of the start model's standardised scores on the round's normal samples
and the moments of their features (the threshold).

A federated round starts from the newest global model the device knows: version 0 is
``initial_global`` (zero weights, bias at the prior log-odds, no threshold yet), the same for
every device and for the FedAvg agent. A local-only round (``global_params`` None: the
evaluation's baseline) continues from the device's own weights, from the same initial model,
and the device keeps its own threshold (a histogram of its own rounds' raw logits). Accuracy and
loss of a round are measured on the round's readings *before* training on them.

>>> cfg = DeviceConfig(train_every=30, alarm_rule="zrule", refractory=0, holdout_device_percent=0)
>>> x = np.r_[1.0 + 0.1 * np.sin(np.arange(30.0)), [9.0], np.ones(5)]
>>> msg = DeviceMessage(received_at=100.0, timestamps=np.arange(36.0) * 60, values=x,
...                     labels=np.r_[np.zeros(30), [1], np.zeros(5)].astype(np.int8))
>>> out = step(DeviceState(), [msg], initial_global(cfg), "device_1", cfg)
>>> [(a.reading, a.rule, a.severity) for a in out.alarms]
[(30, 'zrule', 'critical')]
>>> [(u.model_version, u.base_global_version, u.positives) for u in out.updates], out.state.readings
([(1, 0, 1)], 36)
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from flead_app.algorithms.decision import (
    NEVER,
    TAIL_READINGS,
    ScoreRule,
    block_thresholds,
    central_rule,
    dense_histogram,
    histogram_window,
    merge_histograms,
    moments_of,
    refractory_alarms,
    score_histogram,
    sparse_histogram,
    standardise,
    threshold_for_budget,
)
from flead_app.algorithms.detection import DetectorState, score_batch, severity
from flead_app.algorithms.holdout import device_held_out, holdout_mask
from flead_app.algorithms.incident_features import NUM_FEATURES, IncidentState
from flead_app.algorithms.incident_features import score as feature_score
from flead_app.algorithms.metrics import label_windows
from flead_app.algorithms.protocol import Decision
from flead_app.algorithms.running_stats import RunningStats
from flead_app.algorithms.second_order import round_curvature
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
    """What a device's step depends on (the worker and Spark build it from the same settings)."""

    z_threshold: float = 2.5
    z_critical: float = 3.0
    min_history: int = 10
    train_every: int = 50
    train_interval_s: float = 60.0
    learning_rate: float = DEFAULT_LEARNING_RATE
    local_epochs: int = 1
    holdout_percent: float = 20.0
    holdout_device_percent: float = 20.0  # a stable share of devices that never train (they score and alarm)
    holdout_device_salt: str = ""
    prior_anomaly_rate: float = DEFAULT_PRIOR_RATE  # the initial model predicts this for every reading
    alarm_rule: str = "model"  # which rule raises alarms: the model's standardised score, or the z-rule
    alarm_budget: float = 0.01  # share of normal readings above the model's threshold
    refractory: int = 100  # readings after an alarm in which the device raises no other (either rule)
    positive_skip: float = 0.5  # share of each labelled window, from its start, left out of training
    threshold_tail_readings: float = TAIL_READINGS  # normal readings above the threshold in its window
    threshold_scope: str = "device"  # "device": the fleet threshold moved toward the device's own quantile; "fleet"

    @classmethod
    def from_settings(cls, settings: object) -> DeviceConfig:
        """The configuration from anything carrying the same-named settings (the worker and Spark share it).

        >>> from flead_app.settings import Settings
        >>> DeviceConfig.from_settings(Settings()) == DeviceConfig()
        True
        """
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})

    @property
    def histogram_window(self) -> float:
        """Normal readings a threshold rests on (``decision.histogram_window``)."""
        return histogram_window(self.alarm_budget, self.threshold_tail_readings)


@dataclass(frozen=True)
class GlobalParams:
    """A global model as a device needs it: parameters and the decision rule the server published.

    ``threshold`` is on the standardised score (logit - ``score_loc``) / ``score_scale``; None
    until the server has normal scores (versions 0 and 1).

    >>> g = GlobalParams(3, np.zeros(NUM_FEATURES), -2.0, threshold=2.5, score_loc=-2.0, score_scale=0.5)
    >>> g.model.bias, g.rule(DeviceConfig()).refractory
    (-2.0, 100)
    """

    version: int
    weights: np.ndarray
    bias: float
    threshold: float | None = None
    score_loc: float | None = None
    score_scale: float | None = None

    @property
    def model(self) -> LinearModel:
        return LinearModel(np.asarray(self.weights, dtype=np.float64), float(self.bias))

    def rule(self, cfg: DeviceConfig) -> ScoreRule:
        return ScoreRule.published(self.weights, self.bias, self.threshold, self.score_loc, self.score_scale,
                                   cfg.refractory)  # fmt: skip

    @classmethod
    def from_record(cls, model: object) -> GlobalParams:
        """From a ``models.GlobalModel`` (its published fields).

        >>> from flead_app.models import GlobalModel
        >>> m = GlobalModel(2, 2, [0.1] * 10, -3.0, 0.9, 5, 100, "2025-01-01T00:00:00.000Z", threshold=2.0,
        ...                 score_loc=-3.2, score_scale=0.4)
        >>> GlobalParams.from_record(m).threshold
        2.0
        """
        m = model
        return cls(
            m.global_version, np.asarray(m.weights, dtype=np.float64), float(m.bias),  # type: ignore[attr-defined]
            m.threshold, m.score_loc, m.score_scale,  # type: ignore[attr-defined]
        )  # fmt: skip


def initial_model(cfg: DeviceConfig) -> LinearModel:
    """Where every model starts: zero weights, bias at the prior log-odds of an anomaly.

    >>> round(initial_model(DeviceConfig(prior_anomaly_rate=0.04)).bias, 3)
    -3.178
    """
    return LinearModel.initial(NUM_FEATURES, cfg.prior_anomaly_rate)


def initial_global(cfg: DeviceConfig) -> GlobalParams:
    """Global version 0: the initial model, known to every device and to the FedAvg agent; no threshold.

    >>> v0 = initial_global(DeviceConfig())
    >>> v0.version, v0.weights.tolist() == [0.0] * NUM_FEATURES, round(v0.bias, 3), v0.threshold
    (0, True, -3.178, None)
    """
    m = initial_model(cfg)
    return GlobalParams(0, m.weights, m.bias)


ALARM_RULES = ("zrule", "model")
STATE_FORMAT = 3  # bump when the serialised layout changes


def _empty_rows() -> np.ndarray:
    return np.empty((0, NUM_FEATURES))


@dataclass(frozen=True)
class DeviceState:
    """What one device has learned: detector and feature memory, its model, readings waiting for a round.

    Size (``to_dict``): the z-rule's detector ~10 numbers, the features' 520 (``IncidentState``),
    the model 11, the released training samples (up to ~``train_every`` x 10 between rounds) and
    the trainable readings of an open labelled window (window length x 10 while one is open).
    """

    detector: DetectorState = DetectorState()
    features: IncidentState = IncidentState()
    weights: np.ndarray = field(default_factory=lambda: np.zeros(NUM_FEATURES))
    bias: float = 0.0
    model_version: int = 0
    base_global_version: int = 0  # global version the current weights descend from
    buffer_features: np.ndarray = field(default_factory=_empty_rows)  # released training samples
    buffer_labels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))
    window_length: int = 0  # readings of the open labelled window so far (0: none open)
    window_features: np.ndarray = field(default_factory=_empty_rows)  # its trainable readings' features
    window_positions: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # their places in it
    since_alarm: int = NEVER  # readings since the device's last alarm (the refractory period)
    pending: int = 0  # readings since the last round
    last_round_at: float = 0.0  # event time of the last round (0: none yet)
    readings: int = 0
    anomalies: int = 0
    #: local-only runs only (``global_params`` None): the device's own rounds' logit histogram
    local_histogram: Mapping[int, float] = field(default_factory=dict)
    #: the standardised scores the global model's rule was applied to on this device (its own share of the budget)
    own_histogram: Mapping[int, float] = field(default_factory=dict)

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
            "features": self.features.to_dict(),
            "weights": self.weights.tolist(),
            "bias": self.bias,
            "model_version": self.model_version,
            "base_global_version": self.base_global_version,
            "buffer_features": self.buffer_features.astype(np.float32),
            "buffer_labels": self.buffer_labels,
            "window_length": self.window_length,
            "window_features": self.window_features.astype(np.float32),
            "window_positions": self.window_positions,
            "since_alarm": self.since_alarm,
            "pending": self.pending,
            "last_round_at": self.last_round_at,
            "readings": self.readings,
            "anomalies": self.anomalies,
            "local_histogram": {str(k): v for k, v in self.local_histogram.items()},
            "own_histogram": {str(k): v for k, v in self.own_histogram.items()},
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
            features=IncidentState.from_dict(d["features"]),
            weights=np.asarray(d["weights"], dtype=np.float64),
            bias=float(d["bias"]),
            model_version=int(d["model_version"]),
            base_global_version=int(d["base_global_version"]),
            buffer_features=np.asarray(d["buffer_features"], dtype=np.float64).reshape(-1, NUM_FEATURES),
            buffer_labels=np.asarray(d["buffer_labels"], dtype=np.int8),
            window_length=int(d["window_length"]),
            window_features=np.asarray(d["window_features"], dtype=np.float64).reshape(-1, NUM_FEATURES),
            window_positions=np.asarray(d["window_positions"], dtype=np.int64),
            since_alarm=int(d["since_alarm"]),
            pending=int(d["pending"]),
            last_round_at=float(d["last_round_at"]),
            readings=int(d["readings"]),
            anomalies=int(d["anomalies"]),
            local_histogram={int(k): float(v) for k, v in d["local_histogram"].items()},
            own_histogram={int(k): float(v) for k, v in d.get("own_histogram", {}).items()},
        )

    def summary(self) -> dict:
        """What ``flead device`` shows.

        >>> DeviceState(readings=4).summary()["readings"]
        4
        """
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
            "buffered_samples": int(self.buffer_labels.shape[0]),
            "open_window_readings": self.window_length,
            "readings_since_alarm": self.since_alarm,
            "last_round_at": self.last_round_at,
        }


@dataclass(frozen=True)
class RoundResult:
    """One local round: the device's new model, how its start model did, and what the server needs.

    ``base_params`` (the start model's weights then bias) and ``curvature`` (gradient then the
    Hessian's upper triangle of the round's summed log-loss there: 11 + 66 numbers) feed the
    online Newton server; ``normal_histogram`` (non-empty bins of the start model's standardised
    scores on the round's normal samples; empty while it has no scale) and ``normal_moments``
    (``decision.moments_of`` those samples' features: 66 numbers) feed the threshold.
    """

    trained_at: float  # event time of the message that ended the round
    model_version: int
    base_global_version: int
    weights: np.ndarray
    bias: float
    accuracy: float
    loss: float
    samples: int
    message: int = 0  # index of the message in the ``step`` call that ended the round
    positives: int = 0
    base_params: np.ndarray | None = None
    curvature: np.ndarray | None = None
    normal_histogram: Mapping[int, float] = field(default_factory=dict)
    normal_moments: np.ndarray | None = None


def round_phase(device_id: str, cfg: DeviceConfig) -> float:
    """Seconds (in [0, half the interval)) by which a device's first time-based round comes early.

    A fleet that starts together would otherwise reach its first interval together and send
    thousands of rounds in a few seconds, all starting from the same global version while the
    FedAvg agent falls behind (stale updates). A stable hash spreads them over half an interval.

    >>> round(round_phase("device_7", DeviceConfig(train_interval_s=60.0)), 2)
    1.92
    """
    return (zlib.crc32(device_id.encode()) % 1000) / 1000.0 * 0.5 * cfg.train_interval_s


def training_targets(labels: np.ndarray, cfg: DeviceConfig) -> np.ndarray:
    """The learner's training target for a whole labelled history: 1, 0, or -1 (never a sample).

    A labelled window (a run of label 1) trains as positives without its first
    ``positive_skip`` share (NAB's windows are centred on the incident: their first half precedes
    it and no causal detector sees it); normal readings train as 0; unknown labels (-1) and the
    skipped start of windows are -1. A model trained centrally must learn this target to be
    compared with the federated one; drop the readings ``step`` could not score or that are held
    out (``MessageScores.scored`` and ``heldout``) as well. ``step`` releases the same samples as
    each window closes (a window still open at the end of a history counts here as closed).

    >>> training_targets(np.array([0, 1, 1, 1, 1, 0, -1, 1, 1], np.int8), DeviceConfig(positive_skip=0.5)).tolist()
    [0, -1, -1, 1, 1, 0, -1, -1, 1]
    """
    labels = np.asarray(labels)
    t = np.where(labels == 1, 1, np.where(labels == 0, 0, -1)).astype(np.int8)
    for s, e in label_windows((labels == 1).astype(np.int8)):
        t[s : s + int(math.floor((e - s) * cfg.positive_skip))] = -1
    return t


@dataclass(frozen=True)
class Ingested:
    """Per reading of one ``ingest``: the z-rule's view and the model's features."""

    z: np.ndarray  # against the running mean and std of every reading before (the description's rule)
    z_scored: np.ndarray  # bool: the z-rule had enough history
    features: np.ndarray  # (k, NUM_FEATURES) calibrated features
    scored: np.ndarray  # bool: the model may score it (enough history for every feature)


def _close_window(state: DeviceState, cfg: DeviceConfig) -> np.ndarray:
    """The trainable positives of the window that just closed: all but its first ``positive_skip`` share."""
    first = int(math.floor(state.window_length * cfg.positive_skip))
    return state.window_features[state.window_positions >= first]


def score_readings(
    state: DeviceState, timestamps: np.ndarray, values: np.ndarray, cfg: DeviceConfig
) -> tuple[DeviceState, Ingested]:
    """Score readings in order against the device's history (z-rule and the ten features); nothing is buffered.

    >>> state, seen = score_readings(DeviceState(), np.arange(12.0), np.ones(12), DeviceConfig())
    >>> seen.features.shape, seen.scored.tolist().count(True), state.features.count
    ((12, 10), 2, 12)
    """
    det = score_batch(state.detector, values, cfg.min_history)
    inc = feature_score(state.features, timestamps, values, det.features)
    return replace(state, detector=det.state, features=inc.state), Ingested(det.z, det.scored, inc.features,
                                                                           inc.scored & det.scored)  # fmt: skip


def release(
    state: DeviceState, seen: Ingested, labels: np.ndarray, cfg: DeviceConfig, holdout: np.ndarray | None = None
) -> DeviceState:
    """Buffer the trainable ones of scored readings: normal ones at once, a labelled window's when it
    closes (the first reading not labelled 1), without its first ``positive_skip`` share.

    >>> labels = np.r_[np.zeros(20), np.ones(4), [0, -1]].astype(np.int8)
    >>> seen = Ingested(np.zeros(26), np.ones(26, bool), np.zeros((26, NUM_FEATURES)), np.ones(26, bool))
    >>> st = release(DeviceState(), seen, labels, DeviceConfig(positive_skip=0.5))
    >>> st.buffer_labels.tolist().count(1), st.buffer_labels.tolist().count(0)
    (2, 21)
    """
    return replace(state, **_released(state, seen, labels, cfg, holdout))


def _released(state: DeviceState, seen: Ingested, labels: np.ndarray, cfg: DeviceConfig, holdout: np.ndarray | None
              ) -> dict:  # fmt: skip
    """``release``'s new buffer and window fields (``step`` applies them with its other fields at once)."""
    labels = np.asarray(labels)
    feats = seen.features
    train = seen.scored & (labels >= 0)
    if holdout is not None:
        train &= ~np.asarray(holdout, dtype=bool)
    # released samples in reading order (a window's positives just before the reading that closed it),
    # so that how readings are split into messages does not change a round's samples or their order
    xs, ps = [], []
    wlen, wx, wpos = state.window_length, state.window_features, state.window_positions
    if wlen or (labels == 1).any():
        rows: list[int] = []  # trainable readings of the open window in this batch
        for i, lab in enumerate(labels.tolist()):
            if lab == 1:
                if train[i]:
                    rows.append(i)
                    wpos = np.append(wpos, wlen)
                wlen += 1
                continue
            if wlen:  # the window closed before reading i
                wx = np.concatenate((wx, feats[rows]))
                xs.append(_close_window(replace(state, window_length=wlen, window_features=wx,
                                                window_positions=wpos), cfg))  # fmt: skip
                ps.append(np.full(xs[-1].shape[0], i - 0.5))
                wlen, wx, wpos, rows = 0, _empty_rows(), np.empty(0, np.int64), []
        if rows:
            wx = np.concatenate((wx, feats[rows]))
    positives = sum(x.shape[0] for x in xs)
    normal = np.flatnonzero(train & (labels == 0))
    if positives or normal.shape[0]:
        if positives:
            order = np.argsort(np.concatenate((*ps, normal.astype(np.float64))), kind="stable")
            new_x = np.concatenate((*xs, feats[normal]))[order]
            new_y = np.concatenate((np.ones(positives, np.int8), np.zeros(normal.shape[0], np.int8)))[order]
        else:
            new_x, new_y = feats[normal], np.zeros(normal.shape[0], np.int8)
        buf_x = np.concatenate((state.buffer_features, new_x)) if state.buffer_labels.shape[0] else new_x
        buf_y = np.concatenate((state.buffer_labels, new_y)) if state.buffer_labels.shape[0] else new_y
    else:
        buf_x, buf_y = state.buffer_features, state.buffer_labels
    return {"buffer_features": buf_x, "buffer_labels": buf_y, "window_length": wlen, "window_features": wx,
            "window_positions": wpos}  # fmt: skip


def ingest(
    state: DeviceState,
    timestamps: np.ndarray,
    values: np.ndarray,
    labels: np.ndarray,
    now: float,
    cfg: DeviceConfig,
    holdout: np.ndarray | None = None,
    phase_s: float = 0.0,
) -> tuple[DeviceState, Ingested]:
    """Score readings in order (``score_readings``) and release the trainable ones (``release``).

    ``labels``: 1 in a labelled window, 0 normal, -1 unknown (never trains); ``holdout``: True
    for readings no model may train on. ``phase_s`` (``round_phase``) moves a new device's round
    clock back, so that its first time-based round comes that much earlier.

    >>> cfg = DeviceConfig(positive_skip=0.5)
    >>> labels = np.r_[np.zeros(20), np.ones(4), [0, -1]].astype(np.int8)
    >>> state, seen = ingest(DeviceState(), np.arange(26.0), np.ones(26), labels, 100.0, cfg)
    >>> state.pending, state.buffer_labels.tolist().count(1), int(seen.scored.sum())
    (26, 2, 16)
    """
    k = int(np.asarray(values).shape[0])
    state, seen = score_readings(state, timestamps, values, cfg)
    state = release(state, seen, labels, cfg, holdout)
    state = replace(state, pending=state.pending + k, last_round_at=state.last_round_at or now - phase_s,
                    readings=state.readings + k)  # fmt: skip
    return state, seen


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


def local_rule(state: DeviceState, cfg: DeviceConfig) -> ScoreRule:
    """The decision rule of the device's own model (local-only runs): its logit against the budget
    quantile of its own rounds' normal logits (no standardisation: loc 0, scale 1).

    >>> local_rule(DeviceState(), DeviceConfig()).threshold is None  # no round yet: no alarm
    True
    """
    m = current_model(state, cfg)
    thr = threshold_for_budget(dense_histogram(state.local_histogram), cfg.alarm_budget)
    return ScoreRule(m.weights, m.bias, 0.0, 1.0, thr if math.isfinite(thr) else None, cfg.refractory)


def train_round(
    state: DeviceState, now: float, cfg: DeviceConfig, global_params: GlobalParams | None = None
) -> tuple[DeviceState, RoundResult | None]:
    """Run one local round on the released samples; None when no sample is waiting.

    With ``global_params`` (the worker passes the newest global it knows, ``initial_global``
    before any) the round starts from that global model; without, it is a local-only round
    that continues from ``current_model`` and adds to the device's own threshold histogram.
    The samples are visited in an order shuffled by a seed of (round, samples, start version).

    >>> state = DeviceState(buffer_features=np.zeros((3, NUM_FEATURES)), buffer_labels=np.array([0, 0, 1], np.int8))
    >>> state, r = train_round(state, 1.0, DeviceConfig(), initial_global(DeviceConfig()))
    >>> r.model_version, r.samples, r.positives, r.curvature.shape, float(r.normal_moments[0]), state.pending
    (1, 3, 1, (77,), 2.0, 0)
    """
    y = state.buffer_labels
    if y.shape[0] == 0:
        return replace(state, pending=0, last_round_at=now), None
    x = state.buffer_features
    if global_params is not None:
        start, base = global_params.model, global_params.version
        loc, scale = global_params.score_loc, global_params.score_scale
    else:
        start, base = current_model(state, cfg), state.base_global_version
        loc, scale = 0.0, 1.0
    if y.shape[0] > 1:
        order = np.random.default_rng((state.model_version, y.shape[0], base)).permutation(y.shape[0])
        x, y = x[order], y[order]
    proba = predict_proba(start, x)
    params = np.append(start.weights, start.bias)
    normal = y == 0
    s = standardise(x[normal] @ start.weights + start.bias, loc, scale)
    hist = sparse_histogram(score_histogram(s)) if loc is not None and scale is not None else {}
    trained = sgd_train(start, x, y, cfg.learning_rate, cfg.local_epochs)
    version = state.model_version + 1
    result = RoundResult(
        trained_at=now, model_version=version, base_global_version=base, weights=trained.weights,
        bias=trained.bias, accuracy=accuracy(y, proba), loss=log_loss(y, proba), samples=int(y.shape[0]),
        positives=int(y.sum()), base_params=params, curvature=round_curvature(params, x, y).packed(),
        normal_histogram=hist, normal_moments=moments_of(x[normal]) if normal.any() else None,
    )  # fmt: skip
    local = state.local_histogram
    if global_params is None and hist:
        local = sparse_histogram(merge_histograms(dense_histogram(local), [dense_histogram(hist)],
                                                  cfg.histogram_window))  # fmt: skip
    new = replace(
        state,
        weights=trained.weights,
        bias=trained.bias,
        model_version=version,
        base_global_version=base,
        buffer_features=_empty_rows(),
        buffer_labels=np.empty(0, np.int8),
        pending=0,
        last_round_at=now,
        local_histogram=local,
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
    probability: float  # the model's probability of an anomaly, sigmoid(logit)
    rule: str  # the rule that raised it: "zrule" or "model"
    severity: str  # "warning" or "critical" (by |z|)
    score: float = math.nan  # the model's standardised score (what its threshold applies to)


@dataclass(frozen=True)
class MessageScores:
    """How ``step`` saw one message's readings (the evaluation replays devices to get these)."""

    z: np.ndarray
    probability: np.ndarray  # sigmoid of the scoring model's logit
    features: np.ndarray
    scored: np.ndarray  # bool: enough history to score
    heldout: np.ndarray  # bool: never trained on (a held-out reading, or any reading of a held-out device)
    score: np.ndarray = field(default_factory=lambda: np.empty(0))  # standardised score; NaN: none yet
    device_heldout: bool = False  # the device is held out: none of its readings trains
    threshold: float | None = None  # the threshold the score was compared with (None: no model alarm)


@dataclass(frozen=True)
class StepResult:
    state: DeviceState
    alarms: tuple[Alarm, ...]
    updates: tuple[RoundResult, ...]
    scores: tuple[MessageScores | None, ...]  # per message; None for a request for a round


def decide(seen: Ingested, score: np.ndarray, threshold: float | np.ndarray | None, since_alarm: int,
           cfg: DeviceConfig) -> tuple[np.ndarray, int]:  # fmt: skip
    """The alarm decision, made here only: which readings the configured rule flags, after the
    refractory period; returns them and the readings since the last alarm.

    "model": a standardised score above ``threshold`` (one, or one per reading; none while it is None);
    "zrule": the description's |z| > ``z_threshold``. ``refractory`` 0 gives the description's
    z-rule exactly (an alarm per reading).

    >>> seen = Ingested(np.array([3.0, 3.0, 0.0]), np.ones(3, bool), np.zeros((3, NUM_FEATURES)), np.ones(3, bool))
    >>> decide(seen, np.array([0.1, 4.0, 4.0]), 2.0, NEVER, DeviceConfig(alarm_rule="zrule", refractory=0))
    (array([ True,  True, False]), 2)
    >>> decide(seen, np.array([0.1, 4.0, 4.0]), 2.0, NEVER, DeviceConfig(alarm_rule="model", refractory=100))
    (array([False,  True, False]), 2)
    """
    if cfg.alarm_rule == "model":
        if threshold is None:
            candidates = np.zeros(seen.scored.shape[0], dtype=bool)
        else:
            candidates = seen.scored & (score > threshold)  # NaN (no scale yet) is never above it
    else:
        candidates = seen.z_scored & (np.abs(seen.z) > cfg.z_threshold)
    return refractory_alarms(candidates, since_alarm, cfg.refractory)


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
    own model and threshold score and its rounds continue from it (the evaluation's baseline).
    A held-out device (``holdout_device_percent``) scores and alarms but never buffers a reading.

    The readings of all messages are scored and decided in one pass (features, the refractory
    period and the rule do not depend on how readings are split into messages, and the global
    model is the same for the whole call); samples are released up to each message that ends in
    a round. So the result is the same as one call per message, at the cost of one.
    """
    if global_params is None and len(messages) > 1:  # the local rule changes with every round
        return _one_at_a_time(state, messages, device_id, cfg)
    alarms: list[Alarm] = []
    updates: list[RoundResult] = []
    scores: list[MessageScores | None] = [None] * len(messages)
    phase = round_phase(device_id, cfg)
    held_device = device_held_out(device_id, cfg.holdout_device_percent, cfg.holdout_device_salt)
    rule = local_rule(state, cfg) if global_params is None else global_params.rule(cfg)
    data = [k for k, m in enumerate(messages) if not m.train_now]
    ends = np.cumsum([messages[k].values.shape[0] for k in data]).tolist()
    changes: dict = {}  # the state's new fields, applied at once (``replace`` is not free on the hot path)
    if data:
        parts = [messages[k] for k in data]
        ts = np.concatenate([m.timestamps for m in parts]) if len(parts) > 1 else parts[0].timestamps
        xs = np.concatenate([m.values for m in parts]) if len(parts) > 1 else parts[0].values
        labels = np.concatenate([m.labels for m in parts]) if len(parts) > 1 else parts[0].labels
        n = xs.shape[0]
        holdout = np.ones(n, bool) if held_device else holdout_mask(device_id, ts, cfg.holdout_percent)
        det = score_batch(state.detector, xs, cfg.min_history)
        inc = feature_score(state.features, ts, xs, det.features)
        seen = Ingested(det.z, det.scored, inc.features, inc.scored & det.scored)
        logits = rule.logits(seen.features)
        s = standardise(logits, rule.loc, rule.scale)
        s[~seen.scored] = np.nan
        proba = predict_proba(LinearModel(rule.weights, rule.bias), seen.features)
        begins = [0, *ends[:-1]]
        thresholds: list[float | None] = [rule.threshold] * len(data)
        limit: float | np.ndarray | None = rule.threshold
        if global_params is not None and rule.threshold is not None:
            # one threshold per message, from the scores decided before it (``decision.device_thresholds``)
            thresholds, own = block_thresholds(  # type: ignore[assignment]
                [rule.threshold] * len(data), dense_histogram(state.own_histogram),
                [s[begins[j] : ends[j]] for j in range(len(data))], cfg.alarm_budget, cfg.histogram_window,
                move=cfg.threshold_scope == "device",
            )  # fmt: skip
            if own.any():
                changes["own_histogram"] = sparse_histogram(own)
            limit = thresholds[0] if len(data) == 1 else np.repeat(np.asarray(thresholds, dtype=np.float64),
                                                                   np.diff([0, *ends]))  # fmt: skip
        flagged, since = decide(seen, s, limit, state.since_alarm, cfg)
        hits = np.flatnonzero(flagged)
        if hits.shape[0]:
            which = np.searchsorted(ends, hits, side="right")  # the message of each alarm
            for i, j in zip(hits.tolist(), which.tolist(), strict=True):
                z = float(seen.z[i])
                level = severity(z, cfg.z_threshold, cfg.z_critical) if cfg.alarm_rule == "zrule" else None
                if level is None:  # the model flagged a reading the z-rule would not
                    level = "critical" if abs(z) >= cfg.z_critical else "warning"
                alarms.append(Alarm(data[j], i - begins[j], z, float(proba[i]), cfg.alarm_rule, level, float(s[i])))
        for j, k in enumerate(data):
            lo, hi = begins[j], ends[j]
            scores[k] = MessageScores(seen.z[lo:hi], proba[lo:hi], seen.features[lo:hi], seen.scored[lo:hi],
                                      holdout[lo:hi], s[lo:hi], held_device, thresholds[j])  # fmt: skip
        changes.update({"detector": det.state, "features": inc.state, "since_alarm": since,
                        "anomalies": state.anomalies + int(hits.shape[0])})  # fmt: skip
    pending, readings, last_round_at = state.pending, state.readings, state.last_round_at
    released = 0  # readings of the concatenation already released to the buffer
    j = 0
    for k, msg in enumerate(messages):
        if not msg.train_now:
            size = msg.values.shape[0]
            pending, readings = pending + size, readings + size
            last_round_at = last_round_at or msg.received_at - phase
            j += 1
        # ``round_due`` on the running counts
        waited = msg.received_at - last_round_at >= cfg.train_interval_s
        due = pending > 0 and (msg.train_now or pending >= cfg.train_every or waited)
        if due:
            upto = ends[j - 1] if j else 0
            if upto > released:
                changes.update(_released(state, _slice(seen, released, upto), labels[released:upto], cfg,
                                         holdout[released:upto]))  # fmt: skip
                released = upto
            state = replace(state, **changes, pending=pending, readings=readings, last_round_at=last_round_at)
            changes = {}
            state, result = train_round(state, msg.received_at, cfg, global_params)
            pending, last_round_at = state.pending, state.last_round_at
            if result is not None:
                updates.append(replace(result, message=k))
    if data and released < ends[-1]:
        changes.update(_released(state, _slice(seen, released, ends[-1]), labels[released:], cfg, holdout[released:]))
    if changes or pending != state.pending or readings != state.readings or last_round_at != state.last_round_at:
        state = replace(state, **changes, pending=pending, readings=readings, last_round_at=last_round_at)
    return StepResult(state, tuple(alarms), tuple(updates), tuple(scores))


def _slice(seen: Ingested, a: int, b: int) -> Ingested:
    if a == 0 and b == seen.z.shape[0]:
        return seen
    return Ingested(seen.z[a:b], seen.z_scored[a:b], seen.features[a:b], seen.scored[a:b])


def _one_at_a_time(state: DeviceState, messages: Sequence[DeviceMessage], device_id: str, cfg: DeviceConfig
                   ) -> StepResult:  # fmt: skip
    """A local-only ``step``, message by message (its own rule changes after each of its rounds)."""
    alarms: list[Alarm] = []
    updates: list[RoundResult] = []
    scores: list[MessageScores | None] = []
    for k, msg in enumerate(messages):
        out = step(state, [msg], None, device_id, cfg)
        state = out.state
        alarms += [replace(a, message=k) for a in out.alarms]
        updates += [replace(u, message=k) for u in out.updates]
        scores += out.scores
    return StepResult(state, tuple(alarms), tuple(updates), tuple(scores))


def decision_rule(normal_logits: np.ndarray, cfg: DeviceConfig) -> tuple[float, float, Decision]:
    """(loc, scale, decision) of a model whose logits on its normal training readings are given.

    How the evaluation judges a model trained outside the fleet (central, local-only) by the rule
    the fleet's models follow: the logit standardised by the normal logits' mean and standard
    deviation, the threshold at ``alarm_budget`` of their standardised scores, the same
    refractory period (``decision.central_rule`` with the logit as the one feature). Fewer than two
    normal logits: no threshold (the model never alarms).

    >>> loc, scale, d = decision_rule(np.arange(1000.0), DeviceConfig(alarm_budget=0.01, refractory=5))
    >>> round(loc, 1), round(scale, 1), round(loc + scale * d.threshold), d.refractory
    (499.5, 288.7, 989, 5)
    >>> decision_rule(np.zeros(1), DeviceConfig())[2].threshold
    inf
    """
    x = np.asarray(normal_logits, dtype=np.float64)
    x = x[np.isfinite(x)]
    # the logit as the one feature of a model with weight 1 and bias 0
    rule = central_rule(np.ones(1), 0.0, x[:, None], cfg.alarm_budget, cfg.refractory)
    if rule.threshold is None or rule.loc is None or rule.scale is None:
        return 0.0, 1.0, Decision(math.inf, cfg.refractory)
    return float(rule.loc), float(rule.scale), Decision(float(rule.threshold), cfg.refractory)


def threshold_scope(cfg: DeviceConfig) -> dict:
    """``protocol.Decision``'s fields for ``cfg.threshold_scope``: what makes the evaluation apply
    a threshold as ``step`` does (moved toward each device's own quantile, or as it is).

    >>> threshold_scope(DeviceConfig()), threshold_scope(DeviceConfig(threshold_scope="fleet"))
    ({'own_budget': 0.01, 'own_window': 100000.0}, {})
    """
    if cfg.threshold_scope == "device":
        return {"own_budget": cfg.alarm_budget, "own_window": cfg.histogram_window}
    return {}


def published_decision(
    threshold: float | None, loc: float | None, scale: float | None, cfg: DeviceConfig
) -> tuple[float, float, Decision]:
    """(loc, scale, decision) of a global version from what it published, as ``step`` applies it
    (with ``threshold_scope="device"``, moved toward each device's own quantile); a version that
    publishes no threshold yet raises no model alarm.

    >>> published_decision(None, None, None, DeviceConfig())[2].threshold
    inf
    >>> published_decision(2.0, -3.0, 0.5, DeviceConfig(refractory=100, threshold_scope="fleet"))
    (-3.0, 0.5, Decision(threshold=2.0, refractory=100, own_budget=None, own_window=inf))
    >>> published_decision(2.0, -3.0, 0.5, DeviceConfig())[2].own_budget
    0.01
    """
    own = threshold_scope(cfg)
    if threshold is None or loc is None or scale is None:
        return 0.0, 1.0, Decision(math.inf, cfg.refractory, **own)
    return float(loc), float(scale), Decision(float(threshold), cfg.refractory, **own)
