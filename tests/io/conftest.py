"""Record factories for the database tests (the database fixtures are in tests/conftest.py)."""

from __future__ import annotations

import pytest

from flead_app.models import Anomaly, GlobalModel, LocalModelUpdate


def _local_update(**kw) -> LocalModelUpdate:
    base = dict(
        device_id="device_7", model_version=3, global_version=2, weights=[0.1, -0.2, 0.3], bias=0.05,
        accuracy=0.76, loss=0.45, samples=50, timestamp="2025-11-07T15:23:31.000Z", partition=5,
    )
    return LocalModelUpdate(**{**base, **kw})


def _global_model(**kw) -> GlobalModel:
    base = dict(
        global_version=71, aggregation_round=71, weights=[0.5, 0.3, 0.2], bias=0.0, accuracy=0.727,
        num_devices=20, samples=1000, timestamp="2025-11-07T15:24:00Z", num_updates=20, mean_staleness=0.5,
        contributors=["device_1"],
    )
    return GlobalModel(**{**base, **kw})


def _anomaly(**kw) -> Anomaly:
    base = dict(
        device_id="device_127", partition=3, broker_id=2, value=45.0, z_score=19.3, severity="critical",
        timestamp="2025-11-07T15:22:31.000Z", detected_at="2025-11-07T15:22:31.250Z", label=1,
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
