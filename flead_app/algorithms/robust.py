"""Faulty devices: what a faulty update is (fault injection, for experiments) and how the server bounds every update.

A device whose software or data has gone wrong sends an update that is still well-formed JSON.
``corrupt_update`` makes the faulty updates of the experiments in docs/learning.md ("Faulty
devices") from a device's honest one, as a compromised device would send it: the fault is applied
to the change w - base and to the round's curvature consistently, so that the averaging
aggregators and online Newton see the same fault. The kinds (``FAULT_KINDS``), field by field:

* ``nonfinite``: a diverged round: weights and bias NaN, the gradient +inf. JSON has no NaN or
  infinity (orjson writes null), so the record fails ``LocalModelUpdate`` validation and is
  dead-lettered with a count; it never reaches the server.
* ``scale`` (x ``SCALE``): the step amplified: weights and bias base + 100 (w - base), the gradient
  x100 (its Newton step -H^-1 g is then 100x too). The Hessian, the normal-score histogram and the
  normal moments describe the data the round saw, not its step, and stay as they are.
* ``flip``: the step reversed: base - (w - base), the gradient negated (its Newton step points
  the other way); Hessian, histogram and moments as they are.
* ``samples`` (x ``SAMPLES``): the round claims 1000x its data, consistently: samples and
  positives x1000, and everything that is a sum over samples with them: gradient, Hessian,
  histogram counts and normal moments x1000. The weights are the honest ones.

Which devices are faulty: ``fault_of``, a stable hash of the device id (independent of the held-out
devices' hash), ``share`` of the fleet, each faulty device with one kind of the configured list.

The server's defence, before a buffer is aggregated (``bound_updates``, ``UpdateBound``):

0. **Infeasible curvature is refused** (``curvature_feasible``): a gradient and Hessian that no
   log-loss over the claimed samples can have (a negated or amplified gradient) is not a round's;
   the update is left out of the version (counted). This is what stops a sign flip of honest size,
   which the L2 bound below lets through by design.
1. **Claimed samples** are capped at what a round can hold, and at ``FLEAD_UPDATE_MEDIAN_SAMPLES``
   (3) x the buffer's median normals: a device claiming 1000x its data then counts as at most
   three typical rounds (an honest device whose rounds hold more than 3x the median, a fast
   sensor in a fleet of slow ones, is weighed as three, which is the price). Normal readings are released as they
   arrive and a round runs every ``FLEAD_TRAIN_EVERY`` readings, so a round holds at most that many
   normals (a message of several readings can overshoot: x ``FLEAD_UPDATE_SAMPLES_SLACK``, 1.5);
   positives come when a labelled window closes, so a round can hold a window's worth
   (x ``FLEAD_UPDATE_POSITIVES_SLACK``, 20: NAB's longest releases ~750 readings). An update
   claiming more is scaled down as a whole (every per-sample sum by the same factor), so its
   statistics stay consistent. With one cap of 20 x 50 on all samples, a device claiming 1000x its
   ~8 readings still counted as ~120 rounds: on the simulator with 20% faulty devices held-out F1
   was 0.58 against 0.77 clean, and 0.77 with these two caps (seed 1; docs/learning.md).
2. **Where it started**: ``base_params`` are the server's own parameters of the version the update
   names, when the server still has them (a device cannot claim another starting point).
3. **The L2 bound** (``norm_multiple``, ``FLEAD_UPDATE_NORM_BOUND``, x the buffer's median): for
   the averaging aggregators the change [w, b] - base, for Newton the gradient, is clipped to
   ``norm_multiple`` x the median over the buffer of norm / residual mass, times the update's own
   residual mass m = positives (1 - prior) + normals x prior (``prior``: the prior anomaly rate):
   a round's gradient (and SGD's change) is a sum of (p - y) x, and |p - y| is ~1 - prior for a
   positive and ~prior for a normal reading. Without that, the rare rounds with positives (many
   times the gradient of the typical round of normal readings, and the only rounds that teach the
   model what an anomaly is) are what a median bound clips: on the simulator the global model then
   fell from F1 0.77 to 0.02 without a single faulty device (seed 1, held-out readings). For
   Newton the Hessian's trace per sample is bounded the same way (after projecting it on the
   positive semi-definite cone: a negative curvature would make the server's system indefinite).
   The median is robust while fewer than half of a buffer's updates are faulty, so no norm has to
   be guessed in the features' units: worst-case per-sample bounds (|p - y| <= 1, p (1 - p) <= 1/4
   times the largest ||x||^2) are ~100x what honest rounds of normal readings report, and would
   not stop a x100 fault.

Coordinate median and trimmed mean (``FLEAD_AGGREGATOR``) ignore sample counts and extreme
coordinates on top of this.

>>> u = LocalModelUpdate("d1", 1, 0, [0.3, 0.1], -2.9, 0.9, 0.1, 40, "2025-01-01T00:00:00.000Z",
...                      base_params=[0.0, 0.0, -3.0])
>>> corrupt_update(u, "flip").weights, round(corrupt_update(u, "flip").bias, 3)
([-0.3, -0.1], -3.1)
>>> corrupt_update(u, "samples").samples
40000
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from flead_app.algorithms.second_order import pack_symmetric, unpack_symmetric
from flead_app.models import LocalModelUpdate

FAULT_KINDS = ("nonfinite", "scale", "flip", "samples")
SCALE = 100.0  # ``scale``: the step times this
SAMPLES = 1000  # ``samples``: the claimed data times this
FAULT_SALT = "faulty"  # the faulty devices' hash is not the held-out devices'
#: a round of normal readings only whose readings' probability-weighted mean probability exceeds
#: this (from its gradient and Hessian) is refused: an amplified gradient, not a round
MAX_NORMAL_PROBABILITY = 0.9


def fault_of(device_id: str, share: float, kinds: Sequence[str] = FAULT_KINDS) -> str | None:
    """The fault kind of ``device_id``, or None for a healthy device: ``share`` of the devices (a
    stable CRC-32 bucket of "faulty|id"), each with one of ``kinds`` (by the same bucket).

    >>> fault_of("device_1", 0.0), fault_of("device_1", 1.0, ("flip",))
    (None, 'flip')
    >>> faulty = [fault_of(f"device_{i}", 0.2) for i in range(2407)]
    >>> round(sum(f is not None for f in faulty) / 2407, 3), sorted(set(faulty) - {None}) == sorted(FAULT_KINDS)
    (0.193, True)
    """
    if share <= 0 or not kinds:
        return None
    bucket = zlib.crc32(f"{FAULT_SALT}|{device_id}".encode()) % 10_000
    cut = int(round(min(share, 1.0) * 10_000))
    if bucket >= cut:
        return None
    return kinds[bucket * len(kinds) // cut]


def parse_kinds(text: str) -> tuple[str, ...]:
    """A comma-separated list of fault kinds (the setting ``FLEAD_FAULT_KINDS``), checked.

    >>> parse_kinds("scale, flip")
    ('scale', 'flip')
    """
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown or not kinds:
        raise ValueError(f"fault kinds are some of {', '.join(FAULT_KINDS)}, got {text!r}")
    return kinds


def _base(update: LocalModelUpdate) -> np.ndarray:
    if update.base_params is not None:
        return np.asarray(update.base_params, dtype=np.float64)
    return np.zeros(len(update.weights) + 1)


def _with_params(update: LocalModelUpdate, params: np.ndarray) -> LocalModelUpdate:
    return replace(update, weights=params[:-1].tolist(), bias=float(params[-1]))


def corrupt_update(update: LocalModelUpdate, kind: str) -> LocalModelUpdate:
    """``update`` as a device with fault ``kind`` sends it (fault injection: the module docstring
    says what each kind does to each field).

    >>> u = LocalModelUpdate("d1", 1, 0, [0.3], -2.9, 0.9, 0.1, 4, "2025-01-01T00:00:00.000Z",
    ...                      base_params=[0.0, -3.0], curvature=[1.0, 2.0, 0.5, 0.1, 0.4])
    >>> s = corrupt_update(u, "scale")
    >>> [round(w, 6) for w in s.weights], round(s.bias, 6), s.curvature
    ([30.0], 7.0, [100.0, 200.0, 0.5, 0.1, 0.4])
    >>> corrupt_update(u, "nonfinite").curvature[0]
    inf
    """
    base = _base(update)
    params = np.append(np.asarray(update.weights, dtype=np.float64), update.bias)
    curvature = None if update.curvature is None else np.asarray(update.curvature, dtype=np.float64)
    k = params.shape[0]
    if kind == "nonfinite":
        nan = np.full(k, math.nan)
        if curvature is not None:
            curvature = curvature.copy()
            curvature[:k] = math.inf
        out = _with_params(update, nan)
    elif kind in ("scale", "flip"):
        factor = SCALE if kind == "scale" else -1.0
        out = _with_params(update, base + factor * (params - base))
        if curvature is not None:
            curvature = curvature.copy()
            curvature[:k] *= factor
    elif kind == "samples":
        return _scaled_data(update, float(SAMPLES))
    else:
        raise ValueError(f"unknown fault kind {kind!r}; choose one of {FAULT_KINDS}")
    return replace(out, curvature=None if curvature is None else curvature.tolist())


def _scaled_data(update: LocalModelUpdate, factor: float) -> LocalModelUpdate:
    """``update`` with every per-sample sum times ``factor``: samples, positives, gradient, Hessian,
    histogram counts, normal moments (the weights are not a sum and stay)."""
    samples = max(1, int(round(update.samples * factor)))
    positives = min(samples, int(round(update.positives * factor)))
    hist = {b: int(round(c * factor)) for b, c in update.normal_histogram.items()}
    return replace(
        update,
        samples=samples,
        positives=positives,
        curvature=None if update.curvature is None else (np.asarray(update.curvature) * factor).tolist(),
        normal_histogram={b: min(c, samples) for b, c in hist.items() if c > 0},
        normal_moments=None if update.normal_moments is None else (np.asarray(update.normal_moments) * factor).tolist(),
    )


def curvature_feasible(update: LocalModelUpdate, tolerance: float = 1e-7) -> bool:
    """Whether the update's gradient and Hessian can be those of a summed log-loss over the
    ``samples`` readings it claims, ``positives`` of them labelled (True without curvature).

    The bias coordinate settles it without the data: with p_i the start model's probabilities,
    the gradient's bias entry is g_b = sum (p_i - y_i), so S = g_b + positives = sum p_i, and the
    Hessian's is H_bb = sum p_i (1 - p_i) = S - sum p_i^2 <= S - S^2 / n (Cauchy-Schwarz). An honest
    round meets 0 <= H_bb <= S (n - S) / n exactly (up to rounding: ``tolerance`` x n); a round of
    normal readings whose gradient was negated has S < 0. In a round of normal readings only,
    H_bb / S = 1 - sum p_i^2 / sum p_i is one minus the probability-weighted mean probability; a
    gradient amplified a times divides it by a, so a round below 1 - ``MAX_NORMAL_PROBABILITY``
    (0.1) is refused: every amplification above 10 (below it the L2 bound takes over), and honest
    rounds only when the start model gave their normal readings a weighted mean probability
    above 0.9. A fault that scales every sum by one factor (claimed samples) stays feasible: the
    caps are for it. The caller skips noised updates (``FLEAD_DP_NOISE``): the noise breaks the
    identities by design.

    >>> u = LocalModelUpdate("d", 1, 0, [0.0], -3.0, 1.0, 0.1, 4, "2025-01-01T00:00:00Z",
    ...                      curvature=[0.1, 0.2, 0.0, 0.0, 0.18])  # S = 0.2, H_bb = 0.18 <= 0.2 x 3.8 / 4
    >>> curvature_feasible(u), curvature_feasible(corrupt_update(u, "flip"))
    (True, False)
    """
    if update.curvature is None:
        return True
    k = len(update.weights) + 1
    packed = np.asarray(update.curvature, dtype=np.float64)
    n = float(update.samples)
    s = float(packed[k - 1]) + update.positives
    h = float(packed[-1])  # the last entry of the packed upper triangle is H[k-1, k-1], the bias's
    slack = tolerance * max(n, 1.0)
    if not -slack <= h <= s * (n - s) / max(n, 1e-12) + slack:
        return False
    # The limit sits near certainty: refusing honest rounds the model gets most wrong would refuse
    # what corrects it (a limit of 0.5 did, in a feedback loop: docs/learning.md, Faulty devices).
    return update.positives > 0 or h + slack >= (1.0 - MAX_NORMAL_PROBABILITY) * s


@dataclass(frozen=True)
class UpdateBound:
    """The server's bound on each update (``bound_updates``); None switches a part off.

    >>> UpdateBound.from_settings(type("S", (), {"train_every": 50, "update_samples_slack": 1.5,
    ...     "update_positives_slack": 20.0, "update_norm_bound": 10.0, "prior_anomaly_rate": 0.04,
    ...     "update_median_samples": 3.0, "dp_noise": 0.0})())  # doctest: +NORMALIZE_WHITESPACE
    UpdateBound(max_normals=75, max_positives=1000, norm_multiple=10.0, prior=0.04, median_normals=3.0,
                check_curvature=True)
    """

    max_normals: int | None = None
    max_positives: int | None = None
    norm_multiple: float | None = None
    prior: float = 0.04  # the prior anomaly rate: |p - y| of a normal reading, 1 - it of a positive
    median_normals: float | None = None  # normals capped at this x the buffer's median too
    check_curvature: bool = False  # refuse updates whose curvature no log-loss can have

    @classmethod
    def from_settings(cls, settings: object) -> UpdateBound:
        s = settings
        every, multiple = s.train_every, s.update_norm_bound  # type: ignore[attr-defined]
        slack, positives = s.update_samples_slack, s.update_positives_slack  # type: ignore[attr-defined]
        return cls(
            max_normals=max(1, int(round(every * slack))) if slack > 0 else None,
            max_positives=max(1, int(round(every * positives))) if positives > 0 else None,
            norm_multiple=multiple if multiple > 0 else None,
            prior=s.prior_anomaly_rate,  # type: ignore[attr-defined]
            median_normals=s.update_median_samples if s.update_median_samples > 0 else None,  # type: ignore[attr-defined]
            check_curvature=s.dp_noise <= 0,  # type: ignore[attr-defined]
        )


@dataclass(frozen=True)
class Bounded:
    """What ``bound_updates`` did: the updates to aggregate, and how many it changed per reason."""

    updates: tuple[LocalModelUpdate, ...]
    infeasible: int = 0  # refused: a curvature no log-loss over the claimed samples can have
    samples_capped: int = 0
    change_clipped: int = 0  # averaging: the change; newton: the gradient
    curvature_clipped: int = 0  # newton: the Hessian's trace (or a negative eigenvalue)


def _clip(norms: np.ndarray, scale: np.ndarray, multiple: float) -> np.ndarray:
    """Per update, the factor (<= 1) that brings its norm within ``multiple`` x the median of
    norm / scale, times its own ``scale``.

    >>> _clip(np.array([1.0, 2.0, 3.0, 300.0]), np.ones(4), 10.0).round(3).tolist()
    [1.0, 1.0, 1.0, 0.083]
    >>> _clip(np.array([1.0, 2.0, 3.0, 300.0]), np.array([1.0, 1.0, 1.0, 100.0]), 10.0).tolist()
    [1.0, 1.0, 1.0, 1.0]
    """
    scale = np.maximum(np.asarray(scale, dtype=np.float64), 1e-12)
    limit = multiple * float(np.median(norms / scale)) * scale
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms > limit, limit / norms, 1.0)


def residual_mass(updates: Sequence[LocalModelUpdate], prior: float) -> np.ndarray:
    """Per update, the expected sum of |p - y| over its round: positives (1 - prior) + normals x prior.

    >>> residual_mass([LocalModelUpdate("d", 1, 0, [0.0], 0.0, 1.0, 0.0, 50, "2025-01-01T00:00:00Z", positives=2)],
    ...               0.04).round(2).tolist()
    [3.84]
    """
    pos = np.array([u.positives for u in updates], dtype=np.float64)
    n = np.array([u.samples for u in updates], dtype=np.float64)
    return pos * (1.0 - prior) + (n - pos) * prior


def psd(matrix: np.ndarray) -> np.ndarray:
    """The nearest positive semi-definite matrix (negative eigenvalues set to 0; a round of fewer
    readings than parameters has eigenvalues of 0 that rounding makes -1e-17: those stay).

    >>> psd(np.array([[1.0, 0.0], [0.0, -2.0]])).tolist()
    [[1.0, 0.0], [0.0, 0.0]]
    """
    values, vectors = np.linalg.eigh(matrix)
    if values.min() >= -1e-9 * max(float(values.max()), 1.0):  # rounding on a rank-deficient Hessian
        return matrix
    return (vectors * np.maximum(values, 0.0)) @ vectors.T


def bound_updates(
    updates: Sequence[LocalModelUpdate],
    bound: UpdateBound,
    history: Mapping[int, Sequence[float]] | None = None,
    second_order: bool = False,
) -> Bounded:
    """The updates of a buffer as the server aggregates them: samples capped, bases the server's
    own, changes (``second_order``: gradients and Hessians) within the L2 bound.

    ``history``: the server's parameters by global version (weights then bias). Honest updates
    within the bound come back unchanged.

    >>> mk = lambda i, w, n=40: LocalModelUpdate(f"d{i}", 1, 0, [w, 0.0], -3.0, 0.9, 0.1, n,
    ...                                          "2025-01-01T00:00:00.000Z")
    >>> ups = [mk(0, 0.1), mk(1, 0.2), mk(2, 0.15), mk(3, 20.0), mk(4, 0.1, 40_000)]
    >>> out = bound_updates(ups, UpdateBound(75, 1000, 10.0), {0: (0.0, 0.0, -3.0)})
    >>> [round(u.weights[0], 3) for u in out.updates], out.updates[4].samples, out.change_clipped
    ([0.1, 0.2, 0.15, 1.5, 0.1], 75, 1)
    """
    out = [u for u in updates if not bound.check_curvature or curvature_feasible(u)]
    infeasible = len(updates) - len(out)
    max_normals = bound.max_normals
    if bound.median_normals is not None and out:
        median = bound.median_normals * max(1.0, float(np.median([u.samples - u.positives for u in out])))
        max_normals = median if max_normals is None else min(max_normals, median)
    capped = 0
    for i, u in enumerate(out):
        factor = 1.0
        if max_normals is not None and u.samples - u.positives > max_normals:
            factor = max_normals / (u.samples - u.positives)
        if bound.max_positives is not None and u.positives > bound.max_positives:
            factor = min(factor, bound.max_positives / u.positives)
        if factor < 1.0:
            out[i] = _scaled_data(u, factor)
            capped += 1
    history = history or {}
    for i, u in enumerate(out):
        known = history.get(u.global_version)
        if known is not None and len(known) == len(u.weights) + 1 and u.base_params is not None:
            if list(known) != list(u.base_params):
                out[i] = replace(u, base_params=[float(x) for x in known])
    clipped = curved = 0
    if bound.norm_multiple is not None and out:
        if second_order:
            clipped, curved = _bound_curvature(out, bound.norm_multiple, bound.prior)
        else:
            clipped = _bound_changes(out, bound.norm_multiple, history, bound.prior)
    return Bounded(tuple(out), infeasible, capped, clipped, curved)


def _bound_changes(
    out: list[LocalModelUpdate], multiple: float, history: Mapping[int, Sequence[float]], prior: float
) -> int:
    """Clip each update's change [w, b] - base in place, the base as ``fedbuff.federate`` takes it:
    the version the update started from, else the current one (the newest in ``history``), else 0."""
    params = np.array([[*u.weights, u.bias] for u in out], dtype=np.float64)
    current = history[max(history)] if history else [0.0] * params.shape[1]
    bases = np.array([history.get(u.global_version, current) for u in out], dtype=np.float64)
    change = params - bases
    factor = _clip(np.linalg.norm(change, axis=1), residual_mass(out, prior), multiple)
    for i in np.flatnonzero(factor < 1.0).tolist():
        out[i] = _with_params(out[i], bases[i] + factor[i] * change[i])
    return int((factor < 1.0).sum())


def _bound_curvature(out: list[LocalModelUpdate], multiple: float, prior: float) -> tuple[int, int]:
    """Clip each Newton update's gradient norm and Hessian trace in place (updates without
    curvature are left alone: the Newton step skips them)."""
    idx = [i for i, u in enumerate(out) if u.curvature is not None]
    if not idx:
        return 0, 0
    k = len(out[idx[0]].weights) + 1
    packed = np.array([out[i].curvature for i in idx], dtype=np.float64)
    grads = packed[:, :k]
    hessians = [psd(unpack_symmetric(p[k:])) for p in packed]
    curved_updates = [out[i] for i in idx]
    gf = _clip(np.linalg.norm(grads, axis=1), residual_mass(curved_updates, prior), multiple)
    traces = np.array([np.trace(h) for h in hessians])
    hf = _clip(traces, np.array([u.samples for u in curved_updates], dtype=np.float64), multiple)
    curved = 0
    for j, i in enumerate(idx):
        h = hessians[j] * hf[j]
        changed = hf[j] < 1.0 or not np.array_equal(h, unpack_symmetric(packed[j, k:]))
        if gf[j] < 1.0 or changed:
            curved += int(changed)
            out[i] = replace(out[i], curvature=np.concatenate((grads[j] * gf[j], pack_symmetric(h))).tolist())
    return int((gf < 1.0).sum()), curved
