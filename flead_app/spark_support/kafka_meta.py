"""Which broker leads each partition of a topic, asked once in the Spark driver with aiokafka.

Spark's Kafka source reports a record's partition, not the broker that served it; the
partition's current leader is what "per broker" means in our analytics (docs/spark.md).
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from flead_app.settings import Settings, kafka_client_options


async def _leaders(settings: Settings, topic: str, timeout_s: float) -> dict[int, int]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=int(timeout_s * 1000),
        **kafka_client_options(settings),
    )
    await asyncio.wait_for(consumer.start(), timeout_s)
    try:
        cluster = await asyncio.wait_for(consumer._client.fetch_all_metadata(), timeout_s)  # noqa: SLF001
        out: dict[int, int] = {}
        for p in cluster.partitions_for_topic(topic) or ():
            leader = cluster.leader_for_partition(TopicPartition(topic, p))
            out[int(p)] = -1 if leader is None else int(leader)
        return out
    finally:
        await consumer.stop()


def partition_leaders(settings: Settings, topic: str, timeout_s: float = 30.0) -> dict[int, int]:
    """{partition: leader broker id} (-1 while a partition has no leader)."""
    return asyncio.run(_leaders(settings, topic, timeout_s))
