"""docker/docker-compose.yml passes ``docker-compose config`` and describes the topology we document.

No Docker engine runs here, so the file is checked the way Compose itself reads it: the
normalised output of ``docker-compose config`` (defaults and anchors resolved) is parsed with
the YAML library of the interpreter Compose runs on, and the topology is compared with the
description: 4 KRaft brokers (3 controllers) at 29092-29095 with replication 3, TimescaleDB,
Grafana on 3001 with the generated provisioning, Spark master and worker, scalable workers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

from flead_app.dashboard import grafana

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
SERVICES = {
    "broker-1",
    "broker-2",
    "broker-3",
    "broker-4",
    "kafka-init",
    "timescaledb",
    "grafana",
    "spark-master",
    "spark-worker",
    "spark-jobs",
    "worker",
    "simulator",
}
#: the `sites` profile: one site (broker, topics, worker, devices) and MirrorMaker 2
SITE_SERVICES = {"site-broker", "site-kafka-init", "site-worker", "site-simulator", "mirror-config", "mirror-maker"}


def compose_binary() -> str:
    path = shutil.which("docker-compose")
    if not path:
        pytest.fail("docker-compose is missing: apt-get install -y docker-compose (scripts/setup.sh does)")
    return path


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FLEAD_", "GRAFANA_", "COMPOSE_"))}
    return subprocess.run(
        [compose_binary(), "--project-directory", str(DOCKER), "-f", str(DOCKER / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=120,
    )


def compose_config(env: dict[str, str] | None = None) -> dict:
    """The resolved configuration as Compose sees it, parsed with Compose's own interpreter."""
    out = compose("config", env=env)
    assert out.returncode == 0, out.stderr
    shebang = Path(compose_binary()).read_text(errors="replace").splitlines()[0]
    python = shebang[2:].strip().split()[0] if shebang.startswith("#!") else "python3"
    parsed = subprocess.run(
        [python, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
        input=out.stdout,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert parsed.returncode == 0, parsed.stderr
    return json.loads(parsed.stdout)


@pytest.fixture(scope="module")
def config() -> dict:
    return compose_config()


def published(service: dict) -> set[tuple[int, int]]:
    out = set()
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.add((int(p["published"]), int(p["target"])))
        else:
            m = re.match(r"^(?:[\d.]+:)?(\d+)(?:-\d+)?:(\d+)", str(p))
            assert m, p
            out.add((int(m.group(1)), int(m.group(2))))
    return out


def test_compose_config_is_valid():
    out = compose("config", "-q")
    assert out.returncode == 0, out.stderr
    services = compose("config", "--services")
    assert set(services.stdout.split()) == SERVICES | SITE_SERVICES


def test_four_kraft_brokers_three_controllers_replication_three(config):
    svcs = config["services"]
    internal = []
    for n in range(1, 5):
        b = svcs[f"broker-{n}"]
        env = b["environment"]
        assert b["image"].startswith("apache/kafka:")
        assert str(env["KAFKA_NODE_ID"]) == str(n)
        assert env["KAFKA_PROCESS_ROLES"] == ("broker,controller" if n <= 3 else "broker")
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@broker-1:39092,2@broker-2:39093,3@broker-3:39094"
        assert str(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == "3"
        assert str(env["KAFKA_MIN_INSYNC_REPLICAS"]) == "2"
        assert str(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == "3"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert (29091 + n, 29091 + n) in published(b), "client port like the description"
        advertised = dict(x.split("://") for x in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
        assert advertised["EXTERNAL"] == f"localhost:{29091 + n}"
        internal.append(advertised["INTERNAL"])
        assert ("CONTROLLER://" in env["KAFKA_LISTENERS"]) == (n <= 3)
        assert "zookeeper" not in json.dumps(b).lower()
    # every FLEAD process bootstraps from all four brokers' internal listeners
    for name in ("worker", "simulator", "spark-jobs", "spark-worker"):
        env = svcs[name]["environment"]
        assert env["FLEAD_KAFKA_BOOTSTRAP"].split(",") == internal
        assert str(env["FLEAD_REPLICATION_FACTOR"]) == "3"
        assert env["FLEAD_DB_URL"].startswith("postgresql://") and "@timescaledb:5432/" in env["FLEAD_DB_URL"]
        assert env["FLEAD_DB_BACKEND"] == "timescaledb"  # the TimescaleDB image: without it, fail clearly


def test_topics_are_created_with_replication_three(config):
    init = config["services"]["kafka-init"]
    script = " ".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    assert "--replication-factor 3" in script and "min.insync.replicas=2" in script
    topics = init["environment"]["TOPICS"].split()
    assert topics == [
        "edge-iiot-stream",
        "anomalies",
        "local-model-updates",
        "global-model-updates",
        "flead-dead-letter",
    ]
    for n in range(1, 5):
        assert init["depends_on"][f"broker-{n}"]["condition"] == "service_healthy"


def test_grafana_on_3001_with_generated_provisioning(config):
    g = config["services"]["grafana"]
    assert g["image"].startswith("grafana/grafana:")
    assert (3001, 3000) in published(g)
    env = g["environment"]
    assert env["GF_SECURITY_ADMIN_USER"] == "admin" and env["GF_SECURITY_ADMIN_PASSWORD"] == "admin"
    for var in grafana.DB_ENV.values():  # everything the datasource file interpolates
        assert env.get(var), var
    assert env["FLEAD_DB_HOST"] == "timescaledb"
    mounts = {str(v["target"]) if isinstance(v, dict) else v.split(":")[1]: v for v in g["volumes"]}
    assert "/etc/grafana/provisioning" in mounts and grafana.DASHBOARDS_PATH_IN_CONTAINER in mounts
    assert (REPO / "grafana" / grafana.DATASOURCE_FILE).exists()
    assert config["services"]["timescaledb"]["image"].startswith("timescale/timescaledb:")


def test_spark_master_and_worker(config):
    svcs = config["services"]
    assert svcs["spark-master"]["image"].startswith("apache/spark:")
    assert "org.apache.spark.deploy.master.Master" in svcs["spark-master"]["command"]
    worker = svcs["spark-worker"]
    assert "org.apache.spark.deploy.worker.Worker" in worker["command"]
    assert "spark://spark-master:7077" in worker["command"]
    assert svcs["spark-jobs"]["environment"]["FLEAD_SPARK_MASTER"] == "spark://spark-master:7077"
    # the worker runs Spark from the same official image as the master, at pyspark's version
    assert worker["build"]["args"]["SPARK_IMAGE"] == svcs["spark-master"]["image"]
    tag = svcs["spark-master"]["image"].split(":", 1)[1]
    assert tag.split("-")[0] == version("pyspark")


def test_workers_scale_and_share_one_consumer_group(config):
    w = config["services"]["worker"]
    assert "container_name" not in w, "a fixed container name would stop --scale worker=N"
    assert w["environment"]["FLEAD_APP_ID"] == "flead"
    assert w["build"]["target"] == "app" and w["build"]["dockerfile"].endswith("docker/Dockerfile")
    ports = " ".join(str(p) for p in w["ports"])
    assert "6066-6075" in ports, "a port range so each replica publishes its /dashboard"
    script = " ".join(w["command"])
    assert "--web-bind 0.0.0.0" in script and "--web-host" in script


def test_several_machines_are_configured_by_environment():
    cfg = compose_config(
        {
            "FLEAD_BROKER_1_HOST": "kafka-a.example.internal",
            "FLEAD_INTER_BROKER_LISTENER": "EXTERNAL",
            "FLEAD_CONTROLLER_QUORUM_VOTERS": "1@kafka-a.example.internal:39092,2@kafka-b:39093,3@kafka-c:39094",
            "FLEAD_CONTROLLER_BIND": "0.0.0.0",
            "FLEAD_KAFKA_BOOTSTRAP": "kafka-a.example.internal:29092,kafka-b:29093",
        }
    )
    b1 = cfg["services"]["broker-1"]["environment"]
    assert "EXTERNAL://kafka-a.example.internal:29092" in b1["KAFKA_ADVERTISED_LISTENERS"]
    assert b1["KAFKA_INTER_BROKER_LISTENER_NAME"] == "EXTERNAL"
    assert b1["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith("1@kafka-a.example.internal:39092")
    assert (
        cfg["services"]["worker"]["environment"]["FLEAD_KAFKA_BOOTSTRAP"]
        == "kafka-a.example.internal:29092,kafka-b:29093"
    )


def test_dockerfile_builds_from_python_311_slim_and_installs_the_package():
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\S* AS base$", text, re.M)
    assert "pip install ." in text
    assert re.search(r"^FROM base AS app$", text, re.M)
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in src.split():
            assert (REPO / path).exists(), f"Dockerfile copies {path}, which is not in the repository"
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text()
    assert "!flead_app" in ignore and "!setup.cfg" in ignore


def test_a_site_and_mirrormaker_come_with_the_sites_profile(config):
    svcs = config["services"]
    for name in SITE_SERVICES:
        assert svcs[name].get("profiles") == ["sites"], f"{name} must not start without --profile sites"
    for name in SERVICES:
        assert not svcs[name].get("profiles"), f"{name} belongs to the default topology"
    broker = svcs["site-broker"]
    assert broker["image"] == svcs["broker-1"]["image"]  # MirrorMaker and every cluster: one Kafka version
    env = broker["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller" and str(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == "1"
    assert "INTERNAL://site-broker:19092" in env["KAFKA_ADVERTISED_LISTENERS"]
    worker = svcs["site-worker"]["environment"]
    assert (worker["FLEAD_ROLE"], worker["FLEAD_KAFKA_BOOTSTRAP"], str(worker["FLEAD_REPLICATION_FACTOR"])) == (
        "site", "site-broker:19092", "1")  # fmt: skip
    sim = svcs["site-simulator"]
    assert sim["environment"]["FLEAD_KAFKA_BOOTSTRAP"] == "site-broker:19092" and "site-broker:19092" in sim["command"]
    mm = svcs["mirror-maker"]
    assert mm["image"] == svcs["broker-1"]["image"]
    assert mm["command"] == ["/opt/kafka/bin/connect-mirror-maker.sh", "/etc/flead-mirror/mm2.properties"]
    assert mm["depends_on"]["mirror-config"]["condition"] == "service_completed_successfully"
    script = " ".join(svcs["mirror-config"]["command"])
    assert "flead stack mirror-config" in script and "site-broker:19092" in svcs["mirror-config"]["environment"][
        "FLEAD_MIRROR_SITES"]  # fmt: skip
    assert config["services"]["worker"]["environment"]["FLEAD_ROLE"] == "all"
    central = compose_config({"FLEAD_ROLE": "central"})["services"]["worker"]["environment"]
    assert central["FLEAD_ROLE"] == "central"


def test_mirror_config_command_renders_what_the_stack_runs():
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "flead_app.cli", "stack", "mirror-config", "--central", "broker-1:9092",
         "--central-replication", "3", "--site", "1=site-broker:19092", "--site", "2=other-host:29102"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    props = dict(line.split(" = ", 1) for line in done.stdout.splitlines() if " = " in line and line[0] != "#")
    assert props["clusters"] == "central, site1, site2"
    assert props["site2.bootstrap.servers"] == "other-host:29102"
    assert props["site1->central.enabled"] == props["central->site2.enabled"] == "true"
