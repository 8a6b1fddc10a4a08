"""``flead stack reset`` empties a pipeline's topics, worker table files and database tables,
and consumer groups then have nothing left to read (no lag that cannot fall)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from sqlalchemy import create_engine, func, select

from flead_app.io import kafka
from flead_app.io.db.schema import anomalies
from flead_app.io.db.store import Database
from flead_app.models import Anomaly, Reading
from flead_app.settings import load_settings
from flead_app.stack.reset import reset

pytestmark = pytest.mark.integration


async def _produce_and_commit(settings, n: int) -> None:
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for i in range(n):
            r = Reading(f"dev{i % 5}", "2025-11-07T00:00:00.000Z", float(i), 0)
            await producer.send(settings.topic_readings, r.to_json(), key=r.device_id.encode())
        await producer.flush()
    finally:
        await producer.stop()
    reader = kafka.consumer(settings, settings.topic_readings, group_id=settings.app_id, auto_offset_reset="earliest")
    await reader.start()
    try:  # a group that has read a little and committed it
        batch = await reader.getmany(timeout_ms=5000, max_records=3)
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
        await reader.commit(offsets)
    finally:
        await reader.stop()


async def _counts(settings) -> dict[str, int]:
    reader = kafka.consumer(settings)
    await reader.start()
    try:
        out = {}
        for topic in settings.pipeline_topics:
            parts = await kafka.assign_all_partitions(reader, topic)
            begin, end = await reader.beginning_offsets(parts), await reader.end_offsets(parts)
            out[topic] = sum(end[tp] - begin[tp] for tp in parts if isinstance(tp, TopicPartition))
        return out
    finally:
        await reader.stop()


def test_reset_empties_topics_and_tables_and_leaves_no_lag(pipeline_env, db_url, monkeypatch):
    for k, v in {**pipeline_env, "FLEAD_DB_URL": db_url}.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    db = Database.from_settings(settings)
    db.init_schema()
    found = Anomaly("dev0", 0, 1, 30.0, 4.2, "critical", "2025-11-07T00:00:00.000Z")
    assert db.insert_anomalies([found]) == 1
    asyncio.run(_produce_and_commit(settings, 40))
    assert asyncio.run(_counts(settings))[settings.topic_readings] == 40
    lag = kafka.pipeline_lags(settings, [settings.topic_readings])
    assert lag[f"{settings.topic_readings} ({settings.app_id})"] == 37  # the group read 3 of 40

    result = reset(settings)

    assert result.records_deleted[settings.topic_readings] == 40
    assert all(n == 0 for n in asyncio.run(_counts(settings)).values())
    assert not any(kafka.pipeline_lags(settings, [settings.topic_readings]).values())
    engine = create_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(anomalies)).scalar_one() == 0
    engine.dispose()
    db.close()


def test_reset_empties_a_compacted_changelog_and_gives_back_its_configuration(stack):
    """Kafka refuses DeleteRecords on a compacted topic (the workers' changelogs): reset lends it
    ``compact,delete`` for the call and restores the topic's own settings afterwards."""
    import uuid

    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from flead_app.stack.reset import truncate_topics

    topic = f"rs-{uuid.uuid4().hex[:8]}-changelog"

    async def go() -> tuple[dict, dict, dict]:
        await kafka.create_topics(stack, [topic], 4, configs={"cleanup.policy": "compact"})
        producer = kafka.producer(stack)
        await producer.start()
        try:
            for i in range(12):
                await producer.send(topic, b"row", key=b"k%d" % i)
            await producer.flush()
        finally:
            await producer.stop()
        first = await truncate_topics(stack, [topic])
        second = await truncate_topics(stack, [topic])
        admin = kafka.admin(stack)
        await admin.start()
        try:
            described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            own = {e["config_names"]: e["config_value"] for r in described[0].to_object()["resources"]
                   for e in r["config_entries"] if e.get("config_source") == 1}  # fmt: skip
            await admin.delete_topics([topic])
        finally:
            await admin.close()
        return first, second, own

    first, second, own = asyncio.run(go())
    assert (first[topic], second[topic]) == (12, 0)
    assert own["cleanup.policy"] == "compact"
    if stack.replication_factor >= 3:  # what create_topics set on it is there again
        assert own["min.insync.replicas"] == "2"
