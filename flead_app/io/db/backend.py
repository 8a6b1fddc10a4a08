"""Which backend a database gives FLEAD: TimescaleDB or plain PostgreSQL, decided before any DDL.

The decision is made on a connection of its own, never inside the schema transaction, because
the way TimescaleDB fails is by killing the connection: a server that has the extension's files
but does not preload the library answers ``CREATE EXTENSION timescaledb`` (and any later use of
the extension's functions or event triggers) with FATAL "extension must be preloaded", so a
transaction that tried it is gone and everything after it fails.

What is checked, each without touching the extension's code:

- ``pg_available_extensions``: are the extension's files installed on the server?
- ``current_setting('shared_preload_libraries')``: is the library preloaded? A role without
  ``pg_read_all_settings`` may not read that setting; then the loader's own setting
  ``timescaledb.bgw_launcher_poll_time`` answers, which exists only in a server that preloads it.
- ``pg_extension``: has the extension been created in this database already, and in which schema?

``choose(engine, wanted)`` turns the facts and the wanted backend (the setting
``FLEAD_DB_BACKEND``: ``auto``, ``timescaledb``, ``postgresql``) into a ``Backend``, creating
the extension (``CREATE EXTENSION IF NOT EXISTS timescaledb SCHEMA public``, in its own
transaction) when the server can load it. ``Backend.time_bucket`` is how queries group by time
on that backend: ``time_bucket`` with TimescaleDB, ``date_bin`` with the same origin without it,
so both give the same buckets.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from flead_app.io.db.retry import describe_error

log = logging.getLogger(__name__)

AUTO = "auto"
TIMESCALEDB = "timescaledb"
POSTGRESQL = "postgresql"
CHOICES = (AUTO, TIMESCALEDB, POSTGRESQL)

EXTENSION = "timescaledb"
#: where ``choose`` creates the extension; a per-test schema on the search path must not receive
#: it (dropping that schema would drop the extension for the whole database)
EXTENSION_SCHEMA = "public"
#: a setting the TimescaleDB loader defines only when it is preloaded (readable by every role)
LOADER_SETTING = "timescaledb.bgw_launcher_poll_time"
#: time_bucket's default origin for timestamptz (a Monday); date_bin with it gives the same buckets
BUCKET_ORIGIN = "TIMESTAMPTZ '2000-01-03 UTC'"
#: the advisory lock (transaction level) under which the extension is created
EXTENSION_LOCK_KEY = 0x464C454144 + 1

FIX = (
    "add timescaledb to shared_preload_libraries and restart PostgreSQL "
    "(`flead stack up` does both on the server it runs)"
)

_WIDTH = re.compile(r"^\d+ (second|minute|hour|day|week)s?$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot be used; the message says why and what to change."""


@dataclass(frozen=True)
class ServerFacts:
    """What the server and this database say about TimescaleDB (``probe``)."""

    available: str | None  # default_version of the installed files, None: not installed
    created: str | None  # extversion in this database, None: not created here
    schema: str | None  # the schema the extension was created in
    on_search_path: bool  # that schema is on this connection's search path
    preloaded: bool
    preload_libraries: str | None  # shared_preload_libraries, None: this role may not read it

    @property
    def preload_text(self) -> str:
        """What ``shared_preload_libraries`` holds, as far as this role may see."""
        if self.preload_libraries is None:
            loader = "running" if self.preloaded else "not running"
            return f"unreadable for this role; TimescaleDB's loader is {loader}"
        return f"now {self.preload_libraries!r}"


@dataclass(frozen=True)
class Backend:
    """The backend in use: ``name`` is "timescaledb" or "postgresql".

    ``version`` is TimescaleDB's; ``schema`` qualifies its functions when its schema is not on
    the search path ("" means unqualified); ``reason`` says why a database is plain PostgreSQL;
    ``unusable`` marks a fallback although the server has the extension's files (worth a warning:
    the reason says what to change).
    """

    name: str
    version: str = ""
    schema: str = ""
    reason: str = ""
    unusable: bool = False

    def __post_init__(self) -> None:
        if self.name not in (TIMESCALEDB, POSTGRESQL):
            raise ValueError(f"unknown backend {self.name!r}")

    @property
    def is_timescaledb(self) -> bool:
        return self.name == TIMESCALEDB

    def function(self, name: str) -> str:
        """A TimescaleDB function's name as this connection must spell it.

        >>> Backend("timescaledb", "2.28.3", schema="public").function("time_bucket")
        '"public".time_bucket'
        >>> Backend("timescaledb", "2.28.3").function("time_bucket")
        'time_bucket'
        """
        if not self.schema:
            return name
        return '"' + self.schema.replace('"', '""') + '".' + name

    def time_bucket(self, width: str, column: str) -> str:
        """SQL grouping ``column`` into buckets of ``width`` (e.g. "1 minute").

        >>> Backend("timescaledb", "2.28.3").time_bucket("1 minute", "created_at")
        "time_bucket(INTERVAL '1 minute', created_at)"
        >>> Backend("postgresql").time_bucket("1 minute", "created_at")
        "date_bin(INTERVAL '1 minute', created_at, TIMESTAMPTZ '2000-01-03 UTC')"
        """
        if not _WIDTH.match(width) or not _COLUMN.match(column):
            raise ValueError(f"bucket width {width!r} / column {column!r} not understood")
        if self.is_timescaledb:
            return f"{self.function('time_bucket')}(INTERVAL '{width}', {column})"
        return f"date_bin(INTERVAL '{width}', {column}, {BUCKET_ORIGIN})"

    def describe(self) -> str:
        """One line for people: "TimescaleDB 2.28.3" or "plain PostgreSQL (why)"."""
        name = f"TimescaleDB {self.version}" if self.is_timescaledb else "plain PostgreSQL"
        return f"{name} ({self.reason})" if self.reason else name


#: what Grafana's provisioned datasource (``timescaledb: true``, the Compose TimescaleDB image) runs on
GRAFANA = Backend(TIMESCALEDB, "")
PLAIN = Backend(POSTGRESQL)


def probe(conn: Connection) -> ServerFacts:
    """The facts, read with one query that never loads the extension's library (nor errs for a role
    that may not read ``shared_preload_libraries``: then that column is NULL and the loader's
    setting answers)."""
    row = conn.execute(
        text(
            "SELECT (SELECT default_version FROM pg_available_extensions WHERE name = :ext) AS available, "
            "e.extversion AS created, n.nspname AS schema, "
            "coalesce(n.nspname = ANY(current_schemas(false)), false) AS on_path, "
            "current_setting(:loader, true) IS NOT NULL AS loader, "
            "CASE WHEN pg_has_role(current_user, 'pg_read_all_settings', 'USAGE') "
            "THEN current_setting('shared_preload_libraries') END AS libraries "
            "FROM (SELECT 1) AS one "
            "LEFT JOIN pg_extension AS e ON e.extname = :ext "
            "LEFT JOIN pg_namespace AS n ON n.oid = e.extnamespace"
        ),
        {"ext": EXTENSION, "loader": LOADER_SETTING},
    ).one()
    libraries: str | None = row.libraries
    preloaded = bool(row.loader)
    if libraries is not None:
        preloaded = EXTENSION in [lib.strip().strip('"') for lib in libraries.split(",")]
    return ServerFacts(row.available, row.created, row.schema, bool(row.on_path), preloaded, libraries)


def probe_engine(engine: Engine) -> ServerFacts:
    with engine.connect() as conn:
        try:
            return probe(conn)
        finally:
            conn.rollback()


def problem(facts: ServerFacts) -> str | None:
    """Why TimescaleDB cannot be used on this server, or None when it can (created or creatable)."""
    if not facts.available:
        return "the timescaledb extension is not installed on the server (scripts/setup.sh builds it)"
    if not facts.preloaded:
        return (
            f"TimescaleDB {facts.available} is installed but not in shared_preload_libraries "
            f"({facts.preload_text}): {FIX}"
        )
    return None


CREATE = "create"
"""``decide``'s answer when the extension should be created first (then decided again)."""


def decide(facts: ServerFacts, wanted: str = AUTO, created_failed: str | None = None) -> Backend | str:
    """The backend for these facts, or ``CREATE`` when the extension must be created first.

    ``auto`` falls back to plain PostgreSQL with the reason (``unusable`` when the server has the
    files); ``timescaledb`` raises ``BackendUnavailable``; ``postgresql`` is plain PostgreSQL. A
    database where the extension exists but the server does not preload it raises whatever was
    asked: there even ``CREATE TABLE`` fails, because TimescaleDB's event triggers cannot load
    their library.

    >>> facts = ServerFacts("2.28.3", None, None, False, preloaded=False, preload_libraries="")
    >>> decide(facts).reason.startswith("TimescaleDB 2.28.3 is installed but not in shared_preload_libraries")
    True
    >>> decide(facts, "postgresql").describe()
    'plain PostgreSQL (FLEAD_DB_BACKEND=postgresql)'
    >>> decide(ServerFacts("2.28.3", None, None, False, True, "timescaledb"))
    'create'
    >>> decide(ServerFacts("2.28.3", "2.28.3", "public", False, True, None)).function("time_bucket")
    '"public".time_bucket'
    """
    _check_wanted(wanted)
    if facts.created and not facts.preloaded:
        raise BackendUnavailable(
            f"TimescaleDB {facts.created} is created in this database but the server does not preload it "
            f"(shared_preload_libraries: {facts.preload_text}), so no DDL can run here: {FIX}"
        )
    if wanted == POSTGRESQL:
        return Backend(POSTGRESQL, reason="FLEAD_DB_BACKEND=postgresql")
    why = problem(facts) or created_failed
    if why is None and not facts.created:
        return CREATE
    if why:
        if wanted == TIMESCALEDB:
            raise BackendUnavailable(f"FLEAD_DB_BACKEND=timescaledb, but {why}")
        return Backend(POSTGRESQL, reason=why, unusable=bool(facts.available))
    return _timescale_backend(facts)


def _timescale_backend(facts: ServerFacts) -> Backend:
    schema = "" if facts.on_search_path else (facts.schema or EXTENSION_SCHEMA)
    return Backend(TIMESCALEDB, facts.created or facts.available or "", schema)


def _check_wanted(wanted: str) -> None:
    if wanted not in CHOICES:
        raise ValueError(f"unknown database backend {wanted!r}; choose one of {', '.join(CHOICES)}")


def choose(engine: Engine, wanted: str = AUTO) -> Backend:
    """Decide the backend for ``init_schema`` (``decide``), creating the extension when it should be
    used. Runs on connections of ``engine``, so a refusal never poisons the schema transaction."""
    facts = probe_engine(engine)
    chosen = decide(facts, wanted)
    if chosen == CREATE:
        failed = _create_extension(engine)
        chosen = decide(probe_engine(engine) if failed is None else facts, wanted, failed)
    assert isinstance(chosen, Backend)
    return chosen


def describe(engine: Engine, wanted: str = AUTO) -> Backend:
    """The backend ``choose`` would give, without creating anything (for ``flead stack status``).

    A server that preloads TimescaleDB but has not created it in this database yet is reported
    as TimescaleDB with the version of its files: the next ``init_schema`` creates it.
    """
    facts = probe_engine(engine)
    try:
        chosen = decide(facts, wanted)
    except BackendUnavailable as err:
        return Backend(POSTGRESQL, reason=str(err), unusable=True)
    if chosen == CREATE:
        return Backend(TIMESCALEDB, facts.available or "", reason="not created in this database yet")
    assert isinstance(chosen, Backend)
    return chosen


def for_queries(conn: Connection) -> Backend:
    """The backend a query on this connection can use: TimescaleDB only when the extension is created
    in this database and loadable (calling ``time_bucket`` otherwise would kill the connection)."""
    facts = probe(conn)
    if facts.created and facts.preloaded:
        return _timescale_backend(facts)
    return PLAIN


def _create_extension(engine: Engine) -> str | None:
    """``CREATE EXTENSION`` in a transaction of its own; the reason it failed, or None."""
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": EXTENSION_LOCK_KEY})
            conn.execute(text(f'CREATE EXTENSION IF NOT EXISTS {EXTENSION} SCHEMA "{EXTENSION_SCHEMA}"'))
    except sa_exc.DBAPIError as err:
        # e.g. no CREATE privilege on the database; the connection is discarded with the error
        return f"CREATE EXTENSION timescaledb failed ({describe_error(err)})"
    log.info("created the timescaledb extension in schema %s", EXTENSION_SCHEMA)
    return None
