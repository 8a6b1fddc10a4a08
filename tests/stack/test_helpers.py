"""Stack helpers that need no Kafka: jar cache, errors for missing tools, ports, processes."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys

import pytest

from flead_app.stack import fetch, procs
from flead_app.stack.errors import StackError
from flead_app.stack.kafka import KafkaCluster


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("FLEAD_KAFKA_CACHE", str(root))
    return root


def test_cache_hit_runs_no_maven(cache, monkeypatch):
    libs = cache / "libs"
    libs.mkdir(parents=True)
    (libs / "kafka_2.13-9.9.9.jar").write_bytes(b"x")
    (libs / fetch.MARKER).write_text(json.dumps({"jars": ["kafka_2.13-9.9.9.jar"]}))

    def no_subprocess(*a, **k):
        raise AssertionError("maven must not run when the jars are cached")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    res = fetch.fetch("9.9.9")
    assert res.downloaded is False and res.libs == libs and res.jars == 1


def test_incomplete_cache_is_not_trusted(cache):
    libs = cache / "libs"
    libs.mkdir(parents=True)
    (libs / fetch.MARKER).write_text(json.dumps({"jars": ["missing.jar"]}))
    assert not fetch.is_cached("9.9.9")
    (libs / fetch.MARKER).write_text("not json")
    assert not fetch.is_cached("9.9.9")


def test_missing_maven_is_a_clear_error(cache, monkeypatch):
    monkeypatch.setattr(fetch.shutil, "which", lambda name: "/usr/bin/java" if name == "java" else None)
    with pytest.raises(StackError, match="Maven is not installed"):
        fetch.fetch("9.9.9")


def test_missing_java_is_a_clear_error(cache, monkeypatch):
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(StackError, match="Java is not installed"):
        fetch.fetch("9.9.9")


def test_unreachable_maven_central_is_a_clear_error(cache, monkeypatch):
    def fake_run(cmd, **kw):
        return subprocess.CompletedProcess(
            cmd, 1, "", "[ERROR] Could not transfer artifact org.apache.kafka:kafka_2.13: Unknown host"
        )

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    monkeypatch.setattr(fetch.shutil, "which", lambda name: f"/usr/bin/{name}")
    with pytest.raises(StackError, match="cannot reach Maven Central"):
        fetch.fetch("9.9.9")
    assert not (cache / "libs").exists()


def test_taken_port_names_port_and_broker(tmp_path):
    with socket.socket() as s:
        for port in random.Random().sample(range(20_000, 55_000), 200):  # room above it for a cluster's ports
            try:
                s.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
        s.listen()
        cluster = KafkaCluster(tmp_path, 4, port - 1)  # the taken port is broker 2's
        with pytest.raises(StackError, match=rf"port {port} \(broker 2 client listener\)"):
            cluster.check_ports()
    assert not list(tmp_path.iterdir())  # nothing was created


def test_pid_checks_and_stop(tmp_path):
    marker = str(tmp_path / "marker-arg")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    assert procs.wait_exec(proc, marker)
    pid_file = tmp_path / "x.pid"
    pid_file.write_text(str(proc.pid))
    assert procs.running_pid(pid_file, marker) == proc.pid
    assert procs.running_pid(pid_file, "another-marker") is None  # never someone else's process
    assert procs.stop_pid(proc.pid, marker, timeout=10) == "stopped"
    proc.wait(timeout=5)
    assert procs.running_pid(pid_file, marker) is None


def test_a_process_just_started_is_alive_once_its_exec_is_seen(tmp_path, monkeypatch):
    """Right after ``Popen`` the child's command line can still read empty (the kernel has not
    set up its arguments yet), and a liveness check then calls it dead: a restarted broker was
    taken for one that exited during start-up. ``wait_exec`` waits until the marker shows."""
    marker = str(tmp_path / "fresh-marker")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker], stdin=subprocess.DEVNULL)
    try:
        real, reads = procs.cmdline, []

        def exec_not_done_yet(pid: int) -> str:  # the kernel's window, made three reads long
            reads.append(pid)
            return "" if len(reads) <= 3 else real(pid)

        monkeypatch.setattr(procs, "cmdline", exec_not_done_yet)
        assert not procs.pid_alive(proc.pid, marker)  # what the start-up check saw
        assert procs.wait_exec(proc, marker)
        assert len(reads) > 3 and procs.pid_alive(proc.pid, marker)
        monkeypatch.setattr(procs, "cmdline", real)
        assert not procs.wait_exec(proc, marker + "-other", timeout=0.2)  # never shows: gives up
    finally:
        proc.kill()
        proc.wait(timeout=5)
    assert not procs.wait_exec(proc, marker, timeout=5)  # exited: no wait


def test_stop_escalates_to_sigkill(tmp_path):
    marker = str(tmp_path / "stubborn")
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, marker], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    assert procs.stop_pid(proc.pid, marker, timeout=0.5) == "killed after timeout"
    proc.wait(timeout=5)


def test_poll_and_tail(tmp_path):
    calls = []
    assert procs.poll(lambda: calls.append(1) or len(calls) >= 3, timeout=5, interval=0.01)
    assert not procs.poll(lambda: False, timeout=0.05, interval=0.01)
    log = tmp_path / "log"
    log.write_text("\n".join(f"line {i}" for i in range(100)))
    assert procs.tail(log, 2) == "line 98\nline 99"
    assert "no log" in procs.tail(tmp_path / "nope")


def test_up_without_java_starts_nothing(tmp_path, monkeypatch):
    from flead_app.stack import local, postgres

    monkeypatch.setenv("FLEAD_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)

    def must_not_run(*a, **k):
        raise AssertionError("nothing may start without Java")

    monkeypatch.setattr(postgres, "ensure_running", must_not_run)
    monkeypatch.setattr(KafkaCluster, "up", must_not_run)
    with pytest.raises(StackError, match="Java is not installed"):
        local.up(1)
    assert not (tmp_path / "home" / "stack.json").exists()
