"""Each worker follows ``global-model-updates`` and the readings topic's partition leaders.

Devices start their next local round from the newest global model, and a device's partition
may live on any worker, so every worker needs every global model. Faust agents share one
consumer group (each message reaches one worker), so this task uses its own group-less aiokafka
consumer that reads the whole (small) topic. The same client's metadata tells which broker
leads each partition of the readings topic, which anomalies record as ``broker_id``.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from flead_app.algorithms.device import GlobalParams
from flead_app.app import app, settings
from flead_app.io.kafka import assign_all_partitions
from flead_app.models import GlobalModel, InvalidRecord
from flead_app.settings import kafka_client_options

log = logging.getLogger(__name__)
LEADER_REFRESH_S = 10.0


class GlobalModelCache:
    """The newest global model this worker has seen."""

    def __init__(self) -> None:
        self.params: GlobalParams | None = None
        self.accuracy: float | None = None

    @property
    def version(self) -> int:
        return self.params.version if self.params else 0

    def offer(self, model: GlobalModel) -> bool:
        if model.global_version <= self.version:
            return False
        self.params = GlobalParams(model.global_version, np.asarray(model.weights, dtype=np.float64), model.bias)
        self.accuracy = model.accuracy
        return True


latest = GlobalModelCache()
#: partition of the readings topic -> id of the broker leading it (-1 while unknown)
partition_leaders: dict[int, int] = {}


def broker_of(partition: int) -> int:
    return partition_leaders.get(partition, -1)


async def _refresh_leaders(consumer: AIOKafkaConsumer) -> None:
    cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001 - aiokafka has no public call
    for p in cluster.partitions_for_topic(settings.topic_readings) or ():
        leader = cluster.leader_for_partition(TopicPartition(settings.topic_readings, p))
        partition_leaders[p] = -1 if leader is None else int(leader)


@app.task
async def follow_global_models() -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kafka_client_options(settings),
    )
    await consumer.start()
    try:
        await assign_all_partitions(consumer, settings.topic_global_updates, timeout=300)
        next_refresh = 0.0
        while True:
            if time.monotonic() >= next_refresh:
                try:
                    await _refresh_leaders(consumer)
                except Exception as err:  # metadata is advisory; keep following models
                    log.warning("could not refresh partition leaders: %s", err)
                next_refresh = time.monotonic() + LEADER_REFRESH_S
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    try:
                        model = GlobalModel.from_json(record.value)
                    except InvalidRecord as err:
                        log.warning("ignoring bad global model at offset %d: %s", record.offset, err)
                        continue
                    if latest.offer(model):
                        log.debug("global model v%d seen", model.global_version)
    finally:
        await consumer.stop()
