"""Fault injection through both agents (Faust's test_context, no Kafka): a device that
``FLEAD_FAULTY_SHARE`` makes faulty sends the corrupted update from the detector agent, and the
FedAvg agent dead-letters a non-finite one with a count, or buffers a finite one for the bound."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np

from flead_app.agents import detector, fedavg
from flead_app.app import runtime
from flead_app.models import FLEET_KEY, DeadLetter, LocalModelUpdate, Reading
from flead_app.settings import load_settings

SETTINGS = load_settings()


def _readings(device: str, n: int) -> list[Reading]:
    rng = np.random.default_rng(0)
    return [Reading(device, f"2025-11-07T00:{i // 60:02d}:{i % 60:02d}.000Z", float(20 + rng.normal()), 0)
            for i in range(n)]  # fmt: skip


async def _settled(counters, names: tuple[str, ...], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    last, still, deadline = None, 0, loop.time() + timeout
    while loop.time() < deadline and still < 3:
        now = tuple(counters[k] for k in names)
        still, last = (still + 1 if now == last else 0), now
        await asyncio.sleep(SETTINGS.detector_batch_wait_s * 2)


def _device_update(faust_app, sent, monkeypatch, kind: str) -> bytes:
    """The raw local update a device with fault ``kind`` sends after 50 readings."""
    monkeypatch.setattr(detector, "settings", dataclasses.replace(detector.settings, faulty_share=1.0))
    monkeypatch.setattr(detector, "FAULT_KINDS", (kind,))
    monkeypatch.setattr(detector, "config", dataclasses.replace(detector.config, holdout_device_percent=0.0))
    runtime.global_model.params = None

    async def go():
        async with detector.detect.test_context() as agent:
            for r in _readings(f"faulty_{kind}", 50):
                await agent.put(r.to_json(), key=f"faulty_{kind}".encode())
            await _settled(detector.counters, ("messages", "local_updates"))

    asyncio.run(go())
    (raw,) = sent.of(SETTINGS.topic_local_updates)
    return raw


def _offer(raw: bytes) -> None:
    from flead_app.tables.fedavg_state import fedavg_state

    fedavg_state.data.clear()
    fedavg.rows.forget(set(range(SETTINGS.partitions)))

    async def go():
        async with fedavg.federated_averaging.test_context() as agent:
            await agent.put(raw, key=FLEET_KEY)
            await _settled(fedavg.counters, ("updates", "dead_letters"))

    asyncio.run(go())


def test_a_faulty_devices_nonfinite_update_is_dead_lettered_with_a_count(faust_app, sent, monkeypatch):
    raw = _device_update(faust_app, sent, monkeypatch, "nonfinite")
    assert b"null" in raw  # NaN and infinity have no JSON spelling
    before, updates = fedavg.counters["dead_letters"], fedavg.counters["updates"]
    _offer(raw)
    (letter,) = [DeadLetter.from_json(v) for v in sent.of(SETTINGS.topic_dead_letter)]
    assert "weights[0] is not a finite number" in letter.reason
    assert letter.source_topic == SETTINGS.topic_local_updates
    assert fedavg.counters["dead_letters"] == before + 1 and fedavg.counters["updates"] == updates


def test_a_faulty_devices_scaled_update_is_well_formed_and_buffered_for_the_bound(faust_app, sent, monkeypatch):
    raw = _device_update(faust_app, sent, monkeypatch, "scale")
    update = LocalModelUpdate.from_json(raw)
    change = np.array([*update.weights, update.bias]) - np.array(update.base_params)
    assert np.linalg.norm(change) > 0
    _offer(raw)
    assert not sent.of(SETTINGS.topic_dead_letter)
    assert len(fedavg.rows.cached(FLEET_KEY).state.buffer) == 1


def test_a_faulty_devices_flipped_update_is_refused_by_the_server_with_a_count(faust_app, sent, monkeypatch):
    """A negated gradient of honest size passes the L2 bound; its curvature gives it away."""
    raw = _device_update(faust_app, sent, monkeypatch, "flip")
    assert LocalModelUpdate.from_json(raw).positives == 0
    monkeypatch.setattr(fedavg, "config", dataclasses.replace(fedavg.config, buffer_size=1))
    before = fedavg.counters["updates_refused_infeasible"]
    _offer(raw)
    assert fedavg.counters["updates_refused_infeasible"] == before + 1
    assert not sent.of(SETTINGS.topic_global_updates)  # no version made from a refused buffer
    assert not sent.of(SETTINGS.topic_dead_letter)  # well-formed: refused, not dead-lettered
    assert fedavg.rows.cached(FLEET_KEY).state.buffer == ()
