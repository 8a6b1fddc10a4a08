"""Federated averaging: a shell around ``flead_app.algorithms.fedbuff.FedBuffState``.

Every local update is keyed ``fleet``, so they all arrive, in order, at one partition and one
worker, which owns the single ``fedavg_state`` row. The agent takes updates in micro-batches,
offers each one in order to the FedBuff state (which aggregates every ``FLEAD_FEDAVG_BUFFER``
updates into the next global version, ``FLEAD_AGGREGATOR`` deciding how), sends the new global
models, and keeps the row in memory until the next commit writes it (``WriteBehindTable``: the
row holds the buffer and the version history, tens of kilobytes, so writing it per update would
make its changelog the worker's largest output). A timer asks for a partial flush when the
oldest buffered update is older than ``FLEAD_FEDAVG_TIMEOUT_S``, so a quiet fleet still gets
new versions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from flead_app import faust_patches
from flead_app.agents.contiguity import ContiguityGuard
from flead_app.agents.dead_letter import send_dead_letter
from flead_app.agents.outbox import Outbox
from flead_app.algorithms.device import DeviceConfig, initial_global
from flead_app.algorithms.fedbuff import FedBuffConfig, FedBuffState
from flead_app.app import app, global_updates_topic, local_updates_topic, runtime, settings
from flead_app.io.kafka import event_time
from flead_app.models import FLEET_KEY, InvalidRecord, LocalModelUpdate
from flead_app.tables.fedavg_state import fedavg_state
from flead_app.tables.rows import FedAvgRow, Position
from flead_app.tables.write_behind import WriteBehindTable

log = logging.getLogger(__name__)

CONTROL_FLUSH = b'{"control":"flush"}'
_v0 = initial_global(DeviceConfig.from_settings(settings))
config = FedBuffConfig.from_settings(settings, [*_v0.weights.tolist(), _v0.bias])
START = FedBuffState.start(config)

counters = runtime.stats.counter("fedavg")
outbox = Outbox([global_updates_topic], counters)
contiguity = ContiguityGuard(app, local_updates_topic.get_topic_name(), counters)
GLOBAL_UPDATES = global_updates_topic.get_topic_name()


def encode_row(row: FedAvgRow, partition: int) -> bytes:
    kept = outbox.keep(row.position.outbox, partition)
    if kept != row.position.outbox:
        row = replace(row, position=replace(row.position, outbox=kept))
    return row.to_bytes()


rows: WriteBehindTable[FedAvgRow] = WriteBehindTable(
    fedavg_state, lambda raw: FedAvgRow.from_bytes(raw, START), encode_row, capacity=4
)


class FlushClock:
    """When the oldest buffered update arrived (None: buffer empty), for the flush timer."""

    oldest_buffered_at: float | None = None


clock = FlushClock()


async def handle(event) -> None:  # noqa: ANN001 - a faust Event keyed ``fleet``
    """Offer one update (or flush request) to the fleet row's FedBuff state; send what it makes."""
    msg = event.message
    update = None
    if event.value != CONTROL_FLUSH:
        try:
            update = LocalModelUpdate.from_json(event.value)
        except InvalidRecord as err:
            counters["dead_letters"] += 1
            await send_dead_letter(event, str(err))
            return
    row = rows.get(FLEET_KEY, event)
    if row.position.applied(msg.partition, msg.offset):
        counters["replays_skipped"] += 1
        counters["outputs_resent"] += await outbox.resend(row.position.outbox, msg.partition, msg.offset)
        return
    started = time.perf_counter()
    state, offered = row.state.offer(update, event_time(msg), config)
    kept = list(outbox.keep(row.position.outbox, msg.partition))
    if offered.duplicate:  # a redelivery after a crash: already buffered or aggregated
        counters["duplicates_skipped"] += 1
    counters["updates_refused_infeasible"] += offered.refused
    if offered.model is not None:
        model = offered.model
        counters["aggregate_seconds_total"] += time.perf_counter() - started
        counters["global_models"] += 1
        counters["partial_flushes"] += offered.partial
        kept += await outbox.send(msg.partition, msg.offset, [(GLOBAL_UPDATES, FLEET_KEY, model.to_json())])
        runtime.global_model.offer(model)
        log.info(
            "global model v%d from %d updates of %d devices: accuracy %.3f",
            model.global_version, model.num_updates, model.num_devices, model.accuracy,
        )  # fmt: skip
    counters["updates"] += update is not None
    rows.put(FLEET_KEY, FedAvgRow(state, Position(msg.partition, msg.offset, tuple(kept))), event)
    clock.oldest_buffered_at = state.first_at if state.buffer else None


@app.agent(local_updates_topic)
async def federated_averaging(stream) -> None:  # noqa: ANN001
    async for events in stream.take_events(settings.detector_batch, within=settings.detector_batch_wait_s):
        for event in contiguity.admit(events):
            try:
                await handle(event)
            except Exception as err:  # a bug must not stop aggregation: dead-letter the update and go on
                log.exception("fedavg failed at offset %d", event.message.offset)
                await send_dead_letter(event, f"processing error: {type(err).__name__}: {err}")
        await contiguity.refetch()


@app.timer(interval=5.0)
async def refetch_holes() -> None:
    await contiguity.refetch()


@app.on_partitions_assigned.connect
async def read_log_starts(app, assigned, **_) -> None:  # noqa: ANN001 - Faust's signal arguments
    await contiguity.on_assigned(assigned)


async def flush_row() -> None:
    counters["rows_written"] += rows.flush()


faust_patches.add_pre_commit_hook(app, flush_row)
faust_patches.add_state_rebuilt_hook(app, rows.forget_rebuilt)


faust_patches.add_commit_guard(app, outbox.commit_guard(local_updates_topic.get_topic_name()))


@app.on_partitions_revoked.connect
async def forget_revoked_row(app, revoked, **_) -> None:  # noqa: ANN001 - Faust's signal arguments
    rows.forget({tp.partition for tp in revoked if tp.topic == local_updates_topic.get_topic_name()})


@app.timer(interval=5.0)
async def flush_stale_buffer() -> None:
    """Ask the FedAvg agent to aggregate a partial buffer that has waited too long."""
    oldest = clock.oldest_buffered_at
    if oldest is not None and time.time() - oldest >= config.timeout_s:
        await local_updates_topic.send(key=FLEET_KEY, value=CONTROL_FLUSH)
