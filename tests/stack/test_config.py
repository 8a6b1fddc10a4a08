"""Pure logic of the local stack: port plans, rendered configs, parsers (no services)."""

from __future__ import annotations

import re

import pytest

from flead_app.settings import load_settings
from flead_app.stack import config, postgres
from flead_app.stack.config import ClusterPlan, topic_plans


def props(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def test_four_broker_plan_ports_and_roles():
    plan = ClusterPlan(4, 29092)
    assert [n.client_port for n in plan.nodes] == [29092, 29093, 29094, 29095]
    assert [n.controller_port for n in plan.nodes] == [39092, 39093, 39094, None]
    assert [n.roles for n in plan.nodes] == ["broker,controller"] * 3 + ["broker"]
    assert plan.quorum_voters == "1@127.0.0.1:39092,2@127.0.0.1:39093,3@127.0.0.1:39094"
    assert plan.bootstrap == "localhost:29092,localhost:29093,localhost:29094,localhost:29095"
    assert plan.replication_factor == 3 and plan.min_insync_replicas == 2
    assert len(plan.all_ports()) == 7
    assert plan.ports_json()["4"] == {"client": 29095, "controller": None}


def test_one_broker_plan():
    plan = ClusterPlan(1, 29192)
    assert [(n.node_id, n.client_port, n.controller_port) for n in plan.nodes] == [(1, 29192, 39192)]
    assert plan.replication_factor == 1 and plan.min_insync_replicas == 1
    assert plan.quorum_voters == "1@127.0.0.1:39192"


def test_plan_rejects_bad_sizes():
    with pytest.raises(ValueError):
        ClusterPlan(0)
    with pytest.raises(ValueError):
        ClusterPlan(config.MAX_BROKERS + 1)
    with pytest.raises(ValueError, match="no broker 5"):
        ClusterPlan(4).node(5)


def test_port_base_from_the_settings(monkeypatch):
    monkeypatch.delenv("FLEAD_KAFKA_PORT", raising=False)  # the default, not the port this run uses
    assert load_settings().kafka_port == 29092
    monkeypatch.setenv("FLEAD_KAFKA_PORT", "29192")
    assert load_settings().kafka_port == 29192
    monkeypatch.setenv("FLEAD_KAFKA_PORT", "abc")
    with pytest.raises(ValueError, match="FLEAD_KAFKA_PORT must be a whole number"):
        load_settings()
    monkeypatch.setenv("FLEAD_KAFKA_PORT", "60000")
    with pytest.raises(ValueError, match="out of range"):
        load_settings()


def test_server_properties_of_a_combined_node():
    plan = ClusterPlan(4, 29092)
    p = props(config.render_server_properties(plan, 1, "/data/n1", 8))
    assert p["process.roles"] == "broker,controller"
    assert p["node.id"] == "1"
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:39092"
    assert p["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert p["controller.quorum.voters"] == plan.quorum_voters
    assert p["controller.listener.names"] == "CONTROLLER"
    assert p["log.dirs"] == "/data/n1"
    assert p["default.replication.factor"] == "3"
    assert p["min.insync.replicas"] == "2"
    assert p["offsets.topic.replication.factor"] == "3"
    assert p["transaction.state.log.replication.factor"] == "3"
    assert p["transaction.state.log.min.isr"] == "2"
    assert p["auto.create.topics.enable"] == "false"
    assert int(p["num.network.threads"]) <= 3 and int(p["num.io.threads"]) <= 4


def test_server_properties_of_a_broker_only_node():
    plan = ClusterPlan(4, 29092)
    p = props(config.render_server_properties(plan, 4, "/data/n4"))
    assert p["process.roles"] == "broker"
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:29095"
    assert "CONTROLLER://" not in p["listeners"]
    assert p["controller.quorum.voters"] == plan.quorum_voters


def test_server_properties_single_node_replication_one():
    p = props(config.render_server_properties(ClusterPlan(1), 1, "/d"))
    assert p["default.replication.factor"] == "1"
    assert p["offsets.topic.replication.factor"] == "1"
    assert p["min.insync.replicas"] == "1"
    assert p["transaction.state.log.min.isr"] == "1"


def test_log4j_writes_files_under_the_logs_dir():
    text = config.render_log4j_properties()
    assert "${kafka.logs.dir}/server.log" in text
    assert "ConsoleAppender" not in text
    assert "ConsoleAppender" in config.render_tools_log4j_properties()


def test_jvm_options_fix_the_heap():
    opts = config.jvm_options()
    assert "-Xmx512m" in opts and "-Xms512m" in opts


def test_topic_plans():
    plans = topic_plans(ClusterPlan(4), ["a", "b", "a", ""], 8)
    assert [t.name for t in plans] == ["a", "b"]
    assert all(t.partitions == 8 and t.replication_factor == 3 for t in plans)
    assert plans[0].configs == {"min.insync.replicas": "2"}
    assert topic_plans(ClusterPlan(1), ["a"], 4)[0].configs == {"min.insync.replicas": "1"}
    with pytest.raises(ValueError, match="multiple of 4"):
        topic_plans(ClusterPlan(4), ["a"], 6)


def test_random_cluster_id_looks_like_kafkas():
    ids = {config.random_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cid in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cid) and not cid.startswith("-")


QUORUM_39 = """ClusterId:              ZvRPu8A9RnuMU4rRjB1d4g
LeaderId:               2
LeaderEpoch:            3
HighWatermark:          366
MaxFollowerLag:         0
MaxFollowerLagTimeMs:   138
CurrentVoters:          [{"id": 1, "directoryId": null, "endpoints": ["CONTROLLER://127.0.0.1:39092"]}, \
{"id": 2, "directoryId": null, "endpoints": ["CONTROLLER://127.0.0.1:39093"]}, \
{"id": 3, "directoryId": null, "endpoints": ["CONTROLLER://127.0.0.1:39094"]}]
CurrentObservers:       [{"id": 4, "directoryId": "i0R1AfnzMdRvJNuhQSEx2w"}]
"""


def test_parse_quorum_status():
    q = config.parse_quorum_status(QUORUM_39)
    assert q["LeaderId"] == 2 and q["LeaderEpoch"] == 3 and q["HighWatermark"] == 366
    assert q["CurrentVoters"] == [1, 2, 3]
    assert q["CurrentObservers"] == [4]
    assert q["ClusterId"] == "ZvRPu8A9RnuMU4rRjB1d4g"
    older = config.parse_quorum_status("LeaderId: 1\nCurrentVoters: [1,2,3]\nCurrentObservers: []\n")
    assert older["CurrentVoters"] == [1, 2, 3] and older["CurrentObservers"] == []


def test_parse_lsclusters():
    text = (
        "15  main    5432 online postgres /var/lib/postgresql/15/main /var/log/postgresql/postgresql-15-main.log\n"
        "16  other   5433 down   postgres /var/lib/postgresql/16/other /var/log/x.log\n"
    )
    a, b = postgres.parse_lsclusters(text)
    assert (a.version, a.name, a.port, a.online, a.owner) == ("15", "main", 5432, True, "postgres")
    assert (b.version, b.name, b.port, b.online) == ("16", "other", 5433, False)


def test_db_url_and_name(monkeypatch):
    assert postgres.make_url("a/b@c", 5432, "flead") == "postgresql+psycopg2://flead:a%2Fb%40c@127.0.0.1:5432/flead"
    monkeypatch.setenv("FLEAD_DB_NAME", "flead_alice")
    assert load_settings().db_name == "flead_alice"
    monkeypatch.setenv("FLEAD_DB_NAME", "x; DROP DATABASE y")
    with pytest.raises(ValueError, match="plain database name"):
        load_settings()


def _props(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_mirrormaker_carries_exactly_the_model_topics_and_nothing_else():
    from flead_app.settings import Settings
    from flead_app.stack.config import MirrorPlan, render_mm2_properties
    from flead_app.stack.sites import down_topics, up_topics

    s = Settings()
    sites = (("site1", "localhost:29102"), ("site2", "localhost:29103"))
    plan = MirrorPlan("localhost:29092,localhost:29093", 3, sites, up_topics(s), down_topics(s))
    props = _props(render_mm2_properties(plan))
    assert props["clusters"] == "central, site1, site2"
    assert props["replication.policy.class"] == "org.apache.kafka.connect.mirror.IdentityReplicationPolicy"
    flows = {
        k.removesuffix(".enabled") for k, v in props.items() if k.endswith(".enabled") and "->" in k and v == "true"
    }
    assert flows == {"site1->central", "central->site1", "site2->central", "central->site2"}
    for flow in flows:
        topics = [re.sub(r"\\(.)", r"\1", t.strip()) for t in props[f"{flow}.topics"].split(",")]
        want = (
            ["local-model-updates", "anomalies", "site-evaluations"]
            if flow.endswith("central")
            else ["global-model-updates"]
        )
        assert topics == want
        assert all(re.fullmatch(p.strip(), t) for p, t in zip(props[f"{flow}.topics"].split(","), topics, strict=True))
        assert props[f"{flow}.replication.factor"] == ("3" if flow.endswith("central") else "1")
    everything = " ".join(props.values())
    assert s.topic_readings not in everything and s.topic_dead_letter not in everything
    for off in ("emit.heartbeats.enabled", "emit.checkpoints.enabled", "emit.offset-syncs.enabled",
                "sync.topic.acls.enabled", "sync.topic.configs.enabled", "sync.group.offsets.enabled"):  # fmt: skip
        assert props[off] == "false", off
    assert props["offset.storage.replication.factor"] == "-1"  # the target cluster's default: 3 central, 1 at a site
    assert props["site2.bootstrap.servers"] == "localhost:29103"
