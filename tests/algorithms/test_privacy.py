"""Differential privacy of local updates: the clipping bounds hold, the noise has the stated size,
the result is a valid update whatever the round, the noise is reproducible only with the key, and
the accountant's epsilon behaves as composition says."""

import doctest
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flead_app.algorithms import privacy
from flead_app.algorithms.device import DeviceConfig, DeviceState, initial_global, train_round
from flead_app.algorithms.incident_features import NUM_FEATURES
from flead_app.algorithms.privacy import PrivacyConfig, epsilon_spent, noise_generator, privatize
from flead_app.algorithms.second_order import unpack_symmetric
from flead_app.models import LocalModelUpdate
from flead_app.settings import load_settings

K = NUM_FEATURES + 1


def a_round(seed: int, samples: int = 40, positive_rate: float = 0.1, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    state = DeviceState(
        buffer_features=scale * rng.normal(size=(samples, NUM_FEATURES)),
        buffer_labels=(rng.random(samples) < positive_rate).astype(np.int8),
    )
    return train_round(state, 1.0, DeviceConfig(), initial_global(DeviceConfig()))[1]


def as_record(r) -> LocalModelUpdate:  # noqa: ANN001 - a RoundResult
    """The update as the detector agent sends it (and as the FedAvg agent validates it)."""
    return LocalModelUpdate(
        "d1", r.model_version, r.base_global_version, r.weights.tolist(), r.bias, r.accuracy, r.loss, r.samples,
        "2025-01-01T00:00:00.000Z", positives=r.positives, base_params=r.base_params.tolist(),
        curvature=r.curvature.tolist(), normal_histogram={str(b): int(c) for b, c in r.normal_histogram.items()},
        normal_moments=None if r.normal_moments is None else r.normal_moments.tolist(),
    )  # fmt: skip


def test_the_docstring_examples():
    result = doctest.testmod(privacy)
    assert result.attempted >= 8 and result.failed == 0


def test_without_noise_each_block_is_clipped_to_its_bound():
    cfg = PrivacyConfig(noise_multiplier=1e-12, clip=0.05)
    r = a_round(1, scale=30.0)  # long blocks: every bound binds
    p = privatize(r, cfg, np.random.default_rng(0))
    bounds = cfg.bounds(r.samples)
    change = np.append(p.weights, p.bias) - r.base_params
    assert np.linalg.norm(change) == pytest.approx(bounds["change"], rel=1e-6)
    assert np.linalg.norm(p.curvature[:K]) == pytest.approx(bounds["gradient"], rel=1e-6)
    assert np.linalg.norm(p.normal_moments) <= bounds["moments"] * (1 + 1e-6)
    # a short block is left as it is
    small = privatize(r, PrivacyConfig(noise_multiplier=1e-15, clip=1e3), np.random.default_rng(0))
    assert np.allclose(np.append(small.weights, small.bias), np.append(r.weights, r.bias))


def test_the_noise_has_the_stated_standard_deviation():
    """sigma = noise multiplier x 2 sqrt(blocks) x the block's bound: the sensitivity of the whole
    vector in units of the bounds is 2 sqrt(blocks)."""
    z, cfg_r = 0.5, a_round(2)
    cfg = PrivacyConfig(noise_multiplier=z, clip=1e6)  # nothing clipped: the change is the noise's
    draws = np.array(
        [np.append(p.weights, p.bias) - np.append(cfg_r.weights, cfg_r.bias)
         for p in (privatize(cfg_r, cfg, np.random.default_rng(s)) for s in range(400))]
    )  # fmt: skip
    expected = z * 2 * math.sqrt(len(cfg.bounds(cfg_r.samples))) * cfg.clip
    assert draws.std() == pytest.approx(expected, rel=0.05)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    samples=st.integers(1, 80),
    positive_rate=st.floats(0.0, 1.0),
    scale=st.floats(0.01, 100.0),
    noise=st.floats(0.01, 20.0),
)
def test_a_noised_update_is_always_a_valid_update(seed, samples, positive_rate, scale, noise):
    r = a_round(seed, samples, positive_rate, scale)
    p = privatize(r, PrivacyConfig(noise_multiplier=noise), np.random.default_rng(seed))
    record = as_record(p)
    record = LocalModelUpdate.from_json(record.to_json())  # validated, as the FedAvg agent reads it
    assert p.samples == r.samples and p.model_version == r.model_version
    assert np.array_equal(p.base_params, r.base_params), "the start model is public: not noised"
    assert np.linalg.eigvalsh(unpack_symmetric(p.curvature[K:])).min() >= -1e-6 * max(1.0, samples)


def test_the_same_round_gets_the_same_noise_only_with_the_same_key():
    r, cfg = a_round(3), PrivacyConfig(noise_multiplier=1.0)

    def weights(key: bytes, version: int = 1) -> list[float]:
        return privatize(r, cfg, noise_generator(key, "dev", version)).weights.tolist()

    assert weights(b"site key") == weights(b"site key"), "a replay after a crash sends the same bytes"
    assert weights(b"site key") != weights(b"another key")
    assert weights(b"site key") != weights(b"site key", version=2)


def test_epsilon_grows_with_rounds_and_falls_with_noise():
    e = [epsilon_spent(t, 1.0, 1e-5) for t in (1, 4, 16, 64)]
    assert e == sorted(e) and e[-1] < 64 * e[0], "composition in Renyi DP grows slower than linearly"
    assert epsilon_spent(10, 2.0, 1e-5) < epsilon_spent(10, 1.0, 1e-5) < epsilon_spent(10, 0.5, 1e-5)
    assert epsilon_spent(10, 1.0, 1e-3) < epsilon_spent(10, 1.0, 1e-6)


def test_settings_are_checked(monkeypatch):
    monkeypatch.setenv("FLEAD_DP_NOISE", "-1")
    with pytest.raises(ValueError, match="FLEAD_DP_NOISE"):
        load_settings()
    monkeypatch.setenv("FLEAD_DP_NOISE", "0.5")
    monkeypatch.setenv("FLEAD_DP_KEY", "s3cret")
    s = load_settings()
    assert PrivacyConfig.from_settings(s).enabled and "s3cret" not in str(s.redacted())


def test_the_report_states_the_epsilon_spent_or_that_there_is_no_guarantee():
    from flead_app.report import privacy_section, render_privacy
    from flead_app.settings import Settings

    on = privacy_section([2, 9, 4], Settings(dp_noise=1.0))
    assert on["max_rounds"] == 9 and on["epsilon_max"] == pytest.approx(epsilon_spent(9, 1.0, 1e-5))
    assert "epsilon at delta 1e-05" in "\n".join(render_privacy(on))
    assert "no privacy guarantee" in "\n".join(render_privacy(privacy_section([2], Settings())))
