"""A worker killed with SIGKILL mid-run and restarted: its tables come back from their
changelogs, device model versions and the global version continue, and no row is duplicated."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from sqlalchemy import create_engine, func, select

from flead_app.io.db.schema import anomalies, federated_models, local_models
from flead_app.settings import load_settings
from flead_app.worker import WorkerProcess
from tests.agents.test_pipeline_integration import (
    consume_all,
    expected_anomalies,
    make_fleet,
    produce,
    stored_global_models,
    wait_for,
)

pytestmark = pytest.mark.integration

DEVICES, PER_DEVICE, BUFFER = 20, 500, 10


def test_sigkill_and_restart_loses_nothing_and_duplicates_nothing(pipeline_env, monkeypatch):
    env = {**pipeline_env, "FLEAD_TRAIN_INTERVAL_S": "3600", "FLEAD_FEDAVG_BUFFER": str(BUFFER)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    run = settings.app_id
    fleet = make_fleet(run, devices=DEVICES, per_device=PER_DEVICE, seed=11)
    total = DEVICES * PER_DEVICE
    asyncio.run(produce(settings.bootstrap_servers, settings.topic_readings, fleet, set(), []))

    worker = WorkerProcess(settings, env=env, name="worker-a").start()
    try:
        wait_for(lambda: worker.stats()["detector"].get("readings", 0) >= total // 3, 120, "a third of the readings")
    finally:
        worker.kill()  # SIGKILL: no shutdown, no final commit
    killed_at = time.monotonic()

    restarted = WorkerProcess(settings, env=env, name="worker-b").start()
    try:
        engine = create_engine(settings.db_url)
        rounds = DEVICES * (PER_DEVICE // 50)

        def count(table):
            with engine.connect() as conn:
                q = select(func.count()).select_from(table).where(table.c.device_id.like(f"{run}-%"))
                return conn.execute(q).scalar()

        def seen() -> str:
            return f"{count(local_models)} of {rounds} local rounds stored; worker counters {restarted.stats()}"

        wait_for(lambda: count(local_models) >= rounds, 180, "every local round in the database", seen)
        want = expected_anomalies(fleet)
        wait_for(lambda: count(anomalies) >= len(want), 60, "every anomaly in the database")
        time.sleep(3)  # anything duplicated would arrive now
        assert count(local_models) == rounds
        assert count(anomalies) == len(want)
        with engine.connect() as conn:
            rows = conn.execute(
                select(local_models.c.device_id, local_models.c.model_version).where(
                    local_models.c.device_id.like(f"{run}-%")
                )
            ).all()
        per_device: dict[str, list[int]] = {}
        for device, version in rows:
            per_device.setdefault(device, []).append(version)
        assert all(sorted(v) == list(range(1, PER_DEVICE // 50 + 1)) for v in per_device.values())

        raw = asyncio.run(consume_all(settings.bootstrap_servers, settings.topic_global_updates, rounds // BUFFER))
        models = [orjson.loads(v) for v in raw]
        versions = sorted({m["global_version"] for m in models})
        assert versions == list(range(1, rounds // BUFFER + 1)), "global versions continue across the restart"
        wait_for(lambda: stored_global_models(engine, models) >= len(versions), 60, "global models in the database")
        with engine.connect() as conn:
            stamps = [m["timestamp"] for m in models]
            from datetime import datetime

            stored = (
                conn.execute(
                    select(federated_models.c.global_version).where(
                        federated_models.c.created_at.in_([datetime.fromisoformat(s) for s in stamps])
                    )
                )
                .scalars()
                .all()
            )
        assert sorted(stored) == versions, "each global version stored exactly once"
        assert time.monotonic() - killed_at < 300
    finally:
        restarted.stop()
