"""The federated-averaging buffer as a pure state machine (FedBuff, buffered asynchronous FL).

Local updates arrive one at a time; ``FedBuffState.offer`` buffers each one and, every
``buffer_size`` updates (or on a flush request once the oldest has waited ``timeout_s``),
aggregates the buffer into the next global version. Aggregation (``federate``) adds to the
current global model the aggregate of each update's *change from the global version it
started from*: devices train asynchronously, so a buffer mixes base versions, and averaging
absolute parameters would pull the model back towards the old versions stale updates began
at. The state keeps the parameters of the last ``history`` versions for that; an update whose
base left the history counts with its absolute parameters, as plain FedAvg would.

A redelivered update (same device and model version, after a crash or a rebalance) is
recognised by the last ``RECENT_UPDATES`` tags and counted once.

>>> cfg = FedBuffConfig(buffer_size=2, initial=(0.0, 0.0, 0.0, 0.0, -3.0))
>>> state = FedBuffState.start(cfg)
>>> u = LocalModelUpdate("d1", 1, 0, [0.2, 0.0, 0.0, 0.0], -3.0, 0.9, 0.1, 10, "2025-01-01T00:00:00.000Z")
>>> state, out = state.offer(u, 0.0, cfg)
>>> out.model is None, len(state.buffer)
(True, 1)
>>> state, out = state.offer(replace(u, device_id="d2"), 1.0, cfg)
>>> out.model.global_version, out.model.weights[0], state.version
(1, 0.2, 1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from flead_app.algorithms.aggregation import Aggregator, FedAvg, federated_step, make_aggregator, weighted_accuracy
from flead_app.models import GlobalModel, LocalModelUpdate, format_timestamp

RECENT_UPDATES = 1000  # (device, model version) tags remembered to drop redelivered updates


@dataclass(frozen=True)
class FedBuffConfig:
    buffer_size: int = 20
    timeout_s: float = 120.0  # a flush request aggregates a partial buffer whose oldest update waited this long
    history: int = 50  # global versions whose parameters are kept, to take changes from
    aggregator: Aggregator = FedAvg()
    initial: tuple[float, ...] = ()  # global version 0 (weights then bias): the model every device starts from

    @classmethod
    def from_settings(cls, settings: object, initial: Sequence[float]) -> FedBuffConfig:
        s = settings
        return cls(
            buffer_size=s.fedavg_buffer,  # type: ignore[attr-defined]
            timeout_s=s.fedavg_timeout_s,  # type: ignore[attr-defined]
            history=s.fedavg_history,  # type: ignore[attr-defined]
            aggregator=make_aggregator(s.aggregator, s.staleness_exponent, s.trim_ratio),  # type: ignore[attr-defined]
            initial=tuple(float(x) for x in initial),
        )


@dataclass(frozen=True)
class Offered:
    """What one ``offer`` did: the new global model (or None) and whether the update was a duplicate."""

    model: GlobalModel | None = None
    duplicate: bool = False
    partial: bool = False  # the model came from a partial buffer (a flush)


@dataclass(frozen=True)
class FedBuffState:
    version: int = 0
    round: int = 0
    buffer: tuple[LocalModelUpdate, ...] = ()
    first_at: float = 0.0  # event time of the oldest buffered update
    recent: tuple[str, ...] = ()
    history: Mapping[int, tuple[float, ...]] = field(default_factory=dict)

    @classmethod
    def start(cls, cfg: FedBuffConfig) -> FedBuffState:
        """Before any update: version 0 is the initial model."""
        return cls(history={0: tuple(cfg.initial)})

    def offer(self, update: LocalModelUpdate | None, now: float, cfg: FedBuffConfig) -> tuple[FedBuffState, Offered]:
        """Buffer ``update`` (None: a flush request) at event time ``now``; aggregate when due."""
        state, duplicate = self, False
        if update is not None:
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
        model = federate(state.buffer, state.version, state.round + 1, cfg.aggregator, format_timestamp(now),
                         state.history)  # fmt: skip
        history = {**state.history, model.global_version: (*model.weights, model.bias)}
        keep = sorted(history)[-max(1, cfg.history) :]
        state = replace(
            state,
            version=model.global_version,
            round=model.aggregation_round,
            buffer=(),
            history={v: history[v] for v in keep},
        )
        return state, Offered(model=model, partial=not full)

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "round": self.round,
            "buffer": [u.to_dict() for u in self.buffer],
            "first_at": self.first_at,
            "recent": list(self.recent),
            "history": {str(v): list(p) for v, p in self.history.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> FedBuffState:
        return cls(
            version=int(d["version"]),
            round=int(d["round"]),
            buffer=tuple(LocalModelUpdate(**u) for u in d["buffer"]),
            first_at=float(d["first_at"]),
            recent=tuple(d["recent"]),
            history={int(v): tuple(p) for v, p in d["history"].items()},
        )


def federate(
    updates: Sequence[LocalModelUpdate],
    current_version: int,
    aggregation_round: int,
    aggregator: Aggregator,
    timestamp: str,
    history: Mapping[int, Sequence[float]] | None = None,
) -> GlobalModel:
    """The next global model (version ``current_version + 1``) from buffered updates.

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
