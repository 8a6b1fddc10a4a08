"""The TimescaleDB statements ``Database.init_schema`` runs when the extension is there.

Pure: it only builds SQL text, so the statements are checked by tests on a machine where
TimescaleDB cannot be installed. Every statement is idempotent (``if_not_exists``), so
``init_schema`` may run at every worker start.

The extension's functions are spelled with its schema when ``schema`` is given: the tests give
each run a schema of its own as the only entry of the search path, and the extension lives in
``public``.

Compression needs every column of a unique constraint to be a ``segmentby`` or ``orderby``
column (TimescaleDB refuses otherwise: "column ... must be used for segmenting or
ordering"), so the settings below follow each table's natural key in ``schema.py``; a test
checks they still cover the keys when the schema changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from flead_app.io.db.schema import TIME_COLUMNS


@dataclass(frozen=True)
class Compression:
    segmentby: tuple[str, ...]
    orderby: tuple[str, ...]  # the time column first, newest first


COMPRESSION: dict[str, Compression] = {
    "local_models": Compression(("device_id",), ("created_at", "model_version")),
    "federated_models": Compression((), ("created_at", "global_version")),
    "anomalies": Compression(("device_id",), ("timestamp", "value")),
    "model_evaluations": Compression(("model_kind", "model_version"), ("created_at", "device_id", "reading_time")),
    "stream_analytics": Compression(("scope",), ("window_start", "window_end", "scope_key")),
    "kafka_traffic": Compression(("topic",), ("measured_at", "partition")),
}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _fn(schema: str, name: str) -> str:
    return f"{_q(schema)}.{name}" if schema else name


def version_tuple(version: str) -> tuple[int, ...]:
    """``"2.14.2"`` -> ``(2, 14, 2)``; suffixes such as ``-dev`` are ignored."""
    out = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def hypertable_sql(table: str, time_column: str, chunk_hours: int, ts_version: str, schema: str = "") -> str:
    """``create_hypertable``: the ``by_range`` interface from 2.13, the older one before.

    ``migrate_data`` moves rows of a table that existed before TimescaleDB was installed;
    our own time indexes already exist, so TimescaleDB's default ones are not added.
    """
    interval = f"INTERVAL '{int(chunk_hours)} hours'"
    if version_tuple(ts_version) >= (2, 13):
        return (
            f"SELECT {_fn(schema, 'create_hypertable')}({_lit(table)}, "
            f"{_fn(schema, 'by_range')}({_lit(time_column)}, {interval}), "
            "create_default_indexes => FALSE, if_not_exists => TRUE, migrate_data => TRUE)"
        )
    return (
        f"SELECT {_fn(schema, 'create_hypertable')}({_lit(table)}, {_lit(time_column)}, "
        f"chunk_time_interval => {interval}, "
        "create_default_indexes => FALSE, if_not_exists => TRUE, migrate_data => TRUE)"
    )


def compression_settings_sql(table: str) -> str:
    """``ALTER TABLE ... SET (timescaledb.compress ...)``; run only while compression is off."""
    c = COMPRESSION[table]
    orderby = ", ".join([f"{_q(c.orderby[0])} DESC", *(_q(col) for col in c.orderby[1:])])
    parts = ["timescaledb.compress", f"timescaledb.compress_orderby = {_lit(orderby)}"]
    if c.segmentby:
        parts.append(f"timescaledb.compress_segmentby = {_lit(', '.join(_q(col) for col in c.segmentby))}")
    return f"ALTER TABLE {_q(table)} SET ({', '.join(parts)})"


def policy_sql(table: str, compress_after_days: int, retention_days: int, schema: str = "") -> list[str]:
    """Compression and retention jobs (TimescaleDB's background scheduler runs them)."""
    out = []
    if compress_after_days > 0:
        after = f"INTERVAL '{int(compress_after_days)} days'"
        fn = _fn(schema, "add_compression_policy")
        out.append(f"SELECT {fn}({_lit(table)}, compress_after => {after}, if_not_exists => TRUE)")
    if retention_days > 0:
        after = f"INTERVAL '{int(retention_days)} days'"
        fn = _fn(schema, "add_retention_policy")
        out.append(f"SELECT {fn}({_lit(table)}, drop_after => {after}, if_not_exists => TRUE)")
    return out


def hypertables() -> dict[str, str]:
    """Time-series table -> its time column (from ``schema.TIME_COLUMNS``)."""
    return dict(TIME_COLUMNS)
