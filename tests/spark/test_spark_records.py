import orjson

from flead_app.spark_support.records import CONTROL, INVALID, OK, parse_message, reading_tuples


def _single(device="device_1", ts="2025-11-07T15:22:31.000Z", value=42.5, label=0):
    return orjson.dumps({"device_id": device, "timestamp": ts, "value": value, "label": label})


def test_single_reading_is_one_reading():
    msg = parse_message(b"device_1", _single(), 3, 17)
    assert msg.status == OK and msg.device_id == "device_1" and (msg.partition, msg.offset) == (3, 17)
    assert msg.values == [42.5] and msg.labels == [0] and len(msg.timestamps) == 1


def test_batch_expands_to_its_readings_in_order():
    raw = orjson.dumps(
        {
            "device_id": "d",
            "timestamps": ["2025-11-07T15:00:00Z", "2025-11-07T15:00:01Z", "2025-11-07T15:00:02Z"],
            "values": [1.0, 2.0, 3.0],
            "labels": [0, None, 1],
        }
    )
    msg = parse_message(bytearray(b"d"), bytearray(raw), 0, 5)
    assert msg.status == OK and msg.values == [1.0, 2.0, 3.0] and msg.labels == [0, -1, 1]
    rows = reading_tuples(msg, 1000.0)
    assert [r[3] for r in rows] == [0, 1, 2]
    assert rows[2] == ("d", 0, 5, 2, msg.timestamps[2], 1000.0, 3.0, 1)


def test_control_and_invalid_records_hold_no_readings():
    control = parse_message(b"d", orjson.dumps({"device_id": "d", "control": "train"}), 0, 1)
    assert control.status == CONTROL and control.values == []
    assert reading_tuples(control, 0.0) == []
    for key, raw in [
        (b"d", b"not json"),
        (b"other", _single(device="d")),  # key differs from device_id: the worker refuses it too
        (b"d", orjson.dumps({"device_id": "d", "timestamp": "yesterday", "value": 1})),
        (b"d", None),
        (None, orjson.dumps({"device_id": "d", "timestamp": "2025-11-07T15:00:00Z", "value": float("inf")})),
    ]:
        assert parse_message(key, raw, 0, 0).status == INVALID
