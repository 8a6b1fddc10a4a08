"""The outbox's bookkeeping: which outputs a row must keep until Kafka acknowledges them."""

import asyncio
from collections import Counter

import pytest

from flead_app.agents.outbox import Outbox


def entries(*offsets: int) -> list[tuple[int, str, str, str]]:
    return [(o, "topic", "key", f"value {o}") for o in offsets]


def test_entries_stay_while_their_sends_are_unacknowledged():
    async def go():
        loop = asyncio.get_running_loop()
        box = Outbox([], Counter())
        first, second = loop.create_future(), loop.create_future()
        box.track(3, 10, [first, second])
        assert box.keep(entries(10, 11), partition=3) == tuple(entries(10))
        assert box.keep(entries(10), partition=4) == ()  # another partition's offset 10
        first.set_result(None)
        await asyncio.sleep(0)
        assert box.pending(3, 10), "one of two sends is still in flight"
        second.set_result(None)
        await asyncio.sleep(0)
        assert not box.pending(3, 10)
        assert box.keep(entries(10), partition=3) == ()

    asyncio.run(go())


def test_a_failed_send_keeps_its_entry_and_is_counted():
    async def go():
        box = Outbox([], Counter())
        fut = asyncio.get_running_loop().create_future()
        box.track(0, 5, [fut])
        fut.set_exception(RuntimeError("broker gone"))
        await asyncio.sleep(0)
        return box

    box = asyncio.run(go())
    assert box.counters["outputs_never_acknowledged"] == 1 and box.pending(0, 5)


def test_restored_entries_are_dropped_unless_sent_again_here():
    """A new process knows none of the old one's sends: restored entries are either re-sent by a
    skipped replay (and tracked again) or belong to committed, hence flushed, messages."""
    box = Outbox([], Counter())
    assert box.keep(entries(1, 2, 3), partition=0) == ()


@pytest.mark.parametrize("offsets", [[], [7], [7, 7, 9]])
def test_resend_sends_only_the_skipped_message_s_entries(offsets):
    sent = []

    class Topic:
        def get_topic_name(self):
            return "topic"

        async def send(self, key, value):
            sent.append((key, value))
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            return fut

    async def go():
        box = Outbox([Topic()], Counter())
        return await box.resend(entries(*offsets), partition=0, offset=7), box

    count, box = asyncio.run(go())
    assert count == offsets.count(7) == len(sent)
    assert all(value == b"value 7" for _, value in sent)


class FlakyTopic:
    """A topic whose first ``refusals`` sends fail, as the client's future does when it gives up."""

    def __init__(self, refusals: int) -> None:
        self.refusals, self.sent = refusals, []

    def get_topic_name(self):
        return "topic"

    async def send(self, key, value):
        fut = asyncio.get_running_loop().create_future()
        if self.refusals:
            self.refusals -= 1
            fut.set_exception(RuntimeError("OutOfOrderSequenceNumber"))
        else:
            self.sent.append((key, value))
            fut.set_result(None)
        return fut


def test_a_refused_output_is_sent_again_and_holds_the_commit_until_acknowledged(monkeypatch):
    monkeypatch.setattr("flead_app.agents.outbox.RESEND_PAUSE_S", 0.01)

    async def go():
        topic = FlakyTopic(refusals=2)
        box = Outbox([topic], Counter())
        await box.send(4, 10, [("topic", b"k", b"v")])
        await asyncio.sleep(0)
        assert box.held_offsets(4) == [10] and box.held_offsets(3) == []
        assert box.counters["outputs_never_acknowledged"] == 1 and box.pending(4, 10)
        for _ in range(100):
            if not box.held_offsets(4):
                break
            await asyncio.sleep(0.01)
        return topic, box

    topic, box = asyncio.run(go())
    assert topic.sent == [(b"k", b"v")], "sent again until acknowledged, once"
    assert box.held_offsets(4) == [] and not box.pending(4, 10)
    assert box.counters["outputs_never_acknowledged"] == 0
    assert box.counters["outputs_acknowledged_when_sent_again"] == 1


def test_a_commit_guard_keeps_the_commit_before_a_held_offset():
    from types import SimpleNamespace

    from flead_app import faust_patches

    tp = ("readings", 0)
    app = type("App", (), {})()
    faust_patches.add_commit_guard(app, lambda t: [12] if t == tp else [])
    consumer = SimpleNamespace(
        app=app, _acked={tp: [10, 11, 12, 13]}, _committed_offset={tp: 10}, _acked_index={tp: {10, 11, 12, 13}},
        _unacked_messages=[],
    )  # fmt: skip
    assert faust_patches._strict_new_offset(consumer, tp) == 12  # 10 and 11 done; 12 holds the rest
    assert consumer._acked[tp] == [12, 13]
    other = ("readings", 1)
    consumer._acked[other], consumer._committed_offset[other], consumer._acked_index[other] = [5], 5, {5}
    assert faust_patches._strict_new_offset(consumer, other) == 6


def test_the_commit_guard_names_only_its_own_input_topic():
    box = Outbox([], Counter())
    box._refused[(2, 40)] = 1
    guard = box.commit_guard("readings")
    assert guard(type("TP", (), {"topic": "readings", "partition": 2})()) == [40]
    assert guard(type("TP", (), {"topic": "local", "partition": 2})()) == []
