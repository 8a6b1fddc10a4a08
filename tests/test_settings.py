import pytest

from flead_app.io.kafka import kafka_client_options
from flead_app.settings import documented_settings, load_settings, redact_url


def test_defaults_come_from_the_description(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEAD_HOME", str(tmp_path))  # no stack.json here
    s = load_settings()
    assert (s.devices, s.readings_per_minute, s.z_threshold, s.train_every, s.train_interval_s) == (
        2407,
        31482,
        2.5,
        50,
        60.0,
    )
    assert s.fedavg_buffer == 20 and s.partitions % 4 == 0
    assert s.kafka_bootstrap == "localhost:29092" and s.replication_factor == 1


def test_environment_overrides_and_validation(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEAD_HOME", str(tmp_path))
    monkeypatch.setenv("FLEAD_Z_THRESHOLD", "3.5")
    monkeypatch.setenv("FLEAD_KAFKA_BOOTSTRAP", "a:1,b:2")
    s = load_settings()
    assert s.z_threshold == 3.5 and s.bootstrap_servers == ["a:1", "b:2"]
    assert s.broker_url == "kafka://a:1;kafka://b:2"
    monkeypatch.setenv("FLEAD_PARTITIONS", "6")
    with pytest.raises(ValueError, match="multiple of 4"):
        load_settings()


def test_the_worker_runs_on_the_chosen_event_loop(monkeypatch, tmp_path):
    from flead_app.worker import worker_command

    monkeypatch.setenv("FLEAD_HOME", str(tmp_path))
    cmd = worker_command(load_settings())
    assert cmd[cmd.index("--loop") + 1] == "uvloop" and cmd.index("--loop") < cmd.index("worker")
    monkeypatch.setenv("FLEAD_EVENT_LOOP", "aio")
    assert "aio" in worker_command(load_settings())
    monkeypatch.setenv("FLEAD_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="FLEAD_EVENT_LOOP"):
        load_settings()


def test_secrets_are_masked(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEAD_HOME", str(tmp_path))
    monkeypatch.setenv("FLEAD_DB_URL", "postgresql://flead:s3cret@db:5432/flead")
    monkeypatch.setenv("FLEAD_KAFKA_SASL_PASSWORD", "hunter2")
    shown = str(load_settings().redacted())
    assert "s3cret" not in shown and "hunter2" not in shown
    assert redact_url("postgresql://u:p@h/db") == "postgresql://u:***@h/db"


def test_sasl_ssl_settings_reach_the_kafka_clients(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEAD_HOME", str(tmp_path))
    monkeypatch.setenv("FLEAD_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("FLEAD_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("FLEAD_KAFKA_SASL_USERNAME", "fleet")
    monkeypatch.setenv("FLEAD_KAFKA_SASL_PASSWORD", "pw")
    opts = kafka_client_options(load_settings())
    assert opts == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "fleet",
        "sasl_plain_password": "pw",
    }
    monkeypatch.setenv("FLEAD_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    assert kafka_client_options(load_settings()) == {}


def test_every_setting_is_documented():
    docs = documented_settings()
    assert all(d.name.startswith("FLEAD_") and d.help for d in docs)
