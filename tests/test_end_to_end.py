"""The whole system once: simulator -> Kafka -> worker -> PostgreSQL -> Spark analytics and
evaluation -> every dashboard panel, `flead report` and `flead device`, on real services.

It runs in a fresh PostgreSQL schema, so every row it finds was written by this run.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine

from flead_app.algorithms.holdout import device_held_out
from flead_app.dashboard.queries import PANELS, run_all_queries
from flead_app.io.db.store import sqlalchemy_url
from flead_app.settings import load_settings
from flead_app.simulate import SimOptions, simulate
from flead_app.worker import WorkerProcess
from tests.agents.test_pipeline_integration import wait_for
from tests.conftest import url_with_schema

pytestmark = [pytest.mark.integration, pytest.mark.spark]

DEVICES, PER_DEVICE, BATCH = 40, 400, 10


@pytest.fixture
def fresh_schema_url(stack):
    import uuid

    from sqlalchemy import text

    schema = f"e2e_{uuid.uuid4().hex[:10]}"
    admin = create_engine(sqlalchemy_url(stack.db_url))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield url_with_schema(stack.db_url, schema)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def flead(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "flead_app.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_simulator_to_dashboards(pipeline_env, fresh_schema_url, monkeypatch):
    env = {**pipeline_env, "FLEAD_DB_URL": fresh_schema_url, "FLEAD_TRAIN_INTERVAL_S": "3600"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    started = datetime.now(UTC)
    worker = WorkerProcess(settings, env=env).start()
    engine = create_engine(sqlalchemy_url(fresh_schema_url))

    def versions(where: str = "TRUE") -> int:
        from sqlalchemy import text
        from sqlalchemy.exc import ProgrammingError

        try:
            with engine.connect() as conn:
                return conn.execute(text(f"SELECT count(*) FROM federated_models WHERE {where}")).scalar()
        except ProgrammingError:  # the worker's sink has not made the tables yet
            return 0

    async def in_three_phases(sent: int) -> None:
        """The model rule alarms once a version carries a threshold, which needs rounds that started
        from a version with a scale (version 1 on): the burst is held after its first third until
        a version exists, and after its second until one with a threshold does, so the last third
        is scored by it."""
        deadline = asyncio.get_running_loop().time() + 180
        third = DEVICES * PER_DEVICE // 3
        while (sent >= third and not versions()) or (sent >= 2 * third and not versions("threshold IS NOT NULL")):
            assert asyncio.get_running_loop().time() < deadline, "no global version with a threshold"
            await asyncio.sleep(0.5)

    try:
        opts = SimOptions(devices=DEVICES, rate=0, batch=BATCH, count=DEVICES * PER_DEVICE, seed=4,
                          hold=in_three_phases)  # fmt: skip
        summary = asyncio.run(simulate(settings, opts, None))
        assert summary.readings == DEVICES * PER_DEVICE and summary.failed_messages == 0
        wait_for(lambda: worker.stats()["detector"].get("readings", 0) == summary.readings, 240, "every reading")
        # held-out devices (FLEAD_HOLDOUT_DEVICE_PERCENT) score and alarm but never train
        training = [
            f"device_{i}" for i in range(DEVICES)
            if not device_held_out(f"device_{i}", settings.holdout_device_percent, settings.holdout_device_salt)
        ]  # fmt: skip
        most = len(training) * (PER_DEVICE // settings.train_every)
        # a round whose readings all sit in a still-open labelled window releases no sample and
        # sends no update (held windows), so a few rounds of the most may be missing
        rounds = worker.stats()["detector"].get("local_updates", 0)
        assert 0.8 * most <= rounds <= most, (rounds, most)

        def rows(table: str) -> int:
            from sqlalchemy import text

            with engine.connect() as conn:
                return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()

        wait_for(lambda: rows("local_models") == rounds, 120, f"{rounds} local models", lambda: rows("local_models"))
        versions = rounds // settings.fedavg_buffer
        wait_for(
            lambda: rows("federated_models") == versions, 60, f"{versions} global models",
            lambda: (rows("federated_models"), worker.stats().get("fedavg")),
        )  # fmt: skip

        device = training[0]
        shown = flead("device", device, "--json", env=env)
        assert shown.returncode == 0, shown.stderr
        state = json.loads(shown.stdout)
        assert state["readings"] == PER_DEVICE and 0 < state["model_version"] <= PER_DEVICE // settings.train_every
    finally:
        worker.stop()

    window = [
        "--start", (started - timedelta(minutes=5)).isoformat(),
        "--end", (datetime.now(UTC) + timedelta(minutes=5)).isoformat(),
    ]  # fmt: skip
    analytics = flead("spark", "analytics", *window, "--json", env=env)
    assert analytics.returncode == 0, analytics.stderr[-3000:]
    evaluate = flead("spark", "evaluate", "--json", env=env)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert json.loads(evaluate.stdout)["versions"], evaluate.stdout[-2000:]

    from sqlalchemy import text

    with engine.connect() as conn:
        rules = dict(conn.execute(text("SELECT rule, count(*) FROM anomalies GROUP BY rule")).all())
    assert rules.get("model", 0) > 0 and set(rules) == {"model"}, rules  # the default rule, once thresholds exist
    results = run_all_queries(engine)
    for panel in PANELS:
        got = results[panel.id]
        assert got, f"panel {panel.id!r} returned no rows after a full run"
        assert list(got[0]) == list(panel.columns), panel.id

    report = flead("report", "--json", env=env)
    assert report.returncode == 0, report.stderr
    doc = json.loads(report.stdout)
    assert doc["counts"]["local_models"] == rounds
    assert doc["evaluation"] is not None
    assert doc["global_trend"]["versions"] == rounds // settings.fedavg_buffer
