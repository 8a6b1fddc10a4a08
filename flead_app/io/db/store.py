"""PostgreSQL/TimescaleDB persistence: schema creation and batched idempotent inserts.

``Database(url)`` wraps one SQLAlchemy engine (psycopg2). Every insert is one transaction of
``INSERT ... ON CONFLICT DO NOTHING`` statements: Kafka redeliveries after a crash or a
rebalance hit the natural unique keys of ``schema.py`` and insert nothing, and the returned
count is the rows actually inserted. ``ON CONFLICT`` names no constraint because TimescaleDB
hypertables refuse ``ON CONFLICT ON CONSTRAINT`` (timescaledb issue 1094).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, and_, create_engine, delete, func, literal_column, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import NullPool

from flead_app.io.db import backend as backend_mod
from flead_app.io.db import timescale
from flead_app.io.db.backend import BackendUnavailable
from flead_app.io.db.retry import WriteAborted, describe_error, write_with_retry
from flead_app.io.db.rows import anomaly_row, global_model_row, local_model_row
from flead_app.io.db.schema import metadata
from flead_app.models import Anomaly, GlobalModel, LocalModelUpdate
from flead_app.settings import Settings, redact_url

DEFAULTS = Settings()

__all__ = [
    "BackendUnavailable",
    "Database",
    "DatabaseUnreachable",
    "sqlalchemy_url",
    "WriteAborted",
    "write_with_retry",
]

log = logging.getLogger(__name__)

ROWS_PER_STATEMENT = 1000
# pg_advisory_xact_lock key: several workers starting at once create the schema one at a time
SCHEMA_LOCK_KEY = 0x464C454144  # "FLEAD"


class DatabaseUnreachable(RuntimeError):
    """The database cannot be reached; the message is safe to print (no credentials)."""


def sqlalchemy_url(url: str) -> URL:
    """The URL with the psycopg2 driver spelled out: SQLAlchemy 2.1 maps a bare
    ``postgresql://`` to psycopg 3, which FLEAD does not install."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed


def _chunks(rows: Sequence[dict[str, Any]], size: int) -> Iterable[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


class Database:
    """One database: ``init_schema`` once, then the ``insert_*`` calls from any thread."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: int = 10,
        pool_size: int = 4,
        retention_days: int = DEFAULTS.retention_days,
        compress_after_days: int = DEFAULTS.compress_after_days,
        chunk_hours: int = DEFAULTS.chunk_hours,
        backend: str = DEFAULTS.db_backend,
    ) -> None:
        if not url:
            raise ValueError("no database URL: run `flead stack up` or set FLEAD_DB_URL")
        if backend not in backend_mod.CHOICES:
            raise ValueError(f"unknown database backend {backend!r}; choose one of {', '.join(backend_mod.CHOICES)}")
        self.url = url
        self.wanted_backend = backend
        self.backend: str | None = None  # after init_schema: "timescaledb" | "postgresql"
        self.backend_info: backend_mod.Backend | None = None
        self._connect_timeout_s = int(connect_timeout_s)
        self._policy = (retention_days, compress_after_days, chunk_hours)
        # pre-ping replaces connections that died while the server restarted; the connect
        # timeout keeps an unreachable host from hanging a retry step for minutes
        self.engine: Engine = create_engine(
            sqlalchemy_url(url),
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={"connect_timeout": int(connect_timeout_s)},
        )

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> Database:
        """The settings' database and backend, with their TimescaleDB chunk, compression and retention policies."""
        return cls(
            settings.db_url,
            backend=settings.db_backend,
            retention_days=settings.retention_days,
            compress_after_days=settings.compress_after_days,
            chunk_hours=settings.chunk_hours,
            **options,
        )

    def __repr__(self) -> str:
        return f"Database({redact_url(self.url)!r})"

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """Raise ``DatabaseUnreachable`` (with a message fit to print) unless ``SELECT 1`` works."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except sa_exc.SQLAlchemyError as err:
            raise DatabaseUnreachable(f"cannot reach the database at {self.safe_url}: {describe_error(err)}") from err

    # ------------------------------------------------------------------ schema
    def init_schema(self) -> str:
        """Create every table of ``schema.metadata`` that is missing; return the backend in use.

        First the backend is decided on connections of its own (``backend.choose`` with the
        wanted backend, ``FLEAD_DB_BACKEND``): the extension is created there when the server can
        load it, and a server that cannot is found out without running anything that would kill
        a connection. Then, in one transaction on a fresh connection, the tables and indexes are
        created; with TimescaleDB the time-series tables become hypertables with compression and
        retention policies ("timescaledb"), else they stay plain tables with their time indexes
        ("postgresql"). Safe to run again and from several processes.
        """
        retention, compress, chunk = self._policy
        probe = self._probe_engine()
        try:
            chosen = backend_mod.choose(probe, self.wanted_backend)
        finally:
            probe.dispose()
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
            metadata.create_all(conn, checkfirst=True)
            for table in metadata.sorted_tables:
                for index in table.indexes:  # tables made by an older schema get new indexes
                    index.create(conn, checkfirst=True)
            self._repair_identity(conn)
            self._add_missing_columns(conn)
            if chosen.is_timescaledb:
                self._make_hypertables(conn, chosen, retention, compress, chunk)
        self.backend_info = chosen
        self.backend = chosen.name
        if chosen.is_timescaledb:
            log.info(
                "database %s: TimescaleDB %s, %d hypertables (chunks %d h, compress after %d d, %s)",
                self.safe_url, chosen.version, len(timescale.hypertables()), chunk, compress,
                f"keep {retention} d" if retention > 0 else "no retention",
            )  # fmt: skip
        elif not chosen.unusable:
            log.info(
                "database %s: plain PostgreSQL tables with time indexes (%s; no compression or retention policies)",
                self.safe_url, chosen.reason,
            )  # fmt: skip
        else:  # the server has TimescaleDB but cannot use it: say what to change, once
            log.warning("database %s: using plain PostgreSQL tables: %s", self.safe_url, chosen.reason)
        return self.backend

    def reset_schema(self) -> list[str]:
        """Drop every FLEAD table (and only those) and create them again, empty; their names."""
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
            metadata.drop_all(conn, checkfirst=True)
        self.init_schema()
        return [t.name for t in metadata.sorted_tables]

    def _probe_engine(self) -> Engine:
        """Connections for the backend decision only, never pooled: one a refusal killed is not reused."""
        return create_engine(
            sqlalchemy_url(self.url), poolclass=NullPool, connect_args={"connect_timeout": self._connect_timeout_s}
        )

    def describe_backend(self) -> backend_mod.Backend:
        """The backend this database has or would get, without creating anything."""
        engine = self._probe_engine()
        try:
            return backend_mod.describe(engine, self.wanted_backend)
        finally:
            engine.dispose()

    @staticmethod
    def _repair_identity(conn: Connection) -> None:
        """Give ``id`` columns made by an early schema (no default) their identity."""
        tables = [t.name for t in metadata.sorted_tables if "id" in t.c and t.c.id.identity is not None]
        rows = conn.execute(
            text(
                "SELECT table_name FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND column_name = 'id' AND is_identity = 'NO' AND column_default IS NULL "
                "AND table_name = ANY(:tables)"
            ),
            {"tables": tables},
        ).scalars()
        for name in rows:
            log.info("adding the missing identity to %s.id", name)
            conn.execute(text(f'ALTER TABLE "{name}" ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY'))

    @staticmethod
    def _add_missing_columns(conn: Connection) -> None:
        """Add the nullable columns a table made by an older schema lacks (``create_all`` only creates
        missing tables); a missing NOT NULL column is a schema this version cannot upgrade."""
        present: dict[str, set[str]] = {}
        for table_name, column in conn.execute(
            text("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()")
        ):
            present.setdefault(table_name, set()).add(column)
        for table in metadata.sorted_tables:
            have = present.get(table.name)
            if not have:
                continue
            for column in table.columns:
                if column.name in have:
                    continue
                if not column.nullable:
                    raise RuntimeError(
                        f"table {table.name} lacks the column {column.name}, which this version needs: "
                        "drop the table (or the database) to recreate it"
                    )
                kind = column.type.compile(dialect=conn.dialect)
                log.info("adding the column %s.%s (%s)", table.name, column.name, kind)
                conn.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN IF NOT EXISTS "{column.name}" {kind}'))

    @staticmethod
    def _make_hypertables(conn: Connection, chosen: backend_mod.Backend, retention: int, compress: int,
                          chunk: int) -> None:  # fmt: skip
        for table, column in timescale.hypertables().items():
            conn.execute(text(timescale.hypertable_sql(table, column, chunk, chosen.version, chosen.schema)))
            enabled = conn.execute(
                text(
                    "SELECT compression_enabled FROM timescaledb_information.hypertables "
                    "WHERE hypertable_schema = current_schema() AND hypertable_name = :t"
                ),
                {"t": table},
            ).scalar()
            if not enabled:
                conn.execute(text(timescale.compression_settings_sql(table)))
            for sql in timescale.policy_sql(table, compress, retention, chosen.schema):
                conn.execute(text(sql))

    # ------------------------------------------------------------------ writes
    @staticmethod
    def table(name: str | Table) -> Table:
        if isinstance(name, Table):
            return name
        try:
            return metadata.tables[name]
        except KeyError:
            raise ValueError(f"unknown table {name!r}; known: {sorted(metadata.tables)}") from None

    @staticmethod
    def _insert(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> int:
        # One cached statement run as executemany: SQLAlchemy packs the rows into multi-row
        # VALUES pages itself ("insertmanyvalues"). Building `.values(rows)` instead compiled a
        # new statement per call, which cost 3x the database's own time (and held the GIL) in
        # the sink. RETURNING counts the rows inserted, not the ones a conflict skipped.
        stmt = pg_insert(table).on_conflict_do_nothing().returning(literal_column("1"))
        inserted = 0
        for chunk in _chunks(rows, ROWS_PER_STATEMENT):
            inserted += len(conn.execute(stmt, list(chunk)).all())
        return inserted

    def insert_rows(self, table: str | Table, rows: Sequence[dict[str, Any]]) -> int:
        """Insert rows (dicts of column -> value) ignoring natural-key duplicates, in one
        transaction; return the rows actually inserted. Returns only after the commit."""
        if not rows:
            return 0
        t = self.table(table)
        with self.engine.begin() as conn:
            return self._insert(conn, t, rows)

    def replace_rows(self, table: str | Table, where: Mapping[str, Any], rows: Sequence[dict[str, Any]]) -> int:
        """Delete the rows matching ``where`` (column = value, all of them) and insert ``rows``,
        in one transaction, so readers see the old set or the new one, never a mix. For results
        recomputed as a whole, e.g. an evaluation of one model version or one analytics window."""
        if not where:
            raise ValueError("replace_rows needs a non-empty `where` (refusing to empty a whole table)")
        t = self.table(table)
        unknown = set(where) - set(t.c.keys())
        if unknown:
            raise ValueError(f"{t.name} has no column(s) {sorted(unknown)}")
        with self.engine.begin() as conn:
            conn.execute(delete(t).where(and_(*(t.c[k] == v for k, v in where.items()))))
            return self._insert(conn, t, rows) if rows else 0

    def insert_local_models(self, records: Sequence[LocalModelUpdate]) -> int:
        return self.insert_rows("local_models", [local_model_row(r) for r in records])

    def insert_global_models(self, records: Sequence[GlobalModel]) -> int:
        return self.insert_rows("federated_models", [global_model_row(r) for r in records])

    def insert_anomalies(self, records: Sequence[Anomaly]) -> int:
        now = datetime.now(UTC)
        return self.insert_rows("anomalies", [anomaly_row(r, now) for r in records])

    # ------------------------------------------------------------------ reads
    def count_rows(self) -> dict[str, int]:
        """Rows per table (exact ``count(*)``), tables missing from the database as 0."""
        out: dict[str, int] = {}
        with self.engine.connect() as conn:
            present = set(
                conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")).scalars()
            )
            for t in metadata.sorted_tables:
                if t.name in present:
                    out[t.name] = int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                else:
                    out[t.name] = 0
        return out
