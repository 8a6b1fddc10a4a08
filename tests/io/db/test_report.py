"""``flead report``: pure pieces, then the command against a real database."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from flead_app.report import heldout_trend, jsonable, render_text, training_rate


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_training_rate_over_the_span_and_the_recent_window():
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    r = training_rate(31, t0, t0 + timedelta(minutes=10), recent=20, final=25)
    assert r["per_minute"] == pytest.approx(3.1)
    assert r["recent_per_minute"] == pytest.approx(4.0)
    assert r["final_per_minute"] == pytest.approx(5.0)
    assert training_rate(1, t0, t0, recent=1)["per_minute"] is None  # one instant: no rate
    assert training_rate(0, None, None, recent=0)["per_minute"] is None


def test_heldout_trend_first_latest_best_and_a_short_series():
    points = [(v, 0.2 + v / 400, 0.95) for v in [1, *range(20, 241, 20)]]
    points[3] = (60, 0.1, 0.9)  # one version worse than the first
    trend = heldout_trend(points, shown=5)
    assert trend["versions"] == 13 and trend["versions_beating_first"] == 11
    assert trend["first"]["global_version"] == 1 and trend["latest"]["global_version"] == 240
    assert trend["best"] == {"global_version": 240, "f1": 0.8, "accuracy": 0.95}
    shown = [p["global_version"] for p in trend["series"]]
    assert shown[0] == 1 and shown[-1] == 240 and len(shown) <= 6
    assert heldout_trend([]) is None


def test_jsonable_times_and_keys():
    doc = jsonable({1: datetime(2025, 11, 7, 15, 22, 31, tzinfo=UTC), "x": [datetime(2025, 1, 1, tzinfo=UTC)]})
    assert doc == {"1": "2025-11-07T15:22:31.000Z", "x": ["2025-01-01T00:00:00.000Z"]}


METRICS = dict(
    f1=0.5,
    precision=0.6,
    recall=0.4,
    roc_auc=None,
    pr_auc=0.3,
    event_recall=0.8,
    false_alarms_per_1000=1.5,
    delay_median=12.0,
    nab_standard=40.0,
    nab_low_fp=30.0,
    nab_low_fn=45.0,
)


def sample_report() -> dict:
    t = datetime(2025, 11, 7, 15, 0, tzinfo=UTC)
    return {
        "generated_at": t,
        "database": {"url": "postgresql://flead:***@127.0.0.1:5432/flead", "backend": "postgresql"},
        "counts": {"local_models": 1403, "federated_models": 71},
        "global_models": [
            {
                "global_version": 71,
                "aggregation_round": 71,
                "num_devices": 20,
                "num_updates": 20,
                "samples": 1000,
                "accuracy": 0.727,
                "aggregator": "fedavg",
                "created_at": t,
            }
        ],
        "evaluation": {
            "global_version": 70,
            "evaluated_at": t,
            "splits": {
                "readings": {
                    "global": {**METRICS, "f1": 0.937, "nab_standard": 55.5},
                    "local": {**METRICS, "f1": 0.65, "roc_auc": 0.7},
                },
                "devices": {"global": {**METRICS, "f1": 0.812}, "local": None},
            },
        },
        "headline": {
            "model_version": 70,
            "split": "devices",
            "event_recall": 0.8,
            "false_alarms_per_1000": 1.5,
            "f1": 0.812,
            "evaluated_at": t,
        },
        "training": training_rate(1403, t - timedelta(minutes=60), t, 117, 120),
        "anomalies": {"total": 3, "by_severity": {"critical": 1, "warning": 2}, "by_broker": {1: 2, 3: 1}},
        "kafka": {
            "measured_at": t,
            "method": "describe_log_dirs",
            "note": None,
            "summary": {
                "topics": {"edge-iiot-stream": {"bytes": 7_200_000, "messages": 72_000, "partitions": 8}},
                "brokers": {1: {"bytes": 7_200_000, "messages": 72_000, "leader_partitions": 8}},
                "reading_bytes": 7_200_000,
                "model_bytes": 480_000,
                "local_update_bytes": 470_000,
                "global_update_bytes": 10_000,
                "bandwidth_saving": 1 - 480_000 / 7_200_000,
            },
        },
    }


def test_render_text_shows_every_section():
    text = render_text(sample_report())
    for expected in (
        "Rows per table",
        "local_models",
        "1,403",
        "Latest global versions",
        "0.7270",
        "held-out devices (devices), global v70",
        "detection (global v70, held-out devices)",
        "0.937",
        "55.5",
        "0.812",
        "23.38",
        "last 5 min",
        "23.40",
        "final 5 min",
        "24.00",
        "critical",
        "Kafka traffic",
        "93.3%",
        "6.9 MiB",
    ):
        assert expected in text, expected
    # aligned: every row of the counts table has its number in the same column
    rows = [line for line in text.splitlines() if line.startswith("  local_models") or line.startswith("  table ")]
    assert len({len(r) for r in rows}) == 1


def test_render_text_of_an_empty_database():
    r = sample_report()
    r.update(
        global_models=[],
        evaluation=None,
        anomalies={"total": 0, "by_severity": {}, "by_broker": {}},
        kafka={"measured_at": None, "method": None, "note": "no topics", "summary": None},
    )
    text = render_text(r)
    assert "not evaluated yet" in text and "no global model yet" in text and "no measurement: no topics" in text


# --------------------------------------------------------------------------- integration


def run_report(db_url: str, *args: str, kafka: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLEAD_DB_URL": db_url}
    if kafka:
        env["FLEAD_KAFKA_BOOTSTRAP"] = kafka
    return subprocess.run(
        [sys.executable, "-m", "flead_app.cli", "report", *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.integration
def test_report_json_counts_and_models_per_minute(db, db_url, local_update, global_model, anomaly):
    now = datetime.now(UTC)
    # 30 local models, one every 20 s over the last 9 min 40 s: 15 of them in the last 5 minutes
    updates = [
        local_update(device_id=f"device_{i}", model_version=1, timestamp=(now - timedelta(seconds=20 * i)).isoformat())
        for i in range(30)
    ]
    assert db.insert_local_models(updates) == 30
    assert (
        db.insert_global_models(
            [
                global_model(
                    global_version=v, aggregation_round=v, timestamp=(now - timedelta(minutes=10 - v)).isoformat()
                )
                for v in range(1, 8)
            ]
        )
        == 7
    )
    assert (
        db.insert_anomalies(
            [anomaly(value=1.0 + i, broker_id=1 + i % 2, severity="critical" if i < 2 else "warning") for i in range(5)]
        )
        == 5
    )

    done = run_report(db_url, "--json", "--no-kafka")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["counts"]["local_models"] == 30
    assert report["counts"]["federated_models"] == 7
    assert report["counts"]["anomalies"] == 5
    assert [g["global_version"] for g in report["global_models"]] == [7, 6, 5, 4, 3]
    assert report["global_models"][0]["num_updates"] == 20
    tr = report["training"]
    assert tr["per_minute"] == pytest.approx(30 / (29 * 20 / 60), rel=1e-3)
    assert tr["recent_local_models"] == 15
    assert tr["recent_per_minute"] == pytest.approx(3.0)
    assert tr["final_local_models"] == 15  # created_at > newest - 5 min: i = 0..14
    assert report["anomalies"] == {
        "total": 5,
        "by_severity": {"critical": 2, "warning": 3},
        "by_broker": {"1": 3, "2": 2},
    }
    assert report["evaluation"] is None
    assert report["kafka"]["measured_at"] is None
    assert "dbdev_pw" not in done.stdout + done.stderr

    text = run_report(db_url, "--no-kafka")
    assert text.returncode == 0 and "not evaluated yet" in text.stdout and "Rows per table" in text.stdout


@pytest.mark.integration
def test_report_shows_the_latest_evaluation_and_baselines(db, db_url):
    t = datetime.now(UTC)

    def summary(kind: str, version: int, f1: float, at: datetime, split: str = "devices") -> dict:
        return dict(
            model_kind=kind,
            model_version=version,
            split=split,
            samples=500,
            accuracy=0.9,
            precision=0.8,
            recall=0.7,
            f1=f1,
            roc_auc=0.85,
            tp=35,
            fp=9,
            tn=441,
            fn=15,
            event_recall=0.75,
            false_alarms_per_1000=18.0,
            nab_standard=42.0,
            evaluated_at=at,
        )

    db.insert_rows(
        "evaluation_summaries",
        [
            summary("global", 3, 0.60, t),
            summary("global", 4, 0.70, t),
            summary("global", 4, 0.72, t, "readings"),
            summary("local", 4, 0.55, t, "readings"),
            summary("central", 4, 0.80, t),
            summary("central", 3, 0.1, t),
        ],
    )
    report = json.loads(run_report(db_url, "--json", "--no-kafka").stdout)
    ev = report["evaluation"]
    assert ev["global_version"] == 4
    assert ev["splits"]["devices"]["global"]["f1"] == 0.70 and ev["splits"]["devices"]["central"]["f1"] == 0.80
    assert ev["splits"]["readings"]["local"]["f1"] == 0.55 and ev["splits"]["devices"]["local"] is None
    assert report["headline"]["split"] == "devices" and report["headline"]["f1"] == 0.70
    trend = report["heldout_trend"]  # global versions only, on the most telling split
    assert (trend["split"], trend["versions"], trend["versions_beating_first"]) == ("devices", 2, 1)
    assert trend["first"]["global_version"] == 3 and trend["latest"]["f1"] == 0.70
    assert "1 of 2 evaluated versions beat the first" in run_report(db_url, "--no-kafka").stdout


@pytest.mark.integration
def test_report_uses_the_stored_snapshot_when_kafka_is_down(db, db_url):
    old = datetime.now(UTC) - timedelta(hours=1)
    new = datetime.now(UTC) - timedelta(minutes=1)
    rows = [
        ("edge-iiot-stream", 0, 1, 10_000, 100),
        ("edge-iiot-stream", 1, 2, 10_000, 100),
        ("local-model-updates", 0, 2, 1_200, 6),
        ("global-model-updates", 0, 1, 200, 1),
    ]
    db.insert_rows(
        "kafka_traffic",
        [dict(measured_at=old, topic=t, partition=p, broker_id=b, bytes=1, messages=1) for t, p, b, _, _ in rows],
    )
    db.insert_rows(
        "kafka_traffic",
        [dict(measured_at=new, topic=t, partition=p, broker_id=b, bytes=n, messages=m) for t, p, b, n, m in rows],
    )
    done = run_report(db_url, "--json", "--kafka-timeout", "5", kafka=f"127.0.0.1:{closed_port()}")
    assert done.returncode == 0, done.stderr
    k = json.loads(done.stdout)["kafka"]
    assert k["method"] == "stored snapshot" and "not measured now" in k["note"]
    assert datetime.fromisoformat(k["measured_at"]) == new.replace(microsecond=new.microsecond // 1000 * 1000)
    s = k["summary"]
    assert (s["reading_bytes"], s["model_bytes"]) == (20_000, 1_400)
    assert s["bandwidth_saving"] == pytest.approx(0.93)
    assert s["brokers"]["2"]["bytes"] == 11_200


async def _fresh_topics_with_traffic(settings, produce: dict[str, tuple[int, int]]) -> None:
    """Create each topic (2 partitions) and produce ``count`` messages of ``size`` bytes to it."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    from flead_app.io.kafka import create_topics

    await create_topics(settings, list(produce), 2)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        sends = [
            await producer.send(t, b"v" * size, key=b"device_%d" % i)
            for t, (count, size) in produce.items()
            for i in range(count)
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def _delete_topics(settings, names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


@pytest.mark.integration
def test_report_measures_kafka_and_stores_a_snapshot(stack, db, db_url, monkeypatch):
    """Fresh readings/local/global topics with known traffic: the saving is computed from the
    bytes the brokers hold, and the snapshot (a row per partition) is stored."""
    import asyncio
    import uuid

    run = f"rep-{uuid.uuid4().hex[:8]}"
    topics = {
        "FLEAD_TOPIC_READINGS": f"{run}-readings",
        "FLEAD_TOPIC_LOCAL_UPDATES": f"{run}-local",
        "FLEAD_TOPIC_GLOBAL_UPDATES": f"{run}-global",
    }
    produce = {
        topics["FLEAD_TOPIC_READINGS"]: (200, 500),
        topics["FLEAD_TOPIC_LOCAL_UPDATES"]: (8, 400),
        topics["FLEAD_TOPIC_GLOBAL_UPDATES"]: (2, 400),
    }
    asyncio.run(_fresh_topics_with_traffic(stack, produce))
    try:
        for k, v in topics.items():
            monkeypatch.setenv(k, v)
        # topics that do not exist are skipped: keep the stack's own anomalies topic out
        monkeypatch.setenv("FLEAD_TOPIC_ANOMALIES", f"{run}-absent-anomalies")
        monkeypatch.setenv("FLEAD_TOPIC_DEAD_LETTER", f"{run}-absent-dead")
        done = run_report(db_url, "--json", kafka=stack.kafka_bootstrap)
    finally:
        asyncio.run(_delete_topics(stack, list(produce)))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    k = report["kafka"]
    assert k["method"] == "describe_log_dirs" and k["note"] is None
    s = k["summary"]
    assert s["reading_bytes"] >= 200 * 500
    assert s["topics"][topics["FLEAD_TOPIC_READINGS"]]["messages"] == 200
    assert 10 * 400 <= s["model_bytes"] < s["reading_bytes"]
    assert s["bandwidth_saving"] == pytest.approx(1 - s["model_bytes"] / s["reading_bytes"])
    assert report["counts"]["kafka_traffic"] == 6  # 3 topics x 2 partitions, each counted once
    text = run_report(db_url, "--no-kafka")
    assert "stored snapshot" in text.stdout and "bandwidth saving" in text.stdout


@pytest.mark.integration
def test_report_fails_clearly_without_a_database(base_db_url):
    from flead_app.io.db.store import sqlalchemy_url

    url = sqlalchemy_url(base_db_url).set(host="127.0.0.1", port=closed_port()).render_as_string(hide_password=False)
    done = run_report(url, "--json", "--no-kafka")
    assert done.returncode == 2
    assert "cannot reach the database" in done.stderr
    assert done.stdout == ""
    password = sqlalchemy_url(base_db_url).password
    if password:
        assert password not in done.stderr
