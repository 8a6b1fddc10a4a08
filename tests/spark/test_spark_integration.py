"""Spark jobs end to end: real Spark local mode, a real Kafka topic, the real database.

A fresh topic gets a few thousand labelled readings from six devices (single readings and
batches, plus control records and invalid messages), with Kafka timestamps inside one hour
and a few before and after it. Analytics over that hour must count exactly what a plain numpy
computation counts, twice without duplicates; evaluation of two global versions must store
summaries equal to the pure evaluation of the same readings, plus the local and central
baselines, with model_evaluations capped.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import text

from flead_app.algorithms.incident_features import NUM_FEATURES
from flead_app.algorithms.protocol import Decision, evaluate
from flead_app.io.db.store import Database
from flead_app.io.kafka import fetch_partition_leaders as partition_leaders
from flead_app.report import evaluation_section
from flead_app.settings import load_settings
from flead_app.spark_support import dbio
from flead_app.spark_support.analytics import Window
from flead_app.spark_support.evaluation import (
    KIND_CENTRAL,
    KIND_GLOBAL,
    KIND_LOCAL,
    GlobalVersion,
    replay_device,
    series_from_rows,
)
from flead_app.spark_support.jobs import analytics_job, device_config, evaluate_job
from tests.conftest import create_topics, unique, url_with_schema

pytestmark = [pytest.mark.integration, pytest.mark.spark]

DEVICES = [f"spark-dev-{i}" for i in range(6)]
IN_WINDOW = 500  # readings per device inside the hour
OUTSIDE = 20  # readings per device before and after it
BATCH = 25
SAMPLE_ROWS = 40


def iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_device(rng: np.random.Generator, n: int, level: float, spread: float):
    values = rng.normal(level, spread, n)
    labels = np.zeros(n, dtype=np.int8)
    for start in rng.choice(np.arange(40, n - 30, 60), size=max(2, n // 150), replace=False):
        values[start : start + 12] += 6 * spread
        labels[start : start + 12] = 1
    labels[rng.choice(n, 5, replace=False)] = -1  # a few unknown labels
    return values, labels


def build_plan(window: Window, seed: int = 11) -> list[dict]:
    """Every message to produce, in order: key, value bytes, Kafka timestamp, and its readings."""
    rng = np.random.default_rng(seed)
    plan: list[dict] = []
    t_read = 1_700_000_000.0
    w0 = window.start.timestamp()
    for d, device in enumerate(DEVICES):
        n = IN_WINDOW + 2 * OUTSIDE
        values, labels = make_device(rng, n, level=10.0 * (d + 1), spread=0.5 + d)
        stamps = t_read + np.arange(n) * 60.0
        # Kafka timestamps: OUTSIDE before the window, IN_WINDOW spread over it, OUTSIDE after it
        kts = np.concatenate(
            [
                w0 - 900 + np.arange(OUTSIDE),
                w0 + 1 + np.sort(rng.uniform(0, 3590, IN_WINDOW)),
                w0 + 3600 + 60 + np.arange(OUTSIDE),
            ]
        )
        batch = 1 if d < 3 else BATCH
        i = 0
        while i < n:
            j = min(n, i + batch)
            # a batch never straddles the window edges, so its single Kafka timestamp is right
            for edge in (OUTSIDE, OUTSIDE + IN_WINDOW):
                if i < edge < j:
                    j = edge
            labs = [None if v < 0 else int(v) for v in labels[i:j]]
            if batch == 1:
                doc = {"device_id": device, "timestamp": iso(stamps[i]), "value": float(values[i]), "label": labs[0]}
            else:
                doc = {
                    "device_id": device,
                    "timestamps": [iso(t) for t in stamps[i:j]],
                    "values": values[i:j].tolist(),
                    "labels": labs,
                }
            plan.append(
                {
                    "device": device, "key": device.encode(), "value": orjson.dumps(doc), "kts": float(kts[j - 1]),
                    "stamps": stamps[i:j], "values": values[i:j], "labels": labels[i:j], "control": False,
                }
            )  # fmt: skip
            if i < OUTSIDE + IN_WINDOW // 2 <= j:  # one control record per device, mid-window
                control = orjson.dumps({"device_id": device, "control": "train"})
                plan.append(
                    {
                        "device": device, "key": device.encode(), "value": control, "kts": float(kts[j - 1]),
                        "stamps": np.empty(0), "values": np.empty(0), "labels": np.empty(0, np.int8),
                        "control": True,
                    }
                )  # fmt: skip
            i = j
    bad = [
        (b"spark-dev-0", b"{not json"),
        (b"spark-dev-1", orjson.dumps({"device_id": "spark-dev-2", "timestamp": iso(t_read), "value": 1.0})),
        (b"spark-dev-2", orjson.dumps({"device_id": "spark-dev-2", "timestamp": "noon", "value": 1.0})),
    ]
    for k, (key, raw) in enumerate(bad):
        plan.append({"device": None, "key": key, "value": raw, "kts": w0 + 100 + k, "control": False, "bad": True})
    # produced in time order, as devices would send them (stable: a device's order is kept)
    return sorted(plan, key=lambda m: m["kts"])


async def produce(bootstrap: list[str], topic: str, plan: list[dict]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, m["value"], key=m["key"], timestamp_ms=int(round(m["kts"] * 1000))) for m in plan
        ]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    for m, meta in zip(plan, metas, strict=True):
        m["partition"], m["offset"] = meta.partition, meta.offset


@pytest.fixture(scope="module")
def env(stack):
    topic = unique("spark-readings")
    create_topics([topic])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLEAD_TOPIC_READINGS", topic)
        mp.setenv("FLEAD_EVAL_SAMPLE_ROWS", str(SAMPLE_ROWS))
        mp.setenv("FLEAD_HOLDOUT_DEVICE_PERCENT", "50")  # spark-dev-0, 1 and 2 are held out: both splits fill
        settings = load_settings()
        # a window of its own: start 2-3 hours back, at a random second, so reruns never collide
        start = (datetime.now(UTC) - timedelta(hours=3)).replace(microsecond=0) + timedelta(
            seconds=random.randint(0, 3000)
        )
        window = Window(start, start + timedelta(hours=1))
        plan = build_plan(window)
        asyncio.run(produce(settings.bootstrap_servers, topic, plan))
        # a schema of its own: the evaluation reads every global version the database holds
        schema = unique("spark").replace("-", "_")
        admin = Database(settings.db_url)
        with admin.engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        db = Database(url_with_schema(settings.db_url, schema), backend="postgresql")
        db.init_schema()
        versions: list[int] = []
        yield {"settings": settings, "window": window, "plan": plan, "db": db, "topic": topic, "versions": versions}
        db.close()
        with admin.engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.close()


@pytest.fixture(scope="module")
def spark():
    from flead_app.spark_support.jars import fetch
    from flead_app.spark_support.session import SparkOptions, build_session

    fetch()  # a no-op once `flead spark fetch` (scripts/setup.sh) has cached the jars
    session = build_session(SparkOptions(master="local[2]", driver_memory="1g", shuffle_partitions=2))
    yield session
    session.stop()


def window_rows(db: Database, window: Window) -> list[dict]:
    with db.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM stream_analytics WHERE window_start = :s AND window_end = :e"),
            {"s": window.start, "e": window.end},
        ).mappings()
        return [dict(r) for r in rows]


def expected_device_stats(plan: list[dict], window: Window, settings) -> dict[str, dict]:
    out = {}
    lo, hi = window.start.timestamp(), window.end.timestamp()
    for device in DEVICES:
        msgs = [m for m in plan if m["device"] == device and not m["control"] and lo <= m["kts"] < hi]
        v = np.concatenate([m["values"] for m in msgs])
        mean, std = v.mean(), v.std(ddof=1)
        anomalous = np.abs(v - mean) / std > settings.z_threshold if len(v) >= settings.min_history else v < v
        out[device] = {
            "count": len(v), "mean": mean, "std": std, "min": v.min(), "max": v.max(),
            "anomaly_rate": anomalous.mean(), "partition": msgs[0]["partition"],
        }  # fmt: skip
    return out


def test_analytics_counts_the_window_and_replaces_on_rerun(env, spark):
    settings, window, plan, db = env["settings"], env["window"], env["plan"], env["db"]
    first = analytics_job(spark, settings, window, db)
    expected = expected_device_stats(plan, window, settings)
    total = sum(e["count"] for e in expected.values())
    assert first.readings == total == len(DEVICES) * IN_WINDOW
    assert first.messages["control"] == len(DEVICES) and first.messages["invalid"] == 3
    rows = window_rows(db, window)
    computed_at = {r["computed_at"] for r in rows}

    second = analytics_job(spark, settings, window, db)
    again = window_rows(db, window)
    assert second.rows == first.rows == len(again) == len(rows)
    assert {r["computed_at"] for r in again} != computed_at  # replaced, not kept beside

    by = {(r["scope"], r["scope_key"]): r for r in again}
    assert len(by) == len(again)  # one row per scope and key
    for device, e in expected.items():
        r = by[("device", device)]
        assert r["count"] == e["count"]
        assert r["mean"] == pytest.approx(e["mean"]) and r["std"] == pytest.approx(e["std"])
        assert r["min"] == pytest.approx(e["min"]) and r["max"] == pytest.approx(e["max"])
        assert r["anomaly_rate"] == pytest.approx(e["anomaly_rate"])
        assert r["readings_per_minute"] == pytest.approx(e["count"] / 60.0)
    per_partition: dict[str, int] = {}
    for e in expected.values():
        per_partition[str(e["partition"])] = per_partition.get(str(e["partition"]), 0) + e["count"]
    assert {k: r["count"] for (s, k), r in by.items() if s == "partition"} == per_partition
    leaders = partition_leaders(settings, env["topic"])
    per_broker: dict[str, int] = {}
    for p, n in per_partition.items():
        per_broker[str(leaders[int(p)])] = per_broker.get(str(leaders[int(p)]), 0) + n
    assert {k: r["count"] for (s, k), r in by.items() if s == "broker"} == per_broker
    fleet = by[("fleet", "all")]
    assert fleet["count"] == total and fleet["readings_per_minute"] == pytest.approx(total / 60.0)
    assert by[("skipped", "control")]["count"] == len(DEVICES) and by[("skipped", "invalid")]["count"] == 3

    # an hour without readings still says so: a fleet row of 0 and the skipped counts, nothing else
    empty = Window(window.start - timedelta(hours=2), window.start - timedelta(hours=1))
    try:
        assert analytics_job(spark, settings, empty, db).readings == 0
        rows = {(r["scope"], r["scope_key"]): r["count"] for r in window_rows(db, empty)}
        assert rows == {("fleet", "all"): 0, ("skipped", "control"): 0, ("skipped", "invalid"): 0}
    finally:
        dbio.write_analytics(db, empty, [])


def expected_series(plan: list[dict], settings):
    """The devices' series, replayed in pure Python from what was produced."""
    cfg = device_config(settings)
    rows = []
    for device in DEVICES:
        msgs = [
            (m["partition"], m["offset"], m["kts"], m["control"], m["stamps"], m["values"], m["labels"])
            for m in plan
            if m["device"] == device
        ]
        rows += replay_device(device, msgs, cfg)
    return series_from_rows(rows, cfg)


def insert_versions(db: Database, base: int) -> dict[int, GlobalVersion]:
    now = datetime.now(UTC)
    t = now.timestamp()
    level = np.r_[1.0, np.zeros(NUM_FEATURES - 1)]  # the calibrated surprise of the level |z|
    versions = {  # alarms where that surprise is above 3; nearly never
        base: GlobalVersion(base, level, -4.0, t, threshold=3.0, score_loc=-4.0, score_scale=1.0),
        base + 1: GlobalVersion(base + 1, 0.01 * level, -0.5, t, threshold=50.0, score_loc=-0.5, score_scale=1.0),
    }
    rows = [
        {
            "global_version": v.version, "aggregation_round": v.version, "num_devices": 6, "num_updates": 20,
            "samples": 1000, "accuracy": 0.7, "weights": v.weights.tolist(), "bias": v.bias, "aggregator": "fedavg",
            "mean_staleness": 0.0, "created_at": now, "threshold": v.threshold, "score_loc": v.score_loc,
            "score_scale": v.score_scale,
        }
        for v in versions.values()
    ]  # fmt: skip
    # a model over three features cannot be scored on ours: pending, but skipped
    rows.append({**rows[0], "global_version": base + 2, "weights": [0.1, 0.2, 0.3]})
    db.insert_rows("federated_models", rows)
    return versions


def test_evaluate_versions_and_baselines_on_the_three_splits(env, spark):
    settings, plan, db = env["settings"], env["plan"], env["db"]
    base = random.randrange(1_000_000_000, 1_100_000_000, 10)
    env["versions"].extend([base, base + 1, base + 2])
    versions = insert_versions(db, base)
    pending = {v.version for v in dbio.pending_versions(db)}
    assert {base, base + 1, base + 2} <= pending

    res = evaluate_job(spark, settings, db, only={base, base + 1, base + 2})
    assert res.versions == [base, base + 1] and res.latest == base + 1 and res.skipped_versions == [base + 2]
    series = expected_series(plan, settings)
    assert res.readings == sum(s.labels.shape[0] for s in series) > 1000 and res.devices == len(DEVICES)
    assert not {v.version for v in dbio.pending_versions(db, only={base, base + 1})}

    with db.engine.connect() as conn:
        summaries = conn.execute(
            text("SELECT * FROM evaluation_summaries WHERE model_version IN (:a, :b)"), {"a": base, "b": base + 1}
        ).mappings()
        summaries = {(r["model_kind"], r["model_version"], r["split"]): dict(r) for r in summaries}
        samples = dict(
            conn.execute(
                text(
                    "SELECT model_kind || ':' || model_version, count(*) FROM model_evaluations "
                    "WHERE model_version IN (:a, :b) GROUP BY 1"
                ),
                {"a": base, "b": base + 1},
            ).all()
        )
    latest = base + 1
    for split in ("readings", "prequential"):
        assert (KIND_LOCAL, latest, split) in summaries
    for split in ("readings", "devices"):
        assert (KIND_GLOBAL, base, split) in summaries and (KIND_CENTRAL, latest, split) in summaries
    for kind in (KIND_GLOBAL, "zrule", "random"):
        assert all((kind, latest, split) in summaries for split in ("readings", "devices", "prequential"))
    assert samples == {f"{KIND_GLOBAL}:{latest}": SAMPLE_ROWS, f"{KIND_CENTRAL}:{latest}": SAMPLE_ROWS}

    # the stored numbers are the pure evaluation of the same readings
    cfg = device_config(settings)
    zrule = Decision(cfg.z_threshold)
    for version in (base, latest):
        model = versions[version].model(cfg)
        direct = evaluate(series, {"readings", "devices"}, model, [model], None, zrule)
        for split in ("readings", "devices"):
            got, want = summaries[(KIND_GLOBAL, version, split)], direct[split]["global"]
            assert got["samples"] == want.counts["samples"] and got["tp"] == want.counts["tp"]
            assert got["f1"] == pytest.approx(want.f1) and got["event_recall"] == pytest.approx(want.event_recall)
            assert got["nab_standard"] == pytest.approx(want.nab_standard)
    good = summaries[(KIND_GLOBAL, base, "devices")]
    # one alarm per incident (the 100-reading refractory period): judged by events, not readings
    assert good["tp"] > 0 and good["event_recall"] > 0.5
    assert summaries[(KIND_CENTRAL, latest, "readings")]["roc_auc"] > 0.8

    with db.engine.connect() as conn:
        section = evaluation_section(conn)
    assert section["global_version"] == latest and section["splits"]["devices"]["local"] is None

    # re-evaluating replaces: the same number of rows, no duplicates
    again = evaluate_job(spark, settings, db, all_versions=True, only={base})
    assert again.versions == [base]
    with db.engine.connect() as conn:
        n = conn.execute(
            text("SELECT count(*) FROM evaluation_summaries WHERE model_kind = 'global' AND model_version = :v"),
            {"v": base},
        ).scalar_one()
    assert n == 3  # the newest of that run: its three splits replace the two rows it had, none twice
