"""``flead demo``: the whole system on this machine, with a live summary, then the report.

Starts the stack (1 broker by default, ``--brokers 4`` for the description's topology), one
Faust worker and the simulator; every few seconds prints what the pipeline has done (readings,
anomalies, local models, latest global version and accuracy, models per minute); stops after
``--minutes`` or Ctrl-C, has every device train on the readings it still holds, waits for the
worker to finish what was produced, scores about a dozen
global versions (the first, the last, evenly between) on the held-out readings with Spark, and
ends with ``flead report``: the held-out F1 by version shows whether the fleet learned.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import subprocess
import sys
import time
import urllib.request

from flead_app.io.kafka import pipeline_lags
from flead_app.settings import load_settings
from flead_app.worker import WorkerProcess

TREND_POINTS = 12  # global versions the demo evaluates on held-out data
SUMMARY_EVERY_S = 5.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline here with a live summary, then report")
    p.add_argument("--minutes", type=float, default=3.0, help="how long the simulator runs (default 3)")
    p.add_argument("--brokers", type=int, choices=(1, 4), default=1)
    p.add_argument("--devices", type=int, default=None, help="fleet size (default FLEAD_DEVICES=2407)")
    p.add_argument("--rate", type=int, default=None, help="readings per minute (default FLEAD_READINGS_PER_MINUTE)")
    p.add_argument("--batch", type=int, default=None, help="readings per message (default FLEAD_BATCH_SIZE)")
    p.add_argument("--csv", default=None, help="replay this CSV (long format) instead of simulating")
    p.add_argument("--keep-running", action="store_true", help="leave the stack up afterwards")
    p.add_argument(
        "--no-evaluate", action="store_true",
        help="skip the held-out evaluation of the global versions (Spark, about a minute)",
    )  # fmt: skip
    p.set_defaults(func=run)


def _flead(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flead_app.cli", *args], check=check)


def drain(settings, timeout: float) -> bool:  # noqa: ANN001
    """Wait until the worker (its Faust agents and its sink) has committed everything on its input
    topics; False on timeout."""
    topics = [
        settings.topic_readings,
        settings.topic_local_updates,
        settings.topic_anomalies,
        settings.topic_global_updates,
    ]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lags = pipeline_lags(settings, topics)
        if not any(lags.values()):
            return True
        print(f"flead demo: waiting for the worker to catch up: {lags}", flush=True)
        time.sleep(3)
    print("flead demo: the worker did not catch up in time; the report shows what was processed", flush=True)
    return False


def train_pending(worker: WorkerProcess) -> None:
    """Have every device train on the readings it holds since its last round, as it would at
    its next reading or once quiet for FLEAD_TRAIN_INTERVAL_S: the last minute reaches a model."""
    request = urllib.request.Request(f"{worker.url}/flead/train-pending/", method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            requested = json.loads(response.read())["requested"]
    except OSError as err:
        print(f"flead demo: could not ask for the last rounds: {err}", flush=True)
        return
    print(f"flead demo: last rounds requested for {requested:,} devices with readings waiting", flush=True)


def summary_line(stats: dict, started: float, first_models: int) -> str:
    det = stats.get("detector", {})
    minutes = max((time.monotonic() - started) / 60.0, 1e-9)
    models = det.get("local_updates", 0)
    acc = stats.get("global_accuracy")
    return (
        f"[{time.monotonic() - started:6.0f}s] readings {det.get('readings', 0):>9,}  "
        f"anomalies {det.get('anomalies', 0):>7,}  local models {models:>6,}  "
        f"global v{stats.get('global_version', 0)} accuracy {'-' if acc is None else f'{acc:.3f}'}  "
        f"models/min {(models - first_models) / minutes:7.1f}  dead letters {det.get('dead_letters', 0)}"
    )


def evaluate_trend(settings) -> None:  # noqa: ANN001
    """Score about ``TREND_POINTS`` global versions (first, last, evenly between) on the held-out
    readings with Spark, so the report can compare versions on the same data."""
    from sqlalchemy import func, select

    from flead_app.io.db.schema import federated_models
    from flead_app.io.db.store import Database

    db = Database.from_settings(settings)
    try:
        with db.engine.connect() as conn:
            versions = conn.execute(select(func.count(func.distinct(federated_models.c.global_version)))).scalar_one()
    finally:
        db.close()
    if not versions:
        print("flead demo: no global version to evaluate", flush=True)
        return
    every = max(1, math.ceil(versions / TREND_POINTS))
    print(f"\nflead demo: held-out evaluation of {versions} global versions (every {every}th, with Spark) ...",
          flush=True)  # fmt: skip
    done = _flead("spark", "evaluate", "--every", str(every), check=False)
    if done.returncode != 0:
        print("flead demo: the evaluation failed (see above); the report shows the rest", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    print(f"flead demo: starting the stack ({args.brokers} broker{'s' if args.brokers > 1 else ''}) ...", flush=True)
    if _flead("stack", "up", "--brokers", str(args.brokers), check=False).returncode != 0:
        print("flead demo: the stack did not start; see the messages above", file=sys.stderr)
        return 1
    settings = load_settings()  # now that stack.json exists
    worker = WorkerProcess(settings)
    print(f"flead demo: starting a Faust worker (log {worker.log_path}) ...", flush=True)
    worker.start()
    print(f"flead demo: live dashboard  {worker.url}/dashboard/", flush=True)
    print(f"flead demo: worker counters {worker.url}/flead/stats/", flush=True)
    sim_args = [sys.executable, "-m", "flead_app.cli", "simulate", "--seconds", str(int(args.minutes * 60))]
    if args.csv:
        sim_args += ["--csv", args.csv]
    for flag, value in (("--devices", args.devices), ("--rate", args.rate), ("--batch", args.batch)):
        if value is not None:
            sim_args += [flag, str(value)]
    sim_log_path = settings.home_path / "logs" / "simulator.log"
    sim_log = sim_log_path.open("w")
    print(f"flead demo: simulator running for {args.minutes:g} min (log {sim_log_path})", flush=True)
    simulator = subprocess.Popen(sim_args, stdout=sim_log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    interrupted = False
    try:
        while simulator.poll() is None:
            time.sleep(SUMMARY_EVERY_S)
            try:
                print(summary_line(worker.stats(), started, 0), flush=True)
            except OSError as err:
                print(f"(worker not answering: {err})", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\nflead demo: stopping (Ctrl-C) ...", flush=True)
        simulator.send_signal(signal.SIGINT)
    simulator.wait()
    sim_log.close()
    print("".join(line for line in sim_log_path.open() if not line.startswith("[")), flush=True)
    if not interrupted:
        train_pending(worker)
        time.sleep(2)  # the requests reach the readings topic before its lag is read
    # let the worker finish what was produced: every topic's lag back to zero
    drain(settings, timeout=30 if interrupted else 180)
    print(summary_line(worker.stats(), started, 0), flush=True)
    worker.stop()
    if not args.no_evaluate and not interrupted:
        evaluate_trend(settings)
    print("\nflead demo: report\n", flush=True)
    _flead("report", check=False)
    if not args.keep_running and not settings.demo_keep_stack:
        _flead("stack", "down", check=False)
    return 0
