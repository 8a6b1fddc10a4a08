"""The simulator's pure parts: wire encoding, pacing, the partition rule, message sources."""

from __future__ import annotations

import numpy as np
import pytest

from flead_app.fleet import Fleet, Readings
from flead_app.models import Reading, encode_batch, format_timestamp, parse_readings
from flead_app.replay import load_csv
from flead_app.simulate import (
    FleetSource,
    ReplaySource,
    TokenBucket,
    encode_messages,
    format_timestamps,
    partition_of,
)

T0 = 1_762_528_951.0


def test_timestamps_match_the_models_format():
    stamps = np.array([0.0, T0, T0 + 0.001, T0 + 0.9995, 1_372_896_000.25, 4_102_444_799.999])
    assert format_timestamps(stamps) == [format_timestamp(float(t)) for t in stamps]
    assert format_timestamps(np.array([T0]))[0] == "2025-11-07T15:22:31.000Z"
    random = np.random.default_rng(1).uniform(1e9, 2e9, 2000)  # microsecond fractions, cut like datetime
    assert format_timestamps(random) == [format_timestamp(float(t)) for t in random]


def readings(devices, values, labels) -> Readings:
    n = len(values)
    return Readings(
        np.array(devices, np.int32), T0 + np.arange(n), np.array(values, float), np.array(labels, np.int8),
        np.zeros(n, np.int8),
    )  # fmt: skip


def test_single_messages_are_exactly_reading_to_json():
    ids = ["device_0", "device_1"]
    r = readings([0, 1, 0], [1.5, -2.25, 3.0], [0, 1, -1])
    devices, values = encode_messages(ids, r, np.arange(3), single=True)
    assert devices == [0, 1, 0]
    expected = [
        Reading("device_0", format_timestamp(T0), 1.5, 0).to_json(),
        Reading("device_1", format_timestamp(T0 + 1), -2.25, 1).to_json(),
        Reading("device_0", format_timestamp(T0 + 2), 3.0, None).to_json(),
    ]
    assert values == expected
    parsed = parse_readings(values[2], key=b"device_0")
    assert parsed.labels.tolist() == [-1] and parsed.timestamps.tolist() == [T0 + 2]


def test_batch_messages_are_exactly_encode_batch():
    ids = ["a", "b"]
    r = readings([0, 0, 0, 1, 1], [1, 2, 3, 4, 5], [0, 1, 0, 0, 0])
    devices, values = encode_messages(ids, r, np.array([0, 2, 3]), single=False)
    assert devices == [0, 0, 1]
    stamps = [format_timestamp(T0 + i) for i in range(5)]
    assert values[0] == encode_batch("a", stamps[0:2], [1.0, 2.0], [0, 1])
    assert values[1] == encode_batch("a", stamps[2:3], [3.0], [0])
    assert values[2] == encode_batch("b", stamps[3:5], [4.0, 5.0], [0, 0])
    batch = parse_readings(values[2], key=b"b")
    assert batch.values.tolist() == [4.0, 5.0] and batch.labels.tolist() == [0, 0]
    with pytest.raises(ValueError):
        encode_messages(ids, r, np.array([0, 2, 3]), single=True)


def test_token_bucket_keeps_the_rate_whatever_the_sleeps():
    rng = np.random.default_rng(0)
    now = 100.0
    bucket = TokenBucket(rate=500.0, capacity=500.0, now=now)
    sent = 0
    for _ in range(2000):
        now += float(rng.uniform(0.0, 0.02))  # irregular steps, as a busy event loop gives
        take = int(bucket.available(now)) // 10 * 10
        bucket.consume(take)
        sent += take
    elapsed = now - 100.0
    assert abs(sent - 500.0 * elapsed) <= 10, (sent, 500.0 * elapsed)
    assert bucket.wait_time(10, now) <= 10 / 500.0


def test_token_bucket_caps_bursts_after_a_stall():
    bucket = TokenBucket(rate=100.0, capacity=50.0, now=0.0)
    assert bucket.available(60.0) == 50.0


def test_partition_is_kafkas_murmur2():
    # signed murmur2 values from Kafka's own UtilsTest.testMurmur2
    vectors = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536, b"abc": 479470107}
    for key, signed in vectors.items():
        for n in (1, 4, 8, 12):
            assert partition_of(key, list(range(n))) == (signed & 0x7FFFFFFF) % n


def test_fleet_source_gives_whole_messages_or_exactly_the_budget():
    src = FleetSource(Fleet(5, seed=0), batch=4, interval_s=1.0)
    r, starts = src.take(23, now=T0, exact=False)
    assert len(r) == 20 and starts.tolist() == [0, 4, 8, 12, 16]
    assert r.device.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    r, starts = src.take(11, now=T0 + 10, exact=True)
    assert len(r) == 11 and starts.tolist() == [0, 4, 8]
    assert r.device.tolist() == [0] * 4 + [1] * 4 + [2] * 3
    r, starts = src.take(3, now=T0 + 20, exact=False)
    assert len(r) == 0


def test_replay_source_respects_message_boundaries(tmp_path):
    lines = ["device_id,timestamp,value,label"] + [f"d{i % 2},2025-01-01 00:00:{i:02d},{i},0" for i in range(9)]
    path = tmp_path / "r.csv"
    path.write_text("\n".join(lines) + "\n")
    src = ReplaySource(load_csv(path), batch=3)
    r, starts = src.take(5, now=0.0, exact=False)
    assert r.value.tolist() == [0, 2, 4] and starts.tolist() == [0]
    r, starts = src.take(4, now=0.0, exact=True)
    assert r.value.tolist() == [1, 3, 5, 6] and starts.tolist() == [0, 3]
    r, starts = src.take(100, now=0.0, exact=False)
    assert r.value.tolist() == [8, 7]
    assert len(src.take(100, now=0.0, exact=False)[0]) == 0


def test_a_site_sends_only_its_share_of_the_fleet(tmp_path):
    from flead_app.algorithms.sites import site_of
    from flead_app.simulate import site_devices

    fleet = Fleet(40, seed=0)
    mine = site_devices(fleet.device_ids, (2, 3))
    assert mine.tolist() == [i for i, d in enumerate(fleet.device_ids) if site_of(d, 3) == 2] and 0 < len(mine) < 40
    src = FleetSource(fleet, batch=2, interval_s=1.0, devices=mine)
    r, starts = src.take(4 * len(mine), now=T0, exact=False)
    assert set(r.device.tolist()) == set(mine.tolist()) and len(starts) == 2 * len(mine)
    lines = ["device_id,timestamp,value,label"] + [f"device_{i % 6},2025-01-01 00:00:{i:02d},{i},0" for i in range(12)]
    path = tmp_path / "r.csv"
    path.write_text("\n".join(lines) + "\n")
    data = load_csv(path)
    keep = site_devices(data.device_ids, (2, 2))  # device_0..3 belong to site 2 of 2, device_4 and 5 to site 1
    replay = ReplaySource(data, batch=2, devices=keep)
    r, starts = replay.take(100, now=0.0, exact=False)
    ids = [data.device_ids[d] for d in r.device.tolist()]
    assert ids and all(site_of(d, 2) == 2 for d in ids) and len(r) == 2 * len(keep) == 8
    bounds = [*starts.tolist(), len(r)]
    assert all(len(set(r.device[a:b].tolist())) == 1 for a, b in zip(bounds, bounds[1:], strict=False))


def test_a_send_failing_mid_chunk_counts_the_messages_handed_over_before_it(monkeypatch):
    """A chunk's messages go to the producer one by one; when one is refused outright (no leader
    within the timeout) the simulator stops, and the ones before it, which the producer took and
    delivers, count as sent: the chaos run checks the topic's readings against this count."""
    import asyncio

    from aiokafka.errors import KafkaTimeoutError

    from flead_app import simulate as sim
    from flead_app.io import kafka
    from flead_app.settings import load_settings

    taken: list[bytes] = []

    class Cluster:
        def partitions_for_topic(self, topic):
            return {0, 1, 2, 3}

        def leader_for_partition(self, tp):
            return 1

    class Producer:
        class client:  # noqa: N801 - aiokafka's attribute
            cluster = Cluster()

            @staticmethod
            async def fetch_all_metadata():
                return Cluster()

        async def start(self):
            pass

        async def stop(self):
            pass

        async def flush(self):
            pass

        async def partitions_for(self, topic):
            return {0, 1, 2, 3}

        async def send(self, topic, value, key=None, partition=None):
            if len(taken) == 7:
                raise KafkaTimeoutError()
            taken.append(value)
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            return fut

    monkeypatch.setattr(kafka, "producer", lambda *a, **k: Producer())
    opts = sim.SimOptions(devices=20, rate=0.0, batch=5, seed=3, count=1000, progress_every_s=3600.0)
    summary = asyncio.run(sim.simulate(load_settings(), opts, progress=None))
    assert summary.stopped_by.startswith("error: KafkaTimeoutError")
    assert summary.messages == len(taken) == 7
    assert summary.readings == sum(len(parse_readings(v)) for v in taken)
    assert summary.acked_messages == 7 and summary.failed_messages == 0
