"""The learner's features: ten unitless, per-device calibrated surprise scores.

The features of ``detection.py`` were chosen on the simulator: a cumulative robust baseline and
four Gaussian surprise scores. On real series (NAB) two things break them used alone: devices
differ in the *shape* of their distribution (heavy tails, bursts, daily cycles), so the same |z|
is routine on one device and an incident on another, and incidents are slow and wide (level
shifts, changes of volatility, a broken daily pattern) rather than spikes. So every reading gets
ten statistics, each calibrated on the device's own history (docs/learning.md has the numbers:
the union of both sets beat either alone on the simulator and in the inner cross-validation on
NAB, the model weighs them per fleet).

Six statistics of this module (all unitless: each is a ratio of quantities in the device's own
units):

0. ``level_z``: |x - L| / S, against a slow robust baseline L (Huber-clipped exponentially weighted
   mean with time constant ``TAU_LEVEL_S`` = 1 day of event time, the longest cycle most sensors
   share) and a robust scale S (EWM of the clipped |residual| times sqrt(pi/2), MAD-like: the std
   for normal noise). A residual beyond ``HUBER`` scales moves L and S only by the clip, so an
   incident is not absorbed as it happens, but a lasting change is (S grows while it lasts).
1. ``level_ewm``: |EWM (alpha ``ALPHA_SHORT``) of the signed level z|: offsets that persist add
   up, noise cancels (level shifts, drifts).
2. ``vol_up``: max(0, log(Vs / Vl)): short (alpha ``ALPHA_SHORT``) against long (the baseline's
   time constant) EWM of squared first differences. Differences remove level and slow cycles,
   so this sees noise bursts and erratic behaviour at any level.
3. ``vol_down``: max(0, -log(Vs / Vl)): the same ratio the other way: a series that stopped
   moving (stuck sensor, flat line, a dead feed).
4. ``cycle_z``: |x - P[h]| / Sc: residual against the device's daily profile P (24 hourly bins of
   the reading's UTC time of day, each a Huber EWM over about ``TAU_CYCLE_S`` = 1 week of that
   hour's readings), scale Sc as for S. Before an hour's bin has a reading it falls back to the
   level baseline. It sees a value normal for the day but wrong for the hour.
5. ``cycle_ewm``: |EWM of the signed cycle z|.

and 6-9: ``detection.score_batch``'s four (robust |z|, its EWM, stillness, |EWM of the signed
robust z|), which the worker computes anyway for the z-rule, uncentred (each >= 0 like the six).

Then *calibration*: each raw statistic f is turned into its per-device tail surprise
u = -log P_device(F >= f), estimated from a histogram of the device's own past values of that
statistic (all scored readings, labelled or not) plus a prior worth ``PRIOR_READINGS`` readings
drawn from the statistic's distribution under the null hypothesis (i.i.d. Gaussian noise,
simulated once, ``null_tables``). Under the null, and on any device once its own history
dominates, u is distributed Exp(1): the features mean the same on every device whatever its
units, tails or cycles, which is what averaging one linear model across devices needs. The model
sees u - 1 (mean 0 under the null). The histograms are refreshed every ``REFRESH`` readings of
the device (readings score against the table as of the last refresh), so the result does not
depend on how readings are batched into messages, and the calibration of a batch is vectorised.

>>> from flead_app.algorithms import detection
>>> t = np.arange(400) * 300.0
>>> x = np.random.default_rng(1).normal(10, 2, 400); x[300] += 30
>>> r = score(IncidentState(), t, x, detection.score_batch(detection.DetectorState(), x).features)
>>> r.features.shape, bool(r.features[300, 0] > r.features[299, 0] + 2)
((400, 10), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache

import numpy as np

#: the six statistics this module computes (``raw_statistics``)
STAT_NAMES = ("level_z", "level_ewm", "vol_up", "vol_down", "cycle_z", "cycle_ewm")
NUM_STATS = len(STAT_NAMES)
#: ``detection.py``'s four features (chosen on the simulator), uncentred, calibrated the same way
DETECTOR_FEATURE_NAMES = ("robust_abs_z", "robust_ewm_abs_z", "stillness_z", "robust_ewm_z")
#: what the model sees: all ten, calibrated
FEATURE_NAMES = STAT_NAMES + DETECTOR_FEATURE_NAMES
NUM_FEATURES = len(FEATURE_NAMES)
TAU_LEVEL_S = 86_400.0  # the slow baseline's time constant: one day of event time
TAU_CYCLE_S = 7 * 86_400.0  # each hour-of-day bin remembers about a week of that hour
CYCLE_BINS = 24
ALPHA_SHORT = 0.2  # short EWMs: about 5 readings (the detector's EWM_ALPHA)
HUBER = 3.0  # residuals are clipped at this many scales before they update a baseline
Z_CLIP = 10.0
RAW_CLIP = 20.0
MIN_HISTORY = 10  # readings before the first scored one
REFRESH = 32  # readings of a device between two refreshes of its calibration tables
PRIOR_READINGS = 200.0  # weight of the null distribution in each calibration table, in readings
#: bin edges of the calibration histograms (every raw statistic is >= 0 and clipped at RAW_CLIP)
EDGES = np.concatenate(([0.0], np.geomspace(0.05, RAW_CLIP, 23)))
NUM_BINS = EDGES.shape[0] - 1
_WIDTHS = np.diff(EDGES)
_SQRT_HALF_PI = math.sqrt(math.pi / 2.0)  # E|Z| = sqrt(2/pi): mean |residual| * this = std
_FLOOR_REL, _FLOOR_ABS = 1e-6, 1e-9


@dataclass(frozen=True)
class IncidentState:
    """What a device carries between messages for these features (``state_floats``: its size)."""

    count: int = 0  # readings seen
    last_t: float = 0.0
    last_x: float = 0.0
    level: float = 0.0
    spread: float = 0.0  # EWM of the clipped |x - level|
    ewm_z: float = 0.0
    var_short: float = 0.0  # EWMs of squared first differences
    var_long: float = 0.0
    profile: tuple[float, ...] = (0.0,) * CYCLE_BINS
    profile_n: tuple[int, ...] = (0,) * CYCLE_BINS
    cycle_spread: float = 0.0
    ewm_zc: float = 0.0
    #: calibration counts per feature and bin as of the last refresh, and those since it
    table: np.ndarray = field(default_factory=lambda: np.zeros((NUM_FEATURES, NUM_BINS)))
    fresh: np.ndarray = field(default_factory=lambda: np.zeros((NUM_FEATURES, NUM_BINS)))
    #: ``prepare(table)``, derived (not serialised): recomputed when missing
    prepared: tuple | None = field(default=None, compare=False, repr=False)

    def state_floats(self) -> int:
        """Numbers this state serialises to (the device row's share for these features).

        >>> IncidentState().state_floats()  # 12 scalars, the daily profile, two tables of 10 x 23
        520
        """
        return 12 + 2 * CYCLE_BINS + 2 * self.table.shape[0] * NUM_BINS

    def to_dict(self) -> dict:
        """JSON-ready; the tables are counts, so whole numbers (short on the wire).

        >>> IncidentState.from_dict(IncidentState(count=3).to_dict()).count
        3
        """
        return {
            "scalars": [self.count, self.last_t, self.last_x, self.level, self.spread, self.ewm_z,
                        self.var_short, self.var_long, self.cycle_spread, self.ewm_zc],
            "profile": list(self.profile),
            "profile_n": list(self.profile_n),
            "table": self.table.astype(np.int64).tolist(),
            "fresh": self.fresh.astype(np.int64).tolist(),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> IncidentState:
        n, last_t, last_x, level, spread, ewm_z, vs, vl, cspread, ewm_zc = d["scalars"]
        return cls(
            count=int(n), last_t=float(last_t), last_x=float(last_x), level=float(level), spread=float(spread),
            ewm_z=float(ewm_z), var_short=float(vs), var_long=float(vl),
            profile=tuple(float(v) for v in d["profile"]), profile_n=tuple(int(v) for v in d["profile_n"]),
            cycle_spread=float(cspread), ewm_zc=float(ewm_zc),
            table=np.asarray(d["table"], dtype=np.float64).reshape(NUM_FEATURES, NUM_BINS),
            fresh=np.asarray(d["fresh"], dtype=np.float64).reshape(NUM_FEATURES, NUM_BINS),
        )  # fmt: skip


@dataclass(frozen=True)
class IncidentScored:
    raw: np.ndarray  # (k, NUM_FEATURES) raw statistics (the six, then the detector's four)
    features: np.ndarray  # (k, NUM_FEATURES) calibrated surprises minus 1 (the model's input)
    scored: np.ndarray  # bool: enough history
    state: IncidentState


def _floor(level: float) -> float:
    return _FLOOR_REL * abs(level) + _FLOOR_ABS


def raw_statistics(
    state: IncidentState, timestamps: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, IncidentState]:
    """The six statistics of each reading against the history before it, in order.

    One loop on Python floats (each baseline decides per reading how much of it to take in).

    >>> import numpy as np
    >>> t = np.arange(200) * 300.0
    >>> x = np.r_[np.random.default_rng(0).normal(0, 1, 150), np.full(50, 8.0)]
    >>> raw, ok, st = raw_statistics(IncidentState(), t, x)
    >>> bool(raw[150, 0] > 6) and bool(raw[120, 0] < 4) and st.count
    200
    """
    ts = np.asarray(timestamps, dtype=np.float64).tolist()
    xs = np.asarray(values, dtype=np.float64).tolist()
    k = len(xs)
    out = np.zeros((k, NUM_STATS))
    ok = np.zeros(k, dtype=bool)
    n, last_t, last_x = state.count, state.last_t, state.last_x
    level, spread, ewm_z = state.level, state.spread, state.ewm_z
    vs, vl = state.var_short, state.var_long
    prof, prof_n = list(state.profile), list(state.profile_n)
    cspread, ewm_zc = state.cycle_spread, state.ewm_zc
    a_s, keep_s = ALPHA_SHORT, 1.0 - ALPHA_SHORT
    exp, log = math.exp, math.log
    seen_dt, decay_l, decay_c = -1.0, 0.0, 0.0  # the step's decays, recomputed only when the step changes
    for i in range(k):
        t, x = ts[i], xs[i]
        if n == 0:
            level, last_x, last_t, n = x, x, t, 1
            b = int(t % 86_400.0 // 3_600.0) % CYCLE_BINS
            prof[b], prof_n[b] = x, 1
            continue
        dt = t - last_t if t > last_t else 0.0
        if dt != seen_dt:
            seen_dt = dt
            decay_l = 1.0 - exp(-dt / TAU_LEVEL_S)
            decay_c = 1.0 - exp(-dt * CYCLE_BINS / TAU_CYCLE_S)
        a_l = 1.0 / n
        if decay_l > a_l:
            a_l = decay_l
        fl = _FLOOR_REL * abs(level) + _FLOOR_ABS
        s = spread * _SQRT_HALF_PI
        if s < fl:
            s = fl
        r = x - level
        z = r / s
        z = Z_CLIP if z > Z_CLIP else -Z_CLIP if z < -Z_CLIP else z
        d = x - last_x
        d2 = d * d
        vs = keep_s * vs + a_s * d2
        f2 = fl * fl
        ratio = log((vs + f2) / (vl + f2))
        b = int(t % 86_400.0 // 3_600.0) % CYCLE_BINS
        pn = prof_n[b]
        sc = cspread * _SQRT_HALF_PI
        if sc < fl:
            sc = fl
        if pn:
            rc = x - prof[b]
            zc = rc / sc
            zc = Z_CLIP if zc > Z_CLIP else -Z_CLIP if zc < -Z_CLIP else zc
        else:
            rc, zc = r, z
        ewm_z = keep_s * ewm_z + a_s * z
        ewm_zc = keep_s * ewm_zc + a_s * zc
        if n >= MIN_HISTORY:
            up = ratio if ratio > 0.0 else 0.0
            down = -ratio if ratio < 0.0 else 0.0
            out[i, 0] = abs(z)
            out[i, 1] = abs(ewm_z)
            out[i, 2] = up if up < RAW_CLIP else RAW_CLIP
            out[i, 3] = down if down < RAW_CLIP else RAW_CLIP
            out[i, 4] = abs(zc)
            out[i, 5] = abs(ewm_zc)
            ok[i] = True
        # update the baselines with the reading (Huber-clipped once they have a scale)
        lim = HUBER * s
        ar = abs(r)
        if n < 3 or spread == 0.0:
            level += a_l * r
            spread = (1.0 - a_l) * spread + a_l * ar if n > 1 else ar
        else:
            level += a_l * (lim if r > lim else -lim if r < -lim else r)
            spread = (1.0 - a_l) * spread + a_l * (ar if ar < lim else lim)
        lim2 = HUBER * HUBER * (vl if vl > f2 else f2)
        vl = (1.0 - a_l) * vl + a_l * (d2 if d2 < lim2 or n < 3 else lim2) if n > 1 else d2
        if pn:
            a_c = 1.0 / (pn + 1)
            if decay_c > a_c:
                a_c = decay_c
            limc = HUBER * sc
            arc = abs(rc)
            if cspread == 0.0:
                prof[b] += a_c * rc
                cspread = arc
            else:
                prof[b] += a_c * (limc if rc > limc else -limc if rc < -limc else rc)
                cspread = (1.0 - a_l) * cspread + a_l * (arc if arc < limc else limc)
            prof_n[b] = pn + 1
        else:
            prof[b], prof_n[b] = x, 1
        n += 1
        last_x, last_t = x, (t if t > last_t else last_t)
    new = IncidentState(
        count=n, last_t=last_t, last_x=last_x, level=level, spread=spread, ewm_z=ewm_z,
        var_short=vs, var_long=vl, profile=tuple(prof), profile_n=tuple(prof_n),
        cycle_spread=cspread, ewm_zc=ewm_zc, table=state.table, fresh=state.fresh,
    )  # fmt: skip
    return out, ok, new


def _bin_position(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bin index of each value and its share of the bin *above* it (for linear interpolation)."""
    # minimum/maximum rather than np.clip: the same values, a fraction of the call cost on short batches
    v = np.minimum(np.maximum(raw, 0.0), RAW_CLIP)
    idx = np.minimum(np.maximum(np.searchsorted(EDGES, v, side="right") - 1, 0), NUM_BINS - 1)
    above = (EDGES[idx + 1] - v) / _WIDTHS[idx]
    return idx, np.minimum(np.maximum(above, 0.0), 1.0)


def _survival(counts: np.ndarray) -> np.ndarray:
    """Per feature, counts at or above each bin's lower edge: shape (features, bins + 1)."""
    rev = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    return np.concatenate((rev, np.zeros((counts.shape[0], 1))), axis=1)


def _null_shares(raw: np.ndarray) -> np.ndarray:
    idx, _ = _bin_position(raw)
    counts = np.stack([np.bincount(idx[:, j], minlength=NUM_BINS) for j in range(raw.shape[1])]).astype(float)
    counts += 0.5  # no empty bin: the prior never claims a value is impossible
    return counts / counts.sum(axis=1, keepdims=True)


@cache
def null_tables(readings: int = 40_000, seed: int = 0) -> np.ndarray:
    """Each raw statistic's distribution under the null (i.i.d. N(0, 1), 5-minute steps), as shares per bin.

    The six statistics, then ``detection.score_batch``'s four (uncentred) on the same readings.

    >>> p = null_tables()
    >>> p.shape == (NUM_FEATURES, NUM_BINS) and bool(np.allclose(p.sum(axis=1), 1.0))
    True
    """
    from flead_app.algorithms import detection

    rng = np.random.default_rng(seed)
    t = np.arange(readings) * 300.0
    x = rng.standard_normal(readings)
    raw, ok, _ = raw_statistics(IncidentState(), t, x)
    det = detection.score_batch(detection.DetectorState(), x)
    extra = uncentred_detector_features(det.features)
    return _null_shares(np.concatenate((raw, extra), axis=1)[ok & det.scored])


def uncentred_detector_features(features: np.ndarray) -> np.ndarray:
    """``detection`` features plus their normal-operation centres: every one >= 0, like the six.

    >>> from flead_app.algorithms.detection import FEATURE_CENTRES
    >>> uncentred_detector_features(-np.array([FEATURE_CENTRES])).tolist()
    [[0.0, 0.0, 0.0, 0.0]]
    """
    return np.maximum(np.asarray(features, dtype=np.float64) + _detector_centres(), 0.0)


@cache
def _detector_centres() -> np.ndarray:
    from flead_app.algorithms.detection import FEATURE_CENTRES

    return np.asarray(FEATURE_CENTRES, dtype=np.float64)


def prepare(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts with the null prior, their survival sums and totals: what ``calibrate`` reads.

    >>> counts, surv, total = prepare(np.zeros((NUM_FEATURES, NUM_BINS)))
    >>> bool(np.allclose(total, PRIOR_READINGS))
    True
    """
    counts = table + PRIOR_READINGS * null_tables()
    return counts, _survival(counts), counts.sum(axis=1)


def calibrate(table: np.ndarray, raw: np.ndarray, prepared: tuple | None = None) -> np.ndarray:
    """-log of each raw statistic's tail probability under ``table`` (device counts) plus the null prior.

    >>> u = calibrate(np.zeros((NUM_FEATURES, NUM_BINS)), np.zeros((1, NUM_FEATURES)))
    >>> bool(np.allclose(u, 0.0))
    True
    """
    if raw.shape[0] == 0:
        return np.empty((0, raw.shape[1]))
    counts, surv, total = prepared if prepared is not None else prepare(table)
    idx, above = _bin_position(raw)
    return _calibrated(counts, surv, total, idx, above)


def _calibrated(
    counts: np.ndarray, surv: np.ndarray, total: np.ndarray, idx: np.ndarray, above: np.ndarray
) -> np.ndarray:
    cols = np.arange(idx.shape[1])[None, :]
    tail = surv[cols, idx + 1] + above * counts[cols, idx]
    tail = np.maximum(tail, 0.5) / total[None, :]
    return -np.log(np.minimum(tail, 1.0))


def score(
    state: IncidentState, timestamps: np.ndarray, values: np.ndarray, detector_features: np.ndarray
) -> IncidentScored:
    """Raw statistics, calibrated features (surprise - 1) and the new state for one device's readings.

    ``detector_features``: ``detection.score_batch``'s features of the same readings (centred,
    as it returns them), calibrated after the six.

    Calibration uses the device's table as of its last refresh; every ``REFRESH`` readings the
    counts since then are merged in, at fixed positions of the device's reading count, so
    splitting the readings into other batches gives the same result (the example at the top).
    """
    start = state.count
    raw, ok, new = raw_statistics(state, timestamps, values)
    raw = np.concatenate((raw, uncentred_detector_features(detector_features).reshape(-1, 4)), axis=1)
    k, width = raw.shape
    feats = np.zeros((k, width))
    table, fresh, prepared = state.table, state.fresh, state.prepared
    offsets = (np.arange(width) * NUM_BINS)[None, :]
    idx, above = _bin_position(raw)
    # segments of the batch between refresh points (a refresh happens before reading number m*REFRESH)
    pos = start + np.arange(k)
    cuts = np.flatnonzero((pos % REFRESH == 0) & (pos > 0)).tolist()
    refresh_at = set(cuts)
    bounds = [0, *cuts, k] if cuts[:1] != [0] else [*cuts, k]
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        if s in refresh_at:
            table, fresh, prepared = table + fresh, np.zeros_like(fresh), None
        if e <= s:
            continue
        seg_ok = ok[s:e]
        if seg_ok.any():
            rows = np.flatnonzero(seg_ok) + s if not seg_ok.all() else slice(s, e)
            if prepared is None:
                prepared = prepare(table)
            feats[rows] = _calibrated(*prepared, idx[rows], above[rows]) - 1.0
            add = np.bincount((idx[rows] + offsets).ravel(), minlength=width * NUM_BINS)
            fresh = fresh + add.reshape(width, NUM_BINS)
    new = IncidentState(**{**new.__dict__, "table": table, "fresh": fresh, "prepared": prepared})
    return IncidentScored(raw=raw, features=feats, scored=ok, state=new)
