"""``flead simulate`` against the real Kafka stack: keys, wire format, partitions, brokers, pacing, CSV.

The stack comes from ``load_settings()`` (scripts/test.sh starts it); each test writes to a
fresh topic of its own and reads everything back with a plain aiokafka consumer.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from flead_app.io.kafka import assign_all_partitions, kafka_client_options
from flead_app.models import parse_readings
from flead_app.settings import load_settings
from flead_app.simulate import SimOptions, partition_of, simulate
from tests.conftest import create_topics, unique

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kafka():
    s = load_settings()
    host, port = s.bootstrap_servers[0].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as err:
        pytest.fail(f"no Kafka broker at {s.kafka_bootstrap} ({err}): run `flead stack up` (scripts/test.sh does)")
    return s


@pytest.fixture
def topic(kafka):
    name = unique("sim")
    create_topics([name])
    return name


async def _consume(settings, topic: str, expect: int, timeout: float = 60.0):
    """Every record of ``topic`` (at least ``expect``, or what came before the deadline), and the leaders."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kafka_client_options(settings),
    )
    await consumer.start()
    try:
        parts = await assign_all_partitions(consumer, topic)
        await consumer.seek_to_beginning()
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < expect and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(records)
        for records in (await consumer.getmany(timeout_ms=1000)).values():  # extras would show here
            out.extend(records)
        cluster = consumer._client.cluster  # noqa: SLF001 - the leaders, as the producer saw them
        leaders = {tp.partition: cluster.leader_for_partition(TopicPartition(topic, tp.partition)) for tp in parts}
        return out, leaders
    finally:
        await consumer.stop()


def consume(settings, topic: str, expect: int):
    return asyncio.run(_consume(settings, topic, expect))


def run_cli(args: list[str], topic: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLEAD_TOPIC_READINGS": topic}
    return subprocess.run(
        [sys.executable, "-m", "flead_app.cli", "simulate", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_cli_single_readings_keyed_by_device_on_the_default_partition(kafka, topic):
    args = ["--count", "1200", "--devices", "60", "--rate", "0", "--batch", "1", "--seed", "3", "--json"]
    proc = run_cli(args, topic)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["topic"] == topic
    assert summary["readings"] == summary["messages"] == summary["acked_messages"] == 1200
    assert summary["failed_messages"] == 0

    records, leaders = consume(kafka, topic, 1200)
    assert len(records) == 1200
    partitions = sorted(leaders)
    by_device: dict[str, list[float]] = defaultdict(list)
    per_partition: Counter[int] = Counter()
    labels: Counter[int] = Counter()
    for rec in records:
        batch = parse_readings(rec.value, key=rec.key)  # raises if the key differs from device_id
        assert rec.key == batch.device_id.encode()
        assert batch.device_id.startswith("device_") and len(batch) == 1
        assert b'"timestamp"' in rec.value and b"Z" in rec.value
        assert rec.partition == partition_of(rec.key, partitions)
        by_device[batch.device_id].extend(batch.timestamps.tolist())
        per_partition[rec.partition] += 1
        labels[int(batch.labels[0])] += 1
    assert len(by_device) == 60 and {len(v) for v in by_device.values()} == {20}
    for stamps in by_device.values():  # one partition per device, so Kafka keeps each device's order
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert set(labels) <= {0, 1}
    assert summary["per_partition"] == {str(p): per_partition[p] for p in partitions}
    # the per-broker counts are the partition leaders' share
    per_broker: Counter[str] = Counter()
    for p, n in per_partition.items():
        per_broker[f"broker {leaders[p]}"] += n
    assert {b: c["readings"] for b, c in summary["per_broker"].items()} == dict(per_broker)
    assert sum(c["devices"] for c in summary["per_broker"].values()) == 60


def test_api_batches_with_a_partial_last_message(kafka, topic):
    opts = SimOptions(devices=25, rate=0, batch=7, count=500, seed=1, topic=topic)
    summary = asyncio.run(simulate(kafka, opts, progress=None))
    assert summary.readings == 500 and summary.messages == 72 and summary.failed_messages == 0
    records, _ = consume(kafka, topic, 72)
    assert len(records) == 72
    sizes = Counter()
    total = 0
    anomalies = 0
    for rec in records:
        assert b'"values"' in rec.value  # batch format, even for the short last message
        batch = parse_readings(rec.value, key=rec.key)
        sizes[len(batch)] += 1
        total += len(batch)
        anomalies += int((batch.labels == 1).sum())
        assert set(batch.labels.tolist()) <= {0, 1}
    assert total == 500 and sizes == Counter({7: 71, 3: 1})
    assert anomalies == summary.anomaly_readings


def test_rate_is_paced_and_progress_reported(kafka, topic):
    out = io.StringIO()
    opts = SimOptions(devices=100, rate=6000, batch=1, seconds=3.0, topic=topic, progress_every_s=1.0)
    summary = asyncio.run(simulate(kafka, opts, progress=out))
    assert 200 <= summary.readings <= 301, summary.readings  # 100 readings/s for 3 s, never ahead
    assert summary.stopped_by == "--seconds"
    lines = [line for line in out.getvalue().splitlines() if "sent" in line]
    assert len(lines) >= 2 and "broker" in lines[-1] and "target 100/s" in lines[-1]


def test_csv_replay_keeps_order_and_naive_times_become_utc(kafka, topic, tmp_path):
    path = tmp_path / "replay.csv"
    path.write_text(
        "device_id,timestamp,value,label\n"
        + "".join(f"pump_{i % 3},2013-07-04 00:{i:02d}:00,{i}.5,{'' if i == 4 else i % 2}\n" for i in range(12))
        + "pump_1,2013-07-03 23:00:00,99,0\n"  # steps back in time: kept in place
    )
    proc = run_cli(["--csv", str(path), "--rate", "0", "--batch", "2", "--json"], topic)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["readings"] == 13 and summary["stopped_by"] == "end of CSV"
    records, _ = consume(kafka, topic, summary["messages"])
    values: dict[str, list[float]] = defaultdict(list)
    for rec in records:
        doc = json.loads(rec.value)
        assert rec.key.decode() == doc["device_id"]
        assert all(t.startswith("2013-07-0") and t.endswith(":00.000Z") for t in doc["timestamps"])
        if doc["device_id"] == "pump_1" and 4.5 in doc["values"]:
            assert doc["labels"][doc["values"].index(4.5)] is None
        values[doc["device_id"]].extend(doc["values"])
    assert values["pump_0"] == [0.5, 3.5, 6.5, 9.5]
    assert values["pump_1"] == [1.5, 4.5, 7.5, 10.5, 99.0]
    assert values["pump_2"] == [2.5, 5.5, 8.5, 11.5]


def test_missing_topic_is_a_clear_error(kafka):
    opts = SimOptions(devices=5, rate=0, batch=1, count=10, topic=unique("absent"), metadata_timeout_s=3.0)
    with pytest.raises(RuntimeError, match="flead stack up"):
        asyncio.run(simulate(kafka, opts, progress=None))
