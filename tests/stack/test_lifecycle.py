"""A private 1-broker cluster on free ports: up twice, kill/start, down twice, failures.

These start real java processes (a few seconds each) on ports away from the shared
4-broker cluster, in a temporary FLEAD_HOME, and stop them at the end.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys

import pytest

from flead_app.settings import load_settings
from flead_app.stack import kafka as kafka_mod
from flead_app.stack import postgres
from flead_app.stack.config import CONTROLLER_PORT_OFFSET, ClusterPlan, topic_plans
from flead_app.stack.errors import StackError
from flead_app.stack.kafka import KafkaCluster
from flead_app.stack.procs import port_in_use

pytestmark = pytest.mark.integration


def free_base(n: int = 1) -> int:
    # Below the kernel's ephemeral range (32768-60999 by default), controllers included: a port in
    # it can be some client's source port when the broker restarts (a restart after kill once
    # found controller port 58080 taken so).
    for _ in range(100):
        base = random.randrange(21000, 22700, 10)
        ports = [base + i for i in range(n)] + [base + CONTROLLER_PORT_OFFSET + i for i in range(n)]
        if not any(port_in_use(p) for p in ports):
            return base
    pytest.fail("no free port range for a test cluster")


def flead(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flead_app.cli", *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )  # fmt: skip


def test_one_broker_cluster_lifecycle(tmp_path):
    cluster = KafkaCluster(tmp_path / "home", 1, free_base())
    try:
        assert cluster.up() == [1]
        assert cluster.up() == []  # a second up is harmless: nothing new started
        plans = topic_plans(cluster.plan, ["t-a", "t-b"], 4)
        assert cluster.ensure_topics(plans) == ["t-a", "t-b"]
        assert cluster.ensure_topics(plans) == []
        st = cluster.status(["t-a", "t-b", "t-missing"])
        assert [b.alive for b in st.brokers] == [True]
        assert st.quorum["LeaderId"] == 1
        assert [t.exists for t in st.topics] == [True, True, False]
        assert [p.isr for p in st.topics[0].partitions] == [[1]] * 4
        assert not st.ok  # a missing topic makes the status fail

        assert cluster.kill(1)
        assert cluster.pid(1) is None and not cluster.pid_file(1).exists()
        down = cluster.status([], with_quorum=False)
        assert [b.alive for b in down.brokers] == [False]
        assert cluster.kill(1) is False

        assert cluster.start(1) is True
        assert cluster.start(1) is False
        assert cluster.status(["t-a"]).ok
    finally:
        results = cluster.down()
    assert results == {1: "stopped"}
    assert cluster.down() == {1: "not running"}  # down with nothing running is harmless
    assert not cluster.pid_file(1).exists()
    assert not port_in_use(cluster.plan.nodes[0].client_port)


def test_broker_that_fails_to_start_is_reported_and_cleaned_up(tmp_path, monkeypatch):
    monkeypatch.setattr(kafka_mod, "jvm_options", lambda: ["-Xmx1m", "-Xms1m"])  # the JVM refuses
    cluster = KafkaCluster(tmp_path / "home", 1, free_base())
    with pytest.raises(StackError) as err:
        cluster.up(timeout=60)
    msg = str(err.value)
    assert "Kafka broker 1 exited during start-up" in msg
    assert str(cluster.out_file(1)) in msg
    assert "heap" in msg.lower()  # the last lines of its log are in the message
    assert not cluster.pid_file(1).exists()
    assert cluster.running_nodes() == []


def test_switching_size_while_running_is_refused(tmp_path):
    home = tmp_path / "home"
    one = KafkaCluster(home, 1, free_base())
    try:
        one.up()
        with pytest.raises(StackError, match="run `flead stack down` first"):
            KafkaCluster(home, 4, free_base(4)).prepare()
        assert one.running_nodes() == [1]
    finally:
        one.down()


def test_cli_up_refuses_a_taken_port_and_leaves_nothing(tmp_path):
    base = free_base()
    home = tmp_path / "home"
    with socket.socket() as s:
        s.bind(("127.0.0.1", base + CONTROLLER_PORT_OFFSET))
        s.listen()
        res = flead(
            "stack", "up", "--brokers", "1", "--no-db", env={"FLEAD_HOME": str(home), "FLEAD_KAFKA_PORT": str(base)}
        )
    assert res.returncode != 0
    assert f"port {base + CONTROLLER_PORT_OFFSET} (broker 1 controller listener)" in res.stderr
    assert not list(home.glob("kafka/node-*/kafka.pid"))
    assert not (home / "stack.json").exists()
    res = flead("stack", "down", env={"FLEAD_HOME": str(home)})
    assert res.returncode == 0, res.stderr


def test_cli_status_of_the_shared_cluster(cluster4):
    res = flead("stack", "status", "--json", env={})
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(res.stdout)
    assert data["ok"] is True
    brokers = data["kafka"]["brokers"]
    assert [b["node_id"] for b in brokers] == [1, 2, 3, 4] and all(b["alive"] for b in brokers)
    assert data["kafka"]["controller"]["leader_id"] in (1, 2, 3)
    assert data["kafka"]["controller"]["voters"] == [1, 2, 3]
    topics = {t["name"]: t for t in data["kafka"]["topics"]}
    assert "edge-iiot-stream" in topics
    for t in topics.values():
        assert t["exists"] and t["healthy"]
        assert all(len(p["replicas"]) == 3 for p in t["partitions"])
    assert data["database"]["answers"] is True
    assert "***" in data["database"]["url"]  # the password is never printed


def test_postgres_database_per_name(tmp_path, monkeypatch):
    if postgres.external_url(load_settings()):
        pytest.skip("FLEAD_DB_URL points at an external server")
    name = f"flead_test_{random.randrange(10**6)}"
    monkeypatch.setenv("FLEAD_DB_NAME", name)
    home = tmp_path / "home"
    info = postgres.ensure_running(home, load_settings())
    try:
        assert info.url.endswith(f"/{name}") and info.managed
        assert postgres.check_url(info.url) == ""
        assert oct(postgres.password_file(home).stat().st_mode & 0o777) == "0o600"
        assert postgres.ensure_running(home, load_settings()).url == info.url  # stable across calls
    finally:
        postgres._psql_admin(info.cluster, f'DROP DATABASE IF EXISTS "{name}";')
    assert "left running" in postgres.stop(home, load_settings())  # not started by this home


def test_plan_matches_the_rendered_cluster(tmp_path):
    cluster = KafkaCluster(tmp_path / "home", 4, 29092)
    assert cluster.plan == ClusterPlan(4, 29092)
    assert cluster.bootstrap == "localhost:29092,localhost:29093,localhost:29094,localhost:29095"


def test_postgres_started_by_the_stack_is_stopped_by_it(tmp_path, monkeypatch):
    """A private Debian cluster (FLEAD_PG_CLUSTER) that the stack creates, starts and stops."""
    if postgres.external_url(load_settings()) or not postgres.installed_versions():
        pytest.skip("needs Debian's PostgreSQL server and no FLEAD_DB_URL")
    name = f"fltest{random.randrange(10**6)}"
    monkeypatch.setenv("FLEAD_PG_CLUSTER", name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    home = tmp_path / "home"
    version = postgres.installed_versions()[-1]
    try:
        info = postgres.ensure_running(home, load_settings())
        assert info.started and info.cluster.name == name
        assert postgres.read_state(home)["started"] is True
        assert postgres.check_url(info.url) == ""
        again = postgres.ensure_running(home, load_settings())
        assert not again.started and again.url == info.url  # up twice: same server, same URL
        assert postgres.stop(home, load_settings()) == "stopped"
        assert not postgres.local_cluster(version, name).online
        # nothing recorded now:
        assert postgres.stop(home, load_settings()) == "left running (not started by this stack)"
        # a missing server is started again by the next up
        assert postgres.ensure_running(home, load_settings()).started
        assert postgres.stop(home, load_settings()) == "stopped"
    finally:
        subprocess.run(["pg_dropcluster", "--stop", version, name], capture_output=True)
