"""Each worker follows ``global-model-updates`` and the readings topic's partition leaders.

Devices start their next local round from the newest global model, and a device's partition
may live on any worker, so every worker needs every global model. Faust agents share one
consumer group (each message reaches one worker), so this task uses its own group-less aiokafka
consumer that reads the whole (small) topic into ``runtime.global_model``. The same client's
metadata tells which broker leads each partition of the readings topic (``runtime.leaders``),
which anomalies record as ``broker_id``.
"""

from __future__ import annotations

import logging
import time

from flead_app.app import app, runtime, settings
from flead_app.io.kafka import assign_all_partitions, consumer, partition_leaders
from flead_app.models import GlobalModel, InvalidRecord

log = logging.getLogger(__name__)
LEADER_REFRESH_S = 10.0


@app.task
async def follow_global_models() -> None:
    follower = consumer(settings, group_id=None, auto_offset_reset="earliest")
    await follower.start()
    try:
        await assign_all_partitions(follower, settings.topic_global_updates, timeout=300)
        next_refresh = 0.0
        while True:
            if time.monotonic() >= next_refresh:
                try:
                    runtime.leaders.update(await partition_leaders(follower, settings.topic_readings))
                except Exception as err:  # metadata is advisory; keep following models
                    log.warning("could not refresh partition leaders: %s", err)
                next_refresh = time.monotonic() + LEADER_REFRESH_S
            batches = await follower.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    try:
                        model = GlobalModel.from_json(record.value)
                    except InvalidRecord as err:
                        log.warning("ignoring bad global model at offset %d: %s", record.offset, err)
                        continue
                    if runtime.global_model.offer(model):
                        log.debug("global model v%d seen", model.global_version)
    finally:
        await follower.stop()
