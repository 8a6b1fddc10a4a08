"""``flead simulate``: the device fleet (or a CSV replay) producing readings to Kafka.

The readings come from ``flead_app.fleet`` (simulated sensors with labelled anomalies) or
``flead_app.replay`` (real labelled CSV); this module only paces, encodes and sends them.

Where a device's readings go (the one rule, also in docs/simulator.md and ``--help``): the
message key is the device id, so a device maps to a *partition* by Kafka's default
partitioner, ``murmur2(key) & 0x7fffffff % partitions`` (aiokafka's ``DefaultPartitioner``,
the same function as the Java client's). A partition lives on the broker that currently
leads it. So devices are spread over brokers through partitions; the description's
"device_id modulo 4" and "devices 0-599 on broker 1" are not how Kafka places keys, and the
simulator shows the real per-broker counts instead.

The send loop is the hot path: readings arrive as numpy arrays, timestamps are formatted in
one vectorised call, each message is one ``orjson.dumps``, and ``producer.send`` is awaited
only for buffer space (delivery is confirmed by callbacks and a final flush), never per message.
Pacing is a token bucket on the monotonic clock, so the rate does not drift with the cost of
each step.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import orjson

from flead_app.algorithms.sites import site_of
from flead_app.fleet import DEFAULT_ANOMALY_RATE, WARMUP_READINGS, Fleet, Readings, empty_readings, message_starts
from flead_app.models import encode_batch
from flead_app.settings import Settings, at_site, load_settings

PROGRESS_EVERY_S = 2.0
MAX_CHUNK_READINGS = 5_000  # readings generated, encoded and queued per step of the loop
BURST_S = 1.0  # the token bucket holds at most this many seconds of readings
TICK_S = 0.02  # a paced loop wakes at most every 20 ms (about 10 readings at the default rate)
METADATA_TIMEOUT_S = 10.0  # how long a missing topic is waited for

RULE = (
    "Device -> partition: Kafka's default partitioner on the key (the device id), "
    "murmur2(key) & 0x7fffffff % partitions. Partition -> broker: that partition's current "
    "leader. Per-broker counts give each reading to its partition's leader when it was sent "
    "(leaders re-read every ~2 s)."
)


# --- pure helpers ---------------------------------------------------------------------------


def format_timestamps(epoch_s: np.ndarray) -> list[str]:
    """Epoch seconds -> ISO 8601 UTC with milliseconds and ``Z``, as ``models.format_timestamp``.

    Like ``datetime.fromtimestamp``: round to microseconds, then cut (not round) to milliseconds.
    """
    us = np.round(np.asarray(epoch_s, dtype=np.float64) * 1e6).astype(np.int64)
    ms = (us // 1000).astype("datetime64[ms]")
    return np.datetime_as_string(ms, unit="ms", timezone="UTC").tolist()


def encode_messages(
    device_ids: list[str], readings: Readings, starts: np.ndarray, single: bool
) -> tuple[list[int], list[bytes]]:
    """Device index and wire bytes of every message (``starts`` = first reading of each).

    ``single`` emits each reading as ``Reading(...).to_json()`` (then every message must hold
    one reading); otherwise each message is ``encode_batch(...)`` of one device's readings.
    """
    n = len(readings)
    if n == 0:
        return [], []
    stamps = format_timestamps(readings.timestamp)
    values = readings.value.tolist()
    labels: list[int | None] = readings.label.tolist()
    if (readings.label < 0).any():
        labels = [None if lab < 0 else lab for lab in labels]
    devices = readings.device[starts].tolist()
    dumps = orjson.dumps
    if single:
        if starts.shape[0] != n:
            raise ValueError("single-reading messages need one reading per message")
        out = [
            dumps({"device_id": device_ids[d], "timestamp": t, "value": v, "label": lab})
            for d, t, v, lab in zip(devices, stamps, values, labels, strict=True)
        ]
        return devices, out
    bounds = starts.tolist() + [n]
    out = [
        encode_batch(device_ids[d], stamps[s:e], values[s:e], labels[s:e])
        for d, s, e in zip(devices, bounds[:-1], bounds[1:], strict=True)
    ]
    return devices, out


class TokenBucket:
    """Readings allowed so far at ``rate`` per second, holding at most ``capacity``.

    Tokens are computed from the elapsed monotonic time, not from how long we slept, so
    oversleeping or slow steps do not make the rate drift; the cap stops a long stall from
    turning into a huge burst.
    """

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate
        self.capacity = capacity
        self.tokens = 0.0
        self._last = now

    def available(self, now: float) -> float:
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now
        return self.tokens

    def consume(self, n: float) -> None:
        self.tokens -= n

    def wait_time(self, n: float, now: float) -> float:
        """Seconds until ``n`` tokens are available."""
        return max(0.0, (n - self.available(now)) / self.rate)


def partition_of(key: bytes, partitions: list[int]) -> int:
    """The partition Kafka's (and aiokafka's) default partitioner picks for this key."""
    from aiokafka.partitioner import DefaultPartitioner

    return DefaultPartitioner()(key, partitions, partitions)


# --- sources --------------------------------------------------------------------------------


class Source(Protocol):
    device_ids: list[str]

    def take(self, budget: int, now: float, exact: bool) -> tuple[Readings, np.ndarray]:
        """Up to ``budget`` readings in whole messages (exactly ``budget`` if ``exact``)."""
        ...


class FleetSource:
    """Simulated devices, taking turns; each message is ``batch`` readings of one device.

    ``devices``: the indices of the devices this run sends (a site's share of the fleet); the
    whole fleet by default. The others exist (the fleet is the same whatever the share, so a
    device behaves alike at every site count) but send nothing.
    """

    def __init__(self, fleet: Fleet, batch: int, interval_s: float, devices: np.ndarray | None = None) -> None:
        self.fleet = fleet
        self.batch = batch
        self.interval_s = interval_s
        self.device_ids = fleet.device_ids
        self.order = np.arange(fleet.n_devices) if devices is None else np.asarray(devices, np.int64)
        self._next = 0

    def round_robin(self, m: int) -> np.ndarray:
        """The next ``m`` (at most all) distinct devices of this run, in cyclic order."""
        n = len(self.order)
        m = min(m, n)
        idx = self.order[(self._next + np.arange(m)) % n]
        self._next = (self._next + m) % n
        return idx

    def take(self, budget: int, now: float, exact: bool) -> tuple[Readings, np.ndarray]:
        full, rem = divmod(budget, self.batch)
        if not exact:
            rem = 0
        parts: list[Readings] = []
        while full > 0:
            devices = self.round_robin(full)
            parts.append(self.fleet.next_readings(devices, now, self.batch, self.interval_s))
            full -= devices.shape[0]
        if rem:
            parts.append(self.fleet.next_readings(self.round_robin(1), now, rem, self.interval_s))
        if not parts:
            return empty_readings(), np.empty(0, np.int64)
        readings = parts[0] if len(parts) == 1 else _concat(parts)
        return readings, message_starts(readings.device, self.batch)


class ReplaySource:
    """Rows of a CSV replay in their send order (see ``ReplayData.schedule``)."""

    def __init__(self, data: Any, batch: int, devices: np.ndarray | None = None) -> None:
        self.data = data
        self.device_ids = data.device_ids
        self.readings, self.starts = data.schedule(batch)
        if devices is not None:  # a site's share: whole messages of its devices, in the same order
            r, keep = self.readings, np.isin(self.readings.device, devices)
            new_index = np.cumsum(keep) - 1
            self.starts = new_index[self.starts[keep[self.starts]]]
            self.readings = Readings(r.device[keep], r.timestamp[keep], r.value[keep], r.label[keep], r.kind[keep])
        self._bounds = np.append(self.starts, len(self.readings))
        self.pos = 0

    def take(self, budget: int, now: float, exact: bool) -> tuple[Readings, np.ndarray]:
        total = len(self.readings)
        limit = min(self.pos + budget, total)
        if exact:
            end = limit
        else:
            end = int(self._bounds[np.searchsorted(self._bounds, limit, side="right") - 1])
        if end <= self.pos:
            return empty_readings(), np.empty(0, np.int64)
        r = self.readings
        sl = slice(self.pos, end)
        chunk = Readings(r.device[sl], r.timestamp[sl], r.value[sl], r.label[sl], r.kind[sl])
        lo, hi = np.searchsorted(self.starts, [self.pos, end])
        starts = self.starts[lo:hi] - self.pos
        self.pos = end
        return chunk, starts


def _concat(parts: list[Readings]) -> Readings:
    return Readings(*(np.concatenate([getattr(p, f) for p in parts]) for f in Readings.__dataclass_fields__))


# --- the run --------------------------------------------------------------------------------


@dataclass
class SimOptions:
    devices: int
    rate: float  # readings per minute; 0 = as fast as possible
    batch: int
    seed: int = 0
    seconds: float | None = None
    count: int | None = None
    csv: str | None = None
    skip_bad: bool = False
    anomaly_rate: float = DEFAULT_ANOMALY_RATE
    warmup: int = WARMUP_READINGS  # normal readings per device before the first anomaly
    topic: str | None = None
    bootstrap: list[str] | None = None
    #: (site, sites): send only the devices of this site (``site_of``), at their share of the rate
    site: tuple[int, int] | None = None
    progress_every_s: float = PROGRESS_EVERY_S
    metadata_timeout_s: float = METADATA_TIMEOUT_S
    #: backpressure: awaited before each chunk with the readings sent so far (``flead bench``
    #: holds the simulator while the worker's backlog is large); None sends without pause
    hold: Callable[[int], Awaitable[None]] | None = None


@dataclass
class Summary:
    topic: str
    partitions: int
    source: str
    devices: int
    batch: int
    readings: int = 0
    messages: int = 0
    bytes: int = 0  # keys + values
    acked_messages: int = 0
    failed_messages: int = 0
    first_error: str = ""
    seconds: float = 0.0
    target_rate_per_s: float = 0.0
    anomaly_readings: int = 0
    anomalies_by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    per_broker: dict[str, dict[str, int]] = field(default_factory=dict)
    per_partition: dict[str, int] = field(default_factory=dict)
    stopped_by: str = ""
    skipped_rows: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    @property
    def rate_per_s(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate_per_s": round(self.rate_per_s, 1), "rule": RULE}


class _Tally:
    """What was sent where: per broker (leader at send time), per partition, per device; and acks."""

    def __init__(self, n_devices: int, partitions: list[int]) -> None:
        self.partitions = partitions
        self.part_readings = np.zeros(max(partitions) + 1, np.int64)
        self.part_messages = np.zeros(max(partitions) + 1, np.int64)
        self.broker_readings: dict[Any, int] = {}
        self.broker_messages: dict[Any, int] = {}
        self.devices_sent = np.zeros(n_devices, bool)
        self.readings = 0
        self.messages = 0
        self.bytes = 0
        self.anomaly_readings = 0
        self.acked = 0
        self.failed = 0
        self.first_error = ""

    def delivered(self, fut: asyncio.Future) -> None:
        """Done-callback of every send future."""
        if not fut.cancelled() and fut.exception() is None:
            self.acked += 1
            return
        self.failed += 1
        if not self.first_error:
            exc = asyncio.CancelledError() if fut.cancelled() else fut.exception()
            self.first_error = f"{type(exc).__name__}: {exc}"

    def add_chunk(self, readings: Readings, starts: np.ndarray, sizes: np.ndarray, part: np.ndarray) -> None:
        """Count a chunk whose messages went to partitions ``part`` (one per message)."""
        np.add.at(self.part_readings, part, sizes)
        np.add.at(self.part_messages, part, 1)
        self.devices_sent[readings.device[starts]] = True
        self.readings += len(readings)
        self.messages += starts.shape[0]
        self.anomaly_readings += int((readings.label == 1).sum())

    def add_leaders(self, leader: dict[int, Any], since: tuple[np.ndarray, np.ndarray]) -> None:
        """Attribute partition counts accumulated since the last call to the current leaders."""
        readings, messages = self.part_readings - since[0], self.part_messages - since[1]
        for p in self.partitions:
            node = leader.get(p)
            self.broker_readings[node] = self.broker_readings.get(node, 0) + int(readings[p])
            self.broker_messages[node] = self.broker_messages.get(node, 0) + int(messages[p])

    def per_broker(self, leader: dict[int, Any], part_of: np.ndarray) -> dict[str, dict[str, int]]:
        devices: dict[Any, int] = {}
        for p in part_of[self.devices_sent].tolist():
            devices[leader.get(p)] = devices.get(leader.get(p), 0) + 1
        nodes = sorted(set(self.broker_readings) | set(devices), key=str)
        return {
            _broker_label(b): {
                "readings": self.broker_readings.get(b, 0),
                "messages": self.broker_messages.get(b, 0),
                "devices": devices.get(b, 0),
                "partitions": sum(1 for p in self.partitions if leader.get(p) == b),
            }
            for b in nodes
            if self.broker_readings.get(b, 0) or devices.get(b, 0)
        }


def site_devices(device_ids: list[str], site: tuple[int, int] | None) -> np.ndarray | None:
    """Indices of the devices of ``site`` = (k, sites) by ``site_of``; None: every device."""
    if site is None:
        return None
    k, sites = site
    return np.array([i for i, d in enumerate(device_ids) if site_of(d, sites) == k], np.int64)


def _make_source(opts: SimOptions) -> tuple[Source, Fleet | None, Any]:
    if opts.csv:
        from flead_app.replay import load_csv

        data = load_csv(opts.csv, skip_bad=opts.skip_bad)
        if len(data) == 0:
            raise ValueError(f"{opts.csv} holds no readings")
        return ReplaySource(data, opts.batch, site_devices(data.device_ids, opts.site)), None, data
    fleet = Fleet(opts.devices, seed=opts.seed, anomaly_rate=opts.anomaly_rate, warmup=opts.warmup)
    per_device_s = opts.devices * 60.0 / opts.rate if opts.rate > 0 else 0.001
    devices = site_devices(fleet.device_ids, opts.site)
    return FleetSource(fleet, opts.batch, per_device_s, devices), fleet, None


def _broker_label(node: Any) -> str:
    return f"broker {node}" if node is not None and node != -1 else "no leader"


def progress_line(elapsed: float, tally: _Tally, target_per_s: float) -> str:
    by_broker = sorted(tally.broker_readings.items(), key=lambda x: str(x[0]))
    brokers = "  ".join(f"{_broker_label(b)}: {n:,}" for b, n in by_broker if n)
    target = f"target {target_per_s:,.0f}/s" if target_per_s else "as fast as possible"
    return (
        f"[{elapsed:6.1f}s] sent {tally.readings:,} readings ({tally.messages:,} msgs) at "
        f"{tally.readings / max(elapsed, 1e-9):,.0f}/s ({target}), acked {tally.acked:,} msgs | {brokers}"
    )


async def _topic_partitions(producer: Any, topic: str, timeout: float) -> list[int]:
    """The topic's partitions, or [] if it does not show up in the cluster metadata in time.

    Asks for the whole cluster's metadata (one request per try) rather than waiting in
    ``partitions_for``, which logs an error every 100 ms while a topic is missing.
    """
    deadline = time.monotonic() + timeout
    while True:
        cluster = await producer.client.fetch_all_metadata()
        parts = cluster.partitions_for_topic(topic)
        if parts:
            await producer.partitions_for(topic)  # now known: the producer tracks it from here
            return sorted(parts)
        if time.monotonic() >= deadline:
            return []
        await asyncio.sleep(0.5)


async def simulate(
    settings: Settings, opts: SimOptions, progress: IO[str] | None = sys.stderr, stop: asyncio.Event | None = None
) -> Summary:
    """Produce readings until ``--count``/``--seconds``/the end of the CSV/``stop``; return the summary."""
    from aiokafka.errors import KafkaError

    from flead_app.io import kafka

    if opts.batch < 1:
        raise ValueError("--batch must be at least 1")
    if opts.rate < 0:
        raise ValueError("--rate must be >= 0 (0 = as fast as possible)")
    source, fleet, data = _make_source(opts)
    sending = len(source.order) if isinstance(source, FleetSource) else len(np.unique(source.readings.device))
    if opts.site is not None:
        if not sending:
            raise ValueError(f"no device of the fleet belongs to site {opts.site[0]} of {opts.site[1]}")
        # the fleet's rate is for all its devices: a site sends its share of it
        opts = replace(opts, rate=opts.rate * sending / max(1, len(source.device_ids)))
    topic = opts.topic or settings.topic_readings
    bootstrap = opts.bootstrap or settings.bootstrap_servers
    stop = stop or asyncio.Event()
    where = f", site {opts.site[0]} of {opts.site[1]} (site_of: crc32(device_id) % sites + 1)" if opts.site else ""
    summary = Summary(
        topic=topic,
        partitions=0,
        source=(f"csv {opts.csv}" if opts.csv else f"simulated fleet (seed {opts.seed})") + where,
        devices=sending,
        batch=opts.batch,
        target_rate_per_s=opts.rate / 60.0,
        skipped_rows=data.skipped if data is not None else 0,
        skipped_examples=data.skipped_examples if data is not None else [],
    )
    producer = kafka.producer(
        settings, bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=131072, client_id="flead-simulate"
    )
    await kafka.start_client(producer, replace(settings, kafka_bootstrap=",".join(bootstrap)))
    try:
        partitions = await _topic_partitions(producer, topic, opts.metadata_timeout_s)
        if not partitions:
            raise RuntimeError(
                f"topic {topic!r} does not exist at {','.join(bootstrap)}; "
                "`flead stack up` creates it (auto-creation is off)"
            )
        summary.partitions = len(partitions)

        def leaders() -> dict[int, int]:
            return kafka.leaders_from_metadata(producer.client.cluster, topic)

        keys = [d.encode() for d in source.device_ids]
        part_of = np.array([partition_of(k, partitions) for k in keys], np.int64)
        tally = _Tally(len(keys), partitions)
        single = opts.batch == 1
        started = time.monotonic()
        deadline = started + opts.seconds if opts.seconds else math.inf
        bucket = None
        if opts.rate:
            per_s = opts.rate / 60.0
            bucket = TokenBucket(per_s, max(opts.batch, per_s * BURST_S), started)
        leader = leaders()
        counted = (tally.part_readings.copy(), tally.part_messages.copy())
        next_progress = started + opts.progress_every_s
        send, delivered = producer.send, tally.delivered
        while True:
            now_m = time.monotonic()
            if now_m >= next_progress:  # attribute counts to the leaders, refresh them, report
                tally.add_leaders(leader, counted)
                counted = (tally.part_readings.copy(), tally.part_messages.copy())
                leader = leaders()
                next_progress = now_m + opts.progress_every_s
                if progress is not None:
                    print(progress_line(now_m - started, tally, summary.target_rate_per_s), file=progress, flush=True)
            if stop.is_set():
                summary.stopped_by = "signal"
                break
            if now_m >= deadline:
                summary.stopped_by = "--seconds"
                break
            remaining = opts.count - tally.readings if opts.count else MAX_CHUNK_READINGS
            if remaining <= 0:
                summary.stopped_by = "--count"
                break
            budget = min(MAX_CHUNK_READINGS, remaining)
            if opts.hold is not None:
                await opts.hold(tally.readings)
                if time.monotonic() >= deadline or stop.is_set():
                    continue  # the checks above end the loop
            if bucket is not None:
                need = min(opts.batch, remaining)
                avail = bucket.available(now_m)
                if avail < need:
                    # sleep at least a tick so that each step sends several messages, not one
                    # (and at most 0.25 s, so that slow rates still notice Ctrl-C and the deadline)
                    pause = min(max(bucket.wait_time(need, now_m), TICK_S), 0.25, max(deadline - now_m, 0.0))
                    await asyncio.sleep(pause)
                    continue
                budget = min(budget, int(avail))
            exact = bool(opts.count) and budget == remaining
            readings, starts = source.take(budget, time.time(), exact)
            if len(readings) == 0:
                summary.stopped_by = "end of CSV"
                break
            if bucket is not None:
                bucket.consume(len(readings))
            devices, values = encode_messages(source.device_ids, readings, starts, single)
            sizes = np.diff(np.append(starts, len(readings)))
            part = part_of[readings.device[starts]]
            handed = 0
            try:
                for d, value, p in zip(devices, values, part.tolist(), strict=True):
                    fut = await send(topic, value, key=keys[d], partition=p)
                    fut.add_done_callback(delivered)
                    tally.bytes += len(value) + len(keys[d])
                    handed += 1
            except KafkaError as err:  # e.g. no broker took the data within request_timeout_ms
                summary.stopped_by = f"error: {type(err).__name__}: {err}"
                if handed:  # the messages before the failed one are the producer's: they count as sent
                    cut = int(starts[handed]) if handed < starts.shape[0] else len(readings)
                    head = Readings(*(getattr(readings, f)[:cut] for f in Readings.__dataclass_fields__))
                    tally.add_chunk(head, starts[:handed], sizes[:handed], part[:handed])
                break
            tally.add_chunk(readings, starts, sizes, part)
            await asyncio.sleep(0)  # let the sender drain between chunks
        try:
            await producer.flush()
        except KafkaError as err:
            summary.stopped_by += f"; flush failed: {type(err).__name__}: {err}"
        await asyncio.sleep(0)  # run the last delivery callbacks
        summary.seconds = time.monotonic() - started
        tally.add_leaders(leader, counted)
        leader = leaders()
        summary.per_broker = tally.per_broker(leader, part_of)
        summary.per_partition = {str(p): int(tally.part_readings[p]) for p in partitions}
    finally:
        await producer.stop()
    summary.readings, summary.messages, summary.bytes = tally.readings, tally.messages, tally.bytes
    summary.acked_messages, summary.failed_messages, summary.first_error = tally.acked, tally.failed, tally.first_error
    summary.anomaly_readings = tally.anomaly_readings
    if fleet is not None:
        summary.anomalies_by_kind = fleet.injected()
    return summary


def format_summary(s: Summary) -> str:
    pct = 100.0 * s.anomaly_readings / s.readings if s.readings else 0.0
    lines = [
        f"flead simulate: {s.readings:,} readings in {s.messages:,} messages, {s.bytes:,} bytes (keys+values), "
        f"{s.seconds:.1f} s, {s.rate_per_s:,.0f} readings/s"
        + (f" (target {s.target_rate_per_s:,.0f}/s)" if s.target_rate_per_s else " (as fast as possible)")
        + f"; stopped by {s.stopped_by}",
        f"  source: {s.source}, {s.devices:,} devices, batch {s.batch}; topic {s.topic} ({s.partitions} partitions)",
        f"  delivery: {s.acked_messages:,} messages acknowledged (acks=all), {s.failed_messages:,} failed"
        + (f" - first error: {s.first_error}" if s.first_error else ""),
        f"  anomalies: {s.anomaly_readings:,} readings labelled 1 ({pct:.2f}%)"
        + (", by injected kind:" if s.anomalies_by_kind else " (labels from the CSV)"),
    ]
    for kind, c in s.anomalies_by_kind.items():
        lines.append(f"    {kind:<12} {c['episodes']:>7,} episodes {c['readings']:>9,} readings")
    if s.skipped_rows:
        lines.append(f"  skipped bad CSV rows: {s.skipped_rows:,}, the first:")
        lines += [f"    {example}" for example in s.skipped_examples]
    lines.append("  per broker (leader of the device's partition):")
    for broker, c in s.per_broker.items():
        lines.append(
            f"    {broker:<10} {c['readings']:>10,} readings {c['messages']:>10,} messages "
            f"{c['devices']:>6,} devices  leads {c['partitions']} partition(s)"
        )
    lines += textwrap.wrap(RULE, 100, initial_indent="  rule: ", subsequent_indent="    ")
    return "\n".join(lines)


# --- CLI ------------------------------------------------------------------------------------


HELP_EPILOG = """\
where readings go:
  device -> partition: the key is the device id; Kafka's default partitioner picks
    murmur2(key) & 0x7fffffff % partitions (aiokafka's DefaultPartitioner is the same).
  partition -> broker: the broker that currently leads that partition.
  The progress lines and the summary count readings per broker by that rule (not by
  "device_id modulo 4", which is not how Kafka places keys).

examples:
  flead simulate --seconds 60                    # 2,407 devices at 31,482 readings/minute
  flead simulate --count 100000 --rate 0 --batch 10
  flead simulate --csv data/nab/nab_realknowncause.csv.gz --rate 0
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    d = Settings()
    p = subparsers.add_parser(
        "simulate",
        help="run the device fleet (or replay a CSV) into Kafka",
        description="Produce sensor readings to the readings topic, keyed by device id: a simulated fleet "
        "with labelled, injected anomalies, or a replay of labelled CSV data. Runs until --seconds, "
        "--count, the end of the CSV, or Ctrl-C; prints progress to stderr every ~2 s and a summary.",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--devices", type=int, default=None, help=f"fleet size (default FLEAD_DEVICES, {d.devices})")
    p.add_argument(
        "--rate", type=float, default=None,
        help="readings per minute over the whole fleet, 0 = as fast as possible "
        f"(default FLEAD_READINGS_PER_MINUTE, {d.readings_per_minute})",
    )  # fmt: skip
    until = p.add_mutually_exclusive_group()
    until.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    until.add_argument("--count", type=int, default=None, help="stop after this many readings")
    p.add_argument(
        "--batch", type=int, default=None,
        help=f"readings of one device per message, 1 = single readings (default FLEAD_BATCH_SIZE, {d.batch_size})",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="fleet seed: sensors and anomalies follow from it (default 0)")
    p.add_argument(
        "--anomaly-rate", type=float, default=DEFAULT_ANOMALY_RATE,
        help=f"share of simulated readings inside an anomaly episode (default {DEFAULT_ANOMALY_RATE})",
    )  # fmt: skip
    p.add_argument("--csv", default=None, help="replay this long-format CSV (.csv, .csv.gz, or a folder of them)")
    p.add_argument("--skip-bad", action="store_true", help="count and skip bad CSV rows instead of stopping")
    p.add_argument(
        "--site", type=int, default=None, metavar="K",
        help="send only the devices of site K (1..sites; crc32(device_id) % sites + 1) to site K's cluster, "
        "at their share of the rate (default FLEAD_SITE; required when the stack has sites)",
    )  # fmt: skip
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: the running stack's)")
    p.add_argument("--topic", default=None, help=f"topic (default FLEAD_TOPIC_READINGS, {d.topic_readings})")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace, settings: Settings) -> SimOptions:
    return SimOptions(
        devices=args.devices if args.devices is not None else settings.devices,
        rate=args.rate if args.rate is not None else float(settings.readings_per_minute),
        batch=args.batch if args.batch is not None else settings.batch_size,
        seed=args.seed,
        seconds=args.seconds,
        count=args.count,
        csv=args.csv,
        skip_bad=args.skip_bad,
        anomaly_rate=args.anomaly_rate,
        warmup=settings.min_history + 2,  # anomalies start once the detector scores the device
        topic=args.topic,
        bootstrap=[s.strip() for s in args.bootstrap.split(",") if s.strip()] if args.bootstrap else None,
        site=(settings.site, settings.sites) if settings.site else None,
    )


async def _main(settings: Settings, opts: SimOptions) -> Summary:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return await simulate(settings, opts, progress=sys.stderr, stop=stop)


def run(args: argparse.Namespace) -> int:
    from flead_app.replay import BadRow

    settings = load_settings()
    try:
        if args.site is not None:
            settings = at_site(settings, args.site)
        if settings.sites and not settings.site and not args.bootstrap:
            raise ValueError(
                f"the stack has {settings.sites} sites and its central cluster takes no readings: "
                f"send to a site with --site K (1..{settings.sites}), one simulator per site"
            )
        opts = options_from_args(args, settings)
        if opts.devices < 1:
            raise ValueError("--devices must be at least 1")
        if opts.csv and not Path(opts.csv).exists():
            raise FileNotFoundError(f"no such file or folder: {opts.csv}")
        summary = asyncio.run(_main(settings, opts))
    except (BadRow, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"flead simulate: {err}", file=sys.stderr)
        return 2 if isinstance(err, BadRow | ValueError | FileNotFoundError) else 1
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(format_summary(summary))
    return 1 if summary.failed_messages else 0
