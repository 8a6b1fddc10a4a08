"""The record parsers refuse what PostgreSQL or a Kafka client could not take, with a reason."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flead_app.models import Anomaly, GlobalModel, InvalidRecord, LocalModelUpdate, check_device_id, parse_readings


@settings(max_examples=500, deadline=None)
@given(st.text(min_size=0, max_size=140))
def test_a_device_id_is_either_refused_with_a_reason_or_storable(device_id):
    try:
        accepted = check_device_id(device_id)
    except InvalidRecord as err:
        assert str(err)
        return
    assert 1 <= len(accepted) <= 128 and "\x00" not in accepted and accepted.strip()
    accepted.encode("utf-8")  # PostgreSQL's text and Kafka keys are UTF-8: no lone surrogates


def _reading(device_id: str, value: float = 1.0) -> bytes:
    """A reading as a client would write it (``json`` escapes what it cannot encode, e.g. surrogates)."""
    return json.dumps({"device_id": device_id, "timestamp": "2025-11-07T00:00:00Z", "value": value}).encode()


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=20), st.floats(allow_nan=True, allow_infinity=True))
def test_parse_readings_never_raises_anything_but_invalid_record(device_id, value):
    try:
        batch = parse_readings(_reading(device_id, value), device_id.encode("utf-8", "surrogatepass"))
    except InvalidRecord:
        return
    assert batch.device_id == device_id and len(batch) == 1 and batch.values[0] == value


@pytest.mark.parametrize("bad", ["bad\x00dev", "\x07", "tab\there", "\ud800x", "   ", ""])
def test_ids_postgresql_or_a_client_would_choke_on_are_refused(bad):
    with pytest.raises(InvalidRecord):
        parse_readings(_reading(bad))


def test_whole_numbers_beyond_postgresql_integer_are_refused():
    update = dict(device_id="d", model_version=1, global_version=0, weights=[0.1], bias=0.0, accuracy=0.5,
                  loss=0.1, samples=40, timestamp="2025-11-07T00:00:00.000Z")  # fmt: skip
    LocalModelUpdate.from_dict(update)
    for field, value in (("samples", 2**31), ("samples", 0), ("model_version", True), ("partition", 2**40)):
        with pytest.raises(InvalidRecord, match=field):
            LocalModelUpdate.from_dict({**update, field: value})
    with pytest.raises(InvalidRecord, match="broker_id"):
        Anomaly.from_dict(dict(device_id="d", partition=0, broker_id=2**35, value=1.0, z_score=3.0,
                               severity="critical", timestamp="2025-11-07T00:00:00.000Z"))  # fmt: skip


def test_labels_detection_times_and_aggregators_are_bounded_too():
    """Found by the fuzz of the parsers against PostgreSQL (tests/io/db/test_sink_poison_integration.py):
    an anomaly's label and detection time, and a global model's aggregator, were not checked."""
    anomaly = dict(device_id="d", partition=0, broker_id=1, value=1.0, z_score=3.0, severity="critical",
                   timestamp="2025-11-07T00:00:00.000Z")  # fmt: skip
    Anomaly.from_dict({**anomaly, "label": None, "detected_at": "2025-11-07T00:00:01Z"})
    for change, reason in (
        ({"label": 2**31}, "label"),
        ({"label": 2}, "label"),
        ({"detected_at": "soon"}, "not ISO 8601"),
        ({"timestamp": "9999-12-31T23:00:00-13:00"}, "out of range"),
        ({"detected_at": "0001-01-01T00:30:00+01:00"}, "out of range"),
    ):
        with pytest.raises(InvalidRecord, match=reason):
            Anomaly.from_dict({**anomaly, **change})
    stamp = "9999-12-31T23:00:00-13:00"
    with pytest.raises(InvalidRecord, match="out of range"):
        parse_readings(json.dumps({"device_id": "d", "timestamp": stamp, "value": 1.0}).encode())
    model = dict(global_version=1, aggregation_round=1, weights=[0.1], bias=0.0, accuracy=0.5, num_devices=1,
                 samples=10, timestamp="2025-11-07T00:00:00Z")  # fmt: skip
    GlobalModel.from_dict({**model, "aggregator": "median"})
    with pytest.raises(InvalidRecord, match="aggregator"):
        GlobalModel.from_dict({**model, "aggregator": "fed\x00avg"})
