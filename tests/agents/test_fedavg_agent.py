"""The FedAvg agent through Faust's test_context.

Most tests here are of the description's FedAvg (``FLEAD_AGGREGATOR=fedavg``: sample-weighted
FedBuff deltas) on four-weight updates; the last ones are of the default, online Newton, on the
updates devices send.
"""

import asyncio
import dataclasses

import numpy as np
import pytest

from flead_app.agents import fedavg
from flead_app.algorithms.aggregation import FedAvg
from flead_app.algorithms.fedbuff import FedBuffState, federate
from flead_app.app import runtime
from flead_app.models import FLEET_KEY, GlobalModel, LocalModelUpdate
from flead_app.settings import load_settings
from flead_app.tables.rows import FedAvgRow

SETTINGS = load_settings()


def _update(device: int, version: int = 1, weights=(0.1, 0.2, 0.3, 0.4), samples=40, acc=0.9, base=0):
    return LocalModelUpdate(
        device_id=f"device_{device}",
        model_version=version,
        global_version=base,
        weights=list(weights),
        bias=-0.5,
        accuracy=acc,
        loss=0.3,
        samples=samples,
        timestamp="2025-11-07T15:22:31.000Z",
    )


def _run(updates: list[bytes]) -> None:
    async def go():
        async with fedavg.federated_averaging.test_context() as agent:
            for raw in updates:
                await agent.put(raw, key=FLEET_KEY)
            await _settled()

    asyncio.run(go())


async def _settled(timeout: float = 10.0) -> None:
    """Wait until the agent's micro-batches are handled: its counters stop moving."""
    loop = asyncio.get_running_loop()
    last, still, deadline = None, 0, loop.time() + timeout
    while loop.time() < deadline and still < 3:
        now = tuple(fedavg.counters[k] for k in ("updates", "dead_letters", "duplicates_skipped", "global_models"))
        still, last = (still + 1 if now == last else 0), now
        await asyncio.sleep(SETTINGS.detector_batch_wait_s * 2)


DEFAULT_CONFIG = fedavg.config


@pytest.fixture(autouse=True)
def description_fedavg(request, monkeypatch):
    """The description's FedAvg over four weights, except for the tests of the default (marked ``newton``)."""
    if "newton" in request.keywords:
        return
    cfg = dataclasses.replace(fedavg.config, aggregator=FedAvg(SETTINGS.staleness_exponent),
                              initial=(0.0, 0.0, 0.0, 0.0, fedavg.config.initial[-1]))  # fmt: skip
    monkeypatch.setattr(fedavg, "config", cfg)
    monkeypatch.setattr(fedavg, "START", FedBuffState.start(cfg))


@pytest.fixture(autouse=True)
def fresh_fedavg_state(faust_app, description_fedavg):
    from flead_app.tables.fedavg_state import fedavg_state

    fedavg_state.data.clear()
    fedavg.rows.forget(set(range(SETTINGS.partitions)))
    runtime.global_model.params = None
    yield


def _row() -> FedAvgRow:
    """The fleet row as the agent holds it (written to the table at the next commit)."""
    return fedavg.rows.cached(FLEET_KEY)


def test_twenty_updates_make_one_global_version_weighted_by_samples(sent):
    # claims within a round of FLEAD_TRAIN_EVERY readings (robust.bound_updates caps more)
    updates = [_update(i, weights=(float(i), 0.0, 0.0, 1.0), samples=3 * (i + 1)) for i in range(20)]
    _run([u.to_json() for u in updates])
    models = [GlobalModel.from_json(v) for v in sent.of(SETTINGS.topic_global_updates)]
    assert len(models) == 1
    m = models[0]
    samples = np.array([u.samples for u in updates], dtype=float)
    expected = (np.arange(20) * samples).sum() / samples.sum()
    assert m.global_version == 1 and m.aggregation_round == 1 and m.num_devices == 20 and m.num_updates == 20
    assert m.weights[0] == pytest.approx(expected) and m.weights[3] == pytest.approx(1.0)
    assert m.samples == int(samples.sum()) and m.accuracy == pytest.approx(0.9)
    assert runtime.global_model.version == 1


def test_versions_continue_and_partial_buffers_wait(sent):
    _run([_update(i).to_json() for i in range(45)])
    versions = [GlobalModel.from_json(v).global_version for v in sent.of(SETTINGS.topic_global_updates)]
    assert versions == [1, 2]
    state = _row().state
    assert state.version == 2 and len(state.buffer) == 5


def test_duplicate_updates_count_once(sent):
    _run([_update(1).to_json()] * 20 + [_update(i).to_json() for i in range(2, 21)])
    models = [GlobalModel.from_json(v) for v in sent.of(SETTINGS.topic_global_updates)]
    assert len(models) == 1 and models[0].num_devices == 20
    assert fedavg.counters["duplicates_skipped"] >= 19


def test_flush_aggregates_a_partial_buffer_after_the_timeout(sent, monkeypatch):
    monkeypatch.setattr(fedavg, "config", dataclasses.replace(fedavg.config, timeout_s=0.0))
    _run([_update(i).to_json() for i in range(3)] + [fedavg.CONTROL_FLUSH])
    models = [GlobalModel.from_json(v) for v in sent.of(SETTINGS.topic_global_updates)]
    assert len(models) == 1 and models[0].num_updates == 3


def test_bad_update_is_dead_lettered(sent):
    _run([b'{"device_id": "x"}', _update(1).to_json()])
    assert len(sent.of(SETTINGS.topic_dead_letter)) == 1


def _initial():
    return np.array(fedavg.config.initial)


def _moved(device: int, params: np.ndarray, base: int) -> LocalModelUpdate:
    """An update whose parameters (weights then bias) are ``params``, started from ``base``."""
    return dataclasses.replace(_update(device, weights=params[:4].tolist(), base=base), bias=float(params[4]))


def test_stale_updates_add_their_change_from_their_own_base_version(sent):
    v0 = _initial()
    v1 = v0 + [1.0, 0.0, 0.0, 0.0, 0.5]
    first = [_moved(i, v1, 0) for i in range(20)]
    # a second buffer: ten fresh updates from v1 and ten stale ones from v0, each moved by `step`
    step = np.array([0.0, 0.2, 0.0, 0.0, -0.1])
    fresh = [_moved(20 + i, v1 + step, 1) for i in range(10)]
    stale = [_moved(30 + i, v0 + step, 0) for i in range(10)]
    _run([u.to_json() for u in first + fresh + stale])
    models = [GlobalModel.from_json(v) for v in sent.of(SETTINGS.topic_global_updates)]
    assert [m.global_version for m in models] == [1, 2]
    np.testing.assert_allclose([*models[0].weights, models[0].bias], v1)  # all from v0: the plain average
    # v2 = v1 + the (staleness-weighted) average change: the stale half does not pull it back to v0
    np.testing.assert_allclose([*models[1].weights, models[1].bias], v1 + step, atol=1e-12)
    assert models[1].mean_staleness == pytest.approx(0.5)


def test_state_keeps_the_parameters_of_recent_versions(sent, monkeypatch):
    monkeypatch.setattr(fedavg, "config", dataclasses.replace(fedavg.config, history=2))
    _run([_update(i).to_json() for i in range(60)])
    state = _row().state
    assert state.version == 3 and sorted(state.history) == [2, 3]
    latest = GlobalModel.from_json(sent.of(SETTINGS.topic_global_updates)[-1])
    assert list(state.history[3]) == [*latest.weights, latest.bias]


def test_federate_without_history_averages_absolute_weights():
    updates = [_update(i, weights=(float(i), 0.0, 0.0, 0.0), samples=10, base=0) for i in range(4)]
    at = "2025-11-07T15:22:31.000Z"
    plain = federate(updates, 3, 4, FedAvg(0.0), at)
    assert plain.weights[0] == pytest.approx(1.5)
    history = {0: [0.0, 0.0, 0.0, 0.0, -0.5], 3: [10.0, 0.0, 0.0, 0.0, -0.5]}
    delta = federate(updates, 3, 4, FedAvg(0.0), at, history=history)
    assert delta.weights[0] == pytest.approx(11.5)  # v3 + the average change from v0


def _device_update(device: int, seed: int) -> LocalModelUpdate:
    """An update as a device sends it: a round of 50 readings from version 0, with its curvature."""
    from flead_app.algorithms import device as dev

    rng = np.random.default_rng(seed)
    x = rng.exponential(size=(50, dev.NUM_FEATURES)) - 1.0
    y = (x[:, 0] > 2.5).astype(np.int8)
    cfg = dev.DeviceConfig()
    _, r = dev.train_round(dev.DeviceState(buffer_features=x, buffer_labels=y), 0.0, cfg, dev.initial_global(cfg))
    return LocalModelUpdate(
        f"device_{device}", 1, 0, r.weights.tolist(), r.bias, r.accuracy, r.loss, r.samples,
        "2025-11-07T15:22:31.000Z", positives=r.positives, base_params=r.base_params.tolist(),
        curvature=r.curvature.tolist(), normal_moments=r.normal_moments.tolist(),
    )  # fmt: skip


@pytest.mark.newton
def test_the_default_newton_server_publishes_weights_and_a_scale(sent):
    assert fedavg.config.aggregator.name == "newton" and len(fedavg.config.initial) == 11
    _run([_device_update(i, i).to_json() for i in range(20)])
    models = [GlobalModel.from_json(v) for v in sent.of(SETTINGS.topic_global_updates)]
    assert len(models) == 1 and models[0].aggregator == "newton" and len(models[0].weights) == 10
    assert models[0].weights[0] > 0.1  # the feature that marks the positives
    assert models[0].score_scale > 0 and models[0].threshold is None  # no standardised histogram from v0
    state = _row().state
    assert len(state.information) == 66 and len(state.target) == 11 and state.moments[0] > 0


@pytest.mark.newton
def test_an_update_of_another_width_is_dead_lettered(sent):
    _run([_update(1).to_json(), _device_update(2, 2).to_json()])
    letters = sent.of(SETTINGS.topic_dead_letter)
    assert len(letters) == 1 and b"4 weights for a model of 10" in letters[0]
    assert len(_row().state.buffer) == 1
