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

An output Kafka refuses (the client gave up on it: its future failed) is sent again by this
process, after a pause and until it is acknowledged, and ``held_offsets`` keeps the consumer's
commit before its message meanwhile (``faust_patches.add_commit_guard``). Without that, the
commit passed the message and the output was gone unless the worker happened to die and replay
it. ``outputs_never_acknowledged`` counts the outputs refused and not yet acknowledged since.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

from flead_app.tables.rows import OutboxEntry as Entry

log = logging.getLogger(__name__)
#: how long a refused output waits before it is sent again (the client's own retries are over)
RESEND_PAUSE_S = 1.0
#: what the log says of a refused output and of its acknowledgement later (chaos runs count both)
REFUSED, ACKNOWLEDGED_AGAIN = "refused by Kafka", "acknowledged when sent again"
Record = tuple[str, bytes, bytes]  # (topic name, key, value)
Slot = tuple[int, int]  # (partition, offset) of the source message


class Outbox:
    """Sends a message's outputs and knows which of them are not acknowledged yet."""

    def __init__(self, topics: Iterable, counters: Counter[str]) -> None:  # faust topics
        self.topics = {t.get_topic_name(): t for t in topics}
        self._unacked: dict[Slot, int] = {}  # (partition, source offset) -> sends in flight
        self._refused: dict[Slot, int] = {}  # outputs of the slot refused and not acknowledged since
        self._resends: set[asyncio.Task] = set()
        self.counters = counters  # counts "outputs_never_acknowledged" for /flead/stats

    async def send(self, partition: int, offset: int, records: Sequence[Record]) -> list[Entry]:
        """Send ``(topic name, key, value)`` records for the message at ``partition``/``offset``."""
        if not records:
            return []
        futures = [await self.topics[name].send(key=key, value=value) for name, key, value in records]
        self.track(partition, offset, futures, records)
        return [(offset, name, key.decode("latin-1"), value.decode("latin-1")) for name, key, value in records]

    async def resend(self, entries: Iterable[Entry], partition: int, offset: int) -> int:
        """Send again the entries of the skipped message at ``offset``; how many were sent."""
        mine = [(name, k.encode("latin-1"), v.encode("latin-1")) for o, name, k, v in entries if o == offset]
        await self.send(partition, offset, mine)
        return len(mine)

    def track(
        self, partition: int, offset: int, futures: Sequence[asyncio.Future], records: Sequence[Record] | None = None
    ) -> None:
        """Follow the sends of the message at ``partition``/``offset``; with their ``records``, a
        refused one is sent again."""
        if not futures:
            return
        slot = (partition, offset)
        self._unacked[slot] = self._unacked.get(slot, 0) + len(futures)
        for i, fut in enumerate(futures):
            fut.add_done_callback(partial(self._done, slot, None if records is None else records[i], False))

    def _done(self, slot: Slot, record: Record | None, again: bool, fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            # stays unacknowledged: the row keeps the entry, and the commit waits for it
            if not again:
                self.counters["outputs_never_acknowledged"] += 1
                self._refused[slot] = self._refused.get(slot, 0) + 1
            reason = "cancelled" if fut.cancelled() else fut.exception()
            log.error("output of %s %s (%s); sending it again", slot, "refused again" if again else REFUSED, reason)
            if record is not None:
                task = asyncio.ensure_future(self._send_again(slot, record))
                self._resends.add(task)
                task.add_done_callback(self._resends.discard)
            return
        if again:
            log.warning("output of %s %s", slot, ACKNOWLEDGED_AGAIN)
            self.counters["outputs_never_acknowledged"] -= 1
            self.counters["outputs_acknowledged_when_sent_again"] += 1
            left_refused = self._refused[slot] - 1
            if left_refused:
                self._refused[slot] = left_refused
            else:
                del self._refused[slot]
        left = self._unacked[slot] - 1
        if left:
            self._unacked[slot] = left
        else:
            del self._unacked[slot]

    async def _send_again(self, slot: Slot, record: Record) -> None:
        await asyncio.sleep(RESEND_PAUSE_S)
        name, key, value = record
        try:
            fut = await self.topics[name].send(key=key, value=value)
        except Exception as err:  # the producer refused it outright: it counts as one more refusal
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(err)
        fut.add_done_callback(partial(self._done, slot, record, True))

    def held_offsets(self, partition: int) -> list[int]:
        """Source offsets of ``partition`` with an output refused and not acknowledged since: the
        consumer's commit must stay before them."""
        return [offset for p, offset in self._refused if p == partition]

    def commit_guard(self, source_topic: str) -> Callable[[Any], list[int]]:
        """The guard ``faust_patches.add_commit_guard`` takes for the agent reading ``source_topic``."""
        return lambda tp: self.held_offsets(tp.partition) if tp.topic == source_topic else []

    def pending(self, partition: int, offset: int) -> bool:
        return (partition, offset) in self._unacked

    def keep(self, entries: Iterable[Entry], partition: int) -> tuple[Entry, ...]:
        """The entries still worth storing: those whose sends this process has not seen acknowledged.

        Entries restored from a previous process are dropped at the first write: their message
        was either replayed and skipped (sent again, so tracked here) or committed, hence flushed.
        """
        return tuple(tuple(e) for e in entries if (partition, e[0]) in self._unacked)
