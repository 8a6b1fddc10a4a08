"""Federated evaluation in the sites topology: each site scores global versions on its own
held-out readings and sends summaries; the centre merges them into the evaluation tables.

``flead spark evaluate-site`` (``FLEAD_SITE=k``) runs at site k against the site's own cluster:
it replays the site's readings with Spark exactly as ``flead spark evaluate`` does centrally,
takes the global versions from the site's own ``global-model-updates`` (MirrorMaker brings them;
the site needs no database), and scores each version it has not reported yet with
``evaluation.site_evaluation``. It sends one ``models.SiteEvaluation`` per (model, version,
split) to the site's ``site-evaluations`` topic, keyed by site: confusion counts, windows and
detection delays, NAB's per-series summaries and two score histograms, never a reading.
MirrorMaker carries that topic to the centre with the model updates.

``flead spark merge-evaluations`` runs centrally: it reads every site's summaries, keeps each
site's newest report of each (model, version, split), merges those every site has reported
(``evaluation.merge_site_evaluations``) and replaces their rows in ``evaluation_summaries``, so
the report, the dashboards and ``flead spark summary`` read them as they read a central
evaluation. Those rows equal a central evaluation of the same readings (every count, F1, event
recall, false alarms, delays and NAB scores exactly; ROC-AUC and PR-AUC within 0.01, from the
histograms), except two baselines: no central model (it would need the pooled readings) and
random alarms drawn at each site's own global false-alarm rate. No per-reading sample rows
(``model_evaluations``) either: those are readings.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from flead_app.algorithms.metrics import MetricsSummary
from flead_app.io.db.store import Database
from flead_app.io.kafka import producer, read_to_end, start_client
from flead_app.models import GlobalModel, InvalidRecord, SiteEvaluation, parse_timestamp, utc_now_iso
from flead_app.settings import Settings
from flead_app.spark_support.evaluation import (
    KIND_GLOBAL,
    SPLIT_READINGS,
    GlobalVersion,
    SiteSummaries,
    merge_site_evaluations,
    series_from_rows,
    site_evaluation,
    thin_versions,
)
from flead_app.spark_support.jobs import device_config, replayed_rows

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def global_versions(values: Iterable[bytes]) -> tuple[list[GlobalVersion], int]:
    """The global versions in these ``global-model-updates`` values (the newest record of a
    version published more than once, as the database keeps), and how many values were refused.

    >>> m = GlobalModel(2, 2, [0.5], -3.0, 0.9, 2, 40, "2026-01-01T00:00:00.000Z", threshold=1.0, score_loc=0.0,
    ...                 score_scale=1.0)
    >>> versions, refused = global_versions([m.to_json(), b"{"])
    >>> [(v.version, v.bias, v.threshold) for v in versions], refused
    ([(2, -3.0, 1.0)], 1)
    """
    newest: dict[int, GlobalVersion] = {}
    refused = 0
    for value in values:
        try:
            m = GlobalModel.from_json(value)
        except InvalidRecord:
            refused += 1
            continue
        at = parse_timestamp(m.timestamp)
        if m.global_version not in newest or at >= newest[m.global_version].created_at:
            newest[m.global_version] = GlobalVersion(
                m.global_version, np.asarray(m.weights, dtype=np.float64), float(m.bias), at, m.threshold,
                m.score_loc, m.score_scale,
            )  # fmt: skip
    return sorted(newest.values(), key=lambda v: v.version), refused


def reported_by_site(values: Iterable[bytes]) -> tuple[dict[int, SiteSummaries], int]:
    """Each site's newest report of each (model, version, split), from ``site-evaluations``
    values in offset order (one key per site, so a site's reports are in order), and how many
    values were refused."""
    by_site: dict[int, SiteSummaries] = {}
    refused = 0
    for value in values:
        try:
            e = SiteEvaluation.from_json(value)
            summary = MetricsSummary.from_dict(e.summary) if e.summary is not None else None
        except (InvalidRecord, KeyError, TypeError, ValueError, AttributeError):
            refused += 1
            continue
        by_site.setdefault(e.site, {})[(e.model_kind, e.model_version, e.split)] = summary
    return by_site, refused


def _values(settings: Settings, topic: str) -> list[bytes]:
    records = asyncio.run(read_to_end(settings, topic))
    return [r.value for r in sorted(records, key=lambda r: (r.partition, r.offset)) if r.value is not None]


async def _send(settings: Settings, topic: str, key: bytes, values: Sequence[bytes]) -> None:
    client = producer(settings, compression_type="gzip", max_request_size=8 * 1024 * 1024)
    await start_client(client, settings)
    try:
        await asyncio.gather(*[await client.send(topic, value, key=key) for value in values])
    finally:
        await client.stop()


@dataclass(frozen=True)
class SiteEvaluateResult:
    site: int
    versions: list[int]
    latest: int | None
    readings: int  # scored, labelled readings of the site's devices
    devices: int
    records_sent: int
    bytes_sent: int  # the summaries' JSON before compression
    messages: Counter = field(default_factory=Counter)
    refused_global_models: int = 0
    reason: str = ""


def site_evaluate_job(
    spark: SparkSession, settings: Settings, all_versions: bool = False, every: int = 1
) -> SiteEvaluateResult:
    """Evaluate at site ``settings.site`` the global versions it has not reported yet (every one
    with ``all_versions``; the first, the last and every ``every``-th with ``every``), send the
    summaries to the site's ``site-evaluations`` topic."""
    site = settings.site
    if site < 1:
        raise ValueError("evaluate-site runs at a site: set FLEAD_SITE=k (1..sites)")
    published, refused = global_versions(_values(settings, settings.topic_global_updates))
    done, _ = reported_by_site(_values(settings, settings.topic_site_evaluations))
    reported = {v for (kind, v, split) in done.get(site, {}) if kind == KIND_GLOBAL and split == SPLIT_READINGS}
    versions = [v for v in published if all_versions or v.version not in reported]
    if every > 1:
        keep = set(thin_versions([v.version for v in versions], every))
        versions = [v for v in versions if v.version in keep]
    if not versions:
        return SiteEvaluateResult(site, [], None, 0, 0, 0, 0, refused_global_models=refused,
                                  reason="no global version waits for this site's evaluation")  # fmt: skip
    cfg = device_config(settings)
    parsed, rows_rdd, statuses = replayed_rows(spark, settings, cfg)
    try:
        rows = rows_rdd.collect()
    finally:
        rows_rdd.unpersist()
        parsed.unpersist()
    series = series_from_rows(rows, cfg)
    summaries = site_evaluation(series, versions, published, cfg)
    if not summaries:
        why = "no labelled reading at this site, or no version fits its features"
        return SiteEvaluateResult(site, [], None, len(rows), len(series), 0, 0, statuses, refused, reason=why)
    run, now = uuid.uuid4().hex[:12], utc_now_iso()
    values = [
        SiteEvaluation(site, run, kind, version, split, s.to_dict() if s is not None else None, now).to_json()
        for (kind, version, split), s in sorted(summaries.items())
    ]
    asyncio.run(_send(settings, settings.topic_site_evaluations, f"site-{site}".encode(), values))
    evaluated = sorted({version for (_, version, _) in summaries})
    return SiteEvaluateResult(site, evaluated, max(evaluated), len(rows), len(series), len(values),
                              sum(len(v) for v in values), statuses, refused)  # fmt: skip


@dataclass(frozen=True)
class MergeResult:
    sites: list[int]
    reported: dict[int, int]  # site -> (model, version, split) entries it has reported
    rows: list[dict[str, Any]]
    written: int
    waiting: dict[str, list[int]]  # "kind v<version> split" -> the sites that have not reported it
    refused: int


def merge_evaluations_job(settings: Settings, db: Database, sites: Sequence[int]) -> MergeResult:
    """Merge what every site in ``sites`` reported into ``evaluation_summaries`` (rows replaced per
    model and version, as a central evaluation writes them)."""
    from flead_app.spark_support import dbio

    by_site, refused = reported_by_site(_values(settings, settings.topic_site_evaluations))
    merged = merge_site_evaluations(by_site, list(sites), datetime.now(UTC))
    written = dbio.write_summary_rows(db, merged.summaries)
    waiting = {f"{kind} v{version} {split}": missing for (kind, version, split), missing in merged.waiting.items()}
    return MergeResult(list(sites), {k: len(v) for k, v in sorted(by_site.items())}, merged.summaries, written,
                       waiting, refused)  # fmt: skip
