"""Pure logic of the local Kafka stack: port plans, topic plans, rendered config files.

Nothing here starts a process, opens a socket or touches the disk, so it is unit-tested
without services. ``kafka.py`` turns these plans into running brokers.

Layout of a cluster of ``n`` nodes on loopback, with ``base`` = the setting ``kafka_port``
(``FLEAD_KAFKA_PORT``, default 29092):

- node ``i`` (1-based) serves clients on ``base + i - 1``;
- nodes 1..3 (or node 1 alone when ``n`` < 3) are also KRaft controllers, listening on
  ``base + 10000 + i - 1`` and named in a static ``controller.quorum.voters``;
- other nodes are brokers only.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field

DEFAULT_PORT_BASE = 29092
CONTROLLER_PORT_OFFSET = 10000
MAX_BROKERS = 9
HOST = "127.0.0.1"
HEAP = "512m"


@dataclass(frozen=True)
class NodePlan:
    node_id: int
    client_port: int
    controller_port: int | None  # None: broker only

    @property
    def is_controller(self) -> bool:
        return self.controller_port is not None

    @property
    def roles(self) -> str:
        return "broker,controller" if self.is_controller else "broker"

    @property
    def address(self) -> str:
        return f"localhost:{self.client_port}"

    def ports(self) -> list[tuple[int, str]]:
        """Every port this node binds, with what it is for (for error messages)."""
        out = [(self.client_port, f"broker {self.node_id} client listener")]
        if self.controller_port is not None:
            out.append((self.controller_port, f"broker {self.node_id} controller listener"))
        return out


@dataclass(frozen=True)
class ClusterPlan:
    """Where every node of an ``n``-broker cluster listens and how topics replicate."""

    brokers: int
    port_base: int = DEFAULT_PORT_BASE
    nodes: tuple[NodePlan, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.brokers <= MAX_BROKERS:
            raise ValueError(f"brokers must be between 1 and {MAX_BROKERS}, got {self.brokers}")
        controllers = 3 if self.brokers >= 3 else 1
        nodes = []
        for i in range(1, self.brokers + 1):
            ctrl = self.port_base + CONTROLLER_PORT_OFFSET + i - 1 if i <= controllers else None
            nodes.append(NodePlan(i, self.port_base + i - 1, ctrl))
        object.__setattr__(self, "nodes", tuple(nodes))

    # --- derived values ---------------------------------------------------------------
    @property
    def controllers(self) -> list[NodePlan]:
        return [n for n in self.nodes if n.is_controller]

    @property
    def quorum_voters(self) -> str:
        return ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in self.controllers)

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes)

    @property
    def bootstrap_controllers(self) -> str:
        return ",".join(f"{HOST}:{n.controller_port}" for n in self.controllers)

    @property
    def replication_factor(self) -> int:
        return min(3, self.brokers)

    @property
    def min_insync_replicas(self) -> int:
        return 2 if self.replication_factor >= 3 else 1

    def node(self, node_id: int) -> NodePlan:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise ValueError(f"no broker {node_id} in a {self.brokers}-broker cluster (1..{self.brokers})")

    def all_ports(self) -> list[tuple[int, str]]:
        return [p for n in self.nodes for p in n.ports()]

    def ports_json(self) -> dict[str, dict[str, int | None]]:
        return {str(n.node_id): {"client": n.client_port, "controller": n.controller_port} for n in self.nodes}


@dataclass(frozen=True)
class TopicPlan:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]


def topic_plans(plan: ClusterPlan, names: list[str], partitions: int) -> list[TopicPlan]:
    """The FLEAD topics: ``partitions`` each, replication min(3, brokers), min.insync 2 at RF 3."""
    if partitions < 1 or partitions % 4:
        raise ValueError(f"partitions must be a positive multiple of 4, got {partitions}")
    configs = {"min.insync.replicas": str(plan.min_insync_replicas)}
    seen: list[str] = []
    for name in names:
        if name and name not in seen:
            seen.append(name)
    return [TopicPlan(n, partitions, plan.replication_factor, dict(configs)) for n in seen]


def random_cluster_id() -> str:
    """A KRaft cluster id like ``kafka-storage random-uuid`` makes (URL-safe base64, 22 chars).

    Kafka's ``Uuid.randomUuid`` never returns an id whose text starts with ``-``.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_LOGIN_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
ADMIN_USER = "admin"
#: the principal of the PLAINTEXT controller listener (brokers registering, heartbeats): it must be
#: a super user, or the controller's authorizer refuses the brokers' own requests
CONTROLLER_PRINCIPAL = "User:ANONYMOUS"


@dataclass(frozen=True)
class BrokerSecurity:
    """What a secured broker needs: its TLS key store, the CA it trusts and the admin's password
    (the broker logs in as the admin to replicate from other brokers).

    The client listener is SASL_SSL (SCRAM-SHA-512 over TLS); brokers replicate over the same
    listener as ``admin``. The controller listener stays PLAINTEXT on 127.0.0.1: KRaft controllers
    cannot check SCRAM (the credentials live in the metadata they serve), so whoever can reach
    the controller port on this machine is trusted, as the brokers registering there must be.
    """

    keystore: str  # PKCS12 with the broker's key and certificate chain
    keystore_password: str = field(repr=False)
    truststore: str  # the CA certificate (PEM)
    admin_password: str = field(repr=False)

    def jaas(self) -> str:
        return f'{SCRAM_LOGIN_MODULE} required username="{ADMIN_USER}" password="{self.admin_password}";'


def security_properties(security: BrokerSecurity | None) -> list[tuple[str, object]]:
    """The listener and authorizer lines of a node; PLAINTEXT everywhere without ``security``.

    >>> [k for k, _ in security_properties(None)]
    ['inter.broker.listener.name', 'listener.security.protocol.map']
    >>> props = dict(security_properties(BrokerSecurity("/s/broker.p12", "kp", "/s/ca.pem", "ap")))
    >>> props["listener.security.protocol.map"], props["super.users"]
    ('CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL', 'User:admin;User:ANONYMOUS')
    >>> props["allow.everyone.if.no.acl.found"], props["ssl.truststore.type"]
    ('false', 'PEM')
    """
    if security is None:
        return [
            ("inter.broker.listener.name", "PLAINTEXT"),
            ("listener.security.protocol.map", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"),
        ]
    return [
        ("inter.broker.listener.name", "SASL_SSL"),
        ("listener.security.protocol.map", "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"),
        ("sasl.enabled.mechanisms", SCRAM_MECHANISM),
        ("sasl.mechanism.inter.broker.protocol", SCRAM_MECHANISM),
        (f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config", security.jaas()),
        ("ssl.keystore.type", "PKCS12"),
        ("ssl.keystore.location", security.keystore),
        ("ssl.keystore.password", security.keystore_password),
        ("ssl.key.password", security.keystore_password),
        ("ssl.truststore.type", "PEM"),
        ("ssl.truststore.location", security.truststore),
        ("ssl.client.auth", "none"),
        ("authorizer.class.name", STANDARD_AUTHORIZER),
        ("super.users", f"User:{ADMIN_USER};{CONTROLLER_PRINCIPAL}"),
        ("allow.everyone.if.no.acl.found", "false"),
    ]


def render_server_properties(
    plan: ClusterPlan,
    node_id: int,
    data_dir: str,
    default_partitions: int = 8,
    security: BrokerSecurity | None = None,
) -> str:
    """``server.properties`` of one node: KRaft, loopback, small thread pools; with ``security``
    the client listener is SASL_SSL and ACLs are enforced (``security_properties``)."""
    node = plan.node(node_id)
    rf = plan.replication_factor
    client = "SASL_SSL" if security else "PLAINTEXT"
    listeners = [f"{client}://{HOST}:{node.client_port}"]
    if node.is_controller:
        listeners.append(f"CONTROLLER://{HOST}:{node.controller_port}")
    props: list[tuple[str, object]] = [
        ("process.roles", node.roles),
        ("node.id", node.node_id),
        ("controller.quorum.voters", plan.quorum_voters),
        ("controller.listener.names", "CONTROLLER"),
        ("listeners", ",".join(listeners)),
        ("advertised.listeners", f"{client}://{HOST}:{node.client_port}"),
        *security_properties(security),
        ("log.dirs", data_dir),
        # replication and topics
        ("num.partitions", default_partitions),
        ("default.replication.factor", rf),
        ("min.insync.replicas", plan.min_insync_replicas),
        ("offsets.topic.replication.factor", rf),
        ("offsets.topic.num.partitions", 16),
        ("transaction.state.log.replication.factor", rf),
        ("transaction.state.log.min.isr", plan.min_insync_replicas),
        ("transaction.state.log.num.partitions", 8),
        ("auto.create.topics.enable", "false"),
        ("unclean.leader.election.enable", "false"),
        ("group.initial.rebalance.delay.ms", 0),
        # small thread pools: four brokers share two cores
        ("num.network.threads", 2),
        ("num.io.threads", 2),
        ("background.threads", 2),
        ("num.replica.fetchers", 1),
        ("num.recovery.threads.per.data.dir", 1),
        ("log.cleaner.threads", 1),
        ("controller.quorum.election.timeout.ms", 1000),
        ("controller.quorum.fetch.timeout.ms", 2000),
        ("broker.heartbeat.interval.ms", 1000),
        ("broker.session.timeout.ms", 6000),
        # a development stack: keep the disk small
        ("log.retention.hours", 24),
        ("log.segment.bytes", 64 * 1024 * 1024),
        ("log.retention.check.interval.ms", 60000),
    ]
    lines = [
        f"# Generated by `flead stack up` for node {node_id} of a {plan.brokers}-broker cluster.",
        "# Edits are overwritten on the next `flead stack up`.",
    ]
    lines += [f"{k}={v}" for k, v in props]
    return "\n".join(lines) + "\n"


def render_log4j_properties() -> str:
    """reload4j config: everything goes to files under ``${kafka.logs.dir}``."""
    return """# Generated by `flead stack up`.
log4j.rootLogger=INFO, server
log4j.appender.server=org.apache.log4j.RollingFileAppender
log4j.appender.server.File=${kafka.logs.dir}/server.log
log4j.appender.server.MaxFileSize=20MB
log4j.appender.server.MaxBackupIndex=3
log4j.appender.server.layout=org.apache.log4j.PatternLayout
log4j.appender.server.layout.ConversionPattern=[%d] %p %m (%c)%n

log4j.appender.controller=org.apache.log4j.RollingFileAppender
log4j.appender.controller.File=${kafka.logs.dir}/controller.log
log4j.appender.controller.MaxFileSize=10MB
log4j.appender.controller.MaxBackupIndex=2
log4j.appender.controller.layout=org.apache.log4j.PatternLayout
log4j.appender.controller.layout.ConversionPattern=[%d] %p %m (%c)%n

log4j.appender.state=org.apache.log4j.RollingFileAppender
log4j.appender.state.File=${kafka.logs.dir}/state-change.log
log4j.appender.state.MaxFileSize=10MB
log4j.appender.state.MaxBackupIndex=2
log4j.appender.state.layout=org.apache.log4j.PatternLayout
log4j.appender.state.layout.ConversionPattern=[%d] %p %m (%c)%n

log4j.logger.org.apache.kafka=INFO
log4j.logger.kafka=INFO
log4j.logger.kafka.controller=INFO, controller
log4j.additivity.kafka.controller=false
log4j.logger.org.apache.kafka.controller=INFO, controller
log4j.additivity.org.apache.kafka.controller=false
log4j.logger.state.change.logger=INFO, state
log4j.additivity.state.change.logger=false
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.network.RequestChannel$=WARN
log4j.logger.kafka.log.LogCleaner=INFO
"""


def render_tools_log4j_properties() -> str:
    """reload4j config for the short-lived tools (storage format, quorum describe): stderr, WARN."""
    return """# Generated by `flead stack up`.
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
"""


def jvm_options(heap: str = HEAP) -> list[str]:
    """JVM flags of one broker: fixed 512 MB heap, G1, exit on OOM."""
    return [
        f"-Xmx{heap}",
        f"-Xms{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-XX:+ExitOnOutOfMemoryError",
        "-XX:CICompilerCount=2",
        "-Djava.awt.headless=true",
    ]


def parse_quorum_status(text: str) -> dict[str, object]:
    """Parse ``MetadataQuorumCommand describe --status`` output into a dict.

    Lines look like ``LeaderId:               1`` and
    ``CurrentVoters:          [{"id": 1, ...}, ...]`` (3.9) or ``[1,2,3]`` (older).
    """
    out: dict[str, object] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not key or " " in key:
            continue
        if key in {"LeaderId", "LeaderEpoch", "HighWatermark", "MaxFollowerLag"}:
            try:
                out[key] = int(value)
            except ValueError:
                out[key] = value
        elif key in {"CurrentVoters", "CurrentObservers"}:
            out[key] = _parse_id_list(value)
        else:
            out[key] = value
    return out


def _parse_id_list(value: str) -> list[int]:
    import json
    import re

    try:
        parsed = json.loads(value)
    except ValueError:
        return [int(x) for x in re.findall(r"\d+", value)]
    ids: list[int] = []
    for item in parsed if isinstance(parsed, list) else []:
        if isinstance(item, dict) and "id" in item:
            ids.append(int(item["id"]))
        elif isinstance(item, int):
            ids.append(item)
    return ids


# --- sites and MirrorMaker 2 --------------------------------------------------------------------
CENTRAL_ALIAS = "central"
MIRROR_HEAP = "320m"
IDENTITY_POLICY = "org.apache.kafka.connect.mirror.IdentityReplicationPolicy"


def site_alias(site: int) -> str:
    """MirrorMaker's name of site ``site``'s cluster (also in its internal topics' names).

    >>> site_alias(2)
    'site2'
    """
    return f"site{site}"


@dataclass(frozen=True)
class MirrorPlan:
    """What MirrorMaker 2 carries between the central cluster and each site's.

    ``up``: topics that go from every site to the centre (model updates, anomalies);
    ``down``: topics that go from the centre to every site (global models). Nothing else crosses:
    not the readings, not the workers' changelogs, not the dead letters.
    """

    central: str  # bootstrap servers of the central cluster
    central_replication: int
    sites: tuple[tuple[str, str], ...]  # (alias, bootstrap servers)
    up: tuple[str, ...]
    down: tuple[str, ...]
    flush_interval_ms: int = 2000
    refresh_topics_s: int = 30

    @property
    def aliases(self) -> list[str]:
        return [CENTRAL_ALIAS, *(alias for alias, _ in self.sites)]

    def flows(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(source alias, target alias, topics) of every replication flow."""
        out = []
        for alias, _ in self.sites:
            out.append((alias, CENTRAL_ALIAS, self.up))
            out.append((CENTRAL_ALIAS, alias, self.down))
        return out


def _topic_regex(names: tuple[str, ...]) -> str:
    """MirrorMaker reads ``.topics`` as a list of regular expressions: quote each name whole."""
    import re

    return ", ".join(re.escape(n) for n in names)


def render_mm2_properties(plan: MirrorPlan) -> str:
    """``mm2.properties`` for ``org.apache.kafka.connect.mirror.MirrorMaker`` (dedicated mode).

    One process runs every flow: each site's updates and anomalies to the centre, the centre's
    global models to each site. Topic names stay as they are (``IdentityReplicationPolicy``),
    so the central agents and the sites' followers read the topics they always read. MirrorMaker
    creates only the Kafka Connect topics it needs per flow on the target cluster
    (``mm2-configs|offsets|status.<source>.internal``, one partition each, the target's default
    replication): heartbeats, checkpoints, offset syncs, consumer-group offset sync, ACL and
    topic-config sync are all off, since nothing fails over between these clusters and the
    stack owns the topics and their configs (``min.insync.replicas`` differs by cluster size).

    Delivery is at least once: a source task commits the offsets it replicated every
    ``flush_interval_ms`` to the target's offsets topic, and a restart resumes there, so records
    replicated after the last commit cross again. Exactly-once (``<target>.exactly.once.source.support
    = enabled``, supported in dedicated mode since 3.5 with ``dedicated.mode.enable.internal.rest``)
    would only hide the copies from consumers reading ``read_committed``, which Faust and the sink
    do not; the FedAvg agent drops repeated (device, model version) updates and counts them, and the
    database ignores repeated natural keys.

    >>> plan = MirrorPlan("localhost:29092", 3, (("site1", "localhost:29102"),),
    ...                   ("local-model-updates", "anomalies"), ("global-model-updates",))
    >>> text = render_mm2_properties(plan)
    >>> "site1->central.topics = local\\\\-model\\\\-updates, anomalies" in text
    True
    >>> "central->site1.topics = global\\\\-model\\\\-updates" in text
    True
    >>> "site1.bootstrap.servers = localhost:29102" in text
    True
    """
    lines = [
        "# Generated by `flead stack up --sites N` (or `flead stack mirror-config`): Kafka MirrorMaker 2 in",
        "# dedicated mode (org.apache.kafka.connect.mirror.MirrorMaker). Edits are overwritten on the next start.",
        f"clusters = {', '.join(plan.aliases)}",
        f"{CENTRAL_ALIAS}.bootstrap.servers = {plan.central}",
    ]
    lines += [f"{alias}.bootstrap.servers = {bootstrap}" for alias, bootstrap in plan.sites]
    lines += [
        "",
        "# topic names stay the same on both sides",
        f"replication.policy.class = {IDENTITY_POLICY}",
        "# only the topics named per flow below; no MirrorMaker extras",
        "emit.heartbeats.enabled = false",
        "emit.checkpoints.enabled = false",
        "emit.offset-syncs.enabled = false",
        "sync.group.offsets.enabled = false",
        "sync.topic.acls.enabled = false",
        "sync.topic.configs.enabled = false",
        f"refresh.topics.interval.seconds = {plan.refresh_topics_s}",
        "tasks.max = 1",
        "# MirrorMaker 3.9 creates an (empty) heartbeats topic on every target even with heartbeats off",
        "heartbeats.topic.replication.factor = -1",
        "# Kafka Connect's own topics on each target: one partition, the target cluster's default replication",
        "config.storage.replication.factor = -1",
        "offset.storage.replication.factor = -1",
        "offset.storage.partitions = 1",
        "status.storage.replication.factor = -1",
        "status.storage.partitions = 1",
        "",
    ]
    for alias in plan.aliases:
        lines += [
            f"# {alias} as a target: commit replicated offsets every {plan.flush_interval_ms} ms; every replica acks",
            f"{alias}.offset.flush.interval.ms = {plan.flush_interval_ms}",
            f"{alias}.producer.acks = all",
            f"{alias}.producer.enable.idempotence = true",
            f"{alias}.producer.linger.ms = 10",
        ]
    lines.append("")
    for source, target, topics in plan.flows():
        rf = plan.central_replication if target == CENTRAL_ALIAS else 1
        lines += [
            f"{source}->{target}.enabled = true",
            f"{source}->{target}.topics = {_topic_regex(topics)}",
            f"{source}->{target}.replication.factor = {rf}",
        ]
    return "\n".join(lines) + "\n"


def mirror_jvm_options(heap: str = MIRROR_HEAP) -> list[str]:
    """JVM flags of the MirrorMaker process: a small fixed heap (it moves kilobytes, not readings)."""
    return [
        f"-Xmx{heap}",
        f"-Xms{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-XX:CICompilerCount=2",
        "-Djava.awt.headless=true",
    ]


def render_mirror_log4j_properties() -> str:
    """reload4j config of MirrorMaker: a rolling file under ``${kafka.logs.dir}``, Connect at INFO."""
    return """# Generated by `flead stack up --sites N`.
log4j.rootLogger=INFO, mm2
log4j.appender.mm2=org.apache.log4j.RollingFileAppender
log4j.appender.mm2.File=${kafka.logs.dir}/mirror-maker.log
log4j.appender.mm2.MaxFileSize=20MB
log4j.appender.mm2.MaxBackupIndex=2
log4j.appender.mm2.layout=org.apache.log4j.PatternLayout
log4j.appender.mm2.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.org.apache.kafka.clients=WARN
log4j.logger.org.apache.kafka.common.utils.AppInfoParser=WARN
log4j.logger.org.reflections=ERROR
"""
