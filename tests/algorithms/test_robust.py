"""Faulty devices: the injected faults are what the docs say, and the server's bound contains them.

The server-level tests build honest updates with the device's own round (``device.train_round``)
on one synthetic population, corrupt a fifth of them, and compare the next global version with
the clean one: within a small distance with the default bound, far without it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from flead_app.algorithms import device
from flead_app.algorithms.aggregation import FedAvg, Newton
from flead_app.algorithms.fedbuff import FedBuffConfig, FedBuffState, server_step
from flead_app.algorithms.robust import (
    FAULT_KINDS,
    MAX_NORMAL_PROBABILITY,
    SAMPLES,
    SCALE,
    UpdateBound,
    bound_updates,
    corrupt_update,
    curvature_feasible,
    fault_of,
    parse_kinds,
    psd,
    residual_mass,
)
from flead_app.algorithms.second_order import round_curvature, unpack_symmetric
from flead_app.models import InvalidRecord, LocalModelUpdate, format_timestamp
from flead_app.settings import Settings

DCFG = device.DeviceConfig()
V0 = device.initial_global(DCFG)
INITIAL = (*V0.weights.tolist(), V0.bias)
DEFAULT_BOUND = UpdateBound.from_settings(Settings())


def _honest(
    i: int, rng: np.random.Generator, n: int = 30, start: device.GlobalParams = V0, rate: float = 0.1
) -> LocalModelUpdate:
    """A device's update after one round on ``n`` readings of a population where feature 0 tells
    anomalies (a share ``rate`` of them)."""
    y = (rng.random(n) < rate).astype(np.int8)
    x = rng.exponential(size=(n, device.NUM_FEATURES)) - 1.0
    x[:, 0] += 3.0 * y
    state = device.DeviceState(buffer_features=x, buffer_labels=y)
    _, r = device.train_round(state, 0.0, DCFG, start)
    return LocalModelUpdate(
        f"d{i}", r.model_version, r.base_global_version, r.weights.tolist(), r.bias, r.accuracy, r.loss,
        r.samples, format_timestamp(0.0), positives=r.positives, base_params=r.base_params.tolist(),
        curvature=r.curvature.tolist(), normal_histogram={str(b): int(c) for b, c in r.normal_histogram.items()},
        normal_moments=None if r.normal_moments is None else r.normal_moments.tolist(),
    )  # fmt: skip


@pytest.fixture(scope="module")
def honest() -> list[LocalModelUpdate]:
    rng = np.random.default_rng(3)
    return [_honest(i, rng) for i in range(20)]


def test_the_settings_default_is_a_bound_that_is_on():
    assert DEFAULT_BOUND == UpdateBound(
        max_normals=75, max_positives=1000, norm_multiple=10.0, median_normals=3.0, check_curvature=True
    )
    assert FedBuffConfig().bound == DEFAULT_BOUND
    assert FedBuffConfig.from_settings(Settings(), INITIAL).bound == DEFAULT_BOUND
    off = dataclasses.replace(
        Settings(), update_norm_bound=0.0, update_samples_slack=0.0, update_positives_slack=0.0,
        update_median_samples=0.0, dp_noise=1.0,
    )  # fmt: skip
    assert UpdateBound.from_settings(off) == UpdateBound()


def test_faulty_devices_are_a_stable_share_with_every_kind():
    ids = [f"device_{i}" for i in range(5000)]
    kinds = [fault_of(d, 0.2) for d in ids]
    assert kinds == [fault_of(d, 0.2) for d in ids]
    share = np.mean([k is not None for k in kinds])
    assert 0.18 < share < 0.22
    counts = {k: kinds.count(k) for k in FAULT_KINDS}
    assert min(counts.values()) > 0.2 * 5000 / len(FAULT_KINDS) * 0.7
    assert all(fault_of(d, 0.0) is None for d in ids[:100])
    # a larger share keeps the devices of a smaller one faulty (the same hash, a higher cut)
    assert all(fault_of(d, 0.4) is not None for d, k in zip(ids, kinds, strict=True) if k is not None)


def test_unknown_fault_kinds_are_refused():
    with pytest.raises(ValueError, match="fault kinds"):
        parse_kinds("scale,typo")
    with pytest.raises(ValueError):
        corrupt_update(_honest(0, np.random.default_rng(0)), "typo")


def _params(u: LocalModelUpdate) -> np.ndarray:
    return np.array([*u.weights, u.bias])


def test_scale_and_flip_change_the_step_and_the_gradient_only(honest):
    u = honest[0]
    base, k = np.array(u.base_params), len(u.weights) + 1
    for kind, factor in (("scale", SCALE), ("flip", -1.0)):
        c = corrupt_update(u, kind)
        np.testing.assert_allclose(_params(c) - base, factor * (_params(u) - base), atol=1e-9)
        np.testing.assert_allclose(c.curvature[:k], factor * np.array(u.curvature[:k]))
        assert c.curvature[k:] == u.curvature[k:]  # the Hessian describes the data, not the step
        assert (c.samples, c.normal_histogram, c.normal_moments) == (u.samples, u.normal_histogram, u.normal_moments)
        c.validate()  # still a well-formed record: only the bound can catch it


def test_samples_fault_claims_a_thousand_times_the_data_consistently(honest):
    u = honest[1]
    c = corrupt_update(u, "samples")
    assert c.samples == SAMPLES * u.samples and c.positives == SAMPLES * u.positives
    np.testing.assert_allclose(c.curvature, SAMPLES * np.array(u.curvature))
    np.testing.assert_allclose(c.normal_moments, SAMPLES * np.array(u.normal_moments))
    assert c.normal_histogram == {b: SAMPLES * n for b, n in u.normal_histogram.items()}
    assert c.weights == u.weights
    c.validate()


def test_a_nonfinite_update_is_refused_on_the_wire(honest):
    c = corrupt_update(honest[2], "nonfinite")
    with pytest.raises(InvalidRecord, match="weights\\[0\\] is not a finite number"):
        LocalModelUpdate.from_json(c.to_json())
    without_weights = dataclasses.replace(c, weights=honest[2].weights, bias=honest[2].bias)
    with pytest.raises(InvalidRecord, match="curvature\\[0\\] is not a finite number"):
        LocalModelUpdate.from_json(without_weights.to_json())


def test_honest_updates_pass_the_bound_unchanged(honest):
    out = bound_updates(honest, DEFAULT_BOUND, {0: INITIAL}, second_order=True)
    assert out.updates == tuple(honest) and (out.samples_capped, out.change_clipped, out.curvature_clipped) == (0, 0, 0)
    out = bound_updates(honest, DEFAULT_BOUND, {0: INITIAL}, second_order=False)
    assert out.updates == tuple(honest)


@pytest.mark.parametrize("second_order", [True, False], ids=["newton", "averaging"])
def test_the_rare_round_with_positives_is_not_what_the_bound_clips(second_order):
    """Rounds as the simulator makes them (~8 readings, most without a positive): the one with a
    closing episode has many times the typical gradient and change, and is the one that teaches
    the model; measured per residual mass it is an ordinary round."""
    rng = np.random.default_rng(5)
    ups = [_honest(i, rng, n=8, rate=0.0) for i in range(19)]
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1], np.int8)
    x = rng.exponential(size=(8, device.NUM_FEATURES)) - 1.0
    x[y == 1, 0] += 6.0
    _, r = device.train_round(device.DeviceState(buffer_features=x, buffer_labels=y), 0.0, DCFG, V0)
    episode = dataclasses.replace(ups[0], device_id="episode", weights=r.weights.tolist(), bias=r.bias,
                                  positives=r.positives, curvature=r.curvature.tolist())  # fmt: skip
    ups.append(episode)
    k = len(episode.weights) + 1
    grads = np.linalg.norm([u.curvature[:k] for u in ups], axis=1)
    assert grads[-1] > 10 * np.median(grads)  # a plain median bound would clip it
    out = bound_updates(ups, DEFAULT_BOUND, {0: INITIAL}, second_order=second_order)
    assert out.updates == tuple(ups)


@settings(max_examples=60, deadline=None)
@given(
    norms=st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=30),
    multiple=st.floats(1.0, 20.0),
    seed=st.integers(0, 2**16),
)
def test_every_change_ends_within_the_bound_and_keeps_its_direction(norms, multiple, seed):
    rng = np.random.default_rng(seed)
    base = np.array(INITIAL)
    directions = rng.normal(size=(len(norms), base.shape[0]))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    ups = [
        LocalModelUpdate(f"d{i}", 1, 0, (base + n * d)[:-1].tolist(), float((base + n * d)[-1]), 0.9, 0.1, 10,
                         format_timestamp(0.0), base_params=list(base))
        for i, (n, d) in enumerate(zip(norms, directions, strict=True))
    ]  # fmt: skip
    out = bound_updates(ups, UpdateBound(norm_multiple=multiple), {0: INITIAL}).updates
    limit = multiple * float(np.median(norms))
    for u, n, d in zip(out, norms, directions, strict=True):
        change = _params(u) - base
        assert np.linalg.norm(change) <= max(limit, n if n <= limit else 0.0) * (1 + 1e-9) + 1e-12
        assert float(change @ d) > 0  # clipped, not turned
        if n <= limit:
            np.testing.assert_allclose(np.linalg.norm(change), n, rtol=1e-9)


def test_claimed_samples_are_capped_as_a_whole(honest):
    c = corrupt_update(honest[3], "samples")
    (u,) = bound_updates([c], UpdateBound(max_normals=100, max_positives=1000)).updates
    f = 100 / (c.samples - c.positives)
    assert u.samples - u.positives == 100 and u.positives == round(c.positives * f)
    np.testing.assert_allclose(u.curvature, np.array(c.curvature) * f)
    np.testing.assert_allclose(u.normal_moments, np.array(c.normal_moments) * f)
    u.validate()


def test_a_round_of_a_closing_window_keeps_its_positives(honest):
    """A round may hold a long window's positives (NAB: up to ~750) beside at most a round of normals."""
    window = dataclasses.replace(honest[4], samples=800, positives=760)
    assert bound_updates([window], DEFAULT_BOUND).updates == (window,)
    (u,) = bound_updates([dataclasses.replace(window, positives=1600, samples=1640)], DEFAULT_BOUND).updates
    assert u.positives == 1000


def test_an_update_cannot_claim_another_starting_point(honest):
    forged = dataclasses.replace(honest[4], base_params=[5.0] * len(honest[4].base_params))
    (u,) = bound_updates([forged], UpdateBound(), {0: INITIAL}, second_order=True).updates
    assert u.base_params == list(INITIAL)


def test_newton_curvature_is_clipped_and_kept_positive_semidefinite(honest):
    k = len(honest[0].weights) + 1
    hessian = np.array(honest[6].curvature[k:])
    scaled = corrupt_update(honest[5], "scale")  # the gradient x100
    heavy = dataclasses.replace(honest[6], curvature=[*honest[6].curvature[:k], *(100 * hessian).tolist()])
    negative = dataclasses.replace(honest[7], curvature=[*honest[7].curvature[:k], *(-hessian).tolist()])
    ups = [*honest[:17], scaled, heavy, negative]
    out = bound_updates(ups, UpdateBound(norm_multiple=10.0), {0: INITIAL}, second_order=True)
    mass = residual_mass(out.updates, 0.04)
    per_mass = np.linalg.norm([u.curvature[:k] for u in out.updates], axis=1) / mass
    per_sample = np.array([np.trace(unpack_symmetric(np.array(u.curvature[k:]))) / u.samples for u in out.updates])
    assert per_mass[17] <= 10 * np.median(per_mass) * (1 + 1e-9) < np.linalg.norm(scaled.curvature[:k]) / mass[17]
    assert per_sample[18] <= 10 * np.median(per_sample) * (1 + 1e-9)
    assert out.change_clipped == 1 and out.curvature_clipped == 2
    assert np.linalg.eigvalsh(unpack_symmetric(np.array(out.updates[19].curvature[k:]))).min() >= -1e-9
    assert out.updates[:17] == tuple(honest[:17])


def test_psd_leaves_a_positive_semidefinite_matrix_alone():
    m = np.array([[2.0, 1.0], [1.0, 2.0]])
    assert psd(m) is m


def _global(updates, aggregator, bound) -> np.ndarray:
    cfg = FedBuffConfig(buffer_size=len(updates), aggregator=aggregator, initial=INITIAL, bound=bound)
    state = dataclasses.replace(FedBuffState.start(cfg), buffer=tuple(updates))
    _, model = server_step(state, cfg, 0.0)
    return np.array([*model.weights, model.bias])


@pytest.mark.parametrize(
    ("aggregator", "kind", "ratio"),
    [(FedAvg(0.0), "scale", 10.0), (Newton(max_step=None), "scale", 10.0), (Newton(max_step=None), "samples", 1.2)],
    ids=["fedavg-scale", "newton-scale", "newton-samples"],
)
def test_the_bound_contains_a_fifth_of_faulty_updates(honest, aggregator, kind, ratio):
    """A fifth of the buffer faulty, one version from v0 (Newton without its trust region, which
    would hide the difference in one step): the bounded version lands ``ratio`` times nearer the
    clean one than the unbounded. (What that does to F1 over a run: docs/learning.md.)"""
    faulty = [corrupt_update(u, kind) if i % 5 == 0 else u for i, u in enumerate(honest)]
    clean = _global(honest, aggregator, DEFAULT_BOUND)
    bounded = _global(faulty, aggregator, DEFAULT_BOUND)
    unbounded = _global(faulty, aggregator, UpdateBound())
    near, far = np.linalg.norm(bounded - clean), np.linalg.norm(unbounded - clean)
    assert near * ratio < far, (near, far)


def test_flipped_updates_are_not_the_bounds_business(honest):
    """A reversed step of honest size passes the L2 bound untouched: the other updates outweigh it
    (and coordinate median or trimmed mean are the aggregators against it)."""
    faulty = [corrupt_update(u, "flip") if i % 5 == 0 else u for i, u in enumerate(honest)]
    out = bound_updates(faulty, DEFAULT_BOUND, {0: INITIAL}, second_order=True)
    assert out.updates == tuple(faulty)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 400),
    rate=st.floats(0.0, 1.0),
    bias=st.floats(-8.0, 8.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_honest_round_has_a_feasible_curvature(n, rate, bias, seed):
    """Whatever the data and the start model, a round's own gradient and Hessian pass the check,
    but for a round of normal readings that the start model called anomalies with near certainty
    (probability-weighted mean probability above ``MAX_NORMAL_PROBABILITY``)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(np.int8)
    x = rng.exponential(size=(n, device.NUM_FEATURES)) * rng.choice([-3.0, 1.0, 5.0]) - 1.0
    params = np.concatenate((rng.normal(0.0, 1.0, device.NUM_FEATURES), [bias]))
    c = round_curvature(params, x, y)
    u = LocalModelUpdate(
        "d", 1, 0, params[:-1].tolist(), float(bias), 0.5, 0.1, n, format_timestamp(0.0),
        positives=int(y.sum()), base_params=params.tolist(), curvature=c.packed().tolist(),
    )  # fmt: skip
    p = 1.0 / (1.0 + np.exp(-np.clip(x @ params[:-1] + bias, -500.0, 500.0)))
    confident = y.sum() == 0 and float((p**2).sum()) > MAX_NORMAL_PROBABILITY * float(p.sum())
    assume(abs(float((p**2).sum()) - MAX_NORMAL_PROBABILITY * float(p.sum())) > 1e-6 * n)
    assert curvature_feasible(u) == (not confident)
    assert curvature_feasible(corrupt_update(u, "samples")) == (not confident)  # consistent: the caps are for it


@pytest.fixture(scope="module")
def normal() -> list[LocalModelUpdate]:
    """Rounds of normal readings only, from a start model that has learnt (most rounds are these)."""
    rng = np.random.default_rng(4)
    start = device.GlobalParams(0, np.full(device.NUM_FEATURES, 0.3), -4.0)
    return [_honest(i, rng, start=start, rate=0.0) for i in range(8)]


def test_a_flipped_or_amplified_round_of_normal_readings_is_infeasible(honest, normal):
    assert all(curvature_feasible(u) for u in [*honest, *normal])
    assert not any(curvature_feasible(corrupt_update(u, "flip")) for u in normal)
    assert not any(curvature_feasible(corrupt_update(u, "scale")) for u in normal)


def test_infeasible_updates_are_left_out_and_counted(honest, normal):
    flipped = [corrupt_update(u, "flip") for u in normal[:3]]
    out = bound_updates([*honest[3:], *flipped], DEFAULT_BOUND, {0: INITIAL}, second_order=True)
    assert out.infeasible == len(flipped) > 0 and out.updates == tuple(honest[3:])
    cfg = FedBuffConfig(buffer_size=len(flipped), initial=INITIAL)
    state, offered = FedBuffState.start(cfg), None
    for u in flipped:
        state, offered = state.offer(u, 0.0, cfg)
    assert offered.model is None and offered.refused == len(flipped)  # no version made from nothing
    assert state.buffer == () and state.version == 0


def test_claimed_samples_are_capped_at_a_multiple_of_the_buffers_median(honest):
    liar = corrupt_update(honest[0], "samples")  # 30 readings claimed as 30,000
    out = bound_updates([*honest[1:], liar], DEFAULT_BOUND, {0: INITIAL}, second_order=True)
    median = np.median([u.samples - u.positives for u in honest[1:]] + [liar.samples - liar.positives])
    assert out.updates[-1].samples - out.updates[-1].positives <= 3 * median + 1
    assert out.updates[:-1] == tuple(honest[1:])
