"""``flead stack reset``: empty the pipeline's topics, tables and worker state, keep the stack running.

A demo or a replay-and-evaluate run reports on what the stack holds; without this, every
earlier run (the test suite's, yesterday's demo) is counted with it. Resetting:

* truncates the FLEAD topics and the workers' changelog topics to their end offsets (Kafka's
  DeleteRecords: the topics, their partitions and replication stay, the records are gone), so
  Spark and a restarted worker read only the new run;
* removes the workers' local table files (RocksDB caches of those changelogs);
* drops and re-creates the database tables of ``flead_app.io.db.schema`` (only those).

Consumer groups keep their committed offsets, which now lie before the topics' first record:
consumers restart from the first record (``auto_offset_reset=earliest``), and lag is counted
from the first record that still exists (``flead_app.io.kafka.consumer_lag``).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass, field

from flead_app.io import kafka
from flead_app.io.db.store import Database
from flead_app.settings import WORKERS_DIR, Settings, at_site

log = logging.getLogger(__name__)

#: the worker's tables (flead_app/tables): Faust names their changelog topics <app id>-<table>-changelog
TABLES = ("device_state", "fedavg_state")


def changelog_topics(settings: Settings) -> list[str]:
    return [f"{settings.app_id}-{table}-changelog" for table in TABLES]


@dataclass
class ResetResult:
    records_deleted: dict[str, int] = field(default_factory=dict)  # topic -> records removed
    worker_dirs: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)

    def describe(self) -> str:
        records = sum(self.records_deleted.values())
        return (
            f"removed {records:,} records from {len(self.records_deleted)} topics, "
            f"{len(self.worker_dirs)} worker table folder(s), and the rows of {len(self.tables)} tables"
        )


TOPIC_CONFIG_SOURCE = 1  # DescribeConfigs: a value set on the topic itself


async def delete_records(client, topic: str, todo: dict) -> None:  # noqa: ANN001 - aiokafka's admin client
    """DeleteRecords, also on a compacted topic (the workers' changelogs), which Kafka refuses
    (POLICY_VIOLATION) unless its ``cleanup.policy`` includes ``delete``: such a topic gets
    ``compact,delete`` for the call, then its own configuration back. AlterConfigs replaces a
    topic's whole configuration, so every value set on the topic is carried over."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import PolicyViolationError

    try:
        await client.delete_records(todo)
        return
    except PolicyViolationError:
        pass
    described = await client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    own = {
        e["config_names"]: e["config_value"]
        for r in described[0].to_object()["resources"]
        for e in r["config_entries"]
        if e.get("config_source") == TOPIC_CONFIG_SOURCE
    }
    if "delete" in own.get("cleanup.policy", ""):
        raise PolicyViolationError(f"DeleteRecords refused on {topic} (cleanup.policy {own['cleanup.policy']})")
    await client.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, {**own, "cleanup.policy": "compact,delete"})]
    )
    try:
        for attempt in range(20):  # the new policy reaches the partition leaders a moment later
            try:
                await client.delete_records(todo)
                break
            except PolicyViolationError:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.25)
    finally:
        await client.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, own)])


async def truncate_topics(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Delete every record of ``topics`` (those that exist); records removed per topic."""
    from aiokafka import TopicPartition
    from aiokafka.admin import RecordsToDelete

    reader = kafka.consumer(settings)
    client = kafka.admin(settings)
    await reader.start()
    await client.start()
    try:
        existing = set(await client.list_topics())
        removed: dict[str, int] = {}
        for topic in topics:
            if topic not in existing:
                continue
            parts = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
            if not parts:
                parts = await kafka.assign_all_partitions(reader, topic)
            begin, end = await reader.beginning_offsets(parts), await reader.end_offsets(parts)
            todo = {tp: RecordsToDelete(before_offset=end[tp]) for tp in parts if end[tp] > begin[tp]}
            if todo:
                await delete_records(client, topic, todo)
            removed[topic] = sum(end[tp] - begin[tp] for tp in parts)
        return removed
    finally:
        await client.close()
        await reader.stop()


def reset(settings: Settings) -> ResetResult:
    """Empty the pipeline (topics, changelogs, worker table files, database tables), at the centre
    and at every site; the stack stays up."""
    result = ResetResult()
    topics = settings.pipeline_topics + changelog_topics(settings)
    result.records_deleted = asyncio.run(truncate_topics(settings, topics))
    for k in range(1, settings.sites + 1):  # each site's cluster holds its own copy of every topic
        removed = asyncio.run(truncate_topics(at_site(settings, k), topics))
        result.records_deleted.update({f"site{k}:{t}": n for t, n in removed.items()})
    workers = settings.home_path / WORKERS_DIR
    for folder in sorted(workers.glob(f"{settings.app_id}-*")) if workers.is_dir() else []:
        shutil.rmtree(folder, ignore_errors=True)
        result.worker_dirs.append(str(folder))
    if settings.db_url:
        db = Database.from_settings(settings)
        try:
            result.tables = db.reset_schema()
        finally:
            db.close()
    log.info("reset: %s", result.describe())
    return result
