"""Kafka for everything in FLEAD that is not a Faust agent: one client factory, topics, leaders, lags.

Every client is made here (``consumer``, ``producer``, ``admin``), from the settings, so each
one gets the cluster's address and its security options (SASL, TLS) the same way.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from flead_app.settings import Settings

TOPIC_ALREADY_EXISTS = 36  # Kafka error code


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """Security options for aiokafka clients (empty for PLAINTEXT): SASL credentials, a TLS context."""
    opts: dict[str, Any] = {}
    proto = settings.kafka_security_protocol.upper()
    if proto == "PLAINTEXT":
        return opts
    opts["security_protocol"] = proto
    if proto.startswith("SASL"):
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism
        opts["sasl_plain_username"] = settings.kafka_sasl_username
        opts["sasl_plain_password"] = settings.kafka_sasl_password
    if proto.endswith("SSL"):
        from aiokafka.helpers import create_ssl_context

        opts["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile or None,
            certfile=settings.kafka_ssl_certfile or None,
            keyfile=settings.kafka_ssl_keyfile or None,
        )
    return opts


def client_options(settings: Settings, **options: Any) -> dict[str, Any]:
    """The settings' cluster address and security options, then ``options`` (which win)."""
    return {"bootstrap_servers": settings.bootstrap_servers, **kafka_client_options(settings), **options}


def consumer(settings: Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """An aiokafka consumer of the settings' cluster that commits only when told to."""
    return AIOKafkaConsumer(*topics, **client_options(settings, enable_auto_commit=False, **options))


def producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    """An idempotent aiokafka producer (acks from all in-sync replicas) of the settings' cluster."""
    return AIOKafkaProducer(**client_options(settings, acks="all", enable_idempotence=True, **options))


def admin(settings: Settings, **options: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_options(settings, **options))


def leaders_from_metadata(cluster: Any, topic: str) -> dict[int, int]:
    """{partition: id of its leader broker, -1 while it has none} from aiokafka's ``ClusterMetadata``."""
    out: dict[int, int] = {}
    for p in sorted(cluster.partitions_for_topic(topic) or ()):
        leader = cluster.leader_for_partition(TopicPartition(topic, p))
        out[int(p)] = -1 if leader is None or leader < 0 else int(leader)
    return out


async def partition_leaders(client: AIOKafkaConsumer | AIOKafkaProducer, topic: str) -> dict[int, int]:
    """The leaders of ``topic``'s partitions, from fresh metadata of a started client."""
    inner = client._client if isinstance(client, AIOKafkaConsumer) else client.client  # noqa: SLF001
    cluster = await inner.fetch_all_metadata()
    return leaders_from_metadata(cluster, topic)


def fetch_partition_leaders(settings: Settings, topic: str, timeout_s: float = 30.0) -> dict[int, int]:
    """{partition: leader broker id} of ``topic``, asked once (for commands outside an event loop)."""

    async def ask() -> dict[int, int]:
        c = consumer(settings, group_id=None, request_timeout_ms=int(timeout_s * 1000))
        await asyncio.wait_for(start_client(c, settings), timeout_s)
        try:
            return await asyncio.wait_for(partition_leaders(c, topic), timeout_s)
        finally:
            await c.stop()

    return asyncio.run(ask())


async def assign_all_partitions(consumer: AIOKafkaConsumer, topic: str, timeout: float = 30.0) -> list[TopicPartition]:
    """Assign every partition of ``topic`` to a group-less consumer, waiting for its metadata."""
    deadline = time.monotonic() + timeout
    consumer._client.add_topic(topic)  # noqa: SLF001 - aiokafka offers no public way to ask for one topic
    while True:
        await consumer._client.force_metadata_update()  # noqa: SLF001
        parts = consumer.partitions_for_topic(topic)
        if parts:
            assigned = [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(assigned)
            return assigned
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic!r} has no partitions in the cluster metadata")
        await asyncio.sleep(0.3)


async def read_to_end(settings: Settings, topic: str, timeout: float = 60.0) -> list[Any]:
    """Every record of ``topic`` now in the log, in offset order per partition (no consumer group);
    empty when the topic does not exist yet."""
    reader = consumer(settings, group_id=None, auto_offset_reset="earliest")
    await start_client(reader, settings)
    try:
        try:
            tps = await assign_all_partitions(reader, topic, timeout=min(timeout, 10.0))
        except TimeoutError:
            return []
        ends = await reader.end_offsets(tps)
        await reader.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while [tp for tp in tps if await reader.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic!r} to its end took over {timeout:.0f} s")
            for records in (await reader.getmany(timeout_ms=1000)).values():
                out.extend(records)
        return out
    finally:
        await reader.stop()


async def create_topics(
    settings: Settings,
    names: list[str],
    partitions: int | None = None,
    replication: int | None = None,
    configs: dict[str, str] | None = None,
) -> list[str]:
    """Create topics as ``flead stack up`` does (``min.insync.replicas=2`` where replication is
    3+); topics that exist already are left alone. Returns the names created now."""
    from aiokafka.admin import NewTopic

    partitions = partitions or settings.partitions
    replication = replication or settings.replication_factor
    topic_configs = {**({"min.insync.replicas": "2"} if replication >= 3 else {}), **(configs or {})}
    client = admin(settings)
    await start_client(client, settings)
    try:
        new = [NewTopic(n, partitions, replication, topic_configs=topic_configs) for n in names]
        resp = await client.create_topics(new)
    finally:
        await client.close()
    created = []
    for item in resp.to_object()["topic_errors"]:
        if item["error_code"] == 0:
            created.append(item["topic"])
        elif item["error_code"] != TOPIC_ALREADY_EXISTS:
            raise RuntimeError(
                f"creating topic {item['topic']} failed: error {item['error_code']} {item.get('error_message') or ''}"
            )
    return created


async def broker_metadata(
    host: str, port: int, topics: list[str] | None = None, timeout: float = 5.0, options: dict[str, Any] | None = None
) -> dict:
    """One MetadataRequest straight to one broker (``topics=None``: all topics), as a dict;
    ``options`` are the connection's security (``kafka_client_options``), none for PLAINTEXT."""
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    conn = await asyncio.wait_for(
        create_conn(host, port, request_timeout_ms=int(timeout * 1000), **(options or {})), timeout
    )
    try:
        resp = await asyncio.wait_for(conn.send(MetadataRequest(topics, False)), timeout)
        return resp.to_object()
    finally:
        conn.close()


async def wait_topics_known(
    bootstrap: list[str],
    names: list[str],
    partitions: int,
    timeout: float = 60.0,
    options: dict[str, Any] | None = None,
) -> None:
    """Wait until every bootstrap broker's metadata has ``names``, each with ``partitions``
    partitions that have a leader (a new topic reaches each broker's cache at its own pace);
    ``options``: the connections' security (``kafka_client_options``)."""
    deadline = time.monotonic() + timeout
    missing: list[str] = []
    while True:
        missing = []
        for server in bootstrap:
            host, port = server.rsplit(":", 1)
            try:
                md = await broker_metadata(host, int(port), names, options=options)
            except Exception as exc:  # a broker that is down does not block the start
                missing.append(f"{server}: {type(exc).__name__}")
                continue
            for t in md["topics"]:
                leaders = [p for p in t["partitions"] if p["leader"] >= 0]
                if t["error_code"] != 0 or len(leaders) != partitions:
                    missing.append(f"{t['topic']} at {server}")
        down = [m for m in missing if " at " not in m]
        if len(missing) == len(down) and len(down) < len(bootstrap):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not in every broker's metadata after {timeout:.0f} s: {', '.join(missing[:6])}")
        await asyncio.sleep(0.3)


def event_time(msg: Any) -> float:
    """A Faust message's Kafka timestamp in epoch seconds (wall clock if the record has none)."""
    ts = msg.timestamp
    return float(ts) if ts and ts > 0 else time.time()


async def consumer_lag(settings: Settings, group: str, topic: str) -> int:
    """Records of ``topic`` the consumer group has not committed yet.

    Counted from the first record that still exists: a committed offset before it (records
    deleted by retention or ``flead stack reset``) means the group has nothing older to read.
    """
    client, reader = admin(settings), consumer(settings)
    await client.start()
    await reader.start()
    try:
        parts = await assign_all_partitions(reader, topic)
        begins, ends = await reader.beginning_offsets(parts), await reader.end_offsets(parts)
        committed = await client.list_consumer_group_offsets(group, partitions=parts)
        lag = 0
        for tp in parts:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lag += max(0, ends[tp] - max(done, begins[tp]))
        return lag
    finally:
        await reader.stop()
        await client.close()


def consuming_groups(settings: Settings, topic: str) -> list[str]:
    """The consumer groups that commit offsets on ``topic``.

    The Faust agents (group ``app_id``) read the readings (detector) and the local updates
    (FedAvg); the sink (``sink_group``) reads anomalies, local updates and global models. The
    global-model follower reads ``global-model-updates`` without a group, so nothing of that
    group's lag there would ever fall.

    >>> from flead_app.settings import Settings
    >>> consuming_groups(Settings(), "global-model-updates"), consuming_groups(Settings(), "local-model-updates")
    (['flead-sink'], ['flead', 'flead-sink'])
    """
    faust_topics = {settings.topic_readings, settings.topic_local_updates}
    sink_topics = {settings.topic_anomalies, settings.topic_local_updates, settings.topic_global_updates}
    return [g for g, ts in ((settings.app_id, faust_topics), (settings.sink_group, sink_topics)) if topic in ts]


def pipeline_lags(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Uncommitted records per ``"topic (group)"``, for every group that commits on each topic."""
    return {
        f"{t} ({group})": asyncio.run(consumer_lag(settings, group, t))
        for t in topics
        for group in consuming_groups(settings, t)
    }


def broker_credentials(settings: Settings) -> object | None:
    """Faust takes security settings as a credentials object; None for PLAINTEXT."""
    from faust import SASLCredentials, SSLCredentials

    options = kafka_client_options(settings)
    if not options:
        return None
    if settings.kafka_security_protocol.upper().startswith("SASL"):
        return SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=options.get("ssl_context"),
        )
    return SSLCredentials(options["ssl_context"])


class KafkaAccessError(RuntimeError):
    """A Kafka cluster refused this client (wrong password, no TLS where TLS is required, ...): the
    message says which, where aiokafka says only that it could not bootstrap."""


def explain_refusal(server: str, protocol: str, user: str, mechanism: str, exc: BaseException) -> str:
    """One sentence on why connecting to ``server`` failed, from the exception of a direct connection.

    >>> from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed
    >>> explain_refusal("localhost:1", "SASL_SSL", "flead", "SCRAM-SHA-512", SaslAuthenticationFailed("x"))[:62]
    'Kafka at localhost:1 refused the login of user flead (SCRAM-SH'
    >>> explain_refusal("localhost:1", "PLAINTEXT", "", "PLAIN", KafkaConnectionError("closed"))[:72]
    'Kafka at localhost:1 closed the connection of a PLAINTEXT client: the br'
    >>> explain_refusal("localhost:1", "PLAINTEXT", "", "PLAIN", ConnectionRefusedError(111, "refused"))[:32]
    'no Kafka broker answers at local'
    """
    import ssl

    from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

    if isinstance(exc, SaslAuthenticationFailed) or "SaslAuthenticationFailed" in str(exc):
        return (
            f"Kafka at {server} refused the login of user {user} ({mechanism}): wrong user name or password "
            f"(FLEAD_KAFKA_SASL_USERNAME / FLEAD_KAFKA_SASL_PASSWORD; a secured stack keeps its own in "
            f"$FLEAD_HOME/secrets)"
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS with Kafka at {server} failed ({exc.reason or exc}): is FLEAD_KAFKA_SSL_CAFILE the cluster's CA?"
    if isinstance(exc, ConnectionRefusedError) or (isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError)):
        return f"no Kafka broker answers at {server} ({exc}): is the stack up (`flead stack status`)?"
    if protocol.upper() == "PLAINTEXT" and isinstance(exc, KafkaConnectionError | asyncio.TimeoutError):
        return (
            f"Kafka at {server} closed the connection of a PLAINTEXT client: the broker requires TLS and SASL "
            f"(a secured stack, `flead stack up --secure`: leave FLEAD_KAFKA_SECURITY_PROTOCOL unset so its "
            f"settings apply, or set SASL_SSL with a user, password and CA)"
        )
    return f"Kafka at {server} refused the connection ({protocol}): {type(exc).__name__}: {exc}"


async def connection_problem(settings: Settings, timeout: float = 15.0) -> str:
    """Why this client cannot talk to the cluster, '' when it can: one direct connection to the
    first bootstrap server with the settings' security, its failure put in words."""
    from aiokafka.conn import create_conn

    server = settings.bootstrap_servers[0] if settings.bootstrap_servers else "?"
    host, _, port = server.rpartition(":")
    try:
        conn = await asyncio.wait_for(
            create_conn(host, int(port), request_timeout_ms=int(timeout * 1000), **kafka_client_options(settings)),
            timeout,
        )
    except Exception as exc:  # noqa: BLE001 - every failure is explained
        return explain_refusal(
            server, settings.kafka_security_protocol, settings.kafka_sasl_username, settings.kafka_sasl_mechanism, exc
        )
    conn.close()
    return ""


async def start_client(client: Any, settings: Settings) -> None:
    """``await client.start()``; when the cluster refuses, a ``KafkaAccessError`` that says why."""
    from aiokafka.errors import KafkaConnectionError

    try:
        await client.start()
    except KafkaConnectionError as exc:
        problem = await connection_problem(settings)
        if hasattr(client, "stop"):
            await client.stop()
        raise KafkaAccessError(problem or str(exc)) from exc
