"""A broker of the real 4-broker cluster is SIGKILLed mid-stream: nothing acknowledged is lost.

Keyed messages go to a fresh topic (8 partitions, replication 3, min.insync.replicas 2)
through an idempotent ``acks=all`` producer. Mid-way the broker that leads the most
partitions is killed with SIGKILL; producing goes on. Every acknowledged message must then be
consumed exactly once, in order per key. The broker is restarted and must rejoin the ISR of
every partition. The cluster is left as it was found, also when the test fails.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict

import pytest

from flead_app.stack.config import TopicPlan
from flead_app.stack.kafka import any_metadata, run_async

pytestmark = [pytest.mark.integration, pytest.mark.cluster4]

KEYS = [f"device-{i:03d}" for i in range(32)]
BATCHES = 40
PER_BATCH = 100
KILL_AFTER_BATCH = 12
TEST_TIMEOUT_S = 240


def partitions(cluster, topic):
    md = run_async(any_metadata(cluster.addresses(), [topic]))
    assert md is not None, "no broker answers"
    (t,) = md["topics"]
    assert t["error_code"] == 0, t
    return t["partitions"]


async def produce(cluster, topic, kill):
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=cluster.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        request_timeout_ms=40000,
        retry_backoff_ms=200,
    )
    await producer.start()
    futures = []
    seq = Counter()
    try:
        for batch in range(BATCHES):
            if batch == KILL_AFTER_BATCH:
                kill()
            for _ in range(PER_BATCH):
                key = KEYS[len(futures) % len(KEYS)]
                value = f"{key}:{seq[key]}".encode()
                seq[key] += 1
                futures.append(((key, seq[key] - 1), await producer.send(topic, value, key=key.encode())))
            await asyncio.sleep(0.15)  # spread the stream over a few seconds around the kill
        results = await asyncio.gather(*(f for _, f in futures), return_exceptions=True)
    finally:
        await producer.stop()
    acked, failed = [], []
    for (ident, _), res in zip(futures, results, strict=True):
        (failed if isinstance(res, BaseException) else acked).append(ident)
    return acked, failed, [r for r in results if isinstance(r, BaseException)][:3]


async def consume_all(cluster, topic, timeout):
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=cluster.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not tps:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        got: dict[str, list[int]] = defaultdict(list)
        deadline = time.monotonic() + timeout

        async def behind() -> bool:
            for tp in tps:
                if await consumer.position(tp) < end[tp]:
                    return True
            return False

        while await behind():
            assert time.monotonic() < deadline, "consuming the test topic timed out"
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batch.values():
                for r in records:
                    key, n = r.value.decode().rsplit(":", 1)
                    assert r.key.decode() == key
                    got[key].append(int(n))
        return got, sum(end.values())
    finally:
        await consumer.stop()


def test_sigkill_a_leader_broker_mid_stream_loses_nothing(cluster4):
    started = time.monotonic()
    topic = f"flead-test-fault-{uuid.uuid4().hex[:8]}"
    cluster4.ensure_topics([TopicPlan(topic, 8, 3, {"min.insync.replicas": "2"})])
    parts = partitions(cluster4, topic)
    assert all(len(p["replicas"]) == 3 and len(p["isr"]) == 3 for p in parts)
    leaders = Counter(p["leader"] for p in parts)
    victim = leaders.most_common(1)[0][0]
    quorum_before = cluster4.quorum().get("LeaderId")
    killed_at = {}

    def kill():
        killed_at["t"] = time.monotonic()
        assert cluster4.kill(victim), f"broker {victim} was not running"

    try:
        try:
            acked, failed, errors = asyncio.run(produce(cluster4, topic, kill))
            assert killed_at, "the broker was never killed"
            assert not cluster4.pid(victim)
            # with one of three replicas gone, min.insync 2 still holds: every send is acknowledged
            assert not failed, f"{len(failed)} sends failed, e.g. {errors}"
            got, total = asyncio.run(consume_all(cluster4, topic, timeout=90))

            expected: dict[str, list[int]] = defaultdict(list)
            for key, n in acked:
                expected[key].append(n)
            assert total == len(acked), f"{total} messages in the log, {len(acked)} acknowledged"
            for key in KEYS:
                assert got[key] == expected[key], f"key {key}: delivered {got[key][:20]}... != acknowledged"
            assert sum(len(v) for v in got.values()) == BATCHES * PER_BATCH

            # the partitions the victim led moved to live brokers
            parts = partitions(cluster4, topic)
            assert all(p["leader"] not in (victim, -1) for p in parts)
        finally:
            cluster4.start(victim)
        # back in the ISR of every partition it replicates, within a bound
        deadline = time.monotonic() + 120
        while True:
            parts = partitions(cluster4, topic)
            if all(victim in p["isr"] for p in parts if victim in p["replicas"]):
                break
            assert time.monotonic() < deadline, f"broker {victim} not back in the ISR: {parts}"
            time.sleep(0.5)
        assert cluster4.quorum().get("LeaderId", -1) != -1
    finally:
        cluster4.delete_topics([topic])
    print(
        f"killed broker {victim} (led {leaders[victim]}/8 partitions; quorum leader was {quorum_before}); "
        f"{len(acked)} acknowledged, all consumed once in order; test took {time.monotonic() - started:.1f} s"
    )
    assert time.monotonic() - started < TEST_TIMEOUT_S
