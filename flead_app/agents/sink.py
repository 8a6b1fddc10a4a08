"""The sink: anomalies, local models and global models -> PostgreSQL/TimescaleDB.

Events are taken in batches (``take_events``) and acknowledged by Faust only after the batch
is committed to the database; while the database is down the write is retried with backoff,
so nothing is acknowledged that was not written. Inserts ignore conflicts on natural keys, so
Kafka redeliveries after a crash or rebalance never duplicate a row.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from flead_app.agents.dead_letter import send_dead_letter
from flead_app.app import anomalies_topic, app, global_updates_topic, local_updates_topic, settings
from flead_app.models import Anomaly, GlobalModel, InvalidRecord, LocalModelUpdate

log = logging.getLogger(__name__)
counters: Counter[str] = Counter()
_database = None  # flead_app.db.store.Database, opened on first use
BATCH_WAIT_S = 1.0


def database():  # noqa: ANN201 - returns flead_app.db.store.Database
    """The database, with its schema created on first use."""
    global _database
    from flead_app.db.store import Database, write_with_retry

    if _database is None:
        if not settings.db_url:
            raise RuntimeError("no database: run `flead stack up` or set FLEAD_DB_URL")
        db = Database(settings.db_url)
        write_with_retry(lambda _: db.init_schema(), None, what="schema")  # the database may still be starting
        _database = db
    return _database


async def persist(events: list, parse: Callable, insert_name: str, counter: str) -> None:
    records = []
    for event in events:
        if event.value.startswith(b'{"control"'):
            continue
        try:
            records.append(parse(event.value))
        except InvalidRecord as err:
            await send_dead_letter(event, str(err))
    if not records:
        return
    from flead_app.db.retry import write_with_retry_async

    db = await asyncio.get_running_loop().run_in_executor(None, database)
    # retried with backoff while the database is down; the batch is acknowledged only after this returns
    inserted = await write_with_retry_async(getattr(db, insert_name), records, what=insert_name)
    counters[counter] += inserted
    counters[counter + "_duplicates_ignored"] += len(records) - inserted


@app.agent(anomalies_topic)
async def sink_anomalies(stream) -> None:  # noqa: ANN001
    async for events in stream.take_events(settings.sink_batch, within=BATCH_WAIT_S):
        await persist(events, Anomaly.from_json, "insert_anomalies", "anomalies")


@app.agent(local_updates_topic)
async def sink_local_models(stream) -> None:  # noqa: ANN001
    async for events in stream.take_events(settings.sink_batch, within=BATCH_WAIT_S):
        await persist(events, LocalModelUpdate.from_json, "insert_local_models", "local_models")


@app.agent(global_updates_topic)
async def sink_global_models(stream) -> None:  # noqa: ANN001
    async for events in stream.take_events(settings.sink_batch, within=BATCH_WAIT_S):
        await persist(events, GlobalModel.from_json, "insert_global_models", "global_models")
