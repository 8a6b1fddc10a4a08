"""The TimescaleDB statements (this machine has no TimescaleDB: checked as text)."""

from __future__ import annotations

import pytest
from sqlalchemy import UniqueConstraint

from flead_app.io.db import timescale
from flead_app.io.db.schema import TIME_COLUMNS, metadata


def test_every_time_series_table_has_compression_settings():
    assert set(timescale.COMPRESSION) == set(TIME_COLUMNS)


@pytest.mark.parametrize("table", sorted(TIME_COLUMNS))
def test_compression_covers_every_unique_key_column(table):
    """TimescaleDB refuses compression unless key columns are segmentby or orderby."""
    c = timescale.COMPRESSION[table]
    covered = set(c.segmentby) | set(c.orderby)
    t = metadata.tables[table]
    for constraint in t.constraints:
        if isinstance(constraint, UniqueConstraint):
            assert {col.name for col in constraint.columns} <= covered
            # TimescaleDB also needs the time column in every unique key
            assert TIME_COLUMNS[table] in {col.name for col in constraint.columns}
    assert c.orderby[0] == TIME_COLUMNS[table]
    assert covered <= set(t.c.keys())


def test_hypertable_sql_follows_the_version():
    new = timescale.hypertable_sql("anomalies", "timestamp", 24, "2.17.2")
    assert "by_range('timestamp', INTERVAL '24 hours')" in new
    assert "if_not_exists => TRUE" in new and "migrate_data => TRUE" in new
    old = timescale.hypertable_sql("anomalies", "timestamp", 1, "2.11.0")
    assert "create_hypertable('anomalies', 'timestamp', chunk_time_interval => INTERVAL '1 hours'" in old
    assert "by_range" not in old


def test_compression_and_policies_sql():
    sql = timescale.compression_settings_sql("anomalies")
    assert sql.startswith('ALTER TABLE "anomalies" SET (timescaledb.compress,')
    assert 'timescaledb.compress_orderby = \'"timestamp" DESC, "value"\'' in sql
    assert "timescaledb.compress_segmentby = '\"device_id\"'" in sql
    assert "segmentby" not in timescale.compression_settings_sql("federated_models")
    policies = timescale.policy_sql("anomalies", 7, 30)
    assert policies == [
        "SELECT add_compression_policy('anomalies', compress_after => INTERVAL '7 days', if_not_exists => TRUE)",
        "SELECT add_retention_policy('anomalies', drop_after => INTERVAL '30 days', if_not_exists => TRUE)",
    ]
    assert timescale.policy_sql("anomalies", 0, 0) == []


def test_version_tuple():
    assert timescale.version_tuple("2.14.2") == (2, 14, 2)
    assert timescale.version_tuple("2.13.0-dev") == (2, 13, 0)
    assert timescale.version_tuple("2.9") < (2, 13)
