"""Database fixtures for the io tests (both backends, TimescaleDB checks) and record factories."""

from __future__ import annotations

import pytest

from flead_app.io.db.store import Database
from flead_app.models import Anomaly, GlobalModel, LocalModelUpdate
from flead_app.settings import load_settings


@pytest.fixture(params=["settings", "postgresql"])
def backend(request) -> str:
    """The wanted backend: the settings' (TimescaleDB on a machine set up by scripts/setup.sh), and
    plain PostgreSQL, so every test that uses it covers both paths in the same run."""
    return load_settings().db_backend if request.param == "settings" else "postgresql"


def expected_backend(wanted: str) -> str:
    """What ``init_schema`` must return for ``wanted`` here: with ``auto`` the suite runs on
    TimescaleDB, so a stack without it fails the test (with what to do) instead of passing quietly."""
    if wanted == "postgresql":
        return "postgresql"
    return "timescaledb"


@pytest.fixture
def timescale_url(db_url) -> str:
    """A fresh schema in a database that has TimescaleDB; skipped only with FLEAD_DB_BACKEND=postgresql."""
    if load_settings().db_backend == "postgresql":
        pytest.skip("FLEAD_DB_BACKEND=postgresql: this run does not use TimescaleDB")
    probe = Database(db_url)
    try:
        found = probe.describe_backend()
    finally:
        probe.close()
    if not found.is_timescaledb:
        pytest.fail(
            f"the suite runs on TimescaleDB, but the stack's database has {found.describe()}: scripts/setup.sh "
            "builds it and `flead stack up` preloads it (FLEAD_DB_BACKEND=postgresql runs without it)"
        )
    return db_url


#: the records of these tests are stamped 2025-11-07: a retention policy of 30 days would drop
#: their chunks at its first run, seconds after init_schema (TimescaleDB runs a new job at once)
NO_RETENTION = {"retention_days": 0}


@pytest.fixture
def db(db_url, backend):
    database = Database(db_url, backend=backend, **NO_RETENTION)
    database.init_schema()
    yield database
    database.close()


def _local_update(**kw) -> LocalModelUpdate:
    base = dict(
        device_id="device_7",
        model_version=3,
        global_version=2,
        weights=[0.1, -0.2, 0.3],
        bias=0.05,
        accuracy=0.76,
        loss=0.45,
        samples=50,
        timestamp="2025-11-07T15:23:31.000Z",
        partition=5,
    )
    return LocalModelUpdate(**{**base, **kw})


def _global_model(**kw) -> GlobalModel:
    base = dict(
        global_version=71,
        aggregation_round=71,
        weights=[0.5, 0.3, 0.2],
        bias=0.0,
        accuracy=0.727,
        num_devices=20,
        samples=1000,
        timestamp="2025-11-07T15:24:00Z",
        num_updates=20,
        mean_staleness=0.5,
        contributors=["device_1"],
    )
    return GlobalModel(**{**base, **kw})


def _anomaly(**kw) -> Anomaly:
    base = dict(
        device_id="device_127",
        partition=3,
        broker_id=2,
        value=45.0,
        z_score=19.3,
        severity="critical",
        timestamp="2025-11-07T15:22:31.000Z",
        detected_at="2025-11-07T15:22:31.250Z",
        label=1,
    )
    return Anomaly(**{**base, **kw})


@pytest.fixture
def local_update():
    """Factory of valid ``LocalModelUpdate`` records; keyword arguments override fields."""
    return _local_update


@pytest.fixture
def global_model():
    return _global_model


@pytest.fixture
def anomaly():
    return _anomaly
