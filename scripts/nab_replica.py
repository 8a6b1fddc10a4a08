"""Offline replica of the federated incident learner on a long CSV (NAB) or the simulator.

No Kafka: the pure functions of ``flead_app.algorithms.incident_learner`` run on the readings in
the order a CSV replay sends them (``ReplayData.schedule(batch)``: devices take turns, ``batch``
readings per message; message m is sent at m * batch / rate seconds), each device with its own
state, local rounds from the newest global version visible (``--latency`` after it was made),
a server step every ``--buffer`` updates (``incident_learner.server_step``: FedBuff's mean change with
``--server-lr``/``--server-momentum``, or ``--server newton``: online Newton on the rounds' curvature).

Splits (``--split``):

* ``devices`` (default): a stable ``FLEAD_HOLDOUT_DEVICE_PERCENT`` (20) % of the devices, by a
  hash of (``--salt``, device_id) (``device_holdout.held_out_devices``), never train any model;
  every model is scored on them. Prequential figures come from the same run: each labelled
  reading scored by the newest global version that existed when it arrived, and the alarms the
  devices actually raised.
* ``readings``: today's hash of (device, timestamp) (``holdout.holdout_mask``); every device
  trains on its other readings; scored on the held-out readings only.

Models: latest global; central (scikit-learn ``LogisticRegression()`` on the pooled training
samples of the training devices, the same target; threshold at the same budget of its own
normal training scores); local-only (each device's own rounds and threshold; readings split
only); the z-rule (|z| > 2.5, every reading, as the ``anomalies`` topic has it; and with the
same refractory period); random alarms at the latest global model's alarm rate.

    .venv/bin/python scripts/nab_replica.py                           # NAB, all 47 series, held-out devices
    .venv/bin/python scripts/nab_replica.py --split readings
    .venv/bin/python scripts/nab_replica.py --salt 3                   # another device split
    .venv/bin/python scripts/nab_replica.py --simulator --split readings --positive-skip 0
    .venv/bin/python scripts/nab_replica.py --server fedbuff --averaging 3 --features incident \
        --threshold-rule raw --tail-readings 100            # the first round's configuration

Defaults are ``LearnerConfig``'s: online Newton server, union features, standardised thresholds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from flead_app.algorithms import detection
from flead_app.algorithms.device_holdout import held_out_devices
from flead_app.algorithms.holdout import holdout_mask
from flead_app.algorithms.incident_learner import (
    IncidentModel,
    LearnerConfig,
    LearnerState,
    ingest,
    initial_model,
    merge_histograms,
    refractory_alarms,
    server_step,
    threshold_for_budget,
    train_round,
    training_due,
)
from flead_app.algorithms.metrics import label_windows, model_metrics, pr_auc, roc_auc
from flead_app.algorithms.second_order import NewtonConfig

DEFAULT_CSV = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "nab", "nab_real_all.csv.gz")
T0 = 1_700_000_000.0

# --- the replay --------------------------------------------------------------------------------


@dataclass
class Data:
    device_ids: list[str]
    device: np.ndarray
    timestamp: np.ndarray
    value: np.ndarray
    label: np.ndarray
    starts: np.ndarray  # message starts
    send_s: np.ndarray  # send time of each message (seconds from the start)


def nab_data(path: str, batch: int, rate: float, exclude_official: bool = False) -> Data:
    """The CSV in replay order; ``exclude_official`` drops the official held-out devices first (for
    choosing settings by cross-validation over the training devices only)."""
    from flead_app.replay import ReplayData, load_csv

    data = load_csv(path)
    if exclude_official:
        drop = held_out_devices(data.device_ids)
        keep_ids = [d for i, d in enumerate(data.device_ids) if not drop[i]]
        remap = np.cumsum(~drop) - 1
        rows = ~drop[data.device]
        data = ReplayData(keep_ids, remap[data.device[rows]].astype(np.int32), data.timestamp[rows],
                          data.value[rows], data.label[rows])  # fmt: skip
    r, starts = data.schedule(batch)
    return Data(data.device_ids, r.device, r.timestamp, r.value, r.label, starts, starts / rate)


def simulator_data(devices: int, rate: float, seconds: float, seed: int) -> Data:
    """The simulator as ``flead simulate`` drives it: one reading per device every devices / rate s."""
    from flead_app.fleet import Fleet

    fleet = Fleet(devices, seed=seed)
    per_device_s = devices / rate
    n = int(seconds * rate)
    dev, ts, val, lab, send = [], [], [], [], []
    tick = 0.1
    idx = np.arange(n)
    t_all, d_all = idx / rate, idx % devices
    ticks = np.floor(t_all / tick).astype(np.int64)
    cuts = np.flatnonzero(np.diff(ticks)) + 1
    for a, b in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [n])), strict=True):
        group = d_all[a:b]
        now = T0 + float(t_all[b - 1])
        r = fleet.next_readings(group, now, 1, per_device_s)
        dev.append(r.device)
        ts.append(r.timestamp)
        val.append(r.value)
        lab.append(r.label)
        send.append(np.full(b - a, float(t_all[b - 1])))
    device = np.concatenate(dev)
    return Data(list(fleet.device_ids), device, np.concatenate(ts), np.concatenate(val), np.concatenate(lab),
                np.arange(n), np.concatenate(send))  # fmt: skip


@dataclass
class Device:
    state: LearnerState = field(default_factory=LearnerState)
    detector: detection.DetectorState = field(default_factory=detection.DetectorState)
    local: IncidentModel | None = None  # local-only model (readings split)


@dataclass
class Trace:
    """Per reading, in send order: what the evaluation needs."""

    features: np.ndarray
    scored: np.ndarray
    z: np.ndarray
    z_scored: np.ndarray
    pre_score: np.ndarray
    pre_alarm: np.ndarray
    pre_above: np.ndarray  # score over the visible version's threshold (before the refractory period)
    pre_version: np.ndarray
    trainable: np.ndarray
    validation: np.ndarray  # the version gate's validation readings (neither training nor evaluated)
    train_label: np.ndarray  # 1 positive, 0 negative, -1 not a training sample (first half, held out)


def train_target(label: np.ndarray, positive_skip: float) -> np.ndarray:
    """1 for the trainable share of each window, 0 for normal, -1 for the skipped start of windows."""
    t = np.where(label == 1, 1, np.where(label == 0, 0, -1)).astype(np.int8)
    for s, e in label_windows(label == 1):
        t[s : s + int(math.floor((e - s) * positive_skip))] = -1
    return t


def run(args: argparse.Namespace, data: Data) -> dict:
    cfg = LearnerConfig(
        learning_rate=args.learning_rate, positive_skip=args.positive_skip, alarm_budget=args.budget,
        refractory=args.refractory, train_every=args.train_every, train_interval_s=args.train_interval,
        shuffle=not args.no_shuffle, averaging=None if args.averaging < 0 else args.averaging,
        server=args.server, server_lr=args.server_lr, server_momentum=args.server_momentum,
        staleness_exponent=args.staleness_exponent, equal_update_weights=args.aggregation == "steps",
        tail_readings=args.tail_readings, features=args.features, threshold_rule=args.threshold_rule,
        newton=NewtonConfig(ridge=args.ridge, memory=args.memory or None, max_step=args.max_step or None),
    )  # fmt: skip
    n = data.value.shape[0]
    n_dev = len(data.device_ids)
    held_dev = held_out_devices(data.device_ids, args.device_percent, args.salt)
    if args.split == "devices":
        trainable = ~held_dev[data.device]
    else:
        trainable = np.ones(n, bool)
        for d, name in enumerate(data.device_ids):
            m = data.device == d
            trainable[m] = ~holdout_mask(name, data.timestamp[m], args.readings_percent)
    # the version gate's validation stream: a hash share of the trainable readings, which then do not train
    validation = np.zeros(n, bool)
    if args.gate:
        for d, name in enumerate(data.device_ids):
            m = data.device == d
            validation[m] = holdout_mask(f"validation|{name}", data.timestamp[m], args.gate) & trainable[m]
        trainable = trainable & ~validation
    val_rows = np.flatnonzero(validation)
    val_target = np.full(n, -1, np.int8)
    for d in range(n_dev):
        m = np.flatnonzero(data.device == d)
        val_target[m] = train_target(data.label[m], cfg.positive_skip)
    devices = [Device() for _ in range(n_dev)]
    if args.split == "readings":
        for dv in devices:  # the local-only model: the same rounds on the same samples, from its own weights
            dv.local = initial_model(cfg)
    tr = Trace(
        features=np.zeros((n, cfg.num_features)), scored=np.zeros(n, bool), z=np.zeros(n), z_scored=np.zeros(n, bool),
        pre_score=np.full(n, -np.inf), pre_alarm=np.zeros(n, bool), pre_above=np.zeros(n, bool),
        pre_version=np.zeros(n, np.int32),
        trainable=trainable, validation=validation, train_label=np.full(n, -1, np.int8),
    )  # fmt: skip
    current = initial_model(cfg)
    visible = current
    pending: list[tuple[float, IncidentModel]] = []
    buffer: list = []
    versions: list[IncidentModel] = []
    made_at: list[float] = []
    stats = {"rounds": 0, "samples": 0, "positives": 0, "staleness": [], "ingest_s": 0.0, "round_s": 0.0, "gated": 0}

    published = current

    def aggregate(now: float, upto: int) -> None:
        nonlocal current, published
        stats["staleness"].extend(current.version - u.base_version for u in buffer)
        current = server_step(current, buffer, cfg)
        if not args.gate or gate_passes(current, published, upto):
            published = current
        else:
            stats["gated"] += 1
        versions.append(published)
        made_at.append(now)
        pending.append((now + args.latency, published))
        buffer.clear()

    def gate_passes(candidate: IncidentModel, incumbent: IncidentModel, upto: int) -> bool:
        """The candidate's validation F1 (validation readings so far) is not below the incumbent's."""
        if incumbent.version == 0 or not np.isfinite(incumbent.threshold):
            return True
        rows = val_rows[val_rows < upto]
        rows = rows[tr.scored[rows]]
        y = val_target[rows] == 1
        if not y.any():
            return True

        def f1(mdl: IncidentModel) -> float:
            sm = mdl.scoring()
            p = tr.features[rows] @ sm.weights + sm.bias > mdl.threshold
            tp = int((p & y).sum())
            return 2.0 * tp / max(int(p.sum()) + int(y.sum()), 1)

        return f1(candidate) >= f1(incumbent) - args.gate_tolerance

    started = time.perf_counter()
    bounds = np.concatenate((data.starts, [n]))
    # per device: readings so far, for the local-only threshold
    for m in range(data.starts.shape[0]):
        a, b = int(bounds[m]), int(bounds[m + 1])
        now = float(data.send_s[m])
        while pending and pending[0][0] <= now:
            visible = pending.pop(0)[1]
        d = int(data.device[a])
        dv = devices[d]
        ts, xs, ys = data.timestamp[a:b], data.value[a:b], data.label[a:b]
        det = detection.score_batch(dv.detector, xs)
        dv.detector = det.state
        z_alarm = det.scored & (np.abs(det.z) > 2.5)
        t = time.perf_counter()
        dv.state, step = ingest(dv.state, ts, xs, ys, visible, cfg, trainable[a:b], z_alarm, now, det.features)
        stats["ingest_s"] += time.perf_counter() - t
        tr.features[a:b], tr.scored[a:b] = step.features, step.scored
        tr.z[a:b], tr.z_scored[a:b] = det.z, det.scored
        tr.pre_score[a:b], tr.pre_alarm[a:b], tr.pre_version[a:b] = step.score, step.alarm, visible.version
        tr.pre_above[a:b] = step.above
        if training_due(dv.state, now, cfg):
            before = dv.state
            t = time.perf_counter()
            dv.state, up = train_round(before, now, cfg, visible)
            stats["round_s"] += time.perf_counter() - t
            if up is None:
                continue
            if dv.local is not None:
                _, lup = train_round(before, now, cfg, dv.local)
                hist = merge_histograms(dv.local.histogram, [lup.normal_histogram], cfg)
                dv.local = IncidentModel(dv.local.version + 1, lup.weights, lup.bias,
                                         threshold_for_budget(hist, cfg.alarm_budget), hist)  # fmt: skip
            stats["rounds"] += 1
            stats["samples"] += up.samples
            stats["positives"] += up.positives
            buffer.append(up)
            if len(buffer) >= args.buffer:
                aggregate(now, b)
    stream_s = time.perf_counter() - started
    for d in range(n_dev):
        m = data.device == d
        tr.train_label[m] = np.where(trainable[m] & tr.scored[m], train_target(data.label[m], cfg.positive_skip), -1)
    res = evaluate(args, cfg, data, tr, devices, versions, held_dev)
    res["stream"] = {
        "readings": n, "devices": n_dev, "held_out_devices": int(held_dev.sum()) if args.split == "devices" else 0,
        "messages": int(data.starts.shape[0]), "local_rounds": stats["rounds"],
        "mean_round_samples": stats["samples"] / max(stats["rounds"], 1), "positives": stats["positives"],
        "global_versions": len(versions), "gated_versions": stats["gated"],
        "mean_staleness": float(np.mean(stats["staleness"])) if stats["staleness"] else 0.0,
        "ingest_us_per_reading": 1e6 * stats["ingest_s"] / n,
        "round_us": 1e6 * stats["round_s"] / max(stats["rounds"], 1),
        "seconds": stream_s,
    }  # fmt: skip
    res["config"] = {k: v for k, v in vars(args).items() if k not in {"json"}}
    return res


# --- evaluation ----------------------------------------------------------------------------------


def per_device_alarms(above: np.ndarray, device: np.ndarray, refractory: int) -> np.ndarray:
    out = np.zeros(above.shape[0], bool)
    for d in np.unique(device):
        m = np.flatnonzero(device == d)
        out[m], _ = refractory_alarms(above[m], 1 << 30, refractory)
    return out


def metrics(data: Data, rows: np.ndarray, score: np.ndarray, above: np.ndarray, alarm: np.ndarray,
            point: np.ndarray) -> dict:  # fmt: skip
    """``rows``: the readings of the evaluated devices (or all, readings split), in send order;
    ``point``: those that count point-wise (scored, labelled, held out); alarms anywhere in ``rows``.

    Point-wise P, R, F1, ROC-AUC and PR-AUC are over ``point`` and use ``above`` (score over the
    threshold, before the refractory period); event recall, false alarms per 1,000 normal
    readings, the median delay and NAB's scores come from ``metrics.model_metrics`` on each
    evaluated device's whole series of ``alarm``.
    """
    y = data.label[point] == 1
    p = above[point]
    tp, fp, fn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    s = np.nan_to_num(score[point], neginf=-1e9)
    labels, scores, alarms = [], [], []
    for d in np.unique(data.device[rows]):
        m = rows[data.device[rows] == d]
        labels.append(data.label[m] == 1)
        scores.append(np.nan_to_num(score[m], neginf=-1e9))
        alarms.append(alarm[m])
    mm = model_metrics(labels, scores, alarms)
    events = sum(len(label_windows(lab)) for lab in labels)
    # device mean: unweighted mean F1 over the devices with a positive point reading (docs/learning.md's)
    dev_f1 = []
    pdev = data.device[point]
    for d in np.unique(pdev[y]):
        yd, pd_ = y[pdev == d], p[pdev == d]
        tp_d = int((yd & pd_).sum())
        dev_f1.append(2.0 * tp_d / (int(yd.sum()) + int(pd_.sum())))
    return {
        "precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
        "roc_auc": roc_auc(y, s), "pr_auc": pr_auc(y, s), "events": events,
        "device_mean_f1": float(np.mean(dev_f1)) if dev_f1 else None,
        "event_recall": mm.event_recall if events else None,
        "false_alarms_per_1000": mm.false_alarms_per_1000, "alarms": int(alarm[rows].sum()),
        "median_delay": mm.delay_median, "nab_standard": mm.nab_standard,
        "nab_reward_low_fp": mm.nab_low_fp, "nab_reward_low_fn": mm.nab_low_fn,
    }  # fmt: skip


def evaluate(args, cfg, data, tr, devices, versions, held_dev) -> dict:  # noqa: ANN001, C901
    from sklearn.linear_model import LogisticRegression

    n = data.value.shape[0]
    dev = data.device
    if args.split == "devices":
        rows = np.flatnonzero(held_dev[dev])
        eval_mask = np.zeros(n, bool)
        eval_mask[rows] = True
    else:
        rows = np.arange(n)
        eval_mask = ~tr.trainable & ~tr.validation
    point = eval_mask & tr.scored & (data.label >= 0)
    F = tr.features
    latest = versions[-1] if versions else initial_model(cfg)
    out: dict = {"models": {}}

    def model_entry(score: np.ndarray, thr: float | np.ndarray, restrict: np.ndarray) -> dict:
        above = tr.scored & (score > thr) & restrict
        alarm = per_device_alarms(above, dev, cfg.refractory)
        return metrics(data, rows, score, above, alarm, point)

    def lin(m: IncidentModel) -> np.ndarray:
        sm = m.scoring()
        return np.where(tr.scored, F @ sm.weights + sm.bias, -np.inf)

    restrict = eval_mask  # alarms only where the model may be evaluated
    out["models"]["global"] = model_entry(lin(latest), latest.threshold, restrict)
    out["models"]["global"]["version"] = latest.version
    out["models"]["global"]["threshold"] = latest.threshold
    # central: the pooled training samples of the training devices / readings
    tmask = tr.train_label >= 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        central = LogisticRegression().fit(F[tmask], tr.train_label[tmask])
    c_train = F[tmask] @ central.coef_[0] + central.intercept_[0]
    c_thr = float(np.quantile(c_train[tr.train_label[tmask] == 0], 1 - cfg.alarm_budget))
    c_score = np.where(tr.scored, F @ central.coef_[0] + central.intercept_[0], -np.inf)
    out["models"]["central"] = model_entry(c_score, c_thr, restrict)
    # diagnostic: the latest global weights with the central model's threshold rule (its own
    # normal training scores, pooled): how much of the gap is the threshold, how much the weights
    g_score = lin(latest)
    g_thr = float(np.quantile(g_score[tmask][tr.train_label[tmask] == 0], 1 - cfg.alarm_budget))
    out["models"]["global_pooled_threshold"] = model_entry(g_score, g_thr, restrict)
    if args.split == "readings":
        l_score = np.full(n, -np.inf)
        l_thr = np.full(n, np.inf)
        for d, dv in enumerate(devices):
            m = dev == d
            l_score[m] = np.where(tr.scored[m], F[m] @ dv.local.weights + dv.local.bias, -np.inf)
            l_thr[m] = dv.local.threshold
        out["models"]["local_only"] = model_entry(l_score, l_thr, restrict)
    # the z-rule: every reading with |z| > 2.5 alarms (and the same with the refractory period)
    z_score = np.where(tr.z_scored, np.abs(tr.z), -np.inf)
    z_above = tr.z_scored & (np.abs(tr.z) > 2.5) & restrict
    out["models"]["zrule"] = metrics(data, rows, z_score, z_above, z_above, point)
    out["models"]["zrule_refractory"] = metrics(data, rows, z_score, z_above,
                                                per_device_alarms(z_above, dev, cfg.refractory), point)  # fmt: skip
    g_alarms = out["models"]["global"]["alarms"]
    rate = g_alarms / max(int((restrict & tr.scored).sum()), 1)
    rng = np.random.default_rng(args.seed)
    r_score = rng.random(n)
    r_above = tr.scored & restrict & (r_score < rate)
    out["models"]["random"] = metrics(data, rows, r_score, r_above, r_above, point)
    # prequential: the score and alarms each reading got from the version visible when it arrived
    if args.split == "devices":
        pre_above = tr.scored & restrict & tr.pre_above
        out["models"]["prequential_global"] = metrics(
            data, rows, tr.pre_score, pre_above, tr.pre_alarm & restrict, point
        )
        out["models"]["prequential_global"]["note"] = (
            "point-wise: over the visible version's threshold; events: the alarms raised"
        )
    # stability: held-out F1 and NAB of every k-th version
    curve = []
    if versions:
        step = max(1, len(versions) // args.curve_points)
        for v in versions[step - 1 :: step]:
            e = model_entry(lin(v), v.threshold, restrict)
            curve.append({"version": v.version, "f1": e["f1"], "nab_standard": e["nab_standard"],
                          "event_recall": e["event_recall"], "fa": e["false_alarms_per_1000"]})  # fmt: skip
    out["curve"] = curve
    second = curve[len(curve) // 2 :]
    if second:
        best = max(c["f1"] for c in curve)
        nabs = [c["nab_standard"] for c in second if c["nab_standard"] is not None]
        out["stability"] = {
            "best_f1": best, "second_half_min_f1": min(c["f1"] for c in second),
            "ratio": min(c["f1"] for c in second) / best if best else None,
            "second_half_nab_min": min(nabs, default=None),
            "second_half_nab_max": max(nabs, default=None),
        }  # fmt: skip
    out["weights"] = {
        "global": [*np.round(latest.scoring().weights, 3).tolist(), round(latest.scoring().bias, 3)],
        "central": [*np.round(central.coef_[0], 3).tolist(), round(float(central.intercept_[0]), 3)],
    }
    out["eval"] = {
        "devices": int(np.unique(dev[rows]).shape[0]),
        "point_readings": int(point.sum()),
        "held_out": [data.device_ids[d] for d in np.flatnonzero(held_dev)] if args.split == "devices" else [],
    }
    return out


def report(res: dict) -> str:
    s = res["stream"]
    lines = [
        f"{s['readings']:,} readings, {s['devices']} devices ({s['held_out_devices']} held out), "
        f"{s['local_rounds']:,} rounds of {s['mean_round_samples']:.1f} samples, {s['global_versions']} versions, "
        f"staleness {s['mean_staleness']:.1f}; ingest {s['ingest_us_per_reading']:.1f} us/reading; "
        f"{s['seconds']:.0f} s",
        f"evaluated: {res['eval']['devices']} devices, {res['eval']['point_readings']:,} labelled readings",
        "| model | P | R | F1 | device-mean F1 | ROC-AUC | PR-AUC | event recall | FA/1000 | delay | NAB std "
        "| low FP | low FN |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v, fmt=".3f"):  # noqa: ANN001, ANN202
        return "-" if v is None else format(v, fmt)

    for name, m in res["models"].items():
        lines.append(
            f"| {name} | {f(m['precision'])} | {f(m['recall'])} | {f(m['f1'])} | {f(m['device_mean_f1'])} "
            f"| {f(m['roc_auc'])} | {f(m['pr_auc'])} "
            f"| {f(m['event_recall'], '.2f')} | {f(m['false_alarms_per_1000'], '.2f')} | {f(m['median_delay'], '.0f')} "
            f"| {f(m['nab_standard'], '.1f')} | {f(m['nab_reward_low_fp'], '.1f')} "
            f"| {f(m['nab_reward_low_fn'], '.1f')} |"
        )
    if "stability" in res:
        st = res["stability"]
        lines.append(
            f"stability: best F1 {st['best_f1']:.3f}, second-half min {st['second_half_min_f1']:.3f} "
            f"(ratio {f(st['ratio'])}); second-half NAB {f(st['second_half_nab_min'], '.1f')}.."
            f"{f(st['second_half_nab_max'], '.1f')}"
        )
    lines.append(f"weights+bias: global {res['weights']['global']} central {res['weights']['central']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", default=DEFAULT_CSV)
    p.add_argument("--simulator", action="store_true", help="the simulator's stream instead of a CSV")
    p.add_argument("--devices", type=int, default=2407, help="simulator: devices")
    p.add_argument("--sim-rate", type=float, default=525.0, help="simulator: readings per second")
    p.add_argument("--seconds", type=float, default=180.0, help="simulator: duration")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--split", choices=("devices", "readings"), default="devices")
    p.add_argument("--device-percent", type=float, default=float(os.environ.get("FLEAD_HOLDOUT_DEVICE_PERCENT", 20)))
    p.add_argument("--readings-percent", type=float, default=20.0)
    p.add_argument("--salt", default="", help="device split salt ('' = the official split)")
    p.add_argument("--batch", type=int, default=10, help="readings per message (CSV replay)")
    p.add_argument("--rate", type=float, default=20_000.0, help="CSV replay: readings per second")
    p.add_argument("--learning-rate", type=float, default=0.03)
    p.add_argument("--positive-skip", type=float, default=0.5)
    p.add_argument("--budget", type=float, default=0.01)
    p.add_argument("--refractory", type=int, default=100)
    p.add_argument("--train-every", type=int, default=50)
    p.add_argument("--train-interval", type=float, default=60.0)
    p.add_argument("--buffer", type=int, default=20)
    p.add_argument("--staleness-exponent", type=float, default=0.5)
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--curve-points", type=int, default=20)
    p.add_argument("--no-shuffle", action="store_true")
    p.add_argument(
        "--exclude-official",
        action="store_true",
        help="drop the official held-out devices (settings are chosen this way, with other salts)",
    )
    p.add_argument(
        "--aggregation",
        choices=("steps", "samples"),
        default="steps",
        help="weigh each update's change equally (steps) or by its samples (FedAvg's rule)",
    )
    p.add_argument("--averaging", type=float, default=-1.0, help="eta of the polynomial-decay average; <0: none")
    p.add_argument("--server", choices=("fedbuff", "newton"), default="newton", help="the server step")
    p.add_argument("--server-lr", type=float, default=1.0, help="fedbuff: server learning rate")
    p.add_argument("--server-momentum", type=float, default=0.0, help="fedbuff: server momentum (FedAvgM)")
    p.add_argument(
        "--tail-readings",
        type=float,
        default=1000.0,
        help="normal readings above the threshold in the histogram window (window = this / budget)",
    )
    p.add_argument(
        "--features",
        choices=("incident", "union"),
        default="union",
        help="the six incident statistics, or those and detection.py's four, all calibrated",
    )
    p.add_argument("--threshold-rule", choices=("raw", "standardised"), default="standardised")
    p.add_argument(
        "--gate",
        type=float,
        default=0.0,
        help="version gate: %% of trainable readings kept as its validation stream (0: no gate)",
    )
    p.add_argument("--gate-tolerance", type=float, default=0.0, help="version gate: F1 a candidate may lose")
    p.add_argument("--ridge", type=float, default=1.0, help="newton: prior precision of each weight")
    p.add_argument("--memory", type=float, default=0.0, help="newton: curvature memory in samples (0: all)")
    p.add_argument("--max-step", type=float, default=1.0, help="newton: trust region (0: none)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.simulator:
        data = simulator_data(args.devices, args.sim_rate, args.seconds, args.seed)
    else:
        data = nab_data(args.csv, args.batch, args.rate, args.exclude_official)
    res = run(args, data)
    print(report(res))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
