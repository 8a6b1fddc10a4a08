"""The detector agent through Faust's test_context: no Kafka, memory tables."""

import asyncio

import numpy as np
import orjson

from flead_app.agents import detector
from flead_app.models import Anomaly, DeadLetter, LocalModelUpdate, Reading, encode_batch
from flead_app.settings import load_settings
from flead_app.tables.rows import DeviceRow

SETTINGS = load_settings()


def _iso(i: int) -> str:
    return f"2025-11-07T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000Z"


def _readings(device: str, n: int, spike_at: int | None = None, seed: int = 0) -> list[Reading]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        value = 20.0 + rng.normal()
        if i == spike_at:
            value = 20.0 + 12.0
        out.append(Reading(device, _iso(i), float(value), int(i == spike_at)))
    return out


def run(coro):  # noqa: D103
    return asyncio.run(coro)


async def settled(counter_names=("messages", "dead_letters", "flush_rounds_requested"), timeout: float = 10.0) -> None:
    """Wait until the agent's micro-batches have been handled: the counters stop moving."""
    last, still = None, 0
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        now = tuple(detector.counters[c] for c in counter_names) + (detector.counters["local_updates"],)
        still = still + 1 if now == last else 0
        if still >= 3:
            return
        last = now
        await asyncio.sleep(SETTINGS.detector_batch_wait_s * 2)


def row_of(key: bytes) -> DeviceRow:
    """The device's row as the worker holds it (cached until the next commit writes it)."""
    return detector.rows.cached(key)


def _published_model(monkeypatch, version: int = 5) -> None:
    """The worker knows a global version whose level-|z| weight and threshold flag a 12-sigma spike."""
    from flead_app.algorithms.device import GlobalParams
    from flead_app.algorithms.incident_features import NUM_FEATURES
    from flead_app.app import runtime

    w = np.zeros(NUM_FEATURES)
    w[0] = 1.0  # the calibrated surprise of the level |z|
    params = GlobalParams(version, w, -4.0, threshold=4.0, score_loc=-4.0, score_scale=1.0)
    monkeypatch.setattr(runtime.global_model, "params", params)


def test_single_readings_give_anomalies_and_a_local_update(faust_app, sent, monkeypatch):
    """The default rule: the model's standardised score above the threshold (the published one,
    moved toward the device's own scores' quantile: a new device is at the published one)."""
    _published_model(monkeypatch)

    async def go():
        async with detector.detect.test_context() as agent:
            for r in _readings("dev_a", 50, spike_at=30):
                await agent.put(r.to_json(), key=b"dev_a")
            await settled()
            return row_of(b"dev_a").state

    state = run(go())
    anomalies = [Anomaly.from_json(v) for v in sent.of(SETTINGS.topic_anomalies)]
    spike = [a for a in anomalies if a.value == 32.0]
    assert len(spike) == 1 and spike[0].severity == "critical" and spike[0].z_score > 3 and spike[0].label == 1
    assert spike[0].rule == "model" and 0.0 <= spike[0].probability <= 1.0  # both rules' view of it
    assert len(anomalies) == 1  # the refractory period: one alarm for the incident
    updates = [LocalModelUpdate.from_json(v) for v in sent.of(SETTINGS.topic_local_updates)]
    assert len(updates) == 1
    assert updates[0].device_id == "dev_a" and updates[0].model_version == 1 and updates[0].global_version == 5
    assert 0 < updates[0].samples <= 40  # warm-up readings and held-out readings are not trained on
    # what the Newton server and the threshold need travels with it
    assert len(updates[0].curvature) == 77 and len(updates[0].base_params) == 11
    assert len(updates[0].normal_moments) == 66 and sum(updates[0].normal_histogram.values()) > 0
    assert state.readings == 50 and state.model_version == 1 and state.pending == 0


def test_with_privacy_on_the_update_leaves_noised_and_anomalies_are_unchanged(faust_app, sent, monkeypatch):
    """FLEAD_DP_NOISE > 0: the agent sends ``privacy.privatize`` of the round, its noise drawn from
    the key; detection on the device is not touched."""
    from flead_app.algorithms.privacy import PrivacyConfig

    _published_model(monkeypatch)
    monkeypatch.setattr(detector, "privacy", PrivacyConfig(noise_multiplier=1.0))
    monkeypatch.setattr(detector, "DP_KEY", b"test key")

    async def go():
        async with detector.detect.test_context() as agent:
            for r in _readings("dev_p", 50, spike_at=30):
                await agent.put(r.to_json(), key=b"dev_p")
            await settled()

    run(go())
    assert [a.value for a in map(Anomaly.from_json, sent.of(SETTINGS.topic_anomalies))] == [32.0]
    (update,) = [LocalModelUpdate.from_json(v) for v in sent.of(SETTINGS.topic_local_updates)]
    assert detector.counters["updates_privatized"] >= 1
    change = np.array([*update.weights, update.bias]) - np.array(update.base_params)
    # noise of std 1.0 x 2 sqrt(6) x 0.1 on each of 11 coordinates: far beyond the clip of 0.1
    assert np.linalg.norm(change) > 0.5


def test_batched_messages_score_like_single_readings(faust_app, sent, monkeypatch):
    """The description's z-rule (``FLEAD_ALARM_RULE=zrule``, no refractory period) stays available."""
    monkeypatch.setattr(detector, "config", detector.config.__class__(alarm_rule="zrule", refractory=0))
    readings = _readings("dev_b", 100, spike_at=70, seed=4)

    async def go():
        async with detector.detect.test_context() as agent:
            for start in range(0, 100, 10):
                chunk = readings[start : start + 10]
                stamps, values = [r.timestamp for r in chunk], [r.value for r in chunk]
                labels = [r.label for r in chunk]
                await agent.put(encode_batch("dev_b", stamps, values, labels), key=b"dev_b")
            await settled()

    run(go())
    anomalies = [Anomaly.from_json(v) for v in sent.of(SETTINGS.topic_anomalies)]
    assert 32.0 in [a.value for a in anomalies]
    assert all(a.rule == "zrule" and abs(a.z_score) > 2.5 for a in anomalies)
    updates = [LocalModelUpdate.from_json(v) for v in sent.of(SETTINGS.topic_local_updates)]
    assert [u.model_version for u in updates] == [1, 2]


def test_bad_input_goes_to_the_dead_letter_topic_and_the_agent_goes_on(faust_app, sent):
    bad = [
        b"{not json",
        orjson.dumps({"device_id": "dev_c", "timestamp": _iso(1)}),  # no value
        b'{"device_id": "dev_c", "timestamp": "2025-11-07T00:00:00Z", "value": NaN}',
        b'{"device_id": "dev_c", "timestamp": "2025-11-07T00:00:00Z", "value": 1e999}',
        orjson.dumps({"device_id": "dev_c", "timestamp": _iso(1), "value": 1.0, "label": 7}),
        orjson.dumps({"device_id": "other", "timestamp": _iso(1), "value": 1.0}),  # key differs
        orjson.dumps({"device_id": "dev_c", "timestamp": _iso(1), "value": "hot"}),
        orjson.dumps({"device_id": "dev_c", "timestamp": _iso(1), "value": 1.0, "colour": "red"}),
        orjson.dumps({"device_id": "dev_c", "timestamp": "yesterday", "value": 1.0}),
        b"x" * 1_000_001,
    ]

    async def go():
        async with detector.detect.test_context() as agent:
            await agent.put(Reading("dev_c", _iso(0), 1.0, 0).to_json(), key=b"dev_c")
            for raw in bad:
                await agent.put(raw, key=b"dev_c")
            await agent.put(Reading("dev_c", _iso(2), 1.5, 0).to_json(), key=b"dev_c")
            await settled()

    before = detector.counters["readings"]
    run(go())
    letters = [DeadLetter.from_json(v) for v in sent.of(SETTINGS.topic_dead_letter)]
    assert len(letters) == len(bad)
    reasons = " | ".join(letter.reason for letter in letters)
    for needle in (
        "malformed JSON",
        "infinity",
        "timestamp and value",
        "must be a number",
        "unknown keys",
        "ISO 8601",
        "exceeds",
        "label must be",
        "key differs",
    ):
        assert needle in reasons
    assert detector.counters["readings"] - before == 2  # the good readings around them were processed


def test_control_record_trains_a_quiet_device(faust_app, sent, monkeypatch):
    monkeypatch.setattr(detector, "config", detector.config.__class__(train_interval_s=0.0, min_history=2))

    async def go():
        async with detector.detect.test_context() as agent:
            for r in _readings("dev_d", 15):  # the features score from the 11th reading on
                await agent.put(r.to_json(), key=b"dev_d")
            await agent.put(orjson.dumps({"device_id": "dev_d", "control": "train"}), key=b"dev_d")
            await settled()

    run(go())
    assert sent.of(SETTINGS.topic_local_updates), "the control record should trigger a round"


def test_a_skipped_replay_sends_its_unacknowledged_outputs_again(faust_app, sent):
    """After a crash the device's row can be ahead of the committed offset while an output of the
    message it last applied never reached Kafka: the replay is skipped, and the row's outbox sends
    that output again (consumers deduplicate it if it had arrived after all)."""
    readings = _readings("dev_r", 51, seed=9)

    async def go():
        async with detector.detect.test_context() as agent:
            for r in readings[:50]:  # the 50th reading completes a round
                await agent.put(r.to_json(), key=b"dev_r")
            await settled()
            after_round = row_of(b"dev_r").position
            updates_before = len(sent.of(SETTINGS.topic_local_updates))
            agent.sent_offset = after_round.offset  # redeliver the round's message, as after a crash
            await agent.put(readings[49].to_json(), key=b"dev_r")
            await settled(("replays_skipped",))
            replayed = sent.of(SETTINGS.topic_local_updates)[updates_before:]
            await agent.put(readings[50].to_json(), key=b"dev_r")
            await settled()
            await detector.flush_rows()  # what the commit would write
            return after_round, replayed, row_of(b"dev_r")

    after_round, replayed, later = run(go())
    # the round's message is the row's position, and its outputs wait in the row until acknowledged
    assert after_round.offset in {o for o, *_ in after_round.outbox}
    updates = [LocalModelUpdate.from_json(v) for v in sent.of(SETTINGS.topic_local_updates)]
    assert updates[0].model_version == 1
    assert replayed == [sent.of(SETTINGS.topic_local_updates)[0]], "the same update, byte for byte"
    assert later.state.readings == 51, "the replayed reading was not applied twice"
    assert later.position.outbox == (), "acknowledged outputs leave the row"
