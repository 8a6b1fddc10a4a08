"""Offline replica of FLEAD's federated learner on a long CSV (NAB) or the simulator, through the product's code.

No Kafka, but nothing else replaced: every device is stepped by ``flead_app.algorithms.device.step``
(the detector agent's pure core) with its own ``DeviceState``, its local updates become
``LocalModelUpdate`` records, and the server is ``flead_app.algorithms.fedbuff.FedBuffState.offer``
(the FedAvg agent's pure core) with the product's ``FedBuffConfig``: online Newton by default, a
global version every ``--buffer`` updates, its threshold, score_loc and score_scale from the merged
histograms and moments. A version becomes visible to devices ``--latency`` seconds after it was
made (``GlobalParams.from_record``). Readings come in the order a CSV replay sends them
(``ReplayData.schedule(batch)``: devices take turns, ``batch`` readings per message; message m is
sent at m * batch / rate seconds), or as ``flead simulate`` drives the simulator.

Splits (``--split``):

* ``devices`` (default): ``FLEAD_HOLDOUT_DEVICE_PERCENT`` (20) % of the devices, by CRC-32 of
  (``--salt``, device_id) (``holdout.device_held_out``: the step itself holds them out), never
  train; every model is scored on them. Prequential figures come from the same run: each labelled
  reading scored by the version visible when it arrived, and the alarms the devices raised.
* ``readings``: the hash of (device, timestamp) (``holdout.holdout_mask``, 20%); every device
  trains on its other readings; scored on the held-out readings only.

Models, all judged by one rule (``decision``: standardised score, threshold at the budget of normal
readings, moved toward each device's own quantile with ``--threshold-scope device`` as ``step``
does, refractory period): latest global (its published fields: ``ScoreRule.published``);
central (scikit-learn ``LogisticRegression()`` on the pooled training samples of the training
devices, the target ``device.training_targets``, ``decision.central_rule``); local-only (each
device stepped again with ``global_params`` None: its own rounds and threshold; readings split
only); the z-rule (|z| > 2.5, as the ``anomalies`` topic has it with ``FLEAD_ALARM_RULE=zrule
FLEAD_REFRACTORY=0``; and with the refractory period); random alarms at the global model's rate.

    .venv/bin/python scripts/nab_replica.py                           # NAB, all 47 series, held-out devices
    .venv/bin/python scripts/nab_replica.py --split readings
    .venv/bin/python scripts/nab_replica.py --salt 3                   # another device split
    .venv/bin/python scripts/nab_replica.py --simulator --split readings --positive-skip 0
    .venv/bin/python scripts/nab_replica.py --aggregator fedavg        # the description's FedAvg
    .venv/bin/python scripts/nab_replica.py --simulator --faulty-share 0.2   # 20% faulty devices

Faulty devices (``--faulty-share``, ``--fault-kinds``: the worker's ``FLEAD_FAULTY_SHARE`` and
``FLEAD_FAULT_KINDS``, fault injection): the devices ``robust.fault_of`` picks corrupt their updates
with ``robust.corrupt_update`` as the detector agent does; every update then goes through its JSON
(``to_json``, ``LocalModelUpdate.from_json``) as on Kafka, and one that fails validation is
dead-lettered (counted, never offered). With ``--drop-faulty`` their updates are never offered at all:
the oracle a perfect filter would reach, the floor the defences are measured against.
``--norm-bound``, ``--samples-slack`` and ``--positives-slack`` are the
server's bound (``FLEAD_UPDATE_NORM_BOUND``, ``FLEAD_UPDATE_SAMPLES_SLACK``, ``FLEAD_UPDATE_POSITIVES_SLACK``; 0
switches each off).

Defaults are the product's (``DeviceConfig()``, ``FedBuffConfig()``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from flead_app.algorithms.aggregation import make_aggregator
from flead_app.algorithms.decision import ScoreRule, central_rule, device_thresholds, refractory_alarms
from flead_app.algorithms.device import (
    NUM_FEATURES,
    DeviceConfig,
    DeviceMessage,
    DeviceState,
    GlobalParams,
    initial_global,
    local_rule,
    step,
    training_targets,
)
from flead_app.algorithms.fedbuff import FedBuffConfig, FedBuffState
from flead_app.algorithms.holdout import held_out_devices
from flead_app.algorithms.metrics import label_windows, model_metrics, pr_auc, roc_auc
from flead_app.algorithms.privacy import PrivacyConfig, epsilon_spent, noise_generator, privatize
from flead_app.algorithms.robust import FAULT_KINDS, UpdateBound, corrupt_update, fault_of, parse_kinds
from flead_app.models import GlobalModel, InvalidRecord, LocalModelUpdate, format_timestamp

# ../shared beside the checkout
DEFAULT_CSV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "nab", "nab_real_all.csv.gz")
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
class Trace:
    """Per reading, in send order: what the evaluation needs (all from ``step``'s ``MessageScores``)."""

    features: np.ndarray
    scored: np.ndarray
    z: np.ndarray
    heldout: np.ndarray  # never trained on
    pre_score: np.ndarray  # standardised score under the version visible when it arrived
    pre_alarm: np.ndarray  # the alarm the device raised
    pre_above: np.ndarray  # over the visible version's threshold (before the refractory period)
    train_label: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))


def configs(args: argparse.Namespace) -> tuple[DeviceConfig, FedBuffConfig]:
    """The product's configurations for this run (the split decides which holdout applies)."""
    devices = args.split == "devices"
    dcfg = DeviceConfig(
        learning_rate=args.learning_rate, positive_skip=args.positive_skip, alarm_budget=args.budget,
        refractory=args.refractory, train_every=args.train_every, train_interval_s=args.train_interval,
        holdout_percent=0.0 if devices else args.readings_percent,
        holdout_device_percent=args.device_percent if devices else 0.0, holdout_device_salt=args.salt,
        threshold_tail_readings=args.tail_readings, alarm_rule="model", threshold_scope=args.threshold_scope,
    )  # fmt: skip
    v0 = initial_global(dcfg)
    fcfg = FedBuffConfig(
        buffer_size=args.buffer, timeout_s=1e18,
        aggregator=make_aggregator(args.aggregator, args.staleness_exponent, 0.1, args.ridge, 1e-3, args.max_step),
        initial=(*v0.weights.tolist(), v0.bias), alarm_budget=args.budget, tail_readings=args.tail_readings,
        bound=UpdateBound(max(1, round(args.train_every * args.samples_slack)) if args.samples_slack > 0 else None,
                          max(1, round(args.train_every * args.positives_slack)) if args.positives_slack > 0 else None,
                          args.norm_bound or None, median_normals=args.median_samples or None,
                          check_curvature=not args.no_curvature_check and args.dp_noise <= 0),
    )  # fmt: skip
    return dcfg, fcfg


def update_record(device_id: str, r, now: float) -> LocalModelUpdate:  # noqa: ANN001 - a RoundResult
    """The record the detector agent sends for a round (``agents.detector.output_records``'s fields)."""
    return LocalModelUpdate(
        device_id=device_id, model_version=r.model_version, global_version=r.base_global_version,
        weights=r.weights.tolist(), bias=r.bias, accuracy=r.accuracy, loss=r.loss, samples=r.samples,
        timestamp=format_timestamp(T0 + now), positives=r.positives, base_params=r.base_params.tolist(),
        curvature=r.curvature.tolist(), normal_histogram={str(b): int(c) for b, c in r.normal_histogram.items()},
        normal_moments=None if r.normal_moments is None else r.normal_moments.tolist(),
    )  # fmt: skip


def run(args: argparse.Namespace, data: Data) -> dict:
    dcfg, fcfg = configs(args)
    n = data.value.shape[0]
    n_dev = len(data.device_ids)
    held_dev = held_out_devices(data.device_ids, args.device_percent, args.salt)
    states = [DeviceState() for _ in range(n_dev)]
    local = [DeviceState() for _ in range(n_dev)] if args.split == "readings" and not args.skip_local else None
    tr = Trace(
        features=np.zeros((n, NUM_FEATURES)), scored=np.zeros(n, bool), z=np.zeros(n), heldout=np.zeros(n, bool),
        pre_score=np.full(n, np.nan), pre_alarm=np.zeros(n, bool), pre_above=np.zeros(n, bool),
    )  # fmt: skip
    server = FedBuffState.start(fcfg)
    visible = initial_global(dcfg)
    pending: list[tuple[float, GlobalParams]] = []
    versions: list[GlobalModel] = []
    stats = {"rounds": 0, "samples": 0, "positives": 0, "staleness": [], "step_s": 0.0, "server_s": 0.0,
             "faulty_updates": 0, "dead_letters": 0, "refused": 0}  # fmt: skip
    kinds = parse_kinds(args.fault_kinds)
    faults = [fault_of(name, args.faulty_share, kinds) for name in data.device_ids]
    privacy = PrivacyConfig(noise_multiplier=args.dp_noise, clip=args.dp_clip)
    rounds_of = np.zeros(n_dev, int)
    started = time.perf_counter()
    bounds = np.concatenate((data.starts, [n]))
    for m in range(data.starts.shape[0]):
        a, b = int(bounds[m]), int(bounds[m + 1])
        now = float(data.send_s[m])
        while pending and pending[0][0] <= now:
            visible = pending.pop(0)[1]
        d = int(data.device[a])
        name = data.device_ids[d]
        msg = DeviceMessage(now, data.timestamp[a:b], data.value[a:b], data.label[a:b].astype(np.int8))
        t = time.perf_counter()
        out = step(states[d], [msg], visible, name, dcfg)
        stats["step_s"] += time.perf_counter() - t
        states[d] = out.state
        seen = out.scores[0]
        tr.features[a:b], tr.scored[a:b], tr.z[a:b], tr.heldout[a:b] = seen.features, seen.scored, seen.z, seen.heldout
        tr.pre_score[a:b] = seen.score
        tr.pre_above[a:b] = seen.scored & (np.nan_to_num(seen.score, nan=-np.inf) > seen.threshold
                                           if seen.threshold is not None else False)  # fmt: skip
        for al in out.alarms:
            tr.pre_alarm[a + al.reading] = True
        if local is not None:
            local[d] = step(local[d], [msg], None, name, dcfg).state
        for r in out.updates:
            if privacy.enabled:  # on the device, before the update leaves it (as the detector agent does)
                r = privatize(r, privacy, noise_generator(b"nab_replica", name, r.model_version))  # noqa: PLW2901
                rounds_of[d] += 1
            stats["rounds"] += 1
            stats["samples"] += r.samples
            stats["positives"] += r.positives
            stats["staleness"].append(server.version - r.base_global_version)
            record = update_record(name, r, now)
            if faults[d] is not None:
                stats["faulty_updates"] += 1
                if args.drop_faulty:
                    continue
                record = corrupt_update(record, faults[d])
            try:  # through the wire format, as the FedAvg agent receives it
                record = LocalModelUpdate.from_json(record.to_json())
            except InvalidRecord:
                stats["dead_letters"] += 1
                continue
            t = time.perf_counter()
            server, offered = server.offer(record, now, fcfg)
            stats["server_s"] += time.perf_counter() - t
            stats["refused"] += offered.refused
            if offered.model is not None:
                versions.append(offered.model)
                pending.append((now + args.latency, GlobalParams.from_record(offered.model)))
    stream_s = time.perf_counter() - started
    for d in range(n_dev):
        mk = data.device == d
        tr.train_label = tr.train_label if tr.train_label.shape[0] else np.full(n, -1, np.int8)
        tr.train_label[mk] = np.where(~tr.heldout[mk] & tr.scored[mk], training_targets(data.label[mk], dcfg), -1)
    res = evaluate(args, dcfg, data, tr, local, versions, held_dev)
    res["stream"] = {
        "readings": n, "devices": n_dev, "held_out_devices": int(held_dev.sum()) if args.split == "devices" else 0,
        "messages": int(data.starts.shape[0]), "local_rounds": stats["rounds"],
        "mean_round_samples": stats["samples"] / max(stats["rounds"], 1), "positives": stats["positives"],
        "global_versions": len(versions),
        "mean_staleness": float(np.mean(stats["staleness"])) if stats["staleness"] else 0.0,
        "step_us_per_reading": 1e6 * stats["step_s"] / n,
        "server_us_per_update": 1e6 * stats["server_s"] / max(stats["rounds"], 1),
        "seconds": stream_s, "faulty_devices": sum(f is not None for f in faults),
        "faulty_updates": stats["faulty_updates"], "dead_letters": stats["dead_letters"],
        "refused_infeasible": stats["refused"],
    }  # fmt: skip
    if privacy.enabled:
        sent = rounds_of[rounds_of > 0]
        res["privacy"] = {
            "noise_multiplier": privacy.noise_multiplier, "clip": privacy.clip, "delta": privacy.delta,
            "max_rounds": int(sent.max(initial=0)), "median_rounds": float(np.median(sent)) if sent.size else 0.0,
            "epsilon_max": epsilon_spent(int(sent.max(initial=0)), privacy.noise_multiplier, privacy.delta),
            "epsilon_median": epsilon_spent(int(np.median(sent)) if sent.size else 0, privacy.noise_multiplier,
                                            privacy.delta),
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


def evaluate(args, cfg, data, tr, local, versions, held_dev) -> dict:  # noqa: ANN001, C901
    from sklearn.linear_model import LogisticRegression

    n = data.value.shape[0]
    dev = data.device
    if args.split == "devices":
        rows = np.flatnonzero(held_dev[dev])
        eval_mask = np.zeros(n, bool)
        eval_mask[rows] = True
    else:
        rows = np.arange(n)
        eval_mask = tr.heldout.copy()
    point = eval_mask & tr.scored & (data.label >= 0)
    F = tr.features
    out: dict = {"models": {}}
    message = np.searchsorted(data.starts, np.arange(n), side="right") - 1  # the step that decided each reading

    def entry(rule: ScoreRule, scope: str = cfg.threshold_scope) -> dict:
        """A model judged by its rule: candidates over its threshold (with ``scope`` "device", moved
        toward each device's own quantile as ``step`` does), alarms after the refractory period."""
        score = np.where(tr.scored, rule.logits(F), -np.inf)
        if scope == "device" and rule.threshold is not None:
            s = rule.standardised(F)
            limit = np.full(n, np.inf)
            for d in np.unique(dev):
                m = np.flatnonzero((dev == d) & tr.scored)
                limit[m] = device_thresholds(s[m], rule.threshold, message[m], cfg.alarm_budget, cfg.histogram_window)
            above = tr.scored & (s > limit) & eval_mask
        else:
            above = tr.scored & rule.candidates(F) & eval_mask
        alarm = per_device_alarms(above, dev, cfg.refractory)
        return metrics(data, rows, score, above, alarm, point)

    def published(m: GlobalModel) -> ScoreRule:
        return ScoreRule.published(m.weights, m.bias, m.threshold, m.score_loc, m.score_scale, cfg.refractory)

    v0 = initial_global(cfg)
    latest = versions[-1] if versions else None
    g_rule = published(latest) if latest else ScoreRule(v0.weights, v0.bias, None, None, None, cfg.refractory)
    out["models"]["global"] = entry(g_rule)
    out["models"]["global"]["version"] = latest.global_version if latest else 0
    out["models"]["global"]["threshold"] = g_rule.threshold
    # central: the pooled training samples of the training devices / readings, the same target and rule
    tmask = tr.train_label >= 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        central = LogisticRegression().fit(F[tmask], tr.train_label[tmask])
    normal = F[tmask][tr.train_label[tmask] == 0]
    c_rule = central_rule(central.coef_[0], float(central.intercept_[0]), normal, cfg.alarm_budget, cfg.refractory)
    out["models"]["central"] = entry(c_rule)
    # diagnostics: the latest global weights with the central model's rule (its own normal training
    # scores); both models with the fleet threshold as it is
    out["models"]["global_pooled_threshold"] = entry(
        central_rule(g_rule.weights, g_rule.bias, normal, cfg.alarm_budget, cfg.refractory)
    )
    if cfg.threshold_scope == "device":
        out["models"]["global_fleet_threshold"] = entry(g_rule, "fleet")
        out["models"]["central_fleet_threshold"] = entry(c_rule, "fleet")
    if local is not None:
        l_score, l_above = np.full(n, -np.inf), np.zeros(n, bool)
        for d, st in enumerate(local):
            m = dev == d
            rule = local_rule(st, cfg)
            l_score[m] = np.where(tr.scored[m], rule.logits(F[m]), -np.inf)
            l_above[m] = tr.scored[m] & rule.candidates(F[m]) & eval_mask[m]
        out["models"]["local_only"] = metrics(data, rows, l_score, l_above,
                                              per_device_alarms(l_above, dev, cfg.refractory), point)  # fmt: skip
    # the z-rule: every reading with |z| > 2.5 alarms (and the same with the refractory period)
    z_score = np.where(tr.scored, np.abs(tr.z), -np.inf)
    z_above = tr.scored & (np.abs(tr.z) > 2.5) & eval_mask
    out["models"]["zrule"] = metrics(data, rows, z_score, z_above, z_above, point)
    out["models"]["zrule_refractory"] = metrics(data, rows, z_score, z_above,
                                                per_device_alarms(z_above, dev, cfg.refractory), point)  # fmt: skip
    g_alarms = out["models"]["global"]["alarms"]
    rate = g_alarms / max(int((eval_mask & tr.scored).sum()), 1)
    rng = np.random.default_rng(args.seed)
    r_score = rng.random(n)
    r_above = tr.scored & eval_mask & (r_score < rate)
    out["models"]["random"] = metrics(data, rows, r_score, r_above, r_above, point)
    # prequential: the score and alarms each reading got from the version visible when it arrived
    if args.split == "devices":
        pre = np.nan_to_num(tr.pre_score, nan=-1e9)
        out["models"]["prequential_global"] = metrics(data, rows, pre, tr.pre_above & eval_mask,
                                                      tr.pre_alarm & eval_mask, point)  # fmt: skip
    # stability: held-out F1 and NAB of every k-th version
    curve = []
    if versions:
        k = max(1, len(versions) // args.curve_points)
        for v in versions[k - 1 :: k]:
            e = entry(published(v))
            curve.append({"version": v.global_version, "f1": e["f1"], "nab_standard": e["nab_standard"],
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
        "global": [*np.round(g_rule.weights, 3).tolist(), round(g_rule.bias, 3)],
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
        f"staleness {s['mean_staleness']:.1f}; step {s['step_us_per_reading']:.1f} us/reading, server "
        f"{s['server_us_per_update']:.0f} us/update; "
        f"{s['seconds']:.0f} s; faulty devices {s['faulty_devices']}, their updates {s['faulty_updates']}, "
        f"dead-lettered {s['dead_letters']}, refused as infeasible {s['refused_infeasible']}",
        f"evaluated: {res['eval']['devices']} devices, {res['eval']['point_readings']:,} labelled readings",
        *(
            [
                f"privacy: noise x{p['noise_multiplier']}, clip {p['clip']}; epsilon at delta {p['delta']:g}: "
                f"{p['epsilon_max']:.1f} for the device with most rounds ({p['max_rounds']}), "
                f"{p['epsilon_median']:.1f} at the median ({p['median_rounds']:.0f} rounds)"
            ]
            if (p := res.get("privacy"))
            else []
        ),  # fmt: skip
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
    d, f = DeviceConfig(), FedBuffConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", default=DEFAULT_CSV)
    p.add_argument("--simulator", action="store_true", help="the simulator's stream instead of a CSV")
    p.add_argument("--devices", type=int, default=2407, help="simulator: devices")
    p.add_argument("--sim-rate", type=float, default=525.0, help="simulator: readings per second")
    p.add_argument("--seconds", type=float, default=180.0, help="simulator: duration")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--split", choices=("devices", "readings"), default="devices")
    p.add_argument("--device-percent", type=float, default=d.holdout_device_percent)
    p.add_argument("--readings-percent", type=float, default=d.holdout_percent)
    p.add_argument("--salt", default="", help="device split salt ('' = the official split)")
    p.add_argument("--batch", type=int, default=10, help="readings per message (CSV replay)")
    p.add_argument("--rate", type=float, default=20_000.0, help="CSV replay: readings per second")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--positive-skip", type=float, default=d.positive_skip)
    p.add_argument("--budget", type=float, default=d.alarm_budget)
    p.add_argument("--refractory", type=int, default=d.refractory)
    p.add_argument("--train-every", type=int, default=d.train_every)
    p.add_argument("--train-interval", type=float, default=d.train_interval_s)
    p.add_argument("--buffer", type=int, default=f.buffer_size)
    p.add_argument("--aggregator", choices=("newton", "fedavg", "median", "trimmed_mean"), default="newton")
    p.add_argument("--staleness-exponent", type=float, default=0.5)
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--curve-points", type=int, default=20)
    p.add_argument(
        "--exclude-official",
        action="store_true",
        help="drop the official held-out devices (settings are chosen this way, with other salts)",
    )
    p.add_argument(
        "--tail-readings",
        type=float,
        default=d.threshold_tail_readings,
        help="normal readings above the threshold in the histogram window (window = this / budget)",
    )
    p.add_argument("--threshold-scope", choices=("device", "fleet"), default=d.threshold_scope,
                   help="device: each device moves the published threshold toward its own quantile")  # fmt: skip
    p.add_argument("--ridge", type=float, default=1.0, help="newton: prior precision of each weight")
    p.add_argument("--max-step", type=float, default=1.0, help="newton: trust region (0: none)")
    p.add_argument("--faulty-share", type=float, default=0.0, help="fault injection: share of faulty devices")
    p.add_argument("--fault-kinds", default=",".join(FAULT_KINDS), help="fault injection: their kinds")
    p.add_argument("--dp-noise", type=float, default=0.0,
                   help="differential privacy: noise multiplier of each update (0: off; FLEAD_DP_NOISE)")  # fmt: skip
    p.add_argument("--dp-clip", type=float, default=PrivacyConfig().clip,
                   help="differential privacy: L2 bound on an update's change (FLEAD_DP_CLIP)")  # fmt: skip
    p.add_argument("--drop-faulty", action="store_true",
                   help="oracle: the faulty devices' updates never reach the server")  # fmt: skip
    p.add_argument("--norm-bound", type=float, default=f.bound.norm_multiple or 0.0,
                   help="multiple of the buffer's median norm each update is clipped to (0: none)")  # fmt: skip
    p.add_argument("--samples-slack", type=float, default=1.5,
                   help="claimed normal samples capped at --train-every x this (0: no cap)")  # fmt: skip
    p.add_argument("--median-samples", type=float, default=3.0,
                   help="claimed normal samples capped at this x the buffer's median too (0: no cap)")  # fmt: skip
    p.add_argument("--no-curvature-check", action="store_true",
                   help="do not refuse updates whose curvature no log-loss can have")  # fmt: skip
    p.add_argument("--positives-slack", type=float, default=20.0,
                   help="claimed positives capped at --train-every x this (0: no cap)")  # fmt: skip
    p.add_argument("--skip-local", action="store_true", help="no local-only baseline (halves a readings run)")
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
