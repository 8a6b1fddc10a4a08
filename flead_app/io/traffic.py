"""Bytes that crossed Kafka, measured on the brokers, and the bandwidth saving they show.

The saving FLEAD claims is ``1 - (model bytes / reading bytes)``: bytes of the local (and
global) model-update topics against bytes of the readings topic. Both come from Kafka itself:
each broker reports the size of every partition replica it stores (the DescribeLogDirs
request, API key 35). A partition is counted once, at its leader's replica, so replication
factor 3 does not triple anything. Sizes are record batches as stored, i.e. as producers sent
them (after any producer compression), since each topic was created; retention would shrink
them.

aiokafka 0.14 has no ``describe_log_dirs`` in its admin client, so the request is defined
here on aiokafka's own protocol classes (``Request``/``RequestStruct``/``Response``) and sent
through its ``AIOKafkaClient``; version 1 is the oldest Kafka 4.x still serves (KIP-896) and
is served by every 2.x and 3.x broker. Should a broker refuse it, the sizes are summed from the
brokers' data directories recorded by ``flead stack`` (``<home>/kafka/node-N/data``), which
only works on the machine running the stack, and the snapshot says so in ``method``.

Each measurement becomes one snapshot of rows in ``kafka_traffic`` (same ``measured_at``), so
``flead report`` still shows the last measurement when Kafka is down.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Int64, Schema, String

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]


# ---------------------------------------------------------------------------------------
# DescribeLogDirs v1 on aiokafka's protocol classes
# ---------------------------------------------------------------------------------------


class DescribeLogDirsResponse_v1(Response):  # noqa: N801 - aiokafka's naming
    API_KEY = 35
    API_VERSION = 1
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "results",
            Array(
                ("error_code", Int16),
                ("log_dir", String("utf-8")),
                (
                    "topics",
                    Array(
                        ("name", String("utf-8")),
                        (
                            "partitions",
                            Array(
                                ("partition_index", Int32),
                                ("partition_size", Int64),
                                ("offset_lag", Int64),
                                ("is_future_key", Boolean),
                            ),
                        ),
                    ),
                ),
            ),
        ),
    )


class DescribeLogDirsRequest_v1(RequestStruct):  # noqa: N801
    API_KEY = 35
    API_VERSION = 1
    RESPONSE_TYPE = DescribeLogDirsResponse_v1
    SCHEMA = Schema(("topics", Array(("topic", String("utf-8")), ("partitions", Array(Int32)))))


class DescribeLogDirsRequest(Request[DescribeLogDirsRequest_v1]):
    """Sizes of the given partitions' replicas on the broker the request is sent to."""

    API_KEY = 35

    def __init__(self, topics: Mapping[str, Iterable[int]]) -> None:
        self._topics = [(name, sorted(parts)) for name, parts in topics.items()]

    def build(self, request_struct_class: type[DescribeLogDirsRequest_v1]) -> DescribeLogDirsRequest_v1:
        return request_struct_class(self._topics)


def parse_log_dirs(response: Any) -> dict[TopicPartition, int]:
    """One broker's DescribeLogDirs answer -> size of each partition replica it holds.

    Future replicas (a replica being moved between disks) are skipped; a replica in two log
    directories (mid-move) counts at its larger size.
    """
    sizes: dict[TopicPartition, int] = {}
    for error_code, _log_dir, topics in response.results:
        if error_code:
            continue  # an offline log directory: its replicas are not readable
        for name, partitions in topics:
            for index, size, _lag, is_future in partitions:
                if is_future:
                    continue
                key = (name, int(index))
                sizes[key] = max(sizes.get(key, 0), int(size))
    return sizes


# ---------------------------------------------------------------------------------------
# Pure accounting
# ---------------------------------------------------------------------------------------


def leader_sizes(
    replica_sizes: Mapping[int, Mapping[TopicPartition, int]], leaders: Mapping[TopicPartition, int]
) -> dict[TopicPartition, tuple[int, int]]:
    """(topic, partition) -> (broker, bytes), counting each partition once: at its leader.

    Without a leader (offline partition) or when the leader did not answer, the largest
    replica stands in, attributed to the broker holding it.
    """
    out: dict[TopicPartition, tuple[int, int]] = {}
    partitions = set(leaders) | {tp for sizes in replica_sizes.values() for tp in sizes}
    for tp in partitions:
        leader = leaders.get(tp, -1)
        if leader in replica_sizes and tp in replica_sizes[leader]:
            out[tp] = (leader, replica_sizes[leader][tp])
            continue
        holders = [(sizes[tp], broker) for broker, sizes in replica_sizes.items() if tp in sizes]
        if holders:
            size, broker = max(holders)
            out[tp] = (broker, size)
        else:
            out[tp] = (leader, 0)
    return out


def bandwidth_saving(reading_bytes: int, model_bytes: int) -> float | None:
    """``1 - model/readings``; None until some readings crossed Kafka."""
    if reading_bytes <= 0:
        return None
    return 1.0 - model_bytes / reading_bytes


@dataclass
class TrafficSnapshot:
    """One measurement: a row per partition (bytes at its leader, messages from offsets)."""

    measured_at: datetime
    method: str  # "describe_log_dirs" | "log_directories" | "stored snapshot"
    rows: list[dict[str, Any]] = field(default_factory=list)

    def db_rows(self) -> list[dict[str, Any]]:
        return [{**r, "measured_at": self.measured_at} for r in self.rows]


def summarize(rows: Iterable[Mapping[str, Any]], readings: str, local: str, global_: str) -> dict[str, Any]:
    """Per-topic and per-broker totals and the bandwidth saving of one snapshot."""
    topics: dict[str, dict[str, int]] = defaultdict(lambda: {"bytes": 0, "messages": 0, "partitions": 0})
    brokers: dict[int, dict[str, Any]] = defaultdict(lambda: {"bytes": 0, "messages": 0, "leader_partitions": 0})
    broker_topic: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        t = topics[r["topic"]]
        t["bytes"] += int(r["bytes"])
        t["messages"] += int(r.get("messages") or 0)
        t["partitions"] += 1
        b = brokers[int(r["broker_id"])]
        b["bytes"] += int(r["bytes"])
        b["messages"] += int(r.get("messages") or 0)
        b["leader_partitions"] += 1
        broker_topic[int(r["broker_id"])][r["topic"]] += int(r["bytes"])
    for broker, by_topic in broker_topic.items():
        brokers[broker]["bytes_by_topic"] = dict(sorted(by_topic.items()))
    reading_bytes = topics[readings]["bytes"] if readings in topics else 0
    model_bytes = sum(topics[t]["bytes"] for t in (local, global_) if t in topics)
    return {
        "topics": {k: dict(v) for k, v in sorted(topics.items())},
        "brokers": {k: dict(v) for k, v in sorted(brokers.items())},
        "reading_bytes": reading_bytes,
        "model_bytes": model_bytes,
        "local_update_bytes": topics[local]["bytes"] if local in topics else 0,
        "global_update_bytes": topics[global_]["bytes"] if global_ in topics else 0,
        "bandwidth_saving": bandwidth_saving(reading_bytes, model_bytes),
    }


SITE_PREFIX = "site"


def site_topic(site: int, topic: str) -> str:
    """How a site cluster's topic is named in ``kafka_traffic`` rows (one table for every cluster).

    >>> site_topic(2, "anomalies"), split_site_topic("site2:anomalies"), split_site_topic("anomalies")
    ('site2:anomalies', (2, 'anomalies'), (0, 'anomalies'))
    """
    return f"{SITE_PREFIX}{site}:{topic}"


def split_site_topic(name: str) -> tuple[int, str]:
    """(site, topic) of a ``kafka_traffic`` topic name; site 0 is the central cluster."""
    head, sep, rest = name.partition(":")
    if sep and head.startswith(SITE_PREFIX) and head[len(SITE_PREFIX) :].isdigit():
        return int(head[len(SITE_PREFIX) :]), rest
    return 0, name


def rows_by_site(rows: Iterable[Mapping[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """A snapshot's rows per cluster (0 = central), with the site prefix taken off the topic."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        site, topic = split_site_topic(r["topic"])
        out[site].append({**r, "topic": topic})
    return dict(out)


def _bytes_of(rows: Iterable[Mapping[str, Any]], topics: Iterable[str]) -> int:
    wanted = set(topics)
    return sum(int(r["bytes"]) for r in rows if r["topic"] in wanted)


def _messages_of(rows: Iterable[Mapping[str, Any]], topics: Iterable[str]) -> int:
    wanted = set(topics)
    return sum(int(r.get("messages") or 0) for r in rows if r["topic"] in wanted)


def one_cluster_bandwidth(rows: Iterable[Mapping[str, Any]], readings: str, updates: Iterable[str]) -> dict[str, Any]:
    """The one-cluster topology: every reading went to the one (central) cluster, so nothing was
    saved; the ratio of update bytes to reading bytes on that cluster is shown for what it is.

    >>> rows = [{"topic": "r", "bytes": 1000, "messages": 10}, {"topic": "u", "bytes": 50, "messages": 1}]
    >>> b = one_cluster_bandwidth(rows, "r", ["u"])
    >>> b["topology"], b["crossed_bytes"], b["saving"], b["update_to_reading_ratio"]
    ('one-cluster', 1000, 0.0, 0.05)
    """
    rows = list(rows)
    reading = _bytes_of(rows, [readings])
    update = _bytes_of(rows, updates)
    return {
        "topology": "one-cluster",
        "reading_bytes": reading,
        "crossed_bytes": reading,
        "saving": 0.0 if reading else None,
        "update_bytes": update,
        "update_to_reading_ratio": update / reading if reading else None,
        "per_site": {},
        "note": "one cluster: every reading crossed to it, so no bandwidth was saved; update_to_reading_ratio "
        "is update bytes / reading bytes on the same cluster, not a saving",
    }


def sites_bandwidth(
    by_site: Mapping[int, list[Mapping[str, Any]]],
    readings: str,
    up: Iterable[str],
    down: Iterable[str],
    pending: Mapping[int, int | None] | None = None,
) -> dict[str, Any]:
    """Bytes that crossed each site's boundary against the bytes of readings its cluster received.

    A site's crossed bytes are the bytes of its up topics (model updates and anomalies: all
    produced there, all mirrored to the centre) plus its down topic (global models: all of them
    came from the centre), measured in the site's own log. That is what crossed once MirrorMaker
    has caught up; ``pending`` says how many records it had not yet replicated when measured.
    ``arrived_central_bytes`` is the same traffic as the central cluster stored it (MirrorMaker's
    producer batches records its own way, re-delivery after a restart adds copies, and a log
    emptied with DeleteRecords, as ``flead stack reset`` does, keeps the bytes of the deleted
    records until their segment rolls): an informative figure, not the one the saving uses.

    >>> site = [{"topic": "r", "bytes": 10000, "messages": 100}, {"topic": "u", "bytes": 300, "messages": 3},
    ...         {"topic": "g", "bytes": 200, "messages": 2}]
    >>> b = sites_bandwidth({0: [{"topic": "u", "bytes": 620, "messages": 6}], 1: site, 2: site}, "r", ["u"], ["g"])
    >>> b["topology"], b["reading_bytes"], b["crossed_bytes"], b["saving"], b["per_site"]["1"]["saving"]
    ('sites', 20000, 1000, 0.95, 0.95)
    >>> b["arrived_central_bytes"], b["per_site"]["2"]["up_bytes"], b["per_site"]["2"]["down_bytes"]
    (620, 300, 200)
    """
    up, down = list(up), list(down)
    per_site: dict[str, dict[str, Any]] = {}
    for site, rows in sorted(by_site.items()):
        if site == 0:
            continue
        reading = _bytes_of(rows, [readings])
        up_b, down_b = _bytes_of(rows, up), _bytes_of(rows, down)
        per_site[str(site)] = {
            "reading_bytes": reading,
            "reading_messages": _messages_of(rows, [readings]),
            "up_bytes": up_b,
            "up_messages": _messages_of(rows, up),
            "down_bytes": down_b,
            "down_messages": _messages_of(rows, down),
            "crossed_bytes": up_b + down_b,
            "saving": bandwidth_saving(reading, up_b + down_b),
            "pending_records": (pending or {}).get(site),
        }
    reading = sum(s["reading_bytes"] for s in per_site.values())
    crossed = sum(s["crossed_bytes"] for s in per_site.values())
    return {
        "topology": "sites",
        "reading_bytes": reading,
        "crossed_bytes": crossed,
        "saving": bandwidth_saving(reading, crossed),
        "per_site": per_site,
        "arrived_central_bytes": _bytes_of(by_site.get(0, []), up),
        "note": "crossed = bytes of the mirrored topics in each site's log (updates and anomalies up, "
        "global models down), measured with DescribeLogDirs; reading bytes never left the sites",
    }


def sizes_from_directories(data_dirs: Mapping[int, Iterable[Path]], topics: Iterable[str]) -> dict[int, dict]:
    """Fallback: sum each replica's ``*.log`` segment files in the brokers' data directories."""
    wanted = set(topics)
    out: dict[int, dict[TopicPartition, int]] = {}
    for broker, dirs in data_dirs.items():
        sizes: dict[TopicPartition, int] = {}
        for data_dir in dirs:
            if not data_dir.is_dir():
                continue
            for entry in data_dir.iterdir():
                name, _, index = entry.name.rpartition("-")
                if name not in wanted or not index.isdigit() or not entry.is_dir():
                    continue
                size = sum(f.stat().st_size for f in entry.glob("*.log") if f.is_file())
                sizes[(name, int(index))] = sizes.get((name, int(index)), 0) + size
        out[broker] = sizes
    return out


def stack_data_dirs(state: Mapping[str, Any]) -> dict[int, list[Path]]:
    """Brokers' data directories from ``stack.json`` (``flead stack`` keeps
    ``<home>/kafka/node-N/data``); empty when the state names no home."""
    explicit = state.get("log_dirs")
    if isinstance(explicit, dict):
        return {int(k): [Path(v)] if isinstance(v, str) else [Path(p) for p in v] for k, v in explicit.items()}
    home = state.get("home")
    if not home:
        return {}
    out: dict[int, list[Path]] = {}
    kafka_dir = Path(home) / "kafka"
    if kafka_dir.is_dir():
        for node in kafka_dir.glob("node-*"):
            suffix = node.name.removeprefix("node-")
            if suffix.isdigit() and (node / "data").is_dir():
                out[int(suffix)] = [node / "data"]
    return out


# ---------------------------------------------------------------------------------------
# Measuring (I/O)
# ---------------------------------------------------------------------------------------


class KafkaUnreachable(RuntimeError):
    pass


async def measure(
    bootstrap: list[str],
    topics: list[str],
    client_options: Mapping[str, Any] | None = None,
    stack_state: Mapping[str, Any] | None = None,
    timeout_s: float = 15.0,
) -> TrafficSnapshot:
    """Measure the bytes and messages of ``topics`` now (topics that do not exist are skipped)."""
    try:
        return await asyncio.wait_for(
            _measure(bootstrap, topics, dict(client_options or {}), stack_state or {}), timeout_s
        )
    except TimeoutError as err:
        raise KafkaUnreachable(f"Kafka at {','.join(bootstrap)} did not answer within {timeout_s:.0f} s") from err


async def _measure(
    bootstrap: list[str], topics: list[str], options: dict[str, Any], state: Mapping[str, Any]
) -> TrafficSnapshot:
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaError

    from flead_app.io.kafka import leaders_from_metadata

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000, **options)
    try:
        try:
            await client.bootstrap()
            cluster = await client.fetch_all_metadata()
        except KafkaError as err:
            raise KafkaUnreachable(f"Kafka at {','.join(bootstrap)} is unreachable: {err}") from err
        partitions: dict[str, set[int]] = {}
        leaders: dict[TopicPartition, int] = {}
        for topic in topics:
            of_topic = leaders_from_metadata(cluster, topic)
            if of_topic:
                partitions[topic] = set(of_topic)
                leaders.update({(topic, p): b for p, b in of_topic.items()})
        measured_at = datetime.now(UTC)
        if not partitions:
            return TrafficSnapshot(measured_at, "describe_log_dirs")
        method = "describe_log_dirs"
        replica_sizes: dict[int, dict[TopicPartition, int]] = {}
        request = DescribeLogDirsRequest(partitions)
        failures = []
        for broker in sorted(b.nodeId for b in cluster.brokers()):
            try:
                replica_sizes[broker] = parse_log_dirs(await client.send(broker, request))
            except (KafkaError, NotImplementedError, OSError) as err:
                failures.append(f"broker {broker}: {type(err).__name__}: {err}")
        if failures and not replica_sizes:
            dirs = stack_data_dirs(state)
            if not dirs:
                raise KafkaUnreachable(
                    "DescribeLogDirs failed on every broker and no stack data directories "
                    f"are known: {'; '.join(failures)}"
                )
            log.warning(
                "DescribeLogDirs failed (%s); summing the stack's data directories instead", "; ".join(failures)
            )
            replica_sizes = sizes_from_directories(dirs, partitions)
            method = "log_directories"
        elif failures:
            log.warning(
                "DescribeLogDirs failed on some brokers (%s); their partitions count at a replica", "; ".join(failures)
            )
        counted = leader_sizes(replica_sizes, leaders)
        messages = await _message_counts(bootstrap, options, list(counted))
    finally:
        await client.close()
    rows = [
        {"topic": t, "partition": p, "broker_id": broker, "bytes": size, "messages": messages.get((t, p))}
        for (t, p), (broker, size) in sorted(counted.items())
    ]
    return TrafficSnapshot(measured_at, method, rows)


async def _message_counts(
    bootstrap: list[str], options: dict[str, Any], partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """Messages now held per partition: end offset - beginning offset (a batched reading
    message counts once)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka import TopicPartition as KafkaTP
    from aiokafka.errors import KafkaError

    if not partitions:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **options)
    try:
        await consumer.start()
        tps = [KafkaTP(t, p) for t, p in partitions]
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): int(end[tp]) - int(begin[tp]) for tp in tps}
    except KafkaError as err:
        log.warning("could not read offsets (%s); messages left unknown", err)
        return {}
    finally:
        await consumer.stop()


def measure_now(settings: Any, timeout_s: float = 15.0) -> TrafficSnapshot:
    """Synchronous wrapper for the CLI: measure the FLEAD topics of the configured cluster, and of
    every site's cluster when the stack has sites (their rows' topics prefixed ``site<k>:``)."""
    from flead_app.io.kafka import kafka_client_options
    from flead_app.settings import read_stack_state

    state = read_stack_state()
    options = kafka_client_options(settings)
    snap = asyncio.run(measure(settings.bootstrap_servers, settings.pipeline_topics, options, state, timeout_s))
    for key, site in sorted((state.get("sites") or {}).items(), key=lambda kv: int(kv[0])):
        site_state = {"home": site.get("home")}
        part = asyncio.run(measure([site["bootstrap"]], settings.site_topics, options, site_state, timeout_s))
        snap.rows += [{**r, "topic": site_topic(int(key), r["topic"])} for r in part.rows]
    return snap


def mirror_pending(settings: Any, snapshot_rows: Iterable[Mapping[str, Any]], timeout_s: float = 10.0) -> dict:
    """Records each site's flows had not yet replicated (and committed) when ``snapshot_rows`` were
    measured: up topics against the site's offsets in the centre's ``mm2-offsets.site<k>.internal``,
    the down topic against the centre's offsets in the site's ``mm2-offsets.central.internal``.
    None for a site whose offsets could not be read."""
    from flead_app.io.mirror import replicated_offsets
    from flead_app.settings import read_stack_state

    state = read_stack_state()
    by_site = rows_by_site(snapshot_rows)
    up = [settings.topic_local_updates, settings.topic_anomalies]
    down = [settings.topic_global_updates]
    out: dict[int, int | None] = {}

    async def offsets(bootstrap: list[str], source: str) -> dict[tuple[str, int], int]:
        return await asyncio.wait_for(replicated_offsets(settings, bootstrap, source), timeout_s)

    for key, site in (state.get("sites") or {}).items():
        k = int(key)
        try:
            done_up = asyncio.run(offsets(settings.bootstrap_servers, site.get("alias", f"site{k}")))
            done_down = asyncio.run(offsets([site["bootstrap"]], "central"))
        except Exception as err:  # noqa: BLE001 - the report says unknown rather than fail
            log.warning("could not read MirrorMaker's offsets for site %s: %s", k, err)
            out[k] = None
            continue
        pending = 0
        for rows, done, topics in ((by_site.get(k, []), done_up, up), (by_site.get(0, []), done_down, down)):
            for r in rows:
                if r["topic"] in topics and r.get("messages") is not None:
                    pending += max(0, int(r["messages"]) - done.get((r["topic"], int(r["partition"])), 0))
        out[k] = pending
    return out


__all__ = [
    "DescribeLogDirsRequest",
    "one_cluster_bandwidth",
    "rows_by_site",
    "site_topic",
    "sites_bandwidth",
    "split_site_topic",
    "KafkaUnreachable",
    "TrafficSnapshot",
    "bandwidth_saving",
    "leader_sizes",
    "measure",
    "measure_now",
    "parse_log_dirs",
    "sizes_from_directories",
    "stack_data_dirs",
    "summarize",
]
