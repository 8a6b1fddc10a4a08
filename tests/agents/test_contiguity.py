"""The contiguity guard (correction 9): a message past a hole is held back and the hole fetched again."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace

from aiokafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from flead_app import faust_patches
from flead_app.agents.contiguity import IDLE_S, RESEEK_AFTER_S, ContiguityGuard

TP = TopicPartition("readings", 1)


@dataclass
class FakeConsumer:
    committed: dict = field(default_factory=dict)
    ends: dict = field(default_factory=dict)
    seeks: list = field(default_factory=list)
    earliest: dict = field(default_factory=dict)
    _unacked_messages: set = field(default_factory=set)
    _waiting_for_ack: None = None

    def assignment(self) -> set:
        return {TP}

    @property
    def _committed_offset(self) -> dict:
        return self.committed

    def highwater(self, tp):  # noqa: ANN001, ANN201
        return self.ends.get(tp)

    async def earliest_offsets(self, *tps):  # noqa: ANN002, ANN201
        return {tp: self.earliest[tp] for tp in tps}

    async def seek(self, tp, offset: int) -> None:  # noqa: ANN001
        self.seeks.append((tp, offset))


@dataclass(eq=False)
class Message:
    tp: TopicPartition
    offset: int
    generation_id: int | None = None
    acked: bool = False


def event(offset: int, tp=TP, generation_id: int | None = None):  # noqa: ANN001, ANN201
    return SimpleNamespace(message=Message(tp, offset, generation_id))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def guard_with(committed: int | None = None) -> tuple[ContiguityGuard, FakeConsumer, Clock]:
    consumer = FakeConsumer(committed={TP: committed} if committed is not None else {})
    clock = Clock()
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=1)
    return ContiguityGuard(app, "readings", {}, clock=clock), consumer, clock


def offsets(events) -> list[int]:  # noqa: ANN001
    return [e.message.offset for e in events]


def test_a_message_past_a_hole_is_held_back_and_the_hole_fetched_again():
    guard, consumer, clock = guard_with(committed=16)
    assert offsets(guard.admit([event(17), event(18)])) == []  # 16 never came
    asyncio.run(guard.refetch())
    assert consumer.seeks == [(TP, 16)]
    assert offsets(guard.admit([event(19)])) == []  # still before the refetch
    asyncio.run(guard.refetch())
    assert consumer.seeks == [(TP, 16)], "no second seek before RESEEK_AFTER_S"
    clock.now += RESEEK_AFTER_S
    asyncio.run(guard.refetch())
    assert consumer.seeks == [(TP, 16), (TP, 16)]
    assert offsets(guard.admit([event(16), event(17), event(18), event(19)])) == [16, 17, 18, 19]
    clock.now += RESEEK_AFTER_S
    asyncio.run(guard.refetch())
    assert len(consumer.seeks) == 2 and not guard.sought


def test_redeliveries_pass_to_the_rows_and_a_rebalance_starts_again_from_the_committed_offset():
    guard, consumer, _ = guard_with(committed=5)
    assert offsets(guard.admit([event(3), event(5), event(4), event(6)])) == [3, 5, 4, 6]
    guard.app.consumer_generation_id = 2
    consumer.committed[TP] = 10
    assert offsets(guard.admit([event(11)])) == []
    assert offsets(guard.admit([event(10), event(11)])) == [10, 11]


def test_before_the_first_commit_the_log_start_is_the_offset_to_deliver_next():
    """No commit yet: a first message past the log's start (offsets 0 and 1 dropped) is held back."""
    guard, consumer, _ = guard_with(committed=None)
    consumer.earliest = {TP: 0}
    asyncio.run(guard.on_assigned({TP, TopicPartition("other", 0)}))
    assert guard.log_start == {TP: 0}
    assert offsets(guard.admit([event(2), event(3)])) == []
    asyncio.run(guard.refetch())
    assert consumer.seeks == [(TP, 0)]
    assert offsets(guard.admit([event(0), event(1), event(2), event(3)])) == [0, 1, 2, 3]


def test_a_held_back_message_is_set_aside_unacknowledged_so_no_first_commit_can_pass_the_hole():
    """Before the first commit Faust anchors the commit at the first acknowledgement: an
    acknowledged held-back message would commit past the dropped offsets before it."""
    guard, consumer, _ = guard_with(committed=None)
    guard.log_start = {TP: 0}
    held = [event(2, generation_id=1), event(3, generation_id=1)]
    consumer._unacked_messages.update(e.message for e in held)
    assert offsets(guard.admit(held)) == []
    assert all(e.message.acked for e in held) and not consumer._unacked_messages
    acked: list[int] = []
    for e in held:  # what Faust's stream does after the batch: a no-op for a message set aside
        if not e.message.acked:
            acked.append(e.message.offset)
    assert faust_patches.next_commit_offset(acked, None) is None


def test_a_message_that_arrives_before_the_log_start_was_read_waits_for_the_read():
    guard, consumer, _ = guard_with(committed=None)
    consumer.earliest = {TP: 0}
    assert offsets(guard.admit([event(1, generation_id=1), event(2, generation_id=1)])) == []
    asyncio.run(guard.refetch())
    assert guard.log_start == {TP: 0} and consumer.seeks == [(TP, 0)]
    assert offsets(guard.admit([event(o, generation_id=1) for o in range(3)])) == [0, 1, 2]


def test_a_hole_at_the_end_of_the_log_is_sought_after_the_partition_went_quiet():
    guard, consumer, clock = guard_with(committed=0)
    assert offsets(guard.admit([event(0), event(1)])) == [0, 1]
    consumer.ends[TP] = 3  # offset 2 exists but never arrives, and nothing after it reveals it
    asyncio.run(guard.refetch())
    assert consumer.seeks == []
    clock.now += IDLE_S
    asyncio.run(guard.refetch())
    assert consumer.seeks == [(TP, 2)]


@given(st.integers(0, 50), st.integers(1, 40), st.lists(st.integers(0, 60), max_size=8))
def test_whatever_is_dropped_what_is_admitted_is_each_offset_once_in_order(start, length, dropped):
    """A log delivered with some offsets dropped (the last ones too), then, after the seek, again
    from the hole: what is admitted is exactly the log, in order."""
    guard, consumer, clock = guard_with(committed=start)
    log = list(range(start, start + length))
    admitted = offsets(guard.admit([event(o) for o in log if o - start not in dropped]))
    consumer.ends[TP] = start + length
    clock.now += IDLE_S
    asyncio.run(guard.refetch())
    if consumer.seeks:
        hole = consumer.seeks[-1][1]
        admitted += offsets(guard.admit([event(o) for o in log if o >= hole]))
    assert admitted == log


def test_faust_jumps_in_offsets_count_as_acknowledged_no_more():
    from faust.transport import consumer as faust_consumer

    faust_patches.apply()
    assert faust_consumer.Consumer._add_gap is faust_patches._no_gap
