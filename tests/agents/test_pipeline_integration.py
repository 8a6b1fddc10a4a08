"""A real worker on the real stack: readings in; anomalies, local updates, global models,
database rows and dead letters out, compared with what the pure algorithms predict."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import create_engine, func, select

from flead_app.algorithms.detection import DetectorState, score_batch
from flead_app.io.db.schema import anomalies, federated_models, local_models
from flead_app.io.kafka import assign_all_partitions
from flead_app.models import Reading, encode_batch, format_timestamp
from flead_app.settings import load_settings
from flead_app.worker import WorkerProcess

pytestmark = pytest.mark.integration

BAD_MESSAGES = [
    b"{not json",
    b'{"device_id": "x"}',
    b'{"device_id": "x", "timestamp": "2025-11-07T00:00:00Z", "value": "hot"}',
    b'{"device_id": "x", "timestamp": "2025-11-07T00:00:00Z", "value": 1e999}',
    b'{"device_id": "x", "timestamp": "2025-11-07T00:00:00Z", "value": 1, "extra": 2}',
    b"[1, 2, 3]",
]


#: these tests predict every anomaly with the description's z-rule (``expected_anomalies``) and
#: every device's rounds: the z-rule without a refractory period, and no held-out devices (the
#: product's defaults, the model rule at a 1% budget and 20% of devices held out by a hash of
#: their ids, are tested in tests/agents/test_detector_agent.py and tests/algorithms)
DESCRIPTION_RULES = {"FLEAD_ALARM_RULE": "zrule", "FLEAD_REFRACTORY": "0", "FLEAD_HOLDOUT_DEVICE_PERCENT": "0"}


def make_fleet(run: str, devices: int, per_device: int, seed: int = 7) -> dict[str, list[Reading]]:
    rng = np.random.default_rng(seed)
    t0 = 1_762_000_000.0
    fleet = {}
    for d in range(devices):
        level, noise = rng.uniform(10, 100), rng.uniform(0.5, 3)
        values = rng.normal(level, noise, per_device)
        labels = np.zeros(per_device, dtype=int)
        for spike in rng.choice(np.arange(20, per_device), size=4, replace=False):
            values[spike] += noise * rng.choice([-8, 8])
            labels[spike] = 1
        device = f"{run}-dev{d}"
        fleet[device] = [
            Reading(device, format_timestamp(t0 + i), float(values[i]), int(labels[i])) for i in range(per_device)
        ]
    return fleet


def expected_anomalies(fleet: dict[str, list[Reading]], threshold: float = 2.5) -> set[tuple[str, float]]:
    out = set()
    for device, readings in fleet.items():
        values = np.array([r.value for r in readings])
        scored = score_batch(DetectorState(), values, 10)
        for i in np.flatnonzero(scored.scored & (np.abs(scored.z) > threshold)):
            out.add((device, readings[i].value))
    return out


async def produce(bootstrap, topic: str, fleet: dict[str, list[Reading]], batched: set[str], bad: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = []
        for device, readings in fleet.items():
            key = device.encode()
            if device in batched:
                for s in range(0, len(readings), 10):
                    chunk = readings[s : s + 10]
                    value = encode_batch(
                        device, [r.timestamp for r in chunk], [r.value for r in chunk], [r.label for r in chunk]
                    )
                    futures.append(await producer.send(topic, value, key=key))
            else:
                for r in readings:
                    futures.append(await producer.send(topic, r.to_json(), key=key))
        for raw in bad:
            futures.append(await producer.send(topic, raw, key=b"x"))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def consume_all(bootstrap, topic: str, expect: int, timeout: float = 90.0) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        await assign_all_partitions(consumer, topic)
        await consumer.seek_to_beginning()
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(out) < expect and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                out.extend(r.value for r in records)
        # give stragglers (unexpected extras) a moment to show up
        batches = await consumer.getmany(timeout_ms=1500)
        for records in batches.values():
            out.extend(r.value for r in records)
        return out
    finally:
        await consumer.stop()


def wait_for(predicate, timeout: float, what: str, describe=None):
    """Poll ``predicate`` until truthy; on timeout, say what ``describe()`` saw last."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.5)
    seen = describe() if describe is not None else last
    raise AssertionError(f"timed out waiting for {what}; last seen {seen!r}")


def device_readings(url: str, devices) -> dict[str, int]:  # noqa: ANN001 - any iterable of device ids
    """Each device's reading count as the worker at ``url`` serves it (-1 where it did not answer)."""
    from flead_app.worker import fetch_json

    out = {}
    for d in devices:
        try:
            out[d] = fetch_json(f"{url}/flead/device/{d}/", timeout=10).get("readings", 0)
        except OSError:
            out[d] = -1
    return out


def db_count(engine, table, run: str) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(table.c.device_id.like(f"{run}-%"))).scalar()


def stored_global_models(engine, models: list[dict]) -> int:
    """How many of these global models (matched on version and creation time) the sink stored."""
    with engine.connect() as conn:
        rows = set(conn.execute(select(federated_models.c.global_version, federated_models.c.created_at)).all())
    keys = {(m["global_version"], datetime.fromisoformat(m["timestamp"])) for m in models}
    return len(keys & rows)


def test_real_worker_end_to_end(pipeline_env, monkeypatch):
    env = {**pipeline_env, **DESCRIPTION_RULES, "FLEAD_TRAIN_INTERVAL_S": "3600", "FLEAD_FEDAVG_BUFFER": "4"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    run = settings.app_id
    fleet = make_fleet(run, devices=4, per_device=120)
    readings = sum(len(r) for r in fleet.values())
    worker = WorkerProcess(settings, env=env).start()
    try:
        asyncio.run(produce(settings.bootstrap_servers, settings.topic_readings, fleet, {f"{run}-dev3"}, BAD_MESSAGES))
        stats = wait_for(
            lambda: (
                (s := worker.stats())["detector"].get("readings", 0) == readings
                and s["detector"].get("dead_letters", 0) >= len(BAD_MESSAGES)
                and s
            ),
            120,
            "all readings and every bad message",  # bad messages can sit behind the last reading of a partition
        )
        assert stats["detector"].get("dead_letters", 0) == len(BAD_MESSAGES)

        boot = settings.bootstrap_servers
        found = {
            (a["device_id"], a["value"])
            for a in map(
                orjson.loads, asyncio.run(consume_all(boot, settings.topic_anomalies, len(expected_anomalies(fleet))))
            )
        }
        assert found == expected_anomalies(fleet)

        updates = [orjson.loads(v) for v in asyncio.run(consume_all(boot, settings.topic_local_updates, 8))]
        updates = [u for u in updates if "control" not in u]
        # 120 readings per device: a round after 50 and after 100 readings
        assert sorted((u["device_id"], u["model_version"]) for u in updates) == sorted(
            (d, v) for d in fleet for v in (1, 2)
        )
        models = [orjson.loads(v) for v in asyncio.run(consume_all(boot, settings.topic_global_updates, 2))]
        assert [m["global_version"] for m in models] == [1, 2]
        assert all(m["num_updates"] == 4 for m in models)

        dead = asyncio.run(consume_all(boot, settings.topic_dead_letter, len(BAD_MESSAGES)))
        letters = [orjson.loads(v) for v in dead]
        assert sorted(letter["payload"] for letter in letters) == sorted(b.decode() for b in BAD_MESSAGES)

        engine = create_engine(settings.db_url)
        wait_for(lambda: db_count(engine, local_models, run) == 8, 60, "local_models rows")
        wait_for(lambda: db_count(engine, anomalies, run) == len(found), 60, "anomalies rows")
        wait_for(lambda: stored_global_models(engine, models) == 2, 60, "federated_models rows")
    finally:
        worker.stop()
