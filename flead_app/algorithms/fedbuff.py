"""The federated server as a pure state machine (FedBuff, buffered asynchronous FL).

Local updates arrive one at a time; ``FedBuffState.offer`` buffers each one and, every
``buffer_size`` updates (or on a flush request once the oldest has waited ``timeout_s``),
makes the next global version from the buffer (``server_step``): new parameters, and the
decision rule every device applies to them.

Parameters. With ``Newton`` (the default) the state keeps the information matrix A and the
target vector b summed over every round so far (``second_order``), adds the buffer's rounds
(each expanded at the parameters it started from, so stale rounds need no special rule) and
publishes the minimiser of all of them plus a ridge. With the averaging aggregators
(``FedAvg``: the description's sample-weighted mean, ``CoordinateMedian``, ``TrimmedMean``;
``federate``) the next version is the current one plus the aggregate of each update's *change
from the global version it started from*: devices train asynchronously, so a buffer mixes base
versions, and averaging absolute parameters would pull the model back towards the old versions
stale updates began at. The state keeps the parameters of the last ``history`` versions for
that; an update whose base left the history counts with its absolute parameters, as plain FedAvg.

Decision rule (``decision``). The state also keeps the merged histogram of the updates'
standardised normal scores and the merged moments of their normal features, both over a window
of ``tail_readings / alarm_budget`` normal readings: the new version's ``score_loc`` and
``score_scale`` are the mean and std of its own logits under those moments, and its
``threshold`` the budget quantile of the merged histogram. So the server state (A, b, the
histogram, the moments: ~620 numbers) lives in this row, and a broadcast carries three numbers
beside the weights.

A redelivered update (same device and model version, after a crash or a rebalance) is
recognised by the last ``RECENT_UPDATES`` tags and counted once.

>>> cfg = FedBuffConfig(buffer_size=2, aggregator=FedAvg(), initial=(0.0, 0.0, 0.0, 0.0, -3.0))
>>> state = FedBuffState.start(cfg)
>>> u = LocalModelUpdate("d1", 1, 0, [0.2, 0.0, 0.0, 0.0], -3.0, 0.9, 0.1, 10, "2025-01-01T00:00:00.000Z")
>>> state, out = state.offer(u, 0.0, cfg)
>>> out.model is None, len(state.buffer)
(True, 1)
>>> state, out = state.offer(replace(u, device_id="d2"), 1.0, cfg)
>>> out.model.global_version, out.model.weights[0], state.version, out.model.threshold
(1, 0.2, 1, None)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from flead_app.algorithms.aggregation import (
    Aggregator,
    Averaging,
    FedAvg,  # noqa: F401 - the examples use it
    Newton,
    federated_step,
    make_aggregator,
    weighted_accuracy,
)
from flead_app.algorithms.decision import (
    TAIL_READINGS,
    dense_histogram,
    histogram_window,
    merge_histograms,
    merge_moments,
    score_location_scale,
    sparse_histogram,
    threshold_for_budget,
)
from flead_app.algorithms.robust import UpdateBound, bound_updates
from flead_app.algorithms.second_order import Curvature, pack_symmetric, unpack_symmetric
from flead_app.models import GlobalModel, InvalidRecord, LocalModelUpdate, format_timestamp

RECENT_UPDATES = 1000  # (device, model version) tags remembered to drop redelivered updates


@dataclass(frozen=True)
class FedBuffConfig:
    buffer_size: int = 20
    timeout_s: float = 120.0  # a flush request aggregates a partial buffer whose oldest update waited this long
    history: int = 50  # global versions whose parameters are kept, to take changes from
    aggregator: Aggregator = Newton()
    initial: tuple[float, ...] = ()  # global version 0 (weights then bias): the model every device starts from
    alarm_budget: float = 0.01  # share of normal readings above a version's threshold
    tail_readings: float = TAIL_READINGS  # normal readings above it in the histogram window
    bound: UpdateBound = UpdateBound(75, 1000, 10.0, median_normals=3.0, check_curvature=True)  # the settings' default

    @classmethod
    def from_settings(cls, settings: object, initial: Sequence[float]) -> FedBuffConfig:
        """The FedAvg agent's configuration from the settings and version 0's parameters.

        >>> from flead_app.settings import Settings
        >>> FedBuffConfig.from_settings(Settings(), [0.0, -3.0]).aggregator
        Newton(ridge=1.0, bias_ridge=0.001, max_step=1.0)
        """
        s = settings
        return cls(
            buffer_size=s.fedavg_buffer,  # type: ignore[attr-defined]
            timeout_s=s.fedavg_timeout_s,  # type: ignore[attr-defined]
            history=s.fedavg_history,  # type: ignore[attr-defined]
            aggregator=make_aggregator(
                s.aggregator,
                s.staleness_exponent,
                s.trim_ratio,  # type: ignore[attr-defined]
                s.newton_ridge,
                s.newton_bias_ridge,
                s.newton_max_step,  # type: ignore[attr-defined]
            ),  # fmt: skip
            initial=tuple(float(x) for x in initial),
            alarm_budget=s.alarm_budget,  # type: ignore[attr-defined]
            tail_readings=s.threshold_tail_readings,  # type: ignore[attr-defined]
            bound=UpdateBound.from_settings(s),
        )

    @property
    def window(self) -> float:
        return histogram_window(self.alarm_budget, self.tail_readings)


@dataclass(frozen=True)
class Offered:
    """What one ``offer`` did: the new global model (or None) and whether the update was a duplicate."""

    model: GlobalModel | None = None
    duplicate: bool = False
    partial: bool = False  # the model came from a partial buffer (a flush)
    refused: int = 0  # updates of the aggregated buffer left out as infeasible (``robust.curvature_feasible``)


@dataclass(frozen=True)
class FedBuffState:
    version: int = 0
    round: int = 0
    buffer: tuple[LocalModelUpdate, ...] = ()
    first_at: float = 0.0  # event time of the oldest buffered update
    recent: tuple[str, ...] = ()
    history: Mapping[int, tuple[float, ...]] = field(default_factory=dict)
    #: online Newton's sums over every round so far: A (packed upper triangle) and b; () before any
    information: tuple[float, ...] = ()
    target: tuple[float, ...] = ()
    #: the threshold's window: merged standardised normal-score histogram ({bin: count}) and
    #: normal-feature moments (``decision.moments_of``; () before any)
    histogram: Mapping[int, float] = field(default_factory=dict)
    moments: tuple[float, ...] = ()

    @classmethod
    def start(cls, cfg: FedBuffConfig) -> FedBuffState:
        """Before any update: version 0 is the initial model."""
        return cls(history={0: tuple(float(x) for x in cfg.initial)})

    def offer(self, update: LocalModelUpdate | None, now: float, cfg: FedBuffConfig) -> tuple[FedBuffState, Offered]:
        """Buffer ``update`` (None: a flush request) at event time ``now``; aggregate when due.

        An update whose weights do not fit the model (another feature set) raises ``InvalidRecord``.
        """
        state, duplicate = self, False
        if update is not None:
            if cfg.initial and len(update.weights) != len(cfg.initial) - 1:
                raise InvalidRecord(f"an update of {len(update.weights)} weights for a model of {len(cfg.initial) - 1}")
            tag = f"{update.device_id}:{update.model_version}"
            if tag in self.recent:
                return self, Offered(duplicate=True)
            state = replace(
                self,
                buffer=(*self.buffer, update),
                first_at=self.first_at if self.buffer else now,
                recent=(*self.recent, tag)[-RECENT_UPDATES:],
            )
        full = len(state.buffer) >= cfg.buffer_size
        stale = update is None and bool(state.buffer) and now - state.first_at >= cfg.timeout_s
        if not (full or stale):
            return state, Offered(duplicate=duplicate)
        refused = len(state.buffer)
        state, model = server_step(state, cfg, now)
        refused -= model.num_updates if model is not None else 0
        return state, Offered(model=model, partial=not full, refused=refused)

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "round": self.round,
            "buffer": [u.to_dict() for u in self.buffer],
            "first_at": self.first_at,
            "recent": list(self.recent),
            "history": {str(v): list(p) for v, p in self.history.items()},
            "information": list(self.information),
            "target": list(self.target),
            "histogram": {str(k): v for k, v in self.histogram.items()},
            "moments": list(self.moments),
        }

    @classmethod
    def from_dict(cls, d: dict) -> FedBuffState:
        """The state of ``to_dict``'s output.

        >>> s = FedBuffState(version=3, histogram={240: 2.0}, moments=(1.0, 0.5, 0.25))
        >>> FedBuffState.from_dict(s.to_dict()) == s
        True
        """
        return cls(
            version=int(d["version"]),
            round=int(d["round"]),
            buffer=tuple(LocalModelUpdate(**u) for u in d["buffer"]),
            first_at=float(d["first_at"]),
            recent=tuple(d["recent"]),
            history={int(v): tuple(p) for v, p in d["history"].items()},
            information=tuple(float(v) for v in d.get("information", ())),
            target=tuple(float(v) for v in d.get("target", ())),
            histogram={int(k): float(v) for k, v in d.get("histogram", {}).items()},
            moments=tuple(float(v) for v in d.get("moments", ())),
        )


def server_step(state: FedBuffState, cfg: FedBuffConfig, now: float) -> tuple[FedBuffState, GlobalModel | None]:
    """The next global version from the buffered updates, and the state after it (buffer emptied).

    None when the server's bound refused every buffered update: no version is made from nothing.

    >>> from flead_app.algorithms import device
    >>> dcfg = device.DeviceConfig()
    >>> v0 = device.initial_global(dcfg)
    >>> cfg = FedBuffConfig(buffer_size=1, initial=(*v0.weights, v0.bias))
    >>> x = np.random.default_rng(0).normal(size=(60, 10)); y = (x[:, 0] > 1.5).astype(np.int8)
    >>> _, r = device.train_round(device.DeviceState(buffer_features=x, buffer_labels=y), 0.0, dcfg, v0)
    >>> u = LocalModelUpdate("d1", 1, 0, r.weights.tolist(), r.bias, r.accuracy, r.loss, r.samples,
    ...                      "2025-01-01T00:00:00.000Z", positives=r.positives, curvature=r.curvature.tolist(),
    ...                      base_params=r.base_params.tolist(), normal_moments=r.normal_moments.tolist())
    >>> state, model = server_step(replace(FedBuffState.start(cfg), buffer=(u,)), cfg, 0.0)
    >>> model.aggregator, bool(model.weights[0] > 0.1), model.score_scale is not None, model.threshold
    ('newton', True, True, None)
    """
    updates = bound_updates(state.buffer, cfg.bound, state.history, isinstance(cfg.aggregator, Newton)).updates
    if not updates:
        return replace(state, buffer=()), None
    staleness = np.array([max(0, state.version - u.global_version) for u in updates], dtype=np.float64)
    samples = np.array([u.samples for u in updates], dtype=np.float64)
    information, target = state.information, state.target
    timestamp = format_timestamp(now)
    if isinstance(cfg.aggregator, Newton):
        k = len(updates[0].weights) + 1
        theta = np.asarray(state.history.get(state.version) or np.zeros(k), dtype=np.float64)
        a = unpack_symmetric(np.asarray(information)) if information else np.zeros((k, k))
        b = np.asarray(target, dtype=np.float64) if target else np.zeros(k)
        rounds = [
            (Curvature.unpacked(np.asarray(u.curvature)), np.asarray(u.base_params, dtype=np.float64), u.samples)
            for u in updates if u.curvature is not None and u.base_params is not None
        ]  # fmt: skip
        theta, a, b = cfg.aggregator.step(theta, a, b, rounds)
        information, target = tuple(pack_symmetric(a).tolist()), tuple(b.tolist())
        model = GlobalModel(
            global_version=state.version + 1, aggregation_round=state.round + 1, weights=theta[:-1].tolist(),
            bias=float(theta[-1]), accuracy=weighted_accuracy(np.array([u.accuracy for u in updates]), samples),
            num_devices=len({u.device_id for u in updates}), samples=int(samples.sum()), timestamp=timestamp,
            aggregator=cfg.aggregator.name, num_updates=len(updates), mean_staleness=float(staleness.mean()),
            contributors=sorted({u.device_id for u in updates}),
        )  # fmt: skip
    else:
        model = federate(updates, state.version, state.round + 1, cfg.aggregator, timestamp, state.history)
    hist = merge_histograms(dense_histogram(state.histogram),
                            [dense_histogram(u.normal_histogram) for u in updates if u.normal_histogram],
                            cfg.window)  # fmt: skip
    moments = merge_moments(np.asarray(state.moments) if state.moments else None,
                            [None if u.normal_moments is None else np.asarray(u.normal_moments) for u in updates],
                            cfg.window)  # fmt: skip
    loc = scale = threshold = None
    if moments is not None and moments[0] > 1:
        loc, scale = score_location_scale(moments, np.asarray(model.weights), model.bias)
        q = threshold_for_budget(hist, cfg.alarm_budget)
        threshold = q if math.isfinite(q) else None
    model = replace(model, threshold=threshold, score_loc=loc, score_scale=scale)
    history = {**state.history, model.global_version: (*model.weights, model.bias)}
    keep = sorted(history)[-max(1, cfg.history) :]
    state = replace(
        state,
        version=model.global_version,
        round=model.aggregation_round,
        buffer=(),
        history={v: history[v] for v in keep},
        information=information,
        target=target,
        histogram=sparse_histogram(hist),
        moments=() if moments is None else tuple(moments.tolist()),
    )
    return state, model


def federate(
    updates: Sequence[LocalModelUpdate],
    current_version: int,
    aggregation_round: int,
    aggregator: Averaging,
    timestamp: str,
    history: Mapping[int, Sequence[float]] | None = None,
) -> GlobalModel:
    """The next global model (version ``current_version + 1``) from buffered updates, by an averaging aggregator.

    ``history`` maps global versions to their parameters (weights then bias). Updates are
    combined as changes from their base versions; without the current version in ``history``
    (or without ``history``) their absolute parameters are aggregated (plain FedAvg).

    >>> ups = [LocalModelUpdate(f"d{i}", 1, 0, [float(i), 0.0], 0.0, 0.9, 0.1, 10, "2025-01-01T00:00:00.000Z")
    ...        for i in range(4)]
    >>> federate(ups, 3, 4, FedAvg(0.0), "2025-01-01T00:00:00.000Z").weights  # no history: the plain mean
    [1.5, 0.0]
    >>> history = {0: (0.0, 0.0, 0.0), 3: (10.0, 0.0, 0.0)}
    >>> federate(ups, 3, 4, FedAvg(0.0), "2025-01-01T00:00:00.000Z", history).weights  # v3 + the mean change
    [11.5, 0.0]
    """
    params = np.array([[*u.weights, u.bias] for u in updates], dtype=np.float64)
    samples = np.array([u.samples for u in updates], dtype=np.float64)
    staleness = np.array([max(0, current_version - u.global_version) for u in updates], dtype=np.float64)
    history = history or {}
    if current_version in history:
        nan = [float("nan")] * params.shape[1]
        bases = np.array([history.get(u.global_version, nan) for u in updates], dtype=np.float64)
        current = np.asarray(history[current_version], dtype=np.float64)
    else:
        bases = np.zeros_like(params)
        current = np.zeros(params.shape[1])
    merged = federated_step(params, bases, current, samples, staleness, aggregator)
    return GlobalModel(
        global_version=current_version + 1,
        aggregation_round=aggregation_round,
        weights=merged[:-1].tolist(),
        bias=float(merged[-1]),
        accuracy=weighted_accuracy(np.array([u.accuracy for u in updates]), samples),
        num_devices=len({u.device_id for u in updates}),
        samples=int(samples.sum()),
        timestamp=timestamp,
        aggregator=aggregator.name,
        num_updates=len(updates),
        mean_staleness=float(staleness.mean()),
        contributors=sorted({u.device_id for u in updates}),
    )
