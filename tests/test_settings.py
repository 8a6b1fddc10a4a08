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


def test_roles_and_sites_are_checked_and_a_site_talks_to_its_own_cluster(monkeypatch, tmp_path):
    import json

    from flead_app.settings import at_site

    monkeypatch.setenv("FLEAD_HOME", str(tmp_path))
    (tmp_path / "stack.json").write_text(json.dumps({
        "bootstrap": "localhost:29092,localhost:29093", "brokers": 4,
        "sites": {"1": {"bootstrap": "localhost:29102", "brokers": 1}, "2": {"bootstrap": "localhost:29103"}},
    }))  # fmt: skip
    s = load_settings()
    assert (s.role, s.site, s.sites, s.replication_factor) == ("all", 0, 2, 3)
    monkeypatch.setenv("FLEAD_ROLE", "site")
    with pytest.raises(ValueError, match="needs FLEAD_SITE"):
        load_settings()
    monkeypatch.setenv("FLEAD_SITE", "2")
    s = load_settings()
    assert (s.kafka_bootstrap, s.replication_factor, s.worker_dir.name) == ("localhost:29103", 1, "flead-site2-6066")
    monkeypatch.setenv("FLEAD_SITE", "3")
    with pytest.raises(ValueError, match="not one of the 2 site"):
        load_settings()
    monkeypatch.setenv("FLEAD_ROLE", "central")
    monkeypatch.setenv("FLEAD_SITE", "1")
    with pytest.raises(ValueError, match="central cluster"):
        load_settings()
    monkeypatch.delenv("FLEAD_SITE")
    monkeypatch.setenv("FLEAD_ROLE", "edge")
    with pytest.raises(ValueError, match="all, site, central, fedavg"):
        load_settings()
    monkeypatch.delenv("FLEAD_ROLE")
    central = load_settings()
    site1 = at_site(central, 1)
    assert (site1.kafka_bootstrap, site1.replication_factor, at_site(site1, 0).kafka_bootstrap) == (
        "localhost:29102", 1, "localhost:29092,localhost:29093")  # fmt: skip


def test_a_worker_discovers_only_the_modules_of_its_role(tmp_path):
    """Importing a module registers its agents: the centre must not consume readings, a site must
    not average or write the database."""
    import os
    import subprocess
    import sys

    code = (
        "from flead_app.app import app\napp.discover()\n"
        "print(sorted(a.rsplit('.', 1)[-1] for a in app.agents), sorted(app.tables))"
    )
    expected = {
        "all": "['detect', 'federated_averaging'] ['device_state', 'fedavg_state']",
        "site": "['detect'] ['device_state']",
        "central": "['federated_averaging'] ['fedavg_state']",
    }
    for role, want in expected.items():
        env = {**os.environ, "FLEAD_HOME": str(tmp_path), "FLEAD_ROLE": role, "FLEAD_SITES": "1"}
        if role == "site":
            env["FLEAD_SITE"] = "1"
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == want, role


def test_a_worker_bound_beyond_loopback_needs_a_token(monkeypatch, tmp_path):
    from flead_app.worker import worker_command

    monkeypatch.setenv("FLEAD_HOME", str(tmp_path))
    assert load_settings().web_host == "127.0.0.1"
    monkeypatch.setenv("FLEAD_WEB_HOST", "0.0.0.0")
    with pytest.raises(
        ValueError, match="FLEAD_WEB_HOST=0.0.0.0 serves the worker beyond this machine: set FLEAD_WEB_TOKEN"
    ):
        load_settings()
    monkeypatch.setenv("FLEAD_WEB_TOKEN", "s3cret-token")
    s = load_settings()
    cmd = worker_command(s)
    assert cmd[cmd.index("--web-bind") + 1] == "0.0.0.0"
    assert "s3cret-token" not in repr(s) and s.redacted()["web_token"] == "***"


def test_state_changing_requests_need_the_bearer_token():
    from flead_app.web_auth import bearer_token_ok

    assert bearer_token_ok(None, "") and bearer_token_ok("Bearer anything", "")
    assert bearer_token_ok("Bearer tok", "tok") and bearer_token_ok("bearer  tok ", "tok")
    assert not bearer_token_ok(None, "tok") and not bearer_token_ok("Bearer tok2", "tok")
    assert not bearer_token_ok("Basic tok", "tok")


def test_the_update_bound_is_on_by_default_and_fault_injection_off(monkeypatch):
    s = load_settings()
    bound = (s.update_norm_bound, s.update_samples_slack, s.update_positives_slack)
    assert bound == (10.0, 1.5, 20.0) and s.faulty_share == 0.0
    monkeypatch.setenv("FLEAD_FAULTY_SHARE", "1.5")
    with pytest.raises(ValueError, match="FLEAD_FAULTY_SHARE"):
        load_settings()
    monkeypatch.setenv("FLEAD_FAULTY_SHARE", "0.2")
    monkeypatch.setenv("FLEAD_UPDATE_NORM_BOUND", "-1")
    with pytest.raises(ValueError, match="FLEAD_UPDATE_NORM_BOUND"):
        load_settings()
    monkeypatch.setenv("FLEAD_UPDATE_NORM_BOUND", "0")
    assert load_settings().faulty_share == 0.2 and load_settings().update_norm_bound == 0.0
