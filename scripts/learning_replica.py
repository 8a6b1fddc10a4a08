"""Offline replica of FLEAD's learning pipeline, for docs/learning.md.

It runs the worker's pure functions on the simulator's stream, without Kafka:

* the stream: ``flead_app.fleet.Fleet`` driven like ``flead simulate`` (one reading per device
  every ``devices / rate`` seconds, devices taking turns, so their rounds are staggered and the
  updates in one FedAvg buffer started from different global versions); ``--random-rates``
  gives every device its own Poisson rate instead;
* each device: ``holdout_mask``, ``ingest``, ``training_due`` and ``train_round`` on event time,
  starting from the newest global model visible ``--latency`` seconds after it was made;
* the FedAvg agent: ``flead_app.agents.fedavg.federate`` every ``--buffer`` updates, with the
  history of global versions the agent keeps (``--absolute``: average absolute weights instead);
* the evaluation, as the Spark job defines it: every scored, labelled, held-out reading; the
  latest global model; the central baseline (scikit-learn ``LogisticRegression()`` with default
  settings on every scored, labelled, non-held-out reading); each device's local-only model
  (``train_round`` without a global model, in the same rounds, plus a last round on what is
  left); threshold 0.5; pooled, and the mean over devices with a held-out positive.

    .venv/bin/python scripts/learning_replica.py                 # demo size: 2,407 devices, 525/s, 3 min
    .venv/bin/python scripts/learning_replica.py --learning-rate 0.001
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np

from flead_app.agents.fedavg import federate
from flead_app.algorithms import detection
from flead_app.algorithms.device import (
    DeviceConfig,
    DeviceState,
    GlobalParams,
    current_model,
    ingest,
    initial_global,
    round_phase,
    train_round,
    training_due,
)
from flead_app.algorithms.holdout import holdout_mask
from flead_app.algorithms.metrics import classification_scores
from flead_app.algorithms.sgd import LinearModel, predict_proba
from flead_app.fleet import Fleet
from flead_app.models import LocalModelUpdate
from flead_app.settings import Settings

T0 = 1_700_000_000.0
TICK_S = 0.1  # readings due in the same tick are generated together, like one step of the simulator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=d.devices)
    p.add_argument("--rate", type=float, default=d.readings_per_minute / 60.0, help="readings per second")
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--epochs", type=int, default=d.local_epochs)
    p.add_argument("--prior", type=float, default=d.prior_anomaly_rate, help="prior anomaly rate of version 0")
    p.add_argument("--buffer", type=int, default=d.fedavg_buffer)
    p.add_argument("--history", type=int, default=d.fedavg_history)
    p.add_argument("--staleness-exponent", type=float, default=d.staleness_exponent)
    p.add_argument("--absolute", action="store_true", help="average absolute weights (no version history)")
    p.add_argument("--latency", type=float, default=0.2, help="seconds until a new global model reaches devices")
    p.add_argument("--random-rates", type=float, default=0.0, metavar="SIGMA",
                   help="per-device Poisson rates, log-normal with this sigma (0: the simulator's turns)")  # fmt: skip
    p.add_argument("--drain", action="store_true",
                   help="after the stream every device trains once more (a worker left running 60 s)")  # fmt: skip
    p.add_argument("--legacy-features", action="store_true",
                   help="the previous features: z, |z|, jump z, EWM |z| on plain stats, uncentred")  # fmt: skip
    p.add_argument("--curve", type=int, default=0, help="also print held-out F1 of every N-th global version")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def use_legacy_features() -> None:
    """Make ``ingest`` compute the previous features (for comparison only).

    The plain running statistics are the same as the alarms' (``Scored.z``); the legacy EWM of
    |z| rides in ``DetectorState.ewm_z``, whose robust meaning is not used in this mode.
    """
    import flead_app.algorithms.device as device_module

    real = detection.score_batch

    def legacy(state: detection.DetectorState, values: np.ndarray, min_history: int = 10) -> detection.Scored:
        out = real(state, values, min_history)
        n, mean, m2 = state.stats.count, state.stats.mean, state.stats.m2
        last, ewm, rows = state.last_value, state.ewm_z, []
        clip = detection.Z_CLIP
        for x, z, ok in zip(np.asarray(values, dtype=float).tolist(), out.z.tolist(), out.scored.tolist(), strict=True):
            jump = 0.0
            if ok:
                std = max(math.sqrt(m2 / (n - 1)), detection._std_floor(mean))  # noqa: SLF001
                jump = min(max((x - (x if last is None else last)) / std, -clip), clip)
            ewm = (1 - detection.EWM_ALPHA) * ewm + detection.EWM_ALPHA * abs(z)
            rows.append((z, abs(z), jump, ewm))
            n += 1
            delta = x - mean
            mean += delta / n
            m2 += delta * (x - mean)
            last = x
        feats = np.array(rows, dtype=float).reshape(-1, detection.NUM_FEATURES)
        return detection.Scored(out.z, feats, out.scored, replace(out.state, ewm_z=ewm))

    device_module.score_batch = legacy


def schedule(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(time in seconds, device) of every reading, in time order."""
    per_device_s = args.devices / args.rate
    if args.random_rates > 0:
        rng = np.random.default_rng(args.seed + 99)
        rates = np.exp(rng.normal(0.0, args.random_rates, args.devices))
        rates /= rates.mean()
        times, devs = [], []
        for d in range(args.devices):
            step = per_device_s / rates[d]
            t = rng.random() * step + np.cumsum(rng.exponential(step, int(args.seconds / step * 2) + 10))
            t = t[t < args.seconds]
            times.append(t)
            devs.append(np.full(t.shape[0], d))
        t_all, d_all = np.concatenate(times), np.concatenate(devs)
        order = np.argsort(t_all, kind="stable")
        return t_all[order], d_all[order]
    n = int(args.seconds * args.rate)
    idx = np.arange(n)
    return idx / args.rate, idx % args.devices  # the simulator's turns: round_robin over the fleet


@dataclass
class Device:
    state: DeviceState = field(default_factory=DeviceState)
    local: DeviceState = field(default_factory=DeviceState)  # local-only model: weights, bias, version
    test_x: list = field(default_factory=list)
    test_y: list = field(default_factory=list)
    train_x: list = field(default_factory=list)
    train_y: list = field(default_factory=list)


def local_only_round(dev: Device, buffered: DeviceState, now: float, cfg: DeviceConfig) -> None:
    """The local-only model trains on the same buffer as the federated round, from its own weights."""
    twin = replace(buffered, weights=dev.local.weights, bias=dev.local.bias, model_version=dev.local.model_version)
    after, _ = train_round(twin, now, cfg, None)
    dev.local = replace(dev.local, weights=after.weights, bias=after.bias, model_version=after.model_version)


def run(args: argparse.Namespace) -> dict:
    cfg = DeviceConfig(learning_rate=args.learning_rate, local_epochs=args.epochs, prior_anomaly_rate=args.prior)
    fleet = Fleet(args.devices, seed=args.seed)
    per_device_s = args.devices / args.rate
    times, order = schedule(args)
    devices = [Device() for _ in range(args.devices)]
    v0 = initial_global(cfg)
    history: dict[int, list[float]] = {0: [*v0.weights.tolist(), v0.bias]}
    version, agg_round = 0, 0
    visible = v0
    pending: list[tuple[float, GlobalParams]] = []
    buffer: list[LocalModelUpdate] = []
    versions: list[dict] = []
    stats = {"rounds": 0, "round_samples": 0, "staleness": [], "round_s": 0.0}

    def aggregate_buffer(now: float) -> None:
        nonlocal version, agg_round
        agg_round += 1
        model = federate(buffer, version, agg_round, "fedavg", args.staleness_exponent, 0.1, None,
                         history=None if args.absolute else history)  # fmt: skip
        version = model.global_version
        params = [*model.weights, model.bias]
        history[version] = params
        for old in sorted(history)[: -max(1, args.history)]:
            del history[old]
        stats["staleness"].extend(version - 1 - u.global_version for u in buffer)
        versions.append({"version": version, "params": params, "accuracy": model.accuracy, "samples": model.samples})
        pending.append((now + args.latency, GlobalParams(version, np.array(model.weights), model.bias)))
        buffer.clear()

    def round_for(d: int, now: float) -> None:
        nonlocal visible
        dev = devices[d]
        while pending and pending[0][0] <= now:
            visible = pending.pop(0)[1]
        before = dev.state
        t = time.perf_counter()
        dev.state, result = train_round(before, now, cfg, visible)
        stats["round_s"] += time.perf_counter() - t
        if result is None:
            return
        local_only_round(dev, before, now, cfg)
        stats["rounds"] += 1
        stats["round_samples"] += result.samples
        buffer.append(
            LocalModelUpdate(
                device_id=fleet.device_id(d), model_version=result.model_version,
                global_version=result.base_global_version, weights=result.weights.tolist(), bias=result.bias,
                accuracy=result.accuracy, loss=result.loss, samples=result.samples, timestamp="",
            )
        )  # fmt: skip
        if len(buffer) >= args.buffer:
            aggregate_buffer(now)

    started = time.perf_counter()
    ticks = np.floor(times / TICK_S).astype(np.int64)
    cuts = np.flatnonzero(np.diff(ticks)) + 1
    for sl_start, sl_end in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(times)])), strict=True):
        due = order[sl_start:sl_end]
        now = T0 + float(times[sl_end - 1])
        while due.shape[0]:  # a device due twice in one tick gets two steps
            _, first = np.unique(due, return_index=True)
            first = np.sort(first)
            group, due = due[first], np.delete(due, first)
            readings = fleet.next_readings(group, now, 1, per_device_s)
            for i, d in enumerate(group.tolist()):
                dev = devices[d]
                ts = readings.timestamp[i : i + 1]
                labels = readings.label[i : i + 1]
                held = holdout_mask(fleet.device_id(d), ts, cfg.holdout_percent)
                phase = round_phase(fleet.device_id(d), cfg)
                dev.state, scored = ingest(dev.state, readings.value[i : i + 1], labels, now, cfg, held, phase)
                if scored.scored[0] and labels[0] >= 0:
                    (dev.test_x if held[0] else dev.train_x).append(scored.features[0])
                    (dev.test_y if held[0] else dev.train_y).append(int(labels[0]))
                if training_due(dev.state, now, cfg):
                    round_for(d, now)
    end = T0 + args.seconds
    if args.drain:  # the quiet-device timer: a round for every device with readings left
        for d in np.argsort([dv.state.last_round_at for dv in devices]).tolist():
            if devices[d].state.pending:
                round_for(d, max(end, devices[d].state.last_round_at + cfg.train_interval_s))
    for dev in devices:  # the evaluation's local-only model also trains on what is left at the end
        if dev.state.buffer_labels.shape[0]:
            local_only_round(dev, dev.state, end, cfg)
    stream_s = time.perf_counter() - started
    return evaluate(args, cfg, devices, versions, stats, stream_s, len(times))


def _scores(y: np.ndarray, p: np.ndarray) -> dict:
    s = classification_scores(y, p, 0.5)
    return {"f1": s.f1, "precision": s.precision, "recall": s.recall, "roc_auc": s.roc_auc, "samples": s.samples}


def _device_mean(y: np.ndarray, p: np.ndarray, dev: np.ndarray) -> dict:
    """Unweighted mean over devices with at least one held-out positive (ROC-AUC: both classes)."""
    per = [classification_scores(y[dev == d], p[dev == d], 0.5) for d in np.unique(dev) if (y[dev == d] == 1).any()]
    aucs = [s.roc_auc for s in per if s.roc_auc is not None]
    return {
        "f1": float(np.mean([s.f1 for s in per])),
        "precision": float(np.mean([s.precision for s in per])),
        "recall": float(np.mean([s.recall for s in per])),
        "roc_auc": float(np.mean(aucs)) if aucs else None,
        "devices": len(per),
    }


def evaluate(args, cfg, devices, versions, stats, stream_s, n_readings) -> dict:  # noqa: ANN001
    from sklearn.linear_model import LogisticRegression

    def stack(rows: list, n: int = 4) -> np.ndarray:
        return np.array(rows, dtype=np.float64).reshape(-1, n)

    x_test = np.vstack([stack(d.test_x) for d in devices])
    y_test = np.concatenate([np.array(d.test_y, dtype=np.int8) for d in devices])
    dev_test = np.concatenate([np.full(len(d.test_y), i) for i, d in enumerate(devices)])
    x_train = np.vstack([stack(d.train_x) for d in devices])
    y_train = np.concatenate([np.array(d.train_y, dtype=np.int8) for d in devices])
    p_local = np.concatenate([predict_proba(current_model(d.local, cfg), stack(d.test_x)) for d in devices])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        central = LogisticRegression().fit(x_train, y_train)
        # what the Spark job fits (MLlib, regParam 0): the same model without sklearn's default L2
        unregularised = LogisticRegression(penalty=None, max_iter=1000).fit(x_train, y_train)
    p_central = central.predict_proba(x_test)[:, 1]
    latest = versions[-1]["params"] if versions else [*initial_global(cfg).weights, initial_global(cfg).bias]
    glob = LinearModel(np.array(latest[:-1]), latest[-1])
    p_global = predict_proba(glob, x_test)
    accs = np.array([v["accuracy"] for v in versions])
    res = {
        "config": {k: v for k, v in vars(args).items() if k not in {"json", "curve"}},
        "stream": {
            "readings": n_readings,
            "local_rounds": stats["rounds"],
            "mean_round_samples": stats["round_samples"] / max(stats["rounds"], 1),
            "global_versions": len(versions),
            "mean_staleness": float(np.mean(stats["staleness"])) if stats["staleness"] else 0.0,
            "max_staleness": int(np.max(stats["staleness"])) if stats["staleness"] else 0,
            "train_round_us": 1e6 * stats["round_s"] / max(stats["rounds"], 1),
            "seconds": stream_s,
            "train_readings": int(y_train.shape[0]),
            "train_anomaly_rate": float(y_train.mean()),
            "test_readings": int(y_test.shape[0]),
        },
        "pooled": {"global": _scores(y_test, p_global), "central": _scores(y_test, p_central),
                   "local": _scores(y_test, p_local)},
        "device_mean": {"global": _device_mean(y_test, p_global, dev_test),
                        "central": _device_mean(y_test, p_central, dev_test),
                        "local": _device_mean(y_test, p_local, dev_test)},
        "accuracy": {
            "first": float(accs[0]) if accs.size else None,
            "later_mean": float(accs[1:].mean()) if accs.size > 1 else None,
            "later_share_above_first": float((accs[1:] > accs[0]).mean()) if accs.size > 1 else None,
            "first10_mean": float(accs[:10].mean()) if accs.size else None,
            "last10_mean": float(accs[-10:].mean()) if accs.size else None,
        },
        "central_unregularised": _scores(y_test, unregularised.predict_proba(x_test)[:, 1]),
        "weights": {"global": [round(v, 4) for v in latest],
                    "central": [*np.round(central.coef_[0], 4).tolist(), round(float(central.intercept_[0]), 4)]},
    }  # fmt: skip
    g, c, lm = res["pooled"]["global"]["f1"], res["pooled"]["central"]["f1"], res["device_mean"]["local"]["f1"]
    res["requirement"] = {
        "global_minus_central_f1": g - c,
        "within_0.03_of_central": abs(g - c) <= 0.03,
        "above_local_only_device_mean": g > lm,
        "later_versions_more_accurate_than_first": (
            res["accuracy"]["later_mean"] is not None and res["accuracy"]["later_mean"] > res["accuracy"]["first"]
        ),
        "last10_more_accurate_than_first10": (
            accs.size > 10 and res["accuracy"]["last10_mean"] > res["accuracy"]["first10_mean"]
        ),
    }
    if args.curve:
        res["curve"] = []
        for v in versions[args.curve - 1 :: args.curve]:
            p = predict_proba(LinearModel(np.array(v["params"][:-1]), v["params"][-1]), x_test)
            res["curve"].append({"version": v["version"], "f1": _scores(y_test, p)["f1"], "accuracy": v["accuracy"]})
    return res


def report(res: dict) -> str:
    s, cfg = res["stream"], res["config"]
    lines = [
        f"stream: {s['readings']:,} readings from {cfg['devices']:,} devices over {cfg['seconds']:g} s "
        f"(seed {cfg['seed']}); {s['local_rounds']:,} local rounds of {s['mean_round_samples']:.1f} samples; "
        f"{s['global_versions']} global versions; staleness mean {s['mean_staleness']:.1f}, max {s['max_staleness']}; "
        f"train_round {s['train_round_us']:.0f} us; {s['seconds']:.0f} s",
        f"training readings {s['train_readings']:,} ({100 * s['train_anomaly_rate']:.1f}% anomalous), "
        f"held-out readings {s['test_readings']:,}",
        f"learning rate {cfg['learning_rate']:g}, epochs {cfg['epochs']}, prior {cfg['prior']:g}, "
        f"{'absolute weights' if cfg['absolute'] else 'changes from base versions'}"
        f"{'; LEGACY features' if cfg['legacy_features'] else ''}",
        "",
        "| model | F1 | precision | recall | ROC-AUC | device-mean F1 | device-mean precision | device-mean recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {"global": "latest global", "central": "central LR", "local": "local-only"}
    for key, name in names.items():
        p, m = res["pooled"][key], res["device_mean"][key]
        lines.append(
            f"| {name} | {p['f1']:.3f} | {p['precision']:.3f} | {p['recall']:.3f} | {p['roc_auc']:.3f} "
            f"| {m['f1']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} |"
        )
    a, r = res["accuracy"], res["requirement"]
    lines += [
        "",
        f"device-mean over {res['device_mean']['global']['devices']} devices with a held-out positive",
        f"accuracy before training: v1 {a['first']:.3f}, later versions mean {a['later_mean']:.3f} "
        f"({100 * a['later_share_above_first']:.0f}% above v1); first 10 versions {a['first10_mean']:.3f}, "
        f"last 10 {a['last10_mean']:.3f}",
        f"global - central F1 {r['global_minus_central_f1']:+.3f} (within 0.03: {r['within_0.03_of_central']}); "
        f"above local-only device mean: {r['above_local_only_device_mean']}",
        f"central without L2 (as MLlib regParam 0): F1 {res['central_unregularised']['f1']:.3f}",
        f"weights+bias: global {res['weights']['global']}  central {res['weights']['central']}",
    ]
    for c in res.get("curve", []):
        lines.append(f"  v{c['version']}: F1 {c['f1']:.3f}, accuracy {c['accuracy']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.legacy_features:
        use_legacy_features()
    res = run(args)
    print(report(res))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
