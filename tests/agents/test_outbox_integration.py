"""A restarted worker finds its device row ahead of the committed offset, with an output the
crashed worker sent but Kafka never acknowledged: it skips the replay and sends that output again.

The state a SIGKILL can leave behind is written here on purpose (the changelog record without
its output), so the path is taken every time instead of when a kill happens to land in the gap.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import create_engine, select

from flead_app.algorithms.detection import NUM_FEATURES
from flead_app.algorithms.device import DeviceState
from flead_app.io.db.schema import local_models
from flead_app.models import FLEET_KEY, LocalModelUpdate, Reading
from flead_app.settings import load_settings
from flead_app.tables.rows import DeviceRow, Position
from flead_app.worker import WorkerProcess, prepare_changelog_topics
from tests.agents.test_pipeline_integration import consume_all, wait_for

pytestmark = pytest.mark.integration


async def crash_leftovers(settings, device: str) -> bytes:
    """One reading applied, its round's update in the row's outbox but not on its topic."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        reading = Reading(device, "2025-11-07T00:00:00.000Z", 20.0, 0)
        where = await producer.send_and_wait(settings.topic_readings, reading.to_json(), key=device.encode())
        update = LocalModelUpdate(
            device_id=device, model_version=7, global_version=0, weights=[0.25] * NUM_FEATURES, bias=-3.0,
            accuracy=1.0, loss=0.1, samples=40, timestamp=reading.timestamp, partition=where.partition,
        )  # fmt: skip
        value = update.to_json()
        entry = (where.offset, settings.topic_local_updates, FLEET_KEY.decode(), value.decode())
        row = DeviceRow(DeviceState(readings=1, model_version=7), Position(where.partition, where.offset, (entry,)))
        changelog = f"{settings.app_id}-device_state-changelog"
        await producer.send_and_wait(changelog, row.to_bytes(), key=device.encode(), partition=where.partition)
        return value
    finally:
        await producer.stop()


def test_restarted_worker_sends_an_unacknowledged_output_again(pipeline_env, monkeypatch):
    for k, v in pipeline_env.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    prepare_changelog_topics(settings)
    device = f"{settings.app_id}-dev0"
    update = asyncio.run(crash_leftovers(settings, device))

    worker = WorkerProcess(settings, env=pipeline_env, name="outbox").start()
    try:
        wait_for(lambda: worker.stats()["detector"].get("outputs_resent", 0) >= 1, 60, "the outbox to be sent")
        stats = worker.stats()
        counters = stats["detector"]
        assert counters.get("replays_skipped") == 1 and counters.get("readings", 0) == 0
        assert stats["outputs_never_acknowledged"] == 0
        raw = asyncio.run(consume_all(settings.bootstrap_servers, settings.topic_local_updates, 1))
        assert raw == [update], "the remembered update, byte for byte, exactly once"
        engine = create_engine(settings.db_url)

        def stored():
            with engine.connect() as conn:
                q = select(local_models.c.model_version).where(local_models.c.device_id == device)
                return conn.execute(q).scalars().all()

        assert wait_for(stored, 60, "the update in the database") == [7]
    finally:
        worker.stop()
