"""Dead letters: bad input is published with its reason and counted; it never stops a worker."""

from __future__ import annotations

import asyncio
import logging

from flead_app.app import dead_letter_topic, runtime
from flead_app.models import DeadLetter

log = logging.getLogger(__name__)

#: dead letters sent by this worker, by source topic (shown on /flead/stats)
counts = runtime.stats.counter("dead_letters")


async def send_dead_letter(event, reason: str) -> asyncio.Future:  # noqa: ANN001 - a faust Event
    msg = event.message
    return await send_dead_record(msg.topic, msg.partition, msg.offset, msg.key, event.value, reason)


async def send_dead_record(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, reason: str
) -> asyncio.Future:
    """Publish one bad record of ``topic`` with its reason; await the result to wait for Kafka's ack."""
    record = DeadLetter.build(topic, partition, offset, reason, key, value)
    counts[topic] += 1
    if counts[topic] <= 10 or counts[topic] % 1000 == 0:
        log.warning("dead letter #%d from %s[%d]@%d: %s", counts[topic], topic, partition, offset, reason)
    return await dead_letter_topic.send(key=key, value=record.to_json())
