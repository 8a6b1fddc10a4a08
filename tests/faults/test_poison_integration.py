"""Poison input through a real worker on the real stack: it becomes a dead letter with its reason,
is counted, and everything around it is stored.

* A batch from device ``"bad\\u0000dev"`` (key equal to the id; PostgreSQL cannot store a NUL in
  text) ahead of batches from 20 good devices: the NUL id is refused by input validation, and
  every good device's anomalies and local models reach the database.
* Records on an output topic that the sink cannot store, among a thousand good ones: an anomaly
  whose label does not fit an integer column (the database refused it: validation did not look
  at labels) and one whose timestamp lies past the year 9999 in UTC (turning it into a row raised
  OverflowError, which stopped the sink on that batch for good). Both are dead letters with their
  reasons; the thousand, and what follows them, are stored.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import create_engine

from flead_app.io.db.schema import anomalies, local_models
from flead_app.models import Anomaly, encode_batch, format_timestamp
from flead_app.settings import load_settings
from flead_app.worker import WorkerProcess
from tests.agents.test_pipeline_integration import (
    DESCRIPTION_RULES,
    consume_all,
    db_count,
    expected_anomalies,
    make_fleet,
    produce,
    wait_for,
)

pytestmark = pytest.mark.integration

BAD_ID = "bad\x00dev"
GOOD_DEVICES, PER_DEVICE = 20, 100
GOOD_ROWS = 1000


async def _send(bootstrap, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, value, key=key) for key, value in messages])
    finally:
        await producer.stop()


def _anomaly(run: str, i: int, **kw) -> bytes:
    record = Anomaly(
        device_id=f"{run}-sink{i % 40}", partition=0, broker_id=1, value=float(i), z_score=4.0, severity="critical",
        timestamp=format_timestamp(1_762_000_000.0 + i), detected_at=format_timestamp(1_762_000_001.0 + i), label=1,
    )  # fmt: skip
    return orjson.dumps({**record.to_dict(), **kw})


def test_poison_input_and_poison_rows_become_dead_letters_and_nothing_else_is_lost(pipeline_env, monkeypatch):
    env = {**pipeline_env, **DESCRIPTION_RULES, "FLEAD_TRAIN_INTERVAL_S": "3600", "FLEAD_FEDAVG_BUFFER": "10"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    run, boot = settings.app_id, settings.bootstrap_servers
    fleet = make_fleet(run, devices=GOOD_DEVICES, per_device=PER_DEVICE, seed=21)
    stamps = [format_timestamp(1_762_000_000.0 + i) for i in range(10)]
    bad_batch = encode_batch(BAD_ID, stamps, [1.0] * 10, [0] * 10)
    assert b"bad\\u0000dev" in bad_batch  # the id travels as JSON's \u0000 escape
    poison_label = _anomaly(run, GOOD_ROWS, label=2**31)
    poison_time = _anomaly(run, GOOD_ROWS + 1, timestamp="9999-12-31T23:00:00-13:00")
    good = [_anomaly(run, i) for i in range(GOOD_ROWS)]
    rows = good[:400] + [poison_label] + good[400:700] + [poison_time] + good[700:]

    worker = WorkerProcess(settings, env=env).start()
    try:
        asyncio.run(_send(boot, settings.topic_readings, [(BAD_ID.encode(), bad_batch)]))
        asyncio.run(produce(boot, settings.topic_readings, fleet, set(fleet), []))
        asyncio.run(_send(boot, settings.topic_anomalies, [(b"sink-test", v) for v in rows]))
        total = GOOD_DEVICES * PER_DEVICE

        def stats():
            return worker.stats()

        wait_for(lambda: stats()["detector"].get("readings", 0) == total, 120, "every good reading", stats)
        assert stats()["detector"]["dead_letters"] == 1

        engine = create_engine(settings.db_url)
        want = expected_anomalies(fleet)
        rounds = GOOD_DEVICES * (PER_DEVICE // 50)
        wait_for(lambda: db_count(engine, local_models, run) == rounds, 120, "every good device's local models")
        wait_for(lambda: db_count(engine, anomalies, run) == len(want) + GOOD_ROWS, 120, "every good anomaly", stats)
        assert stats()["sink"]["rows_dead_lettered"] == 2

        letters = [orjson.loads(v) for v in asyncio.run(consume_all(boot, settings.topic_dead_letter, 3))]
        by_topic = {}
        for letter in letters:
            by_topic.setdefault(letter["source_topic"], []).append(letter)
        (nul,) = by_topic[settings.topic_readings]
        assert nul["key"] == BAD_ID
        assert nul["reason"] == "device_id contains a control or unencodable character (U+0000)"
        reasons = sorted(letter["reason"] for letter in by_topic[settings.topic_anomalies])
        assert len(reasons) == 2, reasons
        assert reasons[0].startswith("label must be 0, 1 or null") and "2147483648" in reasons[0]
        assert reasons[1].startswith("timestamp out of range in UTC")
        assert worker.proc.poll() is None
        # exactly once: no anomaly or local model stored twice (waiting a moment for stragglers)
        assert db_count(engine, local_models, run) == rounds
        assert db_count(engine, anomalies, run) == len(want) + GOOD_ROWS
    finally:
        worker.stop()
