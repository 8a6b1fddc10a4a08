"""The sink: anomalies, local models and global models -> PostgreSQL/TimescaleDB.

A plain aiokafka consumer in its own consumer group (``<app id>-sink``), run as a task of every
worker, so several workers share the partitions. The sink owns its offsets: it commits a
partition's offset only after the rows up to that offset are committed to the database
(``flead_app.io.db.sink.PostgresSink``), because Faust's own commits may pass records an agent
has not finished with. While the database is unreachable the write is retried with backoff and
nothing is committed; rows the database refuses go to the dead-letter topic with its reason,
and everything else is stored.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from flead_app.agents.dead_letter import send_dead_record
from flead_app.app import app, runtime, settings
from flead_app.io import kafka
from flead_app.io.db.retry import describe_error, write_with_retry
from flead_app.io.db.sink import PostgresSink, SinkRecord, flead_routes
from flead_app.io.db.store import Database

log = logging.getLogger(__name__)
counters = runtime.stats.counter("sink")
BATCH_WAIT_MS = 1000
SCHEMA_RETRY_S = 10.0
#: the database may be down for a long time; the sink must not be thrown out of its group meanwhile
MAX_POLL_INTERVAL_MS = 60 * 60 * 1000
#: how the tables of the sink are named in its counters (as before: what /flead/stats shows)
COUNTER_OF_TABLE = {"anomalies": "anomalies", "local_models": "local_models", "federated_models": "global_models"}


def open_database() -> Database:
    """The database, with its schema created (waiting while the server is still starting)."""
    if not settings.db_url:
        raise RuntimeError("no database: run `flead stack up` or set FLEAD_DB_URL")
    db = Database.from_settings(settings)
    write_with_retry(lambda _: db.init_schema(), None, what="schema")
    return db


async def drain(consumer: AIOKafkaConsumer, sink: PostgresSink) -> int:
    """One poll: store what arrived, dead-letter what was refused, then commit; records handled."""
    batches = await consumer.getmany(timeout_ms=BATCH_WAIT_MS, max_records=settings.sink_batch)
    if not batches:
        return 0
    records = [
        SinkRecord(tp.topic, r.partition, r.offset, r.key, r.value) for tp, batch in batches.items() for r in batch
    ]
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(None, write_with_retry, sink.write, records, None)
    for table, n in result.inserted.items():
        counters[COUNTER_OF_TABLE.get(table, table)] += n
    for table, n in result.duplicates.items():
        counters[COUNTER_OF_TABLE.get(table, table) + "_duplicates_ignored"] += n
    if result.rejected:
        counters["rows_dead_lettered"] += len(result.rejected)
        acks = [
            await send_dead_record(
                r.record.topic, r.record.partition, r.record.offset, r.record.key, r.record.value, r.reason
            )  # fmt: skip
            for r in result.rejected
        ]
        await asyncio.gather(*acks)  # acknowledged before the offsets move past them
    offsets = {TopicPartition(tp.topic, tp.partition): batch[-1].offset + 1 for tp, batch in batches.items()}
    try:
        await consumer.commit(offsets)
    except (CommitFailedError, IllegalStateError) as err:  # a rebalance took a partition: its new owner redoes it
        counters["commits_lost_to_rebalance"] += 1
        log.warning("sink commit failed (%s); the records will be stored again, without duplicates", err)
    return len(records)


@app.task
async def run_sink() -> None:
    """Create the schema, then consume the three output topics into the database until the worker stops.

    A database that refuses the schema (not merely unreachable: ``open_database`` waits for that)
    must not stop detection and training, so the sink says why and tries again."""
    db = None
    while db is None:
        try:
            db = await asyncio.get_running_loop().run_in_executor(None, open_database)
        except Exception as err:
            counters["errors"] += 1
            log.error("the sink cannot prepare the database (%s); trying again in %.0f s",
                      describe_error(err), SCHEMA_RETRY_S)  # fmt: skip
            await asyncio.sleep(SCHEMA_RETRY_S)
    sink = PostgresSink(db, flead_routes(settings))
    consumer = kafka.consumer(
        settings, *sink.routes, group_id=settings.sink_group, auto_offset_reset="earliest",
        max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
    )  # fmt: skip
    await consumer.start()
    log.info("sink consuming %s as group %s", ", ".join(sink.routes), settings.sink_group)
    try:
        while True:
            try:
                await drain(consumer, sink)
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
        db.close()
