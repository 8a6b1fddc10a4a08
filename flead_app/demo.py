"""``flead demo``: the whole system on this machine, with a live summary, then the report.

Starts the stack (1 broker by default, ``--brokers 4`` for the description's topology) and
empties it (``flead stack reset``: topics, worker tables and database rows of earlier runs, so
the report speaks of this run only; ``--keep-data`` keeps them), then one Faust worker and the
simulator. While the simulator runs it prints every few seconds what the pipeline has done and
what the newest held-out evaluation says, and in the background it scores new global versions
on held-out readings with Spark (``flead spark evaluate``) and computes the stream analytics of
the hour so far (``flead spark analytics``), so the dashboard's panels fill during the run. At
the end every device trains on what it still holds, the worker finishes what was produced,
about a dozen global versions are evaluated, and ``flead report`` closes.

The terminal shows progress and results; the children's logs (worker, simulator, Spark jobs)
go to files in the state folder, whose paths are printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from flead_app.io.kafka import pipeline_lags
from flead_app.settings import Settings, load_settings, setting_env
from flead_app.worker import WorkerProcess

TREND_POINTS = 12  # global versions the demo evaluates on held-out data at the end
SUMMARY_EVERY_S = 5.0
#: readings per message in the demo: the incident learner's step costs ~13 times as much per
#: reading for single-reading messages as for messages of 50 (docs/learning.md, per-reading cost),
#: and one worker on the 2-core machine, beside 4 brokers, PostgreSQL and Spark, took ~200
#: single-reading messages/s against the 525 readings/s the demo produces; in messages of 10 it
#: keeps up (and FedAvg, whose updates queue behind a lagging readings stream, keeps publishing)
DEMO_BATCH = 10
SIDE_JOBS_EVERY_S = 60.0  # a Spark evaluation and analytics run this often while the simulator runs
DRAIN_TIMEOUT_S = 180.0


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="run the whole pipeline here with a live summary, then report")
    p.add_argument("--minutes", type=float, default=3.0, help="how long the simulator runs (default 3)")
    p.add_argument(
        "--brokers", type=int, choices=(1, 4), default=None,
        help="cluster size (default: the running stack's, else 1)",
    )  # fmt: skip
    p.add_argument("--devices", type=int, default=None, help="fleet size (default FLEAD_DEVICES=2407)")
    p.add_argument("--rate", type=int, default=None, help="readings per minute (default FLEAD_READINGS_PER_MINUTE)")
    p.add_argument(
        "--batch", type=int, default=DEMO_BATCH,
        help=f"readings per message (default {DEMO_BATCH}: each device sends its readings in messages of "
        f"{DEMO_BATCH}, as a gateway does; --batch 1 for the description's single readings)",
    )  # fmt: skip
    p.add_argument("--csv", default=None, help="replay this CSV (long format) instead of simulating")
    p.add_argument("--keep-running", action="store_true", help="leave the stack up afterwards")
    p.add_argument("--keep-data", action="store_true", help="do not empty the stack first (the report mixes runs)")
    p.add_argument(
        "--no-evaluate", action="store_true",
        help="no held-out evaluation with Spark (neither during the run nor at its end)",
    )  # fmt: skip
    p.set_defaults(func=run)
    return p


def say(text: str) -> None:
    print(f"flead demo: {text}", flush=True)


def _flead(
    *args: str, check: bool = True, log: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    out = log.open("a") if log else None
    try:
        return subprocess.run([sys.executable, "-m", "flead_app.cli", *args], check=check, stdout=out,
                              stderr=subprocess.STDOUT if out else None,
                              env={**os.environ, **env} if env else None)  # fmt: skip
    finally:
        if out:
            out.close()


def wait_drained(lags_now: Callable[[], dict[str, int]], timeout: float, who: str, say=say) -> bool:  # noqa: ANN001
    """Poll ``lags_now`` (records left per consumer or flow) each second until all are 0; False on
    timeout (then the lags left are printed once, naming ``who`` had not finished)."""
    deadline = time.monotonic() + timeout
    lags: dict[str, int] = {}
    while time.monotonic() < deadline:
        lags = lags_now()
        if not any(lags.values()):
            return True
        time.sleep(1.0)
    left = {k: v for k, v in lags.items() if v}
    say(f"{who} had not finished after {timeout:.0f} s (records left: {left}); the report shows what it stored")
    return False


def drain(settings: Settings, timeout: float, say=say) -> bool:  # noqa: ANN001 - the caller's printer
    """Wait until every consumer group of the pipeline has committed everything on its topics."""
    topics = [settings.topic_readings, settings.topic_local_updates, settings.topic_anomalies,
              settings.topic_global_updates]  # fmt: skip
    return wait_drained(lambda: pipeline_lags(settings, topics), timeout, "the worker", say)


def follow(
    settings: Settings, side: SideJobs | None, started: float, running: Callable[[], bool],
    stats: Callable[[], dict], stop: Callable[[], None],
) -> bool:  # fmt: skip
    """While ``running()``: tick the side jobs and print a summary line every ``SUMMARY_EVERY_S``
    (the held-out line only when a new evaluation says something new). Ctrl-C calls ``stop``;
    returns whether it was pressed."""
    last_summary, last_heldout = 0.0, ""
    try:
        while running():
            time.sleep(0.5)
            if side:
                side.tick()
            if time.monotonic() - last_summary >= SUMMARY_EVERY_S:
                last_summary = time.monotonic()
                heldout = heldout_headline(settings) if side else ""
                try:
                    print(summary_line(stats(), started, heldout if heldout != last_heldout else ""), flush=True)
                except OSError as err:
                    print(f"(a worker is not answering: {err})", flush=True)
                last_heldout = heldout
    except KeyboardInterrupt:
        say("stopping (Ctrl-C) ...")
        stop()
        return True
    return False


def train_pending(worker: WorkerProcess, say=say) -> None:  # noqa: ANN001 - the caller's printer
    """Have every device train on the readings it holds since its last round, as it would at
    its next reading or once quiet for FLEAD_TRAIN_INTERVAL_S: the last minute reaches a model."""
    token = worker.settings.web_token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{worker.url}/flead/train-pending/", method="POST", data=b"", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            requested = json.loads(response.read())["requested"]
    except OSError as err:
        say(f"could not ask for the last rounds: {err}")
        return
    say(f"last rounds requested for {requested:,} devices with readings waiting")


def heldout_headline(settings: Settings) -> str:
    """The newest held-out evaluation of a global version, in one phrase ('' when there is none)."""
    from flead_app.report import latest_heldout

    try:
        h = latest_heldout(settings)
    except Exception:  # the summary line must not die with the database
        return ""
    if not h:
        return "held-out: not evaluated yet"
    fa = h.get("false_alarms_per_1000")
    return (
        f"held-out ({h['split']}) v{h['model_version']}: event recall {_f(h.get('event_recall'))}, "
        f"false alarms {_f(fa, 1)}/1000, F1 {_f(h.get('f1'))}"
    )


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_line(stats: dict, started: float, heldout: str) -> str:
    det = stats.get("detector", {})
    minutes = max((time.monotonic() - started) / 60.0, 1e-9)
    models = det.get("local_updates", 0)
    acc = stats.get("global_accuracy")
    return (
        f"[{time.monotonic() - started:5.0f}s] readings {det.get('readings', 0):>9,}  "
        f"anomalies {det.get('anomalies', 0):>6,}  local models {models:>6,} ({models / minutes:,.0f}/min)  "
        f"global v{stats.get('global_version', 0)} (round accuracy {'-' if acc is None else f'{acc:.3f}'})  "
        f"dead letters {det.get('dead_letters', 0)}" + (f"\n        {heldout}" if heldout else "")
    )


#: a side job: the ``flead`` arguments and the settings it runs with (a site's, or the centre's: none)
SideJob = tuple[list[str], dict[str, str]]


class SideJobs:
    """Spark jobs the demo runs in the background while the simulator produces, one at a time."""

    def __init__(self, settings: Settings, started_at: datetime, sites: int = 0) -> None:
        """``sites``: with sites, each job runs at every site (on the site's own readings) and the
        centre merges the sites' evaluation summaries."""
        self.sites = sites
        self.log = settings.home_path / "logs" / "demo-spark.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.started_at = started_at
        self.proc: subprocess.Popen | None = None
        self.queue: list[SideJob] = []
        self.next_at = time.monotonic() + SIDE_JOBS_EVERY_S
        self.done = 0

    def tick(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.proc, self.done = None, self.done + 1
        if time.monotonic() >= self.next_at:
            self.next_at = time.monotonic() + SIDE_JOBS_EVERY_S
            self.queue += self.evaluation_jobs(10) + self.analytics_jobs()
        if self.proc is None and self.queue:
            args, env = self.queue.pop(0)
            out = self.log.open("a")
            self.proc = subprocess.Popen([sys.executable, "-m", "flead_app.cli", *args], stdout=out,
                                         stderr=subprocess.STDOUT, env={**os.environ, **env})  # fmt: skip
            out.close()

    def site_envs(self) -> list[dict[str, str]]:
        return [setting_env(site=k) for k in range(1, self.sites + 1)] if self.sites else [{}]

    def evaluation_jobs(self, every: int) -> list[SideJob]:
        """Held-out evaluation of the waiting global versions (every ``every``-th): centrally, or at
        each site on its own readings and then merged at the centre (federated evaluation)."""
        if not self.sites:
            return [(["spark", "evaluate", "--every", str(every)], {})]
        at_sites = [(["spark", "evaluate-site", "--every", str(every)], env) for env in self.site_envs()]
        return [*at_sites, (["spark", "merge-evaluations"], {})]

    def analytics_jobs(self) -> list[SideJob]:
        """The run so far as one window (hourly windows would not close during a demo), at each site."""
        start = self.started_at.replace(second=0, microsecond=0)
        args = ["spark", "analytics", "--start", start.isoformat(), "--end", datetime.now(UTC).isoformat()]
        return [(args, env) for env in self.site_envs()]

    def run_now(self, jobs: list[SideJob]) -> bool:
        """Run ``jobs`` one after the other in the foreground; whether every one succeeded."""
        return all([_flead(*args, check=False, log=self.log, env=env).returncode == 0 for args, env in jobs])

    def finish(self, timeout: float = 300.0) -> None:
        """Wait for the running job (its results belong to the run); drop the queued ones."""
        self.queue.clear()
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def evaluate_trend(settings: Settings, side: SideJobs) -> None:
    """Score about ``TREND_POINTS`` global versions (first, last, evenly between) on held-out
    readings with Spark, so the report can compare versions on the same data (with sites: each
    site on its own readings, merged at the centre)."""
    from flead_app.report import global_version_count

    versions = global_version_count(settings)
    if not versions:
        say("no global version to evaluate")
        return
    every = max(1, math.ceil(versions / TREND_POINTS))
    where = f"at each of the {side.sites} sites on its own readings, merged centrally" if side.sites else "centrally"
    say(f"held-out evaluation of {versions} global versions (every {every}th, with Spark, {where}; log {side.log}) ...")
    if not side.run_now(side.evaluation_jobs(every)):
        say(f"the evaluation failed (see {side.log}); the report shows the rest")


def run(args: argparse.Namespace) -> int:
    from flead_app.stack.kafka import KafkaCluster

    existing = KafkaCluster.from_home(load_settings().home_path)
    brokers = args.brokers or (existing.brokers if existing else 1)
    say(f"starting the stack ({brokers} broker{'s' if brokers > 1 else ''}) ...")
    if _flead("stack", "up", "--brokers", str(brokers), check=False).returncode != 0:
        print("flead demo: the stack did not start; see the messages above", file=sys.stderr)
        return 1
    settings = load_settings()  # now that stack.json exists
    if not args.keep_data:
        from flead_app.stack.reset import reset

        done = reset(settings)
        say(f"starting from an empty stack: {done.describe()} of earlier runs (--keep-data keeps them)")
    worker = WorkerProcess(settings)
    say(f"starting a Faust worker (log {worker.log_path}) ...")
    worker.start()
    say(f"live dashboard  {worker.url}/dashboard/")
    say(f"worker counters {worker.url}/flead/stats/")
    sim_args = [sys.executable, "-m", "flead_app.cli", "simulate", "--seconds", str(int(args.minutes * 60))]
    if args.csv:
        sim_args += ["--csv", args.csv]
    for flag, value in (("--devices", args.devices), ("--rate", args.rate), ("--batch", args.batch)):
        if value is not None:
            sim_args += [flag, str(value)]
    sim_log_path = settings.home_path / "logs" / "simulator.log"
    with sim_log_path.open("w") as sim_log:
        simulator = subprocess.Popen(sim_args, stdout=sim_log, stderr=subprocess.STDOUT)
    say(f"simulator running for {args.minutes:g} min (log {sim_log_path})")
    started = time.monotonic()
    side = SideJobs(settings, datetime.now(UTC))
    side_jobs = None if args.no_evaluate else side
    interrupted = follow(settings, side_jobs, started, lambda: simulator.poll() is None, worker.stats,
                         lambda: simulator.send_signal(signal.SIGINT))  # fmt: skip
    simulator.wait()
    print("".join(line for line in sim_log_path.open() if not line.startswith("[")), flush=True)
    if not interrupted:
        train_pending(worker)
        time.sleep(2)  # the requests reach the readings topic before its lag is read
    drained = drain(settings, timeout=30 if interrupted else DRAIN_TIMEOUT_S)
    if drained:
        say("the worker has processed and stored everything produced")
    print(summary_line(worker.stats(), started, ""), flush=True)
    worker.stop()
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
