"""Rebalances under load: two workers share the topics while a third joins and leaves, again and
again, and the fleet keeps producing. Afterwards everything is counted exactly:

* every device's reading count in its table row equals what was produced (and acknowledged) for it;
* the anomalies in the database are exactly those the z-rule gives on each device's readings;
* the local models in the database are exactly one per (device, round), and FedAvg aggregated
  every local update exactly once (the global versions' ``num_updates`` add up to the rounds);
* global versions 1..N are each published with one content and stored once.

Rounds come every 50 readings only (no timer rounds), so every count is known in advance.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import Counter

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import create_engine, select

from flead_app.io.db.schema import anomalies, local_models
from flead_app.models import encode_batch
from flead_app.settings import load_settings
from flead_app.worker import WorkerProcess
from tests.agents.test_pipeline_integration import (
    DESCRIPTION_RULES,
    consume_all,
    db_count,
    device_readings,
    expected_anomalies,
    make_fleet,
    stored_global_models,
    wait_for,
)
from tests.conftest import free_port

pytestmark = pytest.mark.integration

DEVICES, PER_DEVICE, PER_MESSAGE, BUFFER = 40, 300, 10, 10
PRODUCE_S = 60.0  # the fleet produces for this long, at a steady rate
JOINS = 2  # the third worker joins and leaves this many times meanwhile
STAY_S = 6.0  # how long it stays each time


def _worker(settings, env: dict, name: str) -> WorkerProcess:
    port = free_port()
    return WorkerProcess(dataclasses.replace(settings, web_port=port), env={**env, "FLEAD_WEB_PORT": str(port)},
                         name=name)  # fmt: skip


async def _produce_steadily(bootstrap, topic: str, fleet: dict, seconds: float, acked: Counter) -> None:
    """Each device's readings in messages of PER_MESSAGE, round by round, spread over ``seconds``."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        rounds = PER_DEVICE // PER_MESSAGE
        started = time.monotonic()
        pending = []
        for r in range(rounds):
            for device, readings in fleet.items():
                chunk = readings[r * PER_MESSAGE : (r + 1) * PER_MESSAGE]
                value = encode_batch(device, [x.timestamp for x in chunk], [x.value for x in chunk],
                                     [x.label for x in chunk])  # fmt: skip
                fut = await producer.send(topic, value, key=device.encode())
                fut.add_done_callback(lambda f, d=device: f.exception() or acked.update({d: PER_MESSAGE}))
                pending.append(fut)
            await asyncio.sleep(max(0.0, started + seconds * (r + 1) / rounds - time.monotonic()))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def fedavg_changelog(bootstrap, topic: str) -> list[tuple[int, int, int]]:
    """(version, updates buffered, offset applied) of every fleet row written to the changelog."""
    out = []
    for raw in asyncio.run(consume_all(bootstrap, topic, 10**6, timeout=10)):
        d = orjson.loads(raw)
        out.append((d["state"]["version"], len(d["state"]["buffer"]), d["position"]["offset"]))
    return out


def test_a_worker_joining_and_leaving_repeatedly_loses_and_duplicates_nothing(pipeline_env, monkeypatch):
    env = {**pipeline_env, **DESCRIPTION_RULES, "FLEAD_TRAIN_INTERVAL_S": "3600", "FLEAD_FEDAVG_BUFFER": str(BUFFER)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    run, boot = settings.app_id, settings.bootstrap_servers
    fleet = make_fleet(run, devices=DEVICES, per_device=PER_DEVICE, seed=17)
    started = time.monotonic()
    a, b = _worker(settings, env, "worker-a"), _worker(settings, env, "worker-b")
    starting = [threading.Thread(target=w.start) for w in (a, b)]  # together: each takes ~10-20 s here
    for t in starting:
        t.start()
    for t in starting:
        t.join()
    assert a.proc.poll() is None and b.proc.poll() is None
    joined: list[float] = []
    left: list[dict] = []
    acked: Counter = Counter()
    try:
        producing = threading.Thread(
            target=lambda: asyncio.run(_produce_steadily(boot, settings.topic_readings, fleet, PRODUCE_S, acked))
        )
        producing.start()
        for i in range(JOINS):
            c = _worker(settings, env, f"worker-c{i}").start()
            joined.append(time.monotonic() - started)
            time.sleep(STAY_S)
            left.append(c.stats().get("fedavg", {}))
            c.stop()  # SIGTERM: a graceful leave, another rebalance
        producing.join(timeout=PRODUCE_S + 120)
        assert not producing.is_alive(), "the producer did not finish"
        assert sum(acked.values()) == DEVICES * PER_DEVICE, "every reading produced was acknowledged"

        def readings() -> dict[str, int]:
            return device_readings(a.url, fleet)

        def off() -> str:
            got = readings()
            return f"{sum(1 for d in fleet if got[d] != acked[d])} devices off, e.g. " + str(
                [(d, got[d], acked[d]) for d in fleet if got[d] != acked[d]][:5]
            )

        wait_for(lambda: readings() == dict(acked), 180, "every device's reading count", off)

        engine = create_engine(settings.db_url)
        rounds = DEVICES * (PER_DEVICE // 50)
        want = expected_anomalies(fleet)
        wait_for(lambda: db_count(engine, local_models, run) >= rounds, 120, "every local model in the database")
        wait_for(lambda: db_count(engine, anomalies, run) >= len(want), 60, "every anomaly in the database")
        time.sleep(3)  # anything stored twice arrives now
        with engine.connect() as conn:
            models = conn.execute(select(local_models.c.device_id, local_models.c.model_version).where(
                local_models.c.device_id.like(f"{run}-%"))).all()  # fmt: skip
            found = conn.execute(select(anomalies.c.device_id, anomalies.c.value).where(
                anomalies.c.device_id.like(f"{run}-%"))).all()  # fmt: skip
        assert len(models) == rounds and set(models) == {(d, v) for d in fleet for v in range(1, PER_DEVICE // 50 + 1)}
        assert len(found) == len(want) and set(found) == want

        versions = rounds // BUFFER
        published = [orjson.loads(v) for v in asyncio.run(consume_all(boot, settings.topic_global_updates, versions))]
        by_version: dict[int, set] = {}
        for m in published:
            by_version.setdefault(m["global_version"], set()).add(orjson.dumps(m))
        if sorted(by_version) != list(range(1, versions + 1)):
            rows = fedavg_changelog(boot, f"{run}-fedavg_state-changelog")
            pytest.fail(
                f"global versions {sorted(by_version)} != 1..{versions}; fedavg counters of the third worker when "
                f"it left {left}, of a {a.stats().get('fedavg')}, of b {b.stats().get('fedavg')}; the fleet row as "
                f"written (version, buffered, offset): {rows}"
            )
        assert all(len(contents) == 1 for contents in by_version.values()), "a version published with two contents"
        firsts = [orjson.loads(next(iter(by_version[v]))) for v in sorted(by_version)]
        assert sum(m["num_updates"] for m in firsts) == rounds, "every local update aggregated exactly once"
        wait_for(lambda: stored_global_models(engine, firsts) == versions, 60, "every global version stored")
        updates = [u for u in map(orjson.loads, asyncio.run(consume_all(boot, settings.topic_local_updates, rounds)))
                   if "control" not in u]  # fmt: skip
        dupes = len(updates) - len({(u["device_id"], u["model_version"]) for u in updates})
        print(
            f"rebalance test: {len(joined)} joins at {[round(t) for t in joined]} s; {sum(acked.values())} readings, "
            f"{rounds} local models, {len(want)} anomalies, {versions} global versions exact; {dupes} local updates "
            f"sent twice on the topic ({len(published) - versions} global models), the database none; "
            f"a: {a.stats()['detector']}, b: {b.stats()['detector']}"
        )
    finally:
        a.stop()
        b.stop()
