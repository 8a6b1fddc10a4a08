"""What the Spark jobs read from and write to PostgreSQL, through ``flead_app.io.db.store.Database``.

Results are recomputed as a whole, so every write is ``replace_rows``: one analytics window, or
one (model_kind, model_version) evaluation, is deleted and inserted in one transaction. A version
counts as evaluated once its readings-split summary exists, so a run that dies is simply redone.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
from sqlalchemy import and_, func, select

from flead_app.io.db.schema import evaluation_summaries, federated_models
from flead_app.io.db.store import Database
from flead_app.spark_support.analytics import Window
from flead_app.spark_support.evaluation import KIND_GLOBAL, SPLIT_READINGS, GlobalVersion, RunResult, epoch


def write_analytics(db: Database, window: Window, rows: list[dict], site: int | None = None) -> int:
    """Replace the rows of exactly this window (same start and end) of the central cluster, or of ``site``."""
    where = {"window_start": window.start, "window_end": window.end, "site": site}
    return db.replace_rows("stream_analytics", where, rows)


def _pending_query(all_versions: bool, only: Collection[int] | None = None):  # noqa: ANN202 - a Select
    """Newest row of each global version, not yet evaluated (no summary on the readings split)."""
    fm = federated_models
    latest = (
        select(fm.c.global_version, func.max(fm.c.created_at).label("created_at"))
        .group_by(fm.c.global_version)
        .subquery()
    )
    same = and_(fm.c.global_version == latest.c.global_version, fm.c.created_at == latest.c.created_at)
    columns = (fm.c.global_version, fm.c.weights, fm.c.bias, fm.c.created_at, fm.c.threshold, fm.c.score_loc,
               fm.c.score_scale)  # fmt: skip
    query = select(*columns).join(latest, same)
    if only is not None:
        query = query.where(fm.c.global_version.in_(sorted(only)))
    if not all_versions:
        es = evaluation_summaries
        done = select(es.c.model_version).where(es.c.model_kind == KIND_GLOBAL, es.c.split == SPLIT_READINGS)
        query = query.where(fm.c.global_version.not_in(done))
    return query.order_by(fm.c.global_version)


def pending_versions(
    db: Database, all_versions: bool = False, only: Collection[int] | None = None
) -> list[GlobalVersion]:
    """Global versions not evaluated yet (or all with ``all_versions``; only those in ``only`` when
    given); the newest row of a version the sink stored more than once."""
    with db.engine.connect() as conn:
        rows = conn.execute(_pending_query(all_versions, only)).all()
    return [
        GlobalVersion(int(v), np.asarray(w or [], dtype=np.float64), float(b), epoch(at), th, loc, scale)
        for v, w, b, at, th, loc, scale in rows
    ]


def count_pending(db: Database) -> int:
    with db.engine.connect() as conn:
        sub = _pending_query(False).subquery()
        return int(conn.execute(select(func.count()).select_from(sub)).scalar_one())


def write_evaluation(db: Database, result: RunResult) -> int:
    """Replace, per (model kind, model version) the run evaluated, its sample rows then its summary
    rows (a version counts as evaluated once its summaries exist); summary rows written."""
    return write_summary_rows(db, result.summaries, result.samples)


def write_summary_rows(db: Database, summaries: Sequence[dict], samples: Sequence[dict] = ()) -> int:
    """``write_evaluation`` of these rows (a federated evaluation has summaries only)."""
    written = 0
    keys = sorted({(r["model_kind"], r["model_version"]) for r in summaries})
    for kind, version in keys:
        where = {"model_kind": kind, "model_version": version}
        picked = [r for r in samples if r["model_kind"] == kind and r["model_version"] == version]
        if picked:
            db.replace_rows("model_evaluations", where, picked)
        rows = [r for r in summaries if r["model_kind"] == kind and r["model_version"] == version]
        written += db.replace_rows("evaluation_summaries", where, rows)
    return written
