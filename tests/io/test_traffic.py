"""Kafka traffic accounting (pure) and the DescribeLogDirs measurement against the running stack."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from flead_app.io.traffic import (
    DescribeLogDirsRequest,
    DescribeLogDirsRequest_v1,
    DescribeLogDirsResponse_v1,
    bandwidth_saving,
    leader_sizes,
    measure,
    parse_log_dirs,
    sizes_from_directories,
    stack_data_dirs,
    summarize,
)


def test_request_and_response_round_trip_through_the_wire_format():
    req = DescribeLogDirsRequest({"readings": [1, 0]}).build(DescribeLogDirsRequest_v1)
    assert DescribeLogDirsRequest_v1.decode(req.encode()).topics == [("readings", [0, 1])]
    encoded = DescribeLogDirsResponse_v1(
        0,
        [
            (0, "/data/a", [("readings", [(0, 1000, 0, False), (1, 50, 0, False), (1, 70, 0, True)])]),
            (0, "/data/b", [("readings", [(0, 1200, 0, False)])]),  # mid-move: the larger copy counts
            (57, "/data/offline", [("readings", [(2, 999, 0, False)])]),  # offline directory: skipped
        ],
    ).encode()
    sizes = parse_log_dirs(DescribeLogDirsResponse_v1.decode(encoded))
    assert sizes == {("readings", 0): 1200, ("readings", 1): 50}


def test_each_partition_counts_once_at_its_leader():
    replicas = {
        1: {("r", 0): 100, ("r", 1): 200},
        2: {("r", 0): 100, ("r", 1): 190, ("r", 2): 300},
        3: {("r", 2): 310},
    }
    leaders = {("r", 0): 2, ("r", 1): 1, ("r", 2): 4, ("r", 3): 1}
    got = leader_sizes(replicas, leaders)
    assert got[("r", 0)] == (2, 100)
    assert got[("r", 1)] == (1, 200)
    assert got[("r", 2)] == (3, 310)  # leader 4 did not answer: largest replica stands in
    assert got[("r", 3)] == (1, 0)  # nothing reported: an empty partition
    assert sum(size for _, size in got.values()) == 610  # not 1,100: replicas are not added up


def test_summary_and_saving():
    rows = [
        {"topic": "readings", "partition": 0, "broker_id": 1, "bytes": 6000, "messages": 60},
        {"topic": "readings", "partition": 1, "broker_id": 2, "bytes": 4000, "messages": 40},
        {"topic": "local", "partition": 0, "broker_id": 2, "bytes": 500, "messages": 2},
        {"topic": "global", "partition": 0, "broker_id": 1, "bytes": 200, "messages": 1},
        {"topic": "anomalies", "partition": 0, "broker_id": 1, "bytes": 50, "messages": None},
    ]
    s = summarize(rows, "readings", "local", "global")
    assert s["reading_bytes"] == 10_000 and s["model_bytes"] == 700
    assert s["bandwidth_saving"] == pytest.approx(0.93)
    assert s["brokers"][1] == {
        "bytes": 6250,
        "messages": 61,
        "leader_partitions": 3,
        "bytes_by_topic": {"anomalies": 50, "global": 200, "readings": 6000},
    }
    assert s["topics"]["readings"] == {"bytes": 10_000, "messages": 100, "partitions": 2}
    assert bandwidth_saving(0, 10) is None
    assert summarize([], "readings", "local", "global")["bandwidth_saving"] is None


def test_fallback_sums_segment_files_of_the_stack_data_dirs(tmp_path):
    for node, size in ((1, 300), (2, 300)):
        part = tmp_path / "kafka" / f"node-{node}" / "data" / "edge-iiot-stream-3"
        part.mkdir(parents=True)
        (part / "00000000000000000000.log").write_bytes(b"x" * size)
        (part / "00000000000000000000.index").write_bytes(b"i" * 1000)  # not data
        (tmp_path / "kafka" / f"node-{node}" / "data" / "other-0").mkdir()
    dirs = stack_data_dirs({"home": str(tmp_path)})
    assert sorted(dirs) == [1, 2]
    sizes = sizes_from_directories(dirs, ["edge-iiot-stream"])
    assert sizes == {1: {("edge-iiot-stream", 3): 300}, 2: {("edge-iiot-stream", 3): 300}}
    assert stack_data_dirs({}) == {}


# --------------------------------------------------------------------------- integration


async def _produce_and_measure(settings, topic: str, count: int, size: int):
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        rf = settings.replication_factor
        configs = {"min.insync.replicas": "2"} if rf >= 3 else {}
        await admin.create_topics([NewTopic(topic, 4, rf, topic_configs=configs)])
        before = None
        for _ in range(50):  # the new topic's metadata reaches every broker within moments
            before = await measure(settings.bootstrap_servers, [topic], timeout_s=20)
            if len(before.rows) == 4:
                break
            await asyncio.sleep(0.2)
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5)
        await producer.start()
        try:
            payload = b"r" * size
            await asyncio.gather(*[await producer.send(topic, payload, key=b"device_%d" % i) for i in range(count)])
        finally:
            await producer.stop()
        after = await measure(settings.bootstrap_servers, [topic], timeout_s=20)
        cluster = await admin.describe_cluster()
        return before, after, {b["node_id"] for b in cluster["brokers"]}
    finally:
        await admin.delete_topics([topic])
        await admin.close()


@pytest.mark.integration
def test_measured_bytes_grow_by_at_least_what_was_produced(stack, db):
    topic = f"traffic-{uuid.uuid4().hex[:8]}"
    count, size = 300, 1000
    before, after, brokers = asyncio.run(_produce_and_measure(stack, topic, count, size))
    assert before.method == after.method == "describe_log_dirs"
    assert len(before.rows) == len(after.rows) == 4
    assert sorted(r["partition"] for r in after.rows) == [0, 1, 2, 3]  # each partition once
    assert {r["broker_id"] for r in after.rows} <= brokers
    grown = sum(r["bytes"] for r in after.rows) - sum(r["bytes"] for r in before.rows)
    assert grown >= count * size
    assert grown < 1.5 * count * size  # leaders only: replication factor 3 would triple it
    assert sum(r["messages"] for r in after.rows) == count
    # the snapshot is stored and read back as the latest one
    from flead_app.report import latest_snapshot

    assert db.insert_rows("kafka_traffic", after.db_rows()) == 4
    at, rows = latest_snapshot(db)
    assert at == after.measured_at and sum(r["bytes"] for r in rows) == sum(r["bytes"] for r in after.rows)


def test_an_unreachable_cluster_is_reported_not_hung():
    """A refused connection (a real closed port) raises KafkaUnreachable within the timeout."""
    import socket
    import time

    from flead_app.io.traffic import KafkaUnreachable

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(KafkaUnreachable):
        asyncio.run(measure([f"127.0.0.1:{port}"], ["readings"], timeout_s=8))
    assert time.monotonic() - start < 10
