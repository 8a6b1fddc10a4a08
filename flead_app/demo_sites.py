"""``flead demo --sites N``: the federated topology on this machine, then the report.

N sites beside the central cluster, each with its own one-broker Kafka cluster, its own worker
(``FLEAD_ROLE=site``: detection, local training, the global-model follower) and its own
simulator sending that site's share of the fleet (``site_of``); MirrorMaker 2 carries model
updates and anomalies to the centre and global models back; a central worker
(``FLEAD_ROLE=central``) averages and stores. Readings never leave their site, so the report's
bandwidth section counts the bytes that crossed each site's boundary against the bytes of
readings the site received.

Unless ``--keep-data``, the sites start from fresh clusters (``wipe_sites``: site data,
MirrorMaker's state and the central cluster's MirrorMaker topics about them) and the central
cluster and database are emptied (``flead stack reset``), so every byte counted belongs to this
run. The Spark side jobs run where the readings are: each site's evaluation scores global versions on
its own held-out readings and sends only summaries, which the centre merges into the evaluation
tables (``spark_support.federated``); each site's analytics writes its own rows centrally.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from flead_app import demo
from flead_app.demo import (
    DRAIN_TIMEOUT_S,
    SideJobs,
    _flead,
    evaluate_trend,
    say,
    summary_line,
    train_pending,
)
from flead_app.io.kafka import pipeline_lags
from flead_app.settings import Settings, at_site, load_settings, setting_env
from flead_app.worker import WorkerProcess


def merged_stats(sites: list[dict], central: dict) -> dict:
    """One summary of the topology: detector counters added over the sites, the centre's global model."""
    detector: dict[str, float] = {}
    for stats in sites:
        for key, value in (stats.get("detector") or {}).items():
            if isinstance(value, int | float):
                detector[key] = detector.get(key, 0) + value
    return {
        **central,
        "detector": detector,
        "global_version": central.get("global_version", 0),
        "site_global_versions": [s.get("global_version", 0) for s in sites],
    }


def mirror_lags(settings: Settings, sites: int) -> dict[str, int]:
    """Records each MirrorMaker flow has not yet replicated and committed."""
    from flead_app.io.mirror import flow_lag
    from flead_app.stack.sites import down_topics, up_topics

    central = settings.bootstrap_servers
    out = {}
    for k in range(1, sites + 1):
        site = at_site(settings, k).bootstrap_servers
        out[f"site{k}->central"] = asyncio.run(flow_lag(settings, site, central, f"site{k}", list(up_topics(settings))))
        out[f"central->site{k}"] = asyncio.run(
            flow_lag(settings, central, site, "central", list(down_topics(settings)))
        )
    return out


def drain_sites(settings: Settings, sites: int, timeout: float) -> bool:
    """Wait until every site worker has read its readings, MirrorMaker has carried everything
    across, and the central agents and sink have committed what arrived; False on timeout."""
    central_topics = [settings.topic_local_updates, settings.topic_anomalies, settings.topic_global_updates]

    def lags_now() -> dict[str, int]:
        lags: dict[str, int] = {}
        for k in range(1, sites + 1):
            site = at_site(settings, k)
            lags.update({f"site {k}: {name}": n for name, n in pipeline_lags(site, [site.topic_readings]).items()})
        lags.update(mirror_lags(settings, sites))
        lags.update(pipeline_lags(settings, central_topics))
        return lags

    return demo.wait_drained(lags_now, timeout, "the pipeline", say)


def start_all(workers: list[WorkerProcess]) -> None:
    """Start the workers side by side (each waits for its partitions); raise the first failure."""
    errors: list[BaseException] = []

    def go(w: WorkerProcess) -> None:
        try:
            w.start(timeout=240)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def register(sub: argparse._SubParsersAction) -> None:
    """``flead demo`` (``flead_app.demo``) with ``--sites N``."""
    p = demo.register(sub)
    p.add_argument(
        "--sites", type=int, default=None, metavar="N",
        help="N sites beside the central cluster (a cluster, a worker and a simulator each; MirrorMaker "
        "between them and the centre, where a worker averages and stores); default: the running stack's, else none",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flead_app.stack.kafka import KafkaCluster
    from flead_app.stack.local import default_sites

    home = load_settings().home_path
    existing = KafkaCluster.from_home(home)
    brokers = args.brokers or (existing.brokers if existing else 1)
    sites = args.sites if args.sites is not None else default_sites(home)
    if sites:
        return run_sites(args, brokers, sites)
    if default_sites(home):  # one cluster asked of a stack with sites: they stop first
        _flead("stack", "up", "--brokers", str(brokers), "--sites", "0", check=False)
    return demo.run(args)


def run_sites(args: argparse.Namespace, brokers: int, sites: int) -> int:
    from flead_app.stack.local import wipe_sites
    from flead_app.stack.reset import reset

    say(f"starting the stack: a {brokers}-broker central cluster and {sites} sites ...")
    if not args.keep_data:
        if _flead("stack", "up", "--brokers", str(brokers), "--sites", "0", check=False).returncode != 0:
            print("flead demo: the central cluster did not start; see the messages above", file=sys.stderr)
            return 1
        settings = load_settings()
        gone = wipe_sites(settings)
        done = reset(settings)
        say(f"fresh sites ({len(gone)} folders and topics of earlier sites deleted); central cluster emptied: "
            f"{done.describe()} (--keep-data keeps them)")  # fmt: skip
    if _flead("stack", "up", "--brokers", str(brokers), "--sites", str(sites), check=False).returncode != 0:
        print("flead demo: the sites did not start; see the messages above", file=sys.stderr)
        return 1
    settings = load_settings()  # now that stack.json names the sites
    logs = settings.home_path / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    central = WorkerProcess(replace(settings, role="central"), env=setting_env(role="central"), name="central")
    site_workers = []
    for k in range(1, sites + 1):
        port = settings.web_port + k
        env = setting_env(role="site", site=k, web_port=port)
        site_workers.append(WorkerProcess(at_site(settings, k, role="site", web_port=port), env=env, name=f"site{k}"))
    say(f"starting a central worker (FedAvg, sink) and {sites} site workers (detection, training) ...")
    workers = [central, *site_workers]
    try:
        start_all(workers)
    except BaseException:
        for w in workers:
            w.stop()
        raise
    say(f"live dashboard  {central.url}/dashboard/  (central worker; logs in {logs})")
    for k, w in enumerate(site_workers, start=1):
        say(f"site {k} worker {w.url}/flead/stats/  (its cluster {w.settings.kafka_bootstrap})")
    simulators: list[subprocess.Popen] = []
    sim_logs: list[Path] = []
    for k in range(1, sites + 1):
        cmd = [sys.executable, "-m", "flead_app.cli", "simulate", "--site", str(k), "--seconds",
               str(int(args.minutes * 60))]  # fmt: skip
        if args.csv:
            cmd += ["--csv", args.csv]
        for flag, value in (("--devices", args.devices), ("--rate", args.rate), ("--batch", args.batch)):
            if value is not None:
                cmd += [flag, str(value)]
        path = logs / f"simulator-site{k}.log"
        with path.open("w") as out:
            simulators.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
        sim_logs.append(path)
    say(f"{sites} simulators running for {args.minutes:g} min, one per site, each with its share of the fleet")
    started = time.monotonic()
    side = SideJobs(settings, datetime.now(UTC), sites=sites)
    if not args.no_evaluate:
        say("Spark side jobs run at each site on its own readings (they never reach the centre); the sites' "
            "evaluation summaries are merged centrally")  # fmt: skip

    def stats() -> dict:
        return merged_stats([w.stats() for w in site_workers], central.stats())

    def stop() -> None:
        for p in simulators:
            p.send_signal(signal.SIGINT)

    side_jobs = None if args.no_evaluate else side
    running = lambda: any(p.poll() is None for p in simulators)  # noqa: E731
    interrupted = demo.follow(settings, side_jobs, started, running, stats, stop)
    for p in simulators:
        p.wait()
    for path in sim_logs:
        print("".join(line for line in path.open() if not line.startswith("[")), flush=True)
    if not interrupted:
        for w in site_workers:
            train_pending(w)
        time.sleep(2)  # the requests reach the readings topics before their lag is read
    if drain_sites(settings, sites, timeout=30 if interrupted else DRAIN_TIMEOUT_S):
        say("every site has processed its readings, MirrorMaker has carried everything across, the centre stored it")
    try:
        print(summary_line(stats(), started, ""), flush=True)
    except OSError:
        pass
    for w in workers:
        w.stop()
    if not args.no_evaluate:
        side.finish()
        side.run_now(side.analytics_jobs())
    if not args.no_evaluate and not interrupted:
        evaluate_trend(settings, side)
    say("report\n")
    _flead("report", check=False)
    if not args.keep_running and not settings.demo_keep_stack:
        _flead("stack", "down", check=False)
    return 0
