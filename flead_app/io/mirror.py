"""What MirrorMaker 2 has done, read from the Kafka Connect topics it keeps on each target cluster.

In dedicated mode each flow ``source->target`` is a Kafka Connect worker whose state lives on
the target cluster, in compacted topics named after the source alias:

- ``mm2-status.<source>.internal``: ``status-task-MirrorSourceConnector-0`` ->
  ``{"state": "RUNNING", ...}`` (the replication task's state);
- ``mm2-offsets.<source>.internal``: ``["MirrorSourceConnector", {"cluster": <source>,
  "topic": t, "partition": p}]`` -> ``{"offset": o}``, the last source offset the task has
  replicated *and committed* (every ``offset.flush.interval.ms``). A restart resumes after it,
  which is why records replicated after the last commit cross again (at-least-once).

These are read like any compacted topic, from the beginning, newest value per key, by a
group-less consumer from the one client factory (``flead_app.io.kafka``).
"""

from __future__ import annotations

import json
from typing import Any

from flead_app.io.kafka import consumer
from flead_app.settings import Settings


def status_topic(source: str) -> str:
    return f"mm2-status.{source}.internal"


def offsets_topic(source: str) -> str:
    return f"mm2-offsets.{source}.internal"


async def read_compacted(settings: Settings, bootstrap: list[str], topic: str, timeout_s: float = 10.0) -> dict:
    """The newest record of every key of ``topic`` on the cluster at ``bootstrap`` ({} if it does not exist)."""
    from aiokafka import TopicPartition

    reader = consumer(settings, bootstrap_servers=bootstrap, group_id=None, request_timeout_ms=int(timeout_s * 1000))
    await reader.start()
    try:
        cluster = await reader._client.fetch_all_metadata()  # noqa: SLF001 - one request, no topic auto-creation
        parts = cluster.partitions_for_topic(topic)
        if not parts:
            return {}
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        latest: dict[Any, Any] = {}
        todo = {tp for tp in tps if ends[tp] > 0}
        while todo:
            batches = await reader.getmany(*todo, timeout_ms=int(timeout_s * 1000))
            if not batches:
                raise TimeoutError(f"{topic} was not read to its end within {timeout_s:.0f} s")
            for tp, records in batches.items():
                for r in records:
                    latest[r.key] = r
                if await reader.position(tp) >= ends[tp]:
                    todo.discard(tp)
        return latest
    finally:
        await reader.stop()


async def task_states(settings: Settings, bootstrap: list[str], source: str, since_ms: int = 0) -> dict[str, str]:
    """{"MirrorSourceConnector-0": "RUNNING", ...}: each task's state of the flow from ``source``,
    as written at or after ``since_ms`` (a restarted MirrorMaker finds its predecessor's states)."""
    out = {}
    for key, record in (await read_compacted(settings, bootstrap, status_topic(source))).items():
        name = (key or b"").decode(errors="replace")
        if not name.startswith("status-task-") or record.value is None or record.timestamp < since_ms:
            continue
        try:
            out[name.removeprefix("status-task-")] = str(json.loads(record.value).get("state", "?"))
        except ValueError:
            continue
    return out


async def replicated_offsets(settings: Settings, bootstrap: list[str], source: str) -> dict[tuple[str, int], int]:
    """{(topic, partition): records replicated and committed} of the flow from ``source`` (the
    committed source offset + 1, i.e. the source offset the flow resumes at)."""
    out: dict[tuple[str, int], int] = {}
    for key, record in (await read_compacted(settings, bootstrap, offsets_topic(source))).items():
        if key is None or record.value is None:
            continue
        try:
            connector, partition = json.loads(key)
            offset = json.loads(record.value)["offset"]
        except (ValueError, KeyError, TypeError):
            continue
        if connector != "MirrorSourceConnector" or partition.get("cluster") != source:
            continue
        out[(str(partition["topic"]), int(partition["partition"]))] = int(offset) + 1
    return out


async def flow_lag(
    settings: Settings, source: list[str], target: list[str], source_alias: str, topics: list[str]
) -> int:
    """Records of ``topics`` on the ``source`` cluster that the flow to ``target`` has not yet
    replicated and committed (0 once MirrorMaker has caught up and flushed its offsets)."""
    from aiokafka import TopicPartition

    done = await replicated_offsets(settings, target, source_alias)
    reader = consumer(settings, bootstrap_servers=source, group_id=None)
    await reader.start()
    try:
        cluster = await reader._client.fetch_all_metadata()  # noqa: SLF001 - one request, no topic auto-creation
        tps = [TopicPartition(t, p) for t in topics for p in sorted(cluster.partitions_for_topic(t) or ())]
        if not tps:
            return 0
        begins, ends = await reader.beginning_offsets(tps), await reader.end_offsets(tps)
        return sum(max(0, ends[tp] - max(done.get((tp.topic, tp.partition), 0), begins[tp])) for tp in tps)
    finally:
        await reader.stop()
