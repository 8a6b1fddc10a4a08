"""Corrections and small extensions to faust-streaming that FLEAD's guarantees depend on.

1. **Idempotent producing.** Faust enables the idempotent Kafka producer only inside
   transactions (exactly-once); a retried send under load then wrote a record twice (the
   bad-input fault test once counted 610 dead letters for 600 messages).
2. **Commits never pass an offset still being processed.** Faust commits the first run of
   consecutive acknowledged offsets of a partition. Its guard against a run that does not start
   where the last commit ended is off by one (acknowledged 3, 4, 5 after a commit at 2 commits 6,
   while offset 2 is still in a stream) and does nothing while the committed offset is unknown or
   0. A crash after such a commit loses the skipped message for good: the recovery test lost a
   local update and an anomaly that way, once each in about ten runs. ``next_commit_offset`` is
   the rule we apply instead; it only ever holds a commit back, never moves one forward.
3. **Hooks before a commit** (``add_pre_commit_hook``). The detector keeps device rows in
   memory between commits and writes each changed row once, just before the offsets that
   cover its input are committed; Faust flushes the producer right before committing, so the
   rows' changelog records are acknowledged first.
4. **Table writes outside stream iteration** (``as_event``). A table write finds its partition
   (and its RocksDB database) through the *current event*, which only stream iteration sets;
   writes in ``take_events`` batches or a pre-commit hook set it to an event of the row's
   partition for the duration of the write.
5. **Acknowledgements from before a rebalance do not count** (``ack_counts``). When partitions
   are revoked, Faust first forgets their acknowledged offsets, then waits for the messages
   still in the agents to finish, and those acknowledgements land in the fresh lists; then the
   agents forget the device rows those messages changed (``WriteBehindTable.forget``). With the
   partition assigned back, the next commit covered the stale acknowledgements as if the
   messages had been applied, while their effects were gone from the rows: a crash or the next
   rebalance before they were applied again would lose them (read in Faust's rebalance path).
   (Faust's Python stream iterator also acknowledges messages it skips for belonging to an
   older generation, which would do the same.) An acknowledgement now moves a commit only for a
   message of the current generation fetched after the last revocation; the rest are marked done,
   so shutdown and rebalances do not wait for them, and are fetched again from the committed offset.
6. **The producer flush before a commit flushes everything** (``_flush_all_buffered``). Table
   writes reach their changelog through Faust's producer buffer (``send_soon``); before
   committing offsets Faust flushes it, but its flush returns as soon as no record left the
   buffer for 0.1 s, with records still in it, and only then flushes the Kafka client. On a
   loaded machine the rows written just before a commit could then still be in the buffer when
   the offsets covering their input were committed; a worker leaving or dying then lost them
   (the rebalance test: 8 devices one message short each after a worker left). The flush now
   returns only once every record put into the buffer before it was handed to the client, whose
   own flush then waits for Kafka's acknowledgements.
7. **No read offset outlives a rebalance** (``_fresh_read_offsets``). Faust's fetch loop drops
   a fetched message whose offset is below the partition's *read offset* (the last offset it
   delivered), as a refetch. Revocation forgets the read offsets, but the loop is usually
   awaiting the delivery of a message at that moment (its agent's buffer full); revocation stops
   the flow, which cancels that delivery, and the loop then records the undelivered message's
   offset as read, after the revocation forgot it. When the partition comes back to the worker
   (the next rebalance, or a later one: nothing else clears it), Faust resumes its stream
   partitions before it seeks them to their committed offsets, and in that window every message
   from the committed offset up to the stale one is dropped unseen, the stale one applied. The
   seek then sets the read offset back and the dropped messages come again, but the row already
   holds a later position, so the agent skips them as replays and their acknowledgements move the
   commit past them (chaos runs: one reading message of a device never applied). Without a
   committed offset there is no seek at all: the dropped messages never come again and the
   commit, anchored at the first acknowledgement, passes them (FedAvg lost the update at offset
   0). Read offsets and gaps of the assigned partitions are now forgotten at assignment, where
   the fetch loop is parked, so the first fetch after a rebalance delivers from where it starts.
8. **A committed offset below the log start is lifted to it** (``_seek_within_the_log``). When
   the records at a group's committed offset are gone (retention deleted them while the group
   lagged, or ``flead stack reset`` deleted them), the client resumes at the earliest offset, but
   Faust keeps the old committed offset, and correction 2 then waits for an acknowledgement of
   an offset that no longer exists: nothing was ever committed again (seen after a demo that had
   not drained: a replay's worker applied every reading and committed none). After the seek, a
   committed offset below the partition's earliest offset counts as that earliest offset: the
   records between them can never be processed, by anyone.
9. **A jump in offsets is a hole, not a gap** (``_no_gap``), and the agents fetch holes again
   (``flead_app.agents.contiguity``). Faust's fetch loop takes a jump between the offset it
   delivered last and the next one for offsets that do not exist (compaction, transaction
   markers) and counts them as acknowledged, so the commit passes them. FLEAD's input topics are
   neither compacted nor transactional, so every offset exists: a jump means the fetch path
   dropped records (its ``getmany`` discards records of a partition that a pause or a full
   buffer removed from the live set of active partitions while the fetch waited, and records left
   in a batch when the flow stops), and counting them as done turned a drop into a committed loss.
   Nothing is counted for a jump now; the agents hold back what arrives past the hole and seek
   back to it.
10. **Guards on commits** (``add_commit_guard``). A message is acknowledged once its outputs are
   handed to the producer; Faust's flush before a commit waits for them, but a send that *fails*
   (the client gives up on a partition) only fails its future, and the commit went past the
   message: its output was lost unless the worker died and replayed it. The outbox now sends a
   refused output again, and its guard keeps the commit before that message until Kafka
   acknowledges it.
11. **Local state ahead of its changelog is rebuilt, not fatal** (``_highwaters_not_behind``).
   Before it reads a changelog partition, Faust's recovery compares the offset its local state
   holds (RocksDB's persisted offset, or what a standby already applied) with the partition's
   last offset, and raises ``ConsistencyError`` when the local state is ahead, which stops the
   worker (seen once in the rebalance test: a standby at 74 over a changelog ending at 69). Either
   the last offset read was stale (the partition's leader had just moved) or the log really ends
   there (truncated, or recreated), and the local state holds writes the log does not. Kafka
   Streams treats the second case as corrupt local state: it wipes the store and restores it
   from the changelog. So does FLEAD now: it asks for the last offset again for up to
   ``STALE_HIGHWATER_WAIT_S``, and a partition still ahead then has its local rows wiped (and the
   agents' cached rows of it forgotten, ``add_state_rebuilt_hook``) and is read from the
   changelog's start. Each rebuilt partition is logged and counted
   (``state_partitions_rebuilt`` in ``/flead/stats/``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from faust import streams as faust_streams
from faust.tables import recovery as faust_recovery
from faust.transport import consumer as faust_consumer
from faust.transport import producer as faust_producer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import ack_lock
from mode.utils.futures import notify


def next_commit_offset(acked: Sequence[int], committed: int | None, in_flight: Iterable[int] = ()) -> int | None:
    """The offset to commit for a partition, or None to commit nothing yet.

    ``acked`` are the acknowledged offsets not committed yet, sorted; ``committed`` is the
    partition's committed offset (the next one to process; None if unknown); ``in_flight`` are
    offsets handed to a stream and not acknowledged. The result is one past the end of the run of
    consecutive acknowledged offsets that starts at ``committed`` (or at the first acknowledged
    offset when ``committed`` is unknown), cut before any offset in flight.
    """
    if not acked:
        return None
    start = acked[0]
    if committed is not None and start > committed:
        return None  # offset `committed` has not been acknowledged yet
    end = start
    for offset in acked[1:]:
        if offset > end + 1:
            break
        end = max(end, offset)
    lowest_in_flight = min((o for o in in_flight if o >= start), default=None)
    if lowest_in_flight is not None and lowest_in_flight <= end:
        end = lowest_in_flight - 1
    return end + 1 if end >= start else None


def lift_to_log_start(committed: dict, earliest: dict) -> dict:
    """The committed offsets that lie below their partition's earliest offset, lifted to it.

    >>> lift_to_log_start({"a": 4, "b": 20, "c": None}, {"a": 12, "b": 12, "c": 5})
    {'a': 12}
    """
    return {tp: earliest[tp] for tp, off in committed.items() if off is not None and earliest.get(tp, 0) > off}


def _strict_new_offset(self, tp):  # noqa: ANN001, ANN202 - replaces faust Consumer._new_offset
    acked = self._acked[tp]
    if not acked:
        return None
    acked.sort()
    committed = self._committed_offset[tp]
    # Only while the committed offset is unknown (no commit yet) is the scan over the messages in
    # flight needed; later the committed offset itself anchors the run.
    in_flight = [m.offset for m in list(self._unacked_messages) if m.tp == tp] if committed is None else []
    for guard in self.app.__dict__.get("_flead_commit_guards", ()):
        in_flight.extend(guard(tp))
    new_offset = next_commit_offset(acked, committed, in_flight)
    if new_offset is None:
        return None
    done = [o for o in acked if o < new_offset]
    acked[: len(done)] = []
    self._acked_index[tp].difference_update(done)
    return new_offset


async def _no_gap(self, tp, offset_from: int, offset_to: int) -> None:  # noqa: ANN001 - replaces faust Consumer._add_gap
    """Correction 9: offsets skipped by the fetch loop are not acknowledged by anyone."""


def ack_counts(message_generation: int | None, generation: int, revoked_in: int | None) -> bool:
    """Whether acknowledging a message fetched in consumer generation ``message_generation`` may move
    its partition's commit, in ``generation``, the last revocation having happened in ``revoked_in``.

    >>> ack_counts(7, 7, None), ack_counts(7, 7, 6), ack_counts(7, 7, 7), ack_counts(6, 7, 6)
    (True, True, False, False)
    """
    if message_generation is None:  # not fetched by a group consumer (tests' events): as Faust does
        return True
    return message_generation == generation and (revoked_in is None or message_generation > revoked_in)


def set_aside(consumer: Any, message: Any) -> None:
    """Mark ``message`` done without acknowledging it: it no longer holds up shutdown, a rebalance
    or the commits before it, and its offset can never be committed by it (it will be fetched again)."""
    with ack_lock:
        if not message.acked:
            message.acked = True
            consumer._unacked_messages.discard(message)
            notify(consumer._waiting_for_ack)


def _ack_of_this_generation(self, message):  # noqa: ANN001, ANN202 - replaces faust Consumer.ack
    if ack_counts(message.generation_id, self.app.consumer_generation_id, self.__dict__.get("_flead_revoked_in")):
        return _faust_ack(self, message)
    set_aside(self, message)
    return False


async def _note_revocation(self, revoked):  # noqa: ANN001, ANN202 - wraps faust Consumer.on_partitions_revoked
    self.__dict__["_flead_revoked_in"] = self.app.consumer_generation_id
    return await _faust_on_partitions_revoked(self, revoked)


_faust_ack = faust_consumer.Consumer.ack
_faust_on_partitions_revoked = faust_consumer.Consumer.on_partitions_revoked


async def _fresh_read_offsets(self, assigned, generation_id: int = 0):  # noqa: ANN001, ANN202 - wraps faust Consumer.on_partitions_assigned
    """Forget what earlier generations recorded as read on the assigned partitions (correction 7).

    Before the callbacks: they end in recovery, which resumes fetching before its seek; the fetch
    loop cannot record a delivery meanwhile, since revocation stopped the flow."""
    for tp in assigned:
        self._read_offset.pop(tp, None)
        self._gap.pop(tp, None)
    return await _faust_on_partitions_assigned(self, assigned, generation_id)


_faust_on_partitions_assigned = faust_consumer.Consumer.on_partitions_assigned


async def _seek_within_the_log(self) -> None:  # noqa: ANN001 - wraps faust Consumer.perform_seek
    """Faust's seek to the committed offsets, then correction 8."""
    await _faust_perform_seek(self)
    committed = {tp: off for tp, off in self._committed_offset.items() if tp in self.assignment()}
    if not committed:
        return
    lifted = lift_to_log_start(committed, await self.earliest_offsets(*committed))
    self._committed_offset.update(lifted)
    for tp, offset in lifted.items():
        if (self._read_offset.get(tp) or 0) < offset:
            self._read_offset[tp] = offset


_faust_perform_seek = faust_consumer.Consumer.perform_seek


def _counting_put(self, fut):  # noqa: ANN001, ANN202 - wraps faust ProducerBuffer.put
    self.__dict__["_flead_put"] = self.__dict__.get("_flead_put", 0) + 1
    return _faust_buffer_put(self, fut)


async def _counting_send_pending(self, fut):  # noqa: ANN001, ANN202 - wraps faust ProducerBuffer._send_pending
    try:
        return await _faust_send_pending(self, fut)
    finally:
        self.__dict__["_flead_sent"] = self.__dict__.get("_flead_sent", 0) + 1


async def _flush_all_buffered(self) -> None:  # noqa: ANN001 - replaces faust ProducerBuffer.flush
    """Return once every record put before the call was handed to the Kafka client."""
    target = self.__dict__.get("_flead_put", 0)
    while self.__dict__.get("_flead_sent", 0) < target:
        if self.state != "running" or self.should_stop:  # no sender any more: as Faust does
            return await _faust_buffer_flush(self)
        self.message_sent.clear()
        try:
            await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)
        except TimeoutError:
            pass


_faust_buffer_put = faust_producer.ProducerBuffer.put
_faust_send_pending = faust_producer.ProducerBuffer._send_pending
_faust_buffer_flush = faust_producer.ProducerBuffer.flush


def _idempotent_producer_settings(self) -> dict:  # noqa: ANN001 - a faust aiokafka Producer
    return {**_faust_producer_extra(self), "acks": "all", "enable_idempotence": True}


_faust_producer_extra = faust_aiokafka.Producer._settings_extra

PreCommitHook = Callable[[], Awaitable[None]]


def add_pre_commit_hook(app: Any, hook: PreCommitHook) -> None:
    """Run ``hook`` before every offset commit of ``app``'s consumer (and before the producer
    flush that precedes it)."""
    app.__dict__.setdefault("_flead_pre_commit_hooks", []).append(hook)


CommitGuard = Callable[[Any], Iterable[int]]


def add_commit_guard(app: Any, guard: CommitGuard) -> None:
    """Never commit ``app``'s offsets past what ``guard(tp)`` names: offsets of partition ``tp``
    whose work is not finished although their message was acknowledged (an output Kafka refused,
    being sent again)."""
    app.__dict__.setdefault("_flead_commit_guards", []).append(guard)


async def _force_commit_after_hooks(self, topics=None, start_new_transaction: bool = True) -> bool:  # noqa: ANN001
    for hook in self.app.__dict__.get("_flead_pre_commit_hooks", ()):
        await hook()
    return await _faust_force_commit(self, topics, start_new_transaction=start_new_transaction)


_faust_force_commit = faust_consumer.Consumer.force_commit


@contextmanager
def as_event(event: Any) -> Iterator[None]:
    """Within the block, table reads and writes belong to ``event``'s partition."""
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


#: How long a changelog partition's last offset is asked for again while local state is ahead of it.
STALE_HIGHWATER_WAIT_S = 10.0

log = logging.getLogger(__name__)

StateRebuiltHook = Callable[[set], None]


def ahead_of_changelog(offsets: Any, highwaters: Any, tps: Iterable) -> set:
    """The partitions among ``tps`` whose local state claims an offset past the changelog's last one.

    Both as Faust's recovery keeps them: the last offset applied (local) or in the log, -1 for
    none, None for unknown (an unknown side decides nothing).

    >>> local = {"a": 74, "b": 69, "c": 5, "d": None, "e": -1}
    >>> sorted(ahead_of_changelog(local, {"a": 69, "b": 69, "c": -1, "d": 3, "e": -1}, "abcde"))
    ['a', 'c']
    """
    ahead = set()
    for tp in tps:
        offset, last = offsets.get(tp), highwaters.get(tp)
        if offset is not None and last is not None and offset >= 0 and offset > last:
            ahead.add(tp)
    return ahead


def add_state_rebuilt_hook(app: Any, hook: StateRebuiltHook) -> None:
    """Call ``hook(changelog_tps)`` when recovery wipes the local state of those partitions (correction
    11), before it reads them again from their changelog: whatever caches their rows must drop them."""
    app.__dict__.setdefault("_flead_state_rebuilt_hooks", []).append(hook)


def state_partitions_rebuilt(app: Any) -> int:
    """How many changelog partitions this worker's recovery found ahead of their log and rebuilt."""
    return app.__dict__.get("_flead_state_rebuilt", 0)


def _wipe_local_partition(table: Any, partition: int) -> None:
    """Delete every row ``table`` keeps locally for ``partition`` (RocksDB: one database per partition),
    its persisted offset included. A store that keeps no partitions apart (memory) is left as it is:
    reading the changelog again overwrites its rows."""
    store = table.data
    if not hasattr(store, "_dbs"):
        return
    db = store._db_for_partition(partition)
    for key in list(store._visible_keys(db)):
        db.delete(key)
    db.delete(store.offset_key)
    index = store._key_index
    for key in [k for k, p in list(index.items()) if p == partition]:
        index.pop(key, None)


async def _highwaters_not_behind(self, consumer, tps, destination, title) -> None:  # noqa: ANN001 - wraps faust Recovery._build_highwaters
    """Faust's last offsets of ``tps``, then correction 11 for the partitions whose local state is ahead."""
    await _faust_build_highwaters(self, consumer, tps, destination, title)
    offsets = self.active_offsets if title == "active" else self.standby_offsets
    ahead = ahead_of_changelog(offsets, destination, tps)
    deadline = time.monotonic() + STALE_HIGHWATER_WAIT_S
    while ahead and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        for tp, end in (await consumer.highwaters(*ahead)).items():
            destination[tp] = end - 1 if end is not None else -1
        ahead = ahead_of_changelog(offsets, destination, ahead)
    if not ahead:
        return
    for tp in sorted(ahead):
        log.warning(
            "%s state of %s is at offset %s, past the changelog's last offset %s: wiping it and reading it "
            "again from the changelog", title, tp, offsets[tp], destination[tp],
        )  # fmt: skip
        _wipe_local_partition(self.tp_to_table[tp], tp.partition)
        offsets[tp] = None  # active: Faust's offset build that follows starts it at the log's start
    app = self.app
    app.__dict__["_flead_state_rebuilt"] = state_partitions_rebuilt(app) + len(ahead)
    for hook in app.__dict__.get("_flead_state_rebuilt_hooks", ()):
        hook(ahead)
    if title == "standby":  # standbys were sought to their offsets already: seek them to the start
        earliest = await consumer.earliest_offsets(*ahead)
        for tp in ahead:
            offsets[tp] = earliest[tp] - 1 if earliest.get(tp) is not None else -1
        await consumer.seek_wait({tp: max(offsets[tp], 0) for tp in ahead})


_faust_build_highwaters = faust_recovery.Recovery._build_highwaters


def apply() -> None:
    """Install the corrections and the commit hook (idempotent: applying twice changes nothing)."""
    faust_aiokafka.Producer._settings_extra = _idempotent_producer_settings
    faust_consumer.Consumer._new_offset = _strict_new_offset
    faust_consumer.Consumer._add_gap = _no_gap
    faust_consumer.Consumer.force_commit = _force_commit_after_hooks
    faust_consumer.Consumer.ack = _ack_of_this_generation
    faust_consumer.Consumer.on_partitions_revoked = _note_revocation
    faust_consumer.Consumer.on_partitions_assigned = _fresh_read_offsets
    faust_consumer.Consumer.perform_seek = _seek_within_the_log
    faust_producer.ProducerBuffer.put = _counting_put
    faust_producer.ProducerBuffer._send_pending = _counting_send_pending
    faust_producer.ProducerBuffer.flush = _flush_all_buffered
    faust_recovery.Recovery._build_highwaters = _highwaters_not_behind
