"""Database against the real PostgreSQL of the stack (a fresh schema per test)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from flead_app.io.db.store import Database, DatabaseUnreachable, write_with_retry
from tests.io.conftest import NO_RETENTION, expected_backend

pytestmark = pytest.mark.integration


def closed_port_url(url: str) -> str:
    """The same URL pointing at a local port nothing listens on (a real refused connection)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from flead_app.io.db.store import sqlalchemy_url

    return sqlalchemy_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


def test_init_schema_twice_is_harmless(db_url, backend, local_update):
    db = Database(db_url, backend=backend, **NO_RETENTION)
    want = expected_backend(backend)
    assert db.init_schema() == want, db.backend_info
    db.insert_local_models([local_update()])
    assert db.init_schema() == want
    counts = db.count_rows()
    assert counts["local_models"] == 1
    assert set(counts) >= {
        "local_models",
        "federated_models",
        "anomalies",
        "model_evaluations",
        "evaluation_summaries",
        "stream_analytics",
        "kafka_traffic",
    }
    with db.engine.connect() as conn:
        indexes = set(
            conn.execute(text("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")).scalars()
        )
    assert {"local_models_created_at_idx", "anomalies_timestamp_idx", "federated_models_created_at_idx"} <= indexes
    db.close()


def test_the_same_records_twice_are_inserted_once(db, local_update, global_model, anomaly):
    updates = [local_update(device_id=f"device_{i}", model_version=1 + i % 3) for i in range(10)]
    models = [global_model(global_version=v, aggregation_round=v) for v in (1, 2, 3)]
    found = [anomaly(value=40.0 + i) for i in range(5)]
    assert db.insert_local_models(updates) == 10
    assert db.insert_global_models(models) == 3
    assert db.insert_anomalies(found) == 5
    # a redelivery: the same records, one of them spelled with +00:00 instead of Z
    again = [*updates[:-1], local_update(device_id="device_9", model_version=1, timestamp="2025-11-07T15:23:31+00:00")]
    assert db.insert_local_models(again) == 0
    assert db.insert_global_models(models) == 0
    assert db.insert_anomalies(found + [anomaly(value=99.0)]) == 1
    assert db.insert_local_models([]) == 0
    counts = db.count_rows()
    assert (counts["local_models"], counts["federated_models"], counts["anomalies"]) == (10, 3, 6)
    with db.engine.connect() as conn:
        row = conn.execute(text("SELECT samples_processed, created_at, weights FROM local_models LIMIT 1")).one()
    assert row.samples_processed == 50
    assert row.created_at == datetime(2025, 11, 7, 15, 23, 31, tzinfo=UTC)
    assert row.weights == [0.1, -0.2, 0.3]


def test_a_batch_larger_than_one_statement(db, local_update):
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    updates = [local_update(device_id=f"d{i}", timestamp=(t0 + timedelta(seconds=i)).isoformat()) for i in range(2500)]
    assert db.insert_local_models(updates) == 2500
    assert db.insert_local_models(updates[2000:] + updates[:10]) == 0


def test_generic_insert_and_replace_rows(db):
    now = datetime.now(UTC)

    def summary(kind: str, version: int, f1: float) -> dict:
        return dict(
            model_kind=kind,
            model_version=version,
            split="holdout",
            samples=100,
            accuracy=0.9,
            precision=0.8,
            recall=0.7,
            f1=f1,
            roc_auc=None,
            tp=7,
            fp=2,
            tn=88,
            fn=3,
            event_recall=None,
            false_alarms_per_1000=None,
            evaluated_at=now,
        )

    assert db.insert_rows("evaluation_summaries", [summary("global", 1, 0.5), summary("local", 0, 0.4)]) == 2
    assert db.insert_rows("evaluation_summaries", [summary("global", 1, 0.6)]) == 0  # natural key holds
    # a re-evaluation of version 1 replaces its rows, and leaves the others alone
    assert (
        db.replace_rows(
            "evaluation_summaries", {"model_kind": "global", "model_version": 1}, [summary("global", 1, 0.75)]
        )
        == 1
    )
    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT model_kind, f1 FROM evaluation_summaries ORDER BY model_kind")).all()
    assert [(r.model_kind, r.f1) for r in rows] == [("global", 0.75), ("local", 0.4)]
    with pytest.raises(ValueError):
        db.replace_rows("evaluation_summaries", {}, [])
    with pytest.raises(ValueError):
        db.insert_rows("no_such_table", [{"a": 1}])


def test_replace_rows_is_one_transaction(db):
    """A failing insert leaves the old rows in place (the delete is rolled back)."""
    now = datetime.now(UTC)
    row = dict(window_start=now, window_end=now, scope="broker", scope_key="1", count=5, computed_at=now)
    assert db.insert_rows("stream_analytics", [row]) == 1
    with pytest.raises(Exception):  # noqa: B017 - NOT NULL violation from PostgreSQL
        db.replace_rows("stream_analytics", {"scope": "broker"}, [{**row, "count": None}])
    assert db.count_rows()["stream_analytics"] == 1


def test_write_with_retry_waits_for_the_database(db_url, caplog, local_update):
    """The first attempts hit a closed port (real refused connections), then the real server."""
    real = Database(db_url, **NO_RETENTION)
    real.init_schema()
    down = Database(closed_port_url(db_url), connect_timeout_s=2)
    targets = iter([down, down, real])
    used = []

    def insert(records):
        target = next(targets)
        used.append(target)
        return target.insert_local_models(records)

    inserted = write_with_retry(insert, [local_update()], base_delay=0.05, max_delay=0.2)
    assert inserted == 1 and used == [down, down, real]
    assert real.count_rows()["local_models"] == 1
    warnings = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(warnings) == 2
    assert "dbdev_pw" not in caplog.text and "password" not in caplog.text.lower().replace("password=***", "")
    down.close()
    real.close()


def test_ping_of_an_unreachable_database_names_no_password(db_url):
    down = Database(closed_port_url(db_url), connect_timeout_s=2)
    with pytest.raises(DatabaseUnreachable) as err:
        down.ping()
    from sqlalchemy.engine import make_url

    password = make_url(db_url).password
    if password:
        assert password not in str(err.value)
    assert "***" in str(err.value) or "@" not in str(err.value)
    down.close()
