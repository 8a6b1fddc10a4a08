"""A real Apache Kafka cluster (KRaft mode) as local java processes.

``KafkaCluster(home, brokers, port_base)`` keeps everything under ``<home>/kafka/``::

    layout.json            brokers, port base, cluster id, Kafka version
    log4j.properties       brokers log to files, tools-log4j.properties for the tools
    node-<i>/server.properties, node-<i>/data/, node-<i>/logs/{server.log,kafka.out}
    node-<i>/kafka.pid

Readiness is polled (broker registrations through the Kafka protocol), never slept for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from flead_app.io.kafka import broker_metadata
from flead_app.settings import WORKERS_DIR
from flead_app.stack import procs, security
from flead_app.stack.config import (
    BrokerSecurity,
    ClusterPlan,
    TopicPlan,
    jvm_options,
    parse_quorum_status,
    random_cluster_id,
    render_log4j_properties,
    render_server_properties,
    render_tools_log4j_properties,
)
from flead_app.stack.errors import StackError
from flead_app.stack.fetch import fetch, require_java

log = logging.getLogger(__name__)
#: how long a port held by some client's connection (not a listener) may take to come free
PORT_GRACE_S = 15.0

T = TypeVar("T")

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion, also when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name="flead-stack-async")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


# --- talking to brokers --------------------------------------------------------------------
async def any_metadata(
    addresses: list[tuple[str, int]],
    topics: list[str] | None = None,
    timeout: float = 5.0,
    options: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Metadata from the first broker in ``addresses`` that answers, else None (``options``: the
    connection's security, for a secured cluster)."""
    for host, port in addresses:
        try:
            return await broker_metadata(host, port, topics, timeout, options)
        except Exception as exc:  # noqa: BLE001 - a dead broker is an expected answer
            log.debug("no metadata from %s:%s: %s", host, port, exc)
    return None


@dataclass
class BrokerStatus:
    node_id: int
    address: str
    roles: str
    pid: int | None
    process: bool
    registered: bool
    log: str

    @property
    def alive(self) -> bool:
        return self.process and self.registered


@dataclass
class PartitionStatus:
    partition: int
    leader: int
    replicas: list[int]
    isr: list[int]


@dataclass
class TopicStatus:
    name: str
    exists: bool
    partitions: list[PartitionStatus] = field(default_factory=list)
    error: str = ""

    @property
    def healthy(self) -> bool:
        return self.exists and bool(self.partitions) and all(p.leader >= 0 for p in self.partitions)

    @property
    def under_replicated(self) -> int:
        return sum(1 for p in self.partitions if len(p.isr) < len(p.replicas))


@dataclass
class ClusterStatus:
    brokers: list[BrokerStatus]
    quorum: dict[str, Any]
    topics: list[TopicStatus]
    bootstrap: str
    cluster_id: str

    @property
    def ok(self) -> bool:
        return (
            all(b.alive for b in self.brokers)
            and self.quorum.get("LeaderId", -1) not in (-1, None)
            and all(t.healthy for t in self.topics)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "bootstrap": self.bootstrap,
            "cluster_id": self.cluster_id,
            "brokers": [dict(asdict(b), alive=b.alive) for b in self.brokers],
            "controller": {
                "leader_id": self.quorum.get("LeaderId"),
                "leader_epoch": self.quorum.get("LeaderEpoch"),
                "high_watermark": self.quorum.get("HighWatermark"),
                "voters": self.quorum.get("CurrentVoters", []),
                "observers": self.quorum.get("CurrentObservers", []),
                "error": self.quorum.get("error", ""),
            },
            "topics": [dict(asdict(t), healthy=t.healthy, under_replicated=t.under_replicated) for t in self.topics],
        }


def remove_worker_tables(home: Path) -> None:
    """Delete the workers' local table files, which cache changelogs of a cluster now gone
    (a worker would otherwise refuse to start: persisted offsets beyond the new topics' end)."""
    workers = home / WORKERS_DIR
    if workers.exists():
        shutil.rmtree(workers)
        log.info("removed the workers' table files in %s (they cached the old cluster's changelogs)", workers)


class KafkaCluster:
    """A local KRaft cluster of ``brokers`` nodes whose first client port is ``port_base``."""

    def __init__(
        self,
        home: Path | str,
        brokers: int = 1,
        port_base: int = 29092,
        version: str = "3.9.1",
        default_partitions: int = 8,
        secure: bool = False,
    ) -> None:
        self.home = Path(home).resolve()
        self.plan = ClusterPlan(brokers, port_base)
        self.version = version
        self.default_partitions = default_partitions
        self.secure = secure
        self.dir = self.home / "kafka"
        self._libs: Path | None = None
        self._client_options: dict[str, Any] | None = None

    # --- construction from a home that has (had) a cluster ----------------------------
    @classmethod
    def from_home(cls, home: Path | str) -> KafkaCluster | None:
        layout = read_layout(Path(home).resolve() / "kafka")
        if not layout:
            return None
        return cls(
            home,
            int(layout["brokers"]),
            int(layout["port_base"]),
            str(layout.get("kafka_version", "3.9.1")),
            int(layout.get("default_partitions", 8)),
            bool(layout.get("secure", False)),
        )

    # --- paths ---------------------------------------------------------------------------
    @property
    def brokers(self) -> int:
        return self.plan.brokers

    @property
    def bootstrap(self) -> str:
        return self.plan.bootstrap

    def node_dir(self, node_id: int) -> Path:
        return self.dir / f"node-{node_id}"

    def config_file(self, node_id: int) -> Path:
        return self.node_dir(node_id) / "server.properties"

    def pid_file(self, node_id: int) -> Path:
        return self.node_dir(node_id) / "kafka.pid"

    def log_dir(self, node_id: int) -> Path:
        return self.node_dir(node_id) / "logs"

    def out_file(self, node_id: int) -> Path:
        return self.log_dir(node_id) / "kafka.out"

    def server_log(self, node_id: int) -> Path:
        return self.log_dir(node_id) / "server.log"

    def _marker(self, node_id: int) -> str:
        return str(self.config_file(node_id))

    def pid(self, node_id: int) -> int | None:
        return procs.running_pid(self.pid_file(node_id), self._marker(node_id))

    def running_nodes(self) -> list[int]:
        return [n.node_id for n in self.plan.nodes if self.pid(n.node_id)]

    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.client_port) for n in self.plan.nodes]

    @property
    def libs(self) -> Path:
        if self._libs is None:
            self._libs = fetch(self.version).libs
        return self._libs

    def classpath(self) -> str:
        return str(self.libs / "*")

    @property
    def secrets(self) -> security.SecretFiles:
        return security.SecretFiles(self.home)

    def client_options(self) -> dict[str, Any]:
        """aiokafka security options of the stack's own clients: none for a PLAINTEXT cluster, the
        admin's SCRAM login over TLS for a secured one (topics, metadata, status)."""
        if not self.secure:
            return {}
        if self._client_options is None:
            self._client_options = security.client_options(self.secrets)
        return self._client_options

    def _broker_security(self) -> BrokerSecurity | None:
        return security.broker_security(self.secrets) if self.secure else None

    # --- lifecycle -------------------------------------------------------------------
    def prepare(self) -> None:
        """Fetch jars if needed, check the layout, write configs, format storage."""
        require_java()
        _ = self.libs
        self._check_layout()
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.secure:
            security.ensure_secrets(self.home)
        broker_security = self._broker_security()
        (self.dir / "log4j.properties").write_text(render_log4j_properties())
        (self.dir / "tools-log4j.properties").write_text(render_tools_log4j_properties())
        for node in self.plan.nodes:
            nd = self.node_dir(node.node_id)
            (nd / "data").mkdir(parents=True, exist_ok=True)
            self.log_dir(node.node_id).mkdir(parents=True, exist_ok=True)
            text = render_server_properties(
                self.plan, node.node_id, str(nd / "data"), self.default_partitions, broker_security
            )
            # a secured node's config holds the key store's and the admin's passwords
            security.write_secret(self.config_file(node.node_id), text)
        self._format()

    def _check_layout(self) -> None:
        layout = read_layout(self.dir)
        wanted = {"brokers": self.brokers, "port_base": self.plan.port_base, "secure": self.secure}
        found = {**layout, "secure": bool(layout.get("secure", False))}  # layouts from before --secure
        if layout and all(found.get(k) == v for k, v in wanted.items()):
            if layout.get("kafka_version") != self.version:
                log.warning(
                    "cluster data in %s was made by Kafka %s, now running %s",
                    self.dir, layout.get("kafka_version"), self.version,
                )  # fmt: skip
            return
        if layout:
            old = KafkaCluster.from_home(self.home)
            if old is not None and old.running_nodes():
                raise StackError(
                    f"a {old.describe()} is running from {self.dir}; run `flead stack down` first "
                    f"(or `flead stack up --replace`) to switch to a {self.describe()}"
                )
            log.warning(
                "replacing the %s-broker cluster data in %s by a new %s",
                layout.get("brokers"), self.dir, self.describe(),
            )  # fmt: skip
            shutil.rmtree(self.dir)
            remove_worker_tables(self.home)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_layout(
            self.dir,
            {
                **wanted,
                "cluster_id": random_cluster_id(),
                "kafka_version": self.version,
                "default_partitions": self.default_partitions,
                "created_at": time.time(),
            },
        )

    def _format(self) -> None:
        cluster_id = read_layout(self.dir)["cluster_id"]
        todo = [
            n.node_id for n in self.plan.nodes if not (self.node_dir(n.node_id) / "data" / "meta.properties").exists()
        ]
        if not todo:
            return
        log.info("formatting KRaft storage of node(s) %s (cluster id %s)", todo, cluster_id)
        # a secured cluster's SCRAM users are part of its first metadata (KRaft has no other way
        # to have them before a broker can authenticate anybody)
        users = security.scram_arguments(security.passwords(self.secrets)) if self.secure else []
        running = {}
        for node_id in todo:
            cmd = self._java_tool(
                "kafka.tools.StorageTool", "format", "-t", cluster_id,
                "-c", str(self.config_file(node_id)), "--ignore-formatted", *users,
            )  # fmt: skip
            running[node_id] = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        failures = []
        for node_id, proc in running.items():
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                for secret in security.passwords(self.secrets).values() if self.secure else ():
                    out = out.replace(secret, "***")
                failures.append(f"node {node_id} (exit {proc.returncode}):\n{out.strip()[-2000:]}")
        if failures:
            raise StackError("formatting Kafka storage failed for " + "\n".join(failures))

    def _java_tool(self, main: str, *args: str) -> list[str]:
        return [
            require_java(), "-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.dir / 'tools-log4j.properties'}",
            "-cp", self.classpath(), main, *args,
        ]  # fmt: skip

    def check_ports(self, nodes: list[int] | None = None) -> None:
        wanted = set(nodes) if nodes is not None else {n.node_id for n in self.plan.nodes}
        taken = [
            f"port {port} ({what})"
            for node in self.plan.nodes
            if node.node_id in wanted
            for port, what in node.ports()
            if procs.port_in_use(port, grace_s=PORT_GRACE_S)
        ]
        if taken:
            raise StackError(
                "cannot start Kafka: "
                + ", ".join(taken)
                + " already in use by another process. Stop it, or pick other ports with "
                "FLEAD_KAFKA_PORT=<first client port> (brokers use PORT.., controllers PORT+10000..)"
            )

    def _launch(self, node_id: int) -> int:
        java = require_java()
        out = self.out_file(node_id)
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            java, *jvm_options(),
            f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
            f"-Dkafka.logs.dir={self.log_dir(node_id)}",
            f"-Dflead.node={node_id}",
            "-cp", self.classpath(), "kafka.Kafka", str(self.config_file(node_id)),
        ]  # fmt: skip
        with open(out, "ab") as fh:
            fh.write(f"\n--- flead: starting node {node_id} at {time.ctime()} ---\n".encode())
            fh.flush()
            proc = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.node_dir(node_id), start_new_session=True, close_fds=True,
            )  # fmt: skip
        procs.wait_exec(proc, self._marker(node_id))  # else the first liveness check may see no marker yet
        self.pid_file(node_id).write_text(f"{proc.pid}\n")
        log.info("started Kafka node %d (%s, pid %d)", node_id, self.plan.node(node_id).roles, proc.pid)
        return proc.pid

    def _exited(self, node_id: int) -> bool:
        """The node's process is gone. Not ``pid() is None``: just after the fork, before Java's
        exec, the child's command line is still ours and lacks the marker (seen when several
        clusters start at once on a busy machine)."""
        pid = procs.read_pid(self.pid_file(node_id))
        if pid is None:
            return True
        procs.reap(pid)
        return procs.is_zombie(pid)

    def failure_report(self, node_id: int, what: str) -> str:
        logs = [self.server_log(node_id), self.out_file(node_id)]
        text = [f"Kafka broker {node_id} {what}. Logs: {logs[0]} and {logs[1]}"]
        for path in logs:
            if path.exists():
                text.append(f"--- last lines of {path} ---\n{procs.tail(path, 20)}")
        return "\n".join(text)

    def up(self, timeout: float = START_TIMEOUT_S) -> list[int]:
        """Start every node that is not running; wait until all are registered.

        Returns the nodes started now. On failure stops those it started and raises.
        """
        self.prepare()
        running = self.running_nodes()
        to_start = [n.node_id for n in self.plan.nodes if n.node_id not in running]
        if running:
            log.info("Kafka node(s) %s already running", running)
        self.check_ports(to_start)
        started: list[int] = []
        try:
            for node_id in to_start:
                self._launch(node_id)
                started.append(node_id)
            self.wait_ready(timeout)
        except BaseException:
            for node_id in started:
                self._stop_node(node_id, timeout=10.0)
            raise
        return started

    def wait_ready(self, timeout: float = START_TIMEOUT_S, nodes: list[int] | None = None) -> None:
        """Poll until every node (or ``nodes``) is registered with the controller quorum."""
        expected = set(nodes) if nodes is not None else {n.node_id for n in self.plan.nodes}
        deadline = time.monotonic() + timeout
        seen: set[int] = set()

        def check() -> bool:
            nonlocal seen
            for node_id in expected:
                if self._exited(node_id):
                    raise StackError(self.failure_report(node_id, "exited during start-up"))
            md = run_async(any_metadata(self.addresses(), [], timeout=3.0, options=self.client_options()))
            seen = {b["node_id"] for b in md["brokers"]} if md else set()
            return expected <= seen

        if not procs.poll(check, max(0.0, deadline - time.monotonic()), 0.3, 1.0):
            missing = sorted(expected - seen)
            reports = [self.failure_report(n, f"did not register within {timeout:.0f} s") for n in missing]
            raise StackError("\n".join(reports))

    def down(self, timeout: float = STOP_TIMEOUT_S) -> dict[int, str]:
        """Stop every node: broker-only nodes first, then the controllers together."""
        results: dict[int, str] = {}
        groups = [
            [n.node_id for n in self.plan.nodes if not n.is_controller],
            [n.node_id for n in self.plan.controllers],
        ]
        for group in groups:
            threads = []
            for node_id in group:
                t = threading.Thread(target=lambda n=node_id: results.__setitem__(n, self._stop_node(n, timeout)))
                t.start()
                threads.append(t)
            for t in threads:
                t.join()
        return results

    def _stop_node(self, node_id: int, timeout: float = STOP_TIMEOUT_S) -> str:
        pid_file = self.pid_file(node_id)
        pid = procs.read_pid(pid_file)
        result = "not running"
        if pid is not None:
            result = procs.stop_pid(pid, self._marker(node_id), timeout)
        pid_file.unlink(missing_ok=True)
        if result != "not running":
            log.info("Kafka node %d: %s", node_id, result)
        return result

    def kill(self, node_id: int) -> bool:
        """SIGKILL broker ``node_id`` (fault tests). True when it was running."""
        self.plan.node(node_id)
        pid = self.pid(node_id)
        if pid is None:
            self.pid_file(node_id).unlink(missing_ok=True)
            return False
        killed = procs.kill_pid(pid, self._marker(node_id))
        self.pid_file(node_id).unlink(missing_ok=True)
        log.info("Kafka node %d (pid %d) killed with SIGKILL", node_id, pid)
        return killed

    def start(self, node_id: int, timeout: float = START_TIMEOUT_S) -> bool:
        """(Re)start broker ``node_id`` and wait until it is registered. False if it was running."""
        self.plan.node(node_id)
        if self.pid(node_id):
            return False
        if not self.config_file(node_id).exists():
            raise StackError(f"broker {node_id} has no config in {self.dir}: run `flead stack up` first")
        self.check_ports([node_id])
        self._launch(node_id)
        try:
            self.wait_ready(timeout, nodes=[node_id])
        except BaseException:
            self._stop_node(node_id, timeout=10.0)
            raise
        return True

    # --- access control (a secured cluster) ---------------------------------------------------
    def grant(self, user: str, prefixes: list[str], timeout: float = 120.0) -> None:
        """Give ``user`` its ACLs (``security.acl_commands``), as the admin, with Kafka's own tool.

        Adding an ACL that exists changes nothing, so every ``up`` grants again (new topic names
        or another app id get theirs).
        """
        if not self.secure:
            return
        commands = security.acl_commands(self.bootstrap, self.secrets.admin_properties, user, prefixes)
        running = [
            subprocess.Popen(
                self._java_tool("kafka.admin.AclCommand", *args),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
            for args in commands
        ]
        failures = []
        for proc in running:
            out, _ = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                failures.append(out.strip()[-1500:])
        if failures:
            raise StackError("creating the ACLs of user " + user + " failed:\n" + "\n".join(failures))
        log.info("ACLs of User:%s on topics and groups prefixed %s, and on the cluster", user, prefixes)

    def describe(self) -> str:
        """'secured 1-broker cluster (ports from 38092)', for messages."""
        kind = "secured (SASL_SSL) " if self.secure else ""
        return f"{kind}{self.brokers}-broker cluster (ports from {self.plan.port_base})"

    # --- topics -------------------------------------------------------------------------
    def ensure_topics(self, topics: list[TopicPlan], timeout: float = 60.0) -> list[str]:
        """Create the missing topics; wait until every partition has a leader and full ISR."""
        return run_async(self._ensure_topics(topics, timeout))

    async def _ensure_topics(self, topics: list[TopicPlan], timeout: float) -> list[str]:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        names = [t.name for t in topics]
        md = await any_metadata(self.addresses(), names, options=self.client_options())
        if md is None:
            raise StackError(f"no Kafka broker answers at {self.bootstrap}")
        existing = {t["topic"]: t for t in md["topics"] if t["error_code"] == 0}
        missing = [t for t in topics if t.name not in existing]
        for t in topics:
            if t.name in existing and len(existing[t.name]["partitions"]) != t.partitions:
                log.warning(
                    "topic %s exists with %d partitions (wanted %d); left as it is",
                    t.name, len(existing[t.name]["partitions"]), t.partitions,
                )  # fmt: skip
        created: list[str] = []
        if missing:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap, request_timeout_ms=30000, **self.client_options()
            )
            await admin.start()
            try:
                resp = await admin.create_topics(
                    [NewTopic(t.name, t.partitions, t.replication_factor, topic_configs=t.configs) for t in missing]
                )
            finally:
                await admin.close()
            for item in resp.to_object()["topic_errors"]:
                code = item["error_code"]
                if code == 0:
                    created.append(item["topic"])
                elif code != 36:  # 36: TOPIC_ALREADY_EXISTS (a concurrent up)
                    raise StackError(
                        f"creating topic {item['topic']} failed: error {code} {item.get('error_message') or ''}"
                    )
            log.info("created topics %s", created)
        await self._wait_topics_ready(names, timeout)
        return created

    async def _wait_topics_ready(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.2
        last = ""
        while True:
            md = await any_metadata(self.addresses(), names, options=self.client_options())
            if md:
                bad = []
                for t in md["topics"]:
                    if t["error_code"] != 0 or not t["partitions"]:
                        bad.append(f"{t['topic']}: error {t['error_code']}")
                        continue
                    for p in t["partitions"]:
                        if p["leader"] < 0 or len(p["isr"]) < len(p["replicas"]):
                            bad.append(f"{t['topic']}[{p['partition']}]")
                if not bad:
                    return
                last = ", ".join(bad[:8])
            if time.monotonic() > deadline:
                raise StackError(f"topics not ready after {timeout:.0f} s: {last or 'no metadata'}")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def delete_topics(self, names: list[str]) -> None:
        async def go() -> None:
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap, request_timeout_ms=30000, **self.client_options()
            )
            await admin.start()
            try:
                await admin.delete_topics(names)
            finally:
                await admin.close()

        run_async(go())

    # --- status -------------------------------------------------------------------------
    def quorum(self, timeout: float = 30.0) -> dict[str, Any]:
        """The controller quorum as ``MetadataQuorumCommand describe --status`` reports it."""
        live = [
            f"127.0.0.1:{n.controller_port}"
            for n in self.plan.controllers
            if self.pid(n.node_id) and procs.port_in_use(n.controller_port or 0)
        ]
        if not live:
            return {"LeaderId": -1, "error": "no controller is running"}
        cmd = self._java_tool(
            "org.apache.kafka.tools.MetadataQuorumCommand",
            "--bootstrap-controller", ",".join(live), "describe", "--status",
        )  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return {"LeaderId": -1, "error": f"quorum did not answer within {timeout:.0f} s"}
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout).strip().splitlines()
            return {"LeaderId": -1, "error": err[-1] if err else f"exit {proc.returncode}"}
        return parse_quorum_status(proc.stdout)

    def status(self, topics: list[str] | None = None, with_quorum: bool = True) -> ClusterStatus:
        """Brokers, the quorum leader and ``topics`` (None: every non-internal topic)."""
        layout = read_layout(self.dir)
        md = run_async(any_metadata(self.addresses(), topics, timeout=5.0, options=self.client_options()))
        registered = {b["node_id"] for b in md["brokers"]} if md else set()
        brokers = []
        for node in self.plan.nodes:
            pid = self.pid(node.node_id)
            brokers.append(
                BrokerStatus(
                    node_id=node.node_id,
                    address=node.address,
                    roles=node.roles,
                    pid=pid,
                    process=pid is not None and procs.port_in_use(node.client_port),
                    registered=node.node_id in registered,
                    log=str(self.server_log(node.node_id)),
                )
            )
        topic_status: list[TopicStatus] = []
        by_name = {t["topic"]: t for t in (md or {}).get("topics", [])}
        names = topics if topics is not None else sorted(n for n, t in by_name.items() if not t.get("is_internal"))
        for name in names:
            t = by_name.get(name)
            if t is None or t["error_code"] != 0:
                err = "no broker answers" if md is None else f"error {t['error_code'] if t else '?'}"
                topic_status.append(TopicStatus(name, False, error=err))
                continue
            parts = [
                PartitionStatus(p["partition"], p["leader"], list(p["replicas"]), list(p["isr"]))
                for p in sorted(t["partitions"], key=lambda p: p["partition"])
            ]
            topic_status.append(TopicStatus(name, True, parts))
        quorum = self.quorum() if with_quorum else {}
        return ClusterStatus(brokers, quorum, topic_status, self.bootstrap, str(layout.get("cluster_id", "")))


def read_layout(kafka_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((kafka_dir / "layout.json").read_text())
    except (OSError, ValueError):
        return {}


def write_layout(kafka_dir: Path, layout: dict[str, Any]) -> None:
    path = kafka_dir / "layout.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(layout, indent=1, sort_keys=True))
    tmp.replace(path)
