"""Shared fixtures: the running stack (started by scripts/test.sh), fresh topics, free ports."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest

from flead_app.io.kafka import create_topics as kafka_create_topics
from flead_app.settings import load_settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_topics(names: list[str], partitions: int | None = None) -> None:
    s = load_settings()
    asyncio.run(kafka_create_topics(s, names, partitions or s.partitions))


@pytest.fixture(scope="session")
def stack():
    """The running stack's settings; fails clearly when scripts/test.sh did not start it."""
    s = load_settings()
    try:
        host, port = s.bootstrap_servers[0].rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as err:
        pytest.fail(f"no Kafka broker at {s.kafka_bootstrap} ({err}): run `flead stack up` (scripts/test.sh does)")
    if not s.db_url:
        pytest.fail("no database URL: run `flead stack up` or set FLEAD_DB_URL")
    return s


@pytest.fixture
def pipeline_env(stack):
    """Environment for an isolated pipeline: its own app id, topics and web port."""
    run = unique("it")
    names = {
        "FLEAD_TOPIC_READINGS": f"{run}-readings",
        "FLEAD_TOPIC_ANOMALIES": f"{run}-anomalies",
        "FLEAD_TOPIC_LOCAL_UPDATES": f"{run}-local",
        "FLEAD_TOPIC_GLOBAL_UPDATES": f"{run}-global",
        "FLEAD_TOPIC_DEAD_LETTER": f"{run}-dead",
    }
    create_topics(list(names.values()))
    # Tests count global versions exactly: a partial flush of a slow-filling buffer (the
    # 120 s default timer, reachable on a loaded CI machine) would add one.
    return {**names, "FLEAD_APP_ID": run, "FLEAD_WEB_PORT": str(free_port()), "FLEAD_FEDAVG_TIMEOUT_S": "3600"}
