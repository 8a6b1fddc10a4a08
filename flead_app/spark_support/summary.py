"""``evaluation_summary(engine)``: the held-out results as one dict, for ``flead report`` and pages.

Reads evaluation_summaries only (cheap, no Spark). The baselines shown are those of the newest
evaluation run (the highest ``model_version`` a local/central row carries, which is the newest
global version that run evaluated), next to that global version's own results, so all three
come from the same evaluation set.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.engine import Engine

from flead_app.io.db.schema import evaluation_summaries
from flead_app.spark_support.evaluation import (
    KIND_CENTRAL,
    KIND_GLOBAL,
    KIND_LOCAL,
    SPLIT_DEVICE_MEAN,
    SPLIT_POOLED,
)

METRICS = (
    "samples", "accuracy", "precision", "recall", "f1", "roc_auc", "tp", "fp", "tn", "fn",
    "event_recall", "false_alarms_per_1000",
)  # fmt: skip


def _metrics(row: Any) -> dict[str, Any]:
    out = {k: getattr(row, k) for k in METRICS}
    out["model_version"] = int(row.model_version)
    out["evaluated_at"] = row.evaluated_at.isoformat() if row.evaluated_at else None
    return out


def evaluation_summary(engine: Engine, history: int = 100) -> dict[str, Any]:
    """Latest and best global version, the baselines beside it, and the F1 history.

    Keys: ``versions_evaluated``; ``latest_global`` / ``best_global`` (pooled held-out metrics,
    each with ``device_mean`` = the per-device means, or None); ``baselines`` {"local",
    "central"} (same shape, at ``baseline_version``); ``history`` [{model_version, f1,
    accuracy, roc_auc, event_recall}] of the last ``history`` versions. Empty values when nothing
    has been evaluated yet (or the table does not exist).
    """
    empty: dict[str, Any] = {
        "versions_evaluated": 0,
        "latest_global": None,
        "best_global": None,
        "baseline_version": None,
        "baselines": {KIND_LOCAL: None, KIND_CENTRAL: None},
        "history": [],
    }
    if not inspect(engine).has_table(evaluation_summaries.name):
        return empty
    es = evaluation_summaries
    with engine.connect() as conn:
        rows = conn.execute(select(es).order_by(es.c.model_version, es.c.evaluated_at)).all()
    by_key = {(r.model_kind, int(r.model_version), r.split): r for r in rows}  # newest evaluation wins

    def entry(kind: str, version: int) -> dict[str, Any] | None:
        pooled = by_key.get((kind, version, SPLIT_POOLED))
        if pooled is None:
            return None
        out = _metrics(pooled)
        mean = by_key.get((kind, version, SPLIT_DEVICE_MEAN))
        out["device_mean"] = _metrics(mean) if mean is not None else None
        return out

    globals_ = sorted({v for k, v, s in by_key if k == KIND_GLOBAL and s == SPLIT_POOLED})
    if not globals_:
        return empty
    latest = globals_[-1]
    best = max(globals_, key=lambda v: (by_key[(KIND_GLOBAL, v, SPLIT_POOLED)].f1, v))
    baseline_versions = [v for k, v, s in by_key if k in (KIND_LOCAL, KIND_CENTRAL) and s == SPLIT_POOLED]
    baseline_version = max(baseline_versions) if baseline_versions else None
    hist = []
    for v in globals_[-history:]:
        r = by_key[(KIND_GLOBAL, v, SPLIT_POOLED)]
        hist.append(
            {
                "model_version": v,
                "f1": r.f1,
                "accuracy": r.accuracy,
                "roc_auc": r.roc_auc,
                "event_recall": r.event_recall,
            }
        )
    return {
        "versions_evaluated": len(globals_),
        "latest_global": entry(KIND_GLOBAL, latest),
        "best_global": entry(KIND_GLOBAL, best),
        "baseline_version": baseline_version,
        "baselines": {
            kind: entry(kind, baseline_version) if baseline_version is not None else None
            for kind in (KIND_LOCAL, KIND_CENTRAL)
        },
        "history": hist,
    }
