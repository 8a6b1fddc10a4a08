"""Dead letters: bad input is published with its reason and counted; it never stops a worker."""

from __future__ import annotations

import logging
from collections import Counter

from flead_app.app import dead_letter_topic
from flead_app.models import DeadLetter

log = logging.getLogger(__name__)

#: dead letters sent by this worker, by source topic (shown on /flead/stats)
counts: Counter[str] = Counter()


async def send_dead_letter(event, reason: str) -> None:  # noqa: ANN001 - a faust Event
    msg = event.message
    record = DeadLetter.build(msg.topic, msg.partition, msg.offset, reason, msg.key, event.value)
    counts[msg.topic] += 1
    if counts[msg.topic] <= 10 or counts[msg.topic] % 1000 == 0:
        log.warning(
            "dead letter #%d from %s[%d]@%d: %s", counts[msg.topic], msg.topic, msg.partition, msg.offset, reason
        )
    await dead_letter_topic.send(key=msg.key, value=record.to_json())
