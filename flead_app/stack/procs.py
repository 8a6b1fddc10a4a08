"""Processes the stack starts: pid files, liveness, clean stop, free ports.

A pid file is trusted only while ``/proc/<pid>/cmdline`` still contains the marker we
started the process with (its config file path), so a reused pid or somebody else's java
process is never signalled.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in {"Z", "X"}


def pid_alive(pid: int, marker: str) -> bool:
    """True when ``pid`` runs and its command line contains ``marker``."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return False
    if is_zombie(pid):
        return False
    return marker in cmdline(pid)


def wait_exec(proc: subprocess.Popen, marker: str, timeout: float = 10.0) -> bool:
    """Wait until the just started ``proc`` shows ``marker`` in its command line (or exited).

    ``Popen`` returns once the child's exec is under way, but ``/proc/<pid>/cmdline`` reads
    empty until the kernel has set up the new program's arguments: on a loaded machine for
    long enough that a liveness check right after the start takes the new process for dead
    (seen with a restarted Kafka broker: its start failed with "exited during start-up", its
    pid file was removed, and the broker ran on unknown to the stack). True when the marker
    showed, False when the process exited first or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        if marker in cmdline(proc.pid):
            return True
        if proc.poll() is not None or time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def running_pid(pid_file: Path, marker: str) -> int | None:
    pid = read_pid(pid_file)
    if pid is not None and pid_alive(pid, marker):
        return pid
    return None


def reap(pid: int) -> None:
    """Collect an exited child of ours (no-op for processes we did not fork)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    except OSError:
        pass


def wait_gone(pid: int, marker: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        reap(pid)
        if not pid_alive(pid, marker):
            return True
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    reap(pid)
    return not pid_alive(pid, marker)


def stop_pid(pid: int, marker: str, timeout: float = 30.0) -> str:
    """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns how it ended."""
    if not pid_alive(pid, marker):
        return "not running"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "not running"
    if wait_gone(pid, marker, timeout):
        return "stopped"
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return "stopped"
    wait_gone(pid, marker, 10.0)
    return "killed after timeout"


def kill_pid(pid: int, marker: str) -> bool:
    if not pid_alive(pid, marker):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    wait_gone(pid, marker, 10.0)
    return True


def port_in_use(port: int, host: str = "127.0.0.1", grace_s: float = 0.0) -> bool:
    """True when something listens on ``host:port`` or the port cannot be bound.

    A port that nothing listens on but that cannot be bound is usually the local end of some
    client's short-lived connection (ports above 32767 are also the kernel's ephemeral range):
    it can be retried for ``grace_s`` seconds before being called taken. A connection to a port in
    that range where nothing listens can also succeed to itself (TCP's simultaneous open: the
    kernel picked the port as the connection's own source port), which says nothing is there; a
    restart right after a SIGKILL once failed that way ("port 51900 already in use").
    """
    deadline = time.monotonic() + grace_s
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.3)
            if s.connect_ex((host, port)) == 0 and s.getsockname() != s.getpeername():
                return True
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                return False
            except OSError:
                if time.monotonic() >= deadline:
                    return True
        time.sleep(0.5)


def tail(path: Path, lines: int = 25) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data.splitlines()[-lines:])


def poll(check: Callable[[], bool], timeout: float, interval: float = 0.2, max_interval: float = 1.0) -> bool:
    """Call ``check`` until it returns True or ``timeout`` seconds pass (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
        interval = min(interval * 1.5, max_interval)
