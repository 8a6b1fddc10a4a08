"""Per-reading cost of the product's device step and per-update cost of its server step.

    .venv/bin/python scripts/bench_incident.py [--readings 50000] [--repeat 3]

One device (5-minute steps, a daily cycle, one labelled window), a global version with a
threshold, every reading scored, decided and buffered, rounds every 50 readings, as the detector
agent calls ``device.step``:

* ``step, batch B``: one ``step`` call per message of B readings (B = 50 and 1: a gateway's
  batches, and the simulator's single readings each in its own micro-batch, the worst case);
* ``step, 50 messages of 1``: one ``step`` call per micro-batch holding 50 single-reading
  messages of the device (what the agent does when a device sends fast);
* the pieces at batch 50: ``detection.score_batch`` (the z-rule's loop, run for every reading
  anyway) and ``incident_features.score`` (six statistics + calibration of all ten);
* ``train_round``: one round of 50 samples (SGD, gradient and Hessian, histogram, moments);
* the server: ``FedBuffState.offer`` per update (every 20th makes a version: the Newton solve,
  histogram and moments merged), amortised per update.

Best of ``--repeat`` runs (the machine is shared: the best run is the least disturbed).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from flead_app.algorithms import detection
from flead_app.algorithms.device import (
    DeviceConfig,
    DeviceMessage,
    DeviceState,
    GlobalParams,
    initial_global,
    step,
    train_round,
)
from flead_app.algorithms.fedbuff import FedBuffConfig, FedBuffState
from flead_app.algorithms.incident_features import NUM_FEATURES, IncidentState, null_tables, score
from flead_app.models import LocalModelUpdate, format_timestamp


def _stream(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    t = 1_700_000_000.0 + np.arange(n) * 300.0
    x = rng.normal(10.0, 2.0, n) + np.sin(np.arange(n) / 288 * 2 * np.pi)
    y = np.zeros(n, np.int8)
    y[n // 2 : n // 2 + 200] = 1
    x[n // 2 + 100 : n // 2 + 200] += 8.0
    return t, x, y


def _best(fn, repeat: int) -> float:  # noqa: ANN001
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--readings", type=int, default=50_000)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    null_tables()
    n = a.readings
    t, x, y = _stream(n)
    cfg = DeviceConfig(holdout_device_percent=0.0)
    w = np.zeros(NUM_FEATURES)
    w[[0, 1, 6, 7]] = [0.1, 0.2, 0.4, 0.5]
    g = GlobalParams(5, w, -3.0, threshold=2.5, score_loc=-3.0, score_scale=0.6)
    device = "bench-device"

    rows = []
    for label, batch, per in (("step, batch 50", 50, 1), ("step, batch 1", 1, 1), ("step, 50 messages of 1", 1, 50)):
        m = n if batch == 50 or per == 50 else n // 5  # single-reading calls are slow: fewer readings
        tt, xx, yy = t[:m], x[:m], y[:m]

        def go(batch=batch, per=per, tt=tt, xx=xx, yy=yy) -> None:  # noqa: ANN001
            state = DeviceState()
            msgs = [DeviceMessage(float(i), tt[i : i + batch], xx[i : i + batch], yy[i : i + batch])
                    for i in range(0, tt.shape[0], batch)]  # fmt: skip
            for k in range(0, len(msgs), per):
                state = step(state, msgs[k : k + per], g, device, cfg).state

        rows.append((label, 1e6 * _best(go, a.repeat) / m, "us/reading"))

    def pieces() -> tuple[float, float]:
        det_s = feat_s = 0.0
        ds, fs = detection.DetectorState(), IncidentState()
        for i in range(0, n, 50):
            t0 = time.perf_counter()
            d = detection.score_batch(ds, x[i : i + 50])
            t1 = time.perf_counter()
            r = score(fs, t[i : i + 50], x[i : i + 50], d.features)
            t2 = time.perf_counter()
            ds, fs = d.state, r.state
            det_s, feat_s = det_s + t1 - t0, feat_s + t2 - t1
        return det_s, feat_s

    best = min((pieces() for _ in range(a.repeat)), key=sum)
    rows.append(("  of which detection.score_batch, batch 50", 1e6 * best[0] / n, "us/reading"))
    rows.append(("  of which incident_features.score, batch 50", 1e6 * best[1] / n, "us/reading"))
    rng = np.random.default_rng(1)
    xs = rng.exponential(size=(50, NUM_FEATURES)) - 1.0
    ys = (rng.random(50) < 0.05).astype(np.int8)
    st = DeviceState(buffer_features=xs, buffer_labels=ys)
    reps = 200
    rows.append(("train_round, 50 samples", 1e6 * _best(lambda: [train_round(st, 0.0, cfg, g) for _ in range(reps)],
                                                         a.repeat) / reps, "us/round"))  # fmt: skip
    # the server: updates from real rounds, a version every 20
    v0 = initial_global(cfg)
    fcfg = FedBuffConfig(initial=(*v0.weights.tolist(), v0.bias))
    updates = []
    for k in range(400):
        xs = rng.exponential(size=(50, NUM_FEATURES)) - 1.0
        ys = (xs[:, 0] + rng.logistic(size=50) > 3).astype(np.int8)
        _, r = train_round(DeviceState(buffer_features=xs, buffer_labels=ys), 0.0, cfg, g)
        updates.append(LocalModelUpdate(
            f"d{k}", 1, 5, r.weights.tolist(), r.bias, r.accuracy, r.loss, r.samples, format_timestamp(1.7e9),
            positives=r.positives, base_params=r.base_params.tolist(), curvature=r.curvature.tolist(),
            normal_histogram={str(b): int(c) for b, c in r.normal_histogram.items()},
            normal_moments=r.normal_moments.tolist(),
        ))  # fmt: skip

    def serve() -> None:
        state = FedBuffState.start(fcfg)
        for k, u in enumerate(updates):
            state, _ = state.offer(u, float(k), fcfg)

    rows.append(("FedBuffState.offer (Newton, buffer 20), amortised", 1e6 * _best(serve, a.repeat) / len(updates),
                 "us/update"))  # fmt: skip
    for label, v, unit in rows:
        print(f"{label:55s} {v:8.1f} {unit}")


if __name__ == "__main__":
    main()
