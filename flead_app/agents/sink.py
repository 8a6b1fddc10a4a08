"""The sink: anomalies, local models and global models -> PostgreSQL/TimescaleDB.

A plain aiokafka consumer in its own consumer group (``<app id>-sink``), run as a task of every
worker, so several workers share the partitions. It commits a partition's offset only after the
rows up to that offset are committed to the database; while the database is down the write is
retried with backoff and nothing is committed. Inserts ignore conflicts on natural keys, so
Kafka redeliveries after a crash or rebalance never duplicate a row.

It used to be three Faust agents taking events in batches. Faust committed offsets past records
those agents had not stored (the recovery test, SIGKILL mid-run, lost 16 of 200 local models
once in about ten runs), so the sink now owns its offsets; Faust only runs the agents with state.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from flead_app.agents.dead_letter import send_dead_record
from flead_app.app import app, settings
from flead_app.models import Anomaly, GlobalModel, InvalidRecord, LocalModelUpdate
from flead_app.settings import kafka_client_options

log = logging.getLogger(__name__)
counters: Counter[str] = Counter()
_database = None  # flead_app.io.db.store.Database, opened on first use
BATCH_WAIT_MS = 1000
#: the database may be down for a long time; the sink must not be thrown out of its group meanwhile
MAX_POLL_INTERVAL_MS = 60 * 60 * 1000

#: topic -> (parser, Database method, counter)
ROUTES: dict[str, tuple[Callable, str, str]] = {
    settings.topic_anomalies: (Anomaly.from_json, "insert_anomalies", "anomalies"),
    settings.topic_local_updates: (LocalModelUpdate.from_json, "insert_local_models", "local_models"),
    settings.topic_global_updates: (GlobalModel.from_json, "insert_global_models", "global_models"),
}


def database():  # noqa: ANN201 - returns flead_app.io.db.store.Database
    """The database, with its schema created on first use."""
    global _database
    from flead_app.io.db.store import Database, write_with_retry

    if _database is None:
        if not settings.db_url:
            raise RuntimeError("no database: run `flead stack up` or set FLEAD_DB_URL")
        db = Database(settings.db_url)
        write_with_retry(lambda _: db.init_schema(), None, what="schema")  # the database may still be starting
        _database = db
    return _database


async def persist(topic: str, records: list) -> None:  # aiokafka ConsumerRecords of one topic
    """Store one topic's records (bad ones become dead letters); returns once the rows are committed."""
    parse, insert_name, counter = ROUTES[topic]
    rows, dead = [], []
    for record in records:
        if record.value is None or record.value.startswith(b'{"control"'):
            continue
        try:
            rows.append(parse(record.value))
        except InvalidRecord as err:
            where = (topic, record.partition, record.offset)
            dead.append(await send_dead_record(*where, record.key, record.value, str(err)))
    if dead:
        await asyncio.gather(*dead)  # acknowledged before the offset moves past them
    if not rows:
        return
    from flead_app.io.db.retry import write_with_retry_async

    db = await asyncio.get_running_loop().run_in_executor(None, database)
    inserted = await write_with_retry_async(getattr(db, insert_name), rows, what=insert_name)
    counters[counter] += inserted
    counters[counter + "_duplicates_ignored"] += len(rows) - inserted


async def drain(consumer: AIOKafkaConsumer) -> int:
    """One poll: store what arrived, then commit it; how many records were handled."""
    batches = await consumer.getmany(timeout_ms=BATCH_WAIT_MS, max_records=settings.sink_batch)
    if not batches:
        return 0
    by_topic: dict[str, list] = {}
    for tp, records in batches.items():
        by_topic.setdefault(tp.topic, []).extend(records)
    for topic, records in by_topic.items():
        await persist(topic, records)
    offsets = {TopicPartition(tp.topic, tp.partition): records[-1].offset + 1 for tp, records in batches.items()}
    try:
        await consumer.commit(offsets)
    except (CommitFailedError, IllegalStateError) as err:  # a rebalance took a partition: its new owner redoes it
        counters["commits_lost_to_rebalance"] += 1
        log.warning("sink commit failed (%s); the records will be stored again, without duplicates", err)
    return sum(len(r) for r in batches.values())


@app.task
async def run_sink() -> None:
    """Consume the three output topics into the database until the worker stops."""
    consumer = AIOKafkaConsumer(
        *ROUTES,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.sink_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
        **kafka_client_options(settings),
    )
    await consumer.start()
    log.info("sink consuming %s as group %s", ", ".join(ROUTES), settings.sink_group)
    try:
        while True:
            try:
                await drain(consumer)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the sink: nothing was committed, so retry the poll
                counters["errors"] += 1
                log.exception("sink batch failed; retrying from the last committed offsets")
                for tp in consumer.assignment():
                    committed = await consumer.committed(tp)
                    if committed is None:
                        await consumer.seek_to_beginning(tp)
                    else:
                        consumer.seek(tp, committed)
                await asyncio.sleep(1.0)
    finally:
        await consumer.stop()
