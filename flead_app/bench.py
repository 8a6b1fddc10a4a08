"""``flead bench``: the pipeline's performance, measured on the running broker.

For each fleet size (2,407, 24,070 and 240,700 devices by default) and message shape (single
readings and batches of ``--batch``), in one run on one broker:

1. the pipeline: a fresh Faust worker (own app id, own topics) runs while the simulator
   produces as fast as the worker takes it (held at most ``BACKLOG_MESSAGES`` ahead) for
   ``--duration`` seconds; every reading goes through detection, training, FedAvg and the sink.
   Readings/s is the median over ~5 s windows of the worker's processed-readings counter;
2. the worker drains what is left (and every downstream topic reaches zero lag);
3. latency: the simulator produces at a quarter of the measured rate for ``--latency-seconds``;
   anomaly latency = Kafka timestamp of the ``anomalies`` record - Kafka timestamp of the
   message that carried the reading (production to anomaly record), p50 and p99;
4. the worker's peak RSS (VmHWM), local models per minute, FedAvg time per aggregation;
5. the ceiling: a bare aiokafka consumer reads and decodes (``parse_readings``) the same
   topic, median of three passes, so the ratio compares like with like on the same broker.

On a shared machine quote the ratio to the ceiling, which is measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from flead_app.io import kafka
from flead_app.io.kafka import assign_all_partitions, pipeline_lags
from flead_app.models import InvalidRecord, parse_readings, parse_timestamp
from flead_app.settings import Settings, load_settings, setting_env
from flead_app.worker import WorkerProcess, fetch_json

DEFAULT_SIZES = (2407, 24070, 240700)


@dataclass
class BenchResult:
    devices: int
    batch: int
    readings: int
    messages: int
    produce_seconds: float
    ceiling_readings_per_s: float
    pipeline_readings_per_s: float
    ratio_to_ceiling: float
    faust_ceiling_readings_per_s: float | None
    ratio_to_faust_ceiling: float | None
    local_models: int
    local_models_per_minute: float
    global_models: int
    anomalies: int
    latency_rate_per_s: float
    anomaly_latency_ms_p50: float | None
    anomaly_latency_ms_p99: float | None
    latency_samples: int
    fedavg_ms_per_aggregation: float | None
    worker_peak_rss_mb: float | None
    workers: int = 1
    readings_per_worker: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure throughput, latency and memory against the running broker")
    p.add_argument("--devices", type=int, action="append", help="fleet size (repeatable; default 2407 24070 240700)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of readings per size (default 60)")
    p.add_argument("--batch", type=int, default=50, help="readings per message for the batched runs (default 50)")
    p.add_argument("--no-single", action="store_true", help="skip the single-reading run (2,407 devices)")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="steady-state phase for latency")
    p.add_argument(
        "--latency-load", type=float, default=LATENCY_LOAD, help="latency phase rate, as a share of the measured rate"
    )
    p.add_argument("--no-scale-out", action="store_true", help="skip the two-worker run and FedAvg's ceiling")
    p.add_argument(
        "--fedavg-updates", type=int, default=FEDAVG_CEILING_UPDATES,
        help=f"local updates FedAvg's ceiling is measured on (default {FEDAVG_CEILING_UPDATES:,})",
    )  # fmt: skip
    p.add_argument("--json", dest="json_path", default=None, help="write the results here")
    p.set_defaults(func=run)


# --- measurements -----------------------------------------------------------------------


async def bare_consume(
    settings: Settings, topic: str, expect_messages: int, timeout: float = 600.0
) -> tuple[int, float]:
    """The ceiling: read ``topic`` from the start with aiokafka and decode every message."""
    consumer = kafka.consumer(settings, auto_offset_reset="earliest", max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    try:
        await assign_all_partitions(consumer, topic)
        await consumer.seek_to_beginning()
        messages = readings = 0
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        while messages < expect_messages and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batches.values():
                for r in records:
                    messages += 1
                    try:
                        readings += len(parse_readings(r.value, r.key))
                    except InvalidRecord:
                        pass
        return readings, time.perf_counter() - started
    finally:
        await consumer.stop()


async def _read_since(consumer, topic: str, since_ms: int, timeout: float = 60.0) -> list:  # noqa: ANN001
    """Every record of ``topic`` with a Kafka timestamp from ``since_ms`` on, up to its end now."""
    parts = await assign_all_partitions(consumer, topic)
    starts = await consumer.offsets_for_times({tp: since_ms for tp in parts})
    ends = await consumer.end_offsets(parts)
    for tp in parts:
        start = starts.get(tp)
        consumer.seek(tp, start.offset if start is not None else ends[tp])
    pending = {tp for tp in parts if starts.get(tp) is not None and starts[tp].offset < ends[tp]}
    out = []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        batches = await consumer.getmany(*pending, timeout_ms=500)
        for tp, records in batches.items():
            out.extend(r for r in records if r.offset < ends[tp])
            if records and records[-1].offset + 1 >= ends[tp]:
                pending.discard(tp)
    return out


async def anomaly_latencies(settings: Settings, since_ms: int) -> list[float]:
    """Milliseconds from producing a reading (its message's Kafka timestamp) to its anomaly
    record's Kafka timestamp, for the anomalies of readings produced from ``since_ms`` on.

    The message's timestamp, not the reading's own: a batch's first reading is older than the
    message that carries it, and that wait is the device's, not the pipeline's.
    """

    consumer = kafka.consumer(settings)
    await consumer.start()
    try:
        produced: dict[tuple[str, int], int] = {}
        for r in await _read_since(consumer, settings.topic_readings, since_ms):
            try:
                batch = parse_readings(r.value, r.key)
            except InvalidRecord:
                continue
            for ts in batch.timestamps.tolist():
                produced[(batch.device_id, round(ts * 1000.0))] = r.timestamp
        out: list[float] = []
        for r in await _read_since(consumer, settings.topic_anomalies, since_ms):
            doc = json.loads(r.value)
            sent = produced.get((doc["device_id"], round(parse_timestamp(doc["timestamp"]) * 1000.0)))
            if sent is not None:
                out.append(float(r.timestamp - sent))
        return out
    finally:
        await consumer.stop()


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def wait_caught_up(settings: Settings, topics: list[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(pipeline_lags(settings, topics).values()):
            return True
        time.sleep(0.5)
    return False


def isolated(base: Settings, prefix: str, web_port: int) -> tuple[Settings, dict[str, str]]:
    """Settings for a worker of its own (a fresh app id: consumer groups and tables; fresh topics),
    and the environment that hands them to the worker process.

    The worker alarms by the z-rule: every reading is scored by both rules either way (the same
    cost), but the model rule raises nothing until the second global version publishes a
    threshold, later than a short run's latency phase may reach."""
    run = f"{prefix}-{uuid.uuid4().hex[:6]}"
    overrides = {
        "app_id": run,
        "alarm_rule": "zrule",
        "topic_readings": f"{run}-readings",
        "topic_anomalies": f"{run}-anomalies",
        "topic_local_updates": f"{run}-local",
        "topic_global_updates": f"{run}-global",
        "topic_dead_letter": f"{run}-dead",
        "web_port": web_port,
    }
    return replace(base, **overrides), setting_env(**overrides)


#: how far (in messages) the simulator may run ahead of the worker while throughput is measured
BACKLOG_MESSAGES = 4_000
#: the pipeline rate is the median of the rates over windows of about this many seconds
WINDOW_S = 5.0
#: the ceiling is the median of this many passes of the bare consumer
CEILING_PASSES = 3
#: latency is measured at this share of the measured throughput (paced production costs the
#: worker more per reading than a backlog does: smaller fetches, produce requests and inserts)
LATENCY_LOAD = 0.5
#: pause between draining the backlog and the latency phase, for the sink and FedAvg to settle
SETTLE_S = 5.0


def processed(*workers: WorkerProcess) -> int:
    """Readings the workers' detectors have processed, together."""
    return sum(int(w.stats()["detector"].get("readings", 0)) for w in workers)


def wait_processed(workers: WorkerProcess | list[WorkerProcess], readings: int, timeout: float) -> bool:
    group = workers if isinstance(workers, list) else [workers]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if processed(*group) >= readings:
            return True
        time.sleep(0.2)
    return False


def measure_pipeline(
    workers: WorkerProcess | list[WorkerProcess], settings: Settings, devices: int, batch: int, duration: float
):  # noqa: ANN201
    """Readings/s through the worker while the simulator keeps it supplied for ``duration`` s.

    The simulator runs alongside the worker, held at most ``BACKLOG_MESSAGES`` ahead, so the
    worker always has work and the topic never holds more than a few seconds of backlog. The
    rate is counted from the worker's first processed reading to the end of production.
    """
    from flead_app.simulate import SimOptions, simulate

    group = workers if isinstance(workers, list) else [workers]
    backlog = BACKLOG_MESSAGES * batch * len(group)
    first: list[tuple[float, int]] = []
    samples: list[tuple[float, int]] = []

    async def hold(sent: int) -> None:
        while True:
            done = await asyncio.to_thread(processed, *group)
            now = time.perf_counter()
            if done and not first:
                first.append((now, done))
            if first and (not samples or now - samples[-1][0] >= WINDOW_S):
                samples.append((now, done))
            if sent - done <= backlog:
                return
            await asyncio.sleep(0.05)

    who = "worker" if len(group) == 1 else f"{len(group)} workers"
    print(f"  {devices:,} devices, batch {batch}: simulator and {who} together for {duration:.0f} s", flush=True)
    opts = SimOptions(devices=devices, rate=0, batch=batch, seconds=duration, seed=1, hold=hold)
    summary = asyncio.run(simulate(settings, opts, progress=None))
    end, done = time.perf_counter(), processed(*group)
    if not first:
        return 0.0, 0.0, summary
    samples.append((end, done))
    windows = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(samples, samples[1:], strict=False) if b[0] > a[0]]
    elapsed = end - first[0][0]
    return (statistics.median(windows) if windows else 0.0), elapsed, summary


def faust_ceiling(settings: Settings, env: dict[str, str], messages: int, timeout: float = 600.0) -> float:
    """The second ceiling: messages/s of a bare Faust agent (``flead_app.bench_ceiling``) that
    reads the same topic from the start and does nothing with its events."""
    port = settings.web_port + 1
    ceiling_settings = replace(settings, web_port=port)
    worker = WorkerProcess(
        ceiling_settings, {**env, **setting_env(web_port=port)}, "bench-faust-ceiling",
        app="flead_app.bench_ceiling", ready_path="/ceiling/",
    )  # fmt: skip
    worker.start()
    try:
        deadline = time.monotonic() + timeout
        doc = fetch_json(worker.url + "/ceiling/")
        while doc["events"] < messages and time.monotonic() < deadline:
            time.sleep(0.2)
            doc = fetch_json(worker.url + "/ceiling/")
    finally:
        worker.stop()
    return doc["events"] / doc["seconds"] if doc["seconds"] else 0.0


#: the FedAvg ceiling is measured on at least this many local updates (``--fedavg-updates``)
FEDAVG_CEILING_UPDATES = 20_000


async def copy_updates(settings: Settings, source: str, target: str, at_least: int) -> int:
    """Fill ``target`` with the local updates of ``source``, repeated until there are
    ``at_least``; each copy gets model versions of its own, so FedAvg takes none for a redelivery."""
    from flead_app.models import LocalModelUpdate

    consumer = kafka.consumer(settings)
    await consumer.start()
    try:
        records = await _read_since(consumer, source, 0)
    finally:
        await consumer.stop()
    originals = [(r.key, LocalModelUpdate.from_json(r.value)) for r in records]
    if not originals:
        return 0
    producer = kafka.producer(settings, linger_ms=20)
    await producer.start()
    sent = 0
    try:
        for copy in range(-(-at_least // len(originals))):
            for key, update in originals:
                again = replace(update, model_version=update.model_version + copy * 1_000_000)
                await producer.send(target, key=key, value=again.to_json())
                sent += 1
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def fedavg_ceiling(
    base: Settings, source: Settings, at_least: int = FEDAVG_CEILING_UPDATES, role: str = "fedavg"
) -> tuple[int, float]:  # fmt: skip
    """FedAvg's rate: (updates, updates/s) of a fresh worker whose local-updates topic is full of
    copies of ``source``'s local updates and whose readings topic is empty. ``role`` ``fedavg``
    runs FedAvg alone (its own ceiling); ``all`` runs it beside the sink, which stores every one of
    those updates in PostgreSQL from the same process, as a one-cluster worker does."""
    settings, env = isolated(base, f"bench-fedavg-{role}", base.web_port + 9)
    settings, env = replace(settings, role=role), {**env, **setting_env(role=role)}
    asyncio.run(kafka.create_topics(settings, settings.pipeline_topics))
    updates = asyncio.run(copy_updates(settings, source.topic_local_updates, settings.topic_local_updates, at_least))
    if not updates:
        return 0, 0.0
    worker = WorkerProcess(settings, env=env, name="bench-fedavg").start()
    try:
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            fed = worker.stats().get("fedavg", {})
            done = int(fed.get("updates", 0)) + int(fed.get("duplicates_skipped", 0))
            if done:
                samples.append((time.perf_counter(), done))
            if done >= updates:
                break
            time.sleep(0.1)
    finally:
        worker.stop()
    if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
        return updates, 0.0
    (t0, n0), (t1, n1) = samples[0], samples[-1]
    return updates, (n1 - n0) / (t1 - t0)


def bench_workers(base: Settings, devices: int, batch: int, duration: float, count: int = 2) -> BenchResult:
    """``count`` workers of one app on one topic (partitions split between them): their combined rate."""
    settings, _ = isolated(base, "bench-scale", base.web_port + 11)
    asyncio.run(kafka.create_topics(settings, settings.pipeline_topics))
    workers = []
    for i in range(count):
        port = settings.web_port + 2 * i
        env = setting_env(
            app_id=settings.app_id, web_port=port, topic_readings=settings.topic_readings,
            topic_anomalies=settings.topic_anomalies, topic_local_updates=settings.topic_local_updates,
            topic_global_updates=settings.topic_global_updates, topic_dead_letter=settings.topic_dead_letter,
        )  # fmt: skip
        workers.append(WorkerProcess(replace(settings, web_port=port), env=env, name=f"bench-scale-{i}"))
    notes: list[str] = []
    try:
        for w in workers:
            w.start()
        time.sleep(SETTLE_S)  # the last worker's join rebalances the others
        rate, elapsed, summary = measure_pipeline(workers, settings, devices, batch, duration)
        print(f"  {count} workers: {rate:,.0f} readings/s together over {elapsed:.0f} s", flush=True)
        if not wait_processed(workers, summary.readings, max(300.0, duration * 5)):
            notes.append("the workers did not process every reading within the drain timeout")
        per_worker = [int(w.stats()["detector"].get("readings", 0)) for w in workers]
        rss = [peak_rss_mb(w.proc.pid) for w in workers if w.proc]
    finally:
        for w in workers:
            w.stop()
    result = _failed(devices, batch)
    return replace(
        result,
        readings=summary.readings,
        messages=summary.messages,
        produce_seconds=round(summary.seconds, 2),
        pipeline_readings_per_s=round(rate, 1),
        worker_peak_rss_mb=max((r for r in rss if r), default=None),
        workers=count,
        readings_per_worker=per_worker,
        notes=notes,
    )


def bench_one(
    base: Settings, devices: int, batch: int, duration: float, latency_s: float, latency_load: float = LATENCY_LOAD
) -> tuple[BenchResult, Settings]:
    """One fleet size and message shape, on fresh topics and a fresh worker; the result and the
    run's settings (its topics stay for the FedAvg ceiling)."""
    from flead_app.simulate import SimOptions, simulate

    settings, env = isolated(base, "bench", base.web_port + 7)
    notes: list[str] = []
    asyncio.run(kafka.create_topics(settings, settings.pipeline_topics))
    worker = WorkerProcess(settings, env=env, name=f"bench-{devices}-{batch}")
    worker.start()
    try:
        pipeline, elapsed, summary = measure_pipeline(worker, settings, devices, batch, duration)
        produced = summary.readings
        print(f"  pipeline: {pipeline:,.0f} readings/s over {elapsed:.0f} s ({produced:,} readings)", flush=True)
        if not wait_processed(worker, produced, max(300.0, duration * 5)):
            notes.append("the worker did not process every reading within the drain timeout")
        topics = [settings.topic_readings, settings.topic_local_updates, settings.topic_anomalies]
        if not wait_caught_up(settings, topics, 300):
            notes.append("the worker did not reach zero lag on every topic within 300 s")
        stats = worker.stats()
        local = stats["detector"].get("local_updates", 0)
        # models per reading, at the measured reading rate
        models_per_minute = local / produced * pipeline * 60.0 if produced else 0.0

        # steady state at a share of the measured rate, then production -> anomaly record latency
        time.sleep(SETTLE_S)
        since_ms = int(time.time() * 1000)
        latency_rate = max(pipeline * latency_load, 100.0)
        # the same seed: the same devices with the same behaviour (another seed gives every device
        # new levels, and a detector that knows the old ones flags most readings as anomalies)
        steady = SimOptions(devices=devices, rate=latency_rate * 60.0, batch=batch, seconds=latency_s, seed=1)
        steady_summary = asyncio.run(simulate(settings, steady, progress=None))
        wait_processed(worker, produced + steady_summary.readings, 120)
        wait_caught_up(settings, [settings.topic_readings, settings.topic_anomalies], 120)
        lat = asyncio.run(anomaly_latencies(settings, since_ms))
        stats = worker.stats()
        rss = peak_rss_mb(worker.proc.pid) if worker.proc else None
    finally:
        worker.stop()

    messages = summary.messages + steady_summary.messages
    passes = [asyncio.run(bare_consume(settings, settings.topic_readings, messages)) for _ in range(CEILING_PASSES)]
    readings = passes[0][0]
    ceiling = statistics.median(r / sec if sec else 0.0 for r, sec in passes)
    print(f"  ceiling (bare aiokafka consumer + decode, {readings:,} readings): {ceiling:,.0f} readings/s")
    print(f"  ratio: {pipeline / ceiling if ceiling else 0:.1%} of the ceiling", flush=True)
    per_message = readings / messages if messages else 1.0
    faust_rate = faust_ceiling(settings, env, messages) * per_message
    faust_ratio = round(pipeline / faust_rate, 3) if faust_rate else None
    print(f"  Faust ceiling (a bare agent over the same messages): {faust_rate:,.0f} readings/s; ratio {faust_ratio}")
    det, fed = stats.get("detector", {}), stats.get("fedavg", {})
    aggregations = fed.get("global_models", 0)
    fed_ms = fed.get("aggregate_seconds_total")
    result = BenchResult(
        devices=devices,
        batch=batch,
        readings=summary.readings,
        messages=summary.messages,
        produce_seconds=round(summary.seconds, 2),
        ceiling_readings_per_s=round(ceiling, 1),
        pipeline_readings_per_s=round(pipeline, 1),
        ratio_to_ceiling=round(pipeline / ceiling, 3) if ceiling else 0.0,
        faust_ceiling_readings_per_s=round(faust_rate, 1),
        ratio_to_faust_ceiling=faust_ratio,
        local_models=local,
        local_models_per_minute=round(models_per_minute, 1),
        global_models=aggregations,
        anomalies=det.get("anomalies", 0),
        latency_rate_per_s=round(latency_rate, 1),
        anomaly_latency_ms_p50=percentile(lat, 50),
        anomaly_latency_ms_p99=percentile(lat, 99),
        latency_samples=len(lat),
        fedavg_ms_per_aggregation=(1000.0 * fed_ms / aggregations) if fed_ms and aggregations else None,
        worker_peak_rss_mb=round(rss, 1) if rss else None,
        notes=notes,
    )
    return result, settings


#: the issue's per-worker goal, readings/s in messages of 50: FedAvg's headroom is quoted against
#: the local-update rate this many readings/s produce
TARGET_READINGS_PER_S = 50_000


def machine() -> dict:
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "load_average": os.getloadavg(),
    }


def format_table(results: list[BenchResult]) -> str:
    head = (
        f"{'devices':>8} {'batch':>5} {'workers':>7} {'readings':>10} {'ceiling/s':>10} {'faust/s':>9} "
        f"{'pipeline/s':>10} {'ratio':>6} {'faust':>6} "
        f"{'models/min':>10} {'lat at /s':>9} {'lat p50 ms':>10} {'lat p99 ms':>10} {'fedavg ms':>9} {'peak MB':>8}"
    )
    lines = [head, "-" * len(head)]

    def f(v, spec):  # noqa: ANN001, ANN202
        return "-" if v is None else format(v, spec)

    for r in results:
        lines.append(
            f"{r.devices:>8,} {r.batch:>5} {r.workers:>7} {r.readings:>10,} {r.ceiling_readings_per_s:>10,.0f} "
            f"{f(r.faust_ceiling_readings_per_s, '>9,.0f')} {r.pipeline_readings_per_s:>10,.0f} "
            f"{r.ratio_to_ceiling:>6.2f} {f(r.ratio_to_faust_ceiling, '>6.2f')} {r.local_models_per_minute:>10,.0f} "
            f"{r.latency_rate_per_s:>9,.0f} "
            f"{f(r.anomaly_latency_ms_p50, '>10.0f')} {f(r.anomaly_latency_ms_p99, '>10.0f')} "
            f"{f(r.fedavg_ms_per_aggregation, '>9.2f')} {f(r.worker_peak_rss_mb, '>8.0f')}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    base = load_settings()
    sizes = args.devices or list(DEFAULT_SIZES)
    plan = ([] if args.no_single else [(sizes[0], 1)]) + [(n, args.batch) for n in sizes]
    extra = "" if args.no_scale_out else ", two workers together, FedAvg's ceiling"
    print(f"flead bench on {base.kafka_bootstrap}: {len(plan)} runs of {args.duration:.0f} s{extra}", flush=True)
    results: list[BenchResult] = []
    batched_run: tuple[BenchResult, Settings] | None = None
    for devices, batch in plan:
        print(f"- {devices:,} devices, {batch} reading(s) per message", flush=True)
        try:
            result, settings = bench_one(base, devices, batch, args.duration, args.latency_seconds, args.latency_load)
            if batch > 1 and batched_run is None:
                batched_run = (result, settings)
        except Exception as err:  # keep the other sizes
            print(f"  failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            result = replace(_failed(devices, batch), notes=[f"{type(err).__name__}: {err}"])
        results.append(result)
    fedavg = None
    if not args.no_scale_out:
        print(f"- {sizes[0]:,} devices, {args.batch} readings per message, two workers", flush=True)
        try:
            results.append(bench_workers(base, sizes[0], args.batch, args.duration))
        except Exception as err:
            print(f"  failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        if batched_run is not None:
            fedavg = fedavg_summary(base, *batched_run, args.fedavg_updates)
    print()
    print(format_table(results))
    if fedavg:
        print(
            f"\nFedAvg alone: {fedavg['updates_per_s']:,.0f} updates/s over {fedavg['updates']:,} updates "
            f"({fedavg['updates_per_s_full_worker']:,.0f} in a full worker beside the sink); "
            f"{TARGET_READINGS_PER_S:,} readings/s make {fedavg['local_updates_per_s_at_target']:,.1f} updates/s: "
            f"headroom {fedavg['headroom_at_target']:,.1f}x"
        )
    doc = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "broker": base.kafka_bootstrap,
        "duration_s": args.duration,
        "results": [asdict(r) for r in results],
        "median_ratio_to_ceiling": statistics.median([r.ratio_to_ceiling for r in results if r.workers == 1])
        if results
        else None,
        "fedavg": fedavg,
    }
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(doc, indent=2))
        print(f"\nwritten to {args.json_path}")
    return 0 if all(not r.notes or r.pipeline_readings_per_s > 0 for r in results) else 1


def fedavg_summary(base: Settings, result: BenchResult, settings: Settings, at_least: int) -> dict | None:
    """FedAvg's ceiling on copies of ``result``'s local updates, next to the update rates the
    pipeline's readings make (at the measured rate and at the issue's goal)."""
    print(f"- FedAvg's ceiling on copies of the {result.devices:,}-device run's local updates", flush=True)
    try:
        updates, rate = fedavg_ceiling(base, settings, at_least, role="fedavg")
        print(f"  FedAvg alone: {rate:,.0f} updates/s over {updates:,} updates", flush=True)
        _, with_sink = fedavg_ceiling(base, settings, at_least, role="all")
        print(f"  FedAvg in a full worker (the sink storing the same updates beside it): {with_sink:,.0f} updates/s",
              flush=True)  # fmt: skip
    except Exception as err:
        print(f"  failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return None
    per_reading = result.local_models / result.readings if result.readings else 0.0
    at_target = per_reading * TARGET_READINGS_PER_S
    at_measured = per_reading * result.pipeline_readings_per_s
    return {
        "updates": updates,
        "updates_per_s": round(rate, 1),
        "updates_per_s_full_worker": round(with_sink, 1),
        "local_updates_per_reading": per_reading,
        "local_updates_per_s_at_target": round(at_target, 2),
        "headroom_at_target": float(f"{rate / at_target:.3g}") if at_target else None,
        "local_updates_per_s_measured": round(at_measured, 2),
        "headroom_at_measured": float(f"{rate / at_measured:.3g}") if at_measured else None,
    }


def _failed(devices: int, batch: int) -> BenchResult:
    zero = dict.fromkeys(("readings", "messages", "local_models", "global_models", "anomalies", "latency_samples"), 0)
    return BenchResult(
        devices, batch, produce_seconds=0.0, ceiling_readings_per_s=0.0, pipeline_readings_per_s=0.0,
        ratio_to_ceiling=0.0, faust_ceiling_readings_per_s=None, ratio_to_faust_ceiling=None,
        local_models_per_minute=0.0, latency_rate_per_s=0.0, anomaly_latency_ms_p50=None,
        anomaly_latency_ms_p99=None, fedavg_ms_per_aggregation=None, worker_peak_rss_mb=None, **zero,
    )  # fmt: skip
