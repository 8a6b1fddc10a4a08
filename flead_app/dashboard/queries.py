"""Every dashboard query, defined once: Grafana's panels and the worker's live page both use these.

A panel is an SQL string for PostgreSQL plus what a renderer needs to know about it (id, title,
panel type, the columns it returns in order, unit). ``flead dashboard export`` turns the list
into Grafana JSON; ``/dashboard/data`` on the worker and the tests run the same strings through
``run_all_queries``.

Time filter rule. Only one Grafana macro may appear in a query: ``$__timeFilter(column)``.
Grafana expands it to the dashboard's time range; ``expand_macros`` (our runner) expands it to
``column BETWEEN now() - interval '<range> seconds' AND now()``, with the range the live page
asks for (6 hours by default, the same as the Grafana dashboard's default range). Any other
``$__`` macro is refused, so a query that runs in one place runs in the other. Panels that are
not about the chosen range (totals, "last hour", latest values) use ``now() - interval '...'``
or no time filter at all. Queries contain no ``:name`` or ``%`` so that neither SQLAlchemy nor
psycopg2 reads them as parameters.

Time buckets. A query that groups by time writes ``$bucket('1 minute', column)``, once, and the
backend the SQL is rendered for decides the function (``Panel.sql_for(backend)``, with a
``flead_app.io.db.backend.Backend``): ``time_bucket`` where TimescaleDB is there, ``date_bin`` with
time_bucket's origin on plain PostgreSQL, so both give the same buckets. Grafana's JSON is rendered
for TimescaleDB (the Compose image); the runners here ask the database they run on.

Which timestamp. Models are stamped with the wall clock when trained (``created_at``);
anomalies carry both the reading's own time (``timestamp``, which a CSV replay sets years in
the past) and when they were detected (``detected_at``). Live panels use ``detected_at``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from flead_app.io.db.backend import Backend, for_queries

DEFAULT_RANGE_S = 6 * 3600
"""Range ``$__timeFilter`` covers in our runner; the Grafana dashboard's default is the same (now-6h)."""

HELDOUT_SPLIT = "readings"
"""``evaluation_summaries.split`` on which global, local-only and central models can all be
compared: readings held out of training by a hash of device and timestamp."""

HEADLINE_SPLITS = ("devices", "readings", "prequential")
"""Splits the headline reads, most telling first: ``devices`` (whole devices no model trained on),
``readings`` (readings held out of training), ``prequential`` (every reading scored by the version
that existed when it arrived, before anything trained on it)."""

PANEL_TYPES = ("stat", "timeseries", "table", "barchart")

_MACRO = re.compile(r"\$__(\w+)(?:\(([^()]*)\))?")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_BUCKET = re.compile(r"\$bucket\(\s*'([^']*)'\s*,\s*([^()]*?)\s*\)")


def render_buckets(sql: str, backend: Backend) -> str:
    """Replace every ``$bucket('<width>', column)`` with ``backend``'s time bucketing."""
    return _BUCKET.sub(lambda m: backend.time_bucket(m.group(1), m.group(2)), sql)


@dataclass(frozen=True)
class Panel:
    """One dashboard panel: a query and how to show what it returns.

    ``columns`` is the exact, ordered list of result columns (checked on every run). For a
    timeseries the first column is ``time``; when ``series_column`` is set the result is long
    (time, series name, value) as Grafana's ``metric`` convention expects, else every other
    column is a series. For a barchart the first column is the category. ``column_units``
    overrides ``unit`` for single columns (a second axis on charts, cell format in tables).
    ``bucket_s`` is the width of a bar's time bucket (``$bucket('1 minute', ...)`` is 60), so a bar
    covers its own bucket on a time axis. ``column_labels`` names columns for people (a stat with
    several columns shows each as label and value). ``empty_text`` is what the panel says when the
    query returns no rows.
    ``width`` and ``height`` are in Grafana grid units (24 columns wide).
    """

    id: str
    title: str
    type: str
    sql: str
    columns: tuple[str, ...]
    unit: str = "short"
    description: str = ""
    column_units: Mapping[str, str] = field(default_factory=dict)
    series_column: str | None = None
    stacked: bool = False
    bars: bool = False
    width: int = 12
    height: int = 8
    decimals: int | None = None
    column_labels: Mapping[str, str] = field(default_factory=dict)
    empty_text: str = "no data yet"
    bucket_s: int | None = None

    def __post_init__(self) -> None:
        if self.type not in PANEL_TYPES:
            raise ValueError(f"panel {self.id}: unknown type {self.type!r}")
        if self.type == "timeseries" and self.columns[0] != "time":
            raise ValueError(f"panel {self.id}: a timeseries returns `time` first")
        if self.type == "timeseries" and self.bars and not self.bucket_s:
            raise ValueError(f"panel {self.id}: bars on a time axis need the bucket width (bucket_s)")
        if self.series_column and self.series_column not in self.columns:
            raise ValueError(f"panel {self.id}: series column {self.series_column!r} not returned")
        unknown = (set(self.column_units) | set(self.column_labels)) - set(self.columns)
        if unknown:
            raise ValueError(f"panel {self.id}: units or labels for columns it does not return: {sorted(unknown)}")

    def unit_of(self, column: str) -> str:
        return self.column_units.get(column, self.unit)

    def sql_for(self, backend: Backend) -> str:
        """The query as it runs on ``backend`` (time buckets rendered)."""
        return render_buckets(self.sql, backend)

    def label_of(self, column: str) -> str:
        return self.column_labels.get(column, column.replace("_", " "))


def _sql(text_: str) -> str:
    """Strip the indentation of a query written inline, so the Grafana JSON reads well."""
    lines = [line.rstrip() for line in text_.strip("\n").splitlines()]
    indent = min((len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0)
    return "\n".join(line[indent:] for line in lines).strip()


def _split_rank(column: str) -> str:
    """SQL ranking ``HEADLINE_SPLITS`` in order of preference (1 = most telling)."""
    whens = " ".join(f"WHEN '{split}' THEN {i}" for i, split in enumerate(HEADLINE_SPLITS, 1))
    return f"CASE {column} {whens} END"


PANELS: tuple[Panel, ...] = (
    # --- the headline: does detection work? -----------------------------------------------------
    Panel(
        id="detection_headline",
        title="Detection on Held-out Data (Latest Evaluated Global Version)",
        type="stat",
        width=24,
        height=4,
        description=(
            "The newest global version the Spark evaluation has scored, on readings no model trained on: "
            "event recall (labelled anomaly windows with at least one alarm), false alarms per 1,000 normal "
            "readings (1000 * fp / (fp + tn), from the split's confusion counts) and point-wise F1. The split "
            "is named beside the numbers: "
            "'devices' = whole devices no model trained on, 'readings' = readings held out of training by a hash "
            "of device and timestamp, 'prequential' = every reading scored by the version that existed when it "
            "arrived. The most telling split evaluated for that version is shown (devices, then readings, then "
            "prequential)."
        ),
        sql=_sql(f"""
            SELECT 'v' || model_version AS version, split, event_recall,
                   CAST(1000 * fp AS double precision) / nullif(fp + tn, 0) AS false_alarms_per_1000_normal, f1
            FROM evaluation_summaries
            WHERE model_kind = 'global' AND split IN ({", ".join(f"'{s}'" for s in HEADLINE_SPLITS)})
            ORDER BY model_version DESC, {_split_rank("split")}
            LIMIT 1
        """),
        columns=("version", "split", "event_recall", "false_alarms_per_1000_normal", "f1"),
        unit="short",
        column_units={"event_recall": "percentunit", "f1": "percentunit"},
        column_labels={
            "version": "global version",
            "split": "held-out split",
            "event_recall": "event recall",
            "false_alarms_per_1000_normal": "false alarms / 1,000 normal readings",
            "f1": "F1",
        },
        decimals=1,
        empty_text="not evaluated yet",
    ),
    # --- the description's eight panels --------------------------------------------------------
    Panel(
        id="total_local_models",
        title="Total Local Models",
        type="stat",
        width=6,
        height=4,
        description="Every local model any device has trained (rows of local_models).",
        sql=_sql("""
            SELECT count(*) AS local_models
            FROM local_models
        """),
        columns=("local_models",),
        unit="short",
    ),
    Panel(
        id="global_models",
        title="Global Models Created",
        type="stat",
        width=6,
        height=4,
        description="Global versions FedAvg has produced; each is one aggregation round.",
        sql=_sql("""
            SELECT count(DISTINCT global_version) AS global_models
            FROM federated_models
        """),
        columns=("global_models",),
        unit="short",
    ),
    Panel(
        id="active_devices",
        title="Active Devices (Last Hour)",
        type="stat",
        width=6,
        height=4,
        description="Distinct devices that trained a local model or raised an anomaly in the last hour.",
        sql=_sql("""
            SELECT count(DISTINCT device_id) AS active_devices
            FROM (
                SELECT device_id FROM local_models WHERE created_at > now() - interval '1 hour'
                UNION
                SELECT device_id FROM anomalies WHERE detected_at > now() - interval '1 hour'
            ) AS recent
        """),
        columns=("active_devices",),
        unit="short",
    ),
    Panel(
        id="round_accuracy",
        title="Round Accuracy (Before Training)",
        type="stat",
        width=6,
        height=4,
        description=(
            "Of the newest global version: the sample-weighted mean accuracy of the local rounds it averaged, "
            "each measured on that round's own readings (up to 50, a handful in a demo) before training on "
            "them. Rounds are mostly normal readings, so this is near 100% even for a model that never "
            "raises an alarm; whether detection works is the held-out headline above."
        ),
        sql=_sql("""
            SELECT accuracy AS round_accuracy
            FROM federated_models
            ORDER BY created_at DESC, global_version DESC
            LIMIT 1
        """),
        columns=("round_accuracy",),
        unit="percentunit",
        decimals=1,
    ),
    Panel(
        id="models_per_minute",
        title="Model Training Rate (Per Minute)",
        type="timeseries",
        bars=True,
        bucket_s=60,
        description="Local models trained in each minute of the time range.",
        sql=_sql("""
            SELECT $bucket('1 minute', created_at) AS time, count(*) AS models
            FROM local_models
            WHERE $__timeFilter(created_at)
            GROUP BY 1
            ORDER BY 1
        """),
        columns=("time", "models"),
        unit="short",
    ),
    Panel(
        id="round_accuracy_trend",
        title="Round Accuracy Trend (Before Training)",
        type="timeseries",
        description=(
            "Each global version's round accuracy as it was created: its local rounds' accuracy on their own "
            "readings before training (not held out; see the headline for held-out detection)."
        ),
        sql=_sql("""
            SELECT created_at AS time, accuracy AS round_accuracy
            FROM federated_models
            WHERE $__timeFilter(created_at)
            ORDER BY created_at
        """),
        columns=("time", "round_accuracy"),
        unit="percentunit",
        decimals=1,
    ),
    Panel(
        id="top_devices",
        title="Top Devices by Training Count",
        type="barchart",
        height=9,
        description=(
            "The ten devices that trained most often, with the mean accuracy of their rounds "
            "(each on the round's own readings, before training)."
        ),
        sql=_sql("""
            SELECT device_id, count(*) AS models_trained, avg(accuracy) AS avg_round_accuracy
            FROM local_models
            GROUP BY device_id
            ORDER BY models_trained DESC, device_id
            LIMIT 10
        """),
        columns=("device_id", "models_trained", "avg_round_accuracy"),
        unit="short",
        column_units={"avg_round_accuracy": "percentunit"},
    ),
    Panel(
        id="recent_federated_models",
        title="Recent Federated Models",
        type="table",
        height=9,
        description="The last ten global versions; round accuracy as in the panel above (before training).",
        sql=_sql("""
            SELECT global_version AS version, aggregation_round AS round, num_devices AS devices,
                   accuracy AS round_accuracy, created_at
            FROM federated_models
            ORDER BY created_at DESC, global_version DESC
            LIMIT 10
        """),
        columns=("version", "round", "devices", "round_accuracy", "created_at"),
        unit="short",
        column_units={"round_accuracy": "percentunit", "created_at": "dateTimeAsIso"},
    ),
    # --- beyond the description ---------------------------------------------------------------
    Panel(
        id="anomalies_by_severity",
        title="Anomalies per Minute by Severity",
        type="timeseries",
        bars=True,
        bucket_s=60,
        stacked=True,
        description="Anomalies detected each minute (|z| > 2.5 warning, from 3.0 critical).",
        sql=_sql("""
            SELECT $bucket('1 minute', detected_at) AS time,
                   count(*) FILTER (WHERE severity = 'warning') AS warning,
                   count(*) FILTER (WHERE severity = 'critical') AS critical
            FROM anomalies
            WHERE $__timeFilter(detected_at)
            GROUP BY 1
            ORDER BY 1
        """),
        columns=("time", "warning", "critical"),
        unit="short",
    ),
    Panel(
        id="anomalies_by_broker",
        title="Anomalies per Minute by Broker",
        type="timeseries",
        series_column="metric",
        bars=True,
        bucket_s=60,
        stacked=True,
        description="Anomalies by the broker that led the device's partition when it was detected.",
        sql=_sql("""
            SELECT $bucket('1 minute', detected_at) AS time,
                   CASE WHEN broker_id < 0 THEN 'unknown broker' ELSE 'broker ' || broker_id END AS metric,
                   count(*) AS anomalies
            FROM anomalies
            WHERE $__timeFilter(detected_at)
            GROUP BY 1, 2
            ORDER BY 1, 2
        """),
        columns=("time", "metric", "anomalies"),
        unit="short",
    ),
    Panel(
        id="heldout_f1",
        title="Held-out F1: Global vs Local-only vs Central",
        type="barchart",
        height=9,
        description=(
            "F1 on readings held out of training (the readings split), for the last 20 global versions. "
            "Baselines (local-only models, "
            "one centrally trained model) are evaluated once per run, at the newest global version: each bar "
            "shows the baseline evaluated at that version, else the nearest earlier one, else the nearest later one."
        ),
        sql=_sql(f"""
            WITH s AS (
                SELECT model_kind, model_version, f1
                FROM evaluation_summaries
                WHERE split = '{HELDOUT_SPLIT}'
            ), g AS (
                SELECT model_version, f1 FROM s WHERE model_kind = 'global'
                ORDER BY model_version DESC
                LIMIT 20
            )
            SELECT 'v' || g.model_version AS version,
                   g.f1 AS global_f1,
                   (SELECT b.f1 FROM s AS b WHERE b.model_kind = 'local'
                    ORDER BY (b.model_version <= g.model_version) DESC, abs(b.model_version - g.model_version)
                    LIMIT 1) AS local_f1,
                   (SELECT b.f1 FROM s AS b WHERE b.model_kind = 'central'
                    ORDER BY (b.model_version <= g.model_version) DESC, abs(b.model_version - g.model_version)
                    LIMIT 1) AS central_f1
            FROM g
            ORDER BY g.model_version
        """),
        columns=("version", "global_f1", "local_f1", "central_f1"),
        column_labels={"global_f1": "global F1", "local_f1": "local-only F1", "central_f1": "central F1"},
        unit="percentunit",
        decimals=1,
    ),
    Panel(
        id="broker_analytics",
        title="Per-Broker Stream Analytics (Latest Window)",
        type="table",
        height=9,
        description="Spark's hourly batch analytics per broker: the newest window of each broker.",
        sql=_sql("""
            SELECT DISTINCT ON (scope_key)
                   scope_key AS broker, window_start, window_end, "count" AS readings,
                   readings_per_minute, mean, std, anomaly_rate
            FROM stream_analytics
            WHERE scope = 'broker'
            ORDER BY scope_key, window_end DESC
        """),
        columns=(
            "broker",
            "window_start",
            "window_end",
            "readings",
            "readings_per_minute",
            "mean",
            "std",
            "anomaly_rate",
        ),
        unit="short",
        column_units={
            "window_start": "dateTimeAsIso",
            "window_end": "dateTimeAsIso",
            "anomaly_rate": "percentunit",
        },
    ),
)

PANELS_BY_ID: dict[str, Panel] = {p.id: p for p in PANELS}
if len(PANELS_BY_ID) != len(PANELS):
    raise RuntimeError("duplicate panel id")


class UnsupportedMacro(ValueError):
    """A query uses a Grafana macro our runner cannot expand the same way."""


def expand_macros(sql: str, range_s: int = DEFAULT_RANGE_S) -> str:
    """Expand ``$__timeFilter(col)`` as Grafana would for the last ``range_s`` seconds."""
    range_s = int(range_s)
    if range_s <= 0:
        raise ValueError("range must be positive")

    def repl(m: re.Match[str]) -> str:
        name, arg = m.group(1), (m.group(2) or "").strip()
        if name != "timeFilter" or not _COLUMN.match(arg):
            raise UnsupportedMacro(f"only $__timeFilter(column) is supported, got {m.group(0)!r}")
        return f"{arg} BETWEEN now() - interval '{range_s} seconds' AND now()"

    return _MACRO.sub(repl, sql)


class ColumnMismatch(RuntimeError):
    """A query returned other columns than its panel declares."""


def run_panel(
    conn: Connection, panel: Panel, range_s: int = DEFAULT_RANGE_S, backend: Backend | None = None
) -> list[dict[str, Any]]:
    """Run one panel's query; rows as dicts in the declared column order.

    ``backend``: what to render the time buckets for; default: what this connection's database has.
    """
    backend = backend or for_queries(conn)
    result = conn.execute(text(expand_macros(panel.sql_for(backend), range_s)))
    columns = tuple(result.keys())
    if columns != panel.columns:
        raise ColumnMismatch(f"panel {panel.id}: declared {panel.columns}, query returned {columns}")
    return [dict(zip(columns, row, strict=True)) for row in result]


def run_all_queries(
    engine: Engine, range_s: int = DEFAULT_RANGE_S, panels: tuple[Panel, ...] = PANELS, backend: Backend | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Every panel's rows by panel id; raises on the first failing query (for tests and checks).

    Runs in one read-only transaction so the panels agree with each other. ``backend``: as in
    ``run_panel``, asked of the database once for all panels by default.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as conn, conn.begin():
        conn.execute(text("SET TRANSACTION READ ONLY"))
        backend = backend or for_queries(conn)
        for panel in panels:
            out[panel.id] = run_panel(conn, panel, range_s, backend)
    return out


MISSING_TABLE = "missing_table"
UNAVAILABLE = "unavailable"
LOGIN_REFUSED = "login_refused"
QUERY_ERROR = "query_error"

_UNDEFINED_TABLE = "42P01"
# the server is shutting down, crashed, starting up, or the database is not there (yet)
_UNAVAILABLE_CODES = ("57P01", "57P02", "57P03", "3D000")
_LOGIN_REFUSED = re.compile(r"authentication failed|pg_hba\.conf|role \S+ does not exist", re.I)
_RELATION = re.compile(r'relation "([^"]+)" does not exist')
_SECRETS = (
    (re.compile(r"(\w+://[^:/@\s]*:)[^@\s]*@"), r"\1***@"),  # scheme://user:password@
    (re.compile(r"(password\s*=\s*)\S+", re.I), r"\1***"),
)


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached or went away mid-run; the page waits for it instead of failing."""


def one_line(err: BaseException) -> str:
    """An error as people should see it: the driver's first line, no SQL, no parameters, no password.

    SQLAlchemy appends the statement and its parameters to its messages; psycopg2 puts the
    offending SQL on the lines after the first (``LINE 3: FROM ...``). Only the first line of the
    driver's own message is kept, with anything that looks like a password masked.
    """
    orig = getattr(err, "orig", None)
    message = str(orig if orig is not None else err).strip()
    line = message.splitlines()[0].strip() if message else ""
    line = re.sub(r"^(ERROR|FATAL):\s+", "", line)
    for pattern, repl in _SECRETS:
        line = pattern.sub(repl, line)
    name = type(orig if orig is not None else err).__name__
    return f"{name}: {line[:200]}" if line else name


def classify(err: BaseException) -> str:
    """What a failed panel query means for the page: ``MISSING_TABLE``, ``UNAVAILABLE``,
    ``LOGIN_REFUSED`` or ``QUERY_ERROR`` (a real error, shown on its panel)."""
    if isinstance(err, DatabaseUnavailable):
        return UNAVAILABLE
    if not isinstance(err, DBAPIError):
        return QUERY_ERROR
    code = getattr(err.orig, "pgcode", None)
    if code == _UNDEFINED_TABLE:
        return MISSING_TABLE
    if err.connection_invalidated or (code and (code.startswith("08") or code in _UNAVAILABLE_CODES)):
        return UNAVAILABLE
    if code is None and isinstance(err, OperationalError):  # libpq's own: refused, timed out, closed, login
        return LOGIN_REFUSED if _LOGIN_REFUSED.search(str(err.orig)) else UNAVAILABLE
    return QUERY_ERROR


def missing_relation(err: BaseException) -> str | None:
    """The table an undefined-table error names (``relation "x" does not exist``)."""
    m = _RELATION.search(str(getattr(err, "orig", err)))
    return m.group(1) if m else None


def collect(
    engine: Engine, range_s: int = DEFAULT_RANGE_S, panels: tuple[Panel, ...] = PANELS, backend: Backend | None = None
) -> dict[str, dict]:
    """Like ``run_all_queries`` but one failing panel reports what happened instead of failing the page.

    Each panel runs in its own short read-only transaction, so an error does not abort the
    others. A panel's result is ``{"rows", "error", "missing_table"}``: a table that does not
    exist yet (a database the worker has not initialised) is not an error, the panel simply
    has no rows and ``missing_table`` names the table; ``error`` is a real failure in one line
    (``one_line``). When the database cannot be reached, or goes away between panels, this
    raises ``DatabaseUnavailable`` (or the login error) instead of reporting it once per panel.
    """
    out: dict[str, dict] = {}
    try:
        conn = engine.connect()
    except Exception as err:
        if classify(err) == UNAVAILABLE:
            raise DatabaseUnavailable(one_line(err)) from err
        raise
    with conn:
        if backend is None:
            with conn.begin():
                backend = for_queries(conn)
        for panel in panels:
            try:
                with conn.begin():
                    conn.execute(text("SET TRANSACTION READ ONLY"))
                    conn.execute(text("SET LOCAL statement_timeout = 10000"))
                    out[panel.id] = {
                        "rows": run_panel(conn, panel, range_s, backend), "error": None, "missing_table": None,
                    }  # fmt: skip
            except Exception as err:  # noqa: BLE001 - reported on the page, the other panels still show
                kind = classify(err)
                if kind == UNAVAILABLE:
                    raise DatabaseUnavailable(one_line(err)) from err
                if kind == MISSING_TABLE:
                    out[panel.id] = {"rows": [], "error": None, "missing_table": missing_relation(err) or "?"}
                else:
                    out[panel.id] = {"rows": [], "error": one_line(err), "missing_table": None}
    return out
