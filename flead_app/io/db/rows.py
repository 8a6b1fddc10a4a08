"""Record -> table row mapping, kept pure so it is tested without a database.

The Kafka records (``flead_app.models``) carry ISO 8601 strings and the names the wire format
uses; the tables keep the column names of the system description (``samples_processed``,
``created_at``) and store aware datetimes, so that the natural unique keys, which contain the
time column, compare equal however a timestamp was spelled (``Z`` or ``+00:00``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flead_app.models import Anomaly, GlobalModel, LocalModelUpdate


def parse_time(value: str | datetime) -> datetime:
    """ISO 8601 (``...Z`` or with an offset) or a datetime -> an aware UTC datetime.

    A value without an offset is refused: guessing a zone would make the same event two
    different keys on two machines.
    """
    if isinstance(value, datetime):
        dt = value
    else:
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected an ISO 8601 timestamp, got {value!r}")
        dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        raise ValueError(f"timestamp has no UTC offset: {value!r}")
    return dt.astimezone(UTC)


def local_model_row(rec: LocalModelUpdate) -> dict[str, Any]:
    return {
        "device_id": rec.device_id,
        "model_version": int(rec.model_version),
        "global_version": int(rec.global_version),
        "accuracy": float(rec.accuracy),
        "loss": float(rec.loss),
        "samples_processed": int(rec.samples),
        "weights": [float(w) for w in rec.weights],
        "bias": float(rec.bias),
        "partition": int(rec.partition),
        "created_at": parse_time(rec.timestamp),
    }


def global_model_row(rec: GlobalModel) -> dict[str, Any]:
    return {
        "global_version": int(rec.global_version),
        "aggregation_round": int(rec.aggregation_round),
        "num_devices": int(rec.num_devices),
        "num_updates": int(rec.num_updates),
        "samples": int(rec.samples),
        "accuracy": float(rec.accuracy),
        "weights": [float(w) for w in rec.weights],
        "bias": float(rec.bias),
        "aggregator": rec.aggregator,
        "mean_staleness": float(rec.mean_staleness),
        "created_at": parse_time(rec.timestamp),
    }


def anomaly_row(rec: Anomaly, now: datetime | None = None) -> dict[str, Any]:
    """``detected_at`` falls back to ``now`` (the write time) when the detector left it empty."""
    detected = parse_time(rec.detected_at) if rec.detected_at else (now or datetime.now(UTC))
    return {
        "device_id": rec.device_id,
        "partition": int(rec.partition),
        "broker_id": int(rec.broker_id),
        "value": float(rec.value),
        "z_score": float(rec.z_score),
        "severity": rec.severity,
        "label": None if rec.label is None else int(rec.label),
        "probability": None if rec.probability is None else float(rec.probability),
        "rule": rec.rule,
        "timestamp": parse_time(rec.timestamp),
        "detected_at": parse_time(detected),
    }
