"""Federated averaging: buffer local updates, publish a global model every 20 of them.

Every local update is keyed ``fleet`` so they all arrive, in order, at one partition and one
worker, which owns the single ``fedavg_state`` row (buffer, version counter and the parameters
of the last ``FLEAD_FEDAVG_HISTORY`` global versions, version 0 being the initial model).
Aggregation is ``flead_app.algorithms.aggregation.federated_step``: each update's change from
the global version it started from, combined by FedAvg weighted by samples and discounted for
staleness (or a robust coordinate-wise median / trimmed mean, by ``FLEAD_AGGREGATOR``), is
added to the current global model (FedBuff). An update whose base version has left the history
counts with its absolute weights, as plain FedAvg would. A timer asks for a
partial flush when the oldest buffered update is older than ``FLEAD_FEDAVG_TIMEOUT_S``, so a
quiet fleet still gets new versions.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import orjson

from flead_app.agents import global_model
from flead_app.agents.dead_letter import send_dead_letter
from flead_app.agents.outbox import Outbox
from flead_app.algorithms.aggregation import aggregate, federated_step, weighted_accuracy
from flead_app.algorithms.detection import NUM_FEATURES
from flead_app.algorithms.sgd import LinearModel
from flead_app.app import app, global_updates_topic, local_updates_topic, settings
from flead_app.io.kafka import event_time
from flead_app.models import GlobalModel, InvalidRecord, LocalModelUpdate, format_timestamp, utc_now_iso
from flead_app.tables.fedavg_state import FLEET_KEY, fedavg_state

log = logging.getLogger(__name__)

CONTROL_FLUSH = b'{"control":"flush"}'
RECENT_UPDATES = 1000  # (device, version) pairs remembered to drop redelivered updates
counters: Counter[str] = Counter()
#: when the oldest buffered update arrived (None: buffer empty), for the flush timer
oldest_buffered_at: float | None = None
#: global models, remembered in the fleet row until Kafka acknowledges them
outbox = Outbox([global_updates_topic])


def federate(
    updates: list[LocalModelUpdate],
    current_version: int,
    aggregation_round: int,
    method: str = "fedavg",
    staleness_exponent: float = 0.5,
    trim_ratio: float = 0.1,
    timestamp: str | None = None,
    history: Mapping[int, Sequence[float]] | None = None,
) -> GlobalModel:
    """The next global model (version ``current_version + 1``) from buffered updates.

    ``history`` maps global versions to their parameters (weights then bias). With the current
    version in it, updates are combined as changes from their base versions (``federated_step``);
    without, their absolute parameters are averaged (plain FedAvg).
    """
    params = np.array([[*u.weights, u.bias] for u in updates], dtype=np.float64)
    samples = np.array([u.samples for u in updates], dtype=np.float64)
    staleness = np.array([max(0, current_version - u.global_version) for u in updates], dtype=np.float64)
    if history is not None and current_version in history:
        nan = [float("nan")] * params.shape[1]
        bases = np.array([history.get(u.global_version, nan) for u in updates], dtype=np.float64)
        current = np.asarray(history[current_version], dtype=np.float64)
        merged = federated_step(params, bases, current, samples, staleness, method, staleness_exponent, trim_ratio)
    else:
        merged = aggregate(params, samples, staleness, method, staleness_exponent, trim_ratio)
    return GlobalModel(
        global_version=current_version + 1,
        aggregation_round=aggregation_round,
        weights=merged[:-1].tolist(),
        bias=float(merged[-1]),
        accuracy=weighted_accuracy(np.array([u.accuracy for u in updates]), samples),
        num_devices=len({u.device_id for u in updates}),
        samples=int(samples.sum()),
        timestamp=timestamp or utc_now_iso(),
        aggregator=method,
        num_updates=len(updates),
        mean_staleness=float(staleness.mean()),
        contributors=sorted({u.device_id for u in updates}),
    )


def initial_params() -> list[float]:
    """Global version 0 (weights then bias): the model every device starts from."""
    m = LinearModel.initial(NUM_FEATURES, settings.prior_anomaly_rate)
    return [*m.weights.tolist(), m.bias]


def _load() -> dict:
    raw = fedavg_state.get(FLEET_KEY)
    if raw:
        return orjson.loads(raw)
    return {
        "version": 0, "round": 0, "buffer": [], "first_at": 0.0, "p": -1, "o": -1, "recent": [],
        "history": {"0": initial_params()},
    }  # fmt: skip


async def handle(event) -> None:  # noqa: ANN001
    global oldest_buffered_at
    msg = event.message
    flush = event.value == CONTROL_FLUSH
    update = None
    if not flush:
        try:
            update = LocalModelUpdate.from_json(event.value)
        except InvalidRecord as err:
            counters["dead_letters"] += 1
            await send_dead_letter(event, str(err))
            return
    state = _load()
    if state["p"] == msg.partition and msg.offset <= state["o"]:
        counters["replays_skipped"] += 1
        counters["outputs_resent"] += await outbox.resend(state.get("outbox", ()), msg.partition, msg.offset)
        return
    unacknowledged = outbox.keep(state.get("outbox", ()), msg.partition)
    now = event_time(msg)
    buffer: list[dict] = state["buffer"]
    recent: list[str] = state.setdefault("recent", [])
    if update is not None:
        tag = f"{update.device_id}:{update.model_version}"
        if tag in recent:  # a redelivery after a crash: already buffered or aggregated
            counters["duplicates_skipped"] += 1
        else:
            if not buffer:
                state["first_at"] = now
            buffer.append(update.to_dict())
            recent.append(tag)
            del recent[:-RECENT_UPDATES]
    full = len(buffer) >= settings.fedavg_buffer
    stale = flush and buffer and now - state["first_at"] >= settings.fedavg_timeout_s
    if full or stale:
        history: dict[str, list[float]] = state.setdefault("history", {})
        started = time.perf_counter()
        model = federate(
            [LocalModelUpdate(**b) for b in buffer],
            state["version"],
            state["round"] + 1,
            settings.aggregator,
            settings.staleness_exponent,
            settings.trim_ratio,
            format_timestamp(now),
            history={int(v): p for v, p in history.items()},
        )
        counters["aggregate_seconds_total"] += time.perf_counter() - started
        state["version"], state["round"], state["buffer"] = model.global_version, model.aggregation_round, []
        history[str(model.global_version)] = [*model.weights, model.bias]
        for old in sorted(history, key=int)[: -max(1, settings.fedavg_history)]:
            del history[old]
        counters["global_models"] += 1
        if not full:
            counters["partial_flushes"] += 1
        records = [(global_updates_topic.get_topic_name(), FLEET_KEY, model.to_json())]
        unacknowledged += tuple(await outbox.send(msg.partition, msg.offset, records))
        global_model.latest.offer(model)
        log.info(
            "global model v%d from %d updates of %d devices: accuracy %.3f",
            model.global_version, model.num_updates, model.num_devices, model.accuracy,
        )
    state["p"], state["o"], state["outbox"] = msg.partition, msg.offset, unacknowledged
    fedavg_state[FLEET_KEY] = orjson.dumps(state)
    oldest_buffered_at = state["first_at"] if state["buffer"] else None


@app.agent(local_updates_topic)
async def federated_averaging(stream) -> None:  # noqa: ANN001
    async for event in stream.events():
        try:
            await handle(event)
        except Exception as err:
            log.exception("fedavg failed at offset %d", event.message.offset)
            await send_dead_letter(event, f"processing error: {type(err).__name__}: {err}")


@app.timer(interval=5.0)
async def flush_stale_buffer() -> None:
    """Ask the FedAvg agent to aggregate a partial buffer that has waited too long."""
    if oldest_buffered_at is not None and time.time() - oldest_buffered_at >= settings.fedavg_timeout_s:
        await local_updates_topic.send(key=FLEET_KEY, value=CONTROL_FLUSH)
