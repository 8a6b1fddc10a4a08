"""Profile a worker while it works through a backlog: where does its CPU time go?

Fills fresh topics with the simulator, starts a worker on them, samples it with py-spy
(``pip install -e .[dev]`` installs it) for ``--seconds`` and prints the share of samples per
part of the pipeline. Only samples holding the GIL count (``--gil``): a worker is one core of
Python, and a thread waiting on PostgreSQL or a socket costs it nothing. The raw py-spy
samples (collapsed stacks) are kept for flame graphs.

    .venv/bin/python scripts/profile_worker.py --devices 2407 --batch 50 --fill-seconds 2
    .venv/bin/python scripts/profile_worker.py --devices 2407 --batch 1 --fill-seconds 2

The numbers in docs/benchmarks.md come from these two commands.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

#: (part of the pipeline, substring of a stack), first match wins
PARTS = [
    ("detector: step: scoring (score_batch)", "score_batch (flead_app"),
    ("detector: step: training round", "train_round (flead_app"),
    ("detector: step: holdout split", "holdout_mask (flead_app"),
    ("detector: step: other (decide, predict, round bookkeeping)", "step (flead_app/algorithms/device.py"),
    ("detector: parse + validate", "parse_readings"),
    ("detector: row (de)serialisation", "flead_app/tables/rows.py"),
    ("detector: row (de)serialisation", "to_dict (flead_app/algorithms/device.py"),
    ("detector: row (de)serialisation", "from_dict (flead_app/algorithms/device.py"),
    ("detector: table write + changelog (pre-commit flush)", "flush (flead_app/agents/detector.py"),
    ("detector: table read", "get (flead_app/agents/detector.py"),
    ("detector: output records", "output_records"),
    ("detector: sends (outbox)", "flead_app/agents/outbox.py"),
    ("detector: other (grouping, bookkeeping)", "flead_app/agents/detector.py"),
    ("FedAvg agent", "flead_app/agents/fedavg.py"),
    ("FedAvg agent", "flead_app/algorithms/fedbuff.py"),
    ("sink: consumer task (event loop)", "flead_app/agents/sink.py"),
    ("sink: database inserts (thread)", "_WorkItem.run"),
    ("Kafka producing (aiokafka sender, Faust buffer)", "sender.py"),
    ("Kafka producing (aiokafka sender, Faust buffer)", "faust/transport/producer.py"),
    ("Kafka fetching", "Fetcher"),
    ("Kafka fetching", "aiokafka/consumer"),
    ("Faust streams, agents, acks", "faust/"),
    ("event loop, callbacks (uvloop)", ""),
]


def shares(raw: Path) -> list[tuple[str, float]]:
    """Share of py-spy samples per part of the pipeline, largest first."""
    total, parts = 0, collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        parts[next(name for name, pattern in PARTS if pattern in stack)] += n
    return [(name, n / total) for name, n in parts.most_common()] if total else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=2407)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--fill-seconds", type=float, default=2.0, help="seconds of simulator output to process")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long to sample the worker")
    parser.add_argument("--out", default="artifacts/profile", help="folder for the raw samples")
    args = parser.parse_args()
    beside = Path(sys.executable).parent / "py-spy"  # the venv's, when the venv is not activated
    py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if not py_spy:
        sys.exit("py-spy is not installed: pip install -e '.[dev]'")

    from flead_app.bench import isolated, processed
    from flead_app.io.kafka import create_topics
    from flead_app.settings import load_settings
    from flead_app.simulate import SimOptions, simulate
    from flead_app.worker import WorkerProcess

    base = load_settings()
    settings, env = isolated(base, "prof", base.web_port + 9)
    asyncio.run(create_topics(settings, settings.pipeline_topics))
    opts = SimOptions(devices=args.devices, rate=0, batch=args.batch, seconds=args.fill_seconds, seed=1)
    summary = asyncio.run(simulate(settings, opts, progress=None))
    print(f"backlog: {summary.readings:,} readings in {summary.messages:,} messages", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / f"worker-{args.devices}-{args.batch}.txt"
    worker = WorkerProcess(settings, env=env, name="profile").start()
    try:
        t0, r0 = time.perf_counter(), processed(worker)
        cmd = [py_spy, "record", "-p", str(worker.proc.pid), "-d", str(int(args.seconds)), "-r", "50",
               "-f", "raw", "-o", str(raw), "--nonblocking", "--gil"]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
        rate = (processed(worker) - r0) / (time.perf_counter() - t0)
    finally:
        worker.stop()
    print(f"worker: {rate:,.0f} readings/s while sampled (py-spy running); samples in {raw}\n")
    for name, share in shares(raw):
        print(f"{share:6.1%}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
