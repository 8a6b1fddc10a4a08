"""Differential privacy of local updates (``FLEAD_DP_NOISE`` > 0): the Gaussian mechanism applied
to everything a round sends, on the device, before the update leaves it.

**What is protected.** A round's update is computed from the round's samples, but a sample's
features also depend on the device's earlier readings (running baselines), so no reading is
confined to one round. The unit this module protects is therefore the *device*: its whole history
of readings, over every round it sent. Each round is one Gaussian mechanism on a vector of bounded
norm; the device's rounds compose, and ``epsilon_spent`` accounts for that composition with
Google's ``dp-accounting`` (Rényi DP of the Gaussian mechanism, converted to (epsilon, delta)).

**The mechanism.** Everything in an update that the readings shaped is a block: the parameter
change (trained minus start), the round's gradient, its Hessian (packed), the histogram of the
start model's scores on the normal samples, the moments of those samples' features, and the
three scalars (accuracy, loss, positives). Each block ``b`` is scaled down to its L2 bound
``C_b`` when it is longer, so in units of the bounds the whole vector has norm at most
``sqrt(B)`` (B blocks) and two rounds differ by at most ``2 sqrt(B)``: that is the sensitivity.
Gaussian noise of standard deviation ``noise_multiplier x 2 sqrt(B) x C_b`` is added to each
coordinate of block ``b``. The bounds are fixed before any data is seen (``PrivacyConfig``):
``clip`` bounds the parameter change (``FLEAD_DP_CLIP``), the others scale with the round's
sample count ``n``.

Noise on every update separately is *local* differential privacy: the central side, MirrorMaker
and the brokers are not trusted with anything. Its price is that the noise of K updates adds up
as sqrt(K) against their signal's K, so it needs many updates per global version; the held-out
cost is measured in docs/learning.md.

What is public and not noised: the device id, versions and times, the start model
(``base_params``: the global model everyone has), and the round's sample count ``n`` (rounds are
cut by reading counts and by time, and the held-out rule is a hash of device and timestamp).

**Post-processing** (free under DP): the noisy Hessian is projected on the positive
semi-definite cone (the server's system must stay definite), histogram counts are rounded and
kept in [0, n], the count of normal samples and the positives in [0, n], accuracy in [0, 1] and
the loss at or above 0.

The noise is drawn from a generator seeded by a keyed hash of (device, model version): a replay
of the same round after a crash sends the same bytes, while the server, which does not know the
key (``FLEAD_DP_KEY``), cannot reproduce the noise.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from flead_app.algorithms.decision import dense_histogram, sparse_histogram
from flead_app.algorithms.device import RoundResult
from flead_app.algorithms.robust import psd
from flead_app.algorithms.second_order import pack_symmetric, unpack_symmetric

#: the loss is clipped here before noise (a log-loss above 10 means p < 5e-5 on the true class)
LOSS_BOUND = 10.0


@dataclass(frozen=True)
class PrivacyConfig:
    """The mechanism's settings; ``noise_multiplier`` 0 switches it off.

    The bounds of the blocks other than the parameter change scale with the round's sample count
    n. Bounds near the typical norm keep the noise, which scales with the bound, small; they
    were set from the norms of 1,595 rounds on the simulator (500 devices, readings split; median
    and 90th percentile per block, scripts/nab_replica.py), never from NAB: change 0.024 / 0.20,
    gradient 0.8 / 8.4, Hessian 3.4 / 33, histogram 7.8 / 9.0, moments 167 / 323 at a median
    n = 38. A longer block is clipped, which costs accuracy, never privacy.

    >>> PrivacyConfig().enabled, PrivacyConfig(noise_multiplier=0.5).enabled
    (False, True)
    """

    noise_multiplier: float = 0.0
    clip: float = 0.1
    delta: float = 1e-5
    gradient_per_sample: float = 0.1
    hessian_per_sample: float = 0.25
    histogram_share: float = 0.25
    moments_per_sample: float = 5.0

    @classmethod
    def from_settings(cls, settings: Any) -> PrivacyConfig:  # noqa: ANN401 - any object with the settings
        """From the ``FLEAD_DP_*`` settings.

        >>> from flead_app.settings import Settings
        >>> PrivacyConfig.from_settings(Settings()) == PrivacyConfig()
        True
        """
        return cls(
            noise_multiplier=settings.dp_noise, clip=settings.dp_clip,
            delta=settings.dp_delta,
        )  # fmt: skip

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0.0

    def bounds(self, samples: int) -> dict[str, float]:
        """The L2 bound of each block for a round of ``samples`` samples.

        >>> {k: round(v, 2) for k, v in PrivacyConfig().bounds(40).items()}
        {'change': 0.1, 'gradient': 4.0, 'hessian': 10.0, 'histogram': 10.0, 'moments': 200.0, 'scalars': 40.0}
        """
        n = float(max(samples, 1))
        return {
            "change": self.clip,
            "gradient": n * self.gradient_per_sample,
            "hessian": n * self.hessian_per_sample,
            "histogram": n * self.histogram_share,
            "moments": n * self.moments_per_sample,
            "scalars": n,
        }


def clip_to(v: np.ndarray, bound: float) -> np.ndarray:
    """``v`` scaled down to L2 norm ``bound`` when it is longer.

    >>> clip_to(np.array([3.0, 4.0]), 1.0).tolist(), clip_to(np.array([0.3, 0.4]), 1.0).tolist()
    ([0.6000000000000001, 0.8], [0.3, 0.4])
    """
    norm = float(np.linalg.norm(v))
    return v * (bound / norm) if norm > bound else v


def noise_generator(key: bytes, device_id: str, model_version: int) -> np.random.Generator:
    """A generator seeded by a keyed hash of the round: the same round, the same noise.

    >>> a = noise_generator(b"k", "d1", 3).normal(); b = noise_generator(b"k", "d1", 3).normal()
    >>> a == b, a == noise_generator(b"other", "d1", 3).normal()
    (True, False)
    """
    digest = hashlib.blake2b(f"{device_id}\x00{model_version}".encode(), key=key[:64], digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "big"))


def privatize(result: RoundResult, cfg: PrivacyConfig, rng: np.random.Generator) -> RoundResult:
    """The round as it may leave the device: every data-shaped block clipped and noised.

    >>> from flead_app.algorithms.device import DeviceConfig, DeviceState, initial_global, train_round
    >>> from flead_app.algorithms.incident_features import NUM_FEATURES
    >>> rng = np.random.default_rng(0)
    >>> state = DeviceState(buffer_features=rng.normal(size=(50, NUM_FEATURES)),
    ...                     buffer_labels=(rng.random(50) < 0.1).astype(np.int8))
    >>> _, r = train_round(state, 1.0, DeviceConfig(), initial_global(DeviceConfig()))
    >>> p = privatize(r, PrivacyConfig(noise_multiplier=1.0), np.random.default_rng(1))
    >>> p.samples == r.samples, 0 <= p.positives <= p.samples, bool(np.all(p.base_params == r.base_params))
    (True, True, True)
    >>> bool(np.all(np.linalg.eigvalsh(unpack_symmetric(p.curvature[11:])) >= -1e-9))
    True
    >>> privatize(r, PrivacyConfig(), rng) is r  # off: the round is sent as it is
    True
    """
    if not cfg.enabled:
        return result
    n = result.samples
    bounds = cfg.bounds(n)
    sigma = cfg.noise_multiplier * 2.0 * math.sqrt(len(bounds))  # in units of each block's bound

    def noised(block: np.ndarray, name: str) -> np.ndarray:
        bound = bounds[name]
        return clip_to(np.asarray(block, dtype=np.float64), bound) + rng.normal(0.0, sigma * bound, np.shape(block))

    params = np.append(result.weights, result.bias)
    base = params if result.base_params is None else np.asarray(result.base_params, dtype=np.float64)
    new_params = base + noised(params - base, "change")
    curvature = result.curvature
    if curvature is not None:
        k = params.shape[0]
        gradient = noised(curvature[:k], "gradient")
        hessian = psd(unpack_symmetric(noised(curvature[k:], "hessian")))
        curvature = np.concatenate((gradient, pack_symmetric(hessian)))
    histogram = result.normal_histogram
    if histogram:
        counts = np.rint(noised(dense_histogram(histogram), "histogram"))
        histogram = sparse_histogram(np.clip(counts, 0.0, n))
    moments = result.normal_moments
    if moments is not None:
        moments = noised(moments, "moments")
        moments[0] = min(max(moments[0], 0.0), float(n))
    scalars = np.array([result.accuracy * n, min(result.loss, LOSS_BOUND) * n / LOSS_BOUND, float(result.positives)])
    accuracy, loss, positives = noised(scalars, "scalars")
    return replace(
        result,
        weights=new_params[:-1],
        bias=float(new_params[-1]),
        accuracy=float(min(max(accuracy / n, 0.0), 1.0)),
        loss=float(max(loss * LOSS_BOUND / n, 0.0)),
        positives=int(min(max(round(positives), 0), n)),
        curvature=curvature,
        normal_histogram=histogram,
        normal_moments=moments,
    )


def epsilon_spent(rounds: int, noise_multiplier: float, delta: float) -> float:
    """Epsilon at ``delta`` of a device that sent ``rounds`` updates with this noise multiplier.

    The Gaussian mechanism composed ``rounds`` times, accounted in Rényi DP (no subsampling:
    every round of the device is released). Infinite without noise; 0 for no round.

    >>> round(epsilon_spent(1, 1.0, 1e-5), 2), round(epsilon_spent(100, 1.0, 1e-5), 1)
    (4.73, 96.1)
    >>> epsilon_spent(0, 1.0, 1e-5), epsilon_spent(5, 0.0, 1e-5)
    (0.0, inf)
    """
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0.0:
        return math.inf
    import dp_accounting  # a heavy import (absl, mpmath): only where epsilon is asked for

    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier), rounds)
    return float(accountant.get_epsilon(delta))
