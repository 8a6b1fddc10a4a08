"""Z-score anomaly detection and the features the local models learn from.

Alarms use the description's rule: z against the running mean and standard deviation of
*every* reading so far, anomalous when |z| > 2.5.

The model's features are built differently, for two reasons (docs/learning.md has the numbers):

* Comparable across devices. Raw means and standard deviations are in each device's own units
  (degrees, percent, ms), so weights averaged across devices would mean nothing on them. Every
  feature here is a surprise score in units of the device's own standard deviations.
* Not absorbed by the anomaly itself. Running statistics over every reading soak up a level
  shift or a drift within a few readings (the anomaly becomes part of "normal"), and then |z|
  falls back while the episode goes on. The features use a *robust baseline*: running mean and
  standard deviation over the readings that were within ``ROBUST_GATE`` (the default alarm
  threshold) of it, the std divided by ``ROBUST_STD_SHARE`` so that it is unbiased for normal
  readings despite the gate (the same idea as MAD's 1.4826). A change that persists for more
  than ``ROBUST_PATIENCE`` readings is let in, so a permanent new level becomes the new normal.

The four features (``FEATURE_NAMES``), each minus its mean under normal operation (readings
i.i.d. normal), so a normal reading sits near 0 and SGD from zeros is well conditioned:

0. ``robust_abs_z``: |x - robust mean| / robust std, clipped at ``Z_CLIP``; centred by E|Z|.
1. ``robust_ewm_abs_z``: exponentially weighted mean (alpha ``EWM_ALPHA``) of that |z|; it rises
   during noise bursts and stays up during long episodes; centred by E|Z|.
2. ``stillness_z``: how improbably *small* the step from the previous reading is, as the z
   whose two-sided tail has that probability. Under normal noise the step in standard deviations
   is N(0, 2), so P = erf(|step| / 2) is uniform and the score is distributed as |Z|, like the
   other features; a stuck sensor (step 0) scores ``Z_CLIP``. Centred by E|Z|.
3. ``robust_ewm_z``: |exponentially weighted mean of the signed robust z|: persistent offsets
   (level shifts, drifts) add up, noise cancels; centred by its normal mean
   E|Z| * sqrt(alpha / (2 - alpha)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from flead_app.algorithms.running_stats import RunningStats

FEATURE_NAMES = ("robust_abs_z", "robust_ewm_abs_z", "stillness_z", "robust_ewm_z")
NUM_FEATURES = len(FEATURE_NAMES)
Z_CLIP = 10.0
EWM_ALPHA = 0.2
ROBUST_GATE = 2.5  # readings with |robust z| above this do not update the robust baseline...
ROBUST_PATIENCE = 60  # ...unless this many in a row were outside it: then the change is the new normal
ABS_Z_MEAN = math.sqrt(2.0 / math.pi)  # E|Z| for Z ~ N(0, 1)
EWM_Z_ABS_MEAN = ABS_Z_MEAN * math.sqrt(EWM_ALPHA / (2.0 - EWM_ALPHA))  # E|EWM of i.i.d. N(0, 1)|
FEATURE_CENTRES = (ABS_Z_MEAN, ABS_Z_MEAN, ABS_Z_MEAN, EWM_Z_ABS_MEAN)
# std below this share of the level (or absolute floor) counts as "no spread yet"
_STD_FLOOR_REL = 1e-6
_STD_FLOOR_ABS = 1e-9
_INV_CDF = NormalDist().inv_cdf


def _gated_std_share(gate: float) -> float:
    """Std of normal readings the gate lets in, as a share of the true std (self-consistently).

    The baseline admits |x - mean| <= gate * its own std, so that std s solves
    s^2 = Var(Z | |Z| <= gate * s); dividing by s makes the robust z unbiased under normality.
    """
    s = 1.0
    for _ in range(200):
        c = gate * s
        s = math.sqrt(1.0 - 2.0 * c * math.exp(-c * c / 2.0) / math.sqrt(2.0 * math.pi) / math.erf(c / math.sqrt(2.0)))
    return s


ROBUST_STD_SHARE = _gated_std_share(ROBUST_GATE)  # 0.937 for the gate 2.5
_STILL_P_MIN = math.erfc(Z_CLIP / math.sqrt(2.0))  # two-sided tail of Z_CLIP: below it the score is clipped


@dataclass(frozen=True)
class DetectorState:
    """What a device carries between batches for scoring and features."""

    stats: RunningStats = RunningStats()  # every reading: the z the alarms use
    last_value: float | None = None
    ewm_abs_z: float = ABS_Z_MEAN  # EWM of the robust |z| (starts at its normal mean)
    robust: RunningStats = RunningStats()  # readings within the gate: the features' baseline
    ewm_z: float = 0.0  # EWM of the signed robust z
    outliers: int = 0  # consecutive scored readings outside the gate


@dataclass(frozen=True)
class Scored:
    """Per-reading results of ``score_batch``."""

    z: np.ndarray  # z-score against the history before each reading (0 while warming up)
    features: np.ndarray  # shape (k, NUM_FEATURES)
    scored: np.ndarray  # bool: enough history to score
    state: DetectorState


def _std_floor(mean: float) -> float:
    return max(_STD_FLOOR_REL * abs(mean), _STD_FLOOR_ABS)


def stillness(step_z: float) -> float:
    """The |z| whose two-sided normal tail equals P(|N(0, 2)| <= |step_z|); Z_CLIP for no step.

    >>> stillness(0.0), round(stillness(1.0), 3), round(stillness(5.0), 3)
    (10.0, 0.643, 0.001)
    """
    p = math.erf(abs(step_z) / 2.0)
    if p < _STILL_P_MIN:
        return Z_CLIP
    if p >= 1.0:
        return 0.0
    return min(-_INV_CDF(p / 2.0), Z_CLIP)


def score_batch(state: DetectorState, values: np.ndarray, min_history: int = 10) -> Scored:
    """Score a device's readings in order, each against everything before it.

    One loop on Python floats: the robust baseline decides reading by reading what it lets in,
    so it cannot be vectorised, and for the short batches the worker sees a loop is the fast path.

    >>> out = score_batch(DetectorState(), np.array([10.0, 10.2, 9.8, 10.1, 9.9, 10.0, 10.3, 9.7, 10.0, 10.1, 14.0]))
    >>> out.scored[-2:].tolist(), round(float(out.z[-1]), 1), out.features.shape, out.state.stats.count
    ([False, True], 10.0, (11, 4), 11)
    """
    values = np.asarray(values, dtype=np.float64)
    n, mean, m2 = state.stats.count, state.stats.mean, state.stats.m2
    rn, rmean, rm2 = state.robust.count, state.robust.mean, state.robust.m2
    last, ewm_abs, ewm_z, outliers = state.last_value, state.ewm_abs_z, state.ewm_z, state.outliers
    k = values.shape[0]
    zs, ok = [0.0] * k, [False] * k
    rows = []
    need = max(min_history, 2)
    alpha, decay = EWM_ALPHA, 1.0 - EWM_ALPHA
    c0, c1, c2, c3 = FEATURE_CENTRES
    sqrt = math.sqrt
    for i, x in enumerate(values.tolist()):
        if n >= need:
            std = max(sqrt(m2 / (n - 1)), _std_floor(mean))
            z = min(max((x - mean) / std, -Z_CLIP), Z_CLIP)
            step = 0.0 if last is None else min(max((x - last) / std, -Z_CLIP), Z_CLIP)
            rstd = max(sqrt(rm2 / (rn - 1)) / ROBUST_STD_SHARE, _std_floor(rmean)) if rn > 1 else std
            rz = min(max((x - rmean) / rstd, -Z_CLIP), Z_CLIP)
            still = stillness(step)
            ewm_abs = decay * ewm_abs + alpha * abs(rz)
            ewm_z = decay * ewm_z + alpha * rz
            zs[i] = z
            ok[i] = True
            rows.append((abs(rz) - c0, ewm_abs - c1, still - c2, abs(ewm_z) - c3))
            inside = abs(rz) <= ROBUST_GATE
            outliers = 0 if inside else outliers + 1
            admit = inside or outliers > ROBUST_PATIENCE
        else:  # warming up: every reading is history for both baselines
            rows.append((0.0, 0.0, 0.0, 0.0))
            admit = True
        n += 1
        delta = x - mean
        mean += delta / n
        m2 += delta * (x - mean)
        if admit:
            rn += 1
            delta = x - rmean
            rmean += delta / rn
            rm2 += delta * (x - rmean)
        last = x
    features = np.array(rows, dtype=np.float64) if k else np.empty((0, NUM_FEATURES))
    new_state = DetectorState(
        stats=RunningStats(n, mean if n else 0.0, max(m2, 0.0)),
        last_value=last,
        ewm_abs_z=ewm_abs,
        robust=RunningStats(rn, rmean if rn else 0.0, max(rm2, 0.0)),
        ewm_z=ewm_z,
        outliers=outliers,
    )
    return Scored(z=np.array(zs), features=features, scored=np.array(ok, dtype=bool), state=new_state)


def severity(z: float, threshold: float = 2.5, critical: float = 3.0) -> str | None:
    """None below ``threshold``; "warning" above it; "critical" from ``critical`` on (by |z|).

    >>> severity(2.0), severity(-2.7), severity(3.0)
    (None, 'warning', 'critical')
    """
    a = abs(z)
    if a >= critical and a > threshold:
        return "critical"
    if a > threshold:
        return "warning"
    return None
