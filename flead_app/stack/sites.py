"""Sites beside the central cluster: one single-broker Kafka cluster per site, and MirrorMaker 2.

A site is a place where devices are. Its readings go to its own cluster and stay there; its
worker (``FLEAD_ROLE=site``) detects and trains on them, and only what the model needs crosses
to the central cluster, by Kafka's own tool, MirrorMaker 2 in dedicated mode
(``org.apache.kafka.connect.mirror.MirrorMaker``): local model updates and anomalies up from
every site, global models down to every site (``config.MirrorPlan``). One MirrorMaker process
serves all sites, as one would run at the centre.

Under the state folder (``$FLEAD_HOME``)::

    sites/site-<k>/kafka/...        site k's cluster (a ``KafkaCluster``: node-1, layout.json)
    mirror/mm2.properties           the generated MirrorMaker configuration
    mirror/log4j.properties, mirror/logs/{mirror-maker.log,mirror-maker.out}, mirror/mm2.pid

Site k's broker listens on ``FLEAD_SITE_PORT + k - 1`` (default ``FLEAD_KAFKA_PORT + 10 + k - 1``),
its controller 10000 above. Readiness of MirrorMaker is read from Kafka, not slept for: each flow's
Kafka Connect status topic on its target cluster says when its replication task runs.
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flead_app.settings import Settings
from flead_app.stack import procs
from flead_app.stack.config import (
    CENTRAL_ALIAS,
    ClusterPlan,
    MirrorPlan,
    mirror_jvm_options,
    render_mirror_log4j_properties,
    render_mm2_properties,
    site_alias,
    topic_plans,
)
from flead_app.stack.errors import StackError
from flead_app.stack.fetch import fetch_mirror, require_java
from flead_app.stack.kafka import KafkaCluster, run_async

log = logging.getLogger(__name__)

MAX_SITES = 8
MIRROR_START_TIMEOUT_S = 180.0
MAIN_CLASS = "org.apache.kafka.connect.mirror.MirrorMaker"


def central_topics(settings: Settings) -> list[str]:
    """The central cluster of a sites topology has no readings topic: no reading is meant to get
    there; it has the sites' evaluation summaries instead."""
    return [t for t in settings.pipeline_topics if t != settings.topic_readings] + [settings.topic_site_evaluations]


def up_topics(settings: Settings) -> tuple[str, ...]:
    """What crosses from each site to the centre: what FedAvg, the sink and the fleet's held-out
    evaluation need, nothing more.

    Not the dead letters: a dead letter carries the refused input (often a whole reading) and
    is for the site's operators; the site keeps and counts them.
    """
    return (settings.topic_local_updates, settings.topic_anomalies, settings.topic_site_evaluations)


def down_topics(settings: Settings) -> tuple[str, ...]:
    return (settings.topic_global_updates,)


def site_cluster(home: Path, settings: Settings, site: int, port_base: int | None = None) -> KafkaCluster:
    """Site ``site``'s one-broker cluster under ``home/sites/site-<site>``."""
    base = port_base if port_base is not None else settings.site_port
    return KafkaCluster(home / "sites" / f"site-{site}", 1, base + site - 1, settings.kafka_version,
                        settings.partitions)  # fmt: skip


def existing_sites(home: Path) -> dict[int, KafkaCluster]:
    """The site clusters that have (had) data under ``home``, by site number."""
    out: dict[int, KafkaCluster] = {}
    root = home / "sites"
    if root.is_dir():
        for path in sorted(root.glob("site-*")):
            suffix = path.name.removeprefix("site-")
            cluster = KafkaCluster.from_home(path) if suffix.isdigit() else None
            if cluster is not None:
                out[int(suffix)] = cluster
    return out


# --- MirrorMaker 2 ------------------------------------------------------------------------------


@dataclass
class FlowStatus:
    source: str
    target: str
    topics: tuple[str, ...]
    state: str  # the replication task's state in Kafka Connect's status topic, or why unknown

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"


class MirrorMaker:
    """The MirrorMaker 2 process (dedicated mode) of a sites topology, under ``home/mirror``."""

    def __init__(self, home: Path, plan: MirrorPlan, settings: Settings) -> None:
        self.home = Path(home).resolve()
        self.settings = settings
        version, heap = settings.kafka_version, settings.mirror_heap
        self.plan = plan
        self.version = version
        self.heap = heap
        self.dir = self.home / "mirror"

    @property
    def config_file(self) -> Path:
        return self.dir / "mm2.properties"

    @property
    def pid_file(self) -> Path:
        return self.dir / "mm2.pid"

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "mirror-maker.log"

    @property
    def out_file(self) -> Path:
        return self.log_dir / "mirror-maker.out"

    def pid(self) -> int | None:
        return procs.running_pid(self.pid_file, str(self.config_file))

    def start(self, timeout: float = MIRROR_START_TIMEOUT_S) -> bool:
        """Start MirrorMaker unless it runs (then its config must be the same); wait until every
        flow's task runs. True when started now."""
        text = render_mm2_properties(self.plan)
        if self.pid():
            if self.config_file.exists() and self.config_file.read_text() == text:
                self.wait_running(timeout)
                return False
            log.info("MirrorMaker runs with another configuration: restarting it")
            self.stop()
        libs = fetch_mirror(self.version).libs
        java = require_java()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(text)
        (self.dir / "log4j.properties").write_text(render_mirror_log4j_properties())
        cmd = [
            java, *mirror_jvm_options(self.heap),
            f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
            f"-Dkafka.logs.dir={self.log_dir}",
            "-cp", str(libs / "*"), MAIN_CLASS, str(self.config_file),
        ]  # fmt: skip
        started_ms = int(time.time() * 1000) - 1000  # a little slack for clocks of one machine
        with open(self.out_file, "ab") as fh:
            fh.write(f"\n--- flead: starting MirrorMaker at {time.ctime()} ---\n".encode())
            fh.flush()
            proc = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir,
                start_new_session=True, close_fds=True,
            )  # fmt: skip
        self.pid_file.write_text(f"{proc.pid}\n")
        log.info("started MirrorMaker 2 (pid %d) for %d flows", proc.pid, len(self.plan.flows()))
        try:
            self.wait_running(timeout, since_ms=started_ms)
        except BaseException:
            self.stop(timeout=10.0)
            raise
        return True

    def wait_running(self, timeout: float, since_ms: int = 0) -> None:
        """Until every flow's task reports RUNNING (in a status record written from ``since_ms``)."""
        deadline = time.monotonic() + timeout
        flows: list[FlowStatus] = []
        while time.monotonic() < deadline:
            if self._exited():
                raise StackError(self.failure_report("exited during start-up"))
            flows = self.flows(since_ms)
            if flows and all(f.running for f in flows):
                return
            time.sleep(1.0)
        waiting = ", ".join(f"{f.source}->{f.target}: {f.state}" for f in flows if not f.running)
        raise StackError(self.failure_report(f"did not run every flow within {timeout:.0f} s ({waiting})"))

    def flows(self, since_ms: int = 0) -> list[FlowStatus]:
        """Each flow's replication task state, read from its target cluster's Connect status topic."""
        from flead_app.io.mirror import task_states

        bootstrap = {CENTRAL_ALIAS: self.plan.central, **dict(self.plan.sites)}
        out = []
        for source, target, topics in self.plan.flows():
            try:
                states = run_async(task_states(self.settings, bootstrap[target].split(","), source, since_ms))
                state = states.get("MirrorSourceConnector-0", "NOT STARTED")
            except Exception as exc:  # noqa: BLE001 - a target that does not answer is a status
                state = f"unknown ({type(exc).__name__}: {exc})"
            out.append(FlowStatus(source, target, topics, state))
        return out

    def _exited(self) -> bool:
        """Gone (not merely unrecognised: right after the fork the child's command line is still ours)."""
        pid = procs.read_pid(self.pid_file)
        if pid is None:
            return True
        procs.reap(pid)
        return procs.is_zombie(pid)

    def stop(self, timeout: float = 30.0) -> str:
        pid = procs.read_pid(self.pid_file)
        result = "not running"
        if pid is not None:
            result = procs.stop_pid(pid, str(self.config_file), timeout)
        self.pid_file.unlink(missing_ok=True)
        return result

    def kill(self) -> bool:
        """SIGKILL (fault tests): no final offset commit, so the next start repeats some records."""
        pid = self.pid()
        if pid is None:
            return False
        killed = procs.kill_pid(pid, str(self.config_file))
        self.pid_file.unlink(missing_ok=True)
        return killed

    def failure_report(self, what: str) -> str:
        text = [f"MirrorMaker {what}. Logs: {self.log_file} and {self.out_file}"]
        for path in (self.log_file, self.out_file):
            if path.exists():
                text.append(f"--- last lines of {path} ---\n{procs.tail(path, 20)}")
        return "\n".join(text)


# --- the whole sites topology ---------------------------------------------------------------------


@dataclass
class Sites:
    """N site clusters and the MirrorMaker that links them to the central cluster.

    ``home`` is the state folder; ``central`` the central cluster's bootstrap servers and
    replication; ``port_base`` the first site's broker port (default: the settings').
    """

    home: Path
    settings: Settings
    count: int
    central: str
    central_replication: int
    port_base: int | None = None
    #: sites are named <prefix><k> in MirrorMaker (and in its topics on the central cluster); tests
    #: use a prefix of their own, so their MirrorMaker state never meets the stack's
    alias_prefix: str = "site"

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SITES:
            raise StackError(f"--sites must be between 1 and {MAX_SITES}, got {self.count}")
        self.home = Path(self.home).resolve()
        self.clusters = {k: site_cluster(self.home, self.settings, k, self.port_base) for k in range(1, self.count + 1)}
        plan = MirrorPlan(
            central=self.central,
            central_replication=self.central_replication,
            sites=tuple((self.alias(k), c.bootstrap) for k, c in self.clusters.items()),
            up=up_topics(self.settings),
            down=down_topics(self.settings),
        )
        self.mirror = MirrorMaker(self.home, plan, self.settings)

    def alias(self, site: int) -> str:
        return site_alias(site) if self.alias_prefix == "site" else f"{self.alias_prefix}{site}"

    def up(self, timeout: float = 180.0) -> dict[str, Any]:
        """Start every site cluster that is not running, create its topics, start MirrorMaker.

        On failure, stops what this call started."""
        started: dict[int, list[int]] = {}
        try:
            for k, cluster in self.clusters.items():
                started[k] = cluster.up(timeout)
            for cluster in self.clusters.values():  # every topic lives at a site too
                plans = topic_plans(ClusterPlan(1, cluster.plan.port_base), self.settings.site_topics,
                                    self.settings.partitions)  # fmt: skip
                cluster.ensure_topics(plans)
            mirror_started = self.mirror.start(timeout)
        except BaseException:
            for k, nodes in started.items():
                for node_id in nodes:
                    self.clusters[k]._stop_node(node_id, timeout=10.0)  # noqa: SLF001
            raise
        return {"started_sites": [k for k, nodes in started.items() if nodes], "mirror_started": mirror_started}

    def down(self) -> dict[str, str]:
        """MirrorMaker first (it reads and writes every cluster), then the sites."""
        out = {"mirror": self.mirror.stop()}
        for k, cluster in self.clusters.items():
            out[self.alias(k)] = ", ".join(sorted(set(cluster.down().values()))) or "not running"
        return out

    def state(self) -> dict[str, Any]:
        """What ``stack.json`` records of the sites (the settings of site workers read it)."""
        return {
            str(k): {"bootstrap": c.bootstrap, "brokers": 1, "port_base": c.plan.port_base, "home": str(c.home),
                     "alias": self.alias(k)}
            for k, c in self.clusters.items()
        }  # fmt: skip

    def mirror_state(self) -> dict[str, Any]:
        return {"config": str(self.mirror.config_file), "log": str(self.mirror.log_file),
                "pid_file": str(self.mirror.pid_file)}  # fmt: skip
