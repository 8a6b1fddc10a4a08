"""Two sites beside the test stack's central cluster, linked by a real MirrorMaker 2 process.

One run, three phases (one test: the topology takes ~40 s to start, so it is started once):

1. linked: each site's simulator sends its share of a small fleet to the site's own cluster; the
   site workers detect and train, MirrorMaker carries updates and anomalies to the centre, where
   the central worker averages and stores, and global models come back.
2. cut off: MirrorMaker is killed (SIGKILL: no final offset commit, so some records cross twice
   later) and stays down for a minute while the sites get more readings: they keep detecting
   and training, and nothing new reaches the centre.
3. linked again: MirrorMaker restarts; every local update reaches FedAvg exactly once (copies
   dropped and counted), staleness weighting applies to the backlog, no anomaly is lost.

Then every record of every central topic of the run is inspected (no reading among them), and
``flead report --json`` counts the bytes that crossed each site's boundary.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from flead_app.io.db.store import sqlalchemy_url
from flead_app.io.kafka import consumer, create_topics
from flead_app.io.mirror import flow_lag
from flead_app.io.traffic import measure
from flead_app.models import Anomaly, GlobalModel, LocalModelUpdate, SiteEvaluation
from flead_app.settings import Settings
from flead_app.simulate import SimOptions, simulate
from flead_app.stack.sites import Sites
from flead_app.worker import WorkerProcess
from tests.conftest import free_port

pytestmark = pytest.mark.integration

DEVICES = 120
READINGS_PER_PHASE = 2400  # per site: ~40 per device, two rounds each at FLEAD_TRAIN_EVERY=20
OUTAGE_S = 60.0
DRAIN_S = 180.0


async def all_records(settings: Settings, bootstrap: list[str], topic: str) -> list:
    """Every record of ``topic`` (empty when it does not exist)."""
    from aiokafka import TopicPartition

    reader = consumer(settings, bootstrap_servers=bootstrap, group_id=None)
    await reader.start()
    try:
        cluster = await reader._client.fetch_all_metadata()  # noqa: SLF001
        tps = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
        if not tps:
            return []
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        out, todo = [], {tp for tp in tps if ends[tp] > 0}
        while todo:
            batches = await reader.getmany(*todo, timeout_ms=10_000)
            assert batches, f"{topic} not read to its end"
            for tp, records in batches.items():
                out += records
                if await reader.position(tp) >= ends[tp]:
                    todo.discard(tp)
        return out
    finally:
        await reader.stop()


async def topic_names(settings: Settings, bootstrap: list[str]) -> list[str]:
    reader = consumer(settings, bootstrap_servers=bootstrap, group_id=None)
    await reader.start()
    try:
        return sorted(await reader.topics())
    finally:
        await reader.stop()


def free_site_ports(start: int, sites: int = 2) -> int:
    """The first port from ``start`` where ``sites`` brokers and their controllers (10000 above) can
    listen: ports in the kernel's ephemeral range may be some other connection's local end."""
    from flead_app.stack.procs import port_in_use

    for base in range(start, start + 200):
        if not any(port_in_use(p) for k in range(sites) for p in (base + k, base + k + 10000)):
            return base
    raise AssertionError(f"no free ports for {sites} sites from {start}")


def wait_for(check, timeout: float, what: str, every: float = 1.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last is True or (last and not isinstance(last, dict)):
            return last
        time.sleep(every)
    raise AssertionError(f"{what} within {timeout:.0f} s (last: {last})")


@pytest.fixture
def topology(stack, db_url, tmp_path):
    run = f"st{uuid.uuid4().hex[:6]}"
    names = {
        "topic_readings": f"{run}-readings",
        "topic_anomalies": f"{run}-anomalies",
        "topic_local_updates": f"{run}-local",
        "topic_global_updates": f"{run}-global",
        "topic_dead_letter": f"{run}-dead",
        "topic_site_evaluations": f"{run}-evals",
    }
    settings = replace(stack, app_id=run, db_url=db_url, **names)
    central_topics = [v for k, v in names.items() if k != "topic_readings"]
    asyncio.run(create_topics(settings, central_topics))  # no readings topic at the centre
    sites = Sites(tmp_path, settings, 2, stack.kafka_bootstrap, stack.replication_factor,
                  port_base=free_site_ports(stack.site_port + 5), alias_prefix=f"{run}s")  # fmt: skip
    env_common = {f"FLEAD_{k.upper()}": v for k, v in names.items()} | {
        "FLEAD_APP_ID": run, "FLEAD_DB_URL": db_url, "FLEAD_HOME": str(tmp_path), "FLEAD_SITES": "2",
        "FLEAD_FEDAVG_TIMEOUT_S": "3600", "FLEAD_TRAIN_EVERY": "20", "FLEAD_STORE": "memory://",
        # anomalies must cross whatever the learning reached: a loaded run's model rule had no
        # threshold in time and raised none (0 > 0); what crosses, not when the model alarms, is tested
        "FLEAD_ALARM_RULE": "zrule",
    }  # fmt: skip
    workers: list[WorkerProcess] = []
    try:
        sites.up()
        port = free_port()
        central = WorkerProcess(
            replace(settings, role="central", web_port=port, home=str(tmp_path)),
            env={**env_common, "FLEAD_ROLE": "central", "FLEAD_WEB_PORT": str(port),
                 "FLEAD_KAFKA_BOOTSTRAP": stack.kafka_bootstrap},
            name="central",
        )  # fmt: skip
        workers.append(central)
        site_workers = []
        for k, cluster in sites.clusters.items():
            port = free_port()
            w = WorkerProcess(
                replace(settings, role="site", site=k, sites=2, web_port=port, home=str(tmp_path),
                        kafka_bootstrap=cluster.bootstrap, replication_factor=1),
                env={**env_common, "FLEAD_ROLE": "site", "FLEAD_SITE": str(k), "FLEAD_WEB_PORT": str(port),
                     "FLEAD_KAFKA_BOOTSTRAP": cluster.bootstrap, "FLEAD_REPLICATION_FACTOR": "1"},
                name=f"site{k}",
            )  # fmt: skip
            site_workers.append(w)
            workers.append(w)
        for w in workers:
            w.start(timeout=180)
        yield settings, sites, central, site_workers, env_common
    finally:
        for w in workers:
            w.stop()
        sites.down()
        mm2_topics = [
            f"mm2-{kind}.{sites.alias(k)}.internal" for k in (1, 2) for kind in ("configs", "offsets", "status")
        ]
        from aiokafka.admin import AIOKafkaAdminClient

        async def drop() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap_servers)
            await admin.start()
            try:
                await admin.delete_topics([*central_topics, *mm2_topics, f"{run}-fedavg_state-changelog"])
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass
            finally:
                await admin.close()

        asyncio.run(drop())


def send(settings: Settings, cluster_bootstrap: str, site: int, count: int, seed: int) -> int:
    opts = SimOptions(devices=DEVICES, rate=0, batch=10, seed=seed, count=count, site=(site, 2),
                      bootstrap=[cluster_bootstrap], warmup=12)  # fmt: skip
    summary = asyncio.run(simulate(settings, opts, progress=None))
    assert summary.failed_messages == 0
    return summary.readings


def test_sites_keep_readings_at_home_survive_a_cut_and_count_the_bytes_that_cross(topology):
    settings, sites, central, site_workers, env = topology
    site_boot = {k: [c.bootstrap] for k, c in sites.clusters.items()}
    central_boot = settings.bootstrap_servers
    up_topics = [settings.topic_local_updates, settings.topic_anomalies, settings.topic_site_evaluations]
    down_topics = [settings.topic_global_updates]

    def count(bootstrap: list[str], topic: str) -> int:
        return len(asyncio.run(all_records(settings, bootstrap, topic)))

    def site_read_all(k: int, expected: int):  # noqa: ANN202
        done = site_workers[k - 1].stats().get("detector", {}).get("readings", 0)
        return done >= expected or {"readings": done}

    def mirrored() -> bool | dict:
        lags = {}
        for k, b in site_boot.items():
            lags[f"site{k} up"] = asyncio.run(flow_lag(settings, b, central_boot, sites.alias(k), up_topics))
            lags[f"site{k} down"] = asyncio.run(flow_lag(settings, central_boot, b, "central", down_topics))
        return not any(lags.values()) or lags

    # 1. linked
    sent = {k: send(settings, sites.clusters[k].bootstrap, k, READINGS_PER_PHASE, seed=1) for k in (1, 2)}
    for k in (1, 2):
        wait_for(lambda k=k: site_read_all(k, sent[k]), DRAIN_S, f"site {k} read its readings")
    wait_for(lambda: sum(count(b, settings.topic_local_updates) for b in site_boot.values()) > 0, 60,
             "local updates at the sites")  # fmt: skip
    wait_for(mirrored, DRAIN_S, "MirrorMaker caught up")
    before_cut = {t: count(central_boot, t) for t in up_topics}
    assert before_cut[settings.topic_local_updates] > 0

    # 2. cut off: MirrorMaker dies without committing; the sites go on for a minute
    cut_at = time.monotonic()
    assert sites.mirror.kill()
    site_updates_at_cut = {k: count(b, settings.topic_local_updates) for k, b in site_boot.items()}
    more = {k: send(settings, sites.clusters[k].bootstrap, k, READINGS_PER_PHASE, seed=2) for k in (1, 2)}
    for k in (1, 2):
        wait_for(lambda k=k: site_read_all(k, sent[k] + more[k]), DRAIN_S, f"site {k} read its readings offline")
    wait_for(lambda: all(count(b, settings.topic_local_updates) > site_updates_at_cut[k]
                         for k, b in site_boot.items()), 60, "the sites trained while cut off")  # fmt: skip
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - cut_at)))
    assert {t: count(central_boot, t) for t in up_topics} == before_cut, "something crossed without MirrorMaker"
    version_at_reconnect = central.stats().get("global_version", 0)

    # 3. linked again
    sites.mirror.start()
    wait_for(mirrored, DRAIN_S, "MirrorMaker caught up after the cut")

    site_updates = [LocalModelUpdate.from_json(r.value) for b in site_boot.values()
                    for r in asyncio.run(all_records(settings, b, settings.topic_local_updates))]  # fmt: skip
    site_anomalies = sum(count(b, settings.topic_anomalies) for b in site_boot.values())
    central_local = asyncio.run(all_records(settings, central_boot, settings.topic_local_updates))
    tags = {(u.device_id, u.model_version) for u in site_updates}
    assert len(tags) == len(site_updates), "a site sent an update twice"
    arrived = [LocalModelUpdate.from_json(r.value) for r in central_local]
    assert {(u.device_id, u.model_version) for u in arrived} == tags, "an update was lost crossing"
    copies = len(arrived) - len(site_updates)
    assert copies >= 0

    def fedavg_done():  # noqa: ANN202
        fed = central.stats().get("fedavg", {})
        handled = fed.get("updates", 0) + fed.get("replays_skipped", 0)
        return handled == len(central_local) or fed

    wait_for(fedavg_done, DRAIN_S, "FedAvg handled every arrived update")
    fed = central.stats()["fedavg"]
    print(f"site updates {len(site_updates)} (at the cut {sum(site_updates_at_cut.values())}), arrived "
          f"{len(arrived)}, copies {copies}, FedAvg {fed}")  # fmt: skip
    assert fed["updates"] - fed.get("duplicates_skipped", 0) == len(site_updates)  # each one exactly once
    assert fed.get("duplicates_skipped", 0) == copies  # every re-delivered copy dropped and counted

    engine = create_engine(sqlalchemy_url(settings.db_url))
    try:

        def stored():  # noqa: ANN202
            with engine.connect() as conn:
                n_local = conn.execute(text("SELECT count(*) FROM local_models")).scalar_one()
                n_anom = conn.execute(text("SELECT count(*) FROM anomalies")).scalar_one()
            return (n_local, n_anom) == (len(site_updates), site_anomalies) or {"local": n_local, "anomalies": n_anom}

        wait_for(stored, DRAIN_S, "the sink stored every update and anomaly once")
    finally:
        engine.dispose()
    assert site_anomalies > 0

    # staleness: the backlog started from the version the sites had when cut off, and the
    # versions made of it count the later updates as stale
    global_records = asyncio.run(all_records(settings, central_boot, settings.topic_global_updates))
    central_globals = [GlobalModel.from_json(r.value) for r in global_records]
    after = [g for g in central_globals if g.global_version > version_at_reconnect]
    assert len(after) >= 2 and max(g.mean_staleness for g in after) > 0

    # 4. federated evaluation: each site scores global versions on its own readings and sends only
    # summaries; the centre merges them. The same run evaluated centrally (both sites' readings
    # pooled, which only a test may do here) gives the same rows.
    federated_and_central_evaluation_agree(settings, sites, mirrored)

    # no reading at the centre: every record of every central topic of this run is something else
    site_readings = {r.value for b in site_boot.values()
                     for r in asyncio.run(all_records(settings, b, settings.topic_readings))}  # fmt: skip
    assert len(site_readings) > 0
    run_topics = [t for t in asyncio.run(topic_names(settings, central_boot)) if settings.app_id in t]
    assert settings.topic_readings not in run_topics
    inspected = 0
    kinds = {settings.topic_anomalies: Anomaly, settings.topic_local_updates: LocalModelUpdate,
             settings.topic_global_updates: GlobalModel, settings.topic_site_evaluations: SiteEvaluation}  # fmt: skip
    for topic in run_topics:
        for r in asyncio.run(all_records(settings, central_boot, topic)):
            inspected += 1
            assert r.value not in site_readings, f"a reading in central topic {topic}"
            if topic in kinds:
                kinds[topic].from_json(r.value)  # each record is what the topic is for
            elif r.value is not None and topic.startswith("mm2-"):
                json.loads(r.value)  # Kafka Connect's own state
    assert inspected >= len(central_local) + site_anomalies

    # bytes that crossed each boundary, as `flead report --json` counts them
    (sites.home / "stack.json").write_text(json.dumps({"bootstrap": settings.kafka_bootstrap, "brokers": 4,
                                                       "sites": sites.state()}))  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "flead_app.cli", "report", "--json"],
                          env={**os.environ, **env, "FLEAD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap},
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    bw = report["bandwidth"]
    assert bw["topology"] == "sites" and report["central_readings"] == 0
    for k, b in site_boot.items():
        site = bw["per_site"][str(k)]
        snap = asyncio.run(measure(b, [settings.topic_readings, *up_topics, *down_topics]))
        sizes = {
            t: sum(r["bytes"] for r in snap.rows if r["topic"] == t)
            for t in (settings.topic_readings, *up_topics, *down_topics)
        }
        assert site["reading_bytes"] == sizes[settings.topic_readings] > 0
        assert site["up_bytes"] == sum(sizes[t] for t in up_topics) > 0
        assert sizes[settings.topic_site_evaluations] > 0, "the evaluation summaries crossed too"
        assert site["down_bytes"] == sizes[settings.topic_global_updates] > 0
        # no claim that fewer bytes cross than readings arrive: each round's update (weights,
        # gradient and Hessian, score histogram, feature moments: ~3.6 KB of JSON) outweighs the
        # few dozen readings a simulated device sends per round (docs/deployment.md, Bandwidth)
        assert site["crossed_bytes"] == site["up_bytes"] + site["down_bytes"]
        assert site["pending_records"] == 0
        assert site["saving"] == pytest.approx(1 - site["crossed_bytes"] / site["reading_bytes"])
    assert bw["crossed_bytes"] == sum(s["crossed_bytes"] for s in bw["per_site"].values())
    assert bw["saving"] == pytest.approx(1 - bw["crossed_bytes"] / bw["reading_bytes"])
    assert bw["arrived_central_bytes"] > 0


def federated_and_central_evaluation_agree(settings: Settings, sites: Sites, mirrored) -> None:  # noqa: ANN001
    from flead_app.io.db.store import Database
    from flead_app.spark_support.analytics import Window
    from flead_app.spark_support.evaluation import run_evaluation, series_from_rows
    from flead_app.spark_support.federated import (
        global_versions,
        merge_evaluations_job,
        site_evaluate_job,
    )
    from flead_app.spark_support.jobs import analytics_job, device_config, replayed_rows
    from flead_app.spark_support.session import SparkOptions, build_session

    # the workers' learning settings (the replay must reproduce their rounds)
    base = replace(settings, train_every=20, alarm_rule="zrule", sites=2)
    at = {
        k: replace(base, site=k, kafka_bootstrap=c.bootstrap, replication_factor=1) for k, c in sites.clusters.items()
    }
    spark = build_session(SparkOptions(master="local[2]", driver_memory="1g", shuffle_partitions=2))
    try:
        done = {k: site_evaluate_job(spark, s, every=4) for k, s in at.items()}
        assert all(r.records_sent > 0 for r in done.values()), done
        assert done[1].versions == done[2].versions, "both sites evaluated the same versions"
        wait_for(mirrored, DRAIN_S, "MirrorMaker carried the summaries")
        db = Database.from_settings(base)
        try:
            merged = merge_evaluations_job(base, db, [1, 2])
        finally:
            db.close()
        assert merged.waiting == {} and merged.written == len(merged.rows) > 0
        # per-site analytics: each site's job counts its own readings and replaces only its own rows
        window = Window(datetime.now(UTC) - timedelta(hours=3), datetime.now(UTC) + timedelta(minutes=1))
        db = Database.from_settings(base)
        try:
            counted = {k: analytics_job(spark, s, window, db).readings for k, s in at.items()}
            counted[1] = analytics_job(spark, at[1], window, db).readings  # a re-run replaces site 1's rows only
            with db.engine.connect() as conn:
                stored = conn.execute(text(
                    "SELECT site, scope, sum(count) FROM stream_analytics WHERE window_start = :a AND window_end = :b "
                    "GROUP BY site, scope"), {"a": window.start, "b": window.end}).all()  # fmt: skip
        finally:
            db.close()
        totals = {(site, scope): int(n) for site, scope, n in stored}
        for k in (1, 2):
            assert counted[k] > 0 and totals[(k, "fleet")] == totals[(k, "device")] == counted[k], (k, totals)
        cfg = device_config(base)
        rows = []
        for s in at.values():
            parsed, replayed, _ = replayed_rows(spark, s, cfg)
            rows += replayed.collect()
            replayed.unpersist()
            parsed.unpersist()
        again = site_evaluate_job(spark, at[1], every=4)  # after the merge: it waits for site 2 from now on
        assert again.versions and not set(again.versions) & set(done[1].versions), "a version reported twice"
    finally:
        spark.stop()
    series = series_from_rows(rows, cfg)
    records = asyncio.run(all_records(base, base.bootstrap_servers, base.topic_global_updates))
    published, _ = global_versions(r.value for r in records)
    evaluated = [v for v in published if v.version in set(done[1].versions)]
    pooled = run_evaluation(series, evaluated, published, None, cfg, datetime.now(UTC))

    def key(r: dict) -> tuple:
        return r["model_kind"], r["model_version"], r["split"]

    want = {key(r): r for r in pooled.summaries if r["model_kind"] != "random"}
    got = {key(r): r for r in merged.rows if r["model_kind"] != "random"}
    assert set(got) == set(want) and any(k[0] == "global" for k in want)
    for k, row in want.items():
        for name in ("samples", "tp", "fp", "fn", "tn", "f1", "event_recall", "false_alarms_per_1000", "delay_median",
                     "nab_standard"):  # fmt: skip
            assert got[k][name] == pytest.approx(row[name], abs=1e-9), (k, name, got[k][name], row[name])
        for name in ("roc_auc", "pr_auc"):
            if row[name] is not None:
                assert got[k][name] == pytest.approx(row[name], abs=0.01), (k, name)
    sent = sum(r.bytes_sent for r in done.values())
    print(f"federated evaluation: versions {done[1].versions}, {len(got)} rows equal to the pooled evaluation's; "
          f"{sum(r.records_sent for r in done.values())} summaries, {sent:,} bytes of JSON from "
          f"{sum(r.readings for r in done.values()):,} labelled readings")  # fmt: skip
