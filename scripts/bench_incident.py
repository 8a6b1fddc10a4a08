"""Per-reading cost of the incident learner's hot path: features + calibration + score + alarms.

    .venv/bin/python scripts/bench_incident.py [--batch 50] [--readings 100000]

One device, batches of ``--batch`` readings (the worker's messages of one device), the global
model fixed; prints microseconds per reading for ``incident_features.score`` alone, for the whole
``incident_learner.ingest`` (which also buffers training samples), and for one ``train_round``
of 50 samples, best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from flead_app.algorithms.incident_features import IncidentState, null_tables, score
from flead_app.algorithms.incident_learner import IncidentModel, LearnerConfig, LearnerState, ingest, train_round


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--readings", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    null_tables()
    rng = np.random.default_rng(0)
    n = a.readings
    t = np.arange(n) * 300.0
    x = rng.normal(10.0, 2.0, n) + np.sin(np.arange(n) / 288 * 2 * np.pi)
    y = np.zeros(n, np.int8)
    y[n // 2 : n // 2 + 200] = 1
    cfg = LearnerConfig()
    model = IncidentModel(5, np.array([0.1, 0.05, 0.15, 0.07, -0.14, 0.27]), -3.0, 1.0)
    best = {"score": 1e9, "ingest": 1e9, "round": 1e9}
    for _ in range(a.repeat):
        st = IncidentState()
        t0 = time.perf_counter()
        for i in range(0, n, a.batch):
            st = score(st, t[i : i + a.batch], x[i : i + a.batch]).state
        best["score"] = min(best["score"], (time.perf_counter() - t0) / n * 1e6)
        ls = LearnerState()
        t0 = time.perf_counter()
        for i in range(0, n, a.batch):
            ls, _ = ingest(ls, t[i : i + a.batch], x[i : i + a.batch], y[i : i + a.batch], model, cfg)
            if ls.train_y.shape[0] > 5_000:
                ls = LearnerState(features=ls.features, since_alarm=ls.since_alarm)
        best["ingest"] = min(best["ingest"], (time.perf_counter() - t0) / n * 1e6)
        rs = LearnerState(train_x=rng.normal(0, 1, (50, 6)), train_y=(rng.random(50) < 0.05).astype(np.int8))
        t0 = time.perf_counter()
        for _ in range(200):
            train_round(rs, 0.0, cfg, model)
        best["round"] = min(best["round"], (time.perf_counter() - t0) / 200 * 1e6)
    print(f"batch {a.batch}: features+calibration {best['score']:.2f} us/reading; "
          f"ingest (features, score, threshold, refractory alarms, training buffer) {best['ingest']:.2f} us/reading; "
          f"train_round of 50 samples {best['round']:.0f} us")  # fmt: skip


if __name__ == "__main__":
    main()
