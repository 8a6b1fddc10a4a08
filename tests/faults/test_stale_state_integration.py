"""Local table state ahead of its changelog: the worker rebuilds it instead of stopping.

Faust's recovery raises ``ConsistencyError`` (and the worker stops) when a partition's local
RocksDB state claims a changelog offset past the log's last one; the rebalance test met it once
on a standby partition. Here the condition is made on purpose: worker B is stopped, every
``device_state`` database it keeps gets a persisted offset far past the log, and B starts again
beside worker A, so it meets the condition on both its active and its standby partitions. It must
wipe and rebuild those partitions (``faust_patches`` correction 11), count them in its stats, and
hold the right state: after A is SIGKILLed, B serves every device with the readings it was sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest
from rocksdict import Options, Rdict

from flead_app.settings import load_settings
from flead_app.worker import WorkerProcess
from tests.agents.test_pipeline_integration import DESCRIPTION_RULES, device_readings, make_fleet, produce, wait_for
from tests.conftest import free_port

pytestmark = pytest.mark.integration

DEVICES, PER_DEVICE = 24, 100
OFFSET_KEY = b"__faust\0offset__"  # where Faust's RocksDB store keeps a partition's persisted offset
FAR_AHEAD = 10**6


def _worker(settings, env: dict, name: str, port: int) -> WorkerProcess:
    return WorkerProcess(dataclasses.replace(settings, web_port=port), env={**env, "FLEAD_WEB_PORT": str(port)},
                         name=name)  # fmt: skip


def _push_ahead(worker_dir) -> int:
    """Set every device_state partition database under ``worker_dir`` ahead of its changelog."""
    paths = sorted(worker_dir.rglob("device_state-*.db"))
    for path in paths:
        db = Rdict(str(path), options=Options(raw_mode=True))
        db[OFFSET_KEY] = str(FAR_AHEAD).encode()
        db.close()
    return len(paths)


def test_state_ahead_of_its_changelog_is_rebuilt_not_fatal(pipeline_env, monkeypatch):
    env = {**pipeline_env, **DESCRIPTION_RULES, "FLEAD_TRAIN_INTERVAL_S": "3600"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    run, boot, topic = settings.app_id, settings.bootstrap_servers, settings.topic_readings
    fleet = make_fleet(run, devices=DEVICES, per_device=PER_DEVICE, seed=23)
    first = {d: r[: PER_DEVICE // 2] for d, r in fleet.items()}
    second = {d: r[PER_DEVICE // 2 :] for d, r in fleet.items()}

    a = _worker(settings, env, "worker-a", free_port())
    b_port = free_port()
    b = _worker(settings, env, "worker-b", b_port)
    starting = [threading.Thread(target=w.start) for w in (a, b)]
    for t in starting:
        t.start()
    for t in starting:
        t.join()
    restarted = None
    try:

        def counts(worker) -> dict[str, int]:
            return device_readings(worker.url, fleet)

        asyncio.run(produce(boot, topic, first, set(), []))
        wait_for(lambda: set(counts(a).values()) == {PER_DEVICE // 2}, 120, "the first half of every device")
        b.stop()  # graceful: B's databases hold every row it owns or stands by for
        pushed = _push_ahead(b.settings.worker_dir)
        assert pushed > 0, f"worker B kept no device_state databases under {b.settings.worker_dir}"

        restarted = _worker(settings, env, "worker-b-again", b_port).start()
        assert restarted.settings.worker_dir == b.settings.worker_dir
        wait_for(lambda: restarted.stats().get("state_partitions_rebuilt", 0) >= 1, 120,
                 "worker B to rebuild a partition", lambda: str(restarted.stats()))  # fmt: skip
        asyncio.run(produce(boot, topic, second, set(), []))
        wait_for(lambda: set(counts(restarted).values()) == {PER_DEVICE}, 120, "every reading, served by B")

        a.kill()  # B now owns every partition: the rebuilt standbys become its active state
        wait_for(lambda: set(counts(restarted).values()) == {PER_DEVICE}, 180, "every device's count after A died",
                 lambda: str(sorted(counts(restarted).items())[:6]))  # fmt: skip
        rebuilt = restarted.stats()["state_partitions_rebuilt"]
        assert 1 <= rebuilt <= pushed + settings.partitions, rebuilt
        log = restarted.log_path.read_text(errors="replace")
        assert "ConsistencyError" not in log
        assert "past the changelog's last offset" in log
        print(f"stale state: {pushed} databases pushed ahead, {rebuilt} partitions rebuilt; every count exact")
    finally:
        for w in (a, b, restarted):
            if w is not None:
                w.stop()
