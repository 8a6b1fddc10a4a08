"""The whole local stack (Kafka cluster + PostgreSQL, and sites with MirrorMaker when asked) and
its state file ``stack.json``.

``up(sites=N)`` adds N sites (``flead_app.stack.sites``): one single-broker cluster each and one
MirrorMaker 2 process. The central cluster of a sites topology gets no readings topic: readings
arrive at a site and stay there, so a reading that reached the centre could only have been sent
there by mistake, and producing it fails instead. ``sites=0`` (or ``--sites 0``) stops the sites.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flead_app.settings import Settings, load_settings, redact_url
from flead_app.stack import postgres, security
from flead_app.stack.config import ClusterPlan, topic_plans
from flead_app.stack.errors import StackError
from flead_app.stack.kafka import KafkaCluster, remove_worker_tables
from flead_app.stack.sites import Sites, central_topics, existing_sites

log = logging.getLogger(__name__)

DEFAULT_BROKERS = 4


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


def stack_state(cluster: KafkaCluster, db_url: str, db_managed: bool, sites: Sites | None = None) -> dict[str, Any]:
    return {
        "security": security.stack_security_state(cluster.secrets) if cluster.secure else {},
        "sites": sites.state() if sites else {},
        "mirror": sites.mirror_state() if sites else {},
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
    sites: Sites | None = None
    sites_result: dict[str, Any] | None = None


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


def cluster_for(settings: Settings, brokers: int | None = None, secure: bool | None = None) -> KafkaCluster:
    """The cluster ``up`` wants: ``brokers`` and ``secure`` as asked, else as the existing one is
    (else 4 brokers, PLAINTEXT)."""
    home = settings.home_path
    existing = KafkaCluster.from_home(home)
    n = brokers or (existing.brokers if existing else DEFAULT_BROKERS)
    secured = secure if secure is not None else bool(existing and existing.secure)
    return KafkaCluster(home, n, settings.kafka_port, settings.kafka_version, settings.partitions, secured)


def acl_prefixes(settings: Settings) -> list[str]:
    """What the application's user may use on a secured cluster: the FLEAD topics, and every topic
    and group named after the app id (Faust's changelogs and group, the sink's group, the bench's
    ceiling app).

    >>> acl_prefixes(Settings(app_id="flead"))
    ['edge-iiot-stream', 'anomalies', 'local-model-updates', 'global-model-updates', 'flead']
    """
    out: list[str] = []
    for name in [*settings.pipeline_topics, settings.app_id]:
        if name and not any(name.startswith(p) for p in out):
            out = [p for p in out if not p.startswith(name)] + [name]
    return out


def default_sites(home: Path) -> int:
    """The sites the running stack has (``stack.json``), else 0."""
    return len(read_state(home).get("sites") or {})


def sites_for(settings: Settings, cluster: KafkaCluster, count: int, state: dict[str, Any] | None = None) -> Sites:
    """The sites topology of this stack; ``state`` (``stack.json``) keeps the ports they were started on."""
    first = ((state or {}).get("sites") or {}).get("1", {})
    return Sites(settings.home_path, settings, count, cluster.bootstrap, cluster.plan.replication_factor,
                 first.get("port_base"))  # fmt: skip


def stop_sites(home: Path, keep: int = 0) -> dict[str, str]:
    """Stop MirrorMaker and the site clusters numbered above ``keep`` (all by default)."""
    from flead_app.stack import procs

    out: dict[str, str] = {}
    mirror = read_state(home).get("mirror") or {}
    pid_file = Path(mirror["pid_file"]) if mirror.get("pid_file") else home / "mirror" / "mm2.pid"
    pid = procs.read_pid(pid_file)
    if pid is not None:
        out["mirror"] = procs.stop_pid(pid, str(pid_file.parent / "mm2.properties"))
        pid_file.unlink(missing_ok=True)
    for k, cluster in existing_sites(home).items():
        if k > keep:
            results = set(cluster.down().values())
            out[f"site{k}"] = ", ".join(sorted(results)) or "not running"
    return out


def wipe_sites(settings: Settings) -> list[str]:
    """Stop the sites and MirrorMaker and delete their data, and the MirrorMaker topics that the
    central cluster keeps about them; returns what was deleted.

    The central cluster's ``mm2-offsets.site<k>.internal`` remembers how far each flow had
    replicated: a fresh site cluster starts its offsets at 0 again, and MirrorMaker resuming
    from the old offsets would skip that many of the new site's records.
    """
    import shutil

    home = settings.home_path
    stop_sites(home)
    aliases = [c.home.name.replace("-", "") for c in existing_sites(home).values()]
    gone = []
    for path in (home / "sites", home / "mirror"):
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            gone.append(str(path))
    cluster = KafkaCluster.from_home(home)
    if cluster is not None and cluster.running_nodes() and aliases:
        from flead_app.stack.kafka import run_async

        names = [f"mm2-{kind}.{alias}.internal" for alias in aliases for kind in ("configs", "offsets", "status")]
        present = set(run_async(_topic_names(cluster)))
        doomed = [n for n in names if n in present]
        if doomed:
            cluster.delete_topics(doomed)
            deadline = time.monotonic() + 60
            while set(run_async(_topic_names(cluster))) & set(doomed) and time.monotonic() < deadline:
                time.sleep(0.5)
            gone += doomed
    return gone


async def _topic_names(cluster: KafkaCluster) -> list[str]:
    from flead_app.stack.kafka import any_metadata

    md = await any_metadata(cluster.addresses(), None)
    return [t["topic"] for t in (md or {}).get("topics", []) if t["error_code"] == 0]


def up(
    brokers: int | None = None,
    with_db: bool = True,
    timeout: float = 180.0,
    replace: bool = False,
    sites: int | None = None,
    secure: bool | None = None,
) -> UpResult:
    """Start (or verify) the stack; on failure stop whatever this call started.

    ``replace``: when a cluster of another size (or on other ports, or security) runs from this
    FLEAD_HOME, stop it first instead of refusing. ``sites``: how many sites beside the
    central cluster (None: as many as the running stack has, else none). ``secure``: SASL_SSL and
    ACLs (``flead_app.stack.security``; None: as the existing cluster is, else PLAINTEXT).
    """
    t0 = time.monotonic()
    settings = load_settings()
    home = settings.home_path
    home.mkdir(parents=True, exist_ok=True)
    cluster = cluster_for(settings, brokers, secure)
    n_sites = default_sites(home) if sites is None else sites
    if cluster.secure and n_sites:
        raise StackError(
            "a secured cluster has no sites yet: MirrorMaker 2 and the site clusters would need the same "
            "TLS and SCRAM set-up; run `flead stack up --secure --sites 0`, or sites without --secure"
        )
    existing = KafkaCluster.from_home(home)
    changes = existing is not None and (existing.plan != cluster.plan or existing.secure != cluster.secure)
    if replace and changes and existing.running_nodes():
        log.info("stopping the running %s to start a %s", existing.describe(), cluster.describe())
        stop_sites(home)
        existing.down()
    if existing is not None and existing.plan != cluster.plan and existing_sites(home):
        # a new central cluster: the sites' MirrorMaker offsets speak of the old one's topics
        log.info("the central cluster changes: the sites start afresh too")
        wipe_sites(settings)
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
        names = central_topics(settings) if n_sites else settings.pipeline_topics
        plans = topic_plans(ClusterPlan(cluster.brokers, cluster.plan.port_base), names, settings.partitions)
        created = cluster.ensure_topics(plans)
        cluster.grant(security.APP_USER, acl_prefixes(settings))
        stop_sites(home, keep=n_sites)  # fewer sites than before: the others stop (their data stays)
        topology = sites_for(settings, cluster, n_sites) if n_sites else None
        sites_result = topology.up(timeout) if topology else None
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
    write_state(home, stack_state(cluster, db_url, db_managed, topology))
    return UpResult(cluster, started_nodes, created, db_url, bool(pg and pg.started), downloaded,
                    time.monotonic() - t0, backend, preload, topology, sites_result)  # fmt: skip


def down(wipe: bool = False) -> dict[str, Any]:
    settings = load_settings()
    home = settings.home_path
    out: dict[str, Any] = {"kafka": {}, "postgres": "not managed"}
    out["sites"] = stop_sites(home)
    if wipe:
        import shutil

        for path in (home / "sites", home / "mirror"):
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)
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
    n_sites = len(state.get("sites") or {})
    st = cluster.status(None if all_topics else (central_topics(settings) if n_sites else settings.pipeline_topics))
    db_url = settings.db_url or state.get("db_url", "")
    db = postgres.status(db_url)
    db["url"] = redact_url(db_url)
    if db["answers"]:
        db["backend"] = database_backend(settings, db_url)
    data = {"home": str(home), "kafka_version": cluster.version, "kafka": st.to_json(), "database": db,
            "security": state.get("security") or {}}  # fmt: skip
    ok = st.ok and db["answers"]
    if n_sites:
        topology = sites_for(settings, cluster, n_sites, state)
        names = None if all_topics else settings.pipeline_topics
        data["sites"] = {}
        for k, site in topology.clusters.items():
            sst = site.status(names, with_quorum=False)
            data["sites"][str(k)] = sst.to_json()
            ok = ok and all(b.alive for b in sst.brokers) and all(t.healthy for t in sst.topics)
        pid = topology.mirror.pid()
        flows = topology.mirror.flows() if pid else []
        data["mirror"] = {
            "pid": pid,
            "config": str(topology.mirror.config_file),
            "log": str(topology.mirror.log_file),
            "flows": [{"source": f.source, "target": f.target, "topics": list(f.topics), "state": f.state}
                      for f in flows],
        }  # fmt: skip
        ok = ok and pid is not None and all(f.running for f in flows)
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
