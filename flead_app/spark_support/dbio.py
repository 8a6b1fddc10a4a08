"""What the Spark jobs read from and write to PostgreSQL, through ``flead_app.io.db.store.Database``.

Results are recomputed as a whole, so every write is ``replace_rows``: one analytics window, or
one (model_kind, model_version) evaluation, is deleted and inserted in one transaction. For an
evaluation the per-sample rows are written before the summary row, and a version counts as
evaluated only once its summary exists, so a run that dies in between is simply redone.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
from sqlalchemy import and_, func, select

from flead_app.algorithms.incident_features import NUM_FEATURES
from flead_app.io.db.schema import evaluation_summaries, federated_models
from flead_app.io.db.store import Database
from flead_app.spark_support.analytics import Window
from flead_app.spark_support.evaluation import KIND_GLOBAL, SPLIT_POOLED, GlobalVersion, RunResult


def write_analytics(db: Database, window: Window, rows: list[dict]) -> int:
    """Replace the rows of exactly this window (same start and end)."""
    return db.replace_rows("stream_analytics", {"window_start": window.start, "window_end": window.end}, rows)


def _pending_query(all_versions: bool, only: Collection[int] | None = None):  # noqa: ANN202 - a Select
    """Newest row of each global version whose weights fit our features, not yet evaluated."""
    fm = federated_models
    latest = (
        select(fm.c.global_version, func.max(fm.c.created_at).label("created_at"))
        .group_by(fm.c.global_version)
        .subquery()
    )
    query = (
        select(fm.c.global_version, fm.c.weights, fm.c.bias)
        .join(latest, and_(fm.c.global_version == latest.c.global_version, fm.c.created_at == latest.c.created_at))
        .where(func.cardinality(fm.c.weights) == NUM_FEATURES)  # a model over other features cannot be scored
    )
    if only is not None:
        query = query.where(fm.c.global_version.in_(sorted(only)))
    if not all_versions:
        es = evaluation_summaries
        done = select(es.c.model_version).where(es.c.model_kind == KIND_GLOBAL, es.c.split == SPLIT_POOLED)
        query = query.where(fm.c.global_version.not_in(done))
    return query.order_by(fm.c.global_version)


def pending_versions(
    db: Database, all_versions: bool = False, only: Collection[int] | None = None
) -> list[GlobalVersion]:
    """Global versions without a pooled held-out summary (or all with ``all_versions``; only
    those in ``only`` when given); the newest row of a version the sink stored more than once."""
    with db.engine.connect() as conn:
        rows = conn.execute(_pending_query(all_versions, only)).all()
    return [GlobalVersion(int(v), np.asarray(w or [], dtype=np.float64), float(b)) for v, w, b in rows]


def count_pending(db: Database) -> int:
    with db.engine.connect() as conn:
        sub = _pending_query(False).subquery()
        return int(conn.execute(select(func.count()).select_from(sub)).scalar_one())


def write_evaluation(db: Database, result: RunResult) -> tuple[int, int]:
    """Replace, per evaluated model, its sample rows then its summary rows; (samples, summaries)."""
    samples = summaries = 0
    for ev in result.evaluations:
        where = {"model_kind": ev.kind, "model_version": ev.version}
        rows = [r for r in result.samples if r["model_kind"] == ev.kind and r["model_version"] == ev.version]
        samples += db.replace_rows("model_evaluations", where, rows)
        rows = [r for r in result.summaries if r["model_kind"] == ev.kind and r["model_version"] == ev.version]
        summaries += db.replace_rows("evaluation_summaries", where, rows)
    return samples, summaries
