"""Dashboard fixtures: a PostgreSQL schema of our own in the stack's database, with realistic rows.

Each fixture creates a fresh schema (``search_path`` through the connection options) so the
dashboard tests neither see nor disturb rows a demo or another test wrote; it is dropped after.
The sample rows look like an hour of a small fleet: 24 devices trained over the last hour,
12 global versions with rising accuracy, anomalies on 4 brokers, held-out evaluations of
every global version with local-only and central baselines at some versions, hourly Spark
analytics per device, partition and broker.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from flead_app.io.db.backend import PLAIN, Backend
from flead_app.io.db.store import Database, sqlalchemy_url
from flead_app.models import Anomaly, GlobalModel, LocalModelUpdate
from flead_app.settings import load_settings

DEVICES = 24
GLOBAL_VERSIONS = 12
BROKERS = 4


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def url_with_schema(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(scope="session")
def base_db_url() -> str:
    url = load_settings().db_url
    if not url:
        pytest.fail("no database URL: run `flead stack up` (scripts/test.sh does) or set FLEAD_DB_URL")
    return url


@pytest.fixture(scope="module", params=["timescaledb", "postgresql"])
def schema_backend(request) -> str:
    """Every test of a module runs on TimescaleDB hypertables and on plain PostgreSQL tables."""
    if request.param == "timescaledb" and load_settings().db_backend == "postgresql":
        pytest.skip("FLEAD_DB_BACKEND=postgresql: this run does not use TimescaleDB")
    return request.param


@pytest.fixture(scope="module")
def render_backend(schema_backend) -> Backend | None:
    """What the panels' time buckets are rendered for: on TimescaleDB what the runner finds in the
    database (None: ``for_queries``), on plain tables ``date_bin`` (the database has the extension,
    so asking it would give ``time_bucket``)."""
    return None if schema_backend == "timescaledb" else PLAIN


@pytest.fixture(scope="module")
def make_schema(base_db_url, schema_backend) -> Iterator[Callable[..., str]]:
    """Factory: a fresh schema with every FLEAD table on the module's backend (or none); returns its
    URL. All are dropped at the end."""
    admin = create_engine(sqlalchemy_url(base_db_url))
    made: list[str] = []

    def make(tables: bool = True) -> str:
        schema = f"dash_{uuid.uuid4().hex[:12]}"
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        made.append(schema)
        url = url_with_schema(base_db_url, schema)
        if tables:
            init_schema(url, schema_backend)
        return url

    try:
        yield make
    finally:
        with admin.begin() as conn:
            for schema in made:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def init_schema(url: str, backend: str = "postgresql") -> None:
    """What a worker does when it starts: every FLEAD table, on ``backend``."""
    db = Database(url, backend=backend)
    try:
        db.init_schema()
    finally:
        db.close()


def insert_sample_rows(url: str, now: datetime) -> dict[str, object]:
    """Realistic rows in every table the dashboard reads; returns what the panels should show."""
    db = Database(url)
    try:
        locals_: list[LocalModelUpdate] = []
        per_device: dict[str, int] = {}
        for d in range(DEVICES):
            device = f"device_{d * 97}"
            rounds = 2 + d % 7  # devices train at different rates
            per_device[device] = rounds
            for v in range(1, rounds + 1):
                t = now - timedelta(minutes=58) + timedelta(seconds=(d * 37 + v * 311) % 3300)
                locals_.append(
                    LocalModelUpdate(
                        device_id=device,
                        model_version=v,
                        global_version=min(v, GLOBAL_VERSIONS),
                        weights=[0.1 * v, -0.05, 0.2, 0.01],
                        bias=-2.0 + 0.01 * v,
                        accuracy=round(0.55 + 0.02 * v + 0.003 * d, 4),
                        loss=0.6 - 0.02 * v,
                        samples=50,
                        timestamp=_iso(t),
                        partition=d % 8,
                    )
                )
        globals_ = [
            GlobalModel(
                global_version=g,
                aggregation_round=g,
                weights=[0.1, -0.05, 0.2, 0.01],
                bias=-2.0,
                accuracy=round(0.62 + 0.01 * g, 4),
                num_devices=18 + g % 3,
                samples=1000,
                num_updates=20,
                mean_staleness=0.4,
                timestamp=_iso(now - timedelta(minutes=55) + timedelta(minutes=4.5 * g)),
                contributors=[f"device_{g}"],
            )
            for g in range(1, GLOBAL_VERSIONS + 1)
        ]
        anomalies_ = []
        for i in range(80):
            detected = now - timedelta(minutes=50) + timedelta(seconds=i * 36)
            z = 2.6 + (i % 9) * 0.3
            anomalies_.append(
                Anomaly(
                    device_id=f"device_{(i * 13) % DEVICES * 97}",
                    partition=i % 8,
                    broker_id=1 + i % BROKERS,
                    value=40.0 + z,
                    z_score=z,
                    severity="critical" if z >= 3.0 else "warning",
                    timestamp=_iso(detected - timedelta(seconds=1)),
                    detected_at=_iso(detected),
                    label=i % 2,
                )
            )
        assert db.insert_local_models(locals_) == len(locals_)
        assert db.insert_global_models(globals_) == len(globals_)
        assert db.insert_anomalies(anomalies_) == len(anomalies_)

        summaries = []
        for g in range(1, GLOBAL_VERSIONS + 1):
            summaries.append(_summary("global", g, 0.40 + 0.03 * g, now))
            summaries.append(_summary("global", g, 0.38 + 0.03 * g, now, split="prequential"))
        for g in (4, 8, 12):  # baselines are evaluated once per run, at the newest global version
            summaries.append(_summary("local", g, 0.35 + 0.01 * g, now))
            summaries.append(_summary("central", g, 0.60 + 0.01 * g, now))
        db.insert_rows("evaluation_summaries", summaries)

        analytics = []
        for w in range(2):
            start = (now - timedelta(hours=2 - w)).replace(minute=0, second=0, microsecond=0)
            end = start + timedelta(hours=1)
            for b in range(1, BROKERS + 1):
                analytics.append(_analytics(start, end, "broker", str(b), 110_000 + 1000 * b + w, now))
            for p in range(8):
                analytics.append(_analytics(start, end, "partition", str(p), 55_000 + p, now))
            analytics.append(_analytics(start, end, "device", "device_0", 780, now))
        db.insert_rows("stream_analytics", analytics)
        db.insert_rows(
            "kafka_traffic",
            [
                {
                    "measured_at": now,
                    "topic": "edge-iiot-stream",
                    "partition": p,
                    "broker_id": 1 + p % BROKERS,
                    "bytes": 1_000_000 + p,
                    "messages": 10_000,
                }
                for p in range(8)
            ],
        )
    finally:
        db.close()
    top = sorted(per_device.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    return {
        "local_models": len(locals_),
        "global_models": GLOBAL_VERSIONS,
        "active_devices": DEVICES,
        "latest_accuracy": globals_[-1].accuracy,
        "top_devices": top,
        # the headline: newest evaluated global version, split readings (preferred to prequential in the sample)
        "headline": {
            "version": f"v{GLOBAL_VERSIONS}",
            "split": "readings",
            "event_recall": 0.7,
            "false_alarms_per_1000_normal": 1000.0 * 10 / (10 + 3900),
            "f1": round(0.40 + 0.03 * GLOBAL_VERSIONS, 4),
        },
        "anomalies": len(anomalies_),
        "warnings": sum(a.severity == "warning" for a in anomalies_),
        "criticals": sum(a.severity == "critical" for a in anomalies_),
    }


def _summary(kind: str, version: int, f1: float, now: datetime, split: str = "readings") -> dict:
    return {
        "model_kind": kind,
        "model_version": version,
        "split": split,
        "samples": 4000,
        "accuracy": 0.9,
        "precision": f1 + 0.05,
        "recall": f1 - 0.05,
        "f1": round(f1, 4),
        "roc_auc": 0.8,
        "tp": 40,
        "fp": 10,
        "tn": 3900,
        "fn": 50,
        "event_recall": 0.7,
        "false_alarms_per_1000": 2.5,
        "evaluated_at": now,
    }


def _analytics(start: datetime, end: datetime, scope: str, key: str, count: int, now: datetime) -> dict:
    return {
        "window_start": start,
        "window_end": end,
        "scope": scope,
        "scope_key": key,
        "count": count,
        "mean": 42.0,
        "std": 1.8,
        "min": 30.0,
        "max": 55.0,
        "anomaly_rate": 0.012,
        "readings_per_minute": count / 60.0,
        "computed_at": now,
    }


@pytest.fixture(scope="module")
def sample_db(make_schema) -> tuple[str, dict[str, object]]:
    """(URL, expected values) of a schema holding the sample rows, stamped relative to now."""
    url = make_schema()
    expected = insert_sample_rows(url, datetime.now(UTC))
    return url, expected


@pytest.fixture(scope="module")
def empty_db(make_schema) -> str:
    return make_schema()


@pytest.fixture
def engine_for() -> Iterator[Callable[[str], Engine]]:
    engines: list[Engine] = []

    def make(url: str) -> Engine:
        engine = create_engine(sqlalchemy_url(url))
        engines.append(engine)
        return engine

    yield make
    for e in engines:
        e.dispose()
