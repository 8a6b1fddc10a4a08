"""Per-reading cost of the incident learner's hot path: features + calibration + score + alarms.

    .venv/bin/python scripts/bench_incident.py [--batch 50] [--readings 100000] [--features union]

One device, batches of ``--batch`` readings (the worker's messages of one device), the global
model fixed; prints microseconds per reading for ``detection.score_batch`` (the z-rule's loop,
which the worker runs for every reading anyway; with ``--features union`` its features are also
the model's last four), ``incident_features.score`` alone, the whole ``incident_learner.ingest``
(which also buffers training samples; union: plus the detector's loop), and one ``train_round``
of 50 samples (SGD, gradient and Hessian), best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from flead_app.algorithms import detection
from flead_app.algorithms.incident_features import IncidentState, null_tables, score, uncentred_detector_features
from flead_app.algorithms.incident_learner import IncidentModel, LearnerConfig, LearnerState, ingest, train_round


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--readings", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--features", choices=("incident", "union"), default="incident")
    a = p.parse_args()
    cfg = LearnerConfig(features=a.features)
    width = cfg.num_features
    null_tables(features=width)
    rng = np.random.default_rng(0)
    n = a.readings
    t = np.arange(n) * 300.0
    x = rng.normal(10.0, 2.0, n) + np.sin(np.arange(n) / 288 * 2 * np.pi)
    y = np.zeros(n, np.int8)
    y[n // 2 : n // 2 + 200] = 1
    model = IncidentModel(5, np.linspace(0.1, -0.1, width), -3.0, 1.0)
    union = a.features == "union"
    best = {"detector": 1e9, "score": 1e9, "ingest": 1e9, "round": 1e9}
    for _ in range(a.repeat):
        ds = detection.DetectorState()
        t0 = time.perf_counter()
        dets = []
        for i in range(0, n, a.batch):
            r = detection.score_batch(ds, x[i : i + a.batch])
            ds = r.state
            dets.append(r.features)
        best["detector"] = min(best["detector"], (time.perf_counter() - t0) / n * 1e6)
        st = IncidentState()
        t0 = time.perf_counter()
        for j, i in enumerate(range(0, n, a.batch)):
            extra = uncentred_detector_features(dets[j]) if union else None
            st = score(st, t[i : i + a.batch], x[i : i + a.batch], extra).state
        best["score"] = min(best["score"], (time.perf_counter() - t0) / n * 1e6)
        ls, ds = LearnerState(), detection.DetectorState()
        t0 = time.perf_counter()
        for i in range(0, n, a.batch):
            df = None
            if union:
                r = detection.score_batch(ds, x[i : i + a.batch])
                ds, df = r.state, r.features
            ls, _ = ingest(ls, t[i : i + a.batch], x[i : i + a.batch], y[i : i + a.batch], model, cfg,
                           detector_features=df)  # fmt: skip
            if ls.train_y.shape[0] > 5_000:
                ls = LearnerState(features=ls.features, since_alarm=ls.since_alarm)
        best["ingest"] = min(best["ingest"], (time.perf_counter() - t0) / n * 1e6)
        rs = LearnerState(train_x=rng.normal(0, 1, (50, width)), train_y=(rng.random(50) < 0.05).astype(np.int8))
        t0 = time.perf_counter()
        for _ in range(200):
            train_round(rs, 0.0, cfg, model)
        best["round"] = min(best["round"], (time.perf_counter() - t0) / 200 * 1e6)
    print(f"batch {a.batch}, {a.features} ({width} features): detector loop {best['detector']:.2f} us/reading; "
          f"features+calibration {best['score']:.2f} us/reading; ingest (features, score, threshold, refractory "
          f"alarms, training buffer{', detector loop' if union else ''}) {best['ingest']:.2f} us/reading; "
          f"train_round of 50 samples {best['round']:.0f} us")  # fmt: skip


if __name__ == "__main__":
    main()
