"""Small aiokafka helpers shared by the follower task, commands and tests."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

TOPIC_ALREADY_EXISTS = 36  # Kafka error code


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


async def create_topics(
    bootstrap: list[str],
    names: list[str],
    partitions: int,
    replication: int,
    configs: dict[str, str] | None = None,
    **client_options,
) -> list[str]:
    """Create topics as ``flead stack up`` does (``min.insync.replicas=2`` where replication is
    3+); topics that exist already are left alone. Returns the names created now."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic_configs = {**({"min.insync.replicas": "2"} if replication >= 3 else {}), **(configs or {})}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options)
    await admin.start()
    try:
        new = [NewTopic(n, partitions, replication, topic_configs=topic_configs) for n in names]
        resp = await admin.create_topics(new)
    finally:
        await admin.close()
    created = []
    for item in resp.to_object()["topic_errors"]:
        if item["error_code"] == 0:
            created.append(item["topic"])
        elif item["error_code"] != TOPIC_ALREADY_EXISTS:
            raise RuntimeError(f"creating topic {item['topic']} failed: error {item['error_code']} "
                               f"{item.get('error_message') or ''}")  # fmt: skip
    return created


async def wait_topics_known(bootstrap: list[str], names: list[str], partitions: int, timeout: float = 60.0) -> None:
    """Wait until every bootstrap broker's metadata has ``names``, each with ``partitions``
    partitions that have a leader (a new topic reaches each broker's cache at its own pace)."""
    from flead_app.stack.kafka import broker_metadata

    deadline = time.monotonic() + timeout
    missing: list[str] = []
    while True:
        missing = []
        for server in bootstrap:
            host, port = server.rsplit(":", 1)
            try:
                md = await broker_metadata(host, int(port), names)
            except Exception as exc:  # noqa: BLE001 - a broker that is down does not block the start
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


def event_time(msg) -> float:  # noqa: ANN001 - a faust Message
    """The record's Kafka timestamp in epoch seconds (wall clock if the record has none)."""
    ts = msg.timestamp
    return float(ts) if ts and ts > 0 else time.time()


async def consumer_lag(bootstrap: list[str], group: str, topic: str, **client_options) -> int:
    """Messages of ``topic`` the consumer group has not committed yet (end offset - committed)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **client_options)
    await admin.start()
    await consumer.start()
    try:
        parts = await assign_all_partitions(consumer, topic)
        ends = await consumer.end_offsets(parts)
        committed = await admin.list_consumer_group_offsets(group, partitions=parts)
        lag = 0
        for tp in parts:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lag += max(0, ends[tp] - done)
        return lag
    finally:
        await consumer.stop()
        await admin.close()


def consuming_groups(settings, topic: str) -> list[str]:  # noqa: ANN001 - flead_app.settings.Settings
    """The consumer groups that read ``topic``: the Faust agents' and the database sink's."""
    faust_topics = {settings.topic_readings, settings.topic_local_updates, settings.topic_global_updates}
    sink_topics = {settings.topic_anomalies, settings.topic_local_updates, settings.topic_global_updates}
    return [g for g, ts in ((settings.app_id, faust_topics), (settings.sink_group, sink_topics)) if topic in ts]


def pipeline_lags(settings, topics: list[str]) -> dict[str, int]:  # noqa: ANN001 - Settings
    """Uncommitted records per ``"topic (group)"``, for every group that reads each topic."""
    return {
        f"{t} ({group})": asyncio.run(consumer_lag(settings.bootstrap_servers, group, t))
        for t in topics
        for group in consuming_groups(settings, t)
    }
