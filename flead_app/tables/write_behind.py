"""Table rows kept in memory between commits and written once, just before the commit.

Durability is needed when offsets are committed, not on every event (Kafka Streams' record
cache, quixstreams' state transactions): an agent reads a row once, changes it in memory as
many times as its messages ask, and ``flush`` writes each changed row to the Faust table (one
changelog record) from a pre-commit hook (``faust_patches.add_pre_commit_hook``). Faust then
flushes the producer, so the changelog records are acknowledged before the offsets that cover
their input are committed.

* A crash before the commit replays the messages onto the last written rows.
* A crash after the rows were written but before the commit replays messages the rows already
  hold; every row keeps the Kafka position of the last message it applied, so they are skipped.
* A rebalance forgets the rows of revoked partitions, changed or not: the consumer drops the
  acknowledged offsets of a revoked partition without committing them, so the partition's next
  owner replays those messages onto the last written rows.

Unchanged rows stay cached for reuse up to ``capacity`` (least recently used out first), so a
worker's memory is bounded however large the fleet.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from flead_app import faust_patches

Row = TypeVar("Row")


class WriteBehindTable(Generic[Row]):
    def __init__(
        self,
        table: Any,  # a faust Table of bytes -> bytes
        decode: Callable[[bytes | None], Row],
        encode: Callable[[Row, int], bytes],  # (row, partition) -> the bytes to store
        capacity: int,
    ) -> None:
        self.table = table
        self.decode = decode
        self.encode = encode
        self.capacity = capacity
        self.rows: OrderedDict[bytes, tuple[int, Row]] = OrderedDict()  # key -> (partition, row)
        self.dirty: set[bytes] = set()
        self.event_of: dict[int, Any] = {}  # partition -> a recent event of it, to write with

    def get(self, key: bytes, event: Any) -> Row:
        """The row of ``key`` (in the partition of ``event``): cached, or read from the table."""
        hit = self.rows.get(key)
        if hit is not None:
            self.rows.move_to_end(key)
            return hit[1]
        with faust_patches.as_event(event):
            raw = self.table.get(key)
        row = self.decode(raw)
        self.rows[key] = (event.message.partition, row)
        return row

    def cached(self, key: bytes) -> Row | None:
        hit = self.rows.get(key)
        return None if hit is None else hit[1]

    def put(self, key: bytes, row: Row, event: Any) -> None:
        """Keep ``row`` as the new value of ``key``; it reaches the table at the next ``flush``."""
        partition = event.message.partition
        self.rows[key] = (partition, row)
        self.rows.move_to_end(key)
        self.dirty.add(key)
        self.event_of[partition] = event

    def flush(self) -> int:
        """Write every changed row to the table (one changelog record each); how many.

        Synchronous on purpose: nothing else runs on the event loop between this and the
        consumer's choice of the offsets to commit, so every acknowledged message is covered."""
        for key in self.dirty:
            partition, row = self.rows[key]
            with faust_patches.as_event(self.event_of[partition]):
                self.table[key] = self.encode(row, partition)
        written = len(self.dirty)
        self.dirty.clear()
        while len(self.rows) > self.capacity:
            self.rows.popitem(last=False)
        return written

    def forget_rebuilt(self, changelog_tps: set) -> None:
        """Drop the cached rows of the changelog partitions recovery wiped (``faust_patches``
        correction 11): the rows it reads again from the changelog are the truth."""
        topic = self.table.changelog_topic.get_topic_name()
        self.forget({tp.partition for tp in changelog_tps if tp.topic == topic})

    def forget(self, partitions: set[int]) -> int:
        """Drop the cached rows of ``partitions``; how many of them had changed since the last flush."""
        gone = [key for key, (partition, _) in self.rows.items() if partition in partitions]
        changed = sum(1 for key in gone if key in self.dirty)
        for key in gone:
            del self.rows[key]
            self.dirty.discard(key)
        for partition in partitions:
            self.event_of.pop(partition, None)
        return changed
