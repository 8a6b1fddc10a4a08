"""The whole local stack (Kafka cluster + PostgreSQL) and its state file ``stack.json``."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flead_app.settings import Settings, load_settings, redact_url
from flead_app.stack import postgres
from flead_app.stack.config import ClusterPlan, topic_plans
from flead_app.stack.errors import StackError
from flead_app.stack.kafka import KafkaCluster, remove_worker_tables

log = logging.getLogger(__name__)

DEFAULT_BROKERS = 4


def flead_topics(settings: Settings) -> list[str]:
    return [
        settings.topic_readings,
        settings.topic_anomalies,
        settings.topic_local_updates,
        settings.topic_global_updates,
        settings.topic_dead_letter,
    ]


def state_path(home: Path) -> Path:
    return home / "stack.json"


def read_state(home: Path) -> dict[str, Any]:
    try:
        return json.loads(state_path(home).read_text())
    except (OSError, ValueError):
        return {}


def write_state(home: Path, state: dict[str, Any]) -> None:
    """``stack.json`` holds the database password inside its URL: mode 0600."""
    home.mkdir(parents=True, exist_ok=True)
    path = state_path(home)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(state, fh, indent=1, sort_keys=True)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def stack_state(cluster: KafkaCluster, db_url: str, db_managed: bool) -> dict[str, Any]:
    return {
        "brokers": cluster.brokers,
        "bootstrap": cluster.bootstrap,
        "db_url": db_url,
        "db_managed": db_managed,
        "kafka_version": cluster.version,
        "port_base": cluster.plan.port_base,
        "ports": cluster.plan.ports_json(),
        "controllers": cluster.plan.bootstrap_controllers,
        "replication_factor": cluster.plan.replication_factor,
        "min_insync_replicas": cluster.plan.min_insync_replicas,
        "home": str(cluster.home),
        "updated_at": time.time(),
    }


@dataclass
class UpResult:
    cluster: KafkaCluster
    started_nodes: list[int]
    created_topics: list[str]
    db_url: str
    db_started: bool
    downloaded: bool
    seconds: float
    db_backend: str = ""  # what init_schema chose, e.g. "TimescaleDB 2.28.3"
    preload: str = ""  # what ensure_preloaded found or did


def init_database(settings: Settings, url: str) -> str:
    """The schema of every FLEAD table, created now (``Database.init_schema`` with the settings'
    backend and policies), so a fresh stack's database is complete before any worker writes."""
    from flead_app.io.db.store import BackendUnavailable, Database, DatabaseUnreachable

    db = Database.from_settings(replace(settings, db_url=url))
    try:
        db.init_schema()
    except (BackendUnavailable, DatabaseUnreachable) as exc:
        raise StackError(f"cannot create the schema in {redact_url(url)}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - reported with the (password-free) reason
        from flead_app.io.db.retry import describe_error

        raise StackError(f"cannot create the schema in {redact_url(url)}: {describe_error(exc)}") from exc
    finally:
        db.close()
    assert db.backend_info is not None
    return db.backend_info.describe()


def default_brokers(home: Path) -> int:
    existing = KafkaCluster.from_home(home)
    return existing.brokers if existing else DEFAULT_BROKERS


def cluster_for(settings: Settings, brokers: int | None = None) -> KafkaCluster:
    home = settings.home_path
    n = brokers or default_brokers(home)
    return KafkaCluster(home, n, settings.kafka_port, settings.kafka_version, settings.partitions)


def up(brokers: int | None = None, with_db: bool = True, timeout: float = 180.0, replace: bool = False) -> UpResult:
    """Start (or verify) the stack; on failure stop whatever this call started.

    ``replace``: when a cluster of another size (or on other ports) runs from this
    FLEAD_HOME, stop it first instead of refusing.
    """
    t0 = time.monotonic()
    settings = load_settings()
    home = settings.home_path
    home.mkdir(parents=True, exist_ok=True)
    cluster = cluster_for(settings, brokers)
    existing = KafkaCluster.from_home(home)
    if replace and existing is not None and existing.plan != cluster.plan and existing.running_nodes():
        log.info("stopping the running %d-broker cluster to start %d broker(s)", existing.brokers, cluster.brokers)
        existing.down()
    from flead_app.stack.fetch import fetch, is_cached, require_java

    require_java()
    downloaded = not is_cached(cluster.version)
    fetch(cluster.version)  # before anything starts: a failed download leaves nothing behind
    pg: postgres.PgInfo | None = None
    started_nodes: list[int] = []
    preload = backend = ""
    try:
        if with_db:
            pg = postgres.ensure_running(home, settings)
            if pg.managed and pg.cluster is not None:
                preload = postgres.ensure_preloaded(pg.cluster, settings.db_name).describe()
            backend = init_database(settings, pg.url)
        started_nodes = cluster.up(timeout)
        plans = topic_plans(
            ClusterPlan(cluster.brokers, cluster.plan.port_base), flead_topics(settings), settings.partitions
        )
        created = cluster.ensure_topics(plans)
    except BaseException:
        for node_id in started_nodes:
            cluster._stop_node(node_id, timeout=10.0)
        if pg is not None and pg.started:
            try:
                postgres.stop(home, settings, force=True)
            except StackError as exc:
                log.warning("%s", exc)
        raise
    previous = read_state(home)
    # a database given by FLEAD_DB_URL is this process's setting, not the stack's: later commands
    # without it keep using the stack's own database
    db_url = pg.url if pg and pg.managed else previous.get("db_url", "")
    db_managed = True if pg and pg.managed else bool(previous.get("db_managed", False))
    write_state(home, stack_state(cluster, db_url, db_managed))
    return UpResult(cluster, started_nodes, created, db_url, bool(pg and pg.started), downloaded,
                    time.monotonic() - t0, backend, preload)  # fmt: skip


def down(wipe: bool = False) -> dict[str, Any]:
    settings = load_settings()
    home = settings.home_path
    out: dict[str, Any] = {"kafka": {}, "postgres": "not managed"}
    cluster = KafkaCluster.from_home(home)
    if cluster is not None:
        out["kafka"] = cluster.down()
        if wipe:
            import shutil

            shutil.rmtree(cluster.dir, ignore_errors=True)
            remove_worker_tables(home)
            out["wiped"] = str(cluster.dir)
    out["postgres"] = postgres.stop(home, settings)
    return out


def status(all_topics: bool = False) -> tuple[bool, dict[str, Any]]:
    settings = load_settings()
    home = settings.home_path
    cluster = KafkaCluster.from_home(home)
    state = read_state(home)
    if cluster is None:
        return False, {"ok": False, "home": str(home), "error": f"no stack in {home}: run `flead stack up`"}
    st = cluster.status(None if all_topics else flead_topics(settings))
    db_url = settings.db_url or state.get("db_url", "")
    db = postgres.status(db_url)
    db["url"] = redact_url(db_url)
    if db["answers"]:
        db["backend"] = database_backend(settings, db_url)
    data = {"home": str(home), "kafka_version": cluster.version, "kafka": st.to_json(), "database": db}
    ok = st.ok and db["answers"]
    data["ok"] = ok
    return ok, data


def database_backend(settings: Settings, url: str) -> dict[str, Any]:
    """Which backend the database has: TimescaleDB and its version, or plain PostgreSQL and why."""
    from flead_app.io.db.store import Database

    db = Database(url, backend=settings.db_backend, connect_timeout_s=5)
    try:
        b = db.describe_backend()
    except Exception as exc:  # noqa: BLE001 - status reports, it does not fail on this
        from flead_app.io.db.retry import describe_error

        return {"name": "unknown", "version": "", "reason": describe_error(exc), "text": f"unknown ({exc})"}
    finally:
        db.close()
    return {"name": b.name, "version": b.version, "reason": b.reason, "text": b.describe()}
