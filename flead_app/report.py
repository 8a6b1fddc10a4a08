"""``flead report [--json]``: what the database holds, and the bandwidth Kafka measured.

Sections: rows per table; the latest global versions; held-out metrics of the latest
evaluated global version next to the baselines (local-only, central) when Spark has written
``evaluation_summaries``; the training rate in local models per minute; anomalies by severity
and by broker; Kafka traffic per topic and per broker; the bandwidth section.

Bandwidth is counted where a boundary is crossed. With sites (``flead stack up --sites N``)
each site's readings stay on its cluster and MirrorMaker 2 carries updates and anomalies up and
global models down: the saving is ``1 - crossed bytes / reading bytes``, per site and in total,
from the sizes of the site clusters' topics (``flead_app.io.traffic.sites_bandwidth``), and
``central_readings`` (readings on the central cluster) must be 0. On one cluster every reading
reaches the cluster, so nothing is saved; the ratio of update to reading bytes there is shown
under its own name (``one_cluster_bandwidth``).

Kafka traffic is measured on the brokers at each run and stored as a snapshot in
``kafka_traffic``; when Kafka is down (or ``--no-kafka``) the newest stored snapshot is shown,
with its time. Everything is collected into one dict (``collect``) that ``--json`` prints as is
and ``render_text`` lays out, so both outputs always carry the same figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import desc, func, select, text

log = logging.getLogger(__name__)

RECENT_MINUTES = 5
HELDOUT_POINTS = 8  # versions shown in the held-out trend line
LATEST_GLOBALS = 5


# ---------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------


def training_rate(
    count: int,
    first: datetime | None,
    last: datetime | None,
    recent: int,
    final: int | None = None,
    recent_minutes: float = RECENT_MINUTES,
) -> dict[str, Any]:
    """Local models per minute over the whole span of ``local_models`` and over windows.

    The span runs from the first to the last ``created_at``; with a single instant (one row,
    or all rows in the same millisecond) there is no rate to speak of: None. ``recent`` counts
    the models of the last minutes up to now (is it training now?); ``final`` those of the last
    minutes up to the newest model (how fast was it going at the end?), which differs when the
    run is over or ``created_at`` is the event time of a replayed data set.
    """
    span_min = (last - first).total_seconds() / 60.0 if first and last else 0.0
    return {
        "local_models": count,
        "first_at": first,
        "last_at": last,
        "span_minutes": round(span_min, 3),
        "per_minute": round(count / span_min, 3) if span_min > 0 else None,
        "recent_minutes": recent_minutes,
        "recent_local_models": recent,
        "recent_per_minute": round(recent / recent_minutes, 3),
        "final_local_models": final,
        "final_per_minute": None if final is None else round(final / recent_minutes, 3),
    }


def jsonable(value: Any) -> Any:
    """Datetimes as ISO 8601 (UTC, ``Z``), dict keys as strings, recursively."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _fmt_time(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"
    return str(value)


def _fmt_num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Columns padded to their widest cell: the first left-aligned, the others right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return (indent + "  ".join(padded)).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def render_text(report: dict[str, Any]) -> str:
    """The report as aligned text (the same figures as ``--json``)."""
    lines: list[str] = []
    db = report["database"]
    lines.append(f"FLEAD report  {_fmt_time(report['generated_at'])}")
    lines.append(f"database      {db['url']}  ({db['backend']})")
    lines.append("")
    lines.append("Rows per table")
    lines += _table(["table", "rows"], [[k, _fmt_num(v)] for k, v in report["counts"].items()])
    lines.append("")

    lines.append(f"Latest global versions (last {LATEST_GLOBALS})")
    globals_ = report["global_models"]
    if globals_:
        lines += _table(
            ["version", "round", "devices", "updates", "accuracy", "aggregator", "created_at"],
            [
                [
                    str(g["global_version"]),
                    str(g["aggregation_round"]),
                    str(g["num_devices"]),
                    str(g["num_updates"]),
                    _fmt_num(g["accuracy"], 4),
                    g["aggregator"],
                    _fmt_time(g["created_at"]),
                ]
                for g in globals_
            ],
        )
        lines.append("  (accuracy: sample-weighted accuracy of the contributing rounds, measured before training on")
        lines.append("  each round's own readings, so versions are scored on different data; the held-out")
        lines.append("  evaluation below scores every version on the same readings)")
        trend = report.get("global_trend")
        if trend:
            lines.append(
                f"  accuracy trend over {trend['versions']} versions: first v{trend['first']['global_version']} "
                f"{_fmt_num(trend['first']['accuracy'], 4)}, latest v{trend['latest']['global_version']} "
                f"{_fmt_num(trend['latest']['accuracy'], 4)}, best v{trend['best']['global_version']} "
                f"{_fmt_num(trend['best']['accuracy'], 4)}; mean of the last 10 "
                f"{_fmt_num(trend['mean_accuracy_last_10'], 4)}; "
                f"{trend['versions_beating_first']} versions beat the first"
            )
    else:
        lines.append("  no global model yet")
    lines.append("")

    lines.append("Held-out evaluation")
    ev = report["evaluation"]
    if ev is None:
        lines.append("  not evaluated yet (flead spark evaluate)")
    else:
        head = report.get("headline")
        if head:
            lines.append(
                f"  detection (global v{head['model_version']}, held-out {head['split']}): event recall "
                f"{_fmt_num(head['event_recall'], 2)}, false alarms {_fmt_num(head['false_alarms_per_1000'], 2)} "
                f"per 1,000 normal readings, F1 {_fmt_num(head['f1'])}"
            )
        ht = report.get("heldout_trend")
        if ht:
            lines.append(
                f"  held-out F1 by global version ({ht['split']}): "
                + ", ".join(f"v{p['global_version']} {_fmt_num(p['f1'])}" for p in ht["series"])
            )
            lines.append(
                f"  first v{ht['first']['global_version']} F1 {_fmt_num(ht['first']['f1'])}, latest "
                f"v{ht['latest']['global_version']} F1 {_fmt_num(ht['latest']['f1'])}, best "
                f"v{ht['best']['global_version']} F1 {_fmt_num(ht['best']['f1'])}; "
                f"{ht['versions_beating_first']} of {ht['versions']} evaluated versions beat the first; "
                f"stability (worst second-half F1 / best) {_fmt_num(ht.get('stability'), 2)}"
            )
        lines.append(render_splits(ev["splits"], ev["global_version"], None))
    lines.append("")

    tr = report["training"]
    lines.append("Training rate (local models per minute)")
    lines.append(
        f"  overall     {_fmt_num(tr['per_minute'], 2):>10}   {tr['local_models']:,} models over "
        f"{tr['span_minutes']:.1f} min ({_fmt_time(tr['first_at'])} .. {_fmt_time(tr['last_at'])})"
    )
    lines.append(
        f"  last {tr['recent_minutes']:g} min  {_fmt_num(tr['recent_per_minute'], 2):>10}   "
        f"{tr['recent_local_models']:,} models up to now"
    )
    if tr.get("final_local_models") is not None:
        lines.append(
            f"  final {tr['recent_minutes']:g} min {_fmt_num(tr['final_per_minute'], 2):>10}   "
            f"{tr['final_local_models']:,} models up to the newest one"
        )
    lines.append("")

    wk = report.get("worker")
    if wk:
        lines.append(
            f"Worker ({wk['url']}): {wk['readings']:,} readings applied, {wk['misplaced_forwarded']:,} moved to "
            f"their device's partition (a producer with another partitioner), {wk['dead_letters']:,} dead letters, "
            f"{wk['outputs_never_acknowledged']} outputs never acknowledged"
        )
        lines.append("")

    an = report["anomalies"]
    lines.append(f"Anomalies: {an['total']:,}")
    if an["total"]:
        lines += _table(["severity", "count"], [[k, _fmt_num(v)] for k, v in an["by_severity"].items()])
        lines += _table(["broker", "count"], [[str(k), _fmt_num(v)] for k, v in an["by_broker"].items()])
    lines.append("")

    k = report["kafka"]
    lines.append("Kafka traffic (bytes stored at each partition's leader)")
    if k["measured_at"] is not None and k["summary"] is None:
        lines.append("  central cluster: no FLEAD topic measured")
    if k["measured_at"] is None:
        lines.append(f"  no measurement: {k.get('note') or 'Kafka not reachable and no stored snapshot'}")
    else:
        lines.append(
            f"  measured {_fmt_time(k['measured_at'])} via {k['method']}"
            + (f"  [{k['note']}]" if k.get("note") else "")
        )
    if k["measured_at"] is not None and k["summary"] is not None:
        s = k["summary"]
        lines += _table(
            ["topic", "partitions", "messages", "bytes", ""],
            [
                [t, str(v["partitions"]), _fmt_num(v["messages"]), _fmt_num(v["bytes"]), human_bytes(v["bytes"])]
                for t, v in s["topics"].items()
            ],
        )
        lines += _table(
            ["broker", "leader partitions", "messages", "bytes", ""],
            [
                [
                    str(b),
                    str(v["leader_partitions"]),
                    _fmt_num(v["messages"]),
                    _fmt_num(v["bytes"]),
                    human_bytes(v["bytes"]),
                ]
                for b, v in s["brokers"].items()
            ],
        )
        saving = s["bandwidth_saving"]
        shown = "-" if saving is None else f"{saving:.1%}"
        if saving is not None and s["model_bytes"] == 0:
            shown += " (no model-update bytes on Kafka yet)"
        if not k.get("sites"):  # one cluster: the old "bandwidth saving", named for what it is
            lines.append(
                f"  1 - update bytes / reading bytes on this one cluster: {shown}  = 1 - (local "
                f"{s['local_update_bytes']:,} + global {s['global_update_bytes']:,}) / readings {s['reading_bytes']:,}"
            )
            lines.append("  (not a bandwidth saving: both sit on the same cluster; see Bandwidth below)")
    for site, ss in (k.get("sites") or {}).items():
        lines.append(f"  site {site}'s cluster")
        lines += _table(
            ["topic", "partitions", "messages", "bytes", ""],
            [
                [t, str(v["partitions"]), _fmt_num(v["messages"]), _fmt_num(v["bytes"]), human_bytes(v["bytes"])]
                for t, v in ss["topics"].items()
            ],
            indent="    ",
        )
    lines.append("")
    lines += render_bandwidth(report.get("bandwidth"), report.get("central_readings"))
    lines += ["", *render_privacy(report.get("privacy"))]
    return "\n".join(lines) + "\n"


def render_bandwidth(b: dict[str, Any] | None, central_readings: int | None) -> list[str]:
    """The bandwidth section: bytes across each site's boundary, or why one cluster saved nothing."""
    lines = ["Bandwidth"]
    if b is None:
        return [*lines, "  not measured"]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    if b["topology"] == "one-cluster":
        lines.append(
            f"  topology: one cluster. Every reading ({b['reading_bytes']:,} bytes) went to it: "
            "no bandwidth was saved (saving 0%)."
        )
        lines.append(
            f"  update bytes / reading bytes on that same cluster: {pct(b['update_to_reading_ratio'])} "
            f"({b['update_bytes']:,} / {b['reading_bytes']:,}); a ratio, not a saving"
        )
    else:
        lines.append("  topology: sites; bytes that crossed each site's boundary (MirrorMaker, both directions)")
        lines += _table(
            ["site", "reading bytes", "up bytes", "down bytes", "crossed bytes", "saving", "not yet replicated"],
            [
                [
                    k,
                    _fmt_num(v["reading_bytes"]),
                    _fmt_num(v["up_bytes"]),
                    _fmt_num(v["down_bytes"]),
                    _fmt_num(v["crossed_bytes"]),
                    pct(v["saving"]),
                    "-" if v["pending_records"] is None else f"{v['pending_records']:,} records",
                ]
                for k, v in b["per_site"].items()
            ]
            + [["total", _fmt_num(b["reading_bytes"]), "", "", _fmt_num(b["crossed_bytes"]), pct(b["saving"]), ""]],
        )
        lines.append(
            f"  bandwidth saving: {pct(b['saving'])} = 1 - crossed {b['crossed_bytes']:,} / readings "
            f"{b['reading_bytes']:,} bytes; the central cluster stored {b['arrived_central_bytes']:,} "
            "bytes of what came up (MirrorMaker's own batching, copies from re-delivery, and after"
        )
        lines.append("  `flead stack reset` the bytes of deleted records until their log segments roll)")
    lines.append(f"  readings on the central cluster: {'-' if central_readings is None else f'{central_readings:,}'}")
    return lines


# ---------------------------------------------------------------------------------------
# Collecting (I/O)
# ---------------------------------------------------------------------------------------


def _backend(conn: Any) -> str:
    row = conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")).first()
    return f"timescaledb {row[0]}" if row else "postgresql"


def collect_database(db: Any, now: datetime | None = None) -> dict[str, Any]:
    """Every database section of the report (no Kafka)."""
    from flead_app.io.db.schema import anomalies, evaluation_summaries, federated_models, local_models

    out: dict[str, Any] = {"counts": db.count_rows()}
    with db.engine.connect() as conn:
        out["database"] = {"url": db.safe_url, "backend": _backend(conn)}
        now = now or conn.execute(select(func.now())).scalar_one()
        out["generated_at"] = now

        rows = (
            conn.execute(
                select(
                    federated_models.c.global_version,
                    federated_models.c.aggregation_round,
                    federated_models.c.num_devices,
                    federated_models.c.num_updates,
                    federated_models.c.samples,
                    federated_models.c.accuracy,
                    federated_models.c.aggregator,
                    federated_models.c.created_at,
                )
                .order_by(desc(federated_models.c.global_version), desc(federated_models.c.created_at))
                .limit(LATEST_GLOBALS)
            )
            .mappings()
            .all()
        )
        out["global_models"] = [dict(r) for r in rows]
        out["global_trend"] = _global_trend(conn, federated_models)

        out["evaluation"] = evaluation_section(conn)
        out["heldout_trend"] = heldout_trend_of(conn, evaluation_summaries)
        out["headline"] = headline(conn)

        count, first, last = conn.execute(
            select(func.count(), func.min(local_models.c.created_at), func.max(local_models.c.created_at))
        ).one()
        recent = conn.execute(
            select(func.count()).where(local_models.c.created_at > now - timedelta(minutes=RECENT_MINUTES))
        ).scalar_one()
        final = None
        if last is not None:
            final = conn.execute(
                select(func.count()).where(local_models.c.created_at > last - timedelta(minutes=RECENT_MINUTES))
            ).scalar_one()
        out["training"] = training_rate(int(count), first, last, int(recent), final)

        by_sev = dict(
            conn.execute(
                select(anomalies.c.severity, func.count()).group_by(anomalies.c.severity).order_by(anomalies.c.severity)
            ).all()
        )
        by_broker = dict(
            conn.execute(
                select(anomalies.c.broker_id, func.count())
                .group_by(anomalies.c.broker_id)
                .order_by(anomalies.c.broker_id)
            ).all()
        )
        out["anomalies"] = {
            "total": int(sum(by_sev.values())),
            "by_severity": {k: int(v) for k, v in by_sev.items()},
            "by_broker": {int(k): int(v) for k, v in by_broker.items()},
        }
    return out


def _global_trend(conn: Any, t: Any) -> dict[str, Any] | None:
    """First, latest and best global accuracy, and how many versions beat the first one."""
    versions = conn.execute(
        select(t.c.global_version, func.min(t.c.accuracy).label("accuracy"))
        .group_by(t.c.global_version)
        .order_by(t.c.global_version)
    ).all()
    if not versions:
        return None
    first, latest = versions[0], versions[-1]
    best = max(versions, key=lambda v: v.accuracy)
    return {
        "versions": len(versions),
        "first": {"global_version": first.global_version, "accuracy": first.accuracy},
        "latest": {"global_version": latest.global_version, "accuracy": latest.accuracy},
        "best": {"global_version": best.global_version, "accuracy": best.accuracy},
        "versions_beating_first": sum(1 for v in versions if v.accuracy > first.accuracy),
        "mean_accuracy_last_10": sum(v.accuracy for v in versions[-10:]) / len(versions[-10:]),
    }


def heldout_trend(points: list[tuple[int, float, float]], shown: int = HELDOUT_POINTS) -> dict[str, Any] | None:
    """Held-out F1 and accuracy of the evaluated global versions, ``(version, f1, accuracy)``
    in version order: first, latest, best, how many beat the first, and up to ``shown`` points.

    Every version is scored on the same held-out readings, so unlike the rounds' accuracy
    (each measured on that round's own readings) the numbers compare across versions."""
    if not points:
        return None
    first, latest = points[0], points[-1]
    best = max(points, key=lambda p: p[1])
    step = max(1, math.ceil((len(points) - 1) / max(1, shown - 1)))
    series = points[::step]
    if series[-1] != latest:
        series.append(latest)

    def point(p: tuple[int, float, float]) -> dict[str, Any]:
        return {"global_version": p[0], "f1": p[1], "accuracy": p[2]}

    return {
        "versions": len(points),
        "first": point(first),
        "latest": point(latest),
        "best": point(best),
        "versions_beating_first": sum(1 for p in points if p[1] > first[1]),
        "series": [point(p) for p in series],
    }


def heldout_trend_of(conn: Any, t: Any) -> dict[str, Any] | None:
    """F1 of every evaluated global version on the most telling split that has them."""
    for split in HEADLINE_SPLITS:
        rows = conn.execute(
            select(t.c.model_version, t.c.f1, t.c.accuracy)
            .where(t.c.model_kind == "global", t.c.split == split, t.c.f1.is_not(None))
            .order_by(t.c.model_version)
        ).all()
        if rows:
            trend = heldout_trend([(int(v), float(f1), float(acc)) for v, f1, acc in rows])
            assert trend is not None
            second = [f1 for _, f1, _ in rows[len(rows) // 2 :]]
            best = trend["best"]["f1"]
            trend["stability"] = (min(second) / best) if best and len(rows) > 1 else None
            return {"split": split, **trend}
    return None


#: the split a headline names, most telling first: devices no model trained on, then readings
HEADLINE_SPLITS = ("devices", "readings", "prequential")


def headline(conn: Any) -> dict[str, Any] | None:
    """The newest evaluated global version's held-out event recall, false alarms and F1, on the
    most telling split that has it (``HEADLINE_SPLITS``); None before any evaluation."""
    from flead_app.io.db.schema import evaluation_summaries as t

    for split in HEADLINE_SPLITS:
        row = conn.execute(
            select(t.c.model_version, t.c.split, t.c.event_recall, t.c.false_alarms_per_1000, t.c.f1,
                   t.c.evaluated_at)
            .where(t.c.model_kind == "global", t.c.split == split)
            .order_by(desc(t.c.model_version), desc(t.c.evaluated_at))
            .limit(1)
        ).mappings().first()  # fmt: skip
        if row is not None:
            return dict(row)
    return None


def latest_heldout(settings: Any) -> dict[str, Any] | None:
    """``headline`` of the settings' database (for the demo's live summary)."""
    from flead_app.io.db.store import Database

    db = Database.from_settings(settings, connect_timeout_s=3)
    try:
        with db.engine.connect() as conn:
            return headline(conn)
    finally:
        db.close()


def global_version_count(settings: Any) -> int:
    """How many global versions the settings' database holds."""
    from flead_app.io.db.schema import federated_models
    from flead_app.io.db.store import Database

    db = Database.from_settings(settings)
    try:
        with db.engine.connect() as conn:
            return int(conn.execute(select(func.count(func.distinct(federated_models.c.global_version)))).scalar_one())
    finally:
        db.close()


#: the metrics of a split x model table, in reporting order
SPLIT_METRICS = (
    "f1", "precision", "recall", "roc_auc", "pr_auc", "event_recall", "false_alarms_per_1000", "delay_median",
    "nab_standard", "nab_low_fp", "nab_low_fn",
)  # fmt: skip
SPLIT_ORDER = ("readings", "devices", "prequential")
MODEL_ORDER = ("global", "central", "local", "zrule", "random")


def evaluation_section(conn: Any) -> dict[str, Any] | None:
    """The newest evaluated global version and every baseline beside it, on every split:
    ``{"global_version": v, "evaluated_at": t, "splits": {split: {model: {metric: value} | None}}}``."""
    from flead_app.io.db.schema import evaluation_summaries as t

    version = conn.execute(
        select(func.max(t.c.model_version)).where(t.c.model_kind == "global", t.c.split.in_(SPLIT_ORDER))
    ).scalar()
    if version is None:
        return None
    rows = conn.execute(select(t).where(t.c.model_version == version)).mappings().all()
    splits: dict[str, dict[str, dict[str, Any] | None]] = {split: dict.fromkeys(MODEL_ORDER) for split in SPLIT_ORDER}
    evaluated_at = None
    for r in rows:
        if r["split"] in splits and r["model_kind"] in MODEL_ORDER:
            splits[r["split"]][r["model_kind"]] = {m: r[m] for m in SPLIT_METRICS}
            evaluated_at = max(evaluated_at or r["evaluated_at"], r["evaluated_at"])
    return {"global_version": int(version), "evaluated_at": evaluated_at, "splits": splits}


def render_splits(splits: dict[str, dict[str, dict[str, Any] | None]], version: int | None,
                  stability: float | None) -> str:  # fmt: skip
    """One table per split: a row per model, a column per metric ("-": the model cannot score it)."""
    short = {"false_alarms_per_1000": "FA/1000", "delay_median": "delay", "nab_standard": "NAB std",
             "nab_low_fp": "NAB lowFP", "nab_low_fn": "NAB lowFN", "event_recall": "events",
             "precision": "prec", "roc_auc": "ROC-AUC", "pr_auc": "PR-AUC"}  # fmt: skip
    lines = []
    title = {"readings": "held-out readings", "devices": "held-out devices", "prequential": "prequential"}
    for split in SPLIT_ORDER:
        models = splits.get(split) or {}
        lines.append(f"  {title[split]} ({split}), global v{version}:")
        rows = []
        for kind in MODEL_ORDER:
            m = models.get(kind)
            rows.append([kind] + (["-"] * len(SPLIT_METRICS) if m is None else [
                _fmt_num(m.get(k), 1 if k.startswith(("nab", "delay")) else 2 if k == "false_alarms_per_1000" else 3)
                for k in SPLIT_METRICS
            ]))  # fmt: skip
        lines += _table(["model", *(short.get(k, k) for k in SPLIT_METRICS)], rows, indent="    ")
    if stability is not None:
        lines.append(f"  stability over the evaluated versions (worst second-half F1 / best): {stability:.2f}")
    return "\n".join(lines)


def latest_snapshot(db: Any) -> tuple[datetime | None, list[dict[str, Any]]]:
    from flead_app.io.db.schema import kafka_traffic as kt

    with db.engine.connect() as conn:
        at = conn.execute(select(func.max(kt.c.measured_at))).scalar()
        if at is None:
            return None, []
        rows = (
            conn.execute(
                select(kt.c.topic, kt.c.partition, kt.c.broker_id, kt.c.bytes, kt.c.messages)
                .where(kt.c.measured_at == at)
                .order_by(kt.c.topic, kt.c.partition)
            )
            .mappings()
            .all()
        )
    return at, [dict(r) for r in rows]


def kafka_section(
    settings: Any,
    measured_at: Any,
    method: str | None,
    note: str | None,
    rows: list[dict],
    pending: dict[int, int | None] | None = None,
) -> dict[str, Any]:
    """The Kafka part of the report from one snapshot's rows (the central cluster's and, in the
    sites topology, each site's): traffic of the central cluster, each site's, and the bandwidth
    saving of the topology the rows come from."""
    from flead_app.io.traffic import one_cluster_bandwidth, rows_by_site, sites_bandwidth, summarize
    from flead_app.stack.sites import down_topics, up_topics

    readings, local, global_ = settings.topic_readings, settings.topic_local_updates, settings.topic_global_updates
    by_site = rows_by_site(rows)
    central = by_site.get(0, [])
    summary = summarize(central, readings, local, global_) if central or not by_site else None
    if any(by_site.keys() - {0}):
        bandwidth = sites_bandwidth(by_site, readings, up_topics(settings), down_topics(settings), pending)
    else:
        bandwidth = one_cluster_bandwidth(central, readings, [local, global_])
    return {
        "measured_at": measured_at, "method": method, "note": note, "summary": summary,
        "sites": {str(k): summarize(r, readings, local, global_) for k, r in sorted(by_site.items()) if k},
        "bandwidth": bandwidth,
        "central_readings": sum(int(r.get("messages") or 0) for r in central if r["topic"] == readings),
    }  # fmt: skip


def collect_kafka(db: Any, settings: Any, measure: bool = True, timeout_s: float = 15.0) -> dict[str, Any]:
    """Measure now (the central cluster and every site's) and store the snapshot; else (or on
    failure) the newest stored snapshot."""
    from flead_app.io.traffic import KafkaUnreachable, measure_now, mirror_pending

    note = None
    if measure:
        try:
            snap = measure_now(settings, timeout_s)
            if snap.rows:
                db.insert_rows("kafka_traffic", snap.db_rows())
                pending = mirror_pending(settings, snap.rows) if settings.sites else None
                return kafka_section(settings, snap.measured_at, snap.method, None, snap.rows, pending)
            note = "none of the FLEAD topics exists on the cluster"
        except (KafkaUnreachable, OSError) as err:
            note = f"Kafka not measured now ({err})"
    else:
        note = "Kafka not measured (--no-kafka)"
    at, rows = latest_snapshot(db)
    if at is None:
        return {"measured_at": None, "method": None, "note": note, "summary": None, "sites": {},
                "bandwidth": None, "central_readings": None}  # fmt: skip
    return kafka_section(settings, at, "stored snapshot", note, rows)


def collect_worker(settings: Any, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """What the local worker counted (``/flead/stats/``), when one answers: dead letters, readings
    moved to their device's partition, outputs Kafka never acknowledged."""
    import urllib.request

    url = f"http://127.0.0.1:{settings.web_port}/flead/stats/"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - loopback
            stats = json.loads(response.read())
    except (OSError, ValueError):
        return None
    det = stats.get("detector", {})
    return {
        "url": url,
        "readings": det.get("readings", 0),
        "misplaced_forwarded": det.get("misplaced_forwarded", 0),
        "dead_letters": sum((stats.get("dead_letters") or {}).values()),
        "outputs_never_acknowledged": stats.get("outputs_never_acknowledged", 0),
    }


def privacy_section(rounds_per_device: list[int], settings: Any) -> dict[str, Any]:
    """The privacy the devices spent: epsilon at delta after the rounds each sent (``FLEAD_DP_*``).

    Without noise (``FLEAD_DP_NOISE=0``) the updates left their devices as computed: no guarantee.

    >>> from flead_app.settings import Settings
    >>> privacy_section([3, 5], Settings())["enabled"]
    False
    >>> p = privacy_section([3, 5, 4], Settings(dp_noise=1.0))
    >>> p["max_rounds"], p["median_rounds"], round(p["epsilon_max"], 1), round(p["epsilon_median"], 1)
    (5, 4.0, 12.3, 10.7)
    """
    from flead_app.algorithms.privacy import PrivacyConfig, epsilon_spent

    cfg = PrivacyConfig.from_settings(settings)
    out: dict[str, Any] = {"enabled": cfg.enabled, "noise_multiplier": cfg.noise_multiplier, "clip": cfg.clip,
                           "delta": cfg.delta, "devices": len(rounds_per_device)}  # fmt: skip
    if not cfg.enabled:
        return out
    rounds = sorted(rounds_per_device)
    most = rounds[-1] if rounds else 0
    median = float(statistics.median(rounds)) if rounds else 0.0
    out.update(
        max_rounds=most, median_rounds=median,
        epsilon_max=epsilon_spent(most, cfg.noise_multiplier, cfg.delta),
        epsilon_median=epsilon_spent(int(median), cfg.noise_multiplier, cfg.delta),
    )  # fmt: skip
    return out


def rounds_per_device(db: Any) -> list[int]:
    """How many local updates the database holds of each device."""
    from flead_app.io.db.schema import local_models

    with db.engine.connect() as conn:
        q = select(func.count()).select_from(local_models).group_by(local_models.c.device_id)
        return [int(n) for n in conn.execute(q).scalars()]


def render_privacy(p: dict[str, Any] | None) -> list[str]:
    lines = ["Privacy of the local updates"]
    if p is None:
        return [*lines, "  not measured"]
    if not p["enabled"]:
        return [*lines, "  off (FLEAD_DP_NOISE=0): updates leave their devices as computed, with no privacy guarantee"]
    return [
        *lines,
        f"  Gaussian noise x{p['noise_multiplier']:g} on every update, its change clipped to L2 {p['clip']:g} "
        f"(algorithms/privacy.py)",
        f"  epsilon at delta {p['delta']:g}: {p['epsilon_max']:.2f} for the device with most updates "
        f"({p['max_rounds']}), {p['epsilon_median']:.2f} at the median ({p['median_rounds']:.0f}); "
        f"{p['devices']} devices",
    ]


def collect(db: Any, settings: Any, measure_kafka: bool = True, kafka_timeout_s: float = 15.0) -> dict[str, Any]:
    """The whole report as one dict (Kafka first, so the counts include its new snapshot)."""
    kafka = collect_kafka(db, settings, measure_kafka, kafka_timeout_s)
    report = collect_database(db)
    report["kafka"] = kafka
    report["worker"] = collect_worker(settings)
    report["bandwidth"] = kafka["bandwidth"]
    report["central_readings"] = kafka["central_readings"]
    report["privacy"] = privacy_section(rounds_per_device(db), settings)
    return report


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="what the database holds: counts, models, evaluation, rates, bandwidth")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-kafka", action="store_true", help="do not measure Kafka; show the last stored snapshot")
    p.add_argument("--kafka-timeout", type=float, default=15.0, metavar="S", help="give up measuring Kafka after S s")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sqlalchemy import exc as sa_exc

    from flead_app.io.db.retry import describe_error
    from flead_app.io.db.store import Database, DatabaseUnreachable
    from flead_app.settings import load_settings

    settings = load_settings()
    if not settings.db_url:
        print("flead report: no database configured: run `flead stack up` or set FLEAD_DB_URL", file=sys.stderr)
        return 2
    db = Database.from_settings(settings, connect_timeout_s=5)
    try:
        db.ping()
        if not all(_tables_present(db).values()):
            db.init_schema()  # a fresh database: create the (empty) tables rather than fail
        report = collect(db, settings, not args.no_kafka, args.kafka_timeout)
    except DatabaseUnreachable as err:
        print(f"flead report: {err}", file=sys.stderr)
        return 2
    except sa_exc.OperationalError as err:  # the database went away half-way
        print(f"flead report: lost the database at {db.safe_url}: {describe_error(err)}", file=sys.stderr)
        return 2
    finally:
        db.close()
    if args.json:
        print(json.dumps(jsonable(report), indent=2))
    else:
        sys.stdout.write(render_text(report))
    return 0


def _tables_present(db: Any) -> dict[str, bool]:
    from flead_app.io.db.schema import metadata

    with db.engine.connect() as conn:
        present = set(
            conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")).scalars()
        )
    return {t: t in present for t in metadata.tables}
