"""``flead replay-eval PATH``: replay a labelled CSV through the real pipeline and evaluate it.

For any long-format CSV (a file or a folder; ``device_id,timestamp,value,label``): start the
stack if needed (and empty it: the evaluation reads every reading and version it holds), start a
fresh worker, replay the file at ``--rate`` readings per second, have every device train on what it
holds, wait until the pipeline is idle (every consumer group at zero lag), evaluate about a dozen
global versions and, beside the newest, every baseline on the three held-out splits with Spark,
then print the split x model table and write the JSON:

    {"splits": {SPLIT: {MODEL: {METRIC: value}}}, "versions": n, "readings": n, "devices": n, ...}

with SPLIT in readings, devices, prequential; MODEL in global (the newest evaluated version),
central, local, zrule, random; METRIC as ``algorithms.metrics.ModelMetrics`` (null where a model
cannot score a split).

The rate matters for what is learnt, not only for how long it takes. A replay compresses months
of readings (NAB's devices sent one every few minutes) into seconds; as fast as the broker takes
them (``--rate 0``), the detector agent applied ~8,000 readings/s and the FedAvg agent, on the same
worker's event loop, fell behind: rounds then started from versions ~100 behind the newest
(mean staleness 110 in the offline replica with a 30 s delay, against 1.0 at 0.2 s), and the
global model on held-out devices fell from a NAB score of 44.9 to -13.2 (its threshold let through
4.4 false alarms per 1,000 instead of 1.9). The default rate keeps the rounds about one version
behind, as a live fleet is; each version's mean staleness is stored and printed at the end.

Replayed files are often years old: the run keeps every row (no
TimescaleDB retention, which acts on the readings' own times and would drop them at once).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from flead_app.settings import load_settings, setting_env

#: global versions the run evaluates (the first, the last, evenly between); the newest also with every baseline
VERSION_POINTS = 12
PROGRESS_EVERY_S = 5.0
#: readings per second of a replay: the FedAvg agent keeps up, so rounds start from a recent version
DEFAULT_RATE = 2000.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay-eval",
        help="replay a labelled CSV through the pipeline, then evaluate with Spark on three held-out splits",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", help="a long-format CSV (device_id,timestamp,value,label), .csv.gz, or a folder of them")
    p.add_argument(
        "--brokers", type=int, choices=(1, 4), default=None, help="cluster size (default: the running one's, else 1)"
    )
    p.add_argument("--batch", type=int, default=10, help="readings per message in the replay (default 10)")
    p.add_argument(
        "--rate", type=float, default=DEFAULT_RATE,
        help=f"readings per second in the replay (default {DEFAULT_RATE:,.0f}; 0: as fast as the broker takes them)",
    )  # fmt: skip
    p.add_argument("--json", dest="json_path", default=None, help="write the results here")
    p.add_argument("--keep-running", action="store_true", help="leave the stack up afterwards")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up waiting for the pipeline after this long")
    p.set_defaults(func=run)


def say(text: str) -> None:
    print(f"flead replay-eval: {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    from flead_app.demo import drain, train_pending
    from flead_app.replay import BadRow, csv_files, load_csv
    from flead_app.stack.kafka import KafkaCluster
    from flead_app.stack.reset import reset
    from flead_app.worker import WorkerProcess

    path = Path(args.path)
    try:
        csv_files(path)
        data = load_csv(path)
    except (FileNotFoundError, BadRow) as err:
        print(f"flead replay-eval: {err}", file=sys.stderr)
        return 2
    labelled = int((data.label >= 0).sum())
    say(f"{path}: {len(data):,} readings of {len(data.device_ids)} devices, {labelled:,} labelled "
        f"({data.labelled_anomalies:,} inside anomaly windows)")  # fmt: skip
    if labelled == 0:
        print("flead replay-eval: the file carries no labels: nothing to evaluate", file=sys.stderr)
        return 2
    existing = KafkaCluster.from_home(load_settings().home_path)
    brokers = args.brokers or (existing.brokers if existing else 1)
    say(f"starting the stack ({brokers} broker{'s' if brokers > 1 else ''}) ...")
    if subprocess.run([sys.executable, "-m", "flead_app.cli", "stack", "up", "--brokers", str(brokers)]).returncode:
        print("flead replay-eval: the stack did not start; see above", file=sys.stderr)
        return 1
    overrides = {"retention_days": 0}
    env = setting_env(**overrides)
    settings = replace(load_settings(), **overrides)
    done = reset(settings)
    say(f"starting from an empty stack: {done.describe()}")
    worker = WorkerProcess(settings, env=env, name="replay-eval")
    say(f"starting a worker (log {worker.log_path}) ...")
    worker.start()
    logs = settings.home_path / "logs"
    try:
        replayed = replay(path, args.batch, args.rate, env, logs / "replay-eval-simulator.log", worker, len(data))
        if not replayed:
            return 1
        train_pending(worker, say)
        time.sleep(2)
        say("waiting for the pipeline to finish what was replayed ...")
        if not drain(settings, timeout=args.timeout, say=say):
            say("continuing with what the pipeline stored")
    finally:
        stats = worker.stats() if worker.proc and worker.proc.poll() is None else {}
        worker.stop()
    det = stats.get("detector", {})
    say(f"worker: {det.get('readings', 0):,} readings, {det.get('local_updates', 0):,} local models, "
        f"global v{stats.get('global_version', 0)}")  # fmt: skip
    result = evaluate(settings, env, logs / "replay-eval-spark.log")
    if result is None:
        return 1
    doc = {**result, "readings": len(data), "devices": len(data.device_ids), "source": str(path)}
    from flead_app.report import render_splits

    print(render_splits(doc["splits"], doc["global_version"], doc.get("stability")))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(doc, indent=2, default=str))
        say(f"written to {args.json_path}")
    if not args.keep_running and not settings.demo_keep_stack:
        subprocess.run([sys.executable, "-m", "flead_app.cli", "stack", "down"])
    return 0


def replay(path: Path, batch: int, rate: float, env: dict, log: Path, worker, total: int) -> bool:  # noqa: ANN001
    """The CSV into the readings topic at ``rate`` readings/s (0: as fast as the broker takes it), with
    the worker's progress."""
    import os

    cmd = [sys.executable, "-m", "flead_app.cli", "simulate", "--csv", str(path), "--rate", f"{rate * 60:g}", "--batch",
           str(batch)]  # fmt: skip
    with log.open("w") as out:
        sim = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    say(f"replaying {path.name} (log {log}) ...")
    started = time.monotonic()
    while sim.poll() is None or _processed(worker) < total:
        time.sleep(PROGRESS_EVERY_S)
        done = _processed(worker)
        rate = done / max(time.monotonic() - started, 1e-9)
        eta = (total - done) / rate if rate > 0 else math.inf
        print(f"  [{time.monotonic() - started:5.0f}s] worker has applied {done:,} of {total:,} readings "
              f"({rate:,.0f}/s{'' if math.isinf(eta) else f', about {eta:,.0f} s left'})", flush=True)  # fmt: skip
        if sim.poll() not in (None, 0):
            say(f"the replay failed (exit {sim.returncode}); see {log}")
            return False
        if sim.poll() is not None and done >= total:
            break
        if sim.poll() is not None and time.monotonic() - started > 3600:
            say("the worker stopped advancing; continuing with what it applied")
            break
    return True


def _processed(worker) -> int:  # noqa: ANN001
    try:
        return int(worker.stats().get("detector", {}).get("readings", 0))
    except OSError:
        return 0


def evaluate(settings, env: dict, log: Path) -> dict | None:  # noqa: ANN001
    """``flead spark evaluate`` over about ``VERSION_POINTS`` versions; the results from the database."""
    import os

    from flead_app.io.db.schema import evaluation_summaries
    from flead_app.io.db.store import Database
    from flead_app.report import evaluation_section, global_version_count, heldout_trend_of, jsonable

    versions = global_version_count(settings)
    if not versions:
        say("no global version was made: nothing to evaluate")
        return None
    every = max(1, math.ceil(versions / VERSION_POINTS))
    say(f"evaluating {versions} global versions (every {every}th, and the newest with every baseline) with "
        f"Spark; log {log} ...")  # fmt: skip
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "flead_app.cli", "spark", "evaluate", "--every", str(every), "--json"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
        )  # fmt: skip
    if done.returncode != 0:
        say(f"the evaluation failed (exit {done.returncode}); see {log}")
        return None
    db = Database.from_settings(settings)
    try:
        with db.engine.connect() as conn:
            section = evaluation_section(conn)
            trend = heldout_trend_of(conn, evaluation_summaries)
    finally:
        db.close()
    if section is None:
        say("the evaluation wrote nothing")
        return None
    staleness = mean_staleness(settings)
    if staleness is not None:
        say(f"rounds started on average {staleness:.1f} versions behind the newest (mean staleness of the versions)")
    return jsonable({
        "splits": section["splits"], "versions": versions, "global_version": section["global_version"],
        "evaluated_versions": trend["versions"] if trend else 0, "stability": trend.get("stability") if trend else None,
        "trend_split": trend["split"] if trend else None,
        "trend": [(p["global_version"], p["f1"]) for p in trend["series"]] if trend else [],
        "mean_staleness": staleness,
    })  # fmt: skip


def mean_staleness(settings) -> float | None:  # noqa: ANN001
    """The mean over the stored global versions of their updates' mean staleness (None: no version)."""
    from sqlalchemy import func, select

    from flead_app.io.db.schema import federated_models
    from flead_app.io.db.store import Database

    db = Database.from_settings(settings)
    try:
        with db.engine.connect() as conn:
            value = conn.execute(select(func.avg(federated_models.c.mean_staleness))).scalar()
    finally:
        db.close()
    return None if value is None else float(value)
