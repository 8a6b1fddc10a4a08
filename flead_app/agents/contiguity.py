"""Every message of a partition reaches its agent in offset order, none skipped (correction 9).

Faust's fetch path can drop a fetched record without a seek back: its ``getmany`` discards
records of a partition missing from the live set of active partitions, which pauses and buffer
limits change while a fetch waits in the consumer thread, and it stops mid-batch when the flow
or the generation changes. The client's position has already moved past such records, so they
come again only at the next seek to the committed offsets, which happens only after a rebalance.
The chaos run showed the effect: one reading message of a device (offset 16 of a partition)
never applied, while every later message of the partition was, and the partition's commit stuck
at 16 for good (nothing past a missing acknowledgement is ever committed).

The agents therefore check each message against the offset their partition must deliver next
(the last one admitted plus one, at least the committed offset). A message past it arrives after
a hole: it is held back (not processed; its acknowledgement cannot move the commit past the
hole), and the partition is sought back to the hole, so the hole and everything after it come
again in order. Before a partition's first commit the offset to deliver next is the log's start
(the group reads from the earliest offset): the rebalance test lost the first two local updates
of a run that way, fetched by a worker whose flow stopped for a rebalance before it committed
anything, never fetched again, and passed by the first commit. The log start is read when the
partition is assigned; a message that arrives before that read has finished is held back too,
and the read is made again before the seek. A held-back message is set aside, not acknowledged:
before a partition's first commit Faust anchors the commit at the first acknowledgement, so an
acknowledged held-back message would let the first commit pass the hole before it (a rebalance
run lost its first updates that way). A message below it is a
redelivery, which the agents' row positions skip. A hole at the end of what a partition holds has
no later message to reveal it: a partition whose log holds more than its agent saw, and that
delivered nothing for ``IDLE_S``, is sought back too (harmless when nothing was missing: what
comes again is skipped as a redelivery).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from flead_app import faust_patches

log = logging.getLogger(__name__)

RESEEK_AFTER_S = 5.0  # a seek back to the same hole is repeated only after this long
IDLE_S = 15.0  # a partition behind its log end that delivered nothing this long is sought back


def admit_offset(offset: int, expected: int | None) -> tuple[bool, int | None]:
    """Whether a message at ``offset`` may be processed when ``expected`` is next, and what is next then.

    >>> admit_offset(16, 16), admit_offset(12, 16), admit_offset(17, 16), admit_offset(5, None)
    ((True, 17), (True, 16), (False, 16), (True, 6))
    """
    if expected is None or offset == expected:
        return True, offset + 1
    if offset < expected:
        return True, expected
    return False, expected


class ContiguityGuard:
    """Per partition, the offset its agent must see next; holds back what arrives past a hole."""

    def __init__(
        self, app: Any, topic: str, counters: dict[str, float], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.app = app
        self.topic = topic
        self.counters = counters
        self.clock = clock
        self.generation: int | None = None
        self.started = clock()
        self.expected: dict[Any, int] = {}
        self.sought: dict[Any, tuple[int | None, float]] = {}  # partition -> (offset due, None if unknown; last seek)
        self.last_seen: dict[Any, float] = {}
        self.log_start: dict[Any, int] = {}  # earliest offset of each assigned partition, read at assignment
        self.set_aside: Callable[[Any], None] = lambda message: faust_patches.set_aside(app.consumer, message)

    async def on_assigned(self, assigned: Iterable[Any]) -> None:
        """Read the earliest offset of each newly assigned partition of the topic (before its stream resumes)."""
        mine = [tp for tp in assigned if tp.topic == self.topic]
        if not mine:
            return
        try:
            self.log_start.update(await self.app.consumer.earliest_offsets(*mine))
        except Exception as err:  # noqa: BLE001 - an error here would crash the worker's rebalance
            log.warning("earliest offsets of %s not read (%s): a hole before the first commit goes unseen", mine, err)

    def _same_generation(self) -> None:
        generation = self.app.consumer_generation_id
        if generation != self.generation:  # a rebalance: the committed offsets anchor everything again
            self.generation, self.started = generation, self.clock()
            self.expected, self.sought, self.last_seen = {}, {}, {}

    def admit(self, events: Iterable[Any]) -> list[Any]:
        """The events that may be processed, in order; the partitions with a hole are noted for ``refetch``."""
        self._same_generation()
        now = self.clock()
        committed = self.app.consumer._committed_offset
        kept = []
        for event in events:
            msg = event.message
            tp = msg.tp
            self.last_seen[tp] = now
            floor = committed.get(tp)
            if floor is None:
                floor = self.log_start.get(tp)
            expected = self.expected.get(tp, floor)
            if floor is not None and expected is not None and floor > expected:
                expected = floor
            if expected is None and self._assigned(tp):
                # A group's message before the first commit, the log start not read yet: the offset
                # due first is unknown, so nothing is processed until ``refetch`` has read it.
                self._hold_back(msg, tp, None)
                continue
            ok, nxt = admit_offset(msg.offset, expected)
            if nxt is not None:
                self.expected[tp] = nxt
            if ok:
                kept.append(event)
            else:
                self._hold_back(msg, tp, expected)
        return kept

    def _assigned(self, tp: Any) -> bool:
        try:
            return tp in self.app.consumer.assignment()
        except Exception:  # noqa: BLE001 - no consumer running (an agent's test context): nothing to read
            return False

    def _hold_back(self, message: Any, tp: Any, due: int | None) -> None:
        self.counters["held_back_past_a_hole"] = self.counters.get("held_back_past_a_hole", 0) + 1
        self.sought.setdefault(tp, (due, float("-inf")))
        self.set_aside(message)

    async def _read_unknown_log_starts(self) -> None:
        unknown = [tp for tp, (offset, _) in self.sought.items() if offset is None]
        if not unknown:
            return
        await self.on_assigned(unknown)
        for tp in unknown:
            if tp in self.log_start:
                self.sought[tp] = (self.log_start[tp], float("-inf"))

    def _note_quiet_partitions(self, now: float) -> None:
        consumer = self.app.consumer
        if getattr(self.app, "in_recovery", False) or getattr(self.app, "rebalancing", False):
            return  # recovery seeks the stream partitions itself when it ends
        try:
            assigned = {tp for tp in consumer.assignment() if tp.topic == self.topic}
        except Exception:  # noqa: BLE001 - no consumer yet (starting, or an agent's test context): nothing to seek
            return
        for tp in assigned | set(self.expected):
            committed = consumer._committed_offset.get(tp)
            expected = self.expected.get(tp, self.log_start.get(tp) if committed is None else committed)
            if expected is None or tp in self.sought or now - self.last_seen.get(tp, self.started) < IDLE_S:
                continue
            end = consumer.highwater(tp)
            if end is not None and end > expected:
                self.sought[tp] = (expected, float("-inf"))

    async def refetch(self) -> int:
        """Seek every partition with a hole back to it (again only after ``RESEEK_AFTER_S``); how many."""
        self._same_generation()
        now, sought = self.clock(), 0
        self._note_quiet_partitions(now)
        await self._read_unknown_log_starts()
        for tp, (offset, at) in list(self.sought.items()):
            if offset is None:  # the log start could not be read: tried again next time
                continue
            if self.expected.get(tp, offset) != offset:  # the hole was filled meanwhile
                del self.sought[tp]
                continue
            if now - at < RESEEK_AFTER_S:
                continue
            log.warning("%s: offset %d never arrived; fetching from it again", tp, offset)
            await self.app.consumer.seek(tp, offset)
            self.sought[tp] = (offset, now)
            self.counters["refetches"] = self.counters.get("refetches", 0) + 1
            sought += 1
        return sought
