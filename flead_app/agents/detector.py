"""Per-device detection and local training: the description's Flink job as one Faust agent.

A shell around ``flead_app.algorithms.device.step``. The agent takes the readings topic in
micro-batches (``take_events``: up to ``FLEAD_DETECTOR_BATCH`` messages or
``FLEAD_DETECTOR_BATCH_WAIT_S``), groups them by device, and for each device loads its row,
calls ``step`` once with all its messages in order, sends the alarms (``anomalies``) and local
updates (``local-model-updates``) it returns, and keeps the new row. Bad input becomes a dead
letter.

Rows are durable when offsets are committed, not on every message: a changed row stays in
memory (``tables.write_behind.WriteBehindTable``) and is written to the table, and so to its
changelog, once, just before the consumer commits the offsets that cover its input. A device
with several messages between commits costs one changelog record.

Quiet devices are trained by a timer, which sends a ``control: train`` record to the device's
partition, so the round runs in the agent, in order with the device's readings.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import replace

import orjson
from faust.exceptions import NotReady
from faust.web import View

from flead_app import faust_patches
from flead_app.agents.contiguity import ContiguityGuard
from flead_app.agents.dead_letter import send_dead_letter
from flead_app.agents.outbox import Outbox
from flead_app.algorithms.device import DeviceConfig, DeviceMessage, StepResult, initial_global, step
from flead_app.algorithms.incident_features import null_tables
from flead_app.algorithms.privacy import PrivacyConfig, noise_generator, privatize
from flead_app.algorithms.robust import corrupt_update, fault_of, parse_kinds
from flead_app.app import anomalies_topic, app, local_updates_topic, readings_topic, runtime, settings
from flead_app.io.kafka import event_time
from flead_app.models import (
    CONTROL_TRAIN,
    FLEET_KEY,
    Anomaly,
    InvalidRecord,
    LocalModelUpdate,
    ReadingBatch,
    format_timestamp,
    parse_readings,
    utc_now_iso,
)
from flead_app.tables.device_state import device_state
from flead_app.tables.rows import DeviceRow, Position
from flead_app.tables.write_behind import WriteBehindTable
from flead_app.web_auth import UNAUTHORIZED, bearer_token_ok

log = logging.getLogger(__name__)

config = DeviceConfig.from_settings(settings)
#: global version 0, which rounds start from until the first FedAvg version arrives
INITIAL_GLOBAL = initial_global(config)
#: fault injection (FLEAD_FAULTY_SHARE, experiments only): the kinds faulty devices corrupt their updates with
FAULT_KINDS = parse_kinds(settings.fault_kinds)
null_tables()  # the features' calibration prior (~0.3 s, cached): computed before the worker is ready
#: a device still sending gets its time-based round in-band, with its next message; the timer
#: steps in only for devices silent this long past the interval, so a fleet that started
#: together is not trained in one burst from one stale global version
QUIET_GRACE_S = 15.0
#: a batch of thousands of messages is seconds of work: the agent gives the event loop back this
#: often, so that the other agents, the sink and the consumer's commits are not held up meanwhile
YIELD_EVERY_READINGS = 2000

#: differential privacy of the local updates (FLEAD_DP_NOISE > 0); without a key set, this process's own
privacy = PrivacyConfig.from_settings(settings)
DP_KEY = settings.dp_key.encode() or os.urandom(32)

counters = runtime.stats.counter("detector")
outbox = Outbox([anomalies_topic, local_updates_topic], counters)
contiguity = ContiguityGuard(app, readings_topic.get_topic_name(), counters)
ANOMALIES, LOCAL_UPDATES = anomalies_topic.get_topic_name(), local_updates_topic.get_topic_name()


def encode_row(row: DeviceRow, partition: int) -> bytes:
    """A row as stored: outputs Kafka has acknowledged since it was kept leave its outbox."""
    kept = outbox.keep(row.position.outbox, partition)
    if kept != row.position.outbox:
        row = replace(row, position=replace(row.position, outbox=kept))
    return row.to_bytes()


rows: WriteBehindTable[DeviceRow] = WriteBehindTable(
    device_state, DeviceRow.from_bytes, encode_row, settings.state_cache_rows
)


class QuietDevices:
    """Devices with readings waiting for a round, and those whose round the timer requested."""

    def __init__(self) -> None:
        self.waiting: dict[bytes, float] = {}  # device key -> event time of its last round
        self.requested: set[bytes] = set()  # asked to train; the agent has not handled it yet

    def note(self, key: bytes, pending: int, last_round_at: float, handled_request: bool) -> None:
        if handled_request:
            self.requested.discard(key)
        if pending:
            self.waiting[key] = last_round_at
        else:
            self.waiting.pop(key, None)

    def due(self, waited_s: float, now: float) -> list[bytes]:
        return [k for k, t in self.waiting.items() if now - t >= waited_s and k not in self.requested]


quiet = QuietDevices()


def output_records(
    batches: list[ReadingBatch], result: StepResult, partition: int
) -> list[tuple[int, tuple[str, bytes, bytes]]]:
    """The step's alarms and local updates as (message index, (topic, key, value)) records."""
    device_id = batches[0].device_id
    key = device_id.encode()
    records: list[tuple[int, tuple[str, bytes, bytes]]] = []
    if result.alarms:
        broker, detected = runtime.broker_of(partition), utc_now_iso()
        for alarm in result.alarms:
            batch = batches[alarm.message]
            label = int(batch.labels[alarm.reading])
            anomaly = Anomaly(
                device_id=device_id,
                partition=partition,
                broker_id=broker,
                value=float(batch.values[alarm.reading]),
                z_score=alarm.z,
                severity=alarm.severity,
                timestamp=format_timestamp(float(batch.timestamps[alarm.reading])),
                detected_at=detected,
                label=None if label < 0 else label,
                probability=alarm.probability,
                rule=alarm.rule,
            )
            records.append((alarm.message, (ANOMALIES, key, anomaly.to_json())))
    fault = fault_of(device_id, settings.faulty_share, FAULT_KINDS) if result.updates else None
    for r in result.updates:
        if privacy.enabled:  # noised on the device, before the update leaves it
            r = privatize(r, privacy, noise_generator(DP_KEY, device_id, r.model_version))
            counters["updates_privatized"] += 1
        update = LocalModelUpdate(
            device_id=device_id,
            model_version=r.model_version,
            global_version=r.base_global_version,
            weights=r.weights.tolist(),
            bias=r.bias,
            accuracy=r.accuracy,
            loss=r.loss,
            samples=r.samples,
            timestamp=format_timestamp(r.trained_at),
            partition=partition,
            positives=r.positives,
            base_params=None if r.base_params is None else r.base_params.tolist(),
            curvature=None if r.curvature is None else r.curvature.tolist(),
            normal_histogram={str(b): int(c) for b, c in r.normal_histogram.items()},
            normal_moments=None if r.normal_moments is None else r.normal_moments.tolist(),
        )
        if fault is not None:  # a faulty device (fault injection) sends a corrupted update
            update = corrupt_update(update, fault)
        records.append((r.message, (LOCAL_UPDATES, FLEET_KEY, update.to_json())))
    return records


async def handle_device(key: bytes, items: list[tuple[object, ReadingBatch]]) -> None:
    """Apply one device's messages of a batch: load its row, skip replays, step once, send, keep."""
    first_event = items[0][0]
    row = rows.get(key, first_event)
    fresh = []
    for event, batch in items:
        msg = event.message
        if row.position.applied(msg.partition, msg.offset):
            counters["replays_skipped"] += 1
            counters["outputs_resent"] += await outbox.resend(row.position.outbox, msg.partition, msg.offset)
        else:
            fresh.append((event, batch))
    if not fresh:
        return
    # Event time (the record's Kafka timestamp), not the wall clock: a replay after a crash then
    # makes the same decisions and the same records, which the database deduplicates.
    messages = [
        DeviceMessage(event_time(e.message), b.timestamps, b.values, b.labels, train_now=b.control == CONTROL_TRAIN)
        for e, b in fresh
    ]
    batches = [b for _, b in fresh]
    device_id = batches[0].device_id
    result = step(row.state, messages, runtime.global_model.params or INITIAL_GLOBAL, device_id, config)
    last_event = fresh[-1][0]
    partition = last_event.message.partition
    kept = list(outbox.keep(row.position.outbox, partition))
    by_message: dict[int, list[tuple[str, bytes, bytes]]] = {}
    for index, record in output_records(batches, result, partition):
        by_message.setdefault(index, []).append(record)
    for index, records in by_message.items():
        kept += await outbox.send(partition, fresh[index][0].message.offset, records)
    position = Position(partition, last_event.message.offset, tuple(kept))
    rows.put(key, DeviceRow(result.state, position), last_event)
    requests = sum(m.train_now for m in messages)
    counters["readings"] += sum(len(b) for b in batches)
    counters["messages"] += len(messages) - requests
    counters["anomalies"] += len(result.alarms)
    counters["local_updates"] += len(result.updates)
    quiet.note(key, result.state.pending, result.state.last_round_at, requests > 0)


class Placement:
    """Which partition a device's readings belong to: Kafka's default (murmur2) partitioner, the
    Java client's and the simulator's rule. Producers with another partitioner (librdkafka's
    default, crc32) put a device's readings elsewhere; applied there, the device would get a
    second, independent row."""

    def __init__(self, partitions: int) -> None:
        self._all = list(range(partitions))
        self._of: dict[bytes, int] = {}
        from aiokafka.partitioner import DefaultPartitioner

        self._partitioner = DefaultPartitioner()

    def home(self, key: bytes) -> int:
        p = self._of.get(key)
        if p is None:
            p = self._of[key] = self._partitioner(key, self._all, self._all)
        return p


placement = Placement(settings.partitions)
FORWARDED = "flead-forwarded"  # header of a reading this worker moved to its device's partition


async def forward_misplaced(event, home: int) -> bool:  # noqa: ANN001 - a faust Event
    """Send a reading that arrived on another partition than its device's to the right one, with
    its original Kafka timestamp (the device's event time); False if it was moved here already
    (then it is applied where it is: a topic with another partition count must not loop)."""
    msg = event.message
    headers = msg.headers or ()
    names = headers.keys() if isinstance(headers, dict) else [k for k, _ in headers]
    if FORWARDED in names:
        counters["misplaced_applied"] += 1
        return False
    await readings_topic.send(
        key=msg.key, value=event.value, partition=home, timestamp=msg.timestamp, headers={FORWARDED: b"1"}
    )
    counters["misplaced_forwarded"] += 1
    return True


async def handle_batch(events: list) -> None:  # faust Events
    """Validate a micro-batch of messages, move misplaced ones to their device's partition, group
    the rest by device, and apply each device's messages."""
    by_device: dict[bytes, list[tuple[object, ReadingBatch]]] = {}
    for event in events:
        try:
            batch = parse_readings(event.value, event.message.key)
        except InvalidRecord as err:
            counters["dead_letters"] += 1
            await send_dead_letter(event, str(err))
            continue
        home = placement.home(event.message.key)
        if home != event.message.partition and await forward_misplaced(event, home):
            continue
        by_device.setdefault(event.message.key, []).append((event, batch))
    since_yield = 0
    for key, items in by_device.items():
        since_yield += sum(len(b) for _, b in items)
        if since_yield >= YIELD_EVERY_READINGS:  # let FedAvg, the sink and commits run meanwhile
            since_yield = 0
            await asyncio.sleep(0)
        try:
            await handle_device(key, items)
        except Exception as err:  # a bug must not stop the fleet: dead-letter this device's messages and go on
            log.exception("failed on device %r", key)
            for event, _ in items:
                counters["dead_letters"] += 1
                await send_dead_letter(event, f"processing error: {type(err).__name__}: {err}")


async def handle(event) -> None:  # noqa: ANN001 - a faust Event
    """One message on its own (tests and tools); the agent takes micro-batches."""
    await handle_batch([event])


@app.agent(readings_topic)
async def detect(stream) -> None:  # noqa: ANN001
    async for events in stream.take_events(settings.detector_batch, within=settings.detector_batch_wait_s):
        await handle_batch(contiguity.admit(events))
        await contiguity.refetch()


@app.timer(interval=5.0)
async def refetch_holes() -> None:
    await contiguity.refetch()


@app.on_partitions_assigned.connect
async def read_log_starts(app, assigned, **_) -> None:  # noqa: ANN001 - Faust's signal arguments
    await contiguity.on_assigned(assigned)


async def flush_rows() -> None:
    counters["rows_written"] += rows.flush()


faust_patches.add_pre_commit_hook(app, flush_rows)
faust_patches.add_state_rebuilt_hook(app, rows.forget_rebuilt)


faust_patches.add_commit_guard(app, outbox.commit_guard(readings_topic.get_topic_name()))


@app.on_partitions_revoked.connect
async def forget_revoked_rows(app, revoked, **_) -> None:  # noqa: ANN001 - Faust's signal arguments
    changed = rows.forget({tp.partition for tp in revoked if tp.topic == readings_topic.get_topic_name()})
    counters["rows_replayed_after_rebalance"] += changed


async def request_rounds(waited_s: float, reason: str = "quiet") -> int:
    """Ask for a round on each device whose readings have waited ``waited_s`` since its last round.

    The request is a ``control: train`` record on the device's own partition, so the round runs
    in the agent, in order with the device's readings (a timer or a web view cannot write tables).
    """
    due = quiet.due(waited_s, time.time())
    for key in due:
        quiet.requested.add(key)  # one request in flight per device, even while the agent lags behind
        control = orjson.dumps({"device_id": key.decode("utf-8", "replace"), "control": CONTROL_TRAIN})
        try:
            await readings_topic.send(key=key, value=control)
        except NotReady:  # the worker is stopping (a timer tick can land after the producer stopped)
            quiet.requested.discard(key)
            return 0
    if due:
        counters[f"{reason}_rounds_requested"] += len(due)
    return len(due)


@app.timer(interval=5.0)
async def train_quiet_devices() -> None:
    """Rounds for devices that went quiet with readings waiting since their last round."""
    await request_rounds(config.train_interval_s + QUIET_GRACE_S)


@app.page("/flead/train-pending/")
class TrainPendingView(View):
    """POST: a round now for every device of this worker with readings waiting (``flead demo``
    asks for it when its simulator stops, so that the last readings reach a global model)."""

    async def post(self, request):  # noqa: ANN001, ANN201
        if not bearer_token_ok(request.headers.get("Authorization"), settings.web_token):
            return self.json(UNAUTHORIZED, status=401)
        return self.json({"requested": await request_rounds(0.0, reason="flush")})
