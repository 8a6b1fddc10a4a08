"""Shared fixtures: the running stack (started by scripts/test.sh), fresh topics, free ports, and a
fresh PostgreSQL schema per test.

Database tests write into a schema of their own (``search_path`` set through the connection
options), so they neither see nor disturb the rows of a demo in the same database, and two test
runs in parallel do not collide. The schema is dropped after the test.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text

from flead_app.io.db.store import Database, sqlalchemy_url
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
    # Pipeline tests count rounds per device exactly: every device trains (the held-out devices of the
    # evaluation's devices split would train nothing).
    return {
        **names, "FLEAD_APP_ID": run, "FLEAD_WEB_PORT": str(free_port()), "FLEAD_FEDAVG_TIMEOUT_S": "3600",
        "FLEAD_HOLDOUT_DEVICE_PERCENT": "0",
    }  # fmt: skip


def url_with_schema(url: str, schema: str) -> str:
    """The URL with ``schema`` as the only schema on the search path (tables elsewhere stay unseen)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(scope="session")
def base_db_url() -> str:
    url = load_settings().db_url
    if not url:
        pytest.fail("no database URL: run `flead stack up` (scripts/test.sh does) or set FLEAD_DB_URL")
    return url


@pytest.fixture
def db_url(base_db_url):
    """URL of a fresh, empty schema; dropped after the test."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(sqlalchemy_url(base_db_url))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield url_with_schema(base_db_url, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def db(db_url):
    database = Database(db_url)
    database.init_schema()
    yield database
    database.close()
