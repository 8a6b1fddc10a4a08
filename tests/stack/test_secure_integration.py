"""A secured cluster (``flead stack up --secure``) with every FLEAD client against it.

One broker is enough and cheaper (about 20 s to start): SASL_SSL, SCRAM and ACLs behave the same
on four, where only replication differs, which the 4-broker tests cover. The test starts its own
cluster in a state folder and on ports of its own (never the shared stack's), writes into a schema
of its own in the shared PostgreSQL, and stops every process it started.

On it: the stack's status; a worker (detector, FedAvg, the global-model follower, the sink) fed by
the simulator, with the follower's global versions and the sink's rows checked; ``flead report``;
both bench ceilings (bare aiokafka, bare Faust); a Spark job reading the readings topic through
SASL_SSL; the worker's token on its POST endpoint. Clients with a wrong password, without TLS
(PLAINTEXT) and on a topic outside the app user's ACLs are refused, each with the message that
says why. Finally every log file of the run is searched for the secrets: none may be there.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest

from flead_app.bench import bare_consume, faust_ceiling
from flead_app.io.db.store import Database
from flead_app.io.kafka import producer
from flead_app.settings import Settings, load_settings
from flead_app.stack.kafka import KafkaCluster
from flead_app.stack.procs import port_in_use, read_pid
from flead_app.stack.security import APP_USER, SecretFiles, read_secret
from flead_app.worker import WorkerProcess
from tests.conftest import free_port

pytestmark = pytest.mark.integration

DEVICES = 40
READINGS = 4000  # 100 per device: two rounds each at FLEAD_TRAIN_EVERY=40, 80 updates: 4 global versions
BACKGROUND: list[subprocess.Popen] = []
TOKEN = "test-token-0b6c1f2e9d"  # the worker's bearer token in this run (searched for in the logs too)


def free_ports_from(start: int) -> int:
    """A client port from ``start`` whose controller port (10000 above) is free too."""
    for base in range(start, start + 300):
        if not port_in_use(base) and not port_in_use(base + 10000):
            return base
    raise AssertionError(f"no free Kafka ports from {start}")


def flead(env: dict[str, str], *args: str, timeout: float = 240.0) -> subprocess.CompletedProcess:
    return finish(start_flead(env, *args), timeout)


def start_flead(env: dict[str, str], *args: str) -> subprocess.Popen:
    """A ``flead`` command in the background (the test runs the independent ones side by side), in
    a process group of its own that the fixture kills if the test ends before it does."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "flead_app.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    BACKGROUND.append(proc)
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def settings_with(env: dict[str, str]) -> Settings:
    """The settings a FLEAD process started with ``env`` (and nothing else of ours) reads."""
    with mock.patch.dict(os.environ, env, clear=True):
        return load_settings()


def wait_for(check, timeout: float, what: str, every: float = 1.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what} within {timeout:.0f} s (last: {last})")


@pytest.fixture
def secured(db_url, tmp_path):
    """A secured one-broker stack in ``tmp_path``: (environment of its clients, cluster); stopped after."""
    home = tmp_path / "flead-secure"
    base = free_ports_from(38092)
    plain_env = {k: v for k, v in os.environ.items() if not k.startswith("FLEAD_")}
    env = {
        **plain_env, "FLEAD_HOME": str(home), "FLEAD_KAFKA_PORT": str(base), "FLEAD_DB_URL": db_url,
        "FLEAD_WEB_PORT": str(free_port()), "FLEAD_WEB_TOKEN": TOKEN, "FLEAD_TRAIN_EVERY": "40",
        "FLEAD_HOLDOUT_DEVICE_PERCENT": "0", "FLEAD_FEDAVG_TIMEOUT_S": "3600", "FLEAD_PARTITIONS": "4",
    }  # fmt: skip
    Database(db_url).init_schema()
    try:
        up = flead(env, "stack", "up", "--secure", "--brokers", "1", "--no-db", timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        yield env, up.stdout, KafkaCluster.from_home(home)
    finally:
        for proc in BACKGROUND:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        BACKGROUND.clear()
        cluster = KafkaCluster.from_home(home)
        if cluster is not None:
            pids = [read_pid(cluster.pid_file(n.node_id)) for n in cluster.plan.nodes]
            cluster.down()
            for pid in pids:
                assert (
                    pid is None
                    or not Path(f"/proc/{pid}").exists()
                    or "kafka" not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
                ), f"broker pid {pid} still running"


def start_refused(env: dict[str, str], **overrides: str) -> subprocess.Popen:
    """``flead simulate`` with a client the cluster must refuse."""
    return start_flead({**env, **overrides}, "simulate", "--devices", "2", "--count", "4")


def refusal(proc: subprocess.Popen) -> str:
    """What the refused client said (it must have failed)."""
    done = finish(proc, 120)
    assert done.returncode != 0, f"a client was let in ({done.args}):\n{done.stdout}{done.stderr}"
    return done.stderr


def post_train_pending(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{url}/flead/train-pending/", method="POST", data=b"", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_every_client_works_on_a_secured_cluster_and_the_wrong_ones_are_refused(secured):
    env, up_output, cluster = secured
    home = Path(env["FLEAD_HOME"])
    settings = settings_with(env)
    assert "SASL_SSL" in up_output and "ACLs enforced" in up_output
    assert (settings.kafka_security_protocol, settings.kafka_sasl_username) == ("SASL_SSL", APP_USER)
    assert settings.kafka_sasl_password and settings.kafka_sasl_password not in repr(settings)
    assert settings.redacted()["kafka_sasl_password"] == "***"
    files = SecretFiles(home)
    secrets = {p.name: read_secret(p) for p in files.dir.glob("*.password")} | {"web token": TOKEN}
    assert all(secrets.values()) and len(secrets) == 4
    assert all(p.stat().st_mode & 0o077 == 0 for p in files.dir.iterdir()), "a secret is readable by others"

    checks = [start_flead(env, "stack", "status"), start_refused(env, FLEAD_KAFKA_SASL_PASSWORD="not-the-password"),
              start_refused(env, FLEAD_KAFKA_SECURITY_PROTOCOL="PLAINTEXT")]  # fmt: skip
    status = finish(checks[0], 120)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "security: SASL_SSL (SCRAM-SHA-512 over TLS), ACLs enforced" in status.stdout

    # refused, each with the reason
    wrong = refusal(checks[1])
    assert "refused the login of user flead (SCRAM-SHA-512): wrong user name or password" in wrong
    plain = refusal(checks[2])
    assert "closed the connection of a PLAINTEXT client: the broker requires TLS and SASL" in plain

    async def outside_acls() -> str:
        p = producer(settings, request_timeout_ms=10_000)
        await p.start()
        try:
            await p.send_and_wait("not-a-flead-topic", b"x", key=b"k")
        except Exception as exc:  # noqa: BLE001 - the refusal is the answer
            return f"{type(exc).__name__}: {exc}"
        finally:
            await p.stop()
        return "sent"

    assert asyncio.run(outside_acls()).startswith("TopicAuthorizationFailedError")

    worker = WorkerProcess(settings, name="worker")
    worker.env = env  # exactly the run's settings, none of the shared stack's
    started = datetime.now(UTC)
    worker.start(timeout=180)
    try:
        assert post_train_pending(worker.url, None) == 401
        assert post_train_pending(worker.url, "wrong-token") == 401
        assert post_train_pending(worker.url, TOKEN) == 200

        sim = flead(env, "simulate", "--devices", str(DEVICES), "--count", str(READINGS), "--rate", "0",
                    "--batch", "10", "--json", timeout=180)  # fmt: skip
        assert sim.returncode == 0, sim.stdout + sim.stderr
        assert json.loads(sim.stdout)["readings"] == READINGS
        # a Spark job reads the readings topic through SASL_SSL, beside the rest
        window = [(started - timedelta(minutes=1)).isoformat(), (datetime.now(UTC) + timedelta(minutes=1)).isoformat()]
        spark_job = start_flead(env, "spark", "analytics", "--start", window[0], "--end", window[1], "--slack-s", "0",
                                "--json")  # fmt: skip

        # the detector read everything, FedAvg published, the follower took its versions, the sink stored
        wait_for(lambda: worker.stats()["detector"].get("readings", 0) >= READINGS, 120, "every reading detected")
        wait_for(lambda: worker.stats()["global_version"] >= 2, 120, "the follower at global version 2")
        db = Database(env["FLEAD_DB_URL"])
        try:
            counts = wait_for(
                lambda: (c := db.count_rows())["federated_models"] >= 2 and c["local_models"] >= 40 and c,
                120, "the sink's rows",
            )  # fmt: skip
        finally:
            db.close()
        assert counts["local_models"] >= 40

        report = flead(env, "report", "--json", timeout=180)
        assert report.returncode == 0, report.stdout + report.stderr
        assert json.loads(report.stdout)["counts"]["federated_models"] >= 2
    finally:
        worker.stop()

    # both bench ceilings: a bare aiokafka consumer and a bare Faust agent read the readings topic
    readings, seconds = asyncio.run(bare_consume(settings, settings.topic_readings, READINGS // 10, timeout=60))
    assert readings == READINGS and seconds > 0
    # (faust_ceiling serves the ceiling app on the port after the settings')
    rate = faust_ceiling(replace(settings, web_port=free_port() - 1), env, READINGS // 10, timeout=120)
    assert rate > 0

    spark = finish(spark_job, 300)
    (home / "logs" / "spark-analytics.log").write_text(spark.stdout + spark.stderr)
    assert spark.returncode == 0, spark.stderr[-3000:]
    assert json.loads(spark.stdout)["readings"] == READINGS

    # no secret in any log of the run: Kafka's, the workers', the tools' output, Spark's
    logs = [p for p in home.rglob("*") if p.is_file() and (p.suffix in {".log", ".out"} or ".log." in p.name)]
    names = {p.name for p in logs}
    assert {"server.log", "kafka.out", "spark-analytics.log"} <= names, names
    assert any(n.startswith("worker-") for n in names) and any(n.startswith("bench-faust-ceiling") for n in names)
    found = [
        f"{what} in {p}" for p in logs for what, secret in secrets.items() if secret in p.read_text(errors="replace")
    ]
    assert not found, found
    for text in (up_output, status.stdout, status.stderr, wrong, plain, report.stdout, sim.stderr):
        assert not any(s in text for s in secrets.values())
