"""Per-device detection and local training: the description's Flink job as one Faust agent.

For each message on ``edge-iiot-stream`` (one reading or a batch from one device): validate
it (bad input -> dead letter), score each reading against the device's history (anomalies ->
``anomalies``), buffer labelled readings, and every ``FLEAD_TRAIN_EVERY`` readings or
``FLEAD_TRAIN_INTERVAL_S`` seconds run a local SGD round (update -> ``local-model-updates``).
The state machine is ``flead_app.algorithms.device``; this module only moves bytes.

One table write per message: batching readings per message is what makes the hot path fast
(Faust costs about 90 us per event and a changelogged table write several times that).
Quiet devices are trained by a timer, which cannot write tables itself, so it sends a
``control: train`` record to the device's partition and the agent trains it there.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace

import numpy as np
import orjson
from faust.exceptions import NotReady

from flead_app.agents import global_model
from flead_app.agents.dead_letter import send_dead_letter
from flead_app.agents.outbox import Outbox
from flead_app.algorithms.detection import severity
from flead_app.algorithms.device import (
    DeviceConfig,
    DeviceState,
    ingest,
    initial_global,
    round_due,
    round_phase,
    train_round,
)
from flead_app.algorithms.holdout import holdout_mask
from flead_app.app import anomalies_topic, app, local_updates_topic, readings_topic, settings
from flead_app.io.kafka import event_time
from flead_app.models import (
    CONTROL_TRAIN,
    Anomaly,
    InvalidRecord,
    LocalModelUpdate,
    format_timestamp,
    parse_readings,
    utc_now_iso,
)
from flead_app.tables.device_state import device_state
from flead_app.tables.fedavg_state import FLEET_KEY

log = logging.getLogger(__name__)

config = DeviceConfig.from_settings(settings)
#: global version 0, which rounds start from until the first FedAvg version arrives
INITIAL_GLOBAL = initial_global(config)

#: what this worker did, for /flead/stats and the demo's live summary
counters: Counter[str] = Counter()
#: devices with readings waiting for a round -> time of their last round (for the quiet timer)
waiting: dict[bytes, float] = {}
#: devices the timer asked to train whose request the agent has not handled yet
requested: set[bytes] = set()
#: anomalies and local updates, remembered in the device's row until Kafka acknowledges them
outbox = Outbox([anomalies_topic, local_updates_topic])
ANOMALIES, LOCAL_UPDATES = anomalies_topic.get_topic_name(), local_updates_topic.get_topic_name()


def anomaly_records(batch, scored, partition: int, z_threshold: float, z_critical: float) -> list[Anomaly]:  # noqa: ANN001
    idx = np.flatnonzero(scored.scored & (np.abs(scored.z) > z_threshold))
    if idx.shape[0] == 0:
        return []
    broker = global_model.broker_of(partition)
    detected = utc_now_iso()
    out = []
    for i in idx.tolist():
        z = float(scored.z[i])
        label = int(batch.labels[i])
        out.append(
            Anomaly(
                device_id=batch.device_id,
                partition=partition,
                broker_id=broker,
                value=float(batch.values[i]),
                z_score=z,
                severity=severity(z, z_threshold, z_critical) or "warning",
                timestamp=format_timestamp(float(batch.timestamps[i])),
                detected_at=detected,
                label=None if label < 0 else label,
            )
        )
    return out


async def handle(event) -> None:  # noqa: ANN001 - a faust Event
    """Apply one message of the readings topic to its device's state."""
    msg = event.message
    try:
        batch = parse_readings(event.value, msg.key)
    except InvalidRecord as err:
        counters["dead_letters"] += 1
        await send_dead_letter(event, str(err))
        return
    key = msg.key
    raw_state = device_state.get(key)
    state = DeviceState.from_bytes(raw_state) if raw_state else DeviceState()
    if state.partition == msg.partition and msg.offset <= state.offset:
        counters["replays_skipped"] += 1
        counters["outputs_resent"] += await outbox.resend(state.outbox, msg.partition, msg.offset)
        return
    # Event time (the record's Kafka timestamp), not the wall clock: a replay after a crash then
    # makes the same decisions and the same records, which the database deduplicates.
    now = event_time(msg)
    outputs: list[tuple[str, bytes, bytes]] = []
    if batch.control != CONTROL_TRAIN:
        holdout = holdout_mask(batch.device_id, batch.timestamps, config.holdout_percent)
        phase = round_phase(batch.device_id, config)
        state, scored = ingest(state, batch.values, batch.labels, now, config, holdout, phase)
        counters["readings"] += len(batch)
        counters["messages"] += 1
        for anomaly in anomaly_records(batch, scored, msg.partition, config.z_threshold, config.z_critical):
            counters["anomalies"] += 1
            outputs.append((ANOMALIES, key, anomaly.to_json()))
    if round_due(state, now, config, requested=batch.control == CONTROL_TRAIN):
        state, result = train_round(state, now, config, global_model.latest.params or INITIAL_GLOBAL)
        if result is not None:
            update = LocalModelUpdate(
                device_id=batch.device_id,
                model_version=result.model_version,
                global_version=result.base_global_version,
                weights=result.weights.tolist(),
                bias=result.bias,
                accuracy=result.accuracy,
                loss=result.loss,
                samples=result.samples,
                timestamp=format_timestamp(now),
                partition=msg.partition,
            )
            counters["local_updates"] += 1
            outputs.append((LOCAL_UPDATES, FLEET_KEY, update.to_json()))
    sent = await outbox.send(msg.partition, msg.offset, outputs) if outputs else []
    unacknowledged = outbox.keep(state.outbox, msg.partition) + tuple(sent) if (sent or state.outbox) else ()
    state = replace(state, partition=msg.partition, offset=msg.offset, outbox=unacknowledged)
    device_state[key] = state.to_bytes()
    if batch.control == CONTROL_TRAIN:
        requested.discard(key)
    if state.pending:
        waiting[key] = state.last_round_at
    else:
        waiting.pop(key, None)


@app.agent(readings_topic)
async def detect(stream) -> None:  # noqa: ANN001
    async for event in stream.events():
        try:
            await handle(event)
        except Exception as err:  # a bug must not stop the fleet: dead-letter and go on
            log.exception("failed on %s[%d]@%d", event.message.topic, event.message.partition, event.message.offset)
            counters["dead_letters"] += 1
            await send_dead_letter(event, f"processing error: {type(err).__name__}: {err}")


#: a device still sending gets its time-based round in-band, with its next message; the timer
#: steps in only for devices silent this long past the interval. Without the grace the timer would
#: fire for a whole fleet that started together in one burst, every round starting from the same
#: stale global version (a 3-minute demo: held-out F1 of the last global version 0.67 with the
#: bursts, 0.77 without)
QUIET_GRACE_S = 15.0


async def request_rounds(waited_s: float, reason: str = "quiet") -> int:
    """Ask for a round on each device whose readings have waited ``waited_s`` since its last round.

    The request is a ``control: train`` record on the device's own partition, so the round runs
    in the agent, in order with the device's readings (a timer or a web view cannot write tables).
    """
    now = time.time()
    due = [k for k, t in waiting.items() if now - t >= waited_s and k not in requested]
    for key in due:
        requested.add(key)  # one request in flight per device, even while the agent lags behind
        control = orjson.dumps({"device_id": key.decode("utf-8", "replace"), "control": CONTROL_TRAIN})
        try:
            await readings_topic.send(key=key, value=control)
        except NotReady:  # the worker is stopping (a timer tick can land after the producer stopped)
            requested.discard(key)
            return 0
    if due:
        counters[f"{reason}_rounds_requested"] += len(due)
    return len(due)


@app.timer(interval=5.0)
async def train_quiet_devices() -> None:
    """Rounds for devices that went quiet with readings waiting since their last round."""
    await request_rounds(config.train_interval_s + QUIET_GRACE_S)
