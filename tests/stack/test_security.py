"""The secured cluster's pure parts and its secrets on disk (no broker): rendered broker configs,
the tools' arguments, the secrets' modes, and the settings a secured stack gives its clients."""

from __future__ import annotations

import json
from pathlib import Path

from flead_app.settings import load_settings
from flead_app.stack import config, security
from flead_app.stack.config import BrokerSecurity, ClusterPlan
from flead_app.stack.local import acl_prefixes
from tests.stack.test_config import props

SECURITY = BrokerSecurity("/s/broker.p12", "key-store-pw", "/s/ca.pem", "admin-pw")


def test_a_secured_node_serves_clients_on_sasl_ssl_only_and_enforces_acls():
    p = props(config.render_server_properties(ClusterPlan(4, 38092), 1, "/d", 8, SECURITY))
    assert p["listeners"] == "SASL_SSL://127.0.0.1:38092,CONTROLLER://127.0.0.1:48092"
    assert p["advertised.listeners"] == "SASL_SSL://127.0.0.1:38092"
    assert "PLAINTEXT://" not in p["listeners"]
    assert p["inter.broker.listener.name"] == "SASL_SSL"
    assert p["sasl.enabled.mechanisms"] == p["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    jaas = p["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert jaas.startswith("org.apache.kafka.common.security.scram.ScramLoginModule required")
    assert 'username="admin" password="admin-pw";' in jaas
    assert (p["ssl.keystore.type"], p["ssl.keystore.location"]) == ("PKCS12", "/s/broker.p12")
    assert (p["ssl.truststore.type"], p["ssl.truststore.location"]) == ("PEM", "/s/ca.pem")
    assert p["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert p["allow.everyone.if.no.acl.found"] == "false"
    assert p["super.users"] == "User:admin;User:ANONYMOUS"
    broker_only = props(config.render_server_properties(ClusterPlan(4, 38092), 4, "/d", 8, SECURITY))
    assert broker_only["listeners"] == "SASL_SSL://127.0.0.1:38095"
    assert broker_only["authorizer.class.name"] == p["authorizer.class.name"]


def test_broker_security_never_shows_its_passwords():
    assert "admin-pw" not in repr(SECURITY) and "key-store-pw" not in repr(SECURITY)


def test_the_app_user_gets_its_topics_and_groups_by_prefix_and_no_cluster_alter(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEAD_HOME", str(tmp_path))
    monkeypatch.setenv("FLEAD_APP_ID", "bench-1")
    prefixes = acl_prefixes(load_settings())
    assert prefixes == [
        "edge-iiot-stream", "anomalies", "local-model-updates", "global-model-updates", "flead-dead-letter",
        "bench-1",
    ]  # fmt: skip
    topics, cluster = security.acl_commands("localhost:1", tmp_path / "a.properties", "flead", prefixes)
    assert topics[topics.index("--allow-principal") + 1] == "User:flead"
    assert [topics[i + 1] for i, a in enumerate(topics) if a == "--topic"] == prefixes
    assert [topics[i + 1] for i, a in enumerate(topics) if a == "--group"] == prefixes
    ops = [cluster[i + 1] for i, a in enumerate(cluster) if a == "--operation"]
    assert "--cluster" in cluster and "Alter" not in ops and "All" not in ops


def test_the_admin_client_config_names_the_ca_and_scram():
    ca = security.SecretFiles(Path("/h")).ca_cert
    p = props(security.render_client_properties("admin", "pw", ca))
    assert p["security.protocol"] == "SASL_SSL" and p["sasl.mechanism"] == "SCRAM-SHA-512"
    assert p["ssl.truststore.location"] == "/h/secrets/ca.pem"


def test_secrets_are_made_once_with_mode_0600_and_kept(tmp_path):
    files = security.ensure_secrets(tmp_path)
    made = {p.name: p.read_bytes() for p in files.dir.iterdir()}
    assert {"ca.pem", "broker.p12", "kafka-admin.password", "kafka-flead.password", "admin.properties"} <= set(made)
    assert files.dir.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in files.dir.iterdir())
    pw = security.passwords(files)
    assert len(set(pw.values())) == 2 and all(len(v) >= 24 for v in pw.values())
    security.ensure_secrets(tmp_path)
    assert {p.name: p.read_bytes() for p in files.dir.iterdir()} == made  # the cluster keeps its users


def test_a_secured_stack_gives_its_clients_the_app_user_unless_told_otherwise(monkeypatch, tmp_path):
    files = security.SecretFiles(tmp_path)
    security.write_secret(files.password_file("flead"), "the-app-password\n")
    state = {"bootstrap": "localhost:38092", "brokers": 1, "security": security.stack_security_state(files)}
    (tmp_path / "stack.json").write_text(json.dumps(state))
    monkeypatch.setenv("FLEAD_HOME", str(tmp_path))
    s = load_settings()
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism, s.kafka_sasl_username) == (
        "SASL_SSL", "SCRAM-SHA-512", "flead",
    )  # fmt: skip
    assert s.kafka_sasl_password == "the-app-password" and s.kafka_ssl_cafile == str(files.ca_cert)
    assert "the-app-password" not in repr(s) and s.redacted()["kafka_sasl_password"] == "***"
    monkeypatch.setenv("FLEAD_KAFKA_SASL_PASSWORD", "wrong")
    monkeypatch.setenv("FLEAD_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    s = load_settings()
    assert (s.kafka_sasl_password, s.kafka_security_protocol) == ("wrong", "PLAINTEXT")
