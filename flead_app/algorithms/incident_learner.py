"""The incident learner: one device's scoring, alarm and training step on calibrated features.

It replaces, for real data, the learner of ``device.py`` (whose features and threshold 0.5 were
chosen on the simulator), keeping its federated shape: local SGD rounds of logistic regression
from the newest global model, every ``train_every`` readings or ``train_interval_s`` seconds.
What changes:

* **Features**: ``incident_features``: per-device calibrated surprises (Exp(1) under the null on
  every device), so one weight vector means the same on every device; ``features`` "union" (the
  default) adds ``detection.py``'s four, calibrated alike, and the model weighs them per fleet.
* **Server step** (``server_step``, a pure function of the global model, the updates and the
  config): by default online Newton (``second_order.newton_step``): each round also reports the
  gradient and Hessian of its log-loss at the parameters it started from, and the global model is
  the minimiser of all rounds' quadratic expansions plus a ridge, i.e. the central L2 logistic
  regression on the data seen, up to the expansion error. The round's SGD weights still travel
  (they are the device's local model); ``server`` "fedbuff" averages their changes instead.
* **Training target** (``positive_skip``): a labelled window is held by the device until it
  closes; then the first ``positive_skip`` share of it is left out of training and the rest are
  the positives. NAB's windows are centred on the incident (``positive_skip`` 0.5: the first half
  precedes the incident and no causal detector can see it); for labels that start with the
  incident (the simulator) it is 0.
* **Decision threshold**: the model's score (logit) is compared with a threshold the *global
  model carries*: with each update a device reports a histogram (fixed bins ``SCORE_EDGES``) of
  the scores that the model its round started from gave to the round's normal training readings;
  the server step sums them (``merge_histograms``) and sets the threshold that a share
  ``alarm_budget`` of normal readings exceed (``threshold_for_budget``). With ``threshold_rule``
  "standardised" (the default) the histograms are of (score - loc) / scale of the start model,
  loc and scale coming from merged moments of the normal features, so the newest model's
  threshold is its own loc + scale x the merged quantile. Class imbalance is
  handled there, not by weighting the loss (the threshold is a quantile of normal scores, so only
  the ranking the weights induce matters; class weights did not change it on training devices).
* **Alarm suppression** (``refractory``): after an alarm a device raises no other for that many
  readings, so an incident raises one alarm (NAB counts only the first detection in a window and
  every detection outside one is a false positive).

The z-rule of ``detection.py`` stays available beside it; ``alarm_rule`` chooses which one
raises alarms (both are computed and reported per reading).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from flead_app.algorithms.incident_features import (
    FEATURE_SETS,
    NUM_FEATURES,
    IncidentState,
    score,
    uncentred_detector_features,
)
from flead_app.algorithms.second_order import Curvature, NewtonConfig, delta_step, newton_step, round_curvature
from flead_app.algorithms.sgd import LinearModel, accuracy, log_loss, predict_proba, sgd_train

#: fixed bins of the score histograms every device and the FedAvg step share (logits)
SCORE_EDGES = np.linspace(-12.0, 12.0, 481)
NUM_SCORE_BINS = SCORE_EDGES.shape[0] - 1
#: a threshold rests on this many normal readings above it (relative error of the tail share ~3%;
#: 100, ~10%, while versions still swung under FedBuff: with the Newton server the model settles,
#: and standardised scores let older versions' histograms count, so the window can be longer)
TAIL_READINGS = 1000.0


@dataclass(frozen=True)
class LearnerConfig:
    learning_rate: float = 0.03
    local_epochs: int = 1
    prior_anomaly_rate: float = 0.04
    train_every: int = 50
    train_interval_s: float = 60.0
    positive_skip: float = 0.5  # share of each labelled window, from its start, left out of training
    alarm_budget: float = 0.01  # share of normal readings whose score exceeds the threshold
    refractory: int = 100  # readings after an alarm in which the device raises no other
    alarm_rule: str = "model"  # "model" or "zscore": which decision raises alarms
    shuffle: bool = True  # local SGD visits a round's samples in a random order (seeded by the round)
    averaging: float | None = None  # eta of the polynomial-decay average that scores (None: the last iterate)
    # the server step (``server_step``): "fedbuff" (mean of the rounds' changes, server lr and momentum)
    # or "newton" (online Newton on the rounds' gradients and Hessians, ``second_order.newton_step``)
    server: str = "newton"
    server_lr: float = 1.0
    server_momentum: float = 0.0
    staleness_exponent: float = 0.5
    equal_update_weights: bool = True  # fedbuff: every round's change counts alike (False: by samples)
    newton: NewtonConfig = NewtonConfig()
    tail_readings: float = TAIL_READINGS  # normal readings above the threshold the histogram window holds
    features: str = "union"  # ``incident_features.FEATURE_SETS``: "incident" (6) or "union" (+ the detector's 4)
    #: "raw": the threshold is a quantile of the merged histograms of start models' logits on normal
    #: samples; "standardised": histograms of (logit - loc) / scale of the start model, where loc and
    #: scale are the model's normal-score mean and std from the merged normal-feature moments, so
    #: scores of older versions still tell the newest one's quantile (``normal_moments``)
    threshold_rule: str = "standardised"

    @property
    def num_features(self) -> int:
        return len(FEATURE_SETS[self.features])

    @property
    def histogram_readings(self) -> float:
        """Normal readings a threshold should rest on: ``tail_readings`` above it at the budget."""
        return self.tail_readings / self.alarm_budget


@dataclass(frozen=True)
class IncidentModel:
    """A model as devices use it: weights, bias, the version, and the alarm threshold on its score."""

    version: int
    weights: np.ndarray
    bias: float
    threshold: float = math.inf  # no alarm before a threshold is known
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(NUM_SCORE_BINS))
    #: the averaged model that scores readings (None: the iterate itself)
    avg_weights: np.ndarray | None = None
    avg_bias: float = 0.0
    #: server state: online Newton's information matrix A and vector b (``second_order``), or
    #: FedAvgM's velocity; None until the first step that uses them
    information: np.ndarray | None = None
    target: np.ndarray | None = None
    velocity: np.ndarray | None = None
    #: merged moments of the normal training features over the threshold's window: count, sum
    #: (F) and sum of outer products (F x F, symmetric); the scoring model's normal-score mean and
    #: std from them (``threshold_rule`` "standardised"; None before the first)
    normal_moments: tuple[float, np.ndarray, np.ndarray] | None = None
    score_loc: float | None = None
    score_scale: float | None = None

    def params(self) -> np.ndarray:
        """The iterate as one vector, weights then bias."""
        return np.append(np.asarray(self.weights, dtype=np.float64), float(self.bias))

    def linear(self) -> LinearModel:
        """The iterate: what local rounds start from."""
        return LinearModel(np.asarray(self.weights, dtype=np.float64), float(self.bias))

    def scoring(self) -> LinearModel:
        """What scores readings and what the threshold refers to: the average, or the iterate."""
        if self.avg_weights is None:
            return self.linear()
        return LinearModel(np.asarray(self.avg_weights, dtype=np.float64), float(self.avg_bias))


def initial_model(cfg: LearnerConfig) -> IncidentModel:
    """Version 0: zero weights, bias at the prior log-odds, no threshold yet."""
    m = LinearModel.initial(cfg.num_features, cfg.prior_anomaly_rate)
    return IncidentModel(0, m.weights, m.bias)


def score_histogram(scores: np.ndarray) -> np.ndarray:
    """Counts of ``scores`` in the fixed ``SCORE_EDGES`` bins (values outside go to the end bins).

    >>> h = score_histogram(np.array([-100.0, 0.0, 0.01, 100.0]))
    >>> int(h.sum()), int(h[0]), int(h[-1])
    (4, 1, 1)
    """
    idx = np.clip(np.searchsorted(SCORE_EDGES, np.asarray(scores, dtype=np.float64), side="right") - 1,
                  0, NUM_SCORE_BINS - 1)  # fmt: skip
    return np.bincount(idx, minlength=NUM_SCORE_BINS).astype(np.float64)


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
    # between edge j-1 (mass above > target) and edge j (<= target)
    hi, lo = above[j - 1], above[j]
    frac = (hi - target) / (hi - lo) if hi > lo else 1.0
    return float(SCORE_EDGES[j - 1] + frac * (SCORE_EDGES[j] - SCORE_EDGES[j - 1]))


def merge_histograms(previous: np.ndarray, reported: list[np.ndarray], cfg: LearnerConfig) -> np.ndarray:
    """The next global model's histogram: the updates' histograms plus the previous one, discounted.

    The previous histogram keeps weight max(0, 1 - new / ``histogram_readings``): once a window
    of about ``histogram_readings`` normal readings is reached, new scores (of newer versions)
    replace old ones at the rate they arrive, so the threshold follows the model.

    >>> cfg = LearnerConfig(alarm_budget=0.1, tail_readings=100)  # 1,000 readings
    >>> h = merge_histograms(np.full(NUM_SCORE_BINS, 2.0), [np.full(NUM_SCORE_BINS, 0.25)], cfg)
    >>> round(float(h[0]), 3)  # 120 new readings: the old ones keep 1 - 120 / 1,000
    2.01
    """
    new = np.sum(reported, axis=0) if reported else np.zeros(NUM_SCORE_BINS)
    keep = max(0.0, 1.0 - float(new.sum()) / cfg.histogram_readings)
    return keep * np.asarray(previous, dtype=np.float64) + new


@dataclass(frozen=True)
class LearnerState:
    """One device's state for the incident learner (``size_floats``: what it serialises to)."""

    features: IncidentState = IncidentState()
    since_alarm: int = 1 << 30  # readings since the device's last alarm
    # the open labelled window: its readings' features and whether each may train
    window_x: np.ndarray = field(default_factory=lambda: np.empty((0, NUM_FEATURES)))
    window_train: np.ndarray = field(default_factory=lambda: np.empty(0, bool))
    # training samples released so far (normal readings at once, window positives when it closes)
    train_x: np.ndarray = field(default_factory=lambda: np.empty((0, NUM_FEATURES)))
    train_y: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))
    pending: int = 0
    last_round_at: float = 0.0
    rounds: int = 0

    def size_floats(self) -> int:
        return (
            self.features.state_floats() + 4 + self.window_x.size + self.window_train.size
            + self.train_x.size + self.train_y.size
        )  # fmt: skip


@dataclass(frozen=True)
class Step:
    """Per reading of one ``ingest``: features, the model's score, its decision and the alarms."""

    features: np.ndarray
    scored: np.ndarray
    score: np.ndarray  # the model's logit (-inf where not scored)
    above: np.ndarray  # score above the model's threshold
    zscore_alarm: np.ndarray  # the description's rule: |z| > 2.5 on the running mean and std
    alarm: np.ndarray  # what the device raises: ``alarm_rule``'s decision after the refractory period


def refractory_alarms(candidates: np.ndarray, since_alarm: int, refractory: int) -> tuple[np.ndarray, int]:
    """Keep a candidate only if at least ``refractory`` readings passed since the last alarm.

    Returns the alarms and the readings since the last alarm after the batch.

    >>> a, s = refractory_alarms(np.array([1, 1, 0, 1, 0, 0, 1], bool), 10, 3)
    >>> a.astype(int).tolist(), s
    ([1, 0, 0, 1, 0, 0, 1], 1)
    """
    c = np.asarray(candidates, dtype=bool)
    out = np.zeros(c.shape[0], dtype=bool)
    last = -since_alarm  # index of the last alarm relative to this batch
    for i in np.flatnonzero(c).tolist():
        if i - last >= refractory:
            out[i] = True
            last = i
    return out, c.shape[0] - last if c.shape[0] else since_alarm


def _release_window(state: LearnerState, cfg: LearnerConfig) -> tuple[np.ndarray, np.ndarray]:
    """The trainable positives of a window that just closed: all but its first ``positive_skip`` share."""
    n = state.window_train.shape[0]
    first = int(math.floor(n * cfg.positive_skip))
    keep = state.window_train.copy()
    keep[:first] = False
    return state.window_x[keep], np.ones(int(keep.sum()), np.int8)


def ingest(
    state: LearnerState,
    timestamps: np.ndarray,
    values: np.ndarray,
    labels: np.ndarray,
    model: IncidentModel,
    cfg: LearnerConfig,
    trainable: np.ndarray | None = None,
    zscore_alarm: np.ndarray | None = None,
    now: float = 0.0,
    detector_features: np.ndarray | None = None,
) -> tuple[LearnerState, Step]:
    """Score one device's readings with ``model``, raise alarms, and buffer training samples.

    ``labels``: 1 in a labelled window, 0 normal, -1 unknown (never trains); ``trainable``:
    False for readings no model may train on (held out). ``zscore_alarm``: the z-rule's
    decisions for the same readings (``detection.score_batch``), used when ``alarm_rule`` is
    "zscore" and reported either way; ``detector_features``: that call's features, needed when
    ``cfg.features`` is "union" (calibrated after the six).

    >>> import numpy as np
    >>> from flead_app.algorithms import detection
    >>> cfg = LearnerConfig()
    >>> t = np.arange(300) * 300.0; x = np.random.default_rng(0).normal(0, 1, 300)
    >>> det = detection.score_batch(detection.DetectorState(), x)
    >>> st, out = ingest(LearnerState(), t, x, np.zeros(300, np.int8), initial_model(cfg), cfg,
    ...                  zscore_alarm=np.abs(det.z) > 2.5, detector_features=det.features)
    >>> int(out.alarm.sum()), st.train_y.shape[0] == int(out.scored.sum()), st.train_x.shape[1]
    (0, True, 10)
    """
    labels = np.asarray(labels)
    k = labels.shape[0]
    extra = None
    if cfg.features == "union":
        if detector_features is None:
            raise ValueError('features "union" needs the detector\'s features of the same readings')
        extra = uncentred_detector_features(detector_features)
    inc = score(state.features, timestamps, values, extra)
    feats, ok = inc.features, inc.scored
    width = feats.shape[1]
    s = np.full(k, -np.inf)
    if ok.any():
        sm = model.scoring()
        s[ok] = feats[ok] @ sm.weights + sm.bias
    above = ok & (s > model.threshold)
    z_alarm = np.zeros(k, bool) if zscore_alarm is None else np.asarray(zscore_alarm, dtype=bool)
    decision = z_alarm if cfg.alarm_rule == "zscore" else above
    alarms, since = refractory_alarms(decision, state.since_alarm, cfg.refractory)
    # training samples: normal readings at once; a labelled window's readings when it closes
    train = ok & (labels >= 0)
    if trainable is not None:
        train &= np.asarray(trainable, dtype=bool)
    xs, ys = [state.train_x.reshape(-1, width)], [state.train_y]
    wx, wt = state.window_x.reshape(-1, width), state.window_train
    if wt.shape[0] or (labels == 1).any():
        w_rows: list[int] = []
        for i, lab in enumerate(labels.tolist()):
            if lab == 1:
                w_rows.append(i)
                continue
            if w_rows or wt.shape[0]:  # the window closed before reading i
                wx = np.concatenate((wx, feats[w_rows]))
                wt = np.concatenate((wt, train[w_rows]))
                px, py = _release_window(replace(state, window_x=wx, window_train=wt), cfg)
                xs.append(px)
                ys.append(py)
                wx, wt, w_rows = np.empty((0, width)), np.empty(0, bool), []
        if w_rows:
            wx = np.concatenate((wx, feats[w_rows]))
            wt = np.concatenate((wt, train[w_rows]))
    normal = train & (labels == 0)
    if normal.any():
        xs.append(feats[normal])
        ys.append(np.zeros(int(normal.sum()), np.int8))
    new = replace(
        state,
        features=inc.state,
        since_alarm=since,
        window_x=wx,
        window_train=wt,
        train_x=np.concatenate(xs) if len(xs) > 1 else state.train_x,
        train_y=np.concatenate(ys) if len(ys) > 1 else state.train_y,
        pending=state.pending + k,
        last_round_at=state.last_round_at or now,
    )
    return new, Step(feats, ok, s, above, z_alarm, alarms)


def training_due(state: LearnerState, now: float, cfg: LearnerConfig) -> bool:
    """Every ``train_every`` readings, or ``train_interval_s`` after the last round if any arrived."""
    if state.pending <= 0:
        return False
    return state.pending >= cfg.train_every or now - state.last_round_at >= cfg.train_interval_s


@dataclass(frozen=True)
class IncidentUpdate:
    """What a local round reports (F features, F + 1 parameters; sizes in docs/learning_real_data.md).

    The round's SGD result (``weights``, ``bias``: the device's local model, FedBuff's input), its
    counts, the start parameters and the curvature there (the Newton server's input), and what
    the threshold needs (the normal-score histogram and the normal features' moments).
    """

    base_version: int
    weights: np.ndarray
    bias: float
    samples: int
    positives: int
    accuracy: float
    loss: float
    #: scores of the start model on the round's normal samples (sparse on the wire: bins with counts)
    normal_histogram: np.ndarray
    #: the global iterate the round started from (weights then bias)
    base_params: np.ndarray | None = None
    #: gradient and Hessian of the round's summed log-loss at ``base_params`` (for the Newton server)
    curvature: Curvature | None = None
    #: ``normal_histogram`` is of standardised scores (the start model's loc and scale), not logits
    standardised: bool = False
    #: count, sum and sum of outer products of the round's normal samples' features
    normal_moments: tuple[float, np.ndarray, np.ndarray] | None = None

    def sparse_histogram(self) -> dict[int, int]:
        nz = np.flatnonzero(self.normal_histogram)
        return {int(i): int(self.normal_histogram[i]) for i in nz}


def train_round(
    state: LearnerState, now: float, cfg: LearnerConfig, start: IncidentModel
) -> tuple[LearnerState, IncidentUpdate | None]:
    """One local round on the released samples, from ``start`` (the newest global, or the device's own
    model for a local-only round); None when no sample is waiting.

    >>> import numpy as np
    >>> cfg = LearnerConfig(features="incident")
    >>> st = LearnerState(train_x=np.zeros((3, 6)), train_y=np.array([0, 0, 1], np.int8))
    >>> st, up = train_round(st, 0.0, cfg, initial_model(cfg))
    >>> up.samples, up.positives, int(up.normal_histogram.sum()), st.train_y.shape[0]
    (3, 1, 2, 0)
    """
    y = state.train_y
    if y.shape[0] == 0:
        return replace(state, pending=0, last_round_at=now), None
    x = state.train_x
    if cfg.shuffle and y.shape[0] > 1:
        order = np.random.default_rng((state.rounds, y.shape[0], start.version)).permutation(y.shape[0])
        x, y = x[order], y[order]
    lin = start.linear()
    proba = predict_proba(lin, x)
    sm = start.scoring()
    logits = x @ sm.weights + sm.bias
    trained = sgd_train(lin, x, y, cfg.learning_rate, cfg.local_epochs)
    normal = y == 0
    standardised = cfg.threshold_rule == "standardised" and start.score_scale is not None
    if standardised:
        logits = (logits - start.score_loc) / start.score_scale
    xn = x[normal]
    moments = (float(xn.shape[0]), xn.sum(axis=0), xn.T @ xn) if cfg.threshold_rule == "standardised" else None
    update = IncidentUpdate(
        base_version=start.version,
        weights=trained.weights,
        bias=trained.bias,
        samples=int(y.shape[0]),
        positives=int(y.sum()),
        accuracy=accuracy(y, proba),
        loss=log_loss(y, proba),
        normal_histogram=score_histogram(logits[normal]),
        base_params=np.append(lin.weights, lin.bias),
        curvature=round_curvature(np.append(lin.weights, lin.bias), x, y),
        standardised=standardised,
        normal_moments=moments,
    )
    new = replace(
        state,
        train_x=np.empty((0, x.shape[1])),
        train_y=np.empty(0, np.int8),
        pending=0,
        last_round_at=now,
        rounds=state.rounds + 1,
    )
    return new, update


def server_step(current: IncidentModel, updates: list[IncidentUpdate], cfg: LearnerConfig) -> IncidentModel:
    """The next global version from the buffered updates: a pure function of (model, updates, config).

    ``cfg.server`` "fedbuff": the staleness-discounted mean of the rounds' changes (each update's
    weights and bias minus its ``base_params``), through the server learning rate and momentum;
    "newton": ``second_order.newton_step`` on the rounds' curvature. Thresholds and the averaged
    model as ``next_global``.

    >>> cfg = LearnerConfig(server="newton", features="incident")
    >>> st = LearnerState(train_x=np.r_[np.zeros((40, 6)), np.ones((10, 6))], train_y=np.r_[np.zeros(40), np.ones(10)])
    >>> _, up = train_round(st, 0.0, cfg, initial_model(cfg))
    >>> g = server_step(initial_model(cfg), [up], cfg)
    >>> g.version, bool(g.weights.sum() > 0), g.information.shape
    (1, True, (7, 7))
    """
    theta = current.params()
    info, target, velocity = current.information, current.target, current.velocity
    staleness = np.array([max(0, current.version - u.base_version) for u in updates], dtype=np.float64)
    if cfg.server == "newton":
        k = theta.shape[0]
        info = np.zeros((k, k)) if info is None else info
        target = np.zeros(k) if target is None else target
        rounds = [(u.curvature, u.base_params, u.samples) for u in updates if u.curvature is not None]
        theta, info, target = newton_step(theta, info, target, rounds, cfg.newton)
    elif cfg.server == "fedbuff":
        changes = np.array([np.append(u.weights, u.bias) - (theta if u.base_params is None else u.base_params)
                            for u in updates])  # fmt: skip
        velocity = np.zeros_like(theta) if velocity is None else velocity
        samples = None if cfg.equal_update_weights else np.array([u.samples for u in updates], dtype=np.float64)
        theta, velocity = delta_step(theta, velocity, changes, staleness, cfg.server_lr, cfg.server_momentum,
                                     cfg.staleness_exponent, samples)  # fmt: skip
    else:
        raise ValueError(f"unknown server step {cfg.server!r}")
    nxt = next_global(current, theta[:-1], float(theta[-1]), updates, cfg)
    return replace(nxt, information=info, target=target, velocity=velocity)


def next_global(
    current: IncidentModel, weights: np.ndarray, bias: float, updates: list[IncidentUpdate], cfg: LearnerConfig
) -> IncidentModel:
    """The next global version from FedAvg's weights and bias and the updates' histograms.

    >>> cfg = LearnerConfig(alarm_budget=0.5, features="incident", threshold_rule="raw")
    >>> up = IncidentUpdate(0, np.zeros(6), 0.0, 2, 0, 1.0, 0.1, score_histogram(np.array([-1.0, 1.0])))
    >>> g = next_global(initial_model(cfg), np.zeros(6), -3.0, [up], cfg)
    >>> g.version, bool(-1.0 < g.threshold < 1.0)
    (1, True)
    """
    std = cfg.threshold_rule == "standardised"
    hist = merge_histograms(current.histogram, [u.normal_histogram for u in updates if u.standardised == std], cfg)
    version = current.version + 1
    weights = np.asarray(weights, dtype=np.float64)
    avg_w, avg_b = None, 0.0
    if cfg.averaging is not None:
        eta = cfg.averaging
        share = (eta + 1.0) / (version + eta)  # 1 for version 1
        prev = current.scoring()
        avg_w = (1.0 - share) * prev.weights + share * weights
        avg_b = (1.0 - share) * prev.bias + share * float(bias)
    threshold = threshold_for_budget(hist, cfg.alarm_budget)
    moments, loc, scale = None, None, None
    if std:
        moments = merge_moments(current.normal_moments, [u.normal_moments for u in updates], cfg)
        sw, sb = (weights, float(bias)) if avg_w is None else (avg_w, avg_b)
        if moments is not None and moments[0] > 1:
            loc, scale = score_location_scale(moments, sw, sb)
            threshold = loc + scale * threshold if math.isfinite(threshold) else math.inf
    return IncidentModel(
        version=version,
        weights=weights,
        bias=float(bias),
        threshold=threshold,
        histogram=hist,
        avg_weights=avg_w,
        avg_bias=avg_b,
        normal_moments=moments,
        score_loc=loc,
        score_scale=scale,
    )


def merge_moments(
    previous: tuple[float, np.ndarray, np.ndarray] | None,
    reported: list[tuple[float, np.ndarray, np.ndarray] | None],
    cfg: LearnerConfig,
) -> tuple[float, np.ndarray, np.ndarray] | None:
    """Normal-feature moments over the threshold's window: discounted as ``merge_histograms`` does.

    >>> m = merge_moments(None, [(2.0, np.ones(2), np.eye(2))], LearnerConfig())
    >>> m[0], m[1].tolist()
    (2.0, [1.0, 1.0])
    """
    new = [r for r in reported if r is not None]
    if not new:
        return previous
    n = sum(r[0] for r in new)
    s1 = np.sum([r[1] for r in new], axis=0)
    s2 = np.sum([r[2] for r in new], axis=0)
    if previous is None:
        return (float(n), s1, s2)
    keep = max(0.0, 1.0 - n / cfg.histogram_readings)
    return (keep * previous[0] + n, keep * previous[1] + s1, keep * previous[2] + s2)


def score_location_scale(moments: tuple[float, np.ndarray, np.ndarray], weights: np.ndarray, bias: float
                         ) -> tuple[float, float]:  # fmt: skip
    """Mean and std of w . u + b over normal features with these moments (std floored at 1e-3).

    >>> score_location_scale((4.0, np.zeros(2), 4.0 * np.eye(2)), np.array([3.0, 4.0]), -1.0)
    (-1.0, 5.0)
    """
    n, s1, s2 = moments
    mean = s1 / n
    cov = s2 / n - np.outer(mean, mean)
    var = float(weights @ cov @ weights)
    return float(weights @ mean + bias), max(math.sqrt(max(var, 0.0)), 1e-3)
