"""Outputs that a skipped replay must send again.

Each agent's table row remembers the Kafka offset of the last message it applied, so a message
redelivered after a crash is skipped instead of applied twice. Skipping is only safe when that
message's outputs reached Kafka, and they need not have: the changelog record and the outputs
go to different partitions, usually led by different brokers, and a SIGKILL can land after the
changelog record was acknowledged but before an output was. The restarted worker then skipped
the message and its output was gone for good (the recovery test lost 10 of 200 local updates
that way on a loaded 4-broker cluster).

So a row also carries the outputs of its recent messages that this process has not yet seen
acknowledged (a few entries at most: one acknowledgement round trip's worth). A skipped replay
sends its own entries again; consumers already deduplicate (the database on natural keys,
FedAvg on device and model version). Entries of messages older than the committed offset are
never needed: Faust flushes the producer before it commits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import partial

from flead_app.tables.rows import OutboxEntry as Entry

log = logging.getLogger(__name__)


class Outbox:
    """Sends a message's outputs and knows which of them are not acknowledged yet."""

    def __init__(self, topics: Iterable, counters: Counter[str]) -> None:  # faust topics
        self.topics = {t.get_topic_name(): t for t in topics}
        self._unacked: dict[tuple[int, int], int] = {}  # (partition, source offset) -> sends in flight
        self.counters = counters  # counts "outputs_never_acknowledged" for /flead/stats

    async def send(self, partition: int, offset: int, records: Sequence[tuple[str, bytes, bytes]]) -> list[Entry]:
        """Send ``(topic name, key, value)`` records for the message at ``partition``/``offset``."""
        if not records:
            return []
        futures = [await self.topics[name].send(key=key, value=value) for name, key, value in records]
        self.track(partition, offset, futures)
        return [(offset, name, key.decode("latin-1"), value.decode("latin-1")) for name, key, value in records]

    async def resend(self, entries: Iterable[Entry], partition: int, offset: int) -> int:
        """Send again the entries of the skipped message at ``offset``; how many were sent."""
        mine = [(name, k.encode("latin-1"), v.encode("latin-1")) for o, name, k, v in entries if o == offset]
        await self.send(partition, offset, mine)
        return len(mine)

    def track(self, partition: int, offset: int, futures: Sequence[asyncio.Future]) -> None:
        if not futures:
            return
        slot = (partition, offset)
        self._unacked[slot] = self._unacked.get(slot, 0) + len(futures)
        for fut in futures:
            fut.add_done_callback(partial(self._done, slot))

    def _done(self, slot: tuple[int, int], fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            # stays unacknowledged, so the row keeps the entry and a replay would send it again
            self.counters["outputs_never_acknowledged"] += 1
            log.error("output of %s never acknowledged: %s", slot, "cancelled" if fut.cancelled() else fut.exception())
            return
        left = self._unacked[slot] - 1
        if left:
            self._unacked[slot] = left
        else:
            del self._unacked[slot]

    def pending(self, partition: int, offset: int) -> bool:
        return (partition, offset) in self._unacked

    def keep(self, entries: Iterable[Entry], partition: int) -> tuple[Entry, ...]:
        """The entries still worth storing: those whose sends this process has not seen acknowledged.

        Entries restored from a previous process are dropped at the first write: their message
        was either replayed and skipped (sent again, so tracked here) or committed, hence flushed.
        """
        return tuple(tuple(e) for e in entries if (partition, e[0]) in self._unacked)
