"""TimescaleDB on the local stack: the preload `flead stack up` configures, the backend `status` reports,
the schema a fresh stack creates, and the bad state of a server that has the extension's files but
does not preload them (reproduced for real on a private Debian cluster, FLEAD_PG_CLUSTER).
"""

from __future__ import annotations

import json
import logging
import random
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from flead_app.io.db.schema import TIME_COLUMNS, metadata
from flead_app.io.db.sink import PostgresSink, SinkRecord, flead_routes
from flead_app.io.db.store import BackendUnavailable, Database, sqlalchemy_url
from flead_app.models import Anomaly, GlobalModel, LocalModelUpdate
from flead_app.settings import load_settings
from flead_app.stack import postgres
from flead_app.stack.local import database_backend
from tests.stack.test_lifecycle import flead, free_base

pytestmark = pytest.mark.integration

TABLES = set(metadata.tables)


# --- pure helpers ---------------------------------------------------------------------------
def test_preloaded_libraries_are_parsed_and_kept():
    assert postgres.parse_libraries("") == []
    assert postgres.parse_libraries("pg_stat_statements, 'timescaledb'") == ["pg_stat_statements", "timescaledb"]
    assert postgres.parse_libraries('"auto_explain",pg_cron') == ["auto_explain", "pg_cron"]
    assert postgres.preload_sql(["pg_stat_statements", "timescaledb"]) == (
        "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements', 'timescaledb';"
    )
    assert postgres.preload_sql([]) == "ALTER SYSTEM RESET shared_preload_libraries;"
    assert "restarted now" in postgres.Preload("2.28.3", "timescaledb", changed=True, restarted=True).describe()
    assert (
        postgres.Preload("", "", changed=False, restarted=False).describe().startswith("TimescaleDB is not installed")
    )


# --- helpers of the integration tests ------------------------------------------------------
def _needs_debian_server() -> None:
    if postgres.external_url(load_settings()) or not postgres.installed_versions():
        pytest.skip("needs Debian's PostgreSQL server and no FLEAD_DB_URL")
    if load_settings().db_backend == "postgresql":
        pytest.skip("FLEAD_DB_BACKEND=postgresql: this run does not use TimescaleDB")


def _tables(url: str) -> set[str]:
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            return set(conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
    finally:
        engine.dispose()


def _hypertables(url: str) -> set[str]:
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            return set(
                conn.execute(
                    text(
                        "SELECT hypertable_name FROM timescaledb_information.hypertables "
                        "WHERE hypertable_schema = 'public'"
                    )
                ).scalars()
            )
    finally:
        engine.dispose()


def _records(settings) -> list[SinkRecord]:
    """What the sink consumes: a local update, a global model and two anomalies, as Kafka carries them."""
    now = datetime.now(UTC)
    iso = (now - timedelta(minutes=1)).isoformat()
    local = LocalModelUpdate(device_id="device_7", model_version=1, global_version=0, weights=[0.1, 0.2],
                             bias=0.0, accuracy=0.8, loss=0.4, samples=50, timestamp=iso, partition=3)  # fmt: skip
    glob = GlobalModel(global_version=1, aggregation_round=1, weights=[0.1, 0.2], bias=0.0, accuracy=0.8,
                       num_devices=1, samples=50, timestamp=iso, num_updates=1, mean_staleness=0.0,
                       contributors=["device_7"])  # fmt: skip
    found = [
        Anomaly(
            device_id="device_7",
            partition=3,
            broker_id=1,
            value=40.0 + i,
            z_score=3.1,
            severity="critical",
            timestamp=iso,
            detected_at=now.isoformat(),
            label=1,
        )  # fmt: skip
        for i in range(2)
    ]
    out = [SinkRecord(settings.topic_local_updates, 3, 0, b"device_7", local.to_json()),
           SinkRecord(settings.topic_global_updates, 0, 0, b"fleet", glob.to_json())]  # fmt: skip
    out += [SinkRecord(settings.topic_anomalies, 3, i, b"device_7", a.to_json()) for i, a in enumerate(found)]
    return out


# --- the bad state, for real ----------------------------------------------------------------
def test_extension_installed_but_not_preloaded_stores_rows_then_stack_up_preloads_it(tmp_path, monkeypatch, caplog):
    """A private cluster with TimescaleDB's files installed and another library preloaded: the schema
    is created as plain tables on a fresh connection, one warning says what to change, the sink
    stores every row; then `flead stack up` adds timescaledb to shared_preload_libraries (keeping
    the other library), restarts that server once and turns the same tables into hypertables."""
    _needs_debian_server()
    name = f"flts{random.randrange(10**6)}"
    home, config = tmp_path / "home", tmp_path / "config"
    base = free_base()
    env = {"FLEAD_HOME": str(home), "FLEAD_PG_CLUSTER": name, "XDG_CONFIG_HOME": str(config),
           "FLEAD_DB_NAME": "flead_pre", "FLEAD_KAFKA_PORT": str(base), "FLEAD_DB_BACKEND": "auto"}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("FLEAD_DB_URL", raising=False)
    version = postgres.installed_versions()[-1]
    try:
        info = postgres.ensure_running(home, load_settings())
        cluster = info.cluster
        assert postgres.timescaledb_available(cluster), "TimescaleDB is not installed: scripts/setup.sh builds it"
        proc = postgres._psql_admin(cluster, "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements';")
        assert proc.returncode == 0, proc.stderr
        cluster = postgres.restart(cluster)

        # 1. installed, not preloaded: plain tables, rows stored, one clear line
        caplog.set_level(logging.INFO)
        db = Database(info.url)
        assert db.init_schema() == "postgresql"
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "TimescaleDB 2.28.3 is installed but not in shared_preload_libraries" in warnings[0]
        assert "unreadable for this role; TimescaleDB's loader is not running" in warnings[0]  # flead: no superuser
        assert "restart" in warnings[0] and "flead stack up" in warnings[0]
        assert "SSL connection has been closed" not in caplog.text
        assert _tables(info.url) == TABLES
        settings = load_settings()
        result = PostgresSink(db, flead_routes(settings)).write(_records(settings))
        assert dict(result.inserted) == {"local_models": 1, "federated_models": 1, "anomalies": 2}
        assert not result.rejected
        counts = db.count_rows()
        assert (counts["local_models"], counts["federated_models"], counts["anomalies"]) == (1, 1, 2)
        db.close()

        # 2. TimescaleDB demanded on that server: refused with the reason, before any DDL
        strict = Database(info.url, backend="timescaledb")
        with pytest.raises(BackendUnavailable, match="FLEAD_DB_BACKEND=timescaledb, but .*shared_preload_libraries"):
            strict.init_schema()
        strict.close()
        assert "not in shared_preload_libraries" in database_backend(load_settings(), info.url)["text"]

        # 3. flead stack up preloads it, restarts once, and the tables become hypertables (rows kept)
        res = flead("stack", "up", "--brokers", "1", env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "TimescaleDB 2.28.3 preloaded (added to shared_preload_libraries; server restarted now)" in res.stdout
        assert "schema created or checked: TimescaleDB 2.28.3" in res.stdout
        shown = postgres._psql_admin(cluster, "SHOW shared_preload_libraries;").stdout.strip()
        assert postgres.parse_libraries(shown) == ["pg_stat_statements", "timescaledb"]
        assert _hypertables(info.url) == set(TIME_COLUMNS)
        again = Database(info.url)
        counts = again.count_rows()
        assert (counts["local_models"], counts["federated_models"], counts["anomalies"]) == (1, 1, 2)
        again.close()
        status = flead("stack", "status", "--json", env=env)
        assert json.loads(status.stdout)["database"]["backend"]["text"] == "TimescaleDB 2.28.3"
        res = flead("stack", "up", "--brokers", "1", env=env)  # a second up: nothing to change, no restart
        assert res.returncode == 0, res.stderr
        assert "  TimescaleDB 2.28.3 preloaded\n" in res.stdout

        # 4. the preload removed again while the extension exists: even plain DDL would kill the
        #    connection there, so init_schema refuses at once with what to change
        proc = postgres._psql_admin(cluster, "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements';")
        assert proc.returncode == 0, proc.stderr
        postgres.restart(cluster)
        broken = Database(info.url)
        with pytest.raises(BackendUnavailable, match="created in this database but the server does not preload it"):
            broken.init_schema()
        broken.close()
        assert "does not preload it" in database_backend(load_settings(), info.url)["text"]
    finally:
        flead("stack", "down", env=env)
        subprocess.run(["pg_dropcluster", "--stop", version, name], capture_output=True)


# --- a fresh stack on the shared server ------------------------------------------------------
def test_a_fresh_stack_up_creates_every_table_and_status_names_the_backend(tmp_path):
    """`flead stack up` creates the schema itself, so the live page never meets a missing table."""
    _needs_debian_server()
    db_name = f"flead_fresh_{random.randrange(10**6)}"
    env = {"FLEAD_HOME": str(tmp_path / "home"), "FLEAD_DB_NAME": db_name, "FLEAD_KAFKA_PORT": str(free_base()),
           "FLEAD_DB_BACKEND": "auto"}  # fmt: skip
    try:
        res = flead("stack", "up", "--brokers", "1", env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "schema created or checked: TimescaleDB 2.28.3" in res.stdout
        url = json.loads((tmp_path / "home" / "stack.json").read_text())["db_url"]
        assert _tables(url) == TABLES
        assert _hypertables(url) == set(TIME_COLUMNS)
        status = flead("stack", "status", env=env)
        assert "database backend: TimescaleDB 2.28.3" in status.stdout, status.stdout
        plain = flead("stack", "status", env={**env, "FLEAD_DB_BACKEND": "postgresql"})
        assert "database backend: plain PostgreSQL (FLEAD_DB_BACKEND=postgresql)" in plain.stdout
    finally:
        flead("stack", "down", env=env)
        cluster = postgres.local_cluster(postgres.installed_versions()[-1], load_settings().pg_cluster)
        if cluster is not None:
            postgres._psql_admin(cluster, f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE);')
