"""Small aiokafka helpers shared by the follower task, commands and tests."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition


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
    bootstrap: list[str], names: list[str], partitions: int, replication: int, **client_options
) -> None:
    """Create topics as ``flead stack up`` does: ``min.insync.replicas=2`` where replication is 3+."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options)
    await admin.start()
    try:
        configs = {"min.insync.replicas": "2"} if replication >= 3 else {}
        await admin.create_topics([NewTopic(n, partitions, replication, topic_configs=configs) for n in names])
    finally:
        await admin.close()


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
