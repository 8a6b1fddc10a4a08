"""Agents under Faust's ``test_context``: memory tables, sends captured instead of produced."""

from __future__ import annotations

import asyncio

import pytest


@pytest.fixture(autouse=True)
def every_device_at_home(monkeypatch):
    """``test_context`` delivers every message on partition 0: let that be each device's partition,
    or the detector would forward it (tests/agents/test_partitioner_integration.py tests that)."""
    from flead_app.agents import detector

    monkeypatch.setattr(detector.placement, "home", lambda key: 0)


class Sent(list):
    def of(self, topic: str) -> list:
        return [value for name, _, value in self if name == topic]


@pytest.fixture(scope="session")
def faust_app():
    from flead_app.app import app

    app.finalize()
    app.conf.store = "memory://"
    app.flow_control.resume()
    return app


@pytest.fixture
def sent(faust_app, monkeypatch):
    """Every ``topic.send`` an agent makes, as (topic, key, value); each send is acknowledged at once."""
    import flead_app.app as flead

    captured = Sent()
    for topic in (
        flead.readings_topic,
        flead.anomalies_topic,
        flead.local_updates_topic,
        flead.global_updates_topic,
        flead.dead_letter_topic,
    ):
        name = topic.get_topic_name()

        async def send(*, key=None, value=None, _name=name, **_):
            captured.append((_name, key, value))
            ack = asyncio.get_running_loop().create_future()
            ack.set_result(None)
            return ack

        monkeypatch.setattr(topic, "send", send)
    return captured
