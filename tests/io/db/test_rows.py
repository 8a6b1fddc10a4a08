"""Record -> row mapping, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from flead_app.io.db.rows import anomaly_row, global_model_row, local_model_row, parse_time
from flead_app.io.db.schema import anomalies, federated_models, local_models


def test_parse_time_spellings_of_utc_are_equal():
    a = parse_time("2025-11-07T15:22:31.000Z")
    b = parse_time("2025-11-07T15:22:31+00:00")
    c = parse_time("2025-11-07T16:22:31+01:00")
    assert a == b == c
    assert a.tzinfo is UTC
    assert parse_time(datetime(2025, 1, 1, tzinfo=timezone(timedelta(hours=2)))).hour == 22


@pytest.mark.parametrize("bad", ["2025-11-07T15:22:31", "", "yesterday", None])
def test_parse_time_refuses_naive_or_garbage(bad):
    with pytest.raises(ValueError):
        parse_time(bad)


def test_local_model_row_renames_and_converts(local_update):
    row = local_model_row(local_update())
    assert row["samples_processed"] == 50
    assert row["created_at"] == datetime(2025, 11, 7, 15, 23, 31, tzinfo=UTC)
    assert row["weights"] == [0.1, -0.2, 0.3]
    assert row["partition"] == 5
    assert "samples" not in row and "timestamp" not in row


def test_global_model_row(global_model):
    row = global_model_row(global_model())
    assert row["global_version"] == 71 and row["num_updates"] == 20 and row["samples"] == 1000
    assert row["created_at"] == datetime(2025, 11, 7, 15, 24, tzinfo=UTC)
    assert "contributors" not in row  # not a column


def test_anomaly_row_times_and_label(anomaly):
    row = anomaly_row(anomaly())
    assert row["timestamp"] == datetime(2025, 11, 7, 15, 22, 31, tzinfo=UTC)
    assert row["detected_at"] == datetime(2025, 11, 7, 15, 22, 31, 250000, tzinfo=UTC)
    assert row["label"] == 1 and row["broker_id"] == 2
    assert anomaly_row(anomaly(label=None))["label"] is None


def test_anomaly_without_detected_at_gets_the_write_time(anomaly):
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert anomaly_row(anomaly(detected_at=""), now)["detected_at"] == now


@pytest.mark.parametrize(
    ("table", "mapper", "factory"),
    [
        (local_models, local_model_row, "local_update"),
        (federated_models, global_model_row, "global_model"),
        (anomalies, anomaly_row, "anomaly"),
    ],
)
def test_rows_fill_every_required_column(table, mapper, factory, request):
    """Every NOT NULL column without a default is present, and no key is unknown."""
    row = mapper(request.getfixturevalue(factory)())
    required = {c.name for c in table.columns if not c.nullable and c.server_default is None and c.identity is None}
    assert required <= row.keys()
    assert row.keys() <= set(table.c.keys())
