"""Kafka records of ``edge-iiot-stream`` as the Spark jobs see them: one message -> readings.

The jobs accept exactly what the worker accepts (``flead_app.models.parse_readings``, with the
key checked against device_id): a single reading, a batch that expands to several readings, a
control record (skipped, it carries no reading) or anything invalid (skipped and counted, as
the worker dead-letters it). Plain tuples travel between Spark's Python workers because they
pickle far faster than dataclasses.
"""

from __future__ import annotations

from typing import NamedTuple

from flead_app.models import CONTROL_TRAIN, InvalidRecord, parse_readings

OK = "ok"
CONTROL = "control"
INVALID = "invalid"
STATUSES = (OK, CONTROL, INVALID)


class Message(NamedTuple):
    """One Kafka message after validation; ``status`` says whether it carries readings."""

    status: str
    device_id: str | None
    partition: int
    offset: int
    timestamps: list[float]
    values: list[float]
    labels: list[int]  # 0, 1 or -1 (unknown)


def parse_message(
    key: bytes | bytearray | None, value: bytes | bytearray | None, partition: int, offset: int
) -> Message:
    """Validate one record as the worker does; never raises."""
    try:
        batch = parse_readings(bytes(value) if value is not None else None, bytes(key) if key is not None else None)
    except InvalidRecord:
        return Message(INVALID, None, partition, offset, [], [], [])
    if batch.control == CONTROL_TRAIN:
        return Message(CONTROL, batch.device_id, partition, offset, [], [], [])
    return Message(
        OK, batch.device_id, partition, offset, batch.timestamps.tolist(), batch.values.tolist(), batch.labels.tolist()
    )


def reading_tuples(msg: Message, kafka_ts_s: float) -> list[tuple]:
    """(device_id, partition, offset, index, reading_ts_s, kafka_ts_s, value, label) per reading."""
    return [
        (msg.device_id, msg.partition, msg.offset, i, ts, kafka_ts_s, v, lab)
        for i, (ts, v, lab) in enumerate(zip(msg.timestamps, msg.values, msg.labels, strict=True))
    ]
