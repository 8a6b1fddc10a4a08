"""The worker's start-up step on the running stack: its tables' changelog topics exist, known to
every broker, before Faust starts (Faust otherwise can read a fresh topic as 0 partitions)."""

from __future__ import annotations

import asyncio

import pytest

from flead_app.io.kafka import broker_metadata
from flead_app.settings import load_settings
from flead_app.worker import TABLES, prepare_changelog_topics
from tests.conftest import unique

pytestmark = pytest.mark.integration


def test_changelog_topics_are_ready_before_the_worker_starts(stack, monkeypatch):
    monkeypatch.setenv("FLEAD_APP_ID", unique("prep"))
    settings = load_settings()
    names = prepare_changelog_topics(settings)
    assert names == [f"{settings.app_id}-{t}-changelog" for t in TABLES]
    for server in settings.bootstrap_servers:
        host, port = server.rsplit(":", 1)
        md = asyncio.run(broker_metadata(host, int(port), names))
        for t in md["topics"]:
            assert t["error_code"] == 0 and len(t["partitions"]) == settings.partitions, (server, t["topic"])
            assert all(p["leader"] >= 0 for p in t["partitions"])
    assert prepare_changelog_topics(settings) == names  # a restart finds them and goes on
