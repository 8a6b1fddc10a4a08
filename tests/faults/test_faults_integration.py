"""Fault tests on real services, bounded in time: a broker killed mid-run, PostgreSQL stopped
for 30 s mid-run, and a flood of bad input. Each runs a real worker on its own topics."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import orjson
import pytest
from sqlalchemy import create_engine, func, select

from flead_app.io.db.schema import anomalies, local_models
from flead_app.settings import load_settings
from flead_app.stack.postgres import installed_versions
from flead_app.worker import WorkerProcess, fetch_json
from tests.agents.test_pipeline_integration import (
    DESCRIPTION_RULES,
    consume_all,
    expected_anomalies,
    make_fleet,
    produce,
    wait_for,
)

pytestmark = pytest.mark.integration


def _configure(pipeline_env, monkeypatch, **extra):
    env = {**pipeline_env, **DESCRIPTION_RULES, "FLEAD_TRAIN_INTERVAL_S": "3600", "FLEAD_FEDAVG_BUFFER": "10", **extra}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env, load_settings()


def _db_count(engine, table, run: str) -> int:
    with engine.connect() as conn:
        q = select(func.count()).select_from(table).where(table.c.device_id.like(f"{run}-%"))
        return conn.execute(q).scalar()


def _readings_applied(worker: WorkerProcess, devices: list[str]) -> int:
    """Readings applied to the device tables: exact, since a replayed message is skipped by offset."""
    total = 0
    for d in devices:
        try:
            total += fetch_json(f"{worker.url}/flead/device/{d}/", timeout=5)["readings"]
        except OSError:
            pass
    return total


def _flead(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "flead_app.cli", "stack", *args], check=True, timeout=300)


@pytest.mark.cluster4
def test_a_broker_killed_mid_run_loses_no_reading_and_no_update(pipeline_env, monkeypatch):
    env, settings = _configure(pipeline_env, monkeypatch)
    assert settings.replication_factor == 3, "this test needs the 4-broker cluster (flead stack up --brokers 4)"
    run = settings.app_id
    fleet = make_fleet(run, devices=30, per_device=200, seed=5)
    first = {d: r[:100] for d, r in fleet.items()}
    second = {d: r[100:] for d, r in fleet.items()}
    worker = WorkerProcess(settings, env=env).start()
    victim = 2
    try:
        asyncio.run(produce(settings.bootstrap_servers, settings.topic_readings, first, set(), []))
        done = threading.Event()
        # keep producing (acks=all, idempotent) while broker 2 dies
        producer = threading.Thread(
            target=lambda: (
                asyncio.run(produce(settings.bootstrap_servers, settings.topic_readings, second, set(), [])),
                done.set(),
            )
        )
        producer.start()
        _flead("kill-broker", str(victim))
        producer.join(timeout=180)
        assert done.is_set(), "producing with one broker down failed"
        total = sum(len(r) for r in fleet.values())
        wait_for(lambda: _readings_applied(worker, list(fleet)) == total, 180, "every reading applied")
        expected_updates = len(fleet) * (200 // 50)
        engine = create_engine(settings.db_url)
        wait_for(lambda: _db_count(engine, local_models, run) == expected_updates, 120, "every local update stored")
        updates = [
            u
            for u in map(
                orjson.loads,
                asyncio.run(consume_all(settings.bootstrap_servers, settings.topic_local_updates, expected_updates)),
            )
            if "control" not in u
        ]
        assert len({(u["device_id"], u["model_version"]) for u in updates}) == expected_updates
        # the sink's anomalies partitions may have lost their leader with broker 2: it catches up
        expected = len(expected_anomalies(fleet))

        def where_anomalies_stopped() -> dict:
            """On a timeout: how far each stage got (topic, database, the worker's counters)."""
            on_topic = asyncio.run(consume_all(settings.bootstrap_servers, settings.topic_anomalies, expected, 20))
            stats = worker.stats()
            return {
                "expected": expected, "on_topic": len(on_topic), "stored": _db_count(engine, anomalies, run),
                "detector": {k: v for k, v in stats["detector"].items() if "anomal" in k or "output" in k},
                "sink": stats.get("sink"),
            }  # fmt: skip

        wait_for(
            lambda: _db_count(engine, anomalies, run) >= expected, 120, "every anomaly stored", where_anomalies_stopped
        )
        assert _db_count(engine, anomalies, run) == expected
    finally:
        worker.stop()
        _flead("start-broker", str(victim))


def _pg_ctl(action: str) -> None:
    version = installed_versions()[-1]
    subprocess.run(["pg_ctlcluster", version, "main", action], check=True, timeout=120)


def test_postgresql_down_for_30_seconds_loses_nothing(pipeline_env, monkeypatch):
    env, settings = _configure(pipeline_env, monkeypatch)
    run = settings.app_id
    fleet = make_fleet(run, devices=10, per_device=300, seed=9)
    first = {d: r[:100] for d, r in fleet.items()}
    rest = {d: r[100:] for d, r in fleet.items()}
    engine = create_engine(settings.db_url, pool_pre_ping=True)
    worker = WorkerProcess(settings, env=env).start()
    try:
        asyncio.run(produce(settings.bootstrap_servers, settings.topic_readings, first, set(), []))
        wait_for(lambda: _db_count(engine, local_models, run) == 10 * 2, 120, "rows before the outage")
        _pg_ctl("stop")
        stopped = time.monotonic()
        try:
            asyncio.run(produce(settings.bootstrap_servers, settings.topic_readings, rest, set(), []))
            wait_for(lambda: _readings_applied(worker, list(fleet)) == 3000, 120, "readings during the outage")
            time.sleep(max(0.0, 30 - (time.monotonic() - stopped)))
            assert worker.proc.poll() is None, "the worker must survive the outage"
        finally:
            _pg_ctl("start")
        wait_for(lambda: _db_count(engine, local_models, run) == 10 * 6, 180, "every local model after the outage")
        wait_for(lambda: _db_count(engine, anomalies, run) == len(expected_anomalies(fleet)), 60, "every anomaly")
        time.sleep(2)
        assert _db_count(engine, local_models, run) == 60  # and nothing twice
    finally:
        worker.stop()


def test_a_flood_of_bad_input_is_dead_lettered_and_counted(pipeline_env, monkeypatch):
    env, settings = _configure(pipeline_env, monkeypatch)
    run = settings.app_id
    fleet = make_fleet(run, devices=5, per_device=120, seed=3)
    kinds = [
        b"{malformed",
        b'{"device_id": "x", "timestamp": "2025-11-07T00:00:00Z"}',  # missing value
        b'{"device_id": "x", "timestamp": "2025-11-07T00:00:00Z", "value": NaN}',
        b'{"device_id": "x", "timestamp": "2025-11-07T00:00:00Z", "value": -1e999}',
        b'{"device_id": "x", "timestamp": "2025-11-07T00:00:00Z", "value": "12.5"}',
        b'{"device_id": 7, "timestamp": "2025-11-07T00:00:00Z", "value": 1.0}',
        b'{"device_id": "x", "timestamp": "2025-11-07T00:00:00Z", "value": 1.0, "firmware": "1.2"}',
        b'{"device_id": "x", "timestamp": "not a time", "value": 1.0}',
        b"\xff\xfe binary garbage",
        b"",
        b'{"device_id": "x", "values": [1.0], "timestamps": []}',
        b"[" + b"1," * 500_000 + b"1]",  # over our 1,000,000-byte limit, under the broker's
    ]
    bad = [kinds[i % len(kinds)] for i in range(600)]
    worker = WorkerProcess(settings, env=env).start()
    try:
        asyncio.run(produce(settings.bootstrap_servers, settings.topic_readings, fleet, set(), bad))
        total = sum(len(r) for r in fleet.values())
        wait_for(lambda: _readings_applied(worker, list(fleet)) == total, 120, "every good reading")
        wait_for(lambda: worker.stats()["detector"].get("dead_letters", 0) == len(bad), 60, "every bad message")
        letters = asyncio.run(consume_all(settings.bootstrap_servers, settings.topic_dead_letter, len(bad)))
        records = [orjson.loads(v) for v in letters]
        positions = [(r["source_topic"], r["partition"], r["offset"]) for r in records]
        assert len(set(positions)) == len(bad), "each bad message has its dead letter"
        assert len(positions) == len(bad), f"{len(positions) - len(set(positions))} dead letters were written twice"
        reasons = {r["reason"].split(":")[0] for r in records}
        assert len(reasons) >= 6
        assert worker.proc.poll() is None and worker.stats()["detector"]["readings"] == total
    finally:
        worker.stop()
