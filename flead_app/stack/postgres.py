"""PostgreSQL for the local stack: Debian's server, started as root with ``pg_ctlcluster``.

The server is shared by every stack on the machine; each stack uses its own database
(setting ``db_name``, default ``flead``) owned by the role ``flead``. The role's password is
random, made once, and kept with mode 0600 in ``$FLEAD_HOME/db-password`` and in a per-server
copy ``~/.config/flead/postgres-<version>-<cluster>.password`` so that several FLEAD_HOMEs on
the same server agree on it. ``$FLEAD_HOME/postgres.json`` records whether this stack started
the server, and ``stop`` only stops a server this stack started.

With ``FLEAD_DB_URL`` set nothing is started: that server is only checked to answer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from flead_app.settings import Settings
from flead_app.stack import procs
from flead_app.stack.errors import StackError

log = logging.getLogger(__name__)

ROLE = "flead"
PG_ROOT = Path("/usr/lib/postgresql")
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class PgCluster:
    version: str
    name: str
    port: int
    status: str
    owner: str
    data_dir: str
    log_file: str

    @property
    def online(self) -> bool:
        return self.status.startswith("online")


@dataclass(frozen=True)
class PgInfo:
    url: str
    managed: bool  # False: FLEAD_DB_URL, a server we do not run
    started: bool  # this call started the server
    cluster: PgCluster | None = None


def external_url(settings: Settings) -> str:
    """The database URL the user gave (``FLEAD_DB_URL``): a server this stack does not run; '' if none."""
    return settings.db_url if settings.db_url_given else ""


def make_url(password: str, port: int, database: str, host: str = "127.0.0.1") -> str:
    return f"postgresql+psycopg2://{ROLE}:{quote(password, safe='')}@{host}:{port}/{database}"


def parse_lsclusters(text: str) -> list[PgCluster]:
    """Parse ``pg_lsclusters --no-header`` output."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or not parts[0][0].isdigit():
            continue
        status_end = 4
        # status may be e.g. "online,recovery"
        out.append(
            PgCluster(
                version=parts[0],
                name=parts[1],
                port=int(parts[2]),
                status=parts[3],
                owner=parts[status_end],
                data_dir=parts[5],
                log_file=parts[6] if len(parts) > 6 else "",
            )
        )
    return out


def installed_versions() -> list[str]:
    if not PG_ROOT.is_dir():
        return []
    versions = [p.name for p in PG_ROOT.iterdir() if (p / "bin" / "postgres").exists()]
    return sorted(versions, key=lambda v: [int(x) for x in re.findall(r"\d+", v)])


def _run(cmd: list[str], timeout: float = 120.0, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )  # fmt: skip


def install_server() -> None:
    """``apt-get install -y postgresql`` (with ``apt-get update`` if the first try fails)."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackError(
            "PostgreSQL is not installed and this user cannot install it: "
            "run `apt-get install -y postgresql` as root, or set FLEAD_DB_URL"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log.info("PostgreSQL is not installed: apt-get install -y postgresql")
    cmd = ["apt-get", "install", "-y", "-q", "postgresql"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, stdin=subprocess.DEVNULL)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or not installed_versions():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
        raise StackError(f"installing PostgreSQL failed:\n{tail}")


def local_cluster(version: str, name: str) -> PgCluster | None:
    if not shutil.which("pg_lsclusters"):
        return None
    proc = _run(["pg_lsclusters", "--no-header"])
    for c in parse_lsclusters(proc.stdout):
        if c.version == version and c.name == name:
            return c
    return None


def answers(port: int, host: str = "127.0.0.1") -> bool:
    exe = shutil.which("pg_isready")
    if exe:
        proc = _run([exe, "-q", "-h", host, "-p", str(port), "-t", "2"], timeout=10)
        return proc.returncode == 0
    return procs.port_in_use(port, host)


def check_url(url: str, timeout: float = 5.0) -> str:
    """Connect to ``url`` and run ``SELECT 1``; return '' when fine, else the error text."""
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(url, connect_args={"connect_timeout": max(1, int(timeout))})
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - reported to the user
        msg = str(exc).strip().splitlines()
        return msg[0] if msg else type(exc).__name__
    return ""


def _state_file(home: Path) -> Path:
    return home / "postgres.json"


def read_state(home: Path) -> dict:
    try:
        return json.loads(_state_file(home).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(home: Path, state: dict) -> None:
    home.mkdir(parents=True, exist_ok=True)
    _state_file(home).write_text(json.dumps(state, indent=1, sort_keys=True))


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    os.chmod(path, 0o600)


def _read_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def password_file(home: Path) -> Path:
    return home / "db-password"


def shared_password_file(cluster: PgCluster) -> Path:
    base = os.environ.get("XDG_CONFIG_HOME", "").strip() or str(Path.home() / ".config")
    return Path(base) / "flead" / f"postgres-{cluster.version}-{cluster.name}.password"


def _psql_admin(cluster: PgCluster, sql: str, database: str = "postgres") -> subprocess.CompletedProcess:
    """Run ``sql`` (given on stdin, so secrets stay out of ``ps``) as the postgres superuser."""
    base = ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-p", str(cluster.port), "-d", database]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", cluster.owner or "postgres", "--", *base]
    else:
        cmd = base
    return _run(cmd, input=sql, timeout=60)


def _can_login(cluster: PgCluster, password: str) -> bool:
    if not password:
        return False
    try:
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=cluster.port, user=ROLE, password=password,
            dbname="postgres", connect_timeout=5,
        )  # fmt: skip
        conn.close()
        return True
    except Exception:  # noqa: BLE001
        return False


def _ensure_role_and_db(home: Path, cluster: PgCluster, database: str) -> str:
    mine, shared = password_file(home), shared_password_file(cluster)
    candidates = [p for p in (_read_secret(mine), _read_secret(shared)) if p]
    proc = _psql_admin(cluster, f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}';")
    if proc.returncode != 0:
        raise StackError(f"cannot query PostgreSQL as its superuser: {proc.stderr.strip()}")
    role_exists = proc.stdout.strip() == "1"
    password = next((p for p in candidates if role_exists and _can_login(cluster, p)), "")
    if not password:
        password = candidates[0] if candidates else secrets.token_urlsafe(24)
        verb = "ALTER" if role_exists else "CREATE"
        if role_exists:
            log.warning("role %s exists with an unknown password: setting the one in %s", ROLE, mine)
        sql = f"{verb} ROLE {ROLE} LOGIN PASSWORD '{password}';"
        proc = _psql_admin(cluster, sql)
        if proc.returncode != 0 and "already exists" not in proc.stderr:
            raise StackError(f"cannot create the PostgreSQL role {ROLE}: {proc.stderr.strip()}")
    _write_secret(mine, password)
    _write_secret(shared, password)
    proc = _psql_admin(cluster, f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if proc.stdout.strip() != "1":
        proc = _psql_admin(cluster, f'CREATE DATABASE "{database}" OWNER {ROLE};')
        if proc.returncode != 0 and "already exists" not in proc.stderr:
            raise StackError(f"cannot create database {database}: {proc.stderr.strip()}")
        log.info("created database %s owned by %s", database, ROLE)
    return password


def ensure_running(home: Path | str, settings: Settings) -> PgInfo:
    """Make sure PostgreSQL answers and holds this stack's database (``settings.db_name`` on the
    Debian cluster ``settings.pg_cluster``); return its URL."""
    home = Path(home).resolve()
    url = external_url(settings)
    if url:
        if not procs.poll(lambda: not check_url(url), 30.0, 0.5, 2.0):
            raise StackError(f"the database at FLEAD_DB_URL does not answer: {check_url(url)}")
        return PgInfo(url, managed=False, started=False)
    versions = installed_versions()
    if not versions:
        install_server()
        versions = installed_versions()
    version = versions[-1]
    name = settings.pg_cluster
    cluster = local_cluster(version, name)
    if cluster is None:
        log.info("creating PostgreSQL %s cluster %s", version, name)
        proc = _run(["pg_createcluster", version, name])
        if proc.returncode != 0:
            raise StackError(f"pg_createcluster {version} {name} failed: {proc.stderr.strip()}")
        cluster = local_cluster(version, name)
        if cluster is None:
            raise StackError(f"no PostgreSQL {version} cluster after pg_createcluster")
    started = False
    if not cluster.online:
        log.info("starting PostgreSQL %s/%s on port %d", cluster.version, cluster.name, cluster.port)
        proc = _run(["pg_ctlcluster", cluster.version, cluster.name, "start"])
        refreshed = local_cluster(version, name)
        if proc.returncode != 0 and not (refreshed and refreshed.online):
            raise StackError(
                f"pg_ctlcluster {cluster.version} {cluster.name} start failed: "
                f"{(proc.stderr or proc.stdout).strip()}\nlog: {cluster.log_file}\n"
                f"{procs.tail(Path(cluster.log_file), 10) if cluster.log_file else ''}"
            )
        started = proc.returncode == 0
        cluster = refreshed or cluster
        if started:
            _write_state(home, {"started": True, "version": cluster.version, "cluster": cluster.name,
                                "port": cluster.port, "started_at": time.time()})  # fmt: skip
    if not procs.poll(lambda: answers(cluster.port), READY_TIMEOUT_S, 0.2, 1.0):
        raise StackError(
            f"PostgreSQL {cluster.version}/{cluster.name} does not answer on port {cluster.port} "
            f"after {READY_TIMEOUT_S:.0f} s; log: {cluster.log_file}"
        )
    database = settings.db_name
    password = _ensure_role_and_db(home, cluster, database)
    url = make_url(password, cluster.port, database)
    err = check_url(url)
    if err:
        raise StackError(f"cannot connect to the new database {database}: {err}")
    return PgInfo(url, managed=True, started=started, cluster=cluster)


TIMESCALEDB = "timescaledb"


@dataclass(frozen=True)
class Preload:
    """What ``ensure_preloaded`` found and did."""

    available: str  # TimescaleDB version of the installed files, "" when not installed
    libraries: str  # shared_preload_libraries of the running server, afterwards
    changed: bool  # this call added timescaledb to the configuration
    restarted: bool  # this call restarted the server

    def describe(self) -> str:
        if not self.available:
            return "TimescaleDB is not installed on this server: plain PostgreSQL (scripts/setup.sh builds it)"
        if self.restarted:
            how = "added to shared_preload_libraries" if self.changed else "configured earlier"
            return f"TimescaleDB {self.available} preloaded ({how}; server restarted now)"
        return f"TimescaleDB {self.available} preloaded"


def parse_libraries(value: str) -> list[str]:
    """``shared_preload_libraries`` as a list: ``"pg_stat_statements, 'timescaledb'"`` -> two names."""
    return [name.strip().strip("'\"").strip() for name in value.split(",") if name.strip().strip("'\"").strip()]


def preload_sql(libraries: list[str]) -> str:
    """``ALTER SYSTEM`` that sets ``shared_preload_libraries`` to exactly these libraries."""
    if not libraries:
        return "ALTER SYSTEM RESET shared_preload_libraries;"
    quoted = ", ".join("'" + lib.replace("'", "''") + "'" for lib in libraries)
    return f"ALTER SYSTEM SET shared_preload_libraries = {quoted};"


def _admin_value(cluster: PgCluster, sql: str) -> str:
    proc = _psql_admin(cluster, sql)
    if proc.returncode != 0:
        raise StackError(f"cannot query PostgreSQL {cluster.version}/{cluster.name} as its superuser: "
                         f"{proc.stderr.strip()}")  # fmt: skip
    return proc.stdout.strip()


def timescaledb_available(cluster: PgCluster) -> str:
    """The version of the TimescaleDB files installed for this server, '' when none."""
    return _admin_value(cluster, f"SELECT default_version FROM pg_available_extensions WHERE name = '{TIMESCALEDB}';")


def configured_libraries(cluster: PgCluster) -> list[str]:
    """``shared_preload_libraries`` as the configuration files set it (what the next start loads),
    else as the server runs with it."""
    configured = _admin_value(
        cluster,
        "SELECT setting FROM pg_file_settings WHERE name = 'shared_preload_libraries' ORDER BY seqno DESC LIMIT 1;",
    )
    if configured:
        return parse_libraries(configured)
    return parse_libraries(_admin_value(cluster, "SHOW shared_preload_libraries;"))


def restart(cluster: PgCluster) -> PgCluster:
    """``pg_ctlcluster V N restart`` (fast mode) and wait until it answers again."""
    proc = _run(["pg_ctlcluster", cluster.version, cluster.name, "restart", "-m", "fast"])
    if proc.returncode != 0:
        raise StackError(
            f"pg_ctlcluster {cluster.version} {cluster.name} restart failed: {(proc.stderr or proc.stdout).strip()}\n"
            f"log: {cluster.log_file}\n{procs.tail(Path(cluster.log_file), 10) if cluster.log_file else ''}"
        )
    if not procs.poll(lambda: answers(cluster.port), READY_TIMEOUT_S, 0.2, 1.0):
        raise StackError(f"PostgreSQL {cluster.version}/{cluster.name} does not answer after its restart; "
                         f"log: {cluster.log_file}")  # fmt: skip
    return local_cluster(cluster.version, cluster.name) or cluster


def ensure_preloaded(cluster: PgCluster, database: str) -> Preload:
    """When TimescaleDB's files are installed, make the server preload its library.

    ``timescaledb`` is appended to the configured ``shared_preload_libraries`` (other libraries
    stay) with ``ALTER SYSTEM`` (``postgresql.auto.conf`` in the data folder), and the server is
    restarted, only when the running server does not preload it already. Sessions of other
    databases are cut by the restart; the log says how many.
    """
    available = timescaledb_available(cluster)
    running = _admin_value(cluster, "SHOW shared_preload_libraries;")
    if not available or TIMESCALEDB in parse_libraries(running):
        return Preload(available, running, changed=False, restarted=False)
    configured = configured_libraries(cluster)
    changed = TIMESCALEDB not in configured
    if changed:
        wanted = [*configured, TIMESCALEDB]
        _admin_value(cluster, preload_sql(wanted))
        log.info("PostgreSQL %s/%s: shared_preload_libraries = %s (was %s)", cluster.version, cluster.name,
                 ", ".join(wanted), ", ".join(configured) or "empty")  # fmt: skip
    others = other_sessions(cluster, database)
    log.warning(
        "restarting PostgreSQL %s/%s to preload TimescaleDB %s%s", cluster.version, cluster.name, available,
        f" ({others} session(s) of other databases are disconnected)" if others else "",
    )  # fmt: skip
    cluster = restart(cluster)
    running = _admin_value(cluster, "SHOW shared_preload_libraries;")
    if TIMESCALEDB not in parse_libraries(running):
        raise StackError(
            f"PostgreSQL {cluster.version}/{cluster.name} still does not preload timescaledb after a restart "
            f"(shared_preload_libraries = {running!r}); check {cluster.data_dir}/postgresql.auto.conf and "
            f"the log {cluster.log_file}"
        )
    return Preload(available, running, changed=changed, restarted=True)


def other_sessions(cluster: PgCluster, database: str) -> int:
    """Client sessions on databases other than ours (other stacks using the shared server)."""
    proc = _psql_admin(
        cluster,
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
        f"AND pid <> pg_backend_pid() AND datname IS NOT NULL AND datname NOT IN ('{database}', 'postgres');",
    )
    try:
        return int(proc.stdout.strip() or 0)
    except ValueError:
        return 0


def stop(home: Path | str, settings: Settings, force: bool = False) -> str:
    """Stop the server if this stack started it and no other stack is connected."""
    home = Path(home).resolve()
    state = read_state(home)
    if external_url(settings):
        return "not managed (FLEAD_DB_URL)"
    if not state.get("started"):
        return "left running (not started by this stack)"
    cluster = local_cluster(str(state.get("version", "")), str(state.get("cluster", "")) or settings.pg_cluster)
    _state_file(home).unlink(missing_ok=True)
    if cluster is None or not cluster.online:
        return "not running"
    if not force:
        others = other_sessions(cluster, settings.db_name)
        if others:
            return f"left running ({others} session(s) of other databases are connected)"
    proc = _run(["pg_ctlcluster", cluster.version, cluster.name, "stop", "-m", "fast"])
    if proc.returncode != 0:
        refreshed = local_cluster(cluster.version, cluster.name)
        if refreshed and refreshed.online:
            raise StackError(f"pg_ctlcluster {cluster.version} {cluster.name} stop failed: {proc.stderr.strip()}")
    return "stopped"


def status(url: str) -> dict:
    """Whether the database at ``url`` answers."""
    if not url:
        return {"answers": False, "error": "no database URL (run `flead stack up`)"}
    err = check_url(url)
    return {"answers": not err, "error": err}
