"""Starting and stopping a Faust worker process, for ``flead demo``, ``flead bench`` and tests.

``flead worker`` is ``faust -A flead_app.app worker`` with the web port and log level from the
settings; ``WorkerProcess`` runs it in the background, waits until its web server answers and
its agents have partitions (polling ``/flead/stats/``), and stops it with SIGTERM (or SIGKILL,
which the fault tests use).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from flead_app.settings import Settings, load_settings

#: the worker's tables (flead_app/tables): Faust names their changelog topics <app id>-<table>-changelog
TABLES = ("device_state", "fedavg_state")
#: the tables a worker of each role (FLEAD_ROLE) keeps: a site detects, the centre averages
ROLE_TABLES = {"all": TABLES, "site": ("device_state",), "central": ("fedavg_state",), "fedavg": ("fedavg_state",)}


def prepare_changelog_topics(settings: Settings, timeout: float = 60.0) -> list[str]:
    """Create the tables' changelog topics before the worker starts, and wait until every broker
    knows them; returns their names.

    Faust creates them itself, then reads their partition count from its client's metadata a
    moment later; on a loaded multi-broker cluster that metadata can still miss a new topic,
    Faust takes it for 0 partitions and every write to the table fails (PartitionsMismatch: seen
    in CI, where no global model was ever made). Existing topics are left as they are.
    """
    import asyncio

    from flead_app.io.kafka import create_topics, kafka_client_options, wait_topics_known

    names = [f"{settings.app_id}-{table}-changelog" for table in ROLE_TABLES[settings.role]]

    async def go() -> None:
        await create_topics(settings, names, configs={"cleanup.policy": "compact"})
        await wait_topics_known(
            settings.bootstrap_servers, names, settings.partitions, timeout, kafka_client_options(settings)
        )

    asyncio.run(go())
    return names


#: the product's Faust app; ``flead bench`` also runs ``flead_app.bench_ceiling``
MAIN_APP = "flead_app.app"


def worker_command(settings: Settings, loglevel: str = "info", app: str = MAIN_APP) -> list[str]:
    return [
        sys.executable,
        "-m",
        "faust",
        "-A",
        app,
        "--loop",
        settings.event_loop,
        "worker",
        "--loglevel",
        loglevel,
        "--web-port",
        str(settings.web_port),
        "--web-bind",
        settings.web_host,
        "--web-host",
        "127.0.0.1",
    ]


def fetch_json(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback URL from settings
        return json.loads(response.read())


class WorkerProcess:
    """A background Faust worker with its log in the state folder.

    ``app`` is the Faust app module (the product's by default) and ``ready_path`` the page that
    answers once its web server is up. ``settings`` are this process's view of the worker's
    settings (its cluster, web port, role); ``env`` must carry the same ones to the child, which
    reads its own.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        env: dict[str, str] | None = None,
        name: str = "worker",
        app: str = MAIN_APP,
        ready_path: str = "/flead/stats/",
    ):
        self.settings = settings or load_settings()
        self.env = {**os.environ, **(env or {})}
        self.log_path: Path = self.settings.home_path / "logs" / f"{name}-{self.settings.web_port}.log"
        self.proc: subprocess.Popen | None = None
        self.app = app
        self.ready_path = ready_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}"

    def start(self, timeout: float = 120.0) -> WorkerProcess:
        if self.app == MAIN_APP:
            prepare_changelog_topics(self.settings)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            worker_command(self.settings, app=self.app),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Poll until the web server answers and the worker has been assigned partitions."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with code {self.proc.returncode}; see {self.log_path}")
            try:
                fetch_json(self.url + self.ready_path)
                if self._log_says_ready():
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"worker not ready after {timeout:.0f} s; see {self.log_path}")

    def _log_says_ready(self) -> bool:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return False
        return "Ready" in text[-200_000:] or "[^Worker]: Ready" in text

    def stats(self) -> dict:
        return fetch_json(self.url + "/flead/stats/")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown hooks, no final commit."""
        self.stop(signal.SIGKILL)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run a Faust worker (faust -A flead_app.app worker)")
    p.add_argument("--loglevel", default="info")
    p.add_argument(
        "--prepare-only", action="store_true",
        help="create the tables' changelog topics, wait until every broker knows them, and exit "
        "(for starting `faust -A flead_app.app worker` yourself)",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    names = prepare_changelog_topics(settings)
    if args.prepare_only:
        print(f"changelog topics ready: {', '.join(names)}")
        return 0
    cmd = worker_command(settings, args.loglevel)
    os.execv(cmd[0], cmd)
    return 0
