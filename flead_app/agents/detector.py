"""Per-device detection and local training: the description's Flink job as one Faust agent.

A shell around ``flead_app.algorithms.device.step``. For each message on ``edge-iiot-stream``
(one reading, or a batch of one device's readings) it loads the device's row, calls ``step``
once, sends the alarms (``anomalies``) and local updates (``local-model-updates``) it returns,
and stores the row. Bad input becomes a dead letter.

One table write per message: a changelogged write costs several times what Faust itself costs
per event, which is why devices may batch readings into one message. Quiet devices are trained
by a timer, which cannot write tables itself, so it sends a ``control: train`` record to the
device's partition and the agent trains the device there, in order with its readings.
"""

from __future__ import annotations

import logging
import time

import orjson
from faust.exceptions import NotReady
from faust.web import View

from flead_app.agents.dead_letter import send_dead_letter
from flead_app.agents.outbox import Outbox
from flead_app.algorithms.device import DeviceConfig, DeviceMessage, StepResult, initial_global, step
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

log = logging.getLogger(__name__)

config = DeviceConfig.from_settings(settings)
#: global version 0, which rounds start from until the first FedAvg version arrives
INITIAL_GLOBAL = initial_global(config)
#: a device still sending gets its time-based round in-band, with its next message; the timer
#: steps in only for devices silent this long past the interval, so a fleet that started
#: together is not trained in one burst from one stale global version
QUIET_GRACE_S = 15.0

counters = runtime.stats.counter("detector")
outbox = Outbox([anomalies_topic, local_updates_topic], counters)
ANOMALIES, LOCAL_UPDATES = anomalies_topic.get_topic_name(), local_updates_topic.get_topic_name()


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


def output_records(batch: ReadingBatch, result: StepResult, partition: int) -> list[tuple[str, bytes, bytes]]:
    """The step's alarms and local updates as (topic, key, value) records."""
    key = batch.device_id.encode()
    records: list[tuple[str, bytes, bytes]] = []
    if result.alarms:
        broker, detected = runtime.broker_of(partition), utc_now_iso()
        for alarm in result.alarms:
            label = int(batch.labels[alarm.reading])
            anomaly = Anomaly(
                device_id=batch.device_id,
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
            records.append((ANOMALIES, key, anomaly.to_json()))
    for r in result.updates:
        update = LocalModelUpdate(
            device_id=batch.device_id,
            model_version=r.model_version,
            global_version=r.base_global_version,
            weights=r.weights.tolist(),
            bias=r.bias,
            accuracy=r.accuracy,
            loss=r.loss,
            samples=r.samples,
            timestamp=format_timestamp(r.trained_at),
            partition=partition,
        )
        records.append((LOCAL_UPDATES, FLEET_KEY, update.to_json()))
    return records


async def handle(event) -> None:  # noqa: ANN001 - a faust Event
    """Apply one message of the readings topic to its device's state: load, step, send, store."""
    msg = event.message
    try:
        batch = parse_readings(event.value, msg.key)
    except InvalidRecord as err:
        counters["dead_letters"] += 1
        await send_dead_letter(event, str(err))
        return
    row = DeviceRow.from_bytes(device_state.get(msg.key))
    if row.position.applied(msg.partition, msg.offset):
        counters["replays_skipped"] += 1
        counters["outputs_resent"] += await outbox.resend(row.position.outbox, msg.partition, msg.offset)
        return
    requested = batch.control == CONTROL_TRAIN
    # Event time (the record's Kafka timestamp), not the wall clock: a replay after a crash then
    # makes the same decisions and the same records, which the database deduplicates.
    message = DeviceMessage(event_time(msg), batch.timestamps, batch.values, batch.labels, train_now=requested)
    result = step(row.state, [message], runtime.global_model.params or INITIAL_GLOBAL, batch.device_id, config)
    sent = await outbox.send(msg.partition, msg.offset, output_records(batch, result, msg.partition))
    kept = outbox.keep(row.position.outbox, msg.partition) + tuple(sent)
    device_state[msg.key] = DeviceRow(result.state, Position(msg.partition, msg.offset, kept)).to_bytes()
    if not requested:
        counters["readings"] += len(batch)
        counters["messages"] += 1
    counters["anomalies"] += len(result.alarms)
    counters["local_updates"] += len(result.updates)
    quiet.note(msg.key, result.state.pending, result.state.last_round_at, requested)


@app.agent(readings_topic)
async def detect(stream) -> None:  # noqa: ANN001
    async for event in stream.events():
        try:
            await handle(event)
        except Exception as err:  # a bug must not stop the fleet: dead-letter and go on
            log.exception("failed on %s[%d]@%d", event.message.topic, event.message.partition, event.message.offset)
            counters["dead_letters"] += 1
            await send_dead_letter(event, f"processing error: {type(err).__name__}: {err}")


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
        return self.json({"requested": await request_rounds(0.0, reason="flush")})
