"""One device, one state, whatever the producer's partitioner.

A real librdkafka producer (confluent-kafka) with its default partitioner (crc32 of the key)
puts a device's readings on another partition than the Java client's murmur2, which the
simulator uses. The worker moves such readings to the device's own partition before they touch
state, so the device keeps one row and every reading counts once.
"""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import Producer

from flead_app.io import kafka
from flead_app.models import Reading
from flead_app.settings import load_settings
from flead_app.worker import WorkerProcess, fetch_json
from tests.agents.test_pipeline_integration import wait_for

pytestmark = pytest.mark.integration


def librdkafka_produce(settings, device: str, readings: list[Reading], partitioner: str) -> set[int]:
    """Produce with librdkafka's own client and partitioner; the partitions it chose."""
    chosen: set[int] = set()
    producer = Producer(
        {"bootstrap.servers": ",".join(settings.bootstrap_servers), "partitioner": partitioner, "acks": "all"}
    )

    def done(err, msg):  # noqa: ANN001 - librdkafka's callback
        assert err is None, err
        chosen.add(msg.partition())

    for r in readings:
        producer.produce(settings.topic_readings, value=r.to_json(), key=device.encode(), on_delivery=done)
    assert producer.flush(30) == 0
    return chosen


def test_readings_from_any_partitioner_reach_one_device_row(pipeline_env, monkeypatch):
    for k, v in pipeline_env.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    device = "interop_dev_1"
    first = [Reading(device, f"2025-11-07T00:{i // 60:02d}:{i % 60:02d}.000Z", 20.0 + (i % 7) * 0.1, 0)
             for i in range(80)]  # fmt: skip
    crc = librdkafka_produce(settings, device, first[:40], "consistent_random")  # librdkafka's default
    java = librdkafka_produce(settings, device, first[40:], "murmur2_random")  # the Java client's rule
    assert len(crc) == len(java) == 1 and crc != java, "the two partitioners must disagree for this test"
    home = asyncio.run(_home(settings, device))
    assert java == {home}
    worker = WorkerProcess(settings, env=pipeline_env, name="interop").start()
    try:
        wait_for(lambda: worker.stats()["detector"].get("readings", 0) >= 80, 120, "every reading applied")
        stats = worker.stats()["detector"]
        assert stats["readings"] == 80 and stats["misplaced_forwarded"] == 40
        shown = fetch_json(f"{worker.url}/flead/device/{device}/")
        assert shown["found"] and shown["readings"] == 80  # one row, each reading once
    finally:
        worker.stop()


async def _home(settings, device: str) -> int:
    from aiokafka.partitioner import DefaultPartitioner

    reader = kafka.consumer(settings)
    await reader.start()
    try:
        parts = sorted(p.partition for p in await kafka.assign_all_partitions(reader, settings.topic_readings))
    finally:
        await reader.stop()
    return DefaultPartitioner()(device.encode(), parts, parts)
